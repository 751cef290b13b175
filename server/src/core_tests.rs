//! Unit tests of the sans-IO core in simulated time: a fixed `Instant` base
//! plus offsets, no sockets. The registrar (digest challenge, bindings,
//! expiry), the MESSAGE relay (Via handling, errors, retransmission
//! absorption, timers E/F) and a lossy simulated network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::digest::{Algorithm, Challenge, authorize, ha1};
use sipvault_sip::{MessageBuilder, SipMessage};

use crate::core::{Core, CoreConfig, Event, Transmit, UserCredentials};

pub(crate) const DOMAIN: &str = "example.test";

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

pub(crate) fn server_addr() -> SocketAddr {
    addr("192.0.2.1:5060")
}
pub(crate) fn server_tls_addr() -> SocketAddr {
    addr("192.0.2.1:5061")
}
pub(crate) fn alice_addr() -> SocketAddr {
    addr("198.51.100.10:40001")
}
pub(crate) fn bob_addr() -> SocketAddr {
    addr("198.51.100.20:40002")
}

pub(crate) fn creds(user: &str, password: &str) -> UserCredentials {
    UserCredentials {
        ha1_md5: ha1(Algorithm::Md5, user, DOMAIN, password),
        ha1_sha256: ha1(Algorithm::Sha256, user, DOMAIN, password),
    }
}

pub(crate) fn config() -> CoreConfig {
    CoreConfig {
        domain: DOMAIN.into(),
        seed: 42,
        ..CoreConfig::default()
    }
}

/// The core plus a simulated clock.
pub(crate) struct Sim {
    pub(crate) core: Core,
    base: Instant,
    pub(crate) now: Instant,
    counter: u32,
}

impl Sim {
    pub(crate) fn new(config: CoreConfig) -> Sim {
        let mut core = Core::new(config);
        core.set_users(HashMap::from([
            ("alice".to_string(), creds("alice", "alice-pw")),
            ("bob".to_string(), creds("bob", "bob-pw")),
            // Known to the registrar, never registers.
            ("carol".to_string(), creds("carol", "carol-pw")),
        ]));
        core.set_local_addr(Transport::Udp, server_addr());
        core.set_local_addr(Transport::Tcp, server_addr());
        core.set_local_addr(Transport::Tls, server_tls_addr());
        let base = Instant::now();
        Sim {
            core,
            base,
            now: base,
            counter: 0,
        }
    }

    pub(crate) fn at(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    pub(crate) fn elapsed(&self, t: Instant) -> Duration {
        t.duration_since(self.base)
    }

    pub(crate) fn next_id(&mut self) -> u32 {
        self.counter += 1;
        self.counter
    }

    /// Delivers one message to the core at the current time; returns what it sends.
    pub(crate) fn deliver(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Transmit> {
        self.core.handle_message(self.now, transport, from, bytes);
        self.drain()
    }

    pub(crate) fn udp(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Transmit> {
        self.deliver(Transport::Udp, from, bytes)
    }

    pub(crate) fn drain(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            out.push(t);
        }
        out
    }

    pub(crate) fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.core.poll_event() {
            out.push(e);
        }
        out
    }

    /// Drives `handle_timeout` at every instant `poll_timeout` asks for, up to
    /// and including `end`; returns the transmits with the time they left.
    pub(crate) fn run_until(&mut self, end: Instant) -> Vec<(Instant, Transmit)> {
        let mut out = Vec::new();
        let mut steps = 0;
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
            steps += 1;
            assert!(
                steps < 100_000,
                "poll_timeout does not advance: stuck at {:?}",
                self.elapsed(t)
            );
            let t = t.max(self.now);
            self.now = t;
            self.core.handle_timeout(t);
            while let Some(tx) = self.core.poll_transmit() {
                out.push((t, tx));
            }
        }
        self.now = end;
        out
    }

    /// A REGISTER from `user` over `flow`, with a Contact (or `*`) and optional Expires/Authorization.
    fn register_req(
        &mut self,
        user: &str,
        flow: SocketAddr,
        contact: &str,
        expires: Option<u32>,
        auth: Option<&str>,
    ) -> Vec<u8> {
        let id = self.next_id();
        let mut b = MessageBuilder::request("REGISTER", &format!("sip:{DOMAIN}"));
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-reg-{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=f{id}"))
        .header("To", &format!("<sip:{user}@{DOMAIN}>"))
        .header("Call-ID", &format!("reg-{user}-{flow}"))
        .header("CSeq", &format!("{id} REGISTER"))
        .header("Contact", contact);
        if let Some(e) = expires {
            b.header("Expires", &e.to_string());
        }
        if let Some(a) = auth {
            b.header("Authorization", a);
        }
        b.build()
    }

    /// Full digest registration (challenge, answer); returns the final response.
    pub(crate) fn register(
        &mut self,
        user: &str,
        password: &str,
        flow: SocketAddr,
        contact: &str,
        expires: Option<u32>,
    ) -> SipMessage {
        self.register_on(Transport::Udp, user, password, flow, contact, expires)
    }

    pub(crate) fn register_on(
        &mut self,
        transport: Transport,
        user: &str,
        password: &str,
        flow: SocketAddr,
        contact: &str,
        expires: Option<u32>,
    ) -> SipMessage {
        let req = self.register_req(user, flow, contact, expires, None);
        let resp = only_response(
            self.deliver(transport, flow, &req),
            flow,
            "REGISTER without credentials",
        );
        assert_eq!(
            resp.status(),
            Some(401),
            "REGISTER without credentials: expected a 401 challenge, got {}",
            resp.start_line()
        );
        let ch = challenge_of(&resp);
        let auth = authorize(
            &ch,
            user,
            password,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            "0a4f113b",
        );
        let req = self.register_req(user, flow, contact, expires, Some(&auth));
        only_response(
            self.deliver(transport, flow, &req),
            flow,
            "REGISTER with credentials",
        )
    }

    fn message_req(
        &mut self,
        from_user: &str,
        from: SocketAddr,
        to_user: &str,
        body: &str,
        max_forwards: u32,
    ) -> Vec<u8> {
        self.message_req_to(
            from_user,
            from,
            &format!("sip:{to_user}@{DOMAIN}"),
            body,
            max_forwards,
        )
    }

    /// A MESSAGE to the Request-URI `ruri` (`sip:` or `sips:`).
    fn message_req_to(
        &mut self,
        from_user: &str,
        from: SocketAddr,
        ruri: &str,
        body: &str,
        max_forwards: u32,
    ) -> Vec<u8> {
        let id = self.next_id();
        let to_user = ruri
            .split_once(':')
            .and_then(|(_, rest)| rest.split_once('@'))
            .map_or("", |(user, _)| user);
        let mut b = MessageBuilder::request("MESSAGE", ruri);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {from};branch=z9hG4bK-msg-{id};rport"),
        )
        .header("Max-Forwards", &max_forwards.to_string())
        .header("From", &format!("<sip:{from_user}@{DOMAIN}>;tag=m{id}"))
        .header("To", &format!("<sip:{to_user}@{DOMAIN}>"))
        .header("Call-ID", &format!("im-{id}@test"))
        .header("CSeq", "1 MESSAGE")
        .body("text/plain", body.as_bytes());
        b.build()
    }
}

pub(crate) fn parse(bytes: &[u8], what: &str) -> SipMessage {
    SipMessage::parse(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: core sent bytes that do not parse ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Exactly one transmit, to `dst`, parsed.
pub(crate) fn only_response(tx: Vec<Transmit>, dst: SocketAddr, what: &str) -> SipMessage {
    assert_eq!(
        tx.len(),
        1,
        "{what}: expected exactly one message from the core, got {}: {:?}",
        tx.len(),
        describe(&tx)
    );
    assert_eq!(tx[0].dst, dst, "{what}: response sent to the wrong address");
    parse(&tx[0].bytes, what)
}

pub(crate) fn describe(tx: &[Transmit]) -> Vec<String> {
    tx.iter()
        .map(|t| {
            format!(
                "{} -> {}",
                String::from_utf8_lossy(&t.bytes)
                    .lines()
                    .next()
                    .unwrap_or(""),
                t.dst
            )
        })
        .collect()
}

fn challenge_of(resp: &SipMessage) -> Challenge {
    let h = resp.header("WWW-Authenticate").unwrap_or_else(|| {
        panic!(
            "401 without WWW-Authenticate: {}",
            String::from_utf8_lossy(resp.raw())
        )
    });
    Challenge::parse(h)
        .unwrap_or_else(|e| panic!("WWW-Authenticate {h:?} is not a digest challenge: {e}"))
}

pub(crate) fn status(tx: &[Transmit]) -> Vec<u16> {
    tx.iter()
        .filter_map(|t| SipMessage::parse(&t.bytes).ok())
        .filter_map(|m| m.status())
        .collect()
}

fn assert_to_tag(resp: &SipMessage, what: &str) {
    assert!(
        resp.to()
            .and_then(|t| t.tag().map(str::to_string))
            .is_some(),
        "{what}: final response without a To tag"
    );
}

// ---------------------------------------------------------------- registrar

#[test]
fn register_without_credentials_gets_digest_challenge() {
    let mut sim = Sim::new(config());
    let req = sim.register_req(
        "alice",
        alice_addr(),
        &format!("<sip:alice@{}>", alice_addr()),
        Some(600),
        None,
    );
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "REGISTER without Authorization",
    );
    assert_eq!(
        resp.status(),
        Some(401),
        "REGISTER without Authorization: {}",
        resp.start_line()
    );
    assert_to_tag(&resp, "401");
    let ch = challenge_of(&resp);
    assert_eq!(
        ch.realm, DOMAIN,
        "challenge realm must be the served domain"
    );
    assert_eq!(ch.algorithm, Algorithm::Md5, "challenge algorithm");
    assert_eq!(ch.qop.as_deref(), Some("auth"), "challenge qop");
    assert!(!ch.stale, "a first challenge must not say stale=true");
    assert!(
        ch.nonce.len() >= 16,
        "nonce {:?} is too short to be unguessable",
        ch.nonce
    );
    assert_eq!(
        sim.core.registered_users(),
        0,
        "a challenged REGISTER must not create a binding"
    );

    // A second challenge carries a different nonce.
    let req = sim.register_req(
        "alice",
        alice_addr(),
        &format!("<sip:alice@{}>", alice_addr()),
        Some(600),
        None,
    );
    let again = challenge_of(&only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "second REGISTER",
    ));
    assert_ne!(
        again.nonce, ch.nonce,
        "two challenges reused the same nonce"
    );
}

#[test]
fn register_with_digest_gets_200_and_binding() {
    let mut sim = Sim::new(config());
    let contact = "<sip:alice@10.0.0.1:5070>";
    let resp = sim.register("alice", "alice-pw", alice_addr(), contact, Some(600));
    assert_eq!(
        resp.status(),
        Some(200),
        "REGISTER with a correct digest: {}",
        resp.start_line()
    );
    assert_to_tag(&resp, "200 to REGISTER");
    let contacts = resp.contacts();
    assert_eq!(
        contacts.len(),
        1,
        "200 to REGISTER must list the current binding: {}",
        String::from_utf8_lossy(resp.raw())
    );
    let c = contacts[0].addr.as_ref().expect("contact address");
    assert_eq!(c.uri, "sip:alice@10.0.0.1:5070", "binding contact");
    assert_eq!(
        contacts[0].expires(),
        Some(600),
        "binding expiry in the 200"
    );
    assert_eq!(
        sim.core.registered_users(),
        1,
        "registered users after one REGISTER"
    );
    let ev = sim.events();
    assert!(
        ev.contains(&Event::Registered {
            user: "alice".into(),
            contact: "sip:alice@10.0.0.1:5070".into()
        }),
        "no Registered event for alice: {ev:?}"
    );
    // Expires above max_expires is clamped.
    let resp = sim.register("alice", "alice-pw", alice_addr(), contact, Some(999_999));
    assert_eq!(resp.status(), Some(200));
    assert_eq!(
        resp.contacts()[0].expires(),
        Some(sim.core.config().max_expires),
        "Expires must be clamped to max_expires"
    );
    // Without any Expires, default_expires applies.
    let resp = sim.register("alice", "alice-pw", alice_addr(), contact, None);
    assert_eq!(
        resp.contacts()[0].expires(),
        Some(sim.core.config().default_expires),
        "Expires defaults to default_expires"
    );
    // By default the 401 offers MD5 only; configured, MD5 and SHA-256
    // with the same nonce (RFC 8760), and an answer to the SHA-256
    // challenge is accepted.
    let req = sim.register_req("bob", bob_addr(), "<sip:bob@10.0.0.2>", Some(600), None);
    let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), "bob REGISTER");
    assert_eq!(
        resp.header_all("www-authenticate").len(),
        1,
        "MD5 only by default"
    );
    sim.core.config.digest_algorithms = vec![Algorithm::Md5, Algorithm::Sha256];
    let req = sim.register_req("bob", bob_addr(), "<sip:bob@10.0.0.2>", Some(600), None);
    let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), "bob REGISTER");
    let offered: Vec<Challenge> = resp
        .header_all("www-authenticate")
        .into_iter()
        .map(|h| Challenge::parse(h).expect("a digest challenge"))
        .collect();
    assert_eq!(
        offered.iter().map(|c| c.algorithm).collect::<Vec<_>>(),
        vec![Algorithm::Md5, Algorithm::Sha256],
        "one challenge per algorithm"
    );
    assert_eq!(offered[0].nonce, offered[1].nonce, "one nonce for both");
    let ch = offered[1].clone();
    let auth = authorize(
        &ch,
        "bob",
        "bob-pw",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "c0ffee",
    );
    let req = sim.register_req(
        "bob",
        bob_addr(),
        "<sip:bob@10.0.0.2>",
        Some(600),
        Some(&auth),
    );
    let resp = only_response(
        sim.udp(bob_addr(), &req),
        bob_addr(),
        "bob REGISTER with SHA-256",
    );
    assert_eq!(
        resp.status(),
        Some(200),
        "REGISTER with SHA-256 digest: {}",
        resp.start_line()
    );
    assert_eq!(sim.core.registered_users(), 2);
}

#[test]
fn register_with_wrong_password_is_forbidden() {
    let mut sim = Sim::new(config());
    let resp = sim.register(
        "alice",
        "not-the-password",
        alice_addr(),
        "<sip:alice@10.0.0.1>",
        Some(600),
    );
    assert_eq!(
        resp.status(),
        Some(403),
        "REGISTER with a wrong password: {}",
        resp.start_line()
    );
    assert_to_tag(&resp, "403");
    assert_eq!(
        sim.core.registered_users(),
        0,
        "a failed REGISTER created a binding"
    );
    let ev = sim.events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Rejected { code: 403, .. })),
        "no Rejected 403 event: {ev:?}"
    );
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Registered { .. })),
        "Registered event after a wrong password: {ev:?}"
    );

    // Valid credentials of another user for this AoR: 403 as well.
    let req = sim.register_req(
        "alice",
        alice_addr(),
        "<sip:alice@10.0.0.1>",
        Some(600),
        None,
    );
    let ch = challenge_of(&only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "challenge",
    ));
    let auth = authorize(
        &ch,
        "bob",
        "bob-pw",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "abc",
    );
    let req = sim.register_req(
        "alice",
        alice_addr(),
        "<sip:alice@10.0.0.1>",
        Some(600),
        Some(&auth),
    );
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "bob's credentials for alice",
    );
    assert_eq!(
        resp.status(),
        Some(403),
        "credentials of another user: {}",
        resp.start_line()
    );
    assert_eq!(sim.core.registered_users(), 0);
}

#[test]
fn register_of_unknown_user_is_not_found() {
    let mut sim = Sim::new(config());
    let req = sim.register_req(
        "mallory",
        alice_addr(),
        "<sip:mallory@10.0.0.9>",
        Some(600),
        None,
    );
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "REGISTER of unknown user",
    );
    assert_eq!(
        resp.status(),
        Some(404),
        "REGISTER of an unknown user: {}",
        resp.start_line()
    );
    assert!(
        resp.header("WWW-Authenticate").is_none(),
        "an unknown user must not be challenged"
    );
    assert_eq!(sim.core.registered_users(), 0);
}

#[test]
fn stale_nonce_is_rechallenged_with_stale_true() {
    let mut sim = Sim::new(config());
    let ttl = sim.core.config().nonce_ttl;
    let contact = "<sip:alice@10.0.0.1>";
    let req = sim.register_req("alice", alice_addr(), contact, Some(600), None);
    let ch = challenge_of(&only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "challenge",
    ));
    let auth = authorize(
        &ch,
        "alice",
        "alice-pw",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "0001",
    );

    // Just inside the nonce lifetime the answer is accepted...
    sim.now = sim.base + ttl - Duration::from_secs(1);
    let req = sim.register_req("alice", alice_addr(), contact, Some(600), Some(&auth));
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "answer within nonce_ttl",
    );
    assert_eq!(
        resp.status(),
        Some(200),
        "answer inside nonce_ttl: {}",
        resp.start_line()
    );

    // ...past it the nonce is stale: 401 with stale=true and a fresh nonce.
    sim.now = sim.base + ttl + Duration::from_secs(1);
    let req = sim.register_req("alice", alice_addr(), contact, Some(600), Some(&auth));
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "answer after nonce_ttl",
    );
    assert_eq!(
        resp.status(),
        Some(401),
        "answer with an expired nonce: {}",
        resp.start_line()
    );
    let fresh = challenge_of(&resp);
    assert!(
        fresh.stale,
        "401 for an expired nonce must say stale=true: {:?}",
        resp.header("WWW-Authenticate")
    );
    assert_ne!(
        fresh.nonce, ch.nonce,
        "stale challenge must carry a new nonce"
    );

    // The new nonce works without asking for the password again.
    let auth = authorize(
        &fresh,
        "alice",
        "alice-pw",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "0002",
    );
    let req = sim.register_req("alice", alice_addr(), contact, Some(600), Some(&auth));
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "answer to the stale challenge",
    );
    assert_eq!(
        resp.status(),
        Some(200),
        "answer to the stale challenge: {}",
        resp.start_line()
    );

    // A nonce the server never issued: plain challenge, not stale.
    let mut forged = fresh.clone();
    forged.nonce = "00000000000000000000000000000000".into();
    let auth = authorize(
        &forged,
        "alice",
        "alice-pw",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "0003",
    );
    let req = sim.register_req("alice", alice_addr(), contact, Some(600), Some(&auth));
    let resp = only_response(sim.udp(alice_addr(), &req), alice_addr(), "unknown nonce");
    assert_eq!(
        resp.status(),
        Some(401),
        "unknown nonce: {}",
        resp.start_line()
    );
    assert!(
        !challenge_of(&resp).stale,
        "a nonce never issued must not be called stale"
    );
}

#[test]
fn expires_below_minimum_is_interval_too_brief() {
    let mut sim = Sim::new(config());
    let min = sim.core.config().min_expires;
    let resp = sim.register(
        "alice",
        "alice-pw",
        alice_addr(),
        "<sip:alice@10.0.0.1>",
        Some(min - 1),
    );
    assert_eq!(
        resp.status(),
        Some(423),
        "Expires {} below min {min}: {}",
        min - 1,
        resp.start_line()
    );
    assert_eq!(
        resp.header("Min-Expires"),
        Some(min.to_string().as_str()),
        "423 must carry Min-Expires"
    );
    assert_eq!(sim.core.registered_users(), 0, "423 created a binding");
    // A contact expires parameter is judged the same way.
    let resp = sim.register(
        "alice",
        "alice-pw",
        alice_addr(),
        "<sip:alice@10.0.0.1>;expires=1",
        Some(600),
    );
    assert_eq!(
        resp.status(),
        Some(423),
        "contact ;expires=1: {}",
        resp.start_line()
    );
    // Exactly the minimum is fine.
    let resp = sim.register(
        "alice",
        "alice-pw",
        alice_addr(),
        "<sip:alice@10.0.0.1>",
        Some(min),
    );
    assert_eq!(
        resp.status(),
        Some(200),
        "Expires == min_expires: {}",
        resp.start_line()
    );
}

#[test]
fn expires_zero_removes_the_binding() {
    let mut sim = Sim::new(config());
    let contact = "<sip:alice@10.0.0.1>";
    assert_eq!(
        sim.register("alice", "alice-pw", alice_addr(), contact, Some(600))
            .status(),
        Some(200)
    );
    assert_eq!(
        sim.register(
            "alice",
            "alice-pw",
            alice_addr(),
            "<sip:alice@10.0.0.99>",
            Some(600)
        )
        .status(),
        Some(200)
    );
    assert_eq!(sim.core.registered_users(), 1);
    sim.events();

    // Remove one of two contacts: the other stays.
    let resp = sim.register(
        "alice",
        "alice-pw",
        alice_addr(),
        "<sip:alice@10.0.0.99>;expires=0",
        None,
    );
    assert_eq!(
        resp.status(),
        Some(200),
        "REGISTER expires=0: {}",
        resp.start_line()
    );
    let left: Vec<String> = resp
        .contacts()
        .into_iter()
        .filter_map(|c| c.addr.map(|a| a.uri))
        .collect();
    assert_eq!(
        left,
        ["sip:alice@10.0.0.1"],
        "bindings left after removing one contact"
    );

    // Remove the last one: no contact in the 200, Unregistered, MESSAGE gets 480.
    let resp = sim.register("alice", "alice-pw", alice_addr(), contact, Some(0));
    assert_eq!(
        resp.status(),
        Some(200),
        "REGISTER Expires: 0: {}",
        resp.start_line()
    );
    assert!(
        resp.contacts().is_empty(),
        "200 after removing the last binding still lists contacts: {:?}",
        resp.header_all("contact")
    );
    let ev = sim.events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Unregistered { user } if user == "alice"))
            .count(),
        1,
        "removing the last binding must emit exactly one Unregistered: {ev:?}"
    );
    assert_eq!(
        sim.core.registered_users(),
        0,
        "registered_users still counts alice after expires=0 removed her last binding"
    );
    let req = sim.message_req("bob", bob_addr(), "alice", "hi", 70);
    assert_eq!(
        status(&sim.udp(bob_addr(), &req)),
        [480],
        "MESSAGE to a user whose binding was removed"
    );

    // Housekeeping must not report alice as unregistered a second time.
    let end = sim.at(5.0);
    sim.run_until(end);
    let ev = sim.events();
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Unregistered { .. })),
        "housekeeping reported an already removed user as unregistered again: {ev:?}"
    );
}

#[test]
fn star_contact_removes_every_binding() {
    let mut sim = Sim::new(config());
    let flow2 = addr("198.51.100.10:40009");
    assert_eq!(
        sim.register(
            "alice",
            "alice-pw",
            alice_addr(),
            "<sip:alice@10.0.0.1>",
            Some(600)
        )
        .status(),
        Some(200)
    );
    assert_eq!(
        sim.register(
            "alice",
            "alice-pw",
            flow2,
            "<sip:alice@10.0.0.2>",
            Some(600)
        )
        .status(),
        Some(200)
    );
    assert_eq!(
        sim.register("bob", "bob-pw", bob_addr(), "<sip:bob@10.0.0.3>", Some(600))
            .status(),
        Some(200)
    );
    assert_eq!(sim.core.registered_users(), 2);

    // '*' needs Expires: 0.
    let resp = sim.register("alice", "alice-pw", alice_addr(), "*", Some(600));
    assert_eq!(
        resp.status(),
        Some(400),
        "'*' with Expires 600: {}",
        resp.start_line()
    );
    assert_eq!(
        sim.core.registered_users(),
        2,
        "a refused '*' removed bindings"
    );
    sim.events();

    let resp = sim.register("alice", "alice-pw", alice_addr(), "*", Some(0));
    assert_eq!(
        resp.status(),
        Some(200),
        "'*' with Expires 0: {}",
        resp.start_line()
    );
    assert!(resp.contacts().is_empty(), "200 to '*' lists contacts");
    assert!(
        sim.events().contains(&Event::Unregistered {
            user: "alice".into()
        }),
        "no Unregistered for alice after '*'"
    );
    assert_eq!(
        sim.core.registered_users(),
        1,
        "only bob should remain registered"
    );
    let req = sim.message_req("bob", bob_addr(), "alice", "hi", 70);
    assert_eq!(
        status(&sim.udp(bob_addr(), &req)),
        [480],
        "MESSAGE to alice after '*'"
    );
    let req = sim.message_req("alice", alice_addr(), "bob", "hi", 70);
    let tx = sim.udp(alice_addr(), &req);
    assert!(
        tx.len() == 1 && tx[0].dst == bob_addr(),
        "bob's binding must survive alice's '*': {:?}",
        describe(&tx)
    );
}

#[test]
fn binding_expiry_emits_unregistered() {
    let mut sim = Sim::new(config());
    let min = sim.core.config().min_expires;
    assert_eq!(
        sim.register("bob", "bob-pw", bob_addr(), "<sip:bob@10.0.0.2>", Some(min))
            .status(),
        Some(200)
    );
    sim.events();
    // Still registered just before expiry.
    let end = sim.at(f64::from(min) - 1.0);
    sim.run_until(end);
    assert!(sim.events().is_empty(), "events before the binding expired");
    let req = sim.message_req("alice", alice_addr(), "bob", "still there?", 70);
    let tx = sim.udp(alice_addr(), &req);
    assert!(
        tx.len() == 1 && tx[0].dst == bob_addr(),
        "MESSAGE before expiry not relayed to bob: {:?}",
        describe(&tx)
    );
    let relayed = parse(&tx[0].bytes, "relayed MESSAGE");
    let mut ok = MessageBuilder::response_to(&relayed, 200, "OK");
    ok.add_to_tag("b1");
    sim.udp(bob_addr(), &ok.build());

    // Past expiry (plus the one-second housekeeping period).
    let end = sim.at(f64::from(min) + 2.0);
    sim.run_until(end);
    let ev = sim.events();
    assert_eq!(
        ev,
        [Event::Unregistered { user: "bob".into() }],
        "binding expiry must emit one Unregistered for bob"
    );
    assert_eq!(
        sim.core.registered_users(),
        0,
        "expired binding still counted"
    );
    let req = sim.message_req("alice", alice_addr(), "bob", "gone?", 70);
    assert_eq!(
        status(&sim.udp(alice_addr(), &req)),
        [480],
        "MESSAGE after bob's binding expired"
    );
    // And nothing keeps firing afterwards.
    let end = sim.at(f64::from(min) + 600.0);
    sim.run_until(end);
    assert!(
        !sim.events()
            .iter()
            .any(|e| matches!(e, Event::Unregistered { .. })),
        "repeated Unregistered after expiry"
    );
}

// ------------------------------------------------------------------ MESSAGE

#[test]
fn message_is_relayed_to_the_binding_flow_and_answer_returns() {
    let mut sim = Sim::new(config());
    let bob_contact = "sip:bob@10.0.0.2:5062";
    assert_eq!(
        sim.register(
            "bob",
            "bob-pw",
            bob_addr(),
            &format!("<{bob_contact}>"),
            Some(600)
        )
        .status(),
        Some(200)
    );

    let req_bytes = sim.message_req("alice", alice_addr(), "bob", "hello bob", 70);
    let req = parse(&req_bytes, "test MESSAGE");
    let tx = sim.udp(alice_addr(), &req_bytes);
    assert_eq!(
        tx.len(),
        1,
        "MESSAGE to a registered user: expected one relayed request, got {:?}",
        describe(&tx)
    );
    assert_eq!(
        tx[0].dst,
        bob_addr(),
        "relayed MESSAGE must go to the flow the REGISTER came from"
    );
    assert_eq!(tx[0].transport, Transport::Udp, "relayed MESSAGE transport");
    let relayed = parse(&tx[0].bytes, "relayed MESSAGE");
    assert_eq!(relayed.method(), Some("MESSAGE"));
    assert_eq!(
        relayed.request_uri(),
        Some(bob_contact),
        "relayed Request-URI must be the binding's contact"
    );
    assert_eq!(
        relayed.max_forwards(),
        Some(69),
        "Max-Forwards must be decremented"
    );
    let vias = relayed.vias();
    assert_eq!(
        vias.len(),
        2,
        "relayed MESSAGE must have our Via on top of the sender's"
    );
    assert_eq!(vias[0].transport, "UDP");
    assert_eq!(
        (vias[0].host.as_str(), vias[0].port),
        ("192.0.2.1", Some(5060)),
        "top Via must name this server"
    );
    let branch = vias[0].branch().expect("top Via branch").to_string();
    assert!(
        branch.starts_with("z9hG4bK") && branch.len() > 7,
        "top Via branch {branch:?} lacks the RFC 3261 cookie"
    );
    assert_ne!(
        Some(branch.as_str()),
        req.vias()[0].branch(),
        "relay must use its own branch"
    );
    assert_eq!(
        vias[1],
        req.vias()[0],
        "the sender's Via must follow ours unchanged"
    );
    assert_eq!(relayed.body(), b"hello bob", "body changed in transit");
    assert_eq!(
        relayed.call_id(),
        req.call_id(),
        "Call-ID changed in transit"
    );
    assert_eq!(relayed.header("From"), req.header("From"));
    assert_eq!(relayed.header("To"), req.header("To"));
    assert_eq!(sim.core.stats.relayed, 1);

    // Bob answers: the 200 goes back to alice without our Via.
    let mut ok = MessageBuilder::response_to(&relayed, 200, "OK");
    ok.add_to_tag("bobtag");
    let tx = sim.udp(bob_addr(), &ok.build());
    let resp = only_response(tx, alice_addr(), "callee's 200");
    assert_eq!(resp.status(), Some(200));
    assert_eq!(
        resp.vias(),
        req.vias(),
        "the 200 to the sender must carry exactly the sender's Via (ours removed)"
    );
    assert_eq!(
        resp.to()
            .and_then(|t| t.tag().map(str::to_string))
            .as_deref(),
        Some("bobtag"),
        "callee's To tag lost"
    );
    assert_eq!(resp.call_id(), req.call_id());
    // Nothing left to retransmit after the final response.
    let end = sim.at(40.0);
    let later = sim.run_until(end);
    assert!(
        later.is_empty(),
        "transmits after the transaction completed: {:?}",
        later.iter().map(|(_, t)| t.dst).collect::<Vec<_>>()
    );
}

#[test]
fn message_errors() {
    let mut cfg = config();
    cfg.max_body_bytes = 100;
    let mut sim = Sim::new(cfg);
    assert_eq!(
        sim.register("bob", "bob-pw", bob_addr(), "<sip:bob@10.0.0.2>", Some(600))
            .status(),
        Some(200)
    );

    let req = sim.message_req("alice", alice_addr(), "carol", "hi", 70);
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "MESSAGE to unregistered user",
    );
    assert_eq!(
        resp.status(),
        Some(480),
        "MESSAGE to a known but unregistered user: {}",
        resp.start_line()
    );
    assert_to_tag(&resp, "480");

    let req = sim.message_req("alice", alice_addr(), "nobody", "hi", 70);
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "MESSAGE to unknown user",
    );
    assert_eq!(
        resp.status(),
        Some(404),
        "MESSAGE to an unknown user: {}",
        resp.start_line()
    );

    let req = sim.message_req("alice", alice_addr(), "bob", "hi", 0);
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "MESSAGE with Max-Forwards 0",
    );
    assert_eq!(
        resp.status(),
        Some(483),
        "MESSAGE with Max-Forwards 0: {}",
        resp.start_line()
    );

    let body = "x".repeat(101);
    let req = sim.message_req("alice", alice_addr(), "bob", &body, 70);
    let resp = only_response(
        sim.udp(alice_addr(), &req),
        alice_addr(),
        "MESSAGE with oversize body",
    );
    assert_eq!(
        resp.status(),
        Some(413),
        "MESSAGE with a body over max_body_bytes: {}",
        resp.start_line()
    );

    // Exactly the limit is relayed.
    let body = "x".repeat(100);
    let req = sim.message_req("alice", alice_addr(), "bob", &body, 70);
    let tx = sim.udp(alice_addr(), &req);
    assert!(
        tx.len() == 1 && tx[0].dst == bob_addr(),
        "MESSAGE with body == max_body_bytes not relayed: {:?}",
        describe(&tx)
    );
    // Max-Forwards 1 is relayed with 0.
    let req = sim.message_req("alice", alice_addr(), "bob", "last hop", 1);
    let tx = sim.udp(alice_addr(), &req);
    assert_eq!(
        tx.len(),
        1,
        "MESSAGE with Max-Forwards 1: {:?}",
        describe(&tx)
    );
    assert_eq!(
        parse(&tx[0].bytes, "relayed").max_forwards(),
        Some(0),
        "Max-Forwards 1 must be relayed as 0"
    );

    assert_eq!(sim.core.stats.relayed, 2, "relayed count");
    let ev = sim.events();
    for code in [480, 404, 483, 413] {
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Rejected { code: c, .. } if *c == code)),
            "no Rejected {code} event: {ev:?}"
        );
    }
}

#[test]
fn retransmitted_message_is_not_relayed_twice_and_final_response_is_replayed() {
    let mut sim = Sim::new(config());
    assert_eq!(
        sim.register("bob", "bob-pw", bob_addr(), "<sip:bob@10.0.0.2>", Some(600))
            .status(),
        Some(200)
    );
    let req = sim.message_req("alice", alice_addr(), "bob", "once", 70);
    let tx = sim.udp(alice_addr(), &req);
    assert_eq!(tx.len(), 1, "first MESSAGE");
    let relayed = parse(&tx[0].bytes, "relayed");

    // Retransmission while the relay is pending: absorbed, nothing sent.
    sim.now = sim.at(0.2);
    let tx = sim.udp(alice_addr(), &req);
    assert!(
        tx.is_empty(),
        "retransmitted MESSAGE (no answer yet) caused output: {:?}",
        describe(&tx)
    );
    assert_eq!(
        sim.core.stats.relayed, 1,
        "retransmitted MESSAGE was relayed a second time"
    );

    // Bob answers; alice gets the 200.
    let mut ok = MessageBuilder::response_to(&relayed, 200, "OK");
    ok.add_to_tag("b");
    let first = only_response(
        sim.udp(bob_addr(), &ok.build()),
        alice_addr(),
        "200 to alice",
    );
    assert_eq!(first.status(), Some(200));

    // The 200 to alice was lost: her retransmission gets the same 200 again.
    sim.now = sim.at(0.6);
    let tx = sim.udp(alice_addr(), &req);
    let replay = only_response(
        tx,
        alice_addr(),
        "retransmitted MESSAGE after the final response",
    );
    assert_eq!(
        replay.raw(),
        first.raw(),
        "replayed response differs from the one sent first"
    );
    assert_eq!(
        sim.core.stats.relayed, 1,
        "retransmission after the answer was relayed again"
    );

    // Same for a locally generated error response.
    let req = sim.message_req("alice", alice_addr(), "carol", "?", 70);
    let a = only_response(sim.udp(alice_addr(), &req), alice_addr(), "480");
    let b = only_response(sim.udp(alice_addr(), &req), alice_addr(), "480 again");
    assert_eq!(
        a.raw(),
        b.raw(),
        "retransmitted request got a different error response (To tag must be stable)"
    );
    let rejected = sim
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Rejected { code: 480, .. }))
        .count();
    assert_eq!(
        rejected, 1,
        "a retransmission was processed as a new request"
    );
}

#[test]
fn late_final_response_is_replayed_not_relayed_again() {
    // RFC 3261 17.2.2: after its final response a server transaction absorbs
    // retransmissions for another 64*T1 (timer J), however late that
    // response came.
    let mut sim = Sim::new(config());
    let t1 = sim.core.config().t1;
    assert_eq!(
        sim.register(
            "bob",
            "bob-pw",
            bob_addr(),
            "<sip:bob@10.0.0.2>",
            Some(3600)
        )
        .status(),
        Some(200)
    );
    let start = sim.now;
    let req = sim.message_req("alice", alice_addr(), "bob", "late answer", 70);
    let tx = sim.udp(alice_addr(), &req);
    let relayed = parse(&tx[0].bytes, "relayed");
    // Bob answers just before timer F.
    let answer_at = start + t1 * 60;
    sim.run_until(answer_at);
    let mut ok = MessageBuilder::response_to(&relayed, 200, "OK");
    ok.add_to_tag("late");
    let first = only_response(sim.udp(bob_addr(), &ok.build()), alice_addr(), "late 200");
    assert_eq!(first.status(), Some(200));
    // That 200 is lost; alice retransmits after the request's own 64*T1.
    let retrans_at = start + t1 * 66;
    let later = sim.run_until(retrans_at);
    assert!(
        later.iter().all(|(_, t)| t.dst != alice_addr()),
        "unexpected output to alice"
    );
    let tx = sim.udp(alice_addr(), &req);
    assert!(
        tx.iter().all(|t| t.dst != bob_addr()),
        "a retransmission {:?} after a late 200 was relayed to the callee again (duplicate IM): the server transaction \
         was dropped 64*T1 after the request instead of 64*T1 after the final response",
        retrans_at - answer_at
    );
    let replay = only_response(tx, alice_addr(), "retransmission after a late 200");
    assert_eq!(
        replay.raw(),
        first.raw(),
        "retransmission must get the same 200 replayed"
    );
    assert_eq!(sim.core.stats.relayed, 1);
}

/// Relays a MESSAGE over `transport` to a callee that never answers; returns
/// (relay time, later transmits).
fn silent_callee(
    transport: Transport,
    t1: Duration,
    t2: Duration,
) -> (Sim, Instant, Vec<(Instant, Transmit)>, SipMessage) {
    let mut cfg = config();
    cfg.t1 = t1;
    cfg.t2 = t2;
    let mut sim = Sim::new(cfg);
    let resp = sim.register_on(
        transport,
        "bob",
        "bob-pw",
        bob_addr(),
        "<sip:bob@10.0.0.2>",
        Some(3600),
    );
    assert_eq!(resp.status(), Some(200));
    sim.now = sim.at(10.0);
    let start = sim.now;
    let req_bytes = sim.message_req("alice", alice_addr(), "bob", "anyone?", 70);
    let tx = sim.udp(alice_addr(), &req_bytes);
    assert_eq!(tx.len(), 1, "MESSAGE not relayed: {:?}", describe(&tx));
    assert_eq!(
        tx[0].transport, transport,
        "relay must use the binding's transport"
    );
    let end = start + t1 * 64 + Duration::from_secs(5);
    let later = sim.run_until(end);
    (sim, start, later, parse(&req_bytes, "request"))
}

#[test]
fn udp_relay_retransmits_with_backoff_and_times_out_with_408() {
    let t1 = Duration::from_millis(500);
    let t2 = Duration::from_secs(2);
    let (mut sim, start, later, req) = silent_callee(Transport::Udp, t1, t2);

    let retrans: Vec<Duration> = later
        .iter()
        .filter(|(_, t)| t.dst == bob_addr())
        .map(|(at, _)| at.duration_since(start))
        .collect();
    // RFC 3261 17.1.2.2: timer E starts at T1 and doubles, capped at T2; no
    // retransmission once timer F (64*T1) has fired.
    let mut expected = Vec::new();
    let (mut at, mut interval) = (t1, t1);
    while at < t1 * 64 {
        expected.push(at);
        interval = (interval * 2).min(t2);
        at += interval;
    }
    assert_eq!(
        retrans, expected,
        "retransmission times of the relayed MESSAGE (offsets from the first send)"
    );
    let gaps: Vec<Duration> = std::iter::once(retrans[0])
        .chain(retrans.windows(2).map(|w| w[1] - w[0]))
        .collect();
    assert_eq!(
        &gaps[..3],
        &[t1, 2 * t1, t2],
        "first intervals must be T1, 2T1, then capped at T2"
    );
    assert!(
        gaps[3..].iter().all(|g| *g == t2),
        "intervals after the cap must stay at T2: {gaps:?}"
    );
    for (_, t) in later.iter().filter(|(_, t)| t.dst == bob_addr()) {
        let m = parse(&t.bytes, "retransmission");
        assert_eq!(
            m.method(),
            Some("MESSAGE"),
            "retransmission is not the MESSAGE"
        );
        assert_eq!(
            m.call_id(),
            req.call_id(),
            "retransmission of another request"
        );
    }

    let to_alice: Vec<&(Instant, Transmit)> = later
        .iter()
        .filter(|(_, t)| t.dst == alice_addr())
        .collect();
    assert_eq!(
        to_alice.len(),
        1,
        "expected exactly one 408 to the sender, got {}",
        to_alice.len()
    );
    let (when, t) = to_alice[0];
    assert_eq!(
        when.duration_since(start),
        t1 * 64,
        "408 must be sent when timer F (64*T1) fires"
    );
    let resp = parse(&t.bytes, "408");
    assert_eq!(
        resp.status(),
        Some(408),
        "sender's final response when the callee never answers: {}",
        resp.start_line()
    );
    assert_eq!(resp.vias(), req.vias(), "408 must carry the sender's Via");
    assert_eq!(resp.call_id(), req.call_id());
    assert_eq!(sim.core.stats.timeouts, 1);
    assert!(
        sim.events()
            .iter()
            .any(|e| matches!(e, Event::Rejected { code: 408, .. })),
        "no Rejected 408 event"
    );

    // A late 200 from the callee is a stray: not forwarded.
    let relayed = parse(
        &later
            .iter()
            .find(|(_, t)| t.dst == bob_addr())
            .expect("retransmission")
            .1
            .bytes,
        "relayed",
    );
    let mut ok = MessageBuilder::response_to(&relayed, 200, "OK");
    ok.add_to_tag("late");
    let tx = sim.udp(bob_addr(), &ok.build());
    assert!(
        tx.is_empty(),
        "a 200 after the 408 was forwarded: {:?}",
        describe(&tx)
    );
    assert_eq!(
        sim.core.stats.stray_responses, 1,
        "late 200 not counted as stray"
    );
    // Alice's retransmission now gets the 408 replayed, not a new relay.
    let req_bytes = req.raw().to_vec();
    let replay = only_response(
        sim.udp(alice_addr(), &req_bytes),
        alice_addr(),
        "retransmission after 408",
    );
    assert_eq!(replay.status(), Some(408));
}

#[test]
fn provisional_response_stretches_retransmissions_to_t2() {
    let t1 = Duration::from_millis(500);
    let t2 = Duration::from_secs(4);
    let mut cfg = config();
    cfg.t1 = t1;
    cfg.t2 = t2;
    let mut sim = Sim::new(cfg);
    assert_eq!(
        sim.register(
            "bob",
            "bob-pw",
            bob_addr(),
            "<sip:bob@10.0.0.2>",
            Some(3600)
        )
        .status(),
        Some(200)
    );
    let start = sim.now;
    let req = sim.message_req("alice", alice_addr(), "bob", "slow", 70);
    let tx = sim.udp(alice_addr(), &req);
    let relayed = parse(&tx[0].bytes, "relayed");
    let trying = MessageBuilder::response_to(&relayed, 100, "Trying").build();
    assert!(
        sim.udp(bob_addr(), &trying).is_empty(),
        "a 100 from the callee must not be forwarded"
    );
    let end = start + Duration::from_secs(20);
    let later = sim.run_until(end);
    let times: Vec<Duration> = later
        .iter()
        .filter(|(_, t)| t.dst == bob_addr())
        .map(|(at, _)| at.duration_since(start))
        .collect();
    // First retransmission still at T1 (already scheduled), then every T2.
    assert!(times.len() >= 2, "retransmissions after a 100: {times:?}");
    assert_eq!(times[0], t1, "first retransmission after 100 Trying");
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == t2),
        "after a provisional response retransmissions must be every T2: {times:?}"
    );
}

#[test]
fn tcp_relay_is_not_retransmitted_but_still_times_out() {
    let t1 = Duration::from_millis(500);
    let (_sim, start, later, _req) = silent_callee(Transport::Tcp, t1, Duration::from_secs(4));
    let to_bob = later.iter().filter(|(_, t)| t.dst == bob_addr()).count();
    assert_eq!(
        to_bob, 0,
        "a request relayed over TCP must not be retransmitted"
    );
    let to_alice: Vec<_> = later
        .iter()
        .filter(|(_, t)| t.dst == alice_addr())
        .collect();
    assert_eq!(to_alice.len(), 1, "expected one 408 to the sender");
    assert_eq!(
        to_alice[0].0.duration_since(start),
        t1 * 64,
        "408 over a reliable callee flow at 64*T1"
    );
    assert_eq!(parse(&to_alice[0].1.bytes, "408").status(), Some(408));
}

#[test]
fn garbage_gets_an_answer_or_is_dropped_never_a_panic() {
    let mut sim = Sim::new(config());
    let bad_with_via = b"INVITE sip:bob@example.test SIP/7.0\r\nVia: SIP/2.0/UDP 198.51.100.10:40001;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        status(&sim.udp(alice_addr(), bad_with_via)),
        [505],
        "SIP/7.0 request"
    );
    let tx = sim.udp(alice_addr(), b"\x00\x01\x02 not sip at all");
    assert!(
        tx.is_empty(),
        "garbage without Via was answered: {:?}",
        describe(&tx)
    );
    assert!(
        sim.events()
            .iter()
            .any(|e| matches!(e, Event::Dropped { .. })),
        "garbage not reported as Dropped"
    );
    assert_eq!(sim.core.stats.unparsable, 2);
    // OPTIONS is answered 200 with Allow.
    let mut b = MessageBuilder::request("OPTIONS", &format!("sip:{DOMAIN}"));
    b.header("Via", "SIP/2.0/UDP 198.51.100.10:40001;branch=z9hG4bKopt")
        .header("From", "<sip:alice@example.test>;tag=o")
        .header("To", "<sip:example.test>")
        .header("Call-ID", "opt-1")
        .header("CSeq", "1 OPTIONS")
        .header("Max-Forwards", "70");
    let resp = only_response(sim.udp(alice_addr(), &b.build()), alice_addr(), "OPTIONS");
    assert_eq!(resp.status(), Some(200));
    assert!(
        resp.header("Allow").is_some_and(|a| a.contains("MESSAGE")),
        "OPTIONS 200 without Allow: MESSAGE"
    );
}

// ------------------------------------------------------- lossy network sim

/// splitmix64, deterministic per seed.
pub(crate) struct Prng(pub(crate) u64);

impl Prng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

pub(crate) struct Packet {
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) bytes: Vec<u8>,
}

/// A datagram network with fixed latency that drops `loss` percent of
/// datagrams in every direction.
pub(crate) struct Network {
    pub(crate) rng: Prng,
    pub(crate) loss: u64,
    pub(crate) latency: Duration,
    pub(crate) queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(crate) packets: HashMap<u64, Packet>,
    pub(crate) seq: u64,
    pub(crate) sent: BTreeMap<(SocketAddr, SocketAddr), (u64, u64)>,
}

impl Network {
    pub(crate) fn send(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let dropped = self.rng.chance(self.loss);
        let e = self.sent.entry((src, dst)).or_default();
        e.0 += 1;
        if dropped {
            e.1 += 1;
            return;
        }
        self.seq += 1;
        self.queue.push(Reverse((now + self.latency, self.seq)));
        self.packets.insert(self.seq, Packet { src, dst, bytes });
    }

    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        match self.queue.peek() {
            Some(Reverse((t, _))) if *t <= now => {
                let Reverse((_, id)) = self.queue.pop()?;
                self.packets.remove(&id)
            }
            _ => None,
        }
    }
}

/// The sending UA: one non-INVITE client transaction per MESSAGE, retransmitted every T1.
struct Sender {
    pending: BTreeMap<String, (Vec<u8>, Instant)>,
    finals: BTreeMap<String, u16>,
    sent_at: BTreeMap<String, Instant>,
    done_at: BTreeMap<String, Instant>,
}

#[test]
fn lossy_network_every_message_gets_a_final_response() {
    const N: usize = 50;
    const LOSS: u64 = 30;
    let mut sim = Sim::new(config());
    let t1 = sim.core.config().t1;
    // Registration itself on a clean path; the exchange below is lossy.
    assert_eq!(
        sim.register(
            "alice",
            "alice-pw",
            alice_addr(),
            &format!("<sip:alice@{}>", alice_addr()),
            Some(3600)
        )
        .status(),
        Some(200)
    );
    assert_eq!(
        sim.register(
            "bob",
            "bob-pw",
            bob_addr(),
            &format!("<sip:bob@{}>", bob_addr()),
            Some(3600)
        )
        .status(),
        Some(200)
    );
    sim.events();

    let mut net = Network {
        rng: Prng(0x5151_7a7a),
        loss: LOSS,
        latency: Duration::from_millis(5),
        queue: BinaryHeap::new(),
        packets: HashMap::new(),
        seq: 0,
        sent: BTreeMap::new(),
    };
    let mut alice = Sender {
        pending: BTreeMap::new(),
        finals: BTreeMap::new(),
        sent_at: BTreeMap::new(),
        done_at: BTreeMap::new(),
    };
    // Messages to send, one every 20 ms.
    let mut to_send: Vec<(Instant, Vec<u8>, String, String)> = (0..N)
        .map(|i| {
            let body = format!("lossy message {i}");
            let bytes = sim.message_req("alice", alice_addr(), "bob", &body, 70);
            let call_id = parse(&bytes, "msg").call_id().expect("call-id").to_string();
            (
                sim.now + Duration::from_millis(20 * i as u64),
                bytes,
                call_id,
                body,
            )
        })
        .collect();
    to_send.reverse();
    let expected_bodies: HashMap<String, String> = to_send
        .iter()
        .map(|(_, _, c, b)| (c.clone(), b.clone()))
        .collect();
    // Bob: responses per relay branch (answers retransmissions identically), deliveries per Call-ID.
    let mut bob_answers: HashMap<String, Vec<u8>> = HashMap::new();
    let mut bob_got: HashMap<String, usize> = HashMap::new();

    let limit = sim.now + Duration::from_secs(300);
    let mut steps = 0u64;
    while alice.finals.len() < N {
        steps += 1;
        assert!(
            steps < 2_000_000,
            "simulation did not converge within the step bound"
        );
        let candidates = [
            net.next_at(),
            sim.core.poll_timeout(),
            alice.pending.values().map(|(_, at)| *at).min(),
            to_send.last().map(|(at, ..)| *at),
        ];
        let Some(next) = candidates.into_iter().flatten().min() else {
            break;
        };
        if next > limit {
            break;
        }
        let now = next.max(sim.now);
        sim.now = now;

        // New MESSAGEs due.
        while to_send.last().is_some_and(|(at, ..)| *at <= now) {
            let (_, bytes, call_id, _) = to_send.pop().expect("due message");
            alice.sent_at.insert(call_id.clone(), now);
            alice.pending.insert(call_id, (bytes.clone(), now + t1));
            net.send(now, alice_addr(), server_addr(), bytes);
        }
        // Alice's retransmissions (every T1 until a final response).
        for (bytes, at) in alice.pending.values_mut() {
            if *at <= now {
                *at = now + t1;
                net.send(now, alice_addr(), server_addr(), bytes.clone());
            }
        }
        // Deliveries.
        while let Some(p) = net.pop_due(now) {
            if p.dst == server_addr() {
                sim.core
                    .handle_message(now, Transport::Udp, p.src, &p.bytes);
            } else if p.dst == bob_addr() {
                let m = parse(&p.bytes, "datagram to bob");
                assert_eq!(
                    m.method(),
                    Some("MESSAGE"),
                    "bob received something other than a MESSAGE"
                );
                let call_id = m.call_id().expect("call-id").to_string();
                assert_eq!(
                    Some(String::from_utf8_lossy(m.body()).as_ref()),
                    expected_bodies.get(&call_id).map(String::as_str),
                    "body of {call_id} corrupted in transit"
                );
                *bob_got.entry(call_id).or_default() += 1;
                let branch = m
                    .vias()
                    .first()
                    .and_then(|v| v.branch().map(str::to_string))
                    .expect("relay branch");
                let answer = bob_answers
                    .entry(branch.clone())
                    .or_insert_with(|| {
                        let mut ok = MessageBuilder::response_to(&m, 200, "OK");
                        ok.add_to_tag(&format!("bob-{branch}"));
                        ok.build()
                    })
                    .clone();
                net.send(now, bob_addr(), p.src, answer);
            } else if p.dst == alice_addr() {
                let m = parse(&p.bytes, "datagram to alice");
                let code = m.status().expect("alice only receives responses");
                let call_id = m.call_id().expect("call-id").to_string();
                if code >= 200 && alice.pending.remove(&call_id).is_some() {
                    alice.finals.insert(call_id.clone(), code);
                    alice.done_at.insert(call_id, now);
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
            net.send(now, server_addr(), t.dst, t.bytes);
        }
        while sim.core.poll_event().is_some() {}
    }

    eprintln!(
        "lossy network: legs (sent, dropped) {:?}; relayed {}; deliveries to bob {}; core retransmissions {}",
        net.sent,
        sim.core.stats.relayed,
        bob_got.values().sum::<usize>(),
        sim.core.stats.retransmissions
    );
    let missing: Vec<&String> = expected_bodies
        .keys()
        .filter(|c| !alice.finals.contains_key(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} MESSAGEs got no final response within 300 s simulated: {missing:?}",
        missing.len()
    );
    let not_ok: Vec<(&String, &u16)> = alice.finals.iter().filter(|(_, c)| **c != 200).collect();
    assert!(
        not_ok.is_empty(),
        "MESSAGEs with a final response other than 200: {not_ok:?}"
    );
    let undelivered: Vec<&String> = expected_bodies
        .keys()
        .filter(|c| !bob_got.contains_key(*c))
        .collect();
    assert!(
        undelivered.is_empty(),
        "MESSAGEs never relayed to the callee: {undelivered:?}"
    );
    // The loss really happened on every leg (the test is not vacuous).
    for ((src, dst), (sent, dropped)) in &net.sent {
        let pct = *dropped as f64 * 100.0 / *sent as f64;
        assert!(
            *sent >= 20,
            "leg {src} -> {dst} carried only {sent} datagrams"
        );
        assert!(
            (15.0..=45.0).contains(&pct),
            "leg {src} -> {dst}: {dropped} of {sent} dropped ({pct:.0}%), expected about {LOSS}%"
        );
    }
    assert_eq!(
        net.sent.len(),
        4,
        "expected traffic on all four legs: {:?}",
        net.sent.keys().collect::<Vec<_>>()
    );
    // Retransmissions were absorbed: the core relayed each MESSAGE once per
    // server transaction, never once per retransmission.
    let total_from_alice = net
        .sent
        .get(&(alice_addr(), server_addr()))
        .map_or(0, |s| s.0);
    assert!(
        total_from_alice > N as u64,
        "alice never retransmitted: loss not exercised"
    );
    assert!(
        sim.core.stats.relayed < total_from_alice,
        "core relayed {} times for {total_from_alice} datagrams from alice: retransmissions not absorbed",
        sim.core.stats.relayed
    );
    let unique: HashSet<&String> = bob_got.keys().collect();
    assert_eq!(unique.len(), N);
    let worst = alice
        .done_at
        .iter()
        .map(|(c, d)| d.duration_since(alice.sent_at[c]))
        .max()
        .unwrap_or_default();
    assert!(
        worst < t1 * 64,
        "slowest MESSAGE took {worst:?}, longer than a transaction timeout"
    );
}

/// The answer to a secure request that cannot be delivered securely:
/// one 480 to the sender, nothing to the recipient.
fn assert_refused_480(tx: &[Transmit], what: &str) {
    assert_eq!(
        tx.len(),
        1,
        "{what}: expected only a 480 to the sender, got {:?}",
        describe(tx)
    );
    assert_eq!(tx[0].dst, alice_addr(), "{what}: answer goes to the sender");
    let resp = parse(&tx[0].bytes, what);
    assert_eq!(resp.status(), Some(480), "{what}: {}", resp.start_line());
    assert!(
        resp.header("Warning").is_some_and(|w| w.contains("TLS")),
        "{what}: the 480 should say why in a Warning: {:?}",
        resp.header("Warning")
    );
}

fn sips_to_bob(sim: &mut Sim) -> Vec<u8> {
    let ruri = format!("sips:bob@{DOMAIN}");
    sim.message_req_to("alice", alice_addr(), &ruri, "secret", 70)
}

#[test]
fn sips_request_goes_only_to_a_tls_flow() {
    let mut sim = Sim::new(config());
    // bob registers over UDP with a plain contact: reachable for sip:, not sips:.
    let reg = sim.register(
        "bob",
        "bob-pw",
        bob_addr(),
        "<sip:bob@10.0.0.2:5062>",
        Some(600),
    );
    assert_eq!(reg.status(), Some(200));
    let req = sips_to_bob(&mut sim);
    let tx = sim.deliver(Transport::Tls, alice_addr(), &req);
    assert_refused_480(&tx, "sips: MESSAGE to a UDP-only user");
    let req = sim.message_req("alice", alice_addr(), "bob", "plain", 70);
    let tx = sim.deliver(Transport::Tls, alice_addr(), &req);
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    assert_eq!(
        (tx[0].transport, tx[0].dst),
        (Transport::Udp, bob_addr()),
        "a sip: MESSAGE may go over UDP"
    );

    // bob adds a binding over TLS: the secure request takes it, with our TLS Via.
    let bob_tls = addr("198.51.100.20:40443");
    let reg = sim.register_on(
        Transport::Tls,
        "bob",
        "bob-pw",
        bob_tls,
        "<sips:bob@198.51.100.20:40443>",
        Some(600),
    );
    assert_eq!(reg.status(), Some(200));
    let req = sips_to_bob(&mut sim);
    let tx = sim.deliver(Transport::Tls, alice_addr(), &req);
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    assert_eq!(
        (tx[0].transport, tx[0].dst),
        (Transport::Tls, bob_tls),
        "sips: relayed over bob's TLS flow"
    );
    let relayed = parse(&tx[0].bytes, "relayed sips MESSAGE");
    assert_eq!(relayed.request_uri(), Some("sips:bob@198.51.100.20:40443"));
    let top = &relayed.vias()[0];
    assert_eq!(
        top.transport, "TLS",
        "our Via names the transport the request leaves on"
    );
    assert_eq!(
        (top.host.as_str(), top.port),
        ("192.0.2.1", Some(5061)),
        "our Via names the TLS listener"
    );
}

#[test]
fn contact_asking_for_tls_is_not_reached_over_udp() {
    let mut sim = Sim::new(config());
    for contact in [
        "<sip:bob@10.0.0.2:5062;transport=TLS>",
        "<sips:bob@10.0.0.2:5062>",
    ] {
        let reg = sim.register("bob", "bob-pw", bob_addr(), contact, Some(600));
        assert_eq!(reg.status(), Some(200), "{contact}");
        let req = sim.message_req("alice", alice_addr(), "bob", "hi", 70);
        let tx = sim.udp(alice_addr(), &req);
        assert_refused_480(&tx, contact);
        let reg = sim.register("bob", "bob-pw", bob_addr(), "*", Some(0));
        assert_eq!(reg.status(), Some(200), "unregister {contact}");
    }
}

#[test]
fn lost_flow_answers_480_at_once_not_408_later() {
    let mut sim = Sim::new(config());
    let bob_tls = addr("198.51.100.20:40443");
    let reg = sim.register_on(
        Transport::Tls,
        "bob",
        "bob-pw",
        bob_tls,
        "<sips:bob@198.51.100.20:40443>",
        Some(600),
    );
    assert_eq!(reg.status(), Some(200));
    let req = sim.message_req("alice", alice_addr(), "bob", "anyone there?", 70);
    let tx = sim.udp(alice_addr(), &req);
    assert_eq!((tx[0].transport, tx[0].dst), (Transport::Tls, bob_tls));
    // A failure on another flow answers nothing.
    sim.core
        .handle_flow_failed(sim.now, Transport::Tcp, bob_tls);
    assert!(
        sim.drain().is_empty(),
        "a TCP failure is not the TLS flow's"
    );
    sim.core
        .handle_flow_failed(sim.now, Transport::Tls, bob_tls);
    let resp = only_response(sim.drain(), alice_addr(), "lost TLS flow");
    assert_eq!(resp.status(), Some(480), "{}", resp.start_line());
    assert_eq!(resp.call_id(), parse(&req, "req").call_id());
    // The transaction is answered: a retransmission gets the 480 again and
    // no 408 follows.
    let again = sim.udp(alice_addr(), &req);
    assert_eq!(status(&again), vec![480], "{:?}", describe(&again));
    let later = sim.run_until(sim.at(40.0));
    assert!(
        later.is_empty(),
        "{:?}",
        later.iter().map(|(_, t)| t.dst).collect::<Vec<_>>()
    );
}

#[test]
fn an_im_the_archive_refused_gets_503_with_retry_after_and_is_not_relayed() {
    let mut sim = Sim::new(CoreConfig {
        archive_retry_after: Duration::from_secs(7),
        ..config()
    });
    sim.register(
        "bob",
        "bob-pw",
        bob_addr(),
        "<sip:bob@10.0.0.2:5062>",
        Some(600),
    );
    let req = sim.message_req("alice", alice_addr(), "bob", "not archived", 70);
    sim.core
        .handle_unarchived(sim.now, Transport::Udp, alice_addr(), &req);
    let resp = only_response(sim.drain(), alice_addr(), "refused MESSAGE");
    assert_eq!(resp.status(), Some(503), "{}", resp.start_line());
    assert_eq!(resp.header("Retry-After"), Some("7"));
    assert_to_tag(&resp, "503 to a refused IM");
    assert!(
        sim.events()
            .iter()
            .any(|e| matches!(e, Event::Rejected { code: 503, .. })),
        "the refusal is an event the server logs"
    );
    assert_eq!(sim.core.stats.archive_refused, 1);

    // A retransmission is answered from the transaction, not relayed.
    sim.core
        .handle_unarchived(sim.now, Transport::Udp, alice_addr(), &req);
    assert_eq!(status(&sim.drain()), vec![503]);
    assert_eq!(sim.core.stats.archive_refused, 1);
    // The next IM, accepted by the archive, goes through as usual.
    let ok = sim.message_req("alice", alice_addr(), "bob", "archived", 70);
    let tx = sim.udp(alice_addr(), &ok);
    assert_eq!(tx.len(), 1, "{:?}", describe(&tx));
    assert_eq!(tx[0].dst, bob_addr());
}

#[test]
fn presence_publish_and_subscription_are_served_with_notifies_in_transactions() {
    let mut sim = Sim::new(config());
    let watcher = bob_addr();
    let subscribe = |call_id: &str, to_tag: Option<&str>, expires: u32| {
        let mut b = MessageBuilder::request("SUBSCRIBE", &format!("sip:alice@{DOMAIN}"));
        b.header(
            "Via",
            &format!(
                "SIP/2.0/UDP {watcher};branch=z9hG4bK-sub-{expires}-{}",
                to_tag.is_some()
            ),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:bob@{DOMAIN}>;tag=w"))
        .header(
            "To",
            &match to_tag {
                Some(t) => format!("<sip:alice@{DOMAIN}>;tag={t}"),
                None => format!("<sip:alice@{DOMAIN}>"),
            },
        )
        .header("Call-ID", call_id)
        .header(
            "CSeq",
            if to_tag.is_some() {
                "2 SUBSCRIBE"
            } else {
                "1 SUBSCRIBE"
            },
        )
        .header("Contact", &format!("<sip:bob@{watcher}>"))
        .header("Event", "presence")
        .header("Expires", &expires.to_string());
        b.build()
    };
    let tx = sim.udp(watcher, &subscribe("watch-1", None, 600));
    let statuses = status(&tx);
    assert_eq!(statuses, vec![200], "{:?}", describe(&tx));
    let ok = tx
        .iter()
        .find(|t| parse(&t.bytes, "200").status() == Some(200))
        .unwrap();
    let dialog_tag = parse(&ok.bytes, "200")
        .to()
        .and_then(|t| t.tag().map(str::to_string))
        .unwrap();
    let notify = tx
        .iter()
        .map(|t| parse(&t.bytes, "NOTIFY"))
        .find(|m| m.method() == Some("NOTIFY"))
        .unwrap_or_else(|| panic!("no NOTIFY after the SUBSCRIBE: {:?}", describe(&tx)));
    assert_eq!(
        notify.from().and_then(|f| f.tag()),
        Some(dialog_tag.as_str()),
        "NOTIFY in the subscription's dialog"
    );
    assert!(
        notify.vias()[0]
            .branch()
            .is_some_and(|b| b.starts_with("z9hG4bK"))
    );

    // Unanswered on UDP: retransmitted at T1.
    let resent = sim.run_until(sim.at(0.6));
    assert!(
        resent
            .iter()
            .any(|(_, t)| parse(&t.bytes, "resent").method() == Some("NOTIFY")),
        "the NOTIFY is retransmitted while unanswered"
    );
    sim.udp(
        watcher,
        &MessageBuilder::response_to(&notify, 200, "OK").build(),
    );
    assert!(
        sim.run_until(sim.at(3.0)).is_empty(),
        "an answered NOTIFY is not sent again"
    );

    // alice publishes: the watcher is told.
    let mut b = MessageBuilder::request("PUBLISH", &format!("sip:alice@{DOMAIN}"));
    b.header("Via", &format!("SIP/2.0/UDP {};branch=z9hG4bK-pub-1", alice_addr()))
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:alice@{DOMAIN}>;tag=a"))
        .header("To", &format!("<sip:alice@{DOMAIN}>"))
        .header("Call-ID", "pub-1")
        .header("CSeq", "1 PUBLISH")
        .header("Event", "presence")
        .header("Expires", "600")
        .body(
            "application/pidf+xml",
            format!("<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:alice@{DOMAIN}\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>").as_bytes(),
        );
    let tx = sim.udp(alice_addr(), &b.build());
    let to_alice = only_response(
        tx.iter()
            .filter(|t| t.dst == alice_addr())
            .cloned()
            .collect(),
        alice_addr(),
        "PUBLISH",
    );
    assert_eq!(to_alice.status(), Some(200));
    assert!(to_alice.header("SIP-ETag").is_some());
    let change = tx
        .iter()
        .filter(|t| t.dst == watcher)
        .map(|t| parse(&t.bytes, "NOTIFY"))
        .next()
        .expect("a NOTIFY of the change");
    assert!(String::from_utf8_lossy(change.body()).contains("<basic>open</basic>"));

    // Unsubscribe while the change is unanswered: the final NOTIFY waits
    // for its answer (one NOTIFY in flight per dialog), then terminated.
    let tx = sim.udp(watcher, &subscribe("watch-1", Some(&dialog_tag), 0));
    assert_eq!(status(&tx), vec![200]);
    assert!(
        !tx.iter()
            .any(|t| parse(&t.bytes, "sent").method() == Some("NOTIFY")),
        "no NOTIFY before the change is answered: {:?}",
        describe(&tx)
    );
    let tx = sim.udp(
        watcher,
        &MessageBuilder::response_to(&change, 200, "OK").build(),
    );
    let last = tx
        .iter()
        .map(|t| parse(&t.bytes, "after unsubscribe"))
        .find(|m| m.method() == Some("NOTIFY"))
        .expect("a final NOTIFY");
    assert_eq!(last.header("Subscription-State"), Some("terminated"));

    // Unknown presentity.
    let mut b = MessageBuilder::request("SUBSCRIBE", &format!("sip:nobody@{DOMAIN}"));
    b.header(
        "Via",
        &format!("SIP/2.0/UDP {watcher};branch=z9hG4bK-sub-x"),
    )
    .header("From", &format!("<sip:bob@{DOMAIN}>;tag=w"))
    .header("To", &format!("<sip:nobody@{DOMAIN}>"))
    .header("Call-ID", "watch-2")
    .header("CSeq", "1 SUBSCRIBE")
    .header("Event", "presence");
    assert_eq!(status(&sim.udp(watcher, &b.build())), vec![404]);
}

#[test]
fn a_request_that_comes_back_through_the_server_is_a_loop_482() {
    let mut sim = Sim::new(config());
    // bob's contact points back at the server itself: whatever is relayed
    // to him arrives here again.
    sim.register(
        "bob",
        "bob-pw",
        server_addr(),
        &format!("<sip:bob@{}>", server_addr()),
        Some(600),
    );
    let req = sim.message_req("alice", alice_addr(), "bob", "round and round", 70);
    let relayed = sim.udp(alice_addr(), &req);
    assert_eq!(relayed.len(), 1, "{:?}", describe(&relayed));
    assert_eq!(relayed[0].dst, server_addr());
    let back = sim.udp(server_addr(), &relayed[0].bytes);
    let resp = only_response(back, server_addr(), "the MESSAGE that came back");
    assert_eq!(resp.status(), Some(482), "{}", resp.start_line());

    let mut b = MessageBuilder::from_message(&parse(&relayed[0].bytes, "relayed"));
    b.set_request_uri(&format!("sip:bob@{DOMAIN}"));
    let text = String::from_utf8(b.build())
        .unwrap()
        .replacen("MESSAGE sip:", "INVITE sip:", 1)
        .replace("CSeq: 1 MESSAGE", "CSeq: 1 INVITE");
    let tx = sim.udp(server_addr(), text.as_bytes());
    assert_eq!(
        status(&tx),
        vec![482],
        "an INVITE that came back: {:?}",
        describe(&tx)
    );
    assert!(
        sim.events()
            .iter()
            .any(|e| matches!(e, Event::Rejected { code: 482, .. }))
    );
}
