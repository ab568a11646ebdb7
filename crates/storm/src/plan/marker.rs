//! The synthetic host's packet marker: lets listeners that see no wire header (progressive Ogg)
//! measure sequence and latency too.
//!
//! Contract: [`write_packet`] makes a valid 20 ms Opus CELT packet (TOC `0xF8`, code 0) of the
//! requested size whose first bytes after the TOC are `LVST`, the host's own sequence number
//! (u64, big-endian) and its capture time (µs since the Unix epoch, u64, big-endian); the rest is
//! padding. [`read_marker`] finds them again in any packet prefix of at least [`MARKER_LEN`]
//! bytes, and answers `None` for packets of a real source. The host's sequence number is not
//! renumbered by the server, so a listener sees audio the host dropped as a gap.

/// TOC byte of the synthetic packets: CELT fullband, 20 ms, mono, one frame.
pub const TOC: u8 = 0xF8;

/// Magic bytes after the TOC.
pub const MAGIC: &[u8; 4] = b"LVST";

/// Bytes of a packet needed to read its marker.
pub const MARKER_LEN: usize = 1 + 4 + 8 + 8;

/// Samples (48 kHz) in one synthetic packet.
pub const PACKET_SAMPLES: u32 = 960;

/// Writes one marked packet of `size` bytes (at least [`MARKER_LEN`]) into `out`.
pub fn write_packet(seq: u64, capture_us: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.push(TOC);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&capture_us.to_be_bytes());
    out.resize(size.max(MARKER_LEN), 0x55);
}

/// The host sequence number and capture time of a marked packet, from its first bytes.
pub fn read_marker(prefix: &[u8]) -> Option<(u64, u64)> {
    if prefix.len() < MARKER_LEN || prefix[0] != TOC || &prefix[1..5] != MAGIC {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&prefix[5..13]);
    let mut cap = [0u8; 8];
    cap.copy_from_slice(&prefix[13..21]);
    Some((u64::from_be_bytes(seq), u64::from_be_bytes(cap)))
}

/// Bytes per 20 ms packet for a target bitrate in bit/s (at least [`MARKER_LEN`]).
pub fn packet_size(bitrate: u32) -> usize {
    ((bitrate as usize / 8) / 50).max(MARKER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_media::opus::packet_samples;

    #[test]
    fn marked_packets_round_trip_and_are_valid_20ms_opus() {
        let mut p = Vec::new();
        write_packet(42, 1_700_000_000_123_456, packet_size(32_000), &mut p);
        assert_eq!(p.len(), 80);
        assert_eq!(
            read_marker(&p[..MARKER_LEN]),
            Some((42, 1_700_000_000_123_456))
        );
        assert_eq!(packet_samples(&p), Ok(PACKET_SAMPLES));
    }

    #[test]
    fn real_packets_carry_no_marker() {
        assert_eq!(read_marker(&levee_media::opus::SILENCE_20MS), None);
        assert_eq!(read_marker(&[0xF8; 40]), None);
        let mut p = Vec::new();
        write_packet(1, 2, 10, &mut p);
        assert_eq!(p.len(), MARKER_LEN);
        assert_eq!(read_marker(&p[..MARKER_LEN - 1]), None);
    }
}
