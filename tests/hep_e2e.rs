//! End to end: `sipvault serve --hep` collecting the traffic of other SIP
//! software. Kamailio (`siptrace`, HEP3, capture id 2001, auth key) is the
//! registrar and proxy for SIPp's REGISTER, MESSAGE and call traffic and
//! mirrors it to sipvault; sngrep replays captures (IMs and calls) as HEP;
//! a hand-made sender checks UDP and TCP with a wrong auth key.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ServeProcess, SippSide, free_udp_port, run_sipp_pair, sipp_available, sipp_register, sql_rows,
    testdata,
};
use sipvault_collector::hep::{encode_hep3, encode_hep3_typed, proto_type};

fn available(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `sipvault serve --hep 127.0.0.1:0` with a HEP auth key; returns the
/// server and the HEP address it bound.
fn serve_with_hep(data: &Path, auth_key: Option<&str>) -> (ServeProcess, String) {
    let mut config = "[archive]\nsegment_max_age_secs = 3600\n".to_string();
    if let Some(key) = auth_key {
        config.push_str(&format!("[hep]\nauth_key = \"{key}\"\n"));
    }
    let server = ServeProcess::start_with(data, Some(&config), &["--hep", "127.0.0.1:0"]);
    let hep = server.log_value("hep_udp");
    (server, hep)
}

/// HEP over UDP has no acknowledgement: give the last datagrams a moment
/// to reach the collector before the server is stopped.
fn settle() {
    std::thread::sleep(Duration::from_millis(700));
}

/// Counts rows of `sip_messages` by `METHOD` or `status/CSEQ-METHOD`.
fn counts_by_kind(data: &Path, source: &str) -> BTreeMap<String, u64> {
    let rows = sql_rows(
        data,
        &format!(
            "SELECT COALESCE(method, CAST(status AS VARCHAR) || '/' || cseq_method) AS kind, count(*) AS n \
             FROM sip_messages WHERE source = '{source}' GROUP BY 1"
        ),
    );
    rows.iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("?").to_string(),
                r["n"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

struct Kamailio {
    child: Child,
    log: PathBuf,
}

impl Kamailio {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // Kamailio forks its workers: stop them first (while they are still
        // its children), or they outlive the test.
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the shared test Kamailio (registrar + proxy, `siptrace` to HEP)
/// on `sip_port`, mirroring to `hep_addr`.
fn start_kamailio(dir: &Path, sip_port: u16, hep_addr: &str) -> Kamailio {
    let cfg = std::fs::read_to_string(testdata().join("peers/kamailio/kamailio.cfg"))
        .expect("testdata kamailio.cfg");
    let cfg = cfg.replace("127.0.0.1:5060", &format!("127.0.0.1:{sip_port}"));
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = dir.join("kamailio.log");
    let child = Command::new("kamailio")
        .arg("-f")
        .arg(&cfg_path)
        .args(["-DD", "-E", "-Y"])
        .arg(dir)
        .arg("-A")
        .arg(format!("HEP_URI=\"sip:{hep_addr}\""))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start kamailio");
    // Ready when its UDP port is taken.
    let end = Instant::now() + Duration::from_secs(20);
    while UdpSocket::bind(("127.0.0.1", sip_port)).is_ok() {
        assert!(
            Instant::now() < end,
            "kamailio did not bind 127.0.0.1:{sip_port}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Kamailio { child, log }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const MESSAGES: u64 = 5;
const CALLS: u64 = 3;

#[test]
fn kamailio_siptrace_is_archived_with_its_agent_id() {
    assert!(
        sipp_available(),
        "sipp is not installed (Debian package sip-tester); .ci/run installs it"
    );
    assert!(
        available("kamailio", "-v"),
        "kamailio is not installed (Debian package kamailio); .ci/run installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, hep) = serve_with_hep(&data, Some("kamailio-test"));
    let kport = free_udp_port();
    let kamailio = start_kamailio(tmp.path(), kport, &hep);
    let proxy = format!("127.0.0.1:{kport}");
    let scenarios = testdata().join("sipp");
    let ours = common::our_scenarios();
    let (alice_port, bob_port) = (free_udp_port(), free_udp_port());

    // bob registers (digest through Kamailio) from the port his UAS will use.
    sipp_register(
        &proxy,
        "bob",
        "sipp.test",
        bob_port,
        "REGISTER bob through kamailio",
    );
    run_sipp_pair(
        SippSide {
            dir: &scenarios.join("message"),
            args: args(&[
                "-sf",
                "uas.xml",
                "-p",
                &bob_port.to_string(),
                "-m",
                &MESSAGES.to_string(),
            ]),
        },
        SippSide {
            dir: &scenarios.join("message"),
            args: args(&[
                "-sf",
                "uac.xml",
                &proxy,
                "-p",
                &alice_port.to_string(),
                "-m",
                &MESSAGES.to_string(),
                "-r",
                "10",
            ]),
        },
        "MESSAGE alice -> bob through kamailio",
    );

    // Calls: bob's UAS echoes Kamailio's Record-Route, so ACK and BYE are
    // loose-routed through the proxy and mirrored too.
    run_sipp_pair(
        SippSide {
            dir: &ours,
            args: args(&[
                "-sf",
                "call-uas-record-route.xml",
                "-p",
                &bob_port.to_string(),
                "-m",
                &CALLS.to_string(),
                "-mp",
                &free_udp_port().to_string(),
            ]),
        },
        SippSide {
            dir: &scenarios.join("call-basic"),
            args: args(&[
                "-sf",
                "uac.xml",
                &proxy,
                "-p",
                &alice_port.to_string(),
                "-m",
                &CALLS.to_string(),
                "-r",
                "10",
                "-mp",
                &free_udp_port().to_string(),
            ]),
        },
        "calls alice -> bob through kamailio",
    );

    settle();
    let kamailio_log = kamailio.log();
    drop(kamailio);
    let log = server.stop();

    // Kamailio mirrors what it receives and what it sends: every request and
    // response of the relayed traffic appears twice (in from one side, out to
    // the other); the digest exchange of the REGISTER once each way.
    let kinds = counts_by_kind(&data, "hep:2001");
    let expect = |kind: &str, n: u64| {
        assert_eq!(
            kinds.get(kind).copied().unwrap_or(0),
            n,
            "{kind} archived from kamailio; all counts {kinds:?}\nserver log:\n{log}\nkamailio log:\n{kamailio_log}"
        );
    };
    expect("REGISTER", 2);
    expect("401/REGISTER", 1);
    expect("200/REGISTER", 1);
    expect("MESSAGE", 2 * MESSAGES);
    expect("200/MESSAGE", 2 * MESSAGES);
    expect("INVITE", 2 * CALLS);
    expect("180/INVITE", 2 * CALLS);
    expect("200/INVITE", 2 * CALLS);
    expect("ACK", 2 * CALLS);
    expect("BYE", 2 * CALLS);
    expect("200/BYE", 2 * CALLS);
    let others = sql_rows(
        &data,
        "SELECT source, count(*) AS n FROM sip_messages WHERE source <> 'hep:2001' GROUP BY source",
    );
    assert!(
        others.is_empty(),
        "everything archived came from kamailio's agent id 2001: {others:?}"
    );

    // The correlators turn the mirrored copies into one IM per MESSAGE and
    // one call per INVITE.
    let ims = sql_rows(
        &data,
        "SELECT delivery_status, count(*) AS n FROM im_messages GROUP BY 1",
    );
    assert_eq!(
        ims,
        vec![serde_json::json!({"delivery_status": "delivered", "n": MESSAGES})],
        "IMs relayed by kamailio"
    );
    let calls = sql_rows(
        &data,
        "SELECT disposition, ended_by, count(*) AS n FROM calls GROUP BY 1, 2",
    );
    assert_eq!(
        calls,
        vec![serde_json::json!({"disposition": "answered", "ended_by": "caller", "n": CALLS})],
        "calls relayed by kamailio"
    );
}

#[test]
fn sngrep_replaying_a_capture_as_hep_is_archived() {
    assert!(
        available("sngrep", "-V"),
        "sngrep is not installed (Debian package sngrep); .ci/run installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, hep) = serve_with_hep(&data, None);
    for capture in ["message.pcap", "call-basic.pcap"] {
        let status = Command::new("sngrep")
            .args(["-N", "-q", "-I"])
            .arg(testdata().join("pcaps/local").join(capture))
            .arg("-H")
            .arg(format!("udp:{hep}"))
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sngrep");
        assert!(status.success(), "sngrep -H {capture} exited with {status}");
    }
    settle();
    server.stop();
    let rows = sql_rows(
        &data,
        "SELECT source, count(*) AS n FROM sip_messages GROUP BY source",
    );
    // sngrep writes its capture id with the byte-order quirk; the decoder
    // undoes it, so the source is one agent with a small id.
    assert_eq!(rows.len(), 1, "one HEP agent: {rows:?}");
    assert!(
        rows[0]["source"].as_str().unwrap_or("").starts_with("hep:"),
        "{rows:?}"
    );
    assert_eq!(
        rows[0]["n"], 90,
        "10 x (MESSAGE, 200) + 10 x 7 call messages replayed: {rows:?}"
    );
    let ims = sql_rows(&data, "SELECT count(*) AS n FROM im_messages");
    assert_eq!(ims[0]["n"], 10);
    let calls = sql_rows(
        &data,
        "SELECT disposition, codecs, count(*) AS n FROM calls GROUP BY 1, 2",
    );
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["disposition"], "answered");
    assert_eq!(calls[0]["n"], 10);
}

const SIP: &[u8] = b"MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: hep-e2e-1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn hep_over_udp_and_tcp_with_an_auth_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, hep) = serve_with_hep(&data, Some("k3y"));
    let (src, dst) = (
        "10.0.0.1:5060".parse().unwrap(),
        "10.0.0.2:5060".parse().unwrap(),
    );
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(
        &encode_hep3(src, dst, 1_764_000_000, 0, 42, Some("k3y"), SIP),
        &hep,
    )
    .unwrap();
    udp.send_to(
        &encode_hep3(src, dst, 1_764_000_000, 0, 43, Some("bad"), SIP),
        &hep,
    )
    .unwrap();
    udp.send_to(
        &encode_hep3_typed(
            src,
            dst,
            1_764_000_001,
            0,
            42,
            Some("k3y"),
            proto_type::RTCP,
            &[0x81, 0xc8, 0, 1],
        ),
        &hep,
    )
    .unwrap();
    // Agents 44 and 45 capture the same packet: archived once.
    let mut tcp = TcpStream::connect(&hep).unwrap();
    let stream: Vec<u8> = [44, 45]
        .iter()
        .flat_map(|id| encode_hep3(src, dst, 1_764_000_002, 0, *id, Some("k3y"), SIP))
        .collect();
    tcp.write_all(&stream).unwrap();
    drop(tcp);
    settle();
    let status = |data: &Path| -> serde_json::Value {
        serde_json::from_str(&common::sipvault(data, &["status", "--format", "json"]))
            .expect("status prints JSON")
    };
    let running = status(&data);
    assert_eq!(running["state"], "running", "{running:#}");
    assert!(running["serve"]["hep"].is_string(), "{running:#}");
    let log = server.stop();
    let stopped = status(&data);
    assert_eq!(stopped["state"], "stopped", "{stopped:#}");
    assert_eq!(stopped["serve"]["hep_counters"]["auth_failures"], 1);
    assert_eq!(stopped["serve"]["hep_counters"]["sip"], 3);
    assert_eq!(stopped["serve"]["collector"]["received"], 3);
    assert_eq!(
        stopped["serve"]["collector"]["duplicates"], 1,
        "{stopped:#}"
    );
    assert_eq!(stopped["rows"]["sip_messages"], 2, "{stopped:#}");
    let rows = sql_rows(
        &data,
        "SELECT source, count(*) AS n FROM sip_messages GROUP BY source ORDER BY source",
    );
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"source": "hep:42", "n": 1}),
            serde_json::json!({"source": "hep:44", "n": 1}),
        ],
        "the packet with the wrong key (agent 43) must be dropped; log:\n{log}"
    );
    let raw = sql_rows(&data, "SELECT source, proto_type FROM hep_raw");
    assert_eq!(
        raw,
        vec![serde_json::json!({"source": "hep:42", "proto_type": 5})]
    );
    assert!(
        log.contains("\"auth_failures\": 1"),
        "the stop log counts the refused packet:\n{log}"
    );
}
