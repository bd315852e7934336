//! A body streamed into one object by multipart upload with bounded memory:
//! bytes gather in one buffer of the part size, each full buffer goes up as
//! a part, and an upload that is not completed is aborted, so a refused or
//! failed pull leaves no object and no parts behind.

use aws_sdk_s3::{
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use reelfleet_core::error::StageError;

/// An open multipart upload.
#[derive(Debug)]
pub struct MultipartSink {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    part_size: usize,
    buffer: Vec<u8>,
    parts: Vec<CompletedPart>,
    written: u64,
}

/// An S3 failure as a stage error: a refused request (4xx but throttling,
/// 403 and 408) is permanent, the rest transient.
fn s3_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StageError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let message = format!("{what}: {}", DisplayErrorContext(&e));
    match status {
        Some(s) if (400..500).contains(&s) && !matches!(s, 403 | 408 | 429) => {
            StageError::permanent("storage", message)
        }
        _ => StageError::transient("storage", message),
    }
}

impl MultipartSink {
    /// Starts a multipart upload of `key` with parts of `part_size` bytes.
    pub async fn start(
        client: Client,
        bucket: &str,
        key: &str,
        content_type: &str,
        part_size: usize,
    ) -> Result<Self, StageError> {
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| s3_error("starting the multipart upload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StageError::transient("storage", "multipart upload without an id"))?
            .to_string();
        Ok(Self {
            client,
            bucket: bucket.into(),
            key: key.into(),
            upload_id,
            part_size,
            buffer: Vec::with_capacity(part_size),
            parts: Vec::new(),
            written: 0,
        })
    }

    /// Bytes taken so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Takes `data`, sending every part that fills up.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StageError> {
        self.written += data.len() as u64;
        while !data.is_empty() {
            let room = self.part_size - self.buffer.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = rest;
            if self.buffer.len() == self.part_size {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StageError> {
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let body = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.part_size));
        let len = body.len() as i64;
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error(&format!("uploading part {number}"), e))?;
        self.parts
            .push(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_string)).build());
        Ok(())
    }

    /// Sends the last part and completes the object; returns its ETag.
    pub async fn finish(mut self) -> Result<Option<String>, StageError> {
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.flush().await?;
        }
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build())
            .send()
            .await
            .map_err(|e| s3_error("completing the multipart upload", e))?;
        Ok(done.e_tag().map(|e| e.trim_matches('"').to_string()))
    }

    /// Drops the parts sent so far (best effort: a store that misses this
    /// still expires them by its lifecycle rule for incomplete uploads).
    pub async fn abort(self) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "Could not abort the multipart upload");
        }
    }
}
