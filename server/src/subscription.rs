//! Subscriptions of RFC 6665 (SIP-specific event notification) as plain
//! data, shared by the presence agent (`presence` event) and the chat
//! rooms (`chat-room` event).
//!
//! A subscription is a dialog: the subscriber's From URI and tag, our
//! To-tag, the Call-ID, where NOTIFYs go (the subscriber's Contact, over
//! the flow the SUBSCRIBE came from) and a NOTIFY CSeq of its own. The
//! [`Notifier`] keeps them, builds the NOTIFYs an event package asks for
//! (the body is the package's business), and follows each NOTIFY as a
//! client transaction: retransmitted on UDP (T1 doubling to T2) until its
//! final response, given up at 64·T1. A subscriber that answers 481, 408
//! or 5xx, or never answers, is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage};

/// The final response the core sends for a PUBLISH or SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub reason: &'static str,
    pub headers: Vec<(String, String)>,
    /// Our To-tag: the dialog a new subscription creates.
    pub to_tag: Option<String>,
}

impl Reply {
    pub(crate) fn new(code: u16, reason: &'static str) -> Reply {
        Reply {
            code,
            reason,
            headers: Vec::new(),
            to_tag: None,
        }
    }

    pub(crate) fn with(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A NOTIFY to send: to `dst` over `transport`, without a Via (the core's
/// client transaction adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub transport: Transport,
    pub dst: SocketAddr,
    pub request: Vec<u8>,
    /// The subscription's dialog (Call-ID), to match the response.
    pub call_id: String,
}

/// Whether `req` names `event` in its Event header (parameters ignored).
pub(crate) fn event_is(req: &SipMessage, event: &str) -> bool {
    req.header("Event")
        .and_then(|e| e.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case(event))
}

/// Subscription and publication intervals a server grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intervals {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) default: u32,
}

impl Intervals {
    /// The interval `req` asks for (`Expires`, else the default), capped at
    /// the maximum; one under the minimum (and not 0) is refused with 423.
    pub(crate) fn granted(&self, req: &SipMessage) -> Result<u32, Reply> {
        let expires = req.expires().unwrap_or(self.default);
        if expires != 0 && expires < self.min {
            return Err(
                Reply::new(423, "Interval Too Brief").with("Min-Expires", self.min.to_string())
            );
        }
        Ok(expires.min(self.max))
    }
}

/// One subscription dialog.
pub(crate) struct Subscription {
    /// What is watched, as the event package names it (a presentity's
    /// user, a room's name).
    pub(crate) resource: String,
    /// The URI NOTIFYs come from (the From of the dialog, our side).
    resource_uri: String,
    /// The subscriber's From URI and tag.
    pub(crate) watcher_uri: String,
    watcher_tag: String,
    our_tag: String,
    /// Where NOTIFYs go: the subscriber's Contact, over the SUBSCRIBE's flow.
    target: String,
    transport: Transport,
    flow: SocketAddr,
    cseq: u32,
    pub(crate) expires_at: Instant,
}

/// A NOTIFY in flight: retransmitted on UDP (T1 doubling to T2) until its
/// final response, given up at 64·T1.
struct NotifyTxn {
    call_id: String,
    transport: Transport,
    dst: SocketAddr,
    request: Vec<u8>,
    next_retransmit: Option<Instant>,
    interval: Duration,
    deadline: Instant,
}

/// The subscriptions of one event package and their NOTIFYs.
pub(crate) struct Notifier {
    event: &'static str,
    /// The Contact of our side of every dialog: where refreshes go.
    contact: String,
    /// By Call-ID of the SUBSCRIBE dialog.
    subscriptions: BTreeMap<String, Subscription>,
    notifies: VecDeque<Notify>,
    /// NOTIFYs sent and not yet answered, by Via branch.
    in_flight: HashMap<String, NotifyTxn>,
}

impl Notifier {
    pub(crate) fn new(event: &'static str, contact: String) -> Notifier {
        Notifier {
            event,
            contact,
            subscriptions: BTreeMap::new(),
            notifies: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    /// The dialogs (Call-IDs) watching `resource`.
    pub(crate) fn watching(&self, resource: &str) -> Vec<String> {
        self.subscriptions
            .iter()
            .filter(|(_, s)| s.resource == resource)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every dialog with its resource and subscriber.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.subscriptions.iter()
    }

    /// The dialogs whose subscription has run out at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<String> {
        self.subscriptions
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn remove(&mut self, id: &str) {
        self.subscriptions.remove(id);
    }

    /// NOTIFYs waiting to be sent.
    pub(crate) fn poll_notify(&mut self) -> Option<Notify> {
        self.notifies.pop_front()
    }

    /// The earliest subscription expiry, NOTIFY retransmission or give-up.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let s = self.subscriptions.values().map(|s| s.expires_at);
        let n = self
            .in_flight
            .values()
            .map(|t| t.next_retransmit.unwrap_or(t.deadline).min(t.deadline));
        s.chain(n).min()
    }

    /// A SUBSCRIBE inside an existing dialog (it carries our To-tag):
    /// refresh (`expires` > 0) or unsubscribe (0). Returns the dialog's id,
    /// its expiry and flow updated, or 481 when we do not know it.
    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        req: &SipMessage,
        expires: u32,
        transport: Transport,
        flow: SocketAddr,
    ) -> Result<String, Reply> {
        let unknown = || Reply::new(481, "Call/Transaction Does Not Exist");
        let (Some(call_id), Some(our_tag), Some(watcher_tag)) = (
            req.call_id(),
            req.to().and_then(|t| t.tag().map(str::to_string)),
            req.from().and_then(|f| f.tag().map(str::to_string)),
        ) else {
            return Err(unknown());
        };
        let Some(s) = self
            .subscriptions
            .get_mut(call_id)
            .filter(|s| s.our_tag == our_tag && s.watcher_tag == watcher_tag)
        else {
            return Err(unknown());
        };
        s.expires_at = now + Duration::from_secs(expires.into());
        s.flow = flow;
        s.transport = transport;
        Ok(call_id.to_string())
    }

    /// A new subscription to `resource` (NOTIFYs from `resource_uri`) made
    /// by `req`: returns its id (the Call-ID) and our To-tag, or 400 when
    /// the request cannot make a dialog. `our_tag` is a fresh token.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        resource: &str,
        resource_uri: String,
        req: &SipMessage,
        expires: u32,
        transport: Transport,
        flow: SocketAddr,
        our_tag: String,
    ) -> Result<String, Reply> {
        let (Some(call_id), Some(from)) = (req.call_id(), req.from()) else {
            return Err(Reply::new(400, "Bad Request"));
        };
        let Some(watcher_tag) = from.tag().map(str::to_string) else {
            return Err(Reply::new(400, "Bad Request"));
        };
        let target = req
            .contacts()
            .into_iter()
            .find_map(|c| c.addr.map(|a| a.uri))
            .unwrap_or_else(|| from.uri.clone());
        self.subscriptions.insert(
            call_id.to_string(),
            Subscription {
                resource: resource.to_string(),
                resource_uri,
                watcher_uri: from.uri.clone(),
                watcher_tag,
                our_tag,
                target,
                transport,
                flow,
                cseq: 0,
                expires_at: now + Duration::from_secs(expires.into()),
            },
        );
        Ok(call_id.to_string())
    }

    /// The 200 that accepts a new subscription `id` for `expires` seconds.
    pub(crate) fn accepted(&self, id: &str, expires: u32) -> Reply {
        let mut reply = Reply::new(200, "OK")
            .with("Expires", expires.to_string())
            .with("Contact", self.contact.clone());
        reply.to_tag = self.subscriptions.get(id).map(|s| s.our_tag.clone());
        reply
    }

    /// Queues a NOTIFY of subscription `id` carrying `body` (none when
    /// `content_type` is empty): `active` with the time left, or the final
    /// one when `terminated` gives the state text (`terminated;reason=...`).
    pub(crate) fn notify(
        &mut self,
        now: Instant,
        id: &str,
        content_type: &str,
        body: &[u8],
        terminated: Option<&str>,
    ) {
        let event = self.event;
        let contact = self.contact.clone();
        let Some(s) = self.subscriptions.get_mut(id) else {
            return;
        };
        s.cseq += 1;
        let state = match terminated {
            Some(reason) => reason.to_string(),
            None => format!(
                "active;expires={}",
                s.expires_at.saturating_duration_since(now).as_secs()
            ),
        };
        let mut b = MessageBuilder::request("NOTIFY", &s.target);
        b.header("Max-Forwards", "70")
            .header("From", &format!("<{}>;tag={}", s.resource_uri, s.our_tag))
            .header("To", &format!("<{}>;tag={}", s.watcher_uri, s.watcher_tag))
            .header("Call-ID", id)
            .header("CSeq", &format!("{} NOTIFY", s.cseq))
            .header("Contact", &contact)
            .header("Event", event)
            .header("Subscription-State", &state);
        if !content_type.is_empty() {
            b.body(content_type, body);
        }
        self.notifies.push_back(Notify {
            transport: s.transport,
            dst: s.flow,
            request: b.build(),
            call_id: id.to_string(),
        });
    }

    /// Records a NOTIFY the core sent (`request` as sent, Via included).
    pub(crate) fn sent(
        &mut self,
        now: Instant,
        branch: String,
        notify: &Notify,
        request: Vec<u8>,
        t1: Duration,
    ) {
        let reliable = notify.transport != Transport::Udp;
        self.in_flight.insert(
            branch,
            NotifyTxn {
                call_id: notify.call_id.clone(),
                transport: notify.transport,
                dst: notify.dst,
                request,
                next_retransmit: (!reliable).then(|| now + t1),
                interval: t1,
                deadline: now + t1 * 64,
            },
        );
    }

    /// A response whose top Via branch is `branch`: true when it answers
    /// one of our NOTIFYs (then nothing else should look at it).
    pub(crate) fn response(&mut self, branch: &str, code: u16) -> bool {
        if !self.in_flight.contains_key(branch) {
            return false;
        }
        if code >= 200
            && let Some(txn) = self.in_flight.remove(branch)
        {
            self.notify_answered(&txn.call_id, code);
        }
        true
    }

    /// NOTIFYs due for retransmission (transport, destination, bytes); those
    /// past their deadline are given up and their subscription dropped.
    pub(crate) fn retransmissions(
        &mut self,
        now: Instant,
        t2: Duration,
    ) -> Vec<(Transport, SocketAddr, Vec<u8>)> {
        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(b, _)| b.clone())
            .collect();
        for branch in expired {
            if let Some(txn) = self.in_flight.remove(&branch) {
                self.notify_answered(&txn.call_id, 408);
            }
        }
        let mut out = Vec::new();
        for txn in self.in_flight.values_mut() {
            if let Some(at) = txn.next_retransmit.filter(|at| *at <= now) {
                txn.interval = (txn.interval * 2).min(t2);
                txn.next_retransmit = Some(at + txn.interval);
                out.push((txn.transport, txn.dst, txn.request.clone()));
            }
        }
        out
    }

    /// The final response to a NOTIFY we sent: a subscriber that no longer
    /// knows the dialog (481) or cannot be reached (408, 5xx) is dropped.
    pub(crate) fn notify_answered(&mut self, call_id: &str, code: u16) {
        if code == 481 || code == 408 || code >= 500 {
            self.subscriptions.remove(call_id);
        }
    }
}
