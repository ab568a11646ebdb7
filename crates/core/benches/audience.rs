//! The audience sketch beside the exact count it replaces: time per identity counted and
//! memory held, at 10^3 to 10^6 identities, then the error of the estimate, the cost of a
//! count, a merge and the wire form. One run, side by side:
//!
//!   cargo bench -p levee-core --bench audience
//!
//! The exact peer is a `HashSet<u64>` of the identities' hashes (what counting distinct
//! listeners exactly costs: 16+ bytes an identity, growing with the audience).

use levee_core::audience::{Audience, Distinct};
use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

fn hashes(seed: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| {
            let mut x = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>9} | {:>12} {:>12} | {:>12} {:>12} | {:>9}",
        "ids", "sketch ns/id", "exact ns/id", "sketch KiB", "exact KiB", "error %"
    );
    for n in [1_000usize, 10_000, 100_000, 1_000_000] {
        let h = hashes(7, n);
        let mut sketch_ns = Vec::new();
        let mut exact_ns = Vec::new();
        let (mut est, mut sketch_bytes, mut exact_bytes) = (0, 0, 0);
        for _ in 0..5 {
            let t = Instant::now();
            let mut d = Distinct::new();
            for &x in &h {
                d.insert(x);
            }
            sketch_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
            est = black_box(&d).count();
            let mut a = Audience::new(10_000_000);
            a.uniques = d;
            // The encoded form is what the sketch holds (registers or sorted hashes).
            sketch_bytes = a.encode().len();
            let t = Instant::now();
            let mut s: HashSet<u64> = HashSet::new();
            for &x in &h {
                s.insert(x);
            }
            exact_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
            // hashbrown: 8 bytes a slot plus a control byte, at most 7/8 full.
            exact_bytes = black_box(&s).capacity() * 9;
        }
        println!(
            "{n:>9} | {:>12.1} {:>12.1} | {:>12.1} {:>12.1} | {:>9.3}",
            median(sketch_ns),
            median(exact_ns),
            sketch_bytes as f64 / 1024.0,
            exact_bytes as f64 / 1024.0,
            (est as f64 / n as f64 - 1.0) * 100.0
        );
    }
    // What a node pays per answer and per report.
    let mut a = Audience::new(10_000_000);
    for &x in &hashes(1, 200_000) {
        a.uniques.insert(x);
        a.viewers.insert(x);
    }
    let b = a.clone();
    let mut count_us = Vec::new();
    let mut merge_us = Vec::new();
    let mut encode_us = Vec::new();
    let mut decode_us = Vec::new();
    for _ in 0..51 {
        let t = Instant::now();
        black_box(a.figures(1));
        count_us.push(t.elapsed().as_secs_f64() * 1e6);
        let mut m = a.clone();
        let t = Instant::now();
        m.merge(&b);
        merge_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let e = a.encode();
        encode_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        black_box(Audience::decode(&e).unwrap());
        decode_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "dense space (two sketches of 200,000): figures {:.1} µs, merge {:.1} µs, encode {:.1} µs ({} bytes), decode {:.1} µs (medians of 51)",
        median(count_us),
        median(merge_us),
        median(encode_us),
        a.encode().len(),
        median(decode_us)
    );
}
