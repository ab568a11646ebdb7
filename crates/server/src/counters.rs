//! The node's and each space's counters: plain atomics, updated on the hot paths and rendered
//! by `api::metrics`. A leaf module.

use levee_core::refusal::IngestReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Per-space counters of its sources (the fan-out's own are in `fanout::TrackCounters`).
#[derive(Debug, Default)]
pub struct SpaceCounters {
    /// Opus packets accepted from sources.
    pub ingest_packets: AtomicU64,
    /// Sources refused or dropped for bad input.
    pub ingest_errors: AtomicU64,
    /// Sources connected.
    pub sources: AtomicU64,
}

/// Node-wide counters.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Connections closed at once because the node was at `max_connections`.
    pub refused_capacity: AtomicU64,
    /// Requests refused for a bad or slow request head.
    pub bad_requests: AtomicU64,
    /// Ingest errors by reason (`levee_ingest_errors_total{reason}`).
    pub ingest_errors: IngestErrorCounters,
    /// HLS requests answered, by kind (`levee_hls_requests_total{kind}`).
    pub hls: HlsCounters,
    /// HLS listener sessions held now (`crate::audience`, at most
    /// [`crate::audience::MAX_HLS_SESSIONS`]).
    pub hls_sessions: AtomicU64,
    /// HLS requests of sessions not counted: the node held its most sessions.
    pub hls_untracked: AtomicU64,
}

/// HLS requests this node answered, by kind: what reaches the origin behind a cache.
#[derive(Debug, Default)]
pub struct HlsCounters {
    /// Playlists without blocking.
    pub playlist: AtomicU64,
    /// Blocking playlist reloads (`_HLS_msn`).
    pub blocking: AtomicU64,
    /// Parts.
    pub part: AtomicU64,
    /// Whole segments.
    pub segment: AtomicU64,
    /// Init segments.
    pub init: AtomicU64,
}

/// One counter per ingest refusal reason, indexed by the reason (no string lookup).
#[derive(Debug, Default)]
pub struct IngestErrorCounters([AtomicU64; IngestReason::COUNT]);

impl IngestErrorCounters {
    /// Errors counted for `reason`.
    pub fn get(&self, reason: IngestReason) -> u64 {
        self.0[reason.index()].load(Relaxed)
    }

    /// Counts one error for `reason`.
    pub fn inc(&self, reason: IngestReason) {
        self.0[reason.index()].fetch_add(1, Relaxed);
    }
}

/// What the cluster layer counted.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Packets published to the bus.
    pub sent: AtomicU64,
    /// Packets from the bus given to listeners.
    pub heard: AtomicU64,
    /// Bus messages refused: malformed, oversized or of another version.
    pub malformed: AtomicU64,
    /// Bus messages from a node that is not the space's origin (or from this node).
    pub foreign: AtomicU64,
    /// Bus packets older than what was already heard (duplicates, reordering).
    pub out_of_order: AtomicU64,
    /// Packets the bus tap dropped (the bus was slower than the source).
    pub tap_lost: AtomicU64,
    /// Listener counts from other nodes' reports left out: the table held
    /// `cluster::MAX_REMOTE_ENTRIES` already.
    pub load_dropped: AtomicU64,
    /// Other nodes' audience reports left out: the bytes held of them reached the bound.
    pub audience_dropped: AtomicU64,
    /// Registry records refused.
    pub bad_records: AtomicU64,
    /// Registry writes and look-ups that failed.
    pub registry_errors: AtomicU64,
    /// Registry look-ups of spaces this node did not hold yet.
    pub lookups: AtomicU64,
    /// Look-ups not made: `cluster::MAX_REGISTRY_LOOKUPS` were in flight.
    pub lookups_refused: AtomicU64,
}

/// What the recorder counted.
#[derive(Debug, Default)]
pub struct RecordCounters {
    /// Segments written.
    pub segments: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Segments not written: the recordings' byte bound was reached.
    pub refused_quota: AtomicU64,
    /// Disk errors (each stops one space's recording).
    pub errors: AtomicU64,
    /// Torn or damaged tails cut off at start.
    pub torn_cut: AtomicU64,
    /// Packets the recorder's tap lost (it fell behind).
    pub lost_packets: AtomicU64,
    /// Recordings deleted for their age.
    pub expired: AtomicU64,
}
