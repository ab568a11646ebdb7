//! The control plane: JSON API under `/api/`, `/metrics`, and the web pages, served by hyper
//! with an axum router. Every exchange is bounded: one request per connection (media requests
//! always come back to the front), `max_api_body` bytes of body, `api_timeout` in all.

pub mod audience;
pub mod hls;
pub mod join;
pub mod metrics;
pub mod replay;
pub mod reply;
pub mod spaces;
pub mod stage;
pub mod web;

use crate::http1::Rewind;
use crate::hub::Hub;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use reply::{error, Peer};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tower::ServiceExt;

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
    // `half_close`: a client may shut its sending side once its request is out (`nc -N`,
    // health checkers); without it hyper takes that EOF, read while the handler runs, for an
    // abort and closes without the answer. The exchange stays bounded by `api_timeout`.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .half_close(true)
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
        .route("/", get(|| async { Html(web::LOBBY_HTML) }))
        .route("/space/{id}", get(|| async { Html(web::SPACE_HTML) }))
        .route("/space/{id}/host", get(|| async { Html(web::HOST_HTML) }))
        .route("/space/{id}/speak", get(|| async { Html(web::SPEAK_HTML) }))
        .route(
            "/space/{id}/dashboard",
            get(|| async { Html(web::DASHBOARD_HTML) }),
        )
        .route("/dashboard", get(|| async { Html(web::DASHBOARD_HTML) }))
        .route("/assets/{file}", get(asset))
        .route(
            "/api/spaces",
            get(spaces::list_spaces).post(spaces::create_space),
        )
        .route(
            "/api/spaces/{id}",
            get(spaces::get_space).delete(spaces::end_space),
        )
        .route("/api/spaces/{id}/join", axum::routing::post(join::join))
        .route("/api/spaces/{id}/audience", get(audience::space_audience))
        .route("/api/spaces/{id}/stage", get(stage::stage))
        .route(
            "/api/spaces/{id}/speakers",
            axum::routing::post(stage::invite),
        )
        .route(
            "/api/spaces/{id}/speakers/{speaker_id}",
            axum::routing::patch(stage::patch).delete(stage::remove),
        )
        .route(
            "/api/spaces/{id}/requests",
            axum::routing::post(stage::request),
        )
        .route(
            "/api/spaces/{id}/requests/{request_id}",
            get(stage::request_answer).delete(stage::decline),
        )
        .route("/api/audience", get(audience::node_audience))
        .route("/live/{id}/hls/index.m3u8", get(hls::playlist))
        .route("/live/{id}/hls/{file}", get(hls::file))
        .route("/live/{id}/replay", axum::routing::delete(replay::delete))
        .route("/live/{id}/replay/index.m3u8", get(replay::playlist))
        .route("/live/{id}/replay/{file}", get(replay::file))
        .route("/api/admin/shield", get(join::shield_status))
        .route("/api/admin/audit", get(join::audit_log))
        .route(
            "/api/admin/bans",
            get(join::list_bans)
                .post(join::add_ban)
                .delete(join::remove_ban),
        )
        .route(
            "/api/admin/allow",
            get(join::list_allow)
                .post(join::add_allow)
                .delete(join::remove_allow),
        )
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(hub)
}

async fn asset(Path(file): Path<String>) -> Response {
    match web::asset(&file) {
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
