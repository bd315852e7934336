//! Dead-letter operations: list, show, replay, purge, export and import the
//! messages in the namespace's dead-letter queues.
//!
//! Reading is non-destructive: messages are fetched unacknowledged and go back
//! to their queue when the channel closes. Replay publishes to the original
//! work queue with a broker confirm and only then acks the dead letter, so a
//! message is never lost and never in both places for longer than that step.

use anyhow::{bail, Context};
use base64::Engine;
use chrono::{DateTime, Utc};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions},
    types::AMQPValue,
    Channel,
};
use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing, Publisher},
    envelope::{Envelope, ATTEMPT_HEADER, SIGNATURE_HEADER},
    events::{sign_event, ErrorRef, Event, JOB_PURGED, JOB_REPLAYED},
    manifest::{JobStatus, ManifestStore, Update},
    runtime::dlq_headers,
    s3event::parse_event,
    settings::Settings,
    signing::Signer,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{collections::BTreeMap, io::BufRead, time::Duration};

/// Which dead letters a command applies to.
#[derive(Clone, Debug, Default)]
pub struct DlqFilter {
    /// Stage name (`ingest`, `preprocess`, `inference`, `postprocess`).
    pub stage: Option<String>,
    /// `transient`, `permanent`, or `broker` (a dead letter without the runtime's
    /// headers, left by a version that let the broker dead-letter straight into
    /// `W.dlq`; delivery-limit dead letters are now `transient` with code
    /// `delivery_limit`).
    pub error_class: Option<String>,
    /// Only the dead letters of this job.
    pub job: Option<String>,
    /// Only dead letters from this time on.
    pub since: Option<DateTime<Utc>>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only the dead letters with these ids (a selection made in the console).
    pub ids: Option<Vec<String>>,
}

/// One dead-lettered message.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// Stable id (`message-id`, or a digest of queue and body).
    pub id: String,
    /// The dead-letter queue holding it.
    pub dlq: String,
    /// The work queue it came from.
    pub queue: String,
    /// Job id, when the body names one.
    pub job: Option<String>,
    /// Stage that gave up.
    pub stage: String,
    /// `transient`, `permanent`, or `broker` (no runtime headers: an old broker dead letter).
    pub error_class: String,
    /// The runtime's short code (`bad_input`, `delivery_limit`, ...).
    pub error_code: String,
    /// The reason, for a person.
    pub error_message: String,
    /// Attempts made, the last one included.
    pub attempts: u32,
    /// RFC 3339 time of the first failed attempt; `None` without the runtime's headers.
    pub first_failure: Option<String>,
    /// RFC 3339 time it was dead-lettered; `None` without the runtime's headers.
    pub last_failure: Option<String>,
    /// Every header of the message, as text or integers.
    #[serde(skip)]
    pub headers: BTreeMap<String, HeaderText>,
    /// The message body as it was dead-lettered (usually a signed envelope).
    #[serde(skip)]
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// The event `kind` (`job.replayed`, `job.purged`) of `job` for this
    /// letter: its stage, its id and its error, and who acted.
    fn event(&self, kind: &str, job: &str, by: Option<&str>) -> Event {
        Event {
            stage: Some(self.stage.clone()),
            dead_letter: Some(self.id.clone()),
            error: Some(ErrorRef {
                stage: self.stage.clone(),
                class: self.error_class.clone(),
                code: self.error_code.clone(),
                message: self.error_message.clone(),
            }),
            by: by.map(str::to_string),
            ..Event::new(kind, job)
        }
    }
}

/// A header value kept for export: a JSON number or string.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum HeaderText {
    /// An AMQP integer header, as a JSON number.
    Int(i64),
    /// Any other header, as a JSON string.
    Text(String),
}

fn header_string(h: &HeaderText) -> String {
    match h {
        HeaderText::Int(i) => i.to_string(),
        HeaderText::Text(t) => t.clone(),
    }
}

/// One line of `dlq export`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportLine {
    /// The dead letter's id, as `dlq ls` shows it.
    pub id: String,
    /// The dead-letter queue `dlq import` puts it back into.
    pub dlq: String,
    /// Every header, restored on import.
    pub headers: BTreeMap<String, HeaderText>,
    /// Body, base64.
    pub body_base64: String,
}

fn header_text(v: &AMQPValue) -> Option<HeaderText> {
    Some(match v {
        AMQPValue::LongString(s) => HeaderText::Text(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => HeaderText::Text(s.to_string()),
        AMQPValue::LongLongInt(i) => HeaderText::Int(*i),
        AMQPValue::LongInt(i) => HeaderText::Int((*i).into()),
        AMQPValue::LongUInt(i) => HeaderText::Int((*i).into()),
        AMQPValue::ShortInt(i) => HeaderText::Int((*i).into()),
        AMQPValue::ShortUInt(i) => HeaderText::Int((*i).into()),
        AMQPValue::Timestamp(t) => HeaderText::Int(*t as i64),
        _ => return None,
    })
}

fn text(h: &BTreeMap<String, HeaderText>, k: &str) -> Option<String> {
    match h.get(k)? {
        HeaderText::Text(s) => Some(s.clone()),
        HeaderText::Int(i) => Some(i.to_string()),
    }
}

/// The job a dead-lettered body names.
fn job_of(body: &[u8]) -> Option<String> {
    if let Ok(env) = Envelope::parse(body) {
        return Some(env.job_id);
    }
    let obj = parse_event(body).ok()?.into_iter().next()?;
    let source = reelfleet_core::envelope::SourceObject {
        bucket: obj.bucket,
        key: obj.key,
        size: obj.size,
        etag: obj.etag,
        version_id: obj.version_id,
    };
    Some(source.job_id())
}

fn describe(dlq: &str, work: &str, stage: &str, delivery: &Delivery) -> DeadLetter {
    let mut headers = BTreeMap::new();
    if let Some(h) = delivery.properties.headers().as_ref() {
        for (k, v) in h.inner() {
            if let Some(t) = header_text(v) {
                headers.insert(k.to_string(), t);
            }
        }
    }
    let id = delivery.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_else(|| {
        let mut d = Sha256::new();
        d.update(dlq.as_bytes());
        d.update(&delivery.data);
        hex::encode(&d.finalize()[..16])
    });
    let ours = headers.contains_key(dlq_headers::ERROR_CLASS);
    DeadLetter {
        id,
        dlq: dlq.into(),
        queue: text(&headers, dlq_headers::QUEUE).unwrap_or_else(|| work.into()),
        job: job_of(&delivery.data),
        stage: text(&headers, dlq_headers::STAGE).unwrap_or_else(|| stage.into()),
        error_class: text(&headers, dlq_headers::ERROR_CLASS).unwrap_or_else(|| "broker".into()),
        error_code: text(&headers, dlq_headers::ERROR_CODE)
            .or_else(|| text(&headers, "x-first-death-reason"))
            .unwrap_or_else(|| "unknown".into()),
        error_message: if ours {
            text(&headers, dlq_headers::ERROR_MESSAGE).unwrap_or_default()
        } else {
            "dead-lettered by the broker (delivery limit reached: the message kept crashing or timing out its worker)"
                .into()
        },
        attempts: text(&headers, dlq_headers::ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
        first_failure: text(&headers, dlq_headers::FIRST_FAILED_AT),
        last_failure: text(&headers, dlq_headers::FAILED_AT),
        headers,
        body: delivery.data.clone(),
    }
}

impl DlqFilter {
    fn matches(&self, d: &DeadLetter) -> bool {
        self.stage.as_ref().is_none_or(|s| &d.stage == s)
            && self.error_class.as_ref().is_none_or(|c| &d.error_class == c)
            && self.job.as_ref().is_none_or(|j| d.job.as_ref() == Some(j))
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&d.id))
            && self.since.is_none_or(|since| {
                d.last_failure.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| t >= since)
            })
    }
}

/// Dead letters held unacknowledged on their own channels; dropping this
/// (or [`Held::release`]) returns every one not acked to its queue.
pub struct Held {
    channels: Vec<Channel>,
    items: Vec<(DeadLetter, Delivery)>,
}

impl Held {
    /// The matching dead letters, in queue order.
    pub fn letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.items.iter().map(|(d, _)| d)
    }

    /// Puts every unacked message back.
    pub async fn release(self) {
        for ch in self.channels {
            let _ = ch.close(200, "done".into()).await;
        }
    }
}

/// Fetches the dead letters matching `filter` without removing them.
pub async fn fetch(settings: &Settings, broker: &Broker, filter: &DlqFilter) -> anyhow::Result<Held> {
    let topology = Topology::from_settings(settings);
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut held = Held { channels: Vec::new(), items: Vec::new() };
    for q in WorkQueue::all() {
        if filter.stage.as_deref().is_some_and(|s| s != q.stage()) {
            continue;
        }
        let dlq = topology.dead_letter_queue(q);
        let channel = broker.channel().await.context("cannot connect to RabbitMQ")?;
        loop {
            if held.items.len() >= limit {
                break;
            }
            let got = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("cannot read {dlq} (run `reelfleet topology declare`?)"))?;
            let Some(msg) = got else { break };
            let letter = describe(&dlq, &topology.queue(q), q.stage(), &msg.delivery);
            if filter.matches(&letter) {
                held.items.push((letter, msg.delivery));
            }
            // Non-matching messages stay unacked and return when the channel closes.
        }
        held.channels.push(channel);
    }
    Ok(held)
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Messages put back on their work queue.
    pub replayed: usize,
    /// Messages that matched (with `--dry-run`, nothing else happened).
    pub matched: usize,
    /// The ids of the dead letters replayed.
    pub ids: Vec<String>,
    /// Dead letters left where they are because their signature is not one
    /// of the fleet's (forged, or a key no longer accepted), with the reason:
    /// replay signs anew, so it must never launder a message.
    pub refused: Vec<(String, String)>,
}

fn stage_status(stage: &str) -> Option<JobStatus> {
    match stage {
        "preprocess" => Some(JobStatus::Preprocess),
        "inference" => Some(JobStatus::Inference),
        "postprocess" => Some(JobStatus::Postprocess),
        _ => None,
    }
}

/// Republishes matching dead letters to their work queue (attempts reset),
/// each confirmed before its dead letter is acked; records `job.replayed`.
pub async fn replay(
    settings: &Settings,
    filter: &DlqFilter,
    rate: Option<f64>,
    dry_run: bool,
) -> anyhow::Result<ReplayReport> {
    replay_by(settings, filter, rate, dry_run, None).await
}

/// [`replay`], its `job.replayed` events naming who asked (`by`).
pub async fn replay_by(
    settings: &Settings,
    filter: &DlqFilter,
    rate: Option<f64>,
    dry_run: bool,
    by: Option<&str>,
) -> anyhow::Result<ReplayReport> {
    let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
    let topology = Topology::from_settings(settings);
    let signer = Signer::from_settings(&settings.signing, &settings.namespace)?;
    let manifests = ManifestStore::new(Storage::new(&settings.s3), settings.s3.work_bucket.clone());
    let held = fetch(settings, &broker, filter).await?;
    let mut report = ReplayReport { matched: held.items.len(), ..Default::default() };
    if dry_run {
        report.ids = held.letters().map(|d| d.id.clone()).collect();
        held.release().await;
        return Ok(report);
    }
    let publisher = broker.publisher().await?;
    let pause = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let Held { channels, items } = held;
    for (letter, delivery) in &items {
        // Signed anew (a fresh expiry); unsigned ones (raw S3 events) stay unsigned.
        let signature = match letter.headers.get(SIGNATURE_HEADER) {
            None => None,
            Some(old) => match signer.authentic(&letter.queue, &letter.body, Some(&header_string(old))) {
                Ok(()) => Some(signer.sign(&letter.queue, &letter.body)),
                Err(e) => {
                    report.refused.push((letter.id.clone(), e.to_string()));
                    continue;
                }
            },
        };
        reopen_job(&manifests, letter).await?;
        let mut msg = Outgoing::to_queue(&letter.queue, letter.body.clone());
        for (k, v) in &letter.headers {
            if k.starts_with("x-reelfleet-error")
                || k.starts_with("x-death")
                || k.starts_with("x-first-death")
                || k.starts_with("x-last-death")
            {
                continue;
            }
            if matches!(
                k.as_str(),
                dlq_headers::STAGE
                    | dlq_headers::ATTEMPTS
                    | dlq_headers::FAILED_AT
                    | dlq_headers::FIRST_FAILED_AT
                    | dlq_headers::QUEUE
                    | ATTEMPT_HEADER
                    | SIGNATURE_HEADER
                    | "x-delivery-count"
            ) {
                continue;
            }
            msg = msg.header(k, to_header(v));
        }
        msg = msg.header(ATTEMPT_HEADER, HeaderValue::Int(0));
        if let Some(sig) = signature {
            msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sig));
        }
        // Dated before the message goes back, so the replayed run's own events come after it.
        let replayed = letter.job.as_ref().map(|job| letter.event(JOB_REPLAYED, job, by));
        publisher.publish(&msg).await.with_context(|| format!("cannot republish {} to {}", letter.id, letter.queue))?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .with_context(|| format!("republished {} but could not ack its dead letter", letter.id))?;
        if let Some(event) = replayed {
            let msg = sign_event(&signer, &topology, JOB_REPLAYED.into(), event.to_bytes());
            if let Err(e) = publisher.publish(&msg).await {
                tracing::warn!(job_id = %event.job_id, error = %e, "Could not publish job.replayed");
            }
        }
        report.replayed += 1;
        report.ids.push(letter.id.clone());
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    for ch in channels {
        let _ = ch.close(200, "done".into()).await;
    }
    Ok(report)
}

/// A failed job's manifest goes back to the stage that will run it again.
async fn reopen_job(manifests: &ManifestStore, letter: &DeadLetter) -> anyhow::Result<()> {
    let Some(job) = &letter.job else { return Ok(()) };
    match stage_status(&letter.stage) {
        Some(status) => {
            manifests
                .update(job, |m| {
                    if m.status != JobStatus::Failed {
                        return Update::Keep(());
                    }
                    m.status = status;
                    m.error = None;
                    m.claim = None;
                    Update::Write(())
                })
                .await?;
        }
        // Ingest wrote the manifest only to record the refusal: let it admit afresh.
        None => {
            if manifests.load(job).await?.is_some_and(|m| m.status == JobStatus::Failed) {
                manifests.delete(job).await?;
            }
        }
    }
    Ok(())
}

fn to_header(v: &HeaderText) -> HeaderValue {
    match v {
        HeaderText::Int(i) => HeaderValue::Int(*i),
        HeaderText::Text(s) => HeaderValue::Text(s.clone()),
    }
}

/// Acks (drops) matching dead letters; returns how many.
pub async fn purge(settings: &Settings, filter: &DlqFilter) -> anyhow::Result<usize> {
    Ok(purge_by(settings, filter, None).await?.len())
}

/// [`purge`], recording a `job.purged` event naming who asked (`by`) for
/// each dead letter of a job when `by` is given; returns the ids purged.
pub async fn purge_by(settings: &Settings, filter: &DlqFilter, by: Option<&str>) -> anyhow::Result<Vec<String>> {
    let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
    let held = fetch(settings, &broker, filter).await?;
    let audit = match by {
        Some(_) => Some((
            broker.publisher().await?,
            Signer::from_settings(&settings.signing, &settings.namespace)?,
            Topology::from_settings(settings),
        )),
        None => None,
    };
    let mut ids = Vec::new();
    for (letter, delivery) in &held.items {
        delivery.acker.ack(BasicAckOptions::default()).await?;
        ids.push(letter.id.clone());
        if let (Some((publisher, signer, topology)), Some(job)) = (&audit, &letter.job) {
            let event = letter.event(JOB_PURGED, job, by);
            let msg = sign_event(signer, topology, JOB_PURGED.into(), event.to_bytes());
            if let Err(e) = publisher.publish(&msg).await {
                tracing::warn!(job_id = %job, error = %e, "Could not publish job.purged");
            }
        }
    }
    held.release().await;
    Ok(ids)
}

/// Writes matching dead letters as JSON lines (they stay in their queues).
pub async fn export(settings: &Settings, filter: &DlqFilter, out: &mut dyn std::io::Write) -> anyhow::Result<usize> {
    let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
    let held = fetch(settings, &broker, filter).await?;
    let mut n = 0;
    for d in held.letters() {
        let line = ExportLine {
            id: d.id.clone(),
            dlq: d.dlq.clone(),
            headers: d.headers.clone(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&d.body),
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        n += 1;
    }
    held.release().await;
    Ok(n)
}

/// Publishes exported dead letters back into their dead-letter queues.
pub async fn import(settings: &Settings, input: &mut dyn BufRead) -> anyhow::Result<usize> {
    let broker = Broker::new(&settings.broker, "reelfleet-dlq")?;
    let topology = Topology::from_settings(settings);
    let known: Vec<String> = WorkQueue::all().into_iter().map(|q| topology.dead_letter_queue(q)).collect();
    let publisher: Publisher = broker.publisher().await?;
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: ExportLine =
            serde_json::from_str(&line).with_context(|| format!("line {}: not an export record", i + 1))?;
        if !known.contains(&rec.dlq) {
            bail!("line {}: {} is not a dead-letter queue of namespace {}", i + 1, rec.dlq, settings.namespace);
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(&rec.body_base64)
            .with_context(|| format!("line {}: body is not base64", i + 1))?;
        let mut msg = Outgoing::to_queue(&rec.dlq, body);
        msg.message_id = Some(rec.id.clone());
        for (k, v) in &rec.headers {
            msg = msg.header(k, to_header(v));
        }
        publisher.publish(&msg).await.with_context(|| format!("line {}: cannot publish", i + 1))?;
        n += 1;
    }
    Ok(n)
}
