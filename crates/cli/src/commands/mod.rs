//! The command line: [`Cli`] is what `reelfleet` parses, [`Command`] one
//! variant per command, each backed by a module here that owns its
//! arguments, its work (through the library modules) and its output.
//!
//! Every command's `run` returns the process's exit code; an error exits with
//! [`Command::error_code`].
//!
//! - [`dev`]: `dev` and `simulator`.
//! - [`worker`]: the `worker` command.
//! - [`intake`]: `intake` (the API) and `intake client`.
//! - [`submit`]: the `submit` command.
//! - [`backfill`]: the `backfill` command.
//! - [`jobs`]: `jobs` (the job index), `status` and `route`.
//! - [`index`]: `index rebuild` and `index seed`.
//! - [`queues`]: the `queues` command.
//! - [`scale`]: the `scale` command.
//! - [`config`]: `config check`.
//! - [`topology`]: `topology declare` and `topology show`.
//! - [`dlq`]: `dlq ls|show|replay|purge|export|import`.
//! - [`ledger`]: `ledger reconcile`.
//! - [`media`]: `media plan`.
//! - [`console`]: `console` (the web console) and `console account`.

pub mod backfill;
pub mod config;
pub mod console;
pub mod dev;
pub mod dlq;
pub mod index;
pub mod intake;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod media;
pub mod queues;
pub mod scale;
pub mod submit;
pub mod topology;
pub mod worker;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reelfleet_core::settings::Settings;
use std::path::{Path, PathBuf};

/// `reelfleet`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "reelfleet",
    version,
    about = "A queue-driven video AI pipeline: ingest, preprocess, inference, postprocess"
)]
pub struct Cli {
    /// TOML settings file; REELFLEET_SECTION__FIELD environment variables override it.
    #[arg(long, global = true, env = "REELFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One `reelfleet` command.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the embedded S3 endpoint, the provider simulator and all four workers in one process.
    Dev(dev::DevArgs),
    /// Run the AI provider simulator alone (what the compose stack uses), until SIGTERM/SIGINT.
    Simulator(dev::SimulatorArgs),
    /// Run one stage's worker (or the SQS bridge) until SIGTERM/SIGINT.
    Worker(worker::WorkerArgs),
    /// Serve the intake API (jobs, batches, Cloud Storage push) until SIGTERM/SIGINT; `intake client` makes a client.
    Intake(intake::IntakeArgs),
    /// Upload videos or a generation prompt into the upload bucket.
    Submit(submit::SubmitArgs),
    /// Announce what is already in a bucket to ingest (`s3://bucket/prefix`); job
    /// ids are derived from each object, so running it twice never duplicates work.
    Backfill(backfill::BackfillArgs),
    /// Show one job's manifest.
    Status(jobs::StatusArgs),
    /// List jobs from the job index: filters, pages (newest first), JSON.
    Jobs(jobs::JobsArgs),
    /// The job index: `index rebuild` from the manifests, `index seed` for benchmarks.
    Index(index::IndexArgs),
    /// Ready, unacked, consumers and recent rates per queue.
    Queues(queues::QueuesArgs),
    /// Per worker of the Helm chart: queue depth (ready + unacked), consumers, rates and
    /// the replicas KEDA would run with the chart's values.
    Scale(scale::ScaleArgs),
    /// Check the settings (file + REELFLEET_* environment) and print them, credentials redacted.
    Config(config::ConfigArgs),
    /// Explain a job's routing: why it got its tier and model.
    Route(jobs::RouteArgs),
    /// Dead-letter operations.
    Dlq(dlq::DlqArgs),
    /// Manage the broker topology.
    Topology(topology::TopologyArgs),
    /// The write-ahead cost ledger.
    Ledger(ledger::LedgerArgs),
    /// Message signing keys: `keys generate` makes one.
    Keys(keys::KeysArgs),
    /// The ffprobe and ffmpeg runs of the media stages, without a broker or S3.
    Media(media::MediaArgs),
    /// Serve the web console until SIGTERM/SIGINT; `console account` makes a login.
    Console(console::ConsoleArgs),
}

impl Command {
    /// Runs the command and returns the process's exit code. `config` is the
    /// settings file the settings were loaded from, if any.
    pub async fn run(self, settings: Settings, config: Option<&Path>) -> anyhow::Result<i32> {
        match self {
            Command::Dev(args) => dev::run(settings, args).await,
            Command::Simulator(args) => dev::run_simulator(settings, args).await,
            Command::Worker(args) => worker::run(settings, args).await,
            Command::Intake(args) => intake::run(settings, args).await,
            Command::Submit(args) => submit::run(settings, args).await,
            Command::Backfill(args) => backfill::run(settings, args).await,
            Command::Status(args) => jobs::run_status(settings, args).await,
            Command::Jobs(args) => jobs::run(settings, args).await,
            Command::Index(args) => index::run(settings, args).await,
            Command::Queues(args) => queues::run(settings, args).await,
            Command::Scale(args) => scale::run(settings, args).await,
            Command::Config(args) => config::run(settings, args, config),
            Command::Route(args) => jobs::run_route(settings, args).await,
            Command::Dlq(args) => dlq::run(settings, args).await,
            Command::Topology(args) => topology::run(settings, args).await,
            Command::Ledger(args) => ledger::run(settings, args).await,
            Command::Keys(args) => keys::run(args),
            Command::Media(args) => media::run(settings, args).await,
            Command::Console(args) => console::run(settings, args).await,
        }
    }

    /// The exit code when the command fails with an error (loading the
    /// settings included).
    pub fn error_code(&self) -> i32 {
        // reconcile's 1 means "the ledger differs", so its errors need a code of their own.
        if matches!(self, Command::Ledger(_)) {
            2
        } else {
            1
        }
    }
}

/// Parses a `--since` value: RFC 3339, or a duration ago such as 30m, 2h, 1d.
pub(crate) fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().with_context(|| format!("--since {s:?}: expected RFC 3339 or a duration like 30m"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("--since {s:?}: unit must be s, m, h or d"),
    };
    n.checked_mul(unit_secs)
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|ago| chrono::Utc::now().checked_sub_signed(ago))
        .with_context(|| format!("--since {s:?}: too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn since_takes_rfc3339_or_a_duration_ago() {
        let t = parse_since("2024-05-01T12:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T10:00:00+00:00");
        let ago = chrono::Utc::now() - parse_since("2h").unwrap();
        assert!((ago.num_seconds() - 7200).abs() < 5, "{ago}");
        assert!(parse_since("5x").is_err());
        assert!(parse_since("m").is_err());
        // Too far back is an error, not a panic (the console passes its query string here).
        for s in ["99999999999999s", "9999999999d", "9223372036854775807h"] {
            assert!(parse_since(s).is_err(), "{s}");
        }
    }

    #[test]
    fn only_ledger_errors_exit_two() {
        let code = |args: &[&str]| Cli::parse_from(args).command.error_code();
        assert_eq!(code(&["reelfleet", "ledger", "reconcile"]), 2);
        assert_eq!(code(&["reelfleet", "jobs"]), 1);
        assert_eq!(code(&["reelfleet", "dlq", "ls"]), 1);
    }
}
