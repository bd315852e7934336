//! The stage runtime: consumes a stage's queues with bounded prefetch, hands
//! each message to the [`Stage`], and decides in one place what happens next:
//! ack after the outputs are stored and the next message is confirmed,
//! delayed retry for transient errors, dead-letter for permanent ones or when
//! retries run out. Reconnects after a lost broker; drains on shutdown.

use crate::{
    broker::{header_str, header_u32, Broker, BrokerError, HeaderValue, Outgoing, Publisher},
    envelope::{Envelope, Signer, ATTEMPT_HEADER, SIGNATURE_HEADER},
    error::{ErrorClass, StageError},
    health::Readiness,
    manifest::{JobFailure, ManifestStore},
    metrics::Metrics,
    settings::Settings,
    topology::{Topology, WorkQueue},
};
use async_trait::async_trait;
use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use std::{sync::Arc, time::Duration};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// Dead-letter headers.
pub mod dlq_headers {
    /// Stage that gave up.
    pub const STAGE: &str = "x-reelfleet-stage";
    /// `transient` or `permanent`.
    pub const ERROR_CLASS: &str = "x-reelfleet-error-class";
    /// Short error code.
    pub const ERROR_CODE: &str = "x-reelfleet-error-code";
    /// Readable reason.
    pub const ERROR_MESSAGE: &str = "x-reelfleet-error-message";
    /// Attempts made.
    pub const ATTEMPTS: &str = "x-reelfleet-attempts";
    /// RFC 3339 time of dead-lettering.
    pub const FAILED_AT: &str = "x-reelfleet-failed-at";
    /// RFC 3339 time of the first failed attempt (carried through retries).
    pub const FIRST_FAILED_AT: &str = "x-reelfleet-first-failed-at";
    /// Queue the message came from.
    pub const QUEUE: &str = "x-reelfleet-queue";
}

/// What a stage receives.
#[derive(Debug, Clone)]
pub enum Input {
    /// A verified envelope.
    Envelope(Envelope),
    /// An unsigned body (S3 events, to stages that accept them).
    Raw(Vec<u8>),
}

/// A message handed to a stage.
#[derive(Debug, Clone)]
pub struct Message {
    /// Queue it came from.
    pub queue: WorkQueue,
    /// Body.
    pub input: Input,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// The broker delivered it before (a worker died holding it).
    pub redelivered: bool,
}

/// What a stage wants sent once its outputs are stored.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// The next stage's message.
    Next {
        /// Queue.
        queue: WorkQueue,
        /// Envelope (the runtime signs it).
        envelope: Envelope,
    },
    /// A lifecycle event on the events exchange.
    Event {
        /// Routing key (`job.completed`).
        routing_key: String,
        /// JSON body.
        body: Vec<u8>,
    },
}

/// One stage of the pipeline.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Stage name (`ingest`, ...).
    fn name(&self) -> &'static str;
    /// Queues the stage consumes.
    fn queues(&self) -> Vec<WorkQueue>;
    /// Whether unsigned bodies (S3 events) are accepted.
    fn accepts_unsigned(&self) -> bool {
        false
    }
    /// Processes one message: store outputs, return what to send next.
    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError>;
}

/// Shared machinery of every worker in a process.
#[derive(Clone)]
pub struct Runtime {
    broker: Broker,
    topology: Topology,
    signer: Signer,
    manifests: ManifestStore,
    metrics: Metrics,
    readiness: Readiness,
    prefetch: u16,
    grace: Duration,
    job_timeout: Duration,
    retry: crate::settings::RetrySettings,
    reconnect_max: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("topology", &self.topology).finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime for `settings`, sharing `metrics` and `readiness` with the health server.
    pub fn new(
        settings: &Settings,
        broker: Broker,
        manifests: ManifestStore,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Self {
        Self {
            broker,
            topology: Topology::new(settings.namespace.clone(), settings.broker.delivery_limit),
            signer: Signer::new(settings.signing.secret.expose().as_bytes()),
            manifests,
            metrics,
            readiness,
            prefetch: settings.broker.prefetch,
            grace: Duration::from_secs(settings.runtime.grace_period_secs),
            job_timeout: Duration::from_secs(settings.runtime.job_timeout_secs),
            retry: settings.retry.clone(),
            reconnect_max: Duration::from_secs(settings.broker.reconnect_max_delay_secs.max(1)),
        }
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs `stage` on all its queues until `shutdown`, then drains.
    pub async fn run(&self, stage: Arc<dyn Stage>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for queue in stage.queues() {
            self.readiness.register(&self.topology.queue(queue));
            let (rt, stage, shutdown) = (self.clone(), stage.clone(), shutdown.clone());
            tasks.spawn(async move { rt.consume(stage, queue, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn consume(&self, stage: Arc<dyn Stage>, queue: WorkQueue, shutdown: CancellationToken) {
        let name = self.topology.queue(queue);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.session(&stage, queue, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.readiness.set(&name, false);
                    self.metrics.consumer_up.with_label_values(&[&name]).set(0);
                    let delay = delays.next().unwrap_or(self.reconnect_max);
                    warn!(queue = %name, error = %e, delay_ms = delay.as_millis() as u64, "Consumer lost its broker connection; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.readiness.set(&name, false);
        self.metrics.consumer_up.with_label_values(&[&name]).set(0);
    }

    /// One connection's worth of consuming. `Ok` means a clean shutdown.
    async fn session(
        &self,
        stage: &Arc<dyn Stage>,
        queue: WorkQueue,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let name = self.topology.queue(queue);
        let channel = self.broker.channel().await?;
        self.topology.declare(&channel).await?;
        channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
        let publisher = self.broker.publisher().await?;
        let tag = format!("{}-{}", stage.name(), uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                name.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.readiness.set(&name, true);
        self.metrics.consumer_up.with_label_values(&[&name]).set(1);
        info!(queue = %name, prefetch = self.prefetch, "Consuming");

        let mut in_flight: JoinSet<()> = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let (rt, stage, publisher) = (self.clone(), stage.clone(), publisher.clone());
                        in_flight.spawn(async move { rt.handle(stage, queue, publisher, delivery).await });
                    }
                    Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                    None => break Err(BrokerError::Connect(format!("consumer of {name} was cancelled by the broker"))),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        };

        if result.is_ok() {
            self.readiness.drain();
            let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            let waiting = in_flight.len();
            if waiting > 0 {
                info!(queue = %name, in_flight = waiting, grace_s = self.grace.as_secs(), "Draining in-flight messages");
            }
            let drained =
                tokio::time::timeout(self.grace, async { while in_flight.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                warn!(queue = %name, left = in_flight.len(), "Grace period over; unfinished messages go back to the queue");
                in_flight.abort_all();
            }
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = publisher.channel().close(200, "shutdown".into()).await;
        } else {
            // The channel is gone: the broker requeues what we held, so work on it is wasted.
            in_flight.abort_all();
        }
        result
    }

    async fn handle(&self, stage: Arc<dyn Stage>, queue: WorkQueue, publisher: Publisher, delivery: Delivery) {
        let stage_name = stage.name();
        let queue_name = self.topology.queue(queue);
        let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
        let started = Instant::now();
        self.metrics.in_flight.with_label_values(&[stage_name]).inc();

        let decoded = self.decode(&stage, &delivery);
        let job_id = match &decoded {
            Ok(Input::Envelope(e)) => e.job_id.clone(),
            _ => String::new(),
        };
        let span = tracing::info_span!("message", stage = stage_name, queue = %queue_name, job_id = %job_id, attempt);
        async {
            let result = match decoded.clone() {
                Err(e) => Err(e),
                Ok(input) => {
                    let msg = Message { queue, input, attempt, redelivered: delivery.redelivered };
                    match tokio::time::timeout(self.job_timeout, stage.handle(msg)).await {
                        Ok(r) => r,
                        Err(_) => Err(StageError::transient("timeout", format!("stage took longer than {} s", self.job_timeout.as_secs()))),
                    }
                }
            };
            self.metrics.duration.with_label_values(&[stage_name]).observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.with_label_values(&[stage_name]).observe(1.0);
            let outcome = match result {
                Ok(dispatches) => match self.dispatch(&publisher, dispatches).await {
                    Ok(()) => self.settle_ack(&delivery, "ok").await,
                    Err(e) => {
                        warn!(error = %e, "Could not send the next stage's message; the message goes back to the queue");
                        self.requeue(&delivery).await
                    }
                },
                Err(err) => {
                    self.metrics.failures.with_label_values(&[stage_name, &err.class.to_string(), err.code]).inc();
                    let envelope = match &decoded {
                        Ok(Input::Envelope(e)) => Some(e),
                        _ => None,
                    };
                    if err.class == ErrorClass::Transient && attempt + 1 < self.retry.max_attempts {
                        self.retry(&publisher, queue, &delivery, envelope, attempt, &err).await
                    } else {
                        self.dead_letter(&publisher, stage_name, queue, &delivery, envelope, attempt, &err).await
                    }
                }
            };
            self.metrics.messages.with_label_values(&[stage_name, &queue_name, outcome]).inc();
        }
        .instrument(span)
        .await;
        self.metrics.in_flight.with_label_values(&[stage_name]).dec();
    }

    fn decode(&self, stage: &Arc<dyn Stage>, delivery: &Delivery) -> Result<Input, StageError> {
        let signature = header_str(&delivery.properties, SIGNATURE_HEADER);
        if signature.is_none() && stage.accepts_unsigned() {
            return Ok(Input::Raw(delivery.data.clone()));
        }
        self.signer.verify(&delivery.data, signature.as_deref())?;
        Ok(Input::Envelope(Envelope::parse(&delivery.data)?))
    }

    /// Signs `envelope` into a message for `queue`.
    pub fn signed(&self, queue: &str, envelope: &Envelope) -> Outgoing {
        let body = envelope.to_bytes();
        let sig = self.signer.sign(&body);
        Outgoing::to_queue(queue, body).header(SIGNATURE_HEADER, HeaderValue::Text(sig))
    }

    async fn dispatch(&self, publisher: &Publisher, dispatches: Vec<Dispatch>) -> Result<(), BrokerError> {
        for d in dispatches {
            let msg = match d {
                Dispatch::Next { queue, envelope } => self.signed(&self.topology.queue(queue), &envelope),
                Dispatch::Event { routing_key, body } => Outgoing {
                    exchange: self.topology.events_exchange(),
                    routing_key,
                    body,
                    // Nobody listening to lifecycle events is normal, not a loss.
                    mandatory: false,
                    ..Default::default()
                },
            };
            publisher.publish(&msg).await?;
        }
        Ok(())
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let mut schedule = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry.base_delay_ms.max(1)))
            .with_max_delay(Duration::from_millis(self.retry.max_delay_ms.max(self.retry.base_delay_ms).max(1)))
            .with_jitter()
            .without_max_times()
            .build();
        schedule.nth(attempt as usize).unwrap_or(Duration::from_millis(self.retry.max_delay_ms))
    }

    async fn retry(
        &self,
        publisher: &Publisher,
        queue: WorkQueue,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        attempt: u32,
        err: &StageError,
    ) -> &'static str {
        let delay = self.retry_delay(attempt);
        let retry_queue = self.topology.retry_queue(queue);
        let mut msg = match envelope {
            Some(env) => {
                let mut env = env.clone();
                env.attempt = attempt + 1;
                self.signed(&retry_queue, &env)
            }
            None => Outgoing::to_queue(&retry_queue, delivery.data.clone()),
        };
        msg = msg
            .header(ATTEMPT_HEADER, HeaderValue::Int(i64::from(attempt + 1)))
            .header(dlq_headers::FIRST_FAILED_AT, HeaderValue::Text(first_failed_at(delivery, chrono::Utc::now())));
        msg.expiration_ms = Some(delay.as_millis() as u64);
        match publisher.publish(&msg).await {
            Ok(()) => {
                warn!(error = %err, delay_ms = delay.as_millis() as u64, "Transient failure; retrying later");
                self.settle_ack(delivery, "retry").await
            }
            Err(e) => {
                warn!(error = %e, "Could not schedule a retry; the message goes back to the queue");
                self.requeue(delivery).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        publisher: &Publisher,
        stage: &str,
        queue: WorkQueue,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        attempt: u32,
        err: &StageError,
    ) -> &'static str {
        let now = chrono::Utc::now();
        let message: String = err.message.chars().take(1000).collect();
        let mut msg = Outgoing::to_queue(self.topology.dead_letter_queue(queue), delivery.data.clone())
            .header(dlq_headers::STAGE, HeaderValue::Text(stage.into()))
            .header(dlq_headers::ERROR_CLASS, HeaderValue::Text(err.class.to_string()))
            .header(dlq_headers::ERROR_CODE, HeaderValue::Text(err.code.into()))
            .header(dlq_headers::ERROR_MESSAGE, HeaderValue::Text(message.clone()))
            .header(dlq_headers::ATTEMPTS, HeaderValue::Int(i64::from(attempt + 1)))
            .header(dlq_headers::FAILED_AT, HeaderValue::Text(now.to_rfc3339()))
            .header(dlq_headers::FIRST_FAILED_AT, HeaderValue::Text(first_failed_at(delivery, now)))
            .header(dlq_headers::QUEUE, HeaderValue::Text(self.topology.queue(queue)));
        msg.message_id = Some(uuid::Uuid::new_v4().simple().to_string());
        if let Some(sig) = header_str(&delivery.properties, SIGNATURE_HEADER) {
            msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sig));
        }
        if let Err(e) = publisher.publish(&msg).await {
            warn!(error = %e, "Could not dead-letter; the message goes back to the queue");
            return self.requeue(delivery).await;
        }
        error!(class = %err.class, code = err.code, error = %message, "Dead-lettered");
        // A forged message must not touch the job it names.
        if let (Some(env), false) = (envelope, err.code == "bad_signature") {
            let failure = JobFailure {
                stage: stage.into(),
                class: err.class,
                code: err.code.into(),
                message,
                attempts: attempt + 1,
                at: now,
            };
            if let Err(e) = self.manifests.mark_failed(&env.job_id, failure).await {
                warn!(error = %e, "Could not mark the manifest failed");
            }
        }
        self.settle_ack(delivery, "dead_letter").await
    }

    async fn settle_ack(&self, delivery: &Delivery, outcome: &'static str) -> &'static str {
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            warn!(error = %e, "Ack failed; the broker will redeliver the message");
            return "ack_failed";
        }
        outcome
    }

    async fn requeue(&self, delivery: &Delivery) -> &'static str {
        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        "requeue"
    }
}

fn first_failed_at(delivery: &Delivery, now: chrono::DateTime<chrono::Utc>) -> String {
    header_str(&delivery.properties, dlq_headers::FIRST_FAILED_AT).unwrap_or_else(|| now.to_rfc3339())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
