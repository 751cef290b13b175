//! Shared by the golden tests: the shared test data and its captures as
//! `CapturedMessage`s, read with the product's own pcap importer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sipvault_collector::pcap::{ImportOptions, import_file};
use sipvault_schemas::CapturedMessage;

pub fn testdata() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ))
    .to_path_buf()
}

/// Every SIP message of the capture at `relative` (under the test data),
/// in capture order, with source `pcap:<file name>` as `sipvault import
/// pcap` sets it.
pub fn captured(relative: &str) -> Vec<CapturedMessage> {
    let path = testdata().join(relative);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = ImportOptions {
        source: format!("pcap:{name}"),
        ..Default::default()
    };
    let mut messages = Vec::new();
    import_file(&path, &options, &mut |m| messages.push(m), &mut |_| {})
        .unwrap_or_else(|e| panic!("import {}: {e}", path.display()));
    messages
}
