//! The command line as a user meets it: the demo, exit codes, refusals.

mod common;

use std::process::Command;

use common::{bin, sipvault};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run sipvault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_end_to_end_and_leaves_a_queryable_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let (code, out, err) = run(&["demo", "--data", data.to_str().unwrap()]);
    assert_eq!(code, 0, "demo failed:\n{out}\n{err}");
    assert!(
        out.contains("alice -> dave: 480 dave is offline"),
        "offline recipient: {out}"
    );
    assert!(
        out.contains("bob -> erin: 404 erin does not exist"),
        "unknown recipient: {out}"
    );
    assert!(
        out.contains("13 IMs and 4 room posts sent, 11 delivered"),
        "{out}"
    );
    assert!(out.contains("bob -> room budget: posted"), "{out}");
    assert!(
        out.contains("quarterly budget"),
        "demo search shows a hit: {out}"
    );
    // The archive it leaves is complete and searchable afterwards.
    let csv = sipvault(
        &data,
        &[
            "sql",
            "SELECT delivery_status, count(*) AS n FROM im_messages GROUP BY delivery_status ORDER BY delivery_status",
            "--format",
            "csv",
        ],
    );
    // 11 IMs, 4 room posts and their 8 copies to the other two members.
    assert_eq!(csv.trim(), "delivery_status,n\ndelivered,23\nfailed,2");
    let history = sipvault(&data, &["room", "history", "launch", "--format", "csv"]);
    assert!(
        history.contains("Launch checklist") && history.contains("Ramen after"),
        "room history: {history}"
    );
    let hits = sipvault(
        &data,
        &[
            "search",
            "launch AND plan",
            "--from",
            "carol",
            "--format",
            "json",
        ],
    );
    let hits: serde_json::Value = serde_json::from_str(&hits).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");

    // verify passes on the sealed archive and names a tampered segment.
    let ok = sipvault(&data, &["verify"]);
    assert!(ok.contains("0 problems"), "{ok}");
    let seg = std::fs::read_dir(data.join("archive/im_messages"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&seg)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let (code, out, _) = run(&["verify", "--data", data.to_str().unwrap()]);
    assert_eq!(code, 1, "verify must fail on a changed segment: {out}");
    assert!(
        out.contains("altered") && out.contains(file.file_name().unwrap().to_str().unwrap()),
        "{out}"
    );
}

#[test]
fn exit_codes_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert_eq!(run(&["no-such-command"]).0, 2, "usage error exits 2");
    assert_eq!(run(&["search"]).0, 2, "missing argument exits 2");
    let (code, _, err) = run(&["sql", "INSERT INTO im_messages VALUES (1)", "--data", d]);
    assert_eq!(code, 1);
    assert!(
        err.contains("read-only") && err.contains("INSERT"),
        "clear refusal: {err}"
    );
    let (code, _, err) = run(&["sql", "COPY im_messages TO '/tmp/x.csv'", "--data", d]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(&["search", "\"unterminated", "--data", d]);
    assert_eq!(code, 1);
    assert!(
        err.contains("position"),
        "query error names the position: {err}"
    );
    assert_eq!(
        run(&["user", "add", "alice", "--password", "x", "--data", d]).0,
        0
    );
    let (code, _, err) = run(&["user", "add", "alice", "--password", "y", "--data", d]);
    assert_eq!(code, 1, "adding a user twice fails: {err}");
    std::fs::write(
        tmp.path().join("sipvault.toml"),
        "[sip]\ndomian = \"typo\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["user", "list", "--data", d]);
    assert_eq!(code, 1);
    assert!(
        err.contains("domian"),
        "config error names the unknown key: {err}"
    );
}

#[test]
fn catalog_keeps_ha1_not_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    sipvault(
        tmp.path(),
        &[
            "user",
            "add",
            "alice",
            "--password",
            "correct-horse-battery",
            "--domain",
            "example.com",
        ],
    );
    let db = std::fs::read(tmp.path().join("catalog.db")).unwrap();
    let wal = std::fs::read(tmp.path().join("catalog.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(21).any(|w| w == b"correct-horse-battery"),
            "password stored in the catalog"
        );
    }
    let out = sipvault(tmp.path(), &["user", "list", "--format", "json"]);
    assert!(
        out.contains("\"alice\"") && out.contains("example.com"),
        "{out}"
    );
}
