//! Provider clients over HTTP: OpenAI-compatible chat completions with image
//! inputs, and HolySheep-style signed video generation.

use hmac::{Hmac, Mac};
use reelfleet_core::{error::StageError, manifest::PromptDocument, settings::InferenceSettings};
use sha2::Sha256;
use std::{path::Path, time::Duration};
use tokio::io::AsyncWriteExt;

/// Provider failures, classified for the runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// 429, 5xx, timeouts, connection errors.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// 429 with the provider's `Retry-After`.
    #[error("provider rate limit: HTTP 429, retry after {0:?}")]
    RateLimited(Duration),
    /// 4xx other than 429, or an answer that cannot be used.
    #[error("provider refused the request: {0}")]
    Refused(String),
    /// reqwest could not build the HTTP client (its TLS back end failed to load).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl From<ProviderError> for StageError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Unavailable(_) | ProviderError::RateLimited(_) => StageError::transient("provider", e),
            _ => StageError::permanent("provider", e),
        }
    }
}

/// A raw chat completion.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// The provider's id of the request (what its usage log is keyed by); `None` when it gave none.
    pub id: Option<String>,
    /// The first choice's message text, not yet parsed.
    pub content: String,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
}

/// The provider's answer to a video request: what it billed and where the video is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VideoResult {
    /// The provider's id of the request (what its usage log is keyed by).
    pub id: String,
    /// Where to download the video: https, or http on loopback only (checked before the download).
    pub url: String,
    /// Tokens billed for the video, all priced as output tokens.
    pub total_tokens: u64,
    /// How long the provider says it worked on the video, in milliseconds.
    pub processing_time_ms: u64,
}

/// HTTP client for the configured gateway.
#[derive(Clone)]
pub struct Provider {
    http: reqwest::Client,
    base_url: String,
    api_key: reelfleet_core::settings::Secret,
    max_video_bytes: u64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// `X-HolySheep-Signature`: hex HMAC-SHA256 keyed by the API key over `"{timestamp}:{api_key}"`.
pub fn sign_video_request(api_key: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(api_key.as_bytes()).expect("HMAC accepts any key length");
    mac.update(format!("{timestamp}:{api_key}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

fn classify_status(status: reqwest::StatusCode, body: &str) -> ProviderError {
    let text: String = body.chars().take(300).collect();
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        ProviderError::Unavailable(format!("HTTP {status}: {text}"))
    } else {
        ProviderError::Refused(format!("HTTP {status}: {text}"))
    }
}

fn transport(e: reqwest::Error) -> ProviderError {
    ProviderError::Unavailable(e.to_string())
}

impl Provider {
    /// A client for `settings`, with connect and total timeouts.
    pub fn new(settings: &InferenceSettings) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .build()
            .map_err(|e| ProviderError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            api_key: settings.api_key.clone(),
            max_video_bytes: settings.max_video_bytes,
        })
    }

    /// One chat completion request; `request_id` stays the same across retries
    /// of the same request (`X-Request-Id`).
    pub async fn chat(&self, body: &serde_json::Value, request_id: &str) -> Result<ChatResponse, ProviderError> {
        let resp = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .bearer_auth(self.api_key.expose())
            .header("X-Request-Id", request_id)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if status.as_u16() == 429 {
            if let Some(wait) = retry_after(resp.headers()) {
                return Err(ProviderError::RateLimited(wait));
            }
        }
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(classify_status(status, &text));
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ProviderError::Refused(format!("invalid JSON response: {e}")))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| ProviderError::Refused("response has no message content".into()))?
            .to_string();
        let usage = &v["usage"];
        Ok(ChatResponse {
            id: v["id"].as_str().map(str::to_string),
            content,
            prompt_tokens: usage["prompt_tokens"]
                .as_u64()
                .ok_or_else(|| ProviderError::Refused("response has no usage".into()))?,
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        })
    }

    /// Asks for a video for `doc`; `request_id` stays the same across
    /// retries of the same request (`X-Request-Id`). The answer is billed:
    /// record it before downloading.
    pub async fn generate_video(
        &self,
        model: &str,
        doc: &PromptDocument,
        job_id: &str,
        request_id: &str,
    ) -> Result<VideoResult, ProviderError> {
        let ts = chrono::Utc::now().timestamp();
        let key = self.api_key.expose();
        let fps = if matches!(doc.resolution, reelfleet_core::envelope::Quality::P720) { 24 } else { 30 };
        let body = serde_json::json!({
            "model": model,
            "prompt": doc.prompt,
            "duration": doc.duration_seconds,
            "resolution": doc.resolution.as_str(),
            "fps": fps,
            "quality_preset": if doc.priority >= 4 { "high" } else { "standard" },
            "metadata": {"job_id": job_id},
        });
        let resp = self
            .http
            .post(format!("{}/video/generate", self.base_url))
            .bearer_auth(key)
            .header("X-Timestamp", ts.to_string())
            .header("X-HolySheep-Signature", sign_video_request(key, ts))
            .header("X-Request-Id", request_id)
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if status.as_u16() == 429 {
            if let Some(wait) = retry_after(resp.headers()) {
                return Err(ProviderError::RateLimited(wait));
            }
        }
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(classify_status(status, &text));
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ProviderError::Refused(format!("invalid JSON response: {e}")))?;
        let url = v["data"]["url"].as_str().ok_or_else(|| ProviderError::Refused("response has no data.url".into()))?;
        Ok(VideoResult {
            id: v["id"].as_str().unwrap_or(request_id).to_string(),
            url: url.to_string(),
            total_tokens: v["usage"]["total_tokens"].as_u64().unwrap_or(0),
            processing_time_ms: v["processing_time_ms"].as_u64().unwrap_or(0),
        })
    }

    /// Streams a generated video into `dest`: https only (http on loopback, for
    /// the simulator), at most `inference.max_video_bytes`, and the API key only
    /// to the provider's own origin, never to whatever host the answer names.
    pub async fn download_video(&self, url: &str, dest: &Path) -> Result<(), ProviderError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ProviderError::Refused(format!("generated video URL {url:?}: {e}")))?;
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if !(parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback)) {
            return Err(ProviderError::Refused(format!("generated video URL {url:?} is not https")));
        }
        let own_origin = reqwest::Url::parse(&self.base_url).is_ok_and(|base| base.origin() == parsed.origin());
        let mut req = self.http.get(parsed);
        if own_origin {
            req = req.bearer_auth(self.api_key.expose());
        }
        let mut download = req.send().await.map_err(transport)?;
        if !download.status().is_success() {
            let st = download.status();
            return Err(classify_status(st, &download.text().await.unwrap_or_default()));
        }
        let cap = self.max_video_bytes;
        let too_large =
            |n: u64| ProviderError::Refused(format!("generated video is larger than {cap} bytes ({n} or more)"));
        if let Some(n) = download.content_length().filter(|n| *n > cap) {
            return Err(too_large(n));
        }
        let mut file = tokio::fs::File::create(dest).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let mut written = 0u64;
        while let Some(chunk) = download.chunk().await.map_err(transport)? {
            written += chunk.len() as u64;
            if written > cap {
                return Err(too_large(written));
            }
            file.write_all(&chunk).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        }
        file.flush().await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(())
    }
}
