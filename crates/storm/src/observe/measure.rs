//! What one listener got, as pure code: no sockets, no clocks (every time is passed in, µs).
//!
//! Contract: a protocol adapter turns what it received into [`Frame`]s (one per Opus packet,
//! in arrival order) and feeds them to a [`ListenerMeter`]; [`SeqTracker`] (sequence numbers)
//! and [`GranuleTracker`] (Ogg granule positions) tell it how much audio was missing before
//! each frame. The meter derives, for that listener alone:
//!
//! - **gaps**: audio that never arrived (missing sequence numbers × frame duration);
//! - **stalls**: intervals longer than [`MeterConfig::stall_ms`] without any audio, including
//!   one still open when the listener leaves;
//! - **jitter**: the RFC 3550 interarrival jitter of transit times (arrival − capture, or
//!   arrival − media clock when no capture time is known);
//! - **end-to-end latency**: arrival − capture time, per frame;
//! - **underruns** of a simulated playout buffer of [`MeterConfig::playout_ms`]: the player
//!   starts that long after the first frame and plays in media time; a frame that arrives after
//!   its play-out time is an underrun, and the player resumes when it arrives (its clock shifts
//!   by the lateness). Missing audio is played as concealment, so a gap alone is not an underrun.
//!
//! [`ListenerMeter::finish`] closes the meter and returns a [`ListenerSummary`]. Nothing here
//! allocates per frame; a meter is a few hundred bytes.

use crate::plan::scenario::MeterConfig;
use serde::{Deserialize, Serialize};

/// Opus always runs at 48 kHz in Ogg and on levee's wire.
pub const SAMPLE_RATE: u64 = 48_000;

/// Converts 48 kHz samples to µs.
pub fn samples_to_us(samples: u64) -> u64 {
    samples * 1_000_000 / SAMPLE_RATE
}

/// One Opus packet as a listener received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// When it arrived, µs since the Unix epoch.
    pub arrival_us: u64,
    /// Its duration in 48 kHz samples.
    pub samples: u32,
    /// When it was captured, µs since the Unix epoch, if the stream says.
    pub capture_us: Option<u64>,
    /// Audio missing right before it (48 kHz samples), from a [`SeqTracker`] or
    /// [`GranuleTracker`].
    pub missing_samples: u64,
    /// `arrival_us` is when this frame arrived (the listener read it as it came), not only a
    /// bound on it (a batched read): latency, jitter and underruns count exact frames only.
    pub exact: bool,
}

/// What one frame changed, for the caller's pooled figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameEffect {
    /// End-to-end latency of this frame, µs (when its capture time is known).
    pub latency_us: Option<u64>,
    /// A gap that ended at this frame, µs.
    pub gap_us: u64,
    /// A stall that ended at this frame, µs.
    pub stall_us: u64,
    /// How late this frame was for the simulated player, µs (0 when on time).
    pub underrun_us: u64,
}

/// Result of [`SeqTracker::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStep {
    /// The first sequence number seen.
    First,
    /// The next one expected.
    InOrder,
    /// This many sequence numbers were skipped before this one.
    Missing(u64),
    /// Older than expected: a duplicate or reordered frame (not counted as audio).
    Late,
}

/// Follows a stream's sequence numbers. Gaps larger than `u32::MAX` are treated as a restart.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqTracker {
    next: Option<u64>,
}

impl SeqTracker {
    /// Classifies `seq` against the one expected and advances.
    pub fn step(&mut self, seq: u64) -> SeqStep {
        let out = match self.next {
            None => SeqStep::First,
            Some(n) if seq == n => SeqStep::InOrder,
            Some(n) if seq > n && seq - n <= u32::MAX as u64 => SeqStep::Missing(seq - n),
            Some(n) if seq < n => return SeqStep::Late,
            Some(_) => SeqStep::First,
        };
        self.next = Some(seq.wrapping_add(1));
        out
    }
}

/// Follows Ogg granule positions: a page's granule is the end of its audio, so the audio
/// between the previous page's end and this page's start is missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct GranuleTracker {
    last_end: Option<u64>,
}

impl GranuleTracker {
    /// Accounts a page ending at `end_granule` that carried `samples` of audio; returns the
    /// samples missing before it.
    pub fn page(&mut self, end_granule: u64, samples: u64) -> u64 {
        let missing = match self.last_end {
            Some(prev) if end_granule > prev => (end_granule - prev).saturating_sub(samples),
            _ => 0,
        };
        if self.last_end.is_none_or(|p| end_granule > p) {
            self.last_end = Some(end_granule);
        }
        missing
    }
}

/// What one listener got over its whole session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerSummary {
    /// Audio frames received.
    pub frames: u64,
    /// Audio received, µs.
    pub audio_us: u64,
    /// Frames that came late (duplicate or reordered), not counted as audio.
    pub late_frames: u64,
    /// Gaps (runs of missing audio).
    pub gaps: u64,
    /// Missing audio in all, µs.
    pub gap_us: u64,
    /// Longest single gap, µs.
    pub worst_gap_us: u64,
    /// Stalls (no audio for longer than the bound).
    pub stalls: u64,
    /// Time spent in stalls, µs.
    pub stall_us: u64,
    /// Longest stall, µs.
    pub worst_stall_us: u64,
    /// RFC 3550 interarrival jitter at the end of the session, µs.
    pub jitter_us: u64,
    /// Underruns of the simulated playout buffer.
    pub underruns: u64,
    /// Time the simulated player waited for audio, µs.
    pub underrun_us: u64,
    /// Highest end-to-end latency, µs (0 when no capture time was known).
    pub latency_max_us: u64,
    /// Mean end-to-end latency, µs.
    pub latency_mean_us: u64,
}

/// Per-listener measurement state. See the module docs for the contract.
#[derive(Debug, Clone)]
pub struct ListenerMeter {
    cfg: MeterConfig,
    s: ListenerSummary,
    first_arrival_us: Option<u64>,
    last_arrival_us: u64,
    /// Media position of the next frame, samples since the first frame.
    position: u64,
    last_transit: Option<i64>,
    jitter: f64,
    /// Play-out time of media position 0, µs.
    playout_origin_us: u64,
    latency_sum_us: u64,
    latency_n: u64,
}

impl ListenerMeter {
    /// A meter for one listener session.
    pub fn new(cfg: MeterConfig) -> Self {
        ListenerMeter {
            cfg,
            s: ListenerSummary::default(),
            first_arrival_us: None,
            last_arrival_us: 0,
            position: 0,
            last_transit: None,
            jitter: 0.0,
            playout_origin_us: 0,
            latency_sum_us: 0,
            latency_n: 0,
        }
    }

    /// Counts a frame that came late (a duplicate or out of order).
    pub fn on_late(&mut self) {
        self.s.late_frames += 1;
    }

    /// When the first frame arrived, if one did.
    pub fn first_arrival_us(&self) -> Option<u64> {
        self.first_arrival_us
    }

    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.s.frames
    }

    /// Accounts one received frame.
    #[inline]
    pub fn on_frame(&mut self, f: &Frame) -> FrameEffect {
        let mut fx = FrameEffect::default();
        let stall_bound = self.cfg.stall_ms * 1000;
        match self.first_arrival_us {
            None => {
                self.first_arrival_us = Some(f.arrival_us);
                self.playout_origin_us = f.arrival_us + self.cfg.playout_ms * 1000;
            }
            Some(_) => {
                // Missing audio before the first frame is not this listener's loss.
                if f.missing_samples > 0 {
                    let gap = samples_to_us(f.missing_samples);
                    self.s.gaps += 1;
                    self.s.gap_us += gap;
                    self.s.worst_gap_us = self.s.worst_gap_us.max(gap);
                    self.position += f.missing_samples;
                    fx.gap_us = gap;
                }
                let since = f.arrival_us.saturating_sub(self.last_arrival_us);
                if since > stall_bound {
                    self.add_stall(since);
                    fx.stall_us = since;
                }
            }
        }
        let first = self.first_arrival_us.unwrap_or(f.arrival_us);
        let media_us = samples_to_us(self.position);
        if f.exact {
            // Transit time: arrival against capture time, else against the media clock.
            let reference = f.capture_us.unwrap_or(first + media_us);
            let transit = f.arrival_us as i64 - reference as i64;
            if let Some(prev) = self.last_transit {
                let d = (transit - prev).unsigned_abs() as f64;
                self.jitter += (d - self.jitter) / 16.0;
            }
            self.last_transit = Some(transit);
            if let Some(c) = f.capture_us {
                let lat = f.arrival_us.saturating_sub(c);
                self.s.latency_max_us = self.s.latency_max_us.max(lat);
                self.latency_sum_us += lat;
                self.latency_n += 1;
                fx.latency_us = Some(lat);
            }
            let due = self.playout_origin_us + media_us;
            if f.arrival_us > due {
                let late = f.arrival_us - due;
                self.s.underruns += 1;
                self.s.underrun_us += late;
                self.playout_origin_us += late;
                fx.underrun_us = late;
            }
        }
        self.position += f.samples as u64;
        self.s.frames += 1;
        self.s.audio_us += samples_to_us(f.samples as u64);
        self.last_arrival_us = f.arrival_us;
        fx
    }

    /// Accounts audio missing before the next frame (an inexact listener's gap, found by
    /// sequence numbers while its read is being parsed); missing audio before the first frame
    /// is not this listener's loss. Returns the gap, µs (0 when not counted).
    pub fn on_gap(&mut self, missing_samples: u64, frames_pending: u64) -> u64 {
        if missing_samples == 0 || (self.first_arrival_us.is_none() && frames_pending == 0) {
            return 0;
        }
        let gap = samples_to_us(missing_samples);
        self.s.gaps += 1;
        self.s.gap_us += gap;
        self.s.worst_gap_us = self.s.worst_gap_us.max(gap);
        self.position += missing_samples;
        gap
    }

    /// Accounts `frames` frames holding `samples` samples in all, read together and so
    /// arrived together at `arrival_us` (an inexact listener's batched read): the same as
    /// [`ListenerMeter::on_frame`] once per frame without `exact` and without missing audio
    /// (that went to [`ListenerMeter::on_gap`]), at one step's cost. Returns the stall, µs.
    pub fn on_frames(&mut self, arrival_us: u64, frames: u64, samples: u64) -> u64 {
        if frames == 0 {
            return 0;
        }
        let mut stall = 0;
        match self.first_arrival_us {
            None => {
                self.first_arrival_us = Some(arrival_us);
                self.playout_origin_us = arrival_us + self.cfg.playout_ms * 1000;
            }
            Some(_) => {
                let since = arrival_us.saturating_sub(self.last_arrival_us);
                if since > self.cfg.stall_ms * 1000 {
                    self.add_stall(since);
                    stall = since;
                }
            }
        }
        self.position += samples;
        self.s.frames += frames;
        self.s.audio_us += samples_to_us(samples);
        self.last_arrival_us = arrival_us;
        stall
    }

    fn add_stall(&mut self, us: u64) {
        self.s.stalls += 1;
        self.s.stall_us += us;
        self.s.worst_stall_us = self.s.worst_stall_us.max(us);
    }

    /// Closes the session at `now_us`: a silence still going on that is longer than the stall
    /// bound counts as a stall. Returns the summary.
    pub fn finish(mut self, now_us: u64) -> ListenerSummary {
        if self.first_arrival_us.is_some() {
            let since = now_us.saturating_sub(self.last_arrival_us);
            if since > self.cfg.stall_ms * 1000 {
                self.add_stall(since);
            }
        }
        self.s.jitter_us = self.jitter.round() as u64;
        self.s.latency_mean_us = self.latency_sum_us.checked_div(self.latency_n).unwrap_or(0);
        self.s
    }
}

/// How a join attempt went, each time µs since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinTiming {
    /// When the listener was scheduled to press "listen" (the open-model arrival).
    pub scheduled_us: u64,
    /// When the generator actually started the connection (its own lateness, if any).
    pub started_us: Option<u64>,
    /// TCP connection established.
    pub connected_us: Option<u64>,
    /// The server's answer (101 or 200) read.
    pub response_us: Option<u64>,
    /// The first audio frame received.
    pub first_audio_us: Option<u64>,
}

impl JoinTiming {
    /// Scheduled → connection started: the generator's own lateness, µs.
    pub fn start_lag_us(&self) -> Option<u64> {
        self.started_us.map(|t| t.saturating_sub(self.scheduled_us))
    }
    /// Scheduled → connected, µs.
    pub fn connect_us(&self) -> Option<u64> {
        self.connected_us
            .map(|t| t.saturating_sub(self.scheduled_us))
    }
    /// Scheduled → answer, µs.
    pub fn response_wait_us(&self) -> Option<u64> {
        self.response_us
            .map(|t| t.saturating_sub(self.scheduled_us))
    }
    /// Scheduled → first audio (time to first audio), µs.
    pub fn ttfa_us(&self) -> Option<u64> {
        self.first_audio_us
            .map(|t| t.saturating_sub(self.scheduled_us))
    }
}

/// Why a join failed or a session ended early, as a stable label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused (nothing listening, or a full backlog).
    Refused,
    /// A stage took longer than its bound: `connect`, `response` or `first_audio`.
    Timeout(&'static str),
    /// The connection was reset.
    Reset,
    /// The server answered with another HTTP status.
    Http(u16),
    /// The connection closed (before audio when joining, or during the session).
    Closed,
    /// The server closed the WebSocket with this code.
    WsClose(u16),
    /// The stream was malformed; the text says how.
    Protocol(&'static str),
    /// The generator ran out of local addresses or ports (a generator limit, not the server's).
    LocalAddr,
    /// The generator ran out of file descriptors (a generator limit, not the server's).
    LocalFds,
    /// Another IO error.
    Io(std::io::ErrorKind),
}

impl Failure {
    /// Maps an IO error to a failure.
    pub fn from_io(e: &std::io::Error) -> Failure {
        use std::io::ErrorKind as K;
        match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => return Failure::LocalFds,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => return Failure::LocalAddr,
            _ => {}
        }
        match e.kind() {
            K::ConnectionRefused => Failure::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::Reset,
            K::UnexpectedEof => Failure::Closed,
            K::TimedOut => Failure::Timeout("connect"),
            k => Failure::Io(k),
        }
    }

    /// True when the generator, not the server, is to blame.
    pub fn is_local(&self) -> bool {
        matches!(self, Failure::LocalAddr | Failure::LocalFds)
    }

    /// The label used in reports (`refused`, `timeout_connect`, `http_503`, ...).
    pub fn label(&self) -> String {
        match self {
            Failure::Refused => "refused".into(),
            Failure::Timeout(stage) => format!("timeout_{stage}"),
            Failure::Reset => "reset".into(),
            Failure::Http(code) => format!("http_{code}"),
            Failure::Closed => "closed".into(),
            Failure::WsClose(code) => format!("ws_close_{code}"),
            Failure::Protocol(why) => format!("protocol_{why}"),
            Failure::LocalAddr => "local_addr_exhausted".into(),
            Failure::LocalFds => "local_fd_limit".into(),
            Failure::Io(k) => format!("io_{k:?}").to_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    const T0: u64 = 1_700_000_000_000_000;

    /// Frames of 20 ms captured every 20 ms, arriving `delay` later, with optional holes.
    fn feed(meter: &mut ListenerMeter, seqs: &[u64], arrival: impl Fn(u64) -> u64) {
        let mut tr = SeqTracker::default();
        for &s in seqs {
            let missing = match tr.step(s) {
                SeqStep::Missing(n) => n * 960,
                SeqStep::Late => {
                    meter.on_late();
                    continue;
                }
                _ => 0,
            };
            meter.on_frame(&Frame {
                arrival_us: arrival(s),
                samples: 960,
                capture_us: Some(T0 + s * 20 * MS),
                missing_samples: missing,
                exact: true,
            });
        }
    }

    #[test]
    fn steady_stream_has_no_gap_stall_jitter_or_underrun() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        let seqs: Vec<u64> = (0..500).collect();
        feed(&mut m, &seqs, |s| T0 + s * 20 * MS + 30 * MS);
        let s = m.finish(T0 + 500 * 20 * MS + 30 * MS);
        assert_eq!(s.frames, 500);
        assert_eq!(s.audio_us, 10_000 * MS);
        assert_eq!(
            (s.gaps, s.gap_us, s.stalls, s.underruns, s.jitter_us),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(s.latency_max_us, 30 * MS);
        assert_eq!(s.latency_mean_us, 30 * MS);
    }

    #[test]
    fn missing_sequence_numbers_make_a_gap_of_their_duration() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        // 10..=59 missing: 50 frames, 1 s of audio.
        let seqs: Vec<u64> = (0..10).chain(60..100).collect();
        feed(&mut m, &seqs, |s| T0 + s * 20 * MS + 10 * MS);
        let s = m.finish(T0 + 2_000 * MS);
        assert_eq!(s.frames, 50);
        assert_eq!(s.gaps, 1);
        assert_eq!(s.gap_us, 1_000 * MS);
        assert_eq!(s.worst_gap_us, 1_000 * MS);
        // The audio after the hole arrived on its media time: no stall beyond the bound... the
        // silence lasted 1.02 s > 1 s, which is a stall, but the player was never starved.
        assert_eq!(s.stalls, 1);
        assert_eq!(s.worst_stall_us, 1_020 * MS);
        assert_eq!(s.underruns, 0);
    }

    #[test]
    fn a_pause_without_lost_audio_is_a_stall_and_an_underrun_not_a_gap() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        // Frames 0..50 on time; frames 50..100 delivered 1.5 s late (say, a stalled server).
        let seqs: Vec<u64> = (0..100).collect();
        feed(&mut m, &seqs, |s| {
            T0 + s * 20 * MS + if s >= 50 { 1_500 * MS } else { 0 }
        });
        let s = m.finish(T0 + 3_500 * MS);
        assert_eq!(s.gaps, 0);
        assert_eq!(s.stalls, 1);
        assert_eq!(s.worst_stall_us, 1_520 * MS);
        // Player started 200 ms after the first frame: frame 50 was due at 1.2 s, came at 2.5 s.
        assert_eq!(s.underruns, 1);
        assert_eq!(s.underrun_us, 1_300 * MS);
        assert_eq!(s.latency_max_us, 1_500 * MS);
    }

    #[test]
    fn underruns_follow_the_playout_buffer_depth() {
        // Chunks of 300 ms arrive every 300 ms (all frames of a chunk at once), except the
        // sixth, which comes 250 ms late.
        let run = |playout_ms| {
            let mut m = ListenerMeter::new(MeterConfig {
                stall_ms: 1000,
                playout_ms,
                ..MeterConfig::default()
            });
            let seqs: Vec<u64> = (0..150).collect();
            feed(&mut m, &seqs, |s| {
                T0 + (s / 15 + 1) * 300 * MS + if s / 15 == 5 { 250 * MS } else { 0 }
            });
            m.finish(T0 + 3_300 * MS)
        };
        // 200 ms of buffer cannot hide 250 ms of lateness: the player waits 50 ms. 400 ms can.
        let small = run(200);
        assert_eq!(small.underruns, 1, "{small:?}");
        assert_eq!(small.underrun_us, 50 * MS);
        let deep = run(400);
        assert_eq!(deep.underruns, 0);
        // Chunking shows as jitter: transit times within a chunk differ by up to 280 ms.
        assert!(deep.jitter_us > 20 * MS, "{deep:?}");
    }

    #[test]
    fn jitter_follows_rfc3550_on_alternating_delays() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        let seqs: Vec<u64> = (0..400).collect();
        // Transit alternates 10 ms / 30 ms: |D| = 20 ms every frame; J converges to 20 ms.
        feed(&mut m, &seqs, |s| {
            T0 + s * 20 * MS + if s % 2 == 0 { 10 * MS } else { 30 * MS }
        });
        let s = m.finish(T0 + 8_100 * MS);
        assert!((19_900..=20_000).contains(&s.jitter_us), "{}", s.jitter_us);
        assert_eq!(s.latency_mean_us, 20 * MS);
    }

    #[test]
    fn silence_at_the_end_is_an_open_stall() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        let seqs: Vec<u64> = (0..10).collect();
        feed(&mut m, &seqs, |s| T0 + s * 20 * MS);
        let s = m.finish(T0 + 180 * MS + 2_000 * MS);
        assert_eq!(s.stalls, 1);
        assert_eq!(s.worst_stall_us, 2_000 * MS);
        // No audio at all: nothing to stall.
        let s = ListenerMeter::new(MeterConfig::default()).finish(T0 + 10_000 * MS);
        assert_eq!(s, ListenerSummary::default());
    }

    #[test]
    fn duplicates_and_reordering_are_late_not_audio() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        feed(&mut m, &[0, 1, 2, 1, 3, 3, 4], |s| T0 + s * 20 * MS);
        let s = m.finish(T0 + 100 * MS);
        assert_eq!(s.frames, 5);
        assert_eq!(s.late_frames, 2);
        assert_eq!(s.gaps, 0);
    }

    #[test]
    fn frames_read_in_a_batch_count_audio_and_gaps_but_not_timing() {
        // Read every 100 ms, 80 ms late: with exact times every frame would be an underrun
        // of a 50 ms buffer and carry latency; as bounds they carry none, gaps still count.
        let cfg = MeterConfig {
            playout_ms: 50,
            ..MeterConfig::default()
        };
        let mut m = ListenerMeter::new(cfg);
        let mut tr = SeqTracker::default();
        for s in (0..100u64).filter(|s| !(40..45).contains(s)) {
            let missing = match tr.step(s) {
                SeqStep::Missing(n) => n * 960,
                _ => 0,
            };
            let fx = m.on_frame(&Frame {
                arrival_us: T0 + (s * 20 / 100 + 1) * 100 * MS + 80 * MS,
                samples: 960,
                capture_us: Some(T0 + s * 20 * MS),
                missing_samples: missing,
                exact: false,
            });
            assert_eq!((fx.latency_us, fx.underrun_us), (None, 0));
        }
        let s = m.finish(T0 + 2_100 * MS);
        assert_eq!((s.frames, s.gaps, s.gap_us), (95, 1, 100 * MS));
        assert_eq!((s.underruns, s.latency_max_us, s.jitter_us), (0, 0, 0));
    }

    #[test]
    fn missing_audio_before_the_first_frame_is_not_a_gap() {
        let mut m = ListenerMeter::new(MeterConfig::default());
        let fx = m.on_frame(&Frame {
            arrival_us: T0,
            samples: 960,
            capture_us: None,
            missing_samples: 48_000,
            exact: true,
        });
        assert_eq!(fx.gap_us, 0);
        assert_eq!(m.finish(T0).gaps, 0);
    }

    #[test]
    fn granule_positions_reveal_missing_pages() {
        let mut g = GranuleTracker::default();
        // Pages of 5 × 960 samples.
        assert_eq!(g.page(4_800, 4_800), 0);
        assert_eq!(g.page(9_600, 4_800), 0);
        // One page lost: this one ends at 19_200 but carries 4_800.
        assert_eq!(g.page(19_200, 4_800), 4_800);
        // A page from the past changes nothing.
        assert_eq!(g.page(9_600, 4_800), 0);
        assert_eq!(g.page(24_000, 4_800), 0);
    }

    #[test]
    fn sequence_tracker_classifies_each_step() {
        let mut t = SeqTracker::default();
        assert_eq!(t.step(5), SeqStep::First);
        assert_eq!(t.step(6), SeqStep::InOrder);
        assert_eq!(t.step(9), SeqStep::Missing(2));
        assert_eq!(t.step(7), SeqStep::Late);
        assert_eq!(t.step(10), SeqStep::InOrder);
        // An absurd jump is a restart, not four billion lost frames.
        assert_eq!(t.step(10 + (1 << 40)), SeqStep::First);
    }

    #[test]
    fn join_timings_are_measured_from_the_scheduled_time() {
        let j = JoinTiming {
            scheduled_us: T0,
            started_us: Some(T0 + MS),
            connected_us: Some(T0 + 3 * MS),
            response_us: Some(T0 + 5 * MS),
            first_audio_us: Some(T0 + 40 * MS),
        };
        assert_eq!(j.start_lag_us(), Some(MS));
        assert_eq!(j.connect_us(), Some(3 * MS));
        assert_eq!(j.response_wait_us(), Some(5 * MS));
        assert_eq!(j.ttfa_us(), Some(40 * MS));
    }

    #[test]
    fn failures_have_stable_labels_and_blame() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::from_io(&refused).label(), "refused");
        let fds = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(Failure::from_io(&fds).is_local());
        assert_eq!(Failure::Http(503).label(), "http_503");
        assert_eq!(
            Failure::Timeout("first_audio").label(),
            "timeout_first_audio"
        );
        assert_eq!(Failure::WsClose(1001).label(), "ws_close_1001");
    }
}
