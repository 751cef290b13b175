use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::*;
use crate::hep::{encode_hep3, encode_hep3_typed, proto_type};

const SIP: &[u8] = b"MESSAGE sip:bob@example.com SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
const RTCP: &[u8] = &[0x81, 0xc8, 0x00, 0x0c, 1, 2, 3, 4];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn sip_packet(capture_id: u32, key: Option<&str>) -> Vec<u8> {
    encode_hep3(
        addr("10.0.0.1:5060"),
        addr("10.0.0.2:5060"),
        1_700_000_000,
        250_000,
        capture_id,
        key,
        SIP,
    )
}

#[test]
fn sip_payload_becomes_a_captured_message_with_the_agent_as_source() {
    let Ok(Ingested::Sip(msg)) = ingest(&sip_packet(2001, None), None, 65_535, 7) else {
        panic!("a SIP HEP packet must be ingested as SIP");
    };
    assert_eq!(msg.source, "hep:2001");
    assert_eq!(msg.time_ns, 1_700_000_000_250_000_000);
    assert_eq!(msg.src, addr("10.0.0.1:5060"));
    assert_eq!(msg.raw, SIP);
}

#[test]
fn rtcp_and_log_payloads_go_to_the_raw_table() {
    for (ty, payload) in [
        (proto_type::RTCP, RTCP),
        (proto_type::LOG, b"log line".as_slice()),
    ] {
        let packet = encode_hep3_typed(
            addr("10.0.0.1:7078"),
            addr("10.0.0.2:7079"),
            1_700_000_000,
            0,
            7,
            None,
            ty,
            payload,
        );
        let Ok(Ingested::Raw(row)) = ingest(&packet, None, 65_535, 0) else {
            panic!("proto type {ty} must go to hep_raw");
        };
        assert_eq!(
            (row.proto_type, row.source.as_str(), row.payload.as_slice()),
            (ty, "hep:7", payload)
        );
        assert_eq!(row.src, "10.0.0.1:7078");
    }
}

#[test]
fn wrong_or_missing_auth_key_is_refused_when_a_key_is_configured() {
    let key = Some("s3cret");
    assert!(matches!(
        ingest(&sip_packet(1, Some("s3cret")), key, 65_535, 0),
        Ok(Ingested::Sip(_))
    ));
    assert_eq!(
        ingest(&sip_packet(1, Some("guess")), key, 65_535, 0),
        Err(IngestError::AuthKey)
    );
    assert_eq!(
        ingest(&sip_packet(1, None), key, 65_535, 0),
        Err(IngestError::AuthKey)
    );
    // Without a configured key, any key (or none) is accepted.
    assert!(matches!(
        ingest(&sip_packet(1, Some("guess")), None, 65_535, 0),
        Ok(Ingested::Sip(_))
    ));
}

#[test]
fn empty_payload_is_a_keepalive_and_garbage_is_an_error() {
    let empty = encode_hep3(
        addr("10.0.0.1:5060"),
        addr("10.0.0.2:5060"),
        1,
        0,
        1,
        None,
        b"",
    );
    assert_eq!(ingest(&empty, None, 65_535, 0), Ok(Ingested::Empty));
    assert!(matches!(
        ingest(b"GET / HTTP/1.1\r\n", None, 65_535, 0),
        Err(IngestError::Decode(_))
    ));
    let mut cut = sip_packet(1, None);
    cut.truncate(20);
    assert!(matches!(
        ingest(&cut, None, 65_535, 0),
        Err(IngestError::Decode(_))
    ));
}

struct Harness {
    listener: HepListener,
    sip_rx: mpsc::Receiver<CapturedMessage>,
    raw_rx: mpsc::Receiver<HepRawRow>,
}

async fn start(config: HepListenerConfig) -> Harness {
    let (sip_tx, sip_rx) = mpsc::channel(1024);
    let (raw_tx, raw_rx) = mpsc::channel(1024);
    let listener = HepListener::start(
        HepListenerConfig {
            addr: addr("127.0.0.1:0"),
            ..config
        },
        HepSinks {
            sip: sip_tx,
            raw: raw_tx,
        },
    )
    .await
    .expect("bind on loopback");
    Harness {
        listener,
        sip_rx,
        raw_rx,
    }
}

async fn recv<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("nothing arrived within 5 s")
        .expect("channel closed")
}

#[tokio::test]
async fn udp_packets_reach_the_collector_and_bad_ones_are_counted() {
    let mut h = start(HepListenerConfig {
        auth_key: Some("k".into()),
        ..HepListenerConfig::default()
    })
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = h.listener.udp_addr;
    sock.send_to(b"\x00garbage", to).await.unwrap();
    sock.send_to(&sip_packet(5, Some("wrong")), to)
        .await
        .unwrap();
    let rtcp = encode_hep3_typed(
        addr("10.0.0.1:7078"),
        addr("10.0.0.2:7079"),
        1,
        0,
        5,
        Some("k"),
        proto_type::RTCP,
        RTCP,
    );
    sock.send_to(&rtcp, to).await.unwrap();
    sock.send_to(&sip_packet(5, Some("k")), to).await.unwrap();
    assert_eq!(recv(&mut h.sip_rx).await.source, "hep:5");
    assert_eq!(recv(&mut h.raw_rx).await.proto_type, proto_type::RTCP);
    let stats = &h.listener.stats;
    assert_eq!(stats.decode_errors.load(Ordering::Relaxed), 1);
    assert_eq!(stats.auth_failures.load(Ordering::Relaxed), 1);
    assert_eq!(stats.packets.load(Ordering::Relaxed), 4);
    h.listener.shutdown().await;
}

#[tokio::test]
async fn tcp_stream_is_framed_across_writes_and_a_desynced_stream_is_closed() {
    let mut h = start(HepListenerConfig::default()).await;
    assert_eq!(h.listener.tcp_addr, h.listener.udp_addr);
    let mut stream = TcpStream::connect(h.listener.tcp_addr).await.unwrap();
    // Three packets written as one buffer cut at awkward places.
    let all: Vec<u8> = (1..=3).flat_map(|id| sip_packet(id, None)).collect();
    for part in [&all[..3], &all[3..50], &all[50..]] {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 1..=3 {
        assert_eq!(recv(&mut h.sip_rx).await.source, format!("hep:{id}"));
    }
    // Garbage desyncs the stream: the listener closes that connection only.
    stream.write_all(b"NOT HEP AT ALL").await.unwrap();
    let mut closed = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut closed),
    )
    .await
    .expect("connection must be closed after a framing error");
    assert!(matches!(n, Ok(0) | Err(_)));
    let mut other = TcpStream::connect(h.listener.tcp_addr).await.unwrap();
    other.write_all(&sip_packet(9, None)).await.unwrap();
    assert_eq!(recv(&mut h.sip_rx).await.source, "hep:9");
    assert!(h.listener.stats.decode_errors.load(Ordering::Relaxed) >= 1);
    h.listener.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_over_the_limit_are_refused_and_counted() {
    let mut h = start(HepListenerConfig {
        max_tcp_connections: 2,
        ..HepListenerConfig::default()
    })
    .await;
    let mut held = Vec::new();
    for id in 1..=2 {
        let mut s = TcpStream::connect(h.listener.tcp_addr).await.unwrap();
        s.write_all(&sip_packet(id, None)).await.unwrap();
        // Proves the connection was accepted and is being served.
        recv(&mut h.sip_rx).await;
        held.push(s);
    }
    let mut third = TcpStream::connect(h.listener.tcp_addr).await.unwrap();
    let _ = third.write_all(&sip_packet(3, None)).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await
    .expect("the refused connection must be closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(h.listener.stats.tcp_rejected.load(Ordering::Relaxed), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), h.sip_rx.recv())
            .await
            .is_err(),
        "nothing from a refused connection may be archived"
    );
    h.listener.shutdown().await;
}

#[tokio::test]
async fn idle_tcp_sender_is_disconnected() {
    let h = start(HepListenerConfig {
        tcp_idle_timeout: Duration::from_millis(200),
        ..HepListenerConfig::default()
    })
    .await;
    let mut s = TcpStream::connect(h.listener.tcp_addr).await.unwrap();
    // Half a packet, then silence.
    s.write_all(&sip_packet(1, None)[..10]).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("an idle sender must be disconnected");
    assert!(matches!(n, Ok(0) | Err(_)));
    h.listener.shutdown().await;
}
