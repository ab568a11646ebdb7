//! A recording read back from disk, any bytes, as a damaged disk or a hand-edited file could
//! hold: the records file (`levee_core::recording::scan`), and a segment and an init segment
//! (`levee_media::mp4::read_segment`, `read_init`). The first byte picks which.
//!
//! Properties:
//! - no panic, whatever the bytes;
//! - records: every entry's bytes lie inside the file, in order, after their header; what
//!   scans as whole encodes back to exactly the file's first `valid_len` bytes (one meaning per
//!   record), and the scan stops with a reason exactly when bytes are left over;
//! - a segment that reads names samples that lie inside it, at most `MAX_FRAGMENT_SAMPLES` a
//!   fragment; an init segment that reads declares one or two channels.
#![no_main]

use levee_core::recording::{encode, scan, HEADER};
use levee_media::mp4;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok((_, samples)) = mp4::read_segment(data) {
                let total: usize = samples.iter().map(|(_, d)| d.len()).sum();
                assert!(total <= data.len());
                for (_, d) in &samples {
                    let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
                    assert!(d.as_ptr() as usize >= lo && d.as_ptr() as usize + d.len() <= hi);
                }
            }
        }
        1 => {
            if let Ok(head) = mp4::read_init(data) {
                assert!((1..=2).contains(&head.channels));
            }
        }
        _ => {
            let s = scan(data);
            assert!(s.valid_len as usize <= data.len());
            assert_eq!(s.torn.is_some(), (s.valid_len as usize) < data.len());
            let mut again = Vec::new();
            let mut end = 0u64;
            for e in &s.entries {
                assert_eq!(e.offset, end + HEADER as u64);
                end = e.offset + e.len as u64;
                assert!(end <= s.valid_len);
                again.extend(encode(&e.segment, &data[e.offset as usize..end as usize]));
            }
            assert_eq!(end, s.valid_len);
            assert_eq!(&again[..], &data[..s.valid_len as usize]);
        }
    }
});
