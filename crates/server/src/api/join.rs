//! The join API (`POST /api/spaces/{id}/join`) and the admin API of the shield.
//!
//! A join answers within one request, whatever the load: `200` with a ticket and stream URLs,
//! `202` with a place in line, `401` with a proof-of-work challenge (under attack), `429` when
//! the caller asks too fast, `503` when the line is full. Each answer says when to ask again.
//! See `docs/protocol.md`.

use super::reply::{base_url, error, Peer};
use crate::clock::{mono_us, wall_us};
use crate::hub::{Hub, Space};
use crate::random;
use crate::shield::{Refusal, Shield, ShieldReason, Wire};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use levee_core::admission::{self, Decision};
use levee_core::audience::Identity;
use levee_core::replay::ReplayError;
use levee_core::source::{wide_prefix, Cidr};
use levee_core::space::SpaceState;
use levee_core::ticket::{Challenge, QueueToken, Ticket};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The body of `POST /api/spaces/{id}/join` (see `docs/protocol.md`): empty, `{}`, a place in
/// line to present again, or a solved proof-of-work challenge. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JoinReq {
    /// The token of a place in line, when asking again.
    #[serde(default)]
    pub queue_token: Option<String>,
    /// A solved challenge.
    #[serde(default)]
    pub pow: Option<Pow>,
}

/// A solved proof-of-work challenge: the seed the server handed out and the nonce found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pow {
    /// The challenge's seed, as received.
    pub seed: String,
    /// A nonce such that `SHA-256(seed ‖ decimal nonce)` has the required leading zero bits.
    pub nonce: u64,
}

/// Parses a join request body. A body of only ASCII whitespace (or none) is the empty request;
/// anything else must be a JSON object of [`JoinReq`]'s fields. The error is the human reason,
/// as the API returns it after `invalid join request: `. Never panics, whatever the bytes.
pub fn parse_join_request(body: &[u8]) -> Result<JoinReq, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(JoinReq::default());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn with_retry_after(mut resp: Response, ms: u64) -> Response {
    let secs = ms.div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A refusal as a JSON answer: its status, `{"error": detail}` and, when it says when to ask
/// again, `retry_after_ms` and `Retry-After`.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.retry_after_ms {
            Some(ms) => with_retry_after(
                (
                    status,
                    Json(json!({ "error": self.detail, "retry_after_ms": ms })),
                )
                    .into_response(),
                ms,
            ),
            None => (status, Json(json!({ "error": self.detail }))).into_response(),
        }
    }
}

fn challenge(hub: &Hub, space: &str, ip: IpAddr, difficulty: u8, why: &str) -> Response {
    let now_s = wall_us() / 1_000_000;
    let cfg = &hub.shield.cfg;
    let prefix = cfg.bind_to_prefix.then(|| wide_prefix(ip));
    let c = match hub.shield.new_challenge(space, prefix, difficulty, now_s) {
        Ok(c) => c,
        Err(wait_s) => {
            // This node issued as many challenges as its replay window remembers within a
            // challenge's lifetime: issuing more could make an honest solution look expired.
            return hub
                .shield
                .refuse(
                    ShieldReason::ChallengeBudget,
                    Wire::Http(503),
                    "this node is handing out too many challenges: ask again later",
                )
                .retry_after(wait_s * 1_000)
                .into_response();
        }
    };
    let seed = c.sign(&hub.shield.signer, now_s);
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": why,
            "challenge": {
                "seed": seed,
                "difficulty": difficulty,
                "algorithm": "sha256(seed + decimal nonce) with `difficulty` leading zero bits",
                "expires_in_s": cfg.challenge_ttl_s,
            }
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("PoW difficulty={difficulty}")) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Checks the solved challenge of a caller asked for work at `difficulty`: `None` lets it into
/// the line; `Some` is the answer instead, a (new) challenge, counted and struck when the
/// solution was wrong or already spent.
#[allow(clippy::too_many_arguments)]
fn pow_answer(
    hub: &Hub,
    space: &Space,
    source: u64,
    id: &str,
    ip: IpAddr,
    difficulty: u8,
    pow: Option<&Pow>,
    now: u64,
) -> Option<Response> {
    let shield = &hub.shield;
    let Some(p) = pow else {
        return Some(challenge(
            hub,
            id,
            ip,
            difficulty,
            "solve this challenge to join",
        ));
    };
    let now_s = wall_us() / 1_000_000;
    let ss = &space.shield;
    let failed = |why: String| {
        ss.join_refused.fetch_add(1, Relaxed);
        space.audience.with(|a| a.refuse_automated(source));
        let r = shield.offence(ip, ShieldReason::Challenge, Wire::Http(401), why, now);
        Some(challenge(hub, id, ip, difficulty, &r.detail))
    };
    match Challenge::verify_solution(&shield.signer, &p.seed, p.nonce, id, ip, now_s) {
        Ok(c) if c.difficulty >= difficulty => match shield.spend_challenge(&c, now) {
            Ok(()) => None,
            // Issued by another node while this one remembers as many nodes' challenges as it
            // can: not the caller's fault, no strike.
            Err(e @ ReplayError::TooManyOrigins) => Some(challenge(
                hub,
                id,
                ip,
                difficulty,
                &format!("{e}: solve this one"),
            )),
            Err(e) => failed(e.to_string()),
        },
        Ok(_) => Some(challenge(
            hub,
            id,
            ip,
            difficulty,
            "the difficulty rose: solve this one",
        )),
        Err(e) => failed(format!("challenge refused: {e}")),
    }
}

/// `POST /api/spaces/{id}/join`.
pub(crate) async fn join(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Rates, strikes and the line run on the monotonic clock; tokens carry wall time.
    let now = mono_us();
    let now_ms = wall_us() / 1_000;
    let now_s = now_ms / 1_000;
    let shield = &hub.shield;
    let ip = shield.source_ip(
        peer.ip(),
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
    );
    let Some(space) = hub.find(&id).await else {
        return error(StatusCode::NOT_FOUND, format!("no space '{id}'"));
    };
    let ss = &space.shield;
    // Sources that the per-source limits already stop do not count toward the space's
    // escalation: a contained flood must not make every listener pay with work.
    if let Err(r) = shield.admit_join(ip, now) {
        return r.into_response();
    }
    ss.join_requests.fetch_add(1, Relaxed);
    if space.state() == SpaceState::Ended {
        return shield
            .refuse(
                ShieldReason::SpaceEnded,
                Wire::Http(410),
                "this space has ended",
            )
            .into_response();
    }
    let req = match parse_join_request(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid join request: {e}"),
            )
        }
    };
    let configured = Shield::load_access(&ss.access);
    let (access, difficulty) = shield.effective_access(configured, ss.difficulty.load(Relaxed));
    let listeners = space.cluster_listeners();
    // Who is joining, for the audience numbers (docs/audience.md): its address with its
    // User-Agent, the identity its ticket will carry. A request without a place in line or a
    // solved challenge is a new attempt; those with one go on with an earlier attempt.
    let source = hub.identity.hash(&Identity::Source {
        ip,
        fingerprint: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    });
    let fresh = req.queue_token.is_none() && req.pow.is_none();
    if fresh {
        space.audience.with(|a| a.attempt());
    }

    let (decision, listener) = match &req.queue_token {
        Some(token) => match QueueToken::verify(&shield.signer, token, &id, now_s) {
            Ok(q) => {
                let mut line = ss.line.lock().expect("line lock");
                let d = if q.line == shield.origin() || q.number & admission::LOTTERY != 0 {
                    line.recheck(q.number, now, listeners, random::unit())
                } else {
                    // Another node's place in the space's line (a cluster): keep the wait
                    // that was left, in this node's line.
                    let remaining_us = q.due_ms.saturating_sub(now_ms).saturating_mul(1000);
                    shield.counters.queue_moved.fetch_add(1, Relaxed);
                    line.adopt(remaining_us, now, listeners, random::unit())
                };
                (d, q.listener)
            }
            Err(e) => {
                ss.join_refused.fetch_add(1, Relaxed);
                space.audience.with(|a| a.refuse_automated(source));
                let why = format!("queue token refused: {e}");
                return shield
                    .offence(ip, ShieldReason::Ticket, Wire::Http(403), why, now)
                    .into_response();
            }
        },
        None => {
            // Entering the line: under pressure, pay with work first.
            if difficulty > 0 {
                let pow = req.pow.as_ref();
                if let Some(answer) =
                    pow_answer(&hub, &space, source, &id, ip, difficulty, pow, now)
                {
                    return answer;
                }
            }
            let draw = random::u64() as u32;
            let d = ss
                .line
                .lock()
                .expect("line lock")
                .arrive(now, listeners, draw, random::unit());
            // The ticket carries the caller's identity: joining again from the same client
            // is the same listener.
            (d, source)
        }
    };
    let cfg = &shield.cfg;
    match decision {
        Decision::Admit => {
            let ticket = Ticket {
                space: id.clone(),
                listener,
                expires_s: now_s + cfg.ticket_ttl_s,
                prefix: cfg.bind_to_prefix.then(|| wide_prefix(ip)),
            }
            .sign(&shield.signer, now_s);
            shield.counters.tickets.fetch_add(1, Relaxed);
            let (base, _) = base_url(&hub, &headers);
            let ws_base = base.replacen("http", "ws", 1);
            Json(json!({
                "ticket": ticket,
                "expires_in_s": cfg.ticket_ttl_s,
                "access": access.as_str(),
                "urls": {
                    "ogg": format!("{base}/live/{id}.ogg?ticket={ticket}"),
                    "ws": format!("{ws_base}/live/{id}/ws?ticket={ticket}"),
                },
            }))
            .into_response()
        }
        Decision::Wait {
            number,
            position,
            eta_ms,
            retry_after_ms,
        } => {
            let token = QueueToken {
                space: id.clone(),
                number,
                listener,
                expires_s: now_s + cfg.queue_token_ttl_s,
                line: shield.origin(),
                due_ms: now_ms + eta_ms,
            }
            .sign(&shield.signer, now_s);
            shield.counters.queued.fetch_add(1, Relaxed);
            if req.queue_token.is_none() {
                space.audience.with(|a| a.queue());
            }
            let body = json!({
                "queue": {
                    "position": position,
                    "eta_ms": eta_ms,
                    "retry_after_ms": retry_after_ms,
                    "token": token,
                }
            });
            with_retry_after(
                (StatusCode::ACCEPTED, Json(body)).into_response(),
                retry_after_ms,
            )
        }
        Decision::Full { retry_after_ms } => {
            space.audience.with(|a| a.refuse());
            shield
                .refuse(
                    ShieldReason::LineFull,
                    Wire::Http(503),
                    "the line for this space is full",
                )
                .retry_after(retry_after_ms)
                .into_response()
        }
    }
}

/// The refusal of an admin request without the admin key, if it is refused.
fn refuse_non_admin(hub: &Hub, headers: &HeaderMap) -> Option<Response> {
    match super::reply::bearer(headers) {
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "the admin API needs Authorization: Bearer <admin key>",
        )),
        Some(k)
            if levee_core::space::constant_time_eq(
                k.trim().as_bytes(),
                hub.shield.cfg.admin_key.as_bytes(),
            ) =>
        {
            None
        }
        Some(_) => Some(error(StatusCode::FORBIDDEN, "wrong admin key")),
    }
}

/// `GET /api/admin/shield`: escalation and counters.
pub(crate) async fn shield_status(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let c = &hub.shield.counters;
    let refused: serde_json::Map<String, serde_json::Value> = ShieldReason::ALL
        .iter()
        .map(|r| (r.label().to_owned(), json!(c.refused(*r))))
        .collect();
    let spaces: Vec<_> = hub
        .list()
        .iter()
        .map(|s| {
            let line = s.shield.line.lock().expect("line lock");
            json!({
                "id": s.snapshot().id,
                "access": Shield::load_access(&s.shield.access).as_str(),
                "difficulty": s.shield.difficulty.load(Relaxed),
                "queue_waiting": line.waiting(),
                "admission_share": line.share(),
                "admission_rate": line.config().rate_per_s,
            })
        })
        .collect();
    Json(json!({
        "node_difficulty": hub.shield.node_difficulty(),
        "refused": refused,
        "join_requests": c.join_requests.load(Relaxed),
        "tickets": c.tickets.load(Relaxed),
        "queued": c.queued.load(Relaxed),
        "queue_moved": c.queue_moved.load(Relaxed),
        "challenges": c.challenges.load(Relaxed),
        "bans_imposed": c.bans.load(Relaxed),
        "limiter_bytes": hub.shield.limiter_bytes(),
        "spaces": spaces,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BanReq {
    cidr: String,
    #[serde(default)]
    seconds: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct CidrQuery {
    cidr: String,
}

fn bad_cidr(e: levee_core::source::CidrError) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

/// `GET /api/admin/bans`.
pub(crate) async fn list_bans(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let now = mono_us();
    let bans: Vec<_> = hub
        .shield
        .bans(now)
        .into_iter()
        .map(|b| {
            json!({
                "cidr": b.cidr.to_string(),
                "remaining_s": b.until_us.saturating_sub(now).div_ceil(1_000_000),
                "repeat": b.count,
                "manual": b.manual,
            })
        })
        .collect();
    Json(json!({ "bans": bans })).into_response()
}

/// `POST /api/admin/bans` `{"cidr": "...", "seconds": N}` (default one hour).
pub(crate) async fn add_ban(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Json<BanReq>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(rej) => return error(rej.status(), rej.body_text()),
    };
    let cidr = match Cidr::parse(&req.cidr) {
        Ok(c) => c,
        Err(e) => return bad_cidr(e),
    };
    let secs = req.seconds.unwrap_or(3_600).min(30 * 86_400);
    hub.shield.ban(cidr, secs, mono_us());
    audit(&hub, peer, "ban", format!("{cidr} for {secs} s"));
    tracing::warn!(%cidr, seconds = secs, "operator banned a network");
    (
        StatusCode::CREATED,
        Json(json!({ "cidr": cidr.to_string(), "remaining_s": secs })),
    )
        .into_response()
}

/// `DELETE /api/admin/bans?cidr=...`.
pub(crate) async fn remove_ban(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<CidrQuery>,
) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    match Cidr::parse(&q.cidr) {
        Ok(c) if hub.shield.unban(c) => {
            audit(&hub, peer, "unban", c.to_string());
            Json(json!({ "cidr": c.to_string(), "banned": false })).into_response()
        }
        Ok(c) => error(StatusCode::NOT_FOUND, format!("{c} is not banned")),
        Err(e) => bad_cidr(e),
    }
}

/// `GET /api/admin/allow`.
pub(crate) async fn list_allow(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let list: Vec<String> = hub.shield.allowlist().iter().map(Cidr::to_string).collect();
    Json(json!({ "allow": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllowReq {
    cidr: String,
}

/// `POST /api/admin/allow` `{"cidr": "..."}`.
pub(crate) async fn add_allow(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Json<AllowReq>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(rej) => return error(rej.status(), rej.body_text()),
    };
    match Cidr::parse(&req.cidr) {
        Ok(c) if hub.shield.allow(c) => {
            audit(&hub, peer, "allow", c.to_string());
            (StatusCode::CREATED, Json(json!({ "cidr": c.to_string() }))).into_response()
        }
        Ok(_) => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "the allowlist holds its maximum of 4,096 entries",
        ),
        Err(e) => bad_cidr(e),
    }
}

/// `DELETE /api/admin/allow?cidr=...`.
pub(crate) async fn remove_allow(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<CidrQuery>,
) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    match Cidr::parse(&q.cidr) {
        Ok(c) if hub.shield.disallow(c) => {
            audit(&hub, peer, "disallow", c.to_string());
            Json(json!({ "cidr": c.to_string(), "allowed": false })).into_response()
        }
        Ok(c) => error(
            StatusCode::NOT_FOUND,
            format!("{c} is not on the allowlist"),
        ),
        Err(e) => bad_cidr(e),
    }
}

/// Records an operator action in the audit log (and the log output).
fn audit(hub: &Hub, peer: std::net::SocketAddr, action: &'static str, what: String) {
    tracing::info!(who = %peer.ip(), action, what = %what, "audit");
    let at_s = wall_us() / 1_000_000;
    hub.audit
        .lock()
        .expect("audit lock")
        .record(at_s, peer.ip().to_string(), action, what);
}

/// Query of `GET /api/admin/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    since: u64,
}

/// `GET /api/admin/audit?since=SEQ`: operator actions after `since`, oldest first.
pub(crate) async fn audit_log(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Some(r) = refuse_non_admin(&hub, &headers) {
        return r;
    }
    let (entries, dropped) = hub.audit.lock().expect("audit lock").since(q.since);
    let entries: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": e.at_s,
                "who": e.who,
                "action": e.action,
                "what": e.what,
            })
        })
        .collect();
    Json(json!({
        "entries": entries,
        "dropped": dropped,
        "kept_at_most": levee_core::audit::AUDIT_ENTRIES,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_requests_parse_and_unknown_fields_are_refused() {
        assert_eq!(parse_join_request(b""), Ok(JoinReq::default()));
        assert_eq!(parse_join_request(b" \r\n\t"), Ok(JoinReq::default()));
        assert_eq!(parse_join_request(b"{}"), Ok(JoinReq::default()));
        assert_eq!(
            parse_join_request(br#"{"pow":{"seed":"s","nonce":7}}"#),
            Ok(JoinReq {
                queue_token: None,
                pow: Some(Pow {
                    seed: "s".into(),
                    nonce: 7
                }),
            })
        );
        assert_eq!(
            parse_join_request(br#"{"queue_token":"q"}"#)
                .unwrap()
                .queue_token
                .as_deref(),
            Some("q")
        );
        assert!(parse_join_request(br#"{"extra":1}"#).is_err());
        assert!(parse_join_request(br#"{"pow":{"seed":"s","nonce":1,"x":0}}"#).is_err());
        assert!(parse_join_request(b"\xff\xfe").is_err());
        assert!(parse_join_request(b"[").is_err());
    }
}
