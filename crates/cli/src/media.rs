//! The ffprobe and ffmpeg runs the fleet makes for one analyze job, listed
//! without a broker or S3: the ingest, preprocess and postprocess stages'
//! own argument builders (their `ffmpeg` modules) applied to a local clip.
//! `scripts/lib/baseline-transcode.sh` replays them as the transcode
//! benchmark's baseline.

use anyhow::Context;
use reelfleet_core::{
    media::{Media, ToolCommand},
    settings::Settings,
};
use std::path::Path;

/// Every run, in order, of one analyze job of `clip` (ingest's probe and
/// decode check, preprocess's normalize, complexity and keyframes,
/// postprocess's renditions with their quality checks, poster and sprite),
/// the files it makes written to `outdir`, the normalized video standing in
/// for the reference postprocess downloads. Probes `clip` and asks ffmpeg
/// for libvmaf, as the stages do; the normalized video's duration is the
/// clip's (the fleet reads it from the normalized file, which can differ by
/// a frame), so rates and seek times derived from it can differ in the last
/// decimals. The runs are listed without the bounds the stages add from the
/// validated input (`-t`, `-frames:v`, `-fs`; see `media::Bounds`) and
/// without the sandbox and limit wrappers (`sandbox::Runner`).
pub async fn plan(settings: &Settings, clip: &Path, outdir: &Path) -> anyhow::Result<Vec<ToolCommand>> {
    let media = Media::new(settings.media.clone())?;
    let probe = media.probe(clip).await.with_context(|| format!("probing {}", clip.display()))?;
    let mut runs = reelfleet_ingest::ffmpeg::plan(&media, clip, &probe);
    let (preprocess, frame) = reelfleet_preprocess::ffmpeg::plan(&media, &settings.preprocess, clip, &probe, outdir)?;
    runs.extend(preprocess);
    let vmaf = media.has_filter("libvmaf").await;
    runs.extend(reelfleet_postprocess::ffmpeg::plan(
        &media,
        &settings.postprocess,
        &outdir.join(reelfleet_preprocess::ffmpeg::NORMALIZED),
        (frame.width, frame.height),
        probe.duration().unwrap_or(0.0),
        vmaf,
        outdir,
    ));
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
