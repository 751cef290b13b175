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
//! or 5xx, or never answers, is dropped (RFC 6665 4.2.2).
//!
//! **One NOTIFY in flight per dialog** (RFC 6665 4.2.2: no new NOTIFY
//! before the previous one has its final response or has timed out). What
//! a package reports meanwhile waits in the dialog's queue, and the next
//! NOTIFY carries all of it: a state document supersedes the one queued
//! before it (presence: the newest state wins), while items (a room's
//! posts and membership changes) are gathered, in order, into one partial
//! document, as many as fit in the body-size limit (the rest go in the
//! NOTIFY after). Ending a subscription queues its final state: the
//! `terminated` NOTIFY goes out last, with whatever was still queued.
//! A dialog whose queue outgrows [`MAX_PENDING_ITEMS`] (a subscriber far
//! slower than its room) is ended `terminated;reason=deactivated`, so it
//! can subscribe afresh and catch up with the history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage, SipUri};

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
    /// The NOTIFY's CSeq in its dialog.
    pub cseq: u32,
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

/// Items a dialog may have queued before it is ended (see the module doc).
pub(crate) const MAX_PENDING_ITEMS: usize = 10_000;

/// How queued items become the body of one NOTIFY.
#[derive(Clone, Copy)]
pub(crate) struct PartialDocuments {
    pub(crate) content_type: &'static str,
    /// The partial document of `items` about `entity` (the dialog's
    /// resource URI).
    pub(crate) document: fn(entity: &str, items: &[String]) -> Vec<u8>,
    /// Bodies are kept under this many bytes, unless one item alone is
    /// larger (it then goes alone).
    pub(crate) max_body: usize,
}

/// What a dialog has to tell its subscriber next, in order.
enum Pending {
    /// A whole document (presence state, a room's full state).
    State {
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// One element of a partial document.
    Item(String),
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
    /// The From URI parsed once (rooms look at it on every post).
    pub(crate) watcher: Option<SipUri>,
    watcher_tag: String,
    our_tag: String,
    /// Where NOTIFYs go: the subscriber's Contact, over the SUBSCRIBE's flow.
    target: String,
    transport: Transport,
    flow: SocketAddr,
    cseq: u32,
    pub(crate) expires_at: Instant,
    /// What waits for the next NOTIFY.
    pending: VecDeque<Pending>,
    /// The CSeq of the NOTIFY sent and not yet answered.
    awaiting: Option<u32>,
    /// Set when the subscription ends: the `Subscription-State` of its
    /// final NOTIFY, still to be sent.
    ending: Option<String>,
    /// In the notifier's ready queue.
    ready: bool,
}

impl Subscription {
    fn active(&self) -> bool {
        self.ending.is_none()
    }

    /// Whether a NOTIFY may go now and has something to say.
    fn has_next(&self) -> bool {
        self.awaiting.is_none() && (!self.pending.is_empty() || self.ending.is_some())
    }
}

/// A NOTIFY in flight: retransmitted on UDP (T1 doubling to T2) until its
/// final response, given up at 64·T1.
struct NotifyTxn {
    call_id: String,
    cseq: u32,
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
    /// How items are gathered; `None` for a package that only sends states.
    partial: Option<PartialDocuments>,
    /// By Call-ID of the SUBSCRIBE dialog (ended ones until their final
    /// NOTIFY has left).
    subscriptions: BTreeMap<String, Subscription>,
    /// Dialogs that may send a NOTIFY now, in the order they became ready.
    ready: VecDeque<String>,
    /// NOTIFYs sent and not yet answered, by Via branch.
    in_flight: HashMap<String, NotifyTxn>,
}

impl Notifier {
    pub(crate) fn new(event: &'static str, contact: String) -> Notifier {
        Notifier {
            event,
            contact,
            partial: None,
            subscriptions: BTreeMap::new(),
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    /// A notifier whose packages also queue items ([`Notifier::notify_item`]).
    pub(crate) fn with_partial(mut self, partial: PartialDocuments) -> Notifier {
        self.partial = Some(partial);
        self
    }

    fn live(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.subscriptions.iter().filter(|(_, s)| s.active())
    }

    /// Subscriptions held (those ending not counted).
    pub(crate) fn len(&self) -> usize {
        self.live().count()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id).filter(|s| s.active())
    }

    /// The dialogs (Call-IDs) watching `resource`.
    pub(crate) fn watching(&self, resource: &str) -> Vec<String> {
        self.live()
            .filter(|(_, s)| s.resource == resource)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every dialog with its resource and subscriber.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.live()
    }

    /// The dialogs whose subscription has run out at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<String> {
        self.live()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The earliest subscription expiry, NOTIFY retransmission or give-up.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let s = self.live().map(|(_, s)| s.expires_at);
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
            .filter(|s| s.active() && s.our_tag == our_tag && s.watcher_tag == watcher_tag)
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
                watcher: SipUri::parse(&from.uri).ok(),
                watcher_tag,
                our_tag,
                target,
                transport,
                flow,
                cseq: 0,
                expires_at: now + Duration::from_secs(expires.into()),
                pending: VecDeque::new(),
                awaiting: None,
                ending: None,
                ready: false,
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

    /// Marks `id` ready to send if it may and has something to say.
    fn wake(&mut self, id: &str) {
        if let Some(s) = self.subscriptions.get_mut(id)
            && s.has_next()
            && !s.ready
        {
            s.ready = true;
            self.ready.push_back(id.to_string());
        }
    }

    /// Queues `body` (of `content_type`), the whole state of subscription
    /// `id`: it supersedes a state queued just before it.
    pub(crate) fn notify_state(&mut self, id: &str, content_type: &'static str, body: Vec<u8>) {
        let Some(s) = self.subscriptions.get_mut(id).filter(|s| s.active()) else {
            return;
        };
        if matches!(s.pending.back(), Some(Pending::State { .. })) {
            s.pending.pop_back();
        }
        s.pending.push_back(Pending::State { content_type, body });
        self.wake(id);
    }

    /// Queues `item`, one element of a partial document, for subscription
    /// `id`. A dialog that has too many queued is ended (`deactivated`).
    pub(crate) fn notify_item(&mut self, id: &str, item: String) {
        let Some(s) = self.subscriptions.get_mut(id).filter(|s| s.active()) else {
            return;
        };
        if s.pending.len() >= MAX_PENDING_ITEMS {
            tracing::warn!(
                subscriber = %s.watcher_uri,
                resource = %s.resource,
                queued = s.pending.len(),
                "subscriber does not keep up with its NOTIFYs: subscription ended"
            );
            s.pending.clear();
            self.terminate(id, "terminated;reason=deactivated");
            return;
        }
        s.pending.push_back(Pending::Item(item));
        self.wake(id);
    }

    /// Ends subscription `id`: its final NOTIFY (`state`, e.g.
    /// `terminated;reason=timeout`) goes after whatever is still queued,
    /// carrying the last of it. From now on the dialog is no longer listed.
    pub(crate) fn terminate(&mut self, id: &str, state: &str) {
        let Some(s) = self.subscriptions.get_mut(id).filter(|s| s.active()) else {
            return;
        };
        s.ending = Some(state.to_string());
        self.wake(id);
    }

    /// The next NOTIFY to send, of a dialog with none in flight: what its
    /// queue holds, gathered (see the module doc). The caller sends it and
    /// reports it with [`Notifier::sent`].
    pub(crate) fn poll_notify(&mut self, now: Instant) -> Option<Notify> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(s) = self.subscriptions.get_mut(&id) {
                s.ready = false;
            }
            if let Some(notify) = self.next_notify(now, &id) {
                return Some(notify);
            }
        }
        None
    }

    fn next_notify(&mut self, now: Instant, id: &str) -> Option<Notify> {
        let partial = self.partial;
        let event = self.event;
        let s = self.subscriptions.get_mut(id).filter(|s| s.has_next())?;
        let (content_type, body): (&str, Vec<u8>) = match s.pending.pop_front() {
            None => ("", Vec::new()),
            Some(Pending::State { content_type, body }) => (content_type, body),
            Some(Pending::Item(first)) => {
                // Each item is a line of its own ("  ITEM\n"); the document
                // around them takes the entity and less than 256 bytes.
                let limit = partial
                    .map_or(usize::MAX, |p| p.max_body)
                    .saturating_sub(s.resource_uri.len() * 6 + 256);
                let mut size = first.len() + 3;
                let mut items = vec![first];
                while let Some(Pending::Item(next)) = s.pending.front() {
                    if size + next.len() + 3 > limit {
                        break;
                    }
                    size += next.len() + 3;
                    if let Some(Pending::Item(next)) = s.pending.pop_front() {
                        items.push(next);
                    }
                }
                match partial {
                    Some(p) => (p.content_type, (p.document)(&s.resource_uri, &items)),
                    None => ("", Vec::new()),
                }
            }
        };
        s.cseq += 1;
        let last = s.pending.is_empty();
        let state = match s.ending.as_deref().filter(|_| last) {
            Some(final_state) => final_state.to_string(),
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
            .header("Contact", &self.contact)
            .header("Event", event)
            .header("Subscription-State", &state);
        if !content_type.is_empty() {
            b.body(content_type, &body);
        }
        let notify = Notify {
            transport: s.transport,
            dst: s.flow,
            request: b.build(),
            call_id: id.to_string(),
            cseq: s.cseq,
        };
        if s.ending.is_some() && last {
            // The final NOTIFY: the dialog is over once it leaves.
            self.subscriptions.remove(id);
        }
        Some(notify)
    }

    /// Records a NOTIFY the core sent (`request` as sent, Via included):
    /// its dialog sends no other until this one is answered or times out.
    pub(crate) fn sent(
        &mut self,
        now: Instant,
        branch: String,
        notify: &Notify,
        request: Vec<u8>,
        t1: Duration,
    ) {
        if let Some(s) = self.subscriptions.get_mut(&notify.call_id) {
            s.awaiting = Some(notify.cseq);
        }
        let reliable = notify.transport != Transport::Udp;
        self.in_flight.insert(
            branch,
            NotifyTxn {
                call_id: notify.call_id.clone(),
                cseq: notify.cseq,
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
            self.answered(&txn.call_id, Some(txn.cseq), code);
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
                self.answered(&txn.call_id, Some(txn.cseq), 408);
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
    /// knows the dialog (481) or cannot be reached (408, 5xx) is dropped,
    /// with what was queued for it (RFC 6665 4.2.2); otherwise the dialog
    /// may send its next NOTIFY.
    pub(crate) fn notify_answered(&mut self, call_id: &str, code: u16) {
        self.answered(call_id, None, code);
    }

    /// [`Notifier::notify_answered`] for the NOTIFY `cseq` of the dialog
    /// (`None`: whichever is in flight).
    fn answered(&mut self, call_id: &str, cseq: Option<u32>, code: u16) {
        let Some(s) = self.subscriptions.get_mut(call_id) else {
            return;
        };
        if cseq.is_some_and(|c| s.awaiting != Some(c)) {
            // An answer to a NOTIFY of an earlier dialog of that Call-ID.
            return;
        }
        if code == 481 || code == 408 || code >= 500 {
            self.subscriptions.remove(call_id);
            return;
        }
        s.awaiting = None;
        self.wake(call_id);
    }
}
