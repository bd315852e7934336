//! What the intake keeps, in the work bucket, so that every replica sees the
//! same: each `webhook-id` it accepted (to refuse a replay), each
//! `Idempotency-Key` with its request's hash and answer, and each accepted
//! job until its manifest exists. All are conditional writes (`If-None-Match:
//! *` to create, `If-Match` to change), the compare-and-swap the job manifests
//! are built on, so two replicas given the same id or key at once cannot both
//! win.
//!
//! - `intake/seen/<client>/<sha256(webhook-id)>`: refused again for twice
//!   the signature tolerance, then free (a timestamp that old is refused
//!   anyway).
//! - `intake/idempotency/<client>/<sha256(key)>.json`: answers with its first
//!   response for `intake.idempotency_ttl_hours`; a request still in progress
//!   is taken over after [`STALE_PENDING_SECS`] (its publish is idempotent,
//!   the job id being the same).
//! - `intake/jobs/<job_id>.json`: the acceptance record `GET /v1/jobs/{id}`
//!   shows until ingest has written the manifest.
//! - `grants/<client>/<job_id>`: an empty object saying the client submitted
//!   the job, so `GET /v1/jobs/{id}` shows it to that client and to no other
//!   (two clients submitting the same object each get a grant). Outside
//!   `intake/`, so the lifecycle rule leaves it: it lives as long as the job.
//!
//! Expired records are overwritten in place; a bucket lifecycle rule on
//! `intake/` (a day or two past the idempotency TTL) deletes the rest.

use chrono::{DateTime, Duration, Utc};
use reelfleet_core::{
    envelope::{JobRequest, Quality, SourceObject},
    storage::{ConditionalPut, Storage, StorageError, WriteCondition},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Seconds after which an idempotent request still marked in progress is
/// presumed dead (its replica crashed) and may be run again.
pub const STALE_PENDING_SECS: i64 = 60;
/// Largest record read back.
const MAX_RECORD_BYTES: u64 = 8 * 1024 * 1024;
/// Conditional-write rounds before giving up on a contended key.
const ROUNDS: usize = 4;

fn sha256_hex(s: &[u8]) -> String {
    hex::encode(Sha256::digest(s))
}

/// The work-bucket records of the intake.
#[derive(Clone, Debug)]
pub struct Records {
    storage: Storage,
    bucket: String,
    tolerance: Duration,
    idempotency_ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Seen {
    seen_at: DateTime<Utc>,
    /// SHA-256 of the `Idempotency-Key` the id first came with, if any.
    #[serde(default)]
    idempotency_key_sha256: Option<String>,
}

/// What the record of a `webhook-id` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sight {
    /// First seen now.
    First,
    /// Seen within the window before: a replay, unless it is the sender's
    /// retry of an idempotent request (`same_key`: it came with the very
    /// `Idempotency-Key` of its first sight, the header being unsigned).
    Again {
        /// The id first came with this request's `Idempotency-Key`.
        same_key: bool,
    },
}

/// Whether an idempotent request is still running or has answered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyState {
    /// A replica is handling it.
    Pending,
    /// Answered; `response` is what to answer again.
    Done,
}

/// `intake/idempotency/<client>/<sha256(key)>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the method, path and body of the first request.
    pub request_sha256: String,
    /// When the key was first used.
    pub created_at: DateTime<Utc>,
    /// Running or answered.
    pub state: IdempotencyState,
    /// The answer's status, once answered.
    #[serde(default)]
    pub status: u16,
    /// The answer's body, once answered.
    #[serde(default)]
    pub response: serde_json::Value,
}

/// What a request with an `Idempotency-Key` may do.
#[derive(Clone, Debug, PartialEq)]
pub enum Idempotency {
    /// First use (or the first's replica died): go on, then [`Records::finish`].
    Proceed {
        /// The ETag of the pending record, for the conditional finish.
        etag: Option<String>,
    },
    /// Answered before: answer this again.
    Replay {
        /// Status of the first answer.
        status: u16,
        /// Body of the first answer.
        response: serde_json::Value,
    },
    /// The key was used with another request.
    Mismatch,
    /// Another request with this key is running.
    InProgress,
}

/// `intake/jobs/<job_id>.json`: a job the intake accepted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Acceptance {
    /// The job.
    pub job_id: String,
    /// When the intake accepted it.
    pub accepted_at: DateTime<Utc>,
    /// The client that submitted it (`gcs` for a Cloud Storage notification).
    pub client: String,
    /// The source object (for a URL: where it will be pulled to).
    pub source: SourceObject,
    /// The queue it was published to.
    pub queue: String,
    /// Priority after the cap.
    pub priority: u8,
    /// Quality asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// The submission's details.
    pub request: JobRequest,
}

impl Records {
    /// Records in `bucket`, remembering webhook ids for twice `tolerance_secs`
    /// and idempotency keys for `idempotency_ttl_hours`.
    pub fn new(storage: Storage, bucket: impl Into<String>, tolerance_secs: u64, idempotency_ttl_hours: u64) -> Self {
        Self {
            storage,
            bucket: bucket.into(),
            tolerance: Duration::seconds(tolerance_secs as i64),
            idempotency_ttl: Duration::hours(idempotency_ttl_hours as i64),
        }
    }

    /// Records `webhook_id` of `client` as seen (with the request's
    /// `Idempotency-Key`, if any), or says it was within the window.
    pub async fn sight(
        &self,
        client: &str,
        webhook_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Sight, StorageError> {
        let key = format!("intake/seen/{client}/{}", sha256_hex(webhook_id.as_bytes()));
        let key_sha256 = idempotency_key.map(|k| sha256_hex(k.as_bytes()));
        let body = || {
            let seen = Seen { seen_at: Utc::now(), idempotency_key_sha256: key_sha256.clone() };
            serde_json::to_vec(&seen).unwrap_or_default()
        };
        let again = Sight::Again { same_key: false };
        let mut condition = WriteCondition::Absent;
        for _ in 0..ROUNDS {
            match self.storage.put_bytes_if(&self.bucket, &key, body(), "application/json", &condition).await? {
                ConditionalPut::Stored(_) => return Ok(Sight::First),
                ConditionalPut::PreconditionFailed => {}
            }
            match self.storage.get_bytes_versioned(&self.bucket, &key, MAX_RECORD_BYTES).await {
                Ok((bytes, etag)) => {
                    let Ok(seen) = serde_json::from_slice::<Seen>(&bytes) else { return Ok(again) };
                    if Utc::now() - seen.seen_at <= self.tolerance * 2 {
                        let same_key = key_sha256.is_some() && seen.idempotency_key_sha256 == key_sha256;
                        return Ok(Sight::Again { same_key });
                    }
                    let Some(etag) = etag else { return Ok(again) };
                    condition = WriteCondition::Matches(etag);
                }
                Err(StorageError::NotFound { .. }) => condition = WriteCondition::Absent,
                Err(e) => return Err(e),
            }
        }
        Ok(again)
    }

    fn idempotency_key(client: &str, key: &str) -> String {
        format!("intake/idempotency/{client}/{}.json", sha256_hex(key.as_bytes()))
    }

    /// Claims `key` of `client` for a request whose hash is `request_sha256`.
    pub async fn claim(&self, client: &str, key: &str, request_sha256: &str) -> Result<Idempotency, StorageError> {
        let object = Self::idempotency_key(client, key);
        let pending = || IdempotencyRecord {
            request_sha256: request_sha256.to_string(),
            created_at: Utc::now(),
            state: IdempotencyState::Pending,
            status: 0,
            response: serde_json::Value::Null,
        };
        let mut condition = WriteCondition::Absent;
        for _ in 0..ROUNDS {
            let body = serde_json::to_vec(&pending()).unwrap_or_default();
            match self.storage.put_bytes_if(&self.bucket, &object, body, "application/json", &condition).await? {
                ConditionalPut::Stored(etag) => return Ok(Idempotency::Proceed { etag }),
                ConditionalPut::PreconditionFailed => {}
            }
            let (bytes, etag) = match self.storage.get_bytes_versioned(&self.bucket, &object, MAX_RECORD_BYTES).await {
                Ok(found) => found,
                Err(StorageError::NotFound { .. }) => {
                    condition = WriteCondition::Absent;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(etag) = etag else {
                return Err(StorageError::Rejected(format!("{object} came back without an ETag")));
            };
            let Ok(record) = serde_json::from_slice::<IdempotencyRecord>(&bytes) else {
                condition = WriteCondition::Matches(etag);
                continue;
            };
            let age = Utc::now() - record.created_at;
            if age > self.idempotency_ttl {
                condition = WriteCondition::Matches(etag);
                continue;
            }
            if record.request_sha256 != request_sha256 {
                return Ok(Idempotency::Mismatch);
            }
            match record.state {
                IdempotencyState::Done => {
                    return Ok(Idempotency::Replay { status: record.status, response: record.response })
                }
                IdempotencyState::Pending if age > Duration::seconds(STALE_PENDING_SECS) => {
                    condition = WriteCondition::Matches(etag);
                }
                IdempotencyState::Pending => return Ok(Idempotency::InProgress),
            }
        }
        Ok(Idempotency::InProgress)
    }

    /// Stores the answer of a claimed key.
    pub async fn finish(
        &self,
        client: &str,
        key: &str,
        request_sha256: &str,
        etag: Option<String>,
        status: u16,
        response: &serde_json::Value,
    ) -> Result<(), StorageError> {
        let object = Self::idempotency_key(client, key);
        let record = IdempotencyRecord {
            request_sha256: request_sha256.to_string(),
            created_at: Utc::now(),
            state: IdempotencyState::Done,
            status,
            response: response.clone(),
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        match etag {
            Some(etag) => {
                let condition = WriteCondition::Matches(etag);
                // Lost only to a replica that took a stale claim over: it answers the same.
                self.storage.put_bytes_if(&self.bucket, &object, body, "application/json", &condition).await?;
            }
            None => self.storage.put_bytes(&self.bucket, &object, body, "application/json").await?,
        }
        Ok(())
    }

    /// Frees a claimed key whose request failed, so a retry may run it.
    pub async fn release(&self, client: &str, key: &str) -> Result<(), StorageError> {
        self.storage.delete(&self.bucket, &Self::idempotency_key(client, key)).await
    }

    fn acceptance_key(job_id: &str) -> String {
        format!("intake/jobs/{job_id}.json")
    }

    /// Writes a job's acceptance record.
    pub async fn accept(&self, record: &Acceptance) -> Result<(), StorageError> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        self.storage.put_bytes(&self.bucket, &Self::acceptance_key(&record.job_id), body, "application/json").await
    }

    fn grant_key(client: &str, job_id: &str) -> String {
        format!("grants/{client}/{job_id}")
    }

    /// Records that `client` submitted `job_id`.
    pub async fn grant(&self, client: &str, job_id: &str) -> Result<(), StorageError> {
        self.storage
            .put_bytes(&self.bucket, &Self::grant_key(client, job_id), Vec::new(), "application/octet-stream")
            .await
    }

    /// Whether `client` submitted `job_id`.
    pub async fn granted(&self, client: &str, job_id: &str) -> Result<bool, StorageError> {
        Ok(self.storage.head(&self.bucket, &Self::grant_key(client, job_id)).await?.is_some())
    }

    /// A job's acceptance record, if the intake wrote one.
    pub async fn acceptance(&self, job_id: &str) -> Result<Option<Acceptance>, StorageError> {
        match self.storage.get_bytes(&self.bucket, &Self::acceptance_key(job_id), MAX_RECORD_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StorageError::Rejected(format!("acceptance record of {job_id} is corrupt: {e}"))),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
