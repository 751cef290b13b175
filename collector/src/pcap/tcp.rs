//! TCP stream reassembly and SIP framing, sans-IO.
//!
//! Each direction of a connection is a flow ([`FlowKey`]). Segments are put
//! in sequence order: out-of-order segments wait in a per-flow buffer,
//! bytes seen before (retransmissions, overlaps) are dropped, a SYN sets
//! the initial sequence number and a capture that starts mid-connection
//! starts at the first segment seen. FIN (once every byte before it has
//! arrived) and RST end a flow.
//!
//! A hole that is not filled within [`TcpLimits::gap_timeout_ns`] of
//! capture time, or that makes the flow's buffer exceed
//! [`TcpLimits::max_flow_pending`], is skipped (`tcp-gap`); the stream then
//! resyncs at the next line that is a SIP start line. Memory held for all
//! flows is charged to a [`MemoryBudget`] shared with IP reassembly.
//!
//! The in-order bytes of a flow are judged by content: SIP (framed by
//! Content-Length with [`StreamFramer`]), HEP3 (framed with
//! [`HepStreamDecoder`]), TLS or something else. A flow seen from its SYN is
//! SIP if its first bytes are a SIP start line; a flow picked up
//! mid-connection is searched for a start line in its first
//! [`MID_STREAM_SEARCH`] bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

use sipvault_sip::{FramingError, StreamFramer};

use super::detect::{self, Verdict};
use super::reason;
use crate::hep::{HEP3_MAGIC, HEP3_MAX_LEN, HepStreamDecoder};

/// Skip counters by reason (keys are [`super::reason`] constants).
pub type Skips = BTreeMap<&'static str, u64>;

pub(crate) fn count(skips: &mut Skips, reason: &'static str) {
    *skips.entry(reason).or_insert(0) += 1;
}

/// A flow picked up mid-connection that shows no SIP start line within
/// this many bytes is not SIP.
pub const MID_STREAM_SEARCH: usize = 64 * 1024;

/// Bytes charged per flow on top of its buffers (map entry, state).
const FLOW_OVERHEAD: usize = 256;

/// How often (capture time) timeouts are checked.
const SWEEP_INTERVAL_NS: i64 = 1_000_000_000;

/// A closed flow is remembered this long, so that retransmissions after
/// FIN/RST are recognised instead of starting a new stream.
const CLOSED_LINGER_NS: i64 = 60_000_000_000;

/// Bytes held for reassembly across an import, with a hard limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget { limit, used: 0 }
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Charges `bytes` if they fit under the limit.
    pub(crate) fn try_reserve(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.limit => {
                self.used = total;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }
}

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowKey {
    pub fn reversed(self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// What the reassembler needs of a TCP segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment<'a> {
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

/// A unit framed out of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutput {
    /// One SIP message; `time_ns` is the capture time of the segment that
    /// completed it.
    Sip {
        flow: FlowKey,
        time_ns: i64,
        message: Vec<u8>,
    },
    /// One HEP3 packet from a HEP-over-TCP stream, to be decoded.
    Hep {
        flow: FlowKey,
        time_ns: i64,
        packet: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Largest SIP message framed; bigger ones are skipped.
    pub max_message: usize,
    /// Out-of-order bytes one flow may hold before its oldest hole is
    /// skipped.
    pub max_flow_pending: usize,
    /// A hole older than this (capture time) is skipped.
    pub gap_timeout_ns: i64,
    /// A flow without packets for this long is dropped.
    pub idle_timeout_ns: i64,
}

impl TcpLimits {
    /// Defaults for a given message size limit: a flow may buffer one
    /// message plus a window of segments out of order; holes wait 10 s
    /// (enough for several retransmission timeouts); idle flows go after
    /// 10 minutes.
    pub fn for_max_message(max_message: usize) -> Self {
        TcpLimits {
            max_message,
            max_flow_pending: max_message.max(64 * 1024).saturating_add(256 * 1024),
            gap_timeout_ns: 10_000_000_000,
            idle_timeout_ns: 600_000_000_000,
        }
    }
}

/// Where emitted units and skip counts go while a flow is worked on.
struct Sink<'a> {
    flow: FlowKey,
    time_ns: i64,
    max_message: usize,
    out: &'a mut VecDeque<StreamOutput>,
    skips: &'a mut Skips,
}

/// Searching a stream for the next SIP start line.
#[derive(Debug, Default)]
struct Search {
    /// Tail of the data searched so far that may be the beginning of a
    /// start line (at most [`detect::MAX_START_LINE`] bytes).
    carry: Vec<u8>,
    /// Whether the next byte begins a line.
    at_line_start: bool,
    /// Bytes still allowed before the flow is judged not SIP (None: no
    /// limit, the flow is known to be SIP).
    allowance: Option<usize>,
}

enum SearchResult {
    Found(usize),
    /// A possible start line begins here but is not complete yet.
    Partial(usize),
    NotFound,
}

/// Finds the first line start in `data` at which a SIP start line begins.
fn find_start_line(data: &[u8], at_line_start: bool) -> SearchResult {
    let first_line_end = || data.iter().position(|&b| b == b'\n').map(|i| i + 1);
    let mut candidate = if at_line_start {
        Some(0)
    } else {
        first_line_end()
    };
    while let Some(at) = candidate {
        let rest = &data[at..];
        if rest.is_empty() {
            return SearchResult::Partial(at);
        }
        match detect::start_line(rest) {
            Verdict::Sip => return SearchResult::Found(at),
            Verdict::NeedMore => return SearchResult::Partial(at),
            Verdict::NotSip => {
                candidate = rest.iter().position(|&b| b == b'\n').map(|i| at + i + 1);
            }
        }
    }
    SearchResult::NotFound
}

/// A flow known (or hoped) to carry SIP.
#[derive(Debug)]
struct SipStream {
    framer: StreamFramer,
    /// The bytes the framer holds, mirrored: when a message cannot be
    /// framed the framer drops them, and what follows the broken message
    /// must still be searched for the next start line.
    unframed: Vec<u8>,
    /// Some while looking for a start line instead of framing.
    search: Option<Search>,
}

/// The flow turned out not to be SIP.
struct NotSip;

impl SipStream {
    fn framing(max_message: usize) -> Self {
        SipStream {
            framer: StreamFramer::new(max_message),
            unframed: Vec::new(),
            search: None,
        }
    }

    fn searching(max_message: usize, allowance: Option<usize>) -> Self {
        SipStream {
            search: Some(Search {
                carry: Vec::new(),
                at_line_start: true,
                allowance,
            }),
            ..SipStream::framing(max_message)
        }
    }

    fn held(&self) -> usize {
        let search = self.search.as_ref().map_or(0, |s| s.carry.len());
        self.framer.buffered() + self.unframed.len() + search
    }

    /// Whether bytes of an unfinished message are held.
    fn mid_message(&self) -> bool {
        let search = self
            .search
            .as_ref()
            .is_some_and(|s| !detect::skip_crlf(&s.carry).is_empty());
        search || !detect::skip_crlf(&self.unframed).is_empty()
    }

    /// After a hole: whatever was buffered is lost; look for the next
    /// start line. A hole usually ends at a segment that starts a message,
    /// so the next byte is taken as a line start.
    fn resync(&mut self, max_message: usize) {
        *self = SipStream::searching(max_message, None);
    }

    fn feed(&mut self, data: &[u8], sink: &mut Sink<'_>) -> Result<(), NotSip> {
        let mut input: Cow<'_, [u8]> = Cow::Borrowed(data);
        loop {
            if let Some(search) = &mut self.search {
                let buffer: Cow<'_, [u8]> = if search.carry.is_empty() {
                    input
                } else {
                    let mut joined = std::mem::take(&mut search.carry);
                    joined.extend_from_slice(&input);
                    Cow::Owned(joined)
                };
                let consumed = match find_start_line(&buffer, search.at_line_start) {
                    SearchResult::Found(at) => {
                        self.search = None;
                        input = match buffer {
                            Cow::Borrowed(b) => Cow::Borrowed(&b[at..]),
                            Cow::Owned(mut v) => {
                                v.drain(..at);
                                Cow::Owned(v)
                            }
                        };
                        continue;
                    }
                    SearchResult::Partial(at) => {
                        search.carry = buffer[at..].to_vec();
                        search.at_line_start = true;
                        at
                    }
                    SearchResult::NotFound => {
                        search.at_line_start = buffer.last() == Some(&b'\n');
                        buffer.len()
                    }
                };
                if let Some(allowance) = &mut search.allowance {
                    *allowance = allowance.saturating_sub(consumed);
                    if *allowance == 0 {
                        return Err(NotSip);
                    }
                }
                return Ok(());
            }

            self.framer.push(&input);
            self.unframed.extend_from_slice(&input);
            match self.frame_all(sink) {
                Ok(()) => return Ok(()),
                Err(rest) => {
                    self.search = Some(Search {
                        carry: Vec::new(),
                        at_line_start: true,
                        allowance: None,
                    });
                    input = Cow::Owned(rest);
                }
            }
        }
    }

    /// Emits every complete message. On a framing error returns the bytes
    /// after the message that could not be framed.
    fn frame_all(&mut self, sink: &mut Sink<'_>) -> Result<(), Vec<u8>> {
        loop {
            match self.framer.next_message() {
                Ok(Some(message)) => {
                    self.sync_unframed();
                    sink.out.push_back(StreamOutput::Sip {
                        flow: sink.flow,
                        time_ns: sink.time_ns,
                        message,
                    });
                }
                Ok(None) => {
                    self.sync_unframed();
                    return Ok(());
                }
                Err(error) => {
                    let held = std::mem::take(&mut self.unframed);
                    let held = detect::skip_crlf(&held);
                    let first_line = held
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(held.len(), |i| i + 1);
                    // Skip the broken message's header section when it is
                    // known, at least its start line, so the search for
                    // the next message cannot find this one again.
                    let skip = match error {
                        FramingError::TooLarge { .. } => {
                            count(sink.skips, reason::OVERSIZE_MESSAGE);
                            first_line
                        }
                        FramingError::BadContentLength(_) | FramingError::MissingContentLength => {
                            count(sink.skips, reason::BAD_CONTENT_LENGTH);
                            self.framer
                                .failed_head()
                                .map_or(0, <[u8]>::len)
                                .max(first_line)
                        }
                    };
                    let rest = held.get(skip..).unwrap_or_default().to_vec();
                    self.framer = StreamFramer::new(sink.max_message);
                    return Err(rest);
                }
            }
        }
    }

    /// Trims the mirror to what the framer still holds.
    fn sync_unframed(&mut self) {
        let keep = self.framer.buffered();
        if self.unframed.len() > keep {
            self.unframed.drain(..self.unframed.len() - keep);
        }
    }
}

/// What a flow's bytes turned out to be.
#[derive(Debug)]
enum Content {
    /// Not judged yet; `probe` holds the first bytes.
    Undecided {
        probe: Vec<u8>,
        from_syn: bool,
    },
    Sip(SipStream),
    Hep(HepStreamDecoder),
    /// Everything on this flow is skipped under this reason.
    Ignored(&'static str),
}

impl Content {
    fn held(&self) -> usize {
        match self {
            Content::Undecided { probe, .. } => probe.len(),
            Content::Sip(stream) => stream.held(),
            Content::Hep(decoder) => decoder.buffered(),
            Content::Ignored(_) => 0,
        }
    }

    fn feed(&mut self, data: &[u8], sink: &mut Sink<'_>) {
        match self {
            Content::Undecided { probe, from_syn } => {
                probe.extend_from_slice(data);
                let from_syn = *from_syn;
                let probe = std::mem::take(probe);
                self.decide(probe, from_syn, sink);
            }
            Content::Sip(stream) => {
                if stream.feed(data, sink).is_err() {
                    *self = Content::Ignored(reason::NOT_SIP);
                }
            }
            Content::Hep(decoder) => {
                decoder.push(data);
                loop {
                    match decoder.next_packet() {
                        Ok(Some(packet)) => sink.out.push_back(StreamOutput::Hep {
                            flow: sink.flow,
                            time_ns: sink.time_ns,
                            packet,
                        }),
                        Ok(None) => break,
                        Err(_) => {
                            *self = Content::Ignored(reason::HEP_UNDECODABLE);
                            break;
                        }
                    }
                }
            }
            Content::Ignored(_) => {}
        }
    }

    /// Judges a flow by its first bytes (`probe`), or keeps waiting.
    fn decide(&mut self, probe: Vec<u8>, from_syn: bool, sink: &mut Sink<'_>) {
        let head = detect::skip_crlf(&probe);
        if head.is_empty() {
            // Only keep-alives so far: nothing worth holding.
            *self = Content::Undecided {
                probe: Vec::new(),
                from_syn,
            };
            return;
        }
        let maybe_hep = HEP3_MAGIC.starts_with(&head[..head.len().min(HEP3_MAGIC.len())]);
        if maybe_hep && head.len() < HEP3_MAGIC.len() {
            *self = Content::Undecided { probe, from_syn };
            return;
        }
        if maybe_hep {
            *self = Content::Hep(HepStreamDecoder::new(HEP3_MAX_LEN));
            self.feed(head, sink);
            return;
        }
        if detect::looks_like_tls(head) {
            *self = Content::Ignored(reason::TLS);
            return;
        }
        if !from_syn {
            *self = Content::Sip(SipStream::searching(
                sink.max_message,
                Some(MID_STREAM_SEARCH),
            ));
            self.feed(&probe, sink);
            return;
        }
        match detect::start_line(head) {
            Verdict::Sip => {
                *self = Content::Sip(SipStream::framing(sink.max_message));
                self.feed(&probe, sink);
            }
            Verdict::NeedMore => *self = Content::Undecided { probe, from_syn },
            Verdict::NotSip => *self = Content::Ignored(reason::NOT_SIP),
        }
    }

    /// After a hole: buffered bytes are lost; resume at the next start line.
    fn resync(&mut self, max_message: usize) {
        match self {
            Content::Undecided { probe, from_syn } => {
                probe.clear();
                *from_syn = false;
            }
            Content::Sip(stream) => stream.resync(max_message),
            // HEP3 has no resync point: start over and hope the next byte
            // begins a packet (the decoder gives up otherwise).
            Content::Hep(decoder) => *decoder = HepStreamDecoder::new(HEP3_MAX_LEN),
            Content::Ignored(_) => {}
        }
    }

    /// The flow ended; count a message cut off by the end.
    fn finish(&mut self, skips: &mut Skips) {
        let cut_off = match self {
            Content::Undecided { probe, .. } => {
                let head = detect::skip_crlf(probe);
                !head.is_empty() && detect::start_line(head) != Verdict::NotSip
            }
            Content::Sip(stream) => stream.mid_message(),
            Content::Hep(decoder) => decoder.buffered() > 0,
            Content::Ignored(_) => false,
        };
        if cut_off {
            count(skips, reason::INCOMPLETE_MESSAGE);
        }
        *self = Content::Ignored(reason::NOT_SIP);
    }
}

#[derive(Debug)]
struct Flow {
    /// Sequence number of stream offset 0.
    base_seq: u32,
    /// Stream offset of the next byte expected.
    next_off: u64,
    /// Stream offset of the FIN, once seen.
    fin_off: Option<u64>,
    /// Out-of-order data by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// Capture time at which the flow started waiting for a hole.
    stalled_since: Option<i64>,
    content: Content,
    /// Bytes of `content` charged to the budget.
    content_charge: usize,
    last_seen_ns: i64,
    /// After FIN or RST: only retransmissions or a new SYN expected.
    closed: bool,
}

impl Flow {
    fn new(data_seq: u32, from_syn: bool, now_ns: i64) -> Self {
        Flow {
            base_seq: data_seq,
            next_off: 0,
            fin_off: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            stalled_since: None,
            content: Content::Undecided {
                probe: Vec::new(),
                from_syn,
            },
            content_charge: 0,
            last_seen_ns: now_ns,
            closed: false,
        }
    }

    /// Stream offset of sequence number `seq`, relative to the next
    /// expected byte (sequence numbers wrap; they are compared within
    /// +-2 GiB as TCP does). May be negative for bytes before offset 0.
    fn offset_of(&self, seq: u32) -> i128 {
        let next_seq = self.base_seq.wrapping_add(self.next_off as u32);
        let delta = i128::from(seq.wrapping_sub(next_seq) as i32);
        i128::from(self.next_off) + delta
    }

    /// Restarts the flow for a new connection (SYN) or a new mid-stream
    /// pick-up, releasing its buffers.
    fn restart(&mut self, data_seq: u32, from_syn: bool, now_ns: i64, budget: &mut MemoryBudget) {
        budget.release(self.pending_bytes + self.content_charge);
        *self = Flow::new(data_seq, from_syn, now_ns);
    }

    /// Puts the payload of a segment starting at `data_seq` in order.
    fn place(
        &mut self,
        data_seq: u32,
        payload: &[u8],
        limits: &TcpLimits,
        budget: &mut MemoryBudget,
        sink: &mut Sink<'_>,
    ) {
        if let Content::Ignored(why) = self.content {
            // Nothing of this flow is kept, so there is nothing to order.
            count(sink.skips, why);
            return;
        }
        let end = self.offset_of(data_seq) + payload.len() as i128;
        loop {
            let start = self.offset_of(data_seq);
            let next = i128::from(self.next_off);
            if end <= next {
                count(sink.skips, reason::TCP_RETRANSMISSION);
                return;
            }
            if start <= next {
                let skip = usize::try_from(next - start).unwrap_or(0);
                self.deliver(&payload[skip..], limits, budget, sink);
                self.drain_pending(limits, budget, sink);
                return;
            }
            let Ok(start) = u64::try_from(start) else {
                return;
            };
            let too_much =
                self.pending_bytes.saturating_add(payload.len()) > limits.max_flow_pending;
            if too_much && !self.pending.is_empty() {
                // The oldest hole is not going to be filled in time.
                self.skip_gap(limits, budget, sink);
                continue;
            }
            if too_much || !budget.try_reserve(payload.len()) {
                count(sink.skips, reason::REASSEMBLY_MEMORY);
                return;
            }
            self.pending_bytes += payload.len();
            if let Some(replaced) = self.pending.insert(start, payload.to_vec()) {
                // Same start seen before: keep the longer copy.
                if replaced.len() > payload.len() {
                    self.pending.insert(start, replaced);
                    self.pending_bytes -= payload.len();
                    budget.release(payload.len());
                } else {
                    self.pending_bytes -= replaced.len();
                    budget.release(replaced.len());
                }
            }
            self.stalled_since.get_or_insert(sink.time_ns);
            return;
        }
    }

    /// Hands in-order bytes to the content and charges what it holds.
    fn deliver(
        &mut self,
        data: &[u8],
        limits: &TcpLimits,
        budget: &mut MemoryBudget,
        sink: &mut Sink<'_>,
    ) {
        self.next_off += data.len() as u64;
        if let Content::Ignored(why) = self.content {
            count(sink.skips, why);
            return;
        }
        self.content.feed(data, sink);
        if let Content::Ignored(why) = self.content {
            count(sink.skips, why);
        }
        let held = self.content.held();
        if held > self.content_charge {
            if budget.try_reserve(held - self.content_charge) {
                self.content_charge = held;
            } else {
                count(sink.skips, reason::REASSEMBLY_MEMORY);
                self.content.resync(limits.max_message);
                budget.release(self.content_charge);
                self.content_charge = 0;
            }
        } else {
            budget.release(self.content_charge - held);
            self.content_charge = held;
        }
    }

    /// Delivers buffered segments that have become in order.
    fn drain_pending(
        &mut self,
        limits: &TcpLimits,
        budget: &mut MemoryBudget,
        sink: &mut Sink<'_>,
    ) {
        let mut progressed = false;
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start > self.next_off {
                break;
            }
            let data = entry.remove();
            self.pending_bytes -= data.len();
            budget.release(data.len());
            progressed = true;
            let skip = usize::try_from(self.next_off - start).unwrap_or(usize::MAX);
            if let Some(fresh) = data.get(skip..).filter(|d| !d.is_empty()) {
                self.deliver(fresh, limits, budget, sink);
            }
        }
        if self.pending.is_empty() {
            self.stalled_since = None;
        } else if progressed {
            self.stalled_since = Some(sink.time_ns);
        }
    }

    /// Gives up on the oldest hole: jumps to the next buffered data.
    fn skip_gap(&mut self, limits: &TcpLimits, budget: &mut MemoryBudget, sink: &mut Sink<'_>) {
        let Some((&start, _)) = self.pending.first_key_value() else {
            return;
        };
        count(sink.skips, reason::TCP_GAP);
        self.next_off = start.max(self.next_off);
        self.content.resync(limits.max_message);
        self.drain_pending(limits, budget, sink);
    }

    /// Closes the flow once every byte before the FIN has arrived.
    fn close_if_done(&mut self, budget: &mut MemoryBudget, sink: &mut Sink<'_>) {
        if self.fin_off.is_some_and(|fin| self.next_off >= fin) {
            self.close(budget, sink.skips);
        }
    }

    fn close(&mut self, budget: &mut MemoryBudget, skips: &mut Skips) {
        if !self.pending.is_empty() {
            count(skips, reason::TCP_GAP);
        }
        self.content.finish(skips);
        budget.release(self.pending_bytes + self.content_charge);
        self.pending.clear();
        self.pending_bytes = 0;
        self.content_charge = 0;
        self.stalled_since = None;
        self.closed = true;
    }

    /// End of capture or idle: skip every hole, then close.
    fn flush(&mut self, limits: &TcpLimits, budget: &mut MemoryBudget, sink: &mut Sink<'_>) {
        while !self.pending.is_empty() {
            self.skip_gap(limits, budget, sink);
        }
        self.close(budget, sink.skips);
    }
}

/// Reassembles TCP flows and frames SIP (and HEP3) out of them.
#[derive(Debug)]
pub struct TcpReassembler {
    flows: HashMap<FlowKey, Flow>,
    limits: TcpLimits,
    out: VecDeque<StreamOutput>,
    skips: Skips,
    /// Latest capture time seen (captures are not strictly ordered).
    now_ns: i64,
    next_sweep_ns: Option<i64>,
}

impl TcpReassembler {
    pub fn new(limits: TcpLimits) -> Self {
        TcpReassembler {
            flows: HashMap::new(),
            limits,
            out: VecDeque::new(),
            skips: Skips::new(),
            now_ns: i64::MIN,
            next_sweep_ns: None,
        }
    }

    /// Skip counters so far.
    pub fn skipped(&self) -> &Skips {
        &self.skips
    }

    /// Flows currently tracked (open or recently closed).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// The next framed unit, in the order they were completed.
    pub fn poll(&mut self) -> Option<StreamOutput> {
        self.out.pop_front()
    }

    /// Takes one captured segment of `flow`.
    pub fn segment(
        &mut self,
        time_ns: i64,
        flow: FlowKey,
        segment: &Segment<'_>,
        budget: &mut MemoryBudget,
    ) {
        self.advance_clock(time_ns, budget);
        if segment.rst {
            // RST ends both directions; data on a RST is not delivered.
            for key in [flow, flow.reversed()] {
                if let Some(state) = self.flows.get_mut(&key) {
                    state.close(budget, &mut self.skips);
                    state.last_seen_ns = time_ns;
                }
            }
            return;
        }
        let payload = segment.payload;
        let data_seq = if segment.syn {
            segment.seq.wrapping_add(1)
        } else {
            segment.seq
        };
        let TcpReassembler {
            flows,
            limits,
            out,
            skips,
            ..
        } = self;
        let mut sink = Sink {
            flow,
            time_ns,
            max_message: limits.max_message,
            out,
            skips,
        };
        let state = match flows.get_mut(&flow) {
            Some(state) => state,
            // A bare ACK or FIN of a flow never seen carries nothing.
            None if !segment.syn && payload.is_empty() => return,
            None => {
                if !budget.try_reserve(FLOW_OVERHEAD) {
                    count(sink.skips, reason::REASSEMBLY_MEMORY);
                    return;
                }
                flows
                    .entry(flow)
                    .or_insert_with(|| Flow::new(data_seq, segment.syn, time_ns))
            }
        };
        state.last_seen_ns = time_ns;
        if segment.syn {
            // A SYN with a new ISN is a new connection on the same ports;
            // a retransmitted SYN changes nothing.
            if state.base_seq != data_seq || state.closed {
                if !state.closed {
                    state.close(budget, sink.skips);
                }
                state.restart(data_seq, true, time_ns, budget);
            }
        } else if state.closed {
            if payload.is_empty() {
                return;
            }
            let end = state.offset_of(data_seq) + payload.len() as i128;
            if end <= i128::from(state.next_off) {
                count(sink.skips, reason::TCP_RETRANSMISSION);
                return;
            }
            // Data after the end: the ports were reused without a SYN seen.
            state.restart(data_seq, false, time_ns, budget);
        }
        if !payload.is_empty() {
            state.place(data_seq, payload, limits, budget, &mut sink);
        }
        if segment.fin && !state.closed {
            let fin = state.offset_of(data_seq) + payload.len() as i128;
            if let Ok(fin) = u64::try_from(fin) {
                state.fin_off = Some(fin);
            }
        }
        if !state.closed {
            state.close_if_done(budget, &mut sink);
        }
    }

    /// End of capture: skips every remaining hole, counts cut-off
    /// messages and forgets all flows.
    pub fn finish(&mut self, budget: &mut MemoryBudget) {
        let now = self.now_ns;
        let TcpReassembler {
            flows,
            limits,
            out,
            skips,
            ..
        } = self;
        for (key, mut state) in flows.drain() {
            let mut sink = Sink {
                flow: key,
                time_ns: now,
                max_message: limits.max_message,
                out,
                skips,
            };
            if !state.closed {
                state.flush(limits, budget, &mut sink);
            }
            budget.release(FLOW_OVERHEAD);
        }
    }

    /// Moves capture time forward and, once a second, times out holes and
    /// idle flows.
    fn advance_clock(&mut self, time_ns: i64, budget: &mut MemoryBudget) {
        self.now_ns = self.now_ns.max(time_ns);
        let now = self.now_ns;
        match self.next_sweep_ns {
            Some(due) if now < due => return,
            None => {
                self.next_sweep_ns = Some(now.saturating_add(SWEEP_INTERVAL_NS));
                return;
            }
            Some(_) => self.next_sweep_ns = Some(now.saturating_add(SWEEP_INTERVAL_NS)),
        }
        let TcpReassembler {
            flows,
            limits,
            out,
            skips,
            ..
        } = self;
        flows.retain(|key, state| {
            let mut sink = Sink {
                flow: *key,
                time_ns: now,
                max_message: limits.max_message,
                out: &mut *out,
                skips: &mut *skips,
            };
            let idle = now.saturating_sub(state.last_seen_ns);
            if state.closed {
                let keep = idle < CLOSED_LINGER_NS;
                if !keep {
                    budget.release(FLOW_OVERHEAD);
                }
                return keep;
            }
            if idle >= limits.idle_timeout_ns {
                state.flush(limits, budget, &mut sink);
                budget.release(FLOW_OVERHEAD);
                return false;
            }
            if state
                .stalled_since
                .is_some_and(|since| now.saturating_sub(since) >= limits.gap_timeout_ns)
            {
                while !state.pending.is_empty() {
                    state.skip_gap(limits, budget, &mut sink);
                }
                state.close_if_done(budget, &mut sink);
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        Call-ID: a@b\r\nCSeq: 1 INVITE\r\nContent-Length: 5\r\n\r\nv=0\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\nCall-ID: a@b\r\nCSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";

    fn key() -> FlowKey {
        FlowKey {
            src: "192.0.2.1:5060".parse().expect("addr"),
            dst: "192.0.2.2:5060".parse().expect("addr"),
        }
    }

    struct Harness {
        tcp: TcpReassembler,
        budget: MemoryBudget,
        time: i64,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                tcp: TcpReassembler::new(TcpLimits::for_max_message(1 << 20)),
                budget: MemoryBudget::new(64 << 20),
                time: 1_000_000_000,
            }
        }

        fn syn(&mut self, isn: u32) {
            self.send(Segment {
                seq: isn,
                syn: true,
                ..Segment::default()
            });
        }

        fn data(&mut self, seq: u32, payload: &[u8]) {
            self.send(Segment {
                seq,
                payload,
                ..Segment::default()
            });
        }

        fn send(&mut self, segment: Segment<'_>) {
            self.time += 1_000_000;
            self.tcp
                .segment(self.time, key(), &segment, &mut self.budget);
        }

        fn messages(&mut self) -> Vec<Vec<u8>> {
            std::iter::from_fn(|| self.tcp.poll())
                .filter_map(|o| match o {
                    StreamOutput::Sip { message, .. } => Some(message),
                    StreamOutput::Hep { .. } => None,
                })
                .collect()
        }

        fn skipped(&self, reason: &str) -> u64 {
            self.tcp.skipped().get(reason).copied().unwrap_or(0)
        }
    }

    fn stream() -> Vec<u8> {
        [INVITE, OK].concat()
    }

    #[test]
    fn in_order_segments_and_two_messages_in_one_segment() {
        let mut h = Harness::new();
        h.syn(1000);
        h.data(1001, &stream());
        assert_eq!(h.messages(), vec![INVITE.to_vec(), OK.to_vec()]);
    }

    #[test]
    fn message_split_over_five_segments() {
        let mut h = Harness::new();
        let body = vec![b'X'; 65_536];
        let mut message = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: big\r\nCSeq: 1 INVITE\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        message.extend_from_slice(&body);
        h.syn(7);
        let mut seq = 8u32;
        for piece in message.chunks(message.len().div_ceil(5)) {
            assert!(h.messages().is_empty());
            h.data(seq, piece);
            seq = seq.wrapping_add(piece.len() as u32);
        }
        assert_eq!(h.messages(), vec![message]);
    }

    #[test]
    fn out_of_order_retransmitted_and_overlapping_segments() {
        let mut h = Harness::new();
        let data = stream();
        h.syn(u32::MAX - 10); // sequence numbers wrap inside the stream
        let base = (u32::MAX - 10).wrapping_add(1);
        let at = |off: usize| base.wrapping_add(off as u32);
        h.data(at(40), &data[40..90]);
        h.data(at(80), &data[80..]); // overlaps the previous one
        h.data(at(40), &data[40..90]); // retransmission of buffered data
        assert!(h.messages().is_empty());
        h.data(at(0), &data[..50]);
        h.data(at(0), &data[..50]); // retransmission of delivered data
        h.data(at(10), &data[10..30]); // old bytes inside the stream
        assert_eq!(h.messages(), vec![INVITE.to_vec(), OK.to_vec()]);
        assert_eq!(h.skipped(reason::TCP_RETRANSMISSION), 2);
        assert_eq!(h.skipped(reason::TCP_GAP), 0);
    }

    #[test]
    fn mid_stream_capture_starts_at_first_segment() {
        let mut h = Harness::new();
        let data = stream();
        // The capture begins inside the INVITE's body.
        h.data(500, &data[INVITE.len() - 3..]);
        assert_eq!(h.messages(), vec![OK.to_vec()]);
    }

    #[test]
    fn gap_is_skipped_after_timeout_and_stream_resyncs() {
        let mut h = Harness::new();
        let data = [INVITE, OK, INVITE].concat();
        h.syn(0);
        h.data(1, &data[..20]);
        // Bytes 20..30 are never captured.
        h.data(31, &data[30..]);
        assert!(h.messages().is_empty());
        h.time += 11_000_000_000;
        h.data(1, &data[..5]); // any packet moves the clock
        assert_eq!(h.messages(), vec![OK.to_vec(), INVITE.to_vec()]);
        assert_eq!(h.skipped(reason::TCP_GAP), 1);
        assert_eq!(h.budget.used(), FLOW_OVERHEAD);
    }

    #[test]
    fn gap_is_skipped_at_end_of_capture() {
        let mut h = Harness::new();
        let data = [INVITE, OK].concat();
        h.syn(0);
        h.data(1, &data[..20]);
        h.data(1 + INVITE.len() as u32, OK);
        h.tcp.finish(&mut h.budget);
        assert_eq!(h.messages(), vec![OK.to_vec()]);
        assert_eq!(h.skipped(reason::TCP_GAP), 1);
        assert_eq!(h.budget.used(), 0);
    }

    #[test]
    fn fin_and_rst_end_flows() {
        let mut h = Harness::new();
        h.syn(0);
        h.send(Segment {
            seq: 1,
            fin: true,
            payload: &INVITE[..30],
            ..Segment::default()
        });
        assert_eq!(h.skipped(reason::INCOMPLETE_MESSAGE), 1);
        // Retransmitted data after FIN is recognised as such.
        h.data(1, &INVITE[..30]);
        assert_eq!(h.skipped(reason::TCP_RETRANSMISSION), 1);
        // Reused ports: a new SYN starts over.
        h.syn(5000);
        h.data(5001, INVITE);
        assert_eq!(h.messages(), vec![INVITE.to_vec()]);
        h.send(Segment {
            seq: 5001 + INVITE.len() as u32,
            rst: true,
            ..Segment::default()
        });
        assert_eq!(h.budget.used(), FLOW_OVERHEAD);
    }

    #[test]
    fn non_sip_and_tls_flows_are_ignored() {
        let mut h = Harness::new();
        h.syn(0);
        h.data(1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        h.data(28, b"more");
        assert_eq!(h.skipped(reason::NOT_SIP), 2);
        let mut tls = Harness::new();
        tls.syn(0);
        tls.data(1, b"\x16\x03\x01\x00\x05hello");
        assert_eq!(tls.skipped(reason::TLS), 1);
        assert!(tls.messages().is_empty());
    }

    #[test]
    fn oversize_and_unframable_messages_are_skipped_and_stream_resyncs() {
        let mut h = Harness {
            tcp: TcpReassembler::new(TcpLimits::for_max_message(200)),
            ..Harness::new()
        };
        let big = format!(
            "MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 300\r\n\r\n{}\r\n",
            "Y".repeat(298)
        );
        let no_length = "OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n";
        let data = [big.as_bytes(), no_length.as_bytes(), OK].concat();
        h.syn(0);
        h.data(1, &data);
        assert_eq!(h.messages(), vec![OK.to_vec()]);
        assert_eq!(h.skipped(reason::OVERSIZE_MESSAGE), 1);
        assert_eq!(h.skipped(reason::BAD_CONTENT_LENGTH), 1);
    }

    #[test]
    fn memory_limits_hold() {
        let mut h = Harness::new();
        h.budget = MemoryBudget::new(FLOW_OVERHEAD + 100);
        h.syn(0);
        h.data(1000, &[b'A'; 80]);
        h.data(2000, &[b'B'; 80]);
        assert_eq!(h.skipped(reason::REASSEMBLY_MEMORY), 1);
        assert!(h.budget.used() <= h.budget.limit());
    }

    #[test]
    fn hep3_over_tcp_is_framed() {
        let mut h = Harness::new();
        let packet = crate::hep::encode_hep3(
            "10.0.0.1:5060".parse().expect("addr"),
            "10.0.0.2:5060".parse().expect("addr"),
            1,
            2,
            3,
            None,
            OK,
        );
        let data = [packet.as_slice(), packet.as_slice()].concat();
        h.syn(0);
        h.data(1, &data[..10]);
        h.data(11, &data[10..]);
        let heps = std::iter::from_fn(|| h.tcp.poll())
            .filter(|o| matches!(o, StreamOutput::Hep { .. }))
            .count();
        assert_eq!(heps, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of segments: no panic, memory within the budget,
        /// no more message bytes out than payload bytes in.
        #[test]
        fn arbitrary_segments_stay_bounded(
            segments in prop::collection::vec(
                (0u32..4096, any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)),
                0..60,
            ),
            seed_sip in any::<bool>(),
        ) {
            let mut tcp = TcpReassembler::new(TcpLimits {
                max_message: 2048,
                max_flow_pending: 4096,
                gap_timeout_ns: 5,
                idle_timeout_ns: 50,
            });
            let mut budget = MemoryBudget::new(16 * 1024);
            let mut input = 0usize;
            let mut output = 0usize;
            let base = 1_000_000u32;
            for (i, (offset, flags, mut payload)) in segments.into_iter().enumerate() {
                if seed_sip && i % 3 == 0 {
                    payload.splice(0..0, stream());
                }
                input += payload.len();
                let segment = Segment {
                    seq: base.wrapping_add(offset),
                    syn: flags & 1 != 0,
                    fin: flags & 2 != 0,
                    rst: flags & 4 != 0 && flags & 8 != 0,
                    payload: &payload,
                };
                let flow = if flags & 16 != 0 { key().reversed() } else { key() };
                tcp.segment(i as i64 * 700_000_000, flow, &segment, &mut budget);
                prop_assert!(budget.used() <= budget.limit());
                while let Some(o) = tcp.poll() {
                    if let StreamOutput::Sip { message, .. } = o {
                        prop_assert!(message.len() <= 2048);
                        output += message.len();
                    }
                }
            }
            tcp.finish(&mut budget);
            while let Some(o) = tcp.poll() {
                if let StreamOutput::Sip { message, .. } = o {
                    output += message.len();
                }
            }
            prop_assert!(output <= input);
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
