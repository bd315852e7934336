//! `reelfleet ledger reconcile`: the write-ahead ledger held against the
//! provider's usage log (the work is in [`crate::ledger`]). Exits 0 when they
//! match, 1 when they differ; errors exit 2 (see
//! [`Command::error_code`](super::Command::error_code)).

use super::parse_since;
use crate::ledger::{self, ReconcileOptions};
use reelfleet_core::{settings::Settings, storage::Storage};

/// Arguments of `reelfleet ledger`.
#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    action: LedgerAction,
}

/// The `reelfleet ledger` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LedgerAction {
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

/// Reconciles and prints the report.
pub async fn run(settings: Settings, args: LedgerArgs) -> anyhow::Result<i32> {
    let LedgerAction::Reconcile { since, usage_url, json } = args.action;
    let opts = ReconcileOptions { since: since.as_deref().map(parse_since).transpose()?, usage_url, progress: true };
    let report = ledger::run(&settings, &Storage::new(&settings.s3), &opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", ledger::render(&report));
    }
    Ok(if report.balanced { 0 } else { 1 })
}
