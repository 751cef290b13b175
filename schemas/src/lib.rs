//! Record types that flow through sipvault and their Arrow schemas.
//!
//! Every table in the archive has one row type here, one Arrow schema and one
//! function that turns a slice of rows into a `RecordBatch`. The schema version
//! is bumped whenever any schema changes; a snapshot test guards that.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, ListBuilder, StringBuilder, TimestampNanosecondBuilder,
    UInt8Builder, UInt16Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

pub mod raw_bytes;

/// Version of the archive table schemas. Bump on any change to a schema below.
pub const SCHEMA_VERSION: u32 = 4;

/// Archive table names, as they appear under `<data>/archive/<table>/`.
pub const TABLE_SIP_MESSAGES: &str = "sip_messages";
pub const TABLE_IM_MESSAGES: &str = "im_messages";
pub const TABLE_CALLS: &str = "calls";
pub const TABLE_HEP_RAW: &str = "hep_raw";
pub const TABLE_PRESENCE: &str = "presence";
pub const TABLE_ROOM_EVENTS: &str = "room_events";

/// Which way a message crossed the capture point, seen from the capturing server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// Only from captures (pcap import, HEP): the bundled server has no SCTP.
    Sctp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Sctp => "sctp",
        }
    }
}

/// One SIP message as seen on the wire by a capture source (the server's tap,
/// a HEP agent, a pcap file). The raw bytes are always kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedMessage {
    /// Capture time, nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    /// `tap`, `hep:<agent>` or `pcap:<file>`.
    pub source: String,
    pub direction: Direction,
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    #[serde(with = "raw_bytes")]
    pub raw: Vec<u8>,
}

/// Row of `sip_messages`: every message, key fields parsed, raw bytes kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipMessageRow {
    pub time_ns: i64,
    pub source: String,
    pub direction: String,
    pub transport: String,
    pub src: String,
    pub dst: String,
    /// Request method, or `None` for a response.
    pub method: Option<String>,
    /// Response status code, or `None` for a request.
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub request_uri: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<u32>,
    pub cseq_method: Option<String>,
    pub from_uri: Option<String>,
    pub from_tag: Option<String>,
    pub to_uri: Option<String>,
    pub to_tag: Option<String>,
    /// Set when the message could not be parsed; the row still carries `raw`.
    pub parse_error: Option<String>,
    #[serde(with = "raw_bytes")]
    pub raw: Vec<u8>,
}

/// Row of `im_messages`: one instant message (page-mode MESSAGE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImMessageRow {
    pub time_ns: i64,
    pub call_id: String,
    pub cseq: u32,
    /// Sender address of record, e.g. `sip:alice@example.com`.
    pub sender: String,
    pub recipients: Vec<String>,
    pub content_type: String,
    pub body: String,
    /// `delivered`, `failed` or `unanswered`.
    pub delivery_status: String,
    /// Final SIP status code returned to the sender, if any.
    pub status: Option<u16>,
    /// Display name of the From address (`Alice Smith` of
    /// `"Alice Smith" <sip:alice@example.com>`), unquoted; `None` without one.
    pub from_display: Option<String>,
    /// Display name of the To address (the recipient), unquoted.
    pub to_display: Option<String>,
}

/// Row of `calls`: one call (not one leg), from INVITE to its end.
///
/// Forked legs and re-INVITEs are folded into the row of their Call-ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRow {
    /// Time of the first INVITE (the partition time).
    pub time_ns: i64,
    pub call_id: String,
    /// Capture source that saw the INVITE (`tap`, `hep:<agent>`, `pcap:<file>`).
    pub source: String,
    /// From URI of the INVITE.
    pub caller: String,
    /// To URI of the INVITE.
    pub callee: String,
    /// First provisional response 180/183 (ringing or early media).
    pub ring_ns: Option<i64>,
    /// First 2xx to the INVITE.
    pub answer_ns: Option<i64>,
    /// BYE, CANCEL or the final failure response; `None` while open.
    pub end_ns: Option<i64>,
    /// INVITE to first ring (or answer, when there is no ring).
    pub setup_ms: Option<i64>,
    /// Answer to end.
    pub duration_ms: Option<i64>,
    /// `answered`, `busy`, `cancelled`, `rejected`, `failed`, `no-answer`, `timeout`.
    pub disposition: String,
    /// Final response code to the initial INVITE, if one was seen.
    pub final_code: Option<u16>,
    pub reason: Option<String>,
    /// `caller`, `callee` or `server` (a final failure generated on the path).
    pub ended_by: Option<String>,
    /// Codec names agreed in SDP (the answer's, or the offer's without answer).
    pub codecs: Vec<String>,
    /// `ip:port` of the caller's media (SDP offer).
    pub caller_media: Option<String>,
    /// `ip:port` of the callee's media (SDP answer).
    pub callee_media: Option<String>,
    /// Distinct early/confirmed dialogs (To tags) seen: more than 1 when forked.
    pub legs: u32,
    /// re-INVITEs and UPDATEs within the call.
    pub reinvites: u32,
    /// Call-ID of the call whose REFER produced this call (a transfer).
    pub transferred_from: Option<String>,
    /// Display name of the INVITE's From address, unquoted.
    pub caller_display: Option<String>,
    /// Display name of the INVITE's To address, unquoted.
    pub callee_display: Option<String>,
}

/// Row of `hep_raw`: a HEP payload that is not SIP (RTCP reports, logs, ...),
/// kept as received for quality-of-experience analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HepRawRow {
    pub time_ns: i64,
    /// `hep:<agent>`.
    pub source: String,
    /// HEP protocol type: 5 RTCP, 100 log, ...
    pub proto_type: u8,
    pub src: String,
    pub dst: String,
    /// HEP correlation id (chunk 0x0011), usually the SIP Call-ID.
    pub correlation_id: Option<String>,
    #[serde(with = "raw_bytes")]
    pub payload: Vec<u8>,
}

/// Row of `presence`: one presence state as published (PUBLISH) or
/// notified (NOTIFY).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRow {
    /// Capture time of the PUBLISH or NOTIFY that carried the state.
    pub time_ns: i64,
    /// Capture source of that message (`tap`, `hep:<agent>`, `pcap:<file>`).
    pub source: String,
    /// Presentity URI: the document's `entity`, else the To URI of a
    /// PUBLISH (the published resource) or the From URI of a NOTIFY (the
    /// notifier speaks for the presentity).
    pub entity: String,
    /// `open` or `closed`, from the first tuple with a `<basic>` status;
    /// `None` when the document has none or the publication was removed.
    pub basic: Option<String>,
    /// RPID activities (`away`, `on-the-phone`, `busy`, `meeting`...), by
    /// element local name.
    pub activities: Vec<String>,
    /// The first note: a person's, else a tuple's, else the document's.
    pub note: Option<String>,
    /// `publish` or `notify`.
    pub via: String,
    pub call_id: String,
    /// Seconds the state is valid: the Expires granted for a PUBLISH (0 for
    /// a removal), the `expires` of a NOTIFY's Subscription-State.
    pub expires: Option<u32>,
    /// Entity-tag of the publication (SIP-ETag of the 2xx; for a removal,
    /// the SIP-If-Match it removed).
    pub etag: Option<String>,
    /// NOTIFY only: `active`, `pending` or `terminated`.
    pub subscription_state: Option<String>,
}

/// Row of `room_events`: a change in the membership or life of a chat
/// room (from the catalog, where `sipvault room` records it) or of an ad
/// hoc conference (from the server's conference focus).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEventRow {
    pub time_ns: i64,
    /// `room` or `conference`.
    pub kind: String,
    /// URI of the room (`sip:room-NAME@DOMAIN`) or of the conference focus
    /// (`sip:conf-ID@DOMAIN`), as IMs to it name it.
    pub room: String,
    /// URI of the member concerned; `None` for an event of the room itself.
    pub member: Option<String>,
    /// `created`, `member_added`, `role_changed`, `member_removed` (rooms);
    /// `created`, `invited`, `joined`, `left`, `ended` (conferences).
    pub event: String,
    /// The member's role after the change (rooms: `owner`, `member`, `read-only`).
    pub role: Option<String>,
    /// Who made the change: the operator recorded by `sipvault room`, a
    /// participant's URI, or `server` (a timeout).
    pub by_user: String,
    /// Call-ID of the SIP request that caused a conference event.
    pub call_id: Option<String>,
    /// Id of the event in the catalog's log (room events), so the archive
    /// row can be traced back to it.
    pub catalog_id: Option<i64>,
}

/// Bytes a row takes in memory: the struct and the heap text it owns
/// (allocation rounding aside). The archive writer rolls a table's segment
/// at a byte budget of this, so buffered rows are bounded by memory, not
/// only by their count.
pub trait MemorySize {
    fn memory_size(&self) -> usize;
}

fn opt_text(s: &Option<String>) -> usize {
    s.as_deref().map_or(0, str::len)
}

fn texts(v: &[String]) -> usize {
    v.iter()
        .map(|s| std::mem::size_of::<String>() + s.len())
        .sum()
}

impl MemorySize for ImMessageRow {
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.call_id.len()
            + self.sender.len()
            + texts(&self.recipients)
            + self.content_type.len()
            + self.body.len()
            + self.delivery_status.len()
            + opt_text(&self.from_display)
            + opt_text(&self.to_display)
    }
}

impl MemorySize for CallRow {
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.call_id.len()
            + self.source.len()
            + self.caller.len()
            + self.callee.len()
            + self.disposition.len()
            + opt_text(&self.reason)
            + opt_text(&self.ended_by)
            + texts(&self.codecs)
            + opt_text(&self.caller_media)
            + opt_text(&self.callee_media)
            + opt_text(&self.transferred_from)
            + opt_text(&self.caller_display)
            + opt_text(&self.callee_display)
    }
}

impl MemorySize for HepRawRow {
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.source.len()
            + self.src.len()
            + self.dst.len()
            + opt_text(&self.correlation_id)
            + self.payload.len()
    }
}

impl MemorySize for PresenceRow {
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.source.len()
            + self.entity.len()
            + opt_text(&self.basic)
            + texts(&self.activities)
            + opt_text(&self.note)
            + self.via.len()
            + self.call_id.len()
            + opt_text(&self.etag)
            + opt_text(&self.subscription_state)
    }
}

impl MemorySize for RoomEventRow {
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.kind.len()
            + self.room.len()
            + opt_text(&self.member)
            + self.event.len()
            + opt_text(&self.role)
            + self.by_user.len()
            + opt_text(&self.call_id)
    }
}

impl ImMessageRow {
    /// Stable key of an IM across the archive and the search index.
    pub fn key(&self) -> String {
        format!("{}#{}", self.call_id, self.cseq)
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

pub fn sip_messages_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("direction", DataType::Utf8, false),
        Field::new("transport", DataType::Utf8, false),
        Field::new("src", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, true),
        Field::new("status", DataType::UInt16, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("request_uri", DataType::Utf8, true),
        Field::new("call_id", DataType::Utf8, true),
        Field::new("cseq", DataType::UInt32, true),
        Field::new("cseq_method", DataType::Utf8, true),
        Field::new("from_uri", DataType::Utf8, true),
        Field::new("from_tag", DataType::Utf8, true),
        Field::new("to_uri", DataType::Utf8, true),
        Field::new("to_tag", DataType::Utf8, true),
        Field::new("parse_error", DataType::Utf8, true),
        Field::new("raw", DataType::Binary, false),
    ]))
}

pub fn im_messages_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("call_id", DataType::Utf8, false),
        Field::new("cseq", DataType::UInt32, false),
        Field::new("sender", DataType::Utf8, false),
        Field::new(
            "recipients",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("content_type", DataType::Utf8, false),
        Field::new("body", DataType::Utf8, false),
        Field::new("delivery_status", DataType::Utf8, false),
        Field::new("status", DataType::UInt16, true),
        Field::new("from_display", DataType::Utf8, true),
        Field::new("to_display", DataType::Utf8, true),
    ]))
}

pub fn calls_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("call_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("caller", DataType::Utf8, false),
        Field::new("callee", DataType::Utf8, false),
        Field::new("ring_time", ts_type(), true),
        Field::new("answer_time", ts_type(), true),
        Field::new("end_time", ts_type(), true),
        Field::new("setup_ms", DataType::Int64, true),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("disposition", DataType::Utf8, false),
        Field::new("final_code", DataType::UInt16, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("ended_by", DataType::Utf8, true),
        Field::new(
            "codecs",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("caller_media", DataType::Utf8, true),
        Field::new("callee_media", DataType::Utf8, true),
        Field::new("legs", DataType::UInt32, false),
        Field::new("reinvites", DataType::UInt32, false),
        Field::new("transferred_from", DataType::Utf8, true),
        Field::new("caller_display", DataType::Utf8, true),
        Field::new("callee_display", DataType::Utf8, true),
    ]))
}

pub fn hep_raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("proto_type", DataType::UInt8, false),
        Field::new("src", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("correlation_id", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, false),
    ]))
}

pub fn presence_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("basic", DataType::Utf8, true),
        Field::new(
            "activities",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("note", DataType::Utf8, true),
        Field::new("via", DataType::Utf8, false),
        Field::new("call_id", DataType::Utf8, false),
        Field::new("expires", DataType::UInt32, true),
        Field::new("etag", DataType::Utf8, true),
        Field::new("subscription_state", DataType::Utf8, true),
    ]))
}

pub fn room_events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts_type(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("room", DataType::Utf8, false),
        Field::new("member", DataType::Utf8, true),
        Field::new("event", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, true),
        Field::new("by_user", DataType::Utf8, false),
        Field::new("call_id", DataType::Utf8, true),
        Field::new("catalog_id", DataType::Int64, true),
    ]))
}

/// Builds a timestamp column with the UTC time zone the schemas declare.
fn ts_column(values: impl Iterator<Item = i64>) -> ArrayRef {
    let arr = arrow_array::TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC");
    Arc::new(arr)
}

fn str_col<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn opt_str_col<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// One `sip_messages` row, borrowed: what [`SipMessagesBuilder`] appends.
/// The collector fills it straight from the captured bytes and the parsed
/// message, so archiving a message allocates nothing per field.
#[derive(Debug, Clone, Copy, Default)]
pub struct SipMessageFields<'a> {
    pub time_ns: i64,
    pub source: &'a str,
    pub direction: &'a str,
    pub transport: &'a str,
    pub src: &'a str,
    pub dst: &'a str,
    pub method: Option<&'a str>,
    pub status: Option<u16>,
    pub reason: Option<&'a str>,
    pub request_uri: Option<&'a str>,
    pub call_id: Option<&'a str>,
    pub cseq: Option<u32>,
    pub cseq_method: Option<&'a str>,
    pub from_uri: Option<&'a str>,
    pub from_tag: Option<&'a str>,
    pub to_uri: Option<&'a str>,
    pub to_tag: Option<&'a str>,
    pub parse_error: Option<&'a str>,
    pub raw: &'a [u8],
}

impl SipMessageFields<'_> {
    /// Bytes the row adds to a [`SipMessagesBuilder`]: its text and raw
    /// bytes, and per column an offset or a value (8 bytes at most).
    pub fn memory_size(&self) -> usize {
        let opt = |s: Option<&str>| s.map_or(0, str::len);
        const COLUMNS: usize = 19;
        COLUMNS * 8
            + self.source.len()
            + self.direction.len()
            + self.transport.len()
            + self.src.len()
            + self.dst.len()
            + opt(self.method)
            + opt(self.reason)
            + opt(self.request_uri)
            + opt(self.call_id)
            + opt(self.cseq_method)
            + opt(self.from_uri)
            + opt(self.from_tag)
            + opt(self.to_uri)
            + opt(self.to_tag)
            + opt(self.parse_error)
            + self.raw.len()
    }
}

impl SipMessageRow {
    pub fn fields(&self) -> SipMessageFields<'_> {
        SipMessageFields {
            time_ns: self.time_ns,
            source: &self.source,
            direction: &self.direction,
            transport: &self.transport,
            src: &self.src,
            dst: &self.dst,
            method: self.method.as_deref(),
            status: self.status,
            reason: self.reason.as_deref(),
            request_uri: self.request_uri.as_deref(),
            call_id: self.call_id.as_deref(),
            cseq: self.cseq,
            cseq_method: self.cseq_method.as_deref(),
            from_uri: self.from_uri.as_deref(),
            from_tag: self.from_tag.as_deref(),
            to_uri: self.to_uri.as_deref(),
            to_tag: self.to_tag.as_deref(),
            parse_error: self.parse_error.as_deref(),
            raw: &self.raw,
        }
    }
}

/// The `sip_messages` columns under construction: rows are appended field
/// by field into Arrow buffers and finished into one batch, with no row
/// structs in between.
#[derive(Debug, Default)]
pub struct SipMessagesBuilder {
    time: Vec<i64>,
    source: StringBuilder,
    direction: StringBuilder,
    transport: StringBuilder,
    src: StringBuilder,
    dst: StringBuilder,
    method: StringBuilder,
    status: UInt16Builder,
    reason: StringBuilder,
    request_uri: StringBuilder,
    call_id: StringBuilder,
    cseq: UInt32Builder,
    cseq_method: StringBuilder,
    from_uri: StringBuilder,
    from_tag: StringBuilder,
    to_uri: StringBuilder,
    to_tag: StringBuilder,
    parse_error: StringBuilder,
    raw: BinaryBuilder,
    min_time_ns: i64,
    max_time_ns: i64,
}

impl SipMessagesBuilder {
    /// Room for `rows` rows and `raw_bytes` of raw messages, so a segment's
    /// buffers are not copied over and over as they grow.
    pub fn with_capacity(rows: usize, raw_bytes: usize) -> Self {
        // Typical text per row of the short columns (addresses, tags, ...).
        let text = |per_row: usize| StringBuilder::with_capacity(rows, rows * per_row);
        SipMessagesBuilder {
            time: Vec::with_capacity(rows),
            source: text(12),
            direction: text(3),
            transport: text(3),
            src: text(20),
            dst: text(20),
            method: text(8),
            status: UInt16Builder::with_capacity(rows),
            reason: text(4),
            request_uri: text(24),
            call_id: text(32),
            cseq: UInt32Builder::with_capacity(rows),
            cseq_method: text(8),
            from_uri: text(24),
            from_tag: text(12),
            to_uri: text(24),
            to_tag: text(8),
            parse_error: text(0),
            raw: BinaryBuilder::with_capacity(rows, raw_bytes),
            min_time_ns: 0,
            max_time_ns: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    /// (earliest, latest) row time; `None` while empty.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        (!self.is_empty()).then_some((self.min_time_ns, self.max_time_ns))
    }

    pub fn append(&mut self, f: &SipMessageFields<'_>) {
        if self.time.is_empty() {
            self.min_time_ns = f.time_ns;
            self.max_time_ns = f.time_ns;
        } else {
            self.min_time_ns = self.min_time_ns.min(f.time_ns);
            self.max_time_ns = self.max_time_ns.max(f.time_ns);
        }
        self.time.push(f.time_ns);
        self.source.append_value(f.source);
        self.direction.append_value(f.direction);
        self.transport.append_value(f.transport);
        self.src.append_value(f.src);
        self.dst.append_value(f.dst);
        self.method.append_option(f.method);
        self.status.append_option(f.status);
        self.reason.append_option(f.reason);
        self.request_uri.append_option(f.request_uri);
        self.call_id.append_option(f.call_id);
        self.cseq.append_option(f.cseq);
        self.cseq_method.append_option(f.cseq_method);
        self.from_uri.append_option(f.from_uri);
        self.from_tag.append_option(f.from_tag);
        self.to_uri.append_option(f.to_uri);
        self.to_tag.append_option(f.to_tag);
        self.parse_error.append_option(f.parse_error);
        self.raw.append_value(f.raw);
    }

    /// The rows appended so far as one batch; the builder is left empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let time = std::mem::take(&mut self.time);
        let columns: Vec<ArrayRef> = vec![
            ts_column(time.into_iter()),
            Arc::new(self.source.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.transport.finish()),
            Arc::new(self.src.finish()),
            Arc::new(self.dst.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.request_uri.finish()),
            Arc::new(self.call_id.finish()),
            Arc::new(self.cseq.finish()),
            Arc::new(self.cseq_method.finish()),
            Arc::new(self.from_uri.finish()),
            Arc::new(self.from_tag.finish()),
            Arc::new(self.to_uri.finish()),
            Arc::new(self.to_tag.finish()),
            Arc::new(self.parse_error.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(sip_messages_schema(), columns)
    }
}

pub fn sip_messages_batch(rows: &[SipMessageRow]) -> Result<RecordBatch, ArrowError> {
    let mut b = SipMessagesBuilder::default();
    for r in rows {
        b.append(&r.fields());
    }
    b.finish()
}

pub fn im_messages_batch(rows: &[ImMessageRow]) -> Result<RecordBatch, ArrowError> {
    let mut cseq = UInt32Builder::new();
    let mut status = UInt16Builder::new();
    for r in rows {
        cseq.append_value(r.cseq);
        status.append_option(r.status);
    }
    let columns: Vec<ArrayRef> = vec![
        ts_column(rows.iter().map(|r| r.time_ns)),
        str_col(rows.iter().map(|r| r.call_id.as_str())),
        Arc::new(cseq.finish()),
        str_col(rows.iter().map(|r| r.sender.as_str())),
        str_list_col(rows.iter().map(|r| r.recipients.as_slice())),
        str_col(rows.iter().map(|r| r.content_type.as_str())),
        str_col(rows.iter().map(|r| r.body.as_str())),
        str_col(rows.iter().map(|r| r.delivery_status.as_str())),
        Arc::new(status.finish()),
        opt_str_col(rows.iter().map(|r| r.from_display.as_deref())),
        opt_str_col(rows.iter().map(|r| r.to_display.as_deref())),
    ];
    RecordBatch::try_new(im_messages_schema(), columns)
}

fn opt_ts_column(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = TimestampNanosecondBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish().with_timezone("UTC"))
}

fn opt_i64_col(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn str_list_col<'a>(lists: impl Iterator<Item = &'a [String]>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for list in lists {
        for v in list {
            b.values().append_value(v);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

pub fn calls_batch(rows: &[CallRow]) -> Result<RecordBatch, ArrowError> {
    let mut final_code = UInt16Builder::new();
    let mut legs = UInt32Builder::new();
    let mut reinvites = UInt32Builder::new();
    for r in rows {
        final_code.append_option(r.final_code);
        legs.append_value(r.legs);
        reinvites.append_value(r.reinvites);
    }
    let columns: Vec<ArrayRef> = vec![
        ts_column(rows.iter().map(|r| r.time_ns)),
        str_col(rows.iter().map(|r| r.call_id.as_str())),
        str_col(rows.iter().map(|r| r.source.as_str())),
        str_col(rows.iter().map(|r| r.caller.as_str())),
        str_col(rows.iter().map(|r| r.callee.as_str())),
        opt_ts_column(rows.iter().map(|r| r.ring_ns)),
        opt_ts_column(rows.iter().map(|r| r.answer_ns)),
        opt_ts_column(rows.iter().map(|r| r.end_ns)),
        opt_i64_col(rows.iter().map(|r| r.setup_ms)),
        opt_i64_col(rows.iter().map(|r| r.duration_ms)),
        str_col(rows.iter().map(|r| r.disposition.as_str())),
        Arc::new(final_code.finish()),
        opt_str_col(rows.iter().map(|r| r.reason.as_deref())),
        opt_str_col(rows.iter().map(|r| r.ended_by.as_deref())),
        str_list_col(rows.iter().map(|r| r.codecs.as_slice())),
        opt_str_col(rows.iter().map(|r| r.caller_media.as_deref())),
        opt_str_col(rows.iter().map(|r| r.callee_media.as_deref())),
        Arc::new(legs.finish()),
        Arc::new(reinvites.finish()),
        opt_str_col(rows.iter().map(|r| r.transferred_from.as_deref())),
        opt_str_col(rows.iter().map(|r| r.caller_display.as_deref())),
        opt_str_col(rows.iter().map(|r| r.callee_display.as_deref())),
    ];
    RecordBatch::try_new(calls_schema(), columns)
}

pub fn hep_raw_batch(rows: &[HepRawRow]) -> Result<RecordBatch, ArrowError> {
    let mut proto = UInt8Builder::new();
    let mut payload = BinaryBuilder::new();
    for r in rows {
        proto.append_value(r.proto_type);
        payload.append_value(&r.payload);
    }
    let columns: Vec<ArrayRef> = vec![
        ts_column(rows.iter().map(|r| r.time_ns)),
        str_col(rows.iter().map(|r| r.source.as_str())),
        Arc::new(proto.finish()),
        str_col(rows.iter().map(|r| r.src.as_str())),
        str_col(rows.iter().map(|r| r.dst.as_str())),
        opt_str_col(rows.iter().map(|r| r.correlation_id.as_deref())),
        Arc::new(payload.finish()),
    ];
    RecordBatch::try_new(hep_raw_schema(), columns)
}

pub fn presence_batch(rows: &[PresenceRow]) -> Result<RecordBatch, ArrowError> {
    let mut expires = UInt32Builder::new();
    for r in rows {
        expires.append_option(r.expires);
    }
    let columns: Vec<ArrayRef> = vec![
        ts_column(rows.iter().map(|r| r.time_ns)),
        str_col(rows.iter().map(|r| r.source.as_str())),
        str_col(rows.iter().map(|r| r.entity.as_str())),
        opt_str_col(rows.iter().map(|r| r.basic.as_deref())),
        str_list_col(rows.iter().map(|r| r.activities.as_slice())),
        opt_str_col(rows.iter().map(|r| r.note.as_deref())),
        str_col(rows.iter().map(|r| r.via.as_str())),
        str_col(rows.iter().map(|r| r.call_id.as_str())),
        Arc::new(expires.finish()),
        opt_str_col(rows.iter().map(|r| r.etag.as_deref())),
        opt_str_col(rows.iter().map(|r| r.subscription_state.as_deref())),
    ];
    RecordBatch::try_new(presence_schema(), columns)
}

pub fn room_events_batch(rows: &[RoomEventRow]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        ts_column(rows.iter().map(|r| r.time_ns)),
        str_col(rows.iter().map(|r| r.kind.as_str())),
        str_col(rows.iter().map(|r| r.room.as_str())),
        opt_str_col(rows.iter().map(|r| r.member.as_deref())),
        str_col(rows.iter().map(|r| r.event.as_str())),
        opt_str_col(rows.iter().map(|r| r.role.as_deref())),
        str_col(rows.iter().map(|r| r.by_user.as_str())),
        opt_str_col(rows.iter().map(|r| r.call_id.as_deref())),
        opt_i64_col(rows.iter().map(|r| r.catalog_id)),
    ];
    RecordBatch::try_new(room_events_schema(), columns)
}

/// Every archive table with its file schema (without the `date` partition column).
pub fn archive_tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        (TABLE_SIP_MESSAGES, sip_messages_schema()),
        (TABLE_IM_MESSAGES, im_messages_schema()),
        (TABLE_CALLS, calls_schema()),
        (TABLE_HEP_RAW, hep_raw_schema()),
        (TABLE_PRESENCE, presence_schema()),
        (TABLE_ROOM_EVENTS, room_events_schema()),
    ]
}

/// Canonical text form of every table schema, for the version snapshot test.
pub fn schema_fingerprint() -> String {
    let mut out = String::new();
    for (name, schema) in archive_tables() {
        out.push_str(name);
        out.push('\n');
        for f in schema.fields() {
            out.push_str(&format!(
                "  {} {} nullable={}\n",
                f.name(),
                f.data_type(),
                f.is_nullable()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changing a schema without bumping SCHEMA_VERSION breaks readers of old
    /// archives silently; this pins the pair together.
    #[test]
    fn schema_change_requires_version_bump() {
        let expected = include_str!("../schema-v4.txt");
        assert_eq!(
            SCHEMA_VERSION, 4,
            "bump the snapshot file name with the version"
        );
        assert_eq!(
            schema_fingerprint(),
            expected,
            "archive schema changed: bump SCHEMA_VERSION and write schemas/schema-v{{N}}.txt"
        );
    }

    #[test]
    fn batches_match_schemas() {
        let im = ImMessageRow {
            time_ns: 1_700_000_000_000_000_000,
            call_id: "c1".into(),
            cseq: 1,
            sender: "sip:alice@example.com".into(),
            recipients: vec!["sip:bob@example.com".into()],
            content_type: "text/plain".into(),
            body: "hello".into(),
            delivery_status: "delivered".into(),
            status: Some(200),
            from_display: Some("Alice Smith".into()),
            to_display: None,
        };
        let b = im_messages_batch(&[im.clone(), im]).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), im_messages_schema());
        let s = SipMessageRow {
            time_ns: 1,
            source: "tap".into(),
            direction: "in".into(),
            transport: "udp".into(),
            src: "127.0.0.1:1".into(),
            dst: "127.0.0.1:2".into(),
            method: Some("MESSAGE".into()),
            status: None,
            reason: None,
            request_uri: None,
            call_id: None,
            cseq: None,
            cseq_method: None,
            from_uri: None,
            from_tag: None,
            to_uri: None,
            to_tag: None,
            parse_error: None,
            raw: b"MESSAGE".to_vec(),
        };
        let b = sip_messages_batch(&[s]).unwrap();
        assert_eq!(b.num_rows(), 1);
        let call = CallRow {
            time_ns: 1,
            call_id: "c2".into(),
            source: "pcap:x.pcap".into(),
            caller: "sip:alice@example.com".into(),
            callee: "sip:bob@example.com".into(),
            ring_ns: Some(2),
            answer_ns: None,
            end_ns: Some(3),
            setup_ms: Some(0),
            duration_ms: None,
            disposition: "cancelled".into(),
            final_code: Some(487),
            reason: Some("Request Terminated".into()),
            ended_by: Some("caller".into()),
            codecs: vec!["PCMA/8000".into()],
            caller_media: Some("127.0.0.1:6000".into()),
            callee_media: None,
            legs: 1,
            reinvites: 0,
            transferred_from: None,
            caller_display: Some("Alice".into()),
            callee_display: None,
        };
        let b = calls_batch(&[call]).unwrap();
        assert_eq!(b.num_rows(), 1);
        let raw = HepRawRow {
            time_ns: 1,
            source: "hep:2001".into(),
            proto_type: 5,
            src: "10.0.0.1:5000".into(),
            dst: "10.0.0.2:5001".into(),
            correlation_id: Some("c2".into()),
            payload: vec![0x80, 0xc8],
        };
        let b = hep_raw_batch(&[raw]).unwrap();
        assert_eq!(b.num_rows(), 1);
        let published = PresenceRow {
            time_ns: 1,
            source: "pcap:publish.pcap".into(),
            entity: "sip:alice@example.com".into(),
            basic: Some("open".into()),
            activities: vec!["away".into(), "on-the-phone".into()],
            note: Some("back at 3".into()),
            via: "publish".into(),
            call_id: "c3".into(),
            expires: Some(3600),
            etag: Some("etag-1".into()),
            subscription_state: None,
        };
        let notified = PresenceRow {
            basic: None,
            activities: Vec::new(),
            note: None,
            via: "notify".into(),
            expires: None,
            etag: None,
            subscription_state: Some("terminated".into()),
            ..published.clone()
        };
        let b = presence_batch(&[published, notified]).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), presence_schema());
        let joined = RoomEventRow {
            time_ns: 1,
            kind: "conference".into(),
            room: "sip:conf-1a2b@example.com".into(),
            member: Some("sip:carol@example.com".into()),
            event: "joined".into(),
            role: None,
            by_user: "sip:alice@example.com".into(),
            call_id: Some("c4".into()),
            catalog_id: None,
        };
        let added = RoomEventRow {
            kind: "room".into(),
            room: "sip:room-budget@example.com".into(),
            event: "member_added".into(),
            role: Some("owner".into()),
            by_user: "lead".into(),
            call_id: None,
            catalog_id: Some(7),
            ..joined.clone()
        };
        let b = room_events_batch(&[joined, added]).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), room_events_schema());
    }
}
