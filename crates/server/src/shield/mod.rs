//! The shield in front of every endpoint: per-source limits, bans, the join API's admission
//! and tickets, and escalation to proof-of-work under pressure.
//!
//! Cost model: a refusal at accept is a few atomic adds and a close; a refused join is a
//! sketch lookup and a small JSON answer; a refused ticket is one HMAC. None of them allocates
//! per-source state: limiter memory is fixed at start (count-min sketches), bans are a bounded
//! map checked in O(1) (one probe per prefix length in use, see `bans`), and the waiting room
//! is two counters per space.

use crate::clock::{mono_us, wall_us};
pub use crate::config::ShieldConfig;
use levee_core::cidrmap::CidrMap;
use levee_core::pressure::{Pressure, Signals};
use levee_core::replay::{AntiReplay, IssueBudget, ReplayError, REPLAY_WINDOW};
use levee_core::sketch::{CountMin, RateSketch, DEPTH};
use levee_core::source::{self, Cidr, SourceKey};
use levee_core::ticket::{Challenge, Signer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock, RwLock};

mod bans;
pub mod nft;
mod refusal;
pub use bans::Ban;
use bans::Bans;
pub use refusal::{IngestReason, Reason, Refusal, ShieldReason, Wire};

/// How a space's stream endpoints admit listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone may connect; the join API is optional.
    Open = 0,
    /// A ticket from the join API is required.
    Ticketed = 1,
    /// A ticket is required and the join API demands proof of work.
    Challenge = 2,
}

impl Access {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Ticketed => "ticketed",
            Access::Challenge => "challenge",
        }
    }
    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "open" => Some(Access::Open),
            "ticketed" => Some(Access::Ticketed),
            "challenge" => Some(Access::Challenge),
            _ => None,
        }
    }
    fn from_u8(v: u8) -> Access {
        match v {
            0 => Access::Open,
            1 => Access::Ticketed,
            _ => Access::Challenge,
        }
    }
}

/// Shield counters.
#[derive(Debug, Default)]
pub struct ShieldCounters {
    /// Refusals by reason, indexed by [`ShieldReason::index`].
    refused: [AtomicU64; ShieldReason::COUNT],
    /// Join requests received.
    pub join_requests: AtomicU64,
    /// Join requests that passed the per-source limits (what drives the node's escalation).
    pub joins_passed: AtomicU64,
    /// Tickets issued.
    pub tickets: AtomicU64,
    /// Callers told to wait in line.
    pub queued: AtomicU64,
    /// Callers who brought a place in another node's line of the space (a cluster) and were
    /// placed in this node's by the wait they had left.
    pub queue_moved: AtomicU64,
    /// Challenges handed out.
    pub challenges: AtomicU64,
    /// Automatic bans imposed.
    pub bans: AtomicU64,
}

impl ShieldCounters {
    /// Counts a refusal for `reason`.
    pub fn refuse(&self, reason: ShieldReason) {
        self.refused[reason.index()].fetch_add(1, Relaxed);
    }
    /// Refusals counted for `reason`.
    pub fn refused(&self, reason: ShieldReason) -> u64 {
        self.refused[reason.index()].load(Relaxed)
    }
    fn total_refused(&self) -> u64 {
        self.refused.iter().map(|a| a.load(Relaxed)).sum()
    }
}

/// Most entries of the allowlist.
pub const MAX_ALLOW: usize = 4_096;

/// The allowlist: in the order given (for the admin API) and by prefix length (for checks).
#[derive(Debug)]
struct Allow {
    list: Vec<Cidr>,
    map: CidrMap<()>,
}

impl Allow {
    fn new(list: &[Cidr]) -> Self {
        let mut a = Allow {
            list: Vec::new(),
            map: CidrMap::new(),
        };
        for c in list {
            a.add(*c);
        }
        a
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.map.lookup(ip, |_| true).found.is_some()
    }

    fn add(&mut self, cidr: Cidr) -> bool {
        if self.map.contains_key(&cidr) {
            return true;
        }
        if self.list.len() >= MAX_ALLOW {
            return false;
        }
        self.map.insert(cidr, ());
        self.list.push(cidr);
        true
    }

    fn remove(&mut self, cidr: Cidr) -> bool {
        if self.map.remove(&cidr).is_none() {
            return false;
        }
        self.list.retain(|c| *c != cidr);
        true
    }
}

/// Shortest window the escalation's signals are rated over, µs. Rates over a few
/// milliseconds are noise: the CPU clock ticks in 10 ms steps, so one tick in 5 ms reads as
/// two cores busy, and one join in 1 ms as a thousand a second. A shorter window is not rated:
/// its counts carry over to the next tick.
pub const MIN_SIGNAL_WINDOW_US: u64 = 500_000;

/// Node-wide escalation and the signals that drive it.
#[derive(Debug)]
struct NodeState {
    pressure: Pressure,
    last_joins: u64,
    last_refused: u64,
    last_connections: u64,
    last_cpu_ticks: u64,
    last_us: u64,
}

/// The node's shield. See the module docs.
pub struct Shield {
    /// Settings in force.
    pub cfg: ShieldConfig,
    /// Signs and verifies tickets, queue tokens and challenges.
    pub signer: Signer,
    /// Counters.
    pub counters: ShieldCounters,
    conns: CountMin,
    conn_rate: RateSketch,
    join_rate: RateSketch,
    strikes: RateSketch,
    /// Counters of the challenges this node signs, at most W per challenge lifetime.
    issued: Mutex<IssueBudget>,
    /// Spent challenges, exactly (a sliding bitmap of W counters per issuing node).
    spent: Mutex<AntiReplay>,
    /// This node's identity in the challenges it signs (random at start).
    origin: u64,
    /// Read on every accept and join (shared), written on a ban, a lift or an expiry.
    bans: RwLock<Bans>,
    /// Bans held, readable without the lock: with none, a check costs one atomic load.
    ban_count: AtomicUsize,
    allow: RwLock<Allow>,
    /// The kernel mirror of the bans (`--nft-table`), once started.
    nft: OnceLock<nft::Mirror>,
    node: Mutex<NodeState>,
    node_difficulty: AtomicU8,
}

/// A connection's place in the per-source counts (`None` for exempt sources); give it back
/// with [`Shield::release_connection`].
pub type ConnKeys = Option<(SourceKey, SourceKey)>;

fn cpu_ticks() -> u64 {
    // utime + stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

impl Shield {
    /// A shield with fresh random sketch seeds.
    pub fn new(cfg: ShieldConfig) -> Self {
        let now = mono_us();
        let seeds = || -> [u64; DEPTH] { std::array::from_fn(|_| crate::random::u64()) };
        let w = cfg.sketch_width;
        let origin = crate::random::u64();
        Shield {
            signer: Signer::new(&cfg.secret, cfg.key_period_s),
            counters: ShieldCounters::default(),
            conns: CountMin::new(w, seeds()),
            conn_rate: RateSketch::new(w, 1_000_000, seeds(), now),
            join_rate: RateSketch::new(w, 1_000_000, seeds(), now),
            strikes: RateSketch::new(w, 10_000_000, seeds(), now),
            issued: Mutex::new(IssueBudget::new(REPLAY_WINDOW, cfg.challenge_ttl_s)),
            origin,
            spent: Mutex::new(AntiReplay::new(
                origin,
                REPLAY_WINDOW,
                // Another node's window unused this long remembers only expired challenges.
                2 * (cfg.challenge_ttl_s + levee_core::replay::CLOCK_SLACK_S) * 1_000_000,
                now,
            )),
            bans: RwLock::new(Bans::default()),
            ban_count: AtomicUsize::new(0),
            allow: RwLock::new(Allow::new(&cfg.allow)),
            nft: OnceLock::new(),
            node: Mutex::new(NodeState {
                pressure: Pressure::new(cfg.node_pressure.clone()),
                last_joins: 0,
                last_refused: 0,
                last_connections: 0,
                last_cpu_ticks: cpu_ticks(),
                last_us: now,
            }),
            node_difficulty: AtomicU8::new(0),
            cfg,
        }
    }

    /// Bytes of limiter state: the sketches, fixed at start, and the spent-challenge windows
    /// (this node's, fixed at start, and one per other node whose challenges it redeemed).
    pub fn limiter_bytes(&self) -> usize {
        self.conns.bytes()
            + self.conn_rate.bytes()
            + self.join_rate.bytes()
            + self.strikes.bytes()
            + self.spent.lock().expect("spent lock").bytes()
    }

    /// True when `ip` is on the allowlist (one probe per prefix length in use).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.read().expect("allow lock").contains(ip)
    }

    /// The source of a request: the socket's address, or, from a trusted proxy, the last
    /// untrusted address of `X-Forwarded-For`.
    pub fn source_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let trusted = |ip: IpAddr| self.cfg.trusted_proxies.iter().any(|c| c.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        forwarded_for
            .into_iter()
            .flat_map(|h| h.rsplit(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .find(|ip| !trusted(*ip))
            .unwrap_or(peer)
    }

    /// The ban in force on `ip`, if any. O(1): one probe per prefix length in use, under a
    /// shared lock (bans that ended are skipped here and dropped by [`Shield::tick`]).
    pub fn banned(&self, ip: IpAddr, now: u64) -> Option<Ban> {
        if self.ban_count.load(Relaxed) == 0 {
            return None;
        }
        self.bans.read().expect("bans lock").find(ip, now)
    }

    /// Changes the bans under the write lock, keeping [`Shield::ban_count`] in step.
    fn with_bans<R>(&self, f: impl FnOnce(&mut Bans) -> R) -> R {
        let mut bans = self.bans.write().expect("bans lock");
        let r = f(&mut bans);
        self.ban_count.store(bans.len(), Relaxed);
        r
    }

    /// Hands `u` to the kernel mirror, if there is one (never waits). Called under the lock of
    /// what changed, so that the mirror sees the changes in their order.
    fn mirror(&self, u: impl FnOnce() -> nft::Update) {
        if let Some(m) = self.nft.get() {
            m.send(u());
        }
    }

    /// Mirrors a ban just imposed and the bans its insertion evicted.
    fn mirror_ban(&self, cidr: Cidr, until_us: u64, evicted: Vec<Cidr>) {
        self.mirror(|| nft::Update::Ban { cidr, until_us });
        for c in evicted {
            self.mirror(|| nft::Update::Unban(c));
        }
    }

    /// What the kernel mirror exempts: the allowlist and the trusted proxies.
    pub fn exempt(&self) -> Vec<Cidr> {
        let allow = self.allow.read().expect("allow lock");
        allow
            .list
            .iter()
            .chain(&self.cfg.trusted_proxies)
            .copied()
            .collect()
    }

    /// Mirrors the bans from now on into the kernel through `m` (see [`nft`]; started with
    /// [`Shield::exempt`]), and those held now.
    pub fn mirror_to(&self, m: nft::Mirror) {
        if self.nft.set(m).is_ok() && self.ban_count.load(Relaxed) > 0 {
            self.sync_mirror();
        }
    }

    /// The kernel mirror, if started.
    pub fn nft(&self) -> Option<&nft::Mirror> {
        self.nft.get()
    }

    /// Stops the kernel mirror, deleting its table (at shutdown).
    pub fn stop_mirror(&self) {
        if let Some(m) = self.nft.get() {
            m.stop();
        }
    }

    /// Sends the mirror everything: the bans, the allowlist and the trusted proxies.
    fn sync_mirror(&self) {
        self.with_bans(|bans| {
            self.mirror(|| nft::Update::Sync {
                bans: bans
                    .in_expiry_order()
                    .iter()
                    .map(|b| (b.cidr, b.until_us))
                    .collect(),
                allow: self.exempt(),
            });
        });
    }

    /// Records a refusal of `ip`; bans it (for a doubling time) when it keeps offending.
    fn strike(&self, ip: IpAddr, now: u64) {
        let (narrow, _) = source::keys(ip);
        if self.strikes.observe(narrow, now) < self.cfg.strikes_to_ban {
            return;
        }
        let len = if source::canonical(ip).is_ipv4() {
            32
        } else {
            64
        };
        let cidr = Cidr::new(ip, len);
        let imposed = self.with_bans(|bans| {
            bans.expire(now);
            if bans.contains(cidr) {
                return None;
            }
            let count = bans.repeats(cidr) + 1;
            let secs = self
                .cfg
                .ban_base
                .as_secs()
                .saturating_mul(1 << (count - 1).min(20));
            let secs = secs.min(self.cfg.ban_max.as_secs());
            let until_us = now + secs * 1_000_000;
            let evicted = bans.insert(
                Ban {
                    cidr,
                    until_us,
                    count,
                    manual: false,
                },
                self.cfg.max_bans,
            );
            self.mirror_ban(cidr, until_us, evicted);
            Some((secs, count))
        });
        let Some((secs, count)) = imposed else {
            return;
        };
        self.counters.bans.fetch_add(1, Relaxed);
        tracing::warn!(%cidr, seconds = secs, repeat = count, "banned a repeat offender");
    }

    /// Admits a new connection from `peer`, or says why not. Cheap: a few atomic operations.
    pub fn admit_connection(&self, peer: IpAddr, now: u64) -> Result<ConnKeys, Refusal> {
        if self.allowed(peer) || self.cfg.trusted_proxies.iter().any(|c| c.contains(peer)) {
            return Ok(None);
        }
        if self.banned(peer, now).is_some() {
            // Not even an answer.
            return Err(self.refuse(ShieldReason::Banned, Wire::Silent, "banned"));
        }
        let (narrow, wide) = source::keys(peer);
        if self.conn_rate.observe(narrow, now) > self.cfg.conn_rate_per_ip
            || self.conn_rate.observe(wide, now) > self.cfg.conn_rate_per_prefix
        {
            self.strike(peer, now);
            let r = self.refuse(
                ShieldReason::ConnRate,
                Wire::Http(429),
                "connecting too fast",
            );
            return Err(r.retry_after(5_000));
        }
        let n = self.conns.add(narrow, 1);
        let w = self.conns.add(wide, 1);
        if n > self.cfg.max_conns_per_ip || w > self.cfg.max_conns_per_prefix {
            self.release_connection(Some((narrow, wide)));
            self.strike(peer, now);
            let r = self.refuse(
                ShieldReason::ConnLimit,
                Wire::Http(429),
                "too many open connections",
            );
            return Err(r.retry_after(5_000));
        }
        Ok(Some((narrow, wide)))
    }

    /// Gives back a connection's place in the per-source counts.
    pub fn release_connection(&self, keys: ConnKeys) {
        if let Some((narrow, wide)) = keys {
            self.conns.add(narrow, -1);
            self.conns.add(wide, -1);
        }
    }

    /// Counts a join request from `ip`; refuses it when the source asks too fast.
    pub fn admit_join(&self, ip: IpAddr, now: u64) -> Result<(), Refusal> {
        self.counters.join_requests.fetch_add(1, Relaxed);
        if self.allowed(ip) {
            self.counters.joins_passed.fetch_add(1, Relaxed);
            return Ok(());
        }
        // Ask again in 2–5 s, spread so that refused callers do not come back together.
        let retry = || 2_000 + (crate::random::unit() * 3_000.0) as u64;
        if self.banned(ip, now).is_some() {
            let r = self.refuse(
                ShieldReason::Banned,
                Wire::Http(403),
                "this network is temporarily banned",
            );
            return Err(r.retry_after(retry()));
        }
        let (narrow, wide) = source::keys(ip);
        if self.join_rate.observe(narrow, now) > self.cfg.join_rate_per_ip
            || self.join_rate.observe(wide, now) > self.cfg.join_rate_per_prefix
        {
            self.strike(ip, now);
            let r = self.refuse(
                ShieldReason::JoinRate,
                Wire::Http(429),
                "too many join requests from this network: slow down",
            );
            return Err(r.retry_after(retry()));
        }
        self.counters.joins_passed.fetch_add(1, Relaxed);
        Ok(())
    }

    /// A refusal for `reason`, counted now (once).
    pub fn refuse(
        &self,
        reason: ShieldReason,
        wire: Wire,
        detail: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Refusal {
        self.counters.refuse(reason);
        Refusal::new(reason, wire, detail)
    }

    /// Refuses a failed ticket or challenge from `ip` (counted, and a strike toward a ban).
    pub fn offence(
        &self,
        ip: IpAddr,
        reason: ShieldReason,
        wire: Wire,
        detail: impl Into<std::borrow::Cow<'static, str>>,
        now: u64,
    ) -> Refusal {
        if !self.allowed(ip) {
            self.strike(ip, now);
        }
        self.refuse(reason, wire, detail)
    }

    /// This node's identity in the challenges it signs.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// A new challenge (to be signed) for `space`, bound to `prefix`, at wall second `now_s`;
    /// or, once this node issued W ([`REPLAY_WINDOW`]) within a challenge's lifetime, the
    /// seconds after which to ask again. The bound is what makes [`Shield::spend_challenge`]
    /// exact for honest callers: no unexpired challenge can have left the replay window.
    pub fn new_challenge(
        &self,
        space: &str,
        prefix: Option<Cidr>,
        difficulty: u8,
        now_s: u64,
    ) -> Result<Challenge, u64> {
        let counter = self.issued.lock().expect("issue lock").issue(now_s)?;
        self.counters.challenges.fetch_add(1, Relaxed);
        Ok(Challenge {
            space: space.to_owned(),
            difficulty,
            expires_s: now_s + self.cfg.challenge_ttl_s,
            prefix,
            origin: self.origin,
            counter,
        })
    }

    /// Marks a verified solution's challenge as spent: `Ok` exactly once per challenge while
    /// it is valid, whatever the number spent before.
    pub fn spend_challenge(&self, c: &Challenge, now: u64) -> Result<(), ReplayError> {
        self.spent
            .lock()
            .expect("spent lock")
            .spend(c.origin, c.counter, now)
    }

    /// The node-wide difficulty in force (0 = no challenge).
    pub fn node_difficulty(&self) -> u8 {
        self.node_difficulty.load(Relaxed)
    }

    /// Feeds the node's signals (called about once a second).
    pub fn tick(&self, connections: u64, now: u64) -> Signals {
        if self.ban_count.load(Relaxed) > 0 {
            self.with_bans(|bans| bans.expire(now));
        }
        if self.nft.get().is_some_and(nft::Mirror::take_resync) {
            self.sync_mirror();
        }
        let mut n = self.node.lock().expect("node lock");
        if now.saturating_sub(n.last_us) < MIN_SIGNAL_WINDOW_US {
            // Too short a window to rate (the ticker's first tick comes at once): the counts
            // carry over to the next tick.
            return Signals::default();
        }
        let dt = now.saturating_sub(n.last_us) as f64 / 1e6;
        let joins = self.counters.joins_passed.load(Relaxed);
        let refused = self.counters.total_refused();
        let ticks = cpu_ticks();
        let requests = (joins - n.last_joins) + (connections - n.last_connections);
        let signals = Signals {
            join_rate: (joins - n.last_joins) as f64 / dt,
            reject_ratio: if requests == 0 {
                0.0
            } else {
                ((refused - n.last_refused) as f64 / requests as f64).min(1.0)
            },
            // Linux reports 100 clock ticks per second.
            cpu: ticks.saturating_sub(n.last_cpu_ticks) as f64 / 100.0 / dt,
        };
        n.last_joins = joins;
        n.last_refused = refused;
        n.last_connections = connections;
        n.last_cpu_ticks = ticks;
        n.last_us = now;
        let d = n.pressure.update(signals, now);
        self.node_difficulty.store(d, Relaxed);
        signals
    }

    /// Bans `cidr` for `secs` (operator action).
    pub fn ban(&self, cidr: Cidr, secs: u64, now: u64) {
        self.with_bans(|bans| {
            bans.expire(now);
            let until_us = now.saturating_add(secs.saturating_mul(1_000_000));
            let evicted = bans.insert(
                Ban {
                    cidr,
                    until_us,
                    count: 0,
                    manual: true,
                },
                self.cfg.max_bans,
            );
            self.mirror_ban(cidr, until_us, evicted);
        });
    }

    /// Lifts the ban on `cidr`; false if there was none.
    pub fn unban(&self, cidr: Cidr) -> bool {
        self.with_bans(|bans| {
            let lifted = bans.remove(cidr);
            if lifted {
                self.mirror(|| nft::Update::Unban(cidr));
            }
            lifted
        })
    }

    /// The bans in force.
    pub fn bans(&self, now: u64) -> Vec<Ban> {
        self.with_bans(|bans| {
            bans.expire(now);
            bans.in_expiry_order()
        })
    }

    /// The allowlist.
    pub fn allowlist(&self) -> Vec<Cidr> {
        self.allow.read().expect("allow lock").list.clone()
    }

    /// Adds `cidr` to the allowlist (at most [`MAX_ALLOW`] entries).
    pub fn allow(&self, cidr: Cidr) -> bool {
        let mut allow = self.allow.write().expect("allow lock");
        let added = allow.add(cidr);
        if added {
            self.mirror(|| nft::Update::Allow(cidr));
        }
        added
    }

    /// Removes `cidr` from the allowlist; false if it was not there.
    pub fn disallow(&self, cidr: Cidr) -> bool {
        let mut allow = self.allow.write().expect("allow lock");
        let removed = allow.remove(cidr);
        // A trusted proxy stays exempt in the kernel, as it does here.
        if removed && !self.cfg.trusted_proxies.contains(&cidr) {
            self.mirror(|| nft::Update::Disallow(cidr));
        }
        removed
    }

    /// Access of a space given its configured access and its own escalation.
    pub fn effective_access(&self, configured: Access, space_difficulty: u8) -> (Access, u8) {
        let difficulty = space_difficulty.max(self.node_difficulty());
        let escalated = if difficulty > 0 {
            Access::Challenge
        } else {
            Access::Open
        };
        let access = configured.max(escalated);
        let difficulty = match access {
            // A space set to `challenge` always asks for at least the first level.
            Access::Challenge => difficulty.max(
                self.cfg
                    .space_pressure
                    .levels
                    .first()
                    .copied()
                    .unwrap_or(12),
            ),
            _ => 0,
        };
        (access, difficulty)
    }

    /// Access stored in an atomic (see `SpaceShield`).
    pub fn load_access(a: &AtomicU8) -> Access {
        Access::from_u8(a.load(Relaxed))
    }
}

/// A space's part of the shield: its configured access, its line and its escalation.
pub struct SpaceShield {
    /// Configured access (an [`Access`] as u8).
    pub access: AtomicU8,
    /// The waiting room.
    pub line: Mutex<levee_core::admission::Line>,
    /// Its own escalation.
    pub pressure: Mutex<Pressure>,
    /// Difficulty its escalation asks for now.
    pub difficulty: AtomicU8,
    /// Join requests to this space.
    pub join_requests: AtomicU64,
    /// Join requests refused (limits, bad tokens, failed challenges).
    pub join_refused: AtomicU64,
    last: Mutex<(u64, u64, u64)>,
}

impl SpaceShield {
    /// A space's shield with `access` and a line opening now (pre-queue until `start_us`, µs
    /// since the Unix epoch; the line itself runs on the monotonic clock).
    pub fn new(cfg: &ShieldConfig, access: Access, start_us: Option<u64>) -> Self {
        let now = mono_us();
        let start_us = start_us.map(|s| now + s.saturating_sub(wall_us()));
        SpaceShield {
            access: AtomicU8::new(access as u8),
            line: Mutex::new(levee_core::admission::Line::new(cfg.line, now, start_us)),
            pressure: Mutex::new(Pressure::new(cfg.space_pressure.clone())),
            difficulty: AtomicU8::new(0),
            join_requests: AtomicU64::new(0),
            join_refused: AtomicU64::new(0),
            last: Mutex::new((0, 0, now)),
        }
    }

    /// Feeds this space's signals (called about once a second).
    pub fn tick(&self, now: u64) {
        let mut last = self.last.lock().expect("space shield lock");
        if now.saturating_sub(last.2) < MIN_SIGNAL_WINDOW_US {
            return;
        }
        let dt = now.saturating_sub(last.2) as f64 / 1e6;
        let req = self.join_requests.load(Relaxed);
        let refused = self.join_refused.load(Relaxed);
        let dr = req - last.0;
        let signals = Signals {
            join_rate: dr as f64 / dt,
            reject_ratio: if dr == 0 {
                0.0
            } else {
                ((refused - last.1) as f64 / dr as f64).min(1.0)
            },
            cpu: 0.0,
        };
        *last = (req, refused, now);
        let d = self
            .pressure
            .lock()
            .expect("pressure lock")
            .update(signals, now);
        self.difficulty.store(d, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The shield reason of a refusal, if refused.
    fn why<T>(r: Result<T, Refusal>) -> Option<ShieldReason> {
        match r {
            Ok(_) => None,
            Err(Refusal {
                reason: Reason::Shield(r),
                ..
            }) => Some(r),
            Err(other) => panic!("not a shield refusal: {other:?}"),
        }
    }

    fn shield(f: impl FnOnce(&mut ShieldConfig)) -> Shield {
        let mut cfg = ShieldConfig {
            sketch_width: 1024,
            ..Default::default()
        };
        f(&mut cfg);
        Shield::new(cfg)
    }

    #[test]
    fn concurrent_connections_per_address_are_capped_and_released() {
        let s = shield(|c| c.max_conns_per_ip = 3);
        let a = ip("10.0.0.1");
        let permits: Vec<_> = (0..3).map(|i| s.admit_connection(a, i).unwrap()).collect();
        assert_eq!(
            why(s.admit_connection(a, 10)),
            Some(ShieldReason::ConnLimit)
        );
        assert!(
            s.admit_connection(ip("10.0.0.2"), 10).is_ok(),
            "a neighbour is not punished"
        );
        for p in permits {
            s.release_connection(p);
        }
        assert!(s.admit_connection(a, 20).is_ok());
    }

    #[test]
    fn a_network_is_capped_even_when_addresses_rotate() {
        let s = shield(|c| c.max_conns_per_prefix = 10);
        for i in 1..=10 {
            s.admit_connection(ip(&format!("10.9.9.{i}")), 0).unwrap();
        }
        assert_eq!(
            why(s.admit_connection(ip("10.9.9.200"), 0)),
            Some(ShieldReason::ConnLimit)
        );
        assert!(s.admit_connection(ip("10.9.8.1"), 0).is_ok());
    }

    #[test]
    fn repeat_offender_is_banned_for_a_doubling_time_and_the_ban_expires() {
        let s = shield(|c| {
            c.join_rate_per_ip = 1.0;
            c.strikes_to_ban = 5.0;
            c.ban_base = Duration::from_secs(30);
        });
        let a = ip("10.1.1.1");
        let mut t = 1_000_000;
        for _ in 0..10 {
            let _ = s.admit_join(a, t);
            t += 1_000;
        }
        let ban = s.banned(a, t).expect("banned");
        assert!((t + 29_000_000..=t + 30_000_000).contains(&ban.until_us));
        assert_eq!(why(s.admit_join(a, t)), Some(ShieldReason::Banned));
        assert!(s.banned(a, t + 31_000_000).is_none(), "the ban expires");
        // Offend again: the second ban lasts 60 s.
        let mut t = t + 40_000_000;
        for _ in 0..10 {
            let _ = s.admit_join(a, t);
            t += 1_000;
        }
        let ban = s.banned(a, t).expect("banned again");
        assert_eq!(ban.count, 2);
        assert!(ban.until_us > t + 50_000_000);
    }

    #[test]
    fn allowlisted_sources_are_never_limited() {
        let s = shield(|c| {
            c.join_rate_per_ip = 1.0;
            c.allow = vec![Cidr::parse("10.5.0.0/16").unwrap()];
        });
        for i in 0..100 {
            assert!(s.admit_join(ip("10.5.1.1"), i).is_ok());
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let s = shield(|c| c.trusted_proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        let xff = Some("203.0.113.7, 10.1.2.3");
        assert_eq!(s.source_ip(ip("10.9.9.9"), xff), ip("203.0.113.7"));
        assert_eq!(s.source_ip(ip("198.51.100.1"), xff), ip("198.51.100.1"));
        assert_eq!(
            s.source_ip(ip("10.9.9.9"), Some("nonsense")),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn manual_bans_cover_networks_and_can_be_lifted() {
        let s = shield(|_| {});
        let net = Cidr::parse("198.51.100.0/24").unwrap();
        s.ban(net, 60, 0);
        let r = s.admit_connection(ip("198.51.100.77"), 1).unwrap_err();
        assert_eq!(
            (r.reason, r.wire),
            (ShieldReason::Banned.into(), Wire::Silent)
        );
        assert_eq!(s.counters.refused(ShieldReason::Banned), 1);
        assert_eq!(s.bans(1).len(), 1);
        assert!(s.unban(net));
        assert!(s.admit_connection(ip("198.51.100.77"), 2).is_ok());
    }

    #[test]
    fn bans_are_bounded() {
        let s = shield(|c| c.max_bans = 100);
        for i in 0..1_000u32 {
            s.ban(
                Cidr::new(IpAddr::from(i.to_be_bytes()), 32),
                60 + i as u64,
                0,
            );
        }
        assert_eq!(s.bans(0).len(), 100);
    }

    #[test]
    fn a_solved_challenge_is_spent_once() {
        let s = shield(|_| {});
        let c1 = s.new_challenge("s", None, 12, 1_000).unwrap();
        let c2 = s.new_challenge("s", None, 12, 1_000).unwrap();
        assert_eq!(s.spend_challenge(&c1, 0), Ok(()));
        assert_eq!(s.spend_challenge(&c1, 1), Err(ReplayError::Replayed));
        assert_eq!(s.spend_challenge(&c2, 1), Ok(()));
        assert_eq!(c1.expires_s, 1_000 + s.cfg.challenge_ttl_s);
        // Another node's challenge (same secret) is spent once here too.
        let other = Challenge {
            origin: c1.origin ^ 1,
            ..c1.clone()
        };
        assert_eq!(s.spend_challenge(&other, 2), Ok(()));
        assert_eq!(s.spend_challenge(&other, 3), Err(ReplayError::Replayed));
        assert_eq!(s.counters.challenges.load(Relaxed), 2);
    }

    /// Spends challenge `i`'s solution again.
    fn issue_and_spend_again(s: &Shield, i: u64, now: u64) -> bool {
        let c = Challenge {
            counter: i,
            ..s.new_challenge("s", None, 0, 1_000).unwrap()
        };
        s.spend_challenge(&c, now).is_ok()
    }

    /// Issues challenge `i` and spends its solution; true if accepted. From 300,000 on, the
    /// challenge is signed and its solution verified as the join API does.
    fn issue_and_spend(s: &Shield, i: u64, now: u64) -> bool {
        let c = s.new_challenge("s", None, 0, 1_000).unwrap();
        assert_eq!(c.counter, i);
        if i >= 300_000 {
            let seed = c.sign(&s.signer, 1_000);
            let nonce = levee_core::ticket::solve(&seed, 0);
            let ok =
                Challenge::verify_solution(&s.signer, &seed, nonce, "s", ip("10.0.0.1"), 1_001);
            assert_eq!(ok.as_ref(), Ok(&c));
        }
        s.spend_challenge(&c, now).is_ok()
    }

    #[test]
    fn after_300k_spent_solutions_an_honest_one_is_accepted_and_every_replay_refused() {
        // The production sketch width: a sketch used as a set calls fresh solutions spent once
        // enough were spent in the window; the replay window never does.
        let s = shield(|c| c.sketch_width = 32_768);
        let t0 = std::time::Instant::now();
        for i in 0..300_000 {
            assert!(
                issue_and_spend(&s, i, 1_000),
                "solution {i} refused when first spent"
            );
        }
        eprintln!("300,000 spent in {:?}", t0.elapsed());
        for i in 300_000..300_100 {
            assert!(issue_and_spend(&s, i, 2_000), "honest solution {i} refused");
        }
        for i in [0, 1, 150_000, 299_999, 300_050] {
            assert!(
                !issue_and_spend_again(&s, i, 3_000),
                "replay of {i} accepted"
            );
        }
    }

    #[test]
    fn limiter_memory_is_the_sketches_and_one_replay_window() {
        let s = Shield::new(ShieldConfig::default());
        // Seven count-min arrays of 4 × 32,768 four-byte counters, and W bits.
        assert_eq!(
            s.limiter_bytes(),
            7 * 4 * 32_768 * 4 + REPLAY_WINDOW as usize / 8
        );
        assert_eq!(s.limiter_bytes(), 4 * 1024 * 1024);
    }

    #[test]
    fn a_window_too_short_to_rate_does_not_escalate() {
        // The ticker's first tick comes at once after the start: a few joins (or one CPU
        // clock tick) in a few ms must not read as an attack.
        let s = Shield::new(ShieldConfig::default());
        let space = SpaceShield::new(&s.cfg, Access::Open, None);
        let t0 = mono_us();
        s.counters.joins_passed.fetch_add(300, Relaxed);
        space.join_requests.fetch_add(300, Relaxed);
        assert_eq!(s.tick(0, t0 + 10_000), Signals::default());
        space.tick(t0 + 10_000);
        assert_eq!(
            (s.node_difficulty(), space.difficulty.load(Relaxed)),
            (0, 0)
        );
        // Rated over the whole second, the same joins are 300 a second: calm.
        let sig = s.tick(0, t0 + 1_000_000);
        assert!((250.0..=310.0).contains(&sig.join_rate), "{sig:?}");
        space.tick(t0 + 1_000_000);
        assert_eq!(
            (s.node_difficulty(), space.difficulty.load(Relaxed)),
            (0, 0)
        );
        // A real flood over a real window still escalates both.
        s.counters.joins_passed.fetch_add(40_000, Relaxed);
        space.join_requests.fetch_add(40_000, Relaxed);
        s.tick(0, t0 + 2_000_000);
        space.tick(t0 + 2_000_000);
        assert!(s.node_difficulty() > 0 && space.difficulty.load(Relaxed) > 0);
    }

    #[test]
    fn escalation_turns_an_open_space_into_a_challenge() {
        let s = shield(|_| {});
        assert_eq!(s.effective_access(Access::Open, 0), (Access::Open, 0));
        assert_eq!(
            s.effective_access(Access::Ticketed, 0),
            (Access::Ticketed, 0)
        );
        assert_eq!(
            s.effective_access(Access::Open, 16),
            (Access::Challenge, 16)
        );
        assert_eq!(
            s.effective_access(Access::Challenge, 0),
            (Access::Challenge, 12)
        );
    }
}
