//! LL-HLS listeners: each plays a space's low-latency HLS as a live player does, over one
//! keep-alive connection: the playlist, the newest part it lists, then for every part in
//! turn the part its preload hint names (levee holds that request until the part is sealed)
//! and the playlist reloaded for that part (`_HLS_msn`, `_HLS_part`, answered at once with
//! the next hint). Two requests per part: the load hls.js puts on an origin or a cache.
//!
//! Contract: [`listen`] runs one listener's [`Lifecycle`] (every session and retry, as stream
//! listeners do) and adds what it got to the shared [`Aggregate`]; frame-level figures go to
//! the shared [`Shard`] as parts arrive. A listener is a tokio task, not a slot of a poll
//! loop: it waits on whole answers, a few per second, and every part is measured on every
//! frame (a part's packets all arrive with its last byte, so the arrival time is exact).
//! What it heard goes through the same [`Reader`] as stream listeners, so its figures mean
//! the same: first audio, gaps (by the host's marker, or by decode times), stalls, jitter,
//! end-to-end latency from capture to the part's arrival, and underruns of the simulated
//! player. Every request is bounded by [`REQUEST_TIMEOUT`], every answer by its size.
//!
//! [`parse_playlist`] is pure: a media playlist in, the positions a live player needs out.

use crate::actors::listeners::{account, Ctx};
use crate::net::clock::{now_us, sleep_until_us};
use crate::net::http::{self, Answer};
use crate::observe::measure::{Failure, JoinTiming};
use crate::observe::reader::{Reader, Shard};
use crate::observe::stats::{Aggregate, SessionRecord};
use crate::plan::scenario::{Format, Slot};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bound on one request: levee holds a blocking reload up to 3 s and a part about to be
/// sealed up to 1.5 s; a cache adds its lock wait.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

/// Largest playlist read (levee's is about 2 KiB).
pub const MAX_PLAYLIST: usize = 256 * 1024;

/// Largest part read (levee's are about 1 KiB at 32 kbit/s).
pub const MAX_PART: usize = 4 << 20;

/// Pause before asking again after an answer that brought no part (404, 410, 503), so a
/// listener never spins.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where HLS listeners fetch from: the server, or a cache in front of it.
#[derive(Debug, Clone)]
pub struct HlsEndpoint {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// `Host` header.
    pub authority: String,
    /// Path of the media playlist.
    pub playlist: String,
}

/// A part as a playlist names it: its segment's media sequence number, its index in that
/// segment, and its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    /// Media sequence number of its segment.
    pub msn: u64,
    /// Index within the segment.
    pub index: u64,
    /// Path to request.
    pub path: String,
}

/// What a live player reads from a media playlist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Playlist {
    /// The newest part listed.
    pub last_part: Option<PartRef>,
    /// The preload hint: the part being made.
    pub hint: Option<PartRef>,
    /// `EXT-X-ENDLIST`: the broadcast is over.
    pub ended: bool,
}

/// Reads a media playlist served at `playlist_path` (URIs are resolved against it): media
/// sequence numbers count from `EXT-X-MEDIA-SEQUENCE`, one per segment URI; parts count
/// within their segment. Refuses what is not a playlist.
pub fn parse_playlist(text: &str, playlist_path: &str) -> Result<Playlist, &'static str> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("#EXTM3U") {
        return Err("not_a_playlist");
    }
    let dir = match playlist_path.split('?').next().unwrap_or("").rfind('/') {
        Some(i) => &playlist_path[..=i],
        None => "/",
    };
    let resolve = |uri: &str| -> Result<String, &'static str> {
        if uri.is_empty() || uri.len() > 1024 || uri.contains(char::is_whitespace) {
            return Err("bad_playlist_uri");
        }
        Ok(if let Some(rest) = uri.split_once("://").map(|(_, r)| r) {
            rest.find('/')
                .map_or("/".to_owned(), |i| rest[i..].to_owned())
        } else if uri.starts_with('/') {
            uri.to_owned()
        } else {
            format!("{dir}{uri}")
        })
    };
    let uri_of = |tag: &str| -> Result<String, &'static str> {
        let v = tag
            .split_once("URI=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(v, _)| v)
            .ok_or("playlist_tag_without_uri")?;
        resolve(v)
    };
    let mut out = Playlist::default();
    let (mut msn, mut index) = (0u64, 0u64);
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.parse().map_err(|_| "bad_media_sequence")?;
        } else if let Some(tag) = line.strip_prefix("#EXT-X-PART:") {
            out.last_part = Some(PartRef {
                msn,
                index,
                path: uri_of(tag)?,
            });
            index += 1;
        } else if let Some(tag) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            if tag.contains("TYPE=PART") {
                out.hint = Some(PartRef {
                    msn,
                    index,
                    path: uri_of(tag)?,
                });
            }
        } else if line == "#EXT-X-ENDLIST" {
            out.ended = true;
        } else if !line.starts_with('#') {
            // A segment's URI: the next segment starts.
            resolve(line)?;
            msn += 1;
            index = 0;
        }
    }
    Ok(out)
}

/// One keep-alive connection from a listener's source address; a connection the server (or
/// the cache) closed between requests is opened again once, as HTTP clients do.
struct Conn<'a> {
    ep: &'a HlsEndpoint,
    source: Option<Ipv4Addr>,
    stream: Option<TcpStream>,
    /// Sockets open now, for the gauge.
    ctx: &'a Ctx,
}

impl Conn<'_> {
    async fn open(&mut self, deadline_us: u64) -> Result<(), Failure> {
        let s = http::connect_from(self.ep.addr, self.source, deadline_us).await?;
        let _ = s.set_nodelay(true);
        self.stream = Some(s);
        self.ctx.gauges.sockets.fetch_add(1, Relaxed);
        Ok(())
    }

    fn close(&mut self) {
        if self.stream.take().is_some() {
            self.ctx.gauges.sockets.fetch_sub(1, Relaxed);
        }
    }

    /// `GET path`, answered by `deadline_us`, at most `max` bytes.
    async fn get(&mut self, path: &str, deadline_us: u64, max: usize) -> Result<Answer, Failure> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: levee-storm\r\n\r\n",
            self.ep.authority
        );
        for again in [false, true] {
            let reused = self.stream.is_some();
            if !reused {
                self.open(deadline_us).await?;
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(Failure::Closed);
            };
            let out = match s.write_all(req.as_bytes()).await {
                Ok(()) => http::read_answer(s, deadline_us, max).await,
                Err(e) => Err(Failure::from_io(&e)),
            };
            match out {
                Err(Failure::Closed | Failure::Reset) if reused && !again => self.close(),
                Err(f) => {
                    self.close();
                    return Err(f);
                }
                Ok(a) => return Ok(a),
            }
        }
        Err(Failure::Closed)
    }
}

/// One session's state, kept by the caller so a deadline that cuts the session short still
/// finds what it heard.
struct Session {
    join: JoinTiming,
    reader: Reader,
    joined: bool,
    requests: u64,
}

/// Runs one HLS listener to its end. See the module docs.
pub async fn listen(
    ctx: Arc<Ctx>,
    ep: Arc<HlsEndpoint>,
    slot: Slot,
    shard: Arc<Mutex<Shard>>,
    agg: Arc<Mutex<Aggregate>>,
) {
    let mut life = crate::actors::listeners::Lifecycle::new(&ctx.sc, &slot, ctx.start_us);
    let mut next = life.first();
    let source = crate::actors::listeners::source_of(&ctx.sources, &slot);
    let mut stop = ctx.stop_rx.clone();
    while let Some((at, leave)) = next {
        let stopped = tokio::select! {
            _ = sleep_until_us(at) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let now = now_us();
        if stopped || ctx.stop.load(Relaxed) {
            break;
        }
        if at >= leave {
            next = life.next(&ctx.sc, true, false, now, ctx.run_end_us);
            continue;
        }
        let bounds = ctx.bounds(at, leave);
        let mut s = Session {
            join: JoinTiming {
                scheduled_us: at,
                started_us: Some(now),
                ..JoinTiming::default()
            },
            reader: Reader::new(Format::Hls, ctx.sc.meter, true),
            joined: false,
            requests: 0,
        };
        ctx.gauges.waiting.fetch_add(1, Relaxed);
        let mut conn = Conn {
            ep: &ep,
            source,
            stream: None,
            ctx: &ctx,
        };
        let audio_deadline =
            (at + ctx.sc.first_audio_timeout.as_micros() as u64).min(bounds.leave_us);
        let outcome = {
            let run = session(&ctx, &mut conn, &mut s, &shard, audio_deadline, bounds);
            tokio::pin!(run);
            tokio::select! {
                r = &mut run => r,
                // The planned leave, or the run's stop: as at a stream listener's deadline.
                _ = sleep_until_us(bounds.leave_us) => Ok(()),
                _ = stop.wait_for(|s| *s) => Ok(()),
            }
        };
        conn.close();
        let now = now_us();
        // A deadline that came before first audio failed the join.
        let outcome = match outcome {
            Ok(()) if !s.joined => Err(Failure::Timeout("first_audio")),
            o => o,
        };
        if s.joined {
            ctx.gauges.connected.fetch_sub(1, Relaxed);
        } else {
            ctx.gauges.waiting.fetch_sub(1, Relaxed);
        }
        let (join_failure, drop) = match outcome {
            Ok(()) => (None, None),
            Err(f) if s.joined => (None, Some(f)),
            Err(f) => (Some(f), None),
        };
        {
            let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
            sh.point.failures += join_failure.is_some() as u64;
            sh.point.drops += drop.is_some() as u64;
        }
        let rec = SessionRecord {
            format: Format::Hls,
            join: s.join,
            join_failure,
            drop,
            bytes: s.reader.heard.bytes,
            pages: s.reader.heard.pages,
            requests: s.requests,
            timed: true,
            // The server's HLS session spans the player's requests.
            listened_us: s.join.first_audio_us.map_or(0, |t| now.saturating_sub(t)),
            summary: s
                .reader
                .heard
                .meter
                .finish(now.min(bounds.leave_us).min(bounds.end_ok_after_us)),
        };
        let (failed, dropped) = (rec.join_failure.is_some(), rec.drop.is_some());
        account(
            &mut agg.lock().unwrap_or_else(|e| e.into_inner()),
            &mut life,
            &rec,
        );
        next = if ctx.stop.load(Relaxed) || *stop.borrow() {
            life.ever_joined |= !failed;
            None
        } else {
            life.next(&ctx.sc, failed, dropped, now, ctx.run_end_us)
        };
    }
    agg.lock()
        .unwrap_or_else(|e| e.into_inner())
        .record_slot(life.ever_joined);
    if life.ever_joined {
        let view_after = ctx.sc.audience.view_after.map(|d| d.as_micros() as u64);
        agg.lock()
            .unwrap_or_else(|e| e.into_inner())
            .audience
            .record_listener(life.longest_us, view_after);
    }
}

/// One session: join (playlist, newest part) by `audio_deadline`, then part after part until
/// the broadcast ends or the caller's deadline cuts it.
async fn session(
    ctx: &Ctx,
    conn: &mut Conn<'_>,
    s: &mut Session,
    shard: &Mutex<Shard>,
    audio_deadline: u64,
    bounds: crate::actors::listeners::Bounds,
) -> Result<(), Failure> {
    let connect_deadline =
        (s.join.scheduled_us + ctx.sc.connect_timeout.as_micros() as u64).min(audio_deadline);
    conn.open(connect_deadline).await?;
    s.join.connected_us = Some(now_us());
    let playlist = conn.ep.playlist.clone();
    let deadline = |joined: bool| {
        let d = now_us() + REQUEST_TIMEOUT.as_micros() as u64;
        if joined {
            d
        } else {
            d.min(audio_deadline)
        }
    };
    // Join: the playlist, then its newest part (the hint when none is listed yet).
    let first = loop {
        let a = conn.get(&playlist, deadline(false), MAX_PLAYLIST).await?;
        s.requests += 1;
        s.join.response_us.get_or_insert(now_us());
        if a.status != 200 {
            return Err(Failure::Http(a.status));
        }
        let pl = read(&a, &playlist)?;
        if pl.ended {
            return Err(Failure::Closed);
        }
        match pl.last_part.or(pl.hint) {
            Some(p) => break p,
            // Nothing packaged yet (the host has just started): ask again shortly.
            None => tokio::time::sleep(RETRY_PAUSE).await,
        }
    };
    let mut want = first;
    loop {
        let a = conn.get(&want.path, deadline(s.joined), MAX_PART).await?;
        s.requests += 1;
        let arrival = now_us();
        match a.status {
            200 => {
                {
                    let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
                    s.reader
                        .feed_part(&a.body, arrival, &mut sh)
                        .map_err(Failure::Protocol)?;
                    if !s.joined {
                        if let Some(t) = s.reader.heard.first_audio_us {
                            s.joined = true;
                            s.join.first_audio_us = Some(t);
                            sh.point.joins += 1;
                            sh.point.ttfa.record(t.saturating_sub(s.join.scheduled_us));
                            ctx.gauges.waiting.fetch_sub(1, Relaxed);
                            ctx.gauges.connected.fetch_add(1, Relaxed);
                        }
                    }
                }
                // The playlist that lists this part names the next one.
                let path = format!("{playlist}?_HLS_msn={}&_HLS_part={}", want.msn, want.index);
                let pl = loop {
                    let a = conn.get(&path, deadline(s.joined), MAX_PLAYLIST).await?;
                    s.requests += 1;
                    match a.status {
                        200 => break read(&a, &playlist)?,
                        // The reload timed out at the server: ask again.
                        503 => tokio::time::sleep(RETRY_PAUSE).await,
                        st => return Err(Failure::Http(st)),
                    }
                };
                if pl.ended {
                    return ended(s, bounds);
                }
                match pl.hint {
                    Some(h) => want = h,
                    None => return Err(Failure::Protocol("hls_playlist_without_hint")),
                }
            }
            // Not made in time (the host paused) or already gone (this listener fell behind):
            // the playlist says where the stream is now.
            404 | 410 => {
                tokio::time::sleep(RETRY_PAUSE).await;
                let a = conn
                    .get(&playlist, deadline(s.joined), MAX_PLAYLIST)
                    .await?;
                s.requests += 1;
                if a.status != 200 {
                    return Err(Failure::Http(a.status));
                }
                let pl = read(&a, &playlist)?;
                if pl.ended {
                    return ended(s, bounds);
                }
                // Behind: the newest part. Not made yet: the same part, once hinted again.
                match (pl.hint, pl.last_part) {
                    (_, Some(last)) if (want.msn, want.index) < (last.msn, last.index) => {
                        want = last
                    }
                    (Some(h), _) => want = h,
                    (None, Some(last)) => want = last,
                    (None, None) => {}
                }
            }
            st => return Err(Failure::Http(st)),
        }
    }
}

fn read(a: &Answer, playlist: &str) -> Result<Playlist, Failure> {
    let text = std::str::from_utf8(&a.body).map_err(|_| Failure::Protocol("playlist_not_utf8"))?;
    parse_playlist(text, playlist).map_err(Failure::Protocol)
}

/// The playlist says the broadcast ended: the planned end once the run is over, else a drop.
fn ended(s: &Session, bounds: crate::actors::listeners::Bounds) -> Result<(), Failure> {
    if s.joined && now_us() >= bounds.end_ok_after_us {
        Ok(())
    } else {
        Err(Failure::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
        #EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-MAP:URI=\"init.mp4\"\n\
        #EXT-X-PROGRAM-DATE-TIME:2026-12-01T20:00:00.000Z\n\
        #EXT-X-PART:DURATION=0.240,URI=\"p7.0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.240,URI=\"p7.1.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.240,URI=\"p7.2.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.240,URI=\"p7.3.m4s\",INDEPENDENT=YES\n\
        #EXTINF:0.960,\ns7.m4s\n\
        #EXT-X-PROGRAM-DATE-TIME:2026-12-01T20:00:00.960Z\n\
        #EXT-X-PART:DURATION=0.240,URI=\"p8.0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p8.1.m4s\"\n";

    #[test]
    fn a_live_playlist_gives_the_newest_part_and_the_hint_by_position() {
        let p = parse_playlist(LIVE, "/live/ab/hls/index.m3u8").unwrap();
        let at = |msn, index, name: &str| PartRef {
            msn,
            index,
            path: format!("/live/ab/hls/{name}"),
        };
        assert_eq!(p.last_part, Some(at(8, 0, "p8.0.m4s")));
        assert_eq!(p.hint, Some(at(8, 1, "p8.1.m4s")));
        assert!(!p.ended);
        // A hint that opens a segment; absolute URIs keep their path; the end.
        let text = LIVE.replace(
            "#EXT-X-PART:DURATION=0.240,URI=\"p8.0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p8.1.m4s\"\n",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"http://cdn.example/x/p8.0.m4s\"\n#EXT-X-ENDLIST\n",
        );
        let p = parse_playlist(&text, "/live/ab/hls/index.m3u8?_HLS_msn=7&_HLS_part=3").unwrap();
        assert_eq!(p.last_part, Some(at(7, 3, "p7.3.m4s")));
        assert_eq!(
            p.hint.map(|h| (h.msn, h.index, h.path)),
            Some((8, 0, "/x/p8.0.m4s".to_owned()))
        );
        assert!(p.ended);
    }

    #[test]
    fn what_is_not_a_playlist_is_refused_with_a_reason() {
        let path = "/live/ab/hls/index.m3u8";
        assert_eq!(parse_playlist("", path), Err("not_a_playlist"));
        assert_eq!(parse_playlist("<html>", path), Err("not_a_playlist"));
        assert_eq!(
            parse_playlist("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n", path),
            Err("bad_media_sequence")
        );
        assert_eq!(
            parse_playlist("#EXTM3U\n#EXT-X-PART:DURATION=0.2\n", path),
            Err("playlist_tag_without_uri")
        );
        assert_eq!(
            parse_playlist("#EXTM3U\n#EXT-X-PART:URI=\"a b\"\n", path),
            Err("bad_playlist_uri")
        );
        // Levee's own playlist, before any part: nothing to fetch yet, and not an error.
        let empty = parse_playlist("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n", path).unwrap();
        assert_eq!(empty, Playlist::default());
    }
}
