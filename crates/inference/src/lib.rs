//! reelfleet-inference: consumes the four tier queues in batches (size or
//! max wait, whichever comes first), routes each tier to its model (a
//! fallback model while the primary cools down after repeated failures),
//! packs several analyze jobs into one chat request within the model's
//! limits, honours rate limits and `Retry-After`, calls the HMAC-signed video
//! API for generate jobs, and keeps an exact cost ledger: each request's
//! billed tokens are split over its jobs so that the jobs add up to the bill.
//!
//! Layout: [`router`] (model choice, cooldowns, daily spend), [`pack`]
//! (request packing and token split), [`limits`] (rate limits), `provider`
//! (HTTP clients).

mod limits;
pub mod pack;
mod provider;
pub mod router;

pub use provider::{sign_video_request, ChatResponse, Provider, ProviderError, VideoResult};

use async_trait::async_trait;
use futures::{stream, StreamExt};
use reelfleet_core::{
    envelope::{Envelope, JobKind, Tier},
    error::StageError,
    manifest::{stage_key, Charge, InferenceInfo, JobManifest, JobStatus, ManifestStore},
    media::scratch_dir,
    metrics::Metrics,
    runtime::{Batching, Dispatch, Input, Message, Stage},
    settings::{BudgetAction, Settings},
    storage::Storage,
    topology::WorkQueue,
};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tracing::{info, warn};

/// Largest keyframe sent to a model, in bytes.
pub const MAX_KEYFRAME_BYTES: u64 = 8 * 1024 * 1024;

/// The inference stage.
#[derive(Clone, Debug)]
pub struct Inference {
    settings: Arc<Settings>,
    storage: Storage,
    manifests: ManifestStore,
    provider: Provider,
    tiers: Vec<Tier>,
    metrics: Metrics,
    router: Arc<router::Router>,
    limits: Arc<limits::Limits>,
}

/// What became of one message before any provider call.
enum Plan {
    Done(Result<Vec<Dispatch>, StageError>),
    Analyze(Envelope, JobManifest),
    Generate(Envelope, JobManifest),
}

/// An analyze job ready to send: its keyframes loaded.
struct AnalyzeJob {
    index: usize,
    envelope: Envelope,
    manifest: JobManifest,
    images: Vec<Vec<u8>>,
    context: String,
}

/// One job's usable answer and every charge that led to it.
struct JobAnswer {
    result: serde_json::Value,
    request_id: Option<String>,
    jobs_in_request: usize,
    charges: Vec<Charge>,
}

/// What one provider request gave.
struct RequestOutcome {
    answers: HashMap<String, JobAnswer>,
    /// Billed shares of jobs whose part of the answer was missing or unusable.
    unanswered: HashMap<String, Charge>,
    model: String,
    fallback_from: Option<String>,
}

/// A job's answer, or its error with the charges already billed for it.
type GroupResult = (Result<(JobAnswer, String, Option<String>), StageError>, Vec<Charge>);

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
        let plans: Vec<Plan> = stream::iter(msgs).map(|m| self.plan(m)).buffered(16).collect().await;
        let mut analyze = Vec::new();
        let mut generate = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            match plan {
                Plan::Done(r) => results[i] = Some(r),
                Plan::Analyze(e, m) => analyze.push((i, e, m)),
                Plan::Generate(e, m) => generate.push((i, e, m)),
            }
        }
        let generated: Vec<(usize, Result<Vec<Dispatch>, StageError>)> = stream::iter(generate)
            .map(|(i, e, m)| async move { (i, self.generate(e, m, started).await) })
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
    /// The stage for `settings`, consuming the given tiers (all when empty).
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        tiers: Vec<Tier>,
        metrics: Metrics,
    ) -> Result<Self, ProviderError> {
        let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
        let provider = Provider::new(&settings.inference)?;
        let tiers = if tiers.is_empty() { Tier::ALL.to_vec() } else { tiers };
        let limits = Arc::new(limits::Limits::new(&settings.inference));
        Ok(Self { settings, storage, manifests, provider, tiers, metrics, router: Default::default(), limits })
    }

    /// Checks a message against its manifest and the tier's budget.
    async fn plan(&self, msg: Message) -> Plan {
        let Input::Envelope(mut envelope) = msg.input else {
            return Plan::Done(Err(StageError::permanent("bad_input", "inference takes signed envelopes only")));
        };
        // The runtime's count (a replay resets it; the signed body keeps its old value).
        envelope.attempt = msg.attempt;
        let WorkQueue::Inference(tier) = msg.queue else {
            return Plan::Done(Err(StageError::permanent("bad_input", "inference consumes tier queues only")));
        };
        let manifest = match self.manifests.require(&envelope.job_id).await {
            Ok(m) => m,
            Err(e) => return Plan::Done(Err(e)),
        };
        let resume = msg.redelivered || msg.attempt > 0;
        match manifest.status {
            JobStatus::Inference => {}
            JobStatus::Postprocess if manifest.inference.is_some() && resume => {
                // Stored before a crash or a lost confirm: reuse it, never pay twice.
                info!(job_id = %envelope.job_id, "Result already stored; forwarding without calling the provider");
                return Plan::Done(self.next(&envelope, &manifest).map(|d| vec![d]));
            }
            other => {
                info!(job_id = %envelope.job_id, status = %other, "Job is not waiting for inference; duplicate message dropped");
                return Plan::Done(Ok(Vec::new()));
            }
        }
        let t = self.settings.inference.tier(tier);
        if let Some(budget) = t.daily_budget_usd {
            let spent = self.router.spent(tier);
            if spent >= budget {
                return Plan::Done(self.over_budget(tier, budget, spent, t.on_budget, envelope, manifest).await);
            }
        }
        match envelope.kind {
            JobKind::Analyze => Plan::Analyze(envelope, manifest),
            JobKind::Generate => Plan::Generate(envelope, manifest),
        }
    }

    async fn over_budget(
        &self,
        tier: Tier,
        budget: f64,
        spent: f64,
        action: BudgetAction,
        mut envelope: Envelope,
        mut manifest: JobManifest,
    ) -> Result<Vec<Dispatch>, StageError> {
        let why = format!("tier {tier} spent ${spent:.6} of its ${budget:.6} daily budget");
        match (action, router::cheaper(tier)) {
            (BudgetAction::Downgrade, Some(lower)) => {
                info!(job_id = %envelope.job_id, from = %tier, to = %lower, "{why}; downgraded");
                manifest.tier = Some(lower);
                if let Some(p) = manifest.preprocess.as_mut() {
                    p.tier = lower;
                    p.tier_reason = format!("{}; downgraded from {tier}: {why}", p.tier_reason);
                }
                self.manifests.save(&mut manifest).await?;
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

    fn next(&self, envelope: &Envelope, manifest: &JobManifest) -> Result<Dispatch, StageError> {
        let video = match envelope.kind {
            JobKind::Analyze => manifest.preprocess.as_ref().and_then(|p| p.normalized_key.clone()),
            JobKind::Generate => manifest.inference.as_ref().map(|i| i.result_key.clone()),
        }
        .ok_or_else(|| StageError::permanent("bad_input", "manifest names no video for postprocess"))?;
        Ok(Dispatch::Next { queue: WorkQueue::Postprocess, envelope: envelope.forward(vec![video]) })
    }

    fn cost(&self, model: &str, input: u64, output: u64) -> Result<f64, StageError> {
        let price = self
            .settings
            .inference
            .price(model)
            .ok_or_else(|| StageError::permanent("config", format!("no price configured for model {model}")))?;
        Ok((input as f64 * price.input_per_mtok + output as f64 * price.output_per_mtok) / 1_000_000.0)
    }

    /// Records the job's inference, saves the manifest and returns its next message.
    async fn finish(
        &self,
        envelope: &Envelope,
        mut manifest: JobManifest,
        info: InferenceInfo,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let tier = envelope.tier.or(manifest.tier).unwrap_or_default();
        info!(job_id = %envelope.job_id, tier = %tier, model = %info.model, input_tokens = info.input_tokens, output_tokens = info.output_tokens, cost_usd = info.cost_usd, "Inference done");
        manifest.inference = Some(info);
        manifest.status = JobStatus::Postprocess;
        manifest.record_stage("inference", started, envelope.attempt);
        self.manifests.save(&mut manifest).await?;
        Ok(vec![self.next(envelope, &manifest)?])
    }

    async fn load_job(
        &self,
        index: usize,
        envelope: Envelope,
        manifest: JobManifest,
    ) -> Result<AnalyzeJob, StageError> {
        if envelope.inputs.is_empty() {
            return Err(StageError::permanent("bad_input", "analyze job without keyframes"));
        }
        let reads =
            envelope.inputs.iter().map(|key| self.storage.get_bytes(self.manifests.bucket(), key, MAX_KEYFRAME_BYTES));
        let images = futures::future::try_join_all(reads).await?;
        let context = manifest
            .input
            .as_ref()
            .map(|i| format!("{}x{} {} video, {:.1} s", i.width, i.height, i.codec, i.duration_s))
            .unwrap_or_default();
        Ok(AnalyzeJob { index, envelope, manifest, images, context })
    }

    async fn analyze_batch(
        &self,
        jobs: Vec<(usize, Envelope, JobManifest)>,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(usize, Result<Vec<Dispatch>, StageError>)> {
        let Some(tier) = jobs.first().and_then(|(_, e, m)| e.tier.or(m.tier)) else { return Vec::new() };
        let mut out = Vec::new();
        let loaded: Vec<(usize, Result<AnalyzeJob, StageError>)> = stream::iter(jobs)
            .map(|(i, e, m)| async move { (i, self.load_job(i, e, m).await) })
            .buffered(16)
            .collect()
            .await;
        let mut ready = Vec::new();
        for (i, r) in loaded {
            match r {
                Ok(job) => ready.push(job),
                Err(e) => out.push((i, Err(e))),
            }
        }
        if ready.is_empty() {
            return out;
        }
        let route = self.router.pick(&self.settings.inference, tier);
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
        let ready = Arc::new(ready);
        let answered: Vec<Vec<(usize, GroupResult)>> = stream::iter(groups)
            .map(|group| {
                let ready = ready.clone();
                async move { self.run_group(tier, &ready, group).await }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        let ready = Arc::try_unwrap(ready).unwrap_or_else(|_| unreachable!("all groups finished"));
        let mut by_pos: HashMap<usize, GroupResult> = answered.into_iter().flatten().collect();
        let finished: Vec<(usize, Result<Vec<Dispatch>, StageError>)> = stream::iter(ready.into_iter().enumerate())
            .map(|(pos, job)| {
                let (answer, billed) = by_pos
                    .remove(&pos)
                    .unwrap_or_else(|| (Err(StageError::transient("internal", "job lost its answer")), Vec::new()));
                async move {
                    let index = job.index;
                    let r = match answer {
                        Ok((a, model, fallback_from)) => {
                            self.store_analysis(tier, job, a, model, fallback_from, started).await
                        }
                        Err(e) => {
                            self.keep_charges(job.manifest, billed).await;
                            Err(e)
                        }
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
    /// of the answer is missing); returns each job's share, by position.
    async fn run_group(&self, tier: Tier, jobs: &[AnalyzeJob], group: Vec<usize>) -> Vec<(usize, GroupResult)> {
        let mut out = Vec::new();
        let members: Vec<&AnalyzeJob> = group.iter().map(|&p| &jobs[p]).collect();
        let outcome = match self.request(tier, &members).await {
            Ok(o) => o,
            Err(e) => return group.into_iter().map(|p| (p, (Err(e.clone()), Vec::new()))).collect(),
        };
        let RequestOutcome { mut answers, mut unanswered, model, fallback_from } = outcome;
        for p in group {
            let id = &jobs[p].envelope.job_id;
            if let Some(a) = answers.remove(id) {
                out.push((p, (Ok((a, model.clone(), fallback_from.clone())), Vec::new())));
                continue;
            }
            // Missing or unusable part: this job alone, once; its first share stays on its bill.
            warn!(job_id = %id, "No usable answer for the job in its batch; asking for it alone");
            let mut billed: Vec<Charge> = unanswered.remove(id).into_iter().collect();
            let single = match self.request(tier, &[&jobs[p]]).await {
                Ok(mut o) => {
                    billed.extend(o.unanswered.remove(id));
                    match o.answers.remove(id) {
                        Some(mut a) => {
                            a.charges.splice(0..0, billed.drain(..));
                            Ok((a, o.model, o.fallback_from))
                        }
                        None => Err(StageError::transient("provider", "the model gave no usable answer for this job")),
                    }
                }
                Err(e) => Err(e),
            };
            out.push((p, (single, billed)));
        }
        out
    }

    /// Appends charges billed for a job that failed this time to its manifest.
    async fn keep_charges(&self, mut manifest: JobManifest, billed: Vec<Charge>) {
        if billed.is_empty() {
            return;
        }
        manifest.charges.extend(billed);
        if let Err(e) = self.manifests.save(&mut manifest).await {
            warn!(job_id = %manifest.job_id, error = %e, "Could not record a charge in the manifest");
        }
    }

    /// One chat request for `jobs`, through rate limits, retries and fallback;
    /// the billed tokens split exactly over all its jobs, answered or not
    /// (an unusable answer was billed too).
    async fn request(&self, tier: Tier, jobs: &[&AnalyzeJob]) -> Result<RequestOutcome, StageError> {
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
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let mut route = self.router.pick(&self.settings.inference, tier);
        let mut tried_fallback = route.fallback_from.is_some();
        loop {
            let body = serde_json::json!({
                "model": route.model,
                "messages": [{"role": "user", "content": parts}],
                "response_format": {"type": "json_object"},
            });
            match self.send(&route.model, &body, &request_id, estimate).await {
                Ok(resp) => {
                    self.router.record(&self.settings.inference, &route.model, true);
                    let results = pack::parse_results(&resp.content, &ids);
                    let out_weights: Vec<u64> =
                        ids.iter().map(|id| results.get(id).map(|r| r.to_string().len() as u64).unwrap_or(0)).collect();
                    let inputs = pack::allocate(resp.prompt_tokens, &weights);
                    let outputs = pack::allocate(resp.completion_tokens, &out_weights);
                    let (mut answers, mut unanswered) = (HashMap::new(), HashMap::new());
                    for (k, id) in ids.iter().enumerate() {
                        let answered = results.contains_key(id);
                        let charge = Charge {
                            model: route.model.clone(),
                            request_id: resp.id.clone(),
                            jobs_in_request: ids.len() as u32,
                            input_tokens: inputs[k],
                            output_tokens: outputs[k],
                            usd: self.cost(&route.model, inputs[k], outputs[k])?,
                            answered,
                        };
                        self.account(tier, &charge);
                        match results.get(id) {
                            Some(result) => {
                                let a = JobAnswer {
                                    result: result.clone(),
                                    request_id: resp.id.clone(),
                                    jobs_in_request: ids.len(),
                                    charges: vec![charge],
                                };
                                answers.insert(id.clone(), a);
                            }
                            None => {
                                warn!(job_id = %id, input_tokens = charge.input_tokens, "Billed for an unusable answer");
                                unanswered.insert(id.clone(), charge);
                            }
                        }
                    }
                    return Ok(RequestOutcome {
                        answers,
                        unanswered,
                        model: route.model,
                        fallback_from: route.fallback_from,
                    });
                }
                Err(ProviderError::Refused(m)) => {
                    return Err(StageError::permanent("provider", format!("{}: {m}", route.model)))
                }
                Err(e) => {
                    let cooled = self.router.record(&self.settings.inference, &route.model, false);
                    let fallback = self.settings.inference.tier(tier).fallback_model.clone();
                    if let (true, false, Some(fb)) =
                        (cooled || self.router.cooling(&route.model), tried_fallback, fallback)
                    {
                        warn!(model = %route.model, fallback = %fb, "Model keeps failing; its fallback takes over");
                        route = router::Route { model: fb, fallback_from: Some(route.model.clone()) };
                        tried_fallback = true;
                        continue;
                    }
                    return Err(StageError::transient("provider", format!("{}: {e}", route.model)));
                }
            }
        }
    }

    /// Every billed share goes to the metrics and the tier's daily spend at once.
    fn account(&self, tier: Tier, c: &Charge) {
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "input"]).inc_by(c.input_tokens);
        self.metrics.tokens.with_label_values(&[tier.as_str(), &c.model, "output"]).inc_by(c.output_tokens);
        self.metrics.cost_usd.with_label_values(&[tier.as_str(), &c.model]).inc_by(c.usd);
        self.router.add_spend(tier, c.usd);
    }

    /// Sends one request, waiting out rate limits and `Retry-After`, retrying 5xx with backoff.
    async fn send(
        &self,
        model: &str,
        body: &serde_json::Value,
        request_id: &str,
        estimate: u64,
    ) -> Result<ChatResponse, ProviderError> {
        use backon::BackoffBuilder;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        let (mut failures, mut throttled) = (0u32, 0u32);
        loop {
            self.limits.acquire(model, estimate).await;
            match self.provider.chat(body, request_id).await {
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
        job: AnalyzeJob,
        a: JobAnswer,
        model: String,
        fallback_from: Option<String>,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let key = stage_key(&job.envelope.job_id, "inference", "analysis.json");
        let doc = serde_json::json!({
            "job_id": job.envelope.job_id,
            "model": model,
            "request_id": a.request_id,
            "result": a.result,
            "charges": a.charges,
        });
        self.storage
            .put_bytes(
                self.manifests.bucket(),
                &key,
                serde_json::to_vec_pretty(&doc).expect("json"),
                "application/json",
            )
            .await?;
        let mut manifest = job.manifest;
        manifest.charges.extend(a.charges);
        let (input_tokens, output_tokens, cost_usd) = totals(&manifest.charges);
        let info = InferenceInfo {
            tier: Some(tier),
            model,
            fallback_from,
            request_id: a.request_id,
            jobs_in_request: a.jobs_in_request as u32,
            input_tokens,
            output_tokens,
            cost_usd,
            result_key: key,
            summary: a.result.get("summary").and_then(|s| s.as_str()).map(str::to_string),
            tags: a
                .result
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        };
        self.finish(&job.envelope, manifest, info, started).await
    }

    async fn generate(
        &self,
        envelope: Envelope,
        manifest: JobManifest,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Dispatch>, StageError> {
        let tier = envelope.tier.or(manifest.tier).unwrap_or_default();
        let doc = manifest
            .prompt
            .clone()
            .ok_or_else(|| StageError::permanent("bad_input", "generate job without a prompt document"))?;
        let model = self.settings.inference.video_model.clone();
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let path = dir.path().join("generated.mp4");
        let result = self.provider.generate_video(&model, &doc, &path).await?;
        let key = stage_key(&envelope.job_id, "inference", "generated.mp4");
        self.storage.upload(self.manifests.bucket(), &key, &path, "video/mp4").await?;
        let cost_usd = match self.settings.inference.price(&model) {
            Some(p) => result.total_tokens as f64 * p.output_per_mtok / 1_000_000.0,
            None => doc.duration_seconds * self.settings.inference.video_usd_per_second,
        };
        let charge = Charge {
            model: model.clone(),
            request_id: Some(result.id.clone()),
            jobs_in_request: 1,
            input_tokens: 0,
            output_tokens: result.total_tokens,
            usd: cost_usd,
            answered: true,
        };
        self.account(tier, &charge);
        let mut manifest = manifest;
        manifest.charges.push(charge);
        let (_, _, cost_usd) = totals(&manifest.charges);
        let info = InferenceInfo {
            tier: Some(tier),
            model,
            fallback_from: None,
            request_id: Some(result.id),
            jobs_in_request: 1,
            input_tokens: 0,
            output_tokens: result.total_tokens,
            cost_usd,
            result_key: key,
            summary: None,
            tags: Vec::new(),
        };
        self.finish(&envelope, manifest, info, started).await
    }
}

/// Tokens and USD of a job's whole bill.
fn totals(charges: &[Charge]) -> (u64, u64, f64) {
    charges.iter().fold((0, 0, 0.0), |(i, o, u), c| (i + c.input_tokens, o + c.output_tokens, u + c.usd))
}
