//! The connection front: accept, bound, read the request head, route.
//!
//! Media endpoints (listening and publishing) run on the raw socket after the head: a listener
//! then costs its socket, a cursor and a small task, with no HTTP machinery kept around. Every
//! other request (API, pages, metrics) is handed to hyper with the bytes already read.
//!
//! Bounds: `max_connections` open connections, `max_head_bytes` per request head, and
//! `header_timeout` to send it (slowloris costs at most that long and that many bytes).

use super::{ingest, listen};
use crate::api;
use crate::clock::{mono_us, wall_us};
use crate::http1::{query_param, read_head, respond, Head, HeadError};
use crate::hub::{Hub, Space};
use crate::shield::{Access, ConnKeys, Refusal, ShieldReason, Wire};
use bytes::Bytes;
use levee_core::audience::Identity;
use levee_core::space::is_valid_id;
use levee_core::ticket::Ticket;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Tracks one open connection; gives back its counts when dropped.
struct ConnGuard(Arc<Hub>, ConnKeys);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.node.open_connections.fetch_sub(1, Relaxed);
        self.0.shield.release_connection(self.1.take());
    }
}

/// Accepts connections until the listener fails.
pub async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, router: axum::Router) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or similar: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        hub.node.connections.fetch_add(1, Relaxed);
        let keys = match hub.shield.admit_connection(peer.ip(), mono_us()) {
            Ok(keys) => keys,
            // One write without reading the request (a `429`), or, banned, not even that.
            Err(r) => {
                if let Some(answer) = r.accept_answer() {
                    let _ = stream.try_write(answer.as_bytes());
                }
                continue;
            }
        };
        let open = hub.node.open_connections.fetch_add(1, Relaxed) + 1;
        if open as usize > hub.config.max_connections {
            hub.node.open_connections.fetch_sub(1, Relaxed);
            hub.shield.release_connection(keys);
            hub.node.refused_capacity.fetch_add(1, Relaxed);
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        }
        let guard = ConnGuard(hub.clone(), keys);
        let hub = hub.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            handle(stream, peer, hub, router, guard).await;
        });
    }
}

/// Serves one connection. `guard` gives back its accounting when dropped: here, or by the
/// fan-out engine when the connection became a listener.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    router: axum::Router,
    guard: ConnGuard,
) {
    let cfg = &hub.config;
    let read = tokio::time::timeout(
        cfg.header_timeout,
        read_head(&mut stream, cfg.max_head_bytes),
    );
    let (head, buf, head_len) = match read.await {
        Ok(Ok(v)) => v,
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            hub.node.bad_requests.fetch_add(1, Relaxed);
            let body = format!("request head exceeds {} bytes\n", cfg.max_head_bytes);
            return respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                "",
                &body,
            )
            .await;
        }
        Ok(Err(HeadError::Malformed(why))) => {
            hub.node.bad_requests.fetch_add(1, Relaxed);
            return respond(
                &mut stream,
                400,
                "Bad Request",
                "",
                &format!("malformed request: {why}\n"),
            )
            .await;
        }
        Err(_) => {
            hub.node.bad_requests.fetch_add(1, Relaxed);
            let body = format!(
                "request head not received within {:?}\n",
                cfg.header_timeout
            );
            return respond(&mut stream, 408, "Request Timeout", "", &body).await;
        }
    };
    match route(&head) {
        Route::Media { id, kind } => {
            let Some(space) = named_space(&mut stream, &hub, id).await else {
                return;
            };
            let rest = Bytes::copy_from_slice(&buf[head_len..]);
            drop(buf);
            media(stream, peer, hub, space, head, rest, kind, guard).await
        }
        Route::Whip { id, session } => {
            let Some(space) = named_space(&mut stream, &hub, id).await else {
                return;
            };
            let session = session.map(str::to_owned);
            let rest = Bytes::copy_from_slice(&buf[head_len..]);
            drop(buf);
            whip_route(stream, hub, space, head, rest, session).await
        }
        Route::ReplayOgg { id } => {
            let id = id.to_owned();
            drop(buf);
            super::replay::replay_ogg(stream, hub, &id).await
        }
        Route::Api => api::serve_connection(stream, peer, buf.freeze(), hub, router).await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    ListenOgg,
    ListenWs,
    PublishWs,
    PublishIcecast,
}

enum Route<'a> {
    Media {
        id: &'a str,
        kind: MediaKind,
    },
    /// WHIP: `POST /live/{id}/whip`, or `DELETE`/`PATCH` of `/live/{id}/whip/{session}`.
    Whip {
        id: &'a str,
        session: Option<&'a str>,
    },
    /// A recording's Ogg download (the space may be gone from memory: no look-up).
    ReplayOgg {
        id: &'a str,
    },
    Api,
}

fn route(head: &Head) -> Route<'_> {
    let Some(rest) = head.path.strip_prefix("/live/") else {
        return Route::Api;
    };
    let m = head.method.as_str();
    if let Some(id) = rest.strip_suffix("/replay.ogg") {
        if matches!(m, "GET" | "HEAD") && is_valid_id(id) {
            return Route::ReplayOgg { id };
        }
    }
    if let Some(id) = rest.strip_suffix(".ogg").filter(|id| !id.contains('/')) {
        return match m {
            "GET" | "HEAD" => Route::Media {
                id,
                kind: MediaKind::ListenOgg,
            },
            "PUT" | "SOURCE" => Route::Media {
                id,
                kind: MediaKind::PublishIcecast,
            },
            _ => Route::Api,
        };
    }
    if let Some((id, tail)) = rest.split_once('/') {
        if tail == "whip" {
            return Route::Whip { id, session: None };
        }
        if let Some(session) = tail.strip_prefix("whip/") {
            return Route::Whip {
                id,
                session: Some(session),
            };
        }
    }
    match (m, rest.split_once('/')) {
        ("GET", Some((id, "ws"))) if head.is_websocket() => Route::Media {
            id,
            kind: MediaKind::ListenWs,
        },
        ("GET", Some((id, "publish"))) if head.is_websocket() => Route::Media {
            id,
            kind: MediaKind::PublishWs,
        },
        _ => Route::Api,
    }
}

/// The space a media request names, or `None` with a `404` answered.
async fn named_space(stream: &mut TcpStream, hub: &Hub, id: &str) -> Option<Arc<Space>> {
    let found = match is_valid_id(id) {
        true => hub.find(id).await,
        false => None,
    };
    if found.is_none() {
        respond(stream, 404, "Not Found", "", &format!("no space '{id}'\n")).await;
    }
    found
}

/// WHIP's methods: `POST` an offer (its body read here, within `super::whip::MAX_OFFER`), `DELETE`
/// a session, `OPTIONS`; `PATCH` (trickle ICE) is not needed with an ICE-lite server.
async fn whip_route(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head: Head,
    rest: Bytes,
    session: Option<String>,
) {
    match (head.method.as_str(), session.as_deref()) {
        ("POST", None) => {
            let len = head
                .header("content-length")
                .and_then(|l| l.trim().parse::<usize>().ok());
            let Some(len) = len else {
                return respond(&mut stream, 411, "Length Required", "", "a WHIP offer needs Content-Length\n").await;
            };
            if len > super::whip::MAX_OFFER {
                return respond(&mut stream, 413, "Payload Too Large", "", &format!("an offer is at most {} bytes\n", super::whip::MAX_OFFER)).await;
            }
            let mut body = rest.to_vec();
            body.truncate(len);
            let filled = tokio::time::timeout(hub.config.header_timeout, async {
                while body.len() < len {
                    let mut chunk = vec![0u8; len - body.len()];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if filled != Ok(true) {
                return respond(&mut stream, 408, "Request Timeout", "", "the offer did not arrive whole\n").await;
            }
            super::whip::offer(stream, hub, space, head, Bytes::from(body)).await
        }
        ("DELETE", Some(s)) => super::whip::delete(stream, space, head, s).await,
        ("OPTIONS", _) => {
            respond(&mut stream, 204, "No Content", "Accept-Post: application/sdp\r\nAllow: POST, DELETE, OPTIONS\r\n", "").await
        }
        ("PATCH", Some(_)) => {
            respond(&mut stream, 405, "Method Not Allowed", "Allow: DELETE\r\n", "trickle ICE is not needed: the server is ICE-lite and its answer holds its candidate\n").await
        }
        _ => respond(&mut stream, 405, "Method Not Allowed", "Allow: POST, DELETE, OPTIONS\r\n", "WHIP: POST an offer to /live/{id}/whip, DELETE its Location\n").await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn media(
    mut stream: TcpStream,
    peer: SocketAddr,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head: Head,
    rest: Bytes,
    kind: MediaKind,
    guard: ConnGuard,
) {
    let mut who = (0, peer.ip());
    if matches!(kind, MediaKind::ListenOgg | MediaKind::ListenWs) {
        match admit_listener(&hub, &space, &head, peer) {
            Ok(w) => who = w,
            Err(r) => {
                let body = format!("{}\n", r.detail);
                return respond(
                    &mut stream,
                    r.status(),
                    r.phrase(),
                    &r.extra_headers(),
                    &body,
                )
                .await;
            }
        }
    }
    match kind {
        MediaKind::ListenOgg => {
            let head_only = head.method == "HEAD";
            drop(head);
            listen::ogg(stream, hub, space, head_only, guard, who).await
        }
        MediaKind::ListenWs | MediaKind::PublishWs => {
            let Some(key) = head.header("sec-websocket-key").map(str::to_owned) else {
                return respond(
                    &mut stream,
                    400,
                    "Bad Request",
                    "",
                    "missing Sec-WebSocket-Key\n",
                )
                .await;
            };
            if head.header("sec-websocket-version") != Some("13") {
                return respond(
                    &mut stream,
                    426,
                    "Upgrade Required",
                    "Sec-WebSocket-Version: 13\r\n",
                    "WebSocket version 13 required\n",
                )
                .await;
            }
            drop(head);
            let accept = levee_core::wsframe::accept_key(&key);
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            if kind == MediaKind::ListenWs {
                listen::ws(stream, hub, space, rest, guard, who).await
            } else {
                ingest::websocket(stream, peer, hub, space, rest).await
            }
        }
        MediaKind::PublishIcecast => ingest::icecast(stream, peer, hub, space, head, rest).await,
    }
}

/// Checks a listener before any per-listener state exists: ticket (when the space's access
/// asks for one) and capacity (the space's bulkhead, and the node's room kept for hosts). A
/// refusal is counted already; it is answered before the upgrade, as plain HTTP. Admitted,
/// it says who the listener is for the audience numbers: the ticket's identity, or its
/// address with its User-Agent (`docs/audience.md`). A stream request without a ticket is a
/// join attempt; one with a ticket finishes the join that got the ticket.
fn admit_listener(
    hub: &Hub,
    space: &Space,
    head: &Head,
    peer: SocketAddr,
) -> Result<listen::Who, Refusal> {
    let shield = &hub.shield;
    let configured = crate::shield::Shield::load_access(&space.shield.access);
    let (access, _) = shield.effective_access(configured, space.shield.difficulty.load(Relaxed));
    let ip = shield.source_ip(peer.ip(), head.header("x-forwarded-for"));
    let source = hub.identity.hash(&Identity::Source {
        ip,
        fingerprint: head.header("user-agent").unwrap_or(""),
    });
    let mut identity = source;
    if access != Access::Open {
        let now_s = wall_us() / 1_000_000;
        let id = space.info.lock().expect("space lock").id.clone();
        let token = query_param(head.query.as_deref(), "ticket").unwrap_or("");
        match Ticket::verify(&shield.signer, token, &id, ip, now_s) {
            Ok(t) => identity = hub.identity.hash(&Identity::Ticket(t.listener)),
            Err(e) => {
                let why = if token.is_empty() {
                    "this space needs a ticket: POST /api/spaces/{id}/join".to_owned()
                } else {
                    e.to_string()
                };
                space.audience.with(|a| a.refuse_automated(source));
                let wire = Wire::Http(403);
                return Err(shield.offence(ip, ShieldReason::Ticket, wire, why, mono_us()));
            }
        }
    } else {
        space.audience.with(|a| a.attempt());
    }
    let full = |r: Refusal| {
        space.audience.with(|a| a.refuse());
        r
    };
    if space.cluster_listeners() as usize >= hub.config.max_listeners_per_space {
        return Err(full(shield.refuse(
            ShieldReason::SpaceFull,
            Wire::Http(503),
            "this space is full: try again shortly",
        )));
    }
    let node_room = hub
        .config
        .max_connections
        .saturating_sub(hub.config.ingest_reserve);
    if hub.total_listeners() as usize >= node_room {
        return Err(full(shield.refuse(
            ShieldReason::NodeFull,
            Wire::Http(503),
            "this node is full: try again shortly",
        )));
    }
    Ok((identity, ip))
}
