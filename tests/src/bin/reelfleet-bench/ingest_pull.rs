//! `ingest-pull [--mib N]`: a URL pull of an N MiB source (default 1024)
//! from an HTTP server in this process, by the real `reelfleet worker pull`
//! process into the embedded S3, timed from the signed envelope on
//! `<ns>.pull` to the pulled job's envelope on `<ns>.ingest`; the worker's
//! peak RSS (`VmHWM`) before and after; and two ceilings: the same body
//! read by a plain streaming GET that keeps nothing, and the same bytes
//! uploaded from a local file by `core::storage`'s multipart upload.

use super::{arg, bench_settings, machine, start_s3, write_result};
use anyhow::{bail, Context};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use reelfleet_core::{
    broker::{header_str, Broker, HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, JobRequest, SourceObject, SIGNATURE_HEADER},
    settings::Secret,
    signing::Signer,
    storage::Storage,
    topology::{Topology, WorkQueue},
};
use reelfleet_tests::fleet::{delete_namespace, free_port, reelfleet_binary};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// An HTTP server on 127.0.0.1 answering every GET with `mib` MiB: an MP4
/// `ftyp` box, then filler, streamed in 1 MiB chunks with a Content-Length.
async fn origin(mib: u64) -> anyhow::Result<std::net::SocketAddr> {
    use axum::{body::Body, http::header, response::IntoResponse};
    let serve = move || async move {
        let mut first = vec![0u8; MIB as usize];
        first[..12].copy_from_slice(b"\0\0\0\x20ftypisom");
        let rest = (1..mib).map(|i| vec![(i % 251) as u8; MIB as usize]);
        let chunks = std::iter::once(first).chain(rest).map(Ok::<_, std::io::Error>);
        ([(header::CONTENT_LENGTH, (mib * MIB).to_string())], Body::from_stream(futures::stream::iter(chunks)))
            .into_response()
    };
    let app = axum::Router::new().fallback(serve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")
}

pub(crate) async fn ingest_pull(args: &[String]) -> anyhow::Result<()> {
    let mib = arg(args, "--mib", 1024)? as u64;
    let dir = tempfile::Builder::new().prefix("reelfleet-bench-pull-").tempdir()?;
    let mut settings = bench_settings("pull");
    // The broker may be named like a worker's (another node than the shared one).
    if let Ok(url) = std::env::var("REELFLEET_BROKER__URL") {
        settings.broker.url = Secret::new(url);
    }
    settings.pull.allow_cidrs = vec!["127.0.0.1/32".into()];
    settings.limits.max_bytes = (mib + 1) * MIB;
    let health = free_port();
    settings.runtime.health_addr = format!("127.0.0.1:{health}");
    let broker = Broker::new(&settings.broker, "bench")?;
    let topology = Topology::from_settings(&settings);
    broker.declare(&topology).await.context("declaring the topology (is RabbitMQ running?)")?;
    let _s3 = start_s3(&mut settings, &broker, &topology, dir.path()).await?;
    let storage = Storage::new(&settings.s3);
    storage.ensure_bucket(&settings.s3.work_bucket).await?;
    let addr = origin(mib).await?;
    let url = format!("http://{addr}/source.mp4");

    // The ceiling: the same body read by a plain GET that keeps nothing.
    let started = Instant::now();
    let mut response = reqwest::get(&url).await?;
    let mut read = 0u64;
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len() as u64;
    }
    let ceiling_secs = started.elapsed().as_secs_f64();
    if read != mib * MIB {
        bail!("the origin served {read} bytes, not {}", mib * MIB);
    }

    // The store's own pace: the same bytes from a local file, by core::storage's multipart upload.
    let file = dir.path().join("source.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for i in 0..mib {
            f.write_all(&vec![(i % 251) as u8; MIB as usize])?;
        }
        f.flush()?;
    }
    let started = Instant::now();
    storage.upload(&settings.s3.upload_bucket, "bench/store-ceiling.bin", &file, "application/octet-stream").await?;
    let store_secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&file)?;
    storage.delete(&settings.s3.upload_bucket, "bench/store-ceiling.bin").await?;

    let config = dir.path().join("reelfleet.toml");
    std::fs::write(&config, settings.to_toml())?;
    let mut worker = tokio::process::Command::new(reelfleet_binary()?)
        .args(["--config", &config.display().to_string(), "worker", "pull"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting reelfleet worker pull")?;
    let pid = worker.id().context("worker pid")?;
    let ready = format!("http://127.0.0.1:{health}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("the pull worker did not get ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_kib = peak_rss_kib(pid)?;

    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let source = SourceObject {
        bucket: settings.s3.upload_bucket.clone(),
        key: format!("pulled/{job_id}/source.mp4"),
        size: 0,
        etag: None,
        version_id: None,
    };
    let mut env = Envelope::new(JobKind::Analyze, source);
    env.job_id = job_id.clone();
    env.request = Some(JobRequest { via: "bench".into(), origin_url: Some(url), ..Default::default() });
    let signer = Signer::from_settings(&settings.signing, &settings.namespace)?;
    let pull = topology.queue(WorkQueue::Pull);
    let body = env.to_bytes();
    let msg =
        Outgoing::to_queue(&pull, body.clone()).header(SIGNATURE_HEADER, HeaderValue::Text(signer.sign(&pull, &body)));
    let started = Instant::now();
    broker.publisher().await?.publish(&msg).await?;
    let ingest = topology.queue(WorkQueue::Ingest);
    let channel = broker.channel().await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let handed = loop {
        if Instant::now() > deadline {
            bail!("the pulled job never reached {ingest}");
        }
        match channel.basic_get(ingest.as_str().into(), BasicGetOptions::default()).await? {
            Some(m) => {
                let d = m.delivery;
                d.acker.ack(BasicAckOptions::default()).await?;
                if header_str(&d.properties, SIGNATURE_HEADER).is_some() {
                    break Envelope::parse(&d.data)?;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let peak_kib = peak_rss_kib(pid)?;
    if handed.job_id != job_id || handed.source.size != mib * MIB {
        bail!("the handed job is {} of {} bytes", handed.job_id, handed.source.size);
    }
    let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(40), worker.wait()).await;
    delete_namespace(&broker, &topology).await;

    let part_mib = settings.pull.part_size_bytes / MIB;
    let result = serde_json::json!({
        "benchmark": "ingest-pull",
        "machine": machine(),
        "source_mib": mib,
        "part_size_mib": part_mib,
        "seconds": secs,
        "mib_per_s": mib as f64 / secs,
        "ceiling_http_mib_per_s": mib as f64 / ceiling_secs,
        "ceiling_store_upload_mib_per_s": mib as f64 / store_secs,
        "worker_peak_rss_mib": peak_kib as f64 / 1024.0,
        "worker_idle_peak_rss_mib": idle_kib as f64 / 1024.0,
    });
    let path = write_result("ingest-pull", &result)?;
    println!(
        "ingest-pull: {mib} MiB pulled by `reelfleet worker pull` into the embedded S3 in {secs:.1} s = {:.1} MiB/s \
         (a plain GET of the same body: {:.1} MiB/s; the same bytes from a file by multipart upload: {:.1} MiB/s); worker peak RSS {:.1} MiB ({:.1} MiB before the pull; parts of {part_mib} MiB) -> {}",
        mib as f64 / secs,
        mib as f64 / ceiling_secs,
        mib as f64 / store_secs,
        peak_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        path.display()
    );
    Ok(())
}
