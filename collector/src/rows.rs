//! Parsing a captured message into its `sip_messages` row.

use sipvault_schemas::{CapturedMessage, SipMessageRow};
use sipvault_sip::{ParseError, SipMessage};

/// Never fails: a message that does not parse still becomes a row, with
/// `parse_error` set and the raw bytes kept. `parsed` is
/// `SipMessage::parse(&msg.raw)`, done once by the caller for every consumer.
/// The message is consumed so its raw bytes move into the row uncopied.
pub fn sip_row(msg: CapturedMessage, parsed: &Result<SipMessage, ParseError>) -> SipMessageRow {
    let mut row = SipMessageRow {
        time_ns: msg.time_ns,
        source: msg.source,
        direction: msg.direction.as_str().to_string(),
        transport: msg.transport.as_str().to_string(),
        src: msg.src.to_string(),
        dst: msg.dst.to_string(),
        method: None,
        status: None,
        reason: None,
        request_uri: None,
        call_id: None,
        cseq: None,
        cseq_method: None,
        from_uri: None,
        from_tag: None,
        to_uri: None,
        to_tag: None,
        parse_error: None,
        raw: msg.raw,
    };
    match parsed {
        Ok(m) => {
            row.method = m.method().map(str::to_string);
            row.status = m.status();
            row.reason = m.reason().map(str::to_string);
            row.request_uri = m.request_uri().map(str::to_string);
            row.call_id = m.call_id().map(str::to_string);
            if let Some((n, method)) = m.cseq() {
                row.cseq = Some(n);
                row.cseq_method = Some(method.to_string());
            }
            if let Some(from) = m.from() {
                row.from_tag = from.tag().map(str::to_string);
                row.from_uri = Some(from.uri.clone());
            }
            if let Some(to) = m.to() {
                row.to_tag = to.tag().map(str::to_string);
                row.to_uri = Some(to.uri.clone());
            }
        }
        Err(e) => row.parse_error = Some(e.to_string()),
    }
    row
}
