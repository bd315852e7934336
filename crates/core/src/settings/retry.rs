//! The retry schedule of transient failures.

use serde::{Deserialize, Serialize};

/// Retry schedule for transient errors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all (first try included) before a message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub base_delay_ms: u64,
    /// Upper bound of a retry delay, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self { max_attempts: 5, base_delay_ms: 1_000, max_delay_ms: 60_000 }
    }
}
