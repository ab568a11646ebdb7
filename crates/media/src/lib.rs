//! Containers and codec headers for levee, as pure code: no sockets, no clocks.
//!
//! - [`ogg`]: Ogg pages (RFC 3533): CRC, an incremental page reader with bounds, a packet
//!   assembler that undoes lacing, and a page writer.
//! - [`opus`]: Opus in Ogg (RFC 7845): `OpusHead`, `OpusTags`, and packet durations from the
//!   TOC byte (RFC 6716 §3.1).
//! - [`mp4`]: fragmented MP4 with Opus (the init segment and media fragments of LL-HLS):
//!   a writer, and a strict reader of what it writes (recordings read back).
//!
//! Every parser here takes untrusted bytes and answers with a typed error that says what was
//! wrong; none of them panics or allocates without a bound.
#![warn(missing_docs, unreachable_pub)]

pub mod mp4;
pub mod ogg;
pub mod opus;
