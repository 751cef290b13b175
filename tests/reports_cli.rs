//! `sipvault report`, `sql` limits and `audit list` through the real binary,
//! over a generated fixture archive.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{run_sipvault, sipvault};
use sipvault_query::fixture::{FixtureSpec, generate_fixture};

/// A fifth of the standard fixture (about 0.3 s to write in a debug
/// build), in a data directory of its own so each test sees only its own
/// audit rows: enough rows that a self-join cannot finish in a fraction of a
/// second nor fit in a few kilobytes.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = FixtureSpec {
        ims: 20_000,
        calls: 2_000,
        ..FixtureSpec::standard()
    };
    generate_fixture(dir.path(), &spec).expect("generate fixture");
    dir
}

/// The audit log of `data` as JSON rows.
fn audit_rows(data: &Path) -> Vec<serde_json::Value> {
    let out = sipvault(data, &["audit", "list", "--format", "json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("audit list JSON parses")
        .as_array()
        .expect("an array")
        .clone()
}

#[test]
fn report_writes_csv_and_json_and_takes_a_range() {
    let fixture = fixture();
    let data = fixture.path();
    let csv = sipvault(
        data,
        &[
            "report",
            "call-summary",
            "--since",
            "2026-11-03",
            "--until",
            "2026-11-05",
            "--format",
            "csv",
        ],
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "day,calls,answered,asr_percent,avg_setup_ms,avg_duration_s"
    );
    // 2000 calls, call i on day i % 7: days 1 and 2 hold 286 each.
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with("2026-11-03,286,"), "{csv}");
    assert!(lines[2].starts_with("2026-11-04,286,"), "{csv}");

    // Every call, no row cap.
    let cdr = sipvault(data, &["report", "cdr", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&cdr).expect("cdr JSON parses");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2_000);
    let starts: Vec<&str> = rows.iter().map(|r| r["start"].as_str().unwrap()).collect();
    assert!(starts.is_sorted(), "oldest first");
    assert!(starts[0].starts_with("2026-11-02T08:"), "{}", starts[0]);
}

#[test]
fn report_usage_errors_exit_2() {
    let fixture = fixture();
    let data = fixture.path();
    let wrong_grouping = run_sipvault(data, &["report", "im-volume", "--by", "user"]);
    assert_eq!(wrong_grouping.code, 2, "{}", wrong_grouping.stderr);
    assert!(
        wrong_grouping.stderr.contains("hour or day"),
        "{}",
        wrong_grouping.stderr
    );
    let unknown = run_sipvault(data, &["report", "no-such-report"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("call-summary"),
        "{}",
        unknown.stderr
    );
    let help = run_sipvault(data, &["report", "--help"]);
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("top-talkers") && help.stdout.contains("Example"),
        "{}",
        help.stdout
    );
    let bad_limit = run_sipvault(data, &["sql", "SELECT 1", "--memory-limit", "lots"]);
    assert_eq!(bad_limit.code, 2, "{}", bad_limit.stderr);
}

/// 20000 x 20000 rows through a nested-loop join: minutes in any build,
/// so a half-second timeout always fires, and the process must stop soon
/// after it.
#[test]
fn sql_timeout_stops_the_query_with_exit_1() {
    let fixture = fixture();
    let data = fixture.path();
    let slow = run_sipvault(
        data,
        &[
            "sql",
            "SELECT count(*) FROM im_messages a JOIN im_messages b ON a.sender <> b.sender",
            "--timeout",
            "0.5",
        ],
    );
    assert_eq!(slow.code, 1, "{}\n{}", slow.stdout, slow.stderr);
    assert!(
        slow.stderr.contains("ran longer than the 500ms timeout"),
        "{}",
        slow.stderr
    );
    assert!(
        slow.elapsed < Duration::from_secs(30),
        "stopping took {:?}",
        slow.elapsed
    );
    let audit = audit_rows(data);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["command"], "sql");
    assert_eq!(audit[0]["result_count"], serde_json::Value::Null);
    assert!(
        audit[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout"),
        "{audit:?}"
    );
}

/// A hash join's build side cannot spill: 20000 rows do not fit in 64 KiB,
/// and the same query without the limit succeeds.
#[test]
fn sql_memory_limit_stops_the_query_with_exit_1() {
    let fixture = fixture();
    let data = fixture.path();
    let join = "SELECT a.sender, count(*) AS n FROM im_messages a JOIN im_messages b ON a.call_id = b.call_id GROUP BY a.sender";
    let limited = run_sipvault(data, &["sql", join, "--memory-limit", "64K"]);
    assert_eq!(limited.code, 1, "{}\n{}", limited.stdout, limited.stderr);
    assert!(
        limited.stderr.contains("memory limit"),
        "{}",
        limited.stderr
    );
    let unlimited = sipvault(data, &["sql", join, "--format", "csv"]);
    let total: i64 = unlimited
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 20_000, "every IM joins itself once");
}

#[test]
fn reads_of_the_archive_are_audited() {
    let fixture = fixture();
    let d = fixture.path();
    sipvault(
        d,
        &[
            "report",
            "failed-calls",
            "--since",
            "2026-11-03",
            "--as",
            "auditor",
        ],
    );
    sipvault(d, &["sql", "SELECT count(*) FROM calls"]);
    // Nothing indexed in this data directory: no hits.
    sipvault(d, &["search", "budget", "--from", "alice"]);
    // A refused statement is audited with its error.
    let refused = run_sipvault(d, &["sql", "DELETE FROM calls"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);

    let audit = audit_rows(d);
    let summary: Vec<(&str, &str, &str, Option<i64>, bool)> = audit
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap(),
                r["command"].as_str().unwrap(),
                r["query"].as_str().unwrap(),
                r["result_count"].as_i64(),
                r["error"].is_null(),
            )
        })
        .collect();
    let me = ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        summary,
        vec![
            (
                "auditor",
                "report",
                "failed-calls --since 2026-11-03T00:00:00.000Z",
                Some(6),
                true
            ),
            (
                me.as_str(),
                "sql",
                "SELECT count(*) FROM calls",
                Some(1),
                true
            ),
            (me.as_str(), "search", "budget --from alice", Some(0), true),
            (me.as_str(), "sql", "DELETE FROM calls", None, false),
        ]
    );
    let ids: Vec<i64> = audit.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert!(
        audit[3]["error"].as_str().unwrap().contains("read-only"),
        "{}",
        audit[3]
    );

    // --since leaves out what came before.
    let none = sipvault(
        d,
        &["audit", "list", "--since", "2200-01-01", "--format", "csv"],
    );
    assert_eq!(none, "id,time,user,command,query,result_count,error\n");
    let all = sipvault(
        d,
        &["audit", "list", "--since", "2000-01-01", "--format", "csv"],
    );
    assert_eq!(all.lines().count(), 5, "{all}");
    let table = sipvault(d, &["audit", "list"]);
    assert!(
        table.contains("failed-calls") && table.contains("auditor"),
        "{table}"
    );
}
