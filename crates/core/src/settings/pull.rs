//! URL pulls (`reelfleet worker pull`): where they may connect and how long
//! and how much they may take. The size cap is `limits.max_bytes`.

use serde::{Deserialize, Serialize};

/// Where pulled sources land in the upload bucket (`pulled/<job_id>/<name>`);
/// ingest leaves the bucket events of these keys alone, since the pull
/// worker hands each such job over itself.
pub const PULLED_PREFIX: &str = "pulled/";

/// `[pull]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullSettings {
    /// CIDRs (or single addresses) a pull may reach although the SSRF rules
    /// refuse their class (loopback, private, link-local, ...); empty: none.
    pub allow_cidrs: Vec<String>,
    /// Redirects followed, each target checked again; 0 follows none.
    pub max_redirects: u32,
    /// Seconds a TCP (+ TLS) connect, or a host's resolution, may take.
    pub connect_timeout_secs: u64,
    /// Seconds a whole pull may take, redirects, body and upload included
    /// (below `runtime.job_timeout_secs`).
    pub total_timeout_secs: u64,
    /// Size of each multipart part the body is streamed into (at least 5 MiB);
    /// the most of a body a pull holds in memory.
    pub part_size_bytes: u64,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            max_redirects: 5,
            connect_timeout_secs: 10,
            total_timeout_secs: 600,
            part_size_bytes: 8 * 1024 * 1024,
        }
    }
}

impl PullSettings {
    /// Checks values serde cannot; `job_timeout_secs` is the runtime's.
    pub fn validate(&self, job_timeout_secs: u64) -> Result<(), String> {
        crate::netguard::parse_cidrs(&self.allow_cidrs).map_err(|e| format!("pull.allow_cidrs: {e}"))?;
        if self.part_size_bytes < 5 * 1024 * 1024 || self.part_size_bytes > 512 * 1024 * 1024 {
            return Err("pull.part_size_bytes must be 5 MiB to 512 MiB (S3's smallest part, and memory)".into());
        }
        if self.connect_timeout_secs == 0 || self.total_timeout_secs <= self.connect_timeout_secs {
            return Err("pull.connect_timeout_secs must be at least 1 and below pull.total_timeout_secs".into());
        }
        if self.total_timeout_secs >= job_timeout_secs {
            return Err("pull.total_timeout_secs must be below runtime.job_timeout_secs".into());
        }
        Ok(())
    }
}
