//! SIMPLE presence: the presence agent of the server (sans-IO, plain data).
//!
//! - PUBLISH (RFC 3903) stores a presentity's PIDF document under an
//!   entity tag: initial publication (body, no `SIP-If-Match`), refresh (no
//!   body), modify (body) and remove (`Expires: 0`) of the publication the
//!   tag names; each success gives a new tag. Publications expire.
//! - SUBSCRIBE/NOTIFY for the `presence` event (RFC 3856, RFC 6665): a
//!   subscription is a dialog; the subscriber gets a NOTIFY with the current
//!   state at once, another on every change, one on refresh, and a final
//!   `terminated` NOTIFY on unsubscribe (`Expires: 0`) or expiry.
//! - Authorisation: who may watch whom is a per-user allow list of URIs or
//!   `*@domain` patterns; a user without a list may be watched from the
//!   server's own domain.
//!
//! The state of a presentity is its newest publication (a presentity with
//! none is `closed`). The core parses the requests, calls in here, turns
//! [`Reply`] into the response of the request's server transaction and
//! sends each [`Notify`] in a client transaction of its own; both pass the
//! tap, so every presence change is archived like any other message.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage, SipUri};

pub const PIDF: &str = "application/pidf+xml";

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub domain: String,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    /// Watchers allowed per presentity user (URIs, or `*@domain`); a user
    /// not in the map may be watched by anyone of `domain`.
    pub allow: HashMap<String, Vec<String>>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            domain: "sipvault.local".into(),
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            allow: HashMap::new(),
        }
    }
}

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
    fn new(code: u16, reason: &'static str) -> Reply {
        Reply {
            code,
            reason,
            headers: Vec::new(),
            to_tag: None,
        }
    }

    fn with(mut self, name: &str, value: impl Into<String>) -> Reply {
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

struct Publication {
    etag: String,
    body: Vec<u8>,
    expires_at: Instant,
    /// Publication order: the newest is the presentity's state.
    seq: u64,
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

struct Subscription {
    presentity: String,
    /// The subscriber's From URI and tag.
    watcher_uri: String,
    watcher_tag: String,
    our_tag: String,
    /// Where NOTIFYs go: the subscriber's Contact, over the SUBSCRIBE's flow.
    target: String,
    transport: Transport,
    flow: SocketAddr,
    cseq: u32,
    expires_at: Instant,
}

/// Presence state of the server's users and their watchers.
pub struct PresenceAgent {
    config: PresenceConfig,
    /// By presentity user.
    publications: HashMap<String, Vec<Publication>>,
    /// By Call-ID of the SUBSCRIBE dialog.
    subscriptions: BTreeMap<String, Subscription>,
    notifies: VecDeque<Notify>,
    /// NOTIFYs sent and not yet answered, by Via branch.
    in_flight: HashMap<String, NotifyTxn>,
    counter: u64,
    seed: u64,
    /// The URI NOTIFYs carry as Contact.
    contact: String,
}

fn event_is_presence(req: &SipMessage) -> bool {
    req.header("Event")
        .and_then(|e| e.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("presence"))
}

fn user_of(uri: &str) -> Option<String> {
    SipUri::parse(uri).ok().and_then(|u| u.user)
}

impl PresenceAgent {
    pub fn new(config: PresenceConfig, seed: u64) -> PresenceAgent {
        let contact = format!("<sip:presence@{}>", config.domain);
        PresenceAgent {
            config,
            publications: HashMap::new(),
            subscriptions: BTreeMap::new(),
            notifies: VecDeque::new(),
            in_flight: HashMap::new(),
            counter: 0,
            seed,
            contact,
        }
    }

    pub fn set_allow(&mut self, allow: HashMap<String, Vec<String>>) {
        self.config.allow = allow;
    }

    fn token(&mut self) -> String {
        self.counter += 1;
        let mut x = self.seed ^ self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        format!("{x:016x}")
    }

    /// Publications and subscriptions held.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.publications.values().map(Vec::len).sum(),
            self.subscriptions.len(),
        )
    }

    /// NOTIFYs waiting to be sent.
    pub fn poll_notify(&mut self) -> Option<Notify> {
        self.notifies.pop_front()
    }

    /// The earliest expiry of a publication or subscription, or NOTIFY
    /// retransmission or give-up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let p = self.publications.values().flatten().map(|p| p.expires_at);
        let s = self.subscriptions.values().map(|s| s.expires_at);
        let n = self
            .in_flight
            .values()
            .map(|t| t.next_retransmit.unwrap_or(t.deadline).min(t.deadline));
        p.chain(s).chain(n).min()
    }

    /// Records a NOTIFY the core sent (`request` as sent, Via included).
    pub fn sent(
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
    pub fn response(&mut self, branch: &str, code: u16) -> bool {
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
    pub fn retransmissions(
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

    fn expires(&self, req: &SipMessage) -> Result<u32, Reply> {
        let expires = req.expires().unwrap_or(self.config.default_expires);
        if expires != 0 && expires < self.config.min_expires {
            return Err(Reply::new(423, "Interval Too Brief")
                .with("Min-Expires", self.config.min_expires.to_string()));
        }
        Ok(expires.min(self.config.max_expires))
    }

    /// A PUBLISH whose Request-URI names `presentity` (a known user).
    pub fn publish(&mut self, now: Instant, presentity: &str, req: &SipMessage) -> Reply {
        if !event_is_presence(req) {
            return Reply::new(489, "Bad Event").with("Allow-Events", "presence");
        }
        // Only a presentity publishes its own state.
        let publisher = req.from().and_then(|f| user_of(&f.uri));
        if publisher.as_deref() != Some(presentity) {
            return Reply::new(403, "Forbidden");
        }
        let expires = match self.expires(req) {
            Ok(e) => e,
            Err(reply) => return reply,
        };
        let body = req.body();
        if !body.is_empty() {
            let ctype = req
                .content_type()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("");
            if !ctype.trim().eq_ignore_ascii_case(PIDF) {
                return Reply::new(415, "Unsupported Media Type").with("Accept", PIDF);
            }
            if sipvault_sip::pidf::parse(body).is_err() {
                return Reply::new(400, "Bad Request");
            }
        }
        let before = self.state_of(presentity);
        let etag = self.token();
        self.counter += 1;
        let seq = self.counter;
        let pubs = self.publications.entry(presentity.to_string()).or_default();
        match req.header("SIP-If-Match").map(str::trim) {
            None => {
                if body.is_empty() {
                    return Reply::new(400, "Bad Request");
                }
                if expires == 0 {
                    return Reply::new(200, "OK").with("Expires", "0");
                }
                pubs.push(Publication {
                    etag: etag.clone(),
                    body: body.to_vec(),
                    expires_at: now + Duration::from_secs(expires.into()),
                    seq,
                });
            }
            Some(tag) => {
                let Some(i) = pubs.iter().position(|p| p.etag == tag) else {
                    return Reply::new(412, "Conditional Request Failed");
                };
                if expires == 0 {
                    pubs.remove(i);
                    self.changed(now, presentity, &before);
                    return Reply::new(200, "OK")
                        .with("SIP-ETag", tag)
                        .with("Expires", "0");
                }
                let p = &mut pubs[i];
                p.etag = etag.clone();
                p.expires_at = now + Duration::from_secs(expires.into());
                if !body.is_empty() {
                    p.body = body.to_vec();
                    p.seq = seq;
                }
            }
        }
        self.changed(now, presentity, &before);
        Reply::new(200, "OK")
            .with("SIP-ETag", etag)
            .with("Expires", expires.to_string())
    }

    /// The PIDF document of `presentity` now.
    fn state_of(&self, presentity: &str) -> Vec<u8> {
        match self
            .publications
            .get(presentity)
            .and_then(|pubs| pubs.iter().max_by_key(|p| p.seq))
        {
            Some(p) => p.body.clone(),
            None => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{presentity}@{}\">\n  <tuple id=\"sipvault\"><status><basic>closed</basic></status></tuple>\n</presence>\n",
                self.config.domain
            )
            .into_bytes(),
        }
    }

    /// Notifies the watchers of `presentity` if its state is no longer `before`.
    fn changed(&mut self, now: Instant, presentity: &str, before: &[u8]) {
        if self.state_of(presentity) == before {
            return;
        }
        let ids: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.presentity == presentity)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.notify(now, &id, None);
        }
    }

    fn may_watch(&self, presentity: &str, watcher_uri: &str) -> bool {
        let Ok(uri) = SipUri::parse(watcher_uri) else {
            return false;
        };
        let user = uri.user.clone().unwrap_or_default();
        let aor = format!("{user}@{}", uri.host);
        match self.config.allow.get(presentity) {
            Some(list) => list.iter().any(|allowed| {
                let allowed = allowed
                    .trim()
                    .trim_start_matches("sips:")
                    .trim_start_matches("sip:");
                match allowed.strip_prefix("*@") {
                    Some(domain) => uri.host.eq_ignore_ascii_case(domain),
                    None => allowed.eq_ignore_ascii_case(&aor),
                }
            }),
            None => uri.host.eq_ignore_ascii_case(&self.config.domain),
        }
    }

    /// A SUBSCRIBE for `presentity` (a known user) from `flow`.
    pub fn subscribe(
        &mut self,
        now: Instant,
        presentity: &str,
        req: &SipMessage,
        transport: Transport,
        flow: SocketAddr,
    ) -> Reply {
        if !event_is_presence(req) {
            return Reply::new(489, "Bad Event").with("Allow-Events", "presence");
        }
        let (Some(call_id), Some(from)) = (req.call_id(), req.from()) else {
            return Reply::new(400, "Bad Request");
        };
        let Some(watcher_tag) = from.tag().map(str::to_string) else {
            return Reply::new(400, "Bad Request");
        };
        let expires = match self.expires(req) {
            Ok(e) => e,
            Err(reply) => return reply,
        };
        let in_dialog = req.to().and_then(|t| t.tag()).map(str::to_string);
        let id = call_id.to_string();
        if let Some(our_tag) = in_dialog {
            // Refresh or unsubscribe of an existing subscription.
            let known = self
                .subscriptions
                .get(&id)
                .is_some_and(|s| s.our_tag == our_tag && s.watcher_tag == watcher_tag);
            if !known {
                return Reply::new(481, "Call/Transaction Does Not Exist");
            }
            let s = self.subscriptions.get_mut(&id).expect("checked above");
            s.expires_at = now + Duration::from_secs(expires.into());
            s.flow = flow;
            s.transport = transport;
            if expires == 0 {
                self.notify(now, &id, Some("terminated"));
                self.subscriptions.remove(&id);
            } else {
                self.notify(now, &id, None);
            }
            return Reply::new(200, "OK").with("Expires", expires.to_string());
        }
        if !self.may_watch(presentity, &from.uri) {
            return Reply::new(403, "Forbidden");
        }
        let target = req
            .contacts()
            .into_iter()
            .find_map(|c| c.addr.map(|a| a.uri))
            .unwrap_or_else(|| from.uri.clone());
        let our_tag = self.token();
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                presentity: presentity.to_string(),
                watcher_uri: from.uri.clone(),
                watcher_tag,
                our_tag: our_tag.clone(),
                target,
                transport,
                flow,
                cseq: 0,
                expires_at: now + Duration::from_secs(expires.into()),
            },
        );
        // A fetch (Expires: 0) gets the state once and no subscription.
        if expires == 0 {
            self.notify(now, &id, Some("terminated"));
            self.subscriptions.remove(&id);
        } else {
            self.notify(now, &id, None);
        }
        let mut reply = Reply::new(200, "OK")
            .with("Expires", expires.to_string())
            .with("Contact", self.contact.clone());
        reply.to_tag = Some(our_tag);
        reply
    }

    /// Queues a NOTIFY of subscription `id`: its current state, or the
    /// final one when `terminated` gives the state text.
    fn notify(&mut self, now: Instant, id: &str, terminated: Option<&str>) {
        let domain = self.config.domain.clone();
        let contact = self.contact.clone();
        let Some(presentity) = self.subscriptions.get(id).map(|s| s.presentity.clone()) else {
            return;
        };
        let body = self.state_of(&presentity);
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
            .header(
                "From",
                &format!("<sip:{presentity}@{domain}>;tag={}", s.our_tag),
            )
            .header("To", &format!("<{}>;tag={}", s.watcher_uri, s.watcher_tag))
            .header("Call-ID", id)
            .header("CSeq", &format!("{} NOTIFY", s.cseq))
            .header("Contact", &contact)
            .header("Event", "presence")
            .header("Subscription-State", &state)
            .body(PIDF, &body);
        self.notifies.push_back(Notify {
            transport: s.transport,
            dst: s.flow,
            request: b.build(),
            call_id: id.to_string(),
        });
    }

    /// The final response to a NOTIFY we sent: a subscriber that no longer
    /// knows the dialog (481) or cannot be reached (408) is dropped.
    pub fn notify_answered(&mut self, call_id: &str, code: u16) {
        if code == 481 || code == 408 || code >= 500 {
            self.subscriptions.remove(call_id);
        }
    }

    /// Expires publications (watchers are told) and subscriptions (a final
    /// `terminated;reason=timeout` NOTIFY).
    pub fn handle_timeout(&mut self, now: Instant) {
        // The core calls this at every timer of every transaction: only
        // presentities with an expired publication are worth a look.
        let presentities: Vec<String> = self
            .publications
            .iter()
            .filter(|(_, pubs)| pubs.iter().any(|p| p.expires_at <= now))
            .map(|(presentity, _)| presentity.clone())
            .collect();
        for presentity in presentities {
            let before = self.state_of(&presentity);
            if let Some(pubs) = self.publications.get_mut(&presentity) {
                pubs.retain(|p| p.expires_at > now);
                if pubs.is_empty() {
                    self.publications.remove(&presentity);
                }
            }
            self.changed(now, &presentity, &before);
        }
        let expired: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.notify(now, &id, Some("terminated;reason=timeout"));
            self.subscriptions.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
