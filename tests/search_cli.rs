//! `sipvault search` and `sipvault reindex` through the real binary, over a
//! generated fixture archive entered into the catalog's manifest as a server
//! would have sealed it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ServeProcess, run_sipvault, sipvault, sql_rows};
use sipvault_query::fixture::{FixtureSpec, generate_fixture, register_fixture_segments};

/// 2,000 IMs and 400 calls over the fixture's week, with a manifest.
fn spec() -> FixtureSpec {
    FixtureSpec {
        ims: 2_000,
        calls: 400,
        ..FixtureSpec::standard()
    }
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    generate_fixture(dir.path(), &spec()).expect("generate fixture");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let catalog = sipvault_catalog::Catalog::open(dir.path()).await.unwrap();
            let added = register_fixture_segments(dir.path(), &catalog)
                .await
                .unwrap();
            assert_eq!(added, 14, "one calls and one im_messages segment per day");
            catalog.close().await;
        });
    dir
}

/// Hits of `search ARGS --format json`.
fn hits(data: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["search"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let out = sipvault(data, &all);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("search output is not JSON ({e}): {out}"))
        .as_array()
        .expect("an array of hits")
        .clone()
}

/// `(type, call_id, cseq)` of each hit, in order.
fn keys(hits: &[serde_json::Value]) -> Vec<(String, String, u64)> {
    hits.iter()
        .map(|h| {
            (
                h["type"].as_str().unwrap().to_string(),
                h["call_id"].as_str().unwrap().to_string(),
                h["cseq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn sql_count(data: &Path, sql: &str) -> usize {
    sql_rows(data, sql)[0]["n"].as_u64().expect("count") as usize
}

#[test]
fn reindex_then_search_by_field_type_page_and_order() {
    let dir = fixture();
    let d = dir.path();

    // No index yet: no hits, and a note saying how to build one.
    let before = run_sipvault(d, &["search", "budget"]);
    assert_eq!(before.code, 0, "{}", before.stderr);
    assert!(
        before.stderr.contains("sipvault reindex"),
        "stderr: {}",
        before.stderr
    );
    assert!(hits(d, &["budget"]).is_empty());

    let out = sipvault(d, &["reindex"]);
    assert_eq!(out.trim(), "indexed 14 segments, 2400 records");

    let budget = sql_count(
        d,
        "SELECT count(*) AS n FROM im_messages WHERE array_has(string_to_array(body, ' '), 'budget')",
    );
    let all_budget = hits(d, &["budget", "--limit", "10000"]);
    assert_eq!(all_budget.len(), budget);
    assert_eq!(hits(d, &["budg*", "--limit", "10000"]).len(), budget);
    assert_eq!(hits(d, &["budgte~1", "--limit", "10000"]).len(), budget);
    let times: Vec<i64> = all_budget
        .iter()
        .map(|h| h["time_ns"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "time order by default"
    );

    // Fields and types. By construction 4 calls in 40 are busy.
    assert_eq!(hits(d, &["type:call", "--limit", "10000"]).len(), 400);
    assert_eq!(
        hits(d, &["type:call AND busy", "--limit", "10000"]).len(),
        40
    );
    let alice_calls = sql_count(
        d,
        "SELECT count(*) AS n FROM calls WHERE caller = 'sip:alice@example.com'",
    );
    let found = hits(d, &["type:call AND from:alice", "--limit", "10000"]);
    assert_eq!(found.len(), alice_calls);
    assert!(found.iter().all(|h| h["from"] == "sip:alice@example.com"));
    assert!(hits(d, &["type:chat"]).is_empty());
    // A time range in the query is the same as --since/--until.
    let day = hits(
        d,
        &[
            "type:call AND time:[2026-11-04 TO 2026-11-05}",
            "--limit",
            "10000",
        ],
    );
    assert_eq!(day.len(), (2..400).step_by(7).count());
    assert_eq!(
        keys(&day),
        keys(&hits(
            d,
            &[
                "type:call",
                "--since",
                "2026-11-04",
                "--until",
                "2026-11-05",
                "--limit",
                "10000"
            ]
        ))
    );
    assert!(hits(d, &["room:board"]).is_empty());

    // Paging: pages of 7 make up the first 21 hits; the table says where it is.
    let first21 = hits(d, &["budget", "--limit", "21"]);
    let mut paged = Vec::new();
    for page in ["1", "2", "3"] {
        paged.extend(hits(d, &["budget", "--limit", "7", "--page", page]));
    }
    assert_eq!(keys(&paged), keys(&first21));
    let offset = hits(d, &["budget", "--limit", "7", "--offset", "14"]);
    assert_eq!(keys(&offset), keys(&first21[14..]));
    let table = run_sipvault(d, &["search", "budget", "--limit", "7", "--page", "2"]);
    assert_eq!(table.code, 0);
    assert!(
        table.stderr.contains(&format!("hits 8-14 of {budget}")),
        "stderr: {}",
        table.stderr
    );
    assert_eq!(
        run_sipvault(d, &["search", "budget", "--page", "2", "--offset", "3"]).code,
        2,
        "--page and --offset do not go together"
    );

    // By relevance: the rare word first, scores never increasing.
    let ranked = hits(
        d,
        &[
            "budget OR escalation",
            "--sort",
            "relevance",
            "--limit",
            "50",
        ],
    );
    assert!(ranked[0]["body"].as_str().unwrap().contains("escalation"));
    let scores: Vec<f64> = ranked
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(
        run_sipvault(d, &["search", "budget", "--sort", "random"]).code,
        2
    );

    // Deleting the index loses nothing: reindex gives the same hits.
    std::fs::remove_dir_all(d.join("index")).unwrap();
    assert!(hits(d, &["budget"]).is_empty());
    sipvault(d, &["reindex"]);
    assert_eq!(
        keys(&hits(d, &["budget", "--limit", "10000"])),
        keys(&all_budget)
    );

    // Every search is in the audit log, with its paging.
    let audit = sipvault(d, &["audit", "list", "--format", "json"]);
    assert!(
        audit.contains("budget --limit 7 --page 2"),
        "audit log: {audit}"
    );
}

#[test]
fn malformed_queries_exit_1_with_the_position() {
    let dir = fixture();
    let d = dir.path();
    sipvault(d, &["reindex"]);
    for (query, message) in [
        ("budget \"quarterly", "position 7: unclosed quote"),
        ("(budget OR lunch", "position 0: unclosed parenthesis"),
        ("budget AND", "position 7: 'AND' needs a term on each side"),
        ("type:fax", "position 0: unknown type 'fax'"),
        ("budgte~3", "position 6: fuzzy distance 3 is too large"),
        ("subject:x", "position 0: unknown field 'subject'"),
        (
            "time:[2026-13-01 TO *]",
            "position 6: invalid time '2026-13-01'",
        ),
    ] {
        let r = run_sipvault(d, &["search", query]);
        assert_eq!(r.code, 1, "{query}: {}", r.stderr);
        assert!(
            r.stderr.contains(message),
            "{query}: expected {message:?} in {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{query}: {}", r.stdout);
    }
}

#[test]
fn serve_start_indexes_segments_sealed_but_not_indexed() {
    let dir = fixture();
    let d = dir.path();
    sipvault(d, &["reindex"]);
    let calls = hits(d, &["type:call", "--limit", "10000"]);
    assert_eq!(calls.len(), 400);

    // As if the server had crashed after sealing two segments but before
    // indexing them: drop them from the index.
    let dropped = [
        "archive/calls/date=2026-11-03/fixture-0000.parquet",
        "archive/im_messages/date=2026-11-05/fixture-0000.parquet",
    ];
    {
        let mut index = sipvault_indexer::ImIndex::open_or_create(&d.join("index")).unwrap();
        for seg in dropped {
            index.remove_segment(seg).unwrap();
        }
        let left = index.segment_ids().unwrap();
        assert_eq!(left.len(), 12);
        assert!(dropped.iter().all(|s| !left.iter().any(|l| l == s)));
    }
    let day1_calls = (1..400).step_by(7).count();
    assert_eq!(
        hits(d, &["type:call", "--limit", "10000"]).len(),
        400 - day1_calls
    );

    let serve = ServeProcess::start(d, None);
    assert!(
        serve.wait_for_log("search index repaired", Duration::from_secs(60)),
        "no repair logged:\n{}",
        serve.log()
    );
    let log = serve.stop();
    assert!(log.contains("added=2"), "log:\n{log}");
    assert_eq!(
        keys(&hits(d, &["type:call", "--limit", "10000"])),
        keys(&calls)
    );
    assert_eq!(
        sipvault_indexer::indexed_segment_ids(&d.join("index"))
            .unwrap()
            .len(),
        14
    );
}
