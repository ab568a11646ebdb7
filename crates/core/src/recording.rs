//! A space's recording as it lies on disk: its sealed LL-HLS segments ([`crate::hls`]), one
//! record each, appended to one file.
//!
//! Contract: a record is a 40-byte header (magic `LVS1`, the segment's number, the position
//! of its first packet, its duration in 48 kHz samples, the capture time of its first packet,
//! the length of its bytes, a CRC-32 over the header's other fields and the bytes), then the
//! segment's fMP4 bytes. Records are only appended; a crash leaves at most one torn record at
//! the end. [`scan`] reads a file back: every whole record up to the first that is short,
//! malformed, out of order or fails its CRC, where it stops and says why; what follows is
//! never served (the recorder cuts it off before appending again). Integers are big-endian.
//! Pure: bytes in, entries out.

use levee_media::ogg::crc32;

/// Magic of a record.
pub const MAGIC: &[u8; 4] = b"LVS1";
/// Bytes of a record's header.
pub const HEADER: usize = 40;
/// Most bytes of one segment (a 960-ms segment at 512 kbit/s is about 62 KiB).
pub const MAX_SEGMENT_BYTES: u32 = 1 << 20;

/// What a record says of its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its media sequence number (`hls` naming).
    pub msn: u64,
    /// Position of its first packet, 48 kHz samples since the space began.
    pub pts: u64,
    /// Its duration, 48 kHz samples.
    pub samples: u32,
    /// Capture time of its first packet, µs since the Unix epoch.
    pub capture_us: u64,
}

/// A whole record found by [`scan`]: its segment and where its bytes lie in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The segment.
    pub segment: Segment,
    /// Offset of its bytes in the file.
    pub offset: u64,
    /// Their length.
    pub len: u32,
}

fn checksum(header: &[u8], data: &[u8]) -> u32 {
    // Everything but the magic and the CRC field itself.
    let mut covered = Vec::with_capacity(32 + data.len());
    covered.extend_from_slice(&header[4..36]);
    covered.extend_from_slice(data);
    crc32(&covered)
}

/// The record of `segment` with bytes `data` (at most [`MAX_SEGMENT_BYTES`]).
pub fn encode(segment: &Segment, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER + data.len());
    r.extend_from_slice(MAGIC);
    r.extend_from_slice(&segment.msn.to_be_bytes());
    r.extend_from_slice(&segment.pts.to_be_bytes());
    r.extend_from_slice(&segment.samples.to_be_bytes());
    r.extend_from_slice(&segment.capture_us.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let crc = checksum(&r[..], data);
    r.extend_from_slice(&crc.to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The whole records, in order.
    pub entries: Vec<Entry>,
    /// Bytes of the file up to the end of the last whole record.
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub torn: Option<&'static str>,
}

/// Reads a recording file back. See the module docs.
pub fn scan(file: &[u8]) -> Scan {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let u64_at = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let torn = loop {
        let rest = &file[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER {
            break Some("a record's header is cut short");
        }
        let h = &rest[..HEADER];
        if &h[..4] != MAGIC {
            break Some("a record does not start with LVS1");
        }
        let len = u32_at(h, 32);
        if len > MAX_SEGMENT_BYTES {
            break Some("a record is longer than a segment may be");
        }
        if rest.len() < HEADER + len as usize {
            break Some("a record's bytes are cut short");
        }
        let data = &rest[HEADER..HEADER + len as usize];
        if checksum(h, data) != u32_at(h, 36) {
            break Some("a record fails its CRC");
        }
        let segment = Segment {
            msn: u64_at(h, 4),
            pts: u64_at(h, 12),
            samples: u32_at(h, 20),
            capture_us: u64_at(h, 24),
        };
        if entries
            .last()
            .is_some_and(|e: &Entry| e.segment.msn >= segment.msn)
        {
            break Some("a record does not follow the one before it");
        }
        entries.push(Entry {
            segment,
            offset: (at + HEADER) as u64,
            len,
        });
        at += HEADER + len as usize;
    };
    Scan {
        entries,
        valid_len: at as u64,
        torn,
    }
}

/// The VOD playlist of a recording's `entries` (`EXT-X-PLAYLIST-TYPE:VOD`), its segments named
/// `r{msn}.m4s` beside `init.mp4`.
pub fn vod_playlist(entries: &[Entry]) -> String {
    use std::fmt::Write;
    let longest = entries
        .iter()
        .map(|e| e.segment.samples as f64 / 48_000.0)
        .fold(1.0, f64::max)
        .ceil();
    let mut o = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{longest}\n#EXT-X-PLAYLIST-TYPE:VOD\n\
         #EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-MAP:URI=\"init.mp4\"\n"
    );
    let mut last: Option<&Entry> = None;
    for e in entries {
        let s = e.segment;
        // A gap (the source was away, or a segment was not kept) is a discontinuity in time.
        if last.is_some_and(|l| l.segment.msn + 1 != s.msn) {
            o.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = write!(
            o,
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{:.3},\nr{}.m4s\n",
            crate::hls::rfc3339_ms(s.capture_us),
            s.samples as f64 / 48_000.0,
            s.msn
        );
        last = Some(e);
    }
    o.push_str("#EXT-X-ENDLIST\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64) -> Segment {
        Segment {
            msn,
            pts: msn * 46_080,
            samples: 46_080,
            capture_us: 1_796_000_000_000_000 + msn * 960_000,
        }
    }

    fn file(n: u64) -> Vec<u8> {
        (0..n)
            .flat_map(|m| encode(&seg(m), &vec![m as u8; 100 + m as usize]))
            .collect()
    }

    #[test]
    fn records_read_back_with_where_their_bytes_lie() {
        let f = file(3);
        let s = scan(&f);
        assert_eq!(s.torn, None);
        assert_eq!(s.valid_len, f.len() as u64);
        assert_eq!(s.entries.len(), 3);
        for (m, e) in s.entries.iter().enumerate() {
            assert_eq!(e.segment, seg(m as u64));
            let bytes = &f[e.offset as usize..(e.offset + e.len as u64) as usize];
            assert!(bytes.iter().all(|&b| b == m as u8) && bytes.len() == 100 + m);
        }
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_at_the_last_whole_record() {
        let f = file(3);
        let whole_two = scan(&f).entries[2].offset - HEADER as u64;
        // Every cut inside the third record leaves the first two.
        for cut in whole_two as usize + 1..f.len() {
            let s = scan(&f[..cut]);
            assert_eq!(s.entries.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_len, whole_two);
            assert!(s.torn.is_some());
        }
        // A flipped byte anywhere in a record stops the scan there.
        for at in [0, 5, 30, 37, 60] {
            let mut g = f.clone();
            g[whole_two as usize + at] ^= 0x40;
            let s = scan(&g);
            assert_eq!(s.entries.len(), 2, "flip at {at}");
            assert!(s.torn.is_some());
        }
        // Records out of order are refused.
        let mut g = file(2);
        g.extend(encode(&seg(1), b"again"));
        assert_eq!(
            scan(&g).torn,
            Some("a record does not follow the one before it")
        );
        assert_eq!(scan(&[]).torn, None);
    }

    #[test]
    fn the_replay_playlist_is_vod_with_discontinuities_at_gaps() {
        let f: Vec<u8> = [0u64, 1, 5]
            .iter()
            .flat_map(|&m| encode(&seg(m), b"x"))
            .collect();
        let pl = vod_playlist(&scan(&f).entries);
        assert!(pl.starts_with("#EXTM3U\n"));
        assert!(pl.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(pl.contains("#EXTINF:0.960,\nr0.m4s\n#EXT-X-PROGRAM-DATE-TIME"));
        assert_eq!(pl.matches("#EXT-X-DISCONTINUITY").count(), 1);
        assert!(pl.ends_with("r5.m4s\n#EXT-X-ENDLIST\n"));
    }
}
