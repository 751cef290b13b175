//! HEP (Homer Encapsulation Protocol, a.k.a. EEP) decoding, sans-IO.
//!
//! HEP is what Kamailio `siptrace`, OpenSIPS, heplify, captagent, sngrep
//! `-H`, FreeSWITCH and Asterisk `res_hep` send to a Homer-style collector:
//! one captured packet (usually a SIP message) plus the addresses, ports and
//! time it was seen with. This module turns datagrams into [`HepPacket`]s and
//! HEP3 TCP byte streams into datagram-sized frames ([`HepStreamDecoder`]);
//! sockets live elsewhere.
//!
//! # Wire formats
//!
//! **HEP3**: `"HEP3"`, u16 total length (header included), then chunks of
//! u16 vendor id, u16 chunk type, u16 chunk length (including the 6-byte
//! chunk header) and the value. Everything is big-endian. Vendor 0 chunks
//! are decoded as listed in [`chunk`]; chunks of other vendors, and vendor-0
//! types this decoder has no field for, are skipped and counted in
//! [`HepPacket::unknown_chunks`]. Bytes after the declared total length are
//! ignored (a datagram carries one packet).
//!
//! **HEP v1 / v2** (Kamailio `hep_version=1|2`): a fixed C struct header
//! `version u8, header length u8, family u8, protocol u8, src port u16,
//! dst port u16` (ports big-endian), then source and destination address
//! (4 + 4 or 16 + 16 bytes), then, for v2 only, `struct hep_timehdr`
//! (`tv_sec u32, tv_usec u32, captid u16` plus 2 bytes of C struct padding,
//! 12 bytes), then the payload up to the end of the datagram. The header
//! length byte counts the fixed header and the addresses only (16 or 40),
//! as Kamailio writes and checks it. The v2 time header is copied from
//! memory in the sender's host byte order; it is read as little-endian,
//! which is what every x86-64 / aarch64 Kamailio sends. The family byte is
//! the sender's `AF_INET` (2) or `AF_INET6` (10 on Linux; 24, 28 and 30 on
//! the BSDs and macOS are accepted too).
//!
//! # The capture id quirk (sngrep `-H` and other `htons()` senders)
//!
//! Chunk 0x000c is a u32. sngrep `-H` (also reSIProcate, older captagent
//! and OpenSIPS tracers) fills it with `htons(id)` stored into a `uint32_t`
//! on a little-endian host, so the wire carries the id as a *16-bit*
//! big-endian number followed by two zero bytes: id 2001 arrives as
//! `07 d1 00 00`, which read as the specified big-endian u32 is
//! 131 137 536 (= 2001 << 16) and read as little-endian u32 is 53 511 —
//! neither is the configured id. This decoder picks the plausible reading
//! (see [`capture_id_from_wire`]): when the last two bytes are zero and the
//! first two are not, the value is the first two bytes as a big-endian u16.
//! The price is that a genuine big-endian id that is a multiple of 65 536
//! reads as that value >> 16; Homer capture ids are small numbers (Kamailio
//! defaults to 1, heplify to 0, Homer setups use 2001...), so this never
//! hurts in practice. A 2-byte 0x000c chunk is read as a big-endian u16.
//!
//! # Compressed payloads
//!
//! Chunk 0x0010 is inflated as zlib (RFC 1950), or as gzip (RFC 1952) when
//! it starts with the gzip magic `1f 8b` (OpenSIPS' compression module can
//! produce either). Inflation stops after `max_payload + 1` output bytes, so
//! a zip bomb costs at most about `max_payload` bytes of memory and fails
//! with [`HepError::PayloadTooLarge`]. The same limit applies to
//! uncompressed payloads.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sipvault_schemas::{CapturedMessage, Direction, HepRawRow, Transport};

/// The four bytes every HEP3 packet starts with.
pub const HEP3_MAGIC: [u8; 4] = *b"HEP3";
/// `"HEP3"` + u16 total length.
pub const HEP3_HEADER_LEN: usize = 6;
/// u16 vendor + u16 type + u16 length.
pub const CHUNK_HEADER_LEN: usize = 6;
/// The largest packet HEP3's u16 total length can describe.
pub const HEP3_MAX_LEN: usize = u16::MAX as usize;

/// Vendor-0 ("generic") HEP3 chunk types.
pub mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTOCOL: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SEC: u16 = 0x0009;
    pub const TIME_USEC: u16 = 0x000a;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const CAPTURE_ID: u16 = 0x000c;
    pub const KEEP_ALIVE: u16 = 0x000d;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const COMPRESSED_PAYLOAD: u16 = 0x0010;
    pub const CORRELATION_ID: u16 = 0x0011;
    pub const VLAN: u16 = 0x0012;
    pub const NODE_NAME: u16 = 0x0013;
}

/// Values of the protocol type chunk (0x000b) that matter here.
pub mod proto_type {
    pub const SIP: u8 = 1;
    pub const XMPP: u8 = 2;
    pub const SDP: u8 = 3;
    pub const RTP: u8 = 4;
    pub const RTCP: u8 = 5;
    pub const MGCP: u8 = 6;
    pub const MEGACO: u8 = 7;
    pub const M2UA: u8 = 8;
    pub const M3UA: u8 = 9;
    pub const IAX: u8 = 10;
    pub const H322: u8 = 11;
    pub const H321: u8 = 12;
    pub const LOG: u8 = 100;
}

/// Address families as HEP senders write them (the sender's `AF_*`).
const AF_INET: u8 = 2;
const AF_INET6_LINUX: u8 = 10;
const AF_INET6_ANY: [u8; 4] = [10, 24, 28, 30];

/// IP protocol numbers in chunk 0x0002 / the v1/v2 protocol byte.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Kamailio's "fake protocol" for TLS in HEP (IPPROTO_IDP).
const IPPROTO_IDP_TLS: u8 = 22;
const IPPROTO_SCTP: u8 = 132;

/// One decoded HEP packet (any version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HepPacket {
    /// 1, 2 or 3.
    pub version: u8,
    /// As sent: 2 = IPv4, 10 = IPv6 (Linux).
    pub ip_family: Option<u8>,
    /// IP protocol of the captured packet: 17 UDP, 6 TCP.
    pub protocol: Option<u8>,
    /// Source of the captured packet (port 0 if the port chunk is missing).
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
    pub time_sec: Option<u32>,
    pub time_usec: Option<u32>,
    /// 1 SIP, 5 RTCP, 100 log, ... (see [`proto_type`]). None in v1/v2.
    pub proto_type: Option<u8>,
    /// Capture agent id, with the sngrep byte-order quirk undone
    /// (module docs, [`capture_id_from_wire`]).
    pub capture_id: Option<u32>,
    pub auth_key: Option<String>,
    /// The captured bytes, inflated if they came in chunk 0x0010.
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    pub vlan: Option<u16>,
    /// Chunk 0x0013 (group id / node name, as heplify sends it).
    pub node_name: Option<String>,
    /// Chunks skipped: any vendor other than 0, and vendor-0 types without
    /// a field here.
    pub unknown_chunks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HepError {
    #[error("truncated HEP packet: need {needed} bytes, have {got}")]
    Truncated { needed: usize, got: usize },
    #[error(
        "not a HEP packet: starts with {head:02x?} (neither \"HEP3\" nor a v1/v2 version byte)"
    )]
    BadMagic { head: Vec<u8> },
    #[error(
        "bad HEP v{version} header: family {family} with header length {header_len} \
         (expected family 2 with length 16 or an IPv6 family with length 40)"
    )]
    BadV12Header {
        version: u8,
        family: u8,
        header_len: u8,
    },
    #[error("HEP3 total length {declared} is shorter than the 6-byte header")]
    BadTotalLength { declared: usize },
    #[error("HEP3 chunk header at offset {offset} overruns the packet ({remaining} bytes left)")]
    ChunkHeaderOverrun { offset: usize, remaining: usize },
    #[error(
        "zero-length HEP3 chunk (vendor {vendor:#06x}, type {chunk_type:#06x}) at offset {offset}"
    )]
    ZeroLengthChunk {
        offset: usize,
        vendor: u16,
        chunk_type: u16,
    },
    #[error(
        "HEP3 chunk type {chunk_type:#06x} at offset {offset} has length {length}, less than its own 6-byte header"
    )]
    ChunkTooShort {
        offset: usize,
        chunk_type: u16,
        length: usize,
    },
    #[error(
        "HEP3 chunk type {chunk_type:#06x} at offset {offset} has length {length}, only {remaining} bytes left in the packet"
    )]
    ChunkOverrun {
        offset: usize,
        chunk_type: u16,
        length: usize,
        remaining: usize,
    },
    #[error("HEP3 chunk type {chunk_type:#06x} carries {length} value bytes, expected {expected}")]
    BadChunkValue {
        chunk_type: u16,
        length: usize,
        expected: &'static str,
    },
    #[error("HEP payload larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("HEP compressed payload does not inflate: {0}")]
    Decompress(String),
    #[error("HEP3 packet of {length} bytes in a stream exceeds the {max}-byte limit")]
    PacketTooLarge { length: usize, max: usize },
}

/// Decodes one HEP v1, v2 or v3 datagram. Never panics. `max_payload`
/// bounds the payload, in particular the inflated size of a compressed
/// payload (zip bomb defence).
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<HepPacket, HepError> {
    match bytes {
        [b'H', b'E', b'P', b'3', ..] => decode_v3(bytes, max_payload),
        _ if bytes.len() < 4 && HEP3_MAGIC.starts_with(bytes) => Err(HepError::Truncated {
            needed: HEP3_HEADER_LEN,
            got: bytes.len(),
        }),
        [1 | 2, ..] => decode_v12(bytes, max_payload),
        _ => Err(HepError::BadMagic {
            head: bytes[..bytes.len().min(4)].to_vec(),
        }),
    }
}

/// The capture agent id from the 4 value bytes of chunk 0x000c, undoing
/// the `htons()`-into-`uint32_t` quirk of sngrep `-H` and friends: when the
/// last two bytes are zero and the first two are not, the id is the first
/// two bytes as a big-endian u16; otherwise the bytes are the specified
/// big-endian u32.
pub fn capture_id_from_wire(value: [u8; 4]) -> u32 {
    match value {
        [hi, lo, 0, 0] if hi != 0 || lo != 0 => u32::from(u16::from_be_bytes([hi, lo])),
        _ => u32::from_be_bytes(value),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn decode_v12(bytes: &[u8], max_payload: usize) -> Result<HepPacket, HepError> {
    const FIXED: usize = 8;
    if bytes.len() < FIXED {
        return Err(HepError::Truncated {
            needed: FIXED,
            got: bytes.len(),
        });
    }
    let (version, header_len, family, protocol) = (bytes[0], bytes[1], bytes[2], bytes[3]);
    let addr_len = match family {
        AF_INET => 8,
        f if AF_INET6_ANY.contains(&f) => 32,
        _ => {
            return Err(HepError::BadV12Header {
                version,
                family,
                header_len,
            });
        }
    };
    if usize::from(header_len) != FIXED + addr_len {
        return Err(HepError::BadV12Header {
            version,
            family,
            header_len,
        });
    }
    let time_len = if version == 2 { 12 } else { 0 };
    let needed = FIXED + addr_len + time_len;
    if bytes.len() < needed {
        return Err(HepError::Truncated {
            needed,
            got: bytes.len(),
        });
    }
    let (src_ip, dst_ip): (IpAddr, IpAddr) = if addr_len == 8 {
        let s: [u8; 4] = bytes[8..12].try_into().expect("4 bytes");
        let d: [u8; 4] = bytes[12..16].try_into().expect("4 bytes");
        (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
    } else {
        let s: [u8; 16] = bytes[8..24].try_into().expect("16 bytes");
        let d: [u8; 16] = bytes[24..40].try_into().expect("16 bytes");
        (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
    };
    let (time_sec, time_usec, capture_id) = if version == 2 {
        let t = FIXED + addr_len;
        let captid = u16::from_le_bytes([bytes[t + 8], bytes[t + 9]]);
        (
            Some(le32(bytes, t)),
            Some(le32(bytes, t + 4)),
            Some(u32::from(captid)),
        )
    } else {
        (None, None, None)
    };
    let payload = &bytes[needed..];
    if payload.len() > max_payload {
        return Err(HepError::PayloadTooLarge { limit: max_payload });
    }
    Ok(HepPacket {
        version,
        ip_family: Some(family),
        protocol: Some(protocol),
        src: Some(SocketAddr::new(src_ip, be16(bytes, 4))),
        dst: Some(SocketAddr::new(dst_ip, be16(bytes, 6))),
        time_sec,
        time_usec,
        capture_id,
        payload: payload.to_vec(),
        ..HepPacket::default()
    })
}

fn fixed<const N: usize>(
    chunk_type: u16,
    value: &[u8],
    expected: &'static str,
) -> Result<[u8; N], HepError> {
    value.try_into().map_err(|_| HepError::BadChunkValue {
        chunk_type,
        length: value.len(),
        expected,
    })
}

/// Text chunks: lossy UTF-8, C string terminators dropped.
fn text(value: &[u8]) -> String {
    let end = value.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn inflate(data: &[u8], max_payload: usize) -> Result<Vec<u8>, HepError> {
    let limit = u64::try_from(max_payload)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut out = Vec::new();
    let read = if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)
    } else {
        flate2::read::ZlibDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out)
    };
    read.map_err(|e| HepError::Decompress(e.to_string()))?;
    if out.len() > max_payload {
        return Err(HepError::PayloadTooLarge { limit: max_payload });
    }
    Ok(out)
}

fn decode_v3(bytes: &[u8], max_payload: usize) -> Result<HepPacket, HepError> {
    if bytes.len() < HEP3_HEADER_LEN {
        return Err(HepError::Truncated {
            needed: HEP3_HEADER_LEN,
            got: bytes.len(),
        });
    }
    let total = usize::from(be16(bytes, 4));
    if total < HEP3_HEADER_LEN {
        return Err(HepError::BadTotalLength { declared: total });
    }
    if total > bytes.len() {
        return Err(HepError::Truncated {
            needed: total,
            got: bytes.len(),
        });
    }
    let body = &bytes[..total];

    let mut p = HepPacket {
        version: 3,
        ..HepPacket::default()
    };
    let (mut src4, mut dst4, mut src6, mut dst6) = (None, None, None, None);
    let (mut src_port, mut dst_port) = (None, None);

    let mut pos = HEP3_HEADER_LEN;
    while pos < total {
        let remaining = total - pos;
        if remaining < CHUNK_HEADER_LEN {
            return Err(HepError::ChunkHeaderOverrun {
                offset: pos,
                remaining,
            });
        }
        let vendor = be16(body, pos);
        let chunk_type = be16(body, pos + 2);
        let length = usize::from(be16(body, pos + 4));
        if length == 0 {
            return Err(HepError::ZeroLengthChunk {
                offset: pos,
                vendor,
                chunk_type,
            });
        }
        if length < CHUNK_HEADER_LEN {
            return Err(HepError::ChunkTooShort {
                offset: pos,
                chunk_type,
                length,
            });
        }
        if length > remaining {
            return Err(HepError::ChunkOverrun {
                offset: pos,
                chunk_type,
                length,
                remaining,
            });
        }
        let v = &body[pos + CHUNK_HEADER_LEN..pos + length];
        pos += length;
        if vendor != 0 {
            p.unknown_chunks += 1;
            continue;
        }
        match chunk_type {
            chunk::IP_FAMILY => p.ip_family = Some(fixed::<1>(chunk_type, v, "1")?[0]),
            chunk::IP_PROTOCOL => p.protocol = Some(fixed::<1>(chunk_type, v, "1")?[0]),
            chunk::IPV4_SRC => src4 = Some(Ipv4Addr::from(fixed::<4>(chunk_type, v, "4")?)),
            chunk::IPV4_DST => dst4 = Some(Ipv4Addr::from(fixed::<4>(chunk_type, v, "4")?)),
            chunk::IPV6_SRC => src6 = Some(Ipv6Addr::from(fixed::<16>(chunk_type, v, "16")?)),
            chunk::IPV6_DST => dst6 = Some(Ipv6Addr::from(fixed::<16>(chunk_type, v, "16")?)),
            chunk::SRC_PORT => src_port = Some(u16::from_be_bytes(fixed(chunk_type, v, "2")?)),
            chunk::DST_PORT => dst_port = Some(u16::from_be_bytes(fixed(chunk_type, v, "2")?)),
            chunk::TIME_SEC => p.time_sec = Some(u32::from_be_bytes(fixed(chunk_type, v, "4")?)),
            chunk::TIME_USEC => p.time_usec = Some(u32::from_be_bytes(fixed(chunk_type, v, "4")?)),
            chunk::PROTO_TYPE => p.proto_type = Some(fixed::<1>(chunk_type, v, "1")?[0]),
            chunk::CAPTURE_ID => {
                p.capture_id = Some(match *v {
                    [a, b] => u32::from(u16::from_be_bytes([a, b])),
                    [a, b, c, d] => capture_id_from_wire([a, b, c, d]),
                    _ => {
                        return Err(HepError::BadChunkValue {
                            chunk_type,
                            length: v.len(),
                            expected: "2 or 4",
                        });
                    }
                })
            }
            // A keep-alive timer: nothing to keep.
            chunk::KEEP_ALIVE => {}
            chunk::AUTH_KEY => p.auth_key = Some(text(v)),
            chunk::PAYLOAD => {
                if v.len() > max_payload {
                    return Err(HepError::PayloadTooLarge { limit: max_payload });
                }
                p.payload = v.to_vec();
            }
            chunk::COMPRESSED_PAYLOAD => p.payload = inflate(v, max_payload)?,
            chunk::CORRELATION_ID => p.correlation_id = Some(text(v)),
            chunk::VLAN => p.vlan = Some(u16::from_be_bytes(fixed(chunk_type, v, "2")?)),
            chunk::NODE_NAME => p.node_name = Some(text(v)),
            _ => p.unknown_chunks += 1,
        }
    }

    // The family chunk says which address pair is meant if both are sent.
    let prefer_v6 = p.ip_family.is_some_and(|f| AF_INET6_ANY.contains(&f));
    let pick = |v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>| -> Option<IpAddr> {
        let (v4, v6) = (v4.map(IpAddr::V4), v6.map(IpAddr::V6));
        if prefer_v6 { v6.or(v4) } else { v4.or(v6) }
    };
    p.src = pick(src4, src6).map(|ip| SocketAddr::new(ip, src_port.unwrap_or(0)));
    p.dst = pick(dst4, dst6).map(|ip| SocketAddr::new(ip, dst_port.unwrap_or(0)));
    Ok(p)
}

impl HepPacket {
    /// The capture as an archive input, or None when there is nothing SIP
    /// to archive: a proto type other than SIP (RTCP, logs, ...) or an
    /// empty payload (keep-alives). A missing proto type counts as SIP
    /// (v1/v2 carry only SIP).
    ///
    /// - source: see [`Self::source`].
    /// - transport from the protocol: 6 TCP, 22 TLS (Kamailio's marker),
    ///   132 SCTP, anything else (17, missing, ...) UDP.
    /// - time from sec/usec; `now_ns` when the packet carries no time.
    /// - src/dst `0.0.0.0:0` when the packet carries no address.
    /// - direction In: the capture was received by us.
    pub fn to_captured(&self, now_ns: i64) -> Option<CapturedMessage> {
        if self.proto_type.is_some_and(|t| t != proto_type::SIP) || self.payload.is_empty() {
            return None;
        }
        let transport = match self.protocol {
            Some(IPPROTO_TCP) => Transport::Tcp,
            Some(IPPROTO_IDP_TLS) => Transport::Tls,
            Some(IPPROTO_SCTP) => Transport::Sctp,
            _ => Transport::Udp,
        };
        Some(CapturedMessage {
            time_ns: self.time_ns(now_ns),
            source: self.source(),
            direction: Direction::In,
            transport,
            src: self.src.unwrap_or(UNSPECIFIED),
            dst: self.dst.unwrap_or(UNSPECIFIED),
            raw: self.payload.clone(),
        })
    }

    /// A non-SIP payload (RTCP report, log line, ...) as a `hep_raw` row;
    /// None for SIP (see [`Self::to_captured`]) and empty payloads.
    pub fn to_raw_row(&self, now_ns: i64) -> Option<HepRawRow> {
        let proto = self.proto_type.filter(|&t| t != proto_type::SIP)?;
        if self.payload.is_empty() {
            return None;
        }
        Some(HepRawRow {
            time_ns: self.time_ns(now_ns),
            source: self.source(),
            proto_type: proto,
            src: self.src.unwrap_or(UNSPECIFIED).to_string(),
            dst: self.dst.unwrap_or(UNSPECIFIED).to_string(),
            correlation_id: self.correlation_id.clone(),
            payload: self.payload.clone(),
        })
    }

    /// `hep:<capture id>`; `hep:<node name>` when the capture id is missing
    /// or 0 (heplify's unset default) and a node name is sent; `hep:0` /
    /// `hep:unknown` when there is nothing better.
    pub fn source(&self) -> String {
        let node = self.node_name.as_deref().filter(|n| !n.is_empty());
        match (self.capture_id, node) {
            (Some(id), _) if id != 0 => format!("hep:{id}"),
            (_, Some(name)) => format!("hep:{name}"),
            (Some(id), None) => format!("hep:{id}"),
            (None, None) => "hep:unknown".to_owned(),
        }
    }

    /// Capture time from sec/usec; `now_ns` when the packet carries none.
    pub fn time_ns(&self, now_ns: i64) -> i64 {
        match self.time_sec {
            Some(sec) => {
                i64::from(sec) * 1_000_000_000 + i64::from(self.time_usec.unwrap_or(0)) * 1_000
            }
            None => now_ns,
        }
    }
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Frames HEP3 packets out of a TCP byte stream: several packets per
/// segment, packets split across segments. It only frames (magic and total
/// length); hand each frame to [`decode`].
///
/// A framing error (bad magic, a total length below 6 or above
/// `max_packet`) means the stream has lost sync; there is no reliable way
/// back, so the decoder keeps returning that error and the caller should
/// close the connection.
#[derive(Debug)]
pub struct HepStreamDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` before `start` were already handed out.
    start: usize,
    max_packet: usize,
    failed: Option<HepError>,
}

impl HepStreamDecoder {
    /// `max_packet` bounds one packet, header included (HEP3 itself cannot
    /// describe more than 65 535 bytes).
    pub fn new(max_packet: usize) -> Self {
        HepStreamDecoder {
            buf: Vec::new(),
            start: 0,
            max_packet,
            failed: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, b: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(b);
    }

    /// Bytes received but not yet returned as a packet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete packet, `Ok(None)` if more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, HepError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        let head = &avail[..avail.len().min(4)];
        if !HEP3_MAGIC.starts_with(head) {
            return Err(self.fail(HepError::BadMagic {
                head: head.to_vec(),
            }));
        }
        if avail.len() < HEP3_HEADER_LEN {
            return Ok(None);
        }
        let length = usize::from(be16(avail, 4));
        if length < HEP3_HEADER_LEN {
            return Err(self.fail(HepError::BadTotalLength { declared: length }));
        }
        if length > self.max_packet {
            return Err(self.fail(HepError::PacketTooLarge {
                length,
                max: self.max_packet,
            }));
        }
        if avail.len() < length {
            return Ok(None);
        }
        let packet = avail[..length].to_vec();
        self.start += length;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(packet))
    }

    fn fail(&mut self, e: HepError) -> HepError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}

fn push_chunk(out: &mut Vec<u8>, vendor: u16, chunk_type: u16, value: &[u8]) {
    let length = u16::try_from(CHUNK_HEADER_LEN + value.len()).unwrap_or_else(|_| {
        panic!(
            "HEP3 chunk {chunk_type:#06x} of {} bytes does not fit",
            value.len()
        )
    });
    out.extend_from_slice(&vendor.to_be_bytes());
    out.extend_from_slice(&chunk_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
}

/// Encoder used by tests and the load generator: builds a HEP3 datagram for
/// a SIP payload captured over UDP (chunks 0x0001-0x000c, 0x000e if an auth
/// key is given, 0x000f).
///
/// # Panics
///
/// If the packet does not fit HEP3's 16-bit length (payload over ~65 400
/// bytes).
pub fn encode_hep3(
    src: SocketAddr,
    dst: SocketAddr,
    time_sec: u32,
    time_usec: u32,
    capture_id: u32,
    auth_key: Option<&str>,
    payload: &[u8],
) -> Vec<u8> {
    encode_hep3_typed(
        src,
        dst,
        time_sec,
        time_usec,
        capture_id,
        auth_key,
        proto_type::SIP,
        payload,
    )
}

/// [`encode_hep3`] for any payload type (RTCP, logs, ...).
#[allow(clippy::too_many_arguments)]
pub fn encode_hep3_typed(
    src: SocketAddr,
    dst: SocketAddr,
    time_sec: u32,
    time_usec: u32,
    capture_id: u32,
    auth_key: Option<&str>,
    payload_type: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + payload.len());
    out.extend_from_slice(&HEP3_MAGIC);
    out.extend_from_slice(&[0, 0]);
    let family = if src.is_ipv4() {
        AF_INET
    } else {
        AF_INET6_LINUX
    };
    push_chunk(&mut out, 0, chunk::IP_FAMILY, &[family]);
    push_chunk(&mut out, 0, chunk::IP_PROTOCOL, &[IPPROTO_UDP]);
    for (addr, v4, v6) in [
        (src, chunk::IPV4_SRC, chunk::IPV6_SRC),
        (dst, chunk::IPV4_DST, chunk::IPV6_DST),
    ] {
        match addr.ip() {
            IpAddr::V4(a) => push_chunk(&mut out, 0, v4, &a.octets()),
            IpAddr::V6(a) => push_chunk(&mut out, 0, v6, &a.octets()),
        }
    }
    push_chunk(&mut out, 0, chunk::SRC_PORT, &src.port().to_be_bytes());
    push_chunk(&mut out, 0, chunk::DST_PORT, &dst.port().to_be_bytes());
    push_chunk(&mut out, 0, chunk::TIME_SEC, &time_sec.to_be_bytes());
    push_chunk(&mut out, 0, chunk::TIME_USEC, &time_usec.to_be_bytes());
    push_chunk(&mut out, 0, chunk::PROTO_TYPE, &[payload_type]);
    push_chunk(&mut out, 0, chunk::CAPTURE_ID, &capture_id.to_be_bytes());
    if let Some(key) = auth_key {
        push_chunk(&mut out, 0, chunk::AUTH_KEY, key.as_bytes());
    }
    push_chunk(&mut out, 0, chunk::PAYLOAD, payload);
    let total = u16::try_from(out.len())
        .unwrap_or_else(|_| panic!("HEP3 packet of {} bytes exceeds 65535", out.len()));
    out[4..6].copy_from_slice(&total.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
        From: <sip:alice@example.com>;tag=1928301774\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: a84b4c76e66710@192.0.2.1\r\n\
        CSeq: 314159 INVITE\r\n\
        Content-Length: 0\r\n\r\n";

    const MAX: usize = 64 * 1024;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A HEP3 packet made of exactly these (vendor, type, value) chunks.
    fn hep3(chunks: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"HEP3\0\0".to_vec();
        for (vendor, ty, value) in chunks {
            push_chunk(&mut out, *vendor, *ty, value);
        }
        let total = u16::try_from(out.len()).unwrap();
        out[4..6].copy_from_slice(&total.to_be_bytes());
        out
    }

    fn empty_v3() -> HepPacket {
        HepPacket {
            version: 3,
            ..HepPacket::default()
        }
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        encode_hep3(
            sa("192.0.2.1:5060"),
            sa("198.51.100.7:5080"),
            1_700_000_000,
            123_456,
            2001,
            Some("secret"),
            INVITE,
        )
    }

    #[test]
    fn hep3_round_trip_ipv4() {
        let bytes = sample();
        let p = decode(&bytes, MAX).expect("encoded packet decodes");
        let want = HepPacket {
            ip_family: Some(2),
            protocol: Some(17),
            src: Some(sa("192.0.2.1:5060")),
            dst: Some(sa("198.51.100.7:5080")),
            time_sec: Some(1_700_000_000),
            time_usec: Some(123_456),
            proto_type: Some(1),
            capture_id: Some(2001),
            auth_key: Some("secret".into()),
            payload: INVITE.to_vec(),
            ..empty_v3()
        };
        assert_eq!(p, want, "round trip changed the packet");

        let c = p
            .to_captured(42)
            .expect("a SIP capture becomes a CapturedMessage");
        assert_eq!(c.source, "hep:2001", "source");
        assert_eq!(c.transport, Transport::Udp, "transport");
        assert_eq!(c.direction, Direction::In, "direction");
        assert_eq!(c.time_ns, 1_700_000_000_123_456_000, "time from sec/usec");
        assert_eq!(
            (c.src, c.dst),
            (sa("192.0.2.1:5060"), sa("198.51.100.7:5080")),
            "addresses"
        );
        assert_eq!(c.raw, INVITE, "raw bytes");
    }

    #[test]
    fn hep3_round_trip_ipv6() {
        let (src, dst) = (sa("[2001:db8::1]:5060"), sa("[2001:db8:0:1::2]:5061"));
        let bytes = encode_hep3(src, dst, 1, 2, 7, None, INVITE);
        let p = decode(&bytes, MAX).expect("IPv6 packet decodes");
        assert_eq!(p.ip_family, Some(10), "IPv6 family");
        assert_eq!(
            (p.src, p.dst),
            (Some(src), Some(dst)),
            "IPv6 addresses and ports"
        );
        assert_eq!(p.auth_key, None, "no auth key was sent");
        assert_eq!(p.payload, INVITE, "payload");
    }

    #[test]
    fn hep3_each_chunk_type_alone() {
        let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let cases: Vec<(u16, Vec<u8>, HepPacket)> = vec![
            (
                chunk::IP_FAMILY,
                vec![10],
                HepPacket {
                    ip_family: Some(10),
                    ..empty_v3()
                },
            ),
            (
                chunk::IP_PROTOCOL,
                vec![6],
                HepPacket {
                    protocol: Some(6),
                    ..empty_v3()
                },
            ),
            (
                chunk::IPV4_SRC,
                vec![192, 0, 2, 9],
                HepPacket {
                    src: Some(sa("192.0.2.9:0")),
                    ..empty_v3()
                },
            ),
            (
                chunk::IPV4_DST,
                vec![192, 0, 2, 10],
                HepPacket {
                    dst: Some(sa("192.0.2.10:0")),
                    ..empty_v3()
                },
            ),
            (
                chunk::IPV6_SRC,
                v6.octets().to_vec(),
                HepPacket {
                    src: Some(SocketAddr::new(v6.into(), 0)),
                    ..empty_v3()
                },
            ),
            (
                chunk::IPV6_DST,
                v6.octets().to_vec(),
                HepPacket {
                    dst: Some(SocketAddr::new(v6.into(), 0)),
                    ..empty_v3()
                },
            ),
            (chunk::SRC_PORT, 5060u16.to_be_bytes().to_vec(), empty_v3()),
            (chunk::DST_PORT, 5060u16.to_be_bytes().to_vec(), empty_v3()),
            (
                chunk::TIME_SEC,
                0x6b06_3f30u32.to_be_bytes().to_vec(),
                HepPacket {
                    time_sec: Some(0x6b06_3f30),
                    ..empty_v3()
                },
            ),
            (
                chunk::TIME_USEC,
                999_999u32.to_be_bytes().to_vec(),
                HepPacket {
                    time_usec: Some(999_999),
                    ..empty_v3()
                },
            ),
            (
                chunk::PROTO_TYPE,
                vec![5],
                HepPacket {
                    proto_type: Some(5),
                    ..empty_v3()
                },
            ),
            (
                chunk::CAPTURE_ID,
                2001u32.to_be_bytes().to_vec(),
                HepPacket {
                    capture_id: Some(2001),
                    ..empty_v3()
                },
            ),
            (chunk::KEEP_ALIVE, 30u16.to_be_bytes().to_vec(), empty_v3()),
            (
                chunk::AUTH_KEY,
                b"kamailio-test\0".to_vec(),
                HepPacket {
                    auth_key: Some("kamailio-test".into()),
                    ..empty_v3()
                },
            ),
            (
                chunk::PAYLOAD,
                INVITE.to_vec(),
                HepPacket {
                    payload: INVITE.to_vec(),
                    ..empty_v3()
                },
            ),
            (
                chunk::COMPRESSED_PAYLOAD,
                zlib(INVITE),
                HepPacket {
                    payload: INVITE.to_vec(),
                    ..empty_v3()
                },
            ),
            (
                chunk::CORRELATION_ID,
                b"a84b4c76e66710@192.0.2.1".to_vec(),
                HepPacket {
                    correlation_id: Some("a84b4c76e66710@192.0.2.1".into()),
                    ..empty_v3()
                },
            ),
            (
                chunk::VLAN,
                100u16.to_be_bytes().to_vec(),
                HepPacket {
                    vlan: Some(100),
                    ..empty_v3()
                },
            ),
            (
                chunk::NODE_NAME,
                b"edge-1".to_vec(),
                HepPacket {
                    node_name: Some("edge-1".into()),
                    ..empty_v3()
                },
            ),
            (
                0x0014,
                vec![0; 6],
                HepPacket {
                    unknown_chunks: 1,
                    ..empty_v3()
                },
            ),
        ];
        for (ty, value, want) in cases {
            let got = decode(&hep3(&[(0, ty, value)]), MAX)
                .unwrap_or_else(|e| panic!("chunk {ty:#06x} alone does not decode: {e}"));
            assert_eq!(got, want, "chunk {ty:#06x} alone decoded wrong");
        }
    }

    #[test]
    fn hep3_all_chunks_together() {
        let bytes = hep3(&[
            (0, chunk::IP_FAMILY, vec![2]),
            (0, chunk::IP_PROTOCOL, vec![6]),
            (0, chunk::IPV4_SRC, vec![10, 0, 0, 1]),
            (0, chunk::IPV4_DST, vec![10, 0, 0, 2]),
            (0, chunk::SRC_PORT, 5070u16.to_be_bytes().to_vec()),
            (0, chunk::DST_PORT, 5060u16.to_be_bytes().to_vec()),
            (0, chunk::TIME_SEC, 1_800_000_000u32.to_be_bytes().to_vec()),
            (0, chunk::TIME_USEC, 5u32.to_be_bytes().to_vec()),
            (0, chunk::PROTO_TYPE, vec![1]),
            (0, chunk::CAPTURE_ID, 0u32.to_be_bytes().to_vec()),
            (0, chunk::KEEP_ALIVE, 30u16.to_be_bytes().to_vec()),
            (0, chunk::AUTH_KEY, b"k".to_vec()),
            (0, chunk::PAYLOAD, INVITE.to_vec()),
            (0, chunk::CORRELATION_ID, b"cid".to_vec()),
            (0, chunk::VLAN, 42u16.to_be_bytes().to_vec()),
            (0, chunk::NODE_NAME, b"sbc-7".to_vec()),
        ]);
        let p = decode(&bytes, MAX).expect("full packet decodes");
        let want = HepPacket {
            ip_family: Some(2),
            protocol: Some(6),
            src: Some(sa("10.0.0.1:5070")),
            dst: Some(sa("10.0.0.2:5060")),
            time_sec: Some(1_800_000_000),
            time_usec: Some(5),
            proto_type: Some(1),
            capture_id: Some(0),
            auth_key: Some("k".into()),
            payload: INVITE.to_vec(),
            correlation_id: Some("cid".into()),
            vlan: Some(42),
            node_name: Some("sbc-7".into()),
            ..empty_v3()
        };
        assert_eq!(p, want, "all-chunk packet decoded wrong");
        let c = p.to_captured(0).unwrap();
        assert_eq!(
            c.source, "hep:sbc-7",
            "capture id 0 with a node name is named by the node"
        );
        assert_eq!(c.transport, Transport::Tcp, "protocol 6 is TCP");
    }

    #[test]
    fn hep3_family_chooses_between_address_pairs() {
        let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let chunks = |family: u8| {
            hep3(&[
                (0, chunk::IP_FAMILY, vec![family]),
                (0, chunk::IPV4_SRC, vec![192, 0, 2, 1]),
                (0, chunk::IPV6_SRC, v6.octets().to_vec()),
                (0, chunk::SRC_PORT, 5060u16.to_be_bytes().to_vec()),
            ])
        };
        assert_eq!(
            decode(&chunks(2), MAX).unwrap().src,
            Some(sa("192.0.2.1:5060")),
            "family 2 picks IPv4"
        );
        assert_eq!(
            decode(&chunks(10), MAX).unwrap().src,
            Some(SocketAddr::new(v6.into(), 5060)),
            "family 10 picks IPv6"
        );
    }

    #[test]
    fn hep3_fixed_size_chunks_with_wrong_length_are_errors() {
        for (ty, len) in [
            (chunk::IP_FAMILY, 2),
            (chunk::IPV4_SRC, 5),
            (chunk::IPV6_DST, 4),
            (chunk::SRC_PORT, 4),
            (chunk::TIME_SEC, 8),
            (chunk::CAPTURE_ID, 3),
            (chunk::VLAN, 1),
        ] {
            let err = decode(&hep3(&[(0, ty, vec![1; len])]), MAX)
                .expect_err("wrong-size chunk must not decode");
            assert!(
                matches!(err, HepError::BadChunkValue { chunk_type, length, .. } if chunk_type == ty && length == len),
                "chunk {ty:#06x} with {len} bytes gave {err:?}"
            );
        }
    }

    #[test]
    fn capture_id_sngrep_quirk() {
        // sngrep -H: htons(2001) stored in a uint32_t on a little-endian host.
        let sngrep = hep3(&[(0, chunk::CAPTURE_ID, vec![0x07, 0xd1, 0x00, 0x00])]);
        assert_eq!(
            decode(&sngrep, MAX).unwrap().capture_id,
            Some(2001),
            "sngrep-style capture id"
        );
        let proper = hep3(&[(0, chunk::CAPTURE_ID, vec![0x00, 0x00, 0x07, 0xd1])]);
        assert_eq!(
            decode(&proper, MAX).unwrap().capture_id,
            Some(2001),
            "big-endian capture id"
        );
        let short = hep3(&[(0, chunk::CAPTURE_ID, vec![0x07, 0xd1])]);
        assert_eq!(
            decode(&short, MAX).unwrap().capture_id,
            Some(2001),
            "2-byte capture id"
        );
        assert_eq!(capture_id_from_wire([0, 0, 0, 0]), 0, "zero");
        assert_eq!(
            capture_id_from_wire([0x12, 0x34, 0x56, 0x78]),
            0x1234_5678,
            "full u32"
        );
        assert_eq!(
            capture_id_from_wire([0, 0x01, 0, 0]),
            1,
            "documented price: 65536 reads as 1"
        );
    }

    #[test]
    fn compressed_payload_zlib_and_gzip() {
        let body: Vec<u8> = INVITE.iter().copied().cycle().take(20_000).collect();
        for (name, data) in [("zlib", zlib(&body)), ("gzip", gzip(&body))] {
            assert!(
                data.len() < body.len(),
                "{name} data should be smaller than the body"
            );
            let p = decode(&hep3(&[(0, chunk::COMPRESSED_PAYLOAD, data)]), MAX)
                .unwrap_or_else(|e| panic!("{name} payload does not decode: {e}"));
            assert_eq!(p.payload, body, "{name} payload inflated wrong");
        }
        // Exactly at the limit is fine, one byte over is not.
        let data = zlib(&body);
        assert!(
            decode(
                &hep3(&[(0, chunk::COMPRESSED_PAYLOAD, data.clone())]),
                body.len()
            )
            .is_ok(),
            "payload at the limit"
        );
        let err = decode(
            &hep3(&[(0, chunk::COMPRESSED_PAYLOAD, data)]),
            body.len() - 1,
        )
        .unwrap_err();
        assert_eq!(
            err,
            HepError::PayloadTooLarge {
                limit: body.len() - 1
            },
            "payload one byte over the limit"
        );
        // Not a deflate stream at all.
        let err = decode(
            &hep3(&[(0, chunk::COMPRESSED_PAYLOAD, b"not zlib at all".to_vec())]),
            MAX,
        )
        .unwrap_err();
        assert!(
            matches!(err, HepError::Decompress(_)),
            "garbage in 0x0010 gave {err:?}"
        );
    }

    #[test]
    fn zip_bomb_is_refused_with_bounded_output() {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..48 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(
            bomb.len() < 60_000,
            "48 MiB of zeros should deflate to a HEP3-sized chunk, got {}",
            bomb.len()
        );
        let err = decode(&hep3(&[(0, chunk::COMPRESSED_PAYLOAD, bomb)]), MAX).unwrap_err();
        assert_eq!(err, HepError::PayloadTooLarge { limit: MAX }, "zip bomb");
        // The bound itself: inflate never produces more than limit + 1 bytes.
        let small = zlib(&[0u8; 10_000]);
        assert_eq!(
            inflate(&small, 100).unwrap_err(),
            HepError::PayloadTooLarge { limit: 100 }
        );
    }

    #[test]
    fn uncompressed_payload_over_limit_is_refused() {
        let err = decode(&sample(), 10).unwrap_err();
        assert_eq!(
            err,
            HepError::PayloadTooLarge { limit: 10 },
            "plain payload over the limit"
        );
    }

    #[test]
    fn unknown_vendor_chunks_are_skipped_and_counted() {
        let bytes = hep3(&[
            (0x0009, 0x0001, vec![9, 9, 9]), // vendor 9 reusing a generic type number
            (0, chunk::IP_FAMILY, vec![2]),
            (0x1234, 0x00ff, vec![]),
            (0, chunk::PAYLOAD, INVITE.to_vec()),
            (0xffff, 0xffff, vec![0xaa; 100]),
            (0, 0x0099, vec![1, 2]), // vendor 0, type unknown here
        ]);
        let p = decode(&bytes, MAX).expect("packet with foreign chunks decodes");
        assert_eq!(p.unknown_chunks, 4, "skipped chunk count");
        assert_eq!(
            p.ip_family,
            Some(2),
            "vendor-9 chunk type 1 must not set the family"
        );
        assert_eq!(p.payload, INVITE, "payload after foreign chunks");
    }

    #[test]
    fn trailing_bytes_after_total_length_are_ignored() {
        let mut bytes = sample();
        bytes.extend_from_slice(b"trailing junk");
        assert_eq!(
            decode(&bytes, MAX).unwrap(),
            decode(&sample(), MAX).unwrap(),
            "trailing bytes changed the decode"
        );
    }

    fn v12_ipv4(version: u8) -> Vec<u8> {
        let mut b = vec![version, 16, 2, 17];
        b.extend(5060u16.to_be_bytes());
        b.extend(5080u16.to_be_bytes());
        b.extend([192, 0, 2, 1]);
        b.extend([198, 51, 100, 7]);
        if version == 2 {
            b.extend(1_700_000_000u32.to_le_bytes());
            b.extend(250_000u32.to_le_bytes());
            b.extend(2001u16.to_le_bytes());
            b.extend([0, 0]); // struct padding
        }
        b.extend(INVITE);
        b
    }

    #[test]
    fn hep_v1_by_hand() {
        let p = decode(&v12_ipv4(1), MAX).expect("v1 decodes");
        let want = HepPacket {
            version: 1,
            ip_family: Some(2),
            protocol: Some(17),
            src: Some(sa("192.0.2.1:5060")),
            dst: Some(sa("198.51.100.7:5080")),
            payload: INVITE.to_vec(),
            ..empty_v3()
        };
        assert_eq!(p, want, "v1 packet decoded wrong");
        let c = p.to_captured(77).expect("v1 carries SIP");
        assert_eq!(
            (c.time_ns, c.source.as_str()),
            (77, "hep:unknown"),
            "v1 has no time and no capture id"
        );
    }

    #[test]
    fn hep_v2_by_hand() {
        let p = decode(&v12_ipv4(2), MAX).expect("v2 decodes");
        let want = HepPacket {
            version: 2,
            ip_family: Some(2),
            protocol: Some(17),
            src: Some(sa("192.0.2.1:5060")),
            dst: Some(sa("198.51.100.7:5080")),
            time_sec: Some(1_700_000_000),
            time_usec: Some(250_000),
            capture_id: Some(2001),
            payload: INVITE.to_vec(),
            ..empty_v3()
        };
        assert_eq!(p, want, "v2 packet decoded wrong");
        assert_eq!(p.to_captured(0).unwrap().source, "hep:2001", "v2 source");

        let mut b = vec![2, 40, 10, 6];
        b.extend(5060u16.to_be_bytes());
        b.extend(5061u16.to_be_bytes());
        b.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
        b.extend(INVITE);
        let p = decode(&b, MAX).expect("v2 IPv6 decodes");
        assert_eq!(
            (p.src, p.dst),
            (
                Some(sa("[2001:db8::1]:5060")),
                Some(sa("[2001:db8::2]:5061"))
            ),
            "v2 IPv6 addresses"
        );
        assert_eq!(
            (p.time_sec, p.time_usec, p.capture_id),
            (Some(1), Some(2), Some(3)),
            "v2 time header"
        );
        assert_eq!(
            p.to_captured(0).unwrap().transport,
            Transport::Tcp,
            "v2 protocol 6"
        );
    }

    #[test]
    fn hep_v1_v2_errors() {
        let mut bad_len = v12_ipv4(1);
        bad_len[1] = 40;
        assert!(
            matches!(decode(&bad_len, MAX), Err(HepError::BadV12Header { .. })),
            "IPv4 with header length 40"
        );
        let mut bad_family = v12_ipv4(2);
        bad_family[2] = 99;
        assert!(
            matches!(
                decode(&bad_family, MAX),
                Err(HepError::BadV12Header { family: 99, .. })
            ),
            "family 99"
        );
        let v2 = v12_ipv4(2);
        for cut in 0..28 {
            let r = decode(&v2[..cut], MAX);
            assert!(
                matches!(r, Err(HepError::Truncated { .. })),
                "v2 cut at {cut} gave {r:?}"
            );
        }
        assert_eq!(
            decode(&v2[..28], MAX).unwrap().payload,
            b"",
            "v2 with empty payload"
        );
    }

    #[test]
    fn hep3_errors_not_panics() {
        let good = sample();
        for cut in 0..good.len() {
            let r = decode(&good[..cut], MAX);
            assert!(
                matches!(r, Err(HepError::Truncated { .. })),
                "HEP3 cut at {cut} of {} gave {r:?}",
                good.len()
            );
        }

        // A chunk claiming more bytes than the packet has.
        let mut overrun = hep3(&[
            (0, chunk::IP_FAMILY, vec![2]),
            (0, chunk::PAYLOAD, INVITE.to_vec()),
        ]);
        let at = 6 + 7;
        overrun[at + 4..at + 6].copy_from_slice(&(6 + INVITE.len() as u16 + 1).to_be_bytes());
        assert!(
            matches!(
                decode(&overrun, MAX),
                Err(HepError::ChunkOverrun {
                    offset: 13,
                    chunk_type: chunk::PAYLOAD,
                    ..
                })
            ),
            "overrunning payload chunk gave {:?}",
            decode(&overrun, MAX)
        );

        let mut zero = hep3(&[(0, chunk::IP_FAMILY, vec![2])]);
        zero[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(
            decode(&zero, MAX).unwrap_err(),
            HepError::ZeroLengthChunk {
                offset: 6,
                vendor: 0,
                chunk_type: 1
            },
            "zero-length chunk"
        );

        let mut short = hep3(&[(0, chunk::IP_FAMILY, vec![2])]);
        short[10..12].copy_from_slice(&[0, 3]);
        assert!(
            matches!(
                decode(&short, MAX),
                Err(HepError::ChunkTooShort { length: 3, .. })
            ),
            "chunk length 3"
        );

        // Total length covering half a chunk header.
        let mut half = hep3(&[(0, chunk::IP_FAMILY, vec![2])]);
        half.extend([0, 0, 0]);
        let n = half.len() as u16;
        half[4..6].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            decode(&half, MAX).unwrap_err(),
            HepError::ChunkHeaderOverrun {
                offset: 13,
                remaining: 3
            },
            "half chunk header"
        );

        let mut tiny = sample();
        tiny[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(
            decode(&tiny, MAX).unwrap_err(),
            HepError::BadTotalLength { declared: 4 },
            "total length 4"
        );

        let mut long = sample();
        let n = long.len() as u16 + 10;
        long[4..6].copy_from_slice(&n.to_be_bytes());
        assert!(
            matches!(decode(&long, MAX), Err(HepError::Truncated { .. })),
            "total length past the datagram"
        );

        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0u8; 64][..],
            &[0xffu8; 64][..],
            &b"HEP2\x00\x10"[..],
            &b"EEP3"[..],
            &[3u8, 16, 2, 17][..],
        ] {
            let r = decode(garbage, MAX);
            assert!(
                matches!(r, Err(HepError::BadMagic { .. })),
                "garbage {garbage:02x?} gave {r:?}"
            );
        }
        assert!(
            decode(b"HEP3\x00\x06", MAX).is_ok(),
            "a header-only HEP3 packet is a valid, empty packet"
        );
    }

    #[test]
    fn to_captured_skips_non_sip_and_empty() {
        let rtcp = hep3(&[
            (0, chunk::PROTO_TYPE, vec![proto_type::RTCP]),
            (0, chunk::PAYLOAD, b"{}".to_vec()),
        ]);
        assert_eq!(
            decode(&rtcp, MAX).unwrap().to_captured(0),
            None,
            "RTCP is not archived as SIP"
        );
        let log = hep3(&[
            (0, chunk::PROTO_TYPE, vec![proto_type::LOG]),
            (0, chunk::PAYLOAD, b"x".to_vec()),
        ]);
        assert_eq!(
            decode(&log, MAX).unwrap().to_captured(0),
            None,
            "logs are not archived as SIP"
        );
        let keepalive = hep3(&[
            (0, chunk::PROTO_TYPE, vec![1]),
            (0, chunk::CAPTURE_ID, vec![0, 0, 0, 1]),
        ]);
        assert_eq!(
            decode(&keepalive, MAX).unwrap().to_captured(0),
            None,
            "nothing to archive without payload"
        );
        let bare = hep3(&[(0, chunk::PAYLOAD, INVITE.to_vec())]);
        let c = decode(&bare, MAX)
            .unwrap()
            .to_captured(99)
            .expect("no proto type counts as SIP");
        assert_eq!(
            (c.time_ns, c.source.as_str(), c.src),
            (99, "hep:unknown", sa("0.0.0.0:0")),
            "fallbacks"
        );
        let tls = hep3(&[
            (0, chunk::IP_PROTOCOL, vec![22]),
            (0, chunk::PAYLOAD, INVITE.to_vec()),
        ]);
        assert_eq!(
            decode(&tls, MAX).unwrap().to_captured(0).unwrap().transport,
            Transport::Tls,
            "Kamailio TLS marker"
        );
    }

    fn drain(d: &mut HepStreamDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(p) = d.next_packet().expect("valid stream") {
            out.push(p);
        }
        out
    }

    fn three_packets() -> Vec<Vec<u8>> {
        vec![
            sample(),
            encode_hep3(
                sa("[::1]:5060"),
                sa("[::1]:5062"),
                1,
                2,
                3,
                None,
                b"SIP/2.0 200 OK\r\n\r\n",
            ),
            hep3(&[
                (0, chunk::COMPRESSED_PAYLOAD, zlib(INVITE)),
                (7, 7, vec![7]),
            ]),
        ]
    }

    #[test]
    fn stream_several_packets_per_push() {
        let packets = three_packets();
        let mut d = HepStreamDecoder::new(HEP3_MAX_LEN);
        d.push(&packets.concat());
        assert_eq!(drain(&mut d), packets, "three packets from one push");
        assert_eq!(d.buffered(), 0, "nothing left over");
        for p in &packets {
            decode(p, MAX).expect("framed packet decodes");
        }
    }

    #[test]
    fn stream_packet_split_byte_by_byte() {
        let packets = three_packets();
        let all = packets.concat();
        let mut d = HepStreamDecoder::new(HEP3_MAX_LEN);
        let mut got = Vec::new();
        let mut boundaries = Vec::new();
        for (i, b) in all.iter().enumerate() {
            d.push(std::slice::from_ref(b));
            let before = got.len();
            got.extend(drain(&mut d));
            if got.len() > before {
                boundaries.push(i + 1);
            }
        }
        assert_eq!(got, packets, "packets fed byte by byte");
        let mut ends = Vec::new();
        let mut at = 0;
        for p in &packets {
            at += p.len();
            ends.push(at);
        }
        assert_eq!(
            boundaries, ends,
            "each packet is released exactly when its last byte arrives"
        );
    }

    #[test]
    fn stream_framing_errors_are_sticky() {
        let mut d = HepStreamDecoder::new(HEP3_MAX_LEN);
        d.push(b"HE");
        assert_eq!(d.next_packet(), Ok(None), "a magic prefix waits for more");
        d.push(b"X3\x00\x10");
        let err = d.next_packet().unwrap_err();
        assert!(
            matches!(err, HepError::BadMagic { .. }),
            "bad magic gave {err:?}"
        );
        d.push(&sample());
        assert_eq!(d.next_packet().unwrap_err(), err, "the stream stays failed");

        let mut d = HepStreamDecoder::new(100);
        d.push(&sample()[..6]);
        let len = sample().len();
        assert_eq!(
            d.next_packet().unwrap_err(),
            HepError::PacketTooLarge {
                length: len,
                max: 100
            },
            "oversized packet"
        );

        let mut d = HepStreamDecoder::new(HEP3_MAX_LEN);
        d.push(b"HEP3\x00\x02");
        assert_eq!(
            d.next_packet().unwrap_err(),
            HepError::BadTotalLength { declared: 2 },
            "total length 2"
        );
    }

    fn base_packets() -> Vec<Vec<u8>> {
        let mut v = three_packets();
        v.push(v12_ipv4(1));
        v.push(v12_ipv4(2));
        v.push(hep3(&[
            (0, chunk::CAPTURE_ID, vec![0x07, 0xd1, 0, 0]),
            (0, chunk::NODE_NAME, b"n".to_vec()),
            (0, chunk::VLAN, vec![0, 1]),
            (0, chunk::CORRELATION_ID, b"c".to_vec()),
        ]));
        v
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Set(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
        Truncate(prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<prop::sample::Index>().prop_map(Mutation::Remove),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
        if bytes.is_empty() {
            return;
        }
        match m {
            Mutation::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Mutation::Remove(i) => {
                let i = i.index(bytes.len());
                bytes.remove(i);
            }
            Mutation::Truncate(i) => {
                let i = i.index(bytes.len());
                bytes.truncate(i);
            }
        }
    }

    fn check_decode(bytes: &[u8]) {
        if let Ok(p) = decode(bytes, 4096) {
            assert!(
                p.payload.len() <= 4096,
                "payload over the limit slipped through"
            );
            let _ = p.to_captured(0);
        }
    }

    fn check_stream(bytes: &[u8], cuts: &[prop::sample::Index]) {
        let mut d = HepStreamDecoder::new(2048);
        let mut pieces: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        pieces.sort_unstable();
        let mut from = 0;
        for to in pieces.into_iter().chain([bytes.len()]) {
            d.push(&bytes[from..to]);
            from = to;
            while let Ok(Some(p)) = d.next_packet() {
                assert!(
                    p.len() <= 2048 && p.starts_with(b"HEP3"),
                    "stream returned a bad frame"
                );
                check_decode(&p);
            }
        }
    }

    fn ip_strategy() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn prop_random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            prefix in prop_oneof![Just(&b""[..]), Just(&b"HEP3"[..]), Just(&[1u8, 16, 2][..]), Just(&[2u8, 40, 10][..])],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut b = prefix.to_vec();
            b.extend(bytes);
            check_decode(&b);
            check_stream(&b, &cuts);
        }

        #[test]
        fn prop_mutated_packets_never_panic(
            which in any::<prop::sample::Index>(),
            mutations in prop::collection::vec(mutation(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let packets = base_packets();
            let mut b = packets[which.index(packets.len())].clone();
            for m in &mutations {
                apply(&mut b, m);
            }
            check_decode(&b);
            let mut stream = b.clone();
            stream.extend(sample());
            check_stream(&stream, &cuts);
        }

        #[test]
        fn prop_round_trip(
            src_ip in ip_strategy(), dst_ip in ip_strategy(),
            ports in any::<(u16, u16)>(), sec in any::<u32>(), usec in 0u32..1_000_000,
            capture_id in any::<u32>().prop_filter("not the sngrep pattern", |id| id & 0xffff != 0 || *id == 0),
            key in proptest::option::of("[a-z0-9-]{0,20}"),
            payload in prop::collection::vec(any::<u8>(), 1..2000),
        ) {
            let (src, dst) = (SocketAddr::new(src_ip, ports.0), SocketAddr::new(dst_ip, ports.1));
            let bytes = encode_hep3(src, dst, sec, usec, capture_id, key.as_deref(), &payload);
            let p = decode(&bytes, MAX).unwrap();
            prop_assert_eq!((p.src, p.dst), (Some(src), Some(dst)));
            prop_assert_eq!((p.time_sec, p.time_usec, p.capture_id), (Some(sec), Some(usec), Some(capture_id)));
            prop_assert_eq!(&p.auth_key, &key);
            prop_assert_eq!(&p.payload, &payload);
            let c = p.to_captured(0).unwrap();
            prop_assert_eq!(c.time_ns, i64::from(sec) * 1_000_000_000 + i64::from(usec) * 1000);
        }

        #[test]
        fn prop_stream_reassembles_any_split(
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let hep3_packets: Vec<Vec<u8>> = base_packets().into_iter().filter(|p| p.starts_with(b"HEP3")).collect();
            let packets: Vec<Vec<u8>> = picks.iter().map(|i| hep3_packets[i.index(hep3_packets.len())].clone()).collect();
            let all = packets.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(all.len() + 1)).collect();
            points.sort_unstable();
            let mut d = HepStreamDecoder::new(HEP3_MAX_LEN);
            let mut got = Vec::new();
            let mut from = 0;
            for to in points.into_iter().chain([all.len()]) {
                d.push(&all[from..to]);
                from = to;
                while let Some(p) = d.next_packet().unwrap() {
                    got.push(p);
                }
            }
            prop_assert_eq!(got, packets);
            prop_assert_eq!(d.buffered(), 0);
        }
    }

    // ---- the real captures in shared/testdata/hep ----

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/hep")
    }

    /// (UDP destination port, UDP payload) of each IPv4/UDP frame of a
    /// classic pcap file with Ethernet link layer.
    fn pcap_udp_payloads(data: &[u8], file: &str) -> Vec<(u16, Vec<u8>)> {
        assert!(
            data.len() >= 24,
            "{file}: shorter than a pcap global header"
        );
        let le = match data[..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => panic!(
                "{file}: not a classic pcap file (magic {:02x?})",
                &data[..4]
            ),
        };
        let u32_at = |at: usize| {
            let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            if le {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        };
        assert_eq!(u32_at(20), 1, "{file}: link type is not Ethernet");
        let mut out = Vec::new();
        let mut pos = 24;
        while pos < data.len() {
            assert!(
                pos + 16 <= data.len(),
                "{file}: truncated record header at offset {pos}"
            );
            let incl = u32_at(pos + 8) as usize;
            assert!(
                pos + 16 + incl <= data.len(),
                "{file}: truncated record at offset {pos}"
            );
            let frame = &data[pos + 16..pos + 16 + incl];
            pos += 16 + incl;
            let mut off = 14;
            let mut ether_type = be16(frame, 12);
            while ether_type == 0x8100 {
                ether_type = be16(frame, off + 2);
                off += 4;
            }
            if ether_type != 0x0800 {
                continue;
            }
            let ip = &frame[off..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let ip_len = usize::from(be16(ip, 2));
            if ip[9] != IPPROTO_UDP {
                continue;
            }
            let udp = &ip[ihl..ip_len];
            let udp_len = usize::from(be16(udp, 4));
            out.push((be16(udp, 2), udp[8..udp_len].to_vec()));
        }
        out
    }

    /// Generic chunk types present in a HEP3 packet that decoded.
    fn generic_chunk_types(packet: &[u8]) -> Vec<u16> {
        let total = usize::from(be16(packet, 4));
        let mut pos = HEP3_HEADER_LEN;
        let mut types = Vec::new();
        while pos + CHUNK_HEADER_LEN <= total {
            if be16(packet, pos) == 0 {
                types.push(be16(packet, pos + 2));
            }
            pos += usize::from(be16(packet, pos + 4)).max(CHUNK_HEADER_LEN);
        }
        types
    }

    /// `INVITE`, `response 200`, ... as INDEX.tsv names SIP messages.
    fn sip_label(payload: &[u8]) -> String {
        let line = payload
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        match line.strip_prefix("SIP/2.0 ") {
            Some(rest) => format!("response {}", rest.split(' ').next().unwrap_or_default()),
            None => line.split(' ').next().unwrap_or_default().to_owned(),
        }
    }

    fn call_id(payload: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(payload);
        text.split("\r\n")
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim();
                (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                    .then(|| value.trim().to_owned())
            })
    }

    #[test]
    fn real_captures_match_index() {
        let dir = testdata();
        let index = std::fs::read_to_string(dir.join("INDEX.tsv"))
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join("INDEX.tsv").display()));
        let mut lines = index.lines();
        let header: Vec<&str> = lines
            .next()
            .expect("INDEX.tsv has a header")
            .split('\t')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("INDEX.tsv has no column {name}"))
        };
        let auth_keys = BTreeMap::from([
            ("kamailio-siptrace-register-message.pcap", "kamailio-test"),
            ("hep_send-call-basic.pcap", "hep-test"),
            ("hep_send-message.pcap", "hep-test"),
        ]);
        let mut files = 0;
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let row: Vec<&str> = line.split('\t').collect();
            let file = row[col("file")];
            let num = |name: &str| -> usize {
                row[col(name)]
                    .parse()
                    .unwrap_or_else(|e| panic!("{file}: INDEX column {name}: {e}"))
            };
            let data = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                data.len(),
                num("bytes"),
                "{file}: file size differs from INDEX.tsv"
            );
            assert_eq!(
                hex::encode(Sha256::digest(&data)),
                row[col("sha256")],
                "{file}: sha256 differs from INDEX.tsv"
            );
            assert_eq!(
                row[col("link_layer")],
                "ether",
                "{file}: link layer in INDEX.tsv"
            );

            let datagrams: Vec<Vec<u8>> = pcap_udp_payloads(&data, file)
                .into_iter()
                .filter(|(port, _)| *port == 9060)
                .map(|(_, p)| p)
                .collect();
            assert_eq!(
                datagrams.len(),
                num("udp9060_datagrams"),
                "{file}: UDP/9060 datagram count"
            );

            let mut valid = 0;
            let mut errors = Vec::new();
            let mut capture_ids = BTreeSet::new();
            let mut chunk_types = BTreeSet::new();
            let mut sip: BTreeMap<String, usize> = BTreeMap::new();
            let mut call_ids = BTreeSet::new();
            for (i, d) in datagrams.iter().enumerate() {
                let p = match decode(d, MAX) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("datagram {i}: {e}"));
                        continue;
                    }
                };
                valid += 1;
                assert_eq!(p.version, 3, "{file} datagram {i}: version");
                assert_eq!(
                    p.auth_key.as_deref(),
                    auth_keys.get(file).copied(),
                    "{file} datagram {i}: auth key"
                );
                assert_eq!(
                    p.unknown_chunks, 0,
                    "{file} datagram {i}: unexpected unknown chunks"
                );
                capture_ids.extend(p.capture_id);
                chunk_types.extend(generic_chunk_types(d));
                *sip.entry(sip_label(&p.payload)).or_default() += 1;
                let cid = call_id(&p.payload)
                    .unwrap_or_else(|| panic!("{file} datagram {i}: no Call-ID in the payload"));
                if let Some(corr) = &p.correlation_id {
                    assert_eq!(
                        corr, &cid,
                        "{file} datagram {i}: correlation id is not the Call-ID"
                    );
                }
                call_ids.insert(cid);

                let c = p
                    .to_captured(0)
                    .unwrap_or_else(|| panic!("{file} datagram {i}: SIP capture not archivable"));
                assert_eq!(c.source, "hep:2001", "{file} datagram {i}: source");
                assert_eq!(
                    c.transport,
                    Transport::Udp,
                    "{file} datagram {i}: transport"
                );
                let (sec, usec) = (p.time_sec.unwrap(), p.time_usec.unwrap());
                assert_eq!(
                    c.time_ns,
                    i64::from(sec) * 1_000_000_000 + i64::from(usec) * 1000,
                    "{file} datagram {i}: time"
                );
                assert!(
                    c.src.ip().is_loopback() && c.dst.ip().is_loopback(),
                    "{file} datagram {i}: inner addresses {} -> {}",
                    c.src,
                    c.dst
                );
                assert_eq!(c.raw, p.payload, "{file} datagram {i}: raw");
            }
            assert_eq!(
                valid,
                num("valid_hep3"),
                "{file}: valid HEP3 count; errors: {errors:?}"
            );
            assert_eq!(
                errors.len(),
                num("invalid"),
                "{file}: invalid count; errors: {errors:?}"
            );

            let want_ids: BTreeSet<u32> = row[col("capture_ids")]
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .unwrap_or_else(|e| panic!("{file}: INDEX capture id {s:?}: {e}"))
                })
                .collect();
            assert_eq!(capture_ids, want_ids, "{file}: capture ids");

            let want_types: BTreeSet<u16> = row[col("chunk_types")]
                .split_whitespace()
                .map(|s| {
                    u16::from_str_radix(s.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|e| panic!("{file}: INDEX chunk type {s:?}: {e}"))
                })
                .collect();
            assert_eq!(chunk_types, want_types, "{file}: chunk types");

            let want_sip: BTreeMap<String, usize> = row[col("sip_in_payloads")]
                .split(',')
                .map(|kv| {
                    let (k, v) = kv
                        .rsplit_once(':')
                        .unwrap_or_else(|| panic!("{file}: INDEX sip entry {kv:?}"));
                    (
                        k.to_owned(),
                        v.parse()
                            .unwrap_or_else(|e| panic!("{file}: INDEX sip count {kv:?}: {e}")),
                    )
                })
                .collect();
            assert_eq!(
                sip, want_sip,
                "{file}: SIP messages per method / response code"
            );
            assert_eq!(call_ids.len(), num("call_ids"), "{file}: distinct Call-IDs");
            files += 1;
        }
        assert_eq!(files, 3, "INDEX.tsv should list the three captures");
    }
}
