//! `sipvault.toml`: every setting has a default, unknown keys are rejected.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sipvault_collector::arrivals::ArrivalConfig;
use sipvault_collector::{SegmentLimits, WalConfig};
use sipvault_schemas::Transport;
use sipvault_server::tls::{Origin, TlsClient, TlsIdentity, read_certificates};
use sipvault_server::{FederationPeer, TlsListener};
use sipvault_sip::digest::Algorithm;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub archive: ArchiveConfig,
    pub hep: HepConfig,
    pub presence: PresenceSettings,
    pub rooms: RoomsConfig,
    /// Federated domains (`[[federation]]` entries); none by default.
    pub federation: Vec<FederationConfig>,
    pub conferences: ConferencesConfig,
}

/// Ad hoc conferences (multiparty IM): the factory URI and the limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConferencesConfig {
    /// User part of the factory URI: a MESSAGE to `sip:FACTORY@DOMAIN`
    /// creates a conference. Takes precedence over a user of that name.
    pub factory_user: String,
    /// A conference without a post, join or leave for this long ends.
    pub idle_timeout_secs: u64,
    /// Participants (joined or invited) per conference.
    pub max_participants: usize,
    /// Conferences at once; more are refused 503.
    pub max_conferences: usize,
}

impl Default for ConferencesConfig {
    fn default() -> Self {
        let defaults = sipvault_server::ConferenceConfig::default();
        ConferencesConfig {
            factory_user: defaults.factory_user,
            idle_timeout_secs: defaults.idle_timeout.as_secs(),
            max_participants: defaults.max_participants,
            max_conferences: defaults.max_conferences,
        }
    }
}

impl ConferencesConfig {
    /// The core's settings.
    pub fn core(&self) -> sipvault_server::ConferenceConfig {
        sipvault_server::ConferenceConfig {
            factory_user: self.factory_user.clone(),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_participants: self.max_participants,
            max_conferences: self.max_conferences,
        }
    }
}

/// One federated domain: requests for it go to its server, and requests
/// from it are accepted only from that server's address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The peer's SIP domain, e.g. "partner.example".
    pub domain: String,
    /// The peer server's TLS listener (TCP listener with `transport =
    /// "tcp"`), `IP:PORT`.
    pub address: SocketAddr,
    /// "tls" (the default) or "tcp".
    #[serde(default)]
    pub transport: FederationTransport,
    /// PEM certificates trusted for this peer over TLS: its own
    /// (self-signed) certificate or the CA that signed it. The peer's
    /// certificate must name its domain. Default: the system CA bundle.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FederationTransport {
    #[default]
    Tls,
    Tcp,
}

/// Where the system's CA bundle is on Debian-like systems.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the server needs of the `[[federation]]` entries: the core's peer
/// table and, for the TLS peers, how to check their certificates.
pub struct Federation {
    pub peers: Vec<FederationPeer>,
    pub tls_peers: Vec<(SocketAddr, TlsClient)>,
}

/// Flood control of chat room posts: a token bucket per member and room
/// (and, at the same limits, per participant and conference).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Posts a member may make per second in one room, sustained; faster
    /// posts get 503 with Retry-After. At least 1.
    pub posts_per_second_per_member: std::num::NonZeroU32,
    /// Posts a member may make at once before that rate applies. At least 1.
    pub burst_per_member: std::num::NonZeroU32,
    /// Newest posts per room `serve` keeps in memory for `/history` over
    /// SIP, loaded from the archive at start. 0 keeps none.
    pub history_posts: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        let defaults = sipvault_server::RoomConfig::default();
        RoomsConfig {
            posts_per_second_per_member: defaults.posts_per_second,
            burst_per_member: defaults.burst,
            history_posts: defaults.history_posts,
        }
    }
}

/// Who may subscribe to whose presence.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Watchers allowed per user, as URIs or `*@domain`; a user without an
    /// entry may be watched by anyone of the served domain.
    pub allow: std::collections::HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP and TCP listen address (`--sip` overrides).
    pub listen: SocketAddr,
    /// SIP over TLS (`--tls` overrides): "auto" (the SIP address with the
    /// next port, so 5061 beside 5060, and a free port when the SIP port is
    /// 0), "off", or an address.
    pub tls_listen: TlsListen,
    /// PEM certificate chain and key for TLS (`--tls-cert`/`--tls-key`).
    /// Unset: a self-signed certificate in `<data>/tls/`, made on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Served SIP domain and digest realm.
    pub domain: String,
    /// Larger datagrams/stream messages are dropped and counted.
    pub max_message_bytes: usize,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// RFC 3261 T1 in milliseconds (transaction timeout is 64*T1).
    pub t1_ms: u64,
    pub t2_ms: u64,
    /// A call that rings this long unanswered is cancelled and answered
    /// 408 (the proxy's Timer C).
    pub no_answer_secs: u64,
    pub min_expires: u32,
    pub max_expires: u32,
    pub tcp_message_timeout_secs: u64,
    pub tcp_idle_timeout_secs: u64,
    pub max_tcp_connections: usize,
    /// UDP receive buffer to ask the kernel for (capped by net.core.rmem_max).
    pub udp_recv_buffer_bytes: usize,
    /// Digest algorithms a REGISTER is challenged with, one challenge
    /// each in this order (RFC 8760): "MD5", "SHA-256". Answers with
    /// either are accepted whatever is offered.
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

/// A digest algorithm named in the config ("MD5" or "SHA-256").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DigestAlgorithm(pub Algorithm);

impl TryFrom<String> for DigestAlgorithm {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Algorithm::parse(&s)
            .map(DigestAlgorithm)
            .ok_or_else(|| format!("{s:?}: expected \"MD5\" or \"SHA-256\""))
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            tls_listen: TlsListen::Auto,
            tls_cert: None,
            tls_key: None,
            domain: "sipvault.local".into(),
            max_message_bytes: 16 * 1024,
            max_body_bytes: 8 * 1024,
            t1_ms: 500,
            t2_ms: 4000,
            no_answer_secs: 180,
            min_expires: 60,
            max_expires: 7200,
            tcp_message_timeout_secs: 10,
            tcp_idle_timeout_secs: 3600,
            max_tcp_connections: 4096,
            udp_recv_buffer_bytes: 4 << 20,
            // Clients that know only MD5 (SIPp 3.6, baresip 1.0) give up
            // on a 401 that also offers SHA-256.
            digest_algorithms: vec![DigestAlgorithm(Algorithm::Md5)],
        }
    }
}

/// Where `serve` listens for SIP over TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TlsListen {
    /// Beside the SIP address: its port + 1, or a free port for port 0.
    #[default]
    Auto,
    Off,
    At(SocketAddr),
}

impl FromStr for TlsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(TlsListen::Auto),
            "off" => Ok(TlsListen::Off),
            a => a.parse().map(TlsListen::At).map_err(|_| {
                format!("{s:?}: expected \"auto\", \"off\" or an address like 0.0.0.0:5061")
            }),
        }
    }
}

impl TryFrom<String> for TlsListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TlsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsListen::Auto => f.write_str("auto"),
            TlsListen::Off => f.write_str("off"),
            TlsListen::At(a) => a.fmt(f),
        }
    }
}

impl TlsListen {
    /// The address to listen on beside the SIP address `sip`, or `None` for off.
    pub fn resolve(self, sip: SocketAddr) -> anyhow::Result<Option<SocketAddr>> {
        match self {
            TlsListen::Off => Ok(None),
            TlsListen::At(a) => Ok(Some(a)),
            // Port 0 stays 0: every server started on a free SIP port gets
            // a free TLS port too, so test servers never meet on 5061.
            TlsListen::Auto if sip.port() == 0 => Ok(Some(sip)),
            TlsListen::Auto => match sip.port().checked_add(1) {
                Some(port) => Ok(Some(SocketAddr::new(sip.ip(), port))),
                None => bail!(
                    "SIP port {} leaves no next port for TLS: set --tls ADDR or --tls off",
                    sip.port()
                ),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// A segment is sealed when it reaches this many rows...
    pub segment_max_rows: usize,
    /// ...or when its buffered rows take this many bytes of memory...
    pub segment_max_bytes: usize,
    /// ...or this age.
    pub segment_max_age_secs: u64,
    /// Capacity of the channel from the server's tap to the collector.
    pub tap_queue: usize,
    /// Messages arriving up to this late (capture time) are still put in
    /// order before correlation.
    pub reorder_window_ms: u64,
    /// The same packet from two capture points within this time is
    /// archived once. Keep it under T1 so retransmissions stay distinct.
    pub dedup_window_ms: u64,
    /// Critical mode: an IM is relayed only once the archive accepted its
    /// record; when it cannot, the IM is refused with 503 and Retry-After.
    pub critical: bool,
    /// Critical mode: how long an IM waits for the archive before it is
    /// refused (a stalled archive refuses, it does not hold signalling).
    pub critical_timeout_ms: u64,
    /// `Retry-After` of that 503.
    pub retry_after_secs: u64,
    /// The write-ahead log starts a new file past this size.
    pub wal_file_bytes: u64,
    /// A checkpoint (seal, snapshot, trim the log) at least this often...
    pub checkpoint_secs: u64,
    /// ...and after this much log: it bounds what a restart replays.
    pub checkpoint_bytes: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        // The collector's own defaults, so the two cannot drift apart; a
        // running server seals sooner by age than the library default.
        let limits = SegmentLimits::default();
        let arrivals = ArrivalConfig::default();
        let wal = WalConfig::default();
        let ms = |ns: i64| u64::try_from(ns / 1_000_000).unwrap_or(0);
        ArchiveConfig {
            segment_max_rows: limits.max_rows,
            segment_max_bytes: limits.max_bytes,
            segment_max_age_secs: 60,
            tap_queue: 65_536,
            reorder_window_ms: ms(arrivals.reorder_window_ns),
            dedup_window_ms: ms(arrivals.dedup_window_ns),
            critical: false,
            critical_timeout_ms: 2_000,
            retry_after_secs: 5,
            wal_file_bytes: wal.file_bytes,
            // Every segment-age period: checkpoints add no extra segments.
            checkpoint_secs: 60,
            checkpoint_bytes: wal.checkpoint_bytes,
        }
    }
}

/// HEP collector socket for traffic of other SIP servers (Kamailio
/// `siptrace`, heplify, sngrep `-H`, ...). Off unless `listen` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HepConfig {
    /// UDP and TCP address, e.g. "0.0.0.0:9060" (`--hep` overrides).
    pub listen: Option<SocketAddr>,
    /// When set, packets without this HEP auth key are dropped and counted.
    pub auth_key: Option<String>,
    /// Larger (or larger when inflated) payloads are dropped and counted.
    pub max_payload_bytes: usize,
    pub max_tcp_connections: usize,
    pub tcp_idle_timeout_secs: u64,
    /// UDP receive buffer to ask the kernel for (capped by net.core.rmem_max).
    pub udp_recv_buffer_bytes: usize,
}

impl Default for HepConfig {
    fn default() -> Self {
        HepConfig {
            listen: None,
            auth_key: None,
            max_payload_bytes: 64 * 1024,
            max_tcp_connections: 1024,
            tcp_idle_timeout_secs: 300,
            udp_recv_buffer_bytes: 8 << 20,
        }
    }
}

impl Config {
    /// Reads `path` if given (must exist), else `<data>/sipvault.toml` or
    /// `./sipvault.toml` if present, else defaults.
    pub fn load(path: Option<&Path>, data_dir: &Path) -> anyhow::Result<Config> {
        let candidate = match path {
            Some(p) => Some(p.to_path_buf()),
            None => [data_dir.join("sipvault.toml"), "sipvault.toml".into()]
                .into_iter()
                .find(|p| p.exists()),
        };
        let Some(p) = candidate else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading config {}", p.display()))?;
        Self::parse(&text).with_context(|| format!("in config {}", p.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        let factory = &config.conferences.factory_user;
        // It becomes the user part of a SIP URI.
        if factory.is_empty()
            || !factory
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("conferences.factory_user {factory:?}: letters, digits, '-', '_' and '.' only");
        }
        if config.conferences.idle_timeout_secs == 0 || config.conferences.max_participants < 2 {
            bail!(
                "conferences: idle_timeout_secs must be at least 1 and max_participants at least 2"
            );
        }
        Ok(config)
    }

    /// The digest algorithms to challenge with; at least one.
    pub fn digest_algorithms(&self) -> anyhow::Result<Vec<Algorithm>> {
        if self.sip.digest_algorithms.is_empty() {
            bail!("sip.digest_algorithms is empty: nobody could register");
        }
        Ok(self.sip.digest_algorithms.iter().map(|a| a.0).collect())
    }

    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.sip.t1_ms)
    }

    /// The TLS listener of a server whose SIP address is `sip`: the
    /// configured certificate, or the one generated into `<data>/tls/`
    /// (made on the first start, reused after). Logs the certificate's
    /// path and SHA-256 fingerprint, which clients pin or compare.
    pub fn tls_listener(
        &self,
        data_dir: &Path,
        sip: SocketAddr,
    ) -> anyhow::Result<Option<TlsListener>> {
        let Some(addr) = self.sip.tls_listen.resolve(sip)? else {
            return Ok(None);
        };
        let identity = match (&self.sip.tls_cert, &self.sip.tls_key) {
            (Some(cert), Some(key)) => TlsIdentity::load_pem(cert, key)?,
            (None, None) => TlsIdentity::load_or_generate(&data_dir.join("tls"), &self.sip.domain)?,
            _ => bail!(
                "a TLS certificate needs both --tls-cert and --tls-key (sip.tls_cert and sip.tls_key)"
            ),
        };
        let config = identity
            .server_config()
            .with_context(|| format!("TLS certificate {}", identity.cert_path.display()))?;
        let origin = match identity.origin {
            Origin::Given => "given",
            Origin::Generated => "generated",
            Origin::Reused => "reused",
        };
        tracing::info!(
            "tls certificate={} sha256={} ({origin})",
            identity.cert_path.display(),
            identity.fingerprint()
        );
        Ok(Some(TlsListener { addr, config }))
    }
}

impl Config {
    /// The federated peers, checked: not our own domain, each domain once,
    /// TLS peers only when we listen for TLS ourselves (a peer's requests
    /// back to us, and its answers to our Record-Route, arrive there), and
    /// their trusted certificates readable.
    pub fn federation(&self, tls_listening: bool) -> anyhow::Result<Federation> {
        let mut peers: Vec<FederationPeer> = Vec::new();
        let mut tls_peers = Vec::new();
        for f in &self.federation {
            let domain = f.domain.trim().to_ascii_lowercase();
            if domain.is_empty() || domain.eq_ignore_ascii_case(&self.sip.domain) {
                bail!(
                    "federation domain {:?} must be another domain than ours ({})",
                    f.domain,
                    self.sip.domain
                );
            }
            if peers.iter().any(|p| p.domain == domain) {
                bail!("federation domain {domain} is listed twice");
            }
            let transport = match f.transport {
                FederationTransport::Tls => Transport::Tls,
                FederationTransport::Tcp => Transport::Tcp,
            };
            if transport == Transport::Tls {
                if !tls_listening {
                    bail!(
                        "federation with {domain} over TLS needs our TLS listener: set sip.tls_listen, or transport = \"tcp\""
                    );
                }
                let roots_path = f
                    .certificate
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
                let roots = read_certificates(&roots_path).with_context(|| {
                    format!("trusted certificates for federation with {domain}")
                })?;
                let client = TlsClient::for_domain(&roots, &domain)
                    .with_context(|| format!("TLS client for federation with {domain}"))?;
                tls_peers.push((f.address, client));
            }
            peers.push(FederationPeer {
                domain,
                addr: f.address,
                transport,
            });
        }
        Ok(Federation { peers, tls_peers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_algorithms_default_to_md5_and_take_sha256() {
        let c = Config::default();
        assert_eq!(c.digest_algorithms().unwrap(), vec![Algorithm::Md5]);
        let c = Config::parse("[sip]\ndigest_algorithms = [\"SHA-256\", \"md5\"]\n").unwrap();
        assert_eq!(
            c.digest_algorithms().unwrap(),
            vec![Algorithm::Sha256, Algorithm::Md5]
        );
        let c = Config::parse("[sip]\ndigest_algorithms = []\n").unwrap();
        assert!(c.digest_algorithms().is_err(), "none at all");
        let err = Config::parse("[sip]\ndigest_algorithms = [\"SHA-512\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("SHA-256"), "{err:#}");
    }

    #[test]
    fn federation_entries_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = TlsIdentity::load_or_generate(dir.path(), "partner.example").unwrap();
        let text = format!(
            "[sip]\ndomain = \"a.example\"\n\n[[federation]]\ndomain = \"Partner.Example\"\naddress = \"127.0.0.2:5061\"\ncertificate = {:?}\n\n[[federation]]\ndomain = \"legacy.example\"\naddress = \"10.1.1.1:5060\"\ntransport = \"tcp\"\n",
            id.cert_path
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.federation[0].transport,
            FederationTransport::Tls,
            "TLS by default"
        );
        let f = c.federation(true).unwrap();
        assert_eq!(
            f.peers,
            vec![
                FederationPeer {
                    domain: "partner.example".into(),
                    addr: "127.0.0.2:5061".parse().unwrap(),
                    transport: Transport::Tls,
                },
                FederationPeer {
                    domain: "legacy.example".into(),
                    addr: "10.1.1.1:5060".parse().unwrap(),
                    transport: Transport::Tcp,
                },
            ]
        );
        assert_eq!(f.tls_peers.len(), 1, "a TLS client for the TLS peer only");
        let err = c.federation(false).err().expect("TLS peer without our TLS");
        assert!(format!("{err:#}").contains("tls_listen"), "{err:#}");

        let own = Config::parse("[[federation]]\ndomain = \"sipvault.local\"\naddress = \"127.0.0.2:5061\"\ntransport = \"tcp\"\n").unwrap();
        assert!(own.federation(true).is_err(), "our own domain");
        let twice = Config::parse("[[federation]]\ndomain = \"b.example\"\naddress = \"127.0.0.2:5061\"\ntransport = \"tcp\"\n[[federation]]\ndomain = \"B.example\"\naddress = \"127.0.0.3:5061\"\ntransport = \"tcp\"\n").unwrap();
        assert!(twice.federation(true).is_err(), "a domain twice");
        let missing = Config::parse(&format!(
            "[[federation]]\ndomain = \"b.example\"\naddress = \"127.0.0.2:5061\"\ncertificate = {:?}\n",
            dir.path().join("absent.pem")
        ))
        .unwrap();
        let err = missing
            .federation(true)
            .err()
            .expect("unreadable certificate");
        assert!(format!("{err:#}").contains("absent.pem"), "{err:#}");
        assert!(
            Config::parse("[[federation]]\ndomain = \"b.example\"\n").is_err(),
            "no address"
        );
        assert!(
            Config::parse("[[federation]]\ndomain = \"b.example\"\naddress = \"127.0.0.2:5061\"\ntransport = \"udp\"\n").is_err(),
            "UDP is not offered"
        );
        assert!(
            Config::parse(
                "[[federation]]\ndomain = \"b.example\"\naddress = \"127.0.0.2:5061\"\nport = 1\n"
            )
            .is_err(),
            "unknown key"
        );
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        // The values the README documents.
        let a = Config::default().archive;
        assert_eq!(
            (
                a.segment_max_rows,
                a.segment_max_bytes,
                a.segment_max_age_secs
            ),
            (200_000, 33_554_432, 60)
        );
        assert_eq!((a.reorder_window_ms, a.dedup_window_ms), (200, 100));
        assert_eq!(
            (a.critical, a.critical_timeout_ms, a.retry_after_secs),
            (false, 2_000, 5)
        );
        assert_eq!(
            (a.wal_file_bytes, a.checkpoint_secs, a.checkpoint_bytes),
            (67_108_864, 60, 1_073_741_824)
        );
    }

    #[test]
    fn conferences_defaults_overrides_and_limits() {
        let c = Config::default().conferences;
        // The values the README documents.
        assert_eq!(
            (
                c.factory_user.as_str(),
                c.idle_timeout_secs,
                c.max_participants,
                c.max_conferences
            ),
            ("conf-factory", 1800, 100, 1000)
        );
        let c = Config::parse(
            "[conferences]\nfactory_user = \"adhoc\"\nidle_timeout_secs = 60\nmax_participants = 5\n",
        )
        .unwrap();
        let core = c.conferences.core();
        assert_eq!(core.factory_user, "adhoc");
        assert_eq!(core.idle_timeout, Duration::from_secs(60));
        assert_eq!((core.max_participants, core.max_conferences), (5, 1000));
        for bad in [
            "[conferences]\nfactory_user = \"\"\n",
            "[conferences]\nfactory_user = \"a b\"\n",
            "[conferences]\nidle_timeout_secs = 0\n",
            "[conferences]\nmax_participants = 1\n",
            "[conferences]\nfactory = \"x\"\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rooms_defaults_overrides_and_limits() {
        let r = Config::default().rooms;
        // The values the README documents.
        assert_eq!(
            (
                r.posts_per_second_per_member.get(),
                r.burst_per_member.get(),
                r.history_posts
            ),
            (5, 10, 1000)
        );
        let c = Config::parse(
            "[rooms]\nposts_per_second_per_member = 1\nburst_per_member = 3\nhistory_posts = 50\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.rooms.posts_per_second_per_member.get(),
                c.rooms.burst_per_member.get(),
                c.rooms.history_posts
            ),
            (1, 3, 50)
        );
        assert!(
            Config::parse("[rooms]\nhistory_posts = -1\n").is_err(),
            "a negative history size"
        );
        assert!(
            Config::parse("[rooms]\nposts_per_second_per_member = 0\n").is_err(),
            "a rate of 0 would refuse every post"
        );
        assert!(Config::parse("[rooms]\nposts_per_minute = 5\n").is_err());
    }

    #[test]
    fn settings_override_defaults() {
        let c = Config::parse("[sip]\ndomain = \"example.com\"\nmax_body_bytes = 100\n[archive]\nsegment_max_rows = 5\n").unwrap();
        assert_eq!(c.sip.domain, "example.com");
        assert_eq!(c.sip.max_body_bytes, 100);
        assert_eq!(c.sip.t1_ms, 500);
        assert_eq!(c.archive.segment_max_rows, 5);
        assert_eq!(c.hep.listen, None, "HEP is off by default");
        assert_eq!(c.sip.tls_listen, TlsListen::Auto, "TLS is on by default");
        let c = Config::parse("[hep]\nlisten = \"127.0.0.1:9060\"\nauth_key = \"k\"\n").unwrap();
        assert_eq!(c.hep.listen, Some("127.0.0.1:9060".parse().unwrap()));
        assert_eq!(c.hep.auth_key.as_deref(), Some("k"));
        let c = Config::parse(
            "[presence]\nallow = { alice = [\"sip:carol@partner.net\", \"*@partner.net\"] }\n",
        )
        .unwrap();
        assert_eq!(
            c.presence.allow.get("alice"),
            Some(&vec![
                "sip:carol@partner.net".to_string(),
                "*@partner.net".to_string()
            ])
        );
        assert!(Config::parse("[presence]\nwatchers = 1\n").is_err());
    }

    #[test]
    fn tls_listen_values() {
        let sip = |s: &str| s.parse::<SocketAddr>().unwrap();
        let c = Config::parse("[sip]\ntls_listen = \"off\"\n").unwrap();
        assert_eq!(c.sip.tls_listen, TlsListen::Off);
        let c = Config::parse(
            "[sip]\ntls_listen = \"0.0.0.0:5071\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.sip.tls_listen, TlsListen::At(sip("0.0.0.0:5071")));
        assert_eq!(c.sip.tls_cert, Some(PathBuf::from("c.pem")));
        let err = Config::parse("[sip]\ntls_listen = \"yes\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("auto"), "{err:#}");

        let auto = TlsListen::Auto;
        assert_eq!(
            auto.resolve(sip("127.0.0.1:5060")).unwrap(),
            Some(sip("127.0.0.1:5061")),
            "5061 beside the default 5060"
        );
        assert_eq!(
            auto.resolve(sip("10.0.0.1:5080")).unwrap(),
            Some(sip("10.0.0.1:5081"))
        );
        assert_eq!(
            auto.resolve(sip("127.0.0.1:0")).unwrap(),
            Some(sip("127.0.0.1:0")),
            "a free port beside a free port"
        );
        assert!(auto.resolve(sip("127.0.0.1:65535")).is_err());
        assert_eq!(TlsListen::Off.resolve(sip("127.0.0.1:5060")).unwrap(), None);
        for s in ["auto", "off", "127.0.0.1:5061"] {
            assert_eq!(s.parse::<TlsListen>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn tls_certificate_is_generated_once_or_given_as_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let sip = "127.0.0.1:0".parse().unwrap();
        let c = Config::default();
        assert!(c.tls_listener(dir.path(), sip).unwrap().is_some());
        assert!(dir.path().join("tls/cert.pem").exists());
        assert!(dir.path().join("tls/key.pem").exists());
        let mut given = Config::default();
        given.sip.tls_cert = Some(dir.path().join("tls/cert.pem"));
        assert!(
            given.tls_listener(dir.path(), sip).is_err(),
            "a certificate without its key"
        );
        given.sip.tls_key = Some(dir.path().join("tls/key.pem"));
        assert!(given.tls_listener(dir.path(), sip).unwrap().is_some());
        given.sip.tls_listen = TlsListen::Off;
        assert!(given.tls_listener(dir.path(), sip).unwrap().is_none());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("[sip]\ndomian = \"x\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("domian"),
            "error should name the unknown key: {err:#}"
        );
        assert!(Config::parse("[nonsense]\n").is_err());
    }
}
