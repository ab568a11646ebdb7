//! The `ddos-during-broadcast` scenario: legitimate listeners join through the join API and
//! listen (measured, as in every storm run) while the attack agent
//! ([`crate::run::agent::spawn_attack_agent`]) hits the same space, or another one (counted, not
//! measured), over the attack's window. Returns a [`crate::report::ddos::DdosReport`].

use crate::actors::attackers;
use crate::actors::attackers::AttackPlan;
use crate::actors::host;
use crate::error::{Error, Result};
use crate::net::clock::now_us;
use crate::net::http;
use crate::observe::attack::AttackResult;
use crate::observe::stats::HostStats;
use crate::plan::attack;
use crate::plan::attack::AttackTarget;
use crate::plan::objective::Objective;
use crate::plan::scenario::Kind;
use crate::plan::scenario::Scenario;
use crate::plan::target::Target;
use crate::report::attack::AttackReport;
use crate::report::ddos::judge;
use crate::report::ddos::legit_summary;
use crate::report::ddos::render_html;
use crate::report::ddos::summary_text;
use crate::report::ddos::DdosReport;
use crate::run;
use crate::run::Output;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::watch;

/// Creates a space with an access mode; returns (id, host key).
async fn create_space(
    target: &Target,
    title: &str,
    access: attack::Access,
) -> Result<(String, String)> {
    let info = http::create_space(target, title, Some(access.label())).await?;
    let key = info
        .host_key
        .ok_or(Error::server("no host key in answer"))?;
    Ok((info.id, key))
}

/// Starts the attackers: in their own process, or on threads of this one if that process
/// cannot be started.
fn start_attack(
    plan: AttackPlan,
    exe: Option<&std::path::Path>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<AttackResult>> {
    let exe = exe
        .map(|p| p.to_path_buf())
        .or_else(|| std::env::current_exe().ok());
    if let Some(exe) = exe {
        match crate::run::agent::spawn_attack_agent(&exe, &plan, stop.clone()) {
            Ok(h) => return h,
            Err(e) => eprintln!("storm: {e}; running the attackers in this process"),
        }
    }
    tokio::task::spawn_blocking(move || Ok(attackers::run_attack(&plan, stop)))
}

/// Runs the scenario. See the module docs.
pub async fn run(sc: Scenario, out: Output) -> Result<DdosReport> {
    sc.validate()?;
    if sc.kind != Kind::DdosDuringBroadcast {
        return Err(Error::server("not a ddos-during-broadcast scenario"));
    }
    let target = Target::parse(&sc.server)?;
    let objectives = if sc.objectives.is_empty() {
        run::DEFAULT_OBJECTIVES
            .iter()
            .map(|e| e.to_string())
            .collect()
    } else {
        sc.objectives.clone()
    }
    .iter()
    .map(|e| Objective::parse(e))
    .collect::<Result<Vec<_>, _>>()?;
    let a = sc.attack.clone();
    // The spaces: given, or created (each then with its own synthetic host).
    let mut created: Vec<(String, String)> = Vec::new();
    let listen = match &sc.space {
        Some(id) => {
            http::get_space(&target, id).await?;
            id.clone()
        }
        None => {
            let (id, key) = create_space(&target, &format!("storm {}", sc.name), a.access).await?;
            created.push((id.clone(), key));
            id
        }
    };
    let attacked = match (a.target, &a.space) {
        (AttackTarget::Same, _) => listen.clone(),
        (AttackTarget::Other, Some(id)) => {
            http::get_space(&target, id).await?;
            id.clone()
        }
        (AttackTarget::Other, None) => {
            let (id, key) = create_space(&target, "storm attack target", a.access).await?;
            created.push((id.clone(), key));
            id
        }
    };
    // run::run starts its schedule 1 s (2 s with agents) after it is called; the hosts and the
    // attackers are anchored the same way (a few ms apart at most).
    let procs = sc.procs.max(1);
    let anchor = now_us() + if procs > 1 { 2_000_000 } else { 1_000_000 };
    let run_len = sc.run_length();
    let host_end = anchor + run_len.as_micros() as u64 + 1_000_000;
    let (stop_tx, stop_rx) = watch::channel(false);
    let hosts: Vec<(String, tokio::task::JoinHandle<HostStats>)> = created
        .iter()
        .map(|(id, key)| {
            (
                id.clone(),
                tokio::spawn(host::run_host(
                    target.clone(),
                    id.clone(),
                    key.clone(),
                    sc.host.clone(),
                    anchor,
                    host_end,
                    stop_rx.clone(),
                )),
            )
        })
        .collect();
    let window = a.window(run_len);
    let attack_task = (!a.active().is_empty()).then(|| {
        let plan = AttackPlan {
            server: sc.server.clone(),
            space: attacked.clone(),
            start_us: anchor + window.0.as_micros() as u64,
            end_us: anchor + window.1.as_micros() as u64,
            config: a.clone(),
            seed: sc.seed ^ 0xA77A_C4ED,
        };
        start_attack(plan, out.exe.as_deref(), stop_rx.clone())
    });

    let mut legit_sc = sc.clone();
    legit_sc.space = Some(listen.clone());
    let legit = run::run(
        legit_sc,
        Output {
            json: None,
            html: None,
            quiet: out.quiet,
            exe: out.exe.clone(),
        },
    )
    .await;
    // The listeners are done: stop the attackers still holding connections and the hosts.
    let _ = stop_tx.send(true);
    let attack_result = match attack_task {
        Some(h) => Some(
            h.await
                .map_err(|e| Error::server(e.to_string()))
                .and_then(|r| r),
        ),
        None => None,
    };
    let mut host_stats: BTreeMap<String, HostStats> = BTreeMap::new();
    for (id, h) in hosts {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), h).await {
            host_stats.insert(id, s);
        }
    }
    if sc.host.end_space {
        for (id, key) in &created {
            if let Err(e) = http::end_space(&target, id, key).await {
                eprintln!("storm: could not end space {id}: {e}");
            }
        }
    }
    let base = legit?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mut attack_report = crate::report::attack::report(
        &a,
        &attacked,
        attacked == listen,
        window,
        attack_result.as_ref().and_then(|r| r.as_ref().ok()),
        cores,
    );
    let mut d = DdosReport {
        legit: legit_summary(&base, crate::plan::scenario::mode(&sc)),
        base,
        attack_host: (attacked != listen)
            .then(|| host_stats.get(&attacked).cloned())
            .flatten(),
        attack: AttackReport::default(),
    };
    if let Some(h) = host_stats.get(&listen) {
        d.base.host = Some(h.clone());
        if let Some(e) = &h.error {
            d.base.valid = false;
            d.base
                .invalid_reasons
                .push(format!("synthetic host failed: {e}"));
        }
    }
    if let Some(Err(e)) = &attack_result {
        attack_report.error = Some(e.to_string());
        d.base.valid = false;
        d.base
            .invalid_reasons
            .push(format!("the attackers did not report: {e}"));
    }
    if attack_report.total.local_failures > 0 {
        d.base.invalid_reasons.push(format!(
            "{} attack attempts failed on the generator's own limits (addresses, ports, descriptors)",
            attack_report.total.local_failures
        ));
        d.base.valid = false;
    }
    d.attack = attack_report;
    judge(&mut d, &objectives);
    if let Some(a) = d.base.audience.take() {
        // The attackers' streams on the listeners' space are sessions there too (filtered).
        let on_listen = attacked == listen;
        let attack = attack_result
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .filter(|_| on_listen);
        run::audience_verdict(
            &mut d.base,
            &target,
            &listen,
            a.did,
            attack,
            sc.audience.check,
        )
        .await;
    }
    if let Some(p) = &out.json {
        let text = serde_json::to_string_pretty(&d).map_err(|e| Error::server(e.to_string()))?;
        std::fs::write(p, text)
            .map_err(|e| Error::server(format!("write {}: {e}", p.display())))?;
    }
    if let Some(p) = &out.html {
        std::fs::write(p, render_html(&d))
            .map_err(|e| Error::server(format!("write {}: {e}", p.display())))?;
    }
    Ok(d)
}

/// Runs the scenario on `rt`, prints the summary, writes the files; the exit code is that of
/// every storm run (see [`crate::cli`]).
pub fn main(rt: &tokio::runtime::Runtime, sc: Scenario, out: Output) -> ExitCode {
    let (json, html) = (out.json.clone(), out.html.clone());
    match rt.block_on(run(sc, out)) {
        Ok(d) => {
            print!("{}", summary_text(&d));
            if let Some(p) = &json {
                println!("json: {}", p.display());
            }
            if let Some(p) = &html {
                println!("html: {}", p.display());
            }
            ExitCode::from(crate::report::exit_code(&d.base))
        }
        Err(e) => {
            eprintln!("levee storm: {e}");
            ExitCode::from(3)
        }
    }
}
