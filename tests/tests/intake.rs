//! The intake API over real HTTP (reqwest), on the dev stack's RabbitMQ
//! namespace and embedded S3 of each test: Standard Webhooks signatures and
//! their refusals, replays, idempotent retries, field and batch refusals
//! that publish nothing, URL sources handed to the pull queue, Cloud Pub/Sub
//! push deliveries. What was published is counted on the broker, never in
//! the intake's own code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    envelope::{Envelope, SourceObject, SIGNATURE_HEADER},
    manifest::JobStatus,
    settings::{IntakeClient, Secret},
    topology::WorkQueue,
    webhooks::WebhookSecret,
};
use reelfleet_intake::{auth::key_sha256, jobs::url_job_id};
use reelfleet_tests::{make_clip, TestStack};
use serde_json::{json, Value};
use std::time::Duration;

/// An upload bucket other than the stack's own, so that putting a clip
/// there sends no bucket event: every message on `<ns>.ingest` is the intake's.
const SRC: &str = "intake-src";
/// The bucket of the Cloud Storage fixtures.
const GCS_BUCKET: &str = "reelfleet-gcs-uploads";
const GCS_TOKEN: &str = "push-token-5c1e0b7a9d";
const API_KEY: &str = "rfk_test_acme_7d0f3a";
/// A second client of the same intake.
const RIVAL_KEY: &str = "rfk_test_rival_91b2c4";

struct Api {
    base: String,
    key: &'static str,
    secret: WebhookSecret,
    /// The second client's secret (its key is [`RIVAL_KEY`]).
    rival_secret: WebhookSecret,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
    retry_after: Option<String>,
}

impl Api {
    /// A request signed with `secret` as of `ts` under `id`.
    // Each refusal test varies a different one of them.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        path: &str,
        body: &[u8],
        key: &str,
        secret: &WebhookSecret,
        id: &str,
        ts: i64,
        idempotency: Option<&str>,
    ) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", secret.sign(id, ts, body))
            .body(body.to_vec());
        if let Some(k) = idempotency {
            req = req.header("idempotency-key", k);
        }
        answer(req.send().await.unwrap()).await
    }

    /// A correctly signed POST with a fresh webhook id.
    async fn post(&self, path: &str, body: &Value, idempotency: Option<&str>) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send(path, &bytes, self.key, &self.secret, &fresh_id(), now(), idempotency).await
    }

    async fn get(&self, path: &str) -> Answer {
        let (id, ts) = (fresh_id(), now());
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.key)
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.secret.sign(&id, ts, b""));
        answer(req.send().await.unwrap()).await
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Answer { status, body, replayed, retry_after }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn fresh_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// A stack running `stages` with the intake API on a free port and one client.
async fn start(stages: &[StageName]) -> (TestStack, Api) {
    start_tweaked(stages, |_| {}).await
}

/// [`start`], with the settings adjusted by `tweak` last.
async fn start_tweaked(
    stages: &[StageName],
    tweak: impl FnOnce(&mut reelfleet_core::settings::Settings),
) -> (TestStack, Api) {
    let secret = WebhookSecret::generate();
    let encoded = secret.encode();
    let rival_secret = WebhookSecret::generate();
    let rival = IntakeClient {
        id: "rival".into(),
        api_key_sha256: key_sha256(RIVAL_KEY),
        secret: Secret::new(rival_secret.encode()),
        ..Default::default()
    };
    let stack = TestStack::start_stages(stages, |s| {
        s.intake.bind_addr = "127.0.0.1:0".into();
        s.intake.clients = vec![
            IntakeClient {
                id: "acme".into(),
                api_key_sha256: key_sha256(API_KEY),
                secret: Secret::new(encoded),
                ..Default::default()
            },
            rival,
        ];
        s.intake.gcs_verification_token = Some(Secret::new(GCS_TOKEN));
        s.intake.max_body_bytes = 64 * 1024;
        s.s3.accepted_buckets = vec![SRC.into(), GCS_BUCKET.into()];
        tweak(s);
    })
    .await;
    stack.storage.ensure_bucket(SRC).await.unwrap();
    let addr = stack.dev.intake.expect("the dev stack serves the intake API when a client is configured");
    let api = Api { base: format!("http://{addr}"), key: API_KEY, secret, rival_secret, http: reqwest::Client::new() };
    (stack, api)
}

impl Api {
    /// The same intake as the second client.
    fn rival(&self) -> Api {
        Api {
            base: self.base.clone(),
            key: RIVAL_KEY,
            secret: self.rival_secret.clone(),
            rival_secret: self.rival_secret.clone(),
            http: reqwest::Client::new(),
        }
    }
}

/// A second intake in this process (its own broker pool and object store
/// client; the same settings, bucket and namespace), as `api`'s client;
/// cancel the token to stop it.
async fn replica(stack: &TestStack, api: &Api) -> (Api, tokio_util::sync::CancellationToken) {
    let settings = std::sync::Arc::new(stack.settings().clone());
    let replica = reelfleet_intake::Intake::new(
        settings.clone(),
        reelfleet_core::storage::Storage::new(&settings.s3),
        reelfleet_core::broker::Broker::new(&settings.broker, "intake-replica").unwrap(),
        &reelfleet_core::metrics::Metrics::new(),
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _task) = replica.serve("127.0.0.1:0", stop.clone()).await.unwrap();
    let other = Api {
        base: format!("http://{addr}"),
        key: api.key,
        secret: api.secret.clone(),
        rival_secret: api.rival_secret.clone(),
        http: reqwest::Client::new(),
    };
    (other, stop)
}

/// Puts a small object into the intake's source bucket; returns its job id.
async fn put_object(stack: &TestStack, key: &str, bytes: Vec<u8>) -> String {
    stack.storage.put_bytes(SRC, key, bytes, "video/mp4").await.unwrap();
    let info = stack.storage.head(SRC, key).await.unwrap().unwrap();
    SourceObject { bucket: SRC.into(), key: key.into(), size: 0, etag: info.etag, version_id: None }.job_id()
}

fn field(a: &Answer) -> &str {
    a.body["error"]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_signed_job_is_admitted_by_ingest_and_shown() {
    let (stack, api) = start(&[StageName::Ingest]).await;
    let clip = make_clip(stack.dir.path(), "intake.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let bytes = std::fs::read(&clip).unwrap();
    let job_id = put_object(&stack, "in/intake.mp4", bytes).await;

    let job = json!({
        "source": format!("s3://{SRC}/in/intake.mp4"), "priority": 5, "quality": "720p",
        "callback_url": "https://hooks.example.com/reelfleet", "metadata": {"order": "A-17"}
    });
    let a = api.post("/v1/jobs", &job, None).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["job_id"], job_id, "the id the bucket event would give");
    assert_eq!(a.body["status_url"], format!("/v1/jobs/{job_id}"));

    let m = stack.wait_for(&job_id, Duration::from_secs(60), |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Preprocess, "{:?}", m.error);
    let request = m.request.clone().expect("the manifest carries the request");
    assert_eq!(request.via, "intake");
    assert_eq!(request.metadata["order"], "A-17");
    assert_eq!(request.callback_url.as_deref(), Some("https://hooks.example.com/reelfleet"));
    assert_eq!(m.priority, 4, "capped at limits.max_uploader_priority");

    let shown = api.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["status"], "preprocess");
    assert_eq!(shown.body["request"]["metadata"]["order"], "A-17");
    let missing = api.get("/v1/jobs/0123456789abcdef0123456789abcdef").await;
    assert_eq!((missing.status, missing.body["error"]["code"].as_str()), (404, Some("not_found")));
    // Another client sees no job of acme's, exactly as a job that does not exist...
    let rival = api.rival();
    let hidden = rival.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!((hidden.status, hidden.body["error"]["code"].as_str()), (404, Some("not_found")), "{}", hidden.body);
    // ...until it submits the same object itself: the same job, now its too.
    let again = rival.post("/v1/jobs", &json!({"source": format!("s3://{SRC}/in/intake.mp4")}), None).await;
    assert_eq!((again.status, again.body["job_id"].as_str()), (202, Some(job_id.as_str())));
    assert_eq!(rival.get(&format!("/v1/jobs/{job_id}")).await.status, 200);
    stack.cleanup().await;
}

#[tokio::test]
async fn unsigned_forged_stale_and_replayed_requests_are_refused() {
    let (stack, api) = start(&[]).await;
    let ingest = stack.queue(WorkQueue::Ingest);
    put_object(&stack, "a.mp4", vec![1; 64]).await;
    let body = serde_json::to_vec(&json!({"source": format!("s3://{SRC}/a.mp4")})).unwrap();

    let forged = WebhookSecret::generate();
    let a = api.send("/v1/jobs", &body, API_KEY, &forged, &fresh_id(), now(), None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("bad_signature")));
    let a = api.send("/v1/jobs", &body, "rfk_wrong", &api.secret, &fresh_id(), now(), None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let a = api.send("/v1/jobs", &body, API_KEY, &api.secret, &fresh_id(), now() - 3600, None).await;
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (401, Some("timestamp_outside_tolerance")));
    let unsigned = api.http.post(format!("{}/v1/jobs", api.base)).bearer_auth(API_KEY).body(body.clone());
    assert_eq!(answer(unsigned.send().await.unwrap()).await.status, 401);

    let (id, ts) = (fresh_id(), now());
    let first = api.send("/v1/jobs", &body, API_KEY, &api.secret, &id, ts, None).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let replay = api.send("/v1/jobs", &body, API_KEY, &api.secret, &id, ts, None).await;
    assert_eq!((replay.status, replay.body["error"]["code"].as_str()), (401, Some("replayed")));
    let keyed = api.send("/v1/jobs", &body, API_KEY, &api.secret, &id, ts, Some("added-later")).await;
    assert_eq!((keyed.status, keyed.body["error"]["code"].as_str()), (401, Some("replayed")));

    let big = serde_json::to_vec(&json!({"source": format!("s3://{SRC}/a.mp4"), "x": "y".repeat(70_000)})).unwrap();
    let a = api.send("/v1/jobs", &big, API_KEY, &api.secret, &fresh_id(), now(), None).await;
    assert_eq!(a.status, 413);
    let (id, ts) = (fresh_id(), now());
    let text = api
        .http
        .post(format!("{}/v1/jobs", api.base))
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", api.secret.sign(&id, ts, &body))
        .body(body.clone());
    assert_eq!(answer(text.send().await.unwrap()).await.status, 415);

    assert_eq!(stack.depth(&ingest).await, 1, "only the one accepted request was published");
    stack.cleanup().await;
}

#[tokio::test]
async fn an_idempotent_retry_answers_the_same_and_publishes_once() {
    let (stack, api) = start(&[]).await;
    let ingest = stack.queue(WorkQueue::Ingest);
    let job_id = put_object(&stack, "b.mp4", vec![2; 64]).await;
    let job = json!({"source": format!("s3://{SRC}/b.mp4"), "metadata": {"n": "1"}});

    let first = api.post("/v1/jobs", &job, Some("order-42")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["job_id"], job_id);
    assert!(!first.replayed);
    let again = api.post("/v1/jobs", &job, Some("order-42")).await;
    assert_eq!((again.status, &again.body), (202, &first.body));
    assert!(again.replayed, "the second answer is the stored one");

    // A sender's retry of the very same message (same webhook-id) gets the stored answer too.
    let bytes = serde_json::to_vec(&job).unwrap();
    let (id, ts) = (fresh_id(), now());
    let sent = api.send("/v1/jobs", &bytes, API_KEY, &api.secret, &id, ts, Some("order-43")).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let resent = api.send("/v1/jobs", &bytes, API_KEY, &api.secret, &id, ts, Some("order-43")).await;
    assert_eq!((resent.status, &resent.body, resent.replayed), (202, &sent.body, true));
    // The key header is not signed: a seen id with another key is a replay.
    let forged = api.send("/v1/jobs", &bytes, API_KEY, &api.secret, &id, ts, Some("order-44")).await;
    assert_eq!((forged.status, forged.body["error"]["code"].as_str()), (401, Some("replayed")));

    let other = json!({"source": format!("s3://{SRC}/b.mp4"), "metadata": {"n": "2"}});
    let conflict = api.post("/v1/jobs", &other, Some("order-42")).await;
    assert_eq!((conflict.status, conflict.body["error"]["code"].as_str()), (409, Some("idempotency_key_reused")));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&ingest).await, 2, "each key published once");
    stack.cleanup().await;
}

#[tokio::test]
async fn bad_fields_and_bad_batches_publish_nothing() {
    let (stack, api) = start(&[]).await;
    let (ingest, pull) = (stack.queue(WorkQueue::Ingest), stack.queue(WorkQueue::Pull));
    put_object(&stack, "c.mp4", vec![3; 64]).await;
    put_object(&stack, "d.mp4", vec![4; 64]).await;
    let good = |k: &str| json!({"source": format!("s3://{SRC}/{k}")});

    let a = api.post("/v1/jobs", &json!({"source": format!("s3://{SRC}/c.mp4"), "priority": 9}), None).await;
    assert_eq!((a.status, field(&a)), (422, "priority"), "{}", a.body);
    let a = api.post("/v1/jobs", &good("nowhere.mp4"), None).await;
    assert_eq!((a.status, field(&a)), (422, "source"), "{}", a.body);
    let a = api.post("/v1/jobs", &json!({"source": "s3://reelfleet-work/jobs/x"}), None).await;
    assert_eq!((a.status, field(&a)), (422, "source"), "{}", a.body);

    let batch = json!({"jobs": [good("c.mp4"), {"source": "https://e.example/v.mp4", "quality": "8k"}, good("d.mp4")]});
    let a = api.post("/v1/batches", &batch, None).await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(
        a.body["error"]["items"],
        json!([{"index": 1, "field": "quality", "message": a.body["error"]["items"][0]["message"]}])
    );
    let batch = json!({"jobs": [good("c.mp4"), {"source": "https://e.example/v.mp4"}, good("missing.mp4")]});
    let a = api.post("/v1/batches", &batch, None).await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(
        (a.body["error"]["items"][0]["index"].as_u64(), a.body["error"]["items"][0]["field"].as_str()),
        (Some(2), Some("source"))
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((stack.depth(&ingest).await, stack.depth(&pull).await), (0, 0), "nothing published");

    let batch = json!({"jobs": [good("c.mp4"), {"source": "https://e.example/v.mp4"}, good("d.mp4")]});
    let a = api.post("/v1/batches", &batch, None).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["jobs"].as_array().map(Vec::len), Some(3));
    assert!(a.body["batch_id"].is_string());
    let url_job = a.body["jobs"][1]["job_id"].as_str().unwrap().to_string();
    let shown = api.get(&format!("/v1/jobs/{url_job}")).await;
    assert_eq!((shown.status, shown.body["status"].as_str()), (200, Some("accepted")), "{}", shown.body);
    assert_eq!((stack.depth(&ingest).await, stack.depth(&pull).await), (2, 1));
    stack.cleanup().await;
}

#[tokio::test]
async fn a_url_source_lands_signed_on_the_pull_queue() {
    let (stack, api) = start(&[]).await;
    let pull = stack.queue(WorkQueue::Pull);
    let url = "https://media.example.com/shows/ep%201/Final Cut.mov?sig=abc";
    let a = api.post("/v1/jobs", &json!({"source": url, "metadata": {"show": "ep1"}}), Some("pull-1")).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let parsed = url::Url::parse(url).unwrap();
    let job_id = url_job_id("acme", "pull-1", &parsed);
    assert_eq!(a.body["job_id"], job_id);

    let msgs = stack.take_messages(&pull, 1, Duration::from_secs(10)).await;
    let (headers, body) = &msgs[0];
    stack
        .signer()
        .verify(&pull, body, headers.get(SIGNATURE_HEADER).map(String::as_str))
        .expect("signed for the pull queue");
    let env = Envelope::parse(body).unwrap();
    assert_eq!(env.job_id, job_id);
    assert_eq!(env.source.bucket, stack.settings().s3.upload_bucket);
    assert_eq!(env.source.key, format!("pulled/{job_id}/Final_Cut.mov"));
    let request = env.request.unwrap();
    assert_eq!(request.origin_url.as_deref(), Some(parsed.as_str()));
    assert_eq!(request.idempotency_key.as_deref(), Some("pull-1"));
    assert_eq!(request.metadata["show"], "ep1");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_cloud_storage_push_becomes_a_job_and_a_wrong_token_is_refused() {
    let (stack, api) = start(&[]).await;
    let ingest = stack.queue(WorkQueue::Ingest);
    let fixture = |name: &str| std::fs::read(format!("{}/fixtures/gcs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let push = |token: Option<&str>, body: Vec<u8>| {
        let url = match token {
            Some(t) => format!("{}/v1/gcs/push?token={t}", api.base),
            None => format!("{}/v1/gcs/push", api.base),
        };
        let req = api.http.post(url).header("content-type", "application/json").body(body);
        async move { answer(req.send().await.unwrap()).await }
    };

    assert_eq!(push(Some("wrong"), fixture("object-finalize.json")).await.status, 401);
    assert_eq!(push(None, fixture("object-finalize.json")).await.status, 401);
    assert_eq!(push(Some(GCS_TOKEN), fixture("object-delete.json")).await.status, 204);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&ingest).await, 0, "neither a refused push nor a delete is published");

    let a = push(Some(GCS_TOKEN), fixture("object-finalize.json")).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let msgs = stack.take_messages(&ingest, 1, Duration::from_secs(10)).await;
    let (headers, body) = &msgs[0];
    stack.signer().verify(&ingest, body, headers.get(SIGNATURE_HEADER).map(String::as_str)).expect("signed for ingest");
    let env = Envelope::parse(body).unwrap();
    assert_eq!(env.source.bucket, GCS_BUCKET);
    assert_eq!(env.source.key, "incoming/match day/clip-01.mp4");
    assert_eq!(env.source.version_id.as_deref(), Some("1732962345123456"));
    assert_eq!(env.source.etag.as_deref(), Some("b1946ac92492d2347c6235b4d2611184"));
    assert_eq!(env.job_id, env.source.job_id());
    assert_eq!(a.body["job_id"], env.job_id);
    assert_eq!(env.request.map(|r| r.via).as_deref(), Some("gcs"));
    stack.cleanup().await;
}

#[tokio::test]
async fn two_replicas_share_replays_and_idempotency_keys() {
    let (stack, api) = start(&[]).await;
    let ingest = stack.queue(WorkQueue::Ingest);
    put_object(&stack, "e.mp4", vec![5; 64]).await;
    let (other, stop) = replica(&stack, &api).await;
    let body = serde_json::to_vec(&json!({"source": format!("s3://{SRC}/e.mp4")})).unwrap();

    // The same message sent to both replicas at once, eight times over: one is accepted.
    let (id, ts) = (fresh_id(), now());
    let sends = (0..8).map(|i| {
        let target = if i % 2 == 0 { &api } else { &other };
        target.send("/v1/jobs", &body, API_KEY, &api.secret, &id, ts, None)
    });
    let mut statuses: Vec<u16> = futures::future::join_all(sends).await.into_iter().map(|a| a.status).collect();
    statuses.sort();
    assert_eq!(statuses, [202, 401, 401, 401, 401, 401, 401, 401]);

    // One Idempotency-Key used by eight different messages at once: every
    // answer is the first one (or "in progress"), and one job is published.
    let ids: Vec<String> = (0..8).map(|_| fresh_id()).collect();
    let sends = ids.iter().enumerate().map(|(i, id)| {
        let target = if i % 2 == 0 { &api } else { &other };
        target.send("/v1/jobs", &body, API_KEY, &api.secret, id, now(), Some("shared-key"))
    });
    let answers = futures::future::join_all(sends).await;
    let accepted: Vec<&Answer> = answers.iter().filter(|a| a.status == 202).collect();
    assert!(!accepted.is_empty(), "{:?}", answers.iter().map(|a| &a.body).collect::<Vec<_>>());
    assert!(accepted.iter().all(|a| a.body == accepted[0].body));
    assert!(answers
        .iter()
        .all(|a| a.status == 202 || a.body["error"]["code"].as_str() == Some("idempotency_in_progress")));
    assert_eq!(accepted.iter().filter(|a| !a.replayed).count(), 1, "one request did the work");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&ingest).await, 2, "one publish for the message, one for the key");
    stop.cancel();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clients_rate_limit_is_counted_over_every_replica_and_answered_with_429() {
    let (stack, api) = start_tweaked(&[], |s| {
        s.intake.clients[0].requests_per_minute = 3;
        s.intake.clients[0].jobs_per_minute = 4;
    })
    .await;
    let ingest = stack.queue(WorkQueue::Ingest);
    put_object(&stack, "r.mp4", vec![6; 64]).await;
    let (other, stop) = replica(&stack, &api).await;
    let job = json!({"source": format!("s3://{SRC}/r.mp4")});

    // A batch above the jobs limit can never go: refused outright, nothing counted.
    let jobs: Vec<Value> = (0..5).map(|_| job.clone()).collect();
    let big = api.post("/v1/batches", &json!({ "jobs": jobs }), None).await;
    assert_eq!((big.status, big.body["error"]["code"].as_str()), (413, Some("batch_over_limit")), "{}", big.body);
    // Three requests over both replicas, then the fourth on either is refused.
    for (i, target) in [&api, &other, &api].into_iter().enumerate() {
        let a = target.post("/v1/jobs", &job, None).await;
        assert_eq!(a.status, 202, "request {i}: {}", a.body);
    }
    for target in [&other, &api] {
        let refused = target.post("/v1/jobs", &job, None).await;
        assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (429, Some("rate_limited")));
        let wait: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=61).contains(&wait), "Retry-After {wait}");
    }
    // Counted on the broker: the three accepted requests published, the refused ones nothing.
    assert_eq!(stack.take_messages(&ingest, 3, Duration::from_secs(10)).await.len(), 3);
    assert_eq!(stack.depth(&ingest).await, 0);
    // Another client has its own window.
    let rival = api.rival();
    assert_eq!(rival.post("/v1/jobs", &job, None).await.status, 202);
    stop.cancel();
    stack.cleanup().await;
}
