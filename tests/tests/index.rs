//! The job index: the events of real runs (upload through all four stages,
//! and an upload ingest refuses) indexed by the index worker in PostgreSQL
//! and in SQLite; redelivered and late events changing nothing; `index
//! rebuild` from the manifests equal to the live index; `reelfleet jobs`
//! filters and keyset pages on both databases, read back through the binary.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::SIGNATURE_HEADER,
    events::{self, sign_event, Event},
    settings::Secret,
};
use reelfleet_index::{JobFilter, JobIndex, JobRow};
use reelfleet_tests::{make_clip, TestDatabase, TestStack};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const STAGES: [StageName; 5] =
    [StageName::Ingest, StageName::Preprocess, StageName::Inference, StageName::Postprocess, StageName::Index];

/// Waits until the index's row of `job_id` satisfies `done`.
async fn wait_row(index: &JobIndex, job_id: &str, timeout: Duration, done: impl Fn(&JobRow) -> bool) -> JobRow {
    let deadline = Instant::now() + timeout;
    loop {
        let row = index.job(job_id).await.unwrap();
        if let Some(r) = row.as_ref().filter(|r| done(r)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "row of {job_id} not as expected in {timeout:?}: {row:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a rebuild and the live index must agree on (times of events aside).
fn indexed(r: &JobRow) -> JobRow {
    JobRow { updated_ms: 0, status_ms: 0, replayed_ms: 0, ..r.clone() }
}

/// Runs a clip and a text file through a fleet whose index is `url` (the
/// dev stack's SQLite when `None`), checks what the index says of both, then
/// that events again, late events and a rebuild change nothing.
async fn a_real_run_is_indexed(url: Option<String>) {
    let stack = TestStack::start_stages(&STAGES, |s| {
        if let Some(url) = url {
            s.index.url = Secret::new(url);
        }
    })
    .await;
    let settings = stack.settings().clone();
    assert!(!settings.index.url.expose().is_empty());
    let copy = stack.bind_events("#").await;
    let index = JobIndex::connect(settings.index.url.expose(), &settings.namespace).await.unwrap();

    let clip = make_clip(stack.dir.path(), "cam.mp4", "testsrc2=size=320x240:rate=25", 1.0, &["-c:v", "libx264"]);
    let good = stack.upload("cameras/lobby/cam.mp4", &clip).await;
    let text = stack.dir.path().join("notes.txt");
    std::fs::write(&text, "not a video").unwrap();
    let bad = stack.upload("cameras/lobby/notes.mp4", &text).await;

    let manifest = stack.wait_for(&good, Duration::from_secs(240), |m| m.status.to_string() == "completed").await;
    let row = wait_row(&index, &good, Duration::from_secs(30), |r| r.status == "completed").await;
    assert_eq!(row.kind.as_deref(), Some("analyze"));
    assert_eq!(row.bucket.as_deref(), Some(settings.s3.upload_bucket.as_str()));
    assert_eq!(row.key.as_deref(), Some("cameras/lobby/cam.mp4"));
    assert_eq!(row.tier, manifest.tier.map(|t| t.as_str().to_string()));
    assert_eq!(row.model, manifest.inference.as_ref().map(|i| i.model.clone()));
    assert!(row.model.is_some() && row.tier.is_some(), "{row:#?}");
    assert!((row.cost_usd - manifest.cost_usd()).abs() < 1e-12 && row.cost_usd > 0.0, "{row:#?}");
    for (i, stage) in reelfleet_index::row::TIMED_STAGES.iter().enumerate() {
        assert_eq!(row.stage_ms[i], manifest.stages.get(*stage).map(|t| t.duration_ms as i64), "{stage}");
    }
    let keys: Vec<&str> = manifest.outputs.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(row.outputs.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), keys);
    assert!(!keys.is_empty());

    let failed = wait_row(&index, &bad, Duration::from_secs(60), |r| r.status == "failed").await;
    assert_eq!(failed.error_stage.as_deref(), Some("ingest"));
    assert_eq!(failed.error_class.as_deref(), Some("permanent"));
    assert!(failed.error_message.as_deref().is_some_and(|m| !m.is_empty()), "{failed:#?}");

    // Every transition of the completed job is among its events, the charge with its model.
    let kinds: Vec<String> = index.events(&good).await.unwrap().into_iter().map(|e| e.kind).collect();
    for kind in
        [events::JOB_CREATED, events::STAGE_STARTED, events::STAGE_FINISHED, events::JOB_CHARGED, events::JOB_COMPLETED]
    {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
    for stage in ["preprocess", "inference", "postprocess"] {
        let finished = index
            .events(&good)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == events::STAGE_FINISHED && e.stage.as_deref() == Some(stage));
        assert_eq!(finished.count(), 1, "stage.finished of {stage}");
    }

    // What the broker carried, as it carried it: every event again, in reverse order.
    let seen = index.events(&good).await.unwrap().len() + index.events(&bad).await.unwrap().len();
    let carried = stack.take_messages(&copy, seen, Duration::from_secs(10)).await;
    let before = (index.job(&good).await.unwrap(), index.job(&bad).await.unwrap());
    let mut again = Vec::new();
    for (headers, body) in carried.iter().rev() {
        let e: Event = serde_json::from_slice(body).unwrap();
        let msg = Outgoing {
            exchange: stack.topology.events_exchange(),
            routing_key: e.event.clone(),
            body: body.clone(),
            ..Default::default()
        };
        again.push(msg.header(SIGNATURE_HEADER, HeaderValue::Text(headers[SIGNATURE_HEADER].clone())));
    }
    // Late transitions with ids of their own: a stage starting again and a failure,
    // both dated before the completion.
    let signer = stack.signer();
    let mut late_start = Event::new(events::STAGE_STARTED, &good);
    (late_start.stage, late_start.at) =
        (Some("preprocess".into()), chrono::DateTime::from_timestamp_millis(row.created_ms + 1).unwrap());
    let mut late_failure = Event::new(events::JOB_FAILED, &good);
    late_failure.at = late_start.at;
    for e in [late_start, late_failure] {
        again.push(sign_event(&signer, &stack.topology, e.event.clone(), e.to_bytes()));
    }
    // A marker job, last: once it is indexed, everything before it was handled.
    let marker = Event::new(events::JOB_CREATED, "marker");
    again.push(sign_event(&signer, &stack.topology, marker.event.clone(), marker.to_bytes()));
    for msg in again {
        stack.publish(msg).await;
    }
    wait_row(&index, "marker", Duration::from_secs(30), |_| true).await;
    let index_queue = stack.queue(reelfleet_core::topology::WorkQueue::Index);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.depth(&index_queue).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = (index.job(&good).await.unwrap(), index.job(&bad).await.unwrap());
    assert_eq!(after.0.as_ref().map(indexed), before.0.as_ref().map(indexed), "the completed job's row");
    assert_eq!(after.1.as_ref().map(indexed), before.1.as_ref().map(indexed), "the failed job's row");
    let seen_after = index.events(&good).await.unwrap().len() + index.events(&bad).await.unwrap().len();
    assert_eq!(seen_after, seen + 2, "events again are not stored again; the two late ones are");
    assert_eq!(stack.depth(&stack.topology.dead_letter_queue(reelfleet_core::topology::WorkQueue::Index)).await, 0);

    // A replayed dead letter reopens the failed job; ingest refuses it again, later.
    let filter = reelfleet_cli::dlq::DlqFilter { job: Some(bad.clone()), ..Default::default() };
    let replayed = reelfleet_cli::dlq::replay(&settings, &filter, None, false).await.unwrap();
    assert_eq!(replayed.replayed, 1, "{replayed:?}");
    let again = wait_row(&index, &bad, Duration::from_secs(60), |r| r.replayed_ms > 0 && r.status == "failed").await;
    assert!(again.status_ms >= again.replayed_ms, "failed again after the replay: {again:#?}");
    assert_eq!(again.error_class.as_deref(), Some("permanent"));
    let kinds: Vec<String> = index.events(&bad).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&events::JOB_REPLAYED.to_string()), "{kinds:?}");

    // The index rebuilt from the manifests says what the live one said.
    index.remove(&["marker".to_string()]).await.unwrap();
    let live: BTreeMap<String, JobRow> = index
        .list(&JobFilter::default(), 100, None)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|r| (r.job_id.clone(), r))
        .collect();
    let report = reelfleet_cli::index::rebuild(&settings, &index, false).await.unwrap();
    assert_eq!(report.jobs, 2);
    let rebuilt: BTreeMap<String, JobRow> = index
        .list(&JobFilter::default(), 100, None)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|r| (r.job_id.clone(), r))
        .collect();
    assert_eq!(rebuilt.keys().collect::<Vec<_>>(), live.keys().collect::<Vec<_>>());
    for (id, r) in &rebuilt {
        let l = &live[id];
        assert_eq!(JobRow { summary_ms: 0, ..indexed(r) }, JobRow { summary_ms: 0, ..indexed(l) }, "{id}");
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_run_is_indexed_in_postgresql() {
    let db = TestDatabase::create().await;
    a_real_run_is_indexed(Some(db.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_run_is_indexed_in_sqlite_in_the_data_folder() {
    a_real_run_is_indexed(None).await;
}

/// Which seeded rows a filter must select.
type Keep = Box<dyn Fn(&JobRow) -> bool>;

/// Seeds `n` rows and checks every filter and a walk through all pages
/// against the same rows filtered and sorted here; then the binary's
/// `reelfleet jobs --json` against the query layer.
async fn jobs_filters_and_pages(url: &str) {
    let ns = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let index = JobIndex::connect(url, &ns).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows = reelfleet_index::seed::rows(1500, now, 3, 7);
    // Equal creation times: the job id alone orders them, and pages must neither repeat nor skip one.
    for r in rows.iter_mut().take(40) {
        r.created_ms = now - 1000;
    }
    index.put(&rows).await.unwrap();
    let other = JobIndex::connect(url, &format!("{ns}-other")).await.unwrap();
    other.put(&reelfleet_index::seed::rows(50, now, 3, 8)).await.unwrap();

    let mut all = rows.clone();
    all.sort_by(|a, b| (b.created_ms, &b.job_id).cmp(&(a.created_ms, &a.job_id)));
    let since = now - 86_400_000;
    let needle = rows[3].key.clone().unwrap()[..16].to_uppercase();
    let cases: Vec<(JobFilter, Keep)> = vec![
        (JobFilter::default(), Box::new(|_| true)),
        (JobFilter { status: Some("failed".into()), ..Default::default() }, Box::new(|r| r.status == "failed")),
        (
            JobFilter { tier: Some("high".into()), ..Default::default() },
            Box::new(|r| r.tier.as_deref() == Some("high")),
        ),
        (
            JobFilter { model: Some("gemini-2.5-flash".into()), ..Default::default() },
            Box::new(|r| r.model.as_deref() == Some("gemini-2.5-flash")),
        ),
        (JobFilter { since_ms: Some(since), ..Default::default() }, Box::new(move |r| r.created_ms >= since)),
        (JobFilter { cost_above: Some(0.003), ..Default::default() }, Box::new(|r| r.cost_usd > 0.003)),
        (
            JobFilter { search: Some(needle.clone()), ..Default::default() },
            Box::new({
                let n = needle.to_lowercase();
                move |r| r.key.as_deref().is_some_and(|k| k.to_lowercase().contains(&n))
            }),
        ),
        (
            JobFilter {
                status: Some("completed".into()),
                tier: Some("low".into()),
                since_ms: Some(since),
                ..Default::default()
            },
            Box::new(move |r| r.status == "completed" && r.tier.as_deref() == Some("low") && r.created_ms >= since),
        ),
    ];
    for (filter, keep) in &cases {
        let want: Vec<&str> = all.iter().filter(|r| keep(r)).map(|r| r.job_id.as_str()).collect();
        assert!(!want.is_empty(), "{filter:?} selects nothing: a weak case");
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = index.list(filter, 37, after.as_deref()).await.unwrap();
            assert!(page.jobs.len() <= 37);
            got.extend(page.jobs.iter().map(|r| r.job_id.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(got, want, "{filter:?}");
    }
    let first = index.list(&JobFilter::default(), 5, None).await.unwrap();
    assert_eq!(first.jobs, all[..5].to_vec(), "rows read back as written");
    assert!(index.list(&JobFilter::default(), 5, Some("not-a-cursor")).await.is_err());

    // The binary reads the same pages.
    let bin = reelfleet_tests::fleet::reelfleet_binary().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(["jobs", "--json"])
            .args(args)
            .env("REELFLEET_INDEX__URL", url)
            .env("REELFLEET_NAMESPACE", &ns)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let page = run(&["--status", "failed", "--tier", "low", "--limit", "3"]);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap().to_string()).collect()
    };
    let want: Vec<String> = all
        .iter()
        .filter(|r| r.status == "failed" && r.tier.as_deref() == Some("low"))
        .map(|r| r.job_id.clone())
        .collect();
    assert_eq!(ids(&page), want[..3].to_vec());
    let next = page["next"].as_str().unwrap().to_string();
    let second = run(&["--status", "failed", "--tier", "low", "--limit", "3", "--after", &next]);
    assert_eq!(ids(&second), want[3..6].to_vec());
    let costly = run(&["--cost-above", "0.01", "--search", "CAM-", "--since", "2d", "--limit", "1000"]);
    let cut = now - 2 * 86_400_000;
    let want: Vec<String> = all
        .iter()
        .filter(|r| {
            r.cost_usd > 0.01 && r.key.as_deref().is_some_and(|k| k.contains("cam-")) && r.created_ms >= cut - 5_000
        })
        .map(|r| r.job_id.clone())
        .collect();
    let got = ids(&costly);
    assert!(!got.is_empty() && got.iter().all(|id| want.contains(id)), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_filters_and_pages_on_postgresql() {
    let db = TestDatabase::create().await;
    jobs_filters_and_pages(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_filters_and_pages_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    jobs_filters_and_pages(&format!("sqlite://{}", dir.path().join("index.db").display())).await;
}
