//! Import tests: every capture in the shared test data against its
//! INDEX.tsv, packets built with etherparse for each layer and tunnel, and
//! damaged files.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    UdpHeader, VlanId,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use sipvault_schemas::{CapturedMessage, Direction, Transport};
use sipvault_sip::SipMessage;

use super::link::linktype;
use super::*;

fn testdata() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ))
}

/// Rows of a TSV file as column name -> value.
fn read_index(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header line").split('\t').collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            header
                .iter()
                .zip(line.split('\t'))
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// "A:1,B:2" (or "-") as a map.
fn parse_counts(field: &str) -> BTreeMap<String, u64> {
    if field == "-" || field.is_empty() {
        return BTreeMap::new();
    }
    field
        .split(',')
        .map(|item| {
            let (key, n) = item.rsplit_once(':').expect("key:count");
            (key.to_owned(), n.parse().expect("count"))
        })
        .collect()
}

/// What a message counts as: ("request", METHOD) or ("response",
/// "status/CSeq-method"). Messages the parser rejects (e.g. a non-numeric
/// Content-Length) are classified from their start line and CSeq header.
fn classify(raw: &[u8]) -> (bool, String) {
    if let Ok(message) = SipMessage::parse(raw) {
        if let Some(method) = message.method() {
            return (true, method.to_owned());
        }
        let status = message.status().expect("a response has a status");
        let cseq_method = message
            .cseq()
            .map(|(_, m)| m.to_owned())
            .unwrap_or_default();
        return (false, format!("{status}/{cseq_method}"));
    }
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines();
    let start = lines.next().expect("start line");
    let mut words = start.split(' ');
    let first = words.next().expect("first word");
    if !first.eq_ignore_ascii_case("SIP/2.0") {
        return (true, first.to_owned());
    }
    let status = words.next().expect("status code");
    let cseq_method = lines
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("cseq")
                .then(|| value.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    (false, format!("{status}/{cseq_method}"))
}

#[derive(Debug, Default)]
struct Tally {
    requests: BTreeMap<String, u64>,
    responses: BTreeMap<String, u64>,
    /// Responses by status code only.
    statuses: BTreeMap<String, u64>,
}

fn tally(messages: &[CapturedMessage]) -> Tally {
    let mut t = Tally::default();
    for m in messages {
        let (is_request, key) = classify(&m.raw);
        if is_request {
            *t.requests.entry(key).or_insert(0) += 1;
        } else {
            let status = key.split('/').next().unwrap_or_default().to_owned();
            *t.statuses.entry(status).or_insert(0) += 1;
            *t.responses.entry(key).or_insert(0) += 1;
        }
    }
    t
}

fn import_bytes(bytes: &[u8], opts: &ImportOptions) -> (Vec<CapturedMessage>, ImportStats) {
    let mut messages = Vec::new();
    let stats = import_reader(bytes, opts, &mut |m| messages.push(m), &mut |_| {})
        .expect("import succeeds");
    assert_eq!(stats.sip_messages, messages.len() as u64);
    (messages, stats)
}

/// Imports a test file after checking its sha256 against the index.
fn import_checked(path: &Path, sha256: &str) -> (Vec<CapturedMessage>, ImportStats) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        sha256,
        "{} is not the file INDEX.tsv describes",
        path.display()
    );
    let name = path.file_name().expect("file name").to_string_lossy();
    let opts = ImportOptions {
        source: format!("pcap:{name}"),
        ..ImportOptions::default()
    };
    let mut messages = Vec::new();
    let mut last_progress = 0;
    let stats = import_file(path, &opts, &mut |m| messages.push(m), &mut |p| {
        assert!(p >= last_progress);
        last_progress = p;
    })
    .expect("import succeeds");
    assert_eq!(
        last_progress,
        bytes.len() as u64,
        "progress ends at the file size"
    );
    assert_eq!(stats.bytes, bytes.len() as u64);
    for m in &messages {
        assert_eq!(m.source, opts.source);
        assert_eq!(m.direction, Direction::In);
        assert!(
            m.time_ns > 946_684_800_000_000_000,
            "time after 2000: {}",
            m.time_ns
        );
    }
    (messages, stats)
}

/// Compares message counts with the index columns; responses are keyed
/// by `status/CSeq-method`, or by status alone where the index has no
/// method (the HEP file's counts come from a HEP sink).
fn assert_counts(file: &str, got: &Tally, requests: &str, responses: &str) {
    let want_requests = parse_counts(requests);
    let want_responses = parse_counts(responses);
    assert_eq!(got.requests, want_requests, "{file}: requests");
    if want_responses.keys().all(|k| k.contains('/')) {
        assert_eq!(got.responses, want_responses, "{file}: responses");
    } else {
        assert_eq!(got.statuses, want_responses, "{file}: responses by status");
    }
}

fn check_index(dir: &Path) -> usize {
    let mut checked = 0;
    for row in read_index(&dir.join("INDEX.tsv")) {
        let file = &row["file"];
        let (messages, stats) = import_checked(&dir.join(file), &row["sha256"]);
        let packets: u64 = row["packets"].parse().expect("packets");
        assert_eq!(stats.packets, packets, "{file}: packets");
        assert_counts(
            file,
            &tally(&messages),
            &row["sip_requests"],
            &row["sip_responses"],
        );
        let skipped: u64 = stats.skipped.values().sum();
        eprintln!(
            "{file}: {} messages, {skipped} skipped {:?}",
            messages.len(),
            stats.skipped
        );
        checked += 1;
    }
    checked
}

#[test]
fn public_captures_match_index() {
    assert_eq!(check_index(&testdata().join("pcaps")), 11);
}

#[test]
fn local_captures_match_index() {
    assert_eq!(check_index(&testdata().join("pcaps/local")), 18);
}

#[test]
fn hep_captures_match_index() {
    let dir = testdata().join("hep");
    let mut checked = 0;
    for row in read_index(&dir.join("INDEX.tsv")) {
        let file = &row["file"];
        let (messages, stats) = import_checked(&dir.join(file), &row["sha256"]);
        // "METHOD:n" and "response NNN:n" in one column.
        let mut requests = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        for (key, n) in parse_counts(&row["sip_in_payloads"]) {
            match key.strip_prefix("response ") {
                Some(status) => statuses.insert(status.to_owned(), n),
                None => requests.insert(key, n),
            };
        }
        let got = tally(&messages);
        assert_eq!(got.requests, requests, "{file}: requests");
        assert_eq!(got.statuses, statuses, "{file}: responses");
        let valid: u64 = row["valid_hep3"].parse().expect("valid_hep3");
        assert_eq!(
            messages.len() as u64,
            valid,
            "{file}: one message per HEP packet"
        );
        let call_ids: std::collections::BTreeSet<_> = messages
            .iter()
            .filter_map(|m| SipMessage::parse(&m.raw).ok()?.call_id().map(str::to_owned))
            .collect();
        assert_eq!(
            call_ids.len().to_string(),
            row["call_ids"],
            "{file}: Call-IDs"
        );
        // The inner SIP packet's addresses, not the hop to port 9060.
        assert!(messages.iter().all(|m| m.dst.port() != 9060), "{file}");
        assert_eq!(stats.skipped.get(reason::HEP_UNDECODABLE), None, "{file}");
        checked += 1;
    }
    assert_eq!(checked, 3);
}

fn public(name: &str) -> (Vec<CapturedMessage>, ImportStats) {
    let bytes = std::fs::read(testdata().join("pcaps").join(name)).expect("test file");
    import_bytes(&bytes, &ImportOptions::default())
}

fn local(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join("pcaps/local").join(name)).expect("test file")
}

#[test]
fn tls_capture_yields_nothing() {
    let (messages, stats) = public("sngrep-tlssaved.pcap");
    assert!(messages.is_empty());
    assert!(
        stats.skipped.get(reason::TLS).copied().unwrap_or(0) > 0,
        "{:?}",
        stats.skipped
    );
}

#[test]
fn invalid_content_length_is_still_emitted_over_udp() {
    let (messages, _) = public("zeek-invalid-content-length.pcap");
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.transport == Transport::Udp));
}

#[test]
fn tcp_captures_reassemble() {
    let (messages, _) = public("suricata-sip-body-large.pcap");
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.transport == Transport::Tcp));
    let invite = SipMessage::parse(&messages[0].raw).expect("INVITE parses");
    assert_eq!(invite.body().len(), 65_536);

    let (messages, _) = public("heplify-sip_ipv4_tcp.pcap");
    assert_eq!(messages.len(), 7);
    assert!(messages.iter().all(|m| m.transport == Transport::Tcp));

    let (messages, _) = public("pcapplusplus-sip_resp.pcap");
    let tcp = messages
        .iter()
        .filter(|m| m.transport == Transport::Tcp)
        .count();
    assert_eq!(tcp, 1);
}

#[test]
fn pcap_and_pcapng_give_the_same_messages() {
    for name in ["message", "register", "call-basic"] {
        // editcap wrote the pcap copies with microsecond timestamps.
        let in_microseconds = |file: String| -> Vec<CapturedMessage> {
            let (messages, _) = import_bytes(&local(&file), &ImportOptions::default());
            messages
                .into_iter()
                .map(|m| CapturedMessage {
                    time_ns: m.time_ns / 1_000 * 1_000,
                    ..m
                })
                .collect()
        };
        let from_pcap = in_microseconds(format!("{name}.pcap"));
        let from_ng = in_microseconds(format!("{name}.pcapng"));
        assert!(from_pcap == from_ng, "{name}: pcap and pcapng differ");
    }
}

// ---- packets built for one layer at a time -------------------------------

const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
    Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
    From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n\
    Call-ID: built@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

const SRC4: [u8; 4] = [192, 0, 2, 1];
const DST4: [u8; 4] = [192, 0, 2, 2];

fn decoder() -> PacketDecoder {
    PacketDecoder::new(&ImportOptions {
        source: "pcap:test".to_owned(),
        ..ImportOptions::default()
    })
}

fn drain(decoder: &mut PacketDecoder) -> Vec<CapturedMessage> {
    std::iter::from_fn(|| decoder.poll_message()).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn udp_ipv4(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(SRC4, DST4, 64)
        .udp(5062, 15060)
        .write(&mut out, payload)
        .expect("build");
    out
}

fn ethernet(ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: [2; 6],
        destination: [4; 6],
        ether_type,
    }
    .write(&mut out)
    .expect("ethernet header");
    out.extend_from_slice(payload);
    out
}

fn ipv4_with(protocol: IpNumber, payload: &[u8]) -> Vec<u8> {
    let header = Ipv4Header::new(
        u16::try_from(payload.len()).expect("fits"),
        64,
        protocol,
        [10, 1, 1, 1],
        [10, 2, 2, 2],
    )
    .expect("ipv4 header");
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn sip_over_udp_on_any_port_with_qinq() {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .double_vlan(
            VlanId::try_new(10).expect("id"),
            VlanId::try_new(20).expect("id"),
        )
        .ipv4(SRC4, DST4, 64)
        .udp(40000, 40001)
        .write(&mut out, INVITE)
        .expect("build");
    let mut d = decoder();
    d.handle_packet(5, linktype::ETHERNET, &out);
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.raw, INVITE);
    assert_eq!(m.src, addr("192.0.2.1:40000"));
    assert_eq!(m.dst, addr("192.0.2.2:40001"));
    assert_eq!(
        (m.time_ns, m.transport, m.source.as_str()),
        (5, Transport::Udp, "pcap:test")
    );
}

#[test]
fn keepalives_and_non_sip_datagrams_are_counted() {
    let mut d = decoder();
    for payload in [
        &b"\r\n\r\n"[..],
        b"",
        b"\x80\x08rtp",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        d.handle_packet(0, linktype::RAW, &udp_ipv4(payload));
    }
    assert!(drain(&mut d).is_empty());
    let skipped = d.skipped();
    assert_eq!(skipped.get(reason::KEEPALIVE), Some(&1));
    assert_eq!(skipped.get(reason::EMPTY_PAYLOAD), Some(&1));
    assert_eq!(skipped.get(reason::NOT_SIP), Some(&2));
}

#[test]
fn linux_sll2_frames() {
    let mut frame = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0x03, 0x04, 0, 0];
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&udp_ipv4(INVITE));
    let mut d = decoder();
    d.handle_packet(1, linktype::LINUX_SLL2, &frame);
    assert_eq!(drain(&mut d).len(), 1);
}

#[test]
fn ipv4_fragments_out_of_order() {
    let body = vec![b'a'; 3000];
    let mut message = format!(
        "MESSAGE sip:bob@example.com SIP/2.0\r\nCall-ID: frag4\r\nCSeq: 1 MESSAGE\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    message.extend_from_slice(&body);
    let mut udp = Vec::new();
    UdpHeader::without_ipv4_checksum(5060, 5060, message.len())
        .expect("udp header")
        .write(&mut udp)
        .expect("write");
    udp.extend_from_slice(&message);
    let pieces: Vec<(usize, &[u8])> = udp
        .chunks(1480)
        .enumerate()
        .map(|(i, c)| (i * 1480, c))
        .collect();
    let last = pieces.len() - 1;
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(i, (offset, piece))| {
            let mut header = Ipv4Header::new(
                u16::try_from(piece.len()).expect("fits"),
                64,
                IpNumber::UDP,
                SRC4,
                DST4,
            )
            .expect("header");
            header.identification = 77;
            header.more_fragments = i != last;
            header.fragment_offset =
                etherparse::IpFragOffset::try_new(u16::try_from(offset / 8).expect("offset"))
                    .expect("offset");
            let mut packet = header.to_bytes().to_vec();
            packet.extend_from_slice(piece);
            ethernet(EtherType::IPV4, &packet)
        })
        .collect();
    frames.reverse();
    let mut d = decoder();
    for frame in &frames {
        d.handle_packet(1, linktype::ETHERNET, frame);
    }
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].raw, message);
    assert_eq!(d.reassembly_bytes(), 0);
}

#[test]
fn ipv6_fragments_out_of_order_and_timeout() {
    let src6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let mut udp = Vec::new();
    UdpHeader::without_ipv4_checksum(5060, 5070, INVITE.len())
        .expect("udp header")
        .write(&mut udp)
        .expect("write");
    udp.extend_from_slice(INVITE);
    let fragment = |offset: usize, piece: &[u8], more: bool, id: u32| -> Vec<u8> {
        let header = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: u16::try_from(8 + piece.len()).expect("fits"),
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: src6,
            destination: dst6,
        };
        let mut packet = Vec::new();
        header.write(&mut packet).expect("ipv6 header");
        let offset_field = u16::try_from(offset / 8).expect("offset") << 3 | u16::from(more);
        packet.extend_from_slice(&[17, 0]);
        packet.extend_from_slice(&offset_field.to_be_bytes());
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(piece);
        ethernet(EtherType::IPV6, &packet)
    };
    let mut d = decoder();
    d.handle_packet(1, linktype::ETHERNET, &fragment(96, &udp[96..], false, 9));
    d.handle_packet(2, linktype::ETHERNET, &fragment(48, &udp[48..96], true, 9));
    d.handle_packet(3, linktype::ETHERNET, &fragment(0, &udp[..48], true, 9));
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].raw, INVITE);
    assert_eq!(messages[0].src, addr("[2001:db8::1]:5060"));

    // A set that never completes is dropped after 30 s of capture time.
    d.handle_packet(10, linktype::ETHERNET, &fragment(0, &udp[..48], true, 10));
    d.handle_packet(40_000_000_000, linktype::ETHERNET, &udp_ipv4(b"x"));
    assert_eq!(d.skipped().get(reason::FRAGMENT_TIMEOUT), Some(&1));
    assert_eq!(d.reassembly_bytes(), 0);
}

#[test]
fn gre_erspan_and_ip_in_ip_tunnels() {
    let inner_frame = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(SRC4, DST4, 64)
            .udp(5060, 5060)
            .write(&mut out, INVITE)
            .expect("build");
        out
    };
    let gre_packets = [
        // IPv4 in GRE
        [&[0x00, 0x00, 0x08, 0x00][..], &udp_ipv4(INVITE)].concat(),
        // Transparent Ethernet bridging with a key
        [&[0x20, 0x00, 0x65, 0x58, 0, 0, 0, 5][..], &inner_frame].concat(),
        // ERSPAN type II
        [
            &[0x10, 0x00, 0x88, 0xBE, 0, 0, 0, 1][..],
            &[0x10, 0x01, 0x00, 0x05, 0, 0, 0, 0],
            &inner_frame,
        ]
        .concat(),
        // ERSPAN type III without subheader
        [
            &[0x10, 0x00, 0x22, 0xEB, 0, 0, 0, 1][..],
            &[0x20, 0x01, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0],
            &inner_frame,
        ]
        .concat(),
    ];
    let mut d = decoder();
    for gre in &gre_packets {
        let outer = ethernet(EtherType::IPV4, &ipv4_with(IpNumber::GRE, gre));
        d.handle_packet(1, linktype::ETHERNET, &outer);
    }
    let ip_in_ip = ipv4_with(IpNumber::IPV4, &udp_ipv4(INVITE));
    d.handle_packet(1, linktype::RAW, &ip_in_ip);
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 5, "{:?}", d.skipped());
    for m in &messages {
        assert_eq!(m.raw, INVITE);
        assert_eq!(m.src.ip(), std::net::IpAddr::from(SRC4), "inner addresses");
    }

    // A packet that keeps encapsulating itself stops at the depth limit.
    let mut nested = udp_ipv4(INVITE);
    for _ in 0..12 {
        nested = ipv4_with(IpNumber::IPV4, &nested);
    }
    d.handle_packet(1, linktype::RAW, &nested);
    assert_eq!(d.skipped().get(reason::TUNNEL_DEPTH), Some(&1));
}

#[test]
fn hep_inside_udp_keeps_inner_addresses() {
    let inner_src = addr("10.9.8.7:5060");
    let inner_dst = addr("10.9.8.6:5080");
    let hep3 = crate::hep::encode_hep3(
        inner_src,
        inner_dst,
        1_700_000_000,
        250_000,
        2001,
        Some("key"),
        INVITE,
    );
    let mut d = decoder();
    d.handle_packet(99, linktype::RAW, &udp_ipv4(&hep3));
    // HEP3 that carries no SIP, and HEP3 that is broken.
    let rtcp = crate::hep::encode_hep3(inner_src, inner_dst, 1, 0, 1, None, b"\x80\xc8\x00\x06");
    d.handle_packet(100, linktype::RAW, &udp_ipv4(&rtcp));
    d.handle_packet(101, linktype::RAW, &udp_ipv4(&hep3[..20]));
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!((m.src, m.dst), (inner_src, inner_dst));
    assert_eq!(m.time_ns, 1_700_000_000_250_000_000);
    assert_eq!(m.source, "pcap:test");
    assert_eq!(m.raw, INVITE);
    let skipped = d.skipped();
    assert_eq!(skipped.get(reason::HEP_NON_SIP), Some(&1));
    assert_eq!(skipped.get(reason::HEP_UNDECODABLE), Some(&1));
}

#[test]
fn sctp_data_chunks() {
    let chunks: [(u8, &[u8]); 3] = [(3, INVITE), (2, b"INVITE sip:x"), (3, b"not sip")];
    let sctp = super::sctp::tests::packet(5060, 5061, &chunks);
    let mut d = decoder();
    d.handle_packet(1, linktype::RAW, &ipv4_with(IpNumber::SCTP, &sctp));
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].transport, Transport::Sctp);
    assert_eq!(messages[0].dst.port(), 5061);
    let skipped = d.skipped();
    assert_eq!(skipped.get(reason::SCTP_FRAGMENT), Some(&1));
    assert_eq!(skipped.get(reason::NOT_SIP), Some(&1));
}

#[test]
fn tcp_through_the_decoder_with_offloaded_length() {
    let segment = |seq: u32, syn: bool, payload: &[u8]| -> Vec<u8> {
        let builder = PacketBuilder::ipv4(SRC4, DST4, 64).tcp(5060, 5060, seq, 1000);
        let builder = if syn { builder.syn() } else { builder };
        let mut out = Vec::new();
        builder.write(&mut out, payload).expect("build");
        out
    };
    let mut d = decoder();
    d.handle_packet(1, linktype::RAW, &segment(100, true, b""));
    let mut offloaded = segment(101, false, &INVITE[..50]);
    offloaded[2..4].copy_from_slice(&[0, 0]); // total length not filled in yet
    d.handle_packet(2, linktype::RAW, &offloaded);
    d.handle_packet(3, linktype::RAW, &segment(151, false, &INVITE[50..]));
    let messages = drain(&mut d);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].transport, Transport::Tcp);
    assert_eq!(messages[0].time_ns, 3);
    assert_eq!(messages[0].raw, INVITE);
}

#[test]
fn pcapng_with_interfaces_of_different_link_types() {
    let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0x03, 0x04, 0, 0];
    sll2.extend_from_slice(&[0; 8]);
    sll2.extend_from_slice(&udp_ipv4(INVITE));
    let file = pcapng(&[
        Ng::Interface(linktype::ETHERNET, 6),
        Ng::Interface(linktype::LINUX_SLL2, 9),
        Ng::Packet(1, 1_000_000_123, &sll2),
        Ng::Other(0x0000_7777, &[1, 2, 3, 4]),
        Ng::Packet(0, 2_000_000, &ethernet(EtherType::IPV4, &udp_ipv4(INVITE))),
        Ng::Packet(5, 0, &sll2),
    ]);
    let (messages, stats) = import_bytes(&file, &ImportOptions::default());
    let times: Vec<i64> = messages.iter().map(|m| m.time_ns).collect();
    assert_eq!(times, vec![1_000_000_123, 2_000_000_000]);
    assert_eq!(stats.packets, 3);
    assert_eq!(stats.skipped.get(reason::UNKNOWN_BLOCK), Some(&1));
    assert_eq!(stats.skipped.get(reason::UNKNOWN_INTERFACE), Some(&1));
}

// ---- file builders ------------------------------------------------------

/// A nanosecond pcap file of `link_type` with the given records.
fn pcap(link_type: u32, records: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_3c4d_u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&link_type.to_le_bytes());
    for (time_ns, data) in records {
        let len = u32::try_from(data.len()).expect("fits");
        out.extend_from_slice(
            &u32::try_from(time_ns / 1_000_000_000)
                .expect("s")
                .to_le_bytes(),
        );
        out.extend_from_slice(
            &u32::try_from(time_ns % 1_000_000_000)
                .expect("ns")
                .to_le_bytes(),
        );
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

enum Ng<'a> {
    /// Link type and if_tsresol.
    Interface(u32, u8),
    /// Interface id, timestamp in the interface's units, frame.
    Packet(u32, u64, &'a [u8]),
    /// Any other block type with this body.
    Other(u32, &'a [u8]),
}

fn ng_block(out: &mut Vec<u8>, block_type: u32, body: &[u8]) {
    let padded = body.len().next_multiple_of(4);
    let len = u32::try_from(12 + padded).expect("fits");
    out.extend_from_slice(&block_type.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A little-endian pcapng file.
fn pcapng(blocks: &[Ng<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1A2B_3C4D_u32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    ng_block(&mut out, 0x0A0D_0D0A, &shb);
    for block in blocks {
        match block {
            Ng::Interface(link_type, tsresol) => {
                let mut idb = Vec::new();
                idb.extend_from_slice(&u16::try_from(*link_type).expect("u16").to_le_bytes());
                idb.extend_from_slice(&[0, 0]);
                idb.extend_from_slice(&0u32.to_le_bytes());
                // if_tsresol option, then end of options.
                idb.extend_from_slice(&9u16.to_le_bytes());
                idb.extend_from_slice(&1u16.to_le_bytes());
                idb.extend_from_slice(&[*tsresol, 0, 0, 0]);
                idb.extend_from_slice(&[0, 0, 0, 0]);
                ng_block(&mut out, 1, &idb);
            }
            Ng::Packet(interface, ticks, frame) => {
                let mut epb = Vec::new();
                let len = u32::try_from(frame.len()).expect("fits");
                epb.extend_from_slice(&interface.to_le_bytes());
                epb.extend_from_slice(&u32::try_from(ticks >> 32).expect("high").to_le_bytes());
                epb.extend_from_slice(&(*ticks as u32).to_le_bytes());
                epb.extend_from_slice(&len.to_le_bytes());
                epb.extend_from_slice(&len.to_le_bytes());
                epb.extend_from_slice(frame);
                epb.resize(epb.len().next_multiple_of(4), 0);
                ng_block(&mut out, 6, &epb);
            }
            Ng::Other(block_type, body) => ng_block(&mut out, *block_type, body),
        }
    }
    out
}

// ---- damaged files -------------------------------------------------------

#[test]
fn file_cut_mid_record_keeps_messages_before_the_cut() {
    for name in ["call-basic.pcap", "call-basic.pcapng"] {
        let bytes = local(name);
        let (all, _) = import_bytes(&bytes, &ImportOptions::default());
        let cut = &bytes[..bytes.len() * 2 / 3 + 7];
        let (some, stats) = import_bytes(cut, &ImportOptions::default());
        assert!(
            !some.is_empty() && some.len() < all.len(),
            "{name}: {}",
            some.len()
        );
        assert_eq!(
            some[..],
            all[..some.len()],
            "{name}: a prefix of the full import"
        );
        assert_eq!(
            stats.skipped.get(reason::TRUNCATED_FILE),
            Some(&1),
            "{name}"
        );
    }
}

#[test]
fn garbage_after_the_header_does_not_stop_anything() {
    let mut bytes = local("message.pcap")[..24].to_vec();
    bytes.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let (_, stats) = import_bytes(&bytes, &ImportOptions::default());
    assert!(!stats.skipped.is_empty());

    let mut ng = local("message.pcapng");
    let second_packet = ng_block_offsets(&ng)[3];
    ng.truncate(second_packet);
    ng.extend_from_slice(&[0xEE; 3000]);
    let (_, stats) = import_bytes(&ng, &ImportOptions::default());
    assert!(!stats.skipped.is_empty());
}

/// Byte offsets of the blocks of a little-endian pcapng file.
fn ng_block_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        at += len as usize;
    }
    offsets
}

#[test]
fn pcapng_unknown_and_malformed_blocks_are_skipped() {
    let bytes = local("message.pcapng");
    let (all, _) = import_bytes(&bytes, &ImportOptions::default());
    let offsets = ng_block_offsets(&bytes);
    let at = offsets[4];
    let mut unknown = Vec::new();
    ng_block(&mut unknown, 0x0000_7777, b"some data");
    // An EPB whose captured length runs past its own block.
    let mut broken_epb = Vec::new();
    let mut body = vec![0u8; 20];
    body[12..16].copy_from_slice(&500u32.to_le_bytes());
    body.extend_from_slice(&[0; 16]);
    ng_block(&mut broken_epb, 6, &body);
    let damaged = [&bytes[..at], &unknown, &broken_epb, &bytes[at..]].concat();
    let (messages, stats) = import_bytes(&damaged, &ImportOptions::default());
    assert_eq!(messages, all);
    assert_eq!(stats.skipped.get(reason::UNKNOWN_BLOCK), Some(&1));
    assert_eq!(stats.skipped.get(reason::MALFORMED_BLOCK), Some(&1));
}

#[test]
fn record_lengths_that_lie() {
    let frame = ethernet(EtherType::IPV4, &udp_ipv4(INVITE));
    // Larger than the snap length in the header: still read.
    let mut small_snaplen = pcap(linktype::ETHERNET, &[(1, &frame), (2, &frame)]);
    small_snaplen[16..20].copy_from_slice(&64u32.to_le_bytes());
    let (messages, _) = import_bytes(&small_snaplen, &ImportOptions::default());
    assert_eq!(messages.len(), 2);

    // A huge caplen on the second record: the first message survives.
    let mut huge = pcap(linktype::ETHERNET, &[(1, &frame), (2, &frame), (3, &frame)]);
    let second = 24 + 16 + frame.len();
    huge[second + 8..second + 12].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let (messages, stats) = import_bytes(&huge, &ImportOptions::default());
    assert_eq!(messages.len(), 1);
    let ends: u64 = [reason::OVERSIZE_RECORD, reason::TRUNCATED_FILE]
        .iter()
        .filter_map(|r| stats.skipped.get(*r))
        .sum();
    assert_eq!(ends, 2, "{:?}", stats.skipped);

    // A caplen just above the record limit inside a large file is skipped.
    let big = vec![0u8; reader::MAX_RECORD + 10];
    let file = pcap(linktype::ETHERNET, &[(1, &frame), (2, &big), (3, &frame)]);
    let (messages, stats) = import_bytes(&file, &ImportOptions::default());
    assert_eq!(messages.len(), 2);
    assert_eq!(stats.skipped.get(reason::OVERSIZE_RECORD), Some(&1));
    assert_eq!(stats.packets, 2);
}

#[test]
fn zero_length_and_tiny_packets() {
    let file = pcap(
        linktype::ETHERNET,
        &[
            (1, &[]),
            (2, &[0x45]),
            (3, &[0; 14]),
            (4, &ethernet(EtherType::IPV4, &udp_ipv4(INVITE))),
        ],
    );
    let (messages, stats) = import_bytes(&file, &ImportOptions::default());
    assert_eq!(messages.len(), 1);
    assert_eq!(stats.packets, 4);
    assert_eq!(
        stats.skipped.get(reason::MALFORMED_PACKET),
        Some(&2),
        "{:?}",
        stats.skipped
    );
    let file = pcap(147, &[(1, b"user link type")]);
    let (_, stats) = import_bytes(&file, &ImportOptions::default());
    assert_eq!(stats.skipped.get(reason::UNSUPPORTED_LINK_TYPE), Some(&1));
}

#[test]
fn files_that_are_not_captures_are_errors() {
    for bytes in [
        &b""[..],
        b"\xd4\xc3",
        b"GIF89a........................",
        b"\xd4\xc3\xb2\xa1\x02\x00",
    ] {
        let result = import_reader(bytes, &ImportOptions::default(), &mut |_| {}, &mut |_| {});
        assert!(
            matches!(result, Err(PcapError::NotCapture(_))),
            "{bytes:?}: {result:?}"
        );
    }
    let missing = import_file(
        Path::new("/nonexistent/capture.pcap"),
        &ImportOptions::default(),
        &mut |_| {},
        &mut |_| {},
    );
    assert!(matches!(missing, Err(PcapError::Open { .. })));
}

#[test]
fn read_errors_mid_file_end_the_import() {
    struct FailingAfter {
        data: Vec<u8>,
        at: usize,
    }
    impl Read for FailingAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at >= self.data.len() {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.data.len() - self.at).min(1000);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    let bytes = local("message.pcap");
    let reader = FailingAfter {
        data: bytes[..bytes.len() / 2].to_vec(),
        at: 0,
    };
    let mut messages = 0;
    let stats = import_reader(
        reader,
        &ImportOptions::default(),
        &mut |_| messages += 1,
        &mut |_| {},
    )
    .expect("the header was readable");
    assert!(messages > 0);
    assert_eq!(
        stats.skipped.get(reason::READ_ERROR),
        Some(&1),
        "{:?}",
        stats.skipped
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes behind a valid pcap or pcapng header.
    #[test]
    fn random_bytes_never_panic(
        ng in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let head = if ng {
            let file = local("message.pcapng");
            file[..ng_block_offsets(&file)[1]].to_vec()
        } else {
            local("message.pcap")[..24].to_vec()
        };
        let bytes = [head, tail].concat();
        let opts = ImportOptions { max_message: 4096, max_reassembly_bytes: 1 << 16, ..ImportOptions::default() };
        let mut emitted = Vec::new();
        let stats = import_reader(&bytes[..], &opts, &mut |m| emitted.push(m), &mut |_| {});
        let stats = stats.expect("header is valid");
        prop_assert!(stats.bytes <= bytes.len() as u64);
        prop_assert!(emitted.iter().all(|m| m.raw.len() <= 4096));
    }

    /// A real capture with bytes flipped, cut, or duplicated.
    #[test]
    fn mutated_captures_never_panic(
        file in prop::sample::select(vec!["message.pcap", "message.pcapng", "register.pcap"]),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..40),
        cut in any::<prop::sample::Index>(),
        splice in any::<Option<(prop::sample::Index, prop::sample::Index)>>(),
    ) {
        let mut bytes = local(file);
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= value;
        }
        if let Some((from, to)) = splice {
            let from = from.index(bytes.len());
            let to = to.index(bytes.len());
            let copy = bytes[from.min(to)..from.max(to)].to_vec();
            bytes.splice(to..to, copy);
        }
        let keep = cut.index(bytes.len() + 1).max(bytes.len() / 2);
        bytes.truncate(keep);
        let opts = ImportOptions { max_reassembly_bytes: 1 << 16, ..ImportOptions::default() };
        let mut emitted = 0usize;
        let result = import_reader(&bytes[..], &opts, &mut |m| emitted += m.raw.len(), &mut |_| {});
        if let Ok(stats) = result {
            prop_assert!(emitted <= bytes.len() + stats.sip_messages as usize * opts.max_message);
        }
    }
}
