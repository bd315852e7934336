//! `reelfleet`: run workers, the embedded dev stack, and operator commands.
//!
//! Parses the command line, loads the settings, starts logging, runs the
//! command (see [`reelfleet_cli::commands`]) and exits with its code.

use clap::Parser;
use reelfleet_cli::commands::Cli;
use reelfleet_core::{settings::Settings, telemetry};

fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format == "json");
    let error_code = cli.command.error_code();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        let settings = Settings::load(cli.config.as_deref())?;
        cli.command.run(settings, cli.config.as_deref()).await
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(error_code);
        }
    }
}
