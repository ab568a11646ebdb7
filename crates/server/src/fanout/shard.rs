//! A writer shard, sans IO: the listeners it owns as plain slots, and what happens to them
//! when chunks land, sockets become ready or time passes.
//!
//! Contract: the owner (one thread, see [`super::poll`]) calls [`Shard::add`] for a new
//! listener, [`Shard::on_track`] when a track it holds listeners of has new chunks or ended,
//! [`Shard::on_ready`] when a listener's socket became readable or writable (edge-triggered:
//! the shard reads and writes until the socket would block), and [`Shard::on_timer`] now and
//! then (every [`TIMER_EVERY`] while [`Shard::has_timers`]). Time is a parameter (monotonic
//! µs); the shard never reads a clock and never blocks.
//!
//! Per listener the hot path is one non-blocking vectored write of shared bytes: the chunks
//! from its cursor to the live edge, taken from the track's published window (no lock, no
//! copy, no allocation). Measured: about 0.3 µs of user time per write beside the kernel's
//! 6–9.5 µs (`docs/benchmarks.md` §0a). Only a socket that is full leaves the fast path: it is skipped by
//! later chunks and written again when it becomes writable. A listener whose socket accepts
//! nothing for `stall_timeout` is cut, whatever it is waiting to write (audio, a pong or a
//! close frame): every write path obeys the same bound. One that fell out of the ring skips
//! to the live edge, at a chunk boundary (counted). WebSocket control frames (pong, close) go
//! out between whole frames, through the same write path; only the newest ping is answered.

use super::track::{Batch, Track};
use super::{Format, Limits, NewListener, Session, FORMATS};
use bytes::{Buf, Bytes, BytesMut};
use levee_core::mux::Chunk;
use levee_core::ring::Window;
use levee_core::wsframe::{self, FrameDecoder, Message};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::Arc;

/// A listener's socket, as the shard needs it. Non-blocking: an operation that cannot proceed
/// returns `WouldBlock`.
pub trait Conn {
    /// Writes from `bufs` in order; returns how many bytes were taken.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Reads what the peer sent; `Ok(0)` is the end of its stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Stops sending (FIN) after what was written.
    fn shutdown_write(&mut self);
    /// Bytes written but not yet acknowledged by the peer (`None`: unknown, taken as none).
    /// Asked once when a listener's view comes due, and once a second after while it is
    /// not keeping up.
    fn queued(&self) -> Option<usize> {
        None
    }
}

/// A listener keeps up when at most a quarter of what it was written, or this much if more,
/// waits unacknowledged in its socket: its view counts only then (`docs/audience.md`). A
/// client that does not read has its receive buffer and then levee's send buffer fill with
/// what it does not take.
pub const VIEW_MIN_QUEUED: usize = 4 * 1024;
/// While a listener whose view is due does not keep up, it is asked again this often.
pub const VIEW_RECHECK_US: u64 = 1_000_000;
/// A listener that still does not keep up this long after its view came due gets no view in
/// this session (a client that reads nothing, then everything at once, is no live listener).
pub const VIEW_PATIENCE_US: u64 = 5_000_000;

/// Most slices in one vectored write (a partial item, a control frame, whole chunks).
pub const MAX_IOV: usize = 16;
/// Reads per readiness event before the listener waits for the next round (so that one
/// chatty peer cannot hold the shard).
pub const READS_PER_EVENT: usize = 4;
/// Size of the shard's one read buffer, shared by all its listeners.
pub const READ_BUF: usize = 2048;
/// Bytes a closing WebSocket listener may still send before it is dropped.
pub const MAX_LINGER_READ: u32 = 4096;
/// How often the owner should call [`Shard::on_timer`] while [`Shard::has_timers`].
pub const TIMER_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a listener left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// The peer went away (or its socket failed).
    Gone,
    /// Its socket accepted nothing for the stall bound.
    Stalled,
    /// The space ended and it got everything.
    Ended,
    /// The WebSocket closing handshake finished (or its linger ran out).
    Closed,
    /// It sent what a listener may not (too much, or a broken frame).
    Refused,
}

/// What the item at the front of a listener's output is, when partly written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Headers,
    Chunk,
    Control,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsState {
    Open,
    /// Answering the peer's close: leave once our close frame is out.
    Replying,
    /// Our close frame is queued: once out, stop sending and linger.
    Closing,
    /// Waiting (until the deadline, µs) for the peer to close after our close frame.
    Lingering(u64),
}

struct Ws {
    dec: FrameDecoder,
    ctrl: Option<Bytes>,
    state: WsState,
    /// It sent a broken frame (it is being closed for it): it leaves as refused.
    broken: bool,
}

struct Slot<C, G> {
    conn: C,
    guard: G,
    /// Monotonic µs of its join (its listen time is counted from it).
    joined: u64,
    /// Monotonic µs at which its view is checked next (`Limits::view_after` after its join,
    /// then every [`VIEW_RECHECK_US`] while it does not keep up); 0: counted, or given up
    /// after [`VIEW_PATIENCE_US`].
    view_at: u64,
    /// Bytes written to it (what its view is judged against).
    written: u64,
    group: u32,
    pos: u32,
    format: Format,
    /// Next chunk to start writing (chunks before it are written or in `rest`).
    cursor: u64,
    /// Unwritten end of a partly written item (empty: none).
    rest: Bytes,
    rest_kind: Kind,
    /// Monotonic µs of the last progress while the socket is full; 0: not blocked.
    since: u64,
    /// In the shard's blocked list.
    listed: bool,
    /// The space ended: leave once everything is written.
    ending: bool,
    uploaded: u32,
    ws: Option<Box<Ws>>,
}

struct Group {
    track: Arc<Track>,
    members: [Vec<u32>; 2],
}

/// Bytes and chunks written, per format, not yet added to a track's counters.
#[derive(Default)]
struct Tally {
    bytes: u64,
    chunks: u64,
}

/// One writer shard. See the module docs for the contract.
pub struct Shard<C, G> {
    id: usize,
    limits: Limits,
    slots: Vec<Option<Slot<C, G>>>,
    free: Vec<u32>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    group_of: HashMap<usize, u32>,
    blocked: Vec<u32>,
    lingering: Vec<u32>,
    more_to_read: Vec<u32>,
    scratch: Vec<Bytes>,
    rbuf: Box<[u8]>,
    tally: Tally,
}

/// Puts `item` in a free place of `table` (or a new one at its end); returns its index.
fn insert<T>(table: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            table[i as usize] = Some(item);
            i
        }
        None => {
            table.push(Some(item));
            (table.len() - 1) as u32
        }
    }
}

fn track_key(t: &Arc<Track>) -> usize {
    Arc::as_ptr(t) as usize
}

impl<C: Conn, G: Session> Shard<C, G> {
    /// Shard number `id` (its index in each track's links) enforcing `limits`.
    pub fn new(id: usize, limits: Limits) -> Self {
        Shard {
            id,
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            group_of: HashMap::new(),
            blocked: Vec::new(),
            lingering: Vec::new(),
            more_to_read: Vec::new(),
            scratch: Vec::new(),
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            tally: Tally::default(),
        }
    }

    /// Listeners held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when no listener is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The socket of listener `key`, to register it with a poller.
    pub fn conn_mut(&mut self, key: u32) -> Option<&mut C> {
        self.slots
            .get_mut(key as usize)?
            .as_mut()
            .map(|s| &mut s.conn)
    }

    /// True while some listener waits on a clock (stalled socket, closing handshake).
    pub fn has_timers(&self) -> bool {
        !self.blocked.is_empty() || !self.lingering.is_empty()
    }

    /// True while some listener has unread input left from its last round.
    pub fn has_more_reads(&self) -> bool {
        !self.more_to_read.is_empty()
    }

    /// Takes a listener: writes its headers and the chunk it starts at. Returns its key, or
    /// `None` if it left at once.
    pub fn add(&mut self, new: NewListener<C, G>, now: u64) -> Option<u32> {
        let NewListener {
            track,
            conn,
            format,
            rest,
            guard,
        } = new;
        let g = match self.group_of.get(&track_key(&track)) {
            Some(&g) => g,
            None => {
                let group = Group {
                    track: track.clone(),
                    members: [Vec::new(), Vec::new()],
                };
                let g = insert(&mut self.groups, &mut self.free_groups, group);
                self.group_of.insert(track_key(&track), g);
                g
            }
        };
        track.links[self.id].members.fetch_add(1, AcqRel);
        let ws = (format == Format::Ws).then(|| {
            Box::new(Ws {
                dec: FrameDecoder::new(self.limits.max_ws_message),
                ctrl: None,
                state: WsState::Open,
                broken: false,
            })
        });
        let cursor = track.join_cursor(format, self.limits.join_backlog);
        let members = &mut self.groups[g as usize].as_mut().expect("group").members;
        let slot = Slot {
            conn,
            guard,
            joined: now,
            view_at: now + (self.limits.view_after.as_micros() as u64).max(1),
            written: 0,
            group: g,
            pos: members[format.idx()].len() as u32,
            format,
            cursor,
            rest: track.headers(format).clone(),
            rest_kind: Kind::Headers,
            since: 0,
            listed: false,
            ending: false,
            uploaded: 0,
            ws,
        };
        members[format.idx()].push(0);
        let key = insert(&mut self.slots, &mut self.free, slot);
        let members = &mut self.groups[g as usize].as_mut().expect("group").members;
        *members[format.idx()].last_mut().expect("just pushed") = key;
        let outcome = self.inbound(key, &rest, now).and_then(|()| {
            let ended = track.ended();
            self.slot(key).ending = ended;
            self.drive(key, &track.window(format), now)
        });
        self.flush_tally(&track, format);
        match outcome {
            Ok(()) => Some(key),
            Err(why) => {
                self.remove(key, why, now);
                None
            }
        }
    }

    /// A track this shard holds listeners of has new chunks, or ended: write them to every
    /// listener whose socket has room.
    pub fn on_track(&mut self, track: &Arc<Track>, now: u64) {
        track.links[self.id].dirty.swap(false, AcqRel);
        let ended = track.ended();
        let Some(&g) = self.group_of.get(&track_key(track)) else {
            return;
        };
        for format in FORMATS {
            let window = track.window(format);
            let mut i = 0;
            loop {
                let Some(group) = self.groups[g as usize].as_ref() else {
                    return;
                };
                let Some(&key) = group.members[format.idx()].get(i) else {
                    break;
                };
                let slot = self.slot(key);
                slot.ending |= ended;
                if slot.since != 0 && !ended {
                    // Full: it is written again when its socket says it has room.
                    i += 1;
                    continue;
                }
                match self.drive(key, &window, now) {
                    Ok(()) => i += 1,
                    Err(why) => self.remove(key, why, now),
                }
            }
            self.flush_tally(track, format);
        }
    }

    /// Listener `key`'s socket became readable and/or writable.
    pub fn on_ready(&mut self, key: u32, readable: bool, writable: bool, now: u64) {
        let Some(slot) = self.slots.get(key as usize).and_then(Option::as_ref) else {
            return;
        };
        let track = self.groups[slot.group as usize]
            .as_ref()
            .expect("group")
            .track
            .clone();
        let format = slot.format;
        let outcome = (|| {
            if readable {
                self.read_input(key, now)?;
            }
            let slot = self.slot(key);
            let has_ctrl = slot.ws.as_ref().is_some_and(|w| w.ctrl.is_some());
            if writable || has_ctrl {
                self.drive(key, &track.window(format), now)?;
            }
            Ok(())
        })();
        self.flush_tally(&track, format);
        if let Err(why) = outcome {
            self.remove(key, why, now);
        }
    }

    /// Reads on for listeners that had more input than one round allows.
    pub fn continue_reads(&mut self, now: u64) {
        for key in std::mem::take(&mut self.more_to_read) {
            self.on_ready(key, true, false, now);
        }
    }

    /// Cuts listeners whose socket accepted nothing for the stall bound, and ends closing
    /// handshakes whose linger ran out.
    pub fn on_timer(&mut self, now: u64) {
        let stall = self.limits.stall_timeout.as_micros() as u64;
        let mut cut = Vec::new();
        let slots = &mut self.slots;
        self.blocked.retain(|&key| {
            let Some(slot) = slots.get_mut(key as usize).and_then(Option::as_mut) else {
                return false;
            };
            if slot.since == 0 || !slot.listed {
                slot.listed = false;
                return false;
            }
            if now.saturating_sub(slot.since) >= stall {
                cut.push((key, Leave::Stalled));
                return false;
            }
            true
        });
        self.lingering.retain(|&key| {
            let Some(slot) = slots.get(key as usize).and_then(Option::as_ref) else {
                return false;
            };
            match slot.ws.as_ref().map(|w| w.state) {
                Some(WsState::Lingering(until)) if now >= until => {
                    cut.push((key, Leave::Closed));
                    false
                }
                Some(WsState::Lingering(_)) => true,
                _ => false,
            }
        });
        for (key, why) in cut {
            if self.slots.get(key as usize).is_some_and(Option::is_some) {
                self.remove(key, why, now);
            }
        }
    }

    fn slot(&mut self, key: u32) -> &mut Slot<C, G> {
        self.slots[key as usize].as_mut().expect("live slot")
    }

    /// Writes what listener `key` can take, then moves its closing handshake or its end on.
    fn drive(&mut self, key: u32, window: &Window<Chunk>, now: u64) -> Result<(), Leave> {
        loop {
            self.pump(key, window, now)?;
            let linger = self.limits.close_linger.as_micros() as u64;
            let slot = self.slot(key);
            if slot.since != 0 || !slot.rest.is_empty() {
                return Ok(());
            }
            let caught_up = slot.cursor >= window.head();
            match slot.ws.as_deref_mut() {
                None if slot.ending && caught_up => return Err(Leave::Ended),
                None => return Ok(()),
                Some(ws) if ws.ctrl.is_some() => return Ok(()),
                Some(ws) => match ws.state {
                    WsState::Replying => return Err(Leave::Closed),
                    WsState::Closing => {
                        slot.conn.shutdown_write();
                        ws.state = WsState::Lingering(now + linger);
                        self.lingering.push(key);
                        return Ok(());
                    }
                    WsState::Open if slot.ending && caught_up => {
                        ws.ctrl = Some(wsframe::close_frame(
                            wsframe::CLOSE_GOING_AWAY,
                            "this space has ended",
                        ));
                        ws.state = WsState::Closing;
                    }
                    WsState::Open | WsState::Lingering(_) => return Ok(()),
                },
            }
        }
    }

    /// Writes listener `key`'s pending output until it is all written or the socket is full.
    fn pump(&mut self, key: u32, window: &Window<Chunk>, now: u64) -> Result<(), Leave> {
        let max_chunks = self.limits.max_batch.clamp(1, MAX_IOV - 2);
        let backlog = self.limits.join_backlog;
        let view_after = (self.limits.view_after.as_micros() as u64).max(1);
        let Shard {
            slots,
            groups,
            scratch,
            tally,
            blocked,
            ..
        } = self;
        let slot = slots[key as usize].as_mut().expect("live slot");
        let track = &groups[slot.group as usize].as_ref().expect("group").track;
        let counters = &track.counters;
        let f = slot.format.idx();
        loop {
            let open = slot.ws.as_ref().is_none_or(|w| w.state == WsState::Open);
            // Where the chunks come from: the window, or (far behind it) the ring.
            scratch.clear();
            let mut from_window: &[Chunk] = &[];
            if open {
                loop {
                    if let Some(s) = window.since(slot.cursor) {
                        from_window = &s[..s.len().min(max_chunks)];
                        break;
                    }
                    match track.read_ring(slot.format, slot.cursor, max_chunks, backlog, scratch) {
                        Batch::Data(_) | Batch::UpToDate => break,
                        Batch::Lagged { missed, resume } => {
                            counters.lag_skips[f].fetch_add(1, Relaxed);
                            counters.chunks_skipped[f].fetch_add(missed, Relaxed);
                            slot.cursor = resume;
                        }
                    }
                }
            }
            let ctrl = slot.ws.as_ref().and_then(|w| w.ctrl.clone());
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut total = 0;
            for b in [Some(&slot.rest), ctrl.as_ref()].into_iter().flatten() {
                if !b.is_empty() {
                    iov[n] = IoSlice::new(b);
                    n += 1;
                    total += b.len();
                }
            }
            let chunks = from_window.iter().map(|c| &c.bytes).chain(scratch.iter());
            for b in chunks.clone().take(MAX_IOV - n) {
                iov[n] = IoSlice::new(b);
                n += 1;
                total += b.len();
            }
            if n == 0 {
                slot.since = 0;
                return Ok(());
            }
            let written = match slot.conn.write_vectored(&iov[..n]) {
                Ok(0) => return Err(Leave::Gone),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Leave::Gone),
            };
            if written == 0 {
                // Full before anything went out: the stall clock starts (if not running).
                if slot.since == 0 {
                    slot.since = now;
                }
                if !slot.listed {
                    slot.listed = true;
                    blocked.push(key);
                }
                return Ok(());
            }
            // Audio went out: a listener that has been taking it for `view_after` and keeps
            // up (little of it waits unacknowledged) is a view. One compare per write; one
            // question to the socket when the view is due; its owner counts it once.
            slot.written += written as u64;
            if slot.view_at != 0 && now >= slot.view_at {
                let allowed = (slot.written / 4).max(VIEW_MIN_QUEUED as u64);
                let due = slot.joined + view_after;
                if slot.conn.queued().unwrap_or(0) as u64 <= allowed {
                    slot.view_at = 0;
                    slot.guard.viewed();
                } else if now >= due + VIEW_PATIENCE_US {
                    // Behind ever since its view came due: none this session.
                    slot.view_at = 0;
                } else {
                    slot.view_at = now + VIEW_RECHECK_US;
                }
            }
            // Account for what went out, item by item, in the order written.
            let mut left = written;
            if !slot.rest.is_empty() {
                let len = slot.rest.len().min(left);
                slot.rest.advance(len);
                left -= len;
                if slot.rest_kind != Kind::Control {
                    tally.bytes += len as u64;
                }
                if slot.rest.is_empty() && slot.rest_kind == Kind::Chunk {
                    tally.chunks += 1;
                }
            }
            if let (true, Some(c)) = (slot.rest.is_empty() && left > 0, ctrl) {
                slot.ws
                    .as_mut()
                    .expect("control frames are WebSocket's")
                    .ctrl = None;
                if left >= c.len() {
                    left -= c.len();
                } else {
                    slot.rest = c.slice(left..);
                    slot.rest_kind = Kind::Control;
                    left = 0;
                }
            }
            for b in chunks {
                if left == 0 {
                    break;
                }
                slot.cursor += 1;
                let len = b.len().min(left);
                left -= len;
                tally.bytes += len as u64;
                if len == b.len() {
                    tally.chunks += 1;
                } else {
                    slot.rest = b.slice(len..);
                    slot.rest_kind = Kind::Chunk;
                }
            }
            if written < total {
                // The socket is full after some progress: the stall clock restarts.
                slot.since = now;
                if !slot.listed {
                    slot.listed = true;
                    blocked.push(key);
                }
                return Ok(());
            }
        }
    }

    /// Reads what listener `key` sent, at most [`READS_PER_EVENT`] times.
    fn read_input(&mut self, key: u32, now: u64) -> Result<(), Leave> {
        for _ in 0..READS_PER_EVENT {
            let slot = self.slots[key as usize].as_mut().expect("live slot");
            let n = match slot.conn.read(&mut self.rbuf) {
                Ok(0) => {
                    let ws = self.slot(key).ws.as_ref().map(|w| w.state);
                    return Err(match ws {
                        Some(WsState::Lingering(_)) => Leave::Closed,
                        _ => Leave::Gone,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Leave::Gone),
            };
            let data = std::mem::take(&mut self.rbuf);
            let outcome = self.inbound(key, &data[..n], now);
            self.rbuf = data;
            outcome?;
        }
        self.more_to_read.push(key);
        Ok(())
    }

    /// Handles bytes a listener sent: Ogg listeners may send a little; WebSocket listeners
    /// send control frames and small messages, which are ignored.
    fn inbound(&mut self, key: u32, data: &[u8], _now: u64) -> Result<(), Leave> {
        if data.is_empty() {
            return Ok(());
        }
        let max_ogg = self.limits.max_ogg_upload;
        let slot = self.slot(key);
        slot.uploaded = slot.uploaded.saturating_add(data.len() as u32);
        let Some(ws) = slot.ws.as_deref_mut() else {
            return if slot.uploaded as usize > max_ogg {
                Err(Leave::Refused)
            } else {
                Ok(())
            };
        };
        if ws.state != WsState::Open {
            return if slot.uploaded > MAX_LINGER_READ {
                Err(Leave::Closed)
            } else {
                Ok(())
            };
        }
        slot.uploaded = 0;
        ws.dec.push(data);
        loop {
            match ws.dec.next() {
                Ok(None) => return Ok(()),
                Ok(Some(Message::Ping(payload))) => {
                    let mut out = BytesMut::with_capacity(2 + payload.len());
                    wsframe::encode_frame(wsframe::OP_PONG, &payload, &mut out);
                    ws.ctrl = Some(out.freeze());
                }
                Ok(Some(Message::Close(..))) => {
                    ws.ctrl = Some(wsframe::close_frame(wsframe::CLOSE_NORMAL, ""));
                    ws.state = WsState::Replying;
                    return Ok(());
                }
                Ok(Some(Message::Text(_) | Message::Binary(_) | Message::Pong)) => {}
                Err(e) => {
                    ws.ctrl = Some(wsframe::close_frame(e.close_code(), &e.to_string()));
                    ws.state = WsState::Closing;
                    ws.broken = true;
                    return Ok(());
                }
            }
        }
    }

    fn flush_tally(&mut self, track: &Track, format: Format) {
        let t = std::mem::take(&mut self.tally);
        if t.bytes > 0 {
            track.counters.bytes_sent[format.idx()].fetch_add(t.bytes, Relaxed);
        }
        if t.chunks > 0 {
            track.counters.chunks_sent[format.idx()].fetch_add(t.chunks, Relaxed);
        }
    }

    /// Drops listener `key` (its socket closes, its guard hears how long it listened and
    /// why it left, then gives back its accounting).
    fn remove(&mut self, key: u32, why: Leave, now: u64) {
        let Some(mut slot) = self.slots[key as usize].take() else {
            return;
        };
        // A stalled listener took audio until its socket filled.
        let last = match (why, slot.since) {
            (Leave::Stalled, since) if since != 0 => since,
            _ => now,
        };
        // A listener closed for a broken frame left for what it sent, however the closing
        // handshake ended.
        let told = match &slot.ws {
            Some(ws) if ws.broken => Leave::Refused,
            _ => why,
        };
        slot.guard.left(last.saturating_sub(slot.joined), told);
        self.free.push(key);
        let f = slot.format.idx();
        let g = slot.group as usize;
        let group = self.groups[g].as_mut().expect("group");
        let members = &mut group.members[f];
        members.swap_remove(slot.pos as usize);
        if let Some(&moved) = members.get(slot.pos as usize) {
            self.slots[moved as usize].as_mut().expect("member").pos = slot.pos;
        }
        let track = group.track.clone();
        let c = &track.counters;
        c.listeners[f].fetch_sub(1, Relaxed);
        track.fanout_listeners().fetch_sub(1, Relaxed);
        if why == Leave::Stalled {
            c.stall_cuts[f].fetch_add(1, Relaxed);
            tracing::debug!(format = slot.format.label(), "cut a stalled listener");
        }
        track.links[self.id].members.fetch_sub(1, AcqRel);
        if group.members.iter().all(Vec::is_empty) {
            self.groups[g] = None;
            self.free_groups.push(g as u32);
            self.group_of.remove(&track_key(&track));
        }
    }
}

impl<C, G> Drop for Shard<C, G> {
    /// A shard that goes away (its thread stopped or died) counts its listeners out.
    fn drop(&mut self) {
        for slot in self.slots.iter().flatten() {
            if let Some(group) = &self.groups[slot.group as usize] {
                let track = &group.track;
                track.counters.listeners[slot.format.idx()].fetch_sub(1, Relaxed);
                track.fanout_listeners().fetch_sub(1, Relaxed);
                track.links[self.id].members.fetch_sub(1, AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{Fanout, Track};
    use levee_core::cadence::Cadence;
    use levee_core::packet::AudioPacket;
    use levee_core::wire::{self, WireMessage};
    use levee_core::wsframe::encode_client_frame;
    use levee_media::ogg::{PageReader, MAX_PAGE};
    use levee_media::opus::OpusHead;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    /// An in-memory socket: takes at most `room` bytes until given more, hands out `inbound`.
    #[derive(Default)]
    struct Mem {
        out: Vec<u8>,
        room: usize,
        inbound: Vec<u8>,
        eof: bool,
        shut: bool,
        /// What the socket says waits unacknowledged.
        queued: usize,
    }

    #[derive(Clone, Default)]
    struct MemConn(Rc<RefCell<Mem>>);

    impl Conn for MemConn {
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut m = self.0.borrow_mut();
            assert!(!m.shut, "written after shutdown");
            if m.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(m.room);
                m.out.extend_from_slice(&b[..take]);
                m.room -= take;
                n += take;
                if m.room == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut m = self.0.borrow_mut();
            if m.inbound.is_empty() {
                return if m.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(m.inbound.len());
            buf[..n].copy_from_slice(&m.inbound[..n]);
            m.inbound.drain(..n);
            Ok(n)
        }
        fn shutdown_write(&mut self) {
            self.0.borrow_mut().shut = true;
        }
        fn queued(&self) -> Option<usize> {
            Some(self.0.borrow().queued)
        }
    }

    const SEC: u64 = 1_000_000;
    const UNLIMITED: usize = usize::MAX;

    /// What a probe was told: ("viewed" | "left", listened µs, why it left).
    type Told = (&'static str, u64, Option<Leave>);

    /// A listener's owner that notes what the shard told it.
    #[derive(Clone, Default)]
    struct Probe(Arc<std::sync::Mutex<Vec<Told>>>);

    impl Session for Probe {
        fn viewed(&mut self) {
            self.0.lock().unwrap().push(("viewed", 0, None));
        }
        fn left(&mut self, listened_us: u64, why: Leave) {
            self.0
                .lock()
                .unwrap()
                .push(("left", listened_us, Some(why)));
        }
    }

    impl Probe {
        fn log(&self) -> Vec<Told> {
            self.0.lock().unwrap().clone()
        }
    }

    struct World {
        track: Arc<Track>,
        fanout: Arc<Fanout>,
        shard: Shard<MemConn, Probe>,
        next: u64,
        now: u64,
    }

    impl World {
        fn new(limits: Limits) -> Self {
            let fanout = Fanout::new(Limits {
                shards: 1,
                ..limits.clone()
            });
            let track = Track::new(OpusHead::new(1), 7, "t", fanout.clone());
            World {
                track,
                fanout,
                shard: Shard::new(0, limits),
                next: 0,
                now: 10 * SEC,
            }
        }

        fn join(&mut self, format: Format, room: usize) -> (MemConn, Option<u32>) {
            let (conn, key, _) = self.join_probed(format, room);
            (conn, key)
        }

        fn join_probed(&mut self, format: Format, room: usize) -> (MemConn, Option<u32>, Probe) {
            let probe = Probe::default();
            let conn = MemConn::default();
            conn.0.borrow_mut().room = room;
            self.fanout.admit(&self.track, format);
            let key = self.shard.add(
                NewListener {
                    track: self.track.clone(),
                    conn: conn.clone(),
                    format,
                    rest: Bytes::new(),
                    guard: probe.clone(),
                },
                self.now,
            );
            (conn, key, probe)
        }

        /// Publishes `n` 20-ms packets, one chunk each, and lets the shard write them.
        fn publish(&mut self, n: u64) {
            let cadence = Cadence {
                min_ms: 20,
                max_ms: 20,
                ..Cadence::default()
            };
            for _ in 0..n {
                let p = AudioPacket {
                    data: Bytes::from(vec![0xf8, 0xff, self.next as u8]),
                    samples: 960,
                    capture_us: 1_700_000_000_000_000 + self.next * 20_000,
                };
                self.next += 1;
                self.now += 20_000;
                self.track.publish(vec![p], &cadence, self.now);
                self.shard.on_track(&self.track, self.now);
            }
        }

        fn ready(&mut self, key: u32, readable: bool, writable: bool) {
            self.shard.on_ready(key, readable, writable, self.now);
        }
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Head,
        Audio(u64),
        Stats,
        Pong(Vec<u8>),
        Close(u16),
    }

    /// Decodes the whole frames a WebSocket listener received (server frames are unmasked;
    /// a socket that filled up may end inside one); panics on a broken frame.
    fn ws_received(conn: &MemConn) -> Vec<Got> {
        let out = conn.0.borrow().out.clone();
        let mut at = 0;
        let mut got = Vec::new();
        while at + 4 <= out.len() {
            let (opcode, len7) = (out[at] & 0x0f, out[at + 1] & 0x7f);
            let (len, hdr) = match len7 {
                126 => (u16::from_be_bytes([out[at + 2], out[at + 3]]) as usize, 4),
                n => (n as usize, 2),
            };
            if at + hdr + len > out.len() {
                break;
            }
            let payload = Bytes::copy_from_slice(&out[at + hdr..at + hdr + len]);
            got.push(match opcode {
                wsframe::OP_BINARY => match wire::decode(&payload).unwrap() {
                    WireMessage::Head(_) => Got::Head,
                    WireMessage::Audio { seq, .. } => Got::Audio(seq),
                    WireMessage::Stats { .. } | WireMessage::Stage { .. } => Got::Stats,
                },
                wsframe::OP_PONG => Got::Pong(payload.to_vec()),
                wsframe::OP_CLOSE => Got::Close(u16::from_be_bytes([payload[0], payload[1]])),
                other => panic!("unexpected opcode {other}"),
            });
            at += hdr + len;
        }
        got
    }

    /// Audio sequence numbers in what a WebSocket listener received.
    fn seqs(conn: &MemConn) -> Vec<u64> {
        ws_received(conn)
            .into_iter()
            .filter_map(|g| match g {
                Got::Audio(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_client_frame(opcode, payload, [9, 8, 7, 6], &mut b);
        b.to_vec()
    }

    fn counter(a: &[std::sync::atomic::AtomicU64; 2], f: Format) -> u64 {
        a[f.idx()].load(Relaxed)
    }

    #[test]
    fn listeners_get_headers_then_every_chunk_and_the_counts_are_exact() {
        let mut w = World::new(Limits::default());
        let (ws, _) = w.join(Format::Ws, UNLIMITED);
        let (ogg, _) = w.join(Format::Ogg, UNLIMITED);
        w.publish(30);
        let got = ws_received(&ws);
        assert_eq!(got[0], Got::Head);
        assert_eq!(seqs(&ws), (0..30).collect::<Vec<_>>());
        let mut pages = PageReader::new(MAX_PAGE);
        pages.push(&ogg.0.borrow().out);
        let mut n = 0;
        while let Some(p) = pages.next_page().expect("valid Ogg") {
            assert_eq!(p.seq, n);
            n += 1;
        }
        assert_eq!(n, 2 + 30, "OpusHead, OpusTags, then one page per chunk");
        let c = &w.track.counters;
        assert_eq!(
            counter(&c.bytes_sent, Format::Ws),
            ws.0.borrow().out.len() as u64
        );
        assert_eq!(
            counter(&c.bytes_sent, Format::Ogg),
            ogg.0.borrow().out.len() as u64
        );
        assert_eq!(counter(&c.chunks_sent, Format::Ogg), 30);
        assert_eq!(w.track.listeners(), 2);
        assert_eq!(w.fanout.listeners.load(Relaxed), 2);
    }

    #[test]
    fn a_view_is_told_once_after_view_after_of_audio_and_the_leaving_says_how_long() {
        let mut w = World::new(Limits {
            view_after: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(2),
            ..Limits::default()
        });
        let t0 = w.now;
        let (_reader, key, reader) = w.join_probed(Format::Ws, UNLIMITED);
        // Takes nothing, ever: its socket is full from the start.
        let (_never, _, never) = w.join_probed(Format::Ogg, 0);
        // Takes its headers and some audio, then nothing.
        let (stops, _, stopper) = w.join_probed(Format::Ws, UNLIMITED);
        // Takes everything, but its peer acknowledges little of it: it does not keep up.
        let (behind, _, late) = w.join_probed(Format::Ws, UNLIMITED);
        behind.0.borrow_mut().queued = usize::MAX / 2;
        w.publish(20);
        stops.0.borrow_mut().room = 0;
        let stopped_at = w.now;
        w.publish(29); // 0.98 s after the join
        assert!(reader.log().is_empty(), "no view before 1 s");
        w.publish(2);
        assert_eq!(reader.log(), [("viewed", 0, None)]);
        assert!(late.log().is_empty(), "no view while it does not keep up");
        behind.0.borrow_mut().queued = VIEW_MIN_QUEUED;
        w.publish(48);
        assert!(late.log().is_empty(), "asked again only a second later");
        w.publish(2);
        assert_eq!(late.log(), [("viewed", 0, None)], "it keeps up now");
        // One that is still behind 5 s after its view came due gets none, even if it catches
        // up later.
        let (slow, _, slow_probe) = w.join_probed(Format::Ws, UNLIMITED);
        slow.0.borrow_mut().queued = usize::MAX / 2;
        w.publish(50 + 250);
        slow.0.borrow_mut().queued = 0;
        w.publish(100);
        assert!(
            slow_probe.log().is_empty(),
            "no view after falling behind for 5 s"
        );
        w.publish(100);
        assert_eq!(reader.log().len(), 1, "told once");
        assert_eq!(late.log().len(), 1, "told once");
        // The stalled ones are cut, each told how long it took audio.
        w.shard.on_timer(w.now);
        assert_eq!(
            never.log(),
            [("left", 0, Some(Leave::Stalled))],
            "never read"
        );
        let log = stopper.log();
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].0, log[0].2), ("left", Some(Leave::Stalled)));
        assert_eq!(
            log[0].1,
            stopped_at + 20_000 - t0,
            "until its socket filled"
        );
        // The reader leaves: all its time counts.
        w.shard.remove(key.unwrap(), Leave::Gone, w.now);
        assert_eq!(reader.log()[1], ("left", w.now - t0, Some(Leave::Gone)));
    }

    #[test]
    fn a_late_joiner_starts_one_chunk_behind_the_live_edge() {
        let mut w = World::new(Limits::default());
        w.publish(50);
        let (ws, _) = w.join(Format::Ws, UNLIMITED);
        assert_eq!(seqs(&ws), vec![49]);
        w.publish(2);
        assert_eq!(seqs(&ws), vec![49, 50, 51]);
    }

    #[test]
    fn a_full_socket_is_left_alone_then_catches_up_without_loss() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        let (other, _) = w.join(Format::Ws, UNLIMITED);
        w.publish(3);
        ws.0.borrow_mut().room = 10; // part of the next chunk, then full
        w.publish(1);
        let held = ws.0.borrow().out.len();
        w.publish(5);
        assert_eq!(
            ws.0.borrow().out.len(),
            held,
            "a full socket is not written"
        );
        ws.0.borrow_mut().room = UNLIMITED;
        w.ready(key.unwrap(), false, true);
        assert_eq!(seqs(&ws), (0..9).collect::<Vec<_>>());
        assert_eq!(seqs(&other), (0..9).collect::<Vec<_>>());
        assert_eq!(counter(&w.track.counters.lag_skips, Format::Ws), 0);
    }

    #[test]
    fn a_listener_behind_the_ring_skips_to_the_edge_at_a_chunk_boundary() {
        let mut w = World::new(Limits {
            ring_chunks: 4,
            ..Limits::default()
        });
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        w.publish(2);
        ws.0.borrow_mut().room = 30; // stops inside a frame
        w.publish(20);
        ws.0.borrow_mut().room = UNLIMITED;
        w.ready(key.unwrap(), false, true);
        // It finishes the frame it was in, loses what left the ring, resumes one chunk behind
        // the edge: the frames stay whole and the gap shows in the sequence numbers.
        let s = seqs(&ws);
        let j = s.windows(2).position(|p| p[1] != p[0] + 1).expect("a gap");
        assert_eq!(s[..=j], (0..=j as u64).collect::<Vec<_>>()[..]);
        assert_eq!(
            &s[j + 1..],
            &[21],
            "resumed one chunk behind the edge: {s:?}"
        );
        let c = &w.track.counters;
        assert_eq!(counter(&c.lag_skips, Format::Ws), 1);
        assert_eq!(counter(&c.chunks_skipped, Format::Ws), 21 - (j as u64 + 1));
        w.publish(1);
        assert_eq!(*seqs(&ws).last().unwrap(), 22);
    }

    #[test]
    fn a_stalled_listener_is_cut_at_the_bound_and_not_before() {
        let stall = Duration::from_secs(10);
        let mut w = World::new(Limits {
            stall_timeout: stall,
            ..Limits::default()
        });
        let (_ogg, key) = w.join(Format::Ogg, 0);
        assert!(key.is_some());
        assert!(w.shard.has_timers());
        let t0 = w.now;
        w.publish(10);
        w.shard.on_timer(t0 + stall.as_micros() as u64 - 1);
        assert_eq!(w.shard.len(), 1);
        w.shard.on_timer(t0 + stall.as_micros() as u64);
        assert_eq!(w.shard.len(), 0);
        let c = &w.track.counters;
        assert_eq!(counter(&c.stall_cuts, Format::Ogg), 1);
        assert_eq!(w.track.listeners(), 0);
        assert_eq!(w.fanout.listeners.load(Relaxed), 0);
        assert!(!w.shard.has_timers());
    }

    #[test]
    fn a_slow_reader_that_makes_progress_is_not_cut() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        ws.0.borrow_mut().room = 0;
        for _ in 0..30 {
            w.publish(25); // half a second of audio, chunk by chunk
            ws.0.borrow_mut().room = 200; // it reads a little
            w.ready(key.unwrap(), false, true);
            w.shard.on_timer(w.now);
        }
        assert_eq!(
            w.shard.len(),
            1,
            "15 s behind, but never 10 s without progress"
        );
    }

    #[test]
    fn a_listener_that_only_pings_and_never_reads_is_cut_by_the_stall_bound() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, 600);
        let key = key.unwrap();
        let t0 = w.now;
        // No audio at all: only its pings would ever be written.
        for i in 0..2_000u64 {
            w.now = t0 + i * 10_000;
            ws.0.borrow_mut()
                .inbound
                .extend(masked(wsframe::OP_PING, b"are you there"));
            w.ready(key, true, false);
            w.shard.on_timer(w.now);
            if w.shard.is_empty() {
                break;
            }
        }
        assert!(w.shard.is_empty(), "cut");
        assert_eq!(counter(&w.track.counters.stall_cuts, Format::Ws), 1);
        let pongs = ws_received(&ws)
            .into_iter()
            .filter(|g| matches!(g, Got::Pong(_)))
            .count();
        assert!(pongs > 10, "it was answered while it had room ({pongs})");
        // The socket filled at about 600 bytes; the cut came 10 s later (10 ms per ping).
        assert!(w.now - t0 >= 10 * SEC && w.now - t0 < 11 * SEC);
    }

    #[test]
    fn pongs_go_out_between_whole_frames_and_only_the_newest_is_answered() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        let key = key.unwrap();
        w.publish(2);
        ws.0.borrow_mut().room = 7; // inside the next frame
        w.publish(1);
        let mut pings = masked(wsframe::OP_PING, b"one");
        pings.extend(masked(wsframe::OP_PING, b"two"));
        ws.0.borrow_mut().inbound.extend(pings);
        w.ready(key, true, false);
        w.publish(2);
        ws.0.borrow_mut().room = UNLIMITED;
        w.ready(key, false, true);
        let got = ws_received(&ws);
        let at = got
            .iter()
            .position(|g| *g == Got::Pong(b"two".to_vec()))
            .expect("answered");
        assert!(!got.contains(&Got::Pong(b"one".to_vec())));
        assert_eq!(got[at - 1], Got::Audio(2), "after the frame it interrupted");
        assert_eq!(seqs(&ws), (0..5).collect::<Vec<_>>());
    }

    #[test]
    fn a_peer_close_is_answered_and_the_listener_leaves() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        w.publish(1);
        ws.0.borrow_mut()
            .inbound
            .extend(masked(wsframe::OP_CLOSE, &1000u16.to_be_bytes()));
        w.ready(key.unwrap(), true, false);
        assert_eq!(ws_received(&ws).last(), Some(&Got::Close(1000)));
        assert!(w.shard.is_empty());
        assert_eq!(w.track.listeners(), 0);
    }

    #[test]
    fn a_broken_frame_gets_a_close_with_its_code_then_the_handshake_is_bounded() {
        let mut w = World::new(Limits::default());
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        let key = key.unwrap();
        // Unmasked client frame: a protocol error (1002).
        ws.0.borrow_mut().inbound.extend([0x82, 0x01, 0x00]);
        w.ready(key, true, false);
        assert_eq!(ws_received(&ws).last(), Some(&Got::Close(1002)));
        assert!(ws.0.borrow().shut, "no more sending after our close");
        let closed_at = w.now;
        w.publish(3);
        assert_eq!(
            seqs(&ws),
            Vec::<u64>::new(),
            "no audio after the close frame"
        );
        w.shard.on_timer(closed_at + 999_999);
        assert_eq!(w.shard.len(), 1, "lingers for the peer's close");
        w.shard.on_timer(closed_at + 1_000_000);
        assert!(w.shard.is_empty());
        // Same with a peer that closes its side in time.
        let (ws, key) = w.join(Format::Ws, UNLIMITED);
        ws.0.borrow_mut().inbound.extend(masked(0x3, b"")); // reserved opcode
        w.ready(key.unwrap(), true, false);
        ws.0.borrow_mut().eof = true;
        w.ready(key.unwrap(), true, false);
        assert!(w.shard.is_empty());
    }

    #[test]
    fn when_the_space_ends_listeners_get_everything_then_leave() {
        let mut w = World::new(Limits::default());
        let (ws, _) = w.join(Format::Ws, UNLIMITED);
        let (ogg, okey) = w.join(Format::Ogg, UNLIMITED);
        w.publish(3);
        ogg.0.borrow_mut().room = 0;
        w.publish(1);
        w.track.end();
        w.shard.on_track(&w.track, w.now);
        assert_eq!(ws_received(&ws).last(), Some(&Got::Close(1001)));
        assert_eq!(
            w.shard.len(),
            2,
            "a full Ogg listener finishes first; ws lingers"
        );
        ogg.0.borrow_mut().room = UNLIMITED;
        w.ready(okey.unwrap(), false, true);
        assert_eq!(w.shard.len(), 1, "the Ogg listener left once written");
        ws.0.borrow_mut().eof = true;
        w.shard.on_ready(0, true, false, w.now);
        assert!(w.shard.is_empty());
        assert_eq!(w.fanout.listeners.load(Relaxed), 0);
    }

    #[test]
    fn a_shard_that_goes_away_counts_its_listeners_out() {
        let mut w = World::new(Limits::default());
        w.join(Format::Ws, UNLIMITED);
        w.join(Format::Ogg, UNLIMITED);
        assert_eq!(w.fanout.listeners.load(Relaxed), 2);
        drop(std::mem::replace(
            &mut w.shard,
            Shard::new(0, Limits::default()),
        ));
        assert_eq!(w.track.listeners(), 0);
        assert_eq!(w.fanout.listeners.load(Relaxed), 0);
        assert_eq!(w.track.links[0].members.load(Relaxed), 0);
    }

    #[test]
    fn an_ogg_listener_that_uploads_too_much_is_dropped() {
        let mut w = World::new(Limits::default());
        let (ogg, key) = w.join(Format::Ogg, UNLIMITED);
        ogg.0.borrow_mut().inbound = vec![b'x'; 4096];
        w.ready(key.unwrap(), true, false);
        assert_eq!(w.shard.len(), 1, "a little is tolerated");
        for _ in 0..4 {
            ogg.0.borrow_mut().inbound.extend([b'x'; 4096]);
            w.ready(key.unwrap(), true, false);
        }
        assert!(w.shard.is_empty());
    }
}
