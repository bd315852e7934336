//! The one configuration tree every binary reads: documented defaults, an
//! optional TOML file, then `REELFLEET_SECTION__FIELD` environment overrides.
//!
//! Layout: [`Settings`] and its error here; loading and writing
//! (`load.rs`), the checks serde cannot make (`validate.rs`), the credentials a
//! worker refuses (`credentials.rs`), [`Secret`] (`secret.rs`), then one file per section, named as in the TOML file
//! (`broker.rs`, `s3.rs`, `state.rs`, `signing.rs`, `retry.rs`, `runtime.rs`,
//! `media.rs`, `limits.rs`, `preprocess.rs`, `inference.rs`, `postprocess.rs`, `sqs.rs`,
//! `intake.rs`, `pull.rs`, `webhooks.rs`, `index.rs`, `console.rs`).
//! The README's configuration reference is held to these fields by a test.

mod broker;
mod console;
mod credentials;
mod index;
mod inference;
mod intake;
mod limits;
mod load;
mod media;
mod postprocess;
mod preprocess;
mod pull;
mod retry;
mod runtime;
mod s3;
mod secret;
mod signing;
mod sqs;
mod state;
mod validate;
mod webhooks;

pub use broker::BrokerSettings;
pub use console::{ConsoleAccount, ConsoleRole, ConsoleSettings};
pub use credentials::Uses;
pub use index::IndexSettings;
pub use inference::{BudgetAction, InferenceSettings, ModelSettings, TierSettings};
pub use intake::{IntakeClient, IntakeSettings};
pub use limits::LimitSettings;
pub use media::{preset_at_least, LimitsKind, MediaSettings, SandboxKind, TierPresets};
pub use postprocess::PostprocessSettings;
pub use preprocess::PreprocessSettings;
pub use pull::{PullSettings, PULLED_PREFIX};
pub use retry::RetrySettings;
pub use runtime::RuntimeSettings;
pub use s3::{CredentialSource, S3Settings};
pub use secret::Secret;
pub use signing::{PreviousKey, SigningSettings, MIN_KEY_BYTES};
pub use sqs::SqsSettings;
pub use state::StateSettings;
pub use webhooks::{WebhookEndpoint, WebhookSettings, WEBHOOK_EVENTS};

use serde::{Deserialize, Serialize};

/// Every setting of a reelfleet process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Prefix of every queue and exchange (`<namespace>.ingest`, ...).
    pub namespace: String,
    /// RabbitMQ connection and consumer settings.
    pub broker: BrokerSettings,
    /// The object store: endpoint, credentials, buckets.
    pub s3: S3Settings,
    /// Message signing.
    pub signing: SigningSettings,
    /// Retry schedule for transient failures.
    pub retry: RetrySettings,
    /// Stage runtime: health port, shutdown grace.
    pub runtime: RuntimeSettings,
    /// ffmpeg/ffprobe binaries and timeouts.
    pub media: MediaSettings,
    /// Limits ingest enforces on uploaded videos.
    pub limits: LimitSettings,
    /// Normalization, keyframes and tier assignment.
    pub preprocess: PreprocessSettings,
    /// Providers, tier models and prices.
    pub inference: InferenceSettings,
    /// Renditions, quality floor, CDN purge.
    pub postprocess: PostprocessSettings,
    /// The database every replica shares budgets, rate limits and cooldowns through.
    pub state: StateSettings,
    /// The SQS bridge (`reelfleet worker bridge-sqs`).
    pub sqs: SqsSettings,
    /// The intake API (`reelfleet intake`).
    pub intake: IntakeSettings,
    /// URL pulls (`reelfleet worker pull`).
    pub pull: PullSettings,
    /// Outgoing webhooks (`reelfleet worker webhooks`).
    pub webhooks: WebhookSettings,
    /// The job index (`reelfleet worker index`, `reelfleet jobs`).
    pub index: IndexSettings,
    /// The web console (`reelfleet console`).
    pub console: ConsoleSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "reelfleet".into(),
            broker: BrokerSettings::default(),
            s3: S3Settings::default(),
            signing: SigningSettings::default(),
            retry: RetrySettings::default(),
            runtime: RuntimeSettings::default(),
            media: MediaSettings::default(),
            limits: LimitSettings::default(),
            preprocess: PreprocessSettings::default(),
            inference: InferenceSettings::default(),
            postprocess: PostprocessSettings::default(),
            state: StateSettings::default(),
            sqs: SqsSettings::default(),
            intake: IntakeSettings::default(),
            pull: PullSettings::default(),
            webhooks: WebhookSettings::default(),
            index: IndexSettings::default(),
            console: ConsoleSettings::default(),
        }
    }
}

/// Error loading settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or an environment override did not fit the settings tree.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl Settings {
    /// A copy with every credential replaced by `[redacted]`, for printing.
    pub fn redacted(&self) -> Settings {
        let hide = |s: &Secret| Secret::new(if s.expose().is_empty() { "" } else { "[redacted]" });
        let mut out = self.clone();
        out.broker.url = hide(&self.broker.url);
        out.broker.management_url = hide(&self.broker.management_url);
        out.s3.access_key = hide(&self.s3.access_key);
        out.s3.secret_key = hide(&self.s3.secret_key);
        out.signing.secret = hide(&self.signing.secret);
        for key in &mut out.signing.previous {
            key.secret = hide(&key.secret);
        }
        out.inference.api_key = hide(&self.inference.api_key);
        out.state.url = hide(&self.state.url);
        out.index.url = hide(&self.index.url);
        out.console.session_key = hide(&self.console.session_key);
        out.sqs.access_key = hide(&self.sqs.access_key);
        out.sqs.secret_key = hide(&self.sqs.secret_key);
        out.webhooks.secret = hide(&self.webhooks.secret);
        for e in &mut out.webhooks.endpoints {
            e.secret = hide(&e.secret);
        }
        out.postprocess.cdn_purge_token = self.postprocess.cdn_purge_token.as_ref().map(hide);
        for client in &mut out.intake.clients {
            client.secret = hide(&client.secret);
        }
        out.intake.gcs_verification_token = self.intake.gcs_verification_token.as_ref().map(hide);
        out
    }
}

#[cfg(test)]
mod tests;
