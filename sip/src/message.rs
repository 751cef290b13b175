//! One SIP message read from datagram bytes.

use std::sync::OnceLock;

use crate::addr::{Contact, NameAddr, Via};
use crate::error::ParseError;
use crate::util::{canonical_name, is_lws, is_token, parse_u32_digits, split_top};

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed SIP message. It owns the bytes of exactly this message (leading
/// keep-alive CRLFs and octets after the declared body are not part of it);
/// header names and values are decoded as UTF-8 (invalid sequences replaced),
/// folded lines unfolded, values trimmed. The body is kept byte for byte.
#[derive(Debug, Clone)]
pub struct SipMessage {
    raw: Vec<u8>,
    start: StartLine,
    headers: Vec<(String, String)>,
    /// Lower-case long names of `headers`, index for index.
    canon: Vec<String>,
    body_start: usize,
    /// From and To parsed on first use: every archive consumer (row,
    /// IM and call correlation) asks for them, and parsing validates the URI.
    from: OnceLock<Option<NameAddr>>,
    to: OnceLock<Option<NameAddr>>,
}

/// One line of `buf` from `pos`: (content without CR/LF, position after the
/// line end, whether a line end was found).
fn next_line(buf: &[u8], pos: usize) -> (&[u8], usize, bool) {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = rest.get(..nl).unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, pos + nl + 1, true)
        }
        None => (rest, buf.len(), false),
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    let looks_like_response = line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if looks_like_response {
        let mut it = line.splitn(3, ' ');
        let version = it.next().unwrap_or("");
        let code = it
            .next()
            .ok_or_else(|| ParseError::BadStartLine("status line without code".into()))?;
        let reason = it.next().unwrap_or("");
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::UnsupportedVersion(version.to_string()));
        }
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::InvalidStatus(code.to_string()));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| ParseError::InvalidStatus(code.to_string()))?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::InvalidStatus(code.to_string()));
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    // Trailing white space after the version is tolerated (RFC 4475 3.1.2.10
    // allows a liberal element to ignore it); any other deviation from
    // `Method SP Request-URI SP SIP-Version` is rejected.
    let t = line.trim_end_matches(is_lws);
    let parts: Vec<&str> = t.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err(ParseError::BadStartLine(format!(
            "expected 3 fields separated by single spaces, got {}",
            parts.len()
        )));
    };
    if !is_token(method) {
        return Err(ParseError::BadStartLine("method is not a token".into()));
    }
    if uri.is_empty() || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ParseError::BadStartLine(
            "empty or malformed Request-URI".into(),
        ));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        let is_sip = version
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
        return Err(if is_sip {
            ParseError::UnsupportedVersion(version.to_string())
        } else {
            ParseError::BadStartLine(format!("bad protocol version {version:?}"))
        });
    }
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

/// Reads a Content-Length value: decimal digits only.
pub(crate) fn parse_content_length(v: &str) -> Option<usize> {
    let t = v.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Splits a CSeq value into number text and method.
fn split_cseq(v: &str) -> Option<(&str, &str)> {
    let v = v.trim();
    let i = v.find(is_lws)?;
    let num = v.get(..i)?;
    let method = v.get(i..)?.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || !is_token(method) {
        return None;
    }
    Some((num, method))
}

impl SipMessage {
    /// Reads one message with datagram semantics. See the crate docs for the
    /// exact rules.
    pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        let msg_start = bytes
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .ok_or(ParseError::Empty)?;
        let (line, mut pos, terminated) = next_line(bytes, msg_start);
        if !terminated {
            return Err(ParseError::Truncated);
        }
        let start = parse_start_line(&String::from_utf8_lossy(line))?;

        let mut headers: Vec<(String, String)> = Vec::new();
        let body_start;
        loop {
            if pos >= bytes.len() {
                // Input ends right after a complete header line: the empty
                // line is missing, take it as the end of the headers.
                body_start = bytes.len();
                break;
            }
            let (line, next, terminated) = next_line(bytes, pos);
            if line.is_empty() {
                body_start = next;
                break;
            }
            if !terminated {
                return Err(ParseError::Truncated);
            }
            let text = String::from_utf8_lossy(line);
            if text.starts_with(is_lws) {
                let (_, value) = headers.last_mut().ok_or_else(|| {
                    ParseError::BadHeaderLine("continuation line before the first header".into())
                })?;
                let more = text.trim_matches(is_lws);
                if !more.is_empty() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(more);
                }
            } else {
                let (name, value) = text
                    .split_once(':')
                    .ok_or_else(|| ParseError::BadHeaderLine("header line without ':'".into()))?;
                let name = name.trim_end_matches(is_lws);
                if !is_token(name) {
                    return Err(ParseError::BadHeaderLine(
                        "header name is not a token".into(),
                    ));
                }
                headers.push((name.to_string(), value.trim_matches(is_lws).to_string()));
            }
            pos = next;
        }
        let canon: Vec<String> = headers
            .iter()
            .map(|(n, _)| canonical_name(n).into_owned())
            .collect();

        // Content-Length decides where the body ends.
        let mut declared: Option<usize> = None;
        for ((_, v), c) in headers.iter().zip(&canon) {
            if c == "content-length" {
                let n = parse_content_length(v)
                    .ok_or_else(|| ParseError::InvalidContentLength(v.clone()))?;
                match declared {
                    Some(d) if d != n => return Err(ParseError::ConflictingContentLength),
                    _ => declared = Some(n),
                }
            }
        }
        let end = match declared {
            Some(n) => {
                let end = body_start.checked_add(n).ok_or(ParseError::Truncated)?;
                if end > bytes.len() {
                    return Err(ParseError::Truncated);
                }
                end
            }
            None => bytes.len(),
        };

        // CSeq must be readable: a number that fits 32 bits and a method.
        for ((_, v), c) in headers.iter().zip(&canon) {
            if c == "cseq" {
                let (num, _) = split_cseq(v).ok_or_else(|| ParseError::InvalidCSeq(v.clone()))?;
                num.parse::<u32>()
                    .map_err(|_| ParseError::InvalidCSeq(v.clone()))?;
            }
        }

        let raw = bytes
            .get(msg_start..end)
            .ok_or(ParseError::Truncated)?
            .to_vec();
        Ok(SipMessage {
            raw,
            start,
            headers,
            canon,
            body_start: body_start - msg_start,
            from: OnceLock::new(),
            to: OnceLock::new(),
        })
    }

    /// The bytes of this message only.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Request method token as received (no case folding, no unescaping).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The start line as text (without line end).
    pub fn start_line(&self) -> String {
        match &self.start {
            StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0"),
            StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}"),
        }
    }

    /// First value of the header, by long or compact name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = canonical_name(name);
        self.canon
            .iter()
            .zip(&self.headers)
            .find(|(c, _)| c.as_str() == want)
            .map(|(_, (_, v))| v.as_str())
    }

    /// Every header line with that name, in order (values not comma-split).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let want = canonical_name(name);
        self.canon
            .iter()
            .zip(&self.headers)
            .filter(|(c, _)| c.as_str() == want)
            .map(|(_, (_, v))| v.as_str())
            .collect()
    }

    /// Every comma-separated value of every line with that name, trimmed,
    /// empty values dropped (for list headers such as Require, Supported,
    /// Allow, Accept).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for v in self.header_all(name) {
            match split_top(v, ',') {
                Some(pieces) => {
                    out.extend(pieces.into_iter().map(str::trim).filter(|p| !p.is_empty()))
                }
                None => out.push(v),
            }
        }
        out
    }

    /// All headers in order, names as received, values unfolded and trimmed.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (num, method) = split_cseq(self.header("cseq")?)?;
        Some((num.parse().ok()?, method))
    }

    pub fn from(&self) -> Option<&NameAddr> {
        self.from
            .get_or_init(|| NameAddr::parse(self.header("from")?).ok())
            .as_ref()
    }

    pub fn to(&self) -> Option<&NameAddr> {
        self.to
            .get_or_init(|| NameAddr::parse(self.header("to")?).ok())
            .as_ref()
    }

    /// All Via values, comma-split across lines, top first. Values that do
    /// not parse are left out (`check_request` rejects such requests).
    pub fn vias(&self) -> Vec<Via> {
        let mut out = Vec::new();
        for v in self.header_all("via") {
            if let Some(pieces) = split_top(v, ',') {
                out.extend(pieces.into_iter().filter_map(|p| Via::parse(p).ok()));
            }
        }
        out
    }

    /// All Contact values across lines. Values that do not parse are left out.
    pub fn contacts(&self) -> Vec<Contact> {
        let mut out = Vec::new();
        for v in self.header_all("contact") {
            if v.trim() == "*" {
                out.push(Contact {
                    star: true,
                    addr: None,
                });
                continue;
            }
            if let Some(pieces) = split_top(v, ',') {
                out.extend(
                    pieces
                        .into_iter()
                        .filter_map(|p| NameAddr::parse(p).ok())
                        .map(|a| Contact {
                            star: false,
                            addr: Some(a),
                        }),
                );
            }
        }
        out
    }

    /// Every address of every line of a name-addr list header (Route,
    /// Record-Route, Path, Service-Route...), in order. Values that do not
    /// parse are left out.
    pub fn name_addrs(&self, name: &str) -> Vec<NameAddr> {
        let mut out = Vec::new();
        for v in self.header_all(name) {
            if let Some(pieces) = split_top(v, ',') {
                out.extend(pieces.into_iter().filter_map(|p| NameAddr::parse(p).ok()));
            }
        }
        out
    }

    pub fn max_forwards(&self) -> Option<u32> {
        parse_u32_digits(self.header("max-forwards")?)
    }

    /// Expires header as delta-seconds (`None` if absent, a date, or too big).
    pub fn expires(&self) -> Option<u32> {
        parse_u32_digits(self.header("expires")?)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body_start..).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP proxy.example.com\r\n\
v: SIP/2.0/UDP third.example.com;branch=z9hG4bK3\r\n\
f: \"Alice\" <sip:alice@example.com>;tag=abc\r\n\
t: <sip:alice@example.com>\r\n\
i: call-1@example.com\r\n\
CSeq: 2 REGISTER\r\n\
Max-Forwards: 70\r\n\
m: <sip:alice@192.0.2.1:5060>;expires=600, <sip:alice@198.51.100.1>\r\n\
Expires: 3600\r\n\
Subject: a\r\n long\r\n\tsubject\r\n\
c: text/plain\r\n\
l: 5\r\n\
\r\n\
helloEXTRA";

    #[test]
    fn parses_request_fields() {
        let m = SipMessage::parse(REG).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.request_uri(), Some("sip:example.com"));
        assert_eq!(m.status(), None);
        assert_eq!(m.call_id(), Some("call-1@example.com"));
        assert_eq!(m.cseq(), Some((2, "REGISTER")));
        assert_eq!(m.from().unwrap().tag(), Some("abc"));
        assert_eq!(m.from().unwrap().display.as_deref(), Some("Alice"));
        assert_eq!(m.to().unwrap().tag(), None);
        let vias = m.vias();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].port, Some(5060));
        assert_eq!(vias[0].rport(), Some(None));
        assert_eq!(vias[1].transport, "TCP");
        assert_eq!(vias[2].branch(), Some("z9hG4bK3"));
        assert_eq!(m.header_all("via").len(), 2);
        let c = m.contacts();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].expires(), Some(600));
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.expires(), Some(3600));
        assert_eq!(m.content_type(), Some("text/plain"));
        assert_eq!(m.header("Subject"), Some("a long subject"));
        assert_eq!(m.header("s"), Some("a long subject"));
        assert_eq!(m.body(), b"hello");
        assert!(m.raw().ends_with(b"\r\n\r\nhello"));
        assert_eq!(m.headers()[2].0, "f");
    }

    #[test]
    fn parses_response_and_bare_lf() {
        let m = SipMessage::parse(
            b"\r\n\r\nSIP/2.0 180 Ringing\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\nCSeq: 1 INVITE\n\n",
        )
        .unwrap();
        assert!(!m.is_request());
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), Some("Ringing"));
        assert_eq!(m.method(), None);
        assert_eq!(m.body(), b"");
        assert!(m.raw().starts_with(b"SIP/2.0 180"));
        let m = SipMessage::parse(b"SIP/2.0 100 \r\nCSeq: 1 INVITE\r\n\r\n").unwrap();
        assert_eq!(m.reason(), Some(""));
    }

    #[test]
    fn absent_content_length_takes_rest() {
        let m = SipMessage::parse(b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nhi there")
            .unwrap();
        assert_eq!(m.body(), b"hi there");
    }

    #[test]
    fn content_length_errors() {
        let base = "OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n";
        let cases: &[(&str, ParseError)] = &[
            ("Content-Length: 10\r\n\r\nshort", ParseError::Truncated),
            (
                "Content-Length: -1\r\n\r\n",
                ParseError::InvalidContentLength("-1".into()),
            ),
            (
                "Content-Length: x\r\n\r\n",
                ParseError::InvalidContentLength("x".into()),
            ),
            (
                "Content-Length: 1\r\nl: 2\r\n\r\nab",
                ParseError::ConflictingContentLength,
            ),
            (
                "Content-Length: 99999999999999999999999\r\n\r\n",
                ParseError::InvalidContentLength("99999999999999999999999".into()),
            ),
        ];
        for (tail, want) in cases {
            let got = SipMessage::parse(format!("{base}{tail}").as_bytes()).unwrap_err();
            assert_eq!(&got, want, "{tail}");
            assert_eq!(got.response_code(), 400);
        }
        let m = SipMessage::parse(format!("{base}Content-Length: 2\r\nl: 2\r\n\r\nab").as_bytes())
            .unwrap();
        assert_eq!(m.body(), b"ab");
    }

    #[test]
    fn start_line_errors() {
        let err = |s: &str| SipMessage::parse(s.as_bytes()).unwrap_err();
        assert_eq!(err("OPTIONS sip:a@b SIP/3.0\r\n\r\n").response_code(), 505);
        assert_eq!(err("SIP/3.0 200 OK\r\n\r\n").response_code(), 505);
        assert!(matches!(
            err("INVITE  sip:a@b SIP/2.0\r\n\r\n"),
            ParseError::BadStartLine(_)
        ));
        assert!(matches!(
            err("INVITE sip:a@b\r\n\r\n"),
            ParseError::BadStartLine(_)
        ));
        assert!(matches!(
            err("INVITE sip:a@b HTTP/1.1\r\n\r\n"),
            ParseError::BadStartLine(_)
        ));
        assert!(matches!(
            err("SIP/2.0 4294967301 x\r\n\r\n"),
            ParseError::InvalidStatus(_)
        ));
        assert!(matches!(
            err("SIP/2.0 099 x\r\n\r\n"),
            ParseError::InvalidStatus(_)
        ));
        assert!(matches!(
            err("SIP/2.0 200 OK\r\nbad line\r\n\r\n"),
            ParseError::BadHeaderLine(_)
        ));
        assert!(matches!(
            err("SIP/2.0 200 OK\r\n folded\r\n\r\n"),
            ParseError::BadHeaderLine(_)
        ));
        assert!(matches!(
            err("SIP/2.0 200 OK\r\nCSeq: 4294967296 INVITE\r\n\r\n"),
            ParseError::InvalidCSeq(_)
        ));
        assert!(matches!(
            err("SIP/2.0 200 OK\r\nVia: x"),
            ParseError::Truncated
        ));
        assert!(matches!(err("SIP/2.0 200 OK"), ParseError::Truncated));
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("\r\n\r\n"), ParseError::Empty);
        // Trailing white space on the request line is tolerated.
        let m = SipMessage::parse(b"OPTIONS sip:a@b SIP/2.0  \r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap();
        assert_eq!(m.request_uri(), Some("sip:a@b"));
    }

    #[test]
    fn missing_empty_line_after_complete_header() {
        let m = SipMessage::parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n").unwrap();
        assert_eq!(m.header("content-length"), Some("0"));
        assert_eq!(
            SipMessage::parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n").unwrap_err(),
            ParseError::Truncated
        );
    }

    #[test]
    fn non_utf8_header_does_not_fail() {
        let m =
            SipMessage::parse(b"MESSAGE sip:a@b SIP/2.0\r\nSubject: caf\xe9\r\nl: 1\r\n\r\n\xff")
                .unwrap();
        assert_eq!(m.header("subject"), Some("caf\u{fffd}"));
        assert_eq!(m.body(), b"\xff");
    }
}
