//! ffmpeg and ffprobe: binaries, timeouts, preset, threads.

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
    /// Seconds before an ffmpeg call is killed.
    pub ffmpeg_timeout_secs: u64,
    /// x264/x265 preset for every encode.
    pub preset: String,
    /// Threads per ffmpeg process (0: ffmpeg decides).
    pub threads: u32,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
            probe_timeout_secs: 30,
            ffmpeg_timeout_secs: 600,
            preset: "veryfast".into(),
            threads: 0,
        }
    }
}
