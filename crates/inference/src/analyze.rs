//! Analyze jobs: keyframes loaded, packed into as few chat requests as the
//! model's limits allow, each answer's bill split over its jobs and written to
//! their ledgers before anything else, unusable parts asked again alone, and
//! each job's result stored.

use crate::{
    budget, ledger::LedgerEntry, pack, router, Inference, ProviderError, MAX_KEYFRAME_BYTES, OUTPUT_TOKENS_ESTIMATE,
};
use futures::{stream, StreamExt};
use reelfleet_core::{
    envelope::{Envelope, Tier},
    error::StageError,
    jobstate::Held,
    manifest::{stage_key, Charge, InferenceInfo},
    runtime::Dispatch,
};
use std::collections::HashMap;
use tracing::{info, warn};

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

impl Inference {
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

    pub(crate) async fn analyze_batch(
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
}
