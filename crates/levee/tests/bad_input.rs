//! Bad input is refused with a reason and harms nobody: while a real source publishes and a
//! listener listens, every kind of malformed source, frame and request is thrown at the server.

mod common;
use bytes::BytesMut;
use common::*;
use levee_core::wsframe::{self, FrameDecoder, Message};
use levee_media::ogg::{self, PageSpec};
use levee_media::opus::{self, OpusHead};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("source:{key}"))
    )
}

/// PUTs `body` as an Icecast source the way ffmpeg does (Expect: 100-continue, no length).
fn put_source(addr: SocketAddr, path: &str, key: &str, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nContent-Type: audio/ogg\r\nExpect: 100-continue\r\n\r\n",
        basic(key)
    )
    .unwrap();
    let _ = s.write_all(body);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn opus_headers() -> BytesMut {
    let mut out = BytesMut::new();
    let spec = |flags, seq| PageSpec {
        flags,
        granule: 0,
        serial: 9,
        seq,
    };
    ogg::write_page(
        spec(ogg::FLAG_BOS, 0),
        &[OpusHead::new(1).to_bytes()],
        &mut out,
    )
    .unwrap();
    ogg::write_page(spec(0, 1), &[opus::tags("test", &[])], &mut out).unwrap();
    out
}

/// Opens a raw WebSocket to `path`, sends `first` (already framed), and returns the close frame
/// the server answers with (skipping any data frames before it).
fn ws_raw(addr: SocketAddr, path: &str, first: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "no upgrade: {}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(first).unwrap();
    let mut dec = FrameDecoder::for_server_frames(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        match dec.next().expect("server frames are well formed") {
            Some(Message::Close(code, reason)) => return Some((code?, reason)),
            Some(_) => continue,
            None => {}
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => dec.push(&buf[..n]),
        }
    }
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wsframe::encode_client_frame(opcode, payload, [7, 1, 9, 3], &mut out);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sources_frames_and_requests_are_refused_while_listeners_keep_hearing() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("under fire");
    let id = space["id"].as_str().unwrap().to_owned();
    let key = space["host_key"].as_str().unwrap().to_owned();
    let mut source = publish_sine(space["urls"]["source"].as_str().unwrap(), 500, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    let ws_url = space["urls"]["ws"].as_str().unwrap().to_owned();
    let listener = tokio::spawn(async move {
        ws_listen(&ws_url, Duration::from_secs(10), Duration::from_secs(6)).await
    });
    let addr = levee.addr;
    let mount = format!("/live/{id}.ogg");

    let id2 = id.clone();
    let attacks = tokio::task::spawn_blocking(move || {
        let id = id2;
        // Not Ogg at all.
        let r = put_source(addr, &mount, &key, b"ID3\x04 this is an mp3, not Ogg");
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("not an Ogg stream"), "{}", r.body);

        // A corrupted byte: the CRC catches it.
        let mut bytes = opus_headers().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        let r = put_source(addr, &mount, &key, &bytes);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("CRC"), "{}", r.body);

        // An oversized packet: a full page of 255-byte segments that never ends.
        let mut bytes = opus_headers();
        let mut page = BytesMut::new();
        page.extend_from_slice(b"OggS\0\0");
        page.extend_from_slice(&u64::MAX.to_le_bytes());
        page.extend_from_slice(&9u32.to_le_bytes());
        page.extend_from_slice(&2u32.to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        page.extend_from_slice(&[255]);
        page.extend_from_slice(&[255; 255]);
        page.extend_from_slice(&vec![0xf8; 255 * 255]);
        let crc = ogg::crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&page);
        let r = put_source(addr, &mount, &key, &bytes);
        assert_eq!(r.status, 413, "{r:?}");
        assert!(r.body.contains("exceeds"), "{}", r.body);

        // A real Vorbis stream from ffmpeg.
        let vorbis = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
                "sine=duration=1",
                "-c:a",
                "libvorbis",
                "-f",
                "ogg",
                "-",
            ])
            .output()
            .expect("ffmpeg runs");
        assert!(
            vorbis.status.success() && vorbis.stdout.len() > 1000,
            "ffmpeg made no Vorbis"
        );
        let r = put_source(addr, &mount, &key, &vorbis.stdout);
        assert_eq!(r.status, 415, "{r:?}");
        assert!(r.body.contains("Vorbis"), "{}", r.body);

        // The wrong host key.
        let r = put_source(addr, &mount, "not-the-key", &opus_headers());
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.head.contains("WWW-Authenticate"), "{}", r.head);

        // Garbage on a listener's WebSocket: reserved bits set.
        let close = ws_raw(addr, &format!("/live/{id}/ws"), &[0xff, 0xff, 0xff, 0xff]);
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, wsframe::CLOSE_PROTOCOL);
        assert!(!reason.is_empty());

        // A host WebSocket with the wrong key.
        let hello = masked(wsframe::OP_TEXT, br#"{"key":"nope"}"#);
        let (code, reason) =
            ws_raw(addr, &format!("/live/{id}/publish"), &hello).expect("a close frame");
        assert_eq!(code, wsframe::CLOSE_POLICY);
        assert!(reason.contains("host key"), "{reason}");

        // The right key, then an invalid Opus packet (code 3 with zero frames).
        let mut first = masked(wsframe::OP_TEXT, format!(r#"{{"key":"{key}"}}"#).as_bytes());
        let mut audio = vec![0x02];
        audio.extend_from_slice(&1u64.to_be_bytes());
        audio.extend_from_slice(&0u64.to_be_bytes());
        audio.extend_from_slice(&[0xfb, 0x00]);
        first.extend(masked(wsframe::OP_BINARY, &audio));
        let (code, reason) =
            ws_raw(addr, &format!("/live/{id}/publish"), &first).expect("a close frame");
        assert_eq!(code, wsframe::CLOSE_INVALID);
        assert!(reason.contains("zero frames"), "{reason}");

        // Garbage HTTP and an oversized head.
        let r = http(addr, "GET /\x01bad", "x", &[], b"");
        assert_eq!(r.status, 400, "{r:?}");
        let big = "a".repeat(9000);
        let r = http(addr, "GET", "/", &[("X-Big", &big)], b"");
        assert_eq!(r.status, 431, "{r:?}");

        // Ending a space needs its key.
        let r = http(
            addr,
            "DELETE",
            &format!("/api/spaces/{id}"),
            &[("Authorization", "Bearer wrong")],
            b"",
        );
        assert_eq!(r.status, 403, "{r:?}");
    });
    attacks.await.unwrap();

    let heard = listener.await.unwrap();
    assert!(
        heard.close.is_none(),
        "listener disconnected: {:?}",
        heard.close
    );
    assert_eq!(heard.gaps(), 0, "listener lost packets during the attacks");
    assert!(
        heard.seqs.len() >= 270,
        "listener heard only {} packets in 6 s",
        heard.seqs.len()
    );
    assert!(source.running(), "the real source was disturbed");
    assert_eq!(levee.space(&id)["state"], "live");
    for (reason, n) in [
        ("not_ogg", 1.0),
        ("bad_crc", 1.0),
        ("too_large", 1.0),
        ("wrong_codec", 1.0),
        ("bad_key", 2.0),
        ("bad_opus", 1.0),
    ] {
        let got = levee.metric(&format!("levee_ingest_errors_total{{reason=\"{reason}\"}}"));
        assert_eq!(got, n, "ingest errors of kind {reason}");
    }
    assert_eq!(
        levee.metric(&format!("levee_sources_total{{space=\"{id}\"}}")),
        1.0,
        "no bad source took the space over"
    );
}
