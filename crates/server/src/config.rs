//! Server settings. Every bound the server enforces is named here, with its default.

use crate::shield::ShieldConfig;
use levee_core::cadence::Cadence;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings for one levee node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Base URL clients should use (`http://host:port`), when it differs from the request's
    /// `Host`. Without it, URLs are built from the `Host` header.
    pub public_url: Option<String>,
    /// Channels declared by every space's output stream (1 or 2). Sources of either channel
    /// count are accepted: Opus decoders mix to the declared layout.
    pub channels: u8,
    /// Writer shards (threads) that write to listeners; 0: one per CPU.
    pub fanout_shards: usize,
    /// Chunks kept per space and format for listeners to read (the fan-out window).
    pub ring_chunks: usize,
    /// Chunks behind the live edge a new or lagging listener starts at.
    pub join_backlog: u64,
    /// Most chunks one write to a listener carries.
    pub max_batch: usize,
    /// A listener whose write cannot complete for this long is cut.
    pub stall_timeout: Duration,
    /// Kernel send buffer per listener socket, bytes (bounds what a non-reader holds).
    pub listener_sndbuf: usize,
    /// Time allowed to send a complete request head.
    pub header_timeout: Duration,
    /// Largest request head accepted, bytes.
    pub max_head_bytes: usize,
    /// Time allowed for a whole API exchange (request body and response).
    pub api_timeout: Duration,
    /// Largest API request body, bytes.
    pub max_api_body: usize,
    /// Open connections the node accepts; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Spaces the node holds (ended spaces are forgotten first to make room).
    pub max_spaces: usize,
    /// A source that sends nothing for this long is dropped.
    pub source_idle_timeout: Duration,
    /// How far ahead of real time a source may run before it is paced.
    pub source_burst: Duration,
    /// Largest WebSocket message accepted from a host (one Opus packet plus header).
    pub max_ws_ingest_message: usize,
    /// Largest WebSocket message accepted from a listener (listeners send only control frames).
    pub max_ws_listener_message: usize,
    /// Chunk duration policy.
    pub cadence: Cadence,
    /// Listeners one space may hold (a bulkhead: a flood on one space leaves room for others).
    pub max_listeners_per_space: usize,
    /// Connections kept for hosts: listeners are refused once the node holds
    /// `max_connections − ingest_reserve` of them.
    pub ingest_reserve: usize,
    /// A source must deliver at least this fraction of real time over each 10 s window.
    pub min_source_realtime: f64,
    /// Per-source limits, bans, tickets, admission and escalation.
    pub shield: ShieldConfig,
}

impl Config {
    /// The bounds of the fan-out engine.
    pub fn fanout_limits(&self) -> crate::fanout::Limits {
        let shards = match self.fanout_shards {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        crate::fanout::Limits {
            shards,
            ring_chunks: self.ring_chunks,
            join_backlog: self.join_backlog,
            max_batch: self.max_batch,
            stall_timeout: self.stall_timeout,
            close_linger: crate::fanout::Limits::default().close_linger,
            max_ws_message: self.max_ws_listener_message,
            max_ogg_upload: crate::fanout::Limits::default().max_ogg_upload,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            public_url: None,
            channels: 2,
            fanout_shards: 0,
            ring_chunks: 256,
            join_backlog: 1,
            max_batch: 14,
            stall_timeout: Duration::from_secs(10),
            listener_sndbuf: 64 * 1024,
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 8 * 1024,
            api_timeout: Duration::from_secs(10),
            max_api_body: 16 * 1024,
            max_connections: 18_000,
            max_spaces: 10_000,
            source_idle_timeout: Duration::from_secs(10),
            source_burst: Duration::from_secs(2),
            max_ws_ingest_message: 8 * 1024,
            max_ws_listener_message: 1024,
            cadence: Cadence::default(),
            max_listeners_per_space: 12_000,
            ingest_reserve: 256,
            min_source_realtime: 0.5,
            shield: ShieldConfig::default(),
        }
    }
}
