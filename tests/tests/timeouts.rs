//! Timeouts follow the source: an ffmpeg that hangs on a short clip is
//! killed within the short timeout that clip gets, and the timeouts a long
//! source gets (the longest the default limits accept, at 1080p) cover what
//! the fleet's own ffmpeg commands take on this machine, measured on a
//! short 1080p clip and scaled to that length.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::{
    media::{output_paths, Bounds, Media, MediaError},
    runtime::JobDeadline,
    settings::{LimitsKind, SandboxKind, Settings},
};
use reelfleet_tests::make_clip;
use std::time::{Duration, Instant};

/// ffmpeg that hangs when given an input (a decode), and is the real one
/// otherwise (the version and capability queries `Media` makes first).
fn hanging_ffmpeg(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ffmpeg-hangs");
    let pids = dir.join("pids");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a; do if [ \"$a\" = -i ]; then echo $$ >> {}; exec sleep 600; fi; done\nexec ffmpeg \"$@\"\n",
            pids.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

fn probe_bounds(clip: &std::path::Path, duration_s: f64, width: u32, height: u32) -> Bounds {
    Bounds { duration_s, width, height, fps: 24.0, input_bytes: std::fs::metadata(clip).unwrap().len() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_ffmpeg_on_a_short_clip_is_killed_within_its_short_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "short.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let bounds = probe_bounds(&clip, 2.0, 320, 240);

    // With the default settings a 2-second clip gets two minutes, not the hours a long source gets.
    let defaults = Settings::default();
    let default_secs = bounds.timeout_secs(&defaults.media);
    assert_eq!(default_secs, 124, "120 s + 8 s x 2 s x a quarter of 720p");
    let deadline = JobDeadline::from_settings(&defaults);
    let stage_secs =
        deadline.raise_to(bounds.stage_timeout_secs(&defaults.media, defaults.runtime.job_timeout_secs, 4));
    assert_eq!(stage_secs, 900 + 4 * 124, "the stage's deadline follows the clip too");

    // The same rule with a 1 s base, so the test need not wait two minutes: the hang is killed at 5 s.
    let mut media = defaults.media.clone();
    media.ffmpeg = hanging_ffmpeg(dir.path()).display().to_string();
    media.sandbox = SandboxKind::None;
    media.limits = LimitsKind::None;
    media.ffmpeg_timeout_secs = 1;
    let media = Media::new(media).unwrap().bounded(bounds);
    assert_eq!(media.ffmpeg_timeout_secs(), 5);
    let started = Instant::now();
    let args: Vec<String> =
        ["-i", &format!("file:{}", clip.display()), "-f", "null", "-"].iter().map(|s| s.to_string()).collect();
    let err = media.ffmpeg(&args).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, MediaError::Timeout { secs: 5, .. }), "{err:?}");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(8), "killed after {took:?}");
    // And the hung process is gone, not left behind.
    let pid = std::fs::read_to_string(dir.path().join("pids")).unwrap().trim().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "ffmpeg {pid} still runs: {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sources_timeouts_cover_the_fleets_ffmpeg_runs_scaled_to_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let seconds = 3.0;
    let clip = make_clip(
        dir.path(),
        "1080p.mp4",
        "testsrc2=size=1920x1080:rate=30",
        seconds,
        &["-c:v", "libx264", "-preset", "ultrafast"],
    );
    let settings = Settings::default();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let plan =
        reelfleet_cli::media::plan(&settings, &clip, &out, reelfleet_cli::media::PlanOptions::default()).await.unwrap();

    // The longest source the default limits accept, at the clip's resolution.
    let long = settings.limits.max_duration_secs;
    let scale = long / seconds;
    let bounds = Bounds { duration_s: long, width: 1920, height: 1080, fps: 30.0, input_bytes: 0 };
    let call_secs = bounds.timeout_secs(&settings.media) as f64;
    let deadline = JobDeadline::from_settings(&settings);
    let mut needs = Vec::new();
    let mut report = Vec::new();
    for run in plan.iter().filter(|r| r.program == settings.media.ffmpeg) {
        for word in &run.args {
            for path in output_paths(word) {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            }
        }
        let started = Instant::now();
        let status = std::process::Command::new(&run.program)
            .args(&run.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        let took = started.elapsed().as_secs_f64();
        assert!(status.success(), "{:?} failed", run.args);
        let needed = took * scale;
        report.push(format!("{took:.1} s on {seconds} s -> {needed:.0} s for {long} s (timeout {call_secs:.0} s)"));
        assert!(
            needed < call_secs,
            "an ffmpeg run took {took:.1} s on {seconds} s of 1080p: {needed:.0} s for a {long} s source, over its timeout of {call_secs:.0} s"
        );
        needs.push(needed);
    }
    eprintln!("{}", report.join("\n"));
    // In order: ingest's decode check (1 s decoded, whatever the length), preprocess's single pass,
    // postprocess's filter listing, its ladder (and a filter pass measuring quality where the encoders cannot).
    let [_, preprocess_needs, postprocess_needs @ ..] = needs.as_slice() else { panic!("{report:?}") };
    assert!(postprocess_needs.len() >= 2, "{report:?}");
    let postprocess_needs: f64 = postprocess_needs.iter().sum();
    // Each stage's deadline is raised to what its calls may take, within the cap (and the broker's limit).
    let preprocess = deadline.clone().raise_to(bounds.stage_timeout_secs(&settings.media, 900, 1)) as f64;
    let postprocess =
        JobDeadline::from_settings(&settings).raise_to(bounds.stage_timeout_secs(&settings.media, 900, 4));
    assert_eq!(postprocess, settings.runtime.job_timeout_max_secs);
    assert!(preprocess >= call_secs && *preprocess_needs < preprocess);
    assert!(
        postprocess_needs < postprocess as f64,
        "postprocess's runs together ({postprocess_needs:.0} s scaled) exceed the longest a stage may take ({postprocess} s)"
    );
}
