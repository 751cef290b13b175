//! The audit trail: every command that reads archived communications
//! (`search`, `report`, `sql`) leaves a row in the catalog's audit log, and
//! `sipvault audit list` shows them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use sipvault_catalog::{AuditEntry, AuditRecord, Catalog};
use sipvault_query::OutputFormat;

/// Who is reading: `--as`, else the OS login (`$USER`, `$LOGNAME`).
pub fn reader(as_user: Option<&str>) -> String {
    let named = |u: &String| !u.trim().is_empty();
    as_user
        .map(str::to_string)
        .filter(named)
        .or_else(|| {
            ["USER", "LOGNAME"]
                .into_iter()
                .find_map(|var| std::env::var(var).ok().filter(named))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Appends the outcome of one command to the audit log: the number of
/// results it returned, or the error it stopped with. A read that cannot
/// be audited is an error.
pub async fn record(
    data: &Path,
    user: &str,
    command: &str,
    query: &str,
    outcome: &anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await?;
    let (result_count, error) = match outcome {
        Ok(n) => (Some(i64::try_from(*n).unwrap_or(i64::MAX)), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    catalog
        .append_audit(&AuditRecord {
            user: user.to_string(),
            command: command.to_string(),
            query: query.to_string(),
            result_count,
            error,
        })
        .await
        .context("cannot write the audit log")?;
    catalog.close().await;
    Ok(())
}

/// `sipvault audit list`.
pub async fn list(data: &Path, since_ns: Option<i64>, format: OutputFormat) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await?;
    let entries = catalog.audit_log(since_ns).await?;
    catalog.close().await;
    let batch = audit_batch(&entries)?;
    print!("{}", sipvault_query::format_batches(&[batch], format)?);
    Ok(())
}

fn audit_batch(entries: &[AuditEntry]) -> anyhow::Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("user", DataType::Utf8, false),
        Field::new("command", DataType::Utf8, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("result_count", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
    ]));
    let mut id = Int64Builder::new();
    let mut user = StringBuilder::new();
    let mut command = StringBuilder::new();
    let mut query = StringBuilder::new();
    let mut result_count = Int64Builder::new();
    let mut error = StringBuilder::new();
    for e in entries {
        id.append_value(e.id);
        user.append_value(&e.record.user);
        command.append_value(&e.record.command);
        query.append_value(&e.record.query);
        result_count.append_option(e.record.result_count);
        error.append_option(e.record.error.as_deref());
    }
    let time = TimestampNanosecondArray::from_iter_values(entries.iter().map(|e| e.time_ns))
        .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(time),
        Arc::new(user.finish()),
        Arc::new(command.finish()),
        Arc::new(query.finish()),
        Arc::new(result_count.finish()),
        Arc::new(error.finish()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
