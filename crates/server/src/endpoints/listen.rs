//! Listener endpoints: answer the request, then hand the socket to the fan-out engine.
//!
//! After its response head a listener is no longer a task: it becomes a slot in one of the
//! writer shards (`fanout/`), which writes it the space's shared chunks. See
//! `fanout::shard` for the hot path and its bounds.

use crate::audience::ListenerSession;
use crate::fanout::{Format, NewListener};
use crate::http1::respond;
use crate::hub::{Hub, Space};
use crate::ws::ws_close;
use bytes::Bytes;
use levee_core::space::SpaceState;
use levee_core::wsframe;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OGG_RESPONSE: &str = "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nCache-Control: no-cache, no-store\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";

/// Serves a progressive Ogg/Opus listener (`GET /live/{id}.ogg`).
pub async fn ogg(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    head_only: bool,
    guard: Box<dyn Send>,
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
pub async fn ws(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    space: Arc<Space>,
    rest: Bytes,
    guard: Box<dyn Send>,
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

fn hand_over(
    stream: TcpStream,
    hub: &Arc<Hub>,
    space: &Arc<Space>,
    format: Format,
    rest: Bytes,
    guard: Box<dyn Send>,
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
