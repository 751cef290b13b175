//! HEP3 load generator for the collector benchmark (`bench/hep-ingest.sh`).
//!
//! Sends `COUNT` HEP3 packets carrying the fixed synthetic stream of
//! `sipvault_collector::synthetic` (IM exchanges and calls, each with its own
//! Call-ID, so the correlators have real work), over UDP at a fixed rate or
//! over one TCP connection as fast as the receiver accepts.
//!
//! ```text
//! cargo run --release -p sipvault-collector --example hep_load -- udp 127.0.0.1:9060 200000 50000
//! cargo run --release -p sipvault-collector --example hep_load -- tcp 127.0.0.1:9060 500000
//! ```

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use sipvault_collector::hep::encode_hep3;
use sipvault_collector::synthetic;

fn packet(i: u64) -> Vec<u8> {
    let m = synthetic::message(i);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    encode_hep3(
        m.src,
        m.dst,
        now.as_secs() as u32,
        now.subsec_micros(),
        2001,
        None,
        &m.raw,
    )
}

fn usage() -> ! {
    eprintln!("usage: hep_load udp ADDR COUNT RATE_PER_SEC | hep_load tcp ADDR COUNT");
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr), Some(count)) = (args.first(), args.get(1), args.get(2)) else {
        usage()
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let count: u64 = count.parse().unwrap_or_else(|_| usage());
    let started = Instant::now();
    match mode.as_str() {
        "udp" => {
            let rate: u64 = args
                .get(3)
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| usage());
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            // Pace in batches of 1 ms worth of packets.
            let per_ms = (rate / 1000).max(1);
            let mut sent = 0;
            while sent < count {
                for _ in 0..per_ms.min(count - sent) {
                    sock.send_to(&packet(sent), addr)?;
                    sent += 1;
                }
                let due = started + Duration::from_micros(sent * 1_000_000 / rate.max(1));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        "tcp" => {
            let mut stream =
                std::io::BufWriter::with_capacity(256 * 1024, TcpStream::connect(addr)?);
            for i in 0..count {
                stream.write_all(&packet(i))?;
            }
            stream.flush()?;
        }
        _ => usage(),
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {count} packets in {secs:.2} s ({:.0}/s)",
        count as f64 / secs
    );
    Ok(())
}
