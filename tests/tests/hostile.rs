//! The attacker's cases, each with what must happen: an event that names a
//! bucket ingest does not take, a source swapped after ingest validated it,
//! a stream that declares no duration.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::Outgoing, envelope::SourceObject, manifest::JobStatus, s3event::minio_event, topology::WorkQueue,
};
use reelfleet_tests::{make_clip, TestStack};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_naming_the_work_bucket_is_refused_and_writes_nothing() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let work = stack.settings().s3.work_bucket.clone();
    let clip = make_clip(stack.dir.path(), "inside.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let info = stack.storage.upload(&work, "jobs/someone/else.mp4", &clip, "video/mp4").await.unwrap();
    let etag = info.etag.clone().unwrap_or_default();
    let event = minio_event("ObjectCreated:Put", &work, "jobs/someone/else.mp4", info.size, &etag, "attacker");
    stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Ingest), event)).await;

    let dlq = format!("{}.dlq", stack.queue(WorkQueue::Ingest));
    let dead = stack.take_messages(&dlq, 1, T).await;
    let reason = &dead[0].0["x-reelfleet-error-message"];
    assert!(reason.contains("not an upload bucket"), "{reason}");
    assert_eq!(dead[0].0["x-reelfleet-error-class"], "permanent");
    let job = SourceObject {
        bucket: work,
        key: "jobs/someone/else.mp4".into(),
        size: info.size,
        etag: info.etag,
        version_id: None,
    }
    .job_id();
    assert!(stack.manifests.load(&job).await.unwrap().is_none(), "a job was created for the work bucket");
    assert!(stack.manifests.job_ids().await.unwrap().is_empty(), "nothing is written for a refused bucket");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_overwritten_after_ingest_fails_in_preprocess_instead_of_being_decoded() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let dir = stack.dir.path();
    let small = make_clip(dir, "small.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let job = stack.upload("swap/clip.mp4", &small).await;
    let admitted = stack.wait_for(&job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(admitted.status, JobStatus::Preprocess, "{:?}", admitted.error);

    // Replaced after validation by something ingest never saw.
    let other = make_clip(dir, "other.mp4", "testsrc2=size=640x480:rate=24", 2.0, &[]);
    let upload_bucket = stack.settings().s3.upload_bucket.clone();
    stack.storage.upload(&upload_bucket, "swap/clip.mp4", &other, "video/mp4").await.unwrap();
    let (replica, stop) = stack.start_replica(&[StageName::Preprocess]).await;

    let m = stack.wait_for(&job, T, |m| m.status != JobStatus::Preprocess).await;
    assert_eq!(m.status, JobStatus::Failed);
    let err = m.error.expect("failure recorded");
    assert_eq!(err.stage, "preprocess");
    assert!(err.message.contains("changed since it was validated"), "{}", err.message);
    assert!(m.preprocess.is_none(), "the swapped object was decoded");
    stop.cancel();
    replica.wait().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_without_a_duration_is_measured_by_its_frames_before_any_decode() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |s| s.limits.max_duration_secs = 20.0).await;
    let dir = stack.dir.path();
    let raw = ["-c:v", "libx264", "-preset", "ultrafast", "-f", "h264"];
    let long = make_clip(dir, "long.h264", "testsrc2=size=160x120:rate=24", 30.0, &raw);
    let short = make_clip(dir, "short.h264", "testsrc2=size=160x120:rate=24", 3.0, &raw);
    let long_job = stack.upload("raw/long.h264", &long).await;
    let short_job = stack.upload("raw/short.h264", &short).await;

    let m = stack.wait_for(&long_job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Failed, "a 30 s stream without a duration passed a 20 s limit");
    let err = m.error.expect("reason");
    assert!(err.message.contains("exceeds the 20 s limit"), "{}", err.message);

    let m = stack.wait_for(&short_job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Preprocess, "{:?}", m.error);
    let seconds = m.input.expect("input facts").duration_s;
    assert!((seconds - 3.0).abs() < 0.5, "measured {seconds} s for a 3 s stream");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_video_on_another_host_gets_no_key_and_is_size_capped() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| s.inference.max_video_bytes = 1).await;
    // The provider names a video on another origin (the recorder answers "ok", 2 bytes).
    let elsewhere = reelfleet_tests::RequestRecorder::start().await;
    let base = elsewhere.url().trim_end_matches("/purge").to_string();
    stack.dev.simulator.configure(|c| c.video_base_url = Some(base.clone()));
    let job = stack.seed_generate(reelfleet_core::envelope::Tier::Medium).await;
    let m = stack.wait_for(&job, T, |m| m.status == JobStatus::Failed).await;
    let err = m.error.expect("reason");
    assert!(err.message.contains("larger than 1 bytes"), "{}", err.message);
    let fetched = elsewhere.requests();
    assert!(!fetched.is_empty(), "the video was never fetched");
    assert!(
        fetched.iter().all(|r| r.authorization.is_none()),
        "the provider key went to {base}: {:?}",
        fetched.iter().map(|r| &r.authorization).collect::<Vec<_>>()
    );
    assert_eq!(m.charges.len(), 1, "the bill is kept though the video is refused");
    stack.cleanup().await;
}
