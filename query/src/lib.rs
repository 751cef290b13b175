//! Read-only access to the compliance archive: SQL over the Parquet tables
//! (DataFusion), full-text search over IMs (re-exported from the indexer), and
//! output formatting for the CLI.

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
pub use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement as SqlStatement};
use futures::StreamExt;

pub use sipvault_indexer::{
    DocType, IndexError, SearchHit, SearchPage, SearchRequest, SortOrder, TOTAL_COUNT_LIMIT, Total,
    search, search_count, search_page,
};

mod call_tally;
pub mod conversation;
mod csv;
pub mod export;
pub mod fixture;
pub mod reindex;
pub mod reports;
#[cfg(test)]
mod search_fixture_tests;

/// Name of the hive partition column every archive table carries.
pub const PARTITION_COLUMN: &str = "date";

pub use sipvault_schemas::archive_tables;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement would change something; the string names the statement kind.
    #[error(
        "only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE), not {0}"
    )]
    NotReadOnly(String),
    #[error("expected exactly one SQL statement, got {0}")]
    StatementCount(usize),
    #[error("SQL error: {0}")]
    DataFusion(DataFusionError),
    #[error("query stopped: it ran longer than the {} timeout", format_duration(*.0))]
    Timeout(Duration),
    #[error("query stopped: it needed more memory than the memory limit allows ({0})")]
    MemoryLimit(String),
    #[error("invalid memory size '{0}' (expected bytes, or a number with K, M, G or T, e.g. 512M)")]
    InvalidByteSize(String),
    #[error("invalid duration '{0}' (expected seconds, e.g. 30 or 2.5, or 500ms, 10s, 5m)")]
    InvalidDuration(String),
    #[error("{0}")]
    InvalidReport(String),
    /// A conversation id (Call-ID or `callid#cseq`) that names no archived IM.
    #[error("no archived IM has the Call-ID or key '{0}'")]
    UnknownConversation(String),
    #[error("formatting error: {0}")]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("unknown output format '{0}' (expected table, json or csv)")]
    UnknownFormat(String),
    #[error(
        "invalid time '{0}' (expected RFC 3339, YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS]' UTC, or a relative time like 15m, 2h, 7d)"
    )]
    InvalidTime(String),
    #[error("archive I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A DataFusion error that ran out of its memory pool is a [`QueryError::MemoryLimit`]
/// wherever it surfaces (planning, execution, or wrapped in an Arrow error).
impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(detail) => QueryError::MemoryLimit(detail.clone()),
            _ => QueryError::DataFusion(e),
        }
    }
}

/// Output format of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

impl FromStr for OutputFormat {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "json" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            _ => Err(QueryError::UnknownFormat(s.to_string())),
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputFormat::Table => "table",
            OutputFormat::Json => "json",
            OutputFormat::Csv => "csv",
        })
    }
}

// ---------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------

/// Bounds on one statement: how long it may run and how much memory its
/// operators may hold. `None` means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryLimits {
    pub timeout: Option<Duration>,
    /// Bytes for DataFusion's memory pool. Sorts and aggregations spill to
    /// disk when they reach it; operators that cannot spill (a hash join's
    /// build side) fail with [`QueryError::MemoryLimit`].
    pub memory_limit: Option<usize>,
}

/// How a session presents the archive's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnTypes {
    /// As the archive schemas declare them, with the `date` partition column
    /// as text: what `sipvault sql` shows and the readers in this crate expect.
    Archive,
    /// For reports, which aggregate whole tables: text columns as `Utf8View`,
    /// so Parquet's dictionary-encoded strings are decoded without copying
    /// every value, and `date` as a DATE, which a file turns into one number
    /// per row (grouped and compared as an integer, not as a string).
    Reports,
}

/// A DataFusion session with every archive table under `<data_dir>/archive/` registered.
///
/// Each table is a listing table over `<data>/archive/<table>/` with the hive partition
/// column `date` (Utf8). Files whose names start with `.` or that do not end in
/// `.parquet` (e.g. in-progress `.tmp` files) are ignored. A table without a directory
/// is registered empty.
pub async fn archive_context(data_dir: &Path) -> Result<SessionContext, QueryError> {
    archive_context_with_limits(data_dir, &QueryLimits::default()).await
}

/// [`archive_context`] whose memory pool is bounded by `limits.memory_limit`.
pub async fn archive_context_with_limits(
    data_dir: &Path,
    limits: &QueryLimits,
) -> Result<SessionContext, QueryError> {
    archive_context_with_types(data_dir, limits, ColumnTypes::Archive).await
}

/// [`archive_context_with_limits`] with the tables' columns presented as `types` says.
pub async fn archive_context_with_types(
    data_dir: &Path,
    limits: &QueryLimits,
    types: ColumnTypes,
) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_information_schema(true);
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = limits.memory_limit {
        // Tracking the largest consumers makes the error name what ran out.
        let top = NonZeroUsize::new(3).expect("3 is not zero");
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(bytes),
            top,
        )));
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    ctx.register_udaf(call_tally::call_tally_udaf());
    let archive = data_dir.join("archive");
    let partition_type = match types {
        ColumnTypes::Archive => DataType::Utf8,
        ColumnTypes::Reports => DataType::Date32,
    };
    for (name, file_schema) in archive_tables() {
        let file_schema = match types {
            ColumnTypes::Archive => file_schema,
            ColumnTypes::Reports => with_string_views(&file_schema),
        };
        let dir = archive.join(name);
        if dir.is_dir() {
            let table = listing_table(&dir, file_schema, &partition_type)?;
            ctx.register_table(name, Arc::new(table))?;
        } else {
            let mut fields: Vec<Field> = file_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(PARTITION_COLUMN, partition_type.clone(), false));
            let schema = Arc::new(Schema::new(fields));
            let table = MemTable::try_new(schema, vec![vec![]])?;
            ctx.register_table(name, Arc::new(table))?;
        }
    }
    Ok(ctx)
}

/// `schema` with its top-level `Utf8` columns as `Utf8View`.
fn with_string_views(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn listing_table(
    dir: &Path,
    file_schema: SchemaRef,
    partition_type: &DataType,
) -> Result<ListingTable, QueryError> {
    let dir = std::path::absolute(dir)?;
    let url = url::Url::from_directory_path(&dir).map_err(|()| {
        DataFusionError::Plan(format!("archive path {} is not a valid URL", dir.display()))
    })?;
    // The pattern applies to the file name (partition directories are skipped):
    // hidden (in-progress) files are ignored.
    let visible = glob::Pattern::new("[!.]*").expect("valid glob pattern");
    let table_url = ListingTableUrl::try_new(url, Some(visible))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![(PARTITION_COLUMN.to_string(), partition_type.clone())]);
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(options)
        .with_schema(file_schema);
    Ok(ListingTable::try_new(config)?)
}

/// Registers every archive table (listing tables over `<data>/archive/<table>/` with the
/// hive partition column `date`) and runs one read-only SQL statement.
///
/// Only queries (SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE) are accepted; anything
/// else gives [`QueryError::NotReadOnly`]. The result always holds at least one batch,
/// so the column names are known even when no row matches.
pub async fn run_sql(data_dir: &Path, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let stream = sql_stream(data_dir, sql, &QueryLimits::default()).await?;
    collect_stream(stream).await
}

/// Plans one read-only statement (as [`run_sql`]) and returns its result as a
/// stream of batches, so a caller can write rows out as they are produced.
/// `limits.memory_limit` bounds the session; the caller applies
/// `limits.timeout` around planning and consuming (see [`with_timeout`]).
pub async fn sql_stream(
    data_dir: &Path,
    sql: &str,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream, QueryError> {
    let mut statements = DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        return Err(QueryError::StatementCount(statements.len()));
    }
    let statement = statements.pop_front().expect("one statement");
    check_read_only(&statement)?;

    let ctx = archive_context_with_limits(data_dir, limits).await?;
    let state = ctx.state();
    let plan = state.statement_to_plan(statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::NotReadOnly(e.strip_backtrace()))?;
    let df = ctx.execute_logical_plan(plan).await?;
    Ok(df.execute_stream().await?)
}

/// Every batch of a stream; at least one (empty) batch so the schema is kept.
pub async fn collect_stream(
    mut stream: SendableRecordBatchStream,
) -> Result<Vec<RecordBatch>, QueryError> {
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// Runs `work` under an optional time limit; past it, `work` is dropped (which
/// cancels DataFusion's tasks) and the result is [`QueryError::Timeout`].
pub async fn with_timeout<T>(
    timeout: Option<Duration>,
    work: impl Future<Output = Result<T, QueryError>>,
) -> Result<T, QueryError> {
    match timeout {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or(Err(QueryError::Timeout(limit))),
    }
}

/// Writes a result stream to `out` as it arrives and returns the number of rows.
pub async fn write_stream<W: Write>(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: W,
) -> Result<u64, QueryError> {
    let mut writer = BatchWriter::new(out, format, stream.schema());
    while let Some(batch) = stream.next().await {
        writer.write(&batch?)?;
    }
    writer.finish()
}

/// Rejects every statement that is not a pure query.
fn check_read_only(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(s) => check_sql_read_only(s),
        DfStatement::Explain(e) => check_read_only(&e.statement),
        other => Err(QueryError::NotReadOnly(statement_kind(&other.to_string()))),
    }
}

fn check_sql_read_only(statement: &SqlStatement) -> Result<(), QueryError> {
    match statement {
        SqlStatement::Query(q) => check_set_expr(&q.body),
        SqlStatement::Explain { statement, .. } => check_sql_read_only(statement),
        SqlStatement::ExplainTable { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ShowFunctions { .. } => Ok(()),
        other => Err(QueryError::NotReadOnly(statement_kind(&other.to_string()))),
    }
}

fn check_set_expr(body: &SetExpr) -> Result<(), QueryError> {
    match body {
        SetExpr::Select(select) if select.into.is_some() => {
            Err(QueryError::NotReadOnly("SELECT INTO".to_string()))
        }
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => Ok(()),
        SetExpr::Query(q) => check_set_expr(&q.body),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            Err(QueryError::NotReadOnly(statement_kind(&s.to_string())))
        }
        #[allow(unreachable_patterns)]
        _ => Err(QueryError::NotReadOnly(
            "unsupported query form".to_string(),
        )),
    }
}

/// Leading keywords of a statement as SQL text: `INSERT`, `CREATE TABLE`,
/// `CREATE EXTERNAL TABLE`, `DROP VIEW`, `COPY`, `SET`, ...
fn statement_kind(sql: &str) -> String {
    const QUALIFIERS: [&str; 9] = [
        "OR",
        "REPLACE",
        "TEMPORARY",
        "TEMP",
        "EXTERNAL",
        "UNBOUNDED",
        "MATERIALIZED",
        "UNIQUE",
        "GLOBAL",
    ];
    let mut words = sql.split_whitespace().map(|w| {
        w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .to_ascii_uppercase()
    });
    let Some(first) = words.next() else {
        return "empty statement".to_string();
    };
    let mut kind = first.clone();
    if matches!(first.as_str(), "CREATE" | "DROP" | "ALTER") {
        for w in words {
            kind.push(' ');
            kind.push_str(&w);
            if !QUALIFIERS.contains(&w.as_str()) {
                break;
            }
        }
    }
    kind
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// Renders query results.
///
/// - `Table`: a pretty text table.
/// - `Json`: a JSON array with one object per row, one row per line; nulls are written
///   as `null`, timestamps as RFC 3339 strings, lists as arrays, binary values as
///   lower-case hex strings.
/// - `Csv`: CSV with a header line (RFC 4180 quoting, `\n` line ends); nulls are empty, timestamps RFC 3339,
///   lists as `[a, b]`, binary values as lower-case hex.
pub fn format_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    let Some(first) = batches.first() else {
        // No schema to go by: nothing to name, nothing to print.
        return Ok(match format {
            OutputFormat::Json => "[]\n".to_string(),
            OutputFormat::Table | OutputFormat::Csv => String::new(),
        });
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut writer = BatchWriter::new(&mut buf, format, first.schema());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    String::from_utf8(buf).map_err(|e| QueryError::Arrow(ArrowError::ExternalError(Box::new(e))))
}

/// Writes results batch by batch in one of the [`format_batches`] formats.
///
/// JSON and CSV rows go out as each batch arrives, so memory stays flat
/// however many rows a report has. A text table has to see every row to
/// size its columns, so it holds them until [`BatchWriter::finish`].
pub struct BatchWriter<W: Write> {
    out: W,
    format: OutputFormat,
    schema: SchemaRef,
    rows: u64,
    header_written: bool,
    table_batches: Vec<RecordBatch>,
    /// CSV text of one batch, reused so its allocation is made once.
    csv_buffer: Vec<u8>,
}

impl<W: Write> BatchWriter<W> {
    pub fn new(out: W, format: OutputFormat, schema: SchemaRef) -> Self {
        BatchWriter {
            out,
            format,
            schema,
            rows: 0,
            header_written: false,
            table_batches: Vec::new(),
            csv_buffer: Vec::new(),
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.format {
            OutputFormat::Table => self.table_batches.push(batch.clone()),
            OutputFormat::Json => self.write_json(batch)?,
            OutputFormat::Csv => self.write_csv(batch)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the output (JSON bracket, CSV header of an empty result, the
    /// table) and returns the number of rows written.
    pub fn finish(mut self) -> Result<u64, QueryError> {
        match self.format {
            OutputFormat::Table => {
                if self.table_batches.is_empty() {
                    self.table_batches
                        .push(RecordBatch::new_empty(self.schema.clone()));
                }
                let table =
                    datafusion::arrow::util::pretty::pretty_format_batches(&self.table_batches)?;
                writeln!(self.out, "{table}")?;
            }
            OutputFormat::Json => {
                self.out
                    .write_all(if self.rows == 0 { b"[]\n" } else { b"\n]\n" })?;
            }
            OutputFormat::Csv => self.write_csv_header()?,
        }
        self.out.flush()?;
        Ok(self.rows)
    }

    fn write_json(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        use datafusion::arrow::json::WriterBuilder;
        use datafusion::arrow::json::writer::LineDelimited;
        let mut lines: Vec<u8> = Vec::new();
        {
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut lines);
            writer.write(batch)?;
            writer.finish()?;
        }
        for (i, line) in lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let separator: &[u8] = if self.rows == 0 && i == 0 {
                b"[\n"
            } else {
                b",\n"
            };
            self.out.write_all(separator)?;
            self.out.write_all(line)?;
        }
        Ok(())
    }

    fn write_csv_header(&mut self) -> Result<(), QueryError> {
        if self.header_written || self.schema.fields().is_empty() {
            return Ok(());
        }
        self.header_written = true;
        let mut line = Vec::new();
        csv::push_record(
            &mut line,
            self.schema.fields().iter().map(|f| f.name().as_str()),
        );
        self.out.write_all(&line)?;
        Ok(())
    }

    fn write_csv(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        self.write_csv_header()?;
        self.csv_buffer.clear();
        csv::push_batch(&mut self.csv_buffer, batch)?;
        self.out.write_all(&self.csv_buffer)?;
        Ok(())
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T10:00:00.123Z`.
pub fn format_time_ns(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const TABLE_BODY_CHARS: usize = 80;

/// Body on one line: line breaks shown as `⏎`, other control characters as spaces,
/// cut to [`TABLE_BODY_CHARS`] characters with `…`.
fn one_line_body(body: &str) -> String {
    let flat: String = body
        .replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\n' | '\r' => '⏎',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if flat.chars().count() > TABLE_BODY_CHARS {
        let mut cut: String = flat.chars().take(TABLE_BODY_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// Renders search hits.
///
/// - `Table`: columns time (RFC 3339 UTC, ms), type (im, call, presence), from, to
///   (comma-joined), body (one line, cut to ~80 characters), call_id. An address
///   with an archived display name reads `Alice Smith <sip:alice@example.com>`
///   (see [`name_addr`]).
/// - `Json`: an array of objects with `time` (RFC 3339 UTC, ms), `type`, `time_ns`,
///   `from`, `from_name` (when archived), `to` (array), `to_name` (the first
///   recipient's, when archived), `body`, `call_id`, `cseq`, `score`.
/// - `Csv`: header `time,type,from,to,body,call_id,cseq,score,from_name,to_name`;
///   full bodies, addresses as URIs, names empty when none was archived.
pub fn format_hits(hits: &[SearchHit], format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let header = ["time", "type", "from", "to", "body", "call_id"];
            let rows: Vec<[String; 6]> = hits
                .iter()
                .map(|h| {
                    [
                        format_time_ns(h.time_ns),
                        h.doc_type.to_string(),
                        name_addr(h.from_name.as_deref(), &h.from),
                        h.to.iter()
                            .enumerate()
                            .map(|(i, uri)| name_addr(h.to_name.as_deref().filter(|_| i == 0), uri))
                            .collect::<Vec<_>>()
                            .join(", "),
                        one_line_body(&h.body),
                        h.call_id.clone(),
                    ]
                })
                .collect();
            text_table(&header, &rows)
        }
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct JsonHit<'a> {
                time: String,
                #[serde(flatten)]
                hit: &'a SearchHit,
            }
            let rows: Vec<String> = hits
                .iter()
                .map(|h| {
                    serde_json::to_string(&JsonHit {
                        time: format_time_ns(h.time_ns),
                        hit: h,
                    })
                    .expect("search hits serialize to JSON")
                })
                .collect();
            if rows.is_empty() {
                "[]\n".to_string()
            } else {
                format!("[\n{}\n]\n", rows.join(",\n"))
            }
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            csv::push_record(
                &mut out,
                [
                    "time",
                    "type",
                    "from",
                    "to",
                    "body",
                    "call_id",
                    "cseq",
                    "score",
                    "from_name",
                    "to_name",
                ]
                .into_iter(),
            );
            for h in hits {
                let cells = [
                    format_time_ns(h.time_ns),
                    h.doc_type.to_string(),
                    h.from.clone(),
                    h.to.join(", "),
                    h.body.clone(),
                    h.call_id.clone(),
                    h.cseq.to_string(),
                    h.score.to_string(),
                    h.from_name.clone().unwrap_or_default(),
                    h.to_name.clone().unwrap_or_default(),
                ];
                csv::push_record(&mut out, cells.iter().map(String::as_str));
            }
            String::from_utf8(out).expect("CSV of UTF-8 fields is UTF-8")
        }
    }
}

/// An address for people to read: `Alice Smith <sip:alice@example.com>` with
/// a display name, the bare URI without one. A name of other characters than
/// letters, digits, spaces and `.-_'` is quoted as SIP quotes it
/// (`"Smith, Alice" <sip:...>`), so that a comma in it does not read as the
/// end of an address in a comma-joined list.
pub fn name_addr(name: Option<&str>, uri: &str) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return uri.to_string();
    };
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '\''));
    if plain {
        return format!("{name} <{uri}>");
    }
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    format!("{quoted} <{uri}>")
}

/// A text table in the same style as the SQL table output.
fn text_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: [usize; N] = header.map(width);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (cell, w) in cells.zip(&widths) {
            s.push(' ');
            s.push_str(cell);
            s.push_str(&" ".repeat(w - width(cell) + 1));
            s.push('|');
        }
        s.push('\n');
        s
    };
    let mut out = rule.clone();
    out.push_str(&line(&mut header.iter().copied()));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out.push_str(&rule);
    out
}

// ---------------------------------------------------------------------------
// Time bounds
// ---------------------------------------------------------------------------

/// Parses a CLI time bound to ns since the Unix epoch: RFC 3339
/// (`2026-11-25T10:00:00Z`), `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DD HH:MM[:SS]` (UTC),
/// or a relative time before `now_ns`: a number followed by `s`, `m`, `h`, `d` or `w`
/// (`15m`, `2h`, `7d`).
pub fn parse_time(s: &str, now_ns: i64) -> Result<i64, QueryError> {
    use chrono::{NaiveDate, NaiveDateTime};
    let t = s.trim();
    let invalid = || QueryError::InvalidTime(s.to_string());
    if t.is_empty() {
        return Err(invalid());
    }
    if let Some(ns) = parse_relative(t, now_ns) {
        return ns.ok_or_else(invalid);
    }
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        return dt.timestamp_nanos_opt().ok_or_else(invalid);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return dt.and_utc().timestamp_nanos_opt().ok_or_else(invalid);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .and_then(|dt| dt.and_utc().timestamp_nanos_opt())
            .ok_or_else(invalid);
    }
    Err(invalid())
}

/// `None` if `t` is not of the relative form; `Some(None)` if it is but out of range.
fn parse_relative(t: &str, now_ns: i64) -> Option<Option<i64>> {
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    if split == 0 {
        return None;
    }
    let (digits, unit) = t.split_at(split);
    let unit_ns: i64 = match unit.trim() {
        "s" | "sec" | "secs" => 1_000_000_000,
        "m" | "min" | "mins" => 60 * 1_000_000_000,
        "h" | "hour" | "hours" => 3_600 * 1_000_000_000,
        "d" | "day" | "days" => 86_400 * 1_000_000_000,
        "w" | "week" | "weeks" => 7 * 86_400 * 1_000_000_000,
        _ => return None,
    };
    let n: i64 = match digits.parse() {
        Ok(n) => n,
        Err(_) => return Some(None),
    };
    Some(n.checked_mul(unit_ns).and_then(|d| now_ns.checked_sub(d)))
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// Parses a memory size: plain bytes (`1048576`) or a number with a binary
/// unit `K`, `M`, `G`, `T` (optionally followed by `B` or `iB`): `512M`,
/// `1.5GiB`, `64kb`.
pub fn parse_byte_size(s: &str) -> Result<usize, QueryError> {
    let invalid = || QueryError::InvalidByteSize(s.to_string());
    let (number, unit) = split_number_and_unit(s);
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let multiplier: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = (value * multiplier).round();
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as usize)
}

/// Parses a timeout: seconds (`30`, `2.5`) or a number with `ms`, `s`, `m`
/// or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, QueryError> {
    let invalid = || QueryError::InvalidDuration(s.to_string());
    let (number, unit) = split_number_and_unit(s);
    let seconds_per_unit = match unit {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        _ => return Err(invalid()),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(invalid)
}

/// `" 1.5 GiB"` → `("1.5", "GiB")`.
fn split_number_and_unit(s: &str) -> (&str, &str) {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    (number, unit.trim())
}

/// `1.5s`, `500ms`, `30s`: how a timeout is named in messages.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
