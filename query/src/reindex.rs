//! Building the search index from the Parquet archive.
//!
//! The index is keyed by segment: each document carries the path of the archive
//! segment it came from, as the catalog manifest records it
//! (`archive/<table>/date=YYYY-MM-DD/<segment>.parquet`). [`rebuild_index`]
//! (what `sipvault reindex` runs) indexes every `im_messages`, `calls` and
//! `presence` segment afresh; [`repair_index`] (run when the server starts) adds
//! the segments the manifest lists but the index lacks, e.g. after a crash between
//! sealing a segment and indexing it, and drops what the manifest no longer lists.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimestampNanosecondType, UInt16Type, UInt32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sipvault_catalog::SegmentEntry;
use sipvault_indexer::{DocType, ImIndex, IndexDoc};

use crate::QueryError;

/// One archive segment to index: its table and its path relative to the data directory
/// (also its id in the index).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentRef {
    pub table: String,
    pub path: String,
}

/// The segments of the manifest whose rows are searchable, in manifest order.
pub fn indexable_segments(entries: &[SegmentEntry]) -> Vec<SegmentRef> {
    entries
        .iter()
        .filter(|e| DocType::for_table(&e.table_name).is_some())
        .map(|e| SegmentRef {
            table: e.table_name.clone(),
            path: e.path.clone(),
        })
        .collect()
}

/// What a rebuild or repair did.
#[derive(Debug, Default)]
pub struct IndexSummary {
    /// Segments (re)indexed.
    pub segments: usize,
    /// Documents in those segments.
    pub documents: usize,
    /// Segments dropped from the index because the manifest does not list them.
    pub removed: usize,
    /// Segments a repair could not read (path and why); the others are indexed.
    pub failed: Vec<(String, QueryError)>,
}

/// Segments are committed in batches of this many during a rebuild.
const SEGMENTS_PER_COMMIT: usize = 64;

/// Empties the index and indexes every segment of `segments`, reading each from
/// `<data_dir>/<path>`. `progress(done, total)` is called after each segment.
pub fn rebuild_index(
    index: &mut ImIndex,
    data_dir: &Path,
    segments: &[SegmentRef],
    mut progress: impl FnMut(usize, usize),
) -> Result<IndexSummary, QueryError> {
    let mut summary = IndexSummary {
        removed: index.segment_ids()?.len(),
        ..IndexSummary::default()
    };
    index.clear()?;
    for (n, seg) in segments.iter().enumerate() {
        let docs = read_segment_docs(data_dir, seg)?;
        index.stage_documents(&seg.path, &docs)?;
        summary.segments += 1;
        summary.documents += docs.len();
        if (n + 1) % SEGMENTS_PER_COMMIT == 0 {
            index.commit()?;
        }
        progress(n + 1, segments.len());
    }
    index.commit()?;
    Ok(summary)
}

/// Brings the index in line with the manifest: indexes the segments of `segments`
/// that the index lacks and removes indexed segments that `segments` does not list.
/// A segment that cannot be read is reported in [`IndexSummary::failed`] and skipped.
pub fn repair_index(
    index: &mut ImIndex,
    data_dir: &Path,
    segments: &[SegmentRef],
) -> Result<IndexSummary, QueryError> {
    let indexed: BTreeSet<String> = index.segment_ids()?.into_iter().collect();
    let listed: BTreeSet<&str> = segments.iter().map(|s| s.path.as_str()).collect();
    let mut summary = IndexSummary::default();
    for id in indexed.iter().filter(|id| !listed.contains(id.as_str())) {
        index.remove_segment(id)?;
        summary.removed += 1;
    }
    for seg in segments.iter().filter(|s| !indexed.contains(&s.path)) {
        let docs = match read_segment_docs(data_dir, seg) {
            Ok(docs) => docs,
            Err(e) => {
                summary.failed.push((seg.path.clone(), e));
                continue;
            }
        };
        index.add_documents(&seg.path, &docs)?;
        summary.segments += 1;
        summary.documents += docs.len();
    }
    Ok(summary)
}

/// The searchable records of one archive segment. A table that is not indexed gives none.
pub fn read_segment_docs(data_dir: &Path, seg: &SegmentRef) -> Result<Vec<IndexDoc>, QueryError> {
    let Some(doc_type) = DocType::for_table(&seg.table) else {
        return Ok(Vec::new());
    };
    let path = data_dir.join(&seg.path);
    let parquet_error = |e: datafusion::parquet::errors::ParquetError| {
        QueryError::Io(std::io::Error::other(format!("{}: {e}", path.display())))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let mut docs = Vec::new();
    for batch in reader {
        let batch = batch?;
        match doc_type {
            DocType::Im => im_docs(&batch, &mut docs)?,
            DocType::Call => call_docs(&batch, &mut docs)?,
            DocType::Presence => presence_docs(&batch, &mut docs)?,
        }
    }
    Ok(docs)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, QueryError> {
    batch.column_by_name(name).ok_or_else(|| {
        QueryError::Io(std::io::Error::other(format!(
            "archive segment has no column '{name}'"
        )))
    })
}

fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray, QueryError> {
    Ok(cast(column(batch, name)?, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// A nullable string column that segments of older schema versions lack
/// (display names came with v4): all null there.
fn strings_since_v4(batch: &RecordBatch, name: &str) -> Result<StringArray, QueryError> {
    match batch.column_by_name(name) {
        Some(_) => strings(batch, name),
        None => Ok(StringArray::new_null(batch.num_rows())),
    }
}

fn times(batch: &RecordBatch) -> Result<Vec<i64>, QueryError> {
    let col = column(batch, "time")?;
    let a = col
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| QueryError::Io(std::io::Error::other("column 'time' is not a timestamp")))?;
    Ok(a.values().to_vec())
}

/// Lists of strings, one list per row (empty for null).
fn string_lists(batch: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>, QueryError> {
    let list = column(batch, name)?.as_list_opt::<i32>().ok_or_else(|| {
        QueryError::Io(std::io::Error::other(format!(
            "column '{name}' is not a list"
        )))
    })?;
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if list.is_null(i) {
            out.push(Vec::new());
            continue;
        }
        let values = cast(&list.value(i), &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        out.push(
            (0..values.len())
                .filter(|&j| values.is_valid(j))
                .map(|j| values.value(j).to_string())
                .collect(),
        );
    }
    Ok(out)
}

fn im_docs(batch: &RecordBatch, docs: &mut Vec<IndexDoc>) -> Result<(), QueryError> {
    let time = times(batch)?;
    let call_id = strings(batch, "call_id")?;
    let cseq = column(batch, "cseq")?;
    let cseq = cseq
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| QueryError::Io(std::io::Error::other("column 'cseq' is not u32")))?;
    let sender = strings(batch, "sender")?;
    let recipients = string_lists(batch, "recipients")?;
    let body = strings(batch, "body")?;
    let from_display = strings_since_v4(batch, "from_display")?;
    let to_display = strings_since_v4(batch, "to_display")?;
    for (i, to) in recipients.into_iter().enumerate() {
        docs.push(IndexDoc {
            doc_type: DocType::Im,
            time_ns: time[i],
            from: sender.value(i).to_string(),
            from_name: opt_str(&from_display, i),
            to,
            to_name: opt_str(&to_display, i),
            body: body.value(i).to_string(),
            call_id: call_id.value(i).to_string(),
            cseq: cseq.value(i),
        });
    }
    Ok(())
}

fn call_docs(batch: &RecordBatch, docs: &mut Vec<IndexDoc>) -> Result<(), QueryError> {
    let time = times(batch)?;
    let call_id = strings(batch, "call_id")?;
    let caller = strings(batch, "caller")?;
    let callee = strings(batch, "callee")?;
    let caller_display = strings_since_v4(batch, "caller_display")?;
    let callee_display = strings_since_v4(batch, "callee_display")?;
    let disposition = strings(batch, "disposition")?;
    let reason = strings(batch, "reason")?;
    let code = column(batch, "final_code")?;
    let code = code
        .as_primitive_opt::<UInt16Type>()
        .ok_or_else(|| QueryError::Io(std::io::Error::other("column 'final_code' is not u16")))?;
    for (i, &time_ns) in time.iter().enumerate() {
        let row = sipvault_schemas::CallRow {
            time_ns,
            call_id: call_id.value(i).to_string(),
            source: String::new(),
            caller: caller.value(i).to_string(),
            callee: callee.value(i).to_string(),
            ring_ns: None,
            answer_ns: None,
            end_ns: None,
            setup_ms: None,
            duration_ms: None,
            disposition: disposition.value(i).to_string(),
            final_code: code.is_valid(i).then(|| code.value(i)),
            reason: opt_str(&reason, i),
            ended_by: None,
            codecs: Vec::new(),
            caller_media: None,
            callee_media: None,
            legs: 0,
            reinvites: 0,
            transferred_from: None,
            caller_display: opt_str(&caller_display, i),
            callee_display: opt_str(&callee_display, i),
        };
        docs.push(IndexDoc::from(&row));
    }
    Ok(())
}

fn presence_docs(batch: &RecordBatch, docs: &mut Vec<IndexDoc>) -> Result<(), QueryError> {
    let time = times(batch)?;
    let entity = strings(batch, "entity")?;
    let basic = strings(batch, "basic")?;
    let activities = string_lists(batch, "activities")?;
    let note = strings(batch, "note")?;
    let call_id = strings(batch, "call_id")?;
    for (i, activities) in activities.into_iter().enumerate() {
        let row = sipvault_schemas::PresenceRow {
            time_ns: time[i],
            source: String::new(),
            entity: entity.value(i).to_string(),
            basic: opt_str(&basic, i),
            activities,
            note: opt_str(&note, i),
            via: String::new(),
            call_id: call_id.value(i).to_string(),
            expires: None,
            etag: None,
            subscription_state: None,
        };
        docs.push(IndexDoc::from(&row));
    }
    Ok(())
}
