//! The audience API: `GET /api/spaces/{id}/audience` (one space's numbers, their
//! definitions, their time window and their series) and `GET /api/audience` (the node's).
//! Definitions in `docs/audience.md`; in a cluster, the numbers are every node's, merged
//! (`crate::cluster`).

use super::reply::error;
use crate::clock::wall_us;
use crate::fanout::FORMATS;
use crate::hub::{Hub, Space};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use levee_core::audience::Sample;
use levee_core::audience::{Audience, Figures, Series, ERROR_BOUND};
use levee_core::hls::rfc3339_ms;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Spaces listed in the node's answer, the most listened first.
pub const MAX_LISTED_SPACES: usize = 100;

/// What each number means, served beside the numbers (`docs/audience.md` says the same).
pub fn definitions(view_after_s: f64) -> Value {
    json!({
        "session": "one admitted connection to the space's audio (progressive Ogg or WebSocket), from its first audio to its leaving; for LL-HLS, a player's requests (its address and User-Agent, and the playlist URL's `session` parameter if any) until it is silent for 8 s",
        "view": format!("a listener identity with at least one session that took {view_after_s} s of audio; counted once per identity, however many sessions it had"),
        "view_sessions": format!("sessions that took {view_after_s} s of audio (not distinct)"),
        "identity": "the identity in the listener's join ticket where the space hands out tickets; otherwise the source address with the client's User-Agent, hashed with a key secret to the cluster",
        "uniques": "distinct identities with at least one session that was not filtered",
        "estimate": format!("views and uniques are exact up to 1,024 identities, then HyperLogLog estimates within {} % (3 standard errors of 0.81 %); `exact` says which", ERROR_BOUND * 100.0),
        "listeners": "sessions open now",
        "peak": "the most sessions open at once, and when",
        "listen_time_s": "audio time of every session that was not filtered: ended ones from their join to their last progress, open ones so far",
        "median_session_s": "median length of the ended sessions that were not filtered (log buckets, within 4.5 %)",
        "joins": "attempts: join requests and ticketless stream requests (a caller asking again with its place in line or a solved challenge goes on with its attempt); admitted: sessions started; queued: attempts given a place in line; refused: attempts refused for capacity (space, node or line full)",
        "filtered": format!("left out of views, uniques and listen time: sessions cut for stalling before {view_after_s} s of audio (never read), sessions whose source was banned by their end, sessions closed for sending what a listener may not (broken or oversized WebSocket frames), and attempts refused as automated (a proof of work or ticket that failed)"),
    })
}

fn time(us: u64) -> Value {
    json!({ "at": rfc3339_ms(us), "at_unix": us / 1_000_000 })
}

fn figures_json(f: &Figures) -> Value {
    json!({
        "views": f.views,
        "view_sessions": f.view_sessions,
        "uniques": f.uniques,
        "exact": f.exact,
        "error_bound": if f.exact { 0.0 } else { ERROR_BOUND },
        "listeners": f.listeners,
        "peak": {
            "listeners": f.peak,
            "at": (f.peak_at_us > 0).then(|| rfc3339_ms(f.peak_at_us)),
            "at_unix": (f.peak_at_us > 0).then_some(f.peak_at_us / 1_000_000),
        },
        "listen_time_s": (f.listen_time_s * 10.0).round() / 10.0,
        "median_session_s": f.median_session_s.map(|m| (m * 10.0).round() / 10.0),
        "sessions": f.sessions,
        "joins": {
            "attempts": f.attempts,
            "admitted": f.admitted,
            "queued": f.queued,
            "refused": f.refused,
        },
        "filtered": {
            "sessions": f.filtered_sessions,
            "never_read": f.filtered_never_read,
            "banned": f.filtered_banned,
            "misbehaved": f.filtered_misbehaved,
            "refused_automated": f.refused_automated,
            "identities": f.filtered_identities,
        },
    })
}

fn series_json(s: &Series) -> Value {
    json!({
        "step_s": s.step_s(),
        "fields": ["t_unix", "listeners", "joins", "queue", "views", "uniques", "filtered", "trouble"],
        "samples": s.samples().iter().map(|x| {
            [x.t_s, x.listeners, x.joins, x.queue, x.views, x.uniques, x.filtered, x.trouble]
        }).collect::<Vec<_>>(),
    })
}

/// A space's numbers as merged with the cluster's other nodes (this node's alone when it
/// stands alone), and how many nodes they come from.
pub fn merged(hub: &Hub, space: &Space) -> (Audience, usize) {
    let own = space.audience.counts();
    match hub.cluster.get() {
        Some(c) => c.audience(&space.snapshot().id, own),
        None => (own, 1),
    }
}

/// The query of the audience endpoints.
#[derive(Deserialize)]
pub(super) struct AudienceQuery {
    /// `0` leaves the series out.
    #[serde(default)]
    series: Option<u8>,
}

/// `GET /api/spaces/{id}/audience`: the space's numbers, or, for a space this node no
/// longer holds, those kept with its recording (`"source": "recording"`).
pub(super) async fn space_audience(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    Query(q): Query<AudienceQuery>,
) -> Response {
    let Some(space) = hub.find(&id).await else {
        let kept = levee_core::space::is_valid_id(&id)
            .then(|| hub.recorder.get().and_then(|r| r.kept_audience(&id)))
            .flatten();
        return match kept {
            Some(Ok(v)) => Json(v).into_response(),
            Some(Err(why)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the recording's audience numbers cannot be read: {why}"),
            ),
            None => error(StatusCode::NOT_FOUND, format!("no space '{id}'")),
        };
    };
    Json(space_json(&hub, &space, q.series != Some(0))).into_response()
}

/// A space's audience answer: its numbers merged over the cluster, their definitions and
/// window, and (`with_series`) this node's series of them.
pub fn space_json(hub: &Hub, space: &Space, with_series: bool) -> Value {
    let now = wall_us();
    let info = space.snapshot();
    let (counts, nodes) = merged(hub, space);
    let mut v = figures_json(&counts.figures(now));
    let view_after_s = counts.view_after_us as f64 / 1e6;
    v["space"] = json!(info.id);
    v["title"] = json!(info.title);
    v["state"] = json!(info.state.as_str());
    v["window"] = json!({
        "from": time(info.created_at * 1_000_000),
        "to": time(now),
    });
    v["nodes"] = json!(nodes);
    v["view_after_s"] = json!(view_after_s);
    v["definitions"] = definitions(view_after_s);
    v["source"] = json!("live");
    if with_series {
        // The series is this node's own (the dashboard of a node shows what it serves).
        v["series"] = series_json(&space.audience.series());
    }
    v
}

/// `GET /api/audience`: the node's totals over its spaces, its series, and its most listened
/// spaces (at most [`MAX_LISTED_SPACES`]).
pub(super) async fn node_audience(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<AudienceQuery>,
) -> Response {
    let now = wall_us();
    let mut total = Audience::new(hub.config.view_after.as_micros() as u64);
    let mut spaces: Vec<(Figures, String, String, &'static str)> = Vec::new();
    for space in hub.list() {
        // Merged and counted under the space's lock: no copy of its sketches.
        let figures = space.audience.with(|a| {
            total.merge(a);
            a.figures(now)
        });
        let info = space.snapshot();
        spaces.push((figures, info.id, info.title, info.state.as_str()));
    }
    spaces.sort_by(|a, b| {
        b.0.listeners
            .cmp(&a.0.listeners)
            .then(b.0.views.cmp(&a.0.views))
    });
    let listed = spaces.len();
    spaces.truncate(MAX_LISTED_SPACES);
    let mut v = figures_json(&total.figures(now));
    // A view is a space's: the node's views add its spaces' views. Its uniques are distinct
    // identities over all its spaces (the union of their sketches).
    let view_after_s = total.view_after_us as f64 / 1e6;
    v["views"] = json!(spaces.iter().map(|s| s.0.views).sum::<u64>());
    let (series, peak, peak_at) = hub.node_audience();
    v["peak"] = json!({
        "listeners": peak,
        "at": (peak_at > 0).then(|| rfc3339_ms(peak_at)),
        "at_unix": (peak_at > 0).then_some(peak_at / 1_000_000),
    });
    v["spaces"] = json!(listed);
    v["top"] = json!(spaces
        .iter()
        .map(|(f, id, title, state)| json!({
            "id": id,
            "title": title,
            "state": state,
            "listeners": f.listeners,
            "peak": f.peak,
            "views": f.views,
            "uniques": f.uniques,
            "filtered": f.filtered_sessions.saturating_add(f.refused_automated),
        }))
        .collect::<Vec<_>>());
    v["window"] = json!({ "from": time(hub.started_us), "to": time(now) });
    v["view_after_s"] = json!(view_after_s);
    v["definitions"] = definitions(view_after_s);
    if q.series != Some(0) {
        v["series"] = series_json(&series);
    }
    Json(v).into_response()
}

/// Delivery trouble of a space so far: lagging listeners that skipped ahead and stalled ones
/// cut, every format.
pub fn trouble(space: &Space) -> u64 {
    let c = &space.track.counters;
    FORMATS
        .iter()
        .map(|f| c.lag_skips[f.idx()].load(Relaxed) + c.stall_cuts[f.idx()].load(Relaxed))
        .sum()
}

/// Samples every space that is live or has listeners, and the node's sums (called every
/// [`SAMPLE_EVERY`]).
pub fn sample_all(hub: &Hub) {
    let now = wall_us();
    let mut node = Sample {
        t_s: now / 1_000_000,
        ..Sample::default()
    };
    for space in hub.list() {
        space.audience.sweep_hls(&hub.shield, &hub.node, now);
        // A space that is neither live nor listened to is not sampled (its sketches are not
        // counted again each second): its newest sample stands for it.
        let live = space.state() == levee_core::space::SpaceState::Live;
        let s = if live || space.track.listeners() > 0 {
            let queue = space.shield.line.lock().expect("line lock").waiting();
            space.audience.sample(now, queue, trouble(&space))
        } else {
            match space.audience.last_sample() {
                Some(s) => s,
                None => continue,
            }
        };
        node.listeners += s.listeners;
        node.joins += s.joins;
        node.queue += s.queue;
        node.views += s.views;
        node.uniques += s.uniques;
        node.filtered += s.filtered;
        node.trouble += s.trouble;
        if !live && space.state() == levee_core::space::SpaceState::Ended {
            keep_final(hub, &space, now);
        }
    }
    hub.sample_node(node, now);
}

/// Keeps an ended space's final numbers with its recording, once (see
/// [`crate::audience::KEEP_AFTER_US`]).
fn keep_final(hub: &Hub, space: &Arc<Space>, now: u64) {
    let Some(rec) = hub.recorder.get() else {
        return;
    };
    let due = {
        let mut e = space.audience.ended.lock().expect("ended lock");
        if e.1 {
            return;
        }
        if e.0 == 0 {
            e.0 = now;
        }
        let waited = now.saturating_sub(e.0);
        let due = waited >= crate::audience::KEEP_AT_MOST_US
            || (waited >= crate::audience::KEEP_AFTER_US
                && merged(hub, space).0.active == 0
                && !rec.writing(&space.snapshot().id));
        e.1 |= due;
        due
    };
    if !due {
        return;
    }
    let mut v = space_json(hub, space, false);
    v["source"] = serde_json::json!("recording");
    let id = space.snapshot().id;
    match rec.keep_audience(&id, &v.to_string()) {
        Ok(true) => tracing::info!(space = %id, "final audience numbers kept with the recording"),
        Ok(false) => {}
        Err(e) => tracing::warn!(space = %id, "final audience numbers not kept: {e}"),
    }
}
