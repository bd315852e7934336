//! AWS S3's front door against moto's server (S3, SQS and SNS, a second S3
//! implementation): real bucket notifications to SQS, the same through SNS
//! with raw delivery off and on, an EventBridge event, S3's test event and a
//! poison message, relayed by the bridge to `<ns>.uploads`. Checked from the
//! broker (what ingest's queue receives) and from SQS (what is left there).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::QueueAttributeName;
use reelfleet_bridge::{sqs_client, SqsBridge};
use reelfleet_core::{
    health::Readiness,
    metrics::Metrics,
    s3event::parse_event,
    settings::{Secret, Settings},
    topology::WorkQueue,
};
use reelfleet_tests::{moto::Moto, TestStack};
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

async fn moto() -> Moto {
    Moto::start().await.unwrap_or_else(|e| panic!("{e:#}"))
}

fn s3(url: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn sns(url: &str) -> aws_sdk_sns::Client {
    let config = aws_sdk_sns::Config::builder()
        .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
        .region(aws_sdk_sns::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_sns::config::Credentials::new("testing", "testing", None, None, "test"))
        .build();
    aws_sdk_sns::Client::from_conf(config)
}

/// The stack's settings with SQS on moto: short polls, a 10 s visibility timeout.
fn bridge_settings(stack: &TestStack, moto: &Moto) -> Settings {
    let mut settings = stack.settings().clone();
    settings.sqs.endpoint = Some(moto.url.clone());
    settings.sqs.access_key = Secret::new("testing");
    settings.sqs.secret_key = Secret::new("testing");
    settings.sqs.wait_secs = 1;
    settings.sqs.visibility_timeout_secs = 10;
    settings
}

/// Messages in the queue, visible or in flight.
async fn left_in(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> u64 {
    reelfleet_tests::moto::messages_left(sqs, queue_url).await.unwrap()
}

/// Keys announced by the S3 events waiting in `queue` (each must hold one record).
async fn relayed_keys(stack: &TestStack, queue: &str, n: usize) -> BTreeSet<String> {
    let got = stack.take_messages(queue, n, Duration::from_secs(60)).await;
    got.iter()
        .map(|(_, body)| {
            let objects = parse_event(body).expect("ingest can read what the bridge relays");
            assert_eq!(objects.len(), 1, "one record per relayed event");
            format!("{}/{}", objects[0].bucket, objects[0].key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_notifications_from_sqs_sns_and_eventbridge_reach_ingest_once_and_poison_is_left_to_the_redrive() {
    let moto = moto().await;
    // A namespace whose ingest queue nobody consumes: what arrives there is what ingest would get.
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let mut settings = bridge_settings(&stack, &moto);
    let sqs = sqs_client(&settings.sqs);

    // The queue S3 notifies, with a redrive policy to a dead-letter queue after 2 receives.
    let dlq_url = sqs.create_queue().queue_name("uploads-dlq").send().await.unwrap().queue_url.unwrap();
    let dlq_arn = "arn:aws:sqs:us-east-1:123456789012:uploads-dlq";
    let queue_url = sqs
        .create_queue()
        .queue_name("uploads-events")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    settings.sqs.queue_url = queue_url.clone();
    let queue_arn = "arn:aws:sqs:us-east-1:123456789012:uploads-events";

    // A bucket notifying the queue directly, as AWS S3 does.
    let s3 = s3(&moto.url);
    s3.create_bucket().bucket("uploads").send().await.unwrap();
    let notify = aws_sdk_s3::types::NotificationConfiguration::builder()
        .queue_configurations(
            aws_sdk_s3::types::QueueConfiguration::builder()
                .queue_arn(queue_arn)
                .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                .build()
                .unwrap(),
        )
        .build();
    s3.put_bucket_notification_configuration()
        .bucket("uploads")
        .notification_configuration(notify)
        .send()
        .await
        .unwrap();
    for key in ["plain.mp4", "dir/été clip+1 (final).mp4"] {
        s3.put_object().bucket("uploads").key(key).body(ByteStream::from(vec![7u8; 1024])).send().await.unwrap();
    }
    // Multipart: two parts, the first at S3's 5 MiB minimum.
    let up = s3.create_multipart_upload().bucket("uploads").key("big/multi part.mp4").send().await.unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, len) in [(1, 5 * 1024 * 1024), (2, 1024)] {
        let p = s3
            .upload_part()
            .bucket("uploads")
            .key("big/multi part.mp4")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(vec![1u8; len]))
            .send()
            .await
            .unwrap();
        parts.push(aws_sdk_s3::types::CompletedPart::builder().part_number(n).e_tag(p.e_tag().unwrap()).build());
    }
    s3.complete_multipart_upload()
        .bucket("uploads")
        .key("big/multi part.mp4")
        .upload_id(id)
        .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();

    // Through SNS: one subscription with raw delivery off (wrapped), one raw.
    let sns = sns(&moto.url);
    let topic = sns.create_topic().name("uploads-topic").send().await.unwrap().topic_arn.unwrap();
    for (name, raw) in [("sns-wrapped", "false"), ("sns-raw", "true")] {
        sqs.create_queue().queue_name(name).send().await.unwrap();
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
            .attributes("RawMessageDelivery", raw)
            .send()
            .await
            .unwrap();
    }
    let fixture = |name: &str| {
        std::fs::read_to_string(format!("{}/fixtures/s3-events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    sns.publish().topic_arn(&topic).message(fixture("aws-put.json")).send().await.unwrap();
    // An EventBridge rule's target, the test event S3 sends, and a message nobody can read.
    for body in
        [fixture("eventbridge-object-created.json"), fixture("aws-test-event.json"), "{\"not\": \"an event\"}".into()]
    {
        sqs.send_message().queue_url(&queue_url).message_body(body).send().await.unwrap();
    }

    // One bridge per queue, as a deployment would run them.
    let mut bridges = Vec::new();
    let stop = CancellationToken::new();
    for url in [
        queue_url.clone(),
        queue_url.replace("uploads-events", "sns-wrapped"),
        queue_url.replace("uploads-events", "sns-raw"),
    ] {
        let mut s = settings.clone();
        s.sqs.queue_url = url;
        let bridge = SqsBridge::new(&s, stack.broker.clone(), &Metrics::new(), Readiness::default()).unwrap();
        let stop = stop.clone();
        bridges.push(tokio::spawn(async move { bridge.run(stop).await }));
    }

    let ingest = stack.queue(WorkQueue::Ingest);
    // Seven events: moto also announces the start of a multipart upload as a
    // Put (AWS S3 does not); ingest's claim on the job id absorbs such repeats.
    let keys = relayed_keys(&stack, &ingest, 7).await;
    let expected: BTreeSet<String> = [
        "uploads/plain.mp4",
        "uploads/dir/été clip+1 (final).mp4",
        "uploads/big/multi part.mp4",
        "uploads/raw/My Holiday+clip ü.mp4",
        // aws-put.json through SNS, wrapped and raw: the same object twice (ingest's job id makes it one job).
        "uploads/videos/red flower été.mp4",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys, expected, "relayed keys");

    // Relayed and test-event messages are deleted; the poison one goes to the
    // dead-letter queue after two receives, never to the broker.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (left, dead) = (left_in(&sqs, &queue_url).await, left_in(&sqs, &dlq_url).await);
        if left == 0 && dead == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "SQS still holds {left} message(s), its DLQ {dead}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(stack.depth(&ingest).await, 0, "something was relayed twice or the poison reached the broker");
    stop.cancel();
    for b in bridges {
        b.await.unwrap();
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_deleted_only_after_the_broker_confirmed_its_records() {
    let moto = moto().await;
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let mut settings = bridge_settings(&stack, &moto);
    // A namespace whose uploads exchange does not exist yet: every publish fails.
    settings.namespace = format!("{}-late", settings.namespace);
    let sqs = sqs_client(&settings.sqs);
    let queue_url = sqs.create_queue().queue_name("late").send().await.unwrap().queue_url.unwrap();
    settings.sqs.queue_url = queue_url.clone();
    let body =
        std::fs::read_to_string(format!("{}/fixtures/s3-events/aws-put.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    sqs.send_message().queue_url(&queue_url).message_body(body).send().await.unwrap();

    let metrics = Metrics::new();
    let bridge = SqsBridge::new(&settings, stack.broker.clone(), &metrics, Readiness::default()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { bridge.run(stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics.render().contains("reelfleet_bridge_messages_total{outcome=\"failed\"} 1") {
        assert!(Instant::now() < deadline, "the bridge never tried: {}", metrics.render());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left_in(&sqs, &queue_url).await, 1, "a message was deleted though its record was not confirmed");

    // Once the exchange exists, the same message comes back after its visibility timeout and goes through.
    let topology = reelfleet_core::topology::Topology::from_settings(&settings);
    stack.broker.declare(&topology).await.unwrap();
    let ingest = topology.queue(WorkQueue::Ingest);
    let got = stack.take_messages(&ingest, 1, Duration::from_secs(60)).await;
    assert_eq!(parse_event(&got[0].1).unwrap()[0].key, "videos/red flower été.mp4");
    let deadline = Instant::now() + Duration::from_secs(30);
    while left_in(&sqs, &queue_url).await != 0 {
        assert!(Instant::now() < deadline, "the relayed message was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await.unwrap();
    // The extra namespace's queues go too.
    if let Ok(ch) = stack.broker.channel().await {
        for q in topology.all_queue_names() {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for x in topology.exchange_names() {
            let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
        }
    }
    stack.cleanup().await;
}

/// What the recording proxy in front of moto saw: each request's
/// `Authorization` and `X-Amz-Security-Token` headers and body, and each answer.
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<Exchange>>>);

/// One request through the proxy: `Authorization`, `X-Amz-Security-Token`, body, answer.
type Exchange = (String, Option<String>, String, String);

/// A proxy to `upstream` that records every exchange (how the bridge's own
/// requests are signed is only visible on the wire).
async fn recording_proxy(upstream: String) -> (Seen, String) {
    use axum::{body::Bytes, extract::State, http::HeaderMap, response::IntoResponse};
    let seen = Seen::default();
    let http = reqwest::Client::new();
    let handler = move |State(seen): State<Seen>,
                        method: axum::http::Method,
                        uri: axum::http::Uri,
                        headers: HeaderMap,
                        body: Bytes| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut req = http.request(method, format!("{upstream}{path}"));
            for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
                req = req.header(k, v);
            }
            let resp = req.body(body.clone()).send().await.unwrap();
            let status = resp.status();
            let answer = resp.bytes().await.unwrap();
            let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
            seen.0.lock().unwrap().push((
                header("authorization").unwrap_or_default(),
                header("x-amz-security-token"),
                String::from_utf8_lossy(&body).into_owned(),
                String::from_utf8_lossy(&answer).into_owned(),
            ));
            (axum::http::StatusCode::from_u16(status.as_u16()).unwrap(), answer).into_response()
        }
    };
    let app = axum::Router::new().fallback(handler).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (seen, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_credentials_aws_the_bridge_assumes_its_iam_role_from_a_web_identity_token_as_under_irsa() {
    let moto = moto().await;
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let (seen, proxy) = recording_proxy(moto.url.clone()).await;
    let queue_url = moto.sqs().create_queue().queue_name("irsa").send().await.unwrap().queue_url.unwrap();
    let body =
        std::fs::read_to_string(format!("{}/fixtures/s3-events/aws-put.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    moto.sqs().send_message().queue_url(&queue_url).message_body(body).send().await.unwrap();

    // No keys anywhere: the settings name the chain, the process gets what EKS
    // mounts for a service account with an IAM role.
    let mut settings = bridge_settings(&stack, &moto);
    settings.sqs.credentials = reelfleet_core::settings::CredentialSource::Aws;
    settings.sqs.access_key = Secret::default();
    settings.sqs.secret_key = Secret::default();
    settings.sqs.endpoint = Some(proxy.clone());
    settings.sqs.queue_url = queue_url.clone();
    let dir = stack.dir.path();
    let config = dir.join("bridge.toml");
    std::fs::write(&config, settings.to_toml()).unwrap();
    let token = format!("eyJ.irsa-test.{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("token"), &token).unwrap();
    let role = "arn:aws:iam::123456789012:role/reelfleet-bridge";
    let mut cmd = std::process::Command::new(reelfleet_tests::fleet::reelfleet_binary().unwrap());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REELFLEET_") || k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    let log = dir.join("bridge.log");
    // Killed when dropped, so a failing assertion leaves no bridge behind.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let bridge = cmd
        .args(["--config", config.to_str().unwrap(), "worker", "bridge-sqs"])
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", dir.join("token"))
        .env("AWS_ROLE_ARN", role)
        .env("AWS_ROLE_SESSION_NAME", "reelfleet-bridge-test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_STS", &proxy)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let bridge = KillOnDrop(bridge);

    let ingest = stack.queue(WorkQueue::Ingest);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.depth(&ingest).await < 1 || left_in(&moto.sqs(), &queue_url).await != 0 {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < deadline, "nothing relayed with the role's credentials; bridge log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(bridge);
    let got = stack.take_messages(&ingest, 1, Duration::from_secs(10)).await;
    assert_eq!(parse_event(&got[0].1).unwrap()[0].key, "videos/red flower été.mp4");

    // On the wire: the token exchanged for the role's temporary credentials,
    // and every SQS call signed with them (key id and session token).
    let seen = seen.0.lock().unwrap().clone();
    let (_, _, sts_request, sts_answer) = seen
        .iter()
        .find(|(_, _, body, _)| body.contains("Action=AssumeRoleWithWebIdentity"))
        .expect("the bridge called STS AssumeRoleWithWebIdentity");
    assert!(sts_request.contains(&format!("WebIdentityToken={token}")), "{sts_request}");
    assert!(
        sts_request.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Freelfleet-bridge"),
        "{sts_request}"
    );
    let field = |name: &str| {
        let start = sts_answer.find(&format!("<{name}>")).map(|i| i + name.len() + 2).unwrap();
        sts_answer[start..].split('<').next().unwrap().to_string()
    };
    let (key_id, session) = (field("AccessKeyId"), field("SessionToken"));
    let sqs_calls: Vec<_> = seen.iter().filter(|(_, _, body, _)| !body.contains("AssumeRoleWithWebIdentity")).collect();
    assert!(!sqs_calls.is_empty());
    for (auth, token_header, body, _) in sqs_calls {
        assert!(auth.contains(&format!("Credential={key_id}/")), "an SQS call not signed by the role: {auth} {body}");
        assert_eq!(token_header.as_deref(), Some(session.as_str()), "an SQS call without the role's session token");
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_versioned_bucket_the_intake_gives_an_object_the_job_id_its_bucket_event_gives() {
    let moto = moto().await;
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let s3 = s3(&moto.url);
    s3.create_bucket().bucket("versioned").send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket("versioned")
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let put = s3.put_object().bucket("versioned").key("v/clip.mp4").body(ByteStream::from(vec![3u8; 2048])).send();
    let put = put.await.unwrap();
    let (version, etag) = (put.version_id.unwrap(), put.e_tag.unwrap().trim_matches('"').to_string());

    // The bucket's door: AWS S3's notification names the version (moto's
    // leaves it out, so the recorded AWS event is filled in with this
    // object), and ingest derives the job id from it.
    let fixture =
        std::fs::read_to_string(format!("{}/fixtures/s3-events/aws-put.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut event: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    let s3_part = &mut event["Records"][0]["s3"];
    s3_part["bucket"]["name"] = "versioned".into();
    s3_part["object"]["key"] = "v/clip.mp4".into();
    s3_part["object"]["size"] = 2048.into();
    s3_part["object"]["eTag"] = etag.clone().into();
    s3_part["object"]["versionId"] = version.clone().into();
    let objects = parse_event(event.to_string().as_bytes()).unwrap();
    let o = &objects[0];
    assert_eq!(o.version_id.as_deref(), Some(version.as_str()));
    // As ingest makes it (crates/ingest/src/lib.rs): the event's bucket, key, ETag and version.
    let from_event = reelfleet_core::envelope::SourceObject {
        bucket: o.bucket.clone(),
        key: o.key.clone(),
        size: o.size,
        etag: o.etag.clone(),
        version_id: o.version_id.clone(),
    }
    .job_id();

    // The intake's door, resolving the object on the store.
    let mut settings = stack.settings().clone();
    settings.s3.endpoint = moto.url.clone();
    settings.s3.access_key = Secret::new("testing");
    settings.s3.secret_key = Secret::new("testing");
    settings.s3.accepted_buckets = vec!["versioned".into()];
    let acceptor = reelfleet_intake::accept::Acceptor::new(
        std::sync::Arc::new(settings.clone()),
        reelfleet_core::storage::Storage::new(&settings.s3),
        stack.broker.clone(),
    )
    .unwrap();
    let spec = reelfleet_intake::jobs::parse_job(&serde_json::json!({"source": "s3://versioned/v/clip.mp4"})).unwrap();
    let item = reelfleet_intake::accept::Item { spec: &spec, key: None, index: None };
    let planned = acceptor.plan_all("acme", "intake", None, vec![item]).await.unwrap().unwrap();
    assert_eq!(planned[0].envelope.source.version_id.as_deref(), Some(version.as_str()));
    assert_eq!(planned[0].envelope.job_id, from_event, "one object, one job, whichever door");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_versioned_bucket_backfill_announces_current_versions_with_their_ids() {
    use futures::StreamExt as _;
    let moto = moto().await;
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let s3 = s3(&moto.url);
    let bucket = "versioned-archive";
    s3.create_bucket().bucket(bucket).send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let put = |key: String, body: Vec<u8>| {
        let s3 = s3.clone();
        async move {
            let out = s3.put_object().bucket(bucket).key(&key).body(ByteStream::from(body)).send().await.unwrap();
            (key, out.version_id.unwrap(), out.e_tag.unwrap().trim_matches('"').to_string())
        }
    };
    // Over a thousand current objects, so the listing takes two pages.
    let mut current: Vec<(String, String, String)> =
        futures::stream::iter((0..1000).map(|i| put(format!("v/many/{i:04}.mp4"), vec![1u8; 16 + i % 7])))
            .buffer_unordered(16)
            .collect()
            .await;
    // An object written twice: only its second version is current.
    put("v/twice.mp4".into(), vec![2u8; 64]).await;
    current.push(put("v/twice.mp4".into(), vec![3u8; 96]).await);
    // A deleted object: its current version is a delete marker.
    put("v/gone.mp4".into(), vec![4u8; 32]).await;
    s3.delete_object().bucket(bucket).key("v/gone.mp4").send().await.unwrap();

    let mut settings = stack.settings().clone();
    settings.s3.endpoint = moto.url.clone();
    settings.s3.access_key = Secret::new("testing");
    settings.s3.secret_key = Secret::new("testing");
    settings.s3.accepted_buckets = vec![bucket.into()];
    let target = format!("s3://{bucket}/v/").parse().unwrap();
    let mut backfill = reelfleet_cli::backfill::Backfill::new(&settings, target, None, false).await.unwrap();
    let report = backfill.pass(|_| {}).await.unwrap();
    assert_eq!((report.listed, report.announced), (1001, 1001), "{report:?}");

    let ingest = stack.queue(WorkQueue::Ingest);
    let events = stack.take_messages(&ingest, 1001, Duration::from_secs(60)).await;
    let announced: BTreeSet<(String, String)> = events
        .iter()
        .flat_map(|(_, body)| parse_event(body).unwrap())
        .map(|o| {
            // As ingest makes the job id (crates/ingest/src/lib.rs) ...
            let id = reelfleet_core::envelope::SourceObject {
                bucket: o.bucket.clone(),
                key: o.key.clone(),
                size: o.size,
                etag: o.etag.clone(),
                version_id: o.version_id.clone(),
            }
            .job_id();
            (o.key, id)
        })
        .collect();
    // ... it is the one the bucket's own event for that version gives.
    let expected: BTreeSet<(String, String)> = current
        .iter()
        .map(|(key, version, etag)| {
            let mut event: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(format!("{}/fixtures/s3-events/aws-put.json", env!("CARGO_MANIFEST_DIR")))
                    .unwrap(),
            )
            .unwrap();
            let o = &mut event["Records"][0]["s3"];
            o["bucket"]["name"] = bucket.into();
            o["object"]["key"] = key.clone().into();
            o["object"]["eTag"] = etag.clone().into();
            o["object"]["versionId"] = version.clone().into();
            let parsed = &parse_event(event.to_string().as_bytes()).unwrap()[0];
            let id = reelfleet_core::envelope::SourceObject {
                bucket: parsed.bucket.clone(),
                key: parsed.key.clone(),
                size: parsed.size,
                etag: parsed.etag.clone(),
                version_id: parsed.version_id.clone(),
            }
            .job_id();
            (key.clone(), id)
        })
        .collect();
    assert_eq!(announced.len(), 1001, "an object announced twice");
    let apart: Vec<_> = expected.difference(&announced).take(3).collect();
    assert!(apart.is_empty(), "a backfilled object and its bucket event would be two jobs, e.g. {apart:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&ingest).await, 0, "an old version or a deleted object was announced");
    stack.cleanup().await;
}
