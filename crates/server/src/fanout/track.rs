//! A space's live track: the programme packet stream, its muxers (one per delivery format)
//! and their rings, and the immutable windows that writer shards read without a lock.
//!
//! Locking contract: `inner` is held by the publisher while it numbers, packages and pushes
//! (no IO, a few µs) and by a shard only on its slow path (a listener older than the window,
//! a join). Each format's window is an `Arc` swapped under its own short lock once per sealed
//! chunk; a shard takes it once per walk over its listeners, never per listener. Shards are
//! notified after every lock is released, never under one.

use super::{Fanout, Format};
use bytes::Bytes;
use levee_core::cadence::Cadence;
use levee_core::hls::Hls;
use levee_core::mux::{Chunk, Muxer, OggMux, WsMux};
use levee_core::packet::{AudioPacket, Packet, PacketStream, Tap};
use levee_core::ring::{Read, Ring, Window};
use levee_media::opus::OpusHead;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Chunks each published window holds: listeners at most this far behind the edge write
/// without touching the ring's lock.
pub const WINDOW_CHUNKS: usize = 16;

/// Fan-out counters of one space, indexed by [`Format::idx`].
#[derive(Debug, Default)]
pub struct TrackCounters {
    /// Listeners connected now.
    pub listeners: [AtomicU64; 2],
    /// Listeners that joined.
    pub joins: [AtomicU64; 2],
    /// Bytes written to listeners.
    pub bytes_sent: [AtomicU64; 2],
    /// Chunks written to listeners.
    pub chunks_sent: [AtomicU64; 2],
    /// Times a lagging listener skipped to the live edge.
    pub lag_skips: [AtomicU64; 2],
    /// Chunks lagging listeners lost.
    pub chunks_skipped: [AtomicU64; 2],
    /// Listeners cut for stalling.
    pub stall_cuts: [AtomicU64; 2],
}

/// What a slow-path read of the ring gave.
#[derive(Debug)]
pub enum Batch {
    /// This many chunks, from the cursor on, were appended to the caller's buffer.
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

struct Inner {
    stream: PacketStream,
    ogg: OggMux,
    ws: WsMux,
    rings: [Ring<Chunk>; 2],
    sealed: Vec<Chunk>,
    last_stats_us: u64,
    taps: Vec<Arc<Mutex<Tap>>>,
}

/// Per shard: how many of this track's listeners it holds, and whether it has been told of
/// new chunks it has not read yet.
#[derive(Debug, Default)]
pub(super) struct Link {
    pub(super) members: AtomicU32,
    pub(super) dirty: AtomicBool,
}

/// A space's live audio. See the module docs for the locking contract.
pub struct Track {
    inner: Mutex<Inner>,
    windows: [Mutex<Arc<Window<Chunk>>>; 2],
    headers: [Bytes; 2],
    /// Fan-out counters.
    pub counters: TrackCounters,
    source_gen: AtomicU64,
    ended: AtomicBool,
    pub(super) links: Box<[Link]>,
    next_shard: AtomicU32,
    fanout: Arc<Fanout>,
    /// Woken after packets went to the taps (their readers wait on it).
    pub tapped: tokio::sync::Notify,
    /// The space's LL-HLS packaging (fed under `inner`'s lock, read under its own).
    hls: Mutex<HlsState>,
    /// Woken after an HLS part was sealed (blocking playlist reloads and part requests wait
    /// on it).
    pub hls_sealed: tokio::sync::Notify,
    /// When HLS of this track was last requested, monotonic µs (0: never).
    hls_read_us: AtomicU64,
    /// The stream's Opus header.
    head: OpusHead,
}

/// How long an HLS request keeps a track in demand on this node (so that an edge keeps
/// hearing the space from the bus between a player's requests).
pub const HLS_INTEREST_US: u64 = 10_000_000;

/// The HLS packaging and its playlist as last rendered (once per sealed part, not per
/// request).
struct HlsState {
    hls: Hls,
    playlist: Bytes,
}

impl Track {
    /// A track whose streams declare `head`, Ogg serial `serial`, titled `title`, fanned out
    /// by `fanout`.
    pub fn new(head: OpusHead, serial: u32, title: &str, fanout: Arc<Fanout>) -> Arc<Self> {
        let ogg = OggMux::new(&head, serial, &[format!("TITLE={title}")]);
        let ws = WsMux::new(&head);
        let hls = Hls::new(&head);
        let playlist = Bytes::from(hls.playlist());
        let ring_chunks = fanout.limits.ring_chunks;
        Arc::new(Track {
            headers: [ogg.headers(), ws.headers()],
            inner: Mutex::new(Inner {
                stream: PacketStream::new(),
                ogg,
                ws,
                rings: [Ring::new(ring_chunks), Ring::new(ring_chunks)],
                sealed: Vec::new(),
                last_stats_us: 0,
                taps: Vec::new(),
            }),
            windows: [
                Mutex::new(Arc::new(Window::empty())),
                Mutex::new(Arc::new(Window::empty())),
            ],
            counters: TrackCounters::default(),
            source_gen: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            links: (0..fanout.shards()).map(|_| Link::default()).collect(),
            next_shard: AtomicU32::new(0),
            fanout,
            tapped: tokio::sync::Notify::new(),
            hls: Mutex::new(HlsState { hls, playlist }),
            hls_sealed: tokio::sync::Notify::new(),
            hls_read_us: AtomicU64::new(0),
            head,
        })
    }

    /// The stream's Opus header.
    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    /// An HLS request of this track arrived.
    pub fn hls_requested(&self) {
        self.hls_read_us
            .store(crate::clock::mono_us().max(1), Ordering::Relaxed);
    }

    /// Whether anyone here wants this track: a listener, or an HLS request in the last
    /// [`HLS_INTEREST_US`].
    pub fn in_demand(&self) -> bool {
        let read = self.hls_read_us.load(Ordering::Relaxed);
        self.listeners() > 0
            || (read > 0 && crate::clock::mono_us().saturating_sub(read) < HLS_INTEREST_US)
    }

    /// Reads the space's HLS packaging and its current playlist.
    pub fn hls<R>(&self, f: impl FnOnce(&Hls, &Bytes) -> R) -> R {
        let st = self.hls.lock().expect("hls lock");
        f(&st.hls, &st.playlist)
    }

    /// Runs `f` on the HLS packaging (under the track's lock, so in stream order); when it
    /// sealed a part, renders the playlist again and wakes who waits for one.
    fn with_hls(&self, f: impl FnOnce(&mut Hls) -> bool) {
        let sealed = {
            let mut st = self.hls.lock().expect("hls lock");
            let sealed = f(&mut st.hls);
            if sealed {
                st.playlist = Bytes::from(st.hls.playlist());
            }
            sealed
        };
        if sealed {
            self.hls_sealed.notify_waiters();
        }
    }

    /// The stream headers for `format`, written to every listener first.
    pub fn headers(&self, format: Format) -> &Bytes {
        &self.headers[format.idx()]
    }

    /// The newest chunks of `format`, shared.
    pub fn window(&self, format: Format) -> Arc<Window<Chunk>> {
        self.windows[format.idx()]
            .lock()
            .expect("window lock")
            .clone()
    }

    /// Listeners connected now, all formats.
    pub fn listeners(&self) -> u64 {
        self.counters
            .listeners
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// True once the space ended: listeners finish what they have and leave.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Where a new listener of `format` starts: `backlog` chunks behind the live edge.
    pub fn join_cursor(&self, format: Format, backlog: u64) -> u64 {
        self.inner.lock().expect("track lock").rings[format.idx()].join_cursor(backlog)
    }

    /// The slow path: up to `max` chunks of `format` from `cursor`, appended to `out` as shared
    /// handles (nothing is copied).
    pub fn read_ring(
        &self,
        format: Format,
        cursor: u64,
        max: usize,
        backlog: u64,
        out: &mut Vec<Bytes>,
    ) -> Batch {
        let inner = self.inner.lock().expect("track lock");
        let ring = &inner.rings[format.idx()];
        match ring.read(cursor, max, backlog) {
            Read::Chunks { from, to } => {
                out.extend(ring.range(from, to).map(|c| c.bytes.clone()));
                Batch::Data(to - from)
            }
            Read::UpToDate => Batch::UpToDate,
            Read::Lagged { missed, resume } => Batch::Lagged { missed, resume },
        }
    }

    /// A reader of the packet stream that never skips silently (for a recorder or a bus): it
    /// queues at most `capacity` packets and counts what it loses beyond. Dropping every
    /// handle to it detaches it.
    pub fn tap(&self, capacity: usize) -> Arc<Mutex<Tap>> {
        let tap = Arc::new(Mutex::new(Tap::new(capacity)));
        self.inner
            .lock()
            .expect("track lock")
            .taps
            .push(tap.clone());
        tap
    }

    /// The sequence number and position the next packet will get.
    pub fn next_position(&self) -> (u64, u64) {
        let inner = self.inner.lock().expect("track lock");
        (inner.stream.next_seq(), inner.stream.next_pts())
    }

    /// A new source takes over; returns its generation.
    pub fn new_source(&self) -> u64 {
        self.source_gen.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// True while `generation` is the newest source.
    pub fn is_current_source(&self, generation: u64) -> bool {
        self.source_gen.load(Ordering::SeqCst) == generation
    }

    /// The node-wide listener gauge this track's listeners count in.
    pub(super) fn fanout_listeners(&self) -> &AtomicU64 {
        &self.fanout.listeners
    }

    /// The shard that takes the next listener (round robin, so that a space's listeners spread
    /// over every shard).
    pub(super) fn pick_shard(&self) -> usize {
        self.next_shard.fetch_add(1, Ordering::Relaxed) as usize % self.links.len().max(1)
    }

    /// Numbers and packages `packets` (each format at its own cadence, from its own audience),
    /// then tells the shards that hold listeners. `now_wall` is the server time for STATS.
    pub fn publish(self: &Arc<Self>, packets: Vec<AudioPacket>, cadence: &Cadence, now_wall: u64) {
        self.publish_with(packets.into_iter().map(|p| (None, p)), cadence, now_wall);
    }

    /// As [`Track::publish`], for packets another node numbered (a space heard through the
    /// cluster's bus): they keep their sequence numbers and positions, so that a listener who
    /// moves between nodes counts gaps honestly; a jump in the numbering is a gap.
    pub fn publish_numbered(
        self: &Arc<Self>,
        packets: Vec<Packet>,
        cadence: &Cadence,
        now_wall: u64,
    ) {
        self.publish_with(
            packets.into_iter().map(|p| {
                (
                    Some((p.seq, p.pts)),
                    AudioPacket {
                        data: p.data,
                        samples: p.samples,
                        capture_us: p.capture_us,
                    },
                )
            }),
            cadence,
            now_wall,
        );
    }

    fn publish_with(
        self: &Arc<Self>,
        packets: impl Iterator<Item = (Option<(u64, u64)>, AudioPacket)>,
        cadence: &Cadence,
        now_wall: u64,
    ) {
        let c = &self.counters.listeners;
        let (ogg_n, ws_n) = (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed));
        let targets = [cadence.chunk_samples(ogg_n), cadence.chunk_samples(ws_n)];
        let (sealed, tapped) = {
            let mut inner = self.inner.lock().expect("track lock");
            let inner = &mut *inner;
            if now_wall.saturating_sub(inner.last_stats_us) >= 1_000_000 {
                inner.last_stats_us = now_wall;
                inner.ws.set_stats(now_wall, (ogg_n + ws_n) as u32);
            }
            let mut sealed = [false; 2];
            for (numbered, p) in packets {
                if let Some((seq, pts)) = numbered {
                    if seq != inner.stream.next_seq() {
                        inner.stream = PacketStream::starting_at(seq, pts);
                    }
                }
                let packet = inner.stream.push(p);
                offer(&mut inner.taps, &packet);
                self.with_hls(|h| h.push(&packet));
                inner.ogg.push(&packet, targets[0], &mut inner.sealed);
                sealed[0] |= self.commit(inner, Format::Ogg);
                inner.ws.push(&packet, targets[1], &mut inner.sealed);
                sealed[1] |= self.commit(inner, Format::Ws);
            }
            (sealed, !inner.taps.is_empty())
        };
        if tapped {
            self.tapped.notify_waiters();
        }
        if sealed.contains(&true) {
            self.notify();
        }
    }

    /// Who is on the stage and who speaks: a STAGE message leads the next WebSocket chunk and
    /// is repeated with each STATS message (`levee_core::wire`).
    pub fn set_stage(&self, revision: u32, on_stage: u32, speaking: u32) {
        self.inner
            .lock()
            .expect("track lock")
            .ws
            .set_stage(revision, on_stage, speaking);
    }

    /// Seals what is pending (a source stopped) and tells the shards.
    pub fn flush(self: &Arc<Self>) {
        let sealed = {
            let mut inner = self.inner.lock().expect("track lock");
            let inner = &mut *inner;
            inner.ogg.flush(&mut inner.sealed);
            self.with_hls(Hls::flush);
            let a = self.commit(inner, Format::Ogg);
            inner.ws.flush(&mut inner.sealed);
            a | self.commit(inner, Format::Ws)
        };
        if sealed {
            self.notify();
        }
    }

    /// Ends the track: what is pending is sealed, then listeners finish and leave.
    pub fn end(self: &Arc<Self>) {
        self.flush();
        self.with_hls(|h| {
            h.end();
            true
        });
        self.ended.store(true, Ordering::Release);
        self.notify();
        // Readers of the taps (a recorder, the bus) see the end at once.
        self.tapped.notify_waiters();
    }

    /// Moves freshly sealed chunks of `format` into its ring and publishes a new window.
    fn commit(&self, inner: &mut Inner, format: Format) -> bool {
        if inner.sealed.is_empty() {
            return false;
        }
        let ring = &mut inner.rings[format.idx()];
        for c in inner.sealed.drain(..) {
            ring.push(c);
        }
        let window = Arc::new(Window::of(ring, WINDOW_CHUNKS));
        *self.windows[format.idx()].lock().expect("window lock") = window;
        true
    }

    /// Tells every shard holding listeners of this track that there is something to write
    /// (once until it has read it).
    fn notify(self: &Arc<Self>) {
        for (shard, link) in self.links.iter().enumerate() {
            if link.members.load(Ordering::Acquire) > 0 && !link.dirty.swap(true, Ordering::AcqRel)
            {
                self.fanout.inboxes[shard].push_track(self.clone());
            }
        }
    }
}

fn offer(taps: &mut Vec<Arc<Mutex<Tap>>>, packet: &Packet) {
    if taps.is_empty() {
        return;
    }
    taps.retain(|t| Arc::strong_count(t) > 1);
    for t in taps.iter() {
        t.lock().expect("tap lock").offer(packet);
    }
}
