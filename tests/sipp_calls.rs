//! Calls through `sipvault serve` between registered SIPp agents on
//! loopback: the shared call scenarios (basic with SDP, cancel, busy) plus a
//! callee that never answers and one that is not registered. Afterwards the
//! archive's `calls` table holds one row per call with the right
//! disposition and the codecs of the SDP.

mod common;

use common::{
    ServeProcess, SippSide, add_users, free_udp_port, our_scenarios, run_sipp, run_sipp_pair,
    sipp_available, sipp_register, sql_rows, testdata,
};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sipp_calls_through_the_proxy_are_archived_with_their_outcome() {
    if !sipp_available() {
        panic!("sipp is not installed (Debian package sip-tester); .ci/run installs it");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(
        &data,
        "sipp.test",
        &[("alice", "secret"), ("bob", "secret"), ("carol", "secret")],
    );
    // T1 of 100 ms: the silent callee's call ends at Timer B, 6.4 s; a
    // ringing callee is given up on after 2 s (Timer C).
    let server = ServeProcess::start(
        &data,
        Some(
            "[sip]\ndomain = \"sipp.test\"\nt1_ms = 100\nno_answer_secs = 2\n[archive]\nsegment_max_age_secs = 3600\n",
        ),
    );
    let remote = server.addr.to_string();
    let shared = testdata().join("sipp");
    let alice_port = free_udp_port();
    let bob_port = free_udp_port();
    sipp_register(&remote, "alice", "sipp.test", alice_port, "REGISTER alice");
    sipp_register(&remote, "bob", "sipp.test", bob_port, "REGISTER bob");
    let uac = |scenario: &str| -> Vec<String> {
        args(&[
            "-sf",
            scenario,
            &remote,
            "-p",
            &alice_port.to_string(),
            "-m",
            "1",
        ])
    };
    let uas = |scenario: &str| -> Vec<String> {
        args(&["-sf", scenario, "-p", &bob_port.to_string(), "-m", "1"])
    };

    // Basic call: the callee echoes Record-Route, so ACK and BYE are
    // loose-routed through the proxy.
    run_sipp_pair(
        SippSide {
            dir: &our_scenarios(),
            args: uas("call-uas-record-route.xml"),
        },
        SippSide {
            dir: &shared.join("call-basic"),
            args: uac("uac.xml"),
        },
        "basic call (call-basic/uac.xml -> call-uas-record-route.xml)",
    );
    run_sipp_pair(
        SippSide {
            dir: &shared.join("call-cancel"),
            args: uas("uas.xml"),
        },
        SippSide {
            dir: &shared.join("call-cancel"),
            args: uac("uac.xml"),
        },
        "cancelled call (call-cancel)",
    );
    run_sipp_pair(
        SippSide {
            dir: &shared.join("call-busy"),
            args: uas("uas.xml"),
        },
        SippSide {
            dir: &shared.join("call-busy"),
            args: uac("uac.xml"),
        },
        "busy call (call-busy)",
    );
    let mut no_answer = uac("call-uac-no-answer.xml");
    no_answer.extend(args(&["-s", "bob"]));
    run_sipp_pair(
        SippSide {
            dir: &our_scenarios(),
            args: uas("call-uas-silent.xml"),
        },
        SippSide {
            dir: &our_scenarios(),
            args: no_answer,
        },
        "unanswered call (call-uac-no-answer.xml -> call-uas-silent.xml)",
    );
    let mut ringing = uac("call-uac-rings-no-answer.xml");
    ringing.extend(args(&["-s", "bob"]));
    run_sipp_pair(
        SippSide {
            dir: &our_scenarios(),
            args: uas("call-uas-ringing.xml"),
        },
        SippSide {
            dir: &our_scenarios(),
            args: ringing,
        },
        "ringing, never answered (call-uac-rings-no-answer.xml -> call-uas-ringing.xml)",
    );
    let mut offline = uac("call-uac-offline.xml");
    offline.extend(args(&["-s", "carol"]));
    run_sipp(&our_scenarios(), &offline, "call to an unregistered user");

    let log = server.stop();
    let rows = sql_rows(
        &data,
        "SELECT callee, disposition, final_code, ended_by, codecs, legs, reinvites, caller_media, \
         callee_media, setup_ms, duration_ms \
         FROM calls ORDER BY time",
    );
    let show = || {
        format!(
            "{}\nserver log:\n{log}",
            serde_json::to_string_pretty(&rows).unwrap()
        )
    };
    eprintln!(
        "calls archived: {}",
        serde_json::to_string_pretty(&rows).unwrap()
    );
    assert_eq!(rows.len(), 6, "one row per call: {}", show());
    let expect = [
        ("bob", "answered", Some(200u16)),
        ("bob", "cancelled", Some(487)),
        ("bob", "busy", Some(486)),
        ("bob", "no-answer", Some(408)),
        ("bob", "no-answer", Some(408)),
        ("carol", "no-answer", Some(480)),
    ];
    for (row, (callee, disposition, code)) in rows.iter().zip(expect) {
        assert!(
            row["callee"].as_str().is_some_and(|c| c.contains(callee)),
            "callee {callee}: {}",
            show()
        );
        assert_eq!(row["disposition"], disposition, "{}", show());
        assert_eq!(
            row["final_code"].as_u64(),
            code.map(u64::from),
            "final code of the {disposition} call: {}",
            show()
        );
    }
    // Codecs: the answer's (PCMA) for the answered call, the offer's where
    // there was no answer; the caller's media address from its SDP.
    let codecs = |i: usize| rows[i]["codecs"].to_string();
    assert!(
        codecs(0).contains("PCMA") && !codecs(0).contains("PCMU"),
        "{}",
        show()
    );
    assert!(
        codecs(1).contains("PCMA") && codecs(1).contains("PCMU"),
        "{}",
        show()
    );
    assert!(
        rows[0]["caller_media"]
            .as_str()
            .is_some_and(|m| m.starts_with("127.0.0.1")),
        "{}",
        show()
    );
    assert!(rows[0]["callee_media"].as_str().is_some(), "{}", show());
    assert_eq!(rows[0]["legs"], 1, "one callee leg: {}", show());
}
