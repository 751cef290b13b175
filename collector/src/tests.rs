//! The whole collector pipeline against a real catalog and real files.

use std::sync::Arc;
use std::time::Duration;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sipvault_catalog::Catalog;
use sipvault_schemas::{CapturedMessage, Direction, Transport};
use tokio::sync::mpsc;

use crate::{CollectorConfig, CollectorStats, Inputs, SegmentLimits, run, writer::sha256_file};

/// A live pipeline whose segments roll at `max_rows` (never by size or age).
fn config(data_dir: &std::path::Path, max_rows: usize) -> CollectorConfig {
    CollectorConfig {
        data_dir: data_dir.to_path_buf(),
        limits: SegmentLimits {
            max_rows,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        },
        im_answer_timeout: Duration::from_secs(32),
        calls: crate::calls::CallConfig::default(),
        arrivals: Default::default(),
        live: true,
        wal: None,
    }
}

/// A collector running on `config` over a fresh catalog in `dir`, with
/// its inputs, its sealed-segment announcements and its counters.
struct Running {
    catalog: Catalog,
    tx: mpsc::Sender<CapturedMessage>,
    raw_tx: mpsc::Sender<sipvault_schemas::HepRawRow>,
    sealed_rx: mpsc::Receiver<crate::SealedSegment>,
    stats: Arc<CollectorStats>,
    task: tokio::task::JoinHandle<crate::Result<()>>,
}

async fn start(dir: &std::path::Path, config: CollectorConfig) -> Running {
    let catalog = Catalog::open(dir).await.unwrap();
    let (tx, raw_tx, inputs) = Inputs::channel(64);
    let (sealed_tx, sealed_rx) = mpsc::channel(64);
    let stats = Arc::new(CollectorStats::default());
    let task = tokio::spawn(run(
        config,
        catalog.clone(),
        inputs,
        sealed_tx,
        stats.clone(),
    ));
    Running {
        catalog,
        tx,
        raw_tx,
        sealed_rx,
        stats,
        task,
    }
}

fn message(i: u32, t: i64) -> Vec<CapturedMessage> {
    let req = format!(
        "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{i}\r\nFrom: <sip:alice@example.com>;tag=a{i}\r\nTo: <sip:bob@example.com>\r\nCall-ID: call-{i}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nhello {}",
        i % 10
    );
    let resp = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{i}\r\nFrom: <sip:alice@example.com>;tag=a{i}\r\nTo: <sip:bob@example.com>;tag=b\r\nCall-ID: call-{i}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    [(req, Direction::In, 0), (resp, Direction::Out, 1_000)]
        .into_iter()
        .map(|(raw, direction, dt)| CapturedMessage {
            time_ns: t + dt,
            source: "tap".into(),
            direction,
            transport: Transport::Udp,
            src: "127.0.0.1:5061".parse().unwrap(),
            dst: "127.0.0.1:5060".parse().unwrap(),
            raw: raw.into_bytes(),
        })
        .collect()
}

#[tokio::test]
async fn pipeline_writes_sealed_segments_with_manifest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let Running {
        catalog,
        tx,
        raw_tx,
        mut sealed_rx,
        stats,
        task,
    } = start(dir.path(), config(dir.path(), 8)).await;
    raw_tx
        .send(sipvault_schemas::HepRawRow {
            time_ns: 1_764_000_000_000_000_000,
            source: "hep:7".into(),
            proto_type: 5,
            src: "10.0.0.1:7078".into(),
            dst: "10.0.0.2:7079".into(),
            correlation_id: Some("c1".into()),
            payload: vec![0x81, 0xc8],
        })
        .await
        .unwrap();
    drop(raw_tx);
    // Two days, so two date partitions; one unparsable datagram is still archived.
    let day1 = 1_764_000_000_000_000_000i64;
    let day2 = day1 + 86_400_000_000_000;
    for i in 0..10u32 {
        let t = if i < 6 { day1 } else { day2 } + i64::from(i) * 1_000_000;
        for m in message(i, t) {
            tx.send(m).await.unwrap();
        }
    }
    tx.send(CapturedMessage {
        time_ns: day2,
        source: "tap".into(),
        direction: Direction::In,
        transport: Transport::Tcp,
        src: "127.0.0.1:1".parse().unwrap(),
        dst: "127.0.0.1:2".parse().unwrap(),
        raw: b"\x00\x01garbage".to_vec(),
    })
    .await
    .unwrap();
    drop(tx);
    task.await.unwrap().unwrap();

    let mut sealed = Vec::new();
    while let Some(s) = sealed_rx.recv().await {
        sealed.push(s);
    }
    let entries = catalog.segments().await.unwrap();
    assert_eq!(
        entries.len(),
        sealed.len(),
        "every sealed segment has one manifest row"
    );
    let sip_rows: i64 = entries
        .iter()
        .filter(|e| e.table_name == "sip_messages")
        .map(|e| e.rows)
        .sum();
    let im_rows: i64 = entries
        .iter()
        .filter(|e| e.table_name == "im_messages")
        .map(|e| e.rows)
        .sum();
    assert_eq!(sip_rows, 21, "20 SIP messages plus the unparsable one");
    assert_eq!(im_rows, 10);
    let raw_rows: i64 = entries
        .iter()
        .filter(|e| e.table_name == "hep_raw")
        .map(|e| e.rows)
        .sum();
    assert_eq!(raw_rows, 1, "the RTCP payload is archived in hep_raw");
    assert!(
        entries.iter().all(|e| e.rows <= 8),
        "segments roll at max_rows"
    );
    assert!(
        entries.iter().any(|e| e.path.contains("date=2025-11-24"))
            && entries.iter().any(|e| e.path.contains("date=2025-11-25")),
        "{entries:?}"
    );
    for e in &entries {
        let path = dir.path().join(&e.path);
        assert_eq!(
            sha256_file(&path).unwrap(),
            e.sha256,
            "manifest SHA-256 of {}",
            e.path
        );
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(
            reader.metadata().file_metadata().num_rows(),
            e.rows,
            "rows of {}",
            e.path
        );
    }
    assert!(sipvault_catalog::broken_links(&entries).is_empty());
    let indexed: usize = sealed.iter().map(|s| s.im_rows.len()).sum();
    assert_eq!(indexed, 10, "IM rows handed on for indexing");
    assert_eq!(
        stats.unparsable.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // No temporary files left behind.
    for e in walk(dir.path()) {
        assert!(!e.ends_with(".tmp"), "leftover temp file {e}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// Rows the manifest records for `sip_messages`.
fn sip_rows_of(entries: &[sipvault_catalog::SegmentEntry]) -> usize {
    entries
        .iter()
        .filter(|e| e.table_name == "sip_messages")
        .map(|e| e.rows as usize)
        .sum()
}

#[tokio::test]
async fn copies_from_a_second_capture_point_are_dropped_and_late_arrivals_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1000);
    config.live = false;
    let Running {
        catalog,
        tx,
        mut sealed_rx,
        stats,
        task,
        ..
    } = start(dir.path(), config).await;
    let t = 1_764_000_000_000_000_000i64;
    for i in 0..5u32 {
        let [request, response]: [CapturedMessage; 2] =
            message(i, t + i64::from(i) * 1_000_000_000)
                .try_into()
                .unwrap();
        // The response arrives first (its capture point was quicker), then
        // the request, then a HEP agent's copy of both, 2 ms later.
        let copy = |m: &CapturedMessage| CapturedMessage {
            source: "hep:2001".into(),
            time_ns: m.time_ns + 2_000_000,
            ..m.clone()
        };
        let (request_copy, response_copy) = (copy(&request), copy(&response));
        for m in [response, request, request_copy, response_copy] {
            tx.send(m).await.unwrap();
        }
    }
    drop(tx);
    task.await.unwrap().unwrap();
    let mut ims = Vec::new();
    while let Some(s) = sealed_rx.recv().await {
        ims.extend(s.im_rows);
    }
    let entries = catalog.segments().await.unwrap();
    assert_eq!(sip_rows_of(&entries), 10, "each packet archived once");
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    assert_eq!(
        stats.received.load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    assert_eq!(ims.len(), 5);
    assert!(
        ims.iter().all(|im| im.delivery_status == "delivered"),
        "the response that arrived first still completes its IM: {ims:?}"
    );
}

#[tokio::test]
async fn verify_names_altered_missing_and_extra_segments() {
    let dir = tempfile::tempdir().unwrap();
    let Running {
        catalog,
        tx,
        mut sealed_rx,
        task,
        ..
    } = start(dir.path(), config(dir.path(), 4)).await;
    for i in 0..8u32 {
        for m in message(i, 1_764_000_000_000_000_000 + i64::from(i)) {
            tx.send(m).await.unwrap();
        }
    }
    drop(tx);
    task.await.unwrap().unwrap();
    while sealed_rx.recv().await.is_some() {}
    let entries = catalog.segments().await.unwrap();
    assert!(entries.len() >= 4, "{entries:?}");
    let clean = crate::verify_archive(dir.path(), &entries, |_| {});
    assert!(
        clean.findings.is_empty(),
        "fresh archive must verify: {:?}",
        clean.findings
    );

    // Flip one byte in the first segment, delete the second, add a stray copy.
    let altered = dir.path().join(&entries[0].path);
    let mut bytes = std::fs::read(&altered).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&altered, &bytes).unwrap();
    std::fs::remove_file(dir.path().join(&entries[1].path)).unwrap();
    let extra = dir
        .path()
        .join(&entries[2].path)
        .with_file_name("stray.parquet");
    std::fs::copy(dir.path().join(&entries[2].path), &extra).unwrap();

    let report = crate::verify_archive(dir.path(), &entries, |_| {});
    let kinds: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        matches!(&report.findings[..], [crate::Finding::Altered { seq: 1, .. }, crate::Finding::Missing { seq: 2, .. }, crate::Finding::Extra { path }] if path.ends_with("stray.parquet")),
        "{kinds:#?}"
    );

    // A manifest with a row removed breaks the chain at the row after it.
    let mut gap = entries.clone();
    gap.remove(1);
    std::fs::remove_file(&extra).unwrap();
    let report = crate::verify_archive(dir.path(), &gap, |_| {});
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, crate::Finding::BrokenChain { seq: 3, .. })),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn a_failed_seal_keeps_its_rows_and_succeeds_once_the_disk_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the archive directory belongs: every segment write fails.
    let blocker = dir.path().join("archive");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let Running {
        catalog,
        tx,
        mut sealed_rx,
        stats,
        task,
        ..
    } = start(dir.path(), config(dir.path(), 4)).await;
    for i in 0..2u32 {
        for m in message(i, 1_764_000_000_000_000_000 + i64::from(i)) {
            tx.send(m).await.unwrap();
        }
    }
    // The first seal has failed by now; the disk "recovers".
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while stats
        .write_errors
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            std::time::Instant::now() < end,
            "the blocked seal never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(&blocker).unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    while sealed_rx.recv().await.is_some() {}
    let entries = catalog.segments().await.unwrap();
    let sip_rows: i64 = entries
        .iter()
        .filter(|e| e.table_name == "sip_messages")
        .map(|e| e.rows)
        .sum();
    assert_eq!(
        sip_rows, 4,
        "the rows of the failed seal were kept and sealed later"
    );
    assert_eq!(
        stats.rows_lost.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// `call_id` of every row of `table` in the sealed segments.
fn call_ids(
    dir: &std::path::Path,
    entries: &[sipvault_catalog::SegmentEntry],
    table: &str,
) -> Vec<String> {
    use arrow_array::{Array, StringArray};
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.table_name == table) {
        let file = std::fs::File::open(dir.join(&e.path)).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let col = batch.column_by_name("call_id").unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend((0..col.len()).map(|i| col.value(i).to_string()));
        }
    }
    out.sort();
    out
}

/// A logged pipeline: tiny log files and a checkpoint every few KiB.
fn logged_config(dir: &std::path::Path) -> CollectorConfig {
    CollectorConfig {
        wal: Some(crate::WalConfig {
            file_bytes: 4096,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_bytes: 6000,
        }),
        ..config(dir, 7)
    }
}

struct Acked {
    catalog: Catalog,
    tx: mpsc::Sender<crate::AckedMessage>,
    stats: Arc<CollectorStats>,
    task: tokio::task::JoinHandle<crate::Result<()>>,
    _keep: (
        mpsc::Sender<CapturedMessage>,
        mpsc::Sender<sipvault_schemas::HepRawRow>,
    ),
}

async fn start_acked(dir: &std::path::Path) -> Acked {
    let catalog = Catalog::open(dir).await.unwrap();
    let (captured_tx, raw_tx, mut inputs) = Inputs::channel(64);
    let tx = inputs.acked_channel(64);
    let (sealed_tx, mut sealed_rx) = mpsc::channel(64);
    tokio::spawn(async move { while sealed_rx.recv().await.is_some() {} });
    let stats = Arc::new(CollectorStats::default());
    let task = tokio::spawn(run(
        logged_config(dir),
        catalog.clone(),
        inputs,
        sealed_tx,
        stats.clone(),
    ));
    Acked {
        catalog,
        tx,
        stats,
        task,
        _keep: (captured_tx, raw_tx),
    }
}

/// Sends the IMs `range` and waits for each message to be accepted.
async fn send_accepted(tx: &mpsc::Sender<crate::AckedMessage>, range: std::ops::Range<u32>) {
    let t = 1_764_000_000_000_000_000i64;
    for i in range {
        for msg in message(i, t + i64::from(i) * 1_000_000) {
            let (ack, accepted) = tokio::sync::oneshot::channel();
            tx.send((msg, ack)).await.unwrap();
            assert_eq!(accepted.await.unwrap(), Ok(()), "IM {i} accepted");
        }
    }
}

/// Polls the manifest until it stops growing (a sealer left behind by an
/// aborted collector finishes the segment it has).
async fn settled_segments(catalog: &Catalog) -> usize {
    let mut last = usize::MAX;
    for _ in 0..50 {
        let n = catalog.segments().await.unwrap().len();
        if n == last {
            return n;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn a_crash_loses_no_accepted_message_and_a_replay_doubles_none() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let first = start_acked(dir.path()).await;
    send_accepted(&first.tx, 0..40).await;
    for _ in 0..100 {
        if first.stats.segments_sealed.load(Relaxed) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        first.stats.segments_sealed.load(Relaxed) >= 3,
        "some segments are sealed before the crash"
    );
    // The crash: the collector stops between two messages, with open
    // segments, pending state and a log past its last checkpoint.
    first.task.abort();
    let _ = first.task.await;
    let before = settled_segments(&first.catalog).await;
    let entries = first.catalog.segments().await.unwrap();
    let im_before = call_ids(dir.path(), &entries, "im_messages").len();
    assert!(
        im_before < 40,
        "the crash came before every IM was sealed ({im_before} of 40)"
    );
    // A segment written but not entered in the manifest, and half a one.
    let sealed = dir.path().join(&entries[0].path);
    let orphan = sealed.with_file_name("20991231T000000.000Z-00000000.parquet");
    std::fs::copy(&sealed, &orphan).unwrap();
    let torn = sealed.with_file_name(".20991231T000000.000Z-00000001.parquet.tmp");
    std::fs::write(&torn, b"PAR1 half").unwrap();
    first.catalog.close().await;

    let second = start_acked(dir.path()).await;
    send_accepted(&second.tx, 40..50).await;
    drop(second.tx);
    drop(second._keep);
    second.task.await.unwrap().unwrap();
    assert!(
        second.stats.replayed_groups.load(Relaxed) > 0,
        "the log was replayed"
    );
    assert!(
        second.stats.replay_skipped_rows.load(Relaxed) > 0,
        "segments sealed after the last checkpoint were rolled again and skipped"
    );
    assert_eq!(second.stats.quarantined_files.load(Relaxed), 1);
    assert!(!orphan.exists() && !torn.exists());
    assert!(
        dir.path()
            .join("quarantine")
            .join(orphan.strip_prefix(dir.path()).unwrap())
            .exists(),
        "the unentered segment is kept aside, not deleted"
    );

    let entries = second.catalog.segments().await.unwrap();
    assert!(entries.len() > before);
    let ims = call_ids(dir.path(), &entries, "im_messages");
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..50).map(|i| format!("call-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(ims, expected, "every accepted IM exactly once");
    let sip = call_ids(dir.path(), &entries, "sip_messages");
    let mut twice: Vec<String> = expected
        .iter()
        .flat_map(|c| [c.clone(), c.clone()])
        .collect();
    twice.sort();
    assert_eq!(sip, twice, "every accepted SIP message exactly once");
    let report = crate::verify_archive(dir.path(), &entries, |_| {});
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    second.catalog.close().await;

    // A clean stop leaves nothing to replay.
    let third = start_acked(dir.path()).await;
    drop(third.tx);
    drop(third._keep);
    third.task.await.unwrap().unwrap();
    assert_eq!(third.stats.replayed_groups.load(Relaxed), 0);
    assert_eq!(third.catalog.segments().await.unwrap().len(), entries.len());
}

#[test]
fn a_snapshot_of_another_layout_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let config = logged_config(dir.path());
    let mut first = crate::Pipeline::new(&config);
    first.latest_capture_ns = 42;
    let snapshot = first.snapshot().unwrap();

    let mut restored = crate::Pipeline::new(&config);
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored.latest_capture_ns, 42);

    let mut older = snapshot.clone();
    older[..4].copy_from_slice(&1u32.to_le_bytes());
    let mut skipped = crate::Pipeline::new(&config);
    skipped.restore(&older).unwrap();
    assert_eq!(
        skipped.latest_capture_ns,
        i64::MIN,
        "another layout is not decoded as this one"
    );
    assert!(
        skipped.restore(&[7]).is_ok(),
        "too short to carry a version"
    );
}

/// (catalog_id, event) of every `room_events` row in the sealed segments.
fn room_event_rows(
    dir: &std::path::Path,
    entries: &[sipvault_catalog::SegmentEntry],
) -> Vec<(Option<i64>, String)> {
    use arrow_array::{Array, Int64Array, StringArray};
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.table_name == "room_events") {
        let file = std::fs::File::open(dir.join(&e.path)).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("catalog_id").unwrap();
            let ids = ids.as_any().downcast_ref::<Int64Array>().unwrap();
            let events = batch.column_by_name("event").unwrap();
            let events = events.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend((0..batch.num_rows()).map(|i| {
                (
                    ids.is_valid(i).then(|| ids.value(i)),
                    events.value(i).to_string(),
                )
            }));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn room_events_from_the_catalog_and_the_server_are_archived_once_across_a_crash() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).await.unwrap();
    catalog
        .add_user("alice", "example.com", "h1", "h2")
        .await
        .unwrap();
    let room = sipvault_catalog::Room {
        name: "budget".into(),
        domain: "example.com".into(),
        topic: "Q3".into(),
        category: None,
        private: false,
        created_ns: 0,
    };
    catalog.create_room(&room, "lead").await.unwrap();

    let start_logged = |catalog: Catalog| {
        let (tx, raw_tx, mut inputs) = Inputs::channel(64);
        let events = inputs.room_events_channel(64);
        let (sealed_tx, mut sealed_rx) = mpsc::channel(64);
        tokio::spawn(async move { while sealed_rx.recv().await.is_some() {} });
        let stats = Arc::new(CollectorStats::default());
        let task = tokio::spawn(run(
            logged_config(dir.path()),
            catalog,
            inputs,
            sealed_tx,
            stats.clone(),
        ));
        (tx, raw_tx, events, stats, task)
    };
    let wait_rows = |stats: Arc<CollectorStats>, n: u64| async move {
        for _ in 0..100 {
            if stats.room_event_rows.load(Relaxed) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} room event rows expected");
    };

    // First run: the room's creation from the catalog, a conference event
    // from the server; then a crash with both only in the log.
    let (tx, raw_tx, events, stats, task) = start_logged(catalog.clone());
    let joined = sipvault_schemas::RoomEventRow {
        time_ns: 1_764_000_000_000_000_000,
        kind: "conference".into(),
        room: "sip:conf-1a2b@example.com".into(),
        member: Some("sip:alice@example.com".into()),
        event: "joined".into(),
        role: None,
        by_user: "sip:alice@example.com".into(),
        call_id: Some("c1".into()),
        catalog_id: None,
    };
    events.send(joined).await.unwrap();
    wait_rows(stats.clone(), 2).await;
    task.abort();
    let _ = task.await;
    drop((tx, raw_tx, events));

    // Second run: the log is replayed (the catalog's first event is not
    // read again), a new membership change is carried over, a clean stop.
    catalog
        .add_room_member("budget", "alice", sipvault_catalog::RoomRole::Owner, "lead")
        .await
        .unwrap();
    let (tx, raw_tx, events, stats, task) = start_logged(catalog.clone());
    wait_rows(stats.clone(), 3).await;
    assert!(stats.replayed_groups.load(Relaxed) > 0);
    drop((tx, raw_tx, events));
    task.await.unwrap().unwrap();

    let entries = catalog.segments().await.unwrap();
    assert_eq!(
        room_event_rows(dir.path(), &entries),
        vec![
            (None, "joined".to_string()),
            (Some(1), "created".to_string()),
            (Some(2), "member_added".to_string()),
        ],
        "every event exactly once"
    );

    // A third run finds nothing new in the catalog.
    let (tx, raw_tx, events, stats, task) = start_logged(catalog.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop((tx, raw_tx, events));
    task.await.unwrap().unwrap();
    assert_eq!(stats.room_event_rows.load(Relaxed), 0);
    assert_eq!(catalog.segments().await.unwrap().len(), entries.len());
}

#[test]
fn socket_addresses_read_as_their_display_writes_them() {
    for addr in [
        "10.0.0.1:20000",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "192.0.2.7:5",
        "[2001:db8::1]:49170",
        "[::ffff:10.0.0.1]:4000",
    ] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert_eq!(crate::socket_addr_text(addr), addr.to_string());
    }
}
