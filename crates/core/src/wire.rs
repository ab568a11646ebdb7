//! levee's WebSocket message format (documented in `docs/protocol.md`).
//!
//! Every binary message starts with a one-byte kind. Integers are big-endian.
//!
//! | kind | name  | layout after the kind byte                                          |
//! |------|-------|---------------------------------------------------------------------|
//! | 0x01 | HEAD  | the space's 19-byte `OpusHead` (channels, pre-skip)                 |
//! | 0x02 | AUDIO | seq u64 · capture time u64 (µs since the Unix epoch) · Opus packet   |
//! | 0x03 | STATS | server time u64 (µs since the Unix epoch) · listeners u32          |
//! | 0x04 | STAGE | revision u32 · on stage u32 · speaking u32 (a bit per mixer slot)     |
//!
//! The same AUDIO layout carries packets from a browser host to the server; there the
//! sequence number is the host's own and the server renumbers packets per space.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Message kind: codec header.
pub const KIND_HEAD: u8 = 0x01;
/// Message kind: one Opus packet with its sequence number and capture time.
pub const KIND_AUDIO: u8 = 0x02;
/// Message kind: live statistics of the space.
pub const KIND_STATS: u8 = 0x03;

/// Message kind: who is on the stage and who speaks (slot 0 is the host; the speakers'
/// slots are in `GET /api/spaces/{id}/stage`, fetched again when the revision moves).
pub const KIND_STAGE: u8 = 0x04;
/// Size of a STAGE message.
pub const STAGE_LEN: usize = 13;

/// Bytes an AUDIO message adds before the Opus packet.
pub const AUDIO_HEADER: usize = 17;
/// Size of a STATS message.
pub const STATS_LEN: usize = 13;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// The codec header.
    Head(Bytes),
    /// One audio packet.
    Audio {
        /// Sequence number: consecutive packets differ by one.
        seq: u64,
        /// When the packet was captured, µs since the Unix epoch.
        capture_us: u64,
        /// The Opus packet.
        packet: Bytes,
    },
    /// Live statistics.
    Stats {
        /// Server time when the message was made, µs since the Unix epoch.
        server_us: u64,
        /// Listeners of the space at that time.
        listeners: u32,
    },
    /// Who is on the stage and who speaks.
    Stage {
        /// Grows when the roster changes.
        revision: u32,
        /// Bit per mixer slot: connected.
        on_stage: u32,
        /// Bit per mixer slot: speaking.
        speaking: u32,
    },
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message is empty.
    Empty,
    /// The kind byte is unknown.
    UnknownKind(u8),
    /// The message is shorter than its kind requires.
    Truncated(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty message"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            WireError::Truncated(k) => write!(f, "message of kind {k:#04x} is truncated"),
        }
    }
}

impl std::error::Error for WireError {}

/// Appends an AUDIO message body (without WebSocket framing).
pub fn put_audio(out: &mut BytesMut, seq: u64, capture_us: u64, packet: &[u8]) {
    out.put_u8(KIND_AUDIO);
    out.put_u64(seq);
    out.put_u64(capture_us);
    out.put_slice(packet);
}

/// Appends a STATS message body.
pub fn put_stats(out: &mut BytesMut, server_us: u64, listeners: u32) {
    out.put_u8(KIND_STATS);
    out.put_u64(server_us);
    out.put_u32(listeners);
}

/// Appends a STAGE message body.
pub fn put_stage(out: &mut BytesMut, revision: u32, on_stage: u32, speaking: u32) {
    out.put_u8(KIND_STAGE);
    out.put_u32(revision);
    out.put_u32(on_stage);
    out.put_u32(speaking);
}

/// Decodes one message body.
pub fn decode(msg: &Bytes) -> Result<WireMessage, WireError> {
    let kind = *msg.first().ok_or(WireError::Empty)?;
    let be64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[at..at + 8]);
        u64::from_be_bytes(b)
    };
    match kind {
        KIND_HEAD => Ok(WireMessage::Head(msg.slice(1..))),
        KIND_AUDIO => {
            if msg.len() < AUDIO_HEADER {
                return Err(WireError::Truncated(kind));
            }
            Ok(WireMessage::Audio {
                seq: be64(1),
                capture_us: be64(9),
                packet: msg.slice(AUDIO_HEADER..),
            })
        }
        KIND_STATS => {
            if msg.len() < STATS_LEN {
                return Err(WireError::Truncated(kind));
            }
            Ok(WireMessage::Stats {
                server_us: be64(1),
                listeners: u32::from_be_bytes([msg[9], msg[10], msg[11], msg[12]]),
            })
        }
        KIND_STAGE => {
            if msg.len() < STAGE_LEN {
                return Err(WireError::Truncated(kind));
            }
            let be32 =
                |at: usize| u32::from_be_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
            Ok(WireMessage::Stage {
                revision: be32(1),
                on_stage: be32(5),
                speaking: be32(9),
            })
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_round_trips_and_is_checked() {
        let mut b = BytesMut::new();
        put_stage(&mut b, 7, 0b101, 0b100);
        assert_eq!(b.len(), STAGE_LEN);
        let m = b.split().freeze();
        assert_eq!(
            decode(&m),
            Ok(WireMessage::Stage {
                revision: 7,
                on_stage: 0b101,
                speaking: 0b100
            })
        );
        assert_eq!(
            decode(&m.slice(..12)),
            Err(WireError::Truncated(KIND_STAGE))
        );
    }

    #[test]
    fn audio_and_stats_round_trip() {
        let mut b = BytesMut::new();
        put_audio(&mut b, 42, 1_700_000_000_000_000, &[0xf8, 0xff, 0xfe]);
        assert_eq!(
            decode(&b.split().freeze()),
            Ok(WireMessage::Audio {
                seq: 42,
                capture_us: 1_700_000_000_000_000,
                packet: Bytes::from_static(&[0xf8, 0xff, 0xfe])
            })
        );
        put_stats(&mut b, 7, 12_345);
        assert_eq!(
            decode(&b.freeze()),
            Ok(WireMessage::Stats {
                server_us: 7,
                listeners: 12_345
            })
        );
    }

    #[test]
    fn short_and_unknown_messages_are_refused() {
        assert_eq!(decode(&Bytes::new()), Err(WireError::Empty));
        assert_eq!(
            decode(&Bytes::from_static(&[KIND_AUDIO, 1, 2])),
            Err(WireError::Truncated(KIND_AUDIO))
        );
        assert_eq!(
            decode(&Bytes::from_static(&[0x7f])),
            Err(WireError::UnknownKind(0x7f))
        );
    }
}
