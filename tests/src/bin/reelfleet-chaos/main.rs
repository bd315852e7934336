//! `scripts/chaos`: the fault suite. Each case runs the embedded S3 and the
//! provider simulator in one `reelfleet dev --no-workers` process and every
//! stage as its own `reelfleet worker` process, then breaks something: kills
//! workers, stops the broker, stops S3, fails the provider, sends SIGTERM,
//! feeds hostile input. It prints a table and writes `bench/results/faults.json`.

use anyhow::{bail, Context};
use reelfleet_cli::{dlq, ops};
use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, Signer, SourceObject, SIGNATURE_HEADER},
    manifest::{JobManifest, JobStatus, ManifestStore},
    settings::Settings,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const STAGES: [&str; 4] = ["ingest", "preprocess", "inference", "postprocess"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("reelfleet");
    if !bin.exists() {
        bail!("{} not built: run `cargo build -p reelfleet-cli` first (scripts/chaos does)", bin.display());
    }
    Ok(bin)
}

fn signal(child: &Child, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status()?.success();
    if !ok {
        bail!("kill {sig} {} failed", child.id());
    }
    Ok(())
}

struct Worker {
    child: Child,
    port: u16,
    starts: u32,
}

/// One case's fleet: `reelfleet dev --no-workers` plus a process per stage.
struct Fleet {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    base_config: PathBuf,
    settings: Settings,
    dev: Option<Child>,
    s3_port: u16,
    sim_port: u16,
    workers: BTreeMap<&'static str, Worker>,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(bin: &Path, root: &Path, name: &str, tweak: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut settings = Settings {
            namespace: format!("chaos-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
            ..Default::default()
        };
        settings.media.preset = "ultrafast".into();
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
        };
        fleet.start_dev().await?;
        for stage in STAGES {
            fleet.start_worker(stage)?;
        }
        fleet.wait_ready(Duration::from_secs(60)).await?;
        Ok(fleet)
    }

    fn config(&self) -> PathBuf {
        self.data.join("reelfleet.toml")
    }

    async fn start_dev(&mut self) -> anyhow::Result<()> {
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
        self.dev = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.config().exists() {
            if Instant::now() > deadline {
                bail!("reelfleet dev did not start (see {}/logs/dev.log)", self.root.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.settings = Settings::load(Some(&self.config()))?;
        Ok(())
    }

    fn start_worker(&mut self, stage: &'static str) -> anyhow::Result<()> {
        let starts = self.workers.get(stage).map(|w| w.starts).unwrap_or(0) + 1;
        let port = free_port();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.root.join(format!("logs/{stage}.log")))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.config())
            .args(["--log-format", "json", "worker", stage])
            .env("REELFLEET_RUNTIME__HEALTH_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.workers.insert(stage, Worker { child, port, starts });
        Ok(())
    }

    async fn metric(&self, stage: &str, line_prefix: &str) -> Option<f64> {
        let port = self.workers.get(stage)?.port;
        let text = self.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?.text().await.ok()?;
        text.lines().find(|l| l.starts_with(line_prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    async fn in_flight(&self, stage: &str) -> f64 {
        self.metric(stage, &format!("reelfleet_in_flight{{stage=\"{stage}\"}}")).await.unwrap_or(0.0)
    }

    async fn ready(&self, stage: &str) -> bool {
        let Some(w) = self.workers.get(stage) else { return false };
        matches!(self.http.get(format!("http://127.0.0.1:{}/readyz", w.port)).send().await, Ok(r) if r.status().is_success())
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for stage in STAGES {
            while !self.ready(stage).await {
                if Instant::now() > deadline {
                    bail!("worker {stage} not ready (see {}/logs/{stage}.log)", self.root.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn sim(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/admin/config", self.sim_port);
        let mut cfg: serde_json::Value = self.http.get(&url).send().await?.json().await?;
        for (k, v) in patch.as_object().context("patch object")? {
            cfg[k] = v.clone();
        }
        self.http.post(&url).json(&cfg).send().await?.error_for_status()?;
        Ok(())
    }

    async fn provider_calls(&self) -> anyhow::Result<usize> {
        let url = format!("http://127.0.0.1:{}/v1/usage", self.sim_port);
        let usage: Vec<serde_json::Value> = self.http.get(&url).send().await?.json().await?;
        Ok(usage.len())
    }

    async fn submit(&self, clip: &Path, n: usize) -> anyhow::Result<Vec<String>> {
        let mut jobs = Vec::new();
        for _ in 0..n {
            let req = ops::SubmitRequest { files: vec![clip.to_path_buf()], ..Default::default() };
            jobs.extend(ops::submit(&self.settings, &req).await?.into_iter().map(|s| s.job_id));
        }
        Ok(jobs)
    }

    fn manifests(&self) -> ManifestStore {
        ManifestStore::new(Storage::new(&self.settings.s3), self.settings.s3.work_bucket.clone())
    }

    /// Waits until every job is completed or failed; returns the manifests.
    async fn settle(&self, jobs: &[String], timeout: Duration) -> anyhow::Result<Vec<JobManifest>> {
        let store = self.manifests();
        let deadline = Instant::now() + timeout;
        loop {
            let mut done = Vec::new();
            for j in jobs {
                if let Ok(Some(m)) = store.load(j).await {
                    if matches!(m.status, JobStatus::Completed | JobStatus::Failed) {
                        done.push(m);
                    }
                }
            }
            if done.len() == jobs.len() || Instant::now() > deadline {
                return Ok(done);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn alive(&mut self) -> Vec<&'static str> {
        let mut dead = Vec::new();
        for (stage, w) in self.workers.iter_mut() {
            if !matches!(w.child.try_wait(), Ok(None)) {
                dead.push(*stage);
            }
        }
        dead
    }

    async fn stop(mut self) {
        for w in self.workers.values_mut() {
            let _ = signal(&w.child, "-TERM");
        }
        for w in self.workers.values_mut() {
            let _ = w.child.wait();
        }
        if let Some(mut dev) = self.dev.take() {
            let _ = signal(&dev, "-TERM");
            let _ = dev.wait();
        }
        if let Ok(broker) = Broker::new(&self.settings.broker, "chaos") {
            let topology = Topology::from_settings(&self.settings);
            if let Ok(ch) = broker.channel().await {
                for q in topology.all_queue_names() {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                for x in topology.exchange_names() {
                    let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in self.workers.values_mut() {
            let _ = w.child.kill();
        }
        if let Some(dev) = self.dev.as_mut() {
            let _ = dev.kill();
        }
    }
}

#[derive(Debug)]
struct CaseResult {
    case: String,
    expected: String,
    outcome: String,
    figure: String,
    passed: bool,
}

fn result(case: &str, expected: &str, passed: bool, outcome: String, figure: String) -> CaseResult {
    CaseResult { case: case.into(), expected: expected.into(), outcome, figure, passed }
}

fn make_clip(dir: &Path, name: &str, video: &str, seconds: f64) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let ok = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", "sine"])
        .args(["-t", &seconds.to_string(), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast"])
        .arg(&path)
        .status()?
        .success();
    if !ok {
        bail!("ffmpeg could not make {name}");
    }
    Ok(path)
}

fn summarize(ms: &[JobManifest], jobs: usize) -> (usize, usize) {
    let completed = ms.iter().filter(|m| m.status == JobStatus::Completed).count();
    (completed, jobs - completed)
}

async fn case_kill9(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "kill9", |_| {}).await?;
    let jobs = fleet.submit(clip, 100).await?;
    let mut kills = 0;
    let mut per_stage: BTreeMap<&str, usize> = BTreeMap::new();
    let mut in_flight_at_kills = 0.0;
    let started = Instant::now();
    while kills < 12 && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Each stage in turn: three kills each.
        let stage = STAGES[kills % STAGES.len()];
        *per_stage.entry(stage).or_default() += 1;
        let busy = fleet.in_flight(stage).await;
        if stage == "inference" {
            in_flight_at_kills += busy;
        }
        if let Some(w) = fleet.workers.get_mut(stage) {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        kills += 1;
        fleet.start_worker(stage)?;
    }
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let ids = fleet.manifests().job_ids().await?;
    let calls = fleet.provider_calls().await?;
    let bound = jobs.len() + in_flight_at_kills as usize;
    fleet.stop().await;
    let every_stage = STAGES.iter().all(|s| per_stage.get(s).copied().unwrap_or(0) >= 2);
    let passed = completed == jobs.len() && ids.len() == jobs.len() && calls <= bound && kills >= 10 && every_stage;
    Ok(result(
        "kill -9 of worker processes while 100 jobs flow",
        "all complete, one manifest each, provider calls <= jobs + in flight at the kills",
        passed,
        format!("{completed}/{} completed, {} manifests, {kills} kills {per_stage:?}", jobs.len(), ids.len()),
        format!("{calls} provider calls (bound {bound})"),
    ))
}

async fn case_broker_restart(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "broker", |_| {}).await?;
    let jobs = fleet.submit(clip, 30).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pids: Vec<u32> = fleet.workers.values().map(|w| w.child.id()).collect();
    let stop = Command::new("rabbitmqctl").args(["-q", "stop_app"]).status()?.success();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Command::new("rabbitmqctl").args(["-q", "start_app"]).status()?.success();
    let down_at = Instant::now();
    fleet.wait_ready(Duration::from_secs(120)).await?;
    let recovered = down_at.elapsed();
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let dead = fleet.alive();
    let same: bool = fleet.workers.values().map(|w| w.child.id()).collect::<Vec<_>>() == pids;
    fleet.stop().await;
    Ok(result(
        "rabbitmqctl stop_app, then start_app, mid-run",
        "all complete, no worker restarted",
        stop && start && completed == jobs.len() && dead.is_empty() && same,
        format!("{completed}/{} completed, workers exited: {dead:?}", jobs.len()),
        format!("consumers ready again {:.1} s after start_app", recovered.as_secs_f64()),
    ))
}

async fn case_s3_outage(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "s3", |_| {}).await?;
    let jobs = fleet.submit(clip, 30).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(mut dev) = fleet.dev.take() {
        signal(&dev, "-KILL")?;
        let _ = dev.wait();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    fleet.start_dev().await?;
    let t0 = Instant::now();
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let dead = fleet.alive();
    fleet.stop().await;
    Ok(result(
        "the S3 endpoint (and simulator) stopped for 20 s mid-run",
        "all complete",
        completed == jobs.len() && dead.is_empty(),
        format!("{completed}/{} completed", jobs.len()),
        format!("drained {:.1} s after S3 returned", t0.elapsed().as_secs_f64()),
    ))
}

async fn case_provider_down(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let fleet = Fleet::start(bin, root, "provider", |s| {
        s.retry.max_attempts = 3;
        s.retry.base_delay_ms = 200;
        s.retry.max_delay_ms = 1000;
    })
    .await?;
    fleet.sim(serde_json::json!({"error_rate": 1.0})).await?;
    let jobs = fleet.submit(clip, 10).await?;
    let ms = fleet.settle(&jobs, Duration::from_secs(300)).await?;
    let failed_with_reason = ms
        .iter()
        .filter(|m| m.status == JobStatus::Failed)
        .filter(|m| m.error.as_ref().is_some_and(|e| e.stage == "inference" && e.message.contains("500")))
        .count();
    fleet.sim(serde_json::json!({"error_rate": 0.0})).await?;
    let out = Command::new(&fleet.bin)
        .arg("--config")
        .arg(fleet.config())
        .args(["dlq", "replay", "--stage", "inference"])
        .output()?;
    let replay_ok = out.status.success();
    let after = fleet.settle(&jobs, Duration::from_secs(300)).await?;
    // settle returns failed ones at once: wait for completions explicitly.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut completed = summarize(&after, jobs.len()).0;
    while completed < jobs.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        completed = summarize(&fleet.settle(&jobs, Duration::from_secs(1)).await?, jobs.len()).0;
    }
    let held = dlq::fetch(&fleet.settings, &Broker::new(&fleet.settings.broker, "chaos")?, &Default::default()).await?;
    let left = held.letters().count();
    held.release().await;
    fleet.stop().await;
    Ok(result(
        "the provider at 100% 5xx, then recovered and `reelfleet dlq replay`",
        "dead-lettered with the reason after retries; all complete after the replay",
        failed_with_reason == jobs.len() && replay_ok && completed == jobs.len() && left == 0,
        format!(
            "{failed_with_reason}/{} dead-lettered with the reason, {completed} completed after replay",
            jobs.len()
        ),
        format!("{} dead letters left; {}", left, String::from_utf8_lossy(&out.stdout).trim()),
    ))
}

async fn case_sigterm(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "sigterm", |s| s.runtime.grace_period_secs = 30).await?;
    let jobs = fleet.submit(clip, 24).await?;
    let mut exits = Vec::new();
    let mut slowest = 0.0f64;
    for stage in STAGES {
        let deadline = Instant::now() + Duration::from_secs(120);
        while fleet.in_flight(stage).await < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let busy = fleet.in_flight(stage).await;
        let w = fleet.workers.get_mut(stage).context("worker")?;
        let t0 = Instant::now();
        signal(&w.child, "-TERM")?;
        let status = loop {
            if let Some(s) = w.child.try_wait()? {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(40) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        slowest = slowest.max(t0.elapsed().as_secs_f64());
        exits.push((stage, busy, status.map(|s| s.success()).unwrap_or(false)));
        fleet.start_worker(stage)?;
    }
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    fleet.stop().await;
    let all_zero = exits.iter().all(|(_, _, ok)| *ok);
    Ok(result(
        "SIGTERM to each worker with jobs in flight",
        "exit 0 within the grace period, nothing lost",
        all_zero && completed == jobs.len(),
        format!(
            "{completed}/{} completed; exits: {}",
            jobs.len(),
            exits
                .iter()
                .map(|(s, b, ok)| format!("{s}({b} in flight)={}", if *ok { 0 } else { 1 }))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!("slowest exit {slowest:.1} s (grace 30 s)"),
    ))
}

/// Files and messages no one should send, and what each must lead to.
async fn case_hostile(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "hostile", |_| {}).await?;
    let dir = fleet.root.join("inputs");
    std::fs::create_dir_all(&dir)?;
    let sentinel_dir = root.to_path_buf();
    let before = list_tree(&sentinel_dir, &fleet.data);
    let w = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let whole = std::fs::read(clip)?;
    let mut uploads: Vec<(String, PathBuf)> = vec![
        ("zero bytes.mp4".into(), w("zero.mp4", b"")?),
        ("truncated.mp4".into(), w("trunc.mp4", &whole[..whole.len() / 3])?),
        ("notes.mp4".into(), w("notes.mp4", "plain text, not a video\n".repeat(40).as_bytes())?),
        (
            "playlist.mp4".into(),
            w("pl.mp4", format!("#EXTM3U\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n", clip.display()).as_bytes())?,
        ),
        ("subtitles.mp4".into(), w("subs.mp4", b"1\n00:00:00,000 --> 00:00:01,000\nhello\n")?),
        ("prompt broken.json".into(), w("broken.json", br#"{"prompt": "a fox", "duration_seconds": "#)?),
        ("prompt deep.json".into(), w("deep.json", format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes())?),
        ("prompt 8k.json".into(), w("8k.json", br#"{"prompt":"x","duration_seconds":2,"resolution":"8k"}"#)?),
        ("prompt negative.json".into(), w("neg.json", br#"{"prompt":"x","duration_seconds":-3,"resolution":"720p"}"#)?),
        (
            "prompt extra.json".into(),
            w("extra.json", br#"{"prompt":"x","duration_seconds":2,"resolution":"720p","sql":"drop"}"#)?,
        ),
        (
            "prompt huge.json".into(),
            w(
                "huge.json",
                format!(r#"{{"prompt":"{}","duration_seconds":2,"resolution":"720p"}}"#, "x".repeat(100_000))
                    .as_bytes(),
            )?,
        ),
        ("unicode ✓ 映画 été.mp4".into(), clip.to_path_buf()),
        ("a/../../escape.mp4".into(), clip.to_path_buf()),
        ("spaces  and + plus %2F.mp4".into(), clip.to_path_buf()),
        (format!("{}/long.mp4", vec!["k".repeat(200); 4].join("/")), clip.to_path_buf()),
    ];
    // Formats from ffmpeg that must not be refused.
    for (name, video, extra) in [
        ("single-frame.mp4", "testsrc2=size=320x240:rate=1", vec!["-frames:v", "1"]),
        ("vp9.webm", "testsrc2=size=320x240:rate=24", vec!["-t", "1", "-c:v", "libvpx-vp9", "-deadline", "realtime"]),
        ("odd 321x241.mkv", "testsrc2=size=321x241:rate=25", vec!["-t", "1", "-c:v", "ffv1"]),
        ("anim.gif", "testsrc2=size=160x120:rate=10", vec!["-t", "1"]),
        ("fps-5000.mp4", "testsrc2=size=160x120:rate=5000", vec!["-t", "0.01", "-c:v", "libx264"]),
    ] {
        let p = dir.join(name);
        let ok = Command::new("ffmpeg")
            .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", video])
            .args(&extra)
            .arg(&p)
            .status()?
            .success();
        if ok {
            uploads.push((name.to_string(), p));
        }
    }
    // Audio only.
    let audio = dir.join("audio-only.mp4");
    if Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "sine", "-t", "1"])
        .arg(&audio)
        .status()?
        .success()
    {
        uploads.push(("audio only.mp4".into(), audio));
    }

    let storage = Storage::new(&fleet.settings.s3);
    let bucket = fleet.settings.s3.upload_bucket.clone();
    let mut jobs = Vec::new();
    let mut refused_at_upload = Vec::new();
    for (key, path) in &uploads {
        let ctype = if key.ends_with(".json") { "application/json" } else { "video/mp4" };
        match storage.upload(&bucket, &format!("hostile/{key}"), path, ctype).await {
            Ok(info) => jobs.push((
                key.clone(),
                SourceObject {
                    bucket: bucket.clone(),
                    key: format!("hostile/{key}"),
                    size: info.size,
                    etag: info.etag,
                    version_id: None,
                }
                .job_id(),
            )),
            Err(e) => refused_at_upload.push(format!("{key}: {e}")),
        }
    }
    // Messages: a forged signature, garbage, an event for a missing object, an oversized event, a replayed old message.
    let broker = Broker::new(&fleet.settings.broker, "chaos")?;
    let topology = Topology::from_settings(&fleet.settings);
    let publisher = broker.publisher().await?;
    let forged = Envelope::new(
        JobKind::Analyze,
        SourceObject {
            bucket: bucket.clone(),
            key: "forged.mp4".into(),
            size: 1,
            etag: Some("x".into()),
            version_id: None,
        },
    );
    let body = forged.to_bytes();
    let sig = Signer::new(b"someone-elses-signing-key").sign(&body);
    publisher
        .publish(
            &Outgoing::to_queue(topology.queue(WorkQueue::Preprocess), body)
                .header(SIGNATURE_HEADER, HeaderValue::Text(sig)),
        )
        .await?;
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), b"\x00\xffgarbage{".to_vec())).await?;
    let missing = reelfleet_core::s3event::minio_event(
        "ObjectCreated:Put",
        &bucket,
        "hostile/never uploaded.mp4",
        10,
        "abc",
        "127.0.0.1",
    );
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), missing)).await?;
    let mut big = b"{\"Records\":[".to_vec();
    big.extend(std::iter::repeat_n(b' ', 2 * 1024 * 1024));
    big.extend(b"]}");
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), big)).await?;
    let messages = 4;

    let ids: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let ms = fleet.settle(&ids, Duration::from_secs(600)).await?;
    // Replay an old, validly signed message for a finished job: it must be a no-op.
    let replayed_ok = if let Some(done) = ms.iter().find(|m| m.status == JobStatus::Completed) {
        let old = Envelope {
            job_id: done.job_id.clone(),
            source: done.source.clone(),
            ..Envelope::new(JobKind::Analyze, done.source.clone())
        };
        let body = old.to_bytes();
        let sig = Signer::new(fleet.settings.signing.secret.expose().as_bytes()).sign(&body);
        publisher
            .publish(
                &Outgoing::to_queue(topology.queue(WorkQueue::Preprocess), body)
                    .header(SIGNATURE_HEADER, HeaderValue::Text(sig)),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = fleet.manifests().load(&done.job_id).await?.context("manifest")?;
        again.status == JobStatus::Completed && again.stages == done.stages
    } else {
        false
    };
    let settled = ms.len();
    let completed = ms.iter().filter(|m| m.status == JobStatus::Completed).count();
    let failed_clear = ms
        .iter()
        .filter(|m| m.status == JobStatus::Failed)
        .filter(|m| m.error.as_ref().is_some_and(|e| !e.message.trim().is_empty()))
        .count();
    let held = dlq::fetch(&fleet.settings, &broker, &Default::default()).await?;
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;
    // Dead letters of the hand-made messages: no job, or a job none of the uploads is.
    let message_letters = letters.iter().filter(|d| d.job.as_ref().is_none_or(|j| !ids.contains(j))).count();
    let dead = fleet.alive();
    let after = list_tree(&sentinel_dir, &fleet.data);
    let escaped: Vec<_> = after.difference(&before).filter(|p| !p.starts_with(&fleet.root)).cloned().collect();
    let total = uploads.len() + messages + 1;
    for (key, job) in &jobs {
        if let Some(m) = ms.iter().find(|m| &m.job_id == job) {
            let why = m.error.as_ref().map(|e| e.message.chars().take(80).collect::<String>()).unwrap_or_default();
            eprintln!("  hostile {key:?}: {} {why}", m.status);
        }
    }
    for r in &refused_at_upload {
        eprintln!(
            "  hostile refused at upload: ...{}",
            r.chars().rev().take(200).collect::<String>().chars().rev().collect::<String>()
        );
    }
    fleet.stop().await;
    let passed = settled == jobs.len()
        && completed + failed_clear == jobs.len()
        && message_letters >= messages
        && replayed_ok
        && dead.is_empty()
        && escaped.is_empty();
    Ok(result(
        "broken and hostile inputs",
        "each completes or dead-letters with a clear reason; no crash; nothing written outside the data folder",
        passed,
        format!(
            "{total} inputs: {completed} completed, {failed_clear} failed with a reason, {} refused at upload, {message_letters} hostile messages dead-lettered, replayed old message ignored: {replayed_ok}, workers crashed: {dead:?}, files outside: {}",
            refused_at_upload.len(),
            escaped.len()
        ),
        format!("{total} inputs"),
    ))
}

fn list_tree(root: &Path, skip: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.starts_with(skip) {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.insert(p);
            }
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let bin = binary()?;
    let work = tempfile::Builder::new().prefix("reelfleet-chaos-").tempdir()?;
    let root = work.path().to_path_buf();
    let clip = make_clip(&root, "clip.mp4", "testsrc2=size=320x240:rate=12", 1.0)?;
    type Case = for<'a> fn(&'a Path, &'a Path, &'a Path) -> futures::future::BoxFuture<'a, anyhow::Result<CaseResult>>;
    let cases: Vec<(&str, Case)> = vec![
        ("kill9", |b, r, c| Box::pin(case_kill9(b, r, c))),
        ("sigterm", |b, r, c| Box::pin(case_sigterm(b, r, c))),
        ("provider", |b, r, c| Box::pin(case_provider_down(b, r, c))),
        ("hostile", |b, r, c| Box::pin(case_hostile(b, r, c))),
        ("s3", |b, r, c| Box::pin(case_s3_outage(b, r, c))),
        ("broker", |b, r, c| Box::pin(case_broker_restart(b, r, c))),
    ];
    let mut results = Vec::new();
    for (name, run) in cases {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== fault case {name}");
        let t0 = Instant::now();
        let r = match run(&bin, &root, &clip).await {
            Ok(r) => r,
            Err(e) => result(name, "runs", false, format!("harness error: {e:#}"), String::new()),
        };
        eprintln!(
            "   {} in {:.0} s: {}",
            if r.passed { "passed" } else { "FAILED" },
            t0.elapsed().as_secs_f64(),
            r.outcome
        );
        results.push(r);
    }
    println!("\n{:<58} {:<6} {:<}", "CASE", "PASS", "OUTCOME / FIGURE");
    for r in &results {
        println!("{:<58} {:<6} {}", r.case, if r.passed { "yes" } else { "NO" }, r.outcome);
        println!("{:<58} {:<6} expected: {}; {}", "", "", r.expected, r.figure);
    }
    std::fs::create_dir_all("bench/results")?;
    let json: Vec<_> = results.iter().map(|r| serde_json::json!({"case": r.case, "passed": r.passed, "figure": r.figure, "expected": r.expected, "outcome": r.outcome})).collect();
    std::fs::write("bench/results/faults.json", serde_json::to_string_pretty(&json)?)?;
    let passed = results.iter().filter(|r| r.passed).count();
    println!("faults: {} passed, {} failed", passed, results.len() - passed);
    if passed != results.len() {
        std::process::exit(1);
    }
    Ok(())
}
