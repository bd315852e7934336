//! reelfleet-inference: consumes the four tier queues, calls the tier's model
//! through an OpenAI-compatible gateway (analyze: keyframes in, structured
//! JSON out) or the HMAC-signed video generation API (generate: prompt in,
//! video out), stores the result, records model, tokens and cost in the
//! manifest, and forwards to postprocess.

mod provider;

pub use provider::{sign_video_request, ChatResult, Provider, ProviderError, VideoResult};

use async_trait::async_trait;
use reelfleet_core::{
    envelope::{Envelope, JobKind, Tier},
    error::StageError,
    manifest::{stage_key, InferenceInfo, JobManifest, JobStatus, ManifestStore},
    media::scratch_dir,
    metrics::Metrics,
    runtime::{Dispatch, Input, Message, Stage},
    settings::Settings,
    storage::Storage,
    topology::WorkQueue,
};
use std::sync::Arc;
use tracing::info;

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
}

#[async_trait]
impl Stage for Inference {
    fn name(&self) -> &'static str {
        "inference"
    }

    fn queues(&self) -> Vec<WorkQueue> {
        self.tiers.iter().map(|t| WorkQueue::Inference(*t)).collect()
    }

    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
        let Input::Envelope(envelope) = msg.input else {
            return Err(StageError::permanent("bad_input", "inference takes signed envelopes only"));
        };
        let WorkQueue::Inference(tier) = msg.queue else {
            return Err(StageError::permanent("bad_input", "inference consumes tier queues only"));
        };
        let started = chrono::Utc::now();
        let mut manifest = self.manifests.require(&envelope.job_id).await?;
        match manifest.status {
            JobStatus::Inference => {}
            JobStatus::Postprocess if manifest.inference.is_some() && (msg.redelivered || msg.attempt > 0) => {
                // Stored before a crash or a lost confirm: reuse it, never pay twice.
                info!("Result already stored; forwarding without calling the provider");
                return Ok(vec![self.next(&envelope, &manifest)?]);
            }
            other => {
                info!(status = %other, "Job is not waiting for inference; duplicate message dropped");
                return Ok(Vec::new());
            }
        }
        let info = match envelope.kind {
            JobKind::Analyze => self.analyze(&envelope, &manifest, tier).await?,
            JobKind::Generate => self.generate(&envelope, &manifest, tier).await?,
        };
        info!(model = %info.model, input_tokens = info.input_tokens, output_tokens = info.output_tokens, cost_usd = info.cost_usd, "Inference done");
        let labels = [tier.as_str(), info.model.as_str()];
        self.metrics.tokens.with_label_values(&[labels[0], labels[1], "input"]).inc_by(info.input_tokens);
        self.metrics.tokens.with_label_values(&[labels[0], labels[1], "output"]).inc_by(info.output_tokens);
        self.metrics.cost_usd.with_label_values(&labels).inc_by(info.cost_usd);
        manifest.inference = Some(info);
        manifest.status = JobStatus::Postprocess;
        manifest.record_stage("inference", started, msg.attempt);
        self.manifests.save(&mut manifest).await?;
        Ok(vec![self.next(&envelope, &manifest)?])
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
        Ok(Self { settings, storage, manifests, provider, tiers, metrics })
    }

    fn next(&self, envelope: &Envelope, manifest: &JobManifest) -> Result<Dispatch, StageError> {
        let video = match envelope.kind {
            JobKind::Analyze => manifest.preprocess.as_ref().and_then(|p| p.normalized_key.clone()),
            JobKind::Generate => manifest.inference.as_ref().map(|i| i.result_key.clone()),
        }
        .ok_or_else(|| StageError::permanent("bad_input", "manifest names no video for postprocess"))?;
        Ok(Dispatch::Next { queue: WorkQueue::Postprocess, envelope: envelope.forward(vec![video]) })
    }

    fn model_of(&self, tier: Tier) -> &str {
        let t = &self.settings.inference;
        match tier {
            Tier::Low => &t.low.model,
            Tier::Medium => &t.medium.model,
            Tier::High => &t.high.model,
            Tier::Critical => &t.critical.model,
        }
    }

    fn cost(&self, model: &str, input: u64, output: u64) -> Result<f64, StageError> {
        let price = self
            .settings
            .inference
            .price(model)
            .ok_or_else(|| StageError::permanent("config", format!("no price configured for model {model}")))?;
        Ok((input as f64 * price.input_per_mtok + output as f64 * price.output_per_mtok) / 1_000_000.0)
    }

    async fn analyze(
        &self,
        envelope: &Envelope,
        manifest: &JobManifest,
        tier: Tier,
    ) -> Result<InferenceInfo, StageError> {
        let mut images = Vec::new();
        for key in &envelope.inputs {
            images.push(self.storage.get_bytes(self.manifests.bucket(), key, MAX_KEYFRAME_BYTES).await?);
        }
        if images.is_empty() {
            return Err(StageError::permanent("bad_input", "analyze job without keyframes"));
        }
        let model = self.model_of(tier).to_string();
        let context = manifest
            .input
            .as_ref()
            .map(|i| format!("{}x{} {} video, {:.1} s", i.width, i.height, i.codec, i.duration_s))
            .unwrap_or_default();
        let result = self.provider.analyze(&model, &images, &context).await?;
        let key = stage_key(&envelope.job_id, "inference", "analysis.json");
        let doc = serde_json::json!({
            "job_id": envelope.job_id,
            "model": model,
            "request_id": result.request_id,
            "result": result.content,
            "usage": {"prompt_tokens": result.input_tokens, "completion_tokens": result.output_tokens},
        });
        self.storage
            .put_bytes(
                self.manifests.bucket(),
                &key,
                serde_json::to_vec_pretty(&doc).expect("json"),
                "application/json",
            )
            .await?;
        let cost_usd = self.cost(&model, result.input_tokens, result.output_tokens)?;
        Ok(InferenceInfo {
            tier: Some(tier),
            model,
            request_id: result.request_id,
            input_tokens: result.input_tokens,
            output_tokens: result.output_tokens,
            cost_usd,
            result_key: key,
            summary: result.content.get("summary").and_then(|s| s.as_str()).map(str::to_string),
            tags: result
                .content
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        })
    }

    async fn generate(
        &self,
        envelope: &Envelope,
        manifest: &JobManifest,
        tier: Tier,
    ) -> Result<InferenceInfo, StageError> {
        let doc = manifest
            .prompt
            .as_ref()
            .ok_or_else(|| StageError::permanent("bad_input", "generate job without a prompt document"))?;
        let model = self.settings.inference.video_model.clone();
        let dir = scratch_dir(self.settings.runtime.scratch_dir.as_deref())?;
        let path = dir.path().join("generated.mp4");
        let result = self.provider.generate_video(&model, doc, &path).await?;
        let key = stage_key(&envelope.job_id, "inference", "generated.mp4");
        self.storage.upload(self.manifests.bucket(), &key, &path, "video/mp4").await?;
        let cost_usd = match self.settings.inference.price(&model) {
            Some(p) => result.total_tokens as f64 * p.output_per_mtok / 1_000_000.0,
            None => doc.duration_seconds * self.settings.inference.video_usd_per_second,
        };
        Ok(InferenceInfo {
            tier: Some(tier),
            model,
            request_id: Some(result.id),
            input_tokens: 0,
            output_tokens: result.total_tokens,
            cost_usd,
            result_key: key,
            summary: None,
            tags: Vec::new(),
        })
    }
}
