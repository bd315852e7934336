//! The embedded S3 endpoint and its event notifications.

use reelfleet_core::{
    broker::{Broker, Outgoing, Publisher},
    s3event::minio_event,
};
use s3s::{dto::*, s3_error, S3Request, S3Response, S3Result, S3};
use s3s_fs::FileSystem;
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    sync::Arc,
};
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Publishes object-created events the way a MinIO AMQP target does.
struct Notifier {
    broker: Broker,
    publisher: Mutex<Option<Publisher>>,
    queue: String,
    bucket: String,
}

impl Notifier {
    async fn notify(&self, event_name: &str, key: &str, size: u64, etag: &str) -> S3Result<()> {
        let body = minio_event(event_name, &self.bucket, key, size, etag, "127.0.0.1");
        let msg = Outgoing::to_queue(&self.queue, body);
        let mut guard = self.publisher.lock().await;
        for _ in 0..2 {
            if guard.is_none() {
                *guard = self.broker.publisher().await.ok();
            }
            if let Some(p) = guard.as_ref() {
                match p.publish(&msg).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        error!(error = %e, key, "Could not publish the S3 event; retrying on a new channel");
                        *guard = None;
                    }
                }
            }
        }
        // The upload must not succeed silently without its event: the client retries.
        Err(s3_error!(
            ServiceUnavailable,
            "object stored but its event notification could not be published; retry the upload"
        ))
    }
}

/// One lock per key in use. s3s-fs checks `If-Match`/`If-None-Match` and
/// then writes, as two steps, and a read opens the file before it reads the
/// ETag; holding the key's lock across each (exclusive for writes, shared for
/// reads) makes a conditional write the atomic compare-and-swap S3 promises
/// and a read return a body with its own ETag, so two workers racing on a
/// manifest cannot both win, nor one win on a stale read.
#[derive(Default)]
struct KeyLocks {
    held: std::sync::Mutex<HashMap<ObjectId, Arc<RwLock<()>>>>,
}

type ObjectId = (String, String);

enum Hold {
    Read(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    id: ObjectId,
    lock: Arc<RwLock<()>>,
    hold: Option<Hold>,
}

impl KeyLocks {
    fn entry(&self, bucket: &str, key: &str) -> (ObjectId, Arc<RwLock<()>>) {
        let id = (bucket.to_string(), key.to_string());
        let lock = self.held.lock().expect("key locks").entry(id.clone()).or_default().clone();
        (id, lock)
    }

    async fn write(&self, bucket: &str, key: &str) -> KeyGuard<'_> {
        let (id, lock) = self.entry(bucket, key);
        let hold = Hold::Write(lock.clone().write_owned().await);
        KeyGuard { locks: self, id, lock, hold: Some(hold) }
    }

    async fn read(&self, bucket: &str, key: &str) -> KeyGuard<'_> {
        let (id, lock) = self.entry(bucket, key);
        let hold = Hold::Read(lock.clone().read_owned().await);
        KeyGuard { locks: self, id, lock, hold: Some(hold) }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.hold.take();
        let mut held = self.locks.held.lock().expect("key locks");
        // Only the table and this guard hold it: nobody waits, forget the key.
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.id);
        }
    }
}

/// The S3 service: s3s-fs plus event notifications.
struct EventingStore {
    fs: FileSystem,
    root: PathBuf,
    notifier: Arc<Notifier>,
    locks: KeyLocks,
}

/// Implements `S3` for the store: the listed operations go straight to
/// s3s-fs, followed by the hand-written ones.
macro_rules! s3_impl {
    ($($name:ident: $input:ty => $output:ty;)* { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl S3 for EventingStore {
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$name(req).await
                }
            )*
            $($own)*
        }
    };
}

impl EventingStore {
    fn object_size(&self, bucket: &str, key: &str) -> u64 {
        let rel = Path::new(bucket).join(key);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return 0;
        }
        std::fs::metadata(self.root.join(rel)).map(|m| m.len()).unwrap_or(0)
    }
}

s3_impl! {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        delete_bucket: DeleteBucketInput => DeleteBucketOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
        copy_object: CopyObjectInput => CopyObjectOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        list_parts: ListPartsInput => ListPartsOutput;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    {

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let _key = self.locks.write(&bucket, &key).await;
        let resp = self.fs.put_object(req).await?;
        if bucket == self.notifier.bucket {
            let etag = resp.output.e_tag.as_ref().map(etag_text).unwrap_or_default();
            let size = self.object_size(&bucket, &key);
            self.notifier.notify("ObjectCreated:Put", &key, size, &etag).await?;
        }
        Ok(resp)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let _key = self.locks.write(&bucket, &key).await;
        let mut resp = self.fs.complete_multipart_upload(req).await?;
        // s3s-fs completes in a keep-alive future; resolve it to learn the ETag.
        if let Some(done) = resp.output.future.take() {
            resp.output = done.await?;
        }
        if bucket == self.notifier.bucket {
            let etag = resp.output.e_tag.as_ref().map(etag_text).unwrap_or_default();
            let size = self.object_size(&bucket, &key);
            self.notifier.notify("ObjectCreated:CompleteMultipartUpload", &key, size, &etag).await?;
        }
        Ok(resp)
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let _key = self.locks.read(&req.input.bucket, &req.input.key).await;
        // s3s-fs ignores If-Match on reads; a read pinned to what was validated must not get another object.
        let condition = req.input.if_match.clone();
        let resp = self.fs.get_object(req).await?;
        if let Some(ETagCondition::ETag(expected)) = condition {
            if !resp.output.e_tag.as_ref().is_some_and(|e| e.strong_cmp(&expected)) {
                return Err(s3_error!(PreconditionFailed, "the object's ETag does not match If-Match"));
            }
        }
        Ok(resp)
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let _key = self.locks.read(&req.input.bucket, &req.input.key).await;
        self.fs.head_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let _key = self.locks.write(&req.input.bucket, &req.input.key).await;
        self.fs.delete_object(req).await
    }
    }
}

fn etag_text(e: &ETag) -> String {
    match e {
        ETag::Strong(s) | ETag::Weak(s) => s.trim_matches('"').to_string(),
    }
}

/// A running embedded S3 endpoint.
#[derive(Debug)]
pub struct S3Server {
    /// The address it listens on (the port picked when 0 was asked for).
    pub addr: SocketAddr,
    /// Cancelling it stops the server after the requests in progress.
    pub shutdown: CancellationToken,
    /// Ends when the server has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves S3 on `addr` from `root`, with SigV4 credentials, publishing an
/// event to `event_queue` for every object created in `upload_bucket`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_s3(
    addr: &str,
    root: &Path,
    access_key: &str,
    secret_key: &str,
    upload_bucket: &str,
    broker: Broker,
    event_queue: &str,
) -> anyhow::Result<S3Server> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    std::fs::create_dir_all(root)?;
    let root = root.canonicalize()?;
    let fs = FileSystem::new(&root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let notifier = Arc::new(Notifier {
        broker,
        publisher: Mutex::new(None),
        queue: event_queue.to_string(),
        bucket: upload_bucket.to_string(),
    });
    let store = EventingStore { fs, root: root.clone(), notifier, locks: KeyLocks::default() };
    let service = {
        let mut b = s3s::service::S3ServiceBuilder::new(store);
        b.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
        b.build()
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let socket = tokio::select! {
                _ = stop.cancelled() => break,
                res = listener.accept() => match res {
                    Ok((socket, _)) => socket,
                    Err(e) => { error!(error = %e, "S3 accept failed"); continue; }
                },
            };
            // Without it an answer written in two parts (head, then body)
            // waits for the client's delayed ACK: about 40 ms per request.
            let _ = socket.set_nodelay(true);
            let conn = http.serve_connection(TokioIo::new(socket), service.clone());
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    });
    info!(addr = %local, root = %root.display(), "Embedded S3 listening");
    Ok(S3Server { addr: local, shutdown, task })
}
