//! Address blocks looked up by address in O(1): one exact-match map per prefix length.
//!
//! Contract: a lookup masks the address to each prefix length *in use* (longest first) and
//! probes that length's map once, so it costs at most 33 probes for IPv4 and 129 for IPv6, and
//! in practice the handful of lengths an operator and the limiter use (/32 and /64 for
//! automatic bans), however many blocks are held. Nothing walks the entries. IPv4-mapped IPv6
//! addresses are looked up as IPv4, as everywhere in [`crate::source`].

use crate::source::{canonical, Cidr};
use std::collections::HashMap;
use std::net::IpAddr;

/// A map from address blocks to values with longest-prefix lookups by address.
#[derive(Debug, Clone)]
pub struct CidrMap<V> {
    /// IPv4 blocks by prefix length (index 0..=32), keyed by the masked address.
    v4: Vec<HashMap<u32, V>>,
    /// IPv6 blocks by prefix length (index 0..=128), keyed by the masked address.
    v6: Vec<HashMap<u128, V>>,
    /// Bit `l` set while `v4[l]` holds a block.
    v4_lens: u64,
    /// Bit `l` (of 192) set while `v6[l]` holds a block.
    v6_lens: [u64; 3],
    len: usize,
}

/// What [`CidrMap::lookup`] found, and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup<'a, V> {
    /// The longest block holding the address whose value passed the filter.
    pub found: Option<(Cidr, &'a V)>,
    /// Exact-match probes made (at most one per prefix length in use).
    pub probes: usize,
}

impl<V> Default for CidrMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> CidrMap<V> {
    /// An empty map (allocates nothing until a block is inserted).
    pub fn new() -> Self {
        CidrMap {
            v4: (0..=32).map(|_| HashMap::new()).collect(),
            v6: (0..=128).map(|_| HashMap::new()).collect(),
            v4_lens: 0,
            v6_lens: [0; 3],
            len: 0,
        }
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no block is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Prefix lengths in use for IPv4 (`v6 == false`) or IPv6: the most a lookup probes.
    pub fn lengths_in_use(&self, v6: bool) -> usize {
        if v6 {
            self.v6_lens.iter().map(|w| w.count_ones() as usize).sum()
        } else {
            self.v4_lens.count_ones() as usize
        }
    }

    /// Inserts `value` for `cidr`; returns the value it replaces.
    pub fn insert(&mut self, cidr: Cidr, value: V) -> Option<V> {
        let l = cidr.len() as usize;
        let old = match cidr.addr() {
            IpAddr::V4(a) => {
                self.v4_lens |= 1 << l;
                self.v4[l].insert(u32::from(a), value)
            }
            IpAddr::V6(a) => {
                self.v6_lens[l / 64] |= 1 << (l % 64);
                self.v6[l].insert(u128::from(a), value)
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `cidr`; returns its value.
    pub fn remove(&mut self, cidr: &Cidr) -> Option<V> {
        let l = cidr.len() as usize;
        let old = match cidr.addr() {
            IpAddr::V4(a) => {
                let old = self.v4[l].remove(&u32::from(a));
                if self.v4[l].is_empty() {
                    // Give the memory back and stop probing this length.
                    self.v4[l] = HashMap::new();
                    self.v4_lens &= !(1 << l);
                }
                old
            }
            IpAddr::V6(a) => {
                let old = self.v6[l].remove(&u128::from(a));
                if self.v6[l].is_empty() {
                    self.v6[l] = HashMap::new();
                    self.v6_lens[l / 64] &= !(1 << (l % 64));
                }
                old
            }
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value held for exactly `cidr`.
    pub fn get(&self, cidr: &Cidr) -> Option<&V> {
        let l = cidr.len() as usize;
        match cidr.addr() {
            IpAddr::V4(a) => self.v4[l].get(&u32::from(a)),
            IpAddr::V6(a) => self.v6[l].get(&u128::from(a)),
        }
    }

    /// True when exactly `cidr` is held.
    pub fn contains_key(&self, cidr: &Cidr) -> bool {
        self.get(cidr).is_some()
    }

    /// The longest block holding `ip` whose value passes `keep` (e.g. "not expired"), probing
    /// each prefix length in use once, longest first.
    pub fn lookup(&self, ip: IpAddr, mut keep: impl FnMut(&V) -> bool) -> Lookup<'_, V> {
        let mut probes = 0;
        if self.len == 0 {
            return Lookup {
                found: None,
                probes,
            };
        }
        let found = match canonical(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let mut lens = self.v4_lens;
                let mut found = None;
                while lens != 0 {
                    let l = 63 - lens.leading_zeros() as usize;
                    lens &= !(1 << l);
                    probes += 1;
                    let key = if l == 0 {
                        0
                    } else {
                        a & (u32::MAX << (32 - l))
                    };
                    if let Some(v) = self.v4[l].get(&key).filter(|v| keep(v)) {
                        found = Some((Cidr::new(IpAddr::from(key.to_be_bytes()), l as u8), v));
                        break;
                    }
                }
                found
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let mut found = None;
                'words: for w in (0..3).rev() {
                    let mut lens = self.v6_lens[w];
                    while lens != 0 {
                        let bit = 63 - lens.leading_zeros() as usize;
                        lens &= !(1 << bit);
                        let l = w * 64 + bit;
                        probes += 1;
                        let key = if l == 0 {
                            0
                        } else {
                            a & (u128::MAX << (128 - l))
                        };
                        if let Some(v) = self.v6[l].get(&key).filter(|v| keep(v)) {
                            found = Some((Cidr::new(IpAddr::from(key.to_be_bytes()), l as u8), v));
                            break 'words;
                        }
                    }
                }
                found
            }
        };
        Lookup { found, probes }
    }

    /// Every block and its value (no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (Cidr, &V)> + '_ {
        let v4 = self.v4.iter().enumerate().flat_map(|(l, m)| {
            m.iter()
                .map(move |(a, v)| (Cidr::new(IpAddr::from(a.to_be_bytes()), l as u8), v))
        });
        let v6 = self.v6.iter().enumerate().flat_map(|(l, m)| {
            m.iter()
                .map(move |(a, v)| (Cidr::new(IpAddr::from(a.to_be_bytes()), l as u8), v))
        });
        v4.chain(v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_block_wins_and_lookups_probe_only_lengths_in_use() {
        let mut m = CidrMap::new();
        assert_eq!(m.lookup(ip("10.0.0.1"), |_| true).probes, 0);
        m.insert(c("10.0.0.0/8"), 8);
        m.insert(c("10.1.0.0/16"), 16);
        m.insert(c("10.1.2.3/32"), 32);
        m.insert(c("0.0.0.0/0"), 0);
        m.insert(c("2001:db8::/32"), 132);
        m.insert(c("2001:db8:1:2::/64"), 164);
        m.insert(c("::/0"), 100);
        m.insert(c("2001:db8:1:2::9/128"), 228);
        assert_eq!(m.len(), 8);
        assert_eq!(m.lengths_in_use(false), 4);
        assert_eq!(m.lengths_in_use(true), 4);
        let got = |a: &str| {
            m.lookup(ip(a), |_| true)
                .found
                .map(|(c, v)| (c.to_string(), *v))
        };
        assert_eq!(got("10.1.2.3"), Some(("10.1.2.3/32".into(), 32)));
        assert_eq!(got("10.1.2.4"), Some(("10.1.0.0/16".into(), 16)));
        assert_eq!(got("::ffff:10.9.0.1"), Some(("10.0.0.0/8".into(), 8)));
        assert_eq!(got("192.0.2.1"), Some(("0.0.0.0/0".into(), 0)));
        assert_eq!(
            got("2001:db8:1:2::9"),
            Some(("2001:db8:1:2::9/128".into(), 228))
        );
        assert_eq!(
            got("2001:db8:1:2:ffff::1"),
            Some(("2001:db8:1:2::/64".into(), 164))
        );
        assert_eq!(got("2001:db8:7::1"), Some(("2001:db8::/32".into(), 132)));
        assert_eq!(got("2a00::1"), Some(("::/0".into(), 100)));
        // A filter skips to the next shorter block.
        let l = m.lookup(ip("10.1.2.3"), |v| *v != 32 && *v != 16);
        assert_eq!(l.found.map(|(_, v)| *v), Some(8));
        assert_eq!(l.probes, 3);
        // Removing the last block of a length stops probing it.
        assert_eq!(m.remove(&c("0.0.0.0/0")), Some(0));
        assert_eq!(m.remove(&c("0.0.0.0/0")), None);
        assert_eq!(m.lengths_in_use(false), 3);
        let l = m.lookup(ip("192.0.2.1"), |_| true);
        assert_eq!((l.found, l.probes), (None, 3));
        assert_eq!(m.iter().count(), 7);
        assert_eq!(m.insert(c("10.1.0.0/16"), 17), Some(16));
        assert_eq!(m.len(), 7);
    }
}
