//! Ogg pages (RFC 3533).
//!
//! Contract: [`PageReader`] takes bytes as they arrive and yields whole, CRC-checked pages;
//! [`PacketAssembler`] turns pages of one logical stream into packets; [`write_page`] builds a
//! page from whole packets. Each has a fixed upper bound on what it buffers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The capture pattern that starts every page.
pub const CAPTURE: &[u8; 4] = b"OggS";
/// Size of the fixed part of a page header.
pub const HEADER_FIXED: usize = 27;
/// The largest page the format can express: header, 255 lacing values, 255 × 255 body bytes.
pub const MAX_PAGE: usize = HEADER_FIXED + 255 + 255 * 255;

/// Header flag: this page continues a packet begun on the previous page.
pub const FLAG_CONTINUED: u8 = 0x01;
/// Header flag: first page of a logical stream.
pub const FLAG_BOS: u8 = 0x02;
/// Header flag: last page of a logical stream.
pub const FLAG_EOS: u8 = 0x04;

/// Granule position meaning "no packet ends on this page".
pub const NO_GRANULE: u64 = u64::MAX;

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut j = 0;
        while j < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            j += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, initial value 0) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// What was wrong with Ogg input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OggError {
    /// The bytes at `offset` are not the `OggS` capture pattern: this is not an Ogg stream, or it
    /// lost sync.
    NotOgg {
        /// Stream offset of the bad bytes.
        offset: u64,
    },
    /// A page header names a stream structure version other than 0.
    UnsupportedVersion(u8),
    /// The page's CRC does not match its bytes.
    BadCrc {
        /// Sequence number the page claimed.
        page_seq: u32,
        /// CRC stored in the page.
        stored: u32,
        /// CRC computed over the page.
        computed: u32,
    },
    /// A page is larger than the reader's configured bound.
    PageTooLarge {
        /// Size the page header declares (at least this much when the bound is already
        /// exceeded by the fixed header or the segment table).
        size: usize,
        /// The bound in force.
        limit: usize,
    },
    /// A packet grows past the assembler's bound.
    PacketTooLarge {
        /// Bytes seen so far for the packet.
        size: usize,
        /// The bound in force.
        limit: usize,
    },
    /// A page claims to continue a packet although none was begun, or fails to continue one.
    BrokenContinuation {
        /// Sequence number of the offending page.
        page_seq: u32,
    },
    /// A page belongs to a different logical stream than the one being read.
    UnexpectedSerial {
        /// The serial the assembler follows.
        expected: u32,
        /// The serial found.
        found: u32,
    },
    /// A page does not fit the writer's limits (more than 255 lacing values).
    PageOverflow,
}

impl fmt::Display for OggError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OggError::NotOgg { offset } => write!(
                f,
                "not an Ogg stream: expected the 'OggS' capture pattern at byte {offset}"
            ),
            OggError::UnsupportedVersion(v) => {
                write!(f, "Ogg page header version {v} is not supported (only 0 exists)")
            }
            OggError::BadCrc {
                page_seq,
                stored,
                computed,
            } => write!(
                f,
                "Ogg page {page_seq} is corrupt: CRC {stored:#010x} stored, {computed:#010x} computed"
            ),
            OggError::PageTooLarge { size, limit } => {
                write!(f, "Ogg page of {size} bytes exceeds the {limit}-byte limit")
            }
            OggError::PacketTooLarge { size, limit } => {
                write!(f, "packet of at least {size} bytes exceeds the {limit}-byte limit")
            }
            OggError::BrokenContinuation { page_seq } => write!(
                f,
                "Ogg page {page_seq} breaks packet continuation (continued flag does not match the previous page)"
            ),
            OggError::UnexpectedSerial { expected, found } => write!(
                f,
                "page of logical stream {found:#x} inside stream {expected:#x}: multiplexed Ogg is not supported, send one Opus stream"
            ),
            OggError::PageOverflow => write!(f, "packets do not fit in one Ogg page"),
        }
    }
}

impl std::error::Error for OggError {}

/// One Ogg page, parsed and CRC-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Header flags (`FLAG_*`).
    pub flags: u8,
    /// Granule position; [`NO_GRANULE`] when no packet ends on this page.
    pub granule: u64,
    /// Logical stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub seq: u32,
    /// Lacing values (the segment table).
    pub lacing: Vec<u8>,
    /// Page body: the concatenated segments.
    pub body: Bytes,
}

impl Page {
    /// True when this is the first page of a logical stream.
    pub fn is_bos(&self) -> bool {
        self.flags & FLAG_BOS != 0
    }
    /// True when this is the last page of a logical stream.
    pub fn is_eos(&self) -> bool {
        self.flags & FLAG_EOS != 0
    }
    /// True when this page continues a packet from the previous page.
    pub fn is_continued(&self) -> bool {
        self.flags & FLAG_CONTINUED != 0
    }
}

/// Incremental page reader: push bytes in, take whole checked pages out.
///
/// It buffers at most one page (`max_page` bytes, at most [`MAX_PAGE`]) plus what one `push`
/// brought. It never resynchronises: a source that sends garbage is refused, not guessed at.
#[derive(Debug)]
pub struct PageReader {
    buf: BytesMut,
    offset: u64,
    max_page: usize,
}

impl PageReader {
    /// A reader that refuses pages larger than `max_page` bytes (clamped to [`MAX_PAGE`]).
    pub fn new(max_page: usize) -> Self {
        PageReader {
            buf: BytesMut::new(),
            offset: 0,
            max_page: max_page.min(MAX_PAGE),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as a page.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole page, `Ok(None)` when more bytes are needed.
    pub fn next_page(&mut self) -> Result<Option<Page>, OggError> {
        let avail = self.buf.len();
        let check = avail.min(4);
        if self.buf[..check] != CAPTURE[..check] {
            return Err(OggError::NotOgg {
                offset: self.offset,
            });
        }
        if avail < HEADER_FIXED {
            // Below the smallest page: only a bound smaller than a header refuses it already.
            if avail > self.max_page {
                return Err(OggError::PageTooLarge {
                    size: HEADER_FIXED,
                    limit: self.max_page,
                });
            }
            return Ok(None);
        }
        let version = self.buf[4];
        if version != 0 {
            return Err(OggError::UnsupportedVersion(version));
        }
        let nseg = self.buf[26] as usize;
        // The segment table alone may exceed the bound: refuse before buffering it.
        if HEADER_FIXED + nseg > self.max_page {
            return Err(OggError::PageTooLarge {
                size: HEADER_FIXED + nseg,
                limit: self.max_page,
            });
        }
        if avail < HEADER_FIXED + nseg {
            return Ok(None);
        }
        let body_len: usize = self.buf[HEADER_FIXED..HEADER_FIXED + nseg]
            .iter()
            .map(|&l| l as usize)
            .sum();
        let total = HEADER_FIXED + nseg + body_len;
        if total > self.max_page {
            return Err(OggError::PageTooLarge {
                size: total,
                limit: self.max_page,
            });
        }
        if avail < total {
            return Ok(None);
        }
        let raw = self.buf.split_to(total).freeze();
        self.offset += total as u64;
        let stored = u32::from_le_bytes([raw[22], raw[23], raw[24], raw[25]]);
        let mut crc = crc32_update(0, &raw[..22]);
        crc = crc32_update(crc, &[0, 0, 0, 0]);
        crc = crc32_update(crc, &raw[26..]);
        let seq = u32::from_le_bytes([raw[18], raw[19], raw[20], raw[21]]);
        if crc != stored {
            return Err(OggError::BadCrc {
                page_seq: seq,
                stored,
                computed: crc,
            });
        }
        let mut h = &raw[5..18];
        let flags = h.get_u8();
        let granule = h.get_u64_le();
        let serial = h.get_u32_le();
        Ok(Some(Page {
            flags,
            granule,
            serial,
            seq,
            lacing: raw[HEADER_FIXED..HEADER_FIXED + nseg].to_vec(),
            body: raw.slice(HEADER_FIXED + nseg..),
        }))
    }
}

/// A packet taken out of a page, with where it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet's bytes.
    pub data: Bytes,
    /// Sequence number of the page on which the packet ended.
    pub page_seq: u32,
    /// Granule position of that page (meaningful for the last packet ending on it).
    pub page_granule: u64,
    /// True for the first packet of a logical stream.
    pub bos: bool,
    /// True for the last packet of the page that carried the EOS flag.
    pub eos: bool,
    /// True when this is the last packet completed on its page.
    pub last_on_page: bool,
}

/// Reassembles packets from the pages of one logical stream (or a chain of them, one after
/// another). Packets are bounded by `max_packet` bytes.
#[derive(Debug)]
pub struct PacketAssembler {
    serial: Option<u32>,
    partial: BytesMut,
    in_packet: bool,
    max_packet: usize,
}

impl PacketAssembler {
    /// An assembler that refuses packets larger than `max_packet` bytes.
    pub fn new(max_packet: usize) -> Self {
        PacketAssembler {
            serial: None,
            partial: BytesMut::new(),
            in_packet: false,
            max_packet,
        }
    }

    /// Splits `page` into the packets that end on it, appending them to `out`.
    ///
    /// A page with the BOS flag starts a new logical stream (a chained stream), only after the
    /// previous one ended with EOS or before any stream.
    pub fn push(&mut self, page: &Page, out: &mut Vec<Packet>) -> Result<(), OggError> {
        match self.serial {
            Some(s) if s != page.serial => {
                return Err(OggError::UnexpectedSerial {
                    expected: s,
                    found: page.serial,
                })
            }
            Some(_) => {}
            None => self.serial = Some(page.serial),
        }
        if page.is_continued() != self.in_packet {
            return Err(OggError::BrokenContinuation { page_seq: page.seq });
        }
        let first_out = out.len();
        let mut pos = 0usize;
        let mut bos = page.is_bos();
        for &lace in &page.lacing {
            let lace = lace as usize;
            let size = self.partial.len() + lace;
            if size > self.max_packet {
                return Err(OggError::PacketTooLarge {
                    size,
                    limit: self.max_packet,
                });
            }
            let seg = &page.body[pos..pos + lace];
            pos += lace;
            if lace == 255 {
                self.partial.extend_from_slice(seg);
                self.in_packet = true;
                continue;
            }
            let data = if self.partial.is_empty() {
                page.body.slice(pos - lace..pos)
            } else {
                self.partial.extend_from_slice(seg);
                self.partial.split().freeze()
            };
            self.in_packet = false;
            out.push(Packet {
                data,
                page_seq: page.seq,
                page_granule: page.granule,
                bos,
                eos: false,
                last_on_page: false,
            });
            bos = false;
        }
        if out.len() > first_out {
            let last = out.last_mut().expect("non-empty");
            last.last_on_page = true;
            last.eos = page.is_eos();
        }
        if page.is_eos() {
            // The stream ends here; a chained stream may follow with a new BOS page.
            self.serial = None;
            self.partial.clear();
            self.in_packet = false;
        }
        Ok(())
    }
}

/// Fields of a page to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpec {
    /// Header flags (`FLAG_*`).
    pub flags: u8,
    /// Granule position after the last packet on the page.
    pub granule: u64,
    /// Logical stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub seq: u32,
}

/// Number of lacing values a packet of `len` bytes needs.
pub fn lacing_len(len: usize) -> usize {
    len / 255 + 1
}

/// Writes one page holding `packets`, each whole, to `out`.
///
/// Fails with [`OggError::PageOverflow`] when the packets need more than 255 lacing values.
pub fn write_page<P: AsRef<[u8]>>(
    spec: PageSpec,
    packets: &[P],
    out: &mut BytesMut,
) -> Result<(), OggError> {
    let nseg: usize = packets.iter().map(|p| lacing_len(p.as_ref().len())).sum();
    if nseg > 255 {
        return Err(OggError::PageOverflow);
    }
    let body: usize = packets.iter().map(|p| p.as_ref().len()).sum();
    let start = out.len();
    out.reserve(HEADER_FIXED + nseg + body);
    out.put_slice(CAPTURE);
    out.put_u8(0);
    out.put_u8(spec.flags);
    out.put_u64_le(spec.granule);
    out.put_u32_le(spec.serial);
    out.put_u32_le(spec.seq);
    out.put_u32_le(0);
    out.put_u8(nseg as u8);
    for p in packets {
        let len = p.as_ref().len();
        out.put_bytes(255, len / 255);
        out.put_u8((len % 255) as u8);
    }
    for p in packets {
        out.put_slice(p.as_ref());
    }
    let crc = crc32(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(spec: PageSpec, packets: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        write_page(spec, packets, &mut out).unwrap();
        out.freeze()
    }

    fn spec(flags: u8, seq: u32) -> PageSpec {
        PageSpec {
            flags,
            granule: 960 * (seq as u64 + 1),
            serial: 0x1234,
            seq,
        }
    }

    #[test]
    fn crc_matches_known_vector() {
        // CRC of "123456789" under Ogg's parameters (CRC-32/MPEG-2 without inversion).
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn written_page_reads_back_with_valid_crc() {
        let bytes = page(spec(FLAG_BOS, 0), &[b"hello", &[7u8; 300]]);
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&bytes);
        let p = r.next_page().unwrap().unwrap();
        assert_eq!(p.lacing, vec![5, 255, 45]);
        assert!(p.is_bos());
        assert_eq!(p.seq, 0);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn written_pages_are_readable_by_an_independent_ogg_implementation() {
        let mut stream = BytesMut::new();
        let packets: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; i * 100 + 1]).collect();
        for (i, p) in packets.iter().enumerate() {
            let flags = if i == 0 {
                FLAG_BOS
            } else if i == 9 {
                FLAG_EOS
            } else {
                0
            };
            write_page(spec(flags, i as u32), &[p], &mut stream).unwrap();
        }
        let mut reader = ::ogg::PacketReader::new(std::io::Cursor::new(stream.to_vec()));
        for p in &packets {
            let got = reader.read_packet_expected().unwrap();
            assert_eq!(&got.data, p);
        }
    }

    #[test]
    fn corrupted_byte_is_refused_with_crc_error() {
        let mut bytes = page(spec(0, 3), &[b"payload"]).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&bytes);
        assert!(matches!(
            r.next_page(),
            Err(OggError::BadCrc { page_seq: 3, .. })
        ));
    }

    #[test]
    fn non_ogg_bytes_are_refused_at_once() {
        let mut r = PageReader::new(MAX_PAGE);
        r.push(b"ID3\x04");
        assert_eq!(r.next_page(), Err(OggError::NotOgg { offset: 0 }));
        let mut r = PageReader::new(MAX_PAGE);
        r.push(b"O");
        assert_eq!(r.next_page(), Ok(None));
        r.push(b"ggX");
        assert_eq!(r.next_page(), Err(OggError::NotOgg { offset: 0 }));
    }

    #[test]
    fn page_larger_than_bound_is_refused_from_its_header() {
        let bytes = page(spec(0, 0), &[&[1u8; 4000]]);
        let mut r = PageReader::new(1000);
        // Only the header is needed to know the page is too large.
        r.push(&bytes[..HEADER_FIXED + 16]);
        assert!(matches!(
            r.next_page(),
            Err(OggError::PageTooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn segment_table_larger_than_the_bound_is_refused_before_it_is_buffered() {
        // Found by fuzz/ogg_pages (minimised input: 02c5 then "OggS", version 0, ... 88
        // segments): a reader bounded to 112 bytes held 142 bytes between pushes while it
        // waited for the segment table of a page whose header alone (27 + 88) exceeds 112.
        let mut raw = BytesMut::new();
        raw.put_slice(CAPTURE);
        raw.put_u8(0);
        raw.put_u8(0);
        raw.put_u64_le(0);
        raw.put_u32_le(1);
        raw.put_u32_le(0);
        raw.put_u32_le(0);
        raw.put_u8(88);
        raw.put_bytes(1, 88);
        let mut r = PageReader::new(112);
        r.push(&raw[..HEADER_FIXED]);
        assert_eq!(
            r.next_page(),
            Err(OggError::PageTooLarge {
                size: HEADER_FIXED + 88,
                limit: 112
            })
        );
        // The same page under a bound that fits its header is waited for, then read.
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&raw[..HEADER_FIXED + 40]);
        assert_eq!(r.next_page(), Ok(None));
        // A bound below the smallest page: never more than the bound is held.
        let mut r = PageReader::new(10);
        r.push(&raw[..10]);
        assert_eq!(r.next_page(), Ok(None));
        r.push(&raw[10..11]);
        assert_eq!(
            r.next_page(),
            Err(OggError::PageTooLarge {
                size: HEADER_FIXED,
                limit: 10
            })
        );
    }

    #[test]
    fn packet_spanning_pages_is_reassembled() {
        let big = vec![9u8; 600];
        // Page 0 carries the first 510 bytes (lacing 255, 255) with no packet end.
        let mut raw = BytesMut::new();
        raw.put_slice(CAPTURE);
        raw.put_u8(0);
        raw.put_u8(FLAG_BOS);
        raw.put_u64_le(NO_GRANULE);
        raw.put_u32_le(7);
        raw.put_u32_le(0);
        raw.put_u32_le(0);
        raw.put_u8(2);
        raw.put_slice(&[255, 255]);
        raw.put_slice(&big[..510]);
        let crc = crc32(&raw);
        raw[22..26].copy_from_slice(&crc.to_le_bytes());
        let mut second = BytesMut::new();
        write_page(
            PageSpec {
                flags: FLAG_CONTINUED,
                granule: 960,
                serial: 7,
                seq: 1,
            },
            &[&big[510..]],
            &mut second,
        )
        .unwrap();
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&raw);
        r.push(&second);
        let mut asm = PacketAssembler::new(1000);
        let mut out = Vec::new();
        asm.push(&r.next_page().unwrap().unwrap(), &mut out)
            .unwrap();
        assert!(out.is_empty());
        asm.push(&r.next_page().unwrap().unwrap(), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.as_ref(), &big[..]);
        assert_eq!(out[0].page_granule, 960);

        let mut small = PacketAssembler::new(512);
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&raw);
        r.push(&second);
        let mut out = Vec::new();
        small
            .push(&r.next_page().unwrap().unwrap(), &mut out)
            .unwrap();
        assert!(matches!(
            small.push(&r.next_page().unwrap().unwrap(), &mut out),
            Err(OggError::PacketTooLarge { limit: 512, .. })
        ));
    }

    #[test]
    fn continued_flag_without_open_packet_is_refused() {
        let bytes = page(spec(FLAG_CONTINUED, 5), &[b"x"]);
        let mut r = PageReader::new(MAX_PAGE);
        r.push(&bytes);
        let mut asm = PacketAssembler::new(1000);
        assert_eq!(
            asm.push(&r.next_page().unwrap().unwrap(), &mut Vec::new()),
            Err(OggError::BrokenContinuation { page_seq: 5 })
        );
    }

    #[test]
    fn second_logical_stream_is_refused_but_a_chain_is_accepted() {
        let mut asm = PacketAssembler::new(1000);
        let mut out = Vec::new();
        let read = |b: Bytes| {
            let mut r = PageReader::new(MAX_PAGE);
            r.push(&b);
            r.next_page().unwrap().unwrap()
        };
        asm.push(&read(page(spec(FLAG_BOS, 0), &[b"a"])), &mut out)
            .unwrap();
        let mut other = spec(FLAG_BOS, 0);
        other.serial = 99;
        assert!(matches!(
            asm.push(&read(page(other, &[b"b"])), &mut out),
            Err(OggError::UnexpectedSerial { .. })
        ));
        asm.push(&read(page(spec(FLAG_EOS, 1), &[b"c"])), &mut out)
            .unwrap();
        assert!(out.last().unwrap().eos);
        asm.push(&read(page(other, &[b"d"])), &mut out).unwrap();
        assert!(out.last().unwrap().bos);
    }

    #[test]
    fn too_many_packets_for_one_page_overflow() {
        let packets = vec![[0u8; 10]; 256];
        assert_eq!(
            write_page(spec(0, 0), &packets, &mut BytesMut::new()),
            Err(OggError::PageOverflow)
        );
    }

    proptest! {
        /// Any packets, written as pages and fed to the reader in arbitrary splits, come back
        /// unchanged and in order.
        #[test]
        fn round_trip_through_arbitrary_splits(
            packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 1..40),
            per_page in 1usize..6,
            split in 1usize..300,
        ) {
            let mut stream = BytesMut::new();
            for (i, group) in packets.chunks(per_page).enumerate() {
                let flags = if i == 0 { FLAG_BOS } else { 0 };
                write_page(spec(flags, i as u32), group, &mut stream).unwrap();
            }
            let mut reader = PageReader::new(MAX_PAGE);
            let mut asm = PacketAssembler::new(1 << 16);
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                reader.push(piece);
                while let Some(p) = reader.next_page().unwrap() {
                    asm.push(&p, &mut out).unwrap();
                }
            }
            let got: Vec<Vec<u8>> = out.iter().map(|p| p.data.to_vec()).collect();
            prop_assert_eq!(got, packets);
        }

        /// Flipping any single bit of a page is caught (by the capture check, a bound or the CRC).
        #[test]
        fn any_bit_flip_is_detected(
            payload in prop::collection::vec(any::<u8>(), 1..500),
            bit in 0usize..4000,
        ) {
            let mut bytes = page(spec(0, 1), &[&payload]).to_vec();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let mut r = PageReader::new(MAX_PAGE);
            r.push(&bytes);
            // Either an error, or (if the flip changed the declared length) an incomplete page;
            // never a page that passes as valid.
            prop_assert!(!matches!(r.next_page(), Ok(Some(_))));
        }
    }
}
