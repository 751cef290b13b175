//! Tokio transports around the sans-IO core: one UDP socket and one TCP
//! listener on the same address, one task per TCP connection, and one task
//! that owns the [`Core`] and carries out its transmits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sipvault_schemas::{CapturedMessage, Direction, Transport};
use sipvault_sip::{StreamFramer, error_response_for_unparsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::{Core, CoreConfig, Event, Transmit, UserCredentials};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address for both UDP and TCP; port 0 picks a free port (the same one for both).
    pub sip_addr: SocketAddr,
    pub core: CoreConfig,
    /// Datagrams and stream messages larger than this are dropped.
    pub max_message_bytes: usize,
    /// A TCP peer that stops halfway through a message is disconnected after this.
    pub tcp_message_timeout: Duration,
    /// An idle TCP connection is closed after this.
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
    /// UDP receive buffer to ask the kernel for (SO_RCVBUF, capped by
    /// net.core.rmem_max): bursts wait in the kernel instead of being dropped.
    pub udp_recv_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            sip_addr: SocketAddr::from(([127, 0, 0, 1], 5060)),
            core: CoreConfig::default(),
            max_message_bytes: 16 * 1024,
            tcp_message_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(3600),
            udp_recv_buffer: 4 << 20,
            max_tcp_connections: 4096,
        }
    }
}

/// Counters of the transports, readable while the server runs.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub datagrams_in: AtomicU64,
    pub stream_messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub oversize_dropped: AtomicU64,
    pub framing_errors: AtomicU64,
    pub tcp_timeouts: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub send_errors: AtomicU64,
    pub tap_dropped: AtomicU64,
    pub tcp_open: AtomicUsize,
}

impl ServerStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 10] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("datagrams_in", get(&self.datagrams_in)),
            ("stream_messages_in", get(&self.stream_messages_in)),
            ("messages_out", get(&self.messages_out)),
            ("oversize_dropped", get(&self.oversize_dropped)),
            ("framing_errors", get(&self.framing_errors)),
            ("tcp_timeouts", get(&self.tcp_timeouts)),
            ("tcp_refused", get(&self.tcp_refused)),
            ("send_errors", get(&self.send_errors)),
            ("tap_dropped", get(&self.tap_dropped)),
            ("tcp_open", self.tcp_open.load(Ordering::Relaxed) as u64),
        ]
    }

    pub fn summary(&self) -> String {
        self.snapshot()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Copies every message in and out to the archive channel. When the channel
/// is full the copy is counted as dropped rather than stalling signalling.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<CapturedMessage>,
    stats: Arc<ServerStats>,
}

impl Tap {
    fn capture(
        &self,
        direction: Direction,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
    ) {
        let time_ns = chrono_now_ns();
        let msg = CapturedMessage {
            time_ns,
            source: "tap".into(),
            direction,
            transport,
            src,
            dst,
            raw: raw.to_vec(),
        };
        if self.tx.try_send(msg).is_err() {
            let n = self.stats.tap_dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "archive channel full or closed: message not archived"
                );
            }
        }
    }
}

fn chrono_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

enum Inbound {
    Message {
        transport: Transport,
        peer: SocketAddr,
        bytes: Vec<u8>,
    },
    Users(HashMap<String, UserCredentials>),
}

#[derive(Clone)]
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
}

type Conns = Arc<Mutex<HashMap<SocketAddr, Conn>>>;

struct Shared {
    config: ServerConfig,
    stats: Arc<ServerStats>,
    tap: Tap,
    inbound: mpsc::Sender<Inbound>,
    conns: Conns,
    shutdown: watch::Receiver<bool>,
    tcp_local: SocketAddr,
}

/// Updates the registrar's user directory of a running server.
#[derive(Clone)]
pub struct UserDirectory {
    tx: mpsc::Sender<Inbound>,
}

impl UserDirectory {
    pub async fn replace(&self, users: HashMap<String, UserCredentials>) {
        let _ = self.tx.send(Inbound::Users(users)).await;
    }
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    users: mpsc::Sender<Inbound>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds UDP and TCP and starts serving. Every message in and out goes to `tap`.
    pub async fn start(
        config: ServerConfig,
        tap: mpsc::Sender<CapturedMessage>,
    ) -> Result<Server, ServerError> {
        let (udp, tcp) = bind_pair(config.sip_addr).await?;
        set_udp_recv_buffer(&udp, config.udp_recv_buffer);
        let udp_addr = udp.local_addr().map_err(|source| ServerError::Bind {
            addr: config.sip_addr,
            source,
        })?;
        let tcp_addr = tcp.local_addr().map_err(|source| ServerError::Bind {
            addr: config.sip_addr,
            source,
        })?;
        let stats = Arc::new(ServerStats::default());
        let (inbound_tx, inbound_rx) = mpsc::channel(4096);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: config.clone(),
            stats: stats.clone(),
            tap: Tap {
                tx: tap,
                stats: stats.clone(),
            },
            inbound: inbound_tx.clone(),
            conns: Arc::new(Mutex::new(HashMap::new())),
            shutdown: shutdown_rx,
            tcp_local: tcp_addr,
        });
        let udp = Arc::new(udp);
        let mut core = Core::new(config.core.clone());
        core.set_local_addr(Transport::Udp, udp_addr);
        core.set_local_addr(Transport::Tcp, tcp_addr);
        let tasks = vec![
            tokio::spawn(udp_loop(udp.clone(), shared.clone())),
            tokio::spawn(tcp_accept_loop(tcp, shared.clone())),
            tokio::spawn(core_loop(core, inbound_rx, udp, shared)),
        ];
        Ok(Server {
            udp_addr,
            tcp_addr,
            stats,
            users: inbound_tx,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// A handle that replaces the users the registrar knows.
    pub fn user_directory(&self) -> UserDirectory {
        UserDirectory {
            tx: self.users.clone(),
        }
    }

    /// Stops every task; when this returns the tap sender is dropped, so the
    /// archive sees the end of the stream.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        drop(self.users);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Asks for a larger UDP receive buffer; the kernel may grant less
/// (net.core.rmem_max), which is logged, never fatal.
pub fn set_udp_recv_buffer(udp: &UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(udp);
    if let Err(e) = sock.set_recv_buffer_size(bytes) {
        tracing::warn!(error = %e, requested = bytes, "could not set the UDP receive buffer");
    }
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < bytes {
        tracing::info!(
            requested = bytes,
            granted,
            "UDP receive buffer capped by net.core.rmem_max; raise it for bursty traffic"
        );
    }
}

/// UDP and TCP on the same port, even when the caller asked for port 0.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(err)?;
        let tcp = TcpListener::bind(addr).await.map_err(err)?;
        return Ok((udp, tcp));
    }
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await.map_err(err)?;
        let port = udp.local_addr().map_err(err)?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(err(
        last.unwrap_or_else(|| std::io::Error::other("no free port"))
    ))
}

async fn udp_loop(udp: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let local = udp.local_addr().unwrap_or_else(|_| shared.config.sip_addr);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = tokio::select! {
            r = udp.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP port unreachable from an earlier send shows up here on Linux.
                Err(e) => { tracing::debug!(error = %e, "udp receive error"); continue; }
            },
            _ = shutdown.changed() => break,
        };
        shared.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        if n > shared.config.max_message_bytes {
            let dropped = shared
                .stats
                .oversize_dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(%peer, bytes = n, limit = shared.config.max_message_bytes, dropped, "dropped oversize datagram");
            continue;
        }
        let bytes = buf[..n].to_vec();
        shared
            .tap
            .capture(Direction::In, Transport::Udp, peer, local, &bytes);
        if shared
            .inbound
            .send(Inbound::Message {
                transport: Transport::Udp,
                peer,
                bytes,
            })
            .await
            .is_err()
        {
            break;
        }
    }
}

async fn tcp_accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "tcp accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => break,
        };
        if shared.stats.tcp_open.load(Ordering::Relaxed) >= shared.config.max_tcp_connections {
            let refused = shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, limit = shared.config.max_tcp_connections, refused, "tcp connection limit reached: refusing connection");
            drop(stream);
            continue;
        }
        let (tx, rx) = mpsc::channel(256);
        shared
            .conns
            .lock()
            .expect("conns lock")
            .insert(peer, Conn { tx });
        tokio::spawn(connection(stream, peer, rx, shared.clone(), None));
    }
}

/// One TCP connection, accepted or opened by us: frames incoming bytes by
/// Content-Length and writes what the core sends to this peer.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut out: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    first: Option<Vec<u8>>,
) {
    shared.stats.tcp_open.fetch_add(1, Ordering::Relaxed);
    let local = stream.local_addr().unwrap_or(shared.tcp_local);
    let (mut rd, mut wr) = stream.into_split();
    let mut shutdown = shared.shutdown.clone();
    let mut framer = StreamFramer::new(shared.config.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    if let Some(bytes) = first
        && wr.write_all(&bytes).await.is_ok()
    {
        shared
            .tap
            .capture(Direction::Out, Transport::Tcp, local, peer, &bytes);
    }
    'conn: loop {
        let wait = if framer.buffered() > 0 {
            shared.config.tcp_message_timeout
        } else {
            shared.config.tcp_idle_timeout
        };
        tokio::select! {
            r = tokio::time::timeout(wait, rd.read(&mut buf)) => {
                let n = match r {
                    Err(_) => {
                        shared.stats.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, buffered = framer.buffered(), "tcp peer stalled: closing connection");
                        break;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_message() {
                        Ok(Some(msg)) => {
                            shared.stats.stream_messages_in.fetch_add(1, Ordering::Relaxed);
                            shared.tap.capture(Direction::In, Transport::Tcp, peer, local, &msg);
                            if shared.inbound.send(Inbound::Message { transport: Transport::Tcp, peer, bytes: msg }).await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Answer the unframeable request if it can be
                            // answered, flush responses to the requests
                            // already accepted on this connection, then close.
                            if let Some(resp) = framer.failed_head().and_then(|head| {
                                error_response_for_unparsed(head, 400, "Bad Request")
                            })
                                && wr.write_all(&resp).await.is_ok() {
                                    shared.tap.capture(Direction::Out, Transport::Tcp, local, peer, &resp);
                                }
                            flush_pending(&mut out, &mut wr, &shared, local, peer).await;
                            shared.stats.framing_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, error = %e, "unrecoverable stream framing error: closing connection");
                            break 'conn;
                        }
                    }
                }
            }
            bytes = out.recv() => {
                let Some(bytes) = bytes else { break };
                if let Err(e) = wr.write_all(&bytes).await {
                    shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "tcp write failed");
                    break;
                }
                shared.tap.capture(Direction::Out, Transport::Tcp, local, peer, &bytes);
            }
            _ = shutdown.changed() => break,
        }
    }
    shared.conns.lock().expect("conns lock").remove(&peer);
    shared.stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
}

/// Writes what the core still sends to a connection that is about to close,
/// until it has been quiet for a moment.
async fn flush_pending(
    out: &mut mpsc::Receiver<Vec<u8>>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
    local: SocketAddr,
    peer: SocketAddr,
) {
    while let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(200), out.recv()).await {
        if wr.write_all(&bytes).await.is_err() {
            break;
        }
        shared
            .tap
            .capture(Direction::Out, Transport::Tcp, local, peer, &bytes);
    }
}

async fn core_loop(
    mut core: Core,
    mut inbound: mpsc::Receiver<Inbound>,
    udp: Arc<UdpSocket>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    let udp_local = udp.local_addr().unwrap_or(shared.config.sip_addr);
    loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            input = inbound.recv() => match input {
                Some(Inbound::Message { transport, peer, bytes }) => core.handle_message(Instant::now(), transport, peer, &bytes),
                Some(Inbound::Users(users)) => core.set_users(users),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
            _ = shutdown.changed() => break,
        }
        while let Some(t) = core.poll_transmit() {
            send(&udp, udp_local, &shared, t).await;
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Rejected { peer, code, reason } => {
                    tracing::info!(%peer, code, %reason, "request rejected")
                }
                Event::Dropped { peer, reason } => tracing::info!(%peer, %reason, "input dropped"),
                Event::Registered { .. } => {}
                Event::Unregistered { user } => tracing::info!(%user, "no longer registered"),
            }
        }
    }
    tracing::info!(stats = ?core.stats, "sip core stopped");
}

async fn send(udp: &UdpSocket, udp_local: SocketAddr, shared: &Arc<Shared>, t: Transmit) {
    shared.stats.messages_out.fetch_add(1, Ordering::Relaxed);
    match t.transport {
        Transport::Udp => match udp.send_to(&t.bytes, t.dst).await {
            Ok(_) => shared
                .tap
                .capture(Direction::Out, Transport::Udp, udp_local, t.dst, &t.bytes),
            Err(e) => {
                shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(dst = %t.dst, error = %e, "udp send failed");
            }
        },
        Transport::Tcp | Transport::Tls | Transport::Sctp => {
            let existing = shared
                .conns
                .lock()
                .expect("conns lock")
                .get(&t.dst)
                .cloned();
            match existing {
                Some(conn) => {
                    if conn.tx.try_send(t.bytes).is_err() {
                        shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(dst = %t.dst, "tcp connection backlog full: message dropped");
                    }
                }
                None => {
                    // No flow to reuse: open a connection to the destination.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            TcpStream::connect(t.dst),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => {
                                let (tx, rx) = mpsc::channel(256);
                                shared
                                    .conns
                                    .lock()
                                    .expect("conns lock")
                                    .insert(t.dst, Conn { tx });
                                connection(stream, t.dst, rx, shared, Some(t.bytes)).await;
                            }
                            _ => {
                                shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(dst = %t.dst, "tcp connect failed");
                            }
                        }
                    });
                }
            }
        }
    }
}
