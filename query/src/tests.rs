use std::fs;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;
use sipvault_schemas::{ImMessageRow, SipMessageRow, im_messages_batch, sip_messages_batch};

use super::*;

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("valid test timestamp")
        .timestamp_nanos_opt()
        .expect("timestamp in range")
}

fn im(time: &str, call_id: &str, sender: &str, recipients: &[&str], body: &str) -> ImMessageRow {
    ImMessageRow {
        time_ns: ns(time),
        call_id: call_id.to_string(),
        cseq: 1,
        sender: sender.to_string(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        content_type: "text/plain".to_string(),
        body: body.to_string(),
        delivery_status: "delivered".to_string(),
        status: Some(200),
        from_display: None,
        to_display: None,
    }
}

fn sip(time: &str, method: Option<&str>, status: Option<u16>, raw: &[u8]) -> SipMessageRow {
    SipMessageRow {
        time_ns: ns(time),
        source: "tap".into(),
        direction: "in".into(),
        transport: "udp".into(),
        src: "192.0.2.1:5060".into(),
        dst: "192.0.2.2:5060".into(),
        method: method.map(str::to_string),
        status,
        reason: status.map(|_| "OK".to_string()),
        request_uri: method.map(|_| "sip:bob@example.com".to_string()),
        call_id: Some("c1".into()),
        cseq: Some(1),
        cseq_method: Some("MESSAGE".into()),
        from_uri: Some("sip:alice@example.com".into()),
        from_tag: Some("a1".into()),
        to_uri: Some("sip:bob@example.com".into()),
        to_tag: status.map(|_| "b1".to_string()),
        parse_error: None,
        raw: raw.to_vec(),
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    fs::create_dir_all(path.parent().expect("parent dir")).expect("create partition dir");
    let file = fs::File::create(path).expect("create parquet file");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).expect("parquet writer");
    writer.write(batch).expect("write batch");
    writer.close().expect("close parquet file");
}

fn im_file(data: &Path, date: &str, name: &str) -> PathBuf {
    data.join("archive/im_messages")
        .join(format!("date={date}"))
        .join(name)
}

fn im_rows_day1() -> Vec<ImMessageRow> {
    vec![
        im(
            "2026-11-24T09:30:00Z",
            "c1",
            "sip:alice@example.com",
            &["sip:bob@example.com"],
            "Lunch at noon?",
        ),
        im(
            "2026-11-24T09:31:15.250Z",
            "c2",
            "sip:bob@example.com",
            &["sip:alice@example.com"],
            "Yes, \"lunch\" sounds great",
        ),
    ]
}

fn im_rows_day2() -> Vec<ImMessageRow> {
    vec![
        im(
            "2026-11-25T10:00:00Z",
            "c3",
            "sip:alice@example.com",
            &["sip:bob@example.com", "sip:carol@example.com"],
            "Quarterly report is ready\nplease review, thanks",
        ),
        im(
            "2026-11-25T10:05:00Z",
            "c4",
            "sip:carol@example.com",
            &["sip:alice@example.com"],
            "The report has errors",
        ),
        im(
            "2026-11-25T11:00:00Z",
            "c5",
            "sip:dave@other.org",
            &[],
            "Café meeting tomorrow",
        ),
    ]
}

/// An archive with two days of IMs, one day of SIP messages, and files that must be
/// ignored (hidden, temporary, foreign extension).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    write_parquet(
        &im_file(d, "2026-11-24", "seg-a.parquet"),
        &im_messages_batch(&im_rows_day1()).unwrap(),
    );
    write_parquet(
        &im_file(d, "2026-11-25", "seg-b.parquet"),
        &im_messages_batch(&im_rows_day2()).unwrap(),
    );
    // In-progress and hidden files, with rows that must not be counted.
    let junk = im_messages_batch(&im_rows_day2()).unwrap();
    write_parquet(&im_file(d, "2026-11-25", ".seg-c.parquet"), &junk);
    write_parquet(&im_file(d, "2026-11-25", "seg-d.parquet.tmp"), &junk);
    write_parquet(&im_file(d, "2026-11-25", "seg-e.tmp"), &junk);
    write_parquet(&d.join("archive/im_messages/.staging/seg-f.parquet"), &junk);
    fs::write(im_file(d, "2026-11-25", "notes.txt"), "not parquet").unwrap();

    let sip_rows = vec![
        sip(
            "2026-11-25T10:00:00Z",
            Some("MESSAGE"),
            None,
            b"MESSAGE sip:bob@example.com SIP/2.0\r\n\r\n",
        ),
        sip(
            "2026-11-25T10:00:00.020Z",
            None,
            Some(200),
            b"SIP/2.0 200 OK\r\n\r\n",
        ),
    ];
    write_parquet(
        &d.join("archive/sip_messages/date=2026-11-25/seg-s.parquet"),
        &sip_messages_batch(&sip_rows).unwrap(),
    );
    dir
}

async fn sql(data: &Path, q: &str) -> Vec<RecordBatch> {
    run_sql(data, q)
        .await
        .unwrap_or_else(|e| panic!("query {q:?} failed: {e}"))
}

fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// The single Int64 value of a one-row, one-column result.
fn scalar_i64(batches: &[RecordBatch]) -> i64 {
    let rows: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(rows.len(), 1, "expected exactly one value, got {rows:?}");
    rows[0]
}

/// All values of the first column as strings (nulls as "NULL").
fn strings(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column(0);
        let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()).unwrap();
        for i in 0..b.num_rows() {
            out.push(if col.is_null(i) {
                "NULL".into()
            } else {
                f.value(i).to_string()
            });
        }
    }
    out
}

#[tokio::test]
async fn count_ignores_hidden_and_temporary_files() {
    let dir = fixture();
    let d = dir.path();
    assert_eq!(
        scalar_i64(&sql(d, "SELECT count(*) FROM im_messages").await),
        5
    );
    assert_eq!(
        scalar_i64(&sql(d, "SELECT count(*) FROM sip_messages").await),
        2
    );
}

#[tokio::test]
async fn date_partition_column_filters() {
    let dir = fixture();
    let d = dir.path();
    assert_eq!(
        scalar_i64(
            &sql(
                d,
                "SELECT count(*) FROM im_messages WHERE date = '2026-11-25'"
            )
            .await
        ),
        3
    );
    assert_eq!(
        scalar_i64(
            &sql(
                d,
                "SELECT count(*) FROM im_messages WHERE date < '2026-11-25'"
            )
            .await
        ),
        2
    );
    assert_eq!(
        strings(&sql(d, "SELECT DISTINCT date FROM im_messages ORDER BY date").await),
        ["2026-11-24", "2026-11-25"]
    );
    assert_eq!(
        scalar_i64(
            &sql(
                d,
                "SELECT count(*) FROM im_messages WHERE date = '2030-01-01'"
            )
            .await
        ),
        0
    );
}

#[tokio::test]
async fn select_body_text() {
    let dir = fixture();
    let d = dir.path();
    assert_eq!(
        strings(&sql(d, "SELECT body FROM im_messages ORDER BY time").await),
        [
            "Lunch at noon?",
            "Yes, \"lunch\" sounds great",
            "Quarterly report is ready\nplease review, thanks",
            "The report has errors",
            "Café meeting tomorrow",
        ]
    );
    assert_eq!(
        strings(
            &sql(
                d,
                "SELECT call_id FROM im_messages WHERE body ILIKE '%report%' ORDER BY call_id"
            )
            .await
        ),
        ["c3", "c4"]
    );
    // Timestamps keep their UTC time zone and compare with literals.
    assert_eq!(
        strings(
            &sql(
                d,
                "SELECT call_id FROM im_messages WHERE time >= '2026-11-25T10:05:00Z' ORDER BY time"
            )
            .await
        ),
        ["c4", "c5"]
    );
    // Lists can be unnested.
    assert_eq!(
        strings(
            &sql(d, "SELECT r FROM (SELECT unnest(recipients) AS r FROM im_messages WHERE call_id = 'c3')")
                .await
        ),
        ["sip:bob@example.com", "sip:carol@example.com"]
    );
}

#[tokio::test]
async fn joins_across_tables() {
    let dir = fixture();
    let got = sql(
        dir.path(),
        "SELECT count(*) FROM sip_messages s JOIN im_messages m ON s.call_id = m.call_id",
    )
    .await;
    assert_eq!(
        scalar_i64(&got),
        2,
        "both SIP messages of c1 join the IM c1"
    );
}

#[tokio::test]
async fn empty_archive_returns_zero_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing at all, then an existing but empty table directory.
    for setup in [None, Some("archive/im_messages")] {
        if let Some(sub) = setup {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let d = dir.path();
        assert_eq!(
            scalar_i64(&sql(d, "SELECT count(*) FROM im_messages").await),
            0
        );
        assert_eq!(
            scalar_i64(&sql(d, "SELECT count(*) FROM sip_messages").await),
            0
        );
        let batches = sql(d, "SELECT * FROM im_messages").await;
        assert_eq!(total_rows(&batches), 0);
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "time",
                "call_id",
                "cseq",
                "sender",
                "recipients",
                "content_type",
                "body",
                "delivery_status",
                "status",
                "from_display",
                "to_display",
                "date"
            ],
            "empty result still carries the columns (setup {setup:?})"
        );
    }
    // A data dir that does not exist at all.
    let missing = dir.path().join("nope");
    assert_eq!(
        scalar_i64(&sql(&missing, "SELECT count(*) FROM sip_messages").await),
        0
    );
}

#[tokio::test]
async fn other_read_only_statements_are_allowed() {
    let dir = fixture();
    let d = dir.path();
    for q in [
        "VALUES (1), (2)",
        "WITH x AS (SELECT call_id FROM im_messages) SELECT count(*) FROM x",
        "EXPLAIN SELECT * FROM im_messages",
        "SHOW TABLES",
        "DESCRIBE im_messages",
        "SHOW COLUMNS FROM sip_messages",
        "SELECT 1 UNION ALL SELECT 2",
        "  select 1 ; ",
    ] {
        let batches = sql(d, q).await;
        assert!(total_rows(&batches) > 0, "{q:?} returned no rows");
    }
    let tables = strings(
        &sql(d, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
            .await,
    );
    assert_eq!(
        tables,
        [
            "calls",
            "hep_raw",
            "im_messages",
            "presence",
            "room_events",
            "sip_messages"
        ]
    );
}

#[tokio::test]
async fn writes_and_settings_are_refused() {
    let dir = fixture();
    let d = dir.path();
    let cases = [
        ("INSERT INTO im_messages (call_id) VALUES ('x')", "INSERT"),
        (
            "insert into im_messages select * from im_messages",
            "INSERT",
        ),
        ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
        (
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "CREATE OR REPLACE VIEW",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x.csv'",
            "CREATE EXTERNAL TABLE",
        ),
        ("COPY (SELECT 1) TO '/tmp/sipvault-copy-test.csv'", "COPY"),
        (
            "COPY im_messages TO '/tmp/sipvault-copy-test.parquet'",
            "COPY",
        ),
        ("DROP TABLE im_messages", "DROP TABLE"),
        ("DROP VIEW IF EXISTS v", "DROP VIEW"),
        ("SET datafusion.execution.batch_size = 10", "SET"),
        ("DELETE FROM im_messages", "DELETE"),
        ("UPDATE im_messages SET body = 'x'", "UPDATE"),
        (
            "EXPLAIN ANALYZE INSERT INTO im_messages (call_id) VALUES ('x')",
            "INSERT",
        ),
        (
            "EXPLAIN COPY (SELECT 1) TO '/tmp/sipvault-copy-test.csv'",
            "COPY",
        ),
        ("SELECT 1 INTO t", "SELECT INTO"),
        ("RESET datafusion.execution.batch_size", "RESET"),
        ("BEGIN TRANSACTION", "BEGIN"),
    ];
    for (q, kind) in cases {
        match run_sql(d, q).await {
            Err(QueryError::NotReadOnly(k)) => {
                assert_eq!(k, kind, "statement kind reported for {q:?}");
                let msg = QueryError::NotReadOnly(k).to_string();
                assert!(msg.contains(kind), "message should name {kind}: {msg}");
            }
            other => panic!("{q:?} must be refused as not read-only, got {other:?}"),
        }
    }
    assert!(
        !Path::new("/tmp/sipvault-copy-test.csv").exists(),
        "COPY must not have run"
    );
    // The archive is untouched.
    assert_eq!(
        scalar_i64(&sql(d, "SELECT count(*) FROM im_messages").await),
        5
    );
}

#[tokio::test]
async fn exactly_one_statement() {
    let dir = fixture();
    for (q, n) in [
        ("SELECT 1; SELECT 2", 2),
        ("", 0),
        ("  ;  ", 0),
        ("SELECT 1; DROP TABLE im_messages", 2),
    ] {
        match run_sql(dir.path(), q).await {
            Err(QueryError::StatementCount(got)) => assert_eq!(got, n, "statement count of {q:?}"),
            other => panic!("{q:?} should be refused for its statement count, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_sql_is_an_error_not_a_panic() {
    let dir = fixture();
    for q in [
        "SELEC 1",
        "SELECT * FROM no_such_table",
        "SELECT nope FROM im_messages",
        "SELECT (",
    ] {
        match run_sql(dir.path(), q).await {
            Err(QueryError::DataFusion(_)) => {}
            other => panic!("{q:?} should fail with a SQL error, got {other:?}"),
        }
    }
}

// --- formatting golden outputs -------------------------------------------------

async fn im_sample(d: &Path) -> Vec<RecordBatch> {
    sql(
        d,
        "SELECT time, sender, recipients, body, status, date FROM im_messages ORDER BY time LIMIT 3",
    )
    .await
}

async fn sip_sample(d: &Path) -> Vec<RecordBatch> {
    sql(
        d,
        "SELECT time, method, status, raw FROM sip_messages ORDER BY time",
    )
    .await
}

#[tokio::test]
async fn format_table() {
    let dir = fixture();
    let im = format_batches(&im_sample(dir.path()).await, OutputFormat::Table).unwrap();
    insta::assert_snapshot!("im_table", im);
    let sip = format_batches(&sip_sample(dir.path()).await, OutputFormat::Table).unwrap();
    insta::assert_snapshot!("sip_table", sip);
}

#[tokio::test]
async fn format_json() {
    let dir = fixture();
    let im = format_batches(&im_sample(dir.path()).await, OutputFormat::Json).unwrap();
    insta::assert_snapshot!("im_json", im);
    let parsed: serde_json::Value = serde_json::from_str(&im).expect("JSON output parses");
    assert_eq!(
        parsed.as_array().map(Vec::len),
        Some(3),
        "one object per row"
    );
    let sip = format_batches(&sip_sample(dir.path()).await, OutputFormat::Json).unwrap();
    insta::assert_snapshot!("sip_json", sip);
    let parsed: serde_json::Value = serde_json::from_str(&sip).expect("JSON output parses");
    assert_eq!(
        parsed[1]["method"],
        serde_json::Value::Null,
        "nulls are explicit"
    );
    assert_eq!(
        parsed[1]["raw"],
        hex_of(b"SIP/2.0 200 OK\r\n\r\n"),
        "binary is hex"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn format_csv() {
    let dir = fixture();
    let im = format_batches(&im_sample(dir.path()).await, OutputFormat::Csv).unwrap();
    insta::assert_snapshot!("im_csv", im);
    let sip = format_batches(&sip_sample(dir.path()).await, OutputFormat::Csv).unwrap();
    insta::assert_snapshot!("sip_csv", sip);
}

#[tokio::test]
async fn format_empty_results() {
    let dir = tempfile::tempdir().unwrap();
    let batches = sql(dir.path(), "SELECT call_id, body FROM im_messages").await;
    assert_eq!(
        format_batches(&batches, OutputFormat::Table).unwrap(),
        "+---------+------+\n| call_id | body |\n+---------+------+\n+---------+------+\n"
    );
    assert_eq!(
        format_batches(&batches, OutputFormat::Json).unwrap(),
        "[]\n"
    );
    assert_eq!(
        format_batches(&batches, OutputFormat::Csv).unwrap(),
        "call_id,body\n"
    );
    assert_eq!(format_batches(&[], OutputFormat::Csv).unwrap(), "");
}

fn hits() -> Vec<SearchHit> {
    vec![
        SearchHit {
            doc_type: DocType::Im,
            time_ns: ns("2026-11-25T10:00:00.123456789Z"),
            from: "sip:alice@example.com".into(),
            from_name: Some("Alice Smith".into()),
            to: vec!["sip:bob@example.com".into(), "sip:carol@example.com".into()],
            to_name: Some("Jones, Bob \"B\"".into()),
            body: "Quarterly report is ready\r\nplease review, \"thanks\"".into(),
            call_id: "c3@host".into(),
            cseq: 7,
            score: 1.5,
        },
        SearchHit {
            doc_type: DocType::Im,
            time_ns: ns("2026-11-25T10:05:00Z"),
            from: "sip:carol@example.com".into(),
            from_name: None,
            to: vec!["sip:alice@example.com".into()],
            to_name: None,
            body: "A long message: ".to_string() + &"lorem ipsum ".repeat(10),
            call_id: "c4".into(),
            cseq: 1,
            score: 0.25,
        },
    ]
}

#[test]
fn format_hits_table() {
    let out = format_hits(&hits(), OutputFormat::Table);
    insta::assert_snapshot!("hits_table", out);
    assert!(
        out.contains("Quarterly report is ready⏎please review"),
        "newlines shown as ⏎"
    );
    assert_eq!(
        format_hits(&[], OutputFormat::Table),
        "+------+------+------+----+------+---------+\n| time | type | from | to | body | call_id |\n+------+------+------+----+------+---------+\n+------+------+------+----+------+---------+\n"
    );
}

#[test]
fn format_hits_json() {
    let out = format_hits(&hits(), OutputFormat::Json);
    insta::assert_snapshot!("hits_json", out);
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON output parses");
    assert_eq!(parsed[0]["time"], "2026-11-25T10:00:00.123Z");
    assert_eq!(
        parsed[1]["body"].as_str().map(str::len),
        Some(16 + 120),
        "full body in JSON"
    );
    assert_eq!(format_hits(&[], OutputFormat::Json), "[]\n");
}

#[test]
fn format_hits_csv() {
    let out = format_hits(&hits(), OutputFormat::Csv);
    insta::assert_snapshot!("hits_csv", out);
    assert_eq!(
        format_hits(&[], OutputFormat::Csv),
        "time,type,from,to,body,call_id,cseq,score,from_name,to_name\n"
    );
}

#[test]
fn name_addr_quotes_only_names_that_need_it() {
    let uri = "sip:alice@example.com";
    assert_eq!(name_addr(None, uri), uri);
    assert_eq!(name_addr(Some(""), uri), uri);
    assert_eq!(
        name_addr(Some("Alice O'Neil-Smith Jr."), uri),
        "Alice O'Neil-Smith Jr. <sip:alice@example.com>"
    );
    assert_eq!(name_addr(Some("Zoë"), uri), "Zoë <sip:alice@example.com>");
    assert_eq!(
        name_addr(Some(r#"Smith, "Al" \ co"#), uri),
        r#""Smith, \"Al\" \\ co" <sip:alice@example.com>"#
    );
}

#[test]
fn body_is_one_line_and_cut_in_tables() {
    assert_eq!(one_line_body("a\r\nb\nc\rd\te"), "a⏎b⏎c⏎d e");
    let long = "é".repeat(200);
    let cut = one_line_body(&long);
    assert_eq!(cut.chars().count(), TABLE_BODY_CHARS);
    assert!(cut.ends_with('…'));
    let exact = "x".repeat(TABLE_BODY_CHARS);
    assert_eq!(
        one_line_body(&exact),
        exact,
        "a body of exactly the limit is not cut"
    );
}

#[test]
fn output_format_from_str() {
    assert_eq!(
        "table".parse::<OutputFormat>().unwrap(),
        OutputFormat::Table
    );
    assert_eq!("json".parse::<OutputFormat>().unwrap(), OutputFormat::Json);
    assert_eq!("CSV".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
    match "xml".parse::<OutputFormat>() {
        Err(QueryError::UnknownFormat(f)) => assert_eq!(f, "xml"),
        other => panic!("xml should be an unknown format, got {other:?}"),
    }
    for f in [OutputFormat::Table, OutputFormat::Json, OutputFormat::Csv] {
        assert_eq!(
            f.to_string().parse::<OutputFormat>().unwrap(),
            f,
            "round trip of {f}"
        );
    }
}

// --- time parsing -----------------------------------------------------------------

#[test]
fn parse_time_absolute_forms() {
    let now = ns("2026-11-25T12:00:00Z");
    let cases = [
        ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00Z"),
        ("2026-11-25T10:00:00.5Z", "2026-11-25T10:00:00.5Z"),
        ("2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00Z"),
        ("2026-11-25t10:00:00z", "2026-11-25T10:00:00Z"),
        ("2026-11-25", "2026-11-25T00:00:00Z"),
        ("2026-11-25 10:00", "2026-11-25T10:00:00Z"),
        ("2026-11-25 10:00:30", "2026-11-25T10:00:30Z"),
        ("2026-11-25T10:00:30", "2026-11-25T10:00:30Z"),
        ("  2026-11-25  ", "2026-11-25T00:00:00Z"),
        ("1970-01-01", "1970-01-01T00:00:00Z"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parse_time(input, now).ok(),
            Some(ns(expected)),
            "parse_time({input:?})"
        );
    }
}

#[test]
fn parse_time_relative_forms() {
    let now = ns("2026-11-25T12:00:00Z");
    let cases = [
        ("15m", "2026-11-25T11:45:00Z"),
        ("2h", "2026-11-25T10:00:00Z"),
        ("7d", "2026-11-18T12:00:00Z"),
        ("30s", "2026-11-25T11:59:30Z"),
        ("1w", "2026-11-18T12:00:00Z"),
        ("0m", "2026-11-25T12:00:00Z"),
        ("3 days", "2026-11-22T12:00:00Z"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parse_time(input, now).ok(),
            Some(ns(expected)),
            "parse_time({input:?})"
        );
    }
}

#[test]
fn parse_time_rejects_garbage() {
    let now = ns("2026-11-25T12:00:00Z");
    for input in [
        "",
        "  ",
        "yesterday",
        "15",
        "m",
        "-5m",
        "15x",
        "2026-13-01",
        "2026-11-31",
        "2026-11-25 25:00",
        "99999999999999999999d",
        "999999999d",
        "2026/11/25",
    ] {
        match parse_time(input, now) {
            Err(QueryError::InvalidTime(s)) => assert_eq!(s, input),
            other => panic!("parse_time({input:?}) should fail, got {other:?}"),
        }
    }
}

#[test]
fn statement_kinds() {
    assert_eq!(statement_kind("insert into t values (1)"), "INSERT");
    assert_eq!(
        statement_kind("CREATE TEMPORARY TABLE t (a INT)"),
        "CREATE TEMPORARY TABLE"
    );
    assert_eq!(statement_kind("DROP SCHEMA s"), "DROP SCHEMA");
    assert_eq!(statement_kind("COPY t TO 'x'"), "COPY");
    assert_eq!(statement_kind(""), "empty statement");
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_byte_size("1048576").unwrap(), 1_048_576);
    assert_eq!(parse_byte_size("512M").unwrap(), 512 * 1024 * 1024);
    assert_eq!(parse_byte_size("64kb").unwrap(), 64 * 1024);
    assert_eq!(parse_byte_size("1.5GiB").unwrap(), 3 * 512 * 1024 * 1024);
    for bad in ["", "lots", "12X", "-1", "0", "M"] {
        assert!(
            matches!(parse_byte_size(bad), Err(QueryError::InvalidByteSize(_))),
            "{bad:?} must be refused"
        );
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2_500));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    for bad in ["", "soon", "0", "-3", "10 parsecs"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
    }
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(format_duration(Duration::from_millis(2_500)), "2.5s");
}

/// Batch by batch, the writer gives exactly what formatting the whole
/// result at once gives.
#[tokio::test]
async fn streamed_output_equals_whole_output() {
    let dir = fixture();
    let batches = im_sample(dir.path()).await;
    let one_row_batches: Vec<RecordBatch> = batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |i| b.slice(i, 1)))
        .collect();
    assert!(one_row_batches.len() > 1);
    for format in [OutputFormat::Table, OutputFormat::Json, OutputFormat::Csv] {
        let mut streamed: Vec<u8> = Vec::new();
        let mut writer = BatchWriter::new(&mut streamed, format, batches[0].schema());
        for batch in &one_row_batches {
            writer.write(batch).unwrap();
        }
        assert_eq!(writer.finish().unwrap(), 3, "{format}: row count");
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            format_batches(&batches, format).unwrap(),
            "{format}"
        );
    }
}

#[tokio::test]
async fn timeout_and_memory_limit_are_errors_of_their_own() {
    let slow = with_timeout(Some(Duration::from_millis(10)), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
    assert!(matches!(slow, Err(QueryError::Timeout(_))), "{slow:?}");
    let dir = fixture();
    let limits = QueryLimits {
        timeout: None,
        memory_limit: Some(1),
    };
    let join = "SELECT count(*) FROM im_messages a JOIN im_messages b ON a.body = b.body";
    let result = async {
        let stream = sql_stream(dir.path(), join, &limits).await?;
        collect_stream(stream).await
    }
    .await;
    assert!(
        matches!(result, Err(QueryError::MemoryLimit(_))),
        "{result:?}"
    );
}

#[test]
fn search_totals_serialize_with_their_relation() {
    use crate::{TOTAL_COUNT_LIMIT, Total};
    assert_eq!(
        serde_json::to_string(&Total::MoreThan(TOTAL_COUNT_LIMIT)).unwrap(),
        r#"{"relation":"more_than","value":10000}"#
    );
    assert_eq!(
        serde_json::to_string(&Total::Exact(7)).unwrap(),
        r#"{"relation":"exact","value":7}"#
    );
    assert_eq!(
        Total::MoreThan(TOTAL_COUNT_LIMIT).to_string(),
        "more than 10000"
    );
    assert_eq!(Total::Exact(7).to_string(), "7");
}

/// `batch` as a segment of schema v3 wrote it: without the display name
/// columns v4 added at the end of `im_messages` and `calls`.
fn as_v3(batch: &RecordBatch, v4_only: &[&str]) -> RecordBatch {
    let kept: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !v4_only.contains(&batch.schema().field(i).name().as_str()))
        .collect();
    assert_eq!(kept.len() + v4_only.len(), batch.num_columns());
    batch.project(&kept).expect("project v3 columns")
}

fn call_row(time: &str, call_id: &str, caller_display: Option<&str>) -> sipvault_schemas::CallRow {
    sipvault_schemas::CallRow {
        time_ns: ns(time),
        call_id: call_id.to_string(),
        source: "tap".into(),
        caller: "sip:alice@example.com".into(),
        callee: "sip:bob@example.com".into(),
        ring_ns: None,
        answer_ns: None,
        end_ns: Some(ns(time) + 1_000_000),
        setup_ms: None,
        duration_ms: None,
        disposition: "busy".into(),
        final_code: Some(486),
        reason: Some("Busy Here".into()),
        ended_by: Some("callee".into()),
        codecs: Vec::new(),
        caller_media: None,
        callee_media: None,
        legs: 1,
        reinvites: 0,
        transferred_from: None,
        caller_display: caller_display.map(str::to_string),
        callee_display: None,
    }
}

/// An archive written partly before schema v4 (no display name columns)
/// stays queryable and indexable: the old segments read as NULL names.
#[tokio::test]
async fn segments_of_schema_v3_read_as_null_display_names() {
    use crate::reindex::{SegmentRef, read_segment_docs, rebuild_index};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ims_v3 = as_v3(
        &im_messages_batch(&im_rows_day1()).unwrap(),
        &["from_display", "to_display"],
    );
    assert_eq!(ims_v3.num_columns(), 9, "the v3 im_messages columns");
    write_parquet(&im_file(d, "2026-11-24", "v3.parquet"), &ims_v3);
    let named = ImMessageRow {
        from_display: Some("Alice Smith".into()),
        to_display: Some("Bob Jones".into()),
        ..im_rows_day2().remove(0)
    };
    write_parquet(
        &im_file(d, "2026-11-25", "v4.parquet"),
        &im_messages_batch(&[named]).unwrap(),
    );
    let calls_v3 = as_v3(
        &sipvault_schemas::calls_batch(&[call_row("2026-11-24T08:00:00Z", "k3", None)]).unwrap(),
        &["caller_display", "callee_display"],
    );
    let calls_v4 = sipvault_schemas::calls_batch(&[call_row(
        "2026-11-25T08:00:00Z",
        "k4",
        Some("Alice Smith"),
    )])
    .unwrap();
    let call_file = |date: &str, name: &str| {
        d.join("archive/calls")
            .join(format!("date={date}"))
            .join(name)
    };
    write_parquet(&call_file("2026-11-24", "v3.parquet"), &calls_v3);
    write_parquet(&call_file("2026-11-25", "v4.parquet"), &calls_v4);

    let names = sql(
        d,
        "SELECT coalesce(from_display, 'NULL') || '/' || coalesce(to_display, 'NULL') \
         FROM im_messages ORDER BY time",
    )
    .await;
    assert_eq!(
        strings(&names),
        ["NULL/NULL", "NULL/NULL", "Alice Smith/Bob Jones"]
    );
    let callers = sql(
        d,
        "SELECT call_id || ':' || coalesce(caller_display, 'NULL') FROM calls ORDER BY time",
    )
    .await;
    assert_eq!(strings(&callers), ["k3:NULL", "k4:Alice Smith"]);

    let segments = [
        SegmentRef {
            table: "im_messages".into(),
            path: "archive/im_messages/date=2026-11-24/v3.parquet".into(),
        },
        SegmentRef {
            table: "im_messages".into(),
            path: "archive/im_messages/date=2026-11-25/v4.parquet".into(),
        },
        SegmentRef {
            table: "calls".into(),
            path: "archive/calls/date=2026-11-24/v3.parquet".into(),
        },
        SegmentRef {
            table: "calls".into(),
            path: "archive/calls/date=2026-11-25/v4.parquet".into(),
        },
    ];
    let old_docs = read_segment_docs(d, &segments[0]).unwrap();
    assert_eq!(old_docs.len(), 2);
    assert!(
        old_docs
            .iter()
            .all(|doc| doc.from_name.is_none() && doc.to_name.is_none())
    );
    let mut index = sipvault_indexer::ImIndex::open_or_create(&d.join("index")).unwrap();
    let summary = rebuild_index(&mut index, d, &segments, |_, _| {}).unwrap();
    assert_eq!(summary.documents, 5);
    let found = |query: &str| {
        let mut ids: Vec<String> = search(
            &d.join("index"),
            &SearchRequest {
                query: query.to_string(),
                ..SearchRequest::default()
            },
        )
        .unwrap()
        .into_iter()
        .map(|h| h.call_id)
        .collect();
        ids.sort();
        ids
    };
    assert_eq!(found("from:smith"), ["c3", "k4"]);
    assert_eq!(found("to:\"bob jones\""), ["c3"]);
    assert_eq!(found("from:alice"), ["c1", "c3", "k3", "k4"]);
}
