//! Opus in Ogg (RFC 7845) and Opus packet timing (RFC 6716 §3.1).
//!
//! Contract: [`OpusHead::parse`] and [`check_tags`] validate the two header packets of an Ogg
//! Opus stream; [`packet_samples`] gives the duration of an audio packet at 48 kHz or says why
//! the packet is not valid Opus. levee never decodes audio: these checks are all it needs.

use std::fmt;

/// Opus always runs at 48 kHz inside; durations are counted in 48 kHz samples.
pub const SAMPLE_RATE: u32 = 48_000;
/// The largest packet levee accepts: 120 ms of six 1,275-byte frames, the most libopus emits
/// (RFC 6716 limits a frame to 1,275 bytes), rounded up.
pub const MAX_PACKET: usize = 8_000;
/// The longest packet duration RFC 6716 allows: 120 ms.
pub const MAX_PACKET_SAMPLES: u32 = 5_760;
/// Encoder delay most encoders declare (libopus at 48 kHz): 6.5 ms.
pub const DEFAULT_PRE_SKIP: u16 = 312;

/// What was wrong with an Opus header or packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpusError {
    /// The stream carries another codec; the field names it.
    WrongCodec(&'static str),
    /// The first packet is not an `OpusHead`.
    NotOpusHead,
    /// `OpusHead` fields are invalid; the text says which.
    BadHead(&'static str),
    /// The second packet is not a valid `OpusTags`.
    BadTags(&'static str),
    /// An audio packet is empty.
    EmptyPacket,
    /// An audio packet is larger than [`MAX_PACKET`].
    PacketTooLarge(usize),
    /// An audio packet's TOC or frame count is invalid; the text says why.
    BadPacket(&'static str),
}

impl fmt::Display for OpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpusError::WrongCodec(c) => write!(
                f,
                "the stream is {c}, levee carries Opus only (encode with -c:a libopus)"
            ),
            OpusError::NotOpusHead => write!(f, "first packet is not an OpusHead header"),
            OpusError::BadHead(why) => write!(f, "invalid OpusHead: {why}"),
            OpusError::BadTags(why) => write!(f, "invalid OpusTags: {why}"),
            OpusError::EmptyPacket => write!(f, "empty Opus packet"),
            OpusError::PacketTooLarge(n) => write!(
                f,
                "Opus packet of {n} bytes exceeds the {MAX_PACKET}-byte limit"
            ),
            OpusError::BadPacket(why) => write!(f, "invalid Opus packet: {why}"),
        }
    }
}

impl std::error::Error for OpusError {}

/// The Opus identification header (RFC 7845 §5.1), channel mapping family 0 (mono or stereo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channels: 1 or 2.
    pub channels: u8,
    /// Samples (at 48 kHz) to drop at the start of decoding.
    pub pre_skip: u16,
    /// Sample rate of the original input, informational.
    pub input_sample_rate: u32,
    /// Output gain in Q7.8 dB.
    pub output_gain: i16,
}

impl OpusHead {
    /// A header for `channels` (1 or 2) with the usual encoder delay.
    pub fn new(channels: u8) -> Self {
        OpusHead {
            channels,
            pre_skip: DEFAULT_PRE_SKIP,
            input_sample_rate: SAMPLE_RATE,
            output_gain: 0,
        }
    }

    /// Parses the first packet of an Ogg stream, naming the codec when it is not Opus.
    pub fn parse(packet: &[u8]) -> Result<Self, OpusError> {
        if let Some(codec) = identify_other_codec(packet) {
            return Err(OpusError::WrongCodec(codec));
        }
        if packet.len() < 8 || &packet[..8] != b"OpusHead" {
            return Err(OpusError::NotOpusHead);
        }
        if packet.len() < 19 {
            return Err(OpusError::BadHead("shorter than 19 bytes"));
        }
        if packet[8] & 0xf0 != 0 {
            return Err(OpusError::BadHead("unsupported major version"));
        }
        let channels = packet[9];
        let family = packet[18];
        if family != 0 {
            return Err(OpusError::BadHead(
                "channel mapping family must be 0 (mono or stereo)",
            ));
        }
        if channels == 0 || channels > 2 {
            return Err(OpusError::BadHead("mapping family 0 needs 1 or 2 channels"));
        }
        Ok(OpusHead {
            channels,
            pre_skip: u16::from_le_bytes([packet[10], packet[11]]),
            input_sample_rate: u32::from_le_bytes([packet[12], packet[13], packet[14], packet[15]]),
            output_gain: i16::from_le_bytes([packet[16], packet[17]]),
        })
    }

    /// The 19-byte header packet.
    pub fn to_bytes(&self) -> [u8; 19] {
        let mut b = [0u8; 19];
        b[..8].copy_from_slice(b"OpusHead");
        b[8] = 1;
        b[9] = self.channels;
        b[10..12].copy_from_slice(&self.pre_skip.to_le_bytes());
        b[12..16].copy_from_slice(&self.input_sample_rate.to_le_bytes());
        b[16..18].copy_from_slice(&self.output_gain.to_le_bytes());
        b
    }
}

fn identify_other_codec(packet: &[u8]) -> Option<&'static str> {
    if packet.starts_with(b"\x01vorbis") {
        Some("Vorbis")
    } else if packet.starts_with(b"\x7fFLAC") {
        Some("FLAC")
    } else if packet.starts_with(b"Speex   ") {
        Some("Speex")
    } else if packet.starts_with(b"\x80theora") {
        Some("Theora")
    } else {
        None
    }
}

/// Checks the comment header (RFC 7845 §5.2): magic, vendor string and comment list lengths.
pub fn check_tags(packet: &[u8]) -> Result<(), OpusError> {
    if packet.len() < 16 || &packet[..8] != b"OpusTags" {
        return Err(OpusError::BadTags("missing 'OpusTags' magic"));
    }
    let read_len = |at: usize| -> Option<usize> {
        packet
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let vendor = read_len(8).ok_or(OpusError::BadTags("truncated"))?;
    let mut at = 12usize
        .checked_add(vendor)
        .ok_or(OpusError::BadTags("vendor length overflows"))?;
    let count = read_len(at).ok_or(OpusError::BadTags("vendor string overruns the packet"))?;
    at += 4;
    for _ in 0..count {
        let len = read_len(at).ok_or(OpusError::BadTags("comment list overruns the packet"))?;
        at = at
            .checked_add(4 + len)
            .ok_or(OpusError::BadTags("comment length overflows"))?;
        if at > packet.len() {
            return Err(OpusError::BadTags("comment overruns the packet"));
        }
    }
    Ok(())
}

/// Builds an `OpusTags` packet with `vendor` and `KEY=value` comments.
pub fn tags(vendor: &str, comments: &[String]) -> Vec<u8> {
    let mut b =
        Vec::with_capacity(16 + vendor.len() + comments.iter().map(|c| c.len() + 4).sum::<usize>());
    b.extend_from_slice(b"OpusTags");
    b.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    b.extend_from_slice(vendor.as_bytes());
    b.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for c in comments {
        b.extend_from_slice(&(c.len() as u32).to_le_bytes());
        b.extend_from_slice(c.as_bytes());
    }
    b
}

/// Duration of one frame for a TOC configuration number, in 48 kHz samples.
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][(config % 4) as usize],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][(config % 2) as usize],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][(config % 4) as usize],
    }
}

/// Duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 §3.1).
pub fn packet_samples(packet: &[u8]) -> Result<u32, OpusError> {
    let toc = *packet.first().ok_or(OpusError::EmptyPacket)?;
    if packet.len() > MAX_PACKET {
        return Err(OpusError::PacketTooLarge(packet.len()));
    }
    if identify_other_codec(packet).is_some() || packet.starts_with(b"OpusHead") {
        return Err(OpusError::BadPacket(
            "a header packet where audio was expected",
        ));
    }
    let frame = frame_samples(toc >> 3);
    let frames = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let count = packet
                .get(1)
                .ok_or(OpusError::BadPacket("code 3 packet without a frame count"))?
                & 0x3f;
            if count == 0 {
                return Err(OpusError::BadPacket("code 3 packet with zero frames"));
            }
            count as u32
        }
    };
    let total = frame * frames;
    if total > MAX_PACKET_SAMPLES {
        return Err(OpusError::BadPacket("packet lasts longer than 120 ms"));
    }
    Ok(total)
}

/// A valid 20 ms CELT packet that decodes to silence, as encoders emit during digital silence.
pub const SILENCE_20MS: [u8; 3] = [0xf8, 0xff, 0xfe];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips() {
        let h = OpusHead {
            channels: 2,
            pre_skip: 3840,
            input_sample_rate: 44_100,
            output_gain: -256,
        };
        assert_eq!(OpusHead::parse(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn vorbis_and_flac_are_named() {
        assert_eq!(
            OpusHead::parse(b"\x01vorbis\x00\x00\x00\x00\x02"),
            Err(OpusError::WrongCodec("Vorbis"))
        );
        assert_eq!(
            OpusHead::parse(b"\x7fFLAC\x01\x00"),
            Err(OpusError::WrongCodec("FLAC"))
        );
        assert!(OpusHead::parse(b"garbage")
            .unwrap_err()
            .to_string()
            .contains("OpusHead"));
    }

    #[test]
    fn multichannel_and_bad_versions_are_refused() {
        let mut h = OpusHead::new(2).to_bytes();
        h[18] = 1;
        assert!(matches!(OpusHead::parse(&h), Err(OpusError::BadHead(_))));
        let mut h = OpusHead::new(2).to_bytes();
        h[9] = 3;
        assert!(matches!(OpusHead::parse(&h), Err(OpusError::BadHead(_))));
        let mut h = OpusHead::new(1).to_bytes();
        h[8] = 0x10;
        assert!(matches!(OpusHead::parse(&h), Err(OpusError::BadHead(_))));
    }

    #[test]
    fn tags_round_trip_and_truncation_is_caught() {
        let t = tags("levee", &["TITLE=Morning show".into()]);
        assert_eq!(check_tags(&t), Ok(()));
        assert!(check_tags(&t[..t.len() - 3]).is_err());
        let mut lying = t.clone();
        lying[8] = 0xff; // vendor length far past the end
        assert!(check_tags(&lying).is_err());
    }

    #[test]
    fn durations_follow_the_toc() {
        assert_eq!(packet_samples(&SILENCE_20MS), Ok(960));
        // SILK 60 ms, one frame (config 3).
        assert_eq!(packet_samples(&[3 << 3, 0]), Ok(2880));
        // CELT 2.5 ms, two frames (code 1).
        assert_eq!(packet_samples(&[(16 << 3) | 1, 0]), Ok(240));
        // CELT 20 ms, code 3 with 6 frames = 120 ms.
        assert_eq!(packet_samples(&[(31 << 3) | 3, 6]), Ok(5760));
        // 7 × 20 ms is over 120 ms.
        assert!(packet_samples(&[(31 << 3) | 3, 7]).is_err());
        assert!(packet_samples(&[(31 << 3) | 3, 0]).is_err());
        assert!(packet_samples(&[(31 << 3) | 3]).is_err());
        assert_eq!(packet_samples(&[]), Err(OpusError::EmptyPacket));
        assert_eq!(
            packet_samples(&vec![0xf8; MAX_PACKET + 1]),
            Err(OpusError::PacketTooLarge(MAX_PACKET + 1))
        );
    }
}
