//! [`TestStack`]: the real pieces (embedded S3 over HTTP, the provider
//! simulator, all four workers) in one process on the shared RabbitMQ, in a
//! namespace and data folder of its own, removed afterwards. `TEST_LOG=1`
//! shows the workers' logs.

use crate::fleet::start_dev;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use lapin::{
    options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions},
    types::AMQPValue,
};
use reelfleet_cli::dev::DevStack;
use reelfleet_core::{
    broker::{Broker, Outgoing},
    manifest::{JobManifest, ManifestStore},
    media::{Media, Probe},
    settings::Settings,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

/// Deletes a namespace's queues and exchange when dropped, so a failing
/// test leaves nothing behind on the shared broker either.
struct Janitor {
    url: String,
    topology: Topology,
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let (url, topology) = (self.url.clone(), self.topology.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                let extra = format!("{}.test-events", topology.namespace());
                for q in topology.all_queue_names().into_iter().chain([extra]) {
                    let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                }
                for x in topology.exchange_names() {
                    let _ = channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "cleaned".into()).await;
            });
        })
        .join();
    }
}

/// A whole fleet for one test.
pub struct TestStack {
    /// The running dev stack.
    pub dev: DevStack,
    /// The folder of its S3 data and scratch files, removed with the stack.
    pub dir: tempfile::TempDir,
    /// A client of its S3 endpoint.
    pub storage: Storage,
    /// Manifests in the work bucket.
    pub manifests: ManifestStore,
    /// Broker pool for test-side publishing and reading.
    pub broker: Broker,
    /// Names under the test's namespace.
    pub topology: Topology,
    _janitor: Janitor,
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info,lapin=warn").with_test_writer().try_init();
    }
}

impl TestStack {
    /// Starts a fleet with test-friendly settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a fleet after `tweak` has adjusted the settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_stages(&reelfleet_cli::fleet::StageName::ALL, tweak).await
    }

    /// Starts only `stages` (with the S3 endpoint and the simulator).
    pub async fn start_stages(stages: &[reelfleet_cli::fleet::StageName], tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        let mut s = Settings {
            namespace: format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
            ..Default::default()
        };
        s.runtime.grace_period_secs = 10;
        s.retry.base_delay_ms = 200;
        s.retry.max_delay_ms = 1000;
        s.retry.max_attempts = 3;
        s.broker.prefetch = 2;
        s.media.threads = 2;
        s.media.preset = "ultrafast".into();
        s.media.tier_presets = reelfleet_core::settings::TierPresets::all("ultrafast");
        tweak(&mut s);
        let dir = tempfile::Builder::new().prefix("reelfleet-test-").tempdir().expect("temp dir");
        let dev = start_dev(s, dir.path(), stages).await.expect("dev stack starts (is RabbitMQ running?)");
        let storage = Storage::new(&dev.settings.s3);
        let manifests = ManifestStore::new(storage.clone(), dev.settings.s3.work_bucket.clone());
        let broker = Broker::new(&dev.settings.broker, "reelfleet-test").expect("broker pool");
        let topology = Topology::from_settings(&dev.settings);
        let janitor = Janitor { url: dev.settings.broker.url.expose().to_string(), topology: topology.clone() };
        let stack = Self { dev, dir, storage, manifests, broker, topology, _janitor: janitor };
        if !stages.is_empty() {
            stack.wait_ready().await;
        }
        stack
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.dev.fleet.readiness.is_ready() {
            assert!(Instant::now() < deadline, "consumers not ready: {:?}", self.dev.fleet.readiness.snapshot());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Settings the fleet runs with.
    pub fn settings(&self) -> &Settings {
        &self.dev.settings
    }

    /// A plain aws-sdk-s3 client of the embedded endpoint (not reelfleet's wrapper).
    pub fn plain_s3_client(&self) -> aws_sdk_s3::Client {
        let s = &self.dev.settings.s3;
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .endpoint_url(&s.endpoint)
            .credentials_provider(Credentials::new(s.access_key.expose(), s.secret_key.expose(), None, None, "test"))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Uploads `path` to the upload bucket with a plain client; returns the job id.
    pub async fn upload(&self, key: &str, path: &Path) -> String {
        let bucket = self.dev.settings.s3.upload_bucket.clone();
        let out = self
            .plain_s3_client()
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_path(path).await.expect("readable file"))
            .send()
            .await
            .expect("upload");
        let etag = out.e_tag().map(|e| e.trim_matches('"').to_string());
        reelfleet_core::envelope::SourceObject { bucket, key: key.into(), size: 0, etag, version_id: None }.job_id()
    }

    /// Waits until the job's manifest satisfies `done`.
    pub async fn wait_for(&self, job_id: &str, timeout: Duration, done: impl Fn(&JobManifest) -> bool) -> JobManifest {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(Some(m)) = self.manifests.load(job_id).await {
                if done(&m) {
                    return m;
                }
                last = Some(m);
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not reach the expected state in {timeout:?}; last manifest: {}",
                last.map(|m| serde_json::to_string_pretty(&m).unwrap_or_default()).unwrap_or_else(|| "none".into())
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `queue` holds `n` messages and returns them (headers, body), consumed.
    pub async fn take_messages(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
        let channel = self.broker.channel().await.expect("channel");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get") {
                Some(msg) => {
                    let d = msg.delivery;
                    let mut headers = BTreeMap::new();
                    if let Some(h) = d.properties.headers().as_ref() {
                        for (k, v) in h.inner() {
                            let text = match v {
                                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                                other => format!("{other:?}").chars().filter(|c| c.is_ascii_digit()).collect(),
                            };
                            headers.insert(k.to_string(), text);
                        }
                    }
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    out.push((headers, d.data));
                }
                None => {
                    assert!(Instant::now() < deadline, "{queue} holds {} message(s), expected {n}", out.len());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out
    }

    /// Messages ready in `queue` right now.
    pub async fn depth(&self, queue: &str) -> u32 {
        let channel = self.broker.channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }

    /// Publishes a raw message to a work queue (confirmed).
    pub async fn publish(&self, msg: Outgoing) {
        self.broker.publisher().await.expect("publisher").publish(&msg).await.expect("publish confirmed");
    }

    /// Name of a work queue.
    pub fn queue(&self, q: WorkQueue) -> String {
        self.topology.queue(q)
    }

    /// Probes an object of the work bucket.
    pub async fn probe_object(&self, key: &str) -> Probe {
        let path = self.dir.path().join(format!("probe-{}", uuid::Uuid::new_v4().simple()));
        self.storage.download(&self.dev.settings.s3.work_bucket, key, &path).await.expect("download");
        let probe = Media::new(self.dev.settings.media.clone()).expect("ffmpeg").probe(&path).await.expect("probe");
        let _ = std::fs::remove_file(&path);
        probe
    }

    /// Reads an object of the work bucket.
    pub async fn read_object(&self, key: &str) -> Vec<u8> {
        self.storage.get_bytes(&self.dev.settings.s3.work_bucket, key, 64 * 1024 * 1024).await.expect("object")
    }

    /// Binds a fresh queue to the events exchange (deleted with the namespace).
    pub async fn bind_events(&self, pattern: &str) -> String {
        let channel = self.broker.channel().await.expect("channel");
        let name = format!("{}.test-events", self.topology.namespace());
        channel
            .queue_declare(name.as_str().into(), Default::default(), Default::default())
            .await
            .expect("declare events queue");
        channel
            .queue_bind(
                name.as_str().into(),
                self.topology.events_exchange().as_str().into(),
                pattern.into(),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("bind events queue");
        name
    }

    /// The fleet's signer (its keys and namespace).
    pub fn signer(&self) -> reelfleet_core::signing::Signer {
        reelfleet_core::signing::Signer::from_settings(&self.dev.settings.signing, &self.dev.settings.namespace)
            .expect("the dev stack's signing key")
    }

    /// `envelope` signed by the fleet for `queue`, as a stage would send it.
    pub fn signed(&self, queue: WorkQueue, envelope: &reelfleet_core::envelope::Envelope) -> Outgoing {
        let name = self.topology.queue(queue);
        let body = envelope.to_bytes();
        let sig = self.signer().sign(&name, &body);
        Outgoing::to_queue(name, body)
            .header(reelfleet_core::envelope::SIGNATURE_HEADER, reelfleet_core::broker::HeaderValue::Text(sig))
    }

    /// Creates `n` analyze jobs as preprocess would leave them (manifest,
    /// keyframes) and publishes them to `tier`'s queue; returns their ids.
    pub async fn seed_analyze(&self, tier: reelfleet_core::envelope::Tier, n: usize) -> Vec<String> {
        use reelfleet_core::{
            envelope::{Envelope, JobKind, SourceObject},
            manifest::{JobStatus, PreprocessInfo},
        };
        let bucket = self.dev.settings.s3.work_bucket.clone();
        let mut keyframes = Vec::new();
        for i in 1..=2 {
            let key = format!("fixtures/keyframe-{i}.jpg");
            let bytes: Vec<u8> = (0..2048u32).map(|b| (b * (i + 7)) as u8).collect();
            self.storage.put_bytes(&bucket, &key, bytes, "image/jpeg").await.expect("keyframe");
            keyframes.push(key);
        }
        let publisher = self.broker.publisher().await.expect("publisher");
        let mut ids = Vec::new();
        for _ in 0..n {
            let tag = uuid::Uuid::new_v4().simple().to_string();
            let source = SourceObject {
                bucket: "uploads".into(),
                key: format!("seed/{tag}.mp4"),
                size: 1,
                etag: Some(tag),
                version_id: None,
            };
            let mut env = Envelope::new(JobKind::Analyze, source);
            env.tier = Some(tier);
            env.inputs = keyframes.clone();
            let mut m = JobManifest::new(&env);
            m.status = JobStatus::Inference;
            m.tier = Some(tier);
            m.preprocess = Some(PreprocessInfo {
                normalized_key: Some("fixtures/normalized.mp4".into()),
                keyframes: keyframes.clone(),
                tier,
                tier_reason: "seeded by the test".into(),
                ..Default::default()
            });
            self.manifests.create(&mut m).await.expect("manifest");
            let msg = self.signed(WorkQueue::Inference(tier), &env);
            publisher.publish(&msg).await.expect("publish");
            ids.push(env.job_id);
        }
        ids
    }

    /// Creates a generate job waiting for inference in `tier`; returns its id.
    pub async fn seed_generate(&self, tier: reelfleet_core::envelope::Tier) -> String {
        use reelfleet_core::{
            envelope::{Envelope, JobKind, Quality, SourceObject},
            manifest::{JobStatus, PromptDocument},
        };
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let source = SourceObject {
            bucket: "uploads".into(),
            key: format!("seed/{tag}.json"),
            size: 1,
            etag: Some(tag),
            version_id: None,
        };
        let mut env = Envelope::new(JobKind::Generate, source);
        env.tier = Some(tier);
        let mut m = JobManifest::new(&env);
        m.status = JobStatus::Inference;
        m.tier = Some(tier);
        m.prompt = Some(PromptDocument {
            prompt: "a fox".into(),
            duration_seconds: 1.0,
            resolution: Quality::P720,
            priority: 3,
        });
        self.manifests.create(&mut m).await.expect("manifest");
        let msg = self.signed(WorkQueue::Inference(tier), &env);
        self.broker.publisher().await.expect("publisher").publish(&msg).await.expect("publish");
        env.job_id
    }

    /// Waits until every job has left inference (or failed); returns the manifests.
    pub async fn wait_inferred(&self, jobs: &[String], timeout: Duration) -> Vec<JobManifest> {
        use reelfleet_core::manifest::JobStatus;
        let mut out = Vec::new();
        for j in jobs {
            out.push(
                self.wait_for(j, timeout, |m| matches!(m.status, JobStatus::Postprocess | JobStatus::Failed)).await,
            );
        }
        out
    }

    /// Starts another replica of `stages` in this process: its own runtime, broker
    /// connections, rate limiter and budget client, the same namespace, S3,
    /// provider and shared state. Stop it with the returned token, then `wait`.
    pub async fn start_replica(
        &self,
        stages: &[reelfleet_cli::fleet::StageName],
    ) -> (reelfleet_cli::fleet::FleetHandle, tokio_util::sync::CancellationToken) {
        let settings = self.dev.settings.clone();
        let metrics = reelfleet_core::metrics::Metrics::new();
        let built = reelfleet_cli::fleet::build_stages(&settings, &self.storage, &metrics, stages, &[])
            .await
            .expect("replica stages");
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = reelfleet_cli::fleet::start(settings, built, metrics, stop.clone()).await.expect("replica");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !handle.readiness.is_ready() {
            assert!(Instant::now() < deadline, "replica not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (handle, stop)
    }

    /// Stops the fleet (draining), then deletes the namespace's queues and exchange.
    pub async fn cleanup(self) {
        let Self { dev, _janitor, .. } = self;
        dev.stop().await;
        tokio::task::spawn_blocking(move || drop(_janitor)).await.expect("janitor");
    }
}
