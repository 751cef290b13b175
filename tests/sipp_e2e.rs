//! End to end with a real SIP peer: SIPp registers with digest auth and
//! sends MESSAGEs through `sipvault serve` to a SIPp UAS; afterwards the
//! archive holds exactly those IMs, the manifest matches the files, and
//! search finds them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::{Array, ListArray, RecordBatch, StringArray, UInt16Array};
use common::{
    ServeProcess, SippSide, add_users, free_udp_port, run_sipp, run_sipp_pair, sipp_available,
    sipp_register, sipvault, testdata,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

const MESSAGES: usize = 3;

fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let Ok(dates) = std::fs::read_dir(dir) else {
        return batches;
    };
    for date in dates {
        for file in std::fs::read_dir(date.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "parquet") {
                let f = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                    .unwrap()
                    .build()
                    .unwrap();
                batches.extend(reader.map(|b| b.unwrap()));
            }
        }
    }
    batches
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name} missing"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has an unexpected type"))
}

#[test]
fn sipp_register_and_message_are_relayed_archived_and_searchable() {
    if !sipp_available() {
        panic!("sipp is not installed (Debian package sip-tester); .ci/run installs it");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(
        &data,
        "sipp.test",
        &[("alice", "secret"), ("bob", "secret")],
    );
    let server = ServeProcess::start(
        &data,
        Some("[sip]\ndomain = \"sipp.test\"\n[archive]\nsegment_max_age_secs = 3600\n"),
    );
    let remote = server.addr.to_string();
    let scenarios = testdata().join("sipp");
    let alice_port = free_udp_port();
    let bob_port = free_udp_port();

    // alice: the shared REGISTER scenario, digest checked by our registrar.
    run_sipp(
        &scenarios.join("register"),
        &[
            "-sf".into(),
            "uac.xml".into(),
            remote.clone(),
            "-p".into(),
            alice_port.to_string(),
            "-m".into(),
            "1".into(),
            "-auth_uri".into(),
            "sipp.test".into(),
        ],
        "REGISTER alice (testdata/sipp/register/uac.xml)",
    );
    // bob registers from the port its UAS will listen on.
    sipp_register(
        &remote,
        "bob",
        "sipp.test",
        bob_port,
        "REGISTER bob (tests/sipp/register-user.xml)",
    );
    run_sipp_pair(
        SippSide {
            dir: &scenarios.join("message"),
            args: vec![
                "-sf".into(),
                "uas.xml".into(),
                "-p".into(),
                bob_port.to_string(),
                "-m".into(),
                MESSAGES.to_string(),
            ],
        },
        SippSide {
            dir: &scenarios.join("message"),
            args: vec![
                "-sf".into(),
                "uac.xml".into(),
                remote.clone(),
                "-p".into(),
                alice_port.to_string(),
                "-m".into(),
                MESSAGES.to_string(),
                "-r".into(),
                "10".into(),
            ],
        },
        "MESSAGE alice -> bob (testdata/sipp/message/uac.xml)",
    );

    // Searching while the server runs works: nothing sealed yet (the segment
    // age is an hour), but the reader must not fail or block the writer.
    let live = sipvault(&data, &["search", "München", "--format", "json"]);
    assert!(
        live.trim_start().starts_with('['),
        "search while serving must answer JSON: {live}"
    );

    let log = server.stop();
    assert!(
        log.contains("archive sealed"),
        "no clean seal in the log:\n{log}"
    );

    // Exact IM rows in Parquet.
    let batches = read_parquet_dir(&data.join("archive/im_messages"));
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, MESSAGES, "im_messages rows");
    let mut bodies = Vec::new();
    for b in &batches {
        let sender = col::<StringArray>(b, "sender");
        let ctype = col::<StringArray>(b, "content_type");
        let body = col::<StringArray>(b, "body");
        let status = col::<StringArray>(b, "delivery_status");
        let code = col::<UInt16Array>(b, "status");
        let recipients = col::<ListArray>(b, "recipients");
        for i in 0..b.num_rows() {
            assert_eq!(sender.value(i), "sip:alice@sipp.test");
            let r = recipients.value(i);
            let r = r.as_any().downcast_ref::<StringArray>().unwrap();
            assert_eq!(
                (r.len(), r.value(0)),
                (1, "sip:bob@sipp.test"),
                "recipients"
            );
            assert_eq!(ctype.value(i), "text/plain;charset=UTF-8");
            assert_eq!(status.value(i), "delivered");
            assert_eq!(code.value(i), 200);
            bodies.push(body.value(i).trim_end().to_string());
        }
    }
    bodies.sort();
    let expected: Vec<String> = (1..=MESSAGES)
        .map(|n| format!("Hello Bob, this is test message number {n}. Grüße aus München ✓"))
        .collect();
    assert_eq!(bodies, expected, "IM bodies as archived");

    // sip_messages: every message in and out; per MESSAGE: in, relayed out, 200 in, 200 out.
    let sip = read_parquet_dir(&data.join("archive/sip_messages"));
    let mut methods = std::collections::BTreeMap::<String, usize>::new();
    for b in &sip {
        let m = col::<StringArray>(b, "method");
        let s = col::<UInt16Array>(b, "status");
        let cm = col::<StringArray>(b, "cseq_method");
        for i in 0..b.num_rows() {
            let key = if m.is_null(i) {
                format!("{} {}", s.value(i), cm.value(i))
            } else {
                m.value(i).to_string()
            };
            *methods.entry(key).or_default() += 1;
        }
    }
    assert_eq!(
        methods.get("MESSAGE"),
        Some(&(2 * MESSAGES)),
        "MESSAGE rows (in + relayed): {methods:?}"
    );
    assert_eq!(
        methods.get("200 MESSAGE"),
        Some(&(2 * MESSAGES)),
        "200 rows (from bob + to alice): {methods:?}"
    );
    assert_eq!(
        methods.get("REGISTER"),
        Some(&4),
        "REGISTER rows (2 per user): {methods:?}"
    );
    assert_eq!(methods.get("401 REGISTER"), Some(&2), "{methods:?}");
    assert_eq!(methods.get("200 REGISTER"), Some(&2), "{methods:?}");

    // Manifest: one row per sealed file, hash and row count match, chain intact.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let entries = rt.block_on(async {
        let cat = sipvault_catalog::Catalog::open(&data).await.unwrap();
        cat.segments().await.unwrap()
    });
    assert_eq!(
        entries.len(),
        2,
        "one sip_messages and one im_messages segment: {entries:?}"
    );
    for e in &entries {
        let bytes =
            std::fs::read(data.join(&e.path)).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            e.sha256,
            "SHA-256 of {}",
            e.path
        );
        let f = std::fs::File::open(data.join(&e.path)).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        assert_eq!(
            meta.metadata().file_metadata().num_rows(),
            e.rows,
            "row count of {}",
            e.path
        );
    }
    assert!(
        sipvault_catalog::broken_links(&entries).is_empty(),
        "manifest hash chain broken"
    );

    // Search finds the IMs.
    let started = Instant::now();
    let out = sipvault(
        &data,
        &[
            "search",
            "\"Grüße aus München\"",
            "--from",
            "alice",
            "--format",
            "json",
        ],
    );
    let hits: serde_json::Value = serde_json::from_str(&out).expect("search --format json");
    let hits = hits.as_array().expect("JSON array");
    assert_eq!(hits.len(), MESSAGES, "search hits: {out}");
    assert!(hits.iter().all(|h| h["from"] == "sip:alice@sipp.test"));
    assert!(started.elapsed() < Duration::from_secs(30));
    // SIPp sends `From: "Alice" <sip:alice@sipp.test>` and `To: "Bob" <...>`:
    // the display names are archived, searched and shown.
    let named = sipvault(
        &data,
        &["search", "from:\"alice\" AND to:bob", "--format", "json"],
    );
    let named: serde_json::Value = serde_json::from_str(&named).expect("search --format json");
    let named = named.as_array().expect("JSON array");
    assert_eq!(named.len(), MESSAGES, "search hits: {named:?}");
    assert!(
        named
            .iter()
            .all(|h| h["from_name"] == "Alice" && h["to_name"] == "Bob"),
        "display names in the hits: {named:?}"
    );
    let table = sipvault(&data, &["search", "from:alice", "--limit", "1"]);
    assert!(
        table.contains("Alice <sip:alice@sipp.test>") && table.contains("Bob <sip:bob@sipp.test>"),
        "names shown with the addresses: {table}"
    );
    let none = sipvault(
        &data,
        &["search", "München AND NOT Bob", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&none)
            .unwrap()
            .as_array()
            .map(|a| a.len()),
        Some(0),
        "NOT must exclude: {none}"
    );

    // SQL over the archive.
    let csv = sipvault(
        &data,
        &[
            "sql",
            "SELECT count(*) AS n FROM im_messages WHERE delivery_status = 'delivered'",
            "--format",
            "csv",
        ],
    );
    assert_eq!(csv.trim(), format!("n\n{MESSAGES}"), "sql count");
}

/// RFC 8760 over real sockets: configured to, the server's 401 offers MD5
/// and SHA-256; a SHA-256 client and an MD5-only client both register,
/// and the archived REGISTERs show which algorithm each used. (SIPp 3.6,
/// used above, knows only MD5 and refuses a 401 that offers SHA-256 too.)
#[tokio::test]
async fn sha256_and_md5_digest_clients_both_register() {
    use sipvault_schemas::Transport;
    use sipvault_server::ua::UserAgent;
    use sipvault_sip::digest::Algorithm;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(&data, "digest.test", &[("alice", "a-pw"), ("bob", "b-pw")]);
    let server = ServeProcess::start(
        &data,
        Some("[sip]\ndomain = \"digest.test\"\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n"),
    );
    let mut alice = UserAgent::connect(Transport::Udp, server.addr, "alice", "digest.test", "a-pw")
        .await
        .expect("alice UA");
    let mut bob = UserAgent::connect(Transport::Tcp, server.addr, "bob", "digest.test", "b-pw")
        .await
        .expect("bob UA");
    bob.digest = Some(Algorithm::Md5);
    assert_eq!(alice.register(600).await.unwrap(), 200, "SHA-256 REGISTER");
    assert_eq!(bob.register(600).await.unwrap(), 200, "MD5 REGISTER");
    let mut wrong = UserAgent::connect(Transport::Udp, server.addr, "bob", "digest.test", "nope")
        .await
        .expect("UA with a wrong password");
    assert_eq!(
        wrong.register(600).await.unwrap(),
        403,
        "SHA-256 with a wrong password"
    );
    alice.close().await;
    bob.close().await;
    wrong.close().await;
    server.stop();

    let rows = common::sql_rows(
        &data,
        "SELECT from_uri, status, CAST(raw AS VARCHAR) AS raw FROM sip_messages WHERE cseq_method = 'REGISTER' ORDER BY time",
    );
    let raw_of = |r: &serde_json::Value| r["raw"].as_str().unwrap_or_default().to_string();
    let authorized = |user: &str, alg: &str| {
        rows.iter().any(|r| {
            r["from_uri"] == format!("sip:{user}@digest.test")
                && raw_of(r).contains("Authorization: Digest")
                && raw_of(r).contains(&format!("algorithm={alg}"))
        })
    };
    assert!(
        authorized("alice", "SHA-256"),
        "alice answered with SHA-256: {rows:?}"
    );
    assert!(authorized("bob", "MD5"), "bob answered with MD5: {rows:?}");
    assert!(
        rows.iter().any(|r| r["status"] == 401
            && raw_of(r).contains("algorithm=SHA-256")
            && raw_of(r).contains("algorithm=MD5")),
        "the 401 offers both algorithms: {rows:?}"
    );
}
