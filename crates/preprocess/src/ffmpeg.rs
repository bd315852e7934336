//! What preprocess runs of ffprobe and ffmpeg for an analyze job, as
//! argument lists built here for the stage and for `reelfleet media plan`
//! alike: a graph changed here changes both.
//!
//! One ffmpeg process decodes the source once ([`single_pass_args`]): the
//! normalized frames are split to the encoder, to the complexity
//! measurement and to the keyframe extraction. [`legacy`] keeps the three
//! commands the fleet ran before (normalize, then decode the normalized
//! video twice), the transcode benchmark's baseline.

use crate::target_dimensions;
use reelfleet_core::{
    error::StageError,
    manifest::VideoEncode,
    media::{keyframe_args, output_arg, Media, Probe, ToolCommand},
    settings::PreprocessSettings,
};
use std::path::Path;

/// The normalized video's file name, in scratch and in the work bucket.
pub const NORMALIZED: &str = "normalized.mp4";
/// ffmpeg's output pattern for the keyframes: `keyframe-01.jpg` onwards.
pub const KEYFRAMES: &str = "keyframe-%02d.jpg";

/// Size and frame rate of a normalized video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Pixels, even, never more than the source's.
    pub width: u32,
    /// Pixels, even, never more than the source's.
    pub height: u32,
    /// Frames per second: `fps_hd` when the short side is 1080 or more, else `fps_sd`.
    pub fps: u32,
}

/// The frame a video probed as `probe` is normalized to (its displayed size,
/// so rotation applied, capped by [`target_dimensions`]).
pub fn normalized_frame(probe: &Probe, s: &PreprocessSettings) -> Result<Frame, StageError> {
    let (w, h) =
        probe.display_dimensions().ok_or_else(|| StageError::permanent("bad_input", "no video stream to normalize"))?;
    let (width, height) = target_dimensions(w, h, s);
    let fps = if width.min(height) >= 1080 { s.fps_hd } else { s.fps_sd };
    Ok(Frame { width, height, fps })
}

/// The normalize filter graph: scale, square pixels, fixed rate, yuv420p.
pub fn normalize_graph(f: Frame) -> String {
    format!("scale={}:{}:flags=bicubic,setsar=1,fps={},format=yuv420p", f.width, f.height, f.fps)
}

/// The normalized video's encoder options: H.264 at the configured CRF,
/// AAC stereo, faststart MP4.
fn normalize_output_args(media: &Media, s: &PreprocessSettings) -> Vec<String> {
    let mut args = vec![
        "-c:v".to_string(),
        "libx264".into(),
        "-preset".into(),
        media.preset().into(),
        "-crf".into(),
        s.crf.to_string(),
        "-pix_fmt".into(),
        "yuv420p".into(),
        "-c:a".into(),
        "aac".into(),
        "-b:a".into(),
        "128k".into(),
        "-ac".into(),
        "2".into(),
        "-movflags".into(),
        "+faststart".into(),
    ];
    args.extend(media.thread_args());
    args
}

/// How the single pass encodes the normalized video's picture: x264 at
/// `media.preset` and `preprocess.crf`, a keyframe at every multiple of
/// `media.hls_segment_secs` and nowhere else, as postprocess encodes an
/// H.264 rendition. Where the two agree (size, CRF, preset), postprocess
/// copies the normalized stream as that rendition instead of encoding it again.
pub fn normalized_encode(media: &Media, s: &PreprocessSettings) -> VideoEncode {
    VideoEncode {
        encoder: "libx264".into(),
        preset: media.preset().into(),
        crf: s.crf,
        keyframe_secs: Some(media.settings().hls_segment_secs),
    }
}

/// The single pass's filter graph: the source's first video stream
/// normalized, then split to the encoder (`[norm]`), the complexity
/// measurement (`[cx]`) and the keyframes (`[kf]`: `n` over `duration` seconds).
pub fn single_pass_graph(f: Frame, n: u32, duration: f64) -> String {
    format!(
        "[0:v:0]{},split=3[norm][c][k];[c]{COMPLEXITY_GRAPH}[cx];[k]{}[kf]",
        normalize_graph(f),
        keyframes_graph(n, duration)
    )
}

/// Normalize, complexity and keyframes in one process that decodes `source`
/// once: the normalized video (first video and audio stream only, encoded
/// as [`normalized_encode`] says) to `dir/normalized.mp4`, `n` keyframes to [`KEYFRAMES`] in `dir`, the
/// complexity measures to the log (decoded to nothing). `duration`: the
/// source's, which the keyframes are spread over.
pub fn single_pass_args(
    media: &Media,
    source: &Path,
    dir: &Path,
    f: Frame,
    s: &PreprocessSettings,
    n: u32,
    duration: f64,
) -> Vec<String> {
    let mut args = media.input_args(source);
    args.extend(["-filter_complex".to_string(), single_pass_graph(f, n, duration)]);
    args.extend(["-map", "[norm]", "-map", "0:a:0?"].map(String::from));
    args.extend(normalize_output_args(media, s));
    let encode = normalized_encode(media, s);
    args.extend(keyframe_args(&encode.encoder, encode.keyframe_secs.unwrap_or_default(), f.fps.into()));
    args.push(output_arg(&dir.join(NORMALIZED)));
    args.extend(["-map", "[kf]", "-frames:v", &n.to_string(), "-q:v", "3"].map(String::from));
    args.push(output_arg(&dir.join(KEYFRAMES)));
    args.extend(["-map", "[cx]", "-f", "null", "-"].map(String::from));
    args
}

/// The complexity graph: per frame, the scene score and the mean luma
/// difference to the previous frame, printed to the log.
pub const COMPLEXITY_GRAPH: &str = "scale=320:-2,format=gray,select='gte(scene\\,0)',metadata=print:key=lavfi.scene_score,tblend=all_mode=difference,signalstats,metadata=print:key=lavfi.signalstats.YAVG";

/// Keyframes taken of a video: `preprocess.keyframes`, at least one.
pub fn keyframe_count(s: &PreprocessSettings) -> u32 {
    s.keyframes.max(1)
}

/// The keyframe graph: `n` frames evenly over `duration` seconds, at most 640 wide.
pub fn keyframes_graph(n: u32, duration: f64) -> String {
    let rate = n as f64 / duration.max(0.1);
    format!("fps={rate:.6},scale='min(640,iw)':-2")
}

/// Every run preprocess makes, in order, for an analyze job whose source is
/// at `source` (probed as `probe`), its files written to `dir`; and the frame
/// it normalizes to. The keyframes are spread over the source's duration
/// (what ingest validated; the fleet holds it in the manifest).
pub fn plan(
    media: &Media,
    s: &PreprocessSettings,
    source: &Path,
    probe: &Probe,
    dir: &Path,
) -> Result<(Vec<ToolCommand>, Frame), StageError> {
    let frame = normalized_frame(probe, s)?;
    let duration = probe.duration().unwrap_or(0.0);
    let runs = vec![
        media.probe_command(source),
        media.ffmpeg_command(&single_pass_args(media, source, dir, frame, s, keyframe_count(s), duration)),
        media.probe_command(&dir.join(NORMALIZED)),
    ];
    Ok((runs, frame))
}

/// The commands preprocess ran before the single pass: normalize, then the
/// complexity measurement and the keyframes each decoding the normalized
/// video again (the transcode benchmark's baseline, `reelfleet media plan --legacy`).
pub mod legacy {
    use super::{
        keyframe_count, keyframes_graph, normalize_graph, normalize_output_args, normalized_frame, Frame,
        COMPLEXITY_GRAPH, KEYFRAMES, NORMALIZED,
    };
    use reelfleet_core::{
        error::StageError,
        media::{output_arg, Media, Probe, ToolCommand},
        settings::PreprocessSettings,
    };
    use std::path::Path;

    /// Normalize: first video and audio stream only, H.264 at the configured
    /// CRF, AAC stereo, faststart MP4.
    pub fn normalize_args(
        media: &Media,
        source: &Path,
        output: &Path,
        f: Frame,
        s: &PreprocessSettings,
    ) -> Vec<String> {
        let mut args = media.input_args(source);
        args.extend(["-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"].map(String::from));
        args.extend(["-vf".to_string(), normalize_graph(f)]);
        args.extend(normalize_output_args(media, s));
        args.push(output_arg(output));
        args
    }

    /// The complexity measurement over `video`, decoded to nothing.
    pub fn complexity_args(media: &Media, video: &Path) -> Vec<String> {
        let mut args = media.input_args(video);
        args.extend(["-an".to_string(), "-vf".into(), COMPLEXITY_GRAPH.into(), "-f".into(), "null".into(), "-".into()]);
        args
    }

    /// `n` keyframes of `video` as JPEG files [`KEYFRAMES`] in `dir`.
    pub fn keyframes_args(media: &Media, video: &Path, dir: &Path, n: u32, duration: f64) -> Vec<String> {
        let mut args = media.input_args(video);
        args.extend([
            "-an".to_string(),
            "-vf".into(),
            keyframes_graph(n, duration),
            "-frames:v".into(),
            n.to_string(),
            "-q:v".into(),
            "3".into(),
            output_arg(&dir.join(KEYFRAMES)),
        ]);
        args
    }

    /// Every run preprocess makes, in order, for an analyze job whose source is
    /// at `source` (probed as `probe`), its files written to `dir`; and the frame
    /// it normalizes to. The normalized video's duration, which sets the
    /// keyframe rate, is known only once it is made: the source's stands in for it.
    pub fn plan(
        media: &Media,
        s: &PreprocessSettings,
        source: &Path,
        probe: &Probe,
        dir: &Path,
    ) -> Result<(Vec<ToolCommand>, Frame), StageError> {
        let frame = normalized_frame(probe, s)?;
        let normalized = dir.join(NORMALIZED);
        let duration = probe.duration().unwrap_or(0.0);
        let runs = vec![
            media.probe_command(source),
            media.ffmpeg_command(&normalize_args(media, source, &normalized, frame, s)),
            media.probe_command(&normalized),
            media.ffmpeg_command(&complexity_args(media, &normalized)),
            media.ffmpeg_command(&keyframes_args(media, &normalized, dir, keyframe_count(s), duration)),
        ];
        Ok((runs, frame))
    }
}
