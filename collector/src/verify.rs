//! Offline check of the archive against its manifest: every segment
//! present, unaltered and in chain order, and no file the manifest does not
//! know.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;
use sipvault_catalog::{SegmentEntry, broken_links};

use crate::writer::sha256_file;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Finding {
    /// A manifest row whose file is gone.
    Missing { seq: i64, path: String },
    /// A file whose bytes no longer hash to the manifest's SHA-256.
    Altered {
        seq: i64,
        path: String,
        expected: String,
        actual: String,
    },
    /// A Parquet file in the archive that no manifest row names.
    Extra { path: String },
    /// A manifest row whose chain hash does not verify (edited, reordered or removed rows).
    BrokenChain { seq: i64, path: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing { seq, path } => write!(f, "missing: segment #{seq} {path}"),
            Finding::Altered {
                seq,
                path,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "altered: segment #{seq} {path} (manifest sha256 {expected}, file {actual})"
                )
            }
            Finding::Extra { path } => write!(f, "extra: {path} is not in the manifest"),
            Finding::BrokenChain { seq, path } => {
                write!(f, "chain broken at manifest row #{seq} ({path})")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub segments: usize,
    pub rows: i64,
    pub findings: Vec<Finding>,
}

/// Re-reads every segment named in `entries` under `data_dir` and the
/// chain itself; `progress` is called once per segment checked.
pub fn verify_archive(
    data_dir: &Path,
    entries: &[SegmentEntry],
    mut progress: impl FnMut(&SegmentEntry),
) -> VerifyReport {
    let mut findings = Vec::new();
    let by_seq: std::collections::HashMap<i64, &SegmentEntry> =
        entries.iter().map(|e| (e.seq, e)).collect();
    for seq in broken_links(entries) {
        let path = by_seq.get(&seq).map(|e| e.path.clone()).unwrap_or_default();
        findings.push(Finding::BrokenChain { seq, path });
    }
    let mut known = BTreeSet::new();
    for e in entries {
        progress(e);
        known.insert(e.path.clone());
        let path = data_dir.join(&e.path);
        if !path.exists() {
            findings.push(Finding::Missing {
                seq: e.seq,
                path: e.path.clone(),
            });
            continue;
        }
        match sha256_file(&path) {
            Ok(actual) if actual == e.sha256 => {}
            Ok(actual) => findings.push(Finding::Altered {
                seq: e.seq,
                path: e.path.clone(),
                expected: e.sha256.clone(),
                actual,
            }),
            Err(_) => findings.push(Finding::Missing {
                seq: e.seq,
                path: e.path.clone(),
            }),
        }
    }
    for rel in parquet_files(data_dir, &data_dir.join("archive")) {
        if !known.contains(&rel) {
            findings.push(Finding::Extra { path: rel });
        }
    }
    VerifyReport {
        segments: entries.len(),
        rows: entries.iter().map(|e| e.rows).sum(),
        findings,
    }
}

/// Every sealed-looking Parquet file under `dir`, relative to `root`, `/`-separated.
fn parquet_files(root: &Path, dir: &Path) -> Vec<String> {
    files_under(root, dir, &|name| {
        name.ends_with(".parquet") && !name.starts_with('.')
    })
}

/// Every file under `<data_dir>/archive`, sealed or half-written, relative
/// to `data_dir`.
pub(crate) fn archive_files(data_dir: &Path) -> Vec<String> {
    files_under(data_dir, &data_dir.join("archive"), &|_| true)
}

fn files_under(root: &Path, dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(files_under(root, &p, keep));
        } else if keep(&name)
            && let Ok(rel) = p.strip_prefix(root)
        {
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    out.sort();
    out
}
