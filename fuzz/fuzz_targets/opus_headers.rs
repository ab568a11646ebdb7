//! `levee_media::opus`: `OpusHead::parse`, `check_tags` and the TOC durations
//! (`packet_samples`), each fed the whole input.
//!
//! Properties:
//! - a parsed head re-encodes (`to_bytes`) to the input's first 19 bytes (except the version
//!   byte, which `to_bytes` writes as 1) and parses back equal;
//! - `check_tags` never panics; an `OpusTags` packet built by `opus::tags` from the input (a
//!   vendor and comments cut from it) passes, and any truncation of it fails;
//! - `packet_samples` agrees with an independent reading of RFC 6716 §3.1 (frame sizes per
//!   configuration, frame counts per code), is refused past `MAX_PACKET` bytes or 120 ms, and
//!   is a multiple of 2.5 ms otherwise.
#![no_main]

use levee_media::opus::{self, OpusError, OpusHead, MAX_PACKET, MAX_PACKET_SAMPLES};
use libfuzzer_sys::fuzz_target;

/// RFC 6716 table 2, in 48 kHz samples per frame, by configuration number.
fn rfc_frame_samples(config: u8) -> u32 {
    const MS_X2: [u32; 32] = [
        20, 40, 80, 120, 20, 40, 80, 120, 20, 40, 80, 120, // SILK NB, MB, WB: 10 20 40 60 ms
        20, 40, 20, 40, // Hybrid SWB, FB: 10 20 ms
        5, 10, 20, 40, 5, 10, 20, 40, 5, 10, 20, 40, 5, 10, 20, 40, // CELT: 2.5 5 10 20 ms
    ];
    MS_X2[config as usize] * 24 // (ms × 2) × 48 / 2
}

fn check_packet(p: &[u8]) {
    let got = opus::packet_samples(p);
    let Some(&toc) = p.first() else {
        assert_eq!(got, Err(OpusError::EmptyPacket));
        return;
    };
    if p.len() > MAX_PACKET {
        assert_eq!(got, Err(OpusError::PacketTooLarge(p.len())));
        return;
    }
    let header = p.starts_with(b"OpusHead")
        || p.starts_with(b"\x01vorbis")
        || p.starts_with(b"\x7fFLAC")
        || p.starts_with(b"Speex   ")
        || p.starts_with(b"\x80theora");
    let frames = match toc & 3 {
        0 => Some(1),
        1 | 2 => Some(2),
        _ => p.get(1).map(|c| (c & 0x3f) as u32),
    };
    let want = frames
        .filter(|&n| n > 0 && !header)
        .map(|n| n * rfc_frame_samples(toc >> 3))
        .filter(|&s| s <= MAX_PACKET_SAMPLES);
    match (got, want) {
        (Ok(s), Some(w)) => {
            assert_eq!(s, w);
            assert!(s % 120 == 0 && s > 0);
        }
        (Err(OpusError::BadPacket(_)), None) => {}
        (got, want) => panic!("packet_samples gave {got:?}, RFC 6716 reading gives {want:?}"),
    }
}

fn check_tags_built_from(data: &[u8]) {
    // Vendor: the first up to 64 bytes as text; comments: the rest, cut at each 0x00.
    let text = String::from_utf8_lossy(data);
    let (vendor, rest) = text.split_at(text.char_indices().nth(64).map_or(text.len(), |(i, _)| i));
    let comments: Vec<String> = rest.split('\0').take(64).map(str::to_owned).collect();
    let t = opus::tags(vendor, &comments);
    assert_eq!(opus::check_tags(&t), Ok(()));
    for cut in [1, 2, 3, 4, 5, t.len() / 2, t.len() - 16] {
        if cut <= t.len() && cut > 0 {
            assert!(opus::check_tags(&t[..t.len() - cut]).is_err(), "cut {cut}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match OpusHead::parse(data) {
        Ok(head) => {
            let bytes = head.to_bytes();
            for i in (0..19).filter(|&i| i != 8) {
                assert_eq!(bytes[i], data[i], "byte {i} of the head");
            }
            assert_eq!(OpusHead::parse(&bytes), Ok(head));
            assert!(head.channels == 1 || head.channels == 2);
        }
        Err(OpusError::WrongCodec(_) | OpusError::NotOpusHead | OpusError::BadHead(_)) => {}
        Err(e) => panic!("OpusHead::parse gave {e:?}"),
    }
    match opus::check_tags(data) {
        Ok(()) => assert!(data.len() >= 16 && data.starts_with(b"OpusTags")),
        Err(OpusError::BadTags(_)) => {}
        Err(e) => panic!("check_tags gave {e:?}"),
    }
    check_packet(data);
    check_tags_built_from(data);
});
