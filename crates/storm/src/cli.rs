//! The `levee storm` command line: `run SCENARIO.toml`, the quick forms `capacity`,
//! `start-storm` and `churn`, and the hidden `agent` mode used by `--procs`.
//!
//! Exit codes (fixed, for scripts and CI): 0 the run was valid and every objective held;
//! 1 an objective failed; 2 the run was invalid (the generator itself was saturated or hit its
//! own limits, or a listener process failed); 3 the run could not be made (bad scenario, server
//! unreachable).

use crate::error::{Error, Result};
use crate::net::socket::raise_fd_limit;
use crate::plan::attack::AttackTarget;
use crate::plan::attack::Module;
use crate::plan::attack::ModuleConfig;
use crate::plan::mount::Mount;
use crate::plan::mount::SourceMethod;
use crate::plan::scenario::Kind;
use crate::plan::scenario::Reconnect;
use crate::plan::scenario::Scenario;
use crate::plan::scenario::Step;
use crate::plan::target::Target;
use crate::report::exit_code;
use crate::run;
use crate::run::engine::threads_per_proc;
use crate::run::Output;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `levee storm ...`
#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(subcommand)]
    command: StormCommand,
}

#[derive(Debug, Subcommand)]
enum StormCommand {
    /// Run a scenario file (TOML; see scenarios/ and docs/storm.md).
    Run(RunArgs),
    /// Ramp to N listeners of one space and hold; with --step, step up until an objective
    /// breaks and report the knee.
    Capacity(CapacityArgs),
    /// N listeners press "listen" at one instant (with optional jitter).
    StartStorm(StartStormArgs),
    /// Waves of listeners leave and rejoin (naive retry or jittered backoff).
    Churn(ChurnArgs),
    /// Legitimate listeners join through the join API and listen while attackers hit the
    /// space (ddos-during-broadcast).
    Ddos(DdosArgs),
    /// Internal: run a share of the listeners for a parent storm process (JSON on stdin/stdout).
    #[command(hide = true)]
    Agent,
    /// Internal: run the attackers for a parent storm process (JSON on stdin/stdout).
    #[command(hide = true)]
    AttackAgent,
}

fn dur(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| Error::invalid(e.to_string()))
}

/// Where results go and how to judge them.
#[derive(Debug, Args)]
struct OutArgs {
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Objective, e.g. 'delivered_ratio>0.999' or 'ttfa_p99<500ms' (repeatable; added to the
    /// scenario's).
    #[arg(long = "expect")]
    expect: Vec<String>,
    /// No live progress line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenario file.
    file: PathBuf,
    /// Override the scenario's server.
    #[arg(long)]
    server: Option<String>,
    /// Override the scenario's space.
    #[arg(long)]
    space: Option<String>,
    /// Override the scenario's process count.
    #[arg(long)]
    procs: Option<u32>,
    /// Override the scenario's listener count.
    #[arg(long)]
    listeners: Option<u64>,
    #[command(flatten)]
    out: OutArgs,
}

/// Options shared by the quick forms.
#[derive(Debug, Args)]
struct Common {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Space to listen to; without it a space is created and a synthetic host drives it.
    #[arg(long)]
    space: Option<String>,
    /// Listeners.
    #[arg(long, default_value_t = 100)]
    listeners: u64,
    /// Hold after the last join.
    #[arg(long, value_parser = dur, default_value = "30s")]
    hold: Duration,
    /// Generator processes (one process holds about 19,000 sockets here).
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Source addresses to bind listeners to (a CIDR inside 127.0.0.0/8).
    #[arg(long, default_value = "127.1.0.0/16")]
    sources: String,
    /// Share of listeners on progressive Ogg (the rest on WebSocket), 0..=1.
    #[arg(long, default_value_t = 0.0)]
    ogg_share: f64,
    /// Share of listeners on LL-HLS (blocking playlist reloads and part fetches), 0..=1; the
    /// Ogg and HLS shares together at most 1.
    #[arg(long, default_value_t = 0.0)]
    hls_share: f64,
    /// Base URL HLS listeners fetch from: a cache in front of --server (deploy/nginx).
    #[arg(long)]
    hls_via: Option<String>,
    /// Hold the server's audience numbers (views, uniques, sessions, peak, filtered) against
    /// what the run did; a mismatch fails the run (docs/audience.md).
    #[arg(long)]
    check_audience: bool,
    /// Share of listeners whose sessions end --short-for after they join, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    short_share: f64,
    /// How long a short listener listens.
    #[arg(long, value_parser = dur, default_value = "3s")]
    short_for: Duration,
    /// Stall bound, ms.
    #[arg(long, default_value_t = 1000)]
    stall_ms: u64,
    /// Simulated playout buffer, ms.
    #[arg(long, default_value_t = 200)]
    playout_ms: u64,
    /// Listeners with audio read every this many ms (0: as bytes arrive).
    #[arg(long, default_value_t = 100)]
    read_every_ms: u64,
    /// One listener in this many reads as bytes arrive and measures latency, jitter and
    /// underruns (1: all).
    #[arg(long, default_value_t = 10)]
    timed_every: u64,
    /// How batched reads reach the kernel: auto (io_uring where the kernel offers it),
    /// io-uring or epoll.
    #[arg(long, value_enum, default_value = "auto")]
    batch_io: crate::plan::scenario::BatchIo,
    /// Synthetic host: pause this long after the start (inject a gap)...
    #[arg(long, value_parser = dur)]
    pause_at: Option<Duration>,
    /// ...for this long.
    #[arg(long, value_parser = dur, default_value = "1s")]
    pause_for: Duration,
    /// Synthetic host bitrate, bit/s.
    #[arg(long, default_value_t = 32_000)]
    bitrate: u32,
    /// Bound on scheduled → first audio.
    #[arg(long, value_parser = dur, default_value = "10s")]
    first_audio_timeout: Duration,
    /// Seed of the schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How listeners join: direct (open the stream URL) or api (join API first, then the
    /// ticket's URL). Default: api for ddos, direct otherwise.
    #[arg(long, value_enum)]
    join: Option<crate::plan::scenario::JoinMode>,
    #[command(flatten)]
    mount: MountArgs,
    #[command(flatten)]
    out: OutArgs,
}

impl Common {
    fn scenario(&self, kind: Kind) -> Scenario {
        let mut sc = Scenario::new(kind, self.listeners);
        sc.server = self.server.clone();
        sc.space = self.space.clone();
        sc.hold = self.hold;
        sc.procs = self.procs;
        sc.sources = self.sources.clone();
        let ogg = self.ogg_share.clamp(0.0, 1.0);
        let hls = self.hls_share.clamp(0.0, 1.0 - ogg);
        sc.mix.ws = (1.0 - ogg - hls).max(0.0);
        sc.mix.ogg = ogg;
        sc.mix.hls = hls;
        sc.hls_via = self.hls_via.clone();
        sc.audience.check = self.check_audience;
        sc.audience.short_share = self.short_share;
        sc.audience.short_for = self.short_for;
        sc.meter.stall_ms = self.stall_ms;
        sc.meter.playout_ms = self.playout_ms;
        sc.meter.read_every_ms = self.read_every_ms;
        sc.meter.timed_every = self.timed_every;
        sc.meter.batch_io = self.batch_io;
        sc.host.pause_at = self.pause_at;
        sc.host.pause_for = self.pause_for;
        sc.host.bitrate = self.bitrate;
        sc.first_audio_timeout = self.first_audio_timeout;
        sc.seed = self.seed;
        sc.join = self.join;
        sc.objectives = self.out.expect.clone();
        self.mount.apply(&mut sc);
        sc
    }
}

#[derive(Debug, Args)]
struct CapacityArgs {
    /// Joins spread over this much.
    #[arg(long, value_parser = dur, default_value = "10s")]
    ramp: Duration,
    /// Step up by this many listeners after each hold...
    #[arg(long)]
    step: Option<u64>,
    /// ...up to this many.
    #[arg(long)]
    max_listeners: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct StartStormArgs {
    /// When everyone presses "listen", after the start.
    #[arg(long, value_parser = dur, default_value = "2s")]
    at: Duration,
    /// Spread of the joins after that instant.
    #[arg(long, value_parser = dur, default_value = "0s")]
    jitter: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct DdosArgs {
    #[command(flatten)]
    ddos: DdosFlags,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ChurnArgs {
    /// Joins spread over this much before the first wave.
    #[arg(long, value_parser = dur, default_value = "5s")]
    ramp: Duration,
    /// Leave-and-rejoin waves.
    #[arg(long, default_value_t = 3)]
    waves: u32,
    /// Time between waves.
    #[arg(long, value_parser = dur, default_value = "5s")]
    wave_every: Duration,
    /// Share of listeners leaving in each wave.
    #[arg(long, default_value_t = 0.3)]
    wave_fraction: f64,
    /// Reconnection: naive (at once, fixed retry) or backoff (jittered, exponential).
    #[arg(long, default_value = "backoff", value_parser = ["naive", "backoff"])]
    reconnect: String,
    #[command(flatten)]
    common: Common,
}

fn scenario_of(cmd: StormCommand) -> Result<(Scenario, OutArgs)> {
    Ok(match cmd {
        StormCommand::Run(a) => {
            let text = std::fs::read_to_string(&a.file)
                .map_err(|e| Error::invalid(format!("{}: {e}", a.file.display())))?;
            let mut sc = Scenario::from_toml(&text)
                .map_err(|e| Error::invalid(format!("{}: {e}", a.file.display())))?;
            if let Some(s) = a.server {
                sc.server = s;
            }
            if a.space.is_some() {
                sc.space = a.space;
            }
            if let Some(p) = a.procs {
                sc.procs = p;
            }
            if let Some(n) = a.listeners {
                sc.listeners = n;
            }
            sc.objectives.extend(a.out.expect.iter().cloned());
            (sc, a.out)
        }
        StormCommand::Capacity(a) => {
            let mut sc = a.common.scenario(Kind::Capacity);
            sc.ramp = a.ramp;
            if let Some(step) = a.step {
                sc.step = Some(Step {
                    listeners: step,
                    max_listeners: a.max_listeners.unwrap_or(sc.listeners + 10 * step),
                    ramp: None,
                    hold: None,
                });
            }
            (sc, a.common.out)
        }
        StormCommand::StartStorm(a) => {
            let mut sc = a.common.scenario(Kind::StartStorm);
            sc.storm.at = a.at;
            sc.storm.jitter = a.jitter;
            (sc, a.common.out)
        }
        StormCommand::Churn(a) => {
            let mut sc = a.common.scenario(Kind::Churn);
            sc.ramp = a.ramp;
            sc.churn.waves = a.waves;
            sc.churn.wave_every = a.wave_every;
            sc.churn.wave_fraction = a.wave_fraction;
            sc.churn.reconnect = if a.reconnect == "naive" {
                Reconnect::Naive
            } else {
                Reconnect::Backoff
            };
            (sc, a.common.out)
        }
        StormCommand::Ddos(a) => {
            let mut sc = a.common.scenario(Kind::DdosDuringBroadcast);
            a.ddos.apply(&mut sc);
            (sc, a.common.out)
        }
        StormCommand::Agent | StormCommand::AttackAgent => unreachable!("handled before"),
    })
}

/// Entry point of `levee storm`.
pub fn main(args: StormArgs) -> ExitCode {
    if let StormCommand::Agent = args.command {
        return crate::run::agent::listener_main();
    }
    if let StormCommand::AttackAgent = args.command {
        return crate::run::agent::attacker_main();
    }
    raise_fd_limit();
    let (sc, out) = match scenario_of(args.command) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("levee storm: {e}");
            return ExitCode::from(3);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads_per_proc(1) as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee storm: runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let output = Output {
        json: out.json.clone(),
        html: out.html.clone(),
        quiet: out.quiet,
        exe: None,
    };
    if sc.kind == Kind::DdosDuringBroadcast {
        return crate::run::ddos::main(&rt, sc, output);
    }
    match rt.block_on(run::run(sc, output)) {
        Ok(report) => {
            print!("{}", crate::report::summary_text(&report));
            if let Some(p) = &out.json {
                println!("json: {}", p.display());
            }
            if let Some(p) = &out.html {
                println!("html: {}", p.display());
            }
            ExitCode::from(exit_code(&report))
        }
        Err(e) => {
            eprintln!("levee storm: {e}");
            ExitCode::from(3)
        }
    }
}

/// Command-line options of a raw Ogg mount (flattened into the quick forms).
#[derive(Debug, Clone, Default, Args)]
pub struct MountArgs {
    /// Listen to this progressive Ogg URL directly (an Icecast mount, or levee's
    /// /live/ID.ogg), without levee's API; every listener reads Ogg.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: also publish the synthetic marker stream there as an Icecast source, with
    /// this Basic auth (USER:PASSWORD; levee: source:HOST_KEY).
    #[arg(long, requires = "url")]
    pub source_auth: Option<String>,
    /// With --source-auth: PUT with Expect: 100-continue, or legacy SOURCE.
    #[arg(long, default_value = "put", value_parser = ["put", "source"], requires = "url")]
    pub source_method: String,
    /// With --source-auth: audio per Ogg page, ms (a multiple of 20, up to 1000).
    #[arg(long, default_value_t = 20, requires = "url")]
    pub page_ms: u32,
}

impl MountArgs {
    /// With `--url`, makes `sc` a raw-mount scenario: its mount, its server (the URL's
    /// origin) and an all-Ogg audience.
    pub fn apply(&self, sc: &mut Scenario) {
        let Some(url) = &self.url else { return };
        if let Ok(t) = Target::parse(url) {
            sc.server = t.base();
        }
        sc.mix.ws = 0.0;
        sc.mix.ogg = 1.0;
        sc.mount = Some(Mount {
            url: url.clone(),
            source_auth: self.source_auth.clone(),
            source_method: if self.source_method == "source" {
                SourceMethod::Source
            } else {
                SourceMethod::Put
            },
            page_ms: self.page_ms,
        });
    }
}

fn parse_dur(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| Error::invalid(e.to_string()))
}

/// Command-line options of `levee storm ddos` (besides those every quick form has).
#[derive(Debug, Clone, clap::Args)]
pub struct DdosFlags {
    /// Legitimate listeners' joins spread over this much.
    #[arg(long, value_parser = parse_dur, default_value = "10s")]
    pub ramp: Duration,
    /// Access mode of the spaces the run creates.
    #[arg(long, default_value = "ticketed", value_parser = ["open", "ticketed", "challenge"])]
    pub access: String,
    /// Attack the listeners' space (same) or another one (other: the bulkhead case).
    #[arg(long, default_value = "same", value_parser = ["same", "other"])]
    pub attack_target: String,
    /// With --attack-target other: the space to attack (default: one the run creates).
    #[arg(long)]
    pub attack_space: Option<String>,
    /// Source addresses of the attackers (a CIDR inside 127.0.0.0/8).
    #[arg(long, default_value = "127.66.0.0/16")]
    pub attack_sources: String,
    /// When the attack starts, after the run's start.
    #[arg(long, value_parser = parse_dur, default_value = "0s")]
    pub attack_at: Duration,
    /// How long the attack lasts (default: until the run ends).
    #[arg(long, value_parser = parse_dur)]
    pub attack_for: Option<Duration>,
    /// Join-request flood, requests per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub join_flood: f64,
    /// Connection flood, connections per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub conn_flood: f64,
    /// Connection flood: hold each connection silently this long (0s: close at once).
    #[arg(long, value_parser = parse_dur, default_value = "0s")]
    pub conn_hold: Duration,
    /// Slowloris connections held at once (0: off).
    #[arg(long, default_value_t = 0)]
    pub slowloris: u32,
    /// Slow readers held at once (0: off).
    #[arg(long, default_value_t = 0)]
    pub slow_readers: u32,
    /// Stream requests with forged tickets per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub forged_tickets: f64,
    /// WebSocket connections sending garbage, per second (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub garbage_ws: f64,
    /// Workers of each rate-driven module (join flood, connection flood, forged tickets,
    /// garbage WebSocket): connections in flight at once.
    #[arg(long, default_value_t = 64)]
    pub attack_workers: u32,
}

impl DdosFlags {
    /// Applies the options to a scenario of kind `ddos-during-broadcast`.
    pub fn apply(&self, sc: &mut Scenario) {
        sc.ramp = self.ramp;
        let a = &mut sc.attack;
        a.access = match self.access.as_str() {
            "open" => crate::plan::attack::Access::Open,
            "challenge" => crate::plan::attack::Access::Challenge,
            _ => crate::plan::attack::Access::Ticketed,
        };
        a.target = if self.attack_target == "other" {
            AttackTarget::Other
        } else {
            AttackTarget::Same
        };
        a.space = self.attack_space.clone();
        a.sources = self.attack_sources.clone();
        a.at = self.attack_at;
        a.duration = self.attack_for;
        let w = self.attack_workers;
        for (m, rate) in [
            (Module::JoinFlood, self.join_flood),
            (Module::ConnFlood, self.conn_flood),
            (Module::ForgedTicket, self.forged_tickets),
            (Module::GarbageWs, self.garbage_ws),
        ] {
            if rate > 0.0 {
                *a.module_mut(m) = ModuleConfig::new(w, rate);
            }
        }
        if self.conn_flood > 0.0 && !self.conn_hold.is_zero() {
            a.conn_flood.hold = Some(self.conn_hold);
        }
        for (m, n) in [
            (Module::Slowloris, self.slowloris),
            (Module::SlowReader, self.slow_readers),
        ] {
            if n > 0 {
                // Open up to n connections a second until n are held.
                *a.module_mut(m) = ModuleConfig::new(n, n as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::source::source_request;
    use crate::plan::mount::ogg_path;
    use crate::plan::scenario::JoinMode;

    #[test]
    fn command_line_modules_become_attack_tables() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            f: DdosFlags,
        }
        let t = T::parse_from([
            "t",
            "--join-flood",
            "2000",
            "--slowloris",
            "100",
            "--forged-tickets",
            "300",
            "--attack-target",
            "other",
            "--attack-workers",
            "32",
            "--conn-flood",
            "100",
            "--conn-hold",
            "4s",
        ]);
        let mut sc = Scenario::new(Kind::DdosDuringBroadcast, 100);
        t.f.apply(&mut sc);
        sc.validate().unwrap();
        assert_eq!(sc.attack.target, AttackTarget::Other);
        assert_eq!(sc.attack.join_flood, ModuleConfig::new(32, 2000.0));
        assert_eq!(sc.attack.slowloris.workers, 100);
        assert_eq!(sc.attack.conn_flood.hold, Some(Duration::from_secs(4)));
        assert_eq!(sc.attack.slow_reader.workers, 0);
        assert_eq!(
            sc.attack.active(),
            [
                Module::JoinFlood,
                Module::ConnFlood,
                Module::Slowloris,
                Module::ForgedTicket
            ]
        );
        assert_eq!(crate::plan::scenario::mode(&sc), JoinMode::Api);
        // Attackers belong to this scenario only.
        let mut other = Scenario::new(Kind::Capacity, 100);
        other.attack = sc.attack.clone();
        assert!(other.validate().is_err());
    }

    fn mount(url: &str) -> Mount {
        Mount {
            url: url.into(),
            source_auth: Some("source:hackme".into()),
            source_method: SourceMethod::Put,
            page_ms: 20,
        }
    }

    #[test]
    fn mount_urls_paths_labels_and_requests() {
        let m = mount("http://127.0.0.1:8000/live.ogg");
        assert_eq!(
            (m.path(), m.label()),
            ("/live.ogg".into(), "/live.ogg".into())
        );
        let l = mount("http://127.0.0.1:8080/live/k3x9.ogg");
        assert_eq!(l.label(), "k3x9");
        assert_eq!(mount("http://127.0.0.1:8000").path(), "/");
        let req = source_request(&m, "127.0.0.1:8000");
        assert!(req.starts_with("PUT /live.ogg HTTP/1.1\r\n"));
        assert!(req.contains("Authorization: Basic c291cmNlOmhhY2ttZQ==\r\n"));
        assert!(req.contains("Expect: 100-continue\r\n") && req.ends_with("\r\n\r\n"));
        let legacy = Mount {
            source_method: SourceMethod::Source,
            ..m
        };
        let req = source_request(&legacy, "127.0.0.1:8000");
        assert!(req.starts_with("SOURCE /live.ogg HTTP/1.0\r\n") && !req.contains("Expect"));
    }

    #[test]
    fn scenarios_with_a_mount_are_checked() {
        let mut sc = Scenario::new(Kind::Capacity, 10);
        let args = MountArgs {
            url: Some("http://127.0.0.1:8000/live.ogg".into()),
            source_auth: None,
            source_method: "put".into(),
            page_ms: 20,
        };
        args.apply(&mut sc);
        assert_eq!(sc.server, "http://127.0.0.1:8000");
        assert_eq!((sc.mix.ws, sc.mix.ogg), (0.0, 1.0));
        sc.validate().unwrap();
        assert_eq!(ogg_path(&sc, "ignored"), "/live.ogg");
        let mut bad = sc.clone();
        bad.server = "http://127.0.0.1:8080".into();
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mix.ws = 0.5;
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().page_ms = 30;
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().url = "http://10.0.0.1:8000/live.ogg".into();
        bad.server = "http://10.0.0.1:8000".into();
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().source_auth = Some("nocolon".into());
        assert!(bad.validate().is_err());
        let toml = r#"
            kind = "capacity"
            server = "http://127.0.0.1:8000"
            listeners = 5
            [mix]
            ws = 0
            ogg = 1
            [mount]
            url = "http://127.0.0.1:8000/live.ogg"
            source_auth = "source:hackme"
            page_ms = 1000
        "#;
        let t = Scenario::from_toml(toml).unwrap();
        t.validate().unwrap();
        assert_eq!(t.mount.unwrap().page_ms, 1000);
        assert_eq!(
            ogg_path(&Scenario::new(Kind::Capacity, 1), "ab"),
            "/live/ab.ogg"
        );
    }
}
