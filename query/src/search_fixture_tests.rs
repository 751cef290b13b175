//! Searches over the generated fixture archive (`fixture::generate_fixture`), indexed
//! by the code `sipvault reindex` runs, with answers computed independently: by
//! construction of the fixture, or by SQL over the same Parquet files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, TimestampNanosecondType, UInt32Type};

use crate::fixture::{
    FixtureSpec, IM_WITHOUT_SENDER_NAME, generate_fixture, register_fixture_segments,
};
use crate::reindex::{indexable_segments, rebuild_index};
use crate::{
    DocType, SearchRequest, SortOrder, TOTAL_COUNT_LIMIT, Total, run_sql, search, search_count,
    search_page,
};

/// The standard fixture: 100,000 IMs and 10,000 calls.
fn spec() -> FixtureSpec {
    FixtureSpec::standard()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The fixture with its manifest and index, built once per test binary under the
/// system temp dir (`sipvault-search-fixture-<pid>`); directories of earlier runs
/// whose process is gone are removed first.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let prefix = "sipvault-search-fixture-";
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        generate_fixture(&dir, &spec()).expect("generate fixture");
        let segments = runtime().block_on(async {
            let catalog = sipvault_catalog::Catalog::open(&dir)
                .await
                .expect("catalog");
            register_fixture_segments(&dir, &catalog)
                .await
                .expect("register segments");
            let entries = catalog.segments().await.expect("manifest");
            catalog.close().await;
            indexable_segments(&entries)
        });
        let generated = started.elapsed();
        let mut index =
            sipvault_indexer::ImIndex::open_or_create(&dir.join("index")).expect("open index");
        let summary = rebuild_index(&mut index, &dir, &segments, |_, _| {}).expect("reindex");
        assert_eq!(summary.documents as u64, spec().ims + spec().calls);
        eprintln!(
            "search fixture: generated in {:.1}s, {} segments indexed in {:.1}s",
            generated.as_secs_f64(),
            summary.segments,
            (started.elapsed() - generated).as_secs_f64()
        );
        dir
    })
}

fn index_dir() -> PathBuf {
    data_dir().join("index")
}

fn req(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        limit: 1,
        ..SearchRequest::default()
    }
}

/// How many records match `query`, counted exactly.
fn total(query: &str) -> usize {
    search_count(&index_dir(), &req(query)).unwrap_or_else(|e| panic!("search {query:?}: {e}"))
}

/// `SELECT count(*) ... WHERE <condition>` over `table` of the fixture.
fn sql_count(table: &str, condition: &str) -> usize {
    let sql = format!("SELECT count(*) AS n FROM {table} WHERE {condition}");
    let batches = runtime()
        .block_on(run_sql(data_dir(), &sql))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    usize::try_from(n).expect("count fits")
}

/// The body holds `word` (bodies are space-separated words of a fixed list).
fn has_word(word: &str) -> String {
    format!("array_has(string_to_array(body, ' '), '{word}')")
}

#[test]
fn word_queries_match_sql_over_the_same_parquet() {
    let budget = sql_count("im_messages", &has_word("budget"));
    assert!(budget > 1000, "the fixture has many budget IMs: {budget}");
    assert_eq!(total("budget"), budget);
    assert_eq!(total("BUDGET"), budget, "case-insensitive");
    assert_eq!(
        total("budg*"),
        budget,
        "no other fixture word starts with budg"
    );
    assert_eq!(total("budgte~1"), budget, "one transposition from budget");
    assert_eq!(total("body:budget"), budget);
    assert_eq!(
        total("budget AND NOT meeting"),
        sql_count(
            "im_messages",
            &format!("{} AND NOT {}", has_word("budget"), has_word("meeting"))
        )
    );
    assert_eq!(
        total("lunch OR travel"),
        sql_count(
            "im_messages",
            &format!("{} OR {}", has_word("lunch"), has_word("travel"))
        )
    );
    assert_eq!(
        total("\"quarterly budget\""),
        sql_count(
            "im_messages",
            "(' ' || body || ' ') LIKE '% quarterly budget %'"
        )
    );
    // "report", "review" and "release" are the IM words starting with "re"; calls
    // are found by their outcome too ("rejected", "Request Terminated").
    assert_eq!(
        total("re*"),
        sql_count(
            "im_messages",
            &format!(
                "{} OR {} OR {}",
                has_word("report"),
                has_word("review"),
                has_word("release")
            )
        ) + sql_count(
            "calls",
            "regexp_like(lower(disposition || ' ' || coalesce(reason, '')), '(^| )re')"
        )
    );
    assert_eq!(
        total("type:im AND re*"),
        total("re*") - spec().calls as usize / 40 * 4
    );
}

#[test]
fn escalation_ims_are_every_thousandth_with_their_ids() {
    // By construction: IM j has "escalation" when j % 1000 == 0.
    let expected = spec().ims.div_ceil(1000) as usize;
    let page = search_page(
        &index_dir(),
        &SearchRequest {
            limit: 1000,
            ..req("escalation")
        },
    )
    .unwrap();
    assert_eq!(page.total, Total::Exact(expected));
    assert_eq!(page.hits.len(), expected);
    // The same rows, in the same (time) order, as SQL gives them.
    let batches = runtime()
        .block_on(run_sql(
            data_dir(),
            "SELECT time, call_id, cseq FROM im_messages WHERE body LIKE '% escalation' ORDER BY time, call_id",
        ))
        .unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let time = b.column(0).as_primitive::<TimestampNanosecondType>();
        let call_id = b.column(1).as_string::<i32>();
        let cseq = b.column(2).as_primitive::<UInt32Type>();
        for i in 0..b.num_rows() {
            rows.push((time.value(i), call_id.value(i).to_string(), cseq.value(i)));
        }
    }
    let hits: Vec<(i64, String, u32)> = page
        .hits
        .iter()
        .map(|h| (h.time_ns, h.call_id.clone(), h.cseq))
        .collect();
    assert_eq!(hits, rows);
    assert!(page.hits.iter().all(|h| h.doc_type == DocType::Im));
}

#[test]
fn calls_are_searchable_by_type_outcome_and_party() {
    let calls = spec().calls as usize;
    assert_eq!(total("type:call"), calls);
    assert_eq!(total("type:im"), spec().ims as usize);
    assert_eq!(
        total("type:presence"),
        0,
        "the fixture has no presence rows"
    );
    assert_eq!(total("type:chat"), 0);
    // By construction: outcomes cycle over 40 calls, 4 of them busy (486) and 26 answered.
    assert_eq!(total("type:call AND busy"), calls / 40 * 4);
    assert_eq!(total("type:call AND 486"), calls / 40 * 4);
    assert_eq!(total("answered"), calls / 40 * 26);
    assert_eq!(total("\"busy here\""), calls / 40 * 4);
    assert_eq!(
        total("type:call AND from:alice"),
        sql_count("calls", "caller = 'sip:alice@example.com'")
    );
    assert_eq!(
        total("type:call AND to:bob@example.com"),
        sql_count("calls", "callee = 'sip:bob@example.com'")
    );
    assert_eq!(
        total("type:im AND to:bob"),
        sql_count(
            "im_messages",
            "array_has(recipients, 'sip:bob@example.com')"
        )
    );
    assert_eq!(
        total("from:carol"),
        sql_count("im_messages", "sender = 'sip:carol@example.com'")
            + sql_count("calls", "caller = 'sip:carol@example.com'")
    );
}

/// `'sip:a@example.com', ...`: the URIs of the fixture users with `surname`.
fn uris_with_surname(surname: &str) -> String {
    (0..spec().users)
        .filter(|&u| FixtureSpec::user_display(u).ends_with(&format!(" {surname}")))
        .map(|u| format!("'{}'", FixtureSpec::user_uri(u)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The IM carries its sender's display name (by construction: all but
/// every `IM_WITHOUT_SENDER_NAME` IM, numbered by its Call-ID `fx-im-NNNNNNN`).
fn im_has_sender_name() -> String {
    let (modulus, without) = IM_WITHOUT_SENDER_NAME;
    format!("CAST(substr(call_id, 7) AS BIGINT) % {modulus} <> {without}")
}

#[test]
fn display_names_are_searched_with_the_addresses() {
    let smiths = uris_with_surname("Smith");
    assert_eq!(smiths.matches("sip:").count(), 4, "four Smiths: {smiths}");
    let smith_ims = sql_count(
        "im_messages",
        &format!("sender IN ({smiths}) AND {}", im_has_sender_name()),
    );
    let smith_calls = sql_count("calls", &format!("caller IN ({smiths})"));
    assert!(smith_ims > 1000 && smith_calls > 100);
    assert_eq!(total("from:smith"), smith_ims + smith_calls);
    assert_eq!(total("from:SMITH"), smith_ims + smith_calls);
    assert_eq!(
        smith_ims,
        sql_count("im_messages", "from_display LIKE '% Smith'"),
        "the archived names are the constructed ones"
    );
    assert_eq!(total("type:call AND from:smith"), smith_calls);
    assert_eq!(total("smith"), 0, "bare words search bodies only");

    let alice = "'sip:alice@example.com'";
    assert_eq!(
        total("from:\"Alice Smith\""),
        sql_count(
            "im_messages",
            &format!("sender = {alice} AND {}", im_has_sender_name())
        ) + sql_count("calls", &format!("caller = {alice}"))
    );
    assert_eq!(total("from:\"smith alice\""), 0, "a phrase keeps its order");
    assert_eq!(
        total("from:alice"),
        sql_count("im_messages", &format!("sender = {alice}"))
            + sql_count("calls", &format!("caller = {alice}")),
        "the URI still finds the IMs sent without a name"
    );

    // Only the first recipient's name is archived (the To header's).
    let joneses = uris_with_surname("Jones");
    assert_eq!(
        total("to:jones"),
        sql_count("im_messages", &format!("recipients[1] IN ({joneses})"))
            + sql_count("calls", &format!("callee IN ({joneses})"))
    );
    assert_eq!(
        total("to:\"bob jones\" AND type:im"),
        sql_count("im_messages", "recipients[1] = 'sip:bob@example.com'")
    );
    assert_eq!(
        total("from:garcia AND to:nguyen"),
        sql_count(
            "im_messages",
            &format!(
                "sender IN ({}) AND recipients[1] IN ({}) AND {}",
                uris_with_surname("Garcia"),
                uris_with_surname("Nguyen"),
                im_has_sender_name()
            )
        ) + sql_count(
            "calls",
            &format!(
                "caller IN ({}) AND callee IN ({})",
                uris_with_surname("Garcia"),
                uris_with_surname("Nguyen")
            )
        )
    );
}

#[test]
fn time_ranges_select_one_day() {
    // By construction: record i falls on day i % 7. Day 2 is 2026-11-04.
    let day = |d: u64, n: u64| (d..n).step_by(7).count();
    let since = crate::parse_time("2026-11-04", 0).unwrap();
    let until = crate::parse_time("2026-11-05", 0).unwrap();
    let page = |query: &str| {
        search_count(
            &index_dir(),
            &SearchRequest {
                since_ns: Some(since),
                until_ns: Some(until),
                ..req(query)
            },
        )
        .unwrap()
    };
    assert_eq!(page("*"), day(2, spec().ims) + day(2, spec().calls));
    assert_eq!(page("type:call"), day(2, spec().calls));
    // The same day as a range in the query string.
    assert_eq!(
        total("time:[2026-11-04 TO 2026-11-05}"),
        day(2, spec().ims) + day(2, spec().calls)
    );
    assert_eq!(
        total("type:call AND time:[2026-11-04T00:00:00Z TO 2026-11-05T00:00:00Z}"),
        day(2, spec().calls)
    );
    assert_eq!(
        page("budget"),
        sql_count(
            "im_messages",
            &format!("{} AND date = '2026-11-04'", has_word("budget"))
        )
    );
}

#[test]
fn pages_and_orders_over_the_fixture() {
    let dir = index_dir();
    let all = search(
        &dir,
        &SearchRequest {
            limit: 250,
            ..req("type:call AND busy")
        },
    )
    .unwrap();
    assert_eq!(all.len(), 250);
    assert!(
        all.windows(2).all(|w| w[0].time_ns <= w[1].time_ns),
        "time order by default"
    );
    for page in 0..5 {
        let hits = search(
            &dir,
            &SearchRequest {
                limit: 50,
                offset: page * 50,
                ..req("type:call AND busy")
            },
        )
        .unwrap();
        let got: Vec<&str> = hits.iter().map(|h| h.call_id.as_str()).collect();
        let want: Vec<&str> = all[page * 50..page * 50 + 50]
            .iter()
            .map(|h| h.call_id.as_str())
            .collect();
        assert_eq!(got, want, "page {page}");
    }
    // By relevance: scores never increase down the list, and pages continue it.
    let by_relevance = |offset: usize, limit: usize| {
        search(
            &dir,
            &SearchRequest {
                limit,
                offset,
                sort: SortOrder::Relevance,
                ..req("budget OR escalation")
            },
        )
        .unwrap()
    };
    let long = by_relevance(0, 40);
    assert!(long.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(
        long[0].body.contains("escalation"),
        "the rare word ranks first: {:?}",
        long[0]
    );
    let mut paged = by_relevance(0, 20);
    paged.extend(by_relevance(20, 20));
    let keys = |v: &[crate::SearchHit]| -> Vec<(String, u32)> {
        v.iter().map(|h| (h.call_id.clone(), h.cseq)).collect()
    };
    assert_eq!(keys(&paged), keys(&long));
}

#[test]
fn page_totals_are_exact_up_to_the_count_limit() {
    // (query, relevance order): the page's total against the exact count.
    let cases = [
        ("budget", false),
        ("budget", true),
        ("from:alice", false),
        ("budget AND NOT meeting", false),
        ("budget AND NOT meeting", true),
        ("lunch OR travel", false),
        ("\"quarterly budget\"", false),
        ("escalation", false),
        ("type:call AND busy", false),
        ("*", false),
    ];
    let mut bounded = 0;
    for (query, relevance) in cases {
        let exact = total(query);
        let page = search_page(
            &index_dir(),
            &SearchRequest {
                sort: if relevance {
                    SortOrder::Relevance
                } else {
                    SortOrder::Time
                },
                ..req(query)
            },
        )
        .unwrap();
        // One word or address: the index knows the count without a scan.
        let known = !query.contains(' ') && query != "*";
        let expected = if exact > TOTAL_COUNT_LIMIT && !known {
            bounded += 1;
            Total::MoreThan(TOTAL_COUNT_LIMIT)
        } else {
            Total::Exact(exact)
        };
        assert_eq!(page.total, expected, "total of {query:?} ({exact} matches)");
    }
    assert!(
        bounded >= 3,
        "the fixture has broad searches past the limit"
    );
    assert!(
        total("budget") > TOTAL_COUNT_LIMIT,
        "and broad single words"
    );
}
