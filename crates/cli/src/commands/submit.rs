//! `reelfleet submit`: uploads videos or a generation prompt, or submits
//! every source of a file (`--from`, see [`crate::submit_from`]), and with
//! `--wait` follows the jobs to the end and prints a summary table.

use crate::{ops, submit_from};
use anyhow::Context;
use reelfleet_core::{
    envelope::Quality,
    manifest::{JobManifest, JobStatus},
    settings::Settings,
};
use std::{path::PathBuf, time::Duration};

/// Arguments of `reelfleet submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Video files (or prompt documents, *.json).
    files: Vec<PathBuf>,
    /// Submit every source listed in a file, one per line: s3://bucket/key, an
    /// http(s) URL, a key in the upload bucket, or a job object as `POST /v1/jobs`
    /// takes it; `-` reads standard input. Nothing is submitted unless every line is good.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["files", "prompt", "priority", "quality"])]
    from: Option<PathBuf>,
    /// With --from: the key URL job ids are derived from (default `submit`); the
    /// same URL under the same key is the same job, a new key submits it again.
    #[arg(long, requires = "from")]
    idempotency_key: Option<String>,
    /// With --from: check every line and resolve every source, print the jobs,
    /// submit nothing.
    #[arg(long, requires = "from")]
    dry_run: bool,
    /// Generate a video from this prompt instead.
    #[arg(long)]
    prompt: Option<String>,
    /// Seconds of generated video.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Priority, 1 (lowest) to 5 (highest).
    #[arg(long)]
    priority: Option<u8>,
    /// Requested quality: 720p, 1080p or 4k.
    #[arg(long)]
    quality: Option<Quality>,
    /// Follow the jobs until they complete or fail.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// With --wait: also write a JSON summary of the jobs to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// Submits; with `--wait`, exits 2 when a job did not complete.
pub async fn run(settings: Settings, args: SubmitArgs) -> anyhow::Result<i32> {
    let SubmitArgs {
        files,
        from,
        idempotency_key,
        dry_run,
        prompt,
        duration,
        priority,
        quality,
        wait,
        timeout,
        json,
        summary,
    } = args;
    let submitted = match from {
        Some(path) => {
            let Some(submitted) = run_from(&settings, &path, idempotency_key.as_deref(), dry_run, json).await? else {
                return Ok(0);
            };
            submitted
        }
        None => {
            let req = ops::SubmitRequest { files, prompt, duration_seconds: duration, priority, quality };
            ops::submit(&settings, &req).await?
        }
    };
    if !wait {
        if json {
            println!("{}", serde_json::to_string_pretty(&submitted)?);
        } else {
            for s in &submitted {
                println!("{}  {}  s3://{}/{}", s.job_id, s.kind, s.bucket, s.key);
            }
        }
        return Ok(0);
    }
    let manifests = ops::wait(&settings, &submitted, Duration::from_secs(timeout), !json).await?;
    if let Some(path) = summary {
        std::fs::write(&path, serde_json::to_string_pretty(&ops::summarize(&manifests))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
    } else {
        print_summary(&manifests);
    }
    let failed = manifests.iter().filter(|m| m.status != JobStatus::Completed).count();
    Ok(if failed == 0 { 0 } else { 2 })
}

/// Largest `--from` file.
const MAX_FROM_BYTES: u64 = 256 << 20;

/// `submit --from`: the jobs as [`ops::Submitted`] to follow with `--wait`,
/// or `None` when there is nothing more to do (a dry run, or printed without `--wait`).
async fn run_from(
    settings: &Settings,
    path: &std::path::Path,
    key: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<Option<Vec<ops::Submitted>>> {
    let text = if path.as_os_str() == "-" {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_FROM_BYTES + 1)
            .read_to_string(&mut text)
            .context("cannot read standard input as UTF-8 text")?;
        if text.len() as u64 > MAX_FROM_BYTES {
            anyhow::bail!("standard input is above the {MAX_FROM_BYTES}-byte limit of --from");
        }
        text
    } else {
        submit_from::read(path, MAX_FROM_BYTES)?
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} {msg} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let accepted = submit_from::submit(settings, &text, key, dry_run, &Bar(bar.clone())).await;
    bar.finish_and_clear();
    let accepted = accepted?;
    if json {
        println!("{}", serde_json::to_string_pretty(&accepted)?);
    } else {
        for a in &accepted {
            println!("{}  line {:<5} {:<4} {}", a.job_id, a.line, a.source_kind, a.source);
        }
        let verb = if dry_run { "would be submitted (dry run: nothing was published)" } else { "submitted" };
        eprintln!("{} jobs {verb}", accepted.len());
    }
    Ok((!dry_run).then(|| {
        accepted
            .into_iter()
            .map(|a| {
                let (bucket, key) = a
                    .source
                    .strip_prefix("s3://")
                    .and_then(|r| r.split_once('/'))
                    .map(|(b, k)| (b.to_string(), k.to_string()))
                    .unwrap_or((String::new(), a.source.clone()));
                ops::Submitted { job_id: a.job_id, bucket, key, kind: "analyze" }
            })
            .collect()
    }))
}

struct Bar(indicatif::ProgressBar);

impl submit_from::Progress for Bar {
    fn resolved(&self, done: usize, total: usize) {
        self.0.set_message("resolving sources");
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
    fn published(&self, done: usize, total: usize) {
        self.0.set_message("publishing jobs");
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }
}

fn print_summary(all: &[JobManifest]) {
    println!(
        "{:<12} {:<8} {:<9} {:<8} {:<17} {:>6} {:>6} {:>6} {:>6} {:>10}  OUTPUTS",
        "JOB", "KIND", "STATUS", "TIER", "MODEL", "INGEST", "PREP", "INFER", "POST", "COST USD"
    );
    let secs = |m: &JobManifest, s: &str| {
        m.stages.get(s).map(|t| format!("{:.1}s", t.duration_ms as f64 / 1000.0)).unwrap_or_else(|| "-".into())
    };
    for m in all {
        let outputs: Vec<String> = m.outputs.iter().map(|o| format!("{} {}x{}", o.name, o.width, o.height)).collect();
        let detail = match &m.error {
            Some(e) => format!("failed in {}: {}", e.stage, e.message),
            None => outputs.join(", "),
        };
        println!(
            "{:<12} {:<8} {:<9} {:<8} {:<17} {:>6} {:>6} {:>6} {:>6} {:>10.6}  {}",
            &m.job_id[..12],
            m.kind,
            m.status,
            m.tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            m.inference.as_ref().map(|i| i.model.as_str()).unwrap_or("-"),
            secs(m, "ingest"),
            secs(m, "preprocess"),
            secs(m, "inference"),
            secs(m, "postprocess"),
            m.cost_usd(),
            detail
        );
    }
    let total: f64 = all.iter().map(JobManifest::cost_usd).sum();
    let completed = all.iter().filter(|m| m.status == JobStatus::Completed).count();
    println!("{completed}/{} completed, total cost ${total:.6}", all.len());
}
