//! reelfleet-cli: the `reelfleet` binary's library.
//!
//! Layout:
//! - [`commands`]: the command line. [`commands::Cli`] is what `reelfleet`
//!   parses; one module per command (or small family of commands) owns its
//!   arguments and its output (tables, `--json`) and exposes a `run` that
//!   returns the exit code. `main.rs` only parses, loads settings and
//!   dispatches.
//!   - `dev`: `dev` and `simulator`; `worker`; `submit`;
//!   - `jobs`: `jobs`, `status`, `route`; `queues`; `scale`;
//!   - `dlq`; `ledger`; `config`; `topology`; `media`.
//!
//! The library modules the commands (and the tests) use:
//! - [`fleet`]: builds stages from settings and runs them with one runtime,
//!   health server included.
//! - [`dev`]: the embedded default: S3 endpoint, provider simulator and all
//!   four workers in one process.
//! - [`ops`]: operator commands: submit, status, jobs, queues.
//! - [`scale`]: queue depth and the replicas KEDA would run, per chart worker.
//! - [`dlq`]: dead-letter operations: ls, show, replay, purge, export, import.
//! - [`ledger`]: the write-ahead ledger held against the provider's usage log.
//! - [`media`]: the ffprobe/ffmpeg runs of one analyze job, from the stages'
//!   own argument builders (the transcode benchmark's baseline).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod commands;
pub mod dev;
pub mod dlq;
pub mod fleet;
pub mod ledger;
pub mod media;
pub mod ops;
pub mod scale;
