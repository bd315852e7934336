//! Dead-letter operations against real dead letters: list without removing,
//! export, replay one job after the provider recovers, purge, import, replay all.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::dlq::{self, DlqFilter};
use reelfleet_core::{manifest::JobStatus, topology::WorkQueue};
use reelfleet_tests::{make_clip, TestStack};
use std::time::Duration;

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_exported_replayed_purged_and_imported() {
    let stack = TestStack::start_with(|s| s.retry.max_attempts = 2).await;
    stack.dev.simulator.configure(|c| c.error_rate = 1.0);
    let dir = stack.dir.path();
    let mut jobs = Vec::new();
    for name in ["one", "two"] {
        let clip = make_clip(dir, &format!("{name}.mp4"), "testsrc2=size=320x240:rate=24", 1.0, &[]);
        jobs.push(stack.upload(&format!("dlq/{name}.mp4"), &clip).await);
    }
    for job in &jobs {
        let m = stack.wait_for(job, JOB_TIMEOUT, |m| m.status == JobStatus::Failed).await;
        assert_eq!(m.error.unwrap().stage, "inference");
    }
    let settings = stack.settings().clone();
    let all = DlqFilter { stage: Some("inference".into()), ..Default::default() };

    // ls leaves them where they are.
    let held = dlq::fetch(&settings, &stack.broker, &all).await.unwrap();
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;
    assert_eq!(letters.len(), 2);
    for d in &letters {
        assert!(jobs.contains(d.job.as_ref().unwrap()));
        assert_eq!((d.error_class.as_str(), d.error_code.as_str(), d.attempts), ("transient", "provider", 2));
        assert!(d.error_message.contains("500"), "{}", d.error_message);
        assert!(d.first_failure.is_some() && d.last_failure.is_some());
        assert!(d.first_failure <= d.last_failure);
    }
    let again = dlq::fetch(&settings, &stack.broker, &all).await.unwrap();
    assert_eq!(again.letters().count(), 2, "listing must not remove dead letters");
    again.release().await;
    let filtered = DlqFilter { error_class: Some("permanent".into()), ..Default::default() };
    let none = dlq::fetch(&settings, &stack.broker, &filtered).await.unwrap();
    assert_eq!(none.letters().count(), 0);
    none.release().await;

    let mut exported = Vec::new();
    assert_eq!(dlq::export(&settings, &all, &mut exported).await.unwrap(), 2);

    // The provider recovers; replay the first job only.
    stack.dev.simulator.configure(|c| c.error_rate = 0.0);
    let first = DlqFilter { job: Some(jobs[0].clone()), ..Default::default() };
    let dry = dlq::replay(&settings, &first, None, true).await.unwrap();
    assert_eq!((dry.matched, dry.replayed), (1, 0));
    let report = dlq::replay(&settings, &first, Some(50.0), false).await.unwrap();
    assert_eq!(report.replayed, 1);
    let m = stack.wait_for(&jobs[0], JOB_TIMEOUT, |m| m.status == JobStatus::Completed).await;
    assert_eq!(m.stages["inference"].attempts, 1, "attempts restart after a replay");
    let dlq_name = format!("{}.dlq", stack.queue(WorkQueue::Inference(m.tier.unwrap())));

    // Purge the second; then bring both back from the export and replay everything.
    assert_eq!(
        dlq::purge(&settings, &DlqFilter { job: Some(jobs[1].clone()), ..Default::default() }).await.unwrap(),
        1
    );
    assert_eq!(stack.depth(&dlq_name).await, 0);
    let imported = dlq::import(&settings, &mut std::io::Cursor::new(exported)).await.unwrap();
    assert_eq!(imported, 2);
    assert_eq!(stack.depth(&dlq_name).await, 2);
    let report = dlq::replay(&settings, &DlqFilter::default(), None, false).await.unwrap();
    assert_eq!(report.replayed, 2);
    let m2 = stack.wait_for(&jobs[1], JOB_TIMEOUT, |m| m.status == JobStatus::Completed).await;
    assert!(m2.error.is_none());
    assert_eq!(stack.depth(&dlq_name).await, 0);
    // The job that had already completed was not paid for again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paid = stack.dev.simulator.usage().len();
    assert_eq!(paid, 2, "one successful provider call per job");
    stack.cleanup().await;
}
