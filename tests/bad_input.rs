//! Hostile and broken input against the real `sipvault serve`: bad
//! credentials, unknown users, oversize bodies and datagrams, TCP peers that
//! send garbage or stall. Each is refused or cut off, and between each of
//! them two registered user agents keep exchanging MESSAGEs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{ServeProcess, add_users};
use sipvault_schemas::Transport;
use sipvault_server::ua::UserAgent;
use sipvault_sip::{MessageBuilder, SipMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const DOMAIN: &str = "bad.test";
const MAX_BODY: usize = 1024;
const MAX_MESSAGE: usize = 4096;
const TCP_STALL_SECS: u64 = 1;

/// Two registered agents; `check` proves the server still relays between them.
struct Witnesses {
    alice: UserAgent,
    bob: UserAgent,
    n: u32,
}

impl Witnesses {
    async fn check(&mut self, after: &str) {
        self.n += 1;
        let body = format!("still serving #{} after {after}", self.n);
        let code = self
            .alice
            .message("bob", &body)
            .await
            .unwrap_or_else(|e| panic!("after {after}: alice's MESSAGE failed: {e}"));
        assert_eq!(
            code, 200,
            "after {after}: MESSAGE alice (UDP) -> bob (TCP) got {code}"
        );
        let got = self.bob.received();
        assert!(
            got.iter().any(|im| im.body == body),
            "after {after}: bob did not receive {body:?}: {got:?}"
        );
        let back = format!("ack #{}", self.n);
        let code = self
            .bob
            .message("alice", &back)
            .await
            .unwrap_or_else(|e| panic!("after {after}: bob's MESSAGE failed: {e}"));
        assert_eq!(
            code, 200,
            "after {after}: MESSAGE bob (TCP) -> alice (UDP) got {code}"
        );
        assert!(
            self.alice.received().iter().any(|im| im.body == back),
            "after {after}: alice did not receive {back:?}"
        );
    }
}

/// An OPTIONS of exactly `size` bytes (padded with a header), from `local`.
fn options_of_size(local: SocketAddr, transport: &str, size: usize) -> Vec<u8> {
    let build = |pad: usize| {
        let mut b = MessageBuilder::request("OPTIONS", &format!("sip:{DOMAIN}"));
        b.header(
            "Via",
            &format!("SIP/2.0/{transport} {local};branch=z9hG4bK-opt-{size};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:probe@{DOMAIN}>;tag=p{size}"))
        .header("To", &format!("<sip:{DOMAIN}>"))
        .header("Call-ID", &format!("probe-{size}@{local}"))
        .header("CSeq", "1 OPTIONS")
        .header("X-Pad", &"p".repeat(pad));
        b.build()
    };
    let base = build(1).len();
    assert!(size > base, "cannot build an OPTIONS of {size} bytes");
    let msg = build(size - base + 1);
    assert_eq!(msg.len(), size, "OPTIONS padding");
    msg
}

/// Sends one datagram and waits up to `wait` for an answer.
async fn udp_probe(
    sock: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    sock.send_to(bytes, server).await.expect("udp send");
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("udp receive error: {e}"),
        Err(_) => None,
    }
}

/// Reads until EOF or `wait`; returns (bytes received, time to EOF if closed).
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = tokio::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(start + wait, stream.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_service_continues() {
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
        "[sip]\ndomain = \"{DOMAIN}\"\nmax_body_bytes = {MAX_BODY}\nmax_message_bytes = {MAX_MESSAGE}\ntcp_message_timeout_secs = {TCP_STALL_SECS}\n"
    );
    let mut server = tokio::task::block_in_place(|| ServeProcess::start(&data, Some(&config)));
    let addr = server.addr;

    let (alice, bob) = common::registered_alice_and_bob(addr, DOMAIN, "before the bad input").await;
    let mut w = Witnesses { alice, bob, n: 0 };
    w.check("start-up").await;

    // --- Wrong password: 403 (a fresh 401 would also do).
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut carol = UserAgent::connect(transport, addr, "carol", DOMAIN, "not-carols-password")
            .await
            .expect("carol UA");
        let code = carol.register(600).await.expect("carol REGISTER");
        assert!(
            code == 403 || code == 401,
            "REGISTER over {transport:?} with a wrong password got {code}, expected 403 (or 401)"
        );
        carol.close().await;
    }
    w.check("wrong passwords").await;

    // --- Unknown user: 404.
    let mut mallory = UserAgent::connect(Transport::Udp, addr, "mallory", DOMAIN, "whatever")
        .await
        .expect("mallory UA");
    assert_eq!(
        mallory.register(600).await.expect("mallory REGISTER"),
        404,
        "REGISTER of a user the catalog does not know"
    );
    // Nor can anyone reach an unknown user.
    assert_eq!(
        w.alice
            .message("mallory", "hello?")
            .await
            .expect("MESSAGE to mallory"),
        404,
        "MESSAGE to an unknown user"
    );
    mallory.close().await;
    w.check("unknown user").await;

    // --- Body over max_body_bytes: 413, not delivered; exactly the limit is fine.
    let big = "B".repeat(MAX_BODY + 1);
    assert_eq!(
        w.alice
            .message("bob", &big)
            .await
            .expect("big MESSAGE over UDP"),
        413,
        "MESSAGE over UDP with a {}-byte body (limit {MAX_BODY})",
        big.len()
    );
    assert_eq!(
        w.bob
            .message("alice", &big)
            .await
            .expect("big MESSAGE over TCP"),
        413,
        "MESSAGE over TCP with a {}-byte body (limit {MAX_BODY})",
        big.len()
    );
    assert!(
        w.bob.received().iter().all(|im| im.body != big),
        "bob received a body over the limit"
    );
    assert!(
        w.alice.received().iter().all(|im| im.body != big),
        "alice received a body over the limit"
    );
    let exact = "E".repeat(MAX_BODY);
    assert_eq!(
        w.alice.message("bob", &exact).await.expect("limit MESSAGE"),
        200,
        "MESSAGE with a body of exactly max_body_bytes"
    );
    assert!(
        w.bob.received().iter().any(|im| im.body == exact),
        "bob did not get the body of exactly max_body_bytes"
    );
    w.check("oversize bodies").await;

    // --- Datagram over max_message_bytes: no answer, logged; at the limit: answered.
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("probe socket");
    let local = sock.local_addr().expect("probe addr");
    let at_limit = options_of_size(local, "UDP", MAX_MESSAGE);
    assert_eq!(at_limit.len(), MAX_MESSAGE);
    let answer = udp_probe(&sock, addr, &at_limit, Duration::from_secs(5)).await;
    let answer = answer.unwrap_or_else(|| {
        panic!("a datagram of exactly max_message_bytes ({MAX_MESSAGE}) got no answer")
    });
    assert_eq!(
        SipMessage::parse(&answer).ok().and_then(|m| m.status()),
        Some(200),
        "OPTIONS at the size limit: {}",
        first_line(&answer)
    );
    let over = options_of_size(local, "UDP", MAX_MESSAGE + 1);
    assert_eq!(over.len(), MAX_MESSAGE + 1);
    let answer = udp_probe(&sock, addr, &over, Duration::from_millis(1500)).await;
    assert!(
        answer.is_none(),
        "a datagram over max_message_bytes was answered: {}",
        first_line(answer.as_deref().unwrap_or_default())
    );
    let huge = options_of_size(local, "UDP", 20_000);
    assert!(
        udp_probe(&sock, addr, &huge, Duration::from_millis(500))
            .await
            .is_none(),
        "a 20000-byte datagram was answered"
    );
    assert!(
        server.wait_for_log("dropped oversize datagram", Duration::from_secs(5)),
        "server log does not mention the dropped oversize datagram:\n{}",
        server.log()
    );
    w.check("oversize datagrams").await;

    // --- TCP: a header section without Content-Length is unframeable: disconnected.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    s.write_all(b"HELLO this is not SIP\r\nNo-Colon-Here\r\nX: y\r\n\r\nmore garbage after it")
        .await
        .expect("write garbage");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let closed = closed.unwrap_or_else(|| panic!("TCP peer sending garbage without Content-Length was not disconnected within 5 s (got {:?})", first_line(&got)));
    assert!(
        closed < Duration::from_secs(TCP_STALL_SECS),
        "garbage connection closed only after {closed:?}: should be at once, not by the stall timer"
    );
    assert!(
        server.wait_for_log("unrecoverable stream framing error", Duration::from_secs(5)),
        "server log does not mention the framing error:\n{}",
        server.log()
    );
    // A SIP request without Content-Length on a stream: the same.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let local = s.local_addr().expect("local");
    let mut no_cl = options_of_size(local, "TCP", 600);
    let head_end = no_cl
        .windows(4)
        .position(|x| x == b"\r\n\r\n")
        .expect("header end");
    let text = String::from_utf8_lossy(&no_cl[..head_end]).replace("\r\nContent-Length: 0", "");
    no_cl = format!("{text}\r\n\r\n").into_bytes();
    s.write_all(&no_cl)
        .await
        .expect("write request without Content-Length");
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "TCP request without Content-Length: connection not closed"
    );
    // Binary garbage that never ends a header section: cut off at max_message_bytes.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let noise: Vec<u8> = (0..MAX_MESSAGE * 2)
        .map(|i| b"\x01\xfezq!"[i % 5])
        .collect();
    let _ = s.write_all(&noise).await; // the server may close before we finish writing
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "TCP peer sending {} bytes of endless garbage was not disconnected (got {:?})",
        noise.len(),
        first_line(&got)
    );
    w.check("TCP garbage").await;

    // --- TCP peer stalls mid-message: disconnected after tcp_message_timeout_secs.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let local = s.local_addr().expect("local");
    let full = options_of_size(local, "TCP", 500);
    s.write_all(&full[..200])
        .await
        .expect("write half a message");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(TCP_STALL_SECS + 5)).await;
    assert!(
        got.is_empty(),
        "half a message was answered: {}",
        first_line(&got)
    );
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "TCP peer stalled mid-message was not disconnected within {} s",
            TCP_STALL_SECS + 5
        )
    });
    assert!(
        closed >= Duration::from_millis(TCP_STALL_SECS * 800),
        "stalled connection closed after {closed:?}, before tcp_message_timeout_secs = {TCP_STALL_SECS}"
    );
    assert!(
        server.wait_for_log("tcp peer stalled", Duration::from_secs(5)),
        "server log does not mention the stalled peer:\n{}",
        server.log()
    );
    // A peer that completes its message in time is served normally.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let local = s.local_addr().expect("local");
    let full = options_of_size(local, "TCP", 500);
    s.write_all(&full[..200]).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(TCP_STALL_SECS * 300)).await;
    s.write_all(&full[200..]).await.expect("second half");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer to a TCP message sent in two parts")
        .expect("read");
    assert!(
        first_line(&buf[..n]).starts_with("SIP/2.0 200"),
        "OPTIONS sent in two parts: {}",
        first_line(&buf[..n])
    );
    // An oversize message on a stream is cut off as well.
    let mut s = TcpStream::connect(addr).await.expect("tcp connect");
    let local = s.local_addr().expect("local");
    let _ = s
        .write_all(&options_of_size(local, "TCP", MAX_MESSAGE + 500))
        .await;
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some() && got.is_empty(),
        "a {}-byte stream message (limit {MAX_MESSAGE}) was not refused: got {:?}",
        MAX_MESSAGE + 500,
        first_line(&got)
    );
    w.check("stalled and oversize TCP peers").await;

    assert!(server.is_running(), "server died; log:\n{}", server.log());
    let Witnesses { alice, bob, .. } = w;
    alice.close().await;
    bob.close().await;
    let log = tokio::task::block_in_place(|| server.stop());
    assert!(
        log.contains("sip core stopped"),
        "SIP core did not stop cleanly; log:\n{log}"
    );
    for code in ["code=403", "code=404", "code=413"] {
        assert!(
            log.contains(code),
            "server log has no rejection with {code}:\n{log}"
        );
    }
}
