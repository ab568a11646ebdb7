//! A space's audience numbers on this node ([`levee_core::audience`], defined in
//! `docs/audience.md`): fed by the join paths (attempts, places in line, refusals), by the
//! fan-out engine through each listener's session (`endpoints::listen::ListenerSession`: its
//! join, its view, its leaving) and by the HLS requests ([`SpaceAudience::hls_request`]);
//! sampled every [`SAMPLE_EVERY`] for the dashboard and served by
//! `GET /api/spaces/{id}/audience` (`api::audience`, which also keeps an ended space's final
//! numbers with its recording), merged with the other nodes' reports in a cluster.
//!
//! Bounds: per space one [`Audience`] (three sketches of 16 KiB at most and a 1.5 KiB
//! histogram) and one [`Series`] of [`levee_core::audience::MAX_SAMPLES`] samples (32 KiB);
//! per listener, its session in the fan-out guard (identity hash, address, join time).

use crate::clock::mono_us;
use crate::counters::NodeCounters;
use crate::shield::Shield;
use levee_core::audience::{Audience, Departure, Sample, Series};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};
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
/// HLS sessions one identity (address and User-Agent) holds at most: a client cannot make
/// every media request of its address walk thousands of its own `session` tokens.
pub const MAX_HLS_SESSIONS_PER_IDENTITY: usize = 16;
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
    /// The view rule, µs (also in the numbers; kept here so HLS requests need no lock for it).
    view_after_us: u64,
    state: Mutex<(Audience, Series)>,
    /// The most sessions open in each of the last [`levee_core::bus::MAX_AUDIENCE_RECENT`]
    /// seconds (second since the epoch, open sessions), for the cluster's peak.
    recent: Mutex<std::collections::VecDeque<(u64, u32)>>,
    /// When this node first saw the space ended (µs; 0: not yet), and whether its final
    /// numbers were kept.
    pub ended: Mutex<(u64, bool)>,
    /// Its HLS listener sessions, by identity hash.
    hls: Mutex<std::collections::HashMap<u64, Vec<HlsSession>>>,
}

impl SpaceAudience {
    /// No audience yet; a session counts as a view after `view_after`.
    pub fn new(view_after: Duration) -> SpaceAudience {
        SpaceAudience {
            view_after_us: view_after.as_micros() as u64,
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
    #[allow(clippy::too_many_arguments)]
    pub fn hls_request(
        &self,
        shield: &Shield,
        node: &NodeCounters,
        id: u64,
        token: Option<u64>,
        ip: IpAddr,
        media: bool,
        now_us: u64,
    ) {
        let view_after = self.view_after_us;
        let mut m = self.hls.lock().expect("hls lock");
        let sessions = m.entry(id).or_default();
        let mut found = false;
        for s in sessions
            .iter_mut()
            .filter(|s| token.is_none_or(|t| s.token == t))
        {
            found = true;
            s.last_us = s.last_us.max(now_us);
            s.media = s.media.saturating_add(media as u32);
            if !s.viewed && s.media > 0 && s.last_us - s.first_us >= view_after {
                let banned = shield.banned(ip, mono_us()).is_some();
                s.viewed = self.with(|a| a.view(id, banned));
                // Asked once: a banned source's session does not count later either.
                s.viewed |= banned;
            }
        }
        if found {
            return;
        }
        let held = &node.hls_sessions;
        if held.load(Relaxed) >= MAX_HLS_SESSIONS || sessions.len() >= MAX_HLS_SESSIONS_PER_IDENTITY
        {
            node.hls_untracked.fetch_add(1, Relaxed);
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
        self.join(now_us);
    }

    /// A session starts at `now_us`: counted, and the second's most open sessions noted.
    pub fn join(&self, now_us: u64) {
        let active = self.with(|a| {
            a.join(now_us);
            a.active
        });
        self.note_second(now_us / 1_000_000, active);
    }

    /// Notes `open` sessions in second `t_s`: each second keeps the most it saw.
    fn note_second(&self, t_s: u64, open: u64) {
        let open = open.min(u32::MAX as u64) as u32;
        let mut r = self.recent.lock().expect("recent lock");
        match r.back_mut() {
            Some((t, n)) if *t == t_s => *n = (*n).max(open),
            Some((t, _)) if *t > t_s => {}
            _ => {
                if r.len() == levee_core::bus::MAX_AUDIENCE_RECENT {
                    r.pop_front();
                }
                r.push_back((t_s, open));
            }
        }
    }

    /// Ends the HLS sessions idle for [`HLS_IDLE_US`] at `now_us`: each leaves with its span
    /// as listen time; one that fetched no audio never read.
    pub fn sweep_hls(&self, shield: &Shield, node: &NodeCounters, now_us: u64) {
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
                            banned: shield.banned(s.ip, mono_us()).is_some(),
                            viewed: s.viewed,
                            misbehaved: false,
                        },
                    ));
                }
                !idle
            });
            !sessions.is_empty()
        });
        node.hls_sessions.fetch_sub(ended.len() as u64, Relaxed);
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

    /// A copy of the series.
    pub fn series(&self) -> Series {
        self.lock().1.clone()
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
            filtered: f.filtered_sessions.saturating_add(f.refused_automated),
            trouble,
        };
        g.1.record(s);
        drop(g);
        self.note_second(s.t_s, s.listeners);
        s
    }

    /// The newest sample recorded.
    pub fn last_sample(&self) -> Option<Sample> {
        self.lock().1.samples().last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_holds_at_most_its_bound_of_hls_sessions_and_idle_ones_end() {
        let shield = Shield::new(crate::config::Config::default().shield);
        let node = NodeCounters::default();
        let a = SpaceAudience::new(Duration::from_secs(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // One address asks with 20 session tokens: 16 sessions, 4 requests not counted.
        for t in 1..=20u64 {
            a.hls_request(&shield, &node, 7, Some(t), ip, false, 1_000_000);
        }
        assert_eq!(node.hls_sessions.load(Relaxed), 16);
        assert_eq!(node.hls_untracked.load(Relaxed), 4);
        assert_eq!(a.counts().active, 16);
        // A media request without a token counts for each of them; 3 s on, they are views.
        a.hls_request(&shield, &node, 7, None, ip, true, 4_000_000);
        assert_eq!(a.counts().view_sessions, 16);
        // Silent for the idle bound: all end, none filtered (each fetched audio).
        a.sweep_hls(&shield, &node, 4_000_000 + HLS_IDLE_US);
        let f = a.figures(20_000_000);
        assert_eq!((f.listeners, f.sessions, f.views), (0, 16, 1));
        assert_eq!(f.filtered_sessions, 0);
        assert_eq!(node.hls_sessions.load(Relaxed), 0);
    }
}
