//! The HTTP API: the router, its handlers, and how an accepted job is
//! recorded and published (signed for the queue it is addressed to, each
//! publish confirmed by the broker).
//!
//! Every `/v1/jobs` and `/v1/batches` request goes through the same steps:
//! body size (413), API key and signature (401), replay (401, unless the id
//! first came with this same `Idempotency-Key`, whose record decides), content type
//! (415), JSON (400), fields (422, nothing published), `Idempotency-Key`
//! (replay or 409), then the sources are resolved (an `s3://` object must
//! exist: 422 otherwise), every acceptance record is written, and only then
//! is anything published.

use crate::{
    accept::{AcceptError, Acceptor, Item},
    auth::{authenticate, token_matches, Client, Clients},
    error::{ApiError, FieldError},
    gcs::{parse_push, Notification},
    jobs::{check_idempotency_key, parse_job, JobSpec},
    records::{Idempotency, Sight},
};
use axum::{
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use chrono::Utc;
use prometheus::{IntCounterVec, Opts};
use reelfleet_core::{
    broker::Broker,
    envelope::{Envelope, JobKind, JobRequest},
    fleetstate::{window_acquire, FleetState},
    manifest::{JobManifest, ManifestStore},
    metrics::Metrics,
    settings::Settings,
    storage::{Storage, StorageError},
    topology::WorkQueue,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{net::SocketAddr, sync::Arc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Header naming the submitter's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Header set on an answer replayed for a known `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The intake's own metrics, served with the process's.
#[derive(Clone, Debug)]
pub struct IntakeMetrics {
    /// Requests by route and status.
    pub requests: IntCounterVec,
    /// Jobs accepted (published), by source kind: `s3`, `url`, `gcs`.
    pub jobs: IntCounterVec,
    /// Requests refused with 429, by client.
    pub limited: IntCounterVec,
}

impl IntakeMetrics {
    /// The intake's metrics, registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let requests = IntCounterVec::new(
            Opts::new("reelfleet_intake_requests_total", "Intake API requests, by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let jobs = IntCounterVec::new(
            Opts::new("reelfleet_intake_jobs_accepted_total", "Jobs the intake accepted and published, by source kind"),
            &["source"],
        )
        .expect("valid metric");
        let limited = IntCounterVec::new(
            Opts::new("reelfleet_intake_rate_limited_total", "Intake requests refused by a client's rate limit"),
            &["client"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(jobs.clone()),
            Box::new(limited.clone()),
        ] {
            // Registered once per registry; a second intake in one process shares the first's.
            let _ = metrics.register(c);
        }
        for s in ["s3", "url", "gcs"] {
            jobs.with_label_values(&[s]);
        }
        Self { requests, jobs, limited }
    }
}

/// The intake API of one process.
#[derive(Clone, Debug)]
pub struct Intake(Arc<Inner>);

struct Inner {
    settings: Arc<Settings>,
    clients: Clients,
    manifests: ManifestStore,
    acceptor: Acceptor,
    metrics: IntakeMetrics,
    /// The shared state database, connected at the first limited request.
    state: tokio::sync::OnceCell<FleetState>,
}

/// The window of the per-client rate limits.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("clients", &self.clients).finish_non_exhaustive()
    }
}

fn storage_error(e: StorageError) -> ApiError {
    warn!(error = %e, "Object store error");
    ApiError::unavailable(format!("the object store did not answer: {e}"))
}

fn accept_error(e: AcceptError) -> ApiError {
    match e {
        AcceptError::Storage(e) => storage_error(e),
        AcceptError::Broker(_) => ApiError::unavailable(e.to_string()),
    }
}

fn status_url(job_id: &str) -> String {
    format!("/v1/jobs/{job_id}")
}

impl Intake {
    /// The intake for `settings`; refuses settings without a usable client
    /// or signing key.
    pub fn new(settings: Arc<Settings>, storage: Storage, broker: Broker, metrics: &Metrics) -> anyhow::Result<Self> {
        let clients = Clients::from_settings(&settings.intake).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !clients.limited() || !settings.state.url.expose().trim().is_empty(),
            "an intake client has a rate limit, which every replica must count together: set state.url (postgres://... for a fleet, sqlite:///path/state.db on one machine)"
        );
        let acceptor = Acceptor::new(settings.clone(), storage.clone(), broker)?;
        Ok(Self(Arc::new(Inner {
            clients,
            manifests: ManifestStore::new(storage, settings.s3.work_bucket.clone()),
            acceptor,
            metrics: IntakeMetrics::new(metrics),
            state: tokio::sync::OnceCell::new(),
            settings,
        })))
    }

    /// The API's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/jobs", post(post_job))
            .route("/v1/jobs/{id}", get(get_job))
            .route("/v1/batches", post(post_batch))
            .route("/v1/gcs/push", post(gcs_push))
            .fallback(|| async { ApiError::not_found("no such endpoint") })
            .with_state(self.clone())
    }

    /// Serves the API on `addr` until `stop`, letting requests in progress
    /// finish; returns the bound address and the server's task.
    pub async fn serve(
        &self,
        addr: &str,
        stop: CancellationToken,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                warn!(error = %e, "Intake server stopped with an error");
            }
        });
        Ok((local, task))
    }

    fn count(&self, route: &str, response: &Response) {
        self.0.metrics.requests.with_label_values(&[route, response.status().as_str()]).inc();
    }

    async fn read_body(&self, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.0.settings.intake.max_body_bytes;
        axum::body::to_bytes(body, limit).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes"))
        })
    }

    fn tolerance(&self) -> i64 {
        self.0.settings.intake.tolerance_secs as i64
    }

    /// `POST /v1/jobs` and `POST /v1/batches`.
    async fn submit(&self, route: &str, headers: &HeaderMap, body: Body, batch: bool) -> Result<Response, ApiError> {
        let body = self.read_body(body).await?;
        let now = Utc::now().timestamp();
        let (client, webhook_id) = authenticate(&self.0.clients, headers, &body, now, self.tolerance())?;
        let key_header = headers.get(IDEMPOTENCY_HEADER).and_then(|v| v.to_str().ok());
        let sight = self.0.acceptor.records().sight(&client.id, webhook_id, key_header).await.map_err(storage_error)?;
        // A sender retries with the same webhook-id: when the id first came
        // with this very Idempotency-Key, the retry gets the stored answer
        // below and nothing is published twice. The header is not signed, so
        // any other key (or none) on a seen id is a replay.
        if sight == (Sight::Again { same_key: false }) {
            return Err(ApiError::unauthorized("replayed", format!("webhook-id {webhook_id:?} was already used")));
        }
        let json_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json",
            ));
        }
        let value: Value = reelfleet_core::json::parse_bounded(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not JSON: {e}")))?;
        let specs = if batch { self.parse_batch(&value)? } else { vec![parse_job(&value).map_err(single_invalid)?] };
        self.within_limits(client, specs.len()).await?;
        let key = match headers.get(IDEMPOTENCY_HEADER) {
            None => None,
            Some(v) => {
                let k = v.to_str().unwrap_or_default().to_string();
                check_idempotency_key(&k)
                    .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_idempotency_key", m))?;
                Some(k)
            }
        };
        let Some(key) = key else {
            let answer = self.accept_all(client, None, &specs, batch).await?;
            return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
        };
        let mut hash = Sha256::new();
        hash.update(route.as_bytes());
        hash.update(b"\n");
        hash.update(&body);
        let request_sha256 = hex::encode(hash.finalize());
        let etag =
            match self.0.acceptor.records().claim(&client.id, &key, &request_sha256).await.map_err(storage_error)? {
                Idempotency::Proceed { etag } => etag,
                Idempotency::Replay { status, response } => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
                    return Ok((status, [(REPLAYED_HEADER, "true")], Json(response)).into_response());
                }
                Idempotency::Mismatch => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request",
                    ))
                }
                Idempotency::InProgress => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_in_progress",
                        "a request with this Idempotency-Key is still being handled; retry shortly",
                    ))
                }
            };
        match self.accept_all(client, Some(&key), &specs, batch).await {
            Ok(answer) => {
                let status = StatusCode::ACCEPTED;
                if let Err(e) = self
                    .0
                    .acceptor
                    .records()
                    .finish(&client.id, &key, &request_sha256, etag, status.as_u16(), &answer)
                    .await
                {
                    // The jobs are published; a retry re-runs and gets the same job ids.
                    warn!(client = %client.id, error = %e, "Could not store the idempotent answer");
                }
                Ok((status, Json(answer)).into_response())
            }
            Err(e) => {
                if let Err(store) = self.0.acceptor.records().release(&client.id, &key).await {
                    warn!(client = %client.id, error = %store, "Could not release the Idempotency-Key");
                }
                Err(e)
            }
        }
    }

    /// Counts a request of `jobs` jobs against `client`'s limits, shared by
    /// every replica through the state database; 429 with `Retry-After`
    /// when a window is full (nothing counted then).
    async fn within_limits(&self, client: &Client, jobs: usize) -> Result<(), ApiError> {
        let (rpm, jpm) = (client.requests_per_minute, client.jobs_per_minute);
        if rpm == 0 && jpm == 0 {
            return Ok(());
        }
        if jpm > 0 && jobs > jpm as usize {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_over_limit",
                format!("{jobs} jobs in one request, above this client's {jpm} jobs per minute"),
            ));
        }
        let s = &self.0.settings;
        let state =
            self.0.state.get_or_try_init(|| FleetState::connect(s.state.url.expose(), &s.namespace)).await.map_err(
                |e| {
                    warn!(error = %e, "No shared state for the rate limits");
                    ApiError::unavailable(format!("the rate limits cannot be counted: {e}"))
                },
            )?;
        let key = format!("intake:{}", client.id);
        let wait = window_acquire(state, &key, rpm, jpm, jobs as i64, RATE_WINDOW).await.map_err(|e| {
            warn!(error = %e, "Rate limit not counted");
            ApiError::unavailable(format!("the rate limits cannot be counted: {e}"))
        })?;
        match wait {
            None => Ok(()),
            Some(wait) => {
                self.0.metrics.limited.with_label_values(&[&client.id]).inc();
                let secs = wait.as_secs() + 1;
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("this client's limit ({rpm} requests, {jpm} jobs per minute; 0: none) is reached; retry in {secs} s"),
                );
                e.retry_after = Some(secs);
                Err(e)
            }
        }
    }

    fn parse_batch(&self, value: &Value) -> Result<Vec<JobSpec>, ApiError> {
        let max = self.0.settings.intake.max_batch;
        let Some(items) = value.get("jobs").and_then(Value::as_array) else {
            return Err(ApiError::invalid(FieldError::new("jobs", "must be an array of jobs")));
        };
        if items.is_empty() || items.len() > max {
            return Err(ApiError::invalid(FieldError::new("jobs", format!("must hold 1 to {max} jobs"))));
        }
        if let Some(other) = value.as_object().and_then(|o| o.keys().find(|k| *k != "jobs")) {
            return Err(ApiError::invalid(FieldError::new(other.clone(), "unknown field")));
        }
        let mut specs = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match parse_job(item) {
                Ok(spec) => specs.push(spec),
                Err(errs) => errors.extend(errs.into_iter().map(|e| FieldError { index: Some(i), ..e })),
            }
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(batch_invalid(errors))
        }
    }

    /// Resolves every job, then writes every acceptance record, then
    /// publishes every envelope; returns the 202 answer.
    async fn accept_all(
        &self,
        client: &Client,
        key: Option<&str>,
        specs: &[JobSpec],
        batch: bool,
    ) -> Result<Value, ApiError> {
        // A batch item's URL job id uses `<key>#<i>`, and its refusal carries its index.
        let items = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Item {
                spec,
                key: key.map(|k| if batch { format!("{k}#{i}") } else { k.to_string() }),
                index: batch.then_some(i),
            })
            .collect();
        let acceptor = &self.0.acceptor;
        let planned = acceptor
            .plan_all(&client.id, "intake", key, items)
            .await
            .map_err(accept_error)?
            .map_err(|errors| if batch { batch_invalid(errors) } else { single_invalid(errors) })?;
        for p in &planned {
            acceptor.record(&client.id, &p.envelope, p.queue).await.map_err(accept_error)?;
        }
        for p in &planned {
            acceptor.publish(&p.envelope, p.queue).await.map_err(accept_error)?;
            self.0.metrics.jobs.with_label_values(&[p.kind]).inc();
            info!(client = %client.id, job_id = %p.envelope.job_id, queue = %p.queue, "Job accepted");
        }
        let jobs: Vec<Value> = planned
            .iter()
            .map(|p| json!({"job_id": p.envelope.job_id, "status_url": status_url(&p.envelope.job_id)}))
            .collect();
        if batch {
            Ok(json!({"batch_id": uuid::Uuid::new_v4().simple().to_string(), "jobs": jobs}))
        } else {
            Ok(jobs.into_iter().next().unwrap_or_default())
        }
    }

    /// `GET /v1/jobs/{id}`.
    async fn job(&self, id: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
        let (client, _) = authenticate(&self.0.clients, headers, b"", Utc::now().timestamp(), self.tolerance())?;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ApiError::not_found(format!("no job {id:?}")));
        }
        // Another client's job is as absent as a job that does not exist:
        // its id, source and metadata are that client's business.
        if !self.0.acceptor.records().granted(&client.id, id).await.map_err(storage_error)? {
            return Err(ApiError::not_found(format!("no job {id:?}")));
        }
        if let Some(m) = self.0.manifests.load(id).await.map_err(storage_error)? {
            return Ok(Json(manifest_view(&m)).into_response());
        }
        match self.0.acceptor.records().acceptance(id).await.map_err(storage_error)? {
            Some(a) => Ok(Json(json!({
                "job_id": a.job_id,
                "status": "accepted",
                "accepted_at": a.accepted_at,
                "source": a.source,
                "priority": a.priority,
                "quality": a.quality,
                "request": a.request,
            }))
            .into_response()),
            None => Err(ApiError::not_found(format!("no job {id:?}"))),
        }
    }

    /// `POST /v1/gcs/push?token=...`.
    async fn gcs(&self, query: Option<String>, body: Body) -> Result<Response, ApiError> {
        let Some(expected) = self.0.settings.intake.gcs_verification_token.as_ref().filter(|t| !t.expose().is_empty())
        else {
            return Err(ApiError::not_found("no such endpoint"));
        };
        let given = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !token_matches(&given, expected.expose()) {
            return Err(ApiError::unauthorized("bad_token", "the push token is missing or wrong"));
        }
        let body = self.read_body(body).await?;
        let source = match parse_push(&body) {
            Ok(Notification::Finalized(source)) => source,
            Ok(Notification::Ignored(event)) => {
                info!(event = %event, "Cloud Storage notification ignored");
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Err(why) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_push", why)),
        };
        if !self.0.settings.s3.accepts(&source.bucket) {
            return Err(ApiError::invalid(FieldError::new(
                "message.attributes.bucketId",
                format!("bucket {:?} is not an upload bucket (s3.upload_bucket, s3.accepted_buckets)", source.bucket),
            )));
        }
        let mut envelope = Envelope::new(JobKind::Analyze, source);
        envelope.request = Some(JobRequest { via: "gcs".into(), ..Default::default() });
        let acceptor = &self.0.acceptor;
        acceptor.record("gcs", &envelope, WorkQueue::Ingest).await.map_err(accept_error)?;
        acceptor.publish(&envelope, WorkQueue::Ingest).await.map_err(accept_error)?;
        self.0.metrics.jobs.with_label_values(&["gcs"]).inc();
        info!(job_id = %envelope.job_id, bucket = %envelope.source.bucket, key = %envelope.source.key, "Cloud Storage object accepted");
        let id = envelope.job_id;
        Ok((StatusCode::ACCEPTED, Json(json!({"job_id": id, "status_url": status_url(&id)}))).into_response())
    }
}

fn single_invalid(errors: Vec<FieldError>) -> ApiError {
    let mut e = ApiError::invalid(errors.first().cloned().unwrap_or_else(|| FieldError::new("", "invalid job")));
    e.items = errors;
    e
}

fn batch_invalid(errors: Vec<FieldError>) -> ApiError {
    let listed: Vec<String> =
        errors.iter().map(|e| format!("jobs[{}].{}: {}", e.index.unwrap_or(0), e.field, e.message)).collect();
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_batch",
        message: format!("nothing was published: {}", listed.join("; ")),
        field: None,
        items: errors,
        retry_after: None,
    }
}

/// What `GET /v1/jobs/{id}` shows of a manifest.
fn manifest_view(m: &JobManifest) -> Value {
    json!({
        "job_id": m.job_id,
        "status": m.status,
        "kind": m.kind,
        "tier": m.tier,
        "priority": m.priority,
        "quality": m.quality,
        "source": m.source,
        "stages": m.stages,
        "outputs": m.outputs,
        "error": m.error,
        "cost_usd": m.cost_usd(),
        "request": m.request,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

async fn post_job(State(app): State<Intake>, headers: HeaderMap, body: Body) -> Response {
    let route = "POST /v1/jobs";
    let response = app.submit(route, &headers, body, false).await.unwrap_or_else(IntoResponse::into_response);
    app.count(route, &response);
    response
}

async fn post_batch(State(app): State<Intake>, headers: HeaderMap, body: Body) -> Response {
    let route = "POST /v1/batches";
    let response = app.submit(route, &headers, body, true).await.unwrap_or_else(IntoResponse::into_response);
    app.count(route, &response);
    response
}

async fn get_job(State(app): State<Intake>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let response = app.job(&id, &headers).await.unwrap_or_else(IntoResponse::into_response);
    app.count("GET /v1/jobs/{id}", &response);
    response
}

async fn gcs_push(State(app): State<Intake>, RawQuery(query): RawQuery, body: Body) -> Response {
    let response = app.gcs(query, body).await.unwrap_or_else(IntoResponse::into_response);
    app.count("POST /v1/gcs/push", &response);
    response
}
