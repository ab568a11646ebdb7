//! `levee_core::ingest::OggIngest` over whole Ogg/Opus streams in arbitrary splits, as an
//! Icecast source (ffmpeg, butt, Liquidsoap) delivers them.
//!
//! Input: two split bytes (see `levee_fuzz::Splitter`), then the stream.
//!
//! Properties:
//! - no panic, and the outcome does not depend on how the stream was cut: the packets and the
//!   first error (if any) are those of the same stream pushed at once. The contract makes the
//!   first error final: the caller refuses the source (endpoints/ingest.rs publishes what
//!   came before it and breaks), so this target stops there too;
//! - every packet returned is valid Opus audio per `levee_media::opus`: its duration is
//!   `packet_samples` of its bytes, 2.5 to 120 ms, and it is 1 to `MAX_PACKET` bytes; capture
//!   times never lie in the future of the push that returned them;
//! - between pushes `buffered()` stays below one page (`MAX_PAGE`), and the heap the ingest
//!   uses during a push stays within a small multiple of one page, one packet and the push
//!   (plus the caller's output vector);
//! - a valid stream round-trips through levee's own data path: the packets, numbered by a
//!   `PacketStream` and packaged by `OggMux` (at a cadence the input picks), come out of a
//!   fresh `OggIngest` unchanged, and packaged by `WsMux` come out of the listener-side
//!   WebSocket decoder and `wire::decode` unchanged, with consecutive sequence numbers.
#![no_main]

use bytes::Bytes;
use levee_core::ingest::OggIngest;
use levee_core::mux::{Muxer, OggMux, WsMux};
use levee_core::packet::{AudioPacket, PacketStream};
use levee_core::wire::{self, WireMessage};
use levee_core::wsframe::{FrameDecoder, Message};
use levee_fuzz::{peak_bytes, pieces, reset_peak, Counting};
use levee_media::ogg::{self, MAX_PAGE};
use levee_media::opus::{self, MAX_PACKET, MAX_PACKET_SAMPLES};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static A: Counting = Counting;

const START_US: u64 = 1_700_000_000_000_000;

fn essence(p: &[AudioPacket]) -> Vec<(Bytes, u32)> {
    p.iter().map(|p| (p.data.clone(), p.samples)).collect()
}

fn round_trip(head: &opus::OpusHead, packets: &[AudioPacket], cadence: u8) {
    let target = 120 * (1 + cadence as u32 % 200); // 2.5 ms to 500 ms
    let mut numbered = PacketStream::starting_at(1_000, 48_000);
    let mut ogg_mux = OggMux::new(head, 0x5eed, &["TITLE=fuzz".into()]);
    let mut ws_mux = WsMux::new(head);
    ws_mux.set_stats(START_US, 3);
    let mut ogg_chunks = Vec::new();
    let mut ws_chunks = Vec::new();
    for p in packets {
        let p = numbered.push(p.clone());
        ogg_mux.push(&p, target, &mut ogg_chunks);
        ws_mux.push(&p, target, &mut ws_chunks);
    }
    ogg_mux.flush(&mut ogg_chunks);
    ws_mux.flush(&mut ws_chunks);

    // Ogg: what a listener is written is again a valid source.
    let mut again = OggIngest::new();
    let mut out = Vec::new();
    again
        .push(&ogg_mux.headers(), START_US, &mut out)
        .expect("muxer headers");
    for c in &ogg_chunks {
        again
            .push(&c.bytes, START_US, &mut out)
            .expect("muxer page");
    }
    assert_eq!(again.head(), Some(*head));
    assert_eq!(essence(&out), essence(packets));

    // WebSocket: HEAD, then AUDIO (and STATS) messages carrying the same packets in order.
    let mut dec = FrameDecoder::for_server_frames(1 << 20);
    dec.push(&ws_mux.headers());
    for c in &ws_chunks {
        dec.push(&c.bytes);
    }
    let mut seq = 1_000u64;
    let mut got = Vec::new();
    while let Some(m) = dec.next().expect("muxer frames") {
        let Message::Binary(b) = m else {
            panic!("muxer sent {m:?}")
        };
        match wire::decode(&b).expect("muxer message") {
            WireMessage::Head(h) => assert_eq!(&h[..], &head.to_bytes()[..]),
            WireMessage::Audio { seq: s, packet, .. } => {
                assert_eq!(s, seq);
                seq += 1;
                got.push(packet);
            }
            WireMessage::Stats { .. } | WireMessage::Stage { .. } => {}
        }
    }
    let want: Vec<Bytes> = packets.iter().map(|p| p.data.clone()).collect();
    assert_eq!(got, want);
}

fuzz_target!(|data: &[u8]| {
    let Some((cuts, stream)) = pieces(data) else {
        return;
    };

    // The same stream in one push: the reference outcome.
    let mut whole = OggIngest::new();
    let mut whole_out = Vec::new();
    let whole_res = whole.push(stream, START_US, &mut whole_out);

    let mut ing = OggIngest::new();
    let mut all = Vec::new();
    let mut res = Ok(());
    let mut now = START_US;
    let mut largest_push = 0usize;
    let mut out: Vec<AudioPacket> = Vec::new();
    for piece in cuts {
        assert!(
            ing.buffered() < MAX_PAGE,
            "{} bytes buffered",
            ing.buffered()
        );
        now += 20_000;
        largest_push = largest_push.max(piece.len());
        out.clear();
        let base = reset_peak() - out.capacity() * size_of::<AudioPacket>();
        res = ing.push(piece, now, &mut out);
        let used = peak_bytes() - base;
        let bound = 4 * (MAX_PAGE + largest_push)
            + 4 * MAX_PACKET
            + 2 * 255 * size_of::<ogg::Packet>()
            + 2 * out.capacity() * size_of::<AudioPacket>()
            + 16 * 1024;
        assert!(
            used <= bound,
            "push of {} bytes used {used} heap bytes (bound {bound})",
            piece.len()
        );
        for p in &out {
            assert!(!p.data.is_empty() && p.data.len() <= MAX_PACKET);
            assert_eq!(opus::packet_samples(&p.data), Ok(p.samples));
            assert!(p.samples >= 120 && p.samples <= MAX_PACKET_SAMPLES);
            assert!(p.capture_us <= now);
        }
        all.append(&mut out);
        if res.is_err() {
            break;
        }
    }

    assert_eq!(res, whole_res, "outcome depends on the cuts");
    assert_eq!(
        essence(&all),
        essence(&whole_out),
        "packets depend on the cuts"
    );
    assert_eq!(ing.head(), whole.head());

    if res.is_ok() && !all.is_empty() {
        let head = ing.head().expect("audio only after a head");
        round_trip(&head, &all, data[1]);
    }
});
