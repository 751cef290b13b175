//! Crash recovery end to end: `sipvault serve` is killed with SIGKILL at
//! 20 moments while IMs flow through it, and restarted each time. Every IM
//! whose sender got a 200 must be in the archive exactly once, and
//! `sipvault verify` must pass.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{ServeProcess, add_users, registered_alice_and_bob, run_sipvault, sql_rows};

const ROUNDS: u64 = 20;
const DOMAIN: &str = "crash.test";

/// Moments to kill at: a fixed-seed sequence (the same in every run) of
/// 150–1,350 ms after the traffic starts.
fn kill_after(round: u64) -> Duration {
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5151_7661_756c_7400;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    Duration::from_millis(150 + x % 1200)
}

#[test]
fn every_answered_im_survives_kill_9_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(&data, DOMAIN, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    // Small segments, so kills land between seals as well as within them;
    // critical mode, so an IM is answered only once its record is durable.
    let config = format!(
        "[sip]\ndomain = \"{DOMAIN}\"\n[archive]\nsegment_max_rows = 40\ncritical = true\n"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // body -> status of every IM whose final answer reached alice.
    let mut answered: BTreeMap<String, u16> = BTreeMap::new();
    let mut replays = 0;
    for round in 0..ROUNDS {
        let server = ServeProcess::start(&data, Some(&config));
        if server.log().contains("write-ahead log replayed")
            || server.wait_for_log("write-ahead log replayed", Duration::from_millis(300))
        {
            replays += 1;
        }
        let addr = server.addr;
        let data_arg = data.display().to_string();
        let delay = kill_after(round);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SIGKILL: no shutdown code runs.
            Command::new("pkill")
                .args([
                    "-KILL",
                    "-f",
                    &format!("serve --sip 127.0.0.1:0 --data {data_arg}"),
                ])
                .status()
                .expect("pkill");
        });
        rt.block_on(async {
            let (mut alice, bob) =
                registered_alice_and_bob(addr, DOMAIN, &format!("in round {round}")).await;
            alice.timeout = Duration::from_secs(2);
            // Bounded: the kill ends the round long before this.
            for n in 0..2_000 {
                let body = format!("round {round} message {n}");
                match alice.message("bob", &body).await {
                    Ok(status) => {
                        answered.insert(body, status);
                    }
                    Err(_) => break,
                }
            }
            alice.close().await;
            bob.close().await;
        });
        killer.join().unwrap();
        drop(server);
    }
    // A last clean run seals what the last crash left in the log.
    let server = ServeProcess::start(&data, Some(&config));
    server.stop();

    let delivered: Vec<&String> = answered
        .iter()
        .filter(|(_, status)| **status == 200)
        .map(|(body, _)| body)
        .collect();
    assert!(
        delivered.len() > 100,
        "too little traffic to mean anything: {} IMs answered 200",
        delivered.len()
    );
    assert!(replays > 0, "no restart replayed the write-ahead log");
    eprintln!(
        "{} IMs answered 200 over {ROUNDS} kills; {replays} restarts replayed the write-ahead log",
        delivered.len()
    );
    let rows = sql_rows(
        &data,
        "SELECT body, count(*) AS n FROM im_messages GROUP BY body",
    );
    let archived: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["body"].as_str().unwrap_or_default().to_string(),
                r["n"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let missing: Vec<&&String> = delivered
        .iter()
        .filter(|b| !archived.contains_key(b.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} IMs answered 200 are not in the archive, e.g. {:?}",
        missing.len(),
        delivered.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let doubled: Vec<(&String, &i64)> = archived.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "IMs archived more than once: {:?}",
        doubled.iter().take(5).collect::<Vec<_>>()
    );
    let verify = run_sipvault(&data, &["verify"]);
    assert_eq!(
        verify.code, 0,
        "verify after {ROUNDS} kills:\n{}\n{}",
        verify.stdout, verify.stderr
    );
}
