//! Builds stages from settings and runs them under one runtime and one
//! health server. The health server outlives the shutdown signal: it serves
//! (`/readyz` 503, `/metrics` live) until every worker has drained.

use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    envelope::Tier,
    fleetstate::FleetState,
    health::{self, Readiness},
    manifest::ManifestStore,
    metrics::Metrics,
    runtime::{Runtime, Stage},
    settings::Settings,
    storage::Storage,
};
use reelfleet_inference::Inference;
use reelfleet_ingest::Ingest;
use reelfleet_postprocess::Postprocess;
use reelfleet_preprocess::Preprocess;
use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Duration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A stage name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StageName {
    /// S3 events in, validated jobs out.
    Ingest,
    /// Normalize, keyframes, complexity, tier.
    Preprocess,
    /// Model calls, cost ledger.
    Inference,
    /// Renditions, thumbnails, quality, final manifest.
    Postprocess,
    /// Sources given by URL fetched into the upload bucket, then to ingest.
    Pull,
    /// Outgoing webhooks (job callbacks and configured endpoints).
    Webhooks,
    /// The job index: every lifecycle event into its database.
    Index,
}

impl StageName {
    /// All four, in pipeline order.
    pub const ALL: [StageName; 4] =
        [StageName::Ingest, StageName::Preprocess, StageName::Inference, StageName::Postprocess];
    /// The four pipeline stages, the URL pull, the webhooks and the index: what `reelfleet dev` runs.
    pub const EVERY: [StageName; 7] = [
        StageName::Pull,
        StageName::Ingest,
        StageName::Preprocess,
        StageName::Inference,
        StageName::Postprocess,
        StageName::Webhooks,
        StageName::Index,
    ];
}

impl FromStr for StageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// Builds the stage objects (inference connects to the shared state database, index to its own).
pub async fn build_stages(
    settings: &Arc<Settings>,
    storage: &Storage,
    metrics: &Metrics,
    stages: &[StageName],
    tiers: &[Tier],
) -> anyhow::Result<Vec<Arc<dyn Stage>>> {
    let mut out: Vec<Arc<dyn Stage>> = Vec::new();
    for s in stages {
        out.push(match s {
            StageName::Ingest => Arc::new(Ingest::new(settings.clone(), storage.clone()).context("ingest's ffmpeg")?),
            StageName::Preprocess => {
                Arc::new(Preprocess::new(settings.clone(), storage.clone()).context("preprocess's ffmpeg")?)
            }
            StageName::Inference => {
                let state = FleetState::connect(settings.state.url.expose(), &settings.namespace)
                    .await
                    .context("inference's shared state (state.url)")?;
                Arc::new(
                    Inference::new(settings.clone(), storage.clone(), tiers.to_vec(), metrics.clone(), state)
                        .context("inference provider")?,
                )
            }
            StageName::Postprocess => {
                Arc::new(Postprocess::new(settings.clone(), storage.clone()).context("postprocess's ffmpeg")?)
            }
            StageName::Pull => Arc::new(
                reelfleet_pull::Pull::new(settings.clone(), storage.clone(), metrics).map_err(anyhow::Error::msg)?,
            ),
            StageName::Webhooks => Arc::new(
                reelfleet_webhooks::Webhooks::new(settings.clone(), storage.clone(), metrics)
                    .map_err(anyhow::Error::msg)?,
            ),
            StageName::Index => {
                let index = reelfleet_index::JobIndex::connect(settings.index.url.expose(), &settings.namespace)
                    .await
                    .context("the job index (index.url)")?;
                Arc::new(reelfleet_index::IndexStage::new(index))
            }
        });
    }
    Ok(out)
}

/// Running workers: what [`start`] returns.
#[derive(Debug)]
pub struct FleetHandle {
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub health_addr: SocketAddr,
    /// The registry the workers count into, served on `/metrics`.
    pub metrics: Metrics,
    /// What `/readyz` answers from: ready once every consumer is attached.
    pub readiness: Readiness,
    tasks: JoinSet<()>,
    /// Stops the health server when the handle goes, after the drain.
    _health: tokio_util::sync::DropGuard,
}

impl FleetHandle {
    /// Waits until every worker has drained and stopped, then stops the health server.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts `stages` consuming until `shutdown` is cancelled; the health
/// endpoints answer until the returned handle has drained (or is dropped).
pub async fn start(
    settings: Arc<Settings>,
    stages: Vec<Arc<dyn Stage>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<FleetHandle> {
    let storage = Storage::new(&settings.s3);
    let broker = Broker::new(&settings.broker, &format!("reelfleet-{}", std::process::id()))?;
    let readiness = Readiness::default();
    let manifests = ManifestStore::new(storage, settings.s3.work_bucket.clone());
    let runtime = Runtime::new(&settings, broker, manifests, metrics.clone(), readiness.clone())?;
    // What a killed process left in scratch: anything older than a job can
    // live, and a long source raises a job's timeout up to the cap.
    let longest_job = reelfleet_core::runtime::JobDeadline::from_settings(&settings).max_secs();
    let job_lifetime = Duration::from_secs(longest_job + settings.runtime.grace_period_secs + 60);
    let swept = reelfleet_core::media::sweep_scratch(settings.runtime.scratch_dir.as_deref(), job_lifetime);
    if swept > 0 {
        tracing::info!(swept, "Removed scratch folders left by an earlier process");
    }
    let health = CancellationToken::new();
    let health_addr = health::serve(&settings.runtime.health_addr, readiness.clone(), metrics.clone(), health.clone())
        .await
        .with_context(|| format!("cannot serve health endpoints on {}", settings.runtime.health_addr))?;
    let mut tasks = JoinSet::new();
    for stage in stages {
        let (rt, stop) = (runtime.clone(), shutdown.clone());
        tasks.spawn(async move { rt.run(stage, stop).await });
    }
    Ok(FleetHandle { health_addr, metrics, readiness, tasks, _health: health.drop_guard() })
}
