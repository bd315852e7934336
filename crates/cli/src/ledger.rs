//! `reelfleet ledger reconcile`: holds the write-ahead ledger (every share of
//! a billed provider request that a job recorded) against the provider's
//! usage log (every request it billed), per model and per request, so money
//! billed but never recorded, recorded but never billed, or recorded
//! differently shows up with its request and job ids.
//!
//! [`reconcile`] is the decision, pure and tested on hand-made data;
//! [`load_entries`] and [`fetch_usage`] read the two sides; [`run`] does all
//! three and [`render`] prints the report for people.
//!
//! The usage log carries no timestamps, so `--since` windows by the ledger:
//! a billed request is left out only when it can be placed before the
//! window, either by the ledger entries it matches or, when it matches none,
//! because every job it names was last recorded before the window. A bill
//! that cannot be placed is shown rather than hidden.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use reelfleet_core::{
    settings::{ModelSettings, Settings},
    storage::Storage,
};
pub use reelfleet_devstack::UsageRecord;
use reelfleet_inference::ledger::LedgerEntry;
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    time::Duration,
};

/// Ledger objects read at once.
pub const READ_CONCURRENCY: usize = 16;

/// Ledger objects from which progress is shown on stderr.
const PROGRESS_FROM: usize = 500;

/// Largest ledger entry read, in bytes (as the inference stage reads them).
const MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// USD differences below this are float rounding of the per-job split, not money.
pub const USD_TOLERANCE: f64 = 1e-6;

/// Requests, tokens and USD of one side of the comparison (or their difference) for one model.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Tally {
    /// Distinct provider requests.
    pub requests: i64,
    /// Input (prompt) tokens.
    pub input_tokens: i64,
    /// Output (completion) tokens.
    pub output_tokens: i64,
    /// USD; `None` on the billed side when the model has no token price
    /// configured (the usage log carries tokens, not money).
    pub usd: Option<f64>,
}

/// One model's line of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelLine {
    /// The model, as the provider's usage log and the ledger name it.
    pub model: String,
    /// What the provider billed, priced with the configured prices.
    pub billed: Tally,
    /// What the ledger recorded.
    pub recorded: Tally,
    /// Billed minus recorded: positive is money billed that no ledger holds.
    pub difference: Tally,
}

/// A billed request no ledger entry records: money lost between the bill and
/// the write, bounded by the requests in flight at a crash.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UnrecordedRequest {
    /// The provider's request id.
    pub request_id: String,
    /// The client's `X-Request-Id`, when the provider logged it.
    pub client_request_id: Option<String>,
    /// Model billed.
    pub model: String,
    /// `chat` or `video`.
    pub kind: String,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// USD at the configured price, if the model has one.
    pub usd: Option<f64>,
    /// The jobs the provider's log names for the request.
    pub job_ids: Vec<String>,
}

/// A request the ledger records that the provider never billed (should never happen).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UnbilledRequest {
    /// The request id the ledger holds.
    pub request_id: String,
    /// Model recorded.
    pub model: String,
    /// `chat` or `video`.
    pub kind: String,
    /// Input tokens recorded, over all its jobs.
    pub input_tokens: u64,
    /// Output tokens recorded, over all its jobs.
    pub output_tokens: u64,
    /// USD recorded, over all its jobs.
    pub usd: f64,
    /// The jobs whose ledgers hold it.
    pub job_ids: Vec<String>,
    /// When it was recorded (the latest of its entries).
    pub recorded_at: DateTime<Utc>,
}

/// A request billed and recorded, with different figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MismatchedRequest {
    /// The provider's request id.
    pub request_id: String,
    /// Model billed.
    pub billed_model: String,
    /// Models the ledger entries name (one, unless they disagree).
    pub recorded_models: Vec<String>,
    /// Input tokens billed.
    pub billed_input_tokens: u64,
    /// Input tokens recorded, summed over the request's entries.
    pub recorded_input_tokens: u64,
    /// Output tokens billed.
    pub billed_output_tokens: u64,
    /// Output tokens recorded, summed over the request's entries.
    pub recorded_output_tokens: u64,
    /// The jobs the provider's log names for the request.
    pub job_ids: Vec<String>,
    /// Of those, the jobs with no entry for it (their share was never written).
    pub jobs_without_entry: Vec<String>,
}

/// The outcome of a reconciliation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The window's start, if any.
    pub since: Option<DateTime<Utc>>,
    /// Whether the ledger and the bill agree on every request and every model.
    pub balanced: bool,
    /// Provider requests compared (after the window).
    pub billed_requests: usize,
    /// Ledger entries compared (after the window).
    pub ledger_entries: usize,
    /// Per model, by name.
    pub models: Vec<ModelLine>,
    /// Billed, in no ledger.
    pub unrecorded: Vec<UnrecordedRequest>,
    /// In a ledger, never billed.
    pub unbilled: Vec<UnbilledRequest>,
    /// Billed and recorded with different models or tokens.
    pub mismatched: Vec<MismatchedRequest>,
}

impl ModelLine {
    fn empty(model: &str, prices: &[ModelSettings]) -> Self {
        Self {
            model: model.to_string(),
            billed: Tally { usd: price(prices, model, 0, 0), ..Tally::default() },
            recorded: Tally { usd: Some(0.0), ..Tally::default() },
            difference: Tally::default(),
        }
    }
}

/// One provider request as billed (records with the same id summed).
#[derive(Debug)]
struct Billed<'a> {
    record: &'a UsageRecord,
    input_tokens: u64,
    output_tokens: u64,
    job_ids: Vec<String>,
}

/// One provider request as recorded: its entries over all jobs.
#[derive(Debug, Default)]
struct Recorded<'a> {
    entries: Vec<&'a LedgerEntry>,
}

impl Recorded<'_> {
    fn tokens(&self) -> (u64, u64) {
        self.entries.iter().fold((0, 0), |(i, o), e| (i + e.charge.input_tokens, o + e.charge.output_tokens))
    }

    fn usd(&self) -> f64 {
        self.entries.iter().map(|e| e.charge.usd).sum()
    }

    fn latest(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().map(|e| e.recorded_at).max()
    }

    fn models(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.charge.model.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    fn job_ids(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.job_id.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// USD of `input` and `output` tokens of `model` at the configured price, as
/// the inference stage prices them.
fn price(prices: &[ModelSettings], model: &str, input: u64, output: u64) -> Option<f64> {
    let p = prices.iter().find(|p| p.model == model)?;
    Some((input as f64 * p.input_per_mtok + output as f64 * p.output_per_mtok) / 1_000_000.0)
}

/// Compares the provider's bill (`usage`) with the ledger (`entries`, every
/// entry of the bucket: the window is applied here, see the module docs).
/// Billed USD is the billed tokens at `prices` (the usage log carries no
/// money); a request split over several jobs is summed over its entries
/// before it is compared.
pub fn reconcile(
    usage: &[UsageRecord],
    entries: &[LedgerEntry],
    prices: &[ModelSettings],
    since: Option<DateTime<Utc>>,
) -> Report {
    let mut billed: BTreeMap<&str, Billed<'_>> = BTreeMap::new();
    for r in usage {
        let b = billed.entry(r.id.as_str()).or_insert_with(|| Billed {
            record: r,
            input_tokens: 0,
            output_tokens: 0,
            job_ids: Vec::new(),
        });
        b.input_tokens += r.prompt_tokens;
        b.output_tokens += r.completion_tokens;
        for j in &r.job_ids {
            if !b.job_ids.contains(j) {
                b.job_ids.push(j.clone());
            }
        }
    }
    // An entry without the provider's id is matched through our X-Request-Id, when the log names it once.
    let mut by_client_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in usage {
        if let Some(c) = r.request_id.as_deref() {
            by_client_id.entry(c).or_default().push(r.id.as_str());
        }
    }
    let mut recorded: BTreeMap<String, Recorded<'_>> = BTreeMap::new();
    let mut last_seen: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for e in entries {
        let id = match e.charge.request_id.as_deref() {
            Some(id) => id,
            None => match by_client_id.get(e.client_request_id.as_str()).map(Vec::as_slice) {
                Some([only]) => only,
                _ => e.client_request_id.as_str(),
            },
        };
        recorded.entry(id.to_string()).or_default().entries.push(e);
        let seen = last_seen.entry(e.job_id.as_str()).or_insert(e.recorded_at);
        *seen = (*seen).max(e.recorded_at);
    }

    let in_window = |r: &Recorded<'_>| match (since, r.latest()) {
        (Some(s), Some(t)) => t >= s,
        _ => true,
    };
    let billed_in_window = |id: &str, b: &Billed<'_>| match (since, recorded.get(id)) {
        (None, _) => true,
        (Some(_), Some(r)) => in_window(r),
        (Some(s), None) => {
            let placed_before =
                !b.job_ids.is_empty() && b.job_ids.iter().all(|j| last_seen.get(j.as_str()).is_some_and(|t| *t < s));
            !placed_before
        }
    };

    let mut tallies: BTreeMap<String, ModelLine> = BTreeMap::new();
    let mut report = Report {
        since,
        balanced: true,
        billed_requests: 0,
        ledger_entries: 0,
        models: Vec::new(),
        unrecorded: Vec::new(),
        unbilled: Vec::new(),
        mismatched: Vec::new(),
    };

    for (id, b) in &billed {
        if !billed_in_window(id, b) {
            continue;
        }
        report.billed_requests += 1;
        let model = &b.record.model;
        let l = tallies.entry(model.clone()).or_insert_with(|| ModelLine::empty(model, prices));
        l.billed.requests += 1;
        l.billed.input_tokens += b.input_tokens as i64;
        l.billed.output_tokens += b.output_tokens as i64;
        let usd = price(prices, model, b.input_tokens, b.output_tokens);
        l.billed.usd = l.billed.usd.zip(usd).map(|(a, u)| a + u);
        match recorded.get(*id) {
            None => report.unrecorded.push(UnrecordedRequest {
                request_id: id.to_string(),
                client_request_id: b.record.request_id.clone(),
                model: model.clone(),
                kind: b.record.kind.clone(),
                input_tokens: b.input_tokens,
                output_tokens: b.output_tokens,
                usd,
                job_ids: b.job_ids.clone(),
            }),
            Some(r) => {
                let (input, output) = r.tokens();
                let recorded_models = r.models();
                if (input, output) != (b.input_tokens, b.output_tokens) || recorded_models != [model.clone()] {
                    let with_entry = r.job_ids();
                    report.mismatched.push(MismatchedRequest {
                        request_id: id.to_string(),
                        billed_model: model.clone(),
                        recorded_models,
                        billed_input_tokens: b.input_tokens,
                        recorded_input_tokens: input,
                        billed_output_tokens: b.output_tokens,
                        recorded_output_tokens: output,
                        job_ids: b.job_ids.clone(),
                        jobs_without_entry: b.job_ids.iter().filter(|j| !with_entry.contains(j)).cloned().collect(),
                    });
                }
            }
        }
    }

    for (id, r) in &recorded {
        if !in_window(r) {
            continue;
        }
        report.ledger_entries += r.entries.len();
        let mut requests_by_model: BTreeSet<&str> = BTreeSet::new();
        for e in &r.entries {
            let model = &e.charge.model;
            let l = tallies.entry(model.clone()).or_insert_with(|| ModelLine::empty(model, prices));
            if requests_by_model.insert(model.as_str()) {
                l.recorded.requests += 1;
            }
            l.recorded.input_tokens += e.charge.input_tokens as i64;
            l.recorded.output_tokens += e.charge.output_tokens as i64;
            l.recorded.usd = l.recorded.usd.map(|u| u + e.charge.usd);
        }
        if !billed.contains_key(id.as_str()) {
            let (input_tokens, output_tokens) = r.tokens();
            let first = r.entries[0];
            report.unbilled.push(UnbilledRequest {
                request_id: id.clone(),
                model: r.models().join(", "),
                kind: first.kind.clone(),
                input_tokens,
                output_tokens,
                usd: r.usd(),
                job_ids: r.job_ids(),
                recorded_at: r.latest().unwrap_or(first.recorded_at),
            });
        }
    }

    for (_, mut l) in tallies {
        l.difference = Tally {
            requests: l.billed.requests - l.recorded.requests,
            input_tokens: l.billed.input_tokens - l.recorded.input_tokens,
            output_tokens: l.billed.output_tokens - l.recorded.output_tokens,
            usd: l.billed.usd.zip(l.recorded.usd).map(|(b, r)| b - r),
        };
        report.models.push(l);
    }
    report.balanced = report.unrecorded.is_empty()
        && report.unbilled.is_empty()
        && report.mismatched.is_empty()
        && report.models.iter().all(|l| {
            let d = &l.difference;
            d.requests == 0
                && d.input_tokens == 0
                && d.output_tokens == 0
                && d.usd.is_none_or(|u| u.abs() <= USD_TOLERANCE)
        });
    report
}

/// Every ledger entry in `bucket`: lists `jobs/`, keeps the ledger keys and
/// reads them [`READ_CONCURRENCY`] at a time, with a progress bar on stderr
/// when `progress` and there are many.
pub async fn load_entries(storage: &Storage, bucket: &str, progress: bool) -> anyhow::Result<Vec<LedgerEntry>> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let keys: Vec<String> = storage
        .list(bucket, "jobs/")
        .await
        .with_context(|| format!("cannot list s3://{bucket}/jobs/"))?
        .into_iter()
        .filter(|k| k.contains("/inference/ledger/"))
        .collect();
    let bar = if progress && keys.len() >= PROGRESS_FROM {
        ProgressBar::with_draw_target(Some(keys.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("reading ledger entries {pos}/{len} {wide_bar} {eta}").expect("valid template"),
    );
    let entries = stream::iter(keys)
        .map(|key| {
            let bar = bar.clone();
            async move {
                let bytes = storage
                    .get_bytes(bucket, &key, MAX_ENTRY_BYTES)
                    .await
                    .with_context(|| format!("cannot read s3://{bucket}/{key}"))?;
                let entry = serde_json::from_slice::<LedgerEntry>(&bytes)
                    .with_context(|| format!("s3://{bucket}/{key} is not a ledger entry"))?;
                bar.inc(1);
                anyhow::Ok(entry)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await;
    bar.finish_and_clear();
    entries
}

/// The provider's usage log at `url` (a JSON list of [`UsageRecord`]), asked
/// with `api_key` as Bearer.
pub async fn fetch_usage(url: &str, api_key: &str) -> anyhow::Result<Vec<UsageRecord>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let resp = http
        .get(url)
        .bearer_auth(api_key)
        .send()
        .await
        .with_context(|| format!("cannot reach the usage log at {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
        bail!("the usage log at {url} answered {status}: {body}");
    }
    resp.json().await.with_context(|| format!("the usage log at {url} is not a list of usage records"))
}

/// Options of `reelfleet ledger reconcile`.
#[derive(Clone, Debug, Default)]
pub struct ReconcileOptions {
    /// Only ledger entries recorded at or after this (see the module docs).
    pub since: Option<DateTime<Utc>>,
    /// Usage log URL; the settings' `inference.usage_url` when `None`.
    pub usage_url: Option<String>,
    /// Show progress on stderr.
    pub progress: bool,
}

/// Reads the ledger of the settings' work bucket and the provider's usage
/// log, and reconciles them.
pub async fn run(settings: &Settings, storage: &Storage, opts: &ReconcileOptions) -> anyhow::Result<Report> {
    let url = opts
        .usage_url
        .as_deref()
        .or(settings.inference.usage_url.as_deref())
        .context("no usage log to reconcile against: pass --usage-url or set inference.usage_url")?;
    let (usage, entries) = tokio::try_join!(
        fetch_usage(url, settings.inference.api_key.expose()),
        load_entries(storage, &settings.s3.work_bucket, opts.progress),
    )?;
    Ok(reconcile(&usage, &entries, &settings.inference.models, opts.since))
}

/// The report as text: a table per model, then every request that differs.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let usd = |u: Option<f64>| u.map(|u| format!("{u:.6}")).unwrap_or_else(|| "unpriced".into());
    if let Some(s) = report.since {
        let _ = writeln!(out, "since {}", s.to_rfc3339());
    }
    for l in &report.models {
        let _ = writeln!(out, "model {}", l.model);
        let _ = writeln!(
            out,
            "  {:<12} {:>9} {:>14} {:>14} {:>14}",
            "", "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "USD"
        );
        for (name, t) in [("billed", &l.billed), ("recorded", &l.recorded), ("difference", &l.difference)] {
            let _ = writeln!(
                out,
                "  {:<12} {:>9} {:>14} {:>14} {:>14}",
                name,
                t.requests,
                t.input_tokens,
                t.output_tokens,
                usd(t.usd)
            );
        }
    }
    if !report.unrecorded.is_empty() {
        let _ = writeln!(
            out,
            "\nbilled but in no ledger ({}; lost between the bill and the write, at most the requests in flight at a crash):",
            report.unrecorded.len()
        );
        for r in &report.unrecorded {
            let _ = writeln!(
                out,
                "  {}  {}  in {} out {}  ${}  jobs {}",
                r.request_id,
                r.model,
                r.input_tokens,
                r.output_tokens,
                usd(r.usd),
                list(&r.job_ids)
            );
        }
    }
    if !report.unbilled.is_empty() {
        let _ = writeln!(
            out,
            "\nin a ledger but not billed by the provider ({}; should never happen):",
            report.unbilled.len()
        );
        for r in &report.unbilled {
            let _ = writeln!(
                out,
                "  {}  {}  in {} out {}  ${:.6}  jobs {}",
                r.request_id,
                r.model,
                r.input_tokens,
                r.output_tokens,
                r.usd,
                list(&r.job_ids)
            );
        }
    }
    if !report.mismatched.is_empty() {
        let _ = writeln!(out, "\nbilled and recorded differently ({}):", report.mismatched.len());
        for r in &report.mismatched {
            let _ = writeln!(
                out,
                "  {}  billed {} in {} out {}, recorded {} in {} out {}  jobs {}{}",
                r.request_id,
                r.billed_model,
                r.billed_input_tokens,
                r.billed_output_tokens,
                r.recorded_models.join(", "),
                r.recorded_input_tokens,
                r.recorded_output_tokens,
                list(&r.job_ids),
                if r.jobs_without_entry.is_empty() {
                    String::new()
                } else {
                    format!(" (no entry: {})", list(&r.jobs_without_entry))
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}: {} billed requests, {} ledger entries",
        if report.balanced {
            "the ledger matches the provider's bill"
        } else {
            "the ledger differs from the provider's bill"
        },
        report.billed_requests,
        report.ledger_entries
    );
    out
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        ids.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelfleet_core::{manifest::Charge, settings::InferenceSettings};

    fn prices() -> Vec<ModelSettings> {
        InferenceSettings::default().models
    }

    fn billed(id: &str, model: &str, input: u64, output: u64, jobs: &[&str]) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            model: model.into(),
            kind: "chat".into(),
            prompt_tokens: input,
            completion_tokens: output,
            images: 0,
            jobs: jobs.len() as u64,
            request_id: Some(format!("client-{id}")),
            job_ids: jobs.iter().map(|j| j.to_string()).collect(),
            at_ms: 0,
        }
    }

    fn entry(job: &str, id: &str, model: &str, input: u64, output: u64, minutes_ago: i64) -> LedgerEntry {
        let usd = price(&prices(), model, input, output).unwrap_or(0.0);
        LedgerEntry {
            job_id: job.into(),
            kind: "chat".into(),
            client_request_id: format!("client-{id}"),
            charge: Charge {
                model: model.into(),
                request_id: Some(id.into()),
                jobs_in_request: 1,
                input_tokens: input,
                output_tokens: output,
                usd,
                answered: true,
            },
            answer: None,
            recorded_at: Utc::now() - chrono::Duration::minutes(minutes_ago),
        }
    }

    /// A request over three jobs, split as the inference stage splits it, and one of its own.
    fn fleet() -> (Vec<UsageRecord>, Vec<LedgerEntry>) {
        let usage = vec![
            billed("chatcmpl-3", "deepseek-v3.2", 1000, 91, &["a", "b", "c"]),
            billed("chatcmpl-1", "gpt-4.1", 700, 40, &["d"]),
        ];
        let entries = vec![
            entry("a", "chatcmpl-3", "deepseek-v3.2", 334, 30, 5),
            entry("b", "chatcmpl-3", "deepseek-v3.2", 333, 31, 5),
            entry("c", "chatcmpl-3", "deepseek-v3.2", 333, 30, 5),
            entry("d", "chatcmpl-1", "gpt-4.1", 700, 40, 5),
        ];
        (usage, entries)
    }

    fn line<'a>(r: &'a Report, model: &str) -> &'a ModelLine {
        r.models.iter().find(|l| l.model == model).expect("model line")
    }

    #[test]
    fn a_request_split_over_three_jobs_balances_against_one_bill() {
        let (usage, entries) = fleet();
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(r.balanced, "{}", render(&r));
        assert_eq!((r.billed_requests, r.ledger_entries), (2, 4));
        let l = line(&r, "deepseek-v3.2");
        assert_eq!((l.billed.requests, l.recorded.requests), (1, 1));
        assert_eq!((l.recorded.input_tokens, l.recorded.output_tokens), (1000, 91));
        assert_eq!((l.difference.requests, l.difference.input_tokens, l.difference.output_tokens), (0, 0, 0));
        assert!(l.difference.usd.unwrap().abs() < USD_TOLERANCE);
        let expected = (1000.0 * 0.28 + 91.0 * 0.42) / 1e6;
        assert!((l.billed.usd.unwrap() - expected).abs() < 1e-12);
        assert!(render(&r).contains("the ledger matches"));
    }

    #[test]
    fn a_billed_request_in_no_ledger_is_named_with_its_jobs() {
        let (mut usage, entries) = fleet();
        usage.push(billed("chatcmpl-lost", "deepseek-v3.2", 500, 20, &["e", "f"]));
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(!r.balanced);
        assert_eq!(r.unrecorded.len(), 1);
        let lost = &r.unrecorded[0];
        assert_eq!(lost.request_id, "chatcmpl-lost");
        assert_eq!(lost.job_ids, ["e", "f"]);
        assert_eq!(lost.client_request_id.as_deref(), Some("client-chatcmpl-lost"));
        let d = &line(&r, "deepseek-v3.2").difference;
        assert_eq!((d.requests, d.input_tokens, d.output_tokens), (1, 500, 20));
        assert!((d.usd.unwrap() - lost.usd.unwrap()).abs() < 1e-12);
        assert!(r.unbilled.is_empty() && r.mismatched.is_empty());
        assert!(render(&r).contains("chatcmpl-lost"));
    }

    #[test]
    fn a_share_missing_from_a_split_request_is_a_token_mismatch() {
        let (usage, mut entries) = fleet();
        entries.retain(|e| e.job_id != "b");
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(!r.balanced);
        assert!(r.unrecorded.is_empty(), "the request is known through a and c");
        assert_eq!(r.mismatched.len(), 1);
        let m = &r.mismatched[0];
        assert_eq!(m.request_id, "chatcmpl-3");
        assert_eq!((m.billed_input_tokens, m.recorded_input_tokens), (1000, 667));
        assert_eq!((m.billed_output_tokens, m.recorded_output_tokens), (91, 60));
        assert_eq!(m.jobs_without_entry, ["b"]);
        let d = &line(&r, "deepseek-v3.2").difference;
        assert_eq!((d.requests, d.input_tokens, d.output_tokens), (0, 333, 31));
    }

    #[test]
    fn tokens_recorded_differently_are_a_mismatch_even_when_the_jobs_are_all_there() {
        let (usage, mut entries) = fleet();
        entries[3].charge.output_tokens = 41;
        entries[3].charge.model = "gemini-2.5-flash".into();
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(!r.balanced);
        let m = &r.mismatched[0];
        assert_eq!((m.request_id.as_str(), m.billed_output_tokens, m.recorded_output_tokens), ("chatcmpl-1", 40, 41));
        assert_eq!(m.recorded_models, ["gemini-2.5-flash"]);
        assert!(m.jobs_without_entry.is_empty());
        assert_eq!(line(&r, "gpt-4.1").difference.requests, 1);
        assert_eq!(line(&r, "gemini-2.5-flash").difference.output_tokens, -41);
    }

    #[test]
    fn a_recorded_request_the_provider_never_billed_is_reported() {
        let (usage, mut entries) = fleet();
        entries.push(entry("g", "chatcmpl-ghost", "gpt-4.1", 10, 2, 1));
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(!r.balanced);
        assert_eq!(r.unbilled.len(), 1);
        assert_eq!(
            (r.unbilled[0].request_id.as_str(), r.unbilled[0].job_ids.as_slice()),
            ("chatcmpl-ghost", &["g".to_string()][..])
        );
        assert_eq!(line(&r, "gpt-4.1").difference.input_tokens, -10);
    }

    #[test]
    fn an_entry_without_the_providers_id_is_matched_by_the_client_request_id() {
        let (usage, mut entries) = fleet();
        entries[3].charge.request_id = None;
        let r = reconcile(&usage, &entries, &prices(), None);
        assert!(r.balanced, "{}", render(&r));
    }

    #[test]
    fn an_unpriced_model_is_compared_on_tokens() {
        let mut usage = vec![billed("vid-1", "holysheep-video-1", 0, 240, &["v"])];
        usage[0].kind = "video".into();
        let mut e = entry("v", "vid-1", "holysheep-video-1", 0, 240, 1);
        e.charge.usd = 0.05;
        let r = reconcile(&usage, &[e], &prices(), None);
        assert!(r.balanced, "{}", render(&r));
        let l = line(&r, "holysheep-video-1");
        assert_eq!((l.billed.usd, l.recorded.usd, l.difference.usd), (None, Some(0.05), None));
        assert!(render(&r).contains("unpriced"));
    }

    #[test]
    fn since_leaves_out_what_the_ledger_places_before_it_and_keeps_what_it_cannot_place() {
        let (mut usage, mut entries) = fleet();
        for e in entries.iter_mut().filter(|e| e.job_id == "d") {
            e.recorded_at = Utc::now() - chrono::Duration::hours(3);
        }
        // Lost before the window: its job was last seen then.
        usage.push(billed("chatcmpl-old-loss", "gpt-4.1", 9, 9, &["d"]));
        // Lost, and its jobs are in no ledger: cannot be placed, so shown.
        usage.push(billed("chatcmpl-unplaced", "gpt-4.1", 7, 7, &["z"]));
        // Lost in the window: its job's retry was recorded in it.
        usage.push(billed("chatcmpl-new-loss", "deepseek-v3.2", 5, 5, &["a"]));
        let since = Utc::now() - chrono::Duration::hours(1);
        let r = reconcile(&usage, &entries, &prices(), Some(since));
        let lost: Vec<_> = r.unrecorded.iter().map(|u| u.request_id.as_str()).collect();
        assert_eq!(lost, ["chatcmpl-new-loss", "chatcmpl-unplaced"]);
        assert_eq!((r.billed_requests, r.ledger_entries), (3, 3));
        let gpt = line(&r, "gpt-4.1");
        assert_eq!((gpt.billed.requests, gpt.recorded.requests, gpt.billed.input_tokens), (1, 0, 7));
        let all = reconcile(&usage, &entries, &prices(), None);
        assert_eq!(all.unrecorded.len(), 3);
    }

    #[test]
    fn the_json_report_names_every_part() {
        let (usage, entries) = fleet();
        let v = serde_json::to_value(reconcile(&usage, &entries, &prices(), None)).unwrap();
        for k in
            ["since", "balanced", "billed_requests", "ledger_entries", "models", "unrecorded", "unbilled", "mismatched"]
        {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(v["models"][0]["difference"]["input_tokens"], 0);
    }
}
