//! Queue and exchange names under a namespace, and their idempotent declaration.
//!
//! Every work queue `W` is a durable quorum queue with a delivery limit whose
//! broker-side dead-letter target is `W.dlq`. Delayed retries go through
//! `W.retry`, a classic queue whose messages expire (per-message TTL) back into
//! `W`. The runtime republishes to `W.retry` and `W.dlq` itself with fresh
//! headers (no `x-death` carried over), so no message ever forms a
//! dead-letter cycle, which RabbitMQ before 4.0.1 would silently drop.

use crate::envelope::Tier;
use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};
use std::fmt;

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
}

impl WorkQueue {
    /// Every work queue, in pipeline order.
    pub fn all() -> Vec<WorkQueue> {
        let mut all = vec![WorkQueue::Ingest, WorkQueue::Preprocess];
        all.extend(Tier::ALL.into_iter().map(WorkQueue::Inference));
        all.push(WorkQueue::Postprocess);
        all
    }

    /// The stage that consumes this queue.
    pub fn stage(self) -> &'static str {
        match self {
            WorkQueue::Ingest => "ingest",
            WorkQueue::Preprocess => "preprocess",
            WorkQueue::Inference(_) => "inference",
            WorkQueue::Postprocess => "postprocess",
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
}

impl Topology {
    /// Topology under `namespace` with the given quorum-queue delivery limit.
    pub fn new(namespace: impl Into<String>, delivery_limit: u32) -> Self {
        Self { namespace: namespace.into(), delivery_limit }
    }

    /// The namespace prefix.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `<ns>.<queue>`.
    pub fn queue(&self, q: WorkQueue) -> String {
        format!("{}.{}", self.namespace, q.suffix())
    }

    /// The delayed-retry queue of a work queue.
    pub fn retry_queue(&self, q: WorkQueue) -> String {
        format!("{}.retry", self.queue(q))
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

    /// Every queue name, work, retry and dead-letter.
    pub fn all_queue_names(&self) -> Vec<String> {
        WorkQueue::all()
            .into_iter()
            .flat_map(|q| [self.queue(q), self.retry_queue(q), self.dead_letter_queue(q)])
            .collect()
    }

    /// Declares every queue and the events exchange; safe to call any number
    /// of times with the same settings.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        for q in WorkQueue::all() {
            let work = self.queue(q);
            let dlq = self.dead_letter_queue(q);
            let mut dlq_args = FieldTable::default();
            dlq_args.insert("x-queue-type".into(), string("quorum"));
            channel.queue_declare(dlq.as_str().into(), durable, dlq_args).await?;

            let mut work_args = FieldTable::default();
            work_args.insert("x-queue-type".into(), string("quorum"));
            work_args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(self.delivery_limit.into()));
            work_args.insert("x-dead-letter-exchange".into(), string(""));
            work_args.insert("x-dead-letter-routing-key".into(), string(&dlq));
            channel.queue_declare(work.as_str().into(), durable, work_args).await?;

            let mut retry_args = FieldTable::default();
            retry_args.insert("x-queue-type".into(), string("classic"));
            retry_args.insert("x-dead-letter-exchange".into(), string(""));
            retry_args.insert("x-dead-letter-routing-key".into(), string(&work));
            channel.queue_declare(self.retry_queue(q).as_str().into(), durable, retry_args).await?;
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
        Ok(())
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
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
        let t = Topology::new("ns1", 5);
        assert_eq!(t.queue(WorkQueue::Inference(Tier::High)), "ns1.inference.high");
        assert_eq!(t.retry_queue(WorkQueue::Ingest), "ns1.ingest.retry");
        assert_eq!(t.dead_letter_queue(WorkQueue::Postprocess), "ns1.postprocess.dlq");
        assert_eq!(t.all_queue_names().len(), 7 * 3);
        assert_eq!(t.events_exchange(), "ns1.events");
        assert_eq!(t.exchange_names(), vec!["ns1.events".to_string(), "ns1.uploads".to_string()]);
    }
}
