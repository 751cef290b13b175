//! `sipvault demo`: the whole product in one command. A server on free
//! loopback ports, built-in user agents over real UDP and TCP sockets, a
//! realistic set of IMs, a clean shutdown that seals the archive, then one
//! search and one SQL query over what was archived.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sipvault_catalog::RoomRole;
use sipvault_query::{OutputFormat, SearchRequest};
use sipvault_schemas::Transport;
use sipvault_server::ua::UserAgent;

use crate::config::Config;
use crate::pipeline::{Running, index_dir};

const DOMAIN: &str = "demo.sipvault.test";
const PASSWORD: &str = "demo-secret";

/// (from, to, text). `dave` never registers (480), `erin` does not exist (404).
const SCRIPT: &[(&str, &str, &str)] = &[
    (
        "alice",
        "bob",
        "Morning Bob, did you get a chance to look at the quarterly budget?",
    ),
    (
        "bob",
        "alice",
        "Yes. The travel line is 12% over; marketing is under.",
    ),
    (
        "alice",
        "bob",
        "Can you send me the revised budget spreadsheet before the 3pm review?",
    ),
    (
        "bob",
        "alice",
        "Sending it now. I also flagged the vendor contract renewal.",
    ),
    (
        "carol",
        "bob",
        "Bob, the launch plan slides need your numbers by Friday.",
    ),
    ("bob", "carol", "Will do. Is the launch still on the 14th?"),
    (
        "carol",
        "bob",
        "Yes, the 14th. Legal signed off on the press release this morning.",
    ),
    (
        "alice",
        "carol",
        "Lunch at noon? The new ramen place on Fifth.",
    ),
    ("carol", "alice", "Sounds good, see you in the lobby."),
    (
        "alice",
        "dave",
        "Dave, please call me about the audit findings when you are back.",
    ),
    ("bob", "erin", "Erin, are you joining the budget call?"),
    (
        "carol",
        "alice",
        "Reminder: expense reports for the offsite are due tomorrow.",
    ),
    (
        "alice",
        "bob",
        "Budget approved by finance. Thanks for the quick turnaround!",
    ),
];

/// Rooms: (name, topic, owner, members). Every registered demo user is in both.
const ROOMS: &[(&str, &str, &str, &[&str])] = &[
    ("budget", "Quarterly budget", "alice", &["bob", "carol"]),
    ("launch", "Product launch", "carol", &["alice", "bob"]),
];

/// Posts: (from, room, text).
const POSTS: &[(&str, &str, &str)] = &[
    (
        "alice",
        "budget",
        "Room, the revised budget is in the shared folder.",
    ),
    ("bob", "budget", "Travel is still 12% over; I will trim it."),
    (
        "carol",
        "launch",
        "Launch checklist: slides Friday, press release signed off.",
    ),
    ("alice", "launch", "Ramen after the launch review?"),
];

/// Creates the demo rooms (kept if they exist from an earlier run).
async fn create_rooms(data: &Path) -> anyhow::Result<()> {
    let catalog = sipvault_catalog::Catalog::open(data).await?;
    for (name, topic, owner, members) in ROOMS {
        let room = sipvault_catalog::Room {
            name: name.to_string(),
            domain: DOMAIN.into(),
            topic: topic.to_string(),
            category: Some("demo".into()),
            private: false,
            created_ns: 0,
        };
        match catalog.create_room(&room, "demo").await {
            Ok(_) => {}
            Err(sipvault_catalog::CatalogError::RoomExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        let roles = std::iter::once((owner, RoomRole::Owner))
            .chain(members.iter().map(|m| (m, RoomRole::Member)));
        for (user, role) in roles {
            catalog.add_room_member(name, user, role, "demo").await?;
        }
    }
    catalog.close().await;
    Ok(())
}

pub async fn run(data: Option<PathBuf>, config_path: Option<&Path>) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = match data {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "sipvault-demo-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        )),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let mut config = Config::load(config_path, &data)?;
    config.sip.domain = DOMAIN.into();
    println!("sipvault demo: data directory {}", data.display());

    for user in ["alice", "bob", "carol", "dave"] {
        match crate::add_user(&data, user, PASSWORD, DOMAIN).await {
            Ok(()) => {}
            Err(e) if format!("{e:#}").contains("already exists") => {}
            Err(e) => return Err(e),
        }
    }
    create_rooms(&data).await?;
    let running = Running::start(&data, &config, "127.0.0.1:0".parse()?).await?;
    running.refresh_users().await?;
    let (udp, tcp) = (running.server.udp_addr, running.server.tcp_addr);
    println!("server up: SIP over UDP {udp} and TCP {tcp}, domain {DOMAIN}");

    let traffic = exchange(udp, tcp).await;
    // Shut down even when the traffic failed, so the archive is sealed.
    running.shutdown().await?;
    let (sent, delivered) = traffic?;
    println!(
        "{sent} IMs and {} room posts sent, {delivered} delivered; server stopped, archive sealed\n",
        POSTS.len()
    );

    let hits = sipvault_query::search(
        &index_dir(&data),
        &SearchRequest {
            query: "budget".into(),
            limit: 10,
            ..Default::default()
        },
    )?;
    println!("$ sipvault search budget --data {}", data.display());
    print!(
        "{}",
        sipvault_query::format_hits(&hits, OutputFormat::Table)
    );
    if hits.is_empty() {
        bail!("the demo search found nothing: the archive or index is not working");
    }

    let sql = "SELECT sender, delivery_status, status, count(*) AS ims FROM im_messages GROUP BY sender, delivery_status, status ORDER BY sender, status";
    let batches = sipvault_query::run_sql(&data, sql).await?;
    println!("\n$ sipvault sql \"{sql}\" --data {}", data.display());
    print!(
        "{}",
        sipvault_query::format_batches(&batches, OutputFormat::Table)?
    );

    let d = data.display();
    println!("\nExplore further:");
    println!("  sipvault search '\"launch plan\" OR lunch' --data {d}");
    println!("  sipvault search budget --from alice --to bob --format json --data {d}");
    println!(
        "  sipvault sql \"SELECT time, method, status, src, dst FROM sip_messages ORDER BY time\" --data {d}"
    );
    println!("  sipvault room history budget --data {d}");
    println!("  sipvault search 'room:launch ramen' --data {d}");
    println!("  sipvault user list --data {d}");
    println!("  sipvault status --data {d}");
    println!("  sipvault import pcap capture.pcap --data {d}   # archive a capture file too");
    println!("  sipvault serve --data {d}     # then register a SIP client as alice / {PASSWORD}");
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Registers alice (UDP), bob (TCP) and carol (UDP), plays the script and
/// checks that every IM reached its recipient. Returns (sent, delivered).
async fn exchange(
    udp: std::net::SocketAddr,
    tcp: std::net::SocketAddr,
) -> anyhow::Result<(usize, usize)> {
    let mut agents = Vec::new();
    for (user, transport, server) in [
        ("alice", Transport::Udp, udp),
        ("bob", Transport::Tcp, tcp),
        ("carol", Transport::Udp, udp),
    ] {
        let mut ua = UserAgent::connect(transport, server, user, DOMAIN, PASSWORD).await?;
        let code = ua.register(600).await?;
        if code != 200 {
            bail!("{user} could not register: SIP {code}");
        }
        println!(
            "  {user} registered over {}",
            transport.as_str().to_uppercase()
        );
        agents.push((user, ua));
    }
    let mut delivered = 0;
    for (from, to, text) in SCRIPT {
        let ua = &mut agents
            .iter_mut()
            .find(|(u, _)| u == from)
            .context("script names an unknown sender")?
            .1;
        let code = ua.message(to, text).await?;
        let outcome = match code {
            200..=299 => {
                delivered += 1;
                "delivered".to_string()
            }
            480 => format!("{code} {to} is offline"),
            404 => format!("{code} {to} does not exist"),
            _ => format!("SIP {code}"),
        };
        println!("  {from} -> {to}: {outcome}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Room posts reach every other member; all three agents are in both rooms.
    let mut expected = delivered;
    for (from, room, text) in POSTS {
        let ua = &mut agents
            .iter_mut()
            .find(|(u, _)| u == from)
            .context("a post names an unknown sender")?
            .1;
        let code = ua
            .message_to(&format!("sip:room-{room}@{DOMAIN}"), text)
            .await?;
        if !(200..300).contains(&code) {
            bail!("{from}'s post to room {room} was refused: SIP {code}");
        }
        println!("  {from} -> room {room}: posted");
        expected += agents.len() - 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every delivered IM and room copy must have arrived at its agent.
    let mut received = 0;
    for (_, ua) in agents.iter_mut() {
        received += ua.received().len();
    }
    // Room copies are relayed after the post is answered: give them a moment.
    for _ in 0..50 {
        if received >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (_, ua) in agents.iter_mut() {
            received += ua.received().len();
        }
    }
    if received != expected {
        bail!("{expected} IMs and room copies were expected but agents received {received}");
    }
    for (_, ua) in agents {
        ua.close().await;
    }
    Ok((SCRIPT.len(), delivered))
}
