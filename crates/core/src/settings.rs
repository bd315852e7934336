//! The one configuration tree every binary reads: documented defaults, an
//! optional TOML file, then `REELFLEET_SECTION__FIELD` environment overrides.

use serde::{Deserialize, Serialize};
use std::{fmt, path::Path};

/// A credential that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The credential itself; call sites are the only places it is revealed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

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
    /// Loads defaults, then `file` (TOML) if given, then `REELFLEET_*` overrides.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder
                .add_source(config::File::from(path.to_path_buf()).format(config::FileFormat::Toml).required(true));
        }
        // REELFLEET_CONFIG names the file (the CLI's --config); it is not a setting.
        let vars: std::collections::HashMap<String, String> =
            std::env::vars().filter(|(k, _)| k.starts_with("REELFLEET_") && k != "REELFLEET_CONFIG").collect();
        builder = builder.add_source(
            config::Environment::with_prefix("REELFLEET")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

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
        if self.preprocess.max_width < 16 || self.preprocess.max_height < 16 {
            return bad("preprocess.max_width and max_height must be at least 16");
        }
        if self.runtime.job_timeout_secs + 60 > self.broker.consumer_timeout_secs {
            return bad("runtime.job_timeout_secs must be at least 60 s below broker.consumer_timeout_secs, or the broker closes the channel of a long job and it is redelivered forever");
        }
        for tier in crate::envelope::Tier::ALL {
            let t = self.inference.tier(tier);
            for model in std::iter::once(&t.model).chain(t.fallback_model.as_ref()) {
                if self.inference.price(model).is_none() {
                    return Err(SettingsError::Value(format!(
                        "inference.{tier} uses model {model:?}, which has no [[inference.models]] entry (price, limits): its jobs could not be costed"
                    )));
                }
            }
        }
        if self.signing.secret.expose().len() < 16 {
            return bad("signing.secret must be at least 16 characters");
        }
        Ok(())
    }

    /// A copy with every credential replaced by `[redacted]`, for printing.
    pub fn redacted(&self) -> Settings {
        let hide = |s: &Secret| Secret::new(if s.expose().is_empty() { "" } else { "[redacted]" });
        let mut out = self.clone();
        out.broker.url = hide(&self.broker.url);
        out.broker.management_url = hide(&self.broker.management_url);
        out.s3.access_key = hide(&self.s3.access_key);
        out.s3.secret_key = hide(&self.s3.secret_key);
        out.signing.secret = hide(&self.signing.secret);
        out.inference.api_key = hide(&self.inference.api_key);
        out.postprocess.cdn_purge_token = self.postprocess.cdn_purge_token.as_ref().map(hide);
        out
    }

    /// The settings as TOML, credentials included (for `reelfleet dev` to hand
    /// its own configuration to other commands).
    pub fn to_toml(&self) -> String {
        toml_string(self)
    }
}

fn toml_string(settings: &Settings) -> String {
    // serde_json -> toml keeps the field order of the structs.
    let value = serde_json::to_value(settings).expect("settings serialize to JSON");
    json_to_toml(&value, "")
}

fn json_to_toml(value: &serde_json::Value, prefix: &str) -> String {
    use serde_json::Value;
    let mut scalars = String::new();
    let mut tables = String::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            match v {
                Value::Object(_) => {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    let inner = json_to_toml(v, &name);
                    tables.push_str(&format!("\n[{name}]\n{inner}"));
                }
                Value::Null => {}
                Value::Array(items) if items.iter().all(|i| i.is_object()) && !items.is_empty() => {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    for item in items {
                        tables.push_str(&format!("\n[[{name}]]\n{}", json_to_toml(item, &name)));
                    }
                }
                other => scalars.push_str(&format!("{k} = {}\n", toml_scalar(other))),
            }
        }
    }
    scalars + &tables
}

fn toml_scalar(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => serde_json::to_string(s).expect("string serializes"),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_scalar).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{} = {}", serde_json::to_string(k).expect("key"), toml_scalar(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// RabbitMQ settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL, credentials included.
    pub url: Secret,
    /// Unacknowledged deliveries per consumer (bounded prefetch).
    pub prefetch: u16,
    /// Quorum-queue delivery limit: the last guard against a message that
    /// keeps crashing its worker.
    pub delivery_limit: u32,
    /// Connections kept in the pool.
    pub pool_size: usize,
    /// Seconds between reconnection attempts grow up to this bound.
    pub reconnect_max_delay_secs: u64,
    /// The broker's `consumer_timeout` in seconds (RabbitMQ 3.10 default 1800):
    /// a consumer holding a message longer loses its channel, so
    /// `runtime.job_timeout_secs` must stay below it.
    pub consumer_timeout_secs: u64,
    /// RabbitMQ management API (for `reelfleet queues`); passive declares are used when it does not answer.
    pub management_url: Secret,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefetch: 4,
            delivery_limit: 10,
            pool_size: 4,
            reconnect_max_delay_secs: 10,
            consumer_timeout_secs: 1800,
            management_url: Secret::new("http://guest:guest@127.0.0.1:15672"),
        }
    }
}

/// Object store settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL (path-style addressing is always used).
    pub endpoint: String,
    /// Region used for SigV4.
    pub region: String,
    /// Access key id.
    pub access_key: Secret,
    /// Secret access key.
    pub secret_key: Secret,
    /// Bucket where users upload videos and prompt documents.
    pub upload_bucket: String,
    /// Bucket where jobs write everything they produce.
    pub work_bucket: String,
    /// Files at or above this size are uploaded with multipart.
    pub multipart_threshold_bytes: u64,
    /// Part size for multipart uploads (at least 5 MiB).
    pub part_size_bytes: u64,
    /// Seconds before an S3 call is abandoned.
    pub timeout_secs: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            access_key: Secret::new("reelfleet"),
            secret_key: Secret::new("reelfleet-secret"),
            upload_bucket: "uploads".into(),
            work_bucket: "reelfleet-work".into(),
            multipart_threshold_bytes: 16 * 1024 * 1024,
            part_size_bytes: 8 * 1024 * 1024,
            timeout_secs: 120,
        }
    }
}

/// The fleet's shared state store.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Database URL: `postgres://user:pass@host/db` for a fleet, or `sqlite:///path/state.db`
    /// for one machine (what `reelfleet dev` uses, in its data folder). Required by inference.
    pub url: Secret,
}

/// Message signing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningSettings {
    /// Shared HMAC-SHA256 key for envelope signatures (at least 16 characters).
    pub secret: Secret,
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self { secret: Secret::new("reelfleet-dev-signing-key-change-me") }
    }
}

/// Retry schedule for transient errors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all (first try included) before a message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub base_delay_ms: u64,
    /// Upper bound of a retry delay, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self { max_attempts: 5, base_delay_ms: 1_000, max_delay_ms: 60_000 }
    }
}

/// Stage runtime settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0 picks one).
    pub health_addr: String,
    /// Seconds in-flight work may take to finish after SIGTERM/SIGINT.
    pub grace_period_secs: u64,
    /// Seconds a single message may take in a stage before it is a transient failure.
    pub job_timeout_secs: u64,
    /// Seconds a stage's claim on a job lasts unless its holder renews it (every third of it);
    /// a claim whose worker died is taken over after this long.
    pub claim_lease_secs: u64,
    /// Folder for temporary files (default: the system's).
    pub scratch_dir: Option<String>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            health_addr: "0.0.0.0:9090".into(),
            grace_period_secs: 30,
            job_timeout_secs: 900,
            claim_lease_secs: 30,
            scratch_dir: None,
        }
    }
}

/// ffmpeg and ffprobe.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// ffmpeg binary.
    pub ffmpeg: String,
    /// ffprobe binary.
    pub ffprobe: String,
    /// Seconds before an ffprobe call is killed.
    pub probe_timeout_secs: u64,
    /// Seconds before an ffmpeg call is killed.
    pub ffmpeg_timeout_secs: u64,
    /// x264/x265 preset for every encode.
    pub preset: String,
    /// Threads per ffmpeg process (0: ffmpeg decides).
    pub threads: u32,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
            probe_timeout_secs: 30,
            ffmpeg_timeout_secs: 600,
            preset: "veryfast".into(),
            threads: 0,
        }
    }
}

/// Limits on uploaded videos, checked by ingest before anything is decoded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest accepted object, in bytes.
    pub max_bytes: u64,
    /// Longest accepted video, in seconds.
    pub max_duration_secs: f64,
    /// Widest accepted video, in pixels.
    pub max_width: u32,
    /// Tallest accepted video, in pixels.
    pub max_height: u32,
    /// Most streams accepted in one container.
    pub max_streams: usize,
    /// Most video frames accepted (duration times frame rate, or the declared count).
    pub max_frames: u64,
    /// Largest accepted prompt document, in bytes.
    pub max_prompt_bytes: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024 * 1024,
            max_duration_secs: 4.0 * 3600.0,
            max_width: 8192,
            max_height: 8192,
            max_streams: 16,
            max_frames: 4 * 3600 * 60,
            max_prompt_bytes: 64 * 1024,
        }
    }
}

/// Normalization and tier assignment.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessSettings {
    /// Longest side of the normalized video, in pixels.
    pub max_width: u32,
    /// Shortest side of the normalized video, in pixels.
    pub max_height: u32,
    /// Frame rate when the normalized video's short side is at least 1080.
    pub fps_hd: u32,
    /// Frame rate below 1080p.
    pub fps_sd: u32,
    /// x264 CRF of the normalized video.
    pub crf: u32,
    /// Keyframes extracted for inference.
    pub keyframes: u32,
    /// Complexity below this goes to the low tier.
    pub complexity_low_below: f64,
    /// Complexity at or above this goes to the high tier.
    pub complexity_high_from: f64,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        Self {
            max_width: 1920,
            max_height: 1080,
            fps_hd: 30,
            fps_sd: 24,
            crf: 23,
            keyframes: 4,
            complexity_low_below: 0.15,
            complexity_high_from: 0.45,
        }
    }
}

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
    /// USD the tier may spend per UTC day (unset: no cap).
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
        let tier = |m: &str, fallback: &str, batch_size| TierSettings {
            model: m.into(),
            fallback_model: Some(fallback.into()),
            batch_size,
            ..TierSettings::default()
        };
        Self {
            base_url: "https://api.holysheep.ai/v1".into(),
            api_key: Secret::new("sk-reelfleet-dev"),
            usage_url: None,
            connect_timeout_secs: 5,
            request_timeout_secs: 120,
            request_attempts: 4,
            cooldown_after_failures: 3,
            cooldown_secs: 60,
            tokens_per_image_estimate: 258,
            video_model: "holysheep-video-1".into(),
            video_usd_per_second: 0.05,
            low: tier("deepseek-v3.2", "gemini-2.5-flash", 100),
            medium: tier("gemini-2.5-flash", "deepseek-v3.2", 50),
            high: tier("gpt-4.1", "gemini-2.5-flash", 20),
            critical: tier("claude-sonnet-4.5", "gpt-4.1", 5),
            models: vec![
                model("deepseek-v3.2", 0.28, 0.42),
                model("gemini-2.5-flash", 0.30, 2.50),
                model("gpt-4.1", 2.00, 8.00),
                model("claude-sonnet-4.5", 3.00, 15.00),
            ],
        }
    }
}

/// Renditions, quality floor and CDN purge.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostprocessSettings {
    /// x264 CRF of the H.264 renditions.
    pub h264_crf: u32,
    /// x265 CRF of the H.265 rendition.
    pub h265_crf: u32,
    /// Minimum PSNR (dB) of every rendition against the normalized video.
    pub min_psnr_db: f64,
    /// Minimum SSIM of every rendition against the normalized video.
    pub min_ssim: f64,
    /// Frames in the thumbnail sprite (a 5-wide grid).
    pub sprite_frames: u32,
    /// URL that receives a POST with the job's output keys after completion.
    pub cdn_purge_url: Option<String>,
    /// Bearer token sent to the CDN purge URL.
    pub cdn_purge_token: Option<Secret>,
}

impl Default for PostprocessSettings {
    fn default() -> Self {
        Self {
            h264_crf: 23,
            h265_crf: 28,
            min_psnr_db: 30.0,
            min_ssim: 0.90,
            sprite_frames: 10,
            cdn_purge_url: None,
            cdn_purge_token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Settings::default();
        let text = format!("{s:?}");
        assert!(!text.contains("reelfleet-secret"), "{text}");
        assert!(!text.contains("guest:guest"));
    }

    #[test]
    fn toml_round_trips() {
        let mut s = Settings { namespace: "rt-test".into(), ..Default::default() };
        s.postprocess.cdn_purge_url = Some("http://cdn/purge".into());
        let text = s.to_toml();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let back = Settings::load(Some(&path)).unwrap();
        assert_eq!(back.namespace, "rt-test");
        assert_eq!(back.s3.secret_key.expose(), "reelfleet-secret");
        assert_eq!(back.inference.models, s.inference.models);
        assert_eq!(back.postprocess.cdn_purge_url.as_deref(), Some("http://cdn/purge"));
    }

    #[test]
    fn environment_overrides_the_file() {
        // Only this test sets these variables, and no other test reads them.
        std::env::set_var("REELFLEET_BROKER__PREFETCH", "7");
        std::env::set_var("REELFLEET_LIMITS__MAX_STREAMS", "3");
        std::env::set_var("REELFLEET_CONFIG", "/names/the/file/not/a/setting.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[broker]\nprefetch = 2\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        std::env::remove_var("REELFLEET_BROKER__PREFETCH");
        std::env::remove_var("REELFLEET_LIMITS__MAX_STREAMS");
        std::env::remove_var("REELFLEET_CONFIG");
        assert_eq!(s.broker.prefetch, 7);
        assert_eq!(s.limits.max_streams, 3);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[broker]\nprefetchh = 3\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("prefetchh"), "{err}");
    }

    #[test]
    fn a_tier_model_without_a_price_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[inference.models]]\nmodel = \"deepseek-v3.2\"\ninput_per_mtok = 0.28\noutput_per_mtok = 0.42\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("gemini-2.5-flash") && err.contains("no [[inference.models]] entry"), "{err}");
    }

    #[test]
    fn redacted_settings_hold_no_credential() {
        let s = Settings::default();
        let json = serde_json::to_string(&s.redacted()).unwrap();
        for secret in
            [&s.broker.url, &s.broker.management_url, &s.s3.secret_key, &s.signing.secret, &s.inference.api_key]
        {
            assert!(!json.contains(secret.expose()), "{json}");
        }
        assert!(json.contains("[redacted]"));
    }
}
