//! The SQS bridge: the queue AWS S3 (directly, through SNS or through
//! EventBridge) notifies, and how it is read.

use super::{CredentialSource, Secret};
use serde::{Deserialize, Serialize};

/// `reelfleet worker bridge-sqs`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsSettings {
    /// URL of the queue the bucket notifications arrive in (required by the bridge).
    pub queue_url: String,
    /// SQS endpoint; unset: AWS's endpoint for `region` (set it for LocalStack or moto).
    pub endpoint: Option<String>,
    /// Region used for SigV4.
    pub region: String,
    /// `keys`: `access_key` and `secret_key` below; `aws`: AWS's default
    /// credential chain (an IAM role through IRSA, Pod Identity, ECS or EC2).
    pub credentials: CredentialSource,
    /// Access key id of a principal that may receive, delete and change the
    /// visibility of the queue's messages (no default).
    pub access_key: Secret,
    /// Its secret access key (no default).
    pub secret_key: Secret,
    /// Seconds one receive waits for messages (long polling, at most 20).
    pub wait_secs: u32,
    /// Messages asked for per receive (1 to 10).
    pub batch_size: u32,
    /// Seconds a received message stays hidden from other bridges; extended
    /// while its records are still being relayed.
    pub visibility_timeout_secs: u32,
}

impl Default for SqsSettings {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            credentials: CredentialSource::Keys,
            access_key: Secret::default(),
            secret_key: Secret::default(),
            wait_secs: 20,
            batch_size: 10,
            visibility_timeout_secs: 60,
        }
    }
}
