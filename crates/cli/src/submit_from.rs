//! `reelfleet submit --from FILE.jsonl`: many sources at once, one per line,
//! accepted exactly as the intake API accepts a batch (the same checks, job
//! ids, acceptance records and signed envelopes; see
//! [`reelfleet_intake::accept`]), without going through HTTP.
//!
//! A line is one of:
//! - a job object, the body of `POST /v1/jobs`:
//!   `{"source": "https://...", "priority": 4, "quality": "1080p", "callback_url": "https://...", "metadata": {...}}`;
//! - a source alone: `s3://bucket/key`, an http(s) URL, a JSON string, or a
//!   key in the upload bucket (the line as it is, trimmed);
//! - blank, or a comment starting with `#`.
//!
//! Every line is checked, then every source resolved (an object must exist),
//! before anything is recorded or published: one bad line and nothing is
//! submitted. Job ids are deterministic: an object's is the one its bucket
//! event gives, a URL's is derived from the client `cli`, the key
//! (`--idempotency-key`, `submit` unless given) and the URL, so submitting a
//! file twice makes no new job (ingest and pull drop a job they already
//! know); a new key submits the URLs again.

use anyhow::{bail, Context};
use futures::{stream, StreamExt};
use reelfleet_core::{broker::Broker, settings::Settings, storage::Storage};
use reelfleet_intake::{
    accept::{Acceptor, Item, Planned},
    error::FieldError,
    jobs::{check_idempotency_key, parse_job, JobSpec},
};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// The client name submissions from a file are recorded under.
pub const CLIENT: &str = "cli";
/// The key URL job ids are derived from when none is given.
pub const DEFAULT_KEY: &str = "submit";
/// Lines resolved (HEAD requests) per step of the progress report.
const CHUNK: usize = 256;
/// Publishes awaiting the broker's confirm at once.
const IN_FLIGHT: usize = 32;
/// Refusals printed before the rest are counted.
const SHOWN_ERRORS: usize = 50;

/// One line's job, with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    /// The checked job.
    pub spec: JobSpec,
}

/// One submitted job.
#[derive(Clone, Debug, Serialize)]
pub struct Accepted {
    /// 1-based line number in the file.
    pub line: usize,
    /// The job.
    pub job_id: String,
    /// `s3` or `url`.
    pub source_kind: &'static str,
    /// The source as written (`s3://bucket/key` or the URL).
    pub source: String,
    /// The queue its envelope went to (or would go to, with `--dry-run`).
    pub queue: String,
}

/// Checks every line of `text`; bare keys name objects in `upload_bucket`.
/// Returns the jobs in order, or every refusal as `line N: field: message`.
pub fn parse_lines(text: &str, upload_bucket: &str) -> Result<Vec<Line>, Vec<String>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value = if line.starts_with('{') || line.starts_with('"') {
            match reelfleet_core::json::parse_bounded::<Value>(line.as_bytes()) {
                Ok(Value::String(s)) => serde_json::json!({ "source": s }),
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("line {number}: not JSON: {e}"));
                    continue;
                }
            }
        } else if line.starts_with("s3://") || line.starts_with("http://") || line.starts_with("https://") {
            serde_json::json!({ "source": line })
        } else if line.contains("://") {
            errors.push(format!("line {number}: source: only s3://, http:// and https:// sources are accepted"));
            continue;
        } else {
            serde_json::json!({ "source": format!("s3://{upload_bucket}/{line}") })
        };
        match parse_job(&value) {
            Ok(spec) => lines.push(Line { number, spec }),
            Err(errs) => errors.extend(errs.iter().map(|e| describe(number, e))),
        }
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

fn describe(line: usize, e: &FieldError) -> String {
    if e.field.is_empty() {
        format!("line {line}: {}", e.message)
    } else {
        format!("line {line}: {}: {}", e.field, e.message)
    }
}

fn refuse(errors: &[String], what: &str) -> anyhow::Error {
    let mut shown: Vec<String> = errors.iter().take(SHOWN_ERRORS).cloned().collect();
    if errors.len() > SHOWN_ERRORS {
        shown.push(format!("... and {} more", errors.len() - SHOWN_ERRORS));
    }
    anyhow::anyhow!("{} {what}; nothing was submitted:\n  {}", errors.len(), shown.join("\n  "))
}

/// What a submission from a file reports as it goes.
pub trait Progress {
    /// `done` of `total` sources resolved.
    fn resolved(&self, done: usize, total: usize);
    /// `done` of `total` jobs recorded and published.
    fn published(&self, done: usize, total: usize);
}

/// No progress report.
impl Progress for () {
    fn resolved(&self, _: usize, _: usize) {}
    fn published(&self, _: usize, _: usize) {}
}

/// Checks, resolves and (unless `dry_run`) records and publishes every job
/// of `text`. URL job ids derive from `key` (default [`DEFAULT_KEY`]).
pub async fn submit(
    settings: &Settings,
    text: &str,
    key: Option<&str>,
    dry_run: bool,
    progress: &impl Progress,
) -> anyhow::Result<Vec<Accepted>> {
    let key = key.unwrap_or(DEFAULT_KEY);
    check_idempotency_key(key).map_err(|m| anyhow::anyhow!("--idempotency-key: {m}"))?;
    let lines = parse_lines(text, &settings.s3.upload_bucket).map_err(|e| refuse(&e, "lines are not jobs"))?;
    if lines.is_empty() {
        bail!("no job in the file (blank lines and # comments only)");
    }
    let storage = Storage::new(&settings.s3);
    let broker = Broker::new(&settings.broker, "reelfleet-submit")?;
    let acceptor = Acceptor::new(Arc::new(settings.clone()), storage, broker.clone())?;
    let mut planned: Vec<Planned> = Vec::with_capacity(lines.len());
    let mut refusals = Vec::new();
    let mut resolved = 0;
    for chunk in lines.chunks(CHUNK) {
        let items =
            chunk.iter().map(|l| Item { spec: &l.spec, key: Some(key.to_string()), index: Some(l.number) }).collect();
        match acceptor.plan_all(CLIENT, "submit", Some(key), items).await.context("resolving the sources")? {
            Ok(p) => planned.extend(p),
            Err(errors) => refusals.extend(errors.iter().map(|e| describe(e.index.unwrap_or(0), e))),
        }
        resolved += chunk.len();
        progress.resolved(resolved, lines.len());
    }
    if !refusals.is_empty() {
        bail!(refuse(&refusals, "sources cannot be accepted"));
    }
    let accepted: Vec<Accepted> = lines
        .iter()
        .zip(&planned)
        .map(|(l, p)| Accepted {
            line: l.number,
            job_id: p.envelope.job_id.clone(),
            source_kind: p.kind,
            source: p
                .envelope
                .request
                .as_ref()
                .and_then(|r| r.origin_url.clone())
                .unwrap_or_else(|| format!("s3://{}/{}", p.envelope.source.bucket, p.envelope.source.key)),
            queue: acceptor.queue_name(p.queue),
        })
        .collect();
    if dry_run {
        return Ok(accepted);
    }
    for p in &planned {
        acceptor.record(CLIENT, &p.envelope, p.queue).await.context("writing an acceptance record")?;
    }
    let total = planned.len();
    let mut done = 0usize;
    let mut publishing =
        stream::iter(planned.iter().map(|p| acceptor.publish(&p.envelope, p.queue))).buffered(IN_FLIGHT);
    while let Some(r) = publishing.next().await {
        if let Err(e) = r {
            bail!(
                "{e}: {done} of {total} jobs were published; submitting the file again is safe (the same job ids, \
                 duplicates are dropped)"
            );
        }
        done += 1;
        progress.published(done, total);
    }
    Ok(accepted)
}

/// Reads `path` (at most `max_bytes`).
pub fn read(path: &std::path::Path, max_bytes: u64) -> anyhow::Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > max_bytes {
        bail!("{} is {len} bytes, above the {max_bytes}-byte limit of --from", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelfleet_intake::jobs::Source;

    #[test]
    fn every_line_form_parses() {
        let text = "# sources\n\
                    s3://uploads/a b/c+d.mp4\n\
                    \n\
                    https://cdn.example.com/v/one.mp4\n\
                    folder/été.mov\n\
                    \"s3://uploads/quoted key.mp4\"\n\
                    {\"source\": \"https://cdn.example.com/two.mp4\", \"priority\": 5, \"metadata\": {\"order\": \"7\"}}\n";
        let lines = parse_lines(text, "uploads").unwrap();
        let numbers: Vec<usize> = lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [2, 4, 5, 6, 7]);
        assert_eq!(lines[0].spec.source, Source::S3 { bucket: "uploads".into(), key: "a b/c+d.mp4".into() });
        assert!(matches!(&lines[1].spec.source, Source::Url(u) if u.as_str() == "https://cdn.example.com/v/one.mp4"));
        assert_eq!(lines[2].spec.source, Source::S3 { bucket: "uploads".into(), key: "folder/été.mov".into() });
        assert_eq!(lines[3].spec.source, Source::S3 { bucket: "uploads".into(), key: "quoted key.mp4".into() });
        assert_eq!(lines[4].spec.priority, Some(5));
        assert_eq!(lines[4].spec.metadata["order"], "7");
    }

    #[test]
    fn every_bad_line_is_named_by_number() {
        let text = "s3://uploads/ok.mp4\n\
                    ftp://host/x.mp4\n\
                    {\"source\": \"s3://uploads/x.mp4\", \"priority\": 9}\n\
                    {not json\n\
                    {\"source\": \"https://user:pw@host/x.mp4\", \"colour\": \"red\"}\n";
        let errors = parse_lines(text, "uploads").unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("line 2: source:"), "{errors:?}");
        assert!(errors[1].starts_with("line 3: priority:"), "{errors:?}");
        assert!(errors[2].starts_with("line 4: not JSON"), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("line 5: colour: unknown field")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("line 5: source:")), "{errors:?}");
    }

    #[test]
    fn a_refusal_lists_the_first_fifty() {
        let errors: Vec<String> = (1..=60).map(|i| format!("line {i}: bad")).collect();
        let text = refuse(&errors, "lines are not jobs").to_string();
        assert!(text.starts_with("60 lines are not jobs; nothing was submitted"));
        assert!(text.contains("line 50: bad") && !text.contains("line 51: bad"));
        assert!(text.ends_with("... and 10 more"));
    }
}
