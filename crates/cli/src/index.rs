//! The job index from the operator's side: opening it from the settings,
//! rebuilding it from the manifests in the work bucket, and seeding it with
//! realistic rows. The worker that keeps it current is `reelfleet_index::IndexStage`.

use anyhow::Context;
use futures::{stream, StreamExt};
use reelfleet_core::{events::JobSummary, manifest::ManifestStore, settings::Settings, storage::Storage};
use reelfleet_index::{JobIndex, JobRow};
use serde::Serialize;
use std::collections::BTreeSet;

/// Manifests read at once by a rebuild.
const READ_CONCURRENCY: usize = 16;
/// Rows written per transaction.
const WRITE_CHUNK: usize = 200;

/// The index of `settings.index.url`, migrated.
pub async fn open(settings: &Settings) -> anyhow::Result<JobIndex> {
    JobIndex::connect(settings.index.url.expose(), &settings.namespace)
        .await
        .context("cannot open the job index (index.url)")
}

/// What a rebuild did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RebuildReport {
    /// Manifests read and written as rows.
    pub jobs: usize,
    /// Rows removed because no manifest backs them.
    pub removed: usize,
}

/// Rewrites every job's row from its manifest (a progress bar on stderr when
/// `progress`), then removes rows no manifest backs. Events stay: they are
/// the history the manifests do not keep. Events arriving meanwhile still
/// apply on top (a newer manifest summary replaces an older one).
pub async fn rebuild(settings: &Settings, index: &JobIndex, progress: bool) -> anyhow::Result<RebuildReport> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let manifests = ManifestStore::new(Storage::new(&settings.s3), settings.s3.work_bucket.clone());
    let ids = manifests.job_ids().await.context("cannot list the manifests")?;
    let bar = if progress {
        ProgressBar::with_draw_target(Some(ids.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("indexing manifests {pos}/{len} {wide_bar} {eta}").expect("valid template"),
    );
    let mut rows = stream::iter(ids.clone())
        .map(|id| {
            let manifests = manifests.clone();
            async move { manifests.load(&id).await.with_context(|| format!("cannot read the manifest of {id}")) }
        })
        .buffer_unordered(READ_CONCURRENCY);
    let mut seen = BTreeSet::new();
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    while let Some(manifest) = rows.next().await {
        // A manifest deleted since the listing (a replayed ingest failure) has no row.
        let Some(m) = manifest? else { continue };
        seen.insert(m.job_id.clone());
        chunk.push(JobRow::from_summary(&JobSummary::of(&m)));
        bar.inc(1);
        if chunk.len() == WRITE_CHUNK {
            index.put(&chunk).await?;
            chunk.clear();
        }
    }
    index.put(&chunk).await?;
    bar.finish_and_clear();
    let stale: Vec<String> = index.job_ids().await?.into_iter().filter(|id| !seen.contains(id)).collect();
    index.remove(&stale).await?;
    index.analyze().await?;
    Ok(RebuildReport { jobs: seen.len(), removed: stale.len() })
}

/// Writes `n` realistic rows created over the last `days` (a progress bar on stderr when `progress`).
pub async fn seed(index: &JobIndex, n: usize, days: i64, progress: bool) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = if progress {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template("seeding {pos}/{len} {wide_bar} {eta}").expect("valid template"));
    let now = chrono::Utc::now().timestamp_millis();
    let rows = reelfleet_index::seed::rows(n, now, days, now as u64);
    for chunk in rows.chunks(1000) {
        index.put(chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    index.analyze().await?;
    Ok(())
}
