//! Lifecycle events: what `<ns>.events` carries, one per transition of a
//! job, each with the job id and enough to index it without reading the
//! manifest.
//!
//! | event | published by | carries |
//! | --- | --- | --- |
//! | `job.created` | ingest, once the manifest exists | kind, source, `job` |
//! | `stage.started` | the runtime, before a stage works on an envelope | stage, attempt, kind, source, tier |
//! | `stage.finished` | the runtime, once a stage's messages are confirmed | stage, attempt, `duration_ms`, tier |
//! | `job.charged` | inference, per ledger charge of a finished job | model, tier, tokens, `cost_usd`, `total_usd` |
//! | `job.completed` | postprocess | `job`, outputs |
//! | `job.dead_lettered`, `job.failed` | the runtime (for ingest's refusals too: [`crate::error::StageError::for_job`]) | stage, error, `job` |
//! | `job.replayed` | `reelfleet dlq replay`, the console | stage, dead letter, error, `by` (who, from the console) |
//! | `job.purged` | the console's purge | stage, dead letter, error, `by` |
//!
//! `job` is a [`JobSummary`] of the manifest as it was when the event was
//! made; `reelfleet index rebuild` makes the same summary from each
//! manifest, so a live index and a rebuilt one agree.
//!
//! Every event is signed for the events exchange ([`sign_event`]): any
//! worker bound to it (webhooks, index) checks that the fleet sent it.

use crate::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, SIGNATURE_HEADER},
    manifest::{JobFailure, JobManifest},
    signing::Signer,
    topology::Topology,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job's manifest now exists.
pub const JOB_CREATED: &str = "job.created";
/// A stage started working on a job.
pub const STAGE_STARTED: &str = "stage.started";
/// A stage finished with a job and its messages are confirmed.
pub const STAGE_FINISHED: &str = "stage.finished";
/// A provider charge of the job was recorded in the ledger.
pub const JOB_CHARGED: &str = "job.charged";
/// The job completed.
pub const JOB_COMPLETED: &str = "job.completed";
/// The job failed.
pub const JOB_FAILED: &str = "job.failed";
/// A message of the job was dead-lettered.
pub const JOB_DEAD_LETTERED: &str = "job.dead_lettered";
/// A dead letter of the job was replayed.
pub const JOB_REPLAYED: &str = "job.replayed";
/// A dead letter of the job was purged (dropped) by an operator.
pub const JOB_PURGED: &str = "job.purged";

/// Every event kind, in the order of a job's life.
pub const ALL: [&str; 9] = [
    JOB_CREATED,
    STAGE_STARTED,
    STAGE_FINISHED,
    JOB_CHARGED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_DEAD_LETTERED,
    JOB_REPLAYED,
    JOB_PURGED,
];

/// An output file of a job, as the index lists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OutputRef {
    /// `h264_720p`, `poster`, ...
    pub name: String,
    /// Its key in the work bucket.
    pub key: String,
}

/// The error of a failed job, as the index keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorRef {
    /// Stage that gave up.
    pub stage: String,
    /// `transient` or `permanent`.
    pub class: String,
    /// Short code.
    pub code: String,
    /// The reason.
    pub message: String,
}

impl From<&JobFailure> for ErrorRef {
    fn from(f: &JobFailure) -> Self {
        Self { stage: f.stage.clone(), class: f.class.to_string(), code: f.code.clone(), message: f.message.clone() }
    }
}

/// What the index knows of a job from its manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobSummary {
    /// The job.
    pub job_id: String,
    /// `analyze` or `generate`.
    pub kind: String,
    /// The manifest's status.
    pub status: String,
    /// Source bucket.
    pub bucket: String,
    /// Source key.
    pub key: String,
    /// Tier, once preprocess chose it.
    pub tier: Option<String>,
    /// Model that answered, once inference ran.
    pub model: Option<String>,
    /// What the job cost (its inference total; else the sum of its charges so far).
    pub cost_usd: f64,
    /// Milliseconds per stage that finished.
    pub stages: BTreeMap<String, u64>,
    /// Why it failed.
    pub error: Option<ErrorRef>,
    /// Its outputs.
    pub outputs: Vec<OutputRef>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// The manifest's last write: a later summary replaces an earlier one, never the reverse.
    pub updated_at: DateTime<Utc>,
}

impl JobSummary {
    /// The summary of `m`.
    pub fn of(m: &JobManifest) -> Self {
        let cost_usd = match &m.inference {
            Some(i) => i.cost_usd,
            None => m.charges.iter().map(|c| c.usd).sum(),
        };
        Self {
            job_id: m.job_id.clone(),
            kind: m.kind.to_string(),
            status: m.status.to_string(),
            bucket: m.source.bucket.clone(),
            key: m.source.key.clone(),
            tier: m.tier.map(|t| t.as_str().to_string()),
            model: m.inference.as_ref().map(|i| i.model.clone()),
            cost_usd,
            stages: m.stages.iter().map(|(s, t)| (s.clone(), t.duration_ms)).collect(),
            error: m.error.as_ref().map(ErrorRef::from),
            outputs: m.outputs.iter().map(|o| OutputRef { name: o.name.clone(), key: o.key.clone() }).collect(),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// One lifecycle event. Fields an event kind does not carry are absent;
/// unknown fields are ignored, so older and newer publishers interoperate.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unique per event; a redelivery carries the same id. Events of older
    /// publishers have none: the index then uses the SHA-256 of the body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Its kind (`job.created`, ...), also its routing key.
    pub event: String,
    /// The job.
    pub job_id: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The stage concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The stage's attempt (0 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How long the stage took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `analyze` or `generate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Source bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Source key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Model charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// This charge, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The job's bill so far, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd: Option<f64>,
    /// Provider request id of a charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Input tokens of a charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens of a charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Dead letter replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Why a message was dead-lettered or a job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRef>,
    /// The job as its manifest said when the event was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSummary>,
    /// Who asked for a replay or a purge (`alice (operator)` from the console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Event {
    /// A new event of `kind` about `job_id`, now, with a fresh id.
    pub fn new(kind: &str, job_id: &str) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            event: kind.to_string(),
            job_id: job_id.to_string(),
            at: Utc::now(),
            ..Default::default()
        }
    }

    /// A new event of `kind` about the job of `envelope`, with its kind, source and tier.
    pub fn about(kind: &str, envelope: &Envelope) -> Self {
        Self {
            kind: Some(envelope.kind.to_string()),
            bucket: Some(envelope.source.bucket.clone()),
            key: Some(envelope.source.key.clone()),
            tier: envelope.tier.map(|t| t.as_str().to_string()),
            ..Self::new(kind, &envelope.job_id)
        }
    }

    /// With the summary of `m` (and its kind, source and tier).
    pub fn with_job(mut self, m: &JobManifest) -> Self {
        let job = JobSummary::of(m);
        self.kind = Some(job.kind.clone());
        self.bucket = Some(job.bucket.clone());
        self.key = Some(job.key.clone());
        self.tier = self.tier.or(job.tier.clone());
        self.job = Some(job);
        self
    }

    /// The id the index keys this event by: its own, else the SHA-256 of `body`.
    pub fn key_in(&self, body: &[u8]) -> String {
        if self.id.is_empty() {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(body))
        } else {
            self.id.clone()
        }
    }

    /// The JSON body.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event body for the events exchange, signed for it, with `routing_key`.
pub fn sign_event(signer: &Signer, topology: &Topology, routing_key: String, body: Vec<u8>) -> Outgoing {
    let exchange = topology.events_exchange();
    let sig = signer.sign(&exchange, &body);
    Outgoing {
        exchange,
        routing_key,
        body,
        // Nobody listening to lifecycle events is normal, not a loss.
        mandatory: false,
        ..Default::default()
    }
    .header(SIGNATURE_HEADER, HeaderValue::Text(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_publishers_event_parses_and_is_keyed_by_its_body() {
        let body =
            br#"{"event":"job.completed","job_id":"j1","at":"2026-11-30T10:00:00Z","outputs":["a"],"cost_usd":0.5}"#;
        let e: Event = serde_json::from_slice(body).unwrap();
        assert_eq!(e.event, JOB_COMPLETED);
        assert_eq!(e.key_in(body).len(), 64);
        assert_eq!(e.key_in(body), e.key_in(body));
        let fresh = Event::new(JOB_CREATED, "j1");
        assert_eq!(fresh.key_in(b"whatever"), fresh.id);
        let back: Event = serde_json::from_slice(&fresh.to_bytes()).unwrap();
        assert_eq!(back, fresh);
    }
}
