//! `reelfleet backfill s3://bucket/prefix [--since T] [--watch INTERVAL]`:
//! what is already in a bucket becomes jobs (see [`crate::backfill`]).

use crate::backfill::{Backfill, PassReport, Target};
use indicatif::{ProgressBar, ProgressStyle};
use reelfleet_core::settings::Settings;
use std::time::Duration;

/// Arguments of `reelfleet backfill`.
#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// The bucket and key prefix to list, `s3://bucket/prefix`.
    target: Target,
    /// Only objects written at or after this time: RFC 3339 or a duration ago (30m, 2h, 1d).
    #[arg(long, value_parser = super::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Keep listing every INTERVAL seconds, announcing only what is new since the
    /// last pass (the position is kept in the work bucket); runs until SIGTERM/SIGINT.
    #[arg(long, value_name = "INTERVAL")]
    watch: Option<u64>,
    /// Print each pass's report as a JSON line instead of a progress bar.
    #[arg(long)]
    json: bool,
}

/// Runs one pass, or passes until a signal with `--watch`.
pub async fn run(settings: Settings, args: BackfillArgs) -> anyhow::Result<i32> {
    let BackfillArgs { target, since, watch, json } = args;
    if watch == Some(0) {
        anyhow::bail!("--watch must be at least 1 second");
    }
    let mut backfill = Backfill::new(&settings, target.clone(), since, watch.is_some()).await?;
    if let (Some(p), false) = (backfill.position(), json) {
        if let Some(mark) = p.mark {
            eprintln!("{target}: continuing after {mark} ({} objects announced before)", p.announced_total);
        }
    }
    loop {
        let report = if json {
            backfill.pass(|_| {}).await?
        } else {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            let report = backfill.pass(|r| bar.set_message(describe(&target, r))).await;
            bar.finish_and_clear();
            report?
        };
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", describe(&target, &report));
        }
        let Some(secs) = watch else { return Ok(0) };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = reelfleet_core::runtime::shutdown_signal() => return Ok(0),
        }
    }
}

fn describe(target: &Target, r: &PassReport) -> String {
    format!(
        "{target}: {} listed, {} announced ({:.1} MB), {} already announced, {} skipped",
        r.listed,
        r.announced,
        r.bytes as f64 / 1e6,
        r.seen,
        r.skipped
    )
}
