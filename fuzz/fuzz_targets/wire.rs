//! `levee_core::wire::decode`: levee's WebSocket messages (HEAD, AUDIO, STATS), as a browser
//! host sends AUDIO to the server and as listeners receive all three. The input is one message.
//!
//! Properties:
//! - no panic; an empty input is `Empty`, an unknown kind `UnknownKind`, a short one
//!   `Truncated`;
//! - an AUDIO message re-encodes with `put_audio` to exactly the input;
//! - a STATS message re-encodes with `put_stats` to the input's first 13 bytes (STATS is 13
//!   bytes; `decode` ignores anything after them, so a later version may append fields);
//! - a HEAD message is the kind byte and the rest of the input, unchanged.
#![no_main]

use bytes::{Bytes, BytesMut};
use levee_core::wire::{self, WireError, WireMessage, AUDIO_HEADER, STATS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);
    let mut out = BytesMut::new();
    match wire::decode(&msg) {
        Ok(WireMessage::Audio {
            seq,
            capture_us,
            packet,
        }) => {
            wire::put_audio(&mut out, seq, capture_us, &packet);
            assert_eq!(&out[..], data);
        }
        Ok(WireMessage::Stats {
            server_us,
            listeners,
        }) => {
            wire::put_stats(&mut out, server_us, listeners);
            assert_eq!(out.len(), STATS_LEN);
            assert_eq!(&out[..], &data[..STATS_LEN]);
        }
        Ok(WireMessage::Stage {
            revision,
            on_stage,
            speaking,
        }) => {
            wire::put_stage(&mut out, revision, on_stage, speaking);
            assert_eq!(out.len(), wire::STAGE_LEN);
            assert_eq!(&out[..], &data[..wire::STAGE_LEN]);
        }
        Ok(WireMessage::Head(h)) => {
            assert_eq!(data[0], wire::KIND_HEAD);
            assert_eq!(&h[..], &data[1..]);
        }
        Err(WireError::Empty) => assert!(data.is_empty()),
        Err(WireError::UnknownKind(k)) => {
            assert_eq!(k, data[0]);
            assert!(![
                wire::KIND_HEAD,
                wire::KIND_AUDIO,
                wire::KIND_STATS,
                wire::KIND_STAGE
            ]
            .contains(&k));
        }
        Err(WireError::Truncated(k)) => {
            assert_eq!(k, data[0]);
            let need = match k {
                wire::KIND_AUDIO => AUDIO_HEADER,
                wire::KIND_STAGE => wire::STAGE_LEN,
                _ => STATS_LEN,
            };
            assert!(data.len() < need);
        }
    }
});
