//! Every provider call: the tier's budget reserved before and settled after,
//! the model's shared rate limits, `Retry-After` and backoff, and the charge
//! counted in the metrics.

use crate::{budget, ChatResponse, Inference, ProviderError};
use reelfleet_core::{envelope::Tier, error::StageError, manifest::Charge};
use std::time::Duration;

impl Inference {
    /// Sets aside `usd` of `tier`'s budget; `Ok(None)` for a tier without a cap,
    /// `Err(spend)` when the cap is reached.
    pub(crate) async fn reserve(
        &self,
        tier: Tier,
        usd: f64,
    ) -> Result<Result<Option<budget::Reservation>, budget::Spend>, StageError> {
        let Some(cap) = self.settings.inference.tier(tier).daily_budget_usd else { return Ok(Ok(None)) };
        match self.budgets.reserve(tier, cap, usd).await? {
            Some(r) => Ok(Ok(Some(r))),
            None => Ok(Err(self.budgets.spend(tier).await?)),
        }
    }

    /// Turns a reservation into what was billed (or counts the spend of a tier without a cap).
    pub(crate) async fn settle(&self, tier: Tier, reservation: Option<budget::Reservation>, billed_usd: f64) {
        match reservation {
            Some(r) if billed_usd > 0.0 => self.budgets.settle(r, billed_usd).await,
            Some(r) => self.budgets.release(r).await,
            None if billed_usd > 0.0 => self.budgets.record(tier, billed_usd).await,
            None => {}
        }
    }

    /// Every billed share goes to the metrics at once.
    pub(crate) fn account(&self, tier: Tier, c: &Charge) {
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "input"]).inc_by(c.input_tokens);
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "output"]).inc_by(c.output_tokens);
        self.metrics.cost_usd.with_label_values(&[tier.as_str(), &c.model]).inc_by(c.usd);
    }

    /// Sends one chat request, waiting out rate limits and `Retry-After`, retrying 5xx with backoff.
    pub(crate) async fn send(
        &self,
        model: &str,
        body: &serde_json::Value,
        request_id: &str,
        estimate: u64,
    ) -> Result<ChatResponse, ProviderError> {
        self.with_retries(model, estimate, || self.provider.chat(body, request_id)).await
    }

    /// Runs one provider call (the same request, the same `X-Request-Id`)
    /// through the model's rate limits until it answers: a 429 waits out its
    /// `Retry-After`, other transient failures back off, up to the configured attempts.
    pub(crate) async fn with_retries<T, F, Fut>(&self, model: &str, estimate: u64, call: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        use backon::BackoffBuilder;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        let (mut failures, mut throttled) = (0u32, 0u32);
        loop {
            self.limits.acquire(model, estimate).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
            match call().await {
                Ok(r) => return Ok(r),
                Err(ProviderError::RateLimited(wait)) => {
                    throttled += 1;
                    self.metrics.failures.with_label_values(&["inference", "transient", "rate_limited"]).inc();
                    // This request waits out its Retry-After; the model's request and
                    // token buckets keep the client as a whole under the provider's limits.
                    tokio::time::sleep(wait).await;
                    if throttled > 30 {
                        return Err(ProviderError::Unavailable(format!("still rate limited after {throttled} waits")));
                    }
                }
                Err(e @ ProviderError::Refused(_)) => return Err(e),
                Err(e) => {
                    failures += 1;
                    if failures >= self.settings.inference.request_attempts.max(1) {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    }
}
