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
pub mod room_events;
pub mod synthetic;
pub mod verify;

/// jemalloc options for a binary that archives (`sipvault`, and the
/// benchmarks that stand for it), exported by each as `_rjem_malloc_conf`;
/// `_RJEM_MALLOC_CONF` in the environment still overrides them. Sealed
/// segments free tens of MiB at a time, and by default jemalloc keeps such
/// pages for 10 s, which put the archive's peak RSS ~40 MiB higher; a
/// background thread returns them after 1 s, off the ingest threads
/// (`archive_load`: 225-234 MiB instead of 254-273 MiB, CPU per message
/// within 2 %; BENCHMARKS.md).
pub const JEMALLOC_OPTIONS: &[u8] = b"background_thread:true,dirty_decay_ms:1000\0";
pub mod wal;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sipvault_catalog::Catalog;
use sipvault_schemas::{CapturedMessage, HepRawRow, ImMessageRow, RoomEventRow};
use sipvault_sip::{AddressCache, SipMessage};
use tokio::sync::mpsc;

pub use verify::{Finding, VerifyReport, verify_archive};
pub use wal::Ack;
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
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error("checkpoint snapshot: {0}")]
    Snapshot(#[from] postcard::Error),
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
    /// Write-ahead log and crash recovery (`serve`); `None` for file
    /// imports, which are repeated whole instead. With a log the collector
    /// also carries the catalog's room events into `room_events`, exactly
    /// once: the last catalog id archived is part of its logged state.
    pub wal: Option<WalConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// A log file is closed and a new one started past this size.
    pub file_bytes: u64,
    /// A checkpoint (seal everything open, snapshot the correlators, trim
    /// the log) at least this often...
    pub checkpoint_interval: Duration,
    /// ...and whenever this much was logged since the last one: it bounds
    /// what a restart replays.
    pub checkpoint_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            file_bytes: 64 << 20,
            // The segment age limit: checkpoints add no extra segments at
            // low rates.
            checkpoint_interval: SegmentLimits::default().max_age,
            checkpoint_bytes: 1 << 30,
        }
    }
}

/// `ip:port`, as `SocketAddr`'s `Display` writes it; IPv4 without the
/// formatting machinery, which took as long as reading an SDP's lines.
pub(crate) fn socket_addr_text(addr: std::net::SocketAddr) -> String {
    let std::net::SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut text = String::with_capacity(21);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text.push(':');
    text.push_str(digits.format(v4.port()));
    text
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
    /// `room_events` rows: conference events from the server and room
    /// membership changes from the catalog.
    pub room_event_rows: AtomicU64,
    pub segments_sealed: AtomicU64,
    pub write_errors: AtomicU64,
    /// Rows whose segment could not be written even at shutdown.
    pub rows_lost: AtomicU64,
    /// Write-ahead log fsyncs (each commits a group of batches).
    pub wal_fsyncs: AtomicU64,
    pub wal_errors: AtomicU64,
    /// Messages archived although their log append failed: a crash before
    /// their segment is sealed would lose them.
    pub unlogged: AtomicU64,
    /// Log groups replayed at start after an unclean stop.
    pub replayed_groups: AtomicU64,
    /// Rows a replay produced again whose segment was already sealed.
    pub replay_skipped_rows: AtomicU64,
    /// Archive files that were not in the manifest at start (a crash
    /// between writing and entering them), moved to `quarantine/`.
    pub quarantined_files: AtomicU64,
}

impl CollectorStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 18] {
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
                "room_event_rows",
                self.room_event_rows.load(Ordering::Relaxed),
            ),
            (
                "segments_sealed",
                self.segments_sealed.load(Ordering::Relaxed),
            ),
            ("write_errors", self.write_errors.load(Ordering::Relaxed)),
            ("rows_lost", self.rows_lost.load(Ordering::Relaxed)),
            ("wal_fsyncs", self.wal_fsyncs.load(Ordering::Relaxed)),
            ("wal_errors", self.wal_errors.load(Ordering::Relaxed)),
            ("unlogged", self.unlogged.load(Ordering::Relaxed)),
            (
                "replayed_groups",
                self.replayed_groups.load(Ordering::Relaxed),
            ),
            (
                "replay_skipped_rows",
                self.replay_skipped_rows.load(Ordering::Relaxed),
            ),
            (
                "quarantined_files",
                self.quarantined_files.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// What the collector reads: captured SIP messages from every source, and
/// non-SIP HEP payloads for the `hep_raw` table.
pub struct Inputs {
    pub captured: mpsc::Receiver<CapturedMessage>,
    pub hep_raw: mpsc::Receiver<HepRawRow>,
    /// Messages whose sender waits to learn that the archive accepted them
    /// (critical mode: an IM is relayed only once its record is durable).
    pub acked: Option<mpsc::Receiver<AckedMessage>>,
    /// Conference events the server's focus reports.
    pub room_events: Option<mpsc::Receiver<RoomEventRow>>,
}

/// A captured message and the answer its sender waits for.
pub type AckedMessage = (CapturedMessage, Ack);

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
        (
            captured_tx,
            raw_tx,
            Inputs {
                captured,
                hep_raw,
                acked: None,
                room_events: None,
            },
        )
    }

    /// Adds the input for messages whose sender waits for their acceptance.
    pub fn acked_channel(&mut self, capacity: usize) -> mpsc::Sender<AckedMessage> {
        let (tx, rx) = mpsc::channel(capacity);
        self.acked = Some(rx);
        tx
    }

    /// Adds the input for room and conference events (`room_events` rows).
    pub fn room_events_channel(&mut self, capacity: usize) -> mpsc::Sender<RoomEventRow> {
        let (tx, rx) = mpsc::channel(capacity);
        self.room_events = Some(rx);
        tx
    }
}

/// Messages taken off the input channel per wake-up: one task switch per
/// batch instead of per message under load.
const RECV_BATCH: usize = 512;

/// Runs the collector until the captured-message input closes, then
/// archives every IM still waiting for an answer and seals all open segments.
///
/// With a write-ahead log, it first recovers: quarantines archive files a
/// crash left outside the manifest, restores the newest checkpoint and
/// replays the log after it.
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
        mut acked,
        mut room_events,
    } = inputs;
    let wal_dir = config.data_dir.join(wal::WAL_DIR);
    // One segment queued behind the one being sealed: when sealing falls
    // behind, ingest waits, and memory holds at most three segments.
    let (jobs, job_rx) = mpsc::channel(1);
    let sealer = tokio::spawn(writer::run_sealer(
        config.data_dir.clone(),
        config.wal.as_ref().map(|_| wal_dir.clone()),
        catalog.clone(),
        job_rx,
        sealed,
        stats.clone(),
    ));
    let mut pipeline = Pipeline::new(&config);
    let mut log = None;
    if let Some(wal_config) = &config.wal {
        quarantine_unsealed(&config.data_dir, &catalog, &stats).await?;
        pipeline.recover(&wal_dir, &catalog, &jobs, &stats).await?;
        pipeline.configure(&config);
        log = Some(Log {
            writer: wal::WalWriter::start(wal_dir.clone(), wal_config.file_bytes, stats.clone())?,
            config: wal_config.clone(),
            since_checkpoint_bytes: 0,
            last_checkpoint_ns: pipeline.clock_ns.max(wall_clock_ns()),
        });
    }
    let mut raw_open = true;
    let mut batch = Vec::with_capacity(RECV_BATCH);
    let mut acked_batch = Vec::new();
    let mut raw_batch = Vec::new();
    let mut room_batch = Vec::new();
    // New room events of the catalog are looked for every second (with a
    // log only: the last id archived must survive a crash with the rows).
    let mut catalog_poll = tokio::time::interval(Duration::from_secs(1));
    catalog_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut acks = Vec::new();
        let event = tokio::select! {
            n = input.recv_many(&mut batch, RECV_BATCH) => {
                if n == 0 {
                    break;
                }
                Event::Input { captured: std::mem::take(&mut batch), hep_raw: Vec::new() }
            }
            n = recv_acked(&mut acked, &mut acked_batch) => {
                if n == 0 {
                    acked = None;
                    continue;
                }
                let captured = acked_batch
                    .drain(..)
                    .map(|(msg, ack)| {
                        acks.push(ack);
                        msg
                    })
                    .collect();
                Event::Input { captured, hep_raw: Vec::new() }
            }
            n = hep_raw.recv_many(&mut raw_batch, RECV_BATCH), if raw_open => {
                if n == 0 {
                    raw_open = false;
                    continue;
                }
                Event::Input { captured: Vec::new(), hep_raw: std::mem::take(&mut raw_batch) }
            }
            n = recv_room_events(&mut room_events, &mut room_batch) => {
                if n == 0 {
                    room_events = None;
                    continue;
                }
                Event::RoomEvents(std::mem::take(&mut room_batch))
            }
            _ = catalog_poll.tick(), if log.is_some() => {
                match pipeline.new_catalog_room_events(&catalog).await {
                    Some(rows) => Event::RoomEvents(rows),
                    None => continue,
                }
            }
            _ = tick.tick() => Event::Tick,
        };
        pipeline
            .log_and_apply(event, acks, log.as_mut(), &jobs, &stats)
            .await?;
        if let Some(l) = &log
            && (l.since_checkpoint_bytes >= l.config.checkpoint_bytes
                || pipeline.clock_ns - l.last_checkpoint_ns
                    >= i64::try_from(l.config.checkpoint_interval.as_nanos()).unwrap_or(i64::MAX))
        {
            pipeline
                .log_and_apply(Event::Checkpoint, Vec::new(), log.as_mut(), &jobs, &stats)
                .await?;
        }
    }
    // What is left of the non-SIP input, then the drain: both logged, so a
    // crash during shutdown replays to the same end.
    while let Ok(row) = hep_raw.try_recv() {
        raw_batch.push(row);
    }
    if !raw_batch.is_empty() {
        let event = Event::Input {
            captured: Vec::new(),
            hep_raw: std::mem::take(&mut raw_batch),
        };
        pipeline
            .log_and_apply(event, Vec::new(), log.as_mut(), &jobs, &stats)
            .await?;
    }
    if let Some(rx) = &mut room_events {
        while let Ok(row) = rx.try_recv() {
            room_batch.push(row);
        }
    }
    if log.is_some()
        && let Some(rows) = pipeline.new_catalog_room_events(&catalog).await
    {
        room_batch.extend(rows);
    }
    if !room_batch.is_empty() {
        pipeline
            .log_and_apply(
                Event::RoomEvents(room_batch),
                Vec::new(),
                log.as_mut(),
                &jobs,
                &stats,
            )
            .await?;
    }
    pipeline
        .log_and_apply(Event::Drain, Vec::new(), log.as_mut(), &jobs, &stats)
        .await?;
    if let Some(l) = log {
        l.writer.close();
    }
    drop(jobs);
    sealer.await.map_err(|e| CollectorError::Io {
        path: config.data_dir.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

async fn recv_room_events(
    room_events: &mut Option<mpsc::Receiver<RoomEventRow>>,
    out: &mut Vec<RoomEventRow>,
) -> usize {
    match room_events {
        Some(rx) => rx.recv_many(out, RECV_BATCH).await,
        None => std::future::pending().await,
    }
}

async fn recv_acked(
    acked: &mut Option<mpsc::Receiver<AckedMessage>>,
    out: &mut Vec<AckedMessage>,
) -> usize {
    match acked {
        Some(rx) => rx.recv_many(out, RECV_BATCH).await,
        None => std::future::pending().await,
    }
}

use wal::{Event, Group};

/// The write-ahead log while the collector runs.
struct Log {
    writer: wal::WalWriter,
    config: WalConfig,
    since_checkpoint_bytes: u64,
    last_checkpoint_ns: i64,
}

/// Layout of a checkpoint snapshot (the postcard encoding of [`State`] is
/// positional). Bump it whenever a type in it changes: arrivals, the IM,
/// call or presence correlator state, the catalog room event mark.
const SNAPSHOT_VERSION: u32 = 4;

/// Catalog room events taken per poll: a first start on a catalog with a
/// long history carries it over in steps.
const CATALOG_ROOM_EVENTS_BATCH: i64 = 1000;

/// Rolls within one log group are numbered in the low bits of a position.
const ROLL_BITS: u32 = 20;

/// Everything the collector holds between messages: the arrival window,
/// the correlators and the open segments. Driven only by [`Group`]s.
struct Pipeline {
    live: bool,
    arrivals: arrivals::Arrivals,
    writer: ArchiveWriter,
    ims: im::ImCorrelator,
    calls: calls::CallCorrelator,
    presence: presence::PresenceCorrelator,
    /// From/To parses shared by the messages of a dialog.
    addresses: AddressCache,
    latest_capture_ns: i64,
    /// The collector clock: the latest group's.
    clock_ns: i64,
    /// Id of the newest catalog room event archived (logged and applied):
    /// the catalog is read after it, and a row at or below it is a copy.
    catalog_room_events_archived: i64,
    /// LSN of the latest group applied (or of the restored checkpoint); the
    /// next group is one above. With `rolls_in_group` it makes the log
    /// position of a roll: (LSN << ROLL_BITS) | roll.
    lsn: u64,
    rolls_in_group: i64,
    logged: bool,
    /// While replaying: per (table, date), the latest position sealed.
    sealed_positions: HashMap<(String, String), i64>,
    ready: Vec<CapturedMessage>,
}

/// The pipeline state a checkpoint keeps (the open segments are sealed
/// at a checkpoint, so they are never part of it).
#[derive(serde::Serialize)]
struct StateRef<'a> {
    latest_capture_ns: i64,
    clock_ns: i64,
    arrivals: &'a arrivals::Arrivals,
    ims: &'a im::ImCorrelator,
    calls: &'a calls::CallCorrelator,
    presence: &'a presence::PresenceCorrelator,
    catalog_room_events_archived: i64,
}

/// [`StateRef`] read back (same fields, same order).
#[derive(serde::Deserialize)]
struct State {
    latest_capture_ns: i64,
    clock_ns: i64,
    arrivals: arrivals::Arrivals,
    ims: im::ImCorrelator,
    calls: calls::CallCorrelator,
    presence: presence::PresenceCorrelator,
    catalog_room_events_archived: i64,
}

impl Pipeline {
    fn new(config: &CollectorConfig) -> Self {
        Pipeline {
            live: config.live,
            arrivals: arrivals::Arrivals::new(config.arrivals),
            writer: ArchiveWriter::new(config.limits.clone()),
            ims: im::ImCorrelator::new(config.im_answer_timeout),
            calls: calls::CallCorrelator::new(config.calls.clone()),
            presence: presence::PresenceCorrelator::new(),
            addresses: AddressCache::new(),
            latest_capture_ns: i64::MIN,
            clock_ns: i64::MIN,
            catalog_room_events_archived: 0,
            lsn: 0,
            rolls_in_group: 0,
            logged: config.wal.is_some(),
            sealed_positions: HashMap::new(),
            ready: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Settings from the configuration, after a restored snapshot was
    /// replayed with its own.
    fn configure(&mut self, config: &CollectorConfig) {
        self.arrivals.set_config(config.arrivals);
        self.ims.set_answer_timeout(config.im_answer_timeout);
        self.calls.set_config(config.calls.clone());
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = SNAPSHOT_VERSION.to_le_bytes().to_vec();
        out.extend(postcard::to_stdvec(&StateRef {
            latest_capture_ns: self.latest_capture_ns,
            clock_ns: self.clock_ns,
            arrivals: &self.arrivals,
            ims: &self.ims,
            calls: &self.calls,
            presence: &self.presence,
            catalog_room_events_archived: self.catalog_room_events_archived,
        })?);
        Ok(out)
    }

    /// Restores a snapshot; one of another layout (written by another
    /// version) is skipped with a warning: the replay then starts from
    /// empty correlators, which can archive a call or IM that spans the
    /// checkpoint incompletely, but never refuses to start.
    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let version = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        if version != Some(SNAPSHOT_VERSION) {
            tracing::warn!(
                ?version,
                expected = SNAPSHOT_VERSION,
                "checkpoint snapshot of another layout: replaying from empty correlator state"
            );
            return Ok(());
        }
        let state: State = postcard::from_bytes(&bytes[4..])?;
        self.latest_capture_ns = state.latest_capture_ns;
        self.clock_ns = state.clock_ns;
        self.arrivals = state.arrivals;
        self.ims = state.ims;
        self.calls = state.calls;
        self.presence = state.presence;
        self.catalog_room_events_archived = state.catalog_room_events_archived;
        Ok(())
    }

    /// Restores the newest checkpoint and replays the log after it; the
    /// segments already sealed from the log are rolled again but skipped.
    async fn recover(
        &mut self,
        wal_dir: &Path,
        catalog: &Catalog,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) -> Result<()> {
        let recovered = wal::read(wal_dir)?;
        if let Some((lsn, state)) = &recovered.snapshot {
            self.restore(state)?;
            self.lsn = *lsn;
        }
        let after = recovered.after();
        let (mut groups, mut damaged_files, mut first) = (0u64, 0usize, None);
        for path in &recovered.files {
            let (file_groups, damaged) = wal::read_file(path, after)?;
            damaged_files += usize::from(damaged);
            for group in file_groups {
                // LSNs only grow from file to file; anything else is a
                // copy of a group already applied.
                if group.lsn <= self.lsn {
                    continue;
                }
                if groups == 0 {
                    first = Some(group.lsn);
                    self.load_sealed_positions(catalog).await?;
                }
                groups += 1;
                stats.replayed_groups.fetch_add(1, Ordering::Relaxed);
                self.apply(group, jobs, stats).await?;
            }
        }
        if groups == 0 {
            return Ok(());
        }
        self.sealed_positions.clear();
        tracing::warn!(
            groups,
            first_lsn = first,
            damaged_files,
            skipped_rows = stats.replay_skipped_rows.load(Ordering::Relaxed),
            "write-ahead log replayed after an unclean stop"
        );
        Ok(())
    }

    /// Per (table, day), the latest log position already sealed: a replay
    /// rolls those segments again and must skip them.
    async fn load_sealed_positions(&mut self, catalog: &Catalog) -> Result<()> {
        for (table, path, position) in catalog.wal_positions().await? {
            let Some(date) = partition_of(&path) else {
                continue;
            };
            let best = self
                .sealed_positions
                .entry((table, date))
                .or_insert(position);
            *best = (*best).max(position);
        }
        Ok(())
    }

    /// Room events the catalog recorded after the last one archived, as
    /// archive rows; `None` when there are none (or the catalog cannot be
    /// read now: the next poll tries again).
    async fn new_catalog_room_events(&self, catalog: &Catalog) -> Option<Vec<RoomEventRow>> {
        match catalog
            .room_events_after(self.catalog_room_events_archived, CATALOG_ROOM_EVENTS_BATCH)
            .await
        {
            Ok(events) if events.is_empty() => None,
            Ok(events) => Some(
                events
                    .iter()
                    .map(|(event, domain)| room_events::from_catalog(event, domain.as_deref()))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reading the catalog's room events failed");
                None
            }
        }
    }

    /// Stamps `event` as the next group, logs it (when there is a log) and
    /// applies it. `acks` are answered once the group is durable.
    async fn log_and_apply(
        &mut self,
        event: Event,
        acks: Vec<Ack>,
        log: Option<&mut Log>,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) -> Result<()> {
        let group = Group {
            lsn: self.lsn + 1,
            clock_ns: self.clock_ns.max(wall_clock_ns()),
            event,
        };
        match log {
            Some(log) => {
                let messages = match &group.event {
                    Event::Input { captured, hep_raw } => (captured.len() + hep_raw.len()) as u64,
                    _ => 0,
                };
                let checkpoint = matches!(group.event, Event::Checkpoint | Event::Drain);
                let frame = wal::encode(&group)?;
                log.since_checkpoint_bytes += frame.len() as u64;
                if checkpoint {
                    log.since_checkpoint_bytes = 0;
                    log.last_checkpoint_ns = group.clock_ns;
                }
                let append = wal::Append {
                    lsn: group.lsn,
                    frame,
                    messages,
                    acks,
                    rotate_after: checkpoint,
                };
                if let Err(e) = log.writer.append(append).await {
                    // The log thread is gone: nothing more can be made
                    // durable. Keep archiving; count it.
                    stats.wal_errors.fetch_add(1, Ordering::Relaxed);
                    stats.unlogged.fetch_add(messages, Ordering::Relaxed);
                    tracing::error!(error = %e, "write-ahead log unavailable");
                }
            }
            None => {
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
        }
        self.apply(group, jobs, stats).await
    }

    /// One group through the pipeline: the same work live and in a replay.
    async fn apply(
        &mut self,
        group: Group,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) -> Result<()> {
        self.lsn = group.lsn;
        self.rolls_in_group = 0;
        self.clock_ns = self.clock_ns.max(group.clock_ns);
        self.writer.set_clock(self.clock_ns);
        let kind = match &group.event {
            Event::Checkpoint => EventKind::Checkpoint,
            Event::Drain => EventKind::Drain,
            Event::Input { .. } | Event::Tick | Event::RoomEvents(_) => EventKind::Other,
        };
        match group.event {
            Event::Input { captured, hep_raw } => {
                stats
                    .received
                    .fetch_add(captured.len() as u64, Ordering::Relaxed);
                for msg in captured {
                    if !self.arrivals.push(msg) {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for row in hep_raw {
                    stats.hep_raw_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_hep_raw(row);
                }
                self.arrivals.release(None, &mut self.ready);
            }
            Event::Tick => {
                // A live capture's clock moves on when no traffic arrives.
                self.arrivals
                    .release(self.live.then_some(self.clock_ns), &mut self.ready);
                for im in self.ims.expire(self.clock_ns) {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_im(im);
                }
                // Call timeouts run on capture time: live sources advance it
                // with the clock, imported captures with their packets.
                let now_ns = if self.live {
                    self.clock_ns.max(self.latest_capture_ns)
                } else {
                    self.latest_capture_ns
                };
                for call in self.calls.expire(now_ns) {
                    stats.call_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_call(call);
                }
            }
            Event::RoomEvents(rows) => {
                for row in rows {
                    if let Some(id) = row.catalog_id {
                        // Polled twice before the first poll's group was
                        // applied, or replayed: archived already.
                        if id <= self.catalog_room_events_archived {
                            continue;
                        }
                        self.catalog_room_events_archived = id;
                    }
                    stats.room_event_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_room_event(row);
                }
            }
            Event::Checkpoint => {}
            Event::Drain => self.arrivals.drain(&mut self.ready),
        }
        self.archive_ready(jobs, stats).await;
        match kind {
            EventKind::Checkpoint => self.checkpoint(jobs, stats).await?,
            EventKind::Drain => {
                for im in self.ims.drain() {
                    stats.im_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_im(im);
                }
                for call in self.calls.drain() {
                    stats.call_rows.fetch_add(1, Ordering::Relaxed);
                    self.writer.push_call(call);
                }
                // An unanswered PUBLISH is no presence state: nothing to archive.
                let unanswered_publishes = self.presence.drain();
                tracing::debug!(
                    unanswered_publishes,
                    counters = ?self.presence.counters(),
                    "presence correlator drained"
                );
                self.checkpoint(jobs, stats).await?;
            }
            EventKind::Other => {
                if self.writer.needs_roll() {
                    self.seal(false, jobs, stats).await;
                }
            }
        }
        Ok(())
    }

    /// Seals everything open, then (with a log) hands the sealer the state
    /// to snapshot once those segments are in the manifest.
    async fn checkpoint(
        &mut self,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) -> Result<()> {
        self.seal(true, jobs, stats).await;
        if self.logged {
            let state = self.snapshot()?;
            // The sealer only stops when this sender is dropped.
            let _ = jobs
                .send(writer::SealerMsg::Checkpoint {
                    lsn: self.lsn,
                    state,
                })
                .await;
        }
        Ok(())
    }

    /// Archives every released message, rolling segments per message, not
    /// per batch, so a segment never exceeds its limits. The rolls fall
    /// where a full look at every buffer after each message would put them
    /// (a log replay must roll at the same rows), but that look is taken
    /// only once and after each roll: within a group the clock stands
    /// still, so between rolls only a row can make a buffer due.
    async fn archive_ready(
        &mut self,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) {
        let mut ready = std::mem::take(&mut self.ready);
        let mut aged = self.writer.needs_roll();
        for msg in ready.drain(..) {
            self.archive(msg, stats);
            if aged || self.writer.filled() {
                self.seal(false, jobs, stats).await;
                aged = self.writer.needs_roll();
            }
        }
        self.ready = ready;
    }

    fn archive(&mut self, mut msg: CapturedMessage, stats: &CollectorStats) {
        // The parse keeps the captured bytes without a copy; the row takes
        // them back from it.
        let parsed = SipMessage::parse_owned(std::mem::take(&mut msg.raw));
        match &parsed {
            Ok(sip) => {
                sip.share_addresses(&mut self.addresses);
                for im in self.ims.observe(self.clock_ns, &msg, sip) {
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
        self.writer.push_sip(&msg, parsed.as_ref());
    }

    /// Hands the due buffers (all of them when `all`) to the sealing stage,
    /// except, in a replay, those already sealed before the crash.
    async fn seal(
        &mut self,
        all: bool,
        jobs: &mpsc::Sender<writer::SealerMsg>,
        stats: &CollectorStats,
    ) {
        let position =
            ((self.lsn as i64) << ROLL_BITS) | self.rolls_in_group.min((1 << ROLL_BITS) - 1);
        self.rolls_in_group += 1;
        for mut job in self.writer.roll(all) {
            if self
                .sealed_positions
                .get(&(job.rows.table().to_string(), job.date.clone()))
                .is_some_and(|&sealed| sealed >= position)
            {
                stats
                    .replay_skipped_rows
                    .fetch_add(job.rows.len() as u64, Ordering::Relaxed);
                continue;
            }
            job.wal_position = self.logged.then_some(position);
            // The sealer only stops when this sender is dropped.
            let _ = jobs.send(writer::SealerMsg::Segment(job)).await;
        }
        stats
            .rows_lost
            .fetch_add(self.writer.take_lost(), Ordering::Relaxed);
    }
}

enum EventKind {
    Checkpoint,
    Drain,
    Other,
}

/// `date` of an archive path `archive/<table>/date=<date>/<segment>.parquet`.
fn partition_of(path: &str) -> Option<String> {
    path.split('/')
        .find_map(|part| part.strip_prefix("date="))
        .map(str::to_string)
}

/// Archive files a crash left outside the manifest: a half-written
/// `.tmp` is deleted; a whole segment that never entered the manifest is
/// moved to `quarantine/` (its rows are rebuilt from the log), so the
/// archive again holds exactly what the manifest names.
async fn quarantine_unsealed(
    data_dir: &Path,
    catalog: &Catalog,
    stats: &CollectorStats,
) -> Result<()> {
    let known: std::collections::HashSet<String> = catalog
        .segments()
        .await?
        .into_iter()
        .map(|s| s.path)
        .collect();
    for rel in verify::archive_files(data_dir) {
        let path = data_dir.join(&rel);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(|source| CollectorError::Io {
                path: rel.clone(),
                source,
            })?;
            tracing::warn!(path = %rel, "removed a half-written segment");
        } else if name.ends_with(".parquet") && !known.contains(&rel) {
            let target = data_dir.join("quarantine").join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|source| CollectorError::Io {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            std::fs::rename(&path, &target).map_err(|source| CollectorError::Io {
                path: rel.clone(),
                source,
            })?;
            stats.quarantined_files.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %rel, moved_to = %target.display(), "segment not in the manifest (a crash came before it was entered); quarantined");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
