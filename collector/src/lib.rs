//! The collector: turns a stream of [`CapturedMessage`]s into archive rows
//! and writes them as sealed Parquet segments.
//!
//! Sources: the server's tap, [`hep_listener`] (HEP from other SIP
//! servers) and [`pcap`] (capture files) all produce `CapturedMessage`s.
//!
//! Pipeline: source channel → [`arrivals::Arrivals`] (capture-time order,
//! copies from a second capture point dropped) → parse once → the `sip_messages` row
//! ([`writer::ArchiveWriter::push_sip`], straight into Arrow columns) and the
//! correlators [`im::ImCorrelator`] (MESSAGE + final response → one IM row),
//! [`calls::CallCorrelator`] (one row per call) and
//! [`presence::PresenceCorrelator`] (PIDF states) → [`writer::ArchiveWriter`]
//! (buffers per table and day, rolls by size and age, seals into the
//! manifest). Each sealed segment is announced on a channel so the binary
//! can hand IM rows to the indexer without this crate knowing about it.

pub mod arrivals;
pub mod calls;
pub mod hep;
pub mod hep_listener;
pub mod im;
pub mod pcap;
pub mod presence;
pub mod synthetic;
pub mod verify;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sipvault_catalog::Catalog;
use sipvault_schemas::{CapturedMessage, HepRawRow, ImMessageRow};
use sipvault_sip::SipMessage;
use tokio::sync::mpsc;

pub use verify::{Finding, VerifyReport, verify_archive};
pub use writer::{ArchiveWriter, SegmentLimits};

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("archive I/O at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("catalog: {0}")]
    Catalog(#[from] sipvault_catalog::CatalogError),
}

pub type Result<T, E = CollectorError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub data_dir: PathBuf,
    pub limits: SegmentLimits,
    /// How long an IM waits for its final response before it is archived
    /// as `unanswered` (RFC 3261 Timer F is 64*T1 = 32 s).
    pub im_answer_timeout: Duration,
    pub calls: calls::CallConfig,
    /// Reorder window and duplicate detection in front of the correlators.
    pub arrivals: arrivals::ArrivalConfig,
    /// Live capture (server tap, HEP): call timeouts also advance with the
    /// wall clock when no traffic arrives. Off for file imports, whose
    /// time is only that of their packets.
    pub live: bool,
}

fn wall_clock_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A segment that was written, fsynced, renamed and entered in the manifest.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub table: String,
    pub segment_id: String,
    /// Path relative to the data directory.
    pub path: String,
    pub rows: usize,
    /// For `im_messages` segments: the rows, so the indexer needs no re-read.
    pub im_rows: Vec<ImMessageRow>,
}

/// Counters of the pipeline, readable while it runs.
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub received: AtomicU64,
    /// Copies of a message already received (two capture points saw the
    /// same packet), dropped.
    pub duplicates: AtomicU64,
    pub unparsable: AtomicU64,
    pub sip_rows: AtomicU64,
    pub im_rows: AtomicU64,
    pub call_rows: AtomicU64,
    pub presence_rows: AtomicU64,
    pub hep_raw_rows: AtomicU64,
    pub segments_sealed: AtomicU64,
    pub write_errors: AtomicU64,
    /// Rows whose segment could not be written even at shutdown.
    pub rows_lost: AtomicU64,
}

impl CollectorStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 11] {
        [
            ("received", self.received.load(Ordering::Relaxed)),
            ("duplicates", self.duplicates.load(Ordering::Relaxed)),
            ("unparsable", self.unparsable.load(Ordering::Relaxed)),
            ("sip_rows", self.sip_rows.load(Ordering::Relaxed)),
            ("im_rows", self.im_rows.load(Ordering::Relaxed)),
            ("call_rows", self.call_rows.load(Ordering::Relaxed)),
            ("presence_rows", self.presence_rows.load(Ordering::Relaxed)),
            ("hep_raw_rows", self.hep_raw_rows.load(Ordering::Relaxed)),
            (
                "segments_sealed",
                self.segments_sealed.load(Ordering::Relaxed),
            ),
            ("write_errors", self.write_errors.load(Ordering::Relaxed)),
            ("rows_lost", self.rows_lost.load(Ordering::Relaxed)),
        ]
    }
}

/// What the collector reads: captured SIP messages from every source, and
/// non-SIP HEP payloads for the `hep_raw` table.
pub struct Inputs {
    pub captured: mpsc::Receiver<CapturedMessage>,
    pub hep_raw: mpsc::Receiver<HepRawRow>,
}

impl Inputs {
    /// Inputs with senders for both channels, each bounded to `capacity`.
    pub fn channel(
        capacity: usize,
    ) -> (
        mpsc::Sender<CapturedMessage>,
        mpsc::Sender<HepRawRow>,
        Inputs,
    ) {
        let (captured_tx, captured) = mpsc::channel(capacity);
        let (raw_tx, hep_raw) = mpsc::channel(capacity);
        (captured_tx, raw_tx, Inputs { captured, hep_raw })
    }
}

/// Messages taken off the input channel per wake-up: one task switch per
/// batch instead of per message under load.
const RECV_BATCH: usize = 512;

/// Runs the collector until the captured-message input closes, then
/// archives every IM still waiting for an answer and seals all open segments.
pub async fn run(
    config: CollectorConfig,
    catalog: Catalog,
    inputs: Inputs,
    sealed: mpsc::Sender<SealedSegment>,
    stats: Arc<CollectorStats>,
) -> Result<()> {
    let Inputs {
        captured: mut input,
        mut hep_raw,
    } = inputs;
    let mut raw_open = true;
    let writer = ArchiveWriter::new(config.limits.clone());
    // One segment queued behind the one being sealed: when sealing falls
    // behind, ingest waits, and memory holds at most three segments.
    let (jobs, job_rx) = mpsc::channel(1);
    let sealer = tokio::spawn(writer::run_sealer(
        config.data_dir.clone(),
        catalog,
        job_rx,
        sealed,
        stats.clone(),
    ));
    let mut stage = Stage {
        writer,
        ims: im::ImCorrelator::new(config.im_answer_timeout),
        calls: calls::CallCorrelator::new(config.calls.clone()),
        presence: presence::PresenceCorrelator::new(),
        latest_capture_ns: i64::MIN,
    };
    let mut arrivals = arrivals::Arrivals::new(config.arrivals);
    let mut batch = Vec::with_capacity(RECV_BATCH);
    let mut ready = Vec::with_capacity(RECV_BATCH);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = input.recv_many(&mut batch, RECV_BATCH) => {
                if n == 0 {
                    break;
                }
                stats.received.fetch_add(n as u64, Ordering::Relaxed);
                for msg in batch.drain(..) {
                    if !arrivals.push(msg) {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                arrivals.release(None, &mut ready);
            }
            row = hep_raw.recv(), if raw_open => {
                match row {
                    Some(row) => {
                        stats.hep_raw_rows.fetch_add(1, Ordering::Relaxed);
                        stage.writer.push_hep_raw(row);
                    }
                    None => raw_open = false,
                }
            }
            _ = tick.tick() => {
                // A live capture's clock moves on when no traffic arrives.
                arrivals.release(config.live.then(wall_clock_ns), &mut ready);
                for im in stage.ims.expire(Instant::now()) {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    stage.writer.push_im(im);
                }
                // Call timeouts run on capture time: live sources advance it
                // with the wall clock, imported captures with their packets.
                let now_ns = if config.live {
                    wall_clock_ns().max(stage.latest_capture_ns)
                } else {
                    stage.latest_capture_ns
                };
                for call in stage.calls.expire(now_ns) {
                    stats.call_rows.fetch_add(1, Ordering::Relaxed);
                    stage.writer.push_call(call);
                }
            }
        }
        stage.archive_all(&mut ready, &jobs, &stats).await;
        if stage.writer.needs_roll(Instant::now()) {
            seal(&mut stage.writer, false, &jobs, &stats).await;
        }
    }
    arrivals.drain(&mut ready);
    stage.archive_all(&mut ready, &jobs, &stats).await;
    let Stage {
        mut writer,
        ims: mut correlator,
        mut calls,
        mut presence,
        ..
    } = stage;
    while let Ok(row) = hep_raw.try_recv() {
        stats.hep_raw_rows.fetch_add(1, Ordering::Relaxed);
        writer.push_hep_raw(row);
    }
    for im in correlator.drain() {
        stats.im_rows.fetch_add(1, Ordering::Relaxed);
        writer.push_im(im);
    }
    for call in calls.drain() {
        stats.call_rows.fetch_add(1, Ordering::Relaxed);
        writer.push_call(call);
    }
    // An unanswered PUBLISH is no presence state: nothing to archive.
    let unanswered_publishes = presence.drain();
    tracing::debug!(
        unanswered_publishes,
        counters = ?presence.counters(),
        "presence correlator drained"
    );
    seal(&mut writer, true, &jobs, &stats).await;
    drop(jobs);
    sealer.await.map_err(|e| CollectorError::Io {
        path: config.data_dir.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

/// Everything one message becomes: its `sip_messages` row and whatever the
/// correlators complete with it.
struct Stage {
    writer: ArchiveWriter,
    ims: im::ImCorrelator,
    calls: calls::CallCorrelator,
    presence: presence::PresenceCorrelator,
    latest_capture_ns: i64,
}

impl Stage {
    /// Archives every message of `ready`, rolling segments per message,
    /// not per batch, so a segment never exceeds its limits.
    async fn archive_all(
        &mut self,
        ready: &mut Vec<CapturedMessage>,
        jobs: &mpsc::Sender<writer::SealJob>,
        stats: &CollectorStats,
    ) {
        for msg in ready.drain(..) {
            self.archive(msg, stats);
            if self.writer.needs_roll(Instant::now()) {
                seal(&mut self.writer, false, jobs, stats).await;
            }
        }
    }

    fn archive(&mut self, msg: CapturedMessage, stats: &CollectorStats) {
        let parsed = SipMessage::parse(&msg.raw);
        match &parsed {
            Ok(sip) => {
                for im in self.ims.observe(Instant::now(), &msg, sip) {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_im(im);
                }
                for call in self.calls.observe(&msg, sip) {
                    stats.call_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_call(call);
                }
                for state in self.presence.observe(&msg, sip) {
                    stats.presence_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_presence(state);
                }
                self.latest_capture_ns = self.latest_capture_ns.max(msg.time_ns);
            }
            Err(_) => {
                stats.unparsable.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.sip_rows.fetch_add(1, Ordering::Relaxed);
        self.writer.push_sip(&msg, &parsed);
    }
}

/// Hands the due buffers (all of them when `all`) to the sealing stage.
async fn seal(
    writer: &mut ArchiveWriter,
    all: bool,
    jobs: &mpsc::Sender<writer::SealJob>,
    stats: &CollectorStats,
) {
    for job in writer.roll(Instant::now(), all) {
        // The sealer only stops when this sender is dropped.
        let _ = jobs.send(job).await;
    }
    stats
        .rows_lost
        .fetch_add(writer.take_lost(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
