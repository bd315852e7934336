//! Renditions, quality floor, CDN purge.

use super::Secret;
use serde::{Deserialize, Serialize};

/// Renditions, quality floor and CDN purge.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostprocessSettings {
    /// x264 CRF of the H.264 renditions.
    pub h264_crf: u32,
    /// x265 CRF of the H.265 rendition.
    pub h265_crf: u32,
    /// Minimum PSNR (dB) of every rendition against the normalized video.
    pub min_psnr_db: f64,
    /// Minimum SSIM of every rendition against the normalized video.
    pub min_ssim: f64,
    /// Frames in the thumbnail sprite (a 5-wide grid).
    pub sprite_frames: u32,
    /// URL that receives a POST with the job's output keys after completion.
    pub cdn_purge_url: Option<String>,
    /// Bearer token sent to the CDN purge URL.
    pub cdn_purge_token: Option<Secret>,
}

impl Default for PostprocessSettings {
    fn default() -> Self {
        Self {
            h264_crf: 23,
            h265_crf: 28,
            min_psnr_db: 30.0,
            min_ssim: 0.90,
            sprite_frames: 10,
            cdn_purge_url: None,
            cdn_purge_token: None,
        }
    }
}
