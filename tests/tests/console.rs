//! The web console over HTTP (a cookie-keeping client, as a browser would)
//! against a real fleet in its own namespace: RabbitMQ, the embedded S3,
//! ffmpeg, the provider simulator, the index worker. What it claims is
//! checked where the fleet keeps it: the broker's queues, the manifests and
//! objects in S3, the job index.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::{
    console::{auth, Console, CSP},
    fleet::StageName,
};
use reelfleet_core::{
    manifest::JobStatus,
    settings::{ConsoleAccount, ConsoleRole, Secret},
    topology::WorkQueue,
};
use reelfleet_index::JobIndex;
use reelfleet_tests::{make_clip, TestStack};
use reqwest::{header, redirect::Policy, StatusCode};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

const STAGES: [StageName; 5] =
    [StageName::Ingest, StageName::Preprocess, StageName::Inference, StageName::Postprocess, StageName::Index];
const JOB_TIMEOUT: Duration = Duration::from_secs(240);
const OPERATOR_PASSWORD: &str = "olga-operates-the-fleet";
const VIEWER_PASSWORD: &str = "vic-only-looks-around";

fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap()
}

/// The value of the first `<input name="{name}" value="...">` of a page.
fn input_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no input {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// A client logged in as `user` and the CSRF token of its session (from the logout form).
async fn log_in(base: &str, user: &str, password: &str) -> (reqwest::Client, String) {
    let client = browser();
    let r =
        client.post(format!("{base}/login")).form(&[("username", user), ("password", password)]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{user} logs in");
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = input_value(&page.text().await.unwrap(), "csrf");
    (client, csrf)
}

fn assert_security_headers(r: &reqwest::Response) {
    let h = r.headers();
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{}", r.url());
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_guards_its_doors_streams_media_and_replays_a_dead_letter() {
    let stack = TestStack::start_stages(&STAGES, |s| s.retry.max_attempts = 2).await;
    stack.dev.simulator.configure(|c| c.error_rate = 1.0);
    let clip = make_clip(stack.dir.path(), "lobby.mp4", "testsrc2=size=320x240:rate=24", 1.0, &["-c:v", "libx264"]);
    let job = stack.upload("console/lobby.mp4", &clip).await;

    // No account: the console refuses to start, and says how to make one.
    let mut settings = stack.settings().clone();
    settings.console.session_key = Secret::new(reelfleet_core::signing::generate_key());
    let refusal = Console::new(Arc::new(settings.clone())).await.unwrap_err().to_string();
    assert!(refusal.contains("reelfleet console account"), "{refusal}");

    settings.console.secure_cookies = false;
    settings.console.login_attempts_per_minute = 5;
    for (name, password, role) in
        [("olga", OPERATOR_PASSWORD, ConsoleRole::Operator), ("vic", VIEWER_PASSWORD, ConsoleRole::Viewer)]
    {
        let password_hash = auth::hash_password(password).unwrap();
        settings.console.accounts.push(ConsoleAccount { name: name.into(), password_hash, role });
    }
    let console = Console::new(Arc::new(settings.clone())).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _server) = console.serve("127.0.0.1:0", stop.clone()).await.unwrap();
    let base = format!("http://{addr}");

    // Headers on every answer, a page, a refusal and a static file alike.
    let anonymous = browser();
    for path in ["/login", "/", "/jobs", "/static/console.js"] {
        let r = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert_security_headers(&r);
    }
    assert_eq!(anonymous.get(format!("{base}/jobs")).send().await.unwrap().status(), StatusCode::SEE_OTHER);

    // A wrong password and an unknown user get the same answer, and no cookie.
    let mut answers = Vec::new();
    for (user, password) in [("olga", "not-her-password"), ("nobody", OPERATOR_PASSWORD)] {
        let r = anonymous
            .post(format!("{base}/login"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.headers().get(header::SET_COOKIE).is_none());
        assert_security_headers(&r);
        answers.push(r.text().await.unwrap());
    }
    assert_eq!(answers[0], answers[1], "unknown user and wrong password answer alike");
    // Guessing is rate-limited per account; every unknown name shares one
    // count ("nobody" above was its first), so names made up by the
    // thousand add no rows to the state database and no argon2 work.
    let mut statuses = Vec::new();
    for user in ["mallory", "mallory", "mallory", "mallory", "mallory", "trudy", "olga"] {
        let r = anonymous
            .post(format!("{base}/login"))
            .form(&[("username", user), ("password", "guess")])
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(statuses[..4], [StatusCode::UNAUTHORIZED; 4], "{statuses:?}");
    assert_eq!(statuses[4..6], [StatusCode::TOO_MANY_REQUESTS; 2], "an unknown name, another: {statuses:?}");
    assert_eq!(statuses[6], StatusCode::UNAUTHORIZED, "olga's own count (her second attempt): {statuses:?}");

    // The job fails in inference and is dead-lettered.
    let failed = stack.wait_for(&job, JOB_TIMEOUT, |m| m.status == JobStatus::Failed).await;
    let dlq_name = stack.topology.dead_letter_queue(WorkQueue::Inference(failed.tier.unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.depth(&dlq_name).await == 0 {
        assert!(Instant::now() < deadline, "no dead letter in {dlq_name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The overview lists the queues.
    let (viewer, viewer_csrf) = log_in(&base, "vic", VIEWER_PASSWORD).await;
    let overview = viewer.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(overview.contains("<table id=\"queues\""), "{overview}");
    assert!(overview.contains(&format!("data-queue=\"{}\"", stack.queue(WorkQueue::Ingest))), "{overview}");

    // A viewer sees the dead letter but no replay button, and a replay it posts anyway is refused.
    let page = viewer.get(format!("{base}/dead-letters")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("data-job=\"{job}\"")), "{page}");
    assert!(!page.contains("id=\"replay\"") && !page.contains("id=\"purge\""), "{page}");
    let letter = input_value(&page, "select");
    let form = |csrf: &str| vec![("csrf", csrf.to_string()), ("action", "replay".into()), ("select", letter.clone())];
    let r = viewer.post(format!("{base}/dead-letters")).form(&form(&viewer_csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a viewer's replay");
    let confirm = |csrf: &str| {
        let mut f = form(csrf);
        f.push(("confirm", "yes".into()));
        f
    };
    let r = viewer.post(format!("{base}/dead-letters")).form(&confirm(&viewer_csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a viewer's confirmed replay");
    assert_eq!(stack.depth(&dlq_name).await, 1, "the dead letter is still there");

    // An operator's forged posts: no token, a wrong one, another session's, from another site.
    let (operator, csrf) = log_in(&base, "olga", OPERATOR_PASSWORD).await;
    let page = operator.get(format!("{base}/dead-letters")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"replay\"") && page.contains("id=\"purge\""), "{page}");
    let no_token = vec![("action", "replay".to_string()), ("select", letter.clone()), ("confirm", "yes".into())];
    let r = operator.post(format!("{base}/dead-letters")).form(&no_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    for wrong in ["00ff", viewer_csrf.as_str()] {
        let r = operator.post(format!("{base}/dead-letters")).form(&confirm(wrong)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "CSRF token {wrong}");
    }
    let r = operator
        .post(format!("{base}/dead-letters"))
        .header(header::ORIGIN, "https://evil.example")
        .form(&confirm(&csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a cross-site post");
    assert_eq!(stack.depth(&dlq_name).await, 1, "no forged post replayed it");

    // The dry run shows the dead letter and a confirm button, and changes nothing.
    let r = operator.post(format!("{base}/dead-letters")).form(&form(&csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dry = r.text().await.unwrap();
    assert!(dry.contains("id=\"confirm\"") && dry.contains(&format!("data-job=\"{job}\"")), "{dry}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&dlq_name).await, 1, "a dry run replays nothing");
    assert_eq!(stack.manifests.load(&job).await.unwrap().unwrap().status, JobStatus::Failed);

    // Confirmed, after the provider recovered: the job completes, as S3 and the broker say.
    stack.dev.simulator.configure(|c| c.error_rate = 0.0);
    let r = operator.post(format!("{base}/dead-letters")).form(&confirm(&csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let done = stack.wait_for(&job, JOB_TIMEOUT, |m| m.status == JobStatus::Completed).await;
    assert_eq!(stack.depth(&dlq_name).await, 0);

    // The audit event is in the job's events in the index, naming who replayed it.
    let index = JobIndex::connect(settings.index.url.expose(), &settings.namespace).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = index.events(&job).await.unwrap();
        let by = events.iter().find(|e| e.kind == "job.replayed").and_then(|e| e.body["by"].as_str().map(String::from));
        if let Some(by) = by {
            assert_eq!(by, "olga (operator)");
            break;
        }
        assert!(Instant::now() < deadline, "no job.replayed in the index: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The jobs page lists it; its page has the media, the timeline, the charges and the events.
    let jobs = viewer.get(format!("{base}/jobs")).send().await.unwrap().text().await.unwrap();
    assert!(jobs.contains(&format!("data-job=\"{job}\"")) && jobs.contains(&format!("href=\"/jobs/{job}\"")), "{jobs}");
    assert!(jobs.contains("<form id=\"filters\""), "{jobs}");
    let rows = viewer.get(format!("{base}/jobs/rows?status=completed")).send().await.unwrap().text().await.unwrap();
    assert!(rows.contains(&format!("data-job=\"{job}\"")), "{rows}");
    let page = viewer.get(format!("{base}/jobs/{job}")).send().await.unwrap().text().await.unwrap();
    for hook in [
        "img id=\"poster\"",
        "img id=\"sprite\"",
        "video id=\"rendition\"",
        "svg id=\"timeline\"",
        "table id=\"charges\"",
        "table id=\"events\"",
        "olga (operator)",
    ] {
        assert!(page.contains(hook), "{hook} missing from the job page: {page}");
    }

    // A rendition in ranges: exactly the requested bytes, as S3 holds them.
    let rendition = done.outputs.iter().find(|o| o.codec == "h264" && o.content_type == "video/mp4").unwrap();
    let whole = stack.read_object(&rendition.key).await;
    assert!(whole.len() > 2000, "{} bytes", whole.len());
    let url = format!("{base}/media/{job}/{}", rendition.key.strip_prefix(&format!("jobs/{job}/")).unwrap());
    let r = viewer.get(&url).header(header::RANGE, "bytes=100-1099").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[header::CONTENT_RANGE], format!("bytes 100-1099/{}", whole.len()).as_str());
    assert_security_headers(&r);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[100..1100]);
    let r = viewer.get(&url).header(header::RANGE, format!("bytes={}-", whole.len() - 10)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[whole.len() - 10..]);
    let r = viewer.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), whole.len());
    let r = viewer.get(&url).header(header::RANGE, format!("bytes={}-", whole.len())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Only the job's outputs, and only for someone logged in.
    let r = viewer.get(format!("{base}/media/{job}/manifest.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(anonymous.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // Logging out ends the session.
    let r = viewer.post(format!("{base}/logout")).form(&[("csrf", viewer_csrf.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(viewer.get(format!("{base}/jobs")).send().await.unwrap().status(), StatusCode::SEE_OTHER);

    stop.cancel();
    stack.cleanup().await;
}
