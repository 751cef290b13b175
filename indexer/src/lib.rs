//! Full-text index of the archive: instant messages, calls and presence.
//!
//! The index is built from sealed archive segments (`im_messages`, `calls` and
//! `presence` rows) and can be rebuilt from the archive at any time. Each document
//! carries the id of the segment it came from (the segment's path in the manifest),
//! and each indexed segment leaves a marker, so a caller can compare the indexed
//! segments with the manifest and add what is missing. One process (the server)
//! owns the writer through [`ImIndex`]; any number of readers search the same
//! directory through [`search`], which never takes the writer lock.
//!
//! Documents ([`IndexDoc`]): an IM (body; sender and recipients with their
//! display names), a call (body: disposition, final code and reason; caller and
//! callee with their display names as from/to) or a presence change (body: basic
//! status, activities and note; the entity as from).
//!
//! Query language (see [`search`]): words and `"phrases"` over the body, combined
//! with `AND`, `OR`, `NOT` (or `+word` / `-word`) and parentheses; bare words are
//! combined with AND. Prefix terms `budg*`, fuzzy terms `budgte~1` (edit distance 1
//! or 2). The fields `from:` and `to:` search the sender and recipient addresses
//! (URIs and any display names archived with them), e.g. `from:alice`,
//! `to:"bob@example.com"`, `from:smith`, `from:"Alice Smith"`, `body:lunch`; `type:im`, `type:call`, `type:presence`
//! select a kind of record; `room:NAME` finds the posts to chat room NAME (the
//! IMs addressed to `sip:room-NAME@...`, as every post is archived) and
//! `type:chat` the posts to any room; `conference:ID` the messages written
//! to ad hoc conference `conf-ID` (IMs addressed to its focus
//! `sip:conf-ID@...`; the `conf-` may be left out). `time:[A TO B]` bounds the time
//! (`[`/`]` inclusive, `{`/`}` exclusive, `*` open; RFC 3339 or `YYYY-MM-DD`, UTC
//! midnight), e.g. `time:[2026-11-04 TO 2026-11-05}` for one day.
//!
//! Results come oldest first, or by relevance then oldest first. Documents are
//! kept in time order within each tantivy segment, so a page in time order reads
//! only the first matches of each segment. A page's total ([`Total`]) is exact up
//! to [`TOTAL_COUNT_LIMIT`] matches, or beyond where the index knows the number
//! without visiting the matches (a query of one word or address); otherwise it is
//! "more than 10000". [`search_count`] counts every match.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sipvault_schemas::{CallRow, ImMessageRow, PresenceRow};
use tantivy::collector::DocSetCollector;
use tantivy::indexer::UserOperation;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, EnableScoring, FuzzyTermQuery,
    Occur, Query, QueryParser, QueryParserError, RangeQuery, TermQuery,
};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputBound, UserInputLeaf};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, STORED, STRING, Schema, TantivyDocument,
    TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexSettings, IndexSortByField, IndexWriter, Order,
    ReloadPolicy, Term,
};

mod collect;

pub use collect::{TOTAL_COUNT_LIMIT, Total};

/// Name under which the text analyzer of the index is registered.
const TOKENIZER: &str = "sipvault_text";
/// Memory budget of the (single-threaded) index writer.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Documents handed to the index writer's thread in one operation. The
/// writer's queue holds 10,000 operations, so this also bounds what waits
/// in it: 20,000 documents. (Batches of 8 saved a little more CPU, but let
/// a whole sealed segment's documents wait in memory: 60 MiB more at the
/// peak of `bench/hep-ingest.sh`.)
const INDEX_BATCH_DOCS: usize = 2;
/// Result count used when a request asks for `limit: 0`.
pub const DEFAULT_LIMIT: usize = 100;

/// Field names that may be used in the query string.
const QUERY_FIELDS: [&str; 7] = ["body", "from", "to", "type", "room", "conference", "time"];
/// Values of `type:` that name a record kind of the index.
const TYPE_VALUES: &str = "im, call, presence, chat";
/// Start of the SIP user part of a chat room's URI (`sip:room-NAME@DOMAIN`),
/// the same as the catalog's `ROOM_USER_PREFIX` (the indexer depends on no
/// catalog).
const ROOM_PREFIX: &str = "room-";
/// Start of the user part of a conference focus URI (as the server names
/// them; the server crate is not a dependency).
const CONFERENCE_PREFIX: &str = "conf-";
/// Fuzzy terms may be at most this many edits away.
const MAX_FUZZY_DISTANCE: u32 = 2;

/// Document kinds: one document per indexed record (see [`DocType`]), plus one
/// marker per segment so that segments without any rows are still recorded as indexed.
const KIND_SEGMENT: &str = "segment";

/// What kind of archive record a document (and a hit) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocType {
    Im,
    Call,
    Presence,
}

impl DocType {
    pub const ALL: [DocType; 3] = [DocType::Im, DocType::Call, DocType::Presence];

    pub fn as_str(self) -> &'static str {
        match self {
            DocType::Im => "im",
            DocType::Call => "call",
            DocType::Presence => "presence",
        }
    }

    fn from_kind(kind: &str) -> Option<DocType> {
        DocType::ALL.into_iter().find(|t| t.as_str() == kind)
    }

    /// The record kind an archive table holds, if its rows are indexed.
    pub fn for_table(table: &str) -> Option<DocType> {
        match table {
            sipvault_schemas::TABLE_IM_MESSAGES => Some(DocType::Im),
            sipvault_schemas::TABLE_CALLS => Some(DocType::Call),
            sipvault_schemas::TABLE_PRESENCE => Some(DocType::Presence),
            _ => None,
        }
    }
}

impl std::fmt::Display for DocType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One searchable record: what [`ImIndex::add_documents`] indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDoc {
    pub doc_type: DocType,
    pub time_ns: i64,
    /// Sender, caller or presentity (URI).
    pub from: String,
    /// Display name of `from`, if one was archived.
    pub from_name: Option<String>,
    /// Recipients or callee (URIs).
    pub to: Vec<String>,
    /// Display name of the (first) recipient or the callee, if one was archived.
    pub to_name: Option<String>,
    /// IM body; call outcome; presence status and note.
    pub body: String,
    pub call_id: String,
    /// CSeq of an IM; 0 for calls and presence.
    pub cseq: u32,
}

/// By value: the indexer takes over a sealed segment's IM rows, and moving
/// their text saves a copy of every body and address.
impl From<ImMessageRow> for IndexDoc {
    fn from(row: ImMessageRow) -> Self {
        IndexDoc {
            doc_type: DocType::Im,
            time_ns: row.time_ns,
            from: row.sender,
            from_name: row.from_display,
            to: row.recipients,
            to_name: row.to_display,
            body: row.body,
            call_id: row.call_id,
            cseq: row.cseq,
        }
    }
}

impl From<&CallRow> for IndexDoc {
    /// Body: `disposition [code] [reason]`, e.g. `busy 486 Busy Here`.
    fn from(row: &CallRow) -> Self {
        let mut body = row.disposition.clone();
        if let Some(code) = row.final_code {
            body.push_str(&format!(" {code}"));
        }
        if let Some(reason) = row.reason.as_deref().filter(|r| !r.is_empty()) {
            body.push(' ');
            body.push_str(reason);
        }
        IndexDoc {
            doc_type: DocType::Call,
            time_ns: row.time_ns,
            from: row.caller.clone(),
            from_name: row.caller_display.clone(),
            to: vec![row.callee.clone()],
            to_name: row.callee_display.clone(),
            body,
            call_id: row.call_id.clone(),
            cseq: 0,
        }
    }
}

impl From<&PresenceRow> for IndexDoc {
    /// Body: basic status, activities and note, space-separated.
    fn from(row: &PresenceRow) -> Self {
        let parts: Vec<&str> = row
            .basic
            .iter()
            .map(String::as_str)
            .chain(row.activities.iter().map(String::as_str))
            .chain(row.note.iter().map(String::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        IndexDoc {
            doc_type: DocType::Presence,
            time_ns: row.time_ns,
            from: row.entity.clone(),
            from_name: None,
            to: Vec::new(),
            to_name: None,
            body: parts.join(" "),
            call_id: row.call_id.clone(),
            cseq: 0,
        }
    }
}

/// Sort order of search results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Oldest first.
    #[default]
    Time,
    /// Best match first, then oldest first.
    Relevance,
}

impl std::str::FromStr for SortOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "time" => Ok(SortOrder::Time),
            "relevance" => Ok(SortOrder::Relevance),
            _ => Err(format!(
                "unknown sort order '{s}' (expected time or relevance)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("cannot open search index directory: {0}")]
    OpenDirectory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("search index I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "search index at {0} is already open for writing (another sipvault process is running?)"
    )]
    Locked(PathBuf),
    #[error("search index document is missing field '{0}'")]
    CorruptDocument(&'static str),
    #[error(
        "search index at {0} was written by an older sipvault; run `sipvault reindex` to rebuild it"
    )]
    OutdatedIndex(PathBuf),
    #[error("invalid search query at position {position}: {message}")]
    Query { position: usize, message: String },
}

/// A full-text search over the IM index.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// Query string; empty or `*` matches every message.
    pub query: String,
    /// Sender filter: full URI (`sip:alice@example.com`), `user@host` or bare user, any case.
    pub from: Option<String>,
    /// Recipient filter, same forms as `from`; matches if any recipient matches.
    pub to: Option<String>,
    /// Inclusive lower bound on the message time, ns since the Unix epoch.
    pub since_ns: Option<i64>,
    /// Exclusive upper bound on the message time, ns since the Unix epoch.
    pub until_ns: Option<i64>,
    /// Maximum number of hits; 0 means [`DEFAULT_LIMIT`].
    pub limit: usize,
    /// Number of hits to skip first (paging).
    pub offset: usize,
    pub sort: SortOrder,
    /// Only records of these kinds; empty means every kind.
    pub types: Vec<DocType>,
}

/// One page of hits and how many there are in all.
#[derive(Debug, Clone, Serialize)]
pub struct SearchPage {
    /// Every match of the query, whatever the limit and offset: exact up to
    /// [`TOTAL_COUNT_LIMIT`] (and beyond where the index knows it without a
    /// scan), otherwise [`Total::MoreThan`]. [`search_count`] counts exactly.
    pub total: Total,
    pub hits: Vec<SearchHit>,
}

/// One matching record.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    #[serde(rename = "type")]
    pub doc_type: DocType,
    pub time_ns: i64,
    pub from: String,
    /// Display name archived with `from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    pub to: Vec<String>,
    /// Display name archived with the first of `to`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_name: Option<String>,
    pub body: String,
    pub call_id: String,
    pub cseq: u32,
    /// Relevance score; 0 when results are in time order.
    pub score: f32,
}

#[derive(Clone, Copy)]
struct Fields {
    kind: Field,
    segment: Field,
    time: Field,
    body: Field,
    from: Field,
    to: Field,
    from_uri: Field,
    to_uri: Field,
    from_name: Field,
    to_name: Field,
    from_addr: Field,
    to_addr: Field,
    call_id: Field,
    cseq: Field,
}

/// `from` and `to` are searched, not stored: they hold the URIs and the display
/// names, so that `from:smith` and `from:"alice smith"` find the address of
/// `"Alice Smith" <sip:alice@example.com>`; the hit is read from the stored
/// `*_uri` and `*_name` fields, which keep the two apart.
fn build_schema() -> Schema {
    let mut b = Schema::builder();
    let searched = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let text = searched.clone().set_stored();
    b.add_text_field("kind", STRING | STORED);
    b.add_text_field("segment", STRING | STORED);
    // Not in the inverted index: `time:` ranges and the index order read the
    // fast field, and a term per nanosecond timestamp, unique to nearly
    // every document, only made the term dictionary as long as the index.
    b.add_i64_field("time", NumericOptions::default().set_fast().set_stored());
    b.add_text_field("body", text);
    b.add_text_field("from", searched.clone());
    b.add_text_field("to", searched);
    b.add_text_field("from_uri", STORED);
    b.add_text_field("to_uri", STORED);
    b.add_text_field("from_name", STORED);
    b.add_text_field("to_name", STORED);
    b.add_text_field("from_addr", STRING);
    b.add_text_field("to_addr", STRING);
    // Shown with a hit, never searched: not indexed (a term per document).
    b.add_text_field("call_id", STORED);
    b.add_u64_field("cseq", NumericOptions::default().set_stored());
    b.build()
}

fn fields(schema: &Schema) -> Result<Fields, IndexError> {
    let f = |name: &'static str| {
        schema.get_field(name).map_err(|_| {
            IndexError::Tantivy(tantivy::TantivyError::SchemaError(format!(
                "index schema has no field '{name}'"
            )))
        })
    };
    Ok(Fields {
        kind: f("kind")?,
        segment: f("segment")?,
        time: f("time")?,
        body: f("body")?,
        from: f("from")?,
        to: f("to")?,
        from_uri: f("from_uri")?,
        to_uri: f("to_uri")?,
        from_name: f("from_name")?,
        to_name: f("to_name")?,
        from_addr: f("from_addr")?,
        to_addr: f("to_addr")?,
        call_id: f("call_id")?,
        cseq: f("cseq")?,
    })
}

fn text_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

fn register_tokenizers(index: &Index) {
    index.tokenizers().register(TOKENIZER, text_analyzer());
}

/// Lower-cased lookup keys of a SIP address: the URI without parameters
/// (`sip:alice@example.com`), `user@host` (with and without port) and `user`.
/// The first key is the most specific form of the input.
fn address_keys(addr: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(4);
    for_each_address_key(addr, |key| keys.push(key.to_string()));
    keys
}

/// [`address_keys`] handed to `key` one by one, each once, borrowed: the
/// indexer adds them to a document, which copies them anyway.
fn for_each_address_key(addr: &str, mut key: impl FnMut(&str)) {
    let mut s = addr.trim();
    // `"Alice" <sip:alice@example.com>;tag=x` -> `sip:alice@example.com`
    if let (Some(open), Some(close)) = (s.find('<'), s.rfind('>'))
        && open < close
    {
        s = &s[open + 1..close];
    }
    let s = s.trim();
    // Addresses are nearly always ASCII and mostly lower case already.
    let s: std::borrow::Cow<'_, str> = if !s.is_ascii() {
        s.to_lowercase().into()
    } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
        s.to_ascii_lowercase().into()
    } else {
        s.into()
    };
    let s = s.as_ref();
    // Scheme: an alphabetic prefix ending in ':' before any '@'.
    let at = s.find('@');
    let (scheme_len, rest) = match s.find(':') {
        Some(i)
            if i > 0
                && s.as_bytes()[..i].iter().all(u8::is_ascii_alphabetic)
                && at.is_none_or(|at| i < at) =>
        {
            (i + 1, &s[i + 1..])
        }
        _ => (0, s),
    };
    // URI parameters and headers start after the user part.
    // A scheme ends before the first '@', so that '@' is still in `rest`.
    let rest_at = at.map(|at| at - scheme_len);
    let host_start = rest_at.map_or(0, |at| at + 1);
    let end = rest.as_bytes()[host_start..]
        .iter()
        .position(|b| matches!(b, b';' | b'?' | b'>'))
        .map_or(rest.len(), |i| host_start + i);
    // Cut after the '@', which stays where it was.
    let rest = &rest[..end];
    let (user, user_at_host) = match rest_at {
        Some(at) => {
            let user = &rest[..at];
            let host = &rest[at + 1..];
            // Strip a port, but not from an IPv6 literal without one.
            let host_no_port = match (host.rfind(':'), host.rfind(']')) {
                (Some(c), Some(b)) if c > b => &host[..c],
                (Some(c), None) if host.matches(':').count() == 1 => &host[..c],
                _ => host,
            };
            // Without a port, `user@host` is `rest` itself.
            let mut user_at_host = String::new();
            if host_no_port.len() < host.len() {
                user_at_host.reserve(user.len() + 1 + host_no_port.len());
                user_at_host.push_str(user);
                user_at_host.push('@');
                user_at_host.push_str(host_no_port);
            }
            (user, user_at_host)
        }
        None => ("", String::new()),
    };
    let keys = [&s[..scheme_len + rest.len()], rest, &user_at_host, user];
    for (i, k) in keys.iter().enumerate() {
        if !k.is_empty() && !keys[..i].contains(k) {
            key(k);
        }
    }
}

/// Documents are kept in time order within each tantivy segment (tantivy sorts
/// a segment when it is written and keeps the order when merging), so that a
/// search in time order reads only the first matches of each segment
/// (see `collect`).
fn index_settings() -> IndexSettings {
    IndexSettings {
        sort_by_field: Some(IndexSortByField {
            field: "time".to_string(),
            order: Order::Asc,
        }),
        ..IndexSettings::default()
    }
}

fn create_index(dir: &Path) -> Result<Index, IndexError> {
    Ok(Index::builder()
        .schema(build_schema())
        .settings(index_settings())
        .create_in_dir(dir)?)
}

/// The index has this version's fields and is sorted by time.
fn is_current_layout(index: &Index) -> bool {
    index.schema() == build_schema()
        && index.settings().sort_by_field == index_settings().sort_by_field
}

fn open_dir_index(dir: &Path) -> Result<Index, IndexError> {
    let index = Index::open_in_dir(dir)?;
    register_tokenizers(&index);
    Ok(index)
}

/// Writer side of the IM search index.
pub struct ImIndex {
    dir: PathBuf,
    index: Index,
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for ImIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ImIndex {
    /// Index under `dir` (created if missing). Holds tantivy's writer lock: one per process.
    pub fn open_or_create(dir: &Path) -> Result<ImIndex, IndexError> {
        std::fs::create_dir_all(dir)?;
        let exists = Index::exists(&tantivy::directory::MmapDirectory::open(dir)?)
            .map_err(|e| IndexError::Tantivy(e.into()))?;
        let index = if exists {
            let index = Index::open_in_dir(dir)?;
            if is_current_layout(&index) {
                index
            } else {
                // An index written by an older sipvault (other fields, or not in
                // time order): it is derived data, so start afresh; the caller
                // re-adds the archive's segments.
                drop(index);
                tracing::warn!(dir = %dir.display(), "search index has an old layout; recreating it");
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
                create_index(dir)?
            }
        } else {
            create_index(dir)?
        };
        register_tokenizers(&index);
        let fields = fields(&index.schema())?;
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .map_err(|e| match e {
                tantivy::TantivyError::LockFailure(..) => IndexError::Locked(dir.to_path_buf()),
                other => IndexError::Tantivy(other),
            })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(ImIndex {
            dir: dir.to_path_buf(),
            index,
            writer,
            reader,
            fields,
        })
    }

    /// Directory the index lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the IM rows of one sealed archive segment and commits. Idempotent per segment id
    /// (re-adding a segment first deletes its documents).
    pub fn add_segment(
        &mut self,
        segment_id: &str,
        rows: &[ImMessageRow],
    ) -> Result<(), IndexError> {
        let docs: Vec<IndexDoc> = rows.iter().cloned().map(IndexDoc::from).collect();
        self.add_documents(segment_id, &docs)
    }

    /// Adds the records of one sealed archive segment and commits. Idempotent per
    /// segment id (re-adding a segment first deletes its documents).
    pub fn add_documents(&mut self, segment_id: &str, docs: &[IndexDoc]) -> Result<(), IndexError> {
        self.stage_documents(segment_id, docs)?;
        self.commit()?;
        tracing::debug!(segment_id, docs = docs.len(), "indexed archive segment");
        Ok(())
    }

    /// Stages the records of one segment without committing (see [`ImIndex::commit`]):
    /// for bulk loads, where one commit per segment would be slow.
    pub fn stage_documents(
        &mut self,
        segment_id: &str,
        docs: &[IndexDoc],
    ) -> Result<(), IndexError> {
        if let Err(e) = self.stage_segment(segment_id, docs) {
            // Drop the half-staged segment so that the next commit does not carry it.
            if let Err(rollback) = self.writer.rollback() {
                tracing::warn!(%rollback, "search index rollback failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Stages the removal of every document: the next [`ImIndex::commit`] empties the index.
    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.writer.delete_all_documents()?;
        Ok(())
    }

    /// Removes every document of a segment (and its marker) and commits.
    pub fn remove_segment(&mut self, segment_id: &str) -> Result<(), IndexError> {
        self.writer
            .delete_term(Term::from_field_text(self.fields.segment, segment_id));
        self.commit()
    }

    /// Makes staged segments durable and visible to searches.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    fn stage_segment(&mut self, segment_id: &str, docs: &[IndexDoc]) -> Result<(), IndexError> {
        let f = self.fields;
        // Handed to the indexing thread two at a time: with one document
        // per send the sender found the queue full at every send and spun
        // on it, burning as much CPU as a fifth of the indexing itself.
        let mut batch = Vec::with_capacity(INDEX_BATCH_DOCS);
        batch.push(UserOperation::Delete(Term::from_field_text(
            f.segment, segment_id,
        )));
        for row in docs {
            let mut doc = TantivyDocument::default();
            doc.add_text(f.kind, row.doc_type.as_str());
            doc.add_text(f.segment, segment_id);
            doc.add_i64(f.time, row.time_ns);
            doc.add_text(f.body, &row.body);
            doc.add_text(f.from, &row.from);
            doc.add_text(f.from_uri, &row.from);
            for_each_address_key(&row.from, |key| doc.add_text(f.from_addr, key));
            if let Some(name) = &row.from_name {
                doc.add_text(f.from, name);
                doc.add_text(f.from_name, name);
            }
            for rcpt in &row.to {
                doc.add_text(f.to, rcpt);
                doc.add_text(f.to_uri, rcpt);
                for_each_address_key(rcpt, |key| doc.add_text(f.to_addr, key));
            }
            if let Some(name) = &row.to_name {
                doc.add_text(f.to, name);
                doc.add_text(f.to_name, name);
            }
            doc.add_text(f.call_id, &row.call_id);
            doc.add_u64(f.cseq, u64::from(row.cseq));
            batch.push(UserOperation::Add(doc));
            if batch.len() == INDEX_BATCH_DOCS {
                self.writer.run(std::mem::take(&mut batch))?;
                batch.reserve(INDEX_BATCH_DOCS);
            }
        }
        let mut marker = TantivyDocument::default();
        marker.add_text(f.kind, KIND_SEGMENT);
        marker.add_text(f.segment, segment_id);
        batch.push(UserOperation::Add(marker));
        self.writer.run(batch)?;
        Ok(())
    }

    /// Ids of the archive segments in the index, sorted.
    pub fn segment_ids(&self) -> Result<Vec<String>, IndexError> {
        segment_ids_in(&self.reader, self.fields)
    }

    /// Searches the index as of the last commit of this writer.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<SearchHit>, IndexError> {
        Ok(self.search_page(req)?.hits)
    }

    /// [`ImIndex::search`] with the total number of matches.
    pub fn search_page(&self, req: &SearchRequest) -> Result<SearchPage, IndexError> {
        let parsed = parse_user_query(&req.query)?;
        run_search_parsed(&self.index, &self.reader, self.fields, parsed, req)
    }
}

/// Read-only search. Works while another process (the server) holds the writer on the same
/// directory: the index is opened read-only and the writer lock is never taken. An index
/// directory that does not exist (or holds no index yet) gives no hits.
///
/// Results are in time order, or by relevance then time (`req.sort`).
pub fn search(dir: &Path, req: &SearchRequest) -> Result<Vec<SearchHit>, IndexError> {
    Ok(search_page(dir, req)?.hits)
}

/// [`search`] with the total number of matches, for paging.
pub fn search_page(dir: &Path, req: &SearchRequest) -> Result<SearchPage, IndexError> {
    // Validate the query first so that a bad query is reported even on an empty index.
    let parsed = parse_user_query(&req.query)?;
    if !dir.join("meta.json").is_file() {
        return Ok(SearchPage {
            total: Total::Exact(0),
            hits: Vec::new(),
        });
    }
    let (index, reader, fields) = open_for_search(dir)?;
    run_search_parsed(&index, &reader, fields, parsed, req)
}

/// How many records match `req` (its limit, offset and order aside), counted
/// exactly however many there are: a scan of every match, unlike the total of
/// [`search_page`]. Read-only, like [`search`].
pub fn search_count(dir: &Path, req: &SearchRequest) -> Result<usize, IndexError> {
    let parsed = parse_user_query(&req.query)?;
    if !dir.join("meta.json").is_file() {
        return Ok(0);
    }
    let (index, reader, f) = open_for_search(dir)?;
    let query = build_query(&index, f, parsed, req)?;
    let searcher = reader.searcher();
    let weight = query.weight(EnableScoring::disabled_from_searcher(&searcher))?;
    Ok(collect::count_all(&searcher, weight.as_ref())?)
}

/// The index at `dir`, read-only, with a reader; an index of an older layout
/// is [`IndexError::OutdatedIndex`].
fn open_for_search(dir: &Path) -> Result<(Index, IndexReader, Fields), IndexError> {
    let index = open_dir_index(dir)?;
    if !is_current_layout(&index) {
        return Err(IndexError::OutdatedIndex(dir.to_path_buf()));
    }
    let fields = fields(&index.schema())?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    Ok((index, reader, fields))
}

/// The query string, parsed but not yet bound to an index.
enum UserQuery {
    All,
    Ast(UserInputAst),
}

fn is_match_all(q: &str) -> bool {
    let q = q.trim();
    q.is_empty() || q == "*"
}

fn parse_user_query(q: &str) -> Result<UserQuery, IndexError> {
    if is_match_all(q) {
        return Ok(UserQuery::All);
    }
    let quoted = quote_address_values(q);
    match query_grammar::parse_query(&quoted) {
        Ok(ast) => {
            check_fields(&ast, q)?;
            Ok(UserQuery::Ast(complete_negations(ast)))
        }
        Err(_) => {
            let (_, errors) = query_grammar::parse_query_lenient(q);
            let first = errors.into_iter().next();
            // Point at an unbalanced quote or parenthesis where there is one: the
            // grammar reports those at the end of the query.
            let (position, message) = if let Some(pos) = unbalanced_position(q) {
                let what = if q[pos..].starts_with('"') {
                    "unclosed quote"
                } else if q[pos..].starts_with('(') {
                    "unclosed parenthesis"
                } else {
                    "unmatched closing parenthesis"
                };
                (pos, what.to_string())
            } else if let Some(e) = first {
                (e.pos.min(q.len()), e.message)
            } else if let Some(found) = dangling_operator(q) {
                found
            } else {
                (q.len(), "syntax error".to_string())
            };
            Err(IndexError::Query { position, message })
        }
    }
}

/// Quotes unquoted `from:`/`to:` values that contain a `:` (`from:sip:alice@example.com`),
/// which the grammar would otherwise read as a field name.
fn quote_address_values(q: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::with_capacity(q.len() + 8);
    let mut rest = q;
    let mut changed = false;
    while !rest.is_empty() {
        let at_word_start = out
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '(' | '+' | '-'));
        let prefix = ["from:", "to:"].into_iter().find(|p| rest.starts_with(p));
        if let (true, Some(prefix)) = (at_word_start, prefix) {
            let value_start = prefix.len();
            let value_len = rest[value_start..]
                .find(|c: char| c.is_whitespace() || c == ')')
                .unwrap_or(rest.len() - value_start);
            let value = &rest[value_start..value_start + value_len];
            out.push_str(prefix);
            if value.contains(':') && !value.contains(['"', '(']) {
                out.push('"');
                out.push_str(value);
                out.push('"');
                changed = true;
            } else {
                out.push_str(value);
            }
            rest = &rest[value_start + value_len..];
            continue;
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(q)
    }
}

/// An `AND`/`OR` without a term on each side, or a `NOT` with nothing after it.
fn dangling_operator(q: &str) -> Option<(usize, String)> {
    let mut tokens: Vec<(usize, &str)> = Vec::new();
    let mut start = None;
    for (i, c) in q.char_indices().chain(std::iter::once((q.len(), ' '))) {
        let separator = c.is_whitespace() || c == '(' || c == ')';
        match (start, separator) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                tokens.push((s, &q[s..i]));
                start = None;
            }
            _ => {}
        }
        if c == '(' || c == ')' {
            tokens.push((i, &q[i..i + 1]));
        }
    }
    let is_binary = |t: &str| t == "AND" || t == "OR";
    for (k, &(pos, tok)) in tokens.iter().enumerate() {
        let prev = k.checked_sub(1).map(|j| tokens[j].1);
        let next = tokens.get(k + 1).map(|t| t.1);
        let missing_left = prev.is_none_or(|p| is_binary(p) || p == "NOT" || p == "(");
        let missing_right = next.is_none_or(|n| is_binary(n) || n == ")");
        if is_binary(tok) && (missing_left || missing_right) {
            return Some((pos, format!("'{tok}' needs a term on each side")));
        }
        if tok == "NOT" && missing_right {
            return Some((pos, "'NOT' needs a term after it".to_string()));
        }
    }
    None
}

/// A clause made only of exclusions (`NOT b`, `-b`) means "everything except": give it
/// a match-all clause so that `a AND NOT b` and `a OR NOT b` work as written.
fn complete_negations(ast: UserInputAst) -> UserInputAst {
    match ast {
        UserInputAst::Clause(children) => {
            let mut children: Vec<_> = children
                .into_iter()
                .map(|(occur, child)| (occur, complete_negations(child)))
                .collect();
            if !children.is_empty()
                && children
                    .iter()
                    .all(|(occur, _)| *occur == Some(query_grammar::Occur::MustNot))
            {
                children.insert(
                    0,
                    (
                        Some(query_grammar::Occur::Must),
                        UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                    ),
                );
            }
            UserInputAst::Clause(children)
        }
        UserInputAst::Boost(child, boost) => {
            UserInputAst::Boost(Box::new(complete_negations(*child)), boost)
        }
        leaf @ UserInputAst::Leaf(_) => leaf,
    }
}

/// Position of an unbalanced quote or parenthesis (the opening one if unclosed).
fn unbalanced_position(q: &str) -> Option<usize> {
    let mut depth: Vec<usize> = Vec::new();
    let mut quote: Option<usize> = None;
    for (i, c) in q.char_indices() {
        match (c, quote) {
            ('"', None) => quote = Some(i),
            ('"', Some(_)) => quote = None,
            ('(', None) => depth.push(i),
            (')', None) if depth.pop().is_none() => return Some(i),
            _ => {}
        }
    }
    quote.or_else(|| depth.first().copied())
}

/// Rejects field names other than `body`, `from` and `to`, pointing at the offending field.
fn check_fields(ast: &UserInputAst, q: &str) -> Result<(), IndexError> {
    let bad = |name: &str| {
        let position = q.find(&format!("{name}:")).unwrap_or(0);
        IndexError::Query {
            position,
            message: format!("unknown field '{name}' (fields: body, from, to, type, room, time)"),
        }
    };
    let check = |name: Option<&str>| match name {
        Some(n) if !QUERY_FIELDS.contains(&n) => Err(bad(n)),
        _ => Ok(()),
    };
    match ast {
        UserInputAst::Clause(children) => {
            for (_, child) in children {
                check_fields(child, q)?;
            }
            Ok(())
        }
        UserInputAst::Boost(child, _) => check_fields(child, q),
        UserInputAst::Leaf(leaf) => match leaf.as_ref() {
            UserInputLeaf::Literal(lit) => {
                check(lit.field_name.as_deref())?;
                check_literal(lit, q)
            }
            UserInputLeaf::All => Ok(()),
            UserInputLeaf::Range {
                field: Some(field),
                lower,
                upper,
            } if field == "time" => {
                time_bound(lower, q)?;
                time_bound(upper, q)?;
                Ok(())
            }
            UserInputLeaf::Range { field, .. } | UserInputLeaf::Set { field, .. } => {
                check(field.as_deref())
            }
            UserInputLeaf::Exists { field } => check(Some(field)),
            UserInputLeaf::Regex { field, .. } => {
                check(field.as_deref())?;
                Err(IndexError::Query {
                    position: q.find('/').unwrap_or(0),
                    message: "regular expressions are not supported".to_string(),
                })
            }
        },
    }
}

fn filter(query: Box<dyn Query>) -> (Occur, Box<dyn Query>) {
    (Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0)))
}

/// A bound of `time:[A TO B]` in ns since the epoch: RFC 3339, or `YYYY-MM-DD`
/// (midnight UTC). `None` for an open bound (`*`).
fn time_bound(bound: &UserInputBound, q: &str) -> Result<Option<Bound<i64>>, IndexError> {
    let (text, inclusive) = match bound {
        UserInputBound::Unbounded => return Ok(None),
        UserInputBound::Inclusive(t) => (t, true),
        UserInputBound::Exclusive(t) => (t, false),
    };
    let t = text.trim();
    let ns = chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .and_then(|d| d.timestamp_nanos_opt())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .and_then(|d| d.and_utc().timestamp_nanos_opt())
        });
    match ns {
        Some(ns) if inclusive => Ok(Some(Bound::Included(ns))),
        Some(ns) => Ok(Some(Bound::Excluded(ns))),
        None => Err(IndexError::Query {
            position: q.find(t).unwrap_or(0),
            message: format!("invalid time '{t}' in time:[...] (expected RFC 3339 or YYYY-MM-DD)"),
        }),
    }
}

/// A `type:` value that names no record kind, a fuzzy distance past the maximum,
/// or `time:` without a range.
fn check_literal(lit: &query_grammar::UserInputLiteral, q: &str) -> Result<(), IndexError> {
    if lit.field_name.as_deref() == Some("time") {
        return Err(IndexError::Query {
            position: q.find("time:").unwrap_or(0),
            message: "time takes a range, e.g. time:[2026-11-04 TO 2026-11-05}".to_string(),
        });
    }
    if lit.field_name.as_deref() == Some("type") {
        let value = lit.phrase.trim().to_ascii_lowercase();
        if value != "chat" && DocType::from_kind(&value).is_none() {
            return Err(IndexError::Query {
                position: q.find(&format!("type:{}", lit.phrase)).unwrap_or(0),
                message: format!("unknown type '{}' (types: {TYPE_VALUES})", lit.phrase),
            });
        }
        return Ok(());
    }
    if lit.delimiter == Delimiter::None
        && let (word, false, Some(distance)) = split_term_operator(&lit.phrase)
        && distance > MAX_FUZZY_DISTANCE
    {
        return Err(IndexError::Query {
            position: q.find(&format!("{word}~")).map_or(0, |p| p + word.len()),
            message: format!(
                "fuzzy distance {distance} is too large (at most {MAX_FUZZY_DISTANCE})"
            ),
        });
    }
    Ok(())
}

/// The tantivy query of a request: the parsed query string and the request's filters.
fn build_query(
    index: &Index,
    f: Fields,
    parsed: UserQuery,
    req: &SearchRequest,
) -> Result<Box<dyn Query>, IndexError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    // Segment markers have no time, body or addresses: only a match-all part
    // of a query can match them, and a filter on kind, address or time rules
    // them out.
    let mut may_match_markers = match parsed {
        UserQuery::All => true,
        UserQuery::Ast(ast) => {
            let mut parser = QueryParser::for_index(index, vec![f.body]);
            parser.set_conjunction_by_default();
            let builder = AstBuilder {
                parser: &parser,
                f,
                q: &req.query,
            };
            clauses.push((Occur::Must, builder.build(&ast)?));
            has_match_all(&ast)
        }
    };
    let mut types: Vec<DocType> = req.types.clone();
    types.sort_by_key(|t| t.as_str());
    types.dedup();
    // Every kind (or none given) needs no filter: a filter that matches all
    // records would make every search visit every record.
    if !types.is_empty() && types.len() < DocType::ALL.len() {
        let kind = |t: &DocType| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(f.kind, t.as_str()),
                IndexRecordOption::Basic,
            ))
        };
        let kinds: Box<dyn Query> = match types.as_slice() {
            [one] => kind(one),
            many => Box::new(BooleanQuery::new(
                many.iter().map(|t| (Occur::Should, kind(t))).collect(),
            )),
        };
        clauses.push(filter(kinds));
        may_match_markers = false;
    }
    for (value, field) in [(&req.from, f.from_addr), (&req.to, f.to_addr)] {
        if let Some(v) = value.as_deref() {
            // An empty or unparseable address matches nothing rather than everything.
            let key = address_keys(v).into_iter().next().unwrap_or_default();
            clauses.push(filter(Box::new(TermQuery::new(
                Term::from_field_text(field, &key),
                IndexRecordOption::Basic,
            ))));
            may_match_markers = false;
        }
    }
    if req.since_ns.is_some() || req.until_ns.is_some() {
        let lower = req.since_ns.map_or(Bound::Unbounded, |t| {
            Bound::Included(Term::from_field_i64(f.time, t))
        });
        let upper = req.until_ns.map_or(Bound::Unbounded, |t| {
            Bound::Excluded(Term::from_field_i64(f.time, t))
        });
        clauses.push(filter(Box::new(RangeQuery::new(lower, upper))));
        may_match_markers = false;
    }
    if may_match_markers {
        if clauses.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        clauses.push((
            Occur::MustNot,
            Box::new(TermQuery::new(
                Term::from_field_text(f.kind, KIND_SEGMENT),
                IndexRecordOption::Basic,
            )),
        ));
    }
    // A lone clause is searched as itself, so that a single word keeps the
    // fast paths of a term query (pruning by relevance, a count without a scan).
    if let [(Occur::Must, _)] = clauses.as_slice()
        && let Some((_, only)) = clauses.pop()
    {
        return Ok(only);
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// Whether some part of the query matches every document (`*`, or a clause made
/// only of exclusions, which [`complete_negations`] gives a match-all part).
fn has_match_all(ast: &UserInputAst) -> bool {
    match ast {
        UserInputAst::Clause(children) => {
            children
                .iter()
                .all(|(occur, _)| *occur == Some(query_grammar::Occur::MustNot))
                || children.iter().any(|(_, child)| has_match_all(child))
        }
        UserInputAst::Boost(child, _) => has_match_all(child),
        UserInputAst::Leaf(leaf) => matches!(leaf.as_ref(), UserInputLeaf::All),
    }
}

fn run_search_parsed(
    index: &Index,
    reader: &IndexReader,
    f: Fields,
    parsed: UserQuery,
    req: &SearchRequest,
) -> Result<SearchPage, IndexError> {
    let by_relevance = req.sort == SortOrder::Relevance;
    let query = build_query(index, f, parsed, req)?;
    let limit = if req.limit == 0 {
        DEFAULT_LIMIT
    } else {
        req.limit
    };
    let wanted = limit.saturating_add(req.offset);
    let searcher = reader.searcher();
    let (ranked, total) = if by_relevance {
        let weight = query.weight(EnableScoring::enabled_from_searcher(&searcher))?;
        collect::by_relevance(&searcher, query.as_ref(), weight.as_ref(), wanted)?
    } else {
        let weight = query.weight(EnableScoring::disabled_from_searcher(&searcher))?;
        collect::in_time_order(&searcher, query.as_ref(), weight.as_ref(), wanted)?
    };
    let mut hits = Vec::with_capacity(ranked.len().saturating_sub(req.offset));
    for c in ranked.into_iter().skip(req.offset) {
        let doc: TantivyDocument = searcher.doc(DocAddress::new(c.segment, c.doc))?;
        let text = |field: Field, name: &'static str| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or(IndexError::CorruptDocument(name))
        };
        let name = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let kind = text(f.kind, "kind")?;
        hits.push(SearchHit {
            doc_type: DocType::from_kind(&kind).ok_or(IndexError::CorruptDocument("kind"))?,
            time_ns: c.time,
            from: text(f.from_uri, "from_uri")?,
            from_name: name(f.from_name),
            to: doc
                .get_all(f.to_uri)
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            to_name: name(f.to_name),
            body: text(f.body, "body")?,
            call_id: text(f.call_id, "call_id")?,
            cseq: doc
                .get_first(f.cseq)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(IndexError::CorruptDocument("cseq"))?,
            score: if by_relevance { c.score } else { 0.0 },
        });
    }
    Ok(SearchPage { total, hits })
}

/// A bare word with its operator: `budg*` is a prefix, `budgte~1` (or `budgte~`,
/// one edit) a fuzzy term. Returns the word, whether it is a prefix, and the fuzzy
/// distance if one was given.
fn split_term_operator(phrase: &str) -> (&str, bool, Option<u32>) {
    if let Some(word) = phrase.strip_suffix('*')
        && !word.is_empty()
    {
        return (word, true, None);
    }
    if let Some(tilde) = phrase.rfind('~')
        && tilde > 0
    {
        let digits = &phrase[tilde + 1..];
        if digits.is_empty() {
            return (&phrase[..tilde], false, Some(1));
        }
        if let Ok(d) = digits.parse::<u32>() {
            return (&phrase[..tilde], false, Some(d));
        }
    }
    (phrase, false, None)
}

/// Turns the parsed query into a tantivy query. Most leaves go to tantivy's query
/// parser; prefix terms (`budg*`), fuzzy terms (`budgte~1`), `type:` and `room:` are
/// built here, as the parser reads them otherwise (or not at all).
struct AstBuilder<'a> {
    parser: &'a QueryParser,
    f: Fields,
    q: &'a str,
}

impl AstBuilder<'_> {
    fn build(&self, ast: &UserInputAst) -> Result<Box<dyn Query>, IndexError> {
        match ast {
            UserInputAst::Clause(children) => {
                let mut clauses = Vec::with_capacity(children.len());
                for (occur, child) in children {
                    let occur = match occur {
                        // Bare words are combined with AND.
                        None | Some(query_grammar::Occur::Must) => Occur::Must,
                        Some(query_grammar::Occur::Should) => Occur::Should,
                        Some(query_grammar::Occur::MustNot) => Occur::MustNot,
                    };
                    clauses.push((occur, self.build(child)?));
                }
                if !clauses.is_empty() && clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
                    // A purely negative clause means "everything except".
                    clauses.insert(0, (Occur::Must, Box::new(AllQuery)));
                }
                // One required clause is that clause (tantivy scores it the same),
                // so that a lone word stays a term query (see `build_query`).
                if let [(Occur::Must | Occur::Should, _)] = clauses.as_slice()
                    && let Some((_, only)) = clauses.pop()
                {
                    return Ok(only);
                }
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            UserInputAst::Boost(child, boost) => Ok(Box::new(BoostQuery::new(
                self.build(child)?,
                boost.into_inner() as f32,
            ))),
            UserInputAst::Leaf(leaf) => self.build_leaf(leaf),
        }
    }

    fn build_leaf(&self, leaf: &UserInputLeaf) -> Result<Box<dyn Query>, IndexError> {
        if let UserInputLeaf::Range {
            field: Some(field),
            lower,
            upper,
        } = leaf
            && field == "time"
        {
            let term = |b: Option<Bound<i64>>| match b {
                None => Bound::Unbounded,
                Some(Bound::Included(t)) => Bound::Included(Term::from_field_i64(self.f.time, t)),
                Some(Bound::Excluded(t)) => Bound::Excluded(Term::from_field_i64(self.f.time, t)),
                Some(Bound::Unbounded) => Bound::Unbounded,
            };
            return Ok(Box::new(RangeQuery::new(
                term(time_bound(lower, self.q)?),
                term(time_bound(upper, self.q)?),
            )));
        }
        let UserInputLeaf::Literal(lit) = leaf else {
            return self.parse_leaf(leaf);
        };
        match lit.field_name.as_deref() {
            Some("room") => {
                let name = lit.phrase.trim().to_lowercase();
                if name.is_empty() {
                    return Ok(Box::new(EmptyQuery));
                }
                return Ok(self.room_posts(TermQuery::new(
                    Term::from_field_text(self.f.to_addr, &format!("{ROOM_PREFIX}{name}")),
                    IndexRecordOption::Basic,
                )));
            }
            Some("conference") => {
                let id = lit.phrase.trim().to_lowercase();
                if id.is_empty() {
                    return Ok(Box::new(EmptyQuery));
                }
                let key = if id.starts_with(CONFERENCE_PREFIX) {
                    id
                } else {
                    format!("{CONFERENCE_PREFIX}{id}")
                };
                return Ok(self.room_posts(TermQuery::new(
                    Term::from_field_text(self.f.to_addr, &key),
                    IndexRecordOption::Basic,
                )));
            }
            Some("type") => {
                let value = lit.phrase.trim().to_ascii_lowercase();
                if value == "chat" {
                    // Every recipient key that starts with the prefix is
                    // the user part of some room's URI.
                    return Ok(self.room_posts(FuzzyTermQuery::new_prefix(
                        Term::from_field_text(self.f.to_addr, ROOM_PREFIX),
                        0,
                        true,
                    )));
                }
                return match DocType::from_kind(&value) {
                    Some(t) => Ok(Box::new(TermQuery::new(
                        Term::from_field_text(self.f.kind, t.as_str()),
                        IndexRecordOption::Basic,
                    ))),
                    None => Err(IndexError::Query {
                        position: self.position_of(&format!("type:{}", lit.phrase)),
                        message: format!("unknown type '{}' (types: {TYPE_VALUES})", lit.phrase),
                    }),
                };
            }
            _ => {}
        }
        if lit.delimiter != Delimiter::None {
            return self.parse_leaf(leaf);
        }
        let field = match lit.field_name.as_deref() {
            Some("from") => self.f.from,
            Some("to") => self.f.to,
            _ => self.f.body,
        };
        let (word, prefix, distance) = split_term_operator(&lit.phrase);
        let prefix = prefix || lit.prefix;
        let distance = distance.unwrap_or(lit.slop);
        if prefix || distance > 0 {
            let tokens = self.tokens(word);
            let [token] = tokens.as_slice() else {
                // Several words: tantivy's phrase (prefix) query.
                return self.parse_leaf(leaf);
            };
            let term = Term::from_field_text(field, token);
            if prefix {
                // Every term that starts with the prefix (distance 0).
                return Ok(Box::new(FuzzyTermQuery::new_prefix(term, 0, true)));
            }
            if distance > MAX_FUZZY_DISTANCE {
                return Err(IndexError::Query {
                    position: self.position_of(&format!("{word}~")) + word.len(),
                    message: format!(
                        "fuzzy distance {distance} is too large (at most {MAX_FUZZY_DISTANCE})"
                    ),
                });
            }
            return Ok(Box::new(FuzzyTermQuery::new(term, distance as u8, true)));
        }
        self.parse_leaf(leaf)
    }

    /// IMs whose recipient matches `to_room`: posts to a room are archived
    /// as IMs to the room's URI (its copies to members come from the room,
    /// so they do not match), and the room is taken from that address
    /// rather than stored apart.
    fn room_posts(&self, to_room: impl Query) -> Box<dyn Query> {
        Box::new(BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.f.kind, DocType::Im.as_str()),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>,
            ),
            (Occur::Must, Box::new(to_room)),
        ]))
    }

    fn parse_leaf(&self, leaf: &UserInputLeaf) -> Result<Box<dyn Query>, IndexError> {
        self.parser
            .build_query_from_user_input_ast(UserInputAst::Leaf(Box::new(leaf.clone())))
            .map_err(|e| query_error(self.q, e))
    }

    /// The words of `text` as the body analyzer cuts them.
    fn tokens(&self, text: &str) -> Vec<String> {
        let mut analyzer = text_analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    fn position_of(&self, needle: &str) -> usize {
        self.q.find(needle).unwrap_or(0)
    }
}

fn query_error(q: &str, e: QueryParserError) -> IndexError {
    let position = match &e {
        QueryParserError::FieldDoesNotExist(name)
        | QueryParserError::FieldNotIndexed(name)
        | QueryParserError::FieldDoesNotHavePositionsIndexed(name) => {
            q.find(&format!("{name}:")).unwrap_or(0)
        }
        _ => 0,
    };
    IndexError::Query {
        position,
        message: e.to_string(),
    }
}

/// Segment ids present in the index at `dir`, read-only (see [`ImIndex::segment_ids`]).
/// A directory without an index gives an empty list.
pub fn indexed_segment_ids(dir: &Path) -> Result<Vec<String>, IndexError> {
    if !dir.join("meta.json").is_file() {
        return Ok(Vec::new());
    }
    let index = open_dir_index(dir)?;
    let f = fields(&index.schema())?;
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    segment_ids_in(&reader, f)
}

fn segment_ids_in(reader: &IndexReader, f: Fields) -> Result<Vec<String>, IndexError> {
    let searcher = reader.searcher();
    let query = TermQuery::new(
        Term::from_field_text(f.kind, KIND_SEGMENT),
        IndexRecordOption::Basic,
    );
    let mut ids = BTreeSet::new();
    for addr in searcher.search(&query, &DocSetCollector)? {
        let doc: TantivyDocument = searcher.doc(addr)?;
        let id = doc
            .get_first(f.segment)
            .and_then(|v| v.as_str())
            .ok_or(IndexError::CorruptDocument("segment"))?;
        ids.insert(id.to_string());
    }
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests;
