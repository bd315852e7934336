//! reelfleet-cli: the `reelfleet` binary's library.
//!
//! - [`commands`]: the command line: [`commands::Cli`], one module per command owning its arguments and output.
//! - [`console`]: the web console (`reelfleet console`, and `reelfleet dev`'s).
//! - [`fleet`]: stages built from settings and run with one runtime and its health server.
//! - [`dev`]: the embedded default: S3 endpoint, provider simulator and every worker in one process (the job index in SQLite there).
//! - [`index`]: the job index opened from the settings, rebuilt from the manifests, seeded.
//! - [`backfill`]: a bucket's existing objects announced to ingest, once, or polled.
//! - [`ops`]: what `submit`, `status` and `queues` do.
//! - [`submit_from`]: `submit --from FILE.jsonl`, many sources accepted as the intake accepts a batch.
//! - [`scale`]: queue depth and the replicas KEDA would run, per chart worker.
//! - [`dlq`]: dead-letter operations: ls, show, replay, purge, export, import.
//! - [`ledger`]: the write-ahead ledger held against the provider's usage log.
//! - [`media`]: the ffprobe/ffmpeg runs of one analyze job, from the stages' own builders.
//!
//! `main.rs` only parses, loads the settings, starts logging and dispatches.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backfill;
pub mod commands;
pub mod console;
pub mod dev;
pub mod dlq;
pub mod fleet;
pub mod index;
pub mod ledger;
pub mod media;
pub mod ops;
pub mod scale;
pub mod submit_from;
