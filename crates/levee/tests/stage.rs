//! The stage with real ffmpeg speakers: the host invites speakers, each publishes a tone with
//! its own key, and a WebSocket listener decodes the programme with libopus. Both tones are in
//! the mix; a mute takes one out within 1 s; a third speaker joins without a gap; a wrong key
//! and undecodable audio are refused and nobody else hears a glitch.

mod common;

use common::{goertzel, publish_sine, Levee};
use futures_util::{SinkExt, StreamExt};
use levee_core::wire::{self, WireMessage};
use levee_server::stage::codec::Decoder;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The tests here measure real-time audio: they run one at a time, so that one's speakers
/// do not starve another's on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the listener got: per audio message, when it arrived, its sequence number, and its
/// decoded samples.
#[derive(Default)]
struct Got {
    /// (arrival, sequence number, samples, arrival minus capture time µs).
    packets: Vec<(Instant, u64, Vec<f32>, u64)>,
    stage: Vec<(Instant, u32, u32, u32)>,
}

fn invite(levee: &Levee, space: &Value, name: &str) -> Value {
    let id = space["id"].as_str().unwrap();
    let auth = format!("Bearer {}", space["host_key"].as_str().unwrap());
    let r = levee.http(
        "POST",
        &format!("/api/spaces/{id}/speakers"),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        json!({ "name": name }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["key"].as_str().unwrap().len() >= 32);
    assert!(v["urls"]["source"]
        .as_str()
        .unwrap()
        .starts_with("icecast://source:"));
    v
}

fn stage(levee: &Levee, id: &str) -> Value {
    let r = levee.http("GET", &format!("/api/spaces/{id}/stage"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Strength of `f` against `other` in the samples that arrived in `[from, to)`.
fn tones(got: &Got, from: Instant, to: Instant, freqs: &[f64]) -> Vec<f64> {
    let x: Vec<f64> = got
        .packets
        .iter()
        .filter(|(at, ..)| *at >= from && *at < to)
        .flat_map(|(_, _, pcm, _)| pcm.iter().map(|&v| v as f64))
        .collect();
    assert!(
        x.len() >= 9_600,
        "at least 200 ms of audio in the window, got {}",
        x.len()
    );
    let n = x.len() as f64;
    freqs
        .iter()
        .map(|&f| 2.0 * goertzel(&x, 48_000.0, f) / n)
        .collect()
}

async fn listen(url: String, got: Arc<Mutex<Got>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("listener connects");
    let mut dec = Decoder::new().unwrap();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let m = match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("listener stream ended: {other:?}"),
        };
        if let Message::Binary(b) = m {
            match wire::decode(&b).expect("a valid message") {
                WireMessage::Audio {
                    seq,
                    packet,
                    capture_us,
                } => {
                    let pcm = dec.decode(&packet).expect("the programme decodes").to_vec();
                    let delay = levee_server::clock::wall_us().saturating_sub(capture_us);
                    got.lock()
                        .unwrap()
                        .packets
                        .push((Instant::now(), seq, pcm, delay));
                }
                WireMessage::Stage {
                    revision,
                    on_stage,
                    speaking,
                } => got
                    .lock()
                    .unwrap()
                    .stage
                    .push((Instant::now(), revision, on_stage, speaking)),
                _ => {}
            }
        }
    }
}

async fn sleep(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_are_mixed_a_mute_takes_one_out_and_a_third_joins_without_a_gap() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let levee = Levee::start(&[]);
    let space = levee.create_space("interview");
    let id = space["id"].as_str().unwrap().to_owned();
    let (a, b, c) = (
        invite(&levee, &space, "Ada"),
        invite(&levee, &space, "Bo"),
        invite(&levee, &space, "Cy"),
    );
    let source = |v: &Value| v["urls"]["source"].as_str().unwrap().to_owned();
    let _fa = publish_sine(&source(&a), 440, "32k", 40);
    let _fb = publish_sine(&source(&b), 1000, "32k", 40);
    levee.wait_live(&id, Duration::from_secs(10));

    let got = Arc::new(Mutex::new(Got::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let listener = tokio::spawn(listen(ws, got.clone(), stop.clone()));

    // Both tones are in the programme.
    sleep(2.5).await;
    let now = Instant::now();
    let t = tones(
        &got.lock().unwrap(),
        now - Duration::from_secs(1),
        now,
        &[440.0, 1000.0, 700.0],
    );
    assert!(t[0] > 0.05 && t[1] > 0.05, "both speakers heard: {t:?}");
    assert!(t[2] < t[0] / 20.0, "and nothing else: {t:?}");
    // The same mix on every protocol: real ffmpeg decodes progressive Ogg and LL-HLS.
    for url in [
        space["urls"]["ogg"].as_str().unwrap().to_owned(),
        space["urls"]["hls"].as_str().unwrap().to_owned(),
    ] {
        let pcm = tokio::task::spawn_blocking({
            let url = url.clone();
            move || common::record_pcm(&url, Some(2))
        })
        .await
        .unwrap();
        let tail = &pcm[pcm.len().saturating_sub(48_000)..];
        let n = tail.len() as f64;
        let (a4, b5) = (
            2.0 * goertzel(tail, 48_000.0, 440.0) / n,
            2.0 * goertzel(tail, 48_000.0, 1000.0) / n,
        );
        // ffmpeg writes 16-bit samples: a 0.125 sine is about 4,096.
        assert!(
            a4 > 1500.0 && b5 > 1500.0,
            "{url}: both tones, {a4:.0} and {b5:.0}"
        );
    }
    let st = stage(&levee, &id);
    assert_eq!(st["mixing"], true);
    assert_eq!(levee.metric("levee_stage_mixing"), 1.0);
    assert_eq!(levee.metric("levee_stage_inputs"), 2.0);
    assert!(levee.metric("levee_stage_frames_total") > 50.0);
    assert_eq!(levee.metric("levee_stage_starts_total"), 1.0);
    let speakers = st["speakers"].as_array().unwrap();
    assert_eq!(speakers.len(), 3);
    assert!(
        speakers[0]["on_stage"] == true && speakers[0]["speaking"] == true,
        "{st}"
    );
    assert!(speakers[2]["on_stage"] == false, "{st}");
    // The speaking indicators travel in the stream: the listener saw slots 1 and 2 speak.
    assert!(
        got.lock()
            .unwrap()
            .stage
            .iter()
            .any(|s| s.3 & 0b110 == 0b110),
        "STAGE messages say who speaks"
    );

    // Bo is muted by the host: 1 kHz leaves within 1 s.
    let auth = format!("Bearer {}", space["host_key"].as_str().unwrap());
    let muted_at = Instant::now();
    let r = levee.http(
        "PATCH",
        &format!(
            "/api/spaces/{id}/speakers/{}",
            b["speaker_id"].as_str().unwrap()
        ),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"muted": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Bo cannot unmute what the host muted.
    let bo_auth = format!("Bearer {}", b["key"].as_str().unwrap());
    let r = levee.http(
        "PATCH",
        &format!(
            "/api/spaces/{id}/speakers/{}",
            b["speaker_id"].as_str().unwrap()
        ),
        &[
            ("Authorization", &bo_auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"muted": false}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    sleep(1.6).await;
    let t = tones(
        &got.lock().unwrap(),
        muted_at + Duration::from_secs(1),
        Instant::now(),
        &[440.0, 1000.0],
    );
    assert!(t[0] > 0.05 && t[1] < t[0] / 20.0, "muted within 1 s: {t:?}");

    // Cy joins mid-broadcast: no gap for the listener, and 700 Hz comes in.
    let joined_at = Instant::now();
    let _fc = publish_sine(&source(&c), 700, "32k", 40);
    sleep(2.5).await;
    let now = Instant::now();
    let t = tones(
        &got.lock().unwrap(),
        now - Duration::from_secs(1),
        now,
        &[440.0, 700.0, 1000.0],
    );
    assert!(
        t[0] > 0.05 && t[1] > 0.05 && t[2] < t[0] / 20.0,
        "Ada and Cy heard, Bo not: {t:?}"
    );
    {
        let g = got.lock().unwrap();
        let around: Vec<&(Instant, u64, Vec<f32>, u64)> = g
            .packets
            .iter()
            .filter(|p| p.0 >= joined_at - Duration::from_secs(1))
            .collect();
        for w in around.windows(2) {
            assert_eq!(w[1].1, w[0].1 + 1, "no sequence gap while Cy joined");
            let apart = w[1].0 - w[0].0;
            assert!(
                apart < Duration::from_millis(300),
                "audio kept flowing: {apart:?} apart"
            );
        }
        // And no dropout in the decoded audio: every 20 ms of the steady speaker is there.
        let quiet = around
            .iter()
            .filter(|p| {
                let e: f32 = p.2.iter().map(|v| v * v).sum::<f32>() / p.2.len().max(1) as f32;
                e < 1e-4
            })
            .count();
        assert_eq!(quiet, 0, "no silent frame while Cy joined");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_undecodable_audio_are_refused_and_nobody_hears_a_glitch() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let levee = Levee::start(&[]);
    let space = levee.create_space("bad input");
    let id = space["id"].as_str().unwrap().to_owned();
    let a = invite(&levee, &space, "Ada");
    let bad = invite(&levee, &space, "Mallory");
    let _fa = publish_sine(a["urls"]["source"].as_str().unwrap(), 440, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));

    // A wrong speaker key: refused with a reason, on both ingest paths.
    let wrong = "0123456789abcdef0123456789abcdef";
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("source:{wrong}")
        )
    );
    let r = levee.http(
        "PUT",
        &format!("/live/{id}.ogg"),
        &[("Authorization", &basic), ("Content-Type", "audio/ogg")],
        b"OggS",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("speaker key"), "{}", r.body);

    let got = Arc::new(Mutex::new(Got::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::spawn(listen(
        space["urls"]["ws"].as_str().unwrap().to_owned(),
        got.clone(),
        stop.clone(),
    ));
    sleep(1.5).await;

    // Mallory, over the WebSocket, sends a packet whose TOC is valid but whose body libopus
    // cannot decode... or one the ingest refuses outright: either way the connection ends
    // with a reason.
    let publish = bad["urls"]["publish"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(publish).await.unwrap();
    ws.send(Message::Text(
        json!({ "key": bad["key"] }).to_string().into(),
    ))
    .await
    .unwrap();
    let ready = ws.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("ready"));
    let started = Instant::now();
    let mut msg = bytes::BytesMut::new();
    // Code 3 (several frames), count 0: an invalid Opus packet (RFC 6716 §3.2.5).
    wire::put_audio(&mut msg, 0, 0, &[0x03, 0x00, 0xff, 0xff]);
    ws.send(Message::Binary(msg.freeze())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.expect("a close frame with a reason"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1007, "{close:?}");
    assert!(!close.reason.is_empty());

    sleep(1.5).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.await.unwrap();
    let g = got.lock().unwrap();
    let around: Vec<&(Instant, u64, Vec<f32>, u64)> = g
        .packets
        .iter()
        .filter(|p| p.0 >= started - Duration::from_millis(500))
        .collect();
    assert!(around.len() > 50);
    for w in around.windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1, "no sequence gap");
        assert!(w[1].0 - w[0].0 < Duration::from_millis(300));
    }
    let t = tones(&g, started, Instant::now(), &[440.0]);
    assert!(t[0] > 0.05, "Ada is heard throughout: {t:?}");
    assert!(levee.metric("levee_ingest_errors_total{reason=\"bad_opus\"}") >= 1.0);
}

/// A speaker on the WebSocket: sends a tone as AUDIO messages in real time (capture time: the
/// wall clock when encoded) and decodes what the server sends back. Returns the received
/// samples of the last second and the mouth-to-ear delays (arrival minus capture) of every
/// return packet.
async fn ws_speaker(url: String, key: String, freq: f32, seconds: f64) -> (Vec<f32>, Vec<u64>) {
    use levee_server::stage::codec::Encoder;
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::Text(json!({ "key": key }).to_string().into()))
        .await
        .unwrap();
    let ready = rx.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("ready"), "{ready:?}");
    let sender = tokio::spawn(async move {
        let mut enc = Encoder::programme().unwrap();
        let frames = (seconds * 50.0) as usize;
        let start = tokio::time::Instant::now();
        for f in 0..frames {
            let pcm: Vec<f32> = (0..960)
                .map(|k| {
                    let t = (f * 960 + k) as f32 / 48_000.0;
                    0.2 * (2.0 * std::f32::consts::PI * freq * t).sin()
                })
                .collect();
            let packet = enc.encode(&pcm).unwrap().to_vec();
            let mut msg = bytes::BytesMut::new();
            wire::put_audio(&mut msg, f as u64, levee_server::clock::wall_us(), &packet);
            tx.send(Message::Binary(msg.freeze())).await.unwrap();
            tokio::time::sleep_until(start + Duration::from_millis(20 * (f as u64 + 1))).await;
        }
        tx.send(Message::Close(None)).await.ok();
    });
    let mut dec = Decoder::new().unwrap();
    let mut pcm = Vec::new();
    let mut delays = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), rx.next()).await {
        if let Message::Binary(b) = m {
            if let Ok(WireMessage::Audio {
                capture_us, packet, ..
            }) = wire::decode(&b)
            {
                delays.push(levee_server::clock::wall_us().saturating_sub(capture_us));
                pcm.extend_from_slice(dec.decode(&packet).unwrap());
            }
        }
    }
    sender.await.unwrap();
    let tail = pcm[pcm.len().saturating_sub(48_000)..].to_vec();
    (tail, delays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_speakers_hear_each_other_not_themselves_within_300_ms() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let levee = Levee::start(&[]);
    let space = levee.create_space("two browsers");
    let (x, y) = (invite(&levee, &space, "Xi"), invite(&levee, &space, "Yu"));
    let url = x["urls"]["publish"].as_str().unwrap().to_owned();
    let key = |v: &Value| v["key"].as_str().unwrap().to_owned();
    let got = Arc::new(Mutex::new(Got::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let (hx, hy, ()) = tokio::join!(
        ws_speaker(url.clone(), key(&x), 440.0, 4.0),
        ws_speaker(url, key(&y), 1000.0, 4.0),
        async {
            // A listener joins once the stage is live, and leaves before the speakers do.
            sleep(0.8).await;
            let l = tokio::spawn(listen(ws, got.clone(), stop.clone()));
            sleep(3.0).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            l.await.unwrap();
        }
    );
    let mut d: Vec<u64> = got.lock().unwrap().packets.iter().map(|p| p.3).collect();
    assert!(d.len() > 50, "the listener heard the stage");
    d.sort_unstable();
    eprintln!(
        "speaker-to-listener (WebSocket) mouth-to-ear: median {} ms, p95 {} ms",
        d[d.len() / 2] / 1000,
        d[d.len() * 95 / 100] / 1000
    );
    assert!(d[d.len() / 2] < 400_000);
    for ((tail, delays), own, other) in [(hx, 440.0, 1000.0), (hy, 1000.0, 440.0)] {
        assert!(
            tail.len() >= 24_000,
            "a return feed arrived: {} samples",
            tail.len()
        );
        let x: Vec<f64> = tail.iter().map(|&v| v as f64).collect();
        let n = x.len() as f64;
        let (mine, theirs) = (
            2.0 * goertzel(&x, 48_000.0, own) / n,
            2.0 * goertzel(&x, 48_000.0, other) / n,
        );
        assert!(theirs > 0.05, "hears the other speaker: {theirs}");
        assert!(mine < theirs / 20.0, "not themselves: {mine} vs {theirs}");
        let mut d = delays.clone();
        d.sort_unstable();
        let median = d[d.len() / 2];
        eprintln!(
            "speaker-to-speaker mouth-to-ear: median {} ms, p95 {} ms over {} packets",
            median / 1000,
            d[d.len() * 95 / 100] / 1000,
            d.len()
        );
        assert!(median < 300_000, "median mouth-to-ear {median} µs");
    }
}

#[test]
fn whip_refuses_bad_offers_and_keys_with_a_reason() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let levee = Levee::start(&[]);
    let space = levee.create_space("whip input");
    let id = space["id"].as_str().unwrap().to_owned();
    let ada = invite(&levee, &space, "Ada");
    assert!(ada["urls"]["whip"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/live/{id}/whip")));
    assert!(ada["urls"]["page"]
        .as_str()
        .unwrap()
        .contains("/speak#key="));
    let path = format!("/live/{id}/whip");
    let key = format!("Bearer {}", ada["key"].as_str().unwrap());
    let sdp = ("Content-Type", "application/sdp");
    let post = |headers: &[(&str, &str)], body: &[u8]| levee.http("POST", &path, headers, body);

    let r = post(&[sdp], b"v=0\r\n");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(
        &[sdp, ("Authorization", "Bearer 0123456789abcdef")],
        b"v=0\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("speaker key"), "{}", r.body);
    let r = post(
        &[("Content-Type", "text/plain"), ("Authorization", &key)],
        b"v=0\r\n",
    );
    assert_eq!(r.status, 415, "{}", r.body);
    let r = post(
        &[sdp, ("Authorization", &key)],
        b"v=0\r\nthis is no offer\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("SDP") || r.body.contains("offer"),
        "{}",
        r.body
    );
    let big = vec![b'a'; 20_000];
    let r = post(&[sdp, ("Authorization", &key)], &big);
    assert_eq!(r.status, 413, "{}", r.body);
    let r = levee.http(
        "PATCH",
        &format!("{path}/0123"),
        &[("Authorization", &key)],
        b"",
    );
    assert_eq!(r.status, 405, "{}", r.body);
    let r = levee.http(
        "DELETE",
        &format!("{path}/0123"),
        &[("Authorization", &key)],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    // Nothing of it reached the stage.
    let st = stage(&levee, &id);
    assert_eq!(st["mixing"], false, "{st}");
    assert!(levee.metric("levee_ingest_errors_total{reason=\"bad_key\"}") >= 2.0);
    assert!(levee.metric("levee_ingest_errors_total{reason=\"bad_structure\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirteen_speakers_are_heard_at_once_and_one_dropping_out_leaves_no_gap() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let levee = Levee::start(&[]);
    let space = levee.create_space("panel of thirteen");
    let speakers: Vec<Value> = (0..13)
        .map(|i| invite(&levee, &space, &format!("S{i}")))
        .collect();
    let freq = |i: usize| 300.0 + 110.0 * i as f32;
    let got = Arc::new(Mutex::new(Got::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for (i, s) in speakers.iter().enumerate() {
        let url = s["urls"]["publish"].as_str().unwrap().to_owned();
        let key = s["key"].as_str().unwrap().to_owned();
        // The last speaker stops after 2 s; the others talk for 5 s.
        let seconds = if i == 12 { 2.0 } else { 5.0 };
        tasks.push(tokio::spawn(ws_speaker(url, key, freq(i), seconds)));
    }
    sleep(0.5).await;
    let listener = tokio::spawn(listen(ws, got.clone(), stop.clone()));
    sleep(1.5).await;
    let now = Instant::now();
    let st = stage(&levee, space["id"].as_str().unwrap());
    let on: usize = st["speakers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["on_stage"] == true)
        .count();
    assert_eq!(on, 13, "{st}");
    let freqs: Vec<f64> = (0..13).map(|i| freq(i) as f64).collect();
    let t = tones(
        &got.lock().unwrap(),
        now - Duration::from_millis(800),
        now,
        &freqs,
    );
    // Thirteen tones of 0.2 sum past full scale: the limiter brings each to about 0.07.
    assert!(t.iter().all(|&a| a > 0.02), "all thirteen heard: {t:?}");
    let dropped_at = Instant::now();
    sleep(2.0).await;
    let now = Instant::now();
    let t = tones(
        &got.lock().unwrap(),
        now - Duration::from_millis(800),
        now,
        &freqs,
    );
    assert!(t[..12].iter().all(|&a| a > 0.02), "twelve heard on: {t:?}");
    assert!(t[12] < t[0] / 10.0, "the one who stopped is out: {t:?}");
    {
        let g = got.lock().unwrap();
        let around: Vec<_> = g
            .packets
            .iter()
            .filter(|p| p.0 >= dropped_at - Duration::from_secs(1))
            .collect();
        assert!(around.len() > 100);
        for w in around.windows(2) {
            assert_eq!(
                w[1].1,
                w[0].1 + 1,
                "no sequence gap when a speaker dropped out"
            );
            assert!(w[1].0 - w[0].0 < Duration::from_millis(300));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(levee.metric("levee_stage_minus_encodes_total") > 100.0);
}

#[test]
fn requests_to_speak_are_bounded_per_address_and_answered_with_a_token() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let levee = Levee::start(&[]);
    let space = levee.create_space("requests");
    let id = space["id"].as_str().unwrap().to_owned();
    let ask = |name: &str| {
        levee.http(
            "POST",
            &format!("/api/spaces/{id}/requests"),
            &[("Content-Type", "application/json")],
            json!({ "name": name }).to_string().as_bytes(),
        )
    };
    let first: Value = serde_json::from_str(&ask("Dee").body).unwrap();
    assert_eq!(ask("Eve").status, 201);
    let third = ask("Flo");
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.body.contains("this address"), "{}", third.body);
    let rid = first["request_id"].as_str().unwrap();
    let answer = |token: &str| {
        levee.http(
            "GET",
            &format!("/api/spaces/{id}/requests/{rid}"),
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    };
    assert_eq!(answer("wrong").status, 403);
    let token = first["token"].as_str().unwrap();
    assert!(answer(token).body.contains("waiting"));
    // The host accepts Dee: her key comes with the answer once.
    let auth = format!("Bearer {}", space["host_key"].as_str().unwrap());
    let r = levee.http(
        "POST",
        &format!("/api/spaces/{id}/speakers"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        json!({ "request_id": rid }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let got: Value = serde_json::from_str(&answer(token).body).unwrap();
    assert_eq!(got["answer"], "accepted");
    assert!(got["key"].as_str().unwrap().len() >= 32);
    let again: Value = serde_json::from_str(&answer(token).body).unwrap();
    assert!(
        again.get("key").is_none() && again["key_collected"] == true,
        "{again}"
    );
    // Her request is answered: the address may ask again.
    assert_eq!(ask("Flo").status, 201);
}
