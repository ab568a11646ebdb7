//! Legitimate listeners that join through the join API before they listen (`--join api`).
//!
//! Contract: [`session`] runs one listener attempt as a real client of levee's shield does
//! (`docs/protocol.md`): `POST /api/spaces/{id}/join` from the listener's own source address;
//! on `202` it asks again with its queue token after `retry_after_ms` plus its own jitter; on
//! `401` it solves the proof of work natively ([`levee_core::ticket::solve`], off the event
//! loop, at most [`MAX_POW_DIFFICULTY`] bits, as many at once as the machine has cores); on
//! `429`/`503` it waits `retry_after_ms` with jitter; on a network error it backs off
//! exponentially with full jitter; `403`/`404`/`410` end the join. Once admitted it opens the
//! ticket's stream URL (the listener's worker does, [`crate::reactor`]), so time to first audio still counts
//! from the scheduled time: the join's latency is part of it. Every wait is bounded by the
//! listener's first-audio deadline and the run's stop.
//!
//! What the join did is a [`JoinRecord`]; [`JoinStats`] adds records up exactly (it travels in
//! [`crate::stats::Aggregate`] from agents to the parent) and [`report`] makes the report's
//! `join` section. The parsing of answers ([`parse_answer`]) is pure.

use crate::client::{now_us, sleep_until_us, Endpoint};
use crate::hist::{Hist, Percentiles};
use crate::measure::Failure;
use crate::scenario::{Kind, Rng, Scenario};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Hardest proof of work a listener solves (expected 2^N hashes); harder challenges fail the
/// join (`protocol_pow_too_hard`).
pub const MAX_POW_DIFFICULTY: u8 = 22;
/// Bound on one join request (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest join answer read.
pub const MAX_ANSWER: usize = 16 * 1024;
/// Most join requests of one listener attempt.
pub const MAX_REQUESTS: u32 = 500;
/// Wait for a free core to solve proof of work on (p99) beyond which `join_ms` measures the
/// generator rather than the server: the report then says so (`join.pow_saturated`).
pub const POW_QUEUE_LIMIT: Duration = Duration::from_secs(1);
/// First backoff bound after a network error; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff bound.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How listeners join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// Open the stream URL directly (an `open` space).
    Direct,
    /// Join through `POST /api/spaces/{id}/join`, then open the ticket's URL.
    Api,
}

/// The join mode of a scenario: as set, else `api` for `ddos-during-broadcast` and `direct`
/// for the others.
pub fn mode(sc: &Scenario) -> JoinMode {
    sc.join.unwrap_or(if sc.kind == Kind::DdosDuringBroadcast {
        JoinMode::Api
    } else {
        JoinMode::Direct
    })
}

/// The space id of an endpoint (its WebSocket path is `/live/{id}/ws`).
pub fn space_of(ep: &Endpoint) -> Option<&str> {
    ep.ws_path
        .strip_prefix("/live/")?
        .split(['/', '?'])
        .next()
        .filter(|s| !s.is_empty())
}

/// Connects to `addr` from `source` (bound before connect), by `deadline_us` (Unix µs).
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    deadline_us: u64,
) -> Result<TcpStream, Failure> {
    connect_with(addr, source, deadline_us, None).await
}

/// As [`connect_from`], with a receive buffer of `rcvbuf` bytes set before connecting (so the
/// window the server sees is small from the start).
pub async fn connect_with(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    deadline_us: u64,
    rcvbuf: Option<u32>,
) -> Result<TcpStream, Failure> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| Failure::from_io(&e))?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)
            .map_err(|e| Failure::from_io(&e))?;
    }
    if let (Some(src), true) = (source, addr.is_ipv4()) {
        sock.bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| Failure::from_io(&e))?;
    }
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), sock.connect(addr)).await {
        Err(_) => Err(Failure::Timeout("connect")),
        Ok(Err(e)) => Err(Failure::from_io(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// An HTTP answer read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Retry-After` in seconds, when sent.
    pub retry_after_s: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
    /// Bytes received in all.
    pub bytes: u64,
}

/// The head of an answer, once complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// Bytes of the head, the blank line included.
    len: usize,
    status: Option<u16>,
    retry_after_s: Option<u64>,
    content_length: Option<usize>,
}

/// Reads the head at the start of `buf`, once it is complete.
fn head_of(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    Some(Head {
        len: end,
        status: crate::http::parse_status(&buf[..end]),
        retry_after_s: header("retry-after").and_then(|v| v.parse().ok()),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

/// Reads one answer on `stream` until the server closes or `Content-Length` bytes arrived,
/// by `deadline_us`, at most `max` bytes. A server that closes without a byte is
/// [`Failure::Closed`].
pub async fn read_answer(
    stream: &mut TcpStream,
    deadline_us: u64,
    max: usize,
) -> Result<Answer, Failure> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline_us.saturating_sub(now_us());
        if left == 0 {
            return Err(Failure::Timeout("response"));
        }
        let n = match tokio::time::timeout(Duration::from_micros(left), stream.read(&mut chunk))
            .await
        {
            Err(_) => return Err(Failure::Timeout("response")),
            Ok(Err(e)) => return Err(Failure::from_io(&e)),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let parsed = head_of(&buf);
        let complete =
            parsed.is_some_and(|h| h.content_length.is_some_and(|l| buf.len() >= h.len + l));
        if n == 0 || complete {
            let Some(head) = parsed else {
                return Err(if buf.is_empty() {
                    Failure::Closed
                } else {
                    Failure::Protocol("bad_http_answer")
                });
            };
            let status = head.status.ok_or(Failure::Protocol("bad_http_answer"))?;
            let bytes = buf.len() as u64;
            return Ok(Answer {
                status,
                retry_after_s: head.retry_after_s,
                body: buf.split_off(head.len),
                bytes,
            });
        }
        if buf.len() > max {
            return Err(Failure::Protocol("answer_too_large"));
        }
    }
}

/// One request on its own connection from `source`: connect, send, read the answer, all by
/// `deadline_us`.
pub async fn exchange(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    request: &[u8],
    deadline_us: u64,
) -> Result<Answer, Failure> {
    let mut s = connect_from(addr, source, deadline_us).await?;
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), s.write_all(request)).await {
        Err(_) => return Err(Failure::Timeout("request")),
        Ok(Err(e)) => return Err(Failure::from_io(&e)),
        Ok(Ok(())) => {}
    }
    read_answer(&mut s, deadline_us, MAX_ANSWER).await
}

/// The bytes of a join request with `body` (JSON text).
pub fn join_request(authority: &str, space: &str, body: &str) -> String {
    format!(
        "POST /api/spaces/{space}/join HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: levee-storm\r\n\r\n{body}",
        body.len()
    )
}

/// The path and query of an absolute URL (`ws://h:p/live/x/ws?ticket=t` → `/live/x/ws?...`);
/// a path is kept as it is.
pub fn path_of(url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_owned());
    }
    let rest = url.split_once("://")?.1;
    let at = rest.find('/')?;
    Some(rest[at..].to_owned())
}

/// What a join answer says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAnswer {
    /// `200`: admitted; the stream paths carry the ticket.
    Admitted {
        /// Path (and query) of the Ogg stream.
        ogg: String,
        /// Path (and query) of the WebSocket stream.
        ws: String,
    },
    /// `202`: in line.
    Queued {
        /// Callers ahead.
        position: u64,
        /// The server's estimate of the wait, ms.
        eta_ms: u64,
        /// When to ask again, ms.
        retry_after_ms: u64,
        /// The place in line, to present again.
        token: String,
    },
    /// `401`: solve this first.
    Challenge {
        /// The signed seed.
        seed: String,
        /// Leading zero bits required.
        difficulty: u8,
    },
    /// `429` or `503`: ask again later.
    RetryLater {
        /// The status.
        status: u16,
        /// When to ask again, ms.
        retry_after_ms: u64,
    },
    /// Anything else: the join is over.
    Refused {
        /// The status.
        status: u16,
    },
}

/// Reads a join answer (pure). A `200`, `202` or `401` without its fields is a protocol
/// error.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    retry_after_s: Option<u64>,
) -> Result<JoinAnswer, &'static str> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let retry_ms = v["retry_after_ms"]
        .as_u64()
        .or(retry_after_s.map(|s| s * 1000))
        .unwrap_or(1000);
    Ok(match status {
        200 => {
            let ogg = v["urls"]["ogg"].as_str().and_then(path_of);
            let ws = v["urls"]["ws"].as_str().and_then(path_of);
            match (ogg, ws) {
                (Some(ogg), Some(ws)) => JoinAnswer::Admitted { ogg, ws },
                _ => return Err("join_200_without_urls"),
            }
        }
        202 => {
            let q = &v["queue"];
            JoinAnswer::Queued {
                position: q["position"].as_u64().unwrap_or(0),
                eta_ms: q["eta_ms"].as_u64().unwrap_or(0),
                retry_after_ms: q["retry_after_ms"].as_u64().unwrap_or(retry_ms),
                token: q["token"]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 1024)
                    .ok_or("join_202_without_token")?
                    .to_owned(),
            }
        }
        401 => {
            let c = &v["challenge"];
            JoinAnswer::Challenge {
                seed: c["seed"]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 1024)
                    .ok_or("join_401_without_challenge")?
                    .to_owned(),
                difficulty: c["difficulty"]
                    .as_u64()
                    .ok_or("join_401_without_challenge")?
                    .min(255) as u8,
            }
        }
        429 | 503 => JoinAnswer::RetryLater {
            status,
            retry_after_ms: retry_ms,
        },
        _ => JoinAnswer::Refused { status },
    })
}

/// What one listener's join did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinRecord {
    /// Scheduled join, Unix µs.
    pub scheduled_us: u64,
    /// The `200`, Unix µs.
    pub admitted_us: Option<u64>,
    /// Requests sent.
    pub requests: u32,
    /// Answers by status (`"202"`) or network failure (`"error_reset"`).
    pub answers: BTreeMap<String, u32>,
    /// Waited in line at least once.
    pub queued: bool,
    /// Asked for proof of work at least once.
    pub challenged: bool,
    /// Challenges solved.
    pub pow_solved: u32,
    /// Time spent solving, µs.
    pub pow_us: u64,
    /// Time spent waiting for a free core to solve on, µs (a generator artefact: a real
    /// audience solves on its own devices, in parallel).
    pub pow_wait_us: u64,
    /// Hardest challenge met.
    pub max_difficulty: u8,
    /// First `202`: (Unix µs, the server's `eta_ms`).
    pub first_queued: Option<(u64, u64)>,
    /// Why the join failed.
    pub failure: Option<Failure>,
    /// Stream paths (Ogg, WebSocket) with the ticket.
    pub paths: Option<(String, String)>,
}

impl JoinRecord {
    fn count(&mut self, key: String) {
        *self.answers.entry(key).or_default() += 1;
    }
}

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
    let Some(space) = space_of(ep).map(str::to_owned) else {
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

/// Join figures added up over listeners. See the module docs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinStats {
    /// Joins (one per listener attempt through the API).
    pub joins: u64,
    /// Joins that got a ticket.
    pub admitted: u64,
    /// Joins that did not.
    pub failed: u64,
    /// Failed joins by reason.
    pub failures: BTreeMap<String, u64>,
    /// Requests sent.
    pub requests: u64,
    /// Answers by status or network failure.
    pub answers: BTreeMap<String, u64>,
    /// Joins that waited in line.
    pub queued: u64,
    /// Joins asked for proof of work.
    pub challenged: u64,
    /// Challenges solved.
    pub pow_solved: u64,
    /// Hardest challenge met.
    pub pow_max_difficulty: u64,
    /// Scheduled → `200`, µs.
    pub join: Hist,
    /// First `202` → `200`, µs.
    pub queue_wait: Hist,
    /// Time to solve one challenge (on a free core), µs.
    pub pow: Hist,
    /// Per challenged join: time waited for a free core to solve on, µs.
    pub pow_wait: Hist,
    /// Scheduled → `200` less the time waited for a core, µs: the join a listener solving on
    /// its own device would see.
    pub join_net: Hist,
    /// |actual wait − the first `202`'s `eta_ms`|, µs.
    pub eta_error: Hist,
    /// Sum of (actual wait − `eta_ms`), ms, for the mean bias.
    pub eta_bias_sum_ms: f64,
    /// Time spent solving challenges in all, µs (about the CPU it took).
    pub pow_us_total: u64,
}

impl JoinStats {
    /// Adds one join.
    pub fn record(&mut self, r: &JoinRecord) {
        self.joins += 1;
        self.requests += r.requests as u64;
        for (k, v) in &r.answers {
            *self.answers.entry(k.clone()).or_default() += *v as u64;
        }
        self.queued += r.queued as u64;
        self.challenged += r.challenged as u64;
        self.pow_solved += r.pow_solved as u64;
        self.pow_max_difficulty = self.pow_max_difficulty.max(r.max_difficulty as u64);
        if r.pow_solved > 0 {
            self.pow.record(r.pow_us / r.pow_solved as u64);
            self.pow_wait.record(r.pow_wait_us);
            self.pow_us_total += r.pow_us;
        }
        match r.admitted_us {
            Some(t) => {
                self.admitted += 1;
                self.join.record(t.saturating_sub(r.scheduled_us));
                self.join_net.record(
                    t.saturating_sub(r.scheduled_us)
                        .saturating_sub(r.pow_wait_us),
                );
                if let Some((q, eta_ms)) = r.first_queued {
                    let waited = t.saturating_sub(q);
                    self.queue_wait.record(waited);
                    let eta_us = eta_ms * 1000;
                    self.eta_error.record(waited.abs_diff(eta_us));
                    self.eta_bias_sum_ms += (waited as f64 - eta_us as f64) / 1000.0;
                }
            }
            None => {
                self.failed += 1;
                let why = r.failure.as_ref().map_or("unknown".into(), Failure::label);
                *self.failures.entry(why).or_default() += 1;
            }
        }
    }

    /// Adds everything `o` counted.
    pub fn merge(&mut self, o: &JoinStats) {
        self.joins += o.joins;
        self.admitted += o.admitted;
        self.failed += o.failed;
        self.requests += o.requests;
        self.queued += o.queued;
        self.challenged += o.challenged;
        self.pow_solved += o.pow_solved;
        self.pow_max_difficulty = self.pow_max_difficulty.max(o.pow_max_difficulty);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.answers {
            *self.answers.entry(k.clone()).or_default() += v;
        }
        self.join.merge(&o.join);
        self.queue_wait.merge(&o.queue_wait);
        self.pow.merge(&o.pow);
        self.pow_wait.merge(&o.pow_wait);
        self.join_net.merge(&o.join_net);
        self.eta_error.merge(&o.eta_error);
        self.eta_bias_sum_ms += o.eta_bias_sum_ms;
        self.pow_us_total += o.pow_us_total;
    }
}

/// The report's `join` section (runs that join through the API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinReport {
    /// Joins (one per listener attempt).
    pub joins: u64,
    /// Joins that got a ticket.
    pub admitted: u64,
    /// Joins that did not.
    pub failed: u64,
    /// Failed joins by reason (`timeout_join`, `http_403`, `protocol_pow_too_hard`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Join requests sent.
    pub requests: u64,
    /// Answers by status (`"200"`, `"202"`, `"401"`, `"429"`, `"503"`) or network failure
    /// (`"error_reset"`, `"error_closed"`, ...).
    pub answers: BTreeMap<String, u64>,
    /// Joins that waited in line at least once.
    pub queued: u64,
    /// Joins asked for proof of work.
    pub challenged: u64,
    /// Challenges solved.
    pub pow_solved: u64,
    /// Hardest challenge met, bits.
    pub pow_max_difficulty: u64,
    /// Scheduled time → `200` (the ticket), ms.
    pub join_ms: Percentiles,
    /// `join_ms` less the time spent waiting for a free generator core to solve a proof of work
    /// on (the solving itself included): what a listener solving on its own device would see.
    pub join_net_ms: Percentiles,
    /// First `202` → `200`, ms.
    pub queue_wait_ms: Percentiles,
    /// Time to solve one challenge on a free core, ms.
    pub pow_ms: Percentiles,
    /// Per challenged join, time waited for a free generator core to solve on, ms (a generator
    /// artefact: it solves every listener's challenges on the cores of one machine).
    pub pow_queue_ms: Percentiles,
    /// Time spent solving challenges in all, s (wall time on a core; about the CPU it took
    /// when the machine is not busy).
    pub pow_cpu_s: f64,
    /// The generator could not solve challenges as fast as listeners arrived: `pow_queue_ms`
    /// p99 over [`POW_QUEUE_LIMIT`]. `join_ms` (and `ttfa_ms`) then measure the generator's
    /// queue; `join_net_ms` does not.
    pub pow_saturated: bool,
    /// |actual wait in line − the first `202`'s `eta_ms`|, ms.
    pub eta_error_ms: Percentiles,
    /// Mean of (actual wait − `eta_ms`), ms: positive when the server promised too little.
    pub eta_bias_ms: f64,
}

/// The `join` section, or `None` when no listener joined through the API.
pub fn report(s: &JoinStats) -> Option<JoinReport> {
    if s.joins == 0 {
        return None;
    }
    let p = |h: &Hist| {
        if h.count() == 0 {
            Percentiles::default()
        } else {
            h.summary_ms()
        }
    };
    let queued_admitted = s.queue_wait.count();
    Some(JoinReport {
        joins: s.joins,
        admitted: s.admitted,
        failed: s.failed,
        failures: s.failures.clone(),
        requests: s.requests,
        answers: s.answers.clone(),
        queued: s.queued,
        challenged: s.challenged,
        pow_solved: s.pow_solved,
        pow_max_difficulty: s.pow_max_difficulty,
        join_ms: p(&s.join),
        join_net_ms: p(&s.join_net),
        queue_wait_ms: p(&s.queue_wait),
        pow_ms: p(&s.pow),
        pow_queue_ms: p(&s.pow_wait),
        pow_cpu_s: s.pow_us_total as f64 / 1e6,
        pow_saturated: s.pow_wait.count() > 0
            && s.pow_wait.quantile(0.99) > POW_QUEUE_LIMIT.as_micros() as u64,
        eta_error_ms: p(&s.eta_error),
        eta_bias_ms: if queued_admitted > 0 {
            s.eta_bias_sum_ms / queued_admitted as f64
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[test]
    fn join_answers_are_read_into_what_to_do_next() {
        let ok = br#"{"ticket":"t1.x","expires_in_s":60,"access":"ticketed","urls":{"ogg":"http://127.0.0.1:9/live/ab.ogg?ticket=t1.x","ws":"ws://127.0.0.1:9/live/ab/ws?ticket=t1.x"}}"#;
        assert_eq!(
            parse_answer(200, ok, None).unwrap(),
            JoinAnswer::Admitted {
                ogg: "/live/ab.ogg?ticket=t1.x".into(),
                ws: "/live/ab/ws?ticket=t1.x".into()
            }
        );
        let q =
            br#"{"queue":{"position":12,"eta_ms":400,"retry_after_ms":350,"token":"q1.a.b.c"}}"#;
        assert_eq!(
            parse_answer(202, q, Some(1)).unwrap(),
            JoinAnswer::Queued {
                position: 12,
                eta_ms: 400,
                retry_after_ms: 350,
                token: "q1.a.b.c".into()
            }
        );
        let c = br#"{"error":"solve","challenge":{"seed":"c1.s","difficulty":12}}"#;
        assert_eq!(
            parse_answer(401, c, None).unwrap(),
            JoinAnswer::Challenge {
                seed: "c1.s".into(),
                difficulty: 12
            }
        );
        assert_eq!(
            parse_answer(429, br#"{"retry_after_ms":2500}"#, Some(3)).unwrap(),
            JoinAnswer::RetryLater {
                status: 429,
                retry_after_ms: 2500
            }
        );
        // Without a body, the Retry-After header says when.
        assert_eq!(
            parse_answer(503, b"", Some(3)).unwrap(),
            JoinAnswer::RetryLater {
                status: 503,
                retry_after_ms: 3000
            }
        );
        assert_eq!(
            parse_answer(403, b"{}", None).unwrap(),
            JoinAnswer::Refused { status: 403 }
        );
        assert!(parse_answer(200, b"{}", None).is_err());
        assert!(parse_answer(202, b"not json", None).is_err());
        assert!(parse_answer(401, br#"{"challenge":{"seed":"x"}}"#, None).is_err());
    }

    #[test]
    fn urls_keep_their_path_and_query() {
        assert_eq!(
            path_of("ws://127.0.0.1:8080/live/x/ws?ticket=a.b").as_deref(),
            Some("/live/x/ws?ticket=a.b")
        );
        assert_eq!(path_of("/live/x.ogg").as_deref(), Some("/live/x.ogg"));
        assert_eq!(path_of("http://host-without-path"), None);
        let ep = Endpoint {
            addr: "127.0.0.1:1".parse().unwrap(),
            authority: "127.0.0.1:1".into(),
            ws_path: "/live/abc123/ws".into(),
            ogg_path: "/live/abc123.ogg".into(),
            connect_timeout: Duration::from_secs(1),
            first_audio_timeout: Duration::from_secs(1),
            meter: Default::default(),
        };
        assert_eq!(space_of(&ep), Some("abc123"));
    }

    #[test]
    fn join_stats_add_up_latency_queueing_pow_and_eta_error() {
        let t0 = 1_000_000_000;
        let mut a = JoinStats::default();
        a.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 50_000),
            requests: 1,
            answers: [("200".into(), 1)].into(),
            ..JoinRecord::default()
        });
        // Queued at +10 ms with an ETA of 300 ms, admitted at +510 ms (200 ms late), after a
        // 20 ms challenge.
        a.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 510_000),
            requests: 4,
            answers: [("401".into(), 1), ("202".into(), 2), ("200".into(), 1)].into(),
            queued: true,
            challenged: true,
            pow_solved: 1,
            pow_us: 20_000,
            pow_wait_us: 100_000,
            max_difficulty: 12,
            first_queued: Some((t0 + 10_000, 300)),
            ..JoinRecord::default()
        });
        let mut b = JoinStats::default();
        b.record(&JoinRecord {
            scheduled_us: t0,
            requests: 3,
            answers: [("429".into(), 3)].into(),
            failure: Some(Failure::Timeout("join")),
            ..JoinRecord::default()
        });
        let b: JoinStats = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        let r = report(&a).unwrap();
        assert_eq!((r.joins, r.admitted, r.failed), (3, 2, 1));
        assert_eq!(r.failures["timeout_join"], 1);
        assert_eq!(r.requests, 8);
        assert_eq!(r.answers["200"], 2);
        assert_eq!(r.answers["429"], 3);
        assert_eq!((r.queued, r.challenged, r.pow_solved), (1, 1, 1));
        assert_eq!(r.pow_max_difficulty, 12);
        assert!((r.join_ms.max - 510.0).abs() < 1.0, "{:?}", r.join_ms);
        assert!((r.queue_wait_ms.p50 - 500.0).abs() < 1.0);
        assert!((r.eta_error_ms.p50 - 200.0).abs() < 0.5);
        assert!((r.eta_bias_ms - 200.0).abs() < 1e-9);
        assert!((r.pow_ms.p50 - 20.0).abs() < 0.1);
        assert!((r.pow_queue_ms.p50 - 100.0).abs() < 0.1);
        assert!((r.pow_cpu_s - 0.02).abs() < 1e-9);
        assert!(!r.pow_saturated);
        // Two seconds waiting for a core: join_ms measures the generator, and says so.
        let mut q = JoinStats::default();
        q.record(&JoinRecord {
            scheduled_us: t0,
            admitted_us: Some(t0 + 2_100_000),
            challenged: true,
            pow_solved: 1,
            pow_us: 50_000,
            pow_wait_us: 2_000_000,
            ..JoinRecord::default()
        });
        let rq = report(&q).unwrap();
        assert!(rq.pow_saturated);
        assert!(
            (rq.join_net_ms.p50 - 100.0).abs() < 0.5,
            "{:?}",
            rq.join_net_ms
        );
        // Net of the wait for a core: 510 ms − 100 ms.
        assert!(
            (r.join_net_ms.max - 410.0).abs() < 1.0,
            "{:?}",
            r.join_net_ms
        );
        assert!(report(&JoinStats::default()).is_none());
    }

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
                    if let Some(Head {
                        len: h,
                        content_length: Some(len),
                        ..
                    }) = head_of(&got)
                    {
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
