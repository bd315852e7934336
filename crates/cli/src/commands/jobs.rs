//! The commands that read job manifests: `reelfleet jobs` (all of them),
//! `reelfleet status JOB_ID` (one) and `reelfleet route --explain JOB_ID`
//! (why it got its tier and model).

use crate::ops;
use reelfleet_core::{manifest::JobManifest, settings::Settings};

/// Arguments of `reelfleet jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists every job.
pub async fn run(settings: Settings, args: JobsArgs) -> anyhow::Result<i32> {
    let all = ops::jobs(&settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print_jobs(&all);
    }
    Ok(0)
}

/// Arguments of `reelfleet status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The job's id, as `submit` and `jobs` print it.
    job_id: String,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

/// Shows one job's manifest.
pub async fn run_status(settings: Settings, args: StatusArgs) -> anyhow::Result<i32> {
    let m = ops::status(&settings, &args.job_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print_manifest(&m);
    }
    Ok(0)
}

/// Arguments of `reelfleet route`.
#[derive(clap::Args, Debug)]
pub struct RouteArgs {
    /// Required: print the explanation.
    #[arg(long)]
    explain: bool,
    /// The job's id, as `submit` and `jobs` print it.
    job_id: String,
}

/// Explains one job's routing.
pub async fn run_route(settings: Settings, args: RouteArgs) -> anyhow::Result<i32> {
    if !args.explain {
        anyhow::bail!("use `reelfleet route --explain JOB_ID`");
    }
    let m = ops::status(&settings, &args.job_id).await?;
    print!("{}", ops::explain_route(&settings, &m));
    Ok(0)
}

fn print_jobs(all: &[JobManifest]) {
    println!("{:<32} {:<8} {:<11} {:<8} {:<17} {:>10}  SOURCE", "JOB", "KIND", "STATUS", "TIER", "MODEL", "COST USD");
    for m in all {
        let model = m.inference.as_ref().map(|i| i.model.as_str()).unwrap_or("-");
        let tier = m.tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<8} {:<11} {:<8} {:<17} {:>10.6}  s3://{}/{}",
            m.job_id,
            m.kind,
            m.status,
            tier,
            model,
            m.cost_usd(),
            m.source.bucket,
            m.source.key
        );
    }
}

fn print_manifest(m: &JobManifest) {
    println!("job      {}", m.job_id);
    println!("kind     {}", m.kind);
    println!("status   {}", m.status);
    println!("source   s3://{}/{}", m.source.bucket, m.source.key);
    if let Some(t) = m.tier {
        let reason = m.preprocess.as_ref().map(|p| p.tier_reason.as_str()).unwrap_or("");
        println!("tier     {t} ({reason})");
    }
    let mut stages: Vec<_> = m.stages.iter().collect();
    stages.sort_by_key(|(_, t)| t.started_at);
    for (stage, t) in stages {
        println!("stage    {stage:<12} {:>8.2} s  attempts {}", t.duration_ms as f64 / 1000.0, t.attempts);
    }
    if let Some(i) = &m.inference {
        println!("model    {}  tokens in {} out {}  cost ${:.6}", i.model, i.input_tokens, i.output_tokens, i.cost_usd);
    }
    for o in &m.outputs {
        let q = match (o.psnr_db, o.ssim) {
            (Some(p), Some(s)) => format!("  PSNR {p:.2} dB SSIM {s:.4}"),
            _ => String::new(),
        };
        println!("output   {:<12} {:<5} {}x{}  {}{q}", o.name, o.codec, o.width, o.height, o.key);
    }
    if let Some(e) = &m.error {
        println!("error    [{}] {} {}: {}", e.stage, e.class, e.code, e.message);
    }
}
