//! `reelfleet`: run workers, the embedded dev stack, and operator commands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use reelfleet_cli::{
    dev::{DevOptions, DevStack},
    dlq,
    fleet::{self, StageName},
    ledger, ops, scale,
};
use reelfleet_core::{
    broker::Broker,
    envelope::{Quality, Tier},
    manifest::JobManifest,
    runtime::shutdown_signal,
    settings::Settings,
    storage::Storage,
    telemetry,
    topology::{step_label, Topology, WorkQueue},
};
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "reelfleet",
    version,
    about = "A queue-driven video AI pipeline: ingest, preprocess, inference, postprocess"
)]
struct Cli {
    /// TOML settings file; REELFLEET_SECTION__FIELD environment variables override it.
    #[arg(long, global = true, env = "REELFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded S3 endpoint, the provider simulator and all four workers in one process.
    Dev {
        /// Folder for objects and the written configuration (DIR/reelfleet.toml).
        #[arg(long, default_value = ".reelfleet")]
        data_dir: PathBuf,
        /// Queue namespace (default: the settings').
        #[arg(long)]
        namespace: Option<String>,
        /// Port of the embedded S3 endpoint.
        #[arg(long, default_value_t = 9000)]
        s3_port: u16,
        /// Port of the provider simulator.
        #[arg(long, default_value_t = 9100)]
        sim_port: u16,
        /// Run only the S3 endpoint and the simulator (workers run as `reelfleet worker`).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run the AI provider simulator alone (what the compose stack uses), until SIGTERM/SIGINT.
    Simulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
    /// Run one stage's worker until SIGTERM/SIGINT.
    Worker {
        /// The stage.
        stage: StageName,
        /// Inference tiers to consume (default: all four).
        #[arg(long = "tier")]
        tiers: Vec<Tier>,
    },
    /// Upload videos or a generation prompt into the upload bucket.
    Submit {
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
    },
    /// Show one job's manifest.
    Status {
        /// Job id.
        job_id: String,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ready, unacked, consumers and recent rates per queue.
    Queues {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per worker of the Helm chart: queue depth (ready + unacked), consumers, rates and
    /// the replicas KEDA would run with the chart's values.
    Scale {
        /// Helm values file to apply over the chart's defaults (as `helm install -f`).
        #[arg(long)]
        values: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the settings (file + REELFLEET_* environment) and print them, credentials redacted.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Explain a job's routing: why it got its tier and model.
    Route {
        /// Required: print the explanation.
        #[arg(long)]
        explain: bool,
        /// Job id.
        job_id: String,
    },
    /// Dead-letter operations.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Manage the broker topology.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// The write-ahead cost ledger.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
}

#[derive(Subcommand, Debug)]
enum LedgerAction {
    /// Hold every ledger entry of the work bucket against the provider's usage log, per model and
    /// per request. Exits 0 when they match, 1 when they differ, 2 on an error.
    Reconcile {
        /// Only ledger entries recorded since this time (RFC 3339, or a duration ago such as 30m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// The provider's usage log (default: the setting inference.usage_url).
        #[arg(long)]
        usage_url: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Filters shared by the dlq commands.
#[derive(clap::Args, Debug, Clone)]
struct DlqFilterArgs {
    /// Only this stage (ingest, preprocess, inference, postprocess).
    #[arg(long)]
    stage: Option<String>,
    /// Only this error class (transient, permanent, broker).
    #[arg(long)]
    error_class: Option<String>,
    /// Only this job.
    #[arg(long)]
    job: Option<String>,
    /// Only dead letters since this time (RFC 3339, or a duration ago such as 30m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// List dead letters (they stay in their queues).
    Ls {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter, body included.
    Show {
        /// Its id (from `dlq ls`).
        id: String,
    },
    /// Put dead letters back on their work queue with attempts reset.
    Replay {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop dead letters for good.
    Purge {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Write dead letters as JSON lines to stdout (they stay in their queues).
    Export {
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Put exported dead letters back into their dead-letter queues.
    Import {
        /// A file written by `dlq export` (`-` for stdin).
        file: PathBuf,
    },
}

fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().with_context(|| format!("--since {s:?}: expected RFC 3339 or a duration like 30m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("--since {s:?}: unit must be s, m, h or d"),
    };
    Ok(chrono::Utc::now() - chrono::Duration::seconds(secs))
}

impl DlqFilterArgs {
    fn build(&self, limit: Option<usize>) -> anyhow::Result<dlq::DlqFilter> {
        Ok(dlq::DlqFilter {
            stage: self.stage.clone(),
            error_class: self.error_class.clone(),
            job: self.job.clone(),
            since: self.since.as_deref().map(parse_since).transpose()?,
            limit,
        })
    }
}

#[derive(Subcommand, Debug)]
enum TopologyAction {
    /// Declare every queue and exchange of the namespace (idempotent).
    Declare,
    /// Print the names of every queue and exchange (no broker needed).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Load and validate the settings; print the REELFLEET_* variables that were applied.
    Check {
        /// Print the effective settings as JSON (credentials redacted).
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format == "json");
    // reconcile's 1 means "the ledger differs", so its errors need a code of their own.
    let error_code = if matches!(cli.command, Command::Ledger { .. }) { 2 } else { 1 };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(error_code);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Dev { data_dir, namespace, s3_port, sim_port, no_workers } => {
            let stages = if no_workers { Vec::new() } else { StageName::ALL.to_vec() };
            let opts = DevOptions { data_dir, namespace, s3_port, sim_port, stages };
            let stack = DevStack::start(settings, opts).await?;
            eprintln!(
                "reelfleet dev: S3 {} (bucket {}), simulator {}, health http://{}/readyz, namespace {}\n  other commands: reelfleet --config {} <command>\n  Ctrl-C to stop",
                stack.settings.s3.endpoint,
                stack.settings.s3.upload_bucket,
                stack.settings.inference.base_url,
                stack.fleet.health_addr,
                stack.settings.namespace,
                stack.config_path.display()
            );
            shutdown_signal().await;
            eprintln!("reelfleet dev: draining");
            stack.stop().await;
            Ok(0)
        }
        Command::Simulator { listen } => {
            let config = reelfleet_devstack::SimulatorConfig {
                api_key: settings.inference.api_key.expose().to_string(),
                ffmpeg: settings.media.ffmpeg.clone(),
                ..Default::default()
            };
            let sim = reelfleet_devstack::serve_simulator(&listen, config).await?;
            eprintln!("reelfleet simulator: {} (OpenAI-compatible chat, signed video generation)", sim.base_url());
            shutdown_signal().await;
            Ok(0)
        }
        Command::Worker { stage, tiers } => {
            let settings = Arc::new(settings);
            let storage = Storage::new(&settings.s3);
            let metrics = reelfleet_core::metrics::Metrics::new();
            let stages = fleet::build_stages(&settings, &storage, &metrics, &[stage], &tiers).await?;
            let shutdown = CancellationToken::new();
            let handle = fleet::start(settings.clone(), stages, metrics, shutdown.clone()).await?;
            tracing::info!(stage = ?stage, health = %handle.health_addr, namespace = %settings.namespace, "Worker started");
            shutdown_signal().await;
            tracing::info!("Shutdown requested; draining");
            shutdown.cancel();
            handle.wait().await;
            tracing::info!("Worker stopped");
            Ok(0)
        }
        Command::Submit { files, prompt, duration, priority, quality, wait, timeout, json, summary } => {
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
            let failed =
                manifests.iter().filter(|m| m.status != reelfleet_core::manifest::JobStatus::Completed).count();
            Ok(if failed == 0 { 0 } else { 2 })
        }
        Command::Status { job_id, json } => {
            let m = ops::status(&settings, &job_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_manifest(&m);
            }
            Ok(0)
        }
        Command::Jobs { json } => {
            let all = ops::jobs(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_jobs(&all);
            }
            Ok(0)
        }
        Command::Queues { json } => {
            let stats = ops::queues(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let rate = |r: Option<f64>| r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<40} {:>8} {:>8} {:>9} {:>8} {:>8}",
                    "QUEUE", "READY", "UNACKED", "CONSUMERS", "IN/S", "OUT/S"
                );
                for q in &stats {
                    let unacked = q.unacked.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<40} {:>8} {:>8} {:>9} {:>8} {:>8}",
                        q.name,
                        q.ready,
                        unacked,
                        q.consumers,
                        rate(q.publish_rate),
                        rate(q.ack_rate)
                    );
                }
                if stats.iter().any(|q| q.source == "passive-declare") {
                    println!("note: the management API did not answer: unacked counts and rates are unknown");
                }
            }
            Ok(0)
        }
        Command::Dlq { action } => run_dlq(&settings, action).await,
        Command::Ledger { action: LedgerAction::Reconcile { since, usage_url, json } } => {
            let opts = ledger::ReconcileOptions {
                since: since.as_deref().map(parse_since).transpose()?,
                usage_url,
                progress: true,
            };
            let report = ledger::run(&settings, &Storage::new(&settings.s3), &opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ledger::render(&report));
            }
            Ok(if report.balanced { 0 } else { 1 })
        }
        Command::Route { explain, job_id } => {
            if !explain {
                anyhow::bail!("use `reelfleet route --explain JOB_ID`");
            }
            let m = ops::status(&settings, &job_id).await?;
            print!("{}", ops::explain_route(&settings, &m));
            Ok(0)
        }
        Command::Scale { values, json } => {
            let chart = scale::ChartScaling::load(values.as_deref())?;
            if chart.namespace != settings.namespace {
                eprintln!(
                    "note: the values name queue namespace {:?}; reading the settings' namespace {:?}",
                    chart.namespace, settings.namespace
                );
            }
            let rows = scale::plan(&settings, &chart).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", scale::render_table(&rows));
            }
            Ok(0)
        }
        Command::Config { action: ConfigAction::Check { json } } => {
            let mut applied: Vec<String> = std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("REELFLEET_") && k != "REELFLEET_CONFIG")
                .collect();
            applied.sort();
            if json {
                println!("{}", serde_json::to_string_pretty(&settings.redacted())?);
            } else {
                println!(
                    "settings are valid: namespace {}, file {}, {} environment overrides",
                    settings.namespace,
                    cli.config.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
                    applied.len()
                );
                for name in applied {
                    println!("  {name}");
                }
            }
            Ok(0)
        }
        Command::Topology { action: TopologyAction::Show { json } } => {
            let topology = Topology::from_settings(&settings);
            let queues: Vec<serde_json::Value> = WorkQueue::all()
                .into_iter()
                .map(|q| {
                    serde_json::json!({
                        "queue": topology.queue(q),
                        "stage": q.stage(),
                        "tier": match q { WorkQueue::Inference(t) => Some(t.to_string()), _ => None },
                        "retry": topology.retry_queues(q),
                        "deferred": topology.deferred_queue(q),
                        "broker_dead_letter": topology.broker_dead_letter_queue(q),
                        "dead_letter": topology.dead_letter_queue(q),
                    })
                })
                .collect();
            if json {
                let doc = serde_json::json!({
                    "namespace": topology.namespace(),
                    "work_queues": queues,
                    "events_exchange": topology.events_exchange(),
                    "uploads_exchange": topology.uploads_exchange(),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                let steps: Vec<String> = topology.retry_steps().iter().map(|s| step_label(*s)).collect();
                println!(
                    "{:<34} {:<12} {:<9} QUEUES BESIDE IT (W = the work queue)",
                    "WORK QUEUE (W)", "STAGE", "TIER"
                );
                for q in queues {
                    println!(
                        "{:<34} {:<12} {:<9} W.retry.{{{}}}, W.deferred, W.dlx, W.dlq",
                        q["queue"].as_str().unwrap_or(""),
                        q["stage"].as_str().unwrap_or(""),
                        q["tier"].as_str().unwrap_or("-"),
                        steps.join(",")
                    );
                }
                println!("retry queues: one per delay step, each with that TTL back into W");
                println!("W.deferred: budget pauses; W.dlx: the broker's dead letters (delivery limit), moved to W.dlq by the worker");
                println!("events exchange: {}", topology.events_exchange());
                println!("uploads exchange (bucket notifications -> ingest): {}", topology.uploads_exchange());
            }
            Ok(0)
        }
        Command::Topology { action: TopologyAction::Declare } => {
            let broker = Broker::new(&settings.broker, "reelfleet-cli")?;
            let topology = Topology::from_settings(&settings);
            broker.declare(&topology).await.context("cannot declare the topology")?;
            println!(
                "declared {} queues and exchanges {}",
                topology.all_queue_names().len(),
                topology.exchange_names().join(", ")
            );
            Ok(0)
        }
    }
}

async fn run_dlq(settings: &Settings, action: DlqAction) -> anyhow::Result<i32> {
    match action {
        DlqAction::Ls { filter, json } => {
            let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
            let held = dlq::fetch(settings, &broker, &filter.build(None)?).await?;
            let letters: Vec<_> = held.letters().cloned().collect();
            held.release().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                println!(
                    "{:<32} {:<11} {:<9} {:<13} {:>3} {:<32} REASON",
                    "ID", "STAGE", "CLASS", "CODE", "ATT", "JOB"
                );
                for d in &letters {
                    let reason: String = d.error_message.chars().take(100).collect();
                    println!(
                        "{:<32} {:<11} {:<9} {:<13} {:>3} {:<32} {}",
                        d.id,
                        d.stage,
                        d.error_class,
                        d.error_code,
                        d.attempts,
                        d.job.as_deref().unwrap_or("-"),
                        reason
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
            Ok(0)
        }
        DlqAction::Show { id } => {
            let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
            let held = dlq::fetch(settings, &broker, &dlq::DlqFilter::default()).await?;
            let found = held.letters().find(|d| d.id == id).cloned();
            held.release().await;
            let d = found.with_context(|| format!("no dead letter {id}"))?;
            let body = match serde_json::from_slice::<serde_json::Value>(&d.body) {
                Ok(v) => v,
                Err(_) => serde_json::Value::String(String::from_utf8_lossy(&d.body).into_owned()),
            };
            let mut v = serde_json::to_value(&d)?;
            v["headers"] = serde_json::to_value(&d.headers)?;
            v["body"] = body;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        DlqAction::Replay { filter, limit, rate, dry_run } => {
            let report = dlq::replay(settings, &filter.build(limit)?, rate, dry_run).await?;
            if dry_run {
                println!("would replay {} dead letter(s): {}", report.matched, report.ids.join(" "));
            } else {
                println!("replayed {} of {} dead letter(s)", report.replayed, report.matched);
            }
            Ok(0)
        }
        DlqAction::Purge { filter, yes } => {
            let filter = filter.build(None)?;
            if !yes {
                let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
                let held = dlq::fetch(settings, &broker, &filter).await?;
                let n = held.letters().count();
                held.release().await;
                anyhow::bail!("refusing to purge {n} dead letter(s) without --yes");
            }
            println!("purged {} dead letter(s)", dlq::purge(settings, &filter).await?);
            Ok(0)
        }
        DlqAction::Export { filter } => {
            let mut out = std::io::stdout().lock();
            let n = dlq::export(settings, &filter.build(None)?, &mut out).await?;
            eprintln!("exported {n} dead letter(s)");
            Ok(0)
        }
        DlqAction::Import { file } => {
            let n = if file.as_os_str() == "-" {
                dlq::import(settings, &mut std::io::stdin().lock()).await?
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                dlq::import(settings, &mut std::io::BufReader::new(f)).await?
            };
            println!("imported {n} dead letter(s)");
            Ok(0)
        }
    }
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
    let completed = all.iter().filter(|m| m.status == reelfleet_core::manifest::JobStatus::Completed).count();
    println!("{completed}/{} completed, total cost ${total:.6}", all.len());
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
