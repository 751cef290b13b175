//! Persistent chat rooms end to end with the real binary: rooms and
//! members in the catalog through `sipvault room`, posts over SIP fanned
//! out to the registered members, history and search from the archive.

mod common;

use common::{add_users, run_sipvault, sipvault};

#[test]
fn room_commands_manage_rooms_and_log_every_membership_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    add_users(
        data,
        "example.com",
        &[("alice", "a"), ("bob", "b"), ("carol", "c")],
    );
    let room = |args: &[&str]| {
        let mut all = vec!["room"];
        all.extend_from_slice(args);
        run_sipvault(data, &all)
    };
    let created = room(&[
        "create",
        "budget",
        "--topic",
        "Q3, budget",
        "--category",
        "finance",
        "--domain",
        "example.com",
        "--as",
        "lead",
    ]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(created.stdout.contains("sip:room-budget@example.com"));

    let twice = room(&["create", "budget", "--topic", "again"]);
    assert_eq!(twice.code, 1, "a taken name is a failure");
    assert!(twice.stderr.contains("already exists"), "{}", twice.stderr);
    assert_eq!(room(&["create", "Bad Name", "--topic", "x"]).code, 1);
    assert_eq!(
        room(&["create", "x"]).code,
        2,
        "--topic is required: usage error"
    );

    for (user, role) in [("alice", "owner"), ("bob", "member"), ("carol", "member")] {
        let r = room(&["add-member", "budget", user, "--role", role]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let changed = room(&["add-member", "budget", "carol", "--role", "read-only"]);
    assert!(
        changed.stdout.contains("member -> read-only"),
        "{}",
        changed.stdout
    );
    assert_eq!(
        room(&["add-member", "budget", "bob", "--role", "boss"]).code,
        2
    );
    let stranger = room(&["add-member", "budget", "mallory"]);
    assert_eq!(stranger.code, 1);
    assert!(stranger.stderr.contains("no user mallory@example.com"));
    assert_eq!(room(&["add-member", "nope", "bob"]).code, 1);

    let show = sipvault(data, &["room", "show", "budget", "--format", "json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["uri"], "sip:room-budget@example.com");
    assert_eq!(show["topic"], "Q3, budget");
    assert_eq!(show["category"], "finance");
    let members: Vec<(String, String)> = show["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("alice".to_string(), "owner".to_string()),
            ("bob".to_string(), "member".to_string()),
            ("carol".to_string(), "read-only".to_string()),
        ]
    );

    let removed = room(&["remove-member", "budget", "bob", "--as", "alice"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_eq!(room(&["remove-member", "budget", "bob"]).code, 1);

    let list = sipvault(data, &["room", "list", "--format", "csv"]);
    let mut lines = list.lines();
    assert_eq!(
        lines.next(),
        Some("name,uri,topic,category,private,members,created")
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("budget,sip:room-budget@example.com,\"Q3, budget\",finance,no,2,"),
        "{row}"
    );

    let events = sipvault(data, &["room", "events", "budget", "--format", "csv"]);
    let events: Vec<String> = events
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.to_string())
        .collect();
    assert_eq!(
        events,
        [
            "budget,,created,lead",
            "budget,alice,member-added:owner,",
            "budget,bob,member-added:member,",
            "budget,carol,member-added:member,",
            "budget,carol,role-changed:read-only,",
            "budget,bob,member-removed,alice",
        ]
        .iter()
        .map(|e| {
            // Changes made without --as are recorded under the OS user.
            if e.ends_with(',') {
                format!("{e}{}", reader())
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
    );
    assert_eq!(room(&["show", "nope"]).code, 1);
}

/// Who the binary records when no `--as` is given.
fn reader() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}
