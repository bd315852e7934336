//! Failure semantics of the stage runtime against the real broker: a short
//! retry never waits behind a longer one, a refused publish backs off before
//! its requeue, and a message the broker dead-letters at the delivery limit
//! reaches the dead-letter queue explained, with its job marked failed.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use async_trait::async_trait;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use reelfleet_cli::{
    dlq::{self, DlqFilter},
    fleet::{self, StageName},
};
use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, ATTEMPT_HEADER, SIGNATURE_HEADER},
    error::StageError,
    health::Readiness,
    manifest::{JobManifest, JobStatus},
    metrics::Metrics,
    runtime::{Dispatch, Input, Message, Runtime, Stage},
    storage::Storage,
    topology::WorkQueue,
};
use reelfleet_tests::TestStack;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// What the recording stage does with every message.
#[derive(Clone, Copy)]
enum Answer {
    /// Fails transiently.
    Fail,
    /// Forwards the envelope to this queue.
    Forward(WorkQueue),
}

/// A stage that records when it saw which job at which attempt.
struct Recorder {
    queue: WorkQueue,
    answer: Answer,
    seen: Arc<Mutex<Vec<(String, u32, Instant)>>>,
}

#[async_trait]
impl Stage for Recorder {
    fn name(&self) -> &'static str {
        self.queue.stage()
    }
    fn queues(&self) -> Vec<WorkQueue> {
        vec![self.queue]
    }
    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Envelope(env) = msg.input else { panic!("the test sends envelopes only") };
        self.seen.lock().unwrap().push((env.job_id.clone(), msg.attempt, Instant::now()));
        match self.answer {
            Answer::Fail => Err(StageError::transient("provider", "HTTP 503 from the test")),
            Answer::Forward(queue) => Ok(vec![Dispatch::Next { queue, envelope: env.forward(Vec::new()) }]),
        }
    }
}

fn envelope() -> Envelope {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let source = SourceObject {
        bucket: "uploads".into(),
        key: format!("t/{tag}.mp4"),
        size: 1,
        etag: Some(tag),
        version_id: None,
    };
    Envelope::new(JobKind::Analyze, source)
}

/// A runtime of the stack's settings running `stage` until the returned token is cancelled.
fn run(stack: &TestStack, stage: Recorder) -> (Runtime, CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = stack.settings();
    let storage = Storage::new(&settings.s3);
    let manifests = reelfleet_core::manifest::ManifestStore::new(storage, settings.s3.work_bucket.clone());
    let runtime = Runtime::new(settings, stack.broker.clone(), manifests, Metrics::new(), Readiness::default())
        .expect("the stack's signing key");
    let stop = CancellationToken::new();
    let (rt, token) = (runtime.clone(), stop.clone());
    let task = tokio::spawn(async move { rt.run(Arc::new(stage), token).await });
    (runtime, stop, task)
}

/// When `job` was seen at `attempt`, waiting up to `timeout`.
async fn seen_at(seen: &Mutex<Vec<(String, u32, Instant)>>, job: &str, attempt: u32, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = seen.lock().unwrap().iter().find(|(j, a, _)| j == job && *a == attempt).map(|s| s.2) {
            return at;
        }
        assert!(Instant::now() < deadline, "job {job} was not seen at attempt {attempt} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consumers(stack: &TestStack, queue: &str) -> u32 {
    let channel = stack.broker.channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(queue.into(), passive, Default::default()).await.unwrap().consumer_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_retry_never_waits_behind_a_longer_one() {
    let stack = TestStack::start_stages(&[], |s| {
        s.retry.max_attempts = 10;
        s.retry.base_delay_ms = 500;
        s.retry.max_delay_ms = 8_000;
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let queue = WorkQueue::Postprocess;
    let (_runtime, stop, task) = run(&stack, Recorder { queue, answer: Answer::Fail, seen: seen.clone() });

    // The long one first: after four failures it waits 8 s, and it heads the line.
    let (long, short) = (envelope(), envelope());
    for (env, attempt) in [(&long, 4), (&short, 0)] {
        let msg = stack.signed(queue, env).header(ATTEMPT_HEADER, HeaderValue::Int(attempt));
        stack.publish(msg).await;
        seen_at(&seen, &env.job_id, attempt as u32, Duration::from_secs(20)).await;
    }
    let short_failed = seen_at(&seen, &short.job_id, 0, Duration::ZERO).await;
    let short_back = seen_at(&seen, &short.job_id, 1, Duration::from_secs(5)).await;
    assert!(
        short_back - short_failed < Duration::from_secs(3),
        "the 0.5 s retry came back after {:?}",
        short_back - short_failed
    );
    let long_failed = seen_at(&seen, &long.job_id, 4, Duration::ZERO).await;
    let long_back = seen_at(&seen, &long.job_id, 5, Duration::from_secs(20)).await;
    assert!(short_back < long_back, "the short retry waited behind the long one");
    assert!(
        long_back - long_failed >= Duration::from_millis(7_500),
        "the 8 s retry came back after {:?}",
        long_back - long_failed
    );

    stop.cancel();
    task.await.unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_publish_backs_off_before_the_requeue() {
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let queue = WorkQueue::Preprocess;
    let answer = Answer::Forward(WorkQueue::Postprocess);
    let (_runtime, stop, task) = run(&stack, Recorder { queue, answer, seen: seen.clone() });

    // Once both consumers have declared the topology, the next stage's queue
    // goes: every forward is returned unroutable, as a refused publish.
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumers(&stack, &stack.queue(queue)).await == 0
        || consumers(&stack, &stack.topology.broker_dead_letter_queue(queue)).await == 0
    {
        assert!(Instant::now() < deadline, "the runtime never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = stack.broker.channel().await.unwrap();
    channel.queue_delete(stack.queue(WorkQueue::Postprocess).as_str().into(), Default::default()).await.unwrap();

    let env = envelope();
    stack.publish(stack.signed(queue, &env)).await;
    seen_at(&seen, &env.job_id, 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let times: Vec<Instant> = seen.lock().unwrap().iter().map(|s| s.2).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 200-400 ms, 400-800 ms, 800-1600 ms, ...: at most five tries in 4 s.
    assert!((2..=5).contains(&times.len()), "{} tries in 4 s, gaps {gaps:?}", times.len());
    assert!(gaps[0] >= Duration::from_millis(190), "gaps {gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "the backoff does not grow: {gaps:?}");

    stop.cancel();
    task.await.unwrap();
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_past_the_delivery_limit_is_dead_lettered_explained_and_fails_its_job() {
    let stack = TestStack::start_stages(&[], |s| s.broker.delivery_limit = 2).await;
    let queue = WorkQueue::Preprocess;
    let work = stack.queue(queue);
    let env = envelope();
    stack.manifests.create(&mut JobManifest::new(&env)).await.unwrap();
    let body = env.to_bytes();
    let signature = stack.signer().sign(&work, &body);
    stack.publish(Outgoing::to_queue(&work, body).header(SIGNATURE_HEADER, HeaderValue::Text(signature.clone()))).await;

    // A consumer that never settles the message: each delivery goes back, until
    // the broker gives up on it at the delivery limit.
    let channel = stack.broker.channel().await.unwrap();
    let dlx = stack.topology.broker_dead_letter_queue(queue);
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.depth(&dlx).await == 0 {
        assert!(Instant::now() < deadline, "the broker kept redelivering after {deliveries} deliveries");
        match channel.basic_get(work.as_str().into(), BasicGetOptions::default()).await.unwrap() {
            Some(msg) => {
                deliveries += 1;
                msg.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(deliveries > 2, "{deliveries} deliveries before the delivery limit of 2");
    assert_eq!((stack.depth(&work).await, stack.depth(&dlx).await), (0, 1));

    // The stage that owns the queue comes up and explains the dead letter.
    let settings = Arc::new(stack.settings().clone());
    let metrics = Metrics::new();
    let stages = fleet::build_stages(&settings, &stack.storage, &metrics, &[StageName::Preprocess], &[]).await.unwrap();
    let stop = CancellationToken::new();
    let worker = fleet::start(settings.clone(), stages, metrics, stop.clone()).await.unwrap();

    let failed = stack.wait_for(&env.job_id, Duration::from_secs(20), |m| m.status == JobStatus::Failed).await;
    let error = failed.error.unwrap();
    assert_eq!((error.stage.as_str(), error.code.as_str()), ("preprocess", "delivery_limit"));
    assert!(error.message.contains("delivery limit"), "{}", error.message);

    // What `reelfleet dlq ls` lists.
    let held = dlq::fetch(&settings, &stack.broker, &DlqFilter::default()).await.unwrap();
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0];
    assert_eq!(
        (d.stage.as_str(), d.error_class.as_str(), d.error_code.as_str(), d.attempts),
        ("preprocess", "transient", "delivery_limit", 1)
    );
    assert_eq!((d.queue.as_str(), d.job.as_deref()), (work.as_str(), Some(env.job_id.as_str())));
    assert!(d.last_failure.is_some() && d.first_failure.is_some());

    let dead = stack.take_messages(&stack.topology.dead_letter_queue(queue), 1, Duration::from_secs(5)).await;
    let (headers, dead_body) = &dead[0];
    assert_eq!(headers[SIGNATURE_HEADER], signature, "the signature travels with the dead letter");
    assert_eq!(dead_body, &env.to_bytes());
    assert!(!headers.keys().any(|k| k.starts_with("x-death")), "broker history is not carried over: {headers:?}");
    assert_eq!(stack.depth(&stack.topology.broker_dead_letter_queue(queue)).await, 0);
    let text = reqwest::get(format!("http://{}/metrics", worker.health_addr)).await.unwrap().text().await.unwrap();
    let counted = text.lines().any(|l| {
        l.starts_with("reelfleet_failures_total{")
            && ["class=\"transient\"", "code=\"delivery_limit\"", "stage=\"preprocess\""].iter().all(|p| l.contains(p))
            && l.ends_with(" 1")
    });
    assert!(counted, "{text}");

    stop.cancel();
    worker.wait().await;
    stack.cleanup().await;
}
