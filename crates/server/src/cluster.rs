//! One space across many nodes, through NATS (`--nats`).
//!
//! - **Registry**: every space is a record ([`levee_core::bus::SpaceRecord`]) in the JetStream
//!   key-value bucket [`BUCKET`]; every node watches the bucket and holds every space, so any
//!   node lists, verifies the host key of (its SHA-256 is in the record), serves and ends any
//!   space.
//! - **Audio**: the node whose source feeds a space is its origin. It reads the track through a
//!   bounded tap ([`BUS_TAP`]) and publishes each packet, with the origin's numbering, on the
//!   space's subject ([`audio_subject`]). Another node subscribes when a listener of the space
//!   arrives and unsubscribes once none is left for [`FEED_IDLE`], so packets travel only where
//!   listeners are; it packages them once for all its listeners (`Track::publish_numbered`).
//! - **Origin**: the newest source claim wins cluster-wide, as on one node: a node whose source
//!   claims a space writes itself as the origin, and a node that sees another origin displaces
//!   its own source.
//! - **Not trusted**: a message that does not parse, comes from this node, or is older than
//!   what was heard is dropped and counted ([`ClusterCounters`]), never heard.
//!
//! Bounds: [`BUS_TAP`] packets queued per space for the bus (the oldest dropped and counted),
//! [`SUBSCRIPTION_CAPACITY`] messages per subscription (the client drops beyond, and the
//! listeners see a gap), [`levee_core::bus::MAX_AUDIO_MESSAGE`] and
//! [`levee_core::bus::MAX_RECORD`] bytes per message.

use crate::clock::wall_us;
pub use crate::config::ClusterConfig;
pub use crate::counters::ClusterCounters;
use crate::hub::{ClusterLink, Hub, Space};
use bytes::Bytes;
use futures_util::StreamExt;
use levee_core::bus::{self, SpaceRecord};
use levee_core::packet::{Packet, TapRead};
use levee_core::space::SpaceState;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The registry's key-value bucket.
pub const BUCKET: &str = "levee-spaces";
/// Packets queued per space between its track and the bus (10 s of 20-ms packets).
pub const BUS_TAP: usize = 512;
/// Messages a subscription buffers before the client drops (20 s of 20-ms packets).
pub const SUBSCRIPTION_CAPACITY: usize = 1024;
/// How long a node keeps a space's subscription without listeners.
pub const FEED_IDLE: Duration = Duration::from_secs(2);
/// How often a silent connection to NATS is checked (the client's default is a minute).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How often a node reports its listeners per space to the others.
pub const LOAD_EVERY: Duration = Duration::from_secs(1);
/// A node's report counts this long (a node that stopped reporting drops out of the sums).
pub const LOAD_TTL: Duration = Duration::from_secs(3);
/// (node, space) listener counts held from other nodes' reports, at most.
pub const MAX_REMOTE_ENTRIES: usize = 262_144;
/// The subject load reports travel on.
pub const LOAD_SUBJECT: &str = "levee.load";
/// The subject audience reports travel on (`docs/audience.md`).
pub const AUDIENCE_SUBJECT: &str = "levee.audience";
/// How often a node reports the audience numbers of its spaces that changed.
pub const AUDIENCE_EVERY: Duration = Duration::from_secs(2);
/// A space with an audience is reported at least this often, changed or not (a node that
/// joins later learns it).
pub const AUDIENCE_REFRESH: Duration = Duration::from_secs(10);
/// Another node's open sessions count this long after its last report (its other numbers
/// stay: what a node that went away counted was counted).
pub const AUDIENCE_TTL: Duration = Duration::from_secs(10);
/// Bytes of other nodes' audience reports held at most (reports of new (node, space) pairs
/// beyond are dropped and counted): 64 MiB, some 1,300 reports with dense sketches, far
/// more of small audiences.
pub const MAX_REMOTE_AUDIENCE_BYTES: usize = 64 << 20;

/// How long a starting node waits for the registry bucket (a NATS cluster elects its
/// JetStream leader in the first seconds).
pub const OPEN_BUCKET_FOR: Duration = Duration::from_secs(15);

/// Bytes the registry bucket holds at most (JetStream refuses writes beyond, and a space
/// being created is then refused): about 300,000 spaces of a typical record, 32,768 of the
/// largest ([`levee_core::bus::MAX_RECORD`]).
pub const MAX_REGISTRY_BYTES: i64 = 64 << 20;
/// How long a registry write may take before it counts as failed (a space being created
/// is then refused).
pub const REGISTRY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Registry look-ups of spaces not yet held here, at once per node (more answer "not found"
/// at once: a flood of unknown identifiers cannot load the registry).
pub const MAX_REGISTRY_LOOKUPS: usize = 16;
/// How long one registry look-up may take.
pub const REGISTRY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// The subject a space's packets travel on.
pub fn audio_subject(id: &str) -> String {
    format!("levee.audio.{id}")
}

#[derive(Default)]
struct Roles {
    /// Spaces this node is origin of: their forwarders.
    forwarding: HashMap<String, tokio::task::AbortHandle>,
    /// Spaces this node hears from the bus: their feeds.
    feeding: HashMap<String, tokio::task::AbortHandle>,
}

/// This node's place in the cluster.
pub struct Cluster {
    client: async_nats::Client,
    kv: async_nats::jetstream::kv::Store,
    /// This node's name.
    pub node: String,
    /// This node's identity in bus messages (random at start).
    pub id: u64,
    /// Counters.
    pub counters: ClusterCounters,
    roles: Mutex<Roles>,
    hub: Weak<Hub>,
    /// Look-ups in flight, at most [`MAX_REGISTRY_LOOKUPS`].
    lookups: tokio::sync::Semaphore,
    /// Other nodes' audience reports.
    audience: Mutex<RemoteAudience>,
}

/// Seconds of other nodes' open sessions kept per (space, node), for the cluster's peak.
pub const AUDIENCE_RECENT_KEEP: usize = 120;

/// One node's last report of one space.
struct Reported {
    audience: levee_core::audience::Audience,
    at: tokio::time::Instant,
    size: usize,
    /// Its open sessions by second (the newest [`AUDIENCE_RECENT_KEEP`]).
    recent: std::collections::BTreeMap<u64, u32>,
}

/// Other nodes' audience numbers per space, as they last reported them.
#[derive(Default)]
struct RemoteAudience {
    /// space → node → its last report.
    by_space: HashMap<String, HashMap<u64, Reported>>,
    /// Encoded bytes held, at most [`MAX_REMOTE_AUDIENCE_BYTES`].
    bytes: usize,
    /// space → the most open sessions seen at one second over the cluster, and when (µs).
    peaks: HashMap<String, (u64, u64)>,
}

impl RemoteAudience {
    /// Sums this node's `own` open sessions per second with the other nodes' reported ones
    /// and keeps the largest sum as the space's peak when above the one kept. A node that did
    /// not report a second counts its last value before it (a node reports when its numbers
    /// change, and at least every [`AUDIENCE_REFRESH`]).
    fn sample_peak(&mut self, id: &str, own: &[(u64, u32)]) {
        let own: std::collections::BTreeMap<u64, u32> = own.iter().copied().collect();
        let mut series: Vec<&std::collections::BTreeMap<u64, u32>> = vec![&own];
        series.extend(
            self.by_space
                .get(id)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|r| &r.recent),
        );
        let seconds: std::collections::BTreeSet<u64> =
            series.iter().flat_map(|m| m.keys().copied()).collect();
        let hold = AUDIENCE_REFRESH.as_secs();
        let at = |m: &std::collections::BTreeMap<u64, u32>, t: u64| {
            m.range(..=t)
                .next_back()
                .filter(|(s, _)| t - **s <= hold)
                .map_or(0, |(_, n)| *n as u64)
        };
        let mut best = (0, 0);
        for t in seconds {
            let sum: u64 = series.iter().map(|m| at(m, t)).sum();
            if sum > best.0 {
                best = (sum, t);
            }
        }
        if best.0 > self.peaks.get(id).map_or(0, |p| p.0) {
            self.peaks
                .insert(id.to_owned(), (best.0, best.1 * 1_000_000));
        }
    }
}

impl Cluster {
    /// Connects to NATS, opens (or creates) the registry and starts watching it. The error
    /// says what failed.
    pub async fn start(hub: &Arc<Hub>, cfg: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        if !bus::is_valid_node_name(&cfg.node) {
            return Err(format!(
                "node name {:?}: 1 to 64 of A-Z a-z 0-9 . _ -",
                cfg.node
            ));
        }
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("levee {}", cfg.node))
            .no_echo()
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connection_timeout(Duration::from_secs(5))
            .require_tls(cfg.tls)
            // Jittered: nodes that lost the same server do not come back together.
            .reconnect_delay_callback(|attempts| {
                let cap = Duration::from_millis(100 << attempts.min(5) as u64);
                cap.mul_f64(0.5 + crate::random::unit() * 0.5)
                    .min(Duration::from_secs(4))
            });
        if let Some(path) = &cfg.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| format!("NATS credentials {}: {e}", path.display()))?;
        }
        if let Some((user, pass)) = &cfg.user {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        let urls = cfg.urls.join(",");
        let addrs = cfg
            .urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("NATS URL {u:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = opts
            .connect(addrs.as_slice())
            .await
            .map_err(|e| format!("cannot connect to NATS at {urls}: {e}"))?;
        let js = async_nats::jetstream::new(client.clone());
        let kv = open_bucket(&js, cfg.replicas).await?;
        let cluster = Arc::new(Cluster {
            client,
            kv,
            node: cfg.node.clone(),
            id: crate::random::u64() | 1,
            counters: ClusterCounters::default(),
            roles: Mutex::new(Roles::default()),
            hub: Arc::downgrade(hub),
            lookups: tokio::sync::Semaphore::new(MAX_REGISTRY_LOOKUPS),
            audience: Mutex::new(RemoteAudience::default()),
        });
        let watch = cluster
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| format!("cannot watch the registry: {e}"))?;
        tokio::spawn(watch_registry(cluster.clone(), watch));
        let loads = cluster
            .client
            .subscribe(LOAD_SUBJECT)
            .await
            .map_err(|e| format!("cannot subscribe to {LOAD_SUBJECT}: {e}"))?;
        tokio::spawn(exchange_load(cluster.clone(), loads));
        let audience = cluster
            .client
            .subscribe(AUDIENCE_SUBJECT)
            .await
            .map_err(|e| format!("cannot subscribe to {AUDIENCE_SUBJECT}: {e}"))?;
        tokio::spawn(exchange_audience(cluster.clone(), audience));
        Ok(cluster)
    }

    /// Writes `space`'s record; the handle says whether it was written.
    fn write_record(self: &Arc<Self>, space: &Space) -> tokio::task::JoinHandle<bool> {
        let info = space.snapshot();
        let (origin, origin_id) = space.origin();
        let rec = SpaceRecord {
            id: info.id.clone(),
            title: info.title,
            scheduled_start: info.scheduled_start,
            host_key_sha256: info.host_key_sha256,
            state: info.state,
            created_at: info.created_at,
            origin,
            origin_id,
            updated_us: wall_us(),
        };
        let me = self.clone();
        tokio::spawn(async move {
            let put = me.kv.put(&rec.id, bus::encode_record(&rec));
            let why = match tokio::time::timeout(REGISTRY_WRITE_TIMEOUT, put).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {REGISTRY_WRITE_TIMEOUT:?}"),
            };
            me.counters.registry_errors.fetch_add(1, Relaxed);
            tracing::warn!(space = %rec.id, "registry write failed: {why}");
            false
        })
    }

    /// Looks `id` up in the registry and applies what it holds. See [`ClusterLink::look_up`].
    async fn look_up(self: &Arc<Self>, id: &str) {
        let Ok(_permit) = self.lookups.try_acquire() else {
            self.counters.lookups_refused.fetch_add(1, Relaxed);
            return;
        };
        self.counters.lookups.fetch_add(1, Relaxed);
        match tokio::time::timeout(REGISTRY_LOOKUP_TIMEOUT, self.kv.get(id)).await {
            Ok(Ok(Some(value))) => self.take_record(id, &value),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                self.counters.registry_errors.fetch_add(1, Relaxed);
                tracing::warn!(space = %id, "registry look-up failed: {e}");
            }
            Err(_) => {
                self.counters.registry_errors.fetch_add(1, Relaxed);
                tracing::warn!(space = %id, "registry look-up: no answer within {REGISTRY_LOOKUP_TIMEOUT:?}");
            }
        }
    }

    /// A record read from the registry under `key`: applied if it is valid and its own.
    fn take_record(self: &Arc<Self>, key: &str, value: &[u8]) {
        match bus::decode_record(value) {
            Ok(rec) if rec.id == key => self.apply(rec),
            Ok(_) | Err(_) => {
                self.counters.bad_records.fetch_add(1, Relaxed);
                tracing::warn!(key = %key, "registry record refused");
            }
        }
    }

    /// A source of this node claimed `space`: this node becomes its origin, forwards its
    /// packets to the bus and stops hearing it from the bus.
    fn take_origin(self: &Arc<Self>, space: &Arc<Space>) {
        let id = space.snapshot().id;
        space.set_origin(&self.node, self.id);
        {
            let mut roles = self.roles.lock().expect("roles lock");
            if let Some(feed) = roles.feeding.remove(&id) {
                feed.abort();
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = roles.forwarding.entry(id) {
                let task = tokio::spawn(forward(self.clone(), space.clone()));
                slot.insert(task.abort_handle());
            }
        }
        self.write_record(space);
    }

    /// A listener of `space` arrived: unless this node is its origin, hear it from the bus.
    fn hear(self: &Arc<Self>, space: &Arc<Space>) {
        let id = space.snapshot().id;
        let mut roles = self.roles.lock().expect("roles lock");
        if roles.forwarding.contains_key(&id) || roles.feeding.contains_key(&id) {
            return;
        }
        let task = tokio::spawn(feed(self.clone(), space.clone()));
        roles.feeding.insert(id, task.abort_handle());
    }

    /// Another node is the origin of `id` now: stop forwarding it.
    fn lose_origin(&self, id: &str) -> bool {
        let mut roles = self.roles.lock().expect("roles lock");
        match roles.forwarding.remove(id) {
            Some(f) => {
                f.abort();
                true
            }
            None => false,
        }
    }

    fn done(&self, id: &str, feeding: bool) {
        let mut roles = self.roles.lock().expect("roles lock");
        if feeding {
            roles.feeding.remove(id);
        } else {
            roles.forwarding.remove(id);
        }
    }

    /// A record from the registry: create, update or end the space here.
    fn apply(self: &Arc<Self>, rec: SpaceRecord) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let space = match hub.get(&rec.id) {
            Some(s) => s,
            None => match hub.create_replica(&rec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(space = %rec.id, "cannot hold a space of the cluster: {e:?}");
                    return;
                }
            },
        };
        if rec.state == SpaceState::Ended {
            if space.state() != SpaceState::Ended {
                hub.end_here(&space);
            }
            return;
        }
        if !rec.origin.is_empty() && rec.origin != self.node {
            space.set_origin(&rec.origin, rec.origin_id);
            if self.lose_origin(&rec.id) {
                // The newest claim wins: this node's source gives way.
                space.track.new_source();
                if space.track.listeners() > 0 {
                    self.hear(&space);
                }
            }
        }
    }
}

/// What the hub and the endpoints ask of the cluster (the hub holds it as a [`ClusterLink`]).
struct Link(Arc<Cluster>);

impl ClusterLink for Link {
    fn announce(&self, space: &Space) -> tokio::task::JoinHandle<bool> {
        self.0.write_record(space)
    }
    fn look_up<'a>(&'a self, id: &'a str) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(self.0.look_up(id))
    }
    fn claim(&self, space: &Arc<Space>) {
        self.0.take_origin(space);
    }
    fn listen(&self, space: &Arc<Space>) {
        self.0.hear(space);
    }
    fn counters(&self) -> &ClusterCounters {
        &self.0.counters
    }
    fn feeds(&self) -> usize {
        self.0.roles.lock().expect("roles lock").feeding.len()
    }
    fn audience(
        &self,
        id: &str,
        mut own: levee_core::audience::Audience,
    ) -> (levee_core::audience::Audience, usize) {
        let now = tokio::time::Instant::now();
        let own_recent = self
            .0
            .hub
            .upgrade()
            .and_then(|h| h.get(id))
            .map(|s| s.audience.recent())
            .unwrap_or_default();
        let mut remote = self.0.audience.lock().expect("audience lock");
        remote.sample_peak(id, &own_recent);
        let mut nodes = 1;
        for r in remote.by_space.get(id).into_iter().flat_map(|m| m.values()) {
            let mut a = r.audience.clone();
            if now.duration_since(r.at) >= AUDIENCE_TTL {
                // A node silent for long: its sessions are no longer open.
                a.active = 0;
                a.active_joined_us = 0;
            }
            own.merge(&a);
            nodes += 1;
        }
        // The cluster's peak is the largest sum of the nodes' open sessions at one second.
        if let Some(&(peak, at)) = remote.peaks.get(id) {
            if peak > own.peak {
                own.peak = peak;
                own.peak_at_us = at;
            }
        }
        (own, nodes)
    }
}

/// A cheap fingerprint of a space's numbers: a report goes out when it changes.
fn audience_mark(a: &levee_core::audience::Audience) -> [u64; 8] {
    [
        a.attempts,
        a.sessions,
        a.active,
        a.view_sessions,
        a.queued,
        a.refused,
        a.refused_automated,
        a.filtered_never_read + a.filtered_banned,
    ]
}

/// Reports this node's audience numbers per space (those that changed, every
/// [`AUDIENCE_EVERY`]; each at least every [`AUDIENCE_REFRESH`]), keeps the other nodes'
/// last reports within [`MAX_REMOTE_AUDIENCE_BYTES`], and samples each space's cluster-wide
/// open sessions for its peak.
async fn exchange_audience(cluster: Arc<Cluster>, mut reports: async_nats::Subscriber) {
    let mut sent: HashMap<String, ([u64; 8], tokio::time::Instant)> = HashMap::new();
    let mut every = tokio::time::interval(AUDIENCE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = reports.next() => {
                let Some(msg) = msg else { break };
                match bus::decode_audience(&msg.payload) {
                    Ok(r) if r.node != cluster.id => {
                        let size = msg.payload.len();
                        let mut remote = cluster.audience.lock().expect("audience lock");
                        let old = remote.by_space.get_mut(&r.space).and_then(|m| m.remove(&r.node));
                        let old_size = old.as_ref().map_or(0, |e| e.size);
                        remote.bytes -= old_size;
                        if remote.bytes + size > MAX_REMOTE_AUDIENCE_BYTES {
                            cluster.counters.audience_dropped.fetch_add(1, Relaxed);
                            continue;
                        }
                        remote.bytes += size;
                        let mut recent = old.map(|e| e.recent).unwrap_or_default();
                        recent.extend(r.recent.iter().copied());
                        while recent.len() > AUDIENCE_RECENT_KEEP {
                            recent.pop_first();
                        }
                        let at = tokio::time::Instant::now();
                        let reported = Reported { audience: r.audience, at, size, recent };
                        remote.by_space.entry(r.space).or_default().insert(r.node, reported);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        cluster.counters.malformed.fetch_add(1, Relaxed);
                    }
                }
            }
            _ = every.tick() => {
                let Some(hub) = cluster.hub.upgrade() else { break };
                let now = tokio::time::Instant::now();
                let spaces = hub.list();
                let mut out = Vec::new();
                // Spaces this node forgot are forgotten here too.
                let held: std::collections::HashSet<String> =
                    spaces.iter().map(|s| s.snapshot().id).collect();
                {
                    let mut remote = cluster.audience.lock().expect("audience lock");
                    let mut freed = 0;
                    remote.by_space.retain(|id, m| {
                        let keep = held.contains(id);
                        if !keep {
                            freed += m.values().map(|e| e.size).sum::<usize>();
                        }
                        keep
                    });
                    remote.bytes -= freed;
                    remote.peaks.retain(|id, _| held.contains(id));
                    for space in &spaces {
                        let id = space.snapshot().id;
                        let recent = space.audience.recent();
                        let (mark, msg) = space.audience.with(|a| {
                            let mark = audience_mark(a);
                            let due = match sent.get(&id) {
                                Some((m, at)) => *m != mark || now.duration_since(*at) >= AUDIENCE_REFRESH,
                                None => mark != [0; 8],
                            };
                            (mark, due.then(|| bus::encode_audience(cluster.id, &id, &recent, a)))
                        });
                        if !recent.is_empty() {
                            remote.sample_peak(&id, &recent);
                        }
                        if let Some(m) = msg {
                            sent.insert(id, (mark, now));
                            out.push(m);
                        }
                    }
                }
                sent.retain(|id, _| held.contains(id));
                for m in out {
                    let _ = cluster.client.publish(AUDIENCE_SUBJECT, m).await;
                }
            }
        }
    }
}

/// Joins the cluster and hands the hub its link to it.
pub async fn join(hub: &Arc<Hub>, cfg: &ClusterConfig) -> Result<(), String> {
    let cluster = Cluster::start(hub, cfg).await?;
    let _ = hub.cluster.set(Box::new(Link(cluster)));
    Ok(())
}

/// Other nodes' figures per space: (node, space) → (listeners, line demand, when reported).
type Remote = HashMap<(u64, String), (u32, u32, tokio::time::Instant)>;

/// A line's share is changed only when the new one differs by more than this (relative).
const SHARE_STEP: f64 = 0.02;

/// Reports this node's listeners and line demand per space once a [`LOAD_EVERY`] (an empty
/// report when it has none: every node knows how many are alive), takes the others' reports,
/// and keeps each space's count on the other nodes ([`Space::remote_listeners`]) and this
/// node's share of its admission rate (`admission::share_of`) current.
async fn exchange_load(cluster: Arc<Cluster>, mut reports: async_nats::Subscriber) {
    let mut remote: Remote = HashMap::new();
    // Other nodes heard from, and when.
    let mut nodes: HashMap<u64, tokio::time::Instant> = HashMap::new();
    let mut every = tokio::time::interval(LOAD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = reports.next() => {
                let Some(msg) = msg else { break };
                match bus::decode_load(&msg.payload) {
                    Ok(r) if r.node != cluster.id => {
                        let now = tokio::time::Instant::now();
                        if nodes.len() < MAX_REMOTE_ENTRIES || nodes.contains_key(&r.node) {
                            nodes.insert(r.node, now);
                        }
                        for sp in r.spaces {
                            let key = (r.node, sp.id);
                            if remote.len() >= MAX_REMOTE_ENTRIES && !remote.contains_key(&key) {
                                cluster.counters.load_dropped.fetch_add(1, Relaxed);
                                continue;
                            }
                            remote.insert(key, (sp.listeners, sp.demand, now));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        cluster.counters.malformed.fetch_add(1, Relaxed);
                    }
                }
            }
            _ = every.tick() => {
                let Some(hub) = cluster.hub.upgrade() else { break };
                let now = tokio::time::Instant::now();
                remote.retain(|_, (_, _, at)| now.duration_since(*at) < LOAD_TTL);
                nodes.retain(|_, at| now.duration_since(*at) < LOAD_TTL);
                let mut sums: HashMap<&str, (u64, Vec<u64>)> = HashMap::new();
                for ((_, id), (n, d, _)) in &remote {
                    let e = sums.entry(id.as_str()).or_default();
                    e.0 += *n as u64;
                    e.1.push(*d as u64);
                }
                let alive = nodes.len() + 1;
                let mono = crate::clock::mono_us();
                let mine: Vec<bus::SpaceLoad> = hub
                    .list()
                    .into_iter()
                    .filter_map(|s| {
                        let id = s.snapshot().id;
                        let (theirs, demands) = sums.get(id.as_str()).map_or((0, &[][..]), |(n, d)| (*n, &d[..]));
                        s.remote_listeners.store(theirs, Relaxed);
                        let n = s.track.listeners();
                        let demand = {
                            let mut line = s.shield.line.lock().expect("line lock");
                            let demand = line.demand();
                            let share = levee_core::admission::share_of(demand, demands, alive);
                            if (share - line.share()).abs() > SHARE_STEP * line.share() {
                                line.set_share(share, mono, s.cluster_listeners());
                            }
                            demand
                        };
                        (n > 0 || demand > 0).then(|| bus::SpaceLoad {
                            id,
                            listeners: n.min(u32::MAX as u64) as u32,
                            demand: demand.min(u32::MAX as u64) as u32,
                        })
                    })
                    .collect();
                if mine.is_empty() {
                    let _ = cluster.client.publish(LOAD_SUBJECT, bus::encode_load(cluster.id, &[])).await;
                }
                for part in mine.chunks(bus::MAX_LOAD_ENTRIES) {
                    let _ = cluster.client.publish(LOAD_SUBJECT, bus::encode_load(cluster.id, part)).await;
                }
            }
        }
    }
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, String> {
    // A NATS cluster that is still electing its JetStream leader answers with errors for a
    // few seconds: try for OPEN_BUCKET_FOR.
    let deadline = tokio::time::Instant::now() + OPEN_BUCKET_FOR;
    loop {
        match open_bucket_once(js, replicas).await {
            Ok(kv) => return Ok(kv),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::info!("registry not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn open_bucket_once(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, String> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        return Ok(kv);
    }
    let config = |num_replicas| async_nats::jetstream::kv::Config {
        bucket: BUCKET.to_owned(),
        description: "levee's spaces".to_owned(),
        history: 1,
        max_value_size: bus::MAX_RECORD as i32,
        max_bytes: MAX_REGISTRY_BYTES,
        num_replicas,
        ..Default::default()
    };
    match js.create_key_value(config(replicas.max(1))).await {
        Ok(kv) => Ok(kv),
        // Another node created it meanwhile.
        Err(e) => js
            .get_key_value(BUCKET)
            .await
            .map_err(|_| format!("cannot create the registry bucket {BUCKET}: {e}")),
    }
}

async fn watch_registry(cluster: Arc<Cluster>, mut watch: async_nats::jetstream::kv::Watch) {
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("registry watch: {e}");
                continue;
            }
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        cluster.take_record(&entry.key, &entry.value);
    }
    tracing::error!("registry watch ended");
}

/// Origin side: the space's packets, as its track numbered them, to its subject.
async fn forward(cluster: Arc<Cluster>, space: Arc<Space>) {
    let id = space.snapshot().id;
    // A subject shares its bytes: cloning it per packet allocates nothing.
    let subject = async_nats::Subject::from(audio_subject(&id));
    let tap = space.track.tap(BUS_TAP);
    loop {
        let tapped = space.track.tapped.notified();
        loop {
            let read = tap.lock().expect("tap lock").read();
            match read {
                TapRead::Packet(p) => {
                    let msg = bus::encode_audio(cluster.id, &p);
                    if cluster.client.publish(subject.clone(), msg).await.is_ok() {
                        cluster.counters.sent.fetch_add(1, Relaxed);
                    }
                }
                TapRead::Lost(n) => {
                    cluster.counters.tap_lost.fetch_add(n, Relaxed);
                }
                TapRead::Empty => break,
            }
        }
        if space.track.ended() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tapped).await;
    }
    cluster.done(&id, false);
}

/// Edge side: the space's packets from its subject to this node's listeners, while it has any.
async fn feed(cluster: Arc<Cluster>, space: Arc<Space>) {
    let id = space.snapshot().id;
    let mut sub = match cluster.client.subscribe(audio_subject(&id)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(space = %id, "cannot subscribe to the space's audio: {e}");
            cluster.done(&id, true);
            return;
        }
    };
    let Some(hub) = cluster.hub.upgrade() else {
        return;
    };
    let cadence = hub.config.cadence;
    drop(hub);
    let mut heard = Heard::new(space.track.next_position());
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let Some(packet) = accept(&cluster, &space, &msg.payload, &mut heard) else {
                    continue;
                };
                if !space.go_live() {
                    break;
                }
                space.track.publish_numbered(vec![packet], &cadence, wall_us());
                cluster.counters.heard.fetch_add(1, Relaxed);
            }
            _ = check.tick() => {
                if space.track.ended() {
                    break;
                }
                if space.track.in_demand() {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= FEED_IDLE {
                    break;
                }
            }
        }
    }
    let _ = sub.unsubscribe().await;
    cluster.done(&id, true);
}

/// How a feed maps an origin's numbering onto this node's track: the origin's own numbers
/// while it is the one the track has followed, and, when a new origin starts below where the
/// track is (it was not hearing the space before its source came), the new numbers moved up
/// so that the track's sequence numbers and positions never go back (its listeners see one
/// jump, not a rewind).
#[derive(Debug, Default)]
struct Heard {
    origin: u64,
    /// The origin's next sequence number, as it numbers.
    next_raw: Option<u64>,
    seq_off: u64,
    pts_off: u64,
    /// Where the track is: (next sequence number, next position).
    track_next: (u64, u64),
}

impl Heard {
    fn new(track_next: (u64, u64)) -> Self {
        Heard {
            track_next,
            ..Heard::default()
        }
    }

    /// The packet as the track is to number it, or `None` when it is older than what this
    /// origin already sent.
    fn step(&mut self, origin: u64, mut p: Packet) -> Option<Packet> {
        if origin == self.origin && self.next_raw.is_some_and(|n| p.seq < n) {
            return None;
        }
        if origin != self.origin {
            self.origin = origin;
            self.seq_off = self.track_next.0.saturating_sub(p.seq);
            self.pts_off = self.track_next.1.saturating_sub(p.pts);
        }
        self.next_raw = Some(p.seq + 1);
        p.seq += self.seq_off;
        p.pts += self.pts_off;
        self.track_next = (p.seq + 1, p.pts + p.samples as u64);
        Some(p)
    }
}

/// A bus message, if it is to be heard: well formed, from the space's origin as the registry
/// names it, newer than the last of that origin.
fn accept(cluster: &Cluster, space: &Space, payload: &Bytes, heard: &mut Heard) -> Option<Packet> {
    let m = match bus::decode_audio(payload) {
        Ok(m) => m,
        Err(_) => {
            cluster.counters.malformed.fetch_add(1, Relaxed);
            return None;
        }
    };
    if m.origin != space.origin_id() || m.origin == cluster.id {
        cluster.counters.foreign.fetch_add(1, Relaxed);
        return None;
    }
    let p = heard.step(m.origin, m.packet);
    if p.is_none() {
        cluster.counters.out_of_order.fetch_add(1, Relaxed);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u64) -> Packet {
        Packet {
            seq,
            pts: seq * 960,
            samples: 960,
            capture_us: seq,
            data: Bytes::from_static(&[0xfc]),
        }
    }

    fn seqs(h: &mut Heard, origin: u64, range: std::ops::Range<u64>) -> Vec<Option<(u64, u64)>> {
        range
            .map(|s| h.step(origin, packet(s)).map(|p| (p.seq, p.pts)))
            .collect()
    }

    #[test]
    fn a_feed_keeps_the_origins_numbers_drops_the_old_and_never_rewinds_on_a_new_origin() {
        // A fresh node follows the origin's own numbers.
        let mut h = Heard::new((0, 0));
        assert_eq!(
            seqs(&mut h, 7, 100..103),
            vec![
                Some((100, 96_000)),
                Some((101, 96_960)),
                Some((102, 97_920))
            ]
        );
        // A duplicate or a late packet of the same origin is dropped; a loss is a jump.
        assert_eq!(seqs(&mut h, 7, 101..102), vec![None]);
        assert_eq!(seqs(&mut h, 7, 105..106), vec![Some((105, 100_800))]);
        // A new origin that numbers from 0 continues where the track is.
        assert_eq!(
            seqs(&mut h, 9, 0..2),
            vec![Some((106, 101_760)), Some((107, 102_720))]
        );
        // One that numbers above keeps its numbers.
        assert_eq!(seqs(&mut h, 11, 500..501), vec![Some((500, 480_000))]);
        // A node whose own source fed the track up to 40 hears a new origin from there on.
        let mut h = Heard::new((40, 38_400));
        assert_eq!(seqs(&mut h, 3, 0..1), vec![Some((40, 38_400))]);
    }
}
