//! HEP collector socket: receives HEP v1/v2/v3 from other SIP servers and
//! capture agents (Kamailio `siptrace`, heplify, sngrep `-H`, FreeSWITCH,
//! Asterisk `res_hep`) over UDP and TCP on one address, and hands SIP
//! payloads to the archive pipeline and everything else (RTCP, logs) to the
//! `hep_raw` table.
//!
//! The per-packet decision is [`ingest`] (sans-IO, tested without sockets);
//! this module's tasks only move bytes. The channels to the collector are
//! bounded: when the archive falls behind, the UDP task stops reading (the
//! kernel buffer then drops, as it would for any UDP collector) and TCP
//! senders are slowed down by TCP flow control. Nothing is dropped inside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sipvault_schemas::{CapturedMessage, HepRawRow};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::hep::{self, HepError, HepStreamDecoder};

#[derive(Debug, Clone)]
pub struct HepListenerConfig {
    /// UDP and TCP address; port 0 picks a free port (same for both when possible).
    pub addr: SocketAddr,
    /// When set, packets must carry this key in chunk 0x000e; others are
    /// dropped and counted.
    pub auth_key: Option<String>,
    /// Bound on a decoded payload (also the inflate limit for chunk 0x0010).
    pub max_payload: usize,
    pub max_tcp_connections: usize,
    /// A TCP sender that sends nothing for this long is disconnected.
    pub tcp_idle_timeout: Duration,
    /// Requested UDP receive buffer (SO_RCVBUF): bursts wait in the kernel
    /// instead of being dropped while the archive seals a segment. The
    /// kernel caps it at `net.core.rmem_max`; the granted size is logged.
    pub udp_recv_buffer: usize,
}

impl Default for HepListenerConfig {
    fn default() -> Self {
        HepListenerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9060)),
            auth_key: None,
            max_payload: 64 * 1024,
            max_tcp_connections: 1024,
            tcp_idle_timeout: Duration::from_secs(300),
            udp_recv_buffer: 8 << 20,
        }
    }
}

/// Counters of the listener, readable while it runs.
#[derive(Debug, Default)]
pub struct HepStats {
    pub packets: AtomicU64,
    pub sip: AtomicU64,
    pub raw: AtomicU64,
    /// Packets with nothing to archive (empty payload keep-alives).
    pub empty: AtomicU64,
    pub auth_failures: AtomicU64,
    pub decode_errors: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub tcp_rejected: AtomicU64,
    tcp_open: AtomicUsize,
}

impl HepStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("packets", get(&self.packets)),
            ("sip", get(&self.sip)),
            ("raw", get(&self.raw)),
            ("empty", get(&self.empty)),
            ("auth_failures", get(&self.auth_failures)),
            ("decode_errors", get(&self.decode_errors)),
            ("tcp_connections", get(&self.tcp_connections)),
            ("tcp_rejected", get(&self.tcp_rejected)),
        ]
    }
}

/// What one HEP packet becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Sip(CapturedMessage),
    Raw(HepRawRow),
    /// Valid, but nothing to archive (an empty payload).
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Decode(#[from] HepError),
    #[error("HEP auth key missing or wrong")]
    AuthKey,
}

/// Decodes one packet and decides where it goes. `now_ns` stands in for a
/// capture time the packet does not carry.
pub fn ingest(
    bytes: &[u8],
    auth_key: Option<&str>,
    max_payload: usize,
    now_ns: i64,
) -> Result<Ingested, IngestError> {
    let packet = hep::decode(bytes, max_payload)?;
    if let Some(key) = auth_key
        && packet.auth_key.as_deref() != Some(key)
    {
        return Err(IngestError::AuthKey);
    }
    if let Some(msg) = packet.to_captured(now_ns) {
        return Ok(Ingested::Sip(msg));
    }
    Ok(match packet.to_raw_row(now_ns) {
        Some(row) => Ingested::Raw(row),
        None => Ingested::Empty,
    })
}

/// Where ingested packets go.
#[derive(Clone)]
pub struct HepSinks {
    pub sip: mpsc::Sender<CapturedMessage>,
    pub raw: mpsc::Sender<HepRawRow>,
}

/// A running listener; dropping it does not stop it, [`HepListener::shutdown`] does.
pub struct HepListener {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub stats: Arc<HepStats>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HEP on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl HepListener {
    pub async fn start(config: HepListenerConfig, sinks: HepSinks) -> Result<Self, BindError> {
        let bind_err = |addr| move |source| BindError { addr, source };
        let udp = bind_udp(config.addr, config.udp_recv_buffer).map_err(bind_err(config.addr))?;
        let udp_addr = udp.local_addr().map_err(bind_err(config.addr))?;
        // Port 0: take the port UDP got, so one address serves both.
        let tcp_bind = if config.addr.port() == 0 {
            udp_addr
        } else {
            config.addr
        };
        let tcp = TcpListener::bind(tcp_bind)
            .await
            .map_err(bind_err(tcp_bind))?;
        let tcp_addr = tcp.local_addr().map_err(bind_err(tcp_bind))?;
        let stats = Arc::new(HepStats::default());
        let config = Arc::new(config);
        let tasks = vec![
            tokio::spawn(udp_loop(udp, config.clone(), sinks.clone(), stats.clone())),
            tokio::spawn(accept_loop(tcp, config, sinks, stats.clone())),
        ];
        Ok(HepListener {
            udp_addr,
            tcp_addr,
            stats,
            tasks,
        })
    }

    /// Stops receiving. Packets already handed to the collector are kept.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %e, requested = recv_buffer, "could not set the HEP UDP receive buffer");
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the usable size; below the request means rmem_max capped it.
    if granted < recv_buffer {
        tracing::info!(
            requested = recv_buffer,
            granted,
            "HEP UDP receive buffer capped by net.core.rmem_max; raise it for bursty agents"
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Counts and forwards one packet. Returns false when the collector is gone.
async fn deliver(
    bytes: &[u8],
    peer: SocketAddr,
    config: &HepListenerConfig,
    sinks: &HepSinks,
    stats: &HepStats,
) -> bool {
    stats.packets.fetch_add(1, Ordering::Relaxed);
    match ingest(
        bytes,
        config.auth_key.as_deref(),
        config.max_payload,
        now_ns(),
    ) {
        Ok(Ingested::Sip(msg)) => {
            stats.sip.fetch_add(1, Ordering::Relaxed);
            sinks.sip.send(msg).await.is_ok()
        }
        Ok(Ingested::Raw(row)) => {
            stats.raw.fetch_add(1, Ordering::Relaxed);
            sinks.raw.send(row).await.is_ok()
        }
        Ok(Ingested::Empty) => {
            stats.empty.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(IngestError::AuthKey) => {
            let n = stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            // First and then every 1000th: a misconfigured agent must not flood the log.
            if n.is_multiple_of(1000) {
                tracing::warn!(%peer, dropped = n + 1, "HEP packet with a missing or wrong auth key dropped");
            }
            true
        }
        Err(IngestError::Decode(e)) => {
            let n = stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(%peer, error = %e, dropped = n + 1, "undecodable HEP packet dropped");
            }
            true
        }
    }
}

async fn udp_loop(
    udp: UdpSocket,
    config: Arc<HepListenerConfig>,
    sinks: HepSinks,
    stats: Arc<HepStats>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems; the socket stays usable.
                tracing::debug!(error = %e, "hep udp receive error");
                continue;
            }
        };
        if !deliver(&buf[..n], peer, &config, &sinks, &stats).await {
            return;
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    config: Arc<HepListenerConfig>,
    sinks: HepSinks,
    stats: Arc<HepStats>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "hep tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if stats.tcp_open.load(Ordering::Relaxed) >= config.max_tcp_connections {
            let n = stats.tcp_rejected.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(%peer, limit = config.max_tcp_connections, "HEP TCP connection refused: connection limit reached");
            }
            drop(stream);
            continue;
        }
        stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let (config, sinks, stats) = (config.clone(), sinks.clone(), stats.clone());
        tokio::spawn(async move {
            tcp_connection(stream, peer, &config, &sinks, &stats).await;
            stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &HepListenerConfig,
    sinks: &HepSinks,
    stats: &HepStats,
) {
    let span = tracing::debug_span!("hep_tcp", %peer);
    let _enter = span.enter();
    // A HEP3 packet carries at most 65 535 bytes, header included.
    let mut framer = HepStreamDecoder::new(hep::HEP3_MAX_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(config.tcp_idle_timeout, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "hep tcp read failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "HEP TCP sender idle; closing the connection");
                return;
            }
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_packet() {
                Ok(Some(packet)) => {
                    if !deliver(&packet, peer, config, sinks, stats).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "HEP TCP stream out of sync; closing the connection");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
