//! The message signing key.

use super::Secret;
use serde::{Deserialize, Serialize};

/// Message signing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// Shared HMAC-SHA256 key for envelope signatures (at least 16 characters).
    pub secret: Secret,
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self { secret: Secret::new("reelfleet-dev-signing-key-change-me") }
    }
}
