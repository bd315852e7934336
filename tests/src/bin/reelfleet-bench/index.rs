//! `index [--jobs N] [--runs R]`: the job index at scale. N realistic rows
//! (`reelfleet index seed`'s mix, default 100,000) written into a fresh
//! PostgreSQL database (`TEST_POSTGRES_URL`'s server, as the tests use it)
//! and into SQLite in a temporary folder, then R times each (default 200)
//! the queries `reelfleet jobs` (and a console's jobs page) makes: the first
//! page, a filtered page (status + tier), a key search, the last hour's
//! costly jobs, and a deep page (the one after the 90,000th row of 100,000,
//! by its keyset cursor); p50 and p95 ms of each.

use super::{arg, machine, percentile, write_result};
use anyhow::Context;
use reelfleet_index::{JobFilter, JobIndex};
use reelfleet_tests::TestDatabase;
use std::time::Instant;

const PAGE: u32 = 50;

pub(crate) async fn index(args: &[String]) -> anyhow::Result<()> {
    let jobs = arg(args, "--jobs", 100_000)?;
    let runs = arg(args, "--runs", 200)?;
    let pg = TestDatabase::create().await;
    let dir = tempfile::Builder::new().prefix("reelfleet-bench-index-").tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("index.db").display());
    let mut results = serde_json::Map::new();
    for (name, url) in [("postgresql", pg.url.clone()), ("sqlite", sqlite)] {
        println!("index: {name}: seeding {jobs} jobs");
        let index = JobIndex::connect(&url, "bench").await.with_context(|| format!("{name} index"))?;
        let started = Instant::now();
        let now = chrono::Utc::now().timestamp_millis();
        let mut rows = reelfleet_index::seed::rows(jobs, now, 7, 42);
        for chunk in rows.chunks(1000) {
            index.put(chunk).await?;
        }
        // As `reelfleet index seed` does, and autovacuum would a while later.
        index.analyze().await?;
        let seed_secs = started.elapsed().as_secs_f64();
        // Nine tenths down the newest-first order: where OFFSET would scan 90,000 rows.
        rows.sort_by(|a, b| (b.created_ms, &b.job_id).cmp(&(a.created_ms, &a.job_id)));
        let deep = rows.get(jobs * 9 / 10).map(reelfleet_index::JobRow::cursor);
        let filtered = JobFilter { status: Some("failed".into()), tier: Some("high".into()), ..Default::default() };
        let search = JobFilter { search: Some("cam-0042/".into()), ..Default::default() };
        let since = JobFilter { since_ms: Some(now - 3_600_000), cost_above: Some(0.002), ..Default::default() };
        let cases: [(&str, &JobFilter, Option<&str>); 5] = [
            ("first_page", &JobFilter::default(), None),
            ("filtered_page", &filtered, None),
            ("search_page", &search, None),
            ("last_hour_costly_page", &since, None),
            ("deep_page", &JobFilter::default(), deep.as_deref()),
        ];
        let mut figures = serde_json::Map::new();
        figures.insert("seed_secs".into(), seed_secs.into());
        for (case, filter, after) in cases {
            let mut ms = Vec::with_capacity(runs);
            let mut rows = 0;
            for _ in 0..runs {
                let t = Instant::now();
                rows = index.list(filter, PAGE, after).await?.jobs.len();
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            let (p50, p95) = (percentile(&ms, 0.5), percentile(&ms, 0.95));
            println!("  {name:<10} {case:<22} rows {rows:>3}  p50 {p50:>7.2} ms  p95 {p95:>7.2} ms");
            figures.insert(case.into(), serde_json::json!({"rows": rows, "p50_ms": p50, "p95_ms": p95}));
        }
        results.insert(name.into(), figures.into());
    }
    let result = serde_json::json!({
        "bench": "index",
        "about": "the job index at scale: rows seeded by `reelfleet index seed`'s mix, then each query of `reelfleet jobs` \
                  (page of 50, newest first, keyset pagination) run `runs` times; the deep page starts 90% down",
        "machine": machine(),
        "jobs": jobs,
        "runs": runs,
        "page": PAGE,
        "results": results,
    });
    let path = write_result("index", &result)?;
    println!("  wrote {}", path.display());
    Ok(())
}
