//! SIP over TLS through the real tokio transports on 127.0.0.1, with real
//! rustls clients trusting the server's generated certificate: digest
//! REGISTER and MESSAGE relay between TLS and UDP agents and between two TLS
//! agents, sips: routing, the tap marking TLS traffic, and clients that
//! are not TLS or stall in the handshake being cut off without harm.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sipvault_schemas::{CapturedMessage, Direction, Transport};
use sipvault_server::tls::{TlsClient, TlsIdentity};
use sipvault_server::ua::UserAgent;
use sipvault_server::{CoreConfig, Server, ServerConfig, TlsListener, UserCredentials};
use sipvault_sip::SipMessage;
use sipvault_sip::digest::{Algorithm, ha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const DOMAIN: &str = "tls.test";
/// Stall and handshake timeout of the test server.
const STALL: Duration = Duration::from_secs(1);

struct Harness {
    server: Server,
    tap: mpsc::Receiver<CapturedMessage>,
    tls: TlsClient,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity =
            TlsIdentity::load_or_generate(&dir.path().join("tls"), DOMAIN).expect("certificate");
        let config = ServerConfig {
            sip_addr: "127.0.0.1:0".parse().unwrap(),
            core: CoreConfig {
                domain: DOMAIN.into(),
                ..CoreConfig::default()
            },
            tcp_message_timeout: STALL,
            tls: Some(TlsListener {
                addr: "127.0.0.1:0".parse().unwrap(),
                config: identity.server_config().expect("server config"),
            }),
            ..ServerConfig::default()
        };
        let (tap_tx, tap) = mpsc::channel(4096);
        let server = Server::start(config, tap_tx).await.expect("server start");
        let users = ["alice", "bob", "carol"]
            .into_iter()
            .map(|u| {
                let pw = format!("{u}-pw");
                (
                    u.to_string(),
                    UserCredentials {
                        ha1_md5: ha1(Algorithm::Md5, u, DOMAIN, &pw),
                        ha1_sha256: ha1(Algorithm::Sha256, u, DOMAIN, &pw),
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        server.user_directory().replace(users).await;
        let tls = TlsClient::trusting(&identity.chain, "127.0.0.1".parse().unwrap())
            .expect("client config");
        Harness {
            server,
            tap,
            tls,
            _dir: dir,
        }
    }

    fn tls_addr(&self) -> SocketAddr {
        self.server.tls_addr.expect("TLS listener")
    }

    /// A registered agent over `transport` (password `<user>-pw`).
    async fn agent(&self, transport: Transport, user: &str) -> UserAgent {
        let pw = format!("{user}-pw");
        let mut ua = match transport {
            Transport::Tls => {
                UserAgent::connect_tls(self.tls_addr(), self.tls.clone(), user, DOMAIN, &pw).await
            }
            t => UserAgent::connect(t, self.server.udp_addr, user, DOMAIN, &pw).await,
        }
        .unwrap_or_else(|e| panic!("{user} over {transport:?}: {e}"));
        let code = ua
            .register(600)
            .await
            .unwrap_or_else(|e| panic!("{user} REGISTER over {transport:?}: {e}"));
        assert_eq!(code, 200, "{user} REGISTER (digest) over {transport:?}");
        ua
    }

    /// Everything tapped so far.
    fn tapped(&mut self) -> Vec<CapturedMessage> {
        let mut out = Vec::new();
        while let Ok(m) = self.tap.try_recv() {
            out.push(m);
        }
        out
    }
}

async fn exchange(from: &mut UserAgent, to: &mut UserAgent, to_user: &str, body: &str) {
    let code = from.message(to_user, body).await.expect("MESSAGE");
    assert_eq!(code, 200, "MESSAGE {body:?} to {to_user}");
    let got = to.received();
    assert!(
        got.iter().any(|im| im.body == body),
        "{to_user} did not receive {body:?}: {got:?}"
    );
}

fn text(m: &CapturedMessage) -> String {
    String::from_utf8_lossy(&m.raw).into_owned()
}

#[tokio::test]
async fn register_and_message_between_tls_and_udp_tapped_as_tls() {
    let mut h = Harness::start().await;
    let mut alice = h.agent(Transport::Tls, "alice").await;
    let mut bob = h.agent(Transport::Udp, "bob").await;
    exchange(&mut alice, &mut bob, "bob", "from TLS to UDP").await;
    exchange(&mut bob, &mut alice, "alice", "from UDP to TLS").await;

    // Let the last response's tap copies land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tapped = h.tapped();
    let tls_addr = h.tls_addr();
    let alice_addr = alice.local_addr();
    let on_tls: Vec<&CapturedMessage> = tapped
        .iter()
        .filter(|m| m.transport == Transport::Tls)
        .collect();
    // Alice's flow: REGISTER x2 and their answers, her MESSAGE and its 200,
    // bob's MESSAGE relayed to her and her 200.
    for (dir, start) in [
        (Direction::In, "REGISTER sip:"),
        (Direction::Out, "SIP/2.0 401"),
        (Direction::Out, "SIP/2.0 200"),
        (Direction::In, "MESSAGE sip:bob@"),
        (Direction::Out, "MESSAGE sips:alice@"),
        (Direction::In, "SIP/2.0 200"),
    ] {
        assert!(
            on_tls
                .iter()
                .any(|m| m.direction == dir && text(m).starts_with(start)),
            "no {dir:?} {start:?} tapped as TLS; TLS copies: {:?}",
            on_tls
                .iter()
                .map(|m| (
                    m.direction,
                    text(m).lines().next().unwrap_or("").to_string()
                ))
                .collect::<Vec<_>>()
        );
    }
    for m in &on_tls {
        let (ours, theirs) = match m.direction {
            Direction::In => (m.dst, m.src),
            Direction::Out => (m.src, m.dst),
        };
        assert_eq!(ours, tls_addr, "TLS copy names the TLS listener");
        assert_eq!(theirs, alice_addr, "only alice speaks TLS here");
    }
    assert!(
        !tapped.iter().any(|m| m.transport == Transport::Tcp
            || (m.transport == Transport::Udp && (m.src == alice_addr || m.dst == alice_addr))),
        "alice's TLS traffic tapped under another transport"
    );
    // The MESSAGE relayed to alice carries our TLS Via.
    let relayed = on_tls
        .iter()
        .find(|m| m.direction == Direction::Out && text(m).starts_with("MESSAGE "))
        .expect("relayed MESSAGE");
    let relayed = SipMessage::parse(&relayed.raw).expect("relayed MESSAGE parses");
    let top = &relayed.vias()[0];
    assert_eq!(top.transport, "TLS");
    assert_eq!(top.port, Some(tls_addr.port()));
    assert_eq!(relayed.body(), b"from UDP to TLS");
    alice.close().await;
    bob.close().await;
    h.server.shutdown().await;
}

#[tokio::test]
async fn tls_to_tls_and_sips_routing() {
    let h = Harness::start().await;
    let mut alice = h.agent(Transport::Tls, "alice").await;
    let mut bob = h.agent(Transport::Tls, "bob").await;
    let mut carol = h.agent(Transport::Udp, "carol").await;
    exchange(&mut alice, &mut bob, "bob", "tls to tls").await;
    exchange(&mut bob, &mut alice, "alice", "and back").await;

    // A sips: request reaches a TLS-registered user...
    let code = alice
        .message_to(&format!("sips:bob@{DOMAIN}"), "secure all the way")
        .await
        .expect("sips MESSAGE");
    assert_eq!(code, 200, "sips: MESSAGE to a TLS user");
    assert!(
        bob.received()
            .iter()
            .any(|im| im.body == "secure all the way")
    );
    // ...and never a user registered over UDP.
    let code = alice
        .message_to(&format!("sips:carol@{DOMAIN}"), "must not leak")
        .await
        .expect("sips MESSAGE to carol");
    assert_eq!(code, 480, "sips: MESSAGE to a UDP-only user");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        carol.received().is_empty(),
        "a sips: request went out over UDP"
    );
    // A plain sip: request to carol still goes.
    exchange(&mut alice, &mut carol, "carol", "plain is fine").await;
    for ua in [alice, bob, carol] {
        ua.close().await;
    }
    h.server.shutdown().await;
}

#[tokio::test]
async fn lost_tls_flow_is_answered_480_at_once() {
    let h = Harness::start().await;
    let alice = h.agent(Transport::Tls, "alice").await;
    let mut bob = h.agent(Transport::Udp, "bob").await;
    alice.close().await;
    // The server notices the closed connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.server.stats.tcp_open.load(Ordering::Relaxed) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed TLS connection still counted open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = tokio::time::Instant::now();
    let code = bob.message("alice", "gone?").await.expect("MESSAGE");
    assert_eq!(code, 480, "MESSAGE to a user whose TLS flow is gone");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "480 took {:?}: the lost flow should be answered at once, not by Timer F",
        started.elapsed()
    );
    bob.close().await;
    h.server.shutdown().await;
}

/// Reads until EOF or `wait`; returns the time to EOF if the server closed.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + wait, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            // A TLS alert may come before the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn non_tls_and_stalled_handshakes_are_cut_without_harming_others() {
    let h = Harness::start().await;
    let mut alice = h.agent(Transport::Tls, "alice").await;
    let mut bob = h.agent(Transport::Udp, "bob").await;
    let tls = h.tls_addr();

    // Plain SIP on the TLS port: not a handshake, closed at once.
    let mut plain = TcpStream::connect(tls).await.expect("connect");
    plain
        .write_all(b"OPTIONS sip:tls.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-x\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    let t = closed_within(&mut plain, Duration::from_secs(5)).await;
    assert!(
        t.is_some_and(|t| t < STALL),
        "plain SIP on the TLS port: closed after {t:?}, expected at once"
    );
    // Garbage bytes: the same.
    let mut garbage = TcpStream::connect(tls).await.expect("connect");
    garbage.write_all(&[0xff; 64]).await.expect("write");
    let t = closed_within(&mut garbage, Duration::from_secs(5)).await;
    assert!(t.is_some_and(|t| t < STALL), "garbage: closed after {t:?}");

    // Silent client, and one that stops inside its ClientHello (a record
    // header announcing 512 bytes, then nothing): cut after the timeout,
    // not before, while alice and bob go on.
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(tls).await.expect("connect");
    let mut partial = TcpStream::connect(tls).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    exchange(&mut alice, &mut bob, "bob", "during the stalls").await;
    exchange(&mut bob, &mut alice, "alice", "still during the stalls").await;
    for (name, stream) in [
        ("silent", &mut silent),
        ("partial ClientHello", &mut partial),
    ] {
        // Measured from the connect: both stall at the same time.
        let t = closed_within(stream, STALL * 6)
            .await
            .map(|_| opened.elapsed());
        assert!(
            t.is_some_and(|t| t >= STALL * 7 / 10),
            "{name} handshake: closed after {t:?}, expected after about {STALL:?}"
        );
    }
    assert_eq!(
        h.server
            .stats
            .tls_handshake_failures
            .load(Ordering::Relaxed),
        4,
        "plain, garbage, silent and partial handshakes counted"
    );
    exchange(&mut alice, &mut bob, "bob", "after the stalls").await;
    assert_eq!(
        h.server.stats.tcp_open.load(Ordering::Relaxed),
        1,
        "only alice's connection stays open"
    );
    alice.close().await;
    bob.close().await;
    h.server.shutdown().await;
}
