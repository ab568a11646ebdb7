//! The `levee storm` command line: `run SCENARIO.toml`, the quick forms `capacity`,
//! `start-storm` and `churn`, and the hidden `agent` mode used by `--procs`.
//!
//! Exit codes (fixed, for scripts and CI): 0 the run was valid and every objective held;
//! 1 an objective failed; 2 the run was invalid (the generator itself was saturated or hit its
//! own limits, or a listener process failed); 3 the run could not be made (bad scenario, server
//! unreachable).

use crate::report::Report;
use crate::run::{self, Output};
use crate::scenario::{Kind, Reconnect, Scenario, Step};
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

fn dur(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
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
    join: Option<crate::joinapi::JoinMode>,
    #[command(flatten)]
    mount: crate::icecast::MountArgs,
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
        sc.mix.ws = 1.0 - ogg;
        sc.mix.ogg = ogg;
        sc.meter.stall_ms = self.stall_ms;
        sc.meter.playout_ms = self.playout_ms;
        sc.meter.read_every_ms = self.read_every_ms;
        sc.meter.timed_every = self.timed_every;
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
    ddos: crate::ddos::DdosFlags,
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

/// Raises the soft open-files limit to the hard one (listeners are sockets).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Worker threads for each of `procs` processes sharing the machine.
pub fn threads_per_proc(procs: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (cores / procs.max(1)).max(1)
}

/// The exit code of a finished run (see the module docs).
pub fn exit_code(r: &Report) -> u8 {
    if !r.valid {
        2
    } else if !r.passed {
        1
    } else {
        0
    }
}

fn scenario_of(cmd: StormCommand) -> Result<(Scenario, OutArgs), String> {
    Ok(match cmd {
        StormCommand::Run(a) => {
            let text = std::fs::read_to_string(&a.file)
                .map_err(|e| format!("{}: {e}", a.file.display()))?;
            let mut sc =
                Scenario::from_toml(&text).map_err(|e| format!("{}: {e}", a.file.display()))?;
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
        return crate::agent::agent_main();
    }
    if let StormCommand::AttackAgent = args.command {
        return crate::attackers::agent_main();
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
        return crate::ddos::main(&rt, sc, output);
    }
    match rt.block_on(run::run(sc, output)) {
        Ok(report) => {
            print!("{}", run::summary_text(&report));
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
