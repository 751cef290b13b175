//! `sipvault export` and `export verify` through the binary: a demo archive
//! exported in every format, each format opened by an outside reader
//! (Python's `email` for .eml, tshark for the pcap, Python's `csv`), the
//! manifest verified, then tampered with.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::{Array, StringArray, UInt16Array};
use common::{Run, run_sipvault, sipvault};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed to parse the exported files");
    assert!(
        out.status.success(),
        "python3 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(method, status)` of every SIP message tshark decodes in `pcap`.
fn tshark_sip(pcap: &Path) -> Vec<(String, String)> {
    // The export holds only SIP, on whatever ports the archive saw: decode
    // every one as SIP, or a port that tshark gives to another protocol
    // would hide its packets from the `sip` filter.
    let ports = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport"])
        .output()
        .unwrap_or_else(|e| {
            panic!("tshark is needed to check the exported pcap (apt-get install tshark): {e}")
        });
    let ports: std::collections::BTreeSet<String> = String::from_utf8_lossy(&ports.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let decode_as: Vec<String> = ports
        .iter()
        .flat_map(|p| ["-d".to_string(), format!("udp.port=={p},sip")])
        .collect();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(&decode_as)
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("tshark is needed to check the exported pcap (apt-get install tshark): {e}")
        });
    assert!(
        out.status.success(),
        "tshark could not read {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (m, s) = l.split_once('\t').unwrap_or((l, ""));
            (m.to_string(), s.to_string())
        })
        .collect()
}

/// `(method, status)` of every row of an exported `sip_messages.parquet`, in file order.
fn parquet_sip(path: &Path) -> Vec<(String, String)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let method = batch
            .column_by_name("method")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let status = batch
            .column_by_name("status")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt16Array>()
            .unwrap()
            .clone();
        for i in 0..batch.num_rows() {
            let m = if method.is_null(i) {
                String::new()
            } else {
                method.value(i).to_string()
            };
            let s = if status.is_null(i) {
                String::new()
            } else {
                status.value(i).to_string()
            };
            rows.push((m, s));
        }
    }
    rows
}

fn parquet_rows(path: &Path) -> usize {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows() as usize
}

const PARSE_EML: &str = r#"
import email, email.policy, json, sys
out = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    out.append({
        "file": path,
        "from": str(m["From"] or ""),
        "to": str(m["To"] or ""),
        "subject": str(m["Subject"] or ""),
        "date": str(m["Date"].datetime) if m["Date"] else "",
        "message_id": str(m["Message-ID"] or ""),
        "content_type": m.get_content_type(),
        "body": m.get_content(),
        "defects": [str(d) for d in m.defects],
    })
print(json.dumps(out))
"#;

const COUNT_CSV: &str = r#"
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
print(len(rows))
print("\n".join(r["body"] for r in rows))
"#;

fn eml_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("eml"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn demo_case_exports_in_every_format_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sipvault(&data, &["demo"]);
    let out = tmp.path().join("case");
    let out_s = out.to_str().unwrap();

    // What `sipvault search` finds is what the export holds.
    let hits: serde_json::Value = serde_json::from_str(&sipvault(
        &data,
        &["search", "budget", "--limit", "1000", "--format", "json"],
    ))
    .unwrap();
    let hits = hits.as_array().unwrap();
    assert!(hits.len() >= 3, "demo archive has budget IMs: {hits:?}");
    let bodies: Vec<String> = hits
        .iter()
        .map(|h| h["body"].as_str().unwrap().to_string())
        .collect();
    let call_ids: HashSet<String> = hits
        .iter()
        .map(|h| h["call_id"].as_str().unwrap().to_string())
        .collect();

    let Run {
        code,
        stdout,
        stderr,
        ..
    } = run_sipvault(
        &data,
        &[
            "export",
            "--query",
            "budget",
            "--case",
            "Prüfung 4711",
            "--out",
            out_s,
            "--as",
            "auditor-7",
        ],
    );
    assert_eq!(code, 0, "export failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{} IMs", hits.len())), "{stdout}");

    // Manifest: case, query, who, version, every file with size and hash.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["case"], "Prüfung 4711");
    assert_eq!(manifest["query"], "budget");
    assert_eq!(manifest["exported_by"], "auditor-7");
    assert_eq!(manifest["sipvault_version"], env!("CARGO_PKG_VERSION"));
    assert!(manifest["exported_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        manifest["im_messages"].as_u64().unwrap() as usize,
        hits.len()
    );
    let listed: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for name in [
        "im_messages.jsonl",
        "im_messages.csv",
        "im_messages.parquet",
        "sip_messages.parquet",
        "sip_messages.pcap",
    ] {
        assert!(listed.contains(&name), "{name} not in manifest: {listed:?}");
    }
    for f in manifest["files"].as_array().unwrap() {
        use sha2::Digest;
        let bytes = std::fs::read(out.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(
            f["sha256"].as_str().unwrap(),
            hex::encode(sha2::Sha256::digest(&bytes))
        );
    }

    // JSON lines and CSV: one row per matching IM.
    let jsonl = std::fs::read_to_string(out.join("im_messages.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), hits.len());
    for row in &rows {
        assert!(call_ids.contains(row["call_id"].as_str().unwrap()), "{row}");
        assert!(
            bodies.contains(&row["body"].as_str().unwrap().to_string()),
            "{row}"
        );
    }
    let csv = python(COUNT_CSV, &[&out.join("im_messages.csv")]);
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next().unwrap().parse::<usize>().unwrap(),
        hits.len()
    );
    let csv_bodies: HashSet<&str> = csv_lines.collect();
    for b in &bodies {
        assert!(csv_bodies.contains(b.as_str()), "{b} missing from the CSV");
    }
    assert_eq!(parquet_rows(&out.join("im_messages.parquet")), hits.len());

    // EML: every file parses, has the headers a mail client shows, and the
    // bodies between them hold every matching IM once.
    let emls = eml_files(&out);
    assert!(
        emls.len() >= 2,
        "budget IMs span several conversations: {emls:?}"
    );
    let paths: Vec<&Path> = emls.iter().map(PathBuf::as_path).collect();
    let parsed: serde_json::Value = serde_json::from_str(&python(PARSE_EML, &paths)).unwrap();
    let mut all_bodies = String::new();
    for m in parsed.as_array().unwrap() {
        for header in ["from", "to", "subject", "date", "message_id"] {
            assert!(
                !m[header].as_str().unwrap().is_empty(),
                "{header} missing: {m}"
            );
        }
        assert!(
            m["from"].as_str().unwrap().contains("@demo.sipvault.test>"),
            "{m}"
        );
        assert!(
            m["subject"]
                .as_str()
                .unwrap()
                .starts_with("[Prüfung 4711] IM conversation: "),
            "{m}"
        );
        assert_eq!(m["content_type"], "text/plain");
        assert_eq!(m["defects"].as_array().unwrap().len(), 0, "{m}");
        all_bodies.push_str(m["body"].as_str().unwrap());
    }
    // A room post matches with its copies to the members: the same text as
    // often as the search found it.
    for b in &bodies {
        assert_eq!(
            all_bodies.matches(b.as_str()).count(),
            bodies.iter().filter(|other| *other == b).count(),
            "{b} in the .eml files once per matching IM"
        );
    }

    // pcap: tshark sees the same SIP messages, in the same order, as the
    // exported sip_messages rows; those are every archived message with the
    // matching Call-IDs.
    let sip_rows = parquet_sip(&out.join("sip_messages.parquet"));
    let in_list: Vec<String> = call_ids.iter().map(|c| format!("'{c}'")).collect();
    let count = sipvault(
        &data,
        &[
            "sql",
            &format!(
                "SELECT count(*) AS n FROM sip_messages WHERE call_id IN ({})",
                in_list.join(",")
            ),
            "--format",
            "csv",
        ],
    );
    assert_eq!(count.trim(), format!("n\n{}", sip_rows.len()));
    assert_eq!(
        manifest["sip_messages"].as_u64().unwrap() as usize,
        sip_rows.len()
    );
    assert!(sip_rows.iter().any(|(m, _)| m == "MESSAGE"));
    assert!(sip_rows.iter().any(|(_, s)| s == "200"));
    assert_eq!(tshark_sip(&out.join("sip_messages.pcap")), sip_rows);

    // The export is in the audit log, with who, how many and the manifest hash.
    let audit: serde_json::Value =
        serde_json::from_str(&sipvault(&data, &["audit", "list", "--format", "json"])).unwrap();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["command"] == "export")
        .expect("export in the audit log");
    assert_eq!(entry["user"], "auditor-7");
    assert_eq!(entry["result_count"].as_u64().unwrap() as usize, hits.len());
    let query = entry["query"].as_str().unwrap();
    assert!(
        query.contains("Prüfung 4711") && query.contains("budget"),
        "{query}"
    );
    use sha2::Digest;
    let manifest_sha = hex::encode(sha2::Sha256::digest(
        std::fs::read(out.join("MANIFEST.json")).unwrap(),
    ));
    assert!(query.contains(&manifest_sha), "{query}");

    // verify: intact, then one changed byte, then a deleted file.
    let Run {
        code,
        stdout,
        stderr,
        ..
    } = run_sipvault(&data, &["export", "verify", out_s]);
    assert_eq!(code, 0, "verify of an intact export:\n{stdout}\n{stderr}");
    assert!(stdout.contains("0 problems"), "{stdout}");

    let victim = &emls[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    let Run {
        code,
        stdout,
        stderr,
        ..
    } = run_sipvault(&data, &["export", "verify", out_s]);
    assert_eq!(code, 1, "verify of an altered export:\n{stdout}\n{stderr}");
    let name = format!("eml/{}", victim.file_name().unwrap().to_str().unwrap());
    assert!(stdout.contains(&format!("altered: {name}")), "{stdout}");
    assert!(stdout.contains("1 problems"), "{stdout}");

    std::fs::remove_file(out.join("sip_messages.pcap")).unwrap();
    std::fs::write(out.join("notes.txt"), b"added later").unwrap();
    let Run { code, stdout, .. } = run_sipvault(&data, &["export", "verify", out_s]);
    assert_eq!(code, 1);
    assert!(stdout.contains("missing: sip_messages.pcap"), "{stdout}");
    assert!(stdout.contains("extra: notes.txt"), "{stdout}");
    assert!(stdout.contains(&format!("altered: {name}")), "{stdout}");
}

#[test]
fn empty_case_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("empty-case");
    let out_s = out.to_str().unwrap();

    // Nothing archived: the export still writes a complete, verifiable case.
    let Run {
        code,
        stdout,
        stderr,
        ..
    } = run_sipvault(
        &data,
        &[
            "export",
            "--query",
            "*",
            "--case",
            "empty",
            "--out",
            out_s,
            "--format",
            "jsonl,pcap,eml",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("im_messages.jsonl")).unwrap(),
        ""
    );
    assert!(tshark_sip(&out.join("sip_messages.pcap")).is_empty());
    assert!(eml_files(&out).is_empty());
    assert!(
        !out.join("im_messages.csv").exists(),
        "only the formats asked for"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["formats"],
        serde_json::json!(["eml", "jsonl", "pcap"])
    );
    assert_eq!(manifest["im_messages"], 0);
    let Run { code, .. } = run_sipvault(&data, &["export", "verify", out_s]);
    assert_eq!(code, 0);

    // A second export into the same directory is refused.
    let Run { code, stderr, .. } = run_sipvault(
        &data,
        &["export", "--query", "*", "--case", "again", "--out", out_s],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("not empty"), "{stderr}");

    // Usage errors: missing --case, unknown format, malformed query.
    let other = tmp.path().join("other");
    let other_s = other.to_str().unwrap();
    let Run { code, stderr, .. } =
        run_sipvault(&data, &["export", "--query", "x", "--out", other_s]);
    assert_eq!(code, 2, "{stderr}");
    let Run { code, stderr, .. } = run_sipvault(
        &data,
        &[
            "export", "--query", "x", "--case", "c", "--out", other_s, "--format", "pdf",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    let Run { code, stderr, .. } = run_sipvault(
        &data,
        &[
            "export",
            "--query",
            "\"unclosed",
            "--case",
            "c",
            "--out",
            other_s,
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unclosed quote"), "{stderr}");

    // verify of a directory without a manifest fails.
    let Run { code, stderr, .. } =
        run_sipvault(&data, &["export", "verify", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("MANIFEST.json"), "{stderr}");
}

#[test]
fn calls_and_presence_changes_are_exported_with_their_signalling() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let local = common::testdata().join("pcaps/local");
    let imported = Command::new(common::bin())
        .args(["import", "pcap", "--data"])
        .arg(&data)
        .arg(local.join("call-basic.pcap"))
        .arg(local.join("publish.pcap"))
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");

    let out = tmp.path().join("case");
    let out_s = out.to_str().unwrap();
    let Run {
        code,
        stdout,
        stderr,
        ..
    } = run_sipvault(
        &data,
        &[
            "export",
            "--query",
            "type:call OR type:presence",
            "--case",
            "calls",
            "--out",
            out_s,
            "--format",
            "jsonl,csv,parquet,pcap",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("MANIFEST.json")).unwrap()).unwrap();
    let calls = manifest["calls"].as_u64().unwrap();
    let presence = manifest["presence"].as_u64().unwrap();
    assert_eq!(calls, 10, "call-basic.pcap holds 10 calls: {manifest}");
    assert!(presence > 0, "publish.pcap's states: {manifest}");
    assert_eq!(manifest["im_messages"], 0);
    let lines = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .lines()
            .count() as u64
    };
    assert_eq!(lines("calls.jsonl"), calls);
    assert_eq!(lines("presence.jsonl"), presence);
    assert_eq!(
        lines("calls.csv"),
        calls + 1,
        "header and one line per call"
    );
    assert_eq!(parquet_rows(&out.join("calls.parquet")), calls as usize);
    assert_eq!(
        parquet_rows(&out.join("presence.parquet")),
        presence as usize
    );
    // The signalling of every exported call and state is in the pcap.
    let methods: HashSet<String> = tshark_sip(&out.join("sip_messages.pcap"))
        .into_iter()
        .map(|(method, _)| method)
        .collect();
    for method in ["INVITE", "ACK", "BYE", "PUBLISH"] {
        assert!(
            methods.contains(method),
            "{method} in the pcap: {methods:?}"
        );
    }
    let verify = run_sipvault(&data, &["export", "verify", out_s]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}
