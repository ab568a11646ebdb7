//! `levee_core::wsframe::FrameDecoder::for_server_frames`: what a WebSocket server sends to
//! levee's own clients (storm's listeners, the tests), in arbitrary splits.
//!
//! Input: two split bytes (see `levee_fuzz::Splitter`; the top bits of the second also pick
//! the message bound: 1 KiB as for listeners, 8 KiB as for hosts, 125 B, or 64 KiB), then the
//! bytes.
//!
//! Properties (`levee_fuzz::ws_frames`):
//! - no panic; messages respect the bound (data ≤ max, pings ≤ 125 B, close reasons ≤ 123 B);
//! - `buffered()` never exceeds one frame header + the bound + the last push, and the heap
//!   stays within a small multiple of that;
//! - a message made from the input by `encode_frame` (unmasked), whole, fragmented
//!   around a ping, and as text when it is UTF-8, decodes back unchanged in the same splits.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static A: levee_fuzz::Counting = levee_fuzz::Counting;

fuzz_target!(|data: &[u8]| levee_fuzz::ws_frames(data, false));
