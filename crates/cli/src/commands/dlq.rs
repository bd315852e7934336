//! `reelfleet dlq`: list, show, replay, purge, export and import dead
//! letters (the work is in [`crate::dlq`]); this module owns the filters on
//! the command line and the tables.

use super::parse_since;
use crate::dlq::{self, DlqFilter};
use anyhow::Context;
use reelfleet_core::{broker::Broker, settings::Settings};
use std::path::PathBuf;

/// Arguments of `reelfleet dlq`.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
}

/// Filters shared by the dlq commands.
#[derive(clap::Args, Debug, Clone)]
pub struct DlqFilterArgs {
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

impl DlqFilterArgs {
    fn build(&self, limit: Option<usize>) -> anyhow::Result<DlqFilter> {
        Ok(DlqFilter {
            stage: self.stage.clone(),
            error_class: self.error_class.clone(),
            job: self.job.clone(),
            since: self.since.as_deref().map(parse_since).transpose()?,
            limit,
            ids: None,
        })
    }
}

/// The `reelfleet dlq` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DlqAction {
    /// List dead letters (they stay in their queues).
    Ls {
        /// Which dead letters: stage, error class, job, age.
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
        /// Which dead letters: stage, error class, job, age.
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
        /// Which dead letters: stage, error class, job, age.
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Required: without it the matching dead letters are only counted.
        #[arg(long)]
        yes: bool,
    },
    /// Write dead letters as JSON lines to stdout (they stay in their queues).
    Export {
        /// Which dead letters: stage, error class, job, age.
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Put exported dead letters back into their dead-letter queues.
    Import {
        /// A file written by `dlq export` (`-` for stdin).
        file: PathBuf,
    },
}

/// Runs one dlq subcommand.
pub async fn run(settings: Settings, args: DlqArgs) -> anyhow::Result<i32> {
    let settings = &settings;
    match args.action {
        DlqAction::Ls { filter, json } => {
            let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
            let held = dlq::fetch(settings, &broker, &filter.build(None)?).await?;
            let letters: Vec<_> = held.letters().cloned().collect();
            held.release().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print_letters(&letters);
            }
        }
        DlqAction::Show { id } => {
            let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
            let held = dlq::fetch(settings, &broker, &DlqFilter::default()).await?;
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
        }
        DlqAction::Replay { filter, limit, rate, dry_run } => {
            let report = dlq::replay(settings, &filter.build(limit)?, rate, dry_run).await?;
            if dry_run {
                println!("would replay {} dead letter(s): {}", report.matched, report.ids.join(" "));
            } else {
                println!("replayed {} of {} dead letter(s)", report.replayed, report.matched);
            }
            for (id, why) in &report.refused {
                println!("not replayed: {id}: {why} (its signature is not the fleet's; `dlq purge` removes it)");
            }
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
        }
        DlqAction::Export { filter } => {
            let mut out = std::io::stdout().lock();
            let n = dlq::export(settings, &filter.build(None)?, &mut out).await?;
            eprintln!("exported {n} dead letter(s)");
        }
        DlqAction::Import { file } => {
            let n = if file.as_os_str() == "-" {
                dlq::import(settings, &mut std::io::stdin().lock()).await?
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                dlq::import(settings, &mut std::io::BufReader::new(f)).await?
            };
            println!("imported {n} dead letter(s)");
        }
    }
    Ok(0)
}

fn print_letters(letters: &[dlq::DeadLetter]) {
    println!("{:<32} {:<11} {:<9} {:<13} {:>3} {:<32} REASON", "ID", "STAGE", "CLASS", "CODE", "ATT", "JOB");
    for d in letters {
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
