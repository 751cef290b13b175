//! Presence through `sipvault serve` with real SIPp peers: alice PUBLISHes
//! (initial, refresh, modify, remove: testdata/sipp/publish), a watcher
//! SUBSCRIBEs to bob and gets the initial and the terminated NOTIFY
//! (testdata/sipp/presence-subscribe), all answered by the server's presence
//! agent; the archive holds the presence changes.

mod common;

use common::{ServeProcess, add_users, run_sipp, sipp_available, sql_rows, testdata};

#[test]
fn sipp_publish_and_subscribe_are_served_and_archived() {
    assert!(
        sipp_available(),
        "sipp is not installed (Debian package sip-tester); .ci/run installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(
        &data,
        "sipp.test",
        &[("alice", "secret"), ("bob", "secret")],
    );
    let server = ServeProcess::start(&data, Some("[sip]\ndomain = \"sipp.test\"\n"));
    let remote = server.addr.to_string();
    let scenarios = testdata().join("sipp");
    run_sipp(
        &scenarios.join("publish"),
        &[
            "-sf".into(),
            "uac.xml".into(),
            remote.clone(),
            "-m".into(),
            "1".into(),
        ],
        "PUBLISH initial, refresh, modify, remove (testdata/sipp/publish/uac.xml)",
    );
    run_sipp(
        &scenarios.join("presence-subscribe"),
        &[
            "-sf".into(),
            "uac.xml".into(),
            remote.clone(),
            "-m".into(),
            "1".into(),
        ],
        "SUBSCRIBE, NOTIFY, unsubscribe, terminated NOTIFY (testdata/sipp/presence-subscribe/uac.xml)",
    );
    server.stop();

    let rows = sql_rows(
        &data,
        "SELECT entity, basic, note, via FROM presence ORDER BY time",
    );
    let published: Vec<(String, String, String)> = rows
        .iter()
        .filter(|r| r["via"] == "publish")
        .map(|r| {
            (
                r["entity"].as_str().unwrap_or_default().to_string(),
                r["basic"].as_str().unwrap_or_default().to_string(),
                r["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        published.contains(&("sip:alice@sipp.test".into(), "open".into(), "Online".into()))
            && published.contains(&(
                "sip:alice@sipp.test".into(),
                "closed".into(),
                "In a meeting".into()
            )),
        "alice's published states are archived: {rows:?}"
    );
    let notified: Vec<&serde_json::Value> = rows.iter().filter(|r| r["via"] == "notify").collect();
    assert!(
        !notified.is_empty() && notified.iter().all(|r| r["entity"] == "sip:bob@sipp.test"),
        "the server's NOTIFYs about bob are archived: {rows:?}"
    );
    let notifies = sql_rows(
        &data,
        "SELECT count(*) AS n FROM sip_messages WHERE method = 'NOTIFY' AND direction = 'out'",
    );
    assert_eq!(
        notifies[0]["n"], 2,
        "the initial and the terminated NOTIFY were sent"
    );
}
