//! Golden tests of call correlation over real captures: every capture in
//! `shared/testdata/pcaps` (public) and `pcaps/local` (SIPp scenarios) is
//! imported, every SIP message fed to a [`CallCorrelator`] (with `expire` at
//! each message's capture time, as the pipeline does), and the rows are
//! compared with a reviewed snapshot.
//!
//! Snapshots alone can be accepted blindly, so each test also asserts the
//! facts the capture is known for (`pcaps/README.md`, "Expected values for a
//! correlator", and the flows in `pcaps/INDEX.tsv`).

use std::path::PathBuf;

mod common;

use serde::Serialize;
use sipvault_collector::calls::{CallConfig, CallCorrelator};
use sipvault_schemas::CallRow;
use sipvault_sip::SipMessage;

const NS_PER_MS: i64 = 1_000_000;

fn pcaps_dir() -> PathBuf {
    common::testdata().join("pcaps")
}

/// Imports `relative` (under `pcaps/`) and correlates it; rows sorted by start.
fn correlate(relative: &str) -> Vec<CallRow> {
    let captured = common::captured(&format!("pcaps/{relative}"));

    let mut correlator = CallCorrelator::new(CallConfig::default());
    let mut rows = Vec::new();
    for msg in &captured {
        let Ok(sip) = SipMessage::parse(&msg.raw) else {
            continue;
        };
        rows.extend(correlator.observe(msg, &sip));
        rows.extend(correlator.expire(msg.time_ns));
    }
    rows.extend(correlator.drain());
    assert_eq!(correlator.open_calls(), 0, "drain closes everything");
    assert_eq!(correlator.evicted(), 0);
    rows.sort_by(|a, b| (a.time_ns, &a.call_id).cmp(&(b.time_ns, &b.call_id)));
    let mut ids: Vec<&str> = rows.iter().map(|r| r.call_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "one row per Call-ID");
    rows
}

/// What the snapshot holds: every field of the row, times after the start
/// as milliseconds so a reviewer can read the call's timeline.
#[derive(Serialize)]
struct GoldenRow<'a> {
    call_id: &'a str,
    time_ns: i64,
    source: &'a str,
    caller: &'a str,
    callee: &'a str,
    disposition: &'a str,
    final_code: Option<u16>,
    reason: Option<&'a str>,
    ended_by: Option<&'a str>,
    ring_after_ms: Option<i64>,
    answer_after_ms: Option<i64>,
    end_after_ms: Option<i64>,
    setup_ms: Option<i64>,
    duration_ms: Option<i64>,
    codecs: &'a [String],
    caller_media: Option<&'a str>,
    callee_media: Option<&'a str>,
    legs: u32,
    reinvites: u32,
    transferred_from: Option<&'a str>,
    caller_display: Option<&'a str>,
    callee_display: Option<&'a str>,
}

fn golden(rows: &[CallRow]) -> Vec<GoldenRow<'_>> {
    rows.iter()
        .map(|r| {
            let after = |t: Option<i64>| t.map(|t| (t - r.time_ns) / NS_PER_MS);
            GoldenRow {
                call_id: &r.call_id,
                time_ns: r.time_ns,
                source: &r.source,
                caller: &r.caller,
                callee: &r.callee,
                disposition: &r.disposition,
                final_code: r.final_code,
                reason: r.reason.as_deref(),
                ended_by: r.ended_by.as_deref(),
                ring_after_ms: after(r.ring_ns),
                answer_after_ms: after(r.answer_ns),
                end_after_ms: after(r.end_ns),
                setup_ms: r.setup_ms,
                duration_ms: r.duration_ms,
                codecs: &r.codecs,
                caller_media: r.caller_media.as_deref(),
                callee_media: r.callee_media.as_deref(),
                legs: r.legs,
                reinvites: r.reinvites,
                transferred_from: r.transferred_from.as_deref(),
                caller_display: r.caller_display.as_deref(),
                callee_display: r.callee_display.as_deref(),
            }
        })
        .collect()
}

/// Correlates one capture and checks it against its snapshot `snapshot`.
fn snapshot(relative: &str, snapshot: &str) -> Vec<CallRow> {
    let rows = correlate(relative);
    insta::assert_yaml_snapshot!(snapshot, golden(&rows));
    rows
}

fn dispositions(rows: &[CallRow]) -> Vec<&str> {
    rows.iter().map(|r| r.disposition.as_str()).collect()
}

/// The SIPp pairs: UAC 127.0.0.1:5060 (media 6000) calls UAS 127.0.0.1:5070
/// (media 6100), 10 calls per capture.
fn assert_sipp_calls(rows: &[CallRow], disposition: &str) {
    assert_eq!(rows.len(), 10, "10 Call-IDs per local capture");
    assert!(
        rows.iter().all(|r| r.disposition == disposition),
        "all {disposition}: {:?}",
        dispositions(rows)
    );
    for r in rows {
        assert!(r.caller.starts_with("sip:"), "{}", r.caller);
        assert!(r.callee.starts_with("sip:"), "{}", r.callee);
        assert_eq!(r.caller_media.as_deref(), Some("127.0.0.1:6000"));
        assert_eq!(r.legs, 1);
        assert_eq!(r.reinvites, 0);
        assert_eq!(r.transferred_from, None);
    }
}

fn assert_answered_sipp_calls(rows: &[CallRow]) {
    assert_sipp_calls(rows, "answered");
    for r in rows {
        assert_eq!(r.final_code, Some(200));
        assert_eq!(r.ended_by.as_deref(), Some("caller"), "the UAC sends BYE");
        assert!(r.ring_ns.is_some() && r.answer_ns.is_some() && r.end_ns.is_some());
        assert!(r.ring_ns <= r.answer_ns && r.answer_ns <= r.end_ns);
        assert!(r.setup_ms.is_some_and(|ms| ms >= 0));
        assert!(r.duration_ms.is_some_and(|ms| ms >= 0));
        assert_eq!(r.callee_media.as_deref(), Some("127.0.0.1:6100"));
        assert_eq!(
            r.codecs,
            ["PCMA/8000"],
            "the UAS answers PCMA + telephone-event"
        );
    }
}

#[test]
fn local_call_basic() {
    let rows = snapshot("local/call-basic.pcap", "local-call-basic");
    assert_answered_sipp_calls(&rows);
}

#[test]
fn local_call_rtp() {
    let rows = snapshot("local/call-rtp.pcap", "local-call-rtp");
    assert_answered_sipp_calls(&rows);
    assert!(
        rows.iter()
            .all(|r| r.duration_ms.is_some_and(|ms| ms >= 2_000)),
        "2 s of RTP before the BYE"
    );
}

#[test]
fn local_invite_auth() {
    let rows = snapshot("local/invite-auth.pcap", "local-invite-auth");
    assert_answered_sipp_calls(&rows);
}

#[test]
fn local_call_cancel() {
    let rows = snapshot("local/call-cancel.pcap", "local-call-cancel");
    assert_sipp_calls(&rows, "cancelled");
    for r in &rows {
        assert_eq!(r.final_code, Some(487));
        assert_eq!(r.ended_by.as_deref(), Some("caller"));
        assert!(r.ring_ns.is_some());
        assert_eq!(r.answer_ns, None);
        assert_eq!(r.duration_ms, None);
        assert!(r.end_ns.is_some_and(|end| end >= r.time_ns));
    }
}

#[test]
fn local_call_busy() {
    let rows = snapshot("local/call-busy.pcap", "local-call-busy");
    assert_sipp_calls(&rows, "busy");
    for r in &rows {
        assert_eq!(r.final_code, Some(486));
        assert_eq!(r.ended_by.as_deref(), Some("callee"));
        assert_eq!(r.answer_ns, None);
        assert_eq!(r.callee_media, None);
    }
}

#[test]
fn local_captures_without_invites_have_no_calls() {
    for name in ["register", "message", "presence-subscribe", "publish"] {
        let rows = snapshot(&format!("local/{name}.pcap"), &format!("local-{name}"));
        assert!(rows.is_empty(), "{name}: {:?}", dispositions(&rows));
    }
}

#[test]
fn pcapng_and_pcap_copies_give_the_same_calls() {
    for name in [
        "call-basic",
        "call-busy",
        "call-cancel",
        "call-rtp",
        "invite-auth",
        "message",
        "presence-subscribe",
        "publish",
        "register",
    ] {
        let pcap = correlate(&format!("local/{name}.pcap"));
        let pcapng = correlate(&format!("local/{name}.pcapng"));
        assert_eq!(pcap.len(), pcapng.len(), "{name}");
        for (from_pcap, from_pcapng) in pcap.iter().zip(&pcapng) {
            // `editcap -F pcap` keeps microseconds: compare at that
            // resolution (derived milliseconds may then differ by one).
            let (a, b) = (at_microseconds(from_pcap), at_microseconds(from_pcapng));
            for (x, y) in [(a.setup_ms, b.setup_ms), (a.duration_ms, b.duration_ms)] {
                assert_eq!(x.is_some(), y.is_some(), "{name}");
                assert!((x.unwrap_or(0) - y.unwrap_or(0)).abs() <= 1, "{name}");
            }
            // Only the source (the file name) differs otherwise.
            let comparable = |r: CallRow| CallRow {
                setup_ms: None,
                duration_ms: None,
                source: String::new(),
                ..r
            };
            assert_eq!(comparable(a), comparable(b), "{name}");
        }
    }
}

/// The row with every capture time truncated to whole microseconds.
fn at_microseconds(row: &CallRow) -> CallRow {
    let micros = |t: i64| t / 1_000 * 1_000;
    CallRow {
        time_ns: micros(row.time_ns),
        ring_ns: row.ring_ns.map(micros),
        answer_ns: row.answer_ns.map(micros),
        end_ns: row.end_ns.map(micros),
        ..row.clone()
    }
}

#[test]
fn public_heplify_udp_call_without_bye_is_answered() {
    let rows = snapshot(
        "heplify-rtp_rtcp_sip_ipv4_udp.pcap",
        "public-heplify-rtp_rtcp_sip_ipv4_udp",
    );
    // INVITE/100/180/200/ACK and no BYE; a second INVITE is still ringing
    // (180) when the capture ends.
    assert_eq!(dispositions(&rows), ["answered", "no-answer"]);
    let call = &rows[0];
    assert_eq!(call.final_code, Some(200));
    assert_eq!(call.end_ns, None, "no BYE in the capture");
    assert_eq!(call.duration_ms, None);
    assert_eq!(call.ended_by, None);
    assert_eq!(call.setup_ms, Some(47));
    // The 200's SDP: m=audio 8000 RTP/AVP 8 0 3 98 97 101, lower-case rtpmaps.
    assert_eq!(
        call.codecs,
        [
            "PCMA/8000",
            "PCMU/8000",
            "GSM/8000",
            "iLBC/8000",
            "speex/8000"
        ]
    );
    assert_eq!(call.callee_media.as_deref(), Some("200.57.7.204:8000"));
    let ringing = &rows[1];
    assert!(ringing.ring_ns.is_some() && ringing.final_code.is_none());
}

#[test]
fn public_heplify_tcp_call_is_answered_and_ended() {
    let rows = snapshot("heplify-sip_ipv4_tcp.pcap", "public-heplify-sip_ipv4_tcp");
    assert_eq!(dispositions(&rows), ["answered"]);
    let call = &rows[0];
    assert_eq!(
        call.ended_by.as_deref(),
        Some("callee"),
        "201 sends the BYE"
    );
    assert_eq!(call.setup_ms, Some(59));
    assert_eq!(call.duration_ms, Some(2_151));
    assert_eq!(call.codecs, ["PCMA/8000"]);
    assert_eq!(call.caller_media.as_deref(), Some("10.33.6.100:6000"));
    assert_eq!(call.callee_media.as_deref(), Some("10.33.6.101:6050"));
}

#[test]
fn public_zeek_wireshark() {
    let rows = snapshot("zeek-wireshark.pcap", "public-zeek-wireshark");
    let summary: Vec<(&str, &str, Option<u16>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.call_id.as_str(),
                r.disposition.as_str(),
                r.final_code,
                r.ended_by.as_deref(),
            )
        })
        .collect();
    let expected = [
        // INVITE x3, 100, CANCEL after 34 s, then 408 from the proxy.
        (
            "105090259-446faf7a@192.168.1.2",
            "cancelled",
            Some(408),
            Some("caller"),
        ),
        // 407, credentials re-sent 32 s later (CSeq 2), 403.
        (
            "85216695-42dcdb1d@192.168.1.2",
            "failed",
            Some(403),
            Some("server"),
        ),
        // 407, credentials re-sent 51 s later, 100, 403.
        (
            "24487391-449bf2a0@192.168.1.2",
            "failed",
            Some(403),
            Some("server"),
        ),
        // 407, re-sent, 100, 183 (early media), 480.
        (
            "11894297-4432a9f8@192.168.1.2",
            "no-answer",
            Some(480),
            Some("server"),
        ),
    ];
    assert_eq!(summary, expected);
    assert!(rows[3].ring_ns.is_some(), "183 counts as ringing");
}

#[test]
fn public_hep_over_udp() {
    // The only INVITE declares Content-Length 287 over a 276-byte body:
    // `SipMessage::parse` refuses it as truncated, so no call is opened
    // (its 100 and 407 have no INVITE to belong to).
    let rows = snapshot("hepwireshark-hep.pcap", "public-hepwireshark-hep");
    assert!(rows.is_empty(), "{:?}", dispositions(&rows));
}

#[test]
fn public_single_invites() {
    for (file, name) in [
        (
            "suricata-sip-body-large.pcap",
            "public-suricata-sip-body-large",
        ),
        (
            "suricata-sip_compact_form.pcap",
            "public-suricata-sip_compact_form",
        ),
    ] {
        // One INVITE whose SDP has no m-line, at most a 100 Trying: the
        // callee was never reached.
        let rows = snapshot(file, name);
        assert_eq!(dispositions(&rows), ["timeout"], "{file}");
        assert!(rows[0].codecs.is_empty() && rows[0].caller_media.is_none());
        assert!(!rows[0].caller.is_empty(), "{file}: caller read leniently");
    }
}

#[test]
fn public_captures_without_calls() {
    for (file, name) in [
        ("ndpi-sip_hello.pcapng", "public-ndpi-sip_hello"),
        (
            "pcapplusplus-sip_not_sdp.pcap",
            "public-pcapplusplus-sip_not_sdp",
        ),
        // Responses without their INVITE open no call.
        ("pcapplusplus-sip_resp.pcap", "public-pcapplusplus-sip_resp"),
        // TLS: nothing readable.
        ("sngrep-tlssaved.pcap", "public-sngrep-tlssaved"),
        // The INVITE's Content-Length does not parse: the message is skipped.
        (
            "zeek-invalid-content-length.pcap",
            "public-zeek-invalid-content-length",
        ),
    ] {
        let rows = snapshot(file, name);
        assert!(rows.is_empty(), "{file}: {:?}", dispositions(&rows));
    }
}

/// Every capture in the test data is covered by one of the tests above.
#[test]
fn every_capture_has_a_golden_test() {
    let source = include_str!("calls_golden.rs");
    let mut missing = Vec::new();
    for dir in [pcaps_dir(), pcaps_dir().join("local")] {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(".pcapng").trim_end_matches(".pcap");
            let is_capture = name.ends_with(".pcap") || name.ends_with(".pcapng");
            if is_capture
                && !source.contains(&format!("\"{name}\""))
                && !source.contains(&format!("\"{stem}\""))
            {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "captures without a golden test: {missing:?}"
    );
}
