//! The browser harness and this machine's codecs: headless Chromium (Debian's
//! package) loads a page served from 127.0.0.1 with an ffmpeg-made PNG and
//! two ffmpeg-made videos served with Range support, an H.264 (yuv420p) MP4,
//! what the console's renditions are, and a VP9 WebM, and plays both: the
//! image decodes (`naturalWidth > 0`) and each video's `currentTime`
//! advances.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_tests::{browser::Browser, clip::Clip};
use std::{net::SocketAddr, path::Path, time::Duration};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>reelfleet browser smoke</title></head>
<body style="font-family: sans-serif">
  <h1>reelfleet browser smoke</h1>
  <img id="poster" src="/media/poster.png" alt="poster">
  <video id="h264" src="/media/clip.mp4" muted autoplay loop playsinline width="320"></video>
  <video id="vp9" src="/media/clip.webm" muted autoplay loop playsinline width="320"></video>
</body></html>"#;

/// ffmpeg's poster, H.264 MP4 and VP9 WebM in `dir`.
fn make_media(dir: &Path) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=1"])
        .args(["-frames:v", "1"])
        .arg(dir.join("poster.png"))
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg made no poster");
    let video = "testsrc2=size=320x180:rate=25";
    let h264 = Clip {
        video,
        audio: "sine=frequency=330",
        seconds: 4.0,
        extra: &["-c:v", "libx264", "-profile:v", "high", "-c:a", "aac", "-movflags", "+faststart"],
    };
    h264.make(dir, "clip.mp4").unwrap();
    let vp9 = Clip {
        video,
        audio: "sine=frequency=330",
        seconds: 4.0,
        extra: &["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-c:a", "libopus"],
    };
    vp9.make(dir, "clip.webm").unwrap();
}

/// Serves [`PAGE`] at `/` and `dir` under `/media/` (Range requests
/// honoured) on a free port of 127.0.0.1.
async fn serve(dir: &Path) -> SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { axum::response::Html(PAGE) }))
        .nest_service("/media", tower_http::services::ServeDir::new(dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `currentTime` of the video `id`.
async fn current_time(browser: &Browser, id: &str) -> f64 {
    let v = browser.eval(&format!("return document.getElementById('{id}').currentTime;")).await.unwrap();
    v.as_f64().unwrap_or_else(|| panic!("currentTime of #{id}: {v}"))
}

/// Waits until the video `id` has played for a while, then checks that its
/// clock still moves; fails with what the element says of itself.
async fn plays(browser: &Browser, id: &str) -> Result<(), String> {
    let state = format!(
        "return (v => ({{ error: v.error && v.error.code, message: v.error && v.error.message, ready: v.readyState, \
         width: v.videoWidth, time: v.currentTime, paused: v.paused }}))(document.getElementById('{id}'));"
    );
    let condition = format!("document.getElementById('{id}').currentTime > 0.5");
    if let Err(e) = browser.wait_until(&condition, Duration::from_secs(20)).await {
        return Err(format!("#{id} does not play: {e:#}; {}", browser.eval(&state).await.unwrap_or_default()));
    }
    let first = current_time(browser, id).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = current_time(browser, id).await;
    // A 4 s clip on a loop: the clock moves on or starts over.
    if second == first {
        return Err(format!(
            "#{id}'s currentTime stays at {first}: {}",
            browser.eval(&state).await.unwrap_or_default()
        ));
    }
    Ok(())
}

/// Live processes (zombies have no command line) whose command line holds `text`.
fn processes_naming(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(text) {
                found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_images_and_plays_h264_and_vp9() {
    let dir = tempfile::tempdir().unwrap();
    make_media(dir.path());
    let addr = serve(dir.path()).await;
    let browser = Browser::start().await.unwrap();

    // The server honours Range, as a <video> element asks.
    let part = reqwest::Client::new()
        .get(format!("http://{addr}/media/clip.mp4"))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().len(), 100);

    browser.goto(&format!("http://{addr}/")).await.unwrap();
    browser.find("h1").await.unwrap();
    browser.wait_until("document.getElementById('poster').complete", Duration::from_secs(10)).await.unwrap();
    let width = browser.eval("return document.getElementById('poster').naturalWidth;").await.unwrap();
    assert_eq!(width, 320, "the poster decodes at its size");

    let support = browser
        .eval(
            "const v = document.createElement('video'); \
             return { h264: v.canPlayType('video/mp4; codecs=\"avc1.64001E, mp4a.40.2\"'), \
                      vp9: v.canPlayType('video/webm; codecs=\"vp9, opus\"') };",
        )
        .await
        .unwrap();
    let agent = browser.eval("return navigator.userAgent;").await.unwrap();
    eprintln!("{agent}: canPlayType {support}");
    let (h264, vp9) = (plays(&browser, "h264").await, plays(&browser, "vp9").await);
    let shot = browser.screenshot("browser-smoke").await.unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "{} is a picture", shot.display());
    let profile = browser.profile().to_string_lossy().into_owned();
    assert!(!processes_naming(&profile).is_empty(), "Chromium's processes name their profile");
    browser.close().await.unwrap();
    // Crashpad's handlers, in sessions of their own, follow their browser out within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_naming(&profile).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes_naming(&profile), Vec::<String>::new(), "no Chromium process outlives the browser");
    assert!(!std::path::Path::new(&profile).exists(), "its profile and temporary files are removed");
    assert!(vp9.is_ok(), "VP9 WebM: {vp9:?}");
    assert!(h264.is_ok(), "H.264 MP4 (what the console's renditions are): {h264:?}");
}
