//! Per-model rate limits: request and token budgets per minute (token
//! buckets) that keep the client under the provider's limits.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reelfleet_core::settings::InferenceSettings;
use std::{collections::HashMap, num::NonZeroU32, sync::Arc};

struct ModelLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, u32)>,
}

/// Rate limits of every configured model.
pub(crate) struct Limits {
    models: HashMap<String, Arc<ModelLimits>>,
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
        Self { models }
    }

    /// Waits until a request of about `tokens` tokens to `model` may go.
    pub(crate) async fn acquire(&self, model: &str, tokens: u64) {
        let Some(l) = self.models.get(model) else { return };
        if let Some(r) = &l.requests {
            r.until_ready().await;
        }
        if let Some((t, cap)) = &l.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, u64::from(*cap)) as u32).expect("at least one");
            let _ = t.until_n_ready(n).await;
        }
    }
}
