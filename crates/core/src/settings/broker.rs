//! RabbitMQ connection and consumer settings.

use super::Secret;
use serde::{Deserialize, Serialize};

/// RabbitMQ settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL, credentials included.
    pub url: Secret,
    /// Unacknowledged deliveries per consumer (bounded prefetch).
    pub prefetch: u16,
    /// Quorum-queue delivery limit: the last guard against a message that
    /// keeps crashing its worker.
    pub delivery_limit: u32,
    /// Connections kept in the pool.
    pub pool_size: usize,
    /// Seconds between reconnection attempts grow up to this bound.
    pub reconnect_max_delay_secs: u64,
    /// The broker's `consumer_timeout` in seconds (RabbitMQ's own default is
    /// 1800; `deploy/rabbitmq/rabbitmq.conf` sets 90000 to match this one): a
    /// consumer holding a message longer loses its channel, so
    /// `runtime.job_timeout_secs` must stay below it, and a message's timeout
    /// raised for a long source stops 60 s short of it.
    pub consumer_timeout_secs: u64,
    /// RabbitMQ management API (for `reelfleet queues`); passive declares are used when it does not answer.
    pub management_url: Secret,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefetch: 4,
            delivery_limit: 10,
            pool_size: 4,
            reconnect_max_delay_secs: 10,
            consumer_timeout_secs: 25 * 3600,
            management_url: Secret::new("http://guest:guest@127.0.0.1:15672"),
        }
    }
}
