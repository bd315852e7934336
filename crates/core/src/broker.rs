//! RabbitMQ access: a `deadpool-lapin` connection pool, channels with
//! publisher confirms, and a publish that is either confirmed by the broker or
//! an error (a nacked or returned message is never dropped silently).

use crate::{settings::BrokerSettings, topology::Topology};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
    BasicProperties, Channel, Confirmation,
};
use std::time::Duration;

/// Broker failures. All are transient from a message's point of view.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Could not get a connection.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(String),
    /// A protocol-level error.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker returned the message: no queue is bound to its routing key.
    #[error("message to {routing_key:?} was returned as unroutable: {reply}")]
    Returned {
        /// Routing key of the message.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker refused to take responsibility for the message.
    #[error("message to {0:?} was nacked by the broker")]
    Nacked(String),
}

/// A pool of broker connections.
#[derive(Clone)]
pub struct Broker {
    pool: deadpool_lapin::Pool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A pool for `settings`; connects lazily. Must be called inside a Tokio runtime.
    pub fn new(settings: &BrokerSettings, connection_name: &str) -> Result<Self, BrokerError> {
        let cfg = deadpool_lapin::Config {
            url: Some(settings.url.expose().to_string()),
            pool: Some(deadpool_lapin::PoolConfig {
                max_size: settings.pool_size.max(1),
                timeouts: deadpool_lapin::Timeouts {
                    wait: Some(Duration::from_secs(10)),
                    create: Some(Duration::from_secs(10)),
                    recycle: Some(Duration::from_secs(5)),
                },
                ..Default::default()
            }),
        };
        let name = connection_name.to_string();
        let pool = cfg
            .create_pool(
                move || lapin::ConnectionProperties::default().with_connection_name(name.as_str().into()),
                deadpool_lapin::Runtime::Tokio1,
            )
            .map_err(|e| BrokerError::Connect(e.to_string()))?;
        Ok(Self { pool })
    }

    /// A new channel on a pooled connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let conn = self.pool.get().await.map_err(|e| BrokerError::Connect(e.to_string()))?;
        Ok(conn.create_channel().await?)
    }

    /// A new channel with publisher confirms enabled.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let channel = self.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    /// Declares the whole topology.
    pub async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        topology.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default)]
pub struct Outgoing {
    /// Exchange (`""` for the default exchange, routing straight to a queue).
    pub exchange: String,
    /// Routing key (the queue name on the default exchange).
    pub routing_key: String,
    /// The payload, sent as is (an envelope's JSON, an event's JSON).
    pub body: Vec<u8>,
    /// Headers, as strings or integers.
    pub headers: Vec<(String, HeaderValue)>,
    /// Per-message TTL in milliseconds (used by the delayed-retry queues).
    pub expiration_ms: Option<u64>,
    /// AMQP `message-id` property (dead letters carry one for `reelfleet dlq`).
    pub message_id: Option<String>,
    /// Return the message if no queue takes it (an error for work queues).
    pub mandatory: bool,
}

/// A header value: AMQP carries both kinds, and the runtime's own headers
/// use nothing else.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    /// Sent as an AMQP long string.
    Text(String),
    /// Sent as an AMQP signed 64-bit integer.
    Int(i64),
}

impl Outgoing {
    /// A persistent mandatory message straight to `queue`.
    pub fn to_queue(queue: impl Into<String>, body: Vec<u8>) -> Self {
        Self { routing_key: queue.into(), body, mandatory: true, ..Default::default() }
    }

    /// The message with one more header; of two with one name, the later is sent.
    pub fn header(mut self, name: &str, value: HeaderValue) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("channel", &self.channel.id()).finish()
    }
}

impl Publisher {
    /// Publishes `msg` persistently and waits for the broker's confirm.
    pub async fn publish(&self, msg: &Outgoing) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        for (k, v) in &msg.headers {
            let value = match v {
                HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
            };
            headers.insert(k.as_str().into(), value);
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(id) = &msg.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(ms) = msg.expiration_ms {
            props = props.with_expiration(ms.to_string().as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                msg.exchange.as_str().into(),
                msg.routing_key.as_str().into(),
                BasicPublishOptions { mandatory: msg.mandatory, ..Default::default() },
                &msg.body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(BrokerError::Returned {
                routing_key: msg.routing_key.clone(),
                reply: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(BrokerError::Nacked(msg.routing_key.clone())),
        }
    }

    /// The channel, for what has no wrapper here (declares, deletes, `basic.get`).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// Reads a text or integer header from delivery properties.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => other.as_long_long_int().map(|i| i.to_string()),
    }
}

/// Reads an integer header (accepting any integer width or a decimal string).
pub fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    let v = headers.inner().get(name)?;
    let n: Option<i64> = match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some((*i).into()),
        AMQPValue::ShortInt(i) => Some((*i).into()),
        AMQPValue::ShortShortInt(i) => Some((*i).into()),
        AMQPValue::LongUInt(i) => Some((*i).into()),
        AMQPValue::ShortUInt(i) => Some((*i).into()),
        AMQPValue::ShortShortUInt(i) => Some((*i).into()),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
}
