//! The job index (`reelfleet worker index`, `reelfleet jobs`, `reelfleet index`).

use super::Secret;
use serde::{Deserialize, Serialize};

/// `[index]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// Database URL: `postgres://user:pass@host/db` for a fleet (from a Secret:
    /// `REELFLEET_INDEX__URL`), or `sqlite:///path/index.db` on one machine
    /// (what `reelfleet dev` uses, in its data folder). Required by the index
    /// worker, `reelfleet jobs` and `reelfleet index`.
    pub url: Secret,
}
