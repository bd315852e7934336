//! reelfleet-devstack: what `reelfleet dev` and the tests run beside the
//! workers.
//!
//! - [`s3`]: an S3 endpoint on a local folder that publishes MinIO-format events to the ingest queue.
//! - [`simulator`]: the AI provider simulator (OpenAI chat completions, signed video generation).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod s3;
pub mod simulator;

pub use s3::{serve_s3, S3Server};
pub use simulator::{serve_simulator, SimulatorConfig, SimulatorHandle, SimulatorStats, UsageRecord};
