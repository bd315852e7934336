//! Generate jobs: the signed video request through the same budget, rate
//! limits and `Retry-After` as chat, its bill written to the ledger before the
//! download, the video stored in the work bucket.

use crate::{ledger::LedgerEntry, Inference, ProviderError, VideoResult};
use reelfleet_core::{
    envelope::Envelope,
    error::StageError,
    jobstate::Held,
    manifest::{stage_key, Charge, InferenceInfo},
    media::scratch_dir,
    runtime::Dispatch,
};
use tracing::info;

impl Inference {
    pub(crate) async fn generate(
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
