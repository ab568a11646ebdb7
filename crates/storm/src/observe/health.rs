//! The generator's view of its own health, per process and merged: CPU, memory (and what each
//! listener adds), sockets, loop lag.

use crate::observe::hist::Hist;
use serde::{Deserialize, Serialize};

/// The generator's view of its own health.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    /// Processes measured.
    pub procs: u32,
    /// Worker threads in all.
    pub threads: u32,
    /// CPU time used (user + system), s.
    pub cpu_s: f64,
    /// Of which the listener threads' (reading and measuring the audience: no synthetic host,
    /// attackers, join-API tasks or bookkeeping), s.
    #[serde(default)]
    pub listen_cpu_s: f64,
    /// Listener threads whose batched reads went through io_uring (the others used epoll).
    #[serde(default)]
    pub io_uring_threads: u32,
    /// Wall time measured, s.
    pub wall_s: f64,
    /// Busiest process's CPU, % of one core.
    pub cpu_core_pct_max: f64,
    /// Busiest process's CPU, % of its worker threads' capacity.
    pub cpu_busy_pct_max: f64,
    /// Resident memory at the start, KiB (summed over processes).
    pub rss_start_kb: u64,
    /// Peak resident memory, KiB (summed over processes).
    pub rss_peak_kb: u64,
    /// Most sockets held at once (summed over processes).
    pub sockets_peak: u64,
    /// Most listeners with audio at once (summed over processes).
    pub listeners_peak: u64,
    /// Resident memory added while the audience grew from a quarter of its peak to its peak,
    /// KiB (summed over processes): what listeners cost, without the fixed start-up memory.
    #[serde(default)]
    pub rss_growth_kb: u64,
    /// Listeners added over the same seconds (summed over processes).
    #[serde(default)]
    pub listeners_growth: u64,
    /// Event-loop lag: how late a 50 ms timer fires, µs.
    pub loop_lag: Hist,
}

impl Health {
    /// Adds another process's health.
    pub fn merge(&mut self, o: &Health) {
        self.procs += o.procs;
        self.threads += o.threads;
        self.cpu_s += o.cpu_s;
        self.listen_cpu_s += o.listen_cpu_s;
        self.io_uring_threads += o.io_uring_threads;
        self.wall_s = self.wall_s.max(o.wall_s);
        self.cpu_core_pct_max = self.cpu_core_pct_max.max(o.cpu_core_pct_max);
        self.cpu_busy_pct_max = self.cpu_busy_pct_max.max(o.cpu_busy_pct_max);
        self.rss_start_kb += o.rss_start_kb;
        self.rss_peak_kb += o.rss_peak_kb;
        self.sockets_peak += o.sockets_peak;
        self.listeners_peak += o.listeners_peak;
        self.rss_growth_kb += o.rss_growth_kb;
        self.listeners_growth += o.listeners_growth;
        self.loop_lag.merge(&o.loop_lag);
    }
}

/// Resident memory against listeners with audio, sampled once a second: from the first
/// sample with a quarter of the planned audience to the sample with the most.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemGrowth {
    from: Option<(u64, u64)>,
    to: Option<(u64, u64)>,
}

impl MemGrowth {
    /// One sample: `connected` listeners of `planned`, `rss_kb` resident.
    pub fn sample(&mut self, connected: u64, planned: u64, rss_kb: u64) {
        if self.from.is_none() && connected > 0 && connected * 4 >= planned {
            self.from = Some((connected, rss_kb));
        }
        if self.from.is_some() && self.to.is_none_or(|(c, _)| connected > c) {
            self.to = Some((connected, rss_kb));
        }
    }

    /// (KiB added, listeners added) between the two samples.
    pub fn growth(&self) -> (u64, u64) {
        match (self.from, self.to) {
            (Some((c0, r0)), Some((c1, r1))) => (r1.saturating_sub(r0), c1 - c0),
            _ => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_listener_is_the_growth_from_a_quarter_of_the_audience_to_its_peak() {
        let mut g = MemGrowth::default();
        // Start-up memory (10 MiB) before anyone listens is not the listeners'.
        g.sample(0, 1000, 10_240);
        g.sample(100, 1000, 30_000);
        g.sample(250, 1000, 30_250);
        g.sample(1000, 1000, 31_000);
        g.sample(900, 1000, 40_000);
        assert_eq!(g.growth(), (750, 750));
        assert_eq!(MemGrowth::default().growth(), (0, 0));
    }

    #[test]
    fn health_of_processes_adds_up() {
        let mut a = Health {
            procs: 1,
            cpu_s: 2.0,
            cpu_core_pct_max: 40.0,
            rss_peak_kb: 1000,
            ..Default::default()
        };
        let b = Health {
            procs: 1,
            cpu_s: 3.0,
            cpu_core_pct_max: 60.0,
            rss_peak_kb: 500,
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(
            (a.procs, a.cpu_s, a.cpu_core_pct_max, a.rss_peak_kb),
            (2, 5.0, 60.0, 1500)
        );
    }
}
