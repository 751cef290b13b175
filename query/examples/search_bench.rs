//! Search latency over an archive's IMs: `cargo run --release -p
//! sipvault-query --example search_bench -- DATA [--runs N]`.
//!
//! Builds the search index of `DATA` into `DATA/index` (an existing index is
//! replaced) with `sipvault_query::reindex::rebuild_index`, as `sipvault
//! reindex` does, from every `DATA/archive/im_messages/date=*/*.parquet` (the
//! fixture writes no catalog manifest to list them), reports the build time
//! and the index size, then runs a fixed set of queries `--runs` times each
//! (default 100, after one warm-up run) through
//! [`sipvault_query::search_page`], the call `sipvault search` makes with its
//! defaults (limit 100, time order; it opens the index read-only each time), and
//! reports p50/p99/max latency per query and over all runs. The queries are
//! written for the report fixture (`gen_fixture`: week of 2026-11-02, users
//! alice, bob, ..., the fixture's 32-word vocabulary plus the rare
//! `escalation`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sipvault_indexer::ImIndex;
use sipvault_query::reindex::{SegmentRef, rebuild_index};
use sipvault_query::{SearchRequest, SortOrder, search_page};

/// 2026-11-02T00:00:00Z, the fixture's first day, in ns.
const FIRST_DAY_NS: i64 = 1_793_577_600_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;
const DAY_NS: i64 = 24 * HOUR_NS;

/// (label, query string, from, to, since, until, relevance order)
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<i64>,
    Option<i64>,
    bool,
);

fn cases() -> Vec<Case> {
    let day3 = FIRST_DAY_NS + 2 * DAY_NS;
    vec![
        ("frequent word", "budget", None, None, None, None, false),
        (
            "frequent word, relevance",
            "budget",
            None,
            None,
            None,
            None,
            true,
        ),
        ("rare word", "escalation", None, None, None, None, false),
        (
            "two words (AND)",
            "invoice customer",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "phrase",
            "\"quarterly report\"",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "from: (busiest user)",
            "from:alice",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "to: (quiet user)",
            "to:yvonne",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "from: AND to:",
            "from:alice AND to:bob",
            None,
            None,
            None,
            None,
            false,
        ),
        ("prefix", "quart*", None, None, None, None, false),
        ("fuzzy", "budgte~1", None, None, None, None, false),
        (
            "word + time:[] in query",
            "deadline AND time:[2026-11-04 TO 2026-11-05}",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "boolean OR/NOT",
            "(invoice OR contract) AND NOT lunch",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "rare AND from:",
            "escalation AND from:carol",
            None,
            None,
            None,
            None,
            false,
        ),
        (
            "word, one day",
            "deadline",
            None,
            None,
            Some(day3),
            Some(day3 + DAY_NS),
            false,
        ),
        (
            "all, one hour (time order)",
            "*",
            None,
            None,
            Some(day3 + 10 * HOUR_NS),
            Some(day3 + 11 * HOUR_NS),
            false,
        ),
        (
            "word + --from --to filters",
            "lunch",
            Some("bob"),
            Some("sip:carol@example.com"),
            None,
            None,
            false,
        ),
    ]
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut data: Option<PathBuf> = None;
    let mut runs = 100usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => runs = n,
                _ => return usage(),
            },
            _ if data.is_none() && !arg.starts_with('-') => data = Some(PathBuf::from(arg)),
            _ => return usage(),
        }
    }
    let Some(data) = data else { return usage() };
    match run(&data, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: search_bench DATA [--runs N]");
    ExitCode::from(2)
}

fn run(data: &Path, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let index_dir = data.join("index");
    if index_dir.exists() {
        std::fs::remove_dir_all(&index_dir)?;
    }
    let mut segments: Vec<PathBuf> = glob_segments(&data.join("archive/im_messages"))?;
    segments.sort();
    let refs: Vec<SegmentRef> = segments
        .iter()
        .map(|p| -> Result<SegmentRef, Box<dyn std::error::Error>> {
            Ok(SegmentRef {
                table: "im_messages".to_string(),
                path: p.strip_prefix(data)?.to_string_lossy().into_owned(),
            })
        })
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let ims = {
        let mut index = ImIndex::open_or_create(&index_dir)?;
        rebuild_index(&mut index, data, &refs, |_, _| {})?.documents
    };
    let build = started.elapsed();
    let (bytes, files) = dir_size(&index_dir)?;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(index_dir.join("meta.json"))?)?;
    let tantivy_segments = meta["segments"].as_array().map_or(0, Vec::len);
    println!(
        "index build          {ims} IMs from {} archive segments in {:.1} s, {:.0} IMs/s",
        segments.len(),
        build.as_secs_f64(),
        ims as f64 / build.as_secs_f64()
    );
    println!(
        "index size           {:.1} MiB in {files} files, {tantivy_segments} tantivy segments",
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "queries              {runs} runs each after one warm-up, limit 100, time order (the CLI defaults) unless noted"
    );
    println!(
        "{:<28} {:<46} {:>15} {:>9} {:>9} {:>9}",
        "case", "query", "matches", "p50 ms", "p99 ms", "max ms"
    );

    let mut all = Vec::new();
    for (label, query, from, to, since_ns, until_ns, relevance) in cases() {
        let req = SearchRequest {
            query: query.to_string(),
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            since_ns,
            until_ns,
            limit: 100,
            sort: if relevance {
                SortOrder::Relevance
            } else {
                SortOrder::Time
            },
            ..SearchRequest::default()
        };
        let first = search_page(&index_dir, &req)?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let page = search_page(&index_dir, &req)?;
            times.push(t.elapsed());
            assert_eq!(page.total, first.total, "results are stable");
        }
        all.extend_from_slice(&times);
        times.sort();
        let mut shown = query.to_string();
        if let Some(f) = from {
            shown.push_str(&format!(" --from {f}"));
        }
        if let Some(t) = to {
            shown.push_str(&format!(" --to {t}"));
        }
        if relevance {
            shown.push_str(" --sort relevance");
        }
        println!(
            "{label:<28} {shown:<46} {:>15} {:>9.2} {:>9.2} {:>9.2}",
            first.total,
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(*times.last().expect("runs > 0")),
        );
    }
    all.sort();
    println!(
        "{:<28} {:<46} {:>15} {:>9.2} {:>9.2} {:>9.2}",
        "all queries",
        format!("{} runs", all.len()),
        "",
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 99.0)),
        ms(*all.last().expect("runs > 0")),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn glob_segments(table: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(table)? {
        let day = day?.path();
        if !day.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&day)? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "parquet") {
                out.push(file);
            }
        }
    }
    Ok(out)
}

fn dir_size(dir: &Path) -> std::io::Result<(u64, usize)> {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            bytes += meta.len();
            files += 1;
        }
    }
    Ok((bytes, files))
}
