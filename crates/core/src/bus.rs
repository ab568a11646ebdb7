//! What nodes of a cluster say to each other over the bus (NATS): a space's audio packets,
//! numbered by the origin, and the registry's record of a space. Pure codecs, bounded, with a
//! reason for every refusal: a message from the bus is not trusted, and one that does not
//! parse is dropped and counted, never heard and never able to stop a node.
//!
//! Audio message, big-endian (`docs/protocol.md`, "Between nodes"):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `LVA1` |
//! | 8 | origin node's identity (random at its start) |
//! | 8 | sequence number (the origin's) |
//! | 8 | pts, 48 kHz samples since the stream began |
//! | 8 | capture time, µs since the Unix epoch |
//! | 4 | duration, 48 kHz samples (1 ..= [`MAX_PACKET_SAMPLES`]) |
//! | rest | the Opus packet (1 ..= [`MAX_PACKET`] bytes) |
//!
//! Registry record: magic `LVR1`, then the fields of [`SpaceRecord`] in order, integers
//! big-endian and strings as a 2-byte length and UTF-8, at most [`MAX_RECORD`] bytes.

use crate::packet::Packet;
use crate::space::{is_valid_id, SpaceState, MAX_TITLE_CHARS};
use bytes::{BufMut, Bytes, BytesMut};
use levee_media::opus::{MAX_PACKET, MAX_PACKET_SAMPLES};

/// Magic of an audio message.
pub const AUDIO_MAGIC: &[u8; 4] = b"LVA1";
/// Bytes of an audio message before the Opus packet.
pub const AUDIO_HEADER: usize = 4 + 8 * 4 + 4;
/// Longest audio message.
pub const MAX_AUDIO_MESSAGE: usize = AUDIO_HEADER + MAX_PACKET;
/// Magic of a registry record.
pub const RECORD_MAGIC: &[u8; 4] = b"LVR1";
/// Longest registry record.
pub const MAX_RECORD: usize = 2048;
/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;
/// Magic of a load report (each space: listeners and the demand on its line).
pub const LOAD_MAGIC: &[u8; 4] = b"LVL2";
/// Magic of the first load report format (listeners only), still read: its demand is 0.
pub const LOAD_MAGIC_V1: &[u8; 4] = b"LVL1";
/// Spaces one load report names at most (a node with more sends several).
pub const MAX_LOAD_ENTRIES: usize = 1024;
/// Longest load report.
pub const MAX_LOAD_MESSAGE: usize = 4 + 8 + 2 + MAX_LOAD_ENTRIES * (1 + 32 + 4 + 4);

/// Magic of a node's audience report for one space (`crate::audience::Audience`).
pub const AUDIENCE_MAGIC: &[u8; 4] = b"LVN1";
/// Seconds of open sessions an audience report carries at most (for the cluster's peak).
pub const MAX_AUDIENCE_RECENT: usize = 32;
/// Longest audience report.
pub const MAX_AUDIENCE_MESSAGE: usize =
    4 + 8 + 1 + 32 + 1 + MAX_AUDIENCE_RECENT * 12 + crate::audience::MAX_ENCODED;

/// Why a bus message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// Shorter than its header.
    Truncated,
    /// Longer than the bound.
    TooLong(usize),
    /// Not one of ours (or another version).
    BadMagic,
    /// A field out of range.
    Invalid(&'static str),
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::Truncated => write!(f, "truncated message"),
            BusError::TooLong(n) => write!(f, "message of {n} bytes is over the bound"),
            BusError::BadMagic => write!(f, "not a levee message of this version"),
            BusError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for BusError {}

/// An audio packet as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusPacket {
    /// The origin node's identity.
    pub origin: u64,
    /// The packet, numbered by the origin.
    pub packet: Packet,
}

/// Encodes `p`, sent by node `origin`.
pub fn encode_audio(origin: u64, p: &Packet) -> Bytes {
    let mut b = BytesMut::with_capacity(AUDIO_HEADER + p.data.len());
    b.put_slice(AUDIO_MAGIC);
    b.put_u64(origin);
    b.put_u64(p.seq);
    b.put_u64(p.pts);
    b.put_u64(p.capture_us);
    b.put_u32(p.samples);
    b.put_slice(&p.data);
    b.freeze()
}

/// Decodes an audio message (the packet's bytes share `msg`'s memory).
pub fn decode_audio(msg: &Bytes) -> Result<BusPacket, BusError> {
    if msg.len() > MAX_AUDIO_MESSAGE {
        return Err(BusError::TooLong(msg.len()));
    }
    if msg.len() < AUDIO_HEADER {
        return Err(BusError::Truncated);
    }
    if &msg[..4] != AUDIO_MAGIC {
        return Err(BusError::BadMagic);
    }
    let u64_at = |at: usize| u64::from_be_bytes(msg[at..at + 8].try_into().unwrap_or([0; 8]));
    let samples = u32::from_be_bytes(msg[36..40].try_into().unwrap_or([0; 4]));
    if samples == 0 || samples > MAX_PACKET_SAMPLES {
        return Err(BusError::Invalid("duration"));
    }
    if msg.len() == AUDIO_HEADER {
        return Err(BusError::Invalid("empty packet"));
    }
    Ok(BusPacket {
        origin: u64_at(4),
        packet: Packet {
            seq: u64_at(12),
            pts: u64_at(20),
            capture_us: u64_at(28),
            samples,
            data: msg.slice(AUDIO_HEADER..),
        },
    })
}

/// A space as the cluster's registry holds it (one record per space, newest write wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceRecord {
    /// Identifier.
    pub id: String,
    /// Title.
    pub title: String,
    /// Scheduled start, seconds since the Unix epoch.
    pub scheduled_start: Option<u64>,
    /// SHA-256 of the host key: any node verifies the key, none learns it.
    pub host_key_sha256: [u8; 32],
    /// State.
    pub state: SpaceState,
    /// Created, seconds since the Unix epoch.
    pub created_at: u64,
    /// The node whose source feeds the space (empty: none yet).
    pub origin: String,
    /// That node's identity in audio messages: only its packets are heard (0: none yet).
    pub origin_id: u64,
    /// When the record was written, µs since the Unix epoch.
    pub updated_us: u64,
}

fn state_byte(s: SpaceState) -> u8 {
    match s {
        SpaceState::Scheduled => 0,
        SpaceState::Live => 1,
        SpaceState::Ended => 2,
    }
}

/// Encodes a registry record.
pub fn encode_record(r: &SpaceRecord) -> Bytes {
    let mut b = BytesMut::with_capacity(128 + r.title.len());
    b.put_slice(RECORD_MAGIC);
    let put_str = |b: &mut BytesMut, s: &str| {
        b.put_u16(s.len() as u16);
        b.put_slice(s.as_bytes());
    };
    put_str(&mut b, &r.id);
    put_str(&mut b, &r.title);
    b.put_u64(r.scheduled_start.map_or(u64::MAX, |s| s));
    b.put_slice(&r.host_key_sha256);
    b.put_u8(state_byte(r.state));
    b.put_u64(r.created_at);
    put_str(&mut b, &r.origin);
    b.put_u64(r.origin_id);
    b.put_u64(r.updated_us);
    b.freeze()
}

/// Decodes and checks a registry record.
pub fn decode_record(msg: &[u8]) -> Result<SpaceRecord, BusError> {
    if msg.len() > MAX_RECORD {
        return Err(BusError::TooLong(msg.len()));
    }
    let mut r = Reader { b: msg, at: 0 };
    if r.take(4)? != RECORD_MAGIC {
        return Err(BusError::BadMagic);
    }
    let id = r.string("id")?;
    if !is_valid_id(&id) {
        return Err(BusError::Invalid("id"));
    }
    let title = r.string("title")?;
    if title.trim().is_empty() || title.chars().count() > MAX_TITLE_CHARS {
        return Err(BusError::Invalid("title"));
    }
    let scheduled_start = Some(r.u64()?).filter(|&s| s != u64::MAX);
    let host_key_sha256: [u8; 32] = r.take(32)?.try_into().map_err(|_| BusError::Truncated)?;
    let state = match r.take(1)?[0] {
        0 => SpaceState::Scheduled,
        1 => SpaceState::Live,
        2 => SpaceState::Ended,
        _ => return Err(BusError::Invalid("state")),
    };
    let created_at = r.u64()?;
    let origin = r.string("origin")?;
    if origin.len() > MAX_NODE_NAME {
        return Err(BusError::Invalid("origin"));
    }
    let origin_id = r.u64()?;
    let updated_us = r.u64()?;
    if r.at != msg.len() {
        return Err(BusError::Invalid("trailing bytes"));
    }
    Ok(SpaceRecord {
        id,
        title,
        scheduled_start,
        host_key_sha256,
        state,
        created_at,
        origin,
        origin_id,
        updated_us,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BusError> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or(BusError::Truncated)?;
        self.at += n;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, BusError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| BusError::Truncated)?,
        ))
    }
    fn string(&mut self, what: &'static str) -> Result<String, BusError> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| BusError::Truncated)?);
        let s = self.take(n as usize)?;
        String::from_utf8(s.to_vec()).map_err(|_| BusError::Invalid(what))
    }
}

/// One space in a load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceLoad {
    /// The space.
    pub id: String,
    /// Its listeners on the reporting node.
    pub listeners: u32,
    /// What its line on that node asks of the outflow (`admission::Line::demand`).
    pub demand: u32,
}

/// A node's listeners and line demand per space, as it reports them about once a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The reporting node's identity.
    pub node: u64,
    /// The spaces it reports.
    pub spaces: Vec<SpaceLoad>,
}

/// Encodes a load report of at most [`MAX_LOAD_ENTRIES`] spaces (the rest is left out).
pub fn encode_load(node: u64, spaces: &[SpaceLoad]) -> Bytes {
    let spaces = &spaces[..spaces.len().min(MAX_LOAD_ENTRIES)];
    let mut b = BytesMut::with_capacity(14 + spaces.len() * 28);
    b.put_slice(LOAD_MAGIC);
    b.put_u64(node);
    b.put_u16(spaces.len() as u16);
    for sp in spaces {
        b.put_u8(sp.id.len() as u8);
        b.put_slice(sp.id.as_bytes());
        b.put_u32(sp.listeners);
        b.put_u32(sp.demand);
    }
    b.freeze()
}

/// Decodes and checks a load report (of either format).
pub fn decode_load(msg: &[u8]) -> Result<LoadReport, BusError> {
    if msg.len() > MAX_LOAD_MESSAGE {
        return Err(BusError::TooLong(msg.len()));
    }
    let mut r = Reader { b: msg, at: 0 };
    let with_demand = match r.take(4)? {
        m if m == LOAD_MAGIC => true,
        m if m == LOAD_MAGIC_V1 => false,
        _ => return Err(BusError::BadMagic),
    };
    let node = r.u64()?;
    let n = u16::from_be_bytes(r.take(2)?.try_into().map_err(|_| BusError::Truncated)?) as usize;
    if n > MAX_LOAD_ENTRIES {
        return Err(BusError::Invalid("space count"));
    }
    let mut spaces = Vec::with_capacity(n);
    let u32_of = |r: &mut Reader| -> Result<u32, BusError> {
        Ok(u32::from_be_bytes(
            r.take(4)?.try_into().map_err(|_| BusError::Truncated)?,
        ))
    };
    for _ in 0..n {
        let len = r.take(1)?[0] as usize;
        let id = std::str::from_utf8(r.take(len)?).map_err(|_| BusError::Invalid("id"))?;
        if !is_valid_id(id) {
            return Err(BusError::Invalid("id"));
        }
        let id = id.to_owned();
        let listeners = u32_of(&mut r)?;
        let demand = if with_demand { u32_of(&mut r)? } else { 0 };
        spaces.push(SpaceLoad {
            id,
            listeners,
            demand,
        });
    }
    if r.at != msg.len() {
        return Err(BusError::Invalid("trailing bytes"));
    }
    Ok(LoadReport { node, spaces })
}

/// A node's audience numbers for one space, as it reports them every few seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceReport {
    /// The reporting node's identity.
    pub node: u64,
    /// The space.
    pub space: String,
    /// Its open sessions on that node in its last seconds: (second since the epoch, open
    /// sessions), oldest first, at most [`MAX_AUDIENCE_RECENT`].
    pub recent: Vec<(u64, u32)>,
    /// Its numbers on that node.
    pub audience: crate::audience::Audience,
}

/// Encodes an audience report (the newest [`MAX_AUDIENCE_RECENT`] of `recent`, which is
/// oldest first).
pub fn encode_audience(
    node: u64,
    space: &str,
    recent: &[(u64, u32)],
    audience: &crate::audience::Audience,
) -> Bytes {
    let recent = &recent[recent.len().saturating_sub(MAX_AUDIENCE_RECENT)..];
    let a = audience.encode();
    let mut b = BytesMut::with_capacity(14 + space.len() + recent.len() * 12 + a.len());
    b.put_slice(AUDIENCE_MAGIC);
    b.put_u64(node);
    b.put_u8(space.len() as u8);
    b.put_slice(space.as_bytes());
    b.put_u8(recent.len() as u8);
    for (t, n) in recent {
        b.put_u64(*t);
        b.put_u32(*n);
    }
    b.put_slice(&a);
    b.freeze()
}

/// Decodes and checks an audience report.
pub fn decode_audience(msg: &[u8]) -> Result<AudienceReport, BusError> {
    if msg.len() > MAX_AUDIENCE_MESSAGE {
        return Err(BusError::TooLong(msg.len()));
    }
    let mut r = Reader { b: msg, at: 0 };
    if r.take(4)? != AUDIENCE_MAGIC {
        return Err(BusError::BadMagic);
    }
    let node = r.u64()?;
    let len = r.take(1)?[0] as usize;
    let space = std::str::from_utf8(r.take(len)?).map_err(|_| BusError::Invalid("id"))?;
    if !is_valid_id(space) {
        return Err(BusError::Invalid("id"));
    }
    let n = r.take(1)?[0] as usize;
    if n > MAX_AUDIENCE_RECENT {
        return Err(BusError::Invalid("recent seconds"));
    }
    let mut recent: Vec<(u64, u32)> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = r.u64()?;
        let c = u32::from_be_bytes(r.take(4)?.try_into().map_err(|_| BusError::Truncated)?);
        if recent.last().is_some_and(|&(l, _)| l >= t) {
            return Err(BusError::Invalid("recent order"));
        }
        recent.push((t, c));
    }
    let audience = crate::audience::Audience::decode(&msg[r.at..])
        .map_err(|_| BusError::Invalid("audience state"))?;
    Ok(AudienceReport {
        node,
        space: space.to_owned(),
        recent,
        audience,
    })
}

/// Whether `name` may name a node: 1 to [`MAX_NODE_NAME`] bytes of `[A-Za-z0-9._-]`.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u64) -> Packet {
        Packet {
            seq,
            pts: seq * 960,
            samples: 960,
            capture_us: 1_700_000_000_000_000 + seq * 20_000,
            data: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        }
    }

    #[test]
    fn an_audience_report_round_trips_and_a_broken_one_is_refused() {
        let mut a = crate::audience::Audience::new(10_000_000);
        a.attempt();
        a.join(1_700_000_000_000_000);
        a.view(42, false);
        let recent = [(1_700_000_000, 3), (1_700_000_001, 4)];
        let m = encode_audience(7, "abcdefghjkmn", &recent, &a);
        let r = decode_audience(&m).unwrap();
        assert_eq!(
            (r.node, r.space.as_str(), &r.audience),
            (7, "abcdefghjkmn", &a)
        );
        assert_eq!(r.recent, recent);
        // Seconds out of order are refused.
        let swapped = encode_audience(7, "abcdefghjkmn", &[recent[1], recent[0]], &a);
        assert_eq!(
            decode_audience(&swapped),
            Err(BusError::Invalid("recent order"))
        );
        for cut in 0..m.len() {
            assert!(decode_audience(&m[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = m.to_vec();
        bad[13] = b'/';
        assert_eq!(decode_audience(&bad), Err(BusError::Invalid("id")));
        let mut bad = m.to_vec();
        bad[0] = b'X';
        assert_eq!(decode_audience(&bad), Err(BusError::BadMagic));
        // The fuzz target's seed (fuzz/corpus/audience_state) is a valid report.
        let seed = include_bytes!("../../../fuzz/corpus/audience_state/report");
        assert_eq!(decode_audience(seed).map(|r| r.node), Ok(7));
        let long = vec![0u8; MAX_AUDIENCE_MESSAGE + 1];
        assert!(matches!(decode_audience(&long), Err(BusError::TooLong(_))));
    }

    fn record() -> SpaceRecord {
        SpaceRecord {
            id: "abcdefghjkmn".into(),
            title: "Evening talk".into(),
            scheduled_start: Some(1_700_000_100),
            host_key_sha256: [7; 32],
            state: SpaceState::Live,
            created_at: 1_700_000_000,
            origin: "node-a".into(),
            origin_id: 99,
            updated_us: 1_700_000_000_123_456,
        }
    }

    #[test]
    fn audio_round_trips_and_every_cut_is_refused() {
        let m = encode_audio(42, &packet(9));
        assert_eq!(
            decode_audio(&m),
            Ok(BusPacket {
                origin: 42,
                packet: packet(9)
            })
        );
        // A bus message arrives whole (NATS frames it): only a header cut short is possible.
        for cut in 0..=AUDIO_HEADER {
            assert!(decode_audio(&m.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = m.to_vec();
        bad[0] = b'X';
        assert_eq!(decode_audio(&Bytes::from(bad)), Err(BusError::BadMagic));
        let mut zero = m.to_vec();
        zero[36..40].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            decode_audio(&Bytes::from(zero)),
            Err(BusError::Invalid("duration"))
        );
        let huge = Bytes::from(vec![0u8; MAX_AUDIO_MESSAGE + 1]);
        assert_eq!(decode_audio(&huge), Err(BusError::TooLong(huge.len())));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused_with_a_reason() {
        let r = record();
        let m = encode_record(&r);
        assert_eq!(decode_record(&m), Ok(r.clone()));
        let unscheduled = SpaceRecord {
            scheduled_start: None,
            origin: String::new(),
            ..r.clone()
        };
        assert_eq!(decode_record(&encode_record(&unscheduled)), Ok(unscheduled));
        for cut in 0..m.len() {
            assert!(decode_record(&m[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = m.to_vec();
        trailing.push(0);
        assert_eq!(
            decode_record(&trailing),
            Err(BusError::Invalid("trailing bytes"))
        );
        let bad_id = SpaceRecord {
            id: "../etc".into(),
            ..r.clone()
        };
        assert_eq!(
            decode_record(&encode_record(&bad_id)),
            Err(BusError::Invalid("id"))
        );
        let empty_title = SpaceRecord {
            title: " ".into(),
            ..r
        };
        assert_eq!(
            decode_record(&encode_record(&empty_title)),
            Err(BusError::Invalid("title"))
        );
    }

    #[test]
    fn load_reports_round_trip_and_bad_ones_are_refused() {
        let load = |id: &str, listeners, demand| SpaceLoad {
            id: id.to_owned(),
            listeners,
            demand,
        };
        let spaces = vec![load("abc", 12_000, 40), load("x2", 0, 0)];
        let m = encode_load(5, &spaces);
        assert_eq!(decode_load(&m), Ok(LoadReport { node: 5, spaces }));
        for cut in 0..m.len() {
            assert!(decode_load(&m[..cut]).is_err(), "cut at {cut}");
        }
        let bad = encode_load(5, &[load("A/B", 1, 0)]);
        assert_eq!(decode_load(&bad), Err(BusError::Invalid("id")));
        let many: Vec<SpaceLoad> = (0..MAX_LOAD_ENTRIES + 5)
            .map(|i| load(&format!("s{i}"), 1, u32::MAX))
            .collect();
        let m = encode_load(1, &many);
        assert!(m.len() <= MAX_LOAD_MESSAGE);
        assert_eq!(decode_load(&m).unwrap().spaces.len(), MAX_LOAD_ENTRIES);
        // The first format (listeners only) still reads, with no demand.
        let mut v1 = b"LVL1".to_vec();
        v1.extend_from_slice(&9u64.to_be_bytes());
        v1.extend_from_slice(&1u16.to_be_bytes());
        v1.extend_from_slice(&[3, b'a', b'b', b'c', 0, 0, 0, 7]);
        assert_eq!(
            decode_load(&v1),
            Ok(LoadReport {
                node: 9,
                spaces: vec![load("abc", 7, 0)]
            })
        );
        v1.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(decode_load(&v1), Err(BusError::Invalid("trailing bytes")));
    }

    #[test]
    fn node_names_are_short_and_plain() {
        assert!(is_valid_node_name("edge-1.eu_west"));
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!is_valid_node_name(bad), "{bad}");
        }
    }
}
