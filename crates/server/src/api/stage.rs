//! The stage API (`docs/protocol.md`, "The stage"):
//!
//! - `POST /api/spaces/{id}/speakers` (host or co-host key) `{"name", "role"?}` or
//!   `{"request_id"}` (accepting a request to speak): `201` with `speaker_id`, its `key` and
//!   `urls` (`publish`, `source`).
//! - `PATCH /api/spaces/{id}/speakers/{speaker_id}` `{"muted": bool}` (the host, a co-host, or
//!   the speaker themselves); `DELETE` removes (or, with the speaker's own key, leaves).
//! - `GET /api/spaces/{id}/stage`: who is on stage, muted and speaking; with a manager's key,
//!   the requests to speak too.
//! - `POST /api/spaces/{id}/requests` `{"name"}`: a listener asks to speak, gets a
//!   `request_id` and a `token`; `GET /api/spaces/{id}/requests/{request_id}` with
//!   `Authorization: Bearer <token>` reads the answer (an accepted request's speaker key,
//!   once); `DELETE` with a manager's key declines.

// The helpers answer `Err(response)` that the handlers return at once: never kept or moved.
#![allow(clippy::result_large_err)]

use super::reply::{base_url, bearer, error, Peer};
use crate::hub::{Hub, Space};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_core::space::{hex, key_hash, SpaceState};
use levee_core::stage::{Actor, Answer, MutedBy, Role, Speaker, StageError, HOST_SLOT};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Who calls, by the key they present.
enum Who {
    Host,
    Speaker(String, Role),
}

impl Who {
    fn actor(&self) -> Actor<'_> {
        match self {
            Who::Host => Actor::Host,
            Who::Speaker(id, role) => Actor::Speaker(id, *role),
        }
    }
}

/// The caller by their `Authorization: Bearer` key: the host or a speaker of this space.
fn who(space: &Space, headers: &HeaderMap) -> Result<Who, Response> {
    let Some(key) = bearer(headers).map(str::trim) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "the stage needs Authorization: Bearer <host key or speaker key>",
        ));
    };
    if space.info.lock().expect("space lock").key_matches(key) {
        return Ok(Who::Host);
    }
    let h = key_hash(key);
    match space.stage.roster().by_key(&h) {
        Some(s) => Ok(Who::Speaker(s.id.clone(), s.role)),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "neither the host key nor a speaker key of this space",
        )),
    }
}

fn stage_error(e: StageError) -> Response {
    let status = match e {
        StageError::Full | StageError::TooManyRequests => StatusCode::CONFLICT,
        StageError::TooManyFromSource => StatusCode::TOO_MANY_REQUESTS,
        StageError::BadName(_) => StatusCode::UNPROCESSABLE_ENTITY,
        StageError::NotFound => StatusCode::NOT_FOUND,
        StageError::Forbidden(_) => StatusCode::FORBIDDEN,
        StageError::Answered => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

async fn find(hub: &Hub, id: &str) -> Result<Arc<Space>, Response> {
    hub.find(id)
        .await
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no space '{id}'")))
}

/// The space and who calls it (by their key).
async fn caller(hub: &Hub, id: &str, headers: &HeaderMap) -> Result<(Arc<Space>, Who), Response> {
    let space = find(hub, id).await?;
    let who = who(&space, headers)?;
    Ok((space, who))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    b.map(|Json(t)| t)
        .map_err(|rej| error(rej.status(), rej.body_text()))
}

/// Tells the space's listeners that the stage changed (a STAGE message in the stream).
fn announce(space: &Space) {
    let revision = space.stage.roster().revision();
    space
        .track
        .set_stage(revision, space.stage.on_stage(), space.stage.speaking());
}

fn speaker_json(s: &Speaker, on_stage: u32, speaking: u32) -> Value {
    let bit = 1u32 << s.slot;
    json!({
        "speaker_id": s.id,
        "name": s.name,
        "role": s.role.as_str(),
        "slot": s.slot,
        "muted": s.muted.is_some(),
        "muted_by": s.muted.map(|m| match m { MutedBy::Host => "host", MutedBy::Itself => "speaker" }),
        "on_stage": on_stage & bit != 0,
        "speaking": speaking & bit != 0,
        "invited_at_unix": s.invited_us / 1_000_000,
    })
}

/// A new speaker's answer: its id, key and ready URLs.
fn invited_json(hub: &Hub, headers: &HeaderMap, space: &Space, s: &Speaker, key: &str) -> Value {
    let (base, authority) = base_url(hub, headers);
    let id = space.snapshot().id;
    let ws_base = base.replacen("http", "ws", 1);
    let mut v = speaker_json(s, 0, 0);
    v["key"] = json!(key);
    v["urls"] = json!({
        "whip": format!("{base}/live/{id}/whip"),
        "page": format!("{base}/space/{id}/speak#key={key}&id={}", s.id),
        "publish": format!("{ws_base}/live/{id}/publish"),
        "source": format!("icecast://source:{key}@{authority}/live/{id}.ogg"),
        "stage": format!("{base}/api/spaces/{id}/stage"),
        "speaker": format!("{base}/api/spaces/{id}/speakers/{}", s.id),
    });
    v
}

fn new_key() -> (String, [u8; 32]) {
    let key = hex(&crate::random::bytes::<16>());
    let h = key_hash(&key);
    (key, h)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", hex(&crate::random::bytes::<6>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteReq {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

pub(super) async fn invite(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Result<Json<InviteReq>, JsonRejection>,
) -> Response {
    let (space, who) = match caller(&hub, &id, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req = match body(req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if space.state() == SpaceState::Ended {
        return error(StatusCode::GONE, "this space has ended");
    }
    let role = match req.role.as_deref().map(Role::parse) {
        None => Role::Speaker,
        Some(Some(r)) => r,
        Some(None) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "role must be \"speaker\" or \"cohost\"",
            )
        }
    };
    let (key, h) = new_key();
    let now = crate::clock::wall_us();
    let made = {
        let mut roster = space.stage.roster();
        let made =
            match (&req.request_id, &req.name) {
                (Some(rid), None) => {
                    roster.accept(who.actor(), rid, new_id("sp-"), key.clone(), h, now)
                }
                (None, Some(name)) => roster.invite(who.actor(), name, role, new_id("sp-"), h, now),
                _ => return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "give a \"name\" to invite, or a \"request_id\" to accept a request to speak",
                ),
            };
        made.cloned()
    };
    match made {
        Ok(s) => {
            tracing::info!(space = %id, speaker = %s.id, "speaker invited");
            announce(&space);
            (
                StatusCode::CREATED,
                Json(invited_json(&hub, &headers, &space, &s, &key)),
            )
                .into_response()
        }
        Err(e) => stage_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchReq {
    muted: bool,
}

pub(super) async fn patch(
    State(hub): State<Arc<Hub>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    req: Result<Json<PatchReq>, JsonRejection>,
) -> Response {
    let (space, who) = match caller(&hub, &id, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req = match body(req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let done = {
        let mut roster = space.stage.roster();
        roster
            .set_muted(who.actor(), &sid, req.muted)
            .map(|()| roster.get(&sid).cloned().expect("just muted"))
    };
    match done {
        Ok(s) => {
            space.stage.apply_mute(s.slot, s.muted.is_some());
            announce(&space);
            Json(speaker_json(
                &s,
                space.stage.on_stage(),
                space.stage.speaking(),
            ))
            .into_response()
        }
        Err(e) => stage_error(e),
    }
}

pub(super) async fn remove(
    State(hub): State<Arc<Hub>>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (space, who) = match caller(&hub, &id, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let removed = space.stage.roster().remove(who.actor(), &sid);
    match removed {
        Ok(slot) => {
            space.stage.close_slot(slot);
            announce(&space);
            tracing::info!(space = %id, speaker = %sid, "speaker removed");
            Json(json!({ "speaker_id": sid, "removed": true })).into_response()
        }
        Err(e) => stage_error(e),
    }
}

pub(super) async fn stage(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let space = match find(&hub, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Requests to speak (names of listeners) are shown to those who answer them only.
    let manager = bearer(&headers).is_some()
        && matches!(
            who(&space, &headers),
            Ok(Who::Host | Who::Speaker(_, Role::Cohost))
        );
    let (on_stage, speaking) = (space.stage.on_stage(), space.stage.speaking());
    let roster = space.stage.roster();
    let speakers: Vec<Value> = roster
        .speakers()
        .iter()
        .map(|s| speaker_json(s, on_stage, speaking))
        .collect();
    let host_bit = 1u32 << HOST_SLOT;
    let mut v = json!({
        "revision": roster.revision(),
        "mixing": space.stage.mixing(),
        "host": {
            "slot": HOST_SLOT,
            "in_mix": on_stage & host_bit != 0,
            "speaking": speaking & host_bit != 0,
        },
        "speakers": speakers,
        "max_speakers": levee_core::stage::MAX_SPEAKERS,
    });
    if manager {
        let requests: Vec<Value> = roster
            .requests()
            .map(|r| {
                json!({
                    "request_id": r.id,
                    "name": r.name,
                    "at_unix": r.at_us / 1_000_000,
                    "answer": answer_str(&r.answer),
                })
            })
            .collect();
        v["requests"] = json!(requests);
    }
    Json(v).into_response()
}

fn answer_str(a: &Answer) -> &'static str {
    match a {
        Answer::Waiting => "waiting",
        Answer::Accepted { .. } => "accepted",
        Answer::Declined => "declined",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestReq {
    name: String,
}

pub(super) async fn request(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Result<Json<RequestReq>, JsonRejection>,
) -> Response {
    let space = match find(&hub, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req = match body(req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if space.state() == SpaceState::Ended {
        return error(StatusCode::GONE, "this space has ended");
    }
    let (token, h) = new_key();
    let rid = new_id("rq-");
    let made = space
        .stage
        .roster()
        .request(
            &req.name,
            rid.clone(),
            h,
            levee_core::source::keys(peer.ip()).0 .0,
            crate::clock::wall_us(),
        )
        .map(|_| ());
    match made {
        Ok(()) => {
            announce(&space);
            (
                StatusCode::CREATED,
                Json(json!({ "request_id": rid, "token": token, "answer": "waiting" })),
            )
                .into_response()
        }
        Err(e) => stage_error(e),
    }
}

pub(super) async fn request_answer(
    State(hub): State<Arc<Hub>>,
    Path((id, rid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let space = match find(&hub, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(token) = bearer(&headers).map(str::trim) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "reading an answer needs Authorization: Bearer <request token>",
        );
    };
    let answer = space.stage.roster().collect(&rid, &key_hash(token));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return stage_error(e),
    };
    let mut v = json!({ "request_id": rid, "answer": answer_str(&answer) });
    if let Answer::Accepted { speaker_id, key } = answer {
        v["speaker_id"] = json!(speaker_id);
        match key {
            Some(key) => {
                let s = space.stage.roster().get(&speaker_id).cloned();
                if let Some(s) = s {
                    let invited = invited_json(&hub, &headers, &space, &s, &key);
                    v["key"] = invited["key"].clone();
                    v["urls"] = invited["urls"].clone();
                }
            }
            None => v["key_collected"] = json!(true),
        }
    }
    Json(v).into_response()
}

pub(super) async fn decline(
    State(hub): State<Arc<Hub>>,
    Path((id, rid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (space, who) = match caller(&hub, &id, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let declined = space.stage.roster().decline(who.actor(), &rid);
    match declined {
        Ok(()) => {
            announce(&space);
            Json(json!({ "request_id": rid, "answer": "declined" })).into_response()
        }
        Err(e) => stage_error(e),
    }
}
