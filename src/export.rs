//! `sipvault export`: a case file of what a search matches, and
//! `sipvault export verify`: re-check one.
//!
//! An export directory holds, by format:
//!
//! | format | files |
//! |---|---|
//! | `jsonl` | `im_messages.jsonl` |
//! | `csv` | `im_messages.csv` |
//! | `parquet` | `im_messages.parquet`, `sip_messages.parquet` |
//! | `eml` | `eml/NNNN.eml`, one per conversation (set of participants) |
//! | `pcap` | `sip_messages.pcap` (synthetic IP/UDP headers, LINKTYPE_RAW) |
//!
//! and `MANIFEST.json`: case, query, time bounds, who ran it and when, the
//! sipvault version, and each file's size and SHA-256. The SHA-256 of the
//! manifest itself goes into the audit log entry of the export, so a
//! manifest rewritten to match altered files no longer matches the log.
//!
//! What is selected is in `sipvault_query::export`: the IMs the query
//! matches and every SIP message with their Call-IDs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use sipvault_query::SearchRequest;
use sipvault_query::export::{self as ex, eml};

pub const MANIFEST: &str = "MANIFEST.json";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExportCli {
    #[command(subcommand)]
    pub command: Option<ExportCommand>,
    #[command(flatten)]
    pub args: ExportArgs,
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Re-hash every file MANIFEST.json lists; report missing, altered and
    /// extra files (exit 1 if any).
    #[command(after_help = "Example:\n  sipvault export verify ./case-4711")]
    Verify {
        /// The export directory (the one holding MANIFEST.json).
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    /// Search query, the syntax of `sipvault search` (words, "phrases",
    /// AND/OR/NOT, from:, to:); `*` for every IM.
    #[arg(long, required = true)]
    pub query: Option<String>,
    /// Start time: RFC 3339, YYYY-MM-DD, or relative (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// End time (exclusive), same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Case name, recorded in the manifest, the audit log and each .eml.
    #[arg(long = "case", required = true)]
    pub case: Option<String>,
    /// Output directory; created, and refused if it exists and is not empty.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Formats to write, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "eml,jsonl,csv,parquet,pcap"
    )]
    pub format: Vec<ExportFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ExportFormat {
    /// One RFC 5322 message per conversation.
    Eml,
    /// IM rows, one JSON object per line.
    Jsonl,
    /// IM rows as CSV.
    Csv,
    /// IM and SIP rows as Parquet.
    Parquet,
    /// Raw SIP messages as a pcap capture.
    Pcap,
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_possible_value().expect("no skipped variants");
        f.write_str(v.get_name())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub case: String,
    pub query: String,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Time bounds as the search applied them (RFC 3339 UTC).
    pub since_utc: Option<String>,
    pub until_utc: Option<String>,
    pub exported_by: String,
    pub exported_at: String,
    pub sipvault_version: String,
    pub formats: Vec<String>,
    pub im_messages: u64,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub presence: u64,
    pub sip_messages: u64,
    /// SIP messages left out of the pcap: larger than one UDP datagram.
    pub pcap_oversized_skipped: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the export directory, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What one export wrote.
pub struct Exported {
    pub ims: u64,
    pub description: String,
}

impl ExportArgs {
    /// The export as the audit log records it (the manifest hash is added once written).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "case {:?}: {}",
            self.case.as_deref().unwrap_or(""),
            self.query.as_deref().unwrap_or("")
        );
        for (flag, value) in [("--since", &self.since), ("--until", &self.until)] {
            if let Some(v) = value {
                out.push_str(&format!(" {flag} {v}"));
            }
        }
        let formats: Vec<String> = self.format.iter().map(ToString::to_string).collect();
        out.push_str(&format!(" --format {}", formats.join(",")));
        if let Some(dir) = &self.out {
            out.push_str(&format!(" --out {}", dir.display()));
        }
        out
    }
}

/// `sipvault export`: writes the case and its manifest; returns the number of IMs exported.
pub async fn export(
    data: &Path,
    reader: &str,
    args: &ExportArgs,
    now_ns: i64,
) -> anyhow::Result<Exported> {
    let (Some(query), Some(case), Some(out)) = (&args.query, &args.case, &args.out) else {
        bail!("export needs --query, --case and --out");
    };
    let time = |s: &Option<String>| {
        s.as_deref()
            .map(|s| sipvault_query::parse_time(s, now_ns))
            .transpose()
    };
    let request = SearchRequest {
        query: query.clone(),
        since_ns: time(&args.since)?,
        until_ns: time(&args.until)?,
        ..SearchRequest::default()
    };
    refuse_used_dir(out)?;
    let records = ex::select_case(data, &crate::pipeline::index_dir(data), &request)
        .await
        .context("export failed")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let formats: BTreeSet<ExportFormat> = args.format.iter().copied().collect();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut oversized = 0;
    // IMs always have their file (an empty case says so); calls and
    // presence changes only when the case holds some.
    let row_tables = [
        ("im_messages", &records.ims, true),
        ("calls", &records.calls, false),
        ("presence", &records.presence, false),
    ];
    let sip = ("sip_messages", &records.sip, true);
    let written = row_tables
        .iter()
        .filter(|(_, rows, always)| *always || rows.count() > 0);
    for format in &formats {
        match format {
            ExportFormat::Jsonl => {
                for (table, rows, _) in written.clone() {
                    let path = out.join(format!("{table}.jsonl"));
                    ex::write_jsonl(&path, &rows.batches)?;
                    files.push(path);
                }
            }
            ExportFormat::Csv => {
                for (table, rows, _) in written.clone() {
                    let path = out.join(format!("{table}.csv"));
                    ex::write_csv(&path, rows.schema.clone(), &rows.batches)?;
                    files.push(path);
                }
            }
            ExportFormat::Parquet => {
                for (table, rows, _) in written.clone().chain([&sip]) {
                    let path = out.join(format!("{table}.parquet"));
                    ex::write_parquet(&path, rows.schema.clone(), &rows.batches)?;
                    files.push(path);
                }
            }
            ExportFormat::Pcap => {
                let path = out.join("sip_messages.pcap");
                let (_, skipped) = ex::write_pcap(&path, &records.sip.batches)?;
                if skipped > 0 {
                    eprintln!(
                        "warning: {skipped} SIP messages larger than one UDP datagram are not in the pcap (they are in sip_messages.parquet)"
                    );
                }
                oversized = skipped;
                files.push(path);
            }
            ExportFormat::Eml => {
                let dir = out.join("eml");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let ims = ex::im_records(&records.ims.batches)?;
                for (i, conversation) in eml::group_conversations(&ims).iter().enumerate() {
                    let path = dir.join(format!("{:04}.eml", i + 1));
                    ex::write_file(&path, &eml::format_eml(conversation, case))?;
                    files.push(path);
                }
            }
        }
    }

    let rfc3339 = |ns: Option<i64>| ns.map(sipvault_query::format_time_ns);
    let mut manifest = Manifest {
        case: case.clone(),
        query: query.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        since_utc: rfc3339(request.since_ns),
        until_utc: rfc3339(request.until_ns),
        exported_by: reader.to_string(),
        exported_at: sipvault_query::format_time_ns(now_ns),
        sipvault_version: env!("CARGO_PKG_VERSION").to_string(),
        formats: formats.iter().map(ToString::to_string).collect(),
        im_messages: records.ims.count() as u64,
        calls: records.calls.count() as u64,
        presence: records.presence.count() as u64,
        sip_messages: records.sip.count() as u64,
        pcap_oversized_skipped: oversized,
        files: Vec::with_capacity(files.len()),
    };
    for path in &files {
        manifest.files.push(ManifestFile {
            path: relative(out, path)?,
            bytes: std::fs::metadata(path)?.len(),
            sha256: sha256(path)?,
        });
    }
    let manifest_path = out.join(MANIFEST);
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    ex::write_file(&manifest_path, &json)?;
    let manifest_sha = sha256(&manifest_path)?;

    println!(
        "exported case {case:?}: {} IMs, {} calls, {} presence changes, {} SIP messages, {} files to {}",
        manifest.im_messages,
        manifest.calls,
        manifest.presence,
        manifest.sip_messages,
        manifest.files.len(),
        out.display()
    );
    println!("MANIFEST.json sha256 {manifest_sha}");
    Ok(Exported {
        ims: manifest.im_messages,
        description: format!("{} (MANIFEST.json sha256 {manifest_sha})", args.describe()),
    })
}

/// An export goes to a new or empty directory, never over another one.
fn refuse_used_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("{} exists and is not a readable directory", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; an export goes to a new or empty directory",
                out.display()
            );
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> anyhow::Result<String> {
    let rel = path
        .strip_prefix(root)
        .with_context(|| format!("{} is outside {}", path.display(), root.display()))?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok(parts.join("/"))
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    sipvault_collector::writer::sha256_file(path)
        .with_context(|| format!("hashing {}", path.display()))
}

/// One problem `export verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    Missing(String),
    Altered {
        path: String,
        expected: String,
        found: String,
    },
    Extra(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Missing(p) => write!(f, "missing: {p}"),
            Finding::Altered {
                path,
                expected,
                found,
            } => write!(f, "altered: {path} (manifest {expected}, file {found})"),
            Finding::Extra(p) => write!(f, "extra: {p} (not in the manifest)"),
        }
    }
}

/// Compares the directory with its manifest.
pub fn check(dir: &Path) -> anyhow::Result<(Manifest, Vec<Finding>)> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an export manifest", manifest_path.display()))?;
    let mut findings = Vec::new();
    let mut listed = BTreeSet::new();
    for file in &manifest.files {
        listed.insert(file.path.clone());
        let path = dir.join(&file.path);
        if !path.is_file() {
            findings.push(Finding::Missing(file.path.clone()));
            continue;
        }
        let found = sha256(&path)?;
        let size = std::fs::metadata(&path)?.len();
        if found != file.sha256 || size != file.bytes {
            findings.push(Finding::Altered {
                path: file.path.clone(),
                expected: format!("{} bytes sha256 {}", file.bytes, file.sha256),
                found: format!("{size} bytes sha256 {found}"),
            });
        }
    }
    let mut present = Vec::new();
    walk(dir, dir, &mut present)?;
    for path in present {
        if path != MANIFEST && !listed.contains(&path) {
            findings.push(Finding::Extra(path));
        }
    }
    Ok((manifest, findings))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(relative(root, &path)?);
        }
    }
    Ok(())
}

/// `sipvault export verify DIR`.
pub fn verify(dir: &Path) -> anyhow::Result<()> {
    let (manifest, findings) = check(dir)?;
    for f in &findings {
        println!("{f}");
    }
    println!(
        "case {:?}: {} files, {} problems",
        manifest.case,
        manifest.files.len(),
        findings.len()
    );
    if !findings.is_empty() {
        bail!("export verification failed: {} problems", findings.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(dir: &Path, files: &[(&str, &[u8])]) {
        let mut m = Manifest {
            case: "c".into(),
            query: "q".into(),
            since: None,
            until: None,
            since_utc: None,
            until_utc: None,
            exported_by: "tester".into(),
            exported_at: "2026-01-01T00:00:00.000Z".into(),
            sipvault_version: "0".into(),
            formats: vec![],
            im_messages: 0,
            calls: 0,
            presence: 0,
            sip_messages: 0,
            pcap_oversized_skipped: 0,
            files: vec![],
        };
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            m.files.push(ManifestFile {
                path: name.to_string(),
                bytes: bytes.len() as u64,
                sha256: sha256(&path).unwrap(),
            });
        }
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    #[test]
    fn verify_finds_missing_altered_and_extra_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        manifest_for(
            dir,
            &[
                ("a.csv", b"x,y\n"),
                ("eml/0001.eml", b"From: a\r\n"),
                ("b.pcap", b"pcap"),
            ],
        );
        assert_eq!(check(dir).unwrap().1, vec![]);
        std::fs::write(dir.join("a.csv"), b"x,z\n").unwrap();
        std::fs::remove_file(dir.join("b.pcap")).unwrap();
        std::fs::write(dir.join("eml/0002.eml"), b"planted").unwrap();
        let findings = check(dir).unwrap().1;
        assert_eq!(findings.len(), 3, "{findings:?}");
        assert!(matches!(&findings[0], Finding::Altered { path, .. } if path == "a.csv"));
        assert_eq!(findings[1], Finding::Missing("b.pcap".into()));
        assert_eq!(findings[2], Finding::Extra("eml/0002.eml".into()));
    }
}
