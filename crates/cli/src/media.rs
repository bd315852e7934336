//! The ffprobe and ffmpeg runs the fleet makes for one analyze job, listed
//! without a broker or S3: the ingest, preprocess and postprocess stages'
//! own argument builders (their `ffmpeg` modules) applied to a local clip.
//! `scripts/lib/baseline-transcode.sh` replays them as the transcode
//! benchmark's baseline.

use anyhow::Context;
use reelfleet_core::{
    envelope::Tier,
    media::{Media, ToolCommand},
    settings::Settings,
};
use std::path::Path;

/// Which commands to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// The tier the job is taken to land in: its preset
    /// (`media.tier_presets`) is the renditions'. The fleet's tier comes from
    /// the complexity preprocess measures.
    pub tier: Tier,
    /// The commands the fleet ran before one decode per stage: normalize,
    /// complexity and keyframes apart, one ffmpeg per rendition, per quality
    /// check, for the poster and for the sprite, at `media.preset` (the
    /// transcode benchmark's baseline).
    pub legacy: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { tier: Tier::Medium, legacy: false }
    }
}

/// Every run, in order, of one analyze job of `clip` (ingest's probe and
/// decode check, preprocess's single pass and its probe, postprocess's
/// ladder (copying the rendition the normalized video already is, the
/// encoders measuring PSNR and SSIM), probes, and a quality check of the
/// encoded renditions the encoders cannot measure (with VMAF: every one);
/// with `legacy`, the per-output commands
/// of before), the files it makes written to `outdir`, the normalized video
/// standing in for the reference postprocess downloads. Probes `clip` and
/// asks ffmpeg for libvmaf, as the stages do; the normalized video's
/// duration is the clip's (the fleet reads it from the normalized file,
/// which can differ by a frame), so rates and seek times derived from it
/// can differ in the last decimals. The runs are listed without the bounds
/// the stages add from the validated input (`-t`, `-frames:v`, `-fs`; see
/// `media::Bounds`) and without the sandbox and limit wrappers
/// (`sandbox::Runner`). A rendition that falls below the quality floor adds
/// a re-encode and a probe of its own (and with VMAF a quality check), not listed.
pub async fn plan(
    settings: &Settings,
    clip: &Path,
    outdir: &Path,
    options: PlanOptions,
) -> anyhow::Result<Vec<ToolCommand>> {
    let media = Media::new(settings.media.clone())?;
    let probe = media.probe(clip).await.with_context(|| format!("probing {}", clip.display()))?;
    let mut runs = reelfleet_ingest::ffmpeg::plan(&media, clip, &probe);
    let normalized = outdir.join(reelfleet_preprocess::ffmpeg::NORMALIZED);
    let duration = probe.duration().unwrap_or(0.0);
    let frame = if options.legacy {
        let (preprocess, frame) =
            reelfleet_preprocess::ffmpeg::legacy::plan(&media, &settings.preprocess, clip, &probe, outdir)?;
        runs.extend(preprocess);
        frame
    } else {
        let (preprocess, frame) =
            reelfleet_preprocess::ffmpeg::plan(&media, &settings.preprocess, clip, &probe, outdir)?;
        runs.extend(preprocess);
        frame
    };
    let vmaf = media.has_filter("libvmaf").await;
    let size = (frame.width, frame.height);
    if options.legacy {
        runs.extend(reelfleet_postprocess::ffmpeg::legacy::plan(
            &media,
            &settings.postprocess,
            &normalized,
            size,
            duration,
            vmaf,
            outdir,
        ));
    } else {
        let preset = settings.media.tier_presets.of(options.tier);
        let made = reelfleet_preprocess::ffmpeg::normalized_encode(&media, &settings.preprocess);
        runs.extend(reelfleet_postprocess::ffmpeg::plan(
            &media,
            &settings.postprocess,
            &normalized,
            size,
            Some(&made),
            duration,
            frame.fps.into(),
            preset,
            vmaf,
            outdir,
        ));
    }
    Ok(runs)
}

/// `word` as one shell word: as it is when it holds only characters no
/// shell treats specially, else single-quoted.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=/.,:@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A run as one line of shell: program and arguments, each quoted.
pub fn shell_line(run: &ToolCommand) -> String {
    std::iter::once(&run.program).chain(&run.args).map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// A run for `xargs -0`-style readers: program and arguments each ended by
/// a NUL, the run ended by one more (an empty word: no run has one).
pub fn null_separated(run: &ToolCommand) -> Vec<u8> {
    let mut out = Vec::new();
    for w in std::iter::once(&run.program).chain(&run.args) {
        out.extend_from_slice(w.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_a_shell_would_read_them_otherwise() {
        assert_eq!(shell_quote("file:/tmp/out/keyframe-%02d.jpg"), "file:/tmp/out/keyframe-%02d.jpg");
        assert_eq!(shell_quote("0:a:0?"), "'0:a:0?'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("scale='min(640,iw)':-2"), r"'scale='\''min(640,iw)'\'':-2'");
    }

    #[test]
    fn a_quoted_line_reads_back_as_the_same_words() {
        let run = ToolCommand {
            program: "printf".into(),
            args: vec!["%s\\n".into(), "a b".into(), "it's".into(), "select='gte(scene\\,0)'".into(), "$HOME".into()],
        };
        let out = std::process::Command::new("sh").arg("-c").arg(shell_line(&run)).output().expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b\nit's\nselect='gte(scene\\,0)'\n$HOME\n");
    }

    #[test]
    fn null_separated_runs_end_with_an_empty_word() {
        let run = ToolCommand { program: "ffprobe".into(), args: vec!["-v".into(), "error".into()] };
        assert_eq!(null_separated(&run), b"ffprobe\0-v\0error\0\0");
    }
}
