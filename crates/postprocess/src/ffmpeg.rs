//! What postprocess runs of ffprobe and ffmpeg for an analyze job, as
//! argument lists built here for the stage and for `reelfleet media plan`
//! alike: a graph changed here changes both.

use crate::{plan_renditions, RenditionPlan};
use reelfleet_core::{
    media::{output_arg, Media, ToolCommand},
    settings::PostprocessSettings,
};
use std::path::Path;

/// The poster's file name, in scratch and in the work bucket.
pub const POSTER: &str = "poster.jpg";
/// The thumbnail sprite's file name, in scratch and in the work bucket.
pub const SPRITE: &str = "sprite.jpg";

/// A rendition's file name, in scratch and in the work bucket.
pub fn rendition_file(plan: &RenditionPlan) -> String {
    format!("{}.mp4", plan.name)
}

/// A rendition's filter graph: scale, square pixels, yuv420p.
pub fn rendition_graph(plan: &RenditionPlan) -> String {
    format!("scale={}:{}:flags=bicubic,setsar=1,format=yuv420p", plan.width, plan.height)
}

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

/// The sprite graph: `n` frames evenly over `duration` seconds, 160 wide,
/// tiled five to a row.
pub fn sprite_graph(n: u32, duration: f64) -> String {
    let cols = n.min(5);
    let rows = n.div_ceil(cols);
    format!("fps={:.6},scale=160:-2,tile={cols}x{rows}", n as f64 / duration.max(0.1))
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
