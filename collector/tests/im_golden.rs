//! Golden tests of IM correlation over real captures: the MESSAGE traffic
//! in the shared test data (a SIPp capture, the same traffic re-sent as
//! HEP3, and Kamailio's `siptrace` of two baresip clients) becomes
//! `im_messages` rows compared with reviewed snapshots, plus the facts the
//! captures are documented with (`pcaps/README.md`, `hep/README.md`).

mod common;

use std::time::Duration;

use sipvault_collector::im::ImCorrelator;
use sipvault_schemas::ImMessageRow;
use sipvault_sip::SipMessage;

fn correlate(relative: &str) -> Vec<ImMessageRow> {
    let captured = common::captured(relative);
    let mut correlator = ImCorrelator::new(Duration::from_secs(32));
    let mut rows = Vec::new();
    for msg in &captured {
        if let Ok(sip) = SipMessage::parse(&msg.raw) {
            // The collector clock: the capture's own time in an import.
            rows.extend(correlator.observe(msg.time_ns, msg, &sip));
        }
    }
    rows.extend(correlator.drain());
    rows.sort_by_key(|r| (r.time_ns, r.call_id.clone(), r.cseq));
    rows
}

fn assert_sipp_messages(rows: &[ImMessageRow]) {
    assert_eq!(rows.len(), 10, "10 MESSAGE transactions");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.sender, "sip:alice@sipp.test");
        assert_eq!(r.recipients, vec!["sip:bob@sipp.test".to_string()]);
        assert_eq!(r.delivery_status, "delivered");
        assert_eq!(r.status, Some(200));
        assert_eq!(
            r.body.trim_end(),
            format!(
                "Hello Bob, this is test message number {}. Grüße aus München ✓",
                i + 1
            ),
            "UTF-8 body kept as sent"
        );
    }
}

#[test]
fn sipp_message_capture() {
    let rows = correlate("pcaps/local/message.pcap");
    assert_sipp_messages(&rows);
    insta::assert_yaml_snapshot!("local-message", rows);
}

#[test]
fn pcapng_copy_gives_the_same_rows() {
    // The pcap copy was written with microsecond timestamps, the pcapng
    // original has nanoseconds: equal up to the microsecond.
    let micros = |rows: Vec<ImMessageRow>| -> Vec<ImMessageRow> {
        rows.into_iter()
            .map(|r| ImMessageRow {
                time_ns: r.time_ns / 1000 * 1000,
                ..r
            })
            .collect()
    };
    assert_eq!(
        micros(correlate("pcaps/local/message.pcapng")),
        correlate("pcaps/local/message.pcap")
    );
}

#[test]
fn same_traffic_resent_as_hep3_in_udp() {
    let rows = correlate("hep/hep_send-message.pcap");
    assert_sipp_messages(&rows);
    insta::assert_yaml_snapshot!("hep-send-message", rows);
}

#[test]
fn kamailio_siptrace_of_two_baresip_clients() {
    // Kamailio mirrors the MESSAGE in and out and the 200 in and out: one IM.
    let rows = correlate("hep/kamailio-siptrace-register-message.pcap");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].delivery_status, "delivered");
    insta::assert_yaml_snapshot!("kamailio-siptrace", rows);
}

#[test]
fn captures_without_messages_give_no_ims() {
    for capture in [
        "pcaps/local/call-basic.pcap",
        "pcaps/local/register.pcap",
        "pcaps/local/publish.pcap",
        "pcaps/zeek-wireshark.pcap",
    ] {
        assert!(correlate(capture).is_empty(), "{capture}");
    }
}
