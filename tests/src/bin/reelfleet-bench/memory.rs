//! `memory [--messages N] [--source-mib N] [--window S] [--kinds a,b] [--skip-deep] [--skip-source]`:
//! the peak resident set (`VmHWM` of `/proc/<pid>/status`, read here, never
//! reported by the worker) of real `reelfleet worker` processes:
//!
//! - **deep queues**: every worker kind (ingest, preprocess, each inference
//!   tier, postprocess, pull, webhooks, index) started with N messages (10,000)
//!   already waiting in its queue, all at once, until its queue is empty or
//!   the window is over. The messages are what each queue carries (S3 events
//!   for ingest, signed envelopes, signed lifecycle events for webhooks and
//!   the index) for jobs the store does not know, so every one is read,
//!   claimed or checked, and dead-lettered (or, for webhooks, found to have
//!   no target; for the index, written into the dev stack's SQLite): the
//!   consume and settle path at its full pace, with only prefetch and
//!   batching between the queue and the worker's memory. The broker's
//!   unacked count is polled too, to show what the worker held.
//! - **a large source**: a raw 1080p video of N MiB (2048), made once with
//!   ffmpeg and cached under `bench/cache/`, uploaded by multipart
//!   (`reelfleet submit`'s upload), through ingest, preprocess, inference and
//!   postprocess workers with default media settings (sandbox, limits,
//!   timeouts); the workers' peaks, and the largest ffmpeg/ffprobe process
//!   seen under each (sampled, so a lower bound).

use super::{arg, bench_settings, machine, write_result};
use anyhow::{bail, Context};
use reelfleet_cli::{dev::DevStack, ops};
use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, JobRequest, SourceObject, Tier, SIGNATURE_HEADER},
    signing::Signer,
    topology::{Topology, WorkQueue},
};
use reelfleet_tests::fleet::{delete_namespace, free_port, reelfleet_binary, start_dev};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;
/// The goals, in MiB.
const DEEP_GOAL_MIB: f64 = 64.0;
const SOURCE_GOAL_MIB: f64 = 200.0;

/// One worker kind: its name in the table, `reelfleet worker` arguments, its queue.
struct Kind {
    label: &'static str,
    args: &'static [&'static str],
    queue: WorkQueue,
}

const KINDS: &[Kind] = &[
    Kind { label: "ingest", args: &["ingest"], queue: WorkQueue::Ingest },
    Kind { label: "preprocess", args: &["preprocess"], queue: WorkQueue::Preprocess },
    Kind { label: "inference-low", args: &["inference", "--tier", "low"], queue: WorkQueue::Inference(Tier::Low) },
    Kind {
        label: "inference-medium",
        args: &["inference", "--tier", "medium"],
        queue: WorkQueue::Inference(Tier::Medium),
    },
    Kind { label: "inference-high", args: &["inference", "--tier", "high"], queue: WorkQueue::Inference(Tier::High) },
    Kind {
        label: "inference-critical",
        args: &["inference", "--tier", "critical"],
        queue: WorkQueue::Inference(Tier::Critical),
    },
    Kind { label: "postprocess", args: &["postprocess"], queue: WorkQueue::Postprocess },
    Kind { label: "pull", args: &["pull"], queue: WorkQueue::Pull },
    Kind { label: "webhooks", args: &["webhooks"], queue: WorkQueue::Webhooks },
    Kind { label: "index", args: &["index"], queue: WorkQueue::Index },
];

/// A line of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// Every process below `pid` (children of each of its threads, recursively).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// What the sampler saw of one worker process.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// `VmHWM` at the last sample, in KiB: the kernel's own peak.
    peak_kib: u64,
    /// `VmRSS` when it became ready, in KiB.
    ready_kib: u64,
    /// The largest `VmHWM` of a process below it (ffmpeg, ffprobe, their sandbox), in KiB.
    child_peak_kib: u64,
    /// The child process of that peak (`/proc/<pid>/comm`).
    child_name: String,
}

/// A running `reelfleet worker` process.
struct Worker {
    label: String,
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl Worker {
    async fn start(config: &Path, args: &[&str], label: &str, dir: &Path) -> anyhow::Result<Self> {
        let health = free_port();
        let log = dir.join(format!("{label}.log"));
        let child = tokio::process::Command::new(reelfleet_binary()?)
            .arg("--config")
            .arg(config)
            .arg("worker")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REELFLEET_RUNTIME__HEALTH_ADDR", format!("127.0.0.1:{health}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting reelfleet worker {}", args.join(" ")))?;
        let pid = child.id().context("worker pid")?;
        let mut worker = Self { label: label.to_string(), child, pid, log };
        let ready = format!("http://127.0.0.1:{health}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
            if Instant::now() > deadline || worker.child.try_wait()?.is_some() {
                bail!("worker {label} did not get ready: {}", worker.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(worker)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// SIGTERM, then the drain; a worker that does not exit in 60 s is killed.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await;
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
            bail!("worker {} did not stop within 60 s of SIGTERM", self.label);
        }
        Ok(())
    }
}

/// Samples every worker's `VmHWM` (and its children's) every 200 ms until `stop`.
fn sampler(
    workers: Vec<(String, u32)>,
    stop: CancellationToken,
) -> (Arc<Mutex<BTreeMap<String, Seen>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<BTreeMap<String, Seen>>> = Arc::new(Mutex::new(
        workers
            .iter()
            .map(|(label, pid)| {
                let rss = status_kib(*pid, "VmRSS").unwrap_or(0);
                (label.clone(), Seen { ready_kib: rss, ..Default::default() })
            })
            .collect(),
    ));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                for (label, pid) in &workers {
                    let peak = status_kib(*pid, "VmHWM");
                    let children: Vec<(u32, u64)> =
                        descendants(*pid).into_iter().filter_map(|c| Some((c, status_kib(c, "VmHWM")?))).collect();
                    let mut seen = seen.lock().expect("samples");
                    let s = seen.entry(label.clone()).or_default();
                    if let Some(p) = peak {
                        s.peak_kib = s.peak_kib.max(p);
                    }
                    for (c, kib) in children {
                        if kib > s.child_peak_kib {
                            s.child_peak_kib = kib;
                            s.child_name = std::fs::read_to_string(format!("/proc/{c}/comm"))
                                .unwrap_or_default()
                                .trim()
                                .to_string();
                        }
                    }
                }
                if stop.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    });
    (seen, task)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The body and headers of message `i` for `kind`'s queue: a job the store does not know.
fn message(
    kind: &Kind,
    i: usize,
    settings: &reelfleet_core::settings::Settings,
    signer: &Signer,
    queue: &str,
) -> Outgoing {
    let key = format!("memory/{i:05}/source.mp4");
    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let body = match kind.queue {
        WorkQueue::Ingest => {
            // The one unsigned input: an S3 event, as AWS sends it, for an object that is not there.
            let event = serde_json::json!({"Records": [{
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": chrono::Utc::now().to_rfc3339(),
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": settings.s3.upload_bucket, "arn": format!("arn:aws:s3:::{}", settings.s3.upload_bucket)},
                    "object": {"key": key, "size": 10_485_760, "eTag": format!("{i:032x}"), "sequencer": format!("{i:016X}")},
                },
            }]});
            return Outgoing::to_queue(queue, serde_json::to_vec(&event).expect("event serializes"));
        }
        WorkQueue::Webhooks => serde_json::to_vec(&serde_json::json!({
            "event": "job.failed",
            "job_id": job_id,
            "at": chrono::Utc::now().to_rfc3339(),
            "stage": "preprocess",
            "error": {"class": "permanent", "code": "bad_input", "message": "memory benchmark"},
        }))
        .expect("event serializes"),
        // The index folds every event into its database (the dev stack's SQLite): a new job's first event.
        WorkQueue::Index => {
            let mut event = reelfleet_core::events::Event::new(reelfleet_core::events::JOB_CREATED, &job_id);
            event.kind = Some("analyze".into());
            event.bucket = Some(settings.s3.upload_bucket.clone());
            event.key = Some(key.clone());
            event.to_bytes()
        }
        q => {
            let source = SourceObject {
                bucket: settings.s3.upload_bucket.clone(),
                key: key.clone(),
                size: 10_485_760,
                etag: Some(format!("{i:032x}")),
                version_id: None,
            };
            let mut env = Envelope::new(JobKind::Analyze, source);
            env.job_id = job_id.clone();
            match q {
                WorkQueue::Inference(tier) => {
                    env.tier = Some(tier);
                    env.inputs = (0..4).map(|n| format!("jobs/{job_id}/preprocess/keyframe-{n}.jpg")).collect();
                }
                WorkQueue::Postprocess => env.inputs = vec![format!("jobs/{job_id}/preprocess/normalized.mp4")],
                WorkQueue::Pull => {
                    // A private address: the SSRF guard refuses it before any connection.
                    env.request = Some(JobRequest {
                        via: "bench".into(),
                        origin_url: Some(format!("http://10.255.0.1/{key}")),
                        ..Default::default()
                    })
                }
                _ => {}
            }
            env.to_bytes()
        }
    };
    let signature = signer.sign(queue, &body);
    Outgoing::to_queue(queue, body).header(SIGNATURE_HEADER, HeaderValue::Text(signature))
}

/// Publishes `n` messages for every kind (64 unconfirmed at a time).
async fn fill(broker: &Broker, dev: &DevStack, topology: &Topology, kinds: &[&Kind], n: usize) -> anyhow::Result<()> {
    let signer = Arc::new(Signer::from_settings(&dev.settings.signing, &dev.settings.namespace)?);
    let publisher = broker.publisher().await?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for kind in kinds {
        let queue = topology.queue(kind.queue);
        for i in 0..n {
            let msg = message(kind, i, &dev.settings, &signer, &queue);
            let permit = sem.clone().acquire_owned().await?;
            let p = publisher.clone();
            tasks.spawn(async move {
                let r = p.publish(&msg).await;
                drop(permit);
                r
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The deep-queue run: every kind at once, each with `n` messages waiting.
async fn deep(kinds: &[&Kind], n: usize, window: Duration) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::Builder::new().prefix("reelfleet-bench-memory-").tempdir()?;
    let dev = start_dev(bench_settings("memory"), dir.path(), &[]).await?;
    let broker = Broker::new(&dev.settings.broker, "bench")?;
    let topology = Topology::from_settings(&dev.settings);
    let result = deep_run(&dev, &broker, &topology, dir.path(), kinds, n, window).await;
    dev.stop().await;
    delete_namespace(&broker, &topology).await;
    result
}

async fn deep_run(
    dev: &DevStack,
    broker: &Broker,
    topology: &Topology,
    dir: &Path,
    kinds: &[&Kind],
    n: usize,
    window: Duration,
) -> anyhow::Result<serde_json::Value> {
    eprintln!("deep queues: publishing {n} messages into each of {} queues", kinds.len());
    let t0 = Instant::now();
    fill(broker, dev, topology, kinds, n).await?;
    eprintln!("deep queues: published in {:.1} s; starting one worker per queue", t0.elapsed().as_secs_f64());
    let names: Vec<String> = kinds.iter().map(|k| topology.queue(k.queue)).collect();
    let mut workers = Vec::new();
    for kind in kinds {
        workers.push(Worker::start(&dev.config_path, kind.args, kind.label, dir).await?);
    }
    let stop = CancellationToken::new();
    let (seen, sampling) = sampler(workers.iter().map(|w| (w.label.clone(), w.pid)).collect(), stop.clone());
    let started = Instant::now();
    let mut peak_unacked: BTreeMap<String, u64> = BTreeMap::new();
    let mut left: BTreeMap<String, u64> = BTreeMap::new();
    let mut drained_after: BTreeMap<String, f64> = BTreeMap::new();
    loop {
        // The management API may miss a poll under load; the next one counts.
        let stats = ops::queue_stats(&dev.settings, &names).await.unwrap_or_default();
        for (kind, s) in kinds.iter().zip(&stats) {
            let unacked = s.unacked.unwrap_or(0);
            let e = peak_unacked.entry(kind.label.to_string()).or_default();
            *e = (*e).max(unacked);
            left.insert(kind.label.to_string(), s.depth());
            if s.depth() == 0 {
                drained_after.entry(kind.label.to_string()).or_insert(started.elapsed().as_secs_f64());
            }
        }
        // The webhooks and index queues also take the lifecycle event of every other queue's dead
        // letter, so they drain last, if at all: the run ends when the others have.
        let last = |k: &&&Kind| matches!(k.queue, WorkQueue::Webhooks | WorkQueue::Index);
        let only_last = kinds.iter().all(|k| last(&k));
        let others_drained =
            kinds.iter().filter(|k| only_last || !last(k)).all(|k| drained_after.contains_key(k.label));
        if others_drained || started.elapsed() > window {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    sampling.await?;
    let seen = seen.lock().expect("samples").clone();
    for w in workers {
        w.stop().await?;
    }
    let mut rows = serde_json::Map::new();
    println!(
        "{:<20} {:>9} {:>9} {:>10} {:>10} {:>9} {:>11} {:>6}",
        "WORKER", "QUEUED", "LEFT", "DRAINED S", "READY MiB", "PEAK MiB", "MAX UNACKED", "GOAL"
    );
    for kind in kinds {
        let s = &seen[kind.label];
        let remaining = left.get(kind.label).copied().unwrap_or(0);
        let drained = drained_after.get(kind.label).copied();
        let ok = mib(s.peak_kib) <= DEEP_GOAL_MIB;
        println!(
            "{:<20} {:>9} {:>9} {:>10} {:>10.1} {:>9.1} {:>11} {:>6}",
            kind.label,
            n,
            remaining,
            drained.map(|d| format!("{d:.0}")).unwrap_or_else(|| "-".into()),
            mib(s.ready_kib),
            mib(s.peak_kib),
            peak_unacked.get(kind.label).copied().unwrap_or(0),
            if ok { "ok" } else { "OVER" }
        );
        rows.insert(
            kind.label.to_string(),
            serde_json::json!({
                "queue": topology.queue(kind.queue),
                "queued": n,
                "left_at_end": remaining,
                "drained_after_s": drained,
                "rss_when_ready_mib": mib(s.ready_kib),
                "peak_rss_mib": mib(s.peak_kib),
                "max_unacked_seen": peak_unacked.get(kind.label),
                "within_goal": ok,
            }),
        );
    }
    Ok(serde_json::json!({
        "messages_per_queue": n,
        "window_s": window.as_secs(),
        "run_s": started.elapsed().as_secs_f64(),
        "goal_mib": DEEP_GOAL_MIB,
        "prefetch": dev.settings.broker.prefetch,
        "workers": rows,
    }))
}

/// A raw 1080p video (yuv420p, 30 fps, with audio) of at least `mib` MiB,
/// made once and kept in `bench/cache/`.
fn large_source(mib: u64) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from("bench/cache");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("source-{mib}mib-1080p-raw.mkv"));
    if path.exists() {
        return Ok(path);
    }
    let frame = 1920 * 1080 * 3 / 2;
    let frames = (mib * MIB).div_ceil(frame);
    let seconds = frames as f64 / 30.0;
    eprintln!("making {} ({frames} raw 1080p frames, {seconds:.1} s)", path.display());
    let partial = dir.join("partial.mkv");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-frames:v", &frames.to_string(), "-t", &format!("{seconds:.3}")])
        .args(["-c:v", "rawvideo", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"])
        .arg(&partial)
        .status()?;
    if !status.success() {
        bail!("ffmpeg could not make the large source");
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The large-source run: one job through real ingest, preprocess, inference and postprocess workers.
async fn source(mib_wanted: u64) -> anyhow::Result<serde_json::Value> {
    let path = large_source(mib_wanted)?;
    let bytes = std::fs::metadata(&path)?.len();
    let dir = tempfile::Builder::new().prefix("reelfleet-bench-memory-").tempdir()?;
    let dev = start_dev(bench_settings("memory-source"), dir.path(), &[]).await?;
    let broker = Broker::new(&dev.settings.broker, "bench")?;
    let topology = Topology::from_settings(&dev.settings);
    let result = source_run(&dev, &path, bytes, dir.path()).await;
    dev.stop().await;
    delete_namespace(&broker, &topology).await;
    // The uploaded copy and every output lived in `dir` (the embedded store and scratch): gone with it.
    drop(dir);
    result
}

async fn source_run(dev: &DevStack, path: &Path, bytes: u64, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let kinds: [(&str, &[&str]); 4] = [
        ("ingest", &["ingest"]),
        ("preprocess", &["preprocess"]),
        ("inference", &["inference"]),
        ("postprocess", &["postprocess"]),
    ];
    let mut workers = Vec::new();
    for (label, args) in kinds {
        workers.push(Worker::start(&dev.config_path, args, label, dir).await?);
    }
    let stop = CancellationToken::new();
    let (seen, sampling) = sampler(workers.iter().map(|w| (w.label.clone(), w.pid)).collect(), stop.clone());
    eprintln!("large source: uploading {} MiB by multipart and waiting for the job", bytes / MIB);
    let started = Instant::now();
    let submitted =
        ops::submit(&dev.settings, &ops::SubmitRequest { files: vec![path.to_path_buf()], ..Default::default() })
            .await?;
    let uploaded_s = started.elapsed().as_secs_f64();
    let manifests = ops::wait(&dev.settings, &submitted, Duration::from_secs(3 * 3600), false).await;
    let total_s = started.elapsed().as_secs_f64();
    stop.cancel();
    sampling.await?;
    let seen = seen.lock().expect("samples").clone();
    let tails: Vec<String> = workers.iter().map(|w| format!("{}: {}", w.label, w.log_tail())).collect();
    for w in workers {
        w.stop().await?;
    }
    let manifests = manifests?;
    let m = manifests.first().context("no manifest")?;
    if m.status != reelfleet_core::manifest::JobStatus::Completed {
        bail!("the large source's job ended {:?}:\n{}", m.status, tails.join("\n"));
    }
    let input = m.input.as_ref();
    println!("{:<14} {:>10} {:>9} {:>6} {:>24}", "WORKER", "READY MiB", "PEAK MiB", "GOAL", "LARGEST CHILD (sampled)");
    let mut rows = serde_json::Map::new();
    for (label, _) in kinds {
        let s = &seen[label];
        let goal = label != "inference";
        let ok = mib(s.peak_kib) <= SOURCE_GOAL_MIB;
        println!(
            "{label:<14} {:>10.1} {:>9.1} {:>6} {:>24}",
            mib(s.ready_kib),
            mib(s.peak_kib),
            if !goal {
                "-"
            } else if ok {
                "ok"
            } else {
                "OVER"
            },
            if s.child_peak_kib > 0 {
                format!("{} {:.1} MiB", s.child_name, mib(s.child_peak_kib))
            } else {
                "-".into()
            }
        );
        rows.insert(
            label.to_string(),
            serde_json::json!({
                "rss_when_ready_mib": mib(s.ready_kib),
                "peak_rss_mib": mib(s.peak_kib),
                "largest_child_peak_rss_mib": mib(s.child_peak_kib),
                "largest_child": s.child_name,
                "within_goal": if goal { Some(ok) } else { None },
            }),
        );
    }
    Ok(serde_json::json!({
        "source_bytes": bytes,
        "source": {
            "codec": input.map(|i| i.codec.clone()),
            "container": input.map(|i| i.container.clone()),
            "width": input.map(|i| i.width),
            "height": input.map(|i| i.height),
            "duration_s": input.map(|i| i.duration_s),
        },
        "upload_s": uploaded_s,
        "job_s": total_s,
        "goal_mib": SOURCE_GOAL_MIB,
        "s3_part_size_mib": dev.settings.s3.part_size_bytes / MIB,
        "workers": rows,
    }))
}

pub(crate) async fn memory(args: &[String]) -> anyhow::Result<()> {
    let n = arg(args, "--messages", 10_000)?;
    let source_mib = arg(args, "--source-mib", 2048)? as u64;
    let window = Duration::from_secs(arg(args, "--window", 600)? as u64);
    // A run of one part keeps the other part's figures from an earlier run.
    let earlier = std::fs::read("bench/results/memory.json").ok();
    let mut result: serde_json::Value = earlier
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    result["benchmark"] = "memory".into();
    result["machine"] = machine();
    let only: Option<Vec<&str>> =
        args.iter().position(|a| a == "--kinds").and_then(|i| args.get(i + 1)).map(|v| v.split(',').collect());
    let kinds: Vec<&Kind> = KINDS.iter().filter(|k| only.as_ref().is_none_or(|o| o.contains(&k.label))).collect();
    if !args.iter().any(|a| a == "--skip-deep") {
        result["deep_queues"] = deep(&kinds, n, window).await?;
    }
    if !args.iter().any(|a| a == "--skip-source") {
        result["large_source"] = source(source_mib).await?;
    }
    let path = write_result("memory", &result)?;
    println!("memory -> {}", path.display());
    Ok(())
}
