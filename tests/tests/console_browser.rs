//! The web console used as a person would: headless Chromium (Debian's
//! package, through its chromedriver) against `reelfleet console` over a
//! real fleet in its own namespace (RabbitMQ, the embedded S3, ffmpeg, the
//! provider simulator, the index worker). A viewer logs in and looks around:
//! the overview shows the queues, the jobs page the jobs just run, a job's
//! thumbnails decode and its rendition plays; the viewer gets no replay
//! button and a POST forged from the page is refused. An operator replays a
//! dead letter (dry run, then confirm) and watches the job complete on the
//! jobs page, which updates itself. What the browser is shown is checked
//! against what the fleet keeps (manifests in S3, the dead-letter queue on
//! the broker). Every page is saved as a screenshot in
//! `bench/results/console/` (the README shows them).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_cli::{
    console::{auth, Console},
    fleet::StageName,
};
use reelfleet_core::{
    manifest::JobStatus,
    settings::{ConsoleAccount, ConsoleRole, Secret},
    topology::WorkQueue,
};
use reelfleet_tests::{browser::Browser, make_clip, TestStack};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

const STAGES: [StageName; 5] =
    [StageName::Ingest, StageName::Preprocess, StageName::Inference, StageName::Postprocess, StageName::Index];
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const OPERATOR_PASSWORD: &str = "olga-operates-the-fleet";
const VIEWER_PASSWORD: &str = "vic-only-looks-around";

async fn log_in(browser: &Browser, base: &str, user: &str, password: &str) {
    browser.goto(&format!("{base}/login")).await.unwrap();
    browser.fill("form#login input[name=username]", user).await.unwrap();
    browser.fill("form#login input[name=password]", password).await.unwrap();
    browser.click("form#login button[type=submit]").await.unwrap();
    browser.find("form#logout").await.unwrap_or_else(|e| panic!("{user} is not logged in: {e:#}"));
}

async fn log_out(browser: &Browser) {
    browser.click("form#logout button").await.unwrap();
    browser.find("form#login").await.unwrap();
}

/// Waits until the image `css` has loaded, and returns its natural width.
async fn natural_width(browser: &Browser, css: &str) -> u64 {
    let el = format!("document.querySelector('{css}')");
    browser.wait_until(&format!("{el} && {el}.complete"), Duration::from_secs(15)).await.unwrap();
    browser.eval(&format!("return {el}.naturalWidth;")).await.unwrap().as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_looks_around_and_an_operator_replays_a_dead_letter_in_chromium() {
    let stack = TestStack::start_stages(&STAGES, |s| s.retry.max_attempts = 2).await;
    let clip = make_clip(stack.dir.path(), "lobby.mp4", "testsrc2=size=640x360:rate=24", 2.0, &["-c:v", "libx264"]);
    // One job completes; the next fails in inference and is dead-lettered.
    let done = stack.upload("console/lobby.mp4", &clip).await;
    let done_m = stack.wait_for(&done, JOB_TIMEOUT, |m| m.status == JobStatus::Completed).await;
    stack.dev.simulator.configure(|c| c.error_rate = 1.0);
    let clip2 = make_clip(stack.dir.path(), "yard.mp4", "testsrc=size=320x240:rate=24", 1.0, &["-c:v", "libx264"]);
    let dead = stack.upload("console/yard.mp4", &clip2).await;
    let failed = stack.wait_for(&dead, JOB_TIMEOUT, |m| m.status == JobStatus::Failed).await;
    let dlq = stack.topology.dead_letter_queue(WorkQueue::Inference(failed.tier.unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.depth(&dlq).await == 0 {
        assert!(Instant::now() < deadline, "no dead letter in {dlq}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut settings = stack.settings().clone();
    settings.console.session_key = Secret::new(reelfleet_core::signing::generate_key());
    settings.console.secure_cookies = false;
    for (name, password, role) in
        [("olga", OPERATOR_PASSWORD, ConsoleRole::Operator), ("vic", VIEWER_PASSWORD, ConsoleRole::Viewer)]
    {
        let password_hash = auth::hash_password(password).unwrap();
        settings.console.accounts.push(ConsoleAccount { name: name.into(), password_hash, role });
    }
    let console = Console::new(Arc::new(settings)).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _server) = console.serve("127.0.0.1:0", stop.clone()).await.unwrap();
    let base = format!("http://{addr}");
    let browser = Browser::start().await.unwrap();

    // The login page; a wrong password is refused and says so.
    browser.goto(&format!("{base}/jobs")).await.unwrap();
    browser.find("form#login").await.unwrap();
    browser.screenshot("login").await.unwrap();
    browser.fill("form#login input[name=username]", "vic").await.unwrap();
    browser.fill("form#login input[name=password]", "not-his-password").await.unwrap();
    browser.click("form#login button[type=submit]").await.unwrap();
    // The refusal's page (not the form the click was made on) is loaded.
    browser
        .wait_until("document.body.innerText.includes('Unknown user or wrong password')", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("no refusal shown for a wrong password: {e:#}"));
    browser.find("form#login").await.unwrap();
    assert!(
        browser.find_within("form#logout", Duration::from_millis(300)).await.is_err(),
        "logged in with a wrong password"
    );

    // A viewer: the overview lists the fleet's queues.
    log_in(&browser, &base, "vic", VIEWER_PASSWORD).await;
    browser.goto(&format!("{base}/")).await.unwrap();
    for queue in [WorkQueue::Ingest, WorkQueue::Preprocess, WorkQueue::Postprocess] {
        browser.find(&format!("table#queues tr[data-queue='{}']", stack.queue(queue))).await.unwrap();
    }
    browser.screenshot("overview").await.unwrap();

    // The jobs page lists both jobs just run.
    browser.goto(&format!("{base}/jobs")).await.unwrap();
    for job in [&done, &dead] {
        browser.find(&format!("table#jobs tr[data-job='{job}']")).await.unwrap();
    }
    browser.screenshot("jobs").await.unwrap();

    // The completed job's page: thumbnails decode, the rendition plays.
    browser.click(&format!("table#jobs tr[data-job='{done}'] a[href='/jobs/{done}']")).await.unwrap();
    browser.find("svg#timeline").await.unwrap();
    assert!(natural_width(&browser, "img#poster").await > 0, "the poster does not decode");
    assert!(natural_width(&browser, "img#sprite").await > 0, "the sprite does not decode");
    browser.find("table#charges").await.unwrap();
    browser.find("table#events").await.unwrap();
    browser
        .eval("const v = document.getElementById('rendition'); v.muted = true; v.play(); return true;")
        .await
        .unwrap();
    let playing =
        browser.wait_until("document.getElementById('rendition').currentTime > 0.3", Duration::from_secs(20)).await;
    let state = browser
        .eval("const v = document.getElementById('rendition'); return {src: v.currentSrc, error: v.error && v.error.code, ready: v.readyState};")
        .await
        .unwrap();
    playing.unwrap_or_else(|e| panic!("the rendition does not play: {e:#}; {state}"));
    let src = state["src"].as_str().unwrap_or_default().to_string();
    assert!(
        done_m.outputs.iter().any(|o| src.ends_with(o.key.strip_prefix(&format!("jobs/{done}/")).unwrap_or("-"))),
        "the video plays {src}, not one of the job's outputs"
    );
    browser.eval("document.getElementById('rendition').pause(); return true;").await.unwrap();
    browser.screenshot("job").await.unwrap();

    // Dead letters, as a viewer: listed, but no replay or purge button; a
    // replay posted from the page anyway (no CSRF token) is refused.
    browser.goto(&format!("{base}/dead-letters")).await.unwrap();
    browser.find(&format!("table#dead-letters tr[data-job='{dead}']")).await.unwrap();
    for button in ["button#replay", "button#purge"] {
        assert!(browser.find_within(button, Duration::from_millis(300)).await.is_err(), "a viewer sees {button}");
    }
    let letter = browser
        .eval(&format!("return document.querySelector(\"tr[data-job='{dead}'] input[name=select]\").value;"))
        .await
        .unwrap();
    let letter = letter.as_str().unwrap().to_string();
    for with_csrf in [false, true] {
        // Without a token; then with the viewer's own token (the logout form's): the role refuses it.
        let status = browser
            .eval(&format!(
                "const body = new URLSearchParams({{action: 'replay', select: '{letter}', confirm: 'yes'}}); \
                 if ({with_csrf}) body.set('csrf', document.querySelector('form#logout input[name=csrf]').value); \
                 return fetch('/dead-letters', {{method: 'POST', body}}).then(r => r.status);"
            ))
            .await
            .unwrap();
        assert_eq!(status, 403, "a viewer's forged replay (token: {with_csrf})");
    }
    browser.screenshot("dead-letters-viewer").await.unwrap();
    assert_eq!(stack.depth(&dlq).await, 1, "the viewer's posts left the dead letter where it was");
    log_out(&browser).await;

    // An operator: select the letter, replay: a dry run first, then confirm.
    log_in(&browser, &base, "olga", OPERATOR_PASSWORD).await;
    browser.goto(&format!("{base}/dead-letters")).await.unwrap();
    browser.click(&format!("tr[data-job='{dead}'] input[name=select]")).await.unwrap();
    browser.screenshot("dead-letters").await.unwrap();
    browser.click("button#replay").await.unwrap();
    browser.find("button#confirm").await.unwrap();
    browser.find(&format!("tr[data-job='{dead}']")).await.unwrap();
    browser.screenshot("dead-letters-dry-run").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.depth(&dlq).await, 1, "the dry run replayed");
    // The provider now answers, slowly: the replayed job is still in
    // inference when the jobs page opens, so the page must update itself.
    stack.dev.simulator.configure(|c| {
        c.error_rate = 0.0;
        c.latency_min_ms = 4000;
        c.latency_max_ms = 4000;
    });
    browser.click("button#confirm").await.unwrap();
    // The confirmed replay's own page (only it lists what was done): going
    // on before it loaded let that navigation land after the next one.
    browser.find("ul#done").await.unwrap();

    // The jobs page, left open, shows the job completing: it updates itself
    // (a mark set on the page after it loaded is still there, so no reload).
    browser.goto(&format!("{base}/jobs")).await.unwrap();
    let row = format!("document.querySelector(\"table#jobs tr[data-job='{dead}']\")");
    browser.find(&format!("table#jobs tr[data-job='{dead}']")).await.unwrap();
    let shown = browser.eval(&format!("window.reelfleetMark = 1; return {row}.innerText;")).await.unwrap();
    let before = stack.manifests.load(&dead).await.unwrap().unwrap().status;
    browser
        .wait_until(&format!("{row} && {row}.innerText.includes('completed')"), JOB_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the replayed job never shows completed: {e:#}"));
    assert_eq!(browser.eval("return window.reelfleetMark;").await.unwrap(), 1, "the page was reloaded");
    assert_ne!(before, JobStatus::Completed, "the job completed before the jobs page opened: nothing to watch");
    assert!(!shown.as_str().unwrap_or_default().contains("completed"), "{shown}");
    // As the fleet keeps it: completed in S3, nothing left in the dead-letter queue.
    assert_eq!(stack.manifests.load(&dead).await.unwrap().unwrap().status, JobStatus::Completed);
    assert_eq!(stack.depth(&dlq).await, 0);
    browser.screenshot("jobs-after-replay").await.unwrap();

    browser.close().await.unwrap();
    stop.cancel();
    stack.cleanup().await;
}
