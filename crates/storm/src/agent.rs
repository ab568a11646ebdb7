//! Spreading listeners over processes: the parent spawns N agents (`levee storm agent`) of the
//! same binary, each runs its share of the plan and reports back; histograms merge exactly.
//!
//! Contract (the agent protocol, JSON lines):
//! - parent → agent stdin: one line, the [`Plan`] (with the agent's `proc_index`); later,
//!   `stop` to end early. End of stdin (the parent died) also stops the agent.
//! - agent → parent stdout: one [`AgentMsg::Progress`] per second, then one
//!   [`AgentMsg::Result`] (or [`AgentMsg::Error`]), then exit. Diagnostics go to stderr.
//!
//! Lines are bounded ([`MAX_LINE`]); a child that sends anything else is reported as failed.

use crate::engine::{self, PartResult, Plan, Progress};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Longest line accepted on either side.
pub const MAX_LINE: usize = 64 << 20;

/// What an agent writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMsg {
    /// One second of progress.
    Progress(Box<Progress>),
    /// The final figures.
    Result(Box<PartResult>),
    /// Why the agent could not run.
    Error(String),
}

/// Spawns `procs` agents running `exe storm agent`; their progress goes to `progress` tagged
/// with the agent's index. Each handle yields that agent's result.
pub fn spawn_agents(
    exe: &Path,
    plan: &Plan,
    progress: mpsc::Sender<(u32, Progress)>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<Result<PartResult, String>>>, String> {
    let mut out = Vec::new();
    for k in 0..plan.procs {
        let mut p = plan.clone();
        p.proc_index = k;
        let line = serde_json::to_string(&p).map_err(|e| e.to_string())? + "\n";
        let mut child = tokio::process::Command::new(exe)
            .args(["storm", "agent"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start agent {k} ({}): {e}", exe.display()))?;
        let mut stdin = child.stdin.take().ok_or("agent stdin")?;
        let stdout = child.stdout.take().ok_or("agent stdout")?;
        let progress = progress.clone();
        let mut stop = stop.clone();
        out.push(tokio::spawn(async move {
            stdin
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("agent {k}: {e}"))?;
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
            let mut lines = BufReader::new(stdout);
            let mut buf = String::new();
            let mut result = Err(format!("agent {k} ended without a result"));
            loop {
                buf.clear();
                let n = tokio::io::AsyncReadExt::take(&mut lines, MAX_LINE as u64)
                    .read_line(&mut buf)
                    .await
                    .map_err(|e| format!("agent {k}: {e}"))?;
                if n == 0 {
                    break;
                }
                match serde_json::from_str::<AgentMsg>(&buf) {
                    Ok(AgentMsg::Progress(p)) => {
                        let _ = progress.try_send((k, *p));
                    }
                    Ok(AgentMsg::Result(r)) => result = Ok(*r),
                    Ok(AgentMsg::Error(e)) => result = Err(format!("agent {k}: {e}")),
                    Err(e) => {
                        result = Err(format!("agent {k}: bad line: {e}"));
                        break;
                    }
                }
            }
            stopper.abort();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
            result
        }));
    }
    Ok(out)
}

fn emit(msg: &AgentMsg) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The agent's side (`levee storm agent`): see the module docs.
pub fn agent_main() -> std::process::ExitCode {
    crate::cli::raise_fd_limit();
    let stdin = std::io::stdin();
    let mut first = String::new();
    if std::io::Read::take(stdin.lock(), MAX_LINE as u64)
        .read_line(&mut first)
        .is_err()
    {
        emit(&AgentMsg::Error("cannot read the plan".into()));
        return std::process::ExitCode::FAILURE;
    }
    let plan: Plan = match serde_json::from_str(&first) {
        Ok(p) => p,
        Err(e) => {
            emit(&AgentMsg::Error(format!("bad plan: {e}")));
            return std::process::ExitCode::FAILURE;
        }
    };
    let threads = crate::cli::threads_per_proc(plan.procs);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&AgentMsg::Error(format!("runtime: {e}")));
            return std::process::ExitCode::FAILURE;
        }
    };
    let stop_rx = stop_on_stdin();
    let result = rt.block_on(async move {
        let (ptx, mut prx) = mpsc::channel::<Progress>(64);
        let printer = tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                emit(&AgentMsg::Progress(Box::new(p)));
            }
        });
        let r = engine::run_part(plan, ptx, stop_rx, threads).await;
        let _ = printer.await;
        r
    });
    emit(&AgentMsg::Result(Box::new(result)));
    std::process::ExitCode::SUCCESS
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
