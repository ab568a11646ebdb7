//! Attackers of `levee storm`, as pure code: their configuration, what each attempt got, and
//! how attempts add up into the report's `attack` section.
//!
//! Contract: an [`AttackConfig`] (the scenario's `[attack]` table) names the target, the source
//! addresses (a CIDR inside `127.0.0.0/8`), the attack's window and one [`ModuleConfig`] per
//! [`Module`]; [`AttackConfig::validate`] checks every bound (workers, rates, holds), so an
//! attack is always bounded in count and in time. Attackers are **counted, not measured**: each
//! attempt ends as one [`Attempt`] (how far it got and what the server answered), and
//! [`ModuleStats`] adds attempts up exactly (and merges across workers and threads).
//! [`summarize`] turns a module's counts into its report entry, with the refusals sorted by
//! reason. The IO side (sockets, pacing, the attack process) is [`crate::attackers`].

use crate::hist::{Hist, Percentiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most workers one module may run.
pub const MAX_WORKERS: u32 = 10_000;
/// Most workers of all modules together (each holds at most one socket).
pub const MAX_WORKERS_TOTAL: u32 = 20_000;
/// Highest rate of one module, attempts per second.
pub const MAX_RATE: f64 = 100_000.0;
/// Longest hold of one attempt.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// The attack modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// `POST /api/spaces/{id}/join` as fast as allowed, never following the answer (empty
    /// bodies, forged queue tokens, forged proofs of work and non-JSON bodies in turn).
    JoinFlood,
    /// TCP connections opened and closed at once (`hold` 0) or held silently for `hold`.
    ConnFlood,
    /// Request heads sent one byte every `interval` and never finished.
    Slowloris,
    /// Progressive Ogg streams read with a tiny receive window, `read_bytes` every `interval`
    /// (never, with `interval` 0), held for `hold`.
    SlowReader,
    /// Stream requests with forged tickets: random, signed with a wrong key, expired,
    /// oversized; on the Ogg and WebSocket endpoints in turn.
    ForgedTicket,
    /// WebSocket listeners that send garbage: random bytes, unmasked frames, reserved opcodes,
    /// absurd lengths, oversized messages.
    GarbageWs,
}

/// Every module, in report order.
pub const MODULES: [Module; 6] = [
    Module::JoinFlood,
    Module::ConnFlood,
    Module::Slowloris,
    Module::SlowReader,
    Module::ForgedTicket,
    Module::GarbageWs,
];

impl Module {
    /// The name used in TOML, JSON and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Module::JoinFlood => "join_flood",
            Module::ConnFlood => "conn_flood",
            Module::Slowloris => "slowloris",
            Module::SlowReader => "slow_reader",
            Module::ForgedTicket => "forged_ticket",
            Module::GarbageWs => "garbage_ws",
        }
    }

    /// Default hold of one attempt (how long a connection is kept at most).
    pub fn default_hold(self) -> Duration {
        match self {
            Module::ConnFlood => Duration::ZERO,
            Module::Slowloris => Duration::from_secs(60),
            Module::SlowReader => Duration::from_secs(15),
            _ => Duration::from_secs(3),
        }
    }

    /// Default interval (slowloris: between header bytes; slow reader: between reads).
    pub fn default_interval(self) -> Duration {
        match self {
            Module::Slowloris => Duration::from_secs(1),
            _ => Duration::ZERO,
        }
    }
}

/// Where the attackers aim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackTarget {
    /// The space the legitimate listeners listen to.
    #[default]
    Same,
    /// Another space (`attack.space`, or one the run creates with its own synthetic host):
    /// the bulkhead case.
    Other,
}

/// Access mode of the spaces a run creates (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No ticket needed on the stream endpoints.
    Open,
    /// Stream endpoints need a ticket from the join API.
    #[default]
    Ticketed,
    /// As ticketed, and the join API always asks for proof of work.
    Challenge,
}

impl Access {
    /// The API's name.
    pub fn label(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Ticketed => "ticketed",
            Access::Challenge => "challenge",
        }
    }
}

/// One attack module's settings. Every module has the same fields; see [`Module`] for what
/// `hold` and `interval` mean to each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleConfig {
    /// Attackers of this module at once (each holds at most one connection); 0: module off.
    pub workers: u32,
    /// New attempts per second, all workers together; 0: each worker starts its next attempt
    /// as soon as the last one ended.
    pub rate: f64,
    /// Longest time one attempt keeps its connection (default per module).
    #[serde(with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub hold: Option<Duration>,
    /// Slowloris: time between two header bytes; slow reader: time between two reads (0: never
    /// read after the answer head). Default per module.
    #[serde(with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Slow reader: bytes per read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<u32>,
}

impl ModuleConfig {
    /// A module with `workers` workers at `rate` attempts per second.
    pub fn new(workers: u32, rate: f64) -> Self {
        ModuleConfig {
            workers,
            rate,
            ..ModuleConfig::default()
        }
    }

    /// The hold in force for `m`.
    pub fn hold_for(&self, m: Module) -> Duration {
        self.hold.unwrap_or(m.default_hold())
    }

    /// The interval in force for `m`.
    pub fn interval_for(&self, m: Module) -> Duration {
        self.interval.unwrap_or(m.default_interval())
    }
}

/// The scenario's `[attack]` table. See the module docs and `docs/storm.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttackConfig {
    /// The listeners' space or another one.
    pub target: AttackTarget,
    /// With `target = "other"`: the space to attack (default: one the run creates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// Access mode of the spaces the run creates.
    pub access: Access,
    /// Source addresses of the attackers, a CIDR inside 127.0.0.0/8.
    pub sources: String,
    /// When the attack starts, after the run's start.
    #[serde(with = "dur")]
    pub at: Duration,
    /// How long it lasts (default: until the run ends).
    #[serde(with = "opt_dur", skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Join-request flood.
    pub join_flood: ModuleConfig,
    /// Connection flood.
    pub conn_flood: ModuleConfig,
    /// Slowloris.
    pub slowloris: ModuleConfig,
    /// Slow readers.
    pub slow_reader: ModuleConfig,
    /// Forged and expired tickets.
    pub forged_ticket: ModuleConfig,
    /// Garbage WebSocket frames.
    pub garbage_ws: ModuleConfig,
}

impl Default for AttackConfig {
    fn default() -> Self {
        AttackConfig {
            target: AttackTarget::Same,
            space: None,
            access: Access::Ticketed,
            sources: "127.66.0.0/16".into(),
            at: Duration::ZERO,
            duration: None,
            join_flood: ModuleConfig::default(),
            conn_flood: ModuleConfig::default(),
            slowloris: ModuleConfig::default(),
            slow_reader: ModuleConfig::default(),
            forged_ticket: ModuleConfig::default(),
            garbage_ws: ModuleConfig::default(),
        }
    }
}

impl AttackConfig {
    /// The settings of module `m`.
    pub fn module(&self, m: Module) -> &ModuleConfig {
        match m {
            Module::JoinFlood => &self.join_flood,
            Module::ConnFlood => &self.conn_flood,
            Module::Slowloris => &self.slowloris,
            Module::SlowReader => &self.slow_reader,
            Module::ForgedTicket => &self.forged_ticket,
            Module::GarbageWs => &self.garbage_ws,
        }
    }

    /// The settings of module `m`, to change.
    pub fn module_mut(&mut self, m: Module) -> &mut ModuleConfig {
        match m {
            Module::JoinFlood => &mut self.join_flood,
            Module::ConnFlood => &mut self.conn_flood,
            Module::Slowloris => &mut self.slowloris,
            Module::SlowReader => &mut self.slow_reader,
            Module::ForgedTicket => &mut self.forged_ticket,
            Module::GarbageWs => &mut self.garbage_ws,
        }
    }

    /// The modules with at least one worker.
    pub fn active(&self) -> Vec<Module> {
        MODULES
            .into_iter()
            .filter(|m| self.module(*m).workers > 0)
            .collect()
    }

    /// True when no module runs.
    pub fn is_off(&self) -> bool {
        self.active().is_empty() && *self == AttackConfig::default()
    }

    /// The attack's window as offsets from the run's start, for a run of `run_length`.
    pub fn window(&self, run_length: Duration) -> (Duration, Duration) {
        let from = self.at.min(run_length);
        let to = match self.duration {
            Some(d) => (from + d).min(run_length),
            None => run_length,
        };
        (from, to)
    }

    /// Checks every bound; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        crate::scenario::parse_cidr(&self.sources).map_err(|e| format!("attack.{e}"))?;
        let mut total = 0u32;
        for m in MODULES {
            let c = self.module(m);
            let name = m.label();
            if c.workers > MAX_WORKERS {
                return Err(format!("attack.{name}.workers must be <= {MAX_WORKERS}"));
            }
            total += c.workers;
            if !(0.0..=MAX_RATE).contains(&c.rate) || c.rate.is_nan() {
                return Err(format!("attack.{name}.rate must be within 0..={MAX_RATE}"));
            }
            if c.hold.is_some_and(|h| h > MAX_HOLD) || c.interval.is_some_and(|h| h > MAX_HOLD) {
                return Err(format!(
                    "attack.{name}: hold and interval must be <= {MAX_HOLD:?}"
                ));
            }
            if c.read_bytes.is_some_and(|b| b == 0 || b > 1 << 20) {
                return Err(format!("attack.{name}.read_bytes must be 1..=1048576"));
            }
        }
        if total > MAX_WORKERS_TOTAL {
            return Err(format!(
                "attack: {total} workers in all, over {MAX_WORKERS_TOTAL}"
            ));
        }
        if self.target == AttackTarget::Same && self.space.is_some() {
            return Err("attack.space needs target = \"other\"".into());
        }
        if let Some(id) = &self.space {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("attack.space is not a space id".into());
            }
        }
        Ok(())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this HTTP status (and then closed, or we did).
    Status(u16),
    /// The server closed the WebSocket with this code.
    Close(u16),
    /// The server closed the connection without answering a byte (a banned source, a cut).
    Unanswered,
    /// The server cut a stream it had started (slow reader: end of stream or reset found when
    /// draining at the end of the hold).
    Cut,
    /// The server was still streaming when the hold ended (slow reader).
    StillServed,
    /// The connection was reset.
    Reset,
    /// The connection was refused at connect.
    Refused,
    /// Connecting took longer than its bound.
    ConnectTimeout,
    /// The attempt's own bound expired while waiting for the server (its hold, or a read
    /// timeout): the server kept the connection.
    Held,
    /// Connected, then closed by the attacker before any answer (connection flood).
    Dropped,
    /// The attacker's own limits (addresses, ports, descriptors): not the server's doing.
    Local,
    /// Another error.
    Other,
}

/// What one attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// How it ended.
    pub outcome: Outcome,
    /// The TCP connection was established.
    pub connected: bool,
    /// The server granted what the attack asked for (a ticket, a stream, an upgrade).
    pub accepted: bool,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Time from connect to the end of the connection, µs (holding modules).
    pub held_us: Option<u64>,
    /// A ticket was obtained through the join API for this attempt.
    pub ticket: bool,
}

impl Attempt {
    /// An attempt that ended with `outcome` before or at connect.
    pub fn failed(outcome: Outcome) -> Self {
        Attempt {
            outcome,
            connected: false,
            accepted: false,
            bytes_sent: 0,
            bytes_received: 0,
            held_us: None,
            ticket: false,
        }
    }
}

/// Counts of one module (one worker, one thread, or all of them merged).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModuleStats {
    /// Workers that ran.
    pub workers: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts whose TCP connection was established.
    pub connected: u64,
    /// Attempts refused at connect (`ECONNREFUSED`).
    pub refused_at_connect: u64,
    /// Connects that took longer than their bound.
    pub connect_timeouts: u64,
    /// Connections reset by the server.
    pub resets: u64,
    /// Connections the server closed without a byte of answer.
    pub closed_unanswered: u64,
    /// Slow reader: streams found cut by the server at the end of the hold.
    pub cut: u64,
    /// Slow reader: streams still served at the end of the hold.
    pub still_served: u64,
    /// Attempts still held by the server when their own bound expired.
    pub held_to_bound: u64,
    /// Connection flood: connections the attacker closed before any answer.
    pub dropped_by_attacker: u64,
    /// HTTP answers by status code.
    pub statuses: BTreeMap<String, u64>,
    /// WebSocket close codes received.
    pub close_codes: BTreeMap<String, u64>,
    /// Attempts that got what they asked for (a ticket, a stream, an upgrade).
    pub accepted: u64,
    /// Tickets the attackers obtained from the join API (slow reader, garbage WebSocket).
    pub tickets: u64,
    /// Failures on the attacker's own limits.
    pub local_failures: u64,
    /// Other errors.
    pub other_errors: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Connect → end of the connection, µs (holding modules). Allocated at the first value
    /// (a histogram is a few hundred KiB: workers that hold nothing carry none).
    #[serde(default)]
    pub held: Option<Hist>,
    /// CPU time of the module's thread, s.
    pub cpu_s: f64,
    /// Wall time of the module, s.
    pub wall_s: f64,
}

impl ModuleStats {
    /// Adds one attempt.
    pub fn record(&mut self, a: &Attempt) {
        self.attempts += 1;
        self.connected += a.connected as u64;
        self.accepted += a.accepted as u64;
        self.tickets += a.ticket as u64;
        self.bytes_sent += a.bytes_sent;
        self.bytes_received += a.bytes_received;
        if let Some(h) = a.held_us {
            self.held.get_or_insert_with(Hist::new).record(h);
        }
        match a.outcome {
            Outcome::Status(s) => *self.statuses.entry(s.to_string()).or_default() += 1,
            Outcome::Close(c) => *self.close_codes.entry(c.to_string()).or_default() += 1,
            Outcome::Unanswered => self.closed_unanswered += 1,
            Outcome::Cut => self.cut += 1,
            Outcome::StillServed => self.still_served += 1,
            Outcome::Reset => self.resets += 1,
            Outcome::Refused => self.refused_at_connect += 1,
            Outcome::ConnectTimeout => self.connect_timeouts += 1,
            Outcome::Held => self.held_to_bound += 1,
            Outcome::Dropped => self.dropped_by_attacker += 1,
            Outcome::Local => self.local_failures += 1,
            Outcome::Other => self.other_errors += 1,
        }
    }

    /// Adds everything `o` counted (CPU adds up; wall time is the longest).
    pub fn merge(&mut self, o: &ModuleStats) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            workers,
            attempts,
            connected,
            refused_at_connect,
            connect_timeouts,
            resets,
            closed_unanswered,
            cut,
            still_served,
            held_to_bound,
            dropped_by_attacker,
            accepted,
            tickets,
            local_failures,
            other_errors,
            bytes_sent,
            bytes_received,
            cpu_s
        );
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(k.clone()).or_default() += v;
        }
        if let Some(h) = &o.held {
            self.held.get_or_insert_with(Hist::new).merge(h);
        }
        self.wall_s = self.wall_s.max(o.wall_s);
    }
}

/// What the attack process did: one entry per module that ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackResult {
    /// Counts per module (keyed by [`Module::label`]).
    pub modules: BTreeMap<String, ModuleStats>,
    /// Source addresses used.
    pub addresses: u64,
    /// CPU time of the whole attack process, s.
    pub cpu_s: f64,
    /// Its wall time, s.
    pub wall_s: f64,
    /// Its peak resident memory, KiB.
    pub rss_peak_kb: u64,
}

/// One module in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleSummary {
    /// Workers that ran.
    pub workers: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts per second over the module's wall time.
    pub rate: f64,
    /// Attempts whose TCP connection was established.
    pub connected: u64,
    /// Attempts the server refused or cut, all reasons together (sum of `refusals`).
    pub refused: u64,
    /// Refusals by reason: `http_<status>` (4xx and 5xx answers), `ws_close_<code>`,
    /// `refused_at_connect`, `closed_unanswered`, `reset`, `stream_cut`.
    pub refusals: BTreeMap<String, u64>,
    /// Attempts that got what they asked for (a ticket, a stream, an upgrade).
    pub accepted: u64,
    /// Tickets obtained from the join API by this module's attackers.
    pub tickets: u64,
    /// HTTP answers by status code.
    pub statuses: BTreeMap<String, u64>,
    /// HTTP answers by class (`1xx` … `5xx`).
    pub status_classes: BTreeMap<String, u64>,
    /// WebSocket close codes received.
    pub close_codes: BTreeMap<String, u64>,
    /// Connections refused at connect.
    pub refused_at_connect: u64,
    /// Connections reset by the server.
    pub resets: u64,
    /// Connections closed by the server without an answer.
    pub closed_unanswered: u64,
    /// Attempts still held by the server when their own bound expired.
    pub held_to_bound: u64,
    /// Slow reader: streams still served at the end of the hold.
    pub still_served: u64,
    /// Connects that took longer than their bound.
    pub connect_timeouts: u64,
    /// Failures on the attacker's own limits.
    pub local_failures: u64,
    /// Other errors.
    pub other_errors: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Connect → end of the connection, ms (holding modules).
    pub held_ms: Percentiles,
    /// CPU the module's thread spent, s.
    pub cpu_s: f64,
    /// CPU per attempt, µs.
    pub cpu_us_per_attempt: f64,
}

/// A module's report entry. See the module docs.
pub fn summarize(s: &ModuleStats) -> ModuleSummary {
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    for (code, n) in &s.statuses {
        let class = code.chars().next().map_or("?".into(), |c| format!("{c}xx"));
        *classes.entry(class).or_default() += n;
        if code.starts_with('4') || code.starts_with('5') {
            *refusals.entry(format!("http_{code}")).or_default() += n;
        }
    }
    for (code, n) in &s.close_codes {
        *refusals.entry(format!("ws_close_{code}")).or_default() += n;
    }
    for (k, n) in [
        ("refused_at_connect", s.refused_at_connect),
        ("closed_unanswered", s.closed_unanswered),
        ("reset", s.resets),
        ("stream_cut", s.cut),
    ] {
        if n > 0 {
            refusals.insert(k.into(), n);
        }
    }
    let held_ms = match &s.held {
        Some(h) if h.count() > 0 => h.summary_ms(),
        _ => Percentiles::default(),
    };
    ModuleSummary {
        workers: s.workers,
        attempts: s.attempts,
        rate: if s.wall_s > 0.0 {
            s.attempts as f64 / s.wall_s
        } else {
            0.0
        },
        connected: s.connected,
        refused: refusals.values().sum(),
        refusals,
        accepted: s.accepted,
        tickets: s.tickets,
        statuses: s.statuses.clone(),
        status_classes: classes,
        close_codes: s.close_codes.clone(),
        refused_at_connect: s.refused_at_connect,
        resets: s.resets,
        closed_unanswered: s.closed_unanswered,
        held_to_bound: s.held_to_bound,
        still_served: s.still_served,
        connect_timeouts: s.connect_timeouts,
        local_failures: s.local_failures,
        other_errors: s.other_errors,
        bytes_sent: s.bytes_sent,
        bytes_received: s.bytes_received,
        held_ms,
        cpu_s: s.cpu_s,
        cpu_us_per_attempt: if s.attempts > 0 {
            s.cpu_s * 1e6 / s.attempts as f64
        } else {
            0.0
        },
    }
}

/// The report's `attack` section: what the attackers got, counted not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// The space attacked.
    pub target_space: String,
    /// Whether it is the legitimate listeners' space.
    pub same_space: bool,
    /// Source CIDR of the attackers.
    pub sources: String,
    /// Source addresses used.
    pub addresses: u64,
    /// Attack window, s after the run's start.
    pub from_s: f64,
    /// End of the attack window, s after the run's start.
    pub to_s: f64,
    /// All modules together.
    pub total: ModuleSummary,
    /// Per module, keyed by its name.
    pub modules: BTreeMap<String, ModuleSummary>,
    /// CPU of the attack process, s.
    pub cpu_s: f64,
    /// CPU of the attack process, % of the machine over the attack window.
    pub cpu_pct: f64,
    /// Peak resident memory of the attack process, MiB.
    pub rss_peak_mb: f64,
    /// Why the attack process failed, if it did.
    pub error: Option<String>,
}

/// Builds the `attack` section from the attack process's result.
pub fn report(
    cfg: &AttackConfig,
    target_space: &str,
    same_space: bool,
    window: (Duration, Duration),
    result: Option<&AttackResult>,
    cores: u32,
) -> AttackReport {
    let mut total = ModuleStats::default();
    let mut modules = BTreeMap::new();
    if let Some(r) = result {
        for (name, s) in &r.modules {
            total.merge(s);
            modules.insert(name.clone(), summarize(s));
        }
    }
    let mut t = summarize(&total);
    // Modules ran side by side: the total's rate is the sum of theirs.
    t.rate = modules.values().map(|m| m.rate).sum();
    let wall = result.map_or(0.0, |r| r.wall_s).max(1e-9);
    AttackReport {
        target_space: target_space.to_owned(),
        same_space,
        sources: cfg.sources.clone(),
        addresses: result.map_or(0, |r| r.addresses),
        from_s: window.0.as_secs_f64(),
        to_s: window.1.as_secs_f64(),
        total: t,
        modules,
        cpu_s: result.map_or(0.0, |r| r.cpu_s),
        cpu_pct: result.map_or(0.0, |r| r.cpu_s * 100.0 / wall / cores.max(1) as f64),
        rss_peak_mb: result.map_or(0.0, |r| r.rss_peak_kb as f64 / 1024.0),
        error: None,
    }
}

/// Serde for `Duration` as humantime text ("10s", "250ms").
pub(crate) mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Option<Duration>` as humantime text.
pub(crate) mod opt_dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: Outcome) -> Attempt {
        Attempt {
            connected: !matches!(outcome, Outcome::Refused | Outcome::ConnectTimeout),
            ..Attempt::failed(outcome)
        }
    }

    #[test]
    fn attack_tables_parse_with_per_module_defaults_and_refuse_unknown_fields() {
        let c: AttackConfig = toml::from_str(
            r#"
            target = "other"
            sources = "127.66.0.0/24"
            at = "1s"
            duration = "10s"
            [join_flood]
            workers = 8
            rate = 500
            [slowloris]
            workers = 20
            interval = "500ms"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.target, AttackTarget::Other);
        assert_eq!(c.access, Access::Ticketed);
        assert_eq!(c.active(), [Module::JoinFlood, Module::Slowloris]);
        assert_eq!(
            c.slowloris.interval_for(Module::Slowloris),
            Duration::from_millis(500)
        );
        assert_eq!(
            c.slowloris.hold_for(Module::Slowloris),
            Duration::from_secs(60)
        );
        assert_eq!(c.conn_flood.hold_for(Module::ConnFlood), Duration::ZERO);
        assert_eq!(
            c.window(Duration::from_secs(30)),
            (Duration::from_secs(1), Duration::from_secs(11))
        );
        assert_eq!(
            c.window(Duration::from_secs(5)),
            (Duration::from_secs(1), Duration::from_secs(5))
        );
        assert!(toml::from_str::<AttackConfig>("[join_flood]\nworkerz = 1").is_err());
        assert!(AttackConfig::default().is_off());
    }

    #[test]
    fn attacks_are_bounded_in_count_rate_time_and_address() {
        let ok = AttackConfig::default();
        let mut c = ok.clone();
        c.join_flood.workers = MAX_WORKERS + 1;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        for m in MODULES {
            c.module_mut(m).workers = MAX_WORKERS;
        }
        assert!(c.validate().is_err(), "total workers are bounded");
        let mut c = ok.clone();
        c.garbage_ws.rate = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.slow_reader.hold = Some(Duration::from_secs(3_600));
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.sources = "10.0.0.0/8".into();
        assert!(c.validate().is_err(), "attackers stay on loopback");
        let mut c = ok.clone();
        c.space = Some("abc".into());
        assert!(c.validate().is_err(), "a target space needs target = other");
        c.target = AttackTarget::Other;
        c.validate().unwrap();
        c.space = Some("../x".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn attempts_add_up_into_refusals_by_reason_and_status_class() {
        let mut a = ModuleStats::default();
        let mut b = ModuleStats::default();
        for o in [
            Outcome::Status(429),
            Outcome::Status(429),
            Outcome::Status(200),
            Outcome::Status(503),
            Outcome::Close(1002),
            Outcome::Unanswered,
            Outcome::Reset,
        ] {
            a.record(&Attempt {
                bytes_received: 10,
                ..attempt(o)
            });
        }
        for o in [
            Outcome::Refused,
            Outcome::Cut,
            Outcome::StillServed,
            Outcome::Held,
        ] {
            b.record(&Attempt {
                held_us: Some(2_000_000),
                ..attempt(o)
            });
        }
        a.cpu_s = 0.5;
        b.cpu_s = 0.25;
        a.wall_s = 10.0;
        b.wall_s = 8.0;
        a.merge(&b);
        let s = summarize(&a);
        assert_eq!(s.attempts, 11);
        assert_eq!(s.connected, 10);
        assert_eq!(s.bytes_received, 70);
        assert_eq!(s.statuses["429"], 2);
        assert_eq!(s.status_classes["2xx"], 1);
        assert_eq!(s.status_classes["4xx"], 2);
        assert_eq!(s.status_classes["5xx"], 1);
        let want: BTreeMap<String, u64> = [
            ("http_429", 2),
            ("http_503", 1),
            ("ws_close_1002", 1),
            ("closed_unanswered", 1),
            ("reset", 1),
            ("refused_at_connect", 1),
            ("stream_cut", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(s.refusals, want);
        assert_eq!(s.refused, 8);
        assert_eq!((s.still_served, s.held_to_bound), (1, 1));
        assert_eq!(s.held_ms.count, 4);
        assert!((s.cpu_s - 0.75).abs() < 1e-9);
        assert!((s.rate - 1.1).abs() < 1e-9);
        assert!((s.cpu_us_per_attempt - 0.75e6 / 11.0).abs() < 1e-6);
    }

    #[test]
    fn the_attack_section_adds_modules_and_survives_json() {
        let mut js = ModuleStats {
            workers: 4,
            wall_s: 10.0,
            cpu_s: 1.0,
            ..Default::default()
        };
        for _ in 0..100 {
            js.record(&attempt(Outcome::Status(429)));
        }
        let mut sl = ModuleStats {
            workers: 10,
            wall_s: 10.0,
            cpu_s: 0.1,
            ..Default::default()
        };
        for _ in 0..10 {
            sl.record(&Attempt {
                held_us: Some(5_000_000),
                ..attempt(Outcome::Status(408))
            });
        }
        let res = AttackResult {
            modules: [("join_flood".into(), js), ("slowloris".into(), sl)].into(),
            addresses: 254,
            cpu_s: 1.2,
            wall_s: 10.0,
            rss_peak_kb: 10_240,
        };
        // Through JSON, as from the attack process.
        let res: AttackResult =
            serde_json::from_str(&serde_json::to_string(&res).unwrap()).unwrap();
        let cfg = AttackConfig::default();
        let w = (Duration::from_secs(1), Duration::from_secs(11));
        let r = report(&cfg, "sp", true, w, Some(&res), 2);
        assert_eq!(r.total.attempts, 110);
        assert_eq!(r.total.refusals["http_429"], 100);
        assert_eq!(r.total.refusals["http_408"], 10);
        assert!((r.total.rate - 11.0).abs() < 1e-9);
        assert!((r.modules["slowloris"].held_ms.p50 - 5000.0).abs() < 5.0);
        assert!((r.cpu_pct - 6.0).abs() < 1e-9);
        assert_eq!(r.rss_peak_mb, 10.0);
        assert_eq!((r.from_s, r.to_s), (1.0, 11.0));
        let none = report(&cfg, "sp", true, w, None, 2);
        assert_eq!(none.total.attempts, 0);
    }
}
