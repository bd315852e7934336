//! Per-model rate limits: request and token budgets per minute (token
//! buckets), and the provider's `Retry-After`, which holds back every request
//! to that model until it has passed.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reelfleet_core::settings::InferenceSettings;
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

struct ModelLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, u32)>,
}

/// Rate limits of every configured model.
pub(crate) struct Limits {
    models: HashMap<String, Arc<ModelLimits>>,
    not_before: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("models", &self.models.keys().collect::<Vec<_>>()).finish()
    }
}

impl Limits {
    pub(crate) fn new(settings: &InferenceSettings) -> Self {
        let models = settings
            .models
            .iter()
            .map(|m| {
                let requests =
                    NonZeroU32::new(m.requests_per_minute).map(|n| RateLimiter::direct(Quota::per_minute(n)));
                let tokens =
                    NonZeroU32::new(m.tokens_per_minute).map(|n| (RateLimiter::direct(Quota::per_minute(n)), n.get()));
                (m.model.clone(), Arc::new(ModelLimits { requests, tokens }))
            })
            .collect();
        Self { models, not_before: Mutex::new(HashMap::new()) }
    }

    /// Waits until a request of about `tokens` tokens to `model` may go.
    pub(crate) async fn acquire(&self, model: &str, tokens: u64) {
        loop {
            let wait = self.not_before.lock().expect("limits lock").get(model).copied();
            match wait {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        let Some(l) = self.models.get(model) else { return };
        if let Some(r) = &l.requests {
            r.until_ready().await;
        }
        if let Some((t, cap)) = &l.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, u64::from(*cap)) as u32).expect("at least one");
            let _ = t.until_n_ready(n).await;
        }
    }

    /// Holds back requests to `model` for `wait` (the provider's `Retry-After`).
    pub(crate) fn back_off(&self, model: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut nb = self.not_before.lock().expect("limits lock");
        let entry = nb.entry(model.to_string()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}
