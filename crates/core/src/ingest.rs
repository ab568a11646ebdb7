//! Source validation: an Ogg/Opus byte stream (Icecast-style ingest) or single Opus packets
//! (WebSocket ingest) become [`AudioPacket`]s, or a refusal that says what was wrong.
//!
//! Contract: [`OggIngest::push`] takes bytes as they arrive with the arrival time and returns
//! the audio packets they completed. The first error is final: the caller refuses the source
//! and nothing it sent after the last good packet reaches listeners. Chained streams (a new
//! `OpusHead` after an end-of-stream page, as Liquidsoap and butt send on metadata changes) are
//! followed; multiplexed streams are refused.

use crate::packet::AudioPacket;
use bytes::Bytes;
use levee_media::ogg::{OggError, PacketAssembler, PageReader, MAX_PAGE};
use levee_media::opus::{self, OpusError, OpusHead, MAX_PACKET};
use std::fmt;

/// Why a source was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// The container is broken.
    Ogg(OggError),
    /// The codec is not (valid) Opus.
    Opus(OpusError),
    /// Header packets are missing or misplaced; the text says which.
    Structure(&'static str),
}

impl IngestError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::Ogg(OggError::NotOgg { .. }) => "not_ogg",
            IngestError::Ogg(OggError::BadCrc { .. }) => "bad_crc",
            IngestError::Ogg(OggError::PageTooLarge { .. } | OggError::PacketTooLarge { .. }) => {
                "too_large"
            }
            IngestError::Ogg(_) => "bad_ogg",
            IngestError::Opus(OpusError::WrongCodec(_)) => "wrong_codec",
            IngestError::Opus(OpusError::PacketTooLarge(_)) => "too_large",
            IngestError::Opus(_) => "bad_opus",
            IngestError::Structure(_) => "bad_structure",
        }
    }
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestError::Ogg(e) => e.fmt(f),
            IngestError::Opus(e) => e.fmt(f),
            IngestError::Structure(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for IngestError {}

impl From<OggError> for IngestError {
    fn from(e: OggError) -> Self {
        IngestError::Ogg(e)
    }
}

impl From<OpusError> for IngestError {
    fn from(e: OpusError) -> Self {
        IngestError::Opus(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Head,
    Tags,
    Audio,
}

/// Validating reader for an Ogg/Opus source. See the module docs for the contract.
#[derive(Debug)]
pub struct OggIngest {
    pages: PageReader,
    packets: PacketAssembler,
    expect: Expect,
    head: Option<OpusHead>,
    scratch: Vec<levee_media::ogg::Packet>,
}

impl Default for OggIngest {
    fn default() -> Self {
        Self::new()
    }
}

impl OggIngest {
    /// A reader bounded to one Ogg page ([`MAX_PAGE`]) and one Opus packet ([`MAX_PACKET`]).
    pub fn new() -> Self {
        OggIngest {
            pages: PageReader::new(MAX_PAGE),
            packets: PacketAssembler::new(MAX_PACKET),
            expect: Expect::Head,
            head: None,
            scratch: Vec::new(),
        }
    }

    /// The source's `OpusHead`, once read.
    pub fn head(&self) -> Option<OpusHead> {
        self.head
    }

    /// Bytes held waiting for the rest of a page.
    pub fn buffered(&self) -> usize {
        self.pages.buffered()
    }

    /// Feeds bytes that arrived at `now_us`; appends completed audio packets to `out`.
    ///
    /// Packets of one page get capture times spaced by their durations and ending at `now_us`
    /// (Ogg carries no wall-clock time; a page is sent when its last packet is ready).
    pub fn push(
        &mut self,
        data: &[u8],
        now_us: u64,
        out: &mut Vec<AudioPacket>,
    ) -> Result<(), IngestError> {
        self.pages.push(data);
        while let Some(page) = self.pages.next_page()? {
            self.scratch.clear();
            self.packets.push(&page, &mut self.scratch)?;
            let first_new = out.len();
            for pkt in std::mem::take(&mut self.scratch) {
                if pkt.bos && self.expect != Expect::Head {
                    return Err(IngestError::Structure(
                        "a new stream began before the previous one ended",
                    ));
                }
                match self.expect {
                    Expect::Head => {
                        if !pkt.bos {
                            return Err(IngestError::Structure(
                                "stream does not begin with an OpusHead page",
                            ));
                        }
                        self.head = Some(OpusHead::parse(&pkt.data)?);
                        self.expect = Expect::Tags;
                    }
                    Expect::Tags => {
                        opus::check_tags(&pkt.data)?;
                        self.expect = Expect::Audio;
                    }
                    Expect::Audio => {
                        let samples = opus::packet_samples(&pkt.data)?;
                        out.push(AudioPacket {
                            data: pkt.data,
                            samples,
                            capture_us: 0,
                        });
                    }
                }
                if pkt.eos {
                    self.expect = Expect::Head;
                }
            }
            // Capture times: the page's last packet is "now", earlier ones precede it.
            let mut t = now_us;
            for p in out[first_new..].iter_mut().rev() {
                p.capture_us = t;
                t = t.saturating_sub(p.samples as u64 * 1_000_000 / 48_000);
            }
        }
        Ok(())
    }
}

/// Checks one Opus packet sent on its own (WebSocket ingest) and returns it with its duration.
pub fn single_packet(data: Bytes, capture_us: u64) -> Result<AudioPacket, IngestError> {
    let samples = opus::packet_samples(&data)?;
    Ok(AudioPacket {
        data,
        samples,
        capture_us,
    })
}

/// Keeps a source from running ahead of real time by more than a burst allowance.
///
/// A source that sends faster than real time (a file without `-re`) would flood listeners;
/// the ingest loop sleeps for [`Pacer::ahead_us`] beyond the allowance instead, so the source
/// is paced by TCP backpressure.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start_us: u64,
    media_us: u64,
    burst_us: u64,
}

impl Pacer {
    /// A pacer starting at `now_us` that lets the source run `burst_us` ahead.
    pub fn new(now_us: u64, burst_us: u64) -> Self {
        Pacer {
            start_us: now_us,
            media_us: 0,
            burst_us,
        }
    }

    /// Records `samples` of audio received; returns how long to wait (µs) before reading more.
    pub fn ahead_us(&mut self, samples: u64, now_us: u64) -> u64 {
        self.media_us += samples * 1_000_000 / 48_000;
        if now_us.saturating_sub(self.start_us) > self.media_us {
            // Behind real time (the source paused): forget the debt, so that the burst after a
            // pause is judged from now.
            self.start_us = now_us.saturating_sub(self.media_us);
        }
        let elapsed = now_us.saturating_sub(self.start_us);
        self.media_us.saturating_sub(elapsed + self.burst_us)
    }
}

/// Drops sources that deliver audio too slowly: a slow drip of bytes (a slow-body attack, or a
/// link too poor to carry the stream) holds a connection without feeding listeners.
///
/// Over each window, the audio received must reach `min_ratio` of the wall time elapsed.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    window_start_us: u64,
    media_us: u64,
    window_us: u64,
    min_ratio: f64,
}

impl MinRate {
    /// Windows of `window_us` starting at `now_us`, requiring `min_ratio` of real time.
    pub fn new(now_us: u64, window_us: u64, min_ratio: f64) -> Self {
        MinRate {
            window_start_us: now_us,
            media_us: 0,
            window_us: window_us.max(1),
            min_ratio,
        }
    }

    /// Records `samples` of audio at `now_us`. At the end of a window, returns the ratio
    /// achieved as an error if it was below the minimum.
    pub fn record(&mut self, samples: u64, now_us: u64) -> Result<(), f64> {
        self.media_us += samples * 1_000_000 / 48_000;
        let elapsed = now_us.saturating_sub(self.window_start_us);
        if elapsed < self.window_us {
            return Ok(());
        }
        let ratio = self.media_us as f64 / elapsed as f64;
        self.window_start_us = now_us;
        self.media_us = 0;
        if ratio < self.min_ratio {
            Err(ratio)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use levee_media::ogg::{write_page, PageSpec, FLAG_BOS, FLAG_EOS};
    use levee_media::opus::SILENCE_20MS;

    fn stream(head: &[u8], audio_pages: usize, eos: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        let spec = |flags, seq| PageSpec {
            flags,
            granule: 0,
            serial: 5,
            seq,
        };
        write_page(spec(FLAG_BOS, 0), &[head], &mut out).unwrap();
        write_page(spec(0, 1), &[opus::tags("x", &[])], &mut out).unwrap();
        for i in 0..audio_pages {
            let flags = if eos && i + 1 == audio_pages {
                FLAG_EOS
            } else {
                0
            };
            write_page(spec(flags, 2 + i as u32), &[SILENCE_20MS; 3], &mut out).unwrap();
        }
        out.to_vec()
    }

    #[test]
    fn valid_stream_yields_timed_packets() {
        let mut ing = OggIngest::new();
        let mut out = Vec::new();
        ing.push(
            &stream(&OpusHead::new(2).to_bytes(), 2, false),
            1_000_000,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 6);
        assert_eq!(ing.head().unwrap().channels, 2);
        let times: Vec<u64> = out[..3].iter().map(|p| p.capture_us).collect();
        assert_eq!(times, vec![960_000, 980_000, 1_000_000]);
    }

    #[test]
    fn vorbis_is_refused_by_name() {
        let mut ing = OggIngest::new();
        let err = ing
            .push(
                &stream(b"\x01vorbis\0\0\0\0\x02\x44\xac", 1, false),
                0,
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), "wrong_codec");
        assert!(err.to_string().contains("Vorbis"));
    }

    #[test]
    fn chained_streams_are_followed() {
        let mut bytes = stream(&OpusHead::new(1).to_bytes(), 2, true);
        bytes.extend(stream(&OpusHead::new(2).to_bytes(), 1, false));
        let mut ing = OggIngest::new();
        let mut out = Vec::new();
        ing.push(&bytes, 0, &mut out).unwrap();
        assert_eq!(out.len(), 9);
        assert_eq!(ing.head().unwrap().channels, 2);
    }

    #[test]
    fn audio_before_headers_and_headers_in_audio_are_refused() {
        let bytes = stream(&OpusHead::new(1).to_bytes(), 1, false);
        // Drop the OpusHead page: the tags page comes first, without BOS.
        let head_page_len = 27 + 1 + 19;
        let mut ing = OggIngest::new();
        assert_eq!(
            ing.push(&bytes[head_page_len..], 0, &mut Vec::new())
                .unwrap_err()
                .kind(),
            "bad_structure"
        );
        // Bad TOC: a code-3 packet with zero frames.
        let mut out = BytesMut::new();
        let spec = |flags, seq| PageSpec {
            flags,
            granule: 0,
            serial: 1,
            seq,
        };
        write_page(spec(FLAG_BOS, 0), &[OpusHead::new(1).to_bytes()], &mut out).unwrap();
        write_page(spec(0, 1), &[opus::tags("x", &[])], &mut out).unwrap();
        write_page(spec(0, 2), &[[0xfb, 0x00]], &mut out).unwrap();
        let err = OggIngest::new().push(&out, 0, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), "bad_opus");
    }

    #[test]
    fn a_source_dripping_audio_slower_than_half_real_time_is_dropped() {
        let mut m = MinRate::new(0, 10_000_000, 0.5);
        // Real time: 20 ms every 20 ms for 10 s.
        for i in 1..=500u64 {
            assert_eq!(m.record(960, i * 20_000), Ok(()));
        }
        // Then 20 ms of audio every 100 ms: 20 % of real time.
        let mut result = Ok(());
        for i in 1..=101u64 {
            result = result.and(m.record(960, 10_000_000 + i * 100_000));
        }
        let ratio = result.unwrap_err();
        assert!((ratio - 0.2).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn pacer_allows_a_burst_then_asks_to_wait() {
        let mut p = Pacer::new(0, 2_000_000);
        // 1 s of audio at t=0: inside the burst.
        assert_eq!(p.ahead_us(48_000, 0), 0);
        // 3 s more at t=0: 2 s over the allowance.
        assert_eq!(p.ahead_us(144_000, 0), 2_000_000);
        // At t=4 s the source is no longer ahead.
        assert_eq!(p.ahead_us(0, 4_000_000), 0);
    }
}
