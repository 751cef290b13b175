//! Capture-file import: pcap and pcapng files to [`CapturedMessage`]s.
//!
//! `sipvault import` (and tests, and the fuzzers) hand a capture file to
//! [`import_file`] / [`import_reader`]; every SIP message found in it comes
//! out through a callback, in capture order as far as reassembly allows.
//!
//! # Layers
//!
//! * [`reader`](self) (file formats): pcap (micro- and nanosecond magic, both
//!   byte orders) and pcapng (several sections and interfaces, each with its
//!   own link type and `if_tsresol`), read with `pcap-parser`. A file cut
//!   mid-record ends the import with what was read so far.
//! * [`PacketDecoder`] (sans-IO): `(time_ns, link_type, bytes)` in, messages
//!   out. Link layers (Ethernet with 802.1Q/802.1ad tags, Linux SLL and SLL2,
//!   raw IP, BSD null/loopback), IPv4/IPv6 with fragment reassembly, tunnels
//!   (GRE incl. transparent Ethernet bridging and ERSPAN I/II/III, IP-in-IP,
//!   IPv6-in-IP, HEP inside UDP), UDP, TCP stream reassembly ([`tcp`]) and
//!   SCTP DATA chunks. Ethernet/VLAN/IP/UDP/TCP headers are parsed by
//!   `etherparse`; the few headers it does not cover are parsed here.
//! * SIP is recognised by content, never by port: a UDP datagram, an SCTP
//!   DATA chunk or the start of a TCP stream is SIP when it starts with a SIP
//!   request line or status line. TCP streams are framed by Content-Length
//!   with [`sipvault_sip::StreamFramer`].
//!
//! # Skip reasons
//!
//! Nothing in a capture stops an import except a file that cannot be read
//! any further. Everything that is not turned into a SIP message is counted
//! in [`ImportStats::skipped`] under one of these stable keys (see
//! [`reason`]):
//!
//! | key | what was skipped |
//! |---|---|
//! | `not-sip` | a UDP datagram, SCTP DATA chunk or TCP segment whose payload is not SIP (for TCP: every segment of a flow that does not start like SIP) |
//! | `tls` | a TCP segment of a TLS flow (SIP over TLS cannot be read without keys) |
//! | `keepalive` | a UDP datagram of only CR/LF/white space (RFC 5626 style keep-alive) |
//! | `empty-payload` | a UDP datagram with no payload |
//! | `non-ip` | a frame carrying neither IPv4 nor IPv6 (ARP, LLDP, 802.3/LLC, ...) |
//! | `other-ip-protocol` | an IP packet that is not UDP, TCP, SCTP, GRE, IP-in-IP or IPv6-in-IP (ICMP, ESP, OSPF, ...) |
//! | `malformed-packet` | a header that does not parse |
//! | `truncated-packet` | a packet cut short by the capture's snap length |
//! | `unsupported-link-type` | a packet of a link type not decoded here |
//! | `unsupported-tunnel` | GRE with a version, routing or payload type not decoded here |
//! | `tunnel-depth` | a packet nested in more than 8 encapsulations |
//! | `fragment-timeout` | an IP fragment set still incomplete 30 s (capture time) after its first fragment, or at the end of the file |
//! | `fragment-invalid` | an IP fragment set with conflicting, misaligned or oversize fragments (the set is dropped) |
//! | `reassembly-memory` | data dropped because `max_reassembly_bytes` was reached |
//! | `tcp-gap` | a hole in a TCP stream that was never filled; the stream resyncs at the next SIP start line |
//! | `tcp-retransmission` | a TCP segment holding only bytes already received |
//! | `incomplete-message` | a TCP stream that ended (FIN, RST, idle, end of file) inside a message |
//! | `oversize-message` | a SIP message larger than `max_message` |
//! | `bad-content-length` | a SIP message on TCP without a usable Content-Length (it cannot be framed; the stream resyncs) |
//! | `sctp-fragment` | a DATA chunk that is one piece of a fragmented SCTP user message |
//! | `hep-undecodable` | a UDP payload or TCP stream that starts like HEP3 but does not decode |
//! | `hep-non-sip` | a HEP packet whose payload is not SIP (RTCP, logs, keep-alives) |
//! | `unknown-block` | a pcapng block of an unknown type |
//! | `malformed-block` | a pcapng block with a sound length but unparsable content |
//! | `unknown-interface` | a pcapng packet naming an interface that was never described |
//! | `truncated-file` | the file ends inside a record: the import ends there |
//! | `corrupt-file` | a pcapng block length that cannot be right: the import ends there |
//! | `oversize-record` | a record larger than 16 MiB: the import ends there |
//! | `read-error` | an I/O error after the file header: the import ends there |

mod decoder;
mod detect;
mod ipfrag;
mod link;
mod reader;
mod sctp;
pub mod tcp;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sipvault_schemas::CapturedMessage;

pub use decoder::PacketDecoder;
pub use tcp::MemoryBudget;

/// Skip-reason keys of [`ImportStats::skipped`] (table in the module docs).
pub mod reason {
    pub const NOT_SIP: &str = "not-sip";
    pub const TLS: &str = "tls";
    pub const KEEPALIVE: &str = "keepalive";
    pub const EMPTY_PAYLOAD: &str = "empty-payload";
    pub const NON_IP: &str = "non-ip";
    pub const OTHER_IP_PROTOCOL: &str = "other-ip-protocol";
    pub const MALFORMED_PACKET: &str = "malformed-packet";
    pub const TRUNCATED_PACKET: &str = "truncated-packet";
    pub const UNSUPPORTED_LINK_TYPE: &str = "unsupported-link-type";
    pub const UNSUPPORTED_TUNNEL: &str = "unsupported-tunnel";
    pub const TUNNEL_DEPTH: &str = "tunnel-depth";
    pub const FRAGMENT_TIMEOUT: &str = "fragment-timeout";
    pub const FRAGMENT_INVALID: &str = "fragment-invalid";
    pub const REASSEMBLY_MEMORY: &str = "reassembly-memory";
    pub const TCP_GAP: &str = "tcp-gap";
    pub const TCP_RETRANSMISSION: &str = "tcp-retransmission";
    pub const INCOMPLETE_MESSAGE: &str = "incomplete-message";
    pub const OVERSIZE_MESSAGE: &str = "oversize-message";
    pub const BAD_CONTENT_LENGTH: &str = "bad-content-length";
    pub const SCTP_FRAGMENT: &str = "sctp-fragment";
    pub const HEP_UNDECODABLE: &str = "hep-undecodable";
    pub const HEP_NON_SIP: &str = "hep-non-sip";
    pub const UNKNOWN_BLOCK: &str = "unknown-block";
    pub const MALFORMED_BLOCK: &str = "malformed-block";
    pub const UNKNOWN_INTERFACE: &str = "unknown-interface";
    pub const TRUNCATED_FILE: &str = "truncated-file";
    pub const CORRUPT_FILE: &str = "corrupt-file";
    pub const OVERSIZE_RECORD: &str = "oversize-record";
    pub const READ_ERROR: &str = "read-error";
}

/// How an import behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// `source` of every CapturedMessage, e.g. "pcap:call.pcap"
    pub source: String,
    /// Largest SIP message accepted from a stream (bigger: counted and skipped). Default 1 MiB.
    pub max_message: usize,
    /// Bound on bytes held for TCP reassembly and IP fragments in total. Default 64 MiB.
    pub max_reassembly_bytes: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            source: "pcap".to_owned(),
            max_message: 1024 * 1024,
            max_reassembly_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What an import read and what it skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportStats {
    /// Packet records read from the file.
    pub packets: u64,
    /// File bytes consumed.
    pub bytes: u64,
    /// CapturedMessages emitted.
    pub sip_messages: u64,
    /// Reason -> count, for everything not turned into SIP (keys in [`reason`],
    /// meanings in the module docs).
    pub skipped: BTreeMap<String, u64>,
}

/// The file cannot be imported at all. Damage inside a capture is never an
/// error: it is counted in [`ImportStats::skipped`].
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the capture: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a pcap or pcapng file: {0}")]
    NotCapture(String),
}

/// Reads one capture file and hands every SIP message found to `sink`, in capture order
/// (as far as reassembly allows). `progress` is called now and then with total file bytes
/// consumed so far (the binary drives an indicatif bar with it). Malformed packets never stop the
/// import: they are counted in `skipped`. A file cut mid-record ends the import with the
/// messages read so far and "truncated-file" counted.
pub fn import_file(
    path: &Path,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(CapturedMessage),
    progress: &mut dyn FnMut(u64),
) -> Result<ImportStats, PcapError> {
    import_reader(open_capture(path)?, opts, sink, progress)
}

/// Opens a capture file for [`import_reader`], the error naming the path.
pub fn open_capture(path: &Path) -> Result<std::fs::File, PcapError> {
    std::fs::File::open(path).map_err(|source| PcapError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Same as [`import_file`] over any reader (tests, fuzzing); the total
/// length need not be known.
pub fn import_reader<R: std::io::Read>(
    reader: R,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(CapturedMessage),
    progress: &mut dyn FnMut(u64),
) -> Result<ImportStats, PcapError> {
    reader::import(reader, opts, sink, progress)
}
