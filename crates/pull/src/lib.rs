//! reelfleet-pull: the URL pull stage. It consumes `<ns>.pull` (signed
//! envelopes whose `request.origin_url` is an http(s) URL and whose `source`
//! is the planned object `pulled/<job_id>/<name>` in the upload bucket),
//! fetches the URL through the SSRF guard ([`reelfleet_core::netguard`]),
//! streams the body into the planned object by multipart upload, and hands
//! the same envelope (size and ETag filled in) to ingest, which validates
//! the video as it does any upload.
//!
//! A refused pull (address, redirect, size, content, HTTP status) fails
//! permanently, a network failure, 5xx, 408, 429 or timeout is retried; the
//! runtime dead-letters the message and records the failed manifest
//! (stage `pull`, the code below), which `reelfleet status` shows.
//!
//! - this file: the stage and its failure codes.
//! - [`sniff`]: the video containers recognised by their first bytes.
//! - [`upload`]: the multipart upload a body is streamed into.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod sniff;
pub mod upload;

use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec, Opts};
use reelfleet_core::{
    envelope::Envelope,
    error::StageError,
    manifest::ManifestStore,
    metrics::Metrics,
    netguard::{parse_cidrs, redacted, GuardError, GuardLimits, NetGuard},
    runtime::{Dispatch, Input, Message, Stage},
    settings::{Settings, PULLED_PREFIX},
    storage::Storage,
    topology::WorkQueue,
};
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};
use upload::MultipartSink;

/// Failure codes of a pull, as written in the manifest and counted in
/// `reelfleet_pulls_total`.
pub mod codes {
    /// The URL or an address it (or a redirect) leads to is refused.
    pub const SSRF_REFUSED: &str = "ssrf_refused";
    /// Larger than `limits.max_bytes` (announced or streamed).
    pub const TOO_LARGE: &str = "too_large";
    /// The first bytes are no video container.
    pub const NOT_VIDEO: &str = "not_video";
    /// The server answered other than 2xx.
    pub const HTTP_STATUS: &str = "http_status";
    /// The connect or total time cap was reached.
    pub const TIMEOUT: &str = "timeout";
    /// Resolving, connecting or reading failed.
    pub const NETWORK: &str = "network";
    /// The envelope does not describe a pull.
    pub const BAD_INPUT: &str = "bad_input";
}

/// The pull stage's own metrics, served with the worker's.
#[derive(Clone, Debug)]
pub struct PullMetrics {
    /// Body bytes streamed into the object store.
    pub bytes: IntCounter,
    /// Pulls by outcome (`ok` or a failure code).
    pub pulls: IntCounterVec,
}

impl PullMetrics {
    /// The metrics, registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let bytes = IntCounter::with_opts(Opts::new(
            "reelfleet_pull_bytes_total",
            "Bytes pulled from source URLs into the upload bucket",
        ))
        .expect("valid metric");
        let pulls = IntCounterVec::new(
            Opts::new("reelfleet_pulls_total", "URL pulls, by outcome (ok or the failure code)"),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [Box::new(bytes.clone()) as Box<dyn prometheus::core::Collector>, Box::new(pulls.clone())] {
            if let Err(e) = metrics.register(c) {
                warn!(error = %e, "Pull metrics not registered");
            }
        }
        for outcome in
            ["ok", codes::SSRF_REFUSED, codes::TOO_LARGE, codes::NOT_VIDEO, codes::HTTP_STATUS, codes::TIMEOUT]
        {
            pulls.with_label_values(&[outcome]);
        }
        Self { bytes, pulls }
    }
}

/// The pull stage.
#[derive(Clone, Debug)]
pub struct Pull {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    guard: NetGuard,
    metrics: PullMetrics,
}

/// What a pull stored.
#[derive(Clone, Debug)]
struct Pulled {
    size: u64,
    etag: Option<String>,
}

impl Pull {
    /// The stage for `settings`; fails on an unusable `pull.allow_cidrs`.
    pub fn new(settings: Arc<Settings>, storage: Storage, metrics: &Metrics) -> Result<Self, String> {
        let p = &settings.pull;
        let guard = NetGuard::new(
            GuardLimits {
                allow: parse_cidrs(&p.allow_cidrs)?,
                max_redirects: p.max_redirects,
                connect_timeout: Duration::from_secs(p.connect_timeout_secs),
                total_timeout: Duration::from_secs(p.total_timeout_secs),
            },
            concat!("reelfleet-pull/", env!("CARGO_PKG_VERSION")),
        );
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        Ok(Self { settings, storage, manifests, guard, metrics: PullMetrics::new(metrics) })
    }

    /// The URL to pull and a check that the envelope plans the object where
    /// pulls go (`pulled/<job_id>/` in the upload bucket), nowhere else.
    fn plan(&self, env: &Envelope) -> Result<String, StageError> {
        let bad = |why: String| StageError::permanent(codes::BAD_INPUT, why);
        let url = env
            .request
            .as_ref()
            .and_then(|r| r.origin_url.clone())
            .ok_or_else(|| bad("the envelope has no request.origin_url to pull".into()))?;
        let prefix = format!("{PULLED_PREFIX}{}/", env.job_id);
        if env.source.bucket != self.settings.s3.upload_bucket
            || !env.source.key.starts_with(&prefix)
            || env.source.key.len() == prefix.len()
        {
            return Err(bad(format!(
                "a pull must land under s3://{}/{prefix}, not s3://{}/{}",
                self.settings.s3.upload_bucket, env.source.bucket, env.source.key
            )));
        }
        Ok(url)
    }

    /// Fetches `url` into the envelope's object.
    async fn pull(&self, env: &Envelope, url: &str) -> Result<Pulled, StageError> {
        let max_bytes = self.settings.limits.max_bytes;
        let (mut response, final_url) = self.guard.send(reqwest::Method::GET, url, |r| r).await.map_err(guard_error)?;
        let status = response.status();
        if !status.is_success() {
            let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
            let why = format!("{} answered HTTP {status}", redacted(&final_url));
            return Err(if transient {
                StageError::transient(codes::HTTP_STATUS, why)
            } else {
                StageError::permanent(codes::HTTP_STATUS, why)
            });
        }
        if let Some(len) = response.content_length().filter(|l| *l > max_bytes) {
            return Err(too_large(format!("the server announces {len} bytes")));
        }
        let mut head = Vec::with_capacity(sniff::SNIFF_BYTES);
        while head.len() < sniff::SNIFF_BYTES {
            match response.chunk().await.map_err(read_error)? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => break,
            }
        }
        let container = sniff::sniff(&head).ok_or_else(|| {
            let shown: String = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            StageError::permanent(
                codes::NOT_VIDEO,
                format!(
                    "the body starts with {shown}, no video container (ISO-BMFF, QuickTime, Matroska/WebM, MPEG-TS, AVI, FLV); Content-Type said {:?}",
                    response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
                ),
            )
        })?;
        if head.len() as u64 > max_bytes {
            return Err(too_large(format!("more than {max_bytes} bytes")));
        }
        let part_size = usize::try_from(self.settings.pull.part_size_bytes).unwrap_or(8 * 1024 * 1024);
        let mut sink = MultipartSink::start(
            self.storage.client().clone(),
            &env.source.bucket,
            &env.source.key,
            container.mime(),
            part_size,
        )
        .await?;
        let streamed = async {
            sink.write(&head).await?;
            while let Some(chunk) = response.chunk().await.map_err(read_error)? {
                if sink.written() + chunk.len() as u64 > max_bytes {
                    return Err(too_large(format!("the body goes past {max_bytes} bytes")));
                }
                sink.write(&chunk).await?;
                self.metrics.bytes.inc_by(chunk.len() as u64);
            }
            Ok(())
        }
        .await;
        self.metrics.bytes.inc_by(head.len() as u64);
        if let Err(e) = streamed {
            sink.abort().await;
            return Err(e);
        }
        let size = sink.written();
        let etag = sink.finish().await?;
        Ok(Pulled { size, etag })
    }
}

fn too_large(what: String) -> StageError {
    StageError::permanent(codes::TOO_LARGE, format!("{what}, above limits.max_bytes"))
}

fn read_error(e: reqwest::Error) -> StageError {
    let timed_out = e.is_timeout();
    let why = format!("reading the body: {e}");
    if timed_out {
        StageError::transient(codes::TIMEOUT, why)
    } else {
        StageError::transient(codes::NETWORK, why)
    }
}

fn guard_error(e: GuardError) -> StageError {
    match &e {
        _ if e.is_refusal() => StageError::permanent(codes::SSRF_REFUSED, e),
        GuardError::Timeout(_) => StageError::transient(codes::TIMEOUT, e),
        _ => StageError::transient(codes::NETWORK, e),
    }
}

#[async_trait]
impl Stage for Pull {
    fn name(&self) -> &'static str {
        "pull"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        vec![WorkQueue::Pull]
    }

    fn creates_manifest_on_failure(&self) -> bool {
        true
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Envelope(env) = msg.input else {
            return Err(StageError::permanent(codes::BAD_INPUT, "the pull queue takes signed envelopes only"));
        };
        let url = self.plan(&env)?;
        if self.manifests.load(&env.job_id).await?.is_some() {
            // Ingest admitted it (or it failed already): this is a copy of a message already handled.
            info!("Job already has a manifest; pull message dropped");
            return Ok(Vec::new());
        }
        let shown = url::Url::parse(&url).map(|u| redacted(&u)).unwrap_or_default();
        info!(url = %shown, key = %env.source.key, "Pulling");
        let started = tokio::time::Instant::now();
        match self.pull(&env, &url).await {
            Ok(pulled) => {
                self.metrics.pulls.with_label_values(&["ok"]).inc();
                let secs = started.elapsed().as_secs_f64();
                info!(bytes = pulled.size, seconds = secs, "Pulled");
                let mut next = env.forward(Vec::new());
                next.source.size = pulled.size;
                next.source.etag = pulled.etag;
                Ok(vec![Dispatch::Next { queue: WorkQueue::Ingest, envelope: next }])
            }
            Err(e) => {
                self.metrics.pulls.with_label_values(&[e.code]).inc();
                Err(e)
            }
        }
    }
}
