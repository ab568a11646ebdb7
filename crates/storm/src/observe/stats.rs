//! Pooled figures: what every listener got, added up across listeners and processes.
//!
//! Contract: an [`Aggregate`] takes one [`SessionRecord`] per connection attempt and one call to
//! [`Aggregate::record_slot`] per simulated listener; [`Aggregate::merge`] adds another
//! aggregate exactly (counts add, histograms merge), so the figures of N processes merged are
//! those of one process that ran every listener. A [`Point`] is the same for one second of the
//! run (the timeline); points of the same second merge the same way. Everything is serde, to
//! travel from agents to the parent as JSON.

use crate::observe::hist::Hist;
use crate::observe::measure::Failure;
use crate::observe::measure::JoinTiming;
use crate::observe::measure::ListenerSummary;
use crate::plan::scenario::Format;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one connection attempt went.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Delivery format.
    pub format: Format,
    /// Join timings.
    pub join: JoinTiming,
    /// Why the join failed (`None`: the listener got audio).
    pub join_failure: Option<Failure>,
    /// Why a joined session ended before its planned end (`None`: planned end).
    pub drop: Option<Failure>,
    /// What the listener got (joined sessions only).
    pub summary: ListenerSummary,
    /// Bytes received after the HTTP answer (WebSocket close frames excluded).
    pub bytes: u64,
    /// Ogg pages received after the two header pages (Ogg), or HLS parts received.
    pub pages: u64,
    /// HTTP requests made beyond the one that opened the session (HLS: playlist reloads and
    /// part fetches; 0 for streams).
    pub requests: u64,
    /// The listener measured timing on every frame (see `MeterConfig::timed_every`).
    pub timed: bool,
    /// From its first audio to its end, µs (0 without audio); what the server counts as the
    /// session's listen time.
    pub listened_us: u64,
}

/// What the run's listeners did, as the server's audience numbers count it
/// (`docs/audience.md`): each listener an identity of its own (its source address), each of
/// its connections (an HLS listener: its run of requests) a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceTally {
    /// Listeners with a session that got audio (distinct identities).
    pub identities: u64,
    /// Listeners whose longest session lasted the server's view rule plus
    /// [`VIEW_MARGIN_US`]: the server must count each as a view.
    pub viewers_sure: u64,
    /// Listeners whose longest session lasted the view rule less [`VIEW_MARGIN_US`]: the
    /// server may count each as a view, at most.
    pub viewers_maybe: u64,
    /// Stream sessions that got audio.
    pub sessions: u64,
    /// Their listen time, µs.
    pub listen_us: u64,
}

/// How far a session's length may be from the view rule before the server's verdict on it
/// is certain: the listener's and the server's clocks for the session differ by its join's
/// exchange and the server's chunk (500 ms at most).
pub const VIEW_MARGIN_US: u64 = 1_000_000;

impl AudienceTally {
    /// A listener of stream sessions retired: `longest_us` was its longest session with
    /// audio; `view_after_us` the server's view rule, when known.
    pub fn record_listener(&mut self, longest_us: u64, view_after_us: Option<u64>) {
        self.identities += 1;
        if let Some(v) = view_after_us {
            self.viewers_sure += (longest_us >= v + VIEW_MARGIN_US) as u64;
            self.viewers_maybe += (longest_us + VIEW_MARGIN_US >= v) as u64;
        }
    }

    fn merge(&mut self, o: &AudienceTally) {
        self.identities += o.identities;
        self.viewers_sure += o.viewers_sure;
        self.viewers_maybe += o.viewers_maybe;
        self.sessions += o.sessions;
        self.listen_us += o.listen_us;
    }
}

/// Per-format counts, to hold against the server's own counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FormatCounts {
    /// Sessions that joined.
    pub joined: u64,
    /// Bytes received after the HTTP answer (WebSocket close frames excluded).
    pub bytes: u64,
    /// Audio frames received.
    pub frames: u64,
    /// Ogg audio pages received (0 for WebSocket), or HLS parts.
    pub pages: u64,
    /// HTTP requests made (HLS: every playlist and part; 0 for streams, one request each).
    #[serde(default)]
    pub requests: u64,
}

/// Figures added up over listeners. See the module docs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Simulated listeners that ran.
    pub listeners: u64,
    /// Listeners that got audio at least once.
    pub listeners_joined: u64,
    /// Listeners that never got audio.
    pub listeners_failed: u64,
    /// Connection attempts.
    pub sessions: u64,
    /// Attempts that got audio.
    pub sessions_joined: u64,
    /// Attempts that failed before audio.
    pub sessions_failed: u64,
    /// Joined sessions that ended before their planned end.
    pub sessions_dropped: u64,
    /// Failed attempts by reason.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Dropped sessions by reason.
    pub drop_reasons: BTreeMap<String, u64>,
    /// Failures caused by the generator's own limits (addresses, ports, descriptors).
    pub local_failures: u64,
    /// Audio frames received.
    pub frames: u64,
    /// Audio received, µs.
    pub audio_us: u64,
    /// Duplicate or reordered frames.
    pub late_frames: u64,
    /// Gaps.
    pub gaps: u64,
    /// Missing audio, µs.
    pub gap_us: u64,
    /// Stalls.
    pub stalls: u64,
    /// Time in stalls, µs.
    pub stall_us: u64,
    /// Playout underruns.
    pub underruns: u64,
    /// Time the simulated players waited, µs.
    pub underrun_us: u64,
    /// Joined sessions with at least one stall.
    pub sessions_with_stall: u64,
    /// Joined sessions with at least one gap.
    pub sessions_with_gap: u64,
    /// Joined sessions with at least one underrun (timed sessions only).
    pub sessions_with_underrun: u64,
    /// Joined sessions that measured timing (latency, jitter, underruns) on every frame.
    #[serde(default)]
    pub sessions_timed: u64,
    /// Audio frames received by timed sessions (each one has an end-to-end latency when its
    /// capture time is known).
    #[serde(default)]
    pub frames_timed: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Counts per format.
    pub by_format: BTreeMap<Format, FormatCounts>,
    /// Scheduled → connection started by the generator (its own lateness), µs.
    pub start_lag: Hist,
    /// Scheduled → TCP connected, µs.
    pub connect: Hist,
    /// Scheduled → HTTP answer, µs.
    pub response: Hist,
    /// Scheduled → first audio frame, µs.
    pub ttfa: Hist,
    /// End-to-end latency of every frame, µs.
    pub e2e: Hist,
    /// Each joined session's longest gap (0 when none), µs.
    pub worst_gap: Hist,
    /// Each joined session's longest stall (0 when none), µs.
    pub worst_stall: Hist,
    /// Each timed joined session's interarrival jitter, µs.
    pub jitter: Hist,
    /// Each timed joined session's total underrun time, µs.
    pub underrun_time: Hist,
    /// Churn: from leaving in a wave to audio again (backoff and retries included), µs.
    pub rejoin: Hist,
    /// Join attempts that retried a failed one.
    pub retries: u64,
    /// Joins through the join API (`join = "api"`).
    #[serde(default)]
    pub join_api: crate::observe::join::JoinStats,
    /// What the stream listeners did, as audience numbers count it.
    #[serde(default)]
    pub audience: AudienceTally,
}

impl Aggregate {
    /// Adds one connection attempt (the frame-level latency goes through
    /// [`Aggregate::e2e`] as frames arrive, not here).
    pub fn record_session(&mut self, r: &SessionRecord) {
        self.sessions += 1;
        self.bytes += r.bytes;
        if let Some(t) = r.join.start_lag_us() {
            self.start_lag.record(t);
        }
        if let Some(t) = r.join.connect_us() {
            self.connect.record(t);
        }
        if let Some(t) = r.join.response_wait_us() {
            self.response.record(t);
        }
        let fc = self.by_format.entry(r.format).or_default();
        fc.bytes += r.bytes;
        fc.pages += r.pages;
        fc.requests += r.requests;
        fc.frames += r.summary.frames;
        if let Some(f) = &r.join_failure {
            self.sessions_failed += 1;
            *self.failure_reasons.entry(f.label()).or_default() += 1;
            if f.is_local() {
                self.local_failures += 1;
            }
            return;
        }
        fc.joined += 1;
        self.sessions_joined += 1;
        if let Some(t) = r.join.ttfa_us() {
            self.ttfa.record(t);
        }
        if let Some(d) = &r.drop {
            self.sessions_dropped += 1;
            *self.drop_reasons.entry(d.label()).or_default() += 1;
            if d.is_local() {
                self.local_failures += 1;
            }
        }
        let s = &r.summary;
        self.frames += s.frames;
        self.audio_us += s.audio_us;
        self.late_frames += s.late_frames;
        self.gaps += s.gaps;
        self.gap_us += s.gap_us;
        self.stalls += s.stalls;
        self.stall_us += s.stall_us;
        self.underruns += s.underruns;
        self.underrun_us += s.underrun_us;
        self.sessions_with_stall += (s.stalls > 0) as u64;
        self.sessions_with_gap += (s.gaps > 0) as u64;
        self.worst_gap.record(s.worst_gap_us);
        self.worst_stall.record(s.worst_stall_us);
        if r.timed {
            self.sessions_timed += 1;
            self.frames_timed += s.frames;
            self.sessions_with_underrun += (s.underruns > 0) as u64;
            self.jitter.record(s.jitter_us);
            self.underrun_time.record(s.underrun_us);
        }
    }

    /// Adds one simulated listener, once all its sessions are over.
    pub fn record_slot(&mut self, ever_joined: bool) {
        self.listeners += 1;
        if ever_joined {
            self.listeners_joined += 1;
        } else {
            self.listeners_failed += 1;
        }
    }

    /// Adds everything `o` counted.
    pub fn merge(&mut self, o: &Aggregate) {
        self.audience.merge(&o.audience);
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            listeners,
            listeners_joined,
            listeners_failed,
            sessions,
            sessions_joined,
            sessions_failed,
            sessions_dropped,
            local_failures,
            frames,
            audio_us,
            late_frames,
            gaps,
            gap_us,
            stalls,
            stall_us,
            underruns,
            underrun_us,
            sessions_with_stall,
            sessions_with_gap,
            sessions_with_underrun,
            sessions_timed,
            frames_timed,
            bytes
        );
        for (k, v) in &o.failure_reasons {
            *self.failure_reasons.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.drop_reasons {
            *self.drop_reasons.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.by_format {
            let e = self.by_format.entry(*k).or_default();
            e.joined += v.joined;
            e.bytes += v.bytes;
            e.frames += v.frames;
            e.pages += v.pages;
            e.requests += v.requests;
        }
        self.start_lag.merge(&o.start_lag);
        self.connect.merge(&o.connect);
        self.response.merge(&o.response);
        self.ttfa.merge(&o.ttfa);
        self.e2e.merge(&o.e2e);
        self.worst_gap.merge(&o.worst_gap);
        self.worst_stall.merge(&o.worst_stall);
        self.jitter.merge(&o.jitter);
        self.underrun_time.merge(&o.underrun_time);
        self.rejoin.merge(&o.rejoin);
        self.join_api.merge(&o.join_api);
    }

    /// Audio received over audio that should have been: frames / (frames + missing frames),
    /// with missing audio counted in 20 ms frames. 1.0 when nothing was expected.
    pub fn delivered_ratio(&self) -> f64 {
        let expected = self.audio_us + self.gap_us;
        if expected == 0 {
            1.0
        } else {
            self.audio_us as f64 / expected as f64
        }
    }

    /// Percent of joined sessions with at least one stall.
    pub fn stall_pct(&self) -> f64 {
        pct(self.sessions_with_stall, self.sessions_joined)
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One second of the run, added up over listeners. See the module docs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the run's start (the point covers [t, t+1)).
    pub t: u32,
    /// Listeners connected at the end of the second.
    pub connected: u64,
    /// Joins completed (first audio) in the second.
    pub joins: u64,
    /// Join attempts that failed in the second.
    pub failures: u64,
    /// Joined sessions lost in the second.
    pub drops: u64,
    /// Audio frames received.
    pub frames: u64,
    /// Audio received, µs.
    pub audio_us: u64,
    /// Gaps that ended in the second.
    pub gaps: u64,
    /// Missing audio of those gaps, µs.
    pub gap_us: u64,
    /// Stalls that ended in the second.
    pub stalls: u64,
    /// Underruns in the second.
    pub underruns: u64,
    /// End-to-end latency of the frames received in the second, µs.
    pub latency: Hist,
    /// Time to first audio of the joins completed in the second, µs.
    pub ttfa: Hist,
}

impl Point {
    /// An empty point with coarse histograms.
    pub fn new(t: u32) -> Self {
        Point {
            t,
            latency: Hist::coarse(),
            ttfa: Hist::coarse(),
            ..Point::default()
        }
    }

    /// Adds the counts of `o` (same second, another process or shard).
    pub fn merge(&mut self, o: &Point) {
        self.connected += o.connected;
        self.joins += o.joins;
        self.failures += o.failures;
        self.drops += o.drops;
        self.frames += o.frames;
        self.audio_us += o.audio_us;
        self.gaps += o.gaps;
        self.gap_us += o.gap_us;
        self.stalls += o.stalls;
        self.underruns += o.underruns;
        self.latency.merge(&o.latency);
        self.ttfa.merge(&o.ttfa);
    }
}

/// Merges points into `timeline`, keyed by second (kept sorted, bounded by `max_points`).
pub fn merge_points(timeline: &mut Vec<Point>, points: &[Point], max_points: usize) {
    for p in points {
        match timeline.binary_search_by_key(&p.t, |q| q.t) {
            Ok(i) => timeline[i].merge(p),
            Err(i) if timeline.len() < max_points => timeline.insert(i, p.clone()),
            Err(_) => {}
        }
    }
}

/// What the host did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets dropped on purpose (the injected pause).
    pub packets_dropped: u64,
    /// Bitrate imitated, bit/s.
    pub bitrate: u32,
    /// Largest delay between a packet's scheduled and actual send, ms.
    pub max_send_lag_ms: f64,
    /// The injected pause: (start, length) in ms after the run's start.
    pub pause_ms: Option<(u64, u64)>,
    /// Why the host stopped early, if it did.
    pub error: Option<String>,
}

impl HostStats {
    /// Nothing sent yet by a host publishing as `cfg` says.
    pub fn new(cfg: &crate::plan::scenario::HostConfig) -> Self {
        HostStats {
            bitrate: cfg.bitrate,
            pause_ms: cfg
                .pause_at
                .map(|a| (a.as_millis() as u64, cfg.pause_for.as_millis() as u64)),
            ..HostStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(format: Format, ttfa_ms: u64, s: ListenerSummary) -> SessionRecord {
        SessionRecord {
            format,
            join: JoinTiming {
                scheduled_us: 0,
                started_us: Some(0),
                connected_us: Some(1_000),
                response_us: Some(2_000),
                first_audio_us: Some(ttfa_ms * 1000),
            },
            join_failure: None,
            drop: None,
            summary: s,
            bytes: 100,
            pages: 0,
            requests: 0,
            timed: true,
            listened_us: 0,
        }
    }

    #[test]
    fn delivered_ratio_and_stall_share_count_every_listener() {
        let mut a = Aggregate::default();
        let clean = ListenerSummary {
            frames: 500,
            audio_us: 10_000_000,
            ..Default::default()
        };
        let starved = ListenerSummary {
            frames: 450,
            audio_us: 9_000_000,
            gaps: 1,
            gap_us: 1_000_000,
            worst_gap_us: 1_000_000,
            stalls: 1,
            worst_stall_us: 1_020_000,
            ..Default::default()
        };
        for _ in 0..99 {
            a.record_session(&joined(Format::Ws, 30, clean));
            a.record_slot(true);
        }
        a.record_session(&joined(Format::Ogg, 30, starved));
        a.record_slot(true);
        assert_eq!(a.sessions_joined, 100);
        assert!((a.stall_pct() - 1.0).abs() < 1e-9);
        let want = (99.0 * 10.0 + 9.0) / (99.0 * 10.0 + 10.0);
        assert!((a.delivered_ratio() - want).abs() < 1e-12);
        // The one starving listener is the p99 of worst gaps... and the p100.
        assert_eq!(a.worst_gap.quantile(0.99), 1);
        assert!(a.worst_gap.quantile(1.0) >= 1_000_000);
        assert_eq!(a.by_format[&Format::Ogg].joined, 1);
    }

    #[test]
    fn failures_are_counted_by_reason_and_blame() {
        let mut a = Aggregate::default();
        let mut r = joined(Format::Ws, 0, ListenerSummary::default());
        r.join_failure = Some(Failure::Http(503));
        a.record_session(&r);
        r.join_failure = Some(Failure::LocalFds);
        a.record_session(&r);
        a.record_slot(false);
        assert_eq!(a.sessions_failed, 2);
        assert_eq!(a.failure_reasons["http_503"], 1);
        assert_eq!(a.local_failures, 1);
        assert_eq!(a.listeners_failed, 1);
        assert_eq!(a.ttfa.count(), 0);
    }

    #[test]
    fn aggregates_merged_across_processes_equal_one_process() {
        let sessions: Vec<SessionRecord> = (0..200)
            .map(|i| {
                joined(
                    if i % 3 == 0 { Format::Ogg } else { Format::Ws },
                    10 + i,
                    ListenerSummary {
                        frames: i,
                        audio_us: i * 20_000,
                        gaps: i % 7,
                        gap_us: (i % 7) * 20_000,
                        worst_gap_us: (i % 7) * 20_000,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut one = Aggregate::default();
        let mut parts = [
            Aggregate::default(),
            Aggregate::default(),
            Aggregate::default(),
        ];
        for (i, s) in sessions.iter().enumerate() {
            one.record_session(s);
            one.e2e.record(1000 + i as u64 * 37);
            parts[i % 3].record_session(s);
            parts[i % 3].e2e.record(1000 + i as u64 * 37);
        }
        // Through JSON, as agents send them.
        let mut merged = Aggregate::default();
        for p in &parts {
            let back: Aggregate = serde_json::from_str(&serde_json::to_string(p).unwrap()).unwrap();
            merged.merge(&back);
        }
        assert_eq!(merged.sessions_joined, one.sessions_joined);
        assert_eq!(merged.gap_us, one.gap_us);
        assert_eq!(merged.by_format, one.by_format);
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(merged.ttfa.quantile(q), one.ttfa.quantile(q));
            assert_eq!(merged.e2e.quantile(q), one.e2e.quantile(q));
            assert_eq!(merged.worst_gap.quantile(q), one.worst_gap.quantile(q));
        }
    }

    #[test]
    fn timeline_points_merge_by_second() {
        let mut tl = Vec::new();
        let mut a = Point::new(1);
        a.frames = 10;
        a.latency.record(5_000);
        let mut b = Point::new(1);
        b.frames = 5;
        let c = Point::new(0);
        merge_points(&mut tl, &[a, c], 10);
        merge_points(&mut tl, &[b], 10);
        assert_eq!(tl.iter().map(|p| p.t).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(tl[1].frames, 15);
        assert_eq!(tl[1].latency.count(), 1);
        merge_points(&mut tl, &[Point::new(7)], 2);
        assert_eq!(tl.len(), 2);
    }
}
