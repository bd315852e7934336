//! The S3 event parser on real-shaped AWS and MinIO payloads kept in `tests/fixtures/s3-events`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::s3event::{parse_event, S3EventError};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/s3-events");
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name} missing from {}: {e}", dir.display()))
}

#[test]
fn aws_put_with_an_encoded_unicode_key() {
    let objs = parse_event(&fixture("aws-put.json")).unwrap();
    assert_eq!(objs.len(), 1);
    let o = &objs[0];
    assert_eq!(o.key, "videos/red flower été.mp4");
    assert_eq!(o.bucket, "uploads");
    assert_eq!(o.size, 1_048_576);
    assert_eq!(o.etag.as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
    assert_eq!(o.version_id.as_deref(), Some("096fKKXTRTtl3on89fVO.nfljtsv6qko"));
    assert_eq!(o.event_name, "ObjectCreated:Put");
}

#[test]
fn aws_multi_record_keeps_creates_and_ignores_deletes() {
    let objs = parse_event(&fixture("aws-multi.json")).unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].key, "2026/11/big launch film.mov");
    assert_eq!(objs[0].event_name, "ObjectCreated:CompleteMultipartUpload");
    assert_eq!(objs[0].size, 5_368_709_120);
}

#[test]
fn aws_test_event_announces_nothing() {
    assert!(parse_event(&fixture("aws-test-event.json")).unwrap().is_empty());
}

#[test]
fn minio_put_decodes_slashes_spaces_and_plus() {
    let objs = parse_event(&fixture("minio-put.json")).unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].key, "clips/summer 2026/a+b.mp4");
    assert_eq!(objs[0].event_name, "ObjectCreated:Put");
    assert_eq!(objs[0].etag.as_deref(), Some("775ff5def9531772a2bb12853cd46fce"));
}

#[test]
fn minio_delete_is_ignored() {
    assert!(parse_event(&fixture("minio-delete.json")).unwrap().is_empty());
}

#[test]
fn hostile_bodies_are_refused() {
    assert!(matches!(parse_event(b"not json"), Err(S3EventError::Malformed(_))));
    assert!(matches!(
        parse_event(br#"{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}"#),
        Err(S3EventError::Malformed(_))
    ));
    let deep = format!("{{\"Records\": {}{}}}", "[".repeat(64), "]".repeat(64));
    assert!(parse_event(deep.as_bytes()).is_err());
    let big = vec![b' '; 2 * 1024 * 1024];
    assert!(matches!(parse_event(&big), Err(S3EventError::TooLarge(_))));
    let bad_utf8 =
        br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%FF%FE"}}}]}"#;
    assert!(parse_event(bad_utf8).is_err());
}
