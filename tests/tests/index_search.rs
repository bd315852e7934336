//! Key search in the job index (`reelfleet jobs --search`, the console's
//! search box): on PostgreSQL (pg_trgm's index) and SQLite (FTS5's trigram
//! tokenizer) it returns exactly what a plain filter over the same rows
//! returns: a case-blind substring of the source key, `%`, `_`, `\` and `"`
//! taken literally, searches of one and two characters (which no trigram
//! index serves) as well as longer ones, sparse and dense matches; after rows
//! are inserted, rewritten with new keys and removed; and after an index
//! made before the trigram index was upgraded.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_index::{store::Dialect, JobFilter, JobIndex, JobRow};
use reelfleet_tests::TestDatabase;
use sqlx::Executor;

/// Keys the seeded mix does not have: LIKE's wildcards and escape, FTS5's
/// quote, mixed case, lowercase non-ASCII, very short keys, none at all.
const ODD_KEYS: &[Option<&str>] = &[
    Some("uploads/100%_real/clip.mp4"),
    Some("uploads/100x_real/clip.mp4"),
    Some("uploads/a_b.mp4"),
    Some("uploads/axb.mp4"),
    Some("uploads/a%b.mp4"),
    Some(r"uploads\windows\Clip.MP4"),
    Some(r"uploads/back\\slash.mp4"),
    Some("uploads/\"quoted\" name.mp4"),
    Some("uploads/say \"hi\" now.mp4"),
    Some("uploads/MiXeD/CaSe.Mp4"),
    Some("vidéos/été/plage.mp4"),
    Some("x"),
    Some("ab"),
    Some(""),
    None,
];

/// Searches of 1, 2, 3 and more characters, with every special character.
const SEARCHES: &[&str] = &[
    "a",
    "X",
    "%",
    "_",
    "\\",
    "\"",
    "é",
    "ab",
    "A_",
    "%_",
    "0%",
    "\\w",
    "\\\\",
    "cam",
    "CAM-",
    "cam-004",
    "cam-0042/",
    "clip-1",
    "100%",
    "100%_",
    "0%_r",
    "a_b",
    "a%b",
    "\"quoted\"",
    "\"quoted\" n",
    "\"hi\" now",
    "say \"hi",
    "\\windows\\clip",
    "back\\\\s",
    "mixed/case.MP4",
    "ÉTÉ/",
    "vidéos/été",
    "prompts/",
    ".json",
    "no such key anywhere",
    "%%%",
    "___",
];

/// What the index must answer: the rows whose key holds `search` (both
/// lowered; non-ASCII case is the database's business, so the keys here are
/// lowercase beyond ASCII), newest first.
fn expected(rows: &[JobRow], search: &str) -> Vec<String> {
    let needle = search.to_lowercase();
    let mut hits: Vec<&JobRow> =
        rows.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.to_ascii_lowercase().contains(&needle))).collect();
    hits.sort_by(|a, b| (b.created_ms, &b.job_id).cmp(&(a.created_ms, &a.job_id)));
    hits.into_iter().map(|r| r.job_id.clone()).collect()
}

/// Every page of a search, walked by its cursors.
async fn search(index: &JobIndex, text: &str, page: u32) -> Vec<String> {
    let filter = JobFilter { search: Some(text.to_string()), ..Default::default() };
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let p = index.list(&filter, page, after.as_deref()).await.unwrap();
        got.extend(p.jobs.into_iter().map(|r| r.job_id));
        match p.next {
            Some(next) => after = Some(next),
            None => return got,
        }
    }
}

/// Every search against the plain filter; returns how many matched something.
async fn check_all(index: &JobIndex, rows: &[JobRow], when: &str) -> usize {
    let mut nonempty = 0;
    for text in SEARCHES {
        let want = expected(rows, text);
        let got = search(index, text, 500).await;
        assert_eq!(got.len(), want.len(), "{when}: search {text:?} finds {} rows, not {}", got.len(), want.len());
        assert_eq!(got, want, "{when}: search {text:?}");
        nonempty += usize::from(!want.is_empty());
    }
    nonempty
}

/// The seeded mix (dense "cam-" keys, sparse "cam-0042/") and the odd keys,
/// all created at distinct times.
fn rows(now: i64) -> Vec<JobRow> {
    let mut rows = reelfleet_index::seed::rows(3000, now, 3, 11);
    for (i, key) in ODD_KEYS.iter().enumerate() {
        rows.push(JobRow {
            job_id: format!("odd-{i:02}"),
            status: "completed".into(),
            key: key.map(str::to_string),
            created_ms: now - 1000 - i as i64,
            updated_ms: now,
            status_ms: now,
            ..Default::default()
        });
    }
    rows
}

async fn key_search_is_a_substring_filter(url: &str) {
    let ns = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let index = JobIndex::connect(url, &ns).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows = rows(now);
    index.put(&rows).await.unwrap();
    // Another namespace's keys never show.
    let other = JobIndex::connect(url, &format!("{ns}-other")).await.unwrap();
    other.put(&reelfleet_index::seed::rows(200, now, 3, 12)).await.unwrap();

    let nonempty = check_all(&index, &rows, "seeded").await;
    assert!(nonempty >= SEARCHES.len() - 4, "most searches find something: {nonempty}");
    assert!(expected(&rows, "cam").len() > 1000, "a dense search: more candidates than the trigram index is used for");
    let sparse = expected(&rows, "cam-0042/").len();
    assert!((1..50).contains(&sparse), "a sparse search: {sparse} rows");
    // Small pages: keyset pagination under a search.
    assert_eq!(search(&index, "cam-004", 7).await, expected(&rows, "cam-004"));

    // Keys rewritten (an upsert), rows removed: the trigram index follows.
    for (i, r) in rows.iter_mut().enumerate().filter(|(i, _)| i % 10 == 0) {
        r.key = Some(format!("moved/{i}/100%_Moved\\{}", r.key.clone().unwrap_or_default()));
    }
    let changed: Vec<JobRow> = rows.iter().step_by(10).cloned().collect();
    index.put(&changed).await.unwrap();
    let gone: Vec<String> = rows.iter().skip(5).step_by(10).map(|r| r.job_id.clone()).collect();
    index.remove(&gone).await.unwrap();
    rows.retain(|r| !gone.contains(&r.job_id));
    check_all(&index, &rows, "after rewrites and removals").await;
    assert_eq!(search(&index, "MOVED/", 500).await, expected(&rows, "moved/"));
    assert!(!expected(&rows, "moved/").is_empty());

    // An index made before the trigram index (migration 1 only), with rows
    // written then, upgrades on connect and finds them.
    let pool = reelfleet_core::fleetstate::open_pool(url).await.unwrap();
    let downgrade: &[&str] = match index.dialect() {
        Dialect::Postgres => &["DROP INDEX rf_jobs_key_trigrams"],
        Dialect::Sqlite => &[
            "DROP TRIGGER rf_jobs_key_trigrams_insert",
            "DROP TRIGGER rf_jobs_key_trigrams_delete",
            "DROP TRIGGER rf_jobs_key_trigrams_update",
            "DROP TABLE rf_jobs_key_trigrams",
        ],
    };
    for statement in downgrade.iter().chain(&["DELETE FROM rf_index_migrations WHERE version >= 2"]) {
        pool.execute(*statement).await.unwrap();
    }
    let late: Vec<JobRow> = reelfleet_index::seed::rows(300, now, 3, 13)
        .into_iter()
        .map(|r| JobRow { key: r.key.map(|k| format!("late/{k}")), ..r })
        .collect();
    index.put(&late).await.unwrap();
    rows.extend(late);
    let upgraded = JobIndex::connect(url, &ns).await.unwrap();
    check_all(&upgraded, &rows, "after the upgrade").await;
    assert_eq!(search(&upgraded, "LATE/cam", 500).await, expected(&rows, "late/cam"));

    if index.dialect() == Dialect::Sqlite {
        // FTS5 checks its index against rf_jobs, row by row.
        pool.execute("INSERT INTO rf_jobs_key_trigrams (rf_jobs_key_trigrams, rank) VALUES ('integrity-check', 1)")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_search_is_a_substring_filter_on_postgresql() {
    let db = TestDatabase::create().await;
    key_search_is_a_substring_filter(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_search_is_a_substring_filter_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    key_search_is_a_substring_filter(&format!("sqlite://{}", dir.path().join("index.db").display())).await;
}

/// PostgreSQL uses the trigram index for a sparse search: the plan says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_plans_a_sparse_search_on_the_trigram_index() {
    let db = TestDatabase::create().await;
    let index = JobIndex::connect(&db.url, "plan").await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in reelfleet_index::seed::rows(20_000, now, 7, 3).chunks(1000) {
        index.put(chunk).await.unwrap();
    }
    index.analyze().await.unwrap();
    let pool = reelfleet_core::fleetstate::open_pool(&db.url).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT job_id FROM rf_jobs WHERE ns = 'plan' AND LOWER(source_key) LIKE '%cam-0042/%' ESCAPE '\\'
         ORDER BY created_ms DESC, job_id DESC LIMIT 51",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains("rf_jobs_key_trigrams")), "{}", plan.join("\n"));
}

/// A role that may not create pg_trgm gets a message saying what to do;
/// where pg_trgm is already there, it needs no such right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_without_pg_trgm_says_what_to_do() {
    for installed in [false, true] {
        let db = TestDatabase::create().await;
        let pool = reelfleet_core::fleetstate::open_pool(&db.url).await.unwrap();
        if installed {
            pool.execute("CREATE EXTENSION pg_trgm").await.unwrap();
        }
        let name = db.url.rsplit('/').next().unwrap().to_string();
        pool.execute(format!("REVOKE CREATE ON DATABASE {name} FROM PUBLIC, CURRENT_USER").as_str()).await.unwrap();
        pool.close().await;
        let connected = JobIndex::connect(&db.url, "t").await;
        if installed {
            connected.unwrap();
        } else {
            let text = connected.unwrap_err().to_string();
            assert!(text.contains("pg_trgm") && text.contains("CREATE EXTENSION pg_trgm"), "{text}");
        }
    }
}
