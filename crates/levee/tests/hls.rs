//! LL-HLS as a client sees it: a real ffmpeg publishes a 1 kHz tone; the playlist carries the
//! low-latency tags and blocks until the part asked for; parts, segments and the init
//! segment are served with cache headers; ffprobe reads the stream as Opus at 48 kHz and
//! ffmpeg records the tone from the playlist; requests too far ahead, for parts gone or for
//! names that are not HLS files are refused with a reason.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// The (msn, part) of the preload hint of a playlist.
fn hint(pl: &str) -> (u64, u64) {
    let line = pl
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .unwrap_or_else(|| panic!("no preload hint in\n{pl}"));
    let uri = line
        .split("URI=\"p")
        .nth(1)
        .unwrap()
        .trim_end_matches(".m4s\"");
    let (m, p) = uri.split_once('.').unwrap();
    (m.parse().unwrap(), p.parse().unwrap())
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map_or("", |(_, v)| v.trim())
}

#[test]
fn a_live_space_is_low_latency_hls_that_ffmpeg_plays() {
    require_tool("ffprobe");
    let levee = Levee::start(&[]);
    let space = levee.create_space("hls");
    let id = space["id"].as_str().unwrap().to_owned();
    let url = space["urls"]["hls"].as_str().unwrap().to_owned();
    assert!(
        url.ends_with(&format!("/live/{id}/hls/index.m3u8")),
        "{url}"
    );
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    let path = format!("/live/{id}/hls/index.m3u8");
    wait_until(Duration::from_secs(10), "two whole segments", || {
        levee
            .http("GET", &path, &[], b"")
            .body
            .matches("#EXTINF:")
            .count()
            >= 2
    });

    let r = levee.http("GET", &path, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "content-type"), "application/vnd.apple.mpegurl");
    assert_eq!(header(&r, "cache-control"), "public, max-age=1");
    for tag in [
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.720",
        "#EXT-X-PART-INF:PART-TARGET=0.240",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PROGRAM-DATE-TIME:20",
        ",INDEPENDENT=YES",
    ] {
        assert!(r.body.contains(tag), "{tag} missing:\n{}", r.body);
    }

    // Blocking reload: asking for the hinted part waits until it is there, and not longer
    // than a part (240 ms) and a margin.
    let (msn, part) = hint(&r.body);
    let t = Instant::now();
    let b = levee.http(
        "GET",
        &format!("{path}?_HLS_msn={msn}&_HLS_part={part}"),
        &[],
        b"",
    );
    let waited = t.elapsed();
    assert_eq!(b.status, 200, "{}", b.body);
    assert!(
        b.body.contains(&format!("URI=\"p{msn}.{part}.m4s\"")),
        "the answer names the part asked for:\n{}",
        b.body
    );
    assert!(waited < Duration::from_millis(1_000), "blocked {waited:?}");
    assert_eq!(header(&b, "cache-control"), "public, max-age=6");
    // The part and its cache headers; the same ETag gets 304.
    let p = levee.http(
        "GET",
        &format!("/live/{id}/hls/p{msn}.{part}.m4s"),
        &[],
        b"",
    );
    assert_eq!(p.status, 200);
    assert_eq!(header(&p, "content-type"), "audio/mp4");
    assert_eq!(
        header(&p, "cache-control"),
        "public, max-age=86400, immutable"
    );
    let etag = header(&p, "etag").to_owned();
    let again = levee.http(
        "GET",
        &format!("/live/{id}/hls/p{msn}.{part}.m4s"),
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(again.status, 304);
    let init = levee.http("GET", &format!("/live/{id}/hls/init.mp4"), &[], b"");
    assert_eq!(init.status, 200);
    assert_eq!(&init.body.as_bytes()[4..8], b"ftyp");

    // Refusals with a reason, at once.
    let t = Instant::now();
    let far = levee.http("GET", &format!("{path}?_HLS_msn={}", msn + 10), &[], b"");
    assert_eq!(far.status, 400, "{}", far.body);
    let gone = levee.http("GET", &format!("/live/{id}/hls/p0.0.m4s"), &[], b"");
    assert!(matches!(gone.status, 200 | 410), "{}", gone.status);
    let future = levee.http("GET", &format!("/live/{id}/hls/s{}.m4s", msn + 5), &[], b"");
    assert_eq!(future.status, 404, "{}", future.body);
    assert_eq!(header(&future, "cache-control"), "no-store");
    for bad in ["p1.m4s", "s-1.m4s", "index.m3u", "s1.mp4"] {
        let r = levee.http("GET", &format!("/live/{id}/hls/{bad}"), &[], b"");
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
    }
    let r = levee.http("GET", &format!("{path}?_HLS_part=1"), &[], b"");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refusals took {:?}",
        t.elapsed()
    );
    let r = levee.http("GET", "/live/no-such-space/hls/index.m3u8", &[], b"");
    assert_eq!(r.status, 404);

    // ffprobe: one Opus stream at 48 kHz, two channels.
    let probe = Command::new("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(&url)
        .output()
        .expect("ffprobe runs");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let s = &v["streams"][0];
    assert_eq!(s["codec_name"], "opus", "{v}");
    assert_eq!(s["sample_rate"], "48000");
    assert_eq!(s["channels"], 2);

    // ffmpeg records 3 s of the tone from the playlist.
    let (seconds, f, _) = record_tone(&url, Some(3));
    assert!(seconds >= 2.5, "recorded only {seconds:.2} s");
    assert!((f - 1000.0).abs() <= 20.0, "dominant frequency {f} Hz");

    // The end closes the playlist.
    levee.end_space(&space);
    let r = levee.http("GET", &path, &[], b"");
    assert!(r.body.trim_end().ends_with("#EXT-X-ENDLIST"), "{}", r.body);
}

#[test]
fn a_ticketed_space_has_no_hls_and_a_silent_one_answers_in_bounded_time() {
    let levee = Levee::start(&[]);
    let r = levee.http(
        "POST",
        "/api/spaces",
        &[("Content-Type", "application/json")],
        br#"{"title": "tickets", "access": "ticketed"}"#,
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id = v["id"].as_str().unwrap();
    let r = levee.http("GET", &format!("/live/{id}/hls/index.m3u8"), &[], b"");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("open spaces only"), "{}", r.body);
    // No source: the playlist is empty, a blocking reload gives up after 3 s with 503.
    let space = levee.create_space("silent");
    let id = space["id"].as_str().unwrap();
    let r = levee.http("GET", &format!("/live/{id}/hls/index.m3u8"), &[], b"");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("#EXTINF"), "{}", r.body);
    let t = Instant::now();
    let r = levee.http(
        "GET",
        &format!("/live/{id}/hls/index.m3u8?_HLS_msn=0"),
        &[],
        b"",
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(2_900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}
