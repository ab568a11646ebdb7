//! Attacks as a run plans them: an [`AttackConfig`] (the scenario's `[attack]` table) names the
//! target, the source addresses (a CIDR inside `127.0.0.0/8`), the attack's window and one
//! [`ModuleConfig`] per [`Module`]; [`AttackConfig::validate`] checks every bound (workers,
//! rates, holds), so an attack is always bounded in count and in time. What attempts got is
//! [`crate::observe::attack`]; the attackers themselves [`crate::actors::attackers`].

use crate::error::{Error, Result};
use crate::plan::dur;
use crate::plan::opt_dur;
use serde::{Deserialize, Serialize};
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
    pub fn validate(&self) -> Result<()> {
        crate::plan::scenario::parse_cidr(&self.sources)
            .map_err(|e| Error::invalid(format!("attack.{e}")))?;
        let mut total = 0u32;
        for m in MODULES {
            let c = self.module(m);
            let name = m.label();
            if c.workers > MAX_WORKERS {
                return Err(Error::invalid(format!(
                    "attack.{name}.workers must be <= {MAX_WORKERS}"
                )));
            }
            total += c.workers;
            if !(0.0..=MAX_RATE).contains(&c.rate) || c.rate.is_nan() {
                return Err(Error::invalid(format!(
                    "attack.{name}.rate must be within 0..={MAX_RATE}"
                )));
            }
            if c.hold.is_some_and(|h| h > MAX_HOLD) || c.interval.is_some_and(|h| h > MAX_HOLD) {
                return Err(Error::invalid(format!(
                    "attack.{name}: hold and interval must be <= {MAX_HOLD:?}"
                )));
            }
            if c.read_bytes.is_some_and(|b| b == 0 || b > 1 << 20) {
                return Err(Error::invalid(format!(
                    "attack.{name}.read_bytes must be 1..=1048576"
                )));
            }
        }
        if total > MAX_WORKERS_TOTAL {
            return Err(Error::invalid(format!(
                "attack: {total} workers in all, over {MAX_WORKERS_TOTAL}"
            )));
        }
        if self.target == AttackTarget::Same && self.space.is_some() {
            return Err(Error::invalid("attack.space needs target = \"other\""));
        }
        if let Some(id) = &self.space {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::invalid("attack.space is not a space id"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
