//! A host publishing with ffmpeg over `icecast://` is heard by listeners using ffmpeg and
//! WebSocket; a source that drops and reconnects keeps its listeners.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn sine_published_with_ffmpeg_is_recorded_at_1khz_by_ffmpeg() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("sine");
    let id = space["id"].as_str().unwrap();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    levee.wait_live(id, Duration::from_secs(10));

    let out = std::env::temp_dir().join(format!("levee-sine-{}.wav", std::process::id()));
    let status = Command::new("timeout")
        .arg("20")
        .args([
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-i",
        ])
        .arg(space["urls"]["ogg"].as_str().unwrap())
        .args(["-t", "3", "-ac", "1", "-ar", "48000", "-y"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(
        status.success(),
        "ffmpeg could not record the Ogg stream: {status}"
    );
    let (rate, channels, samples) = read_wav(&std::fs::read(&out).unwrap());
    let _ = std::fs::remove_file(&out);
    assert_eq!((rate, channels), (48_000, 1));
    let seconds = samples.len() as f64 / rate as f64;
    assert!(seconds >= 2.5, "recorded only {seconds:.2} s");
    // Analyse the last second (past any start-up transient).
    let tail: Vec<f64> = samples[samples.len() - 48_000..]
        .iter()
        .map(|&s| s as f64)
        .collect();
    let f = dominant_frequency(&tail, rate as f64);
    assert!(
        (f - 1000.0).abs() <= 20.0,
        "dominant frequency {f} Hz, expected 1 kHz"
    );
    let rms = (tail.iter().map(|v| v * v).sum::<f64>() / tail.len() as f64).sqrt();
    assert!(rms > 1000.0, "recording is near silent (RMS {rms:.0})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_that_reconnects_keeps_listeners_and_continues_the_sequence() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("reconnect");
    let id = space["id"].as_str().unwrap().to_owned();
    let source_url = space["urls"]["source"].as_str().unwrap().to_owned();
    let ws_url = space["urls"]["ws"].as_str().unwrap().to_owned();

    let first = publish_sine(&source_url, 440, "32k", 2);
    let listener = tokio::spawn(async move {
        ws_listen(&ws_url, Duration::from_secs(10), Duration::from_secs(5)).await
    });
    tokio::task::spawn_blocking({
        let mut first = first;
        move || {
            wait_until(Duration::from_secs(10), "first source ends", || {
                !first.running()
            })
        }
    })
    .await
    .unwrap();
    // The host comes back a moment later; the listener stays connected throughout.
    let _second = publish_sine(&source_url, 880, "32k", 10);
    let heard = listener.await.unwrap();
    assert!(heard.head, "listener got the HEAD message");
    assert!(
        heard.close.is_none(),
        "listener was disconnected: {:?}",
        heard.close
    );
    assert_eq!(
        heard.gaps(),
        0,
        "sequence numbers must continue across the reconnect"
    );
    // 5 s of listening across ~1 s of silence between sources: well over 3 s of audio.
    assert!(
        heard.seqs.len() >= 150,
        "only {} packets heard",
        heard.seqs.len()
    );
    assert!(levee.metric(&format!("levee_sources_total{{space=\"{id}\"}}")) >= 2.0);
}
