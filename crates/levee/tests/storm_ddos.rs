//! `levee storm ddos` against the real binary: 200 legitimate listeners join through the join
//! API and listen while a few hundred attackers from another address range run every attack
//! module against the same space, on a server whose limits are lowered so that the shield
//! engages (and with 127.0.0.1 not exempt). The legitimate listeners keep their audio; the
//! attackers are refused; the report keeps the two apart.

mod common;

use common::Levee;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LEVEE: &str = env!("CARGO_BIN_EXE_levee");
const ADMIN: &str = "storm-ddos-admin-key";

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("levee-{name}-{}", std::process::id()))
}

/// Runs `levee storm ARGS`, killed after `limit`; returns (exit code, stdout, stderr).
fn storm(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = Command::new(LEVEE)
        .arg("storm")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start levee storm");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("levee storm ddos did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        code,
        reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    )
}

#[test]
fn legitimate_listeners_keep_their_audio_while_every_attack_module_is_refused() {
    let levee = Levee::start(&[
        // 127.0.0.1 and every 127.x source is subject to the limits.
        "--allow",
        "127.254.0.1/32",
        "--admin-key",
        ADMIN,
        "--header-timeout",
        "2s",
        "--stall-timeout",
        "2s",
        "--join-rate-per-prefix",
        "100",
        "--conn-rate-per-prefix",
        "400",
        "--strikes-to-ban",
        "20",
        "--challenge-join-rate",
        "200",
    ]);
    let json = temp("ddos.json");
    let html = temp("ddos.html");
    let (code, stdout, stderr) = storm(
        &[
            "ddos",
            "--server",
            &levee.base,
            "--listeners",
            "200",
            "--ramp",
            "3s",
            "--hold",
            "7s",
            "--ogg-share",
            "0.5",
            "--sources",
            "127.1.0.0/16",
            "--attack-sources",
            "127.66.0.0/24",
            "--join-flood",
            "300",
            "--conn-flood",
            "150",
            "--slowloris",
            "60",
            "--slow-readers",
            "20",
            "--forged-tickets",
            "150",
            "--garbage-ws",
            "60",
            "--attack-workers",
            "12",
            "--expect",
            "delivered_ratio >= 0.999",
            "--expect",
            "listeners.failed == 0",
            "--expect",
            "attack.total.refused > 0",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--quiet",
        ],
        Duration::from_secs(60),
    );
    println!("{stdout}");
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); exit {code}; stderr:\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    // 0: valid and passed. 2 only if the generator itself was overloaded (a busy machine):
    // the figures below must hold either way; 1 (an objective failed) and 3 must not happen.
    assert!(
        code == 0 || code == 2,
        "exit {code}: objectives {}\nstderr:\n{stderr}",
        r["objectives"]
    );
    if code == 2 {
        println!("run marked invalid: {}", r["invalid_reasons"]);
        assert!(
            !r["invalid_reasons"]
                .to_string()
                .contains("attackers did not report"),
            "{}",
            r["invalid_reasons"]
        );
    }

    // What the legitimate listeners got.
    let space = r["space"].as_str().expect("space").to_owned();
    assert_eq!(r["listeners"]["planned"], 200);
    assert_eq!(r["listeners"]["joined"], 200, "{}", r["failures"]);
    assert_eq!(r["listeners"]["failed"], 0);
    let delivered = r["delivered_ratio"].as_f64().unwrap();
    assert!(delivered >= 0.999, "delivered {delivered}");
    let legit = &r["legit"];
    assert_eq!(legit["space"], space.as_str());
    assert_eq!(legit["join_mode"], "api");
    assert_eq!(legit["join_admitted"], 200, "{}", r["join"]);
    assert_eq!(r["join"]["admitted"], 200);
    assert_eq!(r["join"]["answers"]["200"], 200);
    assert!(legit["join_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(legit["join_ms"]["p99"].as_f64().unwrap() <= legit["ttfa_ms"]["max"].as_f64().unwrap());
    assert_eq!(legit["delivered_ratio"], r["delivered_ratio"]);

    // What the attackers got: counted, every module, refused by reason.
    let a = &r["attack"];
    assert!(a["error"].is_null(), "{}", a["error"]);
    assert_eq!(a["target_space"], space.as_str());
    assert_eq!(a["same_space"], true);
    assert_eq!(a["addresses"], 254);
    assert!(a["cpu_s"].as_f64().unwrap() > 0.0);
    for m in [
        "join_flood",
        "conn_flood",
        "slowloris",
        "slow_reader",
        "forged_ticket",
        "garbage_ws",
    ] {
        let s = &a["modules"][m];
        assert!(s["attempts"].as_u64().unwrap() > 0, "{m}: {s}");
        assert!(s["refused"].as_u64().unwrap() > 0, "{m} never refused: {s}");
        assert!(!s["refusals"].as_object().unwrap().is_empty(), "{m}: {s}");
        assert!(s["cpu_s"].as_f64().unwrap() > 0.0, "{m}: {s}");
    }
    let total = &a["total"];
    let refusals = total["refusals"].as_object().unwrap();
    assert!(
        refusals
            .get("http_429")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0,
        "no rate limit tripped: {total}"
    );
    assert!(total["refused"].as_u64().unwrap() > 0);
    assert!(total["bytes_received"].as_u64().unwrap() > 0);
    // A forged ticket never opens a stream.
    assert_eq!(a["modules"]["forged_ticket"]["accepted"], 0);
    let forged = a["modules"]["forged_ticket"]["refusals"].to_string();
    assert!(
        forged.contains("http_403") || forged.contains("http_429"),
        "{forged}"
    );
    // Slow heads are cut (408) or refused at once.
    let slow = a["modules"]["slowloris"]["refusals"].to_string();
    assert!(
        slow.contains("http_408")
            || slow.contains("http_429")
            || slow.contains("closed_unanswered"),
        "{slow}"
    );

    // The two stay apart: the listeners' bytes are their formats' bytes, nothing of the attack.
    let by_format: u64 = r["by_format"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(r["bytes_received"].as_u64().unwrap(), by_format);
    let page = std::fs::read_to_string(&html).expect("HTML report");
    assert!(page.contains("Legitimate listeners and attackers"));
    assert!(page.contains("Attack modules"));

    // The server saw it the same way: it refused, by its own counters.
    let shield = levee.http(
        "GET",
        "/api/admin/shield",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        b"",
    );
    assert_eq!(shield.status, 200, "{}", shield.body);
    let s: serde_json::Value = serde_json::from_str(&shield.body).unwrap();
    let refused: u64 = s["refused"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert!(refused > 0, "{s}");
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&html);
}
