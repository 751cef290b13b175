//! Federation between two real `sipvault serve` instances: a.example on
//! 127.0.0.1 and b.example on 127.0.0.2, each listing the other under
//! `[[federation]]` with the other's certificate. Users of the two domains
//! exchange MESSAGEs both ways, a SIPp watcher of a.example subscribes to
//! the presence of bob@b.example (NOTIFYs come back through its server),
//! and a SIPp caller of a.example calls a SIPp callee of b.example, ACK and
//! BYE following the route both servers record. Between the servers
//! everything travels over TLS, and both archives hold it decrypted.
//! Requests claiming a federated domain from any other address, and
//! requests between two foreign domains, are refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ServeProcess, add_users, sipp, sipp_available, sipp_register, sql_rows};
use sipvault_schemas::Transport;
use sipvault_server::tls::TlsIdentity;
use sipvault_server::ua::UserAgent;
use sipvault_sip::{MessageBuilder, SipMessage};

/// A free TCP port on `ip` (for a TLS listener the other server must
/// know before either starts).
fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration of one server: its domain and TLS listener, the
/// other server as its federated peer, and the peer's users allowed to
/// watch the presence of `watched`.
fn config(
    domain: &str,
    tls: SocketAddr,
    peer: &str,
    peer_tls: SocketAddr,
    peer_cert: &Path,
    watched: &str,
) -> String {
    format!(
        "[sip]\ndomain = \"{domain}\"\ntls_listen = \"{tls}\"\n\n\
         [presence]\nallow = {{ {watched} = [\"*@{peer}\"] }}\n\n\
         [[federation]]\ndomain = \"{peer}\"\naddress = \"{peer_tls}\"\ncertificate = \"{}\"\n",
        peer_cert.display()
    )
}

/// A MESSAGE from `from` to `to`, sent over UDP from `local_ip` to
/// `server`; returns the status of the answer.
async fn message_from(local_ip: &str, server: SocketAddr, from: &str, to: &str) -> u16 {
    let sock = tokio::net::UdpSocket::bind((local_ip, 0))
        .await
        .expect("bind");
    let local = sock.local_addr().unwrap();
    let mut b = MessageBuilder::request("MESSAGE", to);
    b.header(
        "Via",
        &format!("SIP/2.0/UDP {local};branch=z9hG4bK-fed-{}", local.port()),
    )
    .header("Max-Forwards", "70")
    .header("From", &format!("<{from}>;tag=spoof"))
    .header("To", &format!("<{to}>"))
    .header("Call-ID", &format!("spoof-{}@{local_ip}", local.port()))
    .header("CSeq", "1 MESSAGE")
    .body("text/plain", b"not from the peer's server");
    sock.send_to(&b.build(), server).await.expect("send");
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        let resp = SipMessage::parse(&buf[..n]).expect("a SIP response");
        if let Some(code) = resp.status().filter(|c| *c >= 200) {
            return code;
        }
    }
}

/// Waits (bounded) until `ua` has received an IM with `body`.
async fn wait_for_im(ua: &mut UserAgent, body: &str, who: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < end {
        seen.extend(ua.received());
        if seen.iter().any(|im| im.body == body) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{who} never received {body:?}; got {seen:?}");
}

/// Runs a SIPp scenario of tests/sipp to completion; on failure the
/// message shows SIPp's output and both servers' logs.
fn run_scenario(servers: [&ServeProcess; 2], args: &[&str], what: &str) {
    let out = sipp(
        &common::our_scenarios(),
        &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    )
    .wait_with_output()
    .expect("wait for sipp");
    assert!(
        out.status.success(),
        "SIPp {what} failed ({}):\n{}\n{}\n--- a.example's log:\n{}\n--- b.example's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        servers[0].log(),
        servers[1].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_federated_servers_exchange_messages_presence_and_a_call_over_tls() {
    assert!(
        sipp_available(),
        "sipp is not installed (Debian package sip-tester); .ci/run installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Each server's certificate exists before either starts: the other
    // one's configuration names it as the certificate it trusts.
    let cert_a = TlsIdentity::load_or_generate(&data_a.join("tls"), "a.example")
        .unwrap()
        .cert_path;
    let cert_b = TlsIdentity::load_or_generate(&data_b.join("tls"), "b.example")
        .unwrap()
        .cert_path;
    let tls_a: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1"))
        .parse()
        .unwrap();
    let tls_b: SocketAddr = format!("127.0.0.2:{}", free_tcp_port("127.0.0.2"))
        .parse()
        .unwrap();
    add_users(&data_a, "a.example", &[("alice", "secret")]);
    add_users(&data_b, "b.example", &[("bob", "secret")]);
    let a = ServeProcess::start_at(
        &data_a,
        Some(&config(
            "a.example",
            tls_a,
            "b.example",
            tls_b,
            &cert_b,
            "alice",
        )),
        "127.0.0.1:0",
        &[],
    );
    let b = ServeProcess::start_at(
        &data_b,
        Some(&config(
            "b.example",
            tls_b,
            "a.example",
            tls_a,
            &cert_a,
            "bob",
        )),
        "127.0.0.2:0",
        &[],
    );
    assert_eq!(a.tls_addr(), tls_a, "a.example's TLS listener");
    assert_eq!(b.tls_addr(), tls_b, "b.example's TLS listener");

    // IM both ways between the domains.
    let mut alice = UserAgent::connect(Transport::Udp, a.addr, "alice", "a.example", "secret")
        .await
        .expect("alice UA");
    let mut bob = UserAgent::connect(Transport::Tcp, b.addr, "bob", "b.example", "secret")
        .await
        .expect("bob UA");
    assert_eq!(
        alice.register(600).await.unwrap(),
        200,
        "alice registers at a.example"
    );
    assert_eq!(
        bob.register(600).await.unwrap(),
        200,
        "bob registers at b.example"
    );
    let code = alice
        .message_to("sip:bob@b.example", "hello b.example")
        .await
        .unwrap();
    assert_eq!(
        code, 200,
        "alice@a.example -> bob@b.example across the federation"
    );
    wait_for_im(&mut bob, "hello b.example", "bob@b.example").await;
    let code = bob
        .message_to("sip:alice@a.example", "hello back from b.example")
        .await
        .unwrap();
    assert_eq!(
        code, 200,
        "bob@b.example -> alice@a.example across the federation"
    );
    wait_for_im(&mut alice, "hello back from b.example", "alice@a.example").await;

    // The peer's domain is accepted only from the peer's server.
    assert_eq!(
        message_from(
            "127.0.0.3",
            b.addr,
            "sip:mallory@a.example",
            "sip:bob@b.example"
        )
        .await,
        403,
        "a.example from an address other than its server"
    );
    // No relaying between two foreign domains.
    assert_eq!(
        message_from(
            "127.0.0.1",
            a.addr,
            "sip:carol@c.example",
            "sip:bob@b.example"
        )
        .await,
        403,
        "c.example -> b.example through a.example's server"
    );

    // Presence: a SIPp watcher of a.example subscribes to bob@b.example.
    let remote_a = a.addr.to_string();
    run_scenario(
        [&a, &b],
        &[
            "-sf",
            "federated-subscribe.xml",
            &remote_a,
            "-m",
            "1",
            "-s",
            "alice",
            "-au",
            "alice",
            "-ap",
            "secret",
            "-auth_uri",
            "a.example",
            "-key",
            "domain",
            "a.example",
            "-key",
            "watched",
            "sip:bob@b.example",
        ],
        "SUBSCRIBE to bob@b.example from a.example, NOTIFY, unsubscribe",
    );

    // A call: bob's SIPp phone registers at b.example (bob's UA leaves, so
    // the call does not fork to it), alice's SIPp phone calls through a.example.
    assert_eq!(bob.register(0).await.unwrap(), 200, "bob's UA unregisters");
    bob.close().await;
    let bob_port = common::free_udp_port();
    let remote_b = b.addr.to_string();
    sipp_register(
        &remote_b,
        "bob",
        "b.example",
        bob_port,
        "register bob's phone at b.example",
    );
    let callee = sipp(
        &common::our_scenarios(),
        &[
            "-sf",
            "call-uas-record-route.xml",
            &remote_b,
            "-p",
            &bob_port.to_string(),
            "-m",
            "1",
        ]
        .map(String::from),
    );
    std::thread::sleep(Duration::from_millis(300));
    run_scenario(
        [&a, &b],
        &[
            "-sf",
            "federated-call-uac.xml",
            &remote_a,
            "-m",
            "1",
            "-s",
            "alice",
            "-key",
            "domain",
            "a.example",
            "-key",
            "callee",
            "sip:bob@b.example",
        ],
        "call alice@a.example -> bob@b.example",
    );
    let out = callee.wait_with_output().expect("wait for bob's SIPp");
    assert!(
        out.status.success(),
        "bob's SIPp phone at b.example failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    alice.close().await;
    a.stop();
    b.stop();

    // No user agent speaks TLS here: the TLS rows are the servers' leg.
    // The other server's rows, whatever the transport: everything of
    // 127.0.0.2 at a.example (b.example is alone there); at b.example,
    // whose users are on 127.0.0.1 too, what went to a.example's listener.
    let at_a = "(src LIKE '127.0.0.2:%' OR dst LIKE '127.0.0.2:%')".to_string();
    let at_b = format!("(src = '{tls_a}' OR dst = '{tls_a}')");
    for (data, name, with_peer) in [(&data_a, "a.example", at_a), (&data_b, "b.example", at_b)] {
        let between = sql_rows(
            data,
            "SELECT DISTINCT COALESCE(method, cseq_method) AS m FROM sip_messages \
             WHERE lower(transport) = 'tls' ORDER BY m",
        );
        let methods: Vec<&str> = between.iter().filter_map(|r| r["m"].as_str()).collect();
        for m in ["ACK", "BYE", "INVITE", "MESSAGE", "NOTIFY", "SUBSCRIBE"] {
            assert!(
                methods.contains(&m),
                "{name}'s archive holds {m} exchanged with its peer over TLS: {methods:?}"
            );
        }
        let plain = sql_rows(
            data,
            &format!(
                "SELECT count(*) AS n FROM sip_messages WHERE lower(transport) <> 'tls' AND {with_peer}"
            ),
        );
        assert_eq!(plain[0]["n"], 0, "{name} spoke to its peer only over TLS");
        let ims = sql_rows(data, "SELECT sender, body FROM im_messages ORDER BY time");
        for (sender, body) in [
            ("sip:alice@a.example", "hello b.example"),
            ("sip:bob@b.example", "hello back from b.example"),
        ] {
            assert!(
                ims.iter()
                    .any(|r| r["sender"] == sender && r["body"] == body),
                "{name}'s archive holds {sender}'s IM {body:?}: {ims:?}"
            );
        }
        let calls = sql_rows(data, "SELECT caller, callee, disposition FROM calls");
        assert!(
            calls.iter().any(|r| r["caller"] == "sip:alice@a.example"
                && r["callee"] == "sip:bob@b.example"
                && r["disposition"] == "answered"),
            "{name}'s archive holds the answered call between the domains: {calls:?}"
        );
    }
}
