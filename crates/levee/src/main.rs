//! The `levee` command: CLI wiring only.

mod plan;
mod settings;

use clap::{Args, Parser, Subcommand};
use levee_core::source::Cidr;
use levee_server::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "Live audio spaces: publish once, every listener hears it live."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with the demo space live (a looped programme shipped with levee).
    Demo(ServeArgs),
    /// Load and measure: simulated listeners report what each one got (docs/storm.md).
    Storm(Box<levee_storm::cli::StormArgs>),
    /// The fleet for an audience, from figures measured on this build (docs/capacity.json).
    Plan(PlanArgs),
}

/// `levee plan`: edge nodes, NATS servers, bandwidth, memory and file descriptors.
#[derive(Args)]
struct PlanArgs {
    /// Concurrent listeners to plan for (the same is printed for 25 million).
    #[arg(long, default_value_t = 8_000_000)]
    listeners: u64,
    /// Stream bitrate (`32k`, `64000`).
    #[arg(long, default_value = "32k", value_parser = bitrate)]
    bitrate: u64,
    /// Longest e2e latency (p99) to plan for, ms: shorter chunks, more CPU per listener.
    /// Without it, the cheapest cadence (500-ms chunks).
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Capacity figures to use instead of the ones measured on this build.
    #[arg(long)]
    from: Option<std::path::PathBuf>,
    /// Edge node: CPU cores.
    #[arg(long)]
    node_cores: Option<f64>,
    /// Edge node: memory, GiB.
    #[arg(long)]
    node_mem_gib: Option<f64>,
    /// Edge node: network, Gbit/s.
    #[arg(long)]
    node_nic_gbps: Option<f64>,
    /// Share of each resource of a node to use (0 to 1].
    #[arg(long)]
    headroom: Option<f64>,
}

fn bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.strip_suffix('k') {
        Some(n) => (n, 1000),
        None => (t.as_str(), 1),
    };
    match num.parse::<u64>() {
        Ok(v) if (6_000..=512_000).contains(&(v * mul)) => Ok(v * mul),
        _ => Err(format!("bitrate {s:?}: 6k to 512k")),
    }
}

fn run_plan(a: &PlanArgs) -> Result<String, String> {
    let text = match &a.from {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => plan::EMBEDDED.to_owned(),
    };
    let mut c = plan::Capacity::parse(&text)?;
    if let Some(v) = a.node_cores {
        c.node.cores = v;
    }
    if let Some(v) = a.node_mem_gib {
        c.node.mem_gib = v;
    }
    if let Some(v) = a.node_nic_gbps {
        c.node.nic_gbps = v;
    }
    if let Some(v) = a.headroom {
        c.node.headroom = v;
    }
    let n = &c.node;
    if [n.cores, n.mem_gib, n.nic_gbps]
        .iter()
        .any(|v| !(v.is_finite() && *v > 0.0))
        || !(n.headroom > 0.0 && n.headroom <= 1.0)
    {
        return Err("node figures must be positive, headroom in (0, 1]".into());
    }
    if a.listeners == 0 {
        return Err("--listeners must be at least 1".into());
    }
    let latency = a.latency_ms.map(|l| l as f64);
    let mut out = format!(
        "levee plan at {} kbit/s, from {}\n\n",
        a.bitrate / 1000,
        a.from.as_ref().map_or(
            "the figures measured on this build (docs/capacity.json)".to_owned(),
            |p| { p.display().to_string() }
        )
    );
    let mut audiences = vec![a.listeners as f64];
    if a.listeners != 25_000_000 {
        audiences.push(25_000_000.0);
    }
    for l in audiences {
        let f = plan::plan(&c, l, a.bitrate as f64, latency);
        out.push_str(&plan::render(&c, &f));
        out.push('\n');
    }
    Ok(out)
}

/// Every flag can also come from a settings file (`--config`) or from its environment
/// variable `LEVEE_<FLAG>`; flags beat the environment, which beats the file.
#[derive(Args)]
#[command(args_override_self = true)]
struct ServeArgs {
    /// Settings file (TOML; keys are these flags' long names, e.g. `ring-chunks = 512`).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL for absolute URLs in API answers, when clients reach the node under another name.
    #[arg(long)]
    public_url: Option<String>,
    /// Channels of every space's output stream (1 or 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    channels: u8,
    /// Chunks kept per space and format (the fan-out window).
    #[arg(long, default_value_t = 256)]
    ring_chunks: usize,
    /// Writer shards (threads) that write to listeners; 0: one per CPU.
    #[arg(long, default_value_t = 0)]
    fanout_shards: usize,
    /// Cut a listener whose write cannot complete for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// Kernel send buffer per listener socket, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    listener_sndbuf: usize,
    /// Time allowed to send a request head.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Drop a source that sends nothing for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    source_idle_timeout: Duration,
    /// Address WebRTC (WHIP) speakers reach the node's UDP sockets at, announced as the ICE
    /// candidate (default: the address each WHIP request came to).
    #[arg(long)]
    webrtc_ip: Option<std::net::IpAddr>,
    /// Open connections the node accepts.
    #[arg(long, default_value_t = 18_000)]
    max_connections: usize,
    /// Spaces the node holds.
    #[arg(long, default_value_t = 10_000)]
    max_spaces: usize,
    /// Shortest chunk, ms (latency floor).
    #[arg(long, default_value_t = 20)]
    chunk_min_ms: u32,
    /// Longest chunk, ms (latency ceiling under load).
    #[arg(long, default_value_t = 500)]
    chunk_max_ms: u32,
    /// Listeners one space may hold.
    #[arg(long, default_value_t = 12_000)]
    max_listeners_per_space: usize,
    /// Share the listening port with other levee processes on this machine (SO_REUSEPORT):
    /// the kernel spreads new connections over them. The way past a per-process limit of
    /// open files, and a listener who loses its process reconnects to the same address.
    #[arg(long)]
    reuse_port: bool,
    /// Directory the spaces this node feeds are recorded to (their replays are served from
    /// it, also after a restart).
    #[arg(long, default_value = "levee-data")]
    data_dir: std::path::PathBuf,
    /// Record nothing.
    #[arg(long)]
    no_record: bool,
    /// Bytes all recordings may take (K, M, G suffixes); beyond, recording stops and the
    /// broadcast goes on.
    #[arg(long, default_value = "10G", value_parser = parse_bytes)]
    max_recording_bytes: u64,
    /// How long a recording is kept.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Audio a listener session takes before it counts as a view (docs/audience.md).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    view_after: Duration,
    /// Spaces with series of their own in /metrics, the most listened first; the others are
    /// summed under space="_other".
    #[arg(long, default_value_t = 20)]
    metrics_spaces: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    shield: ShieldArgs,
}

/// Joining a cluster of nodes through NATS (docs/operations.md, "A cluster").
#[derive(Args)]
struct ClusterArgs {
    /// NATS servers to join a cluster through (comma-separated `nats://host:port`). Off when
    /// absent: the node stands alone and needs no external service.
    #[arg(long, value_delimiter = ',')]
    nats: Vec<String>,
    /// This node's name in the cluster (default: the host name and the listening port).
    #[arg(long)]
    node: Option<String>,
    /// NATS credentials file.
    #[arg(long)]
    nats_creds: Option<std::path::PathBuf>,
    /// NATS user (with `--nats-password`).
    #[arg(long)]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "LEVEE_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// Require TLS to NATS.
    #[arg(long)]
    nats_tls: bool,
    /// Replicas of the cluster's registry bucket (at most the NATS servers; 1 for one).
    #[arg(long, default_value_t = 1)]
    nats_replicas: usize,
}

impl ClusterArgs {
    fn config(
        &self,
        listen: SocketAddr,
    ) -> Result<Option<levee_server::cluster::ClusterConfig>, String> {
        if self.nats.is_empty() {
            return Ok(None);
        }
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "levee".into());
                format!("{host}-{}", listen.port())
            }
        };
        let user = match (&self.nats_user, &self.nats_password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err("--nats-user and --nats-password go together".into()),
        };
        Ok(Some(levee_server::cluster::ClusterConfig {
            urls: self.nats.clone(),
            node,
            creds: self.nats_creds.clone(),
            user,
            tls: self.nats_tls,
            replicas: self.nats_replicas.max(1),
        }))
    }
}

/// Per-source limits, bans, tickets and admission.
#[derive(Args)]
struct ShieldArgs {
    /// Secret from which ticket keys derive; give every node of a cluster the same one.
    /// Random when absent (tickets then verify on this node only).
    #[arg(long, env = "LEVEE_TICKET_SECRET", hide_env_values = true)]
    ticket_secret: Option<String>,
    /// Bearer key of the admin API (/api/admin/...). Random and printed when absent.
    #[arg(long, env = "LEVEE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Sources exempt from limits and bans (repeatable CIDR).
    #[arg(long = "allow", default_values_t = ["127.0.0.1/32".to_string(), "::1/128".to_string()])]
    allow: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed (repeatable CIDR).
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Open connections per source address.
    #[arg(long, default_value_t = 256)]
    max_conns_per_ip: i32,
    /// Open connections per /24 (IPv4) or /48 (IPv6).
    #[arg(long, default_value_t = 4_096)]
    max_conns_per_prefix: i32,
    /// New connections per second per source address.
    #[arg(long, default_value_t = 100.0)]
    conn_rate_per_ip: f64,
    /// New connections per second per /24 or /48.
    #[arg(long, default_value_t = 2_000.0)]
    conn_rate_per_prefix: f64,
    /// Join requests per second per source address.
    #[arg(long, default_value_t = 20.0)]
    join_rate_per_ip: f64,
    /// Join requests per second per /24 or /48.
    #[arg(long, default_value_t = 1_000.0)]
    join_rate_per_prefix: f64,
    /// Refusals within 10 s that get an address banned.
    #[arg(long, default_value_t = 200.0)]
    strikes_to_ban: f64,
    /// First automatic ban (doubles on each repeat, up to an hour).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ban_base: Duration,
    /// Admissions per second per space (the waiting room's outflow).
    #[arg(long, default_value_t = 2_000.0)]
    admission_rate: f64,
    /// Admissions at once when a space's line is empty.
    #[arg(long, default_value_t = 2_000)]
    admission_burst: u64,
    /// Callers a space's line holds before it answers "full".
    #[arg(long, default_value_t = 1_000_000)]
    max_waiting: u64,
    /// Join requests per second to one space that escalate it to proof of work.
    #[arg(long, default_value_t = 5_000.0)]
    challenge_join_rate: f64,
    /// Mirror bans into the nftables table `inet NAME` (created or replaced at start, deleted
    /// at exit): the kernel then drops banned networks' SYNs to the listening port. Needs `nft`
    /// and CAP_NET_ADMIN. Off when absent.
    #[arg(long, value_parser = nft_table)]
    nft_table: Option<String>,
}

fn nft_table(name: &str) -> Result<String, String> {
    levee_server::shield::nft::check_table_name(name).map(|()| name.to_owned())
}

/// Bytes with an optional K, M or G suffix (powers of 1,024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: a number of bytes, with K, M or G"))
}

impl ServeArgs {
    fn config(&self) -> Result<Config, String> {
        let mut c = Config {
            listen: self.listen,
            public_url: self.public_url.clone(),
            channels: self.channels,
            ring_chunks: self.ring_chunks.max(2),
            fanout_shards: self.fanout_shards,
            stall_timeout: self.stall_timeout,
            listener_sndbuf: self.listener_sndbuf,
            header_timeout: self.header_timeout,
            source_idle_timeout: self.source_idle_timeout,
            webrtc_ip: self.webrtc_ip,
            max_connections: self.max_connections,
            max_spaces: self.max_spaces.max(1),
            view_after: self.view_after,
            metrics_spaces: self.metrics_spaces,
            ..Config::default()
        };
        c.cadence.min_ms = self.chunk_min_ms.max(1);
        c.cadence.max_ms = self.chunk_max_ms.max(c.cadence.min_ms);
        c.max_listeners_per_space = self.max_listeners_per_space;
        c.reuse_port = self.reuse_port;
        c.record = levee_server::config::RecordConfig {
            dir: (!self.no_record).then(|| self.data_dir.clone()),
            max_bytes: self.max_recording_bytes,
            retention: self.retention,
        };
        c.cluster = self.cluster.config(self.listen)?;
        let sh = &self.shield;
        let z = &mut c.shield;
        if let Some(secret) = &sh.ticket_secret {
            z.secret = secret.as_bytes().to_vec();
        }
        if let Some(key) = &sh.admin_key {
            z.admin_key = key.clone();
        }
        let cidrs = |list: &[String]| -> Result<Vec<Cidr>, String> {
            list.iter()
                .map(|s| Cidr::parse(s).map_err(|e| e.to_string()))
                .collect()
        };
        z.allow = cidrs(&sh.allow)?;
        z.trusted_proxies = cidrs(&sh.trusted_proxies)?;
        z.max_conns_per_ip = sh.max_conns_per_ip;
        z.max_conns_per_prefix = sh.max_conns_per_prefix;
        z.conn_rate_per_ip = sh.conn_rate_per_ip;
        z.conn_rate_per_prefix = sh.conn_rate_per_prefix;
        z.join_rate_per_ip = sh.join_rate_per_ip;
        z.join_rate_per_prefix = sh.join_rate_per_prefix;
        z.strikes_to_ban = sh.strikes_to_ban;
        z.ban_base = sh.ban_base;
        z.line.rate_per_s = sh.admission_rate.max(0.1);
        z.line.burst = sh.admission_burst;
        z.line.max_waiting = sh.max_waiting;
        z.line.capacity = self.max_listeners_per_space as u64;
        z.space_pressure.join_rate_high = sh.challenge_join_rate;
        z.nft_table = sh.nft_table.clone();
        Ok(c)
    }
}

/// Prints a line on stdout, ignoring a closed pipe: whoever started the server may read only
/// the first line and close it, and that must never stop the server.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> std::process::ExitCode {
    let cli: Cli = match settings::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("levee: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = match cli.command {
        Command::Storm(args) => return levee_storm::cli::main(*args),
        Command::Plan(args) => {
            return match run_plan(&args) {
                Ok(text) => {
                    print!("{text}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("levee plan: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        command => Cli { command },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "levee=info,levee_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (args, demo) = match &cli.command {
            Command::Serve(a) => (a, false),
            Command::Demo(a) => (a, true),
            Command::Storm(_) | Command::Plan(_) => {
                unreachable!("handled before the runtime starts")
            }
        };
        let config = match args.config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("levee: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let admin_key = config.shield.admin_key.clone();
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("levee: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let hub = server.hub.clone();
        let base = format!("http://{}", server.addr);
        let demo_space = demo.then(|| levee_server::demo::start(server.hub.clone()));
        // The first line of stdout is machine-readable: scripts and tests wait for it, and
        // everything (the demo space included) is ready when it appears.
        say(&format!("levee listening on {base}"));
        if args.shield.admin_key.is_none() {
            say(&format!("admin key (for /api/admin/...): {admin_key}"));
        }
        if let Some(space) = demo_space {
            let id = space.snapshot().id;
            say(&format!(
                "demo space live: open {base}/space/{id} (lobby: {base}/)"
            ));
            say(&format!("listen with: ffplay {base}/live/{id}.ogg"));
        }
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => term.recv().await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => eprintln!("levee: shutting down"),
            _ = terminate => eprintln!("levee: shutting down (SIGTERM)"),
        }
        // Deletes the nftables table, if there is one.
        hub.shield.stop_mirror();
        std::process::ExitCode::SUCCESS
    })
}
