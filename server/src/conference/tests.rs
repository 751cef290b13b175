//! The conference focus in simulated time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sipvault_sip::{MessageBuilder, SipMessage};

use super::{ConferenceConfig, ConferenceEvent, ConferenceEventKind, ConferenceStats};
use crate::core::{CoreConfig, Event, Transmit};
use crate::core_tests::{DOMAIN, Sim, addr, alice_addr, bob_addr, config, creds, parse};

const FACTORY: &str = "sip:conf-factory@example.test";

fn carol_addr() -> SocketAddr {
    addr("198.51.100.30:40003")
}
fn erin_addr() -> SocketAddr {
    addr("198.51.100.50:40006")
}

/// alice, bob, carol and erin registered; dave a user who never registers.
fn sim_with(config: CoreConfig) -> Sim {
    let mut sim = Sim::new(config);
    let mut users = HashMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        users.insert(user.to_string(), creds(user, &format!("{user}-pw")));
    }
    sim.core.set_users(users);
    for (user, flow) in [
        ("alice", alice_addr()),
        ("bob", bob_addr()),
        ("carol", carol_addr()),
        ("erin", erin_addr()),
    ] {
        let contact = format!("<sip:{user}@{flow}>");
        let resp = sim.register(user, &format!("{user}-pw"), flow, &contact, Some(3600));
        assert_eq!(resp.status(), Some(200), "registering {user}");
    }
    sim.events();
    sim
}

fn sim() -> Sim {
    sim_with(config())
}

/// A request from `user` at `flow` to `ruri`, with extra headers and a body.
fn request(
    sim: &mut Sim,
    method: &str,
    user: &str,
    flow: SocketAddr,
    ruri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let id = sim.next_id();
    let mut b = MessageBuilder::request(method, ruri);
    b.header(
        "Via",
        &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-conf-{id};rport"),
    )
    .header("Max-Forwards", "70")
    .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=c{id}"))
    .header("To", &format!("<{ruri}>"))
    .header("Call-ID", &format!("conf-test-{id}@test"))
    .header("CSeq", &format!("1 {method}"))
    .header("Contact", &format!("<sip:{user}@{flow}>"));
    for (name, value) in headers {
        b.header(name, value);
    }
    if !body.is_empty() {
        b.body("text/plain", body.as_bytes());
    }
    b.build()
}

/// Sends a request; returns the response to its sender and everything else.
fn send(sim: &mut Sim, flow: SocketAddr, bytes: &[u8]) -> (SipMessage, Vec<Transmit>) {
    let out = sim.udp(flow, bytes);
    let (responses, others): (Vec<_>, Vec<_>) = out
        .into_iter()
        .partition(|t| t.dst == flow && !parse(&t.bytes, "out").is_request());
    assert_eq!(responses.len(), 1, "one answer to the sender");
    (parse(&responses[0].bytes, "response"), others)
}

fn message(
    sim: &mut Sim,
    user: &str,
    flow: SocketAddr,
    ruri: &str,
    body: &str,
) -> (u16, Vec<Transmit>) {
    let req = request(sim, "MESSAGE", user, flow, ruri, &[], body);
    let (resp, out) = send(sim, flow, &req);
    (resp.status().unwrap_or(0), out)
}

/// Answers every request in `out` 200 (the users' agents).
fn answer_all(sim: &mut Sim, out: &[Transmit]) {
    for t in out {
        let req = parse(&t.bytes, "request");
        let resp = MessageBuilder::response_to(&req, 200, "OK").build();
        assert!(sim.udp(t.dst, &resp).is_empty(), "answers are absorbed");
    }
}

fn conference_events(sim: &mut Sim) -> Vec<ConferenceEvent> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Conference(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn summary(events: &[ConferenceEvent]) -> Vec<(ConferenceEventKind, Option<String>, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.member.as_ref().map(|m| {
                    m.trim_start_matches("sip:")
                        .trim_end_matches(&format!("@{DOMAIN}"))
                        .to_string()
                }),
                e.by.clone(),
            )
        })
        .collect()
}

fn uri(user: &str) -> String {
    format!("sip:{user}@{DOMAIN}")
}

/// alice creates a conference; returns its focus URI.
fn create(sim: &mut Sim) -> String {
    let req = request(sim, "MESSAGE", "alice", alice_addr(), FACTORY, &[], "");
    let (resp, out) = send(sim, alice_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    let focus = resp
        .contacts()
        .into_iter()
        .find_map(|c| c.addr.map(|a| a.uri))
        .expect("the focus URI in Contact");
    assert!(focus.starts_with("sip:conf-") && focus.ends_with(&format!("@{DOMAIN}")));
    assert_eq!(out.len(), 1, "a welcome MESSAGE to alice");
    let welcome = parse(&out[0].bytes, "welcome");
    assert_eq!(out[0].dst, alice_addr());
    assert_eq!(
        welcome.from().unwrap().uri,
        focus,
        "it comes from the focus"
    );
    assert!(String::from_utf8_lossy(welcome.body()).contains(&focus));
    answer_all(sim, &out);
    focus
}

fn refer(
    sim: &mut Sim,
    user: &str,
    flow: SocketAddr,
    focus: &str,
    target: &str,
) -> (u16, Vec<Transmit>) {
    let refer_to = format!("<{target}>");
    let req = request(
        sim,
        "REFER",
        user,
        flow,
        focus,
        &[("Refer-To", &refer_to)],
        "",
    );
    let (resp, out) = send(sim, flow, &req);
    (resp.status().unwrap_or(0), out)
}

#[test]
fn three_join_by_refer_and_by_writing_and_every_message_reaches_every_other_participant() {
    let mut sim = sim();
    let focus = create(&mut sim);
    let id = focus
        .trim_start_matches("sip:")
        .split('@')
        .next()
        .unwrap()
        .to_string();

    // alice refers bob and carol: 202, a NOTIFY of the referral's outcome
    // back to alice, an invitation from the focus to each.
    for (user, flow) in [("bob", bob_addr()), ("carol", carol_addr())] {
        let (code, out) = refer(&mut sim, "alice", alice_addr(), &focus, &uri(user));
        assert_eq!(code, 202);
        let notify = out
            .iter()
            .find(|t| t.dst == alice_addr())
            .map(|t| parse(&t.bytes, "notify"))
            .expect("a NOTIFY to alice");
        assert_eq!(notify.method(), Some("NOTIFY"));
        assert_eq!(notify.header("Event"), Some("refer"));
        assert!(
            notify
                .header("Subscription-State")
                .unwrap()
                .starts_with("terminated")
        );
        assert_eq!(notify.body(), b"SIP/2.0 200 OK\r\n");
        let invitation = out
            .iter()
            .find(|t| t.dst == flow)
            .map(|t| parse(&t.bytes, "invitation"))
            .expect("an invitation");
        assert_eq!(invitation.from().unwrap().uri, focus);
        assert!(invitation.header("From").unwrap().starts_with("\"alice\""));
        assert_eq!(
            invitation.call_id(),
            Some(format!("{id}@{DOMAIN}").as_str())
        );
        answer_all(&mut sim, &out);
    }

    // Invited, not joined: alice's message reaches no one yet.
    let (code, out) = message(&mut sim, "alice", alice_addr(), &focus, "anyone here?");
    assert_eq!((code, out.len()), (200, 0));

    // bob joins by writing to the focus; his message goes to alice only.
    let (code, out) = message(&mut sim, "bob", bob_addr(), &focus, "bob here");
    assert_eq!(code, 200);
    assert_eq!(
        out.iter().map(|t| t.dst).collect::<Vec<_>>(),
        [alice_addr()]
    );
    answer_all(&mut sim, &out);
    // carol joins by SUBSCRIBE: 200, a NOTIFY with the participants.
    let req = request(
        &mut sim,
        "SUBSCRIBE",
        "carol",
        carol_addr(),
        &focus,
        &[("Event", "conference"), ("Expires", "600")],
        "",
    );
    let (resp, out) = send(&mut sim, carol_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.header("Expires"), Some("600"));
    assert_eq!(out.len(), 1);
    let notify = parse(&out[0].bytes, "conference notify");
    assert_eq!(notify.header("Event"), Some("conference"));
    assert_eq!(
        notify.header("Subscription-State"),
        Some("active;expires=600")
    );
    let info = String::from_utf8_lossy(notify.body()).into_owned();
    for user in ["alice", "bob", "carol"] {
        assert!(
            info.contains(&format!("entity=\"{}\"", uri(user))),
            "{info}"
        );
    }
    answer_all(&mut sim, &out);

    // Every message reaches every other participant, from the focus, the
    // author as display name, the conference's Call-ID, a CSeq each.
    let mut cseqs = Vec::new();
    for (user, flow) in [
        ("alice", alice_addr()),
        ("bob", bob_addr()),
        ("carol", carol_addr()),
    ] {
        let body = format!("{user} says hi");
        let (code, out) = message(&mut sim, user, flow, &focus, &body);
        assert_eq!(code, 200);
        let mut dsts: Vec<_> = out.iter().map(|t| t.dst).collect();
        dsts.sort();
        let mut expected: Vec<_> = [alice_addr(), bob_addr(), carol_addr()]
            .into_iter()
            .filter(|a| *a != flow)
            .collect();
        expected.sort();
        assert_eq!(dsts, expected, "{user}'s message");
        for t in &out {
            let copy = parse(&t.bytes, "copy");
            assert_eq!(copy.from().unwrap().uri, focus);
            assert!(
                copy.header("From")
                    .unwrap()
                    .starts_with(&format!("\"{user}\""))
            );
            assert_eq!(copy.body(), body.as_bytes());
            assert_eq!(copy.call_id(), Some(format!("{id}@{DOMAIN}").as_str()));
            cseqs.push(copy.cseq().unwrap().0);
        }
        answer_all(&mut sim, &out);
    }
    let mut unique = cseqs.clone();
    unique.dedup();
    assert_eq!(unique.len(), cseqs.len(), "a CSeq per copy: {cseqs:?}");

    // bob leaves with /leave, carol by unsubscribing, then alice with BYE:
    // the conference ends with its last participant.
    let (code, out) = message(&mut sim, "bob", bob_addr(), &focus, "/leave");
    assert_eq!(code, 200);
    // carol, subscribed, learns of it: the participants without bob.
    assert_eq!(
        out.iter().map(|t| t.dst).collect::<Vec<_>>(),
        [carol_addr()],
        "only the subscriber hears of a leave"
    );
    let notify = parse(&out[0].bytes, "conference notify on a leave");
    assert_eq!(notify.header("Event"), Some("conference"));
    assert!(
        notify
            .header("Subscription-State")
            .unwrap()
            .starts_with("active;expires="),
        "{:?}",
        notify.header("Subscription-State")
    );
    let info = String::from_utf8_lossy(notify.body()).into_owned();
    assert!(
        info.contains(&format!("entity=\"{}\"", uri("alice"))),
        "{info}"
    );
    assert!(
        info.contains(&format!("entity=\"{}\"", uri("carol"))),
        "{info}"
    );
    assert!(!info.contains(&uri("bob")), "bob has left: {info}");
    assert!(
        info.contains("version=\"2\""),
        "the subscription's second state: {info}"
    );
    answer_all(&mut sim, &out);
    let (code, out) = message(&mut sim, "alice", alice_addr(), &focus, "bob left");
    assert_eq!(
        (code, out.iter().map(|t| t.dst).collect::<Vec<_>>()),
        (200, vec![carol_addr()])
    );
    answer_all(&mut sim, &out);
    let (code, _) = message(&mut sim, "bob", bob_addr(), &focus, "back?");
    assert_eq!(code, 403, "a participant who left may not post");
    let req = request(
        &mut sim,
        "SUBSCRIBE",
        "carol",
        carol_addr(),
        &focus,
        &[("Event", "conference"), ("Expires", "0")],
        "",
    );
    let (resp, out) = send(&mut sim, carol_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    assert!(
        parse(&out[0].bytes, "final notify")
            .header("Subscription-State")
            .unwrap()
            .starts_with("terminated")
    );
    answer_all(&mut sim, &out);
    let req = request(&mut sim, "BYE", "alice", alice_addr(), &focus, &[], "");
    let (resp, _) = send(&mut sim, alice_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(sim.core.live_conferences(), 0);
    let (code, _) = message(&mut sim, "alice", alice_addr(), &focus, "hello?");
    assert_eq!(code, 404, "an ended conference is gone");

    let events = conference_events(&mut sim);
    assert!(events.iter().all(|e| e.focus == focus));
    use ConferenceEventKind::*;
    let some = |u: &str| Some(u.to_string());
    assert_eq!(
        summary(&events),
        vec![
            (Created, some("alice"), uri("alice")),
            (Invited, some("bob"), uri("alice")),
            (Invited, some("carol"), uri("alice")),
            (Joined, some("bob"), uri("bob")),
            (Joined, some("carol"), uri("carol")),
            (Left, some("bob"), uri("bob")),
            (Left, some("carol"), uri("carol")),
            (Left, some("alice"), uri("alice")),
            (Ended, None, uri("alice")),
        ]
    );
    assert_eq!(
        sim.core.conference_stats(),
        &ConferenceStats {
            created: 1,
            ended: 1,
            posts: 6,
            deliveries: 8,
            refused: 1,
            rate_limited: 0,
            delivery_failures: 0,
        }
    );
}

#[test]
fn refusals_unknown_focus_strangers_bad_refers_and_oversized_messages() {
    let mut sim = sim();
    let (code, _) = message(
        &mut sim,
        "alice",
        alice_addr(),
        "sip:conf-0000000000000000@example.test",
        "hi",
    );
    assert_eq!(code, 404, "no such conference");
    let req = request(&mut sim, "INFO", "alice", alice_addr(), FACTORY, &[], "");
    assert_eq!(send(&mut sim, alice_addr(), &req).0.status(), Some(405));

    // Someone of another domain cannot create one.
    let id = sim.next_id();
    let mut b = MessageBuilder::request("MESSAGE", FACTORY);
    b.header(
        "Via",
        &format!("SIP/2.0/UDP {};branch=z9hG4bK-x{id}", erin_addr()),
    )
    .header("Max-Forwards", "70")
    .header("From", "<sip:alice@evil.example>;tag=x")
    .header("To", &format!("<{FACTORY}>"))
    .header("Call-ID", "x@test")
    .header("CSeq", "1 MESSAGE");
    assert_eq!(
        send(&mut sim, erin_addr(), &b.build()).0.status(),
        Some(403)
    );

    let focus = create(&mut sim);
    let (code, out) = message(&mut sim, "erin", erin_addr(), &focus, "let me in");
    assert_eq!((code, out.len()), (403, 0), "neither invited nor in: 403");
    let (code, _) = refer(&mut sim, "erin", erin_addr(), &focus, &uri("bob"));
    assert_eq!(code, 403, "only participants refer");
    let (code, _) = refer(
        &mut sim,
        "alice",
        alice_addr(),
        &focus,
        "sip:mallory@example.test",
    );
    assert_eq!(code, 404, "no such user");
    let (code, _) = refer(
        &mut sim,
        "alice",
        alice_addr(),
        &focus,
        "sip:bob@elsewhere.example",
    );
    assert_eq!(code, 404, "not a user of the domain");
    let req = request(&mut sim, "REFER", "alice", alice_addr(), &focus, &[], "");
    assert_eq!(
        send(&mut sim, alice_addr(), &req).0.status(),
        Some(400),
        "no Refer-To"
    );
    let req = request(
        &mut sim,
        "SUBSCRIBE",
        "bob",
        bob_addr(),
        &focus,
        &[("Event", "presence")],
        "",
    );
    assert_eq!(send(&mut sim, bob_addr(), &req).0.status(), Some(489));
    let req = request(&mut sim, "BYE", "erin", erin_addr(), &focus, &[], "");
    assert_eq!(send(&mut sim, erin_addr(), &req).0.status(), Some(481));
    let big = "x".repeat(config().max_body_bytes + 1);
    let (code, out) = message(&mut sim, "alice", alice_addr(), &focus, &big);
    assert_eq!((code, out.len()), (413, 0));
    assert_eq!(sim.core.live_conferences(), 1);

    // Refer-Sub: false: 200 with it, no NOTIFY; the invitation still goes.
    let req = request(
        &mut sim,
        "REFER",
        "alice",
        alice_addr(),
        &focus,
        &[
            ("Refer-To", &format!("<{}>", uri("bob"))),
            ("Refer-Sub", "false"),
        ],
        "",
    );
    let (resp, out) = send(&mut sim, alice_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.header("Refer-Sub"), Some("false"));
    assert_eq!(out.iter().map(|t| t.dst).collect::<Vec<_>>(), [bob_addr()]);
    // A REFER with method=BYE takes bob out again.
    let (code, _) = refer(
        &mut sim,
        "alice",
        alice_addr(),
        &focus,
        &format!("{};method=BYE", uri("bob")),
    );
    assert_eq!(code, 202);
    let kinds: Vec<_> = summary(&conference_events(&mut sim));
    assert_eq!(
        kinds.last(),
        Some(&(ConferenceEventKind::Left, Some("bob".into()), uri("alice")))
    );
}

#[test]
fn an_idle_conference_ends_and_an_expired_subscription_leaves() {
    let mut sim = sim_with(CoreConfig {
        conferences: ConferenceConfig {
            idle_timeout: Duration::from_secs(600),
            ..ConferenceConfig::default()
        },
        ..config()
    });
    let focus = create(&mut sim);
    let req = request(
        &mut sim,
        "SUBSCRIBE",
        "bob",
        bob_addr(),
        &focus,
        &[("Event", "conference"), ("Expires", "120")],
        "",
    );
    let (resp, out) = send(&mut sim, bob_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    answer_all(&mut sim, &out);
    conference_events(&mut sim);

    // bob's subscription runs out unrefreshed: he leaves.
    let start = sim.now;
    sim.run_until(start + Duration::from_secs(121));
    assert_eq!(
        summary(&conference_events(&mut sim)),
        vec![(
            ConferenceEventKind::Left,
            Some("bob".into()),
            "server".into()
        )]
    );
    // A message keeps the conference alive; ten quiet minutes end it.
    sim.now = start + Duration::from_secs(300);
    let (code, _) = message(&mut sim, "alice", alice_addr(), &focus, "still here");
    assert_eq!(code, 200);
    sim.run_until(start + Duration::from_secs(899));
    assert_eq!(sim.core.live_conferences(), 1);
    sim.run_until(start + Duration::from_secs(901));
    assert_eq!(sim.core.live_conferences(), 0);
    assert_eq!(
        summary(&conference_events(&mut sim)),
        vec![
            (
                ConferenceEventKind::Left,
                Some("alice".into()),
                "server".into()
            ),
            (ConferenceEventKind::Ended, None, "server".into()),
        ]
    );

    // A server that stops ends what is left, on the record.
    let focus = create(&mut sim);
    sim.core.end_all_conferences();
    assert_eq!(sim.core.live_conferences(), 0);
    let events = conference_events(&mut sim);
    assert!(events.iter().all(|e| e.focus == focus));
    assert_eq!(
        summary(&events)[1..],
        [
            (
                ConferenceEventKind::Left,
                Some("alice".into()),
                "server".into()
            ),
            (ConferenceEventKind::Ended, None, "server".into()),
        ]
    );
}

#[test]
fn an_unanswered_copy_is_retransmitted_then_given_up_and_counted() {
    let mut sim = sim();
    let focus = create(&mut sim);
    let (_, out) = refer(&mut sim, "alice", alice_addr(), &focus, &uri("bob"));
    answer_all(&mut sim, &out);
    let (code, _) = message(&mut sim, "bob", bob_addr(), &focus, "joining");
    assert_eq!(code, 200);
    // alice's agent goes quiet: the copy to her is retransmitted, then given up.
    let end = sim.now + Duration::from_secs(40);
    let later = sim.run_until(end);
    assert!(!later.is_empty() && later.iter().all(|(_, t)| t.dst == alice_addr()));
    assert_eq!(sim.core.conference_stats().delivery_failures, 1);
    let event = ConferenceEvent {
        focus: focus.clone(),
        member: Some(uri("bob")),
        kind: ConferenceEventKind::Joined,
        by: uri("bob"),
        call_id: Some("c".into()),
    };
    let row = event.to_row(7);
    assert_eq!(
        (
            row.kind.as_str(),
            row.room.as_str(),
            row.event.as_str(),
            row.time_ns
        ),
        ("conference", focus.as_str(), "joined", 7)
    );
}

#[test]
fn a_subscribed_participant_is_notified_when_another_joins() {
    let mut sim = sim();
    let focus = create(&mut sim);
    let req = request(
        &mut sim,
        "SUBSCRIBE",
        "alice",
        alice_addr(),
        &focus,
        &[("Event", "conference"), ("Expires", "600")],
        "",
    );
    let (resp, out) = send(&mut sim, alice_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    answer_all(&mut sim, &out);
    let (code, out) = refer(&mut sim, "alice", alice_addr(), &focus, &uri("bob"));
    assert_eq!(code, 202);
    answer_all(&mut sim, &out);
    // bob joins by writing to the focus: alice's copy of his message and
    // a NOTIFY with bob connected.
    let (code, out) = message(&mut sim, "bob", bob_addr(), &focus, "hello all");
    assert_eq!(code, 200);
    let notifies: Vec<SipMessage> = out
        .iter()
        .map(|t| parse(&t.bytes, "to alice"))
        .filter(|m| m.method() == Some("NOTIFY") && m.header("Event") == Some("conference"))
        .collect();
    assert_eq!(notifies.len(), 1, "one NOTIFY to alice");
    let info = String::from_utf8_lossy(notifies[0].body()).into_owned();
    assert!(
        info.contains(&format!(
            "<user entity=\"{}\"><endpoint><status>connected</status>",
            uri("bob")
        )),
        "{info}"
    );
    assert!(
        out.iter().all(|t| t.dst == alice_addr()),
        "bob gets no NOTIFY of his own join"
    );
}

#[test]
fn a_participant_posting_too_fast_gets_503_and_the_others_are_unaffected() {
    let mut sim = sim_with(CoreConfig {
        rooms: crate::rooms::RoomConfig {
            posts_per_second: std::num::NonZeroU32::new(1).unwrap(),
            burst: std::num::NonZeroU32::new(3).unwrap(),
            ..Default::default()
        },
        ..config()
    });
    let focus = create(&mut sim);
    let (code, out) = refer(&mut sim, "alice", alice_addr(), &focus, &uri("bob"));
    assert_eq!(code, 202);
    answer_all(&mut sim, &out);
    let mut codes = Vec::new();
    for n in 0..5 {
        let (code, out) = message(&mut sim, "bob", bob_addr(), &focus, &format!("flood {n}"));
        answer_all(&mut sim, &out);
        codes.push(code);
    }
    assert_eq!(
        codes,
        [200, 200, 200, 503, 503],
        "a burst of 3, then one a second"
    );
    let (code, out) = message(&mut sim, "alice", alice_addr(), &focus, "calm down");
    assert_eq!(code, 200, "alice has her own bucket");
    answer_all(&mut sim, &out);
    sim.now += std::time::Duration::from_millis(1_100);
    let (code, out) = message(&mut sim, "bob", bob_addr(), &focus, "sorry");
    assert_eq!(code, 200, "a token back after a second");
    answer_all(&mut sim, &out);
    assert_eq!(sim.core.conference_stats().rate_limited, 2);
    assert_eq!(
        sim.core.conferences.rate.len(),
        2,
        "alice's and bob's buckets"
    );
    let (code, _) = message(&mut sim, "bob", bob_addr(), &focus, "/leave");
    assert_eq!(code, 200);
    assert_eq!(
        sim.core.conferences.rate.len(),
        1,
        "bob's bucket goes with him"
    );
    let req = request(&mut sim, "BYE", "alice", alice_addr(), &focus, &[], "");
    let (resp, _) = send(&mut sim, alice_addr(), &req);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(sim.core.live_conferences(), 0);
    assert_eq!(
        sim.core.conferences.rate.len(),
        0,
        "none outlive the conference"
    );
}
