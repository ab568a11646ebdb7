//! Audience numbers as a journalist would check them (`docs/audience.md`): listeners of
//! known identities, durations and behaviour on real sockets, against a real ffmpeg source,
//! and the numbers levee serves for them: views, uniques, sessions, filtered, peak, listen
//! time and joins.

mod common;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Opens `GET /live/{id}.ogg` from `src` with User-Agent `ua`.
fn open(levee: SocketAddr, src: IpAddr, id: &str, ua: &str, rcvbuf: Option<usize>) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect(&levee.into()).unwrap();
    let mut s: TcpStream = sock.into();
    write!(
        s,
        "GET /live/{id}.ogg HTTP/1.1\r\nHost: {levee}\r\nUser-Agent: {ua}\r\n\r\n"
    )
    .unwrap();
    s
}

/// Listens for `secs`, reading everything; returns the bytes read.
fn listen(levee: SocketAddr, src: IpAddr, id: &str, ua: &str, secs: f64) -> usize {
    let mut s = open(levee, src, id, ua, None);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = [0u8; 16384];
    let mut n = 0;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => {}
        }
    }
    n
}

fn audience(levee: &Levee, id: &str) -> Value {
    let r = levee.http("GET", &format!("/api/spaces/{id}/audience"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn the_numbers_match_what_the_listeners_did() {
    // Views after 2 s; a socket that takes nothing for 1 s is cut; small send buffers, so a
    // client that never reads fills its socket well within 2 s of 128-kb/s audio.
    let levee = Levee::start(&[
        "--view-after",
        "2s",
        "--stall-timeout",
        "1s",
        "--listener-sndbuf",
        "4096",
    ]);
    let space = levee.create_space("checked numbers");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "128k", 60);
    levee.wait_live(&id, Duration::from_secs(10));
    let addr = levee.addr;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // Two clients that never read, from addresses of their own.
    let never: Vec<TcpStream> = (0..2)
        .map(|i| open(addr, source(22, i), &id, "bot", Some(1024)))
        .collect();
    let mut threads = Vec::new();
    // Six listeners for 3 s each (views); two of them listen a second time (one view each,
    // still: six identities).
    for i in 0..6u32 {
        let id = id.clone();
        threads.push(std::thread::spawn(move || {
            let times = if i < 2 { 2 } else { 1 };
            for _ in 0..times {
                let n = listen(addr, source(21, i), &id, "mpv/0.38", 3.0);
                assert!(n > 30_000, "listener {i} read {n} bytes");
            }
        }));
    }
    // Three that leave after half a second (listeners, not views).
    for i in 0..3u32 {
        let id = id.clone();
        threads.push(std::thread::spawn(move || {
            listen(addr, source(23, i), &id, "VLC/3.0", 0.5);
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    wait_until(Duration::from_secs(10), "the non-readers are cut", || {
        audience(&levee, &id)["filtered"]["never_read"] == 2
    });
    // The server sees a listener's close when its shard next polls the socket: wait for it.
    wait_until(Duration::from_secs(5), "every session ended", || {
        audience(&levee, &id)["listeners"] == 0
    });
    drop(never);
    let a = audience(&levee, &id);
    let text = a.to_string();
    assert_eq!(a["space"], id.as_str());
    assert_eq!(a["exact"], true, "{text}");
    assert_eq!(a["views"], 6, "{text}");
    assert_eq!(a["view_sessions"], 8, "{text}");
    assert_eq!(a["uniques"], 9, "{text}");
    assert_eq!(a["sessions"], 13, "{text}");
    assert_eq!(a["joins"]["attempts"], 13, "{text}");
    assert_eq!(a["joins"]["admitted"], 13, "{text}");
    assert_eq!(a["filtered"]["sessions"], 2, "{text}");
    assert_eq!(a["filtered"]["identities"], 2, "{text}");
    assert_eq!(a["listeners"], 0, "{text}");
    // All eleven were in at the start (the second sessions came after the first).
    let peak = a["peak"]["listeners"].as_u64().unwrap();
    assert!((9..=11).contains(&peak), "{text}");
    assert!(a["peak"]["at_unix"].as_u64().unwrap() >= t0, "{text}");
    // 8 × 3 s + 3 × 0.5 s, give or take the time a request takes.
    let listen = a["listen_time_s"].as_f64().unwrap();
    assert!((23.0..28.0).contains(&listen), "{text}");
    let median = a["median_session_s"].as_f64().unwrap();
    assert!((2.7..3.4).contains(&median), "{text}");
    assert_eq!(a["view_after_s"], 2.0);
    assert!(a["definitions"]["view"].as_str().unwrap().contains("2 s"));
    assert!(a["window"]["from"]["at_unix"].as_u64().unwrap() <= t0);
    // The series saw them.
    let samples = a["series"]["samples"].as_array().unwrap();
    let fields = a["series"]["fields"].as_array().unwrap();
    let col = |name: &str| fields.iter().position(|f| f == name).unwrap();
    assert!(samples.len() >= 3, "{text}");
    let most = samples
        .iter()
        .map(|s| s[col("listeners")].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(most >= 8, "{text}");
    assert_eq!(samples.last().unwrap()[col("views")], 6);
    // The node's totals and /metrics agree.
    let r = levee.http("GET", "/api/audience?series=0", &[], b"");
    let node: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(node["sessions"], 13, "{}", r.body);
    assert_eq!(node["views"], 6, "{}", r.body);
    assert_eq!(node["top"][0]["id"], id.as_str(), "{}", r.body);
    assert_eq!(levee.metric("levee_audience_sessions_total"), 13.0);
    assert_eq!(levee.metric("levee_audience_view_sessions_total"), 8.0);
    assert_eq!(levee.metric("levee_audience_filtered_sessions_total"), 2.0);
}

#[test]
fn a_failed_ticket_is_filtered_and_a_ticket_carries_one_identity() {
    let levee = Levee::start(&["--view-after", "1s"]);
    let r = levee.http(
        "POST",
        "/api/spaces",
        &[("Content-Type", "application/json")],
        br#"{"title": "tickets", "access": "ticketed"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let space: Value = serde_json::from_str(&r.body).unwrap();
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 440, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    // A stream request with a forged ticket: refused, and counted as automated.
    let r = http_via(
        Some(source(24, 1)),
        levee.addr,
        "GET",
        &format!("/live/{id}.ogg?ticket=t1.forged.x"),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // One listener joins twice from the same client: one identity, two sessions.
    for _ in 0..2 {
        let r = http_via(
            Some(source(24, 2)),
            levee.addr,
            "POST",
            &format!("/api/spaces/{id}/join"),
            &[("User-Agent", "browser")],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let j: Value = serde_json::from_str(&r.body).unwrap();
        let url = j["urls"]["ogg"].as_str().unwrap();
        let path = &url[url.find("/live/").unwrap()..];
        let mut s = {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(source(24, 2), 0).into())
                .unwrap();
            sock.connect(&levee.addr.into()).unwrap();
            TcpStream::from(sock)
        };
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let end = Instant::now() + Duration::from_millis(1600);
        let mut buf = [0u8; 8192];
        while Instant::now() < end {
            if let Ok(0) = s.read(&mut buf) {
                break;
            }
        }
    }
    wait_until(Duration::from_secs(5), "both sessions end", || {
        audience(&levee, &id)["listeners"] == 0
    });
    let a = audience(&levee, &id);
    let text = a.to_string();
    assert_eq!(a["joins"]["attempts"], 2, "two join requests: {text}");
    assert_eq!(a["sessions"], 2, "{text}");
    assert_eq!(a["views"], 1, "{text}");
    assert_eq!(a["view_sessions"], 2, "{text}");
    assert_eq!(a["uniques"], 1, "{text}");
    assert_eq!(a["filtered"]["refused_automated"], 1, "{text}");
    assert_eq!(a["filtered"]["identities"], 1, "{text}");
    // An unknown space is a 404 with a reason.
    let r = levee.http("GET", "/api/spaces/nosuchspace/audience", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no space"), "{}", r.body);
}

#[test]
fn an_hls_player_is_a_session_that_ends_when_it_stops_asking() {
    let levee = Levee::start(&["--view-after", "2s"]);
    let space = levee.create_space("hls sessions");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 60);
    levee.wait_live(&id, Duration::from_secs(10));
    let pl = format!("/live/{id}/hls/index.m3u8");
    // The test's own look at the playlist (a client of its own: another User-Agent).
    wait_until(Duration::from_secs(10), "a part", || {
        levee
            .http("GET", &pl, &[("User-Agent", "look")], b"")
            .body
            .contains("#EXT-X-PART:")
    });
    // A player follows the live edge for 3 s: the playlist, then every hinted part, with
    // the blocking reload that names the next; two such players share an address, kept
    // apart by the playlist's `session` parameter.
    let play = |session: &str| {
        let end = Instant::now() + Duration::from_secs(3);
        let first = levee.http("GET", &format!("{pl}?session={session}"), &[], b"");
        let mut body = first.body;
        while Instant::now() < end {
            let hint = body
                .lines()
                .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
                .and_then(|l| l.split("URI=\"p").nth(1))
                .map(|u| u.trim_end_matches(".m4s\"").to_owned())
                .expect("a preload hint");
            let (m, p) = hint.split_once('.').unwrap();
            let part = levee.http("GET", &format!("/live/{id}/hls/p{m}.{p}.m4s"), &[], b"");
            assert_eq!(part.status, 200);
            body = levee
                .http(
                    "GET",
                    &format!(
                        "{pl}?session={session}&_HLS_msn={m}&_HLS_part={}",
                        p.parse::<u64>().unwrap() + 1
                    ),
                    &[],
                    b"",
                )
                .body;
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| play("a"));
        s.spawn(|| play("b"));
    });
    let a = audience(&levee, &id);
    assert_eq!(
        a["listeners"], 3,
        "two players, and the test's own look at the playlist: {a}"
    );
    assert_eq!(levee.metric("levee_audience_hls_sessions"), 3.0);
    // They stopped asking: their sessions end after the idle bound.
    wait_until(Duration::from_secs(15), "the HLS sessions to end", || {
        audience(&levee, &id)["listeners"] == 0
    });
    let a = audience(&levee, &id);
    let text = a.to_string();
    assert_eq!(a["sessions"], 3, "{text}");
    assert_eq!(a["view_sessions"], 2, "each player listened 3 s: {text}");
    // One identity (address and User-Agent): one view, one unique listener; the look at the
    // playlist fetched no audio and is filtered as never read. Parts carry no `session`:
    // each counts for every session of its identity.
    assert_eq!(a["views"], 1, "{text}");
    assert_eq!(a["uniques"], 1, "{text}");
    assert_eq!(a["filtered"]["never_read"], 1, "{text}");
    assert_eq!(levee.metric("levee_audience_hls_sessions"), 0.0);
}
