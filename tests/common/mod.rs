//! Helpers for end-to-end tests: run the real `sipvault` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sipvault")
}

/// Runs `sipvault ARGS --data DIR`, asserting it exits 0; returns stdout.
/// What one `sipvault ARGS --data DATA` run gave back.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `sipvault ARGS --data DATA` whatever its exit code.
pub fn run_sipvault(data: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    let out = Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run sipvault");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

pub fn sipvault(data: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run sipvault");
    assert!(
        out.status.success(),
        "sipvault {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds `users` (name, password) in `domain` to the catalog of `data`.
pub fn add_users(data: &Path, domain: &str, users: &[(&str, &str)]) {
    for (user, password) in users {
        sipvault(
            data,
            &[
                "user",
                "add",
                user,
                "--password",
                password,
                "--domain",
                domain,
            ],
        );
    }
}

/// A `sipvault serve` child process on a free loopback port.
pub struct ServeProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The TLS listener (`sip_tls=` of the listening line), if on.
    pub tls: Option<SocketAddr>,
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `sipvault serve --sip 127.0.0.1:0` and waits for the line that
    /// names the bound address. `config` is written to `<data>/sipvault.toml` if given.
    pub fn start(data: &Path, config: Option<&str>) -> ServeProcess {
        Self::start_with(data, config, &[])
    }

    /// [`ServeProcess::start`] with extra `serve` arguments (e.g. `--hep 127.0.0.1:0`).
    pub fn start_with(data: &Path, config: Option<&str>, extra: &[&str]) -> ServeProcess {
        Self::start_at(data, config, "127.0.0.1:0", extra)
    }

    /// [`ServeProcess::start_with`] on the SIP address `sip` (another
    /// loopback address such as 127.0.0.2 for a second server).
    pub fn start_at(data: &Path, config: Option<&str>, sip: &str, extra: &[&str]) -> ServeProcess {
        if let Some(c) = config {
            std::fs::create_dir_all(data).unwrap();
            std::fs::write(data.join("sipvault.toml"), c).unwrap();
        }
        let mut child = Command::new(bin())
            .args(["serve", "--sip", sip])
            .args(extra)
            .arg("--data")
            .arg(data)
            .env("SIPVAULT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipvault serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                let value = |line: &str, key: &str| -> Option<String> {
                    let pos = line.find(key)? + key.len();
                    Some(
                        line[pos..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect(),
                    )
                };
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addr) = value(&line, "sip_udp=")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send((addr, value(&line, "sip_tls=")));
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (addr, tls) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "sipvault serve printed no listening line; log:\n{}",
                    log.lock().unwrap()
                )
            });
        ServeProcess {
            child: Some(child),
            addr: addr.parse().expect("listening address"),
            // "off" (or an older line without the key): no TLS.
            tls: tls.and_then(|a| a.parse().ok()),
            data: data.to_path_buf(),
            log,
        }
    }

    /// The TLS listener, asserting TLS is on.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls
            .unwrap_or_else(|| panic!("sipvault serve listens for no TLS; log:\n{}", self.log()))
    }

    /// A TLS client trusting the certificate the server generated in its
    /// data directory, for connections to 127.0.0.1.
    pub fn tls_client(&self) -> sipvault_server::tls::TlsClient {
        let chain = sipvault_server::tls::read_certificates(&self.data.join("tls/cert.pem"))
            .expect("the server's generated certificate");
        sipvault_server::tls::TlsClient::trusting(&chain, "127.0.0.1".parse().unwrap())
            .expect("TLS client configuration")
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The value of the first `key=VALUE` in the log, waiting for it (bounded).
    pub fn log_value(&self, key: &str) -> String {
        let needle = format!("{key}=");
        assert!(
            self.wait_for_log(&needle, Duration::from_secs(30)),
            "sipvault serve never logged {needle}; log:\n{}",
            self.log()
        );
        let log = self.log();
        let pos = log.find(&needle).expect("checked above") + needle.len();
        log[pos..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect()
    }

    /// Waits until the log contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether the process is still alive (no panic, no exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then waits for a clean exit (archive sealed). Returns the log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = self.log();
                assert!(
                    status.success(),
                    "sipvault serve exited with {status}; log:\n{log}"
                );
                assert!(
                    !log.contains("panicked"),
                    "sipvault serve panicked; log:\n{log}"
                );
                return log;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!(
                    "sipvault serve did not stop within 30 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
}

/// The project's own SIPp scenarios (`tests/sipp/`).
pub fn our_scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// A UDP port that was free a moment ago (for peers that need a fixed port).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sipp_available() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs one SIPp instance to completion (bounded by -timeout) and asserts success.
pub fn run_sipp(dir: &Path, args: &[String], what: &str) {
    let out = sipp(dir, args).wait_with_output().expect("wait for sipp");
    assert!(
        out.status.success(),
        "SIPp {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sipp(dir: &Path, args: &[String]) -> Child {
    Command::new("sipp")
        .current_dir(dir)
        .args(args)
        .args([
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-i",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipp")
}

/// Registers `user` (digest password `secret`, realm `domain`) with the
/// SIP server at `remote` from local `port`, using tests/sipp/register-user.xml;
/// `what` names the step in a failure.
pub fn sipp_register(remote: &str, user: &str, domain: &str, port: u16, what: &str) {
    let port = port.to_string();
    let args = [
        "-sf",
        "register-user.xml",
        remote,
        "-p",
        &port,
        "-m",
        "1",
        "-s",
        user,
        "-au",
        user,
        "-ap",
        "secret",
        "-auth_uri",
        domain,
        "-key",
        "domain",
        domain,
    ]
    .map(String::from);
    run_sipp(&our_scenarios(), &args, what);
}

/// Runs `sipvault sql STATEMENT --format json` and returns the rows.
pub fn sql_rows(data: &Path, statement: &str) -> Vec<serde_json::Value> {
    let out = sipvault(data, &["sql", statement, "--format", "json"]);
    match serde_json::from_str(&out) {
        Ok(serde_json::Value::Array(rows)) => rows,
        other => panic!("`sipvault sql {statement}` did not print a JSON array: {other:?}\n{out}"),
    }
}

/// Runs `sipvault search QUERY --format json --limit 1000` and returns the hits.
pub fn search_hits(data: &Path, query: &str) -> Vec<serde_json::Value> {
    let out = sipvault(
        data,
        &["search", query, "--format", "json", "--limit", "1000"],
    );
    match serde_json::from_str(&out) {
        Ok(serde_json::Value::Array(hits)) => hits,
        other => panic!("`sipvault search {query}` did not print a JSON array: {other:?}\n{out}"),
    }
}

/// alice over UDP and bob over TCP (passwords `alice-pw`, `bob-pw`),
/// both registered with `server`; `when` names the moment in failure messages.
pub async fn registered_alice_and_bob(
    server: SocketAddr,
    domain: &str,
    when: &str,
) -> (
    sipvault_server::ua::UserAgent,
    sipvault_server::ua::UserAgent,
) {
    use sipvault_schemas::Transport;
    use sipvault_server::ua::UserAgent;
    let mut alice = UserAgent::connect(Transport::Udp, server, "alice", domain, "alice-pw")
        .await
        .expect("alice UA");
    let mut bob = UserAgent::connect(Transport::Tcp, server, "bob", domain, "bob-pw")
        .await
        .expect("bob UA");
    assert_eq!(
        alice.register(600).await.expect("alice REGISTER"),
        200,
        "alice (UDP) could not register {when}"
    );
    assert_eq!(
        bob.register(600).await.expect("bob REGISTER"),
        200,
        "bob (TCP) could not register {when}"
    );
    (alice, bob)
}

/// One SIPp side of a pair: the directory it runs in and its arguments.
pub struct SippSide<'a> {
    pub dir: &'a Path,
    pub args: Vec<String>,
}

/// Starts the UAS, gives it a moment to bind, runs the UAC to completion,
/// then asserts that both succeeded; `what` names the exchange in failures.
pub fn run_sipp_pair(uas: SippSide<'_>, uac: SippSide<'_>, what: &str) {
    let server = sipp(uas.dir, &uas.args);
    std::thread::sleep(Duration::from_millis(300));
    run_sipp(uac.dir, &uac.args, what);
    let out = server.wait_with_output().expect("wait for the SIPp UAS");
    assert!(
        out.status.success(),
        "SIPp UAS of {what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}
