//! reelfleet-bridge: AWS S3's front door. S3 notifies SQS (directly, through
//! SNS, or through EventBridge); `reelfleet worker bridge-sqs` long-polls the
//! queue and publishes each created object, as a single-record S3 event, to
//! `<ns>.uploads`, where ingest takes it like any other upload event.
//!
//! - `notification`: the four message shapes, turned into S3 events to relay.
//! - this file: the loop — receive a batch, publish with confirms, delete a
//!   message only once every record it carried is confirmed, keep slow
//!   messages hidden, leave poison to the queue's redrive policy.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod notification;

use aws_sdk_sqs::{
    config::{BehaviorVersion, Region},
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    },
    Client,
};
use notification::{classify, Relay};
use prometheus::{Gauge, IntCounterVec, Opts};
use reelfleet_core::{
    broker::{Broker, Outgoing, Publisher},
    health::Readiness,
    metrics::Metrics,
    settings::{Settings, SqsSettings},
    topology::Topology,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The bridge's own metrics, served with the worker's.
#[derive(Clone, Debug)]
pub struct BridgeMetrics {
    /// SQS messages by outcome: `received`, `relayed`, `ignored`, `failed`
    /// (left for another receive), `poison` (left for the redrive policy).
    pub messages: IntCounterVec,
    /// S3 events published to the uploads exchange.
    pub records: IntCounterVec,
    /// Age of the oldest message in the last batch received, in seconds (SQS's `SentTimestamp`).
    pub oldest_age: Gauge,
}

impl BridgeMetrics {
    /// The bridge's metrics, registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let messages = IntCounterVec::new(
            Opts::new("reelfleet_bridge_messages_total", "SQS messages the bridge handled, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let records = IntCounterVec::new(
            Opts::new("reelfleet_bridge_records_total", "S3 events the bridge published to the uploads exchange"),
            &["source"],
        )
        .expect("valid metric");
        let oldest_age = Gauge::with_opts(Opts::new(
            "reelfleet_bridge_oldest_message_age_seconds",
            "Age of the oldest SQS message in the last batch received",
        ))
        .expect("valid metric");
        for c in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(records.clone()),
            Box::new(oldest_age.clone()),
        ] {
            metrics.register(c).expect("bridge metrics registered once");
        }
        for outcome in ["received", "relayed", "ignored", "failed", "poison"] {
            messages.with_label_values(&[outcome]);
        }
        records.with_label_values(&["sqs"]);
        Self { messages, records, oldest_age }
    }
}

/// Long-polls one SQS queue and relays its S3 notifications.
#[derive(Debug)]
pub struct SqsBridge {
    client: Client,
    settings: SqsSettings,
    broker: Broker,
    exchange: String,
    metrics: BridgeMetrics,
    readiness: Readiness,
}

/// The SQS client of `s`: the settings' keys or AWS's credential chain
/// (`sqs.credentials`), the given endpoint or AWS's.
pub fn sqs_client(s: &SqsSettings) -> Client {
    let creds = reelfleet_core::awscreds::provider(s.credentials, &s.access_key, &s.secret_key, &s.region);
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .credentials_provider(creds);
    if let Some(endpoint) = &s.endpoint {
        config = config.endpoint_url(endpoint.clone());
    }
    Client::from_conf(config.build())
}

impl SqsBridge {
    /// A bridge for `settings` (refuses an empty `sqs.queue_url`).
    pub fn new(settings: &Settings, broker: Broker, metrics: &Metrics, readiness: Readiness) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.sqs.queue_url.is_empty(),
            "sqs.queue_url is not set: the bridge needs the queue S3 notifies"
        );
        readiness.register("sqs");
        Ok(Self {
            client: sqs_client(&settings.sqs),
            settings: settings.sqs.clone(),
            broker,
            exchange: Topology::from_settings(settings).uploads_exchange(),
            metrics: BridgeMetrics::new(metrics),
            readiness,
        })
    }

    /// Relays until `stop`; a batch in hand is finished first.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut publisher: Option<Publisher> = None;
        while !stop.is_cancelled() {
            let received = tokio::select! {
                r = self.receive() => r,
                _ = stop.cancelled() => break,
            };
            let messages = match received {
                Ok(m) => {
                    self.readiness.set("sqs", true);
                    backoff = Duration::from_secs(1);
                    m
                }
                Err(e) => {
                    self.readiness.set("sqs", false);
                    warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), retry_in_s = backoff.as_secs(), "Cannot receive from SQS");
                    tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.cancelled() => break }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            self.metrics.messages.with_label_values(&["received"]).inc_by(messages.len() as u64);
            self.metrics.oldest_age.set(oldest_age_secs(&messages));
            let keep_hidden = self.keep_hidden(&messages);
            let done = self.relay_batch(&messages, &mut publisher).await;
            keep_hidden.cancel();
            self.delete(&done).await;
        }
        self.readiness.drain();
    }

    async fn receive(&self) -> Result<Vec<Message>, aws_sdk_sqs::Error> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.settings.queue_url)
            .max_number_of_messages(self.settings.batch_size as i32)
            .wait_time_seconds(self.settings.wait_secs as i32)
            .visibility_timeout(self.settings.visibility_timeout_secs as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Publishes every message's records; returns the receipt handles of the
    /// messages that may be deleted (relayed in full, or nothing to relay).
    async fn relay_batch(&self, messages: &[Message], publisher: &mut Option<Publisher>) -> Vec<String> {
        let mut done = Vec::new();
        for m in messages {
            let (Some(body), Some(receipt)) = (m.body(), m.receipt_handle()) else { continue };
            let id = m.message_id().unwrap_or_default();
            match classify(body) {
                Ok(Relay::Ignore(why)) => {
                    info!(message_id = id, reason = %why, "SQS message has nothing to relay; deleted");
                    self.metrics.messages.with_label_values(&["ignored"]).inc();
                    done.push(receipt.to_string());
                }
                Ok(Relay::Events(events)) => match self.publish_all(&events, publisher).await {
                    Ok(()) => {
                        self.metrics.messages.with_label_values(&["relayed"]).inc();
                        self.metrics.records.with_label_values(&["sqs"]).inc_by(events.len() as u64);
                        done.push(receipt.to_string());
                    }
                    Err(e) => {
                        // Not deleted: SQS shows it again after its visibility timeout.
                        warn!(message_id = id, error = %e, "Could not relay; the message stays in SQS");
                        self.metrics.messages.with_label_values(&["failed"]).inc();
                        *publisher = None;
                    }
                },
                Err(poison) => {
                    let receives = m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .cloned()
                        .unwrap_or_default();
                    warn!(message_id = id, receives = %receives, error = %poison, "Unreadable SQS message left for the queue's redrive policy");
                    self.metrics.messages.with_label_values(&["poison"]).inc();
                }
            }
        }
        done
    }

    /// Publishes each event to the uploads exchange, each confirmed.
    async fn publish_all(&self, events: &[Vec<u8>], publisher: &mut Option<Publisher>) -> anyhow::Result<()> {
        if publisher.is_none() {
            *publisher = Some(self.broker.publisher().await?);
        }
        let p = publisher.as_ref().expect("set above");
        for body in events {
            let msg =
                Outgoing { exchange: self.exchange.clone(), body: body.clone(), mandatory: true, ..Default::default() };
            p.publish(&msg).await?;
        }
        Ok(())
    }

    /// Extends the batch's visibility every half timeout until cancelled, so a
    /// slow relay (a broker that answers late) does not hand the same
    /// messages to another bridge meanwhile.
    fn keep_hidden(&self, messages: &[Message]) -> CancellationToken {
        let token = CancellationToken::new();
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .visibility_timeout(self.settings.visibility_timeout_secs as i32)
                    .build()
                    .ok()
            })
            .collect();
        let (client, queue, every) = (
            self.client.clone(),
            self.settings.queue_url.clone(),
            Duration::from_secs(u64::from(self.settings.visibility_timeout_secs) / 2),
        );
        let stop = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.cancelled() => return }
                let sent = client
                    .change_message_visibility_batch()
                    .queue_url(&queue)
                    .set_entries(Some(entries.clone()))
                    .send()
                    .await;
                if let Err(e) = sent {
                    warn!(error = %aws_sdk_sqs::Error::from(e), "Could not extend the batch's visibility");
                }
            }
        });
        token
    }

    async fn delete(&self, receipts: &[String]) {
        if receipts.is_empty() {
            return;
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = receipts
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).build().ok()
            })
            .collect();
        match self
            .client
            .delete_message_batch()
            .queue_url(&self.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            // A message whose delete failed comes back and is relayed again: ingest's job id absorbs the duplicate.
            Ok(out) if !out.failed().is_empty() => {
                warn!(failed = out.failed().len(), "Some relayed messages could not be deleted")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %aws_sdk_sqs::Error::from(e), "Could not delete relayed messages; they will be relayed again")
            }
        }
    }
}

fn oldest_age_secs(messages: &[Message]) -> f64 {
    let now = chrono::Utc::now().timestamp_millis();
    messages
        .iter()
        .filter_map(|m| m.attributes()?.get(&MessageSystemAttributeName::SentTimestamp)?.parse::<i64>().ok())
        .map(|sent| (now - sent).max(0) as f64 / 1000.0)
        .fold(0.0, f64::max)
}
