//! What nodes of a cluster read from the bus: `levee_core::bus::decode_audio` (a space's
//! packets), `decode_record` (the registry) and `decode_load` (listeners per space), all fed
//! bytes from NATS that no node trusts.
//!
//! Input: one byte choosing the codec, then the message.
//!
//! Properties:
//! - no panic, whatever the bytes;
//! - what decodes re-encodes to exactly the same bytes (one meaning per message), within the
//!   bounds: an audio packet of 1 ..= MAX_PACKET bytes lasting 1 ..= MAX_PACKET_SAMPLES, a
//!   record of at most MAX_RECORD bytes with a valid id, title and origin (a load report of the
//!   first format, LVL1, re-encodes as the current one and is compared field by field);
//! - a message over its bound is refused as too long.
#![no_main]

use bytes::Bytes;
use levee_core::bus::{self, BusError};
use levee_core::space::is_valid_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    if which % 3 == 2 {
        match bus::decode_load(msg) {
            Ok(r) => {
                let again = bus::encode_load(r.node, &r.spaces);
                if msg.starts_with(bus::LOAD_MAGIC) {
                    assert_eq!(&again[..], msg);
                } else {
                    assert!(r.spaces.iter().all(|s| s.demand == 0));
                    assert_eq!(bus::decode_load(&again).as_ref(), Ok(&r));
                }
                assert!(r.spaces.len() <= bus::MAX_LOAD_ENTRIES);
                assert!(r.spaces.iter().all(|s| is_valid_id(&s.id)));
            }
            Err(BusError::TooLong(n)) => assert!(n > bus::MAX_LOAD_MESSAGE),
            Err(_) => assert!(msg.len() <= bus::MAX_LOAD_MESSAGE),
        }
    } else if which % 3 == 0 {
        let m = Bytes::copy_from_slice(msg);
        match bus::decode_audio(&m) {
            Ok(p) => {
                assert_eq!(bus::encode_audio(p.origin, &p.packet), m);
                assert!(!p.packet.data.is_empty());
                assert!(p.packet.data.len() <= levee_media::opus::MAX_PACKET);
                assert!(p.packet.samples >= 1);
                assert!(p.packet.samples <= levee_media::opus::MAX_PACKET_SAMPLES);
            }
            Err(BusError::TooLong(n)) => assert!(n > bus::MAX_AUDIO_MESSAGE),
            Err(_) => assert!(m.len() <= bus::MAX_AUDIO_MESSAGE),
        }
    } else {
        match bus::decode_record(msg) {
            Ok(r) => {
                assert_eq!(&bus::encode_record(&r)[..], msg);
                assert!(is_valid_id(&r.id));
                assert!(!r.title.trim().is_empty());
                assert!(r.origin.len() <= bus::MAX_NODE_NAME);
            }
            Err(BusError::TooLong(n)) => assert!(n > bus::MAX_RECORD),
            Err(_) => assert!(msg.len() <= bus::MAX_RECORD),
        }
    }
});
