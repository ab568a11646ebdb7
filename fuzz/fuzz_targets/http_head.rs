//! The connection front's request-head parsing: `levee_server::http1::parse_head`, which
//! `read_head` calls after every read from the socket.
//!
//! Input: two bytes for the head bound `max` (big-endian; the front's default is 8 KiB), then
//! the bytes a client sent.
//!
//! Properties:
//! - no panic;
//! - a complete head is at most `max` bytes and at most the bytes given;
//! - a head that does not end within `max` bytes is refused as `TooLarge`: with fewer than
//!   `max` bytes given the answer is exactly the unbounded parse's, and with `max` or more it
//!   is the unbounded parse's when that head fits, `TooLarge` when it does not (or the error
//!   the first `max` bytes already show);
//! - reading in arbitrary pieces, as `read_head` does (stop at the first head or error, never
//!   hold more than `max` bytes), gives the answer of parsing those bytes at once.
#![no_main]

use levee_fuzz::Splitter;
use levee_server::http1::{parse_head, HeadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[m0, m1], buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = u16::from_be_bytes([m0, m1]) as usize;
    let bounded = parse_head(buf, max);
    let unbounded = parse_head(buf, usize::MAX);
    if let Ok(Some((_, len))) = &bounded {
        assert!(*len <= max && *len <= buf.len());
    }
    if buf.len() < max {
        assert_eq!(bounded, unbounded);
    } else {
        match &unbounded {
            Ok(Some((_, len))) if *len <= max => assert_eq!(bounded, unbounded),
            Ok(_) => assert_eq!(bounded, Err(HeadError::TooLarge)),
            Err(_) => assert!(matches!(
                bounded,
                Err(HeadError::TooLarge | HeadError::Malformed(_))
            )),
        }
    }

    // As read_head reads: in pieces (cut by a seed from the bound's bytes), never more than
    // `max` bytes held, stopping at the first head or error. The answer must be the one the
    // bytes give at once: a prefix never refuses what the whole would accept.
    let mut control = vec![m1 | 1, m0];
    control.extend_from_slice(buf);
    let mut pieces = Splitter::new(&control).expect("two control bytes");
    let mut held: Vec<u8> = Vec::new();
    let read = loop {
        if held.len() >= max {
            break Some(Err(HeadError::TooLarge));
        }
        let Some(piece) = pieces.next() else {
            break None; // the peer closed
        };
        let room = max - held.len();
        let piece = &piece[..piece.len().min(room)];
        if piece.is_empty() {
            continue; // not a read: a read of 0 bytes is the peer closing
        }
        held.extend_from_slice(piece);
        match parse_head(&held, max) {
            Ok(None) => {}
            done => break Some(done),
        }
    };
    match read {
        None => {
            assert_eq!(&held[..], buf);
            assert_eq!(bounded, Ok(None));
        }
        Some(r) => assert_eq!(r, bounded, "read in pieces"),
    }
});
