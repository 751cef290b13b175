//! A real softphone against `sipvault serve`: baresip (Debian `baresip`)
//! registers as alice with digest, publishes her presence, sends an IM to
//! bob (a SIPp UAS) and calls carol (a SIPp UAS that answers), all through
//! the server; the archive holds the IM, the call and the presence state.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{ServeProcess, add_users, free_udp_port, sipp, sipp_register, sql_rows, testdata};

const DOMAIN: &str = "baresip.test";

fn baresip_available() -> bool {
    Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A baresip configuration without sound devices: a silent bridge for audio.
fn write_baresip_config(dir: &Path, listen_port: u16, server: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{listen_port}\n\
             audio_player aubridge,nil\n\
             audio_source aubridge,nil\n\
             audio_alert aubridge,nil\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aubridge.so\n\
             module_tmp uuid.so\n\
             module_tmp account.so\n\
             module_app contact.so\n\
             module_app menu.so\n\
             module_app presence.so\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:alice@{DOMAIN}>;auth_pass=secret;outbound=\"sip:{server}\";regint=600;pubint=600;audio_codecs=pcma,pcmu\n"
        ),
    )
    .unwrap();
    // The current contact, which `/message` writes to.
    std::fs::write(
        dir.join("contacts"),
        format!("\"Bob\" <sip:bob@{DOMAIN}>\n"),
    )
    .unwrap();
}

#[test]
fn baresip_registers_publishes_messages_and_calls_through_the_server() {
    assert!(
        baresip_available(),
        "baresip is not installed (Debian package baresip); .ci/run installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    add_users(
        &data,
        DOMAIN,
        &[("alice", "secret"), ("bob", "secret"), ("carol", "secret")],
    );
    let server = ServeProcess::start(&data, Some(&format!("[sip]\ndomain = \"{DOMAIN}\"\n")));
    let remote = server.addr.to_string();
    let ours = common::our_scenarios();
    let (bob_port, carol_port, alice_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    for (user, port) in [("bob", bob_port), ("carol", carol_port)] {
        sipp_register(&remote, user, DOMAIN, port, &format!("REGISTER {user}"));
    }
    let bob = sipp(
        &testdata().join("sipp/message"),
        &["-sf", "uas.xml", "-p", &bob_port.to_string(), "-m", "1"].map(String::from),
    );
    let carol = sipp(
        &ours,
        &[
            "-sf",
            "call-uas-record-route.xml",
            "-p",
            &carol_port.to_string(),
            "-m",
            "1",
        ]
        .map(String::from),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));

    let config = tmp.path().join("baresip");
    write_baresip_config(&config, alice_port, &remote);
    let out = Command::new("timeout")
        .args(["30", "baresip", "-f"])
        .arg(&config)
        .args([
            "-e",
            "/message Hello Bob, this is baresip",
            "-e",
            &format!("/dial sip:carol@{DOMAIN}"),
            // Long enough to register, publish and talk; then it hangs up.
            "-t",
            "6",
        ])
        .output()
        .expect("run baresip");
    let baresip_log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "baresip failed:\n{baresip_log}");
    for (who, child) in [("bob (MESSAGE UAS)", bob), ("carol (call UAS)", carol)] {
        let result = child.wait_with_output().unwrap();
        assert!(
            result.status.success(),
            "SIPp {who} failed:\n{}\nbaresip:\n{baresip_log}",
            String::from_utf8_lossy(&result.stdout)
        );
    }
    server.stop();

    let registered = sql_rows(
        &data,
        "SELECT count(*) AS n FROM sip_messages WHERE status = 200 AND cseq_method = 'REGISTER' AND direction = 'out'",
    );
    if registered[0]["n"].as_i64().unwrap_or(0) < 3 {
        let exchange = sql_rows(
            &data,
            "SELECT direction, CAST(raw AS VARCHAR) AS raw FROM sip_messages WHERE cseq_method = 'REGISTER' ORDER BY time",
        );
        panic!(
            "alice (baresip), bob and carol registered: {registered:?}\nREGISTER exchange:\n{exchange:#?}\nbaresip:\n{baresip_log}"
        );
    }
    let ims = sql_rows(
        &data,
        "SELECT sender, body, delivery_status FROM im_messages",
    );
    assert!(
        ims.iter()
            .any(|r| r["sender"] == format!("sip:alice@{DOMAIN}")
                && r["body"] == "Hello Bob, this is baresip"
                && r["delivery_status"] == "delivered"),
        "baresip's IM to bob: {ims:?}\nbaresip:\n{baresip_log}"
    );
    let calls = sql_rows(&data, "SELECT caller, callee, disposition FROM calls");
    assert!(
        calls
            .iter()
            .any(|r| r["caller"] == format!("sip:alice@{DOMAIN}")
                && r["callee"] == format!("sip:carol@{DOMAIN}")
                && r["disposition"] == "answered"),
        "baresip's call to carol: {calls:?}\nbaresip:\n{baresip_log}"
    );
    let presence = sql_rows(&data, "SELECT entity, via FROM presence");
    assert!(
        presence
            .iter()
            .any(|r| r["entity"] == format!("sip:alice@{DOMAIN}") && r["via"] == "publish"),
        "baresip's published presence: {presence:?}\nbaresip:\n{baresip_log}"
    );
}
