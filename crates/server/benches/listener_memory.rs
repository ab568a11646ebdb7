//! User-space memory per listener, counted by the allocator: a release server in this process
//! (the demo space live), N progressive-Ogg and then N WebSocket listeners connected over
//! loopback, and the heap bytes still held per listener once all are being written to.
//!
//!   cargo bench -p levee-server --bench listener_memory [-- N]      (default N = 5000)
//!
//! The client ends are plain `std::net::TcpStream`s (no heap of their own); the figure is the
//! server's live heap growth divided by N, beside its RSS growth. The goal is 1 KiB per
//! listener; the reference floor server holds a few bytes (an fd in a `Vec`).

use levee_server::{demo, Config, Server};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on this process, with a zeroed struct they fill.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5000);
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("| listeners | format | live heap bytes per listener | RSS KiB per listener |");
    println!("|---|---|---|---|");
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    for (format, request) in [
        ("ogg", "GET /live/demo.ogg HTTP/1.1\r\nHost: bench\r\n\r\n"),
        (
            "ws",
            "GET /live/demo/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ),
    ] {
        // A fresh server per format, so that neither inherits the other's grown tables.
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_listeners_per_space: n + 10,
            ..Config::default()
        };
        let server = rt.block_on(Server::start(config)).expect("server starts");
        let hub = server.hub.clone();
        rt.block_on(async { demo::start(hub.clone()) });
        let addr = server.addr;
        std::thread::sleep(Duration::from_secs(1));
        let (heap0, rss0) = (LIVE.load(Relaxed), rss_kib());
        for _ in 0..n {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(request.as_bytes()).expect("request");
            held.push(s);
        }
        wait_for(|| hub.total_listeners() as usize == n, "every listener attached");
        // Let every listener be written to for a while (each gets several chunks).
        let mut sink = [0u8; 4096];
        for s in &held {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            for mut s in &held {
                while let Ok(k) = s.read(&mut sink) {
                    if k == 0 {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (heap1, rss1) = (LIVE.load(Relaxed), rss_kib());
        println!(
            "| {n} | {format} | {:.0} | {:.2} |",
            (heap1 - heap0) as f64 / n as f64,
            (rss1 - rss0) as f64 / n as f64
        );
        held.clear();
        wait_for(|| hub.total_listeners() == 0, "every listener gone");
        server.abort();
    }
}
