//! `levee storm` finds a gap it injected: the synthetic host drops 1 s of audio (as a network
//! outage would) and every listener's report shows one gap of that duration, on every format
//! (WebSocket, Ogg and LL-HLS).
//! Also covers `storm run SCENARIO.toml` and objectives gating the exit code.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LEVEE: &str = env!("CARGO_BIN_EXE_levee");

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("levee-{name}-{}", std::process::id()))
}

fn storm(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(LEVEE)
        .arg("storm")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start levee storm");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code().unwrap_or(-1), out);
        }
        assert!(Instant::now() < deadline, "storm did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn injected_one_second_gap_is_found_with_its_duration() {
    gap_is_found("auto");
}

#[test]
fn the_same_gap_is_found_when_batched_reads_go_through_epoll() {
    gap_is_found("epoll");
}

fn gap_is_found(batch_io: &str) {
    let server = common::Levee::start(&[]);
    let scenario = temp(&format!("storm-gap-{batch_io}.toml"));
    let json = temp(&format!("storm-gap-{batch_io}.json"));
    std::fs::write(
        &scenario,
        format!(
            r#"
name = "gap-injection"
kind = "capacity"
server = "{}"
listeners = 60
ramp = "1s"
hold = "4s"
sources = "127.4.0.0/16"
objectives = ["gap_ms_total < 1ms"]
[mix]
ws = 1.0
ogg = 1.0
hls = 1.0
[host]
pause_at = "2500ms"
pause_for = "1s"
[meter]
batch_io = "{batch_io}"
"#,
            server.base
        ),
    )
    .unwrap();
    let (code, out) = storm(&[
        "run",
        scenario.to_str().unwrap(),
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    // The objective forbids any gap, so the run must fail, and say so in its exit code.
    assert_ne!(code, 0, "{out}");
    assert_eq!(r["passed"], false);
    assert_eq!(r["objectives"][0]["passed"], false);

    let joined = r["listeners"]["joined"].as_u64().unwrap();
    assert_eq!(joined, 60, "{out}");
    // Batched reads went where they were asked to: through io_uring by default (this needs
    // Linux 6.1 or later with io_uring allowed), else through epoll.
    let threads = r["generator"]["threads"].as_u64().unwrap();
    let uring = r["generator"]["io_uring_threads"].as_u64().unwrap();
    assert_eq!(
        uring,
        if batch_io == "epoll" { 0 } else { threads },
        "{out}"
    );
    assert_eq!(
        r["host"]["packets_dropped"], 50,
        "1 s of 20 ms packets dropped"
    );
    // One gap per listener, of 1 s (50 frames × 20 ms), whatever the format.
    assert_eq!(r["gaps"].as_u64().unwrap(), joined, "{out}");
    let total = r["gap_ms_total"].as_f64().unwrap();
    assert!(
        (total - 1000.0 * joined as f64).abs() < 1.0 * joined as f64,
        "gap total {total}"
    );
    for q in ["p50", "max"] {
        let worst = r["worst_gap_ms"][q].as_f64().unwrap();
        assert!((worst - 1000.0).abs() <= 5.0, "worst gap {q} {worst}");
    }
    assert!(r["by_format"]["ogg"]["joined"].as_u64().unwrap() > 10);
    assert!(r["by_format"]["ws"]["joined"].as_u64().unwrap() > 10);
    assert!(r["by_format"]["hls"]["joined"].as_u64().unwrap() > 10);
    // HLS listeners ask for a part and for the playlist that names the next one; straight
    // from levee, every one of their requests reached it.
    let hls = &r["hls"];
    let per_part = hls["requests_per_part"].as_f64().unwrap();
    assert!((1.9..2.6).contains(&per_part), "{hls}");
    assert!(
        (hls["origin_share"].as_f64().unwrap() - 1.0).abs() < 0.02,
        "{hls}"
    );
    // Nothing came for 1 s (plus a packet), longer than the 1 s stall bound: one stall each.
    assert_eq!(r["listeners_with_stall_pct"], 100.0);
    let stall = r["worst_stall_ms"]["p50"].as_f64().unwrap();
    assert!((1000.0..1300.0).contains(&stall), "stall {stall}");
    // The gap shows in the timeline at the second it ended (3 s after the start).
    let at: Vec<u64> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["gap_ms"].as_f64().unwrap() > 0.0)
        .map(|p| p["t"].as_u64().unwrap())
        .collect();
    assert!(
        !at.is_empty() && at.iter().all(|t| (3..=4).contains(t)),
        "gap seconds {at:?}"
    );
    let delivered = r["delivered_ratio"].as_f64().unwrap();
    assert!(delivered < 0.9 && delivered > 0.7, "delivered {delivered}");
    let _ = std::fs::remove_file(scenario);
    let _ = std::fs::remove_file(json);
}

#[test]
fn every_listener_sees_its_server_die_batched_or_timed() {
    // The server's end of the stream can come with the last bytes of a batched read; no
    // listener may miss it (it would be counted as still listening, in silence).
    let server = common::Levee::start(&[]);
    let space = server.create_space("dies under its listeners");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = common::publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    server.wait_live(&id, Duration::from_secs(10));
    let json = temp("storm-dies.json");
    let mut child = Command::new(LEVEE)
        .args(["storm", "churn", "--server", &server.base, "--space", &id])
        .args([
            "--listeners",
            "40",
            "--ramp",
            "1s",
            "--waves",
            "1",
            "--wave-every",
            "4s",
        ])
        .args([
            "--wave-fraction",
            "0",
            "--hold",
            "1s",
            "--reconnect",
            "naive",
        ])
        .args([
            "--ogg-share",
            "0.5",
            "--sources",
            "127.10.0.0/16",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .expect("storm starts");
    common::wait_until(Duration::from_secs(10), "40 listeners", || {
        server.space(&id)["listeners"] == 40
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(server); // SIGKILL: only the kernel's FIN tells the listeners
    let _ = child.wait();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("storm's report")).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(report["listeners"]["joined"], 40, "{}", report["listeners"]);
    assert_eq!(
        report["sessions"]["dropped"], 40,
        "every listener saw the server go: {}",
        report["sessions"]
    );
}
