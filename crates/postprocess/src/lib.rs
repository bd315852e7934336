//! reelfleet-postprocess: encodes the deliverables in one ffmpeg process
//! that decodes the normalized video once (H.264 at 720p and at the
//! normalized resolution, H.265 at 720p, never upscaling, each as a faststart
//! MP4 and as an HLS variant of CMAF segments aligned across renditions; a
//! poster and a thumbnail sprite; the H.264 rendition the normalized video
//! already is copied from it, not encoded; the encoders measuring each
//! encoded rendition's PSNR and SSIM against the frames they were given),
//! measures in a second process only what the encoders cannot (VMAF where
//! ffmpeg has libvmaf; x264 encodes the ladder's log cannot tell apart),
//! encodes a rendition below the floor again alone at a better quality,
//! writes the HLS master playlist and the final manifest, calls the CDN purge
//! hook and publishes `job.completed`.
//!
//! - this file: the stage (renditions planned, outputs described and
//!   uploaded, the quality floor, the final manifest, `job.completed`).
//! - [`ffmpeg`]: the ffprobe and ffmpeg runs of an analyze job.
//! - [`hls`]: variant playlists read back, bandwidth and codecs, the master playlist.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ffmpeg;
pub mod hls;

use async_trait::async_trait;
use reelfleet_core::{
    envelope::Envelope,
    error::StageError,
    jobstate::{envelope_of, Claimed, JobClaims, PipelineStage},
    manifest::{
        stage_key, HlsOutput, HlsVariant, JobManifest, JobStatus, ManifestStore, OutputFile, QualityCheck,
        RenditionEncode, VideoEncode,
    },
    media::{scratch_dir, Bounds, Media, MediaError, Probe},
    runtime::{Dispatch, Message, Stage},
    settings::{preset_at_least, PostprocessSettings, Settings},
    storage::Storage,
    topology::WorkQueue,
};
use std::{path::Path, sync::Arc, time::Duration};
use tracing::{info, warn};

/// A rendition's PSNR (dB), SSIM and VMAF.
type Scores = (Option<f64>, Option<f64>, Option<f64>);

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
    /// The reference's own streams copied as this rendition instead of an
    /// encode (see [`copies_reference`]); `false` from [`plan_renditions`].
    pub copy: bool,
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
    let plan = |name: String, encoder, width, height| RenditionPlan { name, encoder, width, height, copy: false };
    let mut plans = vec![plan("h264_720p".into(), "libx264", w720, h720)];
    if short > 720 {
        plans.push(plan(format!("h264_{short}p"), "libx264", w, h));
    }
    plans.push(plan("h265_720p".into(), "libx265", w720, h720));
    plans
}

/// Whether the reference, `width`x`height` with its picture encoded as
/// `made` says, already is the rendition `plan` that `e` and `s` would
/// encode from it: same size, same encoder and CRF, a keyframe at every
/// segment boundary and nowhere else, at a preset that searches at least
/// as hard as the tier's. Encoding it again would spend the encoder's time
/// to lose a generation of quality; its streams are copied instead.
pub fn copies_reference(
    plan: &RenditionPlan,
    (width, height): (u32, u32),
    made: Option<&VideoEncode>,
    s: &PostprocessSettings,
    e: &ffmpeg::Encoding<'_>,
) -> bool {
    let Some(made) = made else { return false };
    let same_segments = made.keyframe_secs.is_some_and(|k| (k - e.segment_secs).abs() < 1e-9);
    (plan.width, plan.height) == (width, height)
        && made.encoder == plan.encoder
        && made.crf == ffmpeg::crf(plan, s, 0)
        && same_segments
        && e.fps > 0.0
        && preset_at_least(&made.preset, e.preset)
}

/// The renditions of a `width`x`height` reference made as `made` says
/// ([`plan_renditions`]), each marked copied where [`copies_reference`] holds.
pub fn plan_ladder(
    (width, height): (u32, u32),
    made: Option<&VideoEncode>,
    s: &PostprocessSettings,
    e: &ffmpeg::Encoding<'_>,
) -> Vec<RenditionPlan> {
    let mut plans = plan_renditions(width, height);
    for p in &mut plans {
        p.copy = copies_reference(p, (width, height), made, s, e);
    }
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
        // The reference is preprocess's normalized video: its size and duration set the time the calls may take.
        let reference = held.manifest.preprocess.as_ref().filter(|p| p.duration_s > 0.0).map(|p| Bounds {
            duration_s: p.duration_s,
            width: p.width,
            height: p.height,
            fps: f64::from(p.fps),
            input_bytes: 0,
        });
        if let Some(bounds) = reference.or(held.manifest.input.as_ref().map(Bounds::from)) {
            let secs = bounds.stage_timeout_secs(
                &self.settings.media,
                self.settings.runtime.job_timeout_secs,
                POSTPROCESS_FFMPEG_CALLS,
            );
            let secs = msg.deadline.raise_to(secs);
            info!(timeout_s = secs, "Message timeout set from the source");
        }
        let (outputs, hls) = self.produce(&envelope, &held.manifest).await?;
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
        draft.hls = Some(hls.clone());
        let cdn_purge = self.purge(&draft).await;
        let stored = held
            .commit(|m| {
                m.quality_check = Some(quality_check.clone());
                m.outputs = outputs.clone();
                m.hls = Some(hls.clone());
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
/// ffmpeg calls postprocess may make of one job: the ladder, a quality check
/// (VMAF, or x264 encodes the ladder's log cannot tell apart), and a
/// rendition under the floor encoded and measured again.
pub const POSTPROCESS_FFMPEG_CALLS: u32 = 4;

fn completed(m: &JobManifest) -> Vec<Dispatch> {
    vec![completed_event(m), Dispatch::Handoff { job_id: m.job_id.clone() }]
}

fn completed_event(m: &JobManifest) -> Dispatch {
    // A job completes once: the same id for every publish of it, so the index keeps one.
    let event = reelfleet_core::events::Event {
        id: format!("completed-{}", m.job_id),
        ..reelfleet_core::events::Event::new(reelfleet_core::events::JOB_COMPLETED, &m.job_id)
    }
    .with_job(m);
    let mut body = serde_json::to_value(&event).expect("json");
    for (k, v) in [
        ("source", serde_json::json!(m.source)),
        ("cost_usd", serde_json::json!(m.cost_usd())),
        ("outputs", serde_json::json!(m.outputs.iter().map(|o| &o.key).collect::<Vec<_>>())),
        ("hls", serde_json::json!(m.hls.as_ref().map(|h| &h.master_key))),
        ("manifest", serde_json::json!(reelfleet_core::manifest::manifest_key(&m.job_id))),
    ] {
        body[k] = v;
    }
    Dispatch::Event { routing_key: "job.completed".into(), body: serde_json::to_vec(&body).expect("json") }
}

/// PSNR, SSIM and VMAF of the rendition `name` from the log of a
/// [`ffmpeg::quality_args`] run, whose filters are named `psnr@<name>` and so on.
pub fn parse_quality_of(log: &str, name: &str) -> Scores {
    let mine: String = log
        .lines()
        .filter(|l| ["psnr", "ssim", "libvmaf"].iter().any(|f| l.starts_with(&format!("[{f}@{name} @"))))
        .collect::<Vec<_>>()
        .join("\n");
    parse_quality(&mine)
}

/// PSNR (`average`: of the mean squared error over every plane and frame),
/// luma SSIM (`Y`, the mean over frames: what x264 and x265 report of
/// themselves, [`ffmpeg::x265_scores`]) and VMAF parsed from ffmpeg's log.
pub fn parse_quality(log: &str) -> Scores {
    let find = |marker: &str, key: &str| {
        log.lines()
            .filter(|l| l.contains(marker))
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|v| if v == "inf" { Some(100.0) } else { v.parse::<f64>().ok() })
            .next_back()
    };
    (find("PSNR", "average:"), find("SSIM", " Y:"), find("VMAF score", "VMAF score:"))
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

    async fn produce(
        &self,
        envelope: &Envelope,
        manifest: &JobManifest,
    ) -> Result<(Vec<OutputFile>, HlsOutput), StageError> {
        let reference_key = envelope
            .inputs
            .first()
            .ok_or_else(|| StageError::permanent("bad_input", "postprocess message names no video"))?;
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let dir = dir.path();
        let reference = dir.join("reference.mp4");
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
        let s = &self.settings.postprocess;
        let media_settings = &self.settings.media;
        let preset = match envelope.tier.or(manifest.tier) {
            Some(tier) => media_settings.tier_presets.of(tier),
            None => media_settings.preset.as_str(),
        };
        // What preprocess recorded of how it encoded the reference, if it is the normalized video.
        let made = manifest
            .preprocess
            .as_ref()
            .filter(|p| p.normalized_key.as_ref() == Some(reference_key))
            .and_then(|p| p.video_encode.as_ref());
        // The encoders measure PSNR and SSIM unless a filter pass runs for VMAF anyway;
        // the normalized video's audio is the renditions' already.
        let encoding = ffmpeg::Encoding {
            preset,
            segment_secs: media_settings.hls_segment_secs,
            fps,
            measure: !vmaf,
            audio_copy: made.is_some(),
        };
        let renditions = plan_ladder((w, h), made, s, &encoding);
        for r in renditions.iter().filter(|r| r.copy) {
            info!(rendition = %r.name, "Rendition copied from the normalized video, not encoded");
        }
        for r in &renditions {
            tokio::fs::create_dir_all(dir.join(ffmpeg::HLS_DIR).join(&r.name)).await?;
        }

        let args = ffmpeg::ladder_args(media, &reference, dir, &renditions, &encoding, s, duration);
        let log = media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("ladder"))?;
        let mut described = Vec::new();
        for r in &renditions {
            let (mut out, probe) = self.describe(&dir.join(ffmpeg::rendition_file(r)), &r.name, "video/mp4").await?;
            out.encode = Some(if r.copy { RenditionEncode::Copy } else { RenditionEncode::Encode });
            out.identical_to = r.copy.then(|| reference_key.clone());
            described.push((out, probe));
        }
        let (poster, _) = self.describe(&dir.join(ffmpeg::POSTER), "poster", "image/jpeg").await?;
        let (sprite, _) = self.describe(&dir.join(ffmpeg::SPRITE), "sprite", "image/jpeg").await?;
        // A copied rendition is the reference: there is nothing to measure.
        let encoded: Vec<RenditionPlan> = renditions.iter().filter(|r| !r.copy).cloned().collect();
        let mut scores = self.scores(media, &reference, dir, &encoded, &log, vmaf).await?.into_iter();
        for (r, (out, _)) in renditions.iter().zip(described.iter_mut()) {
            if !r.copy {
                (out.psnr_db, out.ssim, out.vmaf) = scores.next().unwrap_or_default();
            }
        }

        // A rendition under the floor gets one more encode, alone, at a better quality.
        let step = media_settings.reencode_crf_step;
        for (r, (out, probed)) in renditions.iter().zip(described.iter_mut()) {
            if !self.below_floor(out) {
                continue;
            }
            let first = format!(
                "below the floor at CRF {} (PSNR {:.2} dB, SSIM {:.4}); encoded again at CRF {}",
                ffmpeg::crf(r, s, 0),
                out.psnr_db.unwrap_or(0.0),
                out.ssim.unwrap_or(0.0),
                ffmpeg::crf(r, s, step)
            );
            info!(rendition = %r.name, "{first}");
            let args = ffmpeg::reencode_args(media, &reference, dir, r, &encoding, s, step);
            let log =
                media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context(format!("re-encode {}", r.name)))?;
            let (mut again, probe) = self.describe(&dir.join(ffmpeg::rendition_file(r)), &r.name, "video/mp4").await?;
            let score = self.scores(media, &reference, dir, std::slice::from_ref(r), &log, vmaf).await?;
            (again.psnr_db, again.ssim, again.vmaf) = score[0];
            again.reencoded = Some(first);
            again.encode = Some(RenditionEncode::Encode);
            (*out, *probed) = (again, probe);
        }

        let hls = self.write_hls(dir, &envelope.job_id, &renditions, &described, fps).await?;
        let job = &envelope.job_id;
        let mut outputs = Vec::new();
        for (r, (mut out, _)) in renditions.iter().zip(described) {
            let file = ffmpeg::rendition_file(r);
            out.key = stage_key(job, "postprocess", &file);
            self.storage.upload(self.manifests.bucket(), &out.key, &dir.join(&file), "video/mp4").await?;
            outputs.push(out);
        }
        for (mut out, file) in [(poster, ffmpeg::POSTER), (sprite, ffmpeg::SPRITE)] {
            out.key = stage_key(job, "postprocess", file);
            self.storage.upload(self.manifests.bucket(), &out.key, &dir.join(file), "image/jpeg").await?;
            outputs.push(out);
        }
        Ok((outputs, hls))
    }

    fn below_floor(&self, o: &OutputFile) -> bool {
        let s = &self.settings.postprocess;
        o.psnr_db.is_some_and(|p| p < s.min_psnr_db) || o.ssim.is_some_and(|v| v < s.min_ssim)
    }

    /// Reads back every variant playlist ffmpeg wrote, checks that segments
    /// start at the same times in every variant, uploads the variants (init
    /// and segments, then the playlist) and last the master playlist.
    async fn write_hls(
        &self,
        dir: &Path,
        job: &str,
        renditions: &[RenditionPlan],
        described: &[(OutputFile, Probe)],
        fps: f64,
    ) -> Result<HlsOutput, StageError> {
        let bad = |what: String| StageError::permanent("hls", what);
        let hls_dir = dir.join(ffmpeg::HLS_DIR);
        let mut variants = Vec::new();
        let mut master = Vec::new();
        let mut first_starts: Option<(String, Vec<f64>)> = None;
        // Half a frame: EXTINF is printed to the microsecond.
        let tolerance = if fps > 0.0 { 0.5 / fps } else { 0.02 };
        for (r, (out, probe)) in renditions.iter().zip(described) {
            let folder = hls_dir.join(&r.name);
            let text = tokio::fs::read_to_string(folder.join(ffmpeg::VARIANT_PLAYLIST)).await?;
            let playlist = hls::parse_variant(&text);
            if playlist.segments.is_empty() {
                return Err(bad(format!("the HLS variant {} has no segment", r.name)));
            }
            let starts = playlist.starts();
            match &first_starts {
                None => first_starts = Some((r.name.clone(), starts)),
                Some((name, first)) => {
                    let aligned = first.len() == starts.len()
                        && first.iter().zip(&starts).all(|(a, b)| (a - b).abs() <= tolerance);
                    if !aligned {
                        return Err(bad(format!(
                            "HLS segments of {} start at {starts:?} s, those of {name} at {first:?} s",
                            r.name
                        )));
                    }
                }
            }
            let (bandwidth, average_bandwidth) = playlist.bandwidth(&folder)?;
            let codecs: Vec<String> = probe
                .video()
                .into_iter()
                .chain(probe.streams.iter().find(|s| s.codec_type == "audio"))
                .filter_map(hls::codec_string)
                .collect();
            let prefix = format!("{}/{}", ffmpeg::HLS_DIR, r.name);
            for file in playlist.files() {
                let content_type = if file.ends_with(".m4s") { "video/iso.segment" } else { "video/mp4" };
                let key = stage_key(job, &prefix, file);
                self.storage.upload(self.manifests.bucket(), &key, &folder.join(file), content_type).await?;
            }
            let playlist_key = stage_key(job, &prefix, ffmpeg::VARIANT_PLAYLIST);
            self.storage
                .upload(
                    self.manifests.bucket(),
                    &playlist_key,
                    &folder.join(ffmpeg::VARIANT_PLAYLIST),
                    "application/vnd.apple.mpegurl",
                )
                .await?;
            master.push(hls::Variant {
                uri: format!("{}/{}", r.name, ffmpeg::VARIANT_PLAYLIST),
                bandwidth,
                average_bandwidth,
                width: out.width,
                height: out.height,
                fps: (fps > 0.0).then_some(fps),
                codecs: codecs.join(","),
            });
            variants.push(HlsVariant {
                name: r.name.clone(),
                playlist_key,
                bandwidth,
                average_bandwidth,
                width: out.width,
                height: out.height,
                codecs: codecs.join(","),
                segments: playlist.segments.len() as u32,
            });
        }
        let master_path = hls_dir.join(ffmpeg::MASTER_PLAYLIST);
        tokio::fs::write(&master_path, hls::master_playlist(&master)).await?;
        let master_key = stage_key(job, ffmpeg::HLS_DIR, ffmpeg::MASTER_PLAYLIST);
        self.storage
            .upload(self.manifests.bucket(), &master_key, &master_path, "application/vnd.apple.mpegurl")
            .await?;
        Ok(HlsOutput { master_key, segment_secs: self.settings.media.hls_segment_secs, variants })
    }

    async fn describe(&self, path: &Path, name: &str, content_type: &str) -> Result<(OutputFile, Probe), StageError> {
        let probe = self.media.probe(path).await?;
        let v = probe.video().ok_or_else(|| StageError::permanent("media", format!("{name} has no video stream")))?;
        let size = tokio::fs::metadata(path).await?.len();
        let is_video = content_type.starts_with("video/");
        let out = OutputFile {
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
            reencoded: None,
            encode: None,
            identical_to: None,
        };
        Ok((out, probe))
    }

    /// PSNR, SSIM (and VMAF) of `encoded`, the renditions one ffmpeg run
    /// (its log `log`) encoded into `dir`: from their encoders where those
    /// measured ([`ffmpeg::measured_by_encoder`], not with `vmaf`), the rest
    /// in one filter pass against the reference ([`Self::quality`]).
    async fn scores(
        &self,
        media: &Media,
        reference: &Path,
        dir: &Path,
        encoded: &[RenditionPlan],
        log: &str,
        vmaf: bool,
    ) -> Result<Vec<Scores>, StageError> {
        let all: Vec<&RenditionPlan> = encoded.iter().collect();
        let by_filters: Vec<RenditionPlan> = ffmpeg::measured_by_filters(&all, !vmaf).into_iter().cloned().collect();
        let mut filtered = self.quality(media, reference, dir, &by_filters, vmaf).await?.into_iter();
        let mut scores = Vec::new();
        for r in encoded {
            if by_filters.iter().any(|f| f.name == r.name) {
                scores.push(filtered.next().unwrap_or_default());
                continue;
            }
            let measured = if r.encoder == "libx265" {
                let csv = ffmpeg::x265_stats_file(dir, r);
                // Read, then removed: x265 appends to a log it finds, so a
                // re-encode's scores would be averaged with the first encode's.
                tokio::task::spawn_blocking(move || match std::fs::File::open(&csv) {
                    Ok(f) => {
                        let scores = ffmpeg::x265_scores(std::io::BufReader::new(f))?;
                        std::fs::remove_file(&csv)?;
                        Ok(scores)
                    }
                    // x265 did not measure: no retry would make it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                })
                .await
                .map_err(|e| StageError::transient("quality", format!("reading x265's log: {e}")))??
            } else {
                ffmpeg::x264_scores(log)
            };
            let (psnr, ssim) = measured.ok_or_else(|| {
                let said = reelfleet_core::media::tail(log, 400);
                StageError::permanent("quality", format!("{} reported no PSNR/SSIM for {}: {said}", r.encoder, r.name))
            })?;
            info!(rendition = %r.name, psnr_db = psnr, ssim, "Quality measured by the encoder");
            scores.push((Some(psnr), Some(ssim), None));
        }
        Ok(scores)
    }

    /// PSNR, SSIM (and VMAF) of each rendition in `dir` against the
    /// reference scaled the same way (the loss the encoder added, not the
    /// intended downscale), all in one ffmpeg run.
    async fn quality(
        &self,
        media: &Media,
        reference: &Path,
        dir: &Path,
        renditions: &[RenditionPlan],
        vmaf: bool,
    ) -> Result<Vec<Scores>, StageError> {
        if renditions.is_empty() {
            return Ok(Vec::new());
        }
        let files: Vec<std::path::PathBuf> = renditions.iter().map(|r| dir.join(ffmpeg::rendition_file(r))).collect();
        let measured: Vec<(&str, &Path, u32, u32)> =
            renditions.iter().zip(&files).map(|(r, f)| (r.name.as_str(), f.as_path(), r.width, r.height)).collect();
        let args = ffmpeg::quality_args(media, reference, &measured, vmaf);
        let log = media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("quality check"))?;
        renditions
            .iter()
            .map(|r| {
                let (psnr, ssim, vmaf_score) = parse_quality_of(&log, &r.name);
                if psnr.is_none() || ssim.is_none() {
                    return Err(StageError::permanent(
                        "quality",
                        format!("ffmpeg reported no PSNR/SSIM for {}", r.name),
                    ));
                }
                Ok((psnr, ssim, vmaf_score))
            })
            .collect()
    }

    async fn purge(&self, m: &JobManifest) -> Option<String> {
        let url = self.settings.postprocess.cdn_purge_url.as_ref()?;
        let playlists = m.hls.iter().flat_map(|h| {
            std::iter::once(h.master_key.as_str()).chain(h.variants.iter().map(|v| v.playlist_key.as_str()))
        });
        let keys: Vec<&str> = m.outputs.iter().map(|o| o.key.as_str()).chain(playlists).collect();
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
    fn the_rendition_the_reference_already_is_is_copied_and_nothing_else() {
        let s = PostprocessSettings::default();
        let e = ffmpeg::Encoding { preset: "veryfast", segment_secs: 4.0, fps: 24.0, measure: true, audio_copy: true };
        let made =
            VideoEncode { encoder: "libx264".into(), preset: "veryfast".into(), crf: 23, keyframe_secs: Some(4.0) };
        let copied = |size: (u32, u32), made: &VideoEncode, s: &PostprocessSettings, e: &ffmpeg::Encoding<'_>| {
            plan_ladder(size, Some(made), s, e).into_iter().filter(|r| r.copy).map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(copied((1280, 720), &made, &s, &e), ["h264_720p"]);
        assert_eq!(copied((640, 360), &made, &s, &e), ["h264_720p"], "at or below 720p");
        assert_eq!(copied((1920, 1080), &made, &s, &e), ["h264_1080p"], "the 720p ones are scaled: encoded");
        assert!(plan_ladder((1280, 720), None, &s, &e).iter().all(|r| !r.copy), "nothing known of the reference");
        let other_crf = PostprocessSettings { h264_crf: 21, ..Default::default() };
        assert!(copied((1280, 720), &made, &other_crf, &e).is_empty(), "another CRF");
        let no_keyframes = VideoEncode { keyframe_secs: None, ..made.clone() };
        assert!(copied((1280, 720), &no_keyframes, &s, &e).is_empty(), "keyframes not at the segments");
        let other_segments = ffmpeg::Encoding { segment_secs: 2.0, ..e.clone() };
        assert!(copied((1280, 720), &made, &s, &other_segments).is_empty(), "other segments");
        let slower = ffmpeg::Encoding { preset: "fast", ..e.clone() };
        assert!(copied((1280, 720), &made, &s, &slower).is_empty(), "the tier asks for a slower preset");
        let faster = ffmpeg::Encoding { preset: "superfast", ..e.clone() };
        assert_eq!(copied((1280, 720), &made, &s, &faster), ["h264_720p"], "veryfast is as good as superfast");
        let unknown_rate = ffmpeg::Encoding { fps: 0.0, ..e.clone() };
        assert!(copied((1280, 720), &made, &s, &unknown_rate).is_empty(), "no fixed GOP to match");
    }

    #[test]
    fn a_copied_rendition_has_no_branch_in_the_ladder_graph() {
        let mut plans = plan_renditions(1280, 720);
        plans[0].copy = true;
        let graph = ffmpeg::ladder_graph(&plans, 10, 10.0);
        assert!(graph.starts_with("[0:v]split=3[s0][s1][s2];[s0]scale=1280:720"), "{graph}");
        assert!(graph.contains("[v1]") && !graph.contains("[v0]"), "{graph}");
    }

    #[test]
    fn the_quality_of_each_rendition_is_read_from_its_named_filters() {
        let log = "[ssim@h265_720p @ 0x1] SSIM Y:0.97 (16.3) U:0.98 (17.7) V:0.98 (17.3) All:0.978578 (16.69)\n[psnr@h265_720p @ 0x2] PSNR y:35.8 u:37.9 v:37.6 average:36.394660 min:34.2 max:46.0\n[ssim@h264_720p @ 0x3] SSIM Y:0.98 (19.2) U:0.98 (19.5) V:0.98 (19.4) All:0.988340 (19.33)\n[psnr@h264_720p @ 0x4] PSNR y:39.8 u:40.5 v:40.1 average:40.029894 min:37.7 max:47.7";
        assert_eq!(parse_quality_of(log, "h264_720p"), (Some(40.029894), Some(0.98), None));
        assert_eq!(parse_quality_of(log, "h265_720p"), (Some(36.39466), Some(0.97), None));
        assert_eq!(parse_quality_of(log, "h264_1080p"), (None, None, None));
    }

    #[test]
    fn quality_log() {
        let log = "[Parsed_psnr_2 @ 0x1] PSNR y:40.1 u:44.0 v:45.0 average:41.23 min:39.0 max:44.0\n[Parsed_ssim_3 @ 0x2] SSIM Y:0.98 (17.1) U:0.99 V:0.99 All:0.985 (18.2)";
        assert_eq!(parse_quality(log), (Some(41.23), Some(0.98), None));
    }
}
