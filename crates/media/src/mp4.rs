//! Fragmented MP4 (ISO/IEC 14496-12) carrying Opus ("Opus in ISOBMFF", the `Opus` sample
//! entry with its `dOps` box): the init segment and media fragments that (LL-)HLS serves.
//!
//! Contract: [`init_segment`] describes one Opus track (id [`TRACK_ID`], timescale 48 kHz) from
//! the stream's [`OpusHead`]; [`fragment`] packs consecutive Opus packets into one `moof` +
//! `mdat`, each packet one sample with its own duration, starting at `base_time` (48 kHz
//! samples since the stream's start). Bytes only depend on the inputs, so every node packages a
//! stream identically.
//!
//! Reading back ([`read_segment`], [`read_init`]) takes what levee wrote (a recording on disk,
//! which a damaged disk or a hand may have changed): it accepts exactly that layout and
//! refuses anything else with a reason, within bounds, without panicking.

use crate::opus::OpusHead;

/// The only track's id.
pub const TRACK_ID: u32 = 1;
/// Timescale of the track: Opus always decodes at 48 kHz.
pub const TIMESCALE: u32 = 48_000;
/// The RFC 6381 codec string of the track (for `CODECS=` in playlists).
pub const CODECS: &str = "opus";

/// Appends box `kind` whose body `body` writes; its size is filled in after.
fn bx(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: version and 24-bit flags, then `body`.
fn full(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    bx(out, kind, |o| {
        o.push(version);
        o.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(o);
    });
}

fn u16be(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u32be(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u64be(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}

/// The unity matrix of `mvhd` and `tkhd`.
fn matrix(o: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        u32be(o, v);
    }
}

/// The `dOps` box (Opus-in-ISOBMFF §4.3.2): OpusHead's fields, big-endian; channel mapping
/// family 0 (mono or stereo).
fn dops(o: &mut Vec<u8>, head: &OpusHead) {
    bx(o, b"dOps", |o| {
        o.push(0); // version
        o.push(head.channels);
        u16be(o, head.pre_skip);
        u32be(o, head.input_sample_rate);
        o.extend_from_slice(&head.output_gain.to_be_bytes());
        o.push(0); // channel mapping family
    });
}

/// The init segment (`ftyp` + `moov`) of an Opus stream described by `head`.
pub fn init_segment(head: &OpusHead) -> Vec<u8> {
    let mut o = Vec::with_capacity(640);
    bx(&mut o, b"ftyp", |o| {
        o.extend_from_slice(b"iso6");
        u32be(o, 0);
        for brand in [b"iso6", b"cmfc", b"mp41", b"opus"] {
            o.extend_from_slice(brand);
        }
    });
    bx(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            u32be(o, 0); // creation time
            u32be(o, 0); // modification time
            u32be(o, TIMESCALE);
            u32be(o, 0); // duration: fragmented
            u32be(o, 0x0001_0000); // rate 1.0
            u16be(o, 0x0100); // volume 1.0
            o.extend_from_slice(&[0; 10]);
            matrix(o);
            o.extend_from_slice(&[0; 24]); // pre-defined
            u32be(o, TRACK_ID + 1); // next track id
        });
        bx(o, b"trak", |o| {
            // Flags: enabled, in movie, in preview.
            full(o, b"tkhd", 0, 0x7, |o| {
                u32be(o, 0);
                u32be(o, 0);
                u32be(o, TRACK_ID);
                u32be(o, 0); // reserved
                u32be(o, 0); // duration
                o.extend_from_slice(&[0; 8]);
                u16be(o, 0); // layer
                u16be(o, 1); // alternate group (audio)
                u16be(o, 0x0100); // volume 1.0
                u16be(o, 0);
                matrix(o);
                u32be(o, 0); // width
                u32be(o, 0); // height
            });
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    u32be(o, 0);
                    u32be(o, 0);
                    u32be(o, TIMESCALE);
                    u32be(o, 0);
                    u16be(o, 0x55c4); // language "und"
                    u16be(o, 0);
                });
                full(o, b"hdlr", 0, 0, |o| {
                    u32be(o, 0);
                    o.extend_from_slice(b"soun");
                    o.extend_from_slice(&[0; 12]);
                    o.extend_from_slice(b"levee audio\0");
                });
                bx(o, b"minf", |o| {
                    full(o, b"smhd", 0, 0, |o| u32be(o, 0));
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            u32be(o, 1);
                            full(o, b"url ", 0, 1, |_| {}); // self-contained
                        });
                    });
                    bx(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            u32be(o, 1);
                            bx(o, b"Opus", |o| {
                                o.extend_from_slice(&[0; 6]);
                                u16be(o, 1); // data reference index
                                o.extend_from_slice(&[0; 8]);
                                u16be(o, head.channels as u16);
                                u16be(o, 16); // sample size
                                u16be(o, 0);
                                u16be(o, 0);
                                u32be(o, TIMESCALE << 16);
                                dops(o, head);
                            });
                        });
                        for kind in [b"stts", b"stsc", b"stco"] {
                            full(o, kind, 0, 0, |o| u32be(o, 0));
                        }
                        full(o, b"stsz", 0, 0, |o| {
                            u32be(o, 0);
                            u32be(o, 0);
                        });
                    });
                });
            });
        });
        bx(o, b"mvex", |o| {
            full(o, b"trex", 0, 0, |o| {
                u32be(o, TRACK_ID);
                u32be(o, 1); // sample description index
                u32be(o, 960); // default duration: 20 ms
                u32be(o, 0);
                u32be(o, 0);
            });
        });
    });
    o
}

/// One media fragment (`moof` + `mdat`): `samples` (duration in 48 kHz samples, Opus packet)
/// in order, the first decoded at `base_time`; `sequence` is the fragment's number (1 and up).
pub fn fragment(sequence: u32, base_time: u64, samples: &[(u32, &[u8])]) -> Vec<u8> {
    let data_len: usize = samples.iter().map(|(_, d)| d.len()).sum();
    let mut o = Vec::with_capacity(128 + samples.len() * 8 + data_len);
    let mut offset_at = 0;
    bx(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| u32be(o, sequence));
        bx(o, b"traf", |o| {
            // default-base-is-moof: data offsets count from this moof.
            full(o, b"tfhd", 0, 0x02_0000, |o| u32be(o, TRACK_ID));
            full(o, b"tfdt", 1, 0, |o| u64be(o, base_time));
            // data-offset, sample-duration and sample-size present.
            full(o, b"trun", 0, 0x0301, |o| {
                u32be(o, samples.len() as u32);
                offset_at = o.len();
                u32be(o, 0); // data offset, set below
                for (duration, data) in samples {
                    u32be(o, *duration);
                    u32be(o, data.len() as u32);
                }
            });
        });
    });
    // The first sample starts after the moof and the mdat's 8-byte header.
    let data_offset = (o.len() + 8) as u32;
    o[offset_at..offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    bx(&mut o, b"mdat", |o| {
        for (_, data) in samples {
            o.extend_from_slice(data);
        }
    });
    o
}

/// Most samples one fragment may declare when read back.
pub const MAX_FRAGMENT_SAMPLES: u32 = 4_096;

/// A box read back: its kind and its body.
type Mp4Box<'a> = ([u8; 4], &'a [u8]);

/// The boxes of `b` at one level, or why they are not boxes.
fn boxes_of(mut b: &[u8]) -> Result<Vec<Mp4Box<'_>>, &'static str> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 8 {
            return Err("a box header is cut short");
        }
        let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if size < 8 || size > b.len() {
            return Err("a box's size is out of bounds");
        }
        out.push(([b[4], b[5], b[6], b[7]], &b[8..size]));
        b = &b[size..];
        if out.len() > 64 {
            return Err("too many boxes");
        }
    }
    Ok(out)
}

/// The box at the start of `b`, and what follows it.
fn take_box(b: &[u8]) -> Result<(Mp4Box<'_>, &[u8]), &'static str> {
    if b.len() < 8 {
        return Err("a box header is cut short");
    }
    let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if size < 8 || size > b.len() {
        return Err("a box's size is out of bounds");
    }
    Ok((([b[4], b[5], b[6], b[7]], &b[8..size]), &b[size..]))
}

fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Result<&'a [u8], &'static str> {
    boxes_of(b)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, body)| body)
        .ok_or("a box levee writes is missing")
}

fn be32(b: &[u8], at: usize) -> Result<u32, &'static str> {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or("a box is cut short")
}

/// One media sample read back: its duration (48 kHz samples) and its bytes.
pub type Sample<'a> = (u32, &'a [u8]);

/// The samples of a segment levee wrote (one or more `moof` + `mdat` fragments, as
/// [`fragment`] makes them), in order, with the decode time of the first.
pub fn read_segment(seg: &[u8]) -> Result<(u64, Vec<Sample<'_>>), &'static str> {
    let mut out = Vec::new();
    let mut first_time = None;
    let mut rest = seg;
    while !rest.is_empty() {
        let ((moof_kind, moof), after) = take_box(rest)?;
        let ((mdat_kind, mdat), after) = take_box(after)?;
        if &moof_kind != b"moof" || &mdat_kind != b"mdat" {
            return Err("a fragment is not a moof and an mdat");
        }
        let traf = child(moof, b"traf")?;
        let tfdt = child(traf, b"tfdt")?;
        let time = match tfdt.first() {
            Some(1) => tfdt
                .get(4..12)
                .map(|x| u64::from_be_bytes(x.try_into().expect("8 bytes")))
                .ok_or("tfdt is cut short")?,
            _ => return Err("tfdt is not version 1"),
        };
        first_time.get_or_insert(time);
        let trun = child(traf, b"trun")?;
        if be32(trun, 0)? & 0x00ff_ffff != 0x0301 {
            return Err("trun is not of the layout levee writes");
        }
        let count = be32(trun, 4)?;
        if count > MAX_FRAGMENT_SAMPLES {
            return Err("a fragment declares too many samples");
        }
        let moof_len = moof.len() + 8;
        let offset = be32(trun, 8)? as usize;
        if offset != moof_len + 8 {
            return Err("trun's data offset does not point at the mdat");
        }
        let mut at = 0usize;
        for i in 0..count as usize {
            let duration = be32(trun, 12 + i * 8)?;
            let size = be32(trun, 16 + i * 8)? as usize;
            let data = mdat
                .get(at..at + size)
                .ok_or("a sample lies beyond its mdat")?;
            out.push((duration, data));
            at += size;
        }
        if at != mdat.len() {
            return Err("the mdat holds bytes no sample names");
        }
        rest = after;
    }
    Ok((first_time.ok_or("an empty segment")?, out))
}

/// The Opus header of an init segment levee wrote (its `dOps` box).
pub fn read_init(init: &[u8]) -> Result<OpusHead, &'static str> {
    let moov = child(init, b"moov")?;
    let stsd = [b"trak", b"mdia", b"minf", b"stbl", b"stsd"]
        .iter()
        .try_fold(moov, |b, kind| child(b, kind))?;
    let entries = stsd.get(8..).ok_or("stsd is cut short")?;
    let opus = child(entries, b"Opus")?;
    let dops = child(
        opus.get(28..).ok_or("the Opus entry is cut short")?,
        b"dOps",
    )?;
    if dops.len() < 11 || dops[0] != 0 || dops[10] != 0 {
        return Err("dOps is not of the layout levee writes");
    }
    if !(1..=2).contains(&dops[1]) {
        return Err("dOps declares other than one or two channels");
    }
    Ok(OpusHead {
        channels: dops[1],
        pre_skip: u16::from_be_bytes([dops[2], dops[3]]),
        input_sample_rate: u32::from_be_bytes([dops[4], dops[5], dops[6], dops[7]]),
        output_gain: i16::from_be_bytes([dops[8], dops[9]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boxes of `b` at one level: (kind, body).
    fn boxes(mut b: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let size = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && size <= b.len(),
                "box size {size} of {}",
                b.len()
            );
            out.push((b[4..8].try_into().unwrap(), &b[8..size]));
            b = &b[size..];
        }
        out
    }

    fn child<'a>(b: &'a [u8], path: &[&[u8; 4]]) -> &'a [u8] {
        let mut cur = b;
        for kind in path {
            cur = boxes(cur)
                .into_iter()
                .find(|(k, _)| k == *kind)
                .unwrap_or_else(|| panic!("no {:?}", std::str::from_utf8(*kind)))
                .1;
        }
        cur
    }

    #[test]
    fn the_init_segment_is_well_formed_boxes_with_the_opus_header() {
        let head = OpusHead::new(2);
        let init = init_segment(&head);
        let top: Vec<_> = boxes(&init).into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, [*b"ftyp", *b"moov"]);
        let stsd = child(
            &init,
            &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"],
        );
        // Version/flags and entry count, then the Opus sample entry.
        let entry = boxes(&stsd[8..]);
        assert_eq!(entry[0].0, *b"Opus");
        let body = entry[0].1;
        assert_eq!(u16::from_be_bytes([body[16], body[17]]), 2, "channels");
        assert_eq!(
            u32::from_be_bytes(body[24..28].try_into().unwrap()),
            48_000 << 16
        );
        let dops = boxes(&body[28..]);
        assert_eq!(dops[0].0, *b"dOps");
        assert_eq!(dops[0].1[1], 2);
        assert_eq!(
            u16::from_be_bytes([dops[0].1[2], dops[0].1[3]]),
            head.pre_skip
        );
        let mdhd = child(&init, &[b"moov", b"trak", b"mdia", b"mdhd"]);
        assert_eq!(
            u32::from_be_bytes(mdhd[12..16].try_into().unwrap()),
            TIMESCALE
        );
        // Every node writes the same bytes for the same stream.
        assert_eq!(init, init_segment(&head));
    }

    #[test]
    fn what_levee_writes_reads_back_and_anything_else_is_refused() {
        let head = OpusHead::new(2);
        assert_eq!(read_init(&init_segment(&head)), Ok(head));
        let a: Vec<(u32, &[u8])> = vec![(960, b"abc"), (960, b"de")];
        let b: Vec<(u32, &[u8])> = vec![(480, b"f")];
        let mut seg = fragment(1, 960, &a);
        seg.extend(fragment(2, 2_880, &b));
        let (time, samples) = read_segment(&seg).unwrap();
        assert_eq!(time, 960);
        assert_eq!(samples, vec![(960, &b"abc"[..]), (960, b"de"), (480, b"f")]);
        // A cut between whole fragments leaves a shorter segment; any other is refused.
        let first = fragment(1, 960, &a).len();
        for cut in 1..seg.len() {
            match read_segment(&seg[..cut]) {
                Ok((_, got)) => assert_eq!((cut, got.len()), (first, 2)),
                Err(_) => assert_ne!(cut, first),
            }
        }
        assert!(read_segment(&[]).is_err());
        assert!(read_init(&seg).is_err());
        let mut bad = seg.clone();
        bad[3] ^= 0x10; // the moof's size
        assert!(read_segment(&bad).is_err());
    }

    #[test]
    fn a_fragment_points_at_its_samples() {
        let pkts: [&[u8]; 3] = [b"abc", b"defgh", b"i"];
        let samples: Vec<(u32, &[u8])> = pkts.iter().map(|p| (960, *p)).collect();
        let f = fragment(7, 96_000, &samples);
        let top = boxes(&f);
        assert_eq!((top[0].0, top[1].0), (*b"moof", *b"mdat"));
        assert_eq!(top[1].1, b"abcdefghi");
        let mfhd = child(&f, &[b"moof", b"mfhd"]);
        assert_eq!(u32::from_be_bytes(mfhd[4..8].try_into().unwrap()), 7);
        let tfdt = child(&f, &[b"moof", b"traf", b"tfdt"]);
        assert_eq!(tfdt[0], 1);
        assert_eq!(u64::from_be_bytes(tfdt[4..12].try_into().unwrap()), 96_000);
        let trun = child(&f, &[b"moof", b"traf", b"trun"]);
        assert_eq!(u32::from_be_bytes(trun[4..8].try_into().unwrap()), 3);
        let offset = u32::from_be_bytes(trun[8..12].try_into().unwrap()) as usize;
        assert_eq!(&f[offset..offset + 3], b"abc");
        let sizes: Vec<u32> = (0..3)
            .map(|i| u32::from_be_bytes(trun[16 + i * 8..20 + i * 8].try_into().unwrap()))
            .collect();
        assert_eq!(sizes, [3, 5, 1]);
    }
}
