//! What postprocess runs of ffprobe and ffmpeg for an analyze job, as
//! argument lists built here for the stage and for `reelfleet media plan`
//! alike: a graph changed here changes both.
//!
//! One ffmpeg process makes the whole ladder ([`ladder_args`]): the
//! reference is decoded once and split to every rendition (each encoded once
//! and written by the tee muxer both as a faststart MP4 and as an HLS
//! variant of CMAF segments, keyframes forced at the same times in every
//! rendition), to the poster and to the sprite. A rendition the reference
//! already is (see [`crate::copies_reference`]) is not encoded: the same
//! process copies the reference's streams into its MP4 and HLS variant. A
//! second one ([`quality_args`]) decodes the reference once more and every
//! encoded rendition once, and measures them all: ffmpeg 5.1 cannot decode
//! an encoder's output inside the process that encodes it. [`legacy`] keeps the per-output
//! commands the fleet ran before, the transcode benchmark's baseline.

use crate::{plan_ladder, RenditionPlan};
use reelfleet_core::{
    manifest::VideoEncode,
    media::{keyframe_args, output_arg, secs_arg, tee_output, Media, ToolCommand},
    settings::PostprocessSettings,
};
use std::path::{Path, PathBuf};

/// The poster's file name, in scratch and in the work bucket.
pub const POSTER: &str = "poster.jpg";
/// The thumbnail sprite's file name, in scratch and in the work bucket.
pub const SPRITE: &str = "sprite.jpg";
/// The folder of the HLS files, in scratch and under `jobs/<id>/` in the work bucket.
pub const HLS_DIR: &str = "hls";
/// The HLS master playlist's file name, in [`HLS_DIR`].
pub const MASTER_PLAYLIST: &str = "master.m3u8";
/// A variant's playlist's file name, in `HLS_DIR/<rendition>/` (its segments
/// are `index0.m4s` onwards beside it, after `init.mp4`).
pub const VARIANT_PLAYLIST: &str = "index.m3u8";

/// A rendition's file name, in scratch and in the work bucket.
pub fn rendition_file(plan: &RenditionPlan) -> String {
    format!("{}.mp4", plan.name)
}

/// A rendition's HLS playlist under `dir`: `dir/hls/<name>/index.m3u8`.
pub fn variant_playlist(dir: &Path, plan: &RenditionPlan) -> PathBuf {
    dir.join(HLS_DIR).join(&plan.name).join(VARIANT_PLAYLIST)
}

/// A rendition's filter graph: scale, square pixels, yuv420p.
pub fn rendition_graph(plan: &RenditionPlan) -> String {
    format!("scale={}:{}:flags=bicubic,setsar=1,format=yuv420p", plan.width, plan.height)
}

/// The sprite graph: `n` frames evenly over `duration` seconds, 160 wide,
/// tiled five to a row.
pub fn sprite_graph(n: u32, duration: f64) -> String {
    let cols = n.min(5);
    let rows = n.div_ceil(cols);
    format!("fps={:.6},scale=160:-2,tile={cols}x{rows}", n as f64 / duration.max(0.1))
}

/// When the poster is taken: a tenth of the way into a `duration`-second video.
pub fn poster_time(duration: f64) -> f64 {
    duration * 0.1
}

/// The ladder's filter graph: the reference's video split to every
/// encoded rendition's graph (`[v<i>]`, `i` its place in `renditions`; a
/// copied one has none), to the poster (one frame at [`poster_time`],
/// `[poster]`) and to the sprite (`[sprite]`).
pub fn ladder_graph(renditions: &[RenditionPlan], sprite_frames: u32, duration: f64) -> String {
    let encoded: Vec<(usize, &RenditionPlan)> = renditions.iter().enumerate().filter(|(_, r)| !r.copy).collect();
    let n = encoded.len() + 2;
    let mut graph = format!("[0:v]split={n}");
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (k, (i, r)) in encoded.iter().enumerate() {
        graph.push_str(&format!(";[s{k}]{}[v{i}]", rendition_graph(r)));
    }
    let (p, s) = (encoded.len(), encoded.len() + 1);
    graph.push_str(&format!(
        ";[s{p}]trim=start={},setpts=PTS-STARTPTS,trim=end_frame=1[poster];[s{s}]{}[sprite]",
        secs_arg(poster_time(duration)),
        sprite_graph(sprite_frames.max(1), duration)
    ));
    graph
}

/// `-x265-params` of an H.265 rendition: quiet, and with a known frame
/// rate a closed, fixed GOP of one segment.
fn x265_params(segment_secs: f64, fps: f64) -> String {
    let gop = (segment_secs * fps).round() as u64;
    if gop > 0 {
        format!("log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0")
    } else {
        "log-level=error:scenecut=0:open-gop=0".into()
    }
}

/// How one rendition is encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoding<'a> {
    /// x264/x265 preset (`media.tier_presets` of the job's tier).
    pub preset: &'a str,
    /// Seconds per HLS segment (`media.hls_segment_secs`).
    pub segment_secs: f64,
    /// The reference's frame rate (0: unknown).
    pub fps: f64,
}

/// The CRF a rendition is encoded at: the configured one, less `lower` (a second encode after the quality floor).
pub fn crf(plan: &RenditionPlan, s: &PostprocessSettings, lower: u32) -> u32 {
    let base = if plan.encoder == "libx265" { s.h265_crf } else { s.h264_crf };
    base.saturating_sub(lower)
}

/// A rendition's encoder options and its output: its encoder at `crf`
/// (H.265 tagged `hvc1` for Apple players), keyframes per segment, AAC, and
/// the tee muxer writing the faststart MP4 and the HLS variant under `dir`.
pub fn rendition_output_args(plan: &RenditionPlan, crf: u32, e: &Encoding<'_>, dir: &Path) -> Vec<String> {
    let mut args = vec![
        "-c:v".to_string(),
        plan.encoder.into(),
        "-preset".into(),
        e.preset.into(),
        "-crf".into(),
        crf.to_string(),
    ];
    args.extend(keyframe_args(plan.encoder, e.segment_secs, e.fps));
    if plan.encoder == "libx265" {
        args.extend(["-tag:v".to_string(), "hvc1".into(), "-x265-params".into(), x265_params(e.segment_secs, e.fps)]);
    }
    args.extend(["-c:a", "aac", "-b:a", "128k"].map(String::from));
    args.extend(rendition_tee(plan, e, dir));
    args
}

/// A copied rendition's output: the reference's video and audio streams as
/// they are (no decode, no encode), to the same MP4 and HLS variant.
pub fn copy_output_args(plan: &RenditionPlan, e: &Encoding<'_>, dir: &Path) -> Vec<String> {
    let mut args = ["-c:v", "copy", "-c:a", "copy"].map(String::from).to_vec();
    args.extend(rendition_tee(plan, e, dir));
    args
}

/// The tee muxer writing a rendition's streams to its faststart MP4 and to
/// its HLS variant (CMAF segments of `e.segment_secs`, VOD playlist) under `dir`.
fn rendition_tee(plan: &RenditionPlan, e: &Encoding<'_>, dir: &Path) -> Vec<String> {
    let hls = format!(
        "f=hls:hls_time={}:hls_playlist_type=vod:hls_segment_type=fmp4:hls_flags=independent_segments",
        secs_arg(e.segment_secs)
    );
    vec![
        "-f".into(),
        "tee".into(),
        tee_output(&[
            ("f=mp4:movflags=+faststart".into(), dir.join(rendition_file(plan))),
            (hls, variant_playlist(dir, plan)),
        ]),
    ]
}

/// The one process of the ladder: `reference` decoded once, every rendition
/// (MP4 and HLS variant; encoded, or the reference's streams copied), the
/// poster and the sprite written to `dir`.
pub fn ladder_args(
    media: &Media,
    reference: &Path,
    dir: &Path,
    renditions: &[RenditionPlan],
    e: &Encoding<'_>,
    s: &PostprocessSettings,
    duration: f64,
) -> Vec<String> {
    let mut args = media.input_args(reference);
    args.extend(["-filter_complex".to_string(), ladder_graph(renditions, s.sprite_frames, duration)]);
    for (i, r) in renditions.iter().enumerate() {
        if r.copy {
            args.extend(["-map", "0:v:0", "-map", "0:a:0?"].map(String::from));
            args.extend(copy_output_args(r, e, dir));
        } else {
            args.extend(["-map".to_string(), format!("[v{i}]"), "-map".into(), "0:a:0?".into()]);
            args.extend(rendition_output_args(r, crf(r, s, 0), e, dir));
        }
    }
    args.extend(media.thread_args());
    args.extend(["-map", "[poster]", "-frames:v", "1", "-q:v", "2"].map(String::from));
    args.push(output_arg(&dir.join(POSTER)));
    args.extend(["-map", "[sprite]", "-frames:v", "1", "-q:v", "4"].map(String::from));
    args.push(output_arg(&dir.join(SPRITE)));
    args
}

/// One rendition encoded again, alone, `lower` CRF points better (it fell
/// below the quality floor): its MP4 and HLS variant in `dir` replaced.
pub fn reencode_args(
    media: &Media,
    reference: &Path,
    dir: &Path,
    plan: &RenditionPlan,
    e: &Encoding<'_>,
    s: &PostprocessSettings,
    lower: u32,
) -> Vec<String> {
    let mut args = media.input_args(reference);
    args.extend(["-map", "0:v:0", "-map", "0:a:0?"].map(String::from));
    args.extend(["-vf".to_string(), rendition_graph(plan)]);
    args.extend(media.thread_args());
    args.extend(rendition_output_args(plan, crf(plan, s, lower), e, dir));
    args
}

/// The quality graph of renditions `(name, width, height)`, inputs 1.. in
/// that order, against the reference (input 0) decoded once and scaled as
/// each was: PSNR and SSIM (and VMAF when `vmaf`) per rendition, each
/// filter named `psnr@<name>` so its log line says which rendition it scored.
pub fn quality_graph(renditions: &[(&str, u32, u32)], vmaf: bool) -> String {
    let measures: &[&str] = if vmaf { &["psnr", "ssim", "libvmaf"] } else { &["psnr", "ssim"] };
    let m = measures.len();
    let mut graph = format!("[0:v]split={}", renditions.len());
    for i in 0..renditions.len() {
        graph.push_str(&format!("[r{i}]"));
    }
    for (i, (name, w, h)) in renditions.iter().enumerate() {
        let refs: String = (0..m).map(|k| format!("[r{i}m{k}]")).collect();
        let dists: String = (0..m).map(|k| format!("[d{i}m{k}]")).collect();
        graph.push_str(&format!(";[r{i}]scale={w}:{h}:flags=bicubic,setsar=1,format=yuv420p,split={m}{refs}"));
        graph.push_str(&format!(";[{}:v]setsar=1,format=yuv420p,split={m}{dists}", i + 1));
        for (k, measure) in measures.iter().enumerate() {
            graph.push_str(&format!(";[d{i}m{k}][r{i}m{k}]{measure}@{name}"));
        }
    }
    graph
}

/// The quality check of every rendition `(name, path, width, height)`
/// against `reference` in one process, decoded to nothing: the scores are
/// in ffmpeg's log ([`crate::parse_quality_of`]).
pub fn quality_args(
    media: &Media,
    reference: &Path,
    renditions: &[(&str, &Path, u32, u32)],
    vmaf: bool,
) -> Vec<String> {
    let mut args = media.input_args(reference);
    for (_, path, _, _) in renditions {
        args.extend(media.input_args(path));
    }
    let sizes: Vec<(&str, u32, u32)> = renditions.iter().map(|(n, _, w, h)| (*n, *w, *h)).collect();
    args.extend(["-lavfi".to_string(), quality_graph(&sizes, vmaf), "-f".into(), "null".into(), "-".into()]);
    args
}

/// Every run postprocess makes, in order, for a reference video (the
/// normalized one, its picture encoded as `made` says) at `reference` of
/// `width`x`height`, `duration` seconds at `fps`, its files written to
/// `dir`, for a job whose renditions pass the quality floor (one that does
/// not adds a [`reencode_args`] run, a probe and a [`quality_args`] run of
/// that rendition). `vmaf`: whether ffmpeg has libvmaf (the stage asks it
/// with the filter listing that is the second run); `preset`: the job's
/// tier's (`media.tier_presets`).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    media: &Media,
    s: &PostprocessSettings,
    reference: &Path,
    (width, height): (u32, u32),
    made: Option<&VideoEncode>,
    duration: f64,
    fps: f64,
    preset: &str,
    vmaf: bool,
    dir: &Path,
) -> Vec<ToolCommand> {
    let mut runs = vec![media.probe_command(reference), media.filters_command()];
    let e = Encoding { preset, segment_secs: media.settings().hls_segment_secs, fps };
    let renditions = plan_ladder((width, height), made, s, &e);
    runs.push(media.ffmpeg_command(&ladder_args(media, reference, dir, &renditions, &e, s, duration)));
    let files: Vec<PathBuf> = renditions.iter().map(|r| dir.join(rendition_file(r))).collect();
    runs.extend(files.iter().map(|f| media.probe_command(f)));
    runs.push(media.probe_command(&dir.join(POSTER)));
    runs.push(media.probe_command(&dir.join(SPRITE)));
    let measured: Vec<(&str, &Path, u32, u32)> = renditions
        .iter()
        .zip(&files)
        .filter(|(r, _)| !r.copy)
        .map(|(r, f)| (r.name.as_str(), f.as_path(), r.width, r.height))
        .collect();
    if !measured.is_empty() {
        runs.push(media.ffmpeg_command(&quality_args(media, reference, &measured, vmaf)));
    }
    runs
}

/// The commands postprocess ran before the one-process ladder: one ffmpeg
/// per rendition, per quality check, for the poster and for the sprite
/// (the transcode benchmark's baseline, `reelfleet media plan --legacy`).
pub mod legacy {
    use super::{rendition_file, rendition_graph, sprite_graph, POSTER, SPRITE};
    use crate::{plan_renditions, RenditionPlan};
    use reelfleet_core::{
        media::{output_arg, Media, ToolCommand},
        settings::PostprocessSettings,
    };
    use std::path::Path;

    /// Encodes one rendition of `input`: its encoder at the configured CRF
    /// (H.265 tagged `hvc1` for Apple players), AAC, faststart MP4.
    pub fn encode_args(
        media: &Media,
        input: &Path,
        output: &Path,
        plan: &RenditionPlan,
        s: &PostprocessSettings,
    ) -> Vec<String> {
        let mut args = media.input_args(input);
        args.extend(["-map", "0:v:0", "-map", "0:a:0?"].map(String::from));
        args.extend([
            "-vf".to_string(),
            rendition_graph(plan),
            "-c:v".into(),
            plan.encoder.into(),
            "-preset".into(),
            media.preset().into(),
            "-crf".into(),
            if plan.encoder == "libx265" { s.h265_crf } else { s.h264_crf }.to_string(),
        ]);
        if plan.encoder == "libx265" {
            args.extend(["-tag:v", "hvc1", "-x265-params", "log-level=error"].map(String::from));
        }
        args.extend(["-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"].map(String::from));
        args.extend(media.thread_args());
        args.push(output_arg(output));
        args
    }

    /// The quality graph: the reference (input 1) scaled to the rendition's
    /// `w`x`h` as the rendition was, then PSNR and SSIM (and VMAF when `vmaf`)
    /// of the rendition (input 0) against it.
    pub fn quality_graph(w: u32, h: u32, vmaf: bool) -> String {
        if vmaf {
            format!("[1:v]scale={w}:{h}:flags=bicubic,setsar=1,format=yuv420p,split=3[r1][r2][r3];[0:v]setsar=1,format=yuv420p,split=3[a1][a2][a3];[a1][r1]psnr;[a2][r2]ssim;[a3][r3]libvmaf")
        } else {
            format!("[1:v]scale={w}:{h}:flags=bicubic,setsar=1,format=yuv420p,split=2[r1][r2];[0:v]setsar=1,format=yuv420p,split=2[a1][a2];[a1][r1]psnr;[a2][r2]ssim")
        }
    }

    /// The quality check of a `w`x`h` rendition against the reference, decoded
    /// to nothing: the scores are in ffmpeg's log.
    pub fn quality_args(media: &Media, rendition: &Path, reference: &Path, w: u32, h: u32, vmaf: bool) -> Vec<String> {
        let mut args = media.input_args(rendition);
        args.extend(media.input_args(reference));
        args.extend(["-lavfi".to_string(), quality_graph(w, h, vmaf), "-f".into(), "null".into(), "-".into()]);
        args
    }

    /// The poster: one frame a tenth of the way into a `duration`-second video.
    pub fn poster_args(media: &Media, reference: &Path, output: &Path, duration: f64) -> Vec<String> {
        let mut args = vec!["-ss".to_string(), format!("{:.3}", duration * 0.1)];
        args.extend(media.input_args(reference));
        args.extend(["-frames:v", "1", "-q:v", "2"].map(String::from));
        args.push(output_arg(output));
        args
    }

    /// The thumbnail sprite of a `duration`-second video: `postprocess.sprite_frames` (at least one) tiles.
    pub fn sprite_args(
        media: &Media,
        reference: &Path,
        output: &Path,
        s: &PostprocessSettings,
        duration: f64,
    ) -> Vec<String> {
        let mut args = media.input_args(reference);
        args.extend([
            "-an".to_string(),
            "-vf".into(),
            sprite_graph(s.sprite_frames.max(1), duration),
            "-frames:v".into(),
            "1".into(),
            "-q:v".into(),
            "4".into(),
        ]);
        args.push(output_arg(output));
        args
    }

    /// Every run postprocess makes, in order, for a reference video (the
    /// normalized one) at `reference` of `width`x`height` and `duration`
    /// seconds, its files written to `dir`. `vmaf`: whether ffmpeg has libvmaf
    /// (the stage asks it with the filter listing that is the second run).
    pub fn plan(
        media: &Media,
        s: &PostprocessSettings,
        reference: &Path,
        (width, height): (u32, u32),
        duration: f64,
        vmaf: bool,
        dir: &Path,
    ) -> Vec<ToolCommand> {
        let mut runs = vec![media.probe_command(reference), media.filters_command()];
        for r in plan_renditions(width, height) {
            let path = dir.join(rendition_file(&r));
            runs.push(media.ffmpeg_command(&encode_args(media, reference, &path, &r, s)));
            runs.push(media.probe_command(&path));
            runs.push(media.ffmpeg_command(&quality_args(media, &path, reference, r.width, r.height, vmaf)));
        }
        let (poster, sprite) = (dir.join(POSTER), dir.join(SPRITE));
        runs.push(media.ffmpeg_command(&poster_args(media, reference, &poster, duration)));
        runs.push(media.probe_command(&poster));
        runs.push(media.ffmpeg_command(&sprite_args(media, reference, &sprite, s, duration)));
        runs.push(media.probe_command(&sprite));
        runs
    }
}
