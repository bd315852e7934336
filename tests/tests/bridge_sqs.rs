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
