//! Archive write benchmark: feeds a fixed synthetic stream of
//! `CapturedMessage`s (see `sipvault_collector::synthetic`) through the whole
//! collector pipeline — parse, `sip_messages` rows, IM/call/presence
//! correlation, Parquet segments, fsync, manifest hash chain — into a fresh
//! data directory, and reports messages per second of wall time and per
//! second of process CPU (= per core), plus peak RSS.
//!
//! ```text
//! cargo run --release -p sipvault-collector --example archive_load -- 1000000
//! cargo run --release -p sipvault-collector --example archive_load -- 1000000 --generate-only
//! ```
//!
//! `--generate-only` formats the same stream and drops it: the producer's
//! own cost, to subtract from the full run's CPU. `--wal` writes the
//! write-ahead log too (group-committed fsync before a record counts as
//! accepted, checkpoints, trimming): the durable path of `sipvault serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipvault_catalog::Catalog;
use sipvault_collector::{
    CollectorConfig, CollectorStats, Inputs, SegmentLimits, WalConfig, run, synthetic,
};
use sipvault_schemas::{CapturedMessage, Direction, Transport};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator options of the `sipvault` binary, so the figures are
/// those of `serve`.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &u8 = &sipvault_collector::JEMALLOC_OPTIONS[0];

/// 2026-01-01T00:00:00Z; messages are 10 µs apart.
const BASE_NS: i64 = 1_767_225_600_000_000_000;

fn captured(i: u64) -> CapturedMessage {
    let m = synthetic::message(i);
    CapturedMessage {
        time_ns: BASE_NS + i as i64 * 10_000,
        source: "hep:2001".to_string(),
        direction: Direction::In,
        transport: Transport::Udp,
        src: m.src,
        dst: m.dst,
        raw: m.raw,
    }
}

/// (user + system CPU seconds of this process, peak RSS in KiB).
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    // CLK_TCK is 100 on Linux.
    (ticks / 100.0, hwm)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: archive_load COUNT [--generate-only | --wal]");
            std::process::exit(2)
        });
    let generate_only = args.iter().any(|a| a == "--generate-only");
    let durable = args.iter().any(|a| a == "--wal");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cpu0, _) = usage();
    let started = Instant::now();
    let stats = Arc::new(CollectorStats::default());
    if generate_only {
        let mut bytes = 0usize;
        for i in 0..count {
            bytes += std::hint::black_box(captured(i)).raw.len();
        }
        println!("generated {count} messages, {bytes} bytes");
    } else {
        rt.block_on(async {
            let catalog = Catalog::open(dir.path()).await.expect("catalog");
            let (tx, _raw_tx, inputs) = Inputs::channel(8192);
            let (sealed_tx, mut sealed_rx) = mpsc::channel(64);
            tokio::spawn(async move { while sealed_rx.recv().await.is_some() {} });
            let config = CollectorConfig {
                data_dir: dir.path().to_path_buf(),
                limits: SegmentLimits::default(),
                im_answer_timeout: Duration::from_secs(32),
                calls: Default::default(),
                arrivals: Default::default(),
                live: false,
                wal: durable.then(WalConfig::default),
            };
            let pipeline = tokio::spawn(run(config, catalog, inputs, sealed_tx, stats.clone()));
            for i in 0..count {
                if tx.send(captured(i)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            drop(_raw_tx);
            pipeline.await.expect("join").expect("pipeline");
        });
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = usage();
    let cpu = cpu1 - cpu0;
    println!("messages          {count}");
    for (name, value) in stats.snapshot() {
        if value > 0 {
            println!("  {name:<16}{value}");
        }
    }
    println!(
        "wall              {secs:.2} s = {:.0} messages/s",
        count as f64 / secs
    );
    println!(
        "CPU (user+sys)    {cpu:.2} s = {:.0} messages per CPU-second",
        count as f64 / cpu.max(0.01)
    );
    println!("peak RSS          {} MiB", hwm / 1024);
    println!(
        "archive size      {:.1} MiB",
        dir_bytes(dir.path()) as f64 / (1 << 20) as f64
    );
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
