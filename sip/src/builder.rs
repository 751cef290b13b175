//! Building outgoing messages.

use crate::addr::NameAddr;
use crate::message::SipMessage;
use crate::util::{same_header, split_top};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// Builds a SIP message: start line, ordered header lines, body. `build()`
/// writes CRLF line ends and a correct Content-Length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBuilder {
    start: Start,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Replaces characters that would end a header line early.
fn clean(s: &str) -> String {
    if s.contains(['\r', '\n']) {
        s.chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect()
    } else {
        s.to_string()
    }
}

impl MessageBuilder {
    pub fn request(method: &str, uri: &str) -> Self {
        MessageBuilder {
            start: Start::Request {
                method: method.to_string(),
                uri: uri.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(code: u16, reason: &str) -> Self {
        MessageBuilder {
            start: Start::Response {
                code,
                reason: reason.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Same start line, headers (names as received) and body as `msg`.
    pub fn from_message(msg: &SipMessage) -> Self {
        let start = match (msg.method(), msg.request_uri(), msg.status()) {
            (Some(m), Some(u), _) => Start::Request {
                method: m.to_string(),
                uri: u.to_string(),
            },
            (_, _, code) => Start::Response {
                code: code.unwrap_or(500),
                reason: msg.reason().unwrap_or("").to_string(),
            },
        };
        MessageBuilder {
            start,
            headers: msg
                .headers()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: msg.body().to_vec(),
        }
    }

    /// Response to `req`: copies every Via line, then From, To, Call-ID and
    /// CSeq (first of each), as received.
    pub fn response_to(req: &SipMessage, code: u16, reason: &str) -> Self {
        let mut b = MessageBuilder::response(code, reason);
        for v in req.header_all("via") {
            b.header("Via", v);
        }
        for (name, label) in [
            ("from", "From"),
            ("to", "To"),
            ("call-id", "Call-ID"),
            ("cseq", "CSeq"),
        ] {
            if let Some(v) = req.header(name) {
                b.header(label, v);
            }
        }
        b
    }

    /// Replaces the Request-URI (no effect on a response).
    pub fn set_request_uri(&mut self, new_uri: &str) -> &mut Self {
        if let Start::Request { uri, .. } = &mut self.start {
            *uri = new_uri.to_string();
        }
        self
    }

    /// Appends a header line.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Inserts a header line before all others.
    pub fn prepend_header(&mut self, name: &str, value: &str) -> &mut Self {
        self.headers
            .insert(0, (name.to_string(), value.to_string()));
        self
    }

    /// Replaces every line of that header (long or compact name) with one
    /// line, at the position of the first, or appended if there was none.
    pub fn set_header(&mut self, name: &str, value: &str) -> &mut Self {
        match self.headers.iter().position(|(n, _)| same_header(n, name)) {
            Some(i) => {
                if let Some(slot) = self.headers.get_mut(i) {
                    *slot = (name.to_string(), value.to_string());
                }
                let mut idx = 0usize;
                self.headers.retain(|(n, _)| {
                    let keep = idx == i || !same_header(n, name);
                    idx += 1;
                    keep
                });
            }
            None => self.headers.push((name.to_string(), value.to_string())),
        }
        self
    }

    /// Removes every line of that header (long or compact name).
    pub fn remove_header(&mut self, name: &str) -> &mut Self {
        self.headers.retain(|(n, _)| !same_header(n, name));
        self
    }

    /// Removes the first comma-separated value of the first line of that
    /// header and returns it; the line is dropped when nothing is left.
    pub fn pop_first_value(&mut self, name: &str) -> Option<String> {
        let i = self
            .headers
            .iter()
            .position(|(n, _)| same_header(n, name))?;
        let value = self.headers.get(i)?.1.clone();
        let pieces = split_top(&value, ',').unwrap_or_else(|| vec![value.as_str()]);
        let first = pieces
            .first()
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        let rest = pieces.get(1..).unwrap_or(&[]).join(",");
        let rest = rest.trim();
        if rest.is_empty() {
            self.headers.remove(i);
        } else if let Some(slot) = self.headers.get_mut(i) {
            slot.1 = rest.to_string();
        }
        Some(first)
    }

    /// Appends `;tag=<tag>` to the To header unless it already has a tag.
    pub fn add_to_tag(&mut self, tag: &str) -> &mut Self {
        if let Some((_, v)) = self.headers.iter_mut().find(|(n, _)| same_header(n, "to")) {
            let has_tag = match NameAddr::parse(v) {
                Ok(a) => a.tag().is_some(),
                Err(_) => v.to_ascii_lowercase().contains(";tag="),
            };
            if !has_tag {
                v.push_str(";tag=");
                v.push_str(tag);
            }
        }
        self
    }

    /// Sets the body and its Content-Type (an empty type removes the header).
    pub fn body(&mut self, content_type: &str, body: &[u8]) -> &mut Self {
        if content_type.is_empty() {
            self.remove_header("content-type");
        } else {
            self.set_header("Content-Type", content_type);
        }
        self.body = body.to_vec();
        self
    }

    /// First value of a header set so far.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// All header lines set so far.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The wire bytes: CRLF line ends, Content-Length written (at the place of
    /// an existing one, else last) with the real body length.
    pub fn build(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256 + self.headers.len() * 48);
        match &self.start {
            Start::Request { method, uri } => {
                out.push_str(&format!("{} {} SIP/2.0\r\n", clean(method), clean(uri)));
            }
            Start::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code:03} {}\r\n", clean(reason)));
            }
        }
        let cl_line = format!("Content-Length: {}\r\n", self.body.len());
        let mut cl_written = false;
        for (n, v) in &self.headers {
            if same_header(n, "content-length") {
                if !cl_written {
                    out.push_str(&cl_line);
                    cl_written = true;
                }
                continue;
            }
            out.push_str(&format!("{}: {}\r\n", clean(n), clean(v)));
        }
        if !cl_written {
            out.push_str(&cl_line);
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKa, SIP/2.0/UDP p2.example.com;branch=z9hG4bKb\r\n\
v: SIP/2.0/UDP ua.example.com;branch=z9hG4bKc\r\n\
Max-Forwards: 70\r\n\
f: <sip:alice@example.com>;tag=1\r\n\
t: Bob <sip:bob@example.com>\r\n\
i: abc@h\r\n\
CSeq: 1 INVITE\r\n\
Record-Route: <sip:p1.example.com;lr>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 3\r\n\r\nv=0";

    #[test]
    fn response_to_copies_five_headers() {
        let req = SipMessage::parse(INVITE).unwrap();
        let mut b = MessageBuilder::response_to(&req, 180, "Ringing");
        b.add_to_tag("xyz");
        let resp = SipMessage::parse(&b.build()).unwrap();
        assert_eq!(resp.status(), Some(180));
        assert_eq!(resp.vias().len(), 3);
        assert_eq!(resp.header_all("via").len(), 2);
        assert_eq!(resp.to().unwrap().tag(), Some("xyz"));
        assert_eq!(resp.from().unwrap().tag(), Some("1"));
        assert_eq!(resp.call_id(), Some("abc@h"));
        assert_eq!(resp.cseq(), Some((1, "INVITE")));
        assert_eq!(resp.header("record-route"), None);
        assert_eq!(resp.header("content-length"), Some("0"));
        // A second add keeps the existing tag.
        b.add_to_tag("other");
        assert_eq!(
            SipMessage::parse(&b.build()).unwrap().to().unwrap().tag(),
            Some("xyz")
        );
    }

    #[test]
    fn from_message_roundtrip_and_edit() {
        let req = SipMessage::parse(INVITE).unwrap();
        let mut b = MessageBuilder::from_message(&req);
        b.set_request_uri("sip:bob@192.0.2.7")
            .prepend_header("Via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
            .set_header("Max-Forwards", "69")
            .remove_header("record-route");
        let out = SipMessage::parse(&b.build()).unwrap();
        assert_eq!(out.request_uri(), Some("sip:bob@192.0.2.7"));
        assert_eq!(out.vias().len(), 4);
        assert_eq!(out.vias()[0].host, "me.example.com");
        assert_eq!(out.max_forwards(), Some(69));
        assert_eq!(out.header("record-route"), None);
        assert_eq!(out.body(), b"v=0");
        assert_eq!(out.headers().next().unwrap().0, "Via");
    }

    #[test]
    fn pop_first_value_for_via() {
        let req = SipMessage::parse(INVITE).unwrap();
        let mut b = MessageBuilder::from_message(&req);
        assert_eq!(
            b.pop_first_value("via").as_deref(),
            Some("SIP/2.0/UDP p1.example.com;branch=z9hG4bKa")
        );
        assert_eq!(
            b.get_header("via"),
            Some("SIP/2.0/UDP p2.example.com;branch=z9hG4bKb")
        );
        assert_eq!(
            b.pop_first_value("Via").as_deref(),
            Some("SIP/2.0/UDP p2.example.com;branch=z9hG4bKb")
        );
        assert_eq!(
            b.get_header("via"),
            Some("SIP/2.0/UDP ua.example.com;branch=z9hG4bKc")
        );
        assert_eq!(
            b.pop_first_value("v").as_deref(),
            Some("SIP/2.0/UDP ua.example.com;branch=z9hG4bKc")
        );
        assert_eq!(b.pop_first_value("via"), None);
    }

    #[test]
    fn set_header_replaces_compact_and_long() {
        let mut b = MessageBuilder::request("MESSAGE", "sip:a@b");
        b.header("To", "<sip:a@b>")
            .header("t", "<sip:c@d>")
            .header("Call-ID", "x");
        b.set_header("to", "<sip:e@f>");
        assert_eq!(
            b.headers(),
            &[
                ("to".to_string(), "<sip:e@f>".to_string()),
                ("Call-ID".to_string(), "x".to_string())
            ]
        );
        b.set_header("CSeq", "1 MESSAGE");
        assert_eq!(b.headers().last().unwrap().0, "CSeq");
    }

    #[test]
    fn body_and_content_length() {
        let mut b = MessageBuilder::request("MESSAGE", "sip:a@b");
        b.header("Content-Length", "999")
            .header("CSeq", "1 MESSAGE")
            .body("text/plain", b"hello");
        let raw = b.build();
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.starts_with("MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\r\nhello"), "{text}");
        let m = SipMessage::parse(&raw).unwrap();
        assert_eq!(m.body(), b"hello");
        let r = MessageBuilder::response(200, "OK").build();
        assert_eq!(r, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn header_injection_is_neutralised() {
        let mut b = MessageBuilder::response(200, "OK\r\nX: y");
        b.header("Subject", "a\r\nEvil: 1");
        let m = SipMessage::parse(&b.build()).unwrap();
        assert_eq!(m.header("evil"), None);
        assert_eq!(m.header("x"), None);
    }
}
