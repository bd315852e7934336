//! The write-ahead cost ledger: every billed provider answer is stored, per
//! job and keyed by the provider's request id, the moment it arrives and
//! before anything else can fail. A retry that finds a stored answer uses it
//! instead of paying again, and a job's charges are read back from here, so
//! a crash, a failed S3 write or a timeout after the bill loses no charge.
//!
//! `jobs/<job_id>/inference/ledger/<request_id>.json`, created with
//! `If-None-Match: *` (an entry is written once and never changed).

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use reelfleet_core::{
    error::StageError,
    manifest::{stage_key, Charge},
    storage::{Storage, StorageError},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::warn;

/// Largest ledger entry read back, in bytes.
const MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// One job's share of one billed provider request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LedgerEntry {
    /// The job billed.
    pub job_id: String,
    /// `chat` or `video`.
    pub kind: String,
    /// The client's `X-Request-Id` of the request.
    pub client_request_id: String,
    /// The job's share of the bill.
    pub charge: Charge,
    /// The job's part of the answer, when it was usable: what a retry reuses.
    pub answer: Option<serde_json::Value>,
    /// When the answer arrived.
    pub recorded_at: DateTime<Utc>,
}

impl LedgerEntry {
    /// The id the entry is stored under: the provider's request id, or ours when it gave none.
    pub fn request_id(&self) -> &str {
        self.charge.request_id.as_deref().unwrap_or(&self.client_request_id)
    }
}

/// The key of a job's ledger entry.
pub fn entry_key(job_id: &str, request_id: &str) -> String {
    let safe: String =
        request_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    stage_key(job_id, "inference", &format!("ledger/{safe}.json"))
}

/// The prefix of a job's ledger.
pub fn ledger_prefix(job_id: &str) -> String {
    stage_key(job_id, "inference", "ledger/")
}

/// Reads and writes ledger entries in the work bucket.
#[derive(Clone, Debug)]
pub struct Ledger {
    storage: Storage,
    bucket: String,
}

impl Ledger {
    /// The ledger in `bucket`.
    pub fn new(storage: Storage, bucket: impl Into<String>) -> Self {
        Self { storage, bucket: bucket.into() }
    }

    /// Stores the entries of one billed answer. They are what the money
    /// bought, so the store gets more patience than anything else (up to
    /// about a minute of retries) before the error goes up.
    pub async fn record(&self, entries: &[LedgerEntry]) -> Result<(), StageError> {
        stream::iter(entries.iter().cloned())
            .map(|e| async move { self.record_one(&e).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    async fn record_one(&self, entry: &LedgerEntry) -> Result<(), StageError> {
        let key = entry_key(&entry.job_id, entry.request_id());
        let body = serde_json::to_vec_pretty(entry).expect("ledger entry serializes");
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .with_max_times(10)
            .build();
        loop {
            match self.storage.put_bytes_if_absent(&self.bucket, &key, body.clone(), "application/json").await {
                // Already there: the same answer recorded by an earlier try of this write.
                Ok(_) => return Ok(()),
                Err(e @ StorageError::Unavailable(_)) => match delays.next() {
                    Some(d) => {
                        warn!(job_id = %entry.job_id, error = %e, "Could not record a billed answer yet; retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(StageError::from(e).context("recording a billed answer")),
                },
                Err(e) => return Err(StageError::from(e).context("recording a billed answer")),
            }
        }
    }

    /// Every entry of a job, oldest first.
    pub async fn entries(&self, job_id: &str) -> Result<Vec<LedgerEntry>, StageError> {
        let keys = self.storage.list(&self.bucket, &ledger_prefix(job_id)).await?;
        let mut entries: Vec<LedgerEntry> = stream::iter(keys)
            .map(|key| async move {
                let bytes = self.storage.get_bytes(&self.bucket, &key, MAX_ENTRY_BYTES).await?;
                serde_json::from_slice::<LedgerEntry>(&bytes)
                    .map_err(|e| StageError::permanent("storage", format!("ledger entry {key} is corrupt: {e}")))
            })
            .buffered(8)
            .try_collect()
            .await?;
        entries.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.request_id().cmp(b.request_id())));
        Ok(entries)
    }
}

/// The charges of `entries`, in order: a job's whole bill.
pub fn charges(entries: &[LedgerEntry]) -> Vec<Charge> {
    entries.iter().map(|e| e.charge.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_and_per_job() {
        assert_eq!(entry_key("j1", "chatcmpl-ab12"), "jobs/j1/inference/ledger/chatcmpl-ab12.json");
        assert_eq!(entry_key("j1", "../x/y"), "jobs/j1/inference/ledger/___x_y.json");
        assert!(entry_key("j1", "r").starts_with(&ledger_prefix("j1")));
    }
}
