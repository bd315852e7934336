//! `reelfleet intake`: the intake API (jobs, batches, Cloud Storage push)
//! with its health server, until SIGTERM/SIGINT (requests in progress are
//! finished); `reelfleet intake client --id NAME` makes a client's
//! credentials.

use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    health::{self, Readiness},
    metrics::Metrics,
    runtime::shutdown_signal,
    settings::{Settings, Uses},
    signing::generate_key,
    storage::Storage,
    topology::Topology,
    webhooks::WebhookSecret,
};
use reelfleet_intake::{auth::key_sha256, Intake};
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// Arguments of `reelfleet intake`.
#[derive(clap::Args, Debug)]
pub struct IntakeArgs {
    #[command(subcommand)]
    action: Option<IntakeAction>,
}

#[derive(clap::Subcommand, Debug)]
enum IntakeAction {
    /// Serve the API on intake.bind_addr (what `reelfleet intake` alone does).
    Serve,
    /// Print a new client's API key, its SHA-256 and a signing secret, as a
    /// [[intake.clients]] entry.
    Client {
        /// The client's id (letters, digits, '-', '_').
        #[arg(long)]
        id: String,
    },
}

/// Runs `reelfleet intake`.
pub async fn run(settings: Settings, args: IntakeArgs) -> anyhow::Result<i32> {
    match args.action.unwrap_or(IntakeAction::Serve) {
        IntakeAction::Client { id } => make_client(&id),
        IntakeAction::Serve => serve(settings).await,
    }
}

fn make_client(id: &str) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--id {id:?}: 1 to 64 letters, digits, '-' or '_'"
    );
    let api_key = format!("rfk_{}", generate_key());
    let secret = WebhookSecret::generate().encode();
    println!("# Give the client its API key and signing secret (shown only now; the settings keep the key's hash):");
    println!("#   API key:        {api_key}");
    println!("#   signing secret: {secret}");
    println!("[[intake.clients]]");
    println!("id = \"{id}\"");
    println!("api_key_sha256 = \"{}\"", key_sha256(&api_key));
    println!("secret = \"{secret}\"");
    println!("# requests_per_minute = 600  # most requests in any 60 s over every replica (needs state.url)");
    println!("# jobs_per_minute = 5000     # most jobs in any 60 s (a batch counts its jobs)");
    Ok(0)
}

async fn serve(settings: Settings) -> anyhow::Result<i32> {
    settings.check_credentials(Uses { intake: true, ..Default::default() })?;
    let settings = Arc::new(settings);
    let broker = Broker::new(&settings.broker, &format!("reelfleet-intake-{}", std::process::id()))?;
    // The queues it publishes to must exist, or every publish comes back unroutable.
    broker.declare(&Topology::from_settings(&settings)).await.context("cannot declare the topology on RabbitMQ")?;
    let (metrics, readiness) = (Metrics::new(), Readiness::default());
    readiness.register("intake");
    let intake = Intake::new(settings.clone(), Storage::new(&settings.s3), broker, &metrics)?;
    let health_stop = CancellationToken::new();
    let health_addr = health::serve(&settings.runtime.health_addr, readiness.clone(), metrics, health_stop.clone())
        .await
        .with_context(|| format!("cannot serve health endpoints on {}", settings.runtime.health_addr))?;
    let stop = CancellationToken::new();
    let (addr, task) = intake
        .serve(&settings.intake.bind_addr, stop.clone())
        .await
        .with_context(|| format!("cannot listen on intake.bind_addr {}", settings.intake.bind_addr))?;
    readiness.set("intake", true);
    tracing::info!(api = %addr, health = %health_addr, namespace = %settings.namespace, clients = settings.intake.clients.len(), "Intake API started");
    shutdown_signal().await;
    tracing::info!("Shutdown requested; finishing the requests in progress");
    readiness.drain();
    stop.cancel();
    let grace = Duration::from_secs(settings.runtime.grace_period_secs);
    if tokio::time::timeout(grace, task).await.is_err() {
        tracing::warn!(grace_s = grace.as_secs(), "Requests still in progress after the grace period; stopping anyway");
    }
    health_stop.cancel();
    tracing::info!("Intake API stopped");
    Ok(0)
}
