//! Listener clients: one TCP connection per simulated listener, WebSocket or progressive Ogg,
//! measured as it reads.
//!
//! Contract: [`session`] runs one connection attempt from its scheduled time to its planned
//! end and returns a [`SessionRecord`]; frame-level figures (latency, gaps, stalls, joins)
//! go to the caller's [`Shard`] as they happen. Per listener it holds a socket, a parser of a
//! few hundred bytes and a meter: received bytes are read into one buffer per worker thread
//! (readiness, then `try_read`), never into a per-listener buffer, and nothing is allocated
//! per frame. Every wait is bounded (connect timeout, first-audio deadline, planned end).

use crate::hist::Hist;
use crate::marker;
use crate::measure::{
    Failure, Frame, GranuleTracker, JoinTiming, ListenerMeter, MeterConfig, SeqStep, SeqTracker,
};
use crate::proto::{OggEvent, OggParser, WsParser};
use crate::stats::{Format, Point, SessionRecord};
use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Bytes of the per-thread read buffer.
pub const READ_BUF: usize = 64 * 1024;
/// Largest HTTP answer head accepted.
pub const MAX_HEAD: usize = 4096;

/// µs since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sleeps until the Unix time `us` (returns at once if it has passed).
pub async fn sleep_until_us(us: u64) {
    let now = now_us();
    if us > now {
        tokio::time::sleep(Duration::from_micros(us - now)).await;
    }
}

/// Frame-level figures of one second, shared by some listeners (one lock per read).
#[derive(Debug)]
pub struct Shard {
    /// End-to-end latency of every frame of the run, µs.
    pub e2e: Hist,
    /// The current second.
    pub point: Point,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            e2e: Hist::new(),
            point: Point::new(0),
        }
    }
}

/// Where and how a listener connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header.
    pub authority: String,
    /// Path of the WebSocket stream.
    pub ws_path: String,
    /// Path of the Ogg stream.
    pub ogg_path: String,
    /// Bound on TCP connect.
    pub connect_timeout: Duration,
    /// Bound on scheduled → first audio.
    pub first_audio_timeout: Duration,
    /// Measurement bounds.
    pub meter: MeterConfig,
}

/// The times that bound one session, µs since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Scheduled join.
    pub scheduled_us: u64,
    /// Planned leave (the session is dropped then).
    pub leave_us: u64,
    /// From this time on, the server closing the stream is the planned end (the run is over
    /// and the space is being ended), not a drop.
    pub end_ok_after_us: u64,
}

/// Keeps a count of open sockets right however the session ends.
pub struct SocketGuard<'a>(pub &'a std::sync::atomic::AtomicU64);

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

// One per listener, never moved: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parser {
    Ws(WsParser),
    Ogg(OggParser),
}

/// Per-listener reading state.
struct Reader {
    parser: Parser,
    meter: ListenerMeter,
    seq: SeqTracker,
    granule: GranuleTracker,
    /// Estimated samples per packet (for Ogg pages without marker).
    samples_est: u32,
    /// Audio missing before the next packet (Ogg granule gaps).
    pending_missing: u64,
    bytes: u64,
    pages: u64,
    close: Option<u16>,
    first_audio_us: Option<u64>,
}

impl Reader {
    fn new(format: Format, meter: MeterConfig) -> Self {
        Reader {
            parser: match format {
                Format::Ws => Parser::Ws(WsParser::default()),
                Format::Ogg => Parser::Ogg(OggParser::default()),
            },
            meter: ListenerMeter::new(meter),
            seq: SeqTracker::default(),
            granule: GranuleTracker::default(),
            samples_est: marker::PACKET_SAMPLES,
            pending_missing: 0,
            bytes: 0,
            pages: 0,
            close: None,
            first_audio_us: None,
        }
    }

    /// One audio packet: `seq`/`capture` from the wire (WebSocket) or none (Ogg); the marker
    /// in the packet, when present, wins (it carries the host's own numbering).
    fn audio(
        &mut self,
        wire: Option<(u64, u64)>,
        packet: &[u8],
        arrival_us: u64,
        shard: &mut Shard,
    ) {
        let samples = levee_media::opus::packet_samples(packet).unwrap_or(self.samples_est);
        self.samples_est = samples;
        let (seq, capture) = match marker::read_marker(packet).or(wire) {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let missing = match seq {
            Some(s) => match self.seq.step(s) {
                SeqStep::Missing(n) => n * samples as u64,
                SeqStep::Late => {
                    self.meter.on_late();
                    return;
                }
                _ => 0,
            },
            None => std::mem::take(&mut self.pending_missing),
        };
        let fx = self.meter.on_frame(&Frame {
            arrival_us,
            samples,
            capture_us: capture,
            missing_samples: missing,
        });
        let p = &mut shard.point;
        p.frames += 1;
        p.audio_us += crate::measure::samples_to_us(samples as u64);
        if fx.gap_us > 0 {
            p.gaps += 1;
            p.gap_us += fx.gap_us;
        }
        p.stalls += (fx.stall_us > 0) as u64;
        p.underruns += (fx.underrun_us > 0) as u64;
        if let Some(l) = fx.latency_us {
            p.latency.record(l);
            shard.e2e.record(l);
        }
        if self.first_audio_us.is_none() {
            self.first_audio_us = Some(arrival_us);
        }
    }

    /// Feeds received bytes. Returns a protocol error's reason.
    fn feed(
        &mut self,
        data: &[u8],
        arrival_us: u64,
        shard: &mut Shard,
    ) -> Result<(), &'static str> {
        self.bytes += data.len() as u64;
        let mut parser = std::mem::replace(&mut self.parser, Parser::Ws(WsParser::default()));
        let out = match &mut parser {
            Parser::Ws(p) => p.feed(data, |m| match m.opcode {
                0x2 if m.prefix.first() == Some(&levee_core::wire::KIND_AUDIO)
                    && m.prefix.len() >= levee_core::wire::AUDIO_HEADER =>
                {
                    let be = |at: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&m.prefix[at..at + 8]);
                        u64::from_be_bytes(b)
                    };
                    let wire = Some((be(1), be(9)));
                    self.audio(wire, &m.prefix[17..], arrival_us, shard);
                }
                0x8 => {
                    self.bytes = self.bytes.saturating_sub(2 + m.len);
                    self.close = Some(match m.prefix {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    });
                }
                _ => {}
            }),
            Parser::Ogg(p) => p.feed(data, |e| match e {
                OggEvent::PageStart {
                    granule, packets, ..
                } => {
                    if granule != 0 && granule != u64::MAX {
                        self.pages += 1;
                        let est = packets as u64 * self.samples_est as u64;
                        self.pending_missing += self.granule.page(granule, est);
                    }
                }
                OggEvent::Packet { prefix, .. } => {
                    if !(prefix.starts_with(b"OpusHead") || prefix.starts_with(b"OpusTags")) {
                        self.audio(None, prefix, arrival_us, shard);
                    }
                }
            }),
        };
        self.parser = parser;
        out
    }
}

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0u8; READ_BUF]);
}

/// Reads what the socket has (without waiting) into the thread's buffer and feeds it.
/// Returns `Ok(true)` on end of stream.
fn drain_socket(
    stream: &TcpStream,
    reader: &mut Reader,
    shard: &Mutex<Shard>,
) -> Result<bool, Failure> {
    READ_BUFFER.with(|buf| {
        let mut buf = buf.borrow_mut();
        let arrival = now_us();
        // Bounded: at most 16 reads (1 MiB) per wake-up, then yield to other listeners.
        for _ in 0..16 {
            match stream.try_read(&mut buf[..]) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
                    reader
                        .feed(&buf[..n], arrival, &mut sh)
                        .map_err(Failure::Protocol)?;
                    if n < buf.len() {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(Failure::from_io(&e)),
            }
        }
        Ok(false)
    })
}

fn request(format: Format, ep: &Endpoint, nonce: u64) -> String {
    match format {
        Format::Ws => {
            use base64::Engine;
            let key =
                base64::engine::general_purpose::STANDARD.encode(nonce.to_be_bytes().repeat(2));
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: levee-storm\r\n\r\n",
                ep.ws_path, ep.authority
            )
        }
        Format::Ogg => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-storm\r\nAccept: audio/ogg\r\n\r\n",
            ep.ogg_path, ep.authority
        ),
    }
}

/// Reads the HTTP answer head; returns the status and the bytes after the head.
async fn read_head(stream: &TcpStream, deadline_us: u64) -> Result<(u16, Vec<u8>), Failure> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let now = now_us();
        if now >= deadline_us {
            return Err(Failure::Timeout("response"));
        }
        match tokio::time::timeout(Duration::from_micros(deadline_us - now), stream.readable())
            .await
        {
            Err(_) => return Err(Failure::Timeout("response")),
            Ok(Err(e)) => return Err(Failure::from_io(&e)),
            Ok(Ok(())) => {}
        }
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(Failure::Closed),
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let status = crate::http::parse_status(&head[..end + 4])
                        .ok_or(Failure::Protocol("bad_http_answer"))?;
                    return Ok((status, head.split_off(end + 4)));
                }
                if head.len() > MAX_HEAD {
                    return Err(Failure::Protocol("http_head_too_large"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Failure::from_io(&e)),
        }
    }
}

async fn connect(
    ep: &Endpoint,
    source: Option<Ipv4Addr>,
    deadline_us: u64,
) -> Result<TcpStream, Failure> {
    let sock = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| Failure::from_io(&e))?;
    if let (Some(src), true) = (source, ep.addr.is_ipv4()) {
        sock.bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| Failure::from_io(&e))?;
    }
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), sock.connect(ep.addr)).await {
        Err(_) => Err(Failure::Timeout("connect")),
        Ok(Err(e)) => Err(Failure::from_io(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Counters a session updates as it goes.
pub struct Gauges<'a> {
    /// Sockets open now.
    pub sockets: &'a std::sync::atomic::AtomicU64,
    /// Listeners with audio now.
    pub connected: &'a std::sync::atomic::AtomicU64,
    /// Listeners whose join is under way.
    pub waiting: &'a std::sync::atomic::AtomicU64,
}

/// Runs one connection attempt. See the module docs.
#[allow(clippy::too_many_arguments)]
pub async fn session(
    ep: &Endpoint,
    format: Format,
    source: Option<Ipv4Addr>,
    bounds: Bounds,
    nonce: u64,
    shard: &Mutex<Shard>,
    gauges: &Gauges<'_>,
    mut stop: watch::Receiver<bool>,
) -> SessionRecord {
    use std::sync::atomic::Ordering::Relaxed;
    let mut join = JoinTiming {
        scheduled_us: bounds.scheduled_us,
        started_us: Some(now_us()),
        ..JoinTiming::default()
    };
    let mut reader = Reader::new(format, ep.meter);
    let audio_deadline = bounds.scheduled_us + ep.first_audio_timeout.as_micros() as u64;
    gauges.waiting.fetch_add(1, Relaxed);
    let mut waiting = true;
    let outcome: Result<(), (bool, Failure)> = async {
        let connect_deadline =
            (bounds.scheduled_us + ep.connect_timeout.as_micros() as u64).min(audio_deadline);
        let mut stream = connect(ep, source, connect_deadline)
            .await
            .map_err(|f| (false, f))?;
        gauges.sockets.fetch_add(1, Relaxed);
        let _guard = SocketGuard(gauges.sockets);
        join.connected_us = Some(now_us());
        stream
            .write_all(request(format, ep, nonce).as_bytes())
            .await
            .map_err(|e| (false, Failure::from_io(&e)))?;
        let (status, rest) = read_head(&stream, audio_deadline.min(bounds.leave_us))
            .await
            .map_err(|f| (false, f))?;
        join.response_us = Some(now_us());
        let want = if format == Format::Ws { 101 } else { 200 };
        if status != want {
            return Err((false, Failure::Http(status)));
        }
        {
            let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
            reader
                .feed(&rest, now_us(), &mut sh)
                .map_err(|r| (false, Failure::Protocol(r)))?;
        }
        drop(rest);
        // One timer and one stop watch for the whole session, not one per wake-up.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed_for = 0u64;
        let stopped = async {
            loop {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if *stop.borrow() {
                    return;
                }
            }
        };
        tokio::pin!(stopped);
        loop {
            if waiting {
                if let Some(t) = reader.first_audio_us {
                    waiting = false;
                    gauges.waiting.fetch_sub(1, Relaxed);
                    gauges.connected.fetch_add(1, Relaxed);
                    join.first_audio_us = Some(t);
                    let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
                    sh.point.joins += 1;
                    sh.point.ttfa.record(t.saturating_sub(bounds.scheduled_us));
                }
            }
            let joined = !waiting;
            if let Some(code) = reader.close {
                return if joined && now_us() >= bounds.end_ok_after_us {
                    Ok(())
                } else {
                    Err((joined, Failure::WsClose(code)))
                };
            }
            let deadline = if joined {
                bounds.leave_us
            } else {
                audio_deadline.min(bounds.leave_us)
            };
            let deadline_reached = |joined: bool| {
                if joined {
                    Ok(())
                } else {
                    Err((false, Failure::Timeout("first_audio")))
                }
            };
            let now = now_us();
            if now >= deadline {
                return deadline_reached(joined);
            }
            if armed_for != deadline {
                armed_for = deadline;
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_micros(deadline - now));
            }
            tokio::select! {
                r = stream.readable() => {
                    if let Err(e) = r {
                        return Err((joined, Failure::from_io(&e)));
                    }
                    match drain_socket(&stream, &mut reader, shard) {
                        Ok(false) => {}
                        Ok(true) => {
                            let joined = reader.first_audio_us.is_some();
                            return if joined && now_us() >= bounds.end_ok_after_us {
                                Ok(())
                            } else {
                                Err((joined, reader.close.map_or(Failure::Closed, Failure::WsClose)))
                            };
                        }
                        Err(f) => return Err((reader.first_audio_us.is_some(), f)),
                    }
                }
                _ = &mut timer => return deadline_reached(joined),
                _ = &mut stopped => return deadline_reached(joined),
            }
        }
    }
    .await;
    let end = now_us();
    if waiting {
        gauges.waiting.fetch_sub(1, Relaxed);
    } else {
        gauges.connected.fetch_sub(1, Relaxed);
    }
    // A first frame that arrived in the last read still counts as joined.
    if join.first_audio_us.is_none() {
        join.first_audio_us = reader.first_audio_us;
        if let Some(t) = reader.first_audio_us {
            let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
            sh.point.joins += 1;
            sh.point.ttfa.record(t.saturating_sub(bounds.scheduled_us));
        }
    }
    let joined = join.first_audio_us.is_some();
    let (join_failure, drop) = match outcome {
        Ok(()) => (None, None),
        Err((_, f)) if joined => (None, Some(f)),
        Err((_, f)) => (Some(f), None),
    };
    {
        let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
        sh.point.failures += join_failure.is_some() as u64;
        sh.point.drops += drop.is_some() as u64;
    }
    let pages = reader.pages;
    let bytes = reader.bytes;
    let summary = reader
        .meter
        .finish(end.min(bounds.leave_us).min(bounds.end_ok_after_us));
    SessionRecord {
        format,
        join,
        join_failure,
        drop,
        summary,
        bytes,
        pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use levee_core::mux::{Muxer, OggMux, WsMux};
    use levee_core::packet::{AudioPacket, PacketStream};
    use levee_media::opus::{OpusHead, SILENCE_20MS};

    const T0: u64 = 1_700_000_000_000_000;

    /// One chunk as levee's muxers package it for both formats.
    struct Chunk {
        ogg: Bytes,
        ws: Bytes,
    }

    /// What levee's muxers make of `packets` (marked or not), `per_chunk` packets a chunk;
    /// host packets listed in `drop` never reach the server.
    fn stream(n: u64, per_chunk: u32, marked: bool, drop: &[u64]) -> (Bytes, Bytes, Vec<Chunk>) {
        let head = OpusHead::new(2);
        let (mut ogg, mut ws) = (OggMux::new(&head, 7, &[]), WsMux::new(&head));
        let mut numbering = PacketStream::new();
        let (mut ogg_chunks, mut ws_chunks) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for i in (0..n).filter(|i| !drop.contains(i)) {
            let data = if marked {
                marker::write_packet(i, T0 + i * 20_000, 80, &mut buf);
                Bytes::from(buf.clone())
            } else {
                Bytes::from_static(&SILENCE_20MS)
            };
            let packet = numbering.push(AudioPacket {
                data,
                samples: 960,
                capture_us: T0 + i * 20_000,
            });
            ogg.push(&packet, per_chunk * 960, &mut ogg_chunks);
            ws.push(&packet, per_chunk * 960, &mut ws_chunks);
        }
        ogg.flush(&mut ogg_chunks);
        ws.flush(&mut ws_chunks);
        assert_eq!(ogg_chunks.len(), ws_chunks.len());
        let chunks = ogg_chunks
            .into_iter()
            .zip(ws_chunks)
            .map(|(o, w)| Chunk {
                ogg: o.bytes,
                ws: w.bytes,
            })
            .collect();
        (ws.headers(), ogg.headers(), chunks)
    }

    fn read_all(format: Format, head: &Bytes, chunks: &[Chunk], split: usize) -> Reader {
        let mut r = Reader::new(format, MeterConfig::default());
        let mut shard = Shard::default();
        let mut all = head.to_vec();
        for (k, c) in chunks.iter().enumerate() {
            all.extend_from_slice(if format == Format::Ws { &c.ws } else { &c.ogg });
            // Chunks arrive 20 ms × their packets apart.
            for piece in all.chunks(split) {
                r.feed(piece, T0 + (k as u64 + 1) * 100_000, &mut shard)
                    .unwrap();
            }
            all.clear();
        }
        r
    }

    #[test]
    fn readers_count_every_byte_and_frame_of_both_formats() {
        let (ws_head, ogg_head, chunks) = stream(100, 5, true, &[]);
        for split in [1, 7, 1 << 16] {
            let ws = read_all(Format::Ws, &ws_head, &chunks, split);
            let bytes: usize = ws_head.len() + chunks.iter().map(|c| c.ws.len()).sum::<usize>();
            assert_eq!(ws.bytes, bytes as u64);
            assert_eq!(ws.meter.frames(), 100);
            let ogg = read_all(Format::Ogg, &ogg_head, &chunks, split);
            let bytes: usize = ogg_head.len() + chunks.iter().map(|c| c.ogg.len()).sum::<usize>();
            assert_eq!(ogg.bytes, bytes as u64);
            assert_eq!(ogg.meter.frames(), 100);
            assert_eq!(ogg.pages, 20);
            assert_eq!(ogg.first_audio_us, Some(T0 + 100_000));
        }
    }

    #[test]
    fn the_hosts_marker_reveals_packets_lost_before_the_server() {
        // The server renumbers: its WebSocket sequence numbers have no hole. The marker does.
        let (ws_head, ogg_head, chunks) = stream(100, 5, true, &[40, 41, 42]);
        for (format, head) in [(Format::Ws, &ws_head), (Format::Ogg, &ogg_head)] {
            let r = read_all(format, head, &chunks, 1 << 16);
            let s = r.meter.finish(T0 + 3_000_000);
            assert_eq!((s.frames, s.gaps, s.gap_us), (97, 1, 60_000), "{format:?}");
        }
    }

    #[test]
    fn without_a_marker_wire_sequence_and_granules_find_lost_chunks() {
        // A real source (no marker); the listener misses chunk 4 (as a lagging skip would).
        let (ws_head, ogg_head, mut chunks) = stream(100, 5, false, &[]);
        chunks.remove(4);
        for (format, head) in [(Format::Ws, &ws_head), (Format::Ogg, &ogg_head)] {
            let r = read_all(format, head, &chunks, 3);
            let s = r.meter.finish(T0 + 3_000_000);
            assert_eq!((s.frames, s.gaps, s.gap_us), (95, 1, 100_000), "{format:?}");
            // Only WebSocket carries capture times for a real source.
            assert_eq!(s.latency_max_us > 0, format == Format::Ws);
        }
    }

    #[test]
    fn a_websocket_close_is_seen_and_not_counted_as_media() {
        let mut r = Reader::new(Format::Ws, MeterConfig::default());
        let mut shard = Shard::default();
        let close = levee_core::wsframe::close_frame(1001, "this space has ended");
        r.feed(&close, T0, &mut shard).unwrap();
        assert_eq!(r.close, Some(1001));
        assert_eq!(r.bytes, 0);
    }
}
