//! Write-ahead log: what the collector takes in is appended here, and
//! fsynced in groups, before it counts as accepted.
//!
//! The collector is a deterministic state machine over this log. Each
//! wake-up of its loop is one [`Group`]: the messages it took off its
//! inputs, a timer tick, a checkpoint or the final drain, stamped with the
//! collector clock. Correlators and segment rolls read time only from the
//! group, so replaying the log after a crash repeats every decision of the
//! first run: the same rows, cut into segments at the same places.
//!
//! On disk, under `<data>/wal/`:
//! - `<first lsn:020>.wal`: frames `[len u32 LE][crc32 u32 LE][postcard
//!   Group]`, one group per frame. A torn or damaged frame ends what is read
//!   of that file; later files are still read.
//! - `checkpoint-<lsn:020>.snap`: one frame holding the pipeline's state
//!   (arrival window and correlators) after the checkpoint group `lsn`,
//!   written only once every segment rolled up to it is sealed. Recovery
//!   restores the newest snapshot and replays the groups after it; the
//!   segments a replay rolls again are skipped by their log position
//!   (kept in the catalog beside the manifest).
//!
//! Log files wholly before the newest snapshot are deleted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sipvault_schemas::{CapturedMessage, HepRawRow, RoomEventRow};
use tokio::sync::{mpsc, oneshot};

use crate::CollectorStats;

/// Directory of the log under the data directory.
pub const WAL_DIR: &str = "wal";

const LOG_SUFFIX: &str = ".wal";
const SNAPSHOT_PREFIX: &str = "checkpoint-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const FRAME_HEADER: usize = 8;
/// A frame longer than this is damage, not data: the collector's groups
/// are bounded by its input batch (512 messages of at most 64 KiB).
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("write-ahead log encoding: {0}")]
    Encode(#[from] postcard::Error),
    #[error("write-ahead log stopped")]
    Stopped,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One wake-up of the collector, as logged and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Log sequence number, one per group, increasing across restarts.
    pub lsn: u64,
    /// The collector clock (ns since the epoch, never going back).
    pub clock_ns: i64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Messages and non-SIP HEP payloads taken off the inputs.
    Input {
        captured: Vec<CapturedMessage>,
        hep_raw: Vec<HepRawRow>,
    },
    /// The periodic timer: reorder window, IM and call timeouts, segment age.
    Tick,
    /// Seal every open segment and snapshot the state.
    Checkpoint,
    /// The input ended: archive everything still open, seal, snapshot.
    Drain,
    /// Conference events from the server and room events from the
    /// catalog (last, so logs written before it still decode).
    RoomEvents(Vec<RoomEventRow>),
}

/// Resolved once the record is durable in the log, or with the reason it
/// could not be made so (critical mode refuses the IM). Plain types, so a
/// capture source can hold the sending end without depending on this crate.
pub type Ack = oneshot::Sender<Result<(), String>>;

/// `[len][crc32][payload]`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&frame_header(payload));
    out.extend_from_slice(payload);
    out
}

/// `[len][crc32]` of a frame holding `payload`.
fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER] {
    let mut header = [0; FRAME_HEADER];
    let (len, crc) = header.split_at_mut(4);
    len.copy_from_slice(&(payload.len() as u32).to_le_bytes());
    crc.copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// The frames at the start of `bytes`.
pub struct Unframed<'a> {
    pub payloads: Vec<&'a [u8]>,
    /// Bytes taken by those whole frames.
    pub good_len: usize,
    /// Something other than whole frames follows them.
    pub damaged: bool,
}

pub fn unframe(bytes: &[u8]) -> Unframed<'_> {
    let mut payloads = Vec::new();
    let mut rest = bytes;
    let done = |payloads, rest: &[u8], damaged| Unframed {
        payloads,
        good_len: bytes.len() - rest.len(),
        damaged,
    };
    while !rest.is_empty() {
        if rest.len() < FRAME_HEADER {
            return done(payloads, rest, true);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_FRAME || rest.len() - FRAME_HEADER < len {
            return done(payloads, rest, true);
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if crc32fast::hash(payload) != crc {
            return done(payloads, rest, true);
        }
        payloads.push(payload);
        rest = &rest[FRAME_HEADER + len..];
    }
    done(payloads, rest, false)
}

/// The frame of `group`, serialized in place behind room left for the
/// frame header: no second copy of the group's bytes, and one buffer
/// sized for it up front rather than grown by doubling.
pub fn encode(group: &Group) -> Result<Vec<u8>, WalError> {
    let mut out = Vec::with_capacity(FRAME_HEADER + group.encoded_size_hint());
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let mut out = postcard::to_extend(group, out)?;
    let header = frame_header(out.get(FRAME_HEADER..).unwrap_or(&[]));
    if let Some(room) = out.get_mut(..FRAME_HEADER) {
        room.copy_from_slice(&header);
    }
    Ok(out)
}

impl Group {
    /// About the bytes of the group's encoding: its messages' bytes and
    /// their other fields.
    fn encoded_size_hint(&self) -> usize {
        match &self.event {
            Event::Input { captured, hep_raw } => {
                captured.iter().map(|m| m.raw.len() + 96).sum::<usize>()
                    + hep_raw.iter().map(|r| r.payload.len() + 96).sum::<usize>()
                    + 32
            }
            _ => 64,
        }
    }
}

fn log_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{LOG_SUFFIX}")
}

fn snapshot_name(lsn: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_SUFFIX}")
}

/// Files of `dir` named `<prefix><number:020><suffix>`, by number.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What recovery starts from: the newest snapshot (if any) and the log
/// files to replay after it, oldest first. Files are read one at a time
/// ([`read_file`]), so a replay holds one file, not the whole log, in memory.
pub struct Recovered {
    pub snapshot: Option<(u64, Vec<u8>)>,
    pub files: Vec<PathBuf>,
}

impl Recovered {
    /// The LSN the snapshot covers (0 without one): groups up to it are
    /// not replayed.
    pub fn after(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |(lsn, _)| *lsn)
    }
}

/// Finds what the log of `dir` holds for recovery. A missing directory is
/// an empty log.
pub fn read(dir: &Path) -> Result<Recovered, WalError> {
    let mut snapshot = None;
    if let Some((lsn, path)) = numbered(dir, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX).pop() {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let unframed = unframe(&bytes);
        match unframed.payloads.first() {
            Some(p) if !unframed.damaged => snapshot = Some((lsn, p.to_vec())),
            _ => {
                // Snapshots are renamed into place whole: damage here is
                // the disk's, and replaying from an older state is not
                // possible once the log before it was trimmed.
                return Err(WalError::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "checkpoint snapshot is damaged",
                    ),
                });
            }
        }
    }
    let files = numbered(dir, "", LOG_SUFFIX)
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    Ok(Recovered { snapshot, files })
}

/// The groups of one log file with an LSN above `after`, in order, and
/// whether the file ended in damage. A file that ends in a torn frame (the
/// crash came mid-write) is cut back to its last whole frame, so appending
/// to it later cannot hide frames behind the damage.
pub fn read_file(path: &Path, after: u64) -> Result<(Vec<Group>, bool), WalError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let unframed = unframe(&bytes);
    let mut good_len = unframed.good_len;
    let mut damaged = unframed.damaged;
    let mut offset = 0;
    let mut groups = Vec::new();
    for p in unframed.payloads {
        match postcard::from_bytes::<Group>(p) {
            Ok(g) => {
                if g.lsn > after {
                    groups.push(g);
                }
                offset += FRAME_HEADER + p.len();
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "undecodable write-ahead log frame");
                good_len = offset;
                damaged = true;
                break;
            }
        }
    }
    if damaged {
        tracing::warn!(path = %path.display(), kept_bytes = good_len, "write-ahead log file ends in a torn or damaged frame; keeping what precedes it");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| {
                f.set_len(good_len as u64)?;
                f.sync_all()
            })
            .map_err(io_err(path))?;
    }
    Ok((groups, damaged))
}

/// Writes the snapshot of checkpoint `lsn` (tmp, fsync, rename, fsync dir),
/// then removes older snapshots and every log file whose groups all come
/// at or before `lsn`: every file that starts at or before it, since the
/// log starts a new file after each checkpoint group.
pub fn commit_checkpoint(dir: &Path, lsn: u64, state: &[u8]) -> Result<(), WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let final_path = dir.join(snapshot_name(lsn));
    let tmp = dir.join(format!(".{}.tmp", snapshot_name(lsn)));
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&frame(state)).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    sync_dir(dir)?;
    for (n, path) in numbered(dir, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX) {
        if n < lsn {
            let _ = std::fs::remove_file(path);
        }
    }
    for (first, path) in numbered(dir, "", LOG_SUFFIX) {
        if first <= lsn {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// A frame for the log thread.
pub struct Append {
    pub lsn: u64,
    pub frame: Vec<u8>,
    /// Messages in the frame (counted as unlogged if it cannot be written).
    pub messages: u64,
    /// Resolved after the fsync that makes `frame` durable.
    pub acks: Vec<Ack>,
    /// Start a new file after this frame (a checkpoint: the files before it
    /// can then be deleted whole).
    pub rotate_after: bool,
}

/// The log's writing end: frames go to a thread that appends them and
/// fsyncs once per batch it finds waiting (group commit).
pub struct WalWriter {
    tx: mpsc::Sender<Append>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Frames queued for the log thread: while it fsyncs, the collector goes on
/// and the next batch gathers here.
const QUEUED_FRAMES: usize = 64;

impl WalWriter {
    /// Starts the log thread; new frames go to a new file in `dir`.
    pub fn start(
        dir: PathBuf,
        file_bytes: u64,
        stats: Arc<CollectorStats>,
    ) -> Result<Self, WalError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
        let thread = std::thread::Builder::new()
            .name("sipvault-wal".into())
            .spawn(move || log_thread(dir, file_bytes, rx, stats))
            .map_err(|e| WalError::Io {
                path: "sipvault-wal thread".into(),
                source: e,
            })?;
        Ok(WalWriter {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues a frame; waits only when the log thread is that far behind.
    pub async fn append(&self, append: Append) -> Result<(), WalError> {
        self.tx.send(append).await.map_err(|_| WalError::Stopped)
    }

    /// Writes what is queued and stops the thread.
    pub fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct OpenLog {
    path: PathBuf,
    file: File,
    bytes: u64,
}

fn log_thread(
    dir: PathBuf,
    file_bytes: u64,
    mut rx: mpsc::Receiver<Append>,
    stats: Arc<CollectorStats>,
) {
    let mut open: Option<OpenLog> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = write_batch(&dir, file_bytes, &mut open, &batch);
        match &result {
            Ok(()) => {
                stats.wal_fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.wal_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, groups = batch.len(), "write-ahead log append failed; these records are not durable");
                // Whatever half a frame reached the file ends it; the next
                // batch starts a new file.
                open = None;
            }
        }
        for append in batch.drain(..) {
            if result.is_err() {
                stats.unlogged.fetch_add(append.messages, Ordering::Relaxed);
            }
            for ack in append.acks {
                let _ = ack.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }
}

fn write_batch(
    dir: &Path,
    file_bytes: u64,
    open: &mut Option<OpenLog>,
    batch: &[Append],
) -> Result<(), WalError> {
    let mut dirty = false;
    for append in batch {
        if open.is_none() {
            let path = dir.join(log_name(append.lsn));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            sync_dir(dir)?;
            *open = Some(OpenLog {
                path,
                file,
                bytes: 0,
            });
        }
        let log = open.as_mut().expect("opened above");
        log.file
            .write_all(&append.frame)
            .map_err(io_err(&log.path))?;
        log.bytes += append.frame.len() as u64;
        dirty = true;
        if append.rotate_after || log.bytes >= file_bytes {
            log.file.sync_data().map_err(io_err(&log.path))?;
            dirty = false;
            *open = None;
        }
    }
    if dirty && let Some(log) = open.as_mut() {
        log.file.sync_data().map_err(io_err(&log.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
