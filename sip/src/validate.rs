//! Semantic checks a server makes on a parsed request, and best-effort error
//! responses to bytes that did not parse.

use crate::addr::{Contact, NameAddr, SipUri, Via, is_valid_scheme};
use crate::message::SipMessage;
use crate::util::{canonical_name, is_lws};

/// Why a request is refused, as the response to send: status code, reason
/// phrase and extra header lines (e.g. `Unsupported` for 420).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    fn new(code: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            code,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// Single-value headers that must not appear more than once.
const SINGLE: &[(&str, &str)] = &[
    ("call-id", "Call-ID"),
    ("to", "To"),
    ("from", "From"),
    ("cseq", "CSeq"),
    ("max-forwards", "Max-Forwards"),
    ("content-length", "Content-Length"),
];

/// Headers every request must carry (Max-Forwards is not among them: RFC
/// 2543 requests without it are still processed).
const REQUIRED: &[(&str, &str)] = &[
    ("to", "To"),
    ("from", "From"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
    ("via", "Via"),
];

/// Semantic checks on a parsed request before acting on it (RFC 3261 8.2 and
/// 16.3, judged by the RFC 4475/5118 torture set). `supported` lists the
/// option tags this element supports; any other tag in Require or
/// Proxy-Require yields 420 with an `Unsupported` header.
///
/// Deliberately not checked here (they depend on the element's role and are
/// decided by the method handler): Max-Forwards of 0 (483 at a proxy),
/// Content-Type / Accept negotiation (415 / 406), the Date header, the branch
/// cookie, and the scheme of To/From/Contact URIs.
pub fn check_request(msg: &SipMessage, supported: &[&str]) -> Result<(), Rejection> {
    check_request_for(msg, supported, &["require", "proxy-require"])
}

/// [`check_request`] for a request this element forwards: only
/// Proxy-Require binds a proxy (RFC 3261 16.3 step 5); Require names what
/// the UAS at the end must support, so `Require: 100rel` passes through.
pub fn check_forwarded_request(msg: &SipMessage, supported: &[&str]) -> Result<(), Rejection> {
    check_request_for(msg, supported, &["proxy-require"])
}

/// `extension_headers`: the headers whose option tags must be supported.
fn check_request_for(
    msg: &SipMessage,
    supported: &[&str],
    extension_headers: &[&str],
) -> Result<(), Rejection> {
    let Some(method) = msg.method() else {
        return Err(Rejection::new(400, "Not a request"));
    };

    // Request-URI.
    let uri = msg.request_uri().unwrap_or("");
    let scheme = match uri.split_once(':') {
        Some((s, _)) if is_valid_scheme(s) => s.to_ascii_lowercase(),
        _ => return Err(Rejection::new(400, "Malformed Request-URI")),
    };
    match scheme.as_str() {
        "sip" | "sips" | "tel" => {
            let parsed =
                SipUri::parse(uri).map_err(|_| Rejection::new(400, "Malformed Request-URI"))?;
            if parsed.headers.is_some() {
                return Err(Rejection::new(400, "Headers not allowed in Request-URI"));
            }
        }
        _ => return Err(Rejection::new(416, "Unsupported URI Scheme")),
    }

    // Mandatory and single-value headers.
    let canon: Vec<String> = msg
        .headers()
        .map(|(n, _)| canonical_name(n).into_owned())
        .collect();
    let count = |name: &str| canon.iter().filter(|c| c.as_str() == name).count();
    for (name, label) in REQUIRED {
        if count(name) == 0 {
            return Err(Rejection::new(400, format!("Missing {label} header")));
        }
    }
    for (name, label) in SINGLE {
        if count(name) > 1 {
            return Err(Rejection::new(400, format!("Multiple {label} headers")));
        }
    }
    if msg
        .call_id()
        .is_none_or(|c| c.trim().is_empty() || c.contains(is_lws))
    {
        return Err(Rejection::new(400, "Malformed Call-ID header"));
    }

    // CSeq.
    let Some((seq, cseq_method)) = msg.cseq() else {
        return Err(Rejection::new(400, "Malformed CSeq header"));
    };
    if seq > 0x7fff_ffff {
        return Err(Rejection::new(400, "CSeq number too large"));
    }
    if cseq_method != method {
        return Err(Rejection::new(
            400,
            "CSeq method does not match request method",
        ));
    }

    // Address headers.
    for (name, label) in [("from", "From"), ("to", "To")] {
        if msg
            .header(name)
            .map(NameAddr::parse)
            .is_none_or(|r| r.is_err())
        {
            return Err(Rejection::new(400, format!("Malformed {label} header")));
        }
    }
    for v in msg.header_all("via") {
        if Via::parse_list(v).is_err() {
            return Err(Rejection::new(400, "Malformed Via header"));
        }
    }
    for v in msg.header_all("contact") {
        if Contact::parse_list(v).is_err() {
            return Err(Rejection::new(400, "Malformed Contact header"));
        }
    }
    if let Some(mf) = msg.header("max-forwards") {
        let mf = mf.trim();
        if mf.is_empty() || !mf.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::new(400, "Malformed Max-Forwards header"));
        }
    }

    // Extensions. CANCEL carries none and ACK cannot be answered.
    if method != "ACK" && method != "CANCEL" {
        let mut unsupported: Vec<&str> = Vec::new();
        for name in extension_headers {
            for tag in msg.header_values(name) {
                let known = supported.iter().any(|s| s.eq_ignore_ascii_case(tag));
                if !known && !unsupported.contains(&tag) {
                    unsupported.push(tag);
                }
            }
        }
        if !unsupported.is_empty() {
            let mut r = Rejection::new(420, "Bad Extension");
            r.headers
                .push(("Unsupported".to_string(), unsupported.join(", ")));
            return Err(r);
        }
    }
    Ok(())
}

/// Replaces characters that would break a header line.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\r' || c == '\n' || c == '\0' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Best-effort error response to bytes that did not parse: scans header
/// lines leniently and copies Via (all), From, To, Call-ID and CSeq, adding
/// a To tag (derived from the request) to a final response whose To has
/// none. `None` if the input looks like a response or has no Via.
pub fn error_response_for_unparsed(raw: &[u8], code: u16, reason: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_start_matches(['\r', '\n']);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next()?;
    if first
        .get(..4)
        .is_none_or(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        return None;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with(is_lws) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((canonical_name(n.trim()).into_owned(), v.trim().to_string()));
        }
    }
    let vias: Vec<&str> = headers
        .iter()
        .filter(|(n, v)| n == "via" && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    if vias.is_empty() {
        return None;
    }
    let first_of = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut out = format!("SIP/2.0 {code} {}\r\n", sanitize(reason));
    for v in vias {
        out.push_str(&format!("Via: {}\r\n", sanitize(v)));
    }
    for (name, label) in [
        ("from", "From"),
        ("to", "To"),
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
    ] {
        if let Some(v) = first_of(name) {
            let mut v = sanitize(v);
            // RFC 3261 8.2.6.2: a final response carries a To tag. It is
            // derived from the request so that retransmissions get the same.
            if name == "to" && code >= 200 && !v.to_ascii_lowercase().contains(";tag=") {
                v.push_str(";tag=");
                v.push_str(&stateless_tag(&headers));
            }
            out.push_str(&format!("{label}: {v}\r\n"));
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// A To tag computed from the transaction's headers (stable across
/// retransmissions of the same request).
fn stateless_tag(headers: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (n, v) in headers {
        if matches!(n.as_str(), "via" | "from" | "call-id" | "cseq") {
            h.update(n.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
    }
    hex::encode(h.finalize().get(..6).unwrap_or(&[]))
}

/// The usual reason phrase for a status code.
#[allow(clippy::match_overlapping_arm)]
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity-Info",
        437 => "Unsupported Certificate",
        438 => "Invalid Identity Header",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        469 => "Bad Info Package",
        470 => "Consent Needed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        555 => "Push Notification Service Not Supported",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        100..=199 => "Trying",
        200..=299 => "OK",
        300..=399 => "Redirected",
        400..=499 => "Client Error",
        500..=599 => "Server Error",
        600..=699 => "Global Failure",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> SipMessage {
        let s = format!(
            "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n{extra}\r\n"
        );
        SipMessage::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn accepts_minimal_request() {
        assert_eq!(check_request(&req(""), &[]), Ok(()));
    }

    #[test]
    fn rejects_extensions_with_unsupported() {
        let r = check_request(
            &req("Require: 100rel, foo\r\nProxy-Require: bar\r\n"),
            &["100rel"],
        )
        .unwrap_err();
        assert_eq!(r.code, 420);
        assert_eq!(
            r.headers,
            vec![("Unsupported".to_string(), "foo, bar".to_string())]
        );
        assert_eq!(
            check_request(&req("Require: 100rel\r\n"), &["100rel"]),
            Ok(())
        );
    }

    #[test]
    fn a_forwarded_request_is_bound_by_proxy_require_only() {
        assert_eq!(
            check_forwarded_request(&req("Require: 100rel, timer\r\n"), &[]),
            Ok(()),
            "Require is for the UAS at the end"
        );
        let r = check_forwarded_request(&req("Require: foo\r\nProxy-Require: bar\r\n"), &[])
            .unwrap_err();
        assert_eq!(
            r.headers,
            vec![("Unsupported".to_string(), "bar".to_string())]
        );
    }

    #[test]
    fn rejects_duplicates_and_bad_values() {
        assert_eq!(check_request(&req("i: c2\r\n"), &[]).unwrap_err().code, 400);
        assert_eq!(
            check_request(&req("Max-Forwards: x\r\n"), &[])
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            check_request(&req("Contact: <sip:a@b>;;\r\n"), &[])
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            check_request(&req("Content-Length: 0\r\nl: 0\r\n"), &[])
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn error_response_copies_transaction_headers() {
        let raw =
            b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nv: SIP/2.0/UDP y\r\n\
f: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\ni: abc\r\nCSeq: 1 INVITE\r\nContent-Length: -5\r\n\r\n";
        let out = error_response_for_unparsed(raw, 400, "Bad Request").unwrap();
        let m = SipMessage::parse(&out).unwrap();
        assert_eq!(m.status(), Some(400));
        assert_eq!(m.vias().len(), 2);
        assert_eq!(m.call_id(), Some("abc"));
        assert_eq!(m.cseq(), Some((1, "INVITE")));
        assert_eq!(m.from().unwrap().tag(), Some("1"));
        let tag = m.to().unwrap().tag().map(str::to_string);
        assert_eq!(tag.as_ref().map(String::len), Some(12));
        let again =
            SipMessage::parse(&error_response_for_unparsed(raw, 400, "Bad Request").unwrap())
                .unwrap();
        assert_eq!(
            again.to().unwrap().tag().map(str::to_string),
            tag,
            "same request, same tag"
        );
        assert!(
            error_response_for_unparsed(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", 400, "x").is_none()
        );
        assert!(
            error_response_for_unparsed(b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\n\r\n", 400, "x")
                .is_none()
        );
        assert!(error_response_for_unparsed(b"", 400, "x").is_none());
    }

    #[test]
    fn reasons() {
        assert_eq!(default_reason(416), "Unsupported URI Scheme");
        assert_eq!(default_reason(499), "Client Error");
        assert_eq!(default_reason(42), "Unknown");
    }
}
