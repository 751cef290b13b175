//! One SIP message read from datagram bytes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::addr::{Contact, NameAddr, Via};
use crate::error::ParseError;
use crate::util::{
    canonical_name, find_byte, is_lws_byte, is_token, is_token_byte, lws_trimmed, names_header,
    parse_u32_digits, split_once_byte, split_top, trim, trim_end_lws, trim_lws,
};

/// Byte range into the head text ([`Stored::head`]).
type Span = std::ops::Range<usize>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: Span, uri: Span },
    Response { code: u16, reason: Span },
}

/// Where a header value lives: in the head text, or (for a value folded
/// over several lines, which must be rejoined) in `unfolded`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Head(Span),
    Unfolded(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: Span,
    value: Value,
    kind: Option<Hot>,
}

/// Headers every consumer of a message asks for; classified once while
/// parsing, so looking them up compares a byte instead of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hot {
    CallId,
    CSeq,
    From,
    To,
    ContentType,
    ContentLength,
    Via,
}

/// How many [`Hot`] kinds there are (`Via` is the last).
const HOT_KINDS: usize = Hot::Via as usize + 1;

impl Hot {
    /// The kind of a header name (long or compact form, any case). Runs
    /// for every header line: length and first letter pick the one name
    /// to compare.
    fn of(name: &str) -> Option<Hot> {
        Hot::of_with(name, <[u8]>::eq_ignore_ascii_case)
    }

    /// [`Hot::of`] for a name already checked to be a token (every header
    /// line's), in one branch-free pass: setting bit 0x20 lower-cases a
    /// letter and leaves '-'; the only other byte it turns into a letter
    /// or '-' is CR (into '-'), which no token holds.
    fn of_token(name: &str) -> Option<Hot> {
        Hot::of_with(name, |name, long| {
            name.len() == long.len()
                && name
                    .iter()
                    .zip(long)
                    .fold(0u8, |diff, (a, b)| diff | ((a | 0x20) ^ b))
                    == 0
        })
    }

    fn of_with(name: &str, same: impl Fn(&[u8], &[u8]) -> bool) -> Option<Hot> {
        let b = name.as_bytes();
        let (kind, long): (Hot, &[u8]) = match (b.len(), b.first()?.to_ascii_lowercase()) {
            (1, c) => {
                return match c {
                    b'i' => Some(Hot::CallId),
                    b'f' => Some(Hot::From),
                    b't' => Some(Hot::To),
                    b'c' => Some(Hot::ContentType),
                    b'l' => Some(Hot::ContentLength),
                    b'v' => Some(Hot::Via),
                    _ => None,
                };
            }
            (2, b't') => (Hot::To, b"to"),
            (3, b'v') => (Hot::Via, b"via"),
            (4, b'c') => (Hot::CSeq, b"cseq"),
            (4, b'f') => (Hot::From, b"from"),
            (7, b'c') => (Hot::CallId, b"call-id"),
            (12, b'c') => (Hot::ContentType, b"content-type"),
            (14, b'c') => (Hot::ContentLength, b"content-length"),
            _ => return None,
        };
        same(b, long).then_some(kind)
    }
}

/// A parsed SIP message. It owns the bytes it was parsed from; [`raw`]
/// is exactly this message (leading keep-alive CRLFs and octets after the
/// declared body are not part of it), [`input`] all of them. Header names
/// and values are decoded as UTF-8 (invalid sequences replaced), folded
/// lines unfolded, values trimmed. The body is kept byte for byte.
///
/// Names and values are ranges into the head (start line and headers),
/// read in place when the bytes are text, not a string each: archiving
/// parses every message it sees, and per-header allocations dominated that
/// cost.
///
/// [`raw`]: SipMessage::raw
/// [`input`]: SipMessage::input
#[derive(Debug, Clone)]
pub struct SipMessage {
    /// The bytes parsed, which may hold more than this message (leading
    /// line ends, octets after the body): `message` is its part.
    stored: Stored,
    message: Span,
    start: StartLine,
    headers: Vec<Header>,
    unfolded: Vec<String>,
    /// Where the body starts, relative to `message`.
    body_start: usize,
    /// The first CSeq: number, and where the method lies in its value.
    /// Parsing validates every CSeq anyway, and each consumer asks for it.
    cseq: Option<(u32, Span)>,
    /// Index in `headers` of the first header of each [`Hot`] kind.
    first_hot: [Option<usize>; HOT_KINDS],
    /// From and To parsed on first use: every archive consumer (row,
    /// IM and call correlation) asks for them, and parsing validates the URI.
    /// Shared, so that messages repeating a value can share its parse
    /// ([`SipMessage::share_addresses`]).
    from: OnceLock<Option<Arc<NameAddr>>>,
    to: OnceLock<Option<Arc<NameAddr>>>,
}

/// How many From/To values an [`AddressCache`] holds before it starts over.
const ADDRESS_CACHE_ENTRIES: usize = 4096;

/// Longer values are parsed but not kept, so the cache's memory stays
/// bounded (a few MiB) whatever the input: real addresses are far shorter.
const ADDRESS_CACHE_VALUE_BYTES: usize = 512;

/// From and To values parsed once and shared by the messages that repeat
/// them, as every message of a dialog does: parsing the two addresses (URI
/// validation, parameters, five or so allocations) was a quarter of what
/// archiving a message cost. Bounded: when full, it starts over, and long
/// values are not kept.
#[derive(Debug, Default)]
pub struct AddressCache {
    parsed: HashMap<Box<str>, Option<Arc<NameAddr>>, foldhash::fast::RandomState>,
}

impl AddressCache {
    pub fn new() -> AddressCache {
        AddressCache::default()
    }

    /// The parse of `value` (`None` when it is not a valid address), the
    /// same as [`NameAddr::parse`] gives.
    fn parse(&mut self, value: &str) -> Option<Arc<NameAddr>> {
        if value.len() > ADDRESS_CACHE_VALUE_BYTES {
            return parse_address(value);
        }
        if let Some(parsed) = self.parsed.get(value) {
            return parsed.clone();
        }
        let parsed = parse_address(value);
        if self.parsed.len() >= ADDRESS_CACHE_ENTRIES {
            self.parsed.clear();
        }
        self.parsed.insert(value.into(), parsed.clone());
        parsed
    }
}

/// A From or To value parsed for sharing; `None` when it is not an address.
fn parse_address(value: &str) -> Option<Arc<NameAddr>> {
    NameAddr::parse(value).ok().map(Arc::new)
}

/// Bytes that did not parse as a SIP message, and why.
#[derive(Debug)]
pub struct Unparsed {
    pub error: ParseError,
    pub bytes: Vec<u8>,
}

impl Unparsed {
    fn new(error: ParseError, bytes: Vec<u8>) -> Unparsed {
        Unparsed { error, bytes }
    }
}

/// The bytes a message was parsed from. Text (nearly every message) is
/// kept as it came, its head read in place: archiving parses every message
/// it sees, and a copy of the head beside a copy of the bytes was a large
/// part of that cost. Spans of the head are positions in the bytes.
#[derive(Debug, Clone)]
enum Stored {
    /// Valid UTF-8 throughout.
    Text(String),
    /// Not text throughout (a binary body, a stray byte): the bytes up to
    /// the body are decoded on their own, invalid sequences replaced.
    Bytes { bytes: Vec<u8>, head: String },
}

impl Stored {
    /// Keeps `bytes`, whose body starts at `body_at`. Replacement
    /// characters move the line ends: `ends` is cleared when the head had
    /// to be decoded with them.
    fn new(bytes: Vec<u8>, body_at: usize, ends: &mut LineEnds) -> Stored {
        match String::from_utf8(bytes) {
            Ok(text) => Stored::Text(text),
            Err(not_text) => {
                let bytes = not_text.into_bytes();
                let head_bytes = bytes.get(..body_at).unwrap_or(&[]);
                let head = match std::str::from_utf8(head_bytes) {
                    Ok(text) => text.to_owned(),
                    Err(_) => {
                        ends.len = 0;
                        String::from_utf8_lossy(head_bytes).into_owned()
                    }
                };
                Stored::Bytes { bytes, head }
            }
        }
    }

    /// Text that holds the start line and header lines at the positions
    /// of their spans (for text, all of it).
    #[inline]
    fn head(&self) -> &str {
        match self {
            Stored::Text(text) => text,
            Stored::Bytes { head, .. } => head,
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Stored::Text(text) => text.as_bytes(),
            Stored::Bytes { bytes, .. } => bytes,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Stored::Text(text) => text.into_bytes(),
            Stored::Bytes { bytes, .. } => bytes,
        }
    }
}

/// What reading a head yields: start line, headers, folded values rejoined,
/// and the first header of each [`Hot`] kind.
type HeadParts = (
    StartLine,
    Vec<Header>,
    Vec<String>,
    [Option<usize>; HOT_KINDS],
);

/// One line of `text` from `pos`: (range of the content without CR/LF,
/// position after the line end, whether a line end was found).
fn next_line(text: &str, pos: usize) -> (Span, usize, bool) {
    let rest = text.as_bytes().get(pos..).unwrap_or(&[]);
    match memchr::memchr(b'\n', rest) {
        Some(nl) => line_ending_at(text, pos, pos + nl),
        None => (pos..text.len(), text.len(), false),
    }
}

/// Where the head (start line and headers) of `bytes` ends: the position of
/// the body, or `None` when the input ends inside a header line. Input that
/// ends right after a complete header line, without the empty line, has an
/// empty body. The line ends passed on the way are kept in `ends`, so the
/// header lines need not be searched again.
fn head_end(bytes: &[u8], from: usize, ends: &mut LineEnds) -> Option<usize> {
    let rest = bytes.get(from..)?;
    for nl in memchr::memchr_iter(b'\n', rest) {
        ends.push(from + nl);
        // The line after this line end: empty (CRLF or LF) ends the head.
        let next = from + nl + 1;
        match bytes.get(next..)? {
            [] => return Some(bytes.len()),
            [b'\r', b'\n', ..] => return Some(next + 2),
            [b'\n', ..] => return Some(next + 1),
            _ => {}
        }
    }
    None
}

/// The first line ends of a head, in order; a head with more lines than
/// this holds has its later lines searched one by one.
struct LineEnds {
    at: [u32; 48],
    len: usize,
}

impl LineEnds {
    fn new() -> Self {
        LineEnds {
            at: [0; 48],
            len: 0,
        }
    }

    fn push(&mut self, nl: usize) {
        if let (Some(slot), Ok(nl)) = (self.at.get_mut(self.len), u32::try_from(nl)) {
            *slot = nl;
            self.len += 1;
        }
    }

    /// The `k`-th line end, when it was kept.
    fn get(&self, k: usize) -> Option<usize> {
        self.at.get(..self.len)?.get(k).map(|&nl| nl as usize)
    }
}

/// [`next_line`] for a line whose end, `nl`, is known.
fn line_ending_at(text: &str, pos: usize, nl: usize) -> (Span, usize, bool) {
    let end = if nl > pos && text.as_bytes().get(nl - 1) == Some(&b'\r') {
        nl - 1
    } else {
        nl
    };
    (pos..end, nl + 1, true)
}

/// Reads the start line (at `from`) and header lines of `head`, whose
/// first line ends `ends` may hold; `head` ends where the body starts.
fn read_head(head: &str, from: usize, ends: &LineEnds) -> Result<HeadParts, ParseError> {
    let mut lines_read = 0;
    let mut line_from = |pos: usize| {
        let line = match ends.get(lines_read) {
            Some(nl) => line_ending_at(head, pos, nl),
            None => next_line(head, pos),
        };
        lines_read += 1;
        line
    };

    let (line, mut pos, terminated) = line_from(from);
    if !terminated {
        return Err(ParseError::Truncated);
    }
    let start = parse_start_line(head, line)?;

    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut unfolded: Vec<String> = Vec::new();
    let mut first_hot = [None; HOT_KINDS];
    while pos < head.len() {
        let (line, next, _) = line_from(pos);
        pos = next;
        if line.is_empty() {
            break;
        }
        let text = head.get(line.clone()).unwrap_or("");
        if text.as_bytes().first().is_some_and(|&b| is_lws_byte(b)) {
            let last = headers.last_mut().ok_or_else(|| {
                ParseError::BadHeaderLine("continuation line before the first header".into())
            })?;
            let more = trim_lws(text);
            if more.is_empty() {
                continue;
            }
            let value = match &last.value {
                Value::Head(span) => {
                    let value = head.get(span.clone()).unwrap_or("").to_string();
                    unfolded.push(value);
                    last.value = Value::Unfolded(unfolded.len() - 1);
                    unfolded.last_mut()
                }
                Value::Unfolded(i) => unfolded.get_mut(*i),
            };
            if let Some(value) = value {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
        } else {
            // Nearly every name is a token right up to its ':': one pass
            // finds both. Anything else (white space before the colon, a
            // bad name, no colon) takes the general path, which names the
            // error.
            let token_len = text
                .bytes()
                .position(|b| !is_token_byte(b))
                .unwrap_or(text.len());
            let (name, colon) = if token_len > 0 && text.as_bytes().get(token_len) == Some(&b':') {
                (line.start..line.start + token_len, token_len)
            } else {
                // Names are short: a plain scan beats a memchr call.
                let colon = text
                    .bytes()
                    .position(|b| b == b':')
                    .ok_or_else(|| ParseError::BadHeaderLine("header line without ':'".into()))?;
                let name = trim_span(head, line.start..line.start + colon);
                if name.start != line.start || !is_token(head.get(name.clone()).unwrap_or("")) {
                    return Err(ParseError::BadHeaderLine(
                        "header name is not a token".into(),
                    ));
                }
                (name, colon)
            };
            let value = trim_span(head, line.start + colon + 1..line.end);
            let kind = Hot::of_token(text.get(..name.len()).unwrap_or(""));
            if let Some(kind) = kind
                && let Some(first) = first_hot.get_mut(kind as usize)
                && first.is_none()
            {
                *first = Some(headers.len());
            }
            headers.push(Header {
                name,
                value: Value::Head(value),
                kind,
            });
        }
    }

    Ok((start, headers, unfolded, first_hot))
}

/// Checks Content-Length and CSeq of a head read by [`read_head`]: where
/// the message ends in the `stored_len` bytes parsed, and the first CSeq.
fn check_framing(
    head: &str,
    headers: &[Header],
    unfolded: &[String],
    body_at: usize,
    stored_len: usize,
) -> Result<(usize, Option<(u32, Span)>), ParseError> {
    // One pass over the headers for both: every message has a CSeq, and
    // most a Content-Length. A Content-Length error is reported before a
    // CSeq one, wherever the lines are.
    let mut declared: Option<usize> = None;
    let mut first_cseq = None;
    let mut cseq_error = None;
    for h in headers {
        match h.kind {
            Some(Hot::ContentLength) => {
                // Content-Length decides where the body ends.
                let v = value_in(head, unfolded, h);
                let n = parse_content_length(v)
                    .ok_or_else(|| ParseError::InvalidContentLength(v.to_string()))?;
                match declared {
                    Some(d) if d != n => return Err(ParseError::ConflictingContentLength),
                    _ => declared = Some(n),
                }
            }
            Some(Hot::CSeq) if cseq_error.is_none() => {
                // CSeq must be readable: a number that fits 32 bits and a method.
                let v = value_in(head, unfolded, h);
                let Some((Ok(num), method)) =
                    split_cseq(v).map(|(num, method)| (num.parse::<u32>(), method))
                else {
                    cseq_error = Some(ParseError::InvalidCSeq(v.to_string()));
                    continue;
                };
                if first_cseq.is_none() {
                    // `method` is a sub-slice of `v`: its offset.
                    let at = method.as_ptr() as usize - v.as_ptr() as usize;
                    first_cseq = Some((num, at..at + method.len()));
                }
            }
            _ => {}
        }
    }
    let end = match declared {
        Some(n) => {
            let end = body_at.checked_add(n).ok_or(ParseError::Truncated)?;
            if end > stored_len {
                return Err(ParseError::Truncated);
            }
            end
        }
        None => stored_len,
    };
    if let Some(error) = cseq_error {
        return Err(error);
    }
    Ok((end, first_cseq))
}

/// The value of header line `h` of `head`, folded values from `unfolded`.
#[inline]
fn value_in<'a>(head: &'a str, unfolded: &'a [String], h: &Header) -> &'a str {
    match &h.value {
        Value::Head(span) => head.get(span.clone()).unwrap_or(""),
        Value::Unfolded(i) => unfolded.get(*i).map_or("", String::as_str),
    }
}

/// Trims linear white space off both ends of a range of `text`.
#[inline]
fn trim_span(text: &str, span: Span) -> Span {
    let trimmed = lws_trimmed(text.as_bytes().get(span.clone()).unwrap_or(&[]));
    span.start + trimmed.start..span.start + trimmed.end
}

/// Whether `s` holds a control or white space character; byte-wise for
/// ASCII, where those are exactly the bytes up to 0x20 and 0x7f.
fn has_control_or_white_space(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        s.chars().any(|c| c.is_control() || c.is_whitespace())
    }
}

fn parse_start_line(text: &str, line: Span) -> Result<StartLine, ParseError> {
    let l = text.get(line.clone()).unwrap_or("");
    let at = |s: &str| {
        // `s` is a sub-slice of `l`: its offset in `text`.
        let off = s.as_ptr() as usize - l.as_ptr() as usize;
        line.start + off..line.start + off + s.len()
    };
    let looks_like_response = l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if looks_like_response {
        // `l.splitn(3, ' ')`, searching bytes.
        let (version, rest) = split_once_byte(l, b' ')
            .ok_or_else(|| ParseError::BadStartLine("status line without code".into()))?;
        // No reason phrase: an empty one at the end of the line (a
        // sub-slice of `l`, as `at` needs).
        let (code, reason) =
            split_once_byte(rest, b' ').unwrap_or((rest, l.get(l.len()..).unwrap_or("")));
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
            reason: at(reason),
        });
    }
    // Trailing white space after the version is tolerated (RFC 4475 3.1.2.10
    // allows a liberal element to ignore it); any other deviation from
    // `Method SP Request-URI SP SIP-Version` is rejected.
    let t = trim_end_lws(l);
    // `t.split(' ')` giving exactly three fields, searching bytes.
    let fields = split_once_byte(t, b' ').and_then(|(method, rest)| {
        let (uri, version) = split_once_byte(rest, b' ')?;
        find_byte(version, b' ')
            .is_none()
            .then_some((method, uri, version))
    });
    let Some((method, uri, version)) = fields else {
        return Err(ParseError::BadStartLine(format!(
            "expected 3 fields separated by single spaces, got {}",
            t.split(' ').count()
        )));
    };
    if !is_token(method) {
        return Err(ParseError::BadStartLine("method is not a token".into()));
    }
    if uri.is_empty() || has_control_or_white_space(uri) {
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
        method: at(method),
        uri: at(uri),
    })
}

/// Reads a Content-Length value: decimal digits only.
pub(crate) fn parse_content_length(v: &str) -> Option<usize> {
    let t = trim(v);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Splits a CSeq value into number text and method.
fn split_cseq(v: &str) -> Option<(&str, &str)> {
    let v = trim(v);
    let i = v.bytes().position(is_lws_byte)?;
    let num = v.get(..i)?;
    let method = trim(v.get(i..)?);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || !is_token(method) {
        return None;
    }
    Some((num, method))
}

impl SipMessage {
    /// Reads one message with datagram semantics. See the crate docs for the
    /// exact rules.
    pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        SipMessage::parse_owned(bytes.to_vec()).map_err(|unparsed| unparsed.error)
    }

    /// [`SipMessage::parse`] of bytes the caller gives up, kept without a
    /// copy (see [`SipMessage::input`]); on failure they are handed back.
    pub fn parse_owned(bytes: Vec<u8>) -> Result<SipMessage, Unparsed> {
        let Some(msg_start) = bytes.iter().position(|&b| b != b'\r' && b != b'\n') else {
            return Err(Unparsed::new(ParseError::Empty, bytes));
        };
        let mut ends = LineEnds::new();
        let Some(body_at) = head_end(&bytes, msg_start, &mut ends) else {
            return Err(Unparsed::new(ParseError::Truncated, bytes));
        };
        let stored = Stored::new(bytes, body_at, &mut ends);
        let head = match &stored {
            Stored::Text(text) => text.get(..body_at).unwrap_or(""),
            Stored::Bytes { head, .. } => head,
        };
        let (start, headers, unfolded, first_hot) = match read_head(head, msg_start, &ends) {
            Ok(parts) => parts,
            Err(error) => return Err(Unparsed::new(error, stored.into_bytes())),
        };
        let framing = check_framing(
            stored.head(),
            &headers,
            &unfolded,
            body_at,
            stored.bytes().len(),
        );
        let (end, cseq) = match framing {
            Ok(framing) => framing,
            Err(error) => return Err(Unparsed::new(error, stored.into_bytes())),
        };
        // Built in place: the message is large, and a move would copy it.
        Ok(SipMessage {
            stored,
            message: msg_start..end,
            start,
            headers,
            unfolded,
            body_start: body_at - msg_start,
            cseq,
            first_hot,
            from: OnceLock::new(),
            to: OnceLock::new(),
        })
    }

    #[inline]
    fn text(&self, span: &Span) -> &str {
        self.stored.head().get(span.clone()).unwrap_or("")
    }

    #[inline]
    fn value(&self, h: &Header) -> &str {
        value_in(self.stored.head(), &self.unfolded, h)
    }

    /// Values of every header line that `canonical` (a lower-case long
    /// name) denotes.
    fn header_iter<'s>(&'s self, canonical: &str) -> impl DoubleEndedIterator<Item = &'s str> {
        let kind = Hot::of(canonical);
        self.headers
            .iter()
            .filter(move |h| match kind {
                Some(kind) => h.kind == Some(kind),
                None => names_header(self.text(&h.name), canonical),
            })
            .map(|h| self.value(h))
    }

    /// All the bytes given to the parse: this message, and any line ends
    /// before it or octets after its body.
    pub fn input(&self) -> &[u8] {
        self.stored.bytes()
    }

    /// The bytes of this message only.
    pub fn raw(&self) -> &[u8] {
        self.stored.bytes().get(self.message.clone()).unwrap_or(&[])
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// Request method token as received (no case folding, no unescaping).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(self.text(method)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(self.text(uri)),
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
            StartLine::Response { reason, .. } => Some(self.text(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// The start line as text (without line end).
    pub fn start_line(&self) -> String {
        match &self.start {
            StartLine::Request { method, uri } => {
                format!("{} {} SIP/2.0", self.text(method), self.text(uri))
            }
            StartLine::Response { code, reason } => {
                format!("SIP/2.0 {code} {}", self.text(reason))
            }
        }
    }

    /// First value of a header of `kind`.
    fn hot(&self, kind: Hot) -> Option<&str> {
        let at = (*self.first_hot.get(kind as usize)?)?;
        self.headers.get(at).map(|h| self.value(h))
    }

    /// First value of the header, by long or compact name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        // The headers asked for on every message need no canonical name.
        if let Some(kind) = Hot::of(name) {
            return self.hot(kind);
        }
        let want = canonical_name(name);
        self.header_iter(&want).next()
    }

    /// Every header line with that name, in order (values not comma-split).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let want = canonical_name(name);
        self.header_iter(&want).collect()
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

    /// All headers in order: names as received, values unfolded and trimmed.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.headers
            .iter()
            .map(|h| (self.text(&h.name), self.value(h)))
    }

    pub fn call_id(&self) -> Option<&str> {
        self.hot(Hot::CallId)
    }

    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (num, method) = self.cseq.as_ref()?;
        Some((*num, self.hot(Hot::CSeq)?.get(method.clone())?))
    }

    pub fn from(&self) -> Option<&NameAddr> {
        self.address(&self.from, Hot::From)
    }

    pub fn to(&self) -> Option<&NameAddr> {
        self.address(&self.to, Hot::To)
    }

    /// From or To (`kind`), parsed into `cell` on first use.
    fn address<'s>(
        &'s self,
        cell: &'s OnceLock<Option<Arc<NameAddr>>>,
        kind: Hot,
    ) -> Option<&'s NameAddr> {
        cell.get_or_init(|| parse_address(self.hot(kind)?))
            .as_deref()
    }

    /// Parses From and To now through `cache`, so that a value another
    /// message had is not parsed again. [`SipMessage::from`] and
    /// [`SipMessage::to`] answer exactly as they would without it.
    pub fn share_addresses(&self, cache: &mut AddressCache) {
        for (cell, kind) in [(&self.from, Hot::From), (&self.to, Hot::To)] {
            if cell.get().is_none()
                && let Some(value) = self.hot(kind)
            {
                let _ = cell.set(cache.parse(value));
            }
        }
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

    /// The first of [`SipMessage::vias`], without parsing the others.
    pub fn top_via(&self) -> Option<Via> {
        self.header_iter("via").find_map(|v| {
            split_top(v, ',')?
                .into_iter()
                .find_map(|p| Via::parse(p).ok())
        })
    }

    /// The last of [`SipMessage::vias`], without parsing the others.
    pub fn bottom_via(&self) -> Option<Via> {
        self.header_iter("via").rev().find_map(|v| {
            split_top(v, ',')?
                .into_iter()
                .rev()
                .find_map(|p| Via::parse(p).ok())
        })
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
        self.hot(Hot::ContentType)
    }

    pub fn body(&self) -> &[u8] {
        self.raw().get(self.body_start..).unwrap_or(&[])
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
        assert_eq!(m.top_via().as_ref(), vias.first());
        assert_eq!(m.bottom_via().as_ref(), vias.last());
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
        assert_eq!(m.headers().nth(2).unwrap().0, "f");
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
        let m = SipMessage::parse(b"SIP/2.0 100\r\nCSeq: 1 INVITE\r\n\r\n").unwrap();
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
    fn end_vias_skip_what_does_not_parse_as_vias_does() {
        let m = SipMessage::parse(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: \"open\r\nv: junk, SIP/2.0/UDP a;branch=1\r\nVia: SIP/2.0/UDP b;branch=2, junk\r\nVia: x\"\r\nCSeq: 1 OPTIONS\r\n\r\n",
        )
        .unwrap();
        let vias = m.vias();
        assert_eq!(vias.len(), 2);
        assert_eq!(m.top_via().as_ref(), vias.first());
        assert_eq!(m.bottom_via().as_ref(), vias.last());
        let none =
            SipMessage::parse(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap();
        assert_eq!(none.top_via(), None);
        assert_eq!(none.bottom_via(), None);
    }

    #[test]
    fn token_names_classify_as_by_the_general_rule() {
        for name in [
            "Via",
            "VIA",
            "v",
            "V",
            "Call-ID",
            "call-id",
            "CALL_ID",
            "CSeq",
            "cseq",
            "Cseq1",
            "Content-Length",
            "content-lengtH",
            "Content_Length",
            "Contact",
            "To",
            "tO",
            "T",
            "From",
            "Fro",
            "x",
            "Content-Type",
            "Call-IE",
            "c",
            "l",
            "i",
            "f",
            "Vi",
            "Via-",
        ] {
            assert!(is_token(name));
            assert_eq!(Hot::of_token(name), Hot::of(name), "{name}");
        }
    }

    #[test]
    fn hot_headers_are_found_by_any_name_form() {
        let m = SipMessage::parse(
            b"MESSAGE sip:a@b SIP/2.0\r\nCSEQ:  7\r\n  MESSAGE \r\nCSeq: 8 MESSAGE\r\nI: x\r\nCall-Info: <http://a>\r\nl: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(m.cseq(), Some((7, "MESSAGE")), "first CSeq, folded");
        for name in ["call-id", "CALL-ID", "i", "I"] {
            assert_eq!(m.header(name), Some("x"), "{name}");
        }
        assert_eq!(m.header("call-info"), Some("<http://a>"));
        assert_eq!(m.header("content-length"), Some("0"));
        assert_eq!(m.header("to"), None);
        assert_eq!(m.header(""), None);
    }

    #[test]
    fn non_utf8_header_does_not_fail() {
        let m =
            SipMessage::parse(b"MESSAGE sip:a@b SIP/2.0\r\nSubject: caf\xe9\r\nl: 1\r\n\r\n\xff")
                .unwrap();
        assert_eq!(m.header("subject"), Some("caf\u{fffd}"));
        assert_eq!(m.body(), b"\xff");
    }

    #[test]
    fn messages_repeating_an_address_share_its_parse_and_read_the_same() {
        let message = |from: &str, to: &str| {
            let text = format!(
                "MESSAGE sip:b@x SIP/2.0\r\nFrom: {from}\r\nTo: {to}\r\nCSeq: 1 MESSAGE\r\n\r\n"
            );
            SipMessage::parse(text.as_bytes()).unwrap()
        };
        let alice = "\"Alice\" <sip:alice@x>;tag=1";
        let mut cache = AddressCache::new();
        let first = message(alice, "<sip:bob@x>");
        let second = message(alice, "sip:carol@x;tag=9");
        let bad = message("<sip:alice@x", alice);
        for m in [&first, &second, &bad] {
            m.share_addresses(&mut cache);
        }
        let first_from = first.from().unwrap();
        assert!(
            std::ptr::eq(first_from, second.from().unwrap()),
            "one parse for one value"
        );
        assert!(
            std::ptr::eq(first_from, bad.to().unwrap()),
            "From and To share too"
        );
        assert_eq!(bad.from(), None, "an invalid value stays invalid");
        for m in [&first, &second, &bad] {
            let alone = SipMessage::parse(m.raw()).unwrap();
            assert_eq!(m.from(), alone.from(), "From as without the cache");
            assert_eq!(m.to(), alone.to(), "To as without the cache");
        }
        assert_eq!(second.to().unwrap().tag(), Some("9"));

        // Bounded: a new value past the limit starts the cache over.
        for i in 0..ADDRESS_CACHE_ENTRIES + 10 {
            message(&format!("<sip:u{i}@x>"), "<sip:bob@x>").share_addresses(&mut cache);
        }
        assert!(cache.parsed.len() <= ADDRESS_CACHE_ENTRIES);
        let again = message(alice, "<sip:bob@x>");
        again.share_addresses(&mut cache);
        assert_eq!(again.from(), first.from());

        // A long value is parsed as usual, but not kept.
        let long = format!("<sip:{}@x>;tag=1", "u".repeat(ADDRESS_CACHE_VALUE_BYTES));
        let kept = cache.parsed.len();
        let m = message(&long, alice);
        m.share_addresses(&mut cache);
        assert_eq!(m.from(), SipMessage::parse(m.raw()).unwrap().from());
        assert!(m.from().is_some());
        assert_eq!(cache.parsed.len(), kept, "the long value is not kept");
    }

    #[test]
    fn a_content_length_error_is_reported_before_a_cseq_one_wherever_the_lines_are() {
        let err = |s: &str| SipMessage::parse(s.as_bytes()).unwrap_err();
        let start = "MESSAGE sip:a@b SIP/2.0\r\n";
        assert_eq!(
            err(&format!("{start}CSeq: x MESSAGE\r\nl: y\r\n\r\n")),
            ParseError::InvalidContentLength("y".into())
        );
        assert_eq!(
            err(&format!("{start}CSeq: x MESSAGE\r\nl: 9\r\n\r\nshort")),
            ParseError::Truncated
        );
        assert_eq!(
            err(&format!(
                "{start}CSeq: 1 MESSAGE\r\nCSeq: x\r\nl: 0\r\n\r\n"
            )),
            ParseError::InvalidCSeq("x".into())
        );
        assert_eq!(
            err(&format!("{start}CSeq: 99999999999 MESSAGE\r\nl: 0\r\n\r\n")),
            ParseError::InvalidCSeq("99999999999 MESSAGE".into())
        );
    }

    #[test]
    fn owned_bytes_are_kept_whole_and_handed_back_when_they_do_not_parse() {
        let input = b"\r\n\r\nMESSAGE sip:a@b SIP/2.0\r\nCSeq: 7 MESSAGE\r\nl: 2\r\n\r\nhiEXTRA";
        let m = SipMessage::parse_owned(input.to_vec()).unwrap();
        assert_eq!(m.input(), input, "every byte given is kept");
        assert_eq!(m.raw(), &input[4..input.len() - 5], "the message alone");
        assert_eq!(m.body(), b"hi");
        assert_eq!(m.cseq(), Some((7, "MESSAGE")));
        assert_eq!(m.method(), Some("MESSAGE"));

        for bad in [
            &b"\r\n"[..],
            b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1",
            b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: x MESSAGE\r\n\r\n",
            b"MESSAGE sip:a@b SIP/2.0\r\nl: 9\r\n\r\nshort",
            b"MESSAGE sip:a@b SIP/2.0\r\nno colon\r\n\r\n",
        ] {
            let unparsed = SipMessage::parse_owned(bad.to_vec()).unwrap_err();
            assert_eq!(unparsed.bytes, bad, "bytes handed back for {bad:?}");
            assert_eq!(
                Some(unparsed.error),
                SipMessage::parse(bad).err(),
                "same error as a borrowed parse for {bad:?}"
            );
        }
    }

    #[test]
    fn a_binary_body_or_a_stray_byte_after_leading_line_ends_reads_the_same() {
        let mut input = b"\r\nMESSAGE sip:a@b SIP/2.0\r\nSubject: caf".to_vec();
        input.push(0xe9);
        input.extend_from_slice(
            b"\r\nCSeq: 2 MESSAGE\r\nc: application/octet-stream\r\nl: 3\r\n\r\n",
        );
        input.extend_from_slice(&[0xff, 0x00, 0xfe]);
        let m = SipMessage::parse_owned(input.clone()).unwrap();
        assert_eq!(m.header("subject"), Some("caf\u{fffd}"));
        assert_eq!(m.cseq(), Some((2, "MESSAGE")));
        assert_eq!(m.content_type(), Some("application/octet-stream"));
        assert_eq!(m.body(), [0xff, 0x00, 0xfe]);
        assert_eq!(m.input(), input);
        assert_eq!(m.raw(), &input[2..]);

        // Only the body is not text: the head is read as it is.
        let mut input = b"\r\nMESSAGE sip:a@b SIP/2.0\r\nCSeq: 3 MESSAGE\r\nl: 2\r\n\r\n".to_vec();
        input.extend_from_slice(&[0xc3, 0x28]);
        let m = SipMessage::parse_owned(input.clone()).unwrap();
        assert_eq!(m.cseq(), Some((3, "MESSAGE")));
        assert_eq!(m.request_uri(), Some("sip:a@b"));
        assert_eq!(m.body(), [0xc3, 0x28]);
    }

    #[test]
    fn every_header_line_is_read_past_the_line_ends_kept_from_the_head_search() {
        let mut text = String::from("MESSAGE sip:a@b SIP/2.0\r\n");
        for i in 0..70 {
            text.push_str(&format!("X-H{i}: v{i}\r\n"));
            if i == 60 {
                text.push_str(" folded\r\n");
            }
        }
        text.push_str("l: 2\r\n\r\nhi");
        let m = SipMessage::parse(text.as_bytes()).unwrap();
        assert_eq!(m.header("x-h0"), Some("v0"));
        assert_eq!(m.header("x-h47"), Some("v47"));
        assert_eq!(m.header("x-h48"), Some("v48"));
        assert_eq!(m.header("x-h60"), Some("v60 folded"));
        assert_eq!(m.header("x-h69"), Some("v69"));
        assert_eq!(m.body(), b"hi");
        // Invalid UTF-8 early in a long head: every later line still reads.
        let lossy = text.replacen("v1\r\n", "v\u{e9}1\r\n", 1).into_bytes();
        let lossy: Vec<u8> = lossy.iter().copied().filter(|&b| b != 0xc3).collect();
        let m = SipMessage::parse(&lossy).unwrap();
        assert_eq!(m.header("x-h1"), Some("v\u{fffd}1"));
        assert_eq!(m.header("x-h2"), Some("v2"));
        assert_eq!(m.header("x-h69"), Some("v69"));
        assert_eq!(m.body(), b"hi");
    }
}
