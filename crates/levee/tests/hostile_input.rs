//! Hostile input at the real binary: while a real ffmpeg source publishes and a WebSocket and a
//! progressive-Ogg listener listen, about 9 s of seeded, mutated input (Ogg/Opus sources,
//! WebSocket handshakes and frames for listeners and hosts, HTTP request heads) is thrown at the
//! same node from hundreds of connections. Every attacker connection is answered or closed
//! within a bound, the listeners lose nothing, the node stays healthy, the refusals are counted
//! and its memory stays bounded.
//!
//! The inputs are mutations of the real captures in `fuzz/corpus/` (see `fuzz/README.md`) made
//! by a seeded PRNG written here, so every run throws the same bytes in the same order.

mod common;
use bytes::BytesMut;
use common::*;
use futures_util::StreamExt;
use levee_core::wire::{self, WireMessage};
use levee_core::wsframe::{self, FrameDecoder, Message as Frame};
use levee_media::{ogg, opus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The PRNG's seed: change it to throw other bytes (the assertions hold for any seed).
const SEED: u64 = 0x1e7e_e5ee_d000_0001;
/// Attacks thrown, one every `BARRAGE / ATTACKS`, each on its own connection.
const ATTACKS: usize = 480;
const BARRAGE: Duration = Duration::from_secs(9);
/// Every attacker connection must be over (answered and closed by the server) within this.
const ATTACK_BOUND: Duration = Duration::from_secs(5);
/// An attacker that is neither answered nor closed after this closes its sending side (as a
/// client that gave up would): a server may legitimately keep streaming to a valid listener or
/// wait for the rest of a partial frame.
const PATIENCE: Duration = Duration::from_millis(1500);
/// The server's request-head timeout in this test (the default is 5 s): a truncated head that
/// is never finished must be answered `408` within [`ATTACK_BOUND`].
const HEADER_TIMEOUT: &str = "2s";
/// Growth of the server's RSS allowed from before the barrage to its peak during it.
///
/// Measured (debug build, 2-core machine): about 16 MiB before the barrage, a peak 1.0–1.1 MiB
/// above it. Legitimately the node holds, per open attacker connection, at most one request
/// head (8 KiB), one 16 KiB source read buffer or one frame decoder (a 1 KiB or 8 KiB message),
/// and some 30–40 attackers are open at once: about 1 MiB, plus allocator slack. 16 MiB is
/// fifteen times what was measured, so scheduling and allocator noise never trip it, while a
/// leak of per-connection state over 480 attacks (a buffer or a listener slot kept per attack)
/// or one attack that makes the node buffer what the attacker declares (a 2^62-byte frame, a
/// 65 KiB lacing run, a 12 KiB head) does.
const RSS_GROWTH_KIB: u64 = 16 * 1024;
/// Longest silence a well-behaved listener may see during the barrage (measured: about 35 ms;
/// packets are 20 ms). A node that stalls its fan-out while it parses hostile input fails it.
const MAX_INTERARRIVAL: Duration = Duration::from_secs(1);

/// The fuzz corpus seeds (two control bytes first, see `fuzz/README.md`).
macro_rules! corpus {
    ($($path:literal),* $(,)?) => {
        vec![$(&include_bytes!(concat!("../../../fuzz/corpus/", $path))[2..]),*]
    };
}

fn ogg_seeds() -> Vec<&'static [u8]> {
    corpus![
        "ogg_ingest/ffmpeg-icecast-put-body.whole",
        "ogg_ingest/ffmpeg-mono-20ms-pages.whole",
        "ogg_ingest/ffmpeg-stereo-default-pages.whole",
        "ogg_ingest/ffmpeg-mono-60ms-frames-44k.whole",
        "ogg_ingest/ffmpeg-chained-two-streams.whole",
        "ogg_ingest/ffmpeg-mono-silence-whole-with-eos.whole",
        "ogg_ingest/demo-opus-first-pages.whole",
        "ogg_ingest/levee-live-demo-ogg-first-pages.whole",
    ]
}

/// Frames clients really sent: a browser host's hello and audio, storm's host, listeners'
/// control frames.
fn client_frame_seeds() -> Vec<&'static [u8]> {
    corpus![
        "ws_server_frames/browser-host-hello-and-audio.cut64",
        "ws_server_frames/browser-host-audio-and-close.whole",
        "ws_server_frames/storm-host-audio-and-close.cut64",
        "ws_server_frames/listener-ping-pong-close.whole",
        "ws_server_frames/listener-text-binary.whole",
        "ws_server_frames/listener-close-1001.whole",
    ]
}

/// AUDIO messages hosts really sent (message bodies, no control bytes).
fn host_audio_seeds() -> Vec<&'static [u8]> {
    vec![
        include_bytes!("../../../fuzz/corpus/wire/browser-host-audio"),
        include_bytes!("../../../fuzz/corpus/wire/browser-host-audio-2"),
        include_bytes!("../../../fuzz/corpus/wire/storm-host-audio"),
    ]
}

/// Request heads real clients sent (ffmpeg, curl, Chromium, storm).
fn http_seeds() -> Vec<&'static [u8]> {
    corpus![
        "http_head/chromium-get-host-page",
        "http_head/chromium-websocket-upgrade-publish",
        "http_head/curl-get-live-ogg",
        "http_head/curl-post-join-queue-token",
        "http_head/ffmpeg-get-live-ogg",
        "http_head/ffmpeg-icecast-put-expect-100",
        "http_head/storm-delete-space",
        "http_head/storm-post-spaces",
        "http_head/storm-websocket-upgrade-listen",
    ]
}

/// SplitMix64: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_be_bytes()
    }
    /// Flips `n` random bits of `b`.
    fn flip_bits(&mut self, b: &mut [u8], n: usize) {
        for _ in 0..n {
            if b.is_empty() {
                return;
            }
            let i = self.below(b.len());
            b[i] ^= 1 << self.below(8);
        }
    }
}

/// What an attack must get, when its bytes decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Whatever the server decides, as long as it ends the connection in time.
    Any,
    /// This HTTP status (the final one, after any `100 Continue`), or this close code.
    Exactly(u16),
    /// One of these.
    OneOf(&'static [u16]),
}

/// One attacker connection.
struct Attack {
    class: &'static str,
    bytes: Vec<u8>,
    /// Close the sending side right after the bytes (a source's body ends so; a request is
    /// complete). Otherwise wait [`PATIENCE`] for the server first.
    half_close: bool,
    /// How long to wait for the server before closing the sending side, if not at once.
    patience: Duration,
    expect: Expect,
    /// Counted by the server as `bad_key`.
    wrong_key: bool,
}

/// What an attacker saw.
#[derive(Debug)]
struct Outcome {
    class: &'static str,
    expect: Expect,
    wrong_key: bool,
    took: Duration,
    /// The server ended the connection (EOF or reset) within [`ATTACK_BOUND`].
    ended: bool,
    /// Final HTTP status, if any.
    status: Option<u16>,
    /// Close code of the server's close frame after a `101`, if any.
    close: Option<u16>,
    /// The first bytes of the response body (or close reason).
    body: String,
    /// A frame from the server the client-side decoder refused.
    bad_server_frame: Option<String>,
}

impl Outcome {
    /// One line: class, expectation, answer, time.
    fn line(&self) -> String {
        format!(
            "{}: expected {:?}, got status {:?} close {:?} {:?} after {:?}{}",
            self.class,
            self.expect,
            self.status,
            self.close,
            self.body.chars().take(80).collect::<String>(),
            self.took,
            if self.ended { "" } else { " (not ended)" }
        )
    }

    /// The answer the expectation is about.
    fn answer(&self) -> Option<u16> {
        match self.status {
            Some(101) => self.close,
            s => s,
        }
    }
    fn met(&self) -> bool {
        match self.expect {
            Expect::Any => true,
            Expect::Exactly(c) => self.answer() == Some(c),
            Expect::OneOf(cs) => self.answer().is_some_and(|a| cs.contains(&a)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ogg/Opus sources

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("source:{key}"))
    )
}

/// A source's request head, and whether it is the legacy `SOURCE` (answered `200` at once,
/// with no final status: a refusal of its body is not seen by the client, only counted).
fn source_head(rng: &mut Rng, addr: SocketAddr, id: &str, key: &str) -> (Vec<u8>, bool) {
    // ffmpeg's PUT with Expect: 100-continue, or the legacy SOURCE that gets 200 at once.
    let legacy = rng.below(4) == 0;
    let head = if legacy {
        format!(
            "SOURCE /live/{id}.ogg HTTP/1.0\r\nAuthorization: {}\r\nContent-Type: application/ogg\r\nIce-Name: x\r\n\r\n",
            basic(key)
        )
        .into_bytes()
    } else {
        format!(
            "PUT /live/{id}.ogg HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\nExpect: 100-continue\r\nConnection: close\r\nHost: {addr}\r\nContent-Type: audio/mpeg\r\nIce-Public: 0\r\nAuthorization: {}\r\n\r\n",
            basic(key)
        )
        .into_bytes()
    };
    (head, legacy)
}

/// Splits an Ogg stream into its whole pages.
fn pages(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + ogg::HEADER_FIXED <= stream.len() && &stream[at..at + 4] == ogg::CAPTURE {
        let nseg = stream[at + 26] as usize;
        let lacing = &stream[at + 27..(at + 27 + nseg).min(stream.len())];
        let end = at + 27 + nseg + lacing.iter().map(|&b| b as usize).sum::<usize>();
        if lacing.len() < nseg || end > stream.len() {
            break;
        }
        out.push(stream[at..end].to_vec());
        at = end;
    }
    out
}

fn fix_crc(page: &mut [u8]) {
    page[22..26].fill(0);
    let crc = ogg::crc32(page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
}

/// A page of `lacing` segments over a body of random bytes, with a right CRC.
fn page_with(rng: &mut Rng, serial: u32, seq: u32, lacing: &[u8]) -> Vec<u8> {
    let mut p = b"OggS\0\0".to_vec();
    p.extend_from_slice(&rng.next().to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    let body: usize = lacing.iter().map(|&b| b as usize).sum();
    // Opus-looking TOC bytes (CELT 20 ms) so that the packets get as far as the TOC check.
    p.extend((0..body).map(|i| if i % 7 == 0 { 0xf8 } else { rng.next() as u8 }));
    fix_crc(&mut p);
    p
}

/// A mutated Ogg/Opus stream from a real capture, and what it must get (`Any` where the
/// mutation may leave the stream valid, or a truncation leaves it merely short).
fn mutated_ogg(rng: &mut Rng) -> (&'static str, Vec<u8>, Expect) {
    const REFUSED: &[u16] = &[400, 413, 415];
    let seeds = ogg_seeds();
    let seed = seeds[rng.below(seeds.len())];
    let mut pg = pages(seed);
    assert!(pg.len() >= 3, "seed with headers and audio");
    let audio = 2..pg.len();
    let cat = |pg: &[Vec<u8>]| pg.concat();
    match rng.below(10) {
        0 => ("ogg: as captured", seed.to_vec(), Expect::Any),
        1 => {
            // Bit flips in the first page, CRC left as it was: the capture pattern, the version
            // or the CRC catches every one. (Not in the segment count or the lacing value: a
            // page that claims more bytes than the stream has is merely short at its end.)
            let mut b = cat(&pg);
            for _ in 0..rng.range(1, 8) {
                let at = loop {
                    let at = rng.below(pg[0].len());
                    if at != 26 && at != 27 {
                        break at;
                    }
                };
                b[at] ^= 1 << rng.below(8);
            }
            (
                "ogg: bit flips in the first page",
                b,
                Expect::OneOf(REFUSED),
            )
        }
        2 => {
            let mut b = seed.to_vec();
            let n = rng.range(1, 16);
            rng.flip_bits(&mut b, n);
            ("ogg: bit flips", b, Expect::Any)
        }
        3 => {
            let mut b = seed.to_vec();
            b.truncate(rng.range(1, seed.len() - 1));
            ("ogg: truncated", b, Expect::Any)
        }
        4 => {
            // Audio pages duplicated and reordered (CRCs still right: whole pages moved).
            for _ in 0..rng.range(1, 3) {
                let i = rng.range(audio.start, audio.end - 1);
                let at = rng.range(2, pg.len());
                let copy = pg[i].clone();
                pg.insert(at, copy);
            }
            let (i, j) = (rng.range(2, pg.len() - 1), rng.range(2, pg.len() - 1));
            pg.swap(i, j);
            ("ogg: duplicated and reordered pages", cat(&pg), Expect::Any)
        }
        5 => {
            // Header pages swapped or repeated.
            if rng.below(2) == 0 {
                pg.swap(0, 1);
            } else {
                let h = pg[0].clone();
                pg.insert(2, h);
            }
            ("ogg: headers reordered", cat(&pg), Expect::Any)
        }
        6 => {
            // Huge lacing values: a packet over the bound after valid headers.
            let serial = u32::from_le_bytes(pg[1][14..18].try_into().unwrap());
            let seq = u32::from_le_bytes(pg[1][18..22].try_into().unwrap()) + 1;
            let page = if rng.below(2) == 0 {
                // 255 segments of 255: a 65 KiB packet that never ends on the page.
                page_with(rng, serial, seq, &[255; 255])
            } else {
                // 40 segments of 255 then an end: one 10 KiB packet (over 8,000 B).
                let mut lacing = vec![255; 40];
                lacing.push(17);
                page_with(rng, serial, seq, &lacing)
            };
            let mut b = cat(&pg[..2]);
            b.extend(page);
            b.extend(cat(&pg[2..]));
            ("ogg: huge lacing values", b, Expect::Exactly(413))
        }
        7 => {
            // A wrong CRC on one page.
            let i = rng.below(pg.len());
            let crc = rng.next() as u32;
            pg[i][22..26].copy_from_slice(&crc.to_le_bytes());
            ("ogg: wrong CRC", cat(&pg), Expect::Exactly(400))
        }
        8 => {
            // Garbage after valid headers: random bytes, or a capture pattern then random.
            // (A version byte other than 0, or a first byte other than the capture's.)
            let mut b = cat(&pg[..2]);
            let n = rng.range(64, 2048);
            let mut garbage = rng.bytes(n);
            if rng.below(2) == 0 {
                garbage[..4].copy_from_slice(b"OggS");
                garbage[4] |= 1;
            } else if garbage[0] == b'O' {
                garbage[0] = b'o';
            }
            b.extend(garbage);
            ("ogg: garbage after the headers", b, Expect::OneOf(REFUSED))
        }
        _ => {
            // Bits flipped inside one page, its CRC made right again: past the CRC into the
            // fields (flags, granule, serial, sequence, lacing) and the Opus headers and TOCs.
            for _ in 0..rng.range(1, 3) {
                let i = rng.below(pg.len());
                let len = pg[i].len();
                let n = rng.range(1, 4);
                for _ in 0..n {
                    // Mostly in the header and the first bytes of the body.
                    let at = if rng.below(2) == 0 {
                        rng.below(len.min(64))
                    } else {
                        rng.below(len)
                    };
                    if !(22..26).contains(&at) {
                        pg[i][at] ^= 1 << rng.below(8);
                    }
                }
                fix_crc(&mut pg[i]);
            }
            ("ogg: fields flipped, CRC fixed", cat(&pg), Expect::Any)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

fn upgrade_head(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{addr}\r\n\r\n"
    )
}

/// A frame with every field chosen: FIN, RSV bits, opcode, mask (or none) and the declared
/// length (or the payload's).
fn frame(
    fin: bool,
    rsv: u8,
    op: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
    len: Option<u64>,
) -> Vec<u8> {
    let mut out = vec![(fin as u8) << 7 | (rsv & 7) << 4 | (op & 15)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match len.unwrap_or(payload.len() as u64) {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend(n.to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend(k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i & 3]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn masked(rng: &mut Rng, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wsframe::encode_client_frame(op, payload, rng.mask(), &mut out);
    out.to_vec()
}

/// Frames that break RFC 6455 or the listener's bounds, with the close code they must get.
fn broken_frame(rng: &mut Rng) -> (&'static str, Vec<u8>, u16) {
    let m = Some(rng.mask());
    let n = rng.range(0, 40);
    let p = rng.bytes(n);
    match rng.below(10) {
        0 => {
            let rsv = rng.range(1, 7) as u8;
            (
                "ws: reserved bits",
                frame(true, rsv, wsframe::OP_BINARY, m, &p, None),
                wsframe::CLOSE_PROTOCOL,
            )
        }
        1 => (
            "ws: unmasked frame",
            frame(true, 0, wsframe::OP_TEXT, None, b"hello", None),
            wsframe::CLOSE_PROTOCOL,
        ),
        2 => {
            let op = rng.pick(&[3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf]);
            (
                "ws: undefined opcode",
                frame(true, 0, op, m, &p, None),
                wsframe::CLOSE_PROTOCOL,
            )
        }
        3 => {
            // A length near 2^63 (or just over the bound), declared, never sent.
            let len = rng.pick(&[u64::MAX >> 1, 1 << 40, 70_000, 1_025]);
            (
                "ws: oversized length",
                frame(true, 0, wsframe::OP_BINARY, m, &[], Some(len)),
                wsframe::CLOSE_TOO_BIG,
            )
        }
        4 => (
            "ws: fragmented ping",
            frame(false, 0, wsframe::OP_PING, m, b"pi", None),
            wsframe::CLOSE_PROTOCOL,
        ),
        5 => (
            "ws: 126-byte ping",
            frame(true, 0, wsframe::OP_PING, m, &[7; 126], None),
            wsframe::CLOSE_PROTOCOL,
        ),
        6 => (
            "ws: continuation without a message",
            frame(true, 0, wsframe::OP_CONTINUATION, m, &p, None),
            wsframe::CLOSE_PROTOCOL,
        ),
        7 => {
            let mut b = frame(false, 0, wsframe::OP_TEXT, m, b"part", None);
            b.extend(frame(true, 0, wsframe::OP_BINARY, m, b"new", None));
            (
                "ws: new message inside a fragmented one",
                b,
                wsframe::CLOSE_PROTOCOL,
            )
        }
        8 => (
            "ws: text that is not UTF-8",
            frame(
                true,
                0,
                wsframe::OP_TEXT,
                m,
                &[0x68, 0xc3, 0x28, 0xff],
                None,
            ),
            wsframe::CLOSE_INVALID,
        ),
        _ => {
            // A message over the listener's 1 KiB in fragments.
            let mut b = frame(false, 0, wsframe::OP_BINARY, m, &[1; 600], None);
            b.extend(frame(true, 0, wsframe::OP_CONTINUATION, m, &[2; 600], None));
            (
                "ws: 1,200-byte message in fragments",
                b,
                wsframe::CLOSE_TOO_BIG,
            )
        }
    }
}

/// An attack on a listener's WebSocket (`/live/{id}/ws`): a mutated handshake, or a valid one
/// and then broken, random or mutated real frames.
fn ws_listener_attack(rng: &mut Rng, addr: SocketAddr, path: &str) -> Attack {
    let head = upgrade_head(addr, path);
    let mut a = Attack {
        class: "",
        bytes: head.clone().into_bytes(),
        half_close: false,
        patience: PATIENCE,
        expect: Expect::Any,
        wrong_key: false,
    };
    match rng.below(6) {
        0 => {
            // The handshake itself mutated.
            let (class, bytes, expect) = match rng.below(4) {
                0 => (
                    "ws handshake: no key",
                    head.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                    Expect::Exactly(400),
                ),
                1 => (
                    "ws handshake: version 8",
                    head.replace("Version: 13", "Version: 8"),
                    Expect::Exactly(426),
                ),
                2 => (
                    "ws handshake: not an upgrade",
                    head.replace("Upgrade: websocket", "Upgrade: h2c"),
                    Expect::Exactly(404),
                ),
                _ => {
                    let mut b = head.into_bytes();
                    let n = rng.range(1, 4);
                    for _ in 0..n {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                    a.bytes = b;
                    a.class = "ws handshake: bytes flipped";
                    a.half_close = true;
                    return a;
                }
            };
            a.class = class;
            a.bytes = bytes.into_bytes();
            a.expect = expect;
            // (Sent as a browser would: the sending side stays open until the answer.)
        }
        1 | 2 => {
            let (class, frames, code) = broken_frame(rng);
            a.class = class;
            a.bytes.extend(frames);
            a.expect = Expect::Exactly(code);
        }
        3 => {
            a.class = "ws: random bytes after the upgrade";
            let n = rng.range(1, 300);
            a.bytes.extend(rng.bytes(n));
        }
        4 => {
            // Real client frames with bits flipped (masks, lengths, opcodes, payloads).
            let seeds = client_frame_seeds();
            let mut b = seeds[rng.below(seeds.len())].to_vec();
            let n = rng.range(1, 6);
            rng.flip_bits(&mut b, n);
            a.class = "ws: real frames, bits flipped";
            a.bytes.extend(b);
        }
        _ => {
            // Allowed traffic, then a close: answered with a pong and a normal close.
            a.class = "ws: ping, text, close";
            a.bytes
                .extend(masked(rng, wsframe::OP_PING, b"are you there"));
            a.bytes.extend(masked(rng, wsframe::OP_TEXT, b"ignored"));
            a.bytes
                .extend(masked(rng, wsframe::OP_CLOSE, &1000u16.to_be_bytes()));
            a.expect = Expect::Exactly(wsframe::CLOSE_NORMAL);
        }
    }
    a
}

/// An attack on a host's WebSocket (`/live/{id}/publish`): `key` is the space's host key or a
/// wrong one.
fn ws_host_attack(rng: &mut Rng, addr: SocketAddr, id: &str, key: &str, right_key: bool) -> Attack {
    let mut bytes = upgrade_head(addr, &format!("/live/{id}/publish")).into_bytes();
    let hello = format!(r#"{{"key":"{key}"}}"#);
    let audio = host_audio_seeds();
    let mut a = Attack {
        class: "",
        bytes: Vec::new(),
        half_close: false,
        patience: PATIENCE,
        expect: Expect::Any,
        wrong_key: !right_key,
    };
    if !right_key {
        // The wrong key, then audio that must never be read.
        bytes.extend(masked(rng, wsframe::OP_TEXT, hello.as_bytes()));
        let m = audio[rng.below(audio.len())];
        bytes.extend(masked(rng, wsframe::OP_BINARY, m));
        a.class = "host ws: wrong key";
        a.expect = Expect::Exactly(wsframe::CLOSE_POLICY);
        a.bytes = bytes;
        return a;
    }
    bytes.extend(masked(rng, wsframe::OP_TEXT, hello.as_bytes()));
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let (class, expect) = match rng.below(6) {
        0 => {
            // Real AUDIO messages with bits flipped (kind, sequence, time, TOC, payload).
            for _ in 0..rng.range(1, 4) {
                let mut m = audio[rng.below(audio.len())].to_vec();
                let n = rng.range(1, 4);
                rng.flip_bits(&mut m, n);
                bytes.extend(masked(rng, wsframe::OP_BINARY, &m));
            }
            ("host ws: audio, bits flipped", Expect::Any)
        }
        1 => {
            // Opus code 3 with zero frames: an invalid packet.
            let mut m = BytesMut::new();
            wire::put_audio(&mut m, 1, now_us, &[0xfb, 0x00]);
            bytes.extend(masked(rng, wsframe::OP_BINARY, &m));
            (
                "host ws: invalid Opus packet",
                Expect::Exactly(wsframe::CLOSE_INVALID),
            )
        }
        2 => {
            // A HEAD message where AUDIO belongs.
            let mut m = vec![0x01];
            m.extend(opus::OpusHead::new(1).to_bytes());
            bytes.extend(masked(rng, wsframe::OP_BINARY, &m));
            (
                "host ws: not an AUDIO message",
                Expect::Exactly(wsframe::CLOSE_UNSUPPORTED),
            )
        }
        3 => {
            // An AUDIO message shorter than its fixed fields.
            let n = rng.range(1, 16);
            let mut m = vec![0x02];
            m.extend(rng.bytes(n));
            bytes.extend(masked(rng, wsframe::OP_BINARY, &m));
            (
                "host ws: truncated AUDIO",
                Expect::Exactly(wsframe::CLOSE_INVALID),
            )
        }
        4 => {
            // Over the host's 8 KiB message bound.
            let mut m = BytesMut::new();
            wire::put_audio(&mut m, 1, now_us, &vec![0xf8; 9000]);
            bytes.extend(masked(rng, wsframe::OP_BINARY, &m));
            (
                "host ws: 9 KB message",
                Expect::Exactly(wsframe::CLOSE_TOO_BIG),
            )
        }
        _ => {
            let (_, f, code) = broken_frame(rng);
            bytes.extend(f);
            // The host's message bound is 8 KiB, not the listener's 1 KiB: what is too big
            // for a listener may be a message (or a partial one) for a host. Protocol errors
            // get the same close code on both.
            let expect = if code == wsframe::CLOSE_TOO_BIG {
                Expect::Any
            } else {
                Expect::Exactly(code)
            };
            ("host ws: broken frame", expect)
        }
    };
    a.class = class;
    a.expect = expect;
    a.bytes = bytes;
    a
}

// ---------------------------------------------------------------------------------------------
// HTTP request heads

fn http_templates(addr: SocketAddr, id: &str, other: &str) -> Vec<Vec<u8>> {
    let h = |s: String| s.into_bytes();
    let json = r#"{"title":"mutant"}"#;
    let mut t = vec![
        h(format!("GET /api/spaces HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")),
        h(format!("GET /api/spaces/{id} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")),
        h(format!("POST /api/spaces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len())),
        h(format!("POST /api/spaces/{id}/join HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")),
        h(format!("PUT /live/{other}.ogg HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nExpect: 100-continue\r\n\r\n", basic("not-the-key"))),
        h(format!("GET /live/{id}.ogg HTTP/1.1\r\nHost: {addr}\r\nIcy-MetaData: 1\r\n\r\n")),
        h(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")),
        h(format!("DELETE /api/spaces/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n")),
        h(format!("GET /api/admin/shield HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n")),
    ];
    t.extend(http_seeds().into_iter().map(<[u8]>::to_vec));
    t
}

fn head_end(b: &[u8]) -> usize {
    b.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(b.len(), |p| p + 4)
}

fn http_attack(rng: &mut Rng, templates: &[Vec<u8>]) -> Attack {
    let t = templates[rng.below(templates.len())].clone();
    let mut a = Attack {
        class: "",
        bytes: t.clone(),
        half_close: true,
        patience: PATIENCE,
        expect: Expect::Any,
        wrong_key: false,
    };
    let end = head_end(&t);
    match rng.below(10) {
        9 => {
            // Not hostile: a valid request from a client that closes its sending side once the
            // request is out (`nc -N`, some health checkers); it is owed its answer.
            a.bytes = rng
                .pick(&[
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
                    b"GET /api/spaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                ])
                .to_vec();
            a.class = "http: valid request, half-closed";
            a.expect = Expect::Exactly(200);
        }
        0 | 1 => {
            // Random bytes of the head replaced.
            let n = rng.range(1, 6);
            for _ in 0..n {
                let i = rng.below(end);
                a.bytes[i] = rng.next() as u8;
            }
            a.class = "http: bytes replaced";
        }
        2 => {
            let n = rng.range(1, 8);
            rng.flip_bits(&mut a.bytes[..end], n);
            a.class = "http: bits flipped";
        }
        3 => {
            // A head past the 8 KiB bound, never ending.
            let pad = rng.range(8_300, 12_000);
            let mut b = t[..end - 2].to_vec();
            b.extend(b"X-Pad: ");
            b.extend(std::iter::repeat_n(b'a', pad));
            a.bytes = b;
            a.class = "http: oversized head";
            a.expect = Expect::Exactly(431);
        }
        4 => {
            // A method that is not a token.
            let bad = rng.pick(&[
                b"G\0ET".as_slice(),
                b"GE(T",
                b"P\x7fUT",
                b"\xffGET",
                b"GET\"",
                b"@",
            ]);
            let sp = t.iter().position(|&c| c == b' ').unwrap_or(0);
            let mut b = bad.to_vec();
            b.extend(&t[sp..]);
            a.bytes = b;
            a.class = "http: invalid method";
            a.expect = Expect::Exactly(400);
        }
        5 => {
            // Header injection: bare CR, NUL and bare LF inside values, obsolete folding,
            // a second request smuggled in a value, conflicting lengths.
            let inj = rng.pick(&[
                b"X-A: b\rInjected: c\r\n".as_slice(),
                b"X-A: b\0c\r\n",
                b"X-A: b\nInjected: c\r\n",
                b"X-A: b\r\n folded: c\r\n",
                b"X-A: \r\n\r\nGET /api/admin/bans HTTP/1.1\r\nAuthorization: Bearer x\r\n",
                b"Content-Length: 5\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n",
                b"Transfer-Encoding: chunked\r\n",
            ]);
            let line = t.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
            let mut b = t[..line.min(end)].to_vec();
            b.extend(inj);
            b.extend(&t[line.min(end)..]);
            a.bytes = b;
            a.class = "http: header injection";
        }
        6 => {
            // More headers than the front parses.
            let mut b = t[..end - 2].to_vec();
            for i in 0..rng.range(49, 80) {
                b.extend(format!("X-H{i}: {i}\r\n").as_bytes());
            }
            b.extend(b"\r\n");
            a.bytes = b;
            a.class = "http: 49+ headers";
            a.expect = Expect::Exactly(400);
        }
        7 => {
            // A head cut short and never finished: the header timeout answers it.
            let cut = rng.range(1, end - 5);
            a.bytes.truncate(cut);
            a.half_close = false;
            a.patience = ATTACK_BOUND;
            a.class = "http: truncated head, kept open";
            // `400` when the bytes so far are already malformed.
            a.expect = Expect::OneOf(&[400, 408]);
        }
        _ => {
            // A valid head followed by garbage (a pipelined second "request", or random).
            a.bytes.truncate(end);
            let n = rng.range(1, 2000);
            a.bytes.extend(rng.bytes(n));
            a.class = "http: garbage after the head";
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Attacker connections

/// Reads an attacker's answer: HTTP heads (past `100 Continue`), then, after a `101`, the
/// server's frames up to its close.
#[derive(Default)]
struct AnswerReader {
    head: Vec<u8>,
    status: Option<u16>,
    body: Vec<u8>,
    dec: Option<FrameDecoder>,
    close: Option<u16>,
    bad_frame: Option<String>,
}

impl AnswerReader {
    fn push(&mut self, data: &[u8]) {
        if let Some(dec) = self.dec.as_mut() {
            dec.push(data);
            while self.close.is_none() && self.bad_frame.is_none() {
                match dec.next() {
                    Ok(Some(Frame::Close(code, reason))) => {
                        self.close = Some(code.unwrap_or(1005));
                        self.body = reason.into_bytes();
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => self.bad_frame = Some(e.to_string()),
                }
            }
            return;
        }
        if self.status.is_some() {
            if self.body.len() < 256 {
                self.body.extend_from_slice(&data[..data.len().min(256)]);
            }
            return;
        }
        self.head.extend_from_slice(data);
        while let Some(p) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&self.head[..p]).into_owned();
            let rest = self.head.split_off(p + 4);
            self.head.clear();
            let code: Option<u16> = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            if code == Some(100) {
                self.head = rest;
                continue;
            }
            self.status = Some(code.unwrap_or(0));
            if code == Some(101) {
                self.dec = Some(FrameDecoder::for_server_frames(1 << 20));
            }
            self.push(&rest);
            return;
        }
    }
}

async fn attack(addr: SocketAddr, a: Attack) -> Outcome {
    let start = Instant::now();
    let bound = tokio::time::Instant::now() + ATTACK_BOUND;
    let mut s = TcpStream::connect(addr).await.expect("attacker connects");
    let _ = tokio::time::timeout_at(bound, s.write_all(&a.bytes)).await;
    let mut half = a.half_close;
    if half {
        let _ = s.shutdown().await;
    }
    let patience = tokio::time::Instant::now() + a.patience;
    let mut reader = AnswerReader::default();
    let mut buf = vec![0u8; 16 * 1024];
    let ended = loop {
        let until = if half { bound } else { patience.min(bound) };
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                reader.push(&buf[..n]);
                // Answered (a final status that is not an upgrade, or a close frame): end our
                // side too, as a client would, and wait for the server to close.
                let answered = reader.close.is_some()
                    || reader.bad_frame.is_some()
                    || reader.status.is_some_and(|s| s != 101 && s != 200);
                if answered && !half {
                    let _ = s.shutdown().await;
                    half = true;
                }
            }
            Err(_) if !half => {
                let _ = s.shutdown().await;
                half = true;
            }
            Err(_) => break false,
        }
    };
    Outcome {
        class: a.class,
        expect: a.expect,
        wrong_key: a.wrong_key,
        took: start.elapsed(),
        ended,
        status: reader.status,
        close: reader.close,
        body: String::from_utf8_lossy(&reader.body).into_owned(),
        bad_server_frame: reader.bad_frame,
    }
}

// ---------------------------------------------------------------------------------------------
// The well-behaved listeners

#[derive(Debug, Default)]
struct WsHeard {
    head: bool,
    seqs: Vec<u64>,
    /// How listening ended before it was stopped, if it did.
    ended: Option<String>,
    max_interarrival: Duration,
}

async fn ws_keep_listening(
    url: String,
    heard: Arc<Mutex<WsHeard>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr: SocketAddr = url.split('/').nth(2).unwrap().parse().unwrap();
    let tcp = TcpStream::connect(addr).await.expect("listener connects");
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .expect("listener's handshake");
    let mut last: Option<Instant> = None;
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return,
            m = ws.next() => m,
        };
        let mut h = heard.lock().unwrap();
        match msg {
            None => h.ended = Some("stream ended".into()),
            Some(Err(e)) => h.ended = Some(format!("error: {e}")),
            Some(Ok(Message::Close(f))) => h.ended = Some(format!("closed: {f:?}")),
            Some(Ok(Message::Binary(b))) => {
                match wire::decode(&b).expect("the listener's messages decode") {
                    WireMessage::Head(_) => h.head = true,
                    WireMessage::Audio { seq, .. } => {
                        let now = Instant::now();
                        if let Some(prev) = last {
                            h.max_interarrival = h.max_interarrival.max(now - prev);
                        }
                        last = Some(now);
                        h.seqs.push(seq);
                    }
                    WireMessage::Stats { .. } | WireMessage::Stage { .. } => {}
                }
                continue;
            }
            Some(Ok(_)) => continue,
        }
        return;
    }
}

#[derive(Debug, Default)]
struct OggHeard {
    pages: usize,
    /// Live pages whose sequence number does not follow the previous page's.
    seq_breaks: usize,
    /// Live pages whose granule position is not the previous one plus their packets' samples.
    granule_breaks: usize,
    packets: u64,
    ended: Option<String>,
    last_page_at: Option<Instant>,
    max_interarrival: Duration,
}

async fn ogg_keep_listening(
    addr: SocketAddr,
    path: String,
    heard: Arc<Mutex<OggHeard>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("Ogg listener connects");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut reader = ogg::PageReader::new(ogg::MAX_PAGE);
    let mut asm = ogg::PacketAssembler::new(opus::MAX_PACKET);
    let mut buf = vec![0u8; 16 * 1024];
    let mut prev: Option<(u32, u64)> = None;
    let mut packets = Vec::new();
    loop {
        let n = tokio::select! {
            _ = stop.changed() => return,
            r = s.read(&mut buf) => r,
        };
        let n = match n {
            Ok(0) => {
                heard.lock().unwrap().ended = Some("EOF".into());
                return;
            }
            Err(e) => {
                heard.lock().unwrap().ended = Some(format!("error: {e}"));
                return;
            }
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if !head.ends_with(b"\r\n\r\n") {
            let mut i = 0;
            while i < data.len() && !head.ends_with(b"\r\n\r\n") {
                head.push(data[i]);
                i += 1;
            }
            assert!(head.starts_with(b"HTTP/1.1 200"), "Ogg listener refused");
            data = &data[i..];
        }
        reader.push(data);
        let mut h = heard.lock().unwrap();
        loop {
            let page = match reader.next_page() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => panic!("the Ogg listener got a broken page: {e}"),
            };
            let now = Instant::now();
            if let Some(t) = h.last_page_at {
                h.max_interarrival = h.max_interarrival.max(now - t);
            }
            h.last_page_at = Some(now);
            h.pages += 1;
            packets.clear();
            asm.push(&page, &mut packets)
                .expect("the Ogg listener's packets");
            if h.pages <= 2 {
                continue; // OpusHead, OpusTags
            }
            let samples: u64 = packets
                .iter()
                .map(|p| opus::packet_samples(&p.data).expect("valid Opus") as u64)
                .sum();
            h.packets += packets.len() as u64;
            if let Some((seq, granule)) = prev {
                if page.seq != seq.wrapping_add(1) {
                    h.seq_breaks += 1;
                }
                if page.granule != granule + samples {
                    h.granule_breaks += 1;
                }
            }
            prev = Some((page.seq, page.granule));
        }
    }
}

fn metric_sum(levee: &Levee, series: &[String]) -> f64 {
    series.iter().map(|s| levee.metric(s)).sum()
}

fn ingest_series(reasons: &[&str]) -> Vec<String> {
    reasons
        .iter()
        .map(|r| format!("levee_ingest_errors_total{{reason=\"{r}\"}}"))
        .collect()
}

const CONTENT_REASONS: &[&str] = &[
    "not_ogg",
    "bad_crc",
    "too_large",
    "bad_ogg",
    "wrong_codec",
    "bad_opus",
    "bad_structure",
    "bad_frame",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_ogg_websocket_and_http_input_harms_no_listener_and_costs_bounded_memory() {
    // The node logs every refused source at `warn`: hundreds of expected lines. Set
    // LEVEE_TEST_LOG=warn to see them.
    if std::env::var_os("LEVEE_TEST_LOG").is_none() {
        std::env::set_var("LEVEE_TEST_LOG", "error");
    }
    let levee = Levee::start(&["--header-timeout", HEADER_TIMEOUT]);
    let addr = levee.addr;
    let space = levee.create_space("under hostile input");
    let id = space["id"].as_str().unwrap().to_owned();
    let others: Vec<(String, String)> = (0..3)
        .map(|i| {
            let s = levee.create_space(&format!("target {i}"));
            (
                s["id"].as_str().unwrap().to_owned(),
                s["host_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    // The well-behaved source: real Opus from ffmpeg in real time, for longer than the test.
    let mut source = publish_sine(space["urls"]["source"].as_str().unwrap(), 440, "32k", 60);
    levee.wait_live(&id, Duration::from_secs(10));

    // The well-behaved listeners, one per format, reading everything until told to stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ws_heard = Arc::new(Mutex::new(WsHeard::default()));
    let ogg_heard = Arc::new(Mutex::new(OggHeard::default()));
    let ws_task = tokio::spawn(ws_keep_listening(
        space["urls"]["ws"].as_str().unwrap().to_owned(),
        ws_heard.clone(),
        stop_rx.clone(),
    ));
    let ogg_task = tokio::spawn(ogg_keep_listening(
        addr,
        format!("/live/{id}.ogg"),
        ogg_heard.clone(),
        stop_rx.clone(),
    ));
    wait_until(Duration::from_secs(10), "both listeners hear audio", || {
        !ws_heard.lock().unwrap().seqs.is_empty() && ogg_heard.lock().unwrap().packets > 0
    });

    // The attacks, all made before the first is thrown.
    let mut rng = Rng(SEED);
    let templates = http_templates(addr, &id, &others[0].0);
    let attacks: Vec<Attack> = (0..ATTACKS)
        .map(|i| match i % 8 {
            0 | 1 => {
                // (a) Mutated sources: to this space with a wrong key, to the others with theirs.
                let wrong = i % 16 == 0;
                let (sid, skey) = if wrong {
                    (id.as_str(), "0123456789abcdef0123456789abcdef")
                } else {
                    let (s, k) = &others[rng.below(others.len())];
                    (s.as_str(), k.as_str())
                };
                let (class, body, expect) = mutated_ogg(&mut rng);
                let (mut bytes, legacy) = source_head(&mut rng, addr, sid, skey);
                bytes.extend(body);
                let expect = match (wrong, legacy) {
                    (true, _) => Expect::Exactly(401),
                    (false, true) => Expect::Exactly(200),
                    (false, false) => expect,
                };
                Attack {
                    class: if wrong { "ogg: any, wrong key" } else { class },
                    bytes,
                    half_close: true,
                    patience: PATIENCE,
                    expect,
                    wrong_key: wrong,
                }
            }
            2 | 3 => {
                // (b) Listener WebSockets, of this space and of the others.
                let sid = if rng.below(2) == 0 {
                    &id
                } else {
                    &others[rng.below(3)].0
                };
                ws_listener_attack(&mut rng, addr, &format!("/live/{sid}/ws"))
            }
            4 => {
                // (b) Host WebSockets: this space with a wrong key, the others with theirs.
                if i % 16 == 4 {
                    ws_host_attack(&mut rng, addr, &id, "wrong", false)
                } else {
                    let (s, k) = others[rng.below(others.len())].clone();
                    ws_host_attack(&mut rng, addr, &s, &k, true)
                }
            }
            // (c) Request heads.
            _ => http_attack(&mut rng, &templates),
        })
        .collect();
    let wrong_keys = attacks.iter().filter(|a| a.wrong_key).count() as f64;

    let content_before = metric_sum(&levee, &ingest_series(CONTENT_REASONS));
    let bad_key_before = metric_sum(&levee, &ingest_series(&["bad_key"]));
    let bad_requests_before = levee.metric("levee_bad_requests_total");
    let rss_before = levee.rss_kib();
    let mut rss_peak = rss_before;

    // The barrage: one attack every BARRAGE / ATTACKS, each on its own connection.
    let started = tokio::time::Instant::now();
    let barrage_start = Instant::now();
    let mut running = Vec::with_capacity(ATTACKS);
    for (i, a) in attacks.into_iter().enumerate() {
        tokio::time::sleep_until(started + BARRAGE * i as u32 / ATTACKS as u32).await;
        running.push(tokio::spawn(attack(addr, a)));
        if i % 8 == 0 {
            rss_peak = rss_peak.max(levee.rss_kib());
        }
    }
    let mut outcomes = Vec::with_capacity(ATTACKS);
    for r in running {
        outcomes.push(r.await.expect("attacker task"));
        rss_peak = rss_peak.max(levee.rss_kib());
    }
    let barrage_took = barrage_start.elapsed();
    let rss_after = levee.rss_kib();

    // What the attackers saw, by class (printed for the record: `--nocapture`).
    let mut by_class: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for o in &outcomes {
        let answer = match (o.status, o.close) {
            (Some(101), Some(c)) => format!("101+close {c}"),
            (Some(101), None) => "101, no close".into(),
            (Some(s), _) => s.to_string(),
            (None, _) => "closed silently".into(),
        };
        *by_class
            .entry(o.class)
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }
    for (class, answers) in &by_class {
        eprintln!("{class:45} {answers:?}");
    }
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    eprintln!(
        "{} attacks in {barrage_took:?}, slowest connection {slowest:?}; RSS {rss_before} KiB before, {rss_peak} KiB peak, {rss_after} KiB after",
        outcomes.len()
    );

    // No attacker connection hung, and each got what its bytes call for.
    let hung: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.ended)
        .map(Outcome::line)
        .collect();
    assert!(
        hung.is_empty(),
        "attacker connections not ended within {ATTACK_BOUND:?}: {hung:#?}"
    );
    let bad_frames: Vec<_> = outcomes
        .iter()
        .filter(|o| o.bad_server_frame.is_some())
        .map(|o| format!("{} {:?}", o.line(), o.bad_server_frame))
        .collect();
    assert!(
        bad_frames.is_empty(),
        "the server sent broken frames: {bad_frames:#?}"
    );
    let unmet: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.met())
        .map(Outcome::line)
        .collect();
    assert!(
        unmet.is_empty(),
        "attacks answered otherwise than their bytes call for: {unmet:#?}"
    );

    // The node still answers, and a newcomer hears the space.
    let r = levee.http("GET", "/api/spaces", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let newcomer = ws_listen(
        space["urls"]["ws"].as_str().unwrap(),
        Duration::from_secs(5),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        newcomer.head && newcomer.seqs.len() >= 10,
        "a new listener could not join: {newcomer:?}"
    );
    assert_eq!(newcomer.gaps(), 0);

    // The cut: every packet the space took before it reaches the listener, in order.
    let ingested = levee.metric(&format!("levee_ingest_packets_total{{space=\"{id}\"}}")) as u64;
    wait_until(
        Duration::from_secs(3),
        "the listener hears every packet ingested before the cut",
        || {
            let h = ws_heard.lock().unwrap();
            h.ended.is_some() || h.seqs.last().is_some_and(|&s| s + 1 >= ingested)
        },
    );
    let ogg_last_page = ogg_heard.lock().unwrap().last_page_at;
    stop_tx.send(true).unwrap();
    ws_task.await.unwrap();
    ogg_task.await.unwrap();
    let ws = std::mem::take(&mut *ws_heard.lock().unwrap());
    let og = std::mem::take(&mut *ogg_heard.lock().unwrap());
    eprintln!(
        "ws listener: packets {}..={} ({}), max interarrival {:?}; ogg listener: {} pages, {} packets, max interarrival {:?}",
        ws.seqs[0],
        ws.seqs.last().unwrap(),
        ws.seqs.len(),
        ws.max_interarrival,
        og.pages,
        og.packets,
        og.max_interarrival
    );
    assert_eq!(ws.ended, None, "the WebSocket listener was disconnected");
    assert!(ws.head, "no HEAD message");
    let (first, last) = (ws.seqs[0], *ws.seqs.last().unwrap());
    let gaps: Vec<_> = ws.seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        gaps.is_empty(),
        "the WebSocket listener lost or repeated packets: {gaps:?}"
    );
    assert!(
        last + 1 >= ingested,
        "ingested {ingested} packets, the listener heard up to {last}"
    );
    assert_eq!(ws.seqs.len() as u64, last - first + 1);
    // 20 ms packets: the listener heard the whole barrage (9 s) and more.
    assert!(ws.seqs.len() >= 500, "only {} packets heard", ws.seqs.len());
    assert!(
        ws.max_interarrival < MAX_INTERARRIVAL && og.max_interarrival < MAX_INTERARRIVAL,
        "a listener waited {:?} (WebSocket) / {:?} (Ogg) for audio",
        ws.max_interarrival,
        og.max_interarrival
    );
    assert_eq!(og.ended, None, "the Ogg listener was disconnected");
    assert_eq!(og.seq_breaks, 0, "the Ogg listener's pages skipped");
    assert_eq!(
        og.granule_breaks, 0,
        "the Ogg listener's granules skipped (lost packets)"
    );
    assert!(
        og.packets >= 500,
        "the Ogg listener heard only {} packets",
        og.packets
    );
    assert!(
        ogg_last_page.is_some_and(|t| t > barrage_start + barrage_took),
        "the Ogg listener's stream stopped during the barrage"
    );
    assert!(source.running(), "the real source was disturbed");
    assert_eq!(
        levee.metric(&format!("levee_sources_total{{space=\"{id}\"}}")),
        1.0,
        "an attacker took the space over"
    );

    // The refusals were seen and counted.
    let bad_key = metric_sum(&levee, &ingest_series(&["bad_key"])) - bad_key_before;
    assert!(
        bad_key >= wrong_keys,
        "{bad_key} bad_key refusals counted for {wrong_keys} wrong keys"
    );
    let content_refused = outcomes
        .iter()
        .filter(|o| {
            !o.wrong_key
                && matches!(
                    o.answer(),
                    Some(400 | 413 | 415 | 1002 | 1003 | 1007 | 1009)
                )
        })
        .filter(|o| o.class.starts_with("ogg") || o.class.starts_with("host"))
        .count() as f64;
    let content = metric_sum(&levee, &ingest_series(CONTENT_REASONS)) - content_before;
    assert!(
        content >= content_refused && content_refused >= 50.0,
        "{content} ingest refusals counted, {content_refused} seen by the attackers"
    );
    let front_refused = outcomes
        .iter()
        .filter(|o| {
            matches!(o.status, Some(431 | 408))
                || (o.status == Some(400) && o.body.contains("malformed request"))
        })
        .count() as f64;
    let bad_requests = levee.metric("levee_bad_requests_total") - bad_requests_before;
    assert!(
        bad_requests >= front_refused && front_refused >= 30.0,
        "{bad_requests} bad requests counted, {front_refused} refused heads seen by the attackers"
    );

    // Memory: bounded growth over the barrage (see RSS_GROWTH_KIB).
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(
        grown < RSS_GROWTH_KIB,
        "server RSS grew by {grown} KiB during the barrage ({rss_before} → {rss_peak} KiB)"
    );
}
