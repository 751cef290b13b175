//! Framing SIP messages on stream transports (TCP, TLS) by Content-Length.

use crate::message::parse_content_length;
use crate::util::{canonical_name, is_lws};

/// Why a stream cannot be framed. Once returned the stream is unrecoverable:
/// the caller closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad Content-Length: {0}")]
    BadContentLength(String),
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
}

/// Splits a byte stream into SIP messages: several messages per segment, a
/// message split over segments, CRLF keep-alives between messages skipped.
#[derive(Debug, Clone)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    start: usize,
    /// Offset (relative to `start`) up to which no end of headers was found.
    scanned: usize,
    /// Length of the current message once its headers are complete.
    pending: Option<usize>,
    max: usize,
    failed: Option<FramingError>,
    /// Header section of the message that broke framing, so the caller can
    /// still answer it (400) before closing the connection.
    failed_head: Option<Vec<u8>>,
}

/// Finds the end of the header section in `data` (which starts at a start
/// line): returns the offset just after the empty line. Accepts CRLF and
/// bare LF line ends. `from` is where to resume searching.
fn find_header_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(rel) = data.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + rel;
        // An empty line is a '\n' directly after a previous '\n' (optionally
        // with a '\r' between).
        let after = nl + 1;
        match data.get(after) {
            Some(b'\n') => return Some(after + 1),
            Some(b'\r') if data.get(after + 1) == Some(&b'\n') => return Some(after + 2),
            Some(_) => i = after,
            None => return None,
        }
    }
    None
}

/// Reads the Content-Length of a complete header section.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let text = String::from_utf8_lossy(head);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').skip(1) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with(is_lws) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((
                canonical_name(n.trim_end_matches(is_lws)).into_owned(),
                v.trim().to_string(),
            ));
        }
    }
    let mut found: Option<usize> = None;
    for (n, v) in &headers {
        if n == "content-length" {
            let len =
                parse_content_length(v).ok_or_else(|| FramingError::BadContentLength(v.clone()))?;
            if found.is_some_and(|f| f != len) {
                return Err(FramingError::BadContentLength("conflicting values".into()));
            }
            found = Some(len);
        }
    }
    found.ok_or(FramingError::MissingContentLength)
}

impl StreamFramer {
    /// `max_message_bytes` bounds one message (headers and body).
    pub fn new(max_message_bytes: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            pending: None,
            max: max_message_bytes,
            failed: None,
            failed_head: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Drop consumed bytes before growing, so the buffer stays bounded.
        if self.start > 0 && (self.start >= self.buf.len() / 2 || self.start > 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// After a Content-Length error: the header section of the offending
    /// message (for an error response).
    pub fn failed_head(&self) -> Option<&[u8]> {
        self.failed_head.as_deref()
    }

    /// Bytes held and not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    fn fail(&mut self, e: FramingError) -> Result<Option<Vec<u8>>, FramingError> {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        Err(e)
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_none() {
            // Keep-alives (CRLF, double CRLF) between messages.
            let data = self.buf.get(self.start..).unwrap_or(&[]);
            let skip = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 {
                self.start += skip;
                self.scanned = 0;
            }
            let data = self.buf.get(self.start..).unwrap_or(&[]);
            if data.is_empty() {
                return Ok(None);
            }
            // Resume a little before the last scan point: the empty line may
            // straddle two pushes.
            let from = self.scanned.saturating_sub(3);
            match find_header_end(data, from) {
                None => {
                    self.scanned = data.len();
                    if data.len() > self.max {
                        return self.fail(FramingError::TooLarge { limit: self.max });
                    }
                    return Ok(None);
                }
                Some(head_len) => {
                    let head = data.get(..head_len).unwrap_or(&[]);
                    let body_len = match content_length(head) {
                        Ok(n) => n,
                        Err(e) => {
                            self.failed_head = Some(head.to_vec());
                            return self.fail(e);
                        }
                    };
                    match head_len.checked_add(body_len) {
                        Some(total) if total <= self.max => self.pending = Some(total),
                        _ => return self.fail(FramingError::TooLarge { limit: self.max }),
                    }
                }
            }
        }
        let total = self.pending.unwrap_or(0);
        let end = self.start + total;
        match self.buf.get(self.start..end) {
            Some(msg) => {
                let msg = msg.to_vec();
                self.start = end;
                self.scanned = 0;
                self.pending = None;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] =
        b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello";
    const B: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n";

    #[test]
    fn failed_head_keeps_the_unframeable_headers_for_a_400() {
        let mut f = StreamFramer::new(1 << 16);
        f.push(A);
        f.push(b"INVITE sip:a@b SIP/2.0\r\nCSeq: 3 INVITE\r\nContent-Length: -999\r\n\r\nxx");
        assert_eq!(f.next_message().unwrap().as_deref(), Some(A));
        assert!(matches!(
            f.next_message(),
            Err(FramingError::BadContentLength(_))
        ));
        let head = f.failed_head().expect("head of the failed message");
        assert!(head.starts_with(b"INVITE sip:a@b") && head.ends_with(b"-999\r\n\r\n"));
    }

    fn drain(f: &mut StreamFramer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = f.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn several_messages_in_one_segment_with_keepalives() {
        let mut f = StreamFramer::new(4096);
        let mut seg = b"\r\n\r\n".to_vec();
        seg.extend_from_slice(A);
        seg.extend_from_slice(b"\r\n");
        seg.extend_from_slice(B);
        seg.extend_from_slice(A);
        f.push(&seg);
        assert_eq!(drain(&mut f), vec![A.to_vec(), B.to_vec(), A.to_vec()]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn byte_by_byte() {
        let mut all = A.to_vec();
        all.extend_from_slice(B);
        let mut f = StreamFramer::new(4096);
        let mut got = Vec::new();
        for b in &all {
            f.push(std::slice::from_ref(b));
            got.extend(drain(&mut f));
        }
        assert_eq!(got, vec![A.to_vec(), B.to_vec()]);
    }

    #[test]
    fn partial_body_waits() {
        let mut f = StreamFramer::new(4096);
        f.push(&A[..A.len() - 2]);
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!(f.buffered(), A.len() - 2);
        f.push(&A[A.len() - 2..]);
        assert_eq!(f.next_message().unwrap().as_deref(), Some(A));
    }

    #[test]
    fn errors_are_sticky() {
        let mut f = StreamFramer::new(4096);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::MissingContentLength));
        f.push(B);
        assert_eq!(f.next_message(), Err(FramingError::MissingContentLength));

        let mut f = StreamFramer::new(4096);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(
            f.next_message(),
            Err(FramingError::BadContentLength(_))
        ));
        let mut f = StreamFramer::new(4096);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n");
        assert!(matches!(
            f.next_message(),
            Err(FramingError::BadContentLength(_))
        ));
    }

    #[test]
    fn too_large() {
        let mut f = StreamFramer::new(64);
        f.push(&[b'A'; 65]);
        assert_eq!(f.next_message(), Err(FramingError::TooLarge { limit: 64 }));
        let mut f = StreamFramer::new(64);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 100\r\n\r\n");
        assert_eq!(f.next_message(), Err(FramingError::TooLarge { limit: 64 }));
        let mut f = StreamFramer::new(64);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999999999999999999999\r\n\r\n");
        assert!(matches!(
            f.next_message(),
            Err(FramingError::BadContentLength(_))
        ));
    }

    #[test]
    fn bare_lf_headers() {
        let mut f = StreamFramer::new(4096);
        f.push(b"OPTIONS sip:a@b SIP/2.0\nl: 2\n\nhi");
        assert_eq!(
            f.next_message().unwrap().as_deref(),
            Some(&b"OPTIONS sip:a@b SIP/2.0\nl: 2\n\nhi"[..])
        );
    }
}
