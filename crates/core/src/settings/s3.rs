//! The object store: endpoint, credentials, buckets, multipart.

use super::Secret;
use serde::{Deserialize, Serialize};

/// Where a client's AWS credentials come from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// `access_key` and `secret_key` of the same section (required).
    #[default]
    Keys,
    /// AWS's default chain: environment, profile, web identity (IRSA), the
    /// container endpoint (ECS, EKS Pod Identity), the EC2 instance role;
    /// the section's keys must be unset.
    Aws,
}

/// Object store settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL (path-style addressing is always used).
    pub endpoint: String,
    /// Region used for SigV4.
    pub region: String,
    /// `keys`: `access_key` and `secret_key` below; `aws`: AWS's default
    /// credential chain (an IAM role through IRSA, Pod Identity, ECS or EC2).
    pub credentials: CredentialSource,
    /// Access key id (no default; `reelfleet dev` makes its own).
    pub access_key: Secret,
    /// Secret access key (no default; `reelfleet dev` makes its own).
    pub secret_key: Secret,
    /// Bucket where users upload videos and prompt documents.
    pub upload_bucket: String,
    /// Other buckets whose object-created events ingest accepts (never the
    /// work bucket); an event naming any other bucket is refused.
    pub accepted_buckets: Vec<String>,
    /// Bucket where jobs write everything they produce.
    pub work_bucket: String,
    /// Files at or above this size are uploaded with multipart.
    pub multipart_threshold_bytes: u64,
    /// Part size for multipart uploads (at least 5 MiB).
    pub part_size_bytes: u64,
    /// Seconds before an S3 call is abandoned.
    pub timeout_secs: u64,
}

impl S3Settings {
    /// Whether ingest takes objects of `bucket`.
    pub fn accepts(&self, bucket: &str) -> bool {
        bucket != self.work_bucket
            && (bucket == self.upload_bucket || self.accepted_buckets.iter().any(|b| b == bucket))
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            credentials: CredentialSource::Keys,
            access_key: Secret::default(),
            secret_key: Secret::default(),
            upload_bucket: "uploads".into(),
            accepted_buckets: Vec::new(),
            work_bucket: "reelfleet-work".into(),
            multipart_threshold_bytes: 16 * 1024 * 1024,
            part_size_bytes: 8 * 1024 * 1024,
            timeout_secs: 120,
        }
    }
}
