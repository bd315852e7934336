//! HLS: the variant playlists ffmpeg wrote read back (segments, durations),
//! each variant's `BANDWIDTH` measured from its segments, its `CODECS` from
//! ffprobe's profile and level, and the master playlist written from them.

use reelfleet_core::media::ProbeStream;
use std::path::{Path, PathBuf};

/// One variant playlist as ffmpeg wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantPlaylist {
    /// `#EXT-X-MAP`'s URI: the CMAF init segment, beside the playlist.
    pub init: Option<String>,
    /// Every media segment: URI (beside the playlist) and `#EXTINF` seconds.
    pub segments: Vec<(String, f64)>,
}

/// Reads an HLS media playlist's init segment and segments.
pub fn parse_variant(text: &str) -> VariantPlaylist {
    let mut init = None;
    let mut segments = Vec::new();
    let mut pending: Option<f64> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("#EXT-X-MAP:") {
            init = rest.split(',').find_map(|a| a.trim().strip_prefix("URI=")).map(|u| u.trim_matches('"').to_string());
        } else if let Some(rest) = line.strip_prefix("#EXTINF:") {
            pending = rest.split(',').next().and_then(|d| d.trim().parse().ok());
        } else if !line.starts_with('#') {
            segments.push((line.to_string(), pending.take().unwrap_or(0.0)));
        }
    }
    VariantPlaylist { init, segments }
}

impl VariantPlaylist {
    /// Every file the playlist names (init first), relative to its folder.
    pub fn files(&self) -> Vec<&str> {
        self.init.iter().map(String::as_str).chain(self.segments.iter().map(|(u, _)| u.as_str())).collect()
    }

    /// When each segment starts, in seconds from the first.
    pub fn starts(&self) -> Vec<f64> {
        let mut t = 0.0;
        self.segments
            .iter()
            .map(|(_, d)| {
                let start = t;
                t += d;
                start
            })
            .collect()
    }

    /// `(BANDWIDTH, AVERAGE-BANDWIDTH)` in bits per second: the highest
    /// segment's rate (the init segment counted with the first, as a player
    /// loads it), and the whole variant's; `dir` holds the files.
    pub fn bandwidth(&self, dir: &Path) -> std::io::Result<(u64, u64)> {
        let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len());
        let init = match &self.init {
            Some(i) => size(i)?,
            None => 0,
        };
        let (mut peak, mut bytes, mut secs) = (0f64, init as f64, 0f64);
        for (i, (uri, d)) in self.segments.iter().enumerate() {
            let segment = size(uri)? as f64;
            bytes += segment;
            secs += d;
            let loaded = segment + if i == 0 { init as f64 } else { 0.0 };
            if *d > 0.0 {
                peak = peak.max(loaded * 8.0 / d);
            }
        }
        let average = if secs > 0.0 { bytes * 8.0 / secs } else { 0.0 };
        Ok((peak.ceil() as u64, average.ceil() as u64))
    }
}

/// The RFC 6381 codec string of a stream ffprobe described: `avc1.PPCCLL`
/// for H.264, `hvc1.P.6.LNN.B0` for H.265 (tagged `hvc1`), `mp4a.40.2` for
/// AAC-LC; `None` for codecs this pipeline does not write.
pub fn codec_string(s: &ProbeStream) -> Option<String> {
    let profile = s.profile.as_deref().unwrap_or_default();
    match s.codec_name.as_str() {
        "h264" => {
            let (idc, constraints) = match profile {
                "Constrained Baseline" => (66, 0xC0),
                "Baseline" => (66, 0x80),
                "Main" => (77, 0x40),
                "Extended" => (88, 0x00),
                "High" => (100, 0x00),
                "High 10" => (110, 0x00),
                "High 4:2:2" => (122, 0x00),
                "High 4:4:4 Predictive" => (244, 0x00),
                _ => return None,
            };
            Some(format!("avc1.{idc:02X}{constraints:02X}{:02X}", s.level.filter(|l| *l > 0)?))
        }
        "hevc" => {
            let (idc, compat) = match profile {
                "Main" => (1, 6),
                "Main 10" => (2, 4),
                _ => return None,
            };
            Some(format!("hvc1.{idc}.{compat}.L{}.B0", s.level.filter(|l| *l > 0)?))
        }
        "aac" => Some(match profile {
            "HE-AAC" => "mp4a.40.5".into(),
            _ => "mp4a.40.2".into(),
        }),
        _ => None,
    }
}

/// One variant of the master playlist.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// Its playlist, relative to the master (`h264_720p/index.m3u8`).
    pub uri: String,
    /// Peak bits per second.
    pub bandwidth: u64,
    /// Mean bits per second.
    pub average_bandwidth: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second, when known.
    pub fps: Option<f64>,
    /// RFC 6381 codecs, comma-separated (`avc1.64001F,mp4a.40.2`).
    pub codecs: String,
}

/// The master playlist of `variants`, in the order given.
pub fn master_playlist(variants: &[Variant]) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        text.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{}\"",
            v.bandwidth, v.average_bandwidth, v.width, v.height, v.codecs
        ));
        if let Some(fps) = v.fps.filter(|f| f.is_finite() && *f > 0.0) {
            text.push_str(&format!(",FRAME-RATE={fps:.3}"));
        }
        text.push('\n');
        text.push_str(&v.uri);
        text.push('\n');
    }
    text
}

/// Every file of a variant in `dir` (its playlist first), for uploading.
pub fn variant_files(dir: &Path, playlist: &VariantPlaylist) -> Vec<PathBuf> {
    playlist.files().iter().map(|f| dir.join(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\nindex0.m4s\n#EXTINF:2.000000,\nindex1.m4s\n#EXTINF:0.500000,\nindex2.m4s\n#EXT-X-ENDLIST\n";

    #[test]
    fn a_variant_playlist_reads_back() {
        let v = parse_variant(PLAYLIST);
        assert_eq!(v.init.as_deref(), Some("init.mp4"));
        assert_eq!(v.files(), ["init.mp4", "index0.m4s", "index1.m4s", "index2.m4s"]);
        assert_eq!(v.starts(), [0.0, 2.0, 4.0]);
    }

    #[test]
    fn bandwidth_is_the_peak_segment_and_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("init.mp4", 1000), ("index0.m4s", 24_000), ("index1.m4s", 50_000), ("index2.m4s", 5000)]
        {
            std::fs::write(dir.path().join(name), vec![0u8; bytes]).unwrap();
        }
        let (peak, average) = parse_variant(PLAYLIST).bandwidth(dir.path()).unwrap();
        assert_eq!(peak, 200_000, "index1: 50 kB in 2 s");
        assert_eq!(average, 142_223, "80 kB in 4.5 s");
    }

    #[test]
    fn codec_strings_follow_profile_and_level() {
        let s = |codec: &str, profile: &str, level: i64| ProbeStream {
            codec_name: codec.into(),
            profile: Some(profile.into()),
            level: Some(level),
            ..Default::default()
        };
        assert_eq!(codec_string(&s("h264", "High", 31)).as_deref(), Some("avc1.64001F"));
        assert_eq!(codec_string(&s("h264", "Constrained Baseline", 30)).as_deref(), Some("avc1.42C01E"));
        assert_eq!(codec_string(&s("h264", "High", 40)).as_deref(), Some("avc1.640028"));
        assert_eq!(codec_string(&s("hevc", "Main", 93)).as_deref(), Some("hvc1.1.6.L93.B0"));
        assert_eq!(codec_string(&s("aac", "LC", -99)).as_deref(), Some("mp4a.40.2"));
        assert_eq!(codec_string(&s("vp9", "Profile 0", 31)), None);
        assert_eq!(codec_string(&s("h264", "High", -99)), None, "no level, no string");
    }

    #[test]
    fn the_master_names_every_variant_with_its_attributes() {
        let v = Variant {
            uri: "h264_720p/index.m3u8".into(),
            bandwidth: 2_000_000,
            average_bandwidth: 1_500_000,
            width: 1280,
            height: 720,
            fps: Some(30.0),
            codecs: "avc1.64001F,mp4a.40.2".into(),
        };
        let text = master_playlist(&[v]);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=2000000,AVERAGE-BANDWIDTH=1500000,RESOLUTION=1280x720,CODECS=\"avc1.64001F,mp4a.40.2\",FRAME-RATE=30.000\nh264_720p/index.m3u8\n"
        );
    }
}
