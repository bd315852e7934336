//! A worker that cannot run safely refuses to start, and says why: no
//! credential of its own, a well-known one, or an ffmpeg it cannot fence in.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::signing::generate_key;
use std::process::{Command, Output};

/// `reelfleet worker STAGE` with credentials of its own, then `env` on top.
fn worker(stage: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reelfleet"));
    cmd.args(["worker", stage])
        .env("REELFLEET_NAMESPACE", format!("t-refuse-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
        .env("REELFLEET_RUNTIME__HEALTH_ADDR", "127.0.0.1:0")
        .env("REELFLEET_SIGNING__SECRET", generate_key())
        .env("REELFLEET_S3__ACCESS_KEY", "AKIAREFUSALTEST")
        .env("REELFLEET_S3__SECRET_KEY", generate_key())
        .env("REELFLEET_INFERENCE__API_KEY", format!("sk-{}", generate_key()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("reelfleet runs")
}

#[test]
fn a_worker_whose_ffmpeg_lists_no_demuxers_refuses_to_start() {
    for stage in ["ingest", "preprocess", "postprocess"] {
        let out = worker(stage, &[("REELFLEET_MEDIA__FFMPEG", "/nonexistent/ffmpeg")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stage} started without a demuxer allow-list: {stderr}");
        assert!(stderr.contains("demuxer allow-list") && stderr.contains("/nonexistent/ffmpeg"), "{stage}: {stderr}");
    }
}

#[test]
fn a_worker_refuses_missing_and_well_known_credentials_naming_the_setting() {
    /// Stage, environment on top of good credentials, what stderr must say.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("preprocess", &[("REELFLEET_SIGNING__SECRET", "")], "signing.secret is not set"),
        ("ingest", &[("REELFLEET_SIGNING__SECRET", "reelfleet-dev-signing-key-change-me")], "reelfleet keys generate"),
        ("ingest", &[("REELFLEET_SIGNING__SECRET", &"ab".repeat(20))], "at least 32 random bytes"),
        ("postprocess", &[("REELFLEET_S3__SECRET_KEY", "reelfleet-secret")], "s3.secret_key is a well-known value"),
        (
            "inference",
            &[("REELFLEET_INFERENCE__API_KEY", "sk-reelfleet-dev")],
            "inference.api_key is a well-known value",
        ),
        ("inference", &[("REELFLEET_INFERENCE__API_KEY", "")], "inference.api_key is not set"),
        (
            "ingest",
            &[("REELFLEET_BROKER__URL", "amqp://guest:guest@rabbitmq.internal:5672/%2f")],
            "broker.url logs in as guest",
        ),
    ];
    for (stage, env, expected) in cases {
        let out = worker(stage, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stage} started with {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{stage} with {env:?} should say {expected:?}: {stderr}");
    }
}
