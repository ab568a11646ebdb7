//! levee's core: everything between receiving an Opus packet and writing bytes to a listener
//! that can be decided without a socket or a clock of its own.
//!
//! - [`packet`]: the programme packet stream (origin sequence numbers, positions, capture
//!   times) and taps that never skip silently.
//! - [`mux`]: packets → chunks packaged once per delivery format (Ogg pages, WebSocket frames).
//! - [`ring`]: the bounded fan-out window that listeners read by cursor, and its published
//!   immutable [`ring::Window`].
//! - [`ingest`]: source validation (Ogg/Opus or single packets) and real-time pacing.
//! - [`cadence`]: chunk duration as a function of the audience (latency vs. CPU).
//! - [`space`]: identity, host key and the `scheduled → live → ended` state machine.
//! - [`stage`]: speakers, roles and requests to speak; the mixer's jitter buffers, limiter and
//!   mix-minus.
//! - [`audit`]: the bounded log of operator actions.
//! - [`audience`]: views, unique listeners (HyperLogLog), sessions and listen time, mergeable.
//! - [`admission`]: the waiting room as two counters (FIFO, pre-queue lottery, honest ETAs).
//! - [`pressure`]: escalation to proof-of-work under attack, and relaxation.
//! - [`ticket`]: stateless signed tokens (join tickets, places in line, proof-of-work).
//! - [`sketch`]: fixed-size count-min counters for per-source limits.
//! - [`source`]: source addresses, their /24 and /48 networks, CIDR lists.
//! - [`refusal`]: refusal reasons as enums, each variant carrying its metric label.
//! - [`replay`]: exact anti-replay of proof-of-work solutions (a sliding bitmap per node).
//! - [`cidrmap`]: address blocks looked up by address in O(1) (bans, the allowlist).
//! - [`wire`]: levee's WebSocket message format.
//! - [`wsframe`]: WebSocket framing: encode once for everyone, decode clients with bounds.
//!
//! Time is always a parameter (µs or s since the Unix epoch), never read here.
#![warn(missing_docs, unreachable_pub)]

pub mod admission;
pub mod audience;
pub mod audit;
pub mod bus;
pub mod cadence;
pub mod cidrmap;
pub mod hls;
pub mod ingest;
pub mod mux;
pub mod packet;
pub mod pressure;
pub mod recording;
pub mod refusal;
pub mod replay;
pub mod ring;
pub mod sketch;
pub mod source;
pub mod space;
pub mod stage;
pub mod ticket;
pub mod wire;
pub mod wsframe;
