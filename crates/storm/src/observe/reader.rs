//! What a listener does with the bytes it receives, WebSocket or progressive Ogg: parse them
//! with constant memory and measure every frame.
//!
//! Contract: a `Reader` takes received bytes in any split with their arrival time and sends
//! each audio frame to its meter; frame-level figures (latency, gaps, stalls, joins) go to the
//! caller's [`Shard`] as they happen. It holds a parser of a few hundred bytes and a meter, and
//! allocates nothing per frame. The sockets are [`crate::actors::listeners`]'s.

use crate::observe::hist::Hist;
use crate::observe::measure::Frame;
use crate::observe::measure::GranuleTracker;
use crate::observe::measure::ListenerMeter;
use crate::observe::measure::SeqStep;
use crate::observe::measure::SeqTracker;
use crate::observe::proto::OggEvent;
use crate::observe::proto::OggParser;
use crate::observe::proto::WsParser;
use crate::observe::stats::Point;
use crate::plan::marker;
use crate::plan::scenario::Format;
use crate::plan::scenario::MeterConfig;

/// Frame-level figures of one second, shared by some listeners (one lock per read).
#[derive(Debug)]
pub struct Shard {
    /// End-to-end latency of every frame of the run, µs.
    pub e2e: Hist,
    /// The current second.
    pub point: Point,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            e2e: Hist::new(),
            point: Point::new(0),
        }
    }
}

// One per listener, never moved: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parser {
    Ws(WsParser),
    Ogg(OggParser),
    /// LL-HLS comes in whole parts ([`Reader::feed_part`]), not as a byte stream.
    Hls,
}

/// Per-listener reading state: bytes in, frames to the meter and the caller's [`Shard`].
pub struct Reader {
    parser: Parser,
    /// What was heard (apart from the parser, so that the parser's callbacks can update it).
    pub(crate) heard: Heard,
}

/// What one listener heard so far.
pub struct Heard {
    /// Arrival times are exact (the listener reads as bytes arrive), not bounds.
    timed: bool,
    pub(crate) meter: ListenerMeter,
    seq: SeqTracker,
    granule: GranuleTracker,
    /// Estimated samples per packet (for Ogg pages without marker).
    samples_est: u32,
    /// Audio missing before the next packet (Ogg granule gaps).
    pending_missing: u64,
    /// The TOC byte of the last packet when it had one frame (its duration is `samples_est`).
    last_toc: Option<u8>,
    /// Frames of the read being parsed that an inexact listener has not yet metered, and
    /// their samples: they arrived together, so they take one meter step at the read's end.
    batch_frames: u64,
    batch_samples: u64,
    pub(crate) bytes: u64,
    pub(crate) pages: u64,
    pub(crate) close: Option<u16>,
    pub(crate) first_audio_us: Option<u64>,
}

impl Reader {
    pub(crate) fn new(format: Format, meter: MeterConfig, timed: bool) -> Self {
        Reader {
            parser: match format {
                Format::Ws => Parser::Ws(WsParser::default()),
                Format::Ogg => Parser::Ogg(OggParser::default()),
                Format::Hls => Parser::Hls,
            },
            heard: Heard {
                timed,
                meter: ListenerMeter::new(meter),
                seq: SeqTracker::default(),
                granule: GranuleTracker::default(),
                samples_est: marker::PACKET_SAMPLES,
                pending_missing: 0,
                last_toc: None,
                batch_frames: 0,
                batch_samples: 0,
                bytes: 0,
                pages: 0,
                close: None,
                first_audio_us: None,
            },
        }
    }

    /// The format read.
    pub(crate) fn format(&self) -> Format {
        match self.parser {
            Parser::Ws(_) => Format::Ws,
            Parser::Ogg(_) => Format::Ogg,
            Parser::Hls => Format::Hls,
        }
    }

    /// Whether arrival times are exact (see [`crate::observe::measure::Frame::exact`]).
    pub(crate) fn timed(&self) -> bool {
        self.heard.timed
    }

    /// Feeds received bytes. Returns a protocol error's reason.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        arrival_us: u64,
        shard: &mut Shard,
    ) -> Result<(), &'static str> {
        let st = &mut self.heard;
        st.bytes += data.len() as u64;
        // Counts of this read, added to the shard's second once at the end.
        let mut t = Tally::default();
        let out = match &mut self.parser {
            Parser::Ws(p) => p.feed(data, |m| match m.opcode {
                0x2 if m.prefix.first() == Some(&levee_core::wire::KIND_AUDIO)
                    && m.prefix.len() >= levee_core::wire::AUDIO_HEADER =>
                {
                    let be = |at: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&m.prefix[at..at + 8]);
                        u64::from_be_bytes(b)
                    };
                    let wire = Some((be(1), be(9)));
                    st.audio(wire, &m.prefix[17..], arrival_us, &mut t, shard);
                }
                0x8 => {
                    st.bytes = st.bytes.saturating_sub(2 + m.len);
                    st.close = Some(match m.prefix {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    });
                }
                _ => {}
            }),
            Parser::Ogg(p) => p.feed(data, |e| match e {
                OggEvent::PageStart {
                    granule, packets, ..
                } => {
                    if granule != 0 && granule != u64::MAX {
                        st.pages += 1;
                        let est = packets as u64 * st.samples_est as u64;
                        st.pending_missing += st.granule.page(granule, est);
                    }
                }
                OggEvent::Packet { prefix, .. } => {
                    if !(prefix.starts_with(b"OpusHead") || prefix.starts_with(b"OpusTags")) {
                        st.audio(None, prefix, arrival_us, &mut t, shard);
                    }
                }
            }),
            Parser::Hls => Err("HLS is read a part at a time"),
        };
        st.flush(arrival_us, &mut t);
        t.add_to(&mut shard.point);
        out
    }

    /// Feeds one whole LL-HLS part or segment (fMP4 `moof` + `mdat` fragments, as levee
    /// packages them) that arrived complete at `arrival_us`: its packets arrived together.
    /// Audio missing between it and the previous part (by decode time, for streams without the
    /// host's marker) counts as a gap. Returns why the part is malformed.
    pub(crate) fn feed_part(
        &mut self,
        body: &[u8],
        arrival_us: u64,
        shard: &mut Shard,
    ) -> Result<(), &'static str> {
        let (time, samples) = levee_media::mp4::read_segment(body)?;
        let st = &mut self.heard;
        st.bytes += body.len() as u64;
        st.pages += 1;
        let total: u64 = samples.iter().map(|s| s.0 as u64).sum();
        st.pending_missing += st.granule.page(time + total, total);
        let mut t = Tally::default();
        for (_, packet) in samples {
            st.audio(None, packet, arrival_us, &mut t, shard);
        }
        st.flush(arrival_us, &mut t);
        t.add_to(&mut shard.point);
        Ok(())
    }
}

/// Counts of frames of one read, kept apart from the shard's second until the read is done.
#[derive(Default)]
struct Tally {
    frames: u64,
    audio_us: u64,
    gaps: u64,
    gap_us: u64,
    stalls: u64,
    underruns: u64,
}

impl Tally {
    fn add_to(&self, p: &mut crate::observe::stats::Point) {
        p.frames += self.frames;
        p.audio_us += self.audio_us;
        p.gaps += self.gaps;
        p.gap_us += self.gap_us;
        p.stalls += self.stalls;
        p.underruns += self.underruns;
    }
}

impl Heard {
    /// One audio packet: `seq`/`capture` from the wire (WebSocket) or none (Ogg); the marker
    /// in the packet, when present, wins (it carries the host's own numbering).
    fn audio(
        &mut self,
        wire: Option<(u64, u64)>,
        packet: &[u8],
        arrival_us: u64,
        t: &mut Tally,
        shard: &mut Shard,
    ) {
        // Packets of a stream mostly share their TOC byte: parse it once per change.
        let samples = match packet.first() {
            Some(&toc) if Some(toc) == self.last_toc => self.samples_est,
            _ => {
                let n = levee_media::opus::packet_samples(packet).unwrap_or(self.samples_est);
                // One frame per packet (code 0): the TOC alone says its duration.
                self.last_toc = packet.first().copied().filter(|t| t & 0x03 == 0);
                n
            }
        };
        self.samples_est = samples;
        let (seq, capture) = match marker::read_marker(packet).or(wire) {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let missing = match seq {
            Some(s) => match self.seq.step(s) {
                SeqStep::Missing(n) => n * samples as u64,
                SeqStep::Late => {
                    self.meter.on_late();
                    return;
                }
                _ => 0,
            },
            None => std::mem::take(&mut self.pending_missing),
        };
        if !self.timed {
            let gap = self.meter.on_gap(missing, self.batch_frames);
            if gap > 0 {
                t.gaps += 1;
                t.gap_us += gap;
            }
            self.batch_frames += 1;
            self.batch_samples += samples as u64;
            return;
        }
        let fx = self.meter.on_frame(&Frame {
            arrival_us,
            samples,
            capture_us: capture,
            missing_samples: missing,
            exact: self.timed,
        });
        t.frames += 1;
        t.audio_us += crate::observe::measure::samples_to_us(samples as u64);
        if fx.gap_us > 0 {
            t.gaps += 1;
            t.gap_us += fx.gap_us;
        }
        t.stalls += (fx.stall_us > 0) as u64;
        t.underruns += (fx.underrun_us > 0) as u64;
        if let Some(l) = fx.latency_us {
            shard.point.latency.record(l);
            shard.e2e.record(l);
        }
        if self.first_audio_us.is_none() {
            self.first_audio_us = Some(arrival_us);
        }
    }

    /// Meters the frames of this read that wait in the batch (inexact listeners).
    fn flush(&mut self, arrival_us: u64, t: &mut Tally) {
        if self.batch_frames == 0 {
            return;
        }
        let stall = self
            .meter
            .on_frames(arrival_us, self.batch_frames, self.batch_samples);
        t.frames += self.batch_frames;
        t.audio_us += crate::observe::measure::samples_to_us(self.batch_samples);
        t.stalls += (stall > 0) as u64;
        self.batch_frames = 0;
        self.batch_samples = 0;
        if self.first_audio_us.is_none() {
            self.first_audio_us = Some(arrival_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use levee_core::mux::{Muxer, OggMux, WsMux};
    use levee_core::packet::{AudioPacket, PacketStream};
    use levee_media::opus::{OpusHead, SILENCE_20MS};

    const T0: u64 = 1_700_000_000_000_000;

    /// One chunk as levee's muxers package it for both formats.
    struct Chunk {
        ogg: Bytes,
        ws: Bytes,
    }

    /// What levee's muxers make of `packets` (marked or not), `per_chunk` packets a chunk;
    /// host packets listed in `drop` never reach the server.
    fn stream(n: u64, per_chunk: u32, marked: bool, drop: &[u64]) -> (Bytes, Bytes, Vec<Chunk>) {
        let head = OpusHead::new(2);
        let (mut ogg, mut ws) = (OggMux::new(&head, 7, &[]), WsMux::new(&head));
        let mut numbering = PacketStream::new();
        let (mut ogg_chunks, mut ws_chunks) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for i in (0..n).filter(|i| !drop.contains(i)) {
            let data = if marked {
                marker::write_packet(i, T0 + i * 20_000, 80, &mut buf);
                Bytes::from(buf.clone())
            } else {
                Bytes::from_static(&SILENCE_20MS)
            };
            let packet = numbering.push(AudioPacket {
                data,
                samples: 960,
                capture_us: T0 + i * 20_000,
            });
            ogg.push(&packet, per_chunk * 960, &mut ogg_chunks);
            ws.push(&packet, per_chunk * 960, &mut ws_chunks);
        }
        ogg.flush(&mut ogg_chunks);
        ws.flush(&mut ws_chunks);
        assert_eq!(ogg_chunks.len(), ws_chunks.len());
        let chunks = ogg_chunks
            .into_iter()
            .zip(ws_chunks)
            .map(|(o, w)| Chunk {
                ogg: o.bytes,
                ws: w.bytes,
            })
            .collect();
        (ws.headers(), ogg.headers(), chunks)
    }

    fn read_all(format: Format, head: &Bytes, chunks: &[Chunk], split: usize) -> Reader {
        // Chunks arrive 20 ms × their packets apart.
        read_timed(format, head, chunks, split, true, |k| {
            T0 + (k as u64 + 1) * 100_000
        })
    }

    fn read_timed(
        format: Format,
        head: &Bytes,
        chunks: &[Chunk],
        split: usize,
        timed: bool,
        arrival: impl Fn(usize) -> u64,
    ) -> Reader {
        let mut r = Reader::new(format, MeterConfig::default(), timed);
        let mut shard = Shard::default();
        let mut all = head.to_vec();
        for (k, c) in chunks.iter().enumerate() {
            all.extend_from_slice(if format == Format::Ws { &c.ws } else { &c.ogg });
            for piece in all.chunks(split) {
                r.feed(piece, arrival(k), &mut shard).unwrap();
            }
            all.clear();
        }
        r
    }

    #[test]
    fn a_batched_read_meters_as_its_frames_one_by_one_would() {
        // Lost packets (one inside a chunk, three across chunks), a lost chunk and a 2-s
        // silence: an inexact listener, metered once per read, finds what one metered per
        // frame finds, in every split of the bytes.
        for marked in [true, false] {
            let (ws_head, ogg_head, mut chunks) = stream(200, 5, marked, &[12, 40, 41, 42]);
            chunks.remove(20);
            let arrival = |k: usize| T0 + (k as u64 + 1) * 100_000 + (k >= 25) as u64 * 2_000_000;
            for (format, head) in [(Format::Ws, &ws_head), (Format::Ogg, &ogg_head)] {
                let end = T0 + 60_000_000;
                let per_frame = read_timed(format, head, &chunks, 1 << 16, true, arrival);
                let want = per_frame.heard.meter.finish(end);
                for split in [1, 5, 77, 1 << 16] {
                    let r = read_timed(format, head, &chunks, split, false, arrival);
                    assert_eq!(r.heard.first_audio_us, Some(T0 + 100_000));
                    let got = r.heard.meter.finish(end);
                    let fig = |s: &crate::observe::measure::ListenerSummary| {
                        (s.frames, s.audio_us, s.gaps, s.gap_us, s.worst_gap_us)
                    };
                    assert_eq!(
                        fig(&got),
                        fig(&want),
                        "{format:?} marked {marked} split {split}"
                    );
                    assert_eq!(
                        (got.stalls, got.stall_us, got.worst_stall_us),
                        (want.stalls, want.stall_us, want.worst_stall_us)
                    );
                    // The 2-s silence, and the one still going on at the end.
                    assert_eq!(got.stalls, 2);
                    // Without the marker the server's renumbering hides packets lost before it.
                    assert_eq!(got.gaps, if marked { 3 } else { 1 }, "{got:?}");
                }
            }
        }
    }

    #[test]
    fn readers_count_every_byte_and_frame_of_both_formats() {
        let (ws_head, ogg_head, chunks) = stream(100, 5, true, &[]);
        for split in [1, 7, 1 << 16] {
            let ws = read_all(Format::Ws, &ws_head, &chunks, split);
            let bytes: usize = ws_head.len() + chunks.iter().map(|c| c.ws.len()).sum::<usize>();
            assert_eq!(ws.heard.bytes, bytes as u64);
            assert_eq!(ws.heard.meter.frames(), 100);
            let ogg = read_all(Format::Ogg, &ogg_head, &chunks, split);
            let bytes: usize = ogg_head.len() + chunks.iter().map(|c| c.ogg.len()).sum::<usize>();
            assert_eq!(ogg.heard.bytes, bytes as u64);
            assert_eq!(ogg.heard.meter.frames(), 100);
            assert_eq!(ogg.heard.pages, 20);
            assert_eq!(ogg.heard.first_audio_us, Some(T0 + 100_000));
        }
    }

    #[test]
    fn the_hosts_marker_reveals_packets_lost_before_the_server() {
        // The server renumbers: its WebSocket sequence numbers have no hole. The marker does.
        let (ws_head, ogg_head, chunks) = stream(100, 5, true, &[40, 41, 42]);
        for (format, head) in [(Format::Ws, &ws_head), (Format::Ogg, &ogg_head)] {
            let r = read_all(format, head, &chunks, 1 << 16);
            let s = r.heard.meter.finish(T0 + 3_000_000);
            assert_eq!((s.frames, s.gaps, s.gap_us), (97, 1, 60_000), "{format:?}");
        }
    }

    #[test]
    fn without_a_marker_wire_sequence_and_granules_find_lost_chunks() {
        // A real source (no marker); the listener misses chunk 4 (as a lagging skip would).
        let (ws_head, ogg_head, mut chunks) = stream(100, 5, false, &[]);
        chunks.remove(4);
        for (format, head) in [(Format::Ws, &ws_head), (Format::Ogg, &ogg_head)] {
            let r = read_all(format, head, &chunks, 3);
            let s = r.heard.meter.finish(T0 + 3_000_000);
            assert_eq!((s.frames, s.gaps, s.gap_us), (95, 1, 100_000), "{format:?}");
            // Only WebSocket carries capture times for a real source.
            assert_eq!(s.latency_max_us > 0, format == Format::Ws);
        }
    }

    #[test]
    fn a_websocket_close_is_seen_and_not_counted_as_media() {
        let mut r = Reader::new(Format::Ws, MeterConfig::default(), true);
        let mut shard = Shard::default();
        let close = levee_core::wsframe::close_frame(1001, "this space has ended");
        r.feed(&close, T0, &mut shard).unwrap();
        assert_eq!(r.heard.close, Some(1001));
        assert_eq!(r.heard.bytes, 0);
    }
}
