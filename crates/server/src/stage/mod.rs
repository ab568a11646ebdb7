//! The stage of a space: its speakers (the roster), and the mixer that turns the host and
//! speakers into one programme while any speaker is connected.
//!
//! - A space with a host alone keeps the pass-through path: the host's packets go to the
//!   track as they came (no decode, no re-encode). [`Stage::mixing`] is false.
//! - When a speaker connects ([`Stage::connect`]), the mixer starts: a task that makes one
//!   20-ms frame per 20 ms of the monotonic clock ([`levee_core::stage::FrameClock`]),
//!   encodes it once, and hands it to the space's [`Programme`] (which publishes it to the
//!   track, so every delivery format carries it at no extra cost per listener). The host's
//!   packets then go to the mixer ([`Stage::feed_host`]) instead of the track.
//! - Each connection decodes its own packets on its own task and pushes the samples into the
//!   mixer; the mixer task only mixes and encodes. A speaker with a return channel (the
//!   browser's WebSocket) gets its mix-minus there: its own encode while it speaks, the
//!   programme's packet while it is silent.
//! - When the last speaker leaves, the mixer stops and the host is passed through again.
//!
//! Bounds: [`levee_core::stage::MAX_SPEAKERS`] speakers, their jitter buffers
//! ([`levee_core::stage::MAX_BUFFERED`]), [`RETURN_QUEUE`] return packets per speaker.

pub mod codec;

use crate::clock::{mono_us, wall_us};
use bytes::Bytes;
use codec::{Decoder, Encoder};
use levee_core::packet::AudioPacket;
use levee_core::space::key_hash;
use levee_core::stage::{
    Frame, FrameClock, Mixer, Roster, FRAME, HOST_SLOT, PREBUFFER, RATE, SLOTS,
};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// Return packets queued per speaker at most (500 ms); a speaker that reads slower loses the
/// newest (counted), and the mix goes on.
pub const RETURN_QUEUE: usize = 25;

/// A packet of a speaker's return (mix-minus) feed.
#[derive(Debug, Clone)]
pub struct ReturnPacket {
    /// The Opus packet (20 ms).
    pub data: Bytes,
    /// Oldest capture time in it, µs since the Unix epoch.
    pub capture_us: u64,
}

/// Where the mixer's programme goes: the space's track (implemented by the ingest endpoint,
/// which makes the space live, records and claims it as any source does).
pub trait Programme: Send + Sync + 'static {
    /// Publishes one programme packet; false if the space ended (the mixer stops).
    fn publish(&self, packet: AudioPacket) -> bool;
    /// Who is on stage and who speaks changed (bits per slot).
    fn stage_changed(&self, revision: u32, on_stage: u32, speaking: u32);
}

/// The stage's counters (`levee_stage_*` metrics).
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Programme frames mixed.
    pub frames: AtomicU64,
    /// Mix-minus frames encoded (speaking speakers with a return).
    pub minus_encodes: AtomicU64,
    /// Return packets lost because a speaker's queue was full.
    pub returns_dropped: AtomicU64,
    /// Packets that libopus refused to decode.
    pub decode_errors: AtomicU64,
    /// Frames skipped after the mixer stalled.
    pub skipped: AtomicU64,
    /// Times the mixer started.
    pub starts: AtomicU64,
}

#[derive(Default)]
struct Conn {
    gen: u64,
    returns: Option<mpsc::Sender<ReturnPacket>>,
}

struct Mix {
    mixer: Mixer,
    conns: Vec<Conn>,
    next_gen: u64,
    running: bool,
    host: Option<Decoder>,
    speaking: u32,
}

/// A WebRTC session: how to stop it, and the SHA-256 of the key that opened it.
type WhipSession = (Arc<tokio::sync::Notify>, [u8; 32]);

/// A space's stage. See the module docs.
pub struct Stage {
    roster: Mutex<Roster>,
    mix: Mutex<Mix>,
    /// WebRTC sessions by id: how to stop each, and the SHA-256 of the key that opened it.
    whip: Mutex<std::collections::HashMap<String, WhipSession>>,
    /// Its counters.
    pub counters: StageCounters,
}

impl Default for Stage {
    fn default() -> Self {
        Stage {
            roster: Mutex::new(Roster::new()),
            mix: Mutex::new(Mix {
                mixer: Mixer::new(),
                conns: (0..SLOTS).map(|_| Conn::default()).collect(),
                next_gen: 0,
                running: false,
                host: None,
                speaking: 0,
            }),
            counters: StageCounters::default(),
            whip: Mutex::default(),
        }
    }
}

/// Why a speaker's connection must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// A newer connection of the same speaker took the slot.
    Replaced,
    /// The host removed the speaker (or they left).
    Removed,
    /// A packet did not decode.
    Undecodable(String),
}

/// One speaker's connection to the mixer. Dropping it closes the slot (if still its own).
pub struct Connection {
    stage: Arc<Stage>,
    /// The speaker's id.
    pub speaker_id: String,
    slot: usize,
    gen: u64,
    decoder: Decoder,
}

impl Stage {
    /// The roster, locked.
    pub fn roster(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().expect("roster lock")
    }

    fn mix(&self) -> MutexGuard<'_, Mix> {
        self.mix.lock().expect("mix lock")
    }

    /// True while the mixer runs (a speaker is connected): the host goes through it.
    pub fn mixing(&self) -> bool {
        self.mix().running
    }

    /// Bits per slot: connected now.
    pub fn on_stage(&self) -> u32 {
        let m = self.mix();
        (0..SLOTS)
            .filter(|s| m.mixer.is_open(*s))
            .fold(0, |b, s| b | 1 << s)
    }

    /// Bits per slot: speaking in the last frame.
    pub fn speaking(&self) -> u32 {
        self.mix().speaking
    }

    /// The speaker whose key is `key`: (id, slot, muted).
    pub fn speaker_by_key(&self, key: &str) -> Option<(String, usize, bool)> {
        let h = key_hash(key.trim());
        self.roster()
            .by_key(&h)
            .map(|s| (s.id.clone(), s.slot, s.muted.is_some()))
    }

    /// Mutes or unmutes the mixer's slot `slot` (after the roster changed).
    pub fn apply_mute(&self, slot: usize, muted: bool) {
        self.mix().mixer.set_muted(slot, muted);
    }

    /// Closes slot `slot` at once (the speaker was removed); its connection ends at its next
    /// packet.
    pub fn close_slot(&self, slot: usize) {
        let mut m = self.mix();
        m.next_gen += 1;
        let gen = m.next_gen;
        m.conns[slot] = Conn { gen, returns: None };
        m.mixer.close(slot);
    }

    /// Speaker `speaker_id` connects in slot `slot`; the mixer starts if it was not running.
    /// A former connection of the same speaker is replaced. `returns`: where its mix-minus
    /// goes, if it takes one back.
    pub fn connect(
        self: &Arc<Self>,
        speaker_id: String,
        slot: usize,
        muted: bool,
        returns: Option<mpsc::Sender<ReturnPacket>>,
        programme: Arc<dyn Programme>,
    ) -> Result<Connection, codec::CodecError> {
        let decoder = Decoder::new()?;
        let mut m = self.mix();
        m.next_gen += 1;
        let gen = m.next_gen;
        let wants_return = returns.is_some();
        m.conns[slot] = Conn { gen, returns };
        m.mixer.open(slot, muted, wants_return);
        if !m.running {
            m.running = true;
            self.counters.starts.fetch_add(1, Relaxed);
            tokio::spawn(run(self.clone(), programme));
        }
        Ok(Connection {
            stage: self.clone(),
            speaker_id,
            slot,
            gen,
            decoder,
        })
    }

    /// WebRTC sessions open now.
    pub fn whip_sessions(&self) -> usize {
        self.whip.lock().expect("whip lock").len()
    }

    /// Registers WebRTC session `id`, opened with `key`; its task waits on what this returns.
    pub fn add_whip_session(&self, id: &str, key: &str) -> Arc<tokio::sync::Notify> {
        let stop = Arc::new(tokio::sync::Notify::new());
        self.whip
            .lock()
            .expect("whip lock")
            .insert(id.to_owned(), (stop.clone(), key_hash(key)));
        stop
    }

    /// Forgets WebRTC session `id` (its task ended).
    pub fn remove_whip_session(&self, id: &str) {
        self.whip.lock().expect("whip lock").remove(id);
    }

    /// Stops WebRTC session `id` if `key` opened it (or `host`): Some(true) stopped,
    /// Some(false) not this key's, None no such session.
    pub fn stop_whip_session(&self, id: &str, key: &str, host: bool) -> Option<bool> {
        let sessions = self.whip.lock().expect("whip lock");
        let (stop, hash) = sessions.get(id)?;
        if !host && !levee_core::space::constant_time_eq(hash, &key_hash(key)) {
            return Some(false);
        }
        stop.notify_one();
        Some(true)
    }

    /// Where the host's mix-minus goes (the host's WebSocket), or none.
    pub fn set_host_returns(&self, returns: Option<mpsc::Sender<ReturnPacket>>) {
        let mut m = self.mix();
        m.mixer.set_wants_return(HOST_SLOT, returns.is_some());
        m.conns[HOST_SLOT].returns = returns;
    }

    /// The host that registered `returns` left: its return feed ends (unless a newer host
    /// registered its own).
    pub fn clear_host_returns(&self, returns: &mpsc::Sender<ReturnPacket>) {
        let mut m = self.mix();
        if m.conns[HOST_SLOT]
            .returns
            .as_ref()
            .is_some_and(|r| r.same_channel(returns))
        {
            m.conns[HOST_SLOT].returns = None;
            m.mixer.set_wants_return(HOST_SLOT, false);
        }
    }

    /// The host's packets while the mixer runs: decoded into the host's slot. False if the
    /// mixer is not running (the caller publishes them as they are).
    pub fn feed_host(&self, packets: &[AudioPacket]) -> bool {
        let mut m = self.mix();
        if !m.running {
            return false;
        }
        if m.host.is_none() {
            match Decoder::new() {
                Ok(d) => m.host = Some(d),
                Err(e) => {
                    tracing::error!("host decoder: {e}");
                    return true;
                }
            }
            let wants_return = m.conns[HOST_SLOT].returns.is_some();
            m.mixer.open(HOST_SLOT, false, wants_return);
        }
        let m = &mut *m;
        let dec = m.host.as_mut().expect("just made");
        for p in packets {
            match dec.decode(&p.data) {
                Ok(pcm) => m.mixer.push(HOST_SLOT, pcm, p.capture_us),
                Err(_) => {
                    self.counters.decode_errors.fetch_add(1, Relaxed);
                }
            }
        }
        true
    }
}

impl Connection {
    /// The mixer slot.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Decodes `packets` into the mixer.
    pub fn feed(&mut self, packets: &[AudioPacket]) -> Result<(), Gone> {
        if self.stage.roster().get(&self.speaker_id).is_none() {
            return Err(Gone::Removed);
        }
        for p in packets {
            let pcm = match self.decoder.decode(&p.data) {
                Ok(pcm) => pcm,
                Err(e) => {
                    self.stage.counters.decode_errors.fetch_add(1, Relaxed);
                    return Err(Gone::Undecodable(format!(
                        "an Opus packet did not decode: {e}"
                    )));
                }
            };
            let mut m = self.stage.mix();
            if m.conns[self.slot].gen != self.gen {
                return Err(Gone::Replaced);
            }
            m.mixer.push(self.slot, pcm, p.capture_us);
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut m = self.stage.mix();
        if m.conns[self.slot].gen == self.gen {
            m.conns[self.slot].returns = None;
            m.mixer.close(self.slot);
        }
    }
}

/// The mixer task: runs while a speaker is connected.
async fn run(stage: Arc<Stage>, out: Arc<dyn Programme>) {
    let mut programme = match Encoder::programme() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("stage mixer not started: {e}");
            stage.mix().running = false;
            return;
        }
    };
    let mut minus: Vec<Option<Encoder>> = (0..SLOTS).map(|_| None).collect();
    let mut returns: Vec<Option<mpsc::Sender<ReturnPacket>>> = vec![None; SLOTS];
    let mut frame = Frame::default();
    let mut clock = FrameClock::new(mono_us());
    let mut told = (u32::MAX, u32::MAX, u32::MAX);
    let mut told_skipped = 0;
    let buffered_us = PREBUFFER as u64 * 1_000_000 / RATE as u64;
    loop {
        let due = clock.due(mono_us());
        for _ in 0..due {
            let (on_stage, revision) = {
                let mut m = stage.mix();
                if !m.mixer.any_speaker_open() {
                    m.running = false;
                    m.host = None;
                    m.speaking = 0;
                    m.mixer.close(HOST_SLOT);
                    drop(m);
                    let revision = stage.roster().revision();
                    out.stage_changed(revision, 0, 0);
                    return;
                }
                m.mixer.mix(&mut frame);
                m.speaking = frame.speaking;
                for (r, c) in returns.iter_mut().zip(&m.conns) {
                    *r = c.returns.clone();
                }
                let on = (0..SLOTS)
                    .filter(|s| m.mixer.is_open(*s))
                    .fold(0, |b, s| b | 1 << s);
                drop(m);
                (on, stage.roster().revision())
            };
            stage.counters.frames.fetch_add(1, Relaxed);
            let capture_us = frame
                .capture_us
                .unwrap_or_else(|| wall_us().saturating_sub(buffered_us));
            let data = match programme.encode(&frame.programme) {
                Ok(p) => Bytes::copy_from_slice(p),
                Err(e) => {
                    tracing::error!("stage mixer: {e}");
                    continue;
                }
            };
            let packet = AudioPacket {
                data: data.clone(),
                samples: FRAME as u32,
                capture_us,
            };
            if !out.publish(packet) {
                stage.mix().running = false;
                return;
            }
            for (slot, tx) in returns.iter_mut().enumerate() {
                let Some(tx) = tx.take() else { continue };
                let data = if frame.minus_of & (1 << slot) != 0 {
                    let enc = match &mut minus[slot] {
                        Some(e) => e,
                        slot_enc => match Encoder::mix_minus() {
                            Ok(e) => slot_enc.insert(e),
                            Err(_) => continue,
                        },
                    };
                    match enc.encode(&frame.minus[slot]) {
                        Ok(p) => {
                            stage.counters.minus_encodes.fetch_add(1, Relaxed);
                            Bytes::copy_from_slice(p)
                        }
                        Err(_) => continue,
                    }
                } else {
                    data.clone()
                };
                if tx.try_send(ReturnPacket { data, capture_us }).is_err() {
                    stage.counters.returns_dropped.fetch_add(1, Relaxed);
                }
            }
            let now = (revision, on_stage, frame.speaking);
            if now != told {
                told = now;
                out.stage_changed(revision, on_stage, frame.speaking);
            }
        }
        let skipped = clock.skipped();
        if skipped > told_skipped {
            stage
                .counters
                .skipped
                .fetch_add(skipped - told_skipped, Relaxed);
            told_skipped = skipped;
        }
        let wait = clock.next_us().saturating_sub(mono_us());
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
}
