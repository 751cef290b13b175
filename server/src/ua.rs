//! A minimal SIP user agent over real UDP, TCP or TLS sockets: registers
//! with digest auth, sends page-mode MESSAGEs and answers the ones it
//! receives, subscribes to events and answers (and keeps) their NOTIFYs.
//! The demo uses it to generate traffic; tests use it as a peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sipvault_schemas::Transport;
use sipvault_sip::digest::{Algorithm, Challenge, authorize};
use sipvault_sip::{MessageBuilder, SipMessage, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::core::transport_token;
use crate::tls::TlsClient;

#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error("user agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no final response within {0:?}")]
    Timeout(Duration),
    #[error("challenge could not be answered: {0}")]
    Auth(String),
    #[error("connection closed")]
    Closed,
    #[error("tls: {0}")]
    Tls(String),
}

/// An IM this agent received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedIm {
    pub from: String,
    pub body: String,
}

/// A NOTIFY this agent received (and answered 200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedNotify {
    pub event: String,
    pub subscription_state: String,
    pub content_type: String,
    pub body: String,
}

/// Where the reader puts what it receives.
#[derive(Clone)]
struct Inboxes {
    responses: mpsc::Sender<SipMessage>,
    ims: mpsc::Sender<ReceivedIm>,
    notifies: mpsc::Sender<ReceivedNotify>,
}

type StreamWriter = Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

#[derive(Clone)]
enum Writer {
    Udp(Arc<UdpSocket>, SocketAddr),
    /// TCP or TLS.
    Stream(StreamWriter),
}

impl Writer {
    async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Udp(s, dst) => s.send_to(bytes, *dst).await.map(|_| ()),
            Writer::Stream(w) => {
                let mut w = w.lock().await;
                w.write_all(bytes).await?;
                // TLS holds records back until flushed.
                w.flush().await
            }
        }
    }
}

pub struct UserAgent {
    user: String,
    domain: String,
    password: String,
    transport: Transport,
    local: SocketAddr,
    writer: Writer,
    responses: mpsc::Receiver<SipMessage>,
    inbox: mpsc::Receiver<ReceivedIm>,
    notifies: mpsc::Receiver<ReceivedNotify>,
    reader: JoinHandle<()>,
    reg_call_id: String,
    cseq: u32,
    counter: u64,
    /// How long to wait for a final response.
    pub timeout: Duration,
    /// The digest algorithm to answer challenges with; `None`: the
    /// strongest the server offers.
    pub digest: Option<Algorithm>,
}

impl UserAgent {
    /// Opens a socket (UDP) or connection (TCP) to the server at `server`.
    /// TLS needs [`UserAgent::connect_tls`].
    pub async fn connect(
        transport: Transport,
        server: SocketAddr,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Result<UserAgent, UaError> {
        if transport == Transport::Tls {
            return Err(UaError::Tls(
                "a TLS agent needs the server's certificate: use connect_tls".into(),
            ));
        }
        Self::open(transport, server, None, user, domain, password).await
    }

    /// Opens a TLS connection to the server at `server`, checking its
    /// certificate against `tls`.
    pub async fn connect_tls(
        server: SocketAddr,
        tls: TlsClient,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Result<UserAgent, UaError> {
        Self::open(Transport::Tls, server, Some(tls), user, domain, password).await
    }

    async fn open(
        transport: Transport,
        server: SocketAddr,
        tls: Option<TlsClient>,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Result<UserAgent, UaError> {
        let (resp_tx, responses) = mpsc::channel(64);
        let (inbox_tx, inbox) = mpsc::channel(1024);
        let (notify_tx, notifies) = mpsc::channel(1024);
        let inboxes = Inboxes {
            responses: resp_tx,
            ims: inbox_tx,
            notifies: notify_tx,
        };
        let (writer, local, reader) = match transport {
            Transport::Udp => {
                let sock = Arc::new(UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?);
                let local = sock.local_addr()?;
                let writer = Writer::Udp(sock.clone(), server);
                let w = writer.clone();
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                        if !dispatch(&buf[..n], &w, &inboxes).await {
                            break;
                        }
                    }
                });
                (writer, local, reader)
            }
            Transport::Tcp | Transport::Tls | Transport::Sctp => {
                let (writer, local, reader) = match tls {
                    Some(tls) => {
                        let stream = tls
                            .connect(server)
                            .await
                            .map_err(|e| UaError::Tls(e.to_string()))?;
                        let local = stream.get_ref().0.local_addr()?;
                        let (w, r) = spawn_stream(stream, inboxes);
                        (w, local, r)
                    }
                    None => {
                        let stream = TcpStream::connect(server).await?;
                        let local = stream.local_addr()?;
                        let (w, r) = spawn_stream(stream, inboxes);
                        (w, local, r)
                    }
                };
                (writer, local, reader)
            }
        };
        Ok(UserAgent {
            user: user.into(),
            domain: domain.into(),
            password: password.into(),
            transport,
            local,
            writer,
            responses,
            inbox,
            notifies,
            reader,
            reg_call_id: format!("reg-{}-{}@{}", user, rand::random::<u32>(), local),
            cseq: 0,
            counter: 0,
            timeout: Duration::from_secs(5),
            digest: None,
        })
    }

    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This agent's address as a Contact, naming its transport.
    fn contact(&self) -> String {
        match self.transport {
            Transport::Udp => format!("<sip:{}@{}>", self.user, self.local),
            Transport::Tls => format!("<sips:{}@{}>", self.user, self.local),
            _ => format!("<sip:{}@{};transport=tcp>", self.user, self.local),
        }
    }

    fn via(&mut self) -> String {
        self.counter += 1;
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK-ua-{:08x}{};rport",
            transport_token(self.transport),
            self.local,
            rand::random::<u32>(),
            self.counter
        )
    }

    /// REGISTERs (answering one digest challenge) and returns the final status.
    pub async fn register(&mut self, expires: u32) -> Result<u16, UaError> {
        let contact = self.contact();
        let uri = format!("sip:{}", self.domain);
        let mut auth: Option<String> = None;
        for _ in 0..2 {
            self.cseq += 1;
            let mut b = MessageBuilder::request("REGISTER", &uri);
            b.header("Via", &self.via())
                .header("Max-Forwards", "70")
                .header("From", &format!("<{}>;tag=r{}", self.aor(), self.cseq))
                .header("To", &format!("<{}>", self.aor()))
                .header("Call-ID", &self.reg_call_id.clone())
                .header("CSeq", &format!("{} REGISTER", self.cseq))
                .header("Contact", &contact)
                .header("Expires", &expires.to_string())
                .header("User-Agent", "sipvault-ua");
            if let Some(a) = &auth {
                b.header("Authorization", a);
            }
            let resp = self.transact(b.build()).await?;
            let code = resp.status().unwrap_or(0);
            if code != 401 || auth.is_some() {
                return Ok(code);
            }
            let ch = self.pick_challenge(&resp)?;
            let cnonce = format!("{:08x}", rand::random::<u32>());
            auth = Some(authorize(
                &ch,
                &self.user,
                &self.password,
                "REGISTER",
                &uri,
                &cnonce,
            ));
        }
        Ok(401)
    }

    /// The challenge of a 401 to answer: the one of [`UserAgent::digest`]
    /// if set, else the strongest offered (SHA-256 over MD5).
    fn pick_challenge(&self, resp: &SipMessage) -> Result<Challenge, UaError> {
        let offered: Vec<Challenge> = resp
            .header_all("www-authenticate")
            .into_iter()
            .filter_map(|h| Challenge::parse(h).ok())
            .collect();
        let wanted = |alg: Algorithm| offered.iter().find(|c| c.algorithm == alg).cloned();
        match self.digest {
            Some(alg) => wanted(alg),
            None => wanted(Algorithm::Sha256).or_else(|| wanted(Algorithm::Md5)),
        }
        .ok_or_else(|| UaError::Auth("401 without a usable digest challenge".into()))
    }

    /// Sends one page-mode MESSAGE to `to_user` and returns the final status.
    pub async fn message(&mut self, to_user: &str, body: &str) -> Result<u16, UaError> {
        let to = format!("sip:{}@{}", to_user, self.domain);
        self.message_to(&to, body).await
    }

    /// Sends one page-mode MESSAGE to the URI `to` (e.g. a `sips:` one) and
    /// returns the final status.
    pub async fn message_to(&mut self, to: &str, body: &str) -> Result<u16, UaError> {
        let resp = self.request("MESSAGE", to, &[], Some(body)).await?;
        Ok(resp.status().unwrap_or(0))
    }

    /// Sends one `method` request outside any dialog (MESSAGE, REFER,
    /// SUBSCRIBE, BYE...) to the URI `to`, with `headers` and a text body,
    /// and returns its final response. Requests other than MESSAGE carry
    /// this agent's Contact, where NOTIFYs come back to.
    pub async fn request(
        &mut self,
        method: &str,
        to: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<SipMessage, UaError> {
        let to = to.to_string();
        self.counter += 1;
        let call_id = format!(
            "im-{:08x}-{}@{}",
            rand::random::<u32>(),
            self.counter,
            self.local.ip()
        );
        let mut b = MessageBuilder::request(method, &to);
        b.header("Via", &self.via())
            .header("Max-Forwards", "70")
            .header(
                "From",
                &format!("<{}>;tag=m{:08x}", self.aor(), rand::random::<u32>()),
            )
            .header("To", &format!("<{to}>"))
            .header("Call-ID", &call_id)
            .header("CSeq", &format!("1 {method}"))
            .header("User-Agent", "sipvault-ua");
        if method != "MESSAGE" {
            b.header("Contact", &format!("<sip:{}@{}>", self.user, self.local));
        }
        for (name, value) in headers {
            b.header(name, value);
        }
        if let Some(body) = body {
            b.body("text/plain;charset=UTF-8", body.as_bytes());
        }
        self.transact(b.build()).await
    }

    /// SUBSCRIBEs to `uri` for `event` (a new dialog, this agent's address
    /// as Contact) and returns the final status; NOTIFYs come to
    /// [`UserAgent::notifies`].
    pub async fn subscribe(
        &mut self,
        uri: &str,
        event: &str,
        expires: u32,
    ) -> Result<u16, UaError> {
        self.counter += 1;
        let call_id = format!(
            "sub-{:08x}-{}@{}",
            rand::random::<u32>(),
            self.counter,
            self.local.ip()
        );
        let contact = self.contact();
        let mut b = MessageBuilder::request("SUBSCRIBE", uri);
        b.header("Via", &self.via())
            .header("Max-Forwards", "70")
            .header(
                "From",
                &format!("<{}>;tag=s{:08x}", self.aor(), rand::random::<u32>()),
            )
            .header("To", &format!("<{uri}>"))
            .header("Call-ID", &call_id)
            .header("CSeq", "1 SUBSCRIBE")
            .header("Contact", &contact)
            .header("Event", event)
            .header("Expires", &expires.to_string())
            .header("User-Agent", "sipvault-ua");
        let resp = self.transact(b.build()).await?;
        Ok(resp.status().unwrap_or(0))
    }

    /// NOTIFYs received so far (answered 200 by the agent).
    pub fn notifies(&mut self) -> Vec<ReceivedNotify> {
        let mut out = Vec::new();
        while let Ok(n) = self.notifies.try_recv() {
            out.push(n);
        }
        out
    }

    /// IMs received so far (answered 200 by the agent).
    pub fn received(&mut self) -> Vec<ReceivedIm> {
        let mut out = Vec::new();
        while let Ok(im) = self.inbox.try_recv() {
            out.push(im);
        }
        out
    }

    /// Sends a request and waits for its final response, retransmitting on
    /// UDP every 500 ms.
    async fn transact(&mut self, bytes: Vec<u8>) -> Result<SipMessage, UaError> {
        let sent = SipMessage::parse(&bytes).map_err(|e| UaError::Auth(e.to_string()))?;
        let key = (
            sent.call_id().unwrap_or("").to_string(),
            sent.cseq().map(|c| c.0),
        );
        self.writer.send(&bytes).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let retry = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::select! {
                r = self.responses.recv() => {
                    let r = r.ok_or(UaError::Closed)?;
                    let k = (r.call_id().unwrap_or("").to_string(), r.cseq().map(|c| c.0));
                    if k == key && r.status().is_some_and(|s| s >= 200) {
                        return Ok(r);
                    }
                }
                _ = tokio::time::sleep_until(retry.min(deadline)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(UaError::Timeout(self.timeout));
                    }
                    if self.transport == Transport::Udp {
                        self.writer.send(&bytes).await?;
                    }
                }
            }
        }
    }

    pub async fn close(self) {
        self.reader.abort();
    }
}

/// Starts the reader of a TCP or TLS connection; returns its writer.
fn spawn_stream<S>(stream: S, inboxes: Inboxes) -> (Writer, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let boxed: Box<dyn AsyncWrite + Send + Unpin> = Box::new(wr);
    let writer = Writer::Stream(Arc::new(Mutex::new(boxed)));
    let w = writer.clone();
    let reader = tokio::spawn(async move {
        let mut framer = StreamFramer::new(1 << 20);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            while let Ok(Some(msg)) = framer.next_message() {
                if !dispatch(&msg, &w, &inboxes).await {
                    return;
                }
            }
        }
    });
    (writer, reader)
}

/// Routes one incoming message: responses to the waiting transaction,
/// MESSAGE and NOTIFY requests answered 200 and put in their inbox. The
/// answer leaves first: whoever sees a request in an inbox knows it was
/// answered, even if it closes the agent at once.
/// Returns false when the agent is gone.
async fn dispatch(raw: &[u8], w: &Writer, inboxes: &Inboxes) -> bool {
    let Ok(msg) = SipMessage::parse(raw) else {
        return true;
    };
    if !msg.is_request() {
        return inboxes.responses.send(msg).await.is_ok();
    }
    let (code, reason) = match msg.method() {
        Some("MESSAGE" | "NOTIFY" | "OPTIONS") => (200, "OK"),
        Some("ACK") => return true,
        _ => (405, "Method Not Allowed"),
    };
    let mut b = MessageBuilder::response_to(&msg, code, reason);
    b.add_to_tag(&format!("{:08x}", rand::random::<u32>()));
    let _ = w.send(&b.build()).await;
    match msg.method() {
        Some("MESSAGE") => {
            let _ = inboxes.ims.try_send(ReceivedIm {
                from: msg.from().map(|f| f.uri.clone()).unwrap_or_default(),
                body: String::from_utf8_lossy(msg.body()).into_owned(),
            });
        }
        Some("NOTIFY") => {
            let text = |name: &str| msg.header(name).unwrap_or("").to_string();
            let _ = inboxes.notifies.try_send(ReceivedNotify {
                event: text("Event"),
                subscription_state: text("Subscription-State"),
                content_type: text("Content-Type"),
                body: String::from_utf8_lossy(msg.body()).into_owned(),
            });
        }
        _ => {}
    }
    true
}
