//! The embedded default: one process with the S3 endpoint, the provider
//! simulator and all four workers, on one RabbitMQ.

use crate::fleet::{self, FleetHandle, StageName};
use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    settings::{Secret, Settings},
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use reelfleet_devstack::{serve_s3, serve_simulator, S3Server, SimulatorConfig, SimulatorHandle};
use std::{path::PathBuf, sync::Arc};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Options of `reelfleet dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Folder for objects and the written configuration.
    pub data_dir: PathBuf,
    /// Replaces the settings' namespace; `None` keeps it.
    pub namespace: Option<String>,
    /// S3 port (0 picks one).
    pub s3_port: u16,
    /// Simulator port (0 picks one).
    pub sim_port: u16,
    /// Stages to run in this process (none: only the S3 endpoint and the
    /// simulator, for workers run as separate processes).
    pub stages: Vec<StageName>,
}

/// The running dev stack.
#[derive(Debug)]
pub struct DevStack {
    /// The settings the workers run with (endpoints filled in).
    pub settings: Arc<Settings>,
    /// The S3 endpoint.
    pub s3: S3Server,
    /// The provider simulator the inference stage calls.
    pub simulator: SimulatorHandle,
    /// The workers of [`DevOptions::stages`] and their health server.
    pub fleet: FleetHandle,
    /// Cancelling it drains the workers and stops the S3 endpoint and the simulator.
    pub shutdown: CancellationToken,
    /// Where the configuration was written.
    pub config_path: PathBuf,
}

impl DevStack {
    /// Starts everything; `base` supplies every setting the options do not.
    pub async fn start(mut base: Settings, opts: DevOptions) -> anyhow::Result<Self> {
        if let Some(ns) = &opts.namespace {
            base.namespace = ns.clone();
        }
        base.validate()?;
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
        let data_dir = opts.data_dir.canonicalize()?;
        let broker = Broker::new(&base.broker, "reelfleet-dev")?;
        let topology = Topology::from_settings(&base);
        broker
            .declare(&topology)
            .await
            .context("cannot declare the topology on RabbitMQ (is it running? scripts/demo starts it)")?;

        let s3 = serve_s3(
            &format!("127.0.0.1:{}", opts.s3_port),
            &data_dir.join("s3"),
            base.s3.access_key.expose(),
            base.s3.secret_key.expose(),
            &base.s3.upload_bucket,
            broker.clone(),
            &topology.queue(WorkQueue::Ingest),
        )
        .await
        .context("cannot start the embedded S3 endpoint")?;
        base.s3.endpoint = s3.endpoint();

        let simulator = serve_simulator(
            &format!("127.0.0.1:{}", opts.sim_port),
            SimulatorConfig {
                api_key: base.inference.api_key.expose().to_string(),
                ffmpeg: base.media.ffmpeg.clone(),
                ..Default::default()
            },
        )
        .await
        .context("cannot start the provider simulator")?;
        base.inference.base_url = simulator.base_url();
        base.inference.usage_url = Some(format!("{}/usage", simulator.base_url()));

        let storage = Storage::new(&base.s3);
        for bucket in [&base.s3.upload_bucket, &base.s3.work_bucket] {
            storage.ensure_bucket(bucket).await.with_context(|| format!("cannot create bucket {bucket}"))?;
        }
        if base.state.url.expose().is_empty() {
            // Every worker process started against this data folder shares budgets and rate limits here.
            base.state.url = Secret::new(format!("sqlite://{}", data_dir.join("state.db").display()));
        }
        let config_path = data_dir.join("reelfleet.toml");
        std::fs::write(&config_path, base.to_toml())
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        let settings = Arc::new(base);
        let shutdown = CancellationToken::new();

        let metrics = reelfleet_core::metrics::Metrics::new();
        let stages = fleet::build_stages(&settings, &storage, &metrics, &opts.stages, &[]).await?;
        let fleet = fleet::start(settings.clone(), stages, metrics, shutdown.clone()).await?;
        info!(
            s3 = %settings.s3.endpoint,
            simulator = %settings.inference.base_url,
            health = %fleet.health_addr,
            namespace = %settings.namespace,
            config = %config_path.display(),
            "reelfleet dev is running"
        );
        Ok(Self { settings, s3, simulator, fleet, shutdown, config_path })
    }

    /// Drains the workers, then stops the servers.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.fleet.wait().await;
        self.s3.shutdown.cancel();
        self.simulator.shutdown.cancel();
        let _ = self.s3.task.await;
    }
}
