//! IM correlation: a page-mode MESSAGE and its final response become one
//! `im_messages` row.
//!
//! A relaying server sees every MESSAGE twice (in from the sender, out to the
//! callee) and every response twice; the first copy opens the IM, the first
//! final response closes it, later copies are ignored.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use sipvault_schemas::{CapturedMessage, ImMessageRow};
use sipvault_sip::{NameAddr, SipMessage};

/// Content types that are not messages a person wrote (typing indicators).
const NON_IM_CONTENT_TYPES: &[&str] = &["application/im-iscomposing+xml"];

type Key = (String, u32);

/// Looked up for every MESSAGE and its responses: foldhash instead of the
/// default SipHash. Keys come off the wire, so the seed stays random per map.
type FastState = foldhash::fast::RandomState;

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    row: ImMessageRow,
    /// When the MESSAGE was taken in (collector clock, ns).
    seen_ns: i64,
}

/// Sans-IO: the caller passes the collector's clock (`now_ns`), so a
/// replay of the write-ahead log decides exactly as the first run did.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ImCorrelator {
    answer_timeout: Duration,
    pending: HashMap<Key, Pending, FastState>,
    /// IMs already archived, remembered for at least twice the answer
    /// timeout so late duplicates and retransmissions do not open a second
    /// IM. Two generations of 64-bit key hashes: at a sustained 100k IM/s
    /// a map of owned keys with a timestamp each held gigabytes, and
    /// sweeping it every tick cost more than the lookups.
    done: HashSet<u64, FastState>,
    done_before: HashSet<u64, FastState>,
    generation_started_ns: Option<i64>,
}

/// Stable hash of an IM key (the same in every run).
fn key_hash(call_id: &str, cseq: u32) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    call_id.hash(&mut h);
    cseq.hash(&mut h);
    h.finish()
}

impl ImCorrelator {
    pub fn new(answer_timeout: Duration) -> Self {
        ImCorrelator {
            answer_timeout,
            pending: HashMap::default(),
            done: HashSet::default(),
            done_before: HashSet::default(),
            generation_started_ns: None,
        }
    }

    fn is_done(&self, hash: u64) -> bool {
        self.done.contains(&hash) || self.done_before.contains(&hash)
    }

    fn mark_done(&mut self, now_ns: i64, call_id: &str, cseq: u32) {
        self.generation_started_ns.get_or_insert(now_ns);
        self.done.insert(key_hash(call_id, cseq));
    }

    /// Takes the setting that may have changed since a restored snapshot.
    pub fn set_answer_timeout(&mut self, answer_timeout: Duration) {
        self.answer_timeout = answer_timeout;
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one captured message (parsed once by the caller for all
    /// correlators); returns the IMs it completes.
    pub fn observe(
        &mut self,
        now_ns: i64,
        msg: &CapturedMessage,
        sip: &SipMessage,
    ) -> Vec<ImMessageRow> {
        let (Some(call_id), Some((cseq, cseq_method))) = (sip.call_id(), sip.cseq()) else {
            return Vec::new();
        };
        if !cseq_method.eq_ignore_ascii_case("MESSAGE") {
            return Vec::new();
        }
        let key: Key = (call_id.to_string(), cseq);
        if sip.is_request() {
            if sip.method() != Some("MESSAGE")
                || self.pending.contains_key(&key)
                || self.is_done(key_hash(&key.0, key.1))
            {
                return Vec::new();
            }
            let content_type = sip
                .content_type()
                .unwrap_or("text/plain")
                .trim()
                .to_string();
            let base_type = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if NON_IM_CONTENT_TYPES.contains(&base_type.as_str()) {
                return Vec::new();
            }
            let row = ImMessageRow {
                time_ns: msg.time_ns,
                call_id: key.0.clone(),
                cseq,
                sender: sip.from().map(|a| a.uri.clone()).unwrap_or_default(),
                recipients: sip.to().map(|a| vec![a.uri.clone()]).unwrap_or_default(),
                content_type,
                // Validating is faster than the lossy walk, and bodies are
                // nearly always valid UTF-8.
                body: match std::str::from_utf8(sip.body()) {
                    Ok(text) => text.to_string(),
                    Err(_) => String::from_utf8_lossy(sip.body()).into_owned(),
                },
                delivery_status: String::new(),
                status: None,
                from_display: sip.from().and_then(display_name),
                to_display: sip.to().and_then(display_name),
            };
            self.pending.insert(
                key,
                Pending {
                    row,
                    seen_ns: now_ns,
                },
            );
            return Vec::new();
        }
        let Some(code) = sip.status() else {
            return Vec::new();
        };
        if code < 200 {
            return Vec::new();
        }
        match self.pending.remove(&key) {
            Some(p) => {
                self.mark_done(now_ns, &key.0, key.1);
                let mut row = p.row;
                row.delivery_status = if (200..300).contains(&code) {
                    "delivered"
                } else {
                    "failed"
                }
                .into();
                row.status = Some(code);
                vec![row]
            }
            None => Vec::new(),
        }
    }

    /// IMs that waited longer than the answer timeout, archived as `unanswered`.
    pub fn expire(&mut self, now_ns: i64) -> Vec<ImMessageRow> {
        let timeout = i64::try_from(self.answer_timeout.as_nanos()).unwrap_or(i64::MAX);
        if self
            .generation_started_ns
            .is_some_and(|t| now_ns.saturating_sub(t) >= timeout.saturating_mul(2))
        {
            self.done_before = std::mem::take(&mut self.done);
            self.generation_started_ns = Some(now_ns);
        }
        let expired: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.seen_ns) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in expired {
            if let Some(p) = self.pending.remove(&k) {
                self.mark_done(now_ns, &k.0, k.1);
                out.push(unanswered(p.row));
            }
        }
        out.sort_by_key(|r| r.time_ns);
        out
    }

    /// Everything still pending, at shutdown.
    pub fn drain(&mut self) -> Vec<ImMessageRow> {
        let mut out: Vec<_> = self
            .pending
            .drain()
            .map(|(_, p)| unanswered(p.row))
            .collect();
        out.sort_by_key(|r| r.time_ns);
        out
    }
}

/// The display name of an address as archived: unquoted and unescaped (the
/// parser does that), surrounding whitespace dropped, `None` when empty.
pub(crate) fn display_name(addr: &NameAddr) -> Option<String> {
    addr.display
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
}

fn unanswered(mut row: ImMessageRow) -> ImMessageRow {
    row.delivery_status = "unanswered".into();
    row.status = None;
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipvault_schemas::{Direction, Transport};

    const SEC: i64 = 1_000_000_000;

    fn cap(t: i64, dir: Direction, raw: &str) -> CapturedMessage {
        CapturedMessage {
            time_ns: t,
            source: "tap".into(),
            direction: dir,
            transport: Transport::Udp,
            src: "127.0.0.1:5061".parse().unwrap(),
            dst: "127.0.0.1:5060".parse().unwrap(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    const MSG: &str = "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 7 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

    fn feed(c: &mut ImCorrelator, now: i64, m: &CapturedMessage) -> Vec<ImMessageRow> {
        c.observe(
            now,
            m,
            &SipMessage::parse(&m.raw).expect("test message parses"),
        )
    }

    fn resp(code: u16) -> String {
        format!(
            "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\nCall-ID: c1\r\nCSeq: 7 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn message_and_response_make_one_im_despite_relay_copies() {
        let mut c = ImCorrelator::new(Duration::from_secs(32));
        let now = 1_000_000_000;
        assert!(feed(&mut c, now, &cap(1, Direction::In, MSG)).is_empty());
        assert!(
            feed(&mut c, now, &cap(2, Direction::Out, MSG)).is_empty(),
            "relayed copy must not open a second IM"
        );
        let done = feed(&mut c, now, &cap(3, Direction::In, &resp(200)));
        assert_eq!(done.len(), 1);
        let im = &done[0];
        assert_eq!(
            im.time_ns, 1,
            "IM time is when the sender's MESSAGE arrived"
        );
        assert_eq!(im.sender, "sip:alice@example.com");
        assert_eq!(im.recipients, vec!["sip:bob@example.com".to_string()]);
        assert_eq!(im.body, "hello");
        assert_eq!(im.delivery_status, "delivered");
        assert_eq!(im.status, Some(200));
        assert!(feed(&mut c, now, &cap(4, Direction::Out, &resp(200))).is_empty());
        assert!(
            feed(&mut c, now, &cap(5, Direction::In, MSG)).is_empty(),
            "late retransmission ignored"
        );
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn failure_and_timeout() {
        let mut c = ImCorrelator::new(Duration::from_secs(32));
        let now = 1_000_000_000;
        feed(&mut c, now, &cap(1, Direction::In, MSG));
        assert!(feed(&mut c, now, &cap(2, Direction::Out, &resp(100))).is_empty());
        let done = feed(&mut c, now, &cap(3, Direction::Out, &resp(480)));
        assert_eq!(done[0].delivery_status, "failed");
        assert_eq!(done[0].status, Some(480));

        let mut c = ImCorrelator::new(Duration::from_secs(32));
        feed(&mut c, now, &cap(1, Direction::In, MSG));
        assert!(c.expire(now + 31 * SEC).is_empty());
        let done = c.expire(now + 33 * SEC);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].delivery_status, "unanswered");
    }

    #[test]
    fn archived_ims_are_remembered_for_two_answer_timeouts_then_forgotten() {
        let mut c = ImCorrelator::new(Duration::from_secs(32));
        let t0 = 1_000_000_000;
        feed(&mut c, t0, &cap(1, Direction::In, MSG));
        assert_eq!(
            feed(&mut c, t0, &cap(2, Direction::In, &resp(200))).len(),
            1
        );
        // First rotation: the key moves to the older generation, still known.
        assert!(c.expire(t0 + 65 * SEC).is_empty());
        feed(&mut c, t0, &cap(3, Direction::In, MSG));
        assert_eq!(
            c.pending(),
            0,
            "retransmission 65 s later is still a duplicate"
        );
        // Second rotation: forgotten, so the same key opens a new IM.
        assert!(c.expire(t0 + 130 * SEC).is_empty());
        feed(&mut c, t0, &cap(4, Direction::In, MSG));
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn display_names_are_archived_unquoted_and_blank_ones_as_none() {
        let im_with = |from: &str, to: &str| {
            let mut c = ImCorrelator::new(Duration::from_secs(32));
            let m = MSG
                .replace("From: <sip:alice@example.com>", &format!("From: {from}"))
                .replace("To: <sip:bob@example.com>", &format!("To: {to}"));
            feed(&mut c, 0, &cap(1, Direction::In, &m));
            let mut rows = c.drain();
            assert_eq!(rows.len(), 1, "{m}");
            rows.remove(0)
        };
        let im = im_with(
            r#""Alice \"Al\" Smith" <sip:alice@example.com>"#,
            "Bob  Jones <sip:bob@example.com>",
        );
        assert_eq!(im.from_display.as_deref(), Some(r#"Alice "Al" Smith"#));
        assert_eq!(im.to_display.as_deref(), Some("Bob Jones"));
        assert_eq!(im.sender, "sip:alice@example.com");
        assert_eq!(im.recipients, vec!["sip:bob@example.com".to_string()]);

        let im = im_with(r#""" <sip:alice@example.com>"#, "sip:bob@example.com");
        assert_eq!(im.from_display, None, "empty quoted display name");
        assert_eq!(im.to_display, None, "addr-spec without display name");
        assert_eq!(im.recipients, vec!["sip:bob@example.com".to_string()]);

        let im = im_with(r#""  " <sip:alice@example.com>"#, "<sip:bob@example.com>");
        assert_eq!(im.from_display, None, "blank display name");
        assert_eq!(im.to_display, None);
    }

    #[test]
    fn typing_indicators_are_not_ims() {
        let mut c = ImCorrelator::new(Duration::from_secs(32));
        let m = MSG.replace("text/plain", "application/im-iscomposing+xml");
        feed(&mut c, 0, &cap(1, Direction::In, &m));
        assert_eq!(c.pending(), 0);
    }
}
