//! Listener endpoints: answer the request, then hand the socket to the fan-out engine.
//!
//! After its response head a listener is no longer a task: it becomes a slot in one of the
//! writer shards (`fanout/`), which writes it the space's shared chunks. See
//! `fanout::shard` for the hot path and its bounds.

use crate::clock::{mono_us, wall_us};
use crate::fanout::shard::Leave;
use crate::fanout::Session;
use crate::fanout::{Format, NewListener};
use crate::http1::respond;
use crate::hub::{Hub, Space};
use crate::ws::ws_close;
use bytes::Bytes;
use levee_core::audience::Departure;
use levee_core::space::SpaceState;
use levee_core::wsframe;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OGG_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nCache-Control: no-cache, no-store\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";

/// Serves a progressive Ogg/Opus listener (`GET /live/{id}.ogg`).
pub async fn ogg<G: Send + 'static>(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head_only: bool,
    guard: G,
    who: Who,
) {
    if space.state() == SpaceState::Ended {
        return respond(&mut stream, 410, "Gone", "", "this space has ended\n").await;
    }
    if stream.write_all(OGG_RESPONSE.as_bytes()).await.is_err() || head_only {
        return;
    }
    hand_over(stream, &hub, &space, Format::Ogg, Bytes::new(), guard, who);
}

/// Serves a WebSocket listener (`GET /live/{id}/ws`, after the 101 answer). `rest` is what
/// the client sent after its request head.
pub async fn ws<G: Send + 'static>(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    rest: Bytes,
    guard: G,
    who: Who,
) {
    if space.state() == SpaceState::Ended {
        return ws_close(
            &mut stream,
            wsframe::CLOSE_GOING_AWAY,
            "this space has ended",
        )
        .await;
    }
    hand_over(stream, &hub, &space, Format::Ws, rest, guard, who);
}

/// Who a listener is, for the audience numbers: its identity's hash and its address.
pub type Who = (u64, std::net::IpAddr);

fn hand_over<G: Send + 'static>(
    stream: TcpStream,
    hub: &Arc<Hub>,
    space: &Arc<Space>,
    format: Format,
    rest: Bytes,
    guard: G,
    (id, ip): Who,
) {
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(hub.config.listener_sndbuf);
    let Ok(conn) = stream.into_std() else {
        return;
    };
    if let Some(c) = hub.cluster.get() {
        c.listen(space);
    }
    hub.fanout.admit(&space.track, format);
    hub.fanout.attach(NewListener {
        track: space.track.clone(),
        conn,
        format,
        rest,
        // From here on it is a listener session (docs/audience.md).
        guard: Box::new(ListenerSession::start(
            guard,
            hub.clone(),
            space.clone(),
            id,
            ip,
        )),
    });
}

/// A listener session as the fan-out engine holds it: the connection's accounting, and what
/// its numbers need (its identity's hash, its address for the ban check, its join time).
pub struct ListenerSession<G: Send> {
    _conn: G,
    hub: Arc<Hub>,
    space: Arc<Space>,
    id: u64,
    ip: IpAddr,
    joined_us: u64,
    viewed: bool,
}

impl<G: Send> ListenerSession<G> {
    /// Counts a session of identity hash `id` from `ip` starting now; `conn` is dropped with
    /// it.
    pub fn start(
        conn: G,
        hub: Arc<Hub>,
        space: Arc<Space>,
        id: u64,
        ip: IpAddr,
    ) -> ListenerSession<G> {
        let joined_us = wall_us();
        space.audience.join(joined_us);
        ListenerSession {
            _conn: conn,
            hub,
            space,
            id,
            ip,
            joined_us,
            viewed: false,
        }
    }

    fn banned(&self) -> bool {
        self.hub.shield.banned(self.ip, mono_us()).is_some()
    }
}

impl<G: Send> Session for ListenerSession<G> {
    fn viewed(&mut self) {
        let banned = self.banned();
        self.viewed = self.space.audience.with(|a| a.view(self.id, banned));
    }

    fn left(&mut self, listened_us: u64, why: Leave) {
        let d = Departure {
            joined_us: self.joined_us,
            listened_us,
            stalled: why == Leave::Stalled,
            banned: self.banned(),
            viewed: self.viewed,
            misbehaved: why == Leave::Refused,
        };
        self.space.audience.with(|a| a.leave(self.id, d));
        // Counted once: a drop after this (or without it) does nothing more.
        self.joined_us = 0;
    }
}

impl<G: Send> Drop for ListenerSession<G> {
    /// A session dropped without [`Session::left`] (its shard went away, or it never reached
    /// one) still leaves the count of open sessions.
    fn drop(&mut self) {
        if self.joined_us != 0 {
            let listened = wall_us().saturating_sub(self.joined_us);
            self.left(listened, Leave::Gone);
        }
    }
}
