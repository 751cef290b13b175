//! A tolerant SDP reader (RFC 4566 / RFC 8866) for archiving.
//!
//! The archive wants to know *who sent media where, with which codecs*: the
//! origin, the connection addresses, and per m-line the port, transport,
//! payload formats and direction. Everything else is skipped. The reader is
//! liberal because it reads what was captured, not what it would accept as a
//! peer:
//!
//! * CRLF and bare LF line ends, blank lines and trailing white space;
//! * unknown line types and attributes are ignored;
//! * a malformed `c=` or `a=rtpmap` line is ignored, a malformed `m=` line
//!   drops that media section (its attributes do not leak into the previous
//!   one);
//! * a `c=` address that is not an IP literal (an FQDN) reads as `None`;
//! * encoding names are case-insensitive: well-known ones (`pcma`, `ILBC`)
//!   get their registered spelling (`PCMA`, `iLBC`).
//!
//! Only a body that is not SDP at all (empty, or not starting with `v=`) is
//! an error. Nothing here panics on any input (proptest-fuzzed).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::util::{split_byte, split_once_byte, trim};

/// Why a body could not be read as SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("empty SDP body")]
    Empty,
    /// The first line must be `v=` (RFC 8866 5); anything else is not SDP.
    #[error("not SDP: first line is {0:?}, expected v=0")]
    MissingVersion(String),
    #[error("unsupported SDP version {0:?}")]
    UnsupportedVersion(String),
}

/// The parts of a session description the archive keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` value as written (username, session id, version, address).
    pub origin: Option<String>,
    /// Session-level `c=` address; media-level `c=` lines override it.
    pub connection: Option<IpAddr>,
    pub media: Vec<MediaDescription>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `application`, `message`, ...
    pub kind: String,
    /// Transport port; 0 means the stream is disabled (RFC 3264 6).
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub protocol: String,
    /// Media-level `c=` address; `None` means the session-level one applies.
    pub connection: Option<IpAddr>,
    /// RTP payload formats in m-line order (non-numeric formats such as the
    /// `*` of MSRP are left out).
    pub formats: Vec<Format>,
    /// `sendrecv`, `sendonly`, `recvonly` or `inactive`: the media-level
    /// attribute, else the session-level one, else `None` (which RFC 3264
    /// reads as sendrecv).
    pub direction: Option<String>,
}

/// One RTP payload format of an m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap`, or from the static payload type table
    /// (RFC 3551) when there is no rtpmap.
    pub name: Option<String>,
    pub clock_rate: Option<u32>,
}

/// Static RTP payload types (RFC 3551 6) that are still seen on the wire.
const STATIC_PAYLOAD_TYPES: &[(u8, &str, u32)] = &[
    (0, "PCMU", 8000),
    (3, "GSM", 8000),
    (4, "G723", 8000),
    (8, "PCMA", 8000),
    (9, "G722", 8000),
    (13, "CN", 8000),
    (15, "G728", 8000),
    (18, "G729", 8000),
    (26, "JPEG", 90000),
    (31, "H261", 90000),
    (34, "H263", 90000),
];

/// Registered spellings of common dynamic encodings. Encoding names are
/// case-insensitive (RFC 4855 3) and phones write `pcma` as often as `PCMA`;
/// a name matching one of these (or the static table) case-insensitively is
/// given this spelling, so labels compare equal across vendors.
const KNOWN_ENCODING_NAMES: &[&str] = &[
    "telephone-event",
    "opus",
    "iLBC",
    "speex",
    "AMR",
    "AMR-WB",
    "G7221",
    "G726-16",
    "G726-24",
    "G726-32",
    "G726-40",
    "L16",
    "red",
    "H264",
    "H265",
    "VP8",
    "VP9",
];

const DIRECTIONS: &[&str] = &["sendrecv", "sendonly", "recvonly", "inactive"];

/// Longest excerpt of a non-SDP first line kept in [`SdpError::MissingVersion`].
const ERROR_EXCERPT_CHARS: usize = 40;

impl Format {
    /// `name/clock_rate` (e.g. `PCMA/8000`), the name alone without a clock
    /// rate, or the payload type number when the format has no name.
    pub fn label(&self) -> String {
        match (&self.name, self.clock_rate) {
            (Some(name), Some(rate)) => {
                // Sized up front: `format!` guesses small and grows.
                let mut label = String::with_capacity(name.len() + 11);
                label.push_str(name);
                label.push('/');
                let _ = write!(label, "{rate}");
                label
            }
            (Some(name), None) => name.clone(),
            (None, _) => self.payload_type.to_string(),
        }
    }

    fn from_static_table(payload_type: u8) -> Format {
        let known = STATIC_PAYLOAD_TYPES
            .iter()
            .find(|(pt, _, _)| *pt == payload_type);
        Format {
            payload_type,
            name: known.map(|(_, name, _)| (*name).to_string()),
            clock_rate: known.map(|(_, _, rate)| *rate),
        }
    }
}

impl MediaDescription {
    /// Where this stream's media is sent: the media-level connection address
    /// (or the session's) with the m-line port. `None` for a disabled stream
    /// (port 0) or when no usable address is known.
    pub fn address(&self, session: &SessionDescription) -> Option<SocketAddr> {
        if self.port == 0 {
            return None;
        }
        let ip = self.connection.or(session.connection)?;
        Some(SocketAddr::new(ip, self.port))
    }
}

/// Reads an SDP body. See the module docs for what is tolerated.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    // `from_utf8_lossy` walks valid text chunk by chunk; plain validation
    // is faster, and SDP is nearly always valid.
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    };
    let mut lines = split_byte(&text, b'\n')
        .map(trim_end_cr_lws)
        .filter(|l| !l.is_empty());

    let first = lines.next().ok_or(SdpError::Empty)?;
    let Some(version) = first.strip_prefix("v=") else {
        return Err(SdpError::MissingVersion(
            first.chars().take(ERROR_EXCERPT_CHARS).collect(),
        ));
    };
    if trim(version) != "0" {
        return Err(SdpError::UnsupportedVersion(
            version.chars().take(ERROR_EXCERPT_CHARS).collect(),
        ));
    }

    let mut session = SessionDescription::default();
    let mut session_direction: Option<String> = None;
    // `None` while in the session section, or inside a media section whose
    // m-line was malformed (its attributes are skipped).
    let mut current: Option<MediaSection> = None;
    let mut in_media = false;

    for line in lines {
        let Some((kind, value)) = split_line(line) else {
            continue;
        };
        match kind {
            'm' => {
                if let Some(done) = current.take() {
                    session.media.push(done.finish());
                }
                in_media = true;
                current = parse_media_line(value);
            }
            'o' if !in_media => session.origin = Some(trim(value).to_string()),
            'c' => {
                let address = parse_connection(value);
                match (&mut current, in_media) {
                    (Some(media), true) => media.description.connection = address,
                    (None, false) => session.connection = address,
                    // Malformed media section: skip.
                    _ => {}
                }
            }
            'a' => {
                let (name, attr_value) = match split_once_byte(value, b':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                let name = trim(name);
                if let Some(direction) = DIRECTIONS.iter().find(|d| d.eq_ignore_ascii_case(name)) {
                    let direction = Some((*direction).to_string());
                    match (&mut current, in_media) {
                        (Some(media), true) => media.description.direction = direction,
                        (None, false) => session_direction = direction,
                        _ => {}
                    }
                } else if name.eq_ignore_ascii_case("rtpmap")
                    && let (Some(media), Some(map)) = (&mut current, attr_value)
                {
                    media.add_rtpmap(map);
                }
            }
            _ => {}
        }
    }
    if let Some(done) = current.take() {
        session.media.push(done.finish());
    }
    // A session-level direction applies to every stream that has none
    // (RFC 8866 6.7).
    if let Some(direction) = session_direction {
        for media in &mut session.media {
            media.direction.get_or_insert_with(|| direction.clone());
        }
    }
    Ok(session)
}

/// A media section being read: its description plus the rtpmap lines seen,
/// applied when the section ends (rtpmap may come in any order). Names are
/// borrowed until then: a format gets one owned name, not one per step.
struct MediaSection<'a> {
    description: MediaDescription,
    rtpmaps: Vec<(u8, &'a str, Option<u32>)>,
}

impl<'a> MediaSection<'a> {
    fn add_rtpmap(&mut self, value: &'a str) {
        // `<payload type> <encoding name>/<clock rate>[/<encoding parameters>]`
        let Some((pt, encoding)) = trim(value).split_once(char::is_whitespace) else {
            return;
        };
        let Ok(pt) = pt.parse::<u8>() else {
            return;
        };
        let mut parts = split_byte(trim(encoding), b'/');
        let name = trim(parts.next().unwrap_or(""));
        if name.is_empty() {
            return;
        }
        let clock_rate = parts.next().and_then(|r| trim(r).parse::<u32>().ok());
        // The first mapping of a payload type wins.
        if !self.rtpmaps.iter().any(|(p, _, _)| *p == pt) {
            self.rtpmaps.push((pt, name, clock_rate));
        }
    }

    /// Names and clock rates from the rtpmap lines, else from the static
    /// payload type table.
    fn finish(mut self) -> MediaDescription {
        for format in &mut self.description.formats {
            let mapped = self
                .rtpmaps
                .iter()
                .find(|(pt, _, _)| *pt == format.payload_type);
            match mapped {
                Some((_, name, rate)) => {
                    format.name = Some(canonical_encoding_name(name).to_string());
                    format.clock_rate = *rate;
                }
                None => *format = Format::from_static_table(format.payload_type),
            }
        }
        self.description
    }
}

/// The registered spelling of a known encoding name, else the name as written.
fn canonical_encoding_name(name: &str) -> &str {
    STATIC_PAYLOAD_TYPES
        .iter()
        .map(|(_, known, _)| *known)
        .chain(KNOWN_ENCODING_NAMES.iter().copied())
        .find(|known| known.eq_ignore_ascii_case(name))
        .unwrap_or(name)
}

/// `line.trim_end_matches(['\r', ' ', '\t'])`, byte-wise.
fn trim_end_cr_lws(line: &str) -> &str {
    let end = line
        .bytes()
        .rposition(|b| !matches!(b, b'\r' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    line.get(..end).unwrap_or("")
}

/// `x=value` with a single-letter type; anything else is not an SDP line.
fn split_line(line: &str) -> Option<(char, &str)> {
    let mut chars = line.chars();
    let kind = chars.next()?;
    if !kind.is_ascii_alphabetic() || chars.next() != Some('=') {
        return None;
    }
    // Both characters are ASCII, so byte 2 is a char boundary.
    Some((kind, line.get(2..)?))
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`
fn parse_media_line(value: &str) -> Option<MediaSection<'_>> {
    let mut fields = value.split_ascii_whitespace();
    let kind = fields.next()?;
    let port_field = fields.next()?;
    let protocol = fields.next()?;
    let port = split_byte(port_field, b'/').next()?.parse::<u16>().ok()?;
    // Named when the section ends (see `MediaSection::finish`).
    let formats = fields
        .filter_map(|f| f.parse::<u8>().ok())
        .map(|payload_type| Format {
            payload_type,
            name: None,
            clock_rate: None,
        })
        .collect();
    Some(MediaSection {
        description: MediaDescription {
            kind: kind.to_string(),
            port,
            protocol: protocol.to_string(),
            connection: None,
            formats,
            direction: None,
        },
        rtpmaps: Vec::new(),
    })
}

/// `c=IN IP4 <address>[/<ttl>[/<count>]]` (or IP6). The address family
/// token is not trusted: whatever parses as an IP literal is taken.
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut fields = value.split_ascii_whitespace();
    let network = fields.next()?;
    let _address_type = fields.next()?;
    let address = fields.next()?;
    if !network.eq_ignore_ascii_case("IN") {
        return None;
    }
    split_byte(address, b'/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0 8 97 101\r\n\
a=rtpmap:97 iLBC/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n\
m=video 51372 RTP/AVP 31 96\r\n\
c=IN IP4 192.0.2.102\r\n\
a=rtpmap:96 H264/90000\r\n\
a=recvonly\r\n";

    #[test]
    fn reads_offer_with_static_and_dynamic_payload_types() {
        let sdp = parse(OFFER.as_bytes()).expect("valid offer");
        assert_eq!(
            sdp.origin.as_deref(),
            Some("alice 2890844526 2890844526 IN IP4 host.atlanta.example.com")
        );
        assert_eq!(sdp.connection, Some("192.0.2.101".parse().unwrap()));
        assert_eq!(sdp.media.len(), 2);

        let audio = &sdp.media[0];
        assert_eq!(audio.kind, "audio");
        assert_eq!(audio.port, 49172);
        assert_eq!(audio.protocol, "RTP/AVP");
        assert_eq!(audio.connection, None);
        assert_eq!(audio.direction.as_deref(), Some("sendrecv"));
        let labels: Vec<String> = audio.formats.iter().map(Format::label).collect();
        assert_eq!(
            labels,
            [
                "PCMU/8000",
                "PCMA/8000",
                "iLBC/8000",
                "telephone-event/8000"
            ]
        );
        assert_eq!(
            audio.address(&sdp),
            Some("192.0.2.101:49172".parse().unwrap()),
            "session-level c= applies"
        );

        let video = &sdp.media[1];
        assert_eq!(video.direction.as_deref(), Some("recvonly"));
        assert_eq!(
            video.address(&sdp),
            Some("192.0.2.102:51372".parse().unwrap()),
            "media-level c= overrides the session's"
        );
        assert_eq!(video.formats[0].label(), "H261/90000");
        assert_eq!(video.formats[1].label(), "H264/90000");
    }

    #[test]
    fn byte_wise_line_splitting_matches_str_split() {
        for s in ["", "\n", "a\nb", "a\n\nb\n", "é\r\n x \t\r\n"] {
            assert_eq!(
                split_byte(s, b'\n').collect::<Vec<_>>(),
                s.split('\n').collect::<Vec<_>>()
            );
            for l in s.split('\n') {
                assert_eq!(trim_end_cr_lws(l), l.trim_end_matches(['\r', ' ', '\t']));
            }
        }
    }

    #[test]
    fn bare_lf_blank_lines_and_ipv6() {
        let body = "v=0\n\no=- 1 1 IN IP6 ::1\nc=IN IP6 2001:db8::1\nm=audio 4000 RTP/AVP 18\n\n";
        let sdp = parse(body.as_bytes()).expect("LF SDP");
        let audio = &sdp.media[0];
        assert_eq!(audio.formats[0].label(), "G729/8000");
        assert_eq!(
            audio.address(&sdp),
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(audio.direction, None);
    }

    #[test]
    fn disabled_stream_and_unknown_address_have_no_media_address() {
        let body = "v=0\r\nc=IN IP4 media.example.com\r\nm=audio 0 RTP/AVP 0\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP4 192.0.2.5/127\r\nm=audio 6000 RTP/AVP 0\r\n";
        let sdp = parse(body.as_bytes()).expect("valid");
        assert_eq!(sdp.connection, None, "FQDN is not an IP literal");
        assert_eq!(sdp.media[0].address(&sdp), None, "port 0 disables a stream");
        assert_eq!(
            sdp.media[1].address(&sdp),
            Some("192.0.2.5:5000".parse().unwrap()),
            "multicast TTL suffix is dropped"
        );
        assert_eq!(sdp.media[2].address(&sdp), None);
    }

    #[test]
    fn session_direction_is_inherited_and_malformed_lines_are_skipped() {
        let body = "v=0\r\n\
garbage line\r\n\
a=sendonly\r\n\
c=IN IP4 198.51.100.1\r\n\
m=audio 7000 RTP/AVP 0 96\r\n\
a=rtpmap:96\r\n\
a=rtpmap:x opus/48000\r\n\
m=audio notaport RTP/AVP 8\r\n\
a=inactive\r\n\
c=IN IP4 203.0.113.9\r\n\
m=message 7394 TCP/MSRP *\r\n\
a=inactive\r\n";
        let sdp = parse(body.as_bytes()).expect("tolerated");
        assert_eq!(sdp.media.len(), 2, "malformed m-line section dropped");
        let audio = &sdp.media[0];
        assert_eq!(audio.direction.as_deref(), Some("sendonly"));
        assert_eq!(audio.connection, None);
        assert_eq!(audio.formats[1].label(), "96", "no usable rtpmap");
        let msrp = &sdp.media[1];
        assert_eq!(msrp.kind, "message");
        assert!(msrp.formats.is_empty());
        assert_eq!(msrp.direction.as_deref(), Some("inactive"));
        assert_eq!(
            msrp.connection, None,
            "c= of the dropped section does not leak into the next one"
        );
    }

    #[test]
    fn rtpmap_with_channels_and_first_mapping_wins() {
        let body = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 1 RTP/AVP 111 8\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:111 other/1\r\na=rtpmap:8 PCMA/8000\r\n";
        let sdp = parse(body.as_bytes()).expect("valid");
        let labels: Vec<String> = sdp.media[0].formats.iter().map(Format::label).collect();
        assert_eq!(labels, ["opus/48000", "PCMA/8000"]);
    }

    #[test]
    fn known_encoding_names_get_their_registered_spelling() {
        let body = "v=0\r\nm=audio 1 RTP/AVP 8 97 98 99\r\na=rtpmap:8 pcma/8000\r\na=rtpmap:97 ILBC/8000\r\na=rtpmap:98 Telephone-Event/8000\r\na=rtpmap:99 x-vendor/16000\r\n";
        let sdp = parse(body.as_bytes()).expect("valid");
        let labels: Vec<String> = sdp.media[0].formats.iter().map(Format::label).collect();
        assert_eq!(
            labels,
            [
                "PCMA/8000",
                "iLBC/8000",
                "telephone-event/8000",
                "x-vendor/16000"
            ]
        );
    }

    #[test]
    fn not_sdp_is_an_error() {
        assert_eq!(parse(b""), Err(SdpError::Empty));
        assert_eq!(parse(b"\r\n\r\n"), Err(SdpError::Empty));
        assert!(matches!(
            parse(b"<?xml version=\"1.0\"?><presence/>"),
            Err(SdpError::MissingVersion(_))
        ));
        assert_eq!(
            parse(b"v=1\r\n"),
            Err(SdpError::UnsupportedVersion("1".into()))
        );
    }

    const FRAGMENTS: &[&str] = &[
        "v=0",
        "v=",
        "o=- 0 0 IN IP4 1.2.3.4",
        "c=IN IP4 10.0.0.1",
        "c=IN IP6 ::1/3",
        "c=IN",
        "c=",
        "m=audio 5000 RTP/AVP 0 8 101",
        "m=audio 65536 RTP/AVP 0",
        "m=video 0/2 RTP/AVP 300 -1",
        "m=",
        "m=a",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:",
        "a=rtpmap:0",
        "a=rtpmap:0 /",
        "a=sendonly",
        "a=",
        "=",
        "é=ü",
        "\u{0}",
        "",
        "\r",
    ];

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
            let mut with_header = b"v=0\r\n".to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = parse(&with_header);
        }

        #[test]
        fn sdp_line_soup_never_panics(
            lines in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..40),
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let body = format!("v=0{end}{}", lines.join(end));
            if let Ok(sdp) = parse(body.as_bytes()) {
                for media in &sdp.media {
                    let _ = media.address(&sdp);
                    for format in &media.formats {
                        let _ = format.label();
                    }
                }
            }
        }
    }
}
