//! `sipvault reindex`: rebuild the search index from the Parquet archive.

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sipvault_catalog::Catalog;
use sipvault_indexer::ImIndex;
use sipvault_query::reindex::{indexable_segments, rebuild_index};

use crate::pipeline::index_dir;

/// Indexes every `im_messages`, `calls` and `presence` segment of the manifest
/// afresh, with a progress bar on stderr. Fails if a server holds the index.
pub async fn reindex(data: &Path) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await.context("opening the catalog")?;
    let manifest = catalog.segments().await?;
    catalog.close().await;
    let segments = indexable_segments(&manifest);
    let data = data.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut index =
            ImIndex::open_or_create(&index_dir(&data)).context("opening the search index")?;
        let bar = ProgressBar::new(segments.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "reindex {bar:40} {pos}/{len} segments [{elapsed_precise}] eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let summary = rebuild_index(&mut index, &data, &segments, |done, _| {
            bar.set_position(done as u64)
        })
        .context("rebuilding the search index")?;
        bar.finish_and_clear();
        Ok(summary)
    })
    .await??;
    println!(
        "indexed {} segments, {} records",
        summary.segments, summary.documents
    );
    Ok(())
}
