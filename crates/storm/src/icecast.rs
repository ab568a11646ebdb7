//! Raw Ogg mounts: listeners on any progressive Ogg URL (an Icecast mount, or levee's
//! `/live/{id}.ogg`) without levee's API, and an Icecast-style source that publishes the
//! synthetic marker stream to that mount, so that one storm run can measure levee and
//! Icecast 2 alike.
//!
//! Contract:
//! - A scenario with a [`Mount`] listens to `mount.url` on progressive Ogg only; it neither
//!   creates nor ends a space. `server` must name the same `host:port` as the URL (the command
//!   line sets it). When the URL is levee's `/live/{id}.ogg`, the space id is taken from it, so
//!   the report still carries levee's counters.
//! - With `source_auth` (`user:password`), the run also publishes: [`run_source`] connects to
//!   the URL with `PUT` and `Expect: 100-continue` (or legacy `SOURCE`), Basic auth, waits for
//!   `100 Continue` or `200`, sends the `OpusHead` and `OpusTags` pages, then one Ogg page of
//!   `page_ms` of marked 20 ms packets ([`crate::marker`]) each time its last packet is due, in
//!   real time, until a little after the run's end (so that listeners leave before the source
//!   does) or until told to stop. A packet's capture time is its due time; a page is sent when
//!   its last packet is captured. The host's pause drops packets as the WebSocket host does.
//!   Every wait is bounded.
//! - [`Pager`] is the pure part (pages from packet numbers), tested on its own.

use crate::client::{now_us, sleep_until_us};
use crate::host::{HostStats, PACKET_US};
use crate::http::Target;
use crate::marker;
use crate::scenario::{HostConfig, Scenario};
use bytes::BytesMut;
use clap::Args;
use levee_media::ogg::{self, PageSpec};
use levee_media::opus::{self, OpusHead};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the source goes on after the run's end, so that listeners leave first.
pub const SOURCE_TAIL: Duration = Duration::from_secs(1);
/// Bound on the source's connect and handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the source asks to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMethod {
    /// `PUT` with `Expect: 100-continue` (Icecast 2.4+, ffmpeg, levee).
    #[default]
    Put,
    /// Legacy `SOURCE` (Icecast 1 and 2, libshout before 2.4), answered `200 OK` at once.
    Source,
}

/// A raw progressive Ogg URL to listen to, and optionally to publish to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// `http://HOST:PORT/PATH` on loopback.
    pub url: String,
    /// `user:password` of an Icecast-style source; without it nothing is published (the mount
    /// is fed by something else).
    #[serde(default)]
    pub source_auth: Option<String>,
    /// How the source asks to publish.
    #[serde(default)]
    pub source_method: SourceMethod,
    /// Audio per Ogg page sent by the source, ms (a multiple of 20, up to 1000; ffmpeg's
    /// default page lasts 1 s).
    #[serde(default = "default_page_ms")]
    pub page_ms: u32,
}

fn default_page_ms() -> u32 {
    20
}

impl Mount {
    /// The path (and query) of the URL.
    pub fn path(&self) -> String {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        }
    }

    /// levee's space id when the path is `/live/{id}.ogg`, else the path: the report's `space`.
    pub fn label(&self) -> String {
        let path = self.path();
        path.strip_prefix("/live/")
            .and_then(|r| r.strip_suffix(".ogg"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map_or(path.clone(), str::to_owned)
    }

    fn packets_per_page(&self) -> u32 {
        (self.page_ms / 20).max(1)
    }
}

/// Command-line options of a raw Ogg mount (flattened into the quick forms).
#[derive(Debug, Clone, Default, Args)]
pub struct MountArgs {
    /// Listen to this progressive Ogg URL directly (an Icecast mount, or levee's
    /// /live/ID.ogg), without levee's API; every listener reads Ogg.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: also publish the synthetic marker stream there as an Icecast source, with
    /// this Basic auth (USER:PASSWORD; levee: source:HOST_KEY).
    #[arg(long, requires = "url")]
    pub source_auth: Option<String>,
    /// With --source-auth: PUT with Expect: 100-continue, or legacy SOURCE.
    #[arg(long, default_value = "put", value_parser = ["put", "source"], requires = "url")]
    pub source_method: String,
    /// With --source-auth: audio per Ogg page, ms (a multiple of 20, up to 1000).
    #[arg(long, default_value_t = 20, requires = "url")]
    pub page_ms: u32,
}

impl MountArgs {
    /// With `--url`, makes `sc` a raw-mount scenario: its mount, its server (the URL's
    /// origin) and an all-Ogg audience.
    pub fn apply(&self, sc: &mut Scenario) {
        let Some(url) = &self.url else { return };
        if let Ok(t) = Target::parse(url) {
            sc.server = t.base();
        }
        sc.mix.ws = 0.0;
        sc.mix.ogg = 1.0;
        sc.mount = Some(Mount {
            url: url.clone(),
            source_auth: self.source_auth.clone(),
            source_method: if self.source_method == "source" {
                SourceMethod::Source
            } else {
                SourceMethod::Put
            },
            page_ms: self.page_ms,
        });
    }
}

/// Checks a scenario's mount, if it has one.
pub fn validate(sc: &Scenario) -> Result<(), String> {
    let Some(m) = &sc.mount else { return Ok(()) };
    let t = Target::parse(&m.url)?;
    if Target::parse(&sc.server)?.addr != t.addr {
        return Err(format!(
            "mount.url {} and server {} must name the same host:port",
            m.url, sc.server
        ));
    }
    if sc.space.is_some() {
        return Err("a mount URL and a space exclude each other".into());
    }
    if sc.mix.ws > 0.0 {
        return Err("a mount URL is listened to on Ogg only (mix.ws must be 0)".into());
    }
    if !m.path().starts_with('/') || m.path().len() > 1024 || m.path().contains(char::is_whitespace)
    {
        return Err(format!("mount.url {}: bad path", m.url));
    }
    if m.page_ms < 20 || m.page_ms > 1000 || m.page_ms % 20 != 0 {
        return Err("mount.page_ms must be a multiple of 20 within 20..=1000".into());
    }
    let size = marker::packet_size(sc.host.bitrate);
    if m.packets_per_page() as usize * ogg::lacing_len(size) > 255 {
        return Err(format!(
            "mount.page_ms {} at {} bit/s needs more than 255 lacing values per page",
            m.page_ms, sc.host.bitrate
        ));
    }
    if let Some(a) = &m.source_auth {
        if !a.contains(':') || a.contains(['\r', '\n']) {
            return Err("mount.source_auth must be USER:PASSWORD".into());
        }
    }
    Ok(())
}

/// The path listeners of `sc` request: the mount's, else levee's `/live/{space}.ogg`.
pub fn ogg_path(sc: &Scenario, space: &str) -> String {
    match &sc.mount {
        Some(m) => m.path(),
        None => format!("/live/{space}.ogg"),
    }
}

/// Starts the scenario's Icecast-style source, if it has one (see the module docs).
pub fn spawn_source(
    sc: &Scenario,
    run_start_us: u64,
    run_end_us: u64,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<HostStats>> {
    let m = sc.mount.clone()?;
    m.source_auth.as_ref()?;
    let cfg = sc.host.clone();
    let end_us = run_end_us + SOURCE_TAIL.as_micros() as u64;
    Some(tokio::spawn(run_source(m, cfg, run_start_us, end_us, stop)))
}

/// Builds the source's Ogg/Opus pages: the two header pages, then audio pages of marked
/// packets. Pure; see the module docs.
#[derive(Debug, Clone)]
pub struct Pager {
    serial: u32,
    page_seq: u32,
    size: usize,
    packet: Vec<u8>,
    packets: Vec<Vec<u8>>,
}

impl Pager {
    /// A pager for packets of `size` bytes on logical stream `serial`.
    pub fn new(serial: u32, size: usize) -> Self {
        Pager {
            serial,
            page_seq: 0,
            size,
            packet: Vec::with_capacity(size),
            packets: Vec::new(),
        }
    }

    /// Appends the `OpusHead` (first, BOS) and `OpusTags` pages to `out`.
    pub fn headers(&mut self, out: &mut BytesMut) {
        let head = OpusHead::new(1).to_bytes();
        let tags = opus::tags("levee storm", &["TITLE=levee storm marker stream".into()]);
        self.write(ogg::FLAG_BOS, 0, &[head.to_vec()], out);
        self.write(0, 0, &[tags], out);
    }

    /// Appends one audio page holding the marked packets `(seq, capture_us)` to `out` (nothing
    /// when there are none). Its granule position ends at the last packet.
    pub fn audio(&mut self, packets: &[(u64, u64)], out: &mut BytesMut) {
        let Some(&(last, _)) = packets.last() else {
            return;
        };
        let mut bufs = std::mem::take(&mut self.packets);
        bufs.resize_with(packets.len(), Vec::new);
        for (b, &(seq, cap)) in bufs.iter_mut().zip(packets) {
            marker::write_packet(seq, cap, self.size, &mut self.packet);
            b.clear();
            b.extend_from_slice(&self.packet);
        }
        let granule = (last + 1) * marker::PACKET_SAMPLES as u64;
        self.write(0, granule, &bufs[..packets.len()], out);
        self.packets = bufs;
    }

    fn write(&mut self, flags: u8, granule: u64, packets: &[Vec<u8>], out: &mut BytesMut) {
        let spec = PageSpec {
            flags,
            granule,
            serial: self.serial,
            seq: self.page_seq,
        };
        // Bounded by validate(): at most 255 lacing values per page.
        if ogg::write_page(spec, packets, out).is_ok() {
            self.page_seq += 1;
        }
    }
}

fn basic_auth(user_pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(user_pass)
}

/// The source's request head.
pub fn source_request(m: &Mount, authority: &str) -> String {
    let auth = basic_auth(m.source_auth.as_deref().unwrap_or("source:"));
    let (line, expect) = match m.source_method {
        SourceMethod::Put => (
            format!("PUT {} HTTP/1.1", m.path()),
            "Expect: 100-continue\r\n",
        ),
        SourceMethod::Source => (format!("SOURCE {} HTTP/1.0", m.path()), ""),
    };
    format!(
        "{line}\r\nHost: {authority}\r\nAuthorization: Basic {auth}\r\nUser-Agent: levee-storm\r\nContent-Type: audio/ogg\r\nIce-Name: levee storm\r\nIce-Public: 0\r\n{expect}\r\n"
    )
}

async fn handshake(m: &Mount, target: &Target) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("source connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.write_all(source_request(m, &target.authority).as_bytes())
        .await
        .map_err(|e| format!("source send: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("source read: {e}"))?;
        if n == 0 {
            return Err("source: server closed during the handshake".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > 8192 {
            return Err("source: answer head too large".into());
        }
    };
    match crate::http::parse_status(&head) {
        Some(100 | 200) => Ok(s),
        _ => Err(format!(
            "source: {} answered {}",
            m.url,
            String::from_utf8_lossy(&head[..end])
                .lines()
                .next()
                .unwrap_or("")
        )),
    }
}

/// Publishes to the mount until `end_us` (Unix µs) or `stop`; `run_start_us` anchors the
/// pause. See the module docs.
pub async fn run_source(
    m: Mount,
    cfg: HostConfig,
    run_start_us: u64,
    end_us: u64,
    mut stop: watch::Receiver<bool>,
) -> HostStats {
    let mut st = HostStats {
        bitrate: cfg.bitrate,
        pause_ms: cfg
            .pause_at
            .map(|a| (a.as_millis() as u64, cfg.pause_for.as_millis() as u64)),
        ..HostStats::default()
    };
    let target = match Target::parse(&m.url) {
        Ok(t) => t,
        Err(e) => {
            st.error = Some(e);
            return st;
        }
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&m, &target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            st.error = Some(e);
            return st;
        }
        Err(_) => {
            st.error = Some(format!("source: no answer within {HANDSHAKE_TIMEOUT:?}"));
            return st;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    // Anything the server says now is its final word (a refusal or the end of the source).
    let (closed_tx, mut closed_rx) = watch::channel(None::<String>);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let mut said = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(n) if n > 0 && said.len() < 4096 => said.extend_from_slice(&buf[..n]),
                Ok(n) if n > 0 => {}
                _ => {
                    let line = String::from_utf8_lossy(&said)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = closed_tx.send(Some(format!("source: server ended it ({line})")));
                    return;
                }
            }
        }
    });
    let size = marker::packet_size(cfg.bitrate);
    let per_page = m.packets_per_page() as u64;
    let pause = cfg.pause_at.map(|a| {
        let from = run_start_us + a.as_micros() as u64;
        (from, from + cfg.pause_for.as_micros() as u64)
    });
    let serial = (now_us() as u32) ^ 0x4C56_5354;
    let mut pager = Pager::new(serial, size);
    let mut out = BytesMut::with_capacity(64 * 1024);
    pager.headers(&mut out);
    let start = now_us();
    let mut packets: Vec<(u64, u64)> = Vec::with_capacity(per_page as usize);
    let mut seq: u64 = 0;
    // The header pages leave at once; then each page when its last packet is captured.
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&out)).await {
                Ok(Ok(())) => st.packets_sent += packets.len() as u64,
                Ok(Err(e)) => {
                    st.error = Some(format!("source send: {e}"));
                    break;
                }
                Err(_) => {
                    st.error = Some("source: a send blocked for 5 s".into());
                    break;
                }
            }
            out.clear();
        }
        packets.clear();
        // The next page holds packets seq..seq+per_page.
        let due = start + (seq + per_page - 1) * PACKET_US;
        if due >= end_us {
            break;
        }
        tokio::select! {
            _ = sleep_until_us(due) => {}
            _ = stop.changed() => if *stop.borrow() { break },
            _ = closed_rx.changed() => {
                st.error = closed_rx.borrow().clone();
                break;
            }
        }
        let lag = now_us().saturating_sub(due);
        st.max_send_lag_ms = st.max_send_lag_ms.max(lag as f64 / 1000.0);
        for i in seq..seq + per_page {
            let cap = start + i * PACKET_US;
            if pause.is_some_and(|(a, b)| cap >= a && cap < b) {
                st.packets_dropped += 1;
            } else {
                packets.push((i, cap));
            }
        }
        seq += per_page;
        pager.audio(&packets, &mut out);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    reader.abort();
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Kind;
    use levee_media::ogg::{PacketAssembler, PageReader};

    fn mount(url: &str) -> Mount {
        Mount {
            url: url.into(),
            source_auth: Some("source:hackme".into()),
            source_method: SourceMethod::Put,
            page_ms: 20,
        }
    }

    #[test]
    fn pages_are_valid_ogg_opus_with_markers_and_granules() {
        let mut p = Pager::new(7, marker::packet_size(32_000));
        let mut out = BytesMut::new();
        p.headers(&mut out);
        p.audio(&[(0, 1_000)], &mut out);
        p.audio(&[], &mut out);
        p.audio(&[(1, 21_000), (2, 41_000), (4, 81_000)], &mut out);
        let mut r = PageReader::new(ogg::MAX_PAGE);
        r.push(&out);
        let mut asm = PacketAssembler::new(opus::MAX_PACKET);
        let mut pkts = Vec::new();
        let mut pages = Vec::new();
        while let Some(page) = r.next_page().unwrap() {
            pages.push((page.seq, page.granule, page.is_bos()));
            asm.push(&page, &mut pkts).unwrap();
        }
        assert_eq!(
            pages,
            [
                (0, 0, true),
                (1, 0, false),
                (2, 960, false),
                (3, 5 * 960, false)
            ]
        );
        assert_eq!(OpusHead::parse(&pkts[0].data).unwrap().channels, 1);
        opus::check_tags(&pkts[1].data).unwrap();
        let marks: Vec<_> = pkts[2..]
            .iter()
            .map(|k| {
                assert_eq!(k.data.len(), 80);
                assert_eq!(opus::packet_samples(&k.data), Ok(960));
                marker::read_marker(&k.data).unwrap()
            })
            .collect();
        assert_eq!(marks, [(0, 1_000), (1, 21_000), (2, 41_000), (4, 81_000)]);
    }

    #[test]
    fn one_second_pages_fit_one_page() {
        let mut sc = Scenario::new(Kind::Capacity, 10);
        MountArgs {
            url: Some("http://127.0.0.1:8000/live.ogg".into()),
            source_auth: Some("source:hackme".into()),
            source_method: "put".into(),
            page_ms: 1000,
        }
        .apply(&mut sc);
        sc.validate().unwrap();
        let mut p = Pager::new(1, marker::packet_size(sc.host.bitrate));
        let mut out = BytesMut::new();
        let pk: Vec<_> = (0..50).map(|i| (i, i * 20_000)).collect();
        p.audio(&pk, &mut out);
        assert_eq!(out.len(), 27 + 50 + 50 * 80);
        sc.host.bitrate = 512_000;
        assert!(sc.validate().unwrap_err().contains("lacing"));
    }

    #[test]
    fn mount_urls_paths_labels_and_requests() {
        let m = mount("http://127.0.0.1:8000/live.ogg");
        assert_eq!(
            (m.path(), m.label()),
            ("/live.ogg".into(), "/live.ogg".into())
        );
        let l = mount("http://127.0.0.1:8080/live/k3x9.ogg");
        assert_eq!(l.label(), "k3x9");
        assert_eq!(mount("http://127.0.0.1:8000").path(), "/");
        let req = source_request(&m, "127.0.0.1:8000");
        assert!(req.starts_with("PUT /live.ogg HTTP/1.1\r\n"));
        assert!(req.contains("Authorization: Basic c291cmNlOmhhY2ttZQ==\r\n"));
        assert!(req.contains("Expect: 100-continue\r\n") && req.ends_with("\r\n\r\n"));
        let legacy = Mount {
            source_method: SourceMethod::Source,
            ..m
        };
        let req = source_request(&legacy, "127.0.0.1:8000");
        assert!(req.starts_with("SOURCE /live.ogg HTTP/1.0\r\n") && !req.contains("Expect"));
    }

    #[test]
    fn scenarios_with_a_mount_are_checked() {
        let mut sc = Scenario::new(Kind::Capacity, 10);
        let args = MountArgs {
            url: Some("http://127.0.0.1:8000/live.ogg".into()),
            source_auth: None,
            source_method: "put".into(),
            page_ms: 20,
        };
        args.apply(&mut sc);
        assert_eq!(sc.server, "http://127.0.0.1:8000");
        assert_eq!((sc.mix.ws, sc.mix.ogg), (0.0, 1.0));
        sc.validate().unwrap();
        assert_eq!(ogg_path(&sc, "ignored"), "/live.ogg");
        let mut bad = sc.clone();
        bad.server = "http://127.0.0.1:8080".into();
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mix.ws = 0.5;
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().page_ms = 30;
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().url = "http://10.0.0.1:8000/live.ogg".into();
        bad.server = "http://10.0.0.1:8000".into();
        assert!(bad.validate().is_err());
        let mut bad = sc.clone();
        bad.mount.as_mut().unwrap().source_auth = Some("nocolon".into());
        assert!(bad.validate().is_err());
        let toml = r#"
            kind = "capacity"
            server = "http://127.0.0.1:8000"
            listeners = 5
            [mix]
            ws = 0
            ogg = 1
            [mount]
            url = "http://127.0.0.1:8000/live.ogg"
            source_auth = "source:hackme"
            page_ms = 1000
        "#;
        let t = Scenario::from_toml(toml).unwrap();
        t.validate().unwrap();
        assert_eq!(t.mount.unwrap().page_ms, 1000);
        assert_eq!(
            ogg_path(&Scenario::new(Kind::Capacity, 1), "ab"),
            "/live/ab.ogg"
        );
    }

    /// A tiny Icecast-like server: answers the source's PUT with 100 Continue, then reads the
    /// body; the source's pages must arrive in real time with their markers.
    #[tokio::test]
    async fn source_publishes_in_real_time_after_100_continue() {
        let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = lis.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = lis.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut r = PageReader::new(ogg::MAX_PAGE);
            r.push(&head[end..]);
            let mut arrivals = Vec::new();
            loop {
                while let Some(p) = r.next_page().unwrap() {
                    arrivals.push((p.granule, now_us()));
                }
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => r.push(&buf[..n]),
                }
            }
            (String::from_utf8_lossy(&head[..end]).into_owned(), arrivals)
        });
        let m = mount(&format!("http://127.0.0.1:{port}/live.ogg"));
        let (_tx, stop) = watch::channel(false);
        let t0 = now_us();
        let st = run_source(m, HostConfig::default(), t0, t0 + 300_000, stop).await;
        assert_eq!(st.error, None);
        let (head, arrivals) = server.await.unwrap();
        assert!(head.starts_with("PUT /live.ogg HTTP/1.1"));
        // Two header pages, then about 15 pages of 20 ms, the last one ~280 ms after the first.
        assert!((14..=16).contains(&st.packets_sent), "{st:?}");
        assert_eq!(arrivals.len() as u64, 2 + st.packets_sent);
        let span = arrivals.last().unwrap().1 - arrivals[2].1;
        assert!((200_000..400_000).contains(&span), "span {span} µs");
    }

    #[tokio::test]
    async fn a_refused_source_says_why() {
        let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = lis.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = lis.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 401 Authentication Required\r\n\r\n")
                .await;
        });
        let (_tx, stop) = watch::channel(false);
        let t0 = now_us();
        let m = mount(&format!("http://127.0.0.1:{port}/live.ogg"));
        let st = run_source(m, HostConfig::default(), t0, t0 + 200_000, stop).await;
        assert!(st.error.unwrap().contains("401"));
        assert_eq!(st.packets_sent, 0);
    }
}
