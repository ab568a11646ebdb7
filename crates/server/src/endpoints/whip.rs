//! WHIP (RFC 9725): a speaker (or the host) publishes from the browser over WebRTC, with the
//! browser's own echo cancellation, noise suppression and jitter handling, through str0m
//! (sans-IO WebRTC) on a UDP socket of its own.
//!
//! - `POST /live/{id}/whip` with `Authorization: Bearer <speaker key or host key>` and an SDP
//!   offer (`Content-Type: application/sdp`, at most [`MAX_OFFER`] bytes): `201 Created`
//!   with the SDP answer and `Location: /live/{id}/whip/{session}`. The server is ICE-lite
//!   with one host candidate (`--webrtc-ip`, else the address the request came to), so the
//!   offer needs no trickle (`PATCH` answers `405`).
//! - `DELETE /live/{id}/whip/{session}` (the same key) ends the session.
//! - Audio: Opus only. Each packet is checked (`levee_core::ingest::single_packet`) and goes
//!   to the stage's mixer as any speaker's does; a host's goes to the space as the host's
//!   packets always do. If the offer can receive (`sendrecv`), the mix of everyone else comes
//!   back on the same track.
//! - Bounds: [`MAX_SESSIONS`] sessions per space (a newer one of the same speaker replaces
//!   the older), [`CONNECT_TIMEOUT`] to connect, the source idle timeout once connected.

use crate::clock::wall_us;
use crate::http1::{respond, respond_typed};
use crate::hub::{Hub, Space};
use crate::shield::{IngestReason, Refusal, Wire};
use crate::stage::ReturnPacket;
use bytes::Bytes;
use levee_core::ingest::single_packet;
use levee_core::space::SpaceState;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::ingest::{End, Feed};

/// Bytes of an SDP offer at most.
pub const MAX_OFFER: usize = 16 * 1024;
/// WHIP sessions per space at most (one per mixer slot).
pub const MAX_SESSIONS: usize = levee_core::stage::SLOTS;
/// Time a session has to connect (ICE and DTLS) after its answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest UDP datagram read.
const DATAGRAM: usize = 2048;

async fn refuse(stream: &mut TcpStream, hub: &Hub, reason: IngestReason, status: u16, why: &str) {
    let r = Refusal::new(reason, Wire::Http(status), why.to_owned())
        .counted(&hub.shield.counters, &hub.node);
    respond(
        stream,
        r.status(),
        r.phrase(),
        "",
        &format!("{}\n", r.detail),
    )
    .await;
}

fn bearer(head: &crate::http1::Head) -> Option<String> {
    head.header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|k| k.trim().to_owned())
}

/// `POST /live/{id}/whip`: the offer is `body` (read by the front, within [`MAX_OFFER`]).
pub async fn offer(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head: crate::http1::Head,
    body: Bytes,
) {
    let Some(key) = bearer(&head) else {
        return refuse(
            &mut stream,
            &hub,
            IngestReason::BadKey,
            401,
            "WHIP needs Authorization: Bearer <speaker key or host key>",
        )
        .await;
    };
    let known = space.info.lock().expect("space lock").key_matches(&key)
        || space.stage.speaker_by_key(&key).is_some();
    if !known {
        return refuse(
            &mut stream,
            &hub,
            IngestReason::BadKey,
            401,
            "neither the host key nor a speaker key of this space",
        )
        .await;
    }
    if space.state() == SpaceState::Ended {
        return respond(&mut stream, 410, "Gone", "", "this space has ended\n").await;
    }
    let ctype = head.header("content-type").unwrap_or("");
    if !ctype.to_ascii_lowercase().starts_with("application/sdp") {
        return respond(
            &mut stream,
            415,
            "Unsupported Media Type",
            "",
            "a WHIP offer is Content-Type: application/sdp\n",
        )
        .await;
    }
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return refuse(
            &mut stream,
            &hub,
            IngestReason::BadStructure,
            400,
            "the offer is not UTF-8",
        )
        .await;
    };
    let offer = match SdpOffer::from_sdp_string(sdp) {
        Ok(o) => o,
        Err(e) => {
            return refuse(
                &mut stream,
                &hub,
                IngestReason::BadStructure,
                400,
                &format!("malformed SDP offer: {e}"),
            )
            .await;
        }
    };
    if space.stage.whip_sessions() >= MAX_SESSIONS {
        return respond(
            &mut stream,
            503,
            "Service Unavailable",
            "",
            "this space holds its maximum of WebRTC sessions\n",
        )
        .await;
    }
    // The candidate: the configured address, else the one the request came to.
    let ip: IpAddr = hub
        .config
        .webrtc_ip
        .or_else(|| stream.local_addr().ok().map(|a| a.ip()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let socket = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("WHIP: no UDP socket on {ip}: {e}");
            return respond(
                &mut stream,
                503,
                "Service Unavailable",
                "",
                "no UDP port for WebRTC\n",
            )
            .await;
        }
    };
    let local = socket.local_addr().expect("bound socket");
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true)
        .build(Instant::now());
    match Candidate::host(local, "udp") {
        Ok(c) => {
            rtc.add_local_candidate(c);
        }
        Err(e) => {
            tracing::error!("WHIP: no candidate for {local}: {e}");
            return respond(
                &mut stream,
                503,
                "Service Unavailable",
                "",
                "no WebRTC candidate\n",
            )
            .await;
        }
    }
    let sdp_answer = match rtc.sdp_api().accept_offer(offer) {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                &mut stream,
                &hub,
                IngestReason::BadStructure,
                400,
                &format!("the offer cannot be accepted: {e}"),
            )
            .await;
        }
    };
    let (tx, rx) = mpsc::channel(crate::stage::RETURN_QUEUE);
    let Some(feed) = Feed::open(&hub, &space, &key, Some(tx)) else {
        return respond(
            &mut stream,
            403,
            "Forbidden",
            "",
            "no longer a speaker of this space\n",
        )
        .await;
    };
    let id = space.snapshot().id;
    let session = crate::random::u64();
    let session_id = format!("{session:016x}");
    let stop = space.stage.add_whip_session(&session_id, &key);
    let location = format!("/live/{id}/whip/{session_id}");
    let body = sdp_answer.to_sdp_string();
    respond_typed(
        &mut stream,
        201,
        "Created",
        &format!("Location: {location}\r\nETag: \"{session_id}\"\r\n"),
        "application/sdp",
        &body,
    )
    .await;
    drop(stream);
    tracing::info!(space = %id, session = %session_id, role = feed.role(), "WHIP session answered");
    let end = run(rtc, socket, feed, rx, stop, &hub, &space).await;
    space.stage.remove_whip_session(&session_id);
    tracing::info!(space = %id, session = %session_id, reason = ?end.map(|e| e.close().1), "WHIP session ended");
}

/// `DELETE /live/{id}/whip/{session}`: ends the session (the key that opened it, or the
/// host's).
pub async fn delete(
    mut stream: TcpStream,
    space: Arc<Space>,
    head: crate::http1::Head,
    session: &str,
) {
    let key = bearer(&head).unwrap_or_default();
    let host = space.info.lock().expect("space lock").key_matches(&key);
    match space.stage.stop_whip_session(session, &key, host) {
        Some(true) => respond(&mut stream, 200, "OK", "", "session ended\n").await,
        Some(false) => {
            respond(
                &mut stream,
                403,
                "Forbidden",
                "",
                "not the key of this session\n",
            )
            .await
        }
        None => respond(&mut stream, 404, "Not Found", "", "no such WHIP session\n").await,
    }
}

/// The session: str0m driven by the UDP socket, a timer, the return feed and the stop signal.
async fn run(
    mut rtc: Rtc,
    socket: UdpSocket,
    mut feed: Feed,
    mut returns: mpsc::Receiver<ReturnPacket>,
    stop: Arc<tokio::sync::Notify>,
    hub: &Arc<Hub>,
    space: &Arc<Space>,
) -> Option<End> {
    let local = socket.local_addr().ok()?;
    let mut buf = vec![0u8; DATAGRAM];
    let started = Instant::now();
    let mut connected = false;
    let mut last_audio = Instant::now();
    let mut send: Option<(Mid, str0m::format::PayloadParams)> = None;
    let mut rtp_time: u64 = 0;
    let mut packets = Vec::with_capacity(1);
    let idle = hub.config.source_idle_timeout;
    let end: Option<End> = 'session: loop {
        // Everything str0m has to say, until it waits.
        let deadline = loop {
            let out = match rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!("WHIP: {e}");
                    break 'session None;
                }
            };
            match out {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    break 'session None;
                }
                Output::Event(Event::MediaAdded(m)) => {
                    if matches!(m.direction, Direction::SendRecv | Direction::SendOnly) {
                        let pt = rtc
                            .writer(m.mid)
                            .and_then(|w| w.payload_params().next().copied());
                        send = pt.map(|p| (m.mid, p));
                    }
                }
                // RTP without payload (padding, bandwidth probes) carries no audio.
                Output::Event(Event::MediaData(d)) if d.data.is_empty() => {}
                Output::Event(Event::MediaData(d)) => {
                    last_audio = Instant::now();
                    match single_packet(Bytes::copy_from_slice(&d.data), wall_us()) {
                        Ok(p) => packets.push(p),
                        Err(e) => {
                            space.counters.ingest_errors.fetch_add(1, Relaxed);
                            let r = Refusal::new(
                                IngestReason::from(&e),
                                Wire::Http(400),
                                e.to_string(),
                            )
                            .counted(&hub.shield.counters, &hub.node);
                            break 'session Some(End::Refused(r));
                        }
                    }
                    if feed.lost(space) {
                        break 'session Some(End::Replaced);
                    }
                    if let Err(end) = feed.deliver(hub, space, &mut packets, false) {
                        break 'session Some(end);
                    }
                }
                Output::Event(_) => {}
            }
        };
        if !connected && started.elapsed() > CONNECT_TIMEOUT {
            break None;
        }
        if connected && last_audio.elapsed() > idle {
            break None;
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        let input = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => match (&buf[..n]).try_into() {
                    Ok(contents) => Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    }),
                    Err(_) => continue,
                },
                Err(_) => continue,
            },
            _ = tokio::time::sleep(wait) => Input::Timeout(Instant::now()),
            Some(p) = returns.recv() => {
                if let Some((mid, params)) = &send {
                    if let Some(w) = rtc.writer(*mid) {
                        let t = MediaTime::new(rtp_time, str0m::media::Frequency::FORTY_EIGHT_KHZ);
                        rtp_time += levee_core::stage::FRAME as u64;
                        let _ = w.write(params.pt(), Instant::now(), t, p.data.to_vec());
                    }
                }
                continue;
            }
            _ = stop.notified() => break None,
        };
        if rtc.handle_input(input).is_err() {
            break None;
        }
    };
    feed.release(space);
    rtc.disconnect();
    end
}
