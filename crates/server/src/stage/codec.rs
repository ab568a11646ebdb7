//! Opus encode and decode for the stage's mixer, through libopus (the `opus` crate, linked to
//! Debian's `libopus-dev`). Mono at 48 kHz: see `levee_core::stage`.

use levee_core::stage::{FRAME, RATE};
use std::fmt;

/// Bytes of one encoded frame at most (RFC 6716 allows 1275 per frame).
pub const MAX_ENCODED: usize = 1275;
/// Samples one Opus packet decodes to at most (120 ms at 48 kHz).
pub const MAX_DECODED: usize = 5760;
/// Bit rate of the programme (what every listener hears).
pub const PROGRAMME_BITRATE: i32 = 48_000;
/// Bit rate of a speaker's mix-minus (what they hear of the others).
pub const RETURN_BITRATE: i32 = 32_000;
/// Encoder complexity (0–10) of the programme: encoded once for every listener.
pub const PROGRAMME_COMPLEXITY: i32 = 8;
/// Encoder complexity of a mix-minus: one per speaking speaker, so cheaper.
pub const RETURN_COMPLEXITY: i32 = 5;

/// The linked libopus's version string.
pub fn libopus_version() -> &'static str {
    opus::version()
}

/// A codec error, with libopus's description.
#[derive(Debug, Clone)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<opus::Error> for CodecError {
    fn from(e: opus::Error) -> Self {
        CodecError(e.description().to_owned())
    }
}

/// Decodes one speaker's packets (mono or stereo) to mono samples.
pub struct Decoder {
    inner: opus::Decoder,
    pcm: Vec<f32>,
}

impl Decoder {
    /// A decoder at 48 kHz, mono.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Decoder {
            inner: opus::Decoder::new(RATE, opus::Channels::Mono)?,
            pcm: vec![0.0; MAX_DECODED],
        })
    }

    /// Decodes `packet`; the samples stay valid until the next call.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[f32], CodecError> {
        let n = self.inner.decode_float(packet, &mut self.pcm, false)?;
        Ok(&self.pcm[..n])
    }
}

/// Encodes 20-ms mono frames.
pub struct Encoder {
    inner: opus::Encoder,
    out: Vec<u8>,
}

impl Encoder {
    /// An encoder for speech at `bitrate` bit/s and `complexity` (0–10).
    pub fn new(bitrate: i32, complexity: i32) -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip)?;
        inner.set_bitrate(opus::Bitrate::Bits(bitrate))?;
        inner.set_complexity(complexity)?;
        Ok(Encoder {
            inner,
            out: vec![0; MAX_ENCODED],
        })
    }

    /// The programme's encoder.
    pub fn programme() -> Result<Self, CodecError> {
        Self::new(PROGRAMME_BITRATE, PROGRAMME_COMPLEXITY)
    }

    /// A mix-minus encoder.
    pub fn mix_minus() -> Result<Self, CodecError> {
        Self::new(RETURN_BITRATE, RETURN_COMPLEXITY)
    }

    /// Encodes one frame of [`FRAME`] samples; the packet stays valid until the next call.
    pub fn encode(&mut self, frame: &[f32]) -> Result<&[u8], CodecError> {
        debug_assert_eq!(frame.len(), FRAME);
        let n = self.inner.encode_float(frame, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_encode_and_decode() {
        let mut e = Encoder::programme().unwrap();
        let mut d = Decoder::new().unwrap();
        let mut energy = 0f32;
        for f in 0..20 {
            let frame: Vec<f32> = (0..FRAME)
                .map(|k| {
                    let t = (f * FRAME + k) as f32 / RATE as f32;
                    0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                })
                .collect();
            let packet = e.encode(&frame).unwrap().to_vec();
            assert_eq!(levee_media::opus::packet_samples(&packet).unwrap(), 960);
            let pcm = d.decode(&packet).unwrap();
            assert_eq!(pcm.len(), FRAME);
            if f > 5 {
                energy += pcm.iter().map(|v| v * v).sum::<f32>() / FRAME as f32;
            }
        }
        // A 0.3 sine has a mean square of 0.045.
        let ms = energy / 14.0;
        assert!((0.03..0.06).contains(&ms), "{ms}");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Decoder::new().unwrap();
        // Code 3 with a frame count of 0 is invalid (RFC 6716 §3.2.5).
        assert!(d.decode(&[0x03, 0x00]).is_err());
    }
}
