//! The checks serde cannot make: ranges, and values that depend on each other.

use super::{Settings, SettingsError};

impl Settings {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: &str| Err(SettingsError::Value(m.to_string()));
        if self.namespace.is_empty()
            || !self.namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return bad("namespace must be non-empty ASCII letters, digits, '-', '_' or '.'");
        }
        if self.broker.prefetch == 0 {
            return bad("broker.prefetch must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1");
        }
        self.media.validate().map_err(SettingsError::Value)?;
        if self.preprocess.max_width < 16 || self.preprocess.max_height < 16 {
            return bad("preprocess.max_width and max_height must be at least 16");
        }
        if self.runtime.job_timeout_secs + 60 > self.broker.consumer_timeout_secs {
            return bad("runtime.job_timeout_secs must be at least 60 s below broker.consumer_timeout_secs, or the broker closes the channel of a long job and it is redelivered forever");
        }
        if self.runtime.job_timeout_max_secs < self.runtime.job_timeout_secs {
            return bad("runtime.job_timeout_max_secs must be at least runtime.job_timeout_secs");
        }
        if !(1..=5).contains(&self.limits.max_uploader_priority) {
            return bad("limits.max_uploader_priority must be 1 to 5");
        }
        for tier in crate::envelope::Tier::ALL {
            let t = self.inference.tier(tier);
            if t.daily_budget_usd.is_some_and(|b| !b.is_finite() || b < 0.0) {
                return Err(SettingsError::Value(format!("inference.{tier}.daily_budget_usd must be 0 or more")));
            }
            for model in std::iter::once(&t.model).chain(t.fallback_model.as_ref()) {
                if self.inference.price(model).is_none() {
                    return Err(SettingsError::Value(format!(
                        "inference.{tier} uses model {model:?}, which has no [[inference.models]] entry (price, limits): its jobs could not be costed"
                    )));
                }
            }
        }
        if self.s3.upload_bucket == self.s3.work_bucket || self.s3.accepted_buckets.contains(&self.s3.work_bucket) {
            return bad("the work bucket cannot be an upload bucket (s3.upload_bucket, s3.accepted_buckets): uploads could then name the fleet's own outputs");
        }
        if !(1..=20).contains(&self.sqs.wait_secs) || !(1..=10).contains(&self.sqs.batch_size) {
            return bad("sqs.wait_secs must be 1 to 20 and sqs.batch_size 1 to 10 (SQS's own limits)");
        }
        if self.sqs.visibility_timeout_secs < 10 {
            return bad("sqs.visibility_timeout_secs must be at least 10");
        }
        self.pull.validate(self.runtime.job_timeout_secs).map_err(SettingsError::Value)?;
        self.webhooks.validate().map_err(SettingsError::Value)?;
        Ok(())
    }
}
