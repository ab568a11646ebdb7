//! The spaces API: create, list, show and end spaces.

use super::reply::{base_url, error};
use crate::fanout::Format;
use crate::hub::{CreateError, Hub, Space};
use crate::shield::{Access, Shield};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_core::space::{NewSpace, SpaceState};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

fn space_json(space: &Space, base: &str, authority: &str, with_key: bool) -> Value {
    let info = space.snapshot();
    let id = &info.id;
    let ws_base = base.replacen("http", "ws", 1);
    let mut urls = json!({
        "ogg": format!("{base}/live/{id}.ogg"),
        "ws": format!("{ws_base}/live/{id}/ws"),
        "hls": format!("{base}/live/{id}/hls/index.m3u8"),
        "replay": format!("{base}/live/{id}/replay/index.m3u8"),
        "publish": format!("{ws_base}/live/{id}/publish"),
        "page": format!("{base}/space/{id}"),
        "host_page": format!("{base}/space/{id}/host"),
        "join": format!("{base}/api/spaces/{id}/join"),
        "audience": format!("{base}/api/spaces/{id}/audience"),
        "dashboard": format!("{base}/space/{id}/dashboard"),
    });
    let mut v = json!({
        "id": id,
        "title": info.title,
        "state": info.state.as_str(),
        "scheduled_start": info.scheduled_start,
        "created_at": info.created_at,
        "listeners": space.cluster_listeners(),
        "listeners_here": space.track.listeners(),
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
pub(super) struct CreateReq {
    title: String,
    #[serde(default)]
    scheduled_start: Option<u64>,
    #[serde(default)]
    access: Option<String>,
}

pub(super) async fn create_space(
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
    match hub.create_registered(new, access).await {
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
        Err(CreateError::Registry(why)) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

pub(super) async fn list_spaces(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let (base, authority) = base_url(&hub, &headers);
    let spaces: Vec<Value> = hub
        .list()
        .iter()
        .map(|s| space_json(s, &base, &authority, false))
        .collect();
    Json(json!({ "spaces": spaces })).into_response()
}

pub(super) async fn get_space(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match hub.find(&id).await {
        Some(space) => {
            let (base, authority) = base_url(&hub, &headers);
            Json(space_json(&space, &base, &authority, false)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no space '{id}'")),
    }
}

pub(super) async fn end_space(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(space) = hub.find(&id).await else {
        return error(StatusCode::NOT_FOUND, format!("no space '{id}'"));
    };
    let Some(key) = super::reply::bearer(&headers) else {
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
