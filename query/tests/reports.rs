//! Reports as sqllogictest files, run against the generated fixture archive
//! (`sipvault_query::fixture`, built once per test run), and cross-checked
//! against DuckDB reading the same Parquet files.
//!
//! A record in `tests/slt/*.slt` is either plain SQL (run as `sipvault sql`
//! runs it) or a report invocation, written as on the command line after
//! `sipvault report`:
//!
//! ```text
//! query TIIRRR
//! report call-summary --since 2026-11-03 --until 2026-11-05
//! ----
//! ...
//! ```
//!
//! After an intended change, `SIPVAULT_SLT_COMPLETE=1 cargo test -p
//! sipvault-query --test reports` rewrites the expected outputs; review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sipvault_query::fixture::{FixtureSpec, generate_fixture};
use sipvault_query::reports::{ReportRequest, report_stream};
use sipvault_query::{OutputFormat, QueryError, QueryLimits, collect_stream, format_batches};
use sqllogictest::{DBOutput, DefaultColumnType};

/// The standard fixture, generated once per run of this test binary into
/// `target/tmp/report-fixture-<pid>`. Directories of earlier runs whose
/// process is gone are removed first.
fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let prefix = "report-fixture-";
        for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("{prefix}{}", std::process::id()));
        let started = Instant::now();
        let summary = generate_fixture(&dir, &FixtureSpec::standard()).expect("generate fixture");
        eprintln!(
            "fixture: {} IMs, {} calls in {} files, generated in {:.1}s",
            summary.ims,
            summary.calls,
            summary.files,
            started.elapsed().as_secs_f64()
        );
        dir
    })
}

/// Results with more values than this are compared by hash (`N values hashing to ...`).
const HASH_THRESHOLD: usize = 500;

/// The archive as a sqllogictest database.
struct ArchiveDb {
    data: PathBuf,
    runtime: tokio::runtime::Runtime,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

impl From<QueryError> for DbError {
    fn from(e: QueryError) -> Self {
        DbError(e.to_string())
    }
}

impl sqllogictest::DB for ArchiveDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let batches = match sql.trim().strip_prefix("report ") {
            Some(args) => {
                let req = parse_report_args(args)?;
                self.runtime.block_on(async {
                    let stream = report_stream(&self.data, &req, &QueryLimits::default()).await?;
                    collect_stream(stream).await
                })?
            }
            None => self
                .runtime
                .block_on(sipvault_query::run_sql(&self.data, sql))?,
        };
        rows_of(&batches)
    }
}

/// `NAME [--since T] [--until T] [--user U] [--by G] [--top N]`, as the CLI takes them.
fn parse_report_args(args: &str) -> Result<ReportRequest, DbError> {
    let mut words = args.split_whitespace();
    let name = words
        .next()
        .ok_or_else(|| DbError("report needs a name".into()))?;
    let mut req = ReportRequest::new(name.parse()?);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| DbError(format!("{flag} needs a value")))?;
        match flag {
            "--since" => req.since_ns = Some(sipvault_query::parse_time(value, 0)?),
            "--until" => req.until_ns = Some(sipvault_query::parse_time(value, 0)?),
            "--user" => req.user = Some(value.to_string()),
            "--by" => req.by = Some(value.parse()?),
            "--top" => {
                req.top = Some(
                    value
                        .parse()
                        .map_err(|_| DbError(format!("--top {value}: not a number")))?,
                )
            }
            _ => return Err(DbError(format!("unknown report option {flag}"))),
        }
    }
    Ok(req)
}

/// Values as sqllogictest text: NULL for nulls, `(empty)` for empty strings,
/// everything else as the CLI's table output shows it.
fn rows_of(batches: &[RecordBatch]) -> Result<DBOutput<DefaultColumnType>, DbError> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| DbError("no result schema".into()))?;
    let types = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => DefaultColumnType::FloatingPoint,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
            _ => DefaultColumnType::Any,
        })
        .collect();
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DbError(e.to_string()))?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, col)| {
                        if col.is_null(row) {
                            return "NULL".to_string();
                        }
                        let text = f.value(row).to_string();
                        if text.is_empty() {
                            "(empty)".to_string()
                        } else {
                            text
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(DBOutput::Rows { types, rows })
}

fn run_slt(name: &str) {
    let data = fixture_dir().to_path_buf();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/slt")
        .join(format!("{name}.slt"));
    let mut runner = sqllogictest::Runner::new(move || {
        let data = data.clone();
        async move {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| DbError(e.to_string()))?;
            Ok::<_, DbError>(ArchiveDb { data, runtime })
        }
    });
    runner.with_hash_threshold(HASH_THRESHOLD);
    let started = Instant::now();
    if std::env::var_os("SIPVAULT_SLT_COMPLETE").is_some() {
        futures::executor::block_on(runner.update_test_file(
            &file,
            " ",
            sqllogictest::default_validator,
            sqllogictest::default_normalizer,
            sqllogictest::default_column_validator,
        ))
        .unwrap_or_else(|e| panic!("completing {}: {e}", file.display()));
    } else if let Err(e) = runner.run_file(&file) {
        panic!("{}", e.display(false));
    }
    eprintln!("{name}.slt: {:.1}s", started.elapsed().as_secs_f64());
}

macro_rules! slt_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_slt(stringify!($name));
            }
        )*
    };
}

slt_tests!(
    fixture,
    cdr,
    call_summary,
    user_activity,
    top_talkers,
    im_volume,
    failed_calls
);

/// Sums of a report's integer columns, by column name.
async fn column_totals(args: &str) -> std::collections::BTreeMap<String, i64> {
    let mut totals = std::collections::BTreeMap::new();
    for row in report_json(fixture_dir(), args).await {
        for (column, value) in row.as_object().expect("rows are objects") {
            if let Some(n) = value.as_i64() {
                *totals.entry(column.clone()).or_insert(0) += n;
            }
        }
    }
    totals
}

fn totals_of(pairs: &[(&str, i64)]) -> std::collections::BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Report totals against what the fixture guarantees by construction
/// (see `sipvault_query::fixture`): 10000 calls of which 6500 answered and
/// 3500 not; 100000 IMs, 96000 delivered, 2000 failed, 2000 unanswered,
/// 110000 deliveries to recipients.
#[tokio::test]
async fn report_totals_match_the_fixture_construction() {
    let summary = column_totals("call-summary --by day").await;
    assert_eq!(summary["calls"], 10_000);
    assert_eq!(summary["answered"], 6_500);
    let by_user = column_totals("call-summary --by user").await;
    assert_eq!((by_user["calls"], by_user["answered"]), (10_000, 6_500));

    let failed: Vec<(Option<i64>, String, i64)> = report_json(fixture_dir(), "failed-calls")
        .await
        .iter()
        .map(|row| {
            (
                row["final_code"].as_i64(),
                row["disposition"].as_str().unwrap_or_default().to_string(),
                row["calls"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(Option<i64>, String, i64)> = [
        (Some(480), "no-answer", 1000),
        (Some(486), "busy", 1000),
        (Some(487), "cancelled", 500),
        (Some(603), "rejected", 500),
        (Some(503), "failed", 250),
        (None, "timeout", 250),
    ]
    .into_iter()
    .map(|(code, disposition, calls)| (code, disposition.to_string(), calls))
    .collect();
    assert_eq!(failed, expected, "most frequent first, then by code");

    let activity = column_totals("user-activity").await;
    assert_eq!(
        activity,
        totals_of(&[
            ("ims_sent", 100_000),
            ("ims_received", 110_000),
            ("calls_placed", 10_000),
            ("calls_received", 10_000),
        ])
    );

    for by in ["day", "hour"] {
        let volume = column_totals(&format!("im-volume --by {by}")).await;
        assert_eq!(volume["ims"], 100_000, "--by {by}");
        assert_eq!(
            (volume["delivered"], volume["failed"], volume["unanswered"]),
            (96_000, 2_000, 2_000),
            "--by {by}"
        );
    }

    // Every answered call has two parties: talk time adds up on both sides.
    let talkers = column_totals("top-talkers --top 1000").await;
    assert_eq!((talkers["calls"], talkers["answered"]), (20_000, 13_000));
}

// ---------------------------------------------------------------------------
// DuckDB cross-check
// ---------------------------------------------------------------------------

/// One report and the DuckDB query that must give the same rows. DuckDB
/// returns exact values; [`rounding_of`] says how far the report's rounded
/// ones may be from them.
struct CrossCheck {
    report: &'static str,
    duckdb_sql: String,
}

/// `call-summary` written independently for DuckDB: `key` is the grouping
/// expression (named as the report names it), `filter` a WHERE condition.
fn duckdb_call_summary(key: &str, filter: &str) -> String {
    format!(
        "SELECT {key}, count(*) AS calls,
            count(*) FILTER (WHERE disposition = 'answered') AS answered,
            100.0 * count(*) FILTER (WHERE disposition = 'answered') / count(*) AS asr_percent,
            avg(setup_ms) AS avg_setup_ms,
            avg(duration_ms) FILTER (WHERE disposition = 'answered') / 1000.0 AS avg_duration_s
          FROM calls WHERE {filter} GROUP BY 1 ORDER BY 1"
    )
}

/// `im-volume` written independently for DuckDB.
fn duckdb_im_volume(period: &str, filter: &str) -> String {
    format!(
        "SELECT {period} AS period, count(*) AS ims,
            count(*) FILTER (WHERE delivery_status = 'delivered') AS delivered,
            count(*) FILTER (WHERE delivery_status = 'failed') AS failed,
            count(*) FILTER (WHERE delivery_status = 'unanswered') AS unanswered,
            count(DISTINCT sender) AS senders
          FROM im_messages WHERE {filter} GROUP BY 1 ORDER BY 1"
    )
}

fn cross_checks() -> Vec<CrossCheck> {
    let day = "CAST(date AS VARCHAR)";
    vec![
        CrossCheck {
            report: "call-summary --by day",
            duckdb_sql: duckdb_call_summary(&format!("{day} AS day"), "TRUE"),
        },
        CrossCheck {
            report: "call-summary --by user --since 2026-11-03T12:00:00Z --until 2026-11-06",
            duckdb_sql: duckdb_call_summary(
                "caller AS \"user\"",
                "time >= TIMESTAMPTZ '2026-11-03 12:00:00+00' AND time < TIMESTAMPTZ '2026-11-06 00:00:00+00'",
            ),
        },
        CrossCheck {
            report: "call-summary --by day --user sip:dave@example.com",
            duckdb_sql: duckdb_call_summary(
                &format!("{day} AS day"),
                "caller = 'sip:dave@example.com' OR callee = 'sip:dave@example.com'",
            ),
        },
        CrossCheck {
            report: "im-volume --by hour",
            duckdb_sql: duckdb_im_volume(
                "strftime(date_trunc('hour', time), '%Y-%m-%dT%H:%M:%SZ')",
                "TRUE",
            ),
        },
        CrossCheck {
            report: "im-volume --by day --user sip:carol@example.com --since 2026-11-04 --until 2026-11-07T15:30:00Z",
            duckdb_sql: duckdb_im_volume(
                day,
                "(sender = 'sip:carol@example.com' OR list_contains(recipients, 'sip:carol@example.com'))
                 AND time >= TIMESTAMPTZ '2026-11-04 00:00:00+00' AND time < TIMESTAMPTZ '2026-11-07 15:30:00+00'",
            ),
        },
    ]
}

/// Half of the last digit a report column is rounded to: how far an exact
/// DuckDB value may be from it.
fn rounding_of(column: &str) -> f64 {
    match column {
        "asr_percent" => 0.005,
        "avg_setup_ms" | "avg_duration_s" => 0.05,
        _ => 0.0,
    }
}

const DUCKDB_SCRIPT: &str = r#"
import json, sys
import duckdb
request = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
for table in ("calls", "im_messages"):
    path = request["archive"] + "/" + table + "/**/*.parquet"
    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}', hive_partitioning = true)")
results = []
for sql in request["queries"]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    results.append([dict(zip(names, row)) for row in cur.fetchall()])
json.dump(results, sys.stdout, default=str)
"#;

fn duckdb_available() -> bool {
    Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn duckdb_results(archive: &Path, queries: &[&str]) -> Vec<Vec<serde_json::Value>> {
    use std::io::Write;
    let request = serde_json::json!({
        "archive": archive.to_str().expect("UTF-8 fixture path"),
        "queries": queries,
    });
    let mut child = Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("send queries to DuckDB");
    let out = child.wait_with_output().expect("DuckDB finishes");
    assert!(
        out.status.success(),
        "DuckDB failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("DuckDB results are JSON")
}

async fn report_json(data: &Path, args: &str) -> Vec<serde_json::Value> {
    let req = parse_report_args(args).expect("valid report arguments");
    let stream = report_stream(data, &req, &QueryLimits::default())
        .await
        .expect("report runs");
    let batches = collect_stream(stream).await.expect("report streams");
    let json = format_batches(&batches, OutputFormat::Json).expect("JSON output");
    serde_json::from_str::<serde_json::Value>(&json)
        .expect("report JSON parses")
        .as_array()
        .expect("an array of rows")
        .clone()
}

fn same_value(column: &str, ours: &serde_json::Value, duckdb: &serde_json::Value) -> bool {
    match (ours.as_f64(), duckdb.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= rounding_of(column) + 1e-9,
        _ => ours == duckdb,
    }
}

#[tokio::test]
async fn call_summary_and_im_volume_agree_with_duckdb() {
    if !duckdb_available() {
        eprintln!(
            "SKIPPED call_summary_and_im_volume_agree_with_duckdb: the Python duckdb module is not installed (pip install duckdb)"
        );
        return;
    }
    let data = fixture_dir();
    let checks = cross_checks();
    let queries: Vec<&str> = checks.iter().map(|c| c.duckdb_sql.as_str()).collect();
    let expected = duckdb_results(&data.join("archive"), &queries);
    for (check, duck_rows) in checks.iter().zip(expected) {
        let ours = report_json(data, check.report).await;
        assert!(!ours.is_empty(), "{}: no rows", check.report);
        assert_eq!(
            ours.len(),
            duck_rows.len(),
            "{}: row count differs from DuckDB",
            check.report
        );
        for (row, (a, b)) in ours.iter().zip(&duck_rows).enumerate() {
            let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
            let columns: Vec<&String> = a.keys().collect();
            assert_eq!(
                columns,
                b.keys().collect::<Vec<_>>(),
                "{}: columns differ",
                check.report
            );
            for column in columns {
                assert!(
                    same_value(column, &a[column], &b[column]),
                    "{} row {row} column {column}: sipvault {} vs DuckDB {}",
                    check.report,
                    a[column],
                    b[column]
                );
            }
        }
    }
}
