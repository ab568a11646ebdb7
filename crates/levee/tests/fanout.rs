//! Fan-out: many listeners hear every packet; a listener that never reads neither delays the
//! others nor grows the server's memory, and is cut after the stall bound.

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_websocket_listeners_get_contiguous_sequences() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("fan-out");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 600, "32k", 30);
    let url = space["urls"]["ws"].as_str().unwrap().to_owned();
    let listeners: Vec<_> = (0..500)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                ws_listen(&url, Duration::from_secs(15), Duration::from_secs(5)).await
            })
        })
        .collect();
    let mut counts = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let heard = l.await.unwrap();
        assert!(heard.head, "listener {i} got no HEAD");
        assert!(
            heard.close.is_none(),
            "listener {i} closed: {:?}",
            heard.close
        );
        assert_eq!(heard.gaps(), 0, "listener {i} has gaps in {:?}", heard.seqs);
        counts.push(heard.seqs.len());
    }
    // 5 s of 20 ms packets is 250; allow for the last chunk in flight.
    let min = *counts.iter().min().unwrap();
    assert!(min >= 225, "a listener heard only {min} packets in 5 s");
    assert_eq!(
        levee.metric(&format!(
            "levee_joins_total{{space=\"{id}\",format=\"ws\"}}"
        )),
        500.0
    );
    assert_eq!(
        levee.metric(&format!(
            "levee_lagging_skips_total{{space=\"{id}\",format=\"ws\"}}"
        )),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_that_never_read_are_cut_without_delaying_others_or_growing_memory() {
    // A high bitrate fills a stalled listener's small buffers within a couple of seconds.
    let levee = Levee::start(&["--stall-timeout", "2s", "--listener-sndbuf", "16384"]);
    let space = levee.create_space("stalls");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 600, "256k", 40);
    levee.wait_live(&id, Duration::from_secs(10));
    let rss_before = levee.rss_kib();

    // 50 listeners that send their request and then never read, with 4 KiB receive windows.
    let path = format!("/live/{id}.ogg");
    let mut silent = Vec::new();
    for _ in 0..50 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&levee.addr.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        silent.push(s);
    }
    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let heard = ws_listen(&ws, Duration::from_secs(10), Duration::from_secs(7)).await;
    assert_eq!(heard.gaps(), 0, "the reading listener lost packets");
    assert!(
        heard.seqs.len() >= 300,
        "the reading listener heard only {} packets",
        heard.seqs.len()
    );
    assert!(
        heard.max_interarrival < Duration::from_millis(500),
        "the reading listener waited {:?} between packets",
        heard.max_interarrival
    );
    let cuts = format!("levee_stalled_cuts_total{{space=\"{id}\",format=\"ogg\"}}");
    tokio::task::spawn_blocking(move || {
        wait_until(
            Duration::from_secs(15),
            "all 50 stalled listeners are cut",
            || levee.metric(&cuts) >= 50.0,
        );
        let grown = levee.rss_kib().saturating_sub(rss_before);
        // Nothing is buffered per listener in user space: 50 stalled readers must not cost MiBs.
        assert!(
            grown < 4 * 1024,
            "server RSS grew by {grown} KiB with 50 stalled listeners"
        );
        let listeners = levee.metric(&format!("levee_listeners{{space=\"{id}\",format=\"ogg\"}}"));
        assert_eq!(listeners, 0.0, "cut listeners are no longer counted");
    })
    .await
    .unwrap();
    drop(silent);
}
