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

fn im_exchange(n: u64, response: bool) -> SyntheticMessage {
    let raw = if response {
        format!(
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm{n}\r\n\
             From: <sip:alice@example.com>;tag=a{n}\r\n\
             To: <sip:bob@example.com>;tag=b{n}\r\n\
             Call-ID: im-{n}@10.0.0.1\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Length: 0\r\n\r\n"
        )
    } else {
        format!(
            "MESSAGE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm{n}\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:alice@example.com>;tag=a{n}\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: im-{n}@10.0.0.1\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 34\r\n\r\n\
             load test message number {n:>9}"
        )
    };
    let (src, dst) = addrs(!response);
    SyntheticMessage {
        src,
        dst,
        raw: raw.into_bytes(),
    }
}

fn call_message(n: u64, step: u64) -> SyntheticMessage {
    let via = format!("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKc{n}");
    let from = format!("From: \"Alice\" <sip:alice@example.com>;tag=a{n}");
    let to_tag = format!("To: <sip:bob@example.com>;tag=b{n}");
    let call_id = format!("Call-ID: call-{n}@10.0.0.1");
    let sdp = |host: &str, port: u16| {
        format!(
            "v=0\r\no=- {n} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
    };
    let (raw, forward) = match step {
        0 => {
            let body = sdp("10.0.0.1", 20000);
            (
                format!(
                    "INVITE sip:bob@example.com SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n{from}\r\n\
                     To: <sip:bob@example.com>\r\n{call_id}\r\nCSeq: 1 INVITE\r\n\
                     Contact: <sip:alice@10.0.0.1:5060>\r\nContent-Type: application/sdp\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                true,
            )
        }
        1 => (
            format!(
                "SIP/2.0 100 Trying\r\n{via}\r\n{from}\r\nTo: <sip:bob@example.com>\r\n\
                 {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            ),
            false,
        ),
        2 => (
            format!(
                "SIP/2.0 180 Ringing\r\n{via}\r\n{from}\r\n{to_tag}\r\n{call_id}\r\n\
                 CSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.2:5060>\r\nContent-Length: 0\r\n\r\n"
            ),
            false,
        ),
        3 => {
            let body = sdp("10.0.0.2", 30000);
            (
                format!(
                    "SIP/2.0 200 OK\r\n{via}\r\n{from}\r\n{to_tag}\r\n{call_id}\r\n\
                     CSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.2:5060>\r\n\
                     Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                false,
            )
        }
        4 => (
            format!(
                "ACK sip:bob@10.0.0.2:5060 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa{n}\r\nMax-Forwards: 70\r\n\
                 {from}\r\n{to_tag}\r\n{call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ),
            true,
        ),
        5 => (
            format!(
                "BYE sip:bob@10.0.0.2:5060 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb{n}\r\nMax-Forwards: 70\r\n\
                 {from}\r\n{to_tag}\r\n{call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            ),
            true,
        ),
        _ => (
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb{n}\r\n\
                 {from}\r\n{to_tag}\r\n{call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            ),
            false,
        ),
    };
    let (src, dst) = addrs(forward);
    SyntheticMessage {
        src,
        dst,
        raw: raw.into_bytes(),
    }
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
}
