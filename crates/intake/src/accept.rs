//! Accepting checked jobs, whichever door they came through (the HTTP API,
//! a Cloud Storage push, `reelfleet submit --from`): each source resolved
//! into its envelope and queue, every acceptance record written, and only
//! then each envelope published, signed for its queue and confirmed by the
//! broker.
//!
//! Resolving every item before recording or publishing any is what makes a
//! batch all or nothing: one missing object and nothing is published.

use crate::{
    error::FieldError,
    jobs::{self, JobSpec, Source},
    records::{Acceptance, Records},
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing, Publisher},
    envelope::{Envelope, JobRequest, SourceObject, SIGNATURE_HEADER},
    settings::Settings,
    signing::Signer,
    storage::{Storage, StorageError},
    topology::{Topology, WorkQueue},
};
use std::sync::Arc;
use tracing::warn;

/// HEAD requests in flight at once while items are resolved.
const RESOLVE_CONCURRENCY: usize = 16;

/// Why a job could not be accepted although its fields were good.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The object store did not answer.
    #[error("the object store did not answer: {0}")]
    Storage(#[from] StorageError),
    /// The broker did not confirm a publish.
    #[error("the broker did not confirm the job: {0}")]
    Broker(String),
}

/// One item to resolve.
#[derive(Clone, Debug)]
pub struct Item<'a> {
    /// The checked job.
    pub spec: &'a JobSpec,
    /// The name a URL source's job id is derived from (the request's
    /// `Idempotency-Key`, per item in a batch); `None`: a fresh id.
    pub key: Option<String>,
    /// Where the item sits in its request (a batch index, a line number),
    /// set on its refusals.
    pub index: Option<usize>,
}

/// One job ready to record and publish.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Its first envelope.
    pub envelope: Envelope,
    /// Where the envelope goes: `Ingest` for an object, `Pull` for a URL.
    pub queue: WorkQueue,
    /// `s3` or `url`, the metrics' label.
    pub kind: &'static str,
}

/// Resolves, records and publishes jobs.
#[derive(Clone)]
pub struct Acceptor(Arc<Inner>);

struct Inner {
    settings: Arc<Settings>,
    storage: Storage,
    records: Records,
    topology: Topology,
    signer: Signer,
    broker: Broker,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("namespace", &self.0.settings.namespace).finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor for `settings`; refuses settings without a usable signing key.
    pub fn new(settings: Arc<Settings>, storage: Storage, broker: Broker) -> anyhow::Result<Self> {
        let signer = Signer::from_settings(&settings.signing, &settings.namespace).map_err(|e| anyhow::anyhow!(e.0))?;
        let records = Records::new(
            storage.clone(),
            settings.s3.work_bucket.clone(),
            settings.intake.tolerance_secs,
            settings.intake.idempotency_ttl_hours,
        );
        Ok(Self(Arc::new(Inner {
            topology: Topology::from_settings(&settings),
            storage,
            records,
            signer,
            broker,
            publisher: tokio::sync::Mutex::new(None),
            settings,
        })))
    }

    /// The records the acceptor writes (shared with the API's replay and
    /// idempotency checks).
    pub fn records(&self) -> &Records {
        &self.0.records
    }

    /// The full name of `queue` in this fleet's namespace.
    pub fn queue_name(&self, queue: WorkQueue) -> String {
        self.0.topology.queue(queue)
    }

    /// Resolves every item (16 HEAD requests at a time): the planned jobs in
    /// order, or every item's refusal. `via` and `request_key` go into each
    /// job's [`JobRequest`].
    pub async fn plan_all(
        &self,
        client: &str,
        via: &str,
        request_key: Option<&str>,
        items: Vec<Item<'_>>,
    ) -> Result<Result<Vec<Planned>, Vec<FieldError>>, AcceptError> {
        let resolving: Vec<_> = items.into_iter().map(|item| self.plan_item(client, via, request_key, item)).collect();
        let plans: Vec<Result<Planned, FieldError>> =
            futures::stream::iter(resolving).buffered(RESOLVE_CONCURRENCY).try_collect().await?;
        let (planned, errors): (Vec<_>, Vec<_>) = plans.into_iter().partition(Result::is_ok);
        let errors: Vec<FieldError> = errors.into_iter().filter_map(Result::err).collect();
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        Ok(Ok(planned.into_iter().filter_map(Result::ok).collect()))
    }

    async fn plan_item(
        &self,
        client: &str,
        via: &str,
        request_key: Option<&str>,
        item: Item<'_>,
    ) -> Result<Result<Planned, FieldError>, AcceptError> {
        let index = item.index;
        Ok(self.plan(client, via, request_key, item.key, item.spec).await?.map_err(|e| FieldError { index, ..e }))
    }

    /// A job's envelope and queue, or the field that makes it unacceptable.
    async fn plan(
        &self,
        client: &str,
        via: &str,
        request_key: Option<&str>,
        item_key: Option<String>,
        spec: &JobSpec,
    ) -> Result<Result<Planned, FieldError>, AcceptError> {
        let s = &self.0.settings;
        let mut request = JobRequest {
            via: via.into(),
            origin_url: None,
            callback_url: spec.callback_url.clone(),
            idempotency_key: request_key.map(str::to_string),
            metadata: spec.metadata.clone(),
        };
        let (job_id, source, queue) = match &spec.source {
            Source::S3 { bucket, key } => {
                if !s.s3.accepts(bucket) {
                    return Ok(Err(FieldError::new(
                        "source",
                        format!("bucket {bucket:?} is not an upload bucket (s3.upload_bucket, s3.accepted_buckets)"),
                    )));
                }
                let Some(info) = self.0.storage.head(bucket, key).await? else {
                    return Ok(Err(FieldError::new("source", format!("s3://{bucket}/{key} does not exist"))));
                };
                // The version a versioned bucket's event names too: the
                // same object through both doors is one job id.
                let source = SourceObject {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    size: info.size,
                    etag: info.etag,
                    version_id: info.version_id,
                };
                (source.job_id(), source, WorkQueue::Ingest)
            }
            Source::Url(url) => {
                let name = item_key.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                let job_id = jobs::url_job_id(client, &name, url);
                let source = SourceObject {
                    bucket: s.s3.upload_bucket.clone(),
                    key: jobs::pulled_key(&job_id, url),
                    size: 0,
                    etag: None,
                    version_id: None,
                };
                request.origin_url = Some(url.to_string());
                (job_id, source, WorkQueue::Pull)
            }
        };
        let envelope = jobs::envelope(spec, &job_id, source, request, s.limits.max_uploader_priority);
        Ok(Ok(Planned { envelope, queue, kind: spec.source.kind() }))
    }

    /// Writes the acceptance record of `envelope`, bound for `queue`, from
    /// `client`, and the client's grant to see the job.
    pub async fn record(&self, client: &str, envelope: &Envelope, queue: WorkQueue) -> Result<(), AcceptError> {
        self.0.records.grant(client, &envelope.job_id).await?;
        let record = Acceptance {
            job_id: envelope.job_id.clone(),
            accepted_at: Utc::now(),
            client: client.to_string(),
            source: envelope.source.clone(),
            queue: self.0.topology.queue(queue),
            priority: envelope.priority,
            quality: envelope.quality,
            request: envelope.request.clone().unwrap_or_default(),
        };
        Ok(self.0.records.accept(&record).await?)
    }

    async fn publisher(&self) -> Result<Publisher, AcceptError> {
        let mut slot = self.0.publisher.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = self.0.broker.publisher().await.map_err(|e| {
            warn!(error = %e, "No broker channel");
            AcceptError::Broker(format!("no channel: {e}"))
        })?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Publishes `envelope`, signed for `queue`, and waits for the broker's confirm.
    pub async fn publish(&self, envelope: &Envelope, queue: WorkQueue) -> Result<(), AcceptError> {
        let name = self.0.topology.queue(queue);
        let body = envelope.to_bytes();
        let sig = self.0.signer.sign(&name, &body);
        let msg = Outgoing::to_queue(name, body).header(SIGNATURE_HEADER, HeaderValue::Text(sig));
        let publisher = self.publisher().await?;
        publisher.publish(&msg).await.map_err(|e| {
            warn!(job_id = %envelope.job_id, error = %e, "Publish not confirmed");
            if let Ok(mut slot) = self.0.publisher.try_lock() {
                *slot = None;
            }
            AcceptError::Broker(e.to_string())
        })
    }
}
