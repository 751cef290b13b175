//! `sipvault sql`, `report`, `conversation` and `timeline`: run one query over the archive
//! under the `--timeout` and `--memory-limit` bounds and write its rows to
//! stdout as they arrive.
//!
//! The query runs on a runtime of its own. DataFusion operators yield only
//! between batches, so a runaway join can hold a thread for seconds after
//! its timeout; on a separate runtime it cannot delay the audit write or the
//! exit, and it is abandoned when the command returns.

use std::io::Write;
use std::path::{Path, PathBuf};

use sipvault_query::reports::{ReportRequest, report_stream};
use sipvault_query::{
    OutputFormat, QueryError, QueryLimits, SendableRecordBatchStream, sql_stream, with_timeout,
    write_stream,
};

/// Runs one read-only SQL statement; returns the number of rows written.
pub async fn sql(
    data: &Path,
    statement: &str,
    format: OutputFormat,
    limits: QueryLimits,
) -> Result<u64, QueryError> {
    let (data, statement) = (data.to_path_buf(), statement.to_string());
    bounded(limits, async move {
        let stream = sql_stream(&data, &statement, &limits).await?;
        write_to_stdout(stream, format).await
    })
    .await
}

/// Runs one report; returns the number of rows written.
pub async fn report(
    data: &Path,
    request: &ReportRequest,
    format: OutputFormat,
    limits: QueryLimits,
) -> Result<u64, QueryError> {
    let (data, request): (PathBuf, ReportRequest) = (data.to_path_buf(), request.clone());
    bounded(limits, async move {
        let stream = report_stream(&data, &request, &limits).await?;
        write_to_stdout(stream, format).await
    })
    .await
}

/// Runs `work` on a runtime of its own under the `--timeout` bound.
pub(crate) async fn bounded(
    limits: QueryLimits,
    work: impl Future<Output = Result<u64, QueryError>> + Send + 'static,
) -> Result<u64, QueryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sipvault-query")
        .enable_all()
        .build()?;
    let task = runtime.spawn(work);
    let outcome = with_timeout(limits.timeout, async {
        task.await
            .map_err(|e| QueryError::Io(std::io::Error::other(e)))?
    })
    .await;
    runtime.shutdown_background();
    outcome
}

pub(crate) async fn write_to_stdout(
    stream: SendableRecordBatchStream,
    format: OutputFormat,
) -> Result<u64, QueryError> {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let rows = write_stream(stream, format, &mut out).await?;
    out.flush()?;
    Ok(rows)
}
