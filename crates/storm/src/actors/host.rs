//! The synthetic host: publishes marked 20 ms Opus packets over levee's host WebSocket, on a
//! real-time schedule, so that a run needs no external source.
//!
//! Contract: [`run_host`] connects to `/live/{id}/publish`, sends `{"key": ...}`, waits for
//! `{"type":"ready"}`, then sends packet `i` at `start + i × 20 ms` with the host's own sequence
//! number `i` and capture time in both the AUDIO header and the packet marker
//! ([`crate::plan::marker`]), until `end`. During the configured pause it sends nothing and its
//! sequence numbers run on (the packets are lost, as in a network outage), so listeners must
//! see a gap of exactly the pause. Every wait is bounded; it stops at `end` or when told.

use crate::error::{Error, Result};
use crate::net::clock::now_us;
use crate::net::clock::sleep_until_us;
use crate::observe::stats::HostStats;
use crate::plan::marker;
use crate::plan::scenario::HostConfig;
use crate::plan::target::Target;
use bytes::BytesMut;
use levee_core::wsframe::{self, FrameDecoder, Message};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Packet duration of the synthetic host, µs.
pub const PACKET_US: u64 = 20_000;

async fn handshake(target: &Target, space: &str, key: &str) -> Result<(TcpStream, FrameDecoder)> {
    let mut s = TcpStream::connect(target.addr)
        .await
        .map_err(|e| Error::server(format!("host connect: {e}")))?;
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET /live/{space}/publish HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bGV2ZWUtc3Rvcm0taG9zdA==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.authority
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| Error::server(format!("host send: {e}")))?;
    let (head, got) = crate::net::http::read_head(&mut s, "host").await?;
    if head.status != 101 {
        return Err(Error::server(format!(
            "host: publish answered {}",
            crate::net::http::status_line(&got)
        )));
    }
    let mut dec = FrameDecoder::for_server_frames(64 * 1024);
    dec.push(&got[head.len..]);
    let mut buf = [0u8; 1024];
    let hello = serde_json::json!({ "key": key }).to_string();
    let mut out = BytesMut::new();
    wsframe::encode_client_frame(wsframe::OP_TEXT, hello.as_bytes(), [7, 1, 3, 9], &mut out);
    s.write_all(&out)
        .await
        .map_err(|e| Error::server(format!("host send: {e}")))?;
    loop {
        match dec.next() {
            Ok(Some(Message::Text(t))) if t.contains("\"ready\"") => return Ok((s, dec)),
            Ok(Some(Message::Close(code, why))) => {
                return Err(Error::server(format!("host refused: {code:?} {why}")))
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(Error::server(format!("host: {e}"))),
        }
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| Error::server(format!("host read: {e}")))?;
        if n == 0 {
            return Err(Error::server("host: server closed before ready"));
        }
        dec.push(&buf[..n]);
    }
}

/// Publishes until `end_us` (Unix µs) or `stop`. `run_start_us` anchors the pause. See the
/// module docs.
pub async fn run_host(
    target: Target,
    space: String,
    key: String,
    cfg: HostConfig,
    run_start_us: u64,
    end_us: u64,
    mut stop: watch::Receiver<bool>,
) -> HostStats {
    let mut st = HostStats::new(&cfg);
    let connect = tokio::time::timeout(Duration::from_secs(10), handshake(&target, &space, &key));
    let (stream, mut dec) = match connect.await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            st.error = Some(e.to_string());
            return st;
        }
        Err(_) => {
            st.error = Some("host: no ready within 10 s".into());
            return st;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    // Drain what the server sends (pings, a close) so its socket never fills; report a close.
    let (closed_tx, mut closed_rx) = watch::channel(None::<String>);
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = closed_tx.send(Some("host: server closed the publish socket".into()));
                    return;
                }
                Ok(n) => dec.push(&buf[..n]),
            }
            while let Ok(Some(m)) = dec.next() {
                if let Message::Close(code, why) = m {
                    let _ = closed_tx.send(Some(format!("host: server closed: {code:?} {why}")));
                    return;
                }
            }
        }
    });
    let size = marker::packet_size(cfg.bitrate);
    let pause = cfg.pause_at.map(|a| {
        let from = run_start_us + a.as_micros() as u64;
        (from, from + cfg.pause_for.as_micros() as u64)
    });
    let start = now_us();
    let mut packet = Vec::with_capacity(size);
    let mut body = Vec::with_capacity(size + levee_core::wire::AUDIO_HEADER);
    let mut frame = BytesMut::with_capacity(size + 64);
    let mut seq: u64 = 0;
    loop {
        let due = start + seq * PACKET_US;
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
        if pause.is_some_and(|(a, b)| due >= a && due < b) {
            st.packets_dropped += 1;
            seq += 1;
            continue;
        }
        let lag = now_us().saturating_sub(due);
        st.max_send_lag_ms = st.max_send_lag_ms.max(lag as f64 / 1000.0);
        marker::write_packet(seq, due, size, &mut packet);
        body.clear();
        body.push(levee_core::wire::KIND_AUDIO);
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(&due.to_be_bytes());
        body.extend_from_slice(&packet);
        frame.clear();
        let mask = (seq as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
        wsframe::encode_client_frame(wsframe::OP_BINARY, &body, mask, &mut frame);
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&frame)).await {
            Ok(Ok(())) => st.packets_sent += 1,
            Ok(Err(e)) => {
                st.error = Some(format!("host send: {e}"));
                break;
            }
            Err(_) => {
                st.error = Some("host: a send blocked for 5 s".into());
                break;
            }
        }
        seq += 1;
    }
    let mut close = BytesMut::new();
    wsframe::encode_client_frame(
        wsframe::OP_CLOSE,
        &1000u16.to_be_bytes(),
        [1, 2, 3, 4],
        &mut close,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&close)).await;
    reader.abort();
    st
}
