//! The fleet's shared state: one database that every replica of every worker
//! reaches, holding what must not be counted per process: each tier's daily
//! spend and reservations, each model's recent requests (for rate limits)
//! and its failure streak and cooldown. PostgreSQL for a fleet, SQLite in the
//! data folder for one machine (`reelfleet dev`), through one query layer
//! (sqlx's `Any` driver) and portable SQL: every statement here runs on both.
//!
//! Every row carries the namespace, so fleets (and tests) sharing a database
//! never see each other's counters.

use sqlx::{
    any::{AnyPoolOptions, AnyQueryResult},
    AnyPool, Executor,
};
use std::time::Duration;

/// Shared-state failures.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `state.url` is empty: a fleet's replicas would each count alone.
    #[error("state.url is not set: inference needs a database shared by its replicas (postgres://... for a fleet, sqlite:///path/state.db on one machine)")]
    NotConfigured,
    /// The database refused or could not be reached.
    #[error("shared state database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<StateError> for crate::error::StageError {
    fn from(e: StateError) -> Self {
        crate::error::StageError::transient("state", e)
    }
}

/// The schema, idempotent: applied by every process at start.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rf_tier_budget (
        ns TEXT NOT NULL, day TEXT NOT NULL, tier TEXT NOT NULL,
        spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (ns, day, tier))",
    "CREATE TABLE IF NOT EXISTS rf_model_gate (
        ns TEXT NOT NULL, model TEXT NOT NULL,
        turn BIGINT NOT NULL DEFAULT 0,
        failures BIGINT NOT NULL DEFAULT 0,
        cooled_until_ms BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (ns, model))",
    "CREATE TABLE IF NOT EXISTS rf_model_requests (
        ns TEXT NOT NULL, model TEXT NOT NULL, at_ms BIGINT NOT NULL, tokens BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rf_model_requests_window ON rf_model_requests (ns, model, at_ms)",
];

/// A connection pool to the shared state database.
#[derive(Clone, Debug)]
pub struct FleetState {
    pool: AnyPool,
    namespace: String,
}

impl FleetState {
    /// Connects to `url` and applies the schema; rows are kept under `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StateError> {
        if url.trim().is_empty() {
            return Err(StateError::NotConfigured);
        }
        let pool = open_pool(url).await?;
        let state = Self { pool, namespace: namespace.to_string() };
        state.migrate().await?;
        Ok(state)
    }

    async fn migrate(&self) -> Result<(), StateError> {
        for statement in SCHEMA {
            // Two processes creating the same table at once on PostgreSQL: one loses
            // on the catalog's unique index; the table is there all the same.
            if let Err(e) = self.pool.execute(*statement).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.pool.execute(*statement).await.map_err(|_| e)?;
            }
        }
        Ok(())
    }

    /// The pool, for the modules that own a table.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The namespace every row is kept under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// A pool to the database at `url` (PostgreSQL, or SQLite created if
/// missing), through sqlx's `Any` driver. On SQLite several processes share
/// the file: WAL lets readers go on beside the writer, and a writer waits its
/// turn instead of failing. The fleet state and the job index both open theirs here.
pub async fn open_pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let url = if sqlite && !url.contains("mode=") {
        format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
    } else {
        url.to_string()
    };
    AnyPoolOptions::new()
        .max_connections(if sqlite { 4 } else { 8 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA journal_mode=WAL").await?;
                    conn.execute("PRAGMA busy_timeout=10000").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
}

/// Makes sure `key` (a model, or `intake:<client>`) has its row in
/// `rf_model_gate` and takes it: the rest of the transaction runs alone for
/// the key, whatever the replica count (a row lock on PostgreSQL, the write
/// lock on SQLite).
pub async fn take_gate(tx: &mut sqlx::Transaction<'_, sqlx::Any>, ns: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO rf_model_gate (ns, model) VALUES ($1, $2) ON CONFLICT (ns, model) DO NOTHING")
        .bind(ns)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE rf_model_gate SET turn = turn + 1 WHERE ns = $1 AND model = $2")
        .bind(ns)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A sliding-window limit shared by every replica: at most `per_window`
/// entries (0: no limit) and `units_per_window` units (0: no limit) for
/// `key` in any `window`, kept as a log of the entries in `rf_model_requests`.
/// Records one entry of `units` if the window has room (`None`); otherwise
/// says how long until its oldest entry leaves. One transaction, serialised
/// per key, so N replicas together stay under the limit.
pub async fn window_acquire(
    state: &FleetState,
    key: &str,
    per_window: u32,
    units_per_window: u32,
    units: i64,
    window: Duration,
) -> Result<Option<Duration>, StateError> {
    let ns = state.namespace();
    let window = window.as_millis() as i64;
    let mut tx = state.pool().begin().await?;
    take_gate(&mut tx, ns, key).await?;
    let now = now_ms();
    sqlx::query("DELETE FROM rf_model_requests WHERE ns = $1 AND model = $2 AND at_ms <= $3")
        .bind(ns)
        .bind(key)
        .bind(now - window)
        .execute(&mut *tx)
        .await?;
    let (count, used, oldest): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(tokens), 0) AS BIGINT), CAST(COALESCE(MIN(at_ms), 0) AS BIGINT)
         FROM rf_model_requests WHERE ns = $1 AND model = $2",
    )
    .bind(ns)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    let room_for_entry = per_window == 0 || count < i64::from(per_window);
    let room_for_units = units_per_window == 0 || count == 0 || used + units <= i64::from(units_per_window);
    if room_for_entry && room_for_units {
        sqlx::query("INSERT INTO rf_model_requests (ns, model, at_ms, tokens) VALUES ($1, $2, $3, $4)")
            .bind(ns)
            .bind(key)
            .bind(now)
            .bind(units)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(Duration::from_millis((oldest + window - now).clamp(10, window) as u64)))
}

/// Rows a statement changed.
pub fn changed(r: &AnyQueryResult) -> u64 {
    r.rows_affected()
}

/// Milliseconds since the epoch on this worker's clock (replicas keep clocks within NTP's skew).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
