//! Chat-room fan-out load: MEMBERS built-in user agents register with a
//! running `sipvault serve`, POSTERS of them post POSTS messages in total to
//! one room (each poster waits for its post's 200 before the next), and
//! every member counts the posts it receives. Prints posts per second,
//! deliveries (post copies received by members) per second, and whether
//! every member got every post. `bench/room-fanout.sh` sets up the users,
//! the room and the server around it.
//!
//! MODE `subscribe` (the default): every member also SUBSCRIBEs to the room
//! (`Event: chat-room`) and gets the posts, its own included, in NOTIFYs
//! (answered 200 by the agent; one NOTIFY may carry several `<post>`
//! elements). MODE `message`: members only register and get each other
//! member's post as a MESSAGE copy.
//!
//! ```text
//! cargo run --release -p sipvault-server --example room_load -- \
//!     127.0.0.1:5060 fanout.test budget 100 5000 10 subscribe
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;
use sipvault_server::rooms::CHAT_ROOM_EVENT;
use sipvault_server::ua::UserAgent;

const USAGE: &str = "usage: room_load SERVER DOMAIN ROOM MEMBERS POSTS POSTERS [subscribe|message]";

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("{USAGE}  ({what} missing or invalid)");
        std::process::exit(2)
    })
}

/// Member `i`'s user name (the bench script adds the same names).
fn member(i: usize) -> String {
    format!("m{i:03}")
}

/// How members get the posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A `chat-room` subscription: posts in NOTIFYs, the poster's own too.
    Subscribe,
    /// Registered only: each other member's post as a MESSAGE copy.
    Message,
}

/// Posts that reached `ua` since the last look: `<post>` elements of its
/// NOTIFYs, or MESSAGE copies.
fn take_posts(ua: &mut UserAgent, mode: Mode) -> u64 {
    match mode {
        Mode::Subscribe => ua
            .notifies()
            .iter()
            .map(|n| n.body.matches("<post ").count() as u64)
            .sum(),
        Mode::Message => ua.received().len() as u64,
    }
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
    let mode = match args.get(6).map(String::as_str) {
        None | Some("subscribe") => Mode::Subscribe,
        Some("message") => Mode::Message,
        Some(other) => {
            eprintln!("{USAGE}  (unknown mode {other})");
            std::process::exit(2)
        }
    };
    let uri = format!("sip:room-{room}@{domain}");

    let mut agents = Vec::with_capacity(members);
    for i in 0..members {
        let mut ua = UserAgent::connect(Transport::Udp, server, &member(i), &domain, "pw")
            .await
            .expect("user agent");
        let code = ua.register(3600).await.expect("REGISTER");
        assert_eq!(code, 200, "{} could not register", member(i));
        if mode == Mode::Subscribe {
            let code = ua
                .subscribe(&uri, CHAT_ROOM_EVENT, 3600)
                .await
                .expect("SUBSCRIBE");
            assert_eq!(code, 200, "{} could not subscribe", member(i));
        }
        agents.push(ua);
    }
    println!("{members} members registered ({mode:?} mode)");

    // Posts received, per member. Every agent drains its inboxes: a full
    // inbox would lose what it answered.
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..members).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let listeners: Vec<UserAgent> = agents.split_off(posters);
    let mut drains = Vec::new();
    for (i, mut ua) in listeners.into_iter().enumerate() {
        let (counts, stop) = (counts.clone(), stop.clone());
        let me = posters + i;
        drains.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                counts[me].fetch_add(take_posts(&mut ua, mode), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            counts[me].fetch_add(take_posts(&mut ua, mode), Ordering::Relaxed);
        }));
    }
    let started = Instant::now();
    let mut senders = Vec::new();
    for (p, mut ua) in agents.into_iter().enumerate() {
        let (uri, counts) = (uri.clone(), counts.clone());
        let mine = posts / posters + usize::from(p < posts % posters);
        senders.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for n in 0..mine {
                match ua.message_to(&uri, &format!("post {p}-{n}")).await {
                    Ok(200) => ok += 1,
                    Ok(code) => eprintln!("post {p}-{n}: SIP {code}"),
                    Err(e) => eprintln!("post {p}-{n}: {e}"),
                }
                counts[p].fetch_add(take_posts(&mut ua, mode), Ordering::Relaxed);
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
    // Subscribers get every post, their own too; MESSAGE copies go to
    // every member but the poster.
    let per_member = accepted;
    let expected = match mode {
        Mode::Subscribe => per_member * members as u64,
        Mode::Message => accepted * (members as u64 - 1),
    };
    let received =
        |counts: &[AtomicU64]| -> u64 { counts.iter().map(|c| c.load(Ordering::Relaxed)).sum() };
    // The last posts are still on their way when the last 200 arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (p, ua) in poster_agents.iter_mut().enumerate() {
            counts[p].fetch_add(take_posts(ua, mode), Ordering::Relaxed);
        }
        if received(&counts) >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for d in drains {
        let _ = d.await;
    }
    let got = received(&counts);
    println!("posts accepted    {accepted} of {posts} ({posters} posters)");
    println!(
        "posting           {posting:.2} s = {:.0} posts/s",
        accepted as f64 / posting
    );
    println!("posts received    {got} of {expected}");
    println!(
        "fan-out           {total:.2} s = {:.0} deliveries/s",
        got as f64 / total
    );
    match mode {
        Mode::Subscribe => {
            let complete = counts
                .iter()
                .filter(|c| c.load(Ordering::Relaxed) == per_member)
                .count();
            println!("members complete  {complete} of {members} got every post exactly once");
        }
        Mode::Message => {}
    }
}
