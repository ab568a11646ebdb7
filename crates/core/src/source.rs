//! Who is asking: source addresses, the prefixes they are judged by, and CIDR lists.
//!
//! Contract: every limit keys a source twice, by its own address and by the network around it
//! (IPv4 /32 and /24; IPv6 /64 and /48), because an attacker rotates addresses inside the
//! networks it controls. IPv4-mapped IPv6 addresses are treated as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A source key: an address or prefix, folded to 64 bits with its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(pub u64);

/// The narrow and wide keys of an address: (/32 or /64, /24 or /48).
pub fn keys(ip: IpAddr) -> (SourceKey, SourceKey) {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let a = u32::from(v4) as u64;
            (SourceKey(1 << 60 | a), SourceKey(2 << 60 | (a >> 8)))
        }
        IpAddr::V6(v6) => {
            let a = u128::from(v6);
            let p64 = (a >> 64) as u64;
            let p48 = (a >> 80) as u64;
            // Fold the top bits so the kind tag survives.
            (SourceKey(3 << 60 ^ p64), SourceKey(4 << 60 ^ p48))
        }
    }
}

/// The address with IPv4-mapped IPv6 turned back into IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The prefix shown for `ip` in logs and the admin API: `a.b.c.0/24` or `x:x:x::/48`.
pub fn wide_prefix(ip: IpAddr) -> Cidr {
    match canonical(ip) {
        IpAddr::V4(v4) => Cidr::new(IpAddr::V4(v4), 24),
        IpAddr::V6(v6) => Cidr::new(IpAddr::V6(v6), 48),
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid address block '{}': expected e.g. 192.0.2.0/24 or 2001:db8::/48",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// The block of `len` bits around `addr` (host bits cleared).
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let addr = canonical(addr);
        match addr {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    len,
                }
            }
        }
    }

    /// Parses `addr/len`, or a bare address (a block of one).
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (a, l) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if canonical(addr).is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>().map_err(|_| err())?
        };
        if len > max {
            return Err(err());
        }
        Ok(Cidr::new(addr, len))
    }

    /// True when `ip` lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.len) == *self
    }

    /// The first address of the block.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix (every address of the family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn neighbours_share_the_wide_key_but_not_the_narrow_one() {
        let (a32, a24) = keys(ip("192.0.2.10"));
        let (b32, b24) = keys(ip("192.0.2.99"));
        let (_, c24) = keys(ip("192.0.3.10"));
        assert_ne!(a32, b32);
        assert_eq!(a24, b24);
        assert_ne!(a24, c24);
        let (x64, x48) = keys(ip("2001:db8:1:2::1"));
        let (y64, y48) = keys(ip("2001:db8:1:3::1"));
        assert_ne!(x64, y64);
        assert_eq!(x48, y48);
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        assert_eq!(keys(ip("::ffff:192.0.2.10")), keys(ip("192.0.2.10")));
        assert_eq!(
            wide_prefix(ip("::ffff:192.0.2.10")).to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn cidr_parses_and_matches() {
        let c = Cidr::parse("127.1.0.0/16").unwrap();
        assert!(c.contains(ip("127.1.200.3")));
        assert!(!c.contains(ip("127.2.0.1")));
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().len(), 32);
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:ffff::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("banana").is_err());
        assert_eq!(Cidr::parse("10.9.9.9/8").unwrap().to_string(), "10.0.0.0/8");
    }
}
