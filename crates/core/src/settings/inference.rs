//! Providers, tiers, models, prices, budgets.

use super::Secret;
use serde::{Deserialize, Serialize};

/// What a tier does when its daily budget is spent.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BudgetAction {
    /// Send the tier's jobs to the next cheaper tier.
    #[default]
    Downgrade,
    /// Stop consuming the tier until the next UTC day.
    Pause,
}

/// One tier's routing and batching.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierSettings {
    /// Model that serves the tier.
    pub model: String,
    /// Model that takes over while `model` cools down after repeated failures.
    pub fallback_model: Option<String>,
    /// Jobs sent to the provider together (at most).
    pub batch_size: usize,
    /// Milliseconds a partial batch waits for more jobs before it goes.
    pub max_wait_ms: u64,
    /// Batches of this tier in flight at once.
    pub concurrency: usize,
    /// USD the tier may spend per UTC day. Every tier has a default cap (a
    /// bill nobody capped is the one that surprises); raise it to what you
    /// mean to spend.
    pub daily_budget_usd: Option<f64>,
    /// What happens when the budget is spent.
    pub on_budget: BudgetAction,
}

impl Default for TierSettings {
    fn default() -> Self {
        Self {
            model: "gemini-2.5-flash".into(),
            fallback_model: None,
            batch_size: 50,
            max_wait_ms: 500,
            concurrency: 4,
            daily_budget_usd: None,
            on_budget: BudgetAction::Downgrade,
        }
    }
}

/// A model: price, request limits and the provider's rate limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Model name as sent to the provider.
    pub model: String,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// Images one request may carry.
    #[serde(default = "default_max_images")]
    pub max_images_per_request: usize,
    /// Input tokens one request may carry (an estimate is checked before sending).
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: u64,
    /// Requests per minute the provider allows (0: no limit).
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Tokens per minute the provider allows (0: no limit).
    #[serde(default)]
    pub tokens_per_minute: u32,
}

fn default_max_images() -> usize {
    64
}

fn default_max_input_tokens() -> u64 {
    128_000
}

/// Providers, tiers and models.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    /// Base URL of the OpenAI-compatible gateway (chat completions, video generation).
    pub base_url: String,
    /// API key for the gateway; also the HMAC key of video generation requests.
    pub api_key: Secret,
    /// The provider's usage log (`GET`, a JSON list of billed requests) that
    /// `reelfleet ledger reconcile` holds the ledger against, called with the
    /// API key as Bearer; unset: pass `--usage-url` (`reelfleet dev` sets it
    /// to the simulator's `/v1/usage`).
    pub usage_url: Option<String>,
    /// Seconds to connect to the provider.
    pub connect_timeout_secs: u64,
    /// Seconds for a whole provider request.
    pub request_timeout_secs: u64,
    /// Tries of one provider request (429 and 5xx) before its model counts a failure.
    pub request_attempts: u32,
    /// Consecutive failed requests after which a model cools down.
    pub cooldown_after_failures: u32,
    /// Seconds a failing model cools down (its tier's fallback model serves meanwhile).
    pub cooldown_secs: u64,
    /// Tokens counted per image when packing requests.
    pub tokens_per_image_estimate: u64,
    /// Model of video generation jobs.
    pub video_model: String,
    /// Price of a generated second of video, USD.
    pub video_usd_per_second: f64,
    /// Largest generated video downloaded, in bytes; a larger one fails the job.
    pub max_video_bytes: u64,
    /// Low tier.
    pub low: TierSettings,
    /// Medium tier.
    pub medium: TierSettings,
    /// High tier.
    pub high: TierSettings,
    /// Critical tier.
    pub critical: TierSettings,
    /// Models (a list, since model names contain dots).
    pub models: Vec<ModelSettings>,
}

impl InferenceSettings {
    /// The settings of `model`, if configured.
    pub fn price(&self, model: &str) -> Option<&ModelSettings> {
        self.models.iter().find(|p| p.model == model)
    }

    /// A tier's settings.
    pub fn tier(&self, tier: crate::envelope::Tier) -> &TierSettings {
        use crate::envelope::Tier;
        match tier {
            Tier::Low => &self.low,
            Tier::Medium => &self.medium,
            Tier::High => &self.high,
            Tier::Critical => &self.critical,
        }
    }
}

impl Default for InferenceSettings {
    fn default() -> Self {
        let model = |m: &str, i, o| ModelSettings {
            model: m.into(),
            input_per_mtok: i,
            output_per_mtok: o,
            max_images_per_request: default_max_images(),
            max_input_tokens: default_max_input_tokens(),
            requests_per_minute: 0,
            tokens_per_minute: 0,
        };
        let tier = |m: &str, fallback: &str, batch_size, budget| TierSettings {
            model: m.into(),
            fallback_model: Some(fallback.into()),
            batch_size,
            daily_budget_usd: Some(budget),
            ..TierSettings::default()
        };
        Self {
            base_url: "https://api.holysheep.ai/v1".into(),
            api_key: Secret::default(),
            usage_url: None,
            connect_timeout_secs: 5,
            request_timeout_secs: 120,
            request_attempts: 4,
            cooldown_after_failures: 3,
            cooldown_secs: 60,
            tokens_per_image_estimate: 258,
            video_model: "holysheep-video-1".into(),
            video_usd_per_second: 0.05,
            max_video_bytes: 4 * 1024 * 1024 * 1024,
            low: tier("deepseek-v3.2", "gemini-2.5-flash", 100, 25.0),
            medium: tier("gemini-2.5-flash", "deepseek-v3.2", 50, 50.0),
            high: tier("gpt-4.1", "gemini-2.5-flash", 20, 100.0),
            critical: tier("claude-sonnet-4.5", "gpt-4.1", 5, 100.0),
            models: vec![
                model("deepseek-v3.2", 0.28, 0.42),
                model("gemini-2.5-flash", 0.30, 2.50),
                model("gpt-4.1", 2.00, 8.00),
                model("claude-sonnet-4.5", 3.00, 15.00),
            ],
        }
    }
}
