//! `levee storm --check-audience` against the real binary: listeners of known identities and
//! durations (some leave before the view rule), and attackers that never read, send garbage
//! or forge tickets; the server's audience numbers (`docs/audience.md`) must match what the
//! storm knows it did, and a server that counts otherwise fails the run.

mod common;

use common::Levee;
use std::process::Command;

/// Runs `levee storm ARGS --json FILE`; returns (exit code, stdout, report).
fn storm(args: &[&str], name: &str) -> (i32, String, serde_json::Value) {
    let json = std::env::temp_dir().join(format!("levee-{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("storm")
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("levee storm runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no report: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let _ = std::fs::remove_file(&json);
    (out.status.code().unwrap_or(-1), text, report)
}

fn check<'a>(report: &'a serde_json::Value, figure: &str) -> &'a serde_json::Value {
    report["audience"]["checks"]
        .as_array()
        .expect("audience checks")
        .iter()
        .find(|c| c["figure"] == figure)
        .unwrap_or_else(|| panic!("no check of {figure}: {}", report["audience"]))
}

#[test]
fn the_served_numbers_match_what_the_storm_did_under_attack() {
    let levee = Levee::start(&["--view-after", "3s"]);
    let (code, text, r) = storm(
        &[
            "ddos",
            "--server",
            &levee.base,
            "--listeners",
            "120",
            "--ramp",
            "1s",
            "--hold",
            "9s",
            "--short-share",
            "0.25",
            "--short-for",
            "1s",
            "--check-audience",
            "--sources",
            "127.31.0.0/16",
            "--attack-sources",
            "127.32.0.0/24",
            "--slow-readers",
            "8",
            "--forged-tickets",
            "20",
            "--garbage-ws",
            "4",
        ],
        "storm-audience",
    );
    assert_eq!(code, 0, "{text}");
    let a = &r["audience"];
    assert_eq!(a["passed"], true, "{text}");
    let served = &a["served"];
    // What the storm knows: 120 identities; the long ones are views, the short ones not.
    assert_eq!(a["did"]["identities"], 120, "{text}");
    let sure = a["did"]["viewers_sure"].as_u64().unwrap();
    assert!((80..=100).contains(&sure), "a quarter left early: {text}");
    assert_eq!(served["views"].as_u64().unwrap(), sure, "{text}");
    assert!(served["uniques"].as_u64().unwrap() >= 120, "{text}");
    // The slow readers never read: filtered, not listeners; the forged tickets refused.
    assert!(
        served["filtered"]["never_read"].as_u64().unwrap() >= 8,
        "{text}"
    );
    assert!(
        served["filtered"]["refused_automated"].as_u64().unwrap() > 0,
        "{text}"
    );
    for figure in [
        "sessions",
        "uniques",
        "views",
        "peak.listeners",
        "filtered.sessions",
    ] {
        assert_eq!(check(&r, figure)["ok"], true, "{figure}: {text}");
    }
    assert!(text.contains("audience check: PASS"), "{text}");
}

#[test]
fn the_storm_takes_the_servers_view_rule() {
    // A server whose view rule is 30 s: the storm learns it at the start, so its 5-s
    // listeners are expected to be listeners and no views, and the run passes; a run that
    // assumed the default rule (10 s) would expect none either, so the listeners here stay
    // past 10 s: 12 s.
    let levee = Levee::start(&["--view-after", "30s"]);
    let scenario =
        std::env::temp_dir().join(format!("levee-storm-audience-{}.toml", std::process::id()));
    std::fs::write(
        &scenario,
        format!(
            "kind = \"capacity\"\nserver = \"{}\"\nlisteners = 40\nramp = \"1s\"\nhold = \"12s\"\nsources = \"127.33.0.0/16\"\n[audience]\ncheck = true\n",
            levee.base
        ),
    )
    .unwrap();
    let (code, text, r) = storm(&["run", scenario.to_str().unwrap()], "storm-audience-rule");
    let _ = std::fs::remove_file(&scenario);
    assert_eq!(code, 0, "{text}");
    let a = &r["audience"];
    assert_eq!(a["view_after_s"], 30.0, "{text}");
    assert_eq!(a["did"]["viewers_maybe"], 0, "{text}");
    assert_eq!(a["served"]["views"], 0, "{text}");
    assert_eq!(a["served"]["uniques"], 40, "{text}");
    assert_eq!(check(&r, "views")["ok"], true, "{text}");
}
