//! The stateful proxy of the core: INVITE server and client transactions
//! (RFC 3261 17.1.1, 17.2.1, with the Accepted state of RFC 6026), forking
//! to every binding of the callee, best-response selection, CANCEL, and
//! Record-Route / loose routing of in-dialog requests (RFC 3261 16).
//!
//! Media never passes through here and the SDP is never touched: bodies are
//! relayed as received, so the archive sees the offer and answer the user
//! agents exchanged.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage, SipUri, check_forwarded_request, default_reason};

use crate::core::{Core, Event, SERVER_HEADER, SUPPORTED, Transmit, requires_tls, transport_token};

/// Timer D for UDP (RFC 3261 17.1.1.2: at least 32 s): how long the
/// client transaction answers retransmitted non-2xx finals with the ACK.
const TIMER_D_UDP: Duration = Duration::from_secs(32);

/// An INVITE server transaction and the proxy context of its request.
pub(crate) struct InviteServer {
    transport: Transport,
    peer: SocketAddr,
    request: SipMessage,
    /// To tag of the responses the proxy makes itself.
    to_tag: String,
    /// Sent again when the INVITE is retransmitted: the latest provisional,
    /// then the non-2xx final. `None` after a 2xx: retransmissions are
    /// absorbed (RFC 6026), the callee retransmits its 2xx end to end.
    last_response: Option<Vec<u8>>,
    final_code: Option<u16>,
    /// Timer G (non-2xx final over UDP until the ACK).
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer H, then I (after the ACK), or the end of the Accepted state.
    ends_at: Option<Instant>,
    /// Timer C: no final response by then, the call is given up on.
    no_answer_at: Option<Instant>,
    /// Branches still without a final response.
    pending: BTreeSet<String>,
    /// Best final response so far: its code and the bytes to relay (top
    /// Via removed), or `None` for an outcome the proxy answers itself.
    best: Option<(u16, Option<Vec<u8>>)>,
    cancelled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Calling,
    Proceeding,
    Completed,
    /// A 2xx arrived (RFC 6026): retransmitted 2xx are still relayed.
    Accepted,
}

/// One branch of a (possibly forked) INVITE.
pub(crate) struct InviteClient {
    server_key: String,
    origin_transport: Transport,
    origin: SocketAddr,
    /// The INVITE as sent: CANCEL and ACK are built from it.
    request: SipMessage,
    transmit: Transmit,
    state: ClientState,
    /// Timer A.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B while calling, 64·T1 after a CANCEL, Timer D once completed,
    /// the end of the Accepted state after a 2xx.
    deadline: Option<Instant>,
    /// A CANCEL is wanted but may only be sent once a provisional response
    /// arrived (RFC 3261 9.1).
    cancel_wanted: bool,
    cancel_sent: bool,
    /// The ACK sent for the non-2xx final, repeated when it is retransmitted.
    ack: Option<Vec<u8>>,
}

/// A CANCEL the proxy sent downstream: retransmitted on UDP until answered.
pub(crate) struct CancelClient {
    transmit: Transmit,
    retransmit_at: Option<Instant>,
    interval: Duration,
    deadline: Instant,
}

/// Where a request goes next.
#[derive(Debug, Clone, Copy)]
struct Hop {
    transport: Transport,
    dst: SocketAddr,
}

struct Target {
    /// New Request-URI (a binding's contact), or `None` to keep it.
    request_uri: Option<String>,
    hop: Hop,
}

struct Routing {
    /// How many Route entries at the top name this proxy (removed).
    own_routes: usize,
    targets: Vec<Target>,
}

/// Why a request cannot be routed, and the answer.
struct Refusal {
    code: u16,
    reason: &'static str,
    extra: Vec<(String, String)>,
    why: &'static str,
}

impl Refusal {
    fn new(code: u16, reason: &'static str, why: &'static str) -> Refusal {
        Refusal {
            code,
            reason,
            extra: Vec::new(),
            why,
        }
    }
}

/// Order of final responses when every branch failed (RFC 3261 16.7 step
/// 6): 6xx first, then the lowest class. Within a class an answer of the
/// callee (486, 403...) beats what the path made up (timeout, unreachable,
/// cancelled, overloaded): it says more about the call.
fn rank(code: u16) -> (u8, u8) {
    let class = match code / 100 {
        6 => 0,
        3 => 1,
        4 => 2,
        5 => 3,
        _ => 4,
    };
    (class, u8::from(matches!(code, 408 | 480 | 487 | 503)))
}

pub(crate) fn effective_port(uri: &SipUri) -> u16 {
    uri.port.unwrap_or(
        if uri.scheme == "sips"
            || uri
                .param("transport")
                .is_some_and(|t| t.eq_ignore_ascii_case("tls"))
        {
            5061
        } else {
            5060
        },
    )
}

fn strip_top_via(msg: &SipMessage) -> Vec<u8> {
    let mut b = MessageBuilder::from_message(msg);
    b.pop_first_value("Via");
    b.build()
}

impl Core {
    // ------------------------------------------------------------ routing

    /// Whether `uri` names this server: its domain, or one of its listening
    /// addresses (a Record-Route we inserted, a Request-URI sent to us).
    fn is_local_uri(&self, uri: &SipUri) -> bool {
        if uri.host.eq_ignore_ascii_case(&self.config.domain) {
            return true;
        }
        let Ok(ip) = uri.host_unbracketed().parse::<IpAddr>() else {
            return false;
        };
        let port = effective_port(uri);
        self.local
            .values()
            .any(|a| a.ip() == ip && a.port() == port)
    }

    /// The Record-Route this proxy inserts for its listener on `transport`.
    fn record_route(&self, transport: Transport) -> String {
        let local = self.local_addr(transport);
        format!(
            "<sip:{local};transport={};lr>",
            transport_token(transport).to_ascii_lowercase()
        )
    }

    /// Where a URI (a Route entry, an in-dialog Request-URI) is reached: the
    /// flow of a binding registered with that contact (connection reuse,
    /// NAT), else an IP literal over the transport the URI asks for. Host
    /// names are not resolved: the core does no DNS.
    fn resolve(&self, now: Instant, uri: &SipUri) -> Option<Hop> {
        if let Some(peer) = self.federation_peer(uri) {
            return Some(Hop {
                transport: peer.transport,
                dst: peer.addr,
            });
        }
        let secure = requires_tls(&uri.to_string());
        let port = effective_port(uri);
        let bound = self.bindings.all_live(now).find(|b| {
            SipUri::parse(&b.contact)
                .is_ok_and(|c| c.host.eq_ignore_ascii_case(&uri.host) && effective_port(&c) == port)
                && (!secure || b.transport == Transport::Tls)
        });
        if let Some(b) = bound {
            return Some(Hop {
                transport: b.transport,
                dst: b.flow,
            });
        }
        let ip: IpAddr = uri.host_unbracketed().parse().ok()?;
        let transport = match uri.param("transport").map(str::to_ascii_lowercase) {
            _ if secure => Transport::Tls,
            Some(t) if t == "tcp" => Transport::Tcp,
            _ => Transport::Udp,
        };
        Some(Hop {
            transport,
            dst: SocketAddr::new(ip, port),
        })
    }

    /// RFC 3261 16.4-16.6: our own Route entries are removed; a remaining
    /// Route is the next hop (loose routing); otherwise the Request-URI
    /// decides: a URI of this server goes to the bindings of its user (all
    /// of them for an initial INVITE: forking), a contact URI of an
    /// in-dialog request to that contact.
    ///
    /// Only requests of a dialog this proxy record-routed (they carry our
    /// Route) go to a foreign Route or an IP literal; any other request
    /// reaches registered users only, else the server would be an open
    /// relay.
    /// What relaying `msg` takes: its Max-Forwards, whether it starts a
    /// dialog, and its routing; or the refusal to answer it with (logged).
    fn plan_relay(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        msg: &SipMessage,
    ) -> Result<(u32, bool, Routing), Refusal> {
        let max_forwards = msg.max_forwards().unwrap_or(70);
        let initial = msg.to().and_then(|t| t.tag()).is_none();
        let planned = if max_forwards == 0 {
            Err(Refusal::new(483, "Too Many Hops", "Max-Forwards exhausted"))
        } else {
            self.route(now, msg, initial)
        };
        match planned {
            Ok(routing) => Ok((max_forwards, initial, routing)),
            Err(r) => {
                self.reject_event(peer, r.code, r.why);
                Err(r)
            }
        }
    }

    fn route(&self, now: Instant, msg: &SipMessage, initial: bool) -> Result<Routing, Refusal> {
        let routes = msg.name_addrs("Route");
        let own_routes = routes
            .iter()
            .take_while(|r| r.sip_uri().is_some_and(|u| self.is_local_uri(&u)))
            .count();
        let ours = !initial && own_routes > 0;
        if let Some(next) = routes.get(own_routes) {
            if !ours {
                return Err(Refusal::new(
                    403,
                    "Forbidden",
                    "request routed to another server outside our dialogs",
                ));
            }
            let hop = next
                .sip_uri()
                .and_then(|u| self.resolve(now, &u))
                .ok_or_else(|| {
                    Refusal::new(480, "Temporarily Unavailable", "next route unresolvable")
                })?;
            return Ok(Routing {
                own_routes,
                targets: vec![Target {
                    request_uri: None,
                    hop,
                }],
            });
        }
        let Some(ruri) = msg.request_uri().and_then(|u| SipUri::parse(u).ok()) else {
            return Err(Refusal::new(400, "Bad Request", "malformed Request-URI"));
        };
        if let Some(peer) = self.federation_peer(&ruri) {
            if !ours && !self.is_from_our_domain(msg) {
                return Err(Refusal::new(
                    403,
                    "Forbidden",
                    "request between two foreign domains",
                ));
            }
            return Ok(Routing {
                own_routes,
                targets: vec![Target {
                    request_uri: None,
                    hop: Hop {
                        transport: peer.transport,
                        dst: peer.addr,
                    },
                }],
            });
        }
        if !self.is_local_uri(&ruri) {
            let bound = self.bindings.all_live(now).any(|b| {
                SipUri::parse(&b.contact).is_ok_and(|c| {
                    c.host.eq_ignore_ascii_case(&ruri.host)
                        && effective_port(&c) == effective_port(&ruri)
                })
            });
            if (bound || ours)
                && let Some(hop) = self.resolve(now, &ruri)
            {
                return Ok(Routing {
                    own_routes,
                    targets: vec![Target {
                        request_uri: None,
                        hop,
                    }],
                });
            }
        }
        // Location service: the user part names a user of this server
        // (whatever the host, as for MESSAGE).
        let Some(user) = ruri.user.filter(|u| self.users.contains_key(u)) else {
            return Err(Refusal::new(404, "Not Found", "unknown callee"));
        };
        let bindings = self.bindings.lookup(&user, now);
        if bindings.is_empty() {
            return Err(Refusal::new(
                480,
                "Temporarily Unavailable",
                "callee not registered",
            ));
        }
        // As for MESSAGE: sips or a contact asking for TLS only over TLS.
        let secure = ruri.scheme == "sips";
        let targets: Vec<Target> = bindings
            .iter()
            .filter(|b| b.transport == Transport::Tls || !(secure || requires_tls(&b.contact)))
            .map(|b| Target {
                request_uri: Some(b.contact.clone()),
                hop: Hop {
                    transport: b.transport,
                    dst: b.flow,
                },
            })
            .collect();
        if targets.is_empty() {
            let mut r = Refusal::new(
                480,
                "Temporarily Unavailable",
                "callee has no TLS flow for a secure request",
            );
            r.extra.push((
                "Warning".into(),
                format!(
                    "399 {} \"no TLS connection to the recipient\"",
                    self.config.domain
                ),
            ));
            return Err(r);
        }
        Ok(Routing {
            own_routes,
            targets,
        })
    }

    /// The request as forwarded to `target`: own Route entries removed,
    /// Request-URI retargeted, Max-Forwards decremented, Record-Route added
    /// for a dialog-creating request (`record_route_from`: the transport
    /// it arrived on) and our Via on top. When the two sides use different
    /// transports the proxy records two routes (RFC 5658), the top one
    /// facing the callee, so each side reaches it over its own transport.
    fn forward(
        &mut self,
        msg: &SipMessage,
        own_routes: usize,
        target: &Target,
        max_forwards: u32,
        record_route_from: Option<Transport>,
    ) -> (String, Transmit) {
        let hop = target.hop;
        let (branch, via) = self.new_via(hop.transport);
        let mut b = MessageBuilder::from_message(msg);
        for _ in 0..own_routes {
            b.pop_first_value("Route");
        }
        if let Some(uri) = &target.request_uri {
            b.set_request_uri(uri);
        }
        b.set_header("Max-Forwards", &max_forwards.saturating_sub(1).to_string());
        if let Some(inbound) = record_route_from {
            b.prepend_header("Record-Route", &self.record_route(inbound));
            if inbound != hop.transport {
                b.prepend_header("Record-Route", &self.record_route(hop.transport));
            }
        }
        b.prepend_header("Via", &via);
        (
            branch,
            Transmit {
                transport: hop.transport,
                dst: hop.dst,
                bytes: b.build(),
            },
        )
    }

    // ------------------------------------------------------ server side

    pub(crate) fn on_invite(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        msg: SipMessage,
    ) {
        let key = Self::server_key(&msg);
        if let Some(s) = self.invite_servers.get(&key) {
            // A retransmission: the last response again, or absorbed.
            if let Some(resp) = s.last_response.clone() {
                self.stats.retransmissions += 1;
                self.transmits.push_back(Transmit {
                    transport: s.transport,
                    dst: s.peer,
                    bytes: resp,
                });
            }
            return;
        }
        let to_tag = self.token();
        self.invite_servers.insert(
            key.clone(),
            InviteServer {
                transport,
                peer,
                request: msg.clone(),
                to_tag,
                last_response: None,
                final_code: None,
                retransmit_at: None,
                interval: self.config.t1,
                ends_at: None,
                no_answer_at: None,
                pending: BTreeSet::new(),
                best: None,
                cancelled: false,
            },
        );
        if let Err(rej) = check_forwarded_request(&msg, SUPPORTED) {
            self.reject_event(peer, rej.code, &rej.reason);
            self.invite_reply(now, &key, rej.code, &rej.reason, &rej.headers);
            return;
        }
        if msg.body().len() > self.config.max_body_bytes {
            self.reject_event(peer, 413, "body too large");
            self.invite_reply(now, &key, 413, "Request Entity Too Large", &[]);
            return;
        }
        if self.is_looped(&msg) {
            self.reject_event(peer, 482, "request came back through this server");
            self.invite_reply(now, &key, 482, "Loop Detected", &[]);
            return;
        }
        let (max_forwards, initial, routing) = match self.plan_relay(now, peer, &msg) {
            Ok(plan) => plan,
            Err(r) => {
                self.invite_reply(now, &key, r.code, r.reason, &r.extra);
                return;
            }
        };
        // 100 Trying at once (RFC 3261 16.2): stops the caller's Timer A
        // while the callee takes its time.
        self.invite_reply(now, &key, 100, "Trying", &[]);
        if let Some(s) = self.invite_servers.get_mut(&key) {
            s.no_answer_at = Some(now + self.config.no_answer_timeout);
        }
        // A re-INVITE follows its dialog's single route; only an initial
        // INVITE forks and is record-routed.
        let count = if initial { routing.targets.len() } else { 1 };
        for target in routing.targets.iter().take(count) {
            let (branch, transmit) = self.forward(
                &msg,
                routing.own_routes,
                target,
                max_forwards,
                initial.then_some(transport),
            );
            self.start_invite_branch(now, &key, branch, transmit);
        }
    }

    fn start_invite_branch(&mut self, now: Instant, key: &str, branch: String, transmit: Transmit) {
        let Ok(request) = SipMessage::parse(&transmit.bytes) else {
            return;
        };
        let Some(s) = self.invite_servers.get_mut(key) else {
            return;
        };
        s.pending.insert(branch.clone());
        let udp = transmit.transport == Transport::Udp;
        self.invite_clients.insert(
            branch,
            InviteClient {
                server_key: key.to_string(),
                origin_transport: s.transport,
                origin: s.peer,
                request,
                transmit: transmit.clone(),
                state: ClientState::Calling,
                retransmit_at: udp.then(|| now + self.config.t1),
                interval: self.config.t1,
                deadline: Some(now + self.config.t1 * 64),
                cancel_wanted: false,
                cancel_sent: false,
                ack: None,
            },
        );
        self.stats.relayed += 1;
        self.transmits.push_back(transmit);
    }

    /// A response the proxy makes itself in the INVITE server transaction.
    fn invite_reply(
        &mut self,
        now: Instant,
        key: &str,
        code: u16,
        reason: &str,
        extra: &[(String, String)],
    ) {
        let Some(s) = self.invite_servers.get_mut(key) else {
            return;
        };
        let mut b = MessageBuilder::response_to(&s.request, code, reason);
        if code > 100 {
            b.add_to_tag(&s.to_tag);
        }
        b.header("Server", SERVER_HEADER);
        for (name, value) in extra {
            b.header(name, value);
        }
        let bytes = b.build();
        if code < 200 {
            s.last_response = Some(bytes.clone());
            self.transmits.push_back(Transmit {
                transport: s.transport,
                dst: s.peer,
                bytes,
            });
        } else {
            self.send_invite_final(now, key, code, bytes);
        }
    }

    /// The one final response of the server transaction. A non-2xx is
    /// retransmitted over UDP (Timer G, T1 doubling to T2) until the ACK or
    /// Timer H; after a 2xx the transaction only absorbs retransmitted
    /// INVITEs for 64·T1 (RFC 6026 Accepted).
    fn send_invite_final(&mut self, now: Instant, key: &str, code: u16, bytes: Vec<u8>) {
        let t1 = self.config.t1;
        let Some(s) = self.invite_servers.get_mut(key) else {
            return;
        };
        if s.final_code.is_some() {
            return;
        }
        s.final_code = Some(code);
        s.no_answer_at = None;
        s.ends_at = Some(now + t1 * 64);
        if code >= 300 {
            s.last_response = Some(bytes.clone());
            if s.transport == Transport::Udp {
                s.retransmit_at = Some(now + t1);
                s.interval = t1;
            }
        } else {
            s.last_response = None;
        }
        self.transmits.push_back(Transmit {
            transport: s.transport,
            dst: s.peer,
            bytes,
        });
    }

    /// ACK: the one for our non-2xx answer ends at this hop (Timer I
    /// starts); the one for a 2xx is end to end and forwarded statelessly
    /// along the dialog's route.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        _transport: Transport,
        peer: SocketAddr,
        msg: SipMessage,
    ) {
        let key = Self::server_key_for(&msg, "INVITE");
        if let Some(s) = self.invite_servers.get_mut(&key)
            && s.final_code.is_some_and(|c| c >= 300)
        {
            s.retransmit_at = None;
            let linger = if s.transport == Transport::Udp {
                self.config.t4
            } else {
                Duration::ZERO
            };
            s.ends_at = Some(now + linger);
            return;
        }
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if check_forwarded_request(&msg, SUPPORTED).is_err() || max_forwards == 0 {
            self.events.push_back(Event::Dropped {
                peer,
                reason: "ACK that cannot be forwarded".into(),
            });
            return;
        }
        match self.route(now, &msg, false) {
            Ok(routing) => {
                if let Some(target) = routing.targets.first() {
                    let (_, transmit) =
                        self.forward(&msg, routing.own_routes, target, max_forwards, None);
                    self.stats.relayed += 1;
                    self.transmits.push_back(transmit);
                }
            }
            Err(r) => self.events.push_back(Event::Dropped {
                peer,
                reason: format!("ACK not routable: {}", r.why),
            }),
        }
    }

    /// CANCEL of the caller (RFC 3261 16.10): answered 200 in its own
    /// transaction, every pending branch is cancelled, and the INVITE is
    /// answered 487 once the branches are done.
    pub(crate) fn on_cancel(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &str,
        msg: &SipMessage,
    ) {
        let invite_key = Self::server_key_for(msg, "INVITE");
        let Some(s) = self.invite_servers.get_mut(&invite_key) else {
            self.reject_event(peer, 481, "CANCEL matches no INVITE");
            self.respond(key, msg, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        let pending = s.final_code.is_none() && !s.cancelled;
        if pending {
            s.cancelled = true;
        }
        let nothing_to_wait_for = s.pending.is_empty();
        self.respond(key, msg, 200, "OK", &[]);
        if pending {
            self.cancel_branches(now, &invite_key, None);
            if nothing_to_wait_for {
                self.finish_invite(now, &invite_key);
            }
        }
    }

    /// BYE, UPDATE, PRACK, INFO, REFER: relayed in a non-INVITE client
    /// transaction along the dialog's route.
    pub(crate) fn on_proxied_non_invite(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        msg: SipMessage,
    ) {
        let (max_forwards, _, routing) = match self.plan_relay(now, peer, &msg) {
            Ok(plan) => plan,
            Err(r) => {
                self.respond(key, &msg, r.code, r.reason, &r.extra);
                return;
            }
        };
        let Some(target) = routing.targets.first() else {
            return;
        };
        let (branch, transmit) = self.forward(&msg, routing.own_routes, target, max_forwards, None);
        self.start_client_txn(now, branch, key, transport, peer, msg, transmit);
    }

    // ------------------------------------------------------ client side

    pub(crate) fn on_invite_response(
        &mut self,
        now: Instant,
        branch: &str,
        status: u16,
        msg: SipMessage,
    ) {
        let t1 = self.config.t1;
        let Some(c) = self.invite_clients.get_mut(branch) else {
            self.stats.stray_responses += 1;
            return;
        };
        let key = c.server_key.clone();
        match status {
            100..=199 => {
                if c.state == ClientState::Calling {
                    c.state = ClientState::Proceeding;
                    c.retransmit_at = None;
                    c.deadline = None;
                }
                if c.cancel_wanted && !c.cancel_sent {
                    self.send_cancel(now, branch);
                    return;
                }
                if status == 100 {
                    return;
                }
                if let Some(s) = self.invite_servers.get_mut(&key)
                    && s.final_code.is_none()
                    && !s.cancelled
                {
                    let bytes = strip_top_via(&msg);
                    s.last_response = Some(bytes.clone());
                    self.transmits.push_back(Transmit {
                        transport: s.transport,
                        dst: s.peer,
                        bytes,
                    });
                }
            }
            200..=299 => {
                let first = matches!(c.state, ClientState::Calling | ClientState::Proceeding);
                c.state = ClientState::Accepted;
                c.retransmit_at = None;
                if first {
                    c.deadline = Some(now + t1 * 64);
                }
                // Every 2xx goes upstream, retransmissions and late forks
                // included (RFC 3261 16.7 step 10): the caller acknowledges
                // (and hangs up) each dialog itself.
                let bytes = strip_top_via(&msg);
                let (transport, dst) = (c.origin_transport, c.origin);
                let answered_now = first
                    && self
                        .invite_servers
                        .get(&key)
                        .is_some_and(|s| s.final_code.is_none());
                if answered_now {
                    self.send_invite_final(now, &key, status, bytes);
                } else {
                    self.transmits.push_back(Transmit {
                        transport,
                        dst,
                        bytes,
                    });
                }
                if first {
                    if let Some(s) = self.invite_servers.get_mut(&key) {
                        s.pending.remove(branch);
                    }
                    // The first 2xx wins: the other branches are cancelled.
                    self.cancel_branches(now, &key, Some(branch));
                }
            }
            _ => {
                match c.state {
                    ClientState::Completed => {
                        // A retransmitted final: our ACK was lost.
                        if let Some(ack) = c.ack.clone() {
                            self.transmits.push_back(Transmit {
                                bytes: ack,
                                ..c.transmit.clone()
                            });
                        }
                        return;
                    }
                    ClientState::Accepted => return,
                    ClientState::Calling | ClientState::Proceeding => {}
                }
                let ack = build_ack(&c.request, &msg);
                c.state = ClientState::Completed;
                c.retransmit_at = None;
                c.deadline = Some(
                    now + if c.transmit.transport == Transport::Udp {
                        TIMER_D_UDP
                    } else {
                        Duration::ZERO
                    },
                );
                c.ack = Some(ack.clone());
                self.transmits.push_back(Transmit {
                    bytes: ack,
                    ..c.transmit.clone()
                });
                self.branch_final(now, &key, branch, status, Some(strip_top_via(&msg)));
            }
        }
    }

    /// A branch ended without a 2xx: its response (or the proxy's own
    /// `code` when `bytes` is `None`) competes for the answer upstream.
    fn branch_final(
        &mut self,
        now: Instant,
        key: &str,
        branch: &str,
        code: u16,
        bytes: Option<Vec<u8>>,
    ) {
        let Some(s) = self.invite_servers.get_mut(key) else {
            return;
        };
        if !s.pending.remove(branch) {
            return;
        }
        if s.best
            .as_ref()
            .is_none_or(|(best, _)| rank(code) < rank(*best))
        {
            s.best = Some((code, bytes));
        }
        let done = s.pending.is_empty() && s.final_code.is_none();
        if code >= 600 {
            // A 6xx is a global answer (RFC 3261 16.7 step 5): stop ringing.
            self.cancel_branches(now, key, None);
        }
        if done {
            self.finish_invite(now, key);
        }
    }

    /// Every branch failed: the best response goes upstream (RFC 3261 16.7
    /// step 6); a cancelled INVITE is answered 487 unless a 6xx came.
    fn finish_invite(&mut self, now: Instant, key: &str) {
        let Some(s) = self.invite_servers.get_mut(key) else {
            return;
        };
        if s.final_code.is_some() {
            return;
        }
        let cancelled = s.cancelled;
        let best = s.best.take();
        match best {
            Some((code, Some(bytes))) if code >= 600 || (!cancelled && code != 503) => {
                self.send_invite_final(now, key, code, bytes);
            }
            _ if cancelled => self.invite_reply(now, key, 487, "Request Terminated", &[]),
            // A 503 passed on would tell the caller this proxy is overloaded.
            Some((503, _)) => self.invite_reply(now, key, 500, "Server Internal Error", &[]),
            Some((code, _)) => self.invite_reply(now, key, code, default_reason(code), &[]),
            None => self.invite_reply(now, key, 408, "Request Timeout", &[]),
        }
    }

    /// Cancels the pending branches of `key` except `except`.
    fn cancel_branches(&mut self, now: Instant, key: &str, except: Option<&str>) {
        let Some(s) = self.invite_servers.get(key) else {
            return;
        };
        let branches: Vec<String> = s
            .pending
            .iter()
            .filter(|b| Some(b.as_str()) != except)
            .cloned()
            .collect();
        for branch in branches {
            let Some(c) = self.invite_clients.get_mut(&branch) else {
                continue;
            };
            match c.state {
                // RFC 3261 9.1: no CANCEL before a provisional response.
                ClientState::Calling => c.cancel_wanted = true,
                ClientState::Proceeding => self.send_cancel(now, &branch),
                ClientState::Completed | ClientState::Accepted => {}
            }
        }
    }

    /// CANCEL for a branch (RFC 3261 9.1): Request-URI, Call-ID, From, To,
    /// CSeq number, Route and the top Via of the INVITE as sent.
    fn send_cancel(&mut self, now: Instant, branch: &str) {
        let t1 = self.config.t1;
        let Some(c) = self.invite_clients.get_mut(branch) else {
            return;
        };
        if c.cancel_sent {
            return;
        }
        c.cancel_sent = true;
        // If no final response follows within 64·T1, the branch is given up.
        c.deadline = Some(now + t1 * 64);
        let inv = &c.request;
        let mut b = MessageBuilder::request("CANCEL", inv.request_uri().unwrap_or(""));
        if let Some(via) = inv.vias().first() {
            b.header("Via", &via_text(via));
        }
        for route in inv.header_all("route") {
            b.header("Route", route);
        }
        for (name, label) in [("from", "From"), ("to", "To"), ("call-id", "Call-ID")] {
            if let Some(v) = inv.header(name) {
                b.header(label, v);
            }
        }
        let seq = inv.cseq().map_or(1, |(n, _)| n);
        b.header("CSeq", &format!("{seq} CANCEL"))
            .header("Max-Forwards", "70");
        let transmit = Transmit {
            bytes: b.build(),
            ..c.transmit.clone()
        };
        let udp = transmit.transport == Transport::Udp;
        self.cancel_clients.insert(
            branch.to_string(),
            CancelClient {
                transmit: transmit.clone(),
                retransmit_at: udp.then(|| now + t1),
                interval: t1,
                deadline: now + t1 * 64,
            },
        );
        self.transmits.push_back(transmit);
    }

    /// Branches waiting on a flow the IO layer could not deliver to end
    /// with 480 at once (as relayed MESSAGEs do).
    pub(crate) fn invite_flow_failed(
        &mut self,
        now: Instant,
        transport: Transport,
        dst: SocketAddr,
    ) {
        let on_flow = |t: &Transmit| t.transport == transport && t.dst == dst;
        self.cancel_clients.retain(|_, c| !on_flow(&c.transmit));
        let failed: Vec<(String, String)> = self
            .invite_clients
            .iter()
            .filter(|(_, c)| {
                on_flow(&c.transmit)
                    && matches!(c.state, ClientState::Calling | ClientState::Proceeding)
            })
            .map(|(b, c)| (b.clone(), c.server_key.clone()))
            .collect();
        for (branch, key) in failed {
            self.invite_clients.remove(&branch);
            self.branch_final(now, &key, &branch, 480, None);
        }
    }

    // ------------------------------------------------------------ timers

    pub(crate) fn next_invite_timer(&self) -> Option<Instant> {
        let servers = self.invite_servers.values().flat_map(|s| {
            [
                s.retransmit_at,
                s.ends_at,
                s.no_answer_at.filter(|_| s.final_code.is_none()),
            ]
        });
        let clients = self
            .invite_clients
            .values()
            .flat_map(|c| [c.retransmit_at, c.deadline]);
        let cancels = self
            .cancel_clients
            .values()
            .flat_map(|c| [c.retransmit_at, Some(c.deadline)]);
        servers.chain(clients).chain(cancels).flatten().min()
    }

    pub(crate) fn invite_timeouts(&mut self, now: Instant) {
        let t2 = self.config.t2;
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);

        // Client transactions first: a branch that ends now takes part in
        // the answer the server transaction gives below.
        let branches: Vec<String> = self
            .invite_clients
            .iter()
            .filter(|(_, c)| due(c.retransmit_at) || due(c.deadline))
            .map(|(b, _)| b.clone())
            .collect();
        for branch in branches {
            let Some(c) = self.invite_clients.get_mut(&branch) else {
                continue;
            };
            if due(c.deadline) {
                let state = c.state;
                let key = c.server_key.clone();
                self.invite_clients.remove(&branch);
                if matches!(state, ClientState::Calling | ClientState::Proceeding) {
                    // Timer B, or no final 64·T1 after our CANCEL.
                    self.stats.timeouts += 1;
                    self.branch_final(now, &key, &branch, 408, None);
                }
                continue;
            }
            // Timer A: doubles without a cap (RFC 3261 17.1.1.2).
            c.interval *= 2;
            c.retransmit_at = Some(now + c.interval);
            self.stats.retransmissions += 1;
            self.transmits.push_back(c.transmit.clone());
        }

        let mut resend = Vec::new();
        self.cancel_clients.retain(|_, c| {
            if now >= c.deadline {
                return false;
            }
            if c.retransmit_at.is_some_and(|t| now >= t) {
                c.interval = (c.interval * 2).min(t2);
                c.retransmit_at = Some(now + c.interval);
                resend.push(c.transmit.clone());
            }
            true
        });
        self.stats.retransmissions += resend.len() as u64;
        self.transmits.extend(resend);

        let keys: Vec<String> = self
            .invite_servers
            .iter()
            .filter(|(_, s)| {
                due(s.retransmit_at)
                    || due(s.ends_at)
                    || (s.final_code.is_none() && due(s.no_answer_at))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(s) = self.invite_servers.get_mut(&key) else {
                continue;
            };
            if due(s.ends_at) {
                // Timer H (no ACK came), Timer I, or the end of Accepted.
                self.invite_servers.remove(&key);
                continue;
            }
            if s.final_code.is_none() && due(s.no_answer_at) {
                // Timer C: nobody answered. Stop the ringing downstream and
                // tell the caller now; a 2xx racing this is still relayed.
                s.no_answer_at = None;
                let peer = s.peer;
                self.stats.timeouts += 1;
                self.reject_event(peer, 408, "no answer");
                self.cancel_branches(now, &key, None);
                self.invite_reply(now, &key, 408, "Request Timeout", &[]);
                continue;
            }
            if due(s.retransmit_at) {
                // Timer G.
                s.interval = (s.interval * 2).min(t2);
                s.retransmit_at = Some(now + s.interval);
                if let Some(resp) = s.last_response.clone() {
                    self.stats.retransmissions += 1;
                    self.transmits.push_back(Transmit {
                        transport: s.transport,
                        dst: s.peer,
                        bytes: resp,
                    });
                }
            }
        }
    }
}

/// A Via value as text (for the CANCEL and ACK the proxy builds).
fn via_text(via: &sipvault_sip::Via) -> String {
    let mut s = format!("SIP/2.0/{} {}", via.transport, via.host);
    if let Some(p) = via.port {
        s.push_str(&format!(":{p}"));
    }
    for (n, v) in &via.params {
        match v {
            Some(v) => s.push_str(&format!(";{n}={v}")),
            None => s.push_str(&format!(";{n}")),
        }
    }
    s
}

/// ACK for a non-2xx final (RFC 3261 17.1.1.3): hop by hop, with the
/// INVITE's Request-URI, top Via, Route, From, Call-ID and CSeq number and
/// the response's To (its tag).
fn build_ack(invite: &SipMessage, resp: &SipMessage) -> Vec<u8> {
    let mut b = MessageBuilder::request("ACK", invite.request_uri().unwrap_or(""));
    if let Some(via) = invite.vias().first() {
        b.header("Via", &via_text(via));
    }
    for route in invite.header_all("route") {
        b.header("Route", route);
    }
    if let Some(v) = invite.header("from") {
        b.header("From", v);
    }
    if let Some(v) = resp.header("to").or_else(|| invite.header("to")) {
        b.header("To", v);
    }
    if let Some(v) = invite.header("call-id") {
        b.header("Call-ID", v);
    }
    let seq = invite.cseq().map_or(1, |(n, _)| n);
    b.header("CSeq", &format!("{seq} ACK"))
        .header("Max-Forwards", "70");
    b.build()
}
