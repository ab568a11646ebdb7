//! A real attack tool, `slowhttptest`, runs slowloris and slow-read attacks against the binary:
//! a legitimate listener keeps hearing every packet, the node keeps answering, and its memory
//! stays bounded.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn slowhttptest(args: &[&str]) -> std::process::Child {
    require_tool("slowhttptest");
    Command::new("slowhttptest")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slowhttptest starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_slow_read_cost_a_bounded_amount_and_harm_no_listener() {
    // Only the test's own control address is exempt: the attack tool's 127.0.0.1 is limited
    // like anyone else (and gets banned).
    let mut levee = Levee::start(&[
        "--allow",
        "127.79.0.1/32",
        "--header-timeout",
        "3s",
        "--stall-timeout",
        "3s",
    ]);
    levee.control = Some("127.79.0.1".parse().unwrap());
    let space = levee.create_space("steady");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 900, "32k", 60);
    levee.wait_live(&id, Duration::from_secs(10));
    let rss_before = levee.rss_kib();
    let base = levee.base.clone();

    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let listener = tokio::spawn(async move {
        ws_listen_from(
            Some(source(77, 1)),
            &ws,
            Duration::from_secs(10),
            Duration::from_secs(16),
        )
        .await
    });
    // Slowloris: 600 connections sending a header line every 10 s, never finishing the head.
    let mut loris = slowhttptest(&[
        "-c",
        "600",
        "-H",
        "-i",
        "10",
        "-r",
        "200",
        "-t",
        "GET",
        "-u",
        &format!("{base}/"),
        "-x",
        "24",
        "-p",
        "3",
        "-l",
        "14",
    ]);
    // Slow read: 300 listeners of the stream that advertise tiny windows and read slowly.
    let mut reader = slowhttptest(&[
        "-c",
        "300",
        "-X",
        "-r",
        "100",
        "-w",
        "512",
        "-y",
        "1024",
        "-n",
        "5",
        "-z",
        "32",
        "-k",
        "1",
        "-u",
        &format!("{base}/live/{id}.ogg"),
        "-p",
        "3",
        "-l",
        "14",
    ]);

    let addr = levee.addr;
    let peak_rss = tokio::task::spawn_blocking(move || {
        let mut peak = 0;
        for _ in 0..28 {
            std::thread::sleep(Duration::from_millis(500));
            peak = peak.max(levee.rss_kib());
        }
        (levee, peak)
    });
    // Meanwhile the node keeps answering a newcomer from another network.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = http_from(source(78, 1), addr, "GET", "/api/spaces", &[], b"")
        .await
        .expect("node answers under attack");
    assert_eq!(r.status, 200);

    let heard = listener.await.unwrap();
    let (levee, peak) = peak_rss.await.unwrap();
    let _ = loris.kill();
    let _ = reader.kill();
    let _ = loris.wait();
    let _ = reader.wait();

    assert!(
        heard.close.is_none(),
        "listener disconnected: {:?}",
        heard.close
    );
    assert_eq!(heard.gaps(), 0, "listener lost packets during the attack");
    assert!(
        heard.seqs.len() >= 700,
        "listener heard only {} packets in 16 s",
        heard.seqs.len()
    );
    assert!(
        heard.max_interarrival < Duration::from_millis(500),
        "listener waited {:?}",
        heard.max_interarrival
    );
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "server RSS grew by {grown} KiB under 900 slow connections"
    );
    // The slow heads were timed out or refused, not held.
    let refused: f64 = ["levee_bad_requests_total"]
        .into_iter()
        .map(str::to_owned)
        .chain(
            ["conn_limit", "conn_rate", "banned"]
                .map(|r| format!("levee_shield_refused_total{{reason=\"{r}\"}}")),
        )
        .map(|series| levee.metric(&series))
        .sum();
    assert!(
        refused >= 100.0,
        "only {refused} slow connections were cut or refused"
    );
}
