//! Legitimate listeners that join through the join API before they listen (`--join api`).
//!
//! Contract: [`join`] runs one listener's join as a real client of levee's shield does
//! (`docs/protocol.md`): `POST /api/spaces/{id}/join` from the listener's own source address; on
//! `202` it asks again with its queue token after `retry_after_ms` plus its own jitter; on `401`
//! it solves the proof of work natively ([`levee_core::ticket::solve`], off the event loop, at
//! most [`MAX_POW_DIFFICULTY`] bits, as many at once as the machine has cores); on `429`/`503`
//! it waits `retry_after_ms` with jitter; on a network error it backs off exponentially with
//! full jitter; `403`/`404`/`410` end the join. Once admitted, the listener's worker
//! ([`crate::actors::listeners`]) opens the ticket's stream URL, so time to first audio still
//! counts from the scheduled time. Every wait is bounded by the first-audio deadline and the
//! run's stop.

use crate::actors::listeners::Endpoint;
use crate::net::clock::now_us;
use crate::net::clock::sleep_until_us;
use crate::net::http::exchange;
use crate::net::http::REQUEST_TIMEOUT;
use crate::net::join_api::join_request;
use crate::net::join_api::parse_answer;
use crate::net::join_api::space_of;
use crate::net::join_api::JoinAnswer;
use crate::observe::join::JoinRecord;
use crate::observe::measure::Failure;
use crate::plan::scenario::Rng;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Hardest proof of work a listener solves (expected 2^N hashes); harder challenges fail the
/// join (`protocol_pow_too_hard`).
pub const MAX_POW_DIFFICULTY: u8 = 22;

/// Most join requests of one listener attempt.
pub const MAX_REQUESTS: u32 = 500;

/// First backoff bound after a network error; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Largest backoff bound.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn pow_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Solves a challenge off the event loop, as many at once as there are cores. Returns the
/// nonce, the time waited for a core and the time solving, µs; `None` when the solver could
/// not run.
async fn solve(seed: String, difficulty: u8) -> Option<(u64, u64, u64)> {
    let t0 = now_us();
    let _slot = pow_slots().acquire().await.ok()?;
    let t1 = now_us();
    let nonce = tokio::task::spawn_blocking(move || levee_core::ticket::solve(&seed, difficulty))
        .await
        .ok()?;
    Some((nonce, t1 - t0, now_us() - t1))
}

/// Joins through the API until admitted, refused, `deadline_us` or `stop`. See the module docs.
pub async fn join(
    ep: &Endpoint,
    source: Option<Ipv4Addr>,
    scheduled_us: u64,
    deadline_us: u64,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) -> JoinRecord {
    let mut rec = JoinRecord {
        scheduled_us,
        ..JoinRecord::default()
    };
    let Some(space) = space_of(&ep.ws_path).map(str::to_owned) else {
        rec.failure = Some(Failure::Protocol("no_space_in_path"));
        return rec;
    };
    let mut rng = Rng::new(seed);
    let mut body = "{}".to_owned();
    let mut errors = 0u32;
    loop {
        let now = now_us();
        if now >= deadline_us || *stop.borrow() || rec.requests >= MAX_REQUESTS {
            rec.failure = Some(Failure::Timeout("join"));
            return rec;
        }
        rec.requests += 1;
        let req = join_request(&ep.authority, &space, &body);
        let bound = deadline_us.min(now + REQUEST_TIMEOUT.as_micros() as u64);
        let wait_ms = match exchange(ep.addr, source, req.as_bytes(), bound).await {
            Err(f) if f.is_local() => {
                rec.failure = Some(f);
                return rec;
            }
            Err(f) => {
                rec.count(format!("error_{}", f.label()));
                errors += 1;
                // A spent proof of work must not be sent again.
                if body.contains("\"pow\"") {
                    body = "{}".into();
                }
                let cap = (BACKOFF_BASE.as_millis() as u64)
                    .saturating_mul(1 << errors.min(16))
                    .min(BACKOFF_MAX.as_millis() as u64);
                rng.below(cap).max(1)
            }
            Ok(a) => {
                rec.count(a.status.to_string());
                match parse_answer(a.status, &a.body, a.retry_after_s) {
                    Err(why) => {
                        rec.failure = Some(Failure::Protocol(why));
                        return rec;
                    }
                    Ok(JoinAnswer::Admitted { ogg, ws }) => {
                        rec.admitted_us = Some(now_us());
                        rec.paths = Some((ogg, ws));
                        return rec;
                    }
                    Ok(JoinAnswer::Queued {
                        eta_ms,
                        retry_after_ms,
                        token,
                        ..
                    }) => {
                        rec.queued = true;
                        if rec.first_queued.is_none() {
                            rec.first_queued = Some((now_us(), eta_ms));
                        }
                        body = serde_json::json!({ "queue_token": token }).to_string();
                        // The server jitters by ±25 %; add our own so a herd spreads further.
                        retry_after_ms + rng.below(retry_after_ms / 4 + 1)
                    }
                    Ok(JoinAnswer::Challenge { seed, difficulty }) => {
                        rec.challenged = true;
                        rec.max_difficulty = rec.max_difficulty.max(difficulty);
                        if difficulty > MAX_POW_DIFFICULTY {
                            rec.failure = Some(Failure::Protocol("pow_too_hard"));
                            return rec;
                        }
                        let Some((nonce, waited, solving)) = solve(seed.clone(), difficulty).await
                        else {
                            rec.failure = Some(Failure::Protocol("pow_solver_failed"));
                            return rec;
                        };
                        rec.pow_wait_us += waited;
                        rec.pow_us += solving;
                        rec.pow_solved += 1;
                        body = serde_json::json!({ "pow": { "seed": seed, "nonce": nonce } })
                            .to_string();
                        0
                    }
                    Ok(JoinAnswer::RetryLater { retry_after_ms, .. }) => {
                        if body.contains("\"pow\"") {
                            body = "{}".into();
                        }
                        retry_after_ms + rng.below(retry_after_ms / 2 + 1)
                    }
                    Ok(JoinAnswer::Refused { status }) => {
                        rec.failure = Some(Failure::Http(status));
                        return rec;
                    }
                }
            }
        };
        if wait_ms > 0 {
            let until = (now_us() + wait_ms * 1000).min(deadline_us);
            tokio::select! {
                _ = sleep_until_us(until) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A one-connection-per-request server that answers each request with the next of
    /// `answers` (status, body) and records the bodies it was sent.
    async fn fake_join_server(
        answers: Vec<(u16, String)>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for (status, body) in answers {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Read the head and the body it announces.
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut req = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(h)) = req.parse(&got) {
                        let len = req
                            .headers
                            .iter()
                            .find(|x| x.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|x| std::str::from_utf8(x.value).ok()?.parse().ok())
                            .unwrap_or(0usize);
                        if got.len() >= h + len {
                            bodies.push(String::from_utf8_lossy(&got[h..]).into_owned());
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
            bodies
        });
        (addr, h)
    }

    #[tokio::test]
    async fn a_listener_follows_the_line_solves_the_challenge_and_gets_its_ticket() {
        let (addr, server) = fake_join_server(vec![
            (
                401,
                r#"{"challenge":{"seed":"c1.test-seed","difficulty":8}}"#.into(),
            ),
            (
                202,
                r#"{"queue":{"position":1,"eta_ms":30,"retry_after_ms":20,"token":"q1.tok"}}"#
                    .into(),
            ),
            (
                200,
                r#"{"ticket":"t","urls":{"ogg":"http://x/live/sp.ogg?ticket=t","ws":"ws://x/live/sp/ws?ticket=t"}}"#
                    .into(),
            ),
        ])
        .await;
        let ep = Endpoint {
            addr,
            authority: addr.to_string(),
            ws_path: "/live/sp/ws".into(),
            ogg_path: "/live/sp.ogg".into(),
            connect_timeout: Duration::from_secs(2),
            first_audio_timeout: Duration::from_secs(5),
            meter: Default::default(),
        };
        let (_tx, stop) = watch::channel(false);
        let t0 = now_us();
        let rec = join(
            &ep,
            Some(Ipv4Addr::new(127, 0, 0, 1)),
            t0,
            t0 + 5_000_000,
            stop,
            7,
        )
        .await;
        assert_eq!(rec.failure, None);
        assert_eq!(
            rec.paths,
            Some((
                "/live/sp.ogg?ticket=t".into(),
                "/live/sp/ws?ticket=t".into()
            ))
        );
        assert_eq!(rec.requests, 3);
        assert!(rec.queued && rec.challenged);
        assert_eq!(rec.pow_solved, 1);
        // It waited at least the retry_after_ms it was given.
        assert!(rec.admitted_us.unwrap() - t0 >= 20_000);
        let bodies = server.await.unwrap();
        assert_eq!(bodies[0], "{}");
        let pow: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
        let nonce = pow["pow"]["nonce"].as_u64().unwrap();
        assert_eq!(pow["pow"]["seed"], "c1.test-seed");
        assert!(
            levee_core::ticket::leading_zero_bits(&levee_core::ticket::pow_hash(
                "c1.test-seed",
                nonce
            )) >= 8
        );
        assert_eq!(bodies[2], r#"{"queue_token":"q1.tok"}"#);
    }

    #[tokio::test]
    async fn a_refused_join_ends_and_a_deadline_bounds_the_wait() {
        let (addr, _server) = fake_join_server(vec![(403, r#"{"error":"banned"}"#.into())]).await;
        let mut ep = Endpoint {
            addr,
            authority: addr.to_string(),
            ws_path: "/live/sp/ws".into(),
            ogg_path: "/live/sp.ogg".into(),
            connect_timeout: Duration::from_secs(2),
            first_audio_timeout: Duration::from_secs(5),
            meter: Default::default(),
        };
        let (_tx, stop) = watch::channel(false);
        let t0 = now_us();
        let rec = join(&ep, None, t0, t0 + 5_000_000, stop.clone(), 1).await;
        assert_eq!(rec.failure, Some(Failure::Http(403)));
        // A server that keeps saying "later" is left at the deadline.
        let (addr, _server) = fake_join_server(vec![
            (429, r#"{"retry_after_ms":100}"#.into()),
            (429, r#"{"retry_after_ms":100}"#.into()),
            (429, r#"{"retry_after_ms":100}"#.into()),
            (429, r#"{"retry_after_ms":100}"#.into()),
        ])
        .await;
        ep.addr = addr;
        let t0 = now_us();
        let rec = join(&ep, None, t0, t0 + 250_000, stop, 1).await;
        assert_eq!(rec.failure, Some(Failure::Timeout("join")));
        assert!(now_us() - t0 < 1_000_000);
        assert!(rec.answers["429"] >= 1);
    }
}
