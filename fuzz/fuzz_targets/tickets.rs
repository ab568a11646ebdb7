//! `levee_core::ticket`: join tickets (`Ticket::verify`), places in line
//! (`QueueToken::verify`) and proof-of-work seeds (`Challenge::verify_solution`), with one
//! fixed `Signer` at a fixed time.
//!
//! Input: a 12-byte preamble (a position u16 and an xor byte for the one-byte change, a byte
//! whose low 2 bits pick the network binding and whose high 6 bits the space's length, a u64
//! for the listener / number / origin and counter), then text: the token a client presents, which also
//! gives the space and the payloads the target signs.
//!
//! Properties:
//! - the text, as a token of each kind, never verifies: a client cannot forge a token;
//! - payloads the target signs itself (any bytes: past the MAC, into field parsing) never
//!   panic, and when they verify, the token they decode to signs back to the same token
//!   (one encoding per token);
//! - a ticket, place in line and challenge built from the input and signed in the target
//!   verify (when within `MAX_TOKEN_LEN`), and no single-byte change, truncation or extension
//!   of them does.
#![no_main]

use levee_core::source::Cidr;
use levee_core::ticket::{
    leading_zero_bits, pow_hash, solve, Challenge, QueueToken, Signer, Ticket, TokenError,
    MAX_TOKEN_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const NOW: u64 = 1_700_000_000;
/// The kind of challenge seeds (the first field of a seed).
const CHALLENGE_KIND: &str = "c2";

fn signer() -> Signer {
    Signer::new(b"levee fuzz secret", 600)
}

/// Every single-byte change of `tok` the input asks for, one truncation and one extension.
fn variants(tok: &str, pos: u16, xor: u8) -> Vec<String> {
    let b = tok.as_bytes();
    let mut out = Vec::new();
    let mut changed = b.to_vec();
    let at = pos as usize % b.len();
    changed[at] ^= if xor == 0 { 1 } else { xor };
    out.extend(String::from_utf8(changed).ok());
    out.push(tok[..tok.len() - 1].to_owned());
    out.push(format!("{tok}A"));
    out.push(tok.replacen('.', "..", 1));
    out
}

fn source_in(prefix: Option<Cidr>) -> IpAddr {
    prefix.map_or("198.51.100.7".parse().unwrap(), |p| p.addr())
}

fuzz_target!(|data: &[u8]| {
    let Some((pre, rest)) = data.split_first_chunk::<12>() else {
        return;
    };
    let pos = u16::from_be_bytes([pre[0], pre[1]]);
    let xor = pre[2];
    let n = u64::from_be_bytes(pre[4..12].try_into().unwrap());
    let text = String::from_utf8_lossy(rest);
    let space_len = text
        .char_indices()
        .nth((pre[3] >> 2) as usize)
        .map_or(text.len(), |(i, _)| i);
    let space = &text[..space_len];
    let prefix = match pre[3] & 3 {
        1 => Some(Cidr::new(IpAddr::from([n as u8, (n >> 8) as u8, 2, 0]), 24)),
        2 => Some(Cidr::new(
            IpAddr::from([0x2001, 0xdb8, n as u16, 0, 0, 0, 0, 0]),
            48,
        )),
        _ => None,
    };
    let s = signer();
    let src = source_in(prefix);

    // 1. The text as presented by a client never verifies.
    assert!(Ticket::verify(&s, &text, space, src, NOW).is_err());
    assert!(QueueToken::verify(&s, &text, space, NOW).is_err());
    assert!(Challenge::verify_solution(&s, &text, n, space, src, NOW).is_err());
    for kind in ["t1", "q1", "c1", "c2"] {
        assert!(s.verify(kind, &text, NOW).is_err());
    }

    // 2. Genuine signatures over arbitrary payloads: field parsing, and one encoding each.
    let t1 = s.sign("t1", rest, NOW);
    if let Ok(t) = Ticket::verify(
        &s,
        &t1,
        &space_from(rest, after_prefix(rest, 16)),
        src_from(rest, 16),
        NOW,
    ) {
        assert_eq!(t.sign(&s, NOW), t1);
    }
    // Queue tokens: expires, number, listener, line, due (u64 each), space.
    let q2 = s.sign("q2", rest, NOW);
    if let Ok(q) = QueueToken::verify(&s, &q2, &space_from(rest, 40), NOW) {
        assert_eq!(q.sign(&s, NOW), q2);
    }
    // Challenge seeds: expires, origin, counter (u64 each), difficulty, binding, space.
    let c2 = s.sign(CHALLENGE_KIND, rest, NOW);
    let c_space = space_from(rest, after_prefix(rest, 25));
    let c_src = src_from(rest, 25);
    match Challenge::verify_solution(&s, &c2, n, &c_space, c_src, NOW) {
        Ok(c) => assert_eq!(c.sign(&s, NOW), c2),
        Err(TokenError::BadSignature) if rest.get(24).is_some_and(|&d| d <= 8) => {
            let nonce = solve(&c2, rest[24]);
            let c = Challenge::verify_solution(&s, &c2, nonce, &c_space, c_src, NOW)
                .expect("a solved genuine challenge");
            assert_eq!(c.sign(&s, NOW), c2);
        }
        Err(_) => {}
    }

    // 3. Tokens made from the input verify; no small change of them does.
    let ticket = Ticket {
        space: space.to_owned(),
        listener: n,
        expires_s: NOW + 60,
        prefix,
    };
    let queue = QueueToken {
        space: space.to_owned(),
        number: n,
        listener: n.rotate_left(17),
        expires_s: NOW + 30,
        line: n.rotate_left(29),
        due_ms: n.rotate_left(41),
    };
    let challenge = Challenge {
        space: space.to_owned(),
        difficulty: xor % 4,
        expires_s: NOW + 30,
        prefix,
        origin: n,
        counter: n.rotate_left(7),
    };
    let tok = ticket.sign(&s, NOW);
    let want = if tok.len() <= MAX_TOKEN_LEN {
        Ok(ticket.clone())
    } else {
        Err(TokenError::Malformed)
    };
    assert_eq!(Ticket::verify(&s, &tok, space, src, NOW), want);
    for v in variants(&tok, pos, xor) {
        assert!(
            Ticket::verify(&s, &v, space, src, NOW).is_err(),
            "{tok} changed to {v}"
        );
    }
    let tok = queue.sign(&s, NOW);
    let want = if tok.len() <= MAX_TOKEN_LEN {
        Ok(queue.clone())
    } else {
        Err(TokenError::Malformed)
    };
    assert_eq!(QueueToken::verify(&s, &tok, space, NOW), want);
    for v in variants(&tok, pos, xor) {
        assert!(
            QueueToken::verify(&s, &v, space, NOW).is_err(),
            "{tok} changed to {v}"
        );
    }
    let seed = challenge.sign(&s, NOW);
    assert!(seed.starts_with(&format!("{CHALLENGE_KIND}.")));
    let nonce = solve(&seed, challenge.difficulty);
    let want = if seed.len() <= MAX_TOKEN_LEN {
        Ok(challenge.clone())
    } else {
        Err(TokenError::Malformed)
    };
    assert_eq!(
        Challenge::verify_solution(&s, &seed, nonce, space, src, NOW),
        want
    );
    for v in variants(&seed, pos, xor) {
        // A changed seed is refused whatever the nonce: it is not genuine.
        let nonce = solve(&v, challenge.difficulty);
        assert!(leading_zero_bits(&pow_hash(&v, nonce)) >= challenge.difficulty as u32);
        assert!(
            Challenge::verify_solution(&s, &v, nonce, space, src, NOW).is_err(),
            "{seed} changed to {v}"
        );
    }
});

/// The space a signed payload names, read as the token kind lays it out (fields of `skip`
/// bytes before it), so that a genuine payload can pass the space check.
fn space_from(payload: &[u8], skip: usize) -> String {
    String::from_utf8_lossy(payload.get(skip..).unwrap_or_default()).into_owned()
}

/// Where the space starts after a network binding byte at `at` and its bytes.
fn after_prefix(payload: &[u8], at: usize) -> usize {
    at + 1
        + match payload.get(at) {
            Some(4) => 3,
            Some(6) => 6,
            _ => 0,
        }
}

/// A source inside the network a signed payload names at `at` (its binding byte).
fn src_from(payload: &[u8], at: usize) -> IpAddr {
    match payload.get(at) {
        Some(4) => {
            let b = payload.get(at + 1..at + 4).unwrap_or(&[0, 0, 0]);
            if b.len() == 3 {
                IpAddr::from([b[0], b[1], b[2], 1])
            } else {
                IpAddr::from([0, 0, 0, 0])
            }
        }
        Some(6) => {
            let mut o = [0u8; 16];
            if let Some(b) = payload.get(at + 1..at + 7) {
                o[..6].copy_from_slice(b);
            }
            IpAddr::from(o)
        }
        _ => "203.0.113.1".parse().unwrap(),
    }
}
