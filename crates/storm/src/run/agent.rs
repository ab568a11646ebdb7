//! Child processes: the one protocol every kind of agent speaks. The parent starts
//! `levee storm <subcommand>` of its own binary, and the agent runs its plan and reports back.
//! Listener agents (`storm agent`, [`listener_main`]) spread the audience over processes
//! (histograms merge exactly); the attack agent (`storm attack-agent`, [`attacker_main`]) keeps
//! the attackers' CPU and sockets out of the listeners' process.
//!
//! Contract (JSON lines):
//! - parent → agent stdin: one line, the plan; later, `stop` to end early. End of stdin (the
//!   parent died) also stops the agent.
//! - agent → parent stdout: any number of [`AgentMsg::Progress`] (listener agents: one per
//!   second), then one [`AgentMsg::Result`] (or [`AgentMsg::Error`]), then exit. Diagnostics
//!   go to stderr.
//!
//! Lines are bounded ([`MAX_LINE`]), and so is the wait for a result when the parent gives a
//! hard end; a child that sends anything else is reported as failed.

use crate::actors::attackers::{run_attack, AttackPlan};
use crate::error::{Error, Result};
use crate::net::clock::now_us;
use crate::observe::attack::AttackResult;
use crate::plan::target::Target;
use crate::run::engine::{self, PartResult, Plan, Progress};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Longest line accepted on either side.
pub const MAX_LINE: usize = 64 << 20;
/// How long a child may take to exit after its result.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What an agent writes on stdout: progress of kind `P`, then a result of kind `R`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMsg<P, R> {
    /// Progress so far.
    Progress(Box<P>),
    /// The final figures.
    Result(Box<R>),
    /// Why the agent could not run.
    Error(String),
}

/// What an agent without progress reports sends as progress (never sent).
#[derive(Debug, Serialize, Deserialize)]
pub enum NoProgress {}

/// One agent to start.
pub struct Spawn<'a, T> {
    /// The binary (this one).
    pub exe: &'a Path,
    /// `levee storm <subcommand>`.
    pub subcommand: &'a str,
    /// A name for errors ("agent 3", "the attack process").
    pub label: String,
    /// The plan, sent as the first line.
    pub plan: &'a T,
    /// No result by this time (Unix µs) fails the agent; `None`: its own bounds are trusted.
    pub hard_end_us: Option<u64>,
}

/// Starts one agent; progress lines go to `progress`, and the handle yields its result. The
/// process is killed if the handle is dropped; `stop` turning true says `stop` on its stdin.
pub fn spawn<T, P, R>(
    s: Spawn<'_, T>,
    progress: Option<mpsc::Sender<P>>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<R>>>
where
    T: Serialize,
    P: DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    let label = s.label;
    let line =
        serde_json::to_string(s.plan).map_err(|e| Error::agent(format!("{label}: {e}")))? + "\n";
    let mut child = tokio::process::Command::new(s.exe)
        .args(["storm", s.subcommand])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {label} ({})", s.exe.display()), e))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::agent(format!("{label}: no pipes")));
    };
    let hard_end_us = s.hard_end_us;
    Ok(tokio::spawn(async move {
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Error::io(format!("{label}: sending the plan"), e))?;
        // Keep stdin open (its end means "stop"); say "stop" when told.
        let stopper = tokio::spawn(async move {
            loop {
                if stop.changed().await.is_err() {
                    break;
                }
                if *stop.borrow() {
                    let _ = stdin.write_all(b"stop\n").await;
                }
            }
            stdin
        });
        let read = async {
            let mut lines = BufReader::new(stdout);
            let mut buf = String::new();
            let mut result = Err(Error::agent(format!("{label} ended without a result")));
            loop {
                buf.clear();
                let n = tokio::io::AsyncReadExt::take(&mut lines, MAX_LINE as u64)
                    .read_line(&mut buf)
                    .await
                    .map_err(|e| Error::io(format!("{label}: reading"), e))?;
                if n == 0 {
                    break;
                }
                match serde_json::from_str::<AgentMsg<P, R>>(&buf) {
                    Ok(AgentMsg::Progress(p)) => {
                        if let Some(tx) = &progress {
                            let _ = tx.try_send(*p);
                        }
                    }
                    Ok(AgentMsg::Result(r)) => result = Ok(*r),
                    Ok(AgentMsg::Error(e)) => result = Err(Error::agent(format!("{label}: {e}"))),
                    Err(e) => {
                        result = Err(Error::agent(format!("{label}: bad line: {e}")));
                        break;
                    }
                }
            }
            result
        };
        let result = match hard_end_us {
            None => read.await,
            Some(end) => {
                let left = end.saturating_sub(now_us()).max(1);
                tokio::time::timeout(Duration::from_micros(left), read)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::agent(format!("{label} did not finish in time")))
                    })
            }
        };
        stopper.abort();
        if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        result
    }))
}

/// Spawns `plan.procs` listener agents; their progress goes to `progress` tagged with the
/// agent's index. Each handle yields that agent's result.
pub fn spawn_listener_agents(
    exe: &Path,
    plan: &Plan,
    progress: mpsc::Sender<(u32, Progress)>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<Result<PartResult>>>> {
    let mut out = Vec::new();
    for k in 0..plan.procs {
        let mut p = plan.clone();
        p.proc_index = k;
        let (tx, mut rx) = mpsc::channel::<Progress>(64);
        let fwd = progress.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let _ = fwd.try_send((k, p));
            }
        });
        let spawn = Spawn {
            exe,
            subcommand: "agent",
            label: format!("agent {k}"),
            plan: &p,
            hard_end_us: None,
        };
        out.push(self::spawn(spawn, Some(tx), stop.clone())?);
    }
    Ok(out)
}

/// Starts the attack agent with `plan`. Waits are bounded by the plan's end plus its modules'
/// holds and a margin.
pub fn spawn_attack_agent(
    exe: &Path,
    plan: &AttackPlan,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<AttackResult>>> {
    let longest_hold = crate::plan::attack::MODULES
        .iter()
        .map(|m| plan.config.module(*m).hold_for(*m))
        .max()
        .unwrap_or_default();
    let spawn = Spawn {
        exe,
        subcommand: "attack-agent",
        label: "the attack process".into(),
        plan,
        hard_end_us: Some(plan.end_us + longest_hold.as_micros() as u64 + 30_000_000),
    };
    self::spawn::<_, NoProgress, _>(spawn, None, stop)
}

fn emit<P: Serialize, R: Serialize>(msg: &AgentMsg<P, R>) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The agent's side: reads the plan, runs it with a stop flag fed by stdin, and reports. `run`
/// gets a way to send progress.
fn serve<T, P, R>(
    run: impl FnOnce(T, watch::Receiver<bool>, &dyn Fn(P)) -> std::result::Result<R, String>,
) -> std::process::ExitCode
where
    T: DeserializeOwned,
    P: Serialize,
    R: Serialize,
{
    crate::net::socket::raise_fd_limit();
    let mut first = String::new();
    if std::io::Read::take(std::io::stdin().lock(), MAX_LINE as u64)
        .read_line(&mut first)
        .is_err()
    {
        emit::<P, R>(&AgentMsg::Error("cannot read the plan".into()));
        return std::process::ExitCode::FAILURE;
    }
    let plan: T = match serde_json::from_str(&first) {
        Ok(p) => p,
        Err(e) => {
            emit::<P, R>(&AgentMsg::Error(format!("bad plan: {e}")));
            return std::process::ExitCode::FAILURE;
        }
    };
    let progress = |p: P| emit::<P, R>(&AgentMsg::Progress(Box::new(p)));
    match run(plan, stop_on_stdin(), &progress) {
        Ok(r) => {
            emit::<P, R>(&AgentMsg::Result(Box::new(r)));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            emit::<P, R>(&AgentMsg::Error(e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `levee storm agent`: one share of the listeners (see the module docs).
pub fn listener_main() -> std::process::ExitCode {
    serve(|plan: Plan, stop, progress: &dyn Fn(Progress)| {
        let threads = engine::threads_per_proc(plan.procs);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads as usize)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        Ok(rt.block_on(async move {
            let (ptx, mut prx) = mpsc::channel::<Progress>(64);
            let part = tokio::spawn(engine::run_part(plan, ptx, stop, threads));
            while let Some(p) = prx.recv().await {
                progress(p);
            }
            part.await.unwrap_or_default()
        }))
    })
}

/// `levee storm attack-agent`: the attackers (see the module docs).
pub fn attacker_main() -> std::process::ExitCode {
    serve(|plan: AttackPlan, stop, _: &dyn Fn(NoProgress)| {
        plan.config
            .validate()
            .and(Target::parse(&plan.server).map(|_| ()))
            .map_err(|e| e.to_string())?;
        Ok(run_attack(&plan, stop))
    })
}

/// Watches standard input on a thread of its own: a line `stop`, or the end of input (the
/// parent went away), flips the returned flag. Lines are read at most 4 KiB at a time.
pub(crate) fn stop_on_stdin() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::Read::take(std::io::stdin().lock(), 4096).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "stop" => break,
                Ok(_) => {}
            }
        }
        let _ = stop_tx.send(true);
    });
    stop_rx
}
