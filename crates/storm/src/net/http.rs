//! storm's one HTTP/1 client: answer heads parsed by `httparse` ([`parse_head`], used by every
//! reader of answers), bounded requests to the API and `/metrics`, the join API's exchanges
//! from a listener's own source address, and the parsing of levee's Prometheus text.

use crate::error::{Error, Result};
use crate::net::clock::now_us;
use crate::observe::measure::Failure;
use crate::plan::target::Target;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

/// Largest HTTP response read (API answers and `/metrics`).
pub const MAX_RESPONSE: usize = 8 << 20;

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
) -> Result<Response> {
    let exchange = async {
        let mut s = TcpStream::connect(target.addr)
            .await
            .map_err(|e| Error::server(format!("connect {}: {e}", target.addr)))?;
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
            .map_err(|e| Error::server(format!("send: {e}")))?;
        s.write_all(body)
            .await
            .map_err(|e| Error::server(format!("send: {e}")))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| Error::server(format!("read: {e}")))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(Error::server(format!("response over {MAX_RESPONSE} bytes")));
            }
            if let Ok(Some(Head {
                len: head_len,
                content_length: Some(len),
                ..
            })) = parse_head(&buf)
            {
                if buf.len() >= head_len + len {
                    break;
                }
            }
        }
        parse_response(&buf)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::server(format!("{method} {path}: no answer within {timeout:?}")))?
}

fn parse_response(buf: &[u8]) -> Result<Response> {
    let head = parse_head(buf)
        .map_err(|why| Error::server(format!("malformed HTTP answer ({why})")))?
        .ok_or(Error::server("incomplete HTTP answer"))?;
    Ok(Response {
        status: head.status,
        body: String::from_utf8_lossy(&buf[head.len..]).into_owned(),
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

/// Largest answer head read by [`read_head`].
pub const MAX_ANSWER_HEAD: usize = 8192;

/// Reads an answer head on `s` (for `who`, in errors); returns it with every byte read (the
/// head and whatever followed it).
pub async fn read_head(s: &mut TcpStream, who: &str) -> Result<(Head, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| Error::server(format!("{who} read: {e}")))?;
        if n == 0 {
            return Err(Error::server(format!(
                "{who}: server closed during the handshake"
            )));
        }
        got.extend_from_slice(&buf[..n]);
        match parse_head(&got) {
            Ok(Some(head)) => return Ok((head, got)),
            Ok(None) if got.len() <= MAX_ANSWER_HEAD => {}
            Ok(None) => return Err(Error::server(format!("{who}: answer head too large"))),
            Err(why) => return Err(Error::server(format!("{who}: bad answer head ({why})"))),
        }
    }
}

/// The first line of an answer head, for messages.
pub fn status_line(head: &[u8]) -> String {
    String::from_utf8_lossy(head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The status code of a complete HTTP/1.x answer head at the start of `head`.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    parse_head(head).ok().flatten().map(|h| h.status)
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
pub async fn create_space(target: &Target, title: &str, access: Option<&str>) -> Result<SpaceInfo> {
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
        return Err(Error::server(format!(
            "POST /api/spaces answered {}: {}",
            r.status,
            r.body.trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .map_err(|e| Error::server(format!("POST /api/spaces: {e}")))?;
    Ok(SpaceInfo {
        id: v["id"]
            .as_str()
            .ok_or(Error::server("no id in answer"))?
            .to_owned(),
        host_key: v["host_key"].as_str().map(str::to_owned),
    })
}

/// Checks a space exists (`GET /api/spaces/{id}`).
pub async fn get_space(target: &Target, id: &str) -> Result<()> {
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
        Err(Error::server(format!(
            "GET /api/spaces/{id} answered {}: {}",
            r.status,
            r.body.trim()
        )))
    }
}

/// Ends a space (`DELETE /api/spaces/{id}` with the host key).
pub async fn end_space(target: &Target, id: &str, key: &str) -> Result<()> {
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
        Err(Error::server(format!(
            "DELETE answered {}: {}",
            r.status,
            r.body.trim()
        )))
    }
}

/// The server's audience numbers of `space` (`GET /api/spaces/{id}/audience`, without its
/// series), as JSON.
pub async fn space_audience(target: &Target, space: &str) -> Result<serde_json::Value> {
    let path = format!("/api/spaces/{space}/audience?series=0");
    let r = request(target, "GET", &path, &[], b"", Duration::from_secs(10)).await?;
    if r.status != 200 {
        return Err(Error::server(format!("GET {path} answered {}", r.status)));
    }
    serde_json::from_str(&r.body).map_err(|e| Error::server(format!("GET {path}: {e}")))
}

/// The levee counters of one space from `/metrics`: `name` or `name{format}` → value.
pub async fn space_metrics(target: &Target, space: &str) -> Result<BTreeMap<String, f64>> {
    let r = request(target, "GET", "/metrics", &[], b"", Duration::from_secs(10)).await?;
    if r.status != 200 {
        return Err(Error::server(format!("GET /metrics answered {}", r.status)));
    }
    Ok(parse_metrics(&r.body, space))
}

/// Parses Prometheus text, keeping the samples labelled `space="{space}"`, the process's and
/// `levee_hls_requests_total`, keyed by metric name plus `{format}` (or `{kind}`) when the
/// sample has that label.
pub fn parse_metrics(text: &str, space: &str) -> BTreeMap<String, f64> {
    let want = format!("space=\"{space}\"");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        // The space's series, the node's own process figures (CPU, memory), and the HLS
        // requests it answered (node-wide: what reached the origin).
        let node = line.starts_with("process_") || line.starts_with("levee_hls_requests_total");
        if line.starts_with('#') || !(line.contains(&want) || node) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let label = |l: &str| {
            series
                .split(&format!("{l}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
        };
        let format = label("format").or_else(|| label("kind"));
        let key = match format {
            Some(f) => format!("{name}{{{f}}}"),
            None => name.to_owned(),
        };
        out.insert(key, value);
    }
    out
}

/// Largest HTTP answer head accepted.
pub const MAX_HEAD: usize = 4096;

/// Bound on one join request (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest join answer read.
pub const MAX_ANSWER: usize = 16 * 1024;

/// Connects to `addr` from `source` (bound before connect), by `deadline_us` (Unix µs).
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    deadline_us: u64,
) -> Result<TcpStream, Failure> {
    connect_with(addr, source, deadline_us, None).await
}

/// As [`connect_from`], with a receive buffer of `rcvbuf` bytes set before connecting (so the
/// window the server sees is small from the start).
pub async fn connect_with(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    deadline_us: u64,
    rcvbuf: Option<u32>,
) -> Result<TcpStream, Failure> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| Failure::from_io(&e))?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)
            .map_err(|e| Failure::from_io(&e))?;
    }
    if let (Some(src), true) = (source, addr.is_ipv4()) {
        sock.bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| Failure::from_io(&e))?;
    }
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), sock.connect(addr)).await {
        Err(_) => Err(Failure::Timeout("connect")),
        Ok(Err(e)) => Err(Failure::from_io(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// An HTTP answer read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Retry-After` in seconds, when sent.
    pub retry_after_s: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
    /// Bytes received in all.
    pub bytes: u64,
}

/// Reads one answer on `stream` until the server closes or `Content-Length` bytes arrived,
/// by `deadline_us`, at most `max` bytes. A server that closes without a byte is
/// [`Failure::Closed`].
pub async fn read_answer(
    stream: &mut TcpStream,
    deadline_us: u64,
    max: usize,
) -> Result<Answer, Failure> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline_us.saturating_sub(now_us());
        if left == 0 {
            return Err(Failure::Timeout("response"));
        }
        let n = match tokio::time::timeout(Duration::from_micros(left), stream.read(&mut chunk))
            .await
        {
            Err(_) => return Err(Failure::Timeout("response")),
            Ok(Err(e)) => return Err(Failure::from_io(&e)),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let parsed = parse_head(&buf).map_err(Failure::Protocol)?;
        let complete =
            parsed.is_some_and(|h| h.content_length.is_some_and(|l| buf.len() >= h.len + l));
        if n == 0 || complete {
            let Some(head) = parsed else {
                return Err(if buf.is_empty() {
                    Failure::Closed
                } else {
                    Failure::Protocol("bad_http_answer")
                });
            };
            let status = head.status;
            let bytes = buf.len() as u64;
            return Ok(Answer {
                status,
                retry_after_s: head.retry_after_s,
                body: buf.split_off(head.len),
                bytes,
            });
        }
        if buf.len() > max {
            return Err(Failure::Protocol("answer_too_large"));
        }
    }
}

/// One request on its own connection from `source`: connect, send, read the answer, all by
/// `deadline_us`.
pub async fn exchange(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    request: &[u8],
    deadline_us: u64,
) -> Result<Answer, Failure> {
    let mut s = connect_from(addr, source, deadline_us).await?;
    let left = deadline_us.saturating_sub(now_us()).max(1);
    match tokio::time::timeout(Duration::from_micros(left), s.write_all(request)).await {
        Err(_) => return Err(Failure::Timeout("request")),
        Ok(Err(e)) => return Err(Failure::from_io(&e)),
        Ok(Ok(())) => {}
    }
    read_answer(&mut s, deadline_us, MAX_ANSWER).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_one_space_are_picked_by_format() {
        let text = "# HELP levee_joins_total x\n# TYPE levee_joins_total counter\n\
            levee_joins_total{space=\"abc\",format=\"ogg\"} 3\n\
            levee_joins_total{space=\"abc\",format=\"ws\"} 5\n\
            levee_joins_total{space=\"zzz\",format=\"ws\"} 9\n\
            levee_ingest_packets_total{space=\"abc\"} 250\n\
            levee_hls_requests_total{kind=\"part\"} 40\n";
        let m = parse_metrics(text, "abc");
        assert_eq!(m["levee_joins_total{ws}"], 5.0);
        assert_eq!(m["levee_joins_total{ogg}"], 3.0);
        assert_eq!(m["levee_ingest_packets_total"], 250.0);
        assert_eq!(m["levee_hls_requests_total{part}"], 40.0);
        assert_eq!(m.len(), 4);
        let m = parse_metrics("process_cpu_seconds_total 12.5\nlevee_spaces 3\n", "abc");
        assert_eq!(m.get("process_cpu_seconds_total"), Some(&12.5));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn answer_heads_are_parsed_once_complete() {
        assert_eq!(
            parse_status(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            Some(101)
        );
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n\r\n"), Some(503));
        assert_eq!(parse_status(b"ICY 200 OK\r\n\r\n"), None);
        let head = b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}";
        let h = parse_head(head).unwrap().unwrap();
        assert_eq!(
            (h.status, h.len, h.content_length, h.retry_after_s),
            (429, head.len() - 2, Some(2), Some(3))
        );
        // Incomplete: not yet; malformed: a reason.
        for cut in 0..h.len {
            assert_eq!(parse_head(&head[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n\r\n"), Err("bad_http_answer"));
    }
}
