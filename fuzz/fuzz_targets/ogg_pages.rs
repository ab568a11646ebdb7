//! `levee_media::ogg::PageReader` fed the input in arbitrary splits.
//!
//! Input: two split bytes (see `levee_fuzz::Splitter`), then the stream. The top bits of the
//! second byte also pick the reader's bound: `MAX_PAGE` (as ingest uses it), 4 KiB, or a
//! small one (32 to 1,040 bytes, below the largest possible page header).
//!
//! Properties:
//! - the pages it yields are, in order, the stream's first bytes: each page's lacing and body
//!   are the bytes the input holds there, and a page whose last packet ends on it re-serialises
//!   with `write_page` to exactly those bytes (CRC included); a page that ends inside a packet
//!   has its CRC and fields checked against the raw bytes instead (`write_page` cannot write a
//!   page that ends mid-packet);
//! - the first error is final (the reader never resynchronises; the caller stops) and a
//!   `NotOgg` error names the offset where the next page should have started;
//! - it buffers at most one page (`max_page`) plus what one push brought, and its heap stays
//!   within a small multiple of that.
#![no_main]

use bytes::BytesMut;
use levee_fuzz::{live_bytes, peak_bytes, reset_peak, Counting, Splitter};
use levee_media::ogg::{
    crc32, write_page, OggError, Page, PageReader, PageSpec, HEADER_FIXED, MAX_PAGE,
};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static A: Counting = Counting;

fn max_page_for(b: u8) -> usize {
    match b >> 6 {
        3 => 32 + (b & 0x3f) as usize * 16,
        2 => 4096,
        _ => MAX_PAGE,
    }
}

fn check_page(page: &Page, raw: &[u8]) {
    let nseg = page.lacing.len();
    assert_eq!(raw.len(), HEADER_FIXED + nseg + page.body.len());
    assert_eq!(raw[26] as usize, nseg);
    assert_eq!(&raw[HEADER_FIXED..HEADER_FIXED + nseg], &page.lacing[..]);
    assert_eq!(&raw[HEADER_FIXED + nseg..], &page.body[..]);
    let body: usize = page.lacing.iter().map(|&l| l as usize).sum();
    assert_eq!(body, page.body.len());
    let spec = PageSpec {
        flags: page.flags,
        granule: page.granule,
        serial: page.serial,
        seq: page.seq,
    };
    if page.lacing.last().is_none_or(|&l| l < 255) {
        // Every packet ends on this page: the lacing is what write_page computes.
        let mut packets = Vec::new();
        let mut start = 0;
        let mut at = 0;
        for &l in &page.lacing {
            at += l as usize;
            if l < 255 {
                packets.push(&page.body[start..at]);
                start = at;
            }
        }
        let mut out = BytesMut::new();
        write_page(spec, &packets, &mut out).expect("a read page fits in one page");
        assert_eq!(&out[..], raw, "page does not re-serialise to its bytes");
    } else {
        // The page ends inside a packet: check the CRC and the fields against the raw bytes.
        let mut zeroed = raw.to_vec();
        zeroed[22..26].fill(0);
        let stored = u32::from_le_bytes([raw[22], raw[23], raw[24], raw[25]]);
        assert_eq!(crc32(&zeroed), stored);
        assert_eq!(&raw[..4], b"OggS");
        assert_eq!(raw[4], 0);
        assert_eq!(raw[5], spec.flags);
        assert_eq!(
            u64::from_le_bytes(raw[6..14].try_into().unwrap()),
            spec.granule
        );
        assert_eq!(
            u32::from_le_bytes(raw[14..18].try_into().unwrap()),
            spec.serial
        );
        assert_eq!(
            u32::from_le_bytes(raw[18..22].try_into().unwrap()),
            spec.seq
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(split) = Splitter::new(data) else {
        return;
    };
    let max_page = max_page_for(data[1]);
    let stream = split.stream();
    let base = live_bytes();
    let mut reader = PageReader::new(max_page);
    let mut consumed = 0usize; // stream bytes returned as pages
    let mut pushed = 0usize;
    let mut largest_push = 0usize;
    'pushes: for piece in split {
        let held = reader.buffered();
        assert!(
            held <= max_page,
            "{held} bytes buffered between pushes, over the {max_page}-byte page bound"
        );
        largest_push = largest_push.max(piece.len());
        let heap_bound = 4 * (max_page + largest_push) + 8192;
        // Heap is measured across the reader's own calls only (the checks allocate too).
        let heap = |what: &str| {
            let used = peak_bytes() - base;
            assert!(
                used <= heap_bound,
                "{what}: {used} heap bytes for a {max_page}-byte page bound and pushes of at most {largest_push}"
            );
        };
        reset_peak();
        reader.push(piece);
        heap("push");
        pushed += piece.len();
        assert_eq!(reader.buffered(), held + piece.len());
        loop {
            reset_peak();
            let next = reader.next_page();
            heap("next_page");
            match next {
                Ok(Some(page)) => {
                    let len = HEADER_FIXED + page.lacing.len() + page.body.len();
                    assert!(
                        len <= max_page,
                        "page of {len} bytes over the {max_page} bound"
                    );
                    check_page(&page, &stream[consumed..consumed + len]);
                    consumed += len;
                    assert_eq!(reader.buffered(), pushed - consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    if let OggError::NotOgg { offset } = e {
                        assert_eq!(offset, consumed as u64);
                    }
                    // Refused: the caller stops reading this source.
                    break 'pushes;
                }
            }
        }
    }
});
