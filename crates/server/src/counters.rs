//! The node's and each space's counters: plain atomics, updated on the hot paths and rendered
//! by `api::metrics`. A leaf module.

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
    /// Ingest errors by kind: not_ogg, bad_crc, too_large, bad_ogg, wrong_codec, bad_opus,
    /// bad_structure, bad_key, bad_frame, idle.
    pub ingest_errors: IngestErrorCounters,
}

/// Labels of [`IngestErrorCounters`].
pub const INGEST_ERROR_KINDS: [&str; 10] = [
    "not_ogg",
    "bad_crc",
    "too_large",
    "bad_ogg",
    "wrong_codec",
    "bad_opus",
    "bad_structure",
    "bad_key",
    "bad_frame",
    "idle",
];

/// One counter per ingest error kind.
#[derive(Debug, Default)]
pub struct IngestErrorCounters([AtomicU64; INGEST_ERROR_KINDS.len()]);

impl IngestErrorCounters {
    /// Errors of the kind at `i` in [`INGEST_ERROR_KINDS`].
    pub fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }

    /// Counts one error of `kind` (one of [`INGEST_ERROR_KINDS`]).
    pub fn inc(&self, kind: &str) {
        let i = INGEST_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(INGEST_ERROR_KINDS.len() - 1);
        self.0[i].fetch_add(1, Relaxed);
    }
}
