//! The attacker's cases, each with what must happen: an event that names a
//! bucket ingest does not take, a source swapped after ingest validated it,
//! a stream that declares no duration, forged, misaddressed, expired and
//! rotated-out envelopes (and a replay that must not launder them), an
//! uploader asking for the most expensive tier; and a decoder the input took
//! over: it finds no secret in its environment or in the worker's, reaches no
//! network, writes nothing outside its scratch folder, decodes only accepted
//! codecs, and a decode over a limit or timing out twice fails for good.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use chrono::Utc;
use reelfleet_cli::dlq::{self, DlqFilter};
use reelfleet_cli::fleet::StageName;
use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, Tier, SIGNATURE_HEADER},
    error::{ErrorClass, StageError},
    manifest::JobStatus,
    media::{Media, MediaError},
    s3event::minio_event,
    sandbox::{Files, Runner},
    settings::{MediaSettings, PreviousKey, Secret, Settings},
    signing::{generate_key, Signer},
    topology::WorkQueue,
};
use reelfleet_tests::{make_clip, TestStack};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

const T: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_naming_the_work_bucket_is_refused_and_writes_nothing() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let work = stack.settings().s3.work_bucket.clone();
    let clip = make_clip(stack.dir.path(), "inside.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let info = stack.storage.upload(&work, "jobs/someone/else.mp4", &clip, "video/mp4").await.unwrap();
    let etag = info.etag.clone().unwrap_or_default();
    let event = minio_event("ObjectCreated:Put", &work, "jobs/someone/else.mp4", info.size, &etag, "attacker");
    stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Ingest), event)).await;

    let dlq = format!("{}.dlq", stack.queue(WorkQueue::Ingest));
    let dead = stack.take_messages(&dlq, 1, T).await;
    let reason = &dead[0].0["x-reelfleet-error-message"];
    assert!(reason.contains("not an upload bucket"), "{reason}");
    assert_eq!(dead[0].0["x-reelfleet-error-class"], "permanent");
    let job = SourceObject {
        bucket: work,
        key: "jobs/someone/else.mp4".into(),
        size: info.size,
        etag: info.etag,
        version_id: None,
    }
    .job_id();
    assert!(stack.manifests.load(&job).await.unwrap().is_none(), "a job was created for the work bucket");
    assert!(stack.manifests.job_ids().await.unwrap().is_empty(), "nothing is written for a refused bucket");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_overwritten_after_ingest_fails_in_preprocess_instead_of_being_decoded() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let dir = stack.dir.path();
    let small = make_clip(dir, "small.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let job = stack.upload("swap/clip.mp4", &small).await;
    let admitted = stack.wait_for(&job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(admitted.status, JobStatus::Preprocess, "{:?}", admitted.error);

    // Replaced after validation by something ingest never saw.
    let other = make_clip(dir, "other.mp4", "testsrc2=size=640x480:rate=24", 2.0, &[]);
    let upload_bucket = stack.settings().s3.upload_bucket.clone();
    stack.storage.upload(&upload_bucket, "swap/clip.mp4", &other, "video/mp4").await.unwrap();
    let (replica, stop) = stack.start_replica(&[StageName::Preprocess]).await;

    let m = stack.wait_for(&job, T, |m| m.status != JobStatus::Preprocess).await;
    assert_eq!(m.status, JobStatus::Failed);
    let err = m.error.expect("failure recorded");
    assert_eq!(err.stage, "preprocess");
    assert!(err.message.contains("changed since it was validated"), "{}", err.message);
    assert!(m.preprocess.is_none(), "the swapped object was decoded");
    stop.cancel();
    replica.wait().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_without_a_duration_is_measured_by_its_frames_before_any_decode() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |s| s.limits.max_duration_secs = 20.0).await;
    let dir = stack.dir.path();
    let raw = ["-c:v", "libx264", "-preset", "ultrafast", "-f", "h264"];
    let long = make_clip(dir, "long.h264", "testsrc2=size=160x120:rate=24", 30.0, &raw);
    let short = make_clip(dir, "short.h264", "testsrc2=size=160x120:rate=24", 3.0, &raw);
    let long_job = stack.upload("raw/long.h264", &long).await;
    let short_job = stack.upload("raw/short.h264", &short).await;

    let m = stack.wait_for(&long_job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Failed, "a 30 s stream without a duration passed a 20 s limit");
    let err = m.error.expect("reason");
    assert!(err.message.contains("exceeds the 20 s limit"), "{}", err.message);

    let m = stack.wait_for(&short_job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Preprocess, "{:?}", m.error);
    let seconds = m.input.expect("input facts").duration_s;
    assert!((seconds - 3.0).abs() < 0.5, "measured {seconds} s for a 3 s stream");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_video_on_another_host_gets_no_key_and_is_size_capped() {
    let stack = TestStack::start_stages(&[StageName::Inference], |s| s.inference.max_video_bytes = 1).await;
    // The provider names a video on another origin (the recorder answers "ok", 2 bytes).
    let elsewhere = reelfleet_tests::RequestRecorder::start().await;
    let base = elsewhere.url().trim_end_matches("/purge").to_string();
    stack.dev.simulator.configure(|c| c.video_base_url = Some(base.clone()));
    let job = stack.seed_generate(reelfleet_core::envelope::Tier::Medium).await;
    let m = stack.wait_for(&job, T, |m| m.status == JobStatus::Failed).await;
    let err = m.error.expect("reason");
    assert!(err.message.contains("larger than 1 bytes"), "{}", err.message);
    let fetched = elsewhere.requests();
    assert!(!fetched.is_empty(), "the video was never fetched");
    assert!(
        fetched.iter().all(|r| r.authorization.is_none()),
        "the provider key went to {base}: {:?}",
        fetched.iter().map(|r| &r.authorization).collect::<Vec<_>>()
    );
    assert_eq!(m.charges.len(), 1, "the bill is kept though the video is refused");
    stack.cleanup().await;
}

/// One envelope for a job nobody created, so a message that passes the
/// signature check is dead-lettered for the missing manifest (`bad_input`)
/// and one that does not, for its signature.
fn stray(tag: &str) -> Envelope {
    Envelope::new(
        JobKind::Analyze,
        SourceObject {
            bucket: "uploads".into(),
            key: format!("forged/{tag}.mp4"),
            size: 1,
            etag: Some(tag.into()),
            version_id: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_misaddressed_expired_and_rotated_out_envelopes_are_refused_and_never_replayed_signed() {
    let (old, retired) = (generate_key(), generate_key());
    let stack = TestStack::start_stages(&[StageName::Preprocess], |s| {
        s.signing.previous = vec![
            PreviousKey {
                key_id: "old".into(),
                secret: Secret::new(old.clone()),
                accept_until: Utc::now() + chrono::Duration::hours(1),
            },
            PreviousKey {
                key_id: "gone".into(),
                secret: Secret::new(retired.clone()),
                accept_until: Utc::now() - chrono::Duration::seconds(1),
            },
        ];
    })
    .await;
    let s = stack.settings().clone();
    let (ns, fleet) = (s.namespace.clone(), stack.signer());
    let pre = stack.queue(WorkQueue::Preprocess);
    let post = stack.queue(WorkQueue::Postprocess);
    let key = |id: &str, hex: &str| Signer::with_key(&ns, id, &hex::decode(hex).unwrap());
    /// Makes a signature header for a body.
    type Sign<'a> = Box<dyn Fn(&[u8]) -> String + 'a>;
    // (case, signature or none, code it must be dead-lettered with)
    let cases: Vec<(&str, Option<Sign>, &str)> = vec![
        (
            "forged with another key under the fleet's key id",
            Some(Box::new(|b| key(&s.signing.key_id, &generate_key()).sign(&pre, b))),
            "bad_signature",
        ),
        ("signed for postprocess, replayed onto preprocess", Some(Box::new(|b| fleet.sign(&post, b))), "bad_signature"),
        (
            "signed by another fleet's namespace",
            Some(Box::new(|b| Signer::from_settings(&s.signing, "other-fleet").unwrap().sign(&pre, b))),
            "bad_signature",
        ),
        ("unsigned", None, "bad_signature"),
        (
            "expired a day ago",
            Some(Box::new(|b| fleet.sign_at(&pre, b, Utc::now() - chrono::Duration::days(8)))),
            "signature_expired",
        ),
        ("signed with a retired key", Some(Box::new(|b| key("gone", &retired).sign(&pre, b))), "signature_key_retired"),
        (
            "signed with the previous key, still accepted",
            Some(Box::new(|b| key("old", &old).sign(&pre, b))),
            "bad_input",
        ),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (i, (case, sign, code)) in cases.iter().enumerate() {
        let env = stray(&format!("case{i}"));
        let body = env.to_bytes();
        let mut msg = Outgoing::to_queue(&pre, body.clone());
        if let Some(sign) = sign {
            msg = msg.header(SIGNATURE_HEADER, HeaderValue::Text(sign(&body)));
        }
        stack.publish(msg).await;
        expected.insert(env.job_id, (*case, *code));
    }
    let dlq = format!("{pre}.dlq");
    let deadline = std::time::Instant::now() + T;
    while stack.depth(&dlq).await < cases.len() as u32 {
        assert!(std::time::Instant::now() < deadline, "not every case was dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let preprocess = DlqFilter { stage: Some("preprocess".into()), ..Default::default() };
    let held = dlq::fetch(&s, &stack.broker, &preprocess).await.unwrap();
    let letters: Vec<_> = held.letters().cloned().collect();
    held.release().await;
    for letter in &letters {
        let job = Envelope::parse(&letter.body).unwrap().job_id;
        let (case, code) = expected[&job];
        assert_eq!(letter.error_code, code, "{case}: {}", letter.error_message);
    }

    // Replay signs anew only what the fleet signed: the expired and the
    // previous-key messages come back (and fail on the missing manifest, so
    // past the signature), the unsigned one stays unsigned, the rest stay put.
    let report = dlq::replay(&s, &preprocess, None, false).await.unwrap();
    let refused: std::collections::BTreeSet<_> = report.refused.iter().map(|(id, _)| id.clone()).collect();
    let refused_cases: std::collections::BTreeSet<_> = letters
        .iter()
        .filter(|l| refused.contains(&l.id))
        .map(|l| expected[&Envelope::parse(&l.body).unwrap().job_id].0)
        .collect();
    assert_eq!(
        refused_cases,
        [
            "forged with another key under the fleet's key id",
            "signed for postprocess, replayed onto preprocess",
            "signed by another fleet's namespace",
            "signed with a retired key"
        ]
        .into_iter()
        .collect(),
    );
    assert_eq!(report.replayed, 3);
    let deadline = std::time::Instant::now() + T;
    loop {
        let held = dlq::fetch(&s, &stack.broker, &preprocess).await.unwrap();
        let again: Vec<_> = held.letters().cloned().collect();
        held.release().await;
        let codes: std::collections::BTreeMap<&str, String> = again
            .iter()
            .map(|l| (expected[&Envelope::parse(&l.body).unwrap().job_id].0, l.error_code.clone()))
            .collect();
        if again.len() == cases.len() {
            assert_eq!(codes["expired a day ago"], "bad_input", "the replayed copy was not signed anew");
            assert_eq!(codes["unsigned"], "bad_signature", "an unsigned message was replayed signed");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replayed messages did not come back: {codes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_document_asking_for_critical_is_lowered_to_the_uploaders_cap() {
    let stack = TestStack::start_stages(&[StageName::Ingest, StageName::Preprocess], |_| {}).await;
    let doc = stack.dir.path().join("vip.json");
    std::fs::write(&doc, br#"{"prompt":"a fox","duration_seconds":2,"resolution":"720p","priority":5}"#).unwrap();
    let job = stack.upload("prompts/vip.json", &doc).await;
    let m = stack.wait_for(&job, T, |m| m.tier.is_some() || m.status == JobStatus::Failed).await;
    assert_eq!((m.priority, m.requested_priority), (4, Some(5)), "{:?}", m.error);
    assert_ne!(m.tier, Some(Tier::Critical), "an uploader chose the most expensive model");
    stack.cleanup().await;
}

/// A replica of `stages` on the stack's broker and S3, with settings of its own.
async fn start_replica_with(
    stack: &TestStack,
    stages: &[StageName],
    tweak: impl FnOnce(&mut Settings),
) -> (reelfleet_cli::fleet::FleetHandle, tokio_util::sync::CancellationToken) {
    let mut settings = stack.dev.settings.as_ref().clone();
    tweak(&mut settings);
    let settings = std::sync::Arc::new(settings);
    let metrics = reelfleet_core::metrics::Metrics::new();
    let built = reelfleet_cli::fleet::build_stages(&settings, &stack.storage, &metrics, stages, &[])
        .await
        .expect("replica stages");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = reelfleet_cli::fleet::start(settings, built, metrics, stop.clone()).await.expect("replica");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !handle.readiness.is_ready() {
        assert!(std::time::Instant::now() < deadline, "replica not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (handle, stop)
}

/// The command line and environment of every running process whose command line names `marker`.
fn processes_naming(marker: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            continue;
        }
        let Ok(environ) = std::fs::read(dir.join("environ")) else { continue };
        let vars =
            environ.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned());
        found.push((cmdline, vars.collect()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_decoder_has_no_secret_in_its_environment() {
    // A credential in the worker's own environment, as a deployment would give it.
    let canary = format!("hostile-canary-{}", uuid::Uuid::new_v4().simple());
    std::env::set_var("RF_HOSTILE_AWS_SECRET_ACCESS_KEY", &canary);
    let stack = TestStack::start_stages(&[StageName::Ingest, StageName::Preprocess], |_| {}).await;
    let settings = stack.settings().clone();
    let secrets = [
        canary.clone(),
        settings.s3.secret_key.expose().to_string(),
        settings.signing.secret.expose().to_string(),
        settings.inference.api_key.expose().to_string(),
    ];
    let scratch = settings.runtime.scratch_dir.clone().expect("the test stack sets a scratch folder");
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (watching, scratch) = (watching.clone(), scratch.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                for (cmdline, env) in processes_naming(&scratch) {
                    seen.entry(cmdline).or_insert(env);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let clip = make_clip(stack.dir.path(), "env.mp4", "testsrc2=size=1280x720:rate=25", 8.0, &["-preset", "ultrafast"]);
    let job = stack.upload("env/clip.mp4", &clip).await;
    let m = stack.wait_for(&job, T, |m| !matches!(m.status, JobStatus::Ingest | JobStatus::Preprocess)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    assert_eq!(m.status, JobStatus::Inference, "{:?}", m.error);

    let is_tool = |cmd: &str| cmd.split(' ').next().is_some_and(|p| p.ends_with("/ffmpeg") || p.ends_with("/ffprobe"));
    let decoders: Vec<_> = seen.keys().filter(|cmd| is_tool(cmd)).collect();
    assert!(!decoders.is_empty(), "no running ffmpeg was seen: {:?}", seen.keys().collect::<Vec<_>>());
    for (cmdline, env) in &seen {
        let names: Vec<&str> = env.iter().map(|v| v.split('=').next().unwrap_or_default()).collect();
        // bwrap sets PWD (the scratch folder) for its --chdir.
        assert!(names.iter().all(|n| ["PATH", "PWD"].contains(n)), "{cmdline} runs with {names:?}");
        for secret in &secrets {
            assert!(!env.iter().any(|v| v.contains(secret.as_str())), "{cmdline} holds a secret");
            assert!(!cmdline.contains(secret.as_str()), "{cmdline} names a secret");
        }
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn a_sandboxed_decoder_cannot_read_another_process_environment() {
    let canary = format!("hostile-canary-{}", uuid::Uuid::new_v4().simple());
    // The worker's stand-in: a process with a credential in its environment.
    let mut worker =
        std::process::Command::new("sleep").arg("30").env("RF_HOSTILE_SECRET", &canary).spawn().expect("sleep");
    let read = format!("cat /proc/{}/environ /proc/$PPID/environ /proc/[0-9]*/environ 2>/dev/null", worker.id());
    let script = vec!["-c".to_string(), read];
    let sandboxed = Runner::new(&MediaSettings::default()).expect("bwrap and prlimit work here");
    let out = sandboxed.command("sh", &script, &Files::default(), 10).output().await.expect("sh runs");
    let bare = Runner::bare().command("sh", &script, &Files::default(), 10).output().await.expect("sh runs");
    worker.kill().ok();
    worker.wait().ok();
    let inside = String::from_utf8_lossy(&out.stdout);
    assert!(!inside.contains(&canary), "the sandboxed decoder read another process's environment");
    assert!(
        String::from_utf8_lossy(&bare.stdout).contains(&canary),
        "without the sandbox it can: the test sees a leak"
    );
}

#[tokio::test]
async fn a_sandboxed_decoder_reaches_no_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let (connections, stop) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(conn);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // ffmpeg asked straight for a URL on the worker's loopback, without the protocol whitelist.
    let url = format!("http://127.0.0.1:{port}/next-job.mp4");
    let args: Vec<String> =
        ["-hide_banner", "-nostdin", "-i", &url, "-f", "null", "-"].iter().map(|s| s.to_string()).collect();
    let sandboxed = Runner::new(&MediaSettings::default()).expect("bwrap and prlimit work here");
    let out = sandboxed.command("ffmpeg", &args, &Files::default(), 20).output().await.expect("ffmpeg runs");
    let inside = connections.load(std::sync::atomic::Ordering::Relaxed);
    let bare = Runner::bare().command("ffmpeg", &args, &Files::default(), 20).output().await.expect("ffmpeg runs");
    std::thread::sleep(Duration::from_millis(50));
    let outside = connections.load(std::sync::atomic::Ordering::Relaxed) - inside;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acceptor.join().unwrap();
    assert!(!out.status.success(), "the sandboxed ffmpeg read a URL");
    assert_eq!(inside, 0, "the sandboxed ffmpeg connected to the worker's loopback");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused") || stderr.contains("unreachable"), "{stderr}");
    assert!(!bare.status.success());
    assert!(outside >= 1, "without the sandbox it connects: the test sees a leak");
}

#[tokio::test]
async fn a_sandboxed_decoder_writes_nothing_outside_its_scratch_folder_and_reads_nothing_of_the_machine() {
    let jobs = tempfile::Builder::new().prefix("reelfleet-jobs-").tempdir().unwrap();
    let (scratch, other_job) = (jobs.path().join("job-a"), jobs.path().join("job-b"));
    for d in [&scratch, &other_job] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(other_job.join("source"), "another job's upload").unwrap();
    let outside = tempfile::Builder::new().prefix("reelfleet-outside-").tempdir().unwrap();
    let at = |dir: &Path, name: &str| -> PathBuf { dir.join(name) };
    let escape = format!(
        "echo x > {a}; echo x > {b}; cat {c}",
        a = at(outside.path(), "from-sandbox").display(),
        b = at(&other_job, "from-sandbox").display(),
        c = at(&other_job, "source").display(),
    );
    let script = format!(
        "{escape}; echo x > /usr/reelfleet-x; echo x > /reelfleet-x; cat /etc/passwd /etc/hostname; ls /root /home /var; echo ok > {}",
        at(&scratch, "inside").display(),
    );
    let files = Files { read: Vec::new(), write: vec![scratch.clone()] };
    let sh = vec!["-c".to_string(), script];
    let sandboxed = Runner::new(&MediaSettings::default()).expect("bwrap and prlimit work here");
    let out = sandboxed.command("sh", &sh, &files, 10).output().await.expect("sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(at(&scratch, "inside").exists(), "the scratch folder is writable");
    assert!(!at(outside.path(), "from-sandbox").exists(), "wrote to {}", outside.path().display());
    assert!(!at(&other_job, "from-sandbox").exists(), "wrote into another job's folder");
    assert!(!Path::new("/usr/reelfleet-x").exists() && !Path::new("/reelfleet-x").exists());
    assert!(!stdout.contains("another job's upload") && !stdout.contains("root:"), "read: {stdout}");

    // Real ffmpeg, told to write outside its folder.
    let target = at(outside.path(), "out.mp4");
    let args: Vec<String> = ["-hide_banner", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=160x120:duration=1", "-y"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("file:{}", target.display())])
        .collect();
    let ffmpeg = sandboxed.command("ffmpeg", &args, &files, 20).output().await.expect("ffmpeg runs");
    assert!(!ffmpeg.status.success() && !target.exists(), "ffmpeg wrote {}", target.display());

    // The escape without the sandbox works: the checks above see a leak.
    let bare = Runner::bare().command("sh", &["-c".to_string(), escape], &files, 10).output().await.expect("sh runs");
    assert!(at(outside.path(), "from-sandbox").exists() && at(&other_job, "from-sandbox").exists());
    assert!(String::from_utf8_lossy(&bare.stdout).contains("another job's upload"));
}

#[tokio::test]
async fn a_decode_that_burns_cpu_past_its_limit_fails_for_good() {
    let media = Media::new(MediaSettings { limit_cpu_secs: 1, ..Default::default() }).expect("media");
    let args: Vec<String> = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1920x1080:rate=30",
        "-t",
        "600",
        "-c:v",
        "libx264",
        "-preset",
        "slow",
        "-f",
        "null",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = std::time::Instant::now();
    let err = media.ffmpeg(&args).await.expect_err("ten minutes of 1080p in one CPU second");
    assert!(matches!(&err, MediaError::Limit { limit, .. } if limit.contains("media.limit_cpu_secs")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "stopped after {:?}", started.elapsed());
    let e = StageError::from(err);
    assert_eq!((e.class, e.code), (ErrorClass::Permanent, "limit"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decode_that_writes_past_its_file_size_limit_fails_permanently_at_once() {
    let stack =
        TestStack::start_stages(&[StageName::Ingest, StageName::Preprocess], |s| s.media.limit_file_size_mb = 1).await;
    let noisy = "testsrc2=size=640x480:rate=24,noise=alls=60:allf=t";
    let clip = make_clip(stack.dir.path(), "big.mp4", noisy, 4.0, &["-preset", "ultrafast"]);
    let job = stack.upload("limits/big.mp4", &clip).await;
    let m = stack.wait_for(&job, T, |m| m.status == JobStatus::Failed).await;
    let err = m.error.expect("reason");
    let got = (err.stage.as_str(), err.class, err.code.as_str());
    assert_eq!(got, ("preprocess", ErrorClass::Permanent, "limit"), "{}", err.message);
    assert!(err.message.contains("media.limit_file_size_mb"), "{}", err.message);
    assert_eq!(err.attempts, 1, "a limit is not retried");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decode_that_times_out_twice_at_a_stage_fails_permanently() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let clip =
        make_clip(stack.dir.path(), "slow.mp4", "testsrc2=size=1280x720:rate=25", 30.0, &["-preset", "ultrafast"]);
    let job = stack.upload("slow/clip.mp4", &clip).await;
    let admitted = stack.wait_for(&job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(admitted.status, JobStatus::Preprocess, "{:?}", admitted.error);
    // A preprocess whose every ffmpeg call gets one second: 30 s of 720p does not fit.
    let (replica, stop) = start_replica_with(&stack, &[StageName::Preprocess], |s| {
        s.media.ffmpeg_timeout_secs = 1;
        s.media.ffmpeg_timeout_max_secs = 1;
    })
    .await;
    let m = stack.wait_for(&job, T, |m| m.status == JobStatus::Failed).await;
    let err = m.error.expect("reason");
    assert_eq!((err.stage.as_str(), err.class, err.code.as_str()), ("preprocess", ErrorClass::Permanent, "timeout"));
    assert_eq!(err.attempts, 2, "retry.max_attempts is 3, but a second timeout is final: {}", err.message);
    assert!(err.message.contains("timeout 2 of this job at this stage"), "{}", err.message);
    stop.cancel();
    replica.wait().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_in_a_codec_the_fleet_does_not_accept_is_refused_before_any_decode() {
    let stack = TestStack::start_stages(&[StageName::Ingest], |_| {}).await;
    let clip = make_clip(stack.dir.path(), "j2k.mov", "testsrc2=size=320x240:rate=24", 1.0, &["-c:v", "jpeg2000"]);
    let job = stack.upload("codecs/j2k.mov", &clip).await;
    let m = stack.wait_for(&job, T, |m| m.status != JobStatus::Ingest).await;
    assert_eq!(m.status, JobStatus::Failed, "a JPEG 2000 video was admitted");
    let err = m.error.expect("reason");
    assert!(err.message.contains("not on whitelist"), "{}", err.message);
    stack.cleanup().await;
}
