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

const DOMAIN: &str = "example.com";
const ROOM_URI: &str = "sip:room-budget@example.com";

/// IMs `ua` receives until `n` have come (bounded: the server sends the
/// copies after answering the poster, so they may still be on their way).
async fn receive(
    ua: &mut sipvault_server::ua::UserAgent,
    n: usize,
    who: &str,
) -> Vec<sipvault_server::ua::ReceivedIm> {
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(ua.received());
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), n, "{who} expected {n} IMs, got {got:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_posts_fan_out_refusals_rate_limit_history_and_search() {
    use sipvault_schemas::Transport;
    use sipvault_server::ua::UserAgent;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    add_users(
        data,
        DOMAIN,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
            ("dave", "dave-pw"),
        ],
    );
    let config = format!(
        "[sip]\ndomain = \"{DOMAIN}\"\n[rooms]\nposts_per_second_per_member = 1\nburst_per_member = 3\n"
    );
    std::fs::write(data.join("sipvault.toml"), &config).unwrap();
    sipvault(data, &["room", "create", "budget", "--topic", "Q3 budget"]);
    for (user, role) in [
        ("alice", "owner"),
        ("bob", "member"),
        ("carol", "read-only"),
    ] {
        sipvault(
            data,
            &["room", "add-member", "budget", user, "--role", role],
        );
    }
    let server = common::ServeProcess::start(data, None);

    let connect = |transport, user: &'static str| {
        let addr = server.addr;
        async move {
            let mut ua = UserAgent::connect(transport, addr, user, DOMAIN, &format!("{user}-pw"))
                .await
                .expect("user agent");
            assert_eq!(
                ua.register(600).await.expect("REGISTER"),
                200,
                "{user} registers"
            );
            ua
        }
    };
    let mut alice = connect(Transport::Udp, "alice").await;
    let mut bob = connect(Transport::Tcp, "bob").await;
    let mut carol = connect(Transport::Udp, "carol").await;
    let mut dave = connect(Transport::Udp, "dave").await;

    let mut posts = Vec::new();
    let body = "budget draft is in the shared folder";
    assert_eq!(alice.message_to(ROOM_URI, body).await.unwrap(), 200);
    posts.push(("alice", body.to_string()));
    for (ua, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let got = receive(ua, 1, who).await;
        assert_eq!(got[0].from, ROOM_URI, "{who} gets the post from the room");
        assert_eq!(got[0].body, body);
    }

    let body = "budget numbers look fine to me";
    assert_eq!(bob.message_to(ROOM_URI, body).await.unwrap(), 200);
    posts.push(("bob", body.to_string()));
    for (ua, who) in [(&mut alice, "alice"), (&mut carol, "carol")] {
        assert_eq!(receive(ua, 1, who).await[0].body, body);
    }
    assert!(bob.received().is_empty(), "the poster gets no copy");

    assert_eq!(
        carol
            .message_to(ROOM_URI, "read-only budget remark")
            .await
            .unwrap(),
        403,
        "a read-only member may not post"
    );
    assert_eq!(
        dave.message_to(ROOM_URI, "outsider budget remark")
            .await
            .unwrap(),
        403,
        "a non-member may not post"
    );
    assert_eq!(
        alice
            .message_to("sip:room-nope@example.com", "anyone?")
            .await
            .unwrap(),
        404,
        "no such room"
    );

    assert_eq!(
        bob.message_to(ROOM_URI, &"budget ".repeat(1200))
            .await
            .unwrap(),
        413,
        "a post over [sip] max_body_bytes"
    );

    // A flood from bob: the burst passes, then 503 (one post a second).
    let mut codes = Vec::new();
    for n in 0..6 {
        let body = format!("budget flood {n}");
        let code = bob.message_to(ROOM_URI, &body).await.unwrap();
        if code == 200 {
            posts.push(("bob", body));
        }
        codes.push(code);
    }
    assert!(codes.contains(&503), "bob is rate limited: {codes:?}");
    assert!(
        server.wait_for_log("post refused", std::time::Duration::from_secs(10)),
        "the refusal is logged"
    );
    let body = "budget approved";
    assert_eq!(
        alice.message_to(ROOM_URI, body).await.unwrap(),
        200,
        "alice is not limited by bob's flood"
    );
    posts.push(("alice", body.to_string()));
    let expected_at_carol = posts.len() - 2;
    let got = receive(&mut carol, expected_at_carol, "carol").await;
    assert_eq!(got.last().unwrap().body, "budget approved");

    // A member added while the server runs may post once the catalog is
    // reloaded (every second).
    sipvault(data, &["room", "add-member", "budget", "dave"]);
    let mut code = 0;
    for _ in 0..100 {
        code = dave
            .message_to(ROOM_URI, "dave joins the budget room")
            .await
            .unwrap();
        if code == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(code, 200, "dave, added while serving, can post");
    posts.push(("dave", "dave joins the budget room".to_string()));
    // Alice has had every post since bob's first, except her own.
    let for_alice: Vec<String> = posts[2..]
        .iter()
        .filter(|(who, _)| *who != "alice")
        .map(|(_, body)| body.clone())
        .collect();
    let got = receive(&mut alice, for_alice.len(), "alice").await;
    assert_eq!(
        got.into_iter().map(|im| im.body).collect::<Vec<_>>(),
        for_alice,
        "in the order they were posted"
    );

    // Every copy answered before the stop: carol has dave's post, bob
    // alice's last one and dave's.
    assert_eq!(
        receive(&mut carol, 1, "carol").await[0].body,
        "dave joins the budget room"
    );
    let got = receive(&mut bob, 2, "bob").await;
    assert_eq!(got[1].body, "dave joins the budget room");
    for ua in [alice, bob, carol, dave] {
        ua.close().await;
    }
    server.stop();

    // History: every accepted post, in order, refused attempts left out.
    let history = sipvault(data, &["room", "history", "budget", "--format", "json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let got: Vec<(String, String)> = history
        .iter()
        .map(|row| {
            (
                row["sender"].as_str().unwrap().to_string(),
                row["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = posts
        .iter()
        .map(|(who, body)| (format!("sip:{who}@{DOMAIN}"), body.clone()))
        .collect();
    assert_eq!(got, expected);
    let last2 = sipvault(
        data,
        &[
            "room", "history", "budget", "--last", "2", "--format", "csv",
        ],
    );
    let bodies: Vec<&str> = last2
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["budget approved", "dave joins the budget room"],
        "--last keeps the newest, oldest first"
    );
    assert_eq!(run_sipvault(data, &["room", "history", "nope"]).code, 1);

    // The conversation of alice's first post is the room as alice saw it:
    // her posts to the room and the room's copies of the others' posts to
    // her, i.e. every post in order.
    let key = history[0]["key"].as_str().unwrap();
    let conversation = sipvault(data, &["conversation", key, "--format", "json"]);
    let conversation: Vec<serde_json::Value> = serde_json::from_str(&conversation).unwrap();
    let bodies: Vec<&str> = conversation
        .iter()
        .map(|row| row["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        posts
            .iter()
            .map(|(_, body)| body.as_str())
            .collect::<Vec<_>>()
    );
    let audit = sipvault(data, &["audit", "list", "--format", "csv"]);
    assert!(audit.contains("room history,budget --last 2,2,"), "{audit}");

    // Every copy the room sent is archived with its 200: two members
    // besides the poster were registered for each post, three once dave
    // had joined.
    let copies: usize = posts
        .iter()
        .map(|(who, _)| if *who == "dave" { 3 } else { 2 })
        .sum();
    let counted = sipvault(
        data,
        &[
            "sql",
            &format!(
                "SELECT count(*) AS n FROM im_messages WHERE sender = '{ROOM_URI}' AND status = 200"
            ),
            "--format",
            "csv",
        ],
    );
    assert_eq!(
        counted.lines().nth(1),
        Some(copies.to_string().as_str()),
        "every copy archived and answered 200 (its request stamped before the answer): {counted}"
    );

    // Search: room:budget finds the posts with the word, not the copies
    // the room sent to its members, nor posts elsewhere.
    let hits = common::search_hits(data, "room:budget approved");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["from"], "sip:alice@example.com");
    assert_eq!(hits[0]["body"], "budget approved");
    let hits = common::search_hits(data, "room:budget budget");
    // Every post has "budget" in it; refused attempts are archived IMs to
    // the room too (carol's, dave's first, bob's flood over the rate).
    for (who, body) in &posts {
        assert!(
            hits.iter().any(|h| h["body"] == body.as_str()
                && h["from"] == format!("sip:{who}@{DOMAIN}")
                && h["to"][0] == ROOM_URI),
            "no hit for {who}'s post {body:?}: {hits:?}"
        );
    }
    assert!(
        hits.iter().all(|h| h["from"] != ROOM_URI),
        "the room's copies are not posts: {hits:?}"
    );
    assert!(common::search_hits(data, "room:lunch budget").is_empty());
}

/// NOTIFYs `ua` receives until one has a body containing `needle`
/// (bounded); returns it.
async fn notify_with(
    ua: &mut sipvault_server::ua::UserAgent,
    needle: &str,
    who: &str,
) -> sipvault_server::ua::ReceivedNotify {
    let mut seen = Vec::new();
    for _ in 0..200 {
        for n in ua.notifies() {
            if n.body.contains(needle) {
                return n;
            }
            seen.push(n);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{who} got no NOTIFY with {needle:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_subscribers_get_posts_and_membership_changes_as_notify_history_over_sip_private_rooms_refuse_outsiders()
 {
    use sipvault_schemas::Transport;
    use sipvault_server::ua::UserAgent;

    const BOARD_URI: &str = "sip:room-board@example.com";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    add_users(
        data,
        DOMAIN,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
            ("dave", "dave-pw"),
            ("erin", "erin-pw"),
        ],
    );
    let config = format!("[sip]\ndomain = \"{DOMAIN}\"\n[rooms]\nhistory_posts = 50\n");
    std::fs::write(data.join("sipvault.toml"), &config).unwrap();
    sipvault(data, &["room", "create", "budget", "--topic", "Q3 budget"]);
    sipvault(
        data,
        &["room", "create", "board", "--topic", "Board", "--private"],
    );
    for (room, user, role) in [
        ("budget", "alice", "owner"),
        ("budget", "bob", "member"),
        ("budget", "carol", "read-only"),
        ("board", "alice", "owner"),
    ] {
        sipvault(data, &["room", "add-member", room, user, "--role", role]);
    }
    let server = common::ServeProcess::start(data, None);
    let connect = |transport, user: &'static str, addr| async move {
        let mut ua = UserAgent::connect(transport, addr, user, DOMAIN, &format!("{user}-pw"))
            .await
            .expect("user agent");
        assert_eq!(ua.register(600).await.expect("REGISTER"), 200, "{user}");
        ua
    };
    let mut alice = connect(Transport::Udp, "alice", server.addr).await;
    let mut bob = connect(Transport::Tcp, "bob", server.addr).await;
    let mut carol = connect(Transport::Udp, "carol", server.addr).await;
    let mut erin = connect(Transport::Udp, "erin", server.addr).await;

    // Members subscribe and get the room's full state.
    for (ua, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        assert_eq!(ua.subscribe(ROOM_URI, "chat-room", 600).await.unwrap(), 200);
        let n = notify_with(ua, "state=\"full\"", who).await;
        assert_eq!(n.event, "chat-room");
        assert!(n.subscription_state.starts_with("active"), "{n:?}");
        assert_eq!(n.content_type, "application/vnd.sipvault.chat-room+xml");
        assert!(
            n.body
                .contains("<member uri=\"sip:carol@example.com\" role=\"read-only\"/>"),
            "{n:?}"
        );
    }
    // erin is no member: the private room is closed to her, the public
    // one open for reading.
    assert_eq!(
        erin.subscribe(BOARD_URI, "chat-room", 600).await.unwrap(),
        403
    );
    assert_eq!(erin.message_to(BOARD_URI, "/history").await.unwrap(), 403);
    assert_eq!(
        erin.subscribe(ROOM_URI, "chat-room", 600).await.unwrap(),
        200
    );
    notify_with(&mut erin, "state=\"full\"", "erin").await;

    // A post reaches every subscriber as a NOTIFY, and no one as MESSAGE.
    let body = "budget is due friday";
    assert_eq!(alice.message_to(ROOM_URI, body).await.unwrap(), 200);
    let post = format!("<post sender=\"sip:alice@{DOMAIN}\" time=\"");
    for (ua, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut erin, "erin"),
    ] {
        let n = notify_with(ua, &post, who).await;
        assert!(n.body.contains(&format!("\">{body}</post>")), "{n:?}");
        assert!(n.body.contains("state=\"partial\""), "{n:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (ua, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        assert!(
            ua.received().is_empty(),
            "{who} is subscribed: no MESSAGE copy"
        );
    }

    // A member added with the CLI while serving: every subscriber is told
    // once the server has reloaded the catalog.
    sipvault(data, &["room", "add-member", "budget", "dave"]);
    let added = "<member uri=\"sip:dave@example.com\" role=\"member\" change=\"added\"/>";
    for (ua, who) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut erin, "erin"),
    ] {
        notify_with(ua, added, who).await;
    }

    // History over SIP: 200, then one MESSAGE from the room with the posts.
    assert_eq!(bob.message_to(ROOM_URI, "/history 10").await.unwrap(), 200);
    let reply = receive(&mut bob, 1, "bob").await;
    assert_eq!(reply[0].from, ROOM_URI);
    assert!(
        reply[0]
            .body
            .ends_with(&format!(" sip:alice@{DOMAIN}: {body}\n")),
        "{:?}",
        reply[0].body
    );
    assert_eq!(reply[0].body.lines().count(), 1, "{:?}", reply[0].body);
    assert_eq!(
        bob.message_to(ROOM_URI, "/history last week")
            .await
            .unwrap(),
        400
    );
    for ua in [alice, bob, carol, erin] {
        ua.close().await;
    }
    server.stop();

    // The archive's room history holds the post, not the command.
    let history = sipvault(data, &["room", "history", "budget", "--format", "csv"]);
    let bodies: Vec<&str> = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(bodies, [body]);

    // After a restart the server's history comes from the archive.
    let server = common::ServeProcess::start(data, None);
    let mut dave = connect(Transport::Udp, "dave", server.addr).await;
    assert_eq!(dave.message_to(ROOM_URI, "/history").await.unwrap(), 200);
    let reply = receive(&mut dave, 1, "dave").await;
    assert!(
        reply[0]
            .body
            .ends_with(&format!(" sip:alice@{DOMAIN}: {body}\n")),
        "{:?}",
        reply[0].body
    );
    dave.close().await;
    server.stop();
}

/// SIPp members beside the built-in user agent: a SIPp UAS registered as
/// erin gets every other member's post as a MESSAGE from the room, and a
/// SIPp UAC posting as frank reaches the others; both posts are archived
/// and found by `room history` and `search room:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_members_post_to_a_room_and_receive_its_copies() {
    use sipvault_schemas::Transport;
    use sipvault_server::ua::UserAgent;

    if !common::sipp_available() {
        panic!("sipp is not installed (Debian package sip-tester; .ci/run installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    add_users(
        data,
        DOMAIN,
        &[
            ("alice", "alice-pw"),
            ("erin", "secret"),
            ("frank", "secret"),
        ],
    );
    std::fs::write(
        data.join("sipvault.toml"),
        format!("[sip]\ndomain = \"{DOMAIN}\"\n"),
    )
    .unwrap();
    sipvault(data, &["room", "create", "budget", "--topic", "Q3 budget"]);
    for user in ["alice", "erin", "frank"] {
        sipvault(data, &["room", "add-member", "budget", user]);
    }
    let server = common::ServeProcess::start(data, None);
    let remote = server.addr.to_string();

    let mut alice = UserAgent::connect(Transport::Udp, server.addr, "alice", DOMAIN, "alice-pw")
        .await
        .expect("user agent");
    assert_eq!(alice.register(600).await.unwrap(), 200, "alice registers");
    // erin registers with SIPp from the port her SIPp UAS then listens on,
    // for the two posts of the others.
    let erin_port = common::free_udp_port();
    let register_remote = remote.clone();
    tokio::task::spawn_blocking(move || {
        common::sipp_register(
            &register_remote,
            "erin",
            DOMAIN,
            erin_port,
            "REGISTER erin (tests/sipp/register-user.xml)",
        )
    })
    .await
    .unwrap();
    let erin = common::sipp(
        &common::testdata().join("sipp/message"),
        &["-sf", "uas.xml", "-p", &erin_port.to_string(), "-m", "2"].map(String::from),
    );

    let from_alice = "budget draft from alice";
    assert_eq!(alice.message_to(ROOM_URI, from_alice).await.unwrap(), 200);
    // frank posts with SIPp; he is a member but not registered, so he
    // gets no copies.
    let post_remote = remote.clone();
    tokio::task::spawn_blocking(move || {
        common::run_sipp(
            &common::our_scenarios(),
            &[
                "-sf",
                "room-post.xml",
                &post_remote,
                "-m",
                "1",
                "-s",
                "frank",
                "-key",
                "domain",
                DOMAIN,
                "-key",
                "room",
                "budget",
            ]
            .map(String::from),
            "post as frank (tests/sipp/room-post.xml)",
        )
    })
    .await
    .unwrap();
    // SIPp ends the body with the line's CRLF.
    let from_frank = "budget forecast from sipp number 1\r\n";
    let got = receive(&mut alice, 1, "alice").await;
    assert_eq!(
        got[0].from, ROOM_URI,
        "alice gets frank's post from the room"
    );
    assert_eq!(got[0].body, from_frank);
    let erin = tokio::task::spawn_blocking(move || erin.wait_with_output())
        .await
        .unwrap()
        .expect("wait for erin's SIPp");
    assert!(
        erin.status.success(),
        "erin's SIPp UAS did not get both posts ({}):\n{}\n{}",
        erin.status,
        String::from_utf8_lossy(&erin.stdout),
        String::from_utf8_lossy(&erin.stderr)
    );
    alice.close().await;
    server.stop();

    let history = sipvault(data, &["room", "history", "budget", "--format", "json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let got: Vec<(&str, &str)> = history
        .iter()
        .map(|r| (r["sender"].as_str().unwrap(), r["body"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("sip:alice@example.com", from_alice),
            ("sip:frank@example.com", from_frank)
        ]
    );
    // Each post went to two members (erin's SIPp and the other one), every
    // copy answered 200 and archived: erin twice, alice once.
    let copies = common::sql_rows(
        data,
        &format!(
            "SELECT body, recipients FROM im_messages WHERE sender = '{ROOM_URI}' AND status = 200 ORDER BY time"
        ),
    );
    let copies: Vec<(String, String)> = copies
        .iter()
        .map(|r| {
            (
                r["body"].as_str().unwrap().to_string(),
                r["recipients"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected = vec![
        (from_alice.to_string(), "sip:erin@example.com".to_string()),
        (from_frank.to_string(), "sip:alice@example.com".to_string()),
        (from_frank.to_string(), "sip:erin@example.com".to_string()),
    ];
    let mut sorted = copies.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "copies archived: {copies:?}");
    let hits = common::search_hits(data, "room:budget forecast");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["from"], "sip:frank@example.com");
    assert_eq!(hits[0]["from_name"], "SIPp frank");
}
