//! The checks every case ends with, each read from a source the fleet does
//! not keep itself: the job manifests in S3 (completion, charges), the
//! provider's usage log (what was billed, per job), the ledger reconciled
//! against that log (`reelfleet_cli::ledger`), a queue of our own bound to the
//! events exchange (each `job.completed` counted per job), and the broker's
//! dead-letter queues.

use crate::fleet::Fleet;
use anyhow::Context;
use lapin::{
    options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use reelfleet_cli::ledger::{self, ReconcileOptions};
use reelfleet_core::{
    broker::Broker, manifest::JobStatus, settings::BrokerSettings, storage::Storage, topology::Topology,
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// A quorum queue of ours bound to `<ns>.events` with `job.completed`,
/// declared before anything is submitted, so it sees every completion event.
pub(crate) struct EventTap {
    brokers: Vec<Broker>,
    queue: String,
    counts: BTreeMap<String, usize>,
}

impl EventTap {
    /// Binds the tap through the first of `urls` (every URL is tried when reading,
    /// so a cluster node going down does not blind it).
    pub(crate) async fn bind(settings: &reelfleet_core::settings::Settings, urls: &[String]) -> anyhow::Result<Self> {
        let urls: Vec<String> =
            if urls.is_empty() { vec![settings.broker.url.expose().to_string()] } else { urls.to_vec() };
        let brokers = urls
            .iter()
            .map(|u| {
                let mut b: BrokerSettings = settings.broker.clone();
                b.url = reelfleet_core::settings::Secret::new(u.clone());
                Broker::new(&b, "chaos-tap")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let topology = Topology::from_settings(settings);
        let queue = format!("{}.chaos.completed", settings.namespace);
        let ch = brokers[0].channel().await.context("tap channel")?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
            .await
            .context("declaring the event tap")?;
        ch.queue_bind(
            queue.as_str().into(),
            topology.events_exchange().as_str().into(),
            "job.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the event tap (is the events exchange declared?)")?;
        let _ = ch.close(200, "bound".into()).await;
        Ok(Self { brokers, queue, counts: BTreeMap::new() })
    }

    /// Takes every event waiting in the tap and counts it per job.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for broker in &self.brokers {
            let ch = match broker.channel().await {
                Ok(ch) => ch,
                Err(e) => {
                    last = Some(anyhow::Error::from(e));
                    continue;
                }
            };
            loop {
                match ch.basic_get(self.queue.as_str().into(), BasicGetOptions::default()).await {
                    Ok(Some(msg)) => {
                        let d = msg.delivery;
                        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
                        let job = body["job_id"].as_str().unwrap_or("<no job_id>").to_string();
                        *self.counts.entry(job).or_default() += 1;
                        d.acker.ack(BasicAckOptions::default()).await?;
                    }
                    Ok(None) => {
                        let _ = ch.close(200, "drained".into()).await;
                        return Ok(());
                    }
                    Err(e) => {
                        last = Some(e.into());
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker to read the tap from")))
    }

    /// Counts per job, once every job in `expect` has at least one event (or
    /// after `timeout`), plus two seconds for late duplicates.
    async fn counts(&mut self, expect: &[String], timeout: Duration) -> anyhow::Result<BTreeMap<String, usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain().await?;
            if expect.iter().all(|j| self.counts.contains_key(j)) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.drain().await?;
        Ok(self.counts.clone())
    }

    pub(crate) async fn delete(self) {
        for broker in &self.brokers {
            if let Ok(ch) = broker.channel().await {
                if ch.queue_delete(self.queue.as_str().into(), Default::default()).await.is_ok() {
                    return;
                }
            }
        }
    }
}

/// The independent figures of one case.
#[derive(Clone, Debug, Default)]
pub(crate) struct Audit {
    pub(crate) jobs: usize,
    /// Manifests that say completed.
    pub(crate) completed: usize,
    /// Manifests that say failed.
    pub(crate) failed: usize,
    /// Jobs neither completed nor failed (no manifest, or stuck mid-pipeline).
    pub(crate) unfinished: Vec<String>,
    /// Jobs named by more than one request in the provider's usage log.
    pub(crate) billed_twice: Vec<String>,
    /// Requests the provider billed.
    pub(crate) requests_billed: usize,
    /// Input + output tokens of every charge in the jobs' manifests.
    pub(crate) tokens_charged: u64,
    /// Input + output tokens in the provider's usage log.
    pub(crate) tokens_billed: u64,
    /// Whether `ledger::reconcile` found the ledger equal to the bill.
    pub(crate) reconciled: bool,
    /// Billed minus recorded tokens, over every model, from the reconcile report.
    pub(crate) reconciled_difference: i64,
    /// Requests billed that no ledger entry records.
    pub(crate) unrecorded_requests: Vec<String>,
    /// Requests recorded but not billed, or recorded differently.
    pub(crate) unbilled_or_mismatched: usize,
    /// `job.completed` events seen per job beyond the first.
    pub(crate) duplicate_completed_events: Vec<String>,
    /// Completed jobs with no `job.completed` event.
    pub(crate) missing_completed_events: Vec<String>,
    /// Messages in every `*.dlq` and `*.dlx` queue of the namespace.
    pub(crate) dead_letters_left: u64,
}

impl Audit {
    /// Reads every source once the case has settled.
    pub(crate) async fn take(fleet: &Fleet, tap: &mut EventTap, jobs: &[String]) -> anyhow::Result<Self> {
        let mut a = Audit { jobs: jobs.len(), ..Default::default() };
        let manifests = fleet.load_all(jobs).await;
        let mut completed_ids = Vec::new();
        for m in &manifests {
            match m.status {
                JobStatus::Completed => {
                    a.completed += 1;
                    completed_ids.push(m.job_id.clone());
                }
                JobStatus::Failed => a.failed += 1,
                _ => a.unfinished.push(m.job_id.clone()),
            }
            a.tokens_charged += m.charges.iter().map(|c| c.input_tokens + c.output_tokens).sum::<u64>();
        }
        a.unfinished.extend(jobs.iter().filter(|j| !manifests.iter().any(|m| &m.job_id == *j)).cloned());

        let usage = fleet.usage().await?;
        a.requests_billed = usage.len();
        a.tokens_billed = usage.iter().map(|u| u.prompt_tokens + u.completion_tokens).sum();
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for u in &usage {
            for j in &u.job_ids {
                *per_job.entry(j.as_str()).or_default() += 1;
            }
        }
        a.billed_twice = per_job.into_iter().filter(|(_, n)| *n > 1).map(|(j, _)| j.to_string()).collect();

        let report = ledger::run(&fleet.settings, &Storage::new(&fleet.settings.s3), &ReconcileOptions::default())
            .await
            .context("reconciling the ledger")?;
        a.reconciled = report.balanced;
        a.reconciled_difference =
            report.models.iter().map(|l| l.difference.input_tokens + l.difference.output_tokens).sum();
        a.unrecorded_requests = report.unrecorded.iter().map(|u| u.request_id.clone()).collect();
        a.unbilled_or_mismatched = report.unbilled.len() + report.mismatched.len();

        let events = tap.counts(&completed_ids, Duration::from_secs(20)).await?;
        a.duplicate_completed_events = events.iter().filter(|(_, n)| **n > 1).map(|(j, _)| j.clone()).collect();
        a.missing_completed_events = completed_ids.iter().filter(|j| !events.contains_key(*j)).cloned().collect();

        a.dead_letters_left = dead_letters(fleet).await?;
        Ok(a)
    }

    /// Everything finished, nothing billed twice, ledger equal to the bill,
    /// one completion event per completed job, no dead letter left.
    pub(crate) fn clean(&self) -> bool {
        self.completed == self.jobs
            && self.billed_twice.is_empty()
            && self.reconciled
            && self.tokens_charged == self.tokens_billed
            && self.duplicate_completed_events.is_empty()
            && self.missing_completed_events.is_empty()
            && self.dead_letters_left == 0
    }

    /// One line for the table.
    pub(crate) fn line(&self) -> String {
        format!(
            "audit: {}/{} completed ({} failed, {} unfinished), {} billed twice, tokens charged {} / billed {} ({} requests), reconcile {} (difference {} tokens, {} unrecorded, {} unbilled/mismatched), {} duplicate and {} missing job.completed events, {} dead letters left",
            self.completed,
            self.jobs,
            self.failed,
            self.unfinished.len(),
            self.billed_twice.len(),
            self.tokens_charged,
            self.tokens_billed,
            self.requests_billed,
            if self.reconciled { "balanced" } else { "UNBALANCED" },
            self.reconciled_difference,
            self.unrecorded_requests.len(),
            self.unbilled_or_mismatched,
            self.duplicate_completed_events.len(),
            self.missing_completed_events.len(),
            self.dead_letters_left,
        )
    }

    /// The fields faults.json carries per case.
    pub(crate) fn json(&self) -> serde_json::Value {
        let some = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>();
        serde_json::json!({
            "jobs": self.jobs,
            "completed": self.completed,
            "failed": self.failed,
            "unfinished": self.unfinished.len(),
            "billed_twice": self.billed_twice.len(),
            "billed_twice_jobs": some(&self.billed_twice),
            "requests_billed": self.requests_billed,
            "tokens_charged": self.tokens_charged,
            "tokens_billed": self.tokens_billed,
            "reconciled": self.reconciled,
            "reconciled_difference": self.reconciled_difference,
            "unrecorded_requests": some(&self.unrecorded_requests),
            "unbilled_or_mismatched_requests": self.unbilled_or_mismatched,
            "duplicate_completed_events": self.duplicate_completed_events.len(),
            "duplicate_completed_event_jobs": some(&self.duplicate_completed_events),
            "missing_completed_events": self.missing_completed_events.len(),
            "dead_letters_left": self.dead_letters_left,
        })
    }
}

/// Ready messages in every dead-letter queue of the namespace, from passive declares.
pub(crate) async fn dead_letters(fleet: &Fleet) -> anyhow::Result<u64> {
    queue_depths(fleet, |q| q.ends_with(".dlq") || q.ends_with(".dlx")).await.map(|d| d.values().sum())
}

/// Ready messages of the namespace's queues whose name passes `pick`.
pub(crate) async fn queue_depths(fleet: &Fleet, pick: impl Fn(&str) -> bool) -> anyhow::Result<BTreeMap<String, u64>> {
    let broker = Broker::new(&fleet.settings.broker, "chaos-audit")?;
    let mut out = BTreeMap::new();
    for name in Topology::from_settings(&fleet.settings).all_queue_names().into_iter().filter(|q| pick(q)) {
        // A failed passive declare closes the channel, so each gets its own.
        let ch = broker.channel().await?;
        let opts = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch
            .queue_declare(name.as_str().into(), opts, FieldTable::default())
            .await
            .with_context(|| format!("queue {name}"))?;
        out.insert(name, u64::from(q.message_count()));
        let _ = ch.close(200, "counted".into()).await;
    }
    Ok(out)
}
