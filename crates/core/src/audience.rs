//! Audience numbers (`docs/audience.md`): listener sessions, views, unique listeners, peak
//! concurrency, listen time and joins of one space, as state that nodes merge, with no IO.
//!
//! - [`Distinct`]: a HyperLogLog sketch of listener identities. Exact (a sorted list of
//!   hashes) up to [`SPARSE_MAX`] identities, then [`REGISTERS`] registers (16 KiB): standard
//!   error [`STANDARD_ERROR`] (0.81 %), and [`ERROR_BOUND`] (2.5 %, over 3 standard errors) is
//!   the bound docs and the API state. Merging two sketches is their union: an identity seen
//!   by two nodes counts once, because every node hashes identities with the same key
//!   ([`IdentityKey`], derived from the cluster's shared secret).
//! - [`Durations`]: session lengths in log buckets (8 an octave, 4.5 % wide at most), for the
//!   median, mergeable by adding.
//! - [`Audience`]: one space's numbers on one node, driven by events; [`Audience::merge`]
//!   adds another node's; [`Audience::encode`] / [`Audience::decode`] carry them between
//!   nodes (decode refuses anything malformed with a reason).
//! - [`Series`]: the numbers over time for the dashboard, in a bounded ring that halves its
//!   resolution when full, so it spans the whole event in [`MAX_SAMPLES`] samples.
//!
//! Time is a parameter (µs since the Unix epoch): nothing here reads a clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;

/// Bits of an identity's hash that choose its register.
pub const PRECISION: u32 = 14;
/// Registers of a dense sketch (one byte each).
pub const REGISTERS: usize = 1 << PRECISION;
/// Identities a sketch counts exactly (their 64-bit hashes, 8 KiB) before it goes dense.
pub const SPARSE_MAX: usize = 1024;
/// Relative standard error of a dense sketch's estimate (1.04 / √registers).
pub const STANDARD_ERROR: f64 = 1.04 / 128.0;
/// The error bound the numbers are served with: over 3 standard errors (99.7 % of estimates).
pub const ERROR_BOUND: f64 = 0.025;
/// Seconds of audio a session needs to count as a view, unless configured.
pub const DEFAULT_VIEW_AFTER_S: u64 = 10;
/// A session that lasted this much past the view rule without its view counted never kept
/// up with its audio (its view is checked on every write once due, at least once a second).
pub const NEVER_READ_GRACE_US: u64 = 2_000_000;
/// Session length buckets: 8 an octave from 1 s up to about 2^24 s (194 days).
pub const DURATION_BUCKETS: usize = 8 * 24 + 1;
/// Samples a [`Series`] holds (then it halves its resolution).
pub const MAX_SAMPLES: usize = 512;
/// Longest client fingerprint (User-Agent) hashed into an identity; the rest is ignored.
pub const MAX_FINGERPRINT: usize = 256;
/// Largest encoded [`Audience`]: counters, histogram and three dense sketches.
pub const MAX_ENCODED: usize = 264 + DURATION_BUCKETS * 9 + 3 * (3 + REGISTERS);

/// Largest register value: leading zeros of the 50 hash bits left, plus one.
const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;

/// Why encoded audience state was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceError {
    /// It ended before a field did.
    Truncated,
    /// It is longer than [`MAX_ENCODED`] or has bytes after its end.
    TooLong(usize),
    /// It is of another format or version.
    Version(u8),
    /// A field is out of its range (which one).
    Invalid(&'static str),
}

impl std::fmt::Display for AudienceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AudienceError::Truncated => write!(f, "audience state is truncated"),
            AudienceError::TooLong(n) => write!(f, "audience state of {n} bytes is too long"),
            AudienceError::Version(v) => write!(f, "audience state of unknown version {v}"),
            AudienceError::Invalid(what) => write!(f, "audience state: invalid {what}"),
        }
    }
}

impl std::error::Error for AudienceError {}

/// Who a listener is, for counting: the ticket's identity where the space hands out tickets,
/// otherwise the source address with the client's fingerprint (its User-Agent).
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// The listener identity a join ticket was issued to.
    Ticket(u64),
    /// A source address and the client's fingerprint.
    Source {
        /// The listener's address (as the shield sees it).
        ip: IpAddr,
        /// Its User-Agent, or empty.
        fingerprint: &'a str,
    },
}

/// The key identities are hashed with: the same on every node of a cluster (derived from the
/// shared secret), so sketches merge; secret, so a hash says nothing of the address behind it.
#[derive(Clone)]
pub struct IdentityKey(Hmac<Sha256>);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(..)")
    }
}

impl IdentityKey {
    /// The key derived from the node's (the cluster's) secret.
    pub fn derive(secret: &[u8]) -> IdentityKey {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        m.update(b"levee audience identity v1");
        let key = m.finalize().into_bytes();
        IdentityKey(<Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length"))
    }

    /// The 64-bit hash of `id`.
    pub fn hash(&self, id: &Identity<'_>) -> u64 {
        let mut m = self.0.clone();
        match id {
            Identity::Ticket(t) => {
                m.update(b"t");
                m.update(&t.to_be_bytes());
            }
            Identity::Source { ip, fingerprint } => {
                match ip {
                    IpAddr::V4(a) => {
                        m.update(b"4");
                        m.update(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        m.update(b"6");
                        m.update(&a.octets());
                    }
                }
                let fp = fingerprint.as_bytes();
                m.update(&fp[..fp.len().min(MAX_FINGERPRINT)]);
            }
        }
        let d = m.finalize().into_bytes();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }
}

/// A count of distinct identities (HyperLogLog; see the module docs for its error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Distinct {
    /// Hashes seen, sorted, while at most [`SPARSE_MAX`] and `dense` is `None`.
    sparse: Vec<u64>,
    /// The registers, once more than [`SPARSE_MAX`] identities were seen.
    dense: Option<Box<[u8]>>,
}

fn rank(h: u64) -> (usize, u8) {
    let idx = (h >> (64 - PRECISION)) as usize;
    let rest = h << PRECISION;
    let r = (rest.leading_zeros() + 1).min(MAX_RANK as u32) as u8;
    (idx, r)
}

impl Distinct {
    /// An empty count.
    pub fn new() -> Distinct {
        Distinct::default()
    }

    /// Counts identity hash `h` (again: no change).
    pub fn insert(&mut self, h: u64) {
        if let Some(d) = &mut self.dense {
            let (i, r) = rank(h);
            d[i] = d[i].max(r);
            return;
        }
        if let Err(at) = self.sparse.binary_search(&h) {
            self.sparse.insert(at, h);
            if self.sparse.len() > SPARSE_MAX {
                self.densify();
            }
        }
    }

    fn densify(&mut self) {
        let mut d = vec![0u8; REGISTERS].into_boxed_slice();
        for &h in &self.sparse {
            let (i, r) = rank(h);
            d[i] = d[i].max(r);
        }
        self.sparse = Vec::new();
        self.dense = Some(d);
    }

    /// True while the count is exact (at most [`SPARSE_MAX`] identities).
    pub fn is_exact(&self) -> bool {
        self.dense.is_none()
    }

    /// The number of distinct identities: exact while [`Distinct::is_exact`], otherwise
    /// estimated (Ertl's improved estimator for HyperLogLog, unbiased over the whole range).
    pub fn count(&self) -> u64 {
        let Some(d) = &self.dense else {
            return self.sparse.len() as u64;
        };
        let q = (64 - PRECISION) as usize;
        let mut c = [0f64; 64 - PRECISION as usize + 2];
        for &r in d.iter() {
            c[r as usize] += 1.0;
        }
        let m = REGISTERS as f64;
        let mut z = m * tau(1.0 - c[q + 1] / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + c[k]);
        }
        z += m * sigma(c[0] / m);
        let alpha = 1.0 / (2.0 * std::f64::consts::LN_2);
        (alpha * m * m / z).round() as u64
    }

    /// Counts every identity `other` counted (the union).
    pub fn merge(&mut self, other: &Distinct) {
        match (&mut self.dense, &other.dense) {
            (Some(a), Some(b)) => {
                for (x, y) in a.iter_mut().zip(b.iter()) {
                    *x = (*x).max(*y);
                }
            }
            (None, Some(b)) => {
                let mine = std::mem::take(&mut self.sparse);
                self.dense = Some(b.clone());
                for h in mine {
                    self.insert(h);
                }
            }
            (_, None) => {
                for &h in &other.sparse {
                    self.insert(h);
                }
            }
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match &self.dense {
            None => {
                out.push(0);
                out.extend_from_slice(&(self.sparse.len() as u16).to_be_bytes());
                for h in &self.sparse {
                    out.extend_from_slice(&h.to_be_bytes());
                }
            }
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Distinct, AudienceError> {
        match r.u8()? {
            0 => {
                let n = r.u16()? as usize;
                if n > SPARSE_MAX {
                    return Err(AudienceError::Invalid("sketch length"));
                }
                let mut sparse = Vec::with_capacity(n);
                for _ in 0..n {
                    let h = r.u64()?;
                    if sparse.last().is_some_and(|&l| l >= h) {
                        return Err(AudienceError::Invalid("sketch order"));
                    }
                    sparse.push(h);
                }
                Ok(Distinct {
                    sparse,
                    dense: None,
                })
            }
            1 => {
                let d = r.take(REGISTERS)?;
                if d.iter().any(|&x| x > MAX_RANK) {
                    return Err(AudienceError::Invalid("sketch register"));
                }
                Ok(Distinct {
                    sparse: Vec::new(),
                    dense: Some(d.into()),
                })
            }
            _ => Err(AudienceError::Invalid("sketch kind")),
        }
    }
}

/// σ of Ertl's estimator (the correction for empty registers).
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let z0 = z;
        z += x * y;
        y += y;
        if z == z0 {
            return z;
        }
    }
}

/// τ of Ertl's estimator (the correction for saturated registers).
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let z0 = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == z0 {
            return z / 3.0;
        }
    }
}

/// Session lengths in log buckets (8 an octave), mergeable by adding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations {
    counts: Box<[u64; DURATION_BUCKETS]>,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            counts: Box::new([0; DURATION_BUCKETS]),
        }
    }
}

impl Durations {
    fn bucket(us: u64) -> usize {
        let s = us as f64 / 1e6;
        if s < 1.0 {
            return 0;
        }
        ((8.0 * s.log2()).floor() as usize + 1).min(DURATION_BUCKETS - 1)
    }

    /// Counts a session of `us` µs.
    pub fn add(&mut self, us: u64) {
        let c = &mut self.counts[Self::bucket(us)];
        *c = c.saturating_add(1);
    }

    /// Sessions counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |t, c| t.saturating_add(*c))
    }

    /// The `q`-quantile in seconds (the geometric middle of its bucket; under 1 s: 0.5),
    /// `None` with no session.
    pub fn quantile_s(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen = c.saturating_add(seen);
            if seen >= rank {
                return Some(match i {
                    0 => 0.5,
                    i => 2f64.powf((i as f64 - 1.0 + 0.5) / 8.0),
                });
            }
        }
        None
    }

    /// Adds `other`'s sessions.
    pub fn merge(&mut self, other: &Durations) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }
}

/// Why a session was left out of views and uniques.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// It did not keep up with its audio: cut for stalling before its view, or connected
    /// for [`Audience::view_after_us`] plus [`NEVER_READ_GRACE_US`] without its view counted
    /// (its socket held more than levee allows unacknowledged whenever the view came due).
    /// A client that never reads is not a listener.
    NeverRead,
    /// Its source was banned by the time it left.
    Banned,
    /// It sent what a listener may not (broken or oversized WebSocket frames, an upload).
    Misbehaved,
}

/// How a session ended, as the fan-out engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// When it joined, µs since the epoch.
    pub joined_us: u64,
    /// Audio it took: from its join to its last progress, µs.
    pub listened_us: u64,
    /// It was cut for stalling.
    pub stalled: bool,
    /// Its source is banned now.
    pub banned: bool,
    /// It was counted as a view while it listened.
    pub viewed: bool,
    /// It was closed for sending what a listener may not.
    pub misbehaved: bool,
}

/// One space's audience numbers on one node (or merged from several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// Audio a session needs to count as a view, µs.
    pub view_after_us: u64,
    /// Join attempts: join requests and stream requests.
    pub attempts: u64,
    /// Join answers that gave a place in line.
    pub queued: u64,
    /// Attempts refused for capacity (space or node full).
    pub refused: u64,
    /// Attempts refused by the shield as automated (a ticket or proof of work that failed).
    pub refused_automated: u64,
    /// Listener sessions started (admitted streams).
    pub sessions: u64,
    /// Sessions open now.
    pub active: u64,
    /// Sum of the join times of the sessions open now, µs (for their listen time so far).
    pub active_joined_us: u128,
    /// Most sessions open at once, and when (µs since the epoch).
    pub peak: u64,
    /// When the peak was reached, µs since the epoch (0: never).
    pub peak_at_us: u64,
    /// Listen time of the ended sessions that counted, µs.
    pub listen_us: u64,
    /// Sessions that counted as a view (not distinct).
    pub view_sessions: u64,
    /// Sessions left out as never read.
    pub filtered_never_read: u64,
    /// Sessions left out as banned.
    pub filtered_banned: u64,
    /// Sessions left out as misbehaved.
    pub filtered_misbehaved: u64,
    /// Lengths of the ended sessions that counted.
    pub durations: Durations,
    /// Identities with a view.
    pub viewers: Distinct,
    /// Identities with a session that counted.
    pub uniques: Distinct,
    /// Identities of filtered sessions and of attempts refused as automated.
    pub filtered_ids: Distinct,
}

/// One space's numbers at a moment, as served.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Distinct identities with a view.
    pub views: u64,
    /// Sessions that counted as a view.
    pub view_sessions: u64,
    /// Distinct identities with a session that counted.
    pub uniques: u64,
    /// Whether `views` and `uniques` are exact (few identities) or estimates within
    /// [`ERROR_BOUND`].
    pub exact: bool,
    /// Sessions open now.
    pub listeners: u64,
    /// Most sessions open at once, and when (µs since the epoch; 0: never).
    pub peak: u64,
    /// When.
    pub peak_at_us: u64,
    /// Total listen time so far (ended sessions that counted, plus the open ones), s.
    pub listen_time_s: f64,
    /// Median length of the ended sessions that counted, s.
    pub median_session_s: Option<f64>,
    /// Sessions started.
    pub sessions: u64,
    /// Join attempts.
    pub attempts: u64,
    /// Admitted (sessions started).
    pub admitted: u64,
    /// Given a place in line.
    pub queued: u64,
    /// Refused for capacity.
    pub refused: u64,
    /// Filtered sessions (never read + banned + misbehaved).
    pub filtered_sessions: u64,
    /// Of which never read.
    pub filtered_never_read: u64,
    /// Of which banned.
    pub filtered_banned: u64,
    /// Of which misbehaved.
    pub filtered_misbehaved: u64,
    /// Attempts refused as automated.
    pub refused_automated: u64,
    /// Distinct identities filtered.
    pub filtered_identities: u64,
}

const VERSION: u8 = 1;

impl Audience {
    /// No audience yet; a session counts as a view after `view_after_us` of audio.
    pub fn new(view_after_us: u64) -> Audience {
        Audience {
            view_after_us,
            attempts: 0,
            queued: 0,
            refused: 0,
            refused_automated: 0,
            sessions: 0,
            active: 0,
            active_joined_us: 0,
            peak: 0,
            peak_at_us: 0,
            listen_us: 0,
            view_sessions: 0,
            filtered_never_read: 0,
            filtered_banned: 0,
            filtered_misbehaved: 0,
            durations: Durations::default(),
            viewers: Distinct::new(),
            uniques: Distinct::new(),
            filtered_ids: Distinct::new(),
        }
    }

    /// A join request or stream request arrived.
    pub fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// A join was given a place in line.
    pub fn queue(&mut self) {
        self.queued += 1;
    }

    /// A join was refused for capacity.
    pub fn refuse(&mut self) {
        self.refused += 1;
    }

    /// A join was refused as automated (by identity hash `id`).
    pub fn refuse_automated(&mut self, id: u64) {
        self.refused_automated += 1;
        self.filtered_ids.insert(id);
    }

    /// A session started at `now_us`.
    pub fn join(&mut self, now_us: u64) {
        self.sessions += 1;
        self.active += 1;
        self.active_joined_us += now_us as u128;
        if self.active > self.peak {
            self.peak = self.active;
            self.peak_at_us = now_us;
        }
    }

    /// Session of identity `id` took [`Audience::view_after_us`] of audio and keeps up
    /// (called once per session, while it listens; `banned`: its source is banned now, and it
    /// does not count). Returns whether it counted. A view is counted only so, live: a
    /// session that ends without it is no view.
    pub fn view(&mut self, id: u64, banned: bool) -> bool {
        if banned {
            return false;
        }
        self.view_sessions += 1;
        self.viewers.insert(id);
        self.uniques.insert(id);
        true
    }

    /// Session of identity `id` ended; says whether it was filtered and why.
    pub fn leave(&mut self, id: u64, d: Departure) -> Option<Filter> {
        self.active = self.active.saturating_sub(1);
        self.active_joined_us = self.active_joined_us.saturating_sub(d.joined_us as u128);
        let filter = if d.banned {
            Some(Filter::Banned)
        } else if d.misbehaved {
            Some(Filter::Misbehaved)
        } else if !d.viewed
            && (d.stalled || d.listened_us >= self.view_after_us + NEVER_READ_GRACE_US)
        {
            Some(Filter::NeverRead)
        } else {
            None
        };
        match filter {
            Some(f) => {
                match f {
                    Filter::Banned => self.filtered_banned += 1,
                    Filter::NeverRead => self.filtered_never_read += 1,
                    Filter::Misbehaved => self.filtered_misbehaved += 1,
                }
                self.filtered_ids.insert(id);
            }
            None => {
                self.uniques.insert(id);
                self.listen_us = self.listen_us.saturating_add(d.listened_us);
                self.durations.add(d.listened_us);
            }
        }
        filter
    }

    /// The numbers at `now_us`.
    pub fn figures(&self, now_us: u64) -> Figures {
        let open = (self.active as u128 * now_us as u128).saturating_sub(self.active_joined_us);
        Figures {
            views: self.viewers.count(),
            view_sessions: self.view_sessions,
            uniques: self.uniques.count(),
            exact: self.viewers.is_exact() && self.uniques.is_exact(),
            listeners: self.active,
            peak: self.peak,
            peak_at_us: self.peak_at_us,
            listen_time_s: (self.listen_us as f64 + open as f64) / 1e6,
            median_session_s: self.durations.quantile_s(0.5),
            sessions: self.sessions,
            attempts: self.attempts,
            admitted: self.sessions,
            queued: self.queued,
            refused: self.refused,
            filtered_sessions: self
                .filtered_never_read
                .saturating_add(self.filtered_banned)
                .saturating_add(self.filtered_misbehaved),
            filtered_never_read: self.filtered_never_read,
            filtered_banned: self.filtered_banned,
            filtered_misbehaved: self.filtered_misbehaved,
            refused_automated: self.refused_automated,
            filtered_identities: self.filtered_ids.count(),
        }
    }

    /// Adds another node's numbers for the same space. Counters add, identities unite, open
    /// sessions add; the peak is the larger of the two (a cluster's peak is its nodes' sum
    /// at one moment, which the node answering samples itself: see `docs/audience.md`).
    pub fn merge(&mut self, o: &Audience) {
        // Saturating: another node's report is checked for form, not for sense, and a
        // hostile one must not wrap (or, in a debug build, stop) the sums.
        for (a, b) in [
            (&mut self.attempts, o.attempts),
            (&mut self.queued, o.queued),
            (&mut self.refused, o.refused),
            (&mut self.refused_automated, o.refused_automated),
            (&mut self.sessions, o.sessions),
            (&mut self.active, o.active),
            (&mut self.listen_us, o.listen_us),
            (&mut self.view_sessions, o.view_sessions),
            (&mut self.filtered_never_read, o.filtered_never_read),
            (&mut self.filtered_banned, o.filtered_banned),
            (&mut self.filtered_misbehaved, o.filtered_misbehaved),
        ] {
            *a = a.saturating_add(b);
        }
        self.active_joined_us = self.active_joined_us.saturating_add(o.active_joined_us);
        if o.peak > self.peak {
            self.peak = o.peak;
            self.peak_at_us = o.peak_at_us;
        }
        self.durations.merge(&o.durations);
        self.viewers.merge(&o.viewers);
        self.uniques.merge(&o.uniques);
        self.filtered_ids.merge(&o.filtered_ids);
    }

    /// The wire form (version 1, big-endian; at most [`MAX_ENCODED`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.push(VERSION);
        for v in [
            self.view_after_us,
            self.attempts,
            self.queued,
            self.refused,
            self.refused_automated,
            self.sessions,
            self.active,
            self.peak,
            self.peak_at_us,
            self.listen_us,
            self.view_sessions,
            self.filtered_never_read,
            self.filtered_banned,
            self.filtered_misbehaved,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.active_joined_us.to_be_bytes());
        let used: Vec<(usize, u64)> = self
            .durations
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i, c))
            .collect();
        out.extend_from_slice(&(used.len() as u16).to_be_bytes());
        for (i, c) in used {
            out.push(i as u8);
            out.extend_from_slice(&c.to_be_bytes());
        }
        for d in [&self.viewers, &self.uniques, &self.filtered_ids] {
            d.encode(&mut out);
        }
        out
    }

    /// Reads [`Audience::encode`]'s form; anything else is refused with a reason.
    pub fn decode(b: &[u8]) -> Result<Audience, AudienceError> {
        if b.len() > MAX_ENCODED {
            return Err(AudienceError::TooLong(b.len()));
        }
        let mut r = Reader(b);
        let v = r.u8()?;
        if v != VERSION {
            return Err(AudienceError::Version(v));
        }
        let mut f = [0u64; 14];
        for x in &mut f {
            *x = r.u64()?;
        }
        let [view_after_us, attempts, queued, refused, refused_automated, sessions, active, peak, peak_at_us, listen_us, view_sessions, filtered_never_read, filtered_banned, filtered_misbehaved] =
            f;
        let active_joined_us = u128::from_be_bytes(r.take(16)?.try_into().expect("16 bytes"));
        let n = r.u16()? as usize;
        if n > DURATION_BUCKETS {
            return Err(AudienceError::Invalid("duration buckets"));
        }
        let mut durations = Durations::default();
        let mut last = None;
        for _ in 0..n {
            let i = r.u8()? as usize;
            if i >= DURATION_BUCKETS || last.is_some_and(|l| l >= i) {
                return Err(AudienceError::Invalid("duration bucket"));
            }
            last = Some(i);
            durations.counts[i] = r.u64()?;
            if durations.counts[i] == 0 {
                // Empty buckets are left out: one meaning, one form.
                return Err(AudienceError::Invalid("duration count"));
            }
        }
        let viewers = Distinct::decode(&mut r)?;
        let uniques = Distinct::decode(&mut r)?;
        let filtered_ids = Distinct::decode(&mut r)?;
        if !r.0.is_empty() {
            return Err(AudienceError::TooLong(b.len()));
        }
        if active > sessions || peak > sessions {
            return Err(AudienceError::Invalid("session counts"));
        }
        Ok(Audience {
            view_after_us,
            attempts,
            queued,
            refused,
            refused_automated,
            sessions,
            active,
            active_joined_us,
            peak,
            peak_at_us,
            listen_us,
            view_sessions,
            filtered_never_read,
            filtered_banned,
            filtered_misbehaved,
            durations,
            viewers,
            uniques,
            filtered_ids,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AudienceError> {
        if self.0.len() < n {
            return Err(AudienceError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, AudienceError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, AudienceError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u64(&mut self) -> Result<u64, AudienceError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// One point of a space's numbers over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Its time, s since the epoch.
    pub t_s: u64,
    /// Listeners connected (the most within the sample's span).
    pub listeners: u64,
    /// Sessions started so far.
    pub joins: u64,
    /// Callers in line (the most within the span).
    pub queue: u64,
    /// Views so far.
    pub views: u64,
    /// Unique listeners so far.
    pub uniques: u64,
    /// Filtered sessions and refused automated attempts so far.
    pub filtered: u64,
    /// Delivery trouble so far: lagging listeners skipped ahead, plus stalled ones cut.
    pub trouble: u64,
}

impl Sample {
    /// The later of two neighbours, keeping the larger of their gauges (a peak survives).
    fn fold(self, later: Sample) -> Sample {
        Sample {
            listeners: self.listeners.max(later.listeners),
            queue: self.queue.max(later.queue),
            ..later
        }
    }
}

/// A space's numbers over time: one sample every [`Series::step_s`], at most
/// [`MAX_SAMPLES`]; when full, neighbours fold in pairs and the step doubles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    samples: Vec<Sample>,
    step_s: u64,
}

impl Series {
    /// An empty series sampled every `step_s` seconds (at least 1).
    pub fn new(step_s: u64) -> Series {
        Series {
            samples: Vec::new(),
            step_s: step_s.max(1),
        }
    }

    /// Seconds between samples now.
    pub fn step_s(&self) -> u64 {
        self.step_s
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Records `s`: a new sample once `step_s` passed since the last one, otherwise folded
    /// into the last (gauges keep their largest value).
    pub fn record(&mut self, s: Sample) {
        match self.samples.last_mut() {
            Some(last) if s.t_s < last.t_s + self.step_s => {
                let t = last.t_s;
                *last = Sample {
                    t_s: t,
                    ..last.fold(s)
                };
                return;
            }
            _ => {}
        }
        if self.samples.len() == MAX_SAMPLES {
            let folded: Vec<Sample> = self
                .samples
                .chunks(2)
                .map(|p| match p {
                    [a, b] => Sample {
                        t_s: a.t_s,
                        ..a.fold(*b)
                    },
                    [a] => *a,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            self.samples = folded;
            self.step_s *= 2;
        }
        self.samples.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: distinct, well-mixed stand-ins for identity hashes.
    fn hashes(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        (0..n as u64).map(move |i| {
            let mut x = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        })
    }

    fn count_of(seed: u64, n: usize) -> Distinct {
        let mut d = Distinct::new();
        hashes(seed, n).for_each(|h| d.insert(h));
        d
    }

    #[test]
    fn small_counts_are_exact_and_repeats_count_once() {
        let mut d = Distinct::new();
        for h in hashes(1, SPARSE_MAX) {
            d.insert(h);
            d.insert(h);
        }
        assert!(d.is_exact());
        assert_eq!(d.count(), SPARSE_MAX as u64);
        assert_eq!(Distinct::new().count(), 0);
    }

    #[test]
    fn a_million_identities_are_counted_within_the_stated_bound() {
        for seed in [1, 2, 3] {
            for n in [2_000usize, 30_000, 200_000, 1_000_000] {
                let d = count_of(seed, n);
                assert!(!d.is_exact());
                let err = (d.count() as f64 - n as f64).abs() / n as f64;
                assert!(
                    err <= ERROR_BOUND,
                    "seed {seed}, {n}: {} ({err:.4})",
                    d.count()
                );
            }
        }
    }

    #[test]
    fn the_error_spread_matches_the_standard_error() {
        // 40 independent sketches of 100,000: the root-mean-square error is the standard
        // error, give or take the sampling of 40.
        let n = 100_000usize;
        let sq: f64 = (0..40)
            .map(|seed| {
                let e = count_of(seed * 7919, n).count() as f64 / n as f64 - 1.0;
                e * e
            })
            .sum();
        let rms = (sq / 40.0).sqrt();
        assert!(rms < STANDARD_ERROR * 1.5, "rms {rms}");
        assert!(rms > STANDARD_ERROR * 0.5, "rms {rms}");
    }

    #[test]
    fn a_merge_counts_the_union() {
        // Two nodes, 600,000 identities each, 200,000 of them on both: 1,000,000 in all.
        let mut a = Distinct::new();
        let mut b = Distinct::new();
        let mut both = Distinct::new();
        for (i, h) in hashes(9, 1_000_000).enumerate() {
            if i < 600_000 {
                a.insert(h);
            }
            if i >= 400_000 {
                b.insert(h);
            }
            both.insert(h);
        }
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(
            m, both,
            "the merge is the sketch of the union, register for register"
        );
        let err = (m.count() as f64 - 1e6).abs() / 1e6;
        assert!(err <= ERROR_BOUND, "{}", m.count());
        // Sparse into dense, dense into sparse, sparse into sparse past the limit.
        let small = count_of(9, 300);
        let mut s = small.clone();
        s.merge(&a);
        assert_eq!(s, a);
        let mut d = a.clone();
        d.merge(&small);
        assert_eq!(d, a);
        let mut x = count_of(9, 800);
        x.merge(&count_of(10, 800));
        assert!(!x.is_exact());
        assert!((x.count() as f64 - 1600.0).abs() < 1600.0 * ERROR_BOUND);
    }

    /// Ends session `id` after `listened_s`, its view counted first if it lasted that long
    /// (as the fan-out engine tells a listener that keeps up).
    fn done(a: &mut Audience, id: u64, joined_us: u64, listened_s: f64) -> Option<Filter> {
        let mut d = leave(joined_us, listened_s);
        if d.listened_us >= a.view_after_us {
            a.view(id, false);
            d.viewed = true;
        }
        a.leave(id, d)
    }

    fn leave(joined_us: u64, listened_s: f64) -> Departure {
        Departure {
            joined_us,
            listened_us: (listened_s * 1e6) as u64,
            stalled: false,
            banned: false,
            viewed: false,
            misbehaved: false,
        }
    }

    #[test]
    fn a_nine_second_session_is_no_view_and_two_sessions_of_one_identity_are_one_view() {
        let mut a = Audience::new(10_000_000);
        a.join(0);
        assert_eq!(a.leave(7, leave(0, 9.0)), None);
        let f = a.figures(20_000_000);
        assert_eq!((f.views, f.uniques, f.view_sessions), (0, 1, 0));
        // Identity 8 listens twice, each time past 10 s.
        a.join(30_000_000);
        assert_eq!(done(&mut a, 8, 30_000_000, 12.0), None);
        a.join(50_000_000);
        assert_eq!(done(&mut a, 8, 50_000_000, 11.0), None);
        let f = a.figures(70_000_000);
        assert_eq!((f.views, f.view_sessions, f.uniques), (1, 2, 2));
        assert_eq!(f.sessions, 3);
        assert!((f.listen_time_s - 32.0).abs() < 1e-6);
        assert!(f.exact);
    }

    #[test]
    fn automated_sessions_are_reported_apart() {
        let mut a = Audience::new(10_000_000);
        // Never read: stalled before 10 s of audio.
        a.join(0);
        let mut d = leave(0, 3.0);
        d.stalled = true;
        assert_eq!(a.leave(1, d), Some(Filter::NeverRead));
        // Stalled after its view: a listener whose network failed.
        a.join(0);
        assert!(a.view(2, false));
        let mut d = leave(0, 30.0);
        d.stalled = true;
        d.viewed = true;
        assert_eq!(a.leave(2, d), None);
        // Connected for 40 s without once keeping up: its view never came.
        a.join(0);
        assert_eq!(a.leave(5, leave(0, 40.0)), Some(Filter::NeverRead));
        // Left 11 s in, before its view was checked: a listener, not a view.
        a.join(0);
        assert_eq!(a.leave(6, leave(0, 11.0)), None);
        // Banned by the time it left, and banned when its view came due.
        a.join(0);
        assert!(!a.view(3, true));
        let mut d = leave(0, 40.0);
        d.banned = true;
        assert_eq!(a.leave(3, d), Some(Filter::Banned));
        a.refuse_automated(4);
        let f = a.figures(60_000_000);
        assert_eq!((f.views, f.uniques), (1, 2));
        assert_eq!(
            (
                f.filtered_sessions,
                f.filtered_never_read,
                f.filtered_banned
            ),
            (3, 2, 1)
        );
        assert_eq!((f.refused_automated, f.filtered_identities), (1, 4));
        assert!((f.listen_time_s - 41.0).abs() < 1e-6);
    }

    #[test]
    fn peak_listen_time_and_median_follow_the_sessions() {
        let mut a = Audience::new(10_000_000);
        for i in 0..5u64 {
            a.join(i * 1_000_000);
        }
        for i in 0..3u64 {
            done(&mut a, i, i * 1_000_000, 20.0 + i as f64 * 10.0);
        }
        a.join(60_000_000);
        let f = a.figures(100_000_000);
        assert_eq!((f.peak, f.peak_at_us, f.listeners), (5, 4_000_000, 3));
        // Ended: 20 + 30 + 40; open: (100 - 3) + (100 - 4) + (100 - 60).
        assert!((f.listen_time_s - (90.0 + 97.0 + 96.0 + 40.0)).abs() < 1e-6);
        let median = f.median_session_s.unwrap();
        assert!((median / 30.0 - 1.0).abs() < 0.05, "{median}");
    }

    #[test]
    fn merged_nodes_add_their_counts_and_unite_their_identities() {
        let mut a = Audience::new(10_000_000);
        let mut b = Audience::new(10_000_000);
        for (n, node) in [&mut a, &mut b].into_iter().enumerate() {
            for id in 0..50u64 {
                node.attempt();
                node.join(0);
                // Identities 25..50 listen on both nodes.
                let id = if id < 25 { id + 100 * n as u64 } else { id };
                done(node, id, 0, 15.0);
            }
        }
        let mut m = a.clone();
        m.merge(&b);
        let f = m.figures(1);
        assert_eq!((f.attempts, f.sessions, f.view_sessions), (100, 100, 100));
        assert_eq!((f.uniques, f.views), (75, 75));
        assert_eq!(m.durations.total(), 100);
    }

    #[test]
    fn a_report_of_absurd_counts_saturates_rather_than_wraps() {
        let mut huge = Audience::new(1);
        huge.attempts = u64::MAX;
        huge.filtered_banned = u64::MAX;
        huge.filtered_never_read = u64::MAX;
        huge.active_joined_us = u128::MAX;
        huge.durations.counts[3] = u64::MAX;
        let mut a = Audience::new(1);
        a.attempt();
        a.join(1);
        done(&mut a, 1, 1, 5.0);
        a.merge(&huge);
        a.merge(&huge);
        let f = a.figures(u64::MAX);
        assert_eq!((f.attempts, f.filtered_sessions), (u64::MAX, u64::MAX));
        assert_eq!(a.durations.total(), u64::MAX);
        assert!(f.median_session_s.is_some());
    }

    #[test]
    fn the_wire_form_round_trips_and_anything_malformed_is_refused() {
        let mut a = Audience::new(10_000_000);
        a.attempt();
        a.join(5);
        a.join(6);
        done(&mut a, 1, 5, 12.0);
        for h in hashes(3, 5000) {
            a.uniques.insert(h);
        }
        a.filtered_ids.insert(9);
        let b = a.encode();
        assert!(b.len() <= MAX_ENCODED);
        assert_eq!(Audience::decode(&b), Ok(a.clone()));
        for cut in 0..b.len() {
            assert!(Audience::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            Audience::decode(&long),
            Err(AudienceError::TooLong(_))
        ));
        let mut v = b.clone();
        v[0] = 2;
        assert_eq!(Audience::decode(&v), Err(AudienceError::Version(2)));
        // A register out of range (the dense uniques sketch starts after the viewers').
        let mut r = b.clone();
        let at = b.len() - (1 + 2 + 8) - REGISTERS;
        r[at] = MAX_RANK + 1;
        assert_eq!(
            Audience::decode(&r),
            Err(AudienceError::Invalid("sketch register"))
        );
        // Hashes out of order in a sparse sketch.
        let mut s = Audience::new(1);
        s.uniques.insert(1);
        s.uniques.insert(2);
        let mut e = s.encode();
        let n = e.len();
        // ... uniques: kind 0, count 2, 1, 2; filtered: kind 0, count 0.
        e.swap(n - 3 - 1, n - 3 - 9);
        assert!(Audience::decode(&e).is_err());
    }

    #[test]
    fn identities_hash_by_key_ticket_address_and_fingerprint() {
        let k = IdentityKey::derive(b"cluster secret");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = k.hash(&Identity::Source {
            ip,
            fingerprint: "mpv",
        });
        assert_eq!(
            a,
            IdentityKey::derive(b"cluster secret").hash(&Identity::Source {
                ip,
                fingerprint: "mpv"
            }),
            "every node with the secret hashes alike"
        );
        assert_ne!(
            a,
            k.hash(&Identity::Source {
                ip,
                fingerprint: "VLC"
            })
        );
        assert_ne!(
            a,
            IdentityKey::derive(b"other").hash(&Identity::Source {
                ip,
                fingerprint: "mpv"
            })
        );
        assert_ne!(k.hash(&Identity::Ticket(1)), k.hash(&Identity::Ticket(2)));
    }

    #[test]
    fn a_series_spans_the_whole_event_in_bounded_samples() {
        let mut s = Series::new(1);
        for t in 0..10_000u64 {
            s.record(Sample {
                t_s: 1000 + t,
                listeners: if t == 4321 { 99 } else { t % 7 },
                joins: t,
                ..Sample::default()
            });
        }
        assert!(s.samples().len() <= MAX_SAMPLES);
        assert_eq!(s.step_s(), 32);
        assert_eq!(s.samples()[0].t_s, 1000);
        assert_eq!(s.samples().last().unwrap().joins, 9999);
        assert_eq!(
            s.samples().iter().map(|x| x.listeners).max(),
            Some(99),
            "a peak survives folding"
        );
        assert!(s.samples().windows(2).all(|w| w[0].t_s < w[1].t_s));
    }
}
