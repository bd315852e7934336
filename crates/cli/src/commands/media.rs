//! `reelfleet media plan`: prints the ffprobe and ffmpeg commands the fleet
//! runs for one analyze job of a local clip (the work is in [`crate::media`]).

use reelfleet_core::settings::Settings;
use std::{io::Write, path::PathBuf};

/// Arguments of `reelfleet media`.
#[derive(clap::Args, Debug)]
pub struct MediaArgs {
    #[command(subcommand)]
    action: MediaAction,
}

/// The `reelfleet media` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MediaAction {
    /// Print the ffprobe/ffmpeg commands of one analyze job of CLIP (ingest, preprocess,
    /// postprocess, in order, with the settings' media options), one shell-quoted line each.
    Plan {
        /// The source video, read in place.
        clip: PathBuf,
        /// Where the commands write the normalized video, keyframes and outputs.
        outdir: PathBuf,
        /// Print each word NUL-terminated and end each command with one more NUL
        /// (for `read -d ''`: no shell parsing needed to run them).
        #[arg(long)]
        print0: bool,
        /// The tier the job is taken to land in (its `media.tier_presets` preset encodes the renditions).
        #[arg(long, default_value = "medium")]
        tier: reelfleet_core::envelope::Tier,
        /// The commands the fleet ran before one decode per stage (the transcode benchmark's baseline).
        #[arg(long)]
        legacy: bool,
    },
}

/// Prints the plan.
pub async fn run(settings: Settings, args: MediaArgs) -> anyhow::Result<i32> {
    let MediaAction::Plan { clip, outdir, print0, tier, legacy } = args.action;
    let runs = crate::media::plan(&settings, &clip, &outdir, crate::media::PlanOptions { tier, legacy }).await?;
    let mut out = std::io::stdout().lock();
    for run in &runs {
        if print0 {
            out.write_all(&crate::media::null_separated(run))?;
        } else {
            writeln!(out, "{}", crate::media::shell_line(run))?;
        }
    }
    out.flush()?;
    Ok(0)
}
