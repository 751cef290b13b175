//! Arrival order and duplicates: captured messages from several sources
//! reach the collector slightly out of capture order (a HEP agent batches,
//! a pcap import races the live tap) and, when two capture points see the
//! same packet (our tap and a HEP agent on the peer), twice.
//!
//! [`Arrivals`] holds each message for a reorder window of capture time
//! and releases messages in capture-time order, so the correlators see a
//! request before its response; a copy of a message already seen from
//! another source (same bytes, same addresses, capture times within the
//! dedup window) is dropped and counted. Identical frames from one source
//! are all kept: a capture file on `any` records a loopback packet twice,
//! and such a file must archive what it holds, as tshark counts it.
//! Sans-IO: the caller supplies the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use sipvault_schemas::CapturedMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArrivalConfig {
    /// How far behind the latest capture time a message may arrive and
    /// still be put in order.
    pub reorder_window_ns: i64,
    /// Two identical messages (bytes, source and destination address)
    /// captured this close together are one packet seen twice. Kept well
    /// under T1 (500 ms), the earliest a SIP retransmission is sent, so a
    /// retransmission is never taken for a copy. 0 turns de-duplication off.
    pub dedup_window_ns: i64,
}

impl Default for ArrivalConfig {
    fn default() -> Self {
        ArrivalConfig {
            reorder_window_ns: 200_000_000,
            dedup_window_ns: 100_000_000,
        }
    }
}

/// The keys of `recent` are fingerprints already: hashing them again
/// (SipHash by default) only costs time.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Arrivals {
    config: ArrivalConfig,
    /// Waiting for their window to pass, in (capture time, arrival) order.
    held: Held,
    /// Highest capture time pushed: how far the capture has come.
    latest_capture_ns: i64,
    /// `latest_capture_ns`, or the wall clock given to `release` when that
    /// is later: messages this far behind are released.
    watermark_ns: i64,
    /// Fingerprints of recent messages with their capture time and source
    /// fingerprint, and the same in arrival order for forgetting.
    recent: HashMap<u64, (i64, u64), BuildHasherDefault<FingerprintHasher>>,
    recent_order: VecDeque<(i64, u64)>,
    #[serde(skip, default = "fingerprint_state")]
    hasher: foldhash::fast::FixedState,
    duplicates: u64,
}

/// Fixed, so fingerprints are the same in every run (a restored snapshot
/// keeps recognising the copies it remembers).
fn fingerprint_state() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x5159_7661_756c_7400)
}

impl Arrivals {
    pub fn new(config: ArrivalConfig) -> Self {
        Arrivals {
            config,
            held: Held::default(),
            latest_capture_ns: i64::MIN,
            watermark_ns: i64::MIN,
            recent: HashMap::default(),
            recent_order: VecDeque::new(),
            hasher: fingerprint_state(),
            duplicates: 0,
        }
    }

    /// Takes settings that may have changed since a restored snapshot.
    pub fn set_config(&mut self, config: ArrivalConfig) {
        self.config = config;
    }

    /// Copies dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Messages held, waiting for their window to pass.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// (packet fingerprint, source fingerprint).
    fn fingerprint(&self, msg: &CapturedMessage) -> (u64, u64) {
        let mut h = self.hasher.build_hasher();
        msg.raw.hash(&mut h);
        msg.src.hash(&mut h);
        msg.dst.hash(&mut h);
        (h.finish(), self.hasher.hash_one(msg.source.as_str()))
    }

    /// Takes one message; returns `false` when it was another source's
    /// copy of one already seen, and is dropped.
    pub fn push(&mut self, msg: CapturedMessage) -> bool {
        // Without de-duplication (an import) no fingerprint is ever
        // looked up: hashing every message's bytes for one would be waste.
        if self.config.dedup_window_ns > 0 {
            let (fp, source) = self.fingerprint(&msg);
            let remembered = self.recent.get(&fp).copied();
            if let Some((seen, seen_source)) = remembered
                && seen_source != source
                && (seen - msg.time_ns).abs() <= self.config.dedup_window_ns
            {
                self.duplicates += 1;
                return false;
            }
            // One capture time is remembered per fingerprint: the latest,
            // which later copies are nearest to. A retransmission captured
            // earlier but arriving later (another agent's path was slower)
            // must not put an old time in its place.
            if remembered.is_none_or(|(seen, _)| seen <= msg.time_ns) {
                self.recent.insert(fp, (msg.time_ns, source));
                self.recent_order.push_back((msg.time_ns, fp));
            }
        }
        self.latest_capture_ns = self.latest_capture_ns.max(msg.time_ns);
        self.watermark_ns = self.watermark_ns.max(msg.time_ns);
        self.forget_old();
        self.held.push(msg);
        true
    }

    /// Fingerprints older than both windows behind the latest capture time
    /// can no longer match a copy. Capture time, not the wall clock: an
    /// agent whose clock lags (or a replayed capture) still has its copies
    /// recognised.
    fn forget_old(&mut self) {
        let horizon = self
            .latest_capture_ns
            .saturating_sub(self.config.reorder_window_ns + self.config.dedup_window_ns);
        while let Some(&(t, fp)) = self.recent_order.front() {
            if t >= horizon {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.get(&fp).is_some_and(|(seen, _)| *seen == t) {
                self.recent.remove(&fp);
            }
        }
    }

    /// Messages whose reorder window has passed, in capture-time order
    /// (arrival order among equal times). `now_ns`, when given, is the
    /// wall clock of a live capture: it moves the watermark on when no
    /// traffic arrives.
    pub fn release(&mut self, now_ns: Option<i64>, out: &mut Vec<CapturedMessage>) {
        if let Some(now) = now_ns {
            self.watermark_ns = self.watermark_ns.max(now);
        }
        let ready_before = self
            .watermark_ns
            .saturating_sub(self.config.reorder_window_ns);
        while let Some(msg) = self.held.pop_captured_by(ready_before) {
            out.push(msg);
        }
    }

    /// End of input: everything held, in order.
    pub fn drain(&mut self, out: &mut Vec<CapturedMessage>) {
        while let Some(msg) = self.held.pop_captured_by(i64::MAX) {
            out.push(msg);
        }
    }
}

/// Held messages in (capture time, arrival) order. Nearly all arrive in
/// order and join the back of `in_order`. A late one joins the back of a
/// run of late ones it is in order with, or starts a run (up to
/// [`LATE_RUNS`]); only past those does it wait in `late`, keyed by
/// capture time and arrival number. Release merges them all.
/// (Concatenated captures, whose times restart with each file, make
/// nearly every message late, but in order with the ones before it:
/// inserting each into a queue's middle moved every message behind it,
/// and keying each in an ordered map cost a tenth of the collector.)
/// A snapshot holds them as one sequence in that order, as it always has.
#[derive(Default)]
struct Held {
    in_order: VecDeque<(u64, CapturedMessage)>,
    late_runs: Vec<VecDeque<(u64, CapturedMessage)>>,
    late: BTreeMap<(i64, u64), CapturedMessage>,
    next_arrival: u64,
}

/// Runs of late messages kept apart before the ordered map takes them.
const LATE_RUNS: usize = 4;

/// Where the first held message is.
#[derive(Clone, Copy)]
enum Place {
    InOrder,
    Run(usize),
    Late,
}

impl Held {
    fn len(&self) -> usize {
        self.in_order.len()
            + self.late_runs.iter().map(VecDeque::len).sum::<usize>()
            + self.late.len()
    }

    fn push(&mut self, msg: CapturedMessage) {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let in_order_after = |queue: &VecDeque<(u64, CapturedMessage)>| {
            queue
                .back()
                .is_none_or(|(_, last)| last.time_ns <= msg.time_ns)
        };
        if in_order_after(&self.in_order) {
            self.in_order.push_back((arrival, msg));
        } else if let Some(run) = self.late_runs.iter_mut().find(|run| in_order_after(run)) {
            run.push_back((arrival, msg));
        } else if self.late_runs.len() < LATE_RUNS {
            self.late_runs.push(VecDeque::from([(arrival, msg)]));
        } else {
            self.late.insert((msg.time_ns, arrival), msg);
        }
    }

    /// The first held message, if it was captured at or before `time_ns`.
    fn pop_captured_by(&mut self, time_ns: i64) -> Option<CapturedMessage> {
        let front =
            |queue: &VecDeque<(u64, CapturedMessage)>| queue.front().map(|(n, m)| (m.time_ns, *n));
        let mut first: Option<((i64, u64), Place)> = None;
        let mut consider = |key: Option<(i64, u64)>, place: Place| {
            if let Some(key) = key
                && first.is_none_or(|(best, _)| key < best)
            {
                first = Some((key, place));
            }
        };
        consider(front(&self.in_order), Place::InOrder);
        for (k, run) in self.late_runs.iter().enumerate() {
            consider(front(run), Place::Run(k));
        }
        consider(
            self.late.first_key_value().map(|(key, _)| *key),
            Place::Late,
        );
        let (key, place) = first?;
        if key.0 > time_ns {
            return None;
        }
        match place {
            Place::InOrder => self.in_order.pop_front().map(|(_, m)| m),
            Place::Run(k) => {
                let run = self.late_runs.get_mut(k)?;
                let msg = run.pop_front().map(|(_, m)| m);
                if run.is_empty() {
                    self.late_runs.swap_remove(k);
                }
                msg
            }
            Place::Late => self.late.pop_first().map(|(_, m)| m),
        }
    }

    fn in_capture_order(&self) -> Vec<&CapturedMessage> {
        let mut all: Vec<((i64, u64), &CapturedMessage)> = self
            .in_order
            .iter()
            .chain(self.late_runs.iter().flatten())
            .map(|(n, m)| ((m.time_ns, *n), m))
            .chain(self.late.iter().map(|(key, m)| (*key, m)))
            .collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        all.into_iter().map(|(_, m)| m).collect()
    }
}

impl serde::Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.in_capture_order())
    }
}

impl<'de> serde::Deserialize<'de> for Held {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut held = Held::default();
        for msg in Vec::<CapturedMessage>::deserialize(deserializer)? {
            // In order already: a late one (from a hand-made snapshot)
            // still finds its place.
            held.push(msg);
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipvault_schemas::{Direction, Transport};

    const MS: i64 = 1_000_000;

    fn msg(t_ms: i64, body: &str, source: &str) -> CapturedMessage {
        CapturedMessage {
            time_ns: t_ms * MS,
            source: source.into(),
            direction: Direction::In,
            transport: Transport::Udp,
            src: "192.0.2.1:5060".parse().unwrap(),
            dst: "192.0.2.2:5060".parse().unwrap(),
            raw: body.as_bytes().to_vec(),
        }
    }

    fn bodies(out: &[CapturedMessage]) -> Vec<&str> {
        out.iter()
            .map(|m| std::str::from_utf8(&m.raw).unwrap())
            .collect()
    }

    #[test]
    fn late_arrivals_within_the_window_are_put_in_capture_order() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        let mut out = Vec::new();
        a.push(msg(1_000, "request", "hep:1"));
        a.push(msg(1_050, "final response", "hep:1"));
        a.push(msg(1_020, "provisional", "hep:2"));
        a.release(None, &mut out);
        assert!(out.is_empty(), "all within 200 ms of the latest: held");
        a.push(msg(1_400, "later", "hep:1"));
        a.release(None, &mut out);
        assert_eq!(bodies(&out), ["request", "provisional", "final response"]);
        a.drain(&mut out);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn repeated_capture_times_come_out_by_time_then_arrival() {
        // Three copies of one capture, one after the other: each copy's
        // times repeat the first's, so nearly every message arrives late.
        let mut a = Arrivals::new(ArrivalConfig {
            reorder_window_ns: 1_000 * MS,
            dedup_window_ns: 0,
        });
        let mut pushed = Vec::new();
        for copy in 0..3 {
            for t in [10, 20, 20, 30, 40] {
                let body = format!("copy {copy} at {t} #{}", pushed.len());
                pushed.push((t, body.clone()));
                a.push(msg(t, &body, "pcap:x"));
            }
        }
        let mut out = Vec::new();
        a.release(Some(25 * MS + 1_000 * MS), &mut out);
        let mut expected = pushed.clone();
        expected.sort_by_key(|(t, _)| *t); // stable: arrival order among equal times
        let released: Vec<&str> = expected
            .iter()
            .filter(|(t, _)| *t <= 25)
            .map(|(_, b)| b.as_str())
            .collect();
        assert_eq!(bodies(&out), released, "released up to 25 ms");
        assert_eq!(a.held(), pushed.len() - released.len());
        a.drain(&mut out);
        let all: Vec<&str> = expected.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies(&out), all);
    }

    #[test]
    fn any_disorder_comes_out_by_time_then_arrival() {
        // Runs of late messages, more of them than are kept apart, and
        // times drawn at random, against a plain model: a list sorted by
        // (time, arrival) at each release.
        let window_ms = 50;
        let mut a = Arrivals::new(ArrivalConfig {
            reorder_window_ns: window_ms * MS,
            dedup_window_ns: 0,
        });
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut model: Vec<(i64, usize)> = Vec::new();
        let mut expected: Vec<String> = Vec::new();
        let mut latest = i64::MIN;
        let mut out = Vec::new();
        for i in 0..3_000usize {
            let t = match i % 500 {
                // Eight concatenated copies' worth of restarts...
                k if k < 100 => (i / 500) as i64 * 10 + k as i64,
                // ...and jitter.
                _ => 1_000 + random(400) as i64,
            };
            a.push(msg(t, &format!("#{i}"), "pcap:x"));
            model.push((t, i));
            latest = latest.max(t);
            if random(50) == 0 {
                a.release(None, &mut out);
                model.sort();
                let ready = model.partition_point(|(t, _)| *t <= latest - window_ms);
                expected.extend(model.drain(..ready).map(|(_, i)| format!("#{i}")));
                assert_eq!(bodies(&out), expected, "after message {i}");
            }
        }
        a.drain(&mut out);
        model.sort();
        expected.extend(model.drain(..).map(|(_, i)| format!("#{i}")));
        assert_eq!(bodies(&out), expected);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn a_snapshot_keeps_held_messages_as_one_sequence_in_capture_order() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        for (t, body) in [(100, "a"), (300, "c"), (200, "b"), (300, "d"), (150, "a2")] {
            a.push(msg(t, body, "hep:1"));
        }
        let bytes = postcard::to_stdvec(&a).unwrap();
        // The layout of the earlier single queue: a sequence of messages.
        let in_order: VecDeque<CapturedMessage> = ["a", "a2", "b", "c", "d"]
            .iter()
            .zip([100, 150, 200, 300, 300])
            .map(|(body, t)| msg(t, body, "hep:1"))
            .collect();
        assert_eq!(
            postcard::to_stdvec(&a.held).unwrap(),
            postcard::to_stdvec(&in_order).unwrap()
        );
        let mut restored: Arrivals = postcard::from_bytes(&bytes).unwrap();
        let mut out = Vec::new();
        restored.drain(&mut out);
        assert_eq!(bodies(&out), ["a", "a2", "b", "c", "d"]);
        restored.push(msg(120, "after restore", "hep:1"));
        restored.drain(&mut out);
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn the_wall_clock_releases_a_quiet_capture() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        let mut out = Vec::new();
        a.push(msg(1_000, "only", "tap"));
        a.release(Some(1_100 * MS), &mut out);
        assert!(out.is_empty());
        a.release(Some(1_300 * MS), &mut out);
        assert_eq!(bodies(&out), ["only"]);
    }

    #[test]
    fn a_packet_seen_by_two_capture_points_is_archived_once() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        assert!(a.push(msg(1_000, "INVITE", "tap")));
        assert!(!a.push(msg(1_003, "INVITE", "hep:2001")), "copy 3 ms later");
        assert_eq!(a.duplicates(), 1);
        // A retransmission (T1 = 500 ms later) is a packet of its own.
        assert!(a.push(msg(1_500, "INVITE", "tap")));
        // One source recording a frame twice (a capture on `any`) keeps both.
        assert!(a.push(msg(1_501, "INVITE", "tap")));
        // The same bytes between other addresses are another packet too.
        let mut relayed = msg(1_001, "INVITE", "tap");
        relayed.dst = "192.0.2.3:5060".parse().unwrap();
        assert!(a.push(relayed));
        let mut out = Vec::new();
        a.drain(&mut out);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn without_deduplication_copies_are_kept_and_no_fingerprint_is_remembered() {
        let mut a = Arrivals::new(ArrivalConfig {
            dedup_window_ns: 0,
            ..ArrivalConfig::default()
        });
        assert!(a.push(msg(1_000, "INVITE", "tap")));
        assert!(a.push(msg(1_003, "INVITE", "hep:2001")), "a copy is kept");
        assert_eq!(a.duplicates(), 0);
        assert!(a.recent.is_empty() && a.recent_order.is_empty());
        let mut out = Vec::new();
        a.drain(&mut out);
        assert_eq!(bodies(&out), ["INVITE", "INVITE"]);
    }

    #[test]
    fn an_earlier_retransmission_arriving_late_does_not_hide_a_copy() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        // Agent 44 saw the packet at 3.0 s; agent 42's capture of the
        // first transmission (1.0 s) reaches us only after it; then agent
        // 45's copy of the 3.0 s packet.
        assert!(a.push(msg(3_000, "MESSAGE", "hep:44")));
        assert!(
            a.push(msg(1_000, "MESSAGE", "hep:42")),
            "a packet of its own"
        );
        assert!(!a.push(msg(3_000, "MESSAGE", "hep:45")), "a copy of 44's");
        assert_eq!(a.duplicates(), 1);
    }

    #[test]
    fn copies_are_recognised_when_capture_clocks_lag_the_wall_clock() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        let mut out = Vec::new();
        a.push(msg(1_000, "first", "hep:1"));
        // The live wall clock is hours ahead of these capture times.
        a.release(Some(10_000_000 * MS), &mut out);
        assert_eq!(bodies(&out), ["first"]);
        assert!(a.push(msg(3_000, "INVITE", "hep:44")));
        assert!(!a.push(msg(3_000, "INVITE", "hep:45")));
    }

    #[test]
    fn fingerprints_are_forgotten_behind_the_windows() {
        let mut a = Arrivals::new(ArrivalConfig::default());
        for i in 0..10_000 {
            a.push(msg(i, &format!("m{i}"), "tap"));
        }
        assert!(
            a.recent.len() <= 301,
            "only the last 300 ms are remembered, got {}",
            a.recent.len()
        );
    }
}
