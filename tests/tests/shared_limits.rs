//! Budgets and rate limits are the fleet's, not a replica's: three inference
//! replicas share one state database (PostgreSQL, and SQLite as `reelfleet
//! dev` uses it), and the provider's own view (its 429 counter and usage log)
//! shows the fleet kept the limit and the cap.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    envelope::Tier,
    manifest::JobStatus,
    settings::{BudgetAction, Secret},
    topology::WorkQueue,
};
use reelfleet_tests::{TestDatabase, TestStack};
use std::time::{Duration, Instant};

const MODEL: &str = "deepseek-v3.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_postgresql_send_the_provider_no_more_than_its_rate_limit() {
    const RPM: u32 = 4;
    let db = TestDatabase::create().await;
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.state.url = Secret::new(db.url.clone());
        s.inference.low.batch_size = 1;
        s.inference.low.max_wait_ms = 20;
        s.inference.low.fallback_model = None;
        s.inference.models.iter_mut().filter(|m| m.model == MODEL).for_each(|m| m.requests_per_minute = RPM);
    })
    .await;
    // The provider enforces the same limit over a sliding minute and answers 429 past it.
    stack.dev.simulator.configure(|c| {
        c.rate_limit_rpm.insert(MODEL.into(), RPM);
    });
    let replicas =
        [stack.start_replica(&[StageName::Inference]).await, stack.start_replica(&[StageName::Inference]).await];
    let jobs = stack.seed_analyze(Tier::Low, RPM as usize + 2).await;
    let ms = stack.wait_inferred(&jobs, Duration::from_secs(150)).await;
    assert!(
        ms.iter().all(|m| m.status == JobStatus::Postprocess),
        "{:?}",
        ms.iter().map(|m| &m.error).collect::<Vec<_>>()
    );
    let stats = stack.dev.simulator.stats();
    assert_eq!(stats.rate_limited, 0, "the provider saw more than {RPM} requests in a minute: {stats:?}");
    assert_eq!(stack.dev.simulator.usage().len(), jobs.len());
    let queue = stack.queue(WorkQueue::Inference(Tier::Low));
    let handled =
        |m: &reelfleet_core::metrics::Metrics| m.messages.with_label_values(&["inference", &queue, "ok"]).get();
    let per_replica: Vec<u64> = std::iter::once(handled(&stack.dev.fleet.metrics))
        .chain(replicas.iter().map(|(h, _)| handled(&h.metrics)))
        .collect();
    assert!(per_replica.iter().filter(|n| **n > 0).count() >= 2, "the work was not shared: {per_replica:?}");
    for (handle, stop) in replicas {
        stop.cancel();
        handle.wait().await;
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_spend_at_most_the_daily_cap_plus_one_batch() {
    const JOBS: usize = 24;
    const CAP: f64 = 0.0012;
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.runtime.claim_lease_secs = 5;
        s.inference.low.batch_size = 2;
        s.inference.low.max_wait_ms = 50;
        s.inference.low.concurrency = 2;
        s.inference.low.fallback_model = None;
        s.inference.low.daily_budget_usd = Some(CAP);
        s.inference.low.on_budget = BudgetAction::Pause;
    })
    .await;
    let replicas =
        [stack.start_replica(&[StageName::Inference]).await, stack.start_replica(&[StageName::Inference]).await];
    stack.seed_analyze(Tier::Low, JOBS).await;
    // Every job ends up either answered or paused until tomorrow.
    let queue = stack.queue(WorkQueue::Inference(Tier::Low));
    let all = || {
        std::iter::once(&stack.dev.fleet.metrics).chain(replicas.iter().map(|(h, _)| &h.metrics)).collect::<Vec<_>>()
    };
    let count = |outcome: &str| -> u64 {
        all().iter().map(|m| m.messages.with_label_values(&["inference", &queue, outcome]).get()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while count("ok") + count("deferred") < JOBS as u64 {
        assert!(Instant::now() < deadline, "{} answered, {} paused of {JOBS}", count("ok"), count("deferred"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the provider billed, priced from its own usage log.
    let price = stack.settings().inference.price(MODEL).expect("priced").clone();
    let cost = |u: &reelfleet_devstack::UsageRecord| {
        (u.prompt_tokens as f64 * price.input_per_mtok + u.completion_tokens as f64 * price.output_per_mtok) / 1e6
    };
    let usage = stack.dev.simulator.usage();
    let billed: f64 = usage.iter().map(cost).sum();
    let largest = usage.iter().map(cost).fold(0.0, f64::max);
    assert!(count("deferred") > 0, "the cap never bit: billed ${billed:.6} for {} requests", usage.len());
    assert!(billed >= CAP, "paused before the cap: billed ${billed:.6}");
    assert!(
        billed <= CAP + largest + 1e-9,
        "the fleet spent ${billed:.6}, above the ${CAP} cap plus one batch (${largest:.6})"
    );
    for (handle, stop) in replicas {
        stop.cancel();
        handle.wait().await;
    }
    stack.cleanup().await;
}
