//! Per-model rate limits shared by every replica: requests and tokens per
//! minute, counted in the fleet's state database as a log of the requests
//! sent in the last window. A request may go only when the log holds fewer
//! than the limit; each check-and-record is one transaction serialised per
//! model, so N replicas together stay under the provider's limit instead of
//! N times it.
//!
//! The window is a minute plus [`WINDOW_MARGIN`]: the provider's minute
//! starts when a request arrives, a little after it left here, so counting
//! over a slightly longer window keeps every minute the provider sees under
//! the limit.

use reelfleet_core::{
    fleetstate::{window_acquire, FleetState, StateError},
    settings::InferenceSettings,
};
use std::{collections::HashMap, time::Duration};

/// Extra time counted in every window for the trip to the provider.
pub(crate) const WINDOW_MARGIN: Duration = Duration::from_secs(1);
const MINUTE_MS: i64 = 60_000;

/// Rate limits of every configured model.
#[derive(Debug)]
pub(crate) struct Limits {
    state: FleetState,
    /// Requests and tokens per minute of each model (0: unlimited).
    models: HashMap<String, (u32, u32)>,
}

impl Limits {
    pub(crate) fn new(settings: &InferenceSettings, state: FleetState) -> Self {
        let models = settings
            .models
            .iter()
            .filter(|m| m.requests_per_minute > 0 || m.tokens_per_minute > 0)
            .map(|m| (m.model.clone(), (m.requests_per_minute, m.tokens_per_minute)))
            .collect();
        Self { state, models }
    }

    /// Waits until a request of about `tokens` tokens to `model` may go, and records it.
    pub(crate) async fn acquire(&self, model: &str, tokens: u64) -> Result<(), StateError> {
        let Some(&(rpm, tpm)) = self.models.get(model) else { return Ok(()) };
        // A request larger than a whole minute's tokens still goes, alone in its window.
        let tokens = if tpm > 0 { tokens.min(u64::from(tpm)) } else { tokens } as i64;
        loop {
            match self.try_acquire(model, rpm, tpm, tokens).await? {
                None => return Ok(()),
                Some(wait) => {
                    let jitter = Duration::from_millis(rand::random::<u64>() % 50);
                    tokio::time::sleep(wait + jitter).await;
                }
            }
        }
    }

    /// Records the request if the window has room; otherwise how long until its oldest entry leaves.
    async fn try_acquire(&self, model: &str, rpm: u32, tpm: u32, tokens: i64) -> Result<Option<Duration>, StateError> {
        window_acquire(&self.state, model, rpm, tpm, tokens, Duration::from_millis(MINUTE_MS as u64) + WINDOW_MARGIN)
            .await
    }
}
