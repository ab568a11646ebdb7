//! WebSocket framing (RFC 6455 §5) as pure code.
//!
//! Contract: server frames are encoded once with [`encode_frame`] (unmasked, so the same bytes
//! go to every listener unchanged); client frames are decoded by [`FrameDecoder`], which
//! insists on masking, bounds every frame and message, and names what was wrong.

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use std::fmt;

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (space ended, shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error (bad framing).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: data the endpoint cannot accept (wrong message type).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: payload not consistent with the message type (bad audio).
pub const CLOSE_INVALID: u16 = 1007;
/// Close code: policy violation (bad key, not allowed).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut h = Sha1::new();
    h.update(client_key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Size of the header [`encode_frame`] writes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends one final, unmasked frame to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    encode_header(opcode, payload.len(), out);
    out.put_slice(payload);
}

/// Appends the header of one final, unmasked frame of `len` payload bytes to `out`.
pub fn encode_header(opcode: u8, len: usize, out: &mut BytesMut) {
    out.put_u8(0x80 | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// A close frame with `code` and a human-readable `reason` (cut to the 123 bytes allowed).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = BytesMut::with_capacity(2 + cut);
    payload.put_u16(code);
    payload.put_slice(&reason.as_bytes()[..cut]);
    let mut out = BytesMut::with_capacity(4 + payload.len());
    encode_frame(OP_CLOSE, &payload, &mut out);
    out.freeze()
}

/// A whole message (or control frame) from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload, to be answered with a pong.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with its code and reason, if any.
    Close(Option<u16>, String),
}

/// Why a client's frames were refused; [`FrameError::close_code`] gives the code to close with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame from a client was not masked.
    Unmasked,
    /// A frame from a server was masked.
    Masked,
    /// Reserved bits set without a negotiated extension.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    BadOpcode(u8),
    /// A control frame longer than 125 bytes or fragmented.
    BadControl,
    /// A continuation without a message, or a new message inside one.
    BadFragmentation,
    /// A message longer than the bound.
    TooBig {
        /// Declared or accumulated size.
        size: u64,
        /// The bound in force.
        limit: usize,
    },
    /// A text message that is not UTF-8.
    BadUtf8,
}

impl FrameError {
    /// The close code that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => CLOSE_TOO_BIG,
            FrameError::BadUtf8 => CLOSE_INVALID,
            _ => CLOSE_PROTOCOL,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Unmasked => write!(f, "client frames must be masked"),
            FrameError::Masked => write!(f, "server frames must not be masked"),
            FrameError::ReservedBits => write!(f, "reserved bits set"),
            FrameError::BadOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::BadControl => write!(f, "control frame fragmented or over 125 bytes"),
            FrameError::BadFragmentation => write!(f, "bad message fragmentation"),
            FrameError::TooBig { size, limit } => {
                write!(f, "message of {size} bytes exceeds the {limit}-byte limit")
            }
            FrameError::BadUtf8 => write!(f, "text message is not valid UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes frames sent by a client, reassembling fragmented messages up to `max_message` bytes.
///
/// Push received bytes with [`FrameDecoder::push`] (the caller bounds each push), then call
/// [`FrameDecoder::next`] until it returns `Ok(None)`. Buffered bytes never exceed one frame
/// header plus `max_message` plus the last push, and one control frame's 125 bytes more when a
/// ping or close arrives inside a fragmented message ([`FrameDecoder::MAX_HELD_OVER`]): a
/// fragment that would grow its message past `max_message` is refused from its header.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_message: usize,
    partial: Option<(u8, BytesMut)>,
    expect_masked: bool,
}

impl FrameDecoder {
    /// Most bytes [`FrameDecoder::buffered`] holds beyond `max_message` and the last push: the
    /// longest frame header (14 bytes) and a control frame's payload (125) inside a
    /// fragmented message.
    pub const MAX_HELD_OVER: usize = 14 + 125;

    /// A server-side decoder (frames must be masked) that refuses messages larger than
    /// `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_message,
            partial: None,
            expect_masked: true,
        }
    }

    /// A client-side decoder, for frames sent by a server (which must not be masked).
    pub fn for_server_frames(max_message: usize) -> Self {
        FrameDecoder {
            expect_masked: false,
            ..Self::new(max_message)
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held, buffered or in a partial message.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some((fin, opcode, payload)) = self.next_frame()? else {
                return Ok(None);
            };
            match opcode {
                OP_CLOSE => {
                    let mut p = &payload[..];
                    let (code, reason) = if p.len() >= 2 {
                        let code = p.get_u16();
                        let reason = std::str::from_utf8(p).map_err(|_| FrameError::BadUtf8)?;
                        (Some(code), reason.to_owned())
                    } else {
                        (None, String::new())
                    };
                    return Ok(Some(Message::Close(code, reason)));
                }
                OP_PING => return Ok(Some(Message::Ping(payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(FrameError::BadFragmentation);
                    }
                    if fin {
                        return finish(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, BytesMut::from(&payload[..])));
                }
                OP_CONTINUATION => {
                    let (op, mut acc) = self.partial.take().ok_or(FrameError::BadFragmentation)?;
                    if acc.len() + payload.len() > self.max_message {
                        return Err(FrameError::TooBig {
                            size: (acc.len() + payload.len()) as u64,
                            limit: self.max_message,
                        });
                    }
                    acc.extend_from_slice(&payload);
                    if fin {
                        return finish(op, acc.freeze()).map(Some);
                    }
                    self.partial = Some((op, acc));
                }
                other => return Err(FrameError::BadOpcode(other)),
            }
        }
    }

    fn next_frame(&mut self) -> Result<Option<(bool, u8, Bytes)>, FrameError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let b0 = self.buf[0];
        let b1 = self.buf[1];
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
            return Err(FrameError::BadOpcode(opcode));
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(if masked {
                FrameError::Masked
            } else {
                FrameError::Unmasked
            });
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64, 4)
            }
            127 => {
                if self.buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (n as u64, 2),
        };
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(FrameError::BadControl);
        }
        if len > self.max_message as u64 {
            return Err(FrameError::TooBig {
                size: len,
                limit: self.max_message,
            });
        }
        // Fragmentation is judged from the header, before the frame is buffered: a fragment
        // may only fill what is left of its message's bound.
        let open = self.partial.as_ref().map(|(_, acc)| acc.len());
        match (opcode, open) {
            (OP_TEXT | OP_BINARY, Some(_)) | (OP_CONTINUATION, None) => {
                return Err(FrameError::BadFragmentation)
            }
            (OP_CONTINUATION, Some(held)) if held as u64 + len > self.max_message as u64 => {
                return Err(FrameError::TooBig {
                    size: held as u64 + len,
                    limit: self.max_message,
                })
            }
            _ => {}
        }
        let len = len as usize;
        let mask_len = if masked { 4 } else { 0 };
        if self.buf.len() < at + mask_len + len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask[..mask_len].copy_from_slice(&self.buf[at..at + mask_len]);
        at += mask_len;
        self.buf.advance(at);
        let mut payload = self.buf.split_to(len);
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
        }
        Ok(Some((fin, opcode, payload.freeze())))
    }
}

fn finish(opcode: u8, payload: Bytes) -> Result<Message, FrameError> {
    if opcode == OP_TEXT {
        String::from_utf8(payload.to_vec())
            .map(Message::Text)
            .map_err(|_| FrameError::BadUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Encodes a masked client frame (used by levee's own clients: storm, tests).
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(0x80 | n as u8),
        n @ 126..=65535 => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frame_headers_use_the_shortest_length() {
        for (len, hdr) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = BytesMut::new();
            encode_frame(OP_BINARY, &vec![0; len], &mut out);
            assert_eq!(out.len(), hdr + len);
            assert_eq!(header_len(len), hdr);
            assert_eq!(out[0], 0x82);
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let mut out = BytesMut::new();
        encode_frame(OP_BINARY, b"abc", &mut out);
        let mut d = FrameDecoder::new(1024);
        d.push(&out);
        assert_eq!(d.next(), Err(FrameError::Unmasked));
        assert_eq!(FrameError::Unmasked.close_code(), CLOSE_PROTOCOL);
    }

    #[test]
    fn client_side_decoder_reads_server_frames() {
        let mut out = BytesMut::new();
        encode_frame(OP_BINARY, &[7; 300], &mut out);
        out.extend_from_slice(&close_frame(CLOSE_GOING_AWAY, "bye"));
        let mut d = FrameDecoder::for_server_frames(1024);
        d.push(&out);
        assert_eq!(
            d.next(),
            Ok(Some(Message::Binary(Bytes::from(vec![7; 300]))))
        );
        assert_eq!(
            d.next(),
            Ok(Some(Message::Close(Some(CLOSE_GOING_AWAY), "bye".into())))
        );
        let mut masked = BytesMut::new();
        encode_client_frame(OP_BINARY, b"x", [1, 2, 3, 4], &mut masked);
        let mut d = FrameDecoder::for_server_frames(1024);
        d.push(&masked);
        assert_eq!(d.next(), Err(FrameError::Masked));
    }

    #[test]
    fn oversized_message_is_refused_from_its_header() {
        let mut out = BytesMut::new();
        encode_client_frame(OP_BINARY, &[0; 2000], [1, 2, 3, 4], &mut out);
        let mut d = FrameDecoder::new(1000);
        d.push(&out[..4]);
        assert!(matches!(
            d.next(),
            Err(FrameError::TooBig { size: 2000, .. })
        ));
    }

    #[test]
    fn fragment_past_the_bound_is_refused_from_its_header() {
        // Found by fuzz/ws_client_frames: with a 1 KiB bound, a fragmented message holding
        // 1,000 bytes and a continuation frame declaring 1,000 more, the decoder buffered the
        // whole continuation (1,132 bytes held, over header + bound + push) before refusing.
        for server_side in [true, false] {
            let frame = |op: u8, fin: bool, p: &[u8], out: &mut BytesMut| {
                let start = out.len();
                if server_side {
                    encode_client_frame(op, p, [1, 2, 3, 4], out);
                } else {
                    encode_frame(op, p, out);
                }
                if !fin {
                    out[start] &= 0x7f;
                }
            };
            let mut d = if server_side {
                FrameDecoder::new(1024)
            } else {
                FrameDecoder::for_server_frames(1024)
            };
            let mut out = BytesMut::new();
            frame(OP_BINARY, false, &[7; 1000], &mut out);
            d.push(&out);
            assert_eq!(d.next(), Ok(None));
            let mut cont = BytesMut::new();
            frame(OP_CONTINUATION, true, &[8; 1000], &mut cont);
            d.push(&cont[..8]);
            assert_eq!(
                d.next(),
                Err(FrameError::TooBig {
                    size: 2000,
                    limit: 1024
                })
            );
            assert!(d.buffered() <= 14 + 1024 + 8);
            // A new message inside one is refused from its header as well.
            let mut d = FrameDecoder::for_server_frames(1024);
            let mut out = BytesMut::new();
            encode_header(OP_BINARY, 10, &mut out);
            out[0] &= 0x7f;
            out.put_slice(&[0; 10]);
            encode_header(OP_TEXT, 1000, &mut out);
            d.push(&out);
            assert_eq!(d.next(), Err(FrameError::BadFragmentation));
        }
    }

    #[test]
    fn fragmented_message_is_reassembled_and_pings_interleave() {
        let mut out = BytesMut::new();
        out.put_u8(OP_TEXT); // not final
        out.put_u8(0x80 | 3);
        out.put_slice(&[0, 0, 0, 0]);
        out.put_slice(b"hel");
        encode_client_frame(OP_PING, b"p", [9, 9, 9, 9], &mut out);
        encode_client_frame(OP_CONTINUATION, b"lo", [5, 6, 7, 8], &mut out);
        let mut d = FrameDecoder::new(100);
        d.push(&out);
        assert_eq!(d.next(), Ok(Some(Message::Ping(Bytes::from_static(b"p")))));
        assert_eq!(d.next(), Ok(Some(Message::Text("hello".into()))));
        assert_eq!(d.next(), Ok(None));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0xff, 0xff, 0xff]);
        let err = d.next().unwrap_err();
        assert_eq!(err, FrameError::ReservedBits);
        let mut d = FrameDecoder::new(100);
        d.push(&[0x83, 0x80, 0, 0, 0, 0]);
        assert_eq!(d.next(), Err(FrameError::BadOpcode(3)));
        let mut d = FrameDecoder::new(100);
        d.push(&[0x80, 0x80, 0, 0, 0, 0]);
        assert_eq!(d.next(), Err(FrameError::BadFragmentation));
    }

    #[test]
    fn close_frame_carries_code_and_cut_reason() {
        let f = close_frame(CLOSE_POLICY, &"é".repeat(100));
        assert_eq!(f[0], 0x88);
        let len = f[1] as usize;
        assert!(len <= 125);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), CLOSE_POLICY);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    proptest! {
        #[test]
        fn client_frames_round_trip_in_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70_000), 1..5),
            mask in any::<[u8; 4]>(),
            split in 1usize..5000,
        ) {
            let mut out = BytesMut::new();
            for p in &payloads {
                encode_client_frame(OP_BINARY, p, mask, &mut out);
            }
            let mut d = FrameDecoder::new(1 << 17);
            let mut got = Vec::new();
            for piece in out.chunks(split) {
                d.push(piece);
                while let Some(m) = d.next().unwrap() {
                    got.push(m);
                }
            }
            let want: Vec<Message> = payloads.iter().map(|p| Message::Binary(Bytes::from(p.clone()))).collect();
            prop_assert_eq!(got, want);
        }
    }
}
