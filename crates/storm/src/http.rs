//! The server as storm sees it: a loopback target, a tiny bounded HTTP/1.1 client for the API
//! and `/metrics`, and the parsing of levee's Prometheus text.
//!
//! Contract: [`Target::parse`] accepts only `http://` URLs whose host is a loopback address
//! (or `localhost`): storm never sends traffic anywhere else. [`request`] makes one request on
//! its own connection, bounded in time and in response size.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest HTTP response read (API answers and `/metrics`).
pub const MAX_RESPONSE: usize = 8 << 20;

/// A levee server on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub authority: String,
}

impl Target {
    /// Parses `http://HOST:PORT[/...]`; HOST must be loopback.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("server '{url}': only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| format!("server '{url}': bad port"))?,
            ),
            _ => (authority.as_str(), 80),
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| format!("server '{url}': host must be a loopback IP or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "server '{url}': storm only targets loopback addresses (127.0.0.0/8, ::1)"
            ));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            authority,
        })
    }

    /// The base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

/// Makes one request and reads the answer until the server closes (levee's API answers with
/// `Connection: close`) or `Content-Length` bytes arrived.
pub async fn request(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut s = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            target.authority,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        s.write_all(body).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(format!("response over {MAX_RESPONSE} bytes"));
            }
            if let Some((head_len, Some(len))) = head_and_length(&buf) {
                if buf.len() >= head_len + len {
                    break;
                }
            }
        }
        parse_response(&buf)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {timeout:?}"))?
}

/// (head length, Content-Length) once the head is complete.
fn head_and_length(buf: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Some((end, len))
}

fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let (head_len, _) = head_and_length(buf).ok_or("incomplete HTTP answer")?;
    let status = parse_status(&buf[..head_len]).ok_or("malformed HTTP status line")?;
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&buf[head_len..]).into_owned(),
    })
}

/// Most headers an answer head may have.
pub const MAX_HEADERS: usize = 32;

/// An HTTP/1 answer head and the headers storm reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Length of the head, its blank line included.
    pub len: usize,
    /// `Content-Length`.
    pub content_length: Option<usize>,
    /// `Retry-After`, s.
    pub retry_after_s: Option<u64>,
}

/// Parses the answer head at the start of `buf` (the one reader of answer heads in storm):
/// `Ok(None)` while it is incomplete, an error with a stable reason when it is malformed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too_many_headers"),
        Err(_) => return Err("bad_http_answer"),
    };
    let number = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
    };
    Ok(Some(Head {
        status: r.code.ok_or("bad_http_answer")?,
        len,
        content_length: number("content-length").map(|n: u64| n as usize),
        retry_after_s: number("retry-after"),
    }))
}

/// The status code of an HTTP/1.x status line at the start of `head`.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// A space as the API describes it (the fields storm uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Space id.
    pub id: String,
    /// Host key, when storm created the space.
    pub host_key: Option<String>,
}

/// Creates a space (`POST /api/spaces`), with an access mode (`open`, `ticketed`, `challenge`)
/// when given.
pub async fn create_space(
    target: &Target,
    title: &str,
    access: Option<&str>,
) -> Result<SpaceInfo, String> {
    let mut body = serde_json::json!({ "title": title });
    if let Some(a) = access {
        body["access"] = serde_json::json!(a);
    }
    let body = body.to_string();
    let r = request(
        target,
        "POST",
        "/api/spaces",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .await?;
    if r.status != 201 {
        return Err(format!(
            "POST /api/spaces answered {}: {}",
            r.status,
            r.body.trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_str(&r.body).map_err(|e| format!("POST /api/spaces: {e}"))?;
    Ok(SpaceInfo {
        id: v["id"].as_str().ok_or("no id in answer")?.to_owned(),
        host_key: v["host_key"].as_str().map(str::to_owned),
    })
}

/// Checks a space exists (`GET /api/spaces/{id}`).
pub async fn get_space(target: &Target, id: &str) -> Result<(), String> {
    let r = request(
        target,
        "GET",
        &format!("/api/spaces/{id}"),
        &[],
        b"",
        Duration::from_secs(10),
    )
    .await?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "GET /api/spaces/{id} answered {}: {}",
            r.status,
            r.body.trim()
        ))
    }
}

/// Ends a space (`DELETE /api/spaces/{id}` with the host key).
pub async fn end_space(target: &Target, id: &str, key: &str) -> Result<(), String> {
    let auth = format!("Bearer {key}");
    let r = request(
        target,
        "DELETE",
        &format!("/api/spaces/{id}"),
        &[("Authorization", &auth)],
        b"",
        Duration::from_secs(10),
    )
    .await?;
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(format!("DELETE answered {}: {}", r.status, r.body.trim()))
    }
}

/// The levee counters of one space from `/metrics`: `name` or `name{format}` → value.
pub async fn space_metrics(target: &Target, space: &str) -> Result<BTreeMap<String, f64>, String> {
    let r = request(target, "GET", "/metrics", &[], b"", Duration::from_secs(10)).await?;
    if r.status != 200 {
        return Err(format!("GET /metrics answered {}", r.status));
    }
    Ok(parse_metrics(&r.body, space))
}

/// Parses Prometheus text, keeping the samples labelled `space="{space}"`, keyed by metric name
/// plus `{format}` when the sample has a format label.
pub fn parse_metrics(text: &str, space: &str) -> BTreeMap<String, f64> {
    let want = format!("space=\"{space}\"");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.contains(&want) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let format = series
            .split("format=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let key = match format {
            Some(f) => format!("{name}{{{f}}}"),
            None => name.to_owned(),
        };
        out.insert(key, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.base(), "http://127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://localhost:81/x").unwrap().addr.port(),
            81
        );
        assert_eq!(
            Target::parse("http://[::1]:9").unwrap().addr,
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(Target::parse("http://127.9.9.9").unwrap().addr.port(), 80);
        for bad in [
            "http://192.168.1.1:80",
            "https://127.0.0.1",
            "http://example.com",
            "127.0.0.1:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_of_one_space_are_picked_by_format() {
        let text = "# HELP levee_joins_total x\n# TYPE levee_joins_total counter\n\
            levee_joins_total{space=\"abc\",format=\"ogg\"} 3\n\
            levee_joins_total{space=\"abc\",format=\"ws\"} 5\n\
            levee_joins_total{space=\"zzz\",format=\"ws\"} 9\n\
            levee_ingest_packets_total{space=\"abc\"} 250\n";
        let m = parse_metrics(text, "abc");
        assert_eq!(m["levee_joins_total{ws}"], 5.0);
        assert_eq!(m["levee_joins_total{ogg}"], 3.0);
        assert_eq!(m["levee_ingest_packets_total"], 250.0);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(
            parse_status(b"HTTP/1.1 101 Switching Protocols\r\n"),
            Some(101)
        );
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(parse_status(b"ICY 200 OK\r\n"), None);
    }
}
