//! Requests the server originates itself on behalf of a room or a
//! conference focus: the copies of a post sent to members, a room's reply
//! to `/history`, and a focus's NOTIFYs (a room's `chat-room` NOTIFYs are
//! kept by its [`crate::subscription::Notifier`] instead). Each travels in
//! a client transaction of its own kept here (retransmitted on UDP at T1
//! doubling to T2, given up at 64·T1 or when its flow fails); its response
//! is absorbed, never relayed to whoever caused it. Copies pass the tap
//! like any message, so every delivery is archived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage};

use crate::core::{Core, SERVER_HEADER, Transmit, requires_tls};

/// Who sent a delivery: its failures are counted in that one's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Room,
    Conference,
}

/// A request of ours on its way to one binding.
struct Delivery {
    origin: Origin,
    transmit: Transmit,
    next_retransmit: Option<Instant>,
    interval: Duration,
    deadline: Instant,
}

/// Deliveries in flight, by the branch of their Via.
#[derive(Default)]
pub(crate) struct Deliveries {
    in_flight: HashMap<String, Delivery>,
}

impl Deliveries {
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight
            .values()
            .map(|d| d.next_retransmit.map_or(d.deadline, |r| r.min(d.deadline)))
            .min()
    }
}

/// How the copies of one message are identified.
pub(crate) enum CopyIds<'a> {
    /// A Call-ID of its own per copy, `PREFIX<token>@DOMAIN`, CSeq 1: each
    /// copy is an IM of its own in the archive.
    Fresh { prefix: &'a str },
    /// One Call-ID for every copy, CSeq numbered from `first_cseq`: the
    /// copies of a conference share its id.
    Shared { call_id: &'a str, first_cseq: u32 },
}

/// Where one copy goes: a user's contact, over a flow.
pub(crate) struct Recipient<'a> {
    pub(crate) user: &'a str,
    pub(crate) contact: &'a str,
    pub(crate) transport: Transport,
    pub(crate) flow: SocketAddr,
}

/// A message copied to members, as a room or a focus sends it.
pub(crate) struct Copy<'a> {
    pub(crate) origin: Origin,
    /// The room's or the focus's URI: replies come back to it.
    pub(crate) from_uri: &'a str,
    /// Display name of From: who wrote the message; `None` when the room or
    /// focus speaks for itself.
    pub(crate) author: Option<&'a str>,
    pub(crate) ids: CopyIds<'a>,
    pub(crate) content_type: &'a str,
    pub(crate) body: &'a [u8],
}

impl Core {
    /// Sends `copy` to every binding of each of `members` registered now
    /// (a contact that asks for TLS only over TLS, as for any relayed
    /// MESSAGE), each in a delivery of its own. Returns how many left.
    pub(crate) fn send_copies(&mut self, now: Instant, copy: &Copy<'_>, members: &[String]) -> u32 {
        let mut sent = 0u32;
        for member in members {
            let bindings: Vec<_> = self
                .bindings
                .lookup(member, now)
                .into_iter()
                .filter(|b| b.transport == Transport::Tls || !requires_tls(&b.contact))
                .cloned()
                .collect();
            for binding in bindings {
                let to = Recipient {
                    user: member,
                    contact: &binding.contact,
                    transport: binding.transport,
                    flow: binding.flow,
                };
                self.send_copy(now, copy, &to, sent);
                sent += 1;
            }
        }
        sent
    }

    /// Sends `copy` to one recipient in a delivery of its own; `nth` is
    /// how many copies of it left before (the CSeq offset of shared ids).
    pub(crate) fn send_copy(
        &mut self,
        now: Instant,
        copy: &Copy<'_>,
        to: &Recipient<'_>,
        nth: u32,
    ) {
        let domain = self.config.domain.clone();
        let (branch, via) = self.new_via(to.transport);
        let (call_id, cseq) = match copy.ids {
            CopyIds::Fresh { prefix } => (format!("{prefix}{}@{domain}", self.token()), 1),
            CopyIds::Shared {
                call_id,
                first_cseq,
            } => (call_id.to_string(), first_cseq.wrapping_add(nth)),
        };
        let from = match copy.author {
            Some(author) => format!(
                "\"{}\" <{}>;tag={}",
                author.replace(['"', '\\'], ""),
                copy.from_uri,
                self.token()
            ),
            None => format!("<{}>;tag={}", copy.from_uri, self.token()),
        };
        let mut b = MessageBuilder::request("MESSAGE", to.contact);
        b.header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &format!("<sip:{}@{domain}>", to.user))
            .header("Call-ID", &call_id)
            .header("CSeq", &format!("{cseq} MESSAGE"))
            .header("Server", SERVER_HEADER)
            .body(copy.content_type, copy.body);
        let transmit = Transmit {
            transport: to.transport,
            dst: to.flow,
            bytes: b.build(),
        };
        self.send_delivery(now, copy.origin, branch, transmit);
    }

    /// Sends `transmit`, a request of ours whose top Via carries `branch`,
    /// as a delivery: retransmitted and given up here.
    pub(crate) fn send_delivery(
        &mut self,
        now: Instant,
        origin: Origin,
        branch: String,
        transmit: Transmit,
    ) {
        let reliable = transmit.transport != Transport::Udp;
        self.deliveries.in_flight.insert(
            branch,
            Delivery {
                origin,
                transmit: transmit.clone(),
                next_retransmit: (!reliable).then(|| now + self.config.t1),
                interval: self.config.t1,
                deadline: now + self.config.t1 * 64,
            },
        );
        self.stats.relayed += 1;
        self.transmits.push_back(transmit);
    }

    fn delivery_failed(&mut self, origin: Origin, failures: u64) {
        match origin {
            Origin::Room => self.rooms.stats.delivery_failures += failures,
            Origin::Conference => self.conferences.stats.delivery_failures += failures,
        }
    }

    /// True when `msg` answers one of our deliveries (and was handled here):
    /// a final response ends the delivery, a provisional one slows its
    /// retransmissions to T2 (RFC 3261 17.1.2.2).
    pub(crate) fn delivery_response(&mut self, msg: &SipMessage) -> bool {
        let Some(branch) = msg
            .vias()
            .first()
            .and_then(|v| v.branch().map(str::to_string))
        else {
            return false;
        };
        let Some(code) = msg.status() else {
            return false;
        };
        if code >= 200 {
            let Some(delivery) = self.deliveries.in_flight.remove(&branch) else {
                return false;
            };
            if code >= 300 {
                self.delivery_failed(delivery.origin, 1);
                tracing::info!(code, origin = ?delivery.origin, "delivery refused by the user's agent");
            }
            return true;
        }
        match self.deliveries.in_flight.get_mut(&branch) {
            Some(d) => {
                d.interval = self.config.t2;
                true
            }
            None => false,
        }
    }

    /// Retransmits deliveries on UDP (T1 doubling to T2) and gives up on
    /// those unanswered at 64·T1: the message was accepted, a member who
    /// cannot be reached only misses the copy (the archive keeps the post).
    pub(crate) fn delivery_timeouts(&mut self, now: Instant) {
        let t2 = self.config.t2;
        let mut retransmit = Vec::new();
        let mut timed_out = Vec::new();
        self.deliveries.in_flight.retain(|_, d| {
            if now >= d.deadline {
                timed_out.push(d.origin);
                return false;
            }
            if d.next_retransmit.is_some_and(|at| now >= at) {
                retransmit.push(d.transmit.clone());
                d.interval = (d.interval * 2).min(t2);
                d.next_retransmit = Some(now + d.interval);
            }
            true
        });
        for origin in timed_out {
            self.delivery_failed(origin, 1);
        }
        self.stats.retransmissions += retransmit.len() as u64;
        self.transmits.extend(retransmit);
    }

    /// Deliveries on a flow that failed are given up at once.
    pub(crate) fn delivery_flow_failed(&mut self, transport: Transport, dst: SocketAddr) {
        let mut failed = Vec::new();
        self.deliveries.in_flight.retain(|_, d| {
            let gone = d.transmit.transport == transport && d.transmit.dst == dst;
            if gone {
                failed.push(d.origin);
            }
            !gone
        });
        for origin in failed {
            self.delivery_failed(origin, 1);
        }
    }
}
