//! Archive writer: buffers rows per table and day, rolls a buffer into a
//! Parquet segment when it grows too big or too old, and seals it.
//!
//! Sealing order (so a crash never leaves a manifest row without its file):
//! write `.<id>.parquet.tmp`, fsync it, rename to `<id>.parquet`, fsync the
//! directory, hash the file, then enter the manifest row.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
use sipvault_catalog::{Catalog, NewSegment};
use sipvault_schemas::{
    CallRow, CapturedMessage, HepRawRow, ImMessageRow, MemorySize, PresenceRow, RoomEventRow,
    SipMessagesBuilder, TABLE_CALLS, TABLE_HEP_RAW, TABLE_IM_MESSAGES, TABLE_PRESENCE,
    TABLE_ROOM_EVENTS, TABLE_SIP_MESSAGES, calls_batch, hep_raw_batch, im_messages_batch,
    presence_batch, room_events_batch,
};
use sipvault_sip::{SipMessage, Unparsed};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::{CollectorError, CollectorStats, Result, SealedSegment};

#[derive(Debug, Clone)]
pub struct SegmentLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

impl SegmentLimits {
    /// What the open buffers of all tables and days may hold together
    /// before the largest is sealed early: one segment's worth, so the
    /// segments filling, queued and sealing stay within a fixed memory.
    /// (`archive_load 3000000 --wal` peaked at 236–259 MiB with one and a
    /// half segments' worth, 197–217 MiB with this, for an archive 6 %
    /// larger: more, smaller segments.)
    pub fn open_bytes_budget(&self) -> usize {
        self.max_bytes
    }
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits {
            max_rows: 200_000,
            max_bytes: 32 << 20,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Rows waiting in a buffer: a `Vec` of row structs, or column builders.
trait PendingRows {
    /// An empty buffer for a segment within `limits`.
    fn for_segment(limits: &SegmentLimits) -> Self;
    fn len(&self) -> usize;
}

impl<T> PendingRows for Vec<T> {
    /// Room for as many rows as a segment can take, reserved up front like
    /// the `sip_messages` columns: growing by doubling copied every row
    /// again and again into fresh memory, a fifth of the page faults of a
    /// busy collector. Untouched room is address space, not memory.
    fn for_segment(limits: &SegmentLimits) -> Self {
        Vec::with_capacity(
            limits
                .max_rows
                .min(limits.max_bytes / size_of::<T>().max(1) + 1),
        )
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl PendingRows for SipMessagesBuilder {
    /// Sized for a full segment up front: the big buffers are then written
    /// once instead of copied at every doubling. Pages never written are
    /// never touched, so a quiet segment costs address space, not memory.
    fn for_segment(limits: &SegmentLimits) -> Self {
        // Every row counts at least 128 bytes against `max_bytes`.
        let rows = limits.max_rows.min(limits.max_bytes / 128 + 1);
        SipMessagesBuilder::with_capacity(rows, limits.max_bytes)
    }
    fn len(&self) -> usize {
        SipMessagesBuilder::len(self)
    }
}

struct Buffer<R> {
    rows: R,
    bytes: usize,
    /// Collector clock (ns) when its first row came.
    opened_ns: i64,
}

impl<R: PendingRows> Buffer<R> {
    fn due(&self, now_ns: i64, limits: &SegmentLimits) -> bool {
        self.rows.len() > 0
            && (self.full(limits)
                || now_ns.saturating_sub(self.opened_ns)
                    >= i64::try_from(limits.max_age.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Due whatever the clock says: its rows or bytes reached their limit
    /// (or segments have no age to reach, so any row is due at once).
    fn full(&self, limits: &SegmentLimits) -> bool {
        self.rows.len() >= limits.max_rows
            || self.bytes >= limits.max_bytes
            || limits.max_age.is_zero()
    }
}

/// Row buffers per table and day. Rolling takes the due buffers out as
/// [`SealJob`]s; [`run_sealer`] turns them into segments on its own task, so
/// ingest keeps going while a segment is written.
pub struct ArchiveWriter {
    limits: SegmentLimits,
    /// `sip_messages` is by far the biggest table: its rows go straight
    /// into Arrow column builders.
    sip: BTreeMap<String, Buffer<SipMessagesBuilder>>,
    im: BTreeMap<String, Buffer<Vec<ImMessageRow>>>,
    calls: BTreeMap<String, Buffer<Vec<CallRow>>>,
    hep_raw: BTreeMap<String, Buffer<Vec<HepRawRow>>>,
    presence: BTreeMap<String, Buffer<Vec<PresenceRow>>>,
    room_events: BTreeMap<String, Buffer<Vec<RoomEventRow>>>,
    dates: DateCache,
    addrs: AddrText,
    /// Bytes of every open buffer together (see [`Self::open_buffers`]),
    /// kept as rows come and recounted at each roll: the budget is checked
    /// after every row, and summing the buffers each time showed in
    /// profiles.
    open_bytes: usize,
    /// Rows that could not be turned into a segment (see [`Self::take_lost`]).
    lost: u64,
    /// The collector clock, ns (see [`Self::set_clock`]).
    now_ns: i64,
    /// A row since the last roll filled its buffer to a size limit (see
    /// [`Self::filled`]).
    filled: bool,
}

/// `ip:port` text of socket addresses, remembered: a capture point sees
/// the same few peers over and over, and formatting an address per row
/// shows in profiles.
#[derive(Default)]
struct AddrText {
    /// Where each address's text is in `texts`: one look-up per address
    /// of a row (foldhash: SipHash, the default, showed in profiles too).
    slots: std::collections::HashMap<std::net::SocketAddr, usize, foldhash::fast::RandomState>,
    texts: Vec<String>,
}

impl AddrText {
    /// Bound on remembered addresses; past it the memory starts over.
    const MAX: usize = 4096;

    /// The texts of a row's source and destination, each formatted once.
    fn pair(&mut self, src: std::net::SocketAddr, dst: std::net::SocketAddr) -> (&str, &str) {
        if self.texts.len() + 2 > Self::MAX {
            self.slots.clear();
            self.texts.clear();
        }
        let (src, dst) = (self.slot(src), self.slot(dst));
        let text = |slot: usize| self.texts.get(slot).map_or("", String::as_str);
        (text(src), text(dst))
    }

    fn slot(&mut self, addr: std::net::SocketAddr) -> usize {
        let next = self.texts.len();
        let slot = *self.slots.entry(addr).or_insert(next);
        if slot == next {
            self.texts.push(crate::socket_addr_text(addr));
        }
        slot
    }
}

/// `YYYY-MM-DD` (UTC) of a nanosecond timestamp: the hive partition value.
pub fn partition_date(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .format("%Y-%m-%d")
        .to_string()
}

const NS_PER_DAY: i64 = 86_400_000_000_000;

/// [`partition_date`] remembered for the last day seen: consecutive rows
/// almost always fall on the same day, and formatting a date per row shows
/// in profiles.
#[derive(Default)]
struct DateCache {
    last: Option<(i64, String)>,
}

impl DateCache {
    fn date(&mut self, time_ns: i64) -> &str {
        let day = time_ns.div_euclid(NS_PER_DAY);
        if self.last.as_ref().is_none_or(|(d, _)| *d != day) {
            self.last = Some((day, partition_date(time_ns)));
        }
        self.last.as_ref().map_or("", |(_, date)| date.as_str())
    }
}

/// The buffer of `date`, its age restarted when it was empty. Looked up
/// by `&str`: the day's key is only allocated when its buffer is made.
fn buffer<'m, R: PendingRows>(
    map: &'m mut BTreeMap<String, Buffer<R>>,
    date: &str,
    limits: &SegmentLimits,
    now_ns: i64,
) -> &'m mut Buffer<R> {
    if !map.contains_key(date) {
        map.insert(
            date.to_owned(),
            Buffer {
                rows: R::for_segment(limits),
                bytes: 0,
                opened_ns: now_ns,
            },
        );
    }
    let buf = map
        .get_mut(date)
        .expect("the buffer of this date was just made");
    if buf.rows.len() == 0 {
        buf.opened_ns = now_ns;
    }
    buf
}

/// Appends `row` to the buffer of `date`, counting its memory there and in
/// `open_bytes`, the total of every open buffer. Returns whether the
/// buffer is now full (rows or bytes).
fn push<T: MemorySize>(
    now_ns: i64,
    map: &mut BTreeMap<String, Buffer<Vec<T>>>,
    limits: &SegmentLimits,
    date: &str,
    row: T,
    open_bytes: &mut usize,
) -> bool {
    let size = row.memory_size();
    *open_bytes += size;
    let buf = buffer(map, date, limits, now_ns);
    buf.bytes += size;
    buf.rows.push(row);
    buf.full(limits)
}

impl ArchiveWriter {
    pub fn new(limits: SegmentLimits) -> Self {
        ArchiveWriter {
            limits,
            sip: BTreeMap::new(),
            im: BTreeMap::new(),
            calls: BTreeMap::new(),
            hep_raw: BTreeMap::new(),
            presence: BTreeMap::new(),
            room_events: BTreeMap::new(),
            dates: DateCache::default(),
            addrs: AddrText::default(),
            open_bytes: 0,
            lost: 0,
            now_ns: i64::MIN,
            filled: false,
        }
    }

    /// Appends the `sip_messages` row of `msg`: key fields and the raw
    /// bytes from `parsed` (`SipMessage::parse_owned` of the captured bytes,
    /// done once by the caller for every consumer; `msg.raw` is not read).
    /// A message that does not parse still gets its row, with `parse_error`
    /// set.
    pub fn push_sip(&mut self, msg: &CapturedMessage, parsed: Result<&SipMessage, &Unparsed>) {
        let (src, dst) = self.addrs.pair(msg.src, msg.dst);
        let error_text;
        let mut fields = sipvault_schemas::SipMessageFields {
            time_ns: msg.time_ns,
            source: &msg.source,
            direction: msg.direction.as_str(),
            transport: msg.transport.as_str(),
            src,
            dst,
            raw: match parsed {
                Ok(m) => m.input(),
                Err(unparsed) => &unparsed.bytes,
            },
            ..Default::default()
        };
        match parsed {
            Ok(m) => {
                fields.method = m.method();
                fields.status = m.status();
                fields.reason = m.reason();
                fields.request_uri = m.request_uri();
                fields.call_id = m.call_id();
                if let Some((n, method)) = m.cseq() {
                    fields.cseq = Some(n);
                    fields.cseq_method = Some(method);
                }
                if let Some(from) = m.from() {
                    fields.from_tag = from.tag();
                    fields.from_uri = Some(&from.uri);
                }
                if let Some(to) = m.to() {
                    fields.to_tag = to.tag();
                    fields.to_uri = Some(&to.uri);
                }
            }
            Err(unparsed) => {
                error_text = unparsed.error.to_string();
                fields.parse_error = Some(&error_text);
            }
        }
        let buf = buffer(
            &mut self.sip,
            self.dates.date(msg.time_ns),
            &self.limits,
            self.now_ns,
        );
        let size = fields.memory_size();
        buf.bytes += size;
        self.open_bytes += size;
        buf.rows.append(&fields);
        self.filled |= buf.full(&self.limits);
    }

    /// Rows dropped since the last call because their segment could not be
    /// assembled (an internal Arrow error, not an I/O one).
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    pub fn push_im(&mut self, row: ImMessageRow) {
        self.filled |= push(
            self.now_ns,
            &mut self.im,
            &self.limits,
            self.dates.date(row.time_ns),
            row,
            &mut self.open_bytes,
        );
    }

    pub fn push_call(&mut self, row: CallRow) {
        self.filled |= push(
            self.now_ns,
            &mut self.calls,
            &self.limits,
            self.dates.date(row.time_ns),
            row,
            &mut self.open_bytes,
        );
    }

    pub fn push_hep_raw(&mut self, row: HepRawRow) {
        self.filled |= push(
            self.now_ns,
            &mut self.hep_raw,
            &self.limits,
            self.dates.date(row.time_ns),
            row,
            &mut self.open_bytes,
        );
    }

    pub fn push_presence(&mut self, row: PresenceRow) {
        self.filled |= push(
            self.now_ns,
            &mut self.presence,
            &self.limits,
            self.dates.date(row.time_ns),
            row,
            &mut self.open_bytes,
        );
    }

    pub fn push_room_event(&mut self, row: RoomEventRow) {
        self.filled |= push(
            self.now_ns,
            &mut self.room_events,
            &self.limits,
            self.dates.date(row.time_ns),
            row,
            &mut self.open_bytes,
        );
    }

    /// Sets the collector clock that ages buffers (the writer reads no
    /// clock itself, so a write-ahead-log replay rolls at the same rows).
    pub fn set_clock(&mut self, now_ns: i64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    /// Whether a row pushed since the last roll made its buffer due
    /// whatever the clock, or the open buffers together reached their
    /// budget: what can change from one row to the next, without looking
    /// at every buffer. [`Self::needs_roll`] asks about age too.
    pub fn filled(&self) -> bool {
        self.filled || self.over_open_budget()
    }

    pub fn needs_roll(&self) -> bool {
        let now = self.now_ns;
        fn due<R: PendingRows>(
            m: &BTreeMap<String, Buffer<R>>,
            now: i64,
            l: &SegmentLimits,
        ) -> bool {
            m.values().any(|b| b.due(now, l))
        }
        due(&self.sip, now, &self.limits)
            || due(&self.im, now, &self.limits)
            || due(&self.calls, now, &self.limits)
            || due(&self.hep_raw, now, &self.limits)
            || due(&self.presence, now, &self.limits)
            || due(&self.room_events, now, &self.limits)
            || self.over_open_budget()
    }

    /// Whether the open buffers of all tables and days together hold
    /// [`SegmentLimits::open_bytes_budget`] or more. Each stays under its
    /// own limit, but `sip_messages`, IMs and calls filling side by side
    /// (and a day's end) would otherwise hold several segments' worth.
    fn over_open_budget(&self) -> bool {
        self.open_bytes >= self.limits.open_bytes_budget()
    }

    /// Bytes of every open buffer together, and the table and day of the
    /// largest.
    fn open_buffers(&self) -> (usize, Option<(&'static str, &str)>) {
        fn of<'m, R>(
            table: &'static str,
            m: &'m BTreeMap<String, Buffer<R>>,
        ) -> impl Iterator<Item = (usize, &'static str, &'m str)> {
            m.iter()
                .map(move |(date, b)| (b.bytes, table, date.as_str()))
        }
        let all = of(TABLE_SIP_MESSAGES, &self.sip)
            .chain(of(TABLE_IM_MESSAGES, &self.im))
            .chain(of(TABLE_CALLS, &self.calls))
            .chain(of(TABLE_HEP_RAW, &self.hep_raw))
            .chain(of(TABLE_PRESENCE, &self.presence))
            .chain(of(TABLE_ROOM_EVENTS, &self.room_events));
        let (mut total, mut largest) = (0, None::<(usize, &'static str, &str)>);
        for (bytes, table, date) in all {
            total += bytes;
            if largest.is_none_or(|(most, _, _)| bytes > most) {
                largest = Some((bytes, table, date));
            }
        }
        (total, largest.map(|(_, table, date)| (table, date)))
    }

    /// Takes every buffer that is due (or every non-empty one when `all`)
    /// out as a job for the sealer.
    pub fn roll(&mut self, all: bool) -> Vec<SealJob> {
        let now = self.now_ns;
        // Every full buffer is due, so this roll takes it.
        self.filled = false;
        // Over the budget of open bytes, the largest buffer goes too.
        let largest = match self.open_buffers() {
            (total, Some((table, date))) if total >= self.limits.open_bytes_budget() => {
                Some((table, date.to_string()))
            }
            _ => None,
        };
        let take = |table: &'static str| Take {
            all,
            now,
            date: largest
                .as_ref()
                .filter(|(t, _)| *t == table)
                .map(|(_, d)| d.as_str()),
        };
        let limits = &self.limits;
        let mut jobs = Vec::new();
        for (date, mut buf) in take_due(&mut self.sip, &take(TABLE_SIP_MESSAGES), limits) {
            let rows = buf.rows.len();
            let range = buf.rows.time_range().unwrap_or_default();
            match buf.rows.finish() {
                Ok(batch) => jobs.push(SealJob {
                    date,
                    rows: SegmentRows::Sip { batch, range },
                    wal_position: None,
                }),
                Err(e) => {
                    tracing::error!(error = %e, rows, %date, "assembling a sip_messages segment failed; rows lost");
                    self.lost += rows as u64;
                }
            }
        }
        jobs.extend(due_jobs(&mut self.im, &take(TABLE_IM_MESSAGES), limits));
        jobs.extend(due_jobs(&mut self.calls, &take(TABLE_CALLS), limits));
        jobs.extend(due_jobs(&mut self.hep_raw, &take(TABLE_HEP_RAW), limits));
        jobs.extend(due_jobs(&mut self.presence, &take(TABLE_PRESENCE), limits));
        jobs.extend(due_jobs(
            &mut self.room_events,
            &take(TABLE_ROOM_EVENTS),
            limits,
        ));
        self.open_bytes = self.open_buffers().0;
        jobs
    }
}

/// Rows of one table and day on their way to becoming one segment.
pub enum SegmentRows {
    /// Already columnar; `range` is the (min, max) row time.
    Sip {
        batch: RecordBatch,
        range: (i64, i64),
    },
    Im(Vec<ImMessageRow>),
    Calls(Vec<CallRow>),
    HepRaw(Vec<HepRawRow>),
    Presence(Vec<PresenceRow>),
    RoomEvents(Vec<RoomEventRow>),
}

impl SegmentRows {
    pub(crate) fn table(&self) -> &'static str {
        match self {
            SegmentRows::Sip { .. } => TABLE_SIP_MESSAGES,
            SegmentRows::Im(_) => TABLE_IM_MESSAGES,
            SegmentRows::Calls(_) => TABLE_CALLS,
            SegmentRows::HepRaw(_) => TABLE_HEP_RAW,
            SegmentRows::Presence(_) => TABLE_PRESENCE,
            SegmentRows::RoomEvents(_) => TABLE_ROOM_EVENTS,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            SegmentRows::Sip { batch, .. } => batch.num_rows(),
            SegmentRows::Im(r) => r.len(),
            SegmentRows::Calls(r) => r.len(),
            SegmentRows::HepRaw(r) => r.len(),
            SegmentRows::Presence(r) => r.len(),
            SegmentRows::RoomEvents(r) => r.len(),
        }
    }

    /// The Arrow batch and the (min, max) row time.
    fn batch(&self) -> std::result::Result<(RecordBatch, (i64, i64)), arrow_schema::ArrowError> {
        fn of<T: ArchiveRow>(
            rows: &[T],
        ) -> std::result::Result<(RecordBatch, (i64, i64)), arrow_schema::ArrowError> {
            Ok((T::batch(rows)?, time_range(rows.iter().map(T::time_ns))))
        }
        match self {
            SegmentRows::Sip { batch, range } => Ok((batch.clone(), *range)),
            SegmentRows::Im(r) => of(r),
            SegmentRows::Calls(r) => of(r),
            SegmentRows::HepRaw(r) => of(r),
            SegmentRows::Presence(r) => of(r),
            SegmentRows::RoomEvents(r) => of(r),
        }
    }
}

/// One segment to write: a table's rows for one day.
pub struct SealJob {
    pub date: String,
    pub rows: SegmentRows,
    /// Where in the write-ahead log it was rolled (see [`crate::wal`]).
    pub wal_position: Option<i64>,
}

/// What the sealing stage works through, in order.
pub enum SealerMsg {
    Segment(SealJob),
    /// Every segment rolled up to log group `lsn` is sealed once this is
    /// reached: snapshot `state` and trim the log.
    Checkpoint {
        lsn: u64,
        state: Vec<u8>,
    },
}

/// A row type with its own archive table.
trait ArchiveRow: Sized {
    fn time_ns(&self) -> i64;
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError>;
    fn into_segment(rows: Vec<Self>) -> SegmentRows;
}

impl ArchiveRow for ImMessageRow {
    fn into_segment(rows: Vec<Self>) -> SegmentRows {
        SegmentRows::Im(rows)
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        im_messages_batch(rows)
    }
}

impl ArchiveRow for CallRow {
    fn into_segment(rows: Vec<Self>) -> SegmentRows {
        SegmentRows::Calls(rows)
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        calls_batch(rows)
    }
}

impl ArchiveRow for HepRawRow {
    fn into_segment(rows: Vec<Self>) -> SegmentRows {
        SegmentRows::HepRaw(rows)
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        hep_raw_batch(rows)
    }
}

impl ArchiveRow for PresenceRow {
    fn into_segment(rows: Vec<Self>) -> SegmentRows {
        SegmentRows::Presence(rows)
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        presence_batch(rows)
    }
}

impl ArchiveRow for RoomEventRow {
    fn into_segment(rows: Vec<Self>) -> SegmentRows {
        SegmentRows::RoomEvents(rows)
    }
    fn time_ns(&self) -> i64 {
        self.time_ns
    }
    fn batch(rows: &[Self]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        room_events_batch(rows)
    }
}

/// Which buffers of one table a roll takes: every non-empty one (`all`),
/// else those due at `now`, and the one of `date` (the largest, when the
/// open buffers are over their budget).
struct Take<'a> {
    all: bool,
    now: i64,
    date: Option<&'a str>,
}

/// Takes the buffers of one table that `take` picks out.
fn take_due<R: PendingRows>(
    buffers: &mut BTreeMap<String, Buffer<R>>,
    take: &Take<'_>,
    limits: &SegmentLimits,
) -> Vec<(String, Buffer<R>)> {
    let dates: Vec<String> = buffers
        .iter()
        .filter(|(date, b)| {
            b.rows.len() > 0
                && (take.all || b.due(take.now, limits) || take.date == Some(date.as_str()))
        })
        .map(|(d, _)| d.clone())
        .collect();
    dates
        .into_iter()
        .filter_map(|date| {
            let buf = buffers.remove(&date)?;
            Some((date, buf))
        })
        .collect()
}

/// The row buffers of one table that `take` picks, as jobs.
fn due_jobs<T: ArchiveRow>(
    buffers: &mut BTreeMap<String, Buffer<Vec<T>>>,
    take: &Take<'_>,
    limits: &SegmentLimits,
) -> impl Iterator<Item = SealJob> + use<T> {
    take_due(buffers, take, limits)
        .into_iter()
        .map(|(date, buf)| SealJob {
            date,
            rows: T::into_segment(buf.rows),
            wal_position: None,
        })
}

/// How often a job whose seal keeps failing is retried once the collector
/// has stopped (while it runs, jobs are retried until they succeed, and the
/// bounded job channel holds ingest back meanwhile).
const SEAL_ATTEMPTS_AT_SHUTDOWN: u32 = 5;

/// Segments being written at once. Writing (encoding, compressing,
/// fsync, hashing) is independent per segment; only entering the manifest
/// has to go in order. Two keep both cores busy when several segments are
/// due together (a day's end, the end of an import, a checkpoint).
const SEALS_IN_FLIGHT: usize = 2;

/// The sealing stage: writes each job as a segment and enters them in the
/// manifest in order (it is a hash chain), announcing each on `sealed`.
/// While one segment is written the next may be too. A failed seal is
/// retried with backoff, its rows kept, so nothing is dropped because the
/// disk was briefly full or read-only.
pub async fn run_sealer(
    data_dir: PathBuf,
    wal_dir: Option<PathBuf>,
    catalog: Catalog,
    mut jobs: mpsc::Receiver<SealerMsg>,
    sealed: mpsc::Sender<SealedSegment>,
    stats: Arc<CollectorStats>,
) {
    let sealer = Sealer {
        data_dir: &data_dir,
        catalog: &catalog,
        sealed: &sealed,
        stats: &stats,
    };
    let mut writing: VecDeque<Writing> = VecDeque::new();
    loop {
        // A job is started as soon as there is room for it; with none
        // waiting, the oldest one being written is finished. So a segment
        // never waits for the next one to be entered in the manifest.
        let msg = if writing.is_empty() {
            jobs.recv().await
        } else if writing.len() < SEALS_IN_FLIGHT {
            match jobs.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::error::TryRecvError::Empty) => {
                    sealer.finish_oldest(&mut writing, &jobs).await;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            sealer.finish_oldest(&mut writing, &jobs).await;
            continue;
        };
        match msg {
            Some(SealerMsg::Segment(job)) => writing.push_back(sealer.start(job)),
            Some(SealerMsg::Checkpoint { lsn, state }) => {
                // The snapshot covers every segment rolled before it.
                sealer.finish_all(&mut writing, &jobs).await;
                let Some(dir) = wal_dir.clone() else {
                    continue;
                };
                let result = tokio::task::spawn_blocking(move || {
                    crate::wal::commit_checkpoint(&dir, lsn, &state)
                })
                .await;
                match result {
                    Ok(Ok(())) => tracing::debug!(lsn, "checkpoint written; log trimmed"),
                    // The log stays untrimmed; the next checkpoint tries again.
                    Ok(Err(e)) => {
                        stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, lsn, "writing a checkpoint failed");
                    }
                    Err(e) => tracing::error!(error = %e, lsn, "checkpoint task failed"),
                }
            }
            None => {
                sealer.finish_all(&mut writing, &jobs).await;
                break;
            }
        }
    }
}

struct Sealer<'a> {
    data_dir: &'a Path,
    catalog: &'a Catalog,
    /// Where each segment is announced once in the manifest.
    sealed: &'a mpsc::Sender<SealedSegment>,
    stats: &'a CollectorStats,
}

/// A job whose segment is being written, not yet in the manifest.
struct Writing {
    job: SealJob,
    written: Result<tokio::task::JoinHandle<Result<Written>>>,
}

/// A segment file written and renamed into place.
struct Written {
    table: &'static str,
    rel: String,
    rows: usize,
    sha256: String,
    min_time_ns: i64,
    max_time_ns: i64,
}

impl Sealer<'_> {
    /// Starts writing `job`'s segment on a blocking thread.
    fn start(&self, job: SealJob) -> Writing {
        let written = self.spawn_write(&job);
        Writing { job, written }
    }

    fn spawn_write(&self, job: &SealJob) -> Result<tokio::task::JoinHandle<Result<Written>>> {
        let (batch, (min_time_ns, max_time_ns)) = job.rows.batch()?;
        let table = job.rows.table();
        let segment_id = format!(
            "{}-{:08x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            rand_u32()
        );
        let rel = format!("archive/{table}/date={}/{segment_id}.parquet", job.date);
        let dir = self
            .data_dir
            .join(format!("archive/{table}/date={}", job.date));
        let final_path = self.data_dir.join(&rel);
        Ok(tokio::task::spawn_blocking(move || {
            let sha256 = write_parquet(&dir, &segment_id_tmp(&final_path), &final_path, &batch)?;
            Ok(Written {
                table,
                rel,
                rows: batch.num_rows(),
                sha256,
                min_time_ns,
                max_time_ns,
            })
        }))
    }

    /// Waits for the write to end and enters the segment in the manifest.
    async fn register(
        &self,
        job: &SealJob,
        writing: Result<tokio::task::JoinHandle<Result<Written>>>,
    ) -> Result<SealedSegment> {
        let written = writing?.await.map_err(|e| CollectorError::Io {
            path: format!("archive/{}", job.rows.table()),
            source: std::io::Error::other(e),
        })??;
        self.catalog
            .add_segment(&NewSegment {
                table_name: written.table.to_string(),
                path: written.rel.clone(),
                rows: written.rows as i64,
                sha256: written.sha256,
                min_time_ns: written.min_time_ns,
                max_time_ns: written.max_time_ns,
                wal_position: job.wal_position,
            })
            .await?;
        Ok(SealedSegment {
            table: written.table.to_string(),
            segment_id: Path::new(&written.rel)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string(),
            path: written.rel,
            rows: written.rows,
            im_rows: Vec::new(),
        })
    }

    /// Finishes every job being written, oldest first.
    async fn finish_all(&self, writing: &mut VecDeque<Writing>, jobs: &mpsc::Receiver<SealerMsg>) {
        while !writing.is_empty() {
            self.finish_oldest(writing, jobs).await;
        }
    }

    /// Finishes the oldest job being written: enters it in the manifest
    /// and announces it, or retries the whole seal (rows kept) until it
    /// succeeds, or at shutdown gives up after a few attempts.
    async fn finish_oldest(
        &self,
        writing: &mut VecDeque<Writing>,
        jobs: &mpsc::Receiver<SealerMsg>,
    ) {
        let stats = self.stats;
        let Some(Writing { job, written }) = writing.pop_front() else {
            return;
        };
        let mut result = self.register(&job, written).await;
        let mut attempt = 1u32;
        loop {
            match result {
                Ok(seg) => {
                    stats.segments_sealed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(table = %seg.table, path = %seg.path, rows = seg.rows, "segment sealed");
                    let seg = match job.rows {
                        SegmentRows::Im(rows) => SealedSegment {
                            im_rows: rows,
                            ..seg
                        },
                        _ => seg,
                    };
                    // The receiver going away (indexer stopped) must not stop archiving.
                    let _ = self.sealed.send(seg).await;
                    return;
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if jobs.is_closed() && attempt >= SEAL_ATTEMPTS_AT_SHUTDOWN {
                        stats
                            .rows_lost
                            .fetch_add(job.rows.len() as u64, Ordering::Relaxed);
                        tracing::error!(error = %e, table = job.rows.table(), date = %job.date, rows = job.rows.len(), "sealing failed at shutdown; these rows are lost");
                        return;
                    }
                    let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6)));
                    tracing::error!(error = %e, table = job.rows.table(), date = %job.date, ?backoff, "sealing a segment failed; rows kept, retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                    result = self.register(&job, self.spawn_write(&job)).await;
                }
            }
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

fn segment_id_tmp(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    final_path.with_file_name(format!(".{name}.tmp"))
}

fn time_range(times: impl Iterator<Item = i64>) -> (i64, i64) {
    times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CollectorError + '_ {
    move |source| CollectorError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes, fsyncs and renames one segment; returns the file's SHA-256.
fn write_parquet(dir: &Path, tmp: &Path, final_path: &Path, batch: &RecordBatch) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = File::create(tmp).map_err(io_err(tmp))?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(128 * 1024));
    // Columns unique per row: a dictionary never pays off.
    for column in ["raw", "payload", "call_id", "from_tag", "to_tag"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Text, bytes and lists of them arrive in capture order, not sorted, so
    // a page's or a file's min/max of them prunes nothing, and comparing
    // every value for them was a tenth of the encoding's work. Times and
    // numbers keep theirs (a time range prunes by them).
    props = props.set_statistics_enabled(EnabledStatistics::None);
    for field in batch.schema().fields() {
        if field.data_type().is_primitive() {
            props = props.set_column_statistics_enabled(
                ColumnPath::from(field.name().as_str()),
                EnabledStatistics::Page,
            );
        }
    }
    let props = props.build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    let file = w.into_inner()?;
    file.sync_all().map_err(io_err(tmp))?;
    drop(file);
    std::fs::rename(tmp, final_path).map_err(io_err(final_path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    sha256_file(final_path)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_and_length(path).map(|(sha256, _)| sha256)
}

/// The hex SHA-256 of a file and the number of bytes it covers.
pub fn sha256_and_length(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).map_err(io_err(path))?;
    Sha256Reader::new(file).finish().map_err(io_err(path))
}

/// A reader that takes the SHA-256 of what is read through it, so a file
/// can be hashed by the same pass that reads it for something else.
pub struct Sha256Reader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Sha256Reader<R> {
    pub fn new(inner: R) -> Self {
        Sha256Reader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left to the end, then gives the hex SHA-256 of all
    /// of it and its length.
    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        let mut buf = vec![0u8; 1 << 16];
        while self.read(&mut buf)? > 0 {}
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        self.hasher.update(read);
        self.bytes += read.len() as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn im(n: usize) -> ImMessageRow {
        ImMessageRow {
            time_ns: 1_767_225_600_000_000_000 + n as i64,
            call_id: format!("call-{n}@example.com"),
            cseq: 1,
            sender: "sip:alice@example.com".into(),
            recipients: vec!["sip:bob@example.com".into()],
            content_type: "text/plain".into(),
            body: "see you at the budget review".into(),
            delivery_status: "delivered".into(),
            status: Some(200),
            from_display: Some("Alice".into()),
            to_display: None,
        }
    }

    #[test]
    fn small_rows_roll_at_the_memory_they_take_not_at_their_text_alone() {
        let limits = SegmentLimits {
            max_rows: usize::MAX,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let mut writer = ArchiveWriter::new(limits.clone());
        writer.set_clock(0);
        let per_row = im(0).memory_size();
        assert!(
            per_row >= std::mem::size_of::<ImMessageRow>() + im(0).body.len() + 40,
            "the struct and every string count: {per_row}"
        );
        let (mut pushed, mut total, mut last) = (0, 0, 0);
        while !writer.needs_roll() {
            let row = im(pushed);
            last = row.memory_size();
            total += last;
            writer.push_im(row);
            pushed += 1;
            assert!(pushed < 100_000, "bounded");
        }
        assert!(
            total >= limits.max_bytes && total - last < limits.max_bytes,
            "rolled after {pushed} rows taking {total} bytes, budget {}",
            limits.max_bytes
        );
        let jobs = writer.roll(false);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].rows.len(), pushed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_written_side_by_side_enter_the_manifest_in_job_order() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).await.unwrap();
        let (jobs_tx, jobs_rx) = mpsc::channel(16);
        let (sealed_tx, mut sealed_rx) = mpsc::channel(16);
        let stats = Arc::new(CollectorStats::default());
        let sealer = tokio::spawn(run_sealer(
            dir.path().to_owned(),
            None,
            catalog.clone(),
            jobs_rx,
            sealed_tx,
            stats.clone(),
        ));
        // Sizes alternate, so a later, smaller segment is often written
        // before the one ahead of it.
        let sizes = [4000, 3, 2500, 1, 3000, 2, 1500, 5];
        for (k, &n) in sizes.iter().enumerate() {
            let rows = (0..n).map(|i| im(k * 10_000 + i)).collect();
            jobs_tx
                .send(SealerMsg::Segment(SealJob {
                    date: format!("2026-01-{:02}", k + 1),
                    rows: SegmentRows::Im(rows),
                    wal_position: None,
                }))
                .await
                .unwrap();
        }
        drop(jobs_tx);
        sealer.await.unwrap();
        let announced: Vec<usize> = std::iter::from_fn(|| sealed_rx.try_recv().ok())
            .map(|seg| seg.rows)
            .collect();
        assert_eq!(announced, sizes, "announced in job order");
        let manifest: Vec<(i64, bool)> = catalog
            .segments()
            .await
            .unwrap()
            .iter()
            .enumerate()
            .map(|(k, seg)| {
                (
                    seg.rows,
                    seg.path.contains(&format!("date=2026-01-{:02}", k + 1)),
                )
            })
            .collect();
        let expected: Vec<(i64, bool)> = sizes.iter().map(|&n| (n as i64, true)).collect();
        assert_eq!(manifest, expected, "entered in the manifest in job order");
        assert_eq!(
            stats.segments_sealed.load(Ordering::Relaxed),
            sizes.len() as u64
        );
        let report =
            crate::verify::verify_archive(dir.path(), &catalog.segments().await.unwrap(), |_| {});
        assert!(
            report.findings.is_empty(),
            "chain, hashes and files agree: {:?}",
            report.findings
        );
    }

    #[test]
    fn address_texts_stay_right_past_the_bound() {
        let mut addrs = AddrText::default();
        let peer: std::net::SocketAddr = "192.0.2.1:5060".parse().unwrap();
        for port in 1..=(AddrText::MAX as u16 + 10) {
            let src = std::net::SocketAddr::from(([198, 51, 100, 7], port));
            assert_eq!(
                addrs.pair(src, peer),
                (format!("198.51.100.7:{port}").as_str(), "192.0.2.1:5060")
            );
            assert!(addrs.texts.len() <= AddrText::MAX);
            assert_eq!(addrs.slots.len(), addrs.texts.len());
        }
        let v6: std::net::SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(
            addrs.pair(v6, v6),
            ("[2001:db8::1]:5061", "[2001:db8::1]:5061")
        );
    }

    #[test]
    fn filled_tells_a_full_buffer_from_an_aged_one() {
        let limits = SegmentLimits {
            max_rows: 3,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        };
        let mut writer = ArchiveWriter::new(limits.clone());
        writer.set_clock(0);
        writer.push_im(im(0));
        writer.push_im(im(1));
        assert!(!writer.filled() && !writer.needs_roll());
        writer.push_im(im(2));
        assert!(writer.filled() && writer.needs_roll(), "three rows: full");
        assert_eq!(writer.roll(false).len(), 1);
        assert!(!writer.filled() && !writer.needs_roll(), "the roll took it");

        writer.push_im(im(3));
        writer.set_clock(61_000_000_000);
        assert!(
            writer.needs_roll() && !writer.filled(),
            "aged, not full: only the look at every buffer sees it"
        );
        writer.roll(false);

        let mut ageless = ArchiveWriter::new(SegmentLimits {
            max_age: Duration::ZERO,
            ..limits
        });
        ageless.push_im(im(4));
        assert!(ageless.filled(), "no age to reach: due at once");
    }

    #[test]
    fn open_buffers_together_stay_within_their_budget_the_largest_rolled_first() {
        let limits = SegmentLimits {
            max_rows: usize::MAX,
            max_bytes: 64 << 10,
            max_age: Duration::from_secs(3600),
        };
        let day = 86_400_000_000_000i64;
        let mut writer = ArchiveWriter::new(limits.clone());
        writer.set_clock(0);
        let per_row = im(0).memory_size();
        // IMs of four days, the first the busiest: no buffer reaches a
        // segment's limit before the four together reach the budget.
        let mut rolled = Vec::new();
        for n in 0..2_000 {
            let mut row = im(n);
            row.time_ns += day * [0, 0, 1, 2, 3][n % 5];
            writer.push_im(row);
            let (open, _) = writer.open_buffers();
            assert_eq!(writer.open_bytes, open, "the running total after row {n}");
            assert!(
                open < limits.open_bytes_budget() + per_row,
                "{open} bytes open after row {n}"
            );
            if writer.needs_roll() {
                for job in writer.roll(false) {
                    rolled.push((job.date.clone(), job.rows.len()));
                }
            }
        }
        assert!(!rolled.is_empty());
        // The budget, not the per-segment limit, rolled the first: the
        // busiest day, at 40 % of the budget, which is its own limit.
        let (first_date, first_rows) = &rolled[0];
        assert_eq!(first_date, &partition_date(im(0).time_ns));
        assert!(
            first_rows * per_row < limits.max_bytes,
            "{first_rows} rows of {per_row} bytes"
        );
        // Nothing is lost: every row is in a rolled segment or still open.
        let open_rows: usize = writer.im.values().map(|b| b.rows.len()).sum();
        assert_eq!(
            rolled.iter().map(|(_, n)| n).sum::<usize>() + open_rows,
            2_000
        );
    }

    #[test]
    fn a_segment_keeps_min_max_of_times_and_numbers_but_not_of_text() {
        let dir = tempfile::tempdir().unwrap();
        let final_path = dir.path().join("seg.parquet");
        let rows: Vec<ImMessageRow> = (0..100).map(im).collect();
        let batch = sipvault_schemas::im_messages_batch(&rows).unwrap();
        write_parquet(
            dir.path(),
            &segment_id_tmp(&final_path),
            &final_path,
            &batch,
        )
        .unwrap();

        let reader = SerializedFileReader::new(File::open(&final_path).unwrap()).unwrap();
        let row_group = reader.metadata().row_group(0);
        for column in row_group.columns() {
            let name = column.column_path().string();
            let has_statistics = column
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some());
            let numeric = matches!(name.as_str(), "time" | "cseq" | "status");
            assert_eq!(has_statistics, numeric, "statistics of column {name}");
        }
    }
}
