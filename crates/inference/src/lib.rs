//! reelfleet-inference: consumes the four tier queues in batches (size or
//! max wait, whichever comes first), routes each tier to its model (a
//! fallback model while the primary cools down after repeated failures),
//! packs several analyze jobs into one chat request within the model's
//! limits, honours rate limits and `Retry-After`, calls the HMAC-signed video
//! API for generate jobs, and keeps an exact cost ledger: each request's
//! billed tokens are split over its jobs so that the jobs add up to the bill,
//! and every share is stored the moment the answer arrives ([`ledger`]).
//!
//! - this file: the stage: claims, budget check, storing results.
//! - `analyze`: batched chat requests for analyze jobs.
//! - `generate`: video requests for generate jobs.
//! - `call`: every provider call through budget, rate limits and retries.
//! - [`router`]: which model serves a tier, and cooldowns.
//! - [`pack`]: request packing and the split of a bill over its jobs.
//! - [`ledger`]: the write-ahead cost ledger.
//! - [`budget`]: daily budgets per tier, with reservations.
//! - `limits`: per-model rate limits shared by every replica.
//! - `provider`: the provider's HTTP clients.
//!
//! Every job is claimed before anything is sent for it (the job state machine
//! in core), so a duplicated message never pays twice, and a job id that
//! appears twice in one batch is sent once.
//!
//! Budgets, rate limits and cooldowns are the fleet's, not a replica's: they
//! live in the shared state database (core's `fleetstate`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod analyze;
pub mod budget;
mod call;
mod generate;
pub mod ledger;
mod limits;
pub mod pack;
mod provider;
pub mod router;

pub use provider::{sign_video_request, ChatResponse, Provider, ProviderError, VideoResult};

use async_trait::async_trait;
use futures::{stream, StreamExt};
use ledger::{Ledger, LedgerEntry};
use reelfleet_core::{
    envelope::{Envelope, JobKind, Tier},
    error::StageError,
    events::{Event, JOB_CHARGED},
    fleetstate::FleetState,
    jobstate::{envelope_of, Claimed, Held, JobClaims, PipelineStage},
    manifest::{Charge, InferenceInfo, JobManifest, JobStatus, ManifestStore},
    metrics::Metrics,
    runtime::{Batching, Dispatch, Input, Message, Stage},
    settings::{BudgetAction, Settings},
    storage::Storage,
    topology::WorkQueue,
};
use std::{collections::HashSet, sync::Arc, time::Duration};
use tracing::{info, warn};

/// Largest keyframe sent to a model, in bytes.
pub const MAX_KEYFRAME_BYTES: u64 = 8 * 1024 * 1024;
/// Output tokens reserved per job when a batch's cost is estimated ahead of the bill.
pub const OUTPUT_TOKENS_ESTIMATE: u64 = 256;

/// The inference stage.
#[derive(Clone, Debug)]
pub struct Inference {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    claims: JobClaims,
    ledger: Ledger,
    provider: Provider,
    tiers: Vec<Tier>,
    metrics: Metrics,
    router: router::Router,
    limits: Arc<limits::Limits>,
    budgets: budget::Budgets,
}

/// What became of one message before any provider call.
enum Plan {
    Done(Result<Vec<Dispatch>, StageError>),
    /// Claimed; what the ledger already holds for the job.
    Analyze(Envelope, Held, Vec<LedgerEntry>),
    Generate(Envelope, Held, Vec<LedgerEntry>),
}

#[async_trait]
impl Stage for Inference {
    fn name(&self) -> &'static str {
        "inference"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        self.tiers.iter().map(|t| WorkQueue::Inference(*t)).collect()
    }

    fn batching(&self, queue: WorkQueue) -> Option<Batching> {
        let WorkQueue::Inference(tier) = queue else { return None };
        let t = self.settings.inference.tier(tier);
        Some(Batching {
            size: t.batch_size.max(1),
            max_wait: Duration::from_millis(t.max_wait_ms),
            concurrency: t.concurrency.max(1),
        })
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        self.handle_batch(vec![msg]).await.pop().expect("one result per message")
    }

    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<Result<Vec<Dispatch>, StageError>> {
        let n = msgs.len();
        let mut results: Vec<Option<Result<Vec<Dispatch>, StageError>>> = (0..n).map(|_| None).collect();
        let started = chrono::Utc::now();
        let mut seen = HashSet::new();
        let mut unique = Vec::with_capacity(n);
        for (i, m) in msgs.into_iter().enumerate() {
            if let Input::Envelope(e) = &m.input {
                if !seen.insert(e.job_id.clone()) {
                    info!(job_id = %e.job_id, "Job appears twice in the batch; the copy is dropped");
                    results[i] = Some(Ok(Vec::new()));
                    continue;
                }
            }
            unique.push((i, m));
        }
        let plans: Vec<(usize, Plan)> =
            stream::iter(unique).map(|(i, m)| async move { (i, self.plan(m).await) }).buffered(16).collect().await;
        let mut analyze = Vec::new();
        let mut generate = Vec::new();
        for (i, plan) in plans {
            match plan {
                Plan::Done(r) => results[i] = Some(r),
                Plan::Analyze(e, h, entries) => analyze.push((i, e, h, entries)),
                Plan::Generate(e, h, entries) => generate.push((i, e, h, entries)),
            }
        }
        let generated: Vec<(usize, Result<Vec<Dispatch>, StageError>)> = stream::iter(generate)
            .map(|(i, e, h, entries)| async move { (i, self.generate(e, h, entries, started).await) })
            .buffer_unordered(4)
            .collect()
            .await;
        for (i, r) in generated {
            results[i] = Some(r);
        }
        for (i, r) in self.analyze_batch(analyze, started).await {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StageError::transient("internal", "no result for this message"))))
            .collect()
    }
}

impl Inference {
    /// The stage for `settings`, consuming the given tiers (all when empty),
    /// sharing budgets, rate limits and cooldowns through `state`.
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        tiers: Vec<Tier>,
        metrics: Metrics,
        state: FleetState,
    ) -> Result<Self, ProviderError> {
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let claims = JobClaims::new(manifests.clone(), Duration::from_secs(settings.runtime.claim_lease_secs));
        let ledger = Ledger::new(storage.clone(), settings.s3.work_bucket.clone());
        let provider = Provider::new(&settings.inference)?;
        let tiers = if tiers.is_empty() { Tier::ALL.to_vec() } else { tiers };
        let limits = Arc::new(limits::Limits::new(&settings.inference, state.clone()));
        let budgets = budget::Budgets::new(state.clone());
        Ok(Self {
            settings,
            storage,
            manifests,
            claims,
            ledger,
            provider,
            tiers,
            metrics,
            router: router::Router::new(state),
            limits,
            budgets,
        })
    }

    /// Claims a message's job and checks it against the tier's budget and the ledger.
    async fn plan(&self, msg: Message) -> Plan {
        let mut envelope = match envelope_of(&msg, PipelineStage::Inference) {
            Ok(e) => e,
            Err(e) => return Plan::Done(Err(e)),
        };
        // The runtime's count (a replay resets it; the signed body keeps its old value).
        envelope.attempt = msg.attempt;
        let WorkQueue::Inference(tier) = msg.queue else {
            return Plan::Done(Err(StageError::permanent("bad_input", "inference consumes tier queues only")));
        };
        let held = match self.claims.claim(&envelope.job_id, PipelineStage::Inference, msg.attempt).await {
            Ok(Claimed::Run(held)) => *held,
            // Stored before a crash or a lost confirm: reuse it, never pay twice.
            Ok(Claimed::Reforward(manifest)) => return Plan::Done(self.next(&envelope, &manifest)),
            Ok(Claimed::Drop) => return Plan::Done(Ok(Vec::new())),
            Err(e) => return Plan::Done(Err(e)),
        };
        let entries = match self.ledger.entries(&envelope.job_id).await {
            Ok(entries) => entries,
            Err(e) => return Plan::Done(Err(e)),
        };
        let answered = entries.iter().any(|e| e.answer.is_some());
        let t = self.settings.inference.tier(tier);
        if let (Some(cap), false) = (t.daily_budget_usd, answered) {
            // A cheap early look; the reservation before sending is what holds the line.
            match self.budgets.spend(tier).await {
                Ok(spend) if spend.committed() >= cap => {
                    return Plan::Done(self.over_budget(tier, spend, envelope, held).await);
                }
                Ok(_) => {}
                Err(e) => return Plan::Done(Err(e.into())),
            }
        }
        match envelope.kind {
            JobKind::Analyze => Plan::Analyze(envelope, held, entries),
            JobKind::Generate => Plan::Generate(envelope, held, entries),
        }
    }

    async fn over_budget(
        &self,
        tier: Tier,
        spend: budget::Spend,
        mut envelope: Envelope,
        held: Held,
    ) -> Result<Vec<Dispatch>, StageError> {
        let t = self.settings.inference.tier(tier);
        let (cap, action) = (t.daily_budget_usd.unwrap_or(0.0), t.on_budget);
        let why = format!(
            "tier {tier} spent ${:.6} (and holds ${:.6} for requests in flight) of its ${cap:.6} daily budget",
            spend.spent_usd, spend.reserved_usd
        );
        match (action, router::cheaper(tier)) {
            (BudgetAction::Downgrade, Some(lower)) => {
                info!(job_id = %envelope.job_id, from = %tier, to = %lower, "{why}; downgraded");
                let stored = held
                    .commit(|m| {
                        m.tier = Some(lower);
                        if let Some(p) = m.preprocess.as_mut() {
                            p.tier = lower;
                            p.tier_reason = format!("{}; downgraded from {tier}: {why}", p.tier_reason);
                        }
                    })
                    .await?;
                if stored.is_none() {
                    return Ok(Vec::new());
                }
                envelope.tier = Some(lower);
                Ok(vec![Dispatch::Next {
                    queue: WorkQueue::Inference(lower),
                    envelope: envelope.forward(envelope.inputs.clone()),
                }])
            }
            _ => {
                let wait = router::until_tomorrow();
                info!(job_id = %envelope.job_id, tier = %tier, wait_s = wait.as_secs(), "{why}; paused until tomorrow (UTC)");
                Err(StageError::deferred("budget", format!("{why}; paused until the next UTC day"), wait))
            }
        }
    }

    /// Postprocess's message for a job whose inference is stored, and the record that it was sent.
    fn next(&self, envelope: &Envelope, manifest: &JobManifest) -> Result<Vec<Dispatch>, StageError> {
        let video = match envelope.kind {
            JobKind::Analyze => manifest.preprocess.as_ref().and_then(|p| p.normalized_key.clone()),
            JobKind::Generate => manifest.inference.as_ref().map(|i| i.result_key.clone()),
        }
        .ok_or_else(|| StageError::permanent("bad_input", "manifest names no video for postprocess"))?;
        Ok(vec![
            Dispatch::Next { queue: WorkQueue::Postprocess, envelope: envelope.forward(vec![video]) },
            Dispatch::Handoff { job_id: envelope.job_id.clone() },
        ])
    }

    fn cost(&self, model: &str, input: u64, output: u64) -> Result<f64, StageError> {
        let price = self
            .settings
            .inference
            .price(model)
            .ok_or_else(|| StageError::permanent("config", format!("no price configured for model {model}")))?;
        Ok((input as f64 * price.input_per_mtok + output as f64 * price.output_per_mtok) / 1_000_000.0)
    }

    /// Records the job's inference with every charge its ledger holds,
    /// releases the claim and returns the job's next message.
    async fn finish(
        &self,
        envelope: &Envelope,
        held: Held,
        mut info: InferenceInfo,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let charges = ledger::charges(&self.ledger.entries(&envelope.job_id).await?);
        (info.input_tokens, info.output_tokens, info.cost_usd) = totals(&charges);
        let tier = envelope.tier.or(held.manifest.tier).unwrap_or_default();
        info!(job_id = %envelope.job_id, tier = %tier, model = %info.model, input_tokens = info.input_tokens, output_tokens = info.output_tokens, cost_usd = info.cost_usd, "Inference done");
        let stored = held
            .commit(|m| {
                m.charges = charges.clone();
                m.inference = Some(info.clone());
                m.status = JobStatus::Postprocess;
                m.record_stage("inference", started, envelope.attempt);
            })
            .await?;
        match stored {
            Some(manifest) => {
                let mut out = charged(&manifest, tier);
                out.extend(self.next(envelope, &manifest)?);
                Ok(out)
            }
            None => Ok(Vec::new()),
        }
    }

    /// A job that failed this time keeps every charge billed for it so far in
    /// its manifest (they are in its ledger already), and lets go of its claim.
    async fn fail(&self, envelope: &Envelope, held: Held, err: StageError) -> Result<Vec<Dispatch>, StageError> {
        match self.ledger.entries(&envelope.job_id).await {
            Ok(entries) if !entries.is_empty() => {
                let charges = ledger::charges(&entries);
                if let Err(e) = held.commit(|m| m.charges = charges.clone()).await {
                    warn!(job_id = %envelope.job_id, error = %e, "Could not copy the job's charges into its manifest");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(job_id = %envelope.job_id, error = %e, "Could not read the job's ledger"),
        }
        Err(err)
    }
}

/// `job.charged` for each charge of the job's bill, keyed by job and
/// provider request, so the index counts a charge once however often it is announced.
fn charged(m: &JobManifest, tier: Tier) -> Vec<Dispatch> {
    let total = totals(&m.charges).2;
    m.charges
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let which = c.request_id.clone().unwrap_or_else(|| format!("{}-{i}", c.model));
            let event = Event {
                id: format!("charged-{}-{which}", m.job_id),
                tier: Some(tier.as_str().to_string()),
                model: Some(c.model.clone()),
                cost_usd: Some(c.usd),
                total_usd: Some(total),
                request_id: c.request_id.clone(),
                input_tokens: Some(c.input_tokens),
                output_tokens: Some(c.output_tokens),
                stage: Some("inference".into()),
                ..Event::new(JOB_CHARGED, &m.job_id)
            };
            Dispatch::Event { routing_key: JOB_CHARGED.into(), body: event.to_bytes() }
        })
        .collect()
}

/// Tokens and USD of a job's whole bill.
fn totals(charges: &[Charge]) -> (u64, u64, f64) {
    charges.iter().fold((0, 0, 0.0), |(i, o, u), c| (i + c.input_tokens, o + c.output_tokens, u + c.usd))
}
