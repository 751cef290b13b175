//! `sipvault status`: what a running (or the last) `serve` reports about
//! itself, plus what the catalog says is archived.
//!
//! `serve` rewrites `<data>/status.json` every few seconds (and once more
//! at shutdown, with `running: false`), so the command needs no connection
//! to the server and works the same for a server that has stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sipvault_catalog::Catalog;
use sipvault_query::OutputFormat;

pub const STATUS_FILE: &str = "status.json";

pub type Counters = BTreeMap<String, u64>;

pub fn counters<const N: usize>(snapshot: [(&'static str, u64); N]) -> Counters {
    snapshot
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// What `serve` writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServeStatus {
    pub pid: u32,
    /// False once the server has shut down cleanly.
    pub running: bool,
    pub started: String,
    pub updated: String,
    pub sip_udp: String,
    pub sip_tcp: String,
    pub hep: Option<String>,
    pub collector: Counters,
    pub server: Counters,
    pub hep_counters: Option<Counters>,
}

fn status_path(data: &Path) -> PathBuf {
    data.join(STATUS_FILE)
}

/// Replaces the status file atomically (readers never see half a file).
pub fn write(data: &Path, status: &ServeStatus) -> std::io::Result<()> {
    let tmp = data.join(format!(".{STATUS_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, status_path(data))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[derive(Debug, Serialize)]
struct Report {
    /// `running`, `stopped` (clean shutdown), `dead` (the process is gone
    /// without a clean shutdown) or `never-started`.
    state: String,
    serve: Option<ServeStatus>,
    segments: usize,
    rows: BTreeMap<String, i64>,
}

pub async fn show(data: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let serve: Option<ServeStatus> = match std::fs::read(status_path(data)) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", status_path(data).display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading the status file"),
    };
    let state = match &serve {
        None => "never-started",
        Some(s) if !s.running => "stopped",
        Some(s) if process_alive(s.pid) => "running",
        Some(_) => "dead",
    };
    let catalog = Catalog::open(data).await.context("opening the catalog")?;
    let segments = catalog.segments().await?;
    catalog.close().await;
    let mut rows = BTreeMap::new();
    for s in &segments {
        *rows.entry(s.table_name.clone()).or_default() += s.rows;
    }
    let report = Report {
        state: state.into(),
        serve,
        segments: segments.len(),
        rows,
    };
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Csv => {
            println!("section,name,value");
            println!("server,state,{}", report.state);
            println!("archive,segments,{}", report.segments);
            for (table, n) in &report.rows {
                println!("archive_rows,{table},{n}");
            }
            if let Some(s) = &report.serve {
                for (section, c) in [
                    ("collector", Some(&s.collector)),
                    ("server", Some(&s.server)),
                    ("hep", s.hep_counters.as_ref()),
                ] {
                    for (k, v) in c.into_iter().flatten() {
                        println!("{section},{k},{v}");
                    }
                }
            }
        }
        OutputFormat::Table => {
            let line = |c: &Counters| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            match &report.serve {
                Some(s) => {
                    println!(
                        "server     {} (pid {}, started {}, updated {})",
                        report.state, s.pid, s.started, s.updated
                    );
                    println!("listening  sip udp {} tcp {}", s.sip_udp, s.sip_tcp);
                    if let Some(hep) = &s.hep {
                        println!("           hep udp+tcp {hep}");
                    }
                    println!("collector  {}", line(&s.collector));
                    println!("transport  {}", line(&s.server));
                    if let Some(h) = &s.hep_counters {
                        println!("hep        {}", line(h));
                    }
                }
                None => println!("server     never started with this data directory"),
            }
            let rows = report
                .rows
                .iter()
                .map(|(t, n)| format!("{t}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "archive    {} sealed segments; rows {rows}",
                report.segments
            );
        }
    }
    Ok(())
}
