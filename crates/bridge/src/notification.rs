//! What arrives in the SQS queue, turned into what ingest reads: one
//! single-record S3 event per created object.
//!
//! Four shapes arrive: an S3 event notification sent straight to SQS (or
//! through SNS with raw message delivery), the same wrapped in an SNS
//! `Notification` envelope (raw delivery off), an EventBridge "Object
//! Created" event, and S3's `s3:TestEvent` when a notification is configured.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reelfleet_core::s3event::parse_event;
use serde_json::{json, Value};

/// Bytes of key left as they are when an EventBridge key is written in the
/// S3 notification form (which percent-encodes keys; ingest decodes them).
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

/// What to do with one SQS message.
#[derive(Debug, PartialEq)]
pub enum Relay {
    /// Publish these S3 events (one record each), then delete the message.
    Events(Vec<Vec<u8>>),
    /// Nothing to relay (a test event, a delete, a subscription notice): delete it.
    Ignore(String),
}

/// Why a message cannot be read; it stays in the queue for its redrive policy.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct Poison(pub String);

/// Reads one SQS message body.
pub fn classify(body: &str) -> Result<Relay, Poison> {
    let value: Value = serde_json::from_str(body).map_err(|e| Poison(format!("not JSON: {e}")))?;
    // SNS envelope (raw message delivery off): the S3 event is the Message string.
    if value.get("Type").and_then(Value::as_str) == Some("Notification") && value.get("TopicArn").is_some() {
        let inner = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| Poison("SNS envelope without a Message".into()))?;
        return classify(inner);
    }
    if let Some(kind) = value.get("Type").and_then(Value::as_str).filter(|t| t.contains("Subscription")) {
        return Ok(Relay::Ignore(format!("SNS {kind}")));
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Relay::Ignore("s3:TestEvent".into()));
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3") && value.get("detail-type").is_some() {
        return eventbridge(&value);
    }
    let records = value
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| Poison("neither an S3 event, an SNS envelope nor an EventBridge event".into()))?;
    let mut events = Vec::new();
    for record in records {
        let one = serde_json::to_vec(&json!({ "Records": [record] })).map_err(|e| Poison(e.to_string()))?;
        // Only object-created records go on; a record ingest could not read is poison here, not there.
        match parse_event(&one) {
            Ok(objects) if objects.len() == 1 => events.push(one),
            Ok(_) => {}
            Err(e) => return Err(Poison(e.to_string())),
        }
    }
    if events.is_empty() {
        return Ok(Relay::Ignore(format!("{} record(s), none creates an object", records.len())));
    }
    Ok(Relay::Events(events))
}

/// An EventBridge "Object Created" event as an S3 notification record.
fn eventbridge(value: &Value) -> Result<Relay, Poison> {
    let kind = value.get("detail-type").and_then(Value::as_str).unwrap_or_default();
    if kind != "Object Created" {
        return Ok(Relay::Ignore(format!("EventBridge {kind:?}")));
    }
    let detail = value.get("detail").ok_or_else(|| Poison("EventBridge event without detail".into()))?;
    let text =
        |path: &[&str]| path.iter().try_fold(detail, |v, k| v.get(k)).and_then(Value::as_str).map(str::to_string);
    let bucket = text(&["bucket", "name"]).ok_or_else(|| Poison("EventBridge event without bucket.name".into()))?;
    let key = text(&["object", "key"]).ok_or_else(|| Poison("EventBridge event without object.key".into()))?;
    let size = detail.get("object").and_then(|o| o.get("size")).and_then(Value::as_u64).unwrap_or(0);
    let reason = text(&["reason"]).unwrap_or_default();
    let name = match reason.as_str() {
        "CompleteMultipartUpload" => "ObjectCreated:CompleteMultipartUpload",
        "CopyObject" => "ObjectCreated:Copy",
        "PostObject" => "ObjectCreated:Post",
        _ => "ObjectCreated:Put",
    };
    let record = json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": value.get("region"),
        "eventTime": value.get("time"),
        "eventName": name,
        "s3": {
            "bucket": { "name": bucket },
            "object": {
                // EventBridge keys are plain; S3 notifications percent-encode them.
                "key": utf8_percent_encode(&key, KEY_SAFE).to_string(),
                "size": size,
                "eTag": text(&["object", "etag"]),
                "versionId": text(&["object", "version-id"]),
            }
        }
    });
    let one = serde_json::to_vec(&json!({ "Records": [record] })).map_err(|e| Poison(e.to_string()))?;
    parse_event(&one).map_err(|e| Poison(e.to_string()))?;
    Ok(Relay::Events(vec![one]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/../../tests/fixtures/s3-events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn keys(relay: Relay) -> Vec<String> {
        let Relay::Events(events) = relay else { panic!("nothing relayed: {relay:?}") };
        events.iter().flat_map(|e| parse_event(e).unwrap()).map(|o| format!("{}/{}", o.bucket, o.key)).collect()
    }

    #[test]
    fn direct_sns_wrapped_and_eventbridge_events_become_one_record_each() {
        let direct = fixture("aws-put.json");
        let direct_keys = keys(classify(&direct).unwrap());
        assert_eq!(direct_keys.len(), 1);
        let wrapped = json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": direct});
        assert_eq!(keys(classify(&wrapped.to_string()).unwrap()), direct_keys);
        assert_eq!(keys(classify(&fixture("aws-multi.json")).unwrap()).len(), 1, "the delete is left out");
        assert_eq!(
            keys(classify(&fixture("eventbridge-object-created.json")).unwrap()),
            vec!["uploads/raw/My Holiday+clip ü.mp4".to_string()]
        );
    }

    #[test]
    fn test_events_deletes_and_subscription_notices_are_ignored() {
        assert!(matches!(classify(&fixture("aws-test-event.json")).unwrap(), Relay::Ignore(_)));
        let delete = fixture("aws-put.json").replace("ObjectCreated:Put", "ObjectRemoved:Delete");
        assert!(matches!(classify(&delete).unwrap(), Relay::Ignore(_)));
        let sub = json!({"Type": "SubscriptionConfirmation", "TopicArn": "arn:x", "SubscribeURL": "https://x"});
        assert!(matches!(classify(&sub.to_string()).unwrap(), Relay::Ignore(_)));
        let eb = fixture("eventbridge-object-created.json").replace("Object Created", "Object Deleted");
        assert!(matches!(classify(&eb).unwrap(), Relay::Ignore(_)));
    }

    #[test]
    fn unreadable_messages_are_poison() {
        for body in [
            "not json",
            "{}",
            r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#,
            r#"{"Type":"Notification","TopicArn":"a"}"#,
        ] {
            assert!(classify(body).is_err(), "{body}");
        }
    }
}
