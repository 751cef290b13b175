use super::*;
use sipvault_schemas::{Direction, Transport};

fn msg(n: u8) -> CapturedMessage {
    CapturedMessage {
        time_ns: i64::from(n) * 1_000,
        source: "tap".into(),
        direction: Direction::In,
        transport: Transport::Udp,
        src: "127.0.0.1:5062".parse().unwrap(),
        dst: "127.0.0.1:5060".parse().unwrap(),
        raw: vec![b'x'; usize::from(n)],
    }
}

fn input(lsn: u64) -> Group {
    Group {
        lsn,
        clock_ns: lsn as i64 * 10,
        event: Event::Input {
            captured: vec![msg(lsn as u8)],
            hep_raw: Vec::new(),
        },
    }
}

fn write_log(dir: &Path, first: u64, groups: &[Group]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(log_name(first));
    let mut bytes = Vec::new();
    for g in groups {
        bytes.extend(encode(g).unwrap());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Everything recovery would replay from `dir`: the snapshot, the groups
/// after it over all files in order, and how many files ended in damage.
/// (snapshot, groups to replay, files that ended in damage).
type Replayed = (Option<(u64, Vec<u8>)>, Vec<Group>, usize);

fn replay(dir: &Path) -> Replayed {
    let rec = read(dir).unwrap();
    let mut groups = Vec::new();
    let mut damaged = 0;
    for path in &rec.files {
        let (file_groups, file_damaged) = read_file(path, rec.after()).unwrap();
        groups.extend(file_groups);
        damaged += usize::from(file_damaged);
    }
    (rec.snapshot, groups, damaged)
}

#[test]
fn frames_round_trip_and_damage_is_found() {
    let a = frame(b"alpha");
    let b = frame(b"beta");
    let mut bytes = [a.clone(), b.clone()].concat();
    let whole = unframe(&bytes);
    assert_eq!(whole.payloads, vec![&b"alpha"[..], &b"beta"[..]]);
    assert!(!whole.damaged);
    assert_eq!(whole.good_len, bytes.len());

    bytes.truncate(bytes.len() - 2);
    let torn = unframe(&bytes);
    assert_eq!(
        torn.payloads,
        vec![&b"alpha"[..]],
        "a torn last frame is not returned"
    );
    assert!(torn.damaged);
    assert_eq!(torn.good_len, a.len());

    let mut flipped = [a.clone(), b].concat();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let bad = unframe(&flipped);
    assert_eq!(
        bad.payloads.len(),
        1,
        "a frame failing its CRC ends the read"
    );
    assert!(bad.damaged);

    let mut huge = a.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(unframe(&huge).damaged, "an impossible length is damage");
}

#[test]
fn read_returns_groups_in_order_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1, &[input(1), input(2)]);
    let second = write_log(dir.path(), 3, &[input(3), input(4)]);
    // A crash mid-append: half of group 5 reached the file.
    let half = encode(&input(5)).unwrap();
    let mut bytes = std::fs::read(&second).unwrap();
    let whole_len = bytes.len();
    bytes.extend_from_slice(&half[..half.len() / 2]);
    std::fs::write(&second, &bytes).unwrap();

    let (snapshot, groups, damaged) = replay(dir.path());
    assert!(snapshot.is_none());
    let lsns: Vec<u64> = groups.iter().map(|g| g.lsn).collect();
    assert_eq!(lsns, vec![1, 2, 3, 4]);
    assert_eq!(groups[2], input(3));
    assert_eq!(damaged, 1);
    assert_eq!(
        std::fs::metadata(&second).unwrap().len() as usize,
        whole_len,
        "the torn frame is cut off so later appends stay readable"
    );
    assert!(replay(&dir.path().join("missing")).1.is_empty());
}

#[test]
fn checkpoint_keeps_newer_groups_and_trims_older_files() {
    let dir = tempfile::tempdir().unwrap();
    // The log starts a new file after each checkpoint group (2 and 3 here).
    let old = write_log(dir.path(), 1, &[input(1), input(2)]);
    let third = write_log(dir.path(), 3, &[input(3)]);
    let current = write_log(dir.path(), 4, &[input(4)]);
    commit_checkpoint(dir.path(), 2, b"state at 2").unwrap();
    assert!(
        !old.exists(),
        "every group of the first file is covered by the snapshot"
    );
    assert!(third.exists() && current.exists());
    commit_checkpoint(dir.path(), 3, b"state at 3").unwrap();
    assert!(!third.exists());
    assert!(current.exists(), "group 4 comes after the checkpoint");

    let (snapshot, groups, _) = replay(dir.path());
    assert_eq!(snapshot, Some((3, b"state at 3".to_vec())));
    let lsns: Vec<u64> = groups.iter().map(|g| g.lsn).collect();
    assert_eq!(
        lsns,
        vec![4],
        "only groups after the newest snapshot are replayed"
    );
    assert_eq!(
        numbered(dir.path(), SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX).len(),
        1,
        "older snapshots are removed"
    );
}

#[test]
fn damaged_snapshot_is_an_error_not_a_silent_restart() {
    let dir = tempfile::tempdir().unwrap();
    commit_checkpoint(dir.path(), 9, b"state").unwrap();
    let path = dir.path().join(snapshot_name(9));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(read(dir.path()), Err(WalError::Io { .. })));
}

#[tokio::test]
async fn writer_acknowledges_after_the_frame_is_on_disk_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(CollectorStats::default());
    // Files of at most ~one frame: every append after the first starts a file.
    let writer = WalWriter::start(dir.path().to_path_buf(), 1, stats.clone()).unwrap();
    let mut waits = Vec::new();
    for lsn in 1..=3 {
        let (tx, rx) = oneshot::channel();
        writer
            .append(Append {
                lsn,
                frame: encode(&input(lsn)).unwrap(),
                messages: 1,
                acks: vec![tx],
                rotate_after: false,
            })
            .await
            .unwrap();
        waits.push(rx);
    }
    for rx in waits {
        assert_eq!(rx.await.unwrap(), Ok(()));
    }
    writer.close();
    assert_eq!(replay(dir.path()).1, vec![input(1), input(2), input(3)]);
    assert_eq!(numbered(dir.path(), "", LOG_SUFFIX).len(), 3);
    assert!(stats.wal_fsyncs.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.wal_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn writer_refuses_while_the_directory_is_unusable_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    let stats = Arc::new(CollectorStats::default());
    let writer = WalWriter::start(dir.clone(), 1, stats.clone()).unwrap();
    // A plain file where the directory was: creating a log file fails, for
    // root too.
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let (tx, rx) = oneshot::channel();
    writer
        .append(Append {
            lsn: 1,
            frame: encode(&input(1)).unwrap(),
            messages: 1,
            acks: vec![tx],
            rotate_after: false,
        })
        .await
        .unwrap();
    assert!(
        rx.await.unwrap().is_err(),
        "an append that cannot be made durable is refused"
    );
    assert_eq!(stats.unlogged.load(Ordering::Relaxed), 1);

    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let (tx, rx) = oneshot::channel();
    writer
        .append(Append {
            lsn: 2,
            frame: encode(&input(2)).unwrap(),
            messages: 1,
            acks: vec![tx],
            rotate_after: false,
        })
        .await
        .unwrap();
    assert_eq!(
        rx.await.unwrap(),
        Ok(()),
        "accepted again once the directory is back"
    );
    writer.close();
    assert_eq!(replay(&dir).1, vec![input(2)]);
}

/// `CapturedMessage` as logs were written before its bytes were serialized
/// as one byte string: `raw` a plain `Vec<u8>`.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct CapturedBefore {
    time_ns: i64,
    source: String,
    direction: Direction,
    transport: Transport,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    raw: Vec<u8>,
}

#[test]
fn raw_bytes_encode_as_before_so_older_logs_replay() {
    let now = msg(200);
    let before = CapturedBefore {
        time_ns: now.time_ns,
        source: now.source.clone(),
        direction: now.direction,
        transport: now.transport,
        src: now.src,
        dst: now.dst,
        raw: now.raw.clone(),
    };
    let new_bytes = postcard::to_stdvec(&now).unwrap();
    let old_bytes = postcard::to_stdvec(&before).unwrap();
    assert_eq!(new_bytes, old_bytes, "same postcard bytes either way");
    let read: CapturedMessage = postcard::from_bytes(&old_bytes).unwrap();
    assert_eq!(read, now);
    let read: CapturedBefore = postcard::from_bytes(&new_bytes).unwrap();
    assert_eq!(read, before);
}

#[test]
fn a_group_encodes_to_the_frame_of_its_serialized_bytes() {
    let many = Group {
        lsn: 9,
        clock_ns: 90,
        event: Event::Input {
            captured: (0..200).map(|n| msg(n as u8)).collect(),
            hep_raw: Vec::new(),
        },
    };
    let tick = Group {
        lsn: 10,
        clock_ns: 100,
        event: Event::Tick,
    };
    for group in [input(0), input(7), many, tick] {
        let encoded = encode(&group).unwrap();
        assert_eq!(encoded, frame(&postcard::to_stdvec(&group).unwrap()));
        let back = unframe(&encoded);
        assert!(!back.damaged);
        assert_eq!(
            postcard::from_bytes::<Group>(back.payloads[0]).unwrap(),
            group
        );
    }
}
