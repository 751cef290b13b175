//! Case export: what a search matches, fetched from the archive and written
//! in the formats a case file needs.
//!
//! Selection ([`select_case`]): what the search matches (the same query
//! language and time bounds as `sipvault search`, every hit, no limit): IMs
//! as their `im_messages` rows, calls as their `calls` rows, presence
//! changes as their `presence` rows, plus every `sip_messages` row whose
//! Call-ID is one of theirs (the MESSAGE or INVITE dialog, relay copies,
//! responses and retransmissions, the PUBLISH or NOTIFY). Rows are exactly
//! the archive's columns, without the `date` partition column.
//!
//! Formats: [`write_jsonl`], [`write_csv`], [`write_parquet`] for rows,
//! [`eml`] for conversations, [`pcap`] for raw SIP.

pub mod eml;
pub mod pcap;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{SchemaRef, TimestampNanosecondType, UInt32Type};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionContext, col, lit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{BatchWriter, IndexError, OutputFormat, QueryError, SearchRequest};
use eml::ImRecord;
use sipvault_indexer::DocType;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("archive column '{0}' is missing or of an unexpected type")]
    Column(&'static str),
    #[error("parquet write failed: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Pcap(#[from] pcap::PcapError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<DataFusionError> for ExportError {
    fn from(e: DataFusionError) -> Self {
        ExportError::Query(e.into())
    }
}

impl From<ArrowError> for ExportError {
    fn from(e: ArrowError) -> Self {
        ExportError::Query(e.into())
    }
}

impl From<IndexError> for ExportError {
    fn from(e: IndexError) -> Self {
        ExportError::Query(e.into())
    }
}

/// Rows of one archive table.
#[derive(Debug)]
pub struct TableRows {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl TableRows {
    pub fn count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The records of one case, each table by time.
#[derive(Debug)]
pub struct CaseRecords {
    /// `im_messages` rows the search matched.
    pub ims: TableRows,
    /// `calls` rows the search matched.
    pub calls: TableRows,
    /// `presence` rows the search matched.
    pub presence: TableRows,
    /// `sip_messages` rows with the Call-IDs of all of those.
    pub sip: TableRows,
}

/// Runs `request` (its `limit` is ignored: every hit counts) against the
/// index in `index_dir` and fetches the matching rows from the archive
/// under `data_dir`.
pub async fn select_case(
    data_dir: &Path,
    index_dir: &Path,
    request: &SearchRequest,
) -> Result<CaseRecords, ExportError> {
    let mut request = request.clone();
    request.limit = usize::MAX;
    request.offset = 0;
    let hits = crate::search(index_dir, &request)?;
    let of_type = |t: DocType| hits.iter().filter(move |h| h.doc_type == t);
    let ctx = crate::archive_context(data_dir).await?;

    // IMs and presence changes: only the rows the search matched, not every
    // row of a shared Call-ID (a session's IMs, a subscription's NOTIFYs).
    let im_keys: HashSet<(i64, String, u32)> = of_type(DocType::Im)
        .map(|h| (h.time_ns, h.call_id.clone(), h.cseq))
        .collect();
    let ims = matched_rows(&ctx, "im_messages", &im_keys, true).await?;
    let presence_keys: HashSet<(i64, String, u32)> = of_type(DocType::Presence)
        .map(|h| (h.time_ns, h.call_id.clone(), 0))
        .collect();
    let presence = matched_rows(&ctx, "presence", &presence_keys, false).await?;
    let call_ids = sorted_ids(of_type(DocType::Call).map(|h| h.call_id.clone()));
    let (schema, batches) =
        rows_with_call_ids(&ctx, "calls", &call_ids, &["time", "call_id"]).await?;
    let calls = TableRows { schema, batches };

    let all_ids = sorted_ids(hits.iter().map(|h| h.call_id.clone()));
    let (schema, batches) = rows_with_call_ids(&ctx, "sip_messages", &all_ids, &["time"]).await?;
    Ok(CaseRecords {
        ims,
        calls,
        presence,
        sip: TableRows { schema, batches },
    })
}

fn sorted_ids(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Rows of `table` whose (time, Call-ID[, CSeq]) is one of `keys`.
async fn matched_rows(
    ctx: &SessionContext,
    table: &str,
    keys: &HashSet<(i64, String, u32)>,
    by_cseq: bool,
) -> Result<TableRows, ExportError> {
    let call_ids = sorted_ids(keys.iter().map(|(_, id, _)| id.clone()));
    let order: &[&str] = if by_cseq {
        &["time", "call_id", "cseq"]
    } else {
        &["time", "call_id"]
    };
    let (schema, batches) = rows_with_call_ids(ctx, table, &call_ids, order).await?;
    let mut matched = Vec::with_capacity(batches.len());
    for batch in batches {
        let times = batch_column(&batch, "time")?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or(ExportError::Column("time"))?;
        let ids = string_column(&batch, "call_id")?;
        let cseqs = if by_cseq {
            Some(
                batch_column(&batch, "cseq")?
                    .as_primitive_opt::<UInt32Type>()
                    .ok_or(ExportError::Column("cseq"))?,
            )
        } else {
            None
        };
        let mask: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let cseq = cseqs.map_or(0, |c| c.value(i));
                Some(keys.contains(&(times.value(i), ids.value(i).to_string(), cseq)))
            })
            .collect();
        let kept = filter_record_batch(&batch, &mask)?;
        if kept.num_rows() > 0 {
            matched.push(kept);
        }
    }
    Ok(TableRows {
        schema,
        batches: matched,
    })
}

/// Rows of `table` whose `call_id` is one of `call_ids`, the table's own
/// columns only (no partition column), sorted by `order`.
async fn rows_with_call_ids(
    ctx: &SessionContext,
    table: &str,
    call_ids: &[String],
    order: &[&str],
) -> Result<(SchemaRef, Vec<RecordBatch>), ExportError> {
    let schema = crate::archive_tables()
        .into_iter()
        .find(|(name, _)| *name == table)
        .map(|(_, schema)| schema)
        .ok_or(ExportError::Column("table"))?;
    if call_ids.is_empty() {
        return Ok((schema, Vec::new()));
    }
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let batches = ctx
        .table(table)
        .await?
        .filter(col("call_id").in_list(call_ids.iter().map(|c| lit(c.as_str())).collect(), false))?
        .select_columns(&columns)?
        .sort(order.iter().map(|c| col(*c).sort(true, false)).collect())?
        .collect()
        .await?;
    // Listing tables may hand back their schema with other metadata; the
    // archive's own schema is the one written out.
    let batches = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

fn batch_column<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a dyn Array, ExportError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or(ExportError::Column(name))
}

fn string_column<'a>(
    batch: &'a RecordBatch,
    name: &'static str,
) -> Result<&'a StringArray, ExportError> {
    batch_column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or(ExportError::Column(name))
}

/// The `im_messages` rows as the records an `.eml` shows.
pub fn im_records(batches: &[RecordBatch]) -> Result<Vec<ImRecord>, ExportError> {
    let mut out = Vec::new();
    for batch in batches {
        let times = batch_column(batch, "time")?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or(ExportError::Column("time"))?;
        let call_ids = string_column(batch, "call_id")?;
        let cseqs = batch_column(batch, "cseq")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or(ExportError::Column("cseq"))?;
        let senders = string_column(batch, "sender")?;
        let recipients = batch_column(batch, "recipients")?
            .as_list_opt::<i32>()
            .ok_or(ExportError::Column("recipients"))?;
        let bodies = string_column(batch, "body")?;
        let statuses = string_column(batch, "delivery_status")?;
        // Display names came with schema v4; absent, every name is unknown.
        let optional = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (from_names, to_names) = (optional("from_display"), optional("to_display"));
        let name = |column: Option<&StringArray>, i: usize| {
            column
                .filter(|c| c.is_valid(i))
                .map(|c| c.value(i).to_string())
                .filter(|n| !n.is_empty())
        };
        for i in 0..batch.num_rows() {
            let list = recipients.value(i);
            let list = list
                .as_string_opt::<i32>()
                .ok_or(ExportError::Column("recipients"))?;
            out.push(ImRecord {
                time_ns: times.value(i),
                call_id: call_ids.value(i).to_string(),
                cseq: cseqs.value(i),
                sender: senders.value(i).to_string(),
                sender_name: name(from_names, i),
                recipients: list.iter().flatten().map(str::to_string).collect(),
                recipient_name: name(to_names, i),
                body: bodies.value(i).to_string(),
                delivery_status: statuses.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

/// Writes every `sip_messages` row's raw bytes as a pcap packet (see
/// [`pcap`]). Returns the packets written and the rows left out because
/// their message does not fit in one UDP datagram.
pub fn write_pcap(path: &Path, sip: &[RecordBatch]) -> Result<(u64, u64), ExportError> {
    let mut writer = pcap::PcapWriter::new(BufWriter::new(File::create(path)?))?;
    let mut oversized = 0;
    for batch in sip {
        let times = batch_column(batch, "time")?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or(ExportError::Column("time"))?;
        let srcs = string_column(batch, "src")?;
        let dsts = string_column(batch, "dst")?;
        let raws = batch_column(batch, "raw")?
            .as_binary_opt::<i32>()
            .ok_or(ExportError::Column("raw"))?;
        for i in 0..batch.num_rows() {
            let src = pcap::endpoint_or(srcs.value(i), pcap::PLACEHOLDER_SRC);
            let dst = pcap::endpoint_or(dsts.value(i), pcap::PLACEHOLDER_DST);
            match writer.write_message(times.value(i), src, dst, raws.value(i)) {
                Ok(()) => {}
                Err(pcap::PcapError::TooLarge(_)) => oversized += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let packets = writer.packets();
    writer
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok((packets, oversized))
}

/// One JSON object per line, nulls written out, times as RFC 3339 text.
pub fn write_jsonl(path: &Path, batches: &[RecordBatch]) -> Result<u64, ExportError> {
    use datafusion::arrow::json::WriterBuilder;
    use datafusion::arrow::json::writer::LineDelimited;
    let mut out = BufWriter::new(File::create(path)?);
    let mut rows = 0;
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut out);
        for batch in batches {
            writer.write(batch)?;
            rows += batch.num_rows() as u64;
        }
        writer.finish()?;
    }
    finish_file(out)?;
    Ok(rows)
}

/// CSV with a header line, the same rendering as `--format csv`.
pub fn write_csv(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64, ExportError> {
    let mut out = BufWriter::new(File::create(path)?);
    let rows = {
        let mut writer = BatchWriter::new(&mut out, OutputFormat::Csv, schema);
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?
    };
    finish_file(out)?;
    Ok(rows)
}

/// A Parquet file (zstd) with the archive table's schema.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<u64, ExportError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    let mut rows = 0;
    for batch in batches {
        writer.write(batch)?;
        rows += batch.num_rows() as u64;
    }
    writer.into_inner()?.sync_all()?;
    Ok(rows)
}

fn finish_file(out: BufWriter<File>) -> Result<(), ExportError> {
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` and syncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
