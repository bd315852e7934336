//! `reelfleet worker STAGE`: one stage's worker, with its health server,
//! until SIGTERM/SIGINT; the message in flight is finished before it exits.

use crate::fleet::{self, StageName};
use reelfleet_core::{
    envelope::Tier, metrics::Metrics, runtime::shutdown_signal, settings::Settings, storage::Storage,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Arguments of `reelfleet worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The stage whose queues it consumes.
    stage: StageName,
    /// Inference tiers to consume (default: all four).
    #[arg(long = "tier")]
    tiers: Vec<Tier>,
}

/// Runs the stage's worker until a signal, then drains it.
pub async fn run(settings: Settings, args: WorkerArgs) -> anyhow::Result<i32> {
    let WorkerArgs { stage, tiers } = args;
    let settings = Arc::new(settings);
    let storage = Storage::new(&settings.s3);
    let metrics = Metrics::new();
    let stages = fleet::build_stages(&settings, &storage, &metrics, &[stage], &tiers).await?;
    let shutdown = CancellationToken::new();
    let handle = fleet::start(settings.clone(), stages, metrics, shutdown.clone()).await?;
    tracing::info!(stage = ?stage, health = %handle.health_addr, namespace = %settings.namespace, "Worker started");
    shutdown_signal().await;
    tracing::info!("Shutdown requested; draining");
    shutdown.cancel();
    handle.wait().await;
    tracing::info!("Worker stopped");
    Ok(0)
}
