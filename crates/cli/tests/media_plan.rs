//! `reelfleet media plan` prints the filter graphs the stages build (from
//! the stages' own builders, not copies) and shell lines that read back as
//! the exact argument lists.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::{media::Media, settings::Settings};
use std::{path::Path, process::Command};

fn reelfleet(args: &[&str], clip: &Path, out: &Path) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_reelfleet"))
        .args(["media", "plan"])
        .args(args)
        .arg(clip)
        .arg(out)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("reelfleet runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// `--print0` output: runs of words.
fn runs(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut runs = vec![Vec::new()];
    for word in bytes.split(|b| *b == 0) {
        match (word.is_empty(), runs.last_mut()) {
            (true, Some(run)) if !run.is_empty() => runs.push(Vec::new()),
            (false, Some(run)) => run.push(String::from_utf8_lossy(word).into_owned()),
            _ => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

#[tokio::test]
async fn the_plan_holds_the_stages_own_graphs_and_reads_back_from_shell() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip one.mp4");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine", "-t", "2", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .expect("ffmpeg runs");
    assert!(made.success());
    let out = dir.path().join("out");
    let printed = runs(&reelfleet(&["--print0"], &clip, &out));
    let words: Vec<&str> = printed.iter().flatten().map(String::as_str).collect();

    // What the stages build for this clip with the default settings.
    let settings = Settings::default();
    let media = Media::new(settings.media.clone()).unwrap();
    let probe = media.probe(&clip).await.unwrap();
    let duration = probe.duration().unwrap();
    let frame = reelfleet_preprocess::ffmpeg::normalized_frame(&probe, &settings.preprocess).unwrap();
    let vmaf = media.has_filter("libvmaf").await;
    let keyframes = reelfleet_preprocess::ffmpeg::keyframe_count(&settings.preprocess);
    let preset = settings.media.tier_presets.of(reelfleet_core::envelope::Tier::Medium);
    // The ladder as postprocess plans it for the normalized video preprocess made.
    let made = reelfleet_preprocess::ffmpeg::normalized_encode(&media, &settings.preprocess);
    let encoding = reelfleet_postprocess::ffmpeg::Encoding {
        preset,
        segment_secs: settings.media.hls_segment_secs,
        fps: frame.fps.into(),
        measure: !vmaf,
        audio_copy: true,
    };
    let size = (frame.width, frame.height);
    let ladder = reelfleet_postprocess::plan_ladder(size, Some(&made), &settings.postprocess, &encoding);
    assert!(ladder.iter().any(|r| r.copy), "a 720p clip's 720p H.264 rendition is the normalized video, copied");
    let sizes: Vec<(&str, u32, u32)> =
        ladder.iter().filter(|r| !r.copy).map(|r| (r.name.as_str(), r.width, r.height)).collect();
    let graphs = vec![
        reelfleet_preprocess::ffmpeg::single_pass_graph(frame, keyframes, duration),
        reelfleet_postprocess::ffmpeg::ladder_graph(&ladder, settings.postprocess.sprite_frames, duration),
    ];
    for graph in &graphs {
        assert!(words.contains(&graph.as_str()), "the plan lacks the stage's graph {graph}");
    }
    let quality = reelfleet_postprocess::ffmpeg::quality_graph(&sizes, vmaf);
    assert_eq!(words.contains(&quality.as_str()), vmaf, "a filter pass measures only for VMAF: {quality}");
    if !vmaf {
        // The one encoded rendition (H.265) measures itself, into its own CSV file.
        let h265 = ladder.iter().find(|r| r.encoder == "libx265").unwrap();
        let csv = reelfleet_postprocess::ffmpeg::x265_stats_file(&out, h265);
        let params = words.iter().find(|w| w.contains("psnr=1:ssim=1")).expect("x265 measures");
        assert!(params.contains(&format!("csv={}", csv.display()).replace(' ', "\\ ")), "{params}");
    }
    // One decode of the source in preprocess; the ladder decodes the reference once (and a VMAF pass once more).
    let reads = |runs: &[Vec<String>], file: &str| {
        runs.iter()
            .filter(|r| r[0] == "ffmpeg")
            .filter(|r| r.windows(2).any(|w| w[0] == "-i" && w[1].ends_with(file)))
            .count()
    };
    assert_eq!(reads(&printed, "clip one.mp4"), 2, "ingest's decode check and preprocess's single pass");
    assert_eq!(reads(&printed, "normalized.mp4"), 1 + usize::from(vmaf), "the ladder (and the VMAF pass)");
    assert!(printed.iter().any(|r| r.windows(2).any(|w| w[0] == "-preset" && w[1] == preset)));

    // The legacy plan (the benchmark's baseline) lists the per-output commands of before, every rendition encoded.
    let renditions = reelfleet_postprocess::plan_renditions(frame.width, frame.height);
    let legacy = runs(&reelfleet(&["--print0", "--legacy"], &clip, &out));
    assert_eq!(reads(&legacy, "clip one.mp4"), 2, "decode check and normalize");
    assert_eq!(
        reads(&legacy, "normalized.mp4"),
        4 + 2 * renditions.len(),
        "complexity, keyframes, an encode and a check per rendition, the poster, the sprite"
    );
    let legacy_words: Vec<&str> = legacy.iter().flatten().map(String::as_str).collect();
    for r in &renditions {
        let graph = reelfleet_postprocess::ffmpeg::legacy::quality_graph(r.width, r.height, vmaf);
        assert!(legacy_words.contains(&graph.as_str()), "the legacy plan lacks {graph}");
    }
    assert!(legacy_words.contains(&reelfleet_preprocess::ffmpeg::COMPLEXITY_GRAPH));

    let decode_check = reelfleet_ingest::ffmpeg::decode_check_args(&media, &clip);
    assert!(printed.iter().any(|r| r.ends_with(&decode_check)), "the plan lacks ingest's decode check");

    // The default output: one shell line per run, reading back as the same words.
    let text = String::from_utf8(reelfleet(&[], &clip, &out)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), printed.len());
    for (line, run) in lines.iter().zip(&printed) {
        let back = Command::new("sh").arg("-c").arg(format!("printf '%s\\0' {line}")).output().unwrap();
        assert_eq!(runs(&[back.stdout, vec![0]].concat()), std::slice::from_ref(run), "{line}");
    }
}
