//! `levee storm` against the real binary: a small storm's report agrees with what the server's
//! own `/metrics` says it sent, with the listeners spread over two agent processes.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const LEVEE: &str = env!("CARGO_BIN_EXE_levee");

/// `GET /metrics`, the samples of one space: `name{format}` or `name` → value.
fn metrics(base: &str, space: &str) -> BTreeMap<String, f64> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read metrics");
    let want = format!("space=\"{space}\"");
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&want))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let key = match series.split("format=\"").nth(1) {
            Some(rest) => format!("{name}{{{}}}", rest.split('"').next().unwrap()),
            None => name.to_owned(),
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("levee-{name}-{}", std::process::id()))
}

/// Runs `levee storm ARGS` with a bounded wait; returns (exit code, stdout).
pub fn storm(args: &[&str]) -> (i32, String) {
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code().unwrap_or(-1), out);
        }
        assert!(std::time::Instant::now() < deadline, "storm did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn small_storm_report_matches_the_servers_metrics() {
    let server = common::Levee::start(&[]);
    let json = temp("storm-metrics.json");
    let html = temp("storm-metrics.html");
    let (code, out) = storm(&[
        "capacity",
        "--server",
        &server.base,
        "--listeners",
        "300",
        "--ramp",
        "2s",
        "--hold",
        "3s",
        "--ogg-share",
        "0.4",
        "--sources",
        "127.3.0.0/16",
        // Two agent processes: their counts and histograms are merged, never averaged.
        "--procs",
        "2",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--expect",
        "delivered_ratio > 0.999",
        "--expect",
        "ttfa_p99 < 5s",
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    // A loaded test machine may mark the run invalid (exit 2); the figures must still agree.
    assert!(
        code == 0 || (code == 2 && !r["valid"].as_bool().unwrap()),
        "exit {code}\n{out}"
    );
    assert_eq!(r["passed"], true, "{out}");
    assert_eq!(r["listeners"]["planned"], 300);
    assert_eq!(r["listeners"]["joined"], 300, "{out}");
    assert_eq!(r["listeners"]["failed"], 0);
    assert_eq!(r["listeners"]["dropped"], 0);
    assert_eq!(r["delivered_ratio"], 1.0);
    assert_eq!(r["gap_ms_total"], 0.0);

    let space = r["space"].as_str().unwrap();
    let m = metrics(&server.base, space);
    let fmt = |f: &str, k: &str| r["by_format"][f][k].as_u64().unwrap_or(0) as f64;
    for f in ["ws", "ogg"] {
        // Every listener the server counted is one the report counted, and the bytes it says
        // it wrote are the bytes the listeners read (they read until the space ended).
        assert_eq!(
            m[&format!("levee_joins_total{{{f}}}")],
            fmt(f, "joined"),
            "{f} joins"
        );
        assert_eq!(
            m[&format!("levee_bytes_sent_total{{{f}}}")],
            fmt(f, "bytes"),
            "{f} bytes"
        );
        assert_eq!(m[&format!("levee_chunks_skipped_total{{{f}}}")], 0.0);
        assert_eq!(m[&format!("levee_listeners{{{f}}}")], 0.0, "all gone");
    }
    assert!(
        fmt("ws", "joined") > 100.0 && fmt("ogg", "joined") > 60.0,
        "mixed formats"
    );
    // Ogg: one page per chunk.
    assert_eq!(m["levee_chunks_sent_total{ogg}"], fmt("ogg", "pages"));
    // The synthetic host's packets are what the space ingested.
    assert_eq!(
        m["levee_ingest_packets_total"],
        r["host"]["packets_sent"].as_f64().unwrap()
    );
    // The report's own copy of the counters agrees too.
    assert_eq!(
        r["server"]["levee_bytes_sent_total{ws}"].as_f64(),
        Some(fmt("ws", "bytes"))
    );
    // Latency and join figures are present and sane.
    assert!(r["ttfa_ms"]["p99"].as_f64().unwrap() > 0.0);
    // One listener in 10 reads as bytes arrive and times every frame; the others read in
    // batches and count exactly but time nothing.
    assert_eq!(r["timed_sessions"], 30);
    let timed_frames = r["timed_frames"].as_u64().unwrap();
    assert!(timed_frames > 1_000, "{timed_frames}");
    assert!(timed_frames * 5 < r["frames_received"].as_u64().unwrap());
    assert!(r["generator"]["cpu_pct"].as_f64().unwrap() > 0.0);
    assert_eq!(r["generator"]["procs"], 2);
    // Nothing held the audio back: batched reads keep up with every listener.
    assert_eq!(r["stalls"], 0, "{}", r["worst_stall_ms"]);
    assert_eq!(r["e2e_latency_ms"]["count"].as_u64(), Some(timed_frames));
    assert_eq!(r["ttfa_ms"]["count"], 300);
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.contains("<svg") && !page.contains("<script"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(html);
}
