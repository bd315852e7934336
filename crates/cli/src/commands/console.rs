//! `reelfleet console` (serve the web console until SIGTERM/SIGINT) and
//! `reelfleet console account` (an account entry with its argon2 hash).

use crate::console::{auth, Console};
use anyhow::Context;
use reelfleet_core::{
    runtime::shutdown_signal,
    settings::{ConsoleRole, Settings},
};
use std::{io::BufRead, sync::Arc};
use tokio_util::sync::CancellationToken;

/// Arguments of `reelfleet console`.
#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Address to listen on (default: `console.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// `account` makes an account entry instead of serving.
    #[command(subcommand)]
    action: Option<ConsoleAction>,
}

/// The `reelfleet console` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ConsoleAction {
    /// Print a `[[console.accounts]]` entry: the password is read from the
    /// first line of stdin, or made up and printed with `--generate`.
    Account(AccountArgs),
}

/// Arguments of `reelfleet console account`.
#[derive(clap::Args, Debug)]
pub struct AccountArgs {
    /// Login name (letters, digits, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// `viewer` (reads only) or `operator` (may replay and purge).
    #[arg(long, value_parser = ["viewer", "operator"], default_value = "viewer")]
    role: String,
    /// Make up a random password and print it (on stderr) instead of reading stdin.
    #[arg(long)]
    generate: bool,
}

/// Serves the console, or makes an account entry.
pub async fn run(settings: Settings, args: ConsoleArgs) -> anyhow::Result<i32> {
    if let Some(ConsoleAction::Account(a)) = args.action {
        return account(a);
    }
    let listen = args.listen.unwrap_or_else(|| settings.console.listen.clone());
    let console = Console::new(Arc::new(settings)).await?;
    let stop = CancellationToken::new();
    let (addr, task) = console.serve(&listen, stop.clone()).await?;
    eprintln!("reelfleet console: http://{addr}/");
    shutdown_signal().await;
    stop.cancel();
    let _ = task.await;
    Ok(0)
}

fn account(a: AccountArgs) -> anyhow::Result<i32> {
    let role: ConsoleRole = a.role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let ok_name = !a.name.is_empty()
        && a.name.len() <= 64
        && a.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(ok_name, "--name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'", a.name);
    let password = if a.generate {
        let p = auth::generate_password();
        eprintln!("password for {}: {p}", a.name);
        p
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        anyhow::ensure!(
            p.chars().count() >= 12,
            "the password (first line of stdin) must be at least 12 characters; or pass --generate"
        );
        p
    };
    let hash = auth::hash_password(&password)?;
    println!(
        "[[console.accounts]]\nname = {}\npassword_hash = {}\nrole = \"{}\"",
        toml::Value::String(a.name.clone()),
        toml::Value::String(hash),
        role.as_str()
    );
    Ok(0)
}
