//! Critical mode end to end: with `archive.critical = true`, `sipvault
//! serve` relays an IM only once the archive has accepted it; while the
//! archive cannot (its write-ahead log directory is unusable), IMs are
//! refused with 503 and a log line, and accepted again by themselves once
//! the directory is back. Nothing that was answered 200 is missing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ServeProcess, add_users, registered_alice_and_bob, run_sipvault, sql_rows};

const DOMAIN: &str = "critical.test";

#[test]
fn ims_are_refused_while_the_archive_cannot_accept_and_resume_after() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(&data, DOMAIN, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    // Log files of about one group each: the log opens a new file almost
    // every append, so an unusable directory shows at once.
    let config =
        format!("[sip]\ndomain = \"{DOMAIN}\"\n[archive]\ncritical = true\nwal_file_bytes = 1\n");
    let server = ServeProcess::start(&data, Some(&config));
    let wal = data.join("wal");
    let parked = data.join("wal.parked");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut delivered = BTreeSet::new();
    rt.block_on(async {
        let (mut alice, mut bob) = registered_alice_and_bob(server.addr, DOMAIN, "at start").await;
        alice.timeout = Duration::from_secs(10);
        for n in 0..5 {
            let body = format!("before {n}");
            assert_eq!(alice.message("bob", &body).await.unwrap(), 200, "{body}");
            delivered.insert(body);
        }

        // The archive's log directory becomes a plain file: no log file can
        // be created (this holds for root too, unlike permissions).
        std::fs::rename(&wal, &parked).unwrap();
        std::fs::write(&wal, b"not a directory").unwrap();
        let mut refused = 0;
        for n in 0..5 {
            let body = format!("during {n}");
            match alice.message("bob", &body).await.unwrap() {
                503 => refused += 1,
                200 => {
                    delivered.insert(body);
                }
                other => panic!("{body}: unexpected status {other}"),
            }
        }
        assert!(
            refused >= 4,
            "IMs must be refused while the archive cannot accept them ({refused} of 5 refused)"
        );
        assert!(
            bob.received()
                .iter()
                .all(|im| !im.body.starts_with("during") || delivered.contains(&im.body)),
            "a refused IM must not reach its recipient"
        );

        std::fs::remove_file(&wal).unwrap();
        std::fs::rename(&parked, &wal).unwrap();
        // Resumes by itself: no restart, no operator action.
        let mut resumed = false;
        for n in 0..20 {
            let body = format!("after {n}");
            match alice.message("bob", &body).await.unwrap() {
                200 => {
                    delivered.insert(body);
                    resumed = true;
                    break;
                }
                503 => tokio::time::sleep(Duration::from_millis(250)).await,
                other => panic!("{body}: unexpected status {other}"),
            }
        }
        assert!(resumed, "IMs are accepted again once the archive recovers");
        for n in 0..5 {
            let body = format!("later {n}");
            assert_eq!(alice.message("bob", &body).await.unwrap(), 200, "{body}");
            delivered.insert(body);
        }
        alice.close().await;
        bob.close().await;
    });
    let log = server.stop();
    assert!(
        log.contains("archive cannot accept"),
        "the refusal is logged; log:\n{log}"
    );
    let archived: BTreeSet<String> = sql_rows(&data, "SELECT body FROM im_messages")
        .iter()
        .filter_map(|r| r["body"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = delivered.difference(&archived).collect();
    assert!(
        missing.is_empty(),
        "IMs answered 200 missing from the archive: {missing:?}"
    );
    let verify = run_sipvault(&data, &["verify"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}
