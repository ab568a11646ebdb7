//! The kernel mirror of the shield's bans (`--nft-table NAME`, off by default): nftables sets
//! that drop a banned network's connection attempts (TCP SYNs to levee's port) before they
//! reach the process, which otherwise accepts and closes each one (docs/operations.md).
//!
//! At start [`Mirror::start`] creates (or replaces) `table inet NAME`: interval sets `ban4` and
//! `ban6` (with timeouts), `allow4` and `allow6` (the allowlist and trusted proxies, exempt as
//! in the shield), and an input chain at priority −10 that drops SYNs to the port from banned
//! sources. Afterwards the shield hands every change ([`Update`]) to [`Mirror::send`], which
//! never blocks: a bounded channel ([`NFT_QUEUE`]) feeds one worker thread that runs `nft -f -`.
//! A full channel drops the update (`levee_nft_dropped_updates_total`) and the shield's next
//! tick sends a [`Update::Sync`] of everything instead. At shutdown ([`Mirror::stop`]) the
//! table is deleted.
//!
//! The kernel refuses overlapping intervals in a set, while the shield may hold a block inside
//! another (a /32 inside a banned /24). The pure [`Kernel`] model keeps, per set, the outermost
//! blocks in force, each with its own end as its timeout; when an outer block ends or is lifted
//! the blocks it covered take its place. Each batch tells the kernel the net change since the
//! last one ([`Kernel::changes`]); [`batch`] turns it into nft text.
//!
//! Cost: one `nft` run per batch, which reads the whole sets first: about 1 s with 65,536
//! elements here, so under a flood of new bans a batch carries everything queued meanwhile.

use crate::clock::mono_us;
use levee_core::source::Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Duration;

/// Updates waiting for the worker at most; beyond, an update is dropped (and counted) rather
/// than wait: the shield calls [`Mirror::send`] on the accept path, under its bans lock.
pub const NFT_QUEUE: usize = 4_096;

/// After a failed `nft` run, the worker rewrites the whole sets this long later.
const RETRY: Duration = Duration::from_secs(5);

/// Longest wait of the worker between looks at the time (ends of blocks it covers).
const IDLE: Duration = Duration::from_secs(1);

/// One change of the shield's bans or allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `cidr` is banned until `until_us` (the shield's monotonic clock, [`mono_us`]).
    Ban {
        /// The banned block.
        cidr: Cidr,
        /// Its end.
        until_us: u64,
    },
    /// The ban on exactly `cidr` is lifted (or was evicted).
    Unban(Cidr),
    /// `cidr` is exempt from bans.
    Allow(Cidr),
    /// `cidr` is no longer exempt.
    Disallow(Cidr),
    /// Everything the shield holds, replacing what the mirror held.
    Sync {
        /// Bans and their ends.
        bans: Vec<(Cidr, u64)>,
        /// The exempt blocks.
        allow: Vec<Cidr>,
    },
}

/// One of the table's two kinds of sets (each a `…4` and a `…6` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// `ban4`, `ban6`: elements with timeouts.
    Ban,
    /// `allow4`, `allow6`: no timeouts.
    Allow,
}

/// One change to the kernel's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Empty both sets of the kind.
    Flush(Set),
    /// Remove the element (present or already timed out: either way it goes).
    Delete(Set, Cidr),
    /// Add the element until the end given (µs, monotonic; `u64::MAX`: no timeout).
    Add(Set, Cidr, u64),
}

/// A block as an ordered key: family, first address, prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    v6: bool,
    start: u128,
    len: u8,
}

impl Block {
    fn of(c: Cidr) -> Block {
        let (v6, start) = match c.addr() {
            std::net::IpAddr::V4(a) => (false, u32::from(a) as u128),
            std::net::IpAddr::V6(a) => (true, u128::from(a)),
        };
        Block {
            v6,
            start,
            len: c.len(),
        }
    }
    fn cidr(self) -> Cidr {
        let addr = if self.v6 {
            std::net::IpAddr::from(self.start.to_be_bytes())
        } else {
            std::net::IpAddr::from((self.start as u32).to_be_bytes())
        };
        Cidr::new(addr, self.len)
    }
    /// The last address of the block.
    fn last(self) -> u128 {
        let bits = if self.v6 { 128 } else { 32 };
        let host = bits - self.len as u32;
        match host {
            0 => self.start,
            128 => u128::MAX,
            h => self.start | ((1u128 << h) - 1),
        }
    }
    /// Every key of a block inside this one.
    fn inside(self) -> std::ops::RangeInclusive<Block> {
        let at = |start, len| Block {
            v6: self.v6,
            start,
            len,
        };
        at(self.start, self.len)..=at(self.last(), u8::MAX)
    }
}

/// The blocks of one kind the shield holds; the outermost of them in force, which the kernel
/// holds; and what changed there since the kernel was last told.
#[derive(Debug, Default)]
struct Blocks {
    wanted: BTreeMap<Block, u64>,
    ends: BTreeSet<(u64, Block)>,
    kernel: BTreeMap<Block, u64>,
    /// Blocks of `kernel` changed since the last batch, with what the kernel held then.
    told: BTreeMap<Block, Option<u64>>,
    /// The kernel's sets are to be emptied and refilled.
    flush: bool,
}

impl Blocks {
    fn set(&mut self, b: Block, end: u64, now: u64) {
        if let Some(old) = self.wanted.insert(b, end) {
            self.ends.remove(&(old, b));
        }
        self.ends.insert((end, b));
        self.settle(self.region(b), now);
    }

    fn unset(&mut self, b: Block, now: u64) {
        let region = self.region(b);
        if let Some(old) = self.wanted.remove(&b) {
            self.ends.remove(&(old, b));
            self.settle(region, now);
        }
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(end, b)) = self.ends.first() {
            if end > now {
                break;
            }
            let region = self.region(b);
            self.ends.pop_first();
            self.wanted.remove(&b);
            self.settle(region, now);
        }
    }

    /// The kernel's block holding `b` (its blocks never overlap), or `b` itself.
    fn region(&self, b: Block) -> Block {
        let key = Block { len: u8::MAX, ..b };
        match self.kernel.range(..=key).next_back() {
            Some((&k, _)) if k.v6 == b.v6 && k.len <= b.len && k.last() >= b.start => k,
            _ => b,
        }
    }

    /// Brings the kernel's blocks inside `region` to the outermost wanted ones in force there.
    fn settle(&mut self, region: Block, now: u64) {
        let mut want = BTreeMap::new();
        let mut covered: Option<u128> = None;
        for (&b, &end) in self.wanted.range(region.inside()) {
            if end <= now || b.len < region.len || covered.is_some_and(|c| b.start <= c) {
                continue;
            }
            covered = Some(b.last());
            want.insert(b, end);
        }
        let gone: Vec<Block> = self
            .kernel
            .range(region.inside())
            .filter(|(b, end)| want.get(b) != Some(end))
            .map(|(b, _)| *b)
            .collect();
        for b in gone {
            self.note(b);
            self.kernel.remove(&b);
        }
        for (b, end) in want {
            if self.kernel.get(&b) != Some(&end) {
                self.note(b);
                self.kernel.insert(b, end);
            }
        }
    }

    fn note(&mut self, b: Block) {
        let was = self.kernel.get(&b).copied();
        self.told.entry(b).or_insert(was);
    }

    fn reset(&mut self, blocks: impl IntoIterator<Item = (Cidr, u64)>, now: u64) {
        *self = Blocks::default();
        for (c, end) in blocks {
            let b = Block::of(c);
            if let Some(old) = self.wanted.insert(b, end) {
                self.ends.remove(&(old, b));
            }
            self.ends.insert((end, b));
        }
        for v6 in [false, true] {
            let all = Block {
                v6,
                start: 0,
                len: 0,
            };
            self.settle(all, now);
        }
        self.told.clear();
        self.flush = true;
    }

    /// Pushes the changes since the kernel was last told: removals, then additions. True when
    /// one needs telling: an element that merely timed out does not (its removal waits for the
    /// next batch, where it makes sure before anything takes its place).
    fn changes(&self, now: u64, set: Set, out: &mut Vec<Op>) -> bool {
        if self.flush {
            out.push(Op::Flush(set));
            out.extend(
                self.kernel
                    .iter()
                    .filter(|(_, &end)| end > now)
                    .map(|(b, &end)| Op::Add(set, b.cidr(), end)),
            );
            return true;
        }
        let mut needed = false;
        let changed = || {
            self.told
                .iter()
                .map(|(b, &was)| (b, was, self.kernel.get(b).copied()))
                .filter(|(_, was, is)| was != is)
        };
        for (b, was, _) in changed() {
            if let Some(end) = was {
                needed |= end > now;
                out.push(Op::Delete(set, b.cidr()));
            }
        }
        for (b, _, is) in changed() {
            if let Some(end) = is.filter(|&end| end > now) {
                needed = true;
                out.push(Op::Add(set, b.cidr(), end));
            }
        }
        needed
    }

    fn told(&mut self) {
        self.told.clear();
        self.flush = false;
    }
}

/// What the kernel's sets hold, as the mirror keeps them, and what the kernel was not told
/// yet: pure, time a parameter.
#[derive(Debug, Default)]
pub struct Kernel {
    bans: Blocks,
    allow: Blocks,
}

impl Kernel {
    /// Applies `u` at `now`.
    pub fn apply(&mut self, u: Update, now: u64) {
        match u {
            Update::Ban { cidr, until_us } if until_us > now => {
                self.bans.set(Block::of(cidr), until_us, now)
            }
            Update::Ban { cidr, .. } | Update::Unban(cidr) => self.bans.unset(Block::of(cidr), now),
            Update::Allow(cidr) => self.allow.set(Block::of(cidr), u64::MAX, now),
            Update::Disallow(cidr) => self.allow.unset(Block::of(cidr), now),
            Update::Sync { bans, allow } => {
                self.bans.reset(bans, now);
                self.allow
                    .reset(allow.into_iter().map(|c| (c, u64::MAX)), now);
            }
        }
    }

    /// Drops the bans that ended by `now`, putting the blocks they covered in their place.
    pub fn expire(&mut self, now: u64) {
        self.bans.expire(now);
    }

    /// Has every set emptied and refilled by the next batch (what the kernel holds is unknown
    /// after a failure).
    pub fn rewrite(&mut self) {
        self.bans.flush = true;
        self.allow.flush = true;
    }

    /// What the kernel must be told at `now`, counted as told; empty when nothing needs it.
    /// Removals come first: [`batch`] puts them in a transaction before the additions.
    pub fn changes(&mut self, now: u64) -> Vec<Op> {
        let mut out = Vec::new();
        let bans = self.bans.changes(now, Set::Ban, &mut out);
        let allow = self.allow.changes(now, Set::Allow, &mut out);
        if !(bans || allow) {
            return Vec::new();
        }
        self.bans.told();
        self.allow.told();
        out
    }

    /// The soonest end of a ban held.
    pub fn next_end(&self) -> Option<u64> {
        self.bans.ends.first().map(|&(end, _)| end)
    }

    /// The elements the kernel's sets hold (bans, then the allowlist).
    pub fn elements(&self) -> (Vec<(Cidr, u64)>, Vec<Cidr>) {
        (
            self.bans
                .kernel
                .iter()
                .map(|(b, &e)| (b.cidr(), e))
                .collect(),
            self.allow.kernel.keys().map(|b| b.cidr()).collect(),
        )
    }
}

/// Refuses a table name that is not a plain nft identifier (it is written into nft's input).
pub fn check_table_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid nftables table name `{name}`: a letter, then letters, digits or `_` (64 at most)"
        ))
    }
}

/// The batch that creates (or replaces) `table inet TABLE` for a server on `port`.
pub fn create(table: &str, port: u16) -> String {
    format!(
        "add table inet {table}
delete table inet {table}
table inet {table} {{
	set allow4 {{ type ipv4_addr; flags interval; }}
	set allow6 {{ type ipv6_addr; flags interval; }}
	set ban4 {{ type ipv4_addr; flags interval, timeout; }}
	set ban6 {{ type ipv6_addr; flags interval, timeout; }}
	chain input {{
		type filter hook input priority -10; policy accept;
		tcp dport {port} tcp flags & (syn | ack) == syn jump admit
	}}
	chain admit {{
		ip saddr @allow4 return
		ip6 saddr @allow6 return
		ip saddr @ban4 counter drop
		ip6 saddr @ban6 counter drop
	}}
}}
"
    )
}

/// Elements per nft statement at most.
const PER_STATEMENT: usize = 4_096;

/// The batches that apply `ops` at `now`: removals first, then additions. The kernel refuses
/// an element that overlaps one removed in the same transaction, hence two. Elements go one
/// statement per set (nft takes thousands of one-element statements that alternate between
/// sets a thousand times slower).
pub fn batch(table: &str, ops: &[Op], now: u64) -> [String; 2] {
    const NAMES: [&str; 4] = ["ban4", "ban6", "allow4", "allow6"];
    let at = |s: Set, c: &Cidr| 2 * (s == Set::Allow) as usize + c.addr().is_ipv6() as usize;
    let (mut gone, mut new): ([Vec<String>; 4], [Vec<String>; 4]) = Default::default();
    let mut removals = String::new();
    for op in ops {
        match *op {
            Op::Flush(s) => {
                for set in &NAMES[2 * (s == Set::Allow) as usize..][..2] {
                    let _ = writeln!(removals, "flush set inet {table} {set}");
                }
            }
            Op::Delete(s, c) => gone[at(s, &c)].push(c.to_string()),
            Op::Add(s, c, end) if end > now => {
                let e = match s {
                    Set::Ban => format!("{c} timeout {}ms", (end - now).div_ceil(1_000)),
                    Set::Allow => c.to_string(),
                };
                new[at(s, &c)].push(e);
            }
            Op::Add(..) => {}
        }
    }
    let mut additions = String::new();
    for (i, set) in NAMES.iter().enumerate() {
        for chunk in gone[i].chunks(PER_STATEMENT) {
            // Added first so that the deletion holds whether or not it timed out already.
            let timeout = if i < 2 { " timeout 1s" } else { "" };
            let added: Vec<String> = chunk.iter().map(|c| format!("{c}{timeout}")).collect();
            let _ = writeln!(
                removals,
                "add element inet {table} {set} {{ {} }}\ndelete element inet {table} {set} {{ {} }}",
                added.join(", "),
                chunk.join(", ")
            );
        }
        for chunk in new[i].chunks(PER_STATEMENT) {
            let _ = writeln!(
                additions,
                "add element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    [removals, additions]
}

/// Runs `nft -f -` with `text` on its input; its stderr when it fails.
fn nft(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(text.as_bytes()));
        child.wait_with_output()
    })
    .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!("nft failed ({}): {}", out.status, err.trim()))
}

/// The mirror's counters (`levee_nft_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct NftCounters {
    /// Updates the worker took from the channel (and applied, unless `errors` says otherwise).
    pub updates: AtomicU64,
    /// Updates dropped on a full channel (a full resync follows).
    pub dropped: AtomicU64,
    /// Failed `nft` runs.
    pub errors: AtomicU64,
}

enum Msg {
    Update(Update),
    Stop,
}

/// The running mirror: the channel to its worker.
pub struct Mirror {
    table: String,
    tx: SyncSender<Msg>,
    counters: std::sync::Arc<NftCounters>,
    resync: AtomicBool,
    last_drop_log_us: AtomicU64,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Mirror {
    /// Creates (or replaces) `table inet TABLE` for a server on `port`, with `allow` exempt,
    /// and starts the worker; the error names the table and says what nft said.
    pub fn start(table: &str, port: u16, allow: &[Cidr]) -> Result<Mirror, String> {
        check_table_name(table)?;
        let mut kernel = Kernel::default();
        let sync = Update::Sync {
            bans: Vec::new(),
            allow: allow.to_vec(),
        };
        let now = mono_us();
        kernel.apply(sync, now);
        let [_, elements] = batch(table, &kernel.changes(now), now);
        nft(&(create(table, port) + &elements))
            .map_err(|e| format!("cannot create the nftables table `inet {table}`: {e}"))?;
        let (tx, rx) = mpsc::sync_channel(NFT_QUEUE);
        let counters = std::sync::Arc::<NftCounters>::default();
        let worker = {
            let (table, counters) = (table.to_owned(), counters.clone());
            std::thread::Builder::new()
                .name("levee-nft".into())
                .spawn(move || work(kernel, rx, &table, &counters))
                .map_err(|e| format!("cannot start the nftables worker: {e}"))?
        };
        tracing::info!(
            table,
            port,
            "bans mirrored into nftables table inet {table}"
        );
        Ok(Mirror {
            table: table.to_owned(),
            tx,
            counters,
            resync: AtomicBool::new(false),
            last_drop_log_us: AtomicU64::new(0),
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The counters.
    pub fn counters(&self) -> &NftCounters {
        &self.counters
    }

    /// Queues `u` for the worker without waiting: on a full channel it is dropped, counted and
    /// logged (at most once a second), and a full resync is asked for.
    pub fn send(&self, u: Update) {
        let Err(e) = self.tx.try_send(Msg::Update(u)) else {
            return;
        };
        self.resync.store(true, Relaxed);
        let n = self.counters.dropped.fetch_add(1, Relaxed) + 1;
        let now = mono_us();
        let last = self.last_drop_log_us.load(Relaxed);
        if now.saturating_sub(last) >= 1_000_000
            && self
                .last_drop_log_us
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let why = match e {
                TrySendError::Full(_) => "full",
                TrySendError::Disconnected(_) => "closed",
            };
            tracing::warn!(table = %self.table, dropped = n, queue = why,
                "nftables update dropped; the whole set is sent again on the next tick");
        }
    }

    /// True (once) when an update was dropped since the last call: send a [`Update::Sync`].
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Relaxed)
    }

    /// Stops the worker, which deletes the table. Waits for it (one `nft` run).
    pub fn stop(&self) {
        let Some(worker) = self.worker.lock().expect("nft worker lock").take() else {
            return;
        };
        if self.tx.send(Msg::Stop).is_ok() {
            let _ = worker.join();
        }
    }
}

/// The worker: applies updates in batches (everything queued at once), wakes when a covering
/// ban ends, and after a failure rewrites every set after [`RETRY`].
fn work(mut kernel: Kernel, rx: Receiver<Msg>, table: &str, counters: &NftCounters) {
    let mut retry_at: Option<u64> = None;
    'run: loop {
        let now = mono_us();
        let mut wake = kernel
            .next_end()
            .map_or(u64::MAX, |e| e.saturating_sub(now));
        if let Some(at) = retry_at {
            wake = wake.min(at.saturating_sub(now));
        }
        let wait = Duration::from_micros(wake).clamp(Duration::from_millis(1), IDLE);
        let mut msg = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = mono_us();
        let mut applied = 0u64;
        while let Some(m) = msg {
            match m {
                Msg::Stop => break 'run,
                Msg::Update(u) => kernel.apply(u, now),
            }
            applied += 1;
            msg = if applied < NFT_QUEUE as u64 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        counters.updates.fetch_add(applied, Relaxed);
        kernel.expire(now);
        if retry_at.is_some_and(|at| now < at) {
            continue;
        }
        let ops = kernel.changes(now);
        if ops.is_empty() {
            continue;
        }
        let [removals, additions] = batch(table, &ops, now);
        match nft(&removals).and_then(|()| nft(&additions)) {
            Ok(()) => retry_at = None,
            Err(e) => {
                counters.errors.fetch_add(1, Relaxed);
                tracing::warn!(table, error = %e,
                    "nft refused an update of the kernel bans; every set is rewritten in {RETRY:?}");
                kernel.rewrite();
                retry_at = Some(now + RETRY.as_micros() as u64);
            }
        }
    }
    match nft(&format!("delete table inet {table}\n")) {
        Ok(()) => tracing::info!(table, "deleted nftables table inet {table}"),
        Err(e) => {
            counters.errors.fetch_add(1, Relaxed);
            tracing::warn!(table, error = %e, "cannot delete nftables table inet {table}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn ban(s: &str, until_us: u64) -> Update {
        Update::Ban {
            cidr: c(s),
            until_us,
        }
    }

    /// Applies `u` at `now` and returns what the kernel is told.
    fn step(k: &mut Kernel, u: Update, now: u64) -> Vec<Op> {
        k.apply(u, now);
        k.expire(now);
        k.changes(now)
    }

    /// As [`step`], as nft text.
    fn text(k: &mut Kernel, u: Update, now: u64) -> [String; 2] {
        batch("t", &step(k, u, now), now)
    }

    #[test]
    fn bans_become_elements_with_their_remaining_lifetime_and_prefix() {
        let mut k = Kernel::default();
        let [rm, add] = text(&mut k, ban("198.51.100.0/24", 61_000_000), 1_000_000);
        assert_eq!(rm, "");
        assert_eq!(
            add,
            "add element inet t ban4 { 198.51.100.0/24 timeout 60000ms }\n"
        );
        // IPv6, a /64 as automatic bans are, and a lifetime rounded up to the millisecond.
        let [_, add] = text(&mut k, ban("2001:db8:1:2::/64", 1_500_001), 1_000_000);
        assert_eq!(
            add,
            "add element inet t ban6 { 2001:db8:1:2::/64 timeout 501ms }\n"
        );
        // An IPv4-mapped IPv6 address is banned as IPv4, as the shield checks it.
        let [_, add] = text(&mut k, ban("::ffff:203.0.113.9", 2_000_000), 1_000_000);
        assert_eq!(
            add,
            "add element inet t ban4 { 203.0.113.9/32 timeout 1000ms }\n"
        );
        // A lift removes it, whether or not the kernel timed it out already; the IPv6 ban that
        // ended meanwhile is swept in the same batch.
        let [rm, add] = text(&mut k, Update::Unban(c("198.51.100.0/24")), 1_900_000);
        assert_eq!(
            rm,
            "add element inet t ban4 { 198.51.100.0/24 timeout 1s }\n\
             delete element inet t ban4 { 198.51.100.0/24 }\n\
             add element inet t ban6 { 2001:db8:1:2::/64 timeout 1s }\n\
             delete element inet t ban6 { 2001:db8:1:2::/64 }\n"
        );
        assert_eq!(add, "");
        // Lifting what is not banned changes nothing; a ban that already ended adds nothing.
        assert_eq!(step(&mut k, Update::Unban(c("10.0.0.0/8")), 1_900_000), []);
        assert_eq!(step(&mut k, ban("10.0.0.0/8", 1_900_000), 1_900_000), []);
        // The allowlist has no timeouts.
        let [_, add] = text(&mut k, Update::Allow(c("::1")), 1_900_000);
        assert_eq!(add, "add element inet t allow6 { ::1/128 }\n");
    }

    #[test]
    fn what_changed_within_a_batch_is_told_once_and_in_effect() {
        let mut k = Kernel::default();
        // Banned and lifted before the kernel heard of it: nothing to tell.
        k.apply(ban("192.0.2.7", 10_000_000), 0);
        k.apply(Update::Unban(c("192.0.2.7")), 0);
        assert_eq!(k.changes(0), []);
        // Banned again for longer: the element is replaced with its new lifetime.
        step(&mut k, ban("192.0.2.7", 10_000_000), 0);
        let [rm, add] = text(&mut k, ban("192.0.2.7", 20_000_000), 5_000_000);
        assert!(
            rm.contains("delete element inet t ban4 { 192.0.2.7/32 }"),
            "{rm}"
        );
        assert_eq!(
            add,
            "add element inet t ban4 { 192.0.2.7/32 timeout 15000ms }\n"
        );
        // Many at once: one statement per set, removals in their own batch.
        for i in 1..=3 {
            k.apply(ban(&format!("198.51.100.{i}"), 6_000_000), 5_000_000);
            k.apply(ban(&format!("2001:db8::{i}"), 6_000_000), 5_000_000);
        }
        k.apply(Update::Unban(c("192.0.2.7")), 5_000_000);
        let [rm, add] = batch("t", &k.changes(5_000_000), 5_000_000);
        assert_eq!(
            rm,
            "add element inet t ban4 { 192.0.2.7/32 timeout 1s }\n\
             delete element inet t ban4 { 192.0.2.7/32 }\n"
        );
        assert_eq!(
            add,
            "add element inet t ban4 { 198.51.100.1/32 timeout 1000ms, 198.51.100.2/32 timeout 1000ms, 198.51.100.3/32 timeout 1000ms }\n\
             add element inet t ban6 { 2001:db8::1/128 timeout 1000ms, 2001:db8::2/128 timeout 1000ms, 2001:db8::3/128 timeout 1000ms }\n"
        );
    }

    #[test]
    fn the_kernel_holds_the_outermost_bans_and_the_covered_ones_take_over() {
        let mut k = Kernel::default();
        // A /32 that outlives the /24 around it, and a /32 that does not.
        step(&mut k, ban("203.0.113.5", 100), 0);
        step(&mut k, ban("203.0.113.6", 30), 0);
        // The /24 replaces both in the kernel (no overlapping intervals in a set).
        assert_eq!(
            step(&mut k, ban("203.0.113.0/24", 50), 1),
            [
                Op::Delete(Set::Ban, c("203.0.113.5/32")),
                Op::Delete(Set::Ban, c("203.0.113.6/32")),
                Op::Add(Set::Ban, c("203.0.113.0/24"), 50),
            ]
        );
        assert_eq!(k.elements().0, [(c("203.0.113.0/24"), 50)]);
        // A ban inside a kernel block changes nothing there.
        assert_eq!(step(&mut k, ban("203.0.113.9", 40), 2), []);
        // Covered bans end unseen; when the /24 ends, the /32 that still runs takes its place.
        assert_eq!(k.next_end(), Some(30));
        for now in [30, 40] {
            k.expire(now);
            assert_eq!(k.changes(now), []);
        }
        k.expire(50);
        assert_eq!(
            k.changes(50),
            [
                Op::Delete(Set::Ban, c("203.0.113.0/24")),
                Op::Add(Set::Ban, c("203.0.113.5/32"), 100),
            ]
        );
        // An element that timed out alone needs no telling until something else does.
        step(&mut k, ban("198.51.100.1", 70), 60);
        k.expire(70);
        assert_eq!(k.changes(70), []);
        assert_eq!(
            step(&mut k, Update::Unban(c("203.0.113.5")), 80),
            [
                Op::Delete(Set::Ban, c("198.51.100.1/32")),
                Op::Delete(Set::Ban, c("203.0.113.5/32")),
            ]
        );
        assert_eq!(k.elements().0, []);
    }

    #[test]
    fn lifting_an_outer_ban_puts_back_the_bans_it_covered() {
        let mut k = Kernel::default();
        for b in ["10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "10.1.9.0/24"] {
            step(&mut k, ban(b, 100), 0);
        }
        let [rm, add] = text(&mut k, Update::Unban(c("10.1.0.0/16")), 1);
        assert_eq!(
            rm,
            "add element inet t ban4 { 10.1.0.0/16 timeout 1s }\n\
             delete element inet t ban4 { 10.1.0.0/16 }\n"
        );
        assert_eq!(
            add,
            "add element inet t ban4 { 10.1.2.0/24 timeout 1ms, 10.1.9.0/24 timeout 1ms }\n"
        );
        // Families never mix, and a /0 covers its family only.
        step(&mut k, ban("::/0", 100), 1);
        assert_eq!(k.elements().0.len(), 3);
    }

    #[test]
    fn a_sync_and_a_rewrite_empty_the_sets_and_refill_them() {
        let mut k = Kernel::default();
        step(&mut k, ban("192.0.2.0/24", 100), 0);
        let sync = Update::Sync {
            bans: vec![
                (c("198.51.100.0/24"), 2_000),
                (c("198.51.100.7"), 3_000),
                (c("2001:db8::/64"), 500),
            ],
            allow: vec![c("127.0.0.1"), c("127.0.0.0/8")],
        };
        let [rm, add] = text(&mut k, sync, 0);
        assert_eq!(
            rm,
            "flush set inet t ban4\nflush set inet t ban6\nflush set inet t allow4\nflush set inet t allow6\n"
        );
        assert_eq!(
            add,
            "add element inet t ban4 { 198.51.100.0/24 timeout 2ms }\n\
             add element inet t ban6 { 2001:db8::/64 timeout 1ms }\n\
             add element inet t allow4 { 127.0.0.0/8 }\n"
        );
        k.rewrite();
        let [rm, add] = batch("t", &k.changes(1_000), 1_000);
        assert!(rm.starts_with("flush set inet t ban4\n"), "{rm}");
        assert_eq!(
            add,
            "add element inet t ban4 { 198.51.100.0/24 timeout 1ms }\n\
             add element inet t allow4 { 127.0.0.0/8 }\n"
        );
        assert_eq!(k.changes(1_000), [], "told");
    }

    /// A kernel set as nft's: elements with the end the kernel gives them (up to `LAG` later
    /// than ours), an addition that overlaps one in force refused, and so is a removal's
    /// one-second addition.
    #[derive(Default)]
    struct Sim(BTreeMap<Block, (u64, u64)>);

    const LAG: u64 = 5;

    impl Sim {
        fn clash(&self, b: Block, now: u64, except: Option<Block>) -> Option<Block> {
            self.0
                .iter()
                .find(|(k, (_, kernel_end))| {
                    *kernel_end > now
                        && Some(**k) != except
                        && k.v6 == b.v6
                        && k.start <= b.last()
                        && b.start <= k.last()
                })
                .map(|(k, _)| *k)
        }

        fn run(&mut self, ops: &[Op], now: u64, lag: u64) {
            for op in ops {
                match *op {
                    Op::Flush(Set::Ban) => self.0.clear(),
                    Op::Delete(Set::Ban, c) => {
                        let b = Block::of(c);
                        let clash = self.clash(b, now, Some(b));
                        assert!(clash.is_none(), "removing {c}: overlaps {clash:?} at {now}");
                    }
                    _ => {}
                }
            }
            for op in ops {
                if let Op::Delete(Set::Ban, c) = *op {
                    self.0.remove(&Block::of(c));
                }
            }
            for op in ops {
                if let Op::Add(Set::Ban, c, end) = *op {
                    let b = Block::of(c);
                    let clash = self.clash(b, now, None);
                    assert!(clash.is_none(), "{c} overlaps {clash:?} at {now}");
                    self.0.insert(b, (end, end + lag));
                }
            }
        }

        fn covers(&self, ip: u128, now: u64) -> bool {
            self.0
                .iter()
                .any(|(k, &(end, _))| end > now && k.start <= ip && ip <= k.last())
        }
    }

    #[test]
    fn any_sequence_of_bans_keeps_the_kernel_disjoint_and_equal_to_the_shield() {
        // Nested blocks of 10.0.0.0/16 (lengths 16 to 32), bans, lifts and time passing, from a
        // fixed pseudo-random sequence, each step one batch; after every step the kernel's
        // blocks cover exactly the addresses some ban in force covers, and nft never refuses
        // a batch, though the kernel lets elements time out later than levee does.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let base = 0x0a00_0000_u32;
        let lens = [16u8, 20, 24, 28, 32];
        let (mut k, mut sim) = (Kernel::default(), Sim::default());
        let mut held: BTreeMap<Block, u64> = BTreeMap::new();
        let mut now = 1_000;
        for step in 0..4_000 {
            let len = lens[next(5) as usize];
            let addr = base | (next(4) as u32) << 12 | (next(3) as u32) << 6 | next(2) as u32;
            let cidr = Cidr::new(std::net::IpAddr::from(addr.to_be_bytes()), len);
            // One to three updates per batch.
            for _ in 0..=next(3) {
                match next(10) {
                    0..=5 => {
                        let until_us = now + 1 + next(400);
                        held.insert(Block::of(cidr), until_us);
                        k.apply(Update::Ban { cidr, until_us }, now);
                    }
                    6..=7 => {
                        held.remove(&Block::of(cidr));
                        k.apply(Update::Unban(cidr), now);
                    }
                    _ => now += 1 + next(60),
                }
            }
            k.expire(now);
            let ops = k.changes(now);
            sim.run(&ops, now, next(LAG + 1));
            held.retain(|_, e| *e > now);
            for probe in 0..64u32 {
                let ip = (base | (probe >> 4) << 12 | (probe >> 2 & 3) << 6 | (probe & 3)) as u128;
                let want = held.keys().any(|b| b.start <= ip && ip <= b.last());
                assert_eq!(sim.covers(ip, now), want, "step {step}, {ip:x} at {now}");
            }
        }
    }

    #[test]
    fn the_table_drops_syns_to_the_port_from_banned_sources_only() {
        let text = create("levee", 8080);
        assert!(text.starts_with("add table inet levee\ndelete table inet levee\n"));
        assert!(text.contains("type filter hook input priority -10; policy accept;"));
        assert!(text.contains("tcp dport 8080 tcp flags & (syn | ack) == syn jump admit"));
        assert!(text.contains("set ban6 { type ipv6_addr; flags interval, timeout; }"));
        let allow = text.find("@allow4 return").unwrap();
        assert!(allow < text.find("@ban4 counter drop").unwrap());
        assert!(check_table_name("levee_8080").is_ok());
        for bad in [
            "",
            "9lives",
            "a b",
            "x;flush ruleset",
            "a-b",
            &"a".repeat(65),
        ] {
            assert!(check_table_name(bad).is_err(), "{bad:?}");
        }
    }
}
