//! `reelfleet config check`: loads and validates the settings and prints
//! them (credentials redacted) or the REELFLEET_* variables that were applied.

use reelfleet_core::settings::{Settings, Uses};
use std::path::Path;

/// Arguments of `reelfleet config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

/// The `reelfleet config` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigAction {
    /// Load and validate the settings and the credentials a worker would refuse
    /// (missing or well-known); print the REELFLEET_* variables that were applied.
    Check {
        /// Print the effective settings as JSON (credentials redacted).
        #[arg(long)]
        json: bool,
    },
}

/// Prints the settings already loaded from `file` (and the environment).
pub fn run(settings: Settings, args: ConfigArgs, file: Option<&Path>) -> anyhow::Result<i32> {
    let ConfigAction::Check { json } = args.action;
    settings.check_credentials(Uses { provider: true, ..Default::default() })?;
    let mut applied: Vec<String> =
        std::env::vars().map(|(k, _)| k).filter(|k| k.starts_with("REELFLEET_") && k != "REELFLEET_CONFIG").collect();
    applied.sort();
    if json {
        println!("{}", serde_json::to_string_pretty(&settings.redacted())?);
    } else {
        println!(
            "settings are valid: namespace {}, file {}, {} environment overrides",
            settings.namespace,
            file.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
            applied.len()
        );
        for name in applied {
            println!("  {name}");
        }
    }
    Ok(0)
}
