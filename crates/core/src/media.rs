//! ffprobe and ffmpeg as subprocesses: argument lists (never a shell), a
//! timeout, stderr kept for the error, an environment cleared of everything
//! but `PATH` (the worker's credentials never reach a decoder), local files
//! only (`-protocol_whitelist file,pipe`) through a positive demuxer
//! allow-list and a decoder allow-list built from the configured ffmpeg (a
//! worker that cannot build them does not start), every process in the
//! decoder sandbox and under resource limits ([`crate::sandbox`]), every
//! decode of a known input bounded by what ingest validated ([`Bounds`]:
//! input duration, output frames and size, a timeout that follows the
//! input's duration and resolution), ffprobe's JSON parsed into types.

use crate::{
    sandbox::{Files, Runner},
    settings::MediaSettings,
};
use serde::Deserialize;
use std::{path::Path, process::Stdio, sync::Arc, time::Duration};

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
    /// The decoder allow-list could not be built from the configured ffmpeg.
    #[error("cannot build the decoder allow-list from {program}: {reason}")]
    DecoderList {
        /// Binary.
        program: String,
        /// Why.
        reason: String,
    },
    /// The sandbox or the resource limits a setting asks for cannot work here:
    /// the worker must not start.
    #[error("{setting}: {reason}")]
    Sandbox {
        /// The setting, with its value.
        setting: &'static str,
        /// Why, and how to opt out.
        reason: String,
    },
    /// A resource limit stopped the process: the input asks for more than
    /// the fleet gives one decode, and will again.
    #[error("{program} exceeded {limit}: {stderr}")]
    Limit {
        /// Binary.
        program: String,
        /// The limit, with the setting that sets it.
        limit: String,
        /// Last lines of stderr.
        stderr: String,
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
    /// The codec's profile as ffprobe names it (`High`, `Main`, `LC`).
    pub profile: Option<String>,
    /// The codec's level as a number (H.264: 31 for 3.1; H.265: 30 x the level, 93 for 3.1).
    pub level: Option<i64>,
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
    demuxers: Arc<str>,
    /// `-codec_whitelist`'s value: [`ACCEPTED_DECODERS`] the configured ffmpeg has.
    decoders: Arc<str>,
    /// The sandbox and limits every process runs in.
    runner: Arc<Runner>,
    /// What the input of the calls is known to be.
    bounds: Option<Bounds>,
}

/// What ingest validated about an input, which every decode of it is held to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Seconds of media (the validated duration).
    pub duration_s: f64,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frames per second (0: unknown).
    pub fps: f64,
    /// Bytes of the input (the largest, when a call reads several).
    pub input_bytes: u64,
}

/// Pixels of a 1280x720 frame, the unit of [`Bounds::timeout_secs`].
const PIXELS_720P: f64 = 1280.0 * 720.0;
/// An output may be this many times its input's size (never less than [`MIN_OUTPUT_CAP`]).
pub const OUTPUT_SIZE_FACTOR: u64 = 8;
/// The smallest output size cap.
pub const MIN_OUTPUT_CAP: u64 = 256 * 1024 * 1024;
/// The highest output frame rate the frame bound allows for (or the input's, if higher).
pub const MAX_OUTPUT_FPS: f64 = 120.0;

impl Bounds {
    fn duration(&self) -> f64 {
        if self.duration_s.is_finite() && self.duration_s > 0.0 {
            self.duration_s
        } else {
            0.0
        }
    }

    /// Seconds of input a call may read: the duration, plus 2 % (at least
    /// 2 s); none when the duration is not a positive number.
    pub fn read_secs(&self) -> Option<f64> {
        let d = self.duration();
        (d > 0.0).then(|| d + (d * 0.02).max(2.0))
    }

    /// Most video frames a call may write: [`Bounds::read_secs`] at the
    /// input's frame rate or [`MAX_OUTPUT_FPS`], whichever is higher.
    pub fn max_frames(&self) -> Option<u64> {
        let fps = if self.fps.is_finite() { self.fps.max(MAX_OUTPUT_FPS) } else { MAX_OUTPUT_FPS };
        self.read_secs().map(|s| (s * fps).ceil() as u64)
    }

    /// Largest output file (`-fs`): [`OUTPUT_SIZE_FACTOR`] times the input,
    /// at least [`MIN_OUTPUT_CAP`], at most `limit`.
    pub fn max_output_bytes(&self, limit: u64) -> u64 {
        self.input_bytes.saturating_mul(OUTPUT_SIZE_FACTOR).max(MIN_OUTPUT_CAP).min(limit)
    }

    /// An ffmpeg call's timeout: `ffmpeg_timeout_secs + per_720p_second x
    /// duration x pixels / (1280x720)` (pixels counted as at least 640x360),
    /// at most `ffmpeg_timeout_max_secs`.
    pub fn timeout_secs(&self, s: &MediaSettings) -> u64 {
        let scale = (f64::from(self.width) * f64::from(self.height) / PIXELS_720P).max(0.25);
        let scaled = s.ffmpeg_timeout_per_720p_second * self.duration() * scale;
        let secs = s.ffmpeg_timeout_secs as f64 + if scaled.is_finite() { scaled } else { f64::MAX };
        (secs.ceil().min(s.ffmpeg_timeout_max_secs as f64) as u64).max(1)
    }

    /// Seconds a stage may hold a message whose input is this: `base` (the
    /// runtime's `job_timeout_secs`: transfers, probes, bookkeeping) plus
    /// `calls` ffmpeg calls at their own [`Bounds::timeout_secs`]. What
    /// a stage raises its message's [`crate::runtime::JobDeadline`] to.
    pub fn stage_timeout_secs(&self, s: &MediaSettings, base: u64, calls: u32) -> u64 {
        base.saturating_add(u64::from(calls).saturating_mul(self.timeout_secs(s)))
    }
}

impl From<&crate::manifest::InputInfo> for Bounds {
    /// The bounds of a source as ingest validated it.
    fn from(i: &crate::manifest::InputInfo) -> Self {
        Self { duration_s: i.duration_s, width: i.width, height: i.height, fps: i.fps, input_bytes: i.size_bytes }
    }
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

/// Decoders the fleet means to accept: the usual camera, phone, screen and
/// web video codecs, their audio, still-image codecs, and text subtitles
/// (ffprobe opens every stream's decoder; the pipeline drops subtitles).
/// `-codec_whitelist` gets those of them the configured ffmpeg has; anything
/// else (a rare or legacy codec, a bitmap subtitle, a game format) is refused.
pub const ACCEPTED_DECODERS: &[&str] = &[
    // Video.
    "h264",
    "hevc",
    "vp8",
    "libvpx",
    "vp9",
    "libvpx-vp9",
    "libdav1d",
    "libaom-av1",
    "av1",
    "mpeg4",
    "mpeg1video",
    "mpeg2video",
    "h263",
    "h263p",
    "flv",
    "msmpeg4",
    "wmv1",
    "wmv2",
    "wmv3",
    "vc1",
    "theora",
    "prores",
    "dnxhd",
    "dvvideo",
    "ffv1",
    "huffyuv",
    "ffvhuff",
    "utvideo",
    "qtrle",
    "rawvideo",
    // Still images and animations.
    "mjpeg",
    "png",
    "apng",
    "gif",
    "webp",
    "bmp",
    // Audio.
    "aac",
    "aac_fixed",
    "aac_latm",
    "mp3float",
    "mp3",
    "mp2float",
    "mp2",
    "ac3",
    "ac3_fixed",
    "eac3",
    "opus",
    "libopus",
    "vorbis",
    "libvorbis",
    "flac",
    "alac",
    "dca",
    "truehd",
    "wmav1",
    "wmav2",
    "amrnb",
    "amrwb",
    "libopencore_amrnb",
    "libopencore_amrwb",
    "adpcm_ima_qt",
    "adpcm_ima_wav",
    "adpcm_ms",
    "pcm_s8",
    "pcm_u8",
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_s24be",
    "pcm_s32le",
    "pcm_s32be",
    "pcm_f32le",
    "pcm_f32be",
    "pcm_f64le",
    "pcm_alaw",
    "pcm_mulaw",
    // Text subtitles.
    "mov_text",
    "subrip",
    "srt",
    "ass",
    "ssa",
    "webvtt",
    "text",
];

/// What `ffmpeg -hide_banner <what>` prints, run through `runner`.
fn list(runner: &Runner, ffmpeg: &str, what: &str) -> Result<String, String> {
    let args = vec!["-hide_banner".to_string(), what.to_string()];
    let out = runner
        .std_command(ffmpeg, &args, &Files::default(), 30)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`{what}` exited with {}: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 600)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every demuxer `ffmpeg` has but the denied ones, for `-format_whitelist`.
fn demuxer_allow_list(runner: &Runner, ffmpeg: &str) -> Result<String, MediaError> {
    let fail = |reason: String| MediaError::AllowList { program: ffmpeg.into(), reason };
    let text = list(runner, ffmpeg, "-demuxers").map_err(fail)?;
    let names: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--"))
        .skip(1)
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

/// The [`ACCEPTED_DECODERS`] `ffmpeg` has, for `-codec_whitelist`.
fn decoder_allow_list(runner: &Runner, ffmpeg: &str) -> Result<String, MediaError> {
    let fail = |reason: String| MediaError::DecoderList { program: ffmpeg.into(), reason };
    let text = list(runner, ffmpeg, "-decoders").map_err(fail)?;
    let has: std::collections::BTreeSet<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let flags = parts.next()?;
            let name = parts.next()?;
            (flags.len() == 6 && matches!(flags.as_bytes()[0], b'V' | b'A' | b'S')).then_some(name)
        })
        .collect();
    let names: Vec<&str> = ACCEPTED_DECODERS.iter().copied().filter(|d| has.contains(d)).collect();
    if !names.iter().any(|n| ["h264", "hevc", "vp9", "mpeg4"].contains(n)) {
        return Err(fail(format!(
            "it lists none of the usual video decoders (it has {} decoders, {} of them accepted)",
            has.len(),
            names.len()
        )));
    }
    Ok(names.join(","))
}

/// `secs` as ffmpeg reads it: at most three decimals, no trailing zeros.
pub fn secs_arg(secs: f64) -> String {
    let text = format!("{secs:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Encoder options for keyframes at every multiple of `segment_secs` (and,
/// for x264 with the frame rate `fps` known, nowhere else: a fixed GOP, no
/// scene-cut keyframes), so that HLS segments start at the same times in
/// every stream encoded with them. Preprocess's normalize encode and every
/// rendition take the same ones: the normalized stream can then be a
/// rendition as it is.
pub fn keyframe_args(encoder: &str, segment_secs: f64, fps: f64) -> Vec<String> {
    let mut args = vec!["-force_key_frames".to_string(), format!("expr:gte(t,n_forced*{})", secs_arg(segment_secs))];
    let gop = (segment_secs * fps).round() as u64;
    if encoder == "libx264" && gop > 0 {
        args.extend(["-g", &gop.to_string(), "-keyint_min", &gop.to_string(), "-sc_threshold", "0"].map(String::from));
    }
    args
}

/// An output path as ffmpeg should see it (never parsed as a protocol or option).
pub fn output_arg(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Characters the tee muxer's spec gives a meaning to, escaped in its file names.
const TEE_SPECIAL: &[char] = &['\\', '\'', '|', '[', ']', ':', '=', ';', ','];

/// One output of the tee muxer (`-f tee`) that writes the same encoded
/// streams to several files, each `(format options, path)`, for example
/// `("f=mp4:movflags=+faststart", out.mp4)`: `[opts]file\:path|...`, the
/// paths escaped. The options must hold no path.
pub fn tee_output(slaves: &[(String, std::path::PathBuf)]) -> String {
    let escape = |p: &Path| {
        let mut out = String::new();
        for c in format!("file:{}", p.display()).chars() {
            if TEE_SPECIAL.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    slaves.iter().map(|(opts, path)| format!("[{opts}]{}", escape(path))).collect::<Vec<_>>().join("|")
}

/// The files an ffmpeg output word writes: the path of a `file:` word, the
/// paths of a [`tee_output`]; none for anything else.
pub fn output_paths(word: &str) -> Vec<std::path::PathBuf> {
    if let Some(path) = word.strip_prefix("file:") {
        return vec![path.into()];
    }
    if !word.starts_with("[f=") {
        return Vec::new();
    }
    // Unescape, splitting on unescaped `|` and dropping each slave's `[options]`.
    let mut slaves = vec![String::new()];
    let (mut escaped, mut in_options) = (false, false);
    for c in word.chars() {
        let current = slaves.last_mut().expect("one slave at least");
        match (escaped, c) {
            (true, c) => {
                current.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, '[') if current.is_empty() => in_options = true,
            (false, ']') if in_options => in_options = false,
            (false, '|') => slaves.push(String::new()),
            (false, c) if !in_options => current.push(c),
            _ => {}
        }
    }
    slaves.iter().filter_map(|s| s.strip_prefix("file:")).map(std::path::PathBuf::from).collect()
}

impl Media {
    /// Wrappers for `settings`; makes the worker undumpable
    /// ([`crate::sandbox::shield_worker`]); fails when the sandbox or the
    /// limits the settings ask for cannot work here, or when the demuxer or
    /// decoder allow-list cannot be built from the configured ffmpeg (run
    /// through them): the worker must not start then.
    pub fn new(settings: MediaSettings) -> Result<Self, MediaError> {
        if let Err(e) = crate::sandbox::shield_worker() {
            tracing::warn!(error = %e, "Could not make the worker undumpable; a decoder of its user could read its environment");
        }
        let runner = Runner::new(&settings)?;
        let demuxers = demuxer_allow_list(&runner, &settings.ffmpeg)?.into();
        let decoders = decoder_allow_list(&runner, &settings.ffmpeg)?.into();
        tracing::info!("{}", runner.describe());
        if settings.sandbox == crate::settings::SandboxKind::None {
            tracing::warn!("media.sandbox = \"none\": ffmpeg and ffprobe run without the decoder sandbox");
        }
        Ok(Self { settings, demuxers, decoders, runner: Arc::new(runner), bounds: None })
    }

    /// The same tools, with every call held to `bounds`: inputs read for at
    /// most their duration plus a margin, file outputs capped in frames and
    /// bytes, and a timeout that follows the duration and resolution.
    pub fn bounded(&self, bounds: Bounds) -> Self {
        Self { bounds: Some(bounds), ..self.clone() }
    }

    /// The bounds calls are held to, if any.
    pub fn bounds(&self) -> Option<Bounds> {
        self.bounds
    }

    /// The sandbox and limits the tools run in.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    fn whitelist_args(&self) -> Vec<String> {
        vec![
            "-protocol_whitelist".to_string(),
            "file,pipe".into(),
            "-format_whitelist".into(),
            self.demuxers.to_string(),
            "-codec_whitelist".into(),
            self.decoders.to_string(),
        ]
    }

    /// The input arguments that keep ffmpeg on the local file, away from
    /// playlist-like demuxers and to the accepted decoders, reading no more
    /// than the bounds allow: `-protocol_whitelist file,pipe -format_whitelist
    /// <demuxers> -codec_whitelist <decoders> [-t <seconds>] -i file:<path>`.
    pub fn input_args(&self, path: &Path) -> Vec<String> {
        let mut args = self.whitelist_args();
        if let Some(secs) = self.bounds.and_then(|b| b.read_secs()) {
            args.extend(["-t".to_string(), format!("{secs:.3}")]);
        }
        args.extend(["-i".to_string(), format!("file:{}", path.display())]);
        args
    }

    /// The x264/x265 preset from the settings (`media.preset`).
    pub fn preset(&self) -> &str {
        &self.settings.preset
    }

    /// The settings the tools run with.
    pub fn settings(&self) -> &MediaSettings {
        &self.settings
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
        let out = self.run(&cmd.program, &cmd.args, self.settings.probe_timeout_secs, false).await?;
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
        let out = self.run(&cmd.program, &cmd.args, self.settings.probe_timeout_secs, false).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| MediaError::Parse(format!("ffprobe JSON: {e}")))?;
        v["streams"][0]["nb_read_packets"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MediaError::Parse("ffprobe counted no video packets".into()))
    }

    /// The ffmpeg run of [`Media::ffmpeg`] for `args`: `-hide_banner -nostdin
    /// -y` first; with bounds, a call whose last argument is a `file:` output
    /// gets `-frames:v` and `-fs` before it (unless it sets them itself).
    pub fn ffmpeg_command(&self, args: &[String]) -> ToolCommand {
        self.bounded_ffmpeg(args).0
    }

    /// [`Media::ffmpeg_command`], and the `-fs` cap it put in with the
    /// files each capped output writes. Every file output (a `file:` word
    /// that is not an input, or a [`tee_output`]) gets, before it, what its
    /// own options lack of `-frames:v` and `-fs`.
    fn bounded_ffmpeg(&self, args: &[String]) -> (ToolCommand, Vec<(u64, Vec<std::path::PathBuf>)>) {
        let mut full: Vec<String> = vec!["-hide_banner".into(), "-nostdin".into(), "-y".into()];
        full.extend_from_slice(args);
        let mut caps = Vec::new();
        let Some(b) = self.bounds else {
            return (ToolCommand { program: self.settings.ffmpeg.clone(), args: full }, caps);
        };
        let mut out: Vec<String> = Vec::with_capacity(full.len() + 8);
        // Where the options of the next output begin in `out`.
        let mut group = 0;
        for (i, word) in full.iter().enumerate() {
            let previous = i.checked_sub(1).map(|p| full[p].as_str());
            if previous == Some("-i") {
                out.push(word.clone());
                group = out.len();
                continue;
            }
            let paths = output_paths(word);
            if !paths.is_empty() {
                let own = &out[group..];
                if let Some(frames) = b
                    .max_frames()
                    .filter(|_| !own.iter().any(|a| a == "-frames:v" || a == "-vframes" || a == "-frames"))
                {
                    out.extend(["-frames:v".to_string(), frames.to_string()]);
                }
                if !out[group..].iter().any(|a| a == "-fs") {
                    let bytes = b.max_output_bytes(self.settings.limit_file_size_mb.saturating_mul(1024 * 1024));
                    out.extend(["-fs".to_string(), bytes.to_string()]);
                    caps.push((bytes, paths));
                }
                out.push(word.clone());
                group = out.len();
                continue;
            }
            out.push(word.clone());
        }
        (ToolCommand { program: self.settings.ffmpeg.clone(), args: out }, caps)
    }

    /// Seconds an ffmpeg call may take: from the bounds (duration and
    /// resolution), else `media.ffmpeg_timeout_secs`.
    pub fn ffmpeg_timeout_secs(&self) -> u64 {
        self.bounds.map(|b| b.timeout_secs(&self.settings)).unwrap_or(self.settings.ffmpeg_timeout_secs)
    }

    /// Runs ffmpeg with `args` (after `-hide_banner -nostdin -y`), returning
    /// its stderr; an output that reached its `-fs` cap fails the call.
    pub async fn ffmpeg(&self, args: &[String]) -> Result<String, MediaError> {
        let (cmd, caps) = self.bounded_ffmpeg(args);
        let out = self.run(&cmd.program, &cmd.args, self.ffmpeg_timeout_secs(), true).await?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let capped: Vec<(u64, std::path::PathBuf)> =
            caps.into_iter().flat_map(|(cap, paths)| paths.into_iter().map(move |p| (cap, p))).collect();
        for (cap, path) in capped {
            // ffmpeg stops at -fs and exits 0 (and the tee muxer ignores it,
            // leaving RLIMIT_FSIZE): a cut output must not pass for a whole one.
            let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
            if size >= cap {
                return Err(MediaError::Limit {
                    program: self.settings.ffmpeg.clone(),
                    limit: format!(
                        "the output size cap of {cap} bytes ({OUTPUT_SIZE_FACTOR}x the input, at most media.limit_file_size_mb)"
                    ),
                    stderr: tail(&stderr, 500),
                });
            }
        }
        Ok(stderr)
    }

    /// The ffmpeg run of [`Media::has_filter`] (it lists every filter).
    pub fn filters_command(&self) -> ToolCommand {
        ToolCommand { program: self.settings.ffmpeg.clone(), args: vec!["-hide_banner".into(), "-filters".into()] }
    }

    /// Whether this ffmpeg build has a filter (for example `libvmaf`).
    pub async fn has_filter(&self, name: &str) -> bool {
        let cmd = self.filters_command();
        match self.run(&cmd.program, &cmd.args, 10, false).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().nth(1) == Some(name)),
            Err(_) => false,
        }
    }

    async fn run(&self, program: &str, args: &[String], timeout_secs: u64, writes: bool) -> Result<Output, MediaError> {
        run(&self.runner, program, args, timeout_secs, writes).await
    }
}

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `program args` through `runner` (the folders of its `file:`
/// arguments visible: read, or written when `writes`), killed after
/// `timeout_secs`; a process stopped by a resource limit is a
/// [`MediaError::Limit`].
async fn run(
    runner: &Runner,
    program: &str,
    args: &[String],
    timeout_secs: u64,
    writes: bool,
) -> Result<Output, MediaError> {
    let files = files_of(args, writes);
    let child = runner
        .command(program, args, &files, timeout_secs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MediaError::Spawn { program: program.into(), source })?;
    let out = tokio::time::timeout(Duration::from_secs(timeout_secs), child.wait_with_output())
        .await
        .map_err(|_| MediaError::Timeout { program: program.into(), secs: timeout_secs })??;
    let stderr = || tail(&String::from_utf8_lossy(&out.stderr), 1500);
    let limits = runner.limits();
    let limit = |what: &str| MediaError::Limit { program: program.into(), limit: what.into(), stderr: stderr() };
    match killed_by(&out.status).or_else(|| runner.signal_of(out.status.code())) {
        Some(SIGXCPU) => return Err(limit("its CPU-time limit (media.limit_cpu_secs)")),
        Some(SIGXFSZ) => return Err(limit("the largest file it may write (media.limit_file_size_mb)")),
        Some(signal) => return Err(MediaError::Killed { program: program.into(), signal, stderr: stderr() }),
        None => {}
    }
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        if limits.is_some() {
            // ffmpeg catches SIGXCPU and stops (after four, at once).
            if text.contains("received signal 24") || text.contains("Received > 3 system signals") {
                return Err(limit("its CPU-time limit (media.limit_cpu_secs)"));
            }
            if text.contains("Cannot allocate memory") || text.contains("Resource temporarily unavailable") {
                return Err(limit("its memory or thread limit (media.limit_address_space_mb, media.limit_processes)"));
            }
        }
        return Err(MediaError::Failed { program: program.into(), status: out.status.to_string(), stderr: stderr() });
    }
    Ok(Output { stdout: out.stdout, stderr: out.stderr })
}

/// The folders a call may see: those of [`Files::from_args`], and, for
/// ffmpeg, the folders [`tee_output`]s write to.
fn files_of(args: &[String], writes: bool) -> Files {
    let mut files = Files::from_args(args, writes);
    if writes {
        let tee = args.iter().filter(|a| a.starts_with("[f=")).flat_map(|a| output_paths(a));
        files.write.extend(tee.filter_map(|p| p.parent().map(Path::to_path_buf)));
        files.write.sort();
        files.write.dedup();
        let write = files.write.clone();
        files.read.retain(|d| !write.contains(d));
    }
    files
}

/// The signal a process gets past its `RLIMIT_CPU` soft limit.
const SIGXCPU: i32 = 24;
/// The signal a process gets for a write past its `RLIMIT_FSIZE`.
const SIGXFSZ: i32 = 25;

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
    async fn a_tool_killed_by_a_signal_is_transient_a_failing_one_or_one_over_a_limit_permanent() {
        use crate::error::{ErrorClass, StageError};
        let sh = |script: &str| vec!["-c".to_string(), script.to_string()];
        let bare = Runner::bare();

        let killed =
            run(&bare, "sh", &sh("echo out of memory >&2; kill -KILL $$"), 10, false).await.err().expect("killed");
        assert!(
            matches!(&killed, MediaError::Killed { signal: 9, stderr, .. } if stderr == "out of memory"),
            "{killed:?}"
        );
        let e = StageError::from(killed);
        assert_eq!((e.class, e.code), (ErrorClass::Transient, "media"), "{e}");

        let failed = run(&bare, "sh", &sh("echo invalid data >&2; exit 1"), 10, false).await.err().expect("failed");
        assert!(matches!(&failed, MediaError::Failed { .. }), "{failed:?}");
        let e = StageError::from(failed);
        assert_eq!((e.class, e.code), (ErrorClass::Permanent, "media"), "{e}");

        for (signal, setting) in [("XCPU", "media.limit_cpu_secs"), ("XFSZ", "media.limit_file_size_mb")] {
            let over = run(&bare, "sh", &sh(&format!("kill -{signal} $$")), 10, false).await.err().expect("over");
            assert!(matches!(&over, MediaError::Limit { limit, .. } if limit.contains(setting)), "{over:?}");
            let e = StageError::from(over);
            assert_eq!((e.class, e.code), (ErrorClass::Permanent, "limit"), "{e}");
        }

        let slow = run(&bare, "sleep", &["5".to_string()], 1, false).await.err().expect("timeout");
        let e = StageError::from(slow);
        assert_eq!((e.class, e.code), (ErrorClass::Transient, "timeout"), "a first timeout is retried: {e}");
    }

    #[cfg(unix)]
    fn fake_tool(dir: &Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-ffmpeg");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    /// A fake ffmpeg's answers to `-demuxers` and `-decoders`.
    const LISTS: &str = r#"if [ "$2" = "-demuxers" ]; then printf ' --\n D  mov,mp4,m4a QuickTime\n'; exit 0; fi
if [ "$2" = "-decoders" ]; then printf ' V..... = Video\n ------\n V....D h264  H.264\n V....D jpeg2000  JPEG 2000\n A....D aac  AAC\n'; exit 0; fi"#;

    #[cfg(unix)]
    #[tokio::test]
    async fn the_tools_see_no_variable_of_the_worker_but_path() {
        let dir = tempfile::tempdir().unwrap();
        let ffmpeg = fake_tool(dir.path(), &format!("{LISTS}\nenv >&2"));
        let media = Media::new(MediaSettings { ffmpeg, ..Default::default() }).expect("allow-lists");
        let seen = media.ffmpeg(&[]).await.unwrap();
        let names: Vec<&str> = seen.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        // What the shell sets for itself is fine; nothing may come from the worker.
        let own = ["PATH", "PWD", "SHLVL", "_", "OLDPWD"];
        let leaked: Vec<&&str> = names.iter().filter(|n| !own.contains(n)).collect();
        assert!(leaked.is_empty(), "the tool saw the worker's {leaked:?}");
        assert!(std::env::vars().count() > 1, "the test process has variables to leak");
        let input = media.input_args(Path::new("/x")).join(" ");
        assert!(input.contains("-format_whitelist mov,mp4,m4a"), "{input}");
        assert!(input.contains("-codec_whitelist h264,aac "), "only accepted decoders: {input}");
    }

    #[cfg(unix)]
    #[test]
    fn without_its_allow_lists_media_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        for ffmpeg in [
            "/nonexistent/ffmpeg".to_string(),
            fake_tool(dir.path(), "exit 1"),
            fake_tool(dir.path(), "echo 'nothing useful'"),
        ] {
            let err = Media::new(MediaSettings { ffmpeg: ffmpeg.clone(), ..Default::default() }).err();
            assert!(matches!(err, Some(MediaError::AllowList { .. })), "{ffmpeg}: {err:?}");
        }
        let no_decoders = fake_tool(
            dir.path(),
            r#"if [ "$2" = "-demuxers" ]; then printf ' --\n D  mov,mp4,m4a QuickTime\n'; exit 0; fi
printf ' ------\n V....D jpeg2000  JPEG 2000\n'"#,
        );
        let err = Media::new(MediaSettings { ffmpeg: no_decoders, ..Default::default() }).err();
        assert!(matches!(err, Some(MediaError::DecoderList { .. })), "{err:?}");

        let real = Media::new(MediaSettings::default()).expect("the installed ffmpeg lists its demuxers and decoders");
        let list = real.input_args(Path::new("/x")).join(" ");
        assert!(list.contains("mov") && !list.contains(",hls,") && !list.contains(",concat,"), "{list}");
        let decoders = list.split("-codec_whitelist ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
        let decoders: Vec<&str> = decoders.split(',').collect();
        for d in ["h264", "hevc", "vp9", "aac", "mjpeg", "png", "gif", "ffv1"] {
            assert!(decoders.contains(&d), "{d} missing from {decoders:?}");
        }
        for d in ["jpeg2000", "pgssub", "dvdsub", "sanm", "smackvid", "exr"] {
            assert!(!decoders.contains(&d), "{d} accepted: {decoders:?}");
        }
    }

    #[test]
    fn tee_outputs_read_back_as_their_paths_and_every_output_gets_its_bounds() {
        let (mp4, hls) = (Path::new("/s/a b:c/r.mp4").to_path_buf(), Path::new("/s/hls/r|x/index.m3u8").to_path_buf());
        let spec =
            tee_output(&[("f=mp4:movflags=+faststart".into(), mp4.clone()), ("f=hls:hls_time=2".into(), hls.clone())]);
        assert_eq!(
            spec,
            r"[f=mp4:movflags=+faststart]file\:/s/a b\:c/r.mp4|[f=hls:hls_time=2]file\:/s/hls/r\|x/index.m3u8"
        );
        assert_eq!(output_paths(&spec), [mp4.clone(), hls.clone()]);
        assert_eq!(output_paths("file:/s/p.jpg"), [Path::new("/s/p.jpg")]);
        assert!(output_paths("-").is_empty() && output_paths("[norm]").is_empty());

        let files =
            files_of(&["-i".to_string(), "file:/in/x.mp4".into(), "-f".into(), "tee".into(), spec.clone()], true);
        assert_eq!(files.write, [Path::new("/s/a b:c"), Path::new("/s/hls/r|x")]);
        assert_eq!(files.read, [Path::new("/in")]);

        let media = Media {
            settings: MediaSettings::default(),
            demuxers: "mov".into(),
            decoders: "h264".into(),
            runner: Arc::new(Runner::bare()),
            bounds: Some(Bounds { duration_s: 10.0, width: 1280, height: 720, fps: 30.0, input_bytes: 1 }),
        };
        let words = |list: &[&str]| list.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let cmd = media.ffmpeg_command(&words(&[
            "-i",
            "file:/in/x.mp4",
            "-map",
            "[v0]",
            "-c:v",
            "libx264",
            "-f",
            "tee",
            &spec,
            "-map",
            "[poster]",
            "-frames:v",
            "1",
            "file:/s/poster.jpg",
            "-map",
            "[cx]",
            "-f",
            "null",
            "-",
        ]));
        let cap = MIN_OUTPUT_CAP.to_string();
        let expected = words(&[
            "-hide_banner",
            "-nostdin",
            "-y",
            "-i",
            "file:/in/x.mp4",
            "-map",
            "[v0]",
            "-c:v",
            "libx264",
            "-f",
            "tee",
            "-frames:v",
            "1440",
            "-fs",
            &cap,
            &spec,
            "-map",
            "[poster]",
            "-frames:v",
            "1",
            "-fs",
            &cap,
            "file:/s/poster.jpg",
            "-map",
            "[cx]",
            "-f",
            "null",
            "-",
        ]);
        assert_eq!(cmd.args, expected);
    }

    #[test]
    fn bounds_follow_the_input() {
        let s = MediaSettings::default();
        let b =
            |duration_s: f64, width: u32, height: u32| Bounds { duration_s, width, height, fps: 30.0, input_bytes: 0 };
        // 120 s + 8 s per second of 720p.
        assert_eq!(b(10.0, 1280, 720).timeout_secs(&s), 200);
        assert_eq!(b(10.0, 1920, 1080).timeout_secs(&s), 300);
        assert_eq!(b(10.0, 160, 120).timeout_secs(&s), 140, "small frames count as 640x360");
        assert_eq!(b(3600.0, 1280, 720).timeout_secs(&s), 120 + 8 * 3600);
        assert_eq!(b(4.0 * 3600.0, 1280, 720).timeout_secs(&s), 24 * 3600, "capped");
        assert_eq!(b(f64::NAN, 1280, 720).timeout_secs(&s), 120, "no duration: the base");
        assert_eq!(b(f64::INFINITY, 8192, 8192).timeout_secs(&s), 120);
        // A whole stage: the job timeout plus each call's own.
        assert_eq!(b(10.0, 1280, 720).stage_timeout_secs(&s, 900, 3), 900 + 3 * 200);
        assert_eq!(b(f64::NAN, 1280, 720).stage_timeout_secs(&s, 900, 1), 900 + 120);
        assert_eq!(b(4.0 * 3600.0, 1920, 1080).stage_timeout_secs(&s, 900, 4), 900 + 4 * 24 * 3600);
        assert_eq!(b(f64::MAX, 8192, 8192).stage_timeout_secs(&s, u64::MAX, u32::MAX), u64::MAX, "saturates");
        assert_eq!(b(100.0, 0, 0).read_secs(), Some(102.0));
        assert_eq!(b(1000.0, 0, 0).read_secs(), Some(1020.0));
        assert_eq!(b(0.0, 0, 0).read_secs(), None, "no duration, no cut");
        assert_eq!(b(10.0, 0, 0).max_frames(), Some(1440), "12 s at 120 fps");
        assert_eq!(b(-1.0, 0, 0).max_frames(), None);
        let tiny = Bounds { input_bytes: 1000, ..b(1.0, 1, 1) };
        assert_eq!(tiny.max_output_bytes(u64::MAX), MIN_OUTPUT_CAP);
        let big = Bounds { input_bytes: 10 << 30, ..tiny };
        assert_eq!(big.max_output_bytes(32 << 30), 32 << 30);
        assert_eq!(big.max_output_bytes(u64::MAX), 80 << 30);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_bounded_call_caps_its_output_and_fails_when_it_reaches_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        // Prints its arguments, then writes an output as large as its first word asks.
        let body = format!(
            "{LISTS}\necho \"$@\" >&2\nfor a; do last=$a; done\ntruncate -s \"$(cat {}/size)\" \"${{last#file:}}\"",
            dir.path().display()
        );
        let ffmpeg = fake_tool(dir.path(), &body);
        let media = Media::new(MediaSettings { ffmpeg, ..Default::default() }).expect("allow-lists");
        let bounds = Bounds { duration_s: 10.0, width: 1280, height: 720, fps: 30.0, input_bytes: 1 << 20 };
        let media = media.bounded(bounds);
        let scratch = tempfile::tempdir().unwrap();
        let out = scratch.path().join("out.mp4");
        let mut args = media.input_args(&scratch.path().join("in.mp4"));
        args.push(output_arg(&out));

        std::fs::write(dir.path().join("size"), "1000").unwrap();
        let line = media.ffmpeg(&args).await.expect("a small output passes");
        assert!(line.contains("-t 12.000 -i file:"), "{line}");
        assert!(line.contains(&format!("-frames:v 1440 -fs {MIN_OUTPUT_CAP} file:{}", out.display())), "{line}");

        std::fs::write(dir.path().join("size"), (MIN_OUTPUT_CAP + 1).to_string()).unwrap();
        let err = media.ffmpeg(&args).await.expect_err("a capped output fails");
        assert!(matches!(&err, MediaError::Limit { limit, .. } if limit.contains("output size cap")), "{err:?}");

        // A call that sets its own frame count keeps it.
        let mut own = media.input_args(&scratch.path().join("in.mp4"));
        own.extend(["-frames:v".to_string(), "1".into(), output_arg(&out)]);
        std::fs::write(dir.path().join("size"), "10").unwrap();
        let line = media.ffmpeg(&own).await.unwrap();
        assert!(line.contains("-frames:v 1 -fs") && !line.contains("1440"), "{line}");
    }
}
