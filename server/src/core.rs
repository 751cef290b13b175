//! The sans-IO server core: registrar, page-mode MESSAGE relay with
//! RFC 3261 non-INVITE transactions, and the stateful INVITE proxy (INVITE
//! transactions, forking, Record-Route and loose routing) in
//! [`crate::proxy`].
//!
//! Input comes in through [`Core::handle_message`] and
//! [`Core::handle_timeout`], both taking the current time; output leaves
//! through [`Core::poll_transmit`] and [`Core::poll_event`], and
//! [`Core::poll_timeout`] says when to call `handle_timeout` next. The core
//! owns no socket and reads no clock, so tests drive it in simulated time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::digest::{self, Algorithm, Challenge, Credentials};
use sipvault_sip::{
    MessageBuilder, SipMessage, SipUri, check_forwarded_request, check_request, default_reason,
    error_response_for_unparsed,
};

use crate::conference::{ConferenceConfig, ConferenceEvent, Conferences};
use crate::fanout::Deliveries;
use crate::federation::FederationPeer;
use crate::presence::{PresenceAgent, PresenceConfig};
use crate::proxy::{CancelClient, InviteClient, InviteServer};
use crate::registrar::{Binding, Bindings, NonceState, Nonces};
use crate::rooms::{CHAT_ROOM_EVENT, RoomConfig, Rooms};
use crate::subscription::event_is;

/// Option tags this server understands (for `Require`/`Proxy-Require`).
pub const SUPPORTED: &[&str] = &["path", "outbound"];
pub const ALLOW: &str = "REGISTER, MESSAGE, OPTIONS, INVITE, ACK, CANCEL, BYE, UPDATE, PRACK, INFO, REFER, PUBLISH, SUBSCRIBE, NOTIFY";
pub(crate) const SERVER_HEADER: &str = "sipvault";
/// Start of every Via branch this server writes.
pub(crate) const BRANCH_PREFIX: &str = "z9hG4bK-sv-";

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The SIP domain served, also the digest realm.
    pub domain: String,
    /// RFC 3261 T1 (RTT estimate) and T2 (max retransmit interval).
    pub t1: Duration,
    pub t2: Duration,
    /// RFC 3261 T4 (how long a message may stay in the network): Timer I
    /// of an INVITE server transaction on UDP.
    pub t4: Duration,
    /// Timer C of the proxy (RFC 3261 16.6 step 11): an INVITE without a
    /// final response after this long is cancelled downstream and answered
    /// 408 upstream. Not restarted by provisional responses, so a callee
    /// that keeps ringing is still given up on.
    pub no_answer_timeout: Duration,
    /// Requests with a larger body get 413.
    pub max_body_bytes: usize,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    /// How long a nonce from a challenge stays valid.
    pub nonce_ttl: Duration,
    /// Digest algorithms a REGISTER is challenged with, one challenge
    /// each, in this order (RFC 8760). Answers with either algorithm are
    /// checked whatever is offered. MD5 alone by default: clients that
    /// know only MD5 (SIPp 3.6, baresip 1.0) give up on a 401 that also
    /// offers SHA-256.
    pub digest_algorithms: Vec<Algorithm>,
    /// Seed for tags, branches and nonces (random in production, fixed in tests).
    pub seed: u64,
    /// `Retry-After` of the 503 that refuses an IM the archive could not
    /// accept (critical mode).
    pub archive_retry_after: Duration,
    /// Who may watch whose presence (see [`PresenceConfig::allow`]).
    pub presence_allow: HashMap<String, Vec<String>>,
    /// Post rate of room members and history kept (`rooms.rs`).
    pub rooms: RoomConfig,
    /// Federated domains and their servers (`federation.rs`).
    pub federation: Vec<FederationPeer>,
    /// The conference factory and limits (`conference.rs`).
    pub conferences: ConferenceConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            domain: "sipvault.local".into(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            no_answer_timeout: Duration::from_secs(180),
            max_body_bytes: 8 * 1024,
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            nonce_ttl: Duration::from_secs(300),
            digest_algorithms: vec![Algorithm::Md5],
            seed: 0x5eed,
            archive_retry_after: Duration::from_secs(5),
            presence_allow: HashMap::new(),
            rooms: RoomConfig::default(),
            federation: Vec::new(),
            conferences: ConferenceConfig::default(),
        }
    }
}

/// What the core knows of a user: digest HA1 values, never a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

/// Bytes to send, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub dst: SocketAddr,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Registered {
        user: String,
        contact: String,
    },
    Unregistered {
        user: String,
    },
    /// A request answered with an error by the core itself.
    Rejected {
        peer: SocketAddr,
        code: u16,
        reason: String,
    },
    /// Input dropped without an answer.
    Dropped {
        peer: SocketAddr,
        reason: String,
    },
    /// A conference was created or ended, or someone was invited, joined
    /// or left: a record for the archive.
    Conference(ConferenceEvent),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub requests: u64,
    pub responses: u64,
    pub unparsable: u64,
    pub rejected: u64,
    pub relayed: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub stray_responses: u64,
    /// IMs refused because the archive could not accept them (critical mode).
    pub archive_refused: u64,
}

/// A server transaction: remembers the last response so a retransmitted
/// request is answered again instead of processed twice.
pub(crate) struct ServerTxn {
    pub(crate) last_response: Option<Vec<u8>>,
    pub(crate) transport: Transport,
    pub(crate) peer: SocketAddr,
    pub(crate) expires_at: Instant,
}

/// A client transaction for a relayed request.
pub(crate) struct ClientTxn {
    pub(crate) server_key: String,
    pub(crate) origin_transport: Transport,
    pub(crate) origin: SocketAddr,
    pub(crate) request: SipMessage,
    pub(crate) transmit: Transmit,
    pub(crate) next_retransmit: Option<Instant>,
    pub(crate) interval: Duration,
    pub(crate) deadline: Instant,
}

pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) users: HashMap<String, UserCredentials>,
    pub(crate) local: HashMap<Transport, SocketAddr>,
    pub(crate) bindings: Bindings,
    nonces: Nonces,
    pub(crate) server_txns: HashMap<String, ServerTxn>,
    pub(crate) client_txns: HashMap<String, ClientTxn>,
    /// INVITE server transactions, keyed like `server_txns`.
    pub(crate) invite_servers: HashMap<String, InviteServer>,
    /// INVITE client transactions (one per branch of a fork), by branch.
    pub(crate) invite_clients: HashMap<String, InviteClient>,
    /// CANCELs the proxy sent downstream, by branch (that of the INVITE).
    pub(crate) cancel_clients: HashMap<String, CancelClient>,
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    /// PUBLISH, SUBSCRIBE and the NOTIFYs they cause (`core_presence.rs`).
    pub(crate) presence: PresenceAgent,
    /// Chat rooms: directory and post rate buckets (`rooms.rs`).
    pub(crate) rooms: Rooms,
    /// Ad hoc conferences and their participants (`conference.rs`).
    pub(crate) conferences: Conferences,
    /// Copies and NOTIFYs sent by rooms and focuses (`fanout.rs`).
    pub(crate) deliveries: Deliveries,
    rng: u64,
    next_housekeeping: Option<Instant>,
    pub stats: CoreStats,
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        let rng = config.seed | 1;
        let presence = PresenceAgent::new(
            PresenceConfig {
                domain: config.domain.clone(),
                min_expires: config.min_expires,
                max_expires: config.max_expires,
                default_expires: config.default_expires,
                allow: config.presence_allow.clone(),
            },
            config.seed.rotate_left(17),
        );
        Core {
            presence,
            rooms: Rooms::new(config.rooms.clone(), &config.domain, config.max_body_bytes),
            conferences: Conferences::new(config.conferences.clone(), &config.rooms),
            deliveries: Deliveries::default(),
            config,
            users: HashMap::new(),
            local: HashMap::new(),
            bindings: Bindings::default(),
            nonces: Nonces::default(),
            server_txns: HashMap::new(),
            client_txns: HashMap::new(),
            invite_servers: HashMap::new(),
            invite_clients: HashMap::new(),
            cancel_clients: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            next_housekeeping: None,
            stats: CoreStats::default(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Replaces the user directory (the IO layer reloads it from the catalog).
    pub fn set_users(&mut self, users: HashMap<String, UserCredentials>) {
        self.users = users;
    }

    /// Address this server is reachable at on `transport`, used in Via.
    pub fn set_local_addr(&mut self, transport: Transport, addr: SocketAddr) {
        self.local.insert(transport, addr);
    }

    pub fn registered_users(&self) -> usize {
        self.bindings.registered_users()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant `handle_timeout` must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txn = self
            .client_txns
            .values()
            .map(|t| t.next_retransmit.map_or(t.deadline, |r| r.min(t.deadline)))
            .min();
        let txn = [
            txn,
            self.next_invite_timer(),
            self.presence.poll_timeout(),
            self.rooms.poll_timeout(),
            self.deliveries.poll_timeout(),
            self.conferences.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        match (txn, self.next_housekeeping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64: deterministic per seed, good enough for unique tokens.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Our address on `transport`: what our Vias and Record-Routes name.
    pub(crate) fn local_addr(&self, transport: Transport) -> SocketAddr {
        self.local
            .get(&transport)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)))
    }

    /// A new Via of ours for a request leaving over `transport`: (branch, value).
    pub(crate) fn new_via(&mut self, transport: Transport) -> (String, String) {
        let branch = self.new_branch();
        let via = format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport_token(transport),
            self.local_addr(transport)
        );
        (branch, via)
    }

    /// A Via branch of ours: the magic cookie, then a prefix that tells
    /// our own Vias apart (loop detection), then a fresh token.
    pub(crate) fn new_branch(&mut self) -> String {
        format!("{BRANCH_PREFIX}{}", self.token())
    }

    /// A request that already carries one of our Vias has come back: relaying
    /// it again would loop (RFC 3261 16.3 step 4). The proxy never spirals a
    /// request through itself on purpose, so any such request is a loop.
    pub(crate) fn is_looped(&self, msg: &SipMessage) -> bool {
        msg.vias().iter().any(|via| {
            via.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
                && self.local.values().any(|addr| {
                    via.port.unwrap_or(5060) == addr.port()
                        && via.host.trim_matches(['[', ']']) == addr.ip().to_string()
                })
        })
    }

    pub(crate) fn token(&mut self) -> String {
        format!("{:016x}", self.next_u64())
    }

    fn schedule_housekeeping(&mut self, now: Instant) {
        if self.next_housekeeping.is_none() {
            self.next_housekeeping = Some(now + Duration::from_secs(1));
        }
    }

    /// One complete SIP message (a datagram, or one message framed off a
    /// stream) from `peer`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        bytes: &[u8],
    ) {
        self.schedule_housekeeping(now);
        let msg = match SipMessage::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.unparsable += 1;
                let code = e.response_code();
                match error_response_for_unparsed(bytes, code, default_reason(code)) {
                    Some(resp) => {
                        self.reject_event(peer, code, &e.to_string());
                        self.transmits.push_back(Transmit {
                            transport,
                            dst: peer,
                            bytes: resp,
                        });
                    }
                    None => self.events.push_back(Event::Dropped {
                        peer,
                        reason: format!("unparsable: {e}"),
                    }),
                }
                return;
            }
        };
        if msg.is_request() {
            self.stats.requests += 1;
            self.on_request(now, transport, peer, msg);
        } else {
            self.stats.responses += 1;
            self.on_response(now, msg);
        }
    }

    /// A request whose record the archive could not accept (critical mode:
    /// an IM is relayed only once it is archived). Answered 503 with
    /// `Retry-After` in its own server transaction, never relayed.
    pub fn handle_unarchived(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        bytes: &[u8],
    ) {
        self.schedule_housekeeping(now);
        let Ok(msg) = SipMessage::parse(bytes) else {
            // Not parsable: the normal path answers it (or drops it).
            self.handle_message(now, transport, peer, bytes);
            return;
        };
        if !msg.is_request() || msg.method() == Some("ACK") {
            self.handle_message(now, transport, peer, bytes);
            return;
        }
        self.stats.requests += 1;
        let Some(key) = self.open_server_txn(now, transport, peer, &msg) else {
            return;
        };
        self.stats.archive_refused += 1;
        self.reject_event(peer, 503, "archive cannot accept the record");
        let retry_after = self.config.archive_retry_after.as_secs().max(1).to_string();
        self.respond(
            &key,
            &msg,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), retry_after)],
        );
    }

    /// The non-INVITE server transaction of `msg`: its key when the
    /// request is new, `None` when it is a retransmission (answered again
    /// with the last response, if there is one yet).
    fn open_server_txn(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        msg: &SipMessage,
    ) -> Option<String> {
        let key = Self::server_key(msg);
        if let Some(txn) = self.server_txns.get(&key) {
            if let Some(resp) = txn.last_response.clone() {
                self.stats.retransmissions += 1;
                self.transmits.push_back(Transmit {
                    transport: txn.transport,
                    dst: txn.peer,
                    bytes: resp,
                });
            }
            return None;
        }
        self.server_txns.insert(
            key.clone(),
            ServerTxn {
                last_response: None,
                transport,
                peer,
                expires_at: now + self.config.t1 * 64,
            },
        );
        Some(key)
    }

    /// The Max-Forwards of a request to relay; one with none left is
    /// answered 483 in its transaction `key` (and `None` returned).
    pub(crate) fn hops_left(
        &mut self,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
    ) -> Option<u32> {
        let max_forwards = req.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.reject_event(peer, 483, "Max-Forwards exhausted");
            self.respond(key, req, 483, "Too Many Hops", &[]);
            return None;
        }
        Some(max_forwards)
    }

    /// Answers 423 with `Min-Expires` when `expires` is neither 0 nor at
    /// least the minimum; true when it did.
    pub(crate) fn refused_too_brief(
        &mut self,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        expires: u32,
        why: &str,
    ) -> bool {
        if expires == 0 || expires >= self.config.min_expires {
            return false;
        }
        self.reject_event(peer, 423, why);
        self.respond(
            key,
            req,
            423,
            "Interval Too Brief",
            &[("Min-Expires".into(), self.config.min_expires.to_string())],
        );
        true
    }

    pub(crate) fn reject_event(&mut self, peer: SocketAddr, code: u16, reason: &str) {
        self.stats.rejected += 1;
        self.events.push_back(Event::Rejected {
            peer,
            code,
            reason: reason.to_string(),
        });
    }

    pub(crate) fn server_key(msg: &SipMessage) -> String {
        Self::server_key_for(msg, msg.method().unwrap_or(""))
    }

    /// The key of the server transaction `msg` belongs to if it were a
    /// `method` request: a CANCEL and the ACK of a non-2xx answer carry the
    /// INVITE's branch and find its transaction with `"INVITE"`.
    pub(crate) fn server_key_for(msg: &SipMessage, method: &str) -> String {
        match msg.vias().first() {
            Some(v)
                if v.branch()
                    .is_some_and(|b| b.starts_with("z9hG4bK") && b.len() > 7) =>
            {
                format!(
                    "{}|{}:{:?}|{}",
                    v.branch().unwrap_or(""),
                    v.host,
                    v.port,
                    method
                )
            }
            // RFC 2543 peers: no usable branch, match on dialog identifiers.
            _ => format!(
                "2543|{}|{}|{method}|{}",
                msg.call_id().unwrap_or(""),
                msg.cseq().map_or(0, |(n, _)| n),
                msg.from()
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default()
            ),
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        msg: SipMessage,
    ) {
        let method = msg.method().unwrap_or("").to_string();
        let span =
            tracing::debug_span!("sip", call_id = msg.call_id().unwrap_or("-"), method = %method);
        let _enter = span.enter();
        if let Some(why) = self.federation_refusal(&msg, peer) {
            if method == "ACK" {
                self.events.push_back(Event::Dropped { peer, reason: why });
            } else {
                self.refuse_statelessly(transport, peer, &msg, &why);
            }
            return;
        }
        if method == "ACK" {
            self.on_ack(now, transport, peer, msg);
            return;
        }
        if method == "INVITE" {
            self.on_invite(now, transport, peer, msg);
            return;
        }
        let Some(key) = self.open_server_txn(now, transport, peer, &msg) else {
            return;
        };
        // Requests we relay are bound by Proxy-Require only; those we
        // answer ourselves by Require too.
        let for_peer = self.is_for_peer(&msg);
        let forwarded = for_peer
            || matches!(
                method.as_str(),
                "MESSAGE" | "BYE" | "UPDATE" | "PRACK" | "INFO" | "REFER" | "CANCEL" | "NOTIFY"
            );
        let checked = if forwarded {
            check_forwarded_request(&msg, SUPPORTED)
        } else {
            check_request(&msg, SUPPORTED)
        };
        if let Err(rej) = checked {
            let extra: Vec<(String, String)> = rej.headers.clone();
            self.reject_event(peer, rej.code, &rej.reason);
            self.respond(&key, &msg, rej.code, &rej.reason, &extra);
            return;
        }
        if self.is_looped(&msg) {
            self.reject_event(peer, 482, "request came back through this server");
            self.respond(&key, &msg, 482, "Loop Detected", &[]);
            return;
        }
        if msg.body().len() > self.config.max_body_bytes {
            self.reject_event(peer, 413, "body too large");
            self.respond(&key, &msg, 413, "Request Entity Too Large", &[]);
            return;
        }
        match method.as_str() {
            // A federated domain's user: whatever the method, the peer's
            // server answers it (REGISTER is for our own users only).
            m if for_peer && m != "REGISTER" => {
                self.on_proxied_non_invite(now, transport, peer, &key, msg)
            }
            _ if self.is_conference_request(&msg) => {
                self.on_conference_request(now, transport, peer, &key, msg)
            }
            "REGISTER" => self.on_register(now, transport, peer, &key, &msg),
            "MESSAGE" if self.is_room_post(&msg) => {
                self.on_room_post(now, transport, peer, &key, msg)
            }
            "MESSAGE" => self.on_message(now, transport, peer, &key, msg),
            "CANCEL" => self.on_cancel(now, peer, &key, &msg),
            "SUBSCRIBE" if event_is(&msg, CHAT_ROOM_EVENT) => {
                self.on_room_subscribe(now, transport, peer, &key, &msg)
            }
            "PUBLISH" | "SUBSCRIBE" => self.on_presence(now, transport, peer, &key, &msg, &method),
            // NOTIFY: of a subscription a subscriber of ours holds with a
            // peer's presence agent (sent back over the peer's flow).
            "BYE" | "UPDATE" | "PRACK" | "INFO" | "REFER" | "NOTIFY" => {
                self.on_proxied_non_invite(now, transport, peer, &key, msg)
            }
            "OPTIONS" => {
                let extra = [
                    ("Allow".to_string(), ALLOW.to_string()),
                    (
                        "Accept".to_string(),
                        "text/plain, application/sdp".to_string(),
                    ),
                    ("Supported".to_string(), SUPPORTED.join(", ")),
                ];
                self.respond(&key, &msg, 200, "OK", &extra);
            }
            _ => {
                self.reject_event(peer, 405, "method not allowed");
                self.respond(
                    &key,
                    &msg,
                    405,
                    "Method Not Allowed",
                    &[("Allow".into(), ALLOW.into())],
                );
            }
        }
    }

    /// Answers `req` in its server transaction.
    pub(crate) fn respond(
        &mut self,
        key: &str,
        req: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(String, String)],
    ) {
        self.respond_with_tag(key, req, code, reason, extra, None);
    }

    /// [`Self::respond`] with the To-tag given (a dialog we keep, such as
    /// a subscription), else a fresh one.
    pub(crate) fn respond_with_tag(
        &mut self,
        key: &str,
        req: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(String, String)],
        tag: Option<String>,
    ) {
        let tag = tag.unwrap_or_else(|| self.token());
        let mut b = MessageBuilder::response_to(req, code, reason);
        if code > 100 {
            b.add_to_tag(&tag);
        }
        b.header("Server", SERVER_HEADER);
        for (name, value) in extra {
            b.header(name, value);
        }
        let bytes = b.build();
        if let Some(txn) = self.server_txns.get_mut(key) {
            txn.last_response = Some(bytes.clone());
            self.transmits.push_back(Transmit {
                transport: txn.transport,
                dst: txn.peer,
                bytes,
            });
        }
    }

    /// A 401 with one digest challenge per configured algorithm, in the
    /// configured order, under one nonce (RFC 8760).
    fn challenge(&mut self, now: Instant, key: &str, req: &SipMessage, stale: bool) {
        let nonce = format!("{}{}", self.token(), self.token());
        self.nonces.issue(nonce.clone(), now);
        let challenges: Vec<(String, String)> = self
            .config
            .digest_algorithms
            .iter()
            .map(|&algorithm| {
                let ch = Challenge {
                    realm: self.config.domain.clone(),
                    nonce: nonce.clone(),
                    algorithm,
                    qop: Some("auth".into()),
                    opaque: None,
                    stale,
                };
                ("WWW-Authenticate".to_string(), ch.to_header_value())
            })
            .collect();
        self.respond(key, req, 401, "Unauthorized", &challenges);
    }

    fn on_register(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
    ) {
        let Some(user) = req
            .to()
            .and_then(|to| SipUri::parse(&to.uri).ok())
            .and_then(|u| {
                (u.scheme.eq_ignore_ascii_case("sip") || u.scheme.eq_ignore_ascii_case("sips"))
                    .then_some(u.user)?
            })
        else {
            self.reject_event(peer, 400, "REGISTER To is not a SIP address of record");
            self.respond(key, req, 400, "Bad Request", &[]);
            return;
        };
        let Some(creds) = self.users.get(&user).cloned() else {
            self.reject_event(peer, 404, "unknown user");
            self.respond(key, req, 404, "Not Found", &[]);
            return;
        };
        let Some(auth) = req.header("Authorization") else {
            self.challenge(now, key, req, false);
            return;
        };
        let c = match Credentials::parse(auth) {
            Ok(c) => c,
            // Unknown scheme or garbled credentials: challenge afresh.
            Err(_) => {
                self.challenge(now, key, req, false);
                return;
            }
        };
        if c.username != user {
            self.reject_event(peer, 403, "credentials for another user");
            self.respond(key, req, 403, "Forbidden", &[]);
            return;
        }
        match self.nonces.check(&c.nonce, now, self.config.nonce_ttl) {
            NonceState::Valid => {}
            NonceState::Stale => {
                self.challenge(now, key, req, true);
                return;
            }
            NonceState::Unknown => {
                self.challenge(now, key, req, false);
                return;
            }
        }
        let ha1 = match c.algorithm {
            Algorithm::Md5 => &creds.ha1_md5,
            Algorithm::Sha256 => &creds.ha1_sha256,
        };
        if !digest::verify(ha1, "REGISTER", &c) {
            self.reject_event(peer, 403, "wrong password");
            self.respond(key, req, 403, "Forbidden", &[]);
            return;
        }
        self.update_bindings(now, transport, peer, key, req, &user);
    }

    fn update_bindings(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        user: &str,
    ) {
        let header_expires = req.expires();
        let contacts = req.contacts();
        if contacts.iter().any(|c| c.star) {
            if contacts.len() != 1 || header_expires != Some(0) {
                self.reject_event(
                    peer,
                    400,
                    "'*' contact needs Expires: 0 and no other contact",
                );
                self.respond(key, req, 400, "Bad Request", &[]);
                return;
            }
            self.bindings.remove_all(user);
            self.events.push_back(Event::Unregistered {
                user: user.to_string(),
            });
            self.respond(key, req, 200, "OK", &[]);
            return;
        }
        for c in contacts.iter().filter(|c| c.addr.is_some()) {
            let expires = c
                .expires()
                .or(header_expires)
                .unwrap_or(self.config.default_expires);
            if self.refused_too_brief(peer, key, req, expires, "registration interval too brief") {
                return;
            }
        }
        for c in contacts {
            let Some(addr) = c.addr.clone() else { continue };
            let expires = c
                .expires()
                .or(header_expires)
                .unwrap_or(self.config.default_expires)
                .min(self.config.max_expires);
            if expires == 0 {
                self.bindings.remove(user, &addr.uri);
            } else {
                self.bindings.upsert(
                    user,
                    Binding {
                        contact: addr.uri.clone(),
                        transport,
                        flow: peer,
                        expires_at: now + Duration::from_secs(u64::from(expires)),
                        registered_at: now,
                    },
                );
                self.events.push_back(Event::Registered {
                    user: user.to_string(),
                    contact: addr.uri.clone(),
                });
                tracing::info!(user, contact = %addr.uri, expires, "registered");
            }
        }
        let current: Vec<(String, String)> = self
            .bindings
            .lookup(user, now)
            .into_iter()
            .map(|b| {
                let left = b.expires_at.saturating_duration_since(now).as_secs();
                (
                    "Contact".to_string(),
                    format!("<{}>;expires={left}", b.contact),
                )
            })
            .collect();
        if current.is_empty() {
            self.events.push_back(Event::Unregistered {
                user: user.to_string(),
            });
        }
        self.respond(key, req, 200, "OK", &current);
    }

    fn on_message(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: SipMessage,
    ) {
        let target = request_uri_user(&req);
        let Some(target) = target.filter(|u| self.users.contains_key(u)) else {
            self.reject_event(peer, 404, "unknown recipient");
            self.respond(key, &req, 404, "Not Found", &[]);
            return;
        };
        let Some(max_forwards) = self.hops_left(peer, key, &req) else {
            return;
        };
        let bindings = self.bindings.lookup(&target, now);
        if bindings.is_empty() {
            self.reject_event(peer, 480, "recipient not registered");
            self.respond(key, &req, 480, "Temporarily Unavailable", &[]);
            return;
        }
        // A sips: Request-URI asks for TLS on every hop (RFC 3261 26.2.2,
        // RFC 5630), and a contact registered as sips: or ;transport=tls
        // asks to be reached over TLS: such a request goes only to a flow
        // that is itself TLS. Without one the user is registered but not
        // reachable securely right now: 480, as for a user not registered
        // (416 would claim we do not support sips, 503 that we are
        // overloaded, and the user may come back over TLS).
        let secure = req
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .is_some_and(|u| u.scheme == "sips");
        let Some(binding) = bindings
            .iter()
            .find(|b| b.transport == Transport::Tls || !(secure || requires_tls(&b.contact)))
            .map(|b| (*b).clone())
        else {
            self.reject_event(peer, 480, "recipient has no TLS flow for a secure request");
            self.respond(
                key,
                &req,
                480,
                "Temporarily Unavailable",
                &[(
                    "Warning".into(),
                    format!(
                        "399 {} \"no TLS connection to the recipient\"",
                        self.config.domain
                    ),
                )],
            );
            return;
        };
        let (branch, via) = self.new_via(binding.transport);
        let mut b = MessageBuilder::from_message(&req);
        b.set_request_uri(&binding.contact);
        b.prepend_header("Via", &via);
        b.set_header("Max-Forwards", &(max_forwards - 1).to_string());
        let transmit = Transmit {
            transport: binding.transport,
            dst: binding.flow,
            bytes: b.build(),
        };
        self.start_client_txn(now, branch, key, transport, peer, req, transmit);
    }

    /// Sends `transmit` (a relayed non-INVITE request whose top Via carries
    /// `branch`) in a new client transaction: retransmitted on UDP (Timer
    /// E), its final response relayed to the server transaction `key`,
    /// 408 there after Timer F.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_client_txn(
        &mut self,
        now: Instant,
        branch: String,
        key: &str,
        transport: Transport,
        peer: SocketAddr,
        req: SipMessage,
        transmit: Transmit,
    ) {
        let reliable = transmit.transport != Transport::Udp;
        self.client_txns.insert(
            branch,
            ClientTxn {
                server_key: key.to_string(),
                origin_transport: transport,
                origin: peer,
                request: req,
                transmit: transmit.clone(),
                next_retransmit: (!reliable).then(|| now + self.config.t1),
                interval: self.config.t1,
                deadline: now + self.config.t1 * 64,
            },
        );
        self.stats.relayed += 1;
        self.transmits.push_back(transmit);
    }

    fn on_response(&mut self, now: Instant, msg: SipMessage) {
        let Some(branch) = msg
            .vias()
            .first()
            .and_then(|v| v.branch().map(str::to_string))
        else {
            self.stats.stray_responses += 1;
            return;
        };
        let Some(status) = msg.status() else { return };
        if self.notify_response(now, &msg) || self.delivery_response(&msg) {
            return;
        }
        match msg.cseq().map(|(_, m)| m) {
            Some("INVITE") => {
                self.on_invite_response(now, &branch, status, msg);
                return;
            }
            Some("CANCEL") if self.cancel_clients.contains_key(&branch) => {
                // The callee's answer to our CANCEL ends that transaction
                // here: the caller's CANCEL was answered by us already.
                if status >= 200 {
                    self.cancel_clients.remove(&branch);
                }
                return;
            }
            _ => {}
        }
        if !self.client_txns.contains_key(&branch) {
            self.stats.stray_responses += 1;
            return;
        }
        if status < 200 {
            // Proceeding: keep waiting, retransmit at T2 (RFC 3261 17.1.2.2).
            if let Some(txn) = self.client_txns.get_mut(&branch) {
                txn.interval = self.config.t2;
            }
            return;
        }
        let Some(txn) = self.client_txns.remove(&branch) else {
            return;
        };
        let mut b = MessageBuilder::from_message(&msg);
        b.pop_first_value("Via");
        let bytes = b.build();
        if let Some(st) = self.server_txns.get_mut(&txn.server_key) {
            st.last_response = Some(bytes.clone());
            // Timer J: absorb retransmissions for 64*T1 after the final response.
            st.expires_at = st.expires_at.max(now + self.config.t1 * 64);
        }
        self.transmits.push_back(Transmit {
            transport: txn.origin_transport,
            dst: txn.origin,
            bytes,
        });
    }

    /// The IO layer could not deliver to `dst` over `transport` (no
    /// connection to reuse, or it closed). Relayed requests waiting on that
    /// flow are answered 480 now rather than 408 after Timer F: the
    /// recipient is registered but not reachable this moment. RFC 3261
    /// 17.1.4 treats a transport error as a 503, which a proxy must not
    /// pass upstream as such (16.7).
    pub fn handle_flow_failed(&mut self, now: Instant, transport: Transport, dst: SocketAddr) {
        let failed: Vec<String> = self
            .client_txns
            .iter()
            .filter(|(_, t)| t.transmit.transport == transport && t.transmit.dst == dst)
            .map(|(branch, _)| branch.clone())
            .collect();
        for branch in failed {
            if let Some(txn) = self.client_txns.remove(&branch) {
                self.reject_event(txn.origin, 480, "recipient's connection is gone");
                self.respond(
                    &txn.server_key,
                    &txn.request,
                    480,
                    "Temporarily Unavailable",
                    &[],
                );
                if let Some(st) = self.server_txns.get_mut(&txn.server_key) {
                    st.expires_at = st.expires_at.max(now + self.config.t1 * 64);
                }
            }
        }
        self.invite_flow_failed(now, transport, dst);
        self.delivery_flow_failed(transport, dst);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.invite_timeouts(now);
        self.presence_timeouts(now);
        self.room_timeouts(now);
        self.delivery_timeouts(now);
        self.conference_timeouts(now);
        let mut timed_out = Vec::new();
        let mut retransmit = Vec::new();
        for (branch, txn) in &mut self.client_txns {
            if now >= txn.deadline {
                timed_out.push(branch.clone());
            } else if let Some(at) = txn.next_retransmit.filter(|at| now >= *at) {
                let _ = at;
                retransmit.push(txn.transmit.clone());
                txn.interval = (txn.interval * 2).min(self.config.t2);
                txn.next_retransmit = Some(now + txn.interval);
            }
        }
        self.stats.retransmissions += retransmit.len() as u64;
        self.transmits.extend(retransmit);
        for branch in timed_out {
            if let Some(txn) = self.client_txns.remove(&branch) {
                self.stats.timeouts += 1;
                self.reject_event(txn.origin, 408, "no answer from recipient");
                self.respond(&txn.server_key, &txn.request, 408, "Request Timeout", &[]);
                if let Some(st) = self.server_txns.get_mut(&txn.server_key) {
                    st.expires_at = st.expires_at.max(now + self.config.t1 * 64);
                }
            }
        }
        if self.next_housekeeping.is_some_and(|t| now >= t) {
            self.next_housekeeping = None;
            self.server_txns.retain(|_, t| t.expires_at > now);
            self.nonces.expire(now, self.config.nonce_ttl);
            for user in self.bindings.expire(now) {
                self.events.push_back(Event::Unregistered { user });
            }
            if !self.server_txns.is_empty()
                || !self.client_txns.is_empty()
                || self.bindings.registered_users() > 0
            {
                self.schedule_housekeeping(now);
            }
        }
    }
}

/// The user part of a request's Request-URI: the served user, room or
/// conference focus it is addressed to.
pub(crate) fn request_uri_user(req: &SipMessage) -> Option<String> {
    req.request_uri()
        .and_then(|u| SipUri::parse(u).ok())
        .and_then(|u| u.user)
}

/// Whether a contact asks to be reached over TLS only.
pub(crate) fn requires_tls(contact: &str) -> bool {
    SipUri::parse(contact).is_ok_and(|u| {
        u.scheme == "sips"
            || u.param("transport")
                .is_some_and(|t| t.eq_ignore_ascii_case("tls"))
    })
}

pub fn transport_token(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
        Transport::Sctp => "SCTP",
    }
}
