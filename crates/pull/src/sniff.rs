//! What a body's first bytes say it is: the video containers a pull
//! accepts, whatever the server's `Content-Type` claims.

/// Bytes of a body read before it is judged: enough to see a transport
/// stream's second sync byte (the other containers need 12).
pub const SNIFF_BYTES: usize = 189;

/// A recognised video container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// ISO base media (MP4, MOV with `ftyp`, 3GP, ...).
    IsoBmff,
    /// QuickTime without `ftyp` (starts with `moov`, `mdat`, `wide`, `free`, `skip`, `pnot`).
    QuickTime,
    /// Matroska or WebM (EBML header).
    Matroska,
    /// MPEG transport stream (0x47 sync every 188 bytes).
    MpegTs,
    /// AVI (RIFF ... AVI ).
    Avi,
    /// Flash video.
    Flv,
}

impl Container {
    /// The MIME type the pulled object is stored with.
    pub fn mime(self) -> &'static str {
        match self {
            Container::IsoBmff => "video/mp4",
            Container::QuickTime => "video/quicktime",
            Container::Matroska => "video/x-matroska",
            Container::MpegTs => "video/mp2t",
            Container::Avi => "video/x-msvideo",
            Container::Flv => "video/x-flv",
        }
    }
}

/// The container `head` (a body's first bytes, at least [`SNIFF_BYTES`]
/// unless the body is shorter) starts, or `None`. A transport stream is
/// recognised by its sync byte at 0 and at 188 (one `G` is also how a GIF starts).
pub fn sniff(head: &[u8]) -> Option<Container> {
    let at = |i: usize, magic: &[u8]| head.get(i..i + magic.len()) == Some(magic);
    if at(4, b"ftyp") {
        return Some(Container::IsoBmff);
    }
    if [b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"].iter().any(|m| at(4, *m)) {
        return Some(Container::QuickTime);
    }
    if at(0, &[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some(Container::Matroska);
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some(Container::Avi);
    }
    if at(0, b"FLV") && head.get(3) == Some(&1) {
        return Some(Container::Flv);
    }
    if head.first() == Some(&0x47) && head.get(188) == Some(&0x47) {
        return Some(Container::MpegTs);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_told_by_their_first_bytes() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend(b"ftypisom\0\0\x02\0");
        let mut mov = vec![0, 0, 0, 8];
        mov.extend(b"wide\0\0\0\0mdat");
        let mkv = [0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 1, 0x42, 0xf7, 0x81, 1, 0x42, 0xf2, 0x81];
        let avi = b"RIFF\x10\0\0\0AVI LIST\0\0\0\0";
        let flv = b"FLV\x01\x05\0\0\0\x09\0\0\0\0\x12\0\0";
        let mut ts = vec![0u8; 376];
        ts[0] = 0x47;
        ts[188] = 0x47;
        let table: [(&[u8], Option<Container>); 12] = [
            (&mp4, Some(Container::IsoBmff)),
            (&mov, Some(Container::QuickTime)),
            (&mkv, Some(Container::Matroska)),
            (avi, Some(Container::Avi)),
            (flv, Some(Container::Flv)),
            (&ts, Some(Container::MpegTs)),
            (&ts[..16], None),
            (b"<!DOCTYPE html><html>", None),
            (b"RIFF\x10\0\0\0WAVEfmt ", None),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", None),
            (b"", None),
            (b"GIF89a", None),
        ];
        for (head, expected) in table {
            assert_eq!(sniff(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
        let mut broken_ts = ts.clone();
        broken_ts[188] = 0;
        assert_eq!(sniff(&broken_ts), None, "a lone 0x47 is not a transport stream");
    }
}
