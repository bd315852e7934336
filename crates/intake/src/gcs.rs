//! Cloud Storage's front door: Cloud Pub/Sub push deliveries of Cloud Storage
//! notifications (`payloadFormat: JSON_API_V1`). Pub/Sub POSTs
//! `{"message": {"attributes": {...}, "data": <base64 of the object
//! resource>, "messageId", "publishTime"}, "subscription"}`; only
//! `OBJECT_FINALIZE` (an object created or overwritten) becomes a job.
//!
//! The object's eTag is the hex of its `md5Hash` (what the S3-interoperable
//! XML API reports as `ETag` for a non-composite object; a composite object
//! has no MD5 and its resource's `etag` is used), its version id the
//! generation.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use reelfleet_core::envelope::SourceObject;
use serde::Deserialize;
use std::collections::BTreeMap;

/// What a push delivery asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// An object was finalized: make it a job.
    Finalized(SourceObject),
    /// Any other event (`OBJECT_DELETE`, `OBJECT_ARCHIVE`, `OBJECT_METADATA_UPDATE`): nothing to do.
    Ignored(String),
}

#[derive(Deserialize)]
struct Push {
    message: PubsubMessage,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PubsubMessage {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    md5_hash: Option<String>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    generation: Option<String>,
}

/// Reads one push delivery.
pub fn parse_push(body: &[u8]) -> Result<Notification, String> {
    let push: Push = reelfleet_core::json::parse_bounded(body).map_err(|e| format!("not a Pub/Sub push body: {e}"))?;
    let attr = |name: &str| push.message.attributes.get(name).filter(|v| !v.is_empty()).cloned();
    let event = attr("eventType").ok_or("message.attributes.eventType is missing")?;
    if event != "OBJECT_FINALIZE" {
        return Ok(Notification::Ignored(event));
    }
    let bucket = attr("bucketId").ok_or("message.attributes.bucketId is missing")?;
    let key = attr("objectId").ok_or("message.attributes.objectId is missing")?;
    let resource: ObjectResource = match &push.message.data {
        Some(data) if !data.is_empty() => {
            let json = STANDARD.decode(data).map_err(|e| format!("message.data is not base64: {e}"))?;
            reelfleet_core::json::parse_bounded(&json)
                .map_err(|e| format!("message.data is not an object resource: {e}"))?
        }
        _ => ObjectResource::default(),
    };
    let size = resource.size.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    let md5_hex = resource.md5_hash.as_deref().and_then(|m| STANDARD.decode(m).ok()).map(hex::encode);
    let etag = md5_hex.or(resource.etag);
    let version_id = attr("objectGeneration").or(resource.generation);
    Ok(Notification::Finalized(SourceObject { bucket, key, size, etag, version_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../tests/fixtures/gcs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn finalize_becomes_a_source() {
        let Notification::Finalized(src) = parse_push(&fixture("object-finalize.json")).unwrap() else {
            panic!("not a finalize")
        };
        assert_eq!(src.bucket, "reelfleet-gcs-uploads");
        assert_eq!(src.key, "incoming/match day/clip-01.mp4");
        assert_eq!(src.size, 1048576);
        assert_eq!(src.version_id.as_deref(), Some("1732962345123456"));
        assert_eq!(src.etag.as_deref(), Some("b1946ac92492d2347c6235b4d2611184"));
    }

    #[test]
    fn delete_is_ignored_and_garbage_refused() {
        assert_eq!(parse_push(&fixture("object-delete.json")).unwrap(), Notification::Ignored("OBJECT_DELETE".into()));
        assert!(parse_push(b"{}").is_err());
        assert!(parse_push(br#"{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}}}"#).is_err());
    }
}
