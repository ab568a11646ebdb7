//! LL-HLS through a real nginx cache (`deploy/nginx/nginx.conf`, as shipped): hundreds of
//! players following the live edge with blocking reloads get every part, while what reaches
//! levee stays about one request per part and per playlist state, and does not grow with the
//! players. Also measures how late each part reaches a player, from the capture of its first
//! packet (the playlist's program date time), directly and through nginx.

mod common;
use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// nginx running the shipped configuration in front of `levee`, killed when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    prefix: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

impl Nginx {
    fn start(levee: SocketAddr) -> Nginx {
        require_tool("nginx");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // One prefix per nginx: the tests of this file run side by side, and one's cache,
        // pid file and temporary files must not be another's (nor removed under it).
        let prefix = std::env::temp_dir().join(format!(
            "levee-nginx-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::create_dir_all(&prefix).unwrap();
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nginx/nginx.conf");
        let conf = std::fs::read_to_string(shipped)
            .expect("deploy/nginx/nginx.conf")
            .replace("@LISTEN@", &addr.to_string())
            .replace("@LEVEE@", &levee.to_string())
            .replace("@PREFIX@", prefix.to_str().unwrap());
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let n = Nginx {
            child,
            addr,
            prefix,
        };
        wait_until(Duration::from_secs(10), "nginx accepts", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        n
    }
}

/// The (msn, part) of the preload hint of a playlist.
fn hint(pl: &str) -> Option<(u64, u64)> {
    let line = pl.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = line.split("URI=\"p").nth(1)?.trim_end_matches(".m4s\"");
    let (m, p) = uri.split_once('.')?;
    Some((m.parse().ok()?, p.parse().ok()?))
}

#[derive(Default)]
struct Seen {
    parts: HashSet<(u64, u64)>,
    reloads: HashSet<(u64, u64)>,
    answers: u64,
    failures: Vec<String>,
    hits: u64,
    /// Capture of each fetched part's first packet to its arrival at the player, ms.
    late_ms: Vec<f64>,
}

/// Capture time of part `part` of segment `msn`: its segment's program date time plus the
/// parts before it (240 ms each; the test's source never pauses).
fn captured(pl: &str, msn: u64, part: u64) -> Option<std::time::SystemTime> {
    let mut pdt = None;
    for line in pl.lines() {
        if let Some(t) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            pdt = humantime::parse_rfc3339(t).ok();
        } else if line.contains(&format!("URI=\"p{msn}.")) {
            return pdt.map(|t| t + Duration::from_millis(240 * part));
        }
    }
    None
}

/// The `q`-quantile of `v` (sorted here).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `players` players through `cache` for `secs`: each reloads the playlist for the hinted part
/// (blocking), then fetches that part, as an LL-HLS player at the live edge does.
fn play(players: usize, secs: u64, cache: SocketAddr, id: &str, direct: bool) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..players)
        .map(|i| {
            let (seen, id) = (seen.clone(), id.to_owned());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis((i as u64 * 7) % 250));
                // Players straight at levee come from addresses of their own, as an audience
                // does (levee limits what one address may ask).
                let src: Option<std::net::IpAddr> = direct.then(|| {
                    format!("127.11.{}.{}", i / 200, 1 + i % 200)
                        .parse()
                        .unwrap()
                });
                let http = |a: SocketAddr, m: &str, p: &str, h: &[(&str, &str)], b: &[u8]| {
                    http_via(src, a, m, p, h, b)
                };
                let path = format!("/live/{id}/hls/index.m3u8");
                let first = http(cache, "GET", &path, &[], b"");
                let mut next = hint(&first.body);
                while Instant::now() < end {
                    let Some((m, p)) = next else { break };
                    let r = http(
                        cache,
                        "GET",
                        &format!("{path}?_HLS_msn={m}&_HLS_part={p}"),
                        &[],
                        b"",
                    );
                    let part = http(
                        cache,
                        "GET",
                        &format!("/live/{id}/hls/p{m}.{p}.m4s"),
                        &[],
                        b"",
                    );
                    let arrived = std::time::SystemTime::now();
                    let mut s = seen.lock().unwrap();
                    if let Some(late) =
                        captured(&r.body, m, p).and_then(|c| arrived.duration_since(c).ok())
                    {
                        s.late_ms.push(late.as_secs_f64() * 1e3);
                    }
                    s.answers += 2;
                    s.hits += [&r, &part]
                        .iter()
                        .filter(|x| x.head.contains("X-Cache-Status: HIT"))
                        .count() as u64;
                    if r.status != 200 || part.status != 200 {
                        s.failures
                            .push(format!("{m}.{p}: {} {}", r.status, part.status));
                        next = None;
                        continue;
                    }
                    s.reloads.insert((m, p));
                    s.parts.insert((m, p));
                    next = hint(&r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

/// What reached levee: (blocking reloads, parts).
fn origin(levee: &Levee) -> (f64, f64) {
    (
        levee.metric("levee_hls_requests_total{kind=\"blocking\"}"),
        levee.metric("levee_hls_requests_total{kind=\"part\"}"),
    )
}

#[test]
fn through_nginx_the_origin_load_stays_flat_as_players_grow() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("hls behind a cache");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 60);
    levee.wait_live(&id, Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "a whole segment", || {
        levee
            .http("GET", &format!("/live/{id}/hls/index.m3u8"), &[], b"")
            .body
            .contains("#EXTINF:")
    });
    let nginx = Nginx::start(levee.addr);
    // Straight at levee first: every request reaches it.
    let mut direct = play(50, 4, levee.addr, &id, true);
    assert!(
        direct.failures.is_empty(),
        "{:?}",
        &direct.failures[..direct.failures.len().min(10)]
    );
    let (p50, p99) = (
        quantile(&mut direct.late_ms, 0.5),
        quantile(&mut direct.late_ms, 0.99),
    );
    println!(
        "50 players straight at levee: {} parts; a part reaches its player {p50:.0} ms (p50), {p99:.0} ms (p99) after its first packet's capture",
        direct.parts.len()
    );
    assert!(p99 < 1_500.0, "parts came late: p99 {p99:.0} ms");
    let mut per_part = Vec::new();
    for players in [50, 200] {
        let before = origin(&levee);
        let mut seen = play(players, 4, nginx.addr, &id, false);
        let after = origin(&levee);
        let (reloads, parts) = (after.0 - before.0, after.1 - before.1);
        let (p50, p99) = (
            quantile(&mut seen.late_ms, 0.5),
            quantile(&mut seen.late_ms, 0.99),
        );
        println!(
            "{players} players through nginx: {} answers ({} cache hits), {} parts and {} playlist states seen; levee served {parts} part and {reloads} blocking-reload requests; parts reach players {p50:.0} ms (p50), {p99:.0} ms (p99) after capture",
            seen.answers,
            seen.hits,
            seen.parts.len(),
            seen.reloads.len()
        );
        assert!(
            p99 < 1_500.0,
            "{players} players: parts came late: p99 {p99:.0} ms"
        );
        assert!(
            seen.failures.len() as u64 * 100 <= seen.answers,
            "{players} players: {:?}",
            &seen.failures[..seen.failures.len().min(10)]
        );
        assert!(
            seen.parts.len() >= 10,
            "{players} players saw {} parts",
            seen.parts.len()
        );
        // About one request per object reaches levee, whatever the players.
        let distinct = seen.parts.len() as f64;
        assert!(
            parts <= distinct * 1.5 + 2.0,
            "{players} players: levee served {parts} part requests for {distinct} parts"
        );
        assert!(
            reloads <= seen.reloads.len() as f64 * 1.5 + 2.0,
            "{players} players: levee held {reloads} reloads for {} states",
            seen.reloads.len()
        );
        per_part.push((parts + reloads) / distinct);
    }
    assert!(
        per_part[1] <= per_part[0] * 1.5 + 0.5,
        "origin requests per part grew with the players: {per_part:?}"
    );
}

#[test]
fn storm_hls_listeners_through_nginx_leave_the_origin_a_small_share_of_their_requests() {
    // levee storm's own HLS listeners (the synthetic host, its marker timing every frame),
    // through the shipped nginx: every one hears the whole broadcast, and what reaches levee
    // is a small share of what they ask for.
    let levee = Levee::start(&[]);
    let nginx = Nginx::start(levee.addr);
    let json = std::env::temp_dir().join(format!("levee-storm-hls-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["storm", "capacity", "--server", &levee.base])
        .args(["--listeners", "200", "--ramp", "1s", "--hold", "5s"])
        .args([
            "--hls-share",
            "1",
            "--hls-via",
            &format!("http://{}", nginx.addr),
        ])
        .args(["--sources", "127.5.0.0/16", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("levee storm runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(out.status.success(), "{text}");
    assert_eq!(r["listeners"]["joined"], 200, "{text}");
    assert_eq!(r["listeners"]["dropped"], 0, "{text}");
    assert_eq!(r["gaps"], 0, "{text}");
    let h = &r["hls"];
    assert_eq!(h["via"], format!("http://{}", nginx.addr));
    // Each listener asks twice a part (the part, the playlist naming the next); levee sees
    // about two requests per part in all.
    assert!(h["parts"].as_u64().unwrap() >= 200 * 20, "{h}");
    let share = h["origin_share"].as_f64().unwrap();
    assert!(
        share < 0.05,
        "the origin answered {share} of the requests: {h}"
    );
    assert!(h["origin_requests"].as_u64().unwrap() > 0, "{h}");
    let p99 = r["e2e_latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99 < 2_500.0, "e2e p99 {p99} ms through nginx");
    println!(
        "{}",
        text.lines().find(|l| l.starts_with("hls:")).unwrap_or("")
    );
}
