//! Video clips made with ffmpeg's lavfi sources, for the tests, the
//! benchmarks and the fault suite.

use anyhow::{bail, Context};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A clip to make: a lavfi video graph and a lavfi audio source, yuv420p.
#[derive(Clone, Debug)]
pub struct Clip<'a> {
    /// A lavfi video source, for example `testsrc2=size=320x240:rate=24`.
    pub video: &'a str,
    /// A lavfi audio source, for example `sine=frequency=330`.
    pub audio: &'a str,
    /// Length in seconds.
    pub seconds: f64,
    /// Output options after `-pix_fmt yuv420p` (codec, preset); ffmpeg
    /// picks by the file name's extension without them.
    pub extra: &'a [&'a str],
}

impl Clip<'_> {
    /// Writes the clip to `dir/name`.
    pub fn make(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let status = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                self.video,
                "-f",
                "lavfi",
                "-i",
                self.audio,
            ])
            .args(["-t", &self.seconds.to_string(), "-pix_fmt", "yuv420p"])
            .args(self.extra)
            .arg(&path)
            .status()
            .context("ffmpeg runs (is it installed?)")?;
        if !status.success() {
            bail!("ffmpeg could not make {name}");
        }
        Ok(path)
    }
}

/// A test's clip with a 330 Hz tone: `video` is a lavfi video source,
/// `extra` output options. Panics when ffmpeg fails.
pub fn make_clip(dir: &Path, name: &str, video: &str, seconds: f64, extra: &[&str]) -> PathBuf {
    let clip = Clip { video, audio: "sine=frequency=330", seconds, extra };
    clip.make(dir, name).unwrap_or_else(|e| panic!("{e:#}"))
}
