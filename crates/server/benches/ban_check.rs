//! What a ban check of a source that is not banned costs, with 0 and with 65,536 bans (half
//! IPv4 /32s, half IPv6 /64s, as `bench/refusal-cost.py --bans` installs), beside each other in
//! one run:
//!
//!     cargo bench -p levee-server --bench ban_check
//!
//! Prints ns per check for an IPv4 and an IPv6 source (docs/benchmarks.md §4a).

use levee_core::source::Cidr;
use levee_server::shield::{Shield, ShieldConfig};
use std::net::IpAddr;

fn main() {
    for bans in [0u32, 65_536] {
        let s = Shield::new(ShieldConfig {
            sketch_width: 1024,
            ..Default::default()
        });
        for i in 0..bans {
            let k = i / 2;
            let cidr = if i % 2 == 0 {
                Cidr::new(
                    IpAddr::from([100, 64 + (k >> 16) as u8, (k >> 8) as u8, k as u8]),
                    32,
                )
            } else {
                let a = 0x2001_0db8_u128 << 96 | (k as u128) << 64;
                Cidr::new(IpAddr::from(a.to_be_bytes()), 64)
            };
            s.ban(cidr, 3_600, 0);
        }
        assert_eq!(s.bans(0).len(), bans as usize);
        for a in ["127.9.0.1", "2001:db8:ffff:1::1"] {
            let a: IpAddr = a.parse().expect("address");
            let n = 2_000_000u64;
            let t = std::time::Instant::now();
            let found = (0..n)
                .filter(|&i| s.banned(std::hint::black_box(a), i).is_some())
                .count();
            assert_eq!(found, 0);
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            println!("{bans:>6} bans, {a}: {ns:.1} ns per check");
        }
    }
}
