//! `/healthz`, `/readyz` and `/metrics` on one port per process, and the
//! readiness they report. The server has its own lifetime, longer than the
//! workers': while they drain, `/readyz` answers 503 and `/metrics` still
//! shows the drain.

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio_util::sync::CancellationToken;

/// Whether every consumer of the process is connected and not draining.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    consumers: BTreeMap<String, bool>,
    draining: bool,
}

impl Readiness {
    /// Registers a consumer, initially not ready.
    pub fn register(&self, queue: &str) {
        self.inner.lock().expect("readiness lock").consumers.entry(queue.to_string()).or_insert(false);
    }
    /// Marks a consumer connected or not.
    pub fn set(&self, queue: &str, up: bool) {
        self.inner.lock().expect("readiness lock").consumers.insert(queue.to_string(), up);
    }
    /// Turns readiness off for good (shutdown has begun).
    pub fn drain(&self) {
        self.inner.lock().expect("readiness lock").draining = true;
    }
    /// Ready: at least one consumer, all connected, not draining.
    pub fn is_ready(&self) -> bool {
        let s = self.inner.lock().expect("readiness lock");
        !s.draining && !s.consumers.is_empty() && s.consumers.values().all(|up| *up)
    }
    /// Consumers and whether each is up.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.inner.lock().expect("readiness lock").consumers.clone()
    }
}

#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    metrics: Metrics,
}

/// Serves the health endpoints on `addr` until `stop` (cancel it once the
/// workers have drained, not when shutdown begins); returns the bound address.
pub async fn serve(
    addr: &str,
    readiness: Readiness,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { readiness, metrics });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok(local)
}

async fn readyz(State(s): State<HealthState>) -> (StatusCode, String) {
    let body = serde_json::to_string(&s.readiness.snapshot()).unwrap_or_default() + "\n";
    if s.readiness.is_ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics_text(State(s): State<HealthState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}
