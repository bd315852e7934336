//! Exactly once, checked from outside the fleet: the object store's
//! compare-and-swap, the broker's queue counts and the provider's usage log.
//! Duplicated messages, two copies in flight at once and a job whose answer
//! was paid for before a crash each make the stage run (and pay) once.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::Outgoing,
    envelope::{Envelope, JobKind, SourceObject, Tier},
    manifest::{Charge, JobManifest, JobStatus, Update},
    topology::WorkQueue,
};
use reelfleet_inference::ledger::{entry_key, LedgerEntry};
use reelfleet_tests::{make_clip, TestStack};
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(90);

fn signed(stack: &TestStack, queue: WorkQueue, env: &Envelope) -> Outgoing {
    stack.signed(queue, env)
}

/// Waits until the worker has settled (acked as handled) `expected` messages of `queue`.
async fn wait_settled(stack: &TestStack, queue: WorkQueue, expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let counter = stack.dev.fleet.metrics.messages.with_label_values(&[queue.stage(), &stack.queue(queue), "ok"]);
    while counter.get() < expected {
        assert!(Instant::now() < deadline, "{queue} settled {} of {expected} messages", counter.get());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_manifest_updates_all_land_on_the_embedded_s3() {
    let stack = TestStack::start_stages(&[], |_| {}).await;
    let source = SourceObject {
        bucket: "uploads".into(),
        key: "race.mp4".into(),
        size: 1,
        etag: Some("e".into()),
        version_id: None,
    };
    let env = Envelope::new(JobKind::Analyze, source);
    let mut m = JobManifest::new(&env);
    assert!(stack.manifests.create(&mut m).await.unwrap());
    assert!(!stack.manifests.create(&mut m).await.unwrap(), "a second create must lose");
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let store = stack.manifests.clone();
            let job = env.job_id.clone();
            tokio::spawn(async move {
                store
                    .update(&job, |m| {
                        m.charges.push(Charge { request_id: Some(format!("r{i}")), ..Default::default() });
                        Update::Write(())
                    })
                    .await
                    .expect("update")
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let m = stack.manifests.load(&env.job_id).await.unwrap().unwrap();
    let ids: HashSet<_> = m.charges.iter().filter_map(|c| c.request_id.clone()).collect();
    assert_eq!(ids.len(), 24, "every writer's change survives: {} of 24", ids.len());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_delivered_twice_at_once_is_forwarded_once() {
    let stack = TestStack::start_stages(&[StageName::Preprocess], |s| {
        s.runtime.claim_lease_secs = 3;
        s.broker.prefetch = 4;
    })
    .await;
    let clip = make_clip(stack.dir.path(), "twice.mp4", "testsrc2=size=320x240:rate=25", 2.0, &[]);
    let info = stack
        .storage
        .upload(&stack.settings().s3.work_bucket, "sources/twice.mp4", &clip, "video/mp4")
        .await
        .expect("upload");
    let source = SourceObject {
        bucket: stack.settings().s3.work_bucket.clone(),
        key: "sources/twice.mp4".into(),
        size: info.size,
        etag: info.etag,
        version_id: None,
    };
    let env = Envelope::new(JobKind::Analyze, source);
    let mut m = JobManifest::new(&env);
    m.status = JobStatus::Preprocess;
    stack.manifests.create(&mut m).await.unwrap();
    let msg = signed(&stack, WorkQueue::Preprocess, &env);
    stack.publish(msg.clone()).await;
    stack.publish(msg).await;

    let done = stack.wait_for(&env.job_id, T, |m| m.status != JobStatus::Preprocess).await;
    assert_eq!(done.status, JobStatus::Inference, "{:?}", done.error);
    // The copy that lost the claim waits out the lease, then finds the job handed on and drops.
    wait_settled(&stack, WorkQueue::Preprocess, 2, T).await;
    let tier = done.tier.expect("tier");
    let forwarded = stack.depth(&stack.queue(WorkQueue::Inference(tier))).await;
    assert_eq!(forwarded, 1, "the broker holds {forwarded} inference messages for one job");
    let m = stack.manifests.load(&env.job_id).await.unwrap().unwrap();
    assert!(m.stages["preprocess"].forwarded_at.is_some(), "the hand-over is recorded");
    assert!(m.claim.is_none(), "the claim is released: {:?}", m.claim);
    assert_eq!(m.stages["preprocess"].attempts, 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inference_pays_once_per_job_for_duplicates_and_reuses_a_stored_answer() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.runtime.claim_lease_secs = 3;
        s.inference.low.batch_size = 4;
        s.inference.low.max_wait_ms = 300;
    })
    .await;
    let ids = stack.seed_analyze(Tier::Low, 2).await;
    let (dup, paid) = (&ids[0], &ids[1]);
    // A job the provider answered before its worker died: the answer is in its ledger.
    let bucket = stack.settings().s3.work_bucket.clone();
    let stored = LedgerEntry {
        job_id: paid.clone(),
        kind: "chat".into(),
        client_request_id: "before-the-crash".into(),
        charge: Charge {
            model: "deepseek-v3.2".into(),
            request_id: Some("chatcmpl-before-the-crash".into()),
            jobs_in_request: 1,
            input_tokens: 700,
            output_tokens: 40,
            usd: 0.0002,
            answered: true,
        },
        answer: Some(serde_json::json!({"job_id": paid, "summary": "stored before the crash", "tags": ["x"]})),
        recorded_at: chrono::Utc::now(),
    };
    let key = entry_key(paid, stored.request_id());
    stack.storage.put_bytes(&bucket, &key, serde_json::to_vec(&stored).unwrap(), "application/json").await.unwrap();
    // The other job arrives three times in all.
    let m = stack.manifests.load(dup).await.unwrap().unwrap();
    let mut env = m.envelope();
    env.inputs = m.preprocess.as_ref().unwrap().keyframes.clone();
    let msg = signed(&stack, WorkQueue::Inference(Tier::Low), &env);
    stack.publish(msg.clone()).await;
    stack.publish(msg).await;

    let ms = stack.wait_inferred(&ids, T).await;
    assert!(
        ms.iter().all(|m| m.status == JobStatus::Postprocess),
        "{:?}",
        ms.iter().map(|m| &m.error).collect::<Vec<_>>()
    );
    wait_settled(&stack, WorkQueue::Inference(Tier::Low), 4, T).await;

    let usage = stack.dev.simulator.usage();
    let billed = |job: &str| usage.iter().filter(|u| u.job_ids.iter().any(|j| j == job)).count();
    assert_eq!(billed(dup), 1, "the provider billed the duplicated job {} times: {usage:?}", billed(dup));
    assert_eq!(billed(paid), 0, "the provider was paid again for a stored answer: {usage:?}");
    let paid_m = stack.manifests.load(paid).await.unwrap().unwrap();
    assert_eq!(paid_m.charges, vec![stored.charge.clone()], "the stored charge is the job's bill");
    assert_eq!(paid_m.inference.as_ref().unwrap().summary.as_deref(), Some("stored before the crash"));
    let dup_m = stack.manifests.load(dup).await.unwrap().unwrap();
    let record = usage.iter().find(|u| u.job_ids.contains(dup)).unwrap();
    assert_eq!(dup_m.charges.len(), 1);
    assert_eq!(dup_m.charges[0].request_id.as_deref(), Some(record.id.as_str()));
    let forwarded = stack.depth(&stack.queue(WorkQueue::Postprocess)).await;
    assert_eq!(forwarded, 2, "one postprocess message per job, not {forwarded}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_video_is_billed_from_the_providers_usage_and_recorded_first() {
    let stack = TestStack::start_stages(&[StageName::Inference], |_| {}).await;
    let job = stack.seed_generate(Tier::Medium).await;
    let m = stack.wait_inferred(std::slice::from_ref(&job), T).await.remove(0);
    assert_eq!(m.status, JobStatus::Postprocess, "{:?}", m.error);
    let usage = stack.dev.simulator.usage();
    let record = usage.iter().find(|u| u.job_ids.contains(&job)).expect("the provider's bill names the job");
    assert_eq!(m.charges.len(), 1);
    assert_eq!(m.charges[0].request_id.as_deref(), Some(record.id.as_str()));
    assert_eq!(m.charges[0].output_tokens, record.completion_tokens);
    assert!(record.request_id.is_some(), "the video request carries an X-Request-Id");
    let entry = stack.read_object(&entry_key(&job, &record.id)).await;
    let entry: LedgerEntry = serde_json::from_slice(&entry).unwrap();
    assert_eq!(entry.charge, m.charges[0]);
    stack.cleanup().await;
}
