//! `sipvault conversation` and `sipvault timeline` through the real binary,
//! over the hand-written day of `fixture::generate_conversation_fixture`
//! (its contents are listed in that function's docs).

mod common;

use std::path::Path;

use common::{Run, run_sipvault, sipvault};
use sipvault_query::fixture::generate_conversation_fixture;

fn archive() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    generate_conversation_fixture(dir.path()).expect("write the fixture");
    dir
}

/// Runs `sipvault ARGS --as auditor --data DATA`.
fn run(data: &Path, args: &[&str]) -> Run {
    let mut args = args.to_vec();
    args.extend(["--as", "auditor"]);
    run_sipvault(data, &args)
}

fn json_rows(text: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(rows)) => rows,
        other => panic!("not a JSON array: {other:?}\n{text}"),
    }
}

fn column<'a>(rows: &'a [serde_json::Value], name: &str) -> Vec<&'a str> {
    rows.iter()
        .map(|r| r[name].as_str().unwrap_or_else(|| panic!("{name} in {r}")))
        .collect()
}

fn audit_rows(data: &Path) -> Vec<serde_json::Value> {
    json_rows(&sipvault(data, &["audit", "list", "--format", "json"]))
}

#[test]
fn conversation_by_call_id_and_by_key() {
    let dir = archive();
    let data = dir.path();
    let by_call_id = run(data, &["conversation", "conv-2", "--format", "json"]);
    assert_eq!(by_call_id.code, 0, "{}", by_call_id.stderr);
    let rows = json_rows(&by_call_id.stdout);
    // alice and bob, both directions, 09:00-09:04; not the group IM at
    // 09:30 nor the IM at 14:00, more than 30 minutes later.
    assert_eq!(
        column(&rows, "key"),
        ["conv-1#1", "conv-2#1", "conv-3#1", "conv-4#1"]
    );
    assert_eq!(
        column(&rows, "sender"),
        [
            "sip:alice@example.com",
            "sip:bob@example.com",
            "sip:alice@example.com",
            "sip:alice@example.com"
        ]
    );
    assert_eq!(
        column(&rows, "delivery_status"),
        ["delivered", "delivered", "delivered", "failed"]
    );
    assert_eq!(
        rows[0]["delivered_to"],
        serde_json::json!(["sip:bob@example.com"])
    );
    assert_eq!(rows[0]["delivered_at"], "2026-11-02T09:00:01.250Z");
    assert_eq!(rows[3]["status"], 480);
    assert!(rows[3]["delivered_at"].is_null());

    let by_key = run(data, &["conversation", "conv-4#1", "--format", "json"]);
    assert_eq!(by_key.code, 0, "{}", by_key.stderr);
    assert_eq!(by_key.stdout, by_call_id.stdout);

    // A longer gap reaches the 14:00 IM; the table names every column.
    let table = run(data, &["conversation", "conv-1#1", "--gap", "6h"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("delivered_at") && table.stdout.contains("conv-6#1"),
        "{}",
        table.stdout
    );
    let csv = run(data, &["conversation", "sess-9", "--format", "csv"]);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    assert_eq!(
        csv.stdout.lines().count(),
        4,
        "header and 3 IMs:\n{}",
        csv.stdout
    );
}

#[test]
fn unknown_or_malformed_ids() {
    let dir = archive();
    let data = dir.path();
    let unknown = run(data, &["conversation", "no-such-call@host"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no archived IM") && unknown.stderr.contains("no-such-call@host"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stdout.is_empty(), "{}", unknown.stdout);
    let wrong_cseq = run(data, &["conversation", "conv-1#9"]);
    assert_eq!(wrong_cseq.code, 1, "{}", wrong_cseq.stderr);

    let empty = run(data, &["conversation", ""]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    let bad_gap = run(data, &["conversation", "conv-1", "--gap", "soon"]);
    assert_eq!(bad_gap.code, 2, "{}", bad_gap.stderr);
    let missing = run(data, &["timeline", "alice@example.com"]);
    assert_eq!(missing.code, 2, "--since is required: {}", missing.stderr);
    let backwards = run(
        data,
        &[
            "timeline",
            "alice@example.com",
            "--since",
            "2026-11-03",
            "--until",
            "2026-11-02",
        ],
    );
    assert_eq!(backwards.code, 2, "{}", backwards.stderr);

    for command in ["conversation", "timeline"] {
        let help = run(data, &[command, "--help"]);
        assert_eq!(help.code, 0);
        assert!(help.stdout.contains("Example"), "{}", help.stdout);
    }
}

#[test]
fn timeline_over_a_range() {
    let dir = archive();
    let data = dir.path();
    let day = run(
        data,
        &[
            "timeline",
            "alice@example.com",
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-03",
            "--format",
            "json",
        ],
    );
    assert_eq!(day.code, 0, "{}", day.stderr);
    let rows = json_rows(&day.stdout);
    let kinds = column(&rows, "kind");
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    // 10 IMs (6 sent, 4 received), 4 presence changes (the state notified
    // to bob right after it was published counts once), 2 calls placed, 1
    // received.
    assert_eq!(rows.len(), 17, "{}", day.stdout);
    assert_eq!(
        (count("im-sent"), count("im-received"), count("presence")),
        (6, 4, 4),
        "{}",
        day.stdout
    );
    assert_eq!((count("call-placed"), count("call-received")), (2, 1));
    let times = column(&rows, "time");
    assert!(times.is_sorted(), "in time order: {times:?}");
    assert_eq!(rows[0]["kind"], "presence");
    assert_eq!(rows[0]["detail"], "In the office");
    assert_eq!(rows[16]["id"], "conv-8#1");

    // Morning only: the call at 09:10 is in, the IM at 09:04 and the call
    // at 11:00 (the end is exclusive) are out.
    let morning = run(
        data,
        &[
            "timeline",
            "sip:alice@example.com",
            "--since",
            "2026-11-02 09:05",
            "--until",
            "2026-11-02 11:00",
            "--format",
            "csv",
        ],
    );
    assert_eq!(morning.code, 0, "{}", morning.stderr);
    let lines: Vec<&str> = morning.stdout.lines().collect();
    assert_eq!(lines[0], "time,kind,party,status,code,detail,id");
    assert_eq!(lines.len(), 8, "{}", morning.stdout);
    assert!(
        lines[1].contains("call-placed") && lines[1].contains("call-1"),
        "{}",
        lines[1]
    );
    assert!(lines[7].ends_with("sess-9#3"), "{}", lines[7]);
}

#[test]
fn views_are_audited() {
    let dir = archive();
    let data = dir.path();
    assert_eq!(run(data, &["conversation", "conv-2"]).code, 0);
    assert_eq!(run(data, &["conversation", "nowhere"]).code, 1);
    let timeline = run(
        data,
        &[
            "timeline",
            "bob@example.com",
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-03",
        ],
    );
    assert_eq!(timeline.code, 0, "{}", timeline.stderr);

    let audit = audit_rows(data);
    let rows: Vec<_> = audit
        .iter()
        .filter(|r| r["command"] == "conversation" || r["command"] == "timeline")
        .collect();
    assert_eq!(rows.len(), 3, "{audit:?}");
    assert!(rows.iter().all(|r| r["user"] == "auditor"), "{rows:?}");
    assert_eq!(rows[0]["query"], "conv-2");
    assert_eq!(rows[0]["result_count"], 4);
    assert!(rows[0]["error"].is_null());
    assert_eq!(rows[1]["query"], "nowhere");
    assert!(rows[1]["result_count"].is_null());
    assert!(
        rows[1]["error"]
            .as_str()
            .unwrap()
            .contains("no archived IM"),
        "{:?}",
        rows[1]
    );
    assert_eq!(rows[2]["command"], "timeline");
    assert_eq!(
        rows[2]["query"],
        "bob@example.com --since 2026-11-02T00:00:00.000Z --until 2026-11-03T00:00:00.000Z"
    );
    // bob's Monday: 7 IMs, 1 presence change, 1 call.
    assert_eq!(rows[2]["result_count"], 9);
}
