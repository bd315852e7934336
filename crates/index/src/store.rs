//! The query layer: the only code that speaks SQL to the index. PostgreSQL
//! for a fleet, SQLite in the data folder for one machine, through sqlx's
//! `Any` driver and portable SQL (every statement runs on both), like the
//! shared state in `reelfleet_core::fleetstate`.
//!
//! - Versioned migrations ([`MIGRATIONS`]), applied at connect, recorded in
//!   `rf_index_migrations`.
//! - [`JobIndex::apply`]: an event and its effect on the job's row in one
//!   transaction. The event's id is the events table's key, so a
//!   redelivered event changes nothing; the row is rewritten only under the
//!   version it was read at, so two index replicas never lose an update.
//! - [`JobIndex::list`]: newest first, filters, keyset pagination on
//!   `(created_ms, job_id)`; every filter has an index that starts with the
//!   namespace and ends with the sort key, so no page costs an OFFSET scan.
//! - Key search: a case-blind substring of the source key, always decided
//!   by one `LOWER(source_key) LIKE` clause; a trigram index (PostgreSQL's
//!   pg_trgm, SQLite's FTS5 trigram tokenizer) narrows the rows it runs on
//!   for searches of three characters or more.

use crate::row::{JobRow, TIMED_STAGES};
use reelfleet_core::events::{Event, OutputRef};
use serde::Serialize;
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// `index.url` is empty.
    #[error("index.url is not set: the job index needs a database (postgres://... for a fleet, sqlite:///path/index.db on one machine)")]
    NotConfigured,
    /// The database refused or could not be reached.
    #[error("job index database: {0}")]
    Database(#[from] sqlx::Error),
    /// A row kept changing under us.
    #[error("job {0}: its row kept changing while the event was applied; retried later")]
    Contended(String),
    /// A cursor that `list` did not make.
    #[error("bad cursor {0:?}: pass the `next` value a previous page printed")]
    BadCursor(String),
    /// PostgreSQL's pg_trgm is missing and this role may not create it.
    #[error(
        "the job index's key search needs PostgreSQL's pg_trgm extension, and it cannot be created here: \
         as a superuser run `CREATE EXTENSION pg_trgm;` in the index's database, or grant its role CREATE \
         on the database (Debian ships pg_trgm in postgresql-contrib): {0}"
    )]
    Extension(sqlx::Error),
}

/// The two databases the index runs on, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (`postgres://...`).
    Postgres,
    /// SQLite (`sqlite://...`).
    Sqlite,
}

impl Dialect {
    /// The dialect of a database URL.
    pub fn of(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }
}

/// One versioned schema change: statements for both databases, then those
/// of the one connected to.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version; applied once, in order.
    pub version: i64,
    /// Statements both databases run.
    pub portable: &'static [&'static str],
    /// Statements only PostgreSQL runs.
    pub postgres: &'static [&'static str],
    /// Statements only SQLite runs.
    pub sqlite: &'static [&'static str],
}

impl Migration {
    /// What `dialect` runs, in order.
    pub fn statements(&self, dialect: Dialect) -> impl Iterator<Item = &'static str> {
        let own = match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::Sqlite => self.sqlite,
        };
        self.portable.iter().chain(own).copied()
    }
}

/// The extension behind PostgreSQL's key search; its statement fails with
/// [`IndexError::Extension`].
const CREATE_TRIGRAM_EXTENSION: &str = "CREATE EXTENSION IF NOT EXISTS pg_trgm";

/// Versioned schema changes; a version is applied once, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        portable: &[
            "CREATE TABLE IF NOT EXISTS rf_jobs (
            ns TEXT NOT NULL, job_id TEXT NOT NULL, status TEXT NOT NULL,
            kind TEXT, tier TEXT, model TEXT, bucket TEXT, source_key TEXT,
            ingest_ms BIGINT, preprocess_ms BIGINT, inference_ms BIGINT, postprocess_ms BIGINT,
            cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            error_stage TEXT, error_class TEXT, error_code TEXT, error_message TEXT,
            outputs TEXT NOT NULL DEFAULT '[]',
            created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, status_ms BIGINT NOT NULL,
            replayed_ms BIGINT NOT NULL DEFAULT 0, summary_ms BIGINT NOT NULL DEFAULT 0,
            version BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (ns, job_id))",
            "CREATE INDEX IF NOT EXISTS rf_jobs_recent ON rf_jobs (ns, created_ms, job_id)",
            "CREATE INDEX IF NOT EXISTS rf_jobs_status ON rf_jobs (ns, status, created_ms, job_id)",
            "CREATE INDEX IF NOT EXISTS rf_jobs_tier ON rf_jobs (ns, tier, created_ms, job_id)",
            "CREATE INDEX IF NOT EXISTS rf_jobs_model ON rf_jobs (ns, model, created_ms, job_id)",
            "CREATE TABLE IF NOT EXISTS rf_job_events (
            ns TEXT NOT NULL, event_id TEXT NOT NULL, job_id TEXT NOT NULL, kind TEXT NOT NULL,
            stage TEXT, at_ms BIGINT NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (ns, event_id))",
            "CREATE INDEX IF NOT EXISTS rf_job_events_job ON rf_job_events (ns, job_id, at_ms)",
        ],
        postgres: &[],
        sqlite: &[],
    },
    // Key search by trigrams. PostgreSQL: pg_trgm's GIN index on the very
    // expression `list` filters on, rechecked by the server. SQLite: an FTS5
    // table with the trigram tokenizer over rf_jobs' rowids (rf_jobs has
    // indexes, so VACUUM keeps its rowids), kept by triggers in the writer's
    // transaction, and filled from the rows already there.
    Migration {
        version: 2,
        portable: &[],
        postgres: &[
            CREATE_TRIGRAM_EXTENSION,
            "CREATE INDEX IF NOT EXISTS rf_jobs_key_trigrams ON rf_jobs USING gin (LOWER(source_key) gin_trgm_ops)",
        ],
        sqlite: &[
            "CREATE VIRTUAL TABLE IF NOT EXISTS rf_jobs_key_trigrams
             USING fts5(source_key, content = 'rf_jobs', tokenize = 'trigram')",
            "CREATE TRIGGER IF NOT EXISTS rf_jobs_key_trigrams_insert AFTER INSERT ON rf_jobs BEGIN
               INSERT INTO rf_jobs_key_trigrams (rowid, source_key) VALUES (new.rowid, new.source_key);
             END",
            "CREATE TRIGGER IF NOT EXISTS rf_jobs_key_trigrams_delete AFTER DELETE ON rf_jobs BEGIN
               INSERT INTO rf_jobs_key_trigrams (rf_jobs_key_trigrams, rowid, source_key)
               VALUES ('delete', old.rowid, old.source_key);
             END",
            "CREATE TRIGGER IF NOT EXISTS rf_jobs_key_trigrams_update AFTER UPDATE OF source_key ON rf_jobs
             WHEN old.source_key IS NOT new.source_key BEGIN
               INSERT INTO rf_jobs_key_trigrams (rf_jobs_key_trigrams, rowid, source_key)
               VALUES ('delete', old.rowid, old.source_key);
               INSERT INTO rf_jobs_key_trigrams (rowid, source_key) VALUES (new.rowid, new.source_key);
             END",
            "INSERT INTO rf_jobs_key_trigrams (rf_jobs_key_trigrams) VALUES ('rebuild')",
        ],
    },
    // PostgreSQL weighs the trigram index against the newest-first walk by
    // how common it thinks the substring is, from ANALYZE's sample of the
    // keys. With the default 100 histogram entries one of them holding a
    // rare substring made it think 1 % of the rows match: in 4 of 30 ANALYZEs
    // of 100,000 rows it walked the whole table for `cam-0042/` (181 ms
    // against 10). With 1000 entries it took the index in 80 of 80, and
    // still walks for a common substring.
    Migration {
        version: 3,
        portable: &[],
        postgres: &["ALTER INDEX rf_jobs_key_trigrams ALTER COLUMN 1 SET STATISTICS 1000"],
        sqlite: &[],
    },
];

/// A trigram index serves searches of at least this many characters;
/// shorter ones scan.
pub const TRIGRAM: usize = 3;

/// Above this many candidates from SQLite's trigram index a search scans the
/// newest rows instead: its matches are dense enough that a page comes
/// sooner that way than by fetching and sorting every candidate.
const SQLITE_DENSE: i64 = 1000;

const COLUMNS: &str = "job_id, status, kind, tier, model, bucket, source_key, ingest_ms, preprocess_ms, inference_ms, \
     postprocess_ms, cost_usd, error_stage, error_class, error_code, error_message, outputs, created_ms, updated_ms, \
     status_ms, replayed_ms, summary_ms";
const WRITTEN: usize = 22;

/// What [`JobIndex::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event was seen before (same id): nothing changed.
    Duplicate,
    /// Recorded; the job's row changed.
    Changed,
    /// Recorded; the row already said it all (a late or repeated transition).
    Unchanged,
}

/// Filters of a job listing; `None` filters nothing.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Status.
    pub status: Option<String>,
    /// Tier.
    pub tier: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Created at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Cost strictly above, USD.
    pub cost_above: Option<f64>,
    /// Substring of the source key.
    pub search: Option<String>,
}

/// One page of a listing.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// The jobs, newest first.
    pub jobs: Vec<JobRow>,
    /// Cursor of the next page (`--after`); `None` on the last.
    pub next: Option<String>,
}

/// One event as the index stored it.
#[derive(Clone, Debug, Serialize)]
pub struct StoredEvent {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its stage.
    pub stage: Option<String>,
    /// When (ms).
    pub at_ms: i64,
    /// The event as it came.
    pub body: serde_json::Value,
}

/// A connection pool to the job index of one namespace.
#[derive(Clone, Debug)]
pub struct JobIndex {
    pool: AnyPool,
    dialect: Dialect,
    namespace: String,
}

impl JobIndex {
    /// Connects to `url` and applies the migrations; rows are kept under `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, IndexError> {
        if url.trim().is_empty() {
            return Err(IndexError::NotConfigured);
        }
        let pool = reelfleet_core::fleetstate::open_pool(url).await?;
        let index = Self { pool, dialect: Dialect::of(url), namespace: namespace.to_string() };
        index.migrate().await?;
        Ok(index)
    }

    /// The namespace its rows are kept under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The database it is in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> Result<(), IndexError> {
        self.execute_retrying(
            "CREATE TABLE IF NOT EXISTS rf_index_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .await?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM rf_index_migrations").fetch_one(&self.pool).await?;
        for migration in MIGRATIONS.iter().filter(|m| m.version > applied.unwrap_or(0)) {
            let version = migration.version;
            for statement in migration.statements(self.dialect) {
                match self.execute_retrying(statement).await {
                    Err(IndexError::Database(e)) if statement == CREATE_TRIGRAM_EXTENSION => {
                        return Err(IndexError::Extension(e))
                    }
                    result => result?,
                }
            }
            sqlx::query(
                "INSERT INTO rf_index_migrations (version, applied_ms) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
            )
            .bind(version)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&self.pool)
            .await?;
            tracing::info!(version, "Job index migrated");
        }
        Ok(())
    }

    /// Two processes creating the same table at once on PostgreSQL: one loses
    /// on the catalog's unique index; the table is there all the same.
    async fn execute_retrying(&self, statement: &str) -> Result<(), IndexError> {
        if let Err(e) = self.pool.execute(statement).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.pool.execute(statement).await.map_err(|_| e)?;
        }
        Ok(())
    }

    /// Records `event` (whose JSON is `body`) and folds it into its job's row.
    pub async fn apply(&self, event: &Event, body: &[u8]) -> Result<Applied, IndexError> {
        let event_id = event.key_in(body);
        let body_text = String::from_utf8_lossy(body);
        for _ in 0..20 {
            let mut tx = self.pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO rf_job_events (ns, event_id, job_id, kind, stage, at_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (ns, event_id) DO NOTHING",
            )
            .bind(&self.namespace)
            .bind(&event_id)
            .bind(&event.job_id)
            .bind(&event.event)
            .bind(event.stage.clone())
            .bind(event.at.timestamp_millis())
            .bind(body_text.as_ref())
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(Applied::Duplicate);
            }
            let sql = format!("SELECT {COLUMNS}, version FROM rf_jobs WHERE ns = $1 AND job_id = $2");
            let found = sqlx::query(&sql).bind(&self.namespace).bind(&event.job_id).fetch_optional(&mut *tx).await?;
            let (before, version) = match &found {
                Some(r) => (Some(read_row(r)?), r.try_get::<i64, _>("version")?),
                None => (None, 0),
            };
            let mut row = before.clone().unwrap_or_default();
            row.apply(event);
            if before.as_ref() == Some(&row) {
                tx.commit().await?;
                return Ok(Applied::Unchanged);
            }
            let written = if before.is_some() {
                let sets = COLUMNS.split(", ").enumerate().map(|(i, c)| format!("{c} = ${}", i + 3));
                let sql = format!(
                    "UPDATE rf_jobs SET {}, version = version + 1 WHERE ns = $1 AND job_id = $2 AND version = ${}",
                    sets.collect::<Vec<_>>().join(", "),
                    WRITTEN + 3
                );
                let q = sqlx::query(&sql).bind(&self.namespace).bind(&event.job_id);
                bind_row(q, &row).bind(version).execute(&mut *tx).await?
            } else {
                let sql = format!(
                    "INSERT INTO rf_jobs (ns, {COLUMNS}) VALUES ({}) ON CONFLICT (ns, job_id) DO NOTHING",
                    placeholders(1, WRITTEN + 1)
                );
                bind_row(sqlx::query(&sql).bind(&self.namespace), &row).execute(&mut *tx).await?
            };
            if written.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(Applied::Changed);
            }
            // Another replica wrote the row since we read it: read it again.
            tx.rollback().await?;
        }
        Err(IndexError::Contended(event.job_id.clone()))
    }

    /// Writes `rows` as they are, replacing what the index says of those
    /// jobs (`index rebuild`, `index seed`).
    pub async fn put(&self, rows: &[JobRow]) -> Result<(), IndexError> {
        let mut tx = self.pool.begin().await?;
        let updates = COLUMNS.split(", ").skip(1).map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ");
        // 100 rows of 23 values stay far below both databases' parameter limits.
        for chunk in rows.chunks(100) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * (WRITTEN + 1) + 1, WRITTEN + 1)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO rf_jobs (ns, {COLUMNS}) VALUES {values}
                 ON CONFLICT (ns, job_id) DO UPDATE SET {updates}, version = rf_jobs.version + 1"
            );
            let mut q = sqlx::query(&sql);
            for row in chunk {
                q = bind_row(q.bind(&self.namespace), row);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Refreshes the statistics PostgreSQL plans by, after a bulk write
    /// (`index rebuild`, `index seed`): whether a key search goes by the
    /// trigram index or the newest-first scan rests on them, and autovacuum
    /// gathers them only a while later. SQLite's plans do not depend on them.
    pub async fn analyze(&self) -> Result<(), IndexError> {
        if self.dialect == Dialect::Postgres {
            self.pool.execute("ANALYZE rf_jobs").await?;
        }
        Ok(())
    }

    /// Every job id of the namespace.
    pub async fn job_ids(&self) -> Result<Vec<String>, IndexError> {
        Ok(sqlx::query_scalar("SELECT job_id FROM rf_jobs WHERE ns = $1")
            .bind(&self.namespace)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Removes jobs' rows (their events stay: they are history).
    pub async fn remove(&self, job_ids: &[String]) -> Result<(), IndexError> {
        for chunk in job_ids.chunks(500) {
            let sql = format!("DELETE FROM rf_jobs WHERE ns = $1 AND job_id IN ({})", placeholders(2, chunk.len()));
            let mut q = sqlx::query(&sql).bind(&self.namespace);
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// One job's row.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRow>, IndexError> {
        let sql = format!("SELECT {COLUMNS} FROM rf_jobs WHERE ns = $1 AND job_id = $2");
        let row = sqlx::query(&sql).bind(&self.namespace).bind(job_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(read_row).transpose()
    }

    /// How many jobs created at or after `since_ms` are in each status.
    pub async fn count_by_status(&self, since_ms: i64) -> Result<Vec<(String, i64)>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM rf_jobs WHERE ns = $1 AND created_ms >= $2 GROUP BY status ORDER BY status",
        )
        .bind(&self.namespace)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One job's events, oldest first.
    pub async fn events(&self, job_id: &str) -> Result<Vec<StoredEvent>, IndexError> {
        let rows = sqlx::query(
            "SELECT event_id, kind, stage, at_ms, body FROM rf_job_events
             WHERE ns = $1 AND job_id = $2 ORDER BY at_ms, event_id",
        )
        .bind(&self.namespace)
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                Ok(StoredEvent {
                    id: r.try_get("event_id")?,
                    kind: r.try_get("kind")?,
                    stage: r.try_get("stage")?,
                    at_ms: r.try_get("at_ms")?,
                    body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                })
            })
            .collect()
    }

    /// Jobs matching `filter`, newest first, `limit` of them after `after`
    /// (the `next` of the page before).
    pub async fn list(&self, filter: &JobFilter, limit: u32, after: Option<&str>) -> Result<Page, IndexError> {
        let mut clauses = vec!["ns = $1".to_string()];
        let mut texts: Vec<String> = vec![self.namespace.clone()];
        let mut n = 1;
        let mut next_param = || {
            n += 1;
            format!("${n}")
        };
        for (column, value) in [("status", &filter.status), ("tier", &filter.tier), ("model", &filter.model)] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {}", next_param()));
                texts.push(v.clone());
            }
        }
        let search = filter.search.as_deref().map(str::to_lowercase);
        let trigrams = match &search {
            Some(s) if self.dialect == Dialect::Sqlite => self.sqlite_trigram_phrase(s).await?,
            _ => None,
        };
        let search = search.map(|s| {
            // LIKE is case-blind on SQLite and not on PostgreSQL: lower both sides on both.
            // On PostgreSQL pg_trgm's index on LOWER(source_key) serves this very clause.
            clauses.push(format!("LOWER(source_key) LIKE {} ESCAPE '\\'", next_param()));
            format!("%{}%", escape_like(&s))
        });
        // The exact test stays above; the trigram index only picks the rows it
        // runs on. CROSS JOIN keeps SQLite from walking rf_jobs_recent instead.
        let from = match trigrams {
            Some(_) => format!(
                "(SELECT rowid AS hit FROM rf_jobs_key_trigrams WHERE rf_jobs_key_trigrams MATCH {}) AS hits
                 CROSS JOIN rf_jobs ON rf_jobs.rowid = hits.hit",
                next_param()
            ),
            None => "rf_jobs".to_string(),
        };
        let since = filter.since_ms;
        if since.is_some() {
            clauses.push(format!("created_ms >= {}", next_param()));
        }
        let cost = filter.cost_above;
        if cost.is_some() {
            clauses.push(format!("cost_usd > {}", next_param()));
        }
        let cursor = after.map(parse_cursor).transpose()?;
        if cursor.is_some() {
            let (a, b) = (next_param(), next_param());
            // The first half is a range on the index; the second only sorts out equal times.
            clauses.push(format!("created_ms <= {a} AND (created_ms < {a} OR job_id < {b})"));
        }
        let limit = limit.clamp(1, 1000);
        let sql = format!(
            "SELECT {COLUMNS} FROM {from} WHERE {} ORDER BY created_ms DESC, job_id DESC LIMIT {}",
            clauses.join(" AND "),
            limit + 1
        );
        let mut q = sqlx::query(&sql);
        for t in texts {
            q = q.bind(t);
        }
        if let Some(s) = search {
            // A statement planned for this pattern, not a generic plan for any:
            // PostgreSQL weighs its trigram index against the newest-first scan by the pattern.
            q = q.bind(s).persistent(false);
        }
        if let Some(phrase) = trigrams {
            q = q.bind(phrase);
        }
        if let Some(t) = since {
            q = q.bind(t);
        }
        if let Some(c) = cost {
            q = q.bind(c);
        }
        if let Some((t, id)) = cursor {
            q = q.bind(t).bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut jobs = rows.iter().map(read_row).collect::<Result<Vec<_>, _>>()?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(JobRow::cursor)
        } else {
            None
        };
        Ok(Page { jobs, next })
    }
}

impl JobIndex {
    /// The FTS5 phrase that finds `search` (lowered) in SQLite's trigram
    /// index, when that index is the way to the rows: `None` for a search
    /// shorter than a trigram, which the index cannot serve, and for one
    /// with more than [`SQLITE_DENSE`] candidates, whose page the
    /// newest-first scan finds sooner.
    async fn sqlite_trigram_phrase(&self, search: &str) -> Result<Option<String>, IndexError> {
        if search.chars().count() < TRIGRAM {
            return Ok(None);
        }
        // Inside double quotes everything is the phrase's text; a quote is doubled.
        let phrase = format!("\"{}\"", search.replace('"', "\"\""));
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM rf_jobs_key_trigrams WHERE rf_jobs_key_trigrams MATCH $1 LIMIT {})",
            SQLITE_DENSE + 1
        );
        let candidates: i64 = sqlx::query_scalar(&sql).bind(&phrase).fetch_one(&self.pool).await?;
        Ok((candidates <= SQLITE_DENSE).then_some(phrase))
    }
}

/// `text` as a LIKE pattern's literal part (escape character `\`).
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn parse_cursor(text: &str) -> Result<(i64, String), IndexError> {
    let bad = || IndexError::BadCursor(text.to_string());
    let (t, id) = text.split_once('.').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_string()))
}

/// `$from, $from+1, ...` (`count` of them).
fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a row's [`COLUMNS`], in order.
fn bind_row<'q>(q: AnyQuery<'q>, r: &JobRow) -> AnyQuery<'q> {
    let outputs = serde_json::to_string(&r.outputs).unwrap_or_else(|_| "[]".into());
    let mut q = q
        .bind(r.job_id.clone())
        .bind(r.status.clone())
        .bind(r.kind.clone())
        .bind(r.tier.clone())
        .bind(r.model.clone())
        .bind(r.bucket.clone())
        .bind(r.key.clone());
    for ms in r.stage_ms {
        q = q.bind(ms);
    }
    q.bind(r.cost_usd)
        .bind(r.error_stage.clone())
        .bind(r.error_class.clone())
        .bind(r.error_code.clone())
        .bind(r.error_message.clone())
        .bind(outputs)
        .bind(r.created_ms)
        .bind(r.updated_ms)
        .bind(r.status_ms)
        .bind(r.replayed_ms)
        .bind(r.summary_ms)
}

fn read_row(r: &sqlx::any::AnyRow) -> Result<JobRow, IndexError> {
    let outputs: String = r.try_get("outputs")?;
    let mut stage_ms = [None; 4];
    for (slot, stage) in stage_ms.iter_mut().zip(TIMED_STAGES) {
        *slot = r.try_get(format!("{stage}_ms").as_str())?;
    }
    Ok(JobRow {
        job_id: r.try_get("job_id")?,
        status: r.try_get("status")?,
        kind: r.try_get("kind")?,
        tier: r.try_get("tier")?,
        model: r.try_get("model")?,
        bucket: r.try_get("bucket")?,
        key: r.try_get("source_key")?,
        stage_ms,
        cost_usd: r.try_get("cost_usd")?,
        error_stage: r.try_get("error_stage")?,
        error_class: r.try_get("error_class")?,
        error_code: r.try_get("error_code")?,
        error_message: r.try_get("error_message")?,
        outputs: serde_json::from_str::<Vec<OutputRef>>(&outputs).unwrap_or_default(),
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        status_ms: r.try_get("status_ms")?,
        replayed_ms: r.try_get("replayed_ms")?,
        summary_ms: r.try_get("summary_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_column_is_bound() {
        assert_eq!(COLUMNS.split(", ").count(), WRITTEN);
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(parse_cursor("12.ab").unwrap(), (12, "ab".to_string()));
        assert!(parse_cursor("x").is_err());
    }
}
