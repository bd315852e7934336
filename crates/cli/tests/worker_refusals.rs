//! A worker that cannot run ffmpeg safely refuses to start, and says why.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::Command;

#[test]
fn a_worker_whose_ffmpeg_lists_no_demuxers_refuses_to_start() {
    for stage in ["ingest", "preprocess", "postprocess"] {
        let out = Command::new(env!("CARGO_BIN_EXE_reelfleet"))
            .args(["worker", stage])
            .env("REELFLEET_MEDIA__FFMPEG", "/nonexistent/ffmpeg")
            .env("REELFLEET_NAMESPACE", format!("t-refuse-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
            .env("REELFLEET_RUNTIME__HEALTH_ADDR", "127.0.0.1:0")
            .output()
            .expect("reelfleet runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stage} started without a demuxer allow-list: {stderr}");
        assert!(stderr.contains("demuxer allow-list") && stderr.contains("/nonexistent/ffmpeg"), "{stage}: {stderr}");
    }
}
