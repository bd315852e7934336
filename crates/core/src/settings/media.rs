//! ffmpeg and ffprobe: binaries, timeouts, preset, threads, the decoder
//! sandbox and the resource limits every media process runs under.

use serde::{Deserialize, Serialize};

/// ffmpeg and ffprobe.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// ffmpeg binary.
    pub ffmpeg: String,
    /// ffprobe binary.
    pub ffprobe: String,
    /// Seconds before an ffprobe call is killed.
    pub probe_timeout_secs: u64,
    /// Seconds before an ffmpeg call is killed when nothing is known of its
    /// input, and the fixed part of the timeout of one whose input is known.
    pub ffmpeg_timeout_secs: u64,
    /// Seconds added to an ffmpeg call's timeout per second of input at
    /// 1280x720 (scaled by the input's pixels, counted as at least 640x360).
    pub ffmpeg_timeout_per_720p_second: f64,
    /// Longest timeout of one ffmpeg call, whatever its input.
    pub ffmpeg_timeout_max_secs: u64,
    /// x264 preset of preprocess's normalize, and of postprocess's renditions
    /// for a job without a tier.
    pub preset: String,
    /// x264/x265 preset of postprocess's renditions by the job's tier: faster
    /// for bulk work, slower (smaller at the same quality) for critical jobs.
    pub tier_presets: TierPresets,
    /// Length of an HLS segment in seconds: every rendition gets a keyframe
    /// at each multiple of it, so segment boundaries align across renditions.
    pub hls_segment_secs: f64,
    /// CRF points taken off a rendition that fell below the quality floor
    /// when it is encoded again (once, alone).
    pub reencode_crf_step: u32,
    /// Threads per ffmpeg process (0: ffmpeg decides).
    pub threads: u32,
    /// What ffmpeg and ffprobe run inside.
    pub sandbox: SandboxKind,
    /// Whether ffmpeg and ffprobe run under resource limits.
    pub limits: LimitsKind,
    /// Address space of one media process, in MiB (0: 4096 + 128 per CPU the worker may use).
    pub limit_address_space_mb: u64,
    /// CPU seconds of one media process (0: its timeout times the CPUs the worker may use).
    pub limit_cpu_secs: u64,
    /// Largest file one media process may write, in MiB.
    pub limit_file_size_mb: u64,
    /// Processes and threads of one media process (its sandbox's user when sandboxed).
    pub limit_processes: u64,
}

/// An x264/x265 preset per tier.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TierPresets {
    /// Preset of `low`-tier jobs.
    pub low: String,
    /// Preset of `medium`-tier jobs.
    pub medium: String,
    /// Preset of `high`-tier jobs.
    pub high: String,
    /// Preset of `critical`-tier jobs.
    pub critical: String,
}

impl Default for TierPresets {
    fn default() -> Self {
        Self { low: "superfast".into(), medium: "veryfast".into(), high: "veryfast".into(), critical: "fast".into() }
    }
}

impl TierPresets {
    /// The preset of `tier`.
    pub fn of(&self, tier: crate::envelope::Tier) -> &str {
        use crate::envelope::Tier;
        match tier {
            Tier::Low => &self.low,
            Tier::Medium => &self.medium,
            Tier::High => &self.high,
            Tier::Critical => &self.critical,
        }
    }

    /// The same preset for every tier.
    pub fn all(preset: &str) -> Self {
        Self { low: preset.into(), medium: preset.into(), high: preset.into(), critical: preset.into() }
    }
}

/// The presets x264 and x265 both know.
const PRESETS: &[&str] =
    &["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];

/// Whether the x264/x265 preset `preset` searches at least as hard as
/// `than` (it comes at or after it, fastest first): at the same CRF its
/// stream is as good for no more bits. False for a name neither knows.
pub fn preset_at_least(preset: &str, than: &str) -> bool {
    let rank = |p: &str| PRESETS.iter().position(|k| *k == p);
    matches!((rank(preset), rank(than)), (Some(a), Some(b)) if a >= b)
}

/// What ffmpeg and ffprobe run inside.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// bubblewrap (`bwrap`): no network, read-only system folders, fresh
    /// `/proc`, `/dev` and `/tmp`, only the message's scratch folder writable.
    Bubblewrap,
    /// The worker's own view of the machine.
    None,
}

/// How resource limits are put on ffmpeg and ffprobe.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitsKind {
    /// util-linux `prlimit` wraps every call.
    Prlimit,
    /// No limits but the timeouts.
    None,
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxKind::Bubblewrap => "bubblewrap",
            SandboxKind::None => "none",
        })
    }
}

impl std::fmt::Display for LimitsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitsKind::Prlimit => "prlimit",
            LimitsKind::None => "none",
        })
    }
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
            probe_timeout_secs: 30,
            ffmpeg_timeout_secs: 120,
            ffmpeg_timeout_per_720p_second: 8.0,
            ffmpeg_timeout_max_secs: 24 * 3600,
            preset: "veryfast".into(),
            tier_presets: TierPresets::default(),
            hls_segment_secs: 4.0,
            reencode_crf_step: 6,
            threads: 0,
            sandbox: SandboxKind::Bubblewrap,
            limits: LimitsKind::Prlimit,
            limit_address_space_mb: 0,
            limit_cpu_secs: 0,
            limit_file_size_mb: 32 * 1024,
            limit_processes: 4096,
        }
    }
}

impl MediaSettings {
    /// The checks serde cannot make.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_timeout_secs == 0 || self.ffmpeg_timeout_secs == 0 {
            return Err("media.probe_timeout_secs and media.ffmpeg_timeout_secs must be at least 1".into());
        }
        if !(self.ffmpeg_timeout_per_720p_second.is_finite() && self.ffmpeg_timeout_per_720p_second >= 0.0) {
            return Err("media.ffmpeg_timeout_per_720p_second must be a number of seconds, 0 or more".into());
        }
        if self.ffmpeg_timeout_max_secs < self.ffmpeg_timeout_secs {
            return Err("media.ffmpeg_timeout_max_secs must be at least media.ffmpeg_timeout_secs".into());
        }
        if self.limit_file_size_mb == 0 || self.limit_processes == 0 {
            return Err("media.limit_file_size_mb and media.limit_processes must be at least 1 (media.limits = \"none\" turns the limits off)".into());
        }
        let t = &self.tier_presets;
        for (name, p) in [
            ("media.preset", &self.preset),
            ("media.tier_presets.low", &t.low),
            ("media.tier_presets.medium", &t.medium),
            ("media.tier_presets.high", &t.high),
            ("media.tier_presets.critical", &t.critical),
        ] {
            if !PRESETS.contains(&p.as_str()) {
                return Err(format!("{name} must be one of {}, not {p:?}", PRESETS.join(", ")));
            }
        }
        if !(self.hls_segment_secs.is_finite() && (0.5..=60.0).contains(&self.hls_segment_secs)) {
            return Err("media.hls_segment_secs must be a number of seconds from 0.5 to 60".into());
        }
        if self.reencode_crf_step == 0 {
            return Err("media.reencode_crf_step must be at least 1".into());
        }
        Ok(())
    }
}
