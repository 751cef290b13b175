//! A stopping server archives what reached it before the stop: datagrams
//! still queued on its UDP socket are tapped, not dropped.

use sipvault_schemas::{CapturedMessage, Direction};
use sipvault_server::{Server, ServerConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams sent in one burst just before the stop.
const BURST: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_queued_at_shutdown_are_all_archived() {
    let (tap_tx, mut tap) = mpsc::channel::<CapturedMessage>(BURST * 4);
    let config = ServerConfig {
        sip_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::start(config, tap_tx).await.expect("server start");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let from = peer.local_addr().unwrap();
    for n in 0..BURST {
        // Answers to nothing the server sent: stray, but received.
        let response = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-stray-{n}\r\n\
             From: <sip:a@shutdown.test>;tag=a\r\nTo: <sip:b@shutdown.test>;tag=b\r\n\
             Call-ID: stray-{n}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        peer.send_to(response.as_bytes(), server.udp_addr)
            .await
            .unwrap();
    }
    // On loopback a datagram is in the server's socket queue once send_to
    // has returned: the stop comes after every one arrived.
    server.shutdown().await;
    let mut archived = 0;
    while let Ok(msg) = tap.try_recv() {
        if msg.direction == Direction::In && msg.src == from {
            archived += 1;
        }
    }
    assert_eq!(
        archived, BURST,
        "every datagram received before the stop is archived"
    );
}
