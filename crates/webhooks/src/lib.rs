//! reelfleet-webhooks: the outgoing webhooks stage. `<ns>.webhooks` is bound
//! to the events exchange for `job.completed`, `job.failed` and
//! `job.dead_lettered`; every event there is signed by the fleet (the
//! runtime signs what it publishes for this queue), and a forged or
//! unsigned one is dead-lettered unprocessed.
//!
//! An event is split into one delivery message per target (the job's own
//! `request.callback_url`, and each `[[webhooks.endpoints]]` that wants the
//! event), sent back to the same queue, signed, so that each target is
//! retried on its own with the runtime's backoff and dead-letters alone
//! into `<ns>.webhooks.dlq`, never failing the job. A delivery is a POST
//! through the SSRF guard, signed the Standard Webhooks way
//! ([`reelfleet_core::webhooks`]) with a `webhook-id` stable per event and
//! target, so receivers can drop repeats.
//!
//! - this file: the stage, the payload, the delivery.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use async_trait::async_trait;
use prometheus::{IntCounterVec, Opts};
use reelfleet_core::{
    error::StageError,
    json::parse_bounded,
    manifest::{manifest_key, JobManifest, ManifestStore},
    metrics::Metrics,
    netguard::{parse_cidrs, redacted, GuardError, GuardLimits, NetGuard},
    runtime::{Dispatch, Input, Message, Stage},
    settings::{Settings, WEBHOOK_EVENTS},
    storage::Storage,
    topology::WorkQueue,
    webhooks::{WebhookSecret, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};

/// Where one delivery goes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The job's own `request.callback_url`, signed with `webhooks.secret`.
    Callback {
        /// The URL.
        url: String,
    },
    /// `webhooks.endpoints[index]`, signed with its secret (looked up when
    /// sending, so no secret travels through the broker).
    Endpoint {
        /// Its place in the settings.
        index: usize,
        /// Its URL, checked against the settings when sending.
        url: String,
    },
}

impl Target {
    /// The URL POSTed to.
    pub fn url(&self) -> &str {
        match self {
            Target::Callback { url } | Target::Endpoint { url, .. } => url,
        }
    }
}

/// One event for one target: the body of a delivery message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    /// `job.completed`, `job.failed` or `job.dead_lettered`.
    pub event: String,
    /// The job.
    pub job_id: String,
    /// Where it goes.
    pub target: Target,
    /// `webhook-id`: the same for every attempt of this event to this target.
    pub webhook_id: String,
    /// The JSON body POSTed, byte for byte the same on every attempt.
    pub body: String,
}

/// What arrives on the webhooks queue.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Incoming {
    /// A delivery split off an event.
    Delivery {
        /// The delivery.
        delivery: Delivery,
    },
    /// A lifecycle event from the events exchange.
    Event(Value),
}

/// The stage's own metrics.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Delivery attempts by outcome: `delivered`, `failed` (retried or dead-lettered), `refused` (SSRF guard).
    pub deliveries: IntCounterVec,
}

impl WebhookMetrics {
    /// The metrics, registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let deliveries = IntCounterVec::new(
            Opts::new("reelfleet_webhook_deliveries_total", "Outgoing webhook POSTs, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        if let Err(e) = metrics.register(Box::new(deliveries.clone())) {
            warn!(error = %e, "Webhook metrics not registered");
        }
        for outcome in ["delivered", "failed", "refused"] {
            deliveries.with_label_values(&[outcome]);
        }
        Self { deliveries }
    }
}

/// The webhooks stage.
#[derive(Clone, Debug)]
pub struct Webhooks {
    settings: Arc<Settings>,
    manifests: ManifestStore,
    guard: NetGuard,
    callback_secret: Option<WebhookSecret>,
    endpoint_secrets: Vec<WebhookSecret>,
    metrics: WebhookMetrics,
}

impl Webhooks {
    /// The stage for `settings` (its secrets and CIDRs are checked when the settings load).
    pub fn new(settings: Arc<Settings>, storage: Storage, metrics: &Metrics) -> Result<Self, String> {
        let w = &settings.webhooks;
        let guard = NetGuard::new(
            GuardLimits {
                allow: parse_cidrs(&w.allow_cidrs)?,
                max_redirects: 0,
                connect_timeout: Duration::from_secs(w.connect_timeout_secs),
                total_timeout: Duration::from_secs(w.timeout_secs),
            },
            concat!("reelfleet-webhooks/", env!("CARGO_PKG_VERSION")),
        );
        let callback_secret = Some(w.secret.expose()).filter(|s| !s.is_empty()).map(WebhookSecret::parse);
        let callback_secret = callback_secret.transpose().map_err(|e| format!("webhooks.secret: {e}"))?;
        let endpoint_secrets = w
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| WebhookSecret::parse(e.secret.expose()).map_err(|e| format!("webhooks.endpoints[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let manifests = ManifestStore::new(storage, settings.s3.work_bucket.clone());
        Ok(Self {
            settings,
            manifests,
            guard,
            callback_secret,
            endpoint_secrets,
            metrics: WebhookMetrics::new(metrics),
        })
    }

    /// Splits an event into one delivery per target.
    async fn fan_out(&self, event: Value) -> Result<Vec<Dispatch>, StageError> {
        let bad = |why: &str| StageError::permanent("bad_input", format!("event refused: {why}"));
        let kind = event.get("event").and_then(Value::as_str).ok_or_else(|| bad("no event name"))?;
        if !WEBHOOK_EVENTS.contains(&kind) {
            return Err(bad(&format!("{kind:?} is not an event webhooks carry")));
        }
        let job_id = event.get("job_id").and_then(Value::as_str).unwrap_or_default();
        if job_id.is_empty() || job_id.len() > 64 || !job_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("no valid job_id"));
        }
        let manifest = self.manifests.load(job_id).await?;
        let body = serde_json::to_string(&payload(kind, &event, job_id, manifest.as_ref())).unwrap_or_default();
        let mut targets = Vec::new();
        if let Some(url) = manifest.as_ref().and_then(|m| m.request.as_ref()).and_then(|r| r.callback_url.clone()) {
            targets.push(Target::Callback { url });
        }
        for (index, e) in self.settings.webhooks.endpoints.iter().enumerate() {
            if e.wants(kind) {
                targets.push(Target::Endpoint { index, url: e.url.clone() });
            }
        }
        // A job completes once; a failure or dead letter can recur after a replay, so its time is part of it.
        let occurrence =
            if kind == "job.completed" { "" } else { event.get("at").and_then(Value::as_str).unwrap_or_default() };
        info!(event = kind, job_id, targets = targets.len(), "Event split into deliveries");
        Ok(targets
            .into_iter()
            .map(|target| {
                let delivery = Delivery {
                    event: kind.to_string(),
                    job_id: job_id.to_string(),
                    webhook_id: webhook_id(kind, job_id, occurrence, target.url()),
                    target,
                    body: body.clone(),
                };
                Dispatch::Signed {
                    queue: WorkQueue::Webhooks,
                    body: serde_json::to_vec(&json!({ "delivery": delivery })).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// POSTs one delivery.
    async fn deliver(&self, d: Delivery) -> Result<Vec<Dispatch>, StageError> {
        let secret = match &d.target {
            Target::Callback { .. } => self.callback_secret.as_ref().ok_or_else(|| {
                StageError::permanent("config", "the job has a callback_url but webhooks.secret is not set")
            })?,
            Target::Endpoint { index, url } => self
                .settings
                .webhooks
                .endpoints
                .get(*index)
                .filter(|e| e.url == *url)
                .and_then(|_| self.endpoint_secrets.get(*index))
                .ok_or_else(|| StageError::permanent("config", format!("endpoint {url} is no longer configured")))?,
        };
        let ts = chrono::Utc::now().timestamp();
        let signature = secret.sign(&d.webhook_id, ts, d.body.as_bytes());
        let sent = self
            .guard
            .send(reqwest::Method::POST, d.target.url(), |r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(ID_HEADER, &d.webhook_id)
                    .header(TIMESTAMP_HEADER, ts.to_string())
                    .header(SIGNATURE_HEADER, &signature)
                    .body(d.body.clone())
            })
            .await;
        let (response, url) = match sent {
            Ok(r) => r,
            Err(e) => {
                let refused = e.is_refusal();
                self.metrics.deliveries.with_label_values(&[if refused { "refused" } else { "failed" }]).inc();
                return Err(guard_error(e));
            }
        };
        let status = response.status();
        if status.is_success() {
            self.metrics.deliveries.with_label_values(&["delivered"]).inc();
            info!(event = %d.event, webhook_id = %d.webhook_id, url = %redacted(&url), status = status.as_u16(), "Webhook delivered");
            return Ok(Vec::new());
        }
        self.metrics.deliveries.with_label_values(&["failed"]).inc();
        let why = format!("{} answered HTTP {status}", redacted(&url));
        // 410 Gone asks to stop; a redirect is not followed for a signed POST.
        if status.as_u16() == 410 || status.is_redirection() {
            Err(StageError::permanent("http_status", why))
        } else {
            Err(StageError::transient("http_status", why))
        }
    }
}

fn guard_error(e: GuardError) -> StageError {
    match &e {
        _ if e.is_refusal() => StageError::permanent("ssrf_refused", e),
        GuardError::Timeout(_) => StageError::transient("timeout", e),
        _ => StageError::transient("network", e),
    }
}

/// `webhook-id`: `msg_` and 32 hex digits of SHA-256 over the event, the
/// job, the occurrence and the target URL.
pub fn webhook_id(event: &str, job_id: &str, occurrence: &str, url: &str) -> String {
    let mut h = Sha256::new();
    for part in [event, job_id, occurrence, url] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("msg_{}", &hex::encode(h.finalize())[..32])
}

/// The JSON POSTed for `kind` about `job_id`: what the manifest says, or
/// what the event says when there is no manifest.
pub fn payload(kind: &str, event: &Value, job_id: &str, manifest: Option<&JobManifest>) -> Value {
    let timestamp = event.get("at").cloned().unwrap_or_else(|| json!(chrono::Utc::now()));
    let data = match manifest {
        Some(m) => json!({
            "job_id": job_id,
            "status": m.status,
            "kind": m.kind,
            "tier": m.tier,
            "cost_usd": m.cost_usd(),
            "outputs": m.outputs.iter().map(|o| json!({
                "name": o.name, "key": o.key, "content_type": o.content_type,
                "width": o.width, "height": o.height, "size_bytes": o.size_bytes,
            })).collect::<Vec<_>>(),
            "error": m.error,
            "metadata": m.request.as_ref().map(|r| r.metadata.clone()).unwrap_or_default(),
            "manifest": manifest_key(job_id),
        }),
        None => json!({
            "job_id": job_id,
            "status": if kind == "job.completed" { "completed" } else { "failed" },
            "kind": event.get("kind"),
            "tier": event.get("tier"),
            "cost_usd": event.get("cost_usd"),
            "outputs": [],
            "error": event.get("error"),
            "metadata": {},
            "manifest": manifest_key(job_id),
        }),
    };
    json!({ "type": kind, "timestamp": timestamp, "data": data })
}

#[async_trait]
impl Stage for Webhooks {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Webhooks]
    }

    fn signed_raw(&self) -> bool {
        true
    }

    fn fails_jobs(&self) -> bool {
        false
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Raw(body) = msg.input else {
            return Err(StageError::permanent("bad_input", "the webhooks queue takes events and deliveries"));
        };
        let incoming: Incoming =
            parse_bounded(&body).map_err(|e| StageError::permanent("bad_input", format!("not JSON: {e}")))?;
        match incoming {
            Incoming::Delivery { delivery } => self.deliver(delivery).await,
            Incoming::Event(event) => self.fan_out(event).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_stable_per_event_and_target() {
        let a = webhook_id("job.completed", "j1", "", "https://a.example/hook");
        assert_eq!(a, webhook_id("job.completed", "j1", "", "https://a.example/hook"));
        assert!(a.starts_with("msg_") && a.len() == 36);
        assert_ne!(a, webhook_id("job.completed", "j1", "", "https://b.example/hook"));
        assert_ne!(a, webhook_id("job.failed", "j1", "", "https://a.example/hook"));
        assert_ne!(a, webhook_id("job.completed", "j2", "", "https://a.example/hook"));
    }

    #[test]
    fn deliveries_and_events_are_told_apart() {
        let d = Delivery {
            event: "job.failed".into(),
            job_id: "j1".into(),
            target: Target::Endpoint { index: 0, url: "https://a.example".into() },
            webhook_id: "msg_1".into(),
            body: "{}".into(),
        };
        let body = serde_json::to_vec(&json!({ "delivery": d })).unwrap();
        assert!(matches!(parse_bounded::<Incoming>(&body).unwrap(), Incoming::Delivery { delivery } if delivery == d));
        let event = br#"{"event":"job.completed","job_id":"j1"}"#;
        assert!(matches!(parse_bounded::<Incoming>(event).unwrap(), Incoming::Event(_)));
    }

    #[test]
    fn a_payload_without_a_manifest_says_what_the_event_says() {
        let event =
            json!({"event": "job.failed", "job_id": "j1", "at": "2026-01-01T00:00:00Z", "error": {"code": "x"}});
        let p = payload("job.failed", &event, "j1", None);
        assert_eq!(p["type"], "job.failed");
        assert_eq!(p["timestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(p["data"]["status"], "failed");
        assert_eq!(p["data"]["error"]["code"], "x");
        assert_eq!(p["data"]["manifest"], "jobs/j1/manifest.json");
    }
}
