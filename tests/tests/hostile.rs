//! The attacker's cases, each with what must happen: an event that names a
//! bucket ingest does not take, a source swapped after ingest validated it,
//! a stream that declares no duration, forged, misaddressed, expired and
//! rotated-out envelopes (and a replay that must not launder them), an
//! uploader asking for the most expensive tier.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use chrono::Utc;
use reelfleet_cli::dlq::{self, DlqFilter};
use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, Tier, SIGNATURE_HEADER},
    manifest::JobStatus,
    s3event::minio_event,
    settings::{PreviousKey, Secret},
    signing::{generate_key, Signer},
    topology::WorkQueue,
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

/// One envelope for a job nobody created, so a message that passes the
/// signature check is dead-lettered for the missing manifest (`bad_input`)
/// and one that does not, for its signature.
fn stray(tag: &str) -> Envelope {
    Envelope::new(
        JobKind::Analyze,
        SourceObject {
            bucket: "uploads".into(),
            key: format!("forged/{tag}.mp4"),
            size: 1,
            etag: Some(tag.into()),
            version_id: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_misaddressed_expired_and_rotated_out_envelopes_are_refused_and_never_replayed_signed() {
    let (old, retired) = (generate_key(), generate_key());
    let stack = TestStack::start_stages(&[StageName::Preprocess], |s| {
        s.signing.previous = vec![
            PreviousKey {
                key_id: "old".into(),
                secret: Secret::new(old.clone()),
                accept_until: Utc::now() + chrono::Duration::hours(1),
            },
            PreviousKey {
                key_id: "gone".into(),
                secret: Secret::new(retired.clone()),
                accept_until: Utc::now() - chrono::Duration::seconds(1),
            },
        ];
    })
    .await;
    let s = stack.settings().clone();
    let (ns, fleet) = (s.namespace.clone(), stack.signer());
    let pre = stack.queue(WorkQueue::Preprocess);
    let post = stack.queue(WorkQueue::Postprocess);
    let key = |id: &str, hex: &str| Signer::with_key(&ns, id, &hex::decode(hex).unwrap());
    /// Makes a signature header for a body.
    type Sign<'a> = Box<dyn Fn(&[u8]) -> String + 'a>;
    // (case, signature or none, code it must be dead-lettered with)
    let cases: Vec<(&str, Option<Sign>, &str)> = vec![
        (
            "forged with another key under the fleet's key id",
            Some(Box::new(|b| key(&s.signing.key_id, &generate_key()).sign(&pre, b))),
            "bad_signature",
        ),
        ("signed for postprocess, replayed onto preprocess", Some(Box::new(|b| fleet.sign(&post, b))), "bad_signature"),
        (
            "signed by another fleet's namespace",
            Some(Box::new(|b| Signer::from_settings(&s.signing, "other-fleet").unwrap().sign(&pre, b))),
            "bad_signature",
        ),
        ("unsigned", None, "bad_signature"),
        (
            "expired a day ago",
            Some(Box::new(|b| fleet.sign_at(&pre, b, Utc::now() - chrono::Duration::days(8)))),
            "signature_expired",
        ),
        ("signed with a retired key", Some(Box::new(|b| key("gone", &retired).sign(&pre, b))), "signature_key_retired"),
        (
            "signed with the previous key, still accepted",
            Some(Box::new(|b| key("old", &old).sign(&pre, b))),
            "bad_input",
        ),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (i, (case, sign, code)) in cases.iter().enumerate() {
        let env = stray(&format!("case{i}"));
        let body = env.to_bytes();
        let mut msg = Outgoing::to_queue(&pre, body.clone());
        if let Some(sign) = sign {
            msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sign(&body)));
        }
        stack.publish(msg).await;
        expected.insert(env.job_id, (*case, *code));
    }
    let dlq = format!("{pre}.dlq");
    let deadline = std::time::Instant::now() + T;
    while stack.depth(&dlq).await < cases.len() as u32 {
        assert!(std::time::Instant::now() < deadline, "not every case was dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let preprocess = DlqFilter { stage: Some("preprocess".into()), ..Default::default() };
    let held = dlq::fetch(&s, &stack.broker, &preprocess).await.unwrap();
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;
    for letter in &letters {
        let job = Envelope::parse(&letter.body).unwrap().job_id;
        let (case, code) = expected[&job];
        assert_eq!(letter.error_code, code, "{case}: {}", letter.error_message);
    }

    // Replay signs anew only what the fleet signed: the expired and the
    // previous-key messages come back (and fail on the missing manifest, so
    // past the signature), the unsigned one stays unsigned, the rest stay put.
    let report = dlq::replay(&s, &preprocess, None, false).await.unwrap();
    let refused: std::collections::BTreeSet<_> = report.refused.iter().map(|(id, _)| id.clone()).collect();
    let refused_cases: std::collections::BTreeSet<_> = letters
        .iter()
        .filter(|l| refused.contains(&l.id))
        .map(|l| expected[&Envelope::parse(&l.body).unwrap().job_id].0)
        .collect();
    assert_eq!(
        refused_cases,
        [
            "forged with another key under the fleet's key id",
            "signed for postprocess, replayed onto preprocess",
            "signed by another fleet's namespace",
            "signed with a retired key"
        ]
        .into_iter()
        .collect(),
    );
    assert_eq!(report.replayed, 3);
    let deadline = std::time::Instant::now() + T;
    loop {
        let held = dlq::fetch(&s, &stack.broker, &preprocess).await.unwrap();
        let again: Vec<_> = held.letters().cloned().collect();
        held.release().await;
        let codes: std::collections::BTreeMap<&str, String> = again
            .iter()
            .map(|l| (expected[&Envelope::parse(&l.body).unwrap().job_id].0, l.error_code.clone()))
            .collect();
        if again.len() == cases.len() {
            assert_eq!(codes["expired a day ago"], "bad_input", "the replayed copy was not signed anew");
            assert_eq!(codes["unsigned"], "bad_signature", "an unsigned message was replayed signed");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replayed messages did not come back: {codes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_document_asking_for_critical_is_lowered_to_the_uploaders_cap() {
    let stack = TestStack::start_stages(&[StageName::Ingest, StageName::Preprocess], |_| {}).await;
    let doc = stack.dir.path().join("vip.json");
    std::fs::write(&doc, br#"{"prompt":"a fox","duration_seconds":2,"resolution":"720p","priority":5}"#).unwrap();
    let job = stack.upload("prompts/vip.json", &doc).await;
    let m = stack.wait_for(&job, T, |m| m.tier.is_some() || m.status == JobStatus::Failed).await;
    assert_eq!((m.priority, m.requested_priority), (4, Some(5)), "{:?}", m.error);
    assert_ne!(m.tier, Some(Tier::Critical), "an uploader chose the most expensive model");
    stack.cleanup().await;
}
