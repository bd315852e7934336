//! `reelfleet keys generate`: a new random message signing key, printed as
//! the settings that carry it; and how to rotate to it without a message lost.

use reelfleet_core::signing::{generate_key, valid_key_id};

/// Arguments of `reelfleet keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(clap::Subcommand, Debug)]
enum KeysAction {
    /// Print a new signing key (32 random bytes as hex) with a key id.
    Generate {
        /// The key id signatures will name (default: k + today's date, UTC).
        #[arg(long)]
        id: Option<String>,
        /// `env` (REELFLEET_ variables), `toml` (a [signing] table) or `hex` (the key alone).
        #[arg(long, value_parser = ["env", "toml", "hex"], default_value = "env")]
        format: String,
    },
}

/// Runs `reelfleet keys`.
pub fn run(args: KeysArgs) -> anyhow::Result<i32> {
    let KeysAction::Generate { id, format } = args.action;
    let id = id.unwrap_or_else(|| format!("k{}", chrono::Utc::now().format("%Y%m%d")));
    anyhow::ensure!(valid_key_id(&id), "--id {id:?}: 1 to 32 letters, digits, '-' or '_'");
    let key = generate_key();
    match format.as_str() {
        "hex" => println!("{key}"),
        "toml" => println!("[signing]\nkey_id = \"{id}\"\nsecret = \"{key}\""),
        _ => println!("REELFLEET_SIGNING__KEY_ID={id}\nREELFLEET_SIGNING__SECRET={key}"),
    }
    eprintln!(
        "Keep it secret and give every worker the same one. To rotate, list the key it replaces under \
         [[signing.previous]] (key_id, secret, accept_until = now + signing.max_age_secs) on every worker first, \
         then switch signing.key_id/secret to this one."
    );
    Ok(0)
}
