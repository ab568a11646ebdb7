//! `GET /live/{id}/replay.ogg`: a space's recording as one Ogg/Opus file, made from its
//! recorded segments as it is sent (`docs/protocol.md`, "Replay").
//!
//! Served on the raw socket, as the live streams are, because a long recording takes longer
//! to send than the API's bound on an exchange: each write is bounded instead
//! ([`WRITE_BOUND`]), and the pages are made in a blocking task that stays at most
//! [`PAGES_AHEAD`] pages ahead of the socket. A damaged record ends the file there (logged);
//! the answer's status was sent with the first page.

use crate::api::replay::replay_dir;
use crate::http1::respond;
use crate::hub::Hub;
use crate::recorder;
use bytes::Bytes;
use levee_core::mux::{Chunk, Muxer, OggMux};
use levee_core::packet::Packet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Longest one write to the downloader may take.
pub const WRITE_BOUND: Duration = Duration::from_secs(10);
/// Pages made ahead of the socket, at most.
pub const PAGES_AHEAD: usize = 16;
/// Audio per Ogg page of a download, 48 kHz samples (1 s).
pub const PAGE_SAMPLES: u32 = 48_000;

/// Makes the file's pages from `dir`'s recording into `tx`; the first message says whether
/// the recording could be opened.
fn pages(dir: &Path, id: &str, tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>) {
    let opened = (|| {
        let (entries, _) = recorder::read_back(dir)?;
        let init = std::fs::read(dir.join(recorder::INIT_FILE))
            .map_err(|_| "no init segment for this recording".to_owned())?;
        let head =
            levee_media::mp4::read_init(&init).map_err(|why| format!("init segment: {why}"))?;
        if entries.is_empty() {
            return Err("the recording holds no whole segment".to_owned());
        }
        let title = std::fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
            .and_then(|v| v["title"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok((entries, head, title))
    })();
    let (entries, head, title) = match opened {
        Ok(v) => v,
        Err(why) => {
            let _ = tx.blocking_send(Err(why));
            return;
        }
    };
    let serial = levee_core::space::key_hash(id)[..4]
        .iter()
        .fold(0u32, |a, &b| a << 8 | b as u32);
    let mut mux = OggMux::new(&head, serial, &[format!("TITLE={title}")]);
    if tx.blocking_send(Ok(mux.headers())).is_err() {
        return;
    }
    let base = entries[0].segment.pts;
    let (mut seq, mut out) = (0u64, Vec::<Chunk>::new());
    for e in &entries {
        let segment = match recorder::read_segment(dir, e) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(space = %id, "replay download ends at segment {}: {why}", e.segment.msn);
                break;
            }
        };
        let (time, samples) = match levee_media::mp4::read_segment(&segment) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(space = %id, "replay download ends at segment {}: {why}", e.segment.msn);
                break;
            }
        };
        let mut pts = time.saturating_sub(base);
        for (duration, data) in samples {
            let p = Packet {
                seq,
                pts,
                samples: duration,
                capture_us: 0,
                data: Bytes::copy_from_slice(data),
            };
            mux.push(&p, PAGE_SAMPLES, &mut out);
            seq += 1;
            pts += duration as u64;
        }
        for c in out.drain(..) {
            if tx.blocking_send(Ok(c.bytes)).is_err() {
                return;
            }
        }
    }
    mux.flush(&mut out);
    for c in out {
        if tx.blocking_send(Ok(c.bytes)).is_err() {
            return;
        }
    }
}

/// Writes `bytes` within [`WRITE_BOUND`]; false when it could not.
async fn send(stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    matches!(
        tokio::time::timeout(WRITE_BOUND, stream.write_all(&bytes)).await,
        Ok(Ok(()))
    )
}

/// Serves `/live/{id}/replay.ogg` on `stream`.
pub async fn replay_ogg(mut stream: TcpStream, hub: Arc<Hub>, id: &str) {
    let dir = match replay_dir(&hub, id) {
        Ok(d) => d,
        Err((status, why)) => {
            let reason = status.canonical_reason().unwrap_or("Not Found");
            return respond(
                &mut stream,
                status.as_u16(),
                reason,
                "",
                &format!("{why}\n"),
            )
            .await;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let owned = id.to_owned();
    tokio::task::spawn_blocking(move || pages(&dir, &owned, tx));
    let first = match rx.recv().await {
        Some(Ok(headers)) => headers,
        Some(Err(why)) => {
            return respond(&mut stream, 404, "Not Found", "", &format!("{why}\n")).await
        }
        None => return,
    };
    // Chunked: the length is not known before the last page, and the end is said, not
    // guessed from the connection closing.
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nContent-Disposition: attachment; filename=\"{id}.ogg\"\r\nCache-Control: public, max-age=86400\r\nAccess-Control-Allow-Origin: *\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunk = |data: &[u8]| {
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    };
    if !send(&mut stream, head.into_bytes()).await || !send(&mut stream, chunk(&first)).await {
        return;
    }
    while let Some(Ok(page)) = rx.recv().await {
        if !send(&mut stream, chunk(&page)).await {
            return;
        }
    }
    if !send(&mut stream, b"0\r\n\r\n".to_vec()).await {
        return;
    }
    let _ = stream.shutdown().await;
}
