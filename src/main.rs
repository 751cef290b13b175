//! `sipvault`: the command line. Argument handling and wiring only; the
//! work happens in the library crates.

mod audit;
mod config;
mod conversation;
mod demo;
mod export;
mod import;
mod pipeline;
mod queries;
mod reindex;
mod rooms;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand};
use sipvault_catalog::Catalog;
use sipvault_query::reports::{Grouping, Report, ReportRequest};
use sipvault_query::{OutputFormat, QueryError, QueryLimits, SearchRequest, SortOrder};
use sipvault_sip::digest::{Algorithm, ha1};

use crate::config::Config;

/// Archiving allocates many short-lived strings per message on one thread
/// and frees them on another; jemalloc measured 30 % more HEP ingest per
/// core than glibc malloc, and faster imports (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &u8 = &sipvault_collector::JEMALLOC_OPTIONS[0];

#[derive(Parser)]
#[command(
    name = "sipvault",
    version,
    about = "SIP communications server with a tamper-evident compliance archive",
    after_help = "Examples:\n  sipvault demo\n  sipvault user add alice --password s3cret --data ./sipvault-data\n  sipvault serve --data ./sipvault-data --sip 127.0.0.1:5060\n  sipvault search '\"quarterly budget\" AND NOT draft' --from alice --since 7d\n  sipvault report call-summary --since 2026-11-01 --until 2026-12-01 --format csv\n  sipvault sql \"SELECT sender, count(*) FROM im_messages GROUP BY sender\" --format csv\n  sipvault audit list --since 7d"
)]
struct Cli {
    /// Data directory: catalog, archive and index [default: ./sipvault-data;
    /// for `demo`, a new directory under the system temp dir].
    #[arg(long, global = true, env = "SIPVAULT_DATA")]
    data: Option<PathBuf>,
    /// Configuration file (default: <data>/sipvault.toml or ./sipvault.toml if present).
    #[arg(long, global = true, env = "SIPVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Name recorded in the audit log for search, conversation, timeline,
    /// report, sql and export, in export manifests and in the room event
    /// log [default: the OS user, $USER].
    #[arg(long = "as", global = true, value_name = "USER")]
    as_user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SIP server with archiving.
    #[command(
        after_help = "Examples:\n  sipvault serve --data ./sipvault-data --sip 127.0.0.1:5060 --hep 127.0.0.1:9060\n  sipvault serve --sip 0.0.0.0:5060 --tls 0.0.0.0:5061 --tls-cert cert.pem --tls-key key.pem\n  sipvault serve --tls off\n\nPort 0 picks a free port; the first log line names the bound addresses.\nWithout --tls-cert/--tls-key a self-signed certificate for the domain, localhost and\n127.0.0.1 is made on the first start in <data>/tls/ and reused; its SHA-256 fingerprint is logged."
    )]
    Serve {
        /// UDP and TCP listen address [default: sip.listen from the config, 127.0.0.1:5060].
        #[arg(long)]
        sip: Option<SocketAddr>,
        /// SIP over TLS: an address, "auto" (the SIP port + 1, so 5061 beside
        /// 5060; a free port when the SIP port is 0) or "off"
        /// [default: sip.tls_listen from the config, auto].
        #[arg(long, value_name = "ADDR|auto|off")]
        tls: Option<config::TlsListen>,
        /// PEM certificate chain for TLS [default: <data>/tls/cert.pem, self-signed].
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also collect HEP v1/v2/v3 (UDP and TCP) on this address, e.g.
        /// 0.0.0.0:9060 [default: hep.listen from the config; off].
        #[arg(long)]
        hep: Option<SocketAddr>,
    },
    /// Manage users of the registrar.
    #[command(subcommand)]
    User(UserCommand),
    /// Persistent chat rooms: create, members, list, show, events, history.
    #[command(subcommand)]
    Room(rooms::RoomCommand),
    /// Full-text search of archived instant messages, calls and presence.
    #[command(
        after_help = "Query syntax: words, \"phrases\", AND, OR, NOT, parentheses, prefixes (budg*), fuzzy\nterms (budgte~1, at most ~2), from:USER, to:USER, type:im|call|presence, body:WORD,\ntime:[A TO B] ([ ] inclusive, { } exclusive, * open; RFC 3339 or YYYY-MM-DD).\nCalls are indexed with their disposition, final code and reason (from: caller, to: callee);\npresence with its status, activities and note (from: the presentity). room:NAME finds\nthe posts to chat room NAME (IMs to sip:room-NAME@...), type:chat the posts to any room;\nconference:ID the messages written to ad hoc conference conf-ID (IMs to sip:conf-ID@...).\nA malformed query exits 1 with the position of the problem.\n\nExamples:\n  sipvault search 'budget AND NOT draft' --from alice --since 2026-11-01 --format json\n  sipvault search 'type:call AND busy' --sort time --limit 20 --page 2\n  sipvault search 'quart* OR budgte~1' --sort relevance\n  sipvault search 'room:budget approved'"
    )]
    Search(SearchArgs),
    /// Rebuild the search index from the archive: every im_messages, calls
    /// and presence segment in the manifest. Run while the server is stopped.
    #[command(after_help = "Example:\n  sipvault reindex --data ./sipvault-data")]
    Reindex,
    /// Read-only SQL over the archive tables: calls, im_messages,
    /// sip_messages, presence, hep_raw, room_events (each with its `date`
    /// partition column).
    #[command(
        after_help = "Rows are written as they are produced (csv and json; a table is printed at the end).\n\nExamples:\n  sipvault sql \"SELECT date, count(*) FROM im_messages GROUP BY date ORDER BY date\"\n  sipvault sql \"SELECT * FROM calls WHERE disposition = 'busy'\" --format csv --timeout 30 --memory-limit 512M"
    )]
    Sql {
        /// One SELECT (or WITH/EXPLAIN/SHOW/DESCRIBE) statement.
        statement: String,
        #[arg(long, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Call and IM reports over a time range (no row cap; rows stream out).
    #[command(
        after_help = "Examples:\n  sipvault report cdr --since 2026-11-01 --until 2026-11-08 --format csv > cdr.csv\n  sipvault report call-summary --by user --since 7d\n  sipvault report im-volume --by hour --user sip:alice@example.com --since 1d\n  sipvault report top-talkers --top 5 --since 30d"
    )]
    Report(ReportArgs),
    /// Rebuild an IM conversation in order, with who it was delivered to
    /// and when.
    #[command(
        after_help = "A conversation is every IM with the given Call-ID (session mode) plus the page-mode IMs\nbetween exactly the same participants (sender and recipients, either direction) that follow\neach other with no silence longer than --gap. A conference's Call-ID (conf-ID@DOMAIN) gives\nthe whole conference: the messages written to its focus and the focus's copies.\ndelivered_to/delivered_at: the recipients of a delivered IM and the time of its 2xx final\nresponse in sip_messages (empty if not archived).\nAn id that names no archived IM exits 1.\n\nExamples:\n  sipvault conversation 3c5a7e1f@192.0.2.10 --data ./sipvault-data\n  sipvault conversation '3c5a7e1f@192.0.2.10#2' --gap 2h --format json"
    )]
    Conversation(conversation::ConversationArgs),
    /// One person's IMs sent and received, presence changes and calls
    /// placed and received over a time range, in time order.
    #[command(
        after_help = "Columns: time, kind (im-sent, im-received, presence, call-placed, call-received, room-event,\nconference-event), party, status, code, detail (IM body; activities and note; talk time or\nreason; role and who made a membership change), id (IM key, Call-ID or catalog event id).\n\nExamples:\n  sipvault timeline alice@example.com --since 2026-11-02 --until 2026-11-03\n  sipvault timeline sip:bob@example.com --since 7d --format csv > bob.csv"
    )]
    Timeline(conversation::TimelineArgs),
    /// Who searched, reported on or queried the archive, and when.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Export a case: the IMs a search matches and the SIP messages of their
    /// Call-IDs as EML, JSON lines, CSV, Parquet and pcap, with a
    /// MANIFEST.json of SHA-256 hashes; `export verify DIR` re-checks one.
    #[command(
        after_help = "Formats: eml (one .eml per conversation), jsonl and csv (IM rows), parquet (IM and SIP rows),\npcap (raw SIP with synthetic IP/UDP headers). Each export is written to the audit log.\n\nExamples:\n  sipvault export --query 'budget AND from:alice' --since 2026-11-01 --case case-4711 --out ./case-4711\n  sipvault export --query '\"launch plan\"' --case launch --out ./launch --format eml,pcap\n  sipvault export verify ./case-4711"
    )]
    Export(export::ExportCli),
    /// Re-read every archive segment and the manifest hash chain; report
    /// missing, altered, extra or reordered segments (exit 1 if any).
    #[command(after_help = "Example:\n  sipvault verify --data ./sipvault-data --format json")]
    Verify {
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
    /// State of the server using this data directory: running or not, its
    /// counters (received, archived, dropped), and rows archived per table.
    #[command(after_help = "Example:\n  sipvault status --data ./sipvault-data --format json")]
    Status {
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
    /// Archive SIP traffic from capture files.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Start a server on free loopback ports, exchange IMs between built-in
    /// user agents, archive them and show a search and a SQL result.
    #[command(after_help = "Example:\n  sipvault demo\n  sipvault demo --data ./demo-data")]
    Demo,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit log entries, oldest first.
    #[command(after_help = "Example:\n  sipvault audit list --since 7d --format json")]
    List {
        /// Only entries at or after this time: RFC 3339, YYYY-MM-DD, or relative (15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Args)]
struct LimitArgs {
    /// Stop the query after this long: seconds (30, 2.5) or with a unit (500ms, 5m).
    #[arg(long, value_name = "SECS", value_parser = sipvault_query::parse_duration)]
    timeout: Option<Duration>,
    /// Memory the query may hold: bytes or with a unit (512M, 2G). Sorts and
    /// aggregations spill to disk past it; what cannot spill stops the query.
    #[arg(long, value_name = "BYTES", value_parser = sipvault_query::parse_byte_size)]
    memory_limit: Option<usize>,
}

impl LimitArgs {
    fn limits(&self) -> QueryLimits {
        QueryLimits {
            timeout: self.timeout,
            memory_limit: self.memory_limit,
        }
    }
}

#[derive(Args)]
struct ReportArgs {
    /// Which report.
    #[arg(value_parser = report_names())]
    name: String,
    /// Start time: RFC 3339, YYYY-MM-DD, or relative (15m, 2h, 7d) [default: the oldest record].
    #[arg(long)]
    since: Option<String>,
    /// End time (exclusive), same forms as --since [default: no end].
    #[arg(long)]
    until: Option<String>,
    /// Only what this user took part in (sip:alice@example.com or alice@example.com).
    #[arg(long)]
    user: Option<String>,
    /// Grouping: day or user for call-summary (default day); hour or day for im-volume (default hour).
    #[arg(long)]
    by: Option<Grouping>,
    /// top-talkers: how many users [default: 10].
    #[arg(long)]
    top: Option<usize>,
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    #[command(flatten)]
    limits: LimitArgs,
}

fn report_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        Report::ALL
            .iter()
            .map(|r| PossibleValue::new(r.name()).help(r.description())),
    )
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import pcap / pcapng files: SIP over UDP, TCP (reassembled) and SCTP,
    /// any port, VLAN, tunnels (GRE, ERSPAN, IP-in-IP) and HEP-in-UDP.
    /// A file whose content was imported before adds nothing.
    #[command(
        after_help = "Example:\n  sipvault import pcap capture1.pcap capture2.pcapng --data ./sipvault-data\n  sipvault import pcap *.pcap --format json"
    )]
    Pcap {
        /// Capture files (pcap or pcapng).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (only the digest HA1 is stored, never the password).
    #[command(
        after_help = "Example:\n  sipvault user add alice --password s3cret --domain example.com"
    )]
    Add {
        name: String,
        #[arg(long)]
        password: String,
        /// SIP domain and digest realm [default: sip.domain from the config].
        #[arg(long)]
        domain: Option<String>,
    },
    /// List users.
    List {
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Args)]
struct SearchArgs {
    /// Query: words, "phrases", AND/OR/NOT, from:, to:
    query: String,
    /// Only messages sent by this user (name, user@domain or sip: URI).
    #[arg(long)]
    from: Option<String>,
    /// Only messages sent to this user.
    #[arg(long)]
    to: Option<String>,
    /// Start time: RFC 3339, YYYY-MM-DD, or relative (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// End time (exclusive), same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Hits per page.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Hits to skip first.
    #[arg(long, default_value_t = 0, conflicts_with = "page")]
    offset: usize,
    /// Page number (from 1) of --limit hits each; the same as --offset (PAGE-1)*LIMIT.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    page: Option<u64>,
    /// Result order: time (oldest first) or relevance (best match first, then time).
    #[arg(long, default_value = "time", value_parser = ["time", "relevance"])]
    sort: String,
    #[arg(long, default_value = "table")]
    format: OutputFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Options that do not fit together are a usage error, as clap's own.
            if matches!(e.downcast_ref(), Some(QueryError::InvalidReport(_))) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIPVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Demo = cli.command {
        return demo::run(cli.data, cli.config.as_deref()).await;
    }
    let data = cli.data.unwrap_or_else(|| PathBuf::from("./sipvault-data"));
    let config = Config::load(cli.config.as_deref(), &data)?;
    let reader = audit::reader(cli.as_user.as_deref());
    match cli.command {
        Command::Serve {
            sip,
            hep,
            tls,
            tls_cert,
            tls_key,
        } => {
            let mut config = config;
            if hep.is_some() {
                config.hep.listen = hep;
            }
            if let Some(tls) = tls {
                config.sip.tls_listen = tls;
            }
            if tls_cert.is_some() {
                (config.sip.tls_cert, config.sip.tls_key) = (tls_cert, tls_key);
            }
            serve(&data, &config, sip.unwrap_or(config.sip.listen)).await
        }
        Command::User(UserCommand::Add {
            name,
            password,
            domain,
        }) => {
            let domain = domain.unwrap_or_else(|| config.sip.domain.clone());
            add_user(&data, &name, &password, &domain).await?;
            println!("added user {name}@{domain}");
            Ok(())
        }
        Command::User(UserCommand::List { format }) => list_users(&data, format).await,
        Command::Room(rooms::RoomCommand::History(args)) => {
            let outcome = rooms::history(&data, &args, now_ns()).await;
            audited(&data, &reader, "room history", &args.describe(), outcome).await
        }
        Command::Room(cmd) => rooms::run(&data, &config, &reader, cmd).await,
        Command::Search(args) => {
            let query = args.describe();
            let outcome = search(&data, args);
            audited(&data, &reader, "search", &query, outcome).await
        }
        Command::Sql {
            statement,
            format,
            limits,
        } => {
            let outcome = queries::sql(&data, &statement, format, limits.limits())
                .await
                .map_err(anyhow::Error::from);
            audited(&data, &reader, "sql", &statement, outcome).await
        }
        Command::Report(args) => {
            let request = report_request(&args)?;
            let outcome = queries::report(&data, &request, args.format, args.limits.limits())
                .await
                .map_err(anyhow::Error::from);
            audited(&data, &reader, "report", &request.describe(), outcome).await
        }
        Command::Conversation(args) => {
            let outcome = conversation::conversation(&data, &args)
                .await
                .map_err(anyhow::Error::from);
            audited(&data, &reader, "conversation", &args.describe(), outcome).await
        }
        Command::Timeline(args) => {
            let request = args.request(now_ns())?;
            let outcome = conversation::timeline(&data, &request, &args)
                .await
                .map_err(anyhow::Error::from);
            audited(&data, &reader, "timeline", &request.describe(), outcome).await
        }
        Command::Audit(AuditCommand::List { since, format }) => {
            let since_ns = since
                .as_deref()
                .map(|s| sipvault_query::parse_time(s, now_ns()))
                .transpose()?;
            audit::list(&data, since_ns, format).await
        }
        Command::Export(export::ExportCli {
            command: Some(export::ExportCommand::Verify { dir }),
            ..
        }) => export::verify(&dir),
        Command::Export(export::ExportCli {
            command: None,
            args,
        }) => {
            let outcome = export::export(&data, &reader, &args, now_ns()).await;
            let description = match &outcome {
                Ok(done) => done.description.clone(),
                Err(_) => args.describe(),
            };
            let outcome = outcome.map(|done| done.ims);
            audited(&data, &reader, "export", &description, outcome).await
        }
        Command::Reindex => reindex::reindex(&data).await,
        Command::Verify { format } => verify(&data, format).await,
        Command::Status { format } => status::show(&data, format).await,
        Command::Import(ImportCommand::Pcap { files, format }) => {
            import::import_pcaps(&data, &config, &files, format).await
        }
        Command::Demo => unreachable!("handled above"),
    }
}

/// Records a read of the archive in the audit log, then passes its outcome on.
async fn audited(
    data: &Path,
    reader: &str,
    command: &str,
    query: &str,
    outcome: anyhow::Result<u64>,
) -> anyhow::Result<()> {
    audit::record(data, reader, command, query, &outcome).await?;
    outcome.map(drop)
}

fn report_request(args: &ReportArgs) -> anyhow::Result<ReportRequest> {
    let now = now_ns();
    let time = |s: &Option<String>| {
        s.as_deref()
            .map(|s| sipvault_query::parse_time(s, now))
            .transpose()
    };
    Ok(ReportRequest {
        report: args.name.parse()?,
        since_ns: time(&args.since)?,
        until_ns: time(&args.until)?,
        user: args.user.clone(),
        by: args.by,
        top: args.top,
    })
}

pub async fn add_user(data: &Path, name: &str, password: &str, domain: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['@', ':', ' ', ';']) {
        bail!("user name {name:?} must be a plain SIP user part (no '@', ':', ';' or spaces)");
    }
    let catalog = Catalog::open(data).await?;
    catalog
        .add_user(
            name,
            domain,
            &ha1(Algorithm::Md5, name, domain, password),
            &ha1(Algorithm::Sha256, name, domain, password),
        )
        .await?;
    catalog.close().await;
    Ok(())
}

async fn list_users(data: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await?;
    let users = catalog.list_users().await?;
    match format {
        OutputFormat::Json => {
            let v: Vec<_> = users.iter().map(|u| serde_json::json!({"name": u.name, "domain": u.domain, "created_ns": u.created_ns})).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        OutputFormat::Csv => {
            println!("name,domain");
            for u in &users {
                println!("{},{}", u.name, u.domain);
            }
        }
        OutputFormat::Table => {
            println!("{:<24} DOMAIN", "USER");
            for u in &users {
                println!("{:<24} {}", u.name, u.domain);
            }
            println!("({} users)", users.len());
        }
    }
    Ok(())
}

impl SearchArgs {
    /// The query with its filters, as the audit log records it.
    fn describe(&self) -> String {
        let mut out = self.query.clone();
        for (flag, value) in [
            ("--from", &self.from),
            ("--to", &self.to),
            ("--since", &self.since),
            ("--until", &self.until),
        ] {
            if let Some(v) = value {
                out.push_str(&format!(" {flag} {v}"));
            }
        }
        // Paging and order as given, when not the defaults.
        if self.sort != "time" {
            out.push_str(&format!(" --sort {}", self.sort));
        }
        if self.limit != 100 {
            out.push_str(&format!(" --limit {}", self.limit));
        }
        if let Some(page) = self.page {
            out.push_str(&format!(" --page {page}"));
        } else if self.offset > 0 {
            out.push_str(&format!(" --offset {}", self.offset));
        }
        out
    }
}

/// Prints the hits of a search; returns how many.
fn search(data: &Path, args: SearchArgs) -> anyhow::Result<u64> {
    let now = now_ns();
    let req = SearchRequest {
        query: args.query,
        from: args.from,
        to: args.to,
        since_ns: args
            .since
            .as_deref()
            .map(|s| sipvault_query::parse_time(s, now))
            .transpose()?,
        until_ns: args
            .until
            .as_deref()
            .map(|s| sipvault_query::parse_time(s, now))
            .transpose()?,
        limit: args.limit,
        offset: match args.page {
            Some(page) => usize::try_from(page - 1)
                .unwrap_or(usize::MAX)
                .saturating_mul(args.limit),
            None => args.offset,
        },
        sort: args.sort.parse::<SortOrder>().map_err(anyhow::Error::msg)?,
        types: Vec::new(),
    };
    let index = pipeline::index_dir(data);
    let page = sipvault_query::search_page(&index, &req).context("search failed")?;
    if !index.join("meta.json").is_file() {
        eprintln!(
            "note: there is no search index at {}; `sipvault reindex` builds it from the archive",
            index.display()
        );
    }
    print!("{}", sipvault_query::format_hits(&page.hits, args.format));
    if args.format == OutputFormat::Table {
        let first = req.offset.saturating_add(1);
        let last = req.offset.saturating_add(page.hits.len());
        if page.hits.is_empty() {
            eprintln!("no hits on this page ({} in all)", page.total);
        } else {
            eprintln!("hits {first}-{last} of {}", page.total);
        }
    }
    Ok(page.hits.len() as u64)
}

async fn verify(data: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await?;
    let entries = catalog.segments().await?;
    catalog.close().await;
    let report = sipvault_collector::verify_archive(data, &entries, |_| {});
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Csv => {
            println!("problem,detail");
            for f in &report.findings {
                let v = serde_json::to_value(f)?;
                println!(
                    "{},\"{}\"",
                    v["problem"].as_str().unwrap_or(""),
                    f.to_string().replace('"', "\"\"")
                );
            }
        }
        OutputFormat::Table => {
            for f in &report.findings {
                println!("{f}");
            }
            println!(
                "{} segments, {} rows, {} problems",
                report.segments,
                report.rows,
                report.findings.len()
            );
        }
    }
    if !report.findings.is_empty() {
        bail!(
            "archive verification failed: {} problems",
            report.findings.len()
        );
    }
    Ok(())
}

async fn serve(data: &Path, config: &Config, sip: SocketAddr) -> anyhow::Result<()> {
    // Handlers before the listening line: a SIGTERM sent as soon as the
    // server says it listens must seal the archive, not kill the process.
    let mut stop = StopSignals::install()?;
    let running = pipeline::Running::start(data, config, sip).await?;
    stop.wait().await;
    tracing::info!("shutting down: sealing the archive");
    running.shutdown().await
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
