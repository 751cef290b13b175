//! Chat-room fan-out load: MEMBERS built-in user agents register with a
//! running `sipvault serve`, POSTERS of them post POSTS messages in total to
//! one room (each poster waits for its post's 200 before the next), and
//! every member counts the copies it receives. Prints posts per second and
//! deliveries (copies received) per second. `bench/room-fanout.sh` sets up
//! the users, the room and the server around it.
//!
//! ```text
//! cargo run --release -p sipvault-server --example room_load -- \
//!     127.0.0.1:5060 fanout.test budget 100 5000 10
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_server::ua::UserAgent;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!(
            "usage: room_load SERVER DOMAIN ROOM MEMBERS POSTS POSTERS  ({what} missing or invalid)"
        );
        std::process::exit(2)
    })
}

/// Member `i`'s user name (the bench script adds the same names).
fn member(i: usize) -> String {
    format!("m{i:03}")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server: SocketAddr = arg(&args, 0, "SERVER");
    let domain: String = arg(&args, 1, "DOMAIN");
    let room: String = arg(&args, 2, "ROOM");
    let members: usize = arg(&args, 3, "MEMBERS");
    let posts: usize = arg(&args, 4, "POSTS");
    let posters: usize = arg::<usize>(&args, 5, "POSTERS").clamp(1, members);

    let mut agents = Vec::with_capacity(members);
    for i in 0..members {
        let mut ua = UserAgent::connect(Transport::Udp, server, &member(i), &domain, "pw")
            .await
            .expect("user agent");
        let code = ua.register(3600).await.expect("REGISTER");
        assert_eq!(code, 200, "{} could not register", member(i));
        agents.push(ua);
    }
    println!("{members} members registered");

    // Every agent drains its inbox: a full inbox would stall its answers.
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let listeners: Vec<UserAgent> = agents.split_off(posters);
    let mut drains = Vec::new();
    for mut ua in listeners {
        let (received, stop) = (received.clone(), stop.clone());
        drains.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                received.fetch_add(ua.received().len() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            received.fetch_add(ua.received().len() as u64, Ordering::Relaxed);
        }));
    }
    let uri = format!("sip:room-{room}@{domain}");
    let started = Instant::now();
    let mut senders = Vec::new();
    for (p, mut ua) in agents.into_iter().enumerate() {
        let (uri, received) = (uri.clone(), received.clone());
        let mine = posts / posters + usize::from(p < posts % posters);
        senders.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for n in 0..mine {
                match ua.message_to(&uri, &format!("post {p}-{n}")).await {
                    Ok(200) => ok += 1,
                    Ok(code) => eprintln!("post {p}-{n}: SIP {code}"),
                    Err(e) => eprintln!("post {p}-{n}: {e}"),
                }
                received.fetch_add(ua.received().len() as u64, Ordering::Relaxed);
            }
            (ok, ua)
        }));
    }
    let mut accepted = 0;
    let mut poster_agents = Vec::new();
    for s in senders {
        let (ok, ua) = s.await.expect("poster");
        accepted += ok;
        poster_agents.push(ua);
    }
    let posting = started.elapsed().as_secs_f64();
    let expected = accepted * (members as u64 - 1);
    // The last copies are still on their way when the last 200 arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for ua in poster_agents.iter_mut() {
            received.fetch_add(ua.received().len() as u64, Ordering::Relaxed);
        }
        if received.load(Ordering::Relaxed) >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for d in drains {
        let _ = d.await;
    }
    let got = received.load(Ordering::Relaxed);
    println!("posts accepted    {accepted} of {posts} ({posters} posters)");
    println!(
        "posting           {posting:.2} s = {:.0} posts/s",
        accepted as f64 / posting
    );
    println!("copies received   {got} of {expected}");
    println!(
        "fan-out           {total:.2} s = {:.0} deliveries/s",
        got as f64 / total
    );
}
