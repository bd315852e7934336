//! The message signing keys: the current one, previous ones still accepted
//! for a while (rotation), and how long a signature stays valid.

use super::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The fewest random bytes a signing key may carry.
pub const MIN_KEY_BYTES: usize = 32;

/// Message signing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// Names the current key in every signature, so receivers can tell keys
    /// apart during a rotation (1 to 32 letters, digits, `-`, `_`).
    pub key_id: String,
    /// The current HMAC-SHA256 key as hex, at least 32 random bytes; no
    /// default: `reelfleet keys generate` makes one (`reelfleet dev` keeps its
    /// own in its data folder).
    pub secret: Secret,
    /// Seconds a signature stays valid; a message older than this (a
    /// captured one replayed later, one stuck in a queue) is dead-lettered
    /// and can be replayed, which signs it anew.
    pub max_age_secs: u64,
    /// Keys that signed earlier messages, accepted (never used to sign)
    /// until their `accept_until`.
    pub previous: Vec<PreviousKey>,
}

/// A retired signing key still accepted for a while.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    /// The id it signed with.
    pub key_id: String,
    /// The key, as hex.
    pub secret: Secret,
    /// From this instant on, its signatures are refused.
    pub accept_until: DateTime<Utc>,
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self { key_id: "k1".into(), secret: Secret::default(), max_age_secs: 7 * 24 * 3600, previous: Vec::new() }
    }
}
