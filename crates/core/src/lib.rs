//! reelfleet-core: the contracts every stage shares and the runtime that runs them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod broker;
pub mod decide;
pub mod envelope;
pub mod error;
pub mod fleetstate;
pub mod health;
pub mod jobstate;
pub mod json;
pub mod manifest;
pub mod media;
pub mod metrics;
pub mod runtime;
pub mod s3event;
pub mod settings;
pub mod storage;
pub mod telemetry;
pub mod tiering;
pub mod topology;

pub use decide::{decide, Next, Outcome};
