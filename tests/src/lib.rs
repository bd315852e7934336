//! The test harness of the end-to-end tests, the benchmarks
//! (`reelfleet-bench`) and the fault suite (`reelfleet-chaos`):
//!
//! - [`stack`]: [`TestStack`], a whole fleet in the test's process, in a
//!   namespace and data folder of its own, removed afterwards.
//! - [`fleet`]: starting and removing fleets: the dev stack in this process,
//!   the `reelfleet` binary, free ports, a namespace's queues deleted.
//! - [`clip`]: video clips made with ffmpeg's lavfi sources.
//! - [`database`]: [`TestDatabase`], a PostgreSQL database per test.
//! - [`moto`]: moto's server (S3, SQS, SNS) on a free port.
//! - [`recorder`]: [`RequestRecorder`], an HTTP endpoint that records what it is sent.
//! - [`browser`]: [`Browser`], headless Chromium driven over WebDriver, killed on drop.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod browser;
pub mod clip;
pub mod database;
pub mod fleet;
pub mod moto;
pub mod recorder;
pub mod stack;

pub use browser::Browser;
pub use clip::make_clip;
pub use database::TestDatabase;
pub use recorder::{RecordedRequest, RequestRecorder};
pub use stack::TestStack;
