//! Outgoing webhooks: lifecycle events from the events exchange POSTed to
//! real HTTP receivers on 127.0.0.1, each checking the Standard Webhooks
//! signature from its own side; a failing endpoint retried and
//! dead-lettered alone; forged events sending nothing.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, JobRequest, SourceObject, SIGNATURE_HEADER},
    manifest::{JobManifest, JobStatus},
    settings::{Secret, Settings, WebhookEndpoint},
    signing::Signer,
    topology::WorkQueue,
    webhooks::{verify, SignedHeaders, WebhookSecret},
};
use reelfleet_tests::{make_clip, TestStack};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    body: Vec<u8>,
}

/// An HTTP receiver: `/fail...` answers 500, anything else 200; records all.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    base: String,
}

impl Receiver {
    async fn start() -> Self {
        async fn take(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            r.got.lock().unwrap().push(Received {
                path: uri.path().to_string(),
                id: h("webhook-id"),
                timestamp: h("webhook-timestamp"),
                signature: h("webhook-signature"),
                body: body.to_vec(),
            });
            if uri.path().starts_with("/fail") {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver { base: format!("http://{}", listener.local_addr().unwrap()), ..Default::default() };
        let app = axum::Router::new().fallback(take).with_state(r.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.on(path);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{path} got {} request(s), expected {n}", got.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks a received request as its receiver would, with core::webhooks::verify.
fn verified(r: &Received, secret: &WebhookSecret) -> serde_json::Value {
    let headers =
        SignedHeaders { id: r.id.as_deref(), timestamp: r.timestamp.as_deref(), signature: r.signature.as_deref() };
    let now = chrono::Utc::now().timestamp();
    verify(std::slice::from_ref(secret), headers, &r.body, now, 300).expect("signature verifies");
    serde_json::from_slice(&r.body).unwrap()
}

fn allow_loopback(s: &mut Settings) {
    s.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
}

/// A job's manifest as postprocess leaves it (completed), with a callback and metadata.
async fn seed_completed(stack: &TestStack, callback: Option<String>) -> JobManifest {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let source = SourceObject {
        bucket: "uploads".into(),
        key: format!("seed/{tag}.mp4"),
        size: 1,
        etag: Some(tag),
        version_id: None,
    };
    let mut env = Envelope::new(JobKind::Analyze, source);
    env.request = Some(JobRequest {
        via: "intake".into(),
        callback_url: callback,
        metadata: [("customer".to_string(), "acme".to_string())].into(),
        ..Default::default()
    });
    let mut m = JobManifest::new(&env);
    m.status = JobStatus::Completed;
    stack.manifests.create(&mut m).await.unwrap();
    m
}

/// An event on the events exchange, signed by `signer` for the webhooks queue (or unsigned).
fn event(stack: &TestStack, key: &str, job_id: &str, signer: Option<&Signer>) -> Outgoing {
    let body = serde_json::to_vec(&serde_json::json!({
        "event": key, "job_id": job_id, "at": chrono::Utc::now(),
    }))
    .unwrap();
    let mut msg = Outgoing {
        exchange: stack.topology.events_exchange(),
        routing_key: key.into(),
        body: body.clone(),
        mandatory: true,
        ..Default::default()
    };
    if let Some(s) = signer {
        msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(s.sign(&stack.queue(WorkQueue::Webhooks), &body)));
    }
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pulled_jobs_callback_is_signed_and_verified_by_its_receiver() {
    let receiver = Receiver::start().await;
    let secret = WebhookSecret::generate();
    let origin_dir = tempfile::tempdir().unwrap();
    let clip = make_clip(origin_dir.path(), "clip.mp4", "testsrc2=size=640x360:rate=25", 2.0, &["-c:v", "libx264"]);
    let origin_app = axum::Router::new().fallback_service(axum::routing::get({
        let bytes = std::fs::read(&clip).unwrap();
        move || async move { bytes }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, origin_app).await;
    });
    let hook_secret = secret.encode();
    let stack = TestStack::start_stages(&StageName::EVERY, move |s| {
        allow_loopback(s);
        s.pull.allow_cidrs = vec!["127.0.0.1/32".into()];
        s.webhooks.secret = Secret::new(hook_secret);
    })
    .await;
    // Two jobs from the intake API's side: one pulled and completed, one refused at the pull.
    let mut jobs = Vec::new();
    for (path, name) in [("/ok.mp4", "ok.mp4"), ("/gone", "gone.mp4")] {
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
        let url =
            if path == "/gone" { "http://10.0.0.1/gone.mp4".to_string() } else { format!("http://{origin}{path}") };
        env.request = Some(JobRequest {
            via: "intake".into(),
            origin_url: Some(url),
            callback_url: Some(receiver.url(&format!("/hook/{name}"))),
            metadata: [("customer".to_string(), "acme".to_string())].into(),
            ..Default::default()
        });
        stack.publish(stack.signed(WorkQueue::Pull, &env)).await;
        jobs.push(env.job_id);
    }

    let completed = receiver.wait("/hook/ok.mp4", 1, Duration::from_secs(240)).await;
    let body = verified(&completed[0], &secret);
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], jobs[0].as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["metadata"]["customer"], "acme");
    assert_eq!(body["data"]["manifest"], format!("jobs/{}/manifest.json", jobs[0]));
    assert!(!body["data"]["outputs"].as_array().unwrap().is_empty());
    assert!(body["data"]["cost_usd"].as_f64().unwrap() > 0.0);
    // A receiver holding another secret, or reading a changed body, refuses it.
    let other = WebhookSecret::generate();
    let h = SignedHeaders {
        id: completed[0].id.as_deref(),
        timestamp: completed[0].timestamp.as_deref(),
        signature: completed[0].signature.as_deref(),
    };
    assert!(verify(&[other], h, &completed[0].body, chrono::Utc::now().timestamp(), 300).is_err());

    let refused = receiver.wait("/hook/gone.mp4", 2, Duration::from_secs(60)).await;
    let mut types: Vec<String> =
        refused.iter().map(|r| verified(r, &secret)["type"].as_str().unwrap().to_string()).collect();
    types.sort();
    assert_eq!(types, ["job.dead_lettered", "job.failed"]);
    let failed = verified(&refused[0], &secret);
    assert_eq!(failed["data"]["status"], "failed");
    assert_eq!(failed["data"]["error"]["code"], "ssrf_refused");
    assert_eq!(failed["data"]["error"]["stage"], "pull");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_is_retried_then_dead_lettered_while_another_gets_its_delivery_once() {
    let receiver = Receiver::start().await;
    let (good, bad) = (WebhookSecret::generate(), WebhookSecret::generate());
    let endpoints = vec![
        WebhookEndpoint { url: receiver.url("/fail"), secret: Secret::new(bad.encode()), events: vec![] },
        WebhookEndpoint {
            url: receiver.url("/ok"),
            secret: Secret::new(good.encode()),
            events: vec!["job.completed".into()],
        },
        WebhookEndpoint {
            url: receiver.url("/failures-only"),
            secret: Secret::new(good.encode()),
            events: vec!["job.failed".into()],
        },
    ];
    let stack = TestStack::start_stages(&[StageName::Webhooks], move |s| {
        allow_loopback(s);
        s.webhooks.endpoints = endpoints;
    })
    .await;
    let events = stack.bind_events("#").await;
    let m = seed_completed(&stack, None).await;
    stack.publish(event(&stack, "job.completed", &m.job_id, Some(&stack.signer()))).await;

    let attempts = stack.settings().retry.max_attempts as usize;
    let dlq = stack.topology.dead_letter_queue(WorkQueue::Webhooks);
    let dead = stack.take_messages(&dlq, 1, Duration::from_secs(30)).await;
    let (headers, body) = &dead[0];
    assert_eq!(headers.get("x-reelfleet-error-code").map(String::as_str), Some("http_status"));
    assert_eq!(headers.get("x-reelfleet-attempts").map(String::as_str), Some(attempts.to_string().as_str()));
    let letter: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(letter["delivery"]["target"]["url"], receiver.url("/fail"));
    let failing = receiver.on("/fail");
    assert_eq!(failing.len(), attempts, "retried up to retry.max_attempts");
    let ids: std::collections::BTreeSet<_> = failing.iter().map(|r| r.id.clone().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    for r in &failing {
        verified(r, &bad);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = receiver.on("/ok");
    assert_eq!(ok.len(), 1, "the healthy endpoint got the event once");
    assert_ne!(ok[0].id, failing[0].id, "a webhook-id per endpoint");
    assert_eq!(verified(&ok[0], &good)["data"]["job_id"], m.job_id.as_str());
    assert!(receiver.on("/failures-only").is_empty(), "an endpoint gets only the events it asked for");
    // The webhook's dead letter failed no job and announced nothing.
    let after = stack.manifests.load(&m.job_id).await.unwrap().unwrap();
    assert_eq!(after.status, JobStatus::Completed);
    assert!(after.error.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = stack.take_messages(&events, 1, Duration::from_secs(5)).await;
    assert_eq!(stack.depth(&events).await, 0, "only the test's own event went over the exchange: {seen:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_or_unsigned_event_sends_nothing() {
    let receiver = Receiver::start().await;
    let secret = WebhookSecret::generate();
    let endpoints =
        vec![WebhookEndpoint { url: receiver.url("/ok"), secret: Secret::new(secret.encode()), events: vec![] }];
    let stack = TestStack::start_stages(&[StageName::Webhooks], move |s| {
        allow_loopback(s);
        s.webhooks.endpoints = endpoints;
    })
    .await;
    let m = seed_completed(&stack, None).await;
    let forger = Signer::with_key(stack.settings().namespace.as_str(), "k1", &[9u8; 32]);
    let other_queue = {
        let mut e = event(&stack, "job.completed", &m.job_id, None);
        let sig = stack.signer().sign(&stack.queue(WorkQueue::Ingest), &e.body);
        e = e.header(SIGNATURE_HEADER, HeaderValue::Text(sig));
        e
    };
    stack.publish(event(&stack, "job.completed", &m.job_id, None)).await;
    stack.publish(event(&stack, "job.failed", &m.job_id, Some(&forger))).await;
    stack.publish(other_queue).await;
    let dlq = stack.topology.dead_letter_queue(WorkQueue::Webhooks);
    let dead = stack.take_messages(&dlq, 3, Duration::from_secs(30)).await;
    for (h, _) in &dead {
        assert_eq!(h.get("x-reelfleet-error-code").map(String::as_str), Some("bad_signature"), "{h:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.all().is_empty(), "nothing was POSTed for a forged event: {:?}", receiver.all());
    // The same event signed by the fleet is delivered: the receiver was reachable all along.
    stack.publish(event(&stack, "job.completed", &m.job_id, Some(&stack.signer()))).await;
    let got = receiver.wait("/ok", 1, Duration::from_secs(30)).await;
    verified(&got[0], &secret);
    stack.cleanup().await;
}
