//! The fan-out engine: a space's programme packaged once per format, written to every listener
//! by a few writer shards.
//!
//! ```text
//!  publish ─► Track: packet stream ─► muxers (Ogg, WebSocket) ─► rings ─► windows (Arc)
//!                                                                            │ notify once per
//!                                                                            ▼ chunk per shard
//!  shard 0 … shard N-1 (one thread each, own epoll): walk the space's listeners, one
//!  non-blocking vectored write of the shared bytes each; only a full socket leaves the
//!  fast path and waits for writability, with its stall clock
//! ```
//!
//! - [`track`]: the packet stream, muxers, rings and windows of one space.
//! - [`shard`]: the writer shard's logic, sans IO: listeners are plain slots, time is injected,
//!   the socket is anything that implements [`shard::Conn`] (tests use an in-memory one).
//! - [`poll`]: the thin IO adapter: one thread per shard around a `mio` poll.
//!
//! A listener costs a slot, its socket and its registration in the shard's epoll; no task, no
//! future, no buffer of its own. Measured (`docs/benchmarks.md` §0, 2 vCPUs, loopback): 222
//! heap bytes per Ogg listener and 373 per WebSocket listener (`cargo bench -p levee-server
//! --bench listener_memory`); server CPU 1.16× the ideal server's at 5,000 listeners (59.8 vs
//! 51.4 µs per listener-second, 120 ms chunks) and 1.19× at 15,000 (26.4 vs 22.2 µs, 360 ms),
//! side by side in one run of `bench/floor.sh`.

pub mod poll;
pub mod shard;
pub mod track;

pub use track::{Track, TrackCounters};

use bytes::Bytes;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Which delivery format a listener reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Progressive Ogg/Opus over HTTP.
    Ogg,
    /// levee's WebSocket messages.
    Ws,
}

/// Every format, in index order.
pub const FORMATS: [Format; 2] = [Format::Ogg, Format::Ws];

impl Format {
    /// Label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Format::Ogg => "ogg",
            Format::Ws => "ws",
        }
    }
    /// Index into per-format counters.
    pub fn idx(self) -> usize {
        self as usize
    }
}

/// The bounds the engine enforces (set from the server's `Config`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Writer shards (threads).
    pub shards: usize,
    /// Chunks kept per space and format (the fan-out window).
    pub ring_chunks: usize,
    /// Chunks behind the live edge a new or lagging listener starts at.
    pub join_backlog: u64,
    /// Most chunks one write carries.
    pub max_batch: usize,
    /// A listener whose socket accepts nothing for this long is cut.
    pub stall_timeout: Duration,
    /// Time a WebSocket listener gets to answer our close frame.
    pub close_linger: Duration,
    /// Largest message a WebSocket listener may send.
    pub max_ws_message: usize,
    /// Bytes a progressive-Ogg listener may send after its request before it is dropped.
    pub max_ogg_upload: usize,
    /// Audio a listener takes before its owner hears [`Session::viewed`] (the view rule).
    pub view_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            shards: 2,
            ring_chunks: 256,
            join_backlog: 1,
            max_batch: 64,
            stall_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(1),
            max_ws_message: 1024,
            max_ogg_upload: 16 * 1024,
            view_after: Duration::from_secs(levee_core::audience::DEFAULT_VIEW_AFTER_S),
        }
    }
}

/// A listener on its way to a shard.
pub struct NewListener<C, G> {
    /// Its space.
    pub track: Arc<Track>,
    /// Its socket (its response head already written).
    pub conn: C,
    /// What it reads.
    pub format: Format,
    /// Bytes it sent after its request head (WebSocket frames, maybe).
    pub rest: Bytes,
    /// Dropped when the listener leaves (gives back its connection's accounting).
    pub guard: G,
}

/// What the shards tell a listener's owner while it listens (the audience numbers hang on it).
pub trait Session: Send {
    /// It took [`Limits::view_after`] of audio: called once, from the write that passed it.
    fn viewed(&mut self) {}
    /// It leaves, having taken audio for `listened_us` (from its join to its last progress:
    /// for a stalled listener, until its socket filled), for `why`. Called once, just before
    /// it is dropped; a shard that goes away drops its listeners without it.
    fn left(&mut self, _listened_us: u64, _why: shard::Leave) {}
}

impl Session for () {}

impl<T: Session + ?Sized> Session for Box<T> {
    fn viewed(&mut self) {
        (**self).viewed()
    }
    fn left(&mut self, listened_us: u64, why: shard::Leave) {
        (**self).left(listened_us, why)
    }
}

/// What the server hands the shards with a listener: told of its view and its leaving, then
/// dropped (which gives back its connection's accounting).
pub type Guard = Box<dyn Session>;

/// A shard's mailbox: new listeners and tracks with new chunks.
pub struct Inbox {
    adds: Mutex<Vec<NewListener<TcpStream, Guard>>>,
    tracks: Mutex<Vec<Arc<Track>>>,
    pending: AtomicBool,
    waker: OnceLock<mio::Waker>,
    /// Its thread died (a bug): it takes nothing more, and its mailbox stays empty.
    dead: AtomicBool,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            adds: Mutex::new(Vec::new()),
            tracks: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            waker: OnceLock::new(),
            dead: AtomicBool::new(false),
        }
    }

    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.waker.get() {
                let _ = w.wake();
            }
        }
    }

    pub(crate) fn push_track(&self, track: Arc<Track>) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        self.tracks.lock().expect("inbox lock").push(track);
        self.wake();
    }

    /// Marks the shard dead and drops what waited for it (listeners counted out).
    pub(crate) fn die(&self, node_listeners: &AtomicU64) {
        self.dead.store(true, Ordering::Release);
        if let Ok(mut adds) = self.adds.lock() {
            for l in adds.drain(..) {
                l.track.counters.listeners[l.format.idx()].fetch_sub(1, Ordering::Relaxed);
                node_listeners.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.tracks.lock().map(|mut t| t.clear()).ok();
    }

    /// Takes everything queued; the shard calls it after each wake-up.
    pub(crate) fn drain(
        &self,
        adds: &mut Vec<NewListener<TcpStream, Guard>>,
        tracks: &mut Vec<Arc<Track>>,
    ) {
        self.pending.store(false, Ordering::Release);
        adds.append(&mut self.adds.lock().expect("inbox lock"));
        tracks.append(&mut self.tracks.lock().expect("inbox lock"));
    }
}

/// The node's fan-out: shard mailboxes, the node-wide listener gauge and the bounds.
pub struct Fanout {
    pub(crate) inboxes: Box<[Inbox]>,
    /// Listeners on the whole node now.
    pub listeners: AtomicU64,
    /// Bounds in force.
    pub limits: Limits,
    stop: AtomicBool,
}

impl Fanout {
    /// An engine with `limits.shards` mailboxes and no thread yet (see [`Fanout::start`]).
    pub fn new(mut limits: Limits) -> Arc<Self> {
        limits.shards = limits.shards.max(1);
        Arc::new(Fanout {
            inboxes: (0..limits.shards).map(|_| Inbox::new()).collect(),
            listeners: AtomicU64::new(0),
            limits,
            stop: AtomicBool::new(false),
        })
    }

    /// Starts one writer thread per shard.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        for id in 0..self.shards() {
            poll::spawn(self.clone(), id)?;
        }
        Ok(())
    }

    /// Asks the writer threads to stop (their listeners are dropped).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for inbox in self.inboxes.iter() {
            inbox.pending.store(false, Ordering::Release);
            inbox.wake();
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Number of writer shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Counts a listener in (space and node gauges, joins). Call before [`Fanout::attach`], as
    /// soon as it is admitted, so that admission sees it at once.
    pub fn admit(&self, track: &Track, format: Format) {
        let c = &track.counters;
        c.joins[format.idx()].fetch_add(1, Ordering::Relaxed);
        c.listeners[format.idx()].fetch_add(1, Ordering::Relaxed);
        self.listeners.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands an admitted listener (see [`Fanout::admit`]) to one of the track's shards (the
    /// next living one: a shard whose thread died takes nothing more).
    pub fn attach(&self, listener: NewListener<TcpStream, Guard>) {
        let first = listener.track.pick_shard();
        let n = self.shards();
        let Some(inbox) = (0..n)
            .map(|i| &self.inboxes[(first + i) % n])
            .find(|inbox| !inbox.dead.load(Ordering::Acquire))
        else {
            // No shard left: the listener is counted out and its socket closed.
            let c = &listener.track.counters;
            c.listeners[listener.format.idx()].fetch_sub(1, Ordering::Relaxed);
            self.listeners.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        inbox.adds.lock().expect("inbox lock").push(listener);
        inbox.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_media::opus::OpusHead;

    fn socket() -> TcpStream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.accept().unwrap().0
    }

    #[test]
    fn a_dead_shard_takes_no_listener_and_none_left_counts_it_out() {
        let fanout = Fanout::new(Limits {
            shards: 2,
            ..Limits::default()
        });
        let track = Track::new(OpusHead::new(1), 1, "t", fanout.clone());
        fanout.inboxes[0].die(&fanout.listeners);
        let join = || {
            fanout.admit(&track, Format::Ogg);
            fanout.attach(NewListener {
                track: track.clone(),
                conn: socket(),
                format: Format::Ogg,
                rest: Bytes::new(),
                guard: Box::new(()),
            });
        };
        for _ in 0..3 {
            join();
        }
        let queued = |i: usize| fanout.inboxes[i].adds.lock().unwrap().len();
        assert_eq!((queued(0), queued(1)), (0, 3));
        fanout.inboxes[1].die(&fanout.listeners);
        join();
        assert_eq!(queued(1), 0, "a dead shard's mailbox is emptied");
        assert_eq!(fanout.listeners.load(Ordering::Relaxed), 0);
        assert_eq!(track.listeners(), 0);
    }
}
