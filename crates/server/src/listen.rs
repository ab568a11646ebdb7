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
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
        let _ = stream
            .write_all(&wsframe::close_frame(
                wsframe::CLOSE_GOING_AWAY,
                "this space has ended",
            ))
            .await;
        return;
    }
    tune_socket(&stream, &hub);
    let mut dec = FrameDecoder::new(hub.config.max_ws_listener_message);
    dec.push(&rest);
    pump(stream, hub, space, Format::Ws, Some(dec)).await;
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

async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, bufs: &[Bytes]) -> std::io::Result<()> {
    if let [one] = bufs {
        return w.write_all(one).await;
    }
    let mut slices = [IoSlice::new(&[]); MAX_BATCH];
    let n = bufs.len().min(MAX_BATCH);
    for (s, b) in slices.iter_mut().zip(bufs) {
        *s = IoSlice::new(b);
    }
    let mut live = &mut slices[..n];
    while !live.is_empty() {
        let written = w.write_vectored(live).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut live, written);
    }
    Ok(())
}

/// What a listener's own bytes asked for.
enum Inbound {
    Continue,
    Leave,
}

async fn on_inbound<W: AsyncWrite + Unpin>(
    w: &mut W,
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
                let _ = w
                    .write_all(&wsframe::close_frame(e.close_code(), &e.to_string()))
                    .await;
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
    let (mut rd, mut wr) = stream.split();
    let mut edge = space.track.subscribe();
    let stall = cfg.stall_timeout;
    let max_batch = cfg.max_batch.clamp(1, MAX_BATCH);

    let headers = space.track.headers(format);
    match tokio::time::timeout(stall, wr.write_all(&headers)).await {
        Ok(Ok(())) => counters.bytes_sent[i].fetch_add(headers.len() as u64, Relaxed),
        _ => return,
    };
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
                match tokio::time::timeout(stall, write_batch(&mut wr, &bufs)).await {
                    Ok(Ok(())) => {
                        counters.bytes_sent[i].fetch_add(bytes as u64, Relaxed);
                        counters.chunks_sent[i].fetch_add(n, Relaxed);
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {
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
                        let close =
                            wsframe::close_frame(wsframe::CLOSE_GOING_AWAY, "this space has ended");
                        let _ = tokio::time::timeout(stall, wr.write_all(&close)).await;
                    }
                    return;
                }
                tokio::select! {
                    changed = edge.changed() => if changed.is_err() { return },
                    got = rd.read(&mut rbuf) => match got {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if let Inbound::Leave = on_inbound(&mut wr, &mut dec, &rbuf[..n], &mut uploaded).await {
                                return;
                            }
                        }
                    },
                }
            }
        }
    }
}
