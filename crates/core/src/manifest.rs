//! The job manifest at `jobs/<job_id>/manifest.json`: the job's status and
//! everything each stage measured and produced, and the object layout.

use crate::{
    envelope::{JobKind, Quality, SourceObject, Tier},
    error::{ErrorClass, StageError},
    storage::{Storage, StorageError},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Manifest schema version.
pub const MANIFEST_SCHEMA: u32 = 1;
/// Largest manifest read back, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// The manifest's key.
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
    /// Being validated.
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
}

/// What ingest learned of an uploaded video.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct InputInfo {
    /// Container.
    pub container: String,
    /// Video codec.
    pub codec: String,
    /// Display width.
    pub width: u32,
    /// Display height.
    pub height: u32,
    /// Seconds.
    pub duration_s: f64,
    /// Frames per second.
    pub fps: f64,
    /// Pixel format.
    pub pix_fmt: Option<String>,
    /// Rotation in degrees.
    pub rotation: i32,
    /// Has audio.
    pub has_audio: bool,
    /// Bytes.
    pub size_bytes: u64,
}

/// A generate job's prompt document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptDocument {
    /// What to generate.
    pub prompt: String,
    /// Seconds of video.
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
    /// The normalized video.
    pub normalized_key: Option<String>,
    /// Width of the normalized video.
    pub width: u32,
    /// Height of the normalized video.
    pub height: u32,
    /// Frame rate of the normalized video.
    pub fps: u32,
    /// Seconds.
    pub duration_s: f64,
    /// Keyframe JPEGs.
    pub keyframes: Vec<String>,
    /// Measured complexity (analyze jobs).
    pub complexity: Option<Complexity>,
    /// Tier assigned.
    pub tier: Tier,
    /// Why that tier.
    pub tier_reason: String,
}

/// What inference did and what it cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct InferenceInfo {
    /// Tier served.
    pub tier: Option<Tier>,
    /// Model that answered.
    pub model: String,
    /// The tier's own model, when its fallback answered instead.
    #[serde(default)]
    pub fallback_from: Option<String>,
    /// Jobs that shared the provider request.
    #[serde(default)]
    pub jobs_in_request: u32,
    /// Provider's request id.
    pub request_id: Option<String>,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// USD.
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
    /// Model billed.
    pub model: String,
    /// Provider request id.
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
    /// MIME type.
    pub content_type: String,
    /// Codec (`h264`, `hevc`, `mjpeg`).
    pub codec: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Seconds (videos).
    pub duration_s: Option<f64>,
    /// Bits per second (videos).
    pub bitrate: Option<u64>,
    /// Bytes.
    pub size_bytes: u64,
    /// PSNR against the normalized video, dB.
    pub psnr_db: Option<f64>,
    /// SSIM against the normalized video.
    pub ssim: Option<f64>,
    /// VMAF against the normalized video, where ffmpeg has libvmaf.
    pub vmaf: Option<f64>,
}

/// Quality gate outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct QualityCheck {
    /// All renditions above the floor.
    pub passed: bool,
    /// PSNR floor, dB.
    pub min_psnr_db: f64,
    /// SSIM floor.
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
    /// Short code.
    pub code: String,
    /// Readable reason.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// `jobs/<job_id>/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobManifest {
    /// Schema version.
    pub schema: u32,
    /// Job id.
    pub job_id: String,
    /// Analyze or generate.
    pub kind: JobKind,
    /// Where the job is.
    pub status: JobStatus,
    /// The upload.
    pub source: SourceObject,
    /// 1 to 5.
    pub priority: u8,
    /// Requested quality.
    pub quality: Option<Quality>,
    /// Tier, once assigned.
    pub tier: Option<Tier>,
    /// Trace id.
    pub trace_id: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last written.
    pub updated_at: DateTime<Utc>,
    /// Per-stage timings.
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
    /// Deliverables.
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// Quality gate.
    pub quality_check: Option<QualityCheck>,
    /// CDN purge outcome.
    pub cdn_purge: Option<String>,
    /// Why it failed.
    pub error: Option<JobFailure>,
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
            cdn_purge: None,
            error: None,
        }
    }

    /// Records a stage's successful run.
    pub fn record_stage(&mut self, stage: &str, started_at: DateTime<Utc>, attempt: u32) {
        let finished_at = Utc::now();
        let duration_ms = (finished_at - started_at).num_milliseconds().max(0) as u64;
        self.stages
            .insert(stage.to_string(), StageTiming { started_at, finished_at, duration_ms, attempts: attempt + 1 });
    }

    /// Total cost of the job in USD.
    pub fn cost_usd(&self) -> f64 {
        self.inference.as_ref().map(|i| i.cost_usd).unwrap_or(0.0)
    }
}

/// Reads and writes manifests in the work bucket.
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

    /// The work bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The manifest of `job_id`, if it exists.
    pub async fn load(&self, job_id: &str) -> Result<Option<JobManifest>, StorageError> {
        match self.storage.get_bytes(&self.bucket, &manifest_key(job_id), MAX_MANIFEST_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StorageError::Rejected(format!("manifest of job {job_id} is corrupt: {e}"))),
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

    /// Writes the manifest.
    pub async fn save(&self, manifest: &mut JobManifest) -> Result<(), StorageError> {
        manifest.updated_at = Utc::now();
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
        self.storage.put_bytes(&self.bucket, &manifest_key(&manifest.job_id), body, "application/json").await
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

    /// Marks a job failed with the reason (no-op if it has no manifest).
    pub async fn mark_failed(&self, job_id: &str, failure: JobFailure) -> Result<(), StorageError> {
        if let Some(mut m) = self.load(job_id).await? {
            m.status = JobStatus::Failed;
            m.error = Some(failure);
            self.save(&mut m).await?;
        }
        Ok(())
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
