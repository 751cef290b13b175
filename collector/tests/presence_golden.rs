//! Golden tests of presence correlation over real captures: the SIMPLE
//! traffic in the shared test data (SIPp PUBLISH and SUBSCRIBE/NOTIFY
//! scenarios, a single PUBLISH from a Zoiper client) becomes `presence` rows
//! compared with reviewed snapshots, plus the facts the captures are
//! documented with (`pcaps/README.md`, `sipp/*/uac.xml`, `uas.xml`).

mod common;

use sipvault_collector::presence::{PresenceCorrelator, via};
use sipvault_schemas::PresenceRow;
use sipvault_sip::SipMessage;

/// Rows of one capture, and how many PUBLISHes were left unanswered.
fn correlate(relative: &str) -> (Vec<PresenceRow>, usize) {
    correlate_copies(relative, 1)
}

/// As [`correlate`], with every message fed `copies` times in a row (what a
/// relaying server or Kamailio's `siptrace` captures: in, then out).
fn correlate_copies(relative: &str, copies: usize) -> (Vec<PresenceRow>, usize) {
    let captured = common::captured(relative);
    let mut correlator = PresenceCorrelator::new();
    let mut rows = Vec::new();
    for msg in &captured {
        if let Ok(sip) = SipMessage::parse(&msg.raw) {
            for _ in 0..copies {
                rows.extend(correlator.observe(msg, &sip));
            }
        }
    }
    let unanswered = correlator.drain();
    assert_eq!(
        correlator.counters().unreadable_bodies,
        0,
        "{relative}: every presence body reads"
    );
    rows.sort_by(|a, b| (a.time_ns, &a.call_id).cmp(&(b.time_ns, &b.call_id)));
    (rows, unanswered)
}

fn rows_of<'a>(rows: &'a [PresenceRow], call_id: &str) -> Vec<&'a PresenceRow> {
    rows.iter().filter(|r| r.call_id == call_id).collect()
}

#[test]
fn sipp_publish_lifecycle() {
    // Per Call-ID: PUBLISH (PIDF open) -> 200 + SIP-ETag etag-N-1; refresh
    // (SIP-If-Match, no body) -> 200; modify (PIDF closed, "In a meeting")
    // -> 200 etag-N-3; remove (Expires: 0) -> 200. The refresh is no state.
    let (rows, unanswered) = correlate("pcaps/local/publish.pcap");
    assert_eq!(unanswered, 0);
    assert_eq!(
        rows.len(),
        30,
        "10 publications x (initial, modify, remove)"
    );
    let mut call_ids: Vec<&str> = rows.iter().map(|r| r.call_id.as_str()).collect();
    call_ids.sort_unstable();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 10);
    for call_id in call_ids {
        let states = rows_of(&rows, call_id);
        let n = call_id.split('-').next().unwrap_or_default();
        let summary: Vec<_> = states
            .iter()
            .map(|r| {
                (
                    r.basic.as_deref(),
                    r.note.as_deref(),
                    r.expires,
                    r.etag.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Some("open"),
                    Some("Online"),
                    Some(3600),
                    Some(format!("etag-{n}-1"))
                ),
                (
                    Some("closed"),
                    Some("In a meeting"),
                    Some(3600),
                    Some(format!("etag-{n}-3"))
                ),
                (None, None, Some(0), Some(format!("etag-{n}-3"))),
            ],
            "{call_id}"
        );
        for r in states {
            assert_eq!(r.entity, "sip:alice@sipp.test");
            assert_eq!(r.via, via::PUBLISH);
            assert!(r.activities.is_empty());
            assert_eq!(r.subscription_state, None);
            assert_eq!(r.source, "pcap:publish.pcap");
        }
    }
    insta::assert_yaml_snapshot!("local-publish", rows);
}

#[test]
fn sipp_presence_subscription() {
    // Per Call-ID: SUBSCRIBE -> 200, NOTIFY (active, PIDF open, note
    // "Available") -> 200, SUBSCRIBE Expires 0 -> 200, NOTIFY (terminated,
    // PIDF closed) -> 200. SUBSCRIBEs carry no state.
    let (rows, unanswered) = correlate("pcaps/local/presence-subscribe.pcap");
    assert_eq!(unanswered, 0);
    assert_eq!(rows.len(), 20, "10 subscriptions x 2 NOTIFYs");
    let mut call_ids: Vec<&str> = rows.iter().map(|r| r.call_id.as_str()).collect();
    call_ids.sort_unstable();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 10, "subscriptions overlap in time");
    for call_id in call_ids {
        let [open, closed] = rows_of(&rows, call_id)[..] else {
            panic!("{call_id}: two NOTIFYs expected: {rows:#?}");
        };
        assert!(open.time_ns < closed.time_ns);
        for r in [open, closed] {
            assert_eq!(r.entity, "sip:bob@sipp.test");
            assert_eq!(r.via, via::NOTIFY);
            assert_eq!(r.etag, None);
            assert!(r.activities.is_empty());
        }
        assert_eq!(open.basic.as_deref(), Some("open"));
        assert_eq!(open.note.as_deref(), Some("Available"));
        assert_eq!(open.subscription_state.as_deref(), Some("active"));
        assert_eq!(open.expires, Some(600));
        assert_eq!(closed.basic.as_deref(), Some("closed"));
        assert_eq!(closed.note, None);
        assert_eq!(closed.subscription_state.as_deref(), Some("terminated"));
        assert_eq!(
            closed.expires, None,
            "terminated;reason=timeout has no expires"
        );
    }
    insta::assert_yaml_snapshot!("local-presence-subscribe", rows);
}

#[test]
fn relay_copies_change_nothing() {
    for capture in [
        "pcaps/local/publish.pcap",
        "pcaps/local/presence-subscribe.pcap",
    ] {
        assert_eq!(
            correlate_copies(capture, 2),
            correlate(capture),
            "{capture}"
        );
    }
}

#[test]
fn zoiper_publish_without_its_answer() {
    // The capture holds the PUBLISH only: whether the server took the state
    // is unknown, so it is not archived as presence (the message itself is
    // in sip_messages).
    let (rows, unanswered) = correlate("pcaps/pcapplusplus-sip_not_sdp.pcap");
    assert!(rows.is_empty(), "{rows:#?}");
    assert_eq!(unanswered, 1);
    insta::assert_yaml_snapshot!("public-pcapplusplus-sip_not_sdp", rows);
}

#[test]
fn captures_without_presence_give_no_rows() {
    for capture in [
        "pcaps/local/call-basic.pcap",
        "pcaps/local/register.pcap",
        "pcaps/local/message.pcap",
        "pcaps/zeek-wireshark.pcap",
        "hep/kamailio-siptrace-register-message.pcap",
    ] {
        assert_eq!(correlate(capture), (Vec::new(), 0), "{capture}");
    }
}
