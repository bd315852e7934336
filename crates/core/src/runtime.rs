//! The stage runtime: consumes a stage's queues with bounded prefetch, hands
//! each message to the [`Stage`], and settles it: ack after the outputs are
//! stored and the next message is confirmed; otherwise what
//! [`decide`] says (delayed retry, deferral,
//! dead-letter). A publish the broker does not confirm puts the message back
//! on its queue after a backoff. It also moves the broker's own dead letters
//! (delivery limit) of its queues into their dead-letter queues with the same
//! headers as its own. Reconnects after a lost broker; drains on shutdown.

use crate::{
    broker::{header_str, header_u32, Broker, BrokerError, HeaderValue, Outgoing, Publisher},
    decide::{decide, repeated_timeout, timeouts_after, Next, Outcome, TIMEOUTS_HEADER},
    envelope::{Envelope, ATTEMPT_HEADER, SIGNATURE_HEADER},
    error::StageError,
    events::{sign_event, Event, JOB_DEAD_LETTERED, JOB_FAILED, STAGE_FINISHED, STAGE_STARTED},
    health::Readiness,
    manifest::{JobFailure, ManifestStore},
    metrics::Metrics,
    settings::Settings,
    signing::Signer,
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
use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// Headers the runtime puts on every dead letter it writes (and on the
/// broker's own, once moved), read by `reelfleet dlq`.
pub mod dlq_headers {
    /// Stage that gave up.
    pub const STAGE: &str = "x-reelfleet-stage";
    /// `transient` or `permanent`.
    pub const ERROR_CLASS: &str = "x-reelfleet-error-class";
    /// Short error code (`delivery_limit` for a message the broker dead-lettered).
    pub const ERROR_CODE: &str = "x-reelfleet-error-code";
    /// The reason, for a person.
    pub const ERROR_MESSAGE: &str = "x-reelfleet-error-message";
    /// Attempts made, the last one included.
    pub const ATTEMPTS: &str = "x-reelfleet-attempts";
    /// RFC 3339 time of dead-lettering.
    pub const FAILED_AT: &str = "x-reelfleet-failed-at";
    /// RFC 3339 time of the first failed attempt (carried through retries).
    pub const FIRST_FAILED_AT: &str = "x-reelfleet-first-failed-at";
    /// Queue the message came from.
    pub const QUEUE: &str = "x-reelfleet-queue";
}

/// S3 requests the settling of a worker's messages makes at once (marking
/// dead-lettered jobs failed). A batch is settled side by side (so requeue
/// backoffs do not add up), and without this bound a deep queue of failing
/// jobs would hold one S3 request per prefetched message, 400 for the low
/// tier by default: about 80 KiB each of resident memory, measured by
/// `scripts/bench memory`.
pub const SETTLE_STORE_CONCURRENCY: usize = 16;

/// The error of a message that ran past its deadline of `secs`.
fn timed_out(secs: u64) -> StageError {
    StageError::transient("timeout", format!("stage took longer than {secs} s"))
}

/// What a stage receives.
// The envelope is the common case (and lives as long as the message): boxing it buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Input {
    /// An envelope whose signature checked out.
    Envelope(Envelope),
    /// An unsigned body (S3 events, to stages that accept them).
    Raw(Vec<u8>),
}

/// A message handed to a stage.
#[derive(Debug, Clone)]
pub struct Message {
    /// Queue it came from.
    pub queue: WorkQueue,
    /// The body, as a verified envelope or raw bytes.
    pub input: Input,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// The broker delivered it before (a worker died holding it).
    pub redelivered: bool,
    /// How long the runtime lets the stage hold it; a stage that learns how
    /// much work it is (the source's duration and resolution) raises it.
    pub deadline: JobDeadline,
}

/// How long the runtime lets a stage hold one message: `runtime.job_timeout_secs`
/// to begin with, raised by the stage once it knows the size of the work
/// (never lowered), at most `runtime.job_timeout_max_secs` and 60 s below
/// `broker.consumer_timeout_secs` (past the broker's own limit the channel
/// would close under the job). Clones share one deadline.
#[derive(Clone, Debug)]
pub struct JobDeadline {
    secs: Arc<AtomicU64>,
    max_secs: u64,
}

impl JobDeadline {
    /// A deadline of `secs`, which raises stop at `max_secs` (and never go below `secs`).
    pub fn new(secs: u64, max_secs: u64) -> Self {
        Self { secs: Arc::new(AtomicU64::new(secs)), max_secs: max_secs.max(secs) }
    }

    /// The runtime's deadline for `settings`: the job timeout, raised at most
    /// to the job timeout cap, itself held 60 s below the broker's consumer timeout.
    pub fn from_settings(settings: &Settings) -> Self {
        let broker_cap = settings.broker.consumer_timeout_secs.saturating_sub(60);
        Self::new(settings.runtime.job_timeout_secs, settings.runtime.job_timeout_max_secs.min(broker_cap))
    }

    /// The most a stage may raise it to, in seconds.
    pub fn max_secs(&self) -> u64 {
        self.max_secs
    }

    /// Seconds the message may take in all, from the moment the stage got it.
    pub fn secs(&self) -> u64 {
        self.secs.load(Ordering::SeqCst)
    }

    /// Raises the deadline to `secs` (at most the cap; a lower value changes
    /// nothing) and returns the deadline now in force.
    pub fn raise_to(&self, secs: u64) -> u64 {
        self.secs.fetch_max(secs.min(self.max_secs), Ordering::SeqCst);
        self.secs()
    }

    /// Runs `work` until it finishes or the deadline passes (a deadline raised
    /// meanwhile is honoured); `Err` holds the deadline that passed, in seconds.
    pub async fn run<F: std::future::Future>(&self, work: F) -> Result<F::Output, u64> {
        let started = Instant::now();
        tokio::pin!(work);
        loop {
            let secs = self.secs();
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = tokio::time::sleep_until(started + Duration::from_secs(secs)) => {
                    if self.secs() <= secs {
                        return Err(secs);
                    }
                }
            }
        }
    }
}

/// What a stage wants sent once its outputs are stored.
// As for `Input`: most dispatches carry an envelope.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// The next stage's message.
    Next {
        /// The next stage's queue (its name under the namespace comes from the topology).
        queue: WorkQueue,
        /// Envelope (the runtime signs it).
        envelope: Envelope,
    },
    /// A lifecycle event on the events exchange.
    Event {
        /// Routing key (`job.completed`).
        routing_key: String,
        /// The event as JSON, signed for the webhooks queue (see [`Runtime::event`]).
        body: Vec<u8>,
    },
    /// A body that is not an envelope, signed for `queue` (the webhooks
    /// stage splitting an event into one delivery per target).
    Signed {
        /// Queue.
        queue: WorkQueue,
        /// The body.
        body: Vec<u8>,
    },
    /// A body passed on as it came, without a signature (ingest splitting an
    /// unsigned S3 event with several records into one event each).
    Unsigned {
        /// Queue.
        queue: WorkQueue,
        /// The body.
        body: Vec<u8>,
    },
    /// Records in the job's manifest that the stage handed it on; placed
    /// after the messages it covers, it runs once the broker confirmed them.
    Handoff {
        /// The job handed on.
        job_id: String,
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
    /// Whether its bodies are signed but not envelopes (lifecycle events):
    /// the signature is checked and the body handed over raw.
    fn signed_raw(&self) -> bool {
        false
    }
    /// Whether its dead letters fail the job they name (and announce
    /// `job.failed` / `job.dead_lettered`); not for a stage that only
    /// reports on jobs, such as webhooks.
    fn fails_jobs(&self) -> bool {
        true
    }
    /// Whether a job it dead-letters before any manifest exists gets a
    /// failed one (the pull stage runs before ingest writes the manifest).
    fn creates_manifest_on_failure(&self) -> bool {
        false
    }
    /// Processes one message: store outputs, return what to send next.
    async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError>;

    /// How deliveries of `queue` are grouped; `None` hands them over one by one.
    fn batching(&self, _queue: WorkQueue) -> Option<Batching> {
        None
    }

    /// Processes a batch; one result per message, in order.
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<Result<Vec<Dispatch>, StageError>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.handle(m).await);
        }
        out
    }
}

/// How a queue's deliveries are grouped into batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// A batch goes when it has this many messages...
    pub size: usize,
    /// ...or when its first message has waited this long.
    pub max_wait: Duration,
    /// Batches in progress at once.
    pub concurrency: usize,
}

/// Shortest and longest wait before a message whose follow-up could not be
/// published goes back to its queue.
const REQUEUE_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// A consumer's confirming publisher and its run of consecutive failed
/// publishes, which spaces out the requeues that follow them: a broker that
/// refuses publishes must not see the same message redelivered in a tight
/// loop until the delivery limit dead-letters it.
#[derive(Clone, Debug)]
struct Outbox {
    publisher: Publisher,
    failures: Arc<AtomicU32>,
}

impl Outbox {
    fn new(publisher: Publisher) -> Self {
        Self { publisher, failures: Arc::default() }
    }

    async fn publish(&self, msg: &Outgoing) -> Result<(), BrokerError> {
        let sent = self.publisher.publish(msg).await;
        if sent.is_ok() {
            self.failures.store(0, Ordering::Relaxed);
        }
        sent
    }

    /// Counts a failed publish; returns how many in a row, this one included.
    fn failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}

/// The wait before requeueing after `consecutive` failed publishes in a row:
/// exponential from 200 ms with jitter, never above 10 s.
fn requeue_delay(consecutive: u32) -> Duration {
    let (min, max) = REQUEUE_BACKOFF;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build();
    // Past 2^6 the cap has long been reached; no need to walk further.
    let n = consecutive.saturating_sub(1).min(64) as usize;
    delays.nth(n).unwrap_or(max).clamp(min, max)
}

/// The waits between reconnection attempts: exponential from 200 ms with
/// jitter, up to `max` (`broker.reconnect_max_delay_secs`), without end.
/// backon's jitter adds up to a whole delay on top of its cap, hence the clamp.
fn reconnect_delays(max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |d| d.min(max))
}

/// What a stage gets of a body: the raw bytes only when the stage takes
/// unsigned bodies and none came with a signature; anything else must be an
/// envelope whose signature checks out for `queue` (a signed body is
/// verified even by a stage that takes unsigned ones); a stage whose signed
/// bodies are not envelopes (`signed_raw`) gets them raw once verified,
/// signed for its queue or for the events exchange `events` it is bound to.
fn decode_body(
    signer: &Signer,
    queue: &str,
    body: &[u8],
    signature: Option<&str>,
    accepts_unsigned: bool,
    signed_raw: Option<&str>,
) -> Result<Input, StageError> {
    if signature.is_none() && accepts_unsigned {
        return Ok(Input::Raw(body.to_vec()));
    }
    if let Some(events) = signed_raw {
        if signer.verify(events, body, signature).is_err() {
            signer.verify(queue, body, signature)?;
        }
        return Ok(Input::Raw(body.to_vec()));
    }
    signer.verify(queue, body, signature)?;
    Ok(Input::Envelope(Envelope::parse(body)?))
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
    deadline: JobDeadline,
    store_slots: Arc<tokio::sync::Semaphore>,
    retry: crate::settings::RetrySettings,
    reconnect_max: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("topology", &self.topology).finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime for `settings`, sharing `metrics` and `readiness` with the
    /// health server; fails when the signing keys are unusable.
    pub fn new(
        settings: &Settings,
        broker: Broker,
        manifests: ManifestStore,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Result<Self, crate::signing::KeyError> {
        Ok(Self {
            broker,
            topology: Topology::from_settings(settings),
            signer: Signer::from_settings(&settings.signing, &settings.namespace)?,
            manifests,
            metrics,
            readiness,
            prefetch: settings.broker.prefetch,
            grace: Duration::from_secs(settings.runtime.grace_period_secs),
            deadline: JobDeadline::from_settings(settings),
            store_slots: Arc::new(tokio::sync::Semaphore::new(SETTLE_STORE_CONCURRENCY)),
            retry: settings.retry.clone(),
            reconnect_max: Duration::from_secs(settings.broker.reconnect_max_delay_secs.max(1)),
        })
    }

    /// The queue and exchange names it consumes from and publishes to.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs `stage` on all its queues (and moves the broker's dead letters of
    /// those queues) until `shutdown`, then drains. Readiness drops as soon
    /// as `shutdown` is cancelled.
    pub async fn run(&self, stage: Arc<dyn Stage>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        let (readiness, stop) = (self.readiness.clone(), shutdown.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            readiness.drain();
        });
        for queue in stage.queues() {
            self.readiness.register(&self.topology.queue(queue));
            let (rt, owner, stop) = (self.clone(), stage.clone(), shutdown.clone());
            tasks.spawn(async move { rt.consume(owner, queue, stop).await });
            let (rt, owner, stop) = (self.clone(), stage.clone(), shutdown.clone());
            tasks.spawn(async move { rt.consume_broker_dead_letters(owner, queue, stop).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    fn reconnect_delays(&self) -> impl Iterator<Item = Duration> {
        reconnect_delays(self.reconnect_max)
    }

    async fn consume(&self, stage: Arc<dyn Stage>, queue: WorkQueue, shutdown: CancellationToken) {
        let name = self.topology.queue(queue);
        let mut delays = self.reconnect_delays();
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
        let batching = stage.batching(queue);
        // A batched queue holds a batch per concurrent slot; memory stays bounded by it.
        let prefetch = match batching {
            Some(b) => {
                (b.size.max(1) * b.concurrency.max(1)).clamp(usize::from(self.prefetch), usize::from(u16::MAX)) as u16
            }
            None => self.prefetch,
        };
        let tag = format!("{}-{}", stage.name(), uuid::Uuid::new_v4().simple());
        let (outbox, mut consumer) = self.open_consumer(&channel, &name, prefetch, &tag).await?;
        self.readiness.set(&name, true);
        self.metrics.consumer_up.with_label_values(&[&name]).set(1);
        info!(queue = %name, prefetch, batch = ?batching, "Consuming");

        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut buffer: Vec<Delivery> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        let slots = Arc::new(tokio::sync::Semaphore::new(batching.map(|b| b.concurrency.max(1)).unwrap_or(1)));
        let flush = |buffer: &mut Vec<Delivery>, in_flight: &mut JoinSet<()>| {
            let batch = std::mem::take(buffer);
            if batch.is_empty() {
                return;
            }
            let (rt, stage, outbox, slots) = (self.clone(), stage.clone(), outbox.clone(), slots.clone());
            in_flight.spawn(async move {
                let _slot = slots.acquire_owned().await;
                rt.handle_batch(stage, queue, outbox, batch).await
            });
        };
        let result = loop {
            let wait = flush_at.map(tokio::time::sleep_until);
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => match batching {
                        None => {
                            let (rt, stage, outbox) = (self.clone(), stage.clone(), outbox.clone());
                            in_flight.spawn(async move { rt.handle(stage, queue, outbox, delivery).await });
                        }
                        Some(b) => {
                            if buffer.is_empty() {
                                flush_at = Some(Instant::now() + b.max_wait);
                            }
                            buffer.push(delivery);
                            if buffer.len() >= b.size {
                                flush(&mut buffer, &mut in_flight);
                                flush_at = None;
                            }
                        }
                    },
                    Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                    None => break Err(BrokerError::Connect(format!("consumer of {name} was cancelled by the broker"))),
                },
                _ = async { wait.expect("guarded").await }, if flush_at.is_some() => {
                    flush(&mut buffer, &mut in_flight);
                    flush_at = None;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        };
        if result.is_ok() {
            // What was gathered is handled within the grace period like the rest.
            flush(&mut buffer, &mut in_flight);
        }

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
            let _ = outbox.publisher.channel().close(200, "shutdown".into()).await;
        } else {
            // The channel is gone and the broker requeues what we held, but the work
            // goes on: a provider answer already paid for gets into the job's ledger,
            // and the claim keeps the redelivered copy waiting until this one has
            // stored its result, which the copy then sends on instead of redoing it.
            in_flight.detach_all();
        }
        result
    }

    /// Moves the broker's dead letters of `queue` (`W.dlx`) to its
    /// dead-letter queue, reconnecting until `shutdown`.
    async fn consume_broker_dead_letters(&self, stage: Arc<dyn Stage>, queue: WorkQueue, shutdown: CancellationToken) {
        let name = self.topology.broker_dead_letter_queue(queue);
        let mut delays = self.reconnect_delays();
        loop {
            match self.broker_dead_letter_session(&stage, queue, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = delays.next().unwrap_or(self.reconnect_max);
                    warn!(queue = %name, error = %e, delay_ms = delay.as_millis() as u64, "Consumer lost its broker connection; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sets `channel`'s prefetch, opens a publisher for what the handled
    /// messages send on, and starts consuming `queue` under `tag`.
    async fn open_consumer(
        &self,
        channel: &lapin::Channel,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Outbox, lapin::Consumer), BrokerError> {
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let outbox = Outbox::new(self.broker.publisher().await?);
        let consumer = channel
            .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        Ok((outbox, consumer))
    }

    /// One connection's worth of moving broker dead letters, one at a time
    /// (they are rare). `Ok` means a clean shutdown.
    async fn broker_dead_letter_session(
        &self,
        stage: &Arc<dyn Stage>,
        queue: WorkQueue,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let name = self.topology.broker_dead_letter_queue(queue);
        let channel = self.broker.channel().await?;
        self.topology.declare(&channel).await?;
        let tag = format!("{}-dlx-{}", stage.name(), uuid::Uuid::new_v4().simple());
        let (outbox, mut consumer) = self.open_consumer(&channel, &name, 1, &tag).await?;
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.explain_broker_dead_letter(stage, queue, &outbox, &delivery).await,
                    Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                    None => break Err(BrokerError::Connect(format!("consumer of {name} was cancelled by the broker"))),
                },
            }
        };
        if result.is_ok() {
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = outbox.publisher.channel().close(200, "shutdown".into()).await;
        }
        result
    }

    /// Dead-letters a message the broker took off `queue` at its delivery
    /// limit as if the runtime had given up on it: same headers, code
    /// `delivery_limit`, and the job marked failed when the envelope verifies.
    async fn explain_broker_dead_letter(
        &self,
        stage: &Arc<dyn Stage>,
        queue: WorkQueue,
        outbox: &Outbox,
        delivery: &Delivery,
    ) {
        let stage_name = stage.name();
        let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
        let decoded = self.decode(stage, queue, delivery);
        let envelope = match &decoded {
            Ok(Input::Envelope(e)) if stage.fails_jobs() => Some(e),
            _ => None,
        };
        let err = StageError::transient(
            "delivery_limit",
            format!(
                "the broker dead-lettered the message after more than {} deliveries without a settlement \
                 (the queue's delivery limit): it kept crashing, timing out or losing its worker",
                self.topology.delivery_limit()
            ),
        );
        let span = self.span(stage_name, queue, &decoded, attempt);
        async {
            self.metrics.failures.with_label_values(&[stage_name, &err.class.to_string(), err.code]).inc();
            let outcome = self.dead_letter(outbox, stage, queue, delivery, envelope, attempt, &err).await;
            self.metrics.messages.with_label_values(&[stage_name, &self.topology.queue(queue), outcome.as_str()]).inc();
        }
        .instrument(span)
        .await;
    }

    async fn handle(&self, stage: Arc<dyn Stage>, queue: WorkQueue, outbox: Outbox, delivery: Delivery) {
        let stage_name = stage.name();
        let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
        let started = Instant::now();
        self.metrics.in_flight.with_label_values(&[stage_name]).inc();
        let decoded = self.decode(&stage, queue, &delivery);
        let span = self.span(stage_name, queue, &decoded, attempt);
        async {
            self.announce_start(&stage, &outbox, &decoded).await;
            let result = match decoded.clone() {
                Err(e) => Err(e),
                Ok(input) => {
                    let deadline = self.fresh_deadline();
                    let msg = Message {
                        queue,
                        input,
                        attempt,
                        redelivered: delivery.redelivered,
                        deadline: deadline.clone(),
                    };
                    match deadline.run(stage.handle(msg)).await {
                        Ok(r) => r,
                        Err(secs) => Err(timed_out(secs)),
                    }
                }
            };
            self.metrics.duration.with_label_values(&[stage_name]).observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.with_label_values(&[stage_name]).observe(1.0);
            self.settle(&stage, queue, &outbox, &delivery, &decoded, attempt, result, started).await;
        }
        .instrument(span)
        .await;
        self.metrics.in_flight.with_label_values(&[stage_name]).dec();
    }

    /// Hands a batch of deliveries to the stage at once and settles each on
    /// its own: one message's failure never fails the others.
    async fn handle_batch(&self, stage: Arc<dyn Stage>, queue: WorkQueue, outbox: Outbox, deliveries: Vec<Delivery>) {
        let stage_name = stage.name();
        let started = Instant::now();
        let n = deliveries.len() as i64;
        self.metrics.in_flight.with_label_values(&[stage_name]).add(n);
        let mut valid = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let attempt = header_u32(&delivery.properties, ATTEMPT_HEADER).unwrap_or(0);
            let decoded = self.decode(&stage, queue, &delivery);
            if let Err(e) = &decoded {
                let span = self.span(stage_name, queue, &decoded, attempt);
                self.settle(&stage, queue, &outbox, &delivery, &decoded, attempt, Err(e.clone()), started)
                    .instrument(span)
                    .await;
                continue;
            }
            valid.push((delivery, decoded, attempt));
        }
        // Side by side: a batch of a hundred waits for one round of confirms, not a hundred.
        futures::future::join_all(valid.iter().map(|(_, decoded, _)| self.announce_start(&stage, &outbox, decoded)))
            .await;
        if !valid.is_empty() {
            // A batch shares one deadline: any of its messages may raise it.
            let deadline = self.fresh_deadline();
            let msgs: Vec<Message> = valid
                .iter()
                .filter_map(|(d, decoded, attempt)| {
                    let input = decoded.as_ref().ok()?.clone();
                    Some(Message {
                        queue,
                        input,
                        attempt: *attempt,
                        redelivered: d.redelivered,
                        deadline: deadline.clone(),
                    })
                })
                .collect();
            let count = msgs.len();
            let results = match deadline.run(stage.handle_batch(msgs)).await {
                Ok(r) if r.len() == count => r,
                Ok(r) => {
                    let e = StageError::transient(
                        "internal",
                        format!("stage answered {} results for {count} messages", r.len()),
                    );
                    vec![Err(e); count]
                }
                Err(secs) => vec![Err(timed_out(secs)); count],
            };
            self.metrics.batch_size.with_label_values(&[stage_name]).observe(count as f64);
            self.metrics.duration.with_label_values(&[stage_name]).observe(started.elapsed().as_secs_f64());
            // Settled side by side: when the broker refuses publishes, each
            // message's requeue backoff runs alongside the others' instead of
            // adding up over the batch.
            let settled = valid.iter().zip(results).map(|((delivery, decoded, attempt), result)| {
                let span = self.span(stage_name, queue, decoded, *attempt);
                self.settle(&stage, queue, &outbox, delivery, decoded, *attempt, result, started).instrument(span)
            });
            futures::future::join_all(settled).await;
        }
        self.metrics.in_flight.with_label_values(&[stage_name]).sub(n);
    }

    /// A deadline of its own for a message (or a batch) starting now.
    fn fresh_deadline(&self) -> JobDeadline {
        JobDeadline::new(self.deadline.secs(), self.deadline.max_secs)
    }

    fn span(&self, stage: &str, queue: WorkQueue, decoded: &Result<Input, StageError>, attempt: u32) -> tracing::Span {
        let job_id = match decoded {
            Ok(Input::Envelope(e)) => e.job_id.as_str(),
            _ => "",
        };
        tracing::info_span!("message", stage, queue = %self.topology.queue(queue), job_id, attempt)
    }

    /// Settles a handled message: ack once its follow-up messages are
    /// confirmed, else carries out what [`decide`] says.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        stage: &Arc<dyn Stage>,
        queue: WorkQueue,
        outbox: &Outbox,
        delivery: &Delivery,
        decoded: &Result<Input, StageError>,
        attempt: u32,
        result: Result<Vec<Dispatch>, StageError>,
        started: Instant,
    ) {
        let stage_name = stage.name();
        let outcome = match result {
            Ok(dispatches) => {
                let finished = self.finished_event(stage, decoded, &dispatches, started);
                match self.dispatch(stage_name, outbox, dispatches).await {
                    Ok(()) => {
                        info!("Handled");
                        if let Some(event) = finished {
                            self.announce(outbox, event).await;
                        }
                        self.settle_ack(delivery, Outcome::Ok).await
                    }
                    Err(e) => {
                        warn!(error = %e, "Could not send the next stage's message; the message goes back to the queue");
                        self.requeue(delivery, outbox).await
                    }
                }
            }
            Err(err) => {
                let err = repeated_timeout(err, header_u32(&delivery.properties, TIMEOUTS_HEADER).unwrap_or(0));
                self.metrics.failures.with_label_values(&[stage_name, &err.class.to_string(), err.code]).inc();
                let envelope = match decoded {
                    Ok(Input::Envelope(e)) => Some(e),
                    _ => None,
                };
                match decide(&err, attempt, &self.retry) {
                    Next::Retry { step } => self.retry(outbox, queue, delivery, envelope, attempt, step, &err).await,
                    Next::Wait { step } => {
                        let retry_queue = self.topology.retry_queue(queue, step);
                        self.park(outbox, retry_queue, delivery, None, &err).await
                    }
                    Next::Defer(delay) => {
                        let deferred = self.topology.deferred_queue(queue);
                        self.park(outbox, deferred, delivery, Some(delay), &err).await
                    }
                    Next::DeadLetter { mark_failed } => {
                        let envelope = envelope.filter(|_| mark_failed && stage.fails_jobs());
                        self.dead_letter(outbox, stage, queue, delivery, envelope, attempt, &err).await
                    }
                }
            }
        };
        self.metrics.messages.with_label_values(&[stage_name, &self.topology.queue(queue), outcome.as_str()]).inc();
    }

    /// `stage.finished` for a job a stage worked on and passed on (a message
    /// it dropped as a duplicate, with nothing to send, finished nothing).
    fn finished_event(
        &self,
        stage: &Arc<dyn Stage>,
        decoded: &Result<Input, StageError>,
        dispatches: &[Dispatch],
        started: Instant,
    ) -> Option<Event> {
        let Ok(Input::Envelope(env)) = decoded else { return None };
        if !stage.fails_jobs() || dispatches.is_empty() {
            return None;
        }
        let mut event = Event::about(STAGE_FINISHED, env);
        event.stage = Some(stage.name().to_string());
        event.attempt = Some(env.attempt);
        event.duration_ms = Some(started.elapsed().as_millis() as u64);
        let next_tier = dispatches.iter().find_map(|d| match d {
            Dispatch::Next { envelope, .. } => envelope.tier,
            _ => None,
        });
        if let Some(tier) = next_tier {
            event.tier = Some(tier.as_str().to_string());
        }
        Some(event)
    }

    /// Verifies a delivery as addressed to `queue` (wherever it waited on
    /// the way: retry and deferral queues lead back there).
    fn decode(&self, stage: &Arc<dyn Stage>, queue: WorkQueue, delivery: &Delivery) -> Result<Input, StageError> {
        let signature = header_str(&delivery.properties, SIGNATURE_HEADER);
        let queue = self.topology.queue(queue);
        let events = stage.signed_raw().then(|| self.topology.events_exchange());
        decode_body(
            &self.signer,
            &queue,
            &delivery.data,
            signature.as_deref(),
            stage.accepts_unsigned(),
            events.as_deref(),
        )
    }

    /// Signs `envelope` for the stage queue `audience` and publishes it to
    /// `to` (the same queue, or a retry queue that leads back to it).
    pub fn signed(&self, audience: &str, to: &str, envelope: &Envelope) -> Outgoing {
        let body = envelope.to_bytes();
        let sig = self.signer.sign(audience, &body);
        Outgoing::to_queue(to, body).header(SIGNATURE_HEADER, HeaderValue::Text(sig))
    }

    /// A lifecycle event for the events exchange, signed for it: anyone may
    /// publish to the exchange, but only the fleet's events lead to signed
    /// outgoing POSTs or rows in the job index.
    pub fn event(&self, routing_key: String, body: Vec<u8>) -> Outgoing {
        sign_event(&self.signer, &self.topology, routing_key, body)
    }

    /// Publishes `event`, best effort and bounded in time: a lost event
    /// never holds up the pipeline.
    async fn announce(&self, outbox: &Outbox, event: Event) {
        let msg = self.event(event.event.clone(), event.to_bytes());
        match tokio::time::timeout(Duration::from_secs(5), outbox.publisher.publish(&msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(event = event.event, error = %e, "Could not publish the event"),
            Err(_) => warn!(event = event.event, "Publishing the event took over 5 s; given up"),
        }
    }

    /// `stage.started` for a job's envelope, from a stage that works on jobs.
    async fn announce_start(&self, stage: &Arc<dyn Stage>, outbox: &Outbox, decoded: &Result<Input, StageError>) {
        if let (true, Ok(Input::Envelope(env))) = (stage.fails_jobs(), decoded) {
            let mut event = Event::about(STAGE_STARTED, env);
            event.stage = Some(stage.name().to_string());
            event.attempt = Some(env.attempt);
            self.announce(outbox, event).await;
        }
    }

    /// Announces a job's dead letter (`job.dead_lettered`) and, when its
    /// manifest now says failed, `job.failed`. Best effort and bounded in
    /// time: a lost event never holds up the pipeline.
    async fn announce_failure(&self, outbox: &Outbox, stage: &str, job_id: &str, failure: &JobFailure) {
        let manifest = self.manifests.load(job_id).await.ok().flatten();
        let failed = matches!(&manifest, Some(m) if m.status == crate::manifest::JobStatus::Failed);
        let keys: &[&str] = if failed { &[JOB_DEAD_LETTERED, JOB_FAILED] } else { &[JOB_DEAD_LETTERED] };
        for key in keys {
            let mut event = Event::new(key, job_id);
            event.stage = Some(stage.to_string());
            event.error = Some(failure.into());
            if let Some(m) = &manifest {
                event = event.with_job(m);
            }
            let mut body = serde_json::to_value(&event).unwrap_or_default();
            // What earlier events carried: the failure whole, and where the manifest is.
            body["error"] = serde_json::to_value(failure).unwrap_or_default();
            body["manifest"] = crate::manifest::manifest_key(job_id).into();
            let msg = self.event((*key).to_string(), serde_json::to_vec(&body).unwrap_or_default());
            match tokio::time::timeout(Duration::from_secs(5), outbox.publisher.publish(&msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(event = key, error = %e, "Could not publish the event"),
                Err(_) => warn!(event = key, "Publishing the event took over 5 s; given up"),
            }
        }
    }

    async fn dispatch(&self, stage: &str, outbox: &Outbox, dispatches: Vec<Dispatch>) -> Result<(), BrokerError> {
        for d in dispatches {
            let msg = match d {
                Dispatch::Handoff { job_id } => {
                    // Not recording it only costs a duplicate message later, which the next claim absorbs.
                    if let Err(e) = self.manifests.mark_forwarded(&job_id, stage).await {
                        warn!(job_id, error = %e, "Could not record the hand-over");
                    }
                    continue;
                }
                Dispatch::Next { queue, envelope } => {
                    let queue = self.topology.queue(queue);
                    self.signed(&queue, &queue, &envelope)
                }
                // Unsigned in, unsigned out: ingest checks it again like any other event.
                Dispatch::Unsigned { queue, body } => Outgoing::to_queue(self.topology.queue(queue), body),
                Dispatch::Event { routing_key, body } => self.event(routing_key, body),
                Dispatch::Signed { queue, body } => {
                    let queue = self.topology.queue(queue);
                    let sig = self.signer.sign(&queue, &body);
                    Outgoing::to_queue(queue, body).header(SIGNATURE_HEADER, HeaderValue::Text(sig))
                }
            };
            outbox.publish(&msg).await?;
        }
        Ok(())
    }

    /// Parks a message in the retry queue of `step`, counting an attempt.
    #[allow(clippy::too_many_arguments)]
    async fn retry(
        &self,
        outbox: &Outbox,
        queue: WorkQueue,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        attempt: u32,
        step: Duration,
        err: &StageError,
    ) -> Outcome {
        let retry_queue = self.topology.retry_queue(queue, step);
        let timeouts = timeouts_after(err, header_u32(&delivery.properties, TIMEOUTS_HEADER).unwrap_or(0));
        let mut msg = match envelope {
            Some(env) => {
                let mut env = env.clone();
                env.attempt = attempt + 1;
                self.signed(&self.topology.queue(queue), &retry_queue, &env)
            }
            None => {
                let mut msg = Outgoing::to_queue(&retry_queue, delivery.data.clone());
                // A signed body that is not an envelope keeps its signature (same body, same queue).
                if let Some(sig) = header_str(&delivery.properties, SIGNATURE_HEADER) {
                    msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sig));
                }
                msg
            }
        };
        msg = msg
            .header(ATTEMPT_HEADER, HeaderValue::Int(i64::from(attempt + 1)))
            .header(TIMEOUTS_HEADER, HeaderValue::Int(i64::from(timeouts)))
            .header(
                dlq_headers::FIRST_FAILED_AT,
                HeaderValue::Text(first_failed_at(&delivery.properties, chrono::Utc::now())),
            );
        if !self.hand_over(outbox, &msg, delivery, "schedule a retry").await {
            return Outcome::Requeue;
        }
        warn!(error = %err, delay_ms = step.as_millis() as u64, "Transient failure; retrying later");
        self.settle_ack(delivery, Outcome::Retry).await
    }

    /// Parks a message in `to` (a retry step queue, or the deferral queue with
    /// its own expiration) without counting an attempt.
    async fn park(
        &self,
        outbox: &Outbox,
        to: String,
        delivery: &Delivery,
        expiration: Option<Duration>,
        err: &StageError,
    ) -> Outcome {
        let mut msg = Outgoing::to_queue(to, delivery.data.clone());
        for name in [SIGNATURE_HEADER, ATTEMPT_HEADER, TIMEOUTS_HEADER, dlq_headers::FIRST_FAILED_AT] {
            if let Some(v) = header_str(&delivery.properties, name) {
                msg = msg.header(name, HeaderValue::Text(v));
            }
        }
        msg.expiration_ms = expiration.map(|d| d.as_millis() as u64);
        if !self.hand_over(outbox, &msg, delivery, "defer").await {
            return Outcome::Requeue;
        }
        info!(reason = %err, delay_ms = err.defer.unwrap_or_default().as_millis() as u64, "Deferred");
        self.settle_ack(delivery, Outcome::Deferred).await
    }

    /// Publishes a message to its dead-letter queue with the reason in its
    /// headers, marks the job failed when `envelope` is given (a verified
    /// one), then acks it.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        outbox: &Outbox,
        stage: &Arc<dyn Stage>,
        queue: WorkQueue,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        attempt: u32,
        err: &StageError,
    ) -> Outcome {
        let (stage_name, stage) = (stage.name(), stage.as_ref());
        let now = chrono::Utc::now();
        let message: String = err.message.chars().take(1000).collect();
        let mut msg = Outgoing::to_queue(self.topology.dead_letter_queue(queue), delivery.data.clone())
            .header(dlq_headers::STAGE, HeaderValue::Text(stage_name.into()))
            .header(dlq_headers::ERROR_CLASS, HeaderValue::Text(err.class.to_string()))
            .header(dlq_headers::ERROR_CODE, HeaderValue::Text(err.code.into()))
            .header(dlq_headers::ERROR_MESSAGE, HeaderValue::Text(message.clone()))
            .header(dlq_headers::ATTEMPTS, HeaderValue::Int(i64::from(attempt + 1)))
            .header(dlq_headers::FAILED_AT, HeaderValue::Text(now.to_rfc3339()))
            .header(dlq_headers::FIRST_FAILED_AT, HeaderValue::Text(first_failed_at(&delivery.properties, now)))
            .header(dlq_headers::QUEUE, HeaderValue::Text(self.topology.queue(queue)));
        msg.message_id = Some(uuid::Uuid::new_v4().simple().to_string());
        if let Some(sig) = header_str(&delivery.properties, SIGNATURE_HEADER) {
            msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sig));
        }
        if !self.hand_over(outbox, &msg, delivery, "dead-letter").await {
            return Outcome::Requeue;
        }
        error!(class = %err.class, code = err.code, error = %message, "Dead-lettered");
        let failure = JobFailure {
            stage: stage_name.into(),
            class: err.class,
            code: err.code.into(),
            message,
            attempts: attempt + 1,
            at: now,
        };
        if let (None, Some(job_id), true) = (envelope, err.job_id.as_deref(), stage.fails_jobs()) {
            // The stage recorded the failure in the manifest itself; only the announcement is left.
            self.announce_failure(outbox, stage_name, job_id, &failure).await;
        }
        if let Some(env) = envelope {
            // A batch settles side by side: its S3 writes wait for a slot (see SETTLE_STORE_CONCURRENCY).
            let _slot = self.store_slots.acquire().await;
            if let Err(e) = self.manifests.mark_failed(&env.job_id, failure.clone()).await {
                warn!(error = %e, "Could not mark the manifest failed");
            }
            if stage.creates_manifest_on_failure() && matches!(self.manifests.load(&env.job_id).await, Ok(None)) {
                let mut manifest = crate::manifest::JobManifest::new(env);
                manifest.status = crate::manifest::JobStatus::Failed;
                manifest.error = Some(failure.clone());
                if let Err(e) = self.manifests.create(&mut manifest).await {
                    warn!(error = %e, "Could not record the failed job's manifest");
                }
            }
            self.announce_failure(outbox, stage_name, &env.job_id, &failure).await;
        }
        self.settle_ack(delivery, Outcome::DeadLetter).await
    }

    /// Publishes the message that takes over from `delivery` (retry, deferral,
    /// dead letter); if the broker does not confirm it, `delivery` goes back
    /// to its queue instead, so it is never lost and never in both places.
    async fn hand_over(&self, outbox: &Outbox, msg: &Outgoing, delivery: &Delivery, what: &str) -> bool {
        match outbox.publish(msg).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "Could not {what}; the message goes back to the queue");
                self.requeue(delivery, outbox).await;
                false
            }
        }
    }

    async fn settle_ack(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            warn!(error = %e, "Ack failed; the broker will redeliver the message");
            return Outcome::AckFailed;
        }
        outcome
    }

    /// Puts a message whose follow-up could not be published back on its
    /// queue, after a backoff that grows with the consumer's failed publishes in a row.
    async fn requeue(&self, delivery: &Delivery, outbox: &Outbox) -> Outcome {
        let failures = outbox.failed();
        let delay = requeue_delay(failures);
        info!(failures, delay_ms = delay.as_millis() as u64, "Backing off before requeueing");
        tokio::time::sleep(delay).await;
        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        Outcome::Requeue
    }
}

/// When a message first failed: the time its earlier failures carried
/// along, else `now` (this is its first).
fn first_failed_at(properties: &lapin::BasicProperties, now: chrono::DateTime<chrono::Utc>) -> String {
    header_str(properties, dlq_headers::FIRST_FAILED_AT).unwrap_or_else(|| now.to_rfc3339())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeues_back_off_more_after_each_failed_publish_within_bounds() {
        let (min, max) = REQUEUE_BACKOFF;
        for _ in 0..50 {
            let first = requeue_delay(1);
            assert!(first >= min && first < 2 * min, "{first:?}");
            let fourth = requeue_delay(4);
            assert!(fourth >= 8 * min && fourth < 16 * min, "{fourth:?}");
            for n in [0, 7, 12, 64, u32::MAX] {
                let d = requeue_delay(n);
                assert!(d >= min && d <= max, "{n}: {d:?}");
            }
            assert!(requeue_delay(40) >= max / 2, "the cap is reached, not a reset");
        }
    }

    fn envelope() -> Envelope {
        let source = crate::envelope::SourceObject {
            bucket: "uploads".into(),
            key: "a.mp4".into(),
            size: 1,
            etag: Some("e1".into()),
            version_id: None,
        };
        Envelope::new(crate::envelope::JobKind::Analyze, source)
    }

    #[test]
    fn only_an_unsigned_body_to_a_stage_that_takes_one_arrives_raw() {
        let signer = Signer::with_key("ns", "k1", &[3u8; 32]);
        let q = "ns.preprocess";
        let body = envelope().to_bytes();
        let sig = signer.sign(q, &body);
        let event = br#"{"Records":[]}"#;
        assert!(matches!(decode_body(&signer, q, event, None, true, None), Ok(Input::Raw(b)) if b == event));
        // A signed body is checked even where unsigned ones are taken.
        for accepts_unsigned in [true, false] {
            let decoded = decode_body(&signer, q, &body, Some(&sig), accepts_unsigned, None);
            assert!(matches!(&decoded, Ok(Input::Envelope(e)) if e.job_id == envelope().job_id), "{decoded:?}");
            let forged = decode_body(&signer, q, &body, Some("k1.1.00ff"), accepts_unsigned, None);
            assert!(forged.is_err_and(|e| e.class == crate::error::ErrorClass::Permanent));
            let elsewhere = decode_body(&signer, "ns.postprocess", &body, Some(&sig), accepts_unsigned, None);
            assert!(elsewhere.is_err(), "a message signed for another queue");
        }
        assert!(
            decode_body(&signer, q, &body, None, false, None).is_err(),
            "unsigned to a stage that wants signatures"
        );
        let other = Signer::with_key("ns", "k1", &[4u8; 32]).sign(q, &body);
        assert!(decode_body(&signer, q, &body, Some(&other), false, None).is_err(), "signed with another key");
        let not_json = b"not an envelope";
        assert!(
            decode_body(&signer, q, not_json, Some(&signer.sign(q, not_json)), false, None).is_err(),
            "signed but no envelope"
        );
        // Lifecycle events: signed, not envelopes, handed over raw once verified.
        let event = br#"{"event":"job.completed","job_id":"j1"}"#;
        let hooks = "ns.webhooks";
        let signed = signer.sign(hooks, event);
        assert!(
            matches!(decode_body(&signer, hooks, event, Some(&signed), false, Some("ns.events")), Ok(Input::Raw(b)) if b == event)
        );
        assert!(decode_body(&signer, hooks, event, None, false, Some("ns.events")).is_err(), "an unsigned event");
        assert!(decode_body(&signer, hooks, event, Some(&other), false, Some("ns.events")).is_err(), "a forged event");
        assert!(decode_body(&signer, hooks, b"{}", Some(&signed), false, Some("ns.events")).is_err(), "another body");
        // Signed for the events exchange: every queue bound to it takes the event.
        let for_exchange = signer.sign("ns.events", event);
        for q in [hooks, "ns.index"] {
            let decoded = decode_body(&signer, q, event, Some(&for_exchange), false, Some("ns.events"));
            assert!(matches!(decoded, Ok(Input::Raw(_))), "{q}");
        }
        assert!(decode_body(&signer, q, event, Some(&for_exchange), false, None).is_err(), "not to a work queue");
    }

    #[test]
    fn the_first_failure_time_travels_with_the_message() {
        let now = chrono::Utc::now();
        let fresh = lapin::BasicProperties::default();
        assert_eq!(first_failed_at(&fresh, now), now.to_rfc3339());
        let mut headers = FieldTable::default();
        headers.insert(
            dlq_headers::FIRST_FAILED_AT.into(),
            lapin::types::AMQPValue::LongString("2024-05-01T10:00:00+00:00".into()),
        );
        let retried = lapin::BasicProperties::default().with_headers(headers);
        assert_eq!(first_failed_at(&retried, now), "2024-05-01T10:00:00+00:00");
    }

    #[test]
    fn reconnect_waits_grow_from_200_ms_and_stop_at_the_configured_cap() {
        let max = Duration::from_secs(3);
        let waits: Vec<Duration> = reconnect_delays(max).take(40).collect();
        assert_eq!(waits.len(), 40, "reconnecting never gives up");
        assert!(waits[0] >= Duration::from_millis(200) && waits[0] < Duration::from_millis(400), "{:?}", waits[0]);
        assert!(waits.iter().all(|w| *w <= max), "{waits:?}");
        assert!(waits[20..].iter().all(|w| *w >= max / 2), "the cap is reached and kept: {waits:?}");
    }

    struct Echo;

    #[async_trait]
    impl Stage for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn queues(&self) -> Vec<WorkQueue> {
            vec![WorkQueue::Ingest]
        }
        async fn handle(&self, msg: Message) -> Result<Vec<Dispatch>, StageError> {
            match msg.input {
                Input::Raw(b) if b == b"fail" => Err(StageError::permanent("bad_input", "asked to fail")),
                Input::Raw(b) => Ok(vec![Dispatch::Handoff { job_id: String::from_utf8_lossy(&b).into_owned() }]),
                Input::Envelope(e) => Ok(vec![Dispatch::Handoff { job_id: e.job_id }]),
            }
        }
    }

    #[test]
    fn a_deadline_is_raised_up_to_its_cap_and_never_lowered() {
        let d = JobDeadline::new(900, 5000);
        assert_eq!(d.raise_to(100), 900, "never lowered");
        assert_eq!(d.raise_to(2000), 2000);
        assert_eq!(d.clone().raise_to(1000), 2000, "clones share it");
        assert_eq!(d.raise_to(1 << 40), 5000, "capped");
        let defaults = JobDeadline::from_settings(&Settings::default());
        assert_eq!((defaults.secs(), defaults.max_secs()), (900, 24 * 3600));
        let mut s = Settings::default();
        s.broker.consumer_timeout_secs = 3600;
        assert_eq!(JobDeadline::from_settings(&s).max_secs(), 3540, "60 s below the broker's consumer timeout");
        s.runtime.job_timeout_max_secs = 1000;
        assert_eq!(JobDeadline::from_settings(&s).max_secs(), 1000);
    }

    #[tokio::test]
    async fn a_deadline_stops_late_work_and_honours_a_raise_made_meanwhile() {
        let d = JobDeadline::new(1, 10);
        let t = std::time::Instant::now();
        assert_eq!(d.run(tokio::time::sleep(Duration::from_secs(30))).await, Err(1));
        assert!(t.elapsed() < Duration::from_millis(1900), "{:?}", t.elapsed());
        // The work learns its size and raises the deadline: it may outlive the first one.
        let d = JobDeadline::new(1, 10);
        let inner = d.clone();
        let work = async move {
            inner.raise_to(3);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            7
        };
        assert_eq!(d.run(work).await, Ok(7));
    }

    #[tokio::test]
    async fn a_stage_without_its_own_batching_answers_each_message_in_order() {
        let msg = |body: &[u8]| Message {
            queue: WorkQueue::Ingest,
            input: Input::Raw(body.to_vec()),
            attempt: 0,
            redelivered: false,
            deadline: JobDeadline::new(5, 5),
        };
        let results = Echo.handle_batch(vec![msg(b"a"), msg(b"fail"), msg(b"c")]).await;
        let seen: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(d) => match d.as_slice() {
                    [Dispatch::Handoff { job_id }] => job_id.clone(),
                    other => format!("{other:?}"),
                },
                Err(e) => e.code.to_string(),
            })
            .collect();
        assert_eq!(seen, ["a", "bad_input", "c"]);
        assert_eq!(Echo.batching(WorkQueue::Ingest), None);
    }
}
