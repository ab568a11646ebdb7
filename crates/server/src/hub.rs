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
use levee_core::bus::SpaceRecord;
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
    /// The cluster node whose source feeds it and that node's identity on the bus (empty and
    /// 0: none yet).
    origin: Mutex<(String, u64)>,
    /// Its listeners on the cluster's other nodes, as they last reported (0 alone).
    pub remote_listeners: std::sync::atomic::AtomicU64,
    /// Its audience numbers on this node (`docs/audience.md`).
    pub audience: crate::audience::SpaceAudience,
    /// Its stage: speakers, and the mixer while any is connected.
    pub stage: Arc<crate::stage::Stage>,
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

    /// Its listeners on every node: this node's, plus the others' last reports (a second old
    /// at most, so a join storm may overshoot a cluster-wide cap by what the other nodes
    /// admit in that second).
    pub fn cluster_listeners(&self) -> u64 {
        self.track.listeners()
            + self
                .remote_listeners
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster node whose source feeds the space, and its identity on the bus.
    pub fn origin(&self) -> (String, u64) {
        self.origin.lock().expect("origin lock").clone()
    }

    /// The origin node's identity on the bus (0: none yet): only its packets are heard.
    pub fn origin_id(&self) -> u64 {
        self.origin.lock().expect("origin lock").1
    }

    /// Records the space's origin node.
    pub fn set_origin(&self, node: &str, id: u64) {
        *self.origin.lock().expect("origin lock") = (node.to_owned(), id);
    }
}

/// What the hub and the endpoints ask of the cluster a node is part of (`crate::cluster`).
pub trait ClusterLink: Send + Sync {
    /// Writes the space's record to the cluster's registry; the handle says whether it was
    /// written (within [`crate::cluster::REGISTRY_WRITE_TIMEOUT`]).
    fn announce(&self, space: &Space) -> tokio::task::JoinHandle<bool>;
    /// Looks space `id` up in the registry and holds it here if the cluster has it (a space
    /// created on another node a moment ago, before this node's watch has seen it). Bounded
    /// by [`crate::cluster::MAX_REGISTRY_LOOKUPS`] at once and
    /// [`crate::cluster::REGISTRY_LOOKUP_TIMEOUT`] each.
    fn look_up<'a>(&'a self, id: &'a str) -> futures_util::future::BoxFuture<'a, ()>;
    /// A source of this node claimed the space: this node is its origin now.
    fn claim(&self, space: &Arc<Space>);
    /// A listener of the space arrived on this node.
    fn listen(&self, space: &Arc<Space>);
    /// What the cluster layer counted.
    fn counters(&self) -> &crate::counters::ClusterCounters;
    /// Spaces this node hears from the bus now.
    fn feeds(&self) -> usize;
    /// Space `id`'s audience numbers: `own` (this node's) merged with the other nodes' last
    /// reports, and how many nodes they come from.
    fn audience(
        &self,
        id: &str,
        own: levee_core::audience::Audience,
    ) -> (levee_core::audience::Audience, usize);
}

/// Why a space could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// The node holds its maximum number of spaces.
    Full(usize),
    /// The identifier is taken.
    Taken,
    /// The cluster's registry did not take the space (why): it was not created.
    Registry(String),
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
    /// The cluster this node is part of (`--nats`), once joined.
    pub cluster: std::sync::OnceLock<Box<dyn ClusterLink>>,
    /// This node's recorder (`--data-dir`), once opened.
    pub recorder: std::sync::OnceLock<Box<dyn RecordLink>>,
    /// The key listener identities are hashed with for the audience numbers (derived from
    /// the shield's secret: the same on every node of a cluster).
    pub identity: levee_core::audience::IdentityKey,
    /// When this node started, µs since the epoch.
    pub started_us: u64,
    /// The node's audience over time, its peak of open sessions and when (sampled with the
    /// spaces' series, every [`crate::audience::SAMPLE_EVERY`]).
    node_audience: Mutex<(levee_core::audience::Series, u64, u64)>,
}

/// What the endpoints ask of the recorder (`crate::recorder`).
pub trait RecordLink: Send + Sync {
    /// A source of this node feeds `space`: record it (once; later calls do nothing while
    /// it is being recorded).
    fn record(&self, space: &Arc<Space>);
    /// What the recorder counted.
    fn counters(&self) -> &crate::counters::RecordCounters;
    /// Bytes the recordings take now.
    fn used_bytes(&self) -> u64;
    /// Deletes space `id`'s recording; `Err` says why not.
    fn delete(&self, id: &str) -> Result<(), String>;
    /// Whether space `id` is being recorded now (its last segment may still be coming).
    fn writing(&self, id: &str) -> bool;
    /// Keeps space `id`'s final audience numbers with its recording (`Ok(false)`: it has
    /// none); `Err` says what failed.
    fn keep_audience(&self, id: &str, json: &str) -> Result<bool, String>;
    /// Space `id`'s audience numbers kept with its recording, if any (`Err`: the file is
    /// unreadable, and why).
    fn kept_audience(&self, id: &str) -> Option<Result<serde_json::Value, String>>;
}

impl Hub {
    /// An empty hub.
    pub fn new(config: Config) -> Arc<Self> {
        let shield = Shield::new(config.shield.clone());
        let fanout = Fanout::new(config.fanout_limits());
        let identity = levee_core::audience::IdentityKey::derive(&config.shield.secret);
        Arc::new(Hub {
            identity,
            started_us: wall_us(),
            node_audience: Mutex::new((
                levee_core::audience::Series::new(crate::audience::SAMPLE_EVERY.as_secs()),
                0,
                0,
            )),
            config,
            spaces: RwLock::new(HashMap::new()),
            node: Default::default(),
            shield,
            fanout,
            audit: Mutex::new(AuditLog::new(AUDIT_ENTRIES)),
            cluster: std::sync::OnceLock::new(),
            recorder: std::sync::OnceLock::new(),
        })
    }

    /// The node's audience series, its peak of open sessions and when (µs since the epoch).
    pub fn node_audience(&self) -> (levee_core::audience::Series, u64, u64) {
        self.node_audience.lock().expect("audience lock").clone()
    }

    /// Records a sample of the node's audience at `now_us`.
    pub fn sample_node(&self, s: levee_core::audience::Sample, now_us: u64) {
        let mut g = self.node_audience.lock().expect("audience lock");
        if s.listeners > g.1 {
            g.1 = s.listeners;
            g.2 = now_us;
        }
        g.0.record(s);
    }

    /// Creates a space with `access`; `id` overrides the random identifier (the demo space).
    pub fn create(
        &self,
        req: NewSpace,
        access: Access,
        id: Option<&str>,
    ) -> Result<Arc<Space>, CreateError> {
        let space = self.create_here(req, access, id)?;
        if let Some(c) = self.cluster.get() {
            drop(c.announce(&space));
        }
        Ok(space)
    }

    /// A new space on this node, not yet announced to the cluster.
    fn create_here(
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
        self.insert(info, access, start_us)
    }

    /// Creates a space as [`Hub::create`] does and, in a cluster, answers once the registry
    /// holds it: every node finds it from then on (a node whose watch has not seen it yet
    /// looks it up, [`Hub::find`]). A space the registry did not take is removed again.
    pub async fn create_registered(
        &self,
        req: NewSpace,
        access: Access,
    ) -> Result<Arc<Space>, CreateError> {
        let Some(c) = self.cluster.get() else {
            return self.create(req, access, None);
        };
        let space = self.create_here(req, access, None)?;
        if c.announce(&space).await.unwrap_or(false) {
            return Ok(space);
        }
        let id = space.snapshot().id;
        self.end_here(&space);
        self.spaces.write().expect("hub lock").remove(&id);
        Err(CreateError::Registry(
            "the cluster's registry did not take the space".into(),
        ))
    }

    /// The space `id`: held here, or, in a cluster, found in the registry (see
    /// [`ClusterLink::look_up`]).
    pub async fn find(&self, id: &str) -> Option<Arc<Space>> {
        if let Some(s) = self.get(id) {
            return Some(s);
        }
        let c = self.cluster.get()?;
        if !levee_core::space::is_valid_id(id) {
            return None;
        }
        c.look_up(id).await;
        self.get(id)
    }

    /// Holds a space another node of the cluster created (it knows the host key's hash only).
    pub fn create_replica(&self, rec: &SpaceRecord) -> Result<Arc<Space>, CreateError> {
        let info = SpaceInfo {
            id: rec.id.clone(),
            title: rec.title.clone(),
            scheduled_start: rec.scheduled_start,
            host_key: String::new(),
            host_key_sha256: rec.host_key_sha256,
            state: match rec.state {
                SpaceState::Ended => SpaceState::Ended,
                _ => SpaceState::Scheduled,
            },
            created_at: rec.created_at,
        };
        let start_us = rec.scheduled_start.map(|s| s.saturating_mul(1_000_000));
        let space = self.insert(info, Access::Open, start_us)?;
        space.set_origin(&rec.origin, rec.origin_id);
        Ok(space)
    }

    fn insert(
        &self,
        info: SpaceInfo,
        access: Access,
        start_us: Option<u64>,
    ) -> Result<Arc<Space>, CreateError> {
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
            origin: Mutex::new((String::new(), 0)),
            remote_listeners: std::sync::atomic::AtomicU64::new(0),
            audience: crate::audience::SpaceAudience::new(self.config.view_after),
            stage: Arc::default(),
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

    /// Ends a space: no more sources; listeners are released; the cluster hears of it.
    pub fn end(&self, space: &Space) {
        self.end_here(space);
        if let Some(c) = self.cluster.get() {
            // Not awaited: the space has ended here, and other nodes learn it as the write lands.
            drop(c.announce(space));
        }
    }

    /// Ends a space on this node only (the cluster's registry said so).
    pub fn end_here(&self, space: &Space) {
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
