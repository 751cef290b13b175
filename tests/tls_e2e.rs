//! SIP over TLS through the real `sipvault serve`: the certificate made on
//! the first start and reused after, one given with --tls-cert/--tls-key,
//! --tls off, and a TLS agent exchanging MESSAGEs with a UDP agent whose
//! signalling the archive holds decrypted and marked `tls`.

mod common;

use std::path::Path;

use common::{ServeProcess, add_users, sql_rows};
use sipvault_schemas::Transport;
use sipvault_server::tls::{fingerprint, read_certificates};
use sipvault_server::ua::UserAgent;

const DOMAIN: &str = "tlse2e.test";

/// The `sha256=` and `(origin)` of the certificate log line.
fn logged_certificate(server: &ServeProcess) -> (String, String) {
    let sha = server.log_value("sha256");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("tls certificate="))
        .expect("certificate line");
    let origin = line
        .rsplit_once('(')
        .and_then(|(_, o)| o.strip_suffix(')'))
        .unwrap_or("")
        .to_string();
    (sha, origin)
}

fn file_fingerprint(cert: &Path) -> String {
    fingerprint(&read_certificates(cert).expect("certificate file")[0])
}

#[test]
fn certificate_is_generated_once_reused_given_or_off() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cert = data.join("tls/cert.pem");

    let server = ServeProcess::start(&data, None);
    assert!(server.tls.is_some(), "TLS is on by default");
    let (sha, origin) = logged_certificate(&server);
    assert_eq!(origin, "generated");
    assert_eq!(sha, file_fingerprint(&cert), "logged fingerprint");
    assert!(
        server
            .log()
            .contains(&format!("certificate={}", cert.display()))
    );
    server.stop();
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(data.join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode, 0o600, "generated key readable by its owner only");

    let server = ServeProcess::start(&data, None);
    let (again, origin) = logged_certificate(&server);
    assert_eq!(origin, "reused");
    assert_eq!(again, sha, "the second start reuses the certificate");
    server.stop();

    // A given pair (here another data directory's generated one).
    let other = tmp.path().join("other");
    let first = ServeProcess::start(&other, None);
    first.stop();
    let (c, k) = (other.join("tls/cert.pem"), other.join("tls/key.pem"));
    let server = ServeProcess::start_with(
        &data,
        None,
        &[
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
        ],
    );
    let (given, origin) = logged_certificate(&server);
    assert_eq!(origin, "given");
    assert_eq!(given, file_fingerprint(&c));
    assert_ne!(given, sha);
    server.stop();

    let off = tmp.path().join("off");
    let server = ServeProcess::start_with(&off, None, &["--tls", "off"]);
    assert_eq!(server.tls, None, "--tls off");
    assert_eq!(server.log_value("sip_tls"), "off");
    server.stop();
    assert!(
        !off.join("tls").exists(),
        "no certificate made with TLS off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_agent_talks_to_udp_agent_and_the_archive_marks_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(&data, DOMAIN, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let config = format!("[sip]\ndomain = \"{DOMAIN}\"\n");
    let server = tokio::task::block_in_place(|| ServeProcess::start(&data, Some(&config)));
    let mut alice = UserAgent::connect_tls(
        server.tls_addr(),
        server.tls_client(),
        "alice",
        DOMAIN,
        "alice-pw",
    )
    .await
    .expect("alice over TLS");
    let mut bob = UserAgent::connect(Transport::Udp, server.addr, "bob", DOMAIN, "bob-pw")
        .await
        .expect("bob over UDP");
    assert_eq!(alice.register(600).await.expect("alice REGISTER"), 200);
    assert_eq!(bob.register(600).await.expect("bob REGISTER"), 200);
    assert_eq!(
        alice
            .message("bob", "sealed in TLS")
            .await
            .expect("MESSAGE"),
        200
    );
    assert_eq!(
        bob.message("alice", "answer into TLS")
            .await
            .expect("MESSAGE"),
        200
    );
    assert!(
        alice
            .received()
            .iter()
            .any(|im| im.body == "answer into TLS")
    );
    alice.close().await;
    bob.close().await;
    tokio::task::block_in_place(|| server.stop());

    let rows = sql_rows(
        &data,
        "SELECT direction, method, status FROM sip_messages \
         WHERE transport = 'tls' AND (method = 'MESSAGE' OR cseq_method = 'MESSAGE') \
         ORDER BY time",
    );
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let what = match (&r["method"], &r["status"]) {
                (serde_json::Value::String(m), _) => m.clone(),
                (_, s) => s.to_string(),
            };
            (r["direction"].as_str().unwrap_or("").to_string(), what)
        })
        .collect();
    let want = [
        ("in", "MESSAGE"),  // alice's MESSAGE
        ("out", "200"),     // its answer
        ("out", "MESSAGE"), // bob's MESSAGE relayed to alice
        ("in", "200"),      // alice's answer
    ];
    for (dir, what) in want {
        assert!(
            seen.iter().any(|(d, w)| d == dir && w == what),
            "archive lacks a {dir} {what} over tls: {seen:?}"
        );
    }
    let bodies = sql_rows(&data, "SELECT body FROM im_messages ORDER BY time");
    let bodies: Vec<&str> = bodies.iter().filter_map(|r| r["body"].as_str()).collect();
    assert_eq!(
        bodies,
        ["sealed in TLS", "answer into TLS"],
        "IMs over TLS archived decrypted"
    );
}
