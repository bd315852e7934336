//! The harness of one case: `reelfleet dev --no-workers` (S3 and the provider
//! simulator) plus one or more `reelfleet worker` processes per stage, each
//! with its own health port and log file (`logs/<stage>-<replica>.log`).

use crate::audit::{Audit, EventTap};
use anyhow::{bail, Context};
use reelfleet_cli::ops;
use reelfleet_core::{
    broker::Broker,
    envelope::Quality,
    manifest::{JobManifest, JobStatus, ManifestStore},
    settings::Settings,
    storage::Storage,
    topology::Topology,
};
use reelfleet_tests::fleet::{delete_namespace, free_port};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) const STAGES: [&str; 4] = ["ingest", "preprocess", "inference", "postprocess"];

pub(crate) fn signal(child: &Child, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status()?.success();
    if !ok {
        bail!("kill {sig} {} failed", child.id());
    }
    Ok(())
}

/// One worker process.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) starts: u32,
}

/// How a case's fleet is laid out.
pub(crate) struct Layout {
    /// Worker processes per stage, in [`STAGES`] order (0: started later by the case).
    pub(crate) replicas: [usize; 4],
    /// Broker URLs the workers connect to, in turn over stages and replicas
    /// (empty: the settings' one URL for every worker).
    pub(crate) worker_broker_urls: Vec<String>,
}

impl Default for Layout {
    fn default() -> Self {
        Self { replicas: [1; 4], worker_broker_urls: Vec::new() }
    }
}

/// One case's fleet: `reelfleet dev --no-workers` plus processes per stage.
pub(crate) struct Fleet {
    pub(crate) bin: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) data: PathBuf,
    base_config: PathBuf,
    pub(crate) settings: Settings,
    pub(crate) dev: Option<Child>,
    s3_port: u16,
    pub(crate) sim_port: u16,
    pub(crate) workers: BTreeMap<&'static str, Vec<Worker>>,
    pub(crate) http: reqwest::Client,
    worker_broker_urls: Vec<String>,
    /// Our own queue on the events exchange, bound before the case submits anything.
    tap: Option<EventTap>,
}

impl Fleet {
    /// One worker per stage.
    pub(crate) async fn start(
        bin: &Path,
        root: &Path,
        name: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, root, name, Layout::default(), tweak).await
    }

    pub(crate) async fn start_with(
        bin: &Path,
        root: &Path,
        name: &str,
        layout: Layout,
        tweak: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut settings = Settings {
            namespace: format!("chaos-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
            ..Default::default()
        };
        settings.media.preset = "ultrafast".into();
        settings.media.tier_presets = reelfleet_core::settings::TierPresets::all("ultrafast");
        settings.media.threads = 1;
        settings.runtime.grace_period_secs = 20;
        settings.runtime.scratch_dir = Some(dir.join("data/scratch").display().to_string());
        settings.retry.max_attempts = 8;
        settings.retry.base_delay_ms = 500;
        settings.retry.max_delay_ms = 8000;
        settings.broker.reconnect_max_delay_secs = 3;
        tweak(&mut settings);
        let base_config = dir.join("base.toml");
        std::fs::write(&base_config, settings.to_toml())?;
        let mut fleet = Fleet {
            bin: bin.to_path_buf(),
            root: dir.clone(),
            data: dir.join("data"),
            base_config,
            settings,
            dev: None,
            s3_port: free_port(),
            sim_port: free_port(),
            workers: BTreeMap::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            worker_broker_urls: layout.worker_broker_urls,
            tap: None,
        };
        fleet.start_dev_first().await?;
        for (stage, n) in STAGES.into_iter().zip(layout.replicas) {
            fleet.workers.insert(stage, Vec::new());
            for _ in 0..n {
                fleet.add_worker(stage)?;
            }
        }
        fleet.wait_ready(Duration::from_secs(60)).await?;
        // The workers have declared the topology, so the events exchange exists.
        fleet.tap = Some(EventTap::bind(&fleet.settings, &fleet.worker_broker_urls).await?);
        Ok(fleet)
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.data.join("reelfleet.toml")
    }

    /// Starts `reelfleet dev` on the fleet's ports (again, after an outage:
    /// the workers know these ports, so they never change here).
    pub(crate) async fn start_dev(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_start_dev().await? {
            bail!("reelfleet dev exited ({status}; see {}/logs/dev.log)", self.root.display());
        }
        Ok(())
    }

    /// The first start, before any worker knows the ports: when dev exits at
    /// once (most likely another process took a port between `free_port()`
    /// and dev's bind), it is started again on new ports, at most twice.
    async fn start_dev_first(&mut self) -> anyhow::Result<()> {
        for _ in 0..2 {
            match self.try_start_dev().await? {
                None => return Ok(()),
                Some(status) => eprintln!("  reelfleet dev exited at start ({status}); starting it on new ports"),
            }
            self.s3_port = free_port();
            self.sim_port = free_port();
        }
        self.start_dev().await
    }

    /// Starts dev and waits for its config; `Some(status)` if it exited first.
    async fn try_start_dev(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let _ = std::fs::remove_file(self.config());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.join("logs/dev.log"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.base_config)
            .args(["--log-format", "json", "dev", "--no-workers", "--data-dir"])
            .arg(&self.data)
            .args(["--s3-port", &self.s3_port.to_string(), "--sim-port", &self.sim_port.to_string()])
            .env("REELFLEET_RUNTIME__HEALTH_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let dev = self.dev.insert(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.data.join("reelfleet.toml").exists() {
            if let Some(status) = dev.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                bail!("reelfleet dev did not start (see {}/logs/dev.log)", self.root.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.settings = Settings::load(Some(&self.config()))?;
        Ok(None)
    }

    fn spawn(&self, stage: &'static str, replica: usize) -> anyhow::Result<(Child, u16)> {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("logs/{stage}-{replica}.log")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.config())
            .args(["--log-format", "json", "worker", stage])
            .env("REELFLEET_RUNTIME__HEALTH_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log);
        if !self.worker_broker_urls.is_empty() {
            let s = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
            cmd.env("REELFLEET_BROKER__URL", &self.worker_broker_urls[(s + replica) % self.worker_broker_urls.len()]);
        }
        Ok((cmd.spawn()?, port))
    }

    /// Starts one more replica of `stage`.
    pub(crate) fn add_worker(&mut self, stage: &'static str) -> anyhow::Result<()> {
        let replica = self.workers.get(stage).map_or(0, Vec::len);
        let (child, port) = self.spawn(stage, replica)?;
        self.workers.entry(stage).or_default().push(Worker { child, port, starts: 1 });
        Ok(())
    }

    /// Starts replica `i` of `stage` again (after it was killed or stopped).
    pub(crate) fn restart_worker(&mut self, stage: &'static str, i: usize) -> anyhow::Result<()> {
        let (child, port) = self.spawn(stage, i)?;
        let w = self.workers.get_mut(stage).and_then(|ws| ws.get_mut(i)).context("no such replica")?;
        *w = Worker { child, port, starts: w.starts + 1 };
        Ok(())
    }

    /// Kills replica `i` of `stage` with SIGKILL and reaps it.
    pub(crate) fn kill9(&mut self, stage: &str, i: usize) {
        if let Some(w) = self.workers.get_mut(stage).and_then(|ws| ws.get_mut(i)) {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }

    pub(crate) fn replicas(&self, stage: &str) -> usize {
        self.workers.get(stage).map_or(0, Vec::len)
    }

    pub(crate) async fn metric(&self, stage: &str, i: usize, line_prefix: &str) -> Option<f64> {
        let port = self.workers.get(stage)?.get(i)?.port;
        let text = self.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?.text().await.ok()?;
        text.lines().find(|l| l.starts_with(line_prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Messages replica `i` of `stage` is working on (its `reelfleet_in_flight` gauge).
    pub(crate) async fn in_flight(&self, stage: &str, i: usize) -> f64 {
        self.metric(stage, i, &format!("reelfleet_in_flight{{stage=\"{stage}\"}}")).await.unwrap_or(0.0)
    }

    async fn ready(&self, stage: &str, i: usize) -> bool {
        let Some(w) = self.workers.get(stage).and_then(|ws| ws.get(i)) else { return false };
        matches!(self.http.get(format!("http://127.0.0.1:{}/readyz", w.port)).send().await, Ok(r) if r.status().is_success())
    }

    /// Waits until every worker answers `/readyz`. A worker that exited
    /// because another process took its health port between `free_port()`
    /// and its bind (a race of this harness, not of the fleet) is started
    /// again on a new port, at most three times; any other exit fails.
    pub(crate) async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for stage in STAGES {
            for i in 0..self.replicas(stage) {
                let mut respawns = 0;
                while !self.ready(stage, i).await {
                    if let Some(status) = self.exited(stage, i) {
                        let log = self.root.join(format!("logs/{stage}-{i}.log"));
                        let bytes = std::fs::read(&log).unwrap_or_default();
                        let tail = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]);
                        if respawns < 3 && tail.contains("cannot serve health endpoints") && tail.contains("in use") {
                            respawns += 1;
                            eprintln!("  worker {stage}-{i} lost its health port to another process; starting it on a new one");
                            self.restart_worker(stage, i)?;
                            continue;
                        }
                        bail!("worker {stage}-{i} exited before it was ready ({status}; see {})", log.display());
                    }
                    if Instant::now() > deadline {
                        bail!("worker {stage}-{i} not ready (see {}/logs/{stage}-{i}.log)", self.root.display());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// The exit status of replica `i` of `stage`, once it has exited.
    fn exited(&mut self, stage: &str, i: usize) -> Option<std::process::ExitStatus> {
        self.workers.get_mut(stage)?.get_mut(i)?.child.try_wait().ok().flatten()
    }

    pub(crate) async fn sim(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/admin/config", self.sim_port);
        let mut cfg: serde_json::Value = self.http.get(&url).send().await?.json().await?;
        for (k, v) in patch.as_object().context("patch object")? {
            cfg[k] = v.clone();
        }
        self.http.post(&url).json(&cfg).send().await?.error_for_status()?;
        Ok(())
    }

    /// The simulator's own counters (`GET /admin/stats`).
    pub(crate) async fn sim_stats(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/admin/stats", self.sim_port);
        Ok(self.http.get(&url).send().await?.json().await?)
    }

    /// The provider's bill: every request it billed (`GET /v1/usage`).
    pub(crate) async fn usage(&self) -> anyhow::Result<Vec<reelfleet_devstack::UsageRecord>> {
        let url = format!("http://127.0.0.1:{}/v1/usage", self.sim_port);
        Ok(self.http.get(&url).send().await?.json().await?)
    }

    pub(crate) async fn submit(&self, clip: &Path, n: usize) -> anyhow::Result<Vec<String>> {
        self.submit_as(clip, n, None).await
    }

    /// Uploads `clip` `n` times (a job each), with a requested quality.
    pub(crate) async fn submit_as(
        &self,
        clip: &Path,
        n: usize,
        quality: Option<Quality>,
    ) -> anyhow::Result<Vec<String>> {
        let mut jobs = Vec::new();
        for _ in 0..n {
            let req = ops::SubmitRequest { files: vec![clip.to_path_buf()], quality, ..Default::default() };
            jobs.extend(ops::submit(&self.settings, &req).await?.into_iter().map(|s| s.job_id));
        }
        Ok(jobs)
    }

    pub(crate) fn manifests(&self) -> ManifestStore {
        ManifestStore::new(Storage::new(&self.settings.s3), self.settings.s3.work_bucket.clone())
    }

    /// The manifests of `jobs` that exist.
    pub(crate) async fn load_all(&self, jobs: &[String]) -> Vec<JobManifest> {
        let store = self.manifests();
        let mut out = Vec::new();
        for j in jobs {
            if let Ok(Some(m)) = store.load(j).await {
                out.push(m);
            }
        }
        out
    }

    /// Waits until every job is completed or failed; returns the manifests.
    pub(crate) async fn settle(&self, jobs: &[String], timeout: Duration) -> anyhow::Result<Vec<JobManifest>> {
        let deadline = Instant::now() + timeout;
        loop {
            let done: Vec<JobManifest> = self
                .load_all(jobs)
                .await
                .into_iter()
                .filter(|m| matches!(m.status, JobStatus::Completed | JobStatus::Failed))
                .collect();
            if done.len() == jobs.len() || Instant::now() > deadline {
                return Ok(done);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Workers that exited, as `stage-replica`.
    pub(crate) fn dead(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for (stage, ws) in self.workers.iter_mut() {
            for (i, w) in ws.iter_mut().enumerate() {
                if !matches!(w.child.try_wait(), Ok(None)) {
                    dead.push(format!("{stage}-{i}"));
                }
            }
        }
        dead
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers.values().flatten().map(|w| w.child.id()).collect()
    }

    /// The independent checks (see [`Audit`]) over `jobs`.
    pub(crate) async fn audit(&mut self, jobs: &[String]) -> anyhow::Result<Audit> {
        let mut tap = self.tap.take().context("the event tap is bound at start")?;
        let audit = Audit::take(self, &mut tap, jobs).await;
        self.tap = Some(tap);
        audit
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tap) = self.tap.take() {
            tap.delete().await;
        }
        for w in self.workers.values_mut().flatten() {
            let _ = signal(&w.child, "-TERM");
        }
        for w in self.workers.values_mut().flatten() {
            let _ = w.child.wait();
        }
        if let Some(mut dev) = self.dev.take() {
            let _ = signal(&dev, "-TERM");
            let _ = dev.wait();
        }
        if let Ok(broker) = Broker::new(&self.settings.broker, "chaos") {
            delete_namespace(&broker, &Topology::from_settings(&self.settings)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in self.workers.values_mut().flatten() {
            let _ = w.child.kill();
        }
        if let Some(dev) = self.dev.as_mut() {
            let _ = dev.kill();
        }
    }
}
