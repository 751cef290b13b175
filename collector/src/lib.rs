//! The collector: turns a stream of [`CapturedMessage`]s into archive rows
//! and writes them as sealed Parquet segments.
//!
//! Pipeline: source channel → [`rows::sip_row`] (parse) → [`im::ImCorrelator`]
//! (MESSAGE + final response → one IM row) → [`writer::ArchiveWriter`]
//! (buffers per table and day, rolls by size and age, seals into the
//! manifest). Each sealed segment is announced on a channel so the binary
//! can hand IM rows to the indexer without this crate knowing about it.

pub mod hep;
pub mod im;
pub mod pcap;
pub mod rows;
pub mod verify;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sipvault_catalog::Catalog;
use sipvault_schemas::{CapturedMessage, ImMessageRow};
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
    pub unparsable: AtomicU64,
    pub sip_rows: AtomicU64,
    pub im_rows: AtomicU64,
    pub segments_sealed: AtomicU64,
    pub write_errors: AtomicU64,
}

impl CollectorStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("received", self.received.load(Ordering::Relaxed)),
            ("unparsable", self.unparsable.load(Ordering::Relaxed)),
            ("sip_rows", self.sip_rows.load(Ordering::Relaxed)),
            ("im_rows", self.im_rows.load(Ordering::Relaxed)),
            (
                "segments_sealed",
                self.segments_sealed.load(Ordering::Relaxed),
            ),
            ("write_errors", self.write_errors.load(Ordering::Relaxed)),
        ]
    }
}

/// Runs the collector until `input` closes, then archives every IM still
/// waiting for an answer and seals all open segments.
pub async fn run(
    config: CollectorConfig,
    catalog: Catalog,
    mut input: mpsc::Receiver<CapturedMessage>,
    sealed: mpsc::Sender<SealedSegment>,
    stats: Arc<CollectorStats>,
) -> Result<()> {
    let mut writer = ArchiveWriter::new(config.data_dir.clone(), config.limits.clone(), catalog);
    let mut correlator = im::ImCorrelator::new(config.im_answer_timeout);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = input.recv() => {
                let Some(msg) = msg else { break };
                stats.received.fetch_add(1, Ordering::Relaxed);
                let row = rows::sip_row(&msg);
                if row.parse_error.is_some() {
                    stats.unparsable.fetch_add(1, Ordering::Relaxed);
                }
                for im in correlator.observe(Instant::now(), &msg) {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    writer.push_im(im);
                }
                stats.sip_rows.fetch_add(1, Ordering::Relaxed);
                writer.push_sip(row);
            }
            _ = tick.tick() => {
                for im in correlator.expire(Instant::now()) {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    writer.push_im(im);
                }
            }
        }
        if writer.needs_roll(Instant::now()) {
            seal(&mut writer, false, &sealed, &stats).await;
        }
    }
    for im in correlator.drain() {
        stats.im_rows.fetch_add(1, Ordering::Relaxed);
        writer.push_im(im);
    }
    seal(&mut writer, true, &sealed, &stats).await;
    Ok(())
}

async fn seal(
    writer: &mut ArchiveWriter,
    all: bool,
    sealed: &mpsc::Sender<SealedSegment>,
    stats: &CollectorStats,
) {
    let now = Instant::now();
    match writer.roll(now, all).await {
        Ok(segments) => {
            for seg in segments {
                stats.segments_sealed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(table = %seg.table, path = %seg.path, rows = seg.rows, "segment sealed");
                // The receiver going away (indexer stopped) must not stop archiving.
                let _ = sealed.send(seg).await;
            }
        }
        Err(e) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "sealing segments failed; rows stay buffered and are retried");
        }
    }
}

#[cfg(test)]
mod tests;
