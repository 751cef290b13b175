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
//! tap, so every presence change is archived like any other message. The
//! dialogs and NOTIFY transactions are kept by a [`Notifier`], as are those
//! of the chat rooms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_sip::{SipMessage, SipUri};

use crate::subscription::{Intervals, Notifier, event_is};
pub use crate::subscription::{Notify, Reply};

pub const PIDF: &str = "application/pidf+xml";
const EVENT: &str = "presence";

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

impl PresenceConfig {
    fn intervals(&self) -> Intervals {
        Intervals {
            min: self.min_expires,
            max: self.max_expires,
            default: self.default_expires,
        }
    }
}

struct Publication {
    etag: String,
    body: Vec<u8>,
    expires_at: Instant,
    /// Publication order: the newest is the presentity's state.
    seq: u64,
}

/// Presence state of the server's users and their watchers.
pub struct PresenceAgent {
    config: PresenceConfig,
    /// By presentity user.
    publications: HashMap<String, Vec<Publication>>,
    /// The watchers' subscriptions, each watching a presentity user.
    watchers: Notifier,
    counter: u64,
    seed: u64,
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
            watchers: Notifier::new(EVENT, contact),
            counter: 0,
            seed,
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
            self.watchers.len(),
        )
    }

    pub(crate) fn watchers_mut(&mut self) -> &mut Notifier {
        &mut self.watchers
    }

    /// The next NOTIFY to send (at most one in flight per subscription:
    /// a subscriber gets the newest state once its previous NOTIFY is
    /// answered, states in between are superseded).
    pub fn poll_notify(&mut self, now: Instant) -> Option<Notify> {
        self.watchers.poll_notify(now)
    }

    /// The earliest expiry of a publication or subscription, or NOTIFY
    /// retransmission or give-up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let p = self.publications.values().flatten().map(|p| p.expires_at);
        p.chain(self.watchers.poll_timeout()).min()
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
        self.watchers.sent(now, branch, notify, request, t1);
    }

    /// A response whose top Via branch is `branch`: true when it answers
    /// one of our NOTIFYs (then nothing else should look at it).
    pub fn response(&mut self, branch: &str, code: u16) -> bool {
        self.watchers.response(branch, code)
    }

    /// NOTIFYs due for retransmission (transport, destination, bytes); those
    /// past their deadline are given up and their subscription dropped.
    pub fn retransmissions(
        &mut self,
        now: Instant,
        t2: Duration,
    ) -> Vec<(Transport, SocketAddr, Vec<u8>)> {
        self.watchers.retransmissions(now, t2)
    }

    /// A PUBLISH whose Request-URI names `presentity` (a known user).
    pub fn publish(&mut self, now: Instant, presentity: &str, req: &SipMessage) -> Reply {
        if !event_is(req, EVENT) {
            return Reply::new(489, "Bad Event").with("Allow-Events", EVENT);
        }
        // Only a presentity publishes its own state.
        let publisher = req.from().and_then(|f| user_of(&f.uri));
        if publisher.as_deref() != Some(presentity) {
            return Reply::new(403, "Forbidden");
        }
        let expires = match self.config.intervals().granted(req) {
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
                    self.changed(presentity, &before);
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
        self.changed(presentity, &before);
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
    fn changed(&mut self, presentity: &str, before: &[u8]) {
        if self.state_of(presentity) == before {
            return;
        }
        for id in self.watchers.watching(presentity) {
            self.notify(&id, None);
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
        if !event_is(req, EVENT) {
            return Reply::new(489, "Bad Event").with("Allow-Events", EVENT);
        }
        let (Some(_), Some(from)) = (req.call_id(), req.from()) else {
            return Reply::new(400, "Bad Request");
        };
        if from.tag().is_none() {
            return Reply::new(400, "Bad Request");
        }
        let expires = match self.config.intervals().granted(req) {
            Ok(e) => e,
            Err(reply) => return reply,
        };
        if req.to().and_then(|t| t.tag()).is_some() {
            // Refresh or unsubscribe of an existing subscription.
            let id = match self.watchers.refresh(now, req, expires, transport, flow) {
                Ok(id) => id,
                Err(reply) => return reply,
            };
            if expires == 0 {
                self.notify(&id, Some("terminated"));
            } else {
                self.notify(&id, None);
            }
            return Reply::new(200, "OK").with("Expires", expires.to_string());
        }
        if !self.may_watch(presentity, &from.uri) {
            return Reply::new(403, "Forbidden");
        }
        let our_tag = self.token();
        let uri = format!("sip:{presentity}@{}", self.config.domain);
        let id = match self
            .watchers
            .insert(now, presentity, uri, req, expires, transport, flow, our_tag)
        {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let reply = self.watchers.accepted(&id, expires);
        // A fetch (Expires: 0) gets the state once and no subscription.
        if expires == 0 {
            self.notify(&id, Some("terminated"));
        } else {
            self.notify(&id, None);
        }
        reply
    }

    /// Queues the state of subscription `id`'s presentity (superseding
    /// one not yet sent); `terminated` ends the subscription with that
    /// state text, the state going with the final NOTIFY.
    fn notify(&mut self, id: &str, terminated: Option<&str>) {
        let Some(presentity) = self.watchers.get(id).map(|s| s.resource.clone()) else {
            return;
        };
        let body = self.state_of(&presentity);
        self.watchers.notify_state(id, PIDF, body);
        if let Some(state) = terminated {
            self.watchers.terminate(id, state);
        }
    }

    /// The final response to a NOTIFY we sent: a subscriber that no longer
    /// knows the dialog (481) or cannot be reached (408) is dropped; else
    /// its next NOTIFY may go.
    pub fn notify_answered(&mut self, call_id: &str, code: u16) {
        self.watchers.notify_answered(call_id, code);
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
            self.changed(&presentity, &before);
        }
        for id in self.watchers.expired(now) {
            self.notify(&id, Some("terminated;reason=timeout"));
        }
    }
}

#[cfg(test)]
mod tests;
