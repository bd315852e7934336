//! ffprobe and ffmpeg as subprocesses: argument lists (never a shell), a
//! timeout, stderr kept for the error, an environment cleared of everything
//! but `PATH` (the worker's credentials never reach a decoder), local files
//! only (`-protocol_whitelist file,pipe`) through a positive demuxer
//! allow-list built from the configured ffmpeg (a worker that cannot build it
//! does not start), ffprobe's JSON parsed into types.

use crate::settings::MediaSettings;
use serde::Deserialize;
use std::{path::Path, process::Stdio, time::Duration};
use tokio::process::Command;

/// Why a run of ffprobe or ffmpeg failed. As a [`crate::error::StageError`]
/// a spawn, signal, timeout or local I/O failure is retried; a failed run,
/// unreadable output or a missing allow-list is permanent.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The binary could not be started.
    #[error("cannot run {program}: {source} (is ffmpeg installed?)")]
    Spawn {
        /// The configured ffmpeg or ffprobe (`media.ffmpeg`, `media.ffprobe`).
        program: String,
        /// Why the spawn failed (not found, not executable).
        source: std::io::Error,
    },
    /// Killed after the timeout.
    #[error("{program} did not finish within {secs} s")]
    Timeout {
        /// The configured ffmpeg or ffprobe (`media.ffmpeg`, `media.ffprobe`).
        program: String,
        /// The limit it ran into, in seconds (`media.probe_timeout_secs` or `media.ffmpeg_timeout_secs`).
        secs: u64,
    },
    /// Killed by a signal it did not send itself (the OOM killer's SIGKILL,
    /// a node draining): says nothing about the input, so worth retrying.
    #[error("{program} was killed by signal {signal}: {stderr}")]
    Killed {
        /// The configured ffmpeg or ffprobe (`media.ffmpeg`, `media.ffprobe`).
        program: String,
        /// The signal's number (9 for SIGKILL).
        signal: i32,
        /// The end of its stderr, at most 1500 bytes.
        stderr: String,
    },
    /// Exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The configured ffmpeg or ffprobe (`media.ffmpeg`, `media.ffprobe`).
        program: String,
        /// The exit status as the OS reports it (`exit status: 1`).
        status: String,
        /// The end of its stderr, at most 1500 bytes.
        stderr: String,
    },
    /// Output could not be understood.
    #[error("cannot parse media tool output: {0}")]
    Parse(String),
    /// The demuxer allow-list could not be built from the configured ffmpeg:
    /// without it a playlist could make the decoder read other files.
    #[error("cannot build the demuxer allow-list from {program}: {reason}")]
    AllowList {
        /// The configured ffmpeg or ffprobe (`media.ffmpeg`, `media.ffprobe`).
        program: String,
        /// What went wrong: the tool did not run, failed, or listed no demuxer.
        reason: String,
    },
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// ffprobe's view of a file.
#[derive(Clone, Debug, Deserialize, Default)]
pub struct Probe {
    /// Every stream, in the container's order (cover art and data included).
    #[serde(default)]
    pub streams: Vec<ProbeStream>,
    /// The container's own facts (`-show_format`).
    #[serde(default)]
    pub format: ProbeFormat,
}

/// One stream, as ffprobe's `-show_streams` reports it; the numbers it
/// prints as text stay text, absent when the container does not say.
#[derive(Clone, Debug, Deserialize, Default)]
pub struct ProbeStream {
    /// Position in the container, from 0 (what `-map 0:N` names).
    #[serde(default)]
    pub index: u32,
    /// `video`, `audio`, `subtitle`, `data`.
    #[serde(default)]
    pub codec_type: String,
    /// Codec (`h264`, `hevc`, `vp9`, ...).
    #[serde(default)]
    pub codec_name: String,
    /// Coded width in pixels, before rotation; `None` for streams without pictures.
    pub width: Option<u32>,
    /// Coded height in pixels, before rotation; `None` for streams without pictures.
    pub height: Option<u32>,
    /// ffmpeg's pixel format name (`yuv420p`, `yuv420p10le`); `None` for streams without pictures.
    pub pix_fmt: Option<String>,
    /// Average frame rate as a fraction (`30000/1001`).
    pub avg_frame_rate: Option<String>,
    /// Base frame rate as a fraction.
    pub r_frame_rate: Option<String>,
    /// Duration in seconds, as text.
    pub duration: Option<String>,
    /// Frames, as text.
    pub nb_frames: Option<String>,
    /// Bit rate, as text.
    pub bit_rate: Option<String>,
    /// Tags (older files keep rotation in `rotate`).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Side data (display matrix rotation).
    #[serde(default)]
    pub side_data_list: Vec<serde_json::Value>,
}

/// The container, as ffprobe's `-show_format` reports it.
#[derive(Clone, Debug, Deserialize, Default)]
pub struct ProbeFormat {
    /// The demuxer's names for it, comma-separated (`mov,mp4,m4a,3gp,3g2,mj2`).
    #[serde(default)]
    pub format_name: String,
    /// Duration in seconds, as text.
    pub duration: Option<String>,
    /// Size in bytes, as text.
    pub size: Option<String>,
    /// Bit rate, as text.
    pub bit_rate: Option<String>,
    /// How many streams the container holds.
    #[serde(default)]
    pub nb_streams: u32,
}

fn parse_f64(s: Option<&String>) -> Option<f64> {
    s.and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite())
}

/// Parses an ffmpeg fraction such as `30000/1001`.
pub fn parse_rate(s: &str) -> Option<f64> {
    let (n, d) = s.split_once('/').unwrap_or((s, "1"));
    let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
    (d > 0.0 && n > 0.0).then_some(n / d).filter(|v| v.is_finite())
}

impl ProbeStream {
    /// Rotation in degrees (0, 90, 180, 270), from side data or tags.
    pub fn rotation(&self) -> i32 {
        let from_side = self.side_data_list.iter().find_map(|d| d.get("rotation").and_then(|r| r.as_f64()));
        let from_tag = self.tags.get("rotate").and_then(|r| r.parse::<f64>().ok());
        let deg = from_side.or(from_tag).unwrap_or(0.0).round() as i32;
        deg.rem_euclid(360)
    }

    /// Frame rate: average, else base.
    pub fn fps(&self) -> Option<f64> {
        self.avg_frame_rate
            .as_deref()
            .and_then(parse_rate)
            .or_else(|| self.r_frame_rate.as_deref().and_then(parse_rate))
    }

    /// Bit rate in bits per second.
    pub fn bit_rate(&self) -> Option<u64> {
        self.bit_rate.as_deref().and_then(|b| b.parse().ok())
    }
}

impl Probe {
    /// The first video stream that is not an attached picture.
    pub fn video(&self) -> Option<&ProbeStream> {
        self.streams.iter().find(|s| s.codec_type == "video" && !is_cover_art(s))
    }

    /// Whether there is an audio stream.
    pub fn has_audio(&self) -> bool {
        self.streams.iter().any(|s| s.codec_type == "audio")
    }

    /// Duration in seconds: the container's, else the video stream's.
    pub fn duration(&self) -> Option<f64> {
        parse_f64(self.format.duration.as_ref()).or_else(|| self.video().and_then(|v| parse_f64(v.duration.as_ref())))
    }

    /// Width and height as displayed (rotation applied).
    pub fn display_dimensions(&self) -> Option<(u32, u32)> {
        let v = self.video()?;
        let (w, h) = (v.width?, v.height?);
        Some(if v.rotation() % 180 == 90 { (h, w) } else { (w, h) })
    }

    /// Container bit rate in bits per second.
    pub fn bit_rate(&self) -> Option<u64> {
        self.format.bit_rate.as_deref().and_then(|b| b.parse().ok())
    }
}

fn is_cover_art(s: &ProbeStream) -> bool {
    // mjpeg/png streams with a single frame are cover art in audio files.
    matches!(s.codec_name.as_str(), "mjpeg" | "png")
        && s.nb_frames.as_deref().unwrap_or("1") == "1"
        && s.avg_frame_rate.as_deref() == Some("0/0")
}

/// One run of ffprobe or ffmpeg as [`Media`] starts it (environment cleared
/// but `PATH`, no shell): what `reelfleet media plan` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCommand {
    /// The configured binary (`media.ffmpeg` or `media.ffprobe`).
    pub program: String,
    /// Every argument, in order.
    pub args: Vec<String>,
}

/// Runs ffprobe and ffmpeg.
#[derive(Clone, Debug)]
pub struct Media {
    settings: MediaSettings,
    /// `-format_whitelist`'s value: every demuxer of the configured ffmpeg but [`DENIED_DEMUXERS`].
    demuxers: std::sync::Arc<str>,
}

/// Demuxers that open other files or devices named inside the input (a
/// playlist pointing at `/etc/passwd` must not be read) or that are not media.
pub const DENIED_DEMUXERS: &[&str] = &[
    "hls",
    "applehttp",
    "concat",
    "dash",
    "webm_dash_manifest",
    "imf",
    "ffmetadata",
    "lavfi",
    "sdp",
    "rtp",
    "rtsp",
    "alsa",
    "oss",
    "pulse",
    "jack",
    "openal",
    "fbdev",
    "kmsgrab",
    "x11grab",
    "video4linux2",
    "v4l2",
    "libcdio",
    "libdc1394",
    "iec61883",
    "avfoundation",
    "dshow",
    "gdigrab",
    "vfwcap",
    "sbg",
    "tty",
    "bin",
];

/// Every demuxer `ffmpeg` has but the denied ones, for `-format_whitelist`.
fn demuxer_allow_list(ffmpeg: &str) -> Result<String, MediaError> {
    let fail = |reason: String| MediaError::AllowList { program: ffmpeg.into(), reason };
    let out = std::process::Command::new(ffmpeg)
        .args(["-hide_banner", "-demuxers"])
        .env_clear()
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("`-demuxers` exited with {}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let flags = parts.next()?;
            let name = parts.next()?;
            (flags.starts_with('D') && flags.len() <= 2).then_some(name)
        })
        .flat_map(|n| n.split(','))
        .filter(|n| !DENIED_DEMUXERS.contains(n))
        .collect();
    if names.is_empty() {
        return Err(fail("it lists no demuxer".into()));
    }
    Ok(names.join(","))
}

/// `PATH` for the tools: the worker's own, or the usual system folders.
fn tool_path() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// An output path as ffmpeg should see it (never parsed as a protocol or option).
pub fn output_arg(path: &Path) -> String {
    format!("file:{}", path.display())
}

impl Media {
    /// Wrappers for `settings`; fails when the demuxer allow-list cannot be
    /// built from the configured ffmpeg (the worker must not start then).
    pub fn new(settings: MediaSettings) -> Result<Self, MediaError> {
        let demuxers = demuxer_allow_list(&settings.ffmpeg)?.into();
        Ok(Self { settings, demuxers })
    }

    fn whitelist_args(&self) -> Vec<String> {
        vec![
            "-protocol_whitelist".to_string(),
            "file,pipe".into(),
            "-format_whitelist".into(),
            self.demuxers.to_string(),
        ]
    }

    /// The input arguments that keep ffmpeg on the local file and away from
    /// playlist-like demuxers: `-protocol_whitelist file,pipe -format_whitelist <allow-list> -i file:<path>`.
    pub fn input_args(&self, path: &Path) -> Vec<String> {
        let mut args = self.whitelist_args();
        args.extend(["-i".to_string(), format!("file:{}", path.display())]);
        args
    }

    /// The x264/x265 preset from the settings.
    pub fn preset(&self) -> &str {
        &self.settings.preset
    }

    /// `-threads N` when configured.
    pub fn thread_args(&self) -> Vec<String> {
        if self.settings.threads > 0 {
            vec!["-threads".into(), self.settings.threads.to_string()]
        } else {
            Vec::new()
        }
    }

    /// The ffprobe run of [`Media::probe`].
    pub fn probe_command(&self, path: &Path) -> ToolCommand {
        let mut args: Vec<String> = vec!["-v".into(), "error".into()];
        args.extend(self.whitelist_args());
        args.extend(["-print_format", "json", "-show_format", "-show_streams"].map(String::from));
        args.push(format!("file:{}", path.display()));
        ToolCommand { program: self.settings.ffprobe.clone(), args }
    }

    /// Probes a local file.
    pub async fn probe(&self, path: &Path) -> Result<Probe, MediaError> {
        let cmd = self.probe_command(path);
        let out = run(&cmd.program, &cmd.args, self.settings.probe_timeout_secs).await?;
        serde_json::from_slice(&out.stdout).map_err(|e| MediaError::Parse(format!("ffprobe JSON: {e}")))
    }

    /// The ffprobe run of [`Media::count_video_packets`].
    pub fn count_packets_command(&self, path: &Path) -> ToolCommand {
        let mut args: Vec<String> = vec!["-v".into(), "error".into()];
        args.extend(self.whitelist_args());
        args.extend(
            ["-count_packets", "-select_streams", "v:0", "-show_entries", "stream=nb_read_packets", "-of", "json"]
                .map(String::from),
        );
        args.push(format!("file:{}", path.display()));
        ToolCommand { program: self.settings.ffprobe.clone(), args }
    }

    /// Counts the packets (frames) of the first video stream without decoding
    /// them: the frame count of a stream that declares no duration.
    pub async fn count_video_packets(&self, path: &Path) -> Result<u64, MediaError> {
        let cmd = self.count_packets_command(path);
        let out = run(&cmd.program, &cmd.args, self.settings.probe_timeout_secs).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| MediaError::Parse(format!("ffprobe JSON: {e}")))?;
        v["streams"][0]["nb_read_packets"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MediaError::Parse("ffprobe counted no video packets".into()))
    }

    /// The ffmpeg run of [`Media::ffmpeg`] for `args`: `-hide_banner -nostdin -y` first.
    pub fn ffmpeg_command(&self, args: &[String]) -> ToolCommand {
        let mut full: Vec<String> = vec!["-hide_banner".into(), "-nostdin".into(), "-y".into()];
        full.extend_from_slice(args);
        ToolCommand { program: self.settings.ffmpeg.clone(), args: full }
    }

    /// Runs ffmpeg with `args` (after `-hide_banner -nostdin -y`), returning its stderr.
    pub async fn ffmpeg(&self, args: &[String]) -> Result<String, MediaError> {
        let cmd = self.ffmpeg_command(args);
        let out = run(&cmd.program, &cmd.args, self.settings.ffmpeg_timeout_secs).await?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The ffmpeg run of [`Media::has_filter`] (it lists every filter).
    pub fn filters_command(&self) -> ToolCommand {
        ToolCommand { program: self.settings.ffmpeg.clone(), args: vec!["-hide_banner".into(), "-filters".into()] }
    }

    /// Whether this ffmpeg build has a filter (for example `libvmaf`).
    pub async fn has_filter(&self, name: &str) -> bool {
        let cmd = self.filters_command();
        match run(&cmd.program, &cmd.args, 10).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().nth(1) == Some(name)),
            Err(_) => false,
        }
    }
}

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn run(program: &str, args: &[String], timeout_secs: u64) -> Result<Output, MediaError> {
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", tool_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MediaError::Spawn { program: program.into(), source })?;
    let out = tokio::time::timeout(Duration::from_secs(timeout_secs), child.wait_with_output())
        .await
        .map_err(|_| MediaError::Timeout { program: program.into(), secs: timeout_secs })??;
    if let Some(signal) = killed_by(&out.status) {
        return Err(MediaError::Killed {
            program: program.into(),
            signal,
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 1500),
        });
    }
    if !out.status.success() {
        return Err(MediaError::Failed {
            program: program.into(),
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 1500),
        });
    }
    Ok(Output { stdout: out.stdout, stderr: out.stderr })
}

#[cfg(unix)]
fn killed_by(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn killed_by(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// The last `max` bytes of `text`, on a char boundary, trimmed.
pub fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}

/// A private temporary folder for one message's files, removed when dropped.
pub fn scratch_dir(parent: Option<&str>) -> std::io::Result<tempfile::TempDir> {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("reelfleet-");
        b
    };
    match parent {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            builder.tempdir_in(p)
        }
        None => builder.tempdir(),
    }
}

/// Removes scratch folders (`reelfleet-*` in `parent`, or the system's temp
/// folder) untouched for longer than `older_than`: what a killed process left.
/// A live message's folder is never that old (the job timeout ends it first),
/// so workers sharing one scratch folder do not sweep each other's work.
/// Returns how many were removed.
pub fn sweep_scratch(parent: Option<&str>, older_than: std::time::Duration) -> usize {
    let dir = parent.map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("reelfleet-")
            && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > older_than));
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_only_old_reelfleet_folders() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path().to_str().unwrap();
        let fresh = scratch_dir(Some(p)).unwrap();
        let other = parent.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(sweep_scratch(Some(p), std::time::Duration::from_secs(3600)), 0);
        assert!(fresh.path().exists() && other.exists());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(sweep_scratch(Some(p), std::time::Duration::from_millis(10)), 1);
        assert!(!fresh.path().exists() && other.exists());
    }

    #[test]
    fn rates_and_rotation() {
        assert_eq!(parse_rate("30000/1001").map(|r| (r * 1000.0).round()), Some(29970.0));
        assert_eq!(parse_rate("0/0"), None);
        let s: ProbeStream = serde_json::from_value(serde_json::json!({
            "codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
            "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]
        }))
        .unwrap();
        assert_eq!(s.rotation(), 270);
        let p = Probe { streams: vec![s], format: ProbeFormat::default() };
        assert_eq!(p.display_dimensions(), Some((1080, 1920)));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_tool_killed_by_a_signal_is_transient_and_a_failing_one_permanent() {
        use crate::error::{ErrorClass, StageError};
        let sh = |script: &str| vec!["-c".to_string(), script.to_string()];

        let killed = run("sh", &sh("echo out of memory >&2; kill -KILL $$"), 10).await.err().expect("killed");
        assert!(
            matches!(&killed, MediaError::Killed { signal: 9, stderr, .. } if stderr == "out of memory"),
            "{killed:?}"
        );
        let e = StageError::from(killed);
        assert_eq!((e.class, e.code), (ErrorClass::Transient, "media"), "{e}");

        let failed = run("sh", &sh("echo invalid data >&2; exit 1"), 10).await.err().expect("failed");
        assert!(matches!(&failed, MediaError::Failed { .. }), "{failed:?}");
        let e = StageError::from(failed);
        assert_eq!((e.class, e.code), (ErrorClass::Permanent, "media"), "{e}");
    }

    #[cfg(unix)]
    fn fake_tool(dir: &Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-ffmpeg");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_tools_see_no_variable_of_the_worker_but_path() {
        let dir = tempfile::tempdir().unwrap();
        let lists = r#"if [ "$2" = "-demuxers" ]; then echo " D  mov,mp4,m4a QuickTime"; exit 0; fi"#;
        let ffmpeg = fake_tool(dir.path(), &format!("{lists}\nenv >&2"));
        let media = Media::new(MediaSettings { ffmpeg, ..Default::default() }).expect("allow-list");
        let seen = media.ffmpeg(&[]).await.unwrap();
        let names: Vec<&str> = seen.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        // What the shell sets for itself is fine; nothing may come from the worker.
        let own = ["PATH", "PWD", "SHLVL", "_", "OLDPWD"];
        let leaked: Vec<&&str> = names.iter().filter(|n| !own.contains(n)).collect();
        assert!(leaked.is_empty(), "the tool saw the worker's {leaked:?}");
        assert!(std::env::vars().count() > 1, "the test process has variables to leak");
        assert!(media.input_args(Path::new("/x")).join(" ").contains("-format_whitelist mov,mp4,m4a"));
    }

    #[cfg(unix)]
    #[test]
    fn without_an_allow_list_media_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        for ffmpeg in [
            "/nonexistent/ffmpeg".to_string(),
            fake_tool(dir.path(), "exit 1"),
            fake_tool(dir.path(), "echo 'nothing useful'"),
        ] {
            let err = Media::new(MediaSettings { ffmpeg: ffmpeg.clone(), ..Default::default() }).err();
            assert!(matches!(err, Some(MediaError::AllowList { .. })), "{ffmpeg}: {err:?}");
        }
        let real = Media::new(MediaSettings::default()).expect("the installed ffmpeg lists its demuxers");
        let list = real.input_args(Path::new("/x")).join(" ");
        assert!(list.contains("mov") && !list.contains(",hls,") && !list.contains(",concat,"), "{list}");
    }
}
