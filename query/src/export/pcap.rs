//! Raw SIP messages as a classic pcap file that Wireshark and tshark open.
//!
//! The archive keeps each message's bytes, addresses (`ip:port` text) and
//! capture time, not the packets it came in. Each message is written as one
//! IP/UDP packet built from those: link type `LINKTYPE_RAW` (101, the
//! packet starts with its IP header, v4 or v6), nanosecond timestamps
//! (magic `0xa1b23c4d`), IPv4 header checksum and UDP checksum computed.
//!
//! Whatever the original transport (UDP, TCP, TLS, SCTP), the packet is
//! UDP: one message, one datagram, no synthetic TCP stream to keep
//! consistent. An address that does not parse as `ip:port` becomes the
//! placeholder [`PLACEHOLDER_SRC`] / [`PLACEHOLDER_DST`] (TEST-NET-1,
//! RFC 5737); when one side is IPv6 and the other IPv4, the IPv4 address is
//! written IPv4-mapped (`::ffff:a.b.c.d`).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use etherparse::PacketBuilder;

/// `LINKTYPE_RAW`: the packet begins with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// Magic number of a classic pcap file with nanosecond timestamps.
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// Snapshot length announced in the file header.
pub const SNAPLEN: u32 = 262_144;
/// Stands for a source address the archive row does not give as `ip:port`.
pub const PLACEHOLDER_SRC: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 5060));
/// Stands for a destination address the archive row does not give as `ip:port`.
pub const PLACEHOLDER_DST: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 5060));
/// Hop limit / TTL of the synthetic packets.
const TTL: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("a {0}-byte SIP message does not fit in one UDP datagram")]
    TooLarge(usize),
    #[error("pcap write failed: {0}")]
    Io(#[from] io::Error),
}

/// `ip:port`, `[v6]:port`, or the placeholder when the text is neither.
pub fn endpoint_or(text: &str, placeholder: SocketAddr) -> SocketAddr {
    text.trim().parse().unwrap_or(placeholder)
}

/// One IP + UDP packet carrying `payload` from `src` to `dst`.
pub fn ip_udp_packet(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>, PcapError> {
    let (sport, dport) = (src.port(), dst.port());
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // 20-byte IPv4 header + 8-byte UDP header inside a 16-bit total length.
            if payload.len() > usize::from(u16::MAX) - 28 {
                return Err(PcapError::TooLarge(payload.len()));
            }
            PacketBuilder::ipv4(s.octets(), d.octets(), TTL).udp(sport, dport)
        }
        (s, d) => {
            // The UDP length (header included) is 16 bits.
            if payload.len() > usize::from(u16::MAX) - 8 {
                return Err(PcapError::TooLarge(payload.len()));
            }
            PacketBuilder::ipv6(v6_octets(s), v6_octets(d), TTL).udp(sport, dport)
        }
    };
    let mut packet = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut packet, payload)
        .map_err(|e| PcapError::Io(io::Error::other(e.to_string())))?;
    Ok(packet)
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Writes a classic pcap file, one synthetic IP/UDP packet per message.
pub struct PcapWriter<W: Write> {
    out: W,
    packets: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_NANOS.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // version major
        header.extend_from_slice(&4u16.to_le_bytes()); // version minor
        header.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, packets: 0 })
    }

    /// Writes `payload` as a packet from `src` to `dst` captured at `time_ns`
    /// (ns since the Unix epoch; times before 1970 are written as 1970).
    pub fn write_message(
        &mut self,
        time_ns: i64,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> Result<(), PcapError> {
        let packet = ip_udp_packet(src, dst, payload)?;
        let time_ns = time_ns.max(0);
        let secs = u32::try_from(time_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let nanos = (time_ns % 1_000_000_000) as u32;
        let len = packet.len() as u32;
        let mut record = Vec::with_capacity(16 + packet.len());
        record.extend_from_slice(&secs.to_le_bytes());
        record.extend_from_slice(&nanos.to_le_bytes());
        record.extend_from_slice(&len.to_le_bytes()); // captured length
        record.extend_from_slice(&len.to_le_bytes()); // original length
        record.extend_from_slice(&packet);
        self.out.write_all(&record)?;
        self.packets += 1;
        Ok(())
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use pcap_parser::traits::PcapReaderIterator;
    use pcap_parser::{LegacyPcapReader, Linktype, PcapBlockOwned, PcapError as ParseError};

    const MESSAGE: &[u8] =
        b"MESSAGE sip:bob@example.com SIP/2.0\r\nCall-ID: c1\r\nContent-Length: 2\r\n\r\nhi";

    /// RFC 1071 one's-complement sum over 16-bit words.
    fn ones_complement_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn ipv4_header_layout_and_checksums() {
        let src: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:5070".parse().unwrap();
        let p = ip_udp_packet(src, dst, MESSAGE).unwrap();
        assert_eq!(p.len(), 20 + 8 + MESSAGE.len());
        assert_eq!(p[0], 0x45, "IPv4, 20-byte header");
        assert_eq!(
            u16::from_be_bytes([p[2], p[3]]) as usize,
            p.len(),
            "total length"
        );
        assert_eq!(p[8], TTL);
        assert_eq!(p[9], 17, "protocol UDP");
        assert_eq!(&p[12..16], &[10, 0, 0, 1]);
        assert_eq!(&p[16..20], &[10, 0, 0, 2]);
        // A correct header checksum makes the header sum to 0xffff.
        assert_eq!(
            ones_complement_sum(&p[..20]),
            0xffff,
            "IPv4 header checksum"
        );
        let udp = &p[20..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5060);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 5070);
        assert_eq!(
            u16::from_be_bytes([udp[4], udp[5]]) as usize,
            8 + MESSAGE.len()
        );
        // UDP checksum over the pseudo-header and the datagram.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        assert_ne!(
            u16::from_be_bytes([udp[6], udp[7]]),
            0,
            "UDP checksum present"
        );
        assert_eq!(ones_complement_sum(&pseudo), 0xffff, "UDP checksum");
        assert_eq!(&udp[8..], MESSAGE);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let src: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let dst: SocketAddr = "192.0.2.9:5062".parse().unwrap();
        let p = ip_udp_packet(src, dst, MESSAGE).unwrap();
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(p[6], 17, "next header UDP");
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, 8 + MESSAGE.len());
        let mapped: std::net::Ipv6Addr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(&p[24..40], &mapped.octets());
        assert_eq!(&p[48..], MESSAGE);
    }

    #[test]
    fn unparsable_addresses_become_placeholders() {
        assert_eq!(endpoint_or("", PLACEHOLDER_SRC), PLACEHOLDER_SRC);
        assert_eq!(
            endpoint_or("pbx.example.com:5060", PLACEHOLDER_DST),
            PLACEHOLDER_DST
        );
        assert_eq!(
            endpoint_or(" [::1]:5061 ", PLACEHOLDER_DST),
            "[::1]:5061".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn oversized_message_is_refused() {
        let big = vec![b'x'; 70_000];
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert!(matches!(
            ip_udp_packet(v4, v4, &big),
            Err(PcapError::TooLarge(70_000))
        ));
        let fits = vec![b'x'; 65_535 - 28];
        assert_eq!(ip_udp_packet(v4, v4, &fits).unwrap().len(), 65_535);
    }

    #[test]
    fn round_trip_through_pcap_parser_and_etherparse() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let a: SocketAddr = "10.1.1.1:5060".parse().unwrap();
        let b: SocketAddr = "[2001:db8::2]:5080".parse().unwrap();
        let t0 = 1_764_064_800_123_456_789i64;
        w.write_message(t0, a, "10.1.1.2:5060".parse().unwrap(), MESSAGE)
            .unwrap();
        w.write_message(t0 + 1, b, a, b"SIP/2.0 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(w.packets(), 2);
        let bytes = w.finish().unwrap();

        let mut reader = LegacyPcapReader::new(65536, &bytes[..]).unwrap();
        let mut packets = Vec::new();
        loop {
            match reader.next() {
                Ok((offset, block)) => {
                    match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            assert_eq!(h.network, Linktype(LINKTYPE_RAW as i32));
                            assert_eq!(h.snaplen, SNAPLEN);
                            assert!(h.is_nanosecond_precision());
                        }
                        PcapBlockOwned::Legacy(p) => {
                            packets.push((p.ts_sec, p.ts_usec, p.data.to_vec()))
                        }
                        PcapBlockOwned::NG(_) => panic!("not a pcapng file"),
                    }
                    reader.consume(offset);
                }
                Err(ParseError::Eof) => break,
                Err(ParseError::Incomplete(_)) => reader.refill().unwrap(),
                Err(e) => panic!("pcap parse error: {e:?}"),
            }
        }
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].0, 1_764_064_800);
        assert_eq!(packets[0].1, 123_456_789, "nanoseconds kept");
        assert_eq!(packets[1].1, 123_456_790);

        let first = SlicedPacket::from_ip(&packets[0].2).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &first.net else {
            panic!("IPv4 expected")
        };
        assert_eq!(ip.header().source(), [10, 1, 1, 1]);
        assert_eq!(ip.header().destination(), [10, 1, 1, 2]);
        let Some(TransportSlice::Udp(udp)) = &first.transport else {
            panic!("UDP expected")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (5060, 5060));
        assert_eq!(udp.payload(), MESSAGE);

        let second = SlicedPacket::from_ip(&packets[1].2).unwrap();
        assert!(matches!(second.net, Some(NetSlice::Ipv6(_))));
        let Some(TransportSlice::Udp(udp)) = &second.transport else {
            panic!("UDP expected")
        };
        assert_eq!(udp.payload(), b"SIP/2.0 200 OK\r\n\r\n");
    }
}
