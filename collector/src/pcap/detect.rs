//! Recognising SIP by content: a payload is SIP when it starts with a SIP
//! request line (`METHOD SP Request-URI SP SIP/2.0`) or status line
//! (`SIP/2.0 SP 3DIGIT SP Reason-Phrase`). Ports say nothing: SIP runs on
//! any port and other protocols use 5060.
//!
//! The check is deliberately shallow (one line): the archive keeps
//! unparsable SIP too, so it only has to tell SIP from not-SIP, not judge
//! validity. Line ends may be CRLF or bare LF; trailing white space after
//! the version is tolerated (RFC 4475 does).

/// A start line longer than this is not believed to be one.
pub(crate) const MAX_START_LINE: usize = 8 * 1024;

/// Longest method name accepted; real ones are at most 9 characters.
const MAX_METHOD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Sip,
    NotSip,
    /// A valid beginning of a start line that ends before the line does.
    NeedMore,
}

impl Verdict {
    /// The better of two readings: Sip over NeedMore over NotSip.
    fn or(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Sip, _) | (_, Verdict::Sip) => Verdict::Sip,
            (Verdict::NeedMore, _) | (_, Verdict::NeedMore) => Verdict::NeedMore,
            _ => Verdict::NotSip,
        }
    }
}

/// Judges `bytes`, which start where a start line would start (leading
/// CR/LF already skipped by the caller). `NeedMore` means: no line end yet,
/// and what is there could still become a start line.
pub(crate) fn start_line(bytes: &[u8]) -> Verdict {
    let window = &bytes[..bytes.len().min(MAX_START_LINE)];
    let (line, complete) = match window.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &window[..end];
            (line.strip_suffix(b"\r").unwrap_or(line), true)
        }
        None if bytes.len() >= MAX_START_LINE => return Verdict::NotSip,
        None => (window, false),
    };
    status_line(line, complete).or(request_line(line, complete))
}

/// Leading CR and LF bytes (keep-alives between messages).
pub(crate) fn skip_crlf(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    &bytes[n..]
}

/// Only CR, LF, SP or HT: a keep-alive, not a message.
pub(crate) fn is_keepalive(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
}

/// A TLS record header (handshake, alert, change cipher spec or
/// application data; protocol version 3.x).
pub(crate) fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

/// Compares `line` with `expected`, ASCII case-insensitively, as far as
/// `line` goes. Returns how many bytes matched, or None on a mismatch.
fn prefix_matches(line: &[u8], expected: &[u8]) -> Option<usize> {
    let n = line.len().min(expected.len());
    line[..n].eq_ignore_ascii_case(&expected[..n]).then_some(n)
}

/// What to answer when the line ran out before it could be judged.
fn ran_out(complete: bool) -> Verdict {
    if complete {
        Verdict::NotSip
    } else {
        Verdict::NeedMore
    }
}

/// `SIP/2.0 SP 3DIGIT [SP Reason-Phrase]`.
fn status_line(line: &[u8], complete: bool) -> Verdict {
    const VERSION: &[u8] = b"SIP/2.0 ";
    match prefix_matches(line, VERSION) {
        None => return Verdict::NotSip,
        Some(n) if n < VERSION.len() => return ran_out(complete),
        Some(_) => {}
    }
    let rest = &line[VERSION.len()..];
    let digits = rest
        .iter()
        .take(3)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits < rest.len().min(3) {
        return Verdict::NotSip;
    }
    if digits < 3 {
        return ran_out(complete);
    }
    let after = &rest[3..];
    match after.first() {
        // "SIP/2.0 200" without a reason phrase: liberal, still SIP.
        None => judged(complete),
        Some(b' ') if is_reason_phrase(&after[1..]) => judged(complete),
        Some(_) => Verdict::NotSip,
    }
}

/// Reason phrases are UTF-8 text: no control characters but HT.
fn is_reason_phrase(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// RFC 3261 token characters (method names).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// `Method SP Request-URI SP SIP/2.0`; the URI must have a scheme (every
/// SIP Request-URI does: sip:, sips:, tel:, urn:...).
fn request_line(line: &[u8], complete: bool) -> Verdict {
    let method = line.iter().take_while(|&&b| is_token_char(b)).count();
    if method > MAX_METHOD {
        return Verdict::NotSip;
    }
    let Some(&after_method) = line.get(method) else {
        return ran_out(complete);
    };
    if method == 0 || after_method != b' ' {
        return Verdict::NotSip;
    }
    let uri_and_rest = &line[method + 1..];
    let uri = uri_and_rest
        .iter()
        .take_while(|&&b| b.is_ascii_graphic())
        .count();
    let Some(&after_uri) = uri_and_rest.get(uri) else {
        return ran_out(complete);
    };
    if uri == 0 || after_uri != b' ' || !uri_and_rest[..uri].contains(&b':') {
        return Verdict::NotSip;
    }
    let version_and_rest = &uri_and_rest[uri + 1..];
    const VERSION: &[u8] = b"SIP/2.0";
    match prefix_matches(version_and_rest, VERSION) {
        None => return Verdict::NotSip,
        Some(n) if n < VERSION.len() => return ran_out(complete),
        Some(_) => {}
    }
    let trailing = &version_and_rest[VERSION.len()..];
    if !trailing.iter().all(|&b| b == b' ' || b == b'\t') {
        return Verdict::NotSip;
    }
    judged(complete)
}

/// What to answer when everything so far is valid.
fn judged(complete: bool) -> Verdict {
    if complete {
        Verdict::Sip
    } else {
        Verdict::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_sip() {
        for line in [
            &b"INVITE sip:bob@example.com SIP/2.0\r\nVia: x\r\n"[..],
            b"REGISTER sips:example.com SIP/2.0\n",
            b"MESSAGE tel:+4930123 sip/2.0 \r\n",
            b"SIP/2.0 200 OK\r\n",
            b"SIP/2.0 180 Ringing\n",
            b"SIP/2.0 404 Nicht gefunden \xc3\xa4\r\n",
            b"SIP/2.0 200\r\n",
        ] {
            assert_eq!(
                start_line(line),
                Verdict::Sip,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn other_protocols_are_not_sip() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"INVITE bob SIP/2.0\r\n",
            b"INVITE sip:bob@x SIP/3.0\r\n",
            b"SIP/2.0 20 OK\r\n",
            b"SIP/2.0 2000 OK\r\n",
            b"\x16\x03\x01\x02\x00",
            b"\x80\x08\x12\x34",
            b"OPTIONS sip:x SIP/2.0 garbage\r\n",
            b" INVITE sip:x SIP/2.0\r\n",
            b"",
        ] {
            let verdict = start_line(line);
            assert!(
                verdict != Verdict::Sip,
                "{:?} -> {verdict:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(start_line(b"GET / HTTP/1.1\r\n"), Verdict::NotSip);
        assert_eq!(start_line(b"\x16\x03\x01"), Verdict::NotSip);
    }

    #[test]
    fn prefixes_of_start_lines_need_more() {
        let full = b"INVITE sip:bob@example.com SIP/2.0";
        for n in 1..full.len() {
            assert_eq!(start_line(&full[..n]), Verdict::NeedMore, "{n}");
        }
        let status = b"SIP/2.0 486 Busy Here";
        for n in 1..status.len() {
            assert_eq!(start_line(&status[..n]), Verdict::NeedMore, "{n}");
        }
        assert_eq!(start_line(&[b'A'; MAX_START_LINE]), Verdict::NotSip);
    }

    #[test]
    fn keepalives_and_tls() {
        assert!(is_keepalive(b"\r\n\r\n"));
        assert!(!is_keepalive(b""));
        assert!(!is_keepalive(b"\r\nX"));
        assert!(looks_like_tls(b"\x16\x03\x03\x00\x10"));
        assert!(!looks_like_tls(b"INVITE"));
        assert_eq!(skip_crlf(b"\r\n\r\nABC"), b"ABC");
    }
}
