//! Link layers and tunnel headers, down to the IP packet.
//!
//! Ethernet and 802.1Q/802.1ad tags are parsed with `etherparse`. The
//! headers below are parsed by hand because `etherparse` does not cover
//! them: Linux SLL2, BSD null/loopback, GRE and ERSPAN. Linux SLL (v1) is
//! too: `etherparse` rejects ARPHRD types it does not know, and loopback
//! (772) and tun devices (0xFFFE) are exactly what `tcpdump -i any` records.

use etherparse::{Ethernet2Slice, SingleVlanSlice};

use super::reason;

/// pcap / pcapng link types (LINKTYPE_* of tcpdump.org/linktypes.html).
pub(crate) mod linktype {
    /// BSD loopback: 4-byte address family in the capturing host's byte order.
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// DLT_RAW as some BSDs number it.
    pub const RAW_12: u32 = 12;
    /// DLT_RAW as OpenBSD numbers it.
    pub const RAW_14: u32 = 14;
    pub const RAW: u32 = 101;
    /// OpenBSD loopback: 4-byte address family, network byte order.
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

mod ether_type {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86DD;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88A8;
    /// Pre-standard QinQ tags still seen on older switches.
    pub const QINQ_OLD_1: u16 = 0x9100;
    pub const QINQ_OLD_2: u16 = 0x9200;
    /// GRE: transparent Ethernet bridging (an Ethernet frame follows).
    pub const TEB: u16 = 0x6558;
    /// GRE: ERSPAN type I (no header) or II (8-byte header).
    pub const ERSPAN_1_2: u16 = 0x88BE;
    /// GRE: ERSPAN type III (12-byte header, optional 8-byte subheader).
    pub const ERSPAN_3: u16 = 0x22EB;
}

/// More tags than this in one frame is not a real network.
const MAX_VLAN_TAGS: usize = 4;

/// What a link or tunnel header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inner<'a> {
    /// An IPv4 or IPv6 packet.
    Ip(&'a [u8]),
    /// An Ethernet frame (GRE bridging, ERSPAN).
    Ethernet(&'a [u8]),
}

/// The IP packet inside a captured frame of `link_type`, or the skip reason.
pub(crate) fn ip_packet(link_type: u32, frame: &[u8]) -> Result<&[u8], &'static str> {
    match link_type {
        linktype::ETHERNET => ethernet(frame),
        linktype::LINUX_SLL => linux_sll(frame),
        linktype::LINUX_SLL2 => linux_sll2(frame),
        linktype::NULL => bsd_null(frame, false),
        linktype::LOOP => bsd_null(frame, true),
        linktype::RAW | linktype::RAW_12 | linktype::RAW_14 | linktype::IPV4 | linktype::IPV6 => {
            Ok(frame)
        }
        _ => Err(reason::UNSUPPORTED_LINK_TYPE),
    }
}

/// The IP packet inside an Ethernet II frame, through any VLAN tags.
pub(crate) fn ethernet(frame: &[u8]) -> Result<&[u8], &'static str> {
    let eth =
        Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| reason::MALFORMED_PACKET)?;
    by_ether_type(eth.ether_type().0, eth.payload_slice())
}

fn by_ether_type(mut kind: u16, mut payload: &[u8]) -> Result<&[u8], &'static str> {
    for _ in 0..=MAX_VLAN_TAGS {
        match kind {
            ether_type::IPV4 | ether_type::IPV6 => return Ok(payload),
            ether_type::VLAN
            | ether_type::QINQ
            | ether_type::QINQ_OLD_1
            | ether_type::QINQ_OLD_2 => {
                let tag =
                    SingleVlanSlice::from_slice(payload).map_err(|_| reason::MALFORMED_PACKET)?;
                kind = tag.ether_type().0;
                payload = tag.payload_slice();
            }
            _ => return Err(reason::NON_IP),
        }
    }
    Err(reason::MALFORMED_PACKET)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

/// Linux cooked capture v1: packet type, ARPHRD type, address length,
/// 8 address bytes, then the protocol (an ether type) at offset 14.
fn linux_sll(frame: &[u8]) -> Result<&[u8], &'static str> {
    const LEN: usize = 16;
    let protocol = be16(frame, 14).ok_or(reason::MALFORMED_PACKET)?;
    by_ether_type(protocol, frame.get(LEN..).unwrap_or_default())
}

/// Linux cooked capture v2: protocol (ether type) first, then reserved,
/// interface index, ARPHRD type, packet type, address length, 8 address
/// bytes: 20 bytes.
fn linux_sll2(frame: &[u8]) -> Result<&[u8], &'static str> {
    const LEN: usize = 20;
    if frame.len() < LEN {
        return Err(reason::MALFORMED_PACKET);
    }
    let protocol = be16(frame, 0).ok_or(reason::MALFORMED_PACKET)?;
    by_ether_type(protocol, &frame[LEN..])
}

/// BSD null/loopback: a 4-byte address family, in the capturing host's
/// byte order (`network_order` false) or big-endian (OpenBSD `LOOP`).
fn bsd_null(frame: &[u8], network_order: bool) -> Result<&[u8], &'static str> {
    let Some((header, packet)) = frame.split_first_chunk::<4>() else {
        return Err(reason::MALFORMED_PACKET);
    };
    // The families are small numbers, so a host-order header written on a
    // big-endian machine starts with zero bytes.
    let family = if network_order || header[0] == 0 {
        u32::from_be_bytes(*header)
    } else {
        u32::from_le_bytes(*header)
    };
    match family {
        // AF_INET everywhere; AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, Darwin.
        2 | 10 | 24 | 28 | 30 => Ok(packet),
        _ => Err(reason::NON_IP),
    }
}

/// Unwraps a GRE packet (RFC 2784/2890, version 0): IP, transparent
/// Ethernet bridging, ERSPAN type I, II and III.
pub(crate) fn gre(packet: &[u8]) -> Result<Inner<'_>, &'static str> {
    const CHECKSUM: u16 = 0x8000;
    const ROUTING: u16 = 0x4000;
    const KEY: u16 = 0x2000;
    const SEQUENCE: u16 = 0x1000;
    let flags = be16(packet, 0).ok_or(reason::MALFORMED_PACKET)?;
    let protocol = be16(packet, 2).ok_or(reason::MALFORMED_PACKET)?;
    // Version 1 is PPTP's enhanced GRE (PPP inside); RFC 1701 source
    // routing is obsolete.
    if flags & 0x0007 != 0 || flags & ROUTING != 0 {
        return Err(reason::UNSUPPORTED_TUNNEL);
    }
    let optional_words = [CHECKSUM, KEY, SEQUENCE]
        .iter()
        .filter(|&&bit| flags & bit != 0)
        .count();
    let payload = packet
        .get(4 + 4 * optional_words..)
        .ok_or(reason::MALFORMED_PACKET)?;
    match protocol {
        ether_type::IPV4 | ether_type::IPV6 => Ok(Inner::Ip(payload)),
        ether_type::TEB => Ok(Inner::Ethernet(payload)),
        // Type I has no ERSPAN header and no GRE sequence number; type II
        // always sets the sequence bit.
        ether_type::ERSPAN_1_2 if flags & SEQUENCE == 0 => Ok(Inner::Ethernet(payload)),
        ether_type::ERSPAN_1_2 => erspan_2(payload),
        ether_type::ERSPAN_3 => erspan_3(payload),
        _ => Err(reason::UNSUPPORTED_TUNNEL),
    }
}

/// ERSPAN type II: version (1) and session fields in 8 bytes, then the
/// mirrored Ethernet frame.
fn erspan_2(packet: &[u8]) -> Result<Inner<'_>, &'static str> {
    const LEN: usize = 8;
    let version = packet.first().ok_or(reason::MALFORMED_PACKET)? >> 4;
    if version != 1 {
        return Err(reason::UNSUPPORTED_TUNNEL);
    }
    packet
        .get(LEN..)
        .map(Inner::Ethernet)
        .ok_or(reason::MALFORMED_PACKET)
}

/// ERSPAN type III: version (2), session, timestamp and a word ending in
/// frame type (FT, 5 bits: 0 Ethernet, 2 IP) ... O flag (last bit: an
/// 8-byte platform subheader follows).
fn erspan_3(packet: &[u8]) -> Result<Inner<'_>, &'static str> {
    const LEN: usize = 12;
    const SUBHEADER_LEN: usize = 8;
    if packet.len() < LEN {
        return Err(reason::MALFORMED_PACKET);
    }
    if packet[0] >> 4 != 2 {
        return Err(reason::UNSUPPORTED_TUNNEL);
    }
    let frame_type = (packet[10] >> 2) & 0x1f;
    let has_subheader = packet[11] & 0x01 != 0;
    let start = LEN + if has_subheader { SUBHEADER_LEN } else { 0 };
    let inner = packet.get(start..).ok_or(reason::MALFORMED_PACKET)?;
    match frame_type {
        0 => Ok(Inner::Ethernet(inner)),
        2 => Ok(Inner::Ip(inner)),
        _ => Err(reason::UNSUPPORTED_TUNNEL),
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, VlanId};

    use super::*;

    fn udp_over(builder_eth: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if builder_eth {
            PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(5060, 5060)
                .write(&mut out, b"x")
                .expect("build");
        } else {
            PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(5060, 5060)
                .write(&mut out, b"x")
                .expect("build");
        }
        out
    }

    #[test]
    fn ethernet_single_and_double_vlan() {
        let ip = udp_over(false);
        let mut single = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(VlanId::try_new(42).expect("vlan id"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5060, 5060)
            .write(&mut single, b"x")
            .expect("build");
        assert_eq!(ethernet(&single), Ok(&ip[..]));

        let mut double = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(
                VlanId::try_new(100).expect("outer"),
                VlanId::try_new(200).expect("inner"),
            )
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5060, 5060)
            .write(&mut double, b"x")
            .expect("build");
        assert_eq!(ip_packet(linktype::ETHERNET, &double), Ok(&ip[..]));
    }

    #[test]
    fn sll_sll2_null_and_loop() {
        let ip = udp_over(false);
        let mut sll = vec![0, 0, 0x03, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        assert_eq!(ip_packet(linktype::LINUX_SLL, &sll), Ok(&ip[..]));

        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 6];
        sll2.extend_from_slice(&[0; 8]);
        sll2.extend_from_slice(&ip);
        assert_eq!(ip_packet(linktype::LINUX_SLL2, &sll2), Ok(&ip[..]));
        sll2[0..2].copy_from_slice(&[0x08, 0x06]); // ARP
        assert_eq!(ip_packet(linktype::LINUX_SLL2, &sll2), Err(reason::NON_IP));
        assert_eq!(
            ip_packet(linktype::LINUX_SLL2, &[0x08, 0x00]),
            Err(reason::MALFORMED_PACKET)
        );

        let mut null_le = vec![2, 0, 0, 0];
        null_le.extend_from_slice(&ip);
        assert_eq!(ip_packet(linktype::NULL, &null_le), Ok(&ip[..]));
        let mut null_be = vec![0, 0, 0, 30];
        null_be.extend_from_slice(&ip);
        assert_eq!(ip_packet(linktype::NULL, &null_be), Ok(&ip[..]));
        assert_eq!(ip_packet(linktype::LOOP, &null_be), Ok(&ip[..]));
        assert_eq!(
            ip_packet(linktype::NULL, &[7, 0, 0, 0]),
            Err(reason::NON_IP)
        );
        assert_eq!(
            ip_packet(linktype::NULL, &[2]),
            Err(reason::MALFORMED_PACKET)
        );
        assert_eq!(ip_packet(9999, &ip), Err(reason::UNSUPPORTED_LINK_TYPE));
    }

    #[test]
    fn gre_variants() {
        let frame = udp_over(true);
        let ip = udp_over(false);

        let mut plain = vec![0x00, 0x00, 0x08, 0x00];
        plain.extend_from_slice(&ip);
        assert_eq!(gre(&plain), Ok(Inner::Ip(&ip[..])));

        // Key and sequence number present.
        let mut keyed = vec![0x30, 0x00, 0x65, 0x58, 0, 0, 0, 1, 0, 0, 0, 2];
        keyed.extend_from_slice(&frame);
        assert_eq!(gre(&keyed), Ok(Inner::Ethernet(&frame[..])));

        let mut erspan2 = vec![0x10, 0x00, 0x88, 0xBE, 0, 0, 0, 9];
        erspan2.extend_from_slice(&[0x10, 0x01, 0x00, 0x05, 0, 0, 0, 0]);
        erspan2.extend_from_slice(&frame);
        assert_eq!(gre(&erspan2), Ok(Inner::Ethernet(&frame[..])));

        let mut erspan1 = vec![0x00, 0x00, 0x88, 0xBE];
        erspan1.extend_from_slice(&frame);
        assert_eq!(gre(&erspan1), Ok(Inner::Ethernet(&frame[..])));

        let mut erspan3 = vec![0x10, 0x00, 0x22, 0xEB, 0, 0, 0, 9];
        erspan3.extend_from_slice(&[0x20, 0x01, 0x00, 0x05, 1, 2, 3, 4, 0, 0, 0, 0x01]);
        erspan3.extend_from_slice(&[0xAA; 8]);
        erspan3.extend_from_slice(&frame);
        assert_eq!(gre(&erspan3), Ok(Inner::Ethernet(&frame[..])));

        assert_eq!(
            gre(&[0x00, 0x01, 0x88, 0x0B]),
            Err(reason::UNSUPPORTED_TUNNEL)
        );
        assert_eq!(gre(&[0x80, 0x00, 0x08]), Err(reason::MALFORMED_PACKET));
        assert_eq!(
            gre(&[0xB0, 0x00, 0x08, 0x00, 0, 0]),
            Err(reason::MALFORMED_PACKET)
        );
    }
}
