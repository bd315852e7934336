//! The stage runtime: health port, drain, job timeout, claims, scratch space.

use serde::{Deserialize, Serialize};

/// Stage runtime settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0 picks one).
    pub health_addr: String,
    /// Seconds in-flight work may take to finish after SIGTERM/SIGINT.
    pub grace_period_secs: u64,
    /// Seconds a single message may take in a stage before it is a transient
    /// failure, unless the stage raises it for a large source.
    pub job_timeout_secs: u64,
    /// Longest a stage may raise one message's timeout to when its source is
    /// long or large (the job timeout plus its ffmpeg calls' timeouts); held
    /// 60 s below `broker.consumer_timeout_secs` whatever its value.
    pub job_timeout_max_secs: u64,
    /// Seconds a stage's claim on a job lasts unless its holder renews it (every third of it);
    /// a claim whose worker died is taken over after this long.
    pub claim_lease_secs: u64,
    /// Folder for temporary files (default: the system's).
    pub scratch_dir: Option<String>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            health_addr: "0.0.0.0:9090".into(),
            grace_period_secs: 30,
            job_timeout_secs: 900,
            job_timeout_max_secs: 24 * 3600,
            claim_lease_secs: 30,
            scratch_dir: None,
        }
    }
}
