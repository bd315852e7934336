//! `console [--jobs N] [--runs R]`: the web console's pages at scale. N
//! realistic rows (`reelfleet index seed`'s mix, default 100,000) in a fresh
//! PostgreSQL database (`TEST_POSTGRES_URL`'s server) and in SQLite, each
//! behind a real `reelfleet console` server (the same router, on a local
//! port, with the embedded S3 and the shared RabbitMQ behind it), logged in
//! over HTTP like a browser; then R times each (default 200) the full HTTP
//! round trip of: the overview (queues from the broker, jobs per status
//! over the last hour and today's cost per tier from the index), the jobs
//! page (first page, a filtered page, a key search, a deep page 90% down by
//! its keyset cursor) and the live rows the jobs page polls. p50 and p95 ms,
//! measured by the client, against the goal (p95 at most 100 ms).

use super::{arg, bench_settings, machine, percentile, write_result};
use anyhow::Context;
use reelfleet_cli::console::{auth, Console};
use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::Broker,
    events::Event,
    settings::{ConsoleAccount, ConsoleRole, Secret},
    storage::Storage,
    topology::Topology,
};
use reelfleet_index::{JobFilter, JobIndex, JobRow};
use reelfleet_tests::{
    fleet::{delete_namespace, start_dev},
    make_clip, TestDatabase,
};
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

const GOAL_P95_MS: f64 = 100.0;

pub(crate) async fn console(args: &[String]) -> anyhow::Result<()> {
    let jobs = arg(args, "--jobs", 100_000)?;
    let runs = arg(args, "--runs", 200)?;
    let pg = TestDatabase::create().await;
    let dir = tempfile::Builder::new().prefix("reelfleet-bench-console-").tempdir()?;
    // The fleet runs one real job first, so the job page measured is a
    // completed job's (manifest, outputs, charges, events), not a seeded row.
    let mut stages = StageName::ALL.to_vec();
    stages.push(StageName::Index);
    let dev = start_dev(bench_settings("console"), dir.path(), &stages).await?;
    let password = auth::generate_password();
    let mut results = serde_json::Map::new();
    let outcome = async {
        let (real, real_events) = real_job(&dev.settings, dir.path()).await?;
        for (name, url) in [
            ("postgresql", pg.url.clone()),
            ("sqlite", format!("sqlite://{}", dir.path().join("console-index.db").display())),
        ] {
            println!("console: {name}: seeding {jobs} jobs");
            let index =
                JobIndex::connect(&url, &dev.settings.namespace).await.with_context(|| format!("{name} index"))?;
            let now = chrono::Utc::now().timestamp_millis();
            let mut rows = reelfleet_index::seed::rows(jobs, now, 7, 42);
            for chunk in rows.chunks(1000) {
                index.put(chunk).await?;
            }
            index.analyze().await?;
            rows.sort_by(|a, b| (b.created_ms, &b.job_id).cmp(&(a.created_ms, &a.job_id)));
            let deep = rows.get(jobs * 9 / 10).map(reelfleet_index::JobRow::cursor).unwrap_or_default();
            drop(rows);
            index.put(std::slice::from_ref(&real)).await?;
            for e in &real_events {
                let event: Event = serde_json::from_value(e.body.clone())?;
                index.apply(&event, &serde_json::to_vec(&e.body)?).await?;
            }
            let job = real.job_id.clone();

            let mut settings = (*dev.settings).clone();
            settings.index.url = Secret::new(url.clone());
            settings.console.secure_cookies = false;
            settings.console.accounts = vec![ConsoleAccount {
                name: "bench".into(),
                password_hash: auth::hash_password(&password)?,
                role: ConsoleRole::Viewer,
            }];
            let console = Console::new(Arc::new(settings)).await?;
            let stop = CancellationToken::new();
            let (addr, server) = console.serve("127.0.0.1:0", stop.clone()).await?;
            let base = format!("http://{addr}");
            let http =
                reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build()?;
            let login = http
                .post(format!("{base}/login"))
                .header("Origin", &base)
                .form(&[("username", "bench"), ("password", password.as_str())])
                .send()
                .await?;
            anyhow::ensure!(login.status().is_redirection(), "login refused: {}", login.status());

            let deep_q: String =
                url::form_urlencoded::Serializer::new(String::new()).append_pair("after", &deep).finish();
            let cases: Vec<(&str, String)> = vec![
                ("overview", "/".into()),
                ("jobs_first_page", "/jobs".into()),
                ("jobs_filtered_page", "/jobs?status=failed&tier=high".into()),
                ("jobs_search_page", "/jobs?q=cam-0042%2F".into()),
                ("jobs_deep_page", format!("/jobs?{deep_q}")),
                ("jobs_live_rows", "/jobs/rows".into()),
                ("job_page", format!("/jobs/{job}")),
            ];
            let mut figures = serde_json::Map::new();
            for (case, path) in cases {
                let mut ms = Vec::with_capacity(runs);
                let mut bytes = 0;
                for _ in 0..runs {
                    let t = Instant::now();
                    let r = http.get(format!("{base}{path}")).send().await?;
                    let status = r.status();
                    let body = r.bytes().await?;
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    anyhow::ensure!(status.is_success(), "{case}: GET {path} answered {status}");
                    bytes = body.len();
                }
                ms.sort_by(f64::total_cmp);
                let (p50, p95) = (percentile(&ms, 0.5), percentile(&ms, 0.95));
                let verdict = if p95 <= GOAL_P95_MS { "ok" } else { "OVER" };
                println!("  {name:<10} {case:<20} {bytes:>7} B  p50 {p50:>7.2} ms  p95 {p95:>7.2} ms  {verdict}");
                figures.insert(
                    case.into(),
                    serde_json::json!({"path": path, "bytes": bytes, "p50_ms": p50, "p95_ms": p95}),
                );
            }
            stop.cancel();
            let _ = server.await;
            results.insert(name.into(), figures.into());
        }
        anyhow::Ok(())
    }
    .await;
    let broker = Broker::new(&dev.settings.broker, "bench")?;
    let topology = Topology::from_settings(&dev.settings);
    dev.stop().await;
    delete_namespace(&broker, &topology).await;
    outcome?;
    let result = serde_json::json!({
        "bench": "console",
        "about": "the console's pages over HTTP (login cookie, full round trip measured by the client) with the index \
                  seeded at `jobs` rows by `reelfleet index seed`'s mix; each page `runs` times; goal p95 <= 100 ms",
        "machine": machine(),
        "jobs": jobs,
        "runs": runs,
        "goal_p95_ms": GOAL_P95_MS,
        "results": results,
    });
    let path = write_result("console", &result)?;
    println!("  wrote {}", path.display());
    Ok(())
}

/// Uploads a 3-second clip to the running fleet and waits until its own
/// index (the dev stack's, fed by the index worker) has the job completed
/// and its `job.completed` event: that row and its events, to put into the
/// benchmark's databases.
async fn real_job(
    settings: &reelfleet_core::settings::Settings,
    dir: &Path,
) -> anyhow::Result<(JobRow, Vec<reelfleet_index::StoredEvent>)> {
    println!("console: running one real job for the job page");
    let clip = make_clip(dir, "console-bench.mp4", "testsrc2=size=640x360:rate=25", 3.0, &["-c:v", "libx264"]);
    let storage = Storage::new(&settings.s3);
    storage.upload(&settings.s3.upload_bucket, "bench/console-bench.mp4", &clip, "video/mp4").await?;
    let index = JobIndex::connect(settings.index.url.expose(), &settings.namespace).await?;
    let done = JobFilter { status: Some("completed".into()), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(row) = index.list(&done, 1, None).await?.jobs.into_iter().next() {
            let events = index.events(&row.job_id).await?;
            if events.iter().any(|e| e.kind == "job.completed") {
                println!("console: job {} completed ({} events)", row.job_id, events.len());
                return Ok((row, events));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the real job did not complete in the index within 300 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
