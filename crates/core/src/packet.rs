//! The programme packet stream: what a space says, numbered once by its origin.
//!
//! Contract: validated [`AudioPacket`]s (from any source of the space) enter
//! [`PacketStream::push`], which gives each the space's next sequence number and its position in
//! the stream (`pts`, 48 kHz samples since the stream began). The resulting [`Packet`]s are the
//! one thing every later stage consumes: the muxers package them per delivery format, a bus
//! between nodes carries them as they are, and a recorder reads them without ever skipping.
//! Sequence numbers, positions and capture times are the origin's, so any node packages a
//! packet exactly as the origin would and any listener can count gaps and latency honestly.
//!
//! A [`Tap`] is a reader that never skips silently: packets queue for it up to a named bound
//! ([`Tap::new`]'s `capacity`); when it falls further behind, the live stream is not held back,
//! and the tap reports exactly how many packets it lost ([`TapRead::Lost`]).

use bytes::Bytes;
use std::collections::VecDeque;

/// One validated Opus packet on its way into the stream (not numbered yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// The Opus packet.
    pub data: Bytes,
    /// Its duration in 48 kHz samples.
    pub samples: u32,
    /// When it was captured, µs since the Unix epoch.
    pub capture_us: u64,
}

/// A packet of the programme stream, numbered by the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence number: consecutive packets of a space differ by one.
    pub seq: u64,
    /// Position of its first sample in the stream, 48 kHz samples since the stream began.
    pub pts: u64,
    /// Its duration in 48 kHz samples.
    pub samples: u32,
    /// When it was captured, µs since the Unix epoch.
    pub capture_us: u64,
    /// The Opus packet.
    pub data: Bytes,
}

impl Packet {
    /// Position one past its last sample (the Ogg granule of a page ending with it).
    pub fn end(&self) -> u64 {
        self.pts + self.samples as u64
    }
}

/// Numbers a space's packets. See the module docs.
#[derive(Debug, Default)]
pub struct PacketStream {
    next_seq: u64,
    pts: u64,
}

impl PacketStream {
    /// A stream starting at sequence number 0, position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream that continues another node's numbering (the first packet it gets is `seq`).
    pub fn starting_at(seq: u64, pts: u64) -> Self {
        PacketStream { next_seq: seq, pts }
    }

    /// Numbers `p` as the next packet of the stream.
    pub fn push(&mut self, p: AudioPacket) -> Packet {
        let packet = Packet {
            seq: self.next_seq,
            pts: self.pts,
            samples: p.samples,
            capture_us: p.capture_us,
            data: p.data,
        };
        self.next_seq += 1;
        self.pts += p.samples as u64;
        packet
    }

    /// Sequence number the next packet will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Position the next packet will get.
    pub fn next_pts(&self) -> u64 {
        self.pts
    }
}

/// What a [`Tap`] read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapRead {
    /// The next packet, in order.
    Packet(Packet),
    /// The tap fell more than its capacity behind: this many packets were dropped for it,
    /// right before the next one it will read.
    Lost(u64),
    /// Nothing queued.
    Empty,
}

/// A bounded, never-silently-skipping reader of the packet stream (for a recorder or a bus).
#[derive(Debug)]
pub struct Tap {
    queue: VecDeque<Packet>,
    capacity: usize,
    lost: u64,
    lost_total: u64,
}

impl Tap {
    /// A tap that queues at most `capacity` packets (at least 1).
    pub fn new(capacity: usize) -> Self {
        Tap {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            lost: 0,
            lost_total: 0,
        }
    }

    /// Offers a packet. When the queue is full the oldest queued packet is dropped and counted:
    /// the live stream never waits for a tap.
    pub fn offer(&mut self, p: &Packet) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.lost += 1;
            self.lost_total += 1;
        }
        self.queue.push_back(p.clone());
    }

    /// The next packet, or the count of packets lost before it.
    pub fn read(&mut self) -> TapRead {
        if self.lost > 0 {
            return TapRead::Lost(std::mem::take(&mut self.lost));
        }
        self.queue
            .pop_front()
            .map_or(TapRead::Empty, TapRead::Packet)
    }

    /// Packets queued now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Packets this tap lost since it was made.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn audio(i: u64) -> AudioPacket {
        AudioPacket {
            data: Bytes::from(vec![0xf8, i as u8]),
            samples: 960,
            capture_us: 1_000_000 + i * 20_000,
        }
    }

    #[test]
    fn packets_get_consecutive_numbers_and_positions() {
        let mut s = PacketStream::new();
        let a = s.push(audio(0));
        let b = s.push(AudioPacket {
            samples: 480,
            ..audio(1)
        });
        let c = s.push(audio(2));
        assert_eq!((a.seq, a.pts, a.end()), (0, 0, 960));
        assert_eq!((b.seq, b.pts, b.end()), (1, 960, 1440));
        assert_eq!((c.seq, c.pts), (2, 1440));
        assert_eq!(c.capture_us, 1_040_000);
        let mut edge = PacketStream::starting_at(c.seq + 1, c.end());
        assert_eq!(edge.push(audio(3)).seq, 3);
    }

    /// Reads one item from `tap`, checking order and counting; false when it was empty.
    fn take(
        tap: &mut Tap,
        next_expected: &mut u64,
        read: &mut u64,
        lost: &mut u64,
    ) -> Result<bool, TestCaseError> {
        match tap.read() {
            TapRead::Packet(p) => {
                prop_assert_eq!(p.seq, *next_expected);
                *next_expected += 1;
                *read += 1;
            }
            TapRead::Lost(n) => {
                *lost += n;
                *next_expected += n;
            }
            TapRead::Empty => return Ok(false),
        }
        Ok(true)
    }

    proptest! {
        /// Whatever the interleaving of offers and reads, a tap hands out packets in order and
        /// every packet offered is either read or counted lost; the queue never exceeds its bound.
        #[test]
        fn tap_reads_everything_or_counts_it(
            ops in prop::collection::vec((0usize..8, 0usize..8), 1..100),
            cap in 1usize..6,
        ) {
            let mut s = PacketStream::new();
            let mut tap = Tap::new(cap);
            let (mut offered, mut read, mut lost) = (0u64, 0u64, 0u64);
            let mut next_expected = 0u64;
            for (offers, reads) in ops {
                for _ in 0..offers {
                    tap.offer(&s.push(audio(offered)));
                    offered += 1;
                    prop_assert!(tap.len() <= cap);
                }
                for _ in 0..reads {
                    if !take(&mut tap, &mut next_expected, &mut read, &mut lost)? {
                        break;
                    }
                }
            }
            while take(&mut tap, &mut next_expected, &mut read, &mut lost)? {}
            prop_assert_eq!(read + lost, offered);
            prop_assert_eq!(tap.lost_total(), lost);
        }
    }
}
