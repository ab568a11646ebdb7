//! The listeners' IO: a few threads, each holding thousands of listeners in one poll loop.
//!
//! Contract: [`Worker::run`] takes its share of the schedule ([`Slot`]s sorted by join time)
//! and runs every one of them to its end: each connection attempt (connect from the slot's
//! source address, send the request, read the answer head, read audio until the planned leave,
//! the server's close, a failure or the stop) and, for churn, every later attempt, as the
//! listener's [`Lifecycle`] decides. It returns the [`Aggregate`] of what its listeners got;
//! frame-level figures of the current second go to its shared [`Shard`] as they happen.
//!
//! Cost, the reason this exists: a listener is a slot in a table (a socket, a parser of a few
//! hundred bytes and a meter), not a task; there is no timer per listener (one heap of
//! deadlines per thread) and no allocation per read. Joining listeners are served at once by
//! the thread's first poll. A listener with audio moves to a second poll that is drained only
//! every [`crate::plan::scenario::MeterConfig::read_every_ms`], so one read takes several chunks of the server at
//! once; its bytes carry the kernel's receive timestamp (`SO_TIMESTAMP`), the arrival of the
//! read's newest bytes, so nothing is timed by when the thread got round to it. One listener in
//! [`crate::plan::scenario::MeterConfig::timed_every`] stays on the first poll and measures latency, jitter and
//! underruns on every frame ([`crate::observe::measure::Frame::exact`]).
//!
//! Joins through the join API run as tasks on the tokio runtime that started the workers
//! (they are few and wait a lot); their answer comes back on a channel with a poll waker.

use crate::net::clock::now_us;
use crate::net::http;
use crate::net::socket::recv_stamped;
use crate::net::uring::{Got, Ring};
use crate::observe::hist::Hist;
use crate::observe::join::JoinRecord;
use crate::observe::measure::Failure;
use crate::observe::measure::JoinTiming;
use crate::observe::reader::Reader;
use crate::observe::reader::Shard;
use crate::observe::stats::Aggregate;
use crate::observe::stats::SessionRecord;
use crate::plan::scenario::hash3;
use crate::plan::scenario::BatchIo;
use crate::plan::scenario::Format;
use crate::plan::scenario::JoinMode;
use crate::plan::scenario::Kind;
use crate::plan::scenario::MeterConfig;
use crate::plan::scenario::Reconnect;
use crate::plan::scenario::Rng;
use crate::plan::scenario::Scenario;
use crate::plan::scenario::Slot;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes of the per-thread read buffer.
pub const READ_BUF: usize = 64 * 1024;

/// Where and how a listener connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header.
    pub authority: String,
    /// Path of the WebSocket stream.
    pub ws_path: String,
    /// Path of the Ogg stream.
    pub ogg_path: String,
    /// Bound on TCP connect.
    pub connect_timeout: Duration,
    /// Bound on scheduled → first audio.
    pub first_audio_timeout: Duration,
    /// Measurement bounds.
    pub meter: MeterConfig,
}

/// The times that bound one session, µs since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Scheduled join.
    pub scheduled_us: u64,
    /// Planned leave (the session is dropped then).
    pub leave_us: u64,
    /// From this time on, the server closing the stream is the planned end (the run is over
    /// and the space is being ended), not a drop.
    pub end_ok_after_us: u64,
}

/// What a listener of one delivery format does that the others do not: how it asks for its
/// stream, which answer starts it, and how its bytes are read. The worker's state machine
/// (connect, request, answer head, stream, deadlines, retries, batched reads) is the same for
/// every format; another streaming format is one more implementation of this trait.
pub trait Delivery: Sync {
    /// The format, as reports name it.
    fn format(&self) -> Format;
    /// The stream's path: the ticket's when the join API gave (Ogg, WebSocket) paths, else
    /// the endpoint's.
    fn path(&self, ep: &Endpoint, ticket: Option<(String, String)>) -> String;
    /// The request that opens the stream at `path`; `nonce` is unique to the attempt.
    fn request(&self, authority: &str, path: &str, nonce: u64) -> String;
    /// The status of the answer that starts the stream.
    fn ok_status(&self) -> u16;
    /// A reader of the stream's bytes.
    fn reader(&self, meter: MeterConfig, timed: bool) -> Reader {
        Reader::new(self.format(), meter, timed)
    }
}

/// levee's WebSocket stream (`/live/{id}/ws`, `docs/protocol.md`).
pub struct WebSocket;

impl Delivery for WebSocket {
    fn format(&self) -> Format {
        Format::Ws
    }
    fn path(&self, ep: &Endpoint, ticket: Option<(String, String)>) -> String {
        ticket.map_or_else(|| ep.ws_path.clone(), |(_, ws)| ws)
    }
    fn request(&self, authority: &str, path: &str, nonce: u64) -> String {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(nonce.to_be_bytes().repeat(2));
        format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: levee-storm\r\n\r\n"
        )
    }
    fn ok_status(&self) -> u16 {
        101
    }
}

/// Progressive Ogg/Opus over HTTP (levee's `/live/{id}.ogg`, or any raw mount).
pub struct ProgressiveOgg;

impl Delivery for ProgressiveOgg {
    fn format(&self) -> Format {
        Format::Ogg
    }
    fn path(&self, ep: &Endpoint, ticket: Option<(String, String)>) -> String {
        ticket.map_or_else(|| ep.ogg_path.clone(), |(ogg, _)| ogg)
    }
    fn request(&self, authority: &str, path: &str, _nonce: u64) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: levee-storm\r\nAccept: audio/ogg\r\n\r\n"
        )
    }
    fn ok_status(&self) -> u16 {
        200
    }
}

/// The delivery of `format`.
pub fn delivery(format: Format) -> &'static dyn Delivery {
    match format {
        Format::Ws => &WebSocket,
        Format::Ogg => &ProgressiveOgg,
        // The engine gives HLS listeners to `crate::actors::hls`, never to a stream worker.
        Format::Hls => unreachable!("HLS listeners are not streams"),
    }
}

/// Token of each worker's waker on its first poll.
const WAKER: Token = Token(usize::MAX);

/// Readiness events taken per poll call.
const EVENTS: usize = 1024;

/// Once every listener of a worker has audio, its first poll wakes at most once in this many
/// µs: arrivals in between are read together at the next wake, each with its own kernel
/// receive timestamp, so a timed listener's frames keep their exact times unless two of its
/// chunks arrive within this window (levee sends a chunk per 20 ms at the most). Attempts
/// still joining turn it off: their connect and answer times are taken when handled.
pub const COALESCE_US: u64 = 5_000;

/// Reads of one socket per readiness event (1 MiB with [`READ_BUF`]), then the next socket.
const READS_PER_EVENT: usize = 16;

/// How long listeners wait for the server's close after the run's end when the space is
/// being ended.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Counters every worker updates as listeners move on.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Sockets open now.
    pub sockets: AtomicU64,
    /// Listeners with audio now.
    pub connected: AtomicU64,
    /// Listeners whose join is under way.
    pub waiting: AtomicU64,
}

/// What every worker of a process shares.
pub struct Ctx {
    /// Where listeners connect.
    pub ep: Endpoint,
    /// The scenario.
    pub sc: Scenario,
    /// The run's start, Unix µs.
    pub start_us: u64,
    /// The run's end, Unix µs.
    pub run_end_us: u64,
    /// The space is ended at the run's end: listeners read until the server closes.
    pub drain: bool,
    /// Source addresses (listener `i` binds `sources[i % len]`); empty: the kernel's choice.
    pub sources: Vec<Ipv4Addr>,
    /// Live counts.
    pub gauges: Gauges,
    /// The run was stopped early.
    pub stop: AtomicBool,
    /// The same, for join tasks.
    pub stop_rx: watch::Receiver<bool>,
    /// Where join-API tasks run.
    pub runtime: tokio::runtime::Handle,
}

impl Ctx {
    pub(crate) fn bounds(&self, scheduled_us: u64, leave_us: u64) -> Bounds {
        let leave = if leave_us >= self.run_end_us && self.drain {
            self.run_end_us + DRAIN.as_micros() as u64
        } else {
            leave_us
        };
        Bounds {
            scheduled_us,
            leave_us: leave,
            end_ok_after_us: self.run_end_us,
        }
    }
}

/// The join times and leave times of one listener's sessions (churn: one per wave it sits
/// out), as (join, leave) offsets from the run's start in µs.
pub fn segments(sc: &Scenario, slot: &Slot) -> Vec<(u64, u64)> {
    let run_end = sc.run_length().as_micros() as u64;
    if sc.audience.is_short(sc.seed, slot.index) {
        // A short listener: one session that ends `short_for` after its join.
        let short = sc.audience.short_for.as_micros() as u64;
        return vec![(slot.join_us, (slot.join_us + short).min(run_end))];
    }
    if sc.kind != Kind::Churn {
        return vec![(slot.join_us, run_end)];
    }
    let c = &sc.churn;
    let first_wave = (crate::plan::scenario::LEAD + sc.ramp).as_micros() as u64;
    let mut out = Vec::new();
    let mut join = slot.join_us;
    for w in 1..=c.waves as u64 {
        let at = first_wave + w * c.wave_every.as_micros() as u64;
        if at <= join || hash3(sc.seed, slot.index, w) >= c.wave_fraction {
            continue;
        }
        out.push((join, at));
        join = match c.reconnect {
            Reconnect::Naive => at,
            Reconnect::Backoff => {
                at + (hash3(sc.seed ^ 0xB0FF, slot.index, w) * c.rejoin_spread.as_micros() as f64)
                    as u64
            }
        };
    }
    out.push((join, run_end));
    out
}

/// One listener's plan over the run, as pure state: which session it is in, how many attempts
/// it made, and when it tries next. Times are Unix µs.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    segments: Box<[(u64, u64)]>,
    seg: usize,
    attempt: u32,
    rng: Rng,
    /// Some attempt got audio.
    pub ever_joined: bool,
    /// When the listener last left in a churn wave, until it has audio again.
    pub left_at: Option<u64>,
    /// Its longest session with audio so far, µs.
    pub longest_us: u64,
}

impl Lifecycle {
    /// The plan of `slot` in a run starting at `start_us`.
    pub fn new(sc: &Scenario, slot: &Slot, start_us: u64) -> Self {
        let segments = segments(sc, slot)
            .into_iter()
            .map(|(j, l)| (start_us + j, start_us + l))
            .collect();
        Lifecycle {
            segments,
            seg: 0,
            attempt: 0,
            rng: Rng::new(sc.seed ^ slot.index.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            ever_joined: false,
            left_at: None,
            longest_us: 0,
        }
    }

    /// The first attempt: (when, planned leave).
    pub fn first(&self) -> Option<(u64, u64)> {
        self.segments.first().copied()
    }

    /// An attempt ended at `now` (failed before audio, or dropped after it): the next attempt
    /// as (when, planned leave), or `None` when the listener is done. `run_end_us` is the
    /// run's end (a leave before it is a churn wave).
    pub fn next(
        &mut self,
        sc: &Scenario,
        failed: bool,
        dropped: bool,
        now: u64,
        run_end_us: u64,
    ) -> Option<(u64, u64)> {
        let (_, leave) = *self.segments.get(self.seg)?;
        self.ever_joined |= !failed;
        self.attempt += 1;
        let c = &sc.churn;
        let retry = if sc.kind != Kind::Churn || self.attempt >= c.max_attempts {
            None
        } else if failed {
            Some(match c.reconnect {
                Reconnect::Naive => c.retry_delay.as_micros() as u64,
                Reconnect::Backoff => {
                    let cap = (c.backoff_base.as_micros() as u64)
                        .saturating_mul(1 << self.attempt.min(20))
                        .min(c.backoff_max.as_micros() as u64);
                    self.rng.below(cap)
                }
            })
        } else if dropped {
            // Dropped by the server mid-session: reconnect as after a failure.
            self.attempt = 0;
            Some(match c.reconnect {
                Reconnect::Naive => c.retry_delay.as_micros() as u64,
                Reconnect::Backoff => self.rng.below(c.backoff_base.as_micros() as u64),
            })
        } else {
            None
        };
        if let Some(delay) = retry {
            let at = now + delay.max(1_000);
            if at < leave {
                return Some((at, leave));
            }
        }
        // This session is over: the next one, if any.
        if leave < run_end_us {
            self.left_at = Some(leave);
        }
        self.seg += 1;
        self.attempt = 0;
        self.segments.get(self.seg).copied()
    }

    /// Attempts made in the current session so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the join API's answer.
    Joining,
    Connecting,
    /// Connected, the request is being written (what is left of it).
    Requesting(Vec<u8>),
    /// Reading the answer head (what arrived of it).
    Head(Vec<u8>),
    Streaming,
}

struct Attempt {
    stream: Option<TcpStream>,
    phase: Phase,
    reader: Reader,
    join: JoinTiming,
    bounds: Bounds,
    connect_deadline_us: u64,
    audio_deadline_us: u64,
    /// The stream's path (the ticket's, when the join API gave one).
    path: Option<String>,
    /// First audio counted (the listener moved from waiting to connected).
    joined: bool,
    /// On the batched poll (or ring).
    batched: bool,
    /// The tag of its receive on the worker's ring; 0: none.
    ring_tag: u32,
}

impl Attempt {
    /// What the server's end of the stream at `now` means: the planned end, or a drop.
    fn at_eof(&self, now: u64) -> Result<(), Failure> {
        if self.joined && now >= self.bounds.end_ok_after_us {
            Ok(())
        } else {
            Err(self
                .reader
                .heard
                .close
                .map_or(Failure::Closed, Failure::WsClose))
        }
    }
}

struct Listener {
    slot: Slot,
    life: Lifecycle,
    nonce: u64,
    /// Bumped at each change of deadline: older heap entries are stale.
    gen: u32,
    /// When idle: the next attempt (when, planned leave).
    next: Option<(u64, u64)>,
    attempt: Option<Attempt>,
}

impl Listener {
    /// The time this listener must next be looked at, if any.
    fn due(&self) -> Option<u64> {
        let Some(a) = &self.attempt else {
            return self.next.map(|n| n.0);
        };
        Some(match a.phase {
            Phase::Joining => a.audio_deadline_us,
            Phase::Connecting => a.connect_deadline_us,
            _ if a.joined => a.bounds.leave_us,
            _ => a.audio_deadline_us,
        })
    }
}

/// What a join-API task sends back.
struct JoinDone {
    key: u32,
    /// The attempt's nonce (unique per attempt).
    attempt: u64,
    record: JoinRecord,
}

/// One listener thread. See the module docs.
pub struct Worker {
    ctx: Arc<Ctx>,
    immediate: Poll,
    batched: Poll,
    waker: Arc<Waker>,
    joins_tx: mpsc::Sender<JoinDone>,
    joins_rx: mpsc::Receiver<JoinDone>,
    slots: std::vec::IntoIter<Slot>,
    pending: Option<Slot>,
    table: Vec<Option<Listener>>,
    free: Vec<u32>,
    live: usize,
    /// Attempts of this worker that have no audio yet (their steps are timed when handled).
    joining: usize,
    timers: Deadlines,
    buf: Vec<u8>,
    /// Keys read in one batched drain, and whether the peer's end came (kept to reuse its
    /// memory).
    ready: Vec<(u32, bool)>,
    shared: Arc<Mutex<Shard>>,
    agg: Aggregate,
    lag: Hist,
    read_every_us: u64,
    next_tick_us: u64,
    /// Batched reads through io_uring, when the kernel offers it (made on the worker's own
    /// thread, see [`Ring`]); else the batched poll.
    ring: Option<Ring>,
    /// The last ring tag given (tags of ended attempts are never reused soon).
    last_tag: u32,
    /// Tags of ended attempts whose receive is to be cancelled at the next drain (at most
    /// one per attempt ended within a read period).
    cancels: Vec<u64>,
    /// A drain of the ring failed (said once on stderr).
    ring_failed: bool,
}

/// What a finished worker hands back.
pub struct WorkerResult {
    /// What its listeners got.
    pub agg: Aggregate,
    /// How late its loop woke, µs.
    pub lag: Hist,
    /// The thread's CPU time, s.
    pub cpu_s: f64,
    /// Its batched reads went through io_uring.
    pub io_uring: bool,
}

impl Worker {
    /// A worker `id` of `workers` for `slots` (sorted by join time), sending frame-level
    /// figures to `shared`.
    pub fn new(
        ctx: Arc<Ctx>,
        id: usize,
        workers: usize,
        slots: Vec<Slot>,
        shared: Arc<Mutex<Shard>>,
    ) -> io::Result<Self> {
        let immediate = Poll::new()?;
        let batched = Poll::new()?;
        let waker = Arc::new(Waker::new(immediate.registry(), WAKER)?);
        // Bounded by the worker's listeners: each has at most one join in flight, and its
        // answer is the only message it sends.
        let (joins_tx, joins_rx) = mpsc::channel();
        let read_every_us = ctx.sc.meter.read_every_ms * 1000;
        // Workers take turns: their batched reads are spread over the period.
        let next_tick_us = ctx.start_us + read_every_us * id as u64 / workers.max(1) as u64;
        Ok(Worker {
            ctx,
            immediate,
            batched,
            waker,
            joins_tx,
            joins_rx,
            slots: slots.into_iter(),
            pending: None,
            table: Vec::new(),
            free: Vec::new(),
            live: 0,
            joining: 0,
            timers: BinaryHeap::new(),
            buf: vec![0; READ_BUF],
            ready: Vec::new(),
            shared,
            agg: Aggregate::default(),
            lag: Hist::new(),
            read_every_us,
            next_tick_us,
            ring: None,
            last_tag: 0,
            cancels: Vec::new(),
            ring_failed: false,
        })
    }

    /// Wakes the worker (to see the stop).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs every slot to its end. See the module docs.
    pub fn run(mut self) -> WorkerResult {
        let mut events = Events::with_capacity(EVENTS);
        if self.read_every_us > 0 && self.ctx.sc.meter.batch_io != BatchIo::Epoll {
            match Ring::new() {
                Ok(r) => self.ring = Some(r),
                Err(e) if self.ctx.sc.meter.batch_io == BatchIo::IoUring => {
                    eprintln!("storm: io_uring refused ({e}); batched reads use epoll");
                }
                Err(_) => {}
            }
        }
        let hard_end = self.ctx.run_end_us + DRAIN.as_micros() as u64 + 10_000_000;
        self.pending = self.slots.next();
        let mut coalesce_until = 0;
        loop {
            let now = now_us();
            let stopping = self.ctx.stop.load(Relaxed) || now >= hard_end;
            if stopping {
                self.stop_all(now);
                break;
            }
            {
                let shared = self.shared.clone();
                let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
                self.admit(now, &mut sh);
                self.fire_timers(now, &mut sh);
                if self.read_every_us > 0 && now >= self.next_tick_us {
                    self.next_tick_us =
                        now - (now - self.next_tick_us) % self.read_every_us + self.read_every_us;
                    self.drain_batched(&mut events, &mut sh);
                }
            }
            if self.pending.is_none() && self.live == 0 {
                break;
            }
            let wake = self.next_wake();
            let mut now = now_us();
            let quiet = coalesce_until.min(wake).saturating_sub(now);
            if quiet > 0 && self.joining == 0 {
                // Every listener here is timed by the kernel's stamps: wake once for the
                // arrivals of the next COALESCE_US rather than once for each.
                std::thread::sleep(Duration::from_micros(quiet));
                now = now_us();
            }
            let timeout = Duration::from_micros(wake.saturating_sub(now));
            if self.immediate.poll(&mut events, Some(timeout)).is_err() {
                continue;
            }
            let woke = now_us();
            if events.is_empty() {
                self.lag.record(woke.saturating_sub(wake));
            } else {
                coalesce_until = woke + COALESCE_US;
            }
            let shared = self.shared.clone();
            let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.take_joins(&mut sh);
                } else {
                    self.on_event(ev.token().0 as u32, ev.is_read_closed(), &mut sh);
                }
            }
        }
        WorkerResult {
            io_uring: self.ring.is_some(),
            agg: self.agg,
            lag: self.lag,
            cpu_s: crate::net::clock::thread_cpu_s(),
        }
    }

    fn next_wake(&mut self) -> u64 {
        let mut wake = now_us() + 1_000_000;
        let table = &self.table;
        let live = |key: u32, gen: u32| table[key as usize].as_ref().is_some_and(|l| l.gen == gen);
        if let Some(at) = next_deadline(&mut self.timers, live) {
            wake = wake.min(at);
        }
        if let Some(s) = &self.pending {
            wake = wake.min(self.ctx.start_us + s.join_us);
        }
        if self.read_every_us > 0 {
            wake = wake.min(self.next_tick_us);
        }
        wake
    }

    /// Starts the listeners whose first join is due.
    fn admit(&mut self, now: u64, sh: &mut Shard) {
        while let Some(slot) = self.pending.take() {
            if self.ctx.start_us + slot.join_us > now {
                self.pending = Some(slot);
                return;
            }
            self.pending = self.slots.next();
            let life = Lifecycle::new(&self.ctx.sc, &slot, self.ctx.start_us);
            let next = life.first();
            let l = Listener {
                nonce: slot.index << 16,
                slot,
                life,
                gen: 0,
                next,
                attempt: None,
            };
            let key = match self.free.pop() {
                Some(k) => {
                    self.table[k as usize] = Some(l);
                    k
                }
                None => {
                    self.table.push(Some(l));
                    (self.table.len() - 1) as u32
                }
            };
            self.live += 1;
            self.arm(key);
            self.fire(key, now, sh);
        }
    }

    /// Pushes the listener's next deadline.
    fn arm(&mut self, key: u32) {
        if let Some(l) = self.table[key as usize].as_mut() {
            l.gen = l.gen.wrapping_add(1);
            if let Some(due) = l.due() {
                self.timers.push(Reverse((due, key, l.gen)));
            }
        }
    }

    fn fire_timers(&mut self, now: u64, sh: &mut Shard) {
        while let Some(&Reverse((at, key, gen))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            if self.table[key as usize]
                .as_ref()
                .is_some_and(|l| l.gen == gen)
            {
                self.fire(key, now, sh);
            }
        }
    }

    /// The listener's deadline came: start the next attempt, or end the current one.
    fn fire(&mut self, key: u32, now: u64, sh: &mut Shard) {
        let Some(l) = self.table[key as usize].as_mut() else {
            return;
        };
        let Some(a) = &l.attempt else {
            if let Some((at, leave)) = l.next {
                if at <= now {
                    l.next = None;
                    self.start(key, at, leave, now, sh);
                }
            }
            return;
        };
        if l.due().is_some_and(|d| d > now) {
            return;
        }
        let outcome = match a.phase {
            _ if a.joined => Ok(()),
            Phase::Joining => Err(Failure::Timeout("join")),
            Phase::Connecting => Err(Failure::Timeout("connect")),
            Phase::Requesting(_) | Phase::Head(_) => Err(Failure::Timeout("response")),
            Phase::Streaming => Err(Failure::Timeout("first_audio")),
        };
        self.end(key, outcome, sh);
    }

    /// Starts an attempt scheduled at `at` (planned leave `leave`).
    fn start(&mut self, key: u32, at: u64, leave: u64, now: u64, sh: &mut Shard) {
        let ctx = self.ctx.clone();
        let Some(l) = self.table[key as usize].as_mut() else {
            return;
        };
        if at >= leave {
            self.after(key, true, false, now);
            return;
        }
        l.nonce += 1;
        let bounds = ctx.bounds(at, leave);
        let audio_deadline_us =
            (at + ctx.sc.first_audio_timeout.as_micros() as u64).min(bounds.leave_us);
        let timed = ctx.sc.meter.timed(l.slot.index);
        l.attempt = Some(Attempt {
            stream: None,
            phase: Phase::Joining,
            reader: delivery(l.slot.format).reader(ctx.sc.meter, timed),
            join: JoinTiming {
                scheduled_us: at,
                started_us: Some(now),
                ..JoinTiming::default()
            },
            bounds,
            connect_deadline_us: (at + ctx.sc.connect_timeout.as_micros() as u64)
                .min(audio_deadline_us),
            audio_deadline_us,
            path: None,
            joined: false,
            batched: false,
            ring_tag: 0,
        });
        ctx.gauges.waiting.fetch_add(1, Relaxed);
        self.joining += 1;
        if crate::plan::scenario::mode(&ctx.sc) == JoinMode::Api {
            let (tx, waker, attempt) = (self.joins_tx.clone(), self.waker.clone(), l.nonce);
            let source = source_of(&ctx.sources, &l.slot);
            let seed = l.nonce.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ at;
            let stop = ctx.stop_rx.clone();
            let c = ctx.clone();
            ctx.runtime.spawn(async move {
                let record =
                    crate::actors::join::join(&c.ep, source, at, audio_deadline_us, stop, seed)
                        .await;
                if tx
                    .send(JoinDone {
                        key,
                        attempt,
                        record,
                    })
                    .is_ok()
                {
                    let _ = waker.wake();
                }
            });
            self.arm(key);
            return;
        }
        self.connect(key, sh);
    }

    fn take_joins(&mut self, sh: &mut Shard) {
        while let Ok(done) = self.joins_rx.try_recv() {
            let Some(l) = self.table[done.key as usize].as_mut() else {
                continue;
            };
            let Some(a) = l.attempt.as_mut() else {
                continue;
            };
            if !matches!(a.phase, Phase::Joining) || l.nonce != done.attempt {
                continue;
            }
            self.agg.join_api.record(&done.record);
            match done.record.paths.clone() {
                Some((ogg, ws)) => {
                    let now = now_us();
                    a.path = Some(delivery(l.slot.format).path(&self.ctx.ep, Some((ogg, ws))));
                    // The connect bound counts from when the ticket came.
                    a.connect_deadline_us = (now + self.ctx.sc.connect_timeout.as_micros() as u64)
                        .min(a.audio_deadline_us);
                    self.connect(done.key, sh);
                }
                None => {
                    let why = done.record.failure.unwrap_or(Failure::Timeout("join"));
                    self.end(done.key, Err(why), sh);
                }
            }
        }
    }

    /// Opens the attempt's connection.
    fn connect(&mut self, key: u32, sh: &mut Shard) {
        let Some(l) = self.table[key as usize].as_ref() else {
            return;
        };
        let source = source_of(&self.ctx.sources, &l.slot);
        let token = Token(key as usize);
        let opened = crate::net::socket::open(self.ctx.ep.addr, source).and_then(|mut s| {
            self.immediate.registry().register(
                &mut s,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match opened {
            Ok(s) => {
                self.ctx.gauges.sockets.fetch_add(1, Relaxed);
                if let Some(a) = self.table[key as usize]
                    .as_mut()
                    .and_then(|l| l.attempt.as_mut())
                {
                    a.stream = Some(s);
                    a.phase = Phase::Connecting;
                }
                self.arm(key);
            }
            Err(e) => self.end(key, Err(Failure::from_io(&e)), sh),
        }
    }

    /// A readiness event of listener `key`; `closed`: the peer's end of the stream came with
    /// it.
    fn on_event(&mut self, key: u32, closed: bool, sh: &mut Shard) {
        let now = now_us();
        let ep = &self.ctx.ep;
        let Some(l) = self.table[key as usize].as_mut() else {
            return;
        };
        let nonce = l.nonce;
        let Some(a) = l.attempt.as_mut() else {
            return;
        };
        if matches!(a.phase, Phase::Connecting) {
            let Some(s) = a.stream.as_ref() else { return };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => return self.end(key, Err(Failure::from_io(&e)), sh),
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.end(key, Err(Failure::from_io(&e)), sh),
            }
            a.join.connected_us = Some(now);
            let d = delivery(a.reader.format());
            let path = a.path.take().unwrap_or_else(|| d.path(ep, None));
            a.phase = Phase::Requesting(d.request(&ep.authority, &path, nonce).into_bytes());
            self.arm(key);
        }
        let Some(a) = attempt_mut(&mut self.table, key) else {
            return;
        };
        if let Phase::Requesting(out) = &mut a.phase {
            let Some(s) = a.stream.as_mut() else { return };
            match s.write(out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return self.end(key, Err(Failure::from_io(&e)), sh),
            }
            if !out.is_empty() {
                return;
            }
            a.phase = Phase::Head(Vec::new());
        }
        self.read(key, closed, sh);
    }

    /// Reads what the socket has and feeds it on; with `closed`, on to the end of the stream
    /// (the event that announced it may have come with the last bytes, and no other follows).
    fn read(&mut self, key: u32, closed: bool, sh: &mut Shard) {
        let mut buf = std::mem::take(&mut self.buf);
        let out = self.read_with(key, closed, &mut buf, sh);
        self.buf = buf;
        if let Err(f) = out {
            self.end(key, Err(f), sh);
        }
    }

    fn read_with(
        &mut self,
        key: u32,
        closed: bool,
        buf: &mut [u8],
        sh: &mut Shard,
    ) -> Result<(), Failure> {
        for _ in 0..READS_PER_EVENT {
            let Some(a) = attempt_mut(&mut self.table, key) else {
                return Ok(());
            };
            let Some(s) = a.stream.as_ref() else {
                return Ok(());
            };
            let (n, stamp) = match recv_stamped(s.as_raw_fd(), buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::from_io(&e)),
            };
            let now = now_us();
            let arrival = stamp.filter(|&t| t <= now).unwrap_or(now);
            if n == 0 {
                let outcome = a.at_eof(now);
                self.end(key, outcome, sh);
                return Ok(());
            }
            let data = &buf[..n];
            match &mut a.phase {
                Phase::Head(head) => {
                    let parsed = if head.is_empty() {
                        http::parse_head(data).map(|h| h.map(|h| (h.status, h.len, data)))
                    } else {
                        if head.len() + n > crate::net::http::MAX_HEAD {
                            return Err(Failure::Protocol("http_head_too_large"));
                        }
                        head.extend_from_slice(data);
                        http::parse_head(head).map(|h| h.map(|h| (h.status, h.len, &head[..])))
                    };
                    match parsed {
                        Err(_) => return Err(Failure::Protocol("bad_http_answer")),
                        Ok(None) => {
                            if head.is_empty() {
                                if n > crate::net::http::MAX_HEAD {
                                    return Err(Failure::Protocol("http_head_too_large"));
                                }
                                head.extend_from_slice(data);
                            }
                        }
                        Ok(Some((status, len, all))) => {
                            let want = delivery(a.reader.format()).ok_status();
                            a.join.response_us = Some(now);
                            if status != want {
                                return Err(Failure::Http(status));
                            }
                            let rest = all[len..].to_vec();
                            a.phase = Phase::Streaming;
                            a.reader
                                .feed(&rest, arrival, sh)
                                .map_err(Failure::Protocol)?;
                        }
                    }
                }
                Phase::Streaming => {
                    a.reader
                        .feed(data, arrival, sh)
                        .map_err(Failure::Protocol)?;
                }
                _ => return Ok(()),
            }
            if let Some(done) = self.after_feed(key, sh) {
                return done;
            }
            // A short read took everything there was, unless the end of the stream is
            // pending behind it.
            if n < buf.len() && !closed {
                return Ok(());
            }
        }
        Ok(())
    }

    /// After new audio: count the join, see the close, move to the batched poll.
    fn after_feed(&mut self, key: u32, sh: &mut Shard) -> Option<Result<(), Failure>> {
        let ctx = self.ctx.clone();
        let a = attempt_mut(&mut self.table, key)?;
        if !a.joined {
            if let Some(t) = a.reader.heard.first_audio_us {
                a.joined = true;
                ctx.gauges.waiting.fetch_sub(1, Relaxed);
                self.joining -= 1;
                ctx.gauges.connected.fetch_add(1, Relaxed);
                a.join.first_audio_us = Some(t);
                sh.point.joins += 1;
                sh.point.ttfa.record(t.saturating_sub(a.join.scheduled_us));
                if self.read_every_us > 0 && !a.reader.timed() {
                    if let Some(s) = a.stream.as_mut() {
                        let moved =
                            self.immediate.registry().deregister(s).and_then(|_| {
                                match self.ring.as_mut() {
                                    Some(ring) => {
                                        self.last_tag = self.last_tag.checked_add(1).unwrap_or(1);
                                        a.ring_tag = self.last_tag;
                                        ring.arm(s.as_raw_fd(), ring_tag(key, a.ring_tag))
                                    }
                                    None => self.batched.registry().register(
                                        s,
                                        Token(key as usize),
                                        Interest::READABLE,
                                    ),
                                }
                            });
                        if let Err(e) = moved {
                            return Some(Err(Failure::from_io(&e)));
                        }
                        a.batched = true;
                    }
                }
                self.arm(key);
            }
        }
        let a = attempt_mut(&mut self.table, key)?;
        if let Some(code) = a.reader.heard.close {
            let outcome = if a.joined && now_us() >= a.bounds.end_ok_after_us {
                Ok(())
            } else {
                Err(Failure::WsClose(code))
            };
            self.end(key, outcome, sh);
            return Some(Ok(()));
        }
        None
    }

    /// Reads every listener of the batched poll that has bytes.
    fn drain_batched(&mut self, events: &mut Events, sh: &mut Shard) {
        if let Some(mut ring) = self.ring.take() {
            let mut out = Ok(());
            for tag in std::mem::take(&mut self.cancels) {
                out = out.and(ring.cancel(tag));
            }
            let out = out.and_then(|_| ring.drain(|tag, got| self.on_ring(tag, got, sh)));
            self.ring = Some(ring);
            if let Err(e) = out {
                // Not expected once the ring works; its listeners would stall, which the
                // report shows.
                if !std::mem::replace(&mut self.ring_failed, true) {
                    eprintln!("storm: io_uring drain failed: {e}");
                }
            }
            return;
        }
        loop {
            if self.batched.poll(events, Some(Duration::ZERO)).is_err() {
                return;
            }
            if events.is_empty() {
                return;
            }
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(
                events
                    .iter()
                    .map(|e| (e.token().0 as u32, e.is_read_closed())),
            );
            for &(key, closed) in &ready {
                self.read(key, closed, sh);
            }
            self.ready = ready;
            if events.iter().count() < EVENTS {
                return;
            }
        }
    }

    /// A completion of the ring for `tag`: feeds the listener's reader, or ends it. Returns
    /// its socket while it is to be read on.
    fn on_ring(&mut self, tag: u64, got: Got<'_>, sh: &mut Shard) -> Option<RawFd> {
        let key = tag as u32;
        let a = attempt_mut(&mut self.table, key)?;
        if a.ring_tag != (tag >> 32) as u32 {
            return None;
        }
        let fd = a.stream.as_ref()?.as_raw_fd();
        let now = now_us();
        match got {
            Got::Again => Some(fd),
            Got::Data { bytes, stamp } => {
                let arrival = stamp.filter(|&t| t <= now).unwrap_or(now);
                if let Err(why) = a.reader.feed(bytes, arrival, sh) {
                    self.end(key, Err(Failure::Protocol(why)), sh);
                    return None;
                }
                match self.after_feed(key, sh) {
                    None => Some(fd),
                    Some(Ok(())) => None,
                    Some(Err(f)) => {
                        self.end(key, Err(f), sh);
                        None
                    }
                }
            }
            Got::End(Ok(())) => {
                let outcome = a.at_eof(now);
                self.end(key, outcome, sh);
                None
            }
            Got::End(Err(e)) => {
                self.end(key, Err(Failure::from_io(&e)), sh);
                None
            }
        }
    }

    /// Ends the listener's current attempt with `outcome` and records it.
    fn end(&mut self, key: u32, outcome: Result<(), Failure>, sh: &mut Shard) {
        let ctx = self.ctx.clone();
        let Some(l) = self.table[key as usize].as_mut() else {
            return;
        };
        let Some(mut a) = l.attempt.take() else {
            return;
        };
        let now = now_us();
        if let Some(mut s) = a.stream.take() {
            if a.ring_tag != 0 {
                // The ring's receive holds the socket open: shutting it down ends the
                // connection now (and the receive with it); the cancel is for good measure.
                let _ = s.shutdown(std::net::Shutdown::Both);
                self.cancels.push(ring_tag(key, a.ring_tag));
            }
            let poll = if a.batched {
                &self.batched
            } else {
                &self.immediate
            };
            let _ = poll.registry().deregister(&mut s);
            ctx.gauges.sockets.fetch_sub(1, Relaxed);
        }
        if a.joined {
            ctx.gauges.connected.fetch_sub(1, Relaxed);
        } else {
            ctx.gauges.waiting.fetch_sub(1, Relaxed);
            self.joining -= 1;
        }
        let (join_failure, drop) = match outcome {
            Ok(()) => (None, None),
            Err(f) if a.joined => (None, Some(f)),
            Err(f) => (Some(f), None),
        };
        sh.point.failures += join_failure.is_some() as u64;
        sh.point.drops += drop.is_some() as u64;
        let timed = a.reader.timed();
        let rec = SessionRecord {
            format: l.slot.format,
            join: a.join,
            join_failure,
            drop,
            bytes: a.reader.heard.bytes,
            pages: a.reader.heard.pages,
            requests: 0,
            timed,
            listened_us: a.join.first_audio_us.map_or(0, |t| now.saturating_sub(t)),
            summary: a
                .reader
                .heard
                .meter
                .finish(now.min(a.bounds.leave_us).min(a.bounds.end_ok_after_us)),
        };
        let (failed, dropped) = (rec.join_failure.is_some(), rec.drop.is_some());
        account(&mut self.agg, &mut l.life, &rec);
        self.after(key, failed, dropped, now);
    }

    /// Plans the listener's next attempt, or retires it.
    fn after(&mut self, key: u32, failed: bool, dropped: bool, now: u64) {
        let ctx = self.ctx.clone();
        let Some(l) = self.table[key as usize].as_mut() else {
            return;
        };
        let next = if ctx.stop.load(Relaxed) {
            l.life.ever_joined |= !failed;
            None
        } else {
            l.life.next(&ctx.sc, failed, dropped, now, ctx.run_end_us)
        };
        match next {
            Some(n) => {
                l.next = Some(n);
                self.arm(key);
            }
            None => {
                let joined = l.life.ever_joined;
                self.agg.record_slot(joined);
                if joined {
                    let view_after = ctx.sc.audience.view_after.map(|d| d.as_micros() as u64);
                    self.agg
                        .audience
                        .record_listener(l.life.longest_us, view_after);
                }
                self.table[key as usize] = None;
                self.free.push(key);
                self.live -= 1;
            }
        }
    }

    /// The run stops: every attempt ends as at its deadline, idle listeners retire.
    fn stop_all(&mut self, now: u64) {
        let shared = self.shared.clone();
        let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
        for key in 0..self.table.len() as u32 {
            let Some(l) = self.table[key as usize].as_ref() else {
                continue;
            };
            match &l.attempt {
                Some(a) => {
                    let outcome = if a.joined {
                        Ok(())
                    } else {
                        Err(Failure::Timeout("first_audio"))
                    };
                    self.end(key, outcome, &mut sh);
                }
                None => self.after(key, true, false, now),
            }
        }
    }
}

/// Adds one ended session of a listener to `agg`: its figures, a retry when it followed a
/// failed attempt, the time to rejoin after a churn wave. Every kind of listener ends its
/// sessions here.
pub(crate) fn account(agg: &mut Aggregate, life: &mut Lifecycle, rec: &SessionRecord) {
    agg.record_session(rec);
    if rec.join_failure.is_none() {
        life.longest_us = life.longest_us.max(rec.listened_us);
        agg.audience.sessions += 1;
        agg.audience.listen_us += rec.listened_us;
    }
    if life.attempt() > 0 && rec.drop.is_none() {
        agg.retries += 1;
    }
    if let (Some(left), Some(audio)) = (life.left_at, rec.join.first_audio_us) {
        agg.rejoin.record(audio.saturating_sub(left));
        life.left_at = None;
    }
}

/// A heap of listener deadlines `(at, key, gen)`.
type Deadlines = BinaryHeap<Reverse<(u64, u32, u32)>>;

/// The earliest deadline still `live(key, gen)`; the replaced ones before it (a joined
/// listener's first-audio bound, say) are dropped, so that they wake no one.
fn next_deadline(timers: &mut Deadlines, live: impl Fn(u32, u32) -> bool) -> Option<u64> {
    while let Some(&Reverse((at, key, gen))) = timers.peek() {
        if live(key, gen) {
            return Some(at);
        }
        timers.pop();
    }
    None
}

/// The ring's tag of listener `key`'s receive `tag`.
fn ring_tag(key: u32, tag: u32) -> u64 {
    key as u64 | (tag as u64) << 32
}

/// The source address listener `slot` binds (none: the kernel's choice).
pub(crate) fn source_of(sources: &[Ipv4Addr], slot: &Slot) -> Option<Ipv4Addr> {
    (!sources.is_empty()).then(|| sources[slot.index as usize % sources.len()])
}

fn attempt_mut(table: &mut [Option<Listener>], key: u32) -> Option<&mut Attempt> {
    table.get_mut(key as usize)?.as_mut()?.attempt.as_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scenario;

    #[test]
    fn replaced_deadlines_wake_no_one() {
        let mut timers = Deadlines::new();
        // Listener 1's first-audio bound (gen 1) was replaced by its leave (gen 2); listener
        // 2 is gone; listener 3's deadline is live.
        timers.push(Reverse((10, 1, 1)));
        timers.push(Reverse((20, 2, 1)));
        timers.push(Reverse((30, 3, 1)));
        timers.push(Reverse((900, 1, 2)));
        let live = |key: u32, gen: u32| matches!((key, gen), (1, 2) | (3, 1));
        assert_eq!(next_deadline(&mut timers, live), Some(30));
        assert_eq!(timers.len(), 2, "the replaced deadlines are dropped");
        timers.pop();
        assert_eq!(next_deadline(&mut timers, live), Some(900));
        timers.pop();
        assert_eq!(next_deadline(&mut timers, live), None);
    }

    #[test]
    fn churn_segments_leave_at_waves_and_rejoin_by_policy() {
        let mut sc = Scenario::new(Kind::Churn, 100);
        sc.ramp = Duration::from_secs(1);
        sc.hold = Duration::from_secs(2);
        sc.churn.waves = 2;
        sc.churn.wave_every = Duration::from_secs(3);
        sc.churn.wave_fraction = 1.0;
        sc.churn.reconnect = Reconnect::Naive;
        let slots = scenario::schedule(&sc);
        let segs = segments(&sc, &slots[10]);
        // Everyone leaves at both waves (1.5 s + 3 s, + 6 s) and rejoins at once.
        assert_eq!(
            segs,
            [
                (slots[10].join_us, 4_500_000),
                (4_500_000, 7_500_000),
                (7_500_000, 9_500_000)
            ]
        );
        sc.churn.reconnect = Reconnect::Backoff;
        for s in &slots {
            let segs = segments(&sc, s);
            assert_eq!(segs.len(), 3);
            assert!((4_500_000..5_500_000).contains(&segs[1].0));
        }
        sc.churn.wave_fraction = 0.0;
        assert_eq!(segments(&sc, &slots[3]).len(), 1);
    }

    #[test]
    fn a_listener_retries_a_failed_join_within_its_session_then_moves_on() {
        let mut sc = Scenario::new(Kind::Churn, 10);
        sc.ramp = Duration::from_secs(1);
        sc.hold = Duration::from_secs(2);
        sc.churn.waves = 1;
        sc.churn.wave_every = Duration::from_secs(3);
        sc.churn.wave_fraction = 1.0;
        sc.churn.reconnect = Reconnect::Naive;
        sc.churn.retry_delay = Duration::from_millis(200);
        sc.churn.max_attempts = 3;
        let slot = scenario::schedule(&sc)[0];
        let run_end = sc.run_length().as_micros() as u64;
        let mut life = Lifecycle::new(&sc, &slot, 0);
        let (at, leave) = life.first().unwrap();
        assert_eq!((at, leave), (slot.join_us, 4_500_000));
        // Two failures: retried 200 ms later each time; the third ends this session.
        assert_eq!(
            life.next(&sc, true, false, at, run_end),
            Some((at + 200_000, leave))
        );
        assert_eq!(
            life.next(&sc, true, false, at + 200_000, run_end),
            Some((at + 400_000, leave))
        );
        assert_eq!(
            life.next(&sc, true, false, at + 400_000, run_end),
            Some((4_500_000, run_end))
        );
        assert_eq!(life.left_at, Some(4_500_000));
        assert!(!life.ever_joined);
        // Audio, then the planned end: done.
        assert_eq!(life.next(&sc, false, false, run_end, run_end), None);
        assert!(life.ever_joined);
        // Not churn: one attempt, whatever happened.
        let sc = Scenario::new(Kind::Capacity, 10);
        let mut life = Lifecycle::new(&sc, &slot, 0);
        assert_eq!(life.next(&sc, true, false, 1, run_end), None);
    }
}
