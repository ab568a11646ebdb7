//! Stateless signed tokens: join tickets, places in line and proof-of-work challenges.
//!
//! Contract: any node holding the same secret verifies a token alone, with no shared state.
//! Keys rotate every `period_s` seconds: the key of epoch `e` is `HMAC-SHA256(secret, e)`, a
//! token names its epoch, and tokens of the current and the previous epoch verify (the
//! overlap), so rotation needs no coordination. A token is `kind.epoch.payload.mac` in
//! URL-safe base64; verification checks length bounds before any hashing, then the MAC
//! (constant time), then expiry and binding. A refused token allocates no per-listener state.

use crate::source::Cidr;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in characters (checked before anything else).
pub const MAX_TOKEN_LEN: usize = 256;
/// Bytes of MAC kept (128 bits).
const MAC_LEN: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this kind, or badly encoded.
    Malformed,
    /// Signed with a key that is no longer (or not yet) accepted.
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadSignature,
    /// Past its expiry.
    Expired,
    /// Issued for another space.
    WrongSpace,
    /// Bound to another source network.
    WrongSource,
}

impl TokenError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::WrongSpace => "wrong_space",
            TokenError::WrongSource => "wrong_source",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::UnknownKey => "token signed with a retired key: ask for a new one",
            TokenError::BadSignature => "token signature is invalid",
            TokenError::Expired => "token has expired: ask for a new one",
            TokenError::WrongSpace => "token was issued for another space",
            TokenError::WrongSource => "token was issued to another network",
        })
    }
}

impl std::error::Error for TokenError {}

/// Signs and verifies tokens with rotating keys derived from one secret.
#[derive(Clone)]
pub struct Signer {
    secret: [u8; 32],
    period_s: u64,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("period_s", &self.period_s)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer whose keys rotate every `period_s` seconds. `secret` is any byte string shared
    /// by the nodes of a cluster (hashed to 32 bytes).
    pub fn new(secret: &[u8], period_s: u64) -> Self {
        Signer {
            secret: Sha256::digest(secret).into(),
            period_s: period_s.max(1),
        }
    }

    fn mac(&self, epoch: u64, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut k = HmacSha256::new_from_slice(&self.secret).expect("any key length");
        k.update(&epoch.to_be_bytes());
        let key = k.finalize().into_bytes();
        let mut m = HmacSha256::new_from_slice(&key).expect("any key length");
        m.update(signed);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Signs `payload` as a token of `kind` at `now_s`.
    pub fn sign(&self, kind: &str, payload: &[u8], now_s: u64) -> String {
        let epoch = now_s / self.period_s;
        let signed = format!("{kind}.{epoch}.{}", B64.encode(payload));
        let mac = self.mac(epoch, signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac))
    }

    /// Checks a token of `kind` and returns its payload.
    pub fn verify(&self, kind: &str, token: &str, now_s: u64) -> Result<Vec<u8>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, mac_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        if parts.next() != Some(kind) {
            return Err(TokenError::Malformed);
        }
        let epoch: u64 = parts
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or(TokenError::Malformed)?;
        let payload = B64
            .decode(parts.next().ok_or(TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        let mac = B64.decode(mac_b64).map_err(|_| TokenError::Malformed)?;
        let current = now_s / self.period_s;
        if epoch > current || epoch + 1 < current {
            return Err(TokenError::UnknownKey);
        }
        let want = self.mac(epoch, signed.as_bytes());
        if !crate::space::constant_time_eq(&want, &mac) {
            return Err(TokenError::BadSignature);
        }
        Ok(payload)
    }
}

/// Reads fixed fields out of a payload, failing as `Malformed` when short.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u64(&mut self) -> Result<u64, TokenError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(TokenError::Malformed)?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*head))
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        let (&b, rest) = self.0.split_first().ok_or(TokenError::Malformed)?;
        self.0 = rest;
        Ok(b)
    }
    fn bytes(&mut self, n: usize) -> Result<&[u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn rest_str(&self) -> Result<String, TokenError> {
        String::from_utf8(self.0.to_vec()).map_err(|_| TokenError::Malformed)
    }
}

fn put_prefix(out: &mut Vec<u8>, prefix: Option<Cidr>) {
    match prefix.map(|c| c.addr()) {
        None => out.push(0),
        Some(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets()[..3]);
        }
        Some(IpAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.octets()[..6]);
        }
    }
}

fn get_prefix(f: &mut Fields<'_>) -> Result<Option<Cidr>, TokenError> {
    Ok(match f.u8()? {
        0 => None,
        4 => {
            let b = f.bytes(3)?;
            Some(Cidr::new(IpAddr::from([b[0], b[1], b[2], 0]), 24))
        }
        6 => {
            let b = f.bytes(6)?;
            let mut o = [0u8; 16];
            o[..6].copy_from_slice(b);
            Some(Cidr::new(IpAddr::from(o), 48))
        }
        _ => return Err(TokenError::Malformed),
    })
}

/// What a join ticket grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The space it admits to.
    pub space: String,
    /// The listener identity it was issued to (random, chosen by the server).
    pub listener: u64,
    /// Last second (since the Unix epoch) at which it opens a stream.
    pub expires_s: u64,
    /// The source network it is bound to, if any (IPv4 /24 or IPv6 /48).
    pub prefix: Option<Cidr>,
}

const TICKET: &str = "t1";

impl Ticket {
    /// Signs the ticket.
    pub fn sign(&self, signer: &Signer, now_s: u64) -> String {
        let mut p = Vec::with_capacity(24 + self.space.len());
        p.extend_from_slice(&self.expires_s.to_be_bytes());
        p.extend_from_slice(&self.listener.to_be_bytes());
        put_prefix(&mut p, self.prefix);
        p.extend_from_slice(self.space.as_bytes());
        signer.sign(TICKET, &p, now_s)
    }

    /// Verifies `token` for a stream of `space` opened from `source` at `now_s`.
    pub fn verify(
        signer: &Signer,
        token: &str,
        space: &str,
        source: IpAddr,
        now_s: u64,
    ) -> Result<Ticket, TokenError> {
        let payload = signer.verify(TICKET, token, now_s)?;
        let mut f = Fields(&payload);
        let t = Ticket {
            expires_s: f.u64()?,
            listener: f.u64()?,
            prefix: get_prefix(&mut f)?,
            space: f.rest_str()?,
        };
        if now_s > t.expires_s {
            return Err(TokenError::Expired);
        }
        if t.space != space {
            return Err(TokenError::WrongSpace);
        }
        if t.prefix.is_some_and(|p| !p.contains(source)) {
            return Err(TokenError::WrongSource);
        }
        Ok(t)
    }
}

/// A place in a space's line: the caller's number, to be presented again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueToken {
    /// The space.
    pub space: String,
    /// The caller's number in the line (see `admission`).
    pub number: u64,
    /// The listener identity the eventual ticket will carry.
    pub listener: u64,
    /// Last second at which the token is honoured.
    pub expires_s: u64,
    /// The line that handed out the number: the issuing node (random at its start). In a
    /// cluster every node runs its own line of the space; another node's number means nothing
    /// here, so a node that did not issue the token places the caller by [`QueueToken::due_ms`].
    pub line: u64,
    /// When the issuing line expected to admit the caller, Unix ms.
    pub due_ms: u64,
}

/// Kind of queue tokens (`q1` had no line and due time).
const QUEUE: &str = "q2";

impl QueueToken {
    /// Signs the token.
    pub fn sign(&self, signer: &Signer, now_s: u64) -> String {
        let mut p = Vec::with_capacity(40 + self.space.len());
        p.extend_from_slice(&self.expires_s.to_be_bytes());
        p.extend_from_slice(&self.number.to_be_bytes());
        p.extend_from_slice(&self.listener.to_be_bytes());
        p.extend_from_slice(&self.line.to_be_bytes());
        p.extend_from_slice(&self.due_ms.to_be_bytes());
        p.extend_from_slice(self.space.as_bytes());
        signer.sign(QUEUE, &p, now_s)
    }

    /// Verifies a token presented for `space` at `now_s`.
    pub fn verify(
        signer: &Signer,
        token: &str,
        space: &str,
        now_s: u64,
    ) -> Result<QueueToken, TokenError> {
        let payload = signer.verify(QUEUE, token, now_s)?;
        let mut f = Fields(&payload);
        let t = QueueToken {
            expires_s: f.u64()?,
            number: f.u64()?,
            listener: f.u64()?,
            line: f.u64()?,
            due_ms: f.u64()?,
            space: f.rest_str()?,
        };
        if now_s > t.expires_s {
            return Err(TokenError::Expired);
        }
        if t.space != space {
            return Err(TokenError::WrongSpace);
        }
        Ok(t)
    }
}

/// A proof-of-work challenge: find a nonce so that `SHA-256(seed ‖ nonce)` starts with
/// `difficulty` zero bits. The seed is itself a signed token, bound to the space and the
/// caller's network, so verifying a challenge needs no server state. It names the node that
/// issued it and that node's counter, which makes every challenge distinct and lets each be
/// spent exactly once (see [`crate::replay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The space.
    pub space: String,
    /// Leading zero bits required.
    pub difficulty: u8,
    /// Last second at which a solution is accepted.
    pub expires_s: u64,
    /// The network it was issued to.
    pub prefix: Option<Cidr>,
    /// The issuing node (random at its start).
    pub origin: u64,
    /// The issuing node's counter: one more per challenge it signs.
    pub counter: u64,
}

/// Kind of challenge seeds (`c1` carried a random salt instead of origin and counter).
const CHALLENGE: &str = "c2";

/// Number of leading zero bits of `hash`.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for &b in hash {
        if b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// `SHA-256(seed ‖ nonce)` as the challenge defines it (the nonce as decimal text).
pub fn pow_hash(seed: &str, nonce: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(nonce.to_string().as_bytes());
    h.finalize().into()
}

/// Finds a nonce for `seed` at `difficulty` (what a client does; expected 2^difficulty hashes).
pub fn solve(seed: &str, difficulty: u8) -> u64 {
    (0u64..)
        .find(|&n| leading_zero_bits(&pow_hash(seed, n)) >= difficulty as u32)
        .expect("a nonce exists")
}

impl Challenge {
    /// Signs the challenge: the result is the seed handed to the client.
    pub fn sign(&self, signer: &Signer, now_s: u64) -> String {
        let mut p = Vec::with_capacity(40 + self.space.len());
        p.extend_from_slice(&self.expires_s.to_be_bytes());
        p.extend_from_slice(&self.origin.to_be_bytes());
        p.extend_from_slice(&self.counter.to_be_bytes());
        p.push(self.difficulty);
        put_prefix(&mut p, self.prefix);
        p.extend_from_slice(self.space.as_bytes());
        signer.sign(CHALLENGE, &p, now_s)
    }

    /// Checks a solution: the seed is genuine, fresh, for this space and network, and
    /// `SHA-256(seed ‖ nonce)` has the difficulty's leading zeros. One hash at most.
    pub fn verify_solution(
        signer: &Signer,
        seed: &str,
        nonce: u64,
        space: &str,
        source: IpAddr,
        now_s: u64,
    ) -> Result<Challenge, TokenError> {
        let payload = signer.verify(CHALLENGE, seed, now_s)?;
        let mut f = Fields(&payload);
        let c = Challenge {
            expires_s: f.u64()?,
            origin: f.u64()?,
            counter: f.u64()?,
            difficulty: f.u8()?,
            prefix: get_prefix(&mut f)?,
            space: f.rest_str()?,
        };
        if now_s > c.expires_s {
            return Err(TokenError::Expired);
        }
        if c.space != space {
            return Err(TokenError::WrongSpace);
        }
        if c.prefix.is_some_and(|p| !p.contains(source)) {
            return Err(TokenError::WrongSource);
        }
        if leading_zero_bits(&pow_hash(seed, nonce)) < c.difficulty as u32 {
            return Err(TokenError::BadSignature);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ticket() -> Ticket {
        Ticket {
            space: "abc".into(),
            listener: 77,
            expires_s: 1_060,
            prefix: Some(Cidr::new(ip("192.0.2.9"), 24)),
        }
    }

    #[test]
    fn ticket_verifies_on_any_node_with_the_secret() {
        let a = Signer::new(b"cluster secret", 600);
        let b = Signer::new(b"cluster secret", 600);
        let tok = ticket().sign(&a, 1_000);
        assert_eq!(
            Ticket::verify(&b, &tok, "abc", ip("192.0.2.200"), 1_000),
            Ok(ticket())
        );
    }

    #[test]
    fn forged_altered_expired_and_misplaced_tickets_are_refused() {
        let s = Signer::new(b"k", 600);
        let tok = ticket().sign(&s, 1_000);
        let other = Signer::new(b"other", 600);
        assert_eq!(
            Ticket::verify(&other, &tok, "abc", ip("192.0.2.1"), 1_000),
            Err(TokenError::BadSignature)
        );
        // Flip one character of the payload.
        let mut parts: Vec<String> = tok.split('.').map(str::to_owned).collect();
        let c = parts[2].pop().unwrap();
        parts[2].push(if c == 'A' { 'B' } else { 'A' });
        let altered = parts.join(".");
        assert!(Ticket::verify(&s, &altered, "abc", ip("192.0.2.1"), 1_000).is_err());
        assert_eq!(
            Ticket::verify(&s, &tok, "abc", ip("192.0.2.1"), 1_061),
            Err(TokenError::Expired)
        );
        assert_eq!(
            Ticket::verify(&s, &tok, "xyz", ip("192.0.2.1"), 1_000),
            Err(TokenError::WrongSpace)
        );
        assert_eq!(
            Ticket::verify(&s, &tok, "abc", ip("198.51.100.1"), 1_000),
            Err(TokenError::WrongSource)
        );
        assert_eq!(
            Ticket::verify(&s, "garbage", "abc", ip("192.0.2.1"), 1_000),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            Ticket::verify(&s, &"x".repeat(300), "abc", ip("192.0.2.1"), 1_000),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            Ticket::verify(
                &s,
                &tok.replacen("t1", "q1", 1),
                "abc",
                ip("192.0.2.1"),
                1_000
            ),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn keys_rotate_with_one_period_of_overlap() {
        let s = Signer::new(b"k", 100);
        let mut t = ticket();
        t.expires_s = u64::MAX;
        let tok = t.sign(&s, 150); // epoch 1
        assert!(Ticket::verify(&s, &tok, "abc", ip("192.0.2.1"), 199).is_ok());
        assert!(Ticket::verify(&s, &tok, "abc", ip("192.0.2.1"), 299).is_ok());
        assert_eq!(
            Ticket::verify(&s, &tok, "abc", ip("192.0.2.1"), 300),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            Ticket::verify(&s, &tok, "abc", ip("192.0.2.1"), 50),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn queue_tokens_round_trip_and_bind_to_their_space() {
        let s = Signer::new(b"k", 600);
        let q = QueueToken {
            space: "s1".into(),
            number: 12_345,
            listener: 9,
            expires_s: 2_000,
            line: 77,
            due_ms: 1_700_000_000_000,
        };
        let tok = q.sign(&s, 1_000);
        assert_eq!(QueueToken::verify(&s, &tok, "s1", 1_500), Ok(q));
        assert_eq!(
            QueueToken::verify(&s, &tok, "s2", 1_500),
            Err(TokenError::WrongSpace)
        );
        // A ticket is not a queue token.
        assert_eq!(
            QueueToken::verify(&s, &ticket().sign(&s, 1_000), "abc", 1_000),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn proof_of_work_is_checked_with_one_hash() {
        let s = Signer::new(b"k", 600);
        let c = Challenge {
            space: "s".into(),
            difficulty: 10,
            expires_s: 1_100,
            prefix: None,
            origin: 0x5eed,
            counter: 5,
        };
        let seed = c.sign(&s, 1_000);
        let nonce = solve(&seed, 10);
        assert_eq!(
            Challenge::verify_solution(&s, &seed, nonce, "s", ip("10.0.0.1"), 1_050),
            Ok(c)
        );
        // A nonce that does not meet the difficulty (find one deterministically).
        let bad = (0u64..)
            .find(|&n| leading_zero_bits(&pow_hash(&seed, n)) < 10)
            .unwrap();
        assert_eq!(
            Challenge::verify_solution(&s, &seed, bad, "s", ip("10.0.0.1"), 1_050),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            Challenge::verify_solution(&s, &seed, nonce, "s", ip("10.0.0.1"), 1_101),
            Err(TokenError::Expired)
        );
        assert_eq!(leading_zero_bits(&[0, 0x10, 0xff]), 11);
    }

    #[test]
    fn challenges_carry_their_origin_and_counter_within_the_token_bound() {
        let s = Signer::new(b"k", 600);
        let c = Challenge {
            space: "a".repeat(32),
            difficulty: 0,
            expires_s: u64::MAX,
            prefix: Some(Cidr::new(ip("2001:db8:1:2::9"), 48)),
            origin: u64::MAX,
            counter: u64::MAX - 1,
        };
        let seed = c.sign(&s, 1_000);
        assert!(seed.len() <= MAX_TOKEN_LEN, "{} characters", seed.len());
        assert!(seed.starts_with("c2."));
        let got = Challenge::verify_solution(&s, &seed, 0, &c.space, ip("2001:db8:1::1"), 1_000);
        assert_eq!(got, Ok(c.clone()));
        // The counter alone makes seeds distinct.
        let next = Challenge {
            counter: c.counter + 1,
            ..c.clone()
        };
        assert_ne!(next.sign(&s, 1_000), seed);
    }
}
