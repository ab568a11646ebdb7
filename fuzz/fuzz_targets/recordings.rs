//! A recording file read back from disk (`levee_core::recording::scan`): any bytes, as a
//! damaged disk or a hand-edited file could hold.
//!
//! Properties:
//! - no panic, whatever the bytes;
//! - every entry's bytes lie inside the file, in order, after their header;
//! - what scans as whole encodes back to exactly the file's first `valid_len` bytes (one
//!   meaning per record), and the scan stops with a reason exactly when bytes are left over.
#![no_main]

use levee_core::recording::{encode, scan, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
