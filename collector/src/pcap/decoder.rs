//! The packet-level decoder, sans-IO: captured frames in, SIP messages out.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use etherparse::err::ip::SliceError;
use etherparse::{IpSlice, Ipv6ExtensionSlice, LenSource, TcpSlice, UdpSlice};
use sipvault_schemas::{CapturedMessage, Direction, Transport};

use super::detect::{self, Verdict};
use super::ipfrag::{Defragmenter, Fragment, FragmentKey};
use super::link::{self, Inner};
use super::tcp::{
    FlowKey, MemoryBudget, Segment, Skips, StreamOutput, TcpLimits, TcpReassembler, count,
};
use super::{ImportOptions, reason, sctp};
use crate::hep::{self, HepError, HepPacket};

/// Encapsulations deeper than this are not followed (a GRE packet can
/// claim to contain itself forever).
const MAX_TUNNEL_DEPTH: usize = 8;

/// How often (capture time) incomplete fragment sets are timed out.
const FRAGMENT_SWEEP_NS: i64 = 1_000_000_000;

mod ip_proto {
    pub const IPV4_IN_IP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_IN_IP: u8 = 41;
    pub const GRE: u8 = 47;
    pub const SCTP: u8 = 132;
}

/// Turns captured frames into [`CapturedMessage`]s.
///
/// Feed every record of a capture with [`PacketDecoder::handle_packet`] in
/// file order, take messages with [`PacketDecoder::poll_message`], and call
/// [`PacketDecoder::finish`] at the end of the file (it flushes what
/// reassembly still holds). The decoder owns IP-fragment and TCP
/// reassembly state; it reads no clock (capture time drives timeouts).
#[derive(Debug)]
pub struct PacketDecoder {
    source: String,
    max_message: usize,
    budget: MemoryBudget,
    fragments: Defragmenter,
    tcp: TcpReassembler,
    skips: Skips,
    out: VecDeque<CapturedMessage>,
    now_ns: i64,
    next_fragment_sweep_ns: Option<i64>,
}

/// Source and destination of a transport payload.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    src: IpAddr,
    dst: IpAddr,
}

impl PacketDecoder {
    pub fn new(opts: &ImportOptions) -> Self {
        PacketDecoder {
            source: opts.source.clone(),
            max_message: opts.max_message,
            budget: MemoryBudget::new(opts.max_reassembly_bytes),
            fragments: Defragmenter::default(),
            tcp: TcpReassembler::new(TcpLimits::for_max_message(opts.max_message)),
            skips: Skips::new(),
            out: VecDeque::new(),
            now_ns: i64::MIN,
            next_fragment_sweep_ns: None,
        }
    }

    /// Decodes one captured frame of `link_type` (a LINKTYPE_* value).
    pub fn handle_packet(&mut self, time_ns: i64, link_type: u32, frame: &[u8]) {
        self.advance_clock(time_ns);
        match link::ip_packet(link_type, frame) {
            Ok(packet) => self.handle_ip(time_ns, packet, 0),
            Err(why) => count(&mut self.skips, why),
        }
    }

    /// The next SIP message, in the order they were found.
    pub fn poll_message(&mut self) -> Option<CapturedMessage> {
        self.out.pop_front()
    }

    /// End of capture: flushes TCP streams (skipping holes that never
    /// filled) and drops incomplete fragment sets, counting both.
    pub fn finish(&mut self) {
        self.tcp.finish(&mut self.budget);
        self.take_stream_output();
        self.fragments.finish(&mut self.budget, &mut self.skips);
    }

    /// Everything skipped so far, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for (why, n) in self.skips.iter().chain(self.tcp.skipped()) {
            *all.entry((*why).to_owned()).or_insert(0) += n;
        }
        all
    }

    /// Bytes currently held for reassembly.
    pub fn reassembly_bytes(&self) -> usize {
        self.budget.used()
    }

    /// Counts a skip found outside the decoder (file-level damage).
    pub(crate) fn count_skip(&mut self, why: &'static str) {
        count(&mut self.skips, why);
    }

    fn advance_clock(&mut self, time_ns: i64) {
        self.now_ns = self.now_ns.max(time_ns);
        let due = *self
            .next_fragment_sweep_ns
            .get_or_insert(self.now_ns.saturating_add(FRAGMENT_SWEEP_NS));
        if self.now_ns >= due {
            self.fragments
                .expire(self.now_ns, &mut self.budget, &mut self.skips);
            self.next_fragment_sweep_ns = Some(self.now_ns.saturating_add(FRAGMENT_SWEEP_NS));
        }
    }

    fn handle_ip(&mut self, time_ns: i64, packet: &[u8], depth: usize) {
        if depth > MAX_TUNNEL_DEPTH {
            count(&mut self.skips, reason::TUNNEL_DEPTH);
            return;
        }
        let repaired;
        let ip = match IpSlice::from_slice(packet) {
            Ok(ip) => ip,
            Err(error) => match length_filled_in(packet) {
                // Captured before the NIC filled in the length (TCP
                // segmentation offload): trust the captured length.
                Some(fixed) => {
                    repaired = fixed;
                    match IpSlice::from_slice(&repaired) {
                        Ok(ip) => ip,
                        Err(error) => return self.ip_error(&error),
                    }
                }
                None => return self.ip_error(&error),
            },
        };
        let ends = Endpoints {
            src: ip.source_addr(),
            dst: ip.destination_addr(),
        };
        let payload = ip.payload();
        let protocol = payload.ip_number.0;
        if !payload.fragmented {
            self.handle_transport(time_ns, ends, protocol, payload.payload, depth);
            return;
        }
        let fragment = match &ip {
            IpSlice::Ipv4(v4) => {
                let header = v4.header();
                Some((
                    u32::from(header.identification()),
                    header.fragments_offset().byte_offset(),
                    header.more_fragments(),
                ))
            }
            IpSlice::Ipv6(v6) => v6
                .extensions()
                .clone()
                .into_iter()
                .find_map(|ext| match ext {
                    Ipv6ExtensionSlice::Fragment(f) => Some((
                        f.identification(),
                        f.fragment_offset().byte_offset(),
                        f.more_fragments(),
                    )),
                    _ => None,
                }),
        };
        let Some((identification, offset, more_fragments)) = fragment else {
            count(&mut self.skips, reason::MALFORMED_PACKET);
            return;
        };
        let fragment = Fragment {
            key: FragmentKey {
                src: ends.src,
                dst: ends.dst,
                identification,
                protocol,
            },
            offset: usize::from(offset),
            more_fragments,
            payload: payload.payload,
        };
        if let Some(whole) =
            self.fragments
                .add(time_ns, &fragment, &mut self.budget, &mut self.skips)
        {
            self.handle_transport(time_ns, ends, protocol, &whole, depth);
        }
    }

    fn ip_error(&mut self, error: &SliceError) {
        let why = match error {
            SliceError::Len(e) if e.len_source == LenSource::Slice => reason::TRUNCATED_PACKET,
            _ => reason::MALFORMED_PACKET,
        };
        count(&mut self.skips, why);
    }

    fn handle_transport(
        &mut self,
        time_ns: i64,
        ends: Endpoints,
        protocol: u8,
        payload: &[u8],
        depth: usize,
    ) {
        match protocol {
            ip_proto::UDP => match UdpSlice::from_slice(payload) {
                Ok(udp) => {
                    let src = SocketAddr::new(ends.src, udp.source_port());
                    let dst = SocketAddr::new(ends.dst, udp.destination_port());
                    self.handle_udp(time_ns, src, dst, udp.payload());
                }
                Err(e) if e.len_source == LenSource::Slice => {
                    count(&mut self.skips, reason::TRUNCATED_PACKET)
                }
                Err(_) => count(&mut self.skips, reason::MALFORMED_PACKET),
            },
            ip_proto::TCP => match TcpSlice::from_slice(payload) {
                Ok(tcp) => {
                    let flow = FlowKey {
                        src: SocketAddr::new(ends.src, tcp.source_port()),
                        dst: SocketAddr::new(ends.dst, tcp.destination_port()),
                    };
                    let segment = Segment {
                        seq: tcp.sequence_number(),
                        syn: tcp.syn(),
                        fin: tcp.fin(),
                        rst: tcp.rst(),
                        payload: tcp.payload(),
                    };
                    self.tcp.segment(time_ns, flow, &segment, &mut self.budget);
                    self.take_stream_output();
                }
                Err(_) => count(&mut self.skips, reason::MALFORMED_PACKET),
            },
            ip_proto::SCTP => self.handle_sctp(time_ns, ends, payload),
            ip_proto::GRE => match link::gre(payload) {
                Ok(Inner::Ip(inner)) => self.handle_ip(time_ns, inner, depth + 1),
                Ok(Inner::Ethernet(frame)) => match link::ethernet(frame) {
                    Ok(inner) => self.handle_ip(time_ns, inner, depth + 1),
                    Err(why) => count(&mut self.skips, why),
                },
                Err(why) => count(&mut self.skips, why),
            },
            ip_proto::IPV4_IN_IP | ip_proto::IPV6_IN_IP => {
                self.handle_ip(time_ns, payload, depth + 1)
            }
            _ => count(&mut self.skips, reason::OTHER_IP_PROTOCOL),
        }
    }

    /// A UDP payload: HEP (any version) or a SIP datagram.
    fn handle_udp(&mut self, time_ns: i64, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        if payload.starts_with(&hep::HEP3_MAGIC) {
            self.handle_hep(time_ns, payload);
            return;
        }
        // HEP v1/v2 have no magic, only a version byte: believe it when
        // the whole header decodes and it carries SIP.
        if matches!(payload.first(), Some(1 | 2))
            && let Ok(packet) = hep::decode(payload, self.max_message)
            && is_sip(&packet.payload)
        {
            self.emit_hep(time_ns, &packet);
            return;
        }
        self.handle_datagram(time_ns, Transport::Udp, src, dst, payload);
    }

    fn handle_hep(&mut self, time_ns: i64, bytes: &[u8]) {
        match hep::decode(bytes, self.max_message) {
            Ok(packet) => self.emit_hep(time_ns, &packet),
            Err(HepError::PayloadTooLarge { .. }) => {
                count(&mut self.skips, reason::OVERSIZE_MESSAGE)
            }
            Err(_) => count(&mut self.skips, reason::HEP_UNDECODABLE),
        }
    }

    /// The SIP message inside a HEP packet, with HEP's own addresses,
    /// transport and time (the outer packet is only the hop to the
    /// collector) and this import's source.
    fn emit_hep(&mut self, time_ns: i64, packet: &HepPacket) {
        match packet.to_captured(time_ns) {
            Some(mut message) if is_sip(&message.raw) => {
                message.source.clone_from(&self.source);
                self.out.push_back(message);
            }
            _ => count(&mut self.skips, reason::HEP_NON_SIP),
        }
    }

    /// One datagram (UDP payload, SCTP user message) = at most one message.
    fn handle_datagram(
        &mut self,
        time_ns: i64,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) {
        if payload.is_empty() {
            count(&mut self.skips, reason::EMPTY_PAYLOAD);
            return;
        }
        if detect::is_keepalive(payload) {
            count(&mut self.skips, reason::KEEPALIVE);
            return;
        }
        let message = detect::skip_crlf(payload);
        if detect::start_line(message) != Verdict::Sip {
            count(&mut self.skips, reason::NOT_SIP);
            return;
        }
        if message.len() > self.max_message {
            count(&mut self.skips, reason::OVERSIZE_MESSAGE);
            return;
        }
        self.push(time_ns, transport, src, dst, message.to_vec());
    }

    fn handle_sctp(&mut self, time_ns: i64, ends: Endpoints, payload: &[u8]) {
        let Some(packet) = sctp::parse(payload) else {
            count(&mut self.skips, reason::MALFORMED_PACKET);
            return;
        };
        let src = SocketAddr::new(ends.src, packet.src_port);
        let dst = SocketAddr::new(ends.dst, packet.dst_port);
        for data in packet.user_data() {
            match data {
                Ok(sctp::UserData::Message(message)) => {
                    self.handle_datagram(time_ns, Transport::Sctp, src, dst, message)
                }
                Ok(sctp::UserData::Fragment) => count(&mut self.skips, reason::SCTP_FRAGMENT),
                Err(()) => count(&mut self.skips, reason::MALFORMED_PACKET),
            }
        }
    }

    /// Moves what the TCP reassembler framed into the output queue.
    fn take_stream_output(&mut self) {
        while let Some(output) = self.tcp.poll() {
            match output {
                StreamOutput::Sip {
                    flow,
                    time_ns,
                    message,
                } => self.push(time_ns, Transport::Tcp, flow.src, flow.dst, message),
                StreamOutput::Hep {
                    time_ns, packet, ..
                } => self.handle_hep(time_ns, &packet),
            }
        }
    }

    fn push(
        &mut self,
        time_ns: i64,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        raw: Vec<u8>,
    ) {
        self.out.push_back(CapturedMessage {
            time_ns,
            source: self.source.clone(),
            direction: Direction::In,
            transport,
            src,
            dst,
            raw,
        });
    }
}

/// Whether a payload is a SIP message (after keep-alive CR/LF).
fn is_sip(payload: &[u8]) -> bool {
    detect::start_line(detect::skip_crlf(payload)) == Verdict::Sip
}

/// A copy of `packet` with a zero IPv4 total length / IPv6 payload length
/// replaced by the captured length, as Wireshark does for packets captured
/// on the sending host before segmentation offload filled it in. None when
/// the length field is not zero.
fn length_filled_in(packet: &[u8]) -> Option<Vec<u8>> {
    let version = packet.first()? >> 4;
    let (field, value) = match version {
        4 => (2..4, packet.len()),
        6 => (4..6, packet.len().checked_sub(40)?),
        _ => return None,
    };
    if packet.get(field.clone())? != [0, 0] {
        return None;
    }
    let value = u16::try_from(value).ok()?;
    let mut fixed = packet.to_vec();
    fixed[field].copy_from_slice(&value.to_be_bytes());
    Some(fixed)
}
