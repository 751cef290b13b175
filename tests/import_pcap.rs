//! End to end: `sipvault import pcap` over every capture in the shared test
//! data. Per file the SIP messages archived match the counts tshark took
//! (INDEX.tsv); calls and IMs come out of the correlator; importing the same
//! files again adds nothing; damaged files never stop an import.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, sql_rows, testdata};

/// `file -> n_requests + n_responses` from an INDEX.tsv.
fn expected_messages(index: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(index).expect("INDEX.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{} has no column {name}", index.display()))
    };
    let (file, req, resp) = (col("file"), col("n_requests"), col("n_responses"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
            (f[file].to_string(), n(req) + n(resp))
        })
        .collect()
}

fn captures(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    files
}

/// Runs `sipvault import pcap FILES --format json`; returns exit code and summary.
fn import(data: &Path, files: &[PathBuf]) -> (i32, serde_json::Value) {
    let out = Command::new(bin())
        .args(["import", "pcap", "--format", "json", "--data"])
        .arg(data)
        .args(files)
        .output()
        .expect("run sipvault import pcap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "import printed no JSON summary ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

fn count(data: &Path, sql: &str) -> u64 {
    sql_rows(data, sql)[0]["n"].as_u64().expect("a count")
}

#[test]
fn every_shared_capture_imports_with_tsharks_message_counts_and_only_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pcaps = testdata().join("pcaps");
    let mut expected = expected_messages(&pcaps.join("INDEX.tsv"));
    expected.extend(expected_messages(&pcaps.join("local/INDEX.tsv")));
    let mut files = captures(&pcaps);
    files.extend(captures(&pcaps.join("local")));
    assert_eq!(files.len(), 29, "11 public + 18 local captures");

    let (code, summary) = import(&data, &files);
    assert_eq!(code, 0, "import failed: {summary:#}");
    let per_file = summary["files"].as_array().expect("files");
    // pcap and pcapng copies of a local capture have different bytes, so both import.
    for f in per_file {
        let name = f["file"].as_str().unwrap();
        assert_eq!(f["status"], "imported", "{name}: {f}");
        assert_eq!(
            f["sip_messages"].as_u64(),
            expected.get(name).copied(),
            "{name}: SIP messages found vs tshark's count in INDEX.tsv ({f})"
        );
    }
    let total: u64 = expected.values().sum();
    assert_eq!(summary["sip_messages"].as_u64(), Some(total));
    assert_eq!(
        count(&data, "SELECT count(*) AS n FROM sip_messages"),
        total,
        "every message found is archived"
    );
    // Local captures: the pcapng copy holds the same packets as the pcap, so
    // the correlator sees each IM and call twice and keeps one: 10 IMs from
    // message.pcap, and 10 calls per scenario (README: answered for
    // call-basic, call-rtp, invite-auth; cancelled; busy), attributed to the
    // file imported first.
    assert_eq!(count(&data, "SELECT count(*) AS n FROM im_messages"), 10);
    for (file, disposition) in [
        ("call-basic.pcap", "answered"),
        ("call-rtp.pcap", "answered"),
        ("invite-auth.pcap", "answered"),
        ("call-cancel.pcap", "cancelled"),
        ("call-busy.pcap", "busy"),
    ] {
        let rows = sql_rows(
            &data,
            &format!(
                "SELECT disposition, count(*) AS n FROM calls WHERE source = 'pcap:{file}' GROUP BY 1"
            ),
        );
        assert_eq!(
            rows,
            vec![serde_json::json!({"disposition": disposition, "n": 10})],
            "calls of {file}"
        );
    }
    assert_eq!(
        summary["calls"],
        count(&data, "SELECT count(*) AS n FROM calls")
    );

    // Again, with one file under another name: nothing is added.
    let renamed = tmp.path().join("renamed-copy.pcap");
    std::fs::copy(pcaps.join("zeek-wireshark.pcap"), &renamed).unwrap();
    let mut again = files.clone();
    again.push(renamed);
    let (code, summary) = import(&data, &again);
    assert_eq!(code, 0, "{summary:#}");
    for f in summary["files"].as_array().unwrap() {
        assert_eq!(f["status"], "already-imported", "{f}");
    }
    assert_eq!(summary["sip_messages"], 0);
    assert_eq!(
        count(&data, "SELECT count(*) AS n FROM sip_messages"),
        total,
        "a second import adds nothing"
    );
    let verify = Command::new(bin())
        .args(["verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "imported segments verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn damaged_captures_are_imported_as_far_as_they_go() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let original = std::fs::read(testdata().join("pcaps/zeek-wireshark.pcap")).unwrap();
    // Cut in the middle of a record.
    let cut = tmp.path().join("cut.pcap");
    std::fs::write(&cut, &original[..original.len() * 2 / 3 + 7]).unwrap();
    let (code, summary) = import(&data, std::slice::from_ref(&cut));
    assert_eq!(code, 0, "a truncated capture is not a failure: {summary:#}");
    let f = &summary["files"][0];
    let found = f["sip_messages"].as_u64().unwrap();
    assert!(
        found > 40 && found < 81,
        "messages before the cut are kept: {f}"
    );
    assert_eq!(f["skipped"]["truncated-file"], 1, "{f}");
    // The reader stopped at the cut; the hash still covers the whole file.
    use sha2::Digest;
    let cut_bytes = std::fs::read(&cut).unwrap();
    assert_eq!(
        f["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&cut_bytes)),
        "{f}"
    );
    // So the same damaged file again adds nothing...
    let (code, summary) = import(&data, std::slice::from_ref(&cut));
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(
        summary["files"][0]["status"], "already-imported",
        "{summary:#}"
    );
    // ...while another file of the same length is imported: a length in
    // common only means its hash is taken before it is read.
    let other = tmp.path().join("same-length.pcap");
    let mut other_bytes = original[..cut_bytes.len()].to_vec();
    let last = other_bytes.len() - 1;
    other_bytes[last] ^= 0xff;
    std::fs::write(&other, &other_bytes).unwrap();
    let (code, summary) = import(&data, std::slice::from_ref(&other));
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["files"][0]["status"], "imported", "{summary:#}");
    assert_eq!(summary["files"][0]["sip_messages"], found, "{summary:#}");
    let found = 2 * found;

    // Not a capture at all: reported, exit 1, the archive unharmed.
    let junk = tmp.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture file").unwrap();
    let (code, summary) = import(&data, std::slice::from_ref(&junk));
    assert_eq!(code, 1, "{summary:#}");
    assert_eq!(summary["files"][0]["status"], "failed");
    assert_eq!(
        count(&data, "SELECT count(*) AS n FROM sip_messages"),
        found
    );
}
