//! What a stage costs per space: decoding every speaker, mixing, encoding the programme once,
//! and the mix-minus encodes of those who speak, for 2 and 13 speakers, beside the reference
//! of one bare transcode (decode one stream, encode it again), in one run:
//!
//!     cargo bench -p levee-server --bench stage_mixer
//!
//! Each speaker's audio is a tone Opus-encoded beforehand (so encoding the inputs is not
//! counted); "talking" speakers carry it throughout, silent ones send near-silence. Every
//! speaker takes a return (the browser case: the most work). Prints the share of one core
//! per space (CPU time over audio time) and µs per 20-ms frame (docs/benchmarks.md §9).

use levee_core::stage::{Frame, Mixer, FRAME, SLOTS};
use levee_server::stage::codec::{Decoder, Encoder};
use std::time::Instant;

/// Seconds of audio each case runs.
const SECONDS: usize = 20;
const FRAMES: usize = SECONDS * 50;

fn cpu_s() -> f64 {
    levee_server::clock::process_cpu_s()
}

/// Pre-encoded 20-ms packets of a tone at `freq` and `amp`.
fn stream(freq: f32, amp: f32) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(32_000, 5).unwrap();
    (0..FRAMES)
        .map(|f| {
            let pcm: Vec<f32> = (0..FRAME)
                .map(|k| {
                    let t = (f * FRAME + k) as f32 / 48_000.0;
                    amp * (2.0 * std::f32::consts::PI * freq * t).sin()
                })
                .collect();
            enc.encode(&pcm).unwrap().to_vec()
        })
        .collect()
}

/// Runs a stage of `speakers` (slots 1..) of whom `talking` talk; returns (CPU s, wall s,
/// mix-minus encodes).
// Frame `f` of every input is read in turn: indexing by frame is the plain way.
#[allow(clippy::needless_range_loop)]
fn stage(speakers: usize, talking: usize) -> (f64, f64, u64) {
    assert!(speakers < SLOTS);
    let inputs: Vec<Vec<Vec<u8>>> = (0..speakers)
        .map(|i| {
            if i < talking {
                stream(300.0 + 110.0 * i as f32, 0.2)
            } else {
                stream(200.0, 0.0005)
            }
        })
        .collect();
    let mut decoders: Vec<Decoder> = (0..speakers).map(|_| Decoder::new().unwrap()).collect();
    let mut programme = Encoder::programme().unwrap();
    let mut minus: Vec<Encoder> = (0..SLOTS).map(|_| Encoder::mix_minus().unwrap()).collect();
    let mut mixer = Mixer::new();
    for s in 1..=speakers {
        mixer.open(s, false, true);
    }
    let mut frame = Frame::default();
    let mut bytes = 0usize;
    let mut encodes = 0u64;
    let (c0, w0) = (cpu_s(), Instant::now());
    for f in 0..FRAMES {
        for (i, d) in decoders.iter_mut().enumerate() {
            let pcm = d.decode(&inputs[i][f]).unwrap();
            mixer.push(i + 1, pcm, f as u64 * 20_000);
        }
        mixer.mix(&mut frame);
        bytes += programme.encode(&frame.programme).unwrap().len();
        for (s, enc) in minus.iter_mut().enumerate() {
            if frame.minus_of & (1 << s) != 0 {
                bytes += enc.encode(&frame.minus[s]).unwrap().len();
                encodes += 1;
            }
        }
    }
    let out = (cpu_s() - c0, w0.elapsed().as_secs_f64(), encodes);
    assert!(bytes > 0);
    out
}

/// One stream decoded and encoded again (the least a mixing server does per space).
fn transcode() -> (f64, f64) {
    let input = stream(440.0, 0.2);
    let mut d = Decoder::new().unwrap();
    let mut e = Encoder::programme().unwrap();
    let mut pcm = vec![0f32; FRAME];
    let (c0, w0) = (cpu_s(), Instant::now());
    for p in &input {
        pcm.copy_from_slice(d.decode(p).unwrap());
        let _ = e.encode(&pcm).unwrap();
    }
    (cpu_s() - c0, w0.elapsed().as_secs_f64())
}

fn main() {
    println!(
        "stage cost per space ({SECONDS} s of audio per case, every speaker takes a return; {})",
        opus_version()
    );
    println!(
        "{:<34} {:>10} {:>13} {:>10} {:>12}",
        "case", "cpu_s", "share_of_core", "us/frame", "minus_enc"
    );
    let row = |name: &str, cpu: f64, wall: f64, enc: u64| {
        println!(
            "{:<34} {:>10.3} {:>12.2}% {:>10.1} {:>12}",
            name,
            cpu,
            100.0 * cpu / SECONDS as f64,
            wall * 1e6 / FRAMES as f64,
            enc
        );
    };
    let (c, w) = transcode();
    row("reference: 1 transcode", c, w, 0);
    for (n, t) in [(2, 2), (13, 2), (13, 13)] {
        let (c, w, e) = stage(n, t);
        row(&format!("{n} speakers, {t} talking"), c, w, e);
    }
}

fn opus_version() -> String {
    // The codec module links libopus; its version string is what Debian ships.
    levee_server::stage::codec::libopus_version().to_owned()
}
