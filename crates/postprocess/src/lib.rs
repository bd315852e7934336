//! reelfleet-postprocess: encodes the deliverables (H.264 at 720p and at the
//! normalized resolution, H.265 at 720p, never upscaling), a poster and a
//! thumbnail sprite, checks each rendition's PSNR/SSIM (VMAF where ffmpeg has
//! libvmaf) against the normalized video, writes the final manifest, calls
//! the CDN purge hook and publishes `job.completed`.
//!
//! - this file: the stage (renditions planned, outputs described and
//!   uploaded, the quality floor, the final manifest, `job.completed`).
//! - [`ffmpeg`]: the ffprobe and ffmpeg runs of an analyze job.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ffmpeg;

use async_trait::async_trait;
use reelfleet_core::{
    envelope::Envelope,
    error::StageError,
    jobstate::{envelope_of, Claimed, JobClaims, PipelineStage},
    manifest::{stage_key, JobManifest, JobStatus, ManifestStore, OutputFile, QualityCheck},
    media::{scratch_dir, Bounds, Media, MediaError},
    runtime::{Dispatch, Message, Stage},
    settings::Settings,
    storage::Storage,
    topology::WorkQueue,
};
use std::{path::Path, sync::Arc, time::Duration};
use tracing::{info, warn};

/// The postprocess stage.
#[derive(Clone, Debug)]
pub struct Postprocess {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    claims: JobClaims,
    media: Media,
    http: reqwest::Client,
}

/// One rendition to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionPlan {
    /// `<codec>_<short side>p` (`h264_720p`): the output's name and, with
    /// `.mp4`, its file name.
    pub name: String,
    /// `libx264` or `libx265`.
    pub encoder: &'static str,
    /// Width in pixels, even, never more than the reference's.
    pub width: u32,
    /// Height in pixels, even, never more than the reference's.
    pub height: u32,
}

/// Renditions for a `w`x`h` source: H.264 and H.265 with the short side at
/// 720 (or less, never upscaled), and H.264 at the source size when larger.
pub fn plan_renditions(w: u32, h: u32) -> Vec<RenditionPlan> {
    let short = w.min(h);
    let (w720, h720) = if short > 720 {
        let f = 720.0 / short as f64;
        let even = |v: u32| (((v as f64 * f) / 2.0).round() as u32 * 2).max(2);
        (even(w), even(h))
    } else {
        (w, h)
    };
    let mut plans = vec![RenditionPlan { name: "h264_720p".into(), encoder: "libx264", width: w720, height: h720 }];
    if short > 720 {
        plans.push(RenditionPlan { name: format!("h264_{short}p"), encoder: "libx264", width: w, height: h });
    }
    plans.push(RenditionPlan { name: "h265_720p".into(), encoder: "libx265", width: w720, height: h720 });
    plans
}

#[async_trait]
impl Stage for Postprocess {
    fn name(&self) -> &'static str {
        "postprocess"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Postprocess]
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let envelope = envelope_of(&msg, PipelineStage::Postprocess)?;
        let started = chrono::Utc::now();
        let held = match self.claims.claim(&envelope.job_id, PipelineStage::Postprocess, msg.attempt).await? {
            Claimed::Run(held) => *held,
            // Finished before a lost confirm: announce it again (consumers dedupe by job id).
            Claimed::Reforward(manifest) => return Ok(completed(&manifest)),
            Claimed::Drop => return Ok(Vec::new()),
        };
        let outputs = self.produce(&envelope, &held.manifest).await?;
        let s = &self.settings.postprocess;
        let vmaf_measured = outputs.iter().any(|o| o.vmaf.is_some());
        let below: Vec<String> = outputs
            .iter()
            .filter(|o| o.psnr_db.is_some_and(|p| p < s.min_psnr_db) || o.ssim.is_some_and(|v| v < s.min_ssim))
            .map(|o| format!("{} (PSNR {:.2} dB, SSIM {:.4})", o.name, o.psnr_db.unwrap_or(0.0), o.ssim.unwrap_or(0.0)))
            .collect();
        let quality_check =
            QualityCheck { passed: below.is_empty(), min_psnr_db: s.min_psnr_db, min_ssim: s.min_ssim, vmaf_measured };
        if !below.is_empty() {
            held.commit(|m| {
                m.quality_check = Some(quality_check.clone());
                m.outputs = outputs.clone();
            })
            .await?;
            return Err(StageError::permanent(
                "quality",
                format!("below the floor of PSNR {} dB / SSIM {}: {}", s.min_psnr_db, s.min_ssim, below.join(", ")),
            ));
        }
        let mut draft = held.manifest.clone();
        draft.outputs = outputs.clone();
        let cdn_purge = self.purge(&draft).await;
        let stored = held
            .commit(|m| {
                m.quality_check = Some(quality_check.clone());
                m.outputs = outputs.clone();
                m.record_stage("postprocess", started, msg.attempt);
                m.status = JobStatus::Completed;
                m.cdn_purge = cdn_purge.clone();
            })
            .await?;
        let Some(manifest) = stored else { return Ok(Vec::new()) };
        info!(outputs = manifest.outputs.len(), cost_usd = manifest.cost_usd(), "Job completed");
        Ok(completed(&manifest))
    }
}

/// `job.completed` and the record that it was published.
fn completed(m: &JobManifest) -> Vec<Dispatch> {
    vec![completed_event(m), Dispatch::Handoff { job_id: m.job_id.clone() }]
}

fn completed_event(m: &JobManifest) -> Dispatch {
    let body = serde_json::json!({
        "event": "job.completed",
        "job_id": m.job_id,
        "kind": m.kind,
        "source": m.source,
        "tier": m.tier,
        "cost_usd": m.cost_usd(),
        "outputs": m.outputs.iter().map(|o| &o.key).collect::<Vec<_>>(),
        "manifest": reelfleet_core::manifest::manifest_key(&m.job_id),
        "at": chrono::Utc::now(),
    });
    Dispatch::Event { routing_key: "job.completed".into(), body: serde_json::to_vec(&body).expect("json") }
}

/// PSNR and SSIM parsed from ffmpeg's log.
pub fn parse_quality(log: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let find = |marker: &str, key: &str| {
        log.lines()
            .filter(|l| l.contains(marker))
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|v| if v == "inf" { Some(100.0) } else { v.parse::<f64>().ok() })
            .next_back()
    };
    (find("PSNR", "average:"), find("SSIM", "All:"), find("VMAF score", "VMAF score:"))
}

impl Postprocess {
    /// The stage for `settings`; fails when ffmpeg cannot be made safe to run
    /// (its demuxer allow-list cannot be built).
    pub fn new(settings: Arc<Settings>, storage: Storage) -> Result<Self, MediaError> {
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let media = Media::new(settings.media.clone())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client builds");
        let claims = JobClaims::new(manifests.clone(), Duration::from_secs(settings.runtime.claim_lease_secs));
        Ok(Self { settings, storage, manifests, claims, media, http })
    }

    async fn produce(&self, envelope: &Envelope, manifest: &JobManifest) -> Result<Vec<OutputFile>, StageError> {
        let reference_key = envelope
            .inputs
            .first()
            .ok_or_else(|| StageError::permanent("bad_input", "postprocess message names no video"))?;
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let reference = dir.path().join("reference.mp4");
        self.storage.download(self.manifests.bucket(), reference_key, &reference).await?;
        let probe = self.media.probe(&reference).await?;
        let (w, h) = probe
            .display_dimensions()
            .ok_or_else(|| StageError::permanent("bad_input", "reference has no video stream"))?;
        let duration = probe.duration().unwrap_or(0.0);
        // Every decode is held to the duration the job was validated for (the
        // normalized video's, or the prompt's for a generated one).
        let validated = match &manifest.preprocess {
            Some(p) if p.normalized_key.is_some() => Some(p.duration_s),
            _ => manifest.prompt.as_ref().map(|p| p.duration_seconds),
        };
        let fps = probe.video().and_then(|v| v.fps()).unwrap_or(0.0);
        let input_bytes = std::fs::metadata(&reference)?.len();
        let media = match validated.or(probe.duration()) {
            Some(duration_s) => self.media.bounded(Bounds { duration_s, width: w, height: h, fps, input_bytes }),
            None => self.media.clone(),
        };
        let media = &media;
        let vmaf = self.media.has_filter("libvmaf").await;
        let job = &envelope.job_id;
        let mut outputs = Vec::new();
        for plan in plan_renditions(w, h) {
            let file = ffmpeg::rendition_file(&plan);
            let path = dir.path().join(&file);
            self.encode(media, &reference, &path, &plan).await?;
            let mut out = self.describe(&path, &plan.name, "video/mp4").await?;
            let (psnr, ssim, vmaf_score) =
                self.quality(media, &path, &reference, plan.width, plan.height, vmaf).await?;
            (out.psnr_db, out.ssim, out.vmaf) = (psnr, ssim, vmaf_score);
            out.key = stage_key(job, "postprocess", &file);
            self.storage.upload(self.manifests.bucket(), &out.key, &path, "video/mp4").await?;
            outputs.push(out);
        }
        let poster = dir.path().join(ffmpeg::POSTER);
        let args = ffmpeg::poster_args(media, &reference, &poster, duration);
        media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("poster"))?;
        let mut out = self.describe(&poster, "poster", "image/jpeg").await?;
        out.key = stage_key(job, "postprocess", ffmpeg::POSTER);
        self.storage.upload(self.manifests.bucket(), &out.key, &poster, "image/jpeg").await?;
        outputs.push(out);

        let sprite = dir.path().join(ffmpeg::SPRITE);
        let args = ffmpeg::sprite_args(media, &reference, &sprite, &self.settings.postprocess, duration);
        media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("sprite"))?;
        let mut out = self.describe(&sprite, "sprite", "image/jpeg").await?;
        out.key = stage_key(job, "postprocess", ffmpeg::SPRITE);
        self.storage.upload(self.manifests.bucket(), &out.key, &sprite, "image/jpeg").await?;
        outputs.push(out);
        Ok(outputs)
    }

    async fn encode(&self, media: &Media, input: &Path, output: &Path, plan: &RenditionPlan) -> Result<(), StageError> {
        let args = ffmpeg::encode_args(media, input, output, plan, &self.settings.postprocess);
        media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context(format!("encode {}", plan.name)))?;
        Ok(())
    }

    async fn describe(&self, path: &Path, name: &str, content_type: &str) -> Result<OutputFile, StageError> {
        let probe = self.media.probe(path).await?;
        let v = probe.video().ok_or_else(|| StageError::permanent("media", format!("{name} has no video stream")))?;
        let size = tokio::fs::metadata(path).await?.len();
        let is_video = content_type.starts_with("video/");
        Ok(OutputFile {
            name: name.into(),
            key: String::new(),
            content_type: content_type.into(),
            codec: v.codec_name.clone(),
            width: v.width.unwrap_or(0),
            height: v.height.unwrap_or(0),
            duration_s: if is_video { probe.duration() } else { None },
            bitrate: if is_video { probe.bit_rate() } else { None },
            size_bytes: size,
            psnr_db: None,
            ssim: None,
            vmaf: None,
        })
    }

    /// PSNR, SSIM (and VMAF) of a `w`x`h` rendition against the reference
    /// scaled the same way: the loss the encoder added, not the intended downscale.
    async fn quality(
        &self,
        media: &Media,
        rendition: &Path,
        reference: &Path,
        w: u32,
        h: u32,
        vmaf: bool,
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>), StageError> {
        let args = ffmpeg::quality_args(media, rendition, reference, w, h, vmaf);
        let log = media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("quality check"))?;
        let (psnr, ssim, vmaf_score) = parse_quality(&log);
        if psnr.is_none() || ssim.is_none() {
            return Err(StageError::permanent("quality", "ffmpeg reported no PSNR/SSIM"));
        }
        Ok((psnr, ssim, vmaf_score))
    }

    async fn purge(&self, m: &JobManifest) -> Option<String> {
        let url = self.settings.postprocess.cdn_purge_url.as_ref()?;
        let keys: Vec<&str> = m.outputs.iter().map(|o| o.key.as_str()).collect();
        let mut req = self.http.post(url).json(&serde_json::json!({"job_id": m.job_id, "paths": keys}));
        if let Some(token) = &self.settings.postprocess.cdn_purge_token {
            req = req.bearer_auth(token.expose());
        }
        Some(match req.send().await {
            Ok(r) if r.status().is_success() => format!("purged (HTTP {})", r.status().as_u16()),
            Ok(r) => {
                warn!(status = r.status().as_u16(), "CDN purge refused");
                format!("failed: HTTP {}", r.status().as_u16())
            }
            Err(e) => {
                warn!(error = %e, "CDN purge failed");
                format!("failed: {e}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renditions_never_upscale() {
        let p = plan_renditions(1920, 1080);
        assert_eq!(
            p.iter().map(|r| (r.name.as_str(), r.width, r.height)).collect::<Vec<_>>(),
            vec![("h264_720p", 1280, 720), ("h264_1080p", 1920, 1080), ("h265_720p", 1280, 720)]
        );
        let p = plan_renditions(640, 360);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|r| r.width == 640 && r.height == 360));
        let p = plan_renditions(1080, 1920);
        assert_eq!((p[0].width, p[0].height), (720, 1280));
    }

    #[test]
    fn quality_log() {
        let log = "[Parsed_psnr_2 @ 0x1] PSNR y:40.1 u:44.0 v:45.0 average:41.23 min:39.0 max:44.0\n[Parsed_ssim_3 @ 0x2] SSIM Y:0.98 (17.1) U:0.99 V:0.99 All:0.985 (18.2)";
        assert_eq!(parse_quality(log), (Some(41.23), Some(0.985), None));
    }
}
