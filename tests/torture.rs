//! The RFC 4475 / RFC 5118 torture set against the real `sipvault serve`:
//! every file as one UDP datagram, over a fresh TCP connection and over a
//! fresh TLS connection (trusting the certificate the server generated).
//! The server must stay up, refuse what the index says is invalid with the
//! expected status, answer valid requests, stay silent on responses, and
//! still register users and relay a MESSAGE afterwards. TLS is a stream
//! like TCP, so it is held to the same stream verdicts by the same code.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ServeProcess, add_users, testdata};
use sipvault_schemas::Transport;
use sipvault_server::ua::UserAgent;
use sipvault_sip::{SipMessage, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const DOMAIN: &str = "torture.test";
/// A short T1 keeps server transactions (64*T1) short, so files that share
/// a transaction key can be sent in quick successive rounds.
const T1_MS: u64 = 25;
/// A TCP peer stalled mid-message is dropped after this.
const TCP_STALL_SECS: u64 = 1;
/// How long to wait for a response that should come.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long to listen for a response that should not come.
const QUIET_WAIT: Duration = Duration::from_millis(1500);

#[path = "../sip/tests/common/verdicts.rs"]
mod verdicts;
use verdicts::*;

/// What the server must do with one file on one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A response with exactly this status.
    Status(u16),
    /// Some final response (a valid request; the code is the server's business).
    AnyResponse,
    /// No response at all (a response message, or nothing to answer to).
    Nothing,
    /// TCP: the connection is closed (unrecoverable framing) after at least
    /// this many responses, each with one of these codes (`None`: any code).
    Closed(Option<&'static [u16]>, usize),
    /// TCP: incomplete message; no response, the connection is dropped after
    /// `tcp_message_timeout_secs`, not at once.
    StallClosed,
}

fn torture_dir() -> PathBuf {
    testdata().join("sip-torture")
}

fn is_response(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    bytes[start..].starts_with(b"SIP/")
}

fn has_via(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_start_matches(['\r', '\n']);
    text.split('\n')
        .skip(1)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .any(|(n, v)| {
            matches!(n.trim().to_ascii_lowercase().as_str(), "via" | "v") && !v.trim().is_empty()
        })
}

fn udp_expect(bytes: &[u8], v: Verdict) -> Expect {
    match v {
        Accept if is_response(bytes) => Expect::Nothing,
        Accept => Expect::AnyResponse,
        // Without a Via there is nowhere to send a response.
        Reject(_) if !has_via(bytes) => Expect::Nothing,
        Reject(code) => Expect::Status(code),
        Discard => Expect::Nothing,
        Truncated => Expect::Status(400),
    }
}

fn tcp_expect(file: &str, bytes: &[u8], v: Verdict) -> Expect {
    match file {
        // Negative / conflicting Content-Length: framing cannot recover.
        // The offending request is answered 400 before the close.
        "rfc4475/ncl.dat" | "rfc4475/mcl01.dat" => Expect::Closed(Some(&[400]), 1),
        // No Content-Length at all: required on streams.
        "rfc4475/inv2543.dat" => Expect::Closed(Some(&[400]), 1),
        // Two requests, then "C" CRLF CRLF without Content-Length: both
        // requests are answered before the connection closes.
        "rfc4475/dblreq.dat" => Expect::Closed(None, 2),
        // Body shorter than declared, or header section never terminated:
        // a stream waits for more bytes, then gives up.
        "rfc4475/clerr.dat" | "rfc5118/ipv6-in-sdp" | "rfc4475/baddn.dat" => Expect::StallClosed,
        _ => udp_expect(bytes, v),
    }
}

/// The transaction key the server matches requests on (RFC 3261 17.2.3:
/// branch, sent-by and method; RFC 2543 fallback on Call-ID, CSeq, From tag).
/// Two sends with the same key must not overlap in time, or the second is
/// taken for a retransmission of the first.
fn txn_keys(messages: &[Vec<u8>]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| SipMessage::parse(m).ok())
        .filter(|m| m.is_request() && m.method() != Some("ACK"))
        .map(|m| {
            let method = m.method().unwrap_or("").to_string();
            match m.vias().first() {
                Some(v)
                    if v.branch()
                        .is_some_and(|b| b.starts_with("z9hG4bK") && b.len() > 7) =>
                {
                    format!(
                        "{}|{}:{:?}|{method}",
                        v.branch().unwrap_or(""),
                        v.host,
                        v.port
                    )
                }
                _ => format!(
                    "2543|{}|{:?}|{}",
                    m.call_id().unwrap_or(""),
                    m.cseq(),
                    m.from()
                        .and_then(|f| f.tag().map(str::to_string))
                        .unwrap_or_default()
                ),
            }
        })
        .collect()
}

/// Messages a stream framer cuts out of `bytes`.
fn framed(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut f = StreamFramer::new(64 * 1024);
    f.push(bytes);
    let mut out = Vec::new();
    while let Ok(Some(m)) = f.next_message() {
        out.push(m);
    }
    out
}

/// Status code from a response's start line (works for responses whose
/// other headers do not parse, e.g. the 400 echoing scalar02's CSeq).
fn status_of(msg: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(msg);
    let text = text.trim_start_matches(['\r', '\n']);
    let line = text.lines().next()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

#[derive(Debug, Default)]
struct Outcome {
    /// Start lines of what came back.
    responses: Vec<String>,
    statuses: Vec<Option<u16>>,
    closed_after: Option<Duration>,
    error: Option<String>,
}

fn record(out: &mut Outcome, msg: &[u8]) {
    let text = String::from_utf8_lossy(msg);
    out.responses
        .push(text.trim_start().lines().next().unwrap_or("").to_string());
    out.statuses.push(status_of(msg));
}

async fn run_udp(server: SocketAddr, bytes: Vec<u8>, expect: Expect) -> Outcome {
    let mut out = Outcome::default();
    let sock = match UdpSocket::bind("127.0.0.1:0").await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("bind: {e}"));
            return out;
        }
    };
    if let Err(e) = sock.send_to(&bytes, server).await {
        out.error = Some(format!("send: {e}"));
        return out;
    }
    let start = tokio::time::Instant::now();
    let until = start
        + if expect == Expect::Nothing {
            QUIET_WAIT
        } else {
            ANSWER_WAIT
        };
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
            Err(_) => break,
            Ok(Ok((n, _))) => {
                record(&mut out, &buf[..n]);
                if expect != Expect::Nothing {
                    break;
                }
            }
            Ok(Err(e)) => {
                out.error = Some(format!("recv: {e}"));
                break;
            }
        }
    }
    out
}

/// One exchange over a fresh stream connection made by `connect` (TCP, or
/// TLS including its handshake).
async fn run_stream<S>(
    connect: impl Future<Output = std::io::Result<S>>,
    bytes: Vec<u8>,
    expect: Expect,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Outcome::default();
    let mut stream = match tokio::time::timeout(ANSWER_WAIT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
        Err(_) => {
            out.error = Some("connect timed out".into());
            return out;
        }
    };
    // TLS sends its records on flush.
    if let Err(e) = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    }
    .await
    {
        out.error = Some(format!("write: {e}"));
        return out;
    }
    let start = tokio::time::Instant::now();
    let window = match expect {
        Expect::Nothing => QUIET_WAIT,
        Expect::StallClosed => Duration::from_secs(TCP_STALL_SECS + 5),
        _ => ANSWER_WAIT,
    };
    let until = start + window;
    let mut framer = StreamFramer::new(1 << 20);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed_after = Some(start.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                framer.push(&buf[..n]);
                while let Ok(Some(m)) = framer.next_message() {
                    record(&mut out, &m);
                }
                if matches!(expect, Expect::Status(_) | Expect::AnyResponse)
                    && !out.responses.is_empty()
                {
                    break;
                }
            }
        }
    }
    out
}

/// Why `out` does not meet `expect`, if it does not.
fn judge(expect: Expect, out: &Outcome) -> Option<String> {
    if let Some(e) = &out.error {
        return Some(format!("client-side error: {e}"));
    }
    let got = || {
        format!(
            "got {:?}, closed after {:?}",
            out.responses, out.closed_after
        )
    };
    match expect {
        Expect::Status(code) => match out.statuses.first() {
            None => Some(format!(
                "expected a {code} response, got none within {ANSWER_WAIT:?} ({})",
                got()
            )),
            Some(s) if *s != Some(code) => Some(format!("expected status {code}, {}", got())),
            _ => None,
        },
        Expect::AnyResponse => match out.statuses.first() {
            None => Some(format!(
                "valid request got no response within {ANSWER_WAIT:?} ({})",
                got()
            )),
            Some(Some(s)) if *s >= 200 => None,
            Some(_) => Some(format!("expected a final response, {}", got())),
        },
        Expect::Nothing => {
            (!out.responses.is_empty()).then(|| format!("expected no response, {}", got()))
        }
        Expect::Closed(allowed, at_least) => {
            if out.closed_after.is_none() {
                return Some(format!(
                    "expected the connection to be closed (unrecoverable framing), {}",
                    got()
                ));
            }
            if out.statuses.len() < at_least {
                return Some(format!(
                    "expected {at_least} responses before the close, {}",
                    got()
                ));
            }
            match allowed {
                Some(codes)
                    if out
                        .statuses
                        .iter()
                        .any(|s| !s.is_some_and(|s| codes.contains(&s))) =>
                {
                    Some(format!(
                        "only {codes:?} may be answered before closing, {}",
                        got()
                    ))
                }
                _ => None,
            }
        }
        Expect::StallClosed => {
            if !out.responses.is_empty() {
                return Some(format!("incomplete message was answered: {}", got()));
            }
            match out.closed_after {
                None => Some(format!(
                    "stalled connection not closed within {TCP_STALL_SECS}+5 s"
                )),
                Some(d) if d < Duration::from_millis(TCP_STALL_SECS * 1000 * 8 / 10) => {
                    Some(format!(
                        "connection closed after {d:?}: a stream must wait for the rest of the message"
                    ))
                }
                _ => None,
            }
        }
    }
}

struct Send {
    file: &'static str,
    transport: Transport,
    bytes: Vec<u8>,
    expect: Expect,
    keys: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_set_against_the_running_server() {
    // The table covers exactly the files on disk.
    let mut on_disk = Vec::new();
    for sub in ["rfc4475", "rfc5118"] {
        for ent in std::fs::read_dir(torture_dir().join(sub)).expect("read torture dir") {
            on_disk.push(format!(
                "{sub}/{}",
                ent.expect("dir entry").file_name().to_string_lossy()
            ));
        }
    }
    let table: BTreeMap<&str, Verdict> = EXPECTED.iter().copied().collect();
    for f in &on_disk {
        assert!(
            table.contains_key(f.as_str()),
            "{f}: torture file not in the expected-verdict table"
        );
    }
    assert_eq!(
        table.len(),
        on_disk.len(),
        "verdict table lists files that are not on disk"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    add_users(
        &data,
        DOMAIN,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ],
    );
    let config = format!(
        "[sip]\ndomain = \"{DOMAIN}\"\nt1_ms = {T1_MS}\ntcp_message_timeout_secs = {TCP_STALL_SECS}\n"
    );
    let mut server = tokio::task::block_in_place(|| ServeProcess::start(&data, Some(&config)));
    let addr = server.addr;
    let tls_addr = server.tls_addr();
    let tls = server.tls_client();

    // Every file once per transport.
    let mut sends = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for (file, verdict) in EXPECTED {
            let raw =
                std::fs::read(torture_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let bytes = wire(file, &raw);
            let (expect, keys) = match transport {
                Transport::Udp => (
                    udp_expect(&bytes, *verdict),
                    txn_keys(std::slice::from_ref(&bytes)),
                ),
                _ => (
                    tcp_expect(file, &bytes, *verdict),
                    txn_keys(&framed(&bytes)),
                ),
            };
            sends.push(Send {
                file,
                transport,
                bytes,
                expect,
                keys,
            });
        }
    }
    // Rounds in which no transaction key repeats; rounds are spaced by more
    // than a server transaction's lifetime.
    let mut rounds: Vec<(HashSet<String>, Vec<Send>)> = Vec::new();
    for s in sends {
        let slot = rounds
            .iter()
            .position(|(keys, _)| s.keys.iter().all(|k| !keys.contains(k)));
        let i = slot.unwrap_or_else(|| {
            rounds.push((HashSet::new(), Vec::new()));
            rounds.len() - 1
        });
        rounds[i].0.extend(s.keys.iter().cloned());
        rounds[i].1.push(s);
    }
    let txn_life = Duration::from_millis(T1_MS * 64) + Duration::from_millis(1500);

    let mut failures = Vec::new();
    let mut checked = 0;
    let n_rounds = rounds.len();
    for (r, (_, round)) in rounds.into_iter().enumerate() {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in round {
            let (bytes, expect) = (s.bytes.clone(), s.expect);
            let h = match s.transport {
                Transport::Udp => tokio::spawn(run_udp(addr, bytes, expect)),
                Transport::Tls => {
                    let tls = tls.clone();
                    tokio::spawn(
                        async move { run_stream(tls.connect(tls_addr), bytes, expect).await },
                    )
                }
                _ => tokio::spawn(run_stream(TcpStream::connect(addr), bytes, expect)),
            };
            tasks.push((s, h));
        }
        for (s, h) in tasks {
            let out = h.await.expect("exchange task");
            checked += 1;
            eprintln!(
                "round {:>2} {:<45} {:?} {:?}: {:?} closed_after={:?}",
                r + 1,
                s.file,
                s.transport,
                s.expect,
                out.responses,
                out.closed_after
            );
            if let Some(why) = judge(s.expect, &out) {
                failures.push(format!(
                    "{} over {:?} (expected {:?}): {why}",
                    s.file, s.transport, s.expect
                ));
            }
        }
        assert!(
            server.is_running(),
            "sipvault serve died during torture round {}/{n_rounds}; failures so far:\n{}\nlog:\n{}",
            r + 1,
            failures.join("\n"),
            server.log()
        );
        let left = txn_life.saturating_sub(started.elapsed());
        tokio::time::sleep(left).await;
    }
    assert_eq!(
        checked,
        3 * EXPECTED.len(),
        "not every file was sent on all three transports"
    );
    assert!(
        failures.is_empty(),
        "torture set against the running server ({} failures):\n{}\nlog:\n{}",
        failures.len(),
        failures.join("\n"),
        server.log()
    );
    assert!(
        !server.log().contains("panicked"),
        "server log shows a panic:\n{}",
        server.log()
    );

    // The server still does its job.
    let (mut alice, mut bob) =
        common::registered_alice_and_bob(addr, DOMAIN, "after the torture set").await;
    let code = alice
        .message("bob", "still standing after RFC 4475")
        .await
        .expect("alice MESSAGE");
    assert_eq!(code, 200, "MESSAGE alice -> bob after the torture set");
    let got = bob.received();
    assert!(
        got.iter()
            .any(|im| im.body == "still standing after RFC 4475"),
        "bob did not receive alice's MESSAGE: {got:?}"
    );
    let code = bob
        .message("alice", "and over TCP too")
        .await
        .expect("bob MESSAGE");
    assert_eq!(
        code, 200,
        "MESSAGE bob (TCP) -> alice (UDP) after the torture set"
    );
    assert!(
        alice
            .received()
            .iter()
            .any(|im| im.body == "and over TCP too"),
        "alice did not receive bob's MESSAGE"
    );
    // And over TLS: carol registers there and talks to both.
    let mut carol = UserAgent::connect_tls(tls_addr, tls.clone(), "carol", DOMAIN, "carol-pw")
        .await
        .expect("carol TLS UA");
    assert_eq!(
        carol.register(600).await.expect("carol REGISTER"),
        200,
        "carol (TLS) could not register after the torture set"
    );
    let code = alice
        .message("carol", "over TLS after RFC 4475")
        .await
        .expect("alice MESSAGE to carol");
    assert_eq!(code, 200, "MESSAGE alice (UDP) -> carol (TLS)");
    assert!(
        carol
            .received()
            .iter()
            .any(|im| im.body == "over TLS after RFC 4475"),
        "carol did not receive alice's MESSAGE over TLS"
    );
    let code = carol
        .message("bob", "TLS to TCP")
        .await
        .expect("carol MESSAGE to bob");
    assert_eq!(code, 200, "MESSAGE carol (TLS) -> bob (TCP)");
    alice.close().await;
    bob.close().await;
    carol.close().await;

    assert!(
        server.is_running(),
        "server died at the end; log:\n{}",
        server.log()
    );
    let log = tokio::task::block_in_place(|| server.stop());
    assert!(
        log.contains("sip core stopped"),
        "server did not shut its SIP core down cleanly; log:\n{log}"
    );
    eprintln!("torture: {checked} exchanges in {n_rounds} rounds");
}
