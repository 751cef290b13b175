//! Unit tests of the stateful INVITE proxy in simulated time: calls set up
//! and torn down through the core (Record-Route, loose routing), CANCEL,
//! busy, no answer (Timer B and Timer C), offline callee, forking, double
//! Record-Route across transports, and calls over a lossy network.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage};

use crate::core::Transmit;
use crate::core_tests::{
    DOMAIN, Network, Prng, Sim, addr, alice_addr, bob_addr, config, describe, parse, server_addr,
};

const SDP_OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\n";
const SDP_ANSWER: &str = "v=0\r\no=bob 2 2 IN IP4 198.51.100.20\r\ns=-\r\nc=IN IP4 198.51.100.20\r\nt=0 0\r\nm=audio 6100 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

fn bob2_addr() -> SocketAddr {
    addr("198.51.100.21:40003")
}

fn contact_of(user: &str, flow: SocketAddr) -> String {
    format!("sip:{user}@{flow}")
}

/// alice and bob registered over UDP from their own addresses.
fn registered() -> Sim {
    registered_with(config())
}

fn registered_with(cfg: crate::core::CoreConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    for (user, pw, flow) in [
        ("alice", "alice-pw", alice_addr()),
        ("bob", "bob-pw", bob_addr()),
    ] {
        let resp = sim.register(
            user,
            pw,
            flow,
            &format!("<{}>", contact_of(user, flow)),
            Some(3600),
        );
        assert_eq!(resp.status(), Some(200), "{user} could not register");
    }
    sim.events();
    sim
}

/// An initial INVITE with an SDP offer from `from_user` at `flow`.
fn invite(sim: &mut Sim, from_user: &str, flow: SocketAddr, to_user: &str) -> Vec<u8> {
    let id = sim.next_id();
    let mut b = MessageBuilder::request("INVITE", &format!("sip:{to_user}@{DOMAIN}"));
    b.header(
        "Via",
        &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-inv-{id};rport"),
    )
    .header("Max-Forwards", "70")
    .header("From", &format!("<sip:{from_user}@{DOMAIN}>;tag=c{id}"))
    .header("To", &format!("<sip:{to_user}@{DOMAIN}>"))
    .header("Call-ID", &format!("call-{id}@test"))
    .header("CSeq", "1 INVITE")
    .header("Contact", &format!("<{}>", contact_of(from_user, flow)))
    .body("application/sdp", SDP_OFFER.as_bytes());
    b.build()
}

/// A user agent's response to `req`: every Via, the Record-Route copied
/// (RFC 3261 12.1.1), a Contact on dialog-creating answers.
fn answer(req: &SipMessage, code: u16, reason: &str, to_tag: &str, contact: &str) -> Vec<u8> {
    let mut b = MessageBuilder::response_to(req, code, reason);
    if code > 100 {
        b.add_to_tag(to_tag);
    }
    for rr in req.header_all("record-route") {
        b.header("Record-Route", rr);
    }
    if (101..300).contains(&code) && req.method() == Some("INVITE") {
        b.header("Contact", &format!("<{contact}>"));
    }
    if code == 200 && req.method() == Some("INVITE") {
        b.body("application/sdp", SDP_ANSWER.as_bytes());
    }
    b.build()
}

/// CANCEL of `inv` (same Via, Request-URI, From, To, Call-ID, CSeq number).
fn cancel_of(inv: &SipMessage) -> Vec<u8> {
    let mut b = MessageBuilder::request("CANCEL", inv.request_uri().unwrap());
    for v in inv.header_all("via") {
        b.header("Via", v);
    }
    b.header("Max-Forwards", "70")
        .header("From", inv.header("from").unwrap())
        .header("To", inv.header("to").unwrap())
        .header("Call-ID", inv.call_id().unwrap())
        .header("CSeq", "1 CANCEL");
    b.build()
}

/// The ACK of a non-2xx answer: the INVITE's Via (branch), the answer's To.
fn ack_of_failure(inv: &SipMessage, resp: &SipMessage) -> Vec<u8> {
    let mut b = MessageBuilder::request("ACK", inv.request_uri().unwrap());
    for v in inv.header_all("via") {
        b.header("Via", v);
    }
    b.header("Max-Forwards", "70")
        .header("From", inv.header("from").unwrap())
        .header("To", resp.header("to").unwrap())
        .header("Call-ID", inv.call_id().unwrap())
        .header("CSeq", "1 ACK");
    b.build()
}

/// One side's view of an established dialog.
#[derive(Clone)]
struct Dialog {
    flow: SocketAddr,
    local: String,
    remote: String,
    call_id: String,
    remote_target: String,
    route_set: Vec<String>,
}

impl Dialog {
    /// An in-dialog request (its own branch) along the route set.
    fn request(&self, sim: &mut Sim, method: &str, cseq: u32) -> Vec<u8> {
        let id = sim.next_id();
        let mut b = MessageBuilder::request(method, &self.remote_target);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {};branch=z9hG4bK-dlg-{id};rport", self.flow),
        )
        .header("Max-Forwards", "70");
        for r in &self.route_set {
            b.header("Route", r);
        }
        b.header("From", &self.local)
            .header("To", &self.remote)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{cseq} {method}"));
        b.build()
    }
}

/// Every message in `tx` sent to `dst`, parsed.
fn to(tx: &[Transmit], dst: SocketAddr) -> Vec<SipMessage> {
    tx.iter()
        .filter(|t| t.dst == dst)
        .map(|t| parse(&t.bytes, "core output"))
        .collect()
}

/// Exactly one message to `dst` in `tx`.
fn one_to(tx: &[Transmit], dst: SocketAddr, what: &str) -> SipMessage {
    let mut v = to(tx, dst);
    assert_eq!(
        v.len(),
        1,
        "{what}: expected one message to {dst}, got {:?}",
        describe(tx)
    );
    v.remove(0)
}

fn branch(m: &SipMessage) -> String {
    m.vias()
        .first()
        .and_then(|v| v.branch().map(str::to_string))
        .expect("top Via branch")
}

/// alice calls bob: INVITE, 100, 180, 200, relayed. Returns the dialog as
/// alice and as bob see it (ACK not sent yet), and the INVITE bob received.
fn answered_call(sim: &mut Sim) -> (Dialog, Dialog, SipMessage) {
    let inv = invite(sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(tx.len(), 2, "INVITE: {:?}", describe(&tx));
    assert_eq!(one_to(&tx, alice_addr(), "100").status(), Some(100));
    let fwd = one_to(&tx, bob_addr(), "INVITE to bob");
    let bob_contact = contact_of("bob", bob_addr());
    let tx = sim.udp(
        bob_addr(),
        &answer(&fwd, 180, "Ringing", "b1", &bob_contact),
    );
    assert_eq!(one_to(&tx, alice_addr(), "180").status(), Some(180));
    let tx = sim.udp(bob_addr(), &answer(&fwd, 200, "OK", "b1", &bob_contact));
    let ok = one_to(&tx, alice_addr(), "200");
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.vias().len(), 1, "our Via not removed from the 200");
    assert_eq!(ok.body(), SDP_ANSWER.as_bytes(), "SDP answer altered");
    let mut alice_routes: Vec<String> = ok
        .name_addrs("record-route")
        .iter()
        .map(|r| r.to_string())
        .collect();
    alice_routes.reverse();
    let alice = Dialog {
        flow: alice_addr(),
        local: ok.header("from").unwrap().to_string(),
        remote: ok.header("to").unwrap().to_string(),
        call_id: ok.call_id().unwrap().to_string(),
        remote_target: bob_contact,
        route_set: alice_routes,
    };
    let bob = Dialog {
        flow: bob_addr(),
        local: ok.header("to").unwrap().to_string(),
        remote: ok.header("from").unwrap().to_string(),
        call_id: alice.call_id.clone(),
        remote_target: contact_of("alice", alice_addr()),
        route_set: fwd
            .name_addrs("record-route")
            .iter()
            .map(|r| r.to_string())
            .collect(),
    };
    (alice, bob, fwd)
}

#[test]
fn basic_call_invite_ringing_answer_ack_bye() {
    let mut sim = registered();
    let inv = invite(&mut sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(
        one_to(&tx, alice_addr(), "100 Trying").status(),
        Some(100),
        "no 100 Trying at once"
    );
    let fwd = one_to(&tx, bob_addr(), "INVITE to bob");
    assert_eq!(fwd.method(), Some("INVITE"));
    assert_eq!(
        fwd.request_uri(),
        Some(contact_of("bob", bob_addr()).as_str())
    );
    assert_eq!(fwd.vias().len(), 2, "proxy Via not added on top");
    assert_eq!(fwd.max_forwards(), Some(69));
    assert_eq!(fwd.body(), SDP_OFFER.as_bytes(), "SDP offer altered");
    let rr = fwd.name_addrs("record-route");
    assert_eq!(rr.len(), 1, "one Record-Route when both sides use UDP");
    assert!(rr[0].uri.contains(&server_addr().to_string()) && rr[0].uri.contains(";lr"));

    // Ringing is relayed; a retransmitted INVITE gets it again, not relayed.
    let bob_contact = contact_of("bob", bob_addr());
    let tx = sim.udp(
        bob_addr(),
        &answer(&fwd, 180, "Ringing", "b1", &bob_contact),
    );
    let ringing = one_to(&tx, alice_addr(), "180");
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.vias().len(), 1);
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(tx.len(), 1, "retransmitted INVITE: {:?}", describe(&tx));
    assert_eq!(one_to(&tx, alice_addr(), "180 again").status(), Some(180));

    let tx = sim.udp(bob_addr(), &answer(&fwd, 200, "OK", "b1", &bob_contact));
    let ok = one_to(&tx, alice_addr(), "200");
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.name_addrs("record-route").len(), 1);

    // ACK and BYE follow the route set through the proxy to bob.
    let alice = Dialog {
        flow: alice_addr(),
        local: ok.header("from").unwrap().to_string(),
        remote: ok.header("to").unwrap().to_string(),
        call_id: ok.call_id().unwrap().to_string(),
        remote_target: bob_contact.clone(),
        route_set: vec![ok.header("record-route").unwrap().to_string()],
    };
    let ack = alice.request(&mut sim, "ACK", 1);
    let tx = sim.udp(alice_addr(), &ack);
    let fwd_ack = one_to(&tx, bob_addr(), "ACK to bob");
    assert_eq!(fwd_ack.method(), Some("ACK"));
    assert!(fwd_ack.header("route").is_none(), "own Route not removed");
    assert_eq!(fwd_ack.vias().len(), 2);
    assert_eq!(fwd_ack.max_forwards(), Some(69));
    let bye = alice.request(&mut sim, "BYE", 2);
    let tx = sim.udp(alice_addr(), &bye);
    let fwd_bye = one_to(&tx, bob_addr(), "BYE to bob");
    assert_eq!(fwd_bye.method(), Some("BYE"));
    assert!(fwd_bye.header("route").is_none());
    let tx = sim.udp(bob_addr(), &answer(&fwd_bye, 200, "OK", "b1", &bob_contact));
    let bye_ok = one_to(&tx, alice_addr(), "200 to BYE");
    assert_eq!(bye_ok.status(), Some(200));
    assert_eq!(bye_ok.cseq(), Some((2, "BYE")));
    // Nothing is left to retransmit: the 2xx is the callee's to repeat.
    let later = sim.run_until(sim.at(120.0));
    assert!(
        later.is_empty(),
        "proxy sent after the call: {:?}",
        later.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn caller_cancel_gives_200_cancel_downstream_and_487() {
    let mut sim = registered();
    let inv_bytes = invite(&mut sim, "alice", alice_addr(), "bob");
    let inv = parse(&inv_bytes, "invite");
    let tx = sim.udp(alice_addr(), &inv_bytes);
    let fwd = one_to(&tx, bob_addr(), "INVITE to bob");
    let bob_contact = contact_of("bob", bob_addr());
    sim.udp(
        bob_addr(),
        &answer(&fwd, 180, "Ringing", "b1", &bob_contact),
    );
    let tx = sim.udp(alice_addr(), &cancel_of(&inv));
    let ok = one_to(&tx, alice_addr(), "200 to CANCEL");
    assert_eq!((ok.status(), ok.cseq()), (Some(200), Some((1, "CANCEL"))));
    let cancel = one_to(&tx, bob_addr(), "CANCEL to bob");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(
        branch(&cancel),
        branch(&fwd),
        "CANCEL must carry the INVITE's branch"
    );
    assert_eq!(cancel.request_uri(), fwd.request_uri());
    // bob answers the CANCEL (absorbed) and the INVITE with 487.
    let tx = sim.udp(bob_addr(), &answer(&cancel, 200, "OK", "b1", &bob_contact));
    assert!(
        tx.is_empty(),
        "200 to our CANCEL relayed: {:?}",
        describe(&tx)
    );
    let r487 = answer(&fwd, 487, "Request Terminated", "b1", &bob_contact);
    let tx = sim.udp(bob_addr(), &r487);
    let ack = one_to(&tx, bob_addr(), "ACK to bob");
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(branch(&ack), branch(&fwd));
    assert_eq!(ack.to().and_then(|t| t.tag()), Some("b1"));
    let up = one_to(&tx, alice_addr(), "487 to alice");
    assert_eq!(up.status(), Some(487));
    assert_eq!(up.cseq(), Some((1, "INVITE")));
    // alice's ACK ends at the proxy.
    let tx = sim.udp(alice_addr(), &ack_of_failure(&inv, &up));
    assert!(tx.is_empty(), "ACK of 487 forwarded: {:?}", describe(&tx));
    let later = sim.run_until(sim.at(60.0));
    assert!(later.is_empty(), "487 retransmitted after the ACK");
}

#[test]
fn busy_is_passed_through_and_retransmitted_until_ack() {
    let mut sim = registered();
    let t1 = sim.core.config().t1;
    let inv_bytes = invite(&mut sim, "alice", alice_addr(), "bob");
    let inv = parse(&inv_bytes, "invite");
    let start = sim.now;
    let tx = sim.udp(alice_addr(), &inv_bytes);
    let fwd = one_to(&tx, bob_addr(), "INVITE to bob");
    let busy = answer(&fwd, 486, "Busy Here", "b1", "");
    let tx = sim.udp(bob_addr(), &busy);
    assert_eq!(one_to(&tx, bob_addr(), "ACK").method(), Some("ACK"));
    let up = one_to(&tx, alice_addr(), "486 to alice");
    assert_eq!(up.status(), Some(486));
    assert_eq!(
        up.to().and_then(|t| t.tag()),
        Some("b1"),
        "callee's answer not relayed"
    );
    // bob retransmits its 486: ACKed again, not relayed twice.
    let tx = sim.udp(bob_addr(), &busy);
    assert_eq!(to(&tx, bob_addr()).len(), 1);
    assert!(to(&tx, alice_addr()).is_empty());
    // Timer G: the 486 again at T1 and 3·T1 while alice's ACK is missing.
    let later = sim.run_until(start + t1 * 4);
    let resent: Vec<Duration> = later
        .iter()
        .filter(|(_, t)| t.dst == alice_addr())
        .map(|(at, _)| at.duration_since(start))
        .collect();
    assert_eq!(resent, vec![t1, t1 * 3], "Timer G retransmissions");
    sim.udp(alice_addr(), &ack_of_failure(&inv, &up));
    let later = sim.run_until(sim.at(60.0));
    assert!(later.is_empty(), "486 retransmitted after the ACK");
}

#[test]
fn ringing_without_answer_is_cancelled_and_answered_408() {
    let mut cfg = config();
    cfg.no_answer_timeout = Duration::from_secs(20);
    let mut sim = registered_with(cfg);
    let start = sim.now;
    let inv = invite(&mut sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    let fwd = one_to(&tx, bob_addr(), "INVITE to bob");
    let bob_contact = contact_of("bob", bob_addr());
    sim.udp(
        bob_addr(),
        &answer(&fwd, 180, "Ringing", "b1", &bob_contact),
    );
    let quiet = sim.run_until(start + Duration::from_secs(19));
    assert!(quiet.is_empty(), "sent while ringing: {}", quiet.len());
    // What leaves when Timer C fires (later come the retransmissions of
    // the CANCEL and of the 408 until they are answered).
    let later: Vec<Transmit> = sim
        .run_until(start + Duration::from_secs(21))
        .into_iter()
        .filter(|(at, _)| *at == start + Duration::from_secs(20))
        .map(|(_, t)| t)
        .collect();
    let cancel = one_to(&later, bob_addr(), "CANCEL on no answer");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(branch(&cancel), branch(&fwd));
    assert_eq!(one_to(&later, alice_addr(), "408").status(), Some(408));
    // The 487 that follows is acknowledged and not relayed.
    let tx = sim.udp(
        bob_addr(),
        &answer(&fwd, 487, "Request Terminated", "b1", ""),
    );
    assert_eq!(one_to(&tx, bob_addr(), "ACK of 487").method(), Some("ACK"));
    assert!(to(&tx, alice_addr()).is_empty());
}

#[test]
fn silent_callee_gets_timer_a_retransmissions_then_408() {
    let mut sim = registered();
    let t1 = sim.core.config().t1;
    let start = sim.now;
    let inv = invite(&mut sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(to(&tx, bob_addr()).len(), 1);
    let later = sim.run_until(start + t1 * 64 + Duration::from_secs(1));
    let resent: Vec<Duration> = later
        .iter()
        .filter(|(_, t)| t.dst == bob_addr())
        .map(|(at, _)| at.duration_since(start))
        .collect();
    // Timer A doubles without the T2 cap: T1, 3·T1, 7·T1 ... 63·T1.
    let expected: Vec<Duration> = [1, 3, 7, 15, 31, 63].iter().map(|n| t1 * *n).collect();
    assert_eq!(resent, expected);
    let up: Vec<(Instant, Transmit)> = later
        .into_iter()
        .filter(|(_, t)| t.dst == alice_addr())
        .collect();
    assert!(!up.is_empty(), "no 408 upstream");
    assert_eq!(up[0].0.duration_since(start), t1 * 64, "Timer B");
    assert_eq!(parse(&up[0].1.bytes, "408").status(), Some(408));
}

#[test]
fn offline_callee_gets_480_and_unknown_user_404() {
    let mut sim = registered();
    let inv = invite(&mut sim, "alice", alice_addr(), "carol");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    let resp = one_to(&tx, alice_addr(), "480");
    assert_eq!(resp.status(), Some(480));
    assert!(resp.to().and_then(|t| t.tag()).is_some());
    let inv = invite(&mut sim, "alice", alice_addr(), "nobody");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(one_to(&tx, alice_addr(), "404").status(), Some(404));
}

/// bob registered twice (two phones); alice's INVITE forked to both.
fn forked(sim: &mut Sim) -> (Vec<u8>, SipMessage, SipMessage) {
    let resp = sim.register(
        "bob",
        "bob-pw",
        bob2_addr(),
        &format!("<{}>", contact_of("bob", bob2_addr())),
        Some(3600),
    );
    assert_eq!(resp.status(), Some(200));
    let inv = invite(sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    assert_eq!(tx.len(), 3, "100 and two branches: {:?}", describe(&tx));
    let a = one_to(&tx, bob_addr(), "branch to phone 1");
    let b = one_to(&tx, bob2_addr(), "branch to phone 2");
    assert_ne!(branch(&a), branch(&b));
    (inv, a, b)
}

#[test]
fn forking_first_2xx_wins_and_other_branch_is_cancelled() {
    let mut sim = registered();
    let (_, a, b) = forked(&mut sim);
    let (ca, cb) = (
        contact_of("bob", bob_addr()),
        contact_of("bob", bob2_addr()),
    );
    let tx = sim.udp(bob_addr(), &answer(&a, 180, "Ringing", "pa", &ca));
    assert_eq!(one_to(&tx, alice_addr(), "180 a").status(), Some(180));
    let tx = sim.udp(bob2_addr(), &answer(&b, 180, "Ringing", "pb", &cb));
    assert_eq!(one_to(&tx, alice_addr(), "180 b").status(), Some(180));
    let tx = sim.udp(bob_addr(), &answer(&a, 200, "OK", "pa", &ca));
    let ok = one_to(&tx, alice_addr(), "200 of phone 1");
    assert_eq!(ok.to().and_then(|t| t.tag()), Some("pa"));
    let cancel = one_to(&tx, bob2_addr(), "CANCEL to phone 2");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(branch(&cancel), branch(&b));
    assert!(
        to(&tx, bob_addr()).is_empty(),
        "winner must not be cancelled"
    );
    sim.udp(bob2_addr(), &answer(&cancel, 200, "OK", "pb", &cb));
    let tx = sim.udp(
        bob2_addr(),
        &answer(&b, 487, "Request Terminated", "pb", &cb),
    );
    assert_eq!(one_to(&tx, bob2_addr(), "ACK of 487").method(), Some("ACK"));
    assert!(
        to(&tx, alice_addr()).is_empty(),
        "487 of a lost branch relayed"
    );
}

#[test]
fn late_2xx_of_another_branch_is_still_relayed() {
    let mut sim = registered();
    let (_, a, b) = forked(&mut sim);
    let (ca, cb) = (
        contact_of("bob", bob_addr()),
        contact_of("bob", bob2_addr()),
    );
    sim.udp(bob2_addr(), &answer(&b, 180, "Ringing", "pb", &cb));
    let tx = sim.udp(bob_addr(), &answer(&a, 200, "OK", "pa", &ca));
    assert_eq!(one_to(&tx, alice_addr(), "first 200").status(), Some(200));
    // Phone 2 answered at the same moment: its 2xx crosses our CANCEL.
    let tx = sim.udp(bob2_addr(), &answer(&b, 200, "OK", "pb", &cb));
    let late = one_to(&tx, alice_addr(), "late 200");
    assert_eq!(late.status(), Some(200));
    assert_eq!(late.to().and_then(|t| t.tag()), Some("pb"));
    // Its retransmission too (RFC 6026: 2xx are relayed, not absorbed).
    let tx = sim.udp(bob2_addr(), &answer(&b, 200, "OK", "pb", &cb));
    assert_eq!(to(&tx, alice_addr()).len(), 1);
}

#[test]
fn all_branches_failing_give_the_best_response() {
    let mut sim = registered();
    let (_, a, b) = forked(&mut sim);
    let tx = sim.udp(
        bob_addr(),
        &answer(&a, 480, "Temporarily Unavailable", "pa", ""),
    );
    assert!(
        to(&tx, alice_addr()).is_empty(),
        "answered before all branches ended"
    );
    let tx = sim.udp(bob2_addr(), &answer(&b, 486, "Busy Here", "pb", ""));
    let up = one_to(&tx, alice_addr(), "best response");
    assert_eq!(up.status(), Some(486), "the callee's busy beats 480");

    // A 6xx from one phone ends the call at once and cancels the other.
    let (_, a, b) = forked(&mut sim);
    let cb = contact_of("bob", bob2_addr());
    sim.udp(bob2_addr(), &answer(&b, 180, "Ringing", "pb", &cb));
    let tx = sim.udp(bob_addr(), &answer(&a, 603, "Decline", "pa", ""));
    assert_eq!(
        one_to(&tx, bob2_addr(), "CANCEL after 603").method(),
        Some("CANCEL")
    );
    assert!(to(&tx, alice_addr()).is_empty());
    let tx = sim.udp(
        bob2_addr(),
        &answer(&b, 487, "Request Terminated", "pb", &cb),
    );
    assert_eq!(
        one_to(&tx, alice_addr(), "603 upstream").status(),
        Some(603)
    );
}

#[test]
fn reinvite_and_bye_from_callee_follow_the_record_route() {
    let mut sim = registered();
    let (alice, bob, _) = answered_call(&mut sim);
    let req = alice.request(&mut sim, "ACK", 1);
    let tx = sim.udp(alice_addr(), &req);
    assert_eq!(one_to(&tx, bob_addr(), "ACK").method(), Some("ACK"));

    // bob re-INVITEs (hold): routed to alice's contact through the proxy.
    let reinv = bob.request(&mut sim, "INVITE", 1);
    let tx = sim.udp(bob_addr(), &reinv);
    assert_eq!(
        one_to(&tx, bob_addr(), "100 to re-INVITE").status(),
        Some(100)
    );
    let fwd = one_to(&tx, alice_addr(), "re-INVITE to alice");
    assert_eq!(fwd.method(), Some("INVITE"));
    assert_eq!(fwd.request_uri(), Some(bob.remote_target.as_str()));
    assert!(fwd.header("route").is_none());
    assert!(
        fwd.header("record-route").is_none(),
        "re-INVITE record-routed"
    );
    let tx = sim.udp(
        alice_addr(),
        &answer(
            &fwd,
            200,
            "OK",
            "ignored",
            &contact_of("alice", alice_addr()),
        ),
    );
    assert_eq!(
        one_to(&tx, bob_addr(), "200 to re-INVITE").status(),
        Some(200)
    );
    let req = bob.request(&mut sim, "ACK", 1);
    let tx = sim.udp(bob_addr(), &req);
    assert_eq!(
        one_to(&tx, alice_addr(), "ACK of re-INVITE").method(),
        Some("ACK")
    );

    // UPDATE and INFO in the dialog are relayed the same way.
    for (method, seq) in [("UPDATE", 2), ("INFO", 3)] {
        let req = bob.request(&mut sim, method, seq);
        let tx = sim.udp(bob_addr(), &req);
        let m = one_to(&tx, alice_addr(), method);
        assert_eq!(m.method(), Some(method));
        let tx = sim.udp(alice_addr(), &answer(&m, 200, "OK", "x", ""));
        assert_eq!(one_to(&tx, bob_addr(), "200").status(), Some(200));
    }
    // bob hangs up.
    let req = bob.request(&mut sim, "BYE", 4);
    let tx = sim.udp(bob_addr(), &req);
    let bye = one_to(&tx, alice_addr(), "BYE to alice");
    assert_eq!(bye.method(), Some("BYE"));
    let tx = sim.udp(alice_addr(), &answer(&bye, 200, "OK", "x", ""));
    assert_eq!(one_to(&tx, bob_addr(), "200 to BYE").status(), Some(200));
}

#[test]
fn different_transports_get_a_double_record_route() {
    let mut sim = Sim::new(config());
    sim.register(
        "alice",
        "alice-pw",
        alice_addr(),
        &format!("<{}>", contact_of("alice", alice_addr())),
        Some(3600),
    );
    let resp = sim.register_on(
        Transport::Tcp,
        "bob",
        "bob-pw",
        bob_addr(),
        &format!("<{};transport=tcp>", contact_of("bob", bob_addr())),
        Some(3600),
    );
    assert_eq!(resp.status(), Some(200));
    let inv = invite(&mut sim, "alice", alice_addr(), "bob");
    let tx = sim.udp(alice_addr(), &inv);
    let out = tx
        .iter()
        .find(|t| t.dst == bob_addr())
        .expect("INVITE to bob");
    assert_eq!(out.transport, Transport::Tcp);
    let fwd = parse(&out.bytes, "INVITE");
    assert!(fwd.vias()[0].transport.eq_ignore_ascii_case("TCP"));
    let rr: Vec<String> = fwd
        .name_addrs("record-route")
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert!(
        rr[0].contains("transport=tcp"),
        "top route faces the callee: {rr:?}"
    );
    assert!(
        rr[1].contains("transport=udp"),
        "second faces the caller: {rr:?}"
    );
    // bob's BYE over TCP with both routes reaches alice over UDP.
    let bob_contact = format!("{};transport=tcp", contact_of("bob", bob_addr()));
    let ok = answer(&fwd, 200, "OK", "b1", &bob_contact);
    sim.deliver(Transport::Tcp, bob_addr(), &ok);
    let bob = Dialog {
        flow: bob_addr(),
        local: parse(&ok, "ok").header("to").unwrap().to_string(),
        remote: fwd.header("from").unwrap().to_string(),
        call_id: fwd.call_id().unwrap().to_string(),
        remote_target: contact_of("alice", alice_addr()),
        route_set: fwd
            .name_addrs("record-route")
            .iter()
            .map(|r| r.to_string())
            .collect(),
    };
    let bye = bob.request(&mut sim, "BYE", 2);
    let tx = sim.deliver(Transport::Tcp, bob_addr(), &bye);
    let out = tx
        .iter()
        .find(|t| t.dst == alice_addr())
        .expect("BYE to alice");
    assert_eq!(out.transport, Transport::Udp);
    let m = parse(&out.bytes, "BYE");
    assert!(m.header("route").is_none(), "both own routes removed");
}

// ------------------------------------------------------- lossy network

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerState {
    Inviting,
    Ringing,
    Talking,
    HangingUp,
    Done,
}

/// alice's side of one call.
struct CallerLeg {
    invite: Vec<u8>,
    state: CallerState,
    next_send: Option<Instant>,
    interval: Duration,
    ack: Option<Vec<u8>>,
    bye: Option<Vec<u8>>,
    hangup_at: Option<Instant>,
}

/// bob's side of one call: answers at once, repeats its 200 until the ACK.
struct CalleeLeg {
    ok: Vec<u8>,
    ok_retransmit: Option<Instant>,
    interval: Duration,
    /// The UAS gives up repeating its 200 after 64·T1 (RFC 3261 13.3.1.4).
    give_up_at: Instant,
    acked: bool,
    bye_ok: Option<Vec<u8>>,
}

#[test]
fn lossy_network_calls_still_complete() {
    const CALLS: usize = 20;
    const LOSS: u64 = 30;
    let mut sim = registered();
    let t1 = sim.core.config().t1;
    let t2 = sim.core.config().t2;
    let mut net = Network {
        rng: Prng(0xca11_5eed),
        loss: LOSS,
        latency: Duration::from_millis(5),
        queue: BinaryHeap::new(),
        packets: HashMap::new(),
        seq: 0,
        sent: BTreeMap::new(),
    };
    let mut callers: BTreeMap<String, CallerLeg> = BTreeMap::new();
    for i in 0..CALLS {
        let bytes = invite(&mut sim, "alice", alice_addr(), "bob");
        let call_id = parse(&bytes, "invite").call_id().unwrap().to_string();
        callers.insert(
            call_id,
            CallerLeg {
                invite: bytes,
                state: CallerState::Inviting,
                next_send: Some(sim.now + Duration::from_millis(50 * i as u64)),
                interval: Duration::ZERO,
                ack: None,
                bye: None,
                hangup_at: None,
            },
        );
    }
    let mut callees: BTreeMap<String, CalleeLeg> = BTreeMap::new();
    // Messages of a kind delivered to the proxy and sent by it.
    let mut end_to_end: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let kind = |bytes: &[u8]| {
        let m = parse(bytes, "datagram");
        match (m.method(), m.status(), m.cseq().map(|(_, x)| x)) {
            (Some("ACK"), _, _) => "ACK",
            (_, Some(200), Some("INVITE")) => "200 INVITE",
            _ => "other",
        }
    };
    let bob_contact = contact_of("bob", bob_addr());
    let limit = sim.now + Duration::from_secs(300);
    let mut steps = 0u64;
    while callers.values().any(|c| c.state != CallerState::Done)
        || callees.values().any(|c| c.ok_retransmit.is_some())
    {
        steps += 1;
        assert!(steps < 1_000_000, "simulation did not converge");
        let agents = callers
            .values()
            .flat_map(|c| [c.next_send, c.hangup_at])
            .chain(callees.values().map(|c| c.ok_retransmit))
            .flatten()
            .min();
        let Some(next) = [net.next_at(), sim.core.poll_timeout(), agents]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        if next > limit {
            break;
        }
        let now = next.max(sim.now);
        sim.now = now;

        // alice: (re)sends INVITE, BYE; hangs up 1 s after the answer.
        for c in callers.values_mut() {
            if c.hangup_at.is_some_and(|t| t <= now) {
                c.hangup_at = None;
                c.state = CallerState::HangingUp;
                c.interval = Duration::ZERO;
                c.next_send = Some(now);
            }
            if c.next_send.is_some_and(|t| t <= now) {
                let bytes = match c.state {
                    CallerState::Inviting => c.invite.clone(),
                    CallerState::HangingUp => c.bye.clone().expect("BYE built"),
                    _ => {
                        c.next_send = None;
                        continue;
                    }
                };
                c.interval = if c.interval.is_zero() {
                    t1
                } else {
                    (c.interval * 2).min(t2)
                };
                c.next_send = Some(now + c.interval);
                net.send(now, alice_addr(), server_addr(), bytes);
            }
        }
        // bob: repeats each unacknowledged 200.
        for c in callees.values_mut() {
            if c.ok_retransmit
                .is_some_and(|t| t <= now && t >= c.give_up_at)
            {
                c.ok_retransmit = None;
            }
            if !c.acked && c.ok_retransmit.is_some_and(|t| t <= now) {
                c.interval = (c.interval * 2).min(t2);
                c.ok_retransmit = Some(now + c.interval);
                net.send(now, bob_addr(), server_addr(), c.ok.clone());
            }
        }
        while let Some(p) = net.pop_due(now) {
            if p.dst == server_addr() {
                end_to_end.entry(kind(&p.bytes)).or_default().0 += 1;
                sim.core
                    .handle_message(now, Transport::Udp, p.src, &p.bytes);
                continue;
            }
            let m = parse(&p.bytes, "datagram");
            let call_id = m.call_id().expect("Call-ID").to_string();
            if p.dst == bob_addr() {
                match m.method() {
                    Some("INVITE") => {
                        let leg = callees.entry(call_id).or_insert_with(|| CalleeLeg {
                            ok: answer(&m, 200, "OK", "b", &bob_contact),
                            ok_retransmit: Some(now + t1),
                            interval: t1,
                            give_up_at: now + t1 * 64,
                            acked: false,
                            bye_ok: None,
                        });
                        net.send(
                            now,
                            bob_addr(),
                            p.src,
                            answer(&m, 180, "Ringing", "b", &bob_contact),
                        );
                        net.send(now, bob_addr(), p.src, leg.ok.clone());
                    }
                    Some("ACK") => {
                        let leg = callees.get_mut(&call_id).expect("ACK of a known call");
                        leg.acked = true;
                        leg.ok_retransmit = None;
                    }
                    Some("BYE") => {
                        let leg = callees.get_mut(&call_id).expect("BYE of a known call");
                        let ok = leg
                            .bye_ok
                            .get_or_insert_with(|| answer(&m, 200, "OK", "b", ""))
                            .clone();
                        net.send(now, bob_addr(), p.src, ok);
                    }
                    other => panic!("bob got {other:?}"),
                }
            } else if p.dst == alice_addr() {
                let code = m.status().expect("alice only gets responses");
                let c = callers.get_mut(&call_id).expect("a call of alice");
                match (m.cseq().map(|(_, meth)| meth), code) {
                    (Some("INVITE"), 100..=199) => {
                        if c.state == CallerState::Inviting {
                            c.state = CallerState::Ringing;
                            c.next_send = None;
                        }
                    }
                    (Some("INVITE"), 200..=299) => {
                        if c.ack.is_none() {
                            let mut routes: Vec<String> = m
                                .name_addrs("record-route")
                                .iter()
                                .map(|r| r.to_string())
                                .collect();
                            routes.reverse();
                            let dialog = Dialog {
                                flow: alice_addr(),
                                local: m.header("from").unwrap().to_string(),
                                remote: m.header("to").unwrap().to_string(),
                                call_id: call_id.clone(),
                                remote_target: bob_contact.clone(),
                                route_set: routes,
                            };
                            c.ack = Some(dialog.request(&mut sim, "ACK", 1));
                            c.bye = Some(dialog.request(&mut sim, "BYE", 2));
                            c.state = CallerState::Talking;
                            c.next_send = None;
                            c.hangup_at = Some(now + Duration::from_secs(1));
                        }
                        // Every 2xx (retransmissions too) is acknowledged.
                        net.send(now, alice_addr(), server_addr(), c.ack.clone().unwrap());
                    }
                    (Some("INVITE"), _) => panic!("call {call_id} failed with {code}"),
                    (Some("BYE"), 200..=299) => {
                        c.state = CallerState::Done;
                        c.next_send = None;
                    }
                    other => panic!("alice got an unexpected {other:?}"),
                }
            } else {
                panic!("datagram to an unknown address {}", p.dst);
            }
        }
        if sim.core.poll_timeout().is_some_and(|t| t <= now) {
            sim.core.handle_timeout(now);
        }
        while let Some(t) = sim.core.poll_transmit() {
            assert_eq!(t.transport, Transport::Udp);
            end_to_end.entry(kind(&t.bytes)).or_default().1 += 1;
            net.send(now, server_addr(), t.dst, t.bytes);
        }
        while sim.core.poll_event().is_some() {}
    }
    let unfinished: Vec<(&String, CallerState)> = callers
        .iter()
        .filter(|(_, c)| c.state != CallerState::Done)
        .map(|(id, c)| (id, c.state))
        .collect();
    assert!(
        unfinished.is_empty(),
        "calls not completed within 300 s simulated: {unfinished:?}"
    );
    assert_eq!(callees.len(), CALLS, "every call reached bob");
    // The 2xx and its ACK are end to end: the callee repeats the one and
    // the caller the other, and the proxy must relay every copy it gets
    // (RFC 3261 16.7 step 10, RFC 6026) instead of absorbing any. Whether
    // a given ACK made it through 4 lossy hops before the callee gave up
    // is the network's doing, so that is reported, not asserted.
    for what in ["ACK", "200 INVITE"] {
        let (delivered, relayed) = end_to_end.get(what).copied().unwrap_or_default();
        assert!(delivered > CALLS as u64, "too few {what} to test relaying");
        assert_eq!(
            delivered, relayed,
            "{what}: {delivered} reached the proxy, {relayed} relayed"
        );
    }
    let unacked = callees.values().filter(|c| !c.acked).count();
    assert!(
        callees.values().all(|c| c.bye_ok.is_some()),
        "a BYE never reached bob"
    );
    eprintln!(
        "lossy calls: legs (sent, dropped) {:?}; end to end (in, out) {end_to_end:?}; \
         calls whose ACK bob never got {unacked}; core retransmissions {}",
        net.sent, sim.core.stats.retransmissions
    );
    for ((src, dst), (sent, dropped)) in &net.sent {
        let pct = *dropped as f64 * 100.0 / *sent as f64;
        assert!(*sent >= 40, "leg {src} -> {dst} carried only {sent}");
        assert!(
            (15.0..=45.0).contains(&pct),
            "leg {src} -> {dst}: {pct:.0}% dropped, expected about {LOSS}%"
        );
    }
    assert_eq!(net.sent.len(), 4, "traffic on all four legs");
    assert!(
        sim.core.stats.retransmissions > 0,
        "the proxy never retransmitted: loss not exercised"
    );
}

#[test]
fn requests_outside_our_dialogs_are_not_relayed_to_foreign_addresses() {
    let mut sim = registered();
    // A BYE to some IP address, without a Route of ours: not relayed.
    let stranger = Dialog {
        flow: alice_addr(),
        local: format!("<sip:alice@{DOMAIN}>;tag=a1"),
        remote: "<sip:x@203.0.113.9>;tag=x1".into(),
        call_id: "stray@test".into(),
        remote_target: "sip:x@203.0.113.9:5060".into(),
        route_set: Vec::new(),
    };
    let bye = stranger.request(&mut sim, "BYE", 2);
    let tx = sim.udp(alice_addr(), &bye);
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    assert_eq!(one_to(&tx, alice_addr(), "refusal").status(), Some(404));
    // Nor an initial INVITE with a pre-loaded Route to another server.
    let mut b = MessageBuilder::from_message(&parse(
        &invite(&mut sim, "alice", alice_addr(), "bob"),
        "invite",
    ));
    b.header("Route", "<sip:203.0.113.9;lr>");
    let tx = sim.udp(alice_addr(), &b.build());
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    assert_eq!(one_to(&tx, alice_addr(), "refusal").status(), Some(403));
}

#[test]
fn require_is_for_the_callee_proxy_require_for_the_proxy() {
    let mut sim = registered();
    let inv = String::from_utf8(invite(&mut sim, "alice", alice_addr(), "bob"))
        .unwrap()
        .replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nRequire: 100rel\r\n",
            1,
        );
    let tx = sim.udp(alice_addr(), inv.as_bytes());
    let fwd = one_to(&tx, bob_addr(), "INVITE with Require: 100rel");
    assert_eq!(fwd.header("Require"), Some("100rel"), "passed on untouched");

    let inv = String::from_utf8(invite(&mut sim, "alice", alice_addr(), "bob"))
        .unwrap()
        .replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nProxy-Require: teleport\r\n",
            1,
        );
    let tx = sim.udp(alice_addr(), inv.as_bytes());
    let resp = one_to(&tx, alice_addr(), "INVITE with Proxy-Require");
    assert_eq!(resp.status(), Some(420));
    assert_eq!(resp.header("Unsupported"), Some("teleport"));
}
