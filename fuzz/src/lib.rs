//! Helpers shared by levee's fuzz targets: cutting one input into the pushes a socket would
//! deliver, and a counting allocator to check that a parser's memory stays within its bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Cuts the fuzz input into pushes of arbitrary sizes, as reads from a socket would.
///
/// The first two bytes of the input choose the cuts; the rest is the stream. Byte 0 bounds a
/// push: 0 sends the whole stream in one push, `n` sends pushes of 0 to `n * 64` bytes (so 1
/// gives pushes of at most 64 bytes, 255 of at most 16,320). Byte 1 seeds the sizes. A seed
/// file is therefore two bytes (`\0\0`: one push) followed by a real capture.
pub struct Splitter<'a> {
    rest: &'a [u8],
    max: usize,
    state: u32,
}

impl<'a> Splitter<'a> {
    /// Reads the two control bytes; `None` when the input is shorter than that.
    pub fn new(data: &'a [u8]) -> Option<Self> {
        let (&[b0, b1], rest) = data.split_first_chunk::<2>()?;
        Some(Splitter {
            rest,
            max: b0 as usize * 64,
            state: (0x9e37_79b9 ^ (b1 as u32).wrapping_mul(0x0101_0101)) | 1,
        })
    }

    /// The whole stream (the input after the control bytes).
    pub fn stream(&self) -> &'a [u8] {
        self.rest
    }

    fn next_u32(&mut self) -> u32 {
        // xorshift32: cheap, deterministic, never zero from a non-zero state.
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        x
    }
}

impl<'a> Iterator for Splitter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = if self.max == 0 {
            self.rest.len()
        } else {
            (self.next_u32() as usize % (self.max + 1)).min(self.rest.len())
        };
        let (piece, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(piece)
    }
}

/// The bytes a split input would deliver in the given splits, for targets that want to run
/// the same stream twice (once whole, once cut).
pub fn pieces(data: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let s = Splitter::new(data)?;
    let stream = s.stream();
    Some((s.collect(), stream))
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their peak (single-threaded use: the
/// fuzz targets run one input at a time). Install it in a target with
/// `#[global_allocator] static A: levee_fuzz::Counting = levee_fuzz::Counting;`.
pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // A moving realloc holds both blocks for a moment: count the new one first.
            grow(new_size);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
}

/// Heap bytes live now (through [`Counting`]).
pub fn live_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// Starts a measurement: the peak is reset to what is live now, which is returned.
pub fn reset_peak() -> usize {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    live
}

/// The most heap bytes live at once since [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

/// The WebSocket targets' shared body (see `fuzz_targets/ws_*_frames.rs`): `server_side`
/// decodes what clients send (`FrameDecoder::new`, masked frames), otherwise what a server
/// sends (`FrameDecoder::for_server_frames`, unmasked).
pub fn ws_frames(data: &[u8], server_side: bool) {
    use bytes::{BufMut, BytesMut};
    use levee_core::wsframe::{
        encode_client_frame, encode_frame, FrameDecoder, Message, OP_BINARY, OP_CONTINUATION,
        OP_PING, OP_TEXT,
    };

    let Some(split) = Splitter::new(data) else {
        return;
    };
    // The bound: as the server's listeners (1 KiB) and hosts (8 KiB) use it, a control
    // frame's size, and storm's listeners (64 KiB).
    let max = [1024, 8192, 125, 65536][(data[1] >> 6) as usize];
    let decoder = || {
        if server_side {
            FrameDecoder::new(max)
        } else {
            FrameDecoder::for_server_frames(max)
        }
    };
    // The documented bound: a header (2 + 8 length + 4 mask) plus the largest message, and a
    // control frame's payload when one arrives inside a fragmented message.
    let held_bound = FrameDecoder::MAX_HELD_OVER + max;

    let check = |m: &Message| match m {
        Message::Binary(b) => assert!(b.len() <= max),
        Message::Text(t) => assert!(t.len() <= max),
        Message::Ping(p) => assert!(p.len() <= 125),
        Message::Pong => {}
        Message::Close(code, reason) => {
            assert!(reason.len() <= 123);
            assert!(code.is_some() || reason.is_empty());
        }
    };

    // 1. Whatever arrives, in arbitrary splits.
    let stream = split.stream();
    let base = live_bytes();
    let mut dec = decoder();
    let mut largest_push = 0;
    'pushes: for piece in split {
        largest_push = largest_push.max(piece.len());
        let bound = held_bound + piece.len();
        let heap_bound = 4 * (held_bound + largest_push) + 4096;
        reset_peak();
        dec.push(piece);
        assert!(
            dec.buffered() <= bound,
            "{} bytes held, bound {bound}",
            dec.buffered()
        );
        loop {
            let next = dec.next();
            assert!(
                dec.buffered() <= bound,
                "{} bytes held, bound {bound}",
                dec.buffered()
            );
            let used = peak_bytes() - base;
            assert!(used <= heap_bound, "{used} heap bytes, bound {heap_bound}");
            match next {
                Ok(Some(m)) => check(&m),
                Ok(None) => break,
                Err(_) => break 'pushes,
            }
            reset_peak();
        }
    }

    // 2. A message made from the input, whole and fragmented around a ping, decodes back in
    //    the same splits.
    let payload = &stream[..stream.len().min(max)];
    let mask = [data[0], data[1], 0x5a, 0xa5];
    let frame = |op: u8, fin: bool, p: &[u8], out: &mut BytesMut| {
        let start = out.len();
        if server_side {
            encode_client_frame(op, p, mask, out);
        } else {
            encode_frame(op, p, out);
        }
        if !fin {
            out[start] &= 0x7f;
        }
    };
    let mut wire = BytesMut::new();
    frame(OP_BINARY, true, payload, &mut wire);
    let cut = payload.len() / 2;
    frame(OP_BINARY, false, &payload[..cut], &mut wire);
    frame(OP_PING, true, &payload[..payload.len().min(125)], &mut wire);
    frame(OP_CONTINUATION, true, &payload[cut..], &mut wire);
    let text = std::str::from_utf8(payload).ok();
    if let Some(t) = text {
        frame(OP_TEXT, true, t.as_bytes(), &mut wire);
    }
    let mut want = vec![
        Message::Binary(bytes::Bytes::copy_from_slice(payload)),
        Message::Ping(bytes::Bytes::copy_from_slice(
            &payload[..payload.len().min(125)],
        )),
        Message::Binary(bytes::Bytes::copy_from_slice(payload)),
    ];
    if let Some(t) = text {
        want.push(Message::Text(t.to_owned()));
    }
    let mut input = Vec::with_capacity(2 + wire.len());
    input.put_slice(&data[..2]);
    input.put_slice(&wire);
    let mut dec = decoder();
    let mut got = Vec::new();
    for piece in Splitter::new(&input).expect("two control bytes") {
        dec.push(piece);
        while let Some(m) = dec.next().expect("a valid message") {
            got.push(m);
        }
    }
    assert_eq!(got, want);
    assert_eq!(dec.buffered(), 0);
}
