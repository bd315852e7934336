//! The `reelfleet worker` process on SIGTERM: readiness drops at once (and
//! `/readyz` says so, with `/metrics`, while the worker drains), the message
//! in flight is finished and forwarded, the process exits 0.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::{
    broker::{Broker, HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, SIGNATURE_HEADER},
    manifest::{JobManifest, JobStatus, ManifestStore},
    settings::{Secret, Settings},
    signing::{generate_key, Signer},
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_message_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        namespace: format!("t-sig-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        ..Default::default()
    };
    // A worker refuses to run without credentials of its own.
    settings.signing.secret = Secret::new(generate_key());
    settings.s3.access_key = Secret::new(format!("sig{}", &generate_key()[..12]));
    settings.s3.secret_key = Secret::new(generate_key());
    let health_port = free_port();
    settings.runtime.health_addr = format!("127.0.0.1:{health_port}");
    settings.runtime.grace_period_secs = 60;
    let broker = Broker::new(&settings.broker, "signal-test").unwrap();
    let topology = Topology::from_settings(&settings);
    broker.declare(&topology).await.expect("RabbitMQ is running");
    let s3 = reelfleet_devstack::serve_s3(
        "127.0.0.1:0",
        &dir.path().join("s3"),
        settings.s3.access_key.expose(),
        settings.s3.secret_key.expose(),
        &settings.s3.upload_bucket,
        broker.clone(),
        &topology.queue(WorkQueue::Ingest),
    )
    .await
    .unwrap();
    settings.s3.endpoint = s3.endpoint();
    let storage = Storage::new(&settings.s3);
    storage.ensure_bucket(&settings.s3.work_bucket).await.unwrap();
    storage.ensure_bucket("sources").await.unwrap();

    // A clip long enough that preprocess is still busy when the signal comes.
    let clip = dir.path().join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "8"])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(status.success());
    let info = storage.upload("sources", "clip.mp4", &clip, "video/mp4").await.unwrap();
    let source = SourceObject {
        bucket: "sources".into(),
        key: "clip.mp4".into(),
        size: info.size,
        etag: info.etag,
        version_id: None,
    };
    let envelope = Envelope::new(JobKind::Analyze, source);
    let manifests = ManifestStore::new(storage.clone(), settings.s3.work_bucket.clone());
    manifests.create(&mut JobManifest::new(&envelope)).await.unwrap();
    let body = envelope.to_bytes();
    let queue = topology.queue(WorkQueue::Preprocess);
    let signature = Signer::from_settings(&settings.signing, &settings.namespace).unwrap().sign(&queue, &body);
    let msg = Outgoing::to_queue(queue, body).header(SIGNATURE_HEADER, HeaderValue::Text(signature));
    broker.publisher().await.unwrap().publish(&msg).await.unwrap();

    let config = dir.path().join("reelfleet.toml");
    std::fs::write(&config, settings.to_toml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reelfleet"))
        .args(["--config", config.to_str().unwrap(), "--log-format", "json", "worker", "preprocess"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{health_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, text)) = get(&format!("{base}/metrics")).await {
            if text.lines().any(|l| l == "reelfleet_in_flight{stage=\"preprocess\"} 1") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the worker never took the message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&format!("{base}/readyz")).await.map(|r| r.0), Some(200));

    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get(&format!("{base}/readyz")).await.map(|r| r.0);
    assert_eq!(ready, Some(503), "readiness must drop as soon as draining starts, and be served while draining");
    let (status, text) = get(&format!("{base}/metrics")).await.expect("metrics are served while draining");
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|l| l == "reelfleet_in_flight{stage=\"preprocess\"} 1"),
        "the message should still be in flight when the drain is observed:\n{text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the worker exited before it drained");
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(sent.elapsed() < Duration::from_secs(60), "the worker did not exit within the grace period");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(exit.success(), "exit status {exit:?}; logs:\n{logs}");
    assert!(
        !logs.contains(settings.s3.secret_key.expose()) && !logs.contains("guest:guest"),
        "a secret reached the logs"
    );

    // JSON lines, each one object; the message's own lines carry job_id, stage and attempt at the top.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let handled = lines
        .iter()
        .find(|l| l["message"] == "Handled")
        .unwrap_or_else(|| panic!("no line says the message was handled:\n{logs}"));
    assert_eq!(handled["job_id"], envelope.job_id.as_str(), "{handled}");
    assert_eq!(handled["stage"], "preprocess", "{handled}");
    assert_eq!(handled["attempt"], 0, "{handled}");
    assert!(handled["level"].is_string() && handled["timestamp"].is_string(), "{handled}");

    let m = manifests.load(&envelope.job_id).await.unwrap().unwrap();
    assert_eq!(m.status, JobStatus::Inference, "the in-flight message was not finished");
    let tier = m.tier.unwrap();
    let channel = broker.channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let next = channel
        .queue_declare(topology.queue(WorkQueue::Inference(tier)).as_str().into(), passive, Default::default())
        .await
        .unwrap();
    assert_eq!(next.message_count(), 1, "the next stage's message is missing");
    let own = channel
        .queue_declare(topology.queue(WorkQueue::Preprocess).as_str().into(), passive, Default::default())
        .await
        .unwrap();
    assert_eq!(own.message_count(), 0, "the message was not acked");

    for q in topology.all_queue_names() {
        let _ = channel.queue_delete(q.as_str().into(), Default::default()).await;
    }
    for x in topology.exchange_names() {
        let _ = channel.exchange_delete(x.as_str().into(), Default::default()).await;
    }
    s3.shutdown.cancel();
}
