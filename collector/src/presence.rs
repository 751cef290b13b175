//! Presence correlation: SIMPLE traffic (PUBLISH, RFC 3903; NOTIFY of the
//! `presence` event package, RFC 3856) becomes `presence` rows, one per
//! presence state a presentity published or a notifier reported.
//!
//! Sans-IO and on capture time, like the call correlator: the caller feeds
//! parsed messages ([`PresenceCorrelator::observe`]); pending state ages by
//! the capture time of the messages themselves, so a pcap import of an old
//! capture behaves like live traffic.
//!
//! # What makes a row
//!
//! Only messages of the `presence` event package count: `Event: presence`
//! (parameters ignored; `presence.winfo` and other packages are not
//! presence), or no Event header at all on a message whose body is
//! `application/pidf+xml`. The body is read by [`sipvault_sip::pidf`].
//!
//! | message | row |
//! |---|---|
//! | PUBLISH with a PIDF body, answered 2xx | one row, `via` `publish`, at the PUBLISH's capture time |
//! | PUBLISH with `Expires: 0`, answered 2xx | one row with `basic`, `activities`, `note` empty and `expires` 0: the publication was removed (RFC 3903 4.5), so there is no state to report; `closed` would claim the presentity said so |
//! | PUBLISH refresh: no body, `SIP-If-Match`, Expires > 0 | none: the state did not change |
//! | PUBLISH answered 3xx-6xx (412 unknown ETag, 401/407 challenge, 489...) | none: the server did not take the state |
//! | PUBLISH never answered | none; forgotten after `answer_timeout_ns` (see [`PresenceCounters`]) |
//! | NOTIFY with a PIDF body | one row immediately, `via` `notify`: the NOTIFY *is* the notification, whatever its response |
//! | NOTIFY without a body (pending or terminated subscriptions often have none) | none: it carries no presence state |
//! | a body that is not readable PIDF (malformed XML, partial PIDF, multipart RLS lists) | none; counted |
//!
//! Fields:
//!
//! * `entity`: the document's `entity` attribute; else the To URI of a
//!   PUBLISH (the Request-URI when To is unreadable), the From URI of a
//!   NOTIFY (the notifier sends on the presentity's behalf). As written, not
//!   normalised.
//! * `expires` of a PUBLISH: the Expires of its 2xx (what the server
//!   granted, RFC 3903 says it must be there), else the request's; 0 for a
//!   removal. Of a NOTIFY: the `expires` parameter of Subscription-State.
//! * `etag` of a PUBLISH: the SIP-ETag the 2xx assigned to the new state
//!   (else the request's SIP-If-Match); for a removal the SIP-If-Match it
//!   removed (else the 2xx's SIP-ETag), so a removal row carries the tag
//!   of the state row it ends. NOTIFY rows have none.
//! * `subscription_state`: NOTIFY only, the Subscription-State value
//!   (`active`, `pending`, `terminated`) lower-cased, without parameters.
//!
//! # Duplicates
//!
//! A relaying server (or Kamailio's `siptrace`) captures every message twice,
//! in and out, and UDP retransmits: a request is identified by (Call-ID,
//! CSeq number, method) and only its first copy counts; its key is kept for
//! `answer_timeout_ns` after it was settled so late copies are ignored too.
//!
//! # Bounds
//!
//! PUBLISHes waiting for their answer are capped (`max_pending`, the oldest
//! is dropped beyond it) and forgotten after `answer_timeout_ns` of capture
//! time; keys of settled requests are capped and aged the same way.

use std::collections::{BTreeMap, HashMap};

use sipvault_schemas::{CapturedMessage, PresenceRow};
use sipvault_sip::{NameAddr, SipMessage, pidf};

/// Values of [`PresenceRow::via`].
pub mod via {
    pub const PUBLISH: &str = "publish";
    pub const NOTIFY: &str = "notify";
}

const NS_PER_SEC: i64 = 1_000_000_000;

const PIDF_CONTENT_TYPE: &str = "application/pidf+xml";

/// Timeouts and bounds, in capture-time nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceConfig {
    /// A PUBLISH without a final response for this long is forgotten, and
    /// a settled request's key is kept this long to absorb late copies.
    /// Default 32 s (64·T1, the longest a transaction retransmits).
    pub answer_timeout_ns: i64,
    /// PUBLISHes waiting for their answer (and settled keys) kept at most;
    /// beyond, the oldest is dropped. Default 100 000.
    pub max_pending: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            answer_timeout_ns: 32 * NS_PER_SEC,
            max_pending: 100_000,
        }
    }
}

/// What the correlator saw but did not turn into rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceCounters {
    /// Presence bodies that were not readable PIDF.
    pub unreadable_bodies: u64,
    /// PUBLISHes answered with a final failure.
    pub rejected_publishes: u64,
    /// PUBLISHes without a final response within the timeout (or at drain).
    pub unanswered_publishes: u64,
    /// PUBLISHes dropped unanswered because `max_pending` was reached.
    pub evicted_publishes: u64,
}

/// A request: (Call-ID, CSeq number, method).
type RequestKey = (String, u32, PresenceMethod);

/// The requests that carry presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum PresenceMethod {
    Publish,
    Notify,
}

/// A PUBLISH waiting for its final response.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingPublish {
    /// The row as far as the request tells it.
    row: PresenceRow,
    if_match: Option<String>,
    /// `Expires: 0`: the publication is being removed.
    removal: bool,
}

/// Folds SIMPLE messages into [`PresenceRow`]s. See the module docs for the
/// rules.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PresenceCorrelator {
    config: PresenceConfig,
    pending: AgedMap<PendingPublish>,
    /// Requests already settled (PUBLISH answered, NOTIFY archived).
    settled: AgedMap<()>,
    latest_ns: i64,
    counters: PresenceCounters,
}

impl Default for PresenceCorrelator {
    fn default() -> Self {
        Self::new()
    }
}

impl PresenceCorrelator {
    pub fn new() -> Self {
        Self::with_config(PresenceConfig::default())
    }

    pub fn with_config(config: PresenceConfig) -> Self {
        PresenceCorrelator {
            config,
            pending: AgedMap::default(),
            settled: AgedMap::default(),
            latest_ns: i64::MIN,
            counters: PresenceCounters::default(),
        }
    }

    /// PUBLISHes waiting for their final response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn counters(&self) -> PresenceCounters {
        self.counters
    }

    /// Feeds one captured message (already parsed by the caller); returns
    /// the presence state it completes: a NOTIFY's own, or that of the
    /// PUBLISH a 2xx answers.
    pub fn observe(&mut self, msg: &CapturedMessage, sip: &SipMessage) -> Vec<PresenceRow> {
        self.forget_before(msg.time_ns);
        let (Some(call_id), Some((cseq, cseq_method))) = (sip.call_id(), sip.cseq()) else {
            return Vec::new();
        };
        let method = match cseq_method {
            "PUBLISH" => PresenceMethod::Publish,
            "NOTIFY" => PresenceMethod::Notify,
            _ => return Vec::new(),
        };
        let key: RequestKey = (call_id.to_string(), cseq, method);
        if !sip.is_request() {
            return self
                .on_response(key, sip, msg.time_ns)
                .into_iter()
                .collect();
        }
        if sip.method() != Some(cseq_method)
            || self.pending.contains(&key)
            || self.settled.contains(&key)
            || !is_presence_event(sip)
        {
            return Vec::new();
        }
        match method {
            PresenceMethod::Publish => {
                self.on_publish(key, msg, sip);
                Vec::new()
            }
            PresenceMethod::Notify => self.on_notify(key, msg, sip).into_iter().collect(),
        }
    }

    /// End of input: forgets every PUBLISH still waiting for its answer
    /// (an unanswered PUBLISH is not a state change, so no row comes of
    /// it) and every settled key. Returns how many PUBLISHes were pending.
    pub fn drain(&mut self) -> usize {
        let unanswered = self.pending.len();
        self.counters.unanswered_publishes += unanswered as u64;
        self.pending = AgedMap::default();
        self.settled = AgedMap::default();
        unanswered
    }

    fn on_publish(&mut self, key: RequestKey, msg: &CapturedMessage, sip: &SipMessage) {
        let expires = sip.expires();
        let removal = expires == Some(0);
        let document = if removal {
            None
        } else if sip.body().is_empty() {
            // A refresh (SIP-If-Match, no body): the state is unchanged.
            return;
        } else {
            match self.read_document(sip) {
                Some(document) => Some(document),
                None => return,
            }
        };
        let entity = document
            .as_ref()
            .and_then(|d| d.entity.clone())
            .or_else(|| address_uri(sip, "to"))
            .or_else(|| sip.request_uri().map(str::to_string))
            .unwrap_or_default();
        let row = state_row(msg, &key, via::PUBLISH, entity, document.as_ref(), expires);
        if self.pending.len() >= self.config.max_pending.max(1)
            && self.pending.pop_oldest().is_some()
        {
            self.counters.evicted_publishes += 1;
        }
        let pending = PendingPublish {
            row,
            if_match: header_token(sip, "sip-if-match"),
            removal,
        };
        self.pending.insert(key, msg.time_ns, pending);
    }

    fn on_response(&mut self, key: RequestKey, sip: &SipMessage, now: i64) -> Option<PresenceRow> {
        let code = sip.status()?;
        if code < 200 || key.2 != PresenceMethod::Publish {
            return None;
        }
        let publish = self.pending.remove(&key)?;
        self.settle(key, now);
        if code >= 300 {
            self.counters.rejected_publishes += 1;
            return None;
        }
        let mut row = publish.row;
        let assigned_etag = header_token(sip, "sip-etag");
        if publish.removal {
            row.etag = publish.if_match.or(assigned_etag);
        } else {
            row.etag = assigned_etag.or(publish.if_match);
            row.expires = sip.expires().or(row.expires);
        }
        Some(row)
    }

    fn on_notify(
        &mut self,
        key: RequestKey,
        msg: &CapturedMessage,
        sip: &SipMessage,
    ) -> Option<PresenceRow> {
        self.settle(key.clone(), msg.time_ns);
        if sip.body().is_empty() {
            return None;
        }
        let document = self.read_document(sip)?;
        let entity = document
            .entity
            .clone()
            .or_else(|| address_uri(sip, "from"))
            .unwrap_or_default();
        let state = sip.header("subscription-state");
        let mut row = state_row(
            msg,
            &key,
            via::NOTIFY,
            entity,
            Some(&document),
            state.and_then(subscription_expires),
        );
        row.subscription_state = state
            .and_then(|s| s.split(';').next())
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        Some(row)
    }

    /// The PIDF document of a presence body, counting bodies that are not one.
    fn read_document(&mut self, sip: &SipMessage) -> Option<pidf::PresenceDocument> {
        let result = if base_content_type(sip).as_deref() == Some(PIDF_CONTENT_TYPE) {
            pidf::parse(sip.body()).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "unsupported presence body type {:?}",
                sip.content_type().unwrap_or_default()
            ))
        };
        match result {
            Ok(document) => Some(document),
            Err(reason) => {
                self.counters.unreadable_bodies += 1;
                tracing::debug!(call_id = sip.call_id(), %reason, "presence body not archived");
                None
            }
        }
    }

    fn settle(&mut self, key: RequestKey, now: i64) {
        if self.settled.len() >= self.config.max_pending.max(1) {
            self.settled.pop_oldest();
        }
        self.settled.insert(key, now, ());
    }

    /// Drops what is older than the timeout at capture time `now` (time
    /// only moves forward: captures from several sources interleave).
    fn forget_before(&mut self, now: i64) {
        self.latest_ns = self.latest_ns.max(now);
        let cutoff = self.latest_ns.saturating_sub(self.config.answer_timeout_ns);
        let unanswered = self.pending.remove_older_than(cutoff);
        self.counters.unanswered_publishes += unanswered as u64;
        self.settled.remove_older_than(cutoff);
    }
}

/// A row with the fields the request and its document give.
fn state_row(
    msg: &CapturedMessage,
    key: &RequestKey,
    via: &str,
    entity: String,
    document: Option<&pidf::PresenceDocument>,
    expires: Option<u32>,
) -> PresenceRow {
    PresenceRow {
        time_ns: msg.time_ns,
        source: msg.source.clone(),
        entity,
        basic: document.and_then(|d| d.basic()).map(str::to_string),
        activities: document.map(|d| d.activities()).unwrap_or_default(),
        note: document.and_then(|d| d.note()).map(str::to_string),
        via: via.to_string(),
        call_id: key.0.clone(),
        expires,
        // Known only once the PUBLISH is answered; NOTIFYs have none.
        etag: None,
        subscription_state: None,
    }
}

/// `Event: presence` (any parameters), or no Event header on a PIDF body.
fn is_presence_event(sip: &SipMessage) -> bool {
    match sip.header("event") {
        Some(event) => event
            .split(';')
            .next()
            .is_some_and(|package| package.trim().eq_ignore_ascii_case("presence")),
        None => base_content_type(sip).as_deref() == Some(PIDF_CONTENT_TYPE),
    }
}

/// Content-Type without parameters, lower-cased.
fn base_content_type(sip: &SipMessage) -> Option<String> {
    let content_type = sip.content_type()?;
    let base = content_type.split(';').next()?.trim();
    Some(base.to_ascii_lowercase())
}

/// A header's value trimmed, `None` when absent or empty.
fn header_token(sip: &SipMessage, name: &str) -> Option<String> {
    sip.header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The `expires` parameter of a Subscription-State value.
fn subscription_expires(state: &str) -> Option<u32> {
    state.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("expires") {
            return None;
        }
        value.trim().parse().ok()
    })
}

/// The URI of an address header; when the strict parser refuses it (odd
/// display names in captures), the text inside `< >`, else before the
/// first `;`.
fn address_uri(sip: &SipMessage, name: &str) -> Option<String> {
    let value = sip.header(name)?;
    if let Ok(addr) = NameAddr::parse(value) {
        return Some(addr.uri);
    }
    let uri = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => value.get(open + 1..close)?,
        _ => value.split(';').next()?,
    };
    let uri = uri.trim();
    (!uri.is_empty()).then(|| uri.to_string())
}

/// Values by request key, with the capture time each was entered: dropped
/// oldest first by age or by count, in O(log n) each.
#[derive(serde::Serialize, serde::Deserialize)]
struct AgedMap<V> {
    entries: HashMap<RequestKey, (V, (i64, u64))>,
    by_age: BTreeMap<(i64, u64), RequestKey>,
    next_seq: u64,
}

impl<V> Default for AgedMap<V> {
    fn default() -> Self {
        AgedMap {
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<V> AgedMap<V> {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn contains(&self, key: &RequestKey) -> bool {
        self.entries.contains_key(key)
    }

    fn insert(&mut self, key: RequestKey, time_ns: i64, value: V) {
        let age = (time_ns, self.next_seq);
        self.next_seq += 1;
        if let Some((_, old_age)) = self.entries.insert(key.clone(), (value, age)) {
            self.by_age.remove(&old_age);
        }
        self.by_age.insert(age, key);
    }

    fn remove(&mut self, key: &RequestKey) -> Option<V> {
        let (value, age) = self.entries.remove(key)?;
        self.by_age.remove(&age);
        Some(value)
    }

    fn pop_oldest(&mut self) -> Option<V> {
        let (_, key) = self.by_age.pop_first()?;
        self.entries.remove(&key).map(|(value, _)| value)
    }

    /// Removes the entries entered before `cutoff_ns`; returns how many.
    fn remove_older_than(&mut self, cutoff_ns: i64) -> usize {
        let mut removed = 0;
        while let Some(entry) = self.by_age.first_entry() {
            if entry.key().0 >= cutoff_ns {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
            removed += 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipvault_schemas::{Direction, Transport};

    const SEC: i64 = NS_PER_SEC;

    const OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@example.com">
<tuple id="t1"><status><basic>open</basic></status></tuple>
<dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities><dm:note>Call me later</dm:note></dm:person>
</presence>"#;

    const CLOSED_WITHOUT_ENTITY: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf">
<tuple id="t1"><status><basic>closed</basic></status><note>In a meeting</note></tuple>
</presence>"#;

    fn cap(time_ns: i64, direction: Direction, raw: String) -> CapturedMessage {
        CapturedMessage {
            time_ns,
            source: "tap".into(),
            direction,
            transport: Transport::Udp,
            src: "127.0.0.1:5061".parse().expect("address"),
            dst: "127.0.0.1:5060".parse().expect("address"),
            raw: raw.into_bytes(),
        }
    }

    fn request(method: &str, call_id: &str, cseq: u32, headers: &str, body: &str) -> String {
        let (from, to) = match method {
            "NOTIFY" => (
                "<sip:bob@example.com>;tag=n",
                "<sip:alice@example.com>;tag=w",
            ),
            _ => (
                "\"Alice\" <sip:alice@example.com>;tag=a",
                "\"Alice\" <sip:alice@example.com>",
            ),
        };
        format!(
            "{method} sip:alice@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{cseq}\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             {headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn publish(cseq: u32, headers: &str, body: &str) -> String {
        let typed = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/pidf+xml\r\n".to_string()
        };
        request(
            "PUBLISH",
            "p1",
            cseq,
            &format!("Event: presence\r\n{headers}{typed}"),
            body,
        )
    }

    fn response(code: u16, call_id: &str, cseq: u32, method: &str, headers: &str) -> String {
        format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{cseq}\r\n\
             From: <sip:alice@example.com>;tag=a\r\nTo: <sip:alice@example.com>;tag=s\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{headers}Content-Length: 0\r\n\r\n"
        )
    }

    fn notify(cseq: u32, headers: &str, body: &str) -> String {
        let typed = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/pidf+xml\r\n".to_string()
        };
        request(
            "NOTIFY",
            "n1",
            cseq,
            &format!("Event: presence\r\n{headers}{typed}"),
            body,
        )
    }

    fn feed(c: &mut PresenceCorrelator, time_ns: i64, raw: String) -> Vec<PresenceRow> {
        let msg = cap(time_ns, Direction::In, raw);
        let sip = SipMessage::parse(&msg.raw).expect("test message parses");
        c.observe(&msg, &sip)
    }

    #[test]
    fn publication_lifecycle_with_relay_copies() {
        let mut c = PresenceCorrelator::new();
        let initial = publish(1, "Expires: 3600\r\n", OPEN);
        assert!(
            feed(&mut c, SEC, initial.clone()).is_empty(),
            "waits for the answer"
        );
        assert!(
            feed(&mut c, SEC + 1, initial.clone()).is_empty(),
            "relay copy"
        );
        assert_eq!(c.pending(), 1);
        let ok = response(200, "p1", 1, "PUBLISH", "SIP-ETag: e1\r\nExpires: 1800\r\n");
        let rows = feed(&mut c, SEC + 2, ok.clone());
        assert_eq!(
            rows,
            [PresenceRow {
                time_ns: SEC,
                source: "tap".into(),
                entity: "sip:alice@example.com".into(),
                basic: Some("open".into()),
                activities: vec!["on-the-phone".into()],
                note: Some("Call me later".into()),
                via: via::PUBLISH.into(),
                call_id: "p1".into(),
                expires: Some(1800),
                etag: Some("e1".into()),
                subscription_state: None,
            }],
            "the granted Expires and the assigned ETag"
        );
        assert!(
            feed(&mut c, SEC + 3, ok).is_empty(),
            "relay copy of the 200"
        );
        assert!(
            feed(&mut c, SEC + 4, initial).is_empty(),
            "late retransmission"
        );

        // Refresh: no body, no new state.
        let refresh = publish(2, "SIP-If-Match: e1\r\nExpires: 3600\r\n", "");
        assert!(feed(&mut c, 2 * SEC, refresh).is_empty());
        let ok = response(200, "p1", 2, "PUBLISH", "SIP-ETag: e2\r\nExpires: 3600\r\n");
        assert!(feed(&mut c, 2 * SEC, ok).is_empty());

        // Modify: a new state; entity from To when the document has none.
        let modify = publish(
            3,
            "SIP-If-Match: e2\r\nExpires: 3600\r\n",
            CLOSED_WITHOUT_ENTITY,
        );
        feed(&mut c, 3 * SEC, modify);
        let ok = response(200, "p1", 3, "PUBLISH", "SIP-ETag: e3\r\n");
        let rows = feed(&mut c, 3 * SEC, ok);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].entity, "sip:alice@example.com");
        assert_eq!(rows[0].basic.as_deref(), Some("closed"));
        assert_eq!(rows[0].note.as_deref(), Some("In a meeting"));
        assert!(rows[0].activities.is_empty());
        assert_eq!(
            rows[0].expires,
            Some(3600),
            "the request's when the 200 has none"
        );
        assert_eq!(rows[0].etag.as_deref(), Some("e3"));

        // Remove: no state, expires 0, the tag of the publication removed.
        let remove = publish(4, "SIP-If-Match: e3\r\nExpires: 0\r\n", "");
        feed(&mut c, 4 * SEC, remove);
        let ok = response(200, "p1", 4, "PUBLISH", "SIP-ETag: e4\r\nExpires: 0\r\n");
        let rows = feed(&mut c, 4 * SEC, ok);
        assert_eq!(rows.len(), 1);
        let removal = &rows[0];
        assert_eq!(removal.via, via::PUBLISH);
        assert_eq!(removal.entity, "sip:alice@example.com");
        assert_eq!(
            (removal.basic.as_deref(), removal.note.as_deref()),
            (None, None)
        );
        assert!(removal.activities.is_empty());
        assert_eq!(removal.expires, Some(0));
        assert_eq!(removal.etag.as_deref(), Some("e3"));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.counters(), PresenceCounters::default());
    }

    #[test]
    fn rejected_publishes_are_not_state() {
        let mut c = PresenceCorrelator::new();
        feed(&mut c, SEC, publish(1, "", OPEN));
        assert!(feed(&mut c, SEC, response(100, "p1", 1, "PUBLISH", "")).is_empty());
        assert!(feed(&mut c, SEC, response(407, "p1", 1, "PUBLISH", "")).is_empty());
        // The challenged PUBLISH re-sent with credentials and a new CSeq.
        feed(
            &mut c,
            2 * SEC,
            publish(2, "Proxy-Authorization: Digest x\r\n", OPEN),
        );
        let rows = feed(&mut c, 2 * SEC, response(200, "p1", 2, "PUBLISH", ""));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].time_ns, 2 * SEC);
        assert_eq!(rows[0].etag, None, "no SIP-ETag, no SIP-If-Match");

        feed(&mut c, 3 * SEC, publish(3, "SIP-If-Match: gone\r\n", OPEN));
        assert!(feed(&mut c, 3 * SEC, response(412, "p1", 3, "PUBLISH", "")).is_empty());
        assert_eq!(c.counters().rejected_publishes, 2);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn unanswered_publishes_are_forgotten_on_capture_time() {
        let mut c = PresenceCorrelator::new();
        feed(&mut c, SEC, publish(1, "", OPEN));
        // Any later message advances capture time, presence or not.
        let other = response(200, "x", 1, "REGISTER", "");
        feed(&mut c, 32 * SEC, other.clone());
        assert_eq!(c.pending(), 1, "within 64*T1");
        feed(&mut c, 33 * SEC + 1, other);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.counters().unanswered_publishes, 1);
        assert!(
            feed(&mut c, 34 * SEC, response(200, "p1", 1, "PUBLISH", "")).is_empty(),
            "an answer that late is not matched"
        );

        feed(&mut c, 40 * SEC, publish(2, "", OPEN));
        assert_eq!(c.drain(), 1, "pending at end of input: no row");
        assert_eq!(c.pending(), 0);
        assert_eq!(c.counters().unanswered_publishes, 2);
    }

    #[test]
    fn pending_publishes_are_capped() {
        let mut c = PresenceCorrelator::with_config(PresenceConfig {
            max_pending: 2,
            ..PresenceConfig::default()
        });
        for cseq in 1..=3 {
            feed(&mut c, SEC, publish(cseq, "", OPEN));
        }
        assert_eq!(c.pending(), 2);
        assert_eq!(c.counters().evicted_publishes, 1);
        assert!(feed(&mut c, SEC, response(200, "p1", 1, "PUBLISH", "")).is_empty());
        assert_eq!(
            feed(&mut c, SEC, response(200, "p1", 3, "PUBLISH", "")).len(),
            1
        );
    }

    #[test]
    fn notify_is_archived_at_once_and_once() {
        let mut c = PresenceCorrelator::new();
        let active = notify(1, "Subscription-State: active;expires=599\r\n", OPEN);
        let rows = feed(&mut c, SEC, active.clone());
        assert_eq!(
            rows,
            [PresenceRow {
                time_ns: SEC,
                source: "tap".into(),
                entity: "sip:alice@example.com".into(),
                basic: Some("open".into()),
                activities: vec!["on-the-phone".into()],
                note: Some("Call me later".into()),
                via: via::NOTIFY.into(),
                call_id: "n1".into(),
                expires: Some(599),
                etag: None,
                subscription_state: Some("active".into()),
            }]
        );
        assert!(feed(&mut c, SEC + 1, active).is_empty(), "relay copy");
        assert!(feed(&mut c, SEC, response(200, "n1", 1, "NOTIFY", "")).is_empty());

        let terminated = notify(
            2,
            "Subscription-State: Terminated;reason=timeout\r\n",
            CLOSED_WITHOUT_ENTITY,
        );
        let rows = feed(&mut c, 2 * SEC, terminated);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].entity, "sip:bob@example.com",
            "From: the notifier's presentity"
        );
        assert_eq!(rows[0].basic.as_deref(), Some("closed"));
        assert_eq!(rows[0].subscription_state.as_deref(), Some("terminated"));
        assert_eq!(rows[0].expires, None);

        let empty = notify(3, "Subscription-State: pending\r\n", "");
        assert!(
            feed(&mut c, 3 * SEC, empty).is_empty(),
            "no document, no state"
        );
    }

    #[test]
    fn only_the_presence_event_package_counts() {
        let mut c = PresenceCorrelator::new();
        for event in ["dialog", "presence.winfo", "message-summary"] {
            let raw = notify(1, "", OPEN).replace("Event: presence", &format!("Event: {event}"));
            assert!(feed(&mut c, SEC, raw).is_empty(), "{event}");
        }
        let with_id = notify(2, "", OPEN).replace("Event: presence", "Event: Presence;id=7");
        assert_eq!(feed(&mut c, SEC, with_id).len(), 1);
        let no_event = notify(3, "", OPEN).replace("Event: presence\r\n", "");
        assert_eq!(
            feed(&mut c, SEC, no_event).len(),
            1,
            "PIDF body without Event"
        );
        assert_eq!(c.counters(), PresenceCounters::default());
    }

    #[test]
    fn unreadable_bodies_are_counted_not_archived() {
        let mut c = PresenceCorrelator::new();
        assert!(feed(&mut c, SEC, notify(1, "", "<presence><tuple>")).is_empty());
        let multipart = notify(2, "", "--b\r\n\r\n--b--").replace(
            "application/pidf+xml",
            "multipart/related;type=\"application/rlmi+xml\";boundary=b",
        );
        assert!(feed(&mut c, SEC, multipart).is_empty());
        feed(&mut c, SEC, publish(1, "", "not xml"));
        assert_eq!(c.pending(), 0, "nothing to wait for");
        assert_eq!(c.counters().unreadable_bodies, 3);
    }
}
