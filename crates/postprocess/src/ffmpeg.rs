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
//! process copies the reference's streams into its MP4 and HLS variant.
//!
//! The encoders measure what they encode: x264 and x265 compare every frame
//! they reconstruct (the picture a decoder will show, bit for bit) with the
//! frame they were given (the reference scaled as the rendition is), so PSNR
//! and SSIM cost no second decode ([`x264_scores`], [`x265_scores`]). A second process
//! ([`quality_args`]) decodes the reference once more and the renditions
//! once each and measures them with ffmpeg's filters only where an encoder
//! cannot say: VMAF (where ffmpeg has libvmaf) and an x264 encode that is
//! not its process's only one (x264 logs its scores without saying which
//! encode they are of); ffmpeg 5.1 cannot decode an encoder's output inside
//! the process that encodes it. [`legacy`] keeps the per-output commands the
//! fleet ran before, the transcode benchmark's baseline.

use crate::{plan_ladder, RenditionPlan};
use reelfleet_core::{
    manifest::VideoEncode,
    media::{keyframe_args, output_arg, secs_arg, tee_output, Media, ToolCommand},
    settings::PostprocessSettings,
};
use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

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

/// `-x265-params` of an H.265 rendition: with a known frame rate a closed,
/// fixed GOP of one segment; with `stats`, PSNR and SSIM of every frame
/// written to that CSV file (x265 measures only when it logs at `info`:
/// a summary of a dozen lines), else quiet.
fn x265_params(segment_secs: f64, fps: f64, stats: Option<&Path>) -> String {
    let mut params = match stats {
        Some(csv) => {
            format!("log-level=info:psnr=1:ssim=1:csv-log-level=1:csv={}", dict_value(&csv.display().to_string()))
        }
        None => "log-level=error".into(),
    };
    let gop = (segment_secs * fps).round() as u64;
    if gop > 0 {
        params.push_str(&format!(":keyint={gop}:min-keyint={gop}"));
    }
    params.push_str(":scenecut=0:open-gop=0");
    params
}

/// `value` escaped for ffmpeg's `key=value:key=value` option dictionaries
/// (`-x265-params`): a backslash before each character they give a meaning to.
fn dict_value(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if matches!(c, '\\' | '\'' | ':' | '=') || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The CSV file in `dir` an H.265 rendition's encode writes its frames'
/// PSNR and SSIM to ([`x265_scores`] reads it).
pub fn x265_stats_file(dir: &Path, plan: &RenditionPlan) -> PathBuf {
    dir.join(format!("{}.x265.csv", plan.name))
}

/// Whether the encoder of `plan`, one of `encoded` (every rendition one
/// process encodes), can report PSNR and SSIM that are that rendition's
/// alone: x265 writes them to a file of each encode's own; x264 logs them
/// without naming the encode, so only as its process's one x264 encode.
pub fn measured_by_encoder(plan: &RenditionPlan, encoded: &[&RenditionPlan]) -> bool {
    plan.encoder == "libx265" || encoded.iter().filter(|r| r.encoder == "libx264").count() == 1
}

/// The renditions among `encoded` (every rendition one process encodes)
/// that a filter pass ([`quality_args`]) must measure: every one when the
/// encoders do not measure (`measure` off, [`Encoding::measure`]), else
/// those whose encoder cannot ([`measured_by_encoder`]).
pub fn measured_by_filters<'a>(encoded: &[&'a RenditionPlan], measure: bool) -> Vec<&'a RenditionPlan> {
    encoded.iter().copied().filter(|r| !measure || !measured_by_encoder(r, encoded)).collect()
}

/// A PSNR in dB of a mean squared error of 8-bit samples; 100 for none
/// (a lossless picture, as x264 and [`crate::parse_quality`] say).
fn psnr_of_mse(mse: f64) -> f64 {
    if mse <= 1e-10 {
        100.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// PSNR and SSIM of one H.265 encode from x265's CSV log of its frames
/// ([`x265_stats_file`]): PSNR of the mean squared error of every frame's
/// three planes weighted by their size (4:2:0: 4, 1, 1), as ffmpeg's psnr
/// filter's `average` and x264's `Global`; SSIM of the luma plane, the mean
/// over frames, as ffmpeg's ssim filter's `Y` and x264's `SSIM Mean Y`.
/// `None` when the log holds no frame or lacks those columns. Read a line
/// at a time: a four-hour source's log is about 100 MB.
pub fn x265_scores(csv: impl BufRead) -> std::io::Result<Option<(f64, f64)>> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().transpose()? else { return Ok(None) };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let at = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(y), Some(u), Some(v), Some(ssim)) = (at("Y PSNR"), at("U PSNR"), at("V PSNR"), at("SSIM")) else {
        return Ok(None);
    };
    let mse = |psnr: f64| 255.0f64 * 255.0 / 10f64.powf(psnr / 10.0);
    let (mut frames, mut mse_sum, mut ssim_sum) = (0u64, 0.0, 0.0);
    for line in lines {
        let line = line?;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let value = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let (Some(py), Some(pu), Some(pv), Some(s)) = (value(y), value(u), value(v), value(ssim)) else {
            continue;
        };
        mse_sum += (4.0 * mse(py) + mse(pu) + mse(pv)) / 6.0;
        ssim_sum += s;
        frames += 1;
    }
    Ok((frames > 0).then(|| (psnr_of_mse(mse_sum / frames as f64), ssim_sum / frames as f64)))
}

/// PSNR (`Global`: of the mean squared error over every frame and plane)
/// and luma SSIM (`SSIM Mean Y`) of the one x264 encode whose summary is in
/// an ffmpeg log (its closing lines, not those per frame type); `None`
/// unless the log holds exactly one of each.
pub fn x264_scores(log: &str) -> Option<(f64, f64)> {
    let after = |line: &str, key: &str| -> Vec<f64> {
        log.lines()
            .filter_map(|l| l.strip_prefix("[libx264 @"))
            .filter_map(|l| l.split_once("] ").map(|(_, message)| message))
            .filter(|message| message.starts_with(line))
            .filter_map(|message| message.split(key).nth(1))
            .filter_map(|rest| rest.trim_start().split(|c: char| c.is_whitespace() || c == '(').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .collect()
    };
    match (after("PSNR Mean ", "Global:").as_slice(), after("SSIM Mean Y:", "SSIM Mean Y:").as_slice()) {
        ([psnr], [ssim]) => Some((*psnr, *ssim)),
        _ => None,
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
    /// Whether the encoders measure PSNR and SSIM of what they encode
    /// ([`measured_by_encoder`]); off when a filter pass runs anyway (VMAF).
    pub measure: bool,
    /// Whether the reference's audio already is the renditions' (the
    /// normalized video's: preprocess encodes it to AAC at 128 kb/s), so it
    /// is copied, not decoded and encoded again (a generation lost for
    /// nothing); off for a generated video's, which is as the provider made it.
    pub audio_copy: bool,
}

/// The CRF a rendition is encoded at: the configured one, less `lower` (a second encode after the quality floor).
pub fn crf(plan: &RenditionPlan, s: &PostprocessSettings, lower: u32) -> u32 {
    let base = if plan.encoder == "libx265" { s.h265_crf } else { s.h264_crf };
    base.saturating_sub(lower)
}

/// A rendition's encoder options and its output: its encoder at `crf`
/// (H.265 tagged `hvc1` for Apple players), keyframes per segment, AAC, and
/// the tee muxer writing the faststart MP4 and the HLS variant under `dir`.
/// `measure`: the encoder measures PSNR and SSIM ([`x264_scores`],
/// [`x265_scores`] from [`x265_stats_file`] in `dir`); measuring changes no
/// decision the encoder makes.
pub fn rendition_output_args(
    plan: &RenditionPlan,
    crf: u32,
    e: &Encoding<'_>,
    dir: &Path,
    measure: bool,
) -> Vec<String> {
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
        let stats = measure.then(|| x265_stats_file(dir, plan));
        let params = x265_params(e.segment_secs, e.fps, stats.as_deref());
        args.extend(["-tag:v".to_string(), "hvc1".into(), "-x265-params".into(), params]);
    } else if measure {
        args.extend(["-x264-params", "psnr=1:ssim=1"].map(String::from));
    }
    if e.audio_copy {
        args.extend(["-c:a", "copy"].map(String::from));
    } else {
        args.extend(["-c:a", "aac", "-b:a", "128k"].map(String::from));
    }
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
    let encoded: Vec<&RenditionPlan> = renditions.iter().filter(|r| !r.copy).collect();
    for (i, r) in renditions.iter().enumerate() {
        if r.copy {
            args.extend(["-map", "0:v:0", "-map", "0:a:0?"].map(String::from));
            args.extend(copy_output_args(r, e, dir));
        } else {
            args.extend(["-map".to_string(), format!("[v{i}]"), "-map".into(), "0:a:0?".into()]);
            let measure = e.measure && measured_by_encoder(r, &encoded);
            args.extend(rendition_output_args(r, crf(r, s, 0), e, dir, measure));
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
    args.extend(rendition_output_args(plan, crf(plan, s, lower), e, dir, e.measure));
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
/// not adds a [`reencode_args`] run and a probe of that rendition, and with
/// VMAF a [`quality_args`] run of it). `vmaf`: whether ffmpeg has libvmaf
/// (the stage asks it with the filter listing that is the second run; with
/// it a filter pass measures every encoded rendition, without it only those
/// [`measured_by_filters`] names); `preset`: the job's tier's
/// (`media.tier_presets`).
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
    let e = Encoding {
        preset,
        segment_secs: media.settings().hls_segment_secs,
        fps,
        measure: !vmaf,
        audio_copy: made.is_some(),
    };
    let renditions = plan_ladder((width, height), made, s, &e);
    runs.push(media.ffmpeg_command(&ladder_args(media, reference, dir, &renditions, &e, s, duration)));
    let files: Vec<PathBuf> = renditions.iter().map(|r| dir.join(rendition_file(r))).collect();
    runs.extend(files.iter().map(|f| media.probe_command(f)));
    runs.push(media.probe_command(&dir.join(POSTER)));
    runs.push(media.probe_command(&dir.join(SPRITE)));
    let encoded: Vec<&RenditionPlan> = renditions.iter().filter(|r| !r.copy).collect();
    let by_filters = measured_by_filters(&encoded, e.measure);
    let measured: Vec<(&str, &Path, u32, u32)> = renditions
        .iter()
        .zip(&files)
        .filter(|(r, _)| by_filters.iter().any(|f| f.name == r.name))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, encoder: &'static str) -> RenditionPlan {
        RenditionPlan { name: name.into(), encoder, width: 1280, height: 720, copy: false }
    }

    #[test]
    fn x265_scores_are_of_the_mean_squared_error_and_the_mean_luma_ssim() {
        // x265's CSV columns (csv-log-level=1 with psnr and ssim), two frames.
        let csv = "Encode Order, Type, POC, QP, Bits, Scenecut, RateFactor, Y PSNR, U PSNR, V PSNR, YUV PSNR, SSIM, SSIM(dB), Latency, List 0, List 1\n\
                   0, I-SLICE,    0, 27.10,     238352, 0,25.087,40.000, 50.000, 50.000, 41.5, 0.990000, 20.0,22,  -, -\n\
                   1, P-SLICE,    5, 29.34,      46888, 0,28.000,30.000, 40.000, 40.000, 31.5, 0.970000, 15.2,18, 0 , -\n";
        let (psnr, ssim) = x265_scores(csv.as_bytes()).unwrap().unwrap();
        // MSE per plane: 10^((48.13 - PSNR) / 10) of 255^2; luma weighs 4 of 6.
        let mse = |p: f64| 65025.0 / 10f64.powf(p / 10.0);
        let frame = |y: f64, c: f64| (4.0 * mse(y) + 2.0 * mse(c)) / 6.0;
        let expected = 10.0 * (65025.0 / ((frame(40.0, 50.0) + frame(30.0, 40.0)) / 2.0)).log10();
        assert!((psnr - expected).abs() < 1e-9, "{psnr} vs {expected}");
        assert!(psnr < 35.0, "the worse frame weighs more than in a mean of PSNRs (36.5): {psnr}");
        assert!((ssim - 0.98).abs() < 1e-12, "{ssim}");
        // A lossless encode is 100 dB, as x264 says; no frame or no PSNR column is no score.
        let lossless =
            csv.replace("40.000, 50.000, 50.000", "inf, inf, inf").replace("30.000, 40.000, 40.000", "inf, inf, inf");
        assert_eq!(x265_scores(lossless.as_bytes()).unwrap().unwrap().0, 100.0);
        assert_eq!(x265_scores(csv.lines().next().unwrap().as_bytes()).unwrap(), None);
        assert_eq!(x265_scores("Encode Order, Type, POC\n0, I-SLICE, 0\n".as_bytes()).unwrap(), None);
        assert_eq!(x265_scores("".as_bytes()).unwrap(), None);
    }

    #[test]
    fn x264_scores_are_read_only_from_one_x264_summary() {
        let one = "[libx264 @ 0x55a2] frame I:2     Avg QP:47.00  size:  1954  PSNR Mean Y:29.00 U:32.65 V:31.69 Avg:29.81 Global:29.72\n\
                   [libx264 @ 0x55a2] frame P:46    Avg QP:48.33  size:   436  PSNR Mean Y:27.84 U:30.64 V:29.29 Avg:28.42 Global:28.37\n\
                   [libx264 @ 0x55a2] Weighted P-Frames: Y:0.0% UV:0.0%\n\
                   [libx264 @ 0x55a2] SSIM Mean Y:0.9835481 (17.838db)\n\
                   [libx264 @ 0x55a2] PSNR Mean Y:39.985 U:38.607 V:38.185 Avg:39.385 Global:39.239 kb/s:492.44\n\
                   encoded 300 frames in 5.04s (59.56 fps), 1428.89 kb/s, Avg QP:34.25, Global PSNR: 36.971, SSIM Mean Y: 0.9756709 (16.139 dB)\n";
        assert_eq!(x264_scores(one), Some((39.239, 0.9835481)), "x265's summary line is not x264's");
        let two = format!("{one}{}", one.replace("0x55a2", "0x66b3"));
        assert_eq!(x264_scores(&two), None, "two x264 encodes cannot be told apart");
        assert_eq!(x264_scores("[libx264 @ 0x1] frame I:3 Avg QP:20.00 size: 1000\n"), None);
    }

    #[test]
    fn an_x264_encode_measures_itself_only_as_its_process_s_one() {
        let (h264, h264_big, h265) =
            (plan("h264_720p", "libx264"), plan("h264_1080p", "libx264"), plan("h265_720p", "libx265"));
        let names = |v: Vec<&RenditionPlan>| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert!(names(measured_by_filters(&[&h264, &h265], true)).is_empty());
        assert_eq!(names(measured_by_filters(&[&h264, &h264_big, &h265], true)), ["h264_720p", "h264_1080p"]);
        assert_eq!(names(measured_by_filters(&[&h264, &h265], false)), ["h264_720p", "h265_720p"], "VMAF: all");
        let e = Encoding { preset: "veryfast", segment_secs: 4.0, fps: 30.0, measure: true, audio_copy: false };
        let dir = Path::new("/scratch/job a:b");
        let args = rendition_output_args(&h265, 28, &e, dir, true);
        let params = args.iter().find(|a| a.starts_with("log-level=")).unwrap();
        assert_eq!(
            params,
            "log-level=info:psnr=1:ssim=1:csv-log-level=1:csv=/scratch/job\\ a\\:b/h265_720p.x265.csv:keyint=120:min-keyint=120:scenecut=0:open-gop=0"
        );
        assert!(rendition_output_args(&h264, 23, &e, dir, true).contains(&"psnr=1:ssim=1".to_string()));
        let quiet = rendition_output_args(&h264, 23, &e, dir, false);
        assert!(!quiet.iter().any(|a| a.contains("psnr")), "{quiet:?}");
        let quiet = rendition_output_args(&h265, 28, &e, dir, false);
        assert!(quiet.contains(&"log-level=error:keyint=120:min-keyint=120:scenecut=0:open-gop=0".to_string()));
    }
}
