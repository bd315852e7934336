//! Outgoing webhooks (`reelfleet worker webhooks`): the endpoints every
//! job's events go to, the secret of per-job callback URLs, and the limits
//! of a delivery. Every target passes the SSRF guard.

use super::Secret;
use serde::{Deserialize, Serialize};

/// The events a webhook can carry.
pub const WEBHOOK_EVENTS: [&str; 3] = ["job.completed", "job.failed", "job.dead_lettered"];

/// `[webhooks]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// `whsec_...` secret signing the POSTs to a job's own `callback_url`;
    /// unset: those callbacks fail (dead-lettered, named).
    pub secret: Secret,
    /// Endpoints that receive the events of every job.
    pub endpoints: Vec<WebhookEndpoint>,
    /// CIDRs (or single addresses) a delivery may reach although the SSRF
    /// rules refuse their class; empty: none.
    pub allow_cidrs: Vec<String>,
    /// Seconds a TCP (+ TLS) connect may take.
    pub connect_timeout_secs: u64,
    /// Seconds a whole delivery may take; a slower endpoint is retried.
    pub timeout_secs: u64,
}

/// `[[webhooks.endpoints]]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// The http(s) URL POSTed to.
    pub url: String,
    /// Its `whsec_...` secret.
    pub secret: Secret,
    /// Events it receives (`job.completed`, `job.failed`, `job.dead_lettered`); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookEndpoint {
    /// Whether the endpoint takes `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret: Secret::default(),
            endpoints: Vec::new(),
            allow_cidrs: Vec::new(),
            connect_timeout_secs: 5,
            timeout_secs: 15,
        }
    }
}

impl WebhookSettings {
    /// Checks values serde cannot: secrets, event names, CIDRs, URLs.
    pub fn validate(&self) -> Result<(), String> {
        use crate::webhooks::WebhookSecret;
        crate::netguard::parse_cidrs(&self.allow_cidrs).map_err(|e| format!("webhooks.allow_cidrs: {e}"))?;
        if !self.secret.expose().is_empty() && WebhookSecret::parse(self.secret.expose()).is_err() {
            return Err("webhooks.secret must be whsec_ followed by the base64 of at least 24 bytes".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let scheme_ok = url::Url::parse(&e.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !scheme_ok {
                return Err(format!("webhooks.endpoints[{i}].url must be an http(s) URL"));
            }
            if WebhookSecret::parse(e.secret.expose()).is_err() {
                return Err(format!(
                    "webhooks.endpoints[{i}].secret must be whsec_ followed by the base64 of at least 24 bytes"
                ));
            }
            if let Some(bad) = e.events.iter().find(|ev| !WEBHOOK_EVENTS.contains(&ev.as_str())) {
                return Err(format!(
                    "webhooks.endpoints[{i}].events: unknown event {bad:?} (expected one of {WEBHOOK_EVENTS:?})"
                ));
            }
        }
        if self.connect_timeout_secs == 0 || self.timeout_secs < self.connect_timeout_secs {
            return Err("webhooks.connect_timeout_secs must be at least 1 and at most webhooks.timeout_secs".into());
        }
        Ok(())
    }
}
