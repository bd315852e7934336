//! The limits ingest enforces on uploads.

use serde::{Deserialize, Serialize};

/// Limits on uploaded videos, checked by ingest before anything is decoded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest accepted object, in bytes.
    pub max_bytes: u64,
    /// Longest accepted video, in seconds.
    pub max_duration_secs: f64,
    /// Widest accepted video, in pixels.
    pub max_width: u32,
    /// Tallest accepted video, in pixels.
    pub max_height: u32,
    /// Most streams accepted in one container.
    pub max_streams: usize,
    /// Most video frames accepted (duration times frame rate, or the declared count).
    pub max_frames: u64,
    /// Largest accepted prompt document, in bytes.
    pub max_prompt_bytes: u64,
    /// Highest priority an uploader may ask for (object metadata or a prompt
    /// document); a higher request is lowered to it and the manifest says so.
    /// Priority 5 routes to the critical tier, the most expensive model.
    pub max_uploader_priority: u8,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024 * 1024,
            max_duration_secs: 4.0 * 3600.0,
            max_width: 8192,
            max_height: 8192,
            max_streams: 16,
            max_frames: 4 * 3600 * 60,
            max_prompt_bytes: 64 * 1024,
            max_uploader_priority: 4,
        }
    }
}
