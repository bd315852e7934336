//! The fleet end to end: real RabbitMQ, the embedded S3 over HTTP, real ffmpeg,
//! the provider simulated over HTTP.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use reelfleet_core::{
    broker::{HeaderValue, Outgoing},
    envelope::{Envelope, JobKind, SourceObject, SIGNATURE_HEADER},
    manifest::{JobStatus, RenditionEncode},
    s3event::minio_event,
    signing::Signer,
    topology::WorkQueue,
};
use reelfleet_tests::{make_clip, TestStack};
use std::time::Duration;

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn finished(m: &reelfleet_core::manifest::JobManifest) -> bool {
    matches!(m.status, JobStatus::Completed | JobStatus::Failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_s3_upload_runs_through_all_four_stages() {
    let cdn = reelfleet_tests::RequestRecorder::start().await;
    let stack = TestStack::start_with(|s| {
        s.postprocess.cdn_purge_url = Some(cdn.url());
        s.postprocess.cdn_purge_token = Some(reelfleet_core::settings::Secret::new("cdn-token"));
        s.media.hls_segment_secs = 1.0;
    })
    .await;
    let events = stack.bind_events("job.completed").await;
    let clip = make_clip(stack.dir.path(), "clip.mov", "testsrc2=size=1280x720:rate=25", 3.0, &["-c:v", "libx264"]);
    let job = stack.upload("plain client/clip one+été.mov", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    assert_eq!(m.source.key, "plain client/clip one+été.mov");
    for stage in ["ingest", "preprocess", "inference", "postprocess"] {
        assert!(m.stages.contains_key(stage), "no timing for {stage}");
    }
    let input = m.input.as_ref().expect("input facts");
    assert_eq!((input.width, input.height), (1280, 720));
    let inference = m.inference.as_ref().expect("inference record");
    assert!(inference.input_tokens > 0 && inference.output_tokens > 0 && inference.cost_usd > 0.0);
    assert_eq!(stack.dev.simulator.usage().len(), 1);

    let names: Vec<&str> = m.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["h264_720p", "h265_720p", "poster", "sprite"]);
    for out in &m.outputs {
        let probe = stack.probe_object(&out.key).await;
        let v = probe.video().expect("video stream");
        assert_eq!(v.codec_name, out.codec, "{}", out.name);
        assert_eq!((v.width, v.height), (Some(out.width), Some(out.height)), "{}", out.name);
        if out.content_type == "video/mp4" {
            let expected = if out.name.starts_with("h265") { "hevc" } else { "h264" };
            assert_eq!(v.codec_name, expected);
            assert_eq!((out.width, out.height), (1280, 720));
            let d = probe.duration().expect("duration");
            assert!((d - input.duration_s).abs() <= 0.1, "{} lasts {d} s, source {} s", out.name, input.duration_s);
            if out.name == "h264_720p" {
                // The normalized video already is this rendition: copied, not encoded, and not scored.
                assert_eq!(out.encode, Some(RenditionEncode::Copy), "{out:?}");
                assert_eq!(out.identical_to, m.preprocess.as_ref().unwrap().normalized_key, "{out:?}");
                assert_eq!((out.psnr_db, out.ssim, out.vmaf), (None, None, None), "{out:?}");
            } else {
                assert_eq!(out.encode, Some(RenditionEncode::Encode), "{out:?}");
                assert!(out.psnr_db.unwrap() > 30.0 && out.ssim.unwrap() > 0.9, "{out:?}");
            }
        } else {
            let bytes = stack.read_object(&out.key).await;
            assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "{} is not a JPEG", out.name);
        }
    }
    assert!(m.quality_check.as_ref().is_some_and(|q| q.passed));
    assert!(m.outputs.iter().all(|o| o.reencoded.is_none()), "nothing fell below the floor");

    // HLS: read back from the bucket by ffprobe, segments aligned across renditions.
    let hls = m.hls.as_ref().expect("HLS output");
    assert_eq!(hls.master_key, format!("jobs/{job}/hls/master.m3u8"));
    let local = download_hls(&stack, hls).await;
    let master = std::fs::read_to_string(local.path().join("master.m3u8")).unwrap();
    let variants = hls_variants(&master);
    assert_eq!(variants.len(), 2, "{master}");
    let names: Vec<&str> = variants.iter().map(|v| v.0.split('/').next().unwrap()).collect();
    assert_eq!(names, ["h264_720p", "h265_720p"]);
    for (uri, attrs) in &variants {
        assert!(attrs.contains("RESOLUTION=1280x720"), "{uri}: {attrs}");
        let bandwidth: u64 = attr(attrs, "BANDWIDTH").parse().unwrap();
        assert!(bandwidth > 10_000, "{uri}: {attrs}");
        // CODECS as RFC 6381 spells what ffprobe reads in the variant's own segments.
        let variant = ffprobe_json(&local.path().join(uri), &["-show_streams", "-select_streams", "v:0"]);
        let v = &variant["streams"][0];
        let level = v["level"].as_i64().unwrap();
        let video = match (v["codec_name"].as_str().unwrap(), v["profile"].as_str().unwrap()) {
            ("h264", "Constrained Baseline") => format!("avc1.42C0{level:02X}"),
            ("h264", "Main") => format!("avc1.4D40{level:02X}"),
            ("h264", "High") => format!("avc1.6400{level:02X}"),
            ("hevc", "Main") => format!("hvc1.1.6.L{level}.B0"),
            other => panic!("{uri}: unexpected {other:?}"),
        };
        assert_eq!(attr(attrs, "CODECS"), format!("\"{video},mp4a.40.2\""), "{uri}");
    }
    // ffprobe opens the master (its hls demuxer: not the fleet's allow-list) and finds both variants.
    let probed = ffprobe_json(&local.path().join("master.m3u8"), &["-show_streams"]);
    let mut streams: Vec<(String, u64)> = probed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == "video")
        .map(|s| (s["codec_name"].as_str().unwrap().to_string(), s["width"].as_u64().unwrap()))
        .collect();
    streams.sort();
    assert_eq!(streams, [("h264".to_string(), 1280), ("hevc".to_string(), 1280)], "{probed}");
    // Segment starts by the playlists, and keyframes by ffprobe, are the same in every rendition.
    let mut timelines = Vec::new();
    for (uri, _) in &variants {
        let path = local.path().join(uri);
        let playlist = std::fs::read_to_string(&path).unwrap();
        let starts = segment_starts(&playlist);
        assert_eq!(starts.len(), 3, "3 s in 1 s segments: {playlist}");
        let packets = ffprobe_json(&path, &["-select_streams", "v:0", "-show_entries", "packet=pts_time,flags"]);
        let keyframes: Vec<f64> = packets["packets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["flags"].as_str().unwrap_or_default().contains('K'))
            .map(|p| p["pts_time"].as_str().unwrap().parse::<f64>().unwrap())
            .collect();
        let first = keyframes[0];
        let keyframes: Vec<f64> = keyframes.iter().map(|k| ((k - first) * 1000.0).round() / 1000.0).collect();
        assert_eq!(keyframes, starts, "{uri}: keyframes where segments start");
        timelines.push(starts);
    }
    assert_eq!(timelines[0], timelines[1], "segment boundaries differ across renditions");
    // The copied rendition's video, in its MP4 and in its HLS segments, is the normalized video's bit for bit.
    let normalized = local.path().join("normalized.mp4");
    std::fs::write(
        &normalized,
        stack.read_object(m.preprocess.as_ref().unwrap().normalized_key.as_ref().unwrap()).await,
    )
    .unwrap();
    let copied = local.path().join("h264_720p.mp4");
    std::fs::write(&copied, stack.read_object(&m.outputs[0].key).await).unwrap();
    let reference = video_stream_hash(&normalized);
    assert_eq!(video_stream_hash(&copied), reference, "the copied MP4's video is not the normalized video's");
    assert_eq!(video_stream_hash(&local.path().join(&variants[0].0)), reference, "nor its HLS variant's");
    assert_ne!(video_stream_hash(&local.path().join(&variants[1].0)), reference, "the H.265 variant is encoded");
    // The encoded rendition's audio is the normalized video's AAC, copied, not encoded a second time.
    let encoded = local.path().join("h265_720p.mp4");
    std::fs::write(&encoded, stack.read_object(&m.outputs[1].key).await).unwrap();
    assert_eq!(stream_hash(&encoded, "0:a:0"), stream_hash(&normalized, "0:a:0"), "the H.265 rendition's audio");

    let purges = cdn.requests();
    assert_eq!(purges.len(), 1, "one CDN purge call");
    assert_eq!(purges[0].authorization.as_deref(), Some("Bearer cdn-token"));
    let body: serde_json::Value = serde_json::from_slice(&purges[0].body).unwrap();
    assert_eq!(body["job_id"], job.as_str());
    let paths: Vec<&str> = body["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(paths.len(), m.outputs.len() + 1 + hls.variants.len(), "{paths:?}");
    assert!(paths.contains(&hls.master_key.as_str()), "the purge names the master playlist: {paths:?}");
    assert!(m.cdn_purge.as_deref().unwrap().starts_with("purged"));

    let completed = stack.take_messages(&events, 1, Duration::from_secs(10)).await;
    let event: serde_json::Value = serde_json::from_slice(&completed[0].1).unwrap();
    assert_eq!((event["event"].as_str(), event["job_id"].as_str()), (Some("job.completed"), Some(job.as_str())));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rendition_below_the_quality_floor_is_encoded_again_alone_and_the_manifest_says_so() {
    // CRF 51 lands every rendition of this clip under 30 dB; 33 points better passes.
    let stack = TestStack::start_with(|s| {
        s.postprocess.h264_crf = 51;
        s.postprocess.h265_crf = 51;
        s.media.reencode_crf_step = 33;
        s.media.hls_segment_secs = 1.0;
    })
    .await;
    let clip = make_clip(stack.dir.path(), "floor.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let job = stack.upload("floor/clip.mp4", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    let renditions: Vec<_> = m.outputs.iter().filter(|o| o.content_type == "video/mp4").collect();
    assert_eq!(renditions.len(), 2);
    for out in renditions {
        let note = out.reencoded.as_deref().unwrap_or_else(|| panic!("{} not re-encoded: {out:?}", out.name));
        assert!(note.contains("at CRF 51") && note.contains("again at CRF 18"), "{note}");
        let first: f64 = note.split("PSNR ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(first < 30.0, "{note}");
        assert!(out.psnr_db.unwrap() >= 30.0, "{out:?}");
        // What the bucket holds is the second encode, measured as the manifest says.
        let bytes = stack.read_object(&out.key).await;
        assert_eq!(bytes.len() as u64, out.size_bytes, "{}", out.name);
        let dir = tempfile::tempdir().unwrap();
        let (file, reference) = (dir.path().join("r.mp4"), dir.path().join("n.mp4"));
        std::fs::write(&file, &bytes).unwrap();
        let normalized = m.preprocess.as_ref().unwrap().normalized_key.clone().unwrap();
        std::fs::write(&reference, stack.read_object(&normalized).await).unwrap();
        // The encoders measured themselves (no filter pass without VMAF): ffmpeg's filters on the stored bytes agree.
        assert_measured_as_ffmpeg_does(out, &file, &reference);
    }
    // The HLS variants were made again with their renditions, still aligned.
    let hls = m.hls.as_ref().expect("HLS output");
    let mut timelines = Vec::new();
    for v in &hls.variants {
        let playlist = String::from_utf8(stack.read_object(&v.playlist_key).await).unwrap();
        timelines.push(segment_starts(&playlist));
    }
    assert_eq!(timelines[0], [0.0, 1.0]);
    assert_eq!(timelines[0], timelines[1]);
    stack.cleanup().await;
}

/// PSNR (`average`) and luma SSIM of the rendition `file` against
/// `reference` scaled to its size as the ladder scales it, by ffmpeg's
/// filters, held to what the manifest's output `out` says.
fn assert_measured_as_ffmpeg_does(
    out: &reelfleet_core::manifest::OutputFile,
    file: &std::path::Path,
    reference: &std::path::Path,
) {
    let graph = format!(
        "[1:v]scale={}:{}:flags=bicubic,setsar=1,format=yuv420p,split[c][d];[0:v]setsar=1,format=yuv420p,split[a][b];[a][c]psnr;[b][d]ssim",
        out.width, out.height
    );
    let log = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-i"])
        .arg(file)
        .arg("-i")
        .arg(reference)
        .args(["-lavfi", &graph, "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stderr);
    let after = |key: &str| -> f64 { log.split(key).nth(1).unwrap().split(' ').next().unwrap().parse().unwrap() };
    let (psnr, ssim) = (after("average:"), after("SSIM Y:"));
    eprintln!("{}: ffmpeg {psnr} dB {ssim}, manifest {:?} {:?}", out.name, out.psnr_db, out.ssim);
    assert!(
        (psnr - out.psnr_db.unwrap()).abs() < 0.01,
        "{} measures {psnr} dB, the manifest says {:?}",
        out.name,
        out.psnr_db
    );
    assert!((ssim - out.ssim.unwrap()).abs() < 0.002, "{} SSIM {ssim}, the manifest says {:?}", out.name, out.ssim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_x264_encodes_in_one_ladder_are_measured_by_a_filter_pass_and_x265_by_itself_all_as_ffmpeg_measures() {
    // At `fast` (slower than normalize's `veryfast`) nothing is copied: two x264 encodes and one x265 in the ladder.
    let stack = TestStack::start_with(|s| {
        s.media.tier_presets = reelfleet_core::settings::TierPresets::all("fast");
        s.media.hls_segment_secs = 1.0;
    })
    .await;
    let clip = make_clip(stack.dir.path(), "tall.mp4", "testsrc2=size=1280x960:rate=24", 1.0, &[]);
    let job = stack.upload("tall-fast/clip.mp4", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("normalized.mp4");
    let normalized_key = m.preprocess.as_ref().unwrap().normalized_key.clone().unwrap();
    std::fs::write(&reference, stack.read_object(&normalized_key).await).unwrap();
    let renditions: Vec<_> = m.outputs.iter().filter(|o| o.content_type == "video/mp4").collect();
    let names: Vec<_> = renditions.iter().map(|o| (o.name.as_str(), o.encode)).collect();
    let encoded = Some(RenditionEncode::Encode);
    assert_eq!(names, [("h264_720p", encoded), ("h264_960p", encoded), ("h265_720p", encoded)]);
    for out in renditions {
        let file = dir.path().join(format!("{}.mp4", out.name));
        std::fs::write(&file, stack.read_object(&out.key).await).unwrap();
        assert_measured_as_ffmpeg_does(out, &file, &reference);
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_above_720p_has_its_720p_renditions_encoded_and_its_full_size_h264_copied() {
    let stack = TestStack::start_with(|s| s.media.hls_segment_secs = 1.0).await;
    let clip = make_clip(stack.dir.path(), "tall.mp4", "testsrc2=size=1280x960:rate=24", 2.0, &[]);
    let job = stack.upload("tall/clip.mp4", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    let normalized_key = m.preprocess.as_ref().unwrap().normalized_key.clone().unwrap();
    let renditions: Vec<_> = m
        .outputs
        .iter()
        .filter(|o| o.content_type == "video/mp4")
        .map(|o| (o.name.as_str(), o.width, o.height, o.encode, o.identical_to.as_deref(), o.psnr_db.is_some()))
        .collect();
    assert_eq!(
        renditions,
        [
            ("h264_720p", 960, 720, Some(RenditionEncode::Encode), None, true),
            ("h264_960p", 1280, 960, Some(RenditionEncode::Copy), Some(normalized_key.as_str()), false),
            ("h265_720p", 960, 720, Some(RenditionEncode::Encode), None, true),
        ],
        "scaled renditions are encoded and scored; the one at the normalized size is copied"
    );
    let dir = tempfile::tempdir().unwrap();
    let hash = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        video_stream_hash(&path)
    };
    let reference = hash("normalized.mp4", stack.read_object(&normalized_key).await);
    let hashes: Vec<bool> = {
        let mut out = Vec::new();
        for o in m.outputs.iter().filter(|o| o.content_type == "video/mp4") {
            out.push(hash(&format!("{}.mp4", o.name), stack.read_object(&o.key).await) == reference);
        }
        out
    };
    assert_eq!(hashes, [false, true, false], "only the copied rendition carries the normalized stream");
    // Its HLS variant is cut at the same times as the encoded ones, where its keyframes are.
    let hls = m.hls.as_ref().expect("HLS output");
    let local = download_hls(&stack, hls).await;
    let mut timelines = Vec::new();
    for v in &hls.variants {
        let path = local.path().join(v.playlist_key.strip_prefix(&format!("jobs/{job}/hls/")).unwrap());
        let starts = segment_starts(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(keyframe_times(&path), starts, "{}: keyframes where segments start", v.name);
        timelines.push(starts);
    }
    assert_eq!(timelines, [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]);
    // The master's CODECS for the copied variant are the normalized stream's profile and level.
    let copied = &hls.variants[1];
    let v =
        &ffprobe_json(&dir.path().join("normalized.mp4"), &["-show_streams", "-select_streams", "v:0"])["streams"][0];
    let profile = match v["profile"].as_str().unwrap() {
        "Constrained Baseline" => "42C0",
        "Main" => "4D40",
        "High" => "6400",
        other => panic!("unexpected profile {other}"),
    };
    assert_eq!(copied.codecs, format!("avc1.{profile}{:02X},mp4a.40.2", v["level"].as_i64().unwrap()), "{copied:?}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_s3_event_delivered_twice_makes_one_job() {
    let stack = TestStack::start().await;
    let clip = make_clip(stack.dir.path(), "dup.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let key = "dup/clip.mp4";
    let job = stack.upload(key, &clip).await;
    // Settled: completed and its completion event's hand-over recorded (or failed).
    let handed_over = |m: &reelfleet_core::manifest::JobManifest| {
        m.stages.get("postprocess").is_some_and(|t| t.forwarded_at.is_some())
    };
    let first = stack.wait_for(&job, JOB_TIMEOUT, |m| m.status == JobStatus::Failed || handed_over(m)).await;
    assert_eq!(first.status, JobStatus::Completed, "{:?}", first.error);

    let bucket = stack.settings().s3.upload_bucket.clone();
    let info = stack.storage.head(&bucket, key).await.unwrap().unwrap();
    let event = minio_event("ObjectCreated:Put", &bucket, key, info.size, info.etag.as_deref().unwrap(), "127.0.0.1");
    for _ in 0..2 {
        stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Ingest), event.clone())).await;
    }
    let ingest = stack.queue(WorkQueue::Ingest);
    let handled = || stack.dev.fleet.metrics.messages.with_label_values(&["ingest", &ingest, "ok"]).get();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while handled() < 3 {
        assert!(std::time::Instant::now() < deadline, "duplicates not handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = stack.manifests.load(&job).await.unwrap().unwrap();
    assert_eq!(after.stages, first.stages, "the job ran again");
    assert_eq!(stack.manifests.job_ids().await.unwrap(), vec![job.clone()]);
    assert_eq!(stack.dev.simulator.usage().len(), 1, "the provider was paid twice");
    assert_eq!(stack.depth(&stack.queue(WorkQueue::Preprocess)).await, 0);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_uploads_are_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    let stack = TestStack::start().await;
    let dir = stack.dir.path();
    let text = dir.join("notes.mp4");
    std::fs::write(&text, "these are meeting notes, not a video\n".repeat(50)).unwrap();
    // An MP4 without faststart keeps its index at the end: cut it off.
    let whole = make_clip(dir, "whole.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.join("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // A playlist naming a local file must not be followed.
    let playlist = dir.join("playlist.mp4");
    let m3u8 = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n", whole.display());
    std::fs::write(&playlist, m3u8).unwrap();
    stack.upload("bad/notes.mp4", &text).await;
    stack.upload("bad/truncated.mp4", &truncated).await;
    stack.upload("bad/playlist.mp4", &playlist).await;

    let ingest_dlq = format!("{}.dlq", stack.queue(WorkQueue::Ingest));
    let dead = stack.take_messages(&ingest_dlq, 3, Duration::from_secs(60)).await;
    for (headers, body) in &dead {
        let body = String::from_utf8_lossy(body);
        let keys = ["bad%2Fnotes.mp4", "bad%2Ftruncated.mp4", "bad%2Fplaylist.mp4"];
        assert!(keys.iter().any(|k| body.contains(k)), "{body}");
        assert_eq!(headers["x-reelfleet-stage"], "ingest");
        assert_eq!(headers["x-reelfleet-error-class"], "permanent");
        assert_eq!(headers["x-reelfleet-attempts"], "1");
        let reason = &headers["x-reelfleet-error-message"];
        assert!(reason.contains("not a readable video"), "unclear reason: {reason}");
    }
    // Refused sources get a failed manifest saying why, so `status` and `submit --wait` can tell.
    let ids = stack.manifests.job_ids().await.unwrap();
    assert_eq!(ids.len(), 3);
    for id in ids {
        let m = stack.manifests.load(&id).await.unwrap().unwrap();
        assert_eq!(m.status, JobStatus::Failed);
        let err = m.error.unwrap();
        assert_eq!((err.stage.as_str(), err.code.as_str()), ("ingest", "media"));
        assert!(err.message.contains("not a readable video"), "{}", err.message);
    }

    let good = make_clip(dir, "good.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let job = stack.upload("good/after.mp4", &good).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_with_a_wrong_signature_is_dead_lettered_unprocessed() {
    let stack = TestStack::start().await;
    let source = SourceObject {
        bucket: "uploads".into(),
        key: "forged.mp4".into(),
        size: 10,
        etag: Some("abc".into()),
        version_id: None,
    };
    let envelope = Envelope::new(JobKind::Analyze, source);
    let body = envelope.to_bytes();
    let queue = stack.queue(WorkQueue::Preprocess);
    let forged =
        Signer::with_key(&stack.settings().namespace, &stack.settings().signing.key_id, &[9u8; 32]).sign(&queue, &body);
    stack.publish(Outgoing::to_queue(&queue, body.clone()).header(SIGNATURE_HEADER, HeaderValue::Text(forged))).await;
    stack.publish(Outgoing::to_queue(&queue, body.clone())).await;
    let dead = stack.take_messages(&format!("{queue}.dlq"), 2, Duration::from_secs(30)).await;
    for (headers, dead_body) in &dead {
        assert_eq!(headers["x-reelfleet-error-code"], "bad_signature");
        assert_eq!(headers["x-reelfleet-error-class"], "permanent");
        assert_eq!(dead_body, &body, "the dead-lettered body must be the original");
    }
    assert!(stack.manifests.load(&envelope.job_id).await.unwrap().is_none());
    assert_eq!(stack.depth(&stack.queue(WorkQueue::Inference(reelfleet_core::envelope::Tier::Medium))).await, 0);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_document_produces_a_generated_encoded_video() {
    let stack = TestStack::start().await;
    let doc = stack.dir.path().join("fox.json");
    std::fs::write(
        &doc,
        r#"{"prompt": "a red fox in the snow", "duration_seconds": 2, "resolution": "720p", "priority": 4}"#,
    )
    .unwrap();
    let job = stack.upload("prompts/red fox.json", &doc).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    assert_eq!(m.kind, JobKind::Generate);
    assert_eq!(m.tier, Some(reelfleet_core::envelope::Tier::High), "priority 4 is the high tier");
    let inference = m.inference.as_ref().unwrap();
    assert_eq!(inference.model, stack.settings().inference.video_model);
    let usage = stack.dev.simulator.usage();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].kind, "video");
    assert_eq!(usage[0].completion_tokens, inference.output_tokens);
    let h264 = m.outputs.iter().find(|o| o.name == "h264_720p").expect("h264 rendition");
    let probe = stack.probe_object(&h264.key).await;
    assert_eq!(probe.video().unwrap().codec_name, "h264");
    assert!((probe.duration().unwrap() - 2.0).abs() <= 0.1);
    assert!(m.outputs.iter().any(|o| o.name == "h265_720p" && o.codec == "hevc"));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_provider_failures_are_retried_then_dead_lettered_with_the_reason() {
    let stack = TestStack::start_with(|s| {
        s.retry.max_attempts = 3;
        s.retry.base_delay_ms = 1000;
        s.retry.max_delay_ms = 2000;
    })
    .await;
    stack.dev.simulator.configure(|c| c.error_rate = 1.0);
    let clip = make_clip(stack.dir.path(), "c.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let job = stack.upload("retry/c.mp4", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Failed);
    let err = m.error.as_ref().unwrap();
    assert_eq!((err.stage.as_str(), err.code.as_str(), err.attempts), ("inference", "provider", 3));
    assert!(err.message.contains("500"), "{}", err.message);
    let tier = m.tier.unwrap();
    let dead = stack
        .take_messages(&format!("{}.dlq", stack.queue(WorkQueue::Inference(tier))), 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead[0].0["x-reelfleet-error-class"], "transient");
    assert_eq!(dead[0].0["x-reelfleet-attempts"], "3");

    // A provider that recovers before the retries run out completes the job.
    let clip2 = make_clip(stack.dir.path(), "d.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let job2 = stack.upload("retry/d.mp4", &clip2).await;
    stack.wait_for(&job2, JOB_TIMEOUT, |m| m.status == JobStatus::Inference).await;
    let failures = || stack.dev.fleet.metrics.failures.with_label_values(&["inference", "transient", "provider"]).get();
    let before = failures();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while failures() == before {
        assert!(std::time::Instant::now() < deadline, "no failed attempt seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.dev.simulator.configure(|c| c.error_rate = 0.0);
    let m2 = stack.wait_for(&job2, JOB_TIMEOUT, finished).await;
    assert_eq!(m2.status, JobStatus::Completed, "{:?}", m2.error);
    // Retried after the recovery (a third attempt if this test was slow to notice).
    assert!((2..=3).contains(&m2.stages["inference"].attempts), "{:?}", m2.stages["inference"]);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reelfleet_submit_in_multipart_names_the_job_that_runs_and_rotation_is_applied() {
    let stack = TestStack::start_with(|s| {
        s.s3.multipart_threshold_bytes = 1;
        s.s3.part_size_bytes = 5 * 1024 * 1024;
    })
    .await;
    let dir = stack.dir.path();
    let plain = make_clip(
        dir,
        "plain.mp4",
        "testsrc2=size=1280x720:rate=24",
        4.0,
        &["-c:v", "libx264", "-crf", "0", "-preset", "ultrafast"],
    );
    let rotated = dir.join("phone clip.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&plain)
        .args(["-c", "copy", "-metadata:s:v:0", "rotate=90"])
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(status.success());
    let size = std::fs::metadata(&rotated).unwrap().len();
    assert!(size > 5 * 1024 * 1024, "the clip must need two parts, it has {size} bytes");

    let req = reelfleet_cli::ops::SubmitRequest { files: vec![rotated], priority: Some(4), ..Default::default() };
    let submitted = reelfleet_cli::ops::submit(stack.settings(), &req).await.unwrap();
    let m = stack.wait_for(&submitted[0].job_id, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    assert!(m.source.etag.as_deref().unwrap().ends_with("-2"), "not a multipart upload: {:?}", m.source.etag);
    assert_eq!(m.tier, Some(reelfleet_core::envelope::Tier::High), "the priority metadata was lost");
    let input = m.input.as_ref().unwrap();
    assert_eq!((input.width, input.height, input.rotation), (720, 1280, 90));
    let pre = m.preprocess.as_ref().unwrap();
    assert_eq!((pre.width, pre.height), (720, 1280));
    let normalized = stack.probe_object(pre.normalized_key.as_deref().unwrap()).await;
    assert_eq!(normalized.display_dimensions(), Some((720, 1280)));
    let v = normalized.video().unwrap();
    assert_eq!((v.codec_name.as_str(), v.pix_fmt.as_deref()), ("h264", Some("yuv420p")));
    assert_eq!(v.fps().map(|f| f.round() as u32), Some(24));
    assert!(m.outputs.iter().filter(|o| o.content_type == "video/mp4").all(|o| (o.width, o.height) == (720, 1280)));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_with_several_records_admits_each_object_on_its_own() {
    let stack = TestStack::start_with(|s| s.s3.accepted_buckets = vec!["archive".into()]).await;
    let dir = stack.dir.path();
    // Objects in a bucket without notifications, announced by one hand-made AWS event.
    let bucket = "archive";
    stack.storage.ensure_bucket(bucket).await.unwrap();
    let good = make_clip(dir, "good.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let bad = dir.join("bad.mp4");
    std::fs::write(&bad, b"no video here").unwrap();
    let good_info = stack.storage.upload(bucket, "in/good clip.mp4", &good, "video/mp4").await.unwrap();
    let bad_info = stack.storage.upload(bucket, "in/bad.mp4", &bad, "video/mp4").await.unwrap();
    let record = |key: &str, info: &reelfleet_core::storage::ObjectInfo| {
        serde_json::json!({
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": info.size, "eTag": info.etag}}
        })
    };
    let event =
        serde_json::json!({"Records": [record("in/good+clip.mp4", &good_info), record("in/bad.mp4", &bad_info)]});
    stack.publish(Outgoing::to_queue(stack.queue(WorkQueue::Ingest), serde_json::to_vec(&event).unwrap())).await;

    let source = |key: &str, info: &reelfleet_core::storage::ObjectInfo| SourceObject {
        bucket: bucket.into(),
        key: key.into(),
        size: info.size,
        etag: info.etag.clone(),
        version_id: None,
    };
    let good_job = source("in/good clip.mp4", &good_info).job_id();
    let bad_job = source("in/bad.mp4", &bad_info).job_id();
    let m = stack.wait_for(&good_job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    let b = stack.wait_for(&bad_job, JOB_TIMEOUT, finished).await;
    assert_eq!(b.status, JobStatus::Failed);
    let dead =
        stack.take_messages(&format!("{}.dlq", stack.queue(WorkQueue::Ingest)), 1, Duration::from_secs(10)).await;
    // The split-off event goes on as it came: unsigned, one record, checked again by ingest.
    let (headers, body) = &dead[0];
    assert!(!headers.contains_key(SIGNATURE_HEADER), "an unsigned event was re-emitted signed: {headers:?}");
    let objects = reelfleet_core::s3event::parse_event(body).expect("the dead letter is the split-off S3 event");
    assert_eq!(objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["in/bad.mp4"]);
    assert_eq!(stack.depth(&format!("{}.dlq", stack.queue(WorkQueue::Ingest))).await, 0);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_notification_on_the_uploads_exchange_starts_a_job() {
    // What MinIO's AMQP target (deploy/docker-compose.yml) does: publish the
    // event to `<ns>.uploads`, a fanout exchange the topology binds to ingest.
    let stack = TestStack::start_with(|s| s.s3.accepted_buckets = vec!["notified".into()]).await;
    let bucket = "notified";
    stack.storage.ensure_bucket(bucket).await.unwrap();
    let clip = make_clip(stack.dir.path(), "clip.mp4", "testsrc2=size=320x240:rate=24", 1.0, &[]);
    let info = stack.storage.upload(bucket, "cam/clip one.mp4", &clip, "video/mp4").await.unwrap();
    let etag = info.etag.clone().unwrap_or_default();
    let body = minio_event("ObjectCreated:Put", bucket, "cam/clip one.mp4", info.size, &etag, "minio");
    let outgoing = Outgoing {
        exchange: stack.topology.uploads_exchange(),
        routing_key: String::new(),
        body,
        mandatory: true,
        ..Default::default()
    };
    stack.publish(outgoing).await;
    let job = SourceObject {
        bucket: bucket.into(),
        key: "cam/clip one.mp4".into(),
        size: info.size,
        etag: info.etag.clone(),
        version_id: None,
    }
    .job_id();
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    stack.cleanup().await;
}

/// The master playlist of `hls` and every variant's files, downloaded from
/// the work bucket into a folder laid out as the bucket is.
async fn download_hls(stack: &TestStack, hls: &reelfleet_core::manifest::HlsOutput) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let prefix = hls.master_key.trim_end_matches("master.m3u8").to_string();
    let mut keys = vec![hls.master_key.clone()];
    for v in &hls.variants {
        let playlist = String::from_utf8(stack.read_object(&v.playlist_key).await).unwrap();
        let folder = v.playlist_key.rsplit_once('/').unwrap().0;
        keys.push(v.playlist_key.clone());
        let init = playlist.lines().find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"")).map(|u| u.trim_end_matches('"'));
        let segments = playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#'));
        keys.extend(init.into_iter().chain(segments).map(|f| format!("{folder}/{f}")));
    }
    for key in keys {
        let path = dir.path().join(key.strip_prefix(&prefix).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, stack.read_object(&key).await).unwrap();
    }
    dir
}

/// When each segment of a media playlist starts, from its `#EXTINF` durations, to the millisecond.
fn segment_starts(playlist: &str) -> Vec<f64> {
    let mut t = 0.0;
    let mut starts = Vec::new();
    for d in playlist.lines().filter_map(|l| l.strip_prefix("#EXTINF:")) {
        starts.push((t * 1000.0_f64).round() / 1000.0);
        t += d.trim_end_matches(',').parse::<f64>().unwrap();
    }
    starts
}

/// `(uri, attributes)` of every `#EXT-X-STREAM-INF` of a master playlist.
fn hls_variants(master: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = master.lines().collect();
    lines
        .windows(2)
        .filter_map(|w| w[0].strip_prefix("#EXT-X-STREAM-INF:").map(|a| (w[1].to_string(), a.to_string())))
        .collect()
}

/// One attribute of an attribute list (quoted values keep their quotes).
fn attr(list: &str, name: &str) -> String {
    let start = list.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {list}")) + name.len() + 1;
    let rest = &list[start..];
    let end = match rest.strip_prefix('"') {
        Some(quoted) => quoted.find('"').map(|i| i + 2),
        None => rest.find(','),
    };
    rest[..end.unwrap_or(rest.len())].to_string()
}

/// The SHA-256 of the packets of the first video stream of `path` (ffmpeg's
/// `streamhash` muxer over a stream copy: the bytes, not their container).
fn video_stream_hash(path: &std::path::Path) -> String {
    stream_hash(path, "0:v:0")
}

/// The SHA-256 of the packets of the stream `map` selects in `path`.
fn stream_hash(path: &std::path::Path, map: &str) -> String {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", map, "-c", "copy", "-f", "streamhash", "-hash", "sha256", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// When the keyframes of the first video stream of `path` fall, in seconds
/// from the first, to the millisecond (by ffprobe, from the packets' flags).
fn keyframe_times(path: &std::path::Path) -> Vec<f64> {
    let packets = ffprobe_json(path, &["-select_streams", "v:0", "-show_entries", "packet=pts_time,flags"]);
    let keyframes: Vec<f64> = packets["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["flags"].as_str().unwrap_or_default().contains('K'))
        .map(|p| p["pts_time"].as_str().unwrap().parse::<f64>().unwrap())
        .collect();
    let first = keyframes[0];
    keyframes.iter().map(|k| ((k - first) * 1000.0).round() / 1000.0).collect()
}

/// ffprobe's JSON of `path` (plain ffprobe, as a player's tooling would run it).
fn ffprobe_json(path: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An ffmpeg run without the bounds the stages put before every file output
/// (a `file:` word that is not an input, or a tee muxer's `[f=...]` spec):
/// `-fs` always (asserted), `-frames:v` unless the output sets its own.
fn strip_output_bounds(run: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(run.len());
    let mut group = 0;
    for (i, word) in run.iter().enumerate() {
        let input = i > 0 && run[i - 1] == "-i";
        let output = !input && (word.starts_with("file:") || word.starts_with("[f="));
        if output {
            let n = out.len();
            assert!(n >= 2 && out[n - 2] == "-fs", "a file output without -fs: {run:?}");
            out.truncate(n - 2);
            let n = out.len();
            if n >= 2 + group && out[n - 2] == "-frames:v" && !out[group..n - 2].iter().any(|w| w == "-frames:v") {
                out.truncate(n - 2);
            }
        }
        out.push(word.clone());
        if input || output {
            group = out.len();
        }
    }
    out
}

/// A run as the drift test compares it: the program's file name, every
/// `file:` argument reduced to its file name (the source, and the normalized
/// video postprocess downloads as its reference, named alike on both sides),
/// and every decimal number masked (rates and seek times come from the
/// normalized video's duration in the fleet, from the clip's in the plan).
fn comparable(words: &[String], clip_name: &str) -> Vec<String> {
    let mask_decimals = |w: &str| {
        let mut out = String::new();
        let mut rest = w;
        while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
            out.push_str(&rest[..i]);
            let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let int = digits(&rest[i..]);
            let after = &rest[i + int..];
            match after.strip_prefix('.').map(|f| (digits(f), f)) {
                Some((frac, _)) if frac > 0 => {
                    out.push('#');
                    rest = &after[1 + frac..];
                }
                _ => {
                    out.push_str(&rest[i..i + int]);
                    rest = after;
                }
            }
        }
        out + rest
    };
    let file_name = |p: &str| std::path::Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned());
    // A tee muxer's outputs: each path reduced to its file name, or from `hls/` on (`hls/h264_720p/index.m3u8`).
    let tee = |spec: &str| {
        spec.split('|')
            .map(|slave| match slave.split_once("file\\:") {
                Some((opts, path)) => {
                    let path = path.replace('\\', "");
                    let short = match path.rsplit_once("/hls/") {
                        Some((_, rest)) => format!("hls/{rest}"),
                        None => file_name(&path).unwrap_or_default(),
                    };
                    format!("{opts}{short}")
                }
                None => slave.to_string(),
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    // x265's CSV log in `-x265-params` (`...:csv=<path, \\-escaped>:...`): the path reduced to its file name.
    let x265_csv = |params: &str| match params.split_once(":csv=") {
        Some((head, rest)) => {
            let (mut path, mut tail, mut chars) = (String::new(), "", rest.char_indices());
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => path.extend(chars.next().map(|(_, c)| c)),
                    ':' => {
                        tail = &rest[i..];
                        break;
                    }
                    c => path.push(c),
                }
            }
            format!("{head}:csv={}{tail}", file_name(&path).unwrap_or_default())
        }
        None => params.to_string(),
    };
    words
        .iter()
        .enumerate()
        .map(|(i, w)| match (i, w.strip_prefix("file:")) {
            (_, None) if w.starts_with("[f=") => mask_decimals(&tee(w)),
            (_, None) if w.contains(":csv=") => mask_decimals(&x265_csv(w)),
            (0, _) => file_name(w).unwrap_or_default(),
            (_, Some(path)) => match file_name(path).unwrap_or_default() {
                n if n == "source" || n == clip_name => "SOURCE".into(),
                n if n == "reference.mp4" || n == "normalized.mp4" => "NORMALIZED".into(),
                n => n,
            },
            _ => mask_decimals(w),
        })
        .collect()
}

/// `reelfleet media plan` (the transcode baseline) lists the very ffprobe
/// and ffmpeg runs the fleet makes for a job: every run of a real job is
/// recorded through wrappers and held against the plan for the same clip, so
/// an argument or a filter graph changed on one side only fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_plan_lists_the_runs_the_fleet_makes() {
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("runs.log");
    for tool in ["ffmpeg", "ffprobe"] {
        use std::os::unix::fs::PermissionsExt;
        let path = tools.path().join(tool);
        let script = format!(
            "#!/bin/sh\n{{ printf '%s\\0' {tool} \"$@\"; printf '\\0'; }} >> '{}'\nexec {tool} \"$@\"\n",
            log.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let stack = TestStack::start_with(|s| {
        s.media.ffmpeg = tools.path().join("ffmpeg").display().to_string();
        s.media.ffprobe = tools.path().join("ffprobe").display().to_string();
        // The recording wrappers write their log next to them, which the
        // decoder sandbox keeps read-only: this test is about arguments.
        s.media.sandbox = reelfleet_core::settings::SandboxKind::None;
    })
    .await;
    let clip = make_clip(tools.path(), "planned.mp4", "testsrc2=size=320x240:rate=24", 2.0, &[]);
    let job = stack.upload("planned.mp4", &clip).await;
    let m = stack.wait_for(&job, JOB_TIMEOUT, finished).await;
    assert_eq!(m.status, JobStatus::Completed, "{:?}", m.error);
    let recorded = std::fs::read(&log).unwrap();
    let mut settings = stack.settings().clone();
    stack.cleanup().await;

    let mut fleet: Vec<Vec<String>> = Vec::new();
    let mut run = Vec::new();
    for word in recorded.split(|b| *b == 0).map(|w| String::from_utf8_lossy(w).into_owned()) {
        if word.is_empty() {
            if !run.is_empty() {
                fleet.push(std::mem::take(&mut run));
            }
        } else {
            run.push(word);
        }
    }
    // Each worker lists ffmpeg's demuxers and decoders once when it starts (its allow-lists), not per job.
    fleet.retain(|r| !r.iter().any(|w| w == "-demuxers" || w == "-decoders"));
    // The stages hold every decode to the validated input (media::Bounds):
    // `-t` before each input, `-frames:v` (unless set) and `-fs` before a file
    // output. The plan lists the builders' arguments without them.
    for run in &mut fleet {
        if run[0] != "ffmpeg" {
            continue;
        }
        let inputs = run.iter().filter(|w| *w == "-i").count();
        let bounded = run.windows(4).filter(|w| w[0] == "-t" && w[2] == "-i").count();
        assert_eq!(bounded, inputs, "an input read without -t: {run:?}");
        let mut stripped = Vec::with_capacity(run.len());
        let mut i = 0;
        while i < run.len() {
            if run[i] == "-t" && run.get(i + 2).is_some_and(|w| w == "-i") {
                i += 2;
                continue;
            }
            stripped.push(run[i].clone());
            i += 1;
        }
        *run = stripped;
        *run = strip_output_bounds(run);
    }

    settings.media.ffmpeg = "ffmpeg".into();
    settings.media.ffprobe = "ffprobe".into();
    let outdir = tempfile::tempdir().unwrap();
    let options = reelfleet_cli::media::PlanOptions { tier: m.tier.expect("a tier"), legacy: false };
    let plan = reelfleet_cli::media::plan(&settings, &clip, outdir.path(), options).await.expect("plan");
    let planned: Vec<Vec<String>> = plan
        .iter()
        .map(|r| {
            comparable(&std::iter::once(r.program.clone()).chain(r.args.clone()).collect::<Vec<_>>(), "planned.mp4")
        })
        .collect();
    let ran: Vec<Vec<String>> = fleet.iter().map(|r| comparable(r, "planned.mp4")).collect();
    assert_eq!(ran.len(), planned.len(), "the fleet made {} runs, the plan lists {}", ran.len(), planned.len());
    for (i, (r, p)) in ran.iter().zip(&planned).enumerate() {
        assert_eq!(r, p, "run {i} differs");
    }
}
