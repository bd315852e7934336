//! Inference economics against the simulator over HTTP and real RabbitMQ:
//! batches by size and by wait, Retry-After, fallback, the ledger against the
//! bill, budgets, signed video requests.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{envelope::Tier, manifest::JobStatus, topology::WorkQueue};
use reelfleet_tests::TestStack;
use std::{collections::BTreeMap, time::Duration};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_goes_when_full_and_a_partial_one_after_the_max_wait() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.inference.low.batch_size = 5;
        s.inference.low.max_wait_ms = 600_000;
        s.inference.medium.batch_size = 50;
        s.inference.medium.max_wait_ms = 1000;
    })
    .await;
    // Ten minutes of max wait: only a full batch can go within the test.
    let low = stack.seed_analyze(Tier::Low, 5).await;
    let ms = stack.wait_inferred(&low, T).await;
    assert!(ms.iter().all(|m| m.status == JobStatus::Postprocess));
    assert!(ms.iter().all(|m| m.inference.as_ref().unwrap().jobs_in_request == 5));
    let usage = stack.dev.simulator.usage();
    assert_eq!(usage.len(), 1, "one request for the batch");
    assert_eq!((usage[0].model.as_str(), usage[0].jobs, usage[0].images), ("deepseek-v3.2", 5, 10));

    let medium = stack.seed_analyze(Tier::Medium, 3).await;
    let ms = stack.wait_inferred(&medium, T).await;
    assert!(ms.iter().all(|m| m.inference.as_ref().unwrap().jobs_in_request == 3));
    let usage = stack.dev.simulator.usage();
    assert_eq!(usage.len(), 2);
    assert_eq!((usage[1].model.as_str(), usage[1].jobs), ("gemini-2.5-flash", 3));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_30_percent_429s_every_job_completes_and_retry_after_is_kept() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.inference.medium.batch_size = 4;
        s.inference.medium.max_wait_ms = 100;
    })
    .await;
    stack.dev.simulator.configure(|c| {
        c.rate_429 = 0.3;
        c.retry_after_secs = 1;
    });
    let jobs = stack.seed_analyze(Tier::Medium, 24).await;
    let ms = stack.wait_inferred(&jobs, Duration::from_secs(120)).await;
    assert!(
        ms.iter().all(|m| m.status == JobStatus::Postprocess),
        "{:?}",
        ms.iter().map(|m| &m.error).collect::<Vec<_>>()
    );
    let stats = stack.dev.simulator.stats();
    assert!(stats.rate_limited > 0, "the simulator never answered 429: {stats:?}");
    assert_eq!(stats.early_retries, 0, "a request came back before its Retry-After: {stats:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_keeps_failing_hands_its_tier_to_the_fallback() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.inference.low.batch_size = 3;
        s.inference.low.max_wait_ms = 100;
        s.inference.request_attempts = 2;
        s.inference.cooldown_after_failures = 1;
    })
    .await;
    stack.dev.simulator.configure(|c| {
        c.model_error_rates.insert("deepseek-v3.2".into(), 1.0);
    });
    let jobs = stack.seed_analyze(Tier::Low, 3).await;
    let ms = stack.wait_inferred(&jobs, T).await;
    for m in &ms {
        let i = m.inference.as_ref().expect("inference done");
        assert_eq!(i.model, "gemini-2.5-flash");
        assert_eq!(i.fallback_from.as_deref(), Some("deepseek-v3.2"), "the manifest must say a fallback served");
    }
    assert!(stack.dev.simulator.usage().iter().all(|u| u.model == "gemini-2.5-flash"));
    let why = reelfleet_cli::ops::explain_route(stack.settings(), &ms[0]);
    assert!(why.contains("tier low: seeded by the test"), "{why}");
    assert!(why.contains("answered by gemini-2.5-flash as fallback for deepseek-v3.2"), "{why}");
    assert!(why.contains("charge gemini-2.5-flash"), "{why}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_equals_the_simulators_bill_to_the_token() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        for t in [&mut s.inference.low, &mut s.inference.medium, &mut s.inference.high, &mut s.inference.critical] {
            t.max_wait_ms = 200;
        }
    })
    .await;
    // Some jobs' parts of a batched answer go missing: they are asked again alone, and both requests are billed.
    stack.dev.simulator.configure(|c| c.drop_job_rate = 0.25);
    let mut jobs = Vec::new();
    for (tier, n) in [(Tier::Low, 12), (Tier::Medium, 9), (Tier::High, 6), (Tier::Critical, 4)] {
        jobs.extend(stack.seed_analyze(tier, n).await);
    }
    let ms = stack.wait_inferred(&jobs, Duration::from_secs(120)).await;
    assert!(ms.iter().all(|m| m.status == JobStatus::Postprocess));
    let mut ledger: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut ledger_usd = 0.0;
    for m in &ms {
        let i = m.inference.as_ref().unwrap();
        let sum: (u64, u64) = m.charges.iter().fold((0, 0), |a, c| (a.0 + c.input_tokens, a.1 + c.output_tokens));
        assert_eq!((i.input_tokens, i.output_tokens), sum, "job totals are the sum of its charges");
        for c in &m.charges {
            let e = ledger.entry(c.model.clone()).or_default();
            e.0 += c.input_tokens;
            e.1 += c.output_tokens;
        }
        ledger_usd += i.cost_usd;
    }
    let mut bill: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for u in stack.dev.simulator.usage() {
        let e = bill.entry(u.model.clone()).or_default();
        e.0 += u.prompt_tokens;
        e.1 += u.completion_tokens;
    }
    assert_eq!(ledger, bill, "ledger tokens per model must equal the simulator's usage log");
    let prices = &stack.settings().inference;
    let billed_usd: f64 = bill
        .iter()
        .map(|(m, (i, o))| {
            let p = prices.price(m).unwrap();
            (*i as f64 * p.input_per_mtok + *o as f64 * p.output_per_mtok) / 1e6
        })
        .sum();
    assert!((ledger_usd - billed_usd).abs() < 1e-9, "ledger ${ledger_usd} vs bill ${billed_usd}");
    assert!(ms.iter().any(|m| m.charges.len() > 1), "no job was retried alone (drop rate too low?)");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_budget_downgrades_or_pauses_its_tier() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| {
        s.inference.medium.daily_budget_usd = Some(1e-9);
        s.inference.critical.daily_budget_usd = Some(1e-9);
        s.inference.critical.on_budget = reelfleet_core::settings::BudgetAction::Pause;
        for t in [&mut s.inference.low, &mut s.inference.medium, &mut s.inference.critical] {
            t.max_wait_ms = 100;
        }
    })
    .await;
    // The first batch of each tier spends the budget (never more than one batch over).
    let first = stack.seed_analyze(Tier::Medium, 2).await;
    stack.wait_inferred(&first, T).await;
    let later = stack.seed_analyze(Tier::Medium, 3).await;
    for m in stack.wait_inferred(&later, T).await {
        assert_eq!(m.tier, Some(Tier::Low));
        assert_eq!(m.inference.as_ref().unwrap().model, "deepseek-v3.2");
        assert!(m.preprocess.as_ref().unwrap().tier_reason.contains("downgraded from medium"), "{:?}", m.preprocess);
    }

    let first = stack.seed_analyze(Tier::Critical, 1).await;
    stack.wait_inferred(&first, T).await;
    let calls = stack.dev.simulator.usage().len();
    let paused = stack.seed_analyze(Tier::Critical, 2).await;
    let deferred = stack.topology.deferred_queue(WorkQueue::Inference(Tier::Critical));
    let deadline = std::time::Instant::now() + T;
    while stack.depth(&deferred).await < 2 {
        assert!(std::time::Instant::now() < deadline, "paused jobs were not parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for retry in stack.topology.retry_queues(WorkQueue::Inference(Tier::Critical)) {
        assert_eq!(stack.depth(&retry).await, 0, "a pause is not a retry: {retry}");
    }
    for j in &paused {
        let m = stack.manifests.load(j).await.unwrap().unwrap();
        assert_eq!(m.status, JobStatus::Inference, "a paused job waits");
    }
    assert_eq!(stack.dev.simulator.usage().len(), calls, "a paused tier spends nothing");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_request_with_a_wrong_key_is_refused_and_dead_lettered_with_the_reason() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| s.inference.high.max_wait_ms = 100).await;
    stack.dev.simulator.configure(|c| c.api_key = "sk-someone-else".into());
    let job = stack.seed_generate(Tier::High).await;
    let m = stack.wait_for(&job, T, |m| m.status == JobStatus::Failed).await;
    let e = m.error.unwrap();
    assert_eq!((e.stage.as_str(), e.code.as_str()), ("inference", "provider"));
    assert!(e.message.contains("401"), "{}", e.message);
    let dlq = stack.topology.dead_letter_queue(WorkQueue::Inference(Tier::High));
    let dead = stack.take_messages(&dlq, 1, T).await;
    assert_eq!(dead[0].0["x-reelfleet-error-class"], "permanent");
    stack.cleanup().await;
}
