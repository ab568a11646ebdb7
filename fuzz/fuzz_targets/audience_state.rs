//! What a node reads of another's audience numbers: `levee_core::bus::decode_audience` (and
//! within it `levee_core::audience::Audience::decode`), fed bytes from NATS that no node
//! trusts.
//!
//! Properties:
//! - no panic, whatever the bytes;
//! - what decodes re-encodes to exactly the same bytes (one meaning per message);
//! - its sketches' counts and its figures can be taken, and merging it into itself changes
//!   no distinct count (a union with itself);
//! - a message over its bound is refused as too long.
#![no_main]

use levee_core::bus::{self, BusError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|msg: &[u8]| {
    match bus::decode_audience(msg) {
        Ok(r) => {
            let again = bus::encode_audience(r.node, &r.space, &r.recent, &r.audience);
            assert!(r.recent.len() <= bus::MAX_AUDIENCE_RECENT);
            assert!(r.recent.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(&again[..], msg);
            let f = r.audience.figures(u64::MAX / 2);
            assert!(f.listeners <= f.sessions);
            let mut twice = r.audience.clone();
            twice.merge(&r.audience);
            assert_eq!(twice.uniques.count(), r.audience.uniques.count());
            assert_eq!(twice.viewers, r.audience.viewers);
        }
        Err(BusError::TooLong(n)) => assert!(n > bus::MAX_AUDIENCE_MESSAGE),
        Err(_) => assert!(msg.len() <= bus::MAX_AUDIENCE_MESSAGE),
    }
});
