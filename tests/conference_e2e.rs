//! Ad hoc conferences and the `room_events` table end to end with the real
//! binary: three built-in agents over UDP and TCP make a conference through
//! the factory, join it by REFER, by writing to the focus and by
//! SUBSCRIBE, talk, leave; room membership changes made with `sipvault
//! room` while serving reach the archive's `room_events` once, across a
//! SIGKILL and a restart. Then SQL, conversation, search and timeline.

mod common;

use std::time::Duration;

use common::{add_users, sipvault, sql_rows};
use sipvault_schemas::Transport;
use sipvault_server::ua::{ReceivedIm, UserAgent};

const DOMAIN: &str = "example.com";
const FACTORY: &str = "sip:conf-factory@example.com";

/// Waits for `n` IMs at `ua` (the focus sends its copies after answering
/// the author, so they may still be on their way).
async fn receive(ua: &mut UserAgent, n: usize, who: &str) -> Vec<ReceivedIm> {
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(ua.received());
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), n, "{who} expected {n} IMs, got {got:?}");
    got
}

async fn connect(server: std::net::SocketAddr, transport: Transport, user: &str) -> UserAgent {
    let mut ua = UserAgent::connect(transport, server, user, DOMAIN, &format!("{user}-pw"))
        .await
        .expect("user agent");
    assert_eq!(
        ua.register(600).await.expect("REGISTER"),
        200,
        "{user} registers"
    );
    ua
}

/// Polls `sipvault sql` until `statement` gives `n` rows.
fn rows_eventually(data: &std::path::Path, statement: &str, n: usize) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = sql_rows(data, statement);
        if rows.len() == n {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conference_of_three_and_room_events_archived_once_across_a_crash() {
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
    // Segments roll every second, so rows reach Parquet while serving.
    let config = format!("[sip]\ndomain = \"{DOMAIN}\"\n[archive]\nsegment_max_age_secs = 1\n");
    std::fs::write(data.join("sipvault.toml"), &config).unwrap();
    sipvault(
        data,
        &["room", "create", "budget", "--topic", "Q3", "--as", "lead"],
    );
    sipvault(
        data,
        &["room", "add-member", "budget", "alice", "--as", "lead"],
    );

    let server = common::ServeProcess::start(data, None);
    let mut alice = connect(server.addr, Transport::Udp, "alice").await;
    let mut bob = connect(server.addr, Transport::Tcp, "bob").await;
    let mut carol = connect(server.addr, Transport::Udp, "carol").await;
    let mut dave = connect(server.addr, Transport::Udp, "dave").await;

    // alice creates a conference: 200 with the focus in Contact, and a
    // welcome from the focus.
    let created = alice
        .request(
            "MESSAGE",
            FACTORY,
            &[],
            Some("let's talk about the offsite"),
        )
        .await
        .unwrap();
    assert_eq!(created.status(), Some(200));
    let focus = created
        .contacts()
        .into_iter()
        .find_map(|c| c.addr.map(|a| a.uri))
        .expect("focus URI in Contact");
    let id = focus
        .trim_start_matches("sip:")
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(id.starts_with("conf-"), "{focus}");
    let welcome = receive(&mut alice, 1, "alice").await;
    assert_eq!(welcome[0].from, focus);
    assert!(welcome[0].body.contains(&focus));

    // alice refers bob and carol; each gets an invitation from the focus.
    for user in ["bob", "carol"] {
        let refer_to = format!("<sip:{user}@{DOMAIN}>");
        let resp = alice
            .request("REFER", &focus, &[("Refer-To", &refer_to)], None)
            .await
            .unwrap();
        assert_eq!(resp.status(), Some(202), "REFER {user}");
    }
    for (ua, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let invitation = receive(ua, 1, who).await;
        assert_eq!(invitation[0].from, focus);
        assert!(
            invitation[0].body.contains("alice invites you"),
            "{invitation:?}"
        );
    }
    // A stranger may not post; an unknown focus is 404.
    assert_eq!(dave.message_to(&focus, "may I?").await.unwrap(), 403);
    assert_eq!(
        alice
            .message_to("sip:conf-0000000000000000@example.com", "anyone?")
            .await
            .unwrap(),
        404
    );

    // bob joins by writing to the focus, carol by SUBSCRIBE.
    assert_eq!(
        bob.message_to(&focus, "bob joins the offsite talk")
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        receive(&mut alice, 1, "alice").await[0].body,
        "bob joins the offsite talk"
    );
    let subscribed = carol
        .request(
            "SUBSCRIBE",
            &focus,
            &[("Event", "conference"), ("Expires", "600")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(subscribed.status(), Some(200));

    // Every message reaches every other participant, from the focus.
    let said = [
        ("alice", "offsite on the 12th?"),
        ("bob", "the 12th works for me"),
        ("carol", "offsite on the 12th, agreed"),
    ];
    for (who, body) in said {
        let ua = match who {
            "alice" => &mut alice,
            "bob" => &mut bob,
            _ => &mut carol,
        };
        assert_eq!(
            ua.message_to(&focus, body).await.unwrap(),
            200,
            "{who} posts"
        );
        for (other, ua) in [
            ("alice", &mut alice),
            ("bob", &mut bob),
            ("carol", &mut carol),
        ] {
            if other == who {
                continue;
            }
            let got = receive(ua, 1, other).await;
            assert_eq!(
                (got[0].from.as_str(), got[0].body.as_str()),
                (focus.as_str(), body)
            );
        }
    }
    assert!(alice.received().is_empty() && bob.received().is_empty());

    // carol leaves; bob's next message reaches alice only; then bob (BYE)
    // and alice (/leave) leave and the conference ends.
    assert_eq!(carol.message_to(&focus, "/leave").await.unwrap(), 200);
    assert_eq!(bob.message_to(&focus, "carol has left").await.unwrap(), 200);
    assert_eq!(
        receive(&mut alice, 1, "alice").await[0].body,
        "carol has left"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        carol.received().is_empty(),
        "carol gets nothing after leaving"
    );
    assert_eq!(carol.message_to(&focus, "back?").await.unwrap(), 403);
    let bye = bob.request("BYE", &focus, &[], None).await.unwrap();
    assert_eq!(bye.status(), Some(200));
    assert_eq!(alice.message_to(&focus, "/leave").await.unwrap(), 200);
    assert_eq!(
        alice.message_to(&focus, "hello?").await.unwrap(),
        404,
        "ended"
    );

    // A room membership change while serving.
    sipvault(
        data,
        &["room", "add-member", "budget", "bob", "--as", "lead"],
    );
    let room_rows = "SELECT catalog_id FROM room_events WHERE kind = 'room'";
    assert_eq!(
        rows_eventually(data, room_rows, 3).len(),
        3,
        "created, alice and bob added: in Parquet while serving"
    );
    for ua in [alice, bob, carol, dave] {
        ua.close().await;
    }
    // A crash: no shutdown code runs.
    drop(server);

    // After the restart another change; then a clean stop.
    let server = common::ServeProcess::start(data, None);
    sipvault(
        data,
        &["room", "remove-member", "budget", "bob", "--as", "lead"],
    );
    // A conference still open when the server stops.
    let mut alice = connect(server.addr, Transport::Udp, "alice").await;
    let open = alice
        .request("MESSAGE", FACTORY, &[], Some(""))
        .await
        .unwrap();
    let open_focus = open
        .contacts()
        .into_iter()
        .find_map(|c| c.addr.map(|a| a.uri))
        .expect("focus URI in Contact");
    alice.close().await;
    assert_eq!(rows_eventually(data, room_rows, 4).len(), 4);
    std::thread::sleep(Duration::from_secs(2));
    let stop_log = server.stop();

    // Every catalog event exactly once, with URIs and roles.
    let rooms = sql_rows(
        data,
        "SELECT catalog_id, room, member, event, role, by_user FROM room_events \
         WHERE kind = 'room' ORDER BY catalog_id",
    );
    let got: Vec<(i64, String, String, String)> = rooms
        .iter()
        .map(|r| {
            (
                r["catalog_id"].as_i64().unwrap(),
                r["member"].as_str().unwrap_or("").to_string(),
                r["event"].as_str().unwrap().to_string(),
                r["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let m = |u: &str| format!("sip:{u}@{DOMAIN}");
    assert_eq!(
        got,
        vec![
            (1, String::new(), "created".into(), String::new()),
            (2, m("alice"), "member_added".into(), "member".into()),
            (3, m("bob"), "member_added".into(), "member".into()),
            (4, m("bob"), "member_removed".into(), String::new()),
        ],
        "each catalog event once: {rooms:?}"
    );
    assert!(
        rooms
            .iter()
            .all(|r| r["room"] == "sip:room-budget@example.com" && r["by_user"] == "lead")
    );

    // The conference's life, in order.
    let events = sql_rows(
        data,
        &format!(
            "SELECT event, member, by_user FROM room_events \
             WHERE kind = 'conference' AND room = '{focus}' ORDER BY time"
        ),
    );
    let got: Vec<(String, String, String)> = events
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["member"].as_str().unwrap_or("").to_string(),
                r["by_user"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let e = |ev: &str, member: &str, by: &str| {
        (
            ev.to_string(),
            if member.is_empty() {
                String::new()
            } else {
                m(member)
            },
            m(by),
        )
    };
    assert_eq!(
        got,
        vec![
            e("created", "alice", "alice"),
            e("invited", "bob", "alice"),
            e("invited", "carol", "alice"),
            e("joined", "bob", "bob"),
            e("joined", "carol", "carol"),
            e("left", "carol", "carol"),
            e("left", "bob", "bob"),
            e("left", "alice", "alice"),
            e("ended", "", "alice"),
        ]
    );

    // The messages: written to the focus (answered 200) and its copies,
    // which share the conference's Call-ID.
    let call_id = format!("{id}@{DOMAIN}");
    let copies = sql_rows(
        data,
        &format!(
            "SELECT body, recipients FROM im_messages WHERE call_id = '{call_id}' AND status = 200 \
             ORDER BY time, cseq"
        ),
    );
    // Welcome, two invitations, bob's first message to alice, three
    // messages to two each, bob's last to alice.
    assert_eq!(copies.len(), 1 + 2 + 1 + 6 + 1, "{copies:?}");
    let conversation = sipvault(data, &["conversation", &call_id, "--format", "json"]);
    let conversation: Vec<serde_json::Value> = serde_json::from_str(&conversation).unwrap();
    for (who, body) in said {
        assert!(
            conversation
                .iter()
                .any(|r| r["sender"] == m(who).as_str() && r["body"] == body),
            "{who}'s message in the conversation: {conversation:?}"
        );
        assert_eq!(
            conversation
                .iter()
                .filter(|r| r["sender"] == focus.as_str() && r["body"] == body)
                .count(),
            2,
            "and its two copies"
        );
    }
    let hits = common::search_hits(data, &format!("conference:{id} offsite"));
    let mut senders: Vec<&str> = hits.iter().map(|h| h["from"].as_str().unwrap()).collect();
    senders.sort();
    assert_eq!(
        senders,
        [m("alice"), m("bob"), m("carol")],
        "the messages with the word written to the focus, not its copies: {hits:?}"
    );
    let timeline = sipvault(
        data,
        &[
            "timeline",
            &m("carol"),
            "--since",
            "2000-01-01",
            "--format",
            "json",
        ],
    );
    let timeline: Vec<serde_json::Value> = serde_json::from_str(&timeline).unwrap();
    let membership: Vec<&str> = timeline
        .iter()
        .filter(|r| r["kind"] == "conference-event")
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(membership, ["invited", "joined", "left"]);
    // Stopping the server ended the open conference, on the record.
    let ended = sql_rows(
        data,
        &format!(
            "SELECT event, by_user FROM room_events WHERE room = '{open_focus}' ORDER BY time"
        ),
    );
    let ended: Vec<(&str, &str)> = ended
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["by_user"].as_str().unwrap()))
        .collect();
    let alice_uri = m("alice");
    assert_eq!(
        ended,
        [
            ("created", alice_uri.as_str()),
            ("left", "server"),
            ("ended", "server")
        ]
    );
    let verify = common::run_sipvault(data, &["verify"]);
    assert_eq!(
        verify.code, 0,
        "{}{}\nSTOPLOG{stop_log}",
        verify.stdout, verify.stderr
    );
}
