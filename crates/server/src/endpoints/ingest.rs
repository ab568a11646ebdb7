//! Sources: Icecast-style `PUT`/`SOURCE` with an Ogg/Opus body, and the browser host's
//! WebSocket. Both validate everything they read (see `levee_core::ingest`) and refuse bad input
//! with a reason; nothing invalid reaches the space's track.
//!
//! Only the host key opens a source. The newest authenticated source takes over a space (a host
//! that reconnects after a network drop does not wait for the old connection to time out); the
//! older one is told it was replaced. Listeners are never disconnected by a source change.

use crate::clock::{mono_us, wall_us};
use crate::http1::{respond, Head};
use crate::hub::{Hub, Space};
use crate::shield::{IngestReason, Refusal, Wire};
use crate::stage::{Connection, Gone, Programme, ReturnPacket, RETURN_QUEUE};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use levee_core::ingest::{single_packet, IngestError, MinRate, OggIngest, Pacer};
use levee_core::packet::AudioPacket;
use levee_core::space::SpaceState;
use levee_core::wire::{self, WireMessage};
use levee_core::wsframe::{self, FrameDecoder, Message};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Window over which a source's delivery rate is judged.
pub const MIN_RATE_WINDOW_US: u64 = 10_000_000;

/// Bytes read from a source per read call.
pub const READ_CHUNK: usize = 16 * 1024;
/// Host capture times further than this from the server's clock are replaced by arrival time.
pub const MAX_CLOCK_SKEW_US: u64 = 5_000_000;

/// The password of a `Basic` authorization header (the user name is ignored, as Icecast does).
fn basic_password(header: Option<&str>) -> Option<String> {
    let encoded = header?
        .strip_prefix("Basic ")
        .or_else(|| header?.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

fn too_slow(ratio: f64) -> String {
    format!(
        "source delivered {:.0}% of real time over {} s; dropped (a source must keep up with its own audio)",
        ratio * 100.0,
        MIN_RATE_WINDOW_US / 1_000_000
    )
}

/// A source refused for `reason`, answered as `wire`, counted now under its reason.
fn refuse(hub: &Hub, reason: IngestReason, wire: Wire, detail: impl Into<String>) -> Refusal {
    Refusal::new(reason, wire, detail.into()).counted(&hub.shield.counters, &hub.node)
}

/// An Icecast source refused for `reason`, with the reason's HTTP status, counted now.
fn refuse_http(hub: &Hub, reason: IngestReason, detail: impl Into<String>) -> Refusal {
    refuse(hub, reason, Wire::Http(reason.http_status()), detail)
}

/// The kind of an ingest error, as its reason.
fn reason_of(e: &IngestError) -> IngestReason {
    IngestReason::from(e)
}

/// How a source's connection ends, other than by the source closing it.
pub(super) enum End {
    /// Refused or dropped (already counted under its reason).
    Refused(Refusal),
    /// A newer source took the space over (not an error).
    Replaced,
    /// The space ended (not an error).
    SpaceEnded,
    /// The source sent a close frame (WebSocket).
    Closed,
    /// The speaker was removed from the stage (or left it).
    Removed,
}

impl End {
    /// As the final HTTP answer of an Icecast source: status, reason phrase, body.
    fn http(&self) -> (u16, &'static str, String) {
        match self {
            End::Refused(r) => (r.status(), r.phrase(), format!("{}\n", r.detail)),
            End::Replaced => (
                409,
                "Conflict",
                "replaced by a newer source for this space\n".into(),
            ),
            End::SpaceEnded | End::Closed => (410, "Gone", "this space has ended\n".into()),
            End::Removed => (
                403,
                "Forbidden",
                "no longer a speaker of this space\n".into(),
            ),
        }
    }

    /// As the close frame of a WebSocket source: code and reason.
    pub(super) fn close(&self) -> (u16, String) {
        match self {
            End::Refused(r) => match r.wire {
                Wire::Close(code) => (code, r.detail.to_string()),
                _ => (wsframe::CLOSE_POLICY, r.detail.to_string()),
            },
            End::Replaced => (
                wsframe::CLOSE_POLICY,
                "replaced by a newer source for this space".into(),
            ),
            End::SpaceEnded => (wsframe::CLOSE_GOING_AWAY, "this space has ended".into()),
            End::Closed => (wsframe::CLOSE_NORMAL, String::new()),
            End::Removed => (
                wsframe::CLOSE_POLICY,
                "no longer a speaker of this space".into(),
            ),
        }
    }
}

/// A source's claim on its space: taken at its first valid audio packet, so that a connection
/// that never sends valid audio (bad input, a probe with the right key) replaces nobody.
#[derive(Default)]
pub(super) struct Claim(Option<u64>);

impl Claim {
    /// Takes the space over if not done yet (cluster-wide when the node is in one).
    fn take(&mut self, hub: &Hub, space: &Arc<Space>) {
        if self.0.is_none() {
            self.0 = Some(space.track.new_source());
            space.counters.sources.fetch_add(1, Relaxed);
            if let Some(c) = hub.cluster.get() {
                c.claim(space);
            }
            if let Some(r) = hub.recorder.get() {
                r.record(space);
            }
        }
    }
    /// True once a newer source took the space over.
    fn lost(&self, space: &Space) -> bool {
        self.0.is_some_and(|g| !space.track.is_current_source(g))
    }
    /// The source leaves: seal its pending audio if it still holds the space.
    fn release(&self, space: &Space) {
        if self.0.is_some_and(|g| space.track.is_current_source(g)) {
            space.track.flush();
        }
    }
}

/// Why a source lost its claim: the space ended (which takes every claim), or a newer source.
fn replaced_or_ended(space: &Space) -> End {
    if space.state() == SpaceState::Ended {
        End::SpaceEnded
    } else {
        End::Replaced
    }
}

/// Publishes a host's batch: to the stage's mixer while speakers are connected, else to the
/// space as it is (making it live). Returns false if the space ended.
pub(crate) fn publish(hub: &Hub, space: &Space, packets: &mut Vec<AudioPacket>) -> bool {
    if packets.is_empty() {
        return true;
    }
    if space.stage.feed_host(packets) {
        packets.clear();
        return space.state() != SpaceState::Ended;
    }
    publish_direct(hub, space, packets)
}

/// Publishes a batch to the space's track, making it live. Returns false if the space ended.
fn publish_direct(hub: &Hub, space: &Space, packets: &mut Vec<AudioPacket>) -> bool {
    if packets.is_empty() {
        return true;
    }
    if !space.go_live() {
        return false;
    }
    space
        .counters
        .ingest_packets
        .fetch_add(packets.len() as u64, Relaxed);
    space
        .track
        .publish(std::mem::take(packets), &hub.config.cadence, wall_us());
    true
}

/// The stage's programme goes to the space's track as a source's packets do: the first one
/// makes the space live, records it and claims it in the cluster.
struct StageOut {
    hub: Arc<Hub>,
    space: Arc<Space>,
    started: std::sync::atomic::AtomicBool,
}

impl Programme for StageOut {
    fn publish(&self, packet: AudioPacket) -> bool {
        let (hub, space) = (&self.hub, &self.space);
        if !self.started.swap(true, Relaxed) {
            space.counters.sources.fetch_add(1, Relaxed);
            if let Some(c) = hub.cluster.get() {
                c.claim(space);
            }
            if let Some(r) = hub.recorder.get() {
                r.record(space);
            }
        }
        publish_direct(hub, space, &mut vec![packet])
    }
    fn stage_changed(&self, revision: u32, on_stage: u32, speaking: u32) {
        self.space.track.set_stage(revision, on_stage, speaking);
    }
}

/// Who a source is: the host (who takes the space over), or a speaker (who feeds the mixer).
pub(super) enum Feed {
    Host(Claim, Option<mpsc::Sender<ReturnPacket>>),
    Speaker(Connection),
}

impl Feed {
    /// The host, or the speaker whose key is `key`, connected to the stage (`returns`: where
    /// its mix-minus goes). None: the key opens nothing.
    pub(super) fn open(
        hub: &Arc<Hub>,
        space: &Arc<Space>,
        key: &str,
        returns: Option<mpsc::Sender<ReturnPacket>>,
    ) -> Option<Feed> {
        if space.info.lock().expect("space lock").key_matches(key) {
            space.stage.set_host_returns(returns.clone());
            return Some(Feed::Host(Claim::default(), returns));
        }
        let (id, slot, muted) = space.stage.speaker_by_key(key)?;
        let out = Arc::new(StageOut {
            hub: hub.clone(),
            space: space.clone(),
            started: Default::default(),
        });
        match space.stage.connect(id, slot, muted, returns, out) {
            Ok(c) => Some(Feed::Speaker(c)),
            Err(e) => {
                tracing::error!("speaker not connected: {e}");
                None
            }
        }
    }

    /// Whether a newer source replaced this one (or the space ended).
    pub(super) fn lost(&self, space: &Space) -> bool {
        match self {
            Feed::Host(c, _) => c.lost(space),
            Feed::Speaker(_) => space.state() == SpaceState::Ended,
        }
    }

    /// Delivers a batch; `ws` says how a refusal goes on the wire.
    pub(super) fn deliver(
        &mut self,
        hub: &Hub,
        space: &Arc<Space>,
        packets: &mut Vec<AudioPacket>,
        ws: bool,
    ) -> Result<(), End> {
        match self {
            Feed::Host(claim, _) => {
                if !packets.is_empty() {
                    claim.take(hub, space);
                }
                if publish(hub, space, packets) {
                    Ok(())
                } else {
                    Err(End::SpaceEnded)
                }
            }
            Feed::Speaker(c) => {
                let fed = c.feed(packets);
                packets.clear();
                fed.map_err(|g| match g {
                    Gone::Replaced => End::Replaced,
                    Gone::Removed => End::Removed,
                    Gone::Undecodable(why) => {
                        space.counters.ingest_errors.fetch_add(1, Relaxed);
                        let wire = if ws {
                            Wire::Close(wsframe::CLOSE_INVALID)
                        } else {
                            Wire::Http(IngestReason::BadOpus.http_status())
                        };
                        End::Refused(refuse(hub, IngestReason::BadOpus, wire, why))
                    }
                })
            }
        }
    }

    /// The source leaves.
    pub(super) fn release(&self, space: &Space) {
        match self {
            Feed::Host(c, returns) => {
                c.release(space);
                if let Some(tx) = returns {
                    space.stage.clear_host_returns(tx);
                }
            }
            Feed::Speaker(_) => {}
        }
    }

    pub(super) fn role(&self) -> &'static str {
        match self {
            Feed::Host(..) => "host",
            Feed::Speaker(_) => "speaker",
        }
    }
}

/// Icecast-compatible source: `PUT /live/{id}.ogg` (with `Expect: 100-continue`, as ffmpeg
/// sends) or legacy `SOURCE`, Basic auth `source:<host key>`, body Ogg/Opus until the
/// connection closes.
pub async fn icecast(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head: Head,
    rest: Bytes,
) {
    let password = basic_password(head.header("authorization")).unwrap_or_default();
    let known = space
        .info
        .lock()
        .expect("space lock")
        .key_matches(&password)
        || space.stage.speaker_by_key(&password).is_some();
    if !known {
        let r = refuse_http(
            &hub,
            IngestReason::BadKey,
            "publishing needs Basic auth source:<host key> or source:<speaker key>",
        );
        return respond(
            &mut stream,
            r.status(),
            r.phrase(),
            "WWW-Authenticate: Basic realm=\"levee\"\r\n",
            &format!("{}\n", r.detail),
        )
        .await;
    }
    if space.state() == SpaceState::Ended {
        return respond(&mut stream, 410, "Gone", "", "this space has ended\n").await;
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return respond(
            &mut stream,
            501,
            "Not Implemented",
            "",
            "chunked uploads are not supported: send the Ogg stream as a raw body, as Icecast sources do\n",
        )
        .await;
    }
    // The declared type is not trusted (ffmpeg declares audio/mpeg unless told otherwise);
    // the body is validated instead, and the declared type is quoted if the body is not Ogg.
    let declared = head.header("content-type").unwrap_or("none").to_owned();
    let expects_continue = head
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    drop(head);
    // ffmpeg waits for 100 Continue; legacy SOURCE clients wait for 200 OK before sending.
    let go: &[u8] = if expects_continue {
        b"HTTP/1.1 100 Continue\r\n\r\n"
    } else {
        b"HTTP/1.0 200 OK\r\n\r\n"
    };
    if stream.write_all(go).await.is_err() {
        return;
    }
    let Some(mut feed) = Feed::open(&hub, &space, &password, None) else {
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
    tracing::info!(space = %id, %peer, role = feed.role(), "icecast source connected");

    let mut ingest = OggIngest::new();
    let mut pacer = Pacer::new(mono_us(), hub.config.source_burst.as_micros() as u64);
    let mut min_rate = MinRate::new(
        mono_us(),
        MIN_RATE_WINDOW_US,
        hub.config.min_source_realtime,
    );
    let mut packets = Vec::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut first = Some(rest);
    let outcome: Result<(), End> = loop {
        let data: Bytes = match first.take().filter(|r| !r.is_empty()) {
            Some(r) => r,
            None => {
                buf.clear();
                buf.reserve(READ_CHUNK);
                match tokio::time::timeout(
                    hub.config.source_idle_timeout,
                    stream.read_buf(&mut buf),
                )
                .await
                {
                    Ok(Ok(0)) => break Ok(()),
                    Ok(Ok(_)) => buf.split().freeze(),
                    Ok(Err(_)) => break Ok(()),
                    Err(_) => {
                        break Err(End::Refused(refuse_http(
                            &hub,
                            IngestReason::Idle,
                            format!(
                                "no data for {:?}; source dropped",
                                hub.config.source_idle_timeout
                            ),
                        )));
                    }
                }
            }
        };
        if feed.lost(&space) {
            break Err(replaced_or_ended(&space));
        }
        if let Err(e) = ingest.push(&data, wall_us(), &mut packets) {
            let reason = reason_of(&e);
            space.counters.ingest_errors.fetch_add(1, Relaxed);
            // Packets completed before the error were valid: they still reach listeners.
            let _ = feed.deliver(&hub, &space, &mut packets, false);
            let hint = if reason == IngestReason::NotOgg {
                format!(" (declared Content-Type: {declared}); levee takes Ogg/Opus")
            } else {
                String::new()
            };
            break Err(End::Refused(refuse_http(
                &hub,
                reason,
                format!("{e}{hint}"),
            )));
        }
        let samples: u64 = packets.iter().map(|p| p.samples as u64).sum();
        if let Err(end) = feed.deliver(&hub, &space, &mut packets, false) {
            break Err(end);
        }
        if let Err(ratio) = min_rate.record(samples, mono_us()) {
            break Err(End::Refused(refuse_http(
                &hub,
                IngestReason::Idle,
                too_slow(ratio),
            )));
        }
        let wait = pacer.ahead_us(samples, mono_us());
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
    };
    feed.release(&space);
    drop(feed);
    match outcome {
        Ok(()) => {
            tracing::info!(space = %id, %peer, "icecast source ended");
            if expects_continue {
                respond(&mut stream, 200, "OK", "", "stream ended\n").await;
            }
        }
        Err(end) => {
            let (code, reason, body) = end.http();
            tracing::warn!(space = %id, %peer, code, reason = %body.trim(), "icecast source refused");
            if expects_continue {
                respond(&mut stream, code, reason, "", &body).await;
            }
        }
    }
}

async fn close(stream: &mut TcpStream, code: u16, reason: &str) {
    crate::ws::ws_close(stream, code, reason).await;
}

/// The first message a browser host sends: `{"key": "<host key>"}`.
#[derive(serde::Deserialize)]
struct Hello {
    key: String,
}

/// Reads the next whole message; `Err(None)` on EOF or a read error, `Err(Some(refusal))`
/// (not counted yet) on a framing error (`bad_frame`) or when nothing whole came by
/// `deadline` (`idle`). Cancel-safe: bytes read are kept in `dec`.
async fn next_message(
    stream: &mut TcpStream,
    dec: &mut FrameDecoder,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Message, Option<Refusal>> {
    loop {
        match dec.next() {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(e) => {
                let wire = Wire::Close(e.close_code());
                return Err(Some(Refusal::new(
                    IngestReason::BadFrame,
                    wire,
                    e.to_string(),
                )));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
            Ok(Ok(n)) => dec.push(&buf[..n]),
            Err(_) => {
                return Err(Some(Refusal::new(
                    IngestReason::Idle,
                    Wire::Close(wsframe::CLOSE_POLICY),
                    format!("nothing received for {timeout:?}"),
                )))
            }
        }
    }
}

/// The next return packet, or never if there is no return feed.
async fn next_return(rx: &mut Option<mpsc::Receiver<ReturnPacket>>) -> ReturnPacket {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(p) => p,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// How long a return packet may take to write before the speaker counts as not reading.
pub const RETURN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What came first on a WebSocket source: a message, or a return packet to send.
enum Next {
    Message(Result<Message, Option<Refusal>>),
    Return(ReturnPacket),
}

/// Browser (or synthetic) host or speaker: WebSocket `GET /live/{id}/publish`. The first
/// message is a text `{"key": ...}` (the host key or a speaker key); then binary AUDIO
/// messages (see `levee_core::wire`). While speakers are on the stage, the server sends each
/// of them (and the host) AUDIO messages back: the mix of everyone else.
pub async fn websocket(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    space: Arc<Space>,
    rest: Bytes,
) {
    let cfg = &hub.config;
    let mut dec = FrameDecoder::new(cfg.max_ws_ingest_message);
    dec.push(&rest);
    let mut buf = vec![0u8; READ_CHUNK];
    let hello_by = tokio::time::Instant::now() + cfg.header_timeout;
    let hello = match next_message(
        &mut stream,
        &mut dec,
        &mut buf,
        hello_by,
        cfg.header_timeout,
    )
    .await
    {
        Ok(Message::Text(t)) => serde_json::from_str::<Hello>(&t).ok(),
        Ok(_) => None,
        Err(Some(r)) => {
            let (code, why) = End::Refused(r.counted(&hub.shield.counters, &hub.node)).close();
            return close(&mut stream, code, &why).await;
        }
        Err(None) => return,
    };
    if space.state() == SpaceState::Ended {
        return close(
            &mut stream,
            wsframe::CLOSE_GOING_AWAY,
            "this space has ended",
        )
        .await;
    }
    let (tx, rx) = mpsc::channel(RETURN_QUEUE);
    let Some(mut feed) = hello.and_then(|h| Feed::open(&hub, &space, &h.key, Some(tx))) else {
        let r = refuse(
            &hub,
            IngestReason::BadKey,
            Wire::Close(wsframe::CLOSE_POLICY),
            "first message must be {\"key\": \"<host key or speaker key>\"} with a key of this space",
        );
        let (code, why) = End::Refused(r).close();
        return close(&mut stream, code, &why).await;
    };
    let mut returns = Some(rx);
    let mut ready = BytesMut::new();
    wsframe::encode_frame(wsframe::OP_TEXT, br#"{"type":"ready"}"#, &mut ready);
    if stream.write_all(&ready).await.is_err() {
        feed.release(&space);
        return;
    }
    let id = space.snapshot().id;
    tracing::info!(space = %id, %peer, role = feed.role(), "websocket source connected");
    let mut pacer = Pacer::new(mono_us(), cfg.source_burst.as_micros() as u64);
    let mut min_rate = MinRate::new(mono_us(), MIN_RATE_WINDOW_US, cfg.min_source_realtime);
    let mut packets = Vec::new();
    let mut return_seq = 0u64;
    let mut out = BytesMut::new();
    let mut idle_by = tokio::time::Instant::now() + cfg.source_idle_timeout;
    let end: Option<End> = loop {
        let next = tokio::select! {
            m = next_message(&mut stream, &mut dec, &mut buf, idle_by, cfg.source_idle_timeout) => Next::Message(m),
            r = next_return(&mut returns) => Next::Return(r),
        };
        let msg = match next {
            Next::Return(r) => {
                out.clear();
                wsframe::encode_header(
                    wsframe::OP_BINARY,
                    wire::AUDIO_HEADER + r.data.len(),
                    &mut out,
                );
                wire::put_audio(&mut out, return_seq, r.capture_us, &r.data);
                return_seq += 1;
                match tokio::time::timeout(RETURN_WRITE_TIMEOUT, stream.write_all(&out)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        let wire = Wire::Close(wsframe::CLOSE_POLICY);
                        let why = "the return audio was not read for 2 s";
                        break Some(End::Refused(refuse(&hub, IngestReason::Idle, wire, why)));
                    }
                }
            }
            Next::Message(Ok(m)) => {
                idle_by = tokio::time::Instant::now() + cfg.source_idle_timeout;
                m
            }
            Next::Message(Err(e)) => {
                break e.map(|r| {
                    space.counters.ingest_errors.fetch_add(1, Relaxed);
                    End::Refused(r.counted(&hub.shield.counters, &hub.node))
                });
            }
        };
        if feed.lost(&space) {
            break Some(replaced_or_ended(&space));
        }
        let packet = match msg {
            Message::Binary(b) => match wire::decode(&b) {
                Ok(WireMessage::Audio {
                    capture_us, packet, ..
                }) => {
                    let now = wall_us();
                    let ts = if now.abs_diff(capture_us) <= MAX_CLOCK_SKEW_US {
                        capture_us
                    } else {
                        now
                    };
                    single_packet(packet, ts)
                }
                Ok(_) => {
                    break Some(End::Refused(refuse(
                        &hub,
                        IngestReason::BadStructure,
                        Wire::Close(wsframe::CLOSE_UNSUPPORTED),
                        "sources send AUDIO messages (kind 0x02) only",
                    )));
                }
                Err(e) => {
                    let wire = Wire::Close(wsframe::CLOSE_INVALID);
                    break Some(End::Refused(refuse(
                        &hub,
                        IngestReason::BadFrame,
                        wire,
                        e.to_string(),
                    )));
                }
            },
            Message::Ping(p) => {
                out.clear();
                wsframe::encode_frame(wsframe::OP_PONG, &p, &mut out);
                if stream.write_all(&out).await.is_err() {
                    break None;
                }
                continue;
            }
            Message::Close(..) => break Some(End::Closed),
            Message::Text(_) | Message::Pong => {
                if let Err(ratio) = min_rate.record(0, mono_us()) {
                    let wire = Wire::Close(wsframe::CLOSE_POLICY);
                    let r = refuse(&hub, IngestReason::Idle, wire, too_slow(ratio));
                    break Some(End::Refused(r));
                }
                continue;
            }
        };
        match packet {
            Ok(p) => {
                let samples = p.samples as u64;
                packets.push(p);
                if let Err(end) = feed.deliver(&hub, &space, &mut packets, true) {
                    break Some(end);
                }
                if let Err(ratio) = min_rate.record(samples, mono_us()) {
                    let wire = Wire::Close(wsframe::CLOSE_POLICY);
                    let r = refuse(&hub, IngestReason::Idle, wire, too_slow(ratio));
                    break Some(End::Refused(r));
                }
                let wait = pacer.ahead_us(samples, mono_us());
                if wait > 0 {
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                }
            }
            Err(e) => {
                space.counters.ingest_errors.fetch_add(1, Relaxed);
                let wire = Wire::Close(wsframe::CLOSE_INVALID);
                break Some(End::Refused(refuse(
                    &hub,
                    reason_of(&e),
                    wire,
                    e.to_string(),
                )));
            }
        }
    };
    feed.release(&space);
    drop(feed);
    let end = end.map(|e| e.close());
    tracing::info!(space = %id, %peer, reason = ?end, "websocket source ended");
    if let Some((code, why)) = end {
        close(&mut stream, code, &why).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_password_is_extracted() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("source:s3cret:x")
        );
        assert_eq!(basic_password(Some(&h)).as_deref(), Some("s3cret:x"));
        assert_eq!(basic_password(Some("Bearer abc")), None);
        assert_eq!(basic_password(Some("Basic !!!")), None);
        assert_eq!(basic_password(None), None);
    }
}
