//! S3 event notifications: parsing the AWS and MinIO bodies into the created
//! objects they announce, and writing MinIO's body (for the embedded store).
//!
//! Both formats URL-encode keys with `+` for a space; MinIO also escapes `/`
//! as `%2F` and wraps the records with `EventName`/`Key`. Test events and
//! non-create events announce nothing.

use serde::Deserialize;

/// Largest event body accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A created object announced by an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedObject {
    /// Event name without the `s3:` prefix (`ObjectCreated:Put`).
    pub event_name: String,
    /// The bucket the event names (ingest takes only its upload buckets).
    pub bucket: String,
    /// Key, decoded.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// The object's version on a versioned bucket; `None` otherwise.
    pub version_id: Option<String>,
    /// When the store says it happened.
    pub event_time: Option<String>,
}

/// Why an event body was refused.
#[derive(Debug, thiserror::Error)]
pub enum S3EventError {
    /// The body is larger than [`MAX_EVENT_BYTES`].
    #[error("S3 event of {0} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not an S3 event.
    #[error("not an S3 event notification: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "Records")]
    records: Option<Vec<Record>>,
    #[serde(rename = "Event")]
    event: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    event_name: String,
    event_time: Option<String>,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: BucketEntity,
    object: ObjectEntity,
}

#[derive(Deserialize)]
struct BucketEntity {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectEntity {
    key: String,
    size: Option<u64>,
    e_tag: Option<String>,
    version_id: Option<String>,
}

/// Decodes an event key: `+` is a space, then percent-decoding as UTF-8.
pub fn decode_key(raw: &str) -> Result<String, S3EventError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| S3EventError::Malformed(format!("key {raw:?} is not UTF-8 once decoded")))
}

/// Whether `body` looks like an S3 event (has `Records` or `Event`).
pub fn looks_like_event(body: &[u8]) -> bool {
    crate::json::parse_bounded::<serde_json::Value>(body)
        .map(|v| v.get("Records").is_some() || v.get("Event").is_some())
        .unwrap_or(false)
}

/// The objects created according to an AWS or MinIO event body; empty for
/// test events and for events that create nothing.
pub fn parse_event(body: &[u8]) -> Result<Vec<CreatedObject>, S3EventError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(S3EventError::TooLarge(body.len()));
    }
    let parsed: Body = crate::json::parse_bounded(body).map_err(|e| S3EventError::Malformed(e.to_string()))?;
    let Some(records) = parsed.records else {
        return match parsed.event.as_deref() {
            Some("s3:TestEvent") => Ok(Vec::new()),
            _ => Err(S3EventError::Malformed("no Records".into())),
        };
    };
    let mut out = Vec::new();
    for r in records {
        let name = r.event_name.strip_prefix("s3:").unwrap_or(&r.event_name).to_string();
        if !name.starts_with("ObjectCreated:") {
            continue;
        }
        let key = decode_key(&r.s3.object.key)?;
        if key.is_empty() {
            return Err(S3EventError::Malformed("empty object key".into()));
        }
        out.push(CreatedObject {
            event_name: name,
            bucket: r.s3.bucket.name,
            key,
            size: r.s3.object.size.unwrap_or(0),
            etag: r.s3.object.e_tag.map(|e| e.trim_matches('"').to_string()).filter(|e| !e.is_empty()),
            version_id: r.s3.object.version_id.filter(|v| !v.is_empty() && v != "null"),
            event_time: r.event_time,
        });
    }
    Ok(out)
}

/// Go's `url.QueryEscape`, as MinIO applies it to keys.
pub fn query_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The body MinIO's AMQP target publishes for a created object.
pub fn minio_event(event_name: &str, bucket: &str, key: &str, size: u64, etag: &str, source_host: &str) -> Vec<u8> {
    minio_event_of_version(event_name, bucket, key, size, etag, None, source_host)
}

/// [`minio_event`] for one version of an object in a versioned bucket
/// (`s3.object.versionId`, as the bucket's own event names it).
pub fn minio_event_of_version(
    event_name: &str,
    bucket: &str,
    key: &str,
    size: u64,
    etag: &str,
    version_id: Option<&str>,
    source_host: &str,
) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sequencer = format!("{:016X}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let body = serde_json::json!({
        "EventName": format!("s3:{event_name}"),
        "Key": format!("{bucket}/{key}"),
        "Records": [{
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": now,
            "eventName": format!("s3:{event_name}"),
            "userIdentity": {"principalId": "reelfleet"},
            "requestParameters": {"principalId": "reelfleet", "region": "", "sourceIPAddress": source_host},
            "responseElements": {"x-amz-request-id": sequencer, "x-minio-origin-endpoint": "reelfleet-dev"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {"name": bucket, "ownerIdentity": {"principalId": "reelfleet"}, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": {"key": query_escape(key), "size": size, "eTag": etag, "sequencer": sequencer}
            },
            "source": {"host": source_host, "port": "", "userAgent": "reelfleet-devstack"}
        }]
    });
    let mut body = body;
    if let Some(v) = version_id {
        body["Records"][0]["s3"]["object"]["versionId"] = v.into();
    }
    serde_json::to_vec(&body).expect("event serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        for key in ["a b/c+d.mp4", "clips/été 2026/%2F.mov", "x"] {
            assert_eq!(decode_key(&query_escape(key)).unwrap(), key);
        }
        let body = minio_event("ObjectCreated:Put", "uploads", "a b/c+d.mp4", 3, "abc", "127.0.0.1");
        let objs = parse_event(&body).unwrap();
        assert_eq!(objs[0].key, "a b/c+d.mp4");
        assert_eq!(objs[0].etag.as_deref(), Some("abc"));
    }
}
