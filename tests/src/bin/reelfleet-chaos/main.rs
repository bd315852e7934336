//! `scripts/chaos`: the fault suite. Each case runs the embedded S3 and the
//! provider simulator in one `reelfleet dev --no-workers` process and every
//! stage as its own `reelfleet worker` process (several per stage where the
//! case says so), then breaks something: kills workers, stops the broker,
//! stops S3, fails the provider, sends SIGTERM, feeds hostile input, holds
//! replicas to a rate limit or a budget, kills a cluster node. Every case ends
//! with the same independent checks ([`audit::Audit`]: manifests, the
//! provider's usage log, the ledger reconciled against it, our own queue on
//! the events exchange, the dead-letter queues). It prints a table and writes
//! `bench/results/faults.json`.

mod audit;
mod cluster;
mod fleet;

use anyhow::{bail, Context};
use audit::Audit;
use fleet::{signal, Fleet, Layout, STAGES};
use reelfleet_cli::dlq;
use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, Quality, SourceObject, SIGNATURE_HEADER},
    manifest::{JobManifest, JobStatus},
    settings::{BudgetAction, Settings},
    signing::Signer,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use reelfleet_tests::{clip::Clip, fleet::reelfleet_binary};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

#[derive(Debug)]
struct CaseResult {
    case: String,
    expected: String,
    outcome: String,
    figure: String,
    passed: bool,
    /// The independent checks, when the case got that far.
    audit: Option<Audit>,
    /// Case-specific figures for faults.json.
    details: serde_json::Value,
}

fn result(case: &str, expected: &str, passed: bool, outcome: String, figure: String) -> CaseResult {
    CaseResult {
        case: case.into(),
        expected: expected.into(),
        outcome,
        figure,
        passed,
        audit: None,
        details: serde_json::Value::Null,
    }
}

impl CaseResult {
    fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = Some(audit);
        self
    }

    fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

fn summarize(ms: &[JobManifest], jobs: usize) -> (usize, usize) {
    let completed = ms.iter().filter(|m| m.status == JobStatus::Completed).count();
    (completed, jobs - completed)
}

/// Billed twice and unrecorded requests, each no more than the jobs in flight
/// at the inference kills: the one way a kill may cost money twice is a paid
/// answer not yet in the ledger when the process died.
fn within_in_flight(a: &Audit, in_flight_at_kills: usize) -> bool {
    a.billed_twice.len() <= in_flight_at_kills
        && a.unrecorded_requests.len() <= in_flight_at_kills
        && a.reconciled_difference >= 0
        && a.unbilled_or_mismatched == 0
}

/// The audit of a kill case: everything except the ledger, the bill and the
/// completion events must be clean. A postprocess worker killed after the
/// broker confirmed its `job.completed` and before it recorded the hand-over
/// makes its redelivered message announce the job once more (at least once,
/// by design: the other order could lose the event), so duplicates are
/// allowed up to the postprocess kills that had work in flight.
fn clean_but_money(a: &Audit, postprocess_busy_kills: usize) -> bool {
    a.completed == a.jobs
        && a.duplicate_completed_events.len() <= postprocess_busy_kills
        && a.missing_completed_events.is_empty()
        && a.dead_letters_left == 0
}

async fn case_kill9(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "kill9", |_| {}).await?;
    let jobs = fleet.submit(clip, 100).await?;
    let mut kills = 0;
    let mut per_stage: BTreeMap<&str, usize> = BTreeMap::new();
    let mut in_flight_at_kills = 0.0;
    let mut postprocess_busy_kills = 0;
    let started = Instant::now();
    while kills < 12 && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Each stage in turn: three kills each.
        let stage = STAGES[kills % STAGES.len()];
        *per_stage.entry(stage).or_default() += 1;
        let busy = fleet.in_flight(stage, 0).await;
        if stage == "inference" {
            in_flight_at_kills += busy;
        }
        if stage == "postprocess" && busy >= 1.0 {
            postprocess_busy_kills += 1;
        }
        fleet.kill9(stage, 0);
        kills += 1;
        fleet.restart_worker(stage, 0)?;
    }
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let ids = fleet.manifests().job_ids().await?;
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    let in_flight = in_flight_at_kills as usize;
    let every_stage = STAGES.iter().all(|s| per_stage.get(s).copied().unwrap_or(0) >= 2);
    let passed = completed == jobs.len()
        && ids.len() == jobs.len()
        && clean_but_money(&audit, postprocess_busy_kills)
        && within_in_flight(&audit, in_flight)
        && kills >= 10
        && every_stage;
    Ok(result(
        "kill -9 of worker processes while 100 jobs flow",
        "all complete, one manifest each, no dead letter; jobs billed twice and requests missing from the ledger <= jobs in flight at the inference kills; duplicate job.completed <= postprocess kills with work in flight",
        passed,
        format!("{completed}/{} completed, {} manifests, {kills} kills {per_stage:?}", jobs.len(), ids.len()),
        format!(
            "{} jobs billed twice, {} unrecorded requests, reconciled difference {} tokens; {in_flight} jobs in flight at the inference kills; {} duplicate job.completed, {postprocess_busy_kills} postprocess kills with work in flight",
            audit.billed_twice.len(),
            audit.unrecorded_requests.len(),
            audit.reconciled_difference,
            audit.duplicate_completed_events.len()
        ),
    )
    .with_details(serde_json::json!({
        "kills": kills,
        "inference_in_flight_at_kills": in_flight,
        "postprocess_busy_kills": postprocess_busy_kills,
    }))
    .with_audit(audit))
}

/// Two replicas of every stage, kill -9 across all eight processes.
async fn case_replicas_kill9(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    const JOBS: usize = 60;
    const KILLS: usize = 16;
    let layout = Layout { replicas: [2; 4], ..Default::default() };
    let mut fleet = Fleet::start_with(bin, root, "replicas-kill9", layout, |s| {
        s.runtime.claim_lease_secs = 5;
    })
    .await?;
    // Slow answers, so inference kills land while a paid request is out.
    fleet.sim(serde_json::json!({"latency_min_ms": 300, "latency_max_ms": 700})).await?;
    let jobs = fleet.submit(clip, JOBS).await?;
    let targets: Vec<(&'static str, usize)> = STAGES.iter().flat_map(|s| [(*s, 0), (*s, 1)]).collect();
    let mut kills: Vec<(String, f64)> = Vec::new();
    let mut in_flight_at_kills = 0.0;
    let started = Instant::now();
    while kills.len() < KILLS && started.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (stage, i) = targets[kills.len() % targets.len()];
        // Wait (a little) for work, so the kill lands mid-job.
        let deadline = Instant::now() + Duration::from_secs(4);
        while fleet.in_flight(stage, i).await < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let busy = fleet.in_flight(stage, i).await;
        if stage == "inference" {
            in_flight_at_kills += busy;
        }
        fleet.kill9(stage, i);
        kills.push((format!("{stage}-{i}"), busy));
        fleet.restart_worker(stage, i)?;
    }
    let ms = fleet.settle(&jobs, Duration::from_secs(480)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let ids = fleet.manifests().job_ids().await?;
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    let in_flight = in_flight_at_kills as usize;
    let busy_kills = kills.iter().filter(|(_, b)| *b >= 1.0).count();
    let inference_kills = kills.iter().filter(|(k, _)| k.starts_with("inference")).count();
    let postprocess_busy_kills = kills.iter().filter(|(k, b)| k.starts_with("postprocess") && *b >= 1.0).count();
    let passed = completed == jobs.len()
        && ids.len() == jobs.len()
        && clean_but_money(&audit, postprocess_busy_kills)
        && within_in_flight(&audit, in_flight)
        && kills.len() == KILLS
        && inference_kills >= 4;
    Ok(result(
        "two replicas per stage, kill -9 across all 8 processes while 60 jobs flow (provider 300-700 ms)",
        "all complete, one manifest each, no dead letter; jobs billed twice and unrecorded requests <= jobs in flight at the inference kills; duplicate job.completed <= postprocess kills with work in flight",
        passed,
        format!(
            "{completed}/{} completed, {} manifests, {} kills ({busy_kills} with work in flight, {inference_kills} of inference)",
            jobs.len(),
            ids.len(),
            kills.len()
        ),
        format!(
            "{} jobs billed twice, {} unrecorded requests, reconciled difference {} tokens; {in_flight} jobs in flight at the inference kills; {} duplicate job.completed, {postprocess_busy_kills} postprocess kills with work in flight",
            audit.billed_twice.len(),
            audit.unrecorded_requests.len(),
            audit.reconciled_difference,
            audit.duplicate_completed_events.len()
        ),
    )
    .with_details(serde_json::json!({
        "kills": kills.iter().map(|(k, b)| serde_json::json!({"worker": k, "in_flight": b})).collect::<Vec<_>>(),
        "inference_in_flight_at_kills": in_flight,
        "postprocess_busy_kills": postprocess_busy_kills,
    }))
    .with_audit(audit))
}

/// Most requests to `model` the provider received in any 60 s window, by arrival time.
fn busiest_minute(usage: &[reelfleet_devstack::UsageRecord], model: &str) -> usize {
    let mut at: Vec<u64> = usage.iter().filter(|u| u.model == model).map(|u| u.at_ms).collect();
    at.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 60_000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Three inference replicas against a model the provider limits to 60 requests a minute.
async fn case_rate_limit(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    const JOBS: usize = 80;
    const RPM: u32 = 60;
    let model = Settings::default().inference.low.model.clone();
    let layout = Layout { replicas: [1, 1, 0, 1], ..Default::default() };
    let limited = model.clone();
    let mut fleet = Fleet::start_with(bin, root, "rate-limit", layout, move |s| {
        s.inference.low.batch_size = 1;
        s.inference.low.max_wait_ms = 20;
        s.inference.low.fallback_model = None;
        s.inference.models.iter_mut().filter(|m| m.model == limited).for_each(|m| m.requests_per_minute = RPM);
    })
    .await?;
    fleet.sim(serde_json::json!({"rate_limit_rpm": {model.as_str(): RPM}, "rate_429": 0.0})).await?;
    let jobs = fleet.submit_as(clip, JOBS, Some(Quality::P720)).await?;
    // Every job waits in inference.low before the replicas start: 80 requests ready at once.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let waiting = fleet.load_all(&jobs).await.iter().filter(|m| m.status == JobStatus::Inference).count();
        if waiting == jobs.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {waiting} of {} jobs reached inference", jobs.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..3 {
        fleet.add_worker("inference")?;
    }
    fleet.wait_ready(Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    let ms = fleet.settle(&jobs, Duration::from_secs(400)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let drained = t0.elapsed();
    let usage = fleet.usage().await?;
    let stats = fleet.sim_stats().await?;
    let rate_limited = stats["rate_limited"].as_u64().unwrap_or(u64::MAX);
    let requests = usage.iter().filter(|u| u.model == model).count();
    let busiest = busiest_minute(&usage, &model);
    let mut handled = Vec::new();
    for i in 0..fleet.replicas("inference") {
        let ok =
            fleet.metric("inference", i, "reelfleet_messages_total{outcome=\"ok\",queue=").await.unwrap_or_default();
        handled.push(ok as u64);
    }
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    let passed = audit.clean()
        && completed == jobs.len()
        && requests > RPM as usize
        && busiest <= RPM as usize
        && rate_limited == 0;
    Ok(result(
        "three inference replicas (separate processes), 80 requests to a model limited to 60 rpm",
        "all complete; the provider saw at most 60 requests in any 60 s window (its own 429 count 0, and from its log's arrival times)",
        passed,
        format!(
            "{completed}/{} completed; {requests} requests, at most {busiest} in any 60 s window, {rate_limited} refused by the provider; per replica {handled:?}",
            jobs.len()
        ),
        format!("inference drained in {:.0} s", drained.as_secs_f64()),
    )
    .with_details(serde_json::json!({
        "requests": requests,
        "busiest_minute": busiest,
        "provider_rate_limited": rate_limited,
        "limit_rpm": RPM,
        "per_replica_ok": handled,
    }))
    .with_audit(audit))
}

/// Three inference replicas under one daily cap on the low tier (on_budget = pause).
async fn case_budget(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    const JOBS: usize = 20;
    const CAP: f64 = 0.0025;
    let layout = Layout { replicas: [1, 1, 3, 1], ..Default::default() };
    let mut fleet = Fleet::start_with(bin, root, "budget", layout, |s| {
        s.runtime.claim_lease_secs = 5;
        s.inference.low.batch_size = 2;
        s.inference.low.max_wait_ms = 200;
        s.inference.low.concurrency = 2;
        s.inference.low.fallback_model = None;
        s.inference.low.daily_budget_usd = Some(CAP);
        s.inference.low.on_budget = BudgetAction::Pause;
    })
    .await?;
    let jobs = fleet.submit_as(clip, JOBS, Some(Quality::P720)).await?;
    let topology = Topology::from_settings(&fleet.settings);
    let deferred = topology.deferred_queue(WorkQueue::Inference(reelfleet_core::envelope::Tier::Low));
    // Every job ends up either completed or paused (its message parked until tomorrow).
    let deadline = Instant::now() + Duration::from_secs(300);
    let (completed, paused) = loop {
        let completed = fleet.load_all(&jobs).await.iter().filter(|m| m.status == JobStatus::Completed).count();
        let paused = audit::queue_depths(&fleet, |q| q == deferred).await?.values().sum::<u64>() as usize;
        if completed + paused >= jobs.len() || Instant::now() > deadline {
            break (completed, paused);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Settled: nothing moves any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ms = fleet.load_all(&jobs).await;
    let paused_in_manifest = ms.iter().filter(|m| m.status == JobStatus::Inference).count();
    let failed = ms.iter().filter(|m| m.status == JobStatus::Failed).count();
    let mut by_status = std::collections::BTreeMap::new();
    for m in &ms {
        *by_status.entry(format!("{:?}", m.status).to_lowercase()).or_insert(0usize) += 1;
    }
    let price = fleet.settings.inference.price(&fleet.settings.inference.low.model).context("priced")?.clone();
    let cost = |u: &reelfleet_devstack::UsageRecord| {
        (u.prompt_tokens as f64 * price.input_per_mtok + u.completion_tokens as f64 * price.output_per_mtok) / 1e6
    };
    let usage = fleet.usage().await?;
    let spent: f64 = usage.iter().map(cost).sum();
    let largest = usage.iter().map(cost).fold(0.0, f64::max);
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    let passed = completed + paused == jobs.len()
        && paused > 0
        && paused_in_manifest == paused
        && failed == 0
        && spent >= CAP
        && spent <= CAP + largest + 1e-9
        && audit.billed_twice.is_empty()
        && audit.reconciled
        && audit.tokens_charged == audit.tokens_billed
        && audit.duplicate_completed_events.is_empty()
        && audit.missing_completed_events.is_empty()
        && audit.dead_letters_left == 0;
    Ok(result(
        "three inference replicas under a daily cap on the low tier (on_budget = pause), 20 jobs",
        "spend priced from the provider's log <= cap + the largest request; the rest paused (parked, manifest waiting at inference), none failed or lost",
        passed,
        format!(
            "{completed} completed + {paused} paused (deferred queue; {paused_in_manifest} manifests waiting at inference) of {}, {failed} failed; manifests {by_status:?}",
            jobs.len()
        ),
        format!("spent ${spent:.6} of a ${CAP} cap (+ largest request ${largest:.6}) in {} requests", usage.len()),
    )
    .with_details(serde_json::json!({
        "cap_usd": CAP,
        "spent_usd": spent,
        "largest_request_usd": largest,
        "completed": completed,
        "paused": paused,
    }))
    .with_audit(audit))
}

/// A three-node cluster of our own: the leader of the busiest work queue is
/// killed (kill -9 of its VM) mid-run and brought back.
async fn case_cluster(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    const JOBS: usize = 30;
    let cluster = cluster::Cluster::start(&root.join("cluster")).await?;
    // lapin / deadpool-lapin take one URL per connection: each worker gets one
    // node, two replicas per stage on different nodes, so whichever node dies
    // every stage keeps a connected replica; a replica on the dead node
    // reconnects to it with backoff once it is back.
    let urls: Vec<String> = (1..=3).map(cluster::amqp_url).collect();
    let layout = Layout { replicas: [2; 4], worker_broker_urls: urls.clone() };
    let mut fleet = Fleet::start_with(bin, root, "cluster", layout, |s| {
        s.broker.url = reelfleet_core::settings::Secret::new(cluster::amqp_url(1));
        // Never the shared broker's management API.
        s.broker.management_url = reelfleet_core::settings::Secret::new("http://127.0.0.1:9/");
        // No worker dies here, so no claim needs to run out: the default
        // lease (30 s). With 5 s, a live holder whose one renewal took ~5 s
        // on a machine busy with three nodes' failover lost its claim to the
        // other replica while its paid request was out: billed twice.
    })
    .await?;
    let ns = format!("{}.", fleet.settings.namespace);
    // Leaders were placed where the topology was declared first; spread them.
    let _ = cluster.tool("rabbitmq-queues", 1, &["rebalance", "quorum"]);
    let work: Vec<String> = {
        let t = Topology::from_settings(&fleet.settings);
        WorkQueue::all().into_iter().map(|q| t.queue(q)).collect()
    };
    let before = cluster.queues(1, &ns)?;
    let quorum_on_3 = before.iter().filter(|(n, _, members, _)| work.contains(n) && *members == 3).count();
    let jobs = fleet.submit(clip, JOBS).await?;
    // Mid-run: the busiest work queue and its leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (queue, leader) = loop {
        let qs = cluster.queues(1, &ns)?;
        let busiest = qs.iter().filter(|(n, ..)| work.contains(n)).max_by_key(|(_, _, _, m)| *m).cloned();
        match busiest {
            Some((n, l, _, m)) if m >= 3 || Instant::now() > deadline => break (n, l),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let victim: u8 = (1..=3).find(|i| leader == cluster::node(*i)).with_context(|| format!("leader {leader:?}"))?;
    let survivor = if victim == 1 { 2 } else { 1 };
    let killed_at = Instant::now();
    let pid = cluster.kill9(victim)?;
    // A new leader from the surviving members.
    let mut new_leader = String::new();
    while killed_at.elapsed() < Duration::from_secs(30) {
        if let Some((_, l, ..)) = cluster.queues(survivor, &ns)?.into_iter().find(|(n, ..)| *n == queue) {
            if !l.is_empty() && l != leader {
                new_leader = l;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let done_while_down = |ms: &[JobManifest]| ms.iter().filter(|m| m.status == JobStatus::Completed).count();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let completed_while_down = done_while_down(&fleet.load_all(&jobs).await);
    let mut cluster = cluster;
    cluster.boot(victim)?;
    cluster.await_startup(victim, Duration::from_secs(90)).await?;
    let down = killed_at.elapsed();
    let ms = fleet.settle(&jobs, Duration::from_secs(400)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let back = cluster.queues(1, &ns)?;
    let members_after = back.iter().filter(|(n, _, members, _)| work.contains(n) && *members == 3).count();
    let dead = fleet.dead();
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    drop(cluster);
    let passed = audit.clean()
        && completed == jobs.len()
        && quorum_on_3 == work.len()
        && !new_leader.is_empty()
        && dead.is_empty();
    Ok(result(
        "3-node RabbitMQ cluster (quorum queues on all 3): kill -9 of the busiest queue's leader node mid-run, then back",
        "a new leader is elected, all complete, 0 lost, no duplicate job.completed; audit clean",
        passed,
        format!(
            "{completed}/{} completed ({completed_while_down} while the node was down); {queue} led by {leader}: killed (pid {pid}), new leader {new_leader}; quorum queues with 3 members: {quorum_on_3}/{} before, {members_after}/{} after; workers exited: {dead:?}",
            jobs.len(),
            work.len(),
            work.len()
        ),
        format!("node down and back in {:.0} s; fleet connects one node per worker (lapin takes one URL)", down.as_secs_f64()),
    )
    .with_details(serde_json::json!({
        "busiest_queue": queue,
        "killed_leader": leader,
        "new_leader": new_leader,
        "quorum_queues_on_3_members": quorum_on_3,
        "completed_while_down": completed_while_down,
    }))
    .with_audit(audit))
}

async fn case_broker_restart(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "broker", |_| {}).await?;
    let jobs = fleet.submit(clip, 30).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pids = fleet.pids();
    let stop = Command::new("rabbitmqctl").args(["-q", "stop_app"]).status()?.success();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Command::new("rabbitmqctl").args(["-q", "start_app"]).status()?.success();
    let down_at = Instant::now();
    fleet.wait_ready(Duration::from_secs(120)).await?;
    let recovered = down_at.elapsed();
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let dead = fleet.dead();
    let same = fleet.pids() == pids;
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    Ok(result(
        "rabbitmqctl stop_app, then start_app, mid-run",
        "all complete, no worker restarted; audit clean",
        stop && start && completed == jobs.len() && dead.is_empty() && same && audit.clean(),
        format!("{completed}/{} completed, workers exited: {dead:?}", jobs.len()),
        format!("consumers ready again {:.1} s after start_app", recovered.as_secs_f64()),
    )
    .with_audit(audit))
}

async fn case_s3_outage(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "s3", |_| {}).await?;
    let jobs = fleet.submit(clip, 30).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(mut dev) = fleet.dev.take() {
        signal(&dev, "-KILL")?;
        let _ = dev.wait();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    fleet.start_dev().await?;
    let t0 = Instant::now();
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let dead = fleet.dead();
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    // The simulator restarts with S3, so its usage log only covers the time after the outage.
    let passed = completed == jobs.len()
        && dead.is_empty()
        && audit.duplicate_completed_events.is_empty()
        && audit.missing_completed_events.is_empty()
        && audit.dead_letters_left == 0;
    Ok(result(
        "the S3 endpoint (and simulator) stopped for 20 s mid-run",
        "all complete, one job.completed each, no dead letter (the simulator's bill restarts with it, so bill checks are reported, not required)",
        passed,
        format!("{completed}/{} completed", jobs.len()),
        format!("drained {:.1} s after S3 returned", t0.elapsed().as_secs_f64()),
    )
    .with_audit(audit))
}

async fn case_provider_down(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "provider", |s| {
        s.retry.max_attempts = 3;
        s.retry.base_delay_ms = 200;
        s.retry.max_delay_ms = 1000;
    })
    .await?;
    fleet.sim(serde_json::json!({"error_rate": 1.0})).await?;
    let jobs = fleet.submit(clip, 10).await?;
    let ms = fleet.settle(&jobs, Duration::from_secs(300)).await?;
    let failed_with_reason = ms
        .iter()
        .filter(|m| m.status == JobStatus::Failed)
        .filter(|m| m.error.as_ref().is_some_and(|e| e.stage == "inference" && e.message.contains("500")))
        .count();
    fleet.sim(serde_json::json!({"error_rate": 0.0})).await?;
    let out = Command::new(&fleet.bin)
        .arg("--config")
        .arg(fleet.config())
        .args(["dlq", "replay", "--stage", "inference"])
        .output()?;
    let replay_ok = out.status.success();
    let after = fleet.settle(&jobs, Duration::from_secs(300)).await?;
    // settle returns failed ones at once: wait for completions explicitly.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut completed = summarize(&after, jobs.len()).0;
    while completed < jobs.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        completed = summarize(&fleet.settle(&jobs, Duration::from_secs(1)).await?, jobs.len()).0;
    }
    let held = dlq::fetch(&fleet.settings, &Broker::new(&fleet.settings.broker, "chaos")?, &Default::default()).await?;
    let left = held.letters().count();
    held.release().await;
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    Ok(result(
        "the provider at 100% 5xx, then recovered and `reelfleet dlq replay`",
        "dead-lettered with the reason after retries; all complete after the replay",
        failed_with_reason == jobs.len() && replay_ok && completed == jobs.len() && left == 0 && audit.clean(),
        format!(
            "{failed_with_reason}/{} dead-lettered with the reason, {completed} completed after replay",
            jobs.len()
        ),
        format!("{} dead letters left; {}", left, String::from_utf8_lossy(&out.stdout).trim()),
    )
    .with_audit(audit))
}

async fn case_sigterm(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "sigterm", |s| s.runtime.grace_period_secs = 30).await?;
    // A slow provider keeps inference busy while the earlier stages are signalled.
    fleet.sim(serde_json::json!({"latency_min_ms": 1500, "latency_max_ms": 2500})).await?;
    let jobs = fleet.submit(clip, 30).await?;
    let mut exits = Vec::new();
    let mut slowest = 0.0f64;
    for stage in STAGES {
        let deadline = Instant::now() + Duration::from_secs(60);
        while fleet.in_flight(stage, 0).await < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let busy = fleet.in_flight(stage, 0).await;
        let w = fleet.workers.get_mut(stage).and_then(|ws| ws.first_mut()).context("worker")?;
        let t0 = Instant::now();
        signal(&w.child, "-TERM")?;
        let status = loop {
            if let Some(s) = w.child.try_wait()? {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(40) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        slowest = slowest.max(t0.elapsed().as_secs_f64());
        exits.push((stage, busy, status.map(|s| s.success()).unwrap_or(false)));
        fleet.restart_worker(stage, 0)?;
    }
    let ms = fleet.settle(&jobs, Duration::from_secs(600)).await?;
    let (completed, _) = summarize(&ms, jobs.len());
    let audit = fleet.audit(&jobs).await?;
    fleet.stop().await;
    let all_zero = exits.iter().all(|(_, _, ok)| *ok);
    let all_busy = exits.iter().all(|(_, busy, _)| *busy >= 1.0);
    Ok(result(
        "SIGTERM to each worker with jobs in flight",
        "every stage had work in flight when signalled; exit 0 within the grace period, nothing lost; audit clean",
        all_zero && all_busy && completed == jobs.len() && audit.clean(),
        format!(
            "{completed}/{} completed; exits: {}",
            jobs.len(),
            exits
                .iter()
                .map(|(s, b, ok)| format!("{s}({b} in flight)={}", if *ok { 0 } else { 1 }))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!("slowest exit {slowest:.1} s (grace 30 s)"),
    )
    .with_details(serde_json::json!({
        "in_flight_when_signalled": exits.iter().map(|(s, b, _)| (s.to_string(), *b)).collect::<BTreeMap<_, _>>(),
    }))
    .with_audit(audit))
}

/// What one hostile input must lead to.
#[derive(Clone, Copy, Debug)]
enum Must {
    /// The job completes.
    Complete,
    /// The job's manifest says failed at `stage`, its reason containing `reason`,
    /// and the job's message is in that stage's dead-letter queue.
    Fail { stage: &'static str, reason: &'static str },
    /// A message that is not a job: dead-lettered at `stage`, permanently, its reason containing `reason`.
    DeadLetter { stage: &'static str, reason: &'static str },
    /// The object store refuses the upload; no job exists.
    RefusedAtUpload,
    /// Changes nothing (a replayed message for a finished job).
    NoOp,
}

impl Must {
    fn describe(&self) -> String {
        match self {
            Must::Complete => "completes".into(),
            Must::Fail { stage, reason } => format!("fails at {stage}: \"{reason}\""),
            Must::DeadLetter { stage, reason } => format!("dead-lettered at {stage} (permanent): \"{reason}\""),
            Must::RefusedAtUpload => "refused at upload".into(),
            Must::NoOp => "ignored, the job unchanged".into(),
        }
    }
}

/// One row of the hostile table.
struct Verdict {
    input: String,
    must: Must,
    got: String,
    ok: bool,
}

/// Files and messages no one should send, each with what it must lead to, checked one by one.
async fn case_hostile(bin: &Path, root: &Path, clip: &Path) -> anyhow::Result<CaseResult> {
    let mut fleet = Fleet::start(bin, root, "hostile", |_| {}).await?;
    let dir = fleet.root.join("inputs");
    std::fs::create_dir_all(&dir)?;
    let sentinel_dir = root.to_path_buf();
    let before = list_tree(&sentinel_dir, &fleet.data);
    let w = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let unreadable = Must::Fail { stage: "ingest", reason: "not a readable video" };
    let bad_prompt = |reason| Must::Fail { stage: "ingest", reason };
    let whole = std::fs::read(clip)?;
    let mut uploads: Vec<(String, PathBuf, Must)> = vec![
        ("zero bytes.mp4".into(), w("zero.mp4", b"")?, Must::Fail { stage: "ingest", reason: "object is empty" }),
        ("truncated.mp4".into(), w("trunc.mp4", &whole[..whole.len() / 3])?, unreadable),
        ("notes.mp4".into(), w("notes.mp4", "plain text, not a video\n".repeat(40).as_bytes())?, unreadable),
        (
            "playlist.mp4".into(),
            w("pl.mp4", format!("#EXTM3U\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n", clip.display()).as_bytes())?,
            unreadable,
        ),
        (
            "subtitles.mp4".into(),
            w("subs.mp4", b"1\n00:00:00,000 --> 00:00:01,000\nhello\n")?,
            Must::Fail { stage: "ingest", reason: "no video stream" },
        ),
        (
            "prompt broken.json".into(),
            w("broken.json", br#"{"prompt": "a fox", "duration_seconds": "#)?,
            bad_prompt("invalid prompt document: EOF while parsing"),
        ),
        (
            "prompt deep.json".into(),
            w("deep.json", format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes())?,
            bad_prompt("nested deeper than"),
        ),
        (
            "prompt 8k.json".into(),
            w("8k.json", br#"{"prompt":"x","duration_seconds":2,"resolution":"8k"}"#)?,
            bad_prompt("unknown variant `8k`"),
        ),
        (
            "prompt negative.json".into(),
            w("neg.json", br#"{"prompt":"x","duration_seconds":-3,"resolution":"720p"}"#)?,
            bad_prompt("duration_seconds must be in (0, 60]"),
        ),
        (
            "prompt extra.json".into(),
            w("extra.json", br#"{"prompt":"x","duration_seconds":2,"resolution":"720p","sql":"drop"}"#)?,
            bad_prompt("unknown field `sql`"),
        ),
        (
            "prompt huge.json".into(),
            w(
                "huge.json",
                format!(r#"{{"prompt":"{}","duration_seconds":2,"resolution":"720p"}}"#, "x".repeat(100_000))
                    .as_bytes(),
            )?,
            bad_prompt("above the 65536-byte limit"),
        ),
        ("unicode ✓ 映画 été.mp4".into(), clip.to_path_buf(), Must::Complete),
        ("a/../../escape.mp4".into(), clip.to_path_buf(), Must::Complete),
        ("spaces  and + plus %2F.mp4".into(), clip.to_path_buf(), Must::Complete),
        // Four 200-byte path segments: more than the embedded store's file system takes in one name.
        (format!("{}/long.mp4", vec!["k".repeat(200); 4].join("/")), clip.to_path_buf(), Must::RefusedAtUpload),
    ];
    // Formats from ffmpeg: the odd but valid must not be refused.
    for (name, video, extra, must) in [
        ("single-frame.mp4", "testsrc2=size=320x240:rate=1", vec!["-frames:v", "1"], Must::Complete),
        (
            "vp9.webm",
            "testsrc2=size=320x240:rate=24",
            vec!["-t", "1", "-c:v", "libvpx-vp9", "-deadline", "realtime"],
            Must::Complete,
        ),
        ("odd 321x241.mkv", "testsrc2=size=321x241:rate=25", vec!["-t", "1", "-c:v", "ffv1"], Must::Complete),
        ("anim.gif", "testsrc2=size=160x120:rate=10", vec!["-t", "1"], Must::Complete),
        (
            "fps-5000.mp4",
            "testsrc2=size=160x120:rate=5000",
            vec!["-t", "0.01", "-c:v", "libx264"],
            Must::Fail { stage: "ingest", reason: "frame rate 5000 fps is absurd" },
        ),
        ("audio only.mp4", "sine", vec!["-t", "1"], Must::Fail { stage: "ingest", reason: "no video stream" }),
    ] {
        let p = dir.join(name.replace(' ', "-"));
        let ok = Command::new("ffmpeg")
            .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", video])
            .args(&extra)
            .arg(&p)
            .status()?
            .success();
        if !ok {
            bail!("ffmpeg could not make the hostile input {name}");
        }
        uploads.push((name.to_string(), p, must));
    }

    let storage = Storage::new(&fleet.settings.s3);
    let bucket = fleet.settings.s3.upload_bucket.clone();
    // Per upload: the job id, or why the store refused it.
    let mut sent: Vec<(String, Must, Result<String, String>)> = Vec::new();
    for (key, path, must) in &uploads {
        let ctype = if key.ends_with(".json") { "application/json" } else { "video/mp4" };
        let r = match storage.upload(&bucket, &format!("hostile/{key}"), path, ctype).await {
            Ok(info) => Ok(SourceObject {
                bucket: bucket.clone(),
                key: format!("hostile/{key}"),
                size: info.size,
                etag: info.etag,
                version_id: None,
            }
            .job_id()),
            Err(e) => Err(format!("{e}")),
        };
        sent.push((key.clone(), *must, r));
    }
    // Messages: a forged signature, garbage, an event for a missing object, an oversized event.
    let broker = Broker::new(&fleet.settings.broker, "chaos")?;
    let topology = Topology::from_settings(&fleet.settings);
    let publisher = broker.publisher().await?;
    let forged = Envelope::new(
        JobKind::Analyze,
        SourceObject {
            bucket: bucket.clone(),
            key: "forged.mp4".into(),
            size: 1,
            etag: Some("x".into()),
            version_id: None,
        },
    );
    let body = forged.to_bytes();
    let preprocess = topology.queue(WorkQueue::Preprocess);
    let sig = Signer::with_key(&fleet.settings.namespace, &fleet.settings.signing.key_id, &[7u8; 32])
        .sign(&preprocess, &body);
    let forged_body = body.clone();
    publisher
        .publish(
            &Outgoing::to_queue(topology.queue(WorkQueue::Preprocess), body)
                .header(SIGNATURE_HEADER, HeaderValue::Text(sig)),
        )
        .await?;
    let garbage = b"\x00\xffgarbage{".to_vec();
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), garbage.clone())).await?;
    let missing = reelfleet_core::s3event::minio_event(
        "ObjectCreated:Put",
        &bucket,
        "hostile/never uploaded.mp4",
        10,
        "abc",
        "127.0.0.1",
    );
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), missing.clone())).await?;
    let mut big = b"{\"Records\":[".to_vec();
    big.extend(std::iter::repeat_n(b' ', 2 * 1024 * 1024));
    big.extend(b"]}");
    publisher.publish(&Outgoing::to_queue(topology.queue(WorkQueue::Ingest), big.clone())).await?;
    let messages: Vec<(&str, Vec<u8>, Must)> = vec![
        ("message with a forged signature", forged_body, Must::DeadLetter { stage: "preprocess", reason: "signature" }),
        ("garbage message", garbage, Must::DeadLetter { stage: "ingest", reason: "" }),
        ("event for a missing object", missing, Must::DeadLetter { stage: "ingest", reason: "" }),
        ("2 MiB event", big, Must::DeadLetter { stage: "ingest", reason: "" }),
    ];

    let ids: Vec<String> = sent.iter().filter_map(|(_, _, r)| r.as_ref().ok().cloned()).collect();
    let ms = fleet.settle(&ids, Duration::from_secs(600)).await?;
    // Replay an old, validly signed message for a finished job: it must be a no-op.
    let replay = if let Some(done) = ms.iter().find(|m| m.status == JobStatus::Completed) {
        let old = Envelope {
            job_id: done.job_id.clone(),
            source: done.source.clone(),
            ..Envelope::new(JobKind::Analyze, done.source.clone())
        };
        let body = old.to_bytes();
        let sig = Signer::from_settings(&fleet.settings.signing, &fleet.settings.namespace)?
            .sign(&topology.queue(WorkQueue::Preprocess), &body);
        publisher
            .publish(
                &Outgoing::to_queue(topology.queue(WorkQueue::Preprocess), body)
                    .header(SIGNATURE_HEADER, HeaderValue::Text(sig)),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = fleet.manifests().load(&done.job_id).await?.context("manifest")?;
        let same = again.status == JobStatus::Completed && again.stages == done.stages;
        (if same { "ignored, the job unchanged".to_string() } else { "the job changed".to_string() }, same)
    } else {
        ("no completed job to replay".to_string(), false)
    };
    let held = dlq::fetch(&fleet.settings, &broker, &Default::default()).await?;
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;

    let mut table: Vec<Verdict> = Vec::new();
    for (key, must, r) in &sent {
        let (got, ok) = match r {
            Err(e) => {
                let tail: String = e.chars().rev().take(60).collect::<String>().chars().rev().collect();
                (format!("refused at upload: ...{tail}"), matches!(must, Must::RefusedAtUpload))
            }
            Ok(job) => match ms.iter().find(|m| &m.job_id == job) {
                None => ("unfinished".to_string(), false),
                Some(m) if m.status == JobStatus::Completed => {
                    ("completed".to_string(), matches!(must, Must::Complete))
                }
                Some(m) => {
                    let e = m.error.clone().unwrap_or_else(|| reelfleet_core::manifest::JobFailure {
                        stage: "?".into(),
                        class: reelfleet_core::error::ErrorClass::Permanent,
                        code: "?".into(),
                        message: String::new(),
                        attempts: 0,
                        at: chrono::Utc::now(),
                    });
                    let lettered = letters.iter().any(|d| d.job.as_deref() == Some(job.as_str()) && d.stage == e.stage);
                    let why: String = e.message.chars().take(70).collect();
                    let ok = matches!(must, Must::Fail { stage, reason } if e.stage == *stage && e.message.contains(reason))
                        && lettered;
                    (
                        format!(
                            "failed at {} ({}, {}): {why}{}",
                            e.stage,
                            e.class,
                            e.code,
                            if lettered { "" } else { " [no dead letter]" }
                        ),
                        ok,
                    )
                }
            },
        };
        table.push(Verdict { input: key.clone(), must: *must, got, ok });
    }
    for (name, body, must) in &messages {
        let letter = letters.iter().find(|d| &d.body == body);
        let (got, ok) = match letter {
            None => ("no dead letter".to_string(), false),
            Some(d) => {
                let ok = matches!(must, Must::DeadLetter { stage, reason }
                    if d.stage == *stage && d.error_class == "permanent" && !d.error_message.trim().is_empty() && d.error_message.contains(reason));
                let why: String = d.error_message.chars().take(70).collect();
                (format!("dead-lettered at {} ({}, {}): {why}", d.stage, d.error_class, d.error_code), ok)
            }
        };
        table.push(Verdict { input: name.to_string(), must: *must, got, ok });
    }
    table.push(Verdict {
        input: "replayed old message for a finished job".into(),
        must: Must::NoOp,
        got: replay.0,
        ok: replay.1,
    });

    let dead = fleet.dead();
    let after = list_tree(&sentinel_dir, &fleet.data);
    let escaped: Vec<_> = after.difference(&before).filter(|p| !p.starts_with(&fleet.root)).cloned().collect();
    for v in &table {
        eprintln!(
            "  {} {:<40} must {:<55} got {}",
            if v.ok { "ok  " } else { "FAIL" },
            v.input.chars().take(40).collect::<String>(),
            v.must.describe(),
            v.got
        );
    }
    let audit = fleet.audit(&ids).await?;
    fleet.stop().await;
    let must_letter = table.iter().filter(|v| matches!(v.must, Must::Fail { .. } | Must::DeadLetter { .. })).count();
    let right = table.iter().filter(|v| v.ok).count();
    let passed = right == table.len()
        && dead.is_empty()
        && escaped.is_empty()
        && audit.billed_twice.is_empty()
        && audit.reconciled
        && audit.tokens_charged == audit.tokens_billed
        && audit.duplicate_completed_events.is_empty()
        && audit.missing_completed_events.is_empty()
        && audit.dead_letters_left == must_letter as u64;
    let wrong: Vec<String> = table
        .iter()
        .filter(|v| !v.ok)
        .map(|v| format!("{}: must {}, got {}", v.input, v.must.describe(), v.got))
        .collect();
    Ok(result(
        "broken and hostile inputs, each with its own expected outcome",
        "each input as its row says (completes / fails at a stage with a named reason and a dead letter / dead-lettered / refused at upload / ignored); no crash; nothing written outside the data folder; dead letters left = the inputs that must dead-letter",
        passed,
        format!(
            "{right}/{} inputs as expected{}; workers crashed: {dead:?}, files outside: {}",
            table.len(),
            if wrong.is_empty() { String::new() } else { format!(" (wrong: {})", wrong.join("; ")) },
            escaped.len()
        ),
        format!("{} inputs, {must_letter} must dead-letter", table.len()),
    )
    .with_details(serde_json::json!({
        "inputs": table
            .iter()
            .map(|v| serde_json::json!({"input": v.input, "must": v.must.describe(), "got": v.got, "ok": v.ok}))
            .collect::<Vec<_>>(),
    }))
    .with_audit(audit))
}

fn list_tree(root: &Path, skip: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.starts_with(skip) {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.insert(p);
            }
        }
    }
    out
}

/// The last warnings and errors of each process of a failed case (its
/// `logs/*.log`, JSON lines), a few per file and each file's last line, for
/// the suite's output.
fn failure_digest(case_dir: &Path) -> Vec<String> {
    const PER_FILE: usize = 6;
    let Ok(entries) = std::fs::read_dir(case_dir.join("logs")) else {
        return vec![format!("no logs under {}", case_dir.display())];
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines = text.lines().count();
        let loud: Vec<&str> =
            text.lines().filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\"")).collect();
        out.push(format!("{name}: {lines} lines, {} warnings/errors", loud.len()));
        let last = text.lines().last().filter(|l| loud.last().is_none_or(|w| w != l));
        for l in loud[loud.len().saturating_sub(PER_FILE)..].iter().chain(last.as_ref()) {
            out.push(format!("  {}", l.chars().take(400).collect::<String>()));
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let bin = reelfleet_binary()?;
    let work = tempfile::Builder::new().prefix("reelfleet-chaos-").tempdir()?;
    let root = work.path().to_path_buf();
    let clip = Clip {
        video: "testsrc2=size=320x240:rate=12",
        audio: "sine",
        seconds: 1.0,
        extra: &["-c:v", "libx264", "-preset", "ultrafast"],
    }
    .make(&root, "clip.mp4")?;
    type Case = for<'a> fn(&'a Path, &'a Path, &'a Path) -> futures::future::BoxFuture<'a, anyhow::Result<CaseResult>>;
    let cases: Vec<(&str, Case)> = vec![
        ("kill9", |b, r, c| Box::pin(case_kill9(b, r, c))),
        ("replicas-kill9", |b, r, c| Box::pin(case_replicas_kill9(b, r, c))),
        ("rate-limit", |b, r, c| Box::pin(case_rate_limit(b, r, c))),
        ("budget", |b, r, c| Box::pin(case_budget(b, r, c))),
        ("sigterm", |b, r, c| Box::pin(case_sigterm(b, r, c))),
        ("provider", |b, r, c| Box::pin(case_provider_down(b, r, c))),
        ("hostile", |b, r, c| Box::pin(case_hostile(b, r, c))),
        ("s3", |b, r, c| Box::pin(case_s3_outage(b, r, c))),
        ("cluster", |b, r, c| Box::pin(case_cluster(b, r, c))),
        ("broker", |b, r, c| Box::pin(case_broker_restart(b, r, c))),
    ];
    if let Some(unknown) = only.iter().find(|o| !cases.iter().any(|(n, _)| n == o)) {
        bail!("no fault case {unknown:?}; cases: {}", cases.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" "));
    }
    let suite = Instant::now();
    let mut results = Vec::new();
    for (name, run) in cases {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== fault case {name}");
        let t0 = Instant::now();
        let r = match run(&bin, &root, &clip).await {
            Ok(r) => r,
            Err(e) => result(name, "runs", false, format!("harness error: {e:#}"), String::new()),
        };
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("   {} in {secs:.0} s: {}", if r.passed { "passed" } else { "FAILED" }, r.outcome);
        if let Some(a) = &r.audit {
            eprintln!("   {}", a.line());
        }
        if !r.passed {
            // The case's folder goes with the temporary root: what its
            // workers said last is the only trace a CI log can keep.
            for line in failure_digest(&root.join(name)) {
                eprintln!("   | {line}");
            }
        }
        results.push((name, secs, r));
    }
    println!("\n{:<58} {:<6} {:<}", "CASE", "PASS", "OUTCOME / FIGURE");
    for (name, secs, r) in &results {
        println!("{:<58} {:<6} {}", r.case, if r.passed { "yes" } else { "NO" }, r.outcome);
        println!("{:<58} {:<6} {} in {secs:.0} s; {}", "", "", name, r.figure);
        if let Some(a) = &r.audit {
            println!("{:<58} {:<6} {}", "", "", a.line());
        }
        println!("{:<58} {:<6} expected: {}", "", "", r.expected);
    }
    std::fs::create_dir_all("bench/results")?;
    let json: Vec<_> = results
        .iter()
        .map(|(name, secs, r)| {
            let mut j = serde_json::json!({
                "name": name,
                "case": r.case,
                "passed": r.passed,
                "seconds": secs.round(),
                "figure": r.figure,
                "expected": r.expected,
                "outcome": r.outcome,
            });
            if let Some(a) = &r.audit {
                for (k, v) in a.json().as_object().into_iter().flatten() {
                    j[k] = v.clone();
                }
            }
            if !r.details.is_null() {
                j["details"] = r.details.clone();
            }
            j
        })
        .collect();
    std::fs::write("bench/results/faults.json", serde_json::to_string_pretty(&json)?)?;
    let passed = results.iter().filter(|(_, _, r)| r.passed).count();
    println!("faults: {} passed, {} failed in {:.0} s", passed, results.len() - passed, suite.elapsed().as_secs_f64());
    if passed != results.len() {
        std::process::exit(1);
    }
    Ok(())
}
