//! Counters and their Prometheus text exposition (`GET /metrics`).
//!
//! Counters are plain atomics updated on the hot path (one relaxed add per write); the text is
//! rendered on request. Space ids appear as labels; their number is bounded by
//! `Config::max_spaces`.

use crate::counters::SpaceCounters;
use crate::fanout::{TrackCounters, FORMATS};
use crate::hub::Hub;
use crate::shield::{IngestReason, ShieldReason};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Renders every counter in Prometheus text format 0.0.4.
pub fn render(hub: &Hub) -> String {
    let mut out = String::with_capacity(4096);
    let spaces = hub.list();
    let node = &hub.node;
    let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total CPU time this process used (user and system), s.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:.6}",
        crate::clock::process_cpu_s()
    );
    scalar(
        &mut out,
        "levee_connections_total",
        "counter",
        "Connections accepted.",
        node.connections.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_open_connections",
        "gauge",
        "Connections open now.",
        node.open_connections.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_connections_refused_capacity_total",
        "counter",
        "Connections closed at once: node at max_connections.",
        node.refused_capacity.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_bad_requests_total",
        "counter",
        "Requests refused for a malformed, oversized or slow head.",
        node.bad_requests.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_spaces",
        "gauge",
        "Spaces held by this node.",
        spaces.len() as u64,
    );
    let _ = writeln!(out, "# HELP levee_ingest_errors_total Sources refused or dropped, by reason.\n# TYPE levee_ingest_errors_total counter");
    for r in IngestReason::ALL {
        let _ = writeln!(
            out,
            "levee_ingest_errors_total{{reason=\"{}\"}} {}",
            r.label(),
            node.ingest_errors.get(r)
        );
    }
    let _ = writeln!(out, "# HELP levee_hls_requests_total HLS requests answered, by kind.\n# TYPE levee_hls_requests_total counter");
    let h = &node.hls;
    for (kind, v) in [
        ("playlist", &h.playlist),
        ("blocking", &h.blocking),
        ("part", &h.part),
        ("segment", &h.segment),
        ("init", &h.init),
    ] {
        let _ = writeln!(
            out,
            "levee_hls_requests_total{{kind=\"{kind}\"}} {}",
            v.load(Relaxed)
        );
    }
    if let Some(r) = hub.recorder.get() {
        let k = r.counters();
        for (name, help, v) in [
            (
                "levee_recording_segments_total",
                "Recorded segments written to disk.",
                &k.segments,
            ),
            (
                "levee_recording_bytes_total",
                "Recorded bytes written to disk.",
                &k.bytes,
            ),
            (
                "levee_recording_refused_quota_total",
                "Segments not recorded: --max-recording-bytes was reached.",
                &k.refused_quota,
            ),
            (
                "levee_recording_errors_total",
                "Disk errors (each stops one space's recording).",
                &k.errors,
            ),
            (
                "levee_recording_torn_cut_total",
                "Torn or damaged recording tails cut off at start.",
                &k.torn_cut,
            ),
            (
                "levee_recording_lost_packets_total",
                "Packets a recorder lost behind its track.",
                &k.lost_packets,
            ),
            (
                "levee_recording_expired_total",
                "Recordings deleted for their age (--retention).",
                &k.expired,
            ),
        ] {
            scalar(&mut out, name, "counter", help, v.load(Relaxed));
        }
        scalar(
            &mut out,
            "levee_recording_used_bytes",
            "gauge",
            "Bytes the recordings take on disk.",
            r.used_bytes(),
        );
    }
    type Field = fn(&TrackCounters) -> &[AtomicU64; 2];
    let per_format: [(&str, &str, &str, Field); 7] = [
        (
            "levee_listeners",
            "gauge",
            "Listeners connected now.",
            |c| &c.listeners,
        ),
        (
            "levee_joins_total",
            "counter",
            "Listeners that joined.",
            |c| &c.joins,
        ),
        (
            "levee_bytes_sent_total",
            "counter",
            "Bytes written to listeners.",
            |c| &c.bytes_sent,
        ),
        (
            "levee_chunks_sent_total",
            "counter",
            "Chunks written to listeners.",
            |c| &c.chunks_sent,
        ),
        (
            "levee_lagging_skips_total",
            "counter",
            "Times a lagging listener skipped to the live edge.",
            |c| &c.lag_skips,
        ),
        (
            "levee_chunks_skipped_total",
            "counter",
            "Chunks lagging listeners lost by skipping.",
            |c| &c.chunks_skipped,
        ),
        (
            "levee_stalled_cuts_total",
            "counter",
            "Listeners disconnected for stalling.",
            |c| &c.stall_cuts,
        ),
    ];
    for (name, kind, help, field) in per_format {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &spaces {
            let id = s.snapshot().id;
            for f in FORMATS {
                let v = field(&s.track.counters)[f.idx()].load(Relaxed);
                let _ = writeln!(out, "{name}{{space=\"{id}\",format=\"{}\"}} {v}", f.label());
            }
        }
    }
    let sc = &hub.shield.counters;
    let _ = writeln!(out, "# HELP levee_shield_refused_total Requests and connections the shield refused, by reason.\n# TYPE levee_shield_refused_total counter");
    for r in ShieldReason::ALL {
        let _ = writeln!(
            out,
            "levee_shield_refused_total{{reason=\"{}\"}} {}",
            r.label(),
            sc.refused(r)
        );
    }
    scalar(
        &mut out,
        "levee_join_requests_total",
        "counter",
        "Join requests received.",
        sc.join_requests.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_tickets_issued_total",
        "counter",
        "Join tickets issued.",
        sc.tickets.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_join_queued_total",
        "counter",
        "Join answers that gave a place in line.",
        sc.queued.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_join_queue_moved_total",
        "counter",
        "Callers who brought a place in another node's line and were placed by the wait left.",
        sc.queue_moved.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_challenges_issued_total",
        "counter",
        "Proof-of-work challenges handed out.",
        sc.challenges.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_bans_total",
        "counter",
        "Automatic bans imposed.",
        sc.bans.load(Relaxed),
    );
    let nft = hub.shield.nft().map(|m| m.counters());
    let nft_count = |f: fn(&crate::shield::nft::NftCounters) -> &AtomicU64| {
        nft.map_or(0, |c| f(c).load(Relaxed))
    };
    scalar(
        &mut out,
        "levee_nft_updates_total",
        "counter",
        "Ban and allowlist updates the nftables worker took from its queue (--nft-table).",
        nft_count(|c| &c.updates),
    );
    scalar(
        &mut out,
        "levee_nft_dropped_updates_total",
        "counter",
        "Updates for the nftables sets dropped on a full queue (a full resync follows).",
        nft_count(|c| &c.dropped),
    );
    scalar(
        &mut out,
        "levee_nft_errors_total",
        "counter",
        "Failed nft runs (logged with nft's message).",
        nft_count(|c| &c.errors),
    );
    if let Some(c) = hub.cluster.get() {
        let k = c.counters();
        for (name, help, v) in [
            (
                "levee_cluster_sent_packets_total",
                "Packets this node published to the bus as a space's origin.",
                &k.sent,
            ),
            (
                "levee_cluster_heard_packets_total",
                "Packets from the bus given to this node's listeners.",
                &k.heard,
            ),
            (
                "levee_cluster_malformed_total",
                "Bus messages refused as malformed, oversized or of another version.",
                &k.malformed,
            ),
            (
                "levee_cluster_foreign_total",
                "Bus messages dropped as not from the space's origin.",
                &k.foreign,
            ),
            (
                "levee_cluster_out_of_order_total",
                "Bus packets dropped as older than what was heard.",
                &k.out_of_order,
            ),
            (
                "levee_cluster_tap_lost_total",
                "Packets dropped between a track and the bus (the bus was slower).",
                &k.tap_lost,
            ),
            (
                "levee_cluster_bad_records_total",
                "Registry records refused.",
                &k.bad_records,
            ),
            (
                "levee_cluster_load_dropped_total",
                "Other nodes' listener counts left out: the table of them is full.",
                &k.load_dropped,
            ),
            (
                "levee_cluster_audience_dropped_total",
                "Other nodes' audience reports left out: the bytes held of them are at their bound.",
                &k.audience_dropped,
            ),
            (
                "levee_cluster_registry_errors_total",
                "Registry writes and look-ups that failed.",
                &k.registry_errors,
            ),
            (
                "levee_cluster_registry_lookups_total",
                "Registry look-ups of spaces this node did not hold yet.",
                &k.lookups,
            ),
            (
                "levee_cluster_registry_lookups_refused_total",
                "Registry look-ups not made: the most allowed at once were in flight.",
                &k.lookups_refused,
            ),
        ] {
            scalar(&mut out, name, "counter", help, v.load(Relaxed));
        }
        scalar(
            &mut out,
            "levee_cluster_feeds",
            "gauge",
            "Spaces this node hears from the bus now.",
            c.feeds() as u64,
        );
    }
    scalar(
        &mut out,
        "levee_node_challenge_difficulty",
        "gauge",
        "Node-wide proof-of-work difficulty in force (0 = none).",
        hub.shield.node_difficulty() as u64,
    );
    let _ = writeln!(out, "# HELP levee_challenge_difficulty Proof-of-work difficulty a space's escalation asks for.\n# TYPE levee_challenge_difficulty gauge");
    for sp in &spaces {
        let _ = writeln!(
            out,
            "levee_challenge_difficulty{{space=\"{}\"}} {}",
            sp.snapshot().id,
            sp.shield.difficulty.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP levee_queue_waiting Callers in a space's line.\n# TYPE levee_queue_waiting gauge"
    );
    for sp in &spaces {
        let _ = writeln!(
            out,
            "levee_queue_waiting{{space=\"{}\"}} {}",
            sp.snapshot().id,
            sp.shield.line.lock().expect("line lock").waiting()
        );
    }
    type Scalar = fn(&SpaceCounters) -> &AtomicU64;
    let per_space: [(&str, &str, Scalar); 3] = [
        (
            "levee_ingest_packets_total",
            "Opus packets accepted from sources.",
            |c| &c.ingest_packets,
        ),
        (
            "levee_space_ingest_errors_total",
            "Sources of this space refused or dropped for bad input.",
            |c| &c.ingest_errors,
        ),
        ("levee_sources_total", "Sources that connected.", |c| {
            &c.sources
        }),
    ];
    for (name, help, field) in per_space {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &spaces {
            let _ = writeln!(
                out,
                "{name}{{space=\"{}\"}} {}",
                s.snapshot().id,
                field(&s.counters).load(Relaxed)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shield::{Refusal, Wire};

    /// The value of `series` in `text`, which must hold it exactly once.
    fn value(text: &str, series: &str) -> u64 {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
            .collect();
        assert_eq!(lines.len(), 1, "{series} in:\n{text}");
        lines[0].rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn every_refusal_reason_has_its_series_and_counts_under_its_own_label() {
        let hub = Hub::new(crate::config::Config::default());
        // Count each reason a different number of times (its index + 1), through the one path
        // every refusal takes.
        for r in ShieldReason::ALL {
            for _ in 0..=r.index() {
                Refusal::new(r, Wire::Http(403), "").count(&hub.shield.counters, &hub.node);
            }
        }
        for r in IngestReason::ALL {
            for _ in 0..=r.index() {
                Refusal::new(r, Wire::Close(1008), "").count(&hub.shield.counters, &hub.node);
            }
        }
        let text = render(&hub);
        for r in ShieldReason::ALL {
            let series = format!("levee_shield_refused_total{{reason=\"{}\"}}", r.label());
            assert_eq!(value(&text, &series), r.index() as u64 + 1, "{r:?}");
        }
        for r in IngestReason::ALL {
            let series = format!("levee_ingest_errors_total{{reason=\"{}\"}}", r.label());
            assert_eq!(value(&text, &series), r.index() as u64 + 1, "{r:?}");
        }
        // No other label appears in either metric.
        for (metric, n) in [
            ("levee_shield_refused_total{", ShieldReason::COUNT),
            ("levee_ingest_errors_total{", IngestReason::COUNT),
        ] {
            assert_eq!(text.lines().filter(|l| l.starts_with(metric)).count(), n);
        }
    }
}
