//! Scenarios and the open-model arrival schedule, as pure code.
//!
//! Contract: a [`Scenario`] is read from TOML ([`Scenario::from_toml`]) or built from the command
//! line, then checked with [`Scenario::validate`] (every count and duration bounded, the server
//! on loopback). [`schedule`] turns it into one [`Slot`] per simulated listener with its
//! scheduled join time: the time it presses "listen", whatever happens to the others (an open
//! model: join latency is measured from this time, so a slow server cannot hide its tail).
//! The schedule is a function of the scenario and its seed only, so every process of a run
//! computes the same one and takes its share ([`Slot::index`] modulo the process count).

use crate::error::{Error, Result};
use crate::plan::dur;
use crate::plan::opt_dur;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Most listeners one run may plan.
pub const MAX_LISTENERS: u64 = 1_000_000;

/// Longest run.
pub const MAX_RUN: Duration = Duration::from_secs(3_600);

/// Most generator processes.
pub const MAX_PROCS: u32 = 64;

/// The three shipped scenario kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Ramp to N listeners and hold; optionally step up until an objective breaks.
    Capacity,
    /// N listeners press "listen" at one instant, with optional jitter.
    StartStorm,
    /// Waves of listeners leave and rejoin.
    Churn,
    /// Listeners join through the join API and listen while attackers hit the space
    /// ([`crate::run::ddos`]).
    DdosDuringBroadcast,
}

impl Kind {
    /// The name used on the command line and in TOML.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Capacity => "capacity",
            Kind::StartStorm => "start-storm",
            Kind::Churn => "churn",
            Kind::DdosDuringBroadcast => "ddos-during-broadcast",
        }
    }
}

/// How a listener reconnects after leaving or failing (churn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconnect {
    /// Rejoin at once; retry a failure after `retry_delay`.
    Naive,
    /// Rejoin after a random delay up to `rejoin_spread`; retry failures with exponential
    /// backoff and full jitter (`backoff_base` doubling up to `backoff_max`).
    Backoff,
}

/// Step-up for `capacity`: after the first hold, add listeners step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Listeners added per step.
    pub listeners: u64,
    /// Stop after reaching this many listeners.
    pub max_listeners: u64,
    /// Ramp of each step (default: the scenario's ramp).
    #[serde(default, with = "opt_dur")]
    pub ramp: Option<Duration>,
    /// Hold of each step, the window its objectives are judged on (default: the scenario's).
    #[serde(default, with = "opt_dur")]
    pub hold: Option<Duration>,
}

/// `start-storm` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storm {
    /// When everyone presses "listen", after the run's start.
    #[serde(with = "dur")]
    pub at: Duration,
    /// Join times spread uniformly over this much after `at`.
    #[serde(with = "dur")]
    pub jitter: Duration,
}

impl Default for Storm {
    fn default() -> Self {
        Storm {
            at: Duration::from_secs(2),
            jitter: Duration::ZERO,
        }
    }
}

/// `churn` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Leave-and-rejoin waves.
    pub waves: u32,
    /// Time between waves (the first comes this long after the ramp).
    #[serde(with = "dur")]
    pub wave_every: Duration,
    /// Share of listeners leaving in each wave (0..=1).
    pub wave_fraction: f64,
    /// Reconnection policy.
    pub reconnect: Reconnect,
    /// Naive: delay before retrying a failed join.
    #[serde(with = "dur")]
    pub retry_delay: Duration,
    /// Backoff: rejoins spread uniformly over this much after the wave.
    #[serde(with = "dur")]
    pub rejoin_spread: Duration,
    /// Backoff: first retry delay bound.
    #[serde(with = "dur")]
    pub backoff_base: Duration,
    /// Backoff: largest retry delay bound.
    #[serde(with = "dur")]
    pub backoff_max: Duration,
    /// Most join attempts per rejoin.
    pub max_attempts: u32,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            waves: 3,
            wave_every: Duration::from_secs(5),
            wave_fraction: 0.3,
            reconnect: Reconnect::Backoff,
            retry_delay: Duration::from_millis(10),
            rejoin_spread: Duration::from_secs(1),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_attempts: 10,
        }
    }
}

/// The synthetic host (used when no `space` is given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Opus bitrate to imitate, bit/s (packet size = bitrate / 8 / 50).
    pub bitrate: u32,
    /// Inject a gap: stop sending this long after the run's start...
    #[serde(with = "opt_dur")]
    pub pause_at: Option<Duration>,
    /// ...for this long (the packets of the pause are dropped, as by a network outage).
    #[serde(with = "dur")]
    pub pause_for: Duration,
    /// End the space when the run ends, so listeners drain to the server's close.
    pub end_space: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            bitrate: 32_000,
            pause_at: None,
            pause_for: Duration::from_secs(1),
            end_space: true,
        }
    }
}

/// The `[audience]` table: listeners that leave early, and whether the server's audience
/// numbers must match what the run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceConfig {
    /// Hold the server's numbers (views, uniques, sessions, peak, filtered) against what the
    /// listeners and attackers did; a mismatch fails the run.
    pub check: bool,
    /// Share of listeners (0..=1) whose every session ends `short_for` after its join.
    pub short_share: f64,
    /// How long a short listener's session lasts (keep it well under the server's view
    /// rule, `--view-after`).
    #[serde(with = "dur")]
    pub short_for: Duration,
    /// The server's view rule, as it states it (`view_after_s` of its audience API); the run
    /// asks the server at its start, so a scenario need not set it.
    #[serde(default, with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub view_after: Option<Duration>,
}

impl Default for AudienceConfig {
    fn default() -> Self {
        AudienceConfig {
            check: false,
            short_share: 0.0,
            short_for: Duration::from_secs(3),
            view_after: None,
        }
    }
}

impl AudienceConfig {
    /// True when nothing is asked of the audience.
    pub fn is_default(&self) -> bool {
        *self == AudienceConfig::default()
    }

    /// Whether listener `index` of a run seeded `seed` is a short one.
    pub fn is_short(&self, seed: u64, index: u64) -> bool {
        self.short_share > 0.0 && hash3(seed ^ 0x5407, index, 0) < self.short_share
    }
}

/// Share of listeners per delivery format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    /// Weight of WebSocket listeners.
    pub ws: f64,
    /// Weight of progressive Ogg listeners.
    pub ogg: f64,
    /// Weight of LL-HLS listeners (blocking playlist reloads and part fetches,
    /// [`crate::actors::hls`]).
    pub hls: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            ws: 1.0,
            ogg: 0.0,
            hls: 0.0,
        }
    }
}

impl Mix {
    fn total(&self) -> f64 {
        self.ws + self.ogg + self.hls
    }
}

/// A whole scenario. See the module docs; `docs/storm.md` documents each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    #[serde(default)]
    pub name: String,
    /// Which scenario.
    pub kind: Kind,
    /// The server's base URL (loopback only).
    #[serde(default = "default_server")]
    pub server: String,
    /// Space to listen to; without it the run creates one and drives a synthetic host.
    #[serde(default)]
    pub space: Option<String>,
    /// Listeners (capacity: the first level; start-storm, churn: all).
    pub listeners: u64,
    /// Joins spread uniformly over this much (capacity, churn).
    #[serde(default = "default_ramp", with = "dur")]
    pub ramp: Duration,
    /// Time held after the ramp (after the storm's last join; after the last churn wave).
    #[serde(default = "default_hold", with = "dur")]
    pub hold: Duration,
    /// Capacity step-up.
    #[serde(default)]
    pub step: Option<Step>,
    /// Start-storm settings.
    #[serde(default)]
    pub storm: Storm,
    /// Churn settings.
    #[serde(default)]
    pub churn: Churn,
    /// Delivery formats.
    #[serde(default)]
    pub mix: Mix,
    /// Source addresses listeners bind to, a CIDR inside 127.0.0.0/8.
    #[serde(default = "default_sources")]
    pub sources: String,
    /// Generator processes (listeners are split between them).
    #[serde(default = "default_procs")]
    pub procs: u32,
    /// Per-listener measurement bounds.
    #[serde(default)]
    pub meter: MeterConfig,
    /// Bound on TCP connect.
    #[serde(default = "default_connect_timeout", with = "dur")]
    pub connect_timeout: Duration,
    /// Bound on scheduled → first audio; a listener without audio by then failed to join.
    #[serde(default = "default_first_audio_timeout", with = "dur")]
    pub first_audio_timeout: Duration,
    /// The synthetic host.
    #[serde(default)]
    pub host: HostConfig,
    /// A raw progressive Ogg URL to listen to (and publish to) instead of levee's API.
    #[serde(default)]
    pub mount: Option<crate::plan::mount::Mount>,
    /// Base URL HLS listeners fetch from: a cache in front of `server` (`deploy/nginx`);
    /// default: `server` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls_via: Option<String>,
    /// The audience check: short listeners, and the server's numbers held against what the
    /// run did (`docs/audience.md`, `docs/storm.md`).
    #[serde(default, skip_serializing_if = "AudienceConfig::is_default")]
    pub audience: AudienceConfig,
    /// How listeners join (default: `api` for ddos-during-broadcast, else `direct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<crate::plan::scenario::JoinMode>,
    /// Attackers (ddos-during-broadcast only).
    #[serde(
        default,
        skip_serializing_if = "crate::plan::attack::AttackConfig::is_off"
    )]
    pub attack: crate::plan::attack::AttackConfig,
    /// Pass/fail objectives, e.g. `ttfa_p99 < 500ms` (see `docs/storm.md`).
    #[serde(default)]
    pub objectives: Vec<String>,
    /// Seed of the schedule's randomness.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_server() -> String {
    "http://127.0.0.1:8080".into()
}

fn default_ramp() -> Duration {
    Duration::from_secs(10)
}

fn default_hold() -> Duration {
    Duration::from_secs(30)
}

fn default_sources() -> String {
    "127.1.0.0/16".into()
}

fn default_procs() -> u32 {
    1
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_first_audio_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_seed() -> u64 {
    1
}

impl Scenario {
    /// A scenario of `kind` with every default.
    pub fn new(kind: Kind, listeners: u64) -> Self {
        Scenario {
            name: kind.label().into(),
            kind,
            server: default_server(),
            space: None,
            listeners,
            ramp: default_ramp(),
            hold: default_hold(),
            step: None,
            storm: Storm::default(),
            churn: Churn::default(),
            mix: Mix::default(),
            sources: default_sources(),
            procs: 1,
            meter: MeterConfig::default(),
            connect_timeout: default_connect_timeout(),
            first_audio_timeout: default_first_audio_timeout(),
            host: HostConfig::default(),
            mount: None,
            hls_via: None,
            audience: AudienceConfig::default(),
            join: None,
            attack: Default::default(),
            objectives: Vec::new(),
            seed: 1,
        }
    }

    /// Parses a scenario file.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| Error::invalid(e.to_string()))?;
        if s.name.is_empty() {
            s.name = s.kind.label().into();
        }
        Ok(s)
    }

    /// Checks every bound; returns what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.listeners == 0 || self.listeners > MAX_LISTENERS {
            return Err(Error::invalid(format!(
                "listeners must be 1..={MAX_LISTENERS}"
            )));
        }
        if self.procs == 0 || self.procs > MAX_PROCS {
            return Err(Error::invalid(format!("procs must be 1..={MAX_PROCS}")));
        }
        let m = &self.mix;
        if [m.ws, m.ogg, m.hls].iter().any(|w| w.is_nan() || *w < 0.0) || m.total() <= 0.0 {
            return Err(Error::invalid("mix: weights must be >= 0 and not all 0"));
        }
        if !(0.0..=1.0).contains(&self.churn.wave_fraction) {
            return Err(Error::invalid("churn.wave_fraction must be within 0..=1"));
        }
        if self.churn.waves > 1000 || self.churn.max_attempts == 0 || self.churn.max_attempts > 100
        {
            return Err(Error::invalid("churn: waves <= 1000, max_attempts 1..=100"));
        }
        if let Some(st) = &self.step {
            if st.listeners == 0 || st.max_listeners > MAX_LISTENERS {
                return Err(Error::invalid(
                    "step: listeners >= 1, max_listeners bounded",
                ));
            }
            if self.steps() > 1000 {
                return Err(Error::invalid("step: at most 1000 steps"));
            }
        }
        self.meter.validate()?;
        if self.host.bitrate < 8_000 || self.host.bitrate > 512_000 {
            return Err(Error::invalid("host.bitrate must be within 8000..=512000"));
        }
        parse_cidr(&self.sources)?;
        let a = &self.audience;
        if !(0.0..=1.0).contains(&a.short_share) || a.short_for.is_zero() {
            return Err(Error::invalid(
                "audience: short_share within 0..=1, short_for above 0",
            ));
        }
        if a.check && self.mount.is_some() {
            return Err(Error::invalid(
                "audience.check needs levee's audience API: not with a mount",
            ));
        }
        if a.check && self.planned_listeners() > parse_cidr(&self.sources)?.len() as u64 {
            return Err(Error::invalid(format!(
                "audience.check: each listener needs an address (identity) of its own: {} listeners, {} addresses in {}",
                self.planned_listeners(),
                parse_cidr(&self.sources)?.len(),
                self.sources
            )));
        }
        crate::plan::scenario::validate(self)?;
        crate::plan::mount::validate(self)?;
        crate::plan::target::Target::parse(&self.server)?;
        if self.run_length() > MAX_RUN {
            return Err(Error::invalid(format!(
                "the run would last {:?}, over {MAX_RUN:?}",
                self.run_length()
            )));
        }
        if self.planned_listeners() > MAX_LISTENERS {
            return Err(Error::invalid(format!(
                "more than {MAX_LISTENERS} listeners planned"
            )));
        }
        Ok(())
    }

    /// Listeners of every level and step.
    pub fn planned_listeners(&self) -> u64 {
        match self.kind {
            Kind::Capacity => self.windows().last().map_or(self.listeners, |w| w.0),
            _ => self.listeners,
        }
    }

    /// Capacity levels (1 without step-up).
    pub fn steps(&self) -> u32 {
        match (&self.kind, &self.step) {
            (Kind::Capacity, Some(st)) if st.max_listeners > self.listeners => {
                1 + (st.max_listeners - self.listeners).div_ceil(st.listeners) as u32
            }
            _ => 1,
        }
    }

    /// The windows of each capacity level: (listeners at that level, window start, window end),
    /// offsets from the run's start. Objectives are judged per window.
    pub fn windows(&self) -> Vec<(u64, Duration, Duration)> {
        let mut out = Vec::new();
        let mut t = LEAD + self.ramp;
        out.push((self.listeners, t, t + self.hold));
        t += self.hold;
        if let (Kind::Capacity, Some(st)) = (&self.kind, &self.step) {
            let (ramp, hold) = (st.ramp.unwrap_or(self.ramp), st.hold.unwrap_or(self.hold));
            let mut n = self.listeners;
            for _ in 1..self.steps() {
                n = (n + st.listeners).min(st.max_listeners);
                t += ramp;
                out.push((n, t, t + hold));
                t += hold;
            }
        }
        out
    }

    /// How long the run lasts from its start (listeners leave then).
    pub fn run_length(&self) -> Duration {
        match self.kind {
            Kind::Capacity => self.windows().last().map_or(LEAD, |w| w.2),
            Kind::StartStorm => LEAD + self.storm.at + self.storm.jitter + self.hold,
            Kind::Churn => LEAD + self.ramp + self.churn.wave_every * self.churn.waves + self.hold,
            Kind::DdosDuringBroadcast => LEAD + self.ramp + self.hold,
        }
    }
}

/// Time between the run's start and the first scheduled join (lets every process get ready).
pub const LEAD: Duration = Duration::from_millis(500);

/// One simulated listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its index in the run (0..planned).
    pub index: u64,
    /// First scheduled join, µs after the run's start.
    pub join_us: u64,
    /// Capacity level it belongs to (0 for the first).
    pub level: u32,
    /// Delivery format.
    pub format: Format,
}

/// A small deterministic PRNG (SplitMix64): schedules are reproducible from the seed.
#[derive(Debug, Clone, Copy)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, bound) µs.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            (self.unit() * bound as f64) as u64
        }
    }
}

/// A reproducible random number for (seed, a, b): the same in every process.
pub fn hash3(seed: u64, a: u64, b: u64) -> f64 {
    let mut r = Rng::new(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(32));
    r.next_u64();
    r.unit()
}

/// Every listener of the run with its first scheduled join. See the module docs.
pub fn schedule(sc: &Scenario) -> Vec<Slot> {
    let mut rng = Rng::new(sc.seed);
    let lead = LEAD.as_micros() as u64;
    let mut out = Vec::with_capacity(sc.planned_listeners().min(MAX_LISTENERS) as usize);
    let ws_share = sc.mix.ws / sc.mix.total();
    let ogg_share = sc.mix.ogg / sc.mix.total();
    // A reproducible draw per listener: every process and every level gets the same mix.
    let format_of = |i: u64| {
        let x = hash3(sc.seed, i, 0xF0F0);
        if x < ws_share {
            Format::Ws
        } else if x < ws_share + ogg_share || sc.mix.hls == 0.0 {
            Format::Ogg
        } else {
            Format::Hls
        }
    };
    let ramp_us = |n: u64, i: u64, ramp: Duration| ramp.as_micros() as u64 * i / n.max(1);
    match sc.kind {
        Kind::Capacity | Kind::Churn | Kind::DdosDuringBroadcast => {
            for i in 0..sc.listeners {
                out.push(Slot {
                    index: i,
                    join_us: lead + ramp_us(sc.listeners, i, sc.ramp),
                    level: 0,
                    format: format_of(i),
                });
            }
            if sc.kind == Kind::Capacity {
                let windows = sc.windows();
                let ramp = sc.step.as_ref().and_then(|s| s.ramp).unwrap_or(sc.ramp);
                for (level, pair) in windows.windows(2).enumerate() {
                    let (prev, _, prev_end) = pair[0];
                    let (n, _, _) = pair[1];
                    let add = n - prev;
                    for k in 0..add {
                        let i = out.len() as u64;
                        out.push(Slot {
                            index: i,
                            join_us: prev_end.as_micros() as u64 + ramp_us(add, k, ramp),
                            level: level as u32 + 1,
                            format: format_of(i),
                        });
                    }
                }
            }
        }
        Kind::StartStorm => {
            let at = lead + sc.storm.at.as_micros() as u64;
            for i in 0..sc.listeners {
                out.push(Slot {
                    index: i,
                    join_us: at + rng.below(sc.storm.jitter.as_micros() as u64),
                    level: 0,
                    format: format_of(i),
                });
            }
        }
    }
    out
}

/// The usable addresses of a CIDR inside 127.0.0.0/8 (network and broadcast addresses are
/// skipped for prefixes shorter than /31).
pub fn parse_cidr(cidr: &str) -> Result<Vec<Ipv4Addr>> {
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let addr: Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("sources: '{cidr}' is not an IPv4 CIDR")))?;
    let len: u32 = len
        .trim()
        .parse()
        .ok()
        .filter(|l| (8..=32).contains(l))
        .ok_or_else(|| Error::invalid(format!("sources: prefix of '{cidr}' must be /8 to /32")))?;
    if addr.octets()[0] != 127 {
        return Err(Error::invalid(format!(
            "sources: '{cidr}' is outside 127.0.0.0/8 (loopback only)"
        )));
    }
    let base = u32::from(addr) & (u32::MAX << (32 - len).min(31));
    if len >= 24 {
        let size = 1u64 << (32 - len);
        let (first, count) = if size > 2 { (1, size - 2) } else { (0, size) };
        return Ok((0..count)
            .map(|k| Ipv4Addr::from(base + (first + k) as u32))
            .collect());
    }
    // Wider than a /24: interleave the /24s (host .1 of every /24, then .2, ...), so that
    // consecutive listeners come from different prefixes, as an audience does. Bounded to the
    // first 256 /24s (65,024 addresses).
    let prefixes = (1u32 << (24 - len)).min(256);
    let mut out = Vec::with_capacity(prefixes as usize * 254);
    for host in 1..=254u32 {
        for p in 0..prefixes {
            out.push(Ipv4Addr::from(base + (p << 8) + host));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn shipped_scenarios_parse_and_validate() {
        for (name, text) in [
            (
                "capacity",
                include_str!("../../../../scenarios/capacity.toml"),
            ),
            (
                "start-storm",
                include_str!("../../../../scenarios/start-storm.toml"),
            ),
            ("churn", include_str!("../../../../scenarios/churn.toml")),
        ] {
            let sc = Scenario::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            sc.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(sc.kind.label(), name);
            for o in &sc.objectives {
                crate::plan::objective::Objective::parse(o).unwrap();
            }
        }
    }
}

/// Delivery format of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// levee's WebSocket (`/live/{id}/ws`).
    Ws,
    /// Progressive Ogg/Opus over HTTP (`/live/{id}.ogg`).
    Ogg,
    /// LL-HLS, fMP4/Opus parts (`/live/{id}/hls/index.m3u8`).
    Hls,
}

impl Format {
    /// Lowercase name.
    pub fn label(self) -> &'static str {
        match self {
            Format::Ws => "ws",
            Format::Ogg => "ogg",
            Format::Hls => "hls",
        }
    }
}

/// Bounds of the per-listener measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterConfig {
    /// No audio for longer than this is a stall, ms.
    pub stall_ms: u64,
    /// Depth of the simulated playout buffer, ms.
    pub playout_ms: u64,
    /// Listeners with audio read their socket every this many ms (0: as soon as bytes
    /// arrive). Arrival times come from the kernel's receive timestamps, so a batched read
    /// knows exactly when its newest bytes arrived, and older bytes of the same read arrived
    /// no later: stalls are measured to within this period, gaps and counts exactly.
    pub read_every_ms: u64,
    /// One listener in this many reads as soon as bytes arrive and measures timing (latency,
    /// jitter, playout underruns) on every frame; the others leave timing to them. 1: all.
    pub timed_every: u64,
    /// How batched reads reach the kernel.
    pub batch_io: BatchIo,
}

/// How a listener thread collects its batched reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BatchIo {
    /// io_uring where the kernel offers it, else epoll.
    #[default]
    Auto,
    /// One multishot receive per socket, all collected by one system call per period.
    IoUring,
    /// A readiness event and one `recvmsg` per socket and period.
    Epoll,
}

/// Longest [`MeterConfig::read_every_ms`] accepted.
pub const MAX_READ_EVERY_MS: u64 = 1_000;

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            stall_ms: 1_000,
            playout_ms: 200,
            read_every_ms: 100,
            timed_every: 10,
            batch_io: BatchIo::Auto,
        }
    }
}

impl MeterConfig {
    /// Refuses bounds that would measure nothing useful.
    pub fn validate(&self) -> Result<()> {
        if self.stall_ms == 0 {
            return Err(Error::invalid("meter.stall_ms must be > 0"));
        }
        if self.read_every_ms > MAX_READ_EVERY_MS || self.read_every_ms * 2 > self.stall_ms {
            return Err(Error::invalid(format!(
                "meter.read_every_ms must be at most {MAX_READ_EVERY_MS} and at most half of stall_ms"
            )));
        }
        if self.timed_every == 0 {
            return Err(Error::invalid("meter.timed_every must be >= 1"));
        }
        Ok(())
    }

    /// Whether listener `index` measures timing (see [`MeterConfig::timed_every`]).
    pub fn timed(&self, index: u64) -> bool {
        self.read_every_ms == 0 || index.is_multiple_of(self.timed_every.max(1))
    }
}

/// How listeners join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// Open the stream URL directly (an `open` space).
    Direct,
    /// Join through `POST /api/spaces/{id}/join`, then open the ticket's URL.
    Api,
}

/// The join mode of a scenario: as set, else `api` for `ddos-during-broadcast` and `direct`
/// for the others.
pub fn mode(sc: &Scenario) -> JoinMode {
    sc.join.unwrap_or(if sc.kind == Kind::DdosDuringBroadcast {
        JoinMode::Api
    } else {
        JoinMode::Direct
    })
}

/// Checks what only this scenario may use: attackers need `kind = "ddos-during-broadcast"`.
pub fn validate(sc: &Scenario) -> Result<()> {
    sc.attack.validate()?;
    if sc.kind != Kind::DdosDuringBroadcast && !sc.attack.active().is_empty() {
        return Err(Error::invalid(
            "attack: attackers run only in the ddos-during-broadcast scenario",
        ));
    }
    if sc.kind == Kind::DdosDuringBroadcast && sc.mount.is_some() {
        return Err(Error::invalid(
            "ddos-during-broadcast runs against levee's API, not a raw mount",
        ));
    }
    if sc.mix.hls > 0.0 {
        if sc.mount.is_some() {
            return Err(Error::invalid(
                "a mount URL is listened to on Ogg only (mix.hls must be 0)",
            ));
        }
        if mode(sc) == JoinMode::Api {
            return Err(Error::invalid(
                "HLS listeners join directly (HLS is served for open spaces only): \
                 mix.hls must be 0 with join = \"api\"",
            ));
        }
    }
    if let Some(via) = &sc.hls_via {
        crate::plan::target::Target::parse(via)?;
        if sc.mix.hls == 0.0 {
            return Err(Error::invalid("hls_via is set but mix.hls is 0"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::objective::Objective;

    #[test]
    fn capacity_ramp_is_uniform_and_open() {
        let mut sc = Scenario::new(Kind::Capacity, 100);
        sc.ramp = Duration::from_secs(10);
        let s = schedule(&sc);
        assert_eq!(s.len(), 100);
        assert_eq!(s[0].join_us, 500_000);
        assert_eq!(s[50].join_us, 500_000 + 5_000_000);
        assert!(s.windows(2).all(|w| w[1].join_us > w[0].join_us));
        assert_eq!(
            sc.run_length(),
            Duration::from_millis(500 + 10_000 + 30_000)
        );
    }

    #[test]
    fn capacity_steps_add_levels_with_their_windows() {
        let mut sc = Scenario::new(Kind::Capacity, 100);
        sc.ramp = Duration::from_secs(2);
        sc.hold = Duration::from_secs(5);
        sc.step = Some(Step {
            listeners: 50,
            max_listeners: 220,
            ramp: None,
            hold: None,
        });
        assert_eq!(sc.steps(), 4);
        let w = sc.windows();
        let levels: Vec<u64> = w.iter().map(|x| x.0).collect();
        assert_eq!(levels, [100, 150, 200, 220]);
        assert_eq!(w[1].1, Duration::from_millis(500 + 2_000 + 5_000 + 2_000));
        let s = schedule(&sc);
        assert_eq!(s.len(), 220);
        assert_eq!(sc.planned_listeners(), 220);
        assert_eq!(s.iter().filter(|x| x.level == 3).count(), 20);
        assert!(s[100].join_us >= w[0].2.as_micros() as u64);
    }

    #[test]
    fn start_storm_joins_within_the_jitter_and_reproducibly() {
        let mut sc = Scenario::new(Kind::StartStorm, 1000);
        sc.storm.at = Duration::from_secs(1);
        sc.storm.jitter = Duration::from_millis(200);
        let s = schedule(&sc);
        assert!(s
            .iter()
            .all(|x| (1_500_000..1_700_000).contains(&x.join_us)));
        assert_eq!(s, schedule(&sc));
        sc.storm.jitter = Duration::ZERO;
        assert!(schedule(&sc).iter().all(|x| x.join_us == 1_500_000));
    }

    #[test]
    fn format_mix_is_spread_evenly() {
        let mut sc = Scenario::new(Kind::Capacity, 1000);
        let mix = |ws, ogg, hls| Mix { ws, ogg, hls };
        sc.mix = mix(3.0, 1.0, 0.0);
        let s = schedule(&sc);
        let ws = s.iter().filter(|x| x.format == Format::Ws).count();
        assert!((700..=800).contains(&ws), "{ws}");
        assert!(s.iter().all(|x| x.format != Format::Hls));
        sc.mix = mix(0.0, 1.0, 0.0);
        assert!(schedule(&sc).iter().all(|x| x.format == Format::Ogg));
        sc.mix = mix(0.0, 0.0, 1.0);
        assert!(schedule(&sc).iter().all(|x| x.format == Format::Hls));
        sc.mix = mix(1.0, 1.0, 2.0);
        let hls = schedule(&sc)
            .iter()
            .filter(|x| x.format == Format::Hls)
            .count();
        assert!((450..=550).contains(&hls), "{hls}");
        sc.mix = mix(-1.0, 1.0, 1.0);
        assert!(sc.validate().is_err());
        sc.mix = mix(3.0, 1.0, 0.0);
        // Any two processes out of two get an even share.
        let even = s
            .iter()
            .filter(|x| x.index % 2 == 0 && x.format == Format::Ogg)
            .count();
        assert!((100..=150).contains(&even), "{even}");
    }

    #[test]
    fn hls_listeners_join_directly_and_a_cache_needs_them() {
        let mut sc = Scenario::new(Kind::Capacity, 10);
        sc.mix.hls = 1.0;
        sc.validate().unwrap();
        sc.hls_via = Some("http://127.0.0.1:8081".into());
        sc.validate().unwrap();
        sc.hls_via = Some("http://10.0.0.1:8081".into());
        assert!(sc.validate().is_err(), "a cache off loopback");
        sc.hls_via = None;
        sc.join = Some(JoinMode::Api);
        assert!(sc.validate().is_err(), "tickets are not for HLS");
        sc.join = None;
        sc.mix.hls = 0.0;
        sc.hls_via = Some("http://127.0.0.1:8081".into());
        assert!(sc.validate().is_err(), "a cache without HLS listeners");
    }

    #[test]
    fn cidr_gives_loopback_hosts_only() {
        let a = parse_cidr("127.0.1.0/24").unwrap();
        assert_eq!(a.len(), 254);
        assert_eq!(a[0], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(a[253], Ipv4Addr::new(127, 0, 1, 254));
        assert_eq!(
            parse_cidr("127.0.0.1").unwrap(),
            [Ipv4Addr::new(127, 0, 0, 1)]
        );
        assert_eq!(parse_cidr("127.0.0.8/31").unwrap().len(), 2);
        assert!(parse_cidr("10.0.0.0/8").is_err());
        assert!(parse_cidr("127.0.0.0/4").is_err());
        // Wide ranges interleave their /24s.
        let wide = parse_cidr("127.1.0.0/16").unwrap();
        assert_eq!(wide.len(), 256 * 254);
        assert_eq!(wide[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(wide[1], Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(wide[256], Ipv4Addr::new(127, 1, 0, 2));
        assert_eq!(parse_cidr("127.0.0.0/8").unwrap().len(), 256 * 254);
    }

    #[test]
    fn toml_scenarios_parse_with_defaults_and_refuse_unknown_fields() {
        let sc = Scenario::from_toml(
            r#"
            kind = "churn"
            listeners = 200
            ramp = "2s"
            objectives = ["ttfa_p99 < 500ms"]
            [churn]
            waves = 2
            wave_every = "3s"
            reconnect = "naive"
            [host]
            pause_at = "4s"
            "#,
        )
        .unwrap();
        assert_eq!(sc.name, "churn");
        assert_eq!(sc.churn.reconnect, Reconnect::Naive);
        assert_eq!(sc.churn.wave_fraction, 0.3);
        assert_eq!(sc.host.pause_at, Some(Duration::from_secs(4)));
        assert_eq!(sc.host.pause_for, Duration::from_secs(1));
        assert_eq!(
            sc.run_length(),
            Duration::from_millis(500 + 2000 + 6000 + 30_000)
        );
        sc.validate().unwrap();
        assert!(Scenario::from_toml("kind = \"capacity\"\nlisteners = 1\nbogus = 1").is_err());
        let mut bad = sc.clone();
        bad.server = "http://10.1.2.3:80".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn read_settings_are_bounded_and_pick_the_timed_listeners() {
        let mut c = MeterConfig::default();
        assert!(c.validate().is_ok());
        assert!((0..100).filter(|&i| c.timed(i)).count() == 10);
        c.read_every_ms = 0;
        assert!((0..100).all(|i| c.timed(i)));
        c.read_every_ms = 600;
        assert!(c.validate().is_err(), "over half the stall bound");
        c.read_every_ms = 100;
        c.timed_every = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_shipped_scenario_parses_and_validates() {
        let sc = Scenario::from_toml(include_str!(
            "../../../../scenarios/ddos-during-broadcast.toml"
        ))
        .unwrap();
        sc.validate().unwrap();
        assert_eq!(sc.kind, Kind::DdosDuringBroadcast);
        assert_eq!(mode(&sc), JoinMode::Api);
        assert_eq!(sc.attack.active().len(), 6);
        for o in &sc.objectives {
            Objective::parse(o).unwrap();
        }
    }
}
