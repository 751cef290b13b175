//! Call correlation from literal SIP messages, with a capture clock in
//! nanoseconds.

use super::*;
use sipvault_schemas::{Direction, Transport};

const MS: i64 = 1_000_000;
const SEC: i64 = 1_000 * MS;
/// Capture times are offsets from here (2023-11-14).
const T0: i64 = 1_700_000_000 * SEC;

const ALICE: &str = "sip:alice@example.com";
const BOB: &str = "sip:bob@example.com";

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const ANSWER: &str = "v=0\r\no=bob 2 2 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8 101 13\r\na=rtpmap:101 telephone-event/8000\r\n";

fn message(
    start_line: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: &str,
    extra: &str,
    body: &str,
) -> String {
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{start_line}\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{call_id}-{cseq_branch}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{extra}{content_type}Content-Length: {len}\r\n\r\n{body}",
        // A CANCEL carries the branch of the INVITE it cancels (RFC 3261 9.1).
        cseq_branch = cseq.replace(' ', "").replace("CANCEL", "INVITE"),
        len = body.len()
    )
}

/// One call from Alice (tag `a1`) to Bob; Bob's dialogs are named by their tags.
struct Leg {
    call_id: &'static str,
}

impl Leg {
    fn alice() -> String {
        format!("<{ALICE}>;tag=a1")
    }

    fn bob(tag: Option<&str>) -> String {
        match tag {
            Some(t) => format!("<{BOB}>;tag={t}"),
            None => format!("<{BOB}>"),
        }
    }

    fn invite(&self, cseq: u32, extra: &str, sdp: &str) -> String {
        message(
            &format!("INVITE {BOB} SIP/2.0"),
            &Self::alice(),
            &Self::bob(None),
            self.call_id,
            &format!("{cseq} INVITE"),
            extra,
            sdp,
        )
    }

    fn cancel(&self, cseq: u32) -> String {
        message(
            &format!("CANCEL {BOB} SIP/2.0"),
            &Self::alice(),
            &Self::bob(None),
            self.call_id,
            &format!("{cseq} CANCEL"),
            "",
            "",
        )
    }

    /// Response to a request Alice sent.
    fn response(
        &self,
        code: u16,
        cseq: u32,
        method: &str,
        bob_tag: Option<&str>,
        sdp: &str,
    ) -> String {
        message(
            &format!("SIP/2.0 {code} {}", sipvault_sip::default_reason(code)),
            &Self::alice(),
            &Self::bob(bob_tag),
            self.call_id,
            &format!("{cseq} {method}"),
            "",
            sdp,
        )
    }

    /// A request inside the dialog with Bob's `bob_tag`, sent by Alice or Bob.
    fn in_dialog(
        &self,
        method: &str,
        by_alice: bool,
        cseq: u32,
        bob_tag: &str,
        extra: &str,
        sdp: &str,
    ) -> String {
        let (target, from, to) = if by_alice {
            (BOB, Self::alice(), Self::bob(Some(bob_tag)))
        } else {
            (
                ALICE,
                format!("<{BOB}>;tag={bob_tag}"),
                format!("<{ALICE}>;tag=a1"),
            )
        };
        message(
            &format!("{method} {target} SIP/2.0"),
            &from,
            &to,
            self.call_id,
            &format!("{cseq} {method}"),
            extra,
            sdp,
        )
    }

    /// Response to a request Bob sent inside the dialog.
    fn response_to_bob(&self, code: u16, cseq: u32, method: &str, bob_tag: &str) -> String {
        message(
            &format!("SIP/2.0 {code} {}", sipvault_sip::default_reason(code)),
            &format!("<{BOB}>;tag={bob_tag}"),
            &format!("<{ALICE}>;tag=a1"),
            self.call_id,
            &format!("{cseq} {method}"),
            "",
            "",
        )
    }

    /// INVITE / 100 / 180 / 200 (SDP) / ACK, answered 2 s after the INVITE at `start` ms.
    fn answered(&self, start: i64) -> Vec<(i64, String)> {
        vec![
            (start, self.invite(1, "", OFFER)),
            (start + 10, self.response(100, 1, "INVITE", None, "")),
            (start + 100, self.response(180, 1, "INVITE", Some("b1"), "")),
            (
                start + 2_000,
                self.response(200, 1, "INVITE", Some("b1"), ANSWER),
            ),
            (start + 2_010, self.in_dialog("ACK", true, 1, "b1", "", "")),
        ]
    }
}

struct Harness {
    correlator: CallCorrelator,
    /// Rows returned by `observe`.
    observed: Vec<CallRow>,
}

impl Harness {
    fn new() -> Self {
        Self::with(CallConfig::default())
    }

    fn with(config: CallConfig) -> Self {
        Harness {
            correlator: CallCorrelator::new(config),
            observed: Vec::new(),
        }
    }

    /// Feeds `raw` captured at `at_ms` after T0.
    fn feed(&mut self, at_ms: i64, raw: &str) {
        let captured = CapturedMessage {
            time_ns: T0 + at_ms * MS,
            source: "tap".into(),
            direction: Direction::In,
            transport: Transport::Udp,
            src: "192.0.2.10:5060".parse().unwrap(),
            dst: "192.0.2.1:5060".parse().unwrap(),
            raw: raw.as_bytes().to_vec(),
        };
        let sip = SipMessage::parse(raw.as_bytes())
            .unwrap_or_else(|e| panic!("test message does not parse: {e}\n{raw}"));
        self.observed
            .extend(self.correlator.observe(&captured, &sip));
    }

    fn feed_all(&mut self, messages: &[(i64, String)]) {
        for (at, raw) in messages {
            self.feed(*at, raw);
        }
    }

    fn expire_at(&mut self, at_ms: i64) -> Vec<CallRow> {
        self.correlator.expire(T0 + at_ms * MS)
    }

    /// Rows from `observe` plus everything `drain` closes.
    fn finish(mut self) -> Vec<CallRow> {
        let mut rows = std::mem::take(&mut self.observed);
        rows.extend(self.correlator.drain());
        rows
    }

    fn single(self) -> CallRow {
        let mut rows = self.finish();
        assert_eq!(rows.len(), 1, "exactly one call expected: {rows:#?}");
        rows.remove(0)
    }
}

#[test]
fn answered_call_with_offer_and_answer() {
    let leg = Leg {
        call_id: "c-answered",
    };
    let mut h = Harness::new();
    h.feed_all(&leg.answered(0));
    h.feed(62_000, &leg.in_dialog("BYE", true, 2, "b1", "", ""));
    assert_eq!(
        h.correlator.open_calls(),
        0,
        "an answered call is final at its BYE: emitted then, not kept lingering"
    );
    h.feed(62_010, &leg.response(200, 2, "BYE", Some("b1"), ""));
    h.feed(62_020, &leg.in_dialog("BYE", true, 2, "b1", "", ""));
    assert!(
        h.expire_at(62_000 + 32_000).is_empty(),
        "the 200 to the BYE and a relay copy of it neither reopen nor repeat the call"
    );
    assert_eq!(h.correlator.open_calls(), 0);
    let rows = std::mem::take(&mut h.observed);
    assert_eq!(
        rows,
        vec![CallRow {
            time_ns: T0,
            call_id: "c-answered".into(),
            source: "tap".into(),
            caller: ALICE.into(),
            callee: BOB.into(),
            ring_ns: Some(T0 + 100 * MS),
            answer_ns: Some(T0 + 2_000 * MS),
            end_ns: Some(T0 + 62_000 * MS),
            setup_ms: Some(100),
            duration_ms: Some(60_000),
            disposition: "answered".into(),
            final_code: Some(200),
            reason: Some("OK".into()),
            ended_by: Some("caller".into()),
            codecs: vec!["PCMA/8000".into()],
            caller_media: Some("192.0.2.10:4000".into()),
            callee_media: Some("192.0.2.20:5000".into()),
            legs: 1,
            reinvites: 0,
            transferred_from: None,
            caller_display: None,
            callee_display: None,
        }]
    );
}

#[test]
fn bye_from_callee_is_ended_by_callee() {
    let leg = Leg {
        call_id: "c-callee-bye",
    };
    let mut h = Harness::new();
    h.feed_all(&leg.answered(0));
    h.feed(5_000, &leg.in_dialog("BYE", false, 1, "b1", "", ""));
    h.feed(5_001, &leg.response_to_bob(200, 1, "BYE", "b1"));
    let call = h.single();
    assert_eq!(call.disposition, "answered");
    assert_eq!(call.ended_by.as_deref(), Some("callee"));
    assert_eq!(call.duration_ms, Some(3_000));
}

#[test]
fn busy_here_ends_the_call_at_the_response() {
    let leg = Leg { call_id: "c-busy" };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(5, &leg.response(100, 1, "INVITE", None, ""));
    h.feed(40, &leg.response(486, 1, "INVITE", Some("b1"), ""));
    h.feed(41, &leg.in_dialog("ACK", true, 1, "b1", "", ""));
    let call = h.single();
    assert_eq!(call.disposition, "busy");
    assert_eq!(call.ended_by.as_deref(), Some("callee"));
    assert_eq!(call.final_code, Some(486));
    assert_eq!(call.reason.as_deref(), Some("Busy Here"));
    assert_eq!(call.end_ns, Some(T0 + 40 * MS));
    assert_eq!(call.setup_ms, None, "neither ring nor answer");
    assert_eq!(call.duration_ms, None);
    assert_eq!(call.legs, 1, "the 486 carried a tag");
    assert_eq!(
        call.codecs,
        ["PCMU/8000", "PCMA/8000"],
        "offer's codecs without an answer"
    );
    assert_eq!(call.callee_media, None);
}

#[test]
fn cancel_then_487_is_cancelled_by_the_caller() {
    let leg = Leg {
        call_id: "c-cancel",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(100, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    h.feed(3_000, &leg.cancel(1));
    h.feed(3_001, &leg.response(200, 1, "CANCEL", Some("b1"), ""));
    h.feed(3_002, &leg.response(487, 1, "INVITE", Some("b1"), ""));
    h.feed(3_003, &leg.in_dialog("ACK", true, 1, "b1", "", ""));
    let call = h.single();
    assert_eq!(call.disposition, "cancelled");
    assert_eq!(call.ended_by.as_deref(), Some("caller"));
    assert_eq!(call.final_code, Some(487));
    assert_eq!(call.end_ns, Some(T0 + 3_000 * MS), "ends at the CANCEL");
    assert_eq!(call.ring_ns, Some(T0 + 100 * MS));
    assert_eq!(call.setup_ms, Some(100));
    assert_eq!(call.answer_ns, None);
}

#[test]
fn a_proxy_giving_up_on_a_ringing_callee_is_no_answer_not_a_cancel() {
    let leg = Leg {
        call_id: "c-timer-c",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(100, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    // The proxy's own CANCEL downstream: its branch, not the caller's.
    let proxy_cancel = leg.cancel(1).replace(
        "branch=z9hG4bK-c-timer-c-1INVITE",
        "branch=z9hG4bK-sv-proxy1",
    );
    h.feed(180_000, &proxy_cancel);
    h.feed(180_000, &leg.response(408, 1, "INVITE", None, ""));
    h.feed(180_001, &leg.response(487, 1, "INVITE", Some("b1"), ""));
    let call = h.single();
    assert_eq!(call.disposition, "no-answer");
    assert_eq!(call.ended_by.as_deref(), Some("server"));
    assert_eq!(call.final_code, Some(408));
}

#[test]
fn cancel_without_final_response_closes_as_cancelled_after_linger() {
    let leg = Leg {
        call_id: "c-cancel-lost",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(100, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    h.feed(1_000, &leg.cancel(1));
    assert!(h.expire_at(1_000 + 31_999).is_empty());
    let rows = h.expire_at(1_000 + 32_000);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].disposition, "cancelled");
    assert_eq!(rows[0].final_code, None);
    assert_eq!(rows[0].end_ns, Some(T0 + 1_000 * MS));
}

#[test]
fn answer_that_races_the_cancel_wins() {
    let leg = Leg { call_id: "c-race" };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(100, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    h.feed(3_000, &leg.cancel(1));
    h.feed(3_001, &leg.response(200, 1, "INVITE", Some("b1"), ANSWER));
    h.feed(3_002, &leg.response(200, 1, "CANCEL", Some("b1"), ""));
    h.feed(3_003, &leg.in_dialog("ACK", true, 1, "b1", "", ""));
    h.feed(3_004, &leg.in_dialog("BYE", true, 2, "b1", "", ""));
    let call = h.single();
    assert_eq!(call.disposition, "answered");
    assert_eq!(call.final_code, Some(200));
    assert_eq!(call.ended_by.as_deref(), Some("caller"));
    assert_eq!(call.duration_ms, Some(3));
}

#[test]
fn ringing_call_without_final_response_is_no_answer_after_ring_timeout() {
    let config = CallConfig::default();
    let ring_timeout_ms = config.ring_timeout_ns / MS;
    let leg = Leg {
        call_id: "c-ringing",
    };
    let mut h = Harness::with(config.clone());
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(100, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    assert!(h.expire_at(100 + ring_timeout_ms - 1).is_empty());
    let rows = h.expire_at(100 + ring_timeout_ms);
    assert_eq!(rows.len(), 1);
    let call = &rows[0];
    assert_eq!(call.disposition, "no-answer");
    assert_eq!(call.end_ns, None, "no end was observed");
    assert_eq!(call.ended_by, None);
    assert_eq!(call.final_code, None);
    assert_eq!(call.legs, 1);

    // Nothing but 100 Trying: the callee was never reached.
    let leg = Leg {
        call_id: "c-trying",
    };
    let mut h = Harness::with(config);
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(10, &leg.response(100, 1, "INVITE", None, ""));
    let rows = h.expire_at(10 + ring_timeout_ms);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].disposition, "timeout");
    assert_eq!(rows[0].legs, 0, "no tagged response");
}

#[test]
fn auth_challenge_then_answer_is_one_answered_call() {
    let leg = Leg { call_id: "c-auth" };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(5, &leg.response(401, 1, "INVITE", Some("auth"), ""));
    h.feed(6, &leg.in_dialog("ACK", true, 1, "auth", "", ""));
    h.feed(
        20,
        &leg.invite(2, "Authorization: Digest username=\"alice\"\r\n", OFFER),
    );
    h.feed(25, &leg.response(100, 2, "INVITE", None, ""));
    h.feed(30, &leg.response(180, 2, "INVITE", Some("b1"), ""));
    h.feed(1_000, &leg.response(200, 2, "INVITE", Some("b1"), ANSWER));
    h.feed(1_001, &leg.in_dialog("ACK", true, 2, "b1", "", ""));
    // A late copy of the challenge must not end the answered call.
    h.feed(1_002, &leg.response(401, 1, "INVITE", Some("auth"), ""));
    h.feed(4_000, &leg.in_dialog("BYE", true, 3, "b1", "", ""));
    let call = h.single();
    assert_eq!(call.time_ns, T0, "start is the first INVITE");
    assert_eq!(call.disposition, "answered");
    assert_eq!(call.final_code, Some(200));
    assert_eq!(call.setup_ms, Some(30));
    assert_eq!(call.duration_ms, Some(3_000));
    assert_eq!(call.legs, 1, "the 401's tag is not a dialog");
}

#[test]
fn challenge_without_retry_is_a_failed_call() {
    let leg = Leg {
        call_id: "c-auth-given-up",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(5, &leg.response(407, 1, "INVITE", Some("proxy"), ""));
    let call = h.single();
    assert_eq!(call.disposition, "failed");
    assert_eq!(call.ended_by.as_deref(), Some("server"));
    assert_eq!(call.final_code, Some(407));
}

#[test]
fn forked_call_counts_legs_and_ignores_the_other_forks_487() {
    let leg = Leg {
        call_id: "c-forked",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(50, &leg.response(180, 1, "INVITE", Some("desk"), ""));
    h.feed(60, &leg.response(180, 1, "INVITE", Some("mobile"), ""));
    h.feed(
        2_000,
        &leg.response(200, 1, "INVITE", Some("mobile"), ANSWER),
    );
    h.feed(2_005, &leg.response(487, 1, "INVITE", Some("desk"), ""));
    h.feed(2_010, &leg.in_dialog("ACK", true, 1, "mobile", "", ""));
    h.feed(9_000, &leg.in_dialog("BYE", true, 2, "mobile", "", ""));
    let call = h.single();
    assert_eq!(call.legs, 2);
    assert_eq!(call.ring_ns, Some(T0 + 50 * MS), "first ring of any fork");
    assert_eq!(call.disposition, "answered");
    assert_eq!(call.final_code, Some(200));
    assert_eq!(call.duration_ms, Some(7_000));
}

#[test]
fn reinvites_and_updates_count_once_per_request() {
    let leg = Leg {
        call_id: "c-reinvite",
    };
    let mut h = Harness::new();
    h.feed_all(&leg.answered(0));
    let hold = leg.in_dialog("INVITE", true, 2, "b1", "", OFFER);
    h.feed(10_000, &hold);
    h.feed(10_500, &hold); // retransmission
    h.feed(10_600, &leg.response(200, 2, "INVITE", Some("b1"), ANSWER));
    // Bob's session refresh: his own CSeq space, same number as Alice's INVITE.
    h.feed(20_000, &leg.in_dialog("UPDATE", false, 2, "b1", "", ""));
    h.feed(20_001, &leg.response_to_bob(200, 2, "UPDATE", "b1"));
    // A challenged re-INVITE counts only through its authenticated re-send.
    h.feed(30_000, &leg.in_dialog("INVITE", true, 3, "b1", "", ""));
    h.feed(30_001, &leg.response(407, 3, "INVITE", Some("b1"), ""));
    h.feed(30_002, &leg.in_dialog("INVITE", true, 4, "b1", "", ""));
    h.feed(40_000, &leg.in_dialog("BYE", true, 5, "b1", "", ""));
    let call = h.single();
    assert_eq!(call.reinvites, 3);
    assert_eq!(call.disposition, "answered");
    assert_eq!(
        call.codecs,
        ["PCMA/8000"],
        "re-INVITE SDP does not change the codecs"
    );
    assert_eq!(call.legs, 1);
}

/// A full call with a re-INVITE, fed once or with every message twice
/// (relay copy 1 ms later) and some sent a third time.
fn duplicated_call(copies: usize) -> Vec<CallRow> {
    let leg = Leg { call_id: "c-dup" };
    let mut messages = leg.answered(0);
    messages.push((5_000, leg.in_dialog("INVITE", false, 1, "b1", "", ANSWER)));
    messages.push((5_010, leg.response_to_bob(200, 1, "INVITE", "b1")));
    messages.push((8_000, leg.in_dialog("BYE", true, 2, "b1", "", "")));
    messages.push((8_010, leg.response(200, 2, "BYE", Some("b1"), "")));
    let mut h = Harness::new();
    for (at, raw) in &messages {
        for copy in 0..copies {
            h.feed(at + copy as i64, raw);
        }
    }
    h.finish()
}

#[test]
fn every_message_twice_gives_the_same_row() {
    let once = duplicated_call(1);
    assert_eq!(once.len(), 1);
    assert_eq!(once[0].reinvites, 1);
    assert_eq!(duplicated_call(2), once);
    assert_eq!(duplicated_call(3), once);
}

#[test]
fn refer_links_the_transferred_call() {
    // Alice calls Bob; Bob transfers Alice to Carol.
    let first = Leg {
        call_id: "c-transferor",
    };
    let mut h = Harness::new();
    h.feed_all(&first.answered(0));
    let refer = first.in_dialog(
        "REFER",
        false,
        1,
        "b1",
        "Refer-To: <sip:carol@example.com>\r\nReferred-By: <sip:bob@example.com>\r\n",
        "",
    );
    h.feed(5_000, &refer);
    h.feed(5_001, &refer); // relay copy
    let to_carol = message(
        "INVITE sip:carol@example.com SIP/2.0",
        "<sip:alice@example.com>;tag=a2",
        "<sip:carol@example.com>",
        "c-transferred",
        "1 INVITE",
        "Referred-By: <sip:bob@example.com>\r\n",
        OFFER,
    );
    h.feed(5_100, &to_carol);
    // Another call to Carol later is not a transfer: the referral was used.
    let again = to_carol
        .replace("c-transferred", "c-unrelated")
        .replace("Referred-By: <sip:bob@example.com>\r\n", "");
    h.feed(6_000, &again);
    h.feed(7_000, &first.in_dialog("BYE", false, 2, "b1", "", ""));

    // Attended transfer: the Refer-To carries Replaces of a third call.
    let consult = Leg {
        call_id: "c-consult",
    };
    h.feed_all(&consult.answered(10_000));
    let refer_replaces = consult.in_dialog(
        "REFER",
        true,
        2,
        "b1",
        "Refer-To: <sip:dave@example.com?Replaces=c-held%40example.com%3Bto-tag%3Dx%3Bfrom-tag%3Dy>\r\n",
        "",
    );
    h.feed(15_000, &refer_replaces);
    let replacing = message(
        "INVITE sip:dave-desk@192.0.2.40 SIP/2.0",
        "<sip:bob@example.com>;tag=b9",
        "<sip:dave-desk@192.0.2.40>",
        "c-replacing",
        "1 INVITE",
        "Replaces: c-held@example.com;to-tag=x;from-tag=y\r\n",
        "",
    );
    h.feed(15_050, &replacing);

    let rows = h.finish();
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r.call_id == id)
            .unwrap_or_else(|| panic!("no row for {id}"))
    };
    assert_eq!(
        by_id("c-transferred").transferred_from.as_deref(),
        Some("c-transferor")
    );
    assert_eq!(by_id("c-unrelated").transferred_from, None);
    assert_eq!(by_id("c-transferor").transferred_from, None);
    assert_eq!(by_id("c-transferor").ended_by.as_deref(), Some("callee"));
    assert_eq!(
        by_id("c-replacing").transferred_from.as_deref(),
        Some("c-consult")
    );
}

#[test]
fn refer_outside_the_window_links_nothing() {
    let first = Leg {
        call_id: "c-old-refer",
    };
    let mut h = Harness::new();
    h.feed_all(&first.answered(0));
    h.feed(
        1_000,
        &first.in_dialog(
            "REFER",
            false,
            1,
            "b1",
            "Refer-To: <sip:carol@example.com>\r\n",
            "",
        ),
    );
    let late = message(
        "INVITE sip:carol@example.com SIP/2.0",
        "<sip:alice@example.com>;tag=a2",
        "<sip:carol@example.com>",
        "c-late",
        "1 INVITE",
        "",
        "",
    );
    h.feed(1_000 + 61_000, &late);
    let rows = h.finish();
    assert!(rows.iter().all(|r| r.transferred_from.is_none()));
}

#[test]
fn late_offer_takes_caller_media_from_the_ack() {
    let leg = Leg {
        call_id: "c-late-offer",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", ""));
    h.feed(500, &leg.response(200, 1, "INVITE", Some("b1"), ANSWER));
    h.feed(510, &leg.in_dialog("ACK", true, 1, "b1", "", OFFER));
    let call = h.single();
    assert_eq!(call.caller_media.as_deref(), Some("192.0.2.10:4000"));
    assert_eq!(call.callee_media.as_deref(), Some("192.0.2.20:5000"));
    assert_eq!(
        call.codecs,
        ["PCMU/8000", "PCMA/8000"],
        "the ACK holds the answer"
    );
    assert_eq!(call.setup_ms, Some(500), "answer without ring");
}

#[test]
fn failure_codes_map_to_dispositions() {
    let cases: &[(u16, &str, &str)] = &[
        (486, "busy", "callee"),
        (600, "busy", "callee"),
        (603, "rejected", "callee"),
        (606, "failed", "callee"),
        (408, "no-answer", "server"),
        (480, "no-answer", "server"),
        (404, "failed", "server"),
        (487, "failed", "server"), // no CANCEL seen
        (503, "failed", "server"),
        (302, "failed", "server"),
    ];
    for &(code, disposition, by) in cases {
        let leg = Leg { call_id: "c-fail" };
        let mut h = Harness::new();
        h.feed(0, &leg.invite(1, "", ""));
        h.feed(10, &leg.response(code, 1, "INVITE", Some("x"), ""));
        let call = h.single();
        assert_eq!(call.disposition, disposition, "{code}");
        assert_eq!(call.ended_by.as_deref(), Some(by), "{code}");
        assert_eq!(call.final_code, Some(code));
        assert_eq!(call.end_ns, Some(T0 + 10 * MS));
    }
}

#[test]
fn drain_closes_open_calls_by_the_documented_rules() {
    let mut h = Harness::new();
    let answered = Leg {
        call_id: "d-answered",
    };
    h.feed_all(&answered.answered(0));
    let ringing = Leg {
        call_id: "d-ringing",
    };
    h.feed(1, &ringing.invite(1, "", ""));
    h.feed(2, &ringing.response(180, 1, "INVITE", Some("r"), ""));
    let trying = Leg {
        call_id: "d-trying",
    };
    h.feed(3, &trying.invite(1, "", ""));
    h.feed(4, &trying.response(100, 1, "INVITE", None, ""));
    let cancelling = Leg {
        call_id: "d-cancelling",
    };
    h.feed(5, &cancelling.invite(1, "", ""));
    h.feed(6, &cancelling.cancel(1));
    let rows = h.finish();
    let summary: Vec<(&str, &str, Option<i64>)> = rows
        .iter()
        .map(|r| (r.call_id.as_str(), r.disposition.as_str(), r.end_ns))
        .collect();
    assert_eq!(
        summary,
        [
            ("d-answered", "answered", None),
            ("d-ringing", "no-answer", None),
            ("d-trying", "timeout", None),
            ("d-cancelling", "cancelled", Some(T0 + 6 * MS)),
        ],
        "sorted by start time"
    );
    assert_eq!(rows[0].duration_ms, None, "capture ended during the call");
    assert_eq!(rows[0].ended_by, None);
}

#[test]
fn answered_call_without_bye_times_out_after_max_call() {
    let config = CallConfig::default();
    let max_call_ms = config.max_call_ns / MS;
    let leg = Leg {
        call_id: "c-endless",
    };
    let mut h = Harness::with(config);
    h.feed_all(&leg.answered(0));
    // Session refresh: the call is alive, the clock restarts.
    h.feed(3_600_000, &leg.in_dialog("UPDATE", true, 2, "b1", "", ""));
    assert!(h.expire_at(2_010 + max_call_ms).is_empty());
    let rows = h.expire_at(3_600_000 + max_call_ms);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].disposition, "timeout");
    assert_eq!(rows[0].end_ns, None);
    assert_eq!(rows[0].duration_ms, None);
    assert_eq!(rows[0].answer_ns, Some(T0 + 2_000 * MS));
}

#[test]
fn open_call_cap_evicts_the_oldest_as_timeout() {
    let mut h = Harness::with(CallConfig {
        max_open_calls: 2,
        ..CallConfig::default()
    });
    let ids = ["cap-1", "cap-2", "cap-3"];
    for (i, id) in ids.into_iter().enumerate() {
        let leg = Leg { call_id: id };
        h.feed_all(&leg.answered(i as i64 * 10_000));
    }
    assert_eq!(h.correlator.evicted(), 1);
    assert_eq!(h.correlator.open_calls(), 2);
    assert_eq!(h.observed.len(), 1, "observe returns the evicted call");
    assert_eq!(h.observed[0].call_id, "cap-1");
    assert_eq!(h.observed[0].disposition, "timeout");
    let rows = h.finish();
    assert_eq!(rows.len(), 3);
}

#[test]
fn calls_only_come_from_invites() {
    let mut h = Harness::new();
    let im = "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: im-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 2\r\n\r\nhi";
    h.feed(0, im);
    let leg = Leg { call_id: "orphan" };
    // Responses and in-dialog requests of an INVITE that was never captured.
    h.feed(1, &leg.response(180, 1, "INVITE", Some("b1"), ""));
    h.feed(2, &leg.response(200, 1, "INVITE", Some("b1"), ANSWER));
    h.feed(3, &leg.in_dialog("BYE", true, 2, "b1", "", ""));
    assert_eq!(h.correlator.open_calls(), 0);
    assert!(h.finish().is_empty());
}

#[test]
fn late_copies_after_close_do_not_open_a_new_call() {
    let leg = Leg {
        call_id: "c-late-copy",
    };
    let mut h = Harness::new();
    let invite = leg.invite(1, "", OFFER);
    h.feed(0, &invite);
    h.feed(10, &leg.response(486, 1, "INVITE", Some("b1"), ""));
    // A message of the call after its linger closes it from `observe`...
    h.feed(40_000, &leg.in_dialog("ACK", true, 1, "b1", "", ""));
    assert_eq!(h.observed.len(), 1);
    assert_eq!(h.observed[0].disposition, "busy");
    // ...and a late INVITE copy is not a new call.
    h.feed(40_001, &invite);
    assert_eq!(h.correlator.open_calls(), 0);
    assert_eq!(h.finish().len(), 1);
}

#[test]
fn slow_auth_retry_continues_the_call() {
    // A person typing a password: the re-sent INVITE comes after the linger.
    let leg = Leg {
        call_id: "c-slow-auth",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(150, &leg.response(407, 1, "INVITE", Some("proxy"), ""));
    h.feed(155, &leg.in_dialog("ACK", true, 1, "proxy", "", ""));
    assert!(
        h.expire_at(40_000).is_empty(),
        "still waiting for credentials"
    );
    h.feed(
        51_000,
        &leg.invite(
            2,
            "Proxy-Authorization: Digest username=\"alice\"\r\n",
            OFFER,
        ),
    );
    h.feed(51_200, &leg.response(403, 2, "INVITE", Some("proxy2"), ""));
    let call = h.single();
    assert_eq!(call.time_ns, T0);
    assert_eq!(call.disposition, "failed");
    assert_eq!(
        call.final_code,
        Some(403),
        "the last INVITE's final response"
    );
    assert_eq!(call.end_ns, Some(T0 + 51_200 * MS));
}

#[test]
fn challenge_without_retry_fails_after_ring_timeout() {
    let config = CallConfig::default();
    let ring_timeout_ms = config.ring_timeout_ns / MS;
    let leg = Leg {
        call_id: "c-auth-timeout",
    };
    let mut h = Harness::with(config);
    h.feed(0, &leg.invite(1, "", OFFER));
    h.feed(10, &leg.response(401, 1, "INVITE", Some("uas"), ""));
    let rows = h.expire_at(10 + ring_timeout_ms);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].disposition, "failed");
    assert_eq!(rows[0].final_code, Some(401));
    assert_eq!(rows[0].reason.as_deref(), Some("Unauthorized"));
    assert_eq!(rows[0].end_ns, Some(T0 + 10 * MS));
}

#[test]
fn cancel_decides_unless_the_callee_decided_first() {
    // A proxy answering the cancelled INVITE with 408 instead of 487.
    let leg = Leg {
        call_id: "c-cancel-408",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", ""));
    h.feed(2_000, &leg.response(100, 1, "INVITE", None, ""));
    h.feed(34_000, &leg.cancel(1));
    h.feed(36_700, &leg.response(408, 1, "INVITE", Some("p"), ""));
    let call = h.single();
    assert_eq!(call.disposition, "cancelled");
    assert_eq!(call.ended_by.as_deref(), Some("caller"));
    assert_eq!(call.final_code, Some(408));
    assert_eq!(call.end_ns, Some(T0 + 34_000 * MS));

    // The callee's 486 crossed the CANCEL on the wire.
    let leg = Leg {
        call_id: "c-cancel-486",
    };
    let mut h = Harness::new();
    h.feed(0, &leg.invite(1, "", ""));
    h.feed(1_000, &leg.cancel(1));
    h.feed(1_001, &leg.response(486, 1, "INVITE", Some("b1"), ""));
    let call = h.single();
    assert_eq!(call.disposition, "busy");
    assert_eq!(call.ended_by.as_deref(), Some("callee"));
}

#[test]
fn addresses_the_strict_parser_refuses_still_name_the_parties() {
    let invite = message(
        "INVITE sip:97239287044@voip.example.net SIP/2.0",
        "\\\"arik\\\" <sip:816666@voip.example.net>;tag=6433ef9",
        "<sip:97239287044@voip.example.net>",
        "c-odd-from",
        "1 INVITE",
        "",
        "",
    );
    assert!(
        NameAddr::parse("\\\"arik\\\" <sip:816666@voip.example.net>;tag=6433ef9").is_err(),
        "precondition: the strict parser refuses this From"
    );
    let bye = message(
        "BYE sip:816666@192.0.2.2 SIP/2.0",
        "\\\"arik\\\" <sip:816666@voip.example.net>;tag=6433ef9",
        "<sip:97239287044@voip.example.net>;tag=x",
        "c-odd-from",
        "2 BYE",
        "",
        "",
    );
    let ok = message(
        "SIP/2.0 200 OK",
        "\\\"arik\\\" <sip:816666@voip.example.net>;tag=6433ef9",
        "<sip:97239287044@voip.example.net>;tag=x",
        "c-odd-from",
        "1 INVITE",
        "",
        "",
    );
    let mut h = Harness::new();
    h.feed(0, &invite);
    h.feed(100, &ok);
    h.feed(900, &bye);
    let call = h.single();
    assert_eq!(call.caller, "sip:816666@voip.example.net");
    assert_eq!(
        call.ended_by.as_deref(),
        Some("caller"),
        "From tag read leniently"
    );
    assert_eq!(
        call.caller_display.as_deref(),
        Some("arik"),
        "display name read leniently: escapes resolved, then the quotes dropped"
    );
    assert_eq!(call.callee_display, None);
}

#[test]
fn display_names_of_the_invite_name_caller_and_callee() {
    let call_with = |call_id: &'static str, from: &str, to: &str| {
        let invite = message(
            &format!("INVITE {BOB} SIP/2.0"),
            from,
            to,
            call_id,
            "1 INVITE",
            "",
            "",
        );
        let busy = message(
            "SIP/2.0 486 Busy Here",
            from,
            &format!("{to};tag=b1"),
            call_id,
            "1 INVITE",
            "",
            "",
        );
        let mut h = Harness::new();
        h.feed(0, &invite);
        h.feed(10, &busy);
        h.single()
    };
    let call = call_with(
        "c-quoted",
        &format!(r#""Alice \"Al\" Smith" <{ALICE}>;tag=a1"#),
        &format!("Bob  Jones <{BOB}>"),
    );
    assert_eq!(
        call.caller_display.as_deref(),
        Some(r#"Alice "Al" Smith"#),
        "quoted display name unquoted and unescaped"
    );
    assert_eq!(
        call.callee_display.as_deref(),
        Some("Bob Jones"),
        "token display name, words joined by one space"
    );
    let call = call_with("c-no-names", &format!(r#"" " <{ALICE}>;tag=a1"#), BOB);
    assert_eq!(call.caller_display, None, "blank display name is none");
    assert_eq!(call.callee_display, None, "addr-spec has no display name");
    assert_eq!(call.callee, BOB);
}

#[test]
fn sdp_inside_a_multipart_body_is_read() {
    let body = format!(
        "--b1\r\nContent-Type: application/sdp\r\n\r\n{OFFER}--b1\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b1--\r\n"
    );
    let invite = message(
        &format!("INVITE {BOB} SIP/2.0"),
        &Leg::alice(),
        &Leg::bob(None),
        "c-multipart",
        "1 INVITE",
        "",
        &body,
    )
    .replace(
        "Content-Type: application/sdp\r\nContent-Length",
        "Content-Type: multipart/mixed;boundary=b1\r\nContent-Length",
    );
    let mut h = Harness::new();
    h.feed(0, &invite);
    let call = h.single();
    assert_eq!(call.caller_media.as_deref(), Some("192.0.2.10:4000"));
    assert_eq!(call.codecs, ["PCMU/8000", "PCMA/8000"]);
}

#[test]
fn closed_call_ids_are_bounded_and_forgotten_oldest_first() {
    let mut closed = ClosedCalls::default();
    for i in 0..1_000 {
        closed.insert(&format!("call-{i}"), T0 + i * MS, 100);
    }
    assert_eq!(closed.time_of.len(), 100, "never more than the bound");
    assert!(!closed.contains_key("call-899"), "oldest forgotten first");
    assert!(closed.contains_key("call-900"));
    // Closing an id again keeps it past its first close time.
    closed.insert("call-950", T0 + 2_000 * MS, 100);
    closed.forget_closed_before(T0 + 1_000 * MS);
    assert!(closed.contains_key("call-950"));
    assert!(!closed.contains_key("call-999"));
    assert_eq!(closed.time_of.len(), 1);
}
