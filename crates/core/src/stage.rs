//! The stage: who may speak in a space, and the mixer's arithmetic. No codec and no clock:
//! the server decodes Opus into the [`Mixer`], asks it for one frame per 20 ms of its own
//! clock ([`FrameClock`]), and encodes what comes out.
//!
//! - [`Roster`]: the speakers a host invited, each with a key of their own (kept only as its
//!   SHA-256), a role (speaker or co-host), a mixer slot, and who muted them; and listeners'
//!   requests to speak. Bounded: [`MAX_SPEAKERS`] speakers, [`MAX_REQUESTS`] open requests.
//! - [`Mixer`]: each input (the host in slot [`HOST_SLOT`], speakers in theirs) has a jitter
//!   buffer of decoded samples, kept with the capture time of each packet they came from. An
//!   input plays once it holds [`PREBUFFER`]; one that runs dry plays silence and buffers again
//!   (a speaker whose audio stops is out of the mix, and nobody else hears a gap), one frame
//!   deeper each time up to [`MAX_PREBUFFER`] (a jittery link gets a deeper buffer, and gets
//!   its latency back after [`CALM_FRAMES`] without running dry); one that
//!   holds more than [`MAX_BUFFERED`] loses its oldest samples (a speaker who lags or bursts can
//!   never hold the mix back). A frame is the sum of the unmuted playing inputs through a
//!   [`Limiter`] (the programme, which never clips) and carries the oldest capture time of what
//!   it holds, so listeners measure mouth-to-ear latency through the mix.
//! - Mix-minus: each speaker should hear everyone but themselves. For an input that is
//!   speaking (its level over [`SPEAKING_RMS`], held for [`HANGOVER_FRAMES`]), the mixer makes
//!   the sum without it, through a limiter of its own; an input that is silent hears the
//!   programme itself (which holds its own signal only below the speaking level), so a silent
//!   speaker costs no encode.
//!
//! The mixer works in mono at 48 kHz: speech is mono, and a mono Opus packet is valid in a
//! stereo stream (RFC 7845), so the programme keeps the space's header.

use crate::space::constant_time_eq;
use std::collections::VecDeque;
use std::fmt;

/// Speakers on one stage at most (the host not counted).
pub const MAX_SPEAKERS: usize = 16;
/// Mixer slots: the host's and one per speaker.
pub const SLOTS: usize = MAX_SPEAKERS + 1;
/// The host's mixer slot.
pub const HOST_SLOT: usize = 0;
/// Open requests to speak per space at most.
pub const MAX_REQUESTS: usize = 64;
/// Requests waiting from one source (its /32 or /64) at most: one address cannot fill the
/// host's list.
pub const MAX_REQUESTS_PER_SOURCE: usize = 2;
/// Characters of a speaker's or requester's name at most.
pub const MAX_NAME_CHARS: usize = 64;
/// Sample rate of the mixer (Opus decodes to it natively).
pub const RATE: u32 = 48_000;
/// One mixer frame: 20 ms at 48 kHz.
pub const FRAME: usize = 960;
/// Duration of one frame, µs.
pub const FRAME_US: u64 = 20_000;
/// Samples an input holds before it plays (60 ms): its jitter buffer, at first.
pub const PREBUFFER: usize = 3 * FRAME;
/// The most an input's jitter buffer grows to (160 ms): each time it runs dry it holds one
/// frame more before playing again.
pub const MAX_PREBUFFER: usize = 8 * FRAME;
/// Frames played without running dry (10 s) after which an input's jitter buffer shrinks by
/// one frame (dropping one frame of its oldest audio, if it holds it).
pub const CALM_FRAMES: u32 = 500;
/// Samples an input may hold at most (240 ms); more and its oldest are dropped.
pub const MAX_BUFFERED: usize = 12 * FRAME;
/// RMS level (of full scale 1.0) over which an input counts as speaking (−40 dBFS).
pub const SPEAKING_RMS: f32 = 0.01;
/// Frames an input stays "speaking" after its level fell (300 ms).
pub const HANGOVER_FRAMES: u32 = 15;
/// Frames the [`FrameClock`] catches up at most after a stall; older ones are skipped.
pub const MAX_CATCH_UP: u64 = 10;
/// The limiter's ceiling: −1 dBFS.
pub const CEILING: f32 = 0.891;

/// Why a stage operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageError {
    /// The stage holds [`MAX_SPEAKERS`] already.
    Full,
    /// [`MAX_REQUESTS`] requests wait already.
    TooManyRequests,
    /// [`MAX_REQUESTS_PER_SOURCE`] requests from this source wait already.
    TooManyFromSource,
    /// The name is empty, too long or holds control characters.
    BadName(&'static str),
    /// No speaker or request with that id.
    NotFound,
    /// The caller may not do this.
    Forbidden(&'static str),
    /// The request was answered already.
    Answered,
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::Full => write!(f, "the stage holds its maximum of {MAX_SPEAKERS} speakers"),
            StageError::TooManyRequests => {
                write!(f, "{MAX_REQUESTS} requests to speak wait already")
            }
            StageError::TooManyFromSource => write!(
                f,
                "{MAX_REQUESTS_PER_SOURCE} requests to speak from this address wait already"
            ),
            StageError::BadName(why) => write!(f, "bad name: {why}"),
            StageError::NotFound => write!(f, "no such speaker or request"),
            StageError::Forbidden(why) => write!(f, "{why}"),
            StageError::Answered => write!(f, "this request was answered already"),
        }
    }
}

impl std::error::Error for StageError {}

/// A stage role besides the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Speaks.
    Speaker,
    /// Speaks, and manages the stage as the host does (invite, mute, remove, answer requests).
    Cohost,
}

impl Role {
    /// The role's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Speaker => "speaker",
            Role::Cohost => "cohost",
        }
    }
    /// The role named `s` in the API.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "speaker" => Some(Role::Speaker),
            "cohost" => Some(Role::Cohost),
            _ => None,
        }
    }
}

/// Who muted a speaker: a speaker may unmute themselves only if they muted themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutedBy {
    /// The host or a co-host.
    Host,
    /// The speaker.
    Itself,
}

/// Who acts on the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    /// The host (host key).
    Host,
    /// A speaker or co-host (their own key), by id.
    Speaker(&'a str, Role),
}

impl Actor<'_> {
    fn manages(&self) -> bool {
        matches!(self, Actor::Host | Actor::Speaker(_, Role::Cohost))
    }
}

/// One invited speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    /// Its id in the API.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its mixer slot (1..[`SLOTS`]).
    pub slot: usize,
    /// Muted, and by whom.
    pub muted: Option<MutedBy>,
    /// When invited, µs since the Unix epoch.
    pub invited_us: u64,
    key_sha256: [u8; 32],
}

/// What became of a request to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet.
    Waiting,
    /// Accepted: the requester speaks as this speaker, with this key (handed over once, then
    /// forgotten: [`Roster::collect`]).
    Accepted {
        /// The speaker's id.
        speaker_id: String,
        /// The speaker's key, until collected.
        key: Option<String>,
    },
    /// Declined.
    Declined,
}

/// A listener's request to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id in the API.
    pub id: String,
    /// The requester's display name.
    pub name: String,
    /// When made, µs since the Unix epoch.
    pub at_us: u64,
    /// Its answer.
    pub answer: Answer,
    token_sha256: [u8; 32],
    source: u64,
}

/// A display name, checked: 1 to [`MAX_NAME_CHARS`] characters, no control characters,
/// trimmed.
pub fn check_name(name: &str) -> Result<String, StageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StageError::BadName("a name is needed"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(StageError::BadName("longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(StageError::BadName("control characters"));
    }
    Ok(name.to_owned())
}

/// The speakers and requests of one stage. See the module docs.
#[derive(Debug, Default)]
pub struct Roster {
    speakers: Vec<Speaker>,
    requests: VecDeque<Request>,
    revision: u32,
}

impl Roster {
    /// An empty stage.
    pub fn new() -> Self {
        Self::default()
    }

    /// The speakers, in the order they were invited.
    pub fn speakers(&self) -> &[Speaker] {
        &self.speakers
    }

    /// The requests to speak, oldest first (answered ones stay until collected or pushed out).
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.iter()
    }

    /// Grows by one at every change (listeners fetch the stage again when it moves).
    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// The speaker with this id.
    pub fn get(&self, id: &str) -> Option<&Speaker> {
        self.speakers.iter().find(|s| s.id == id)
    }

    /// The speaker whose key hashes to `key_sha256` (compared in constant time with each).
    pub fn by_key(&self, key_sha256: &[u8; 32]) -> Option<&Speaker> {
        let mut found = None;
        for s in &self.speakers {
            if constant_time_eq(&s.key_sha256, key_sha256) {
                found = Some(s);
            }
        }
        found
    }

    fn changed(&mut self) {
        self.revision = self.revision.wrapping_add(1);
    }

    /// Invites a speaker named `name` with id `id` and a key hashing to `key_sha256`.
    pub fn invite(
        &mut self,
        actor: Actor<'_>,
        name: &str,
        role: Role,
        id: String,
        key_sha256: [u8; 32],
        now_us: u64,
    ) -> Result<&Speaker, StageError> {
        if !actor.manages() {
            return Err(StageError::Forbidden(
                "only the host or a co-host invites speakers",
            ));
        }
        let name = check_name(name)?;
        if self.speakers.len() >= MAX_SPEAKERS {
            return Err(StageError::Full);
        }
        let slot = (1..SLOTS)
            .find(|s| self.speakers.iter().all(|x| x.slot != *s))
            .ok_or(StageError::Full)?;
        self.speakers.push(Speaker {
            id,
            name,
            role,
            slot,
            muted: None,
            invited_us: now_us,
            key_sha256,
        });
        self.changed();
        Ok(self.speakers.last().expect("just pushed"))
    }

    /// Mutes or unmutes speaker `id`. A speaker acts on themselves only, and cannot unmute
    /// what the host muted.
    pub fn set_muted(&mut self, actor: Actor<'_>, id: &str, muted: bool) -> Result<(), StageError> {
        let manages = actor.manages();
        let me = matches!(actor, Actor::Speaker(me, _) if me == id);
        let s = self
            .speakers
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(StageError::NotFound)?;
        if !manages && !me {
            return Err(StageError::Forbidden(
                "a speaker mutes or unmutes only themselves",
            ));
        }
        let next = match (muted, s.muted) {
            (true, _) if manages && !me => Some(MutedBy::Host),
            (true, Some(by)) => Some(by),
            (true, None) => Some(MutedBy::Itself),
            (false, Some(MutedBy::Host)) if !manages => {
                return Err(StageError::Forbidden(
                    "the host muted this speaker; only the host unmutes",
                ))
            }
            (false, _) => None,
        };
        if s.muted != next {
            s.muted = next;
            self.changed();
        }
        Ok(())
    }

    /// Removes speaker `id` (the host or a co-host removes anyone; a speaker leaves).
    /// Returns the slot it held.
    pub fn remove(&mut self, actor: Actor<'_>, id: &str) -> Result<usize, StageError> {
        let at = self
            .speakers
            .iter()
            .position(|s| s.id == id)
            .ok_or(StageError::NotFound)?;
        let me = matches!(actor, Actor::Speaker(me, _) if me == id);
        if !actor.manages() && !me {
            return Err(StageError::Forbidden(
                "only the host or a co-host removes other speakers",
            ));
        }
        let s = self.speakers.remove(at);
        self.changed();
        Ok(s.slot)
    }

    /// A listener from `source` (a key of its /32 or /64) asks to speak. The oldest answered
    /// request makes room if the list is full.
    pub fn request(
        &mut self,
        name: &str,
        id: String,
        token_sha256: [u8; 32],
        source: u64,
        now_us: u64,
    ) -> Result<&Request, StageError> {
        let name = check_name(name)?;
        let waiting = self
            .requests
            .iter()
            .filter(|r| r.source == source && r.answer == Answer::Waiting)
            .count();
        if waiting >= MAX_REQUESTS_PER_SOURCE {
            return Err(StageError::TooManyFromSource);
        }
        if self.requests.len() >= MAX_REQUESTS {
            let answered = self
                .requests
                .iter()
                .position(|r| r.answer != Answer::Waiting)
                .ok_or(StageError::TooManyRequests)?;
            self.requests.remove(answered);
        }
        self.requests.push_back(Request {
            id,
            name,
            at_us: now_us,
            answer: Answer::Waiting,
            token_sha256,
            source,
        });
        self.changed();
        Ok(self.requests.back().expect("just pushed"))
    }

    /// The host accepts request `id`: the requester becomes a speaker with `speaker_id` and
    /// a key hashing to `key_sha256`, which the requester collects once.
    pub fn accept(
        &mut self,
        actor: Actor<'_>,
        id: &str,
        speaker_id: String,
        key: String,
        key_sha256: [u8; 32],
        now_us: u64,
    ) -> Result<&Speaker, StageError> {
        let at = self
            .requests
            .iter()
            .position(|r| r.id == id)
            .ok_or(StageError::NotFound)?;
        if self.requests[at].answer != Answer::Waiting {
            return Err(StageError::Answered);
        }
        let name = self.requests[at].name.clone();
        self.invite(
            actor,
            &name,
            Role::Speaker,
            speaker_id.clone(),
            key_sha256,
            now_us,
        )?;
        self.requests[at].answer = Answer::Accepted {
            speaker_id,
            key: Some(key),
        };
        Ok(self.speakers.last().expect("just invited"))
    }

    /// The host declines request `id`.
    pub fn decline(&mut self, actor: Actor<'_>, id: &str) -> Result<(), StageError> {
        if !actor.manages() {
            return Err(StageError::Forbidden(
                "only the host or a co-host answers requests",
            ));
        }
        let r = self
            .requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(StageError::NotFound)?;
        if r.answer != Answer::Waiting {
            return Err(StageError::Answered);
        }
        r.answer = Answer::Declined;
        self.changed();
        Ok(())
    }

    /// The requester (holding the token that hashes to `token_sha256`) reads the answer to
    /// request `id`; an accepted request's key is handed over this once and then forgotten.
    pub fn collect(&mut self, id: &str, token_sha256: &[u8; 32]) -> Result<Answer, StageError> {
        let r = self
            .requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(StageError::NotFound)?;
        if !constant_time_eq(&r.token_sha256, token_sha256) {
            return Err(StageError::Forbidden("wrong token for this request"));
        }
        let answer = r.answer.clone();
        if let Answer::Accepted { key, .. } = &mut r.answer {
            *key = None;
        }
        Ok(answer)
    }
}

/// A peak limiter: instant attack (1-ms blocks), 50-ms release, hard ceiling. Output never
/// leaves [−1, 1].
#[derive(Debug, Clone)]
pub struct Limiter {
    gain: f32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { gain: 1.0 }
    }
}

/// Samples per limiter block (1 ms).
const LIMITER_BLOCK: usize = 48;
/// Share of the distance to unity gain recovered per block (a time constant of 50 ms).
const LIMITER_RELEASE: f32 = 0.02;

impl Limiter {
    /// Limits `x` in place.
    pub fn process(&mut self, x: &mut [f32]) {
        for block in x.chunks_mut(LIMITER_BLOCK) {
            let peak = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let allowed = if peak > CEILING { CEILING / peak } else { 1.0 };
            self.gain = if allowed < self.gain {
                allowed
            } else {
                let g = self.gain + (1.0 - self.gain) * LIMITER_RELEASE;
                (if g > 0.999 { 1.0 } else { g }).min(allowed)
            };
            let g = self.gain;
            for v in block.iter_mut() {
                *v = (*v * g).clamp(-1.0, 1.0);
            }
        }
    }

    /// The gain now (1.0: not limiting).
    pub fn gain(&self) -> f32 {
        self.gain
    }
}

/// Counters of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Frames it played.
    pub frames: u64,
    /// Times it ran dry while playing.
    pub underruns: u64,
    /// Samples dropped because it held more than [`MAX_BUFFERED`].
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Input {
    open: bool,
    pcm: VecDeque<f32>,
    /// (samples left of the packet, its first sample's capture time µs), oldest first.
    spans: VecDeque<(u32, u64)>,
    playing: bool,
    /// Samples to hold before playing (adapts between PREBUFFER and MAX_PREBUFFER).
    target: usize,
    /// Frames played since it last ran dry.
    calm: u32,
    muted: bool,
    hang: u32,
    wants_return: bool,
    limiter: Limiter,
    frame: Vec<f32>,
    stats: InputStats,
}

impl Input {
    /// Drops `n` samples from the front, with their spans.
    fn pop(&mut self, n: usize) -> Option<u64> {
        let first = self.spans.front().map(|s| s.1);
        let mut left = n;
        while left > 0 {
            let Some(span) = self.spans.front_mut() else {
                break;
            };
            let take = (span.0 as usize).min(left);
            span.0 -= take as u32;
            span.1 += take as u64 * 1_000_000 / RATE as u64;
            left -= take;
            if span.0 == 0 {
                self.spans.pop_front();
            }
        }
        first
    }
}

/// One frame out of the mixer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The programme: the limited sum of the unmuted playing inputs.
    pub programme: Vec<f32>,
    /// The oldest capture time in it, µs since the Unix epoch (none: it is silence).
    pub capture_us: Option<u64>,
    /// Bit per slot: speaking now.
    pub speaking: u32,
    /// Bit per slot: in the mix (playing and unmuted).
    pub mixed: u32,
    /// Bit per slot: has its own mix-minus in [`Frame::minus`] (speaking, wants a return).
    pub minus_of: u32,
    /// Per slot: the mix without it, where [`Frame::minus_of`] says so.
    pub minus: Vec<Vec<f32>>,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            programme: vec![0.0; FRAME],
            capture_us: None,
            speaking: 0,
            mixed: 0,
            minus_of: 0,
            minus: (0..SLOTS).map(|_| vec![0.0; FRAME]).collect(),
        }
    }
}

/// The mixer of one stage. See the module docs.
#[derive(Debug)]
pub struct Mixer {
    inputs: Vec<Input>,
    sum: Vec<f32>,
    limiter: Limiter,
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixer {
    /// A mixer with every slot closed. It holds no sample buffers until used (every space
    /// has one, and most never mix): an input's frame is allocated when it opens, the sum at
    /// the first mix.
    pub fn new() -> Self {
        Mixer {
            inputs: (0..SLOTS).map(|_| Input::default()).collect(),
            sum: Vec::new(),
            limiter: Limiter::default(),
        }
    }

    /// Opens slot `slot` afresh (a new connection): its buffer is emptied, its counters kept.
    /// `wants_return`: the connection takes a mix-minus back.
    pub fn open(&mut self, slot: usize, muted: bool, wants_return: bool) {
        let i = &mut self.inputs[slot];
        i.open = true;
        i.frame.resize(FRAME, 0.0);
        i.pcm.clear();
        i.spans.clear();
        i.playing = false;
        i.target = PREBUFFER;
        i.calm = 0;
        i.hang = 0;
        i.muted = muted;
        i.wants_return = wants_return;
    }

    /// Closes slot `slot`: what it held is dropped.
    pub fn close(&mut self, slot: usize) {
        let i = &mut self.inputs[slot];
        i.open = false;
        i.pcm.clear();
        i.spans.clear();
        i.playing = false;
        i.hang = 0;
    }

    /// True while slot `slot` is open.
    pub fn is_open(&self, slot: usize) -> bool {
        self.inputs[slot].open
    }

    /// True while any speaker's slot (not the host's) is open.
    pub fn any_speaker_open(&self) -> bool {
        self.inputs[HOST_SLOT + 1..].iter().any(|i| i.open)
    }

    /// Mutes or unmutes slot `slot`.
    pub fn set_muted(&mut self, slot: usize, muted: bool) {
        self.inputs[slot].muted = muted;
    }

    /// Whether slot `slot` takes a mix-minus back.
    pub fn set_wants_return(&mut self, slot: usize, wants: bool) {
        self.inputs[slot].wants_return = wants;
    }

    /// Samples slot `slot` holds.
    pub fn buffered(&self, slot: usize) -> usize {
        self.inputs[slot].pcm.len()
    }

    /// Samples slot `slot` holds before it plays (its jitter buffer now).
    pub fn target(&self, slot: usize) -> usize {
        self.inputs[slot].target.max(PREBUFFER)
    }

    /// Slot `slot`'s counters.
    pub fn stats(&self, slot: usize) -> InputStats {
        self.inputs[slot].stats
    }

    /// Appends decoded samples captured from `capture_us` on to slot `slot` (ignored if the
    /// slot is closed). Beyond [`MAX_BUFFERED`], the oldest samples go, down to
    /// [`PREBUFFER`]: a lagging input comes back to the live edge at once.
    pub fn push(&mut self, slot: usize, pcm: &[f32], capture_us: u64) {
        let i = &mut self.inputs[slot];
        if !i.open || pcm.is_empty() {
            return;
        }
        // A decoder never yields NaN or infinities, but the mix must not depend on it.
        i.pcm
            .extend(pcm.iter().map(|v| if v.is_finite() { *v } else { 0.0 }));
        i.spans.push_back((pcm.len() as u32, capture_us));
        if i.pcm.len() > MAX_BUFFERED {
            let drop = i.pcm.len() - i.target.max(PREBUFFER);
            i.pcm.drain(..drop);
            i.pop(drop);
            i.stats.dropped += drop as u64;
        }
    }

    /// Mixes the next frame into `out`.
    pub fn mix(&mut self, out: &mut Frame) {
        self.sum.resize(FRAME, 0.0);
        self.sum.fill(0.0);
        out.capture_us = None;
        out.speaking = 0;
        out.mixed = 0;
        out.minus_of = 0;
        for (slot, i) in self.inputs.iter_mut().enumerate() {
            if !i.open {
                continue;
            }
            if !i.playing {
                if i.pcm.len() < i.target.max(PREBUFFER) {
                    i.hang = i.hang.saturating_sub(1);
                    continue;
                }
                i.playing = true;
            }
            let n = i.pcm.len().min(FRAME);
            for (d, s) in i.frame.iter_mut().zip(i.pcm.drain(..n)) {
                *d = s;
            }
            i.frame[n..].fill(0.0);
            let captured = i.pop(n);
            i.stats.frames += 1;
            if n < FRAME {
                i.playing = false;
                i.stats.underruns += 1;
                i.target = (i.target.max(PREBUFFER) + FRAME).min(MAX_PREBUFFER);
                i.calm = 0;
            } else {
                i.calm += 1;
                if i.calm >= CALM_FRAMES && i.target > PREBUFFER {
                    i.target -= FRAME;
                    i.calm = 0;
                    if i.pcm.len() >= i.target {
                        i.pcm.drain(..FRAME);
                        i.pop(FRAME);
                        i.stats.dropped += FRAME as u64;
                    }
                }
            }
            if i.muted {
                i.hang = 0;
                continue;
            }
            let energy: f32 = i.frame.iter().map(|v| v * v).sum();
            if energy > SPEAKING_RMS * SPEAKING_RMS * FRAME as f32 {
                i.hang = HANGOVER_FRAMES;
            } else {
                i.hang = i.hang.saturating_sub(1);
            }
            if i.hang > 0 {
                out.speaking |= 1 << slot;
            }
            out.mixed |= 1 << slot;
            for (s, v) in self.sum.iter_mut().zip(&i.frame) {
                *s += v;
            }
            if let Some(c) = captured {
                out.capture_us = Some(out.capture_us.map_or(c, |o: u64| o.min(c)));
            }
        }
        out.programme.copy_from_slice(&self.sum);
        self.limiter.process(&mut out.programme);
        for (slot, i) in self.inputs.iter_mut().enumerate() {
            if out.speaking & (1 << slot) == 0 || !i.wants_return {
                continue;
            }
            let m = &mut out.minus[slot];
            for ((d, s), own) in m.iter_mut().zip(&self.sum).zip(&i.frame) {
                *d = s - own;
            }
            i.limiter.process(m);
            out.minus_of |= 1 << slot;
        }
    }
}

/// When frames are due: one per [`FRAME_US`] since the start, on a monotonic clock. After a
/// stall it owes at most [`MAX_CATCH_UP`] frames and skips the rest (counted).
#[derive(Debug, Clone)]
pub struct FrameClock {
    start_us: u64,
    made: u64,
    skipped: u64,
}

impl FrameClock {
    /// A clock whose first frame is due at `now_us`.
    pub fn new(now_us: u64) -> Self {
        FrameClock {
            start_us: now_us,
            made: 0,
            skipped: 0,
        }
    }

    /// Frames due at `now_us` (each counted as made).
    pub fn due(&mut self, now_us: u64) -> u64 {
        let should = now_us.saturating_sub(self.start_us) / FRAME_US + 1;
        let owed = should.saturating_sub(self.made);
        if owed > MAX_CATCH_UP {
            self.skipped += owed - MAX_CATCH_UP;
            self.made = should - MAX_CATCH_UP;
        }
        let n = should.saturating_sub(self.made);
        self.made += n;
        n
    }

    /// When the next frame is due, monotonic µs.
    pub fn next_us(&self) -> u64 {
        self.start_us + self.made * FRAME_US
    }

    /// Frames skipped after stalls.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn tone(freq: f32, amp: f32, n: usize, phase0: usize) -> Vec<f32> {
        (0..n)
            .map(|k| {
                let t = (phase0 + k) as f32 / RATE as f32;
                amp * (2.0 * std::f32::consts::PI * freq * t).sin()
            })
            .collect()
    }

    /// Power of `freq` in `x` (Goertzel), normalised to a full-scale sine's 0.25.
    fn power(x: &[f32], freq: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * freq / RATE as f32;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0f32, 0f32);
        for v in x {
            let s = v + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - c * s1 * s2;
        p / (x.len() as f32 * x.len() as f32)
    }

    #[test]
    fn roster_invites_up_to_its_bound_and_reuses_slots() {
        let mut r = Roster::new();
        for n in 0..MAX_SPEAKERS {
            let s = r
                .invite(
                    Actor::Host,
                    "guest",
                    Role::Speaker,
                    format!("s{n}"),
                    key(n as u8),
                    0,
                )
                .unwrap();
            assert_eq!(s.slot, n + 1);
        }
        let full = r.invite(
            Actor::Host,
            "one more",
            Role::Speaker,
            "x".into(),
            key(99),
            0,
        );
        assert_eq!(full.unwrap_err(), StageError::Full);
        assert_eq!(r.remove(Actor::Host, "s3").unwrap(), 4);
        let s = r
            .invite(
                Actor::Host,
                "late",
                Role::Speaker,
                "late".into(),
                key(77),
                0,
            )
            .unwrap();
        assert_eq!(s.slot, 4, "a freed slot is reused");
        assert_eq!(r.by_key(&key(77)).unwrap().id, "late");
        assert!(
            r.by_key(&key(3)).is_none(),
            "a removed speaker's key opens nothing"
        );
    }

    #[test]
    fn names_are_checked() {
        let mut r = Roster::new();
        for bad in ["", "   ", "a\u{7}b", "x".repeat(65).as_str()] {
            let e = r.invite(Actor::Host, bad, Role::Speaker, "i".into(), key(1), 0);
            assert!(matches!(e, Err(StageError::BadName(_))), "{bad:?}");
        }
        assert!(
            r.speakers().is_empty() && r.revision() == 0,
            "nothing changed"
        );
        assert_eq!(check_name("  Ada ").unwrap(), "Ada");
    }

    #[test]
    fn only_managers_invite_and_a_host_mute_holds() {
        let mut r = Roster::new();
        r.invite(Actor::Host, "Ada", Role::Speaker, "a".into(), key(1), 0)
            .unwrap();
        r.invite(Actor::Host, "Bo", Role::Cohost, "b".into(), key(2), 0)
            .unwrap();
        let ada = Actor::Speaker("a", Role::Speaker);
        let bo = Actor::Speaker("b", Role::Cohost);
        assert!(matches!(
            r.invite(ada, "Cy", Role::Speaker, "c".into(), key(3), 0),
            Err(StageError::Forbidden(_))
        ));
        r.invite(bo, "Cy", Role::Speaker, "c".into(), key(3), 0)
            .unwrap();
        // Ada mutes and unmutes herself.
        r.set_muted(ada, "a", true).unwrap();
        assert_eq!(r.get("a").unwrap().muted, Some(MutedBy::Itself));
        r.set_muted(ada, "a", false).unwrap();
        assert_eq!(r.get("a").unwrap().muted, None);
        // The co-host mutes Ada: she cannot unmute herself.
        r.set_muted(bo, "a", true).unwrap();
        assert!(matches!(
            r.set_muted(ada, "a", false),
            Err(StageError::Forbidden(_))
        ));
        assert_eq!(r.get("a").unwrap().muted, Some(MutedBy::Host));
        // Nor mute someone else.
        assert!(matches!(
            r.set_muted(ada, "c", true),
            Err(StageError::Forbidden(_))
        ));
        r.set_muted(Actor::Host, "a", false).unwrap();
        assert_eq!(r.get("a").unwrap().muted, None);
        // A speaker leaves; may not remove others.
        assert!(matches!(r.remove(ada, "c"), Err(StageError::Forbidden(_))));
        r.remove(ada, "a").unwrap();
        assert!(r.get("a").is_none());
        assert_eq!(
            r.set_muted(Actor::Host, "a", true),
            Err(StageError::NotFound)
        );
    }

    #[test]
    fn requests_are_answered_and_the_key_handed_over_once() {
        let mut r = Roster::new();
        r.request("Dee", "q1".into(), key(9), 1, 5).unwrap();
        assert_eq!(
            r.collect("q1", &key(8)).unwrap_err(),
            StageError::Forbidden("wrong token for this request")
        );
        assert_eq!(r.collect("q1", &key(9)).unwrap(), Answer::Waiting);
        let ada = Actor::Speaker("a", Role::Speaker);
        assert!(r
            .accept(ada, "q1", "d".into(), "k".into(), key(4), 6)
            .is_err());
        let s = r
            .accept(Actor::Host, "q1", "d".into(), "k".into(), key(4), 6)
            .unwrap();
        assert_eq!((s.name.as_str(), s.slot), ("Dee", 1));
        assert_eq!(
            r.accept(Actor::Host, "q1", "e".into(), "k".into(), key(5), 6)
                .unwrap_err(),
            StageError::Answered
        );
        assert_eq!(
            r.collect("q1", &key(9)).unwrap(),
            Answer::Accepted {
                speaker_id: "d".into(),
                key: Some("k".into())
            }
        );
        assert_eq!(
            r.collect("q1", &key(9)).unwrap(),
            Answer::Accepted {
                speaker_id: "d".into(),
                key: None
            },
            "the key is handed over once"
        );
    }

    #[test]
    fn requests_are_bounded_and_answered_ones_make_room() {
        let mut r = Roster::new();
        for n in 0..MAX_REQUESTS {
            r.request("x", format!("q{n}"), key(1), n as u64, 0)
                .unwrap();
        }
        assert_eq!(
            r.request("y", "over".into(), key(1), 999, 0).unwrap_err(),
            StageError::TooManyRequests
        );
        r.decline(Actor::Host, "q7").unwrap();
        r.request("y", "over".into(), key(1), 999, 0).unwrap();
        assert_eq!(r.requests().count(), MAX_REQUESTS);
        assert!(r.requests().all(|q| q.id != "q7"));
        // One source holds at most two waiting requests; an answered one frees its place.
        r.decline(Actor::Host, "q8").unwrap();
        r.request("y", "again".into(), key(1), 999, 0).unwrap();
        assert_eq!(
            r.request("y", "third".into(), key(1), 999, 0).unwrap_err(),
            StageError::TooManyFromSource
        );
        r.decline(Actor::Host, "over").unwrap();
        r.request("y", "third".into(), key(1), 999, 0).unwrap();
    }

    #[test]
    fn limiter_never_clips_and_recovers() {
        let mut l = Limiter::default();
        let mut x: Vec<f32> = tone(440.0, 1.0, FRAME, 0)
            .iter()
            .zip(tone(1000.0, 1.0, FRAME, 0))
            .map(|(a, b)| a + b + 0.5)
            .collect();
        l.process(&mut x);
        assert!(x.iter().all(|v| v.abs() <= 1.0));
        assert!(l.gain() < 0.5);
        let mut quiet = tone(440.0, 0.1, FRAME * 20, 0);
        l.process(&mut quiet);
        assert!(l.gain() > 0.99, "released within 400 ms: {}", l.gain());
        let mut soft = tone(440.0, 0.5, FRAME, 0);
        let before = soft.clone();
        l.process(&mut soft);
        assert_eq!(soft, before, "under the ceiling nothing changes");
    }

    /// Feeds `frames` 20-ms frames of two tones into slots 1 and 2, mixing after each.
    fn run(m: &mut Mixer, frames: usize, mut each: impl FnMut(usize, &Frame)) {
        let mut out = Frame::default();
        for f in 0..frames {
            m.push(
                1,
                &tone(440.0, 0.3, FRAME, f * FRAME),
                1_000_000 + f as u64 * FRAME_US,
            );
            m.push(
                2,
                &tone(1000.0, 0.3, FRAME, f * FRAME),
                2_000_000 + f as u64 * FRAME_US,
            );
            m.mix(&mut out);
            each(f, &out);
        }
    }

    #[test]
    fn the_programme_holds_both_speakers_and_a_mute_takes_one_out() {
        let mut m = Mixer::new();
        m.open(1, false, true);
        m.open(2, false, false);
        let mut last = Frame::default();
        run(&mut m, 10, |f, out| {
            if f < 2 {
                assert_eq!(
                    out.mixed, 0,
                    "buffering: nothing plays before 60 ms is held"
                );
            }
            last = out.clone();
        });
        assert_eq!(last.mixed, 0b110);
        assert_eq!(last.speaking, 0b110);
        assert!(power(&last.programme, 440.0) > 0.01);
        assert!(power(&last.programme, 1000.0) > 0.01);
        // The capture time is the oldest held: slot 1's (it started at 1 s).
        assert!(last.capture_us.unwrap() < 2_000_000);
        // Slot 1 wants a return: its mix-minus holds slot 2 alone; slot 2 has none.
        assert_eq!(last.minus_of, 0b010);
        let (own, other) = (power(&last.minus[1], 440.0), power(&last.minus[1], 1000.0));
        assert!(other > 0.01 && own < other / 1000.0, "{own} {other}");
        m.set_muted(2, true);
        run(&mut m, 1, |_, out| last = out.clone());
        let (gone, kept) = (
            power(&last.programme, 1000.0),
            power(&last.programme, 440.0),
        );
        assert!(
            kept > 0.01 && gone < kept / 1000.0,
            "muted: out at the next frame"
        );
        assert_eq!(last.speaking & 0b100, 0);
    }

    #[test]
    fn an_input_that_stops_leaves_the_mix_without_a_gap_and_rejoins() {
        let mut m = Mixer::new();
        m.open(1, false, false);
        m.open(2, false, false);
        let mut out = Frame::default();
        for f in 0..10 {
            m.push(1, &tone(440.0, 0.3, FRAME, f * FRAME), f as u64 * FRAME_US);
            if f < 5 {
                m.push(2, &tone(1000.0, 0.3, FRAME, f * FRAME), f as u64 * FRAME_US);
            }
            m.mix(&mut out);
        }
        assert_eq!(out.mixed, 0b010, "slot 2 ran dry and is out");
        assert!(m.stats(2).underruns >= 1);
        assert!(power(&out.programme, 440.0) > 0.01, "slot 1 plays on");
        // Slot 2 comes back: after its prebuffer it is mixed again.
        for f in 10..15 {
            m.push(1, &tone(440.0, 0.3, FRAME, f * FRAME), f as u64 * FRAME_US);
            m.push(2, &tone(1000.0, 0.3, FRAME, f * FRAME), f as u64 * FRAME_US);
            m.mix(&mut out);
        }
        assert_eq!(out.mixed, 0b110);
    }

    #[test]
    fn a_jittery_input_gets_a_deeper_buffer_and_its_latency_back_when_calm() {
        let mut m = Mixer::new();
        m.open(1, false, false);
        let mut out = Frame::default();
        let mut f = 0usize;
        let mut feed = |m: &mut Mixer, frames: usize| {
            for _ in 0..frames {
                m.push(1, &tone(440.0, 0.3, FRAME, f * FRAME), 0);
                f += 1;
            }
        };
        // Runs dry twice: two frames deeper.
        for _ in 0..2 {
            feed(&mut m, 5);
            for _ in 0..7 {
                m.mix(&mut out);
            }
        }
        assert_eq!(m.stats(1).underruns, 2);
        assert_eq!(m.target(1), PREBUFFER + 2 * FRAME);
        // Now steady: it waits for 100 ms before playing, then plays on.
        feed(&mut m, 4);
        m.mix(&mut out);
        assert_eq!(out.mixed, 0, "holds 80 ms: still buffering");
        feed(&mut m, 1);
        m.mix(&mut out);
        assert_eq!(out.mixed, 0b10);
        for _ in 0..CALM_FRAMES * 2 + 1 {
            feed(&mut m, 1);
            m.mix(&mut out);
        }
        assert_eq!(m.target(1), PREBUFFER, "calm for 20 s: back to 60 ms");
        assert_eq!(m.buffered(1), PREBUFFER - FRAME, "and its latency with it");
        // Never beyond the bound, however often it runs dry.
        for _ in 0..60 {
            feed(&mut m, 1);
            for _ in 0..12 {
                m.mix(&mut out);
            }
        }
        assert_eq!(m.target(1), MAX_PREBUFFER);
    }

    #[test]
    fn a_bursting_input_is_cut_back_to_the_live_edge() {
        let mut m = Mixer::new();
        m.open(3, false, false);
        m.push(3, &tone(440.0, 0.3, MAX_BUFFERED + FRAME, 0), 0);
        assert_eq!(m.buffered(3), PREBUFFER);
        assert_eq!(
            m.stats(3).dropped,
            (MAX_BUFFERED + FRAME - PREBUFFER) as u64
        );
        let mut out = Frame::default();
        m.mix(&mut out);
        // The capture time moved with the dropped samples.
        let dropped_us = (MAX_BUFFERED + FRAME - PREBUFFER) as u64 * 1_000_000 / 48_000;
        assert_eq!(out.capture_us, Some(dropped_us));
        // A closed slot takes nothing.
        m.close(3);
        m.push(3, &[0.5; FRAME], 0);
        assert_eq!(m.buffered(3), 0);
        assert!(!m.any_speaker_open());
    }

    #[test]
    fn silence_is_not_speaking_and_costs_no_mix_minus() {
        let mut m = Mixer::new();
        m.open(1, false, true);
        m.open(2, false, true);
        let mut out = Frame::default();
        for f in 0..30 {
            m.push(1, &tone(440.0, 0.3, FRAME, f * FRAME), 0);
            m.push(2, &[0.0005; FRAME], 0);
            m.mix(&mut out);
        }
        assert_eq!(out.speaking, 0b010);
        assert_eq!(
            out.minus_of, 0b010,
            "only the speaking input gets its own mix"
        );
    }

    #[test]
    fn the_frame_clock_owes_frames_and_skips_after_a_stall() {
        let mut c = FrameClock::new(1_000);
        assert_eq!(c.due(1_000), 1);
        assert_eq!(c.due(1_500), 0);
        assert_eq!(c.next_us(), 21_000);
        assert_eq!(c.due(41_000), 2);
        assert_eq!(c.due(10_000_000), MAX_CATCH_UP);
        assert!(c.skipped() > 400);
        assert_eq!(c.due(c.next_us()), 1);
    }
}
