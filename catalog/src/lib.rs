//! The catalog: users, the archive manifest (a hash chain over sealed
//! segments), imported capture files, the audit log of who read the archive
//! and, later, rooms and holds.
//!
//! One code path serves SQLite (default, a file inside the data directory)
//! and PostgreSQL (for scale-out) through sqlx's `Any` driver, so every
//! statement here is written in the SQL both dialects share.

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe, ConnectOptions, Row};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("invalid catalog url {url}: {message}")]
    Url { url: String, message: String },
    #[error("catalog directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("room {0} already exists")]
    RoomExists(String),
    #[error("no room {0}")]
    NoSuchRoom(String),
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("{user} is not a member of room {room}")]
    NotAMember { room: String, user: String },
    #[error(
        "room name {0:?} must be 1 to 64 lowercase letters, digits, '-', '_' or '.' (it becomes the SIP user room-NAME)"
    )]
    InvalidRoomName(String),
    #[error("unknown room role {0:?} (roles: owner, member, read-only)")]
    InvalidRole(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// File name of the SQLite catalog inside the data directory.
pub const SQLITE_FILE: &str = "catalog.db";

/// The hash a chain starts from (no previous entry).
pub const CHAIN_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub domain: String,
    /// Hex MD5(name:domain:password); the password itself is never stored.
    pub ha1_md5: String,
    /// Hex SHA-256(name:domain:password) for RFC 8760 digest.
    pub ha1_sha256: String,
    pub created_ns: i64,
}

/// A sealed segment about to enter the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSegment {
    pub table_name: String,
    /// Path relative to the data directory, `/`-separated.
    pub path: String,
    pub rows: i64,
    pub sha256: String,
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    /// Where in the collector's write-ahead log the segment was rolled
    /// (see `sipvault_collector::wal`): a replay after a crash skips the
    /// segments already sealed. `None` for archives written without a log
    /// (file imports).
    pub wal_position: Option<i64>,
}

/// A capture file whose messages are in the archive, keyed by content
/// hash so importing the same bytes again (under any name) adds nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRecord {
    pub sha256: String,
    pub file_name: String,
    pub bytes: i64,
    pub packets: i64,
    pub sip_messages: i64,
    pub imported_ns: i64,
}

/// A read of the archive, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Who ran it: the OS user, or the name given with `--as`.
    pub user: String,
    /// `search`, `report`, `sql`, ...
    pub command: String,
    /// The query, statement or report arguments as given.
    pub query: String,
    /// Rows or hits returned; `None` when the command failed.
    pub result_count: Option<i64>,
    /// Why the command failed, if it did.
    pub error: Option<String>,
}

/// One audit log row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time_ns: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// What a room member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomRole {
    /// Posts and manages the room.
    Owner,
    /// Posts and reads.
    Member,
    /// Receives posts, may not post.
    ReadOnly,
}

impl RoomRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Owner => "owner",
            RoomRole::Member => "member",
            RoomRole::ReadOnly => "read-only",
        }
    }

    /// Whether a member with this role may post to the room.
    pub fn may_post(self) -> bool {
        !matches!(self, RoomRole::ReadOnly)
    }
}

impl FromStr for RoomRole {
    type Err = CatalogError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "owner" => Ok(RoomRole::Owner),
            "member" => Ok(RoomRole::Member),
            "read-only" => Ok(RoomRole::ReadOnly),
            _ => Err(CatalogError::InvalidRole(s.to_string())),
        }
    }
}

impl std::fmt::Display for RoomRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A persistent chat room; its SIP URI is `sip:room-NAME@DOMAIN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    pub name: String,
    pub domain: String,
    pub topic: String,
    pub category: Option<String>,
    /// Read (subscribed to, its history asked for over SIP) by its members
    /// only; a public room is read by any user of its domain. Posting
    /// needs membership in every room alike.
    pub private: bool,
    pub created_ns: i64,
}

impl Room {
    /// The SIP user part of the room's URI.
    pub fn sip_user(&self) -> String {
        format!("{ROOM_USER_PREFIX}{}", self.name)
    }

    pub fn uri(&self) -> String {
        format!("sip:{}@{}", self.sip_user(), self.domain)
    }
}

/// Prefix of a room's SIP user part: room `budget` is `sip:room-budget@DOMAIN`.
pub const ROOM_USER_PREFIX: &str = "room-";

/// A MESSAGE to a room whose body starts with this is a command asking for
/// the room's history, not a post: the server answers it and the archive's
/// room history leaves it out.
pub const ROOM_HISTORY_COMMAND: &str = "/history";

/// Whether `name` may name a room: it becomes part of a SIP URI and a
/// search key, so plain lowercase characters only.
pub fn valid_room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomMember {
    pub room: String,
    /// User name (of the room's domain).
    pub user: String,
    pub role: RoomRole,
    pub added_ns: i64,
}

/// What `add_room_member` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    RoleChanged {
        from: RoomRole,
    },
    /// Already a member with that role: nothing written.
    Unchanged,
}

/// One row of the room event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomEvent {
    pub id: i64,
    pub time_ns: i64,
    pub room: String,
    /// The member concerned (empty for events of the room itself).
    pub user: String,
    /// `created`, `member-added:ROLE`, `role-changed:ROLE`, `member-removed`.
    pub event: String,
    /// Who made the change (`--as` or the OS user).
    pub by: String,
}

/// One manifest row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentEntry {
    pub seq: i64,
    pub table_name: String,
    pub path: String,
    pub rows: i64,
    pub sha256: String,
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    pub sealed_ns: i64,
    pub prev_hash: String,
    /// SHA-256 over (prev_hash, this row's fields): altering or reordering any
    /// earlier row breaks every later hash.
    pub entry_hash: String,
}

impl SegmentEntry {
    pub fn compute_hash(prev_hash: &str, seg: &NewSegment, seq: i64, sealed_ns: i64) -> String {
        let mut h = Sha256::new();
        for part in [
            prev_hash,
            &seq.to_string(),
            &seg.table_name,
            &seg.path,
            &seg.rows.to_string(),
            &seg.sha256,
            &seg.min_time_ns.to_string(),
            &seg.max_time_ns.to_string(),
            &sealed_ns.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    }
}

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT NOT NULL,
        domain TEXT NOT NULL,
        ha1_md5 TEXT NOT NULL,
        ha1_sha256 TEXT NOT NULL,
        created_ns BIGINT NOT NULL,
        PRIMARY KEY (name, domain))",
    "CREATE TABLE IF NOT EXISTS segments (
        seq BIGINT PRIMARY KEY,
        table_name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        rows BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        min_time_ns BIGINT NOT NULL,
        max_time_ns BIGINT NOT NULL,
        sealed_ns BIGINT NOT NULL,
        prev_hash TEXT NOT NULL,
        entry_hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS imports (
        sha256 TEXT PRIMARY KEY,
        file_name TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        packets BIGINT NOT NULL,
        sip_messages BIGINT NOT NULL,
        imported_ns BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log (
        id BIGINT PRIMARY KEY,
        time_ns BIGINT NOT NULL,
        os_user TEXT NOT NULL,
        command TEXT NOT NULL,
        query TEXT NOT NULL,
        result_count BIGINT,
        error TEXT)",
    // The size of each imported file, for imports recorded since this table
    // exists (`imports.bytes` is what the reader consumed: less than the
    // file for a damaged one).
    "CREATE TABLE IF NOT EXISTS import_file_sizes (
        sha256 TEXT PRIMARY KEY,
        file_bytes BIGINT NOT NULL)",
    // Kept beside the manifest rather than in it: not part of the hash chain.
    "CREATE TABLE IF NOT EXISTS segment_wal_positions (
        path TEXT PRIMARY KEY,
        table_name TEXT NOT NULL,
        wal_position BIGINT NOT NULL)",
    // `private` is 0 or 1: BIGINT reads back the same through the Any
    // driver on both databases, where BOOLEAN does not on SQLite.
    "CREATE TABLE IF NOT EXISTS rooms (
        name TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        topic TEXT NOT NULL,
        category TEXT,
        private BIGINT NOT NULL,
        created_ns BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS room_members (
        room TEXT NOT NULL,
        member TEXT NOT NULL,
        role TEXT NOT NULL,
        added_ns BIGINT NOT NULL,
        PRIMARY KEY (room, member))",
    // Every membership change, so the table above can always be explained.
    "CREATE TABLE IF NOT EXISTS room_events (
        id BIGINT PRIMARY KEY,
        time_ns BIGINT NOT NULL,
        room TEXT NOT NULL,
        member TEXT NOT NULL,
        event TEXT NOT NULL,
        by_user TEXT NOT NULL)",
];

/// Attempts at taking the next audit id before giving up: concurrent
/// writers on PostgreSQL can pick the same one, and the loser retries.
const AUDIT_INSERT_ATTEMPTS: usize = 5;
/// Tries of a room change that SQLite refused as locked (about 5 s of
/// back-off in all).
const LOCKED_ATTEMPTS: u64 = 20;

/// SQLite's SQLITE_BUSY and its extended codes (BUSY_SNAPSHOT, ...):
/// "database is locked".
fn is_sqlite_busy(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
        && e.message().contains("locked")
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

impl Catalog {
    /// Opens (creating if needed) the SQLite catalog inside `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Catalog> {
        std::fs::create_dir_all(data_dir).map_err(|source| CatalogError::Io {
            path: data_dir.display().to_string(),
            source,
        })?;
        let file = data_dir.join(SQLITE_FILE);
        Self::connect(&format!("sqlite://{}?mode=rwc", file.display())).await
    }

    /// Connects to `sqlite://...` or `postgres://...` and applies migrations.
    pub async fn connect(url: &str) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(url).map_err(|e| CatalogError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let opts = opts.disable_statement_logging();
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; one connection avoids
            // "database is locked" between our own tasks.
            .max_connections(if is_sqlite { 1 } else { 8 })
            .connect_with(opts)
            .await?;
        if is_sqlite {
            // WAL lets `search`/`sql` read while `serve` writes.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA busy_timeout=5000")
                .execute(&pool)
                .await?;
        }
        let catalog = Catalog { pool };
        catalog.migrate(!is_sqlite).await?;
        Ok(catalog)
    }

    async fn migrate(&self, is_postgres: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if is_postgres {
            // Two processes opening a new catalog at once would race on
            // CREATE TABLE IF NOT EXISTS (PostgreSQL checks before it
            // locks): migrations run one at a time.
            sqlx::query("SELECT pg_advisory_xact_lock(5197001)")
                .execute(&mut *tx)
                .await?;
        }
        for stmt in MIGRATIONS {
            sqlx::query(AssertSqlSafe(*stmt)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_user(
        &self,
        name: &str,
        domain: &str,
        ha1_md5: &str,
        ha1_sha256: &str,
    ) -> Result<User> {
        let existing = sqlx::query("SELECT name FROM users WHERE name = $1 AND domain = $2")
            .bind(name)
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        if existing.is_some() {
            return Err(CatalogError::UserExists(format!("{name}@{domain}")));
        }
        let created_ns = now_ns();
        sqlx::query("INSERT INTO users (name, domain, ha1_md5, ha1_sha256, created_ns) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(domain)
            .bind(ha1_md5)
            .bind(ha1_sha256)
            .bind(created_ns)
            .execute(&self.pool)
            .await?;
        Ok(User {
            name: name.into(),
            domain: domain.into(),
            ha1_md5: ha1_md5.into(),
            ha1_sha256: ha1_sha256.into(),
            created_ns,
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT name, domain, ha1_md5, ha1_sha256, created_ns FROM users ORDER BY domain, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    name: r.try_get(0)?,
                    domain: r.try_get(1)?,
                    ha1_md5: r.try_get(2)?,
                    ha1_sha256: r.try_get(3)?,
                    created_ns: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Appends a sealed segment to the manifest, chaining its hash to the
    /// previous entry.
    pub async fn add_segment(&self, seg: &NewSegment) -> Result<SegmentEntry> {
        self.retry_while_locked(|| self.add_segment_once(seg)).await
    }

    async fn add_segment_once(&self, seg: &NewSegment) -> Result<SegmentEntry> {
        let mut tx = self.pool.begin().await?;
        let last = sqlx::query("SELECT seq, entry_hash FROM segments ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (seq, prev_hash) = match last {
            Some(row) => (row.try_get::<i64, _>(0)? + 1, row.try_get::<String, _>(1)?),
            None => (1, CHAIN_GENESIS.to_string()),
        };
        let sealed_ns = now_ns();
        let entry_hash = SegmentEntry::compute_hash(&prev_hash, seg, seq, sealed_ns);
        sqlx::query(
            "INSERT INTO segments (seq, table_name, path, rows, sha256, min_time_ns, max_time_ns, sealed_ns, prev_hash, entry_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(seq)
        .bind(&seg.table_name)
        .bind(&seg.path)
        .bind(seg.rows)
        .bind(&seg.sha256)
        .bind(seg.min_time_ns)
        .bind(seg.max_time_ns)
        .bind(sealed_ns)
        .bind(&prev_hash)
        .bind(&entry_hash)
        .execute(&mut *tx)
        .await?;
        if let Some(position) = seg.wal_position {
            sqlx::query(
                "INSERT INTO segment_wal_positions (path, table_name, wal_position) VALUES ($1, $2, $3)",
            )
            .bind(&seg.path)
            .bind(&seg.table_name)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(SegmentEntry {
            seq,
            table_name: seg.table_name.clone(),
            path: seg.path.clone(),
            rows: seg.rows,
            sha256: seg.sha256.clone(),
            min_time_ns: seg.min_time_ns,
            max_time_ns: seg.max_time_ns,
            sealed_ns,
            prev_hash,
            entry_hash,
        })
    }

    /// The manifest in chain order.
    pub async fn segments(&self) -> Result<Vec<SegmentEntry>> {
        let rows = sqlx::query(
            "SELECT seq, table_name, path, rows, sha256, min_time_ns, max_time_ns, sealed_ns, prev_hash, entry_hash
             FROM segments ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SegmentEntry {
                    seq: r.try_get(0)?,
                    table_name: r.try_get(1)?,
                    path: r.try_get(2)?,
                    rows: r.try_get(3)?,
                    sha256: r.try_get(4)?,
                    min_time_ns: r.try_get(5)?,
                    max_time_ns: r.try_get(6)?,
                    sealed_ns: r.try_get(7)?,
                    prev_hash: r.try_get(8)?,
                    entry_hash: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// (table, path, write-ahead-log position) of every segment sealed
    /// from the log, for a replay to skip.
    pub async fn wal_positions(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT p.table_name, p.path, p.wal_position FROM segment_wal_positions p
             JOIN segments s ON s.path = p.path",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// The earlier import of a file with this content hash, if any.
    pub async fn find_import(&self, sha256: &str) -> Result<Option<ImportRecord>> {
        let row = sqlx::query(
            "SELECT sha256, file_name, bytes, packets, sip_messages, imported_ns FROM imports WHERE sha256 = $1",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ImportRecord {
                sha256: r.try_get(0)?,
                file_name: r.try_get(1)?,
                bytes: r.try_get(2)?,
                packets: r.try_get(3)?,
                sip_messages: r.try_get(4)?,
                imported_ns: r.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Whether an earlier import may have been of a file of `file_bytes`
    /// bytes: one recorded with that size, or one recorded before sizes
    /// were (its file at least as long as what was read of it). When not,
    /// no file of this size was imported, whatever its content, and its
    /// hash need not be known before it is read.
    pub async fn import_may_match_size(&self, file_bytes: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM imports i LEFT JOIN import_file_sizes s ON s.sha256 = i.sha256
             WHERE s.file_bytes = $1 OR (s.sha256 IS NULL AND i.bytes <= $1) LIMIT 1",
        )
        .bind(file_bytes)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Records a finished import (after its segments are sealed) of a file
    /// of `file_bytes` bytes. A second record for the same hash is ignored.
    pub async fn record_import(&self, record: &ImportRecord, file_bytes: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO imports (sha256, file_name, bytes, packets, sip_messages, imported_ns)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&record.sha256)
        .bind(&record.file_name)
        .bind(record.bytes)
        .bind(record.packets)
        .bind(record.sip_messages)
        .bind(record.imported_ns)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO import_file_sizes (sha256, file_bytes) VALUES ($1, $2)
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&record.sha256)
        .bind(file_bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a row to the audit log and returns it. Ids count up from 1.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<AuditEntry> {
        let time_ns = now_ns();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The id is taken inside the INSERT, so two writers can only
            // collide on the primary key, never write the same id twice.
            let inserted = sqlx::query(
                "INSERT INTO audit_log (id, time_ns, os_user, command, query, result_count, error)
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6 FROM audit_log
                 RETURNING id",
            )
            .bind(time_ns)
            .bind(&record.user)
            .bind(&record.command)
            .bind(&record.query)
            .bind(record.result_count)
            .bind(&record.error)
            .fetch_one(&self.pool)
            .await;
            match inserted {
                Ok(row) => {
                    return Ok(AuditEntry {
                        id: row.try_get(0)?,
                        time_ns,
                        record: record.clone(),
                    });
                }
                Err(sqlx::Error::Database(e))
                    if e.is_unique_violation() && attempt < AUDIT_INSERT_ATTEMPTS => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Audit log rows at or after `since_ns` (all when `None`), oldest first.
    pub async fn audit_log(&self, since_ns: Option<i64>) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, time_ns, os_user, command, query, result_count, error
             FROM audit_log WHERE time_ns >= $1 ORDER BY id",
        )
        .bind(since_ns.unwrap_or(i64::MIN))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    time_ns: r.try_get(1)?,
                    record: AuditRecord {
                        user: r.try_get(2)?,
                        command: r.try_get(3)?,
                        query: r.try_get(4)?,
                        result_count: r.try_get(5)?,
                        error: r.try_get(6)?,
                    },
                })
            })
            .collect()
    }

    /// Creates a room and records a `created` event by `by`.
    pub async fn create_room(&self, room: &Room, by: &str) -> Result<Room> {
        if !valid_room_name(&room.name) {
            return Err(CatalogError::InvalidRoomName(room.name.clone()));
        }
        let created_ns = now_ns();
        let room = Room {
            created_ns,
            ..room.clone()
        };
        self.with_room_event_retry(|| async {
            let mut tx = self.pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO rooms (name, domain, topic, category, private, created_ns)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&room.name)
            .bind(&room.domain)
            .bind(&room.topic)
            .bind(&room.category)
            .bind(i64::from(room.private))
            .bind(created_ns)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(CatalogError::RoomExists(room.name.clone()));
            }
            insert_room_event(&mut tx, created_ns, &room.name, "", "created", by).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        Ok(room)
    }

    pub async fn room(&self, name: &str) -> Result<Option<Room>> {
        let row = sqlx::query(
            "SELECT name, domain, topic, category, private, created_ns FROM rooms WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    pub async fn list_rooms(&self) -> Result<Vec<Room>> {
        let rows = sqlx::query(
            "SELECT name, domain, topic, category, private, created_ns FROM rooms ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(room_from_row).collect()
    }

    /// Members of `room` (every room when `None`), by room then user.
    pub async fn room_members(&self, room: Option<&str>) -> Result<Vec<RoomMember>> {
        // Two statements rather than `$1 IS NULL OR ...`, whose parameter
        // type PostgreSQL may not infer.
        let rows =
            match room {
                Some(room) => {
                    sqlx::query(
                        "SELECT room, member, role, added_ns FROM room_members
                     WHERE room = $1 ORDER BY room, member",
                    )
                    .bind(room)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => sqlx::query(
                    "SELECT room, member, role, added_ns FROM room_members ORDER BY room, member",
                )
                .fetch_all(&self.pool)
                .await?,
            };
        rows.iter()
            .map(|r| {
                Ok(RoomMember {
                    room: r.try_get(0)?,
                    user: r.try_get(1)?,
                    role: r.try_get::<String, _>(2)?.parse()?,
                    added_ns: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Makes `user` (a user of the room's domain) a member with `role`, or
    /// changes the role of a member; each change is a room event by `by`.
    pub async fn add_room_member(
        &self,
        room: &str,
        user: &str,
        role: RoomRole,
        by: &str,
    ) -> Result<MemberChange> {
        self.with_room_event_retry(|| async {
            let mut tx = self.pool.begin().await?;
            let domain: String = sqlx::query("SELECT domain FROM rooms WHERE name = $1")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| CatalogError::NoSuchRoom(room.to_string()))?
                .try_get(0)?;
            let known = sqlx::query("SELECT name FROM users WHERE name = $1 AND domain = $2")
                .bind(user)
                .bind(&domain)
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                return Err(CatalogError::NoSuchUser(format!("{user}@{domain}")));
            }
            let current = sqlx::query("SELECT role FROM room_members WHERE room = $1 AND member = $2")
                .bind(room)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()?
                .map(|r| r.parse::<RoomRole>())
                .transpose()?;
            let time_ns = now_ns();
            let change = match current {
                Some(from) if from == role => return Ok(MemberChange::Unchanged),
                Some(from) => {
                    sqlx::query("UPDATE room_members SET role = $1 WHERE room = $2 AND member = $3")
                        .bind(role.as_str())
                        .bind(room)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                    MemberChange::RoleChanged { from }
                }
                None => {
                    sqlx::query(
                        "INSERT INTO room_members (room, member, role, added_ns) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(room)
                    .bind(user)
                    .bind(role.as_str())
                    .bind(time_ns)
                    .execute(&mut *tx)
                    .await?;
                    MemberChange::Added
                }
            };
            let event = match change {
                MemberChange::RoleChanged { .. } => format!("role-changed:{role}"),
                _ => format!("member-added:{role}"),
            };
            insert_room_event(&mut tx, time_ns, room, user, &event, by).await?;
            tx.commit().await?;
            Ok(change)
        })
        .await
    }

    /// Removes `user` from `room`, recording a `member-removed` event by `by`.
    pub async fn remove_room_member(&self, room: &str, user: &str, by: &str) -> Result<()> {
        self.with_room_event_retry(|| async {
            let mut tx = self.pool.begin().await?;
            if sqlx::query("SELECT name FROM rooms WHERE name = $1")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                return Err(CatalogError::NoSuchRoom(room.to_string()));
            }
            let removed = sqlx::query("DELETE FROM room_members WHERE room = $1 AND member = $2")
                .bind(room)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            if removed.rows_affected() == 0 {
                return Err(CatalogError::NotAMember {
                    room: room.to_string(),
                    user: user.to_string(),
                });
            }
            insert_room_event(&mut tx, now_ns(), room, user, "member-removed", by).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The room event log of `room` (every room when `None`), oldest first.
    pub async fn room_events(&self, room: Option<&str>) -> Result<Vec<RoomEvent>> {
        let rows =
            match room {
                Some(room) => {
                    sqlx::query(
                        "SELECT id, time_ns, room, member, event, by_user FROM room_events
                     WHERE room = $1 ORDER BY id",
                    )
                    .bind(room)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => sqlx::query(
                    "SELECT id, time_ns, room, member, event, by_user FROM room_events ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?,
            };
        rows.iter().map(room_event_from_row).collect()
    }

    /// Up to `limit` room events with an id above `after`, oldest first,
    /// each with the domain of its room (`None` if the room is gone): what
    /// the archive has not carried over yet.
    pub async fn room_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(RoomEvent, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT e.id, e.time_ns, e.room, e.member, e.event, e.by_user, r.domain
             FROM room_events e LEFT JOIN rooms r ON r.name = e.room
             WHERE e.id > $1 ORDER BY e.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((room_event_from_row(r)?, r.try_get(6)?)))
            .collect()
    }

    /// Runs a transaction that appends a room event, again when a
    /// concurrent writer (PostgreSQL) took the same event id first, and
    /// as [`Catalog::retry_while_locked`] does.
    async fn with_room_event_retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.retry_while_locked(&op).await {
                Err(CatalogError::Db(sqlx::Error::Database(e)))
                    if e.is_unique_violation() && attempt < AUDIT_INSERT_ATTEMPTS => {}
                other => return other,
            }
        }
    }

    /// Runs a transaction again, after a short back-off, when SQLite
    /// refused it as locked. A transaction that reads before it writes
    /// gets SQLITE_BUSY at once, without waiting out the busy timeout,
    /// when another process committed to the same catalog in between
    /// (`serve` entering manifest rows while `sipvault room ...` changes
    /// membership); only a fresh transaction can succeed.
    async fn retry_while_locked<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            match op().await {
                Err(CatalogError::Db(sqlx::Error::Database(e)))
                    if is_sqlite_busy(e.as_ref()) && attempt < LOCKED_ATTEMPTS =>
                {
                    tracing::debug!(attempt, "catalog locked by another writer; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A `room_events` row selected as `id, time_ns, room, member, event, by_user`.
fn room_event_from_row(r: &sqlx::any::AnyRow) -> Result<RoomEvent> {
    Ok(RoomEvent {
        id: r.try_get(0)?,
        time_ns: r.try_get(1)?,
        room: r.try_get(2)?,
        user: r.try_get(3)?,
        event: r.try_get(4)?,
        by: r.try_get(5)?,
    })
}

fn room_from_row(r: &sqlx::any::AnyRow) -> Result<Room> {
    Ok(Room {
        name: r.try_get(0)?,
        domain: r.try_get(1)?,
        topic: r.try_get(2)?,
        category: r.try_get(3)?,
        private: r.try_get::<i64, _>(4)? != 0,
        created_ns: r.try_get(5)?,
    })
}

/// Appends to `room_events` inside the caller's transaction; the id is
/// taken in the INSERT, as for the audit log.
async fn insert_room_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    time_ns: i64,
    room: &str,
    user: &str,
    event: &str,
    by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO room_events (id, time_ns, room, member, event, by_user)
         SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5 FROM room_events",
    )
    .bind(time_ns)
    .bind(room)
    .bind(user)
    .bind(event)
    .bind(by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Checks that every manifest entry hashes the one before it. Returns the
/// sequence numbers of entries whose hash does not verify.
pub fn broken_links(entries: &[SegmentEntry]) -> Vec<i64> {
    let mut prev = CHAIN_GENESIS.to_string();
    let mut bad = Vec::new();
    for e in entries {
        let seg = NewSegment {
            table_name: e.table_name.clone(),
            path: e.path.clone(),
            rows: e.rows,
            sha256: e.sha256.clone(),
            min_time_ns: e.min_time_ns,
            max_time_ns: e.max_time_ns,
            wal_position: None,
        };
        let expected = SegmentEntry::compute_hash(&prev, &seg, e.seq, e.sealed_ns);
        if e.prev_hash != prev || e.entry_hash != expected {
            bad.push(e.seq);
        }
        prev = e.entry_hash.clone();
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(path: &str) -> NewSegment {
        NewSegment {
            table_name: "im_messages".into(),
            path: path.into(),
            rows: 3,
            sha256: "ab".repeat(32),
            min_time_ns: 1,
            max_time_ns: 2,
            wal_position: None,
        }
    }

    async fn exercise(cat: &Catalog) {
        let u = cat
            .add_user("alice", "example.com", "h1", "h2")
            .await
            .unwrap();
        assert_eq!(u.name, "alice");
        assert!(
            matches!(
                cat.add_user("alice", "example.com", "x", "y").await,
                Err(CatalogError::UserExists(_))
            ),
            "adding the same user twice must be refused"
        );
        cat.add_user("bob", "example.com", "h3", "h4")
            .await
            .unwrap();
        let names: Vec<_> = cat
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, vec!["alice", "bob"]);

        let a = cat.add_segment(&seg("archive/a.parquet")).await.unwrap();
        let b = cat.add_segment(&seg("archive/b.parquet")).await.unwrap();
        assert_eq!(a.seq, 1);
        assert_eq!(a.prev_hash, CHAIN_GENESIS);
        assert_eq!(
            b.prev_hash, a.entry_hash,
            "second entry must chain to the first"
        );
        let all = cat.segments().await.unwrap();
        assert_eq!(all, vec![a, b]);
        assert!(broken_links(&all).is_empty());

        let mut tampered = all.clone();
        tampered[0].rows = 4;
        assert_eq!(
            broken_links(&tampered),
            vec![1],
            "a changed row count must break its own link"
        );
        let mut reordered = all.clone();
        reordered.swap(0, 1);
        assert_eq!(broken_links(&reordered), vec![2, 1]);

        let logged = NewSegment {
            wal_position: Some(7 << 20),
            ..seg("archive/c.parquet")
        };
        cat.add_segment(&logged).await.unwrap();
        assert_eq!(
            cat.wal_positions().await.unwrap(),
            vec![(
                "im_messages".to_string(),
                "archive/c.parquet".to_string(),
                7 << 20
            )],
            "only segments sealed from the write-ahead log have a position"
        );

        let record = ImportRecord {
            sha256: "ab".repeat(32),
            file_name: "call.pcap".into(),
            bytes: 100,
            packets: 7,
            sip_messages: 5,
            imported_ns: 1,
        };
        assert_eq!(cat.find_import(&record.sha256).await.unwrap(), None);
        assert!(
            !cat.import_may_match_size(120).await.unwrap(),
            "no imports yet"
        );
        cat.record_import(&record, 120).await.unwrap();
        cat.record_import(
            &ImportRecord {
                file_name: "renamed.pcap".into(),
                ..record.clone()
            },
            120,
        )
        .await
        .unwrap();
        assert_eq!(
            cat.find_import(&record.sha256).await.unwrap(),
            Some(record),
            "the first import of a content hash is kept"
        );
        // A damaged file was read only in part (100 of its 120 bytes): its
        // size, not what was read, is what another file can match.
        assert!(cat.import_may_match_size(120).await.unwrap());
        assert!(!cat.import_may_match_size(100).await.unwrap());
        assert!(!cat.import_may_match_size(121).await.unwrap());
        // Imports recorded before sizes were: any file at least as long as
        // what was read of one may be it.
        sqlx::query(
            "INSERT INTO imports (sha256, file_name, bytes, packets, sip_messages, imported_ns)
             VALUES ($1, 'old.pcap', 500, 1, 1, 1)",
        )
        .bind("cd".repeat(32))
        .execute(&cat.pool)
        .await
        .unwrap();
        assert!(!cat.import_may_match_size(499).await.unwrap());
        assert!(cat.import_may_match_size(500).await.unwrap());
        assert!(cat.import_may_match_size(4000).await.unwrap());
    }

    async fn exercise_audit_log(cat: &Catalog) {
        assert!(cat.audit_log(None).await.unwrap().is_empty());
        let search = cat
            .append_audit(&AuditRecord {
                user: "compliance".into(),
                command: "search".into(),
                query: "budget AND NOT draft".into(),
                result_count: Some(3),
                error: None,
            })
            .await
            .unwrap();
        let failed = cat
            .append_audit(&AuditRecord {
                user: "o'brien".into(),
                command: "sql".into(),
                query: "SELECT 'it''s' FROM calls".into(),
                result_count: None,
                error: Some("query stopped: it ran longer than the 1s timeout".into()),
            })
            .await
            .unwrap();
        assert_eq!((search.id, failed.id), (1, 2), "ids count up from 1");
        let all = cat.audit_log(None).await.unwrap();
        assert_eq!(all, vec![search.clone(), failed.clone()]);
        assert_eq!(
            cat.audit_log(Some(failed.time_ns)).await.unwrap().last(),
            Some(&failed),
            "--since keeps later rows"
        );
        assert!(
            cat.audit_log(Some(failed.time_ns + 1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// `sipvault room ...` changes membership while `serve` writes
    /// manifest rows to the same SQLite file: every change must land,
    /// none refused as "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_room_changes_succeed_while_another_process_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Catalog::open(dir.path()).await.unwrap();
        let serve = Catalog::open(dir.path()).await.unwrap();
        for user in ["alice", "bob"] {
            cli.add_user(user, "example.com", "h1", "h2").await.unwrap();
        }
        let room = Room {
            name: "budget".into(),
            domain: "example.com".into(),
            topic: "Q3".into(),
            category: None,
            private: false,
            created_ns: 0,
        };
        cli.create_room(&room, "admin").await.unwrap();
        let writer = tokio::spawn(async move {
            for i in 0..400 {
                serve
                    .add_segment(&seg(&format!("archive/im_messages/s{i}.parquet")))
                    .await
                    .unwrap();
            }
            serve
        });
        for round in 0..60 {
            let user = if round % 2 == 0 { "alice" } else { "bob" };
            cli.add_room_member("budget", user, RoomRole::Member, "lead")
                .await
                .unwrap_or_else(|e| panic!("adding {user} in round {round}: {e}"));
            cli.remove_room_member("budget", user, "lead")
                .await
                .unwrap_or_else(|e| panic!("removing {user} in round {round}: {e}"));
        }
        let serve = writer.await.unwrap();
        assert_eq!(serve.segments().await.unwrap().len(), 400);
        assert_eq!(
            cli.room_events(Some("budget")).await.unwrap().len(),
            1 + 120
        );
    }

    #[tokio::test]
    async fn sqlite_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).await.unwrap();
        exercise_audit_log(&cat).await;
        cat.close().await;
        let cat = Catalog::open(dir.path()).await.unwrap();
        assert_eq!(
            cat.audit_log(None).await.unwrap().len(),
            2,
            "the audit log survives reopening"
        );
    }

    /// A catalog in a private PostgreSQL schema, or `None` (and a SKIPPED
    /// line) when `SIPVAULT_PG_URL` is not set. Returns the admin connection
    /// and the schema to drop afterwards.
    async fn postgres_catalog(test: &str) -> Option<(Catalog, Catalog, String)> {
        let Ok(base) = std::env::var("SIPVAULT_PG_URL") else {
            eprintln!("SKIPPED {test}: SIPVAULT_PG_URL is not set");
            return None;
        };
        // A private schema per run keeps parallel runs apart.
        let schema = format!("sipvault_test_{:016x}", rand::random::<u64>());
        let admin = Catalog::connect(&base)
            .await
            .expect("connect to SIPVAULT_PG_URL");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin.pool)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let cat = Catalog::connect(&url).await.unwrap();
        Some((cat, admin, schema))
    }

    async fn drop_postgres_catalog(cat: Catalog, admin: Catalog, schema: String) {
        cat.close().await;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin.pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_audit_log() {
        let Some((cat, admin, schema)) = postgres_catalog("postgres_audit_log").await else {
            return;
        };
        exercise_audit_log(&cat).await;
        drop_postgres_catalog(cat, admin, schema).await;
    }

    async fn exercise_rooms(cat: &Catalog) {
        for user in ["alice", "bob", "carol"] {
            cat.add_user(user, "example.com", "h1", "h2").await.unwrap();
        }
        let room = Room {
            name: "budget".into(),
            domain: "example.com".into(),
            topic: "Q3 budget".into(),
            category: Some("finance".into()),
            private: true,
            created_ns: 0,
        };
        let created = cat.create_room(&room, "admin").await.unwrap();
        assert_eq!(created.uri(), "sip:room-budget@example.com");
        assert!(
            matches!(
                cat.create_room(&room, "admin").await,
                Err(CatalogError::RoomExists(_))
            ),
            "a room name is taken once"
        );
        assert!(matches!(
            cat.create_room(
                &Room {
                    name: "Budget Talk".into(),
                    ..room.clone()
                },
                "admin"
            )
            .await,
            Err(CatalogError::InvalidRoomName(_))
        ));
        cat.create_room(
            &Room {
                name: "lunch".into(),
                category: None,
                private: false,
                ..room.clone()
            },
            "admin",
        )
        .await
        .unwrap();
        let rooms = cat.list_rooms().await.unwrap();
        assert_eq!(
            rooms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["budget", "lunch"]
        );
        assert_eq!(rooms[0], created);
        assert_eq!(rooms[1].category, None);
        assert!(!rooms[1].private);
        assert_eq!(cat.room("nope").await.unwrap(), None);

        let add = |user: &'static str, role| cat.add_room_member("budget", user, role, "admin");
        assert_eq!(
            add("alice", RoomRole::Owner).await.unwrap(),
            MemberChange::Added
        );
        assert_eq!(
            add("bob", RoomRole::ReadOnly).await.unwrap(),
            MemberChange::Added
        );
        assert_eq!(
            add("carol", RoomRole::ReadOnly).await.unwrap(),
            MemberChange::Added
        );
        assert_eq!(
            add("bob", RoomRole::Member).await.unwrap(),
            MemberChange::RoleChanged {
                from: RoomRole::ReadOnly
            }
        );
        assert_eq!(
            add("bob", RoomRole::Member).await.unwrap(),
            MemberChange::Unchanged,
            "the same role again changes nothing"
        );
        assert!(matches!(
            add("mallory", RoomRole::Member).await,
            Err(CatalogError::NoSuchUser(_))
        ));
        assert!(matches!(
            cat.add_room_member("nope", "alice", RoomRole::Member, "admin")
                .await,
            Err(CatalogError::NoSuchRoom(_))
        ));
        cat.remove_room_member("budget", "carol", "alice")
            .await
            .unwrap();
        assert!(matches!(
            cat.remove_room_member("budget", "carol", "alice").await,
            Err(CatalogError::NotAMember { .. })
        ));
        let members = cat.room_members(Some("budget")).await.unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.user.as_str(), m.role))
                .collect::<Vec<_>>(),
            [("alice", RoomRole::Owner), ("bob", RoomRole::Member)]
        );
        assert_eq!(cat.room_members(None).await.unwrap(), members);
        assert!(cat.room_members(Some("lunch")).await.unwrap().is_empty());

        let events: Vec<(String, String, String, String)> = cat
            .room_events(Some("budget"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.room, e.user, e.event, e.by))
            .collect();
        let e = |u: &str, ev: &str, by: &str| {
            (
                "budget".to_string(),
                u.to_string(),
                ev.to_string(),
                by.to_string(),
            )
        };
        assert_eq!(
            events,
            vec![
                e("", "created", "admin"),
                e("alice", "member-added:owner", "admin"),
                e("bob", "member-added:read-only", "admin"),
                e("carol", "member-added:read-only", "admin"),
                e("bob", "role-changed:member", "admin"),
                e("carol", "member-removed", "alice"),
            ],
            "every membership change is in the event log, refusals are not"
        );
        assert_eq!(cat.room_events(None).await.unwrap().len(), 7);

        // What the archive has not carried over: after an id, in steps.
        let all = cat.room_events(None).await.unwrap();
        let after = cat.room_events_after(all[4].id, 2).await.unwrap();
        assert_eq!(
            after.iter().map(|(e, _)| e.id).collect::<Vec<_>>(),
            [all[5].id, all[6].id]
        );
        assert!(after.iter().all(|(_, domain)| domain.is_some()));
        assert!(
            cat.room_events_after(all[6].id, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn room_roles_and_names() {
        for role in [RoomRole::Owner, RoomRole::Member, RoomRole::ReadOnly] {
            assert_eq!(role.as_str().parse::<RoomRole>().unwrap(), role);
        }
        assert!(!RoomRole::ReadOnly.may_post());
        assert!(RoomRole::Member.may_post() && RoomRole::Owner.may_post());
        assert!(matches!(
            "admin".parse::<RoomRole>(),
            Err(CatalogError::InvalidRole(_))
        ));
        assert!(valid_room_name("q3-budget_2026.x"));
        for bad in ["", "Budget", "a b", "a@b", "a;b", &"x".repeat(65)] {
            assert!(!valid_room_name(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn sqlite_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).await.unwrap();
        exercise_rooms(&cat).await;
        cat.close().await;
        let cat = Catalog::open(dir.path()).await.unwrap();
        assert_eq!(
            cat.list_rooms().await.unwrap().len(),
            2,
            "rooms survive reopening"
        );
    }

    #[tokio::test]
    async fn postgres_rooms() {
        let Some((cat, admin, schema)) = postgres_catalog("postgres_rooms").await else {
            return;
        };
        exercise_rooms(&cat).await;
        drop_postgres_catalog(cat, admin, schema).await;
    }

    #[tokio::test]
    async fn sqlite_users_and_manifest_chain() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).await.unwrap();
        exercise(&cat).await;
        cat.close().await;
        // Reopening sees the same data.
        let cat = Catalog::open(dir.path()).await.unwrap();
        assert_eq!(cat.segments().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn postgres_users_and_manifest_chain() {
        let Some((cat, admin, schema)) =
            postgres_catalog("postgres_users_and_manifest_chain").await
        else {
            return;
        };
        exercise(&cat).await;
        drop_postgres_catalog(cat, admin, schema).await;
    }
}
