//! Who takes part in a run: listeners (WebSocket and Ogg, joining directly or through the join
//! API; LL-HLS), the synthetic host, the Icecast-style source, and the attackers.

pub mod attackers;
pub mod hls;
pub mod host;
pub mod join;
pub mod listeners;
pub mod source;
