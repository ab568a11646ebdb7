//! Counters and their Prometheus text exposition (`GET /metrics`).
//!
//! Counters are plain atomics updated on the hot path (one relaxed add per write); the text is
//! rendered on request. Space ids appear as labels only for the `Config::metrics_spaces` most
//! listened spaces; every other space is summed into `space="_other"`, so a family has at most
//! `metrics_spaces + 1` space labels however many spaces the node holds, and a sum over the
//! label is the node's total. Per-space detail of every space is in the API
//! (`/api/spaces/{id}/audience`) and the dashboard.

use crate::counters::SpaceCounters;
use crate::fanout::{TrackCounters, FORMATS};
use crate::hub::{Hub, Space};
use crate::shield::{IngestReason, ShieldReason};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Renders every counter in Prometheus text format 0.0.4.
pub fn render(hub: &Hub) -> String {
    let mut out = String::with_capacity(4096);
    let spaces = hub.list();
    let labelled = Labelled::new(&spaces, hub.config.metrics_spaces);
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
    let stages: Vec<&crate::stage::Stage> = spaces.iter().map(|s| &*s.stage).collect();
    scalar(
        &mut out,
        "levee_stage_mixing",
        "gauge",
        "Spaces whose stage mixer runs (a speaker is connected).",
        stages.iter().filter(|s| s.mixing()).count() as u64,
    );
    scalar(
        &mut out,
        "levee_stage_inputs",
        "gauge",
        "Host and speaker inputs connected to stage mixers.",
        stages
            .iter()
            .map(|s| s.on_stage().count_ones() as u64)
            .sum(),
    );
    for (name, help, get) in [
        (
            "levee_stage_frames_total",
            "Programme frames (20 ms) mixed and encoded.",
            (|c: &crate::stage::StageCounters| &c.frames)
                as fn(&crate::stage::StageCounters) -> &std::sync::atomic::AtomicU64,
        ),
        (
            "levee_stage_minus_encodes_total",
            "Mix-minus frames encoded for speaking speakers.",
            |c| &c.minus_encodes,
        ),
        (
            "levee_stage_returns_dropped_total",
            "Return packets lost because a speaker did not read them.",
            |c| &c.returns_dropped,
        ),
        (
            "levee_stage_decode_errors_total",
            "Speaker packets that did not decode.",
            |c| &c.decode_errors,
        ),
        (
            "levee_stage_starts_total",
            "Times a stage mixer started (a first speaker connected).",
            |c| &c.starts,
        ),
        (
            "levee_stage_skipped_frames_total",
            "Mixer frames skipped after a stall.",
            |c| &c.skipped,
        ),
    ] {
        let v: u64 = stages.iter().map(|s| get(&s.counters).load(Relaxed)).sum();
        scalar(&mut out, name, "counter", help, v);
    }
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
        for f in FORMATS {
            labelled.each(
                |s| field(&s.track.counters)[f.idx()].load(Relaxed),
                |id, v| {
                    let _ = writeln!(out, "{name}{{space=\"{id}\",format=\"{}\"}} {v}", f.label());
                },
            );
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
    // The largest difficulty among the spaces summed under `_other`.
    labelled.each_max(
        |sp| sp.shield.difficulty.load(Relaxed) as u64,
        |id, v| {
            let _ = writeln!(out, "levee_challenge_difficulty{{space=\"{id}\"}} {v}");
        },
    );
    let _ = writeln!(
        out,
        "# HELP levee_queue_waiting Callers in a space's line.\n# TYPE levee_queue_waiting gauge"
    );
    labelled.each(
        |sp| sp.shield.line.lock().expect("line lock").waiting(),
        |id, v| {
            let _ = writeln!(out, "levee_queue_waiting{{space=\"{id}\"}} {v}");
        },
    );
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
        labelled.each(
            |s| field(&s.counters).load(Relaxed),
            |id, v| {
                let _ = writeln!(out, "{name}{{space=\"{id}\"}} {v}");
            },
        );
    }
    audience(&mut out, &spaces);
    scalar(
        &mut out,
        "levee_audience_hls_sessions",
        "gauge",
        "HLS listener sessions held now.",
        node.hls_sessions.load(Relaxed),
    );
    scalar(
        &mut out,
        "levee_audience_hls_untracked_total",
        "counter",
        "HLS requests of sessions not counted: the node held its most HLS sessions.",
        node.hls_untracked.load(Relaxed),
    );
    out
}

/// The node's audience sums (`docs/audience.md`), without a space label.
fn audience(out: &mut String, spaces: &[Arc<Space>]) {
    let now = crate::clock::wall_us();
    let mut sum = [0u64; 5];
    let mut listen_s = 0.0;
    for s in spaces {
        let f = s.audience.figures(now);
        for (a, v) in sum.iter_mut().zip([
            f.sessions,
            f.view_sessions,
            f.filtered_sessions,
            f.refused_automated,
            f.attempts,
        ]) {
            *a += v;
        }
        listen_s += f.listen_time_s;
    }
    for (i, (name, help)) in [
        (
            "levee_audience_sessions_total",
            "Listener sessions started.",
        ),
        (
            "levee_audience_view_sessions_total",
            "Sessions that took --view-after of audio.",
        ),
        (
            "levee_audience_filtered_sessions_total",
            "Sessions left out of the numbers as automated (never read, banned).",
        ),
        (
            "levee_audience_refused_automated_total",
            "Join attempts refused as automated (failed proof of work or ticket).",
        ),
        (
            "levee_audience_join_attempts_total",
            "Join attempts (join requests and ticketless stream requests).",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            sum[i]
        );
    }
    let _ = writeln!(
        out,
        "# HELP levee_audience_listen_seconds_total Listen time of the sessions that counted, s.\n# TYPE levee_audience_listen_seconds_total counter\nlevee_audience_listen_seconds_total {listen_s:.1}"
    );
}

/// The spaces that get a label of their own (the `limit` most listened) and the rest.
struct Labelled<'a> {
    own: Vec<(&'a Arc<Space>, String)>,
    other: Vec<&'a Arc<Space>>,
}

/// The label the spaces without one of their own are summed under.
pub const OTHER_SPACES: &str = "_other";

impl<'a> Labelled<'a> {
    fn new(spaces: &'a [Arc<Space>], limit: usize) -> Labelled<'a> {
        let mut ranked: Vec<(u64, &'a Arc<Space>, String)> = spaces
            .iter()
            .map(|s| (s.track.listeners(), s, s.snapshot().id))
            .collect();
        // The most listened first; among equals, by id (a stable choice between scrapes).
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
        let other = ranked.iter().skip(limit).map(|r| r.1).collect();
        ranked.truncate(limit);
        Labelled {
            own: ranked.into_iter().map(|(_, s, id)| (s, id)).collect(),
            other,
        }
    }

    /// `emit(label, value)` for each labelled space, then for `_other` (the sum), if any.
    fn each(&self, value: impl Fn(&Space) -> u64, mut emit: impl FnMut(&str, u64)) {
        for (s, id) in &self.own {
            emit(id, value(s));
        }
        if !self.other.is_empty() {
            emit(OTHER_SPACES, self.other.iter().map(|s| value(s)).sum());
        }
    }

    /// As [`Labelled::each`], with `_other` the largest value rather than the sum (a gauge
    /// such as a difficulty does not add).
    fn each_max(&self, value: impl Fn(&Space) -> u64, mut emit: impl FnMut(&str, u64)) {
        for (s, id) in &self.own {
            emit(id, value(s));
        }
        if !self.other.is_empty() {
            emit(
                OTHER_SPACES,
                self.other.iter().map(|s| value(s)).max().unwrap_or(0),
            );
        }
    }
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
    fn space_labels_are_bounded_and_the_rest_is_summed_under_other() {
        let hub = Hub::new(crate::config::Config {
            metrics_spaces: 5,
            ..crate::config::Config::default()
        });
        for i in 0..30u64 {
            let s = hub
                .create(
                    levee_core::space::NewSpace {
                        title: format!("space {i}"),
                        scheduled_start: None,
                    },
                    crate::shield::Access::Open,
                    None,
                )
                .unwrap();
            // Space i has i listeners' joins and i × 10 ingested packets.
            s.track.counters.joins[0].fetch_add(i, Relaxed);
            s.counters.ingest_packets.fetch_add(i * 10, Relaxed);
        }
        let text = render(&hub);
        for family in ["levee_joins_total{", "levee_ingest_packets_total{"] {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
            let labels: std::collections::HashSet<&str> = lines
                .iter()
                .map(|l| {
                    l.split("space=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                })
                .collect();
            assert_eq!(labels.len(), 6, "{family}: {labels:?}");
            assert!(labels.contains(OTHER_SPACES));
            let sum: u64 = lines
                .iter()
                .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
                .sum();
            let want = if family.starts_with("levee_joins") {
                435
            } else {
                4350
            };
            assert_eq!(sum, want, "{family}: the sum over the label is the node's");
        }
        assert!(text.contains("levee_audience_sessions_total 0"));
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
