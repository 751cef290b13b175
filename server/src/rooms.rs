//! Persistent chat rooms inside the core. A MESSAGE to
//! `sip:room-NAME@DOMAIN` from a member who may post is answered 200 and
//! sent on, from the room's URI, to every binding of every other member
//! registered at that moment, each copy a delivery of its own
//! ([`crate::fanout`]). Copies pass the tap like any message, so the post
//! (member → room) and each delivery (room → member) are archived.
//!
//! Refusals: not a member or read-only 403, a member over the post rate of
//! [`RoomConfig`] 503 with `Retry-After`. A `room-` URI that names no
//! room is not handled here and gets the relay's 404.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sipvault_catalog::{ROOM_USER_PREFIX, RoomRole};
use sipvault_sip::{SipMessage, SipUri};

use crate::core::Core;
use crate::fanout::{Copy, CopyIds, Origin};

/// Members of each room, by room name (without the `room-` prefix).
pub type RoomDirectory = HashMap<String, BTreeMap<String, RoomRole>>;

/// Flood control of room posts, per member and room: a token bucket that
/// refills at `posts_per_second` up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub posts_per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            posts_per_second: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Post and delivery counters of the rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub posts: u64,
    pub deliveries: u64,
    pub refused: u64,
    pub rate_limited: u64,
    /// Deliveries without a final response within 64·T1, or whose flow failed.
    pub delivery_failures: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The rooms' state in the core: the directory the binary pushes and rate
/// buckets.
#[derive(Default)]
pub(crate) struct Rooms {
    config: RoomConfig,
    directory: RoomDirectory,
    buckets: HashMap<(String, String), Bucket>,
    pub(crate) stats: RoomStats,
}

impl Rooms {
    pub(crate) fn new(config: RoomConfig) -> Rooms {
        Rooms {
            config,
            ..Rooms::default()
        }
    }

    /// Takes a token of `room`'s bucket for `user`; when there is none,
    /// how long until there is one.
    fn take_token(&mut self, now: Instant, room: &str, user: &str) -> Result<(), Duration> {
        let rate = f64::from(self.config.posts_per_second.get());
        let burst = f64::from(self.config.burst.get());
        let bucket = self
            .buckets
            .entry((room.to_string(), user.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

impl Core {
    /// Replaces the rooms and their members (the binary reloads them from
    /// the catalog). Rate buckets of members no longer there are dropped.
    pub fn set_rooms(&mut self, directory: RoomDirectory) {
        self.rooms.buckets.retain(|(room, user), _| {
            directory
                .get(room)
                .is_some_and(|members| members.contains_key(user))
        });
        self.rooms.directory = directory;
    }

    pub fn room_stats(&self) -> &RoomStats {
        &self.rooms.stats
    }

    /// The room a MESSAGE is addressed to, if its Request-URI names one.
    fn room_of(&self, req: &SipMessage) -> Option<String> {
        let user = req
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)?;
        let name = user.strip_prefix(ROOM_USER_PREFIX)?;
        self.rooms
            .directory
            .contains_key(name)
            .then(|| name.to_string())
    }

    /// Whether `req` (a MESSAGE) is a post to a known room.
    pub(crate) fn is_room_post(&self, req: &SipMessage) -> bool {
        self.room_of(req).is_some()
    }

    /// A MESSAGE to a room, in server transaction `key`.
    pub(crate) fn on_room_post(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &str,
        req: SipMessage,
    ) {
        let Some(room) = self.room_of(&req) else {
            return;
        };
        // The poster is the From address, which must be of our domain.
        let sender = req
            .from()
            .and_then(|f| SipUri::parse(&f.uri).ok())
            .filter(|u| {
                u.host.eq_ignore_ascii_case(&self.config.domain)
                    && (u.scheme.eq_ignore_ascii_case("sip")
                        || u.scheme.eq_ignore_ascii_case("sips"))
            })
            .and_then(|u| u.user);
        let role = sender.as_ref().and_then(|s| {
            self.rooms
                .directory
                .get(&room)
                .and_then(|members| members.get(s))
                .copied()
        });
        let (Some(sender), Some(role)) = (sender, role) else {
            self.rooms.stats.refused += 1;
            self.reject_event(peer, 403, &format!("not a member of room {room}"));
            self.respond(key, &req, 403, "Forbidden", &[]);
            return;
        };
        if !role.may_post() {
            self.rooms.stats.refused += 1;
            self.reject_event(peer, 403, &format!("read-only member of room {room}"));
            self.respond(key, &req, 403, "Forbidden", &[]);
            return;
        }
        if self.hops_left(peer, key, &req).is_none() {
            return;
        }
        if let Err(wait) = self.rooms.take_token(now, &room, &sender) {
            self.rooms.stats.rate_limited += 1;
            let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
            tracing::warn!(
                room = %room,
                user = %sender,
                retry_after,
                "room post refused: member is posting faster than [rooms] allows"
            );
            self.reject_event(peer, 503, &format!("room {room} post rate exceeded"));
            self.respond(
                key,
                &req,
                503,
                "Service Unavailable",
                &[("Retry-After".into(), retry_after.to_string())],
            );
            return;
        }
        self.rooms.stats.posts += 1;
        self.respond(key, &req, 200, "OK", &[]);
        self.fan_out(now, &room, &sender, &req);
    }

    /// Sends a copy of `post` to every binding of every other member.
    fn fan_out(&mut self, now: Instant, room: &str, sender: &str, post: &SipMessage) {
        let room_uri = format!("sip:{ROOM_USER_PREFIX}{room}@{}", self.config.domain);
        let members: Vec<String> = self
            .rooms
            .directory
            .get(room)
            .map(|m| m.keys().filter(|u| *u != sender).cloned().collect())
            .unwrap_or_default();
        let copy = Copy {
            origin: Origin::Room,
            from_uri: &room_uri,
            author: sender,
            ids: CopyIds::Fresh {
                prefix: ROOM_USER_PREFIX,
            },
            content_type: post.header("Content-Type").unwrap_or("text/plain"),
            body: post.body(),
        };
        let sent = self.send_copies(now, &copy, &members);
        self.rooms.stats.deliveries += u64::from(sent);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use sipvault_catalog::RoomRole;
    use sipvault_sip::{MessageBuilder, SipMessage};

    use super::{RoomConfig, RoomDirectory, RoomStats};
    use crate::core::{CoreConfig, Event, Transmit};
    use crate::core_tests::{
        DOMAIN, Sim, addr, alice_addr, bob_addr, config, creds, describe, only_response, parse,
    };

    const ROOM: &str = "sip:room-budget@example.test";

    fn carol_addr() -> std::net::SocketAddr {
        addr("198.51.100.30:40003")
    }
    fn bob_phone() -> std::net::SocketAddr {
        addr("198.51.100.21:40004")
    }

    /// alice owner, bob member (two devices), carol read-only, dave member
    /// who never registers, erin registered but in no room.
    fn sim_with(config: CoreConfig) -> Sim {
        let mut sim = Sim::new(config);
        let mut users = std::collections::HashMap::new();
        for user in ["alice", "bob", "carol", "dave", "erin"] {
            users.insert(user.to_string(), creds(user, &format!("{user}-pw")));
        }
        sim.core.set_users(users);
        let mut members = BTreeMap::new();
        members.insert("alice".to_string(), RoomRole::Owner);
        members.insert("bob".to_string(), RoomRole::Member);
        members.insert("carol".to_string(), RoomRole::ReadOnly);
        members.insert("dave".to_string(), RoomRole::Member);
        sim.core
            .set_rooms(RoomDirectory::from([("budget".to_string(), members)]));
        for (user, flow) in [
            ("alice", alice_addr()),
            ("bob", bob_addr()),
            ("bob", bob_phone()),
            ("carol", carol_addr()),
            ("erin", addr("198.51.100.50:40006")),
        ] {
            let contact = format!("<sip:{user}@{flow}>");
            let resp = sim.register(user, &format!("{user}-pw"), flow, &contact, Some(3600));
            assert_eq!(resp.status(), Some(200), "registering {user} at {flow}");
        }
        sim.events();
        sim
    }

    fn sim() -> Sim {
        sim_with(config())
    }

    /// A MESSAGE from `user` (at `flow`) to `ruri`.
    fn post_req(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        body: &str,
    ) -> Vec<u8> {
        let id = sim.next_id();
        let mut b = MessageBuilder::request("MESSAGE", ruri);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-post-{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=p{id}"))
        .header("To", &format!("<{ruri}>"))
        .header("Call-ID", &format!("post-{id}@test"))
        .header("CSeq", "1 MESSAGE")
        .body("text/plain;charset=UTF-8", body.as_bytes());
        b.build()
    }

    /// The responses to `dst` and the requests the core sent elsewhere.
    fn split(tx: Vec<Transmit>, dst: std::net::SocketAddr) -> (Vec<SipMessage>, Vec<Transmit>) {
        let (to_poster, others): (Vec<_>, Vec<_>) = tx
            .into_iter()
            .partition(|t| t.dst == dst && !parse(&t.bytes, "to poster").is_request());
        (
            to_poster
                .iter()
                .map(|t| parse(&t.bytes, "response"))
                .collect(),
            others,
        )
    }

    fn post(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        body: &str,
    ) -> (u16, Vec<Transmit>) {
        let req = post_req(sim, user, flow, ruri, body);
        let (responses, deliveries) = split(sim.udp(flow, &req), flow);
        assert_eq!(
            responses.len(),
            1,
            "one answer to the poster: {:?}",
            describe(&deliveries)
        );
        (responses[0].status().unwrap_or(0), deliveries)
    }

    fn answer(sim: &mut Sim, delivery: &Transmit, code: u16) -> Vec<Transmit> {
        let req = parse(&delivery.bytes, "delivery");
        let resp = MessageBuilder::response_to(&req, code, "Whatever").build();
        sim.udp(delivery.dst, &resp)
    }

    #[test]
    fn a_post_is_answered_and_sent_to_every_binding_of_every_other_registered_member() {
        let mut sim = sim();
        let (code, deliveries) = post(
            &mut sim,
            "alice",
            alice_addr(),
            ROOM,
            "budget is due friday",
        );
        assert_eq!(code, 200);
        let mut dsts: Vec<_> = deliveries.iter().map(|t| t.dst).collect();
        dsts.sort();
        let mut expected = vec![bob_addr(), bob_phone(), carol_addr()];
        expected.sort();
        assert_eq!(
            dsts, expected,
            "bob on both devices and read-only carol receive; the poster, unregistered dave and non-member erin do not"
        );
        let mut call_ids = HashSet::new();
        for t in &deliveries {
            let m = parse(&t.bytes, "delivery");
            assert_eq!(m.method(), Some("MESSAGE"));
            let from = m.from().expect("From");
            assert_eq!(from.uri, ROOM, "the room sends the copy");
            assert!(
                m.header("From").unwrap().starts_with("\"alice\""),
                "display name names the poster"
            );
            assert_eq!(m.body(), b"budget is due friday");
            assert_eq!(m.header("Content-Type"), Some("text/plain;charset=UTF-8"));
            let to_user = if t.dst == carol_addr() {
                "carol"
            } else {
                "bob"
            };
            assert_eq!(m.to().unwrap().uri, format!("sip:{to_user}@{DOMAIN}"));
            assert!(
                m.vias()[0]
                    .branch()
                    .unwrap()
                    .starts_with(crate::core::BRANCH_PREFIX),
                "each copy carries a Via of ours"
            );
            assert!(
                call_ids.insert(m.call_id().unwrap().to_string()),
                "a Call-ID per copy"
            );
        }
        assert_eq!(
            sim.core.room_stats(),
            &RoomStats {
                posts: 1,
                deliveries: 3,
                ..RoomStats::default()
            }
        );

        // Bob's devices answer: nothing goes back to alice, whose post was
        // answered already.
        for t in deliveries.iter().filter(|t| t.dst != carol_addr()) {
            assert!(
                answer(&mut sim, t, 200).is_empty(),
                "a delivery's answer is absorbed"
            );
        }
        // Carol's agent never answers: retransmitted at T1, 2·T1, ... then
        // given up at 64·T1, only her copy.
        let end = sim.now + Duration::from_secs(40);
        let later = sim.run_until(end);
        assert!(!later.is_empty());
        assert!(
            later.iter().all(|(_, t)| t.dst == carol_addr()),
            "only the unanswered copy is retransmitted: {:?}",
            later.iter().map(|(_, t)| t.dst).collect::<Vec<_>>()
        );
        assert_eq!(sim.core.room_stats().delivery_failures, 1);
        assert!(
            sim.core.poll_timeout().is_none_or(|t| t > end),
            "no delivery left"
        );
    }

    #[test]
    fn a_retransmitted_post_is_answered_again_and_not_sent_twice() {
        let mut sim = sim();
        let req = post_req(&mut sim, "bob", bob_addr(), ROOM, "once");
        let first = sim.udp(bob_addr(), &req);
        assert_eq!(
            first.len(),
            3,
            "200 to bob, copies to alice and carol: {:?}",
            describe(&first)
        );
        let again = sim.udp(bob_addr(), &req);
        let resp = only_response(again, bob_addr(), "retransmitted post");
        assert_eq!(resp.status(), Some(200));
        assert_eq!(sim.core.room_stats().posts, 1);
    }

    #[test]
    fn non_members_read_only_members_and_missing_rooms_are_refused() {
        let mut sim = sim();
        let erin = addr("198.51.100.50:40006");
        let (code, out) = post(&mut sim, "erin", erin, ROOM, "let me in");
        assert_eq!((code, out.len()), (403, 0), "a non-member gets 403");
        let (code, out) = post(&mut sim, "carol", carol_addr(), ROOM, "may I?");
        assert_eq!((code, out.len()), (403, 0), "a read-only member gets 403");
        let (code, out) = post(
            &mut sim,
            "alice",
            alice_addr(),
            "sip:room-nope@example.test",
            "hello?",
        );
        assert_eq!(
            (code, out.len()),
            (404, 0),
            "a room that does not exist: 404"
        );
        assert_eq!(sim.core.room_stats().refused, 2);

        // A member's name from another domain is not the member.
        let id = sim.next_id();
        let mut b = MessageBuilder::request("MESSAGE", ROOM);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {erin};branch=z9hG4bK-x{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:alice@evil.example>;tag=x{id}"))
        .header("To", &format!("<{ROOM}>"))
        .header("Call-ID", &format!("x{id}@test"))
        .header("CSeq", "1 MESSAGE")
        .body("text/plain", b"spoof");
        let resp = only_response(sim.udp(erin, &b.build()), erin, "foreign From");
        assert_eq!(resp.status(), Some(403));

        let big = "x".repeat(config().max_body_bytes + 1);
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, &big);
        assert_eq!((code, out.len()), (413, 0), "an oversized post: 413");
        assert_eq!(sim.core.room_stats().posts, 0);

        // Membership follows the directory: bob removed is refused.
        let mut members = BTreeMap::new();
        members.insert("alice".to_string(), RoomRole::Owner);
        sim.core
            .set_rooms(RoomDirectory::from([("budget".to_string(), members)]));
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "still here?");
        assert_eq!(code, 403);
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, "alone");
        assert_eq!(
            (code, out.len()),
            (200, 0),
            "no other member: answered, sent nowhere"
        );
    }

    #[test]
    fn a_member_posting_too_fast_gets_503_with_retry_after_and_others_are_unaffected() {
        let mut sim = sim_with(CoreConfig {
            rooms: RoomConfig {
                posts_per_second: std::num::NonZeroU32::new(2).unwrap(),
                burst: std::num::NonZeroU32::new(3).unwrap(),
            },
            ..config()
        });
        for n in 0..3 {
            let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, &format!("flood {n}"));
            assert_eq!(code, 200, "post {n} is within the burst");
        }
        let req = post_req(&mut sim, "bob", bob_addr(), ROOM, "one too many");
        let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), "over the rate");
        assert_eq!(resp.status(), Some(503));
        assert_eq!(
            resp.header("Retry-After"),
            Some("1"),
            "one token in 0.5 s, rounded up"
        );
        assert!(
            sim.events()
                .iter()
                .any(|e| matches!(e, Event::Rejected { code: 503, .. })),
            "the refusal is an event (logged by the IO layer)"
        );
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, "I can still post");
        assert_eq!((code, out.len()), (200, 3), "another member is not limited");

        // Half a second later one token is back, and only one.
        sim.now += Duration::from_millis(500);
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "after the wait");
        assert_eq!(code, 200);
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "too soon again");
        assert_eq!(code, 503);
        assert_eq!(sim.core.room_stats().rate_limited, 2);
        assert_eq!(sim.core.room_stats().posts, 5);
    }
}
