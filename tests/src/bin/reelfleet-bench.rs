//! `scripts/bench`: figures measured in one run against a baseline on the same
//! machine, printed and written to `bench/results/*.json`.
//!
//! - `transcode [--clips N] [--seconds S]`: N real 720p clips, in one run:
//!   the per-output commands of before (`reelfleet media plan --legacy`) and
//!   the one-decode-per-stage commands of now (`reelfleet media plan`), each
//!   replayed by `scripts/lib/baseline-transcode.sh` under `xargs -P
//!   <cores>`, then the whole fleet; CPU seconds of the ffmpeg/ffprobe
//!   children (user + system, as the kernel accounts waited-for children)
//!   per second of video delivered, and wall times.
//! - `overhead [--jobs N]`: the stage runtime alone (four chained no-op stages
//!   that each read their input object, write 1 KB and forward, over real
//!   RabbitMQ and the embedded S3), and the raw ceilings of this machine:
//!   persistent publish+consume with confirms on one quorum queue, and 1 KB
//!   S3 PUT+GET.
//! - `scaling [--clips N] [--seconds S]`: what KEDA would see during a real
//!   run, polled through the management API: replicas asked for with depth =
//!   ready + unacked (the chart) vs ready only.
//! - `sandbox [--runs N] [--seconds S]`: the ffmpeg/ffprobe commands of one
//!   720p analyze job, N times bare and N times under prlimit + bubblewrap,
//!   interleaved (wall time, and the CPU time ffmpeg reports for its own
//!   work), and the fixed cost of one wrapped process.
//! - `ingest-pull [--mib N]`: a URL pull of an N MiB source by the real
//!   pull worker into the embedded S3 (MiB/s, the worker's peak RSS), against
//!   a plain GET of the same body (`reelfleet-bench/ingest_pull.rs`).
//! - `memory [--messages N] [--source-mib N]`: the peak RSS of every worker
//!   kind with N messages waiting in its queue, and of ingest, preprocess
//!   and postprocess on an N MiB source (`reelfleet-bench/memory.rs`).

use anyhow::{bail, Context};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions};
use reelfleet_cli::{dev::DevStack, ops, scale};
use reelfleet_core::{
    broker::{Broker, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, Tier},
    error::StageError,
    health::Readiness,
    manifest::{JobManifest, JobStatus, ManifestStore},
    metrics::Metrics,
    runtime::{Dispatch, Input, Message, Runtime, Stage},
    settings::{Secret, Settings},
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use reelfleet_tests::{
    clip::Clip,
    fleet::{delete_namespace, reelfleet_binary, start_dev},
};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

#[path = "reelfleet-bench/console.rs"]
mod console;
#[path = "reelfleet-bench/index.rs"]
mod index;
#[path = "reelfleet-bench/ingest_pull.rs"]
mod ingest_pull;
#[path = "reelfleet-bench/memory.rs"]
mod memory;

fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).context("missing value")?.parse().with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    serde_json::json!({"cpu": cpu, "cores": cores, "memory_gib": mem_kb / 1024 / 1024})
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): CPU seconds are
/// robust to other load, wall times are not.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn write_result(name: &str, value: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Settings with a namespace of their own and fresh credentials.
fn bench_settings(tag: &str) -> Settings {
    let mut s = Settings {
        namespace: format!("bench-{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        ..Default::default()
    };
    let key = reelfleet_core::signing::generate_key;
    s.signing.secret = Secret::new(key());
    s.s3.access_key = Secret::new(format!("bench{}", &key()[..12]));
    s.s3.secret_key = Secret::new(key());
    s.inference.api_key = Secret::new(format!("sk-bench-{}", key()));
    s
}

/// The embedded S3 endpoint for a benchmark, its address put into `settings`.
async fn start_s3(
    settings: &mut Settings,
    broker: &Broker,
    topology: &Topology,
    dir: &Path,
) -> anyhow::Result<reelfleet_devstack::S3Server> {
    let s3 = reelfleet_devstack::serve_s3(
        "127.0.0.1:0",
        &dir.join("s3"),
        settings.s3.access_key.expose(),
        settings.s3.secret_key.expose(),
        &settings.s3.upload_bucket,
        broker.clone(),
        &topology.queue(WorkQueue::Ingest),
    )
    .await?;
    settings.s3.endpoint = s3.endpoint();
    Ok(s3)
}

/// `reelfleet dev` with all four workers (one replica each), under `dir`.
async fn start_fleet(settings: Settings, dir: &Path) -> anyhow::Result<DevStack> {
    start_dev(settings, dir, &reelfleet_cli::fleet::StageName::ALL).await
}

/// Stops a fleet from [`start_fleet`], deletes its queues, and fails unless
/// every one of the `expected` jobs completed.
async fn stop_fleet(dev: DevStack, manifests: &[JobManifest], expected: usize) -> anyhow::Result<()> {
    let completed = manifests.iter().filter(|m| m.status == JobStatus::Completed).count();
    let broker = Broker::new(&dev.settings.broker, "bench")?;
    let topology = Topology::from_settings(&dev.settings);
    dev.stop().await;
    delete_namespace(&broker, &topology).await;
    if completed != expected {
        bail!("only {completed} of {expected} jobs completed");
    }
    Ok(())
}

/// `clips` real 720p clips of `seconds` each, of varied content, with audio.
fn make_clips(clip_dir: &Path, clips: usize, seconds: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(clip_dir)?;
    eprintln!("making {clips} clips of {seconds} s at 1280x720");
    let sources =
        ["testsrc2", "mandelbrot", "life=mold=10:ratio=0.1:life_color=#33cc33", "smptehdbars", "cellauto=rule=110"];
    let mut paths = Vec::new();
    for i in 0..clips {
        let src = sources[i % sources.len()];
        let sep = if src.contains('=') { ":" } else { "=" };
        let clip = Clip {
            video: &format!("{src}{sep}size=1280x720:rate=30"),
            audio: &format!("sine=frequency={}", 200 + i * 20),
            seconds: seconds as f64,
            extra: &["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"],
        };
        paths.push(clip.make(clip_dir, &format!("clip-{i:02}.mp4"))?);
    }
    Ok(paths)
}

/// Each clip's ffprobe/ffmpeg runs as `reelfleet media plan --print0
/// [extra]` lists them for `settings` (the stages' own argument builders),
/// written to `out/clip-NN.plan`, their outputs going to `out/clip-NN/`.
fn plan_baseline(settings: &Settings, clips: &[PathBuf], out: &Path, extra: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let reelfleet = reelfleet_binary()?;
    let config = out.join("settings.toml");
    std::fs::write(&config, settings.to_toml())?;
    let mut plans = Vec::new();
    for clip in clips {
        let name = clip.file_stem().context("clip name")?.to_string_lossy().into_owned();
        let outdir = out.join(&name);
        std::fs::create_dir_all(&outdir)?;
        let plan = Command::new(&reelfleet)
            .arg("--config")
            .arg(&config)
            .args(["media", "plan", "--print0"])
            .args(extra)
            .arg(clip)
            .arg(&outdir)
            .output()?;
        if !plan.status.success() {
            bail!("reelfleet media plan {}: {}", clip.display(), String::from_utf8_lossy(&plan.stderr));
        }
        // The HLS muxer writes into its variant folders; the stage makes them first.
        for word in plan.stdout.split(|b| *b == 0).filter(|w| w.starts_with(b"[f=")) {
            for path in reelfleet_core::media::output_paths(&String::from_utf8_lossy(word)) {
                std::fs::create_dir_all(path.parent().context("output folder")?)?;
            }
        }
        let path = out.join(format!("{name}.plan"));
        std::fs::write(&path, plan.stdout)?;
        plans.push(path);
    }
    Ok(plans)
}

/// CPU seconds (user + system) of this process's children that have ended
/// and been waited for, with theirs: `cutime` + `cstime` of `/proc/self/stat`.
fn children_cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line, 14 and 15 here (state is the first).
    let ticks: u64 =
        fields.get(13).context("cutime")?.parse::<u64>()? + fields.get(14).context("cstime")?.parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, usually 100).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Replays `plans` with `scripts/lib/baseline-transcode.sh` under `xargs
/// -P cores`: (wall seconds, CPU seconds of every process it started).
fn replay(plans: &[PathBuf], cores: usize) -> anyhow::Result<(f64, f64)> {
    let list: String = plans.iter().map(|p| format!("{}\n", p.display())).collect();
    let script =
        Path::new("scripts/lib/baseline-transcode.sh").canonicalize().context("run from the repository root")?;
    let cpu0 = children_cpu_secs()?;
    let t0 = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &cores.to_string(), "-I", "{}", "bash"])
        .arg(&script)
        .arg("{}")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(list.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("a replayed plan failed");
    }
    Ok((t0.elapsed().as_secs_f64(), children_cpu_secs()? - cpu0))
}

async fn transcode(args: &[String]) -> anyhow::Result<()> {
    let clips = arg(args, "--clips", 20)?;
    let seconds = arg(args, "--seconds", 10)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let work = tempfile::Builder::new().prefix("reelfleet-bench-").tempdir()?;
    let paths = make_clips(&work.path().join("clips"), clips, seconds)?;
    let mut settings = bench_settings("transcode");
    // Every tier at the preset the per-output commands used: the comparison
    // is of the ladder's shape, not of a faster preset for bulk tiers.
    settings.media.tier_presets = reelfleet_core::settings::TierPresets::all(&settings.media.preset);
    let delivered = (clips * seconds) as f64;
    let load_before = load_average();

    eprintln!("legacy: the per-output commands of before (media plan --legacy) by xargs -P {cores}");
    let out = work.path().join("legacy");
    std::fs::create_dir_all(&out)?;
    let plans = plan_baseline(&settings, &paths, &out, &["--legacy"])?;
    let (legacy_s, legacy_cpu) = replay(&plans, cores)?;
    eprintln!("legacy: {legacy_s:.1} s, {legacy_cpu:.1} CPU s");

    eprintln!("ladder: the fleet's commands (media plan) by xargs -P {cores}");
    let out = work.path().join("ladder");
    std::fs::create_dir_all(&out)?;
    let plans = plan_baseline(&settings, &paths, &out, &[])?;
    let (ladder_s, ladder_cpu) = replay(&plans, cores)?;
    eprintln!("ladder: {ladder_s:.1} s, {ladder_cpu:.1} CPU s");

    eprintln!("fleet: reelfleet dev, {clips} uploads (media.sandbox = none, as the replays run)");
    // bubblewrap's init in its own pid namespace does not hand its children's
    // CPU time up to the worker: under the sandbox this process's children's
    // count holds bwrap alone. The replays run bare too (see `bench sandbox` for its cost).
    settings.media.sandbox = reelfleet_core::settings::SandboxKind::None;
    let dev = start_fleet(settings, work.path()).await?;
    let cpu0 = children_cpu_secs()?;
    let t0 = Instant::now();
    let submitted =
        ops::submit(&dev.settings, &ops::SubmitRequest { files: paths.clone(), ..Default::default() }).await?;
    let manifests = ops::wait(&dev.settings, &submitted, Duration::from_secs(3600), false).await?;
    let fleet_s = t0.elapsed().as_secs_f64();
    let fleet_cpu = children_cpu_secs()? - cpu0;
    if fleet_cpu < 0.1 * legacy_cpu {
        bail!("the fleet's ffmpeg CPU time was not counted ({fleet_cpu:.1} s): are its processes reaped by this one?");
    }
    let reencoded = manifests.iter().flat_map(|m| &m.outputs).filter(|o| o.reencoded.is_some()).count();
    let copied = manifests
        .iter()
        .flat_map(|m| &m.outputs)
        .filter(|o| o.encode == Some(reelfleet_core::manifest::RenditionEncode::Copy))
        .count();
    let hls = manifests.iter().filter(|m| m.hls.is_some()).count();
    stop_fleet(dev, &manifests, clips).await?;
    let per = |cpu: f64| cpu / delivered;
    let result = serde_json::json!({
        "clips": clips,
        "clip_seconds": seconds,
        "delivered_video_s": delivered,
        "legacy": {"wall_s": legacy_s, "cpu_s": legacy_cpu, "cpu_s_per_video_s": per(legacy_cpu)},
        "ladder": {"wall_s": ladder_s, "cpu_s": ladder_cpu, "cpu_s_per_video_s": per(ladder_cpu)},
        "fleet": {"wall_s": fleet_s, "cpu_s": fleet_cpu, "cpu_s_per_video_s": per(fleet_cpu), "jobs_with_hls": hls, "renditions_reencoded": reencoded, "renditions_copied": copied},
        "cpu_ratio_ladder_vs_legacy": ladder_cpu / legacy_cpu,
        "cpu_ratio_fleet_vs_legacy": fleet_cpu / legacy_cpu,
        "wall_ratio_fleet_vs_ladder": fleet_s / ladder_s,
        "goals": {"cpu_ratio_ladder_vs_legacy": 0.6, "wall_ratio_fleet_vs_ladder": 1.05},
        "preset": preset_note(),
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
    });
    let path = write_result("transcode", &result)?;
    println!(
        "transcode: {clips} clips of {seconds} s at 720p, CPU s per s of video: legacy {:.2}, ladder {:.2} ({:.3}x), fleet {:.2} ({:.3}x); wall: legacy {legacy_s:.1} s, ladder {ladder_s:.1} s, fleet {fleet_s:.1} s (fleet / ladder {:.3}) -> {}",
        per(legacy_cpu),
        per(ladder_cpu),
        ladder_cpu / legacy_cpu,
        per(fleet_cpu),
        fleet_cpu / legacy_cpu,
        fleet_s / ladder_s,
        path.display()
    );
    Ok(())
}

/// What the transcode benchmark encodes with.
fn preset_note() -> &'static str {
    "media.preset (veryfast) for every tier, both sides; the fleet with media.sandbox = none (prlimit on)"
}

/// One poll of the queues, as KEDA would see it through the management API.
struct ScaleSample {
    ready: u64,
    unacked: u64,
    desired: u32,
    ready_only: u32,
}

/// KEDA's view of a real run: N clips uploaded at once to a fleet with one
/// replica per worker, the queues polled every second through the management
/// API, and for each poll the replicas the chart's values ask for when depth
/// is ready + unacked (`protocol: http`, what the chart uses) and when it is
/// ready only (`protocol: amqp`).
async fn scaling(args: &[String]) -> anyhow::Result<()> {
    let clips = arg(args, "--clips", 16)?;
    let seconds = arg(args, "--seconds", 6)?;
    let work = tempfile::Builder::new().prefix("reelfleet-bench-").tempdir()?;
    let paths = make_clips(&work.path().join("clips"), clips, seconds)?;
    let dev = start_fleet(bench_settings("scaling"), work.path()).await?;
    let chart = scale::ChartScaling::load(None)?;
    let done = CancellationToken::new();
    let sampler = {
        let (settings, chart, done) = (dev.settings.clone(), chart.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples: BTreeMap<String, Vec<ScaleSample>> = BTreeMap::new();
            while !done.is_cancelled() {
                if let Ok(rows) = scale::plan(&settings, &chart).await {
                    for r in rows.into_iter().filter(|r| r.source == "management") {
                        let w = &chart.workers[&r.worker];
                        let ready_only = scale::desired_replicas(r.ready, w).1;
                        samples.entry(r.worker).or_default().push(ScaleSample {
                            ready: r.ready,
                            unacked: r.unacked.unwrap_or(0),
                            desired: r.desired_replicas,
                            ready_only,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };
    eprintln!("fleet: one replica per worker, {clips} uploads at once, queues polled every second");
    let t0 = Instant::now();
    let submitted =
        ops::submit(&dev.settings, &ops::SubmitRequest { files: paths.clone(), ..Default::default() }).await?;
    let manifests = ops::wait(&dev.settings, &submitted, Duration::from_secs(3600), false).await?;
    let run_s = t0.elapsed().as_secs_f64();
    done.cancel();
    let samples = sampler.await?;
    stop_fleet(dev, &manifests, clips).await?;

    let mut workers = serde_json::Map::new();
    let (mut busy_total, mut under_total, mut zero_total, mut full_zero_total) = (0, 0, 0, 0);
    println!(
        "{:<20} {:>7} {:>6} {:>10} {:>12} {:>14} {:>16}",
        "WORKER", "POLLS", "BUSY", "PEAK DEPTH", "PEAK WANTED", "READY-ONLY <", "READY-ONLY -> 0"
    );
    for (worker, polls) in &samples {
        let busy: Vec<&ScaleSample> = polls.iter().filter(|p| p.unacked > 0).collect();
        let under = busy.iter().filter(|p| p.ready_only < p.desired).count();
        let zero = busy.iter().filter(|p| p.ready_only == 0).count();
        let full_zero = busy.iter().filter(|p| p.desired == 0).count();
        full_zero_total += full_zero;
        let peak_depth = polls.iter().map(|p| p.ready + p.unacked).max().unwrap_or(0);
        let peak_desired = polls.iter().map(|p| p.desired).max().unwrap_or(0);
        busy_total += busy.len();
        under_total += under;
        zero_total += zero;
        println!(
            "{worker:<20} {:>7} {:>6} {peak_depth:>10} {peak_desired:>12} {under:>14} {zero:>16}",
            polls.len(),
            busy.len()
        );
        workers.insert(
            worker.clone(),
            serde_json::json!({
                "polls": polls.len(),
                "busy_polls": busy.len(),
                "peak_depth": peak_depth,
                "peak_desired_replicas": peak_desired,
                "queue_length": chart.workers[worker].queue_length,
                "min_replicas": chart.workers[worker].min_replicas,
                "ready_only_asks_fewer": under,
                "ready_only_asks_zero": zero,
                "ready_plus_unacked_asks_zero": full_zero,
            }),
        );
    }
    let result = serde_json::json!({
        "clips": clips,
        "clip_seconds": seconds,
        "run_s": run_s,
        "busy_polls": busy_total,
        "ready_only_asks_fewer": under_total,
        "ready_only_asks_zero": zero_total,
        "ready_plus_unacked_asks_zero": full_zero_total,
        "workers": workers,
        "machine": machine(),
    });
    let path = write_result("scaling", &result)?;
    println!(
        "scaling: {clips} clips in {run_s:.1} s; of {busy_total} polls where a worker held unacked messages, \
         ready-only depth asked for fewer replicas in {under_total} and for zero in {zero_total}; ready + unacked \
         asked for zero in {full_zero_total} -> {}",
        path.display()
    );
    Ok(())
}

/// A stage that reads its input object, writes 1 KB and forwards.
struct NoOp {
    name: &'static str,
    queue: WorkQueue,
    next: Option<WorkQueue>,
    storage: Storage,
    bucket: String,
    hops: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicUsize>,
}

#[async_trait]
impl Stage for NoOp {
    fn name(&self) -> &'static str {
        self.name
    }
    fn queues(&self) -> Vec<WorkQueue> {
        vec![self.queue]
    }
    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Envelope(env) = msg.input else {
            return Err(StageError::permanent("bad_input", "envelope expected"));
        };
        let hop = (chrono::Utc::now() - env.sent_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        self.hops.lock().expect("hops").push(hop);
        for key in &env.inputs {
            self.storage.get_bytes(&self.bucket, key, 1 << 20).await?;
        }
        let key = format!("jobs/{}/{}/out.bin", env.job_id, self.name);
        self.storage.put_bytes(&self.bucket, &key, vec![7u8; 1024], "application/octet-stream").await?;
        match self.next {
            Some(q) => Ok(vec![Dispatch::Next { queue: q, envelope: env.forward(vec![key]) }]),
            None => {
                self.done.fetch_add(1, Ordering::SeqCst);
                Ok(Vec::new())
            }
        }
    }
}

async fn overhead(args: &[String]) -> anyhow::Result<()> {
    let jobs = arg(args, "--jobs", 2000)?;
    let work = tempfile::Builder::new().prefix("reelfleet-bench-").tempdir()?;
    let mut settings = bench_settings("overhead");
    settings.broker.prefetch = 32;
    let broker = Broker::new(&settings.broker, "bench")?;
    let topology = Topology::from_settings(&settings);
    broker.declare(&topology).await.context("RabbitMQ")?;
    let s3 = start_s3(&mut settings, &broker, &topology, work.path()).await?;
    let storage = Storage::new(&settings.s3);
    let bucket = settings.s3.work_bucket.clone();
    storage.ensure_bucket(&bucket).await?;

    // Raw ceiling 1: persistent publish with confirms + consume with acks on one quorum queue.
    let raw_n = jobs.max(1000);
    let q = format!("{}.raw", settings.namespace);
    let ch = broker.channel().await?;
    let mut qargs = lapin::types::FieldTable::default();
    qargs.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, qargs).await?;
    let publisher = broker.publisher().await?;
    let consumer_ch = broker.channel().await?;
    consumer_ch.basic_qos(settings.broker.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = consumer_ch
        .basic_consume(q.as_str().into(), "raw".into(), BasicConsumeOptions::default(), Default::default())
        .await?;
    let t0 = Instant::now();
    let consume = tokio::spawn(async move {
        let mut n = 0;
        while n < raw_n {
            let Some(Ok(d)) = consumer.next().await else { break };
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            n += 1;
        }
        n
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..raw_n {
        let permit = sem.clone().acquire_owned().await?;
        let (p, q) = (publisher.clone(), q.clone());
        pubs.spawn(async move {
            let r = p.publish(&Outgoing::to_queue(q, vec![0u8; 512])).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = pubs.join_next().await {
        r??;
    }
    let consumed = consume.await?;
    let rabbit_msgs_per_s = consumed as f64 / t0.elapsed().as_secs_f64();
    let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;

    // Raw ceiling 2: 1 KB S3 PUT + GET, 64 at a time.
    let s3_n = jobs.max(1000);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..s3_n {
        let permit = sem.clone().acquire_owned().await?;
        let (st, b) = (storage.clone(), bucket.clone());
        tasks.spawn(async move {
            let key = format!("raw/{i}");
            st.put_bytes(&b, &key, vec![1u8; 1024], "application/octet-stream").await?;
            st.get_bytes(&b, &key, 4096).await?;
            drop(permit);
            Ok::<(), reelfleet_core::storage::StorageError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let s3_ops_per_s = (2 * s3_n) as f64 / t0.elapsed().as_secs_f64();

    // The runtime: four chained no-op stages.
    let hops = Arc::new(Mutex::new(Vec::with_capacity(jobs * 4)));
    let done = Arc::new(AtomicUsize::new(0));
    let chain = [
        ("ingest", WorkQueue::Ingest, Some(WorkQueue::Preprocess)),
        ("preprocess", WorkQueue::Preprocess, Some(WorkQueue::Inference(Tier::Low))),
        ("inference", WorkQueue::Inference(Tier::Low), Some(WorkQueue::Postprocess)),
        ("postprocess", WorkQueue::Postprocess, None),
    ];
    let metrics = Metrics::new();
    let runtime = Runtime::new(
        &settings,
        broker.clone(),
        ManifestStore::new(storage.clone(), bucket.clone()),
        metrics,
        Readiness::default(),
    )?;
    let shutdown = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for (name, queue, next) in chain {
        let stage = Arc::new(NoOp {
            name,
            queue,
            next,
            storage: storage.clone(),
            bucket: bucket.clone(),
            hops: hops.clone(),
            done: done.clone(),
        });
        let (rt, stop) = (runtime.clone(), shutdown.clone());
        workers.spawn(async move { rt.run(stage, stop).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ingest = topology.queue(WorkQueue::Ingest);
    let seed = |i: usize| {
        let source = SourceObject {
            bucket: "bench".into(),
            key: format!("job-{i}"),
            size: 0,
            etag: Some(format!("{i}")),
            version_id: None,
        };
        runtime.signed(&ingest, &ingest, &Envelope::new(JobKind::Analyze, source))
    };
    // Throughput: every job queued at once.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut pubs = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let permit = sem.clone().acquire_owned().await?;
        let (msg, p) = (seed(i), publisher.clone());
        pubs.spawn(async move {
            let r = p.publish(&msg).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = pubs.join_next().await {
        r??;
    }
    wait_done(&done, jobs).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let jobs_per_s = jobs as f64 / elapsed;

    // Latency: a quarter as many jobs again, paced at half that throughput,
    // so a hop's time is the runtime's own and not time spent queued.
    hops.lock().expect("hops").clear();
    let paced = (jobs / 4).max(50);
    let gap = Duration::from_secs_f64(2.0 / jobs_per_s);
    for i in 0..paced {
        publisher.publish(&seed(jobs + i)).await?;
        tokio::time::sleep(gap).await;
    }
    wait_done(&done, jobs + paced).await?;
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
    s3.shutdown.cancel();
    delete_namespace(&broker, &topology).await;

    let mut hop_ms = hops.lock().expect("hops").clone();
    hop_ms.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let result = serde_json::json!({
        "jobs": jobs,
        "jobs_per_s": jobs_per_s,
        "latency_jobs": paced,
        "latency_rate_jobs_per_s": jobs_per_s / 2.0,
        "hop_p50_ms": percentile(&hop_ms, 0.50),
        "hop_p99_ms": percentile(&hop_ms, 0.99),
        "rabbit_msgs_per_s": rabbit_msgs_per_s,
        "s3_ops_per_s": s3_ops_per_s,
        "prefetch": settings.broker.prefetch,
        "machine": machine(),
    });
    let path = write_result("overhead", &result)?;
    println!(
        "overhead: {jobs} jobs through 4 no-op stages: {:.0} jobs/s ({:.0} stage messages/s); at half that rate a hop takes p50 {:.1} ms, p99 {:.1} ms; ceilings: RabbitMQ {:.0} msgs/s (publish+confirm+consume, one quorum queue), S3 {:.0} ops/s (1 KB PUT+GET) -> {}",
        jobs_per_s,
        4.0 * jobs_per_s,
        percentile(&hop_ms, 0.50),
        percentile(&hop_ms, 0.99),
        rabbit_msgs_per_s,
        s3_ops_per_s,
        path.display()
    );
    Ok(())
}

async fn wait_done(done: &AtomicUsize, target: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.load(Ordering::SeqCst) < target {
        if Instant::now() > deadline {
            bail!("only {} of {target} jobs finished", done.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One pass of the inference benchmark.
struct InferencePass {
    completed: usize,
    lost: usize,
    requests: usize,
    tokens: u64,
    ledger_usd: f64,
    billed_usd: f64,
    all_critical_usd: f64,
    latency: BTreeMap<Tier, (f64, f64)>,
    rate_limited: u64,
    early_retries: u64,
}

async fn inference_pass(jobs: usize, batched: bool, rate: f64) -> anyhow::Result<InferencePass> {
    use reelfleet_devstack::{serve_simulator, SimulatorConfig};
    let work = tempfile::Builder::new().prefix("reelfleet-bench-").tempdir()?;
    let mut settings = bench_settings(if batched { "inference" } else { "unbatched" });
    let broker = Broker::new(&settings.broker, "bench")?;
    let topology = Topology::from_settings(&settings);
    broker.declare(&topology).await.context("RabbitMQ")?;
    let s3 = start_s3(&mut settings, &broker, &topology, work.path()).await?;
    // Provider: 600 requests a minute per model, 10% 429 and 2% 5xx when batched;
    // the unbatched pass only counts requests and tokens, so it runs unthrottled.
    let mut sim_cfg = SimulatorConfig {
        api_key: settings.inference.api_key.expose().into(),
        latency_min_ms: 20,
        latency_max_ms: 80,
        ..Default::default()
    };
    if batched {
        sim_cfg.rate_429 = 0.10;
        sim_cfg.error_rate = 0.02;
        sim_cfg.retry_after_secs = 1;
        for m in &mut settings.inference.models {
            sim_cfg.rate_limit_rpm.insert(m.model.clone(), 600);
            m.requests_per_minute = 600;
        }
    }
    let sim = serve_simulator("127.0.0.1:0", sim_cfg).await?;
    settings.inference.base_url = sim.base_url();
    settings.broker.prefetch = 64;
    for t in [
        &mut settings.inference.low,
        &mut settings.inference.medium,
        &mut settings.inference.high,
        &mut settings.inference.critical,
    ] {
        t.fallback_model = None;
        if !batched {
            t.batch_size = 1;
            t.concurrency = 16;
        }
    }
    let settings = Arc::new(settings);
    let storage = Storage::new(&settings.s3);
    let bucket = settings.s3.work_bucket.clone();
    storage.ensure_bucket(&bucket).await?;
    let manifests = ManifestStore::new(storage.clone(), bucket.clone());

    // Jobs as preprocess leaves them: four keyframes each (shared objects), a manifest, a tier.
    let mut keyframes = Vec::new();
    for i in 1..=4u32 {
        let key = format!("bench/keyframe-{i}.jpg");
        let bytes: Vec<u8> = (0..12_000u32).map(|b| (b.wrapping_mul(i + 3) >> 3) as u8).collect();
        storage.put_bytes(&bucket, &key, bytes, "image/jpeg").await?;
        keyframes.push(key);
    }
    let mix = [(Tier::Low, 40), (Tier::Medium, 35), (Tier::High, 20), (Tier::Critical, 5)];
    let tier_of = |i: usize| {
        let r = i % 100;
        let mut acc = 0;
        for (t, share) in mix {
            acc += share;
            if r < acc {
                return t;
            }
        }
        Tier::Low
    };
    let mut envelopes = Vec::with_capacity(jobs);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let tier = tier_of(i);
        let source = SourceObject {
            bucket: "uploads".into(),
            key: format!("bench/{i}.mp4"),
            size: 1,
            etag: Some(format!("{i}")),
            version_id: None,
        };
        let mut env = Envelope::new(JobKind::Analyze, source);
        env.tier = Some(tier);
        env.inputs = keyframes.clone();
        let mut m = reelfleet_core::manifest::JobManifest::new(&env);
        m.status = JobStatus::Inference;
        m.tier = Some(tier);
        m.preprocess = Some(reelfleet_core::manifest::PreprocessInfo {
            normalized_key: Some("bench/normalized.mp4".into()),
            keyframes: keyframes.clone(),
            tier,
            tier_reason: "benchmark".into(),
            ..Default::default()
        });
        let (store, permit) = (manifests.clone(), sem.clone().acquire_owned().await?);
        tasks.spawn(async move {
            let r = store.create(&mut m).await;
            drop(permit);
            r
        });
        envelopes.push(env);
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }

    let metrics = Metrics::new();
    let runtime = Runtime::new(&settings, broker.clone(), manifests.clone(), metrics.clone(), Readiness::default())?;
    let state_url = format!("sqlite://{}", work.path().join("state.db").display());
    let state = reelfleet_core::fleetstate::FleetState::connect(&state_url, &settings.namespace).await?;
    let stage =
        Arc::new(reelfleet_inference::Inference::new(settings.clone(), storage.clone(), Vec::new(), metrics, state)?);
    let shutdown = CancellationToken::new();
    let worker = {
        let (rt, stop) = (runtime.clone(), shutdown.clone());
        tokio::spawn(async move { rt.run(stage, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = broker.publisher().await?;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now();
    for (i, env) in envelopes.iter_mut().enumerate() {
        env.sent_at = chrono::Utc::now();
        let tier = env.tier.expect("tier");
        let queue = topology.queue(WorkQueue::Inference(tier));
        publisher.publish(&runtime.signed(&queue, &queue, env)).await?;
        let due = t0 + gap.mul_f64((i + 1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    // Settled: every job forwarded to postprocess or dead-lettered.
    let channel = broker.channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let count = |q: String| {
        let ch = channel.clone();
        async move {
            ch.queue_declare(q.as_str().into(), passive, Default::default()).await.map(|q| q.message_count() as usize)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (mut completed, mut dead) = (0, 0);
    while Instant::now() < deadline {
        completed = count(topology.queue(WorkQueue::Postprocess)).await?;
        dead = 0;
        for t in Tier::ALL {
            dead += count(topology.dead_letter_queue(WorkQueue::Inference(t))).await?;
        }
        if completed + dead >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shutdown.cancel();
    let _ = worker.await;

    let mut lat: BTreeMap<Tier, Vec<f64>> = BTreeMap::new();
    let mut ledger_usd = 0.0;
    let mut tokens_all_critical = (0u64, 0u64);
    let reads: Vec<_> =
        futures::stream::iter(envelopes.iter().map(|e| (e.job_id.clone(), e.sent_at, e.tier.expect("tier"))))
            .map(|(id, sent, tier)| {
                let store = manifests.clone();
                async move { (store.load(&id).await, sent, tier) }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    for (m, sent, tier) in reads {
        let Ok(Some(m)) = m else { continue };
        for c in &m.charges {
            ledger_usd += c.usd;
            tokens_all_critical.0 += c.input_tokens;
            tokens_all_critical.1 += c.output_tokens;
        }
        if let Some(t) = m.stages.get("inference") {
            lat.entry(tier).or_default().push((t.finished_at - sent).num_milliseconds() as f64);
        }
    }
    let usage = sim.usage();
    let prices = &settings.inference;
    let billed_usd: f64 = usage
        .iter()
        .map(|u| {
            let p = prices.price(&u.model).expect("priced model");
            (u.prompt_tokens as f64 * p.input_per_mtok + u.completion_tokens as f64 * p.output_per_mtok) / 1e6
        })
        .sum();
    let crit = prices.price(&prices.critical.model).expect("critical price");
    let all_critical_usd = (tokens_all_critical.0 as f64 * crit.input_per_mtok
        + tokens_all_critical.1 as f64 * crit.output_per_mtok)
        / 1e6;
    let latency = lat
        .into_iter()
        .map(|(t, mut v)| {
            v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            (t, (percentile(&v, 0.5), percentile(&v, 0.99)))
        })
        .collect();
    let stats = sim.stats();
    sim.shutdown.cancel();
    s3.shutdown.cancel();
    delete_namespace(&broker, &topology).await;
    Ok(InferencePass {
        completed,
        lost: jobs.saturating_sub(completed + dead),
        requests: usage.len(),
        tokens: usage.iter().map(|u| u.prompt_tokens + u.completion_tokens).sum(),
        ledger_usd,
        billed_usd,
        all_critical_usd,
        latency,
        rate_limited: stats.rate_limited,
        early_retries: stats.early_retries,
    })
}

async fn inference(args: &[String]) -> anyhow::Result<()> {
    let jobs = arg(args, "--jobs", 10_000)?;
    let rate = arg(args, "--rate", 200)? as f64;
    eprintln!(
        "inference: {jobs} analyze jobs at {rate} jobs/s, batched, against 600 rpm per model with 10% 429 and 2% 5xx"
    );
    let b = inference_pass(jobs, true, rate).await?;
    eprintln!("inference: the same jobs unbatched (batch size 1)");
    let u = inference_pass(jobs, false, rate.max(2000.0)).await?;
    let per_tier: serde_json::Map<String, serde_json::Value> = b
        .latency
        .iter()
        .map(|(t, (p50, p99))| (t.to_string(), serde_json::json!({"p50_ms": p50, "p99_ms": p99})))
        .collect();
    let result = serde_json::json!({
        "jobs": jobs,
        "rate_jobs_per_s": rate,
        "completed": b.completed,
        "lost": b.lost,
        "requests_batched": b.requests,
        "requests_unbatched": u.requests,
        "tokens_batched": b.tokens,
        "tokens_unbatched": u.tokens,
        "ledger_usd": b.ledger_usd,
        "billed_usd": b.billed_usd,
        "cost_routed_usd": b.ledger_usd,
        "cost_all_critical_usd": b.all_critical_usd,
        "rate_limited": b.rate_limited,
        "early_retries": b.early_retries,
        "tiers": per_tier,
        "machine": machine(),
    });
    let path = write_result("inference", &result)?;
    println!(
        "inference: {jobs} jobs: {} completed, {} lost; requests {} batched vs {} unbatched ({:.3}x); tokens {} vs {}; ledger ${:.6} vs billed ${:.6}; routed ${:.4} vs all-critical ${:.4}; 429s {} (early retries {})",
        b.completed,
        b.lost,
        b.requests,
        u.requests,
        b.requests as f64 / u.requests.max(1) as f64,
        b.tokens,
        u.tokens,
        b.ledger_usd,
        b.billed_usd,
        b.ledger_usd,
        b.all_critical_usd,
        b.rate_limited,
        b.early_retries
    );
    for (t, (p50, p99)) in &b.latency {
        println!("  {t:<8} queue-to-result p50 {p50:.0} ms, p99 {p99:.0} ms");
    }
    println!("  -> {}", path.display());
    Ok(())
}

/// The ffmpeg/ffprobe commands the fleet runs for one 720p analyze job
/// (ingest's probe and decode check, preprocess's normalize, complexity and
/// keyframes, postprocess's two renditions with their quality checks, the
/// poster and the sprite), as (program, arguments).
fn sandbox_commands(clip: &Path, out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let f = |p: &Path| format!("file:{}", p.display());
    let o = |name: &str| out.join(name);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let probe = |p: &Path| {
        let mut a = strings(&["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]);
        a.push(f(p));
        ("ffprobe", a)
    };
    let ffmpeg = |parts: Vec<String>| {
        let mut a = strings(&["-hide_banner", "-nostdin", "-y", "-benchmark"]);
        a.extend(parts);
        ("ffmpeg", a)
    };
    let input = |p: &Path| vec!["-i".to_string(), f(p)];
    let norm = o("normalized.mp4");
    let mut cmds = vec![probe(clip)];
    let mut check = strings(&["-v", "error", "-xerror"]);
    check.extend(input(clip));
    check.extend(strings(&["-t", "1", "-map", "0:v:0", "-f", "null", "-"]));
    cmds.push(ffmpeg(check));
    cmds.push(probe(clip));
    let mut normalize = input(clip);
    normalize.extend(strings(&[
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-sn",
        "-dn",
        "-vf",
        "scale=1280:720:flags=bicubic,setsar=1,fps=24,format=yuv420p",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "23",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-ac",
        "2",
        "-movflags",
        "+faststart",
    ]));
    normalize.push(f(&norm));
    cmds.push(ffmpeg(normalize));
    cmds.push(probe(&norm));
    let mut complexity = input(&norm);
    complexity.extend(strings(&["-an", "-vf", "scale=320:-2,format=gray,select='gte(scene\\,0)',metadata=print:key=lavfi.scene_score,tblend=all_mode=difference,signalstats,metadata=print:key=lavfi.signalstats.YAVG", "-f", "null", "-"]));
    cmds.push(ffmpeg(complexity));
    let mut keyframes = input(&norm);
    keyframes.extend(strings(&["-an", "-vf", "fps=0.4,scale='min(640,iw)':-2", "-frames:v", "4", "-q:v", "3"]));
    keyframes.push(f(&o("keyframe-%02d.jpg")));
    cmds.push(ffmpeg(keyframes));
    for (name, encoder, crf) in [("h264_720p.mp4", "libx264", "23"), ("h265_720p.mp4", "libx265", "28")] {
        let mut encode = input(&norm);
        encode.extend(strings(&[
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-vf",
            "scale=1280:720:flags=bicubic,setsar=1,format=yuv420p",
        ]));
        encode.extend(strings(&["-c:v", encoder, "-preset", "veryfast", "-crf", crf]));
        if encoder == "libx265" {
            encode.extend(strings(&["-tag:v", "hvc1", "-x265-params", "log-level=error"]));
        }
        encode.extend(strings(&["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]));
        encode.push(f(&o(name)));
        cmds.push(ffmpeg(encode));
        cmds.push(probe(&o(name)));
        let mut quality = input(&o(name));
        quality.extend(input(&norm));
        quality.extend(strings(&["-lavfi", "[1:v]scale=1280:720:flags=bicubic,setsar=1,format=yuv420p,split=2[r1][r2];[0:v]setsar=1,format=yuv420p,split=2[a1][a2];[a1][r1]psnr;[a2][r2]ssim", "-f", "null", "-"]));
        cmds.push(ffmpeg(quality));
    }
    let mut poster = strings(&["-ss", "1.000"]);
    poster.extend(input(&norm));
    poster.extend(strings(&["-frames:v", "1", "-q:v", "2"]));
    poster.push(f(&o("poster.jpg")));
    cmds.push(ffmpeg(poster));
    cmds.push(probe(&o("poster.jpg")));
    let mut sprite = input(&norm);
    sprite.extend(strings(&["-an", "-vf", "fps=1.0,scale=160:-2,tile=5x2", "-frames:v", "1", "-q:v", "4"]));
    sprite.push(f(&o("sprite.jpg")));
    cmds.push(ffmpeg(sprite));
    cmds.push(probe(&o("sprite.jpg")));
    cmds
}

/// Runs `commands` one after another through `runner`, returning the wall
/// seconds they took and the CPU seconds ffmpeg reported for its own work
/// (`-benchmark`: `bench: utime=.. stime=..`, measured inside the sandbox,
/// so it shows whether the sandbox slows the work itself, whatever else
/// loads the machine).
async fn run_commands(
    runner: &reelfleet_core::sandbox::Runner,
    commands: &[(&'static str, Vec<String>)],
) -> anyhow::Result<(f64, f64)> {
    use reelfleet_core::sandbox::Files;
    let t0 = Instant::now();
    let mut cpu = 0.0;
    for (program, args) in commands {
        let files = Files::from_args(args, *program == "ffmpeg");
        let out = runner.command(program, args, &files, 3600).stdin(std::process::Stdio::null()).output().await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("{program} {} failed: {stderr}", args.join(" "));
        }
        for line in stderr.lines().filter(|l| l.starts_with("bench: utime=")) {
            for key in ["utime=", "stime="] {
                let value = line.split(key).nth(1).and_then(|v| v.split('s').next());
                cpu += value.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            }
        }
    }
    Ok((t0.elapsed().as_secs_f64(), cpu))
}

/// The cost of the decoder sandbox and the resource limits: the same
/// commands bare and wrapped, interleaved so that drift hits both alike.
async fn sandbox(args: &[String]) -> anyhow::Result<()> {
    use reelfleet_core::{sandbox::Runner, settings::MediaSettings};
    let runs = arg(args, "--runs", 3)?.max(1);
    let seconds = arg(args, "--seconds", 10)?;
    let work = tempfile::Builder::new().prefix("reelfleet-bench-sandbox-").tempdir()?;
    eprintln!("making a {seconds} s 1280x720 clip");
    let clip = Clip {
        video: "testsrc2=size=1280x720:rate=30",
        audio: "sine=frequency=300",
        seconds: seconds as f64,
        extra: &["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"],
    }
    .make(work.path(), "clip.mp4")?;
    let bare = Runner::bare();
    let wrapped = Runner::new(&MediaSettings::default()).context("bwrap and prlimit must work here")?;
    eprintln!("{}", wrapped.describe());

    // The fixed cost of one process: `ffmpeg -version`, 40 times each way.
    let version = vec![("ffmpeg", vec!["-hide_banner".to_string(), "-version".to_string()])];
    let (mut bare_ms, mut wrapped_ms) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        bare_ms.push(run_commands(&bare, &version).await?.0 * 1000.0);
        wrapped_ms.push(run_commands(&wrapped, &version).await?.0 * 1000.0);
    }
    bare_ms.sort_by(|a, b| a.total_cmp(b));
    wrapped_ms.sort_by(|a, b| a.total_cmp(b));
    let (bare_p50, wrapped_p50) = (percentile(&bare_ms, 0.5), percentile(&wrapped_ms, 0.5));

    let (mut bare_s, mut wrapped_s, mut bare_cpu, mut wrapped_cpu) = (Vec::new(), Vec::new(), 0.0, 0.0);
    let mut commands = 0;
    for run in 0..runs {
        // Alternate which goes first.
        for sandboxed in if run % 2 == 0 { [false, true] } else { [true, false] } {
            let out = work.path().join(format!("run-{run}-{}", if sandboxed { "sandboxed" } else { "bare" }));
            std::fs::create_dir_all(&out)?;
            let cmds = sandbox_commands(&clip, &out);
            commands = cmds.len();
            let (secs, cpu) = run_commands(if sandboxed { &wrapped } else { &bare }, &cmds).await?;
            let what = if sandboxed { "sandboxed" } else { "bare" };
            eprintln!("run {}: {what} {secs:.2} s, {cpu:.2} CPU s", run + 1);
            if sandboxed {
                wrapped_s.push(secs);
                wrapped_cpu += cpu;
            } else {
                bare_s.push(secs);
                bare_cpu += cpu;
            }
        }
    }
    let (bare_total, wrapped_total) = (bare_s.iter().sum::<f64>(), wrapped_s.iter().sum::<f64>());
    let ratio = wrapped_total / bare_total;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, 0.5)
    };
    let median_ratio = median(&wrapped_s) / median(&bare_s);
    let cpu_ratio = wrapped_cpu / bare_cpu;
    let result = serde_json::json!({
        "runs": runs,
        "clip_seconds": seconds,
        "commands_per_run": commands,
        "bare_s": bare_s,
        "sandboxed_s": wrapped_s,
        "bare_total_s": bare_total,
        "sandboxed_total_s": wrapped_total,
        "ratio": ratio,
        "median_ratio": median_ratio,
        "bare_ffmpeg_cpu_s": bare_cpu,
        "sandboxed_ffmpeg_cpu_s": wrapped_cpu,
        "cpu_ratio": cpu_ratio,
        "process_ms": {"bare_p50": bare_p50, "sandboxed_p50": wrapped_p50, "extra_p50": wrapped_p50 - bare_p50},
        "sandbox": wrapped.describe(),
        "machine": machine(),
    });
    let path = write_result("sandbox", &result)?;
    println!(
        "sandbox: {runs} x {commands} commands of one {seconds} s 720p job: wall bare {bare_total:.1} s, prlimit + bubblewrap {wrapped_total:.1} s, ratio {ratio:.3} (of medians {median_ratio:.3}); ffmpeg's own CPU bare {bare_cpu:.1} s, wrapped {wrapped_cpu:.1} s, ratio {cpu_ratio:.3}; one process (ffmpeg -version) p50 {bare_p50:.1} ms bare, {wrapped_p50:.1} ms wrapped -> {}",
        path.display()
    );
    Ok(())
}

/// Fills an SQS queue with `n` single-record S3 events, ten per batch, eight batches at once.
async fn fill_sqs(sqs: &aws_sdk_sqs::Client, queue_url: &str, n: usize) -> anyhow::Result<()> {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(10).map(<[usize]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|batch| async move {
            let entries = batch
                .iter()
                .map(|i| {
                    let body = reelfleet_core::s3event::minio_event(
                        "ObjectCreated:Put",
                        "uploads",
                        &format!("bench/{i} clip+é.mp4"),
                        1024,
                        &format!("{i:032x}"),
                        "bench",
                    );
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(String::from_utf8(body).expect("utf-8"))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            sqs.send_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// Distinct object keys among the `n` S3 events waiting in `queue` (consumed).
async fn distinct_keys(broker: &Broker, queue: &str, n: usize) -> anyhow::Result<usize> {
    let channel = broker.channel().await?;
    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..n {
        let Some(msg) = channel.basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true }).await? else {
            break;
        };
        for o in reelfleet_core::s3event::parse_event(&msg.delivery.data)? {
            keys.insert(o.key);
        }
    }
    Ok(keys.len())
}

/// `ingest`: S3 events relayed from SQS (moto's server) to `<ns>.uploads` by
/// the bridge, with publisher confirms and deletes after them, against the
/// ceiling of the same SQS server drained by a bare receive-and-delete loop
/// (no broker) with the same batch size and as many pollers.
async fn ingest(args: &[String]) -> anyhow::Result<()> {
    use reelfleet_bridge::SqsBridge;
    let events = arg(args, "--events", 3000)?;
    let pollers = arg(args, "--pollers", 4)?;
    let moto = reelfleet_tests::moto::Moto::start().await?;
    let sqs = moto.sqs();
    println!("ingest: {events} S3 events in SQS (moto's server), {pollers} pollers of batches of 10");

    // Ceiling: receive 10, delete 10, nothing else.
    let ceiling_url = sqs.create_queue().queue_name("bench-ceiling").send().await?.queue_url.context("queue url")?;
    fill_sqs(&sqs, &ceiling_url, events).await?;
    let drained = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..pollers {
        let (sqs, url, drained) = (sqs.clone(), ceiling_url.clone(), drained.clone());
        tasks.push(tokio::spawn(async move {
            use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
            while drained.load(Ordering::SeqCst) < events {
                let got = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await?;
                let entries: Vec<_> = got
                    .messages()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle()?)
                            .build()
                            .ok()
                    })
                    .collect();
                if entries.is_empty() {
                    continue;
                }
                let n = entries.len();
                sqs.delete_message_batch().queue_url(&url).set_entries(Some(entries)).send().await?;
                drained.fetch_add(n, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ceiling_secs = t0.elapsed().as_secs_f64();

    // The bridge: same queue contents, `pollers` bridges, counted on the broker.
    let mut settings = bench_settings("ingest");
    let queue_url = sqs.create_queue().queue_name("bench-bridge").send().await?.queue_url.context("queue url")?;
    fill_sqs(&sqs, &queue_url, events).await?;
    settings.sqs.queue_url = queue_url;
    settings.sqs.endpoint = Some(moto.url.clone());
    settings.sqs.access_key = Secret::new("testing");
    settings.sqs.secret_key = Secret::new("testing");
    settings.sqs.wait_secs = 1;
    let broker = Broker::new(&settings.broker, "reelfleet-bench")?;
    let topology = Topology::from_settings(&settings);
    broker.declare(&topology).await?;
    let ingest_queue = topology.queue(WorkQueue::Ingest);
    let channel = broker.channel().await?;
    let depth = |channel: lapin::Channel, q: String| async move {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .map(|q| q.message_count() as usize)
    };
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let mut bridges = Vec::new();
    for _ in 0..pollers {
        // One registry each, as separate bridge processes have.
        let bridge = SqsBridge::new(&settings, broker.clone(), &Metrics::new(), Readiness::default())?;
        let stop = stop.clone();
        bridges.push(tokio::spawn(async move { bridge.run(stop).await }));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while depth(channel.clone(), ingest_queue.clone()).await? < events {
        if Instant::now() > deadline {
            bail!(
                "the bridge relayed {} of {events} events in 600 s",
                depth(channel.clone(), ingest_queue.clone()).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bridge_secs = t0.elapsed().as_secs_f64();
    // Deleted from SQS after the confirms: wait until the queue is empty too.
    let sqs_url = settings.sqs.queue_url.clone();
    loop {
        let left = reelfleet_tests::moto::messages_left(&sqs, &sqs_url).await?;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} messages still in SQS after the relay");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_secs = t0.elapsed().as_secs_f64();
    stop.cancel();
    for b in bridges {
        let _ = b.await;
    }
    let relayed = depth(channel.clone(), ingest_queue.clone()).await?;
    // Count distinct keys too: SQS delivers at least once (moto under concurrent
    // receives does hand a message to two pollers now and then), which ingest's
    // job id absorbs; a loss is a failure.
    let distinct = distinct_keys(&broker, &ingest_queue, relayed).await?;
    delete_namespace(&broker, &topology).await;
    if distinct != events {
        bail!("{distinct} distinct objects reached {ingest_queue}, expected {events}: an event was lost");
    }

    let bridge_rate = events as f64 / bridge_secs;
    let ceiling_rate = events as f64 / ceiling_secs;
    println!("  receive + delete only (ceiling): {ceiling_rate:>8.0} events/s ({ceiling_secs:.2} s)");
    println!("  bridge, confirmed publishes:     {bridge_rate:>8.0} events/s ({bridge_secs:.2} s to the broker, {drained_secs:.2} s until SQS is empty)");
    println!(
        "  ratio bridge / ceiling: {:.3}; {relayed} events on the broker for {distinct} objects, none lost ({} redelivered by SQS)",
        bridge_rate / ceiling_rate,
        relayed - distinct
    );
    let result = serde_json::json!({
        "machine": machine(),
        "events": events,
        "pollers": pollers,
        "ceiling_events_per_sec": ceiling_rate,
        "bridge_events_per_sec": bridge_rate,
        "bridge_secs_until_sqs_empty": drained_secs,
        "ratio": bridge_rate / ceiling_rate,
        "relayed": relayed,
        "distinct_objects": distinct,
    });
    let path = write_result("ingest-bridge", &result)?;
    println!("  wrote {}", path.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("transcode") => transcode(&args[1..]).await,
        Some("overhead") => overhead(&args[1..]).await,
        Some("inference") => inference(&args[1..]).await,
        Some("scaling") => scaling(&args[1..]).await,
        Some("sandbox") => sandbox(&args[1..]).await,
        Some("ingest") => ingest(&args[1..]).await,
        Some("ingest-pull") => ingest_pull::ingest_pull(&args[1..]).await,
        Some("index") => index::index(&args[1..]).await,
        Some("memory") => memory::memory(&args[1..]).await,
        Some("console") => console::console(&args[1..]).await,
        _ => bail!("usage: reelfleet-bench transcode [--clips N] [--seconds S] | overhead [--jobs N] | inference [--jobs N] [--rate R] | scaling [--clips N] [--seconds S] | sandbox [--runs N] [--seconds S] | ingest [--events N] [--pollers P] | ingest-pull [--mib N] | index [--jobs N] [--runs R] | console [--jobs N] [--runs R] | memory [--messages N] [--source-mib N] [--window S] [--skip-deep] [--skip-source]"),
    }
}
