//! LL-HLS of a space (`/live/{id}/hls/…`, `docs/protocol.md`, "HLS"): the playlist with
//! blocking reload, the init segment, parts and segments, packaged once per space
//! ([`levee_core::hls`]) and served from memory.
//!
//! Every wait is bounded: a blocking playlist reload waits at most [`BLOCK_FOR`] (then 503), a
//! part or segment about to be sealed at most [`SOON_FOR`] (then 404); a request too far ahead
//! is refused at once (400 for a playlist, 404 for media), one that left the window answers
//! 410. Media answers are immutable and cacheable for a day; playlists for a second (a blocking
//! reload's answer, which names one state of the playlist, for [`BLOCKED_MAX_AGE_S`]).

use super::reply::{error, Peer};
use crate::hub::{Hub, Space};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use levee_core::hls::{self, File, Hls, Lookup};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Longest a blocking playlist reload waits (three target durations).
pub const BLOCK_FOR: Duration = Duration::from_secs(3 * hls::TARGET_DURATION_S);
/// Longest a request for a part or segment that is about to be sealed waits (a segment's
/// span and a margin).
pub const SOON_FOR: Duration = Duration::from_millis(1_500);
/// `max-age` of a blocking reload's answer, s.
pub const BLOCKED_MAX_AGE_S: u64 = 6;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const MEDIA_TYPE: &str = "audio/mp4";
const IMMUTABLE: &str = "public, max-age=86400, immutable";

/// HLS of an open space is public: players on any site (and caches) may read it.
fn public(r: &mut Response) {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

async fn space_of(hub: &Hub, id: &str) -> Result<Arc<Space>, Response> {
    let space = hub
        .find(id)
        .await
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no space '{id}'")))?;
    // A ticket admits one listener; HLS is cached and shared, so it carries open spaces only.
    let access = crate::shield::Shield::load_access(&space.shield.access);
    if access != crate::shield::Access::Open {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "this space is {}: HLS is served for open spaces only",
                access.as_str()
            ),
        ));
    }
    space.track.hls_requested();
    if let Some(c) = hub.cluster.get() {
        // An edge hears the space from the bus while its HLS is read.
        c.listen(&space);
    }
    Ok(space)
}

/// Counts an HLS request toward its listener session (`docs/audience.md`): the session is the
/// player's identity (its address and User-Agent), with the playlist URL's `session`
/// parameter when it carries one (players on one address keep apart). Behind a cache the
/// origin sees the cache's requests: its sessions are the cache's, unless the cache is a
/// trusted proxy whose `X-Forwarded-For` names the player.
fn session(
    hub: &Hub,
    space: &Space,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    media: bool,
) {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let ip = hub.shield.source_ip(peer.ip(), text("x-forwarded-for"));
    let id = hub.identity.hash(&levee_core::audience::Identity::Source {
        ip,
        fingerprint: text("user-agent").unwrap_or(""),
    });
    let token = crate::http1::query_param(query, "session")
        .filter(|t| !t.is_empty() && t.len() <= crate::audience::MAX_HLS_SESSION_TOKEN)
        .map(|t| {
            hub.identity.hash(&levee_core::audience::Identity::Source {
                ip: std::net::IpAddr::from([0, 0, 0, 0]),
                fingerprint: t,
            }) | 1
        });
    space.audience.hls_request(
        &hub.shield,
        &hub.node,
        id,
        token,
        ip,
        media,
        crate::clock::wall_us(),
    );
}

/// Waits until `ready` holds for the space's packaging or `bound` passes; returns whether it
/// held.
async fn wait_for(space: &Space, bound: Duration, ready: impl Fn(&Hls) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let sealed = space.track.hls_sealed.notified();
        tokio::pin!(sealed);
        sealed.as_mut().enable();
        if space.track.hls(|h, _| ready(h)) {
            return true;
        }
        if tokio::time::timeout_at(deadline, sealed).await.is_err() {
            return space.track.hls(|h, _| ready(h));
        }
    }
}

/// A cacheable answer: `body` of `content_type` with `cache` and the ETag `tag`, or `304`
/// when the request already holds that tag.
fn cached(
    content_type: &'static str,
    body: Bytes,
    cache: &str,
    tag: &str,
    headers: &HeaderMap,
) -> Response {
    let etag = format!("\"{tag}\"");
    let hit = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut r = if hit {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, cache),
        (header::ETAG, etag.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    public(&mut r);
    r
}

fn not_there(status: StatusCode, why: &str) -> Response {
    let mut r = error(status, why);
    // A miss may be there a moment later: caches must not keep it.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    public(&mut r);
    r
}

/// `GET /live/{id}/hls/index.m3u8[?_HLS_msn=M[&_HLS_part=P]]`.
pub(super) async fn playlist(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let space = match space_of(&hub, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    session(&hub, &space, peer, &headers, query.as_deref(), false);
    let blocking = match hls::blocking_params(query.as_deref().unwrap_or("")) {
        Ok(b) => b,
        Err(why) => return not_there(StatusCode::BAD_REQUEST, why),
    };
    let c = &hub.node.hls;
    match blocking {
        Some(_) => c.blocking.fetch_add(1, Relaxed),
        None => c.playlist.fetch_add(1, Relaxed),
    };
    if let Some((msn, part)) = blocking {
        if space.track.hls(|h, _| h.too_far(msn)) {
            return not_there(
                StatusCode::BAD_REQUEST,
                "_HLS_msn is more than two segments ahead of the live edge",
            );
        }
        let ready = |h: &Hls| h.ended() || h.has(msn, part);
        if !wait_for(&space, BLOCK_FOR, ready).await {
            let mut r = not_there(
                StatusCode::SERVICE_UNAVAILABLE,
                "the part asked for did not come in time (is the space on air?)",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    }
    let (body, tag) = space.track.hls(|h, pl| {
        let tag = match h.last_part() {
            Some((m, p)) => format!("{m}.{p}{}", if h.ended() { "e" } else { "" }),
            None => "empty".to_owned(),
        };
        (pl.clone(), tag)
    });
    let max_age = match blocking {
        Some(_) => format!("public, max-age={BLOCKED_MAX_AGE_S}"),
        None => "public, max-age=1".to_owned(),
    };
    cached(PLAYLIST_TYPE, body, &max_age, &tag, &headers)
}

/// `GET /live/{id}/hls/{file}`.
pub(super) async fn file(
    State(hub): State<Arc<Hub>>,
    Path((id, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let Some(f) = File::parse(&name) else {
        return not_there(StatusCode::NOT_FOUND, "no such HLS file");
    };
    let space = match space_of(&hub, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    session(&hub, &space, peer, &headers, query.as_deref(), true);
    let c = &hub.node.hls;
    match f {
        File::Init => c.init.fetch_add(1, Relaxed),
        File::Part(..) => c.part.fetch_add(1, Relaxed),
        File::Segment(_) => c.segment.fetch_add(1, Relaxed),
    };
    let look = |h: &Hls| match f {
        File::Init => Lookup::Ready(h.init()),
        File::Part(m, p) => h.part(m, p),
        File::Segment(m) => h.segment(m),
    };
    let mut got = space.track.hls(|h, _| look(h));
    if got == Lookup::Soon {
        wait_for(&space, SOON_FOR, |h| look(h) != Lookup::Soon).await;
        got = space.track.hls(|h, _| look(h));
    }
    let etag = f.name();
    match got {
        Lookup::Ready(b) => cached(MEDIA_TYPE, b, IMMUTABLE, &etag, &headers),
        Lookup::Soon | Lookup::Future => not_there(StatusCode::NOT_FOUND, "not made yet"),
        Lookup::Gone => not_there(StatusCode::GONE, "no longer held (or never made)"),
    }
}
