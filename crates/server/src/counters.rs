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
