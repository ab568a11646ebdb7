//! `levee plan`: the fleet for an audience, from figures measured on this build
//! (`docs/capacity.json`, embedded; `--from FILE` reads another).
//!
//! Pure arithmetic over the figures:
//! - chunk duration from the latency asked for (e2e p99 ≈ `e2e_p99_per_chunk` × chunk, within
//!   20–1,000 ms; 500 ms, levee's longest by default, when none is asked for; beyond 500 ms the
//!   nodes need `--chunk-max-ms`);
//! - CPU per listener-second at that chunk, interpolating the measured cost of one write
//!   between the measured chunk durations;
//! - per edge node: the listeners each resource allows at `headroom` (CPU, network, memory), the
//!   smallest of which is the node's, and the resource that set it is the limit;
//! - NATS: one audio message per packet (20 ms) per edge node, at least three servers.

use serde::Deserialize;

/// The figures shipped with this build.
pub const EMBEDDED: &str = include_str!("../../../docs/capacity.json");

/// Audio packets per second of one space (20-ms Opus packets).
const PACKETS_PER_S: f64 = 50.0;
/// Bytes of one audio message on the bus beyond the Opus packet (`levee_core::bus`).
const BUS_HEADER: f64 = 44.0;

/// One measured point of the write cost.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteCost {
    /// Chunk duration, ms.
    pub chunk_ms: f64,
    /// Server CPU per listener-second at that chunk, µs.
    pub cpu_us_per_listener_s: f64,
}

/// What was measured.
#[derive(Debug, Clone, Deserialize)]
pub struct Measured {
    /// Bitrate the figures were measured at.
    pub bitrate_bps: f64,
    /// Cost at several chunk durations.
    pub write_cost: Vec<WriteCost>,
    /// Bytes on the wire per listener-second.
    pub wire_bytes_per_listener_s: f64,
    /// User-space memory per listener, KiB.
    pub user_kib_per_listener: f64,
    /// Kernel socket memory per listener, KiB.
    pub kernel_kib_per_listener: f64,
    /// e2e latency p99 over the chunk duration.
    pub e2e_p99_per_chunk: f64,
    /// Listeners one process holds.
    pub listeners_per_process: f64,
}

/// Public figures.
#[derive(Debug, Clone, Deserialize)]
pub struct Public {
    /// Messages a NATS server moves per second.
    pub nats_msgs_per_s_per_server: f64,
    /// Fewest NATS servers (a replicated registry needs three).
    pub nats_min_servers: f64,
}

/// The edge machine planned for.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// CPU cores.
    pub cores: f64,
    /// Memory, GiB.
    pub mem_gib: f64,
    /// Network, Gbit/s.
    pub nic_gbps: f64,
    /// Share of each resource used.
    pub headroom: f64,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
pub struct Capacity {
    /// What was measured.
    pub measured: Measured,
    /// Public figures.
    pub public: Public,
    /// The edge machine.
    pub node: Node,
}

impl Capacity {
    /// Parses and checks a capacity file.
    pub fn parse(text: &str) -> Result<Capacity, String> {
        let c: Capacity = serde_json::from_str(text).map_err(|e| format!("capacity file: {e}"))?;
        let m = &c.measured;
        if m.write_cost.is_empty() {
            return Err("capacity file: no write_cost point".into());
        }
        let positive = [
            m.bitrate_bps,
            m.wire_bytes_per_listener_s,
            m.e2e_p99_per_chunk,
            m.listeners_per_process,
            c.public.nats_msgs_per_s_per_server,
            c.node.cores,
            c.node.mem_gib,
            c.node.nic_gbps,
        ];
        if positive.iter().any(|v| !(v.is_finite() && *v > 0.0))
            || m.write_cost
                .iter()
                .any(|w| !(w.chunk_ms > 0.0 && w.cpu_us_per_listener_s > 0.0))
            || !(c.node.headroom > 0.0 && c.node.headroom <= 1.0)
        {
            return Err("capacity file: every figure must be positive (headroom in (0, 1])".into());
        }
        Ok(c)
    }
}

/// What limits an edge node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Its CPU.
    Cpu,
    /// Its network.
    Network,
    /// Its memory.
    Memory,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "CPU (server µs per listener-second)",
            Limit::Network => "network (bytes per listener-second against the NIC)",
            Limit::Memory => "memory (KiB per listener)",
        }
    }
}

/// A fleet for one audience.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Listeners planned for.
    pub listeners: f64,
    /// Chunk duration used, ms.
    pub chunk_ms: f64,
    /// e2e p99 to expect, ms.
    pub e2e_p99_ms: f64,
    /// CPU per listener-second, µs.
    pub cpu_us: f64,
    /// Bytes per listener-second.
    pub wire_bps: f64,
    /// Memory per listener, KiB.
    pub kib: f64,
    /// Listeners per edge node allowed by CPU, network and memory.
    pub per_node: [f64; 3],
    /// Listeners per edge node.
    pub node_listeners: f64,
    /// What limits a node.
    pub limit: Limit,
    /// Edge nodes.
    pub nodes: f64,
    /// levee processes per node.
    pub procs_per_node: f64,
    /// Egress of the whole fleet, Gbit/s.
    pub egress_gbps: f64,
    /// NATS servers.
    pub nats_servers: f64,
    /// Audio messages through NATS per second (per space on air).
    pub nats_msgs_per_s: f64,
    /// Origin → NATS, kbit/s (per space).
    pub origin_kbps: f64,
    /// NATS → edges, Mbit/s in all (per space).
    pub bus_to_edges_mbps: f64,
    /// Memory per node, GiB.
    pub node_mem_gib: f64,
    /// File descriptors per node.
    pub node_fds: f64,
}

/// CPU per listener-second at `chunk_ms`: the measured cost of one write, interpolated
/// linearly between the measured chunk durations (held flat beyond them), times the writes
/// per second.
pub fn cpu_at(points: &[WriteCost], chunk_ms: f64) -> f64 {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .map(|w| (w.chunk_ms, w.cpu_us_per_listener_s * w.chunk_ms / 1000.0))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let per_write = match pts.iter().position(|p| p.0 >= chunk_ms) {
        None => pts[pts.len() - 1].1,
        Some(0) => pts[0].1,
        Some(i) => {
            let (a, b) = (pts[i - 1], pts[i]);
            a.1 + (b.1 - a.1) * (chunk_ms - a.0) / (b.0 - a.0)
        }
    };
    per_write * 1000.0 / chunk_ms
}

/// Longest chunk levee serves by default (`--chunk-max-ms`), ms.
pub const DEFAULT_MAX_CHUNK_MS: f64 = 500.0;
/// Longest chunk a plan uses (a latency that allows more still gets this), ms.
pub const MAX_CHUNK_MS: f64 = 1000.0;

/// The fleet for `listeners` at `bitrate_bps`, with e2e p99 about `latency_ms` at most (the
/// default cadence's longest chunk, 500 ms, when `None`).
pub fn plan(c: &Capacity, listeners: f64, bitrate_bps: f64, latency_ms: Option<f64>) -> Fleet {
    let m = &c.measured;
    let chunk_ms = latency_ms
        .map_or(DEFAULT_MAX_CHUNK_MS, |l| {
            ((l / m.e2e_p99_per_chunk) / 20.0).floor() * 20.0
        })
        .clamp(20.0, MAX_CHUNK_MS);
    let cpu_us = cpu_at(&m.write_cost, chunk_ms);
    let wire_bps = m.wire_bytes_per_listener_s * bitrate_bps / m.bitrate_bps;
    let kib = m.user_kib_per_listener + m.kernel_kib_per_listener;
    let n = &c.node;
    let per_node = [
        n.cores * 1e6 * n.headroom / cpu_us,
        n.nic_gbps * 1e9 / 8.0 * n.headroom / wire_bps,
        n.mem_gib * 1024.0 * 1024.0 * n.headroom / kib,
    ];
    let (idx, node_listeners) = per_node
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 1.0));
    let node_listeners = node_listeners.floor().max(1.0);
    let limit = [Limit::Cpu, Limit::Network, Limit::Memory][idx];
    let nodes = (listeners / node_listeners).ceil().max(1.0);
    let per_node_actual = (listeners / nodes).ceil();
    let nats_msgs_per_s = PACKETS_PER_S * nodes;
    let packet_bytes = bitrate_bps / 8.0 / PACKETS_PER_S;
    Fleet {
        listeners,
        chunk_ms,
        e2e_p99_ms: chunk_ms * m.e2e_p99_per_chunk,
        cpu_us,
        wire_bps,
        kib,
        per_node,
        node_listeners,
        limit,
        nodes,
        procs_per_node: (per_node_actual / m.listeners_per_process).ceil(),
        egress_gbps: listeners * wire_bps * 8.0 / 1e9,
        nats_servers: (nats_msgs_per_s / (c.public.nats_msgs_per_s_per_server * n.headroom))
            .ceil()
            .max(c.public.nats_min_servers),
        nats_msgs_per_s,
        origin_kbps: (packet_bytes + BUS_HEADER) * 8.0 * PACKETS_PER_S / 1000.0,
        bus_to_edges_mbps: (packet_bytes + BUS_HEADER) * 8.0 * nats_msgs_per_s / 1e6,
        node_mem_gib: per_node_actual * kib / 1024.0 / 1024.0,
        node_fds: per_node_actual,
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The fleet as `levee plan` prints it.
pub fn render(c: &Capacity, f: &Fleet) -> String {
    let n = &c.node;
    format!(
        "{listeners} listeners: {nodes} edge node{s}, {nats} NATS servers\n\
         \x20 cadence: {chunk:.0} ms chunks, e2e p99 about {e2e:.0} ms{flag}\n\
         \x20 per listener: {cpu:.1} µs of CPU a second, {wire:.0} B/s on the wire, {kib:.2} KiB of memory, 1 file descriptor\n\
         \x20 edge node ({cores:.0} cores, {mem:.0} GiB, {nic:.0} Gbit/s, {head:.0} % used): {node} listeners; CPU would allow {pc}, network {pn}, memory {pm}\n\
         \x20 limited by: {limit}\n\
         \x20 each node: {procs:.0} levee processes sharing its port (--reuse-port), {fds} file descriptors, {nmem:.1} GiB for listeners\n\
         \x20 egress: {egress:.1} Gbit/s in all\n\
         \x20 per space on air: origin → NATS {origin:.1} kbit/s; NATS → edges {msgs} messages/s, {bus:.2} Mbit/s\n",
        listeners = thousands(f.listeners),
        nodes = thousands(f.nodes),
        s = if f.nodes == 1.0 { "" } else { "s" },
        nats = f.nats_servers,
        chunk = f.chunk_ms,
        e2e = f.e2e_p99_ms,
        flag = if f.chunk_ms > DEFAULT_MAX_CHUNK_MS {
            format!(" (serve with --chunk-max-ms {:.0})", f.chunk_ms)
        } else {
            String::new()
        },
        cpu = f.cpu_us,
        wire = f.wire_bps,
        kib = f.kib,
        cores = n.cores,
        mem = n.mem_gib,
        nic = n.nic_gbps,
        head = n.headroom * 100.0,
        node = thousands(f.node_listeners),
        pc = thousands(f.per_node[0]),
        pn = thousands(f.per_node[1]),
        pm = thousands(f.per_node[2]),
        limit = f.limit.name(),
        procs = f.procs_per_node,
        fds = thousands(f.node_fds),
        nmem = f.node_mem_gib,
        egress = f.egress_gbps,
        origin = f.origin_kbps,
        msgs = thousands(f.nats_msgs_per_s),
        bus = f.bus_to_edges_mbps,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Capacity {
        Capacity::parse(EMBEDDED).expect("the shipped figures parse")
    }

    #[test]
    fn the_write_cost_is_interpolated_between_measured_chunks() {
        let c = shipped();
        let pts = &c.measured.write_cost;
        for p in pts {
            assert!((cpu_at(pts, p.chunk_ms) - p.cpu_us_per_listener_s).abs() < 1e-9);
        }
        // Between 360 and 500 ms the cost per write lies between the two measured ones.
        let mid = cpu_at(pts, 420.0) * 0.42;
        assert!(mid > 26.4 * 0.36 && mid < 20.2 * 0.5, "{mid}");
        // Beyond the last point (1,000 ms, measured in the cluster rehearsal) the cost per
        // write is held.
        let last = pts
            .iter()
            .find(|p| p.chunk_ms == 1000.0)
            .expect("a 1,000-ms point");
        assert!((cpu_at(pts, 2000.0) * 2.0 - last.cpu_us_per_listener_s).abs() < 1e-9);
    }

    #[test]
    fn a_fleet_is_the_audience_over_what_the_scarcest_resource_allows() {
        let c = shipped();
        let f = plan(&c, 8_000_000.0, 32_000.0, None);
        assert_eq!(f.chunk_ms, 500.0);
        let least = f.per_node.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(f.node_listeners, least.floor());
        assert_eq!(f.nodes, (8_000_000.0 / f.node_listeners).ceil());
        assert!(f.nodes * f.node_listeners >= 8_000_000.0);
        // At 32 kbit/s a 10 Gbit/s NIC, not the CPU, limits a node.
        assert_eq!(f.limit, Limit::Network);
        assert!(f.nats_servers >= 3.0);
        assert!((f.egress_gbps - 8e6 * 4109.0 * 8.0 / 1e9).abs() < 1e-6);
        // Three times the audience, three times the nodes (within one).
        let g = plan(&c, 25_000_000.0, 32_000.0, None);
        assert!(
            (g.nodes - f.nodes * 25.0 / 8.0).abs() <= 1.0,
            "{} {}",
            g.nodes,
            f.nodes
        );
        // A tighter latency means shorter chunks and more CPU per listener.
        let fast = plan(&c, 8_000_000.0, 32_000.0, Some(100.0));
        assert_eq!(fast.chunk_ms, 60.0);
        assert!(fast.cpu_us > f.cpu_us * 3.0);
        assert!(render(&c, &f).contains("limited by: network"));
        assert!(!render(&c, &f).contains("--chunk-max-ms"));
        // A looser latency allows chunks past the default cadence, up to a second.
        let slow = plan(&c, 8_000_000.0, 32_000.0, Some(1_500.0));
        assert_eq!(slow.chunk_ms, 1000.0);
        assert!(slow.cpu_us < f.cpu_us);
        assert!(render(&c, &slow).contains("(serve with --chunk-max-ms 1000)"));
        assert_eq!(plan(&c, 1e6, 32_000.0, Some(60_000.0)).chunk_ms, 1000.0);
    }

    #[test]
    fn a_bad_capacity_file_is_refused_with_a_reason() {
        assert!(Capacity::parse("{").unwrap_err().contains("capacity file"));
        let zero = EMBEDDED.replace("\"cores\": 16", "\"cores\": 0");
        assert!(Capacity::parse(&zero).unwrap_err().contains("positive"));
        let none = EMBEDDED.replace("\"write_cost\": [", "\"write_cost\": [], \"x\": [");
        assert!(Capacity::parse(&none).is_err());
    }
}
