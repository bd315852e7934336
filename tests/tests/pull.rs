//! URL pull: a signed envelope on `<ns>.pull` (as the intake API sends it)
//! fetched from a real HTTP server on 127.0.0.1 through the SSRF guard into
//! the embedded S3, then through the fleet; refusals (address, redirect,
//! size, content) recorded in the manifest, checked on the object store.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use axum::{
    body::Body,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    envelope::{Envelope, JobKind, JobRequest, SourceObject, SIGNATURE_HEADER},
    manifest::{JobManifest, JobStatus},
    topology::WorkQueue,
};
use reelfleet_tests::{make_clip, TestStack};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

const MIB: usize = 1024 * 1024;

/// The origin server a test pulls from: what it serves and how often it was asked.
#[derive(Clone)]
struct Origin {
    clip: Arc<Vec<u8>>,
    hits: Arc<AtomicUsize>,
    flaky_left: Arc<AtomicUsize>,
}

impl Origin {
    async fn start(body: Vec<u8>) -> (Self, SocketAddr) {
        let origin = Self { clip: Arc::new(body), hits: Arc::default(), flaky_left: Arc::new(AtomicUsize::new(2)) };
        async fn clip(State(o): State<Origin>) -> Response {
            o.hits.fetch_add(1, Ordering::SeqCst);
            ([(header::CONTENT_TYPE, "application/octet-stream")], o.clip.to_vec()).into_response()
        }
        async fn flaky(State(o): State<Origin>) -> Response {
            o.hits.fetch_add(1, Ordering::SeqCst);
            if o.flaky_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
            }
            o.clip.to_vec().into_response()
        }
        async fn html(State(o): State<Origin>) -> Response {
            o.hits.fetch_add(1, Ordering::SeqCst);
            ([(header::CONTENT_TYPE, "video/mp4")], "<!DOCTYPE html><html><body>not a video</body></html>".repeat(20))
                .into_response()
        }
        async fn endless(State(o): State<Origin>) -> Response {
            o.hits.fetch_add(1, Ordering::SeqCst);
            // An MP4 header, then 20 MiB in 1 MiB chunks without a Content-Length.
            let head = o.clip[..64].to_vec();
            let chunks = std::iter::once(head).chain((0..20).map(|i| vec![i as u8; MIB]));
            let stream = futures::stream::iter(chunks.map(Ok::<_, std::io::Error>));
            Body::from_stream(stream).into_response()
        }
        fn redirect(o: &Origin, to: &'static str) -> Response {
            o.hits.fetch_add(1, Ordering::SeqCst);
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        let app = axum::Router::new()
            .route("/clip.mp4", get(clip))
            .route("/flaky.mp4", get(flaky))
            .route("/page.mp4", get(html))
            .route("/endless.mp4", get(endless))
            .route(
                "/to-metadata",
                get(|State(o): State<Origin>| async move { redirect(&o, "http://169.254.169.254/latest/meta-data/") }),
            )
            .route(
                "/to-private",
                get(|State(o): State<Origin>| async move { redirect(&o, "http://10.0.0.1/clip.mp4") }),
            )
            .route("/to-clip", get(|State(o): State<Origin>| async move { redirect(&o, "/clip.mp4") }))
            .with_state(origin.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (origin, addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What the intake API publishes for a URL source: its own job id, the
/// planned object under `pulled/<job_id>/`, the origin URL.
fn pull_envelope(stack: &TestStack, url: &str, name: &str, callback: Option<String>) -> Envelope {
    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let source = SourceObject {
        bucket: stack.settings().s3.upload_bucket.clone(),
        key: format!("pulled/{job_id}/{name}"),
        size: 0,
        etag: None,
        version_id: None,
    };
    let mut env = Envelope::new(JobKind::Analyze, source);
    env.job_id = job_id;
    env.request = Some(JobRequest {
        via: "intake".into(),
        origin_url: Some(url.into()),
        callback_url: callback,
        ..Default::default()
    });
    env
}

async fn submit(stack: &TestStack, env: &Envelope) {
    stack.publish(stack.signed(WorkQueue::Pull, env)).await;
}

async fn failed(stack: &TestStack, job: &str) -> JobManifest {
    let m = stack.wait_for(job, Duration::from_secs(60), |m| m.status == JobStatus::Failed).await;
    let e = m.error.as_ref().expect("a failed manifest says why");
    assert_eq!(e.stage, "pull", "{e:?}");
    m
}

/// Multipart parts the embedded S3 (s3s-fs) holds on disk, for any upload.
fn parts_on_disk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(".upload_id-") {
                out.push(path);
            }
        }
    }
    out
}

fn allow_loopback(s: &mut reelfleet_core::settings::Settings) {
    s.pull.allow_cidrs = vec!["127.0.0.1/32".into()];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_is_pulled_into_the_upload_bucket_and_the_job_completes() {
    let stack = TestStack::start_stages(&StageName::EVERY, allow_loopback).await;
    let clip_path = make_clip(stack.dir.path(), "clip.mp4", "testsrc2=size=640x360:rate=25", 2.0, &["-c:v", "libx264"]);
    let clip = std::fs::read(&clip_path).unwrap();
    let (origin, addr) = Origin::start(clip.clone()).await;
    // Through a redirect on the same (allowed) host, re-checked and followed.
    let env = pull_envelope(&stack, &format!("http://{addr}/to-clip?token=abc"), "clip.mp4", None);
    submit(&stack, &env).await;

    let m = stack
        .wait_for(&env.job_id, Duration::from_secs(240), |m| {
            matches!(m.status, JobStatus::Completed | JobStatus::Failed)
        })
        .await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    assert_eq!(m.source.key, env.source.key);
    assert_eq!(m.source.size, clip.len() as u64);
    assert!(m.source.etag.is_some());
    assert_eq!(
        m.request.as_ref().and_then(|r| r.origin_url.as_deref()),
        Some(format!("http://{addr}/to-clip?token=abc").as_str())
    );
    assert!(m.stages.contains_key("postprocess"));
    assert_eq!(origin.hits(), 2, "the redirect, then the clip");
    let stored = stack.storage.get_bytes(&m.source.bucket, &m.source.key, 64 * MIB as u64).await.unwrap();
    assert!(stored == clip, "the object is the origin's body, byte for byte");
    // The upload's own bucket event made no second job: ingest left it to the pull worker.
    let jobs = stack.manifests.job_ids().await.unwrap();
    assert_eq!(jobs, vec![env.job_id.clone()], "one job for one pull");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loopback_or_private_url_is_refused_unless_allow_listed() {
    let stack = TestStack::start_stages(&[StageName::Pull], |_| {}).await;
    let (origin, addr) = Origin::start(vec![0x47; 4096]).await;
    let loopback = pull_envelope(&stack, &format!("http://{addr}/clip.mp4"), "a.mp4", None);
    let private = pull_envelope(&stack, "http://10.0.0.1/clip.mp4", "b.mp4", None);
    let metadata = pull_envelope(&stack, "http://169.254.169.254/latest/meta-data/", "c.mp4", None);
    let scheme = pull_envelope(&stack, "file:///etc/passwd", "d.mp4", None);
    for env in [&loopback, &private, &metadata, &scheme] {
        submit(&stack, env).await;
    }
    for (env, says) in [(&loopback, "loopback"), (&private, "private"), (&metadata, "link-local"), (&scheme, "http")] {
        let m = failed(&stack, &env.job_id).await;
        let e = m.error.unwrap();
        assert_eq!(e.code, "ssrf_refused", "{e:?}");
        assert!(e.message.contains(says), "{}: {}", says, e.message);
        assert_eq!(e.class, reelfleet_core::error::ErrorClass::Permanent);
    }
    assert_eq!(origin.hits(), 0, "nothing reached the loopback server");
    let dlq = stack.take_messages(&stack.topology.dead_letter_queue(WorkQueue::Pull), 4, Duration::from_secs(10)).await;
    assert!(dlq.iter().all(|(h, _)| h.get("x-reelfleet-error-code").map(String::as_str) == Some("ssrf_refused")));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_from_an_allowed_host_to_an_inward_address_is_refused() {
    let stack = TestStack::start_stages(&[StageName::Pull], allow_loopback).await;
    let (origin, addr) = Origin::start(vec![0x47; 4096]).await;
    let metadata = pull_envelope(&stack, &format!("http://{addr}/to-metadata"), "a.mp4", None);
    let private = pull_envelope(&stack, &format!("http://{addr}/to-private"), "b.mp4", None);
    submit(&stack, &metadata).await;
    submit(&stack, &private).await;
    for (env, says) in [(&metadata, "169.254.169.254"), (&private, "10.0.0.1")] {
        let e = failed(&stack, &env.job_id).await.error.unwrap();
        assert_eq!(e.code, "ssrf_refused", "{e:?}");
        assert!(e.message.contains(says), "{says}: {}", e.message);
    }
    assert_eq!(origin.hits(), 2, "each redirect asked for once, its target never");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversize_body_is_refused_mid_stream_and_its_multipart_upload_aborted() {
    let stack = TestStack::start_stages(&[StageName::Pull], |s| {
        allow_loopback(s);
        s.limits.max_bytes = 12 * MIB as u64;
        s.pull.part_size_bytes = 5 * MIB as u64;
    })
    .await;
    let mut mp4 = vec![0, 0, 0, 0x20];
    mp4.extend(b"ftypisom");
    mp4.resize(64, 0);
    let (_origin, addr) = Origin::start(mp4).await;
    let env = pull_envelope(&stack, &format!("http://{addr}/endless.mp4"), "big.mp4", None);
    submit(&stack, &env).await;
    let e = failed(&stack, &env.job_id).await.error.unwrap();
    assert_eq!(e.code, "too_large", "{e:?}");
    let head = stack.storage.head(&env.source.bucket, &env.source.key).await.unwrap();
    assert!(head.is_none(), "no object left behind: {head:?}");
    let parts = parts_on_disk(stack.dir.path());
    assert!(parts.is_empty(), "the store still holds parts of an upload: {parts:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_is_no_video_is_refused_whatever_its_content_type() {
    let stack = TestStack::start_stages(&[StageName::Pull], allow_loopback).await;
    let (_origin, addr) = Origin::start(vec![0x47; 4096]).await;
    let env = pull_envelope(&stack, &format!("http://{addr}/page.mp4"), "page.mp4", None);
    submit(&stack, &env).await;
    let e = failed(&stack, &env.job_id).await.error.unwrap();
    assert_eq!(e.code, "not_video", "{e:?}");
    assert!(e.message.contains("video/mp4"), "{}", e.message);
    assert!(stack.storage.head(&env.source.bucket, &env.source.key).await.unwrap().is_none());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5xx_is_retried_and_the_pulled_job_handed_to_ingest_signed() {
    let stack = TestStack::start_stages(&[StageName::Pull], allow_loopback).await;
    let mut mp4 = vec![0, 0, 0, 0x20];
    mp4.extend(b"ftypisom");
    mp4.resize(300_000, 7);
    let (origin, addr) = Origin::start(mp4.clone()).await;
    let env = pull_envelope(&stack, &format!("http://{addr}/flaky.mp4"), "flaky.mp4", None);
    submit(&stack, &env).await;
    // No ingest worker runs: the ingest queue holds what the pull sent (and
    // the embedded S3's event of the upload, unsigned).
    let ingest = stack.queue(WorkQueue::Ingest);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let handed = loop {
        let msgs = stack.take_messages(&ingest, 1, deadline.saturating_duration_since(std::time::Instant::now())).await;
        let (headers, body) = msgs.into_iter().next().unwrap();
        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
            stack.signer().verify(&ingest, &body, Some(sig)).expect("signed for ingest by the fleet");
            break Envelope::parse(&body).unwrap();
        }
    };
    assert_eq!(handed.job_id, env.job_id);
    assert_eq!(handed.source.key, env.source.key);
    assert_eq!(handed.source.size, mp4.len() as u64);
    let head = stack.storage.head(&env.source.bucket, &env.source.key).await.unwrap().expect("pulled object");
    assert_eq!(handed.source.etag, head.etag);
    assert_eq!(origin.hits(), 3, "two 503s retried, then pulled");
    assert!(stack.manifests.load(&env.job_id).await.unwrap().is_none(), "ingest, not the pull, writes the manifest");
    stack.cleanup().await;
}
