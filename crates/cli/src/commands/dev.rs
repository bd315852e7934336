//! `reelfleet dev` (the embedded stack with all four workers) and
//! `reelfleet simulator` (the provider simulator alone), both running until
//! SIGTERM/SIGINT.

use crate::{
    dev::{DevOptions, DevStack},
    fleet::StageName,
};
use reelfleet_core::{runtime::shutdown_signal, settings::Settings};
use reelfleet_devstack::{serve_simulator, SimulatorConfig};
use std::path::PathBuf;

/// Arguments of `reelfleet dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
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
    /// Port of the web console (on 127.0.0.1).
    #[arg(long, default_value_t = 9200)]
    console_port: u16,
    /// Do not serve the web console.
    #[arg(long)]
    no_console: bool,
}

/// Starts the embedded stack, prints where it listens, drains it on a signal.
pub async fn run(settings: Settings, args: DevArgs) -> anyhow::Result<i32> {
    let DevArgs { data_dir, namespace, s3_port, sim_port, no_workers, console_port, no_console } = args;
    let stages = if no_workers { Vec::new() } else { StageName::EVERY.to_vec() };
    let opts = DevOptions { data_dir, namespace, s3_port, sim_port, stages, console: !no_console };
    let stack = DevStack::start(settings, opts).await?;
    let console = if no_console {
        None
    } else {
        let console = crate::console::Console::new(stack.settings.clone()).await?;
        let (addr, _task) = console.serve(&format!("127.0.0.1:{console_port}"), stack.shutdown.clone()).await?;
        Some(addr)
    };
    eprintln!(
        "reelfleet dev: S3 {} (bucket {}), simulator {}, health http://{}/readyz, namespace {}\n  other commands: reelfleet --config {} <command>\n  Ctrl-C to stop",
        stack.settings.s3.endpoint,
        stack.settings.s3.upload_bucket,
        stack.settings.inference.base_url,
        stack.fleet.health_addr,
        stack.settings.namespace,
        stack.config_path.display()
    );
    if let Some(addr) = console {
        match &stack.console_password {
            Some(p) => {
                eprintln!("  console http://{addr}/ (user operator, password {p}: made for this run, shown once)")
            }
            None => eprintln!("  console http://{addr}/ (accounts from [console] in the settings)"),
        }
    }
    match stack.intake {
        Some(addr) => eprintln!("  intake API http://{addr}/v1/jobs"),
        None => eprintln!("  intake API off: no [[intake.clients]] (make one: reelfleet intake client --id NAME)"),
    }
    shutdown_signal().await;
    eprintln!("reelfleet dev: draining");
    stack.stop().await;
    Ok(0)
}

/// Arguments of `reelfleet simulator`.
#[derive(clap::Args, Debug)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
}

/// Serves the provider simulator until a signal.
pub async fn run_simulator(settings: Settings, args: SimulatorArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !settings.inference.api_key.expose().is_empty(),
        "inference.api_key is not set: the simulator answers only callers that present it"
    );
    let config = SimulatorConfig {
        api_key: settings.inference.api_key.expose().to_string(),
        ffmpeg: settings.media.ffmpeg.clone(),
        ..Default::default()
    };
    let sim = serve_simulator(&args.listen, config).await?;
    eprintln!("reelfleet simulator: {} (OpenAI-compatible chat, signed video generation)", sim.base_url());
    shutdown_signal().await;
    Ok(0)
}
