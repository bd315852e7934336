//! `reelfleet backfill`: objects already in a bucket (one that sends no
//! notifications) become jobs, counted on the broker and the object store;
//! a second run makes no new work, and a watching backfill resumes from the
//! position it keeps in the work bucket.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use aws_sdk_s3::primitives::ByteStream;
use reelfleet_cli::{
    backfill::{Backfill, Position, Target},
    fleet::StageName,
};
use reelfleet_core::{s3event::parse_event, topology::WorkQueue};
use reelfleet_tests::{make_clip, TestStack};
use std::{collections::BTreeSet, path::Path, time::Duration};

const ARCHIVE: &str = "archive";
const T: Duration = Duration::from_secs(60);

async fn put(stack: &TestStack, key: &str, path: &Path) {
    stack
        .plain_s3_client()
        .put_object()
        .bucket(ARCHIVE)
        .key(key)
        .body(ByteStream::from_path(path).await.unwrap())
        .send()
        .await
        .unwrap();
}

fn target(prefix: &str) -> Target {
    format!("s3://{ARCHIVE}/{prefix}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_makes_one_job_per_object_and_a_second_run_adds_none() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |s| s.s3.accepted_buckets = vec![ARCHIVE.into()]).await;
    stack.storage.ensure_bucket(ARCHIVE).await.unwrap();
    let clip = make_clip(stack.dir.path(), "c.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let keys = ["old/a.mp4", "old/b c+d é.mp4", "old/deep/e.mp4"];
    for k in keys {
        put(&stack, k, &clip).await;
    }
    // (Folder markers, `…/` keys, are skipped too: s3s-fs stores them as
    // directories and never lists them, so the unit tests cover that.)
    put(&stack, "elsewhere/x.mp4", &clip).await;

    let mut first = Backfill::new(stack.settings(), target("old/"), None, false).await.unwrap();
    let report = first.pass(|_| {}).await.unwrap();
    assert_eq!((report.listed, report.announced, report.skipped), (3, 3, 0), "{report:?}");

    // Ingest admits each object once and hands it to preprocess: counted on the broker.
    let handed = stack.take_messages(&stack.queue(WorkQueue::Preprocess), 3, T).await;
    let jobs: BTreeSet<String> =
        handed.iter().map(|(_, body)| reelfleet_core::envelope::Envelope::parse(body).unwrap().source.key).collect();
    assert_eq!(jobs, keys.iter().map(|k| k.to_string()).collect());

    // Again: ingest sees three more events, knows every source, and hands on nothing.
    let again = Backfill::new(stack.settings(), target("old/"), None, false).await.unwrap().pass(|_| {}).await.unwrap();
    assert_eq!(again.announced, 3);
    let deadline = std::time::Instant::now() + T;
    let ok = stack.dev.fleet.metrics.messages.with_label_values(&["ingest", &stack.queue(WorkQueue::Ingest), "ok"]);
    while ok.get() < 6 {
        assert!(std::time::Instant::now() < deadline, "ingest settled {} of 6 events", ok.get());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.depth(&stack.queue(WorkQueue::Preprocess)).await, 0, "a second backfill made new work");
    let manifests = stack.storage.list(&stack.settings().s3.work_bucket, "jobs/").await.unwrap();
    assert_eq!(manifests.iter().filter(|k| k.ends_with("/manifest.json")).count(), 3, "{manifests:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watching_backfill_announces_only_new_objects_and_resumes_after_a_restart() {
    let stack = TestStack::start_stages(&[], |s| s.s3.accepted_buckets = vec![ARCHIVE.into()]).await;
    stack.storage.ensure_bucket(ARCHIVE).await.unwrap();
    let file = stack.dir.path().join("small.bin");
    std::fs::write(&file, b"not really a video; ingest is not running").unwrap();
    put(&stack, "in/1.mp4", &file).await;
    put(&stack, "in/2.mp4", &file).await;
    let ingest = stack.queue(WorkQueue::Ingest);

    let mut poller = Backfill::new(stack.settings(), target("in/"), None, true).await.unwrap();
    assert_eq!(poller.pass(|_| {}).await.unwrap().announced, 2);
    let events = stack.take_messages(&ingest, 2, T).await;
    let announced: BTreeSet<String> =
        events.iter().flat_map(|(_, body)| parse_event(body).unwrap()).map(|o| o.key).collect();
    assert_eq!(announced, BTreeSet::from(["in/1.mp4".to_string(), "in/2.mp4".to_string()]));

    let nothing_new = poller.pass(|_| {}).await.unwrap();
    assert_eq!((nothing_new.announced, nothing_new.seen), (0, 2));
    put(&stack, "in/3.mp4", &file).await;
    let third = poller.pass(|_| {}).await.unwrap();
    assert_eq!((third.announced, third.seen), (1, 2));
    let events = stack.take_messages(&ingest, 1, T).await;
    assert_eq!(parse_event(&events[0].1).unwrap()[0].key, "in/3.mp4");

    // A new poller (a restarted process) continues from the stored position.
    let key = Position::key(&target("in/"));
    assert!(stack.storage.head(&stack.settings().s3.work_bucket, &key).await.unwrap().is_some());
    let mut restarted = Backfill::new(stack.settings(), target("in/"), None, true).await.unwrap();
    assert_eq!(restarted.position().map(|p| p.announced_total), Some(3));
    assert_eq!(restarted.pass(|_| {}).await.unwrap().announced, 0);
    // Two pollers of one prefix: the one holding a stale position cannot advance it.
    put(&stack, "in/4.mp4", &file).await;
    assert!(poller.pass(|_| {}).await.is_err(), "a stale poller overwrote the position");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stack.depth(&ingest).await <= 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_ingest_would_refuse_is_refused_before_anything_is_announced() {
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let err = Backfill::new(stack.settings(), target(""), None, false).await.unwrap_err();
    assert!(err.to_string().contains("not an upload bucket"), "{err}");
    stack.cleanup().await;
}
