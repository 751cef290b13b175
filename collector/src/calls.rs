//! Call correlation: the messages of one INVITE (its auth retries, forks,
//! re-INVITEs, CANCEL and BYE) become one `calls` row per Call-ID.
//!
//! Sans-IO like the SIP core: the caller feeds parsed messages with their
//! capture time ([`CallCorrelator::observe`]) and drives timeouts with the
//! same clock ([`CallCorrelator::expire`]). Time is always the capture time
//! in nanoseconds, never `Instant`: a pcap import replays captures that are
//! years old, in seconds.
//!
//! # What a row says
//!
//! A call is opened by an INVITE without a To tag. Messages of Call-IDs that
//! never carried one (REGISTER, MESSAGE, SUBSCRIBE...) are ignored.
//!
//! * `time_ns`, `source`, `caller` (From URI), `callee` (To URI): the first
//!   initial INVITE seen. Addresses the strict parser refuses (odd display
//!   names) are read leniently: URI inside `< >`, `tag` parameter after it.
//! * `ring_ns`: first 180/183, `answer_ns`: first 2xx to the current initial
//!   INVITE (same CSeq). `setup_ms` is ring (or answer) minus start,
//!   `duration_ms` is end minus answer.
//! * `legs`: distinct To tags of the 101-299 responses to the initial INVITE
//!   (more than 1 when forked); at least 1 when any response carried a tag
//!   (a 486 straight after INVITE is one leg), 0 when none did.
//! * `reinvites`: in-dialog INVITEs and UPDATEs, keyed by (From tag, CSeq),
//!   so retransmissions and relay copies count once; one answered with
//!   401/407 does not count (its authenticated re-send does).
//! * SDP: `caller_media` is the first audio m-line address of the caller's
//!   first SDP (INVITE, else ACK or PRACK), `callee_media` that of the first
//!   SDP in a 18x/2xx. The first of the two is the offer; `codecs` are the
//!   answer's first audio formats (offer's without answer), telephone-event
//!   and comfort noise left out. Later re-INVITE SDP does not change them.
//! * `transferred_from`: see [REFER](#transfers-refer).
//!
//! # How a call ends
//!
//! | event | disposition | ended_by | end_ns |
//! |---|---|---|---|
//! | BYE after a 2xx | `answered` | `caller` if the BYE's From tag (else URI) is the caller's, else `callee` | BYE |
//! | CANCEL, then 487 or any other final failure not decided by the callee (or none within linger) | `cancelled` | `caller` | CANCEL |
//! | 401/407 not followed by a re-sent INVITE within `ring_timeout_ns` | `failed` | `server` | response |
//! | 486, 600 | `busy` | `callee` | response |
//! | 603 | `rejected` | `callee` | response |
//! | 408, 480 | `no-answer` | `server` | response |
//! | other 6xx | `failed` | `callee` | response |
//! | 3xx, other 4xx (incl. 487 without CANCEL), 5xx | `failed` | `server` | response |
//!
//! Why the `ended_by` split: 486/6xx are decisions of the called party (its
//! phone or its user); 408/480/5xx and other 4xx are produced by proxies,
//! registrars and gateways on the path, or by the callee's stack without a
//! person deciding, so they are attributed to `server`.
//!
//! A CANCEL counts as the caller's only when it carries the caller's own
//! Via branch; a CANCEL a proxy sends on its own (its no-answer timer, the
//! losing branches of a fork) decides nothing, the final response does
//! (a ringing call a proxy gives up on is `no-answer` with 408).
//!
//! A 401/407 digest challenge is not an end: the call waits (up to
//! `ring_timeout_ns`; a person may be typing a password) for the INVITE
//! re-sent with the same Call-ID and a higher CSeq, and the final response
//! of that *last* initial INVITE decides. Other failures followed by such a
//! re-send within the linger (422, 3xx retries) reopen the call the same
//! way. A 2xx that races a CANCEL wins (the call is answered); a 486/603/6xx
//! that crosses a CANCEL is kept (the callee decided first). A BYE before
//! any 2xx (allowed on an early dialog, RFC 3261 15) is treated like a
//! CANCEL by its sender.
//!
//! After its end a call *lingers* for `linger_ns` so stray ACKs, the 487
//! after a CANCEL, a final response that reopens it and relay copies are
//! absorbed, then its row is emitted (by [`CallCorrelator::expire`], or by
//! [`CallCorrelator::observe`] when a later message of that Call-ID
//! arrives). An answered call ended by a BYE is final at once: its row is
//! emitted at the BYE. Either way its Call-ID is then remembered for
//! another `linger_ns` so late copies (the 200 to the BYE, relay copies)
//! do not open a new call or change the row.
//!
//! Calls that never end:
//!
//! * answered, no BYE for `max_call_ns` since its last message (session
//!   refreshes keep a call alive): `timeout`;
//! * unanswered, no final response for `ring_timeout_ns` since its last
//!   message: `no-answer` if a provisional response other than 100 was seen
//!   (the callee was reached), else `timeout`;
//! * [`CallCorrelator::drain`] (end of input) closes every open call the same
//!   way, except that an answered call without BYE is `answered`: it was
//!   answered, the capture just ends.
//!
//! Calls closed without a seen end (timeouts, answered at drain, no-answer
//! by timer) have `end_ns`, `duration_ms` and `ended_by` set to `None`: the
//! archive records what was observed, it does not invent an end time.
//!
//! Open calls are capped (`max_open_calls`); beyond, the call that started
//! first is closed early ([`CallCorrelator::evicted`] counts them): an ended
//! one with its own disposition, any other as `timeout`.
//!
//! # Transfers (REFER)
//!
//! A REFER inside a call records its Refer-To target (and the Call-ID of a
//! `Replaces=` parameter in it). A new call opened within `refer_window_ns`
//! after it is linked (`transferred_from` = the REFER's Call-ID) when its
//! `Replaces` header names that Call-ID, else when its Request-URI or To URI
//! is the Refer-To target, else when its `Referred-By` is the REFER's sender.
//! A referral links one call only.
//!
//! # Duplicates
//!
//! A relaying server captures every message twice (in and out) and captures
//! may hold retransmissions: every rule above takes the *first* occurrence
//! (first ring, first 2xx, first BYE, first final response) or a set keyed
//! by what identifies a request, so a repeated message changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Maps looked up by Call-ID for every message: foldhash instead of the
/// default SipHash, which cost more than the rest of the lookup. Keys come
/// off the wire, so the seed stays random per map.
type CallIdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

use crate::socket_addr_text;
use sipvault_schemas::{CallRow, CapturedMessage};
use sipvault_sip::{NameAddr, SipMessage, SipUri, percent_decode, sdp};

/// Values of [`CallRow::disposition`].
pub mod disposition {
    pub const ANSWERED: &str = "answered";
    pub const BUSY: &str = "busy";
    pub const CANCELLED: &str = "cancelled";
    pub const REJECTED: &str = "rejected";
    pub const FAILED: &str = "failed";
    pub const NO_ANSWER: &str = "no-answer";
    pub const TIMEOUT: &str = "timeout";
}

/// Values of [`CallRow::ended_by`].
pub mod ended_by {
    pub const CALLER: &str = "caller";
    pub const CALLEE: &str = "callee";
    pub const SERVER: &str = "server";

    /// Who ended a call, as the static name it is kept as.
    pub fn from_name(name: &str) -> &'static str {
        match name {
            CALLER => CALLER,
            CALLEE => CALLEE,
            _ => SERVER,
        }
    }

    /// Serde for `Option<(time, who)>` in a state snapshot.
    pub(crate) mod serde_option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(
            value: &Option<(i64, &'static str)>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            value.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<(i64, &'static str)>, D::Error> {
            let value = Option::<(i64, String)>::deserialize(d)?;
            Ok(value.map(|(t, who)| (t, super::from_name(&who))))
        }
    }
}

const NS_PER_MS: i64 = 1_000_000;
const NS_PER_SEC: i64 = 1_000_000_000;

/// Encoding names that are not a voice codec (DTMF events, comfort noise).
const NON_CODEC_FORMATS: &[&str] = &["telephone-event", "CN"];

/// Timeouts and bounds of the correlator, all in capture-time nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallConfig {
    /// An unanswered call with no final response and no message for this
    /// long is closed (`no-answer`, or `timeout` when nothing beyond 100
    /// Trying was seen). Default 3 min.
    pub ring_timeout_ns: i64,
    /// An answered call with no BYE and no message for this long is closed
    /// as `timeout`. Default 4 h.
    pub max_call_ns: i64,
    /// After its end a call keeps absorbing stray ACKs, 200s and relay
    /// copies for this long before its row is emitted. Default 32 s
    /// (64·T1, the longest a transaction retransmits).
    pub linger_ns: i64,
    /// Open calls kept at most; beyond, the oldest is closed early. Default
    /// 100 000.
    pub max_open_calls: usize,
    /// How long after a REFER a new call can be linked to it as a transfer.
    /// Default 60 s.
    pub refer_window_ns: i64,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            ring_timeout_ns: 180 * NS_PER_SEC,
            max_call_ns: 4 * 3600 * NS_PER_SEC,
            linger_ns: 32 * NS_PER_SEC,
            max_open_calls: 100_000,
            refer_window_ns: 60 * NS_PER_SEC,
        }
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Phase {
    /// Initial INVITE sent, no final response yet.
    Calling,
    /// A 2xx was seen, no BYE yet.
    Answered,
    /// Ended at `since_ns` (capture time the end was observed); lingering.
    /// `reopens`: a final failure, which a re-sent INVITE can still undo.
    Ended { since_ns: i64, reopens: bool },
}

/// How a call leaves the correlator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Its linger is over, or the input ended ([`CallCorrelator::drain`]).
    Normal,
    /// No message for `ring_timeout_ns` / `max_call_ns`.
    Timeout,
    /// Pushed out by the open-call cap.
    Evicted,
}

/// A digest challenge (401/407) to the initial INVITE.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Challenge {
    time_ns: i64,
    code: u16,
    reason: Option<String>,
}

/// The audio part of one side's SDP.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MediaSummary {
    address: Option<String>,
    codecs: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Call {
    /// Fields known so far; derived fields are filled in when it closes.
    row: CallRow,
    /// Key in `CallCorrelator::by_age`.
    age_key: (i64, u64),
    caller_tag: Option<String>,
    /// Branch of the caller's own Via (the bottom one of the INVITE): a
    /// CANCEL with another branch was sent by a proxy on the path (its
    /// no-answer timer, or the other branches of a fork), not by the caller.
    #[serde(default)]
    caller_branch: Option<String>,
    caller_uri_key: String,
    /// CSeq of the latest initial INVITE: only its responses count.
    invite_cseq: u32,
    phase: Phase,
    /// CANCEL (or BYE on an early dialog): capture time and who sent it.
    #[serde(with = "ended_by::serde_option")]
    cancel: Option<(i64, &'static str)>,
    /// A 401/407 to the current INVITE: the caller is expected to re-send it
    /// with credentials; if not, the call failed with this response.
    challenge: Option<Challenge>,
    /// A provisional response other than 100 was seen: the callee was reached.
    callee_reached: bool,
    /// To tags of 101-299 responses to the initial INVITE.
    dialog_tags: BTreeSet<String>,
    any_tagged_response: bool,
    /// re-INVITEs/UPDATEs by (From tag, CSeq) → challenged with 401/407.
    in_dialog_requests: HashMap<(String, u32), bool>,
    caller_media: Option<MediaSummary>,
    callee_media: Option<MediaSummary>,
    /// The callee's SDP came first (late offer: INVITE without SDP).
    callee_offered: bool,
    last_activity_ns: i64,
}

/// A REFER seen inside a call, waiting for the call it produces.
#[derive(serde::Serialize, serde::Deserialize)]
struct Referral {
    referring_call_id: String,
    /// (From tag, CSeq) of the REFER: relay copies and retransmissions are one referral.
    request: (String, u32),
    time_ns: i64,
    target_key: String,
    replaces_call_id: Option<String>,
    referrer_key: Option<String>,
}

/// Folds the SIP messages of INVITE dialogs into [`CallRow`]s. See the
/// module docs for the rules.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CallCorrelator {
    config: CallConfig,
    calls: CallIdMap<Call>,
    /// Open calls by (start time, arrival order): the eviction order.
    by_age: BTreeMap<(i64, u64), String>,
    next_seq: u64,
    /// Call-IDs whose row was emitted: late copies of their messages must
    /// not open a new call.
    recently_closed: ClosedCalls,
    referrals: VecDeque<Referral>,
    evicted: u64,
}

impl CallCorrelator {
    pub fn new(config: CallConfig) -> Self {
        CallCorrelator {
            config,
            calls: CallIdMap::default(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            recently_closed: ClosedCalls::default(),
            referrals: VecDeque::new(),
            evicted: 0,
        }
    }

    /// Takes settings that may have changed since a restored snapshot.
    pub fn set_config(&mut self, config: CallConfig) {
        self.config = config;
    }

    /// Calls held: unfinished ones and ended ones still lingering.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Calls closed early because `max_open_calls` was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Feeds one captured message (already parsed by the caller); returns
    /// the calls it completes: a lingering call of the same Call-ID whose
    /// linger is over at this message's capture time, or a call evicted to
    /// make room for a new one.
    pub fn observe(&mut self, msg: &CapturedMessage, sip: &SipMessage) -> Vec<CallRow> {
        let mut completed = Vec::new();
        let (Some(call_id), Some((cseq, cseq_method))) = (sip.call_id(), sip.cseq()) else {
            return completed;
        };
        let now = msg.time_ns;
        let linger_over = self
            .calls
            .get(call_id)
            .is_some_and(|call| call.due(now, &self.config) == Some(Closing::Normal));
        if linger_over {
            completed.extend(self.close(call_id, Closing::Normal, now));
        }
        if self.recently_closed.contains_key(call_id) {
            return completed;
        }
        match sip.method() {
            Some("INVITE") if to_tag(sip).is_none() => {
                self.on_initial_invite(msg, sip, call_id, cseq, &mut completed);
            }
            Some("REFER") if self.calls.contains_key(call_id) => {
                self.record_referral(sip, call_id, cseq, now);
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.touch(now);
                }
            }
            Some(method) => {
                let Some(call) = self.calls.get_mut(call_id) else {
                    return completed;
                };
                call.on_request(method, sip, cseq, now);
                // A BYE ended an answered call: nothing later changes its
                // row, so it closes now instead of lingering whole; the
                // closed Call-ID alone absorbs the 200 to the BYE and the
                // relay copies (the memory of a busy archive is mostly
                // lingering calls otherwise).
                if call.phase
                    == (Phase::Ended {
                        since_ns: now,
                        reopens: false,
                    })
                    && method == "BYE"
                {
                    completed.extend(self.close(call_id, Closing::Normal, now));
                }
            }
            None => {
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.on_response(sip, cseq, cseq_method, now);
                }
            }
        }
        completed
    }

    /// Closes calls whose linger or timeout elapsed at capture time `now_ns`,
    /// sorted by start time. Walks every open call: call it periodically
    /// (about once per second of capture time), not per message, on busy
    /// inputs.
    pub fn expire(&mut self, now_ns: i64) -> Vec<CallRow> {
        let due: Vec<(String, Closing)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| call.due(now_ns, &self.config).map(|c| (id.clone(), c)))
            .collect();
        let mut out: Vec<CallRow> = due
            .into_iter()
            .filter_map(|(id, closing)| self.close(&id, closing, now_ns))
            .collect();
        self.forget_before(now_ns);
        sort_rows(&mut out);
        out
    }

    /// End of input: closes every open call (see the module docs for the
    /// dispositions), sorted by start time.
    pub fn drain(&mut self) -> Vec<CallRow> {
        let ids: Vec<String> = self.by_age.values().cloned().collect();
        let mut out: Vec<CallRow> = ids
            .iter()
            .filter_map(|id| {
                let now = self.calls.get(id)?.last_activity_ns;
                self.close(id, Closing::Normal, now)
            })
            .collect();
        self.recently_closed.clear();
        self.referrals.clear();
        sort_rows(&mut out);
        out
    }

    fn on_initial_invite(
        &mut self,
        msg: &CapturedMessage,
        sip: &SipMessage,
        call_id: &str,
        cseq: u32,
        completed: &mut Vec<CallRow>,
    ) {
        let now = msg.time_ns;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.touch(now);
            call.on_invite_resent(sip, cseq);
            return;
        }
        if self.calls.len() >= self.config.max_open_calls.max(1)
            && let Some(oldest) = self.by_age.values().next().cloned()
        {
            completed.extend(self.close(&oldest, Closing::Evicted, now));
            self.evicted += 1;
        }
        let transferred_from = self.take_referral(sip, call_id, now);
        let from = header_party(sip, "from");
        let age_key = (now, self.next_seq);
        self.next_seq += 1;
        let caller = from.as_ref().map(|p| p.uri.clone()).unwrap_or_default();
        let to = header_party(sip, "to");
        let call = Call {
            row: CallRow {
                time_ns: now,
                call_id: call_id.to_string(),
                source: msg.source.clone(),
                caller: caller.clone(),
                callee: to.as_ref().map(|p| p.uri.clone()).unwrap_or_default(),
                ring_ns: None,
                answer_ns: None,
                end_ns: None,
                setup_ms: None,
                duration_ms: None,
                disposition: String::new(),
                final_code: None,
                reason: None,
                ended_by: None,
                codecs: Vec::new(),
                caller_media: None,
                callee_media: None,
                legs: 0,
                reinvites: 0,
                transferred_from,
                caller_display: from.as_ref().and_then(|p| p.display.clone()),
                callee_display: to.and_then(|p| p.display),
            },
            age_key,
            caller_tag: from.and_then(|p| p.tag),
            caller_branch: via_branch(sip, ViaEnd::Bottom),
            caller_uri_key: uri_key(&caller),
            invite_cseq: cseq,
            phase: Phase::Calling,
            cancel: None,
            challenge: None,
            callee_reached: false,
            dialog_tags: BTreeSet::new(),
            any_tagged_response: false,
            in_dialog_requests: HashMap::new(),
            caller_media: media_summary(sip),
            callee_media: None,
            callee_offered: false,
            last_activity_ns: now,
        };
        tracing::trace!(call_id, "call opened");
        self.by_age.insert(age_key, call_id.to_string());
        self.calls.insert(call_id.to_string(), call);
    }

    fn record_referral(&mut self, sip: &SipMessage, call_id: &str, cseq: u32, now: i64) {
        let Some(refer_to) = header_party(sip, "refer-to") else {
            return;
        };
        let request = (from_tag(sip).unwrap_or_default(), cseq);
        if self
            .referrals
            .iter()
            .any(|r| r.referring_call_id == call_id && r.request == request)
        {
            return;
        }
        let replaces_call_id = SipUri::parse(&refer_to.uri)
            .ok()
            .and_then(|uri| uri.headers)
            .and_then(|headers| replaces_from_uri_headers(&headers));
        if self.referrals.len() >= self.config.max_open_calls.max(1) {
            self.referrals.pop_front();
        }
        self.referrals.push_back(Referral {
            referring_call_id: call_id.to_string(),
            request,
            time_ns: now,
            target_key: uri_key(&refer_to.uri),
            replaces_call_id,
            referrer_key: header_party(sip, "from").map(|p| uri_key(&p.uri)),
        });
    }

    /// The Call-ID of the REFER that produced a new call, if any (and
    /// consumes that referral).
    fn take_referral(&mut self, sip: &SipMessage, call_id: &str, now: i64) -> Option<String> {
        if self.referrals.is_empty() {
            return None;
        }
        let window = self.config.refer_window_ns;
        let fresh = |r: &Referral| {
            r.referring_call_id != call_id && (0..=window).contains(&now.saturating_sub(r.time_ns))
        };
        let replaces = sip
            .header("replaces")
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let targets: Vec<String> = [
            sip.request_uri().map(uri_key),
            header_party(sip, "to").map(|p| uri_key(&p.uri)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let referred_by = header_party(sip, "referred-by").map(|p| uri_key(&p.uri));
        let index = replaces
            .and_then(|id| {
                self.referrals
                    .iter()
                    .rposition(|r| fresh(r) && r.replaces_call_id.as_deref() == Some(id))
            })
            .or_else(|| {
                self.referrals
                    .iter()
                    .rposition(|r| fresh(r) && targets.contains(&r.target_key))
            })
            .or_else(|| {
                let by = referred_by.as_ref()?;
                self.referrals
                    .iter()
                    .rposition(|r| fresh(r) && r.referrer_key.as_ref() == Some(by))
            })?;
        self.referrals.remove(index).map(|r| r.referring_call_id)
    }

    fn close(&mut self, call_id: &str, closing: Closing, now: i64) -> Option<CallRow> {
        let call = self.calls.remove(call_id)?;
        self.by_age.remove(&call.age_key);
        self.recently_closed
            .insert(call_id, now, self.config.max_open_calls.max(1));
        let row = call.finish(closing);
        tracing::debug!(
            call_id = %row.call_id,
            disposition = %row.disposition,
            "call closed"
        );
        Some(row)
    }

    /// Drops closed Call-IDs and referrals too old to matter at `now`.
    fn forget_before(&mut self, now: i64) {
        let linger = self.config.linger_ns;
        self.recently_closed
            .forget_closed_before(now.saturating_sub(linger));
        let window = self.config.refer_window_ns;
        self.referrals
            .retain(|r| now.saturating_sub(r.time_ns) <= window);
    }
}

/// Closed Call-IDs with their close time, forgotten oldest first: in
/// close order, so forgetting is amortised O(1) per call rather than a
/// sweep of every entry (which went quadratic once the bound was reached).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ClosedCalls {
    time_of: CallIdMap<i64>,
    order: VecDeque<(i64, String)>,
}

impl ClosedCalls {
    fn contains_key(&self, call_id: &str) -> bool {
        self.time_of.contains_key(call_id)
    }

    fn clear(&mut self) {
        self.time_of.clear();
        self.order.clear();
    }

    /// Remembers `call_id` as closed at `now`; past `max` entries the
    /// earliest closed is forgotten early.
    fn insert(&mut self, call_id: &str, now: i64, max: usize) {
        while self.time_of.len() >= max {
            if !self.pop_oldest() {
                break;
            }
        }
        self.time_of.insert(call_id.to_string(), now);
        self.order.push_back((now, call_id.to_string()));
    }

    fn forget_closed_before(&mut self, cutoff: i64) {
        while self.order.front().is_some_and(|(t, _)| *t < cutoff) {
            self.pop_oldest();
        }
    }

    /// Drops the earliest entry of `order`, and its Call-ID unless that was
    /// closed again later (a newer entry further back stands for it).
    fn pop_oldest(&mut self) -> bool {
        let Some((t, id)) = self.order.pop_front() else {
            return false;
        };
        if self.time_of.get(&id) == Some(&t) {
            self.time_of.remove(&id);
        }
        true
    }
}

impl Call {
    fn touch(&mut self, now: i64) {
        self.last_activity_ns = self.last_activity_ns.max(now);
    }

    /// When this call should close at `now`, and how.
    fn due(&self, now: i64, config: &CallConfig) -> Option<Closing> {
        let elapsed = |since: i64, limit: i64| now.saturating_sub(since) >= limit;
        match self.phase {
            Phase::Ended { since_ns, .. } => {
                elapsed(since_ns, config.linger_ns).then_some(Closing::Normal)
            }
            Phase::Calling => match self.cancel {
                Some((cancel_ns, _)) if elapsed(cancel_ns, config.linger_ns) => {
                    Some(Closing::Normal)
                }
                _ => elapsed(self.last_activity_ns, config.ring_timeout_ns)
                    .then_some(Closing::Timeout),
            },
            Phase::Answered => {
                elapsed(self.last_activity_ns, config.max_call_ns).then_some(Closing::Timeout)
            }
        }
    }

    /// An initial INVITE of a call already open: a retransmission or relay
    /// copy (same CSeq), or a new attempt after a challenge (higher CSeq).
    fn on_invite_resent(&mut self, sip: &SipMessage, cseq: u32) {
        if self.caller_media.is_none() && self.callee_media.is_none() {
            self.caller_media = media_summary(sip);
        }
        if cseq <= self.invite_cseq {
            return;
        }
        let reopens = match self.phase {
            Phase::Calling => true,
            Phase::Ended { reopens, .. } => reopens,
            Phase::Answered => false,
        };
        if !reopens {
            return;
        }
        self.invite_cseq = cseq;
        self.phase = Phase::Calling;
        self.cancel = None;
        self.challenge = None;
        self.row.end_ns = None;
        self.row.final_code = None;
        self.row.reason = None;
        self.row.ended_by = None;
        self.row.disposition.clear();
    }

    fn is_from_caller(&self, sip: &SipMessage) -> bool {
        let is_caller = |tag: Option<&str>, uri: &str| match (tag, self.caller_tag.as_deref()) {
            (Some(tag), Some(caller_tag)) => tag == caller_tag,
            _ => uri_key(uri) == self.caller_uri_key,
        };
        // The strict parse, which `header_party` would copy, read in place.
        if let Some(from) = sip.from() {
            return is_caller(from.tag(), &from.uri);
        }
        let Some(from) = header_party(sip, "from") else {
            return false;
        };
        is_caller(from.tag.as_deref(), &from.uri)
    }

    fn on_request(&mut self, method: &str, sip: &SipMessage, cseq: u32, now: i64) {
        self.touch(now);
        match method {
            "INVITE" | "UPDATE" => {
                let key = (from_tag(sip).unwrap_or_default(), cseq);
                self.in_dialog_requests.entry(key).or_insert(false);
            }
            // Late offer: the caller's SDP comes in the ACK (or PRACK).
            "ACK" | "PRACK" if self.caller_media.is_none() && self.is_from_caller(sip) => {
                self.caller_media = media_summary(sip);
            }
            "CANCEL"
                if self.phase == Phase::Calling
                    && cseq == self.invite_cseq
                    && self.cancel.is_none() =>
            {
                let by = match &self.caller_branch {
                    Some(caller) if via_branch(sip, ViaEnd::Top).as_ref() != Some(caller) => {
                        ended_by::SERVER
                    }
                    _ => ended_by::CALLER,
                };
                self.cancel = Some((now, by));
            }
            "BYE" => {
                let by = if self.is_from_caller(sip) {
                    ended_by::CALLER
                } else {
                    ended_by::CALLEE
                };
                match self.phase {
                    Phase::Answered => {
                        self.row.end_ns = Some(now);
                        self.row.ended_by = Some(by.to_string());
                        self.row.disposition = disposition::ANSWERED.to_string();
                        self.phase = Phase::Ended {
                            since_ns: now,
                            reopens: false,
                        };
                    }
                    // BYE on an early dialog ends the attempt like a CANCEL.
                    Phase::Calling => {
                        self.cancel.get_or_insert((now, by));
                    }
                    Phase::Ended { .. } => {}
                }
            }
            _ => {}
        }
    }

    fn on_response(&mut self, sip: &SipMessage, cseq: u32, cseq_method: &str, now: i64) {
        self.touch(now);
        let Some(code) = sip.status() else {
            return;
        };
        if cseq_method != "INVITE" || cseq != self.invite_cseq {
            // A challenged re-INVITE/UPDATE is re-sent with a new CSeq: count that one only.
            if matches!(code, 401 | 407)
                && matches!(cseq_method, "INVITE" | "UPDATE")
                && let Some(challenged) = self
                    .in_dialog_requests
                    .get_mut(&(from_tag(sip).unwrap_or_default(), cseq))
            {
                *challenged = true;
            }
            return;
        }
        let tag = to_tag(sip);
        self.any_tagged_response |= tag.is_some();
        if (101..300).contains(&code) {
            if let Some(tag) = tag {
                self.dialog_tags.insert(tag);
            }
            if self.callee_media.is_none() {
                self.callee_media = media_summary(sip);
                self.callee_offered = self.callee_media.is_some() && self.caller_media.is_none();
            }
        }
        match code {
            100 => {}
            101..=199 => {
                self.callee_reached = true;
                if matches!(code, 180 | 183) && self.row.ring_ns.is_none() {
                    self.row.ring_ns = Some(now);
                }
            }
            200..=299 => self.on_answer(sip, code, now),
            // Not the end: the caller re-sends the INVITE with credentials.
            401 | 407 if self.phase == Phase::Calling => {
                self.challenge.get_or_insert(Challenge {
                    time_ns: now,
                    code,
                    reason: reason_of(sip),
                });
            }
            _ => {
                if self.phase == Phase::Calling {
                    self.on_final_failure(sip, code, now);
                }
            }
        }
    }

    fn on_answer(&mut self, sip: &SipMessage, code: u16, now: i64) {
        self.row.answer_ns.get_or_insert(now);
        let answerable = match self.phase {
            Phase::Calling => true,
            // Another fork answered after one failed, or the 2xx overtook
            // the failure in the capture: the call was answered.
            Phase::Ended { reopens, .. } => reopens,
            Phase::Answered => false,
        };
        if !answerable {
            return;
        }
        self.phase = Phase::Answered;
        self.cancel = None;
        self.row.final_code = Some(code);
        self.row.reason = reason_of(sip);
        self.row.end_ns = None;
        self.row.ended_by = None;
        self.row.disposition.clear();
    }

    fn on_final_failure(&mut self, sip: &SipMessage, code: u16, now: i64) {
        let (disposition, by) = failure_outcome(code);
        let (disposition, by, end_ns) = match self.cancel {
            // The caller hung up first: whatever the path answered to the
            // cancelled INVITE (487, or a late 408/480/5xx), the call was
            // cancelled. A decision of the callee that crossed the CANCEL
            // (486, 603, 6xx) is kept. A CANCEL a proxy sent (its no-answer
            // timer) is no decision of the caller: its answer upstream
            // (408) says what happened.
            Some((cancel_ns, who)) if by != ended_by::CALLEE && who == ended_by::CALLER => {
                (disposition::CANCELLED, who, cancel_ns)
            }
            _ => (disposition, by, now),
        };
        self.row.disposition = disposition.to_string();
        self.row.ended_by = Some(by.to_string());
        self.row.end_ns = Some(end_ns);
        self.row.final_code = Some(code);
        self.row.reason = reason_of(sip);
        self.phase = Phase::Ended {
            since_ns: now,
            reopens: true,
        };
    }

    /// The finished row: disposition for calls that did not end on their
    /// own, and every derived field.
    fn finish(self, closing: Closing) -> CallRow {
        let mut row = self.row;
        match self.phase {
            Phase::Ended { .. } => {}
            Phase::Calling => match (self.cancel, self.challenge, closing) {
                (_, _, Closing::Evicted) => row.disposition = disposition::TIMEOUT.to_string(),
                (Some((cancel_ns, who)), _, _) => {
                    row.disposition = disposition::CANCELLED.to_string();
                    row.ended_by = Some(who.to_string());
                    row.end_ns = Some(cancel_ns);
                }
                // Challenged and never re-sent: the challenge was the final answer.
                (None, Some(challenge), _) => {
                    let (disposition, by) = failure_outcome(challenge.code);
                    row.disposition = disposition.to_string();
                    row.ended_by = Some(by.to_string());
                    row.end_ns = Some(challenge.time_ns);
                    row.final_code = Some(challenge.code);
                    row.reason = challenge.reason;
                }
                (None, None, _) => {
                    row.disposition = if self.callee_reached {
                        disposition::NO_ANSWER
                    } else {
                        disposition::TIMEOUT
                    }
                    .to_string();
                }
            },
            Phase::Answered => {
                row.disposition = match closing {
                    Closing::Normal => disposition::ANSWERED,
                    Closing::Timeout | Closing::Evicted => disposition::TIMEOUT,
                }
                .to_string();
            }
        }
        let start = row.time_ns;
        row.setup_ms = row
            .ring_ns
            .or(row.answer_ns)
            .map(|t| t.saturating_sub(start) / NS_PER_MS);
        row.duration_ms = match (row.answer_ns, row.end_ns) {
            (Some(answer), Some(end)) if row.disposition == disposition::ANSWERED => {
                Some(end.saturating_sub(answer) / NS_PER_MS)
            }
            _ => None,
        };
        let tags = u32::try_from(self.dialog_tags.len()).unwrap_or(u32::MAX);
        row.legs = tags.max(u32::from(self.any_tagged_response));
        let counted = self.in_dialog_requests.values().filter(|c| !**c).count();
        row.reinvites = u32::try_from(counted).unwrap_or(u32::MAX);
        let (offer, answer) = if self.callee_offered {
            (&self.callee_media, &self.caller_media)
        } else {
            (&self.caller_media, &self.callee_media)
        };
        row.codecs = answer
            .as_ref()
            .or(offer.as_ref())
            .map(|m| m.codecs.clone())
            .unwrap_or_default();
        row.caller_media = self.caller_media.and_then(|m| m.address);
        row.callee_media = self.callee_media.and_then(|m| m.address);
        row
    }
}

/// Disposition and `ended_by` of a final failure without a preceding
/// CANCEL (see the table in the module docs).
fn failure_outcome(code: u16) -> (&'static str, &'static str) {
    match code {
        486 | 600 => (disposition::BUSY, ended_by::CALLEE),
        603 => (disposition::REJECTED, ended_by::CALLEE),
        408 | 480 => (disposition::NO_ANSWER, ended_by::SERVER),
        600..=699 => (disposition::FAILED, ended_by::CALLEE),
        _ => (disposition::FAILED, ended_by::SERVER),
    }
}

fn sort_rows(rows: &mut [CallRow]) {
    rows.sort_by(|a, b| (a.time_ns, &a.call_id).cmp(&(b.time_ns, &b.call_id)));
}

/// URI, tag and display name of an address header (From, To, Refer-To,
/// Referred-By).
struct Party {
    uri: String,
    tag: Option<String>,
    display: Option<String>,
}

/// Reads an address header; when the strict [`NameAddr`] parser refuses it
/// (captures hold display names such as `\"arik\" <sip:...>`), the URI is
/// taken from inside `< >` and the tag from the parameters after it, so a
/// call is still attributed to its parties.
fn header_party(sip: &SipMessage, name: &str) -> Option<Party> {
    // From and To are parsed once per message by `SipMessage` itself.
    let party = |addr: &NameAddr| Party {
        uri: addr.uri.clone(),
        tag: addr.tag().map(str::to_string),
        display: crate::im::display_name(addr),
    };
    let strict = match name {
        "from" => sip.from().map(party),
        "to" => sip.to().map(party),
        _ => sip
            .header(name)
            .and_then(|v| NameAddr::parse(v).ok())
            .map(|a| party(&a)),
    };
    if strict.is_some() {
        return strict;
    }
    let value = sip.header(name)?;
    let (display, uri, params) = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => (
            lenient_display(value.get(..open)?),
            value.get(open + 1..close)?,
            value.get(close + 1..)?,
        ),
        _ => {
            let (uri, params) = value.split_once(';').unwrap_or((value, ""));
            (None, uri, params)
        }
    };
    let uri = uri.trim();
    if uri.is_empty() {
        return None;
    }
    let tag = params
        .split(';')
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("tag"))
        .map(|(_, tag)| tag.trim().to_string())
        .filter(|tag| !tag.is_empty());
    Some(Party {
        uri: uri.to_string(),
        tag,
        display,
    })
}

/// The display name before `<` of an address the strict parser refused:
/// backslash escapes resolved, then one pair of surrounding quotes dropped,
/// so a capture's `\"arik\" <sip:...>` (escaped quotes outside a quoted
/// string) gives the `arik` its sender meant.
fn lenient_display(text: &str) -> Option<String> {
    let mut unescaped = String::with_capacity(text.len());
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unescaped.extend(chars.next()),
            c => unescaped.push(c),
        }
    }
    let name = unescaped
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(&unescaped)
        .trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The tag of [`header_party`], without copying the URI and display name
/// when the strict parse (done once per message) has it.
fn to_tag(sip: &SipMessage) -> Option<String> {
    match sip.to() {
        Some(addr) => addr.tag().map(str::to_string),
        None => header_party(sip, "to")?.tag,
    }
}

fn from_tag(sip: &SipMessage) -> Option<String> {
    match sip.from() {
        Some(addr) => addr.tag().map(str::to_string),
        None => header_party(sip, "from")?.tag,
    }
}

fn reason_of(sip: &SipMessage) -> Option<String> {
    sip.reason()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// A URI reduced to what identifies a party: scheme (sips as sip), user and
/// lower-case host; port, parameters and headers dropped. Unparsable URIs
/// are compared by their text without parameters.
fn uri_key(uri: &str) -> String {
    match SipUri::parse(uri) {
        Ok(parsed) => {
            let scheme = if parsed.scheme.eq_ignore_ascii_case("tel") {
                "tel"
            } else {
                "sip"
            };
            format!(
                "{scheme}:{}@{}",
                parsed.user.as_deref().unwrap_or(""),
                parsed.host.to_ascii_lowercase()
            )
        }
        Err(_) => uri
            .split([';', '?'])
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    }
}

/// The Call-ID in a `Replaces=` header of a Refer-To URI
/// (`?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2`).
fn replaces_from_uri_headers(headers: &str) -> Option<String> {
    headers.split('&').find_map(|header| {
        let (name, value) = header.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("replaces") {
            return None;
        }
        let decoded = String::from_utf8_lossy(&percent_decode(value)).into_owned();
        let call_id = decoded.split(';').next()?.trim();
        (!call_id.is_empty()).then(|| call_id.to_string())
    })
}

/// The first audio stream of a message's SDP body: its address and codecs.
/// `None` when the message carries no readable SDP.
fn media_summary(sip: &SipMessage) -> Option<MediaSummary> {
    let session = sdp::parse(sdp_body(sip)?).ok()?;
    let audio = session
        .media
        .iter()
        .find(|m| m.kind.eq_ignore_ascii_case("audio"));
    Some(MediaSummary {
        address: audio
            .and_then(|m| m.address(&session))
            .map(socket_addr_text),
        codecs: audio
            .map(|m| {
                m.formats
                    .iter()
                    .filter(|f| {
                        !f.name.as_deref().is_some_and(|name| {
                            NON_CODEC_FORMATS
                                .iter()
                                .any(|skip| name.eq_ignore_ascii_case(skip))
                        })
                    })
                    .map(sdp::Format::label)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The SDP bytes of a message: the body when it is `application/sdp` (or
/// untyped), the SDP part of a multipart body (found by its `v=0` line,
/// ending at the next boundary line).
fn sdp_body(sip: &SipMessage) -> Option<&[u8]> {
    let body = sip.body();
    if body.is_empty() {
        return None;
    }
    let content_type = sip
        .content_type()
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match content_type.as_str() {
        "" | "application/sdp" => Some(body),
        multipart if multipart.starts_with("multipart/") => {
            let start = find(body, b"\nv=0").map(|i| i + 1)?;
            let part = body.get(start..)?;
            let end = find(part, b"\n--").map_or(part.len(), |i| i + 1);
            part.get(..end)
        }
        _ => None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // `windows(0)` would panic.
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Which Via of a message.
#[derive(Clone, Copy)]
enum ViaEnd {
    Top,
    Bottom,
}

fn via_branch(sip: &SipMessage, end: ViaEnd) -> Option<String> {
    let via = match end {
        ViaEnd::Top => sip.top_via(),
        ViaEnd::Bottom => sip.bottom_via(),
    };
    via.and_then(|v| v.branch().map(str::to_string))
}

#[cfg(test)]
mod tests;
