//! What ingest runs of ffprobe and ffmpeg to admit a video, as argument lists
//! built here for the stage and for `reelfleet media plan` alike.

use reelfleet_core::media::{Media, Probe, ToolCommand};
use std::path::Path;

/// The duration a video declares (the container's, else its video stream's),
/// when positive. Without one ingest counts the frames before any limit check.
pub fn declared_duration(probe: &Probe) -> Option<f64> {
    probe.duration().filter(|d| *d > 0.0)
}

/// The decode check: the first second of the video stream decoded to
/// nothing, stopping at the first error (a container can lie about frames).
pub fn decode_check_args(media: &Media, source: &Path) -> Vec<String> {
    let mut args = vec!["-v".to_string(), "error".into(), "-xerror".into()];
    args.extend(media.input_args(source));
    args.extend(["-t", "1", "-map", "0:v:0", "-f", "null", "-"].map(String::from));
    args
}

/// Every run ingest makes, in order, to admit the video at `source` whose
/// probe is `probe` (the first run).
pub fn plan(media: &Media, source: &Path, probe: &Probe) -> Vec<ToolCommand> {
    let mut runs = vec![media.probe_command(source)];
    if declared_duration(probe).is_none() {
        runs.push(media.count_packets_command(source));
    }
    runs.push(media.ffmpeg_command(&decode_check_args(media, source)));
    runs
}
