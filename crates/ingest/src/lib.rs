//! reelfleet-ingest: turns S3 event notifications (AWS or MinIO bodies) and
//! direct submissions into jobs. It classifies each object (a video, or a
//! generate prompt document), validates it against the limits, drops a
//! source it already knows, writes `jobs/<job_id>/manifest.json` and
//! forwards the job to preprocess.
//!
//! Bucket events of keys under `pulled/` are ignored: the pull worker
//! hands those jobs over with their own envelope.
//!
//! - this file: the stage (events split into jobs, validation, the manifest).
//! - [`ffmpeg`]: the ffprobe and ffmpeg runs that validate a video.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ffmpeg;

use async_trait::async_trait;
use reelfleet_core::{
    envelope::{Envelope, JobKind, Quality, SourceObject},
    error::{ErrorClass, StageError},
    events::{Event, JOB_CREATED},
    jobstate::{decide, Decision, PipelineStage},
    json::parse_bounded,
    manifest::{InputInfo, JobFailure, JobManifest, JobStatus, ManifestStore, PromptDocument},
    media::{scratch_dir, Bounds, Media, MediaError},
    runtime::{Dispatch, Input, Message, Stage},
    s3event::{parse_event, CreatedObject},
    settings::{Settings, PULLED_PREFIX},
    storage::Storage,
    topology::WorkQueue,
};
use std::sync::Arc;
use tracing::{info, warn};

/// Object metadata (`x-amz-meta-reelfleet-priority`) giving a video's priority, 1 to 5.
pub const META_PRIORITY: &str = "reelfleet-priority";
/// Object metadata (`x-amz-meta-reelfleet-quality`) giving a video's requested quality.
pub const META_QUALITY: &str = "reelfleet-quality";

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Longest video a prompt may ask for, in seconds.
pub const MAX_GENERATE_SECONDS: f64 = 60.0;

/// The ingest stage.
#[derive(Clone, Debug)]
pub struct Ingest {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    media: Media,
}

#[async_trait]
impl Stage for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Ingest]
    }

    fn accepts_unsigned(&self) -> bool {
        true
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        match msg.input {
            Input::Raw(body) => {
                let objects = parse_event(&body).map_err(|e| StageError::permanent("bad_input", e))?;
                if objects.is_empty() {
                    info!("S3 event announces no created object; ignored");
                }
                // An unsigned event is never signed on for a bucket ingest does not take.
                let (objects, foreign): (Vec<_>, Vec<_>) =
                    objects.into_iter().partition(|o| self.settings.s3.accepts(&o.bucket));
                if let Some(first) = foreign.first() {
                    let why = format!(
                        "bucket {:?} is not an upload bucket (s3.upload_bucket, s3.accepted_buckets)",
                        first.bucket
                    );
                    if objects.is_empty() {
                        return Err(StageError::permanent("bad_input", why));
                    }
                    warn!(refused = foreign.len(), "{why}; its records are left out");
                }
                if objects.len() > 1 {
                    // One object's fate must not decide the others': each goes
                    // back to ingest as an event of its own, unsigned as it came.
                    let events = split_event(&body, |o| self.settings.s3.accepts(&o.bucket));
                    info!(records = events.len(), "S3 event with several records split into one event each");
                    return Ok(events
                        .into_iter()
                        .map(|body| Dispatch::Unsigned { queue: WorkQueue::Ingest, body })
                        .collect());
                }
                let Some(obj) = objects.into_iter().next() else { return Ok(Vec::new()) };
                if obj.key.starts_with(PULLED_PREFIX) {
                    // The pull worker sends the job's own signed envelope once the object is whole.
                    info!(key = %obj.key, "S3 event ignored: handed over by the pull worker");
                    return Ok(Vec::new());
                }
                let mut source = SourceObject {
                    bucket: obj.bucket,
                    key: obj.key,
                    size: obj.size,
                    etag: obj.etag,
                    version_id: obj.version_id,
                };
                if source.etag.is_none() && source.version_id.is_none() {
                    // The job id needs the object's identity; ask the store.
                    let info = self.storage.head(&source.bucket, &source.key).await?.ok_or_else(|| {
                        StageError::permanent(
                            "bad_input",
                            format!("s3://{}/{} no longer exists", source.bucket, source.key),
                        )
                    })?;
                    source.etag = info.etag;
                }
                self.admit_or_record(Envelope::new(JobKind::Analyze, source)).await
            }
            Input::Envelope(envelope) => self.admit_or_record(envelope).await,
        }
    }
}

/// One S3 event per record of `body` that announces an object `keep` takes,
/// each `{"Records": [record]}` with the record as it came.
fn split_event(body: &[u8], keep: impl Fn(&CreatedObject) -> bool) -> Vec<Vec<u8>> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let records = value.get("Records").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    records
        .into_iter()
        .map(|record| serde_json::to_vec(&serde_json::json!({ "Records": [record] })).unwrap_or_default())
        .filter(|one| parse_event(one).map(|objs| objs.len() == 1 && objs.iter().all(&keep)).unwrap_or(false))
        .collect()
}

/// Whether an object key names a prompt document.
pub fn is_prompt_key(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with(".json")
}

impl Ingest {
    /// Admits one source; a source refused for good gets a failed manifest so
    /// that `reelfleet status` and `submit --wait` can say why (not one in a
    /// bucket ingest does not take: nothing is written for it).
    async fn admit_or_record(&self, envelope: Envelope) -> Result<Vec<Dispatch>, StageError> {
        if !self.settings.s3.accepts(&envelope.source.bucket) {
            // Whoever can publish to the uploads queue must not make the workers read other buckets.
            return Err(StageError::permanent(
                "bad_input",
                format!(
                    "bucket {:?} is not an upload bucket (s3.upload_bucket, s3.accepted_buckets)",
                    envelope.source.bucket
                ),
            ));
        }
        match self.admit(envelope.clone()).await {
            Ok(next) => Ok(next),
            Err(e) if e.class == ErrorClass::Permanent => {
                let mut manifest = JobManifest::new(&envelope);
                manifest.status = JobStatus::Failed;
                manifest.error = Some(JobFailure {
                    stage: "ingest".into(),
                    class: e.class,
                    code: e.code.into(),
                    message: e.message.clone(),
                    attempts: envelope.attempt + 1,
                    at: chrono::Utc::now(),
                });
                if let Err(store) = self.manifests.create(&mut manifest).await {
                    warn!(error = %store, "Could not record the refused source");
                }
                Err(e.for_job(&envelope.job_id))
            }
            Err(e) => Err(e),
        }
    }

    /// The stage for `settings`; fails when ffmpeg cannot be made safe to run
    /// (its demuxer allow-list cannot be built).
    pub fn new(settings: Arc<Settings>, storage: Storage) -> Result<Self, MediaError> {
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let media = Media::new(settings.media.clone())?;
        Ok(Self { settings, storage, manifests, media })
    }

    /// Validates one source and returns the message for preprocess, or nothing for a duplicate.
    async fn admit(&self, mut envelope: Envelope) -> Result<Vec<Dispatch>, StageError> {
        let started = chrono::Utc::now();
        let job_id = envelope.job_id.clone();
        if let Some(existing) = self.manifests.load(&job_id).await? {
            return Ok(known_source(&existing));
        }
        let key = envelope.source.key.clone();
        let mut manifest;
        if is_prompt_key(&key) {
            let doc = self.read_prompt(&envelope.source).await?;
            envelope.kind = JobKind::Generate;
            envelope.priority = doc.priority;
            envelope.quality = Some(doc.resolution);
            manifest = JobManifest::new(&envelope);
            manifest.prompt = Some(doc);
        } else {
            envelope.kind = JobKind::Analyze;
            let input =
                self.validate_video(&mut envelope.source, &mut envelope.priority, &mut envelope.quality).await?;
            manifest = JobManifest::new(&envelope);
            manifest.input = Some(input);
        }
        // Uploaders do not choose the most expensive model for themselves.
        let cap = self.settings.limits.max_uploader_priority;
        if envelope.priority > cap {
            warn!(job_id = %job_id, asked = envelope.priority, cap, "Priority above limits.max_uploader_priority; lowered");
            manifest.requested_priority = Some(envelope.priority);
            envelope.priority = cap;
            manifest.priority = cap;
            if let Some(doc) = manifest.prompt.as_mut() {
                doc.priority = cap;
            }
        }
        manifest.status = JobStatus::Preprocess;
        manifest.record_stage("ingest", started, envelope.attempt);
        // Creating the manifest is ingest's claim: of two deliveries of one source, one creates.
        if !self.manifests.create(&mut manifest).await? {
            info!(job_id = %job_id, "Source admitted concurrently by another delivery; duplicate dropped");
            return Ok(Vec::new());
        }
        info!(job_id = %job_id, kind = %envelope.kind, key = %key, "Job admitted");
        let created = Event::new(JOB_CREATED, &job_id).with_job(&manifest);
        Ok(vec![
            Dispatch::Next { queue: WorkQueue::Preprocess, envelope: envelope.forward(Vec::new()) },
            Dispatch::Event { routing_key: JOB_CREATED.into(), body: created.to_bytes() },
            Dispatch::Handoff { job_id },
        ])
    }

    async fn read_prompt(&self, source: &SourceObject) -> Result<PromptDocument, StageError> {
        let limit = self.settings.limits.max_prompt_bytes;
        let body = self.storage.get_bytes(&source.bucket, &source.key, limit).await?;
        parse_prompt(&body)
    }

    async fn validate_video(
        &self,
        source: &mut SourceObject,
        priority: &mut u8,
        quality: &mut Option<Quality>,
    ) -> Result<InputInfo, StageError> {
        let limits = &self.settings.limits;
        let info = self.storage.head(&source.bucket, &source.key).await?.ok_or_else(|| {
            StageError::permanent("bad_input", format!("s3://{}/{} no longer exists", source.bucket, source.key))
        })?;
        if info.size == 0 {
            return Err(StageError::permanent("bad_input", "object is empty (0 bytes)"));
        }
        if info.size > limits.max_bytes {
            return Err(StageError::permanent(
                "bad_input",
                format!("object is {} bytes, above the {}-byte limit", info.size, limits.max_bytes),
            ));
        }
        // The store's own ETag, not the event's: every later read is pinned to it.
        if info.etag.is_some() {
            source.etag = info.etag.clone();
        }
        if let Some(p) = info.metadata.get(META_PRIORITY) {
            match p.trim().parse::<u8>() {
                Ok(p) if (1..=5).contains(&p) => *priority = p,
                _ => {
                    return Err(StageError::permanent(
                        "bad_input",
                        format!("metadata {META_PRIORITY}={p:?} is not 1..=5"),
                    ))
                }
            }
        }
        if let Some(q) = info.metadata.get(META_QUALITY) {
            *quality = Some(q.parse().map_err(|e: String| StageError::permanent("bad_input", e))?);
        }
        source.size = info.size;

        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let path = dir.path().join("source");
        self.storage.download_pinned(&source.bucket, &source.key, &path, source.etag.as_deref()).await?;
        let probe = self.media.probe(&path).await.map_err(|e| StageError::from(e).context("not a readable video"))?;
        if probe.streams.len() > limits.max_streams {
            return Err(StageError::permanent(
                "bad_input",
                format!("{} streams, above the limit of {}", probe.streams.len(), limits.max_streams),
            ));
        }
        let video = probe.video().ok_or_else(|| {
            StageError::permanent("bad_input", format!("no video stream (container {})", probe.format.format_name))
        })?;
        let (width, height) = probe
            .display_dimensions()
            .filter(|(w, h)| *w > 0 && *h > 0)
            .ok_or_else(|| StageError::permanent("bad_input", "video stream has no dimensions"))?;
        if width > limits.max_width || height > limits.max_height {
            return Err(StageError::permanent(
                "bad_input",
                format!("{width}x{height} exceeds the {}x{} limit", limits.max_width, limits.max_height),
            ));
        }
        let fps = video.fps().unwrap_or(0.0);
        let duration = match ffmpeg::declared_duration(&probe) {
            Some(d) => d,
            // A stream that declares no duration (a raw elementary stream) would step
            // around the limits: count its frames, without decoding, before anything else.
            None => {
                let frames = self.media.count_video_packets(&path).await?;
                if fps <= 0.0 {
                    return Err(StageError::permanent(
                        "bad_input",
                        format!("the video declares neither a duration nor a frame rate ({frames} frames)"),
                    ));
                }
                warn!(key = %source.key, frames, fps, "Container reports no duration; counted its frames");
                frames as f64 / fps
            }
        };
        if duration > limits.max_duration_secs {
            return Err(StageError::permanent(
                "bad_input",
                format!("{duration:.1} s exceeds the {:.0} s limit", limits.max_duration_secs),
            ));
        }
        if fps > 1000.0 {
            return Err(StageError::permanent("bad_input", format!("declared frame rate {fps:.0} fps is absurd")));
        }
        let declared = video.nb_frames.as_deref().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let frames = declared.max((duration * fps).ceil() as u64);
        if frames > limits.max_frames {
            return Err(StageError::permanent(
                "bad_input",
                format!("{frames} frames exceed the limit of {}", limits.max_frames),
            ));
        }
        // The container can lie: decode the first second to prove there are frames.
        let first_second = Bounds { duration_s: duration.min(1.0), width, height, fps, input_bytes: info.size };
        let media = self.media.bounded(first_second);
        let args = ffmpeg::decode_check_args(&media, &path);
        media.ffmpeg(&args).await.map_err(|e| StageError::from(e).context("video does not decode"))?;
        Ok(InputInfo {
            container: probe.format.format_name.clone(),
            codec: video.codec_name.clone(),
            width,
            height,
            duration_s: duration,
            fps,
            pix_fmt: video.pix_fmt.clone(),
            rotation: video.rotation(),
            has_audio: probe.has_audio(),
            size_bytes: info.size,
        })
    }
}

/// What a message for a source that already has a job does: nothing, unless
/// ingest admitted it but its hand-over to preprocess was never confirmed.
fn known_source(existing: &JobManifest) -> Vec<Dispatch> {
    match decide(existing, PipelineStage::Ingest, chrono::Utc::now()) {
        Decision::Reforward => {
            info!(job_id = %existing.job_id, "Job admitted before but not handed on; sending it to preprocess again");
            vec![
                Dispatch::Next { queue: WorkQueue::Preprocess, envelope: existing.envelope() },
                Dispatch::Handoff { job_id: existing.job_id.clone() },
            ]
        }
        other => {
            info!(job_id = %existing.job_id, key = %existing.source.key, status = %existing.status, decision = ?other, "Source already known; duplicate dropped");
            Vec::new()
        }
    }
}

/// Parses and validates a prompt document.
pub fn parse_prompt(body: &[u8]) -> Result<PromptDocument, StageError> {
    let doc: PromptDocument =
        parse_bounded(body).map_err(|e| StageError::permanent("bad_input", format!("invalid prompt document: {e}")))?;
    let bad = |m: String| Err(StageError::permanent("bad_input", format!("invalid prompt document: {m}")));
    if doc.prompt.trim().is_empty() {
        return bad("prompt is empty".into());
    }
    if doc.prompt.chars().count() > MAX_PROMPT_CHARS {
        return bad(format!("prompt longer than {MAX_PROMPT_CHARS} characters"));
    }
    if !(doc.duration_seconds.is_finite() && doc.duration_seconds > 0.0 && doc.duration_seconds <= MAX_GENERATE_SECONDS)
    {
        return bad(format!("duration_seconds must be in (0, {MAX_GENERATE_SECONDS}]"));
    }
    if !(1..=5).contains(&doc.priority) {
        return bad(format!("priority {} is not in 1..=5", doc.priority));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_documents() {
        let ok = br#"{"prompt":"a red fox","duration_seconds":3,"resolution":"720p","priority":5}"#;
        assert_eq!(parse_prompt(ok).unwrap().priority, 5);
        for bad in [
            &br#"{"prompt":"","duration_seconds":3,"resolution":"720p"}"#[..],
            br#"{"prompt":"x","duration_seconds":3,"resolution":"8k"}"#,
            br#"{"prompt":"x","duration_seconds":-1,"resolution":"720p"}"#,
            br#"{"prompt":"x","duration_seconds":3,"resolution":"720p","priority":9}"#,
            br#"{"prompt":"x","duration_seconds":3,"resolution":"720p","extra":1}"#,
            br#"{"prompt":"x""#,
        ] {
            assert!(parse_prompt(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(is_prompt_key("a/B.JSON"));
        assert!(!is_prompt_key("a.mp4"));
    }
}
