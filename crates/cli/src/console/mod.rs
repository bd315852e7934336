//! The web console (`reelfleet console`; `reelfleet dev` serves it too):
//! server-rendered pages over the job index, the broker and the object
//! store, for people who would otherwise need a shell on the cluster.
//!
//! Layout:
//! - this file: [`Console`] (what every page reads from), the router, the
//!   security headers, login and logout.
//! - [`auth`]: passwords, the signed session cookie, CSRF, the cross-site check.
//! - `layout.rs`: the page frame (nav, logout form), error pages, the static CSS and JS.
//! - `overview.rs`: queues, replicas KEDA would ask for, jobs per status, cost per tier.
//! - `jobs.rs`: the job listing (filters, pages, live rows) and one job's page.
//! - `dead_letters.rs`: list, show, replay and purge, a dry run first.
//! - `media.rs`: a job's outputs streamed from S3, honouring `Range`.
//!
//! No inline script or style anywhere: the CSP forbids them.

pub mod auth;
mod dead_letters;
mod jobs;
mod layout;
mod media;
mod overview;

use anyhow::Context;
use auth::{Keys, Session, User};
use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use layout::Failure;
use reelfleet_core::{
    broker::Broker,
    fleetstate::{window_acquire, FleetState},
    manifest::ManifestStore,
    settings::{ConsoleAccount, Settings},
    storage::Storage,
};
use reelfleet_index::JobIndex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Everything the pages read from; cheap to clone.
#[derive(Clone, Debug)]
pub struct Console(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: Arc<Settings>,
    accounts: Vec<ConsoleAccount>,
    /// A hash no password matches, checked for unknown names.
    decoy: String,
    /// Password checks running at once (argon2 takes ~19 MiB and a core
    /// for tens of ms each): at most one per core.
    checks: tokio::sync::Semaphore,
    /// One dead-letter read or action at a time (see `dead_letters::read`).
    dead_letters: tokio::sync::Mutex<()>,
    keys: Keys,
    index: JobIndex,
    state: FleetState,
    storage: Storage,
    manifests: ManifestStore,
    broker: Broker,
    chart: crate::scale::ChartScaling,
    /// The previous depth of each queue, for a rate when the management API is not there.
    samples: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Console {
    /// Checks the settings (accounts, session key, `index.url`, `state.url`)
    /// and connects to what the pages read.
    pub async fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        let accounts = settings.console.check().map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            !settings.state.url.expose().is_empty(),
            "state.url is not set: the console counts login attempts there, for every replica, and reads the tiers' spend"
        );
        let keys = Keys::from_hex(settings.console.session_key.expose())?;
        let index = JobIndex::connect(settings.index.url.expose(), &settings.namespace).await?;
        let state = FleetState::connect(settings.state.url.expose(), &settings.namespace).await?;
        let storage = Storage::new(&settings.s3);
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let broker = Broker::new(&settings.broker, "reelfleet-console")?;
        let chart = crate::scale::ChartScaling::load(None)?;
        let decoy = auth::hash_password(&auth::generate_password())?;
        Ok(Self(Arc::new(Inner {
            settings,
            accounts,
            decoy,
            checks: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            dead_letters: tokio::sync::Mutex::new(()),
            keys,
            index,
            state,
            storage,
            manifests,
            broker,
            chart,
            samples: Mutex::new(HashMap::new()),
        })))
    }

    /// The routes, behind the security headers.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(overview::page))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/jobs", get(jobs::list))
            .route("/jobs/rows", get(jobs::rows))
            .route("/jobs/{id}", get(jobs::job))
            .route("/dead-letters", get(dead_letters::list).post(dead_letters::act))
            .route("/dead-letters/{id}", get(dead_letters::show))
            .route("/media/{job}/{*path}", get(media::serve))
            .route("/static/console.css", get(layout::css))
            .route("/static/console.js", get(layout::js))
            .route("/healthz", get(|| async { "ok" }))
            .layer(middleware::from_fn(security_headers))
            .with_state(self.clone())
    }

    /// Serves on `addr` until `stop` is cancelled.
    pub async fn serve(
        &self,
        addr: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                warn!(error = %e, "Console server stopped with an error");
            }
        });
        Ok((local, task))
    }

    fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The logged-in account of a request, if its cookie is good and the account still exists.
    fn user(&self, headers: &HeaderMap) -> Option<User> {
        let value = auth::cookie(headers, auth::COOKIE)?;
        let session = self.0.keys.open(&value, chrono::Utc::now().timestamp())?;
        let account = self.0.accounts.iter().find(|a| a.name == session.user)?;
        Some(User { name: account.name.clone(), role: account.role, csrf: self.0.keys.csrf(&session) })
    }

    /// The logged-in account, or a redirect to the login page.
    fn require(&self, headers: &HeaderMap) -> Result<User, Box<Response>> {
        self.user(headers).ok_or_else(|| Box::new(Redirect::to("/login").into_response()))
    }

    /// The account of a state-changing request whose form is `form`: same
    /// origin, logged in, carrying the session's CSRF token.
    fn require_post(&self, headers: &HeaderMap, form: &[(String, String)]) -> Result<User, Box<Response>> {
        if !auth::same_origin(headers) {
            return Err(Failure::new(StatusCode::FORBIDDEN, "Cross-site request refused.").into_response().into());
        }
        let value = auth::cookie(headers, auth::COOKIE);
        let now = chrono::Utc::now().timestamp();
        let session: Option<Session> = value.and_then(|v| self.0.keys.open(&v, now));
        let Some(session) = session else {
            return Err(Failure::new(StatusCode::UNAUTHORIZED, "Log in first.").into_response().into());
        };
        let token = field(form, "csrf").unwrap_or_default();
        if !self.0.keys.csrf_matches(&session, token) {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            )
            .into_response()
            .into());
        }
        self.user(headers)
            .ok_or_else(|| Box::new(Failure::new(StatusCode::UNAUTHORIZED, "Log in first.").into_response()))
    }
}

/// The pairs of a URL-encoded form or query string.
fn parse_form(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// The first value of `name` in a form.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Adds the security headers to every response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn login_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    if console.user(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    layout::login(None).into_response()
}

async fn login(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    if !auth::same_origin(&headers) {
        return Failure::new(StatusCode::FORBIDDEN, "Cross-site request refused.").into_response();
    }
    let form = parse_form(&body);
    let name = field(&form, "username").unwrap_or_default().trim().to_string();
    let password = field(&form, "password").unwrap_or_default();
    let settings = &console.0.settings.console;
    // Counted before any password is checked: per account, and for every
    // unknown name together (one row, however many names are made up).
    let known = console.0.accounts.iter().any(|a| a.name == name);
    let key = if known { format!("console-login:{name}") } else { "console-login:(unknown)".to_string() };
    match window_acquire(&console.0.state, &key, settings.login_attempts_per_minute, 0, 1, Duration::from_secs(60))
        .await
    {
        Ok(None) => {}
        Ok(Some(wait)) => {
            info!(target: "audit", user = %name, action = "login", outcome = "rate_limited", "Login refused: too many attempts");
            let mut r =
                layout::login(Some(&format!("Too many login attempts: try again in {} s.", wait.as_secs().max(1))))
                    .into_response();
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Err(e) => return Failure::from(anyhow::Error::from(e)).into_response(),
    }
    let accounts = console.0.accounts.clone();
    let decoy = console.0.decoy.clone();
    let (n, p) = (name.clone(), password.to_string());
    // argon2 is deliberately slow: off the async workers, a core each.
    let Ok(_permit) = console.0.checks.acquire().await else {
        return Failure::new(StatusCode::SERVICE_UNAVAILABLE, "The console is shutting down.").into_response();
    };
    let found = tokio::task::spawn_blocking(move || auth::authenticate(&accounts, &decoy, &n, &p).cloned())
        .await
        .ok()
        .flatten();
    let Some(account) = found else {
        info!(target: "audit", user = %name, action = "login", outcome = "refused", "Login refused");
        let mut r = layout::login(Some("Unknown user or wrong password.")).into_response();
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    let session = Session {
        user: account.name.clone(),
        role: account.role,
        exp: chrono::Utc::now().timestamp() + settings.session_ttl_secs as i64,
        nonce: uuid::Uuid::new_v4().simple().to_string(),
    };
    info!(target: "audit", user = %account.name, role = account.role.as_str(), action = "login", outcome = "ok", "Logged in");
    let cookie =
        auth::set_cookie(Some(&console.0.keys.seal(&session)), settings.session_ttl_secs, settings.secure_cookies);
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    if let Err(r) = console.require_post(&headers, &form) {
        return *r;
    }
    let settings = &console.0.settings.console;
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(None, 0, settings.secure_cookies)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// An object's body streamed as it is read from S3, never whole in memory.
fn stream_body(object: reelfleet_core::storage::ObjectStream) -> Body {
    Body::from_stream(futures::stream::unfold(object, |mut object| async move {
        let chunk = object.body.next().await?;
        Some((chunk, object))
    }))
}
