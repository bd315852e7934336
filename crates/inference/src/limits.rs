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
    fleetstate::{now_ms, FleetState, StateError},
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
        let ns = self.state.namespace();
        let window = MINUTE_MS + WINDOW_MARGIN.as_millis() as i64;
        let mut tx = self.state.pool().begin().await?;
        take_model_row(&mut tx, ns, model).await?;
        let now = now_ms();
        sqlx::query("DELETE FROM rf_model_requests WHERE ns = $1 AND model = $2 AND at_ms <= $3")
            .bind(ns)
            .bind(model)
            .bind(now - window)
            .execute(&mut *tx)
            .await?;
        let (count, used, oldest): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(tokens), 0) AS BIGINT), CAST(COALESCE(MIN(at_ms), 0) AS BIGINT)
             FROM rf_model_requests WHERE ns = $1 AND model = $2",
        )
        .bind(ns)
        .bind(model)
        .fetch_one(&mut *tx)
        .await?;
        let room_for_request = rpm == 0 || count < i64::from(rpm);
        let room_for_tokens = tpm == 0 || count == 0 || used + tokens <= i64::from(tpm);
        if room_for_request && room_for_tokens {
            sqlx::query("INSERT INTO rf_model_requests (ns, model, at_ms, tokens) VALUES ($1, $2, $3, $4)")
                .bind(ns)
                .bind(model)
                .bind(now)
                .bind(tokens)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(Duration::from_millis((oldest + window - now).clamp(10, window) as u64)))
    }
}

/// Makes sure `model` has its row in `rf_model_gate` and takes it: the rest
/// of the transaction runs alone for the model, whatever the replica count
/// (a row lock on PostgreSQL, the write lock on SQLite).
pub(crate) async fn take_model_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ns: &str,
    model: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO rf_model_gate (ns, model) VALUES ($1, $2) ON CONFLICT (ns, model) DO NOTHING")
        .bind(ns)
        .bind(model)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE rf_model_gate SET turn = turn + 1 WHERE ns = $1 AND model = $2")
        .bind(ns)
        .bind(model)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
