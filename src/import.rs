//! `sipvault import pcap`: archives the SIP traffic of capture files.
//!
//! Every file is hashed (SHA-256); a file whose content was imported before
//! is skipped, so importing the same capture twice adds nothing. A file
//! can only repeat an earlier import of its length: such a file is hashed
//! before it is read, any other while it is read. Messages go
//! through the same collector as live traffic (correlation, sealing,
//! indexing); the import is entered in the catalog only after its segments
//! are sealed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sipvault_catalog::{Catalog, ImportRecord};
use sipvault_collector::Inputs;
use sipvault_collector::pcap::{
    ImportOptions, ImportStats, PcapError, import_file, import_reader, open_capture,
};
use sipvault_collector::writer::Sha256Reader;
use sipvault_query::OutputFormat;
use sipvault_schemas::CapturedMessage;

use crate::config::Config;
use crate::pipeline::Archiver;

#[derive(Debug, Serialize)]
struct FileOutcome {
    file: String,
    sha256: String,
    /// `imported`, `already-imported` or `failed`.
    status: String,
    /// When already imported: the name it was imported under.
    previous_name: Option<String>,
    error: Option<String>,
    /// The whole file's length (what its hash covers).
    #[serde(skip)]
    file_bytes: u64,
    #[serde(flatten)]
    stats: ImportStats,
}

#[derive(Debug, Serialize)]
struct Summary {
    files: Vec<FileOutcome>,
    packets: u64,
    sip_messages: u64,
    calls: u64,
    im_messages: u64,
    presence: u64,
    skipped: BTreeMap<String, u64>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn progress_bar(total: u64, name: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

/// Imports `files` into the archive at `data`; returns an error (exit 1)
/// when any file could not be read at all.
pub async fn import_pcaps(
    data: &Path,
    config: &Config,
    files: &[PathBuf],
    format: OutputFormat,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await.context("opening the catalog")?;
    let (captured_tx, raw_tx, inputs) = Inputs::channel(config.archive.tap_queue);
    // Capture files carry no HEP-raw rows of their own.
    drop(raw_tx);
    let archiver = Archiver::start(data, config, catalog.clone(), inputs, false)?;

    let mut outcomes = Vec::new();
    let mut seen_now: BTreeMap<String, String> = BTreeMap::new();
    let mut sizes_now: BTreeSet<u64> = BTreeSet::new();
    for path in files {
        let name = file_name(path);
        let size = std::fs::metadata(path).map(|m| m.len()).ok();
        // Only a file of the size of an earlier import can repeat it; only
        // then must its hash be known before it is read. Any other file is
        // hashed by the pass that reads its packets.
        let may_repeat = match size {
            Some(size) => {
                sizes_now.contains(&size)
                    || catalog
                        .import_may_match_size(i64::try_from(size).unwrap_or(i64::MAX))
                        .await?
            }
            None => true,
        };
        let known = if may_repeat {
            let hashed = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    sipvault_collector::writer::sha256_and_length(&path)
                })
                .await?
            };
            let (sha, file_bytes) = match hashed {
                Ok(hashed) => hashed,
                Err(e) => {
                    outcomes.push(failed(name, String::new(), e.to_string()));
                    continue;
                }
            };
            let previous = match catalog.find_import(&sha).await? {
                Some(record) => Some(record.file_name),
                None => seen_now.get(&sha).cloned(),
            };
            if let Some(previous_name) = previous {
                tracing::info!(file = %name, previous = %previous_name, "already imported; nothing added");
                outcomes.push(FileOutcome {
                    file: name,
                    sha256: sha,
                    status: "already-imported".into(),
                    previous_name: Some(previous_name),
                    error: None,
                    file_bytes: 0,
                    stats: ImportStats::default(),
                });
                continue;
            }
            Some((sha, file_bytes))
        } else {
            None
        };
        let total = size.unwrap_or(0);
        let bar = progress_bar(total, &name);
        let opts = ImportOptions {
            source: format!("pcap:{name}"),
            ..ImportOptions::default()
        };
        let sha_if_failed = known
            .as_ref()
            .map(|(sha, _)| sha.clone())
            .unwrap_or_default();
        let (tx, path_owned, bar_in) = (captured_tx.clone(), path.clone(), bar.clone());
        let result = tokio::task::spawn_blocking(move || {
            import_hashed(
                &path_owned,
                &opts,
                known,
                // Blocking send: a full collector queue slows the reader down
                // instead of dropping messages.
                &mut |msg| {
                    let _ = tx.blocking_send(msg);
                },
                &mut |bytes| bar_in.set_position(bytes),
            )
        })
        .await?;
        bar.finish_and_clear();
        outcomes.push(match result {
            Ok(Hashed {
                stats,
                sha256,
                file_bytes,
            }) => {
                seen_now.insert(sha256.clone(), name.clone());
                sizes_now.insert(file_bytes);
                FileOutcome {
                    file: name,
                    sha256,
                    status: "imported".into(),
                    previous_name: None,
                    error: None,
                    file_bytes,
                    stats,
                }
            }
            Err(e) => failed(name, sha_if_failed, e.to_string()),
        });
    }
    drop(captured_tx);
    let collector = archiver.stats.clone();
    archiver.finish().await?;

    for o in outcomes.iter().filter(|o| o.status == "imported") {
        catalog
            .record_import(
                &ImportRecord {
                    sha256: o.sha256.clone(),
                    file_name: o.file.clone(),
                    bytes: i64::try_from(o.stats.bytes).unwrap_or(i64::MAX),
                    packets: i64::try_from(o.stats.packets).unwrap_or(i64::MAX),
                    sip_messages: i64::try_from(o.stats.sip_messages).unwrap_or(i64::MAX),
                    imported_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
                },
                i64::try_from(o.file_bytes).unwrap_or(i64::MAX),
            )
            .await?;
    }
    catalog.close().await;

    let mut summary = Summary {
        packets: outcomes.iter().map(|o| o.stats.packets).sum(),
        sip_messages: outcomes.iter().map(|o| o.stats.sip_messages).sum(),
        calls: collector.call_rows.load(Ordering::Relaxed),
        im_messages: collector.im_rows.load(Ordering::Relaxed),
        presence: collector.presence_rows.load(Ordering::Relaxed),
        skipped: BTreeMap::new(),
        files: outcomes,
    };
    for o in &summary.files {
        for (reason, n) in &o.stats.skipped {
            *summary.skipped.entry(reason.clone()).or_default() += n;
        }
    }
    print_summary(&summary, format)?;
    let failures = summary
        .files
        .iter()
        .filter(|o| o.status == "failed")
        .count();
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} files could not be imported",
            summary.files.len()
        );
    }
    Ok(())
}

fn skipped_text(skipped: &BTreeMap<String, u64>) -> String {
    skipped
        .iter()
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_summary(summary: &Summary, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(summary)?),
        OutputFormat::Csv => {
            println!("file,status,packets,sip_messages,skipped,error");
            for o in &summary.files {
                println!(
                    "{},{},{},{},{},\"{}\"",
                    csv_field(&o.file),
                    o.status,
                    o.stats.packets,
                    o.stats.sip_messages,
                    csv_field(&skipped_text(&o.stats.skipped)),
                    o.error.as_deref().unwrap_or("").replace('"', "\"\"")
                );
            }
        }
        OutputFormat::Table => {
            let width = summary
                .files
                .iter()
                .map(|o| o.file.chars().count())
                .max()
                .unwrap_or(0)
                .max(4);
            println!(
                "{:<width$} {:<17} {:>9} {:>9}  SKIPPED",
                "FILE", "STATUS", "PACKETS", "SIP"
            );
            for o in &summary.files {
                let note = match (&o.error, &o.previous_name) {
                    (Some(e), _) => e.clone(),
                    (None, Some(prev)) => format!("same content as {prev}; nothing added"),
                    (None, None) => skipped_text(&o.stats.skipped),
                };
                println!(
                    "{:<width$} {:<17} {:>9} {:>9}  {}",
                    o.file, o.status, o.stats.packets, o.stats.sip_messages, note
                );
            }
            println!(
                "{} packets, {} SIP messages, {} calls, {} IMs, {} presence states archived; skipped: {}",
                summary.packets,
                summary.sip_messages,
                summary.calls,
                summary.im_messages,
                summary.presence,
                if summary.skipped.is_empty() {
                    "none".to_string()
                } else {
                    skipped_text(&summary.skipped)
                }
            );
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An imported file: what was read, and the hash and length of the whole.
struct Hashed {
    stats: ImportStats,
    sha256: String,
    file_bytes: u64,
}

/// Imports one file. Unless its hash and length are `known` already, the
/// file is hashed as it is read, and what the reader leaves (after damage
/// that ends the import early) is read for the hash too: the hash is
/// always the whole file's.
fn import_hashed(
    path: &Path,
    opts: &ImportOptions,
    known: Option<(String, u64)>,
    sink: &mut dyn FnMut(CapturedMessage),
    progress: &mut dyn FnMut(u64),
) -> Result<Hashed, PcapError> {
    if let Some((sha256, file_bytes)) = known {
        let stats = import_file(path, opts, sink, progress)?;
        return Ok(Hashed {
            stats,
            sha256,
            file_bytes,
        });
    }
    let mut reader = Sha256Reader::new(open_capture(path)?);
    let stats = import_reader(&mut reader, opts, sink, progress)?;
    let (sha256, file_bytes) = reader.finish().map_err(PcapError::Read)?;
    Ok(Hashed {
        stats,
        sha256,
        file_bytes,
    })
}

fn failed(file: String, sha256: String, error: String) -> FileOutcome {
    FileOutcome {
        file,
        sha256,
        status: "failed".into(),
        previous_name: None,
        error: Some(error),
        file_bytes: 0,
        stats: ImportStats::default(),
    }
}
