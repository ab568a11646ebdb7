//! A cluster through a real `nats-server`: a space created on one node is on every node, a
//! host publishing on one node is heard on another with the origin's sequence numbers, the
//! host key verifies on any node, ending it on one ends it everywhere, and what is not a
//! packet of the space never reaches a listener.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `nats-server` with JetStream, on a free port, its store in a directory of its own.
struct Nats {
    child: Child,
    url: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Edges named `names` of the cluster behind `nats`, sharing one new loopback address
/// (`--reuse-port`: the kernel spreads connections over them), and that address.
fn shared_edges(nats: &str, names: &[&str]) -> (Vec<Levee>, String) {
    shared_edges_with(nats, names, &[])
}

/// As [`shared_edges`], each node started with the flags `extra` too.
fn shared_edges_with(nats: &str, names: &[&str], extra: &[&str]) -> (Vec<Levee>, String) {
    let shared = format!("127.0.0.1:{}", free_port());
    let edges = names
        .iter()
        .map(|name| {
            let mut args = vec![
                "--listen",
                &shared,
                "--reuse-port",
                "--nats",
                nats,
                "--node",
                name,
            ];
            args.extend_from_slice(extra);
            Levee::start(&args)
        })
        .collect();
    (edges, shared)
}

impl Nats {
    fn start() -> Nats {
        Self::start_with(free_port(), &[])
    }

    /// A JetStream cluster of `n` servers on loopback.
    fn cluster(n: usize) -> Vec<Nats> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        (0..n)
            .map(|i| {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
                    .collect();
                let name = format!("n{i}");
                let cluster = format!("nats://127.0.0.1:{}", ports[i].1);
                let routes = routes.join(",");
                Self::start_with(
                    ports[i].0,
                    &[
                        "--server_name",
                        &name,
                        "--cluster_name",
                        "levee-test",
                        "--cluster",
                        &cluster,
                        "--routes",
                        &routes,
                    ],
                )
            })
            .collect()
    }

    fn start_with(port: u16, extra: &[&str]) -> Nats {
        require_tool("nats-server");
        let dir = std::env::temp_dir().join(format!("levee-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let url = format!("nats://127.0.0.1:{port}");
        wait_until(Duration::from_secs(10), "nats-server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats {
            child,
            url,
            _dir: TempDir(dir),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listener's numbering only went forward, and no silence reached `longest`.
fn assert_onward(heard: &Heard, longest: Duration) {
    assert!(
        heard.seqs.windows(2).all(|w| w[1] > w[0]),
        "numbering went back: {:?}",
        heard.seqs
    );
    assert!(
        heard.max_interarrival < longest,
        "silence of {:?}",
        heard.max_interarrival
    );
}

/// `space` on air: ffmpeg publishes a 1 kHz tone to `origin` until it is live.
fn on_air(origin: &Levee, space: &serde_json::Value) -> Ffmpeg {
    let source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    origin.wait_live(space["id"].as_str().unwrap(), Duration::from_secs(10));
    source
}

/// A WebSocket listener of space `id` on `node`, for `secs` after its first audio.
fn listen_on(node: &Levee, id: &str, secs: u64) -> tokio::task::JoinHandle<Heard> {
    let url = format!("ws://{}/live/{id}/ws", node.addr);
    tokio::spawn(async move {
        ws_listen(&url, Duration::from_secs(10), Duration::from_secs(secs)).await
    })
}

/// Nodes A and B of one cluster (A through `nats_a`, B through `nats_b`, or both through the
/// first when one is given), and a space created on A once B knows it.
fn two_nodes(nats_a: &str, nats_b: &[&str], title: &str) -> (Levee, Levee, serde_json::Value) {
    let nats_b = nats_b.first().copied().unwrap_or(nats_a);
    let replicas = if nats_a == nats_b { "1" } else { "3" };
    let a = Levee::start(&[
        "--nats",
        nats_a,
        "--node",
        "node-a",
        "--nats-replicas",
        replicas,
    ]);
    let b = Levee::start(&[
        "--nats",
        nats_b,
        "--node",
        "node-b",
        "--nats-replicas",
        replicas,
    ]);
    let space = a.create_space(title);
    let id = space["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(10), "B knows the space", || {
        b.http("GET", &format!("/api/spaces/{id}"), &[], b"").status == 200
    });
    (a, b, space)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_one_node_is_heard_on_another() {
    let nats = Nats::start();
    // Created on A, listed and served by B.
    let (a, b, space) = two_nodes(&nats.url, &[], "across nodes");
    let id = space["id"].as_str().unwrap().to_owned();
    let key = space["host_key"].as_str().unwrap().to_owned();
    let listed = b.http("GET", "/api/spaces", &[], b"");
    assert!(listed.body.contains(&id), "{}", listed.body);

    let _source = on_air(&a, &space);
    let on_a = format!("ws://{}/live/{id}/ws", a.addr);
    let on_b = format!("ws://{}/live/{id}/ws", b.addr);
    let (heard_a, heard_b) = tokio::join!(
        ws_listen(&on_a, Duration::from_secs(10), Duration::from_secs(4)),
        async {
            // Meanwhile, what is not a packet of the space is published on its subject.
            let bus = async_nats::connect(&nats.url)
                .await
                .expect("test's NATS client");
            let subject = format!("levee.audio.{id}");
            let heard = tokio::spawn({
                let on_b = on_b.clone();
                async move { ws_listen(&on_b, Duration::from_secs(10), Duration::from_secs(4)).await }
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            for junk in [
                b"not audio".to_vec(),
                vec![0u8; 70_000],
                b"LVA1".to_vec(),
                // Well formed, but from a node that is not the space's origin.
                levee_core::bus::encode_audio(
                    7,
                    &levee_core::packet::Packet {
                        seq: 0,
                        pts: 0,
                        samples: 960,
                        capture_us: 0,
                        data: bytes::Bytes::from_static(&[0xfc, 0xff, 0xfe]),
                    },
                )
                .to_vec(),
            ] {
                bus.publish(subject.clone(), junk.into()).await.unwrap();
            }
            bus.flush().await.unwrap();
            // Both nodes count both listeners: the one here and the one on the other node.
            let (base_a, base_b) = (a.base.clone(), b.base.clone());
            let counts = tokio::task::spawn_blocking({
                let id = id.clone();
                move || {
                    let get = |base: &str| -> (u64, u64) {
                        let addr = base.trim_start_matches("http://").parse().unwrap();
                        let r = http_via(None, addr, "GET", &format!("/api/spaces/{id}"), &[], b"");
                        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                        (
                            v["listeners"].as_u64().unwrap(),
                            v["listeners_here"].as_u64().unwrap(),
                        )
                    };
                    let start = std::time::Instant::now();
                    loop {
                        let (ca, cb) = (get(&base_a), get(&base_b));
                        if (ca, cb) == ((2, 1), (2, 1)) || start.elapsed() > Duration::from_secs(2)
                        {
                            return (ca, cb);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(
                counts,
                ((2, 1), (2, 1)),
                "(listeners, listeners_here) on A and B"
            );
            heard.await.unwrap()
        }
    );
    for (node, heard) in [("A", &heard_a), ("B", &heard_b)] {
        assert!(heard.head, "{node}: no HEAD");
        assert!(heard.error.is_none(), "{node}: {:?}", heard.error);
        assert!(
            heard.seqs.len() >= 150,
            "{node} heard {} packets in 4 s",
            heard.seqs.len()
        );
        assert_eq!(heard.gaps(), 0, "{node}: gaps in {:?}", heard.seqs);
    }
    // The origin's numbering on both nodes: B's packets are A's packets.
    let a_range = heard_a.seqs[0]..=*heard_a.seqs.last().unwrap();
    let shared = heard_b.seqs.iter().filter(|s| a_range.contains(s)).count();
    assert!(
        shared >= 100,
        "B's numbers {:?}.. are not A's {:?}",
        &heard_b.seqs[..3],
        a_range
    );
    assert!(a.metric("levee_cluster_sent_packets_total") > 150.0);
    assert!(b.metric("levee_cluster_heard_packets_total") > 150.0);
    assert_eq!(b.metric("levee_cluster_feeds"), 1.0);
    // The junk: three malformed, one well formed from a node that is not the origin.
    wait_until(Duration::from_secs(3), "B counts the junk", || {
        b.metric("levee_cluster_malformed_total") == 3.0
            && b.metric("levee_cluster_foreign_total") >= 1.0
    });

    // A third node hears it too: its WebSocket listener without a gap, and real ffmpeg
    // records the 1 kHz tone from its Ogg stream.
    let c = Levee::start(&["--nats", &nats.url, "--node", "node-c"]);
    wait_until(Duration::from_secs(5), "C knows the space", || {
        c.http("GET", &format!("/api/spaces/{id}"), &[], b"").status == 200
    });
    let on_c = listen_on(&c, &id, 3);
    let ogg_c = format!("http://{}/live/{id}.ogg", c.addr);
    let (seconds, f, rms) = tokio::task::spawn_blocking(move || record_tone(&ogg_c, Some(2)))
        .await
        .unwrap();
    assert!(seconds >= 1.5, "recorded {seconds:.2} s from C");
    assert!((f - 1000.0).abs() <= 20.0, "C's tone: {f} Hz");
    assert!(rms > 1000.0, "C's recording is near silent (RMS {rms:.0})");
    let heard_c = on_c.await.unwrap();
    assert!(heard_c.seqs.len() >= 100, "C heard {}", heard_c.seqs.len());
    assert_eq!(heard_c.gaps(), 0, "C: gaps in {:?}", heard_c.seqs);

    // The host key verifies on B (which knows only its hash); ending on B ends it on A.
    let wrong = b.http(
        "DELETE",
        &format!("/api/spaces/{id}"),
        &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
        b"",
    );
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    assert_eq!(a.space(&id)["state"], "live");
    let ended = b.http(
        "DELETE",
        &format!("/api/spaces/{id}"),
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert!(
        ended.status < 300,
        "end on B: {} {}",
        ended.status,
        ended.body
    );
    wait_until(Duration::from_secs(5), "A sees the end", || {
        a.space(&id)["state"] == "ended"
    });
    // With no listener left, B lets the subscription go.
    wait_until(Duration::from_secs(5), "B unsubscribes", || {
        b.metric("levee_cluster_feeds") == 0.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_origins_nats_server_leaves_a_bounded_gap() {
    let mut servers = Nats::cluster(3);
    // The origin on n0, the edge on n1; n0 dies mid-broadcast.
    let (a, b, space) = two_nodes(
        &servers[0].url,
        &[&servers[1].url],
        "through a NATS failure",
    );
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = on_air(&a, &space);
    let listener = listen_on(&b, &id, 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = std::time::Instant::now();
    drop(servers.remove(0));
    let heard = listener.await.unwrap();
    println!(
        "edge listener across the kill: {} packets, {} gaps, longest silence {:?} (kill at {:?} into the run)",
        heard.seqs.len(),
        heard.gaps(),
        heard.max_interarrival,
        killed.elapsed()
    );
    assert!(heard.error.is_none(), "{:?}", heard.error);
    assert!(heard.gaps() <= 1, "gaps in {:?}", heard.seqs);
    assert!(
        heard.max_interarrival < Duration::from_secs(3),
        "silence of {:?}",
        heard.max_interarrival
    );
    // 8 s of 20-ms packets is 400: most of them arrived, before and after the kill.
    assert!(
        heard.seqs.len() >= 250,
        "heard {} packets",
        heard.seqs.len()
    );
    // The origin still publishes to the bus through another server.
    let sent = a.metric("levee_cluster_sent_packets_total");
    wait_until(Duration::from_secs(5), "the origin publishes again", || {
        a.metric("levee_cluster_sent_packets_total") > sent + 25.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_on_another_node_takes_the_space_over_cluster_wide() {
    let nats = Nats::start();
    let (a, b, space) = two_nodes(&nats.url, &[], "moving origin");
    let id = space["id"].as_str().unwrap().to_owned();
    let key = space["host_key"].as_str().unwrap().to_owned();
    let _first = on_air(&a, &space);
    let listener = listen_on(&a, &id, 9);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The host moves to B (which knows only the key's hash): B becomes the origin, A's source
    // gives way, and A's listener hears B through the bus.
    let _second = publish_sine(
        &format!("icecast://source:{key}@{}/live/{id}.ogg", b.addr),
        1000,
        "32k",
        30,
    );
    wait_until(Duration::from_secs(5), "B publishes to the bus", || {
        b.metric("levee_cluster_sent_packets_total") > 50.0
    });
    wait_until(Duration::from_secs(5), "A hears B", || {
        a.metric("levee_cluster_heard_packets_total") > 50.0
    });
    let sent_by_a = a.metric("levee_cluster_sent_packets_total");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        a.metric("levee_cluster_sent_packets_total"),
        sent_by_a,
        "A still forwards after B took over"
    );
    let heard = listener.await.unwrap();
    println!(
        "A's listener across the move: {} packets, {} gaps, longest silence {:?}",
        heard.seqs.len(),
        heard.gaps(),
        heard.max_interarrival
    );
    assert!(heard.error.is_none() && heard.close.is_none(), "{heard:?}");
    assert!(
        heard.seqs.len() >= 300,
        "heard {} packets in 9 s",
        heard.seqs.len()
    );
    assert!(heard.gaps() <= 2, "gaps in {:?}", heard.seqs);
    // B numbered from 0: A's track moves B's numbers up rather than rewind its listeners.
    assert_onward(&heard, Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_node_dies_resumes_on_another_through_the_shared_port() {
    let nats = Nats::start();
    let origin = Levee::start(&["--nats", &nats.url, "--node", "origin"]);
    // Two edges on one address (SO_REUSEPORT): the kernel spreads connections over them.
    let (mut edges, shared) = shared_edges(&nats.url, &["edge-1", "edge-2"]);
    assert!(edges.iter().all(|e| e.addr.to_string() == shared));
    let space = origin.create_space("edge failure");
    let id = space["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(5), "both edges know the space", || {
        edges
            .iter()
            .all(|e| e.http("GET", &format!("/api/spaces/{id}"), &[], b"").status == 200)
    });
    let _source = on_air(&origin, &space);
    let url = format!("ws://{shared}/live/{id}/ws");
    // The listener comes from an address of its own, so that `ss` names the edge serving it
    // (requests to the shared address land on either edge).
    let client: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            ws_listen_from(
                Some(client),
                &url,
                Duration::from_secs(10),
                Duration::from_secs(30),
            )
            .await
        }
    });
    require_tool("ss");
    let mut serving = None;
    wait_until(
        Duration::from_secs(5),
        "an edge serves the listener",
        || {
            let out = Command::new("ss")
                .args(["-Htnp", "state", "established", "dst", "127.0.0.77"])
                .output()
                .expect("ss runs");
            let text = String::from_utf8_lossy(&out.stdout);
            serving = edges
                .iter()
                .position(|e| text.contains(&format!("pid={},", e.pid())));
            serving.is_some()
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(edges.remove(serving.unwrap())); // SIGKILL
    let before = first.await.unwrap();
    let died = std::time::Instant::now();
    assert!(
        before.seqs.len() >= 50,
        "heard {} packets before",
        before.seqs.len()
    );
    // The listener reconnects to the same address and lands on the living edge.
    let listen_for = Duration::from_secs(2);
    let after = ws_listen(&url, Duration::from_secs(5), listen_for).await;
    let to_audio = died.elapsed().saturating_sub(listen_for);
    println!(
        "edge killed: the listener had audio again {to_audio:?} later; {} packets before, {} after, {} missed",
        before.seqs.len(),
        after.seqs.len(),
        after.seqs[0].saturating_sub(before.seqs.last().unwrap() + 1)
    );
    assert!(after.head && after.seqs.len() >= 50, "{after:?}");
    // The origin's numbering on both edges: the listener counts what it missed.
    assert!(after.seqs[0] > *before.seqs.last().unwrap());
    assert!(to_audio < Duration::from_secs(3), "{to_audio:?}");
    // The address now reaches the living edge only, and it hears the space.
    assert_eq!(edges[0].metric("levee_cluster_feeds"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_listeners_whose_edge_dies_move_to_the_other_edge() {
    let nats = Nats::start();
    let origin = Levee::start(&["--nats", &nats.url, "--node", "origin"]);
    let (mut edges, shared) = shared_edges(&nats.url, &["storm-edge-1", "storm-edge-2"]);
    let space = origin.create_space("storm through two edges");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = on_air(&origin, &space);
    // 120 storm listeners through the shared address; dropped ones reconnect at once.
    let json = std::env::temp_dir().join(format!("levee-storm-edge-{}.json", std::process::id()));
    let mut storm = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["storm", "churn", "--server"])
        .arg(format!("http://{shared}"))
        .args([
            "--space",
            &id,
            "--listeners",
            "120",
            "--ramp",
            "1s",
            "--waves",
            "1",
        ])
        .args(["--wave-every", "7s", "--wave-fraction", "0", "--hold", "2s"])
        .args([
            "--reconnect",
            "naive",
            "--ogg-share",
            "0.5",
            "--sources",
            "127.9.0.0/16",
        ])
        .args(["--quiet", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("storm starts");
    // Both edges hold listeners once the ramp is over; the one with more dies.
    let open_files = |e: &Levee| {
        std::fs::read_dir(format!("/proc/{}/fd", e.pid()))
            .unwrap()
            .count()
    };
    let base: Vec<usize> = edges.iter().map(open_files).collect();
    let mut held = vec![0; 2];
    wait_until(
        Duration::from_secs(10),
        "all 120 listeners on the edges",
        || {
            held = edges
                .iter()
                .zip(&base)
                .map(|(e, b)| open_files(e).saturating_sub(*b))
                .collect();
            held.iter().sum::<usize>() >= 120
        },
    );
    let victim = if held[0] >= held[1] { 0 } else { 1 };
    drop(edges.remove(victim)); // SIGKILL
    let living = &edges[0];
    wait_until(
        Duration::from_secs(5),
        "the living edge to hold all 120",
        || living.space(&id)["listeners_here"] == 120,
    );
    let status = storm.wait().expect("storm ends");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("storm's report")).unwrap();
    let _ = std::fs::remove_file(&json);
    let (l, s) = (&report["listeners"], &report["sessions"]);
    println!(
        "edge killed under {} of 120 storm listeners: sessions {s}, ttfa ms {}",
        held[victim], report["ttfa_ms"]
    );
    assert!(status.code().is_some(), "storm ended by itself: {status}");
    assert_eq!(l["joined"], 120, "{l}");
    assert_eq!(l["failed"], 0, "{l}");
    // Every listener of the dead edge was dropped once and joined again on the living one.
    let dropped = s["dropped"].as_u64().unwrap();
    assert!(
        dropped >= held[victim] as u64 && dropped <= held[victim] as u64 + 5,
        "{dropped} dropped, {} were on the dead edge",
        held[victim]
    );
    assert!(s["joined"].as_u64().unwrap() >= 120 + dropped, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_elsewhere_wait_out_the_source_and_the_origin_node_dying() {
    let nats = Nats::start();
    let (a, b, space) = two_nodes(&nats.url, &[], "losing the origin");
    let c = Levee::start(&["--nats", &nats.url, "--node", "node-c"]);
    let id = space["id"].as_str().unwrap().to_owned();
    let key = space["host_key"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(5), "C knows the space", || {
        c.http("GET", &format!("/api/spaces/{id}"), &[], b"").status == 200
    });
    let source = on_air(&a, &space);
    let listener = listen_on(&c, &id, 12);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The source drops for 2 s, then comes back to the origin.
    drop(source);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    let heard_c = c.metric("levee_cluster_heard_packets_total");
    wait_until(Duration::from_secs(5), "C hears the source again", || {
        c.metric("levee_cluster_heard_packets_total") > heard_c + 25.0
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The origin node dies; the source reconnects through B, which becomes the origin.
    drop(back);
    drop(a); // SIGKILL
    let died = std::time::Instant::now();
    let _through_b = publish_sine(
        &format!("icecast://source:{key}@{}/live/{id}.ogg", b.addr),
        1000,
        "32k",
        30,
    );
    let heard_c = c.metric("levee_cluster_heard_packets_total");
    wait_until(Duration::from_secs(5), "C hears the new origin", || {
        c.metric("levee_cluster_heard_packets_total") > heard_c
    });
    let to_audio = died.elapsed();
    let heard = listener.await.unwrap();
    println!(
        "C's listener: {} packets, {} gaps, longest silence {:?}; audio from B {to_audio:?} after A died",
        heard.seqs.len(),
        heard.gaps(),
        heard.max_interarrival
    );
    assert!(
        heard.error.is_none() && heard.close.is_none(),
        "stayed connected: {heard:?}"
    );
    assert!(
        heard.seqs.len() >= 300,
        "heard {} packets in 12 s",
        heard.seqs.len()
    );
    assert!(to_audio < Duration::from_secs(4), "{to_audio:?}");
    // The longest silence is the source's 2 s away; the origin's death costs less.
    assert_onward(&heard, Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spaces_listener_cap_holds_for_the_whole_cluster() {
    let nats = Nats::start();
    let cap = ["--max-listeners-per-space", "2"];
    let a = Levee::start(&[&["--nats", &nats.url, "--node", "cap-a"][..], &cap[..]].concat());
    let b = Levee::start(&[&["--nats", &nats.url, "--node", "cap-b"][..], &cap[..]].concat());
    let space = a.create_space("two seats");
    let id = space["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(5), "B knows the space", || {
        b.http("GET", &format!("/api/spaces/{id}"), &[], b"").status == 200
    });
    let _source = on_air(&a, &space);
    // One seat taken on each node.
    let seats: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .map(|addr| {
            let url = format!("ws://{addr}/live/{id}/ws");
            tokio::spawn(async move {
                ws_listen(&url, Duration::from_secs(10), Duration::from_secs(6)).await
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(5),
        "both nodes count both listeners",
        || a.space(&id)["listeners"] == 2 && b.space(&id)["listeners"] == 2,
    );
    // A holds one listener of its own, under the cap of 2, yet the space is full.
    for node in [&a, &b] {
        let r = node.http("GET", &format!("/live/{id}.ogg"), &[], b"");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("full"), "{}", r.body);
    }
    for s in seats {
        let heard = s.await.unwrap();
        assert!(
            heard.seqs.len() >= 200,
            "a seated listener heard {}",
            heard.seqs.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_is_found_on_every_node_the_moment_its_creation_is_answered() {
    let nats = Nats::start();
    let a = Levee::start(&["--nats", &nats.url, "--node", "find-a"]);
    let b = Levee::start(&["--nats", &nats.url, "--node", "find-b"]);
    // The creator hears back once the registry holds the space; B, whose watch may not have
    // seen it yet, looks it up. Asked at once, B never answers 404.
    for i in 0..20 {
        let space = a.create_space(&format!("found at once {i}"));
        let id = space["id"].as_str().unwrap();
        let r = b.http("GET", &format!("/api/spaces/{id}"), &[], b"");
        assert_eq!(
            r.status, 200,
            "space {i} on B right after its creation: {}",
            r.body
        );
        let join = b.http("POST", &format!("/api/spaces/{id}/join"), &[], b"");
        assert_eq!(join.status, 200, "join on B: {}", join.body);
    }
    // An identifier the cluster does not have is looked up once and is not found; one that
    // cannot be an identifier is not looked up at all.
    let before = b.metric("levee_cluster_registry_lookups_total");
    let r = b.http("GET", "/api/spaces/no-such-space", &[], b"");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = b.http("GET", "/live/NOT_AN_ID.ogg", &[], b"");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        b.metric("levee_cluster_registry_lookups_total"),
        before + 1.0
    );
    assert_eq!(b.metric("levee_cluster_registry_errors_total"), 0.0);
}

/// A node's share of `id`'s admission rate, from its shield status.
fn admission_share(node: &Levee, id: &str) -> f64 {
    let r = node.http(
        "GET",
        "/api/admin/shield",
        &[("Authorization", "Bearer cluster-admin")],
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .map_or(0.0, |s| s["admission_share"].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spaces_admission_rate_holds_for_the_whole_cluster() {
    let nats = Nats::start();
    let args = |node: &'static str| {
        vec![
            "--nats",
            nats.url.as_str(),
            "--node",
            node,
            "--admission-rate",
            "4",
            "--admission-burst",
            "2",
            "--ticket-secret",
            "shared",
            "--admin-key",
            "cluster-admin",
        ]
    };
    let a = Levee::start(&args("rate-a"));
    let b = Levee::start(&args("rate-b"));
    let space = a.create_space("four a second, cluster-wide");
    let id = space["id"].as_str().unwrap().to_owned();
    // With nobody in line anywhere, each of the two nodes takes half of the rate.
    wait_until(Duration::from_secs(10), "each node to take half", || {
        let (sa, sb) = (admission_share(&a, &id), admission_share(&b, &id));
        (sa - 0.5).abs() < 0.01 && (sb - 0.5).abs() < 0.01
    });
    // 30 callers on each node; every one waiting asks again every 100 ms, on its own node.
    let join = |node: &Levee, token: Option<&str>| -> (u16, serde_json::Value) {
        let body = match token {
            Some(t) => serde_json::json!({ "queue_token": t }).to_string(),
            None => String::new(),
        };
        let headers: &[(&str, &str)] = if token.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let r = node.http(
            "POST",
            &format!("/api/spaces/{id}/join"),
            headers,
            body.as_bytes(),
        );
        (r.status, serde_json::from_str(&r.body).unwrap_or_default())
    };
    let mut waiting: Vec<(usize, String)> = Vec::new();
    let mut admitted = [0u32; 2];
    let nodes = [&a, &b];
    let start = std::time::Instant::now();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..30 {
            match join(node, None) {
                (200, _) => admitted[n] += 1,
                (202, v) => waiting.push((n, v["queue"]["token"].as_str().unwrap().to_owned())),
                (s, v) => panic!("join answered {s}: {v}"),
            }
        }
    }
    while start.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut still = Vec::new();
        for (n, token) in waiting {
            match join(nodes[n], Some(&token)) {
                (200, _) => admitted[n] += 1,
                (202, v) => still.push((n, v["queue"]["token"].as_str().unwrap().to_owned())),
                (s, v) => panic!("asking again answered {s}: {v}"),
            }
        }
        waiting = still;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = admitted[0] + admitted[1];
    // One line of 4 a second with a burst of 2 admits 2 + 4 × secs; two nodes each at the
    // whole rate would admit twice that. The shares follow demand once a second.
    let one_line = 2.0 + 4.0 * secs;
    assert!(
        (total as f64) <= one_line * 1.3 && (total as f64) >= one_line * 0.6,
        "admitted {admitted:?} in {secs:.1} s: one line admits about {one_line:.0}"
    );
    assert!(
        admitted.iter().all(|&n| n >= 3),
        "both nodes admit: {admitted:?}"
    );
    // A place taken on A and presented on B keeps the wait it had left, on B's line.
    let (_, v) = join(&a, None);
    let token = v["queue"]["token"]
        .as_str()
        .expect("still a line on A")
        .to_owned();
    let (status, moved) = join(&b, Some(&token));
    assert!(matches!(status, 200 | 202), "{status} {moved}");
    if status == 202 {
        let back = moved["queue"]["position"].as_u64().unwrap();
        let line_b = waiting.iter().filter(|(n, _)| *n == 1).count() as u64;
        assert!(
            back <= line_b + 1,
            "placed {back} behind on B, whose line holds {line_b}"
        );
    }
    assert!(b.metric("levee_join_queue_moved_total") >= 1.0);
}

#[test]
fn a_node_that_cannot_reach_nats_does_not_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--no-record",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            "nats://127.0.0.1:1",
            "--node",
            "lonely",
        ])
        .output()
        .expect("levee runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS"), "{err}");
    let bad = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--no-record",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            "nats://127.0.0.1:1",
            "--node",
            "a b",
        ])
        .output()
        .expect("levee runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node name"));
}

#[test]
fn three_nodes_count_one_audience_and_any_node_answers_for_all() {
    // Three nodes share one address (the kernel spreads the storm's listeners and its
    // synthetic host over them); each counts its own listeners and reports them on the bus;
    // the storm asks whichever node answers and must find the whole audience, merged.
    let nats = Nats::start();
    let (nodes, shared) = shared_edges_with(
        &nats.url,
        &["aud-1", "aud-2", "aud-3"],
        &["--view-after", "3s"],
    );
    let json = std::env::temp_dir().join(format!("levee-storm-aud3-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["storm", "capacity", "--server"])
        .arg(format!("http://{shared}"))
        .args(["--listeners", "150", "--ramp", "1s", "--hold", "7s"])
        .args([
            "--short-share",
            "0.3",
            "--short-for",
            "1s",
            "--check-audience",
        ])
        .args([
            "--ogg-share",
            "0.5",
            "--sources",
            "127.34.0.0/16",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("storm runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(out.status.success(), "{text}");
    let a = &r["audience"];
    assert_eq!(a["passed"], true, "{text}");
    assert_eq!(
        a["served"]["nodes"], 3,
        "every node's numbers are in: {text}"
    );
    assert_eq!(a["served"]["uniques"], 150, "{text}");
    // The listeners were spread: at least two nodes held some of them.
    let id = r["space"].as_str().unwrap();
    let holding = nodes
        .iter()
        .filter(|n| {
            let r = n.http(
                "GET",
                &format!("/api/spaces/{id}/audience?series=0"),
                &[],
                b"",
            );
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            // Each node answers for all of them...
            assert_eq!(v["uniques"], 150, "{}", r.body);
            // ...and its own series shows what it served itself.
            n.metric("levee_audience_sessions_total") > 0.0
        })
        .count();
    assert!(holding >= 2, "{holding} nodes held listeners");
}
