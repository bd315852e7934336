//! `reelfleet submit --from FILE.jsonl` on the dev stack: objects and URLs
//! from one file become jobs and complete; the same file again makes no new
//! work (counted on the origin server and the events exchange, not in the
//! fleet's code); one bad line or missing object publishes nothing (counted
//! on the broker and the work bucket).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use axum::{extract::State, routing::get};
use reelfleet_cli::{fleet::StageName, submit_from};
use reelfleet_core::{
    envelope::SourceObject,
    manifest::{JobManifest, JobStatus},
    topology::WorkQueue,
};
use reelfleet_tests::{make_clip, TestStack};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// An accepted upload bucket that sends no bucket event: every job comes from the file.
const SRC: &str = "submit-src";

/// A local origin serving one clip, counting its requests.
async fn origin(clip: Vec<u8>) -> (Arc<AtomicUsize>, SocketAddr) {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = (hits.clone(), Arc::new(clip));
    let app = axum::Router::new()
        .route(
            "/v/clip.mp4",
            get(|State((hits, clip)): State<(Arc<AtomicUsize>, Arc<Vec<u8>>)>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                clip.to_vec()
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (hits, addr)
}

async fn finished(stack: &TestStack, job: &str) -> JobManifest {
    stack
        .wait_for(job, Duration::from_secs(240), |m| matches!(m.status, JobStatus::Completed | JobStatus::Failed))
        .await
}

/// Waits until the ingest and pull queues are drained (their messages taken and acknowledged).
async fn drained(stack: &TestStack) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for q in [WorkQueue::Ingest, WorkQueue::Pull] {
        let name = stack.queue(q);
        while stack.depth(&name).await > 0 {
            assert!(std::time::Instant::now() < deadline, "{name} not drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Consumed is not yet acknowledged: give the stages their moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_of_objects_and_urls_completes_and_the_same_file_again_makes_no_new_work() {
    let stack = TestStack::start_stages(&StageName::EVERY, |s| {
        s.s3.accepted_buckets = vec![SRC.into()];
        s.pull.allow_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    stack.storage.ensure_bucket(SRC).await.unwrap();
    let clip = make_clip(stack.dir.path(), "clip.mp4", "testsrc2=size=320x240:rate=12", 1.0, &["-c:v", "libx264"]);
    let bytes = std::fs::read(&clip).unwrap();
    let key = "from file/été +1.mp4";
    stack.storage.put_bytes(SRC, key, bytes.clone(), "video/mp4").await.unwrap();
    let etag = stack.storage.head(SRC, key).await.unwrap().unwrap().etag;
    let object_job = SourceObject { bucket: SRC.into(), key: key.into(), size: 0, etag, version_id: None }.job_id();
    let (hits, addr) = origin(bytes).await;
    let url = format!("http://{addr}/v/clip.mp4");
    let events = stack.bind_events("job.completed").await;
    let text = format!(
        "# one object, one URL with its metadata\n\
         s3://{SRC}/{key}\n\
         \n\
         {{\"source\": \"{url}\", \"priority\": 4, \"metadata\": {{\"order\": \"A-7\"}}}}\n"
    );

    let first = submit_from::submit(stack.settings(), &text, None, false, &()).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].job_id, object_job, "an object's job id is the one its bucket event would give");
    assert_eq!((first[0].line, first[1].line), (2, 4));
    assert_eq!(first[1].queue, stack.queue(WorkQueue::Pull));
    let object = finished(&stack, &first[0].job_id).await;
    let pulled = finished(&stack, &first[1].job_id).await;
    assert_eq!(object.status, JobStatus::Completed, "{:?}", object.error);
    assert_eq!(pulled.status, JobStatus::Completed, "{:?}", pulled.error);
    let request = pulled.request.as_ref().unwrap();
    assert_eq!((request.via.as_str(), request.origin_url.as_deref()), ("submit", Some(url.as_str())));
    assert_eq!(request.metadata["order"], "A-7");
    assert_eq!(pulled.priority, 4);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(stack.take_messages(&events, 2, Duration::from_secs(30)).await.len(), 2);

    // The same file again: the same job ids, no second download, no second completion.
    let again = submit_from::submit(stack.settings(), &text, None, false, &()).await.unwrap();
    let ids = |a: &[submit_from::Accepted]| a.iter().map(|a| a.job_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&first));
    drained(&stack).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the URL was not fetched again");
    assert_eq!(stack.depth(&events).await, 0, "no job completed a second time");
    for (before, job) in [(&object, &first[0].job_id), (&pulled, &first[1].job_id)] {
        let after = stack.manifests.load(job).await.unwrap().unwrap();
        assert_eq!(after.updated_at, before.updated_at, "{job}'s manifest is untouched");
    }
    assert_eq!(stack.manifests.job_ids().await.unwrap().len(), 2);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_line_or_missing_object_submits_nothing_and_a_dry_run_publishes_nothing() {
    let stack = TestStack::start_stages(&[], |s| s.s3.accepted_buckets = vec![SRC.into()]).await;
    stack.broker.declare(&stack.topology).await.unwrap();
    stack.storage.ensure_bucket(SRC).await.unwrap();
    stack.storage.put_bytes(SRC, "a.mp4", b"not checked here".to_vec(), "video/mp4").await.unwrap();
    let settings = stack.settings();

    let bad_field =
        format!("s3://{SRC}/a.mp4\n{{\"source\": \"https://cdn.example.com/x.mp4\", \"quality\": \"8k\"}}\n");
    let e = submit_from::submit(settings, &bad_field, None, false, &()).await.unwrap_err().to_string();
    assert!(e.contains("line 2: quality:") && e.contains("nothing was submitted"), "{e}");

    let missing = format!("s3://{SRC}/a.mp4\nhttps://cdn.example.com/x.mp4\ns3://{SRC}/gone.mp4\n");
    let e = submit_from::submit(settings, &missing, None, false, &()).await.unwrap_err().to_string();
    assert!(e.contains("line 3: source: s3://submit-src/gone.mp4 does not exist"), "{e}");

    let bucket = format!("s3://{SRC}/a.mp4\ns3://elsewhere/a.mp4\n");
    let e = submit_from::submit(settings, &bucket, None, false, &()).await.unwrap_err().to_string();
    assert!(e.contains("line 2: source: bucket \"elsewhere\" is not an upload bucket"), "{e}");

    let good = format!("s3://{SRC}/a.mp4\nhttps://cdn.example.com/x.mp4\n");
    let dry = submit_from::submit(settings, &good, None, true, &()).await.unwrap();
    assert_eq!(dry.len(), 2);
    // Another key is another URL job; the object's job stays the same.
    let other = submit_from::submit(settings, &good, Some("run-2"), true, &()).await.unwrap();
    assert_eq!(other[0].job_id, dry[0].job_id);
    assert_ne!(other[1].job_id, dry[1].job_id);

    for q in [WorkQueue::Ingest, WorkQueue::Pull] {
        assert_eq!(stack.depth(&stack.queue(q)).await, 0, "nothing published to {q}");
    }
    let records = stack.storage.list(&settings.s3.work_bucket, "intake/jobs/").await.unwrap();
    assert!(records.is_empty(), "no acceptance record: {records:?}");

    // The same file without --dry-run: both published, both recorded.
    submit_from::submit(settings, &good, None, false, &()).await.unwrap();
    assert_eq!(stack.depth(&stack.queue(WorkQueue::Ingest)).await, 1);
    assert_eq!(stack.depth(&stack.queue(WorkQueue::Pull)).await, 1);
    assert_eq!(stack.storage.list(&settings.s3.work_bucket, "intake/jobs/").await.unwrap().len(), 2);
    stack.cleanup().await;
}
