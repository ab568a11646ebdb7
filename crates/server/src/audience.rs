//! A space's audience numbers on this node ([`levee_core::audience`], defined in
//! `docs/audience.md`): fed by the join paths (attempts, places in line, refusals) and by the
//! fan-out engine through each listener's [`ListenerSession`] (its join, its view, its
//! leaving); sampled every [`SAMPLE_EVERY`] for the dashboard; served by
//! `GET /api/spaces/{id}/audience` (`api::audience`), merged with the other nodes' reports in
//! a cluster.
//!
//! Bounds: per space one [`Audience`] (three sketches of 16 KiB at most and a 1.5 KiB
//! histogram) and one [`Series`] of [`levee_core::audience::MAX_SAMPLES`] samples (32 KiB);
//! per listener, its session in the fan-out guard (identity hash, address, join time).

use crate::clock::{mono_us, wall_us};
use crate::fanout::shard::Leave;
use crate::fanout::{Session, FORMATS};
use crate::hub::{Hub, Space};
use levee_core::audience::{Audience, Departure, Sample, Series};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often each space's numbers are sampled for its series.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A space that ended has its final numbers kept with its recording once this long passed
/// and no listener is left anywhere in the cluster (other nodes report within
/// `cluster::AUDIENCE_EVERY`)...
pub const KEEP_AFTER_US: u64 = 5_000_000;
/// ...or once this long passed, listeners or not.
pub const KEEP_AT_MOST_US: u64 = 60_000_000;
/// An HLS listener session ends when its player asked nothing for this long (LL-HLS players
/// ask every part, plain HLS ones every segment).
pub const HLS_IDLE_US: u64 = 8_000_000;
/// HLS listener sessions a node holds at most (about 100 bytes each); requests of further
/// ones are served and not counted (`levee_audience_hls_untracked_total`).
pub const MAX_HLS_SESSIONS: u64 = 100_000;
/// Longest `session` query parameter taken from an HLS playlist URL.
pub const MAX_HLS_SESSION_TOKEN: usize = 64;

/// One HLS listener session: its player's requests, a few seconds apart at most.
#[derive(Debug)]
struct HlsSession {
    /// Its `session` parameter, hashed (0: none).
    token: u64,
    ip: IpAddr,
    first_us: u64,
    last_us: u64,
    /// Parts, segments and init segments it fetched.
    media: u32,
    viewed: bool,
}

/// One space's numbers on this node and their series.
#[derive(Debug)]
pub struct SpaceAudience {
    state: Mutex<(Audience, Series)>,
    /// Open sessions in the last [`levee_core::bus::MAX_AUDIENCE_RECENT`] seconds sampled
    /// (second since the epoch, open sessions), for the cluster's peak.
    recent: Mutex<std::collections::VecDeque<(u64, u32)>>,
    /// When this node first saw the space ended (µs; 0: not yet), and whether its final
    /// numbers were kept.
    ended: Mutex<(u64, bool)>,
    /// Its HLS listener sessions, by identity hash.
    hls: Mutex<std::collections::HashMap<u64, Vec<HlsSession>>>,
}

impl SpaceAudience {
    /// No audience yet; a session counts as a view after `view_after`.
    pub fn new(view_after: Duration) -> SpaceAudience {
        SpaceAudience {
            state: Mutex::new((
                Audience::new(view_after.as_micros() as u64),
                Series::new(SAMPLE_EVERY.as_secs()),
            )),
            recent: Mutex::new(std::collections::VecDeque::new()),
            ended: Mutex::new((0, false)),
            hls: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// An HLS request of identity hash `id` from `ip` at `now_us`: of its session `token`
    /// (the playlist URL's `session` parameter, hashed), or, without one, of every session of
    /// the identity (media URLs carry no parameter: what a player on that address fetches
    /// counts for each of its sessions). `media`: it fetched audio (a part, segment or init
    /// segment). A session starts at its first request; one that has asked for
    /// [`Audience::view_after_us`] and fetched audio is a view.
    pub fn hls_request(
        &self,
        hub: &Hub,
        id: u64,
        token: Option<u64>,
        ip: IpAddr,
        media: bool,
        now_us: u64,
    ) {
        let view_after = self.lock().0.view_after_us;
        let mut m = self.hls.lock().expect("hls lock");
        let sessions = m.entry(id).or_default();
        let mut found = false;
        for s in sessions
            .iter_mut()
            .filter(|s| token.is_none_or(|t| s.token == t))
        {
            found = true;
            s.last_us = s.last_us.max(now_us);
            s.media += media as u32;
            if !s.viewed && s.media > 0 && s.last_us - s.first_us >= view_after {
                let banned = hub.shield.banned(ip, mono_us()).is_some();
                s.viewed = self.with(|a| a.view(id, banned));
                // Asked once: a banned source's session does not count later either.
                s.viewed |= banned;
            }
        }
        if found {
            return;
        }
        let held = &hub.node.hls_sessions;
        if held.load(Relaxed) >= MAX_HLS_SESSIONS {
            hub.node.hls_untracked.fetch_add(1, Relaxed);
            if sessions.is_empty() {
                m.remove(&id);
            }
            return;
        }
        held.fetch_add(1, Relaxed);
        sessions.push(HlsSession {
            token: token.unwrap_or(0),
            ip,
            first_us: now_us,
            last_us: now_us,
            media: media as u32,
            viewed: false,
        });
        self.with(|a| a.join(now_us));
    }

    /// Ends the HLS sessions idle for [`HLS_IDLE_US`] at `now_us`: each leaves with its span
    /// as listen time; one that fetched no audio never read.
    pub fn sweep_hls(&self, hub: &Hub, now_us: u64) {
        let mut m = self.hls.lock().expect("hls lock");
        if m.is_empty() {
            return;
        }
        let mut ended = Vec::new();
        m.retain(|&id, sessions| {
            sessions.retain(|s| {
                let idle = now_us.saturating_sub(s.last_us) >= HLS_IDLE_US;
                if idle {
                    ended.push((
                        id,
                        Departure {
                            joined_us: s.first_us,
                            listened_us: s.last_us - s.first_us,
                            stalled: s.media == 0,
                            banned: hub.shield.banned(s.ip, mono_us()).is_some(),
                            viewed: s.viewed,
                            misbehaved: false,
                        },
                    ));
                }
                !idle
            });
            !sessions.is_empty()
        });
        hub.node.hls_sessions.fetch_sub(ended.len() as u64, Relaxed);
        drop(m);
        self.with(|a| {
            for (id, d) in ended {
                a.leave(id, d);
            }
        });
    }

    /// Open sessions in the last seconds sampled, oldest first.
    pub fn recent(&self) -> Vec<(u64, u32)> {
        self.recent
            .lock()
            .expect("recent lock")
            .iter()
            .copied()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, (Audience, Series)> {
        self.state.lock().expect("audience lock")
    }

    /// Changes the numbers.
    pub fn with<R>(&self, f: impl FnOnce(&mut Audience) -> R) -> R {
        f(&mut self.lock().0)
    }

    /// A copy of the numbers and their series.
    pub fn snapshot(&self) -> (Audience, Series) {
        self.lock().clone()
    }

    /// A copy of the numbers alone.
    pub fn counts(&self) -> Audience {
        self.lock().0.clone()
    }

    /// The numbers at `now_us`.
    pub fn figures(&self, now_us: u64) -> levee_core::audience::Figures {
        self.lock().0.figures(now_us)
    }

    /// Records a sample of the numbers at `now_us` (wall), with the line's length and the
    /// delivery trouble counted so far, and returns it.
    pub fn sample(&self, now_us: u64, queue: u64, trouble: u64) -> Sample {
        let mut g = self.lock();
        let f = g.0.figures(now_us);
        let s = Sample {
            t_s: now_us / 1_000_000,
            listeners: f.listeners,
            joins: f.sessions,
            queue,
            views: f.views,
            uniques: f.uniques,
            filtered: f.filtered_sessions + f.refused_automated,
            trouble,
        };
        g.1.record(s);
        drop(g);
        let mut r = self.recent.lock().expect("recent lock");
        if r.back().is_some_and(|&(t, _)| t == s.t_s) {
            r.pop_back();
        }
        if r.len() == levee_core::bus::MAX_AUDIENCE_RECENT {
            r.pop_front();
        }
        r.push_back((s.t_s, s.listeners.min(u32::MAX as u64) as u32));
        s
    }

    /// The newest sample recorded.
    pub fn last_sample(&self) -> Option<Sample> {
        self.lock().1.samples().last().copied()
    }
}

/// Delivery trouble of a space so far: lagging listeners that skipped ahead and stalled ones
/// cut, every format.
pub fn trouble(space: &Space) -> u64 {
    let c = &space.track.counters;
    FORMATS
        .iter()
        .map(|f| c.lag_skips[f.idx()].load(Relaxed) + c.stall_cuts[f.idx()].load(Relaxed))
        .sum()
}

/// Samples every space that is live or has listeners, and the node's sums (called every
/// [`SAMPLE_EVERY`]).
pub fn sample_all(hub: &Hub) {
    let now = wall_us();
    let mut node = Sample {
        t_s: now / 1_000_000,
        ..Sample::default()
    };
    for space in hub.list() {
        space.audience.sweep_hls(hub, now);
        // A space that is neither live nor listened to is not sampled (its sketches are not
        // counted again each second): its newest sample stands for it.
        let live = space.state() == levee_core::space::SpaceState::Live;
        let s = if live || space.track.listeners() > 0 {
            let queue = space.shield.line.lock().expect("line lock").waiting();
            space.audience.sample(now, queue, trouble(&space))
        } else {
            match space.audience.last_sample() {
                Some(s) => s,
                None => continue,
            }
        };
        node.listeners += s.listeners;
        node.joins += s.joins;
        node.queue += s.queue;
        node.views += s.views;
        node.uniques += s.uniques;
        node.filtered += s.filtered;
        node.trouble += s.trouble;
        if !live && space.state() == levee_core::space::SpaceState::Ended {
            keep_final(hub, &space, now);
        }
    }
    hub.sample_node(node, now);
}

/// Keeps an ended space's final numbers with its recording, once (see [`KEEP_AFTER_US`]).
fn keep_final(hub: &Hub, space: &Arc<Space>, now: u64) {
    let Some(rec) = hub.recorder.get() else {
        return;
    };
    let due = {
        let mut e = space.audience.ended.lock().expect("ended lock");
        if e.1 {
            return;
        }
        if e.0 == 0 {
            e.0 = now;
        }
        let waited = now.saturating_sub(e.0);
        let due = waited >= KEEP_AT_MOST_US
            || (waited >= KEEP_AFTER_US
                && crate::api::audience::merged(hub, space).0.active == 0
                && !rec.writing(&space.snapshot().id));
        e.1 |= due;
        due
    };
    if !due {
        return;
    }
    let mut v = crate::api::audience::space_json(hub, space, false);
    v["source"] = serde_json::json!("recording");
    let id = space.snapshot().id;
    match rec.keep_audience(&id, &v.to_string()) {
        Ok(true) => tracing::info!(space = %id, "final audience numbers kept with the recording"),
        Ok(false) => {}
        Err(e) => tracing::warn!(space = %id, "final audience numbers not kept: {e}"),
    }
}

/// A listener session as the fan-out engine holds it: the connection's accounting, and what
/// its numbers need (its identity's hash, its address for the ban check, its join time).
pub struct ListenerSession {
    _conn: Box<dyn Send>,
    hub: Arc<Hub>,
    space: Arc<Space>,
    id: u64,
    ip: IpAddr,
    joined_us: u64,
    viewed: bool,
}

impl ListenerSession {
    /// Counts a session of identity hash `id` from `ip` starting now; `conn` is dropped with
    /// it.
    pub fn start(
        conn: Box<dyn Send>,
        hub: Arc<Hub>,
        space: Arc<Space>,
        id: u64,
        ip: IpAddr,
    ) -> ListenerSession {
        let joined_us = wall_us();
        space.audience.with(|a| a.join(joined_us));
        ListenerSession {
            _conn: conn,
            hub,
            space,
            id,
            ip,
            joined_us,
            viewed: false,
        }
    }

    fn banned(&self) -> bool {
        self.hub.shield.banned(self.ip, mono_us()).is_some()
    }
}

impl Session for ListenerSession {
    fn viewed(&mut self) {
        let banned = self.banned();
        self.viewed = self.space.audience.with(|a| a.view(self.id, banned));
    }

    fn left(&mut self, listened_us: u64, why: Leave) {
        let d = Departure {
            joined_us: self.joined_us,
            listened_us,
            stalled: why == Leave::Stalled,
            banned: self.banned(),
            viewed: self.viewed,
            misbehaved: why == Leave::Refused,
        };
        self.space.audience.with(|a| a.leave(self.id, d));
        // Counted once: a drop after this (or without it) does nothing more.
        self.joined_us = 0;
    }
}

impl Drop for ListenerSession {
    /// A session dropped without [`Session::left`] (its shard went away, or it never reached
    /// one) still leaves the count of open sessions.
    fn drop(&mut self) {
        if self.joined_us != 0 {
            let listened = wall_us().saturating_sub(self.joined_us);
            self.left(listened, Leave::Gone);
        }
    }
}
