//! reelfleet-core: the contracts every stage shares and the runtime that runs them.
pub mod broker;
pub mod envelope;
pub mod json;
pub mod settings;
pub mod topology;
pub mod error;
pub mod storage;
pub mod media;
pub mod manifest;
pub mod s3event;
pub mod health;
pub mod metrics;
pub mod telemetry;
pub mod runtime;
pub mod routing;
