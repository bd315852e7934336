//! One job's row and how an event changes it: a pure fold, so the decision
//! that keeps the index right under redelivered, reordered and replayed
//! events is the easiest to read and to test.
//!
//! - A status only moves forward (`ingest` < `preprocess` < `inference` <
//!   `postprocess` < `failed` < `completed`); a terminal one (`failed`,
//!   `completed`) is left only by `job.replayed`, and an event older than
//!   the last replay never sets the status again.
//! - A manifest summary replaces what the row says only when it is at least
//!   as recent (its `updated_at`) as the one applied before.
//! - Cost only grows (a job's ledger is append-only).

use reelfleet_core::events::{self, Event, JobSummary, OutputRef};
use serde::{Deserialize, Serialize};

/// The stages whose durations have a column.
pub const TIMED_STAGES: [&str; 4] = ["ingest", "preprocess", "inference", "postprocess"];

/// One job in the index.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobRow {
    /// The job.
    pub job_id: String,
    /// `ingest`, `preprocess`, `inference`, `postprocess`, `completed`, `failed`.
    pub status: String,
    /// `analyze` or `generate`.
    pub kind: Option<String>,
    /// Tier.
    pub tier: Option<String>,
    /// Model that answered.
    pub model: Option<String>,
    /// Source bucket.
    pub bucket: Option<String>,
    /// Source key.
    pub key: Option<String>,
    /// Milliseconds of ingest, preprocess, inference and postprocess (in [`TIMED_STAGES`] order).
    pub stage_ms: [Option<i64>; 4],
    /// USD.
    pub cost_usd: f64,
    /// Why it failed: stage, class, code, message.
    pub error_stage: Option<String>,
    /// `transient` or `permanent`.
    pub error_class: Option<String>,
    /// Short error code.
    pub error_code: Option<String>,
    /// The reason.
    pub error_message: Option<String>,
    /// Its outputs.
    pub outputs: Vec<OutputRef>,
    /// When the job was created (ms since the epoch).
    pub created_ms: i64,
    /// Its latest event (ms).
    pub updated_ms: i64,
    /// When its status was set (ms).
    pub status_ms: i64,
    /// Its latest replay (ms; 0: never).
    pub replayed_ms: i64,
    /// `updated_at` of the manifest summary applied last (ms; 0: none).
    pub summary_ms: i64,
}

/// Where a status stands; terminal ones at the top.
pub fn rank(status: &str) -> u8 {
    match status {
        "ingest" => 1,
        "preprocess" => 2,
        "inference" => 3,
        "postprocess" => 4,
        "failed" => 5,
        "completed" => 6,
        _ => 0,
    }
}

/// Whether a job with this status is done.
pub fn terminal(status: &str) -> bool {
    rank(status) >= 5
}

/// The status an event of `kind` at `at_ms` sets on a row with `current`
/// status (set at `status_ms`) and last replay `replayed_ms`, proposing
/// `proposed`; `None` keeps it. A replay reopens the job unless what
/// followed it (its run's own failure or completion) is already in.
pub fn next_status(
    current: &str,
    status_ms: i64,
    replayed_ms: i64,
    kind: &str,
    proposed: &str,
    at_ms: i64,
) -> Option<String> {
    if rank(proposed) == 0 {
        return None;
    }
    if kind == events::JOB_REPLAYED {
        return (at_ms >= replayed_ms && at_ms >= status_ms).then(|| proposed.to_string());
    }
    if at_ms < replayed_ms {
        return None;
    }
    if terminal(current) && !terminal(proposed) {
        return None;
    }
    (rank(proposed) > rank(current)).then(|| proposed.to_string())
}

/// The status a stage's queue stands for (`pull` and anything unknown: `ingest`).
fn stage_status(stage: &str) -> &'static str {
    match stage {
        "preprocess" => "preprocess",
        "inference" => "inference",
        "postprocess" => "postprocess",
        _ => "ingest",
    }
}

/// The status that follows a finished stage.
fn after(stage: &str) -> &'static str {
    match stage {
        "ingest" | "pull" => "preprocess",
        "preprocess" => "inference",
        "inference" => "postprocess",
        // Only `job.completed` says a job is complete.
        _ => "",
    }
}

fn stage_slot(stage: &str) -> Option<usize> {
    TIMED_STAGES.iter().position(|s| *s == stage)
}

impl JobRow {
    /// The keyset cursor of the page that follows this row.
    pub fn cursor(&self) -> String {
        format!("{}.{}", self.created_ms, self.job_id)
    }

    /// A row made from a manifest alone (what `index rebuild` writes).
    pub fn from_summary(s: &JobSummary) -> Self {
        let mut row = JobRow { job_id: s.job_id.clone(), ..Default::default() };
        row.take_summary(s);
        row.status = s.status.clone();
        row.status_ms = s.updated_at.timestamp_millis();
        row.updated_ms = s.updated_at.timestamp_millis();
        row
    }

    fn take_summary(&mut self, s: &JobSummary) {
        self.kind = Some(s.kind.clone());
        self.bucket = Some(s.bucket.clone());
        self.key = Some(s.key.clone());
        if s.tier.is_some() {
            self.tier = s.tier.clone();
        }
        if s.model.is_some() {
            self.model = s.model.clone();
        }
        self.cost_usd = self.cost_usd.max(s.cost_usd);
        for (stage, ms) in &s.stages {
            if let Some(i) = stage_slot(stage) {
                self.stage_ms[i] = Some(*ms as i64);
            }
        }
        self.set_error(s.error.as_ref());
        self.outputs = s.outputs.clone();
        self.created_ms = s.created_at.timestamp_millis();
        self.summary_ms = s.updated_at.timestamp_millis();
    }

    fn set_error(&mut self, e: Option<&events::ErrorRef>) {
        self.error_stage = e.map(|e| e.stage.clone());
        self.error_class = e.map(|e| e.class.clone());
        self.error_code = e.map(|e| e.code.clone());
        self.error_message = e.map(|e| e.message.clone());
    }

    /// Folds `event` into the row (a new row when `job_id` is empty).
    pub fn apply(&mut self, e: &Event) {
        let at = e.at.timestamp_millis();
        if self.job_id.is_empty() {
            self.job_id = e.job_id.clone();
            self.created_ms = at;
        } else if self.summary_ms == 0 {
            // Until a manifest says when the job was created, its earliest event does.
            self.created_ms = self.created_ms.min(at);
        }
        self.updated_ms = self.updated_ms.max(at);
        let stale = at < self.replayed_ms && e.event != events::JOB_REPLAYED;
        if self.kind.is_none() {
            self.kind = e.kind.clone();
        }
        if self.bucket.is_none() {
            self.bucket = e.bucket.clone();
        }
        if self.key.is_none() {
            self.key = e.key.clone();
        }
        if self.tier.is_none() {
            self.tier = e.tier.clone();
        }
        if self.model.is_none() {
            self.model = e.model.clone();
        }
        if let Some(total) = e.total_usd.or(e.cost_usd) {
            self.cost_usd = self.cost_usd.max(total);
        }
        if let Some(job) = e.job.as_ref().filter(|j| !stale && j.updated_at.timestamp_millis() >= self.summary_ms) {
            self.take_summary(job);
        }
        let stage = e.stage.as_deref().unwrap_or_default();
        let proposed = match e.event.as_str() {
            events::JOB_CREATED => e.job.as_ref().map(|j| j.status.as_str()).unwrap_or("ingest"),
            events::STAGE_STARTED => stage_status(stage),
            events::STAGE_FINISHED => {
                if let (Some(i), Some(ms), false) = (stage_slot(stage), e.duration_ms, stale || terminal(&self.status))
                {
                    self.stage_ms[i].get_or_insert(ms as i64);
                }
                after(stage)
            }
            events::JOB_COMPLETED => "completed",
            events::JOB_FAILED => "failed",
            events::JOB_DEAD_LETTERED => e.job.as_ref().map(|j| j.status.as_str()).unwrap_or(""),
            // A replayed webhook or index event does not reopen the job.
            events::JOB_REPLAYED if matches!(stage, "webhooks" | "index") => "",
            events::JOB_REPLAYED => stage_status(stage),
            _ => "",
        };
        if matches!(e.event.as_str(), events::JOB_FAILED | events::JOB_DEAD_LETTERED) && !stale && e.job.is_none() {
            if let Some(err) = &e.error {
                self.set_error(Some(err));
            }
        }
        let reopened = next_status(&self.status, self.status_ms, self.replayed_ms, &e.event, proposed, at);
        if e.event == events::JOB_REPLAYED && !proposed.is_empty() && at >= self.replayed_ms {
            self.replayed_ms = at;
            if reopened.is_some() {
                self.set_error(None);
            }
        }
        if let Some(status) = reopened {
            self.status = status;
            self.status_ms = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table() {
        use events::*;
        // (current, status_ms, replayed_ms, event, proposed, at) -> new status
        type Case<'a> = (&'a str, i64, i64, &'a str, &'a str, i64, Option<&'a str>);
        let table: &[Case] = &[
            ("", 0, 0, JOB_CREATED, "preprocess", 10, Some("preprocess")),
            ("preprocess", 10, 0, STAGE_STARTED, "preprocess", 11, None),
            ("preprocess", 10, 0, STAGE_STARTED, "inference", 12, Some("inference")),
            ("inference", 12, 0, STAGE_STARTED, "preprocess", 13, None),
            ("inference", 12, 0, STAGE_STARTED, "preprocess", 9, None),
            ("postprocess", 14, 0, JOB_COMPLETED, "completed", 20, Some("completed")),
            ("completed", 20, 0, STAGE_STARTED, "postprocess", 21, None),
            ("completed", 20, 0, JOB_FAILED, "failed", 22, None),
            ("failed", 20, 0, JOB_COMPLETED, "completed", 23, Some("completed")),
            ("failed", 20, 0, STAGE_STARTED, "inference", 24, None),
            ("failed", 20, 0, JOB_REPLAYED, "inference", 25, Some("inference")),
            ("completed", 20, 0, JOB_REPLAYED, "postprocess", 25, Some("postprocess")),
            // The replayed run's own failure came in before the replay did.
            ("failed", 30, 0, JOB_REPLAYED, "ingest", 25, None),
            ("inference", 25, 25, JOB_FAILED, "failed", 22, None),
            ("inference", 25, 25, JOB_REPLAYED, "preprocess", 24, None),
            ("inference", 25, 25, JOB_FAILED, "failed", 26, Some("failed")),
            ("inference", 25, 25, STAGE_STARTED, "inference", 26, None),
            ("inference", 25, 0, JOB_CHARGED, "", 30, None),
        ];
        for (current, status_ms, replayed, kind, proposed, at, want) in table {
            let got = next_status(current, *status_ms, *replayed, kind, proposed, *at);
            assert_eq!(got.as_deref(), *want, "{current} {status_ms} {replayed} {kind} {proposed} {at}");
        }
    }

    fn event(kind: &str, at: i64) -> Event {
        let mut e = Event::new(kind, "j1");
        e.at = chrono::DateTime::from_timestamp_millis(at).unwrap();
        e
    }

    #[test]
    fn any_order_of_a_runs_events_ends_in_the_same_row() {
        let mut created = event(events::JOB_CREATED, 1_000);
        (created.kind, created.bucket, created.key) = (Some("analyze".into()), Some("up".into()), Some("a.mp4".into()));
        let mut started = event(events::STAGE_STARTED, 2_000);
        started.stage = Some("preprocess".into());
        let mut finished = event(events::STAGE_FINISHED, 3_000);
        (finished.stage, finished.duration_ms, finished.tier) =
            (Some("preprocess".into()), Some(900), Some("low".into()));
        let mut charged = event(events::JOB_CHARGED, 4_000);
        (charged.model, charged.total_usd) = (Some("m".into()), Some(0.25));
        let completed = event(events::JOB_COMPLETED, 5_000);
        let all = [created, started, finished, charged, completed];
        let fold = |order: &[usize]| {
            let mut row = JobRow::default();
            for i in order {
                row.apply(&all[*i]);
            }
            row
        };
        let forward = fold(&[0, 1, 2, 3, 4]);
        assert_eq!(forward.status, "completed");
        assert_eq!(forward.stage_ms[1], Some(900));
        assert_eq!(forward.cost_usd, 0.25);
        for order in [[4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 4, 0, 3, 2]] {
            let row = fold(&order);
            assert_eq!(row.status, forward.status, "{order:?}");
            assert_eq!(row.created_ms, forward.created_ms, "{order:?}");
            assert_eq!(row.cost_usd, forward.cost_usd, "{order:?}");
            assert_eq!(row.tier, forward.tier, "{order:?}");
            assert_eq!(row.model, forward.model, "{order:?}");
            assert_eq!(row.key, forward.key, "{order:?}");
        }
        let mut again = forward.clone();
        for e in &all {
            again.apply(e);
        }
        assert_eq!(again, forward, "every event again changes nothing");
    }
}
