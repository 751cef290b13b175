//! A generated archive with known contents, for report tests and benchmarks.
//!
//! [`generate_fixture`] writes `calls` and `im_messages` segments in the real
//! layout (`<dir>/archive/<table>/date=YYYY-MM-DD/<segment>.parquet`) from a
//! fixed seed: the same [`FixtureSpec`] always gives the same files, on any
//! machine. Some figures hold by construction, whatever the seed, so tests can
//! check reports against them by hand:
//!
//! - record `i` (a call or an IM) falls on day `i % days`;
//! - call `i`'s outcome is [`call_outcome`]`(i)`, a fixed cycle of 40: 26
//!   answered, 4 busy (486), 4 no-answer (480), 2 cancelled (487), 2 rejected
//!   (603), 1 failed (503), 1 timeout (no final response);
//! - IM `j` is delivered (200) unless `j % 50` is 48 (failed, 480) or 49
//!   (unanswered, no status); it has two recipients when `j % 10 == 3`, one
//!   otherwise; its body contains the word `escalation` when `j % 1000 == 0`.
//! - user `u` has the display name [`FixtureSpec::user_display`]`(u)`: the
//!   capitalised name and the surname `SURNAMES[u % 5]` (`Alice Smith`,
//!   `Bob Jones`, ... `Frank Smith`), so four of the first 20 users share
//!   each surname. Every call carries both parties' names; an IM carries the
//!   sender's name unless `j % 25 == 7` (a client that sends none) and the
//!   first recipient's name (`to_display`), never the second's.
//!
//! Who talks to whom, at what time of day and for how long comes from a
//! SplitMix64 generator seeded per record, skewed so that low-numbered users
//! are busier. Records are written in time order within each day.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::builder::{
    Int64Builder, ListBuilder, StringBuilder, TimestampNanosecondBuilder, UInt16Builder,
    UInt32Builder,
};
use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampNanosecondArray};
use datafusion::parquet::arrow::ArrowWriter;
use sipvault_schemas::{TABLE_CALLS, TABLE_IM_MESSAGES, calls_schema, im_messages_schema};

use crate::QueryError;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureSpec {
    pub seed: u64,
    pub first_day: NaiveDate,
    pub days: u32,
    /// Users `sip:<name>@example.com`, at least 2.
    pub users: u32,
    pub ims: u64,
    pub calls: u64,
}

impl FixtureSpec {
    /// 100,000 IMs and 10,000 calls among 20 users over the week of
    /// Monday 2026-11-02: the archive the report tests run on.
    pub fn standard() -> Self {
        FixtureSpec {
            seed: 0x5197_a017,
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).expect("valid date"),
            days: 7,
            users: 20,
            ims: 100_000,
            calls: 10_000,
        }
    }

    /// URI of user `index` (0-based): `sip:alice@example.com`, ... and, past
    /// the 20 names, `sip:alice2@example.com`, ...
    pub fn user_uri(index: u32) -> String {
        let mut out = String::new();
        write_user_uri(&mut out, index);
        out
    }

    /// Display name of user `index`: `Alice Smith`, `Bob Jones`, ... and,
    /// past the 20 names, `Alice2 Smith`, ...
    pub fn user_display(index: u32) -> String {
        let mut out = String::new();
        write_user_display(&mut out, index);
        out
    }
}

/// Rows written per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureSummary {
    pub ims: u64,
    pub calls: u64,
    pub files: usize,
}

/// Most rows one segment file holds; a day with more is split, as the
/// archive writer rolls segments.
const SEGMENT_ROWS: usize = 250_000;

/// How a generated call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    pub disposition: &'static str,
    pub final_code: Option<u16>,
    pub reason: Option<&'static str>,
    /// The callee's phone rang (a 180 was seen).
    rang: bool,
    ended_by: &'static str,
}

const fn outcome(
    disposition: &'static str,
    final_code: Option<u16>,
    reason: Option<&'static str>,
    rang: bool,
    ended_by: &'static str,
) -> CallOutcome {
    CallOutcome {
        disposition,
        final_code,
        reason,
        rang,
        ended_by,
    }
}

const ANSWERED: CallOutcome = outcome("answered", Some(200), Some("OK"), true, "caller");
const BUSY: CallOutcome = outcome("busy", Some(486), Some("Busy Here"), false, "callee");
const NO_ANSWER: CallOutcome = outcome(
    "no-answer",
    Some(480),
    Some("Temporarily Unavailable"),
    true,
    "callee",
);
const CANCELLED: CallOutcome = outcome(
    "cancelled",
    Some(487),
    Some("Request Terminated"),
    true,
    "caller",
);
const REJECTED: CallOutcome = outcome("rejected", Some(603), Some("Decline"), false, "callee");
const FAILED: CallOutcome = outcome(
    "failed",
    Some(503),
    Some("Service Unavailable"),
    false,
    "server",
);
const TIMEOUT: CallOutcome = outcome("timeout", None, None, false, "server");

/// The outcome of call `index`: a cycle of 40 (see the module docs).
pub fn call_outcome(index: u64) -> CallOutcome {
    match index % 40 {
        0..=25 => ANSWERED,
        26..=29 => BUSY,
        30..=33 => NO_ANSWER,
        34..=35 => CANCELLED,
        36..=37 => REJECTED,
        38 => FAILED,
        _ => TIMEOUT,
    }
}

/// Delivery of IM `index`: `(delivery_status, status)`.
pub fn im_delivery(index: u64) -> (&'static str, Option<u16>) {
    match index % 50 {
        48 => ("failed", Some(480)),
        49 => ("unanswered", None),
        _ => ("delivered", Some(200)),
    }
}

const NAMES: [&str; 20] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yvonne",
];

/// Surnames of the display names: user `u` has `SURNAMES[u % 5]`.
pub const SURNAMES: [&str; 5] = ["Smith", "Jones", "Garcia", "Nguyen", "Okafor"];

/// An IM `j` with `j % IM_WITHOUT_SENDER_NAME.0 == IM_WITHOUT_SENDER_NAME.1`
/// has no sender display name.
pub const IM_WITHOUT_SENDER_NAME: (u64, u64) = (25, 7);

const WORDS: [&str; 32] = [
    "budget",
    "meeting",
    "lunch",
    "report",
    "review",
    "deadline",
    "customer",
    "contract",
    "invoice",
    "release",
    "launch",
    "plan",
    "draft",
    "call",
    "later",
    "today",
    "tomorrow",
    "please",
    "thanks",
    "update",
    "numbers",
    "slides",
    "agenda",
    "quarterly",
    "approved",
    "pending",
    "ticket",
    "server",
    "backup",
    "schedule",
    "office",
    "travel",
];

const MS: i64 = 1_000_000;
const SECOND: i64 = 1_000 * MS;
const HOUR: i64 = 3_600 * SECOND;
/// Traffic falls within 08:00-18:00 UTC each day.
const WORKDAY_START: i64 = 8 * HOUR;
const WORKDAY_LENGTH_MS: u64 = 10 * 3_600 * 1_000;

/// Writes the fixture under `dir` (which may already hold other files;
/// the fixture's own `archive/calls` and `archive/im_messages` are replaced).
pub fn generate_fixture(dir: &Path, spec: &FixtureSpec) -> Result<FixtureSummary, QueryError> {
    if spec.users < 2 || spec.days == 0 {
        return Err(QueryError::InvalidReport(
            "a fixture needs at least 2 users and 1 day".to_string(),
        ));
    }
    let archive = dir.join("archive");
    for table in [TABLE_CALLS, TABLE_IM_MESSAGES] {
        let table_dir = archive.join(table);
        if table_dir.exists() {
            fs::remove_dir_all(&table_dir)?;
        }
    }
    let mut files = 0;
    for day in 0..spec.days {
        let date = spec.first_day + chrono::Days::new(u64::from(day));
        let day_start = date
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .ok_or_else(|| QueryError::InvalidReport(format!("fixture day {date} out of range")))?;
        let date = date.format("%Y-%m-%d").to_string();

        let mut calls: Vec<CallPlan> = indices_of_day(spec.calls, spec.days, day)
            .map(|i| CallPlan::new(spec, i, day_start))
            .collect();
        calls.sort_unstable_by_key(|c| (c.time_ns, c.index));
        for (n, chunk) in calls.chunks(SEGMENT_ROWS).enumerate() {
            let path = segment_path(&archive, TABLE_CALLS, &date, n);
            write_segment(&path, calls_batch(chunk)?)?;
            files += 1;
        }

        let mut ims: Vec<ImPlan> = indices_of_day(spec.ims, spec.days, day)
            .map(|j| ImPlan::new(spec, j, day_start))
            .collect();
        ims.sort_unstable_by_key(|m| (m.time_ns, m.index));
        for (n, chunk) in ims.chunks(SEGMENT_ROWS).enumerate() {
            let path = segment_path(&archive, TABLE_IM_MESSAGES, &date, n);
            write_segment(&path, ims_batch(chunk)?)?;
            files += 1;
        }
    }
    Ok(FixtureSummary {
        ims: spec.ims,
        calls: spec.calls,
        files,
    })
}

fn indices_of_day(count: u64, days: u32, day: u32) -> impl Iterator<Item = u64> {
    (u64::from(day)..count).step_by(days as usize)
}

fn segment_path(archive: &Path, table: &str, date: &str, n: usize) -> std::path::PathBuf {
    archive
        .join(table)
        .join(format!("date={date}"))
        .join(format!("fixture-{n:04}.parquet"))
}

fn write_segment(path: &Path, batch: RecordBatch) -> Result<(), QueryError> {
    fs::create_dir_all(path.parent().expect("segment paths have a parent"))?;
    let file = fs::File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None)
        .map_err(|e| QueryError::Io(std::io::Error::other(e)))?;
    writer
        .write(&batch)
        .and_then(|()| writer.close().map(drop))
        .map_err(|e| QueryError::Io(std::io::Error::other(e)))
}

/// SplitMix64: tiny, fast, and the same everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one record, independent of the order records are made in.
    fn for_record(seed: u64, stream: u64, index: u64) -> Self {
        let mut g = SplitMix64(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        g.0 = g.0.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        g.next();
        g
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// A user, low numbers more likely (the smaller of two uniform picks).
    fn user(&mut self, users: u32) -> u32 {
        let a = self.below(u64::from(users));
        let b = self.below(u64::from(users));
        a.min(b) as u32
    }

    /// Any user but `not`.
    fn other_user(&mut self, users: u32, not: u32) -> u32 {
        let step = 1 + self.below(u64::from(users - 1)) as u32;
        (not + step) % users
    }
}

const CALL_STREAM: u64 = 1;
const IM_STREAM: u64 = 2;

/// Everything about one call, as plain numbers; strings are made only when
/// the columns are built.
#[derive(Clone, Copy)]
struct CallPlan {
    index: u64,
    time_ns: i64,
    caller: u32,
    callee: u32,
    outcome: CallOutcome,
    ring_ns: Option<i64>,
    answer_ns: Option<i64>,
    end_ns: i64,
    opus: bool,
    media_port: u16,
}

impl CallPlan {
    fn new(spec: &FixtureSpec, index: u64, day_start: i64) -> Self {
        let mut g = SplitMix64::for_record(spec.seed, CALL_STREAM, index);
        let caller = g.user(spec.users);
        let callee = g.other_user(spec.users, caller);
        let time_ns = day_start + WORKDAY_START + g.below(WORKDAY_LENGTH_MS) as i64 * MS;
        let outcome = call_outcome(index);
        let ring_ns = outcome
            .rang
            .then(|| time_ns + g.between(200, 4_000) as i64 * MS);
        let (answer_ns, end_ns) = match (outcome.disposition, ring_ns) {
            ("answered", Some(ring)) => {
                let answer = ring + g.between(1_000, 25_000) as i64 * MS;
                (
                    Some(answer),
                    answer + g.between(5_000, 1_800_000) as i64 * MS,
                )
            }
            ("no-answer", Some(ring)) => (None, ring + 30 * SECOND),
            ("cancelled", Some(ring)) => (None, ring + g.between(2_000, 20_000) as i64 * MS),
            ("timeout", _) => (None, time_ns + 32 * SECOND),
            _ => (None, time_ns + g.between(50, 800) as i64 * MS),
        };
        CallPlan {
            index,
            time_ns,
            caller,
            callee,
            outcome,
            ring_ns,
            answer_ns,
            end_ns,
            opus: g.below(2) == 0,
            media_port: 20_000 + 2 * g.below(5_000) as u16,
        }
    }

    fn setup_ms(&self) -> Option<i64> {
        self.ring_ns
            .or(self.answer_ns)
            .map(|t| (t - self.time_ns) / MS)
    }

    fn duration_ms(&self) -> Option<i64> {
        self.answer_ns.map(|a| (self.end_ns - a) / MS)
    }
}

#[derive(Clone, Copy)]
struct ImPlan {
    index: u64,
    time_ns: i64,
    sender: u32,
    recipient: u32,
    /// Second recipient of a multiparty IM.
    also_to: Option<u32>,
    words: u64,
    word_seed: u64,
}

impl ImPlan {
    fn new(spec: &FixtureSpec, index: u64, day_start: i64) -> Self {
        let mut g = SplitMix64::for_record(spec.seed, IM_STREAM, index);
        let sender = g.user(spec.users);
        let recipient = g.other_user(spec.users, sender);
        let also_to = (index % 10 == 3 && spec.users > 2).then(|| {
            let mut other = g.other_user(spec.users, sender);
            if other == recipient {
                other = (recipient + 1) % spec.users;
                if other == sender {
                    other = (other + 1) % spec.users;
                }
            }
            other
        });
        ImPlan {
            index,
            time_ns: day_start + WORKDAY_START + g.below(WORKDAY_LENGTH_MS) as i64 * MS,
            sender,
            recipient,
            also_to,
            words: g.between(3, 12),
            word_seed: g.next(),
        }
    }
}

fn write_user_uri(out: &mut impl std::fmt::Write, index: u32) {
    let name = NAMES[index as usize % NAMES.len()];
    let round = index as usize / NAMES.len();
    let _ = if round == 0 {
        write!(out, "sip:{name}@example.com")
    } else {
        write!(out, "sip:{name}{}@example.com", round + 1)
    };
}

fn write_user_display(out: &mut impl std::fmt::Write, index: u32) {
    let name = NAMES[index as usize % NAMES.len()];
    let round = index as usize / NAMES.len();
    let surname = SURNAMES[index as usize % SURNAMES.len()];
    let mut letters = name.chars();
    let first = letters.next().map(|c| c.to_ascii_uppercase());
    let _ = match (first, round) {
        (Some(first), 0) => write!(out, "{first}{} {surname}", letters.as_str()),
        (Some(first), _) => write!(out, "{first}{}{} {surname}", letters.as_str(), round + 1),
        (None, _) => write!(out, "{surname}"),
    };
}

fn utc_timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from(values).with_timezone("UTC"))
}

fn opt_utc_timestamps(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = TimestampNanosecondBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish().with_timezone("UTC"))
}

fn calls_batch(calls: &[CallPlan]) -> Result<RecordBatch, QueryError> {
    let n = calls.len();
    let mut call_id = StringBuilder::with_capacity(n, n * 16);
    let mut source = StringBuilder::with_capacity(n, n * 3);
    let mut caller = StringBuilder::with_capacity(n, n * 24);
    let mut callee = StringBuilder::with_capacity(n, n * 24);
    let mut setup_ms = Int64Builder::with_capacity(n);
    let mut duration_ms = Int64Builder::with_capacity(n);
    let mut disposition = StringBuilder::with_capacity(n, n * 9);
    let mut final_code = UInt16Builder::with_capacity(n);
    let mut reason = StringBuilder::with_capacity(n, n * 8);
    let mut ended_by = StringBuilder::with_capacity(n, n * 6);
    let mut codecs = ListBuilder::new(StringBuilder::new());
    let mut caller_media = StringBuilder::with_capacity(n, n * 16);
    let mut callee_media = StringBuilder::with_capacity(n, n * 16);
    let mut legs = UInt32Builder::with_capacity(n);
    let mut reinvites = UInt32Builder::with_capacity(n);
    let mut transferred_from = StringBuilder::with_capacity(n, 0);
    let mut caller_display = StringBuilder::with_capacity(n, n * 12);
    let mut callee_display = StringBuilder::with_capacity(n, n * 12);
    for c in calls {
        let _ = write!(call_id, "fx-call-{:07}", c.index);
        call_id.append_value("");
        source.append_value("tap");
        write_user_uri(&mut caller, c.caller);
        caller.append_value("");
        write_user_uri(&mut callee, c.callee);
        callee.append_value("");
        setup_ms.append_option(c.setup_ms());
        duration_ms.append_option(c.duration_ms());
        disposition.append_value(c.outcome.disposition);
        final_code.append_option(c.outcome.final_code);
        reason.append_option(c.outcome.reason);
        ended_by.append_value(c.outcome.ended_by);
        if c.answer_ns.is_some() {
            codecs
                .values()
                .append_value(if c.opus { "opus/48000/2" } else { "PCMA/8000" });
        }
        codecs.append(true);
        let _ = write!(
            caller_media,
            "10.1.{}.{}:{}",
            c.caller / 250,
            c.caller % 250 + 1,
            c.media_port
        );
        caller_media.append_value("");
        if c.answer_ns.is_some() {
            let _ = write!(
                callee_media,
                "10.1.{}.{}:{}",
                c.callee / 250,
                c.callee % 250 + 1,
                c.media_port + 2
            );
            callee_media.append_value("");
        } else {
            callee_media.append_null();
        }
        legs.append_value(1);
        reinvites.append_value(0);
        transferred_from.append_null();
        write_user_display(&mut caller_display, c.caller);
        caller_display.append_value("");
        write_user_display(&mut callee_display, c.callee);
        callee_display.append_value("");
    }
    let columns: Vec<ArrayRef> = vec![
        utc_timestamps(calls.iter().map(|c| c.time_ns).collect()),
        Arc::new(call_id.finish()),
        Arc::new(source.finish()),
        Arc::new(caller.finish()),
        Arc::new(callee.finish()),
        opt_utc_timestamps(calls.iter().map(|c| c.ring_ns)),
        opt_utc_timestamps(calls.iter().map(|c| c.answer_ns)),
        opt_utc_timestamps(calls.iter().map(|c| Some(c.end_ns))),
        Arc::new(setup_ms.finish()),
        Arc::new(duration_ms.finish()),
        Arc::new(disposition.finish()),
        Arc::new(final_code.finish()),
        Arc::new(reason.finish()),
        Arc::new(ended_by.finish()),
        Arc::new(codecs.finish()),
        Arc::new(caller_media.finish()),
        Arc::new(callee_media.finish()),
        Arc::new(legs.finish()),
        Arc::new(reinvites.finish()),
        Arc::new(transferred_from.finish()),
        Arc::new(caller_display.finish()),
        Arc::new(callee_display.finish()),
    ];
    Ok(RecordBatch::try_new(calls_schema(), columns)?)
}

fn ims_batch(ims: &[ImPlan]) -> Result<RecordBatch, QueryError> {
    let n = ims.len();
    let mut call_id = StringBuilder::with_capacity(n, n * 14);
    let mut cseq = UInt32Builder::with_capacity(n);
    let mut sender = StringBuilder::with_capacity(n, n * 24);
    let mut recipients = ListBuilder::new(StringBuilder::with_capacity(n, n * 26));
    let mut content_type = StringBuilder::with_capacity(n, n * 10);
    let mut body = StringBuilder::with_capacity(n, n * 50);
    let mut delivery_status = StringBuilder::with_capacity(n, n * 9);
    let mut status = UInt16Builder::with_capacity(n);
    let mut from_display = StringBuilder::with_capacity(n, n * 12);
    let mut to_display = StringBuilder::with_capacity(n, n * 12);
    for m in ims {
        let _ = write!(call_id, "fx-im-{:07}", m.index);
        call_id.append_value("");
        cseq.append_value(1);
        write_user_uri(&mut sender, m.sender);
        sender.append_value("");
        for r in std::iter::once(m.recipient).chain(m.also_to) {
            write_user_uri(recipients.values(), r);
            recipients.values().append_value("");
        }
        recipients.append(true);
        content_type.append_value("text/plain");
        write_body(&mut body, m);
        body.append_value("");
        let (delivery, code) = im_delivery(m.index);
        delivery_status.append_value(delivery);
        status.append_option(code);
        let (modulus, without) = IM_WITHOUT_SENDER_NAME;
        if m.index % modulus == without {
            from_display.append_null();
        } else {
            write_user_display(&mut from_display, m.sender);
            from_display.append_value("");
        }
        write_user_display(&mut to_display, m.recipient);
        to_display.append_value("");
    }
    let columns: Vec<ArrayRef> = vec![
        utc_timestamps(ims.iter().map(|m| m.time_ns).collect()),
        Arc::new(call_id.finish()),
        Arc::new(cseq.finish()),
        Arc::new(sender.finish()),
        Arc::new(recipients.finish()),
        Arc::new(content_type.finish()),
        Arc::new(body.finish()),
        Arc::new(delivery_status.finish()),
        Arc::new(status.finish()),
        Arc::new(from_display.finish()),
        Arc::new(to_display.finish()),
    ];
    Ok(RecordBatch::try_new(im_messages_schema(), columns)?)
}

fn write_body(out: &mut StringBuilder, m: &ImPlan) {
    let mut g = SplitMix64(m.word_seed);
    for w in 0..m.words {
        if w > 0 {
            let _ = out.write_char(' ');
        }
        let _ = out.write_str(WORDS[g.below(WORDS.len() as u64) as usize]);
    }
    if m.index.is_multiple_of(1000) {
        let _ = out.write_str(" escalation");
    }
}

// ---------------------------------------------------------------------------
// A small hand-written day, for conversation and timeline tests
// ---------------------------------------------------------------------------

/// Writes a small archive of one office day (Monday 2026-11-02, UTC) and
/// one IM the next morning, every row written by hand so conversation and
/// timeline output can be checked line by line. All four tables that carry
/// people's communications are filled: `im_messages`, `sip_messages` (the
/// final responses of most IMs), `presence` and `calls`.
///
/// - 09:00–09:04 alice and bob chat (page mode, one Call-ID per IM:
///   `conv-1`..`conv-4`); `conv-3` has no response archived, `conv-4`
///   failed with 480. dave writes to carol at 09:01 (`dave-1`).
/// - 09:10–09:25 alice calls bob (`call-1`, answered) and her presence
///   goes on-the-phone and back; her first state is published and also
///   notified to bob (the same state twice).
/// - 09:30 alice writes to bob and carol together (`group-1`).
/// - 10:15–10:16 carol and alice chat in one session (`sess-9`, CSeq 1-3;
///   the last IM unanswered).
/// - 11:00 dave calls alice (no answer), 12:00 alice goes away for lunch,
///   14:00 alice writes to bob again (`conv-6`), 15:00 alice calls carol
///   (busy), 23:59:59.9 bob writes to alice (`conv-8`, answered after
///   midnight), and on Tuesday at 09:00 alice writes to bob (`conv-7`) and
///   calls him at 10:00 (`call-4`).
pub fn generate_conversation_fixture(dir: &Path) -> Result<(), QueryError> {
    use sipvault_schemas::{
        CallRow, ImMessageRow, PresenceRow, SipMessageRow, TABLE_PRESENCE, TABLE_SIP_MESSAGES,
    };

    const ALICE: &str = "sip:alice@example.com";
    const BOB: &str = "sip:bob@example.com";
    const CAROL: &str = "sip:carol@example.com";
    const DAVE: &str = "sip:dave@example.com";
    let at = |day: u32, time: &str| -> i64 {
        let t = chrono::NaiveTime::parse_from_str(time, "%H:%M:%S%.f")
            .expect("fixture times are valid");
        NaiveDate::from_ymd_opt(2026, 11, 2 + day)
            .expect("valid date")
            .and_time(t)
            .and_utc()
            .timestamp_nanos_opt()
            .expect("in range")
    };
    // Alice and Bob's clients send display names, Carol's and Dave's none.
    let name = |uri: &str| match uri {
        ALICE => Some("Alice Smith".to_string()),
        BOB => Some("Bob Jones".to_string()),
        _ => None,
    };
    let im = |day, time, call_id: &str, cseq, sender: &str, to: &[&str], body: &str, code| {
        let delivery_status = match code {
            Some(200..=299) => "delivered",
            Some(_) => "failed",
            None => "unanswered",
        };
        ImMessageRow {
            time_ns: at(day, time),
            call_id: call_id.to_string(),
            cseq,
            sender: sender.to_string(),
            recipients: to.iter().map(|r| r.to_string()).collect(),
            content_type: "text/plain".to_string(),
            body: body.to_string(),
            delivery_status: delivery_status.to_string(),
            status: code,
            from_display: name(sender),
            to_display: name(to[0]),
        }
    };
    #[rustfmt::skip]
    let ims = vec![
        im(0, "09:00:00", "conv-1", 1, ALICE, &[BOB], "Morning Bob, did you see the budget draft?", Some(200)),
        im(0, "09:01:00", "dave-1", 1, DAVE, &[CAROL], "Lunch at noon?", Some(200)),
        im(0, "09:02:10", "conv-2", 1, BOB, &[ALICE], "Yes, the numbers look fine", Some(200)),
        im(0, "09:03:00", "conv-3", 1, ALICE, &[BOB], "Great, I will send it to Carol", Some(200)),
        im(0, "09:04:00", "conv-4", 1, ALICE, &[BOB], "Call you in 5?", Some(480)),
        im(0, "09:30:00", "group-1", 1, ALICE, &[BOB, CAROL], "Budget draft attached for both of you", Some(200)),
        im(0, "10:15:00", "sess-9", 1, CAROL, &[ALICE], "Quick question about the draft", Some(200)),
        im(0, "10:15:40", "sess-9", 2, ALICE, &[CAROL], "Go ahead", Some(200)),
        im(0, "10:16:05", "sess-9", 3, CAROL, &[ALICE], "Is it final?", None),
        im(0, "14:00:00", "conv-6", 1, ALICE, &[BOB], "Afternoon: the draft is approved", Some(200)),
        im(0, "23:59:59.900", "conv-8", 1, BOB, &[ALICE], "Late: see you tomorrow", Some(200)),
        im(1, "09:00:00", "conv-7", 1, ALICE, &[BOB], "Good morning", Some(200)),
    ];

    // What the server saw of each IM: the MESSAGE in from the sender and
    // out to the recipient, the final response in from the recipient and
    // out to the sender. conv-3 has none; unanswered sess-9#3 only its
    // MESSAGE.
    let sip = |time_ns: i64, direction: &str, m: &ImMessageRow, status: Option<u16>| {
        let (method, reason) = match status {
            None => (Some("MESSAGE".to_string()), None),
            Some(200) => (None, Some("OK".to_string())),
            Some(_) => (None, Some("Temporarily Unavailable".to_string())),
        };
        let start = match status {
            None => format!("MESSAGE {} SIP/2.0", m.recipients[0]),
            Some(code) => format!("SIP/2.0 {code} {}", reason.as_deref().unwrap_or("")),
        };
        SipMessageRow {
            time_ns,
            source: "tap".to_string(),
            direction: direction.to_string(),
            transport: "udp".to_string(),
            src: "192.0.2.10:5060".to_string(),
            dst: "192.0.2.20:5060".to_string(),
            request_uri: method.as_ref().map(|_| m.recipients[0].clone()),
            method,
            status,
            reason,
            call_id: Some(m.call_id.clone()),
            cseq: Some(m.cseq),
            cseq_method: Some("MESSAGE".to_string()),
            from_uri: Some(m.sender.clone()),
            from_tag: Some("f1".to_string()),
            to_uri: Some(m.recipients[0].clone()),
            to_tag: status.map(|_| "t1".to_string()),
            parse_error: None,
            raw: format!(
                "{start}\r\nCall-ID: {}\r\nCSeq: {} MESSAGE\r\n\r\n",
                m.call_id, m.cseq
            )
            .into_bytes(),
        }
    };
    let answered_after_ms = |call_id: &str, cseq: u32| -> Option<i64> {
        match (call_id, cseq) {
            ("conv-1", _) => Some(1_250),
            ("conv-2", _) => Some(400),
            ("conv-4", _) => Some(300),
            ("group-1", _) => Some(900),
            ("sess-9", 1) => Some(200),
            ("sess-9", 2) => Some(150),
            ("conv-6", _) => Some(500),
            ("conv-8", _) => Some(400),
            ("conv-7", _) => Some(350),
            _ => None,
        }
    };
    let mut sip_rows = Vec::new();
    for m in ims.iter().filter(|m| m.call_id != "conv-3") {
        sip_rows.push(sip(m.time_ns, "in", m, None));
        sip_rows.push(sip(m.time_ns + 2 * MS, "out", m, None));
        if let Some(after) = answered_after_ms(&m.call_id, m.cseq) {
            let t = m.time_ns + after * MS;
            sip_rows.push(sip(t, "in", m, m.status));
            sip_rows.push(sip(t + MS, "out", m, m.status));
        }
    }

    let presence = |time: &str,
                    entity: &str,
                    basic: &str,
                    activities: &[&str],
                    note: Option<&str>,
                    via: &str,
                    call_id: &str| {
        PresenceRow {
            time_ns: at(0, time),
            source: "tap".to_string(),
            entity: entity.to_string(),
            basic: Some(basic.to_string()),
            activities: activities.iter().map(|a| a.to_string()).collect(),
            note: note.map(str::to_string),
            via: via.to_string(),
            call_id: call_id.to_string(),
            expires: Some(3600),
            etag: (via == "publish").then(|| "e1".to_string()),
            subscription_state: (via == "notify").then(|| "active".to_string()),
        }
    };
    #[rustfmt::skip]
    let presence_rows = [
        presence("08:58:00", ALICE, "open", &[], Some("In the office"), "publish", "pub-a1"),
        presence("08:58:00.050", ALICE, "open", &[], Some("In the office"), "notify", "sub-b1"),
        presence("09:03:30", BOB, "closed", &[], None, "publish", "pub-b1"),
        presence("09:10:01", ALICE, "open", &["on-the-phone"], None, "publish", "pub-a1"),
        presence("09:25:00", ALICE, "open", &[], Some("In the office"), "publish", "pub-a1"),
        presence("12:00:00", ALICE, "closed", &["away"], Some("Lunch"), "publish", "pub-a1"),
    ];

    let call = |day,
                time: &str,
                call_id: &str,
                caller: &str,
                callee: &str,
                outcome: CallOutcome,
                ring_ms: Option<i64>,
                talk_ms: Option<i64>| {
        let start = at(day, time);
        let ring_ns = ring_ms.map(|ms| start + ms * MS);
        let answer_ns = talk_ms.map(|_| ring_ns.unwrap_or(start) + 3_500 * MS);
        let end_ns = match (answer_ns, talk_ms, ring_ns) {
            (Some(a), Some(talk), _) => a + talk * MS,
            (_, _, Some(r)) => r + 30 * SECOND,
            _ => start + 120 * MS,
        };
        CallRow {
            time_ns: start,
            call_id: call_id.to_string(),
            source: "tap".to_string(),
            caller: caller.to_string(),
            callee: callee.to_string(),
            ring_ns,
            answer_ns,
            end_ns: Some(end_ns),
            setup_ms: ring_ms.or(answer_ns.map(|a| (a - start) / MS)),
            duration_ms: talk_ms,
            disposition: outcome.disposition.to_string(),
            final_code: outcome.final_code,
            reason: outcome.reason.map(str::to_string),
            ended_by: Some(outcome.ended_by.to_string()),
            codecs: talk_ms
                .map(|_| vec!["opus/48000/2".to_string()])
                .unwrap_or_default(),
            caller_media: Some("192.0.2.10:20000".to_string()),
            callee_media: talk_ms.map(|_| "192.0.2.20:20002".to_string()),
            legs: 1,
            reinvites: 0,
            transferred_from: None,
            caller_display: name(caller),
            callee_display: name(callee),
        }
    };
    #[rustfmt::skip]
    let call_rows = [
        call(0, "09:10:00", "call-1", ALICE, BOB, ANSWERED, Some(1_500), Some(891_500)),
        call(0, "11:00:00", "call-2", DAVE, ALICE, NO_ANSWER, Some(800), None),
        call(0, "15:00:00", "call-3", ALICE, CAROL, BUSY, None, None),
        call(1, "10:00:00", "call-4", ALICE, BOB, ANSWERED, Some(2_000), Some(60_000)),
    ];

    let archive = dir.join("archive");
    for table in [
        TABLE_CALLS,
        TABLE_IM_MESSAGES,
        TABLE_SIP_MESSAGES,
        TABLE_PRESENCE,
    ] {
        let table_dir = archive.join(table);
        if table_dir.exists() {
            fs::remove_dir_all(&table_dir)?;
        }
    }
    for day in 0..2 {
        let date = utc_day(at(day, "00:00:00"));
        let on_day = |t: i64| utc_day(t) == date;
        let day_ims: Vec<_> = ims.iter().filter(|r| on_day(r.time_ns)).cloned().collect();
        let day_sip: Vec<_> = sip_rows
            .iter()
            .filter(|r| on_day(r.time_ns))
            .cloned()
            .collect();
        let day_presence: Vec<_> = presence_rows
            .iter()
            .filter(|r| on_day(r.time_ns))
            .cloned()
            .collect();
        let day_calls: Vec<_> = call_rows
            .iter()
            .filter(|r| on_day(r.time_ns))
            .cloned()
            .collect();
        let batches = [
            (
                TABLE_IM_MESSAGES,
                sipvault_schemas::im_messages_batch(&day_ims)?,
            ),
            (
                TABLE_SIP_MESSAGES,
                sipvault_schemas::sip_messages_batch(&day_sip)?,
            ),
            (
                TABLE_PRESENCE,
                sipvault_schemas::presence_batch(&day_presence)?,
            ),
            (TABLE_CALLS, sipvault_schemas::calls_batch(&day_calls)?),
        ];
        for (table, batch) in batches {
            if batch.num_rows() > 0 {
                write_segment(&segment_path(&archive, table, &date, 0), batch)?;
            }
        }
    }
    Ok(())
}

fn utc_day(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .format("%Y-%m-%d")
        .to_string()
}

// ---------------------------------------------------------------------------
// The manifest of a generated archive
// ---------------------------------------------------------------------------

/// Enters every segment under `<dir>/archive/` that the catalog does not list yet
/// into its manifest (path, rows, SHA-256, time range), in path order, as the
/// archive writer does when it seals: the generated archive then looks like one
/// a server wrote, for `verify`, `reindex` and the search index repair. Returns
/// how many segments were added.
pub async fn register_fixture_segments(
    dir: &Path,
    catalog: &sipvault_catalog::Catalog,
) -> Result<usize, QueryError> {
    use datafusion::arrow::array::Array as _;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use sha2::Digest as _;

    let known: std::collections::HashSet<String> = catalog
        .segments()
        .await
        .map_err(|e| QueryError::Io(std::io::Error::other(e)))?
        .into_iter()
        .map(|s| s.path)
        .collect();
    let pattern = dir.join("archive/*/date=*/*.parquet");
    let pattern = pattern
        .to_str()
        .ok_or_else(|| QueryError::Io(std::io::Error::other("archive path is not UTF-8")))?;
    let mut paths: Vec<std::path::PathBuf> = glob::glob(pattern)
        .map_err(|e| QueryError::Io(std::io::Error::other(e)))?
        .filter_map(Result::ok)
        .collect();
    paths.sort();
    let mut added = 0;
    for path in paths {
        let rel = path
            .strip_prefix(dir)
            .map_err(|e| QueryError::Io(std::io::Error::other(e)))?
            .to_string_lossy()
            .replace('\\', "/");
        if known.contains(&rel) {
            continue;
        }
        let table = rel.split('/').nth(1).unwrap_or_default().to_string();
        let bytes = fs::read(&path)?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path)?)
            .and_then(|b| b.build())
            .map_err(|e| QueryError::Io(std::io::Error::other(e)))?;
        let (mut rows, mut min, mut max) = (0i64, i64::MAX, i64::MIN);
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows() as i64;
            if let Some(times) = batch
                .column_by_name("time")
                .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
            {
                for t in times.iter().flatten() {
                    min = min.min(t);
                    max = max.max(t);
                }
            }
        }
        if rows == 0 {
            (min, max) = (0, 0);
        }
        catalog
            .add_segment(&sipvault_catalog::NewSegment {
                table_name: table,
                path: rel,
                rows,
                sha256,
                min_time_ns: min,
                max_time_ns: max,
                wal_position: None,
            })
            .await
            .map_err(|e| QueryError::Io(std::io::Error::other(e)))?;
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_cycle_has_the_documented_shares() {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..40 {
            *counts.entry(call_outcome(i).disposition).or_insert(0) += 1;
        }
        let expected = [
            ("answered", 26),
            ("busy", 4),
            ("cancelled", 2),
            ("failed", 1),
            ("no-answer", 4),
            ("rejected", 2),
            ("timeout", 1),
        ];
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn records_do_not_depend_on_generation_order() {
        let spec = FixtureSpec::standard();
        let a = CallPlan::new(&spec, 1234, 0);
        let _ = CallPlan::new(&spec, 99, 0);
        let b = CallPlan::new(&spec, 1234, 0);
        assert_eq!(
            (a.time_ns, a.caller, a.callee),
            (b.time_ns, b.caller, b.callee)
        );
        assert_ne!(a.caller, a.callee);
    }

    /// The same spec writes the same bytes: tests and benchmarks on two
    /// machines read the same archive.
    #[test]
    fn same_spec_same_files() {
        let spec = FixtureSpec {
            ims: 3_000,
            calls: 400,
            days: 3,
            ..FixtureSpec::standard()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let summary = generate_fixture(a.path(), &spec).unwrap();
        generate_fixture(b.path(), &spec).unwrap();
        assert_eq!(summary.files, 6, "one segment per table and day");
        for table in [TABLE_CALLS, TABLE_IM_MESSAGES] {
            let day = format!("archive/{table}/date=2026-11-03/fixture-0000.parquet");
            let (x, y) = (
                fs::read(a.path().join(&day)).unwrap(),
                fs::read(b.path().join(&day)).unwrap(),
            );
            assert!(!x.is_empty() && x == y, "{day} differs between runs");
        }
        let other_seed = tempfile::tempdir().unwrap();
        generate_fixture(other_seed.path(), &FixtureSpec { seed: 1, ..spec }).unwrap();
        let path = "archive/calls/date=2026-11-03/fixture-0000.parquet";
        assert_ne!(
            fs::read(a.path().join(path)).unwrap(),
            fs::read(other_seed.path().join(path)).unwrap(),
            "the seed drives the content"
        );
    }

    #[test]
    fn user_uris_stay_distinct_past_the_name_list() {
        assert_eq!(FixtureSpec::user_uri(0), "sip:alice@example.com");
        assert_eq!(FixtureSpec::user_uri(21), "sip:bob2@example.com");
    }

    #[test]
    fn display_names_share_five_surnames() {
        assert_eq!(FixtureSpec::user_display(0), "Alice Smith");
        assert_eq!(FixtureSpec::user_display(1), "Bob Jones");
        assert_eq!(FixtureSpec::user_display(5), "Frank Smith");
        assert_eq!(FixtureSpec::user_display(19), "Yvonne Okafor");
        assert_eq!(FixtureSpec::user_display(21), "Bob2 Jones");
    }
}
