//! The control plane: JSON API under `/api/`, `/metrics`, and the web pages, served by hyper
//! with an axum router. Every exchange is bounded: one request per connection (media requests
//! always come back to the front), `max_api_body` bytes of body, `api_timeout` in all.

use crate::fanout::Format;
use crate::front::Rewind;
use crate::hub::{CreateError, Hub, Space};
use crate::metrics;
use crate::shield::{Access, Shield};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use levee_core::space::{NewSpace, SpaceState};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpStream;
use tower::ServiceExt;

/// The socket address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves one request on a connection whose head the front already read (`pre`).
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    pre: Bytes,
    hub: Arc<Hub>,
    router: Router,
) {
    let io = TokioIo::new(Rewind::new(pre, stream));
    let svc = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        req
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(hub.config.max_head_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(hub.config.header_timeout)
        .serve_connection(io, TowerToHyperService::new(svc));
    let _ = tokio::time::timeout(hub.config.api_timeout, conn).await;
}

/// The router for everything that is not a media stream.
pub fn router(hub: Arc<Hub>) -> Router {
    let max_body = hub.config.max_api_body;
    Router::new()
        .route("/", get(|| async { Html(crate::web::LOBBY_HTML) }))
        .route(
            "/space/{id}",
            get(|| async { Html(crate::web::SPACE_HTML) }),
        )
        .route(
            "/space/{id}/host",
            get(|| async { Html(crate::web::HOST_HTML) }),
        )
        .route("/assets/{file}", get(asset))
        .route("/api/spaces", get(list_spaces).post(create_space))
        .route("/api/spaces/{id}", get(get_space).delete(end_space))
        .route(
            "/api/spaces/{id}/join",
            axum::routing::post(crate::join::join),
        )
        .route("/api/admin/shield", get(crate::join::shield_status))
        .route(
            "/api/admin/bans",
            get(crate::join::list_bans)
                .post(crate::join::add_ban)
                .delete(crate::join::remove_ban),
        )
        .route(
            "/api/admin/allow",
            get(crate::join::list_allow)
                .post(crate::join::add_allow)
                .delete(crate::join::remove_allow),
        )
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(hub)
}

/// A JSON error answer `{"error": msg}`.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match crate::web::asset(&file) {
        Some((mime, body)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no asset '{file}'")),
    }
}

async fn metrics_text(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&hub),
    )
        .into_response()
}

/// The base of absolute URLs: `--public-url`, else the request's `Host`, else the listen address.
pub fn base_url(hub: &Hub, headers: &HeaderMap) -> (String, String) {
    if let Some(u) = &hub.config.public_url {
        let u = u.trim_end_matches('/').to_owned();
        let authority = u
            .split_once("://")
            .map_or(u.as_str(), |(_, a)| a)
            .to_owned();
        return (u, authority);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| hub.config.listen.to_string());
    (format!("http://{host}"), host)
}

fn space_json(space: &Space, base: &str, authority: &str, with_key: bool) -> Value {
    let info = space.snapshot();
    let id = &info.id;
    let ws_base = base.replacen("http", "ws", 1);
    let mut urls = json!({
        "ogg": format!("{base}/live/{id}.ogg"),
        "ws": format!("{ws_base}/live/{id}/ws"),
        "publish": format!("{ws_base}/live/{id}/publish"),
        "page": format!("{base}/space/{id}"),
        "host_page": format!("{base}/space/{id}/host"),
        "join": format!("{base}/api/spaces/{id}/join"),
    });
    let mut v = json!({
        "id": id,
        "title": info.title,
        "state": info.state.as_str(),
        "scheduled_start": info.scheduled_start,
        "created_at": info.created_at,
        "listeners": space.track.listeners(),
        "listeners_by_format": {
            "ogg": space.track.counters.listeners[Format::Ogg.idx()].load(Relaxed),
            "ws": space.track.counters.listeners[Format::Ws.idx()].load(Relaxed),
        },
        "access": Shield::load_access(&space.shield.access).as_str(),
        "queue_waiting": space.shield.line.lock().expect("line lock").waiting(),
    });
    if with_key {
        urls["source"] = json!(format!(
            "icecast://source:{}@{authority}/live/{id}.ogg",
            info.host_key
        ));
        v["host_key"] = json!(info.host_key);
    }
    v["urls"] = urls;
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    title: String,
    #[serde(default)]
    scheduled_start: Option<u64>,
    #[serde(default)]
    access: Option<String>,
}

async fn create_space(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Result<Json<CreateReq>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(rej) => return error(rej.status(), rej.body_text()),
    };
    let new = match (NewSpace {
        title: req.title.clone(),
        scheduled_start: req.scheduled_start,
    })
    .validate()
    {
        Ok(n) => n,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let access = match req.access.as_deref().map(Access::parse) {
        None => Access::Open,
        Some(Some(a)) => a,
        Some(None) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "access must be \"open\", \"ticketed\" or \"challenge\"",
            )
        }
    };
    match hub.create(new, access, None) {
        Ok(space) => {
            let (base, authority) = base_url(&hub, &headers);
            (
                StatusCode::CREATED,
                Json(space_json(&space, &base, &authority, true)),
            )
                .into_response()
        }
        Err(CreateError::Full(n)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node holds its maximum of {n} spaces"),
        ),
        Err(CreateError::Taken) => error(StatusCode::CONFLICT, "space id already taken"),
    }
}

async fn list_spaces(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let (base, authority) = base_url(&hub, &headers);
    let spaces: Vec<Value> = hub
        .list()
        .iter()
        .map(|s| space_json(s, &base, &authority, false))
        .collect();
    Json(json!({ "spaces": spaces })).into_response()
}

async fn get_space(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match hub.get(&id) {
        Some(space) => {
            let (base, authority) = base_url(&hub, &headers);
            Json(space_json(&space, &base, &authority, false)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no space '{id}'")),
    }
}

async fn end_space(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(space) = hub.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no space '{id}'"));
    };
    let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "ending a space needs Authorization: Bearer <host key>",
        );
    };
    if !space
        .info
        .lock()
        .expect("space lock")
        .key_matches(key.trim())
    {
        return error(StatusCode::FORBIDDEN, "wrong host key for this space");
    }
    if space.state() != SpaceState::Ended {
        hub.end(&space);
        tracing::info!(space = %id, "space ended by its host");
    }
    let (base, authority) = base_url(&hub, &headers);
    Json(space_json(&space, &base, &authority, false)).into_response()
}
