//! The node's spaces: identity, state, live track, counters and shield, in one registry.
//!
//! The registry is a map under a read-write lock taken to create, find or list spaces, never on
//! the audio path: listeners and sources hold their `Arc<Space>`.

use crate::clock::wall_us;
use crate::config::Config;
use crate::counters::{NodeCounters, SpaceCounters};
use crate::fanout::{Fanout, Track};
use crate::shield::{Access, Shield, SpaceShield};
use levee_core::audit::{AuditLog, AUDIT_ENTRIES};
use levee_core::space::{NewSpace, SpaceInfo, SpaceState};
use levee_media::opus::OpusHead;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// One space on this node.
pub struct Space {
    /// Identity and state.
    pub info: Mutex<SpaceInfo>,
    /// Its live audio.
    pub track: Arc<Track>,
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
    pub node: NodeCounters,
    /// Per-source limits, bans, tickets and escalation.
    pub shield: Shield,
    /// The writer shards every space's listeners are written by.
    pub fanout: Arc<Fanout>,
    /// Operator actions on the shield (bans, allowlist), newest [`AUDIT_ENTRIES`] kept.
    pub audit: Mutex<AuditLog>,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: Config) -> Arc<Self> {
        let shield = Shield::new(config.shield.clone());
        let fanout = Fanout::new(config.fanout_limits());
        Arc::new(Hub {
            config,
            spaces: RwLock::new(HashMap::new()),
            node: Default::default(),
            shield,
            fanout,
            audit: Mutex::new(AuditLog::new(AUDIT_ENTRIES)),
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
        let mut info = SpaceInfo::new(
            req,
            crate::random::bytes(),
            crate::random::bytes(),
            wall_us() / 1_000_000,
        );
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
        let serial = u32::from_le_bytes(crate::random::bytes());
        let track = Track::new(
            OpusHead::new(self.config.channels),
            serial,
            &info.title,
            self.fanout.clone(),
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
        space.track.end();
    }

    /// Listeners on the whole node (a gauge, not a walk over the spaces).
    pub fn total_listeners(&self) -> u64 {
        self.fanout
            .listeners
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
