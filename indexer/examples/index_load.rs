//! Cost of the search index alone, in process: COUNT instant messages shaped
//! like the IMs of the synthetic load stream (`collector/src/synthetic.rs`),
//! added as archive segments of SEGMENT documents each with one commit per
//! segment, as the server's indexer thread adds sealed segments.
//!
//!   cargo run --release -p sipvault-indexer --example index_load -- 200000 [SEGMENT]
//!
//! Prints documents per second of wall time and of this process's CPU time,
//! and the index's size on disk.

use std::time::Instant;

use sipvault_indexer::{DocType, ImIndex, IndexDoc};

fn im(n: u64, time_ns: i64) -> IndexDoc {
    IndexDoc {
        doc_type: DocType::Im,
        time_ns,
        from: "sip:alice@example.com".into(),
        from_name: Some("Alice".into()),
        to: vec!["sip:bob@example.com".into()],
        to_name: None,
        body: format!("load test message number {n:>9}"),
        call_id: format!("im-{n}@10.0.0.1"),
        cseq: 1,
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let segment: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut index = ImIndex::open_or_create(dir.path()).expect("index");
    let start_cpu = cpu_seconds();
    let start = Instant::now();
    let base_ns = 1_800_000_000_000_000_000i64;
    let mut n = 0u64;
    let mut seg_no = 0u64;
    while n < count {
        let end = (n + segment).min(count);
        let docs: Vec<IndexDoc> = (n..end)
            .map(|i| im(i, base_ns + i as i64 * 1_000_000))
            .collect();
        index
            .add_documents(&format!("im_messages/seg-{seg_no:05}.parquet"), &docs)
            .expect("indexing");
        n = end;
        seg_no += 1;
    }
    drop(index);
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - start_cpu;
    println!("documents        {count} in {seg_no} segments");
    println!(
        "wall             {wall:.2} s = {:.0} docs/s",
        count as f64 / wall
    );
    println!(
        "CPU              {cpu:.2} s = {:.0} docs per CPU-second",
        count as f64 / cpu
    );
    println!(
        "index on disk    {:.1} MiB",
        dir_bytes(dir.path()) as f64 / (1 << 20) as f64
    );
}
