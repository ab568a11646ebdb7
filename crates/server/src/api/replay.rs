//! Replays (`/live/{id}/replay/…`, `docs/protocol.md`, "Replay"): a recorded space, once it
//! ended, as a VOD playlist of its recorded segments ([`crate::recorder`]), served from disk.
//!
//! Every answer is bounded: a recording file is scanned one record at a time
//! ([`crate::recorder::scan_file`]) and its index kept for [`INDEXES`] recordings (a
//! playback asks for each segment; the file is walked again only when it changed), a segment
//! is read alone and checked against its record's CRC before it is served; a damaged record is refused with a reason (the rest of
//! the replay stays served), never passed on.

use super::reply::error;
use crate::hub::Hub;
use crate::recorder;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use levee_core::space::{is_valid_id, SpaceState};
use std::sync::Arc;

/// Recordings whose index is kept (beyond, the oldest is dropped).
pub const INDEXES: usize = 64;

type Index = Arc<Vec<levee_core::recording::Entry>>;

/// What identifies a version of a recording file: its length and modification time.
type Version = (u64, Option<std::time::SystemTime>);

/// Indexes of recordings read back: (id, file version, entries).
static KEPT: std::sync::Mutex<Vec<(String, Version, Index)>> = std::sync::Mutex::new(Vec::new());

/// The entries of `id`'s recording in `dir`, from the kept index while the file is unchanged
/// (same length and modification time).
fn index(id: &str, dir: &std::path::Path) -> Result<Index, String> {
    let meta = std::fs::metadata(dir.join(recorder::SEGMENTS_FILE))
        .map_err(|_| "no recording".to_owned())?;
    let version: Version = (meta.len(), meta.modified().ok());
    {
        let kept = KEPT.lock().expect("index lock");
        if let Some((_, _, e)) = kept.iter().find(|(i, v, _)| i == id && *v == version) {
            return Ok(e.clone());
        }
    }
    let (entries, _) = recorder::read_back(dir)?;
    let entries = Arc::new(entries);
    let mut kept = KEPT.lock().expect("index lock");
    kept.retain(|(i, _, _)| i != id);
    if kept.len() >= INDEXES {
        kept.remove(0);
    }
    kept.push((id.to_owned(), version, entries.clone()));
    Ok(entries)
}

/// The directory of `id`'s recording, or the status and reason why there is no replay.
pub(crate) fn replay_dir(hub: &Hub, id: &str) -> Result<std::path::PathBuf, (StatusCode, String)> {
    let Some(dir) = &hub.config.record.dir else {
        return Err((
            StatusCode::NOT_FOUND,
            "this node records nothing (--no-record)".into(),
        ));
    };
    if !is_valid_id(id) {
        return Err((StatusCode::NOT_FOUND, format!("no space '{id}'")));
    }
    if hub.get(id).is_some_and(|s| s.state() != SpaceState::Ended) {
        return Err((
            StatusCode::CONFLICT,
            "this space has not ended: its replay is served once it ends".into(),
        ));
    }
    if hub.recorder.get().is_some_and(|r| r.writing(id)) {
        return Err((
            StatusCode::CONFLICT,
            "the recording is being finished: ask again in a moment".into(),
        ));
    }
    Ok(dir.join(id))
}

fn answer(content_type: &'static str, cache: &'static str, body: Vec<u8>) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// `GET /live/{id}/replay/index.m3u8`.
pub(super) async fn playlist(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let dir = match replay_dir(&hub, &id) {
        Ok(d) => d,
        Err((status, why)) => return error(status, why),
    };
    let owned = id.clone();
    match tokio::task::spawn_blocking(move || index(&owned, &dir)).await {
        Ok(Ok(entries)) if !entries.is_empty() => answer(
            "application/vnd.apple.mpegurl",
            "public, max-age=60",
            levee_core::recording::vod_playlist(&entries).into_bytes(),
        ),
        Ok(Ok(_)) => error(
            StatusCode::NOT_FOUND,
            "the recording holds no whole segment",
        ),
        Ok(Err(why)) => error(StatusCode::NOT_FOUND, why),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the recording could not be read",
        ),
    }
}

/// `GET /live/{id}/replay/{file}`: `init.mp4` or `r{msn}.m4s`.
pub(super) async fn file(
    State(hub): State<Arc<Hub>>,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    let dir = match replay_dir(&hub, &id) {
        Ok(d) => d,
        Err((status, why)) => return error(status, why),
    };
    if name == recorder::INIT_FILE {
        return match tokio::fs::read(dir.join(recorder::INIT_FILE)).await {
            Ok(b) if b.len() <= 64 * 1024 => {
                answer("audio/mp4", "public, max-age=86400, immutable", b)
            }
            _ => error(StatusCode::NOT_FOUND, "no init segment for this recording"),
        };
    }
    let msn = name
        .strip_prefix('r')
        .and_then(|r| r.strip_suffix(".m4s"))
        .filter(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok());
    let Some(msn) = msn else {
        return error(StatusCode::NOT_FOUND, "no such replay file");
    };
    let read = tokio::task::spawn_blocking(move || {
        let entries = index(&id, &dir)?;
        let entry = entries
            .iter()
            .find(|e| e.segment.msn == msn)
            .ok_or_else(|| "the recording has no such segment".to_owned())?;
        recorder::read_segment(&dir, entry)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => answer("audio/mp4", "public, max-age=86400, immutable", bytes),
        Ok(Err(why)) => error(StatusCode::NOT_FOUND, why),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the recording could not be read",
        ),
    }
}

/// `DELETE /live/{id}/replay` with `Authorization: Bearer <host key>`: the host deletes the
/// space's recording (the key is checked against the hash the recording keeps, so this works
/// after a restart too).
pub(super) async fn delete(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let dir = match replay_dir(&hub, &id) {
        Ok(d) => d,
        Err((status, why)) => return error(status, why),
    };
    let Some(key) = super::reply::bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "deleting a recording needs Authorization: Bearer <host key>",
        );
    };
    let meta = match tokio::fs::read(dir.join("meta.json")).await {
        Ok(m) if m.len() <= 16 * 1024 => m,
        _ => return error(StatusCode::NOT_FOUND, "no recording"),
    };
    let kept = serde_json::from_slice::<serde_json::Value>(&meta)
        .ok()
        .and_then(|v| v["host_key_sha256"].as_str().map(str::to_owned));
    let Some(kept) = kept else {
        return error(
            StatusCode::FORBIDDEN,
            "this recording keeps no host key: it cannot be deleted through the API",
        );
    };
    let presented = levee_core::space::hex(&levee_core::space::key_hash(key.trim()));
    if !levee_core::space::constant_time_eq(kept.as_bytes(), presented.as_bytes()) {
        return error(StatusCode::FORBIDDEN, "wrong host key for this recording");
    }
    let Some(r) = hub.recorder.get() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node records nothing (--no-record)",
        );
    };
    match r.delete(&id) {
        Ok(()) => axum::Json(serde_json::json!({ "deleted": id })).into_response(),
        Err(why) => error(StatusCode::CONFLICT, why),
    }
}
