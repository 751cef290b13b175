//! A fixed, deterministic SIP traffic stream for benchmarks and load
//! generators: message `i` is always the same bytes, so two runs (or two
//! products fed the same stream) do the same work.
//!
//! The mix is what an enterprise front end sees most: page-mode IM
//! exchanges (MESSAGE + 200 OK) and, one exchange in five, a whole call
//! (INVITE, 100, 180, 200, ACK, BYE, 200). Every exchange has its own
//! Call-ID, so the correlators keep real state.

use std::net::SocketAddr;

/// One message of the stream: who sent it, to whom, and its bytes.
pub struct SyntheticMessage {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub raw: Vec<u8>,
}

const CALLER: ([u8; 4], u16) = ([10, 0, 0, 1], 5060);
const CALLEE: ([u8; 4], u16) = ([10, 0, 0, 2], 5060);

/// Messages per cycle: four IM exchanges (2 each) and one call (7).
const CYCLE: u64 = 4 * 2 + 7;

/// The `i`-th message of the stream.
pub fn message(i: u64) -> SyntheticMessage {
    let cycle = i / CYCLE;
    let pos = i % CYCLE;
    if pos < 8 {
        im_exchange(cycle * 4 + pos / 2, pos % 2 == 1)
    } else {
        call_message(cycle, pos - 8)
    }
}

/// `true` when the `i`-th message is an IM exchange's MESSAGE request (for
/// counting the IMs a stream of `n` messages carries).
pub fn is_im_request(i: u64) -> bool {
    let pos = i % CYCLE;
    pos < 8 && pos.is_multiple_of(2)
}

fn addrs(forward: bool) -> (SocketAddr, SocketAddr) {
    let a = SocketAddr::from(CALLER);
    let b = SocketAddr::from(CALLEE);
    if forward { (a, b) } else { (b, a) }
}

/// The message under construction: text pieces and decimal numbers appended
/// in place, so the stream costs its producer little next to the pipeline
/// it feeds (`format!` took as long as a fifth of archiving a message).
struct Text(Vec<u8>);

impl Text {
    fn with_capacity(bytes: usize) -> Self {
        Text(Vec::with_capacity(bytes))
    }

    fn s(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn n(&mut self, number: u64) -> &mut Self {
        self.0
            .extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
        self
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

fn im_exchange(n: u64, response: bool) -> SyntheticMessage {
    let mut t = Text::with_capacity(320);
    if response {
        t.s("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm")
            .n(n)
            .s("\r\nFrom: <sip:alice@example.com>;tag=a")
            .n(n)
            .s("\r\nTo: <sip:bob@example.com>;tag=b")
            .n(n)
            .s("\r\nCall-ID: im-")
            .n(n)
            .s("@10.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n");
    } else {
        t.s(
            "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm",
        )
        .n(n)
        .s("\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a")
        .n(n)
        .s("\r\nTo: <sip:bob@example.com>\r\nCall-ID: im-")
        .n(n)
        .s(
            "@10.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
                Content-Length: 34\r\n\r\nload test message number ",
        );
        // `{n:>9}`: right-aligned in nine columns.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        for _ in digits.len()..9 {
            t.s(" ");
        }
        t.s(digits);
    }
    let (src, dst) = addrs(!response);
    SyntheticMessage { src, dst, raw: t.0 }
}

/// One message of a call: what sets it apart from the others.
struct CallStep {
    start_line: &'static str,
    /// The branch's letter: `c` for the INVITE transaction, `a` for the
    /// ACK, `b` for the BYE transaction.
    via: &'static str,
    /// A request (sent by the caller, with Max-Forwards) or a response.
    request: bool,
    to_tag: bool,
    cseq: &'static str,
    contact: Option<&'static str>,
    /// SDP of this host and audio port.
    sdp: Option<(&'static str, &'static str)>,
}

const CALL_STEPS: [CallStep; 7] = [
    CallStep {
        start_line: "INVITE sip:bob@example.com SIP/2.0",
        via: "c",
        request: true,
        to_tag: false,
        cseq: "1 INVITE",
        contact: Some("<sip:alice@10.0.0.1:5060>"),
        sdp: Some(("10.0.0.1", "20000")),
    },
    CallStep {
        start_line: "SIP/2.0 100 Trying",
        via: "c",
        request: false,
        to_tag: false,
        cseq: "1 INVITE",
        contact: None,
        sdp: None,
    },
    CallStep {
        start_line: "SIP/2.0 180 Ringing",
        via: "c",
        request: false,
        to_tag: true,
        cseq: "1 INVITE",
        contact: Some("<sip:bob@10.0.0.2:5060>"),
        sdp: None,
    },
    CallStep {
        start_line: "SIP/2.0 200 OK",
        via: "c",
        request: false,
        to_tag: true,
        cseq: "1 INVITE",
        contact: Some("<sip:bob@10.0.0.2:5060>"),
        sdp: Some(("10.0.0.2", "30000")),
    },
    CallStep {
        start_line: "ACK sip:bob@10.0.0.2:5060 SIP/2.0",
        via: "a",
        request: true,
        to_tag: true,
        cseq: "1 ACK",
        contact: None,
        sdp: None,
    },
    CallStep {
        start_line: "BYE sip:bob@10.0.0.2:5060 SIP/2.0",
        via: "b",
        request: true,
        to_tag: true,
        cseq: "2 BYE",
        contact: None,
        sdp: None,
    },
    CallStep {
        start_line: "SIP/2.0 200 OK",
        via: "b",
        request: false,
        to_tag: true,
        cseq: "2 BYE",
        contact: None,
        sdp: None,
    },
];

fn call_message(n: u64, step: u64) -> SyntheticMessage {
    let last = CALL_STEPS.len() - 1;
    let step = CALL_STEPS
        .get(usize::try_from(step).unwrap_or(last))
        .unwrap_or(&CALL_STEPS[last]);
    let mut t = Text::with_capacity(640);
    t.s(step.start_line)
        .s("\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK")
        .s(step.via)
        .n(n);
    if step.request {
        t.s("\r\nMax-Forwards: 70");
    }
    t.s("\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a")
        .n(n);
    t.s("\r\nTo: <sip:bob@example.com>");
    if step.to_tag {
        t.s(";tag=b").n(n);
    }
    t.s("\r\nCall-ID: call-")
        .n(n)
        .s("@10.0.0.1\r\nCSeq: ")
        .s(step.cseq);
    if let Some(contact) = step.contact {
        t.s("\r\nContact: ").s(contact);
    }
    match step.sdp {
        Some((host, port)) => {
            let mut body = Text::with_capacity(192);
            body.s("v=0\r\no=- ")
                .n(n)
                .s(" 1 IN IP4 ")
                .s(host)
                .s("\r\ns=-\r\nc=IN IP4 ")
                .s(host)
                .s("\r\nt=0 0\r\nm=audio ")
                .s(port)
                .s(" RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n");
            t.s("\r\nContent-Type: application/sdp\r\nContent-Length: ")
                .n(body.0.len() as u64)
                .s("\r\n\r\n")
                .bytes(&body.0);
        }
        None => {
            t.s("\r\nContent-Length: 0\r\n\r\n");
        }
    }
    let (src, dst) = addrs(step.request);
    SyntheticMessage { src, dst, raw: t.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipvault_sip::SipMessage;

    #[test]
    fn every_message_of_a_cycle_parses_and_is_stable() {
        for i in 0..2 * CYCLE {
            let m = message(i);
            let parsed = SipMessage::parse(&m.raw)
                .unwrap_or_else(|e| panic!("message {i} does not parse: {e}"));
            assert_eq!(
                parsed.raw().len(),
                m.raw.len(),
                "message {i} has extra bytes"
            );
            assert_eq!(message(i).raw, m.raw, "message {i} is not deterministic");
        }
        let ims = (0..CYCLE).filter(|&i| is_im_request(i)).count();
        assert_eq!(ims, 4);
        assert_eq!(
            SipMessage::parse(&message(8).raw).unwrap().method(),
            Some("INVITE")
        );
    }

    #[test]
    fn an_im_request_is_byte_for_byte_the_stream_of_earlier_benchmarks() {
        // Exchange 4 * 2 + 3 = 11 of cycle 2: its body pads the number to
        // nine columns.
        let m = message(2 * CYCLE + 6);
        assert_eq!(
            String::from_utf8(m.raw).unwrap(),
            "MESSAGE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm11\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:alice@example.com>;tag=a11\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: im-11@10.0.0.1\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 34\r\n\r\n\
             load test message number        11"
        );
        assert_eq!((m.src, m.dst), addrs(true));
    }
}
