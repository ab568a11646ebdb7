//! HTTP/1 pieces the connection front and the API share: the bounded request-head reader
//! (`httparse`), small complete answers, query parameters and a stream that replays what was
//! already read. A leaf module.

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 48;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method, as sent.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the request asks to upgrade to WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// Why no request head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The peer closed (or the socket failed) first.
    Closed,
    /// The head is larger than allowed.
    TooLarge,
    /// Not HTTP/1; the text says why.
    Malformed(String),
}

/// Parses a request head from the bytes received so far, `buf`, allowing at most `max` bytes
/// of head. Pure: [`read_head`] calls it after each read.
///
/// `Ok(None)`: the head is incomplete and may still fit (read more). `Ok(Some((head, len)))`:
/// the head is the first `len` bytes of `buf` (`len <= buf.len()` and `len <= max`); what
/// follows is the body or the first bytes of a stream. A head that does not end within the
/// first `max` bytes is refused as [`HeadError::TooLarge`], however many bytes `buf` holds.
pub fn parse_head(buf: &[u8], max: usize) -> Result<Option<(Head, usize)>, HeadError> {
    let window = &buf[..buf.len().min(max)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (target.to_owned(), None),
            };
            let head = Head {
                method: req.method.unwrap_or("GET").to_owned(),
                path,
                query,
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= max => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Reads a request head of at most `max` bytes. Returns it with the buffer of everything read
/// (head and any bytes after it, never more than `max` bytes in all) and the head's length.
pub async fn read_head(
    stream: &mut TcpStream,
    max: usize,
) -> Result<(Head, BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let n = {
            let room = (max - buf.len()).min(4096);
            buf.reserve(room);
            let mut limited = (&mut *stream).take(room as u64);
            limited
                .read_buf(&mut buf)
                .await
                .map_err(|_| HeadError::Closed)?
        };
        if n == 0 {
            return Err(HeadError::Closed);
        }
        if let Some((head, len)) = parse_head(&buf, max)? {
            return Ok((head, buf, len));
        }
    }
}

/// Writes a complete small response and flushes it. Errors are ignored: the peer may be gone.
pub async fn respond(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    reason: &str,
    extra_headers: &str,
    body: &str,
) {
    respond_typed(
        stream,
        status,
        reason,
        extra_headers,
        "text/plain; charset=utf-8",
        body,
    )
    .await
}

/// As [`respond`], with the body's `Content-Type`.
pub async fn respond_typed(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    reason: &str,
    extra_headers: &str,
    content_type: &str,
    body: &str,
) {
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.flush().await;
}

/// A stream that first replays bytes already read, then reads the socket.
pub struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// Replays `pre` before reading from `inner`.
    pub fn new(pre: Bytes, inner: TcpStream) -> Self {
        Rewind { pre, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// The value of query parameter `name`.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_PUT: &[u8] = b"PUT /live/abc.ogg HTTP/1.1\r\nTransfer-Encoding: chunked\r\nUser-Agent: Lavf/61.7.100\r\nAccept: */*\r\nExpect: 100-continue\r\nContent-Type: application/ogg\r\nIce-Public: 0\r\nAuthorization: Basic c291cmNlOmtleQ==\r\n\r\nOggS";

    #[test]
    fn complete_head_is_parsed_and_what_follows_is_left() {
        let (head, len) = parse_head(FFMPEG_PUT, 8192).unwrap().unwrap();
        assert_eq!(len, FFMPEG_PUT.len() - 4);
        assert_eq!(&FFMPEG_PUT[len..], b"OggS");
        assert_eq!(head.method, "PUT");
        assert_eq!(head.path, "/live/abc.ogg");
        assert_eq!(head.query, None);
        assert_eq!(head.header("expect"), Some("100-continue"));
        assert_eq!(head.header("user-agent"), Some("Lavf/61.7.100"));
        assert!(!head.is_websocket());
    }

    #[test]
    fn query_and_upgrade_are_seen() {
        let req = b"GET /live/abc/ws?ticket=t1.x&fmt=ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        let (head, len) = parse_head(req, 8192).unwrap().unwrap();
        assert_eq!(len, req.len());
        assert_eq!(head.path, "/live/abc/ws");
        assert_eq!(head.query.as_deref(), Some("ticket=t1.x&fmt=ws"));
        assert_eq!(query_param(head.query.as_deref(), "ticket"), Some("t1.x"));
        assert!(head.is_websocket());
    }

    #[test]
    fn incomplete_head_asks_for_more_in_any_prefix() {
        let full = FFMPEG_PUT.len() - 4;
        for cut in 0..full {
            assert_eq!(
                parse_head(&FFMPEG_PUT[..cut], 8192),
                Ok(None),
                "prefix {cut}"
            );
        }
    }

    #[test]
    fn head_longer_than_max_is_too_large_however_much_was_read() {
        let full = FFMPEG_PUT.len() - 4;
        assert!(parse_head(FFMPEG_PUT, full).unwrap().is_some());
        for max in [0, 1, 16, full - 1] {
            assert_eq!(
                parse_head(FFMPEG_PUT, max),
                Err(HeadError::TooLarge),
                "max {max}"
            );
            assert_eq!(
                parse_head(&FFMPEG_PUT[..max], max),
                Err(HeadError::TooLarge),
                "max {max}"
            );
        }
        // Below the bound, the same prefix is only incomplete.
        assert_eq!(parse_head(&FFMPEG_PUT[..16], 17), Ok(None));
    }

    #[test]
    fn garbage_and_too_many_headers_are_malformed() {
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00", 8192),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_head(&many, 8192),
            Err(HeadError::Malformed(_))
        ));
    }
}
