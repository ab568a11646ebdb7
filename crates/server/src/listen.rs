//! Listeners: write the space's shared chunks to one socket, from a cursor into the ring.
//!
//! Per listener the hot path is: wake, take `Bytes` handles of the chunks since the cursor
//! (reference counts, no copies), write them with one vectored write, sleep. A listener that
//! falls out of the ring skips to the live edge (counted); one whose write cannot finish within
//! `stall_timeout` is cut (counted). Nothing is buffered per listener: a slow reader holds at
//! most its kernel send buffer (`listener_sndbuf`) and one batch of shared chunks.

use crate::front::respond;
use crate::hub::{Batch, Format, Hub, Space};
use bytes::Bytes;
use levee_core::wsframe::{self, FrameDecoder, Message};
use std::io::IoSlice;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most chunks one vectored write carries (the iovec array lives on the task's stack).
pub const MAX_BATCH: usize = 64;
/// Bytes a progressive-Ogg listener may send after its request before it is dropped.
pub const MAX_OGG_LISTENER_UPLOAD: usize = 16 * 1024;

const OGG_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nCache-Control: no-cache, no-store\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";

fn tune_socket(stream: &TcpStream, hub: &Hub) {
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(hub.config.listener_sndbuf);
}

/// Serves a progressive Ogg/Opus listener (`GET /live/{id}.ogg`).
pub async fn ogg(mut stream: TcpStream, hub: Arc<Hub>, space: Arc<Space>, head_only: bool) {
    if space.state() == levee_core::space::SpaceState::Ended {
        return respond(&mut stream, 410, "Gone", "", "this space has ended\n").await;
    }
    tune_socket(&stream, &hub);
    if stream.write_all(OGG_RESPONSE.as_bytes()).await.is_err() || head_only {
        return;
    }
    pump(stream, hub, space, Format::Ogg, None).await;
}

/// Serves a WebSocket listener (`GET /live/{id}/ws`, after the 101 answer).
pub async fn ws(mut stream: TcpStream, hub: Arc<Hub>, space: Arc<Space>, rest: Bytes) {
    if space.state() == levee_core::space::SpaceState::Ended {
        return ws_close(
            &mut stream,
            wsframe::CLOSE_GOING_AWAY,
            "this space has ended",
        )
        .await;
    }
    tune_socket(&stream, &hub);
    let mut dec = FrameDecoder::new(hub.config.max_ws_listener_message);
    dec.push(&rest);
    pump(stream, hub, space, Format::Ws, Some(dec)).await;
}

/// Time a peer gets to answer our close frame before the socket is dropped.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends a WebSocket as RFC 6455 asks: send the close frame, stop sending (FIN), then read
/// until the peer closes too (at most [`CLOSE_LINGER`], at most 4 KiB). Dropping the socket at
/// once would reset it if the peer's answer arrived first, and the peer could lose our frame.
pub async fn ws_close(stream: &mut TcpStream, code: u16, reason: &str) {
    let frame = wsframe::close_frame(code, reason);
    let done = async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 512];
        let mut total = 0;
        loop {
            let n = tokio::io::AsyncReadExt::read(stream, &mut sink).await?;
            total += n;
            if n == 0 || total > 4096 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, done).await;
}

/// Keeps the listener gauge right however the listener leaves.
struct Listening<'a> {
    space: &'a Space,
    format: Format,
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.space.counters.listeners[self.format.idx()].fetch_sub(1, Relaxed);
    }
}

/// Why a write to a listener ended early.
enum WriteEnd {
    /// The peer is gone.
    Gone,
    /// The write could not complete within the stall bound.
    Stalled,
}

/// Writes `bufs` whole with as few syscalls as possible. The common case (room in the socket
/// buffer) completes without touching the timer wheel: the stall bound is armed only when the
/// socket is full.
async fn write_shared(
    stream: &TcpStream,
    bufs: &[Bytes],
    stall: std::time::Duration,
) -> Result<(), WriteEnd> {
    let mut slices = [IoSlice::new(&[]); MAX_BATCH];
    let n = bufs.len().min(MAX_BATCH);
    for (s, b) in slices.iter_mut().zip(bufs) {
        *s = IoSlice::new(b);
    }
    let mut live = &mut slices[..n];
    let mut deadline = None;
    while !live.is_empty() {
        match stream.try_write_vectored(live) {
            Ok(0) => return Err(WriteEnd::Gone),
            Ok(written) => IoSlice::advance_slices(&mut live, written),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + stall);
                match tokio::time::timeout_at(until, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(WriteEnd::Gone),
                    Err(_) => return Err(WriteEnd::Stalled),
                }
            }
            Err(_) => return Err(WriteEnd::Gone),
        }
    }
    Ok(())
}

/// Per-listener counts, added to the space's shared counters every [`TALLY_EVERY`] writes and
/// when the listener leaves (one shared atomic add per batch of writes, not per write).
struct Tally<'a> {
    space: &'a Space,
    i: usize,
    bytes: u64,
    chunks: u64,
    writes: u32,
}

/// Writes between two flushes of a listener's counts.
const TALLY_EVERY: u32 = 16;

impl Tally<'_> {
    fn add(&mut self, bytes: usize, chunks: u64) {
        self.bytes += bytes as u64;
        self.chunks += chunks;
        self.writes += 1;
        if self.writes >= TALLY_EVERY {
            self.flush();
        }
    }
    fn flush(&mut self) {
        let c = &self.space.counters;
        c.bytes_sent[self.i].fetch_add(std::mem::take(&mut self.bytes), Relaxed);
        c.chunks_sent[self.i].fetch_add(std::mem::take(&mut self.chunks), Relaxed);
        self.writes = 0;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What a listener's own bytes asked for.
enum Inbound {
    Continue,
    Leave,
}

async fn on_inbound(
    w: &mut TcpStream,
    dec: &mut Option<FrameDecoder>,
    data: &[u8],
    uploaded: &mut usize,
) -> Inbound {
    let Some(dec) = dec else {
        // Ogg listeners have nothing to say after their request; tolerate a little.
        *uploaded += data.len();
        return if *uploaded > MAX_OGG_LISTENER_UPLOAD {
            Inbound::Leave
        } else {
            Inbound::Continue
        };
    };
    dec.push(data);
    loop {
        match dec.next() {
            Ok(None) => return Inbound::Continue,
            Ok(Some(Message::Ping(payload))) => {
                let mut out = bytes::BytesMut::new();
                wsframe::encode_frame(wsframe::OP_PONG, &payload, &mut out);
                if w.write_all(&out).await.is_err() {
                    return Inbound::Leave;
                }
            }
            Ok(Some(Message::Close(..))) => {
                let _ = w
                    .write_all(&wsframe::close_frame(wsframe::CLOSE_NORMAL, ""))
                    .await;
                return Inbound::Leave;
            }
            // Listeners have nothing to send yet; small messages are ignored.
            Ok(Some(Message::Text(_) | Message::Binary(_) | Message::Pong)) => {}
            Err(e) => {
                ws_close(w, e.close_code(), &e.to_string()).await;
                return Inbound::Leave;
            }
        }
    }
}

async fn pump(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    format: Format,
    mut dec: Option<FrameDecoder>,
) {
    let cfg = &hub.config;
    let counters = &space.counters;
    let i = format.idx();
    counters.joins[i].fetch_add(1, Relaxed);
    counters.listeners[i].fetch_add(1, Relaxed);
    let _listening = Listening {
        space: &space,
        format,
    };
    let mut tally = Tally {
        space: &space,
        i,
        bytes: 0,
        chunks: 0,
        writes: 0,
    };
    let mut edge = space.track.subscribe();
    let stall = cfg.stall_timeout;
    let max_batch = cfg.max_batch.clamp(1, MAX_BATCH);

    let headers = space.track.headers(format);
    if write_shared(&stream, std::slice::from_ref(&headers), stall)
        .await
        .is_err()
    {
        return;
    }
    tally.add(headers.len(), 0);
    let mut cursor = space.track.join_cursor(cfg.join_backlog);
    let mut bufs: Vec<Bytes> = Vec::new();
    let mut rbuf = [0u8; 256];
    let mut uploaded = 0usize;
    loop {
        match space
            .track
            .read(cursor, max_batch, cfg.join_backlog, format, &mut bufs)
        {
            Batch::Data(n) => {
                cursor += n;
                let bytes: usize = bufs.iter().map(Bytes::len).sum();
                match write_shared(&stream, &bufs, stall).await {
                    Ok(()) => tally.add(bytes, n),
                    Err(WriteEnd::Gone) => return,
                    Err(WriteEnd::Stalled) => {
                        counters.stall_cuts[i].fetch_add(1, Relaxed);
                        tracing::debug!(space = %space.snapshot().id, format = format.label(), "cut a stalled listener");
                        return;
                    }
                }
                bufs.clear();
            }
            Batch::Lagged { missed, resume } => {
                counters.lag_skips[i].fetch_add(1, Relaxed);
                counters.chunks_skipped[i].fetch_add(missed, Relaxed);
                cursor = resume;
            }
            Batch::UpToDate => {
                if edge.borrow().ended {
                    if dec.is_some() {
                        ws_close(
                            &mut stream,
                            wsframe::CLOSE_GOING_AWAY,
                            "this space has ended",
                        )
                        .await;
                    }
                    return;
                }
                tokio::select! {
                    changed = edge.changed() => if changed.is_err() { return },
                    ready = stream.readable() => {
                        if ready.is_err() {
                            return;
                        }
                        match stream.try_read(&mut rbuf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if let Inbound::Leave = on_inbound(&mut stream, &mut dec, &rbuf[..n], &mut uploaded).await {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        }
                    },
                }
            }
        }
    }
}
