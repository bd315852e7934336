//! The object store through `aws-sdk-s3`: custom endpoint, path-style
//! addressing, checksums only when required. Uploads and downloads stream
//! between files and S3; files above a threshold go up in multipart.

use crate::settings::S3Settings;
use aws_sdk_s3::{
    config::{
        retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
    error::{ProvideErrorMetadata, SdkError},
    primitives::{ByteStream, Length},
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use std::{collections::HashMap, path::Path, time::Duration};
use tokio::io::AsyncWriteExt;

/// An object (or part of it) being read: its body arrives as it is read.
#[derive(Debug)]
pub struct ObjectStream {
    /// Bytes in the body.
    pub content_length: u64,
    /// `bytes a-b/size` for a ranged read.
    pub content_range: Option<String>,
    /// The object's content type.
    pub content_type: Option<String>,
    /// The body.
    pub body: ByteStream,
}

/// Object store failures. As a [`crate::error::StageError`] a missing,
/// changed, refused or too large object is permanent; the rest is retried.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound {
        /// The bucket named in the request.
        bucket: String,
        /// The object's key, as given (not URL-encoded).
        key: String,
    },
    /// A conditional write found the object already there.
    #[error("s3://{bucket}/{key} already exists")]
    Exists {
        /// The bucket named in the request.
        bucket: String,
        /// The object's key, as given (not URL-encoded).
        key: String,
    },
    /// A read pinned to an ETag found another object there.
    #[error("s3://{bucket}/{key} changed since it was validated")]
    Changed {
        /// The bucket named in the request.
        bucket: String,
        /// The object's key, as given (not URL-encoded).
        key: String,
    },
    /// The store refused the request (4xx other than throttling).
    #[error("object store refused the request: {0}")]
    Rejected(String),
    /// An object is larger than the caller accepts.
    #[error("s3://{bucket}/{key} is {size} bytes, above the {limit}-byte limit")]
    TooLarge {
        /// The bucket named in the request.
        bucket: String,
        /// The object's key, as given (not URL-encoded).
        key: String,
        /// The object's size in bytes, as the store reports it.
        size: u64,
        /// The most the caller accepts, in bytes.
        limit: u64,
    },
    /// Network, timeout, 5xx or throttling: worth retrying.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// Reading or writing the local side of a transfer.
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

/// The precondition of a conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    /// Only if no object is at the key (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag (`If-Match`).
    Matches(String),
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionalPut {
    /// Written; the new object's ETag, when the store reported one.
    Stored(Option<String>),
    /// The precondition did not hold: someone else wrote (or deleted) first.
    PreconditionFailed,
}

/// What `head` reports of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// `Content-Type` as stored, when the store reports one.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), names lowercased.
    pub metadata: HashMap<String, String>,
    /// The version a versioned bucket gave the object, as its bucket events
    /// name it (read by [`Storage::head`]; never S3's `null` version of an
    /// unversioned bucket; uploads leave it unset).
    pub version_id: Option<String>,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// Its key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// When it was last written, as the store reports it.
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
    /// Its current version in a versioned bucket, as its bucket event names
    /// it (only [`Storage::list_latest_page`] reads it; never `null`).
    pub version_id: Option<String>,
}

/// One page of a listing, and where the next one starts.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// The page's objects, in key order.
    pub objects: Vec<ListedObject>,
    /// The continuation token of the next page; `None` on the last.
    pub next: Option<String>,
}

fn timestamp(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn quoted(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

/// An S3 client bound to the settings' endpoint.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    multipart_threshold: u64,
    part_size: u64,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    bucket: &str,
    key: &str,
) -> StorageError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let message = match (&code, err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err)),
    };
    match (status, code.as_deref()) {
        (Some(404), _) | (_, Some("NoSuchKey" | "NotFound" | "NoSuchBucket")) => {
            StorageError::NotFound { bucket: bucket.into(), key: key.into() }
        }
        // 409 ConditionalRequestConflict: AWS's answer when two conditional writes race.
        (Some(412 | 409), _) | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
            StorageError::Exists { bucket: bucket.into(), key: key.into() }
        }
        // 403 is transient too: an expired or not yet propagated credential or policy, not the request.
        (Some(s), _) if (400..500).contains(&s) && !matches!(s, 403 | 408 | 429) => {
            StorageError::Rejected(format!("s3://{bucket}/{key}: {message}"))
        }
        _ => StorageError::Unavailable(format!("s3://{bucket}/{key}: {message}")),
    }
}

impl Storage {
    /// A client for `settings`.
    pub fn new(settings: &S3Settings) -> Self {
        let creds = crate::awscreds::provider(
            settings.credentials,
            &settings.access_key,
            &settings.secret_key,
            &settings.region,
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(settings.endpoint.clone())
            .credentials_provider(creds)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(settings.timeout_secs))
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            multipart_threshold: settings.multipart_threshold_bytes,
            part_size: settings.part_size_bytes.max(5 * 1024 * 1024),
        }
    }

    /// The SDK client, for callers that need an operation not wrapped here.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates `bucket` unless it exists.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) => match classify(e, bucket, "") {
                StorageError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(classify(e, bucket, "")),
        }
    }

    /// Size, eTag and content type of an object, or `None` if absent.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(|e| e.trim_matches('"').to_string()),
                content_type: out.content_type().map(str::to_string),
                version_id: out.version_id().filter(|v| !v.is_empty() && *v != "null").map(str::to_string),
                metadata: out
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
                    .unwrap_or_default(),
            })),
            Err(e) => match classify(e, bucket, key) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Writes `body` to `key`.
    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }

    /// Writes `body` to `key` only if no object is there (`If-None-Match: *`).
    /// Returns `false` if one already was.
    pub async fn put_bytes_if_absent(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, StorageError> {
        let put = self.put_bytes_if(bucket, key, body, content_type, &WriteCondition::Absent).await?;
        Ok(matches!(put, ConditionalPut::Stored(_)))
    }

    /// Writes `body` to `key` only if `condition` holds at the store, which
    /// checks and writes as one step: the compare-and-swap every job state
    /// transition is built on.
    pub async fn put_bytes_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: &WriteCondition,
    ) -> Result<ConditionalPut, StorageError> {
        let req = self.client.put_object().bucket(bucket).key(key).content_type(content_type);
        let req = match condition {
            WriteCondition::Absent => req.if_none_match("*"),
            WriteCondition::Matches(etag) => req.if_match(quoted(etag)),
        };
        match req.body(ByteStream::from(body)).send().await {
            Ok(out) => Ok(ConditionalPut::Stored(out.e_tag().map(|e| e.trim_matches('"').to_string()))),
            Err(e) => match classify(e, bucket, key) {
                StorageError::Exists { .. } => Ok(ConditionalPut::PreconditionFailed),
                // If-Match on a deleted object: the object we read is gone.
                StorageError::NotFound { .. } if matches!(condition, WriteCondition::Matches(_)) => {
                    Ok(ConditionalPut::PreconditionFailed)
                }
                other => Err(other),
            },
        }
    }

    /// Reads a whole object of at most `limit` bytes with its ETag, the
    /// version a later [`Storage::put_bytes_if`] compares against.
    pub async fn get_bytes_versioned(
        &self,
        bucket: &str,
        key: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), StorageError> {
        let out =
            self.client.get_object().bucket(bucket).key(key).send().await.map_err(|e| classify(e, bucket, key))?;
        let etag = out.e_tag().map(|e| e.trim_matches('"').to_string());
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        if size > limit {
            return Err(StorageError::TooLarge { bucket: bucket.into(), key: key.into(), size, limit });
        }
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable(format!("s3://{bucket}/{key}: reading body: {e}")))?;
        Ok((data.into_bytes().to_vec(), etag))
    }

    /// Opens an object for streaming, all of it or the byte `range` (an HTTP
    /// `Range` value such as `bytes=0-1023`), without reading it into memory.
    pub async fn get_stream(&self, bucket: &str, key: &str, range: Option<&str>) -> Result<ObjectStream, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(ObjectStream {
            content_length: out.content_length().unwrap_or(0).max(0) as u64,
            content_range: out.content_range().map(str::to_string),
            content_type: out.content_type().map(str::to_string),
            body: out.body,
        })
    }

    /// Reads a whole object of at most `limit` bytes into memory (manifests,
    /// JSON documents; never videos).
    pub async fn get_bytes(&self, bucket: &str, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.get_bytes_versioned(bucket, key, limit).await?.0)
    }

    /// Streams an object into a local file, returning its size.
    pub async fn download(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, StorageError> {
        self.download_pinned(bucket, key, path, None).await
    }

    /// Streams an object into a local file only if it still has `etag` (when
    /// given): a later read of a source gets exactly what was validated, or
    /// [`StorageError::Changed`].
    pub async fn download_pinned(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        etag: Option<&str>,
    ) -> Result<u64, StorageError> {
        let out =
            self.client.get_object().bucket(bucket).key(key).set_if_match(etag.map(quoted)).send().await.map_err(
                |e| match classify(e, bucket, key) {
                    StorageError::Exists { bucket, key } => StorageError::Changed { bucket, key },
                    other => other,
                },
            )?;
        let mut reader = out.body.into_async_read();
        let mut file = tokio::fs::File::create(path).await?;
        let n = tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|e| StorageError::Unavailable(format!("s3://{bucket}/{key}: reading body: {e}")))?;
        file.flush().await?;
        file.sync_all().await?;
        Ok(n)
    }

    /// Streams a local file into `key`, in multipart above the threshold.
    pub async fn upload(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<ObjectInfo, StorageError> {
        self.upload_with_metadata(bucket, key, path, content_type, HashMap::new()).await
    }

    /// [`Storage::upload`] with user metadata (`x-amz-meta-*`).
    pub async fn upload_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: &str,
        metadata: HashMap<String, String>,
    ) -> Result<ObjectInfo, StorageError> {
        let size = tokio::fs::metadata(path).await?.len();
        let etag = if size >= self.multipart_threshold {
            self.upload_multipart(bucket, key, path, size, content_type, &metadata).await?
        } else {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
            let out = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type(content_type)
                .content_length(size as i64)
                .set_metadata(Some(metadata.clone()).filter(|m| !m.is_empty()))
                .body(body)
                .send()
                .await
                .map_err(|e| classify(e, bucket, key))?;
            out.e_tag().map(|e| e.trim_matches('"').to_string())
        };
        // Some stores answer CompleteMultipartUpload without an ETag; the object has one.
        let etag = match etag {
            Some(e) => Some(e),
            None => self.head(bucket, key).await?.and_then(|i| i.etag),
        };
        Ok(ObjectInfo { size, etag, content_type: Some(content_type.to_string()), metadata, version_id: None })
    }

    async fn upload_multipart(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<Option<String>, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata.clone()).filter(|m| !m.is_empty()))
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Unavailable("multipart upload without an id".into()))?
            .to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1i32;
            while offset < size {
                let len = self.part_size.min(size - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| classify(e, bucket, key))?;
                parts.push(
                    CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_string)).build(),
                );
                offset += len;
                number += 1;
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| classify(e, bucket, key))?;
            Ok::<Option<String>, StorageError>(done.e_tag().map(|e| e.trim_matches('"').to_string()))
        }
        .await;
        if result.is_err() {
            let _ = self.client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }

    /// Keys under `prefix`, in order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(bucket, prefix, token).await?;
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// One page (up to 1000 objects) of the keys under `prefix`, with sizes,
    /// ETags and times; pass the previous page's `next` to continue.
    pub async fn list_page(&self, bucket: &str, prefix: &str, token: Option<String>) -> Result<ListPage, StorageError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| classify(e, bucket, prefix))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ListedObject {
                    key: o.key()?.to_string(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    etag: o.e_tag().map(|e| e.trim_matches('"').to_string()),
                    last_modified: o.last_modified().and_then(timestamp),
                    version_id: None,
                })
            })
            .collect();
        let next = match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => Some(t.to_string()),
            _ => None,
        };
        Ok(ListPage { objects, next })
    }

    /// Like [`Storage::list_page`], with versions: the current version of
    /// every object under `prefix` (not older versions, not objects whose
    /// current version is a delete marker), each with its version id in a
    /// versioned bucket, from `ListObjectVersions`; pass the previous page's
    /// `next`. `None` from a store without that API (the embedded s3s-fs
    /// answers `NotImplemented`): it keeps no versions, so
    /// [`Storage::list_page`] says the same.
    pub async fn list_latest_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<String>,
    ) -> Result<Option<ListPage>, StorageError> {
        let (key_marker, version_marker) = match token.as_deref().map(serde_json::from_str::<(String, String)>) {
            Some(Ok((k, v))) => (Some(k), Some(v).filter(|v| !v.is_empty())),
            Some(Err(e)) => return Err(StorageError::Rejected(format!("s3://{bucket}/{prefix}: bad page token: {e}"))),
            None => (None, None),
        };
        let out = self
            .client
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e)
                if e.code() == Some("NotImplemented")
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 501) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(classify(e, bucket, prefix)),
        };
        let objects = out
            .versions()
            .iter()
            .filter(|v| v.is_latest() == Some(true))
            .filter_map(|v| {
                Some(ListedObject {
                    key: v.key()?.to_string(),
                    size: v.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    etag: v.e_tag().map(|e| e.trim_matches('"').to_string()),
                    last_modified: v.last_modified().and_then(timestamp),
                    version_id: v.version_id().filter(|id| !id.is_empty() && *id != "null").map(str::to_string),
                })
            })
            .collect();
        let next = match (out.is_truncated(), out.next_key_marker()) {
            (Some(true), Some(k)) => {
                let marker = (k, out.next_version_id_marker().unwrap_or_default());
                Some(serde_json::to_string(&marker).unwrap_or_default())
            }
            _ => None,
        };
        Ok(Some(ListPage { objects, next }))
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.client.delete_object().bucket(bucket).key(key).send().await.map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::{config::http::HttpResponse, error::ErrorMetadata, operation::get_object::GetObjectError};

    fn answered(status: u16, code: &str) -> StorageError {
        let err = GetObjectError::generic(ErrorMetadata::builder().code(code).message("test").build());
        let raw = HttpResponse::new(status.try_into().expect("status"), aws_sdk_s3::primitives::SdkBody::empty());
        classify(SdkError::service_error(err, raw), "b", "k")
    }

    #[test]
    fn throttling_denial_and_server_errors_are_worth_retrying() {
        for (status, code) in [
            (403, "AccessDenied"),
            (408, "RequestTimeout"),
            (429, "SlowDown"),
            (500, "InternalError"),
            (503, "SlowDown"),
        ] {
            assert!(matches!(answered(status, code), StorageError::Unavailable(_)), "{status} {code}");
        }
        assert!(matches!(answered(400, "InvalidArgument"), StorageError::Rejected(_)));
        assert!(matches!(answered(404, "NoSuchKey"), StorageError::NotFound { .. }));
        assert!(matches!(answered(412, "PreconditionFailed"), StorageError::Exists { .. }));
    }
}
