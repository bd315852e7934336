//! The shared state database (budgets, rate limits, cooldowns).

use super::Secret;
use serde::{Deserialize, Serialize};

/// The fleet's shared state store.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Database URL: `postgres://user:pass@host/db` for a fleet, or `sqlite:///path/state.db`
    /// for one machine (what `reelfleet dev` uses, in its data folder). Required by inference.
    pub url: Secret,
}
