//! Operator commands: submit uploads, follow jobs, read manifests, inspect queues.

use anyhow::{bail, Context};
use reelfleet_core::{
    broker::Broker,
    envelope::{Quality, SourceObject},
    manifest::{JobManifest, JobStatus, ManifestStore, PromptDocument},
    settings::Settings,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use serde::Serialize;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

/// What `submit` uploads.
#[derive(Clone, Debug, Default)]
pub struct SubmitRequest {
    /// Local files to upload, each a job: videos, or `*.json` prompt documents.
    pub files: Vec<PathBuf>,
    /// A prompt to generate a video from.
    pub prompt: Option<String>,
    /// Seconds of generated video.
    pub duration_seconds: f64,
    /// Priority 1 to 5.
    pub priority: Option<u8>,
    /// Requested quality (resolution of a generated video).
    pub quality: Option<Quality>,
}

/// One uploaded submission.
#[derive(Clone, Debug, Serialize)]
pub struct Submitted {
    /// The job it becomes.
    pub job_id: String,
    /// The upload bucket it went to.
    pub bucket: String,
    /// Its key there: `<batch>/<file name>`, or `<batch>/prompt.json` for a prompt.
    pub key: String,
    /// `analyze` or `generate`.
    pub kind: &'static str,
}

fn source_of(bucket: &str, key: &str, info: &reelfleet_core::storage::ObjectInfo) -> SourceObject {
    SourceObject { bucket: bucket.into(), key: key.into(), size: info.size, etag: info.etag.clone(), version_id: None }
}

/// Uploads files and prompt documents into the upload bucket; the object
/// store's event starts each job, exactly as for any other uploader.
pub async fn submit(settings: &Settings, req: &SubmitRequest) -> anyhow::Result<Vec<Submitted>> {
    if req.files.is_empty() && req.prompt.is_none() {
        bail!("nothing to submit: give video files or --prompt TEXT");
    }
    if let Some(p) = req.priority {
        if !(1..=5).contains(&p) {
            bail!("--priority must be 1 to 5, not {p}");
        }
    }
    let storage = Storage::new(&settings.s3);
    let bucket = &settings.s3.upload_bucket;
    let batch = format!(
        "submissions/{}/{}",
        chrono::Utc::now().format("%Y-%m-%d"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut out = Vec::new();
    for file in &req.files {
        let meta = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", file.display());
        }
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", file.display()))?;
        let key = format!("{batch}/{name}");
        let mut metadata = HashMap::new();
        if let Some(p) = req.priority {
            metadata.insert(reelfleet_ingest::META_PRIORITY.to_string(), p.to_string());
        }
        if let Some(q) = req.quality {
            metadata.insert(reelfleet_ingest::META_QUALITY.to_string(), q.as_str().to_string());
        }
        let content_type = if reelfleet_ingest::is_prompt_key(name) { "application/json" } else { "video/mp4" };
        let info = storage
            .upload_with_metadata(bucket, &key, file, content_type, metadata)
            .await
            .with_context(|| format!("cannot upload {} to s3://{bucket}/{key}", file.display()))?;
        let kind = if reelfleet_ingest::is_prompt_key(name) { "generate" } else { "analyze" };
        out.push(Submitted { job_id: source_of(bucket, &key, &info).job_id(), bucket: bucket.clone(), key, kind });
    }
    if let Some(prompt) = &req.prompt {
        let doc = PromptDocument {
            prompt: prompt.clone(),
            duration_seconds: req.duration_seconds,
            resolution: req.quality.unwrap_or(Quality::P720),
            priority: req.priority.unwrap_or(3),
        };
        let body = serde_json::to_vec_pretty(&doc)?;
        reelfleet_ingest::parse_prompt(&body).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let dir = tempfile_dir()?;
        let path = dir.join("prompt.json");
        std::fs::write(&path, &body)?;
        let key = format!("{batch}/prompt.json");
        let info = storage
            .upload(bucket, &key, &path, "application/json")
            .await
            .with_context(|| format!("cannot upload the prompt to s3://{bucket}/{key}"))?;
        let _ = std::fs::remove_dir_all(&dir);
        out.push(Submitted {
            job_id: source_of(bucket, &key, &info).job_id(),
            bucket: bucket.clone(),
            key,
            kind: "generate",
        });
    }
    Ok(out)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("reelfleet-submit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Follows jobs until each is completed or failed, showing progress; returns the final manifests.
pub async fn wait(
    settings: &Settings,
    jobs: &[Submitted],
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<Vec<JobManifest>> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let store = ManifestStore::new(Storage::new(&settings.s3), settings.s3.work_bucket.clone());
    let multi = MultiProgress::with_draw_target(if progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let tty = progress && !multi.is_hidden();
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}").expect("valid template");
    let bars: Vec<ProgressBar> = jobs
        .iter()
        .map(|_| {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        })
        .collect();
    let started = Instant::now();
    let mut last: Vec<Option<String>> = vec![None; jobs.len()];
    let mut done: Vec<Option<JobManifest>> = vec![None; jobs.len()];
    loop {
        for (i, job) in jobs.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let manifest = store.load(&job.job_id).await.ok().flatten();
            let status = manifest.as_ref().map(|m| m.status.to_string()).unwrap_or_else(|| "queued".into());
            let line = format!("{} {} [{}] {}", &job.job_id[..12], job.key, job.kind, status);
            bars[i].set_message(line.clone());
            if last[i].as_deref() != Some(status.as_str()) {
                if progress && !tty {
                    eprintln!("{:>6.1}s {line}", started.elapsed().as_secs_f64());
                }
                last[i] = Some(status.clone());
            }
            if let Some(m) = manifest.filter(|m| matches!(m.status, JobStatus::Completed | JobStatus::Failed)) {
                let reason = m.error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default();
                bars[i].finish_with_message(format!("{} {} {}{reason}", &job.job_id[..12], job.key, m.status));
                done[i] = Some(m);
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if started.elapsed() > timeout {
            for b in &bars {
                b.abandon();
            }
            let pending: Vec<_> =
                jobs.iter().zip(&done).filter(|(_, d)| d.is_none()).map(|(j, _)| j.job_id.clone()).collect();
            bail!(
                "timed out after {} s waiting for {} job(s): {}",
                timeout.as_secs(),
                pending.len(),
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    Ok(done.into_iter().flatten().collect())
}

/// A job's manifest.
pub async fn status(settings: &Settings, job_id: &str) -> anyhow::Result<JobManifest> {
    let store = ManifestStore::new(Storage::new(&settings.s3), settings.s3.work_bucket.clone());
    store
        .load(job_id)
        .await
        .with_context(|| format!("cannot read the manifest of {job_id}"))?
        .with_context(|| format!("no job {job_id} in s3://{}", settings.s3.work_bucket))
}

/// Depth and consumers of one queue.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QueueStats {
    /// The queue's full name, namespace included.
    pub name: String,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered, not yet acknowledged (`None` without the management API).
    pub unacked: Option<u64>,
    /// Consumers attached now (one per worker replica consuming it).
    pub consumers: u64,
    /// Messages published into the queue per second, recently (management API only).
    pub publish_rate: Option<f64>,
    /// Messages acknowledged per second, recently (management API only).
    pub ack_rate: Option<f64>,
    /// Where the figures come from: `management` (the management API) or
    /// `passive-declare` (no unacked count, no rates).
    pub source: &'static str,
}

impl QueueStats {
    /// Ready + unacked: what a worker fleet still has to finish. Without the
    /// management API only the ready count is known.
    pub fn depth(&self) -> u64 {
        self.ready + self.unacked.unwrap_or(0)
    }
}

/// Stats of every queue of the namespace: from the management API when it
/// answers, else from passive declares (no unacked count, no rates).
pub async fn queues(settings: &Settings) -> anyhow::Result<Vec<QueueStats>> {
    let topology = Topology::from_settings(settings);
    queue_stats(settings, &topology.all_queue_names()).await
}

/// Stats of the named queues, from the management API when it answers, else
/// from passive declares.
pub async fn queue_stats(settings: &Settings, names: &[String]) -> anyhow::Result<Vec<QueueStats>> {
    let vhost = vhost_of(settings.broker.url.expose());
    match queues_from_management(settings.broker.management_url.expose(), &vhost, names).await {
        Ok(stats) => return Ok(stats),
        Err(e) => tracing::debug!(error = %e, "Management API unavailable, using passive declares"),
    }
    let broker = Broker::new(&settings.broker, "reelfleet-cli")?;
    let mut out = Vec::new();
    for name in names {
        // A failed passive declare closes the channel, so each gets its own.
        let channel = broker.channel().await.context("cannot connect to RabbitMQ")?;
        let opts = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        match channel.queue_declare(name.as_str().into(), opts, Default::default()).await {
            Ok(q) => out.push(QueueStats {
                name: name.clone(),
                ready: q.message_count().into(),
                unacked: None,
                consumers: q.consumer_count().into(),
                publish_rate: None,
                ack_rate: None,
                source: "passive-declare",
            }),
            Err(_) => bail!("queue {name} does not exist: run `reelfleet topology declare`"),
        }
        let _ = channel.close(200, "done".into()).await;
    }
    Ok(out)
}

/// The vhost of an AMQP URL, percent-encoded for the management API's paths
/// (`%2F` for the default vhost).
fn vhost_of(amqp_url: &str) -> String {
    let path = url::Url::parse(amqp_url).map(|u| u.path().trim_start_matches('/').to_string()).unwrap_or_default();
    if path.is_empty() {
        "%2F".into()
    } else {
        path
    }
}

async fn queues_from_management(base: &str, vhost: &str, names: &[String]) -> anyhow::Result<Vec<QueueStats>> {
    let url = url::Url::parse(base)?;
    let (user, pass) = (url.username().to_string(), url.password().unwrap_or("").to_string());
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    let resp = http
        .get(format!("{}/api/queues/{vhost}", clean.as_str().trim_end_matches('/')))
        .basic_auth(user, Some(pass))
        .send()
        .await?
        .error_for_status()?;
    let all: Vec<serde_json::Value> = resp.json().await?;
    let by_name: BTreeMap<&str, &serde_json::Value> =
        all.iter().filter_map(|q| Some((q["name"].as_str()?, q))).collect();
    names
        .iter()
        .map(|n| {
            let q = by_name.get(n.as_str()).with_context(|| format!("queue {n} does not exist"))?;
            let rate = |field: &str| Some(q["message_stats"][field]["rate"].as_f64().unwrap_or(0.0));
            // A queue declared seconds ago has no counts until the next stats emission.
            let (Some(ready), Some(unacked)) = (q["messages_ready"].as_u64(), q["messages_unacknowledged"].as_u64())
            else {
                bail!("the management API has no counts for {n} yet");
            };
            Ok(QueueStats {
                name: n.clone(),
                ready,
                unacked: Some(unacked),
                consumers: q["consumers"].as_u64().unwrap_or(0),
                publish_rate: rate("publish_details"),
                ack_rate: rate("ack_details"),
                source: "management",
            })
        })
        .collect()
}

/// Work queue names in pipeline order, for display.
pub fn work_queue_names(settings: &Settings) -> Vec<String> {
    let topology = Topology::from_settings(settings);
    WorkQueue::all().into_iter().map(|q| topology.queue(q)).collect()
}

/// A JSON summary of finished jobs (what `scripts/demo` writes).
pub fn summarize(all: &[JobManifest]) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = all
        .iter()
        .map(|m| {
            let stages: BTreeMap<&str, f64> =
                m.stages.iter().map(|(k, t)| (k.as_str(), t.duration_ms as f64 / 1000.0)).collect();
            serde_json::json!({
                "job_id": m.job_id,
                "kind": m.kind,
                "source": format!("s3://{}/{}", m.source.bucket, m.source.key),
                "status": m.status,
                "tier": m.tier,
                "tier_reason": m.preprocess.as_ref().map(|p| p.tier_reason.clone()),
                "complexity": m.preprocess.as_ref().and_then(|p| p.complexity.as_ref()).map(|c| c.score),
                "model": m.inference.as_ref().map(|i| i.model.clone()),
                "input_tokens": m.inference.as_ref().map(|i| i.input_tokens),
                "output_tokens": m.inference.as_ref().map(|i| i.output_tokens),
                "cost_usd": m.cost_usd(),
                "stage_seconds": stages,
                "outputs": m.outputs.iter().map(|o| serde_json::json!({
                    "name": o.name, "key": o.key, "codec": o.codec, "width": o.width, "height": o.height,
                    "duration_s": o.duration_s, "bitrate": o.bitrate, "psnr_db": o.psnr_db, "ssim": o.ssim,
                    "encode": o.encode, "identical_to": o.identical_to,
                })).collect::<Vec<_>>(),
                "error": m.error,
            })
        })
        .collect();
    let completed = all.iter().filter(|m| m.status == JobStatus::Completed).count();
    serde_json::json!({
        "jobs": jobs,
        "completed": completed,
        "failed": all.len() - completed,
        "total_cost_usd": all.iter().map(JobManifest::cost_usd).sum::<f64>(),
    })
}

/// Why a job got its tier and its model, in words.
pub fn explain_route(settings: &Settings, m: &JobManifest) -> String {
    use std::fmt::Write;
    let p = &settings.preprocess;
    let mut out = String::new();
    let _ = writeln!(out, "job {} ({}), status {}", m.job_id, m.kind, m.status);
    let _ = writeln!(
        out,
        "inputs to routing: priority {}, requested quality {}",
        m.priority,
        m.quality.map(|q| q.as_str()).unwrap_or("none")
    );
    match m.preprocess.as_ref().and_then(|pp| pp.complexity.as_ref()) {
        Some(c) => {
            let _ = writeln!(
                out,
                "complexity {:.3} (motion {:.2}/255, {:.1} scene changes a minute, {:.4} bits per pixel); thresholds: low below {}, high from {}",
                c.score, c.motion, c.scene_changes_per_min, c.bits_per_pixel, p.complexity_low_below, p.complexity_high_from
            );
        }
        None => {
            let _ = writeln!(
                out,
                "complexity: not measured ({})",
                if m.kind == reelfleet_core::envelope::JobKind::Generate {
                    "a generate job"
                } else {
                    "not preprocessed yet"
                }
            );
        }
    }
    let _ = writeln!(out, "rules in order: priority 5 -> critical; priority 4 -> high; quality 4k -> high; quality 720p -> low; then complexity");
    match (&m.tier, &m.preprocess) {
        (Some(t), Some(pp)) => {
            let _ = writeln!(out, "tier {t}: {}", pp.tier_reason);
        }
        (Some(t), None) => {
            let _ = writeln!(out, "tier {t}");
        }
        _ => {
            let _ = writeln!(out, "tier: not assigned yet");
        }
    }
    if let Some(t) = m.tier {
        let ts = settings.inference.tier(t);
        let _ = writeln!(
            out,
            "tier {t} routes to {} (fallback {}), batches of up to {} jobs or {} ms",
            ts.model,
            ts.fallback_model.as_deref().unwrap_or("none"),
            ts.batch_size,
            ts.max_wait_ms
        );
        if let Some(b) = ts.daily_budget_usd {
            let _ = writeln!(out, "tier {t} daily budget ${b} ({:?} when spent)", ts.on_budget);
        }
    }
    if let Some(i) = &m.inference {
        let via = match &i.fallback_from {
            Some(primary) => format!(" as fallback for {primary}, which was cooling down after repeated failures"),
            None => String::new(),
        };
        let _ = writeln!(out, "answered by {}{via}; request shared by {} job(s)", i.model, i.jobs_in_request);
        let _ =
            writeln!(out, "ledger: {} input + {} output tokens = ${:.6}", i.input_tokens, i.output_tokens, i.cost_usd);
    }
    for c in &m.charges {
        let _ = writeln!(
            out,
            "  charge {} {}: {} in + {} out tokens = ${:.6}{}",
            c.model,
            c.request_id.as_deref().unwrap_or("-"),
            c.input_tokens,
            c.output_tokens,
            c.usd,
            if c.answered { "" } else { " (answer unusable, job asked again)" }
        );
    }
    out
}
