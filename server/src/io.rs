//! Tokio transports around the sans-IO core: one UDP socket and one TCP
//! listener on the same address, an optional TLS listener, one task per
//! stream connection (TCP or TLS: the same code, generic over the stream),
//! and one task that owns the [`Core`] and carries out its transmits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sipvault_schemas::{CapturedMessage, Direction, RoomEventRow, Transport};
use sipvault_sip::{StreamFramer, error_response_for_unparsed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::core::{Core, CoreConfig, Event, Transmit, UserCredentials};
use crate::rooms::{RoomDirectory, RoomPost};
use crate::tls::TlsClient;

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
    /// Cap on open stream connections, TCP and TLS together (a TLS
    /// connection counts from accept, before its handshake).
    pub max_tcp_connections: usize,
    /// SIP over TLS; `None` listens for no TLS. A TLS handshake must finish
    /// within `tcp_message_timeout`, like a message once begun.
    pub tls: Option<TlsListener>,
    /// UDP receive buffer to ask the kernel for (SO_RCVBUF, capped by
    /// net.core.rmem_max): bursts wait in the kernel instead of being dropped.
    pub udp_recv_buffer: usize,
    /// Critical mode: an IM is relayed only once the archive accepted its
    /// record; `None` relays whatever the archive does.
    pub critical_archive: Option<CriticalArchive>,
    /// TLS servers we may open connections to (federated peers), by
    /// address, each with the roots and the name its certificate is
    /// checked against. A TLS message to any other address needs a
    /// connection the client opened.
    pub tls_peers: Vec<(SocketAddr, TlsClient)>,
    /// Where conference events go as `room_events` rows (the archive);
    /// `None` logs them only.
    pub room_events: Option<mpsc::Sender<RoomEventRow>>,
}

/// Resolved by the archive once the record is durable, or with why not.
pub type ArchiveAck = oneshot::Sender<Result<(), String>>;

/// A captured message whose sender waits for the archive's answer.
pub type ArchiveRequest = (CapturedMessage, ArchiveAck);

/// Where critical mode sends an IM's record, and how long it waits.
#[derive(Debug, Clone)]
pub struct CriticalArchive {
    pub tx: mpsc::Sender<ArchiveRequest>,
    /// Not accepted within this, the IM is refused: a stalled archive must
    /// not hold signalling.
    pub timeout: Duration,
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
            tls: None,
            critical_archive: None,
            tls_peers: Vec::new(),
            room_events: None,
        }
    }
}

/// Where to listen for SIP over TLS and with which certificate.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Port 0 picks a free port.
    pub addr: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
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
    /// TLS connections that never completed a handshake (not TLS, bad
    /// handshake, or stalled past `tcp_message_timeout`).
    pub tls_handshake_failures: AtomicU64,
    pub send_errors: AtomicU64,
    pub tap_dropped: AtomicU64,
    /// IMs refused because the archive could not accept them (critical mode).
    pub archive_refused: AtomicU64,
    /// Open stream connections, TCP and TLS.
    pub tcp_open: AtomicUsize,
}

impl ServerStats {
    pub fn snapshot(&self) -> [(&'static str, u64); 12] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("datagrams_in", get(&self.datagrams_in)),
            ("stream_messages_in", get(&self.stream_messages_in)),
            ("messages_out", get(&self.messages_out)),
            ("oversize_dropped", get(&self.oversize_dropped)),
            ("framing_errors", get(&self.framing_errors)),
            ("tcp_timeouts", get(&self.tcp_timeouts)),
            ("tcp_refused", get(&self.tcp_refused)),
            ("tls_handshake_failures", get(&self.tls_handshake_failures)),
            ("send_errors", get(&self.send_errors)),
            ("tap_dropped", get(&self.tap_dropped)),
            ("archive_refused", get(&self.archive_refused)),
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
    fn captured(
        direction: Direction,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
    ) -> CapturedMessage {
        CapturedMessage {
            time_ns: chrono_now_ns(),
            source: "tap".into(),
            direction,
            transport,
            src,
            dst,
            raw: raw.to_vec(),
        }
    }

    fn capture(
        &self,
        direction: Direction,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
    ) {
        self.push(Self::captured(direction, transport, src, dst, raw));
    }

    /// Hands a captured message to the archive channel, never waiting.
    fn push(&self, msg: CapturedMessage) {
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

/// Taps a message received from `peer` and hands it to the core; false
/// once the core is gone. In critical mode an IM (a MESSAGE request) waits,
/// on its own task, for the archive to accept its record: accepted, it goes
/// to the core to be relayed; refused or not answered in time, the core
/// answers it 503 with Retry-After.
async fn admit(
    shared: &Arc<Shared>,
    transport: Transport,
    peer: SocketAddr,
    local: SocketAddr,
    bytes: Vec<u8>,
) -> bool {
    let Some(critical) = shared
        .config
        .critical_archive
        .as_ref()
        .filter(|_| bytes.starts_with(b"MESSAGE "))
    else {
        shared
            .tap
            .capture(Direction::In, transport, peer, local, &bytes);
        return shared
            .inbound
            .send(Inbound::Message {
                transport,
                peer,
                bytes,
            })
            .await
            .is_ok();
    };
    let (ack, accepted) = oneshot::channel();
    let record = Tap::captured(Direction::In, transport, peer, local, &bytes);
    let queued = critical.tx.try_send((record, ack));
    let timeout = critical.timeout;
    let shared = shared.clone();
    tokio::spawn(async move {
        let verdict = match queued {
            Err(_) => Err("archive queue full or closed".to_string()),
            Ok(()) => match tokio::time::timeout(timeout, accepted).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(_)) => Err("archive stopped".to_string()),
                Err(_) => Err(format!("not accepted within {} ms", timeout.as_millis())),
            },
        };
        let inbound = match verdict {
            Ok(()) => Inbound::Message {
                transport,
                peer,
                bytes,
            },
            Err(reason) => {
                let n = shared.stats.archive_refused.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n < 8 {
                    tracing::warn!(%peer, %reason, refused = n + 1, "archive cannot accept the record: IM refused with 503 (critical mode)");
                }
                Inbound::Unarchived {
                    transport,
                    peer,
                    bytes,
                }
            }
        };
        let _ = shared.inbound.send(inbound).await;
    });
    true
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
    /// A request the archive could not accept (critical mode): refused.
    Unarchived {
        transport: Transport,
        peer: SocketAddr,
        bytes: Vec<u8>,
    },
    Users(HashMap<String, UserCredentials>),
    Rooms(RoomDirectory),
    /// A room's posts from the archive, oldest first.
    RoomHistory {
        room: String,
        posts: Vec<RoomPost>,
    },
    /// Nothing could be sent to `dst` over `transport`: no connection to
    /// reuse and none could be opened, or it went away.
    FlowFailed {
        transport: Transport,
        dst: SocketAddr,
    },
}

#[derive(Clone)]
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
}

/// Stream connections by transport and peer: a TCP and a TLS connection
/// from the same address and port are different flows, and a message for a
/// TLS flow must never leave over TCP.
type Conns = Arc<Mutex<HashMap<(Transport, SocketAddr), Conn>>>;

/// Counts an open stream connection for the cap until dropped, however
/// the connection ends (handshake failure included).
struct OpenConn(Arc<ServerStats>);

impl OpenConn {
    fn new(stats: &Arc<ServerStats>) -> OpenConn {
        stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        OpenConn(stats.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.tcp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared {
    config: ServerConfig,
    stats: Arc<ServerStats>,
    tap: Tap,
    inbound: mpsc::Sender<Inbound>,
    conns: Conns,
    shutdown: watch::Receiver<bool>,
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

    /// Replaces the chat rooms and their members.
    pub async fn replace_rooms(&self, rooms: RoomDirectory) {
        let _ = self.tx.send(Inbound::Rooms(rooms)).await;
    }

    /// Gives the core the posts of `room` the archive kept (oldest first),
    /// so `/history` reaches back past a restart.
    pub async fn seed_room_history(&self, room: String, posts: Vec<RoomPost>) {
        let _ = self.tx.send(Inbound::RoomHistory { room, posts }).await;
    }
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    /// The TLS listener's address, if TLS is on.
    pub tls_addr: Option<SocketAddr>,
    pub stats: Arc<ServerStats>,
    users: mpsc::Sender<Inbound>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds UDP and TCP (and TLS if configured) and starts serving. Every
    /// message in and out goes to `tap`.
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
        let tls = match &config.tls {
            Some(t) => {
                let err = |source| ServerError::Bind {
                    addr: t.addr,
                    source,
                };
                let listener = TcpListener::bind(t.addr).await.map_err(err)?;
                let addr = listener.local_addr().map_err(err)?;
                Some((listener, addr, TlsAcceptor::from(t.config.clone())))
            }
            None => None,
        };
        let tls_addr = tls.as_ref().map(|(_, addr, _)| *addr);
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
        });
        let udp = Arc::new(udp);
        let mut core = Core::new(config.core.clone());
        core.set_local_addr(Transport::Udp, udp_addr);
        core.set_local_addr(Transport::Tcp, tcp_addr);
        let mut tasks = vec![
            tokio::spawn(udp_loop(udp.clone(), shared.clone())),
            tokio::spawn(accept_loop(tcp, None, shared.clone())),
        ];
        if let Some((listener, addr, acceptor)) = tls {
            core.set_local_addr(Transport::Tls, addr);
            tasks.push(tokio::spawn(accept_loop(
                listener,
                Some(acceptor),
                shared.clone(),
            )));
        }
        tasks.push(tokio::spawn(core_loop(core, inbound_rx, udp, shared)));
        Ok(Server {
            udp_addr,
            tcp_addr,
            tls_addr,
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
            _ = shutdown.changed() => {
                archive_unread_datagrams(&udp, local, &shared, &mut buf);
                break;
            }
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
        if !admit(&shared, Transport::Udp, peer, local, bytes).await {
            // The core has stopped: the server is stopping.
            archive_unread_datagrams(&udp, local, &shared, &mut buf);
            break;
        }
    }
}

/// Datagrams still queued on the socket when the server stops.
const SHUTDOWN_DRAIN_LIMIT: usize = 65_536;

/// At shutdown: archives the datagrams that arrived before the stop and
/// were not read yet (say, the answers to our last requests), so the
/// archive holds everything received. The core, stopping too, does not
/// act on them.
fn archive_unread_datagrams(udp: &UdpSocket, local: SocketAddr, shared: &Shared, buf: &mut [u8]) {
    for _ in 0..SHUTDOWN_DRAIN_LIMIT {
        match udp.try_recv_from(buf) {
            Ok((n, peer)) => {
                shared.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                if n > shared.config.max_message_bytes {
                    shared
                        .stats
                        .oversize_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, bytes = n, "dropped oversize datagram at shutdown");
                    continue;
                }
                shared
                    .tap
                    .capture(Direction::In, Transport::Udp, peer, local, &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {}
        }
    }
}

/// Accepts stream connections: plain TCP when `tls` is `None`, else TLS,
/// whose handshake runs in the connection's own task under the stall
/// timeout, so a slow or silent client holds up nobody else.
async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, ?transport, "accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => break,
        };
        if shared.stats.tcp_open.load(Ordering::Relaxed) >= shared.config.max_tcp_connections {
            let refused = shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, ?transport, limit = shared.config.max_tcp_connections, refused, "stream connection limit reached: refusing connection");
            drop(stream);
            continue;
        }
        let open = OpenConn::new(&shared.stats);
        let local = stream.local_addr().unwrap_or(shared.config.sip_addr);
        let shared = shared.clone();
        let flow = Flow {
            transport,
            local,
            peer,
        };
        match tls.clone() {
            None => {
                let out = register_conn(&shared, transport, peer);
                tokio::spawn(connection(stream, flow, shared, out, open));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let mut shutdown = shared.shutdown.clone();
                    let handshake = tokio::time::timeout(
                        shared.config.tcp_message_timeout,
                        acceptor.accept(stream),
                    );
                    let result = tokio::select! {
                        r = handshake => r,
                        _ = shutdown.changed() => return,
                    };
                    let stream = match result {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            shared
                                .stats
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, error = %e, "tls handshake failed: closing connection");
                            return;
                        }
                        Err(_) => {
                            shared
                                .stats
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            shared.stats.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, "tls handshake stalled: closing connection");
                            return;
                        }
                    };
                    let out = register_conn(&shared, transport, peer);
                    connection(stream, flow, shared, out, open).await;
                });
            }
        }
    }
}

/// Messages waiting to be written to one stream connection.
const CONN_QUEUE: usize = 256;

/// Makes a connection reachable for the core's transmits to `peer`; they
/// arrive on the returned receiver.
fn register_conn(
    shared: &Shared,
    transport: Transport,
    peer: SocketAddr,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(CONN_QUEUE);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert((transport, peer), Conn { tx });
    rx
}

/// The two ends of one stream connection and how it is secured.
#[derive(Debug, Clone, Copy)]
struct Flow {
    transport: Transport,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Flow {
    /// "tcp" or "tls", for log lines.
    fn name(&self) -> &'static str {
        match self.transport {
            Transport::Tls => "tls",
            _ => "tcp",
        }
    }
    fn tap_out(&self, shared: &Shared, bytes: &[u8]) {
        shared
            .tap
            .capture(Direction::Out, self.transport, self.local, self.peer, bytes);
    }
}

/// Writes one whole message. The flush matters for TLS, whose stream may
/// hold encrypted records back until flushed; on TCP it does nothing.
async fn write_message<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

/// One stream connection (TCP, or TLS after its handshake), accepted or
/// opened by us: frames incoming bytes by Content-Length and writes what
/// the core sends to this peer (`out`, from [`register_conn`]). Everything
/// read and written is tapped with the flow's transport, so TLS traffic is
/// archived decrypted and marked TLS.
async fn connection<S>(
    stream: S,
    flow: Flow,
    shared: Arc<Shared>,
    mut out: mpsc::Receiver<Vec<u8>>,
    _open: OpenConn,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = flow.peer;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut shutdown = shared.shutdown.clone();
    let mut framer = StreamFramer::new(shared.config.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
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
                        tracing::warn!(%peer, buffered = framer.buffered(), "{} peer stalled: closing connection", flow.name());
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
                            if !admit(&shared, flow.transport, peer, flow.local, msg).await {
                                // The core has stopped: the server is stopping.
                                archive_unread_stream(&mut rd, &mut framer, &mut buf, &shared, flow).await;
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
                                && write_message(&mut wr, &resp).await.is_ok() {
                                    flow.tap_out(&shared, &resp);
                                }
                            flush_pending(&mut out, &mut wr, &shared, flow).await;
                            shared.stats.framing_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, transport = ?flow.transport, error = %e, "unrecoverable stream framing error: closing connection");
                            break 'conn;
                        }
                    }
                }
            }
            bytes = out.recv() => {
                let Some(bytes) = bytes else { break };
                if let Err(e) = write_message(&mut wr, &bytes).await {
                    shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "{} write failed", flow.name());
                    break;
                }
                flow.tap_out(&shared, &bytes);
            }
            _ = shutdown.changed() => {
                archive_unread_stream(&mut rd, &mut framer, &mut buf, &shared, flow).await;
                break;
            }
        }
    }
    shared
        .conns
        .lock()
        .expect("conns lock")
        .remove(&(flow.transport, peer));
    // TLS: a close_notify, so the peer sees an orderly end rather than a
    // truncation; bounded, a peer that reads nothing cannot hold us here.
    let _ = tokio::time::timeout(Duration::from_millis(200), wr.shutdown()).await;
}

/// At shutdown: archives the whole messages a connection has already
/// received and we have not read yet, as for datagrams; never waits for more.
async fn archive_unread_stream<R: AsyncRead + Unpin>(
    rd: &mut R,
    framer: &mut StreamFramer,
    buf: &mut [u8],
    shared: &Shared,
    flow: Flow,
) {
    // A zero timeout still polls the read once: data already there is taken.
    for _ in 0..SHUTDOWN_DRAIN_LIMIT {
        match tokio::time::timeout(Duration::ZERO, rd.read(buf)).await {
            Ok(Ok(n)) if n > 0 => framer.push(&buf[..n]),
            _ => break,
        }
    }
    while let Ok(Some(msg)) = framer.next_message() {
        shared
            .tap
            .capture(Direction::In, flow.transport, flow.peer, flow.local, &msg);
    }
}

/// Writes what the core still sends to a connection that is about to close,
/// until it has been quiet for a moment.
async fn flush_pending<W: AsyncWrite + Unpin>(
    out: &mut mpsc::Receiver<Vec<u8>>,
    wr: &mut W,
    shared: &Shared,
    flow: Flow,
) {
    while let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(200), out.recv()).await {
        if write_message(wr, &bytes).await.is_err() {
            break;
        }
        flow.tap_out(shared, &bytes);
    }
}

/// Inputs handed to the core in one go before its timers and output are
/// looked at.
const INBOUND_BATCH: usize = 64;

fn core_input(core: &mut Core, input: Inbound) {
    let now = Instant::now();
    // Room posts are stamped with the wall clock, which the core never reads.
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    core.set_wall_clock(now, unix_ns);
    match input {
        Inbound::Message {
            transport,
            peer,
            bytes,
        } => core.handle_message(now, transport, peer, &bytes),
        Inbound::Unarchived {
            transport,
            peer,
            bytes,
        } => core.handle_unarchived(now, transport, peer, &bytes),
        Inbound::Users(users) => core.set_users(users),
        Inbound::Rooms(rooms) => core.set_rooms(now, rooms),
        Inbound::RoomHistory { room, posts } => core.seed_room_history(&room, posts),
        Inbound::FlowFailed { transport, dst } => core.handle_flow_failed(now, transport, dst),
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
                Some(input) => {
                    core_input(&mut core, input);
                    // Take what else is already queued before the timers are
                    // looked at again: `poll_timeout` walks every live
                    // transaction, so under load once per batch, not per
                    // datagram (calls keep their INVITE server transaction
                    // for 64·T1 after the 2xx).
                    for _ in 1..INBOUND_BATCH {
                        let Ok(input) = inbound.try_recv() else { break };
                        core_input(&mut core, input);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
            _ = shutdown.changed() => break,
        }
        while let Some(t) = core.poll_transmit() {
            send(&udp, udp_local, &shared, t).await;
        }
        report_events(&mut core, &shared);
    }
    // Conferences live in the core's memory only: their end is recorded
    // before it goes.
    core.end_all_conferences();
    report_events(&mut core, &shared);
    tracing::info!(stats = ?core.stats, "sip core stopped");
}

/// Logs what the core reports and hands its conference records to the archive.
fn report_events(core: &mut Core, shared: &Shared) {
    while let Some(ev) = core.poll_event() {
        match ev {
            Event::Rejected { peer, code, reason } => {
                tracing::info!(%peer, code, %reason, "request rejected")
            }
            Event::Dropped { peer, reason } => tracing::info!(%peer, %reason, "input dropped"),
            Event::Registered { .. } => {}
            Event::Unregistered { user } => tracing::info!(%user, "no longer registered"),
            Event::Conference(event) => {
                let Some(tx) = &shared.config.room_events else {
                    continue;
                };
                // Never waits, like the tap: a full archive channel
                // loses the record, counted, rather than signalling.
                if tx.try_send(event.to_row(chrono_now_ns())).is_err() {
                    shared.stats.tap_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ?event,
                        "archive channel full or closed: conference event not archived"
                    );
                }
            }
        }
    }
}

async fn send(udp: &UdpSocket, udp_local: SocketAddr, shared: &Arc<Shared>, t: Transmit) {
    shared.stats.messages_out.fetch_add(1, Ordering::Relaxed);
    match t.transport {
        Transport::Udp => {
            // Stamped before the send: the peer's answer can arrive, and be
            // tapped, before send_to returns, and a copy stamped after it
            // would put the answer before its request in the archive.
            let captured =
                Tap::captured(Direction::Out, Transport::Udp, udp_local, t.dst, &t.bytes);
            match udp.send_to(&t.bytes, t.dst).await {
                Ok(_) => shared.tap.push(captured),
                Err(e) => {
                    shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(dst = %t.dst, error = %e, "udp send failed");
                }
            }
        }
        Transport::Tcp | Transport::Tls | Transport::Sctp => {
            let existing = shared
                .conns
                .lock()
                .expect("conns lock")
                .get(&(t.transport, t.dst))
                .cloned();
            match existing {
                Some(conn) => match conn.tx.try_send(t.bytes) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(dst = %t.dst, transport = ?t.transport, "connection backlog full: message dropped");
                    }
                    // The connection ended between lookup and send.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        flow_failed(shared, t.transport, t.dst, "connection closed")
                    }
                },
                None if t.transport == Transport::Tcp => connect_out(shared, t, None),
                None if t.transport == Transport::Tls => {
                    match shared
                        .config
                        .tls_peers
                        .iter()
                        .find(|(addr, _)| *addr == t.dst)
                    {
                        Some((_, client)) => {
                            let client = client.clone();
                            connect_out(shared, t, Some(client))
                        }
                        // Other TLS flows are only those clients opened: a
                        // client's source port is no TLS server to connect
                        // back to, and a secure target must not fall back to
                        // another transport.
                        None => flow_failed(shared, t.transport, t.dst, "no connection to reuse"),
                    }
                }
                None => flow_failed(shared, t.transport, t.dst, "no connection to reuse"),
            }
        }
    }
}

/// Opens a connection to `t.dst` (TLS when `tls` is given, checking the
/// server's certificate) and sends `t` over it. The connection is
/// registered before it is up, so what the core sends meanwhile queues
/// behind `t` instead of opening a second one. It leaves from our SIP
/// address's IP, which is what a federated peer knows us by.
fn connect_out(shared: &Arc<Shared>, t: Transmit, tls: Option<TlsClient>) {
    let (tx, out) = mpsc::channel(CONN_QUEUE);
    // A new channel has room: `t` is the first message of the connection.
    let _ = tx.try_send(t.bytes);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert((t.transport, t.dst), Conn { tx });
    let shared = shared.clone();
    tokio::spawn(async move {
        let open = OpenConn::new(&shared.stats);
        let (transport, dst) = (t.transport, t.dst);
        let timeout = shared.config.tcp_message_timeout;
        let local_ip = shared.config.sip_addr.ip();
        let stream = match tokio::time::timeout(timeout, connect_from(local_ip, dst)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(%dst, ?transport, error = %e, "connect failed");
                return connect_failed(&shared, transport, dst);
            }
            Err(_) => {
                tracing::warn!(%dst, ?transport, "connect timed out");
                return connect_failed(&shared, transport, dst);
            }
        };
        let local = stream.local_addr().unwrap_or(shared.config.sip_addr);
        let flow = Flow {
            transport,
            local,
            peer: dst,
        };
        let Some(client) = tls else {
            return connection(stream, flow, shared, out, open).await;
        };
        let connector = tokio_rustls::TlsConnector::from(client.config.clone());
        match tokio::time::timeout(
            timeout,
            connector.connect(client.server_name.clone(), stream),
        )
        .await
        {
            Ok(Ok(stream)) => {
                tracing::info!(%dst, server_name = ?client.server_name, "tls connection to peer up");
                connection(stream, flow, shared, out, open).await
            }
            Ok(Err(e)) => {
                shared
                    .stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%dst, server_name = ?client.server_name, error = %e, "tls handshake with peer failed");
                connect_failed(&shared, transport, dst)
            }
            Err(_) => {
                shared
                    .stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%dst, "tls handshake with peer stalled");
                connect_failed(&shared, transport, dst)
            }
        }
    });
}

/// A TCP connection to `dst` from `local_ip` (any port), unless that is
/// the unspecified address.
async fn connect_from(local_ip: std::net::IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if !local_ip.is_unspecified() && local_ip.is_ipv4() == dst.is_ipv4() {
        socket.bind(SocketAddr::new(local_ip, 0))?;
    }
    socket.connect(dst).await
}

/// Forgets the queue of a connection that never came up and tells the core.
fn connect_failed(shared: &Shared, transport: Transport, dst: SocketAddr) {
    shared
        .conns
        .lock()
        .expect("conns lock")
        .remove(&(transport, dst));
    flow_failed(shared, transport, dst, "could not connect");
}

/// Counts and logs an undeliverable message and tells the core, which
/// answers the request it belonged to instead of waiting for Timer F.
fn flow_failed(shared: &Shared, transport: Transport, dst: SocketAddr, why: &str) {
    shared.stats.send_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%dst, ?transport, why, "message not delivered");
    // try_send: this runs on the core's own task, which must not wait on
    // its own input queue; a full queue means the 408 comes later instead.
    let _ = shared
        .inbound
        .try_send(Inbound::FlowFailed { transport, dst });
}
