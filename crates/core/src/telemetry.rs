//! Logging: JSON lines (or plain text for terminals), filtered by `RUST_LOG`.
//!
//! JSON lines are flat: the fields of the message span the runtime opens
//! (`stage`, `queue`, `job_id`, `attempt`) sit at the top level beside the
//! event's own, so a log store can index and filter on them directly.

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,aws=warn,hyper=warn,s3s=warn"))
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(json: bool) {
    if json {
        let layer = tracing_flat_json::FlatJsonLayer::new(std::io::stderr);
        let _ = tracing_subscriber::registry().with(filter()).with(layer).try_init();
    } else {
        let _ = fmt().with_env_filter(filter()).with_writer(std::io::stderr).with_target(false).try_init();
    }
}
