//! reelfleet-inference: consumes the four tier queues in batches (size or
//! max wait, whichever comes first), routes each tier to its model (a
//! fallback model while the primary cools down after repeated failures),
//! packs several analyze jobs into one chat request within the model's
//! limits, honours rate limits and `Retry-After`, calls the HMAC-signed video
//! API for generate jobs, and keeps an exact cost ledger: each request's
//! billed tokens are split over its jobs so that the jobs add up to the bill,
//! and every share is stored the moment the answer arrives ([`ledger`]).
//!
//! Every job is claimed before anything is sent for it (the job state machine
//! in core), so a duplicated message never pays twice, and a job id that
//! appears twice in one batch is sent once.
//!
//! Budgets, rate limits and cooldowns are the fleet's, not a replica's: they
//! live in the shared state database (core's `fleetstate`).
//!
//! Layout: [`router`] (model choice and cooldowns), [`pack`] (request packing
//! and token split), [`ledger`] (the write-ahead ledger), [`budget`] (daily
//! budgets with reservations), `limits` (rate limits), `provider` (HTTP clients).

pub mod budget;
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
    fleetstate::FleetState,
    jobstate::{envelope_of, Claimed, Held, JobClaims, PipelineStage},
    manifest::{stage_key, Charge, InferenceInfo, JobManifest, JobStatus, ManifestStore},
    media::scratch_dir,
    metrics::Metrics,
    runtime::{Batching, Dispatch, Input, Message, Stage},
    settings::{BudgetAction, Settings},
    storage::Storage,
    topology::WorkQueue,
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
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

/// An analyze job ready to send: its keyframes loaded.
struct AnalyzeJob {
    index: usize,
    envelope: Envelope,
    held: Held,
    images: Vec<Vec<u8>>,
    context: String,
}

/// An analyze job whose keyframes could not be loaded.
struct Unloaded {
    index: usize,
    envelope: Envelope,
    held: Held,
    error: StageError,
}

/// One job's usable answer.
struct JobAnswer {
    result: serde_json::Value,
    request_id: Option<String>,
    jobs_in_request: usize,
    model: String,
    fallback_from: Option<String>,
}

/// What one provider request gave: the usable answers (by job id).
struct RequestOutcome {
    answers: HashMap<String, JobAnswer>,
}

/// One job's fate in a batch.
enum Answer {
    Answered(JobAnswer),
    Failed(StageError),
    /// Not sent: the tier's budget is spent.
    OverBudget(budget::Spend),
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
            Some(manifest) => self.next(envelope, &manifest),
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

    async fn load_job(&self, index: usize, envelope: Envelope, held: Held) -> Result<AnalyzeJob, Unloaded> {
        if envelope.inputs.is_empty() {
            let error = StageError::permanent("bad_input", "analyze job without keyframes");
            return Err(Unloaded { index, envelope, held, error });
        }
        let reads =
            envelope.inputs.iter().map(|key| self.storage.get_bytes(self.manifests.bucket(), key, MAX_KEYFRAME_BYTES));
        let images = match futures::future::try_join_all(reads).await {
            Ok(images) => images,
            Err(e) => return Err(Unloaded { index, envelope, held, error: e.into() }),
        };
        let context = held
            .manifest
            .input
            .as_ref()
            .map(|i| format!("{}x{} {} video, {:.1} s", i.width, i.height, i.codec, i.duration_s))
            .unwrap_or_default();
        Ok(AnalyzeJob { index, envelope, held, images, context })
    }

    async fn analyze_batch(
        &self,
        jobs: Vec<(usize, Envelope, Held, Vec<LedgerEntry>)>,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(usize, Result<Vec<Dispatch>, StageError>)> {
        let Some(tier) = jobs.first().and_then(|(_, e, h, _)| e.tier.or(h.manifest.tier)) else { return Vec::new() };
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for (i, envelope, held, entries) in jobs {
            // Answered and billed before (the worker died before storing the rest): use that answer.
            match entries.iter().rev().find(|e| e.answer.is_some()) {
                Some(e) => {
                    info!(job_id = %envelope.job_id, request_id = e.request_id(), "Answer found in the ledger; not paying again");
                    let answer = JobAnswer {
                        result: e.answer.clone().unwrap_or_default(),
                        request_id: e.charge.request_id.clone(),
                        jobs_in_request: e.charge.jobs_in_request as usize,
                        model: e.charge.model.clone(),
                        fallback_from: None,
                    };
                    out.push((i, self.store_analysis(tier, envelope, held, answer, started).await));
                }
                None => fresh.push((i, envelope, held)),
            }
        }
        let loaded: Vec<Result<AnalyzeJob, Unloaded>> =
            stream::iter(fresh).map(|(i, e, h)| self.load_job(i, e, h)).buffered(16).collect().await;
        let mut ready = Vec::new();
        for r in loaded {
            match r {
                Ok(job) => ready.push(job),
                Err(u) => out.push((u.index, self.fail(&u.envelope, u.held, u.error).await)),
            }
        }
        if ready.is_empty() {
            return out;
        }
        // One pick per batch: the batch is packed to the limits of the model it is sent to.
        let route = match self.router.pick(&self.settings.inference, tier).await {
            Ok(route) => route,
            Err(e) => {
                let e = StageError::from(e);
                for job in ready {
                    out.push((job.index, self.fail(&job.envelope, job.held, e.clone()).await));
                }
                return out;
            }
        };
        let model_limits = self.settings.inference.price(&route.model).cloned();
        let (max_images, max_tokens) =
            model_limits.map(|m| (m.max_images_per_request, m.max_input_tokens)).unwrap_or((64, 128_000));
        let items: Vec<pack::PackItem> = ready
            .iter()
            .map(|j| pack::PackItem {
                job_id: j.envelope.job_id.clone(),
                images: j.images.len(),
                text_chars: j.context.len() + 48,
            })
            .collect();
        let groups = pack::pack(&items, max_images, max_tokens, self.settings.inference.tokens_per_image_estimate);
        let answered: Vec<Vec<(usize, Answer)>> = stream::iter(groups)
            .map(|group| {
                let (ready, route) = (&ready, route.clone());
                async move { self.run_group(tier, route, ready, group).await }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        let mut by_pos: HashMap<usize, Answer> = answered.into_iter().flatten().collect();
        let finished: Vec<(usize, Result<Vec<Dispatch>, StageError>)> = stream::iter(ready.into_iter().enumerate())
            .map(|(pos, job)| {
                let answer = by_pos
                    .remove(&pos)
                    .unwrap_or_else(|| Answer::Failed(StageError::transient("internal", "job lost its answer")));
                async move {
                    let index = job.index;
                    let r = match answer {
                        Answer::Answered(a) => self.store_analysis(tier, job.envelope, job.held, a, started).await,
                        Answer::Failed(e) => self.fail(&job.envelope, job.held, e).await,
                        Answer::OverBudget(spend) => self.over_budget(tier, spend, job.envelope, job.held).await,
                    };
                    (index, r)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        out.extend(finished);
        out
    }

    /// Sends one packed request (and single-job retries for jobs whose part
    /// of the answer is missing); returns each job's answer, by position.
    async fn run_group(
        &self,
        tier: Tier,
        route: router::Route,
        jobs: &[AnalyzeJob],
        group: Vec<usize>,
    ) -> Vec<(usize, Answer)> {
        let mut out = Vec::new();
        let members: Vec<&AnalyzeJob> = group.iter().map(|&p| &jobs[p]).collect();
        let mut answers = match self.request(tier, route.clone(), &members).await {
            Ok(Ok(o)) => o.answers,
            Ok(Err(spend)) => return group.into_iter().map(|p| (p, Answer::OverBudget(spend))).collect(),
            Err(e) => return group.into_iter().map(|p| (p, Answer::Failed(e.clone()))).collect(),
        };
        for p in group {
            let id = &jobs[p].envelope.job_id;
            if let Some(a) = answers.remove(id) {
                out.push((p, Answer::Answered(a)));
                continue;
            }
            // Missing or unusable part: this job alone, once; its first share stays on its bill (the ledger).
            warn!(job_id = %id, "No usable answer for the job in its batch; asking for it alone");
            let single = match self.request(tier, route.clone(), &[&jobs[p]]).await {
                Ok(Ok(mut o)) => match o.answers.remove(id) {
                    Some(a) => Answer::Answered(a),
                    None => Answer::Failed(StageError::transient(
                        "provider",
                        "the model gave no usable answer for this job",
                    )),
                },
                Ok(Err(spend)) => Answer::OverBudget(spend),
                Err(e) => Answer::Failed(e),
            };
            out.push((p, single));
        }
        out
    }

    /// One chat request for `jobs`, through the tier's budget, rate limits,
    /// retries and fallback; the billed tokens split exactly over all its
    /// jobs, answered or not (an unusable answer was billed too). `Err(spend)`
    /// inside when the tier's budget has no room for it: nothing was sent.
    async fn request(
        &self,
        tier: Tier,
        mut route: router::Route,
        jobs: &[&AnalyzeJob],
    ) -> Result<Result<RequestOutcome, budget::Spend>, StageError> {
        use base64::Engine;
        let ids: Vec<String> = jobs.iter().map(|j| j.envelope.job_id.clone()).collect();
        let mut parts = vec![serde_json::json!({"type": "text", "text": pack::INSTRUCTIONS})];
        let mut weights = Vec::new();
        for j in jobs {
            let text = format!("job_id: {} ({})", j.envelope.job_id, j.context);
            let mut weight = (text.len() as u64).div_ceil(4);
            parts.push(serde_json::json!({"type": "text", "text": text}));
            for img in &j.images {
                let b64 = base64::engine::general_purpose::STANDARD.encode(img);
                parts.push(serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{b64}")}}));
                weight += self.settings.inference.tokens_per_image_estimate;
            }
            weights.push(weight);
        }
        let estimate: u64 = weights.iter().sum::<u64>() + (pack::INSTRUCTIONS.len() as u64).div_ceil(4);
        let est_usd = self.cost(&route.model, estimate, OUTPUT_TOKENS_ESTIMATE * jobs.len() as u64)?;
        let reservation = match self.reserve(tier, est_usd).await? {
            Ok(r) => r,
            Err(spend) => return Ok(Err(spend)),
        };
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let mut billed_usd = 0.0;
        let outcome =
            self.exchange(tier, &mut route, &ids, &parts, &weights, estimate, &request_id, &mut billed_usd).await;
        self.settle(tier, reservation, billed_usd).await;
        outcome.map(Ok)
    }

    /// Sets aside `usd` of `tier`'s budget; `Ok(None)` for a tier without a cap,
    /// `Err(spend)` when the cap is reached.
    async fn reserve(
        &self,
        tier: Tier,
        usd: f64,
    ) -> Result<Result<Option<budget::Reservation>, budget::Spend>, StageError> {
        let Some(cap) = self.settings.inference.tier(tier).daily_budget_usd else { return Ok(Ok(None)) };
        match self.budgets.reserve(tier, cap, usd).await? {
            Some(r) => Ok(Ok(Some(r))),
            None => Ok(Err(self.budgets.spend(tier).await?)),
        }
    }

    /// Turns a reservation into what was billed (or counts the spend of a tier without a cap).
    async fn settle(&self, tier: Tier, reservation: Option<budget::Reservation>, billed_usd: f64) {
        match reservation {
            Some(r) if billed_usd > 0.0 => self.budgets.settle(r, billed_usd).await,
            Some(r) => self.budgets.release(r).await,
            None if billed_usd > 0.0 => self.budgets.record(tier, billed_usd).await,
            None => {}
        }
    }

    /// Sends the request (falling back to the tier's fallback model when the
    /// model keeps failing), records what was billed in the ledger and adds it to `billed_usd`.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        tier: Tier,
        route: &mut router::Route,
        ids: &[String],
        parts: &[serde_json::Value],
        weights: &[u64],
        estimate: u64,
        request_id: &str,
        billed_usd: &mut f64,
    ) -> Result<RequestOutcome, StageError> {
        let mut tried_fallback = route.fallback_from.is_some();
        loop {
            let body = serde_json::json!({
                "model": route.model,
                "messages": [{"role": "user", "content": parts}],
                "response_format": {"type": "json_object"},
            });
            match self.send(&route.model, &body, request_id, estimate).await {
                Ok(resp) => {
                    if let Err(e) = self.router.record(&self.settings.inference, &route.model, true).await {
                        warn!(model = %route.model, error = %e, "Could not record the model's success");
                    }
                    let results = pack::parse_results(&resp.content, ids);
                    let out_weights: Vec<u64> =
                        ids.iter().map(|id| results.get(id).map(|r| r.to_string().len() as u64).unwrap_or(0)).collect();
                    let inputs = pack::allocate(resp.prompt_tokens, weights);
                    let outputs = pack::allocate(resp.completion_tokens, &out_weights);
                    let now = chrono::Utc::now();
                    let mut entries = Vec::with_capacity(ids.len());
                    for (k, id) in ids.iter().enumerate() {
                        let charge = Charge {
                            model: route.model.clone(),
                            request_id: resp.id.clone(),
                            jobs_in_request: ids.len() as u32,
                            input_tokens: inputs[k],
                            output_tokens: outputs[k],
                            usd: self.cost(&route.model, inputs[k], outputs[k])?,
                            answered: results.contains_key(id),
                        };
                        self.account(tier, &charge);
                        *billed_usd += charge.usd;
                        if !charge.answered {
                            warn!(job_id = %id, input_tokens = charge.input_tokens, "Billed for an unusable answer");
                        }
                        entries.push(LedgerEntry {
                            job_id: id.clone(),
                            kind: "chat".into(),
                            client_request_id: request_id.to_string(),
                            charge,
                            answer: results.get(id).cloned(),
                            recorded_at: now,
                        });
                    }
                    // Paid for: stored before anything else can fail.
                    self.ledger.record(&entries).await?;
                    let answers = results
                        .into_iter()
                        .map(|(id, result)| {
                            let a = JobAnswer {
                                result,
                                request_id: resp.id.clone(),
                                jobs_in_request: ids.len(),
                                model: route.model.clone(),
                                fallback_from: route.fallback_from.clone(),
                            };
                            (id, a)
                        })
                        .collect();
                    return Ok(RequestOutcome { answers });
                }
                Err(ProviderError::Refused(m)) => {
                    return Err(StageError::permanent("provider", format!("{}: {m}", route.model)))
                }
                Err(e) => {
                    let cooled = match self.router.record(&self.settings.inference, &route.model, false).await {
                        Ok(cooled) => cooled || self.router.cooling(&route.model).await.unwrap_or(false),
                        Err(state) => {
                            warn!(model = %route.model, error = %state, "Could not record the model's failure");
                            false
                        }
                    };
                    let fallback = self.settings.inference.tier(tier).fallback_model.clone();
                    if let (true, false, Some(fb)) = (cooled, tried_fallback, fallback) {
                        warn!(model = %route.model, fallback = %fb, "Model keeps failing; its fallback takes over");
                        *route = router::Route { model: fb, fallback_from: Some(route.model.clone()) };
                        tried_fallback = true;
                        continue;
                    }
                    return Err(StageError::transient("provider", format!("{}: {e}", route.model)));
                }
            }
        }
    }

    /// Every billed share goes to the metrics at once.
    fn account(&self, tier: Tier, c: &Charge) {
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "input"]).inc_by(c.input_tokens);
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "output"]).inc_by(c.output_tokens);
        self.metrics.cost_usd.with_label_values(&[tier.as_str(), &c.model]).inc_by(c.usd);
    }

    /// Sends one chat request, waiting out rate limits and `Retry-After`, retrying 5xx with backoff.
    async fn send(
        &self,
        model: &str,
        body: &serde_json::Value,
        request_id: &str,
        estimate: u64,
    ) -> Result<ChatResponse, ProviderError> {
        self.with_retries(model, estimate, || self.provider.chat(body, request_id)).await
    }

    /// Runs one provider call (the same request, the same `X-Request-Id`)
    /// through the model's rate limits until it answers: a 429 waits out its
    /// `Retry-After`, other transient failures back off, up to the configured attempts.
    async fn with_retries<T, F, Fut>(&self, model: &str, estimate: u64, call: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        use backon::BackoffBuilder;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        let (mut failures, mut throttled) = (0u32, 0u32);
        loop {
            self.limits.acquire(model, estimate).await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
            match call().await {
                Ok(r) => return Ok(r),
                Err(ProviderError::RateLimited(wait)) => {
                    throttled += 1;
                    self.metrics.failures.with_label_values(&["inference", "transient", "rate_limited"]).inc();
                    // This request waits out its Retry-After; the model's request and
                    // token buckets keep the client as a whole under the provider's limits.
                    tokio::time::sleep(wait).await;
                    if throttled > 30 {
                        return Err(ProviderError::Unavailable(format!("still rate limited after {throttled} waits")));
                    }
                }
                Err(e @ ProviderError::Refused(_)) => return Err(e),
                Err(e) => {
                    failures += 1;
                    if failures >= self.settings.inference.request_attempts.max(1) {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    }

    async fn store_analysis(
        &self,
        tier: Tier,
        envelope: Envelope,
        held: Held,
        a: JobAnswer,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let key = stage_key(&envelope.job_id, "inference", "analysis.json");
        let doc = serde_json::json!({
            "job_id": envelope.job_id,
            "model": a.model,
            "request_id": a.request_id,
            "result": a.result,
        });
        let body = serde_json::to_vec_pretty(&doc).expect("json");
        if let Err(e) = self.storage.put_bytes(self.manifests.bucket(), &key, body, "application/json").await {
            return self.fail(&envelope, held, e.into()).await;
        }
        let info = InferenceInfo {
            tier: Some(tier),
            model: a.model,
            fallback_from: a.fallback_from,
            request_id: a.request_id,
            jobs_in_request: a.jobs_in_request as u32,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            result_key: key,
            summary: a.result.get("summary").and_then(|s| s.as_str()).map(str::to_string),
            tags: a
                .result
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        };
        self.finish(&envelope, held, info, started).await
    }

    async fn generate(
        &self,
        envelope: Envelope,
        held: Held,
        entries: Vec<LedgerEntry>,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let tier = envelope.tier.or(held.manifest.tier).unwrap_or_default();
        let stored = entries.into_iter().rev().find(|e| e.answer.is_some());
        let reservation = match (&stored, &held.manifest.prompt) {
            (None, Some(doc)) => {
                let estimate = doc.duration_seconds * self.settings.inference.video_usd_per_second;
                match self.reserve(tier, estimate).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(spend)) => return self.over_budget(tier, spend, envelope, held).await,
                    Err(e) => return self.fail(&envelope, held, e).await,
                }
            }
            _ => None,
        };
        let mut billed_usd = 0.0;
        let generated = self.generate_video(&envelope, &held, stored, &mut billed_usd).await;
        self.settle(tier, reservation, billed_usd).await;
        match generated {
            Ok(info) => self.finish(&envelope, held, info, started).await,
            Err(e) => self.fail(&envelope, held, e).await,
        }
    }

    /// Asks for the video (or finds its answer in the ledger), records the
    /// bill, downloads it and stores it in the work bucket.
    async fn generate_video(
        &self,
        envelope: &Envelope,
        held: &Held,
        stored: Option<LedgerEntry>,
        billed_usd: &mut f64,
    ) -> Result<InferenceInfo, StageError> {
        let tier = envelope.tier.or(held.manifest.tier).unwrap_or_default();
        let doc = held
            .manifest
            .prompt
            .clone()
            .ok_or_else(|| StageError::permanent("bad_input", "generate job without a prompt document"))?;
        let model = self.settings.inference.video_model.clone();
        let (answer, charge) = match stored {
            Some(e) => {
                info!(job_id = %envelope.job_id, request_id = e.request_id(), "Video already billed; fetching it again without paying");
                (
                    serde_json::from_value(e.answer.clone().unwrap_or_default())
                        .map_err(|err| StageError::permanent("storage", format!("ledger answer unreadable: {err}")))?,
                    e.charge,
                )
            }
            None => {
                let request_id = uuid::Uuid::new_v4().simple().to_string();
                let answer = self.send_video(&model, &doc, &envelope.job_id, &request_id).await?;
                let usd = match self.settings.inference.price(&model) {
                    Some(p) => answer.total_tokens as f64 * p.output_per_mtok / 1_000_000.0,
                    None => doc.duration_seconds * self.settings.inference.video_usd_per_second,
                };
                let charge = Charge {
                    model: model.clone(),
                    request_id: Some(answer.id.clone()),
                    jobs_in_request: 1,
                    input_tokens: 0,
                    output_tokens: answer.total_tokens,
                    usd,
                    answered: true,
                };
                self.account(tier, &charge);
                *billed_usd += charge.usd;
                let entry = LedgerEntry {
                    job_id: envelope.job_id.clone(),
                    kind: "video".into(),
                    client_request_id: request_id,
                    charge: charge.clone(),
                    answer: Some(serde_json::to_value(&answer).expect("answer serializes")),
                    recorded_at: chrono::Utc::now(),
                };
                // Paid for: stored before the download or anything else can fail.
                self.ledger.record(std::slice::from_ref(&entry)).await?;
                (answer, charge)
            }
        };
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let path = dir.path().join("generated.mp4");
        self.provider.download_video(&answer.url, &path).await?;
        let key = stage_key(&envelope.job_id, "inference", "generated.mp4");
        self.storage.upload(self.manifests.bucket(), &key, &path, "video/mp4").await?;
        Ok(InferenceInfo {
            tier: Some(tier),
            model,
            fallback_from: None,
            request_id: Some(answer.id),
            jobs_in_request: 1,
            input_tokens: 0,
            output_tokens: charge.output_tokens,
            cost_usd: charge.usd,
            result_key: key,
            summary: None,
            tags: Vec::new(),
        })
    }

    /// Sends one video request through the model's rate limits, waiting out
    /// `Retry-After` and retrying 5xx with backoff, like chat.
    async fn send_video(
        &self,
        model: &str,
        doc: &reelfleet_core::manifest::PromptDocument,
        job_id: &str,
        request_id: &str,
    ) -> Result<VideoResult, ProviderError> {
        self.with_retries(model, 1, || self.provider.generate_video(model, doc, job_id, request_id)).await
    }
}

/// Tokens and USD of a job's whole bill.
fn totals(charges: &[Charge]) -> (u64, u64, f64) {
    charges.iter().fold((0, 0, 0.0), |(i, o, u), c| (i + c.input_tokens, o + c.output_tokens, u + c.usd))
}
