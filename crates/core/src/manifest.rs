//! The job manifest at `jobs/<job_id>/manifest.json`: the job's status and
//! everything each stage measured and produced, and the object layout.

use crate::{
    envelope::{JobKind, Quality, SourceObject, Tier},
    error::{ErrorClass, StageError},
    storage::{ConditionalPut, Storage, StorageError, WriteCondition},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `schema` of the manifests this build writes.
pub const MANIFEST_SCHEMA: u32 = 1;
/// Largest manifest read back, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// The manifest's key in the work bucket: `jobs/<job_id>/manifest.json`.
pub fn manifest_key(job_id: &str) -> String {
    format!("jobs/{job_id}/manifest.json")
}

/// The key of an object a stage produces: `jobs/<job_id>/<stage>/<name>`.
pub fn stage_key(job_id: &str, stage: &str, name: &str) -> String {
    format!("jobs/{job_id}/{stage}/{name}")
}

/// Where a job is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Not admitted yet: a new manifest's status until ingest moves it on.
    Ingest,
    /// Queued for or in preprocess.
    Preprocess,
    /// Queued for or in inference.
    Inference,
    /// Queued for or in postprocess.
    Postprocess,
    /// Finished; outputs listed.
    Completed,
    /// Dead-lettered; `error` says why.
    Failed,
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).expect("status serializes");
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

/// When a stage ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageTiming {
    /// Start of the successful attempt.
    pub started_at: DateTime<Utc>,
    /// End of the successful attempt.
    pub finished_at: DateTime<Utc>,
    /// Wall time of the successful attempt.
    pub duration_ms: u64,
    /// Attempts it took (1 when it worked the first time).
    pub attempts: u32,
    /// When the broker confirmed the stage's hand-over to the next one. Until
    /// then a redelivered message sends the stored result on again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_at: Option<DateTime<Utc>>,
}

/// A stage's hold on a job: whoever holds an unexpired claim is the only
/// worker running that stage for the job. The holder renews it while it works;
/// a claim whose holder died runs out and is taken over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    /// Stage holding the job.
    pub stage: String,
    /// Unique per hold; the holder proves ownership with it.
    pub lease_id: String,
    /// The holder's attempt (failed attempts before it).
    pub attempt: u32,
    /// Process that holds it (`host:pid`), for operators.
    pub holder: String,
    /// When it was taken.
    pub claimed_at: DateTime<Utc>,
    /// When it runs out unless renewed.
    pub lease_until: DateTime<Utc>,
}

/// What ingest learned of an uploaded video.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct InputInfo {
    /// ffprobe's demuxer names for the container (`mov,mp4,m4a,3gp,3g2,mj2`).
    pub container: String,
    /// The video stream's codec (`h264`, `hevc`, `vp9`, ...).
    pub codec: String,
    /// Width in pixels as displayed (rotation applied).
    pub width: u32,
    /// Height in pixels as displayed (rotation applied).
    pub height: u32,
    /// Length in seconds: as declared, or the counted frames over the frame
    /// rate when the container declares none.
    pub duration_s: f64,
    /// Declared frames per second (average, else base rate); 0 when neither is declared.
    pub fps: f64,
    /// ffmpeg's pixel format name (`yuv420p`); `None` when ffprobe reports none.
    pub pix_fmt: Option<String>,
    /// Display rotation in degrees: 0, 90, 180 or 270.
    pub rotation: i32,
    /// Whether the upload has an audio stream.
    pub has_audio: bool,
    /// The object's size in bytes, from its HEAD.
    pub size_bytes: u64,
}

/// A generate job's prompt document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptDocument {
    /// The text sent to the video model; ingest takes at most 4000 characters.
    pub prompt: String,
    /// Length of the video asked for, in seconds; ingest takes more than 0 and at most 60.
    pub duration_seconds: f64,
    /// `720p`, `1080p` or `4k`.
    pub resolution: Quality,
    /// 1 (lowest) to 5 (highest).
    #[serde(default = "default_priority")]
    pub priority: u8,
}

fn default_priority() -> u8 {
    3
}

/// Content complexity and how the tier was chosen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Complexity {
    /// 0 (static) to 1 (busy).
    pub score: f64,
    /// Mean absolute luma difference between consecutive frames (0 to 255).
    pub motion: f64,
    /// Scene changes per minute.
    pub scene_changes_per_min: f64,
    /// Bits per pixel per frame of the normalized encode.
    pub bits_per_pixel: f64,
}

/// What preprocess produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct PreprocessInfo {
    /// Key of the normalized video in the work bucket; `None` for generate jobs.
    pub normalized_key: Option<String>,
    /// Width of the normalized video.
    pub width: u32,
    /// Height of the normalized video.
    pub height: u32,
    /// Frame rate of the normalized video.
    pub fps: u32,
    /// Length of the normalized video in seconds (0 for generate jobs).
    pub duration_s: f64,
    /// Keys of the keyframe JPEGs in the work bucket, in time order.
    pub keyframes: Vec<String>,
    /// Measured complexity (analyze jobs).
    pub complexity: Option<Complexity>,
    /// The tier assigned: the inference queue the job goes to.
    pub tier: Tier,
    /// The sentence [`crate::tiering::assign_tier`] gave for that tier.
    pub tier_reason: String,
    /// How the normalized video's picture was encoded (analyze jobs): what
    /// postprocess checks before it uses that stream as a rendition as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_encode: Option<VideoEncode>,
}

/// The encoder settings a video stream was made with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct VideoEncode {
    /// ffmpeg's encoder (`libx264`).
    pub encoder: String,
    /// The encoder's preset (`veryfast`).
    pub preset: String,
    /// Constant rate factor.
    pub crf: u32,
    /// A keyframe at every multiple of this many seconds and nowhere else (a
    /// fixed, closed GOP, no scene-cut keyframes): the HLS segment length
    /// (`media.hls_segment_secs`) the stream can be cut at as it is.
    pub keyframe_secs: Option<f64>,
}

/// What inference did and what it cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct InferenceInfo {
    /// The tier whose queue the job came from.
    pub tier: Option<Tier>,
    /// The model that answered: the tier's own, or its fallback (see `fallback_from`).
    pub model: String,
    /// The tier's own model, when its fallback answered instead.
    #[serde(default)]
    pub fallback_from: Option<String>,
    /// Jobs that shared the provider request.
    #[serde(default)]
    pub jobs_in_request: u32,
    /// The provider's id of the request that answered; `None` when it gave none.
    pub request_id: Option<String>,
    /// Input tokens billed to the job: the sum over its charges.
    pub input_tokens: u64,
    /// Output tokens billed to the job: the sum over its charges.
    pub output_tokens: u64,
    /// The job's cost in US dollars: the sum over its charges.
    pub cost_usd: f64,
    /// Structured result (analyze) or generated video (generate).
    pub result_key: String,
    /// Summary from the model (analyze).
    pub summary: Option<String>,
    /// Tags from the model (analyze).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One billed provider request's share that falls to a job: the ledger line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Charge {
    /// The model the provider billed for the request.
    pub model: String,
    /// The provider's id of the request (what its usage log is keyed by); `None` when it gave none.
    pub request_id: Option<String>,
    /// Jobs that shared the request.
    pub jobs_in_request: u32,
    /// The job's share of the request's input tokens.
    pub input_tokens: u64,
    /// The job's share of the request's output tokens.
    pub output_tokens: u64,
    /// USD for those tokens.
    pub usd: f64,
    /// Whether the answer for this job was usable (an unusable one is billed all the same).
    pub answered: bool,
}

/// An output object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct OutputFile {
    /// Name (`h264_720p`, `poster`, ...).
    pub name: String,
    /// Key in the work bucket.
    pub key: String,
    /// `video/mp4` for renditions, `image/jpeg` for the poster and the sprite.
    pub content_type: String,
    /// Codec (`h264`, `hevc`, `mjpeg`).
    pub codec: String,
    /// Width in pixels, as ffprobe reads the file.
    pub width: u32,
    /// Height in pixels, as ffprobe reads the file.
    pub height: u32,
    /// Length in seconds; `None` for images.
    pub duration_s: Option<f64>,
    /// The container's bits per second; `None` for images.
    pub bitrate: Option<u64>,
    /// Size of the file in bytes.
    pub size_bytes: u64,
    /// PSNR against the normalized video scaled as the rendition is, dB: of
    /// the mean squared error over every frame and plane (ffmpeg's psnr
    /// filter's `average`, x264's `Global`). Measured by the encoder where it
    /// can say which rendition it measured, else by ffmpeg's filters.
    pub psnr_db: Option<f64>,
    /// SSIM of the luma plane against the same, the mean over frames
    /// (ffmpeg's ssim filter's `Y`, x264's and x265's `SSIM Mean Y`).
    pub ssim: Option<f64>,
    /// VMAF against the normalized video, where ffmpeg has libvmaf.
    pub vmaf: Option<f64>,
    /// Set when the rendition fell below the quality floor and was encoded
    /// again alone at a better quality: what it measured first, and the CRF
    /// of the encode it has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencoded: Option<String>,
    /// How a rendition's video was made (`None` for images): encoded from
    /// the normalized video, or that video's own stream copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<RenditionEncode>,
    /// For a copied rendition: the key of the video whose stream it carries
    /// bit for bit (the normalized video, the quality check's reference).
    /// Identical to the reference, it is not scored: its PSNR, SSIM and VMAF
    /// stay empty rather than hold a measure of nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identical_to: Option<String>,
}

/// How a rendition's video stream was made.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RenditionEncode {
    /// Encoded from the decoded normalized video, and scored against it.
    Encode,
    /// The normalized video's stream, copied without decoding: it was
    /// already this rendition (same size, encoder, CRF and segment keyframes).
    Copy,
}

/// The HLS presentation of the renditions: CMAF (fMP4) segments whose
/// boundaries fall at the same times in every variant, and a master playlist.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct HlsOutput {
    /// The master playlist's key in the work bucket (`jobs/<id>/hls/master.m3u8`).
    pub master_key: String,
    /// Target seconds per segment (`media.hls_segment_secs`).
    pub segment_secs: f64,
    /// One per rendition, in the master's order.
    pub variants: Vec<HlsVariant>,
}

/// One variant of [`HlsOutput`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct HlsVariant {
    /// The rendition (`h264_720p`).
    pub name: String,
    /// Its media playlist's key (`jobs/<id>/hls/h264_720p/index.m3u8`).
    pub playlist_key: String,
    /// The master's `BANDWIDTH`: the peak segment's bits per second.
    pub bandwidth: u64,
    /// The master's `AVERAGE-BANDWIDTH`.
    pub average_bandwidth: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The master's `CODECS` (`avc1.64001F,mp4a.40.2`).
    pub codecs: String,
    /// Media segments (the init segment not counted).
    pub segments: u32,
}

/// Postprocess's quality gate: every rendition's PSNR and SSIM against the floors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct QualityCheck {
    /// Whether every rendition reached both floors.
    pub passed: bool,
    /// The PSNR floor in dB (`postprocess.min_psnr_db`).
    pub min_psnr_db: f64,
    /// The SSIM floor, 0 to 1 (`postprocess.min_ssim`).
    pub min_ssim: f64,
    /// Whether VMAF was measured.
    pub vmaf_measured: bool,
}

/// Why a job failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobFailure {
    /// Stage that dead-lettered it.
    pub stage: String,
    /// Transient (retries exhausted) or permanent.
    pub class: ErrorClass,
    /// A short machine code (`bad_input`, `media`, `quality`, `provider`, ...).
    pub code: String,
    /// The reason, for a person.
    pub message: String,
    /// Attempts the stage made, the failing one included.
    pub attempts: u32,
    /// When the job was failed.
    pub at: DateTime<Utc>,
}

/// `jobs/<job_id>/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobManifest {
    /// [`MANIFEST_SCHEMA`] of the build that created it.
    pub schema: u32,
    /// Derived from the source object's identity ([`SourceObject::job_id`]).
    pub job_id: String,
    /// Analyze (a video) or generate (a prompt document).
    pub kind: JobKind,
    /// Where the job is.
    pub status: JobStatus,
    /// The uploaded object the job was made from.
    pub source: SourceObject,
    /// 1 (lowest) to 5 (highest): the object's metadata or the prompt document's
    /// (at most `limits.max_uploader_priority`), else 3.
    pub priority: u8,
    /// What the uploader asked for when it was above
    /// `limits.max_uploader_priority` (and `priority` was lowered to that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_priority: Option<u8>,
    /// The quality asked for (object metadata or the prompt's resolution); `None` when not asked.
    pub quality: Option<Quality>,
    /// Tier, once assigned.
    pub tier: Option<Tier>,
    /// The id every stage's log lines for the job carry, from its envelope.
    pub trace_id: String,
    /// When the job's first envelope was made (its `created_at`).
    pub created_at: DateTime<Utc>,
    /// When the manifest was last written.
    pub updated_at: DateTime<Utc>,
    /// Timings of each stage that finished, by stage name.
    #[serde(default)]
    pub stages: BTreeMap<String, StageTiming>,
    /// Input video facts (analyze).
    pub input: Option<InputInfo>,
    /// Prompt document (generate).
    pub prompt: Option<PromptDocument>,
    /// Preprocess results.
    pub preprocess: Option<PreprocessInfo>,
    /// Inference results and cost.
    pub inference: Option<InferenceInfo>,
    /// Every provider charge for this job, answered or not; sums to the job's cost.
    #[serde(default)]
    pub charges: Vec<Charge>,
    /// Postprocess's renditions, then the poster and the sprite.
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// Postprocess's quality gate, once measured.
    pub quality_check: Option<QualityCheck>,
    /// The renditions as HLS, once postprocess made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsOutput>,
    /// What the CDN purge hook answered (`purged (HTTP 200)`, `failed: ...`);
    /// `None` when `postprocess.cdn_purge_url` is not set.
    pub cdn_purge: Option<String>,
    /// Why the job failed; `None` unless its status is `failed`.
    pub error: Option<JobFailure>,
    /// The stage that holds the job now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// The submission's details (origin URL, callback, metadata), from the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<crate::envelope::JobRequest>,
}

impl JobManifest {
    /// A new manifest for the job of `envelope`.
    pub fn new(envelope: &crate::envelope::Envelope) -> Self {
        Self {
            schema: MANIFEST_SCHEMA,
            job_id: envelope.job_id.clone(),
            kind: envelope.kind,
            status: JobStatus::Ingest,
            source: envelope.source.clone(),
            priority: envelope.priority,
            requested_priority: None,
            quality: envelope.quality,
            tier: envelope.tier,
            trace_id: envelope.trace_id.clone(),
            created_at: envelope.created_at,
            updated_at: Utc::now(),
            stages: BTreeMap::new(),
            input: None,
            prompt: None,
            preprocess: None,
            inference: None,
            charges: Vec::new(),
            outputs: Vec::new(),
            quality_check: None,
            hls: None,
            cdn_purge: None,
            error: None,
            claim: None,
            request: envelope.request.clone(),
        }
    }

    /// The job's envelope as ingest admitted it, for sending a stored result on again.
    pub fn envelope(&self) -> crate::envelope::Envelope {
        crate::envelope::Envelope {
            schema: crate::envelope::ENVELOPE_SCHEMA,
            job_id: self.job_id.clone(),
            kind: self.kind,
            source: self.source.clone(),
            inputs: Vec::new(),
            tier: self.tier,
            priority: self.priority,
            quality: self.quality,
            attempt: 0,
            created_at: self.created_at,
            sent_at: Utc::now(),
            trace_id: self.trace_id.clone(),
            request: self.request.clone(),
        }
    }

    /// Records a stage's successful run.
    pub fn record_stage(&mut self, stage: &str, started_at: DateTime<Utc>, attempt: u32) {
        let finished_at = Utc::now();
        let duration_ms = (finished_at - started_at).num_milliseconds().max(0) as u64;
        self.stages.insert(
            stage.to_string(),
            StageTiming { started_at, finished_at, duration_ms, attempts: attempt + 1, forwarded_at: None },
        );
    }

    /// Total cost of the job in USD.
    pub fn cost_usd(&self) -> f64 {
        self.inference.as_ref().map(|i| i.cost_usd).unwrap_or(0.0)
    }
}

/// Conditional writes a manifest update tries before it calls the manifest contended.
const MAX_UPDATE_ROUNDS: u32 = 12;

/// A manifest as read, with the ETag its next write must match.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The manifest as read.
    pub manifest: JobManifest,
    /// The stored object's ETag.
    pub etag: String,
}

/// What an [`ManifestStore::update`] step decided.
#[derive(Debug)]
pub enum Update<T> {
    /// Write the changed manifest, then return the value.
    Write(T),
    /// Leave the stored manifest as it is and return the value.
    Keep(T),
}

/// Reads and writes manifests in the work bucket: creation with
/// `If-None-Match: *`, every later write with `If-Match` on the ETag read.
#[derive(Clone, Debug)]
pub struct ManifestStore {
    storage: Storage,
    bucket: String,
}

impl ManifestStore {
    /// Manifests in `bucket`.
    pub fn new(storage: Storage, bucket: impl Into<String>) -> Self {
        Self { storage, bucket: bucket.into() }
    }

    /// The work bucket: manifests and every stage's outputs.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The manifest of `job_id`, if it exists.
    pub async fn load(&self, job_id: &str) -> Result<Option<JobManifest>, StorageError> {
        Ok(self.load_versioned(job_id).await?.map(|v| v.manifest))
    }

    /// The manifest of `job_id` with the ETag a conditional update compares against.
    pub async fn load_versioned(&self, job_id: &str) -> Result<Option<Versioned>, StorageError> {
        match self.storage.get_bytes_versioned(&self.bucket, &manifest_key(job_id), MAX_MANIFEST_BYTES).await {
            Ok((bytes, etag)) => {
                let manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| StorageError::Rejected(format!("manifest of job {job_id} is corrupt: {e}")))?;
                let etag = etag.ok_or_else(|| {
                    StorageError::Rejected(format!("the store returned the manifest of job {job_id} without an ETag"))
                })?;
                Ok(Some(Versioned { manifest, etag }))
            }
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest of `job_id`, which must exist (a permanent error otherwise).
    pub async fn require(&self, job_id: &str) -> Result<JobManifest, StageError> {
        self.load(job_id)
            .await?
            .ok_or_else(|| StageError::permanent("bad_input", format!("job {job_id} has no manifest")))
    }

    /// Writes `manifest` only if the stored one still has `etag`; `None` when
    /// someone else wrote first (read again and decide again).
    pub async fn replace(&self, manifest: &mut JobManifest, etag: &str) -> Result<Option<String>, StorageError> {
        manifest.updated_at = Utc::now();
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        let condition = WriteCondition::Matches(etag.to_string());
        match self
            .storage
            .put_bytes_if(&self.bucket, &manifest_key(&manifest.job_id), body, "application/json", &condition)
            .await?
        {
            ConditionalPut::Stored(Some(new)) => Ok(Some(new)),
            // A store that does not say the new ETag: read it back.
            ConditionalPut::Stored(None) => Ok(self.load_versioned(&manifest.job_id).await?.map(|v| v.etag)),
            ConditionalPut::PreconditionFailed => Ok(None),
        }
    }

    /// Read-modify-write of a job's manifest as a compare-and-swap: `change`
    /// sees the stored manifest and says whether to write it; a write that
    /// loses to another writer reads again and asks again, so no writer ever
    /// drops another's change. `None` when the job has no manifest.
    pub async fn update<T>(
        &self,
        job_id: &str,
        mut change: impl FnMut(&mut JobManifest) -> Update<T>,
    ) -> Result<Option<T>, StorageError> {
        for round in 0..MAX_UPDATE_ROUNDS {
            let Some(Versioned { mut manifest, etag }) = self.load_versioned(job_id).await? else { return Ok(None) };
            let value = match change(&mut manifest) {
                Update::Keep(v) => return Ok(Some(v)),
                Update::Write(v) => v,
            };
            if self.replace(&mut manifest, &etag).await?.is_some() {
                return Ok(Some(value));
            }
            // Lost a race: back off a little, more with each round, so racing writers spread out.
            let ms = 5u64 << round.min(6);
            tokio::time::sleep(std::time::Duration::from_millis(ms + rand::random::<u64>() % ms)).await;
        }
        Err(StorageError::Unavailable(format!(
            "manifest of job {job_id} kept changing under {MAX_UPDATE_ROUNDS} conditional writes"
        )))
    }

    /// Writes the manifest only if none exists; `false` if one did.
    pub async fn create(&self, manifest: &mut JobManifest) -> Result<bool, StorageError> {
        manifest.updated_at = Utc::now();
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        self.storage.put_bytes_if_absent(&self.bucket, &manifest_key(&manifest.job_id), body, "application/json").await
    }

    /// Deletes a job's manifest.
    pub async fn delete(&self, job_id: &str) -> Result<(), StorageError> {
        self.storage.delete(&self.bucket, &manifest_key(job_id)).await
    }

    /// Marks a job failed with the reason and lets go of any claim (no-op if
    /// it has no manifest or is already completed).
    pub async fn mark_failed(&self, job_id: &str, failure: JobFailure) -> Result<(), StorageError> {
        self.update(job_id, |m| {
            if m.status == JobStatus::Completed {
                return Update::Keep(());
            }
            m.status = JobStatus::Failed;
            m.error = Some(failure.clone());
            m.claim = None;
            Update::Write(())
        })
        .await
        .map(|_| ())
    }

    /// Records that `stage`'s hand-over of the job was confirmed by the broker,
    /// so that later copies of its message are dropped instead of sent on.
    pub async fn mark_forwarded(&self, job_id: &str, stage: &str) -> Result<(), StorageError> {
        self.update(job_id, |m| match m.stages.get_mut(stage) {
            Some(t) if t.forwarded_at.is_none() => {
                t.forwarded_at = Some(Utc::now());
                Update::Write(())
            }
            _ => Update::Keep(()),
        })
        .await
        .map(|_| ())
    }

    /// Every job id with a manifest.
    pub async fn job_ids(&self) -> Result<Vec<String>, StorageError> {
        let keys = self.storage.list(&self.bucket, "jobs/").await?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix("jobs/")?.strip_suffix("/manifest.json"))
            .filter(|id| !id.contains('/'))
            .map(str::to_string)
            .collect())
    }
}
