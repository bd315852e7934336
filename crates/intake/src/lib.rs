//! reelfleet-intake: the HTTP front door. Clients submit jobs (an object in
//! an upload bucket, or an http(s) URL the pull worker fetches) one at a
//! time or in batches, signed with Standard Webhooks signatures and made
//! safe to retry with `Idempotency-Key`; Cloud Pub/Sub pushes Cloud Storage
//! notifications. Each accepted job is a signed envelope on `<ns>.ingest`
//! (or `<ns>.pull` for a URL), confirmed by the broker before the client
//! hears 202.
//!
//! - [`server`]: the router and handlers; metrics.
//! - [`accept`]: a checked job resolved, recorded and published (every door).
//! - [`auth`]: API keys (by SHA-256, constant time) and request signatures.
//! - [`jobs`]: a job's fields checked, URL job ids, the envelope.
//! - [`records`]: what every replica shares in the work bucket (seen
//!   webhook ids, idempotency keys, acceptance records).
//! - [`gcs`]: Cloud Pub/Sub push bodies of Cloud Storage notifications.
//! - [`error`]: the JSON error body.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod accept;
pub mod auth;
pub mod error;
pub mod gcs;
pub mod jobs;
pub mod records;
pub mod server;

pub use server::{Intake, IntakeMetrics};
