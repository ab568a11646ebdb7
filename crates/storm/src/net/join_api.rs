//! The join API's messages (`docs/protocol.md`), as pure code: the request a listener sends,
//! and the answer read into what to do next ([`parse_answer`]).

/// The space id in a listener's WebSocket path (`/live/{id}/ws`).
pub fn space_of(ws_path: &str) -> Option<&str> {
    ws_path
        .strip_prefix("/live/")?
        .split(['/', '?'])
        .next()
        .filter(|s| !s.is_empty())
}

/// The bytes of a join request with `body` (JSON text).
pub fn join_request(authority: &str, space: &str, body: &str) -> String {
    format!(
        "POST /api/spaces/{space}/join HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: levee-storm\r\n\r\n{body}",
        body.len()
    )
}

/// The path and query of an absolute URL (`ws://h:p/live/x/ws?ticket=t` → `/live/x/ws?...`);
/// a path is kept as it is.
pub fn path_of(url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_owned());
    }
    let rest = url.split_once("://")?.1;
    let at = rest.find('/')?;
    Some(rest[at..].to_owned())
}

/// What a join answer says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAnswer {
    /// `200`: admitted; the stream paths carry the ticket.
    Admitted {
        /// Path (and query) of the Ogg stream.
        ogg: String,
        /// Path (and query) of the WebSocket stream.
        ws: String,
    },
    /// `202`: in line.
    Queued {
        /// Callers ahead.
        position: u64,
        /// The server's estimate of the wait, ms.
        eta_ms: u64,
        /// When to ask again, ms.
        retry_after_ms: u64,
        /// The place in line, to present again.
        token: String,
    },
    /// `401`: solve this first.
    Challenge {
        /// The signed seed.
        seed: String,
        /// Leading zero bits required.
        difficulty: u8,
    },
    /// `429` or `503`: ask again later.
    RetryLater {
        /// The status.
        status: u16,
        /// When to ask again, ms.
        retry_after_ms: u64,
    },
    /// Anything else: the join is over.
    Refused {
        /// The status.
        status: u16,
    },
}

/// Reads a join answer (pure). A `200`, `202` or `401` without its fields is a protocol
/// error.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    retry_after_s: Option<u64>,
) -> Result<JoinAnswer, &'static str> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let retry_ms = v["retry_after_ms"]
        .as_u64()
        .or(retry_after_s.map(|s| s * 1000))
        .unwrap_or(1000);
    Ok(match status {
        200 => {
            let ogg = v["urls"]["ogg"].as_str().and_then(path_of);
            let ws = v["urls"]["ws"].as_str().and_then(path_of);
            match (ogg, ws) {
                (Some(ogg), Some(ws)) => JoinAnswer::Admitted { ogg, ws },
                _ => return Err("join_200_without_urls"),
            }
        }
        202 => {
            let q = &v["queue"];
            JoinAnswer::Queued {
                position: q["position"].as_u64().unwrap_or(0),
                eta_ms: q["eta_ms"].as_u64().unwrap_or(0),
                retry_after_ms: q["retry_after_ms"].as_u64().unwrap_or(retry_ms),
                token: q["token"]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 1024)
                    .ok_or("join_202_without_token")?
                    .to_owned(),
            }
        }
        401 => {
            let c = &v["challenge"];
            JoinAnswer::Challenge {
                seed: c["seed"]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 1024)
                    .ok_or("join_401_without_challenge")?
                    .to_owned(),
                difficulty: c["difficulty"]
                    .as_u64()
                    .ok_or("join_401_without_challenge")?
                    .min(255) as u8,
            }
        }
        429 | 503 => JoinAnswer::RetryLater {
            status,
            retry_after_ms: retry_ms,
        },
        _ => JoinAnswer::Refused { status },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_answers_are_read_into_what_to_do_next() {
        let ok = br#"{"ticket":"t1.x","expires_in_s":60,"access":"ticketed","urls":{"ogg":"http://127.0.0.1:9/live/ab.ogg?ticket=t1.x","ws":"ws://127.0.0.1:9/live/ab/ws?ticket=t1.x"}}"#;
        assert_eq!(
            parse_answer(200, ok, None).unwrap(),
            JoinAnswer::Admitted {
                ogg: "/live/ab.ogg?ticket=t1.x".into(),
                ws: "/live/ab/ws?ticket=t1.x".into()
            }
        );
        let q =
            br#"{"queue":{"position":12,"eta_ms":400,"retry_after_ms":350,"token":"q1.a.b.c"}}"#;
        assert_eq!(
            parse_answer(202, q, Some(1)).unwrap(),
            JoinAnswer::Queued {
                position: 12,
                eta_ms: 400,
                retry_after_ms: 350,
                token: "q1.a.b.c".into()
            }
        );
        let c = br#"{"error":"solve","challenge":{"seed":"c1.s","difficulty":12}}"#;
        assert_eq!(
            parse_answer(401, c, None).unwrap(),
            JoinAnswer::Challenge {
                seed: "c1.s".into(),
                difficulty: 12
            }
        );
        assert_eq!(
            parse_answer(429, br#"{"retry_after_ms":2500}"#, Some(3)).unwrap(),
            JoinAnswer::RetryLater {
                status: 429,
                retry_after_ms: 2500
            }
        );
        // Without a body, the Retry-After header says when.
        assert_eq!(
            parse_answer(503, b"", Some(3)).unwrap(),
            JoinAnswer::RetryLater {
                status: 503,
                retry_after_ms: 3000
            }
        );
        assert_eq!(
            parse_answer(403, b"{}", None).unwrap(),
            JoinAnswer::Refused { status: 403 }
        );
        assert!(parse_answer(200, b"{}", None).is_err());
        assert!(parse_answer(202, b"not json", None).is_err());
        assert!(parse_answer(401, br#"{"challenge":{"seed":"x"}}"#, None).is_err());
    }

    #[test]
    fn urls_keep_their_path_and_query() {
        assert_eq!(
            path_of("ws://127.0.0.1:8080/live/x/ws?ticket=a.b").as_deref(),
            Some("/live/x/ws?ticket=a.b")
        );
        assert_eq!(path_of("/live/x.ogg").as_deref(), Some("/live/x.ogg"));
        assert_eq!(path_of("http://host-without-path"), None);
        assert_eq!(space_of("/live/abc123/ws"), Some("abc123"));
        assert_eq!(space_of("/live//ws"), None);
    }
}
