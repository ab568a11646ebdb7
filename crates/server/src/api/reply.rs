//! What every API handler shares: the caller's address, JSON errors, absolute URLs.

use crate::hub::Hub;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::SocketAddr;

/// The socket address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A JSON error answer `{"error": msg}`.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
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
