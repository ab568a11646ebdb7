//! What a space is, apart from its audio: identity, host key, title, schedule and state.
//!
//! Contract: a space moves `Scheduled → Live → Ended` and never back; [`SpaceInfo::go_live`] and
//! [`SpaceInfo::end`] are the only transitions. Inputs from the API are checked by
//! [`NewSpace::validate`] before anything is created.

use std::fmt;

/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// Where a space is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceState {
    /// Created; no audio has arrived yet.
    Scheduled,
    /// Audio has arrived; listeners hear the live edge.
    Live,
    /// Ended by its host; it takes no source and no listener.
    Ended,
}

impl SpaceState {
    /// Lower-case name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            SpaceState::Scheduled => "scheduled",
            SpaceState::Live => "live",
            SpaceState::Ended => "ended",
        }
    }
}

/// Why a request to create a space was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaceError {
    /// The title is empty or only whitespace.
    EmptyTitle,
    /// The title is longer than [`MAX_TITLE_CHARS`].
    TitleTooLong(usize),
    /// The title holds control characters.
    TitleControlChars,
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceError::EmptyTitle => write!(f, "title must not be empty"),
            SpaceError::TitleTooLong(n) => write!(
                f,
                "title has {n} characters, at most {MAX_TITLE_CHARS} are allowed"
            ),
            SpaceError::TitleControlChars => write!(f, "title must not contain control characters"),
        }
    }
}

impl std::error::Error for SpaceError {}

/// A request to create a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSpace {
    /// Title shown to listeners.
    pub title: String,
    /// Scheduled start, seconds since the Unix epoch, if announced.
    pub scheduled_start: Option<u64>,
}

impl NewSpace {
    /// Checks the request; returns it with the title trimmed.
    pub fn validate(mut self) -> Result<Self, SpaceError> {
        self.title = self.title.trim().to_owned();
        let chars = self.title.chars().count();
        if chars == 0 {
            return Err(SpaceError::EmptyTitle);
        }
        if chars > MAX_TITLE_CHARS {
            return Err(SpaceError::TitleTooLong(chars));
        }
        if self.title.chars().any(char::is_control) {
            return Err(SpaceError::TitleControlChars);
        }
        Ok(self)
    }
}

/// A space's identity and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceInfo {
    /// URL-safe identifier.
    pub id: String,
    /// Title shown to listeners.
    pub title: String,
    /// Scheduled start, seconds since the Unix epoch.
    pub scheduled_start: Option<u64>,
    /// Secret that lets its holder publish to and end the space (empty on a node that knows
    /// the space from the cluster's registry: it holds only the key's hash).
    pub host_key: String,
    /// SHA-256 of the host key, which is what other nodes of a cluster learn.
    pub host_key_sha256: [u8; 32],
    /// Current state.
    pub state: SpaceState,
    /// When it was created, seconds since the Unix epoch.
    pub created_at: u64,
}

impl SpaceInfo {
    /// A new scheduled space. `id_rand` and `key_rand` come from a secure random source.
    pub fn new(req: NewSpace, id_rand: [u8; 8], key_rand: [u8; 16], now_s: u64) -> Self {
        SpaceInfo {
            id: base32(&id_rand),
            title: req.title,
            scheduled_start: req.scheduled_start,
            host_key: hex(&key_rand),
            host_key_sha256: key_hash(&hex(&key_rand)),
            state: SpaceState::Scheduled,
            created_at: now_s,
        }
    }

    /// Audio arrived: a scheduled space goes live. Returns false if the space has ended.
    pub fn go_live(&mut self) -> bool {
        match self.state {
            SpaceState::Ended => false,
            _ => {
                self.state = SpaceState::Live;
                true
            }
        }
    }

    /// The host ended the space.
    pub fn end(&mut self) {
        self.state = SpaceState::Ended;
    }

    /// True when `presented` is this space's host key (compared in constant time).
    pub fn key_matches(&self, presented: &str) -> bool {
        if self.host_key.is_empty() {
            return constant_time_eq(&self.host_key_sha256, &key_hash(presented));
        }
        constant_time_eq(self.host_key.as_bytes(), presented.as_bytes())
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True for strings that can be space identifiers (what [`SpaceInfo::new`] makes).
pub fn is_valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// SHA-256 of a host key.
pub fn key_hash(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut acc = 0u64;
    for &b in bytes {
        acc = (acc << 8) | b as u64;
    }
    (0..12)
        .map(|i| ALPHABET[((acc >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(title: &str) -> NewSpace {
        NewSpace {
            title: title.into(),
            scheduled_start: None,
        }
    }

    #[test]
    fn titles_are_checked_and_trimmed() {
        assert_eq!(
            req("  Morning show ").validate().unwrap().title,
            "Morning show"
        );
        assert_eq!(req("   ").validate(), Err(SpaceError::EmptyTitle));
        assert_eq!(
            req(&"x".repeat(201)).validate(),
            Err(SpaceError::TitleTooLong(201))
        );
        assert_eq!(
            req("a\u{7}b").validate(),
            Err(SpaceError::TitleControlChars)
        );
    }

    #[test]
    fn state_moves_forward_only() {
        let mut s = SpaceInfo::new(req("t"), [1; 8], [2; 16], 0);
        assert_eq!(s.state, SpaceState::Scheduled);
        assert!(s.go_live());
        assert_eq!(s.state, SpaceState::Live);
        s.end();
        assert!(!s.go_live());
        assert_eq!(s.state, SpaceState::Ended);
    }

    #[test]
    fn ids_are_url_safe_and_keys_compare_exactly() {
        let s = SpaceInfo::new(req("t"), [0xab; 8], [0xcd; 16], 0);
        assert!(is_valid_id(&s.id));
        assert_eq!(s.host_key.len(), 32);
        assert!(s.key_matches(&s.host_key.clone()));
        // A node that knows only the key's hash verifies it just as well.
        let replica = SpaceInfo {
            host_key: String::new(),
            ..s.clone()
        };
        assert!(replica.key_matches(&s.host_key));
        assert!(!replica.key_matches("") && !replica.key_matches("0123"));
        assert!(!s.key_matches("cd"));
        assert!(!s.key_matches(&"0".repeat(32)));
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id(""));
    }
}
