//! Shared helpers for the integration tests: the real `levee` binary on a loopback port, a
//! plain HTTP/1.1 client, real ffmpeg sources, WebSocket listeners (tokio-tungstenite, an
//! implementation independent of levee's own framing) and metric reads.
#![allow(dead_code)]

use futures_util::StreamExt;
use levee_core::wire::{self, WireMessage};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Fails loudly when a tool the tests need is missing (CI installs it).
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is required by this test but not on PATH (install it: see .ci/run)"
    );
}

/// A running `levee serve` on 127.0.0.1, killed when dropped.
pub struct Levee {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    /// Source address of the test's own control requests (`None`: the kernel's choice).
    pub control: Option<std::net::IpAddr>,
    /// Set once [`Levee::terminate`] stopped it.
    stopped: bool,
}

impl Levee {
    /// Starts `levee <mode> --listen 127.0.0.1:0 <args>` and waits for its first stdout line.
    pub fn start_mode(mode: &str, args: &[&str]) -> Levee {
        // Tests record nothing unless they name a directory for it.
        let record: &[&str] = if args.contains(&"--data-dir") || mode != "serve" {
            &[]
        } else {
            &["--no-record"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args([mode, "--listen", "127.0.0.1:0"])
            .args(record)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("LEVEE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("levee binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("levee printed its listening line within 15 s");
        let base = line
            .strip_prefix("levee listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        let addr = base.trim_start_matches("http://").parse().expect("address");
        Levee {
            child,
            addr,
            base,
            control: None,
            stopped: false,
        }
    }

    /// Starts `levee serve` with extra flags.
    pub fn start(args: &[&str]) -> Levee {
        Self::start_mode("serve", args)
    }

    /// Stops the server with SIGTERM (a clean shutdown) and returns its exit status; panics
    /// if it is still running after 10 s.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for levee") {
                self.stopped = true;
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "levee still runs 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Sends one request and reads the whole response.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http_via(self.control, self.addr, method, path, headers, body)
    }

    /// Creates a space and returns its JSON.
    pub fn create_space(&self, title: &str) -> serde_json::Value {
        let body = serde_json::json!({ "title": title }).to_string();
        let r = self.http(
            "POST",
            "/api/spaces",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "create space: {}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    }

    /// Ends space `space` (its JSON, with its host key) as its host does; asserts the 200.
    #[allow(dead_code)]
    pub fn end_space(&self, space: &serde_json::Value) {
        let (id, key) = (
            space["id"].as_str().expect("id"),
            space["host_key"].as_str().expect("host key"),
        );
        let r = self.http(
            "DELETE",
            &format!("/api/spaces/{id}"),
            &[("Authorization", &format!("Bearer {key}"))],
            b"",
        );
        assert_eq!(r.status, 200, "end space: {}", r.body);
    }

    /// The space's JSON as the API shows it.
    pub fn space(&self, id: &str) -> serde_json::Value {
        let r = self.http("GET", &format!("/api/spaces/{id}"), &[], b"");
        assert_eq!(r.status, 200, "get space: {}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    }

    /// The value of the metric line that starts with `series` (name and labels), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let r = self.http("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        r.body
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the space is live (its source delivered audio), at most `timeout`.
    pub fn wait_live(&self, id: &str, timeout: Duration) {
        wait_until(timeout, "space goes live", || {
            self.space(id)["state"] == "live"
        });
    }
}

impl Drop for Levee {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("levee had exited before the test ended: {status}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`; reads until the server closes (10 s at most).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    http_via(None, addr, method, path, headers, body)
}

/// As [`http`], from source address `src` when given.
pub fn http_via(
    src: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(src) = src {
        sock.bind(&SocketAddr::new(src, 0).into())
            .expect("bind source address");
    }
    sock.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

/// Splits a raw response; skips interim `100 Continue` answers.
pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in response: {text:?}"));
        if status == 100 {
            rest = body;
            continue;
        }
        return Response {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        };
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real ffmpeg process, killed when dropped.
pub struct Ffmpeg(Child);

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Ffmpeg {
    /// True while ffmpeg runs.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// Publishes a sine of `freq` Hz, Opus at `bitrate`, in real time, to an `icecast://` URL,
/// for `seconds` at most, in 20 ms pages (the low-latency setting a host would use).
pub fn publish_sine(source_url: &str, freq: u32, bitrate: &str, seconds: u32) -> Ffmpeg {
    require_tool("ffmpeg");
    let child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "sine=frequency={freq}:sample_rate=48000:duration={seconds}"
        ))
        .args([
            "-c:a",
            "libopus",
            "-b:a",
            bitrate,
            "-page_duration",
            "20000",
            "-f",
            "ogg",
        ])
        .arg(source_url)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ffmpeg starts");
    Ffmpeg(child)
}

/// What one WebSocket listener received.
#[derive(Debug, Default, Clone)]
pub struct Heard {
    pub head: bool,
    pub seqs: Vec<u64>,
    pub close: Option<(u16, String)>,
    pub max_interarrival: Duration,
    /// The WebSocket error that ended listening, if any.
    pub error: Option<String>,
}

impl Heard {
    /// Number of places where a sequence number was skipped.
    pub fn gaps(&self) -> usize {
        self.seqs.windows(2).filter(|w| w[1] != w[0] + 1).count()
    }
}

/// Connects a WebSocket listener to `url` and records what arrives for `listen_for` after the
/// first audio message (or until the server closes), waiting at most `first_within` for audio.
pub async fn ws_listen(url: &str, first_within: Duration, listen_for: Duration) -> Heard {
    ws_listen_from(None, url, first_within, listen_for).await
}

/// As [`ws_listen`], connecting from source address `src` when given.
pub async fn ws_listen_from(
    src: Option<std::net::IpAddr>,
    url: &str,
    first_within: Duration,
    listen_for: Duration,
) -> Heard {
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("URL with a host");
    let addr: SocketAddr = hostport.parse().expect("numeric host:port");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(src) = src {
        sock.bind(SocketAddr::new(src, 0)).unwrap();
    }
    let tcp = sock.connect(addr).await.expect("TCP connect");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    .expect("WebSocket handshake within 10 s")
    .expect("WebSocket handshake");
    let mut heard = Heard::default();
    let mut deadline = tokio::time::Instant::now() + first_within;
    let mut last = None::<Instant>;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => {
                heard.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Binary(b) => match wire::decode(&b) {
                Ok(WireMessage::Head(_)) => heard.head = true,
                Ok(WireMessage::Audio { seq, .. }) => {
                    if heard.seqs.is_empty() {
                        deadline = tokio::time::Instant::now() + listen_for;
                    }
                    let now = Instant::now();
                    if let Some(prev) = last {
                        heard.max_interarrival = heard.max_interarrival.max(now - prev);
                    }
                    last = Some(now);
                    heard.seqs.push(seq);
                }
                Ok(WireMessage::Stats { .. } | WireMessage::Stage { .. }) => {}
                Err(e) => panic!("listener got an undecodable message: {e}"),
            },
            Message::Close(frame) => {
                heard.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    heard
}

/// Decodes a 16-bit PCM WAV file: (sample rate, channels, interleaved samples).
pub fn read_wav(bytes: &[u8]) -> (u32, u16, Vec<i16>) {
    assert!(
        bytes.len() > 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "not a WAV file"
    );
    let mut at = 12;
    let (mut rate, mut channels) = (0u32, 0u16);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            assert_eq!(
                u16::from_le_bytes([body[14], body[15]]),
                16,
                "16-bit PCM expected"
            );
        } else if id == b"data" {
            let samples = body
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (rate, channels, samples);
        }
        at += 8 + len + (len & 1);
    }
    panic!("WAV without a data chunk");
}

/// Magnitude of frequency `f` in `x` (Goertzel).
pub fn goertzel(x: &[f64], rate: f64, f: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f / rate;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt()
}

/// The strongest frequency of `x` between 50 Hz and 8 kHz, in 10 Hz steps.
pub fn dominant_frequency(x: &[f64], rate: f64) -> f64 {
    (5..=800)
        .map(|k| k as f64 * 10.0)
        .map(|f| (f, goertzel(x, rate, f)))
        .fold(
            (0.0, f64::MIN),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        )
        .0
}

/// One HTTP/1.1 request from source address `src` (a loopback address: bind before connect).
pub async fn http_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = sock.connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if raw.is_empty() {
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    Ok(parse_response(&raw))
}

/// The `i`-th loopback source address of block `block` (127.block.x.y, never .0 or .255).
pub fn source(block: u8, i: u32) -> std::net::IpAddr {
    std::net::IpAddr::from([127, block, (i / 250) as u8, (i % 250 + 1) as u8])
}

/// A loopback TCP port that was free a moment ago.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What real ffmpeg decodes from `url` (`seconds` of it, or all), mono at 48 kHz: its length
/// in seconds, the dominant frequency of its last second, and that second's RMS.
#[allow(dead_code)]
pub fn record_tone(url: &str, seconds: Option<u32>) -> (f64, f64, f64) {
    let samples = record_pcm(url, seconds);
    let tail = &samples[samples.len().saturating_sub(48_000)..];
    let rms = (tail.iter().map(|v| v * v).sum::<f64>() / tail.len().max(1) as f64).sqrt();
    (
        samples.len() as f64 / 48_000.0,
        dominant_frequency(tail, 48_000.0),
        rms,
    )
}

/// What real ffmpeg decodes from `url` (`seconds` of it, or all): mono samples at 48 kHz.
#[allow(dead_code)]
pub fn record_pcm(url: &str, seconds: Option<u32>) -> Vec<f64> {
    require_tool("ffmpeg");
    let out = std::env::temp_dir().join(format!(
        "levee-tone-{}-{}.wav",
        std::process::id(),
        TONE_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut cmd = Command::new("timeout");
    cmd.args([
        "30",
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-i",
    ])
    .arg(url);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    let status = cmd
        .args(["-ac", "1", "-ar", "48000", "-y"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg could not record {url}: {status}");
    let (rate, channels, samples) = read_wav(&std::fs::read(&out).unwrap());
    let _ = std::fs::remove_file(&out);
    assert_eq!((rate, channels), (48_000, 1));
    samples.iter().map(|&s| s as f64).collect()
}

static TONE_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
