//! Muxers: the programme's [`Packet`]s packaged once per delivery format.
//!
//! Contract: push packets in stream order with [`Muxer::push`] and the format's target chunk
//! duration (its cadence, which may differ per format because it follows that format's
//! audience); whenever the pending audio reaches the target it is sealed into a [`Chunk`]: the
//! exact bytes every listener of that format is written, shared by reference. [`Muxer::flush`]
//! seals what is pending (a source stopped). Listeners only ever write those shared bytes.
//!
//! Everything a muxer writes derives from the packets (sequence numbers, positions, capture
//! times) and from its own stream identity (the Ogg serial), so a node that receives the
//! packets from elsewhere packages them exactly as the origin would.
//!
//! - [`OggMux`]: one Ogg page per chunk, granule positions from the packets' positions.
//! - [`WsMux`]: one WebSocket AUDIO frame per packet (levee's wire format, see [`crate::wire`]),
//!   a STATS frame leading about once a second.
//!
//! An fMP4 muxer (LL-HLS parts) plugs in beside them with the same trait.

use crate::packet::Packet;
use crate::wire;
use crate::wsframe::{self, OP_BINARY};
use bytes::{Bytes, BytesMut};
use levee_media::ogg::{self, PageSpec};
use levee_media::opus::{self, OpusHead};

/// Most body bytes levee puts in one Ogg page (well under the format's 65,025).
pub const MAX_PAGE_BODY: usize = 48 * 1024;

/// Most bytes of packets one WebSocket chunk carries (beyond it the chunk is sealed early).
pub const MAX_WS_CHUNK: usize = 64 * 1024;

/// A run of consecutive packets, packaged for one delivery format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Sequence number of the first packet.
    pub first_seq: u64,
    /// Number of packets.
    pub packets: u32,
    /// Total duration in 48 kHz samples.
    pub samples: u32,
    /// Capture time of the first packet, µs since the Unix epoch.
    pub first_capture_us: u64,
    /// The bytes every listener of this format is written.
    pub bytes: Bytes,
}

/// Packages packets for one delivery format. See the module docs for the contract.
pub trait Muxer {
    /// What every new listener of this format receives first.
    fn headers(&self) -> Bytes;
    /// Adds a packet; seals chunks into `out` when the pending audio reaches `target_samples`
    /// (or would overflow the format's unit).
    fn push(&mut self, packet: &Packet, target_samples: u32, out: &mut Vec<Chunk>);
    /// Seals whatever is pending into a chunk (nothing if nothing is pending).
    fn flush(&mut self, out: &mut Vec<Chunk>);
}

/// Packets waiting to be sealed, with the sizes the formats bound.
#[derive(Debug, Default)]
struct Pending {
    packets: Vec<Packet>,
    samples: u32,
    bytes: usize,
    lacing: usize,
}

impl Pending {
    fn add(&mut self, p: &Packet) {
        self.samples += p.samples;
        self.bytes += p.data.len();
        self.lacing += ogg::lacing_len(p.data.len());
        self.packets.push(p.clone());
    }

    /// The chunk's identity, and the pending state reset for the next one.
    fn take(&mut self, bytes: Bytes) -> Chunk {
        let first = &self.packets[0];
        let chunk = Chunk {
            first_seq: first.seq,
            packets: self.packets.len() as u32,
            samples: self.samples,
            first_capture_us: first.capture_us,
            bytes,
        };
        self.packets.clear();
        self.samples = 0;
        self.bytes = 0;
        self.lacing = 0;
        chunk
    }
}

/// Ogg/Opus pages (progressive HTTP, Icecast-style listeners).
#[derive(Debug)]
pub struct OggMux {
    headers: Bytes,
    serial: u32,
    page_seq: u32,
    pending: Pending,
}

impl OggMux {
    /// A muxer for a stream described by `head`, with Ogg serial `serial`. `comments` are
    /// `KEY=value` tags for the stream (for example the space's title).
    pub fn new(head: &OpusHead, serial: u32, comments: &[String]) -> Self {
        let mut hdr = BytesMut::new();
        let bos = PageSpec {
            flags: ogg::FLAG_BOS,
            granule: 0,
            serial,
            seq: 0,
        };
        ogg::write_page(bos, &[head.to_bytes()], &mut hdr).expect("19-byte packet fits");
        let tags = opus::tags(concat!("levee ", env!("CARGO_PKG_VERSION")), comments);
        let spec = PageSpec {
            flags: 0,
            granule: 0,
            serial,
            seq: 1,
        };
        ogg::write_page(spec, &[&tags], &mut hdr).expect("tags fit one page");
        OggMux {
            headers: hdr.freeze(),
            serial,
            page_seq: 2,
            pending: Pending::default(),
        }
    }
}

impl Muxer for OggMux {
    fn headers(&self) -> Bytes {
        self.headers.clone()
    }

    fn push(&mut self, packet: &Packet, target_samples: u32, out: &mut Vec<Chunk>) {
        let p = &self.pending;
        if !p.packets.is_empty()
            && (p.lacing + ogg::lacing_len(packet.data.len()) > 255
                || p.bytes + packet.data.len() > MAX_PAGE_BODY)
        {
            self.flush(out);
        }
        self.pending.add(packet);
        if self.pending.samples >= target_samples {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<Chunk>) {
        let Some(last) = self.pending.packets.last() else {
            return;
        };
        let spec = PageSpec {
            flags: 0,
            granule: last.end(),
            serial: self.serial,
            seq: self.page_seq,
        };
        let mut page = BytesMut::with_capacity(ogg::HEADER_FIXED + 255 + self.pending.bytes);
        let datas: Vec<&[u8]> = self
            .pending
            .packets
            .iter()
            .map(|p| p.data.as_ref())
            .collect();
        ogg::write_page(spec, &datas, &mut page).expect("page bounds checked on push");
        self.page_seq = self.page_seq.wrapping_add(1);
        out.push(self.pending.take(page.freeze()));
    }
}

/// levee's WebSocket messages (the web player and storm's listeners).
#[derive(Debug)]
pub struct WsMux {
    headers: Bytes,
    pending: Pending,
    stats: Option<(u64, u32)>,
    /// The stage as last set, and whether it is still to be sent.
    stage: Option<(u32, u32, u32)>,
    stage_due: bool,
}

impl WsMux {
    /// A muxer whose HEAD frame carries `head`.
    pub fn new(head: &OpusHead) -> Self {
        let mut ws = BytesMut::new();
        let mut body = vec![wire::KIND_HEAD];
        body.extend_from_slice(&head.to_bytes());
        wsframe::encode_frame(OP_BINARY, &body, &mut ws);
        WsMux {
            headers: ws.freeze(),
            pending: Pending::default(),
            stats: None,
            stage: None,
            stage_due: false,
        }
    }

    /// Queues live statistics to lead the next chunk.
    pub fn set_stats(&mut self, server_us: u64, listeners: u32) {
        self.stats = Some((server_us, listeners));
        // The stage is repeated with the statistics, so that a new listener learns it.
        self.stage_due |= self.stage.is_some();
    }

    /// Queues who is on the stage and who speaks to lead the next chunk (and to be repeated
    /// with every STATS message).
    pub fn set_stage(&mut self, revision: u32, on_stage: u32, speaking: u32) {
        self.stage = Some((revision, on_stage, speaking));
        self.stage_due = true;
    }
}

impl Muxer for WsMux {
    fn headers(&self) -> Bytes {
        self.headers.clone()
    }

    fn push(&mut self, packet: &Packet, target_samples: u32, out: &mut Vec<Chunk>) {
        if !self.pending.packets.is_empty() && self.pending.bytes + packet.data.len() > MAX_WS_CHUNK
        {
            self.flush(out);
        }
        self.pending.add(packet);
        if self.pending.samples >= target_samples {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<Chunk>) {
        let p = &self.pending;
        if p.packets.is_empty() {
            return;
        }
        let per_packet = 4 + wire::AUDIO_HEADER;
        let mut ws = BytesMut::with_capacity(
            p.bytes + per_packet * p.packets.len() + 4 + wire::STATS_LEN + wire::STAGE_LEN,
        );
        if let Some((server_us, listeners)) = self.stats.take() {
            let mut body = BytesMut::with_capacity(wire::STATS_LEN);
            wire::put_stats(&mut body, server_us, listeners);
            wsframe::encode_frame(OP_BINARY, &body, &mut ws);
        }
        if let Some((revision, on_stage, speaking)) = self.stage.filter(|_| self.stage_due) {
            self.stage_due = false;
            let mut body = BytesMut::with_capacity(wire::STAGE_LEN);
            wire::put_stage(&mut body, revision, on_stage, speaking);
            wsframe::encode_frame(OP_BINARY, &body, &mut ws);
        }
        for p in &p.packets {
            wsframe::encode_header(OP_BINARY, wire::AUDIO_HEADER + p.data.len(), &mut ws);
            wire::put_audio(&mut ws, p.seq, p.capture_us, &p.data);
        }
        out.push(self.pending.take(ws.freeze()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{AudioPacket, PacketStream};
    use crate::wire::WireMessage;
    use crate::wsframe::{encode_client_frame, FrameDecoder, Message};
    use levee_media::ogg::{PacketAssembler, PageReader, MAX_PAGE};

    fn packets(n: u64) -> Vec<Packet> {
        let mut s = PacketStream::new();
        (0..n)
            .map(|i| {
                s.push(AudioPacket {
                    data: Bytes::from(vec![0xf8, 0xff, i as u8]),
                    samples: 960,
                    capture_us: 1_000_000 + i * 20_000,
                })
            })
            .collect()
    }

    fn mux_all(m: &mut impl Muxer, ps: &[Packet], target: u32) -> Vec<Chunk> {
        let mut out = Vec::new();
        for p in ps {
            m.push(p, target, &mut out);
        }
        out
    }

    /// Re-masks server frames so the client-side decoder can read them back.
    pub(crate) fn ws_messages(bytes: &[u8]) -> Vec<WireMessage> {
        let mut d = FrameDecoder::new(1 << 16);
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let len = match bytes[at + 1] {
                126 => u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                n => n as usize,
            };
            let hdr = wsframe::header_len(len);
            let mut masked = BytesMut::new();
            encode_client_frame(
                bytes[at] & 0x0f,
                &bytes[at + hdr..at + hdr + len],
                [1, 2, 3, 4],
                &mut masked,
            );
            d.push(&masked);
            at += hdr + len;
            if let Some(Message::Binary(b)) = d.next().unwrap() {
                out.push(wire::decode(&b).unwrap());
            }
        }
        out
    }

    #[test]
    fn chunks_seal_at_the_target_duration() {
        let mut m = OggMux::new(&OpusHead::new(1), 7, &[]);
        let mut out = mux_all(&mut m, &packets(12), 5 * 960);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].first_seq, out[0].packets), (0, 5));
        assert_eq!((out[1].first_seq, out[1].packets), (5, 5));
        m.flush(&mut out);
        assert_eq!(
            (out[2].first_seq, out[2].packets, out[2].samples),
            (10, 2, 1920)
        );
    }

    #[test]
    fn ogg_output_is_a_valid_stream_with_granules_from_the_packets() {
        let mut m = OggMux::new(&OpusHead::new(2), 7, &["TITLE=t".into()]);
        let mut out = mux_all(&mut m, &packets(10), 3 * 960);
        m.flush(&mut out);
        let mut reader = PageReader::new(MAX_PAGE);
        reader.push(&m.headers());
        for c in &out {
            reader.push(&c.bytes);
        }
        let mut asm = PacketAssembler::new(8000);
        let mut got = Vec::new();
        let mut granules = Vec::new();
        while let Some(page) = reader.next_page().unwrap() {
            granules.push(page.granule);
            asm.push(&page, &mut got).unwrap();
        }
        assert_eq!(OpusHead::parse(&got[0].data).unwrap().channels, 2);
        levee_media::opus::check_tags(&got[1].data).unwrap();
        assert_eq!(got.len(), 12);
        assert_eq!(granules, vec![0, 0, 2880, 5760, 8640, 9600]);
    }

    #[test]
    fn a_node_continuing_the_stream_packages_exactly_as_the_origin() {
        // Two muxers with the same identity fed the same packets from the middle of the stream
        // (as an edge node that subscribes late) write the same pages as the origin's, up to
        // the page sequence number, which counts pages since each muxer started.
        let all = packets(20);
        let mut origin = OggMux::new(&OpusHead::new(1), 9, &[]);
        let from_origin = mux_all(&mut origin, &all, 4 * 960);
        let mut edge = OggMux::new(&OpusHead::new(1), 9, &[]);
        let from_edge = mux_all(&mut edge, &all[8..], 4 * 960);
        assert_eq!(from_origin.len(), 5);
        assert_eq!(from_edge.len(), 3);
        for (a, b) in from_origin[2..].iter().zip(&from_edge) {
            assert_eq!(
                (a.first_seq, a.packets, a.samples),
                (b.first_seq, b.packets, b.samples)
            );
            // Same granule (bytes 6..14) and payload; only page seq (18..22) and CRC differ.
            assert_eq!(a.bytes[6..14], b.bytes[6..14]);
            assert_eq!(a.bytes[26..], b.bytes[26..]);
        }
        let mut ws_origin = WsMux::new(&OpusHead::new(1));
        let mut ws_edge = WsMux::new(&OpusHead::new(1));
        let a = mux_all(&mut ws_origin, &all, 4 * 960);
        let b = mux_all(&mut ws_edge, &all[8..], 4 * 960);
        assert_eq!(a[2..], b[..]);
    }

    #[test]
    fn ws_frames_carry_the_stream_numbers_capture_times_and_stats() {
        let mut m = WsMux::new(&OpusHead::new(1));
        m.set_stats(99, 3);
        let out = mux_all(&mut m, &packets(4), 2 * 960);
        let msgs: Vec<WireMessage> = out.iter().flat_map(|c| ws_messages(&c.bytes)).collect();
        assert_eq!(
            msgs[0],
            WireMessage::Stats {
                server_us: 99,
                listeners: 3
            }
        );
        let seqs: Vec<(u64, u64)> = msgs[1..]
            .iter()
            .map(|m| match m {
                WireMessage::Audio {
                    seq, capture_us, ..
                } => (*seq, *capture_us),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            seqs,
            (0..4)
                .map(|i| (i, 1_000_000 + i * 20_000))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            ws_messages(&m.headers()),
            vec![WireMessage::Head(Bytes::copy_from_slice(
                &OpusHead::new(1).to_bytes()
            ))]
        );
    }

    #[test]
    fn ws_chunks_carry_the_stage_when_it_changes_and_with_each_stats() {
        let mut m = WsMux::new(&OpusHead::new(1));
        let kinds = |m: &mut WsMux, n| -> Vec<WireMessage> {
            mux_all(m, &packets(n), 960)
                .iter()
                .flat_map(|c| ws_messages(&c.bytes))
                .filter(|w| !matches!(w, WireMessage::Audio { .. }))
                .collect()
        };
        assert!(kinds(&mut m, 2).is_empty(), "no stage, no stage message");
        m.set_stage(3, 0b11, 0b10);
        let stage = WireMessage::Stage {
            revision: 3,
            on_stage: 0b11,
            speaking: 0b10,
        };
        assert_eq!(
            kinds(&mut m, 2),
            vec![stage.clone()],
            "once, then not again"
        );
        m.set_stats(5, 1);
        let again = kinds(&mut m, 2);
        assert_eq!(again.len(), 2);
        assert_eq!(again[1], stage, "repeated with the statistics");
    }

    #[test]
    fn large_packets_never_overflow_a_page_or_a_ws_chunk() {
        let mut s = PacketStream::new();
        let big: Vec<Packet> = (0..40)
            .map(|i| {
                s.push(AudioPacket {
                    data: Bytes::from(vec![0xfc; 7_650]),
                    samples: 960,
                    capture_us: i,
                })
            })
            .collect();
        let mut m = OggMux::new(&OpusHead::new(2), 1, &[]);
        let mut out = mux_all(&mut m, &big, u32::MAX);
        m.flush(&mut out);
        assert_eq!(out.iter().map(|c| c.packets).sum::<u32>(), 40);
        assert!(out
            .iter()
            .all(|c| c.bytes.len() <= ogg::HEADER_FIXED + 255 + MAX_PAGE_BODY));
        let mut w = WsMux::new(&OpusHead::new(2));
        let mut out = mux_all(&mut w, &big, u32::MAX);
        w.flush(&mut out);
        assert_eq!(out.iter().map(|c| c.packets).sum::<u32>(), 40);
        assert!(out.iter().all(|c| c.bytes.len() <= MAX_WS_CHUNK + 8 * 64));
    }
}
