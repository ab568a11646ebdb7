//! Why something was refused, as types: one enum per metric, each variant carrying its label.
//!
//! Contract: a refusal reason is never a string until it is rendered. Counters are arrays
//! indexed by [`ShieldReason::index`] / [`IngestReason::index`], and the metrics list
//! [`ShieldReason::ALL`] / [`IngestReason::ALL`], so a new variant gets its own counter and its
//! own series by construction (the enums, `ALL` and the labels come from one list), and cannot
//! land under another label. The labels are the values scripts read; keep them.

use crate::ingest::IngestError;
use levee_media::ogg::OggError;
use levee_media::opus::OpusError;

/// Declares a reason enum with its labels, `ALL` (in metric order) and `COUNT` from one list.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in the order the metrics list them (position = [`Self::index`]).
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];
            /// Number of variants.
            pub const COUNT: usize = Self::ALL.len();

            /// The label of this reason in its metric.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`]: the index of this reason's counter.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }
    };
}

reasons! {
    /// Why the shield refused a connection or a request
    /// (`levee_shield_refused_total{reason}`).
    ShieldReason {
        /// The source is banned.
        Banned => "banned",
        /// Too many open connections from the address or its network.
        ConnLimit => "conn_limit",
        /// Connecting too fast.
        ConnRate => "conn_rate",
        /// Asking to join too fast.
        JoinRate => "join_rate",
        /// A ticket or a place in line was forged, expired, or for another space or network.
        Ticket => "ticket",
        /// A proof-of-work solution was wrong, replayed or too old.
        Challenge => "challenge",
        /// The space's line holds its maximum.
        LineFull => "line_full",
        /// The space holds its maximum of listeners.
        SpaceFull => "space_full",
        /// The node holds its maximum of listeners (the rest is kept for hosts).
        NodeFull => "node_full",
        /// The space has ended.
        SpaceEnded => "space_ended",
        /// The node issued as many challenges as its replay window covers in a lifetime.
        ChallengeBudget => "challenge_budget",
    }
}

reasons! {
    /// Why a source was refused or dropped (`levee_ingest_errors_total{reason}`).
    IngestReason {
        /// The bytes are not an Ogg stream.
        NotOgg => "not_ogg",
        /// An Ogg page's CRC does not match.
        BadCrc => "bad_crc",
        /// A page or packet exceeds its bound.
        TooLarge => "too_large",
        /// Another fault of the Ogg container.
        BadOgg => "bad_ogg",
        /// The stream carries another codec.
        WrongCodec => "wrong_codec",
        /// Invalid Opus headers or packets.
        BadOpus => "bad_opus",
        /// Header packets missing or misplaced, or a message of the wrong kind.
        BadStructure => "bad_structure",
        /// A missing or wrong host key.
        BadKey => "bad_key",
        /// A broken WebSocket frame or message.
        BadFrame => "bad_frame",
        /// Silent for too long, or slower than real time.
        Idle => "idle",
    }
}

impl IngestReason {
    /// The HTTP status an Icecast source is refused with for this reason.
    pub const fn http_status(self) -> u16 {
        match self {
            IngestReason::TooLarge => 413,
            IngestReason::WrongCodec => 415,
            IngestReason::BadKey => 401,
            IngestReason::Idle => 408,
            IngestReason::NotOgg
            | IngestReason::BadCrc
            | IngestReason::BadOgg
            | IngestReason::BadOpus
            | IngestReason::BadStructure
            | IngestReason::BadFrame => 400,
        }
    }
}

impl From<&IngestError> for IngestReason {
    fn from(e: &IngestError) -> Self {
        match e {
            IngestError::Ogg(OggError::NotOgg { .. }) => IngestReason::NotOgg,
            IngestError::Ogg(OggError::BadCrc { .. }) => IngestReason::BadCrc,
            IngestError::Ogg(OggError::PageTooLarge { .. } | OggError::PacketTooLarge { .. }) => {
                IngestReason::TooLarge
            }
            IngestError::Ogg(_) => IngestReason::BadOgg,
            IngestError::Opus(OpusError::WrongCodec(_)) => IngestReason::WrongCodec,
            IngestError::Opus(OpusError::PacketTooLarge(_)) => IngestReason::TooLarge,
            IngestError::Opus(_) => IngestReason::BadOpus,
            IngestError::Structure(_) => IngestReason::BadStructure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_reason_has_a_distinct_label_and_its_own_index() {
        for (i, r) in ShieldReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in IngestReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let shield: BTreeSet<_> = ShieldReason::ALL.iter().map(|r| r.label()).collect();
        let ingest: BTreeSet<_> = IngestReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(shield.len(), ShieldReason::COUNT);
        assert_eq!(ingest.len(), IngestReason::COUNT);
        // The label values scripts rely on, in the order the metrics have always listed them.
        assert_eq!(
            ShieldReason::ALL.map(ShieldReason::label),
            [
                "banned",
                "conn_limit",
                "conn_rate",
                "join_rate",
                "ticket",
                "challenge",
                "line_full",
                "space_full",
                "node_full",
                "space_ended",
                "challenge_budget",
            ]
        );
        assert_eq!(
            IngestReason::ALL.map(IngestReason::label),
            [
                "not_ogg",
                "bad_crc",
                "too_large",
                "bad_ogg",
                "wrong_codec",
                "bad_opus",
                "bad_structure",
                "bad_key",
                "bad_frame",
                "idle",
            ]
        );
    }

    #[test]
    fn ingest_errors_map_to_the_reason_their_kind_names() {
        let errors = [
            IngestError::Ogg(OggError::NotOgg { offset: 0 }),
            IngestError::Ogg(OggError::UnsupportedVersion(1)),
            IngestError::Ogg(OggError::BadCrc {
                page_seq: 0,
                stored: 1,
                computed: 2,
            }),
            IngestError::Ogg(OggError::PageTooLarge { size: 2, limit: 1 }),
            IngestError::Ogg(OggError::PacketTooLarge { size: 2, limit: 1 }),
            IngestError::Ogg(OggError::BrokenContinuation { page_seq: 3 }),
            IngestError::Opus(OpusError::WrongCodec("Vorbis")),
            IngestError::Opus(OpusError::NotOpusHead),
            IngestError::Opus(OpusError::EmptyPacket),
            IngestError::Opus(OpusError::PacketTooLarge(9_000)),
            IngestError::Structure("OpusTags missing"),
        ];
        for e in &errors {
            assert_eq!(IngestReason::from(e).label(), e.kind(), "{e:?}");
        }
        assert_eq!(IngestReason::TooLarge.http_status(), 413);
        assert_eq!(IngestReason::WrongCodec.http_status(), 415);
        assert_eq!(IngestReason::NotOgg.http_status(), 400);
    }
}
