//! The packager: turns a space's Opus packets into chunks packaged once per delivery format.
//!
//! Contract: push validated packets in capture order with [`Packager::push`]; whenever the
//! pending audio reaches the target duration it is sealed into a [`Chunk`] holding the same
//! packets as one Ogg page and as consecutive WebSocket frames. Listeners only ever write those
//! shared bytes. The packager owns the space's output stream identity (Ogg serial, page numbers,
//! granule positions, sequence numbers), so a source that reconnects continues the same stream.

use crate::wire;
use crate::wsframe::{self, OP_BINARY};
use bytes::{Bytes, BytesMut};
use levee_media::ogg::{self, PageSpec};
use levee_media::opus::{self, OpusHead};

/// Most body bytes levee puts in one Ogg page (well under the format's 65,025).
pub const MAX_PAGE_BODY: usize = 48 * 1024;

/// One validated Opus packet on its way to listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// The Opus packet.
    pub data: Bytes,
    /// Its duration in 48 kHz samples.
    pub samples: u32,
    /// When it was captured, µs since the Unix epoch.
    pub capture_us: u64,
}

/// What every new listener receives first, packaged once per format.
#[derive(Debug, Clone)]
pub struct Headers {
    /// The space's codec header.
    pub head: OpusHead,
    /// The Ogg `OpusHead` and `OpusTags` pages.
    pub ogg: Bytes,
    /// The WebSocket HEAD frame.
    pub ws: Bytes,
}

/// A run of consecutive packets, packaged for every delivery format.
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
    /// The packets as one Ogg page.
    pub ogg: Bytes,
    /// The packets as WebSocket frames (a STATS frame may lead).
    pub ws: Bytes,
}

/// Packages one space's audio. See the module docs for the contract.
#[derive(Debug)]
pub struct Packager {
    headers: Headers,
    serial: u32,
    page_seq: u32,
    granule: u64,
    next_seq: u64,
    pending: Vec<AudioPacket>,
    pending_samples: u32,
    pending_lacing: usize,
    pending_bytes: usize,
    stats: Option<(u64, u32)>,
}

impl Packager {
    /// A packager for a stream described by `head`, with Ogg serial `serial`. `comments` are
    /// `KEY=value` tags for the Ogg stream (for example the space's title).
    pub fn new(head: OpusHead, serial: u32, comments: &[String]) -> Self {
        let mut ogg_hdr = BytesMut::new();
        let bos = PageSpec {
            flags: ogg::FLAG_BOS,
            granule: 0,
            serial,
            seq: 0,
        };
        ogg::write_page(bos, &[head.to_bytes()], &mut ogg_hdr).expect("19-byte packet fits");
        let tags = opus::tags(concat!("levee ", env!("CARGO_PKG_VERSION")), comments);
        let tags_spec = PageSpec {
            flags: 0,
            granule: 0,
            serial,
            seq: 1,
        };
        ogg::write_page(tags_spec, &[&tags], &mut ogg_hdr).expect("tags fit one page");
        let mut ws = BytesMut::new();
        let mut body = vec![wire::KIND_HEAD];
        body.extend_from_slice(&head.to_bytes());
        wsframe::encode_frame(OP_BINARY, &body, &mut ws);
        Packager {
            headers: Headers {
                head,
                ogg: ogg_hdr.freeze(),
                ws: ws.freeze(),
            },
            serial,
            page_seq: 2,
            granule: 0,
            next_seq: 0,
            pending: Vec::new(),
            pending_samples: 0,
            pending_lacing: 0,
            pending_bytes: 0,
            stats: None,
        }
    }

    /// The headers every new listener gets first.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Sequence number the next pushed packet will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues live statistics to lead the next chunk's WebSocket frames.
    pub fn set_stats(&mut self, server_us: u64, listeners: u32) {
        self.stats = Some((server_us, listeners));
    }

    /// Adds a packet; seals chunks into `out` when the pending audio reaches `target_samples`
    /// or would overflow a page.
    pub fn push(&mut self, packet: AudioPacket, target_samples: u32, out: &mut Vec<Chunk>) {
        let lacing = ogg::lacing_len(packet.data.len());
        if !self.pending.is_empty()
            && (self.pending_lacing + lacing > 255
                || self.pending_bytes + packet.data.len() > MAX_PAGE_BODY)
        {
            self.flush(out);
        }
        self.pending_lacing += lacing;
        self.pending_bytes += packet.data.len();
        self.pending_samples += packet.samples;
        self.pending.push(packet);
        if self.pending_samples >= target_samples {
            self.flush(out);
        }
    }

    /// Seals whatever is pending into a chunk (nothing if nothing is pending).
    pub fn flush(&mut self, out: &mut Vec<Chunk>) {
        if self.pending.is_empty() {
            return;
        }
        self.granule += self.pending_samples as u64;
        let mut page = BytesMut::with_capacity(ogg::HEADER_FIXED + 255 + self.pending_bytes);
        let spec = PageSpec {
            flags: 0,
            granule: self.granule,
            serial: self.serial,
            seq: self.page_seq,
        };
        let datas: Vec<&[u8]> = self.pending.iter().map(|p| p.data.as_ref()).collect();
        ogg::write_page(spec, &datas, &mut page).expect("page bounds checked on push");
        self.page_seq = self.page_seq.wrapping_add(1);

        let per_packet = 4 + wire::AUDIO_HEADER;
        let mut ws = BytesMut::with_capacity(
            self.pending_bytes + per_packet * self.pending.len() + 2 + wire::STATS_LEN,
        );
        if let Some((server_us, listeners)) = self.stats.take() {
            let mut body = BytesMut::with_capacity(wire::STATS_LEN);
            wire::put_stats(&mut body, server_us, listeners);
            wsframe::encode_frame(OP_BINARY, &body, &mut ws);
        }
        let first_seq = self.next_seq;
        for p in &self.pending {
            wsframe::encode_header(OP_BINARY, wire::AUDIO_HEADER + p.data.len(), &mut ws);
            wire::put_audio(&mut ws, self.next_seq, p.capture_us, &p.data);
            self.next_seq += 1;
        }
        out.push(Chunk {
            first_seq,
            packets: self.pending.len() as u32,
            samples: self.pending_samples,
            first_capture_us: self.pending[0].capture_us,
            ogg: page.freeze(),
            ws: ws.freeze(),
        });
        self.pending.clear();
        self.pending_samples = 0;
        self.pending_lacing = 0;
        self.pending_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireMessage;
    use crate::wsframe::{encode_client_frame, FrameDecoder, Message};
    use levee_media::ogg::{PacketAssembler, PageReader, MAX_PAGE};

    fn packet(i: u64) -> AudioPacket {
        AudioPacket {
            data: Bytes::from(vec![0xf8, 0xff, i as u8]),
            samples: 960,
            capture_us: 1_000_000 + i * 20_000,
        }
    }

    /// Re-masks server frames so the client-side decoder can read them back.
    fn ws_messages(bytes: &[u8]) -> Vec<WireMessage> {
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
        let mut p = Packager::new(OpusHead::new(1), 7, &[]);
        let mut out = Vec::new();
        for i in 0..12 {
            p.push(packet(i), 5 * 960, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].first_seq, out[0].packets), (0, 5));
        assert_eq!((out[1].first_seq, out[1].packets), (5, 5));
        p.flush(&mut out);
        assert_eq!(
            (out[2].first_seq, out[2].packets, out[2].samples),
            (10, 2, 1920)
        );
    }

    #[test]
    fn ogg_output_is_a_valid_stream_with_running_granules() {
        let mut p = Packager::new(OpusHead::new(2), 7, &["TITLE=t".into()]);
        let mut out = Vec::new();
        for i in 0..10 {
            p.push(packet(i), 3 * 960, &mut out);
        }
        p.flush(&mut out);
        let mut reader = PageReader::new(MAX_PAGE);
        reader.push(&p.headers().ogg);
        for c in &out {
            reader.push(&c.ogg);
        }
        let mut asm = PacketAssembler::new(8000);
        let mut packets = Vec::new();
        let mut granules = Vec::new();
        while let Some(page) = reader.next_page().unwrap() {
            granules.push(page.granule);
            asm.push(&page, &mut packets).unwrap();
        }
        assert_eq!(OpusHead::parse(&packets[0].data).unwrap().channels, 2);
        levee_media::opus::check_tags(&packets[1].data).unwrap();
        assert_eq!(packets.len(), 12);
        assert_eq!(granules, vec![0, 0, 2880, 5760, 8640, 9600]);
    }

    #[test]
    fn ws_frames_carry_consecutive_seqs_capture_times_and_stats() {
        let mut p = Packager::new(OpusHead::new(1), 7, &[]);
        let mut out = Vec::new();
        p.set_stats(99, 3);
        for i in 0..4 {
            p.push(packet(i), 2 * 960, &mut out);
        }
        let msgs: Vec<WireMessage> = out.iter().flat_map(|c| ws_messages(&c.ws)).collect();
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
            ws_messages(&p.headers().ws),
            vec![WireMessage::Head(Bytes::copy_from_slice(
                &OpusHead::new(1).to_bytes()
            ))]
        );
    }

    #[test]
    fn large_packets_never_overflow_a_page() {
        let mut p = Packager::new(OpusHead::new(2), 1, &[]);
        let mut out = Vec::new();
        for i in 0..40 {
            let big = AudioPacket {
                data: Bytes::from(vec![0xfc; 7_650]),
                samples: 960,
                capture_us: i,
            };
            p.push(big, u32::MAX, &mut out);
        }
        p.flush(&mut out);
        assert_eq!(out.iter().map(|c| c.packets).sum::<u32>(), 40);
        assert!(out
            .iter()
            .all(|c| c.ogg.len() <= ogg::HEADER_FIXED + 255 + MAX_PAGE_BODY));
    }
}
