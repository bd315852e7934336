//! `reelfleet index rebuild` (the job index from the manifests in the work
//! bucket) and `reelfleet index seed --jobs N` (realistic rows, for benchmarks).

use reelfleet_core::settings::Settings;

/// Arguments of `reelfleet index`.
#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    action: IndexAction,
}

#[derive(clap::Subcommand, Debug)]
enum IndexAction {
    /// Rewrite every job's row from its manifest and drop rows without one (events are kept).
    Rebuild {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fill the index with realistic rows (a busy fleet's mix of statuses, tiers and costs).
    Seed {
        /// How many jobs.
        #[arg(long)]
        jobs: usize,
        /// Spread their creation over this many days before now.
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
}

/// Runs `index rebuild` or `index seed`.
pub async fn run(settings: Settings, args: IndexArgs) -> anyhow::Result<i32> {
    let index = crate::index::open(&settings).await?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match args.action {
        IndexAction::Rebuild { json } => {
            let report = crate::index::rebuild(&settings, &index, progress).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "indexed {} jobs from their manifests, removed {} rows without one",
                    report.jobs, report.removed
                );
            }
        }
        IndexAction::Seed { jobs, days } => {
            let started = std::time::Instant::now();
            crate::index::seed(&index, jobs, days, progress).await?;
            println!("seeded {jobs} jobs in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    Ok(0)
}
