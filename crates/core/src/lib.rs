//! levee's core: everything between receiving an Opus packet and writing bytes to a listener
//! that can be decided without a socket or a clock of its own.
//!
//! - [`packager`]: packets → chunks packaged once per delivery format (Ogg page, WebSocket frames).
//! - [`ring`]: the bounded fan-out window that listeners read by cursor.
//! - [`ingest`]: source validation (Ogg/Opus or single packets) and real-time pacing.
//! - [`cadence`]: chunk duration as a function of the audience (latency vs. CPU).
//! - [`space`]: identity, host key and the `scheduled → live → ended` state machine.
//! - [`wire`]: levee's WebSocket message format.
//! - [`wsframe`]: WebSocket framing: encode once for everyone, decode clients with bounds.
//!
//! Time is always a parameter (µs or s since the Unix epoch), never read here.
#![warn(missing_docs, unreachable_pub)]

pub mod cadence;
pub mod ingest;
pub mod packager;
pub mod ring;
pub mod space;
pub mod wire;
pub mod wsframe;
