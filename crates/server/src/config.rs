//! Server settings, all in one place. Every bound the server enforces is named here, with its
//! default.

use levee_core::admission::LineConfig;
use levee_core::cadence::Cadence;
use levee_core::pressure::PressureConfig;
use levee_core::source::Cidr;
use std::net::SocketAddr;
use std::time::Duration;

/// Where and how much a node records (`docs/operations.md`, "Recording and replay").
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Directory of the recordings (`--data-dir`); `None`: nothing is recorded.
    pub dir: Option<std::path::PathBuf>,
    /// Bytes all recordings may take (`--max-recording-bytes`); beyond, recording stops.
    pub max_bytes: u64,
    /// How long a recording is kept (`--retention`).
    pub retention: Duration,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: None,
            max_bytes: 10 << 30,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Settings for one levee node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Recording (off unless a directory is given).
    pub record: RecordConfig,
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
    /// Join a cluster through NATS (`--nats`); `None`: a node on its own.
    pub cluster: Option<ClusterConfig>,
    /// Share the listening port with other processes (`SO_REUSEPORT`, `--reuse-port`).
    pub reuse_port: bool,
    /// The address WebRTC (WHIP) sessions announce as their candidate and bind their UDP
    /// socket to (none: the address each WHIP request came to).
    pub webrtc_ip: Option<std::net::IpAddr>,
    /// Connections kept for hosts: listeners are refused once the node holds
    /// `max_connections − ingest_reserve` of them.
    pub ingest_reserve: usize,
    /// A source must deliver at least this fraction of real time over each 10 s window.
    pub min_source_realtime: f64,
    /// Per-source limits, bans, tickets, admission and escalation.
    pub shield: ShieldConfig,
    /// Audio a listener session takes before it counts as a view (`--view-after`,
    /// `docs/audience.md`).
    pub view_after: Duration,
    /// Spaces that get series of their own in `/metrics` (the most listened); the others are
    /// summed under `space="_other"` (`--metrics-spaces`): the series stay bounded however
    /// many spaces there are.
    pub metrics_spaces: usize,
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
            view_after: self.view_after,
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
            record: RecordConfig::default(),
            source_idle_timeout: Duration::from_secs(10),
            source_burst: Duration::from_secs(2),
            max_ws_ingest_message: 8 * 1024,
            max_ws_listener_message: 1024,
            cadence: Cadence::default(),
            max_listeners_per_space: 12_000,
            cluster: None,
            reuse_port: false,
            webrtc_ip: None,
            ingest_reserve: 256,
            min_source_realtime: 0.5,
            shield: ShieldConfig::default(),
            view_after: Duration::from_secs(levee_core::audience::DEFAULT_VIEW_AFTER_S),
            metrics_spaces: 20,
        }
    }
}

/// Shield settings; every limit is named here with its default.
#[derive(Debug, Clone)]
pub struct ShieldConfig {
    /// Secret from which ticket keys derive; nodes sharing it verify each other's tickets.
    pub secret: Vec<u8>,
    /// Key rotation period, s (tokens of the current and previous period verify).
    pub key_period_s: u64,
    /// How long a ticket may be used to open a stream, s.
    pub ticket_ttl_s: u64,
    /// How long a place in line is honoured, s.
    pub queue_token_ttl_s: u64,
    /// How long a challenge may be solved, s.
    pub challenge_ttl_s: u64,
    /// Bind tickets and challenges to the caller's /24 (IPv4) or /48 (IPv6).
    pub bind_to_prefix: bool,
    /// Open connections per address.
    pub max_conns_per_ip: i32,
    /// Open connections per /24 or /48.
    pub max_conns_per_prefix: i32,
    /// New connections per second per address.
    pub conn_rate_per_ip: f64,
    /// New connections per second per /24 or /48.
    pub conn_rate_per_prefix: f64,
    /// Join requests per second per address.
    pub join_rate_per_ip: f64,
    /// Join requests per second per /24 or /48.
    pub join_rate_per_prefix: f64,
    /// Refusals within 10 s that get an address banned.
    pub strikes_to_ban: f64,
    /// First ban; each repeat doubles it.
    pub ban_base: Duration,
    /// Longest automatic ban.
    pub ban_max: Duration,
    /// Bans held at most (the earliest to expire is dropped first).
    pub max_bans: usize,
    /// Sources exempt from limits and bans.
    pub allow: Vec<Cidr>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Bearer key of the admin API.
    pub admin_key: String,
    /// Each space's waiting room.
    pub line: LineConfig,
    /// Escalation thresholds of a space.
    pub space_pressure: PressureConfig,
    /// Escalation thresholds of the node.
    pub node_pressure: PressureConfig,
    /// Counters per sketch row (memory: 4 rows × 4 B × width per sketch).
    pub sketch_width: usize,
    /// Mirror the bans into this nftables table (`table inet NAME`, created at start and
    /// deleted at shutdown) so that the kernel drops banned networks' SYNs; `None`: off.
    pub nft_table: Option<String>,
}

impl Default for ShieldConfig {
    fn default() -> Self {
        ShieldConfig {
            secret: crate::random::bytes::<32>().to_vec(),
            key_period_s: 600,
            ticket_ttl_s: 60,
            queue_token_ttl_s: 900,
            challenge_ttl_s: 120,
            bind_to_prefix: true,
            max_conns_per_ip: 256,
            max_conns_per_prefix: 4_096,
            conn_rate_per_ip: 100.0,
            conn_rate_per_prefix: 2_000.0,
            join_rate_per_ip: 20.0,
            join_rate_per_prefix: 1_000.0,
            strikes_to_ban: 200.0,
            ban_base: Duration::from_secs(30),
            ban_max: Duration::from_secs(3_600),
            max_bans: 65_536,
            allow: vec![
                Cidr::parse("127.0.0.1/32").expect("valid"),
                Cidr::parse("::1/128").expect("valid"),
            ],
            trusted_proxies: Vec::new(),
            admin_key: crate::random::bytes::<16>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            line: LineConfig::default(),
            space_pressure: PressureConfig::default(),
            // The node escalates on volume that got past the per-source limits and on CPU, not
            // on refusals: refused sources are already contained, and escalating the node
            // would make every space's listeners pay for one space's attack.
            node_pressure: PressureConfig {
                join_rate_high: 20_000.0,
                cpu_high: 1.8,
                reject_ratio_high: f64::INFINITY,
                ..PressureConfig::default()
            },
            sketch_width: 32_768,
            nft_table: None,
        }
    }
}

/// How a node joins the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`); the client learns the others from them.
    pub urls: Vec<String>,
    /// This node's name (`[A-Za-z0-9._-]`, at most 64 bytes).
    pub node: String,
    /// NATS credentials file (`.creds`).
    pub creds: Option<std::path::PathBuf>,
    /// NATS user and password.
    pub user: Option<(String, String)>,
    /// Require TLS to NATS.
    pub tls: bool,
    /// Replicas of the registry bucket (1 on a single NATS server).
    pub replicas: usize,
}
