//! reelfleet-core: the contracts every stage shares and the runtime that runs them.
//!
//! - [`settings`]: the configuration tree (defaults, TOML file, `REELFLEET_*` overrides).
//! - [`envelope`]: the signed message every stage sends on, and how a job id is derived.
//! - [`topology`]: queue and exchange names under a namespace, and their declaration.
//! - [`broker`]: RabbitMQ connections and publishes the broker confirms.
//! - [`runtime`]: the stage runtime: consumes, runs a [`runtime::Stage`], settles each message.
//! - [`decide`](mod@decide): what happens to a failed message (retry step, deferral, dead letter).
//! - [`error`]: stage errors, transient or permanent.
//! - [`events`]: the lifecycle events on `<ns>.events`, signed for the exchange.
//! - [`jobstate`]: the job state machine: claims, leases, hand-overs.
//! - [`manifest`]: the job manifest in the work bucket and the object layout.
//! - [`tiering`]: the cost tier a job gets, and why.
//! - [`s3event`]: AWS and MinIO S3 event bodies parsed into created objects.
//! - [`storage`]: the object store (aws-sdk-s3), streaming and multipart.
//! - [`awscreds`]: the S3 and SQS clients' credentials: the settings' keys or AWS's chain (IRSA, instance roles).
//! - [`media`]: ffprobe and ffmpeg as confined subprocesses, their output typed.
//! - [`fleetstate`]: the state every replica shares (budgets, rate limits, cooldowns).
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`, and readiness.
//! - [`metrics`]: the Prometheus metrics.
//! - [`telemetry`]: logging as flat JSON lines or text.
//! - [`netguard`]: the SSRF guard of outgoing HTTP (URL pulls, webhooks).
//! - [`json`]: bounded JSON parsing for untrusted input.
//! - [`webhooks`]: Standard Webhooks signatures, signed and verified.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod awscreds;
pub mod broker;
pub mod decide;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fleetstate;
pub mod health;
pub mod jobstate;
pub mod json;
pub mod manifest;
pub mod media;
pub mod metrics;
pub mod netguard;
pub mod runtime;
pub mod s3event;
pub mod sandbox;
pub mod settings;
pub mod signing;
pub mod storage;
pub mod telemetry;
pub mod tiering;
pub mod topology;
pub mod webhooks;

pub use decide::{decide, Next, Outcome};
