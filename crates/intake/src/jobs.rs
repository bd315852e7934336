//! A submitted job: its fields checked one by one (every refusal names its
//! field), the job id of a URL source, the planned object a URL is pulled
//! into, and the envelope the intake publishes.
//!
//! Job ids:
//! - `s3://bucket/key`: [`SourceObject::job_id`] of the object as the store
//!   reports it (bucket, key, eTag), the same id its bucket event would
//!   give, so the two front doors never make two jobs of one object.
//! - an http(s) URL: the UUID v5 (under [`URL_JOB_NAMESPACE`]) of
//!   `<client id>\n<Idempotency-Key, or a fresh request id>\n<url>`: one
//!   key names one job per URL, and without a key every request is a job.
//!   In a batch, item `i`'s key is `<Idempotency-Key>#<i>`.

use crate::error::FieldError;
use reelfleet_core::envelope::{Envelope, JobKind, JobRequest, Quality, SourceObject};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most metadata entries of one job.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata name, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Longest source or callback URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest S3 key, in bytes (S3's own limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Longest file name kept from a URL's path.
const MAX_FILE_NAME: usize = 128;

/// The UUID namespace of URL-sourced job ids.
pub const URL_JOB_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x3d, 0x0c, 0x9e, 0x41, 0x52, 0x7b, 0x4f, 0x0a, 0xb1, 0x6e, 0x08, 0x93, 0x2a, 0x5f, 0xc4, 0x17,
]);

/// Where a job's video comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An object in an upload bucket.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key, as given.
        key: String,
    },
    /// An http(s) URL the pull worker fetches.
    Url(url::Url),
}

impl Source {
    /// `s3` or `url`, the metrics' label.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::S3 { .. } => "s3",
            Source::Url(_) => "url",
        }
    }
}

/// A job as submitted, every field checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Where the video is.
    pub source: Source,
    /// 1 to 5, as asked (capped later at `limits.max_uploader_priority`).
    pub priority: Option<u8>,
    /// The quality asked for.
    pub quality: Option<Quality>,
    /// Where the job's end is POSTed.
    pub callback_url: Option<String>,
    /// The submitter's metadata.
    pub metadata: BTreeMap<String, String>,
}

const FIELDS: [&str; 5] = ["source", "priority", "quality", "callback_url", "metadata"];

/// Checks one job object; every bad field is reported, not just the first.
pub fn parse_job(value: &Value) -> Result<JobSpec, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new("", "a job must be a JSON object")]);
    };
    let mut errors = Vec::new();
    for name in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(FieldError::new(name.clone(), "unknown field"));
    }
    let source = match obj.get("source") {
        Some(Value::String(s)) => parse_source(s).map_err(|m| errors.push(FieldError::new("source", m))).ok(),
        Some(_) => {
            errors.push(FieldError::new("source", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("source", "is required (s3://bucket/key or an http(s) URL)"));
            None
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(p @ 1..=5) => Some(p as u8),
            _ => {
                errors.push(FieldError::new("priority", "must be an integer from 1 to 5"));
                None
            }
        },
    };
    let quality = match obj.get("quality") {
        None | Some(Value::Null) => None,
        Some(Value::String(q)) => q.parse().map_err(|m: String| errors.push(FieldError::new("quality", m))).ok(),
        Some(_) => {
            errors.push(FieldError::new("quality", "must be \"720p\", \"1080p\" or \"4k\""));
            None
        }
    };
    let callback_url = match obj.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => {
            check_callback(u).map(|u| u.to_string()).map_err(|m| errors.push(FieldError::new("callback_url", m))).ok()
        }
        Some(_) => {
            errors.push(FieldError::new("callback_url", "must be a string"));
            None
        }
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => parse_metadata(v, &mut errors),
    };
    match source {
        Some(source) if errors.is_empty() => Ok(JobSpec { source, priority, quality, callback_url, metadata }),
        _ => Err(errors),
    }
}

/// `s3://bucket/key`, or an http(s) URL with a host and no credentials.
pub fn parse_source(s: &str) -> Result<Source, String> {
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').ok_or("s3:// source must be s3://bucket/key")?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
        if !bucket_ok {
            return Err(format!("{bucket:?} is not a bucket name"));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(format!("the key must be 1 to {MAX_KEY_BYTES} bytes without control characters"));
        }
        return Ok(Source::S3 { bucket: bucket.into(), key: key.into() });
    }
    check_url(s, &["http", "https"]).map(Source::Url)
}

fn check_url(s: &str, schemes: &[&str]) -> Result<url::Url, String> {
    if s.len() > MAX_URL_BYTES {
        return Err(format!("URL longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("scheme {:?} is not accepted (expected {})", url.scheme(), schemes.join(" or ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL must not carry credentials (user:password@)".into());
    }
    Ok(url)
}

fn check_callback(s: &str) -> Result<url::Url, String> {
    check_url(s, &["https"])
}

fn parse_metadata(v: &Value, errors: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    let Some(map) = v.as_object() else {
        errors.push(FieldError::new("metadata", "must be an object of strings"));
        return BTreeMap::new();
    };
    if map.len() > MAX_METADATA_ENTRIES {
        errors.push(FieldError::new("metadata", format!("at most {MAX_METADATA_ENTRIES} entries")));
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let field = format!("metadata.{k}");
        if k.is_empty() || k.len() > MAX_METADATA_KEY_BYTES || k.chars().any(char::is_control) {
            errors.push(FieldError::new(field, format!("names are 1 to {MAX_METADATA_KEY_BYTES} bytes")));
            continue;
        }
        match v.as_str() {
            Some(s) if s.len() <= MAX_METADATA_VALUE_BYTES => {
                out.insert(k.clone(), s.to_string());
            }
            Some(_) => {
                errors.push(FieldError::new(field, format!("values are at most {MAX_METADATA_VALUE_BYTES} bytes")))
            }
            None => errors.push(FieldError::new(field, "must be a string")),
        }
    }
    out
}

/// Checks an `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"));
    }
    Ok(())
}

/// The job id of a URL source (see the module's documentation).
pub fn url_job_id(client: &str, key_or_request_id: &str, url: &url::Url) -> String {
    let name = format!("{client}\n{key_or_request_id}\n{}", url.as_str());
    uuid::Uuid::new_v5(&URL_JOB_NAMESPACE, name.as_bytes()).simple().to_string()
}

/// The file name a pulled URL is stored under: the last segment of its path,
/// percent-decoded, with anything but letters, digits, `.`, `-` and `_`
/// replaced by `_`; `video` when nothing is left.
pub fn file_name(url: &url::Url) -> String {
    let last = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default();
    let decoded = percent_decode(last);
    let clean: String = decoded
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    let clean = clean.trim_start_matches('.');
    let clean: String = clean.chars().take(MAX_FILE_NAME).collect();
    if clean.is_empty() || clean.chars().all(|c| c == '_' || c == '.') {
        "video".into()
    } else {
        clean
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The key a URL source is pulled into: `pulled/<job_id>/<file name>`.
pub fn pulled_key(job_id: &str, url: &url::Url) -> String {
    format!("pulled/{job_id}/{}", file_name(url))
}

/// The first envelope of a job: `source` as planned, `job_id` as derived,
/// the priority capped at `max_priority`.
pub fn envelope(spec: &JobSpec, job_id: &str, source: SourceObject, request: JobRequest, max_priority: u8) -> Envelope {
    let mut env = Envelope::new(JobKind::Analyze, source);
    env.job_id = job_id.to_string();
    if let Some(p) = spec.priority {
        env.priority = p.min(max_priority);
    }
    env.quality = spec.quality;
    env.request = Some(request);
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        parse_job(&v).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_good_job_parses() {
        let spec = parse_job(&json!({
            "source": "s3://uploads/a b/c.mp4", "priority": 5, "quality": "1080p",
            "callback_url": "https://hooks.example.com/x", "metadata": {"order": "42"}
        }))
        .unwrap();
        assert_eq!(spec.source, Source::S3 { bucket: "uploads".into(), key: "a b/c.mp4".into() });
        assert_eq!(spec.priority, Some(5));
        assert_eq!(spec.quality, Some(Quality::P1080));
        assert_eq!(spec.metadata["order"], "42");
        let url = parse_job(&json!({"source": "https://cdn.example.com/v/clip%20one.mp4?sig=1"})).unwrap();
        assert!(matches!(url.source, Source::Url(_)));
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(fields(json!({})), ["source"]);
        assert_eq!(fields(json!({"source": "ftp://x/y"})), ["source"]);
        assert_eq!(fields(json!({"source": "https://user:pw@example.com/a.mp4"})), ["source"]);
        assert_eq!(fields(json!({"source": "https://"})), ["source"]);
        assert_eq!(fields(json!({"source": "file:///etc/passwd"})), ["source"]);
        assert_eq!(fields(json!({"source": "s3://UP/a"})), ["source"]);
        assert_eq!(fields(json!({"source": "s3://uploads/"})), ["source"]);
        assert_eq!(
            fields(
                json!({"source": "s3://uploads/a", "priority": 9, "quality": "8k", "callback_url": "http://x.example/h"})
            ),
            ["priority", "quality", "callback_url"]
        );
        assert_eq!(fields(json!({"source": "s3://uploads/a", "colour": "red"})), ["colour"]);
        assert_eq!(fields(json!({"source": "s3://uploads/a", "metadata": {"k": 1}})), ["metadata.k"]);
        let long = "x".repeat(MAX_METADATA_VALUE_BYTES + 1);
        assert_eq!(fields(json!({"source": "s3://uploads/a", "metadata": {"k": long}})), ["metadata.k"]);
        let many: serde_json::Map<String, Value> =
            (0..=MAX_METADATA_ENTRIES).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(fields(json!({"source": "s3://uploads/a", "metadata": many})), ["metadata"]);
        let long_url = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(fields(json!({"source": long_url})), ["source"]);
    }

    #[test]
    fn url_job_ids_follow_client_key_and_url() {
        let u = url::Url::parse("https://example.com/a.mp4").unwrap();
        let v = url::Url::parse("https://example.com/b.mp4").unwrap();
        assert_eq!(url_job_id("acme", "k1", &u), url_job_id("acme", "k1", &u));
        assert_ne!(url_job_id("acme", "k1", &u), url_job_id("acme", "k2", &u));
        assert_ne!(url_job_id("acme", "k1", &u), url_job_id("other", "k1", &u));
        assert_ne!(url_job_id("acme", "k1", &u), url_job_id("acme", "k1", &v));
        assert_eq!(url_job_id("acme", "k1", &u).len(), 32);
    }

    #[test]
    fn file_names_are_sanitized() {
        let name = |s: &str| file_name(&url::Url::parse(s).unwrap());
        assert_eq!(name("https://e.com/v/clip%20one.mp4?x=1"), "clip_one.mp4");
        assert_eq!(name("https://e.com/"), "video");
        assert_eq!(name("https://e.com/..%2F..%2Fetc%2Fpasswd"), "_.._etc_passwd");
        assert_eq!(name("https://e.com/.hidden"), "hidden");
        assert_eq!(name("https://e.com/%E2%9C%93"), "video");
        assert_eq!(name(&format!("https://e.com/{}", "a".repeat(300))).len(), 128);
        assert_eq!(pulled_key("j1", &url::Url::parse("https://e.com/x/y.mov").unwrap()), "pulled/j1/y.mov");
    }

    #[test]
    fn priority_is_capped() {
        let spec = parse_job(&json!({"source": "s3://uploads/a", "priority": 5})).unwrap();
        let src = SourceObject { bucket: "uploads".into(), key: "a".into(), size: 1, etag: None, version_id: None };
        let env = envelope(&spec, "j", src, JobRequest::default(), 4);
        assert_eq!((env.priority, env.job_id.as_str()), (4, "j"));
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(check_idempotency_key("order-42").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a b").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }
}
