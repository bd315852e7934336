//! `reelfleet submit`: uploads videos or a generation prompt, and with
//! `--wait` follows the jobs to the end and prints a summary table.

use crate::ops;
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
    let SubmitArgs { files, prompt, duration, priority, quality, wait, timeout, json, summary } = args;
    let req = ops::SubmitRequest { files, prompt, duration_seconds: duration, priority, quality };
    let submitted = ops::submit(&settings, &req).await?;
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
