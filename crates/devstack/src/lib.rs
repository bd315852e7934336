//! reelfleet-devstack: what `reelfleet dev` and the tests run beside the
//! workers.
//!
//! Layout:
//! - [`s3`]: an S3 endpoint (s3s + s3s-fs on a local folder, SigV4) that
//!   publishes a MinIO-format event record to the ingest queue after every
//!   successful PutObject and CompleteMultipartUpload into the upload bucket.
//! - [`simulator`]: the AI provider simulator, an HTTP server speaking the
//!   OpenAI chat-completions format and the signed video-generation API.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod s3;
pub mod simulator;

pub use s3::{serve_s3, S3Server};
pub use simulator::{serve_simulator, SimulatorConfig, SimulatorHandle, SimulatorStats, UsageRecord};
