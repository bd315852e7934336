//! Normalization, keyframes and tier assignment.

use serde::{Deserialize, Serialize};

/// Normalization and tier assignment.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessSettings {
    /// Longest side of the normalized video, in pixels.
    pub max_width: u32,
    /// Shortest side of the normalized video, in pixels.
    pub max_height: u32,
    /// Frame rate when the normalized video's short side is at least 1080.
    pub fps_hd: u32,
    /// Frame rate below 1080p.
    pub fps_sd: u32,
    /// x264 CRF of the normalized video.
    pub crf: u32,
    /// Keyframes extracted for inference.
    pub keyframes: u32,
    /// Complexity below this goes to the low tier.
    pub complexity_low_below: f64,
    /// Complexity at or above this goes to the high tier.
    pub complexity_high_from: f64,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        Self {
            max_width: 1920,
            max_height: 1080,
            fps_hd: 30,
            fps_sd: 24,
            crf: 23,
            keyframes: 4,
            complexity_low_below: 0.15,
            complexity_high_from: 0.45,
        }
    }
}
