//! reelfleet-index: the job index. `<ns>.index` is bound to the events
//! exchange for every event (`#`); the index stage folds each into one row
//! per job and keeps the event itself, in PostgreSQL or SQLite, through
//! one query layer. A forged or unsigned event is dead-lettered unprocessed;
//! a database that does not answer is a transient failure (the runtime's
//! retries, then `<ns>.index.dlq`, from where `reelfleet dlq replay` puts
//! the events back).
//!
//! - [`row`]: a job's row and the pure fold of an event into it (status rules).
//! - [`store`]: the query layer: migrations, `apply`, `list` (filters, keyset pages), `put`.
//! - [`seed`]: realistic rows in bulk, for benchmarks.
//! - this file: the stage.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod row;
pub mod seed;
pub mod store;

pub use row::JobRow;
pub use store::{Applied, IndexError, JobFilter, JobIndex, Page, StoredEvent};

use async_trait::async_trait;
use reelfleet_core::{
    error::StageError,
    events::Event,
    json::parse_bounded,
    runtime::{Dispatch, Input, Message, Stage},
    topology::WorkQueue,
};
use tracing::info;

impl From<IndexError> for StageError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::BadCursor(_) => StageError::permanent("bad_input", e),
            _ => StageError::transient("index", e),
        }
    }
}

/// The index stage.
#[derive(Clone, Debug)]
pub struct IndexStage {
    index: JobIndex,
}

impl IndexStage {
    /// The stage writing into `index`.
    pub fn new(index: JobIndex) -> Self {
        Self { index }
    }
}

#[async_trait]
impl Stage for IndexStage {
    fn name(&self) -> &'static str {
        "index"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Index]
    }

    fn signed_raw(&self) -> bool {
        true
    }

    fn fails_jobs(&self) -> bool {
        false
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Raw(body) = msg.input else {
            return Err(StageError::permanent("bad_input", "the index queue takes lifecycle events"));
        };
        let event: Event = parse_bounded(&body)
            .map_err(|e| StageError::permanent("bad_input", format!("not a lifecycle event: {e}")))?;
        if event.job_id.is_empty() || event.job_id.len() > 64 {
            return Err(StageError::permanent("bad_input", "event without a valid job_id"));
        }
        let applied = self.index.apply(&event, &body).await?;
        info!(event = %event.event, job_id = %event.job_id, applied = ?applied, "Event indexed");
        Ok(Vec::new())
    }
}
