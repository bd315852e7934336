//! reelfleet-preprocess: normalizes each video with ffmpeg (H.264 yuv420p
//! MP4 with faststart, capped resolution, aspect ratio kept, even dimensions,
//! rotation applied, a fixed frame rate), extracts keyframes and measures
//! content complexity in the same pass (one decode of the source), assigns
//! the cost tier and forwards to `inference.<tier>`.
//! Prompt jobs only get their tier.
//!
//! - this file: the stage (download, measure, upload, tier, forward).
//! - [`ffmpeg`]: the ffprobe and ffmpeg runs of an analyze job.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ffmpeg;

use async_trait::async_trait;
use reelfleet_core::{
    envelope::{Envelope, JobKind},
    error::StageError,
    jobstate::{envelope_of, Claimed, JobClaims, PipelineStage},
    manifest::{stage_key, Complexity, InputInfo, JobStatus, ManifestStore, PreprocessInfo},
    media::{scratch_dir, Bounds, Media, MediaError},
    runtime::{Dispatch, Message, Stage},
    settings::{PreprocessSettings, Settings},
    storage::Storage,
    tiering::assign_tier,
    topology::WorkQueue,
};
use std::{path::Path, sync::Arc, time::Duration};
use tracing::info;

/// The preprocess stage.
#[derive(Clone, Debug)]
pub struct Preprocess {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    claims: JobClaims,
    media: Media,
}

#[async_trait]
impl Stage for Preprocess {
    fn name(&self) -> &'static str {
        "preprocess"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Preprocess]
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let envelope = envelope_of(&msg, PipelineStage::Preprocess)?;
        let started = chrono::Utc::now();
        let held = match self.claims.claim(&envelope.job_id, PipelineStage::Preprocess, msg.attempt).await? {
            Claimed::Run(held) => *held,
            Claimed::Reforward(manifest) => {
                return Ok(manifest.preprocess.iter().flat_map(|i| forward(&envelope, i)).collect())
            }
            Claimed::Drop => return Ok(Vec::new()),
        };
        if let Some(input) = held.manifest.input.as_ref() {
            // A long or large source gets the time its one ffmpeg pass may take.
            let secs = Bounds::from(input).stage_timeout_secs(
                &self.settings.media,
                self.settings.runtime.job_timeout_secs,
                PREPROCESS_FFMPEG_CALLS,
            );
            let secs = msg.deadline.raise_to(secs);
            info!(timeout_s = secs, "Message timeout set from the source");
        }
        let info = match envelope.kind {
            JobKind::Generate => {
                let (tier, reason) = assign_tier(envelope.priority, envelope.quality, None, &self.settings.preprocess);
                PreprocessInfo { tier, tier_reason: reason, ..Default::default() }
            }
            JobKind::Analyze => self.normalize(&envelope, held.manifest.input.as_ref()).await?,
        };
        info!(tier = %info.tier, reason = %info.tier_reason, "Tier assigned");
        let stored = held
            .commit(|m| {
                m.tier = Some(info.tier);
                m.preprocess = Some(info.clone());
                m.status = JobStatus::Inference;
                m.record_stage("preprocess", started, msg.attempt);
            })
            .await?;
        Ok(if stored.is_some() { forward(&envelope, &info) } else { Vec::new() })
    }
}

/// ffmpeg calls preprocess makes of a source: the single pass (probes and
/// transfers fit in the runtime's own job timeout).
pub const PREPROCESS_FFMPEG_CALLS: u32 = 1;

/// The message for the job's tier queue, and the record that it was sent.
fn forward(envelope: &Envelope, info: &PreprocessInfo) -> Vec<Dispatch> {
    let mut next = envelope.forward(info.keyframes.clone());
    next.tier = Some(info.tier);
    vec![
        Dispatch::Next { queue: WorkQueue::Inference(info.tier), envelope: next },
        Dispatch::Handoff { job_id: envelope.job_id.clone() },
    ]
}

/// Output size for a `width`x`height` video under the caps: scaled down
/// (never up) to fit the long and short side limits, aspect kept, even.
pub fn target_dimensions(width: u32, height: u32, s: &PreprocessSettings) -> (u32, u32) {
    let max_long = s.max_width.max(s.max_height) as f64;
    let max_short = s.max_width.min(s.max_height) as f64;
    let (long, short) = (width.max(height) as f64, width.min(height) as f64);
    let f = (max_long / long).min(max_short / short).min(1.0);
    let even = |v: f64| (((v * f) / 2.0).round() as u32 * 2).max(2);
    (even(width as f64), even(height as f64))
}

/// Combines measurements into a 0..1 complexity score: motion (mean absolute
/// luma difference between frames, saturating at 8 of 255), scene changes
/// (saturating at 20 a minute) and spatial detail (bits per pixel of the
/// constant-quality normalized encode, saturating at 0.25).
pub fn complexity_score(motion: f64, cuts_per_min: f64, bits_per_pixel: f64) -> f64 {
    let m = (motion / 8.0).min(1.0);
    let c = (cuts_per_min / 20.0).min(1.0);
    let b = (bits_per_pixel / 0.25).min(1.0);
    (0.4 * m + 0.2 * c + 0.4 * b).clamp(0.0, 1.0)
}

impl Preprocess {
    /// The stage for `settings`; fails when ffmpeg cannot be made safe to run
    /// (its demuxer allow-list cannot be built).
    pub fn new(settings: Arc<Settings>, storage: Storage) -> Result<Self, MediaError> {
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let media = Media::new(settings.media.clone())?;
        let claims = JobClaims::new(manifests.clone(), Duration::from_secs(settings.runtime.claim_lease_secs));
        Ok(Self { settings, storage, manifests, claims, media })
    }

    async fn normalize(&self, envelope: &Envelope, input: Option<&InputInfo>) -> Result<PreprocessInfo, StageError> {
        let s = &self.settings.preprocess;
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let source = dir.path().join("source");
        // Exactly the object ingest validated: one overwritten since then steps around no limit.
        let (bucket, key, etag) = (&envelope.source.bucket, &envelope.source.key, envelope.source.etag.as_deref());
        self.storage.download_pinned(bucket, key, &source, etag).await?;
        let probe = self.media.probe(&source).await?;
        let frame = ffmpeg::normalized_frame(&probe, s)?;
        let (tw, th, fps) = (frame.width, frame.height, frame.fps);
        // Every decode is held to what ingest validated (duration, size, frame
        // rate); a manifest without that record gets the pinned object's own.
        let bounds = match input {
            Some(i) => Bounds {
                duration_s: i.duration_s,
                width: i.width,
                height: i.height,
                fps: i.fps,
                input_bytes: i.size_bytes,
            },
            None => {
                let (width, height) = probe.display_dimensions().unwrap_or((tw, th));
                Bounds {
                    duration_s: probe.duration().unwrap_or(0.0),
                    width,
                    height,
                    fps: probe.video().and_then(|v| v.fps()).unwrap_or(0.0),
                    input_bytes: std::fs::metadata(&source)?.len(),
                }
            }
        };
        let duration_s = bounds.duration_s;
        let source_media = self.media.bounded(bounds);

        let normalized = dir.path().join(ffmpeg::NORMALIZED);
        let n = ffmpeg::keyframe_count(s);
        let args = ffmpeg::single_pass_args(&source_media, &source, dir.path(), frame, s, n, duration_s);
        let log = source_media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("normalize"))?;
        let out = self.media.probe(&normalized).await?;
        let duration = out.duration().unwrap_or(0.0);
        let bitrate = out.video().and_then(|v| v.bit_rate()).or(out.bit_rate());
        let complexity = measure_complexity(&log, tw, th, fps, bitrate);
        let keyframes = keyframes_in(dir.path(), n)?;

        let job = &envelope.job_id;
        let normalized_key = stage_key(job, "preprocess", ffmpeg::NORMALIZED);
        self.storage.upload(self.manifests.bucket(), &normalized_key, &normalized, "video/mp4").await?;
        let mut keyframe_keys = Vec::new();
        for (i, path) in keyframes.iter().enumerate() {
            let key = stage_key(job, "preprocess", &format!("keyframe-{:02}.jpg", i + 1));
            self.storage.upload(self.manifests.bucket(), &key, path, "image/jpeg").await?;
            keyframe_keys.push(key);
        }
        let (tier, reason) = assign_tier(envelope.priority, envelope.quality, Some(complexity.score), s);
        Ok(PreprocessInfo {
            normalized_key: Some(normalized_key),
            width: tw,
            height: th,
            fps,
            duration_s: duration,
            keyframes: keyframe_keys,
            complexity: Some(complexity),
            tier,
            tier_reason: reason,
            video_encode: Some(ffmpeg::normalized_encode(&self.media, s)),
        })
    }
}

/// The complexity of a video from the log of the single pass (the scene
/// score and luma difference printed for every normalized frame), its
/// normalized size, rate and bit rate.
fn measure_complexity(log: &str, w: u32, h: u32, fps: u32, bitrate: Option<u64>) -> Complexity {
    let values = |key: &str| -> Vec<f64> {
        log.lines().filter_map(|l| l.split(key).nth(1)).filter_map(|v| v.trim().parse::<f64>().ok()).collect()
    };
    let scores = values("lavfi.scene_score=");
    let diffs = values("lavfi.signalstats.YAVG=");
    let frames = scores.len().max(1) as f64;
    let motion = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
    let cuts = scores.iter().filter(|s| **s > 0.3).count() as f64;
    let minutes = (frames / fps.max(1) as f64 / 60.0).max(1.0 / 60.0);
    let cuts_per_min = cuts / minutes;
    let bits_per_pixel = bitrate.map(|b| b as f64 / (w as f64 * h as f64 * fps as f64)).unwrap_or(0.0);
    Complexity {
        score: complexity_score(motion, cuts_per_min, bits_per_pixel),
        motion,
        scene_changes_per_min: cuts_per_min,
        bits_per_pixel,
    }
}

/// The keyframes the single pass wrote to `dir` (at most `n`), in order.
fn keyframes_in(dir: &Path, n: u32) -> Result<Vec<std::path::PathBuf>, StageError> {
    let frames: Vec<_> = (1..=n).map(|i| dir.join(format!("keyframe-{i:02}.jpg"))).filter(|p| p.exists()).collect();
    if frames.is_empty() {
        return Err(StageError::permanent("media", "no keyframe could be extracted"));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_are_capped_even_and_never_upscaled() {
        let s = PreprocessSettings::default();
        assert_eq!(target_dimensions(3840, 2160, &s), (1920, 1080));
        assert_eq!(target_dimensions(1080, 1920, &s), (1080, 1920));
        assert_eq!(target_dimensions(2160, 3840, &s), (1080, 1920));
        assert_eq!(target_dimensions(641, 361, &s), (642, 362));
        assert_eq!(target_dimensions(320, 240, &s), (320, 240));
        assert_eq!(target_dimensions(4000, 1000, &s), (1920, 480));
    }

    #[test]
    fn complexity_is_bounded() {
        assert_eq!(complexity_score(0.0, 0.0, 0.0), 0.0);
        assert_eq!(complexity_score(10.0, 1000.0, 5.0), 1.0);
    }
}
