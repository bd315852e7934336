//! Queue and exchange names under a namespace, and their idempotent declaration.
//!
//! Every work queue `W` is a durable quorum queue with a delivery limit. The
//! runtime moves messages between the queues around it itself, republishing
//! each with fresh headers (no `x-death` carried over), so no message ever
//! forms a dead-letter cycle, which RabbitMQ before 4.0.1 would silently drop:
//!
//! - `W.retry.<step>` (`W.retry.1s`, `W.retry.2s`, ... up to the longest
//!   retry delay; see [`crate::decide::retry_steps`]): one classic queue per
//!   delay step, with a queue-level `x-message-ttl` of that step, dead-lettering
//!   back into `W`. RabbitMQ expires messages only at the head of a queue, so
//!   one queue per step is what keeps a 1 s retry from waiting behind a 60 s one:
//!   within a queue every message has the same TTL and the head always
//!   expires first.
//! - `W.deferred`: messages parked without counting an attempt (a tier paused
//!   by its spent budget), with a per-message TTL back into `W`. Per-message
//!   TTLs are fine here and only here: every deferral waits for the same
//!   horizon (the next UTC day), so a message parked later never expires
//!   before the head does. Deferrals stay out of the retry queues, whose
//!   steps they would hold up for hours.
//! - `W.dlq`: dead letters, with the runtime's headers (stage, class, code,
//!   reason, attempts, times, queue).
//! - `W.dlx`: the broker's own dead letters (a message redelivered past the
//!   delivery limit: it kept crashing, timing out or losing its worker). The
//!   runtime of the stage that owns `W` moves each to `W.dlq` with the same
//!   headers as its own dead letters and marks the job failed, so nothing
//!   reaches `W.dlq` unexplained.
//!
//! The events exchange (topic) feeds the webhooks queue with the events a
//! webhook carries (`job.completed`, `job.failed`, `job.dead_lettered`),
//! and the index queue with every event (`#`).

use crate::{
    decide::retry_steps,
    envelope::Tier,
    settings::{RetrySettings, WEBHOOK_EVENTS},
};
use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};
use std::{fmt, time::Duration};

/// A queue a stage consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkQueue {
    /// S3 events and direct submissions.
    Ingest,
    /// Validated jobs to normalize.
    Preprocess,
    /// Jobs of one tier to send to a model.
    Inference(Tier),
    /// Jobs to encode and finish.
    Postprocess,
    /// Sources given by URL, to fetch into the upload bucket before ingest.
    Pull,
    /// Outgoing webhook deliveries (`job.completed`, `job.failed`, ...).
    Webhooks,
    /// Every lifecycle event, for the job index.
    Index,
}

impl WorkQueue {
    /// Every work queue, in pipeline order.
    pub fn all() -> Vec<WorkQueue> {
        let mut all = vec![WorkQueue::Pull, WorkQueue::Ingest, WorkQueue::Preprocess];
        all.extend(Tier::ALL.into_iter().map(WorkQueue::Inference));
        all.extend([WorkQueue::Postprocess, WorkQueue::Webhooks, WorkQueue::Index]);
        all
    }

    /// The stage that consumes this queue.
    pub fn stage(self) -> &'static str {
        match self {
            WorkQueue::Ingest => "ingest",
            WorkQueue::Preprocess => "preprocess",
            WorkQueue::Inference(_) => "inference",
            WorkQueue::Postprocess => "postprocess",
            WorkQueue::Pull => "pull",
            WorkQueue::Webhooks => "webhooks",
            WorkQueue::Index => "index",
        }
    }

    /// The name below the namespace (`inference.low`, ...).
    pub fn suffix(self) -> String {
        match self {
            WorkQueue::Inference(t) => format!("inference.{t}"),
            other => other.stage().to_string(),
        }
    }
}

impl fmt::Display for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.suffix())
    }
}

/// Names of everything on the broker, under one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
    delivery_limit: u32,
    retry_steps: Vec<Duration>,
}

impl Topology {
    /// Topology under `namespace` with the given quorum-queue delivery limit
    /// and a retry queue per delay step of `retry`.
    pub fn new(namespace: impl Into<String>, delivery_limit: u32, retry: &RetrySettings) -> Self {
        Self { namespace: namespace.into(), delivery_limit, retry_steps: retry_steps(retry) }
    }

    /// The topology `settings` describe (namespace, delivery limit, retry steps).
    pub fn from_settings(settings: &crate::settings::Settings) -> Self {
        Self::new(settings.namespace.clone(), settings.broker.delivery_limit, &settings.retry)
    }

    /// The namespace every name starts with (`<ns>.ingest`, `<ns>.events`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Deliveries of a message a work queue allows before the broker dead-letters it.
    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }

    /// `<ns>.<queue>`.
    pub fn queue(&self, q: WorkQueue) -> String {
        format!("{}.{}", self.namespace, q.suffix())
    }

    /// The delay steps of the retry queues, shortest first.
    pub fn retry_steps(&self) -> &[Duration] {
        &self.retry_steps
    }

    /// The delayed-retry queue of a work queue for one delay step (`W.retry.2s`).
    pub fn retry_queue(&self, q: WorkQueue, step: Duration) -> String {
        format!("{}.retry.{}", self.queue(q), step_label(step))
    }

    /// Every delayed-retry queue of a work queue, shortest delay first.
    pub fn retry_queues(&self, q: WorkQueue) -> Vec<String> {
        self.retry_steps.iter().map(|s| self.retry_queue(q, *s)).collect()
    }

    /// The queue where messages of a work queue wait without counting an
    /// attempt (budget pauses).
    pub fn deferred_queue(&self, q: WorkQueue) -> String {
        format!("{}.deferred", self.queue(q))
    }

    /// Where the broker dead-letters a work queue's messages (delivery limit);
    /// the runtime moves them on to the dead-letter queue.
    pub fn broker_dead_letter_queue(&self, q: WorkQueue) -> String {
        format!("{}.dlx", self.queue(q))
    }

    /// The dead-letter queue of a work queue.
    pub fn dead_letter_queue(&self, q: WorkQueue) -> String {
        format!("{}.dlq", self.queue(q))
    }

    /// The topic exchange of job lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The fanout exchange an object store's bucket notifications (MinIO's AMQP
    /// target, Ceph RGW's AMQP topic) publish to; it feeds the ingest queue.
    pub fn uploads_exchange(&self) -> String {
        format!("{}.uploads", self.namespace)
    }

    /// Every exchange of the namespace.
    pub fn exchange_names(&self) -> Vec<String> {
        vec![self.events_exchange(), self.uploads_exchange()]
    }

    /// Every queue of one work queue: itself, its retry queues, its deferral,
    /// broker dead-letter and dead-letter queues.
    pub fn queue_names(&self, q: WorkQueue) -> Vec<String> {
        let mut names = vec![self.queue(q)];
        names.extend(self.retry_queues(q));
        names.extend([self.deferred_queue(q), self.broker_dead_letter_queue(q), self.dead_letter_queue(q)]);
        names
    }

    /// Every queue name of the namespace, work queue by work queue.
    pub fn all_queue_names(&self) -> Vec<String> {
        WorkQueue::all().into_iter().flat_map(|q| self.queue_names(q)).collect()
    }

    /// Declares every queue and the events exchange; safe to call any number
    /// of times with the same settings.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        for q in WorkQueue::all() {
            let work = self.queue(q);
            let dlq = self.dead_letter_queue(q);
            channel.queue_declare(dlq.as_str().into(), durable, quorum()).await?;
            let dlx = self.broker_dead_letter_queue(q);
            channel.queue_declare(dlx.as_str().into(), durable, quorum()).await?;

            let mut work_args = quorum();
            work_args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(self.delivery_limit.into()));
            work_args.insert("x-dead-letter-exchange".into(), string(""));
            work_args.insert("x-dead-letter-routing-key".into(), string(&dlx));
            channel.queue_declare(work.as_str().into(), durable, work_args).await?;

            for step in &self.retry_steps {
                let mut retry_args = back_into(&work);
                let ttl = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
                retry_args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
                channel.queue_declare(self.retry_queue(q, *step).as_str().into(), durable, retry_args).await?;
            }
            channel.queue_declare(self.deferred_queue(q).as_str().into(), durable, back_into(&work)).await?;
        }
        channel
            .exchange_declare(
                self.events_exchange().as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let uploads = self.uploads_exchange();
        channel
            .exchange_declare(
                uploads.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.queue(WorkQueue::Ingest).as_str().into(),
                uploads.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let webhooks = self.queue(WorkQueue::Webhooks);
        for key in WEBHOOK_EVENTS {
            channel
                .queue_bind(
                    webhooks.as_str().into(),
                    self.events_exchange().as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_bind(
                self.queue(WorkQueue::Index).as_str().into(),
                self.events_exchange().as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

/// Arguments of a classic queue whose expired messages go back into `work`.
fn back_into(work: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("classic"));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(work));
    args
}

/// A delay as a queue-name suffix: `1s`, `60s`, `250ms`.
pub fn step_label(step: Duration) -> String {
    let ms = step.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Short string helper for lapin names.
pub fn short(s: &str) -> ShortString {
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let retry = RetrySettings { max_attempts: 5, base_delay_ms: 1_000, max_delay_ms: 60_000 };
        let t = Topology::new("ns1", 5, &retry);
        assert_eq!(t.queue(WorkQueue::Inference(Tier::High)), "ns1.inference.high");
        assert_eq!(t.retry_queue(WorkQueue::Ingest, Duration::from_secs(2)), "ns1.ingest.retry.2s");
        assert_eq!(
            t.retry_queues(WorkQueue::Ingest),
            ["1s", "2s", "4s", "8s", "16s", "32s", "60s"].map(|s| format!("ns1.ingest.retry.{s}"))
        );
        assert_eq!(t.deferred_queue(WorkQueue::Ingest), "ns1.ingest.deferred");
        assert_eq!(t.broker_dead_letter_queue(WorkQueue::Preprocess), "ns1.preprocess.dlx");
        assert_eq!(t.dead_letter_queue(WorkQueue::Postprocess), "ns1.postprocess.dlq");
        assert_eq!(t.all_queue_names().len(), 10 * (1 + 7 + 3));
        let unique: std::collections::BTreeSet<_> = t.all_queue_names().into_iter().collect();
        assert_eq!(unique.len(), 10 * (1 + 7 + 3));
        assert_eq!(t.events_exchange(), "ns1.events");
        assert_eq!(t.exchange_names(), vec!["ns1.events".to_string(), "ns1.uploads".to_string()]);
    }

    #[test]
    fn sub_second_steps_are_named_in_milliseconds() {
        let retry = RetrySettings { max_attempts: 3, base_delay_ms: 200, max_delay_ms: 1_000 };
        let t = Topology::new("ns1", 5, &retry);
        assert_eq!(
            t.retry_queues(WorkQueue::Ingest),
            ["200ms", "400ms", "800ms", "1s"].map(|s| format!("ns1.ingest.retry.{s}"))
        );
    }
}
