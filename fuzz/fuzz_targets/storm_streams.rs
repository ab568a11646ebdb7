//! storm's parsers of what a listener receives (`levee_storm::observe::proto::WsParser` and
//! `OggParser`, with their in-place fast paths) and of the server's answer heads
//! (`levee_storm::net::http::parse_head`), in arbitrary splits.
//!
//! Input: one byte that picks the stream parser (even: WebSocket, odd: Ogg), then two split
//! bytes (see `levee_fuzz::Splitter`), then the bytes.
//!
//! Properties:
//! - no panic; every prefix handed out is at most `PREFIX` bytes;
//! - the events (WebSocket messages: opcode, first bytes, length; Ogg page starts and packets)
//!   and the first error are the same whether the bytes come whole (the fast paths read whole
//!   frames and pages in place) or in the input's splits (the byte-wise paths);
//! - an answer head that parses complete is incomplete at every shorter cut, never an error.
#![no_main]

use levee_storm::net::http::parse_head;
use levee_storm::observe::proto::{OggEvent, OggParser, WsParser, PREFIX};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Message(u8, Vec<u8>, u64),
    Page(u64, u32, u8),
    Packet(Vec<u8>, usize),
}

fn run(ws: bool, pieces: &[&[u8]]) -> (Vec<Event>, Option<&'static str>) {
    let mut out = Vec::new();
    let (mut w, mut o) = (WsParser::default(), OggParser::default());
    for piece in pieces {
        let r = if ws {
            w.feed(piece, |m| {
                assert!(m.prefix.len() <= PREFIX);
                out.push(Event::Message(m.opcode, m.prefix.to_vec(), m.len));
            })
        } else {
            o.feed(piece, |e| match e {
                OggEvent::PageStart {
                    granule,
                    packets,
                    flags,
                } => out.push(Event::Page(granule, packets, flags)),
                OggEvent::Packet { prefix, len } => {
                    assert!(prefix.len() <= PREFIX && prefix.len() <= len.max(prefix.len()));
                    out.push(Event::Packet(prefix.to_vec(), len));
                }
            })
        };
        if let Err(why) = r {
            return (out, Some(why));
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((pieces, stream)) = levee_fuzz::pieces(rest) else {
        return;
    };
    let ws = pick % 2 == 0;
    let whole = run(ws, &[stream]);
    let split = run(ws, &pieces);
    assert_eq!(whole, split, "whole and split streams disagree");

    if let Ok(Some(head)) = parse_head(stream) {
        assert!(head.len <= stream.len());
        let cuts: Vec<usize> = if head.len <= 512 {
            (0..head.len).collect()
        } else {
            (0..64).map(|k| k * head.len / 64).collect()
        };
        for cut in cuts {
            assert_eq!(parse_head(&stream[..cut]), Ok(None), "cut at {cut}");
        }
    }
});
