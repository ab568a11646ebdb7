//! Low-Latency HLS of one space: its packets packaged once into fMP4 parts and segments, and
//! the live media playlist that names them.
//!
//! Contract: push the space's [`Packet`]s in stream order. Boundaries come from the packets'
//! positions only: segment `msn` holds the packets whose position falls in
//! `[msn × SEGMENT_SAMPLES, (msn + 1) × SEGMENT_SAMPLES)`, part `i` of it the
//! [`PART_SAMPLES`]-long slice `i` of that range. A part is sealed when a packet of a later part
//! arrives (or at [`Hls::flush`]). So every node that hears a space's packets, with the origin's
//! positions, names and packages every part and segment identically: a cache in front of
//! several nodes holds one copy of each.
//!
//! A packaging that begins in the middle of a part (a node that starts hearing a space
//! mid-stream) skips that part rather than make it from half its packets.
//!
//! Each part is one fMP4 fragment (`moof` + `mdat`, [`levee_media::mp4::fragment`]); a segment
//! is its parts' bytes, in order. The playlist lists the last [`WINDOW_SEGMENTS`] segments, the
//! parts of the last [`PART_SEGMENTS`] of them, and a preload hint for the next part. What
//! falls out of the window is dropped: memory is bounded by the window.
//!
//! Pure: no clock, no IO. Times in the playlist are the packets' capture times.

use crate::packet::Packet;
use bytes::Bytes;
use levee_media::mp4;
use levee_media::opus::OpusHead;
use std::collections::VecDeque;
use std::fmt::Write;

/// A part's span, 48 kHz samples: 240 ms, a whole number of Opus frames of every size.
pub const PART_SAMPLES: u64 = 11_520;
/// Parts per segment.
pub const PARTS_PER_SEGMENT: u64 = 4;
/// A segment's span, 48 kHz samples (960 ms).
pub const SEGMENT_SAMPLES: u64 = PART_SAMPLES * PARTS_PER_SEGMENT;
/// Segments the playlist lists (and memory holds).
pub const WINDOW_SEGMENTS: usize = 8;
/// Of those, the last ones whose parts the playlist lists (more than 3 target durations).
pub const PART_SEGMENTS: usize = 4;
/// `EXT-X-TARGETDURATION`, s (segments last at most 960 ms).
pub const TARGET_DURATION_S: u64 = 1;
/// Most packets one part holds (a bound for the few-samples packets of a hostile source).
pub const MAX_PART_PACKETS: usize = 2_400;

/// A sealed part.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its fMP4 fragment.
    pub bytes: Bytes,
    /// Its duration, 48 kHz samples.
    pub samples: u64,
}

/// A segment: its parts so far.
#[derive(Debug, Clone)]
struct Segment {
    msn: u64,
    /// Position of its first packet.
    first_pts: u64,
    parts: Vec<(u64, Part)>,
    /// Capture time of its first packet, µs since the Unix epoch.
    first_capture_us: u64,
    /// Its bytes, once complete.
    bytes: Option<Bytes>,
}

impl Segment {
    fn samples(&self) -> u64 {
        self.parts.iter().map(|(_, p)| p.samples).sum()
    }
}

/// Where a requested part or segment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Here it is.
    Ready(Bytes),
    /// Not yet sealed; it will be soon (the next part, or a part of the current segment).
    Soon,
    /// Further ahead than a client may ask for.
    Future,
    /// Out of the window (or never made: the source was away).
    Gone,
}

/// The LL-HLS packaging of one space. See the module docs.
#[derive(Debug)]
pub struct Hls {
    init: Bytes,
    segments: VecDeque<Segment>,
    /// Packets of the part being filled: (part number since the stream's start, packets).
    pending: Option<(u64, Vec<Packet>)>,
    /// The stream ended: the playlist says so and hints no next part.
    ended: bool,
    /// Packaging began in the middle of this part (a node that started hearing the space
    /// mid-stream): its packets are skipped, so that no part is made from half its packets.
    skip_part: Option<u64>,
    /// Whether any packet was seen.
    started: bool,
}

/// Part number (since the stream's start) of a position.
fn part_of(pts: u64) -> u64 {
    pts / PART_SAMPLES
}

impl Hls {
    /// Packaging for a stream described by `head`.
    pub fn new(head: &OpusHead) -> Self {
        Hls {
            init: Bytes::from(mp4::init_segment(head)),
            segments: VecDeque::new(),
            pending: None,
            ended: false,
            skip_part: None,
            started: false,
        }
    }

    /// The stream ended: what is pending is sealed and the playlist is closed
    /// (`EXT-X-ENDLIST`).
    pub fn end(&mut self) {
        self.seal();
        if let Some(last) = self.segments.back_mut() {
            if last.bytes.is_none() {
                last.bytes = Some(concat(&last.parts));
            }
        }
        self.ended = true;
    }

    /// Whether the stream ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The init segment.
    pub fn init(&self) -> Bytes {
        self.init.clone()
    }

    /// Adds a packet; returns whether a part was sealed.
    pub fn push(&mut self, p: &Packet) -> bool {
        let part = part_of(p.pts);
        if !self.started {
            self.started = true;
            if !p.pts.is_multiple_of(PART_SAMPLES) {
                self.skip_part = Some(part);
            }
        }
        if self.skip_part == Some(part) {
            return false;
        }
        self.skip_part = None;
        let sealed = match &self.pending {
            Some((n, pkts)) if *n != part || pkts.len() >= MAX_PART_PACKETS => self.seal(),
            _ => false,
        };
        match &mut self.pending {
            Some((_, pkts)) => pkts.push(p.clone()),
            None => self.pending = Some((part, vec![p.clone()])),
        }
        sealed
    }

    /// Seals the part being filled (a source stopped); returns whether there was one.
    pub fn flush(&mut self) -> bool {
        self.seal()
    }

    fn seal(&mut self) -> bool {
        let Some((part, pkts)) = self.pending.take() else {
            return false;
        };
        let msn = part / PARTS_PER_SEGMENT;
        let index = part % PARTS_PER_SEGMENT;
        let samples: Vec<(u32, &[u8])> = pkts.iter().map(|p| (p.samples, &p.data[..])).collect();
        let bytes = Bytes::from(mp4::fragment(
            (part as u32).wrapping_add(1),
            pkts[0].pts,
            &samples,
        ));
        let duration = pkts.iter().map(|p| p.samples as u64).sum();
        // A part of a later segment completes the segments before it.
        while let Some(last) = self.segments.back_mut() {
            if last.msn >= msn || last.bytes.is_some() {
                break;
            }
            last.bytes = Some(concat(&last.parts));
        }
        let sealed = Part {
            bytes,
            samples: duration,
        };
        match self.segments.back_mut() {
            Some(s) if s.msn == msn => s.parts.push((index, sealed)),
            Some(s) if s.msn > msn => return false, // older than what is held: dropped
            _ => {
                self.segments.push_back(Segment {
                    msn,
                    first_pts: pkts[0].pts,
                    parts: vec![(index, sealed)],
                    first_capture_us: pkts[0].capture_us,
                    bytes: None,
                });
                while self.segments.len() > WINDOW_SEGMENTS {
                    self.segments.pop_front();
                }
            }
        }
        if index == PARTS_PER_SEGMENT - 1 {
            if let Some(s) = self.segments.back_mut() {
                s.bytes = Some(concat(&s.parts));
            }
        }
        true
    }

    /// Segment `msn` once whole: its bytes and what a recording keeps of it.
    pub fn whole(&self, msn: u64) -> Option<(Bytes, crate::recording::Segment)> {
        let s = self.segments.iter().find(|s| s.msn == msn)?;
        let bytes = s.bytes.clone()?;
        Some((
            bytes,
            crate::recording::Segment {
                msn,
                pts: s.first_pts,
                samples: s.samples() as u32,
                capture_us: s.first_capture_us,
            },
        ))
    }

    /// Numbers of the whole segments held, oldest first.
    pub fn whole_segments(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments
            .iter()
            .filter(|s| s.bytes.is_some())
            .map(|s| s.msn)
    }

    /// The newest sealed part: (msn, part index), if any.
    pub fn last_part(&self) -> Option<(u64, u64)> {
        let s = self.segments.back()?;
        s.parts.last().map(|(i, _)| (s.msn, *i))
    }

    /// The next part to be sealed: (msn, part index), if the stream has begun.
    fn next_part(&self) -> Option<(u64, u64)> {
        let (msn, i) = self.last_part()?;
        Some(if i + 1 == PARTS_PER_SEGMENT {
            (msn + 1, 0)
        } else {
            (msn, i + 1)
        })
    }

    /// Whether the playlist already names part `part` of segment `msn` (or, with `None`, all
    /// of segment `msn`): what a blocking reload waits for.
    pub fn has(&self, msn: u64, part: Option<u64>) -> bool {
        let Some((last_msn, last_i)) = self.last_part() else {
            return false;
        };
        let complete = |m: u64| {
            m < last_msn
                || self
                    .segments
                    .iter()
                    .any(|s| s.msn == m && s.bytes.is_some())
        };
        match part {
            None => complete(msn),
            Some(p) => msn < last_msn || (msn == last_msn && p <= last_i) || complete(msn),
        }
    }

    /// Whether a blocking reload for `msn` asks too far ahead (more than two segments past
    /// the current one): it is refused rather than held.
    pub fn too_far(&self, msn: u64) -> bool {
        let current = self.next_part().map_or(0, |(m, _)| m);
        msn > current + 2
    }

    /// Part `index` of segment `msn`.
    pub fn part(&self, msn: u64, index: u64) -> Lookup {
        if index >= PARTS_PER_SEGMENT {
            return Lookup::Gone;
        }
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            if let Some((_, p)) = s.parts.iter().find(|(i, _)| *i == index) {
                return Lookup::Ready(p.bytes.clone());
            }
        }
        self.ahead(msn, index)
    }

    /// Segment `msn`, whole.
    pub fn segment(&self, msn: u64) -> Lookup {
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            if let Some(b) = &s.bytes {
                return Lookup::Ready(b.clone());
            }
        }
        self.ahead(msn, PARTS_PER_SEGMENT - 1)
    }

    fn ahead(&self, msn: u64, index: u64) -> Lookup {
        match self.next_part() {
            _ if self.ended => Lookup::Gone,
            None => Lookup::Future,
            Some(next) if (msn, index) < next => Lookup::Gone,
            // The next part, or one of the segment being filled: sealed within a segment.
            Some(next) if msn == next.0 || (msn, index) == next => Lookup::Soon,
            Some(_) => Lookup::Future,
        }
    }

    /// The live media playlist; `base` prefixes every URI (empty: relative to the playlist).
    pub fn playlist(&self) -> String {
        let mut o = String::with_capacity(2048);
        let part_s = PART_SAMPLES as f64 / 48_000.0;
        let _ = write!(
            o,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{TARGET_DURATION_S}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
             #EXT-X-PART-INF:PART-TARGET={part_s:.3}\n#EXT-X-INDEPENDENT-SEGMENTS\n",
            3.0 * part_s
        );
        let first = self.segments.front().map_or(0, |s| s.msn);
        let _ = write!(
            o,
            "#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-MAP:URI=\"init.mp4\"\n"
        );
        let with_parts = self.segments.len().saturating_sub(PART_SEGMENTS);
        for (k, s) in self.segments.iter().enumerate() {
            let _ = writeln!(
                o,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                rfc3339_ms(s.first_capture_us)
            );
            if k >= with_parts {
                for (i, p) in &s.parts {
                    let _ = writeln!(
                        o,
                        "#EXT-X-PART:DURATION={:.3},URI=\"p{}.{i}.m4s\",INDEPENDENT=YES",
                        p.samples as f64 / 48_000.0,
                        s.msn
                    );
                }
            }
            if s.bytes.is_some() {
                let _ = write!(
                    o,
                    "#EXTINF:{:.3},\ns{}.m4s\n",
                    s.samples() as f64 / 48_000.0,
                    s.msn
                );
            }
        }
        match self.next_part() {
            _ if self.ended => o.push_str("#EXT-X-ENDLIST\n"),
            Some((msn, i)) => {
                let _ = writeln!(o, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p{msn}.{i}.m4s\"");
            }
            None => {}
        }
        o
    }
}

fn concat(parts: &[(u64, Part)]) -> Bytes {
    let mut v = Vec::with_capacity(parts.iter().map(|(_, p)| p.bytes.len()).sum());
    for (_, p) in parts {
        v.extend_from_slice(&p.bytes);
    }
    Bytes::from(v)
}

/// `us` since the Unix epoch as an RFC 3339 UTC date to the millisecond.
pub fn rfc3339_ms(us: u64) -> String {
    let ms = us / 1000;
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// A media file of a space's HLS, by name: `init.mp4`, `p{msn}.{part}.m4s`, `s{msn}.m4s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// The init segment.
    Init,
    /// Part `.1` of segment `.0`.
    Part(u64, u64),
    /// Segment `.0`, whole.
    Segment(u64),
}

impl File {
    /// Parses a requested name strictly (decimal numbers of at most 20 digits, nothing else):
    /// `None` for anything that is not one of the names [`File::name`] writes.
    pub fn parse(name: &str) -> Option<File> {
        if name == "init.mp4" {
            return Some(File::Init);
        }
        let stem = name.strip_suffix(".m4s")?;
        let num = |s: &str| -> Option<u64> {
            let plain = !s.is_empty()
                && s.len() <= 20
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'));
            plain.then(|| s.parse().ok()).flatten()
        };
        if let Some(rest) = stem.strip_prefix('p') {
            let (m, p) = rest.split_once('.')?;
            return Some(File::Part(num(m)?, num(p)?));
        }
        Some(File::Segment(num(stem.strip_prefix('s')?)?))
    }

    /// Its name (what the playlist writes).
    pub fn name(&self) -> String {
        match self {
            File::Init => "init.mp4".to_owned(),
            File::Part(m, p) => format!("p{m}.{p}.m4s"),
            File::Segment(m) => format!("s{m}.m4s"),
        }
    }
}

/// A playlist request's blocking-reload parameters (`_HLS_msn`, `_HLS_part`) from its query.
/// `Err` when they are malformed (a part without a segment, or not numbers).
pub fn blocking_params(query: &str) -> Result<Option<(u64, Option<u64>)>, &'static str> {
    let (mut msn, mut part) = (None, None);
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let num = || {
            v.parse::<u64>()
                .map_err(|_| "_HLS_msn and _HLS_part are numbers")
        };
        match k {
            "_HLS_msn" => msn = Some(num()?),
            "_HLS_part" => part = Some(num()?),
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err("_HLS_part needs _HLS_msn"),
        (None, None) => Ok(None),
        (Some(m), p) => Ok(Some((m, p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_149_395_128_000;

    fn packet(seq: u64) -> Packet {
        Packet {
            seq,
            pts: seq * 960,
            samples: 960,
            capture_us: T0 + seq * 20_000,
            data: Bytes::from(vec![0xfc, seq as u8, 1, 2]),
        }
    }

    fn fed(n: u64) -> Hls {
        let mut h = Hls::new(&OpusHead::new(2));
        for s in 0..n {
            h.push(&packet(s));
        }
        h
    }

    #[test]
    fn file_names_are_parsed_strictly_and_written_back_alike() {
        for (name, f) in [
            ("init.mp4", File::Init),
            ("p12.3.m4s", File::Part(12, 3)),
            ("s7.m4s", File::Segment(7)),
            ("s0.m4s", File::Segment(0)),
        ] {
            assert_eq!(File::parse(name), Some(f));
            assert_eq!(f.name(), name);
        }
        for bad in [
            "p12.m4s",
            "p.3.m4s",
            "s.m4s",
            "s-1.m4s",
            "s1.mp4",
            "x1.m4s",
            "p1.2.3.m4s",
            "s+1.m4s",
            "s01.m4s",
            "s123456789012345678901.m4s",
            "s99999999999999999999.m4s",
            "../init.mp4",
        ] {
            assert_eq!(File::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_are_rfc3339_to_the_millisecond() {
        assert_eq!(rfc3339_ms(T0), "2026-12-01T18:23:15.128Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parts_and_segments_follow_the_positions() {
        // 12 packets of 20 ms a part, 4 parts a segment: of 100 packets, 8 parts are sealed
        // (segments 0 and 1) and 4 packets wait in part 0 of segment 2.
        let h = fed(100);
        assert_eq!(h.last_part(), Some((1, 3)));
        assert!(matches!(h.segment(0), Lookup::Ready(_)));
        assert!(matches!(h.segment(1), Lookup::Ready(_)));
        assert_eq!(h.segment(2), Lookup::Soon);
        assert_eq!(h.part(2, 0), Lookup::Soon, "the part being filled");
        assert_eq!(h.part(2, 3), Lookup::Soon, "a part of the next segment");
        assert_eq!(h.part(3, 0), Lookup::Future);
        assert_eq!(h.part(0, 9), Lookup::Gone);
        // A segment is its parts' bytes.
        let Lookup::Ready(seg) = h.segment(1) else {
            unreachable!()
        };
        let parts: Vec<u8> = (0..4)
            .flat_map(|i| match h.part(1, i) {
                Lookup::Ready(b) => b.to_vec(),
                l => panic!("{l:?}"),
            })
            .collect();
        assert_eq!(&seg[..], &parts[..]);
    }

    #[test]
    fn the_playlist_is_low_latency_hls() {
        let h = fed(100);
        let pl = h.playlist();
        for want in [
            "#EXTM3U\n",
            "#EXT-X-TARGETDURATION:1\n",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.720\n",
            "#EXT-X-PART-INF:PART-TARGET=0.240\n",
            "#EXT-X-MEDIA-SEQUENCE:0\n",
            "#EXT-X-MAP:URI=\"init.mp4\"\n",
            "#EXT-X-PROGRAM-DATE-TIME:2026-12-01T18:23:15.128Z\n",
            "#EXT-X-PART:DURATION=0.240,URI=\"p0.0.m4s\",INDEPENDENT=YES\n",
            "#EXTINF:0.960,\ns0.m4s\n",
            "#EXTINF:0.960,\ns1.m4s\n",
            "#EXT-X-PART:DURATION=0.240,URI=\"p1.3.m4s\",INDEPENDENT=YES\n",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p2.0.m4s\"\n",
        ] {
            assert!(pl.contains(want), "{want:?} missing from\n{pl}");
        }
        assert!(!pl.contains("s2.m4s") && !pl.contains("p2.0.m4s\","));
        // Segment 1 starts 48 packets (960 ms) after segment 0.
        assert!(pl.contains(&format!(
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            rfc3339_ms(T0 + 960_000)
        )));
    }

    #[test]
    fn the_window_is_bounded_and_old_parts_leave_the_playlist() {
        let h = fed(48 * 20 + 1);
        let pl = h.playlist();
        assert_eq!(h.segments.len(), WINDOW_SEGMENTS);
        // 20 segments sealed (packet 960 opened segment 20): the window holds the last 8.
        let first = 20 - WINDOW_SEGMENTS as u64;
        assert!(
            pl.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{first}\n")),
            "{pl}"
        );
        assert_eq!(h.segment(first - 1), Lookup::Gone);
        assert_eq!(h.part(3, 0), Lookup::Gone);
        // Parts only for the last PART_SEGMENTS segments.
        assert!(!pl.contains(&format!("URI=\"p{first}.0.m4s\"")));
        assert!(pl.contains("URI=\"p19.3.m4s\""));
        assert_eq!(pl.matches("#EXT-X-PART:").count(), PART_SEGMENTS * 4);
    }

    #[test]
    fn blocking_reload_waits_for_what_was_asked() {
        let mut h = fed(100);
        assert!(h.has(1, Some(3)));
        assert!(!h.has(2, Some(0)));
        assert!(h.has(1, None));
        assert!(!h.has(2, None));
        assert!(!h.too_far(4));
        assert!(h.too_far(5));
        // Part 0 of segment 2 is sealed by the first packet of the part after it.
        for s in 100..109 {
            h.push(&packet(s));
        }
        assert!(h.has(2, Some(0)));
        assert!(!h.has(2, Some(1)));
        assert_eq!(blocking_params(""), Ok(None));
        assert_eq!(
            blocking_params("_HLS_msn=5&_HLS_part=2"),
            Ok(Some((5, Some(2))))
        );
        assert_eq!(blocking_params("_HLS_msn=5"), Ok(Some((5, None))));
        assert!(blocking_params("_HLS_part=2").is_err());
        assert!(blocking_params("_HLS_msn=x").is_err());
    }

    #[test]
    fn a_gap_in_the_stream_skips_parts_and_every_node_packages_alike() {
        // The source was away for 2 s: positions jump, parts in between were never made.
        let mut a = Hls::new(&OpusHead::new(2));
        for s in (0..60).chain(160..200) {
            a.push(&packet(s));
        }
        assert_eq!(a.part(2, 0), Lookup::Gone);
        assert!(matches!(a.part(3, 1), Lookup::Ready(_)));
        // Another node that began hearing the space later, in the middle of part 14 (packet
        // 170; the part starts at packet 168), skips that part and packages the next ones
        // with the same bytes.
        let mut b = Hls::new(&OpusHead::new(2));
        for s in 170..200 {
            b.push(&packet(s));
        }
        assert_eq!(b.part(3, 2), Lookup::Gone);
        assert!(matches!(b.part(3, 3), Lookup::Ready(_)));
        assert_eq!(a.part(3, 3), b.part(3, 3));
        // A flush seals the pending part.
        assert!(a.flush());
        assert!(matches!(a.part(4, 0), Lookup::Ready(_)));
        assert!(!a.flush());
        // The end closes the playlist and the segment being filled.
        a.end();
        let pl = a.playlist();
        assert!(pl.ends_with("#EXT-X-ENDLIST\n"), "{pl}");
        assert!(pl.contains("s4.m4s") && !pl.contains("PRELOAD-HINT"));
        assert_eq!(a.part(4, 1), Lookup::Gone);
    }
}
