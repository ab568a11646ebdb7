//! The Icecast-style source: publishes the synthetic marker stream to a raw Ogg mount
//! ([`crate::plan::mount`]) with `PUT` (or `SOURCE`), one page of `page_ms` of marked 20 ms
//! packets ([`crate::plan::marker`]) each time its last packet is due, in real time, so that one
//! storm run can measure levee and Icecast alike.

use crate::actors::host::PACKET_US;
use crate::error::{Error, Result};
use crate::net::clock::now_us;
use crate::net::clock::sleep_until_us;
use crate::observe::stats::HostStats;
use crate::plan::marker;
use crate::plan::mount::Mount;
use crate::plan::mount::SourceMethod;
use crate::plan::scenario::HostConfig;
use crate::plan::scenario::Scenario;
use crate::plan::target::Target;
use bytes::BytesMut;
use levee_media::ogg::{self, PageSpec};
use levee_media::opus::{self, OpusHead};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the source goes on after the run's end, so that listeners leave first.
pub const SOURCE_TAIL: Duration = Duration::from_secs(1);

/// Bound on the source's connect and handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn handshake(m: &Mount, target: &Target) -> Result<TcpStream> {
    let mut s = TcpStream::connect(target.addr)
        .await
        .map_err(|e| Error::server(format!("source connect: {e}")))?;
    let _ = s.set_nodelay(true);
    s.write_all(source_request(m, &target.authority).as_bytes())
        .await
        .map_err(|e| Error::server(format!("source send: {e}")))?;
    let (head, got) = crate::net::http::read_head(&mut s, "source").await?;
    match head.status {
        100 | 200 => Ok(s),
        _ => Err(Error::server(format!(
            "source: {} answered {}",
            m.url,
            crate::net::http::status_line(&got)
        ))),
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
    let mut st = HostStats::new(&cfg);
    let target = match Target::parse(&m.url) {
        Ok(t) => t,
        Err(e) => {
            st.error = Some(e.to_string());
            return st;
        }
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&m, &target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            st.error = Some(e.to_string());
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
    use crate::plan::scenario::Kind;
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
        sc.server = "http://127.0.0.1:8000".into();
        sc.mix.ws = 0.0;
        sc.mix.ogg = 1.0;
        sc.mount = Some(Mount {
            url: "http://127.0.0.1:8000/live.ogg".into(),
            source_auth: Some("source:hackme".into()),
            source_method: SourceMethod::Put,
            page_ms: 1000,
        });
        sc.validate().unwrap();
        let mut p = Pager::new(1, marker::packet_size(sc.host.bitrate));
        let mut out = BytesMut::new();
        let pk: Vec<_> = (0..50).map(|i| (i, i * 20_000)).collect();
        p.audio(&pk, &mut out);
        assert_eq!(out.len(), 27 + 50 + 50 * 80);
        sc.host.bitrate = 512_000;
        assert!(sc.validate().unwrap_err().to_string().contains("lacing"));
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
