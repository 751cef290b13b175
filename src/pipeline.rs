//! Wiring of one running sipvault: catalog, SIP server, collector and
//! indexer, connected by bounded channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sipvault_catalog::Catalog;
use sipvault_collector::arrivals::ArrivalConfig;
use sipvault_collector::calls::CallConfig;
use sipvault_collector::hep_listener::{HepListener, HepListenerConfig, HepSinks, HepStats};
use sipvault_collector::{
    CollectorConfig, CollectorStats, Inputs, SealedSegment, SegmentLimits, WalConfig,
};
use sipvault_indexer::{ImIndex, IndexDoc};
use sipvault_query::reindex::{SegmentRef, indexable_segments, read_segment_docs, repair_index};
use sipvault_schemas::TABLE_IM_MESSAGES;
use sipvault_server::{
    CoreConfig, CriticalArchive, RoomConfig, RoomDirectory, RoomInfo, Server, ServerConfig,
    UserCredentials, UserDirectory,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::status::{ServeStatus, counters};

pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

pub struct Running {
    pub server: Server,
    pub hep: Option<HepListener>,
    pub catalog: Catalog,
    archiver: Archiver,
    background: Vec<JoinHandle<()>>,
    status: StatusSource,
    users: UserDirectory,
    domain: String,
}

pub fn server_config(config: &Config, sip: SocketAddr) -> ServerConfig {
    ServerConfig {
        sip_addr: sip,
        core: CoreConfig {
            domain: config.sip.domain.clone(),
            t1: config.t1(),
            t2: Duration::from_millis(config.sip.t2_ms),
            no_answer_timeout: Duration::from_secs(config.sip.no_answer_secs),
            max_body_bytes: config.sip.max_body_bytes,
            min_expires: config.sip.min_expires,
            max_expires: config.sip.max_expires,
            seed: rand_seed(),
            archive_retry_after: Duration::from_secs(config.archive.retry_after_secs),
            presence_allow: config.presence.allow.clone(),
            rooms: RoomConfig {
                posts_per_second: config.rooms.posts_per_second_per_member,
                burst: config.rooms.burst_per_member,
                history_posts: config.rooms.history_posts,
            },
            conferences: config.conferences.core(),
            ..CoreConfig::default()
        },
        max_message_bytes: config.sip.max_message_bytes,
        tcp_message_timeout: Duration::from_secs(config.sip.tcp_message_timeout_secs),
        tcp_idle_timeout: Duration::from_secs(config.sip.tcp_idle_timeout_secs),
        max_tcp_connections: config.sip.max_tcp_connections,
        udp_recv_buffer: config.sip.udp_recv_buffer_bytes,
        tls: None,
        critical_archive: None,
        tls_peers: Vec::new(),
        room_events: None,
    }
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 1_000_000) * 1_000_000
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

async fn load_users(
    catalog: &Catalog,
    domain: &str,
) -> anyhow::Result<HashMap<String, UserCredentials>> {
    Ok(catalog
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.domain.eq_ignore_ascii_case(domain))
        .map(|u| {
            (
                u.name,
                UserCredentials {
                    ha1_md5: u.ha1_md5,
                    ha1_sha256: u.ha1_sha256,
                },
            )
        })
        .collect())
}

/// The rooms of `domain` and their members, as the core knows them.
async fn load_rooms(catalog: &Catalog, domain: &str) -> anyhow::Result<RoomDirectory> {
    let mut rooms: RoomDirectory = catalog
        .list_rooms()
        .await?
        .into_iter()
        .filter(|r| r.domain.eq_ignore_ascii_case(domain))
        .map(|r| {
            let info = RoomInfo {
                private: r.private,
                ..RoomInfo::default()
            };
            (r.name, info)
        })
        .collect();
    for m in catalog.room_members(None).await? {
        if let Some(room) = rooms.get_mut(&m.room) {
            room.members.insert(m.user, m.role);
        }
    }
    Ok(rooms)
}

/// Gives the core the newest `[rooms] history_posts` posts of each room of
/// `domain` from the archive, so `/history` over SIP reaches back past a
/// restart. A room whose history cannot be read starts without one.
async fn seed_room_histories(
    data_dir: &Path,
    catalog: &Catalog,
    domain: &str,
    last: usize,
    users: &UserDirectory,
) -> anyhow::Result<()> {
    if last == 0 {
        return Ok(());
    }
    for room in catalog.list_rooms().await? {
        if !room.domain.eq_ignore_ascii_case(domain) {
            continue;
        }
        match crate::rooms::archived_posts(data_dir, &room.uri(), last).await {
            Ok(posts) if posts.is_empty() => {}
            Ok(posts) => users.seed_room_history(room.name, posts).await,
            Err(e) => {
                tracing::warn!(room = %room.name, error = %e, "reading the room's history from the archive failed")
            }
        }
    }
    Ok(())
}

impl Running {
    pub async fn start(
        data_dir: &Path,
        config: &Config,
        sip: SocketAddr,
    ) -> anyhow::Result<Running> {
        let catalog = Catalog::open(data_dir)
            .await
            .context("opening the catalog")?;
        let (tap_tx, raw_tx, mut inputs) = Inputs::channel(config.archive.tap_queue);
        let hep = match config.hep.listen {
            Some(addr) => Some(
                HepListener::start(
                    HepListenerConfig {
                        addr,
                        auth_key: config.hep.auth_key.clone(),
                        max_payload: config.hep.max_payload_bytes,
                        max_tcp_connections: config.hep.max_tcp_connections,
                        tcp_idle_timeout: Duration::from_secs(config.hep.tcp_idle_timeout_secs),
                        udp_recv_buffer: config.hep.udp_recv_buffer_bytes,
                    },
                    HepSinks {
                        sip: tap_tx.clone(),
                        raw: raw_tx,
                    },
                )
                .await?,
            ),
            None => None,
        };
        let mut settings = server_config(config, sip);
        settings.tls = config.tls_listener(data_dir, sip)?;
        settings.core.digest_algorithms = config.digest_algorithms()?;
        let federation = config.federation(settings.tls.is_some())?;
        for peer in &federation.peers {
            tracing::info!(domain = %peer.domain, address = %peer.addr, transport = ?peer.transport, "federated domain");
        }
        settings.core.federation = federation.peers;
        settings.tls_peers = federation.tls_peers;
        if config.archive.critical {
            settings.critical_archive = Some(CriticalArchive {
                tx: inputs.acked_channel(config.archive.tap_queue),
                timeout: Duration::from_millis(config.archive.critical_timeout_ms),
            });
        }
        settings.room_events = Some(inputs.room_events_channel(config.archive.tap_queue));
        let server = Server::start(settings, tap_tx).await?;
        // Users are known before the address is announced: a client that
        // registers as soon as it sees the listening line is not told 404.
        let users = server.user_directory();
        users
            .replace(load_users(&catalog, &config.sip.domain).await?)
            .await;
        users
            .replace_rooms(load_rooms(&catalog, &config.sip.domain).await?)
            .await;
        seed_room_histories(
            data_dir,
            &catalog,
            &config.sip.domain,
            config.rooms.history_posts,
            &users,
        )
        .await?;
        tracing::info!(
            "sipvault listening sip_udp={} sip_tcp={} sip_tls={} domain={} data={}",
            server.udp_addr,
            server.tcp_addr,
            server.tls_addr.map_or("off".into(), |a| a.to_string()),
            config.sip.domain,
            data_dir.display()
        );
        if let Some(hep) = &hep {
            tracing::info!(
                "sipvault collecting hep_udp={} hep_tcp={} auth_key={}",
                hep.udp_addr,
                hep.tcp_addr,
                if config.hep.auth_key.is_some() {
                    "required"
                } else {
                    "none"
                }
            );
        }

        // Segments sealed but not indexed (a crash in between) are indexed
        // before anything new, by the indexer thread.
        let manifest = catalog
            .segments()
            .await
            .context("reading the segment manifest")?;
        let archiver = Archiver::start_repairing(
            data_dir,
            config,
            catalog.clone(),
            inputs,
            true,
            Some(indexable_segments(&manifest)),
        )?;

        let refresher = {
            let (catalog, users, domain) =
                (catalog.clone(), users.clone(), config.sip.domain.clone());
            tokio::spawn(async move {
                let mut last = HashMap::new();
                let mut last_rooms = RoomDirectory::new();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match load_users(&catalog, &domain).await {
                        Ok(now) if now != last => {
                            users.replace(now.clone()).await;
                            last = now;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "reloading users failed"),
                    }
                    match load_rooms(&catalog, &domain).await {
                        Ok(now) if now != last_rooms => {
                            users.replace_rooms(now.clone()).await;
                            last_rooms = now;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "reloading rooms failed"),
                    }
                }
            })
        };
        let status = StatusSource {
            data_dir: data_dir.to_path_buf(),
            started: now_rfc3339(),
            sip_udp: server.udp_addr.to_string(),
            sip_tcp: server.tcp_addr.to_string(),
            hep: hep
                .as_ref()
                .map(|h| (h.udp_addr.to_string(), h.stats.clone())),
            collector: archiver.stats.clone(),
            server: server.stats.clone(),
        };
        let reporter = {
            let status = status.clone();
            tokio::spawn(async move {
                // The status file every 5 s, a log line every minute.
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                for n in 0u64.. {
                    tick.tick().await;
                    let now = status.snapshot(true);
                    if let Err(e) = crate::status::write(&status.data_dir, &now) {
                        tracing::warn!(error = %e, "writing the status file failed");
                    }
                    if n > 0 && n.is_multiple_of(12) {
                        tracing::info!(collector = ?now.collector, server = ?now.server, hep = ?now.hep_counters, "stats");
                    }
                }
            })
        };
        Ok(Running {
            server,
            hep,
            catalog,
            archiver,
            background: vec![refresher, reporter],
            status,
            users,
            domain: config.sip.domain.clone(),
        })
    }

    /// Pushes the catalog's users and rooms to the core now, instead of at
    /// the next reload.
    pub async fn refresh_users(&self) -> anyhow::Result<()> {
        self.users
            .replace(load_users(&self.catalog, &self.domain).await?)
            .await;
        self.users
            .replace_rooms(load_rooms(&self.catalog, &self.domain).await?)
            .await;
        Ok(())
    }

    /// Stops the server, lets the collector archive everything received and
    /// seal its segments, then waits for the indexer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for t in &self.background {
            t.abort();
        }
        if let Some(hep) = self.hep {
            hep.shutdown().await;
        }
        self.server.shutdown().await;
        self.archiver.finish().await?;
        let last = self.status.snapshot(false);
        tracing::info!(
            collector = ?last.collector,
            server = ?last.server,
            hep = ?last.hep_counters,
            "sipvault stopped; archive sealed"
        );
        if let Err(e) = crate::status::write(&self.status.data_dir, &last) {
            tracing::warn!(error = %e, "writing the status file failed");
        }
        self.catalog.close().await;
        Ok(())
    }
}

/// Where the counters of a running `serve` come from, for the status file.
#[derive(Clone)]
struct StatusSource {
    data_dir: PathBuf,
    started: String,
    sip_udp: String,
    sip_tcp: String,
    hep: Option<(String, Arc<HepStats>)>,
    collector: Arc<CollectorStats>,
    server: Arc<sipvault_server::ServerStats>,
}

impl StatusSource {
    fn snapshot(&self, running: bool) -> ServeStatus {
        ServeStatus {
            pid: std::process::id(),
            running,
            started: self.started.clone(),
            updated: now_rfc3339(),
            sip_udp: self.sip_udp.clone(),
            sip_tcp: self.sip_tcp.clone(),
            hep: self.hep.as_ref().map(|(addr, _)| addr.clone()),
            collector: counters(self.collector.snapshot()),
            server: counters(self.server.snapshot()),
            hep_counters: self.hep.as_ref().map(|(_, s)| counters(s.snapshot())),
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The collector task and the indexer thread behind it: what every
/// command that writes the archive (serve, demo, import) runs.
pub struct Archiver {
    pub stats: Arc<CollectorStats>,
    collector: JoinHandle<Result<(), sipvault_collector::CollectorError>>,
    indexer: std::thread::JoinHandle<()>,
}

impl Archiver {
    /// `live`: traffic arrives now (serve), so call timeouts follow the
    /// wall clock too; an import's time is only that of its packets.
    pub fn start(
        data_dir: &Path,
        config: &Config,
        catalog: Catalog,
        inputs: Inputs,
        live: bool,
    ) -> anyhow::Result<Archiver> {
        Self::start_repairing(data_dir, config, catalog, inputs, live, None)
    }

    /// [`Archiver::start`] whose indexer first brings the search index in line
    /// with `manifest` (the indexable segments of the catalog), see
    /// [`repair_index`].
    pub fn start_repairing(
        data_dir: &Path,
        config: &Config,
        catalog: Catalog,
        inputs: Inputs,
        live: bool,
        manifest: Option<Vec<SegmentRef>>,
    ) -> anyhow::Result<Archiver> {
        let (sealed_tx, sealed_rx) = mpsc::channel::<SealedSegment>(64);
        let stats = Arc::new(CollectorStats::default());
        let collector = tokio::spawn(sipvault_collector::run(
            CollectorConfig {
                data_dir: data_dir.to_path_buf(),
                limits: SegmentLimits {
                    max_rows: config.archive.segment_max_rows,
                    max_bytes: config.archive.segment_max_bytes,
                    max_age: Duration::from_secs(config.archive.segment_max_age_secs),
                },
                im_answer_timeout: config.t1() * 64,
                calls: CallConfig::default(),
                arrivals: ArrivalConfig {
                    reorder_window_ns: ms_to_ns(config.archive.reorder_window_ms),
                    // An import archives every frame of every file, as
                    // tshark counts them; copies are a live-capture matter.
                    dedup_window_ns: if live {
                        ms_to_ns(config.archive.dedup_window_ms)
                    } else {
                        0
                    },
                },
                live,
                // A live capture cannot be repeated: it is logged before
                // it counts as accepted. An import is repeated whole.
                wal: live.then(|| WalConfig {
                    file_bytes: config.archive.wal_file_bytes.max(1),
                    checkpoint_interval: Duration::from_secs(config.archive.checkpoint_secs),
                    checkpoint_bytes: config.archive.checkpoint_bytes,
                }),
            },
            catalog,
            inputs,
            sealed_tx,
            stats.clone(),
        ));
        let mut index =
            ImIndex::open_or_create(&index_dir(data_dir)).context("opening the search index")?;
        let data = data_dir.to_path_buf();
        let indexer = std::thread::Builder::new()
            .name("indexer".into())
            .spawn(move || {
                if let Some(manifest) = manifest {
                    repair(&mut index, &data, &manifest);
                }
                index_sealed(index, &data, sealed_rx)
            })
            .context("starting the indexer")?;
        Ok(Archiver {
            stats,
            collector,
            indexer,
        })
    }

    /// Waits until every input sender is gone, everything is sealed and indexed.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.collector.await.context("collector task")??;
        let indexer = self.indexer;
        tokio::task::spawn_blocking(move || indexer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("indexer thread panicked"))?;
        Ok(())
    }
}

fn repair(index: &mut ImIndex, data_dir: &Path, manifest: &[SegmentRef]) {
    match repair_index(index, data_dir, manifest) {
        Ok(summary) => {
            for (path, e) in &summary.failed {
                tracing::error!(segment = %path, error = %e, "cannot index archive segment");
            }
            if summary.segments > 0 || summary.removed > 0 {
                tracing::info!(
                    added = summary.segments,
                    documents = summary.documents,
                    removed = summary.removed,
                    "search index repaired from the segment manifest"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "repairing the search index failed"),
    }
}

/// Segments staged for one commit at most: a commit makes them durable
/// and searchable, so a long backlog still commits now and then.
const SEGMENTS_PER_COMMIT: usize = 64;

/// Indexes each sealed segment under its manifest path: IM rows as the
/// collector handed them over, calls and presence read back from the
/// segment. The segments waiting when the indexer gets to them share one
/// commit: a commit cost as much as indexing a few thousand records, and
/// the end of an import or a burst of traffic seals several at once.
fn index_sealed(mut index: ImIndex, data_dir: &Path, mut sealed: mpsc::Receiver<SealedSegment>) {
    while let Some(first) = sealed.blocking_recv() {
        let mut waiting = vec![first];
        while waiting.len() < SEGMENTS_PER_COMMIT
            && let Ok(seg) = sealed.try_recv()
        {
            waiting.push(seg);
        }
        let mut staged: Vec<(SealedSegment, Vec<IndexDoc>)> = Vec::new();
        for mut seg in waiting {
            let Some(docs) = segment_docs(data_dir, &mut seg) else {
                continue;
            };
            if let Err(e) = index.stage_documents(&seg.path, &docs) {
                tracing::error!(segment = %seg.segment_id, error = %e, "indexing failed");
                // The failed staging rolled back the whole uncommitted
                // batch: the segments staged before it are staged again.
                // Should that fail too, they are left to the repair at the
                // next start, which indexes what the manifest has and the
                // index lacks.
                let restaged = staged
                    .iter()
                    .try_for_each(|(earlier, docs)| index.stage_documents(&earlier.path, docs));
                if let Err(e) = restaged {
                    for (earlier, _) in staged.drain(..) {
                        tracing::error!(segment = %earlier.segment_id, error = %e, "indexing failed");
                    }
                }
                continue;
            }
            staged.push((seg, docs));
        }
        if staged.is_empty() {
            continue;
        }
        match index.commit() {
            Ok(()) => {
                for (seg, _) in &staged {
                    tracing::info!(segment = %seg.segment_id, rows = seg.rows, "segment indexed");
                }
            }
            Err(e) => {
                for (seg, _) in &staged {
                    tracing::error!(segment = %seg.segment_id, error = %e, "indexing failed");
                }
            }
        }
    }
}

/// The index documents of a sealed segment, or `None` for a table the
/// index does not hold (or a segment that cannot be read back).
fn segment_docs(data_dir: &Path, seg: &mut SealedSegment) -> Option<Vec<IndexDoc>> {
    if seg.table == TABLE_IM_MESSAGES {
        Some(
            std::mem::take(&mut seg.im_rows)
                .into_iter()
                .map(IndexDoc::from)
                .collect(),
        )
    } else if sipvault_indexer::DocType::for_table(&seg.table).is_some() {
        let segment = SegmentRef {
            table: seg.table.clone(),
            path: seg.path.clone(),
        };
        match read_segment_docs(data_dir, &segment) {
            Ok(docs) => Some(docs),
            Err(e) => {
                tracing::error!(segment = %seg.path, error = %e, "cannot read sealed segment for indexing");
                None
            }
        }
    } else {
        None
    }
}
