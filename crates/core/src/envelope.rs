//! The message contract: the versioned JSON [`Envelope`] every stage message
//! carries and how a job id is derived (its signature: [`crate::signing`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Schema version written into every envelope.
pub const ENVELOPE_SCHEMA: u32 = 1;
/// Largest envelope body accepted, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Message header carrying the signature (`<key id>.<expiry>.<hex MAC>`, see [`crate::signing`]).
pub const SIGNATURE_HEADER: &str = "x-reelfleet-signature";
/// Message header carrying the number of failed attempts so far.
pub const ATTEMPT_HEADER: &str = "x-reelfleet-attempt";

/// What a job does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// An uploaded video to analyze.
    Analyze,
    /// A prompt document whose video is generated.
    Generate,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobKind::Analyze => "analyze",
            JobKind::Generate => "generate",
        })
    }
}

/// Cost tier of a job: which inference queue and model serve it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Bulk content on the cheapest model.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Demanding content or high requested quality.
    High,
    /// Top priority on the premium model.
    Critical,
}

impl Tier {
    /// All tiers, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Low, Tier::Medium, Tier::High, Tier::Critical];

    /// The tier's name as used in queue names and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
            Tier::Critical => "critical",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier {s:?} (expected low, medium, high or critical)"))
    }
}

/// Requested output quality.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum Quality {
    /// 1280x720.
    #[serde(rename = "720p")]
    P720,
    /// 1920x1080.
    #[serde(rename = "1080p")]
    P1080,
    /// 3840x2160.
    #[serde(rename = "4k")]
    K4,
}

impl Quality {
    /// The name used in prompt documents and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::P720 => "720p",
            Quality::P1080 => "1080p",
            Quality::K4 => "4k",
        }
    }
    /// Width and height of a landscape frame at this quality.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Quality::P720 => (1280, 720),
            Quality::P1080 => (1920, 1080),
            Quality::K4 => (3840, 2160),
        }
    }
}

impl std::str::FromStr for Quality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "720p" => Ok(Quality::P720),
            "1080p" => Ok(Quality::P1080),
            "4k" => Ok(Quality::K4),
            _ => Err(format!("unknown quality {s:?} (expected 720p, 1080p or 4k)")),
        }
    }
}

/// The uploaded object a job comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SourceObject {
    /// Bucket of the upload.
    pub bucket: String,
    /// Key of the upload, decoded.
    pub key: String,
    /// Size in bytes, as the object store reported it.
    #[serde(default)]
    pub size: u64,
    /// ETag, as the object store reported it (quotes removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Version id, when the bucket is versioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

impl SourceObject {
    /// The job id of this source: stable for the same (bucket, key, version or
    /// eTag), so a duplicate event maps to the same job.
    pub fn job_id(&self) -> String {
        let identity = self
            .version_id
            .as_deref()
            .map(|v| format!("v:{v}"))
            .or_else(|| self.etag.as_deref().map(|e| format!("e:{e}")))
            .unwrap_or_default();
        let name = format!("{}\n{}\n{}", self.bucket, self.key, identity);
        uuid::Uuid::new_v5(&JOB_NAMESPACE, name.as_bytes()).simple().to_string()
    }
}

const JOB_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x6b, 0x1f, 0x3c, 0x52, 0x8e, 0x0a, 0x4d, 0x71, 0x9a, 0x15, 0x2e, 0x7c, 0x40, 0xd3, 0x88, 0x01,
]);

/// The JSON body of every stage message.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Envelope {
    /// Envelope schema version.
    pub schema: u32,
    /// The job, derived from the source.
    pub job_id: String,
    /// Analyze or generate.
    pub kind: JobKind,
    /// The uploaded object.
    pub source: SourceObject,
    /// Keys in the work bucket this stage reads.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Cost tier, once preprocess has assigned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// 1 (lowest) to 5 (highest).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Requested quality, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Failed attempts of this stage so far.
    #[serde(default)]
    pub attempt: u32,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When this message was sent.
    pub sent_at: DateTime<Utc>,
    /// Correlates logs across stages.
    pub trace_id: String,
    /// What the submitter asked for beyond the object itself (intake API,
    /// URL pull, backfill); `None` for a plain bucket upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<JobRequest>,
}

/// A submission's own details, kept with the job from the first message to
/// the manifest: where a pulled video came from, whom to tell when the job
/// ends, and the submitter's free metadata.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct JobRequest {
    /// How the job came in: `intake`, `pull`, `backfill`, `gcs`.
    pub via: String,
    /// The http(s) URL the source was pulled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_url: Option<String>,
    /// Where `job.completed`, `job.failed` and `job.dead_lettered` are POSTed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The submitter's `Idempotency-Key`, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Free metadata, returned as given in the manifest and the webhooks.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

fn default_priority() -> u8 {
    3
}

/// Why an envelope was refused; always a permanent error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// No signature header.
    #[error("message has no {SIGNATURE_HEADER} header")]
    MissingSignature,
    /// The signature does not match the body, the queue or the namespace.
    #[error("message signature does not match its body, queue and namespace")]
    BadSignature,
    /// Signed with a key id this worker does not hold.
    #[error("message is signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// Signed with a previous key whose acceptance has ended.
    #[error("message is signed with key {key_id:?}, accepted only until {until}")]
    KeyRetired {
        /// The retired key.
        key_id: String,
        /// When it stopped being accepted (RFC 3339).
        until: String,
    },
    /// Its signature's validity has passed (`signing.max_age_secs`).
    #[error("message signature expired at {0}")]
    Expired(String),
    /// Body too large.
    #[error("envelope of {0} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Body is not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Envelope schema this worker does not know.
    #[error("unsupported envelope schema {0} (this worker reads {ENVELOPE_SCHEMA})")]
    Schema(u32),
}

impl Envelope {
    /// A new job's first envelope.
    pub fn new(kind: JobKind, source: SourceObject) -> Self {
        let now = Utc::now();
        Self {
            schema: ENVELOPE_SCHEMA,
            job_id: source.job_id(),
            kind,
            source,
            inputs: Vec::new(),
            tier: None,
            priority: default_priority(),
            quality: None,
            attempt: 0,
            created_at: now,
            sent_at: now,
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            request: None,
        }
    }

    /// The envelope for the next stage: same job, new inputs, attempt reset.
    pub fn forward(&self, inputs: Vec<String>) -> Self {
        Self { inputs, attempt: 0, sent_at: Utc::now(), ..self.clone() }
    }

    /// Serializes the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope serializes")
    }

    /// Parses a body, checking size and schema.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        if body.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(body.len()));
        }
        let env: Envelope = crate::json::parse_bounded(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.schema != ENVELOPE_SCHEMA {
            return Err(EnvelopeError::Schema(env.schema));
        }
        if env.job_id.is_empty() || env.job_id.len() > 64 || !env.job_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(EnvelopeError::Malformed(format!("invalid job_id {:?}", env.job_id)));
        }
        if !(1..=5).contains(&env.priority) {
            return Err(EnvelopeError::Malformed(format!("priority {} out of 1..=5", env.priority)));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceObject {
        SourceObject {
            bucket: "uploads".into(),
            key: "a b/c.mp4".into(),
            size: 10,
            etag: Some("abc".into()),
            version_id: None,
        }
    }

    #[test]
    fn job_id_is_stable_and_depends_on_identity() {
        let a = source();
        assert_eq!(a.job_id(), source().job_id());
        assert_eq!(a.job_id().len(), 32);
        let mut b = source();
        b.etag = Some("def".into());
        assert_ne!(a.job_id(), b.job_id());
        let mut c = source();
        c.version_id = Some("v1".into());
        assert_ne!(a.job_id(), c.job_id());
    }

    #[test]
    fn envelope_round_trip() {
        let env = Envelope::new(JobKind::Analyze, source());
        assert_eq!(Envelope::parse(&env.to_bytes()).unwrap(), env);
    }

    #[test]
    fn unknown_fields_ignored_missing_required_rejected() {
        let env = Envelope::new(JobKind::Generate, source());
        let mut v = serde_json::to_value(&env).unwrap();
        v["future_field"] = serde_json::json!({"x": 1});
        assert!(Envelope::parse(&serde_json::to_vec(&v).unwrap()).is_ok());
        v.as_object_mut().unwrap().remove("job_id");
        assert!(matches!(Envelope::parse(&serde_json::to_vec(&v).unwrap()), Err(EnvelopeError::Malformed(_))));
    }
}
