//! `reelfleet worker KIND`: one stage's worker (the four pipeline stages,
//! the URL pull, the webhooks, the job index) or the SQS bridge, with its
//! health server, until SIGTERM/SIGINT; the message in flight (the batch in
//! hand, for the bridge) is finished before it exits.

use crate::fleet::{self, StageName};
use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    envelope::Tier,
    health::{self, Readiness},
    metrics::Metrics,
    runtime::shutdown_signal,
    settings::{Settings, Uses},
    storage::Storage,
    topology::Topology,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a worker process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum WorkerKind {
    /// S3 events in, validated jobs out.
    Ingest,
    /// Normalize, keyframes, complexity, tier.
    Preprocess,
    /// Model calls, cost ledger.
    Inference,
    /// Renditions, thumbnails, quality, final manifest.
    Postprocess,
    /// Sources given by URL (`<ns>.pull`) fetched into the upload bucket, then to ingest.
    Pull,
    /// Outgoing webhooks (`<ns>.webhooks`): job callbacks and configured endpoints.
    Webhooks,
    /// The job index (`<ns>.index`): every lifecycle event into `index.url`.
    Index,
    /// AWS S3 notifications from SQS (direct, SNS, EventBridge) to the uploads exchange.
    BridgeSqs,
}

/// Arguments of `reelfleet worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The stage, or `bridge-sqs`.
    kind: WorkerKind,
    /// Inference tiers to consume (default: all four).
    #[arg(long = "tier")]
    tiers: Vec<Tier>,
}

/// Runs the worker until a signal, then drains it.
pub async fn run(settings: Settings, args: WorkerArgs) -> anyhow::Result<i32> {
    let WorkerArgs { kind, tiers } = args;
    let stage = match kind {
        WorkerKind::Ingest => StageName::Ingest,
        WorkerKind::Preprocess => StageName::Preprocess,
        WorkerKind::Inference => StageName::Inference,
        WorkerKind::Postprocess => StageName::Postprocess,
        WorkerKind::Pull => StageName::Pull,
        WorkerKind::Webhooks => StageName::Webhooks,
        WorkerKind::Index => StageName::Index,
        WorkerKind::BridgeSqs => return run_bridge(settings).await,
    };
    // Outside `reelfleet dev`, nothing runs on a missing or well-known credential.
    settings.check_credentials(Uses { provider: stage == StageName::Inference, ..Default::default() })?;
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

/// `reelfleet worker bridge-sqs`.
async fn run_bridge(settings: Settings) -> anyhow::Result<i32> {
    settings.check_credentials(Uses { sqs: true, ..Default::default() })?;
    let broker = Broker::new(&settings.broker, &format!("reelfleet-bridge-{}", std::process::id()))?;
    // The uploads exchange must exist before anything is published to it.
    broker.declare(&Topology::from_settings(&settings)).await.context("cannot declare the topology on RabbitMQ")?;
    let (metrics, readiness) = (Metrics::new(), Readiness::default());
    let bridge = reelfleet_bridge::SqsBridge::new(&settings, broker, &metrics, readiness.clone())?;
    let health_stop = CancellationToken::new();
    let addr = health::serve(&settings.runtime.health_addr, readiness, metrics, health_stop.clone())
        .await
        .with_context(|| format!("cannot serve health endpoints on {}", settings.runtime.health_addr))?;
    tracing::info!(health = %addr, queue = %settings.sqs.queue_url, namespace = %settings.namespace, "SQS bridge started");
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { bridge.run(stop).await }
    });
    shutdown_signal().await;
    tracing::info!("Shutdown requested; finishing the batch in hand");
    stop.cancel();
    let _ = task.await;
    health_stop.cancel();
    tracing::info!("SQS bridge stopped");
    Ok(0)
}
