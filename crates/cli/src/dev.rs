//! The embedded default: one process with the S3 endpoint, the provider
//! simulator and the workers (the four stages, the URL pull and the
//! webhooks, or those named), on one RabbitMQ.

use crate::fleet::{self, FleetHandle, StageName};
use anyhow::Context;
use reelfleet_core::{
    broker::Broker,
    settings::{Secret, Settings, Uses},
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
    /// The console will be served: without an account configured, make an
    /// operator with a random password ([`DevStack::console_password`]).
    pub console: bool,
}

/// The credentials `reelfleet dev` makes for itself (the embedded S3's keys,
/// the simulator's API key, the signing key), random on first start and kept
/// in the data folder (owner-only) so a restart reads the messages it left
/// queued. Settings that are given win.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DevSecrets {
    signing_key: String,
    s3_access_key: String,
    s3_secret_key: String,
    provider_key: String,
    /// Signs webhooks to job callback URLs (absent from files made before it existed).
    #[serde(default)]
    webhooks_secret: Option<String>,
    /// Signs the console's session cookies (absent from files made before it existed).
    #[serde(default)]
    console_session_key: Option<String>,
}

impl DevSecrets {
    const FILE: &'static str = "dev-secrets.toml";

    fn load_or_make(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join(Self::FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut known: Self = toml::from_str(&text).with_context(|| format!("cannot read {}", path.display()))?;
            if known.webhooks_secret.is_none() || known.console_session_key.is_none() {
                known
                    .webhooks_secret
                    .get_or_insert_with(|| reelfleet_core::webhooks::WebhookSecret::generate().encode());
                known.console_session_key.get_or_insert_with(reelfleet_core::signing::generate_key);
                write_private(&path, &toml::to_string(&known)?)?;
            }
            return Ok(known);
        }
        let token = || reelfleet_core::signing::generate_key();
        let made = Self {
            signing_key: token(),
            s3_access_key: format!("RFDEV{}", &token()[..16].to_ascii_uppercase()),
            s3_secret_key: token(),
            provider_key: format!("sk-dev-{}", token()),
            webhooks_secret: Some(reelfleet_core::webhooks::WebhookSecret::generate().encode()),
            console_session_key: Some(token()),
        };
        write_private(&path, &toml::to_string(&made)?)?;
        Ok(made)
    }

    fn fill(self, s: &mut Settings) {
        let fill = |slot: &mut Secret, value: String| {
            if slot.expose().is_empty() {
                *slot = Secret::new(value);
            }
        };
        fill(&mut s.signing.secret, self.signing_key);
        fill(&mut s.s3.access_key, self.s3_access_key);
        fill(&mut s.s3.secret_key, self.s3_secret_key);
        fill(&mut s.inference.api_key, self.provider_key);
        if let Some(secret) = self.webhooks_secret {
            fill(&mut s.webhooks.secret, secret);
        }
        if let Some(key) = self.console_session_key {
            fill(&mut s.console.session_key, key);
        }
    }
}

/// Writes a file only its owner can read (it holds credentials).
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
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
    /// The intake API's address; `None` without `[[intake.clients]]`.
    pub intake: Option<std::net::SocketAddr>,
    /// The password of the operator account made for the console (no
    /// account was configured); shown once, never stored but as its hash.
    pub console_password: Option<String>,
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
        DevSecrets::load_or_make(&data_dir)?.fill(&mut base);
        base.check_credentials(Uses { provider: true, ..Default::default() })?;
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
        if base.index.url.expose().is_empty() {
            // The embedded default of the job index: `reelfleet jobs` reads it with this config.
            base.index.url = Secret::new(format!("sqlite://{}", data_dir.join("index.db").display()));
        }
        let mut console_password = None;
        if opts.console {
            // The console is served over plain HTTP on this machine.
            base.console.secure_cookies = false;
            let configured = !base.console.accounts.is_empty()
                || base.console.accounts_file.as_deref().is_some_and(|f| !f.is_empty());
            if !configured {
                let password = crate::console::auth::generate_password();
                base.console.accounts.push(reelfleet_core::settings::ConsoleAccount {
                    name: "operator".into(),
                    password_hash: crate::console::auth::hash_password(&password)?,
                    role: reelfleet_core::settings::ConsoleRole::Operator,
                });
                console_password = Some(password);
            }
        }
        let config_path = data_dir.join("reelfleet.toml");
        write_private(&config_path, &base.to_toml())?;

        let settings = Arc::new(base);
        let shutdown = CancellationToken::new();

        let metrics = reelfleet_core::metrics::Metrics::new();
        let intake = start_intake(&settings, &storage, &broker, &metrics, &shutdown).await?;
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
        Ok(Self { settings, s3, simulator, fleet, shutdown, config_path, intake, console_password })
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

/// The intake API on `intake.bind_addr` when clients are configured (its
/// metrics served with the workers'); it stops with `shutdown`.
async fn start_intake(
    settings: &Arc<Settings>,
    storage: &Storage,
    broker: &Broker,
    metrics: &reelfleet_core::metrics::Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if settings.intake.clients.is_empty() && settings.intake.clients_file.is_none() {
        return Ok(None);
    }
    let intake = reelfleet_intake::Intake::new(settings.clone(), storage.clone(), broker.clone(), metrics)?;
    let (addr, _task) = intake
        .serve(&settings.intake.bind_addr, shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on intake.bind_addr {}", settings.intake.bind_addr))?;
    Ok(Some(addr))
}
