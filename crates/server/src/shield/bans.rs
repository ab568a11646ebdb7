//! Bans in force: a bounded map of address blocks with their expiry.
//!
//! Cost model: a check of a source that is *not* banned (the common case on the accept and
//! join paths, and the one an attack loads) is one exact-match probe per prefix length in use
//! (see `levee_core::cidrmap`), never a walk over the bans, whatever their number (at most
//! `ShieldConfig::max_bans`, 65,536 by default; IPv6 bans are per /64, so an attacker can
//! cause many).

use levee_core::cidrmap::CidrMap;
use levee_core::source::Cidr;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// A ban in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// What is banned.
    pub cidr: Cidr,
    /// Until when, µs on the shield's (monotonic) clock.
    pub until_us: u64,
    /// How many times this block was banned automatically.
    pub count: u32,
    /// Set by an operator rather than by the limiter.
    pub manual: bool,
}

/// The bans in force, bounded: an exact-match map per prefix length in use (so a check costs
/// one probe per length in use, whatever the number of bans) and the same bans ordered by
/// expiry (so expiring and evicting the soonest to expire cost O(log n)).
#[derive(Debug, Default)]
pub(super) struct Bans {
    map: CidrMap<Ban>,
    by_expiry: BTreeSet<(u64, Cidr)>,
    /// Repeat counts of expired automatic bans, so that the next ban is longer (bounded too).
    history: HashMap<Cidr, u32>,
}

impl Bans {
    /// Adds or replaces a ban; beyond `max` bans the soonest to expire are dropped (and
    /// returned).
    pub(super) fn insert(&mut self, ban: Ban, max: usize) -> Vec<Cidr> {
        if let Some(old) = self.map.insert(ban.cidr, ban) {
            self.by_expiry.remove(&(old.until_us, old.cidr));
        }
        self.by_expiry.insert((ban.until_us, ban.cidr));
        let mut evicted = Vec::new();
        while self.map.len() > max {
            match self.by_expiry.pop_first() {
                Some((_, cidr)) => {
                    self.map.remove(&cidr);
                    evicted.push(cidr);
                }
                None => break,
            }
        }
        if self.history.len() > max {
            self.history.clear();
        }
        evicted
    }

    /// Lifts the ban on exactly `cidr`.
    pub(super) fn remove(&mut self, cidr: Cidr) -> bool {
        match self.map.remove(&cidr) {
            Some(b) => {
                self.by_expiry.remove(&(b.until_us, b.cidr));
                true
            }
            None => false,
        }
    }

    /// Drops the bans that ended by `now_us`, remembering automatic ones' repeat counts.
    pub(super) fn expire(&mut self, now_us: u64) {
        while let Some(&(until, cidr)) = self.by_expiry.first() {
            if until > now_us {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(b) = self.map.remove(&cidr) {
                if !b.manual {
                    self.history.insert(cidr, b.count);
                }
            }
        }
    }

    /// Bans held (some may have ended since the last [`Bans::expire`]).
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// True when exactly `cidr` is banned.
    pub(super) fn contains(&self, cidr: Cidr) -> bool {
        self.map.contains_key(&cidr)
    }

    /// How many times `cidr` was banned automatically before (0: never, or forgotten).
    pub(super) fn repeats(&self, cidr: Cidr) -> u32 {
        self.history.get(&cidr).copied().unwrap_or(0)
    }

    /// The bans held, soonest to expire first.
    pub(super) fn in_expiry_order(&self) -> Vec<Ban> {
        self.by_expiry
            .iter()
            .filter_map(|(_, c)| self.map.get(c).copied())
            .collect()
    }

    /// The ban in force on `ip` at `now_us` (the narrowest if several cover it).
    pub(super) fn find(&self, ip: IpAddr, now_us: u64) -> Option<Ban> {
        self.find_counting(ip, now_us).0
    }

    /// [`Bans::find`], and how many exact-match probes it made (at most one per prefix length
    /// in use; no entry is ever walked).
    pub(super) fn find_counting(&self, ip: IpAddr, now_us: u64) -> (Option<Ban>, usize) {
        let l = self.map.lookup(ip, |b| b.until_us > now_us);
        (l.found.map(|(_, b)| *b), l.probes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65_536;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The `k`-th of 65,536 bans of six lengths: IPv4 /32, /24, /16 and IPv6 /128, /64, /48.
    fn nth(k: u32) -> Cidr {
        let (a, b) = ((k >> 8) as u8, k as u8);
        match k % 6 {
            0 => Cidr::new(IpAddr::from([10, a, b, 1]), 32),
            1 => Cidr::new(IpAddr::from([11, a, b, 0]), 24),
            2 => {
                let v = k / 6;
                Cidr::new(IpAddr::from([64 + (v >> 8) as u8, v as u8, 0, 0]), 16)
            }
            3 => Cidr::new(format!("2001:db8:1::{k:x}").parse().unwrap(), 128),
            4 => Cidr::new(format!("2001:db8:2:{k:x}::").parse().unwrap(), 64),
            _ => Cidr::new(format!("2001:{k:x}::").parse().unwrap(), 48),
        }
    }

    /// An address inside `c` other than its first one.
    fn inside(c: Cidr) -> IpAddr {
        match c.addr() {
            IpAddr::V4(a) => {
                let host = if c.len() == 32 { 0 } else { 0x77 };
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) | host))
            }
            IpAddr::V6(a) => {
                let host = if c.len() == 128 { 0 } else { 0x1234_5678 };
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) | host))
            }
        }
    }

    fn full() -> Bans {
        let mut b = Bans::default();
        for k in 0..MAX as u32 {
            b.insert(
                Ban {
                    cidr: nth(k),
                    until_us: 1_000_000 + k as u64,
                    count: 0,
                    manual: true,
                },
                MAX,
            );
        }
        assert_eq!(b.len(), MAX);
        b
    }

    #[test]
    fn a_ban_check_probes_only_the_prefix_lengths_in_use() {
        let b = full();
        // Sources that are not banned: at most one probe per length in use (three per family),
        // never a walk over the 65,536 bans.
        for a in [
            "192.0.2.1",
            "10.255.255.254",
            "::ffff:198.51.100.7",
            "2001:db8:3::1",
            "2a00::1",
        ] {
            let (found, probes) = b.find_counting(ip(a), 0);
            assert_eq!(found, None, "{a}");
            assert!(probes <= 3, "{a}: {probes} probes or entries examined");
        }
        // Every banned block is found from any address inside it, with the block itself.
        for k in (0..MAX as u32)
            .step_by(97)
            .chain([0, 1, 2, 3, 4, 5, MAX as u32 - 1])
        {
            let c = nth(k);
            let (found, probes) = b.find_counting(inside(c), 0);
            assert_eq!(found.map(|f| f.cidr), Some(c), "ban {k} ({c})");
            assert!(probes <= 3, "{c}: {probes} probes");
        }
    }

    #[test]
    fn bans_keep_their_expiry_order_bound_and_eviction() {
        let mut b = full();
        // The bound: one more ban drops the one soonest to expire (ban 0), not the newest.
        let extra = Cidr::parse("198.51.100.0/24").unwrap();
        b.insert(
            Ban {
                cidr: extra,
                until_us: 9_000_000,
                count: 0,
                manual: true,
            },
            MAX,
        );
        assert_eq!(b.len(), MAX);
        assert_eq!(
            b.find(inside(nth(0)), 0),
            None,
            "the soonest to expire went"
        );
        assert_eq!(b.find(ip("198.51.100.9"), 0).map(|f| f.cidr), Some(extra));
        assert!(b.find(inside(nth(1)), 0).is_some());
        // Expiry in order: at 1,000,100 µs bans 1..=100 are gone, 101 stays.
        b.expire(1_000_100);
        assert_eq!(b.len(), MAX - 100);
        assert_eq!(b.find(inside(nth(100)), 1_000_100), None);
        assert!(b.find(inside(nth(101)), 1_000_100).is_some());
        let order: Vec<u64> = b.in_expiry_order().iter().map(|e| e.until_us).collect();
        assert_eq!(order.len(), MAX - 100);
        assert!(order.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(order.first(), Some(&1_000_101));
        // A narrower ban inside a wider one: lifting it leaves the wider one in force.
        let wide = nth(602); // a /16 that has not expired
        let narrow = Cidr::new(inside(wide), 32);
        b.insert(
            Ban {
                cidr: narrow,
                until_us: 5_000_000,
                count: 1,
                manual: false,
            },
            MAX,
        );
        assert_eq!(b.find(inside(wide), 0).map(|f| f.cidr), Some(narrow));
        assert!(b.remove(narrow));
        assert_eq!(b.find(inside(wide), 0).map(|f| f.cidr), Some(wide));
        assert!(!b.remove(narrow));
    }
}
