//! The AI provider simulator: an HTTP server that speaks the OpenAI
//! chat-completions format (with `usage`) and the HolySheep-style
//! `POST /v1/video/generate` (HMAC signature checked, video rendered by
//! ffmpeg), with configurable latency, error rate and 429 rate, and a usage
//! log (`GET /v1/usage`) that is the billing truth for tests.

use axum::{
    body::Body,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Behaviour of the simulator; changeable at run time with `POST /admin/config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulatorConfig {
    /// API key requests must carry (Bearer) and that keys the video signature.
    pub api_key: String,
    /// Shortest added latency, in milliseconds.
    pub latency_min_ms: u64,
    /// Longest added latency, in milliseconds.
    pub latency_max_ms: u64,
    /// Share of requests answered 500.
    pub error_rate: f64,
    /// Share of requests answered 429 with `Retry-After`, spread evenly (with
    /// 0.3, three requests in every ten), so even a short run meets them.
    pub rate_429: f64,
    /// `Retry-After` seconds on a 429.
    pub retry_after_secs: u64,
    /// Tokens billed per image input.
    pub tokens_per_image: u64,
    /// Largest clock skew accepted on signed requests, in seconds.
    pub max_skew_secs: i64,
    /// ffmpeg binary that renders generated videos.
    pub ffmpeg: String,
    /// Share of requests answered 500, per model (on top of `error_rate`).
    pub model_error_rates: BTreeMap<String, f64>,
    /// Requests per minute each model accepts before answering 429 with the
    /// seconds until the next slot in `Retry-After`.
    pub rate_limit_rpm: BTreeMap<String, u32>,
    /// Share of jobs left out of a batched answer (to exercise per-job retries).
    pub drop_job_rate: f64,
    /// Where generated videos are said to be (`<base>/videos/<id>.mp4`): another
    /// host, to check that clients do not send it their key. Default: the simulator.
    pub video_base_url: Option<String>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            api_key: "sk-reelfleet-dev".into(),
            latency_min_ms: 20,
            latency_max_ms: 80,
            error_rate: 0.0,
            rate_429: 0.0,
            retry_after_secs: 1,
            tokens_per_image: 258,
            max_skew_secs: 300,
            ffmpeg: "ffmpeg".into(),
            model_error_rates: BTreeMap::new(),
            rate_limit_rpm: BTreeMap::new(),
            drop_job_rate: 0.0,
            video_base_url: None,
        }
    }
}

/// One billed request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    /// The id the simulator gave its answer: the provider's request id.
    pub id: String,
    /// The model the request named, which it is billed as.
    pub model: String,
    /// `chat` or `video`.
    pub kind: String,
    /// Input tokens billed.
    pub prompt_tokens: u64,
    /// Output tokens billed.
    pub completion_tokens: u64,
    /// Images in the request.
    pub images: u64,
    /// Jobs packed into the request.
    #[serde(default)]
    pub jobs: u64,
    /// The client's `X-Request-Id`.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The jobs the request named (chat: its `job_id:` parts; video: `metadata.job_id`):
    /// the bill per job that a test holds the fleet's ledger against.
    #[serde(default)]
    pub job_ids: Vec<String>,
    /// When the request arrived, in milliseconds since the Unix epoch: what a
    /// test counts requests per minute from, as the provider sees them.
    #[serde(default)]
    pub at_ms: u64,
}

/// What the simulator refused, and whether clients kept to `Retry-After`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimulatorStats {
    /// 429 answers.
    pub rate_limited: u64,
    /// 500 answers.
    pub server_errors: u64,
    /// Requests that came back (same `X-Request-Id`) before their `Retry-After` had passed.
    pub early_retries: u64,
}

#[derive(Debug, Default)]
struct Traffic {
    stats: SimulatorStats,
    /// Requests that passed the per-model limits: the 429 schedule's clock.
    admitted: u64,
    not_before: HashMap<String, Instant>,
    accepted: HashMap<String, VecDeque<Instant>>,
}

#[derive(Clone)]
struct SimState {
    config: Arc<Mutex<SimulatorConfig>>,
    usage: Arc<Mutex<Vec<UsageRecord>>>,
    traffic: Arc<Mutex<Traffic>>,
    videos: PathBuf,
    base: String,
}

/// A running simulator.
#[derive(Debug)]
pub struct SimulatorHandle {
    /// The address it listens on (the port picked when 0 was asked for).
    pub addr: SocketAddr,
    /// Cancelling it stops the server.
    pub shutdown: CancellationToken,
    config: Arc<Mutex<SimulatorConfig>>,
    usage: Arc<Mutex<Vec<UsageRecord>>>,
    traffic: Arc<Mutex<Traffic>>,
    _videos: Arc<tempfile::TempDir>,
}

impl SimulatorHandle {
    /// `http://<addr>/v1`, the base URL clients use.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    /// Every billed request so far.
    pub fn usage(&self) -> Vec<UsageRecord> {
        self.usage.lock().expect("usage lock").clone()
    }
    /// Refusals and `Retry-After` compliance so far.
    pub fn stats(&self) -> SimulatorStats {
        self.traffic.lock().expect("traffic lock").stats.clone()
    }
    /// Changes its behaviour from the next request on (what `/admin/config` does over HTTP).
    pub fn configure(&self, f: impl FnOnce(&mut SimulatorConfig)) {
        f(&mut self.config.lock().expect("config lock"));
    }
}

/// Serves the simulator on `addr`.
pub async fn serve_simulator(addr: &str, config: SimulatorConfig) -> anyhow::Result<SimulatorHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let videos = Arc::new(tempfile::Builder::new().prefix("reelfleet-sim-").tempdir()?);
    let state = SimState {
        config: Arc::new(Mutex::new(config)),
        usage: Arc::new(Mutex::new(Vec::new())),
        traffic: Arc::new(Mutex::new(Traffic::default())),
        videos: videos.path().to_path_buf(),
        base: format!("http://{local}/v1"),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/video/generate", post(generate))
        .route("/v1/videos/{file}", get(video_file))
        .route("/v1/usage", get(usage))
        .route("/admin/stats", get(stats))
        .route("/admin/config", get(get_config).post(set_config))
        .with_state(state.clone());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    info!(addr = %local, "Provider simulator listening");
    Ok(SimulatorHandle {
        addr: local,
        shutdown,
        config: state.config,
        usage: state.usage,
        traffic: state.traffic,
        _videos: videos,
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": {"message": message, "type": "simulated"}}))).into_response()
}

/// Latency, then maybe a simulated failure: per-model rate limits, a share of
/// 429s spread evenly, random 500s. Also notes clients that retry before
/// `Retry-After`.
async fn weather(state: &SimState, model: &str, request_id: Option<&str>) -> Option<Response> {
    let cfg = state.config.lock().expect("config lock").clone();
    let (delay, roll) = {
        let mut rng = rand::rng();
        (rng.random_range(cfg.latency_min_ms..=cfg.latency_max_ms.max(cfg.latency_min_ms)), rng.random::<f64>())
    };
    let now = Instant::now();
    let limited = {
        let mut t = state.traffic.lock().expect("traffic lock");
        if let Some(id) = request_id {
            if t.not_before.get(id).is_some_and(|nb| *nb > now) {
                t.stats.early_retries += 1;
            }
        }
        let mut wait = None;
        if let Some(&rpm) = cfg.rate_limit_rpm.get(model) {
            let window = t.accepted.entry(model.to_string()).or_default();
            while window.front().is_some_and(|t0| now.duration_since(*t0) >= Duration::from_secs(60)) {
                window.pop_front();
            }
            if window.len() as u32 >= rpm.max(1) {
                let oldest = *window.front().expect("non-empty window");
                wait = Some((Duration::from_secs(60) - now.duration_since(oldest)).as_secs().max(1));
            } else {
                window.push_back(now);
            }
        }
        if wait.is_none() {
            t.admitted += 1;
            let due = |n: u64| (n as f64 * cfg.rate_429).floor();
            if due(t.admitted) > due(t.admitted - 1) {
                wait = Some(cfg.retry_after_secs);
            }
        }
        if let Some(secs) = wait {
            t.stats.rate_limited += 1;
            if let Some(id) = request_id {
                t.not_before.insert(id.to_string(), now + Duration::from_secs(secs));
            }
        }
        wait
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if let Some(secs) = limited {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        r.headers_mut().insert("retry-after", secs.to_string().parse().expect("header"));
        return Some(r);
    }
    let fail = cfg.error_rate + cfg.model_error_rates.get(model).copied().unwrap_or(0.0);
    if roll < fail || cfg.model_error_rates.get(model).is_some_and(|r| *r >= 1.0) {
        state.traffic.lock().expect("traffic lock").stats.server_errors += 1;
        return Some(error(StatusCode::INTERNAL_SERVER_ERROR, "simulated upstream failure"));
    }
    None
}

fn epoch_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

fn bearer_ok(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|v| v == key)
}

async fn chat(State(state): State<SimState>, headers: HeaderMap, Json(req): Json<serde_json::Value>) -> Response {
    let at_ms = epoch_ms();
    let key = state.config.lock().expect("config lock").api_key.clone();
    if !bearer_ok(&headers, &key) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let Some(model) = req["model"].as_str().map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(r) = weather(&state, &model, request_id.as_deref()).await {
        return r;
    }
    let Some(messages) = req["messages"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "messages is required");
    };
    let (per_image, drop_rate) = {
        let c = state.config.lock().expect("config lock");
        (c.tokens_per_image, c.drop_job_rate)
    };
    let (mut text_chars, mut images, mut image_bytes) = (0u64, 0u64, 0u64);
    let mut jobs: Vec<(String, u64)> = Vec::new();
    for m in messages {
        match &m["content"] {
            serde_json::Value::String(s) => text_chars += s.chars().count() as u64,
            serde_json::Value::Array(parts) => {
                for p in parts {
                    if let Some(t) = p["text"].as_str() {
                        text_chars += t.chars().count() as u64;
                        if let Some(rest) = t.strip_prefix("job_id: ") {
                            let id = rest.split_whitespace().next().unwrap_or_default().to_string();
                            jobs.push((id, 0));
                        }
                    }
                    if let Some(url) = p["image_url"]["url"].as_str() {
                        images += 1;
                        image_bytes += url.len() as u64;
                        if let Some(j) = jobs.last_mut() {
                            j.1 += url.len() as u64;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Providers count roughly four characters a token, and a fixed amount per image.
    let prompt_tokens = text_chars.div_ceil(4) + images * per_image;
    let tags = ["outdoor", "people", "motion", "text", "night", "animation", "sport", "nature"];
    let describe = |bytes: u64, n: u64| {
        let chosen: Vec<&str> =
            tags.iter().enumerate().filter(|(i, _)| (bytes >> i) & 1 == 1).map(|(_, t)| *t).take(4).collect();
        serde_json::json!({
            "summary": format!("{n} keyframes analyzed by {model}: {bytes} bytes of imagery"),
            "tags": if chosen.is_empty() { vec!["video"] } else { chosen },
            "safety": "safe",
        })
    };
    let content = if jobs.is_empty() {
        describe(image_bytes, images).to_string()
    } else {
        let mut rng = rand::rng();
        let results: Vec<serde_json::Value> = jobs
            .iter()
            .filter(|_| rng.random::<f64>() >= drop_rate)
            .map(|(id, bytes)| {
                let mut r = describe(*bytes, images / jobs.len() as u64);
                r["job_id"] = serde_json::Value::String(id.clone());
                r
            })
            .collect();
        serde_json::json!({ "results": results }).to_string()
    };
    let completion_tokens = (content.chars().count() as u64).div_ceil(4);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    state.usage.lock().expect("usage lock").push(UsageRecord {
        id: id.clone(),
        model: model.clone(),
        kind: "chat".into(),
        prompt_tokens,
        completion_tokens,
        images,
        jobs: jobs.len().max(1) as u64,
        request_id,
        job_ids: jobs.iter().map(|(id, _)| id.clone()).collect(),
        at_ms,
    });
    Json(serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

fn signature_ok(headers: &HeaderMap, key: &str, max_skew: i64) -> Result<(), &'static str> {
    let ts: i64 = headers
        .get("x-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or("missing X-Timestamp")?;
    if (chrono::Utc::now().timestamp() - ts).abs() > max_skew {
        return Err("X-Timestamp outside the accepted window");
    }
    let sig = headers
        .get("x-holysheep-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .ok_or("missing X-HolySheep-Signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{ts}:{key}").as_bytes());
    mac.verify_slice(&sig).map_err(|_| "signature does not match")
}

async fn generate(State(state): State<SimState>, headers: HeaderMap, Json(req): Json<serde_json::Value>) -> Response {
    let at_ms = epoch_ms();
    let cfg = state.config.lock().expect("config lock").clone();
    if !bearer_ok(&headers, &cfg.api_key) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    if let Err(why) = signature_ok(&headers, &cfg.api_key, cfg.max_skew_secs) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let model = req["model"].as_str().unwrap_or("holysheep-video-1").to_string();
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(r) = weather(&state, &model, request_id.as_deref()).await {
        return r;
    }
    let started = std::time::Instant::now();
    let duration = req["duration"].as_f64().unwrap_or(0.0);
    if !(duration > 0.0 && duration <= 60.0) {
        return error(StatusCode::BAD_REQUEST, "duration must be in (0, 60]");
    }
    let (w, h) = match req["resolution"].as_str() {
        Some("720p") => (1280, 720),
        Some("1080p") => (1920, 1080),
        Some("4k") => (3840, 2160),
        _ => return error(StatusCode::BAD_REQUEST, "resolution must be 720p, 1080p or 4k"),
    };
    let fps = req["fps"].as_u64().unwrap_or(24).clamp(1, 60);
    let id = format!("vid-{}", uuid::Uuid::new_v4().simple());
    let path = state.videos.join(format!("{id}.mp4"));
    let args: Vec<String> = vec![
        "-hide_banner".into(),
        "-nostdin".into(),
        "-y".into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={w}x{h}:rate={fps}:duration={duration}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:sample_rate=48000:duration={duration}"),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        "ultrafast".into(),
        "-pix_fmt".into(),
        "yuv420p".into(),
        "-c:a".into(),
        "aac".into(),
        "-shortest".into(),
        "-movflags".into(),
        "+faststart".into(),
        path.display().to_string(),
    ];
    let out = tokio::process::Command::new(&cfg.ffmpeg).args(&args).kill_on_drop(true).output().await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => return error(StatusCode::INTERNAL_SERVER_ERROR, &String::from_utf8_lossy(&o.stderr)),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
    // Video models bill per frame generated.
    let total_tokens = (duration * fps as f64).ceil() as u64 * 10;
    state.usage.lock().expect("usage lock").push(UsageRecord {
        id: id.clone(),
        model: model.clone(),
        kind: "video".into(),
        prompt_tokens: 0,
        completion_tokens: total_tokens,
        images: 0,
        jobs: 1,
        request_id,
        job_ids: req["metadata"]["job_id"].as_str().map(str::to_string).into_iter().collect(),
        at_ms,
    });
    Json(serde_json::json!({
        "id": id,
        "model": model,
        "data": {"url": format!("{}/videos/{id}.mp4", cfg.video_base_url.as_deref().unwrap_or(&state.base))},
        "usage": {"total_tokens": total_tokens},
        "processing_time_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response()
}

async fn video_file(State(state): State<SimState>, UrlPath(file): UrlPath<String>) -> Response {
    if !file.starts_with("vid-") || !file.ends_with(".mp4") || file.contains('/') || file.contains("..") {
        return error(StatusCode::NOT_FOUND, "no such video");
    }
    match tokio::fs::File::open(state.videos.join(&file)).await {
        Ok(f) => {
            let stream = tokio_util::io::ReaderStream::new(f);
            ([("content-type", "video/mp4")], Body::from_stream(stream)).into_response()
        }
        Err(_) => error(StatusCode::NOT_FOUND, "no such video"),
    }
}

async fn usage(State(state): State<SimState>) -> Json<Vec<UsageRecord>> {
    Json(state.usage.lock().expect("usage lock").clone())
}

async fn stats(State(state): State<SimState>) -> Json<SimulatorStats> {
    Json(state.traffic.lock().expect("traffic lock").stats.clone())
}

async fn get_config(State(state): State<SimState>) -> Json<SimulatorConfig> {
    Json(state.config.lock().expect("config lock").clone())
}

async fn set_config(State(state): State<SimState>, Json(cfg): Json<SimulatorConfig>) -> Json<SimulatorConfig> {
    *state.config.lock().expect("config lock") = cfg.clone();
    Json(cfg)
}
