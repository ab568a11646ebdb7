//! The node's spaces and their live tracks: the shared state every connection works on.
//!
//! A [`Track`] joins the pure [`Packager`] and [`Ring`] to a `watch` channel that wakes every
//! listener of the space when a chunk lands. Locks are held only to push or to clone a few
//! `Bytes` handles; no IO ever happens under a lock.

use crate::config::Config;
use crate::metrics::SpaceCounters;
use crate::shield::{Access, Shield, SpaceShield};
use bytes::Bytes;
use levee_core::packager::{AudioPacket, Chunk, Packager};
use levee_core::ring::{Read, Ring};
use levee_core::space::{NewSpace, SpaceInfo, SpaceState};
use levee_media::opus::OpusHead;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What listeners wait on: the ring's live edge, and whether the space ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// One past the newest chunk.
    pub head: u64,
    /// The space ended: listeners finish what they have and leave.
    pub ended: bool,
}

/// Which delivery format a listener reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Progressive Ogg/Opus over HTTP.
    Ogg,
    /// levee's WebSocket messages.
    Ws,
}

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
    fn pick(self, c: &Chunk) -> &Bytes {
        match self {
            Format::Ogg => &c.ogg,
            Format::Ws => &c.ws,
        }
    }
}

/// What a listener's read of the ring gave.
#[derive(Debug)]
pub enum Batch {
    /// This many chunks were appended (as shared bytes) to the caller's buffer.
    Data(u64),
    /// Nothing new.
    UpToDate,
    /// Fell out of the window: `missed` chunks lost, continue at `resume`.
    Lagged {
        /// Chunks lost.
        missed: u64,
        /// New cursor.
        resume: u64,
    },
}

struct TrackInner {
    packager: Packager,
    ring: Ring<Chunk>,
    last_stats_us: u64,
    scratch: Vec<Chunk>,
}

/// A space's live audio: packager, ring and wake-up channel.
pub struct Track {
    inner: Mutex<TrackInner>,
    edge: watch::Sender<Edge>,
    headers_ogg: Bytes,
    headers_ws: Bytes,
    /// Increments each time a source takes over; older sources see they were replaced.
    source_gen: AtomicU64,
}

impl Track {
    fn new(head: OpusHead, serial: u32, title: &str, ring_chunks: usize) -> Self {
        let packager = Packager::new(head, serial, &[format!("TITLE={title}")]);
        let headers_ogg = packager.headers().ogg.clone();
        let headers_ws = packager.headers().ws.clone();
        Track {
            inner: Mutex::new(TrackInner {
                packager,
                ring: Ring::new(ring_chunks),
                last_stats_us: 0,
                scratch: Vec::new(),
            }),
            edge: watch::channel(Edge {
                head: 0,
                ended: false,
            })
            .0,
            headers_ogg,
            headers_ws,
            source_gen: AtomicU64::new(0),
        }
    }

    /// The stream headers for `format`, sent to every listener first.
    pub fn headers(&self, format: Format) -> Bytes {
        match format {
            Format::Ogg => self.headers_ogg.clone(),
            Format::Ws => self.headers_ws.clone(),
        }
    }

    /// A receiver that wakes when the edge moves.
    pub fn subscribe(&self) -> watch::Receiver<Edge> {
        self.edge.subscribe()
    }

    /// Where a new listener starts: `backlog` chunks behind the live edge.
    pub fn join_cursor(&self, backlog: u64) -> u64 {
        self.inner
            .lock()
            .expect("track lock")
            .ring
            .join_cursor(backlog)
    }

    /// Reads up to `max` chunks of `format` from `cursor`, appending their bytes to `out`
    /// (reference-counted handles: nothing is copied).
    pub fn read(
        &self,
        cursor: u64,
        max: usize,
        backlog: u64,
        format: Format,
        out: &mut Vec<Bytes>,
    ) -> Batch {
        let inner = self.inner.lock().expect("track lock");
        match inner.ring.read(cursor, max, backlog) {
            Read::Chunks { from, to } => {
                out.extend(inner.ring.range(from, to).map(|c| format.pick(c).clone()));
                Batch::Data(to - from)
            }
            Read::UpToDate => Batch::UpToDate,
            Read::Lagged { missed, resume } => Batch::Lagged { missed, resume },
        }
    }

    /// A new source takes over; returns its generation.
    pub fn new_source(&self) -> u64 {
        self.source_gen.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// True while `generation` is the newest source.
    pub fn is_current_source(&self, generation: u64) -> bool {
        self.source_gen.load(Ordering::SeqCst) == generation
    }

    /// Packages `packets` and wakes listeners. `chunk_samples` is the target chunk duration;
    /// `listeners` is the current audience (sent in STATS frames about once a second).
    pub fn publish(
        &self,
        packets: Vec<AudioPacket>,
        chunk_samples: u32,
        listeners: u32,
        now: u64,
    ) -> u64 {
        let mut inner = self.inner.lock().expect("track lock");
        let inner = &mut *inner;
        if now.saturating_sub(inner.last_stats_us) >= 1_000_000 {
            inner.last_stats_us = now;
            inner.packager.set_stats(now, listeners);
        }
        for p in packets {
            inner.packager.push(p, chunk_samples, &mut inner.scratch);
        }
        self.commit(inner)
    }

    /// Seals what is pending (a source stopped) and wakes listeners.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().expect("track lock");
        let inner = &mut *inner;
        inner.packager.flush(&mut inner.scratch);
        self.commit(inner);
    }

    fn commit(&self, inner: &mut TrackInner) -> u64 {
        let n = inner.scratch.len() as u64;
        for c in inner.scratch.drain(..) {
            inner.ring.push(c);
        }
        if n > 0 {
            let head = inner.ring.head();
            self.edge.send_modify(|e| e.head = head);
        }
        n
    }

    fn end(&self) {
        self.edge.send_modify(|e| e.ended = true);
    }
}

/// One space on this node.
pub struct Space {
    /// Identity and state.
    pub info: Mutex<SpaceInfo>,
    /// Its live audio.
    pub track: Track,
    /// Its counters.
    pub counters: SpaceCounters,
    /// Its access, waiting room and escalation.
    pub shield: SpaceShield,
}

impl Space {
    /// Current state.
    pub fn state(&self) -> SpaceState {
        self.info.lock().expect("space lock").state
    }

    /// A copy of the identity and state.
    pub fn snapshot(&self) -> SpaceInfo {
        self.info.lock().expect("space lock").clone()
    }

    /// Marks the space live (audio arrived). False if it has ended.
    pub fn go_live(&self) -> bool {
        self.info.lock().expect("space lock").go_live()
    }
}

/// Why a space could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// The node holds its maximum number of spaces.
    Full(usize),
    /// The identifier is taken.
    Taken,
}

/// All spaces on this node.
pub struct Hub {
    /// Settings in force.
    pub config: Config,
    spaces: RwLock<HashMap<String, Arc<Space>>>,
    /// Node-wide counters.
    pub node: crate::metrics::NodeCounters,
    /// Per-source limits, bans, tickets and escalation.
    pub shield: Shield,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

impl Hub {
    /// An empty hub.
    pub fn new(config: Config) -> Arc<Self> {
        let shield = Shield::new(config.shield.clone());
        Arc::new(Hub {
            config,
            spaces: RwLock::new(HashMap::new()),
            node: Default::default(),
            shield,
        })
    }

    /// Creates a space with `access`; `id` overrides the random identifier (the demo space).
    pub fn create(
        &self,
        req: NewSpace,
        access: Access,
        id: Option<&str>,
    ) -> Result<Arc<Space>, CreateError> {
        let start_us = req.scheduled_start.map(|s| s.saturating_mul(1_000_000));
        let mut info = SpaceInfo::new(req, random(), random(), now_us() / 1_000_000);
        if let Some(id) = id {
            info.id = id.to_owned();
        }
        let mut spaces = self.spaces.write().expect("hub lock");
        if spaces.contains_key(&info.id) {
            return Err(CreateError::Taken);
        }
        if spaces.len() >= self.config.max_spaces {
            // Make room by forgetting the oldest ended space, if any.
            let oldest_ended = spaces
                .values()
                .filter(|s| s.state() == SpaceState::Ended)
                .min_by_key(|s| s.info.lock().expect("space lock").created_at)
                .map(|s| s.snapshot().id);
            match oldest_ended {
                Some(id) => {
                    spaces.remove(&id);
                }
                None => return Err(CreateError::Full(self.config.max_spaces)),
            }
        }
        let serial = u32::from_le_bytes(random());
        let track = Track::new(
            OpusHead::new(self.config.channels),
            serial,
            &info.title,
            self.config.ring_chunks,
        );
        let space = Arc::new(Space {
            info: Mutex::new(info.clone()),
            track,
            counters: SpaceCounters::default(),
            shield: SpaceShield::new(&self.config.shield, access, start_us),
        });
        spaces.insert(info.id, space.clone());
        Ok(space)
    }

    /// The space with `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Space>> {
        self.spaces.read().expect("hub lock").get(id).cloned()
    }

    /// All spaces, newest first.
    pub fn list(&self) -> Vec<Arc<Space>> {
        let mut v: Vec<Arc<Space>> = self
            .spaces
            .read()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.info.lock().expect("space lock").created_at));
        v
    }

    /// Ends a space: no more sources; listeners are released.
    pub fn end(&self, space: &Space) {
        space.info.lock().expect("space lock").end();
        space.track.new_source();
        space.track.flush();
        space.track.end();
    }

    /// Listeners on the whole node.
    pub fn total_listeners(&self) -> u64 {
        self.spaces
            .read()
            .expect("hub lock")
            .values()
            .map(|s| s.counters.listeners())
            .sum()
    }
}
