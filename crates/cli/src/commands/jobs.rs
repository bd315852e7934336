//! The commands that read jobs: `reelfleet jobs` (the job index, filtered
//! and paged), `reelfleet status JOB_ID` (one manifest) and
//! `reelfleet route --explain JOB_ID` (why it got its tier and model).

use crate::ops;
use reelfleet_core::{manifest::JobManifest, settings::Settings};
use reelfleet_index::{JobFilter, JobRow, Page};

/// Arguments of `reelfleet jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Only jobs with this status (ingest, preprocess, inference, postprocess, completed, failed).
    #[arg(long)]
    status: Option<String>,
    /// Only jobs of this tier.
    #[arg(long)]
    tier: Option<String>,
    /// Only jobs answered by this model.
    #[arg(long)]
    model: Option<String>,
    /// Only jobs created since: RFC 3339, or a duration ago such as 30m, 2h, 1d.
    #[arg(long)]
    since: Option<String>,
    /// Only jobs that cost more than this many USD.
    #[arg(long)]
    cost_above: Option<f64>,
    /// Only jobs whose source key contains this text (case-blind).
    #[arg(long)]
    search: Option<String>,
    /// Jobs per page, newest first (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// The page after this cursor (the `next` a previous page printed).
    #[arg(long)]
    after: Option<String>,
    /// Print JSON: `{"jobs": [...], "next": cursor or null}`.
    #[arg(long)]
    json: bool,
}

impl JobsArgs {
    fn filter(&self) -> anyhow::Result<JobFilter> {
        Ok(JobFilter {
            status: self.status.clone(),
            tier: self.tier.clone(),
            model: self.model.clone(),
            since_ms: self.since.as_deref().map(super::parse_since).transpose()?.map(|t| t.timestamp_millis()),
            cost_above: self.cost_above,
            search: self.search.clone(),
        })
    }
}

/// Lists one page of jobs from the index.
pub async fn run(settings: Settings, args: JobsArgs) -> anyhow::Result<i32> {
    let index = crate::index::open(&settings).await?;
    let page = index.list(&args.filter()?, args.limit, args.after.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
    } else {
        print_page(&page);
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

fn print_page(page: &Page) {
    println!(
        "{:<32} {:<8} {:<11} {:<8} {:<17} {:>10} {:<20}  SOURCE",
        "JOB", "KIND", "STATUS", "TIER", "MODEL", "COST USD", "CREATED"
    );
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for j in &page.jobs {
        println!(
            "{:<32} {:<8} {:<11} {:<8} {:<17} {:>10.6} {:<20}  s3://{}/{}{}",
            j.job_id,
            dash(&j.kind),
            j.status,
            dash(&j.tier),
            dash(&j.model),
            j.cost_usd,
            created(j),
            dash(&j.bucket),
            dash(&j.key),
            j.error_message.as_ref().map(|m| format!("  error: {m}")).unwrap_or_default()
        );
    }
    match &page.next {
        Some(next) => println!("{} jobs; next page: --after {next}", page.jobs.len()),
        None => println!("{} jobs; last page", page.jobs.len()),
    }
}

fn created(j: &JobRow) -> String {
    chrono::DateTime::from_timestamp_millis(j.created_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
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
        let q = match (o.psnr_db, o.ssim, &o.identical_to) {
            (Some(p), Some(s), _) => format!("  PSNR {p:.2} dB SSIM {s:.4}"),
            (_, _, Some(reference)) => format!("  copy of {reference} (identical, not scored)"),
            _ => String::new(),
        };
        println!("output   {:<12} {:<5} {}x{}  {}{q}", o.name, o.codec, o.width, o.height, o.key);
    }
    if let Some(e) = &m.error {
        println!("error    [{}] {} {}: {}", e.stage, e.class, e.code, e.message);
    }
}
