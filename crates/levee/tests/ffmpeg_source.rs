//! A host publishing with ffmpeg over `icecast://` is heard by listeners using ffmpeg and
//! WebSocket; a source that drops and reconnects keeps its listeners.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn sine_published_with_ffmpeg_is_recorded_at_1khz_by_ffmpeg() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("sine");
    let id = space["id"].as_str().unwrap();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    levee.wait_live(id, Duration::from_secs(10));

    let (seconds, f, rms) = record_tone(space["urls"]["ogg"].as_str().unwrap(), Some(3));
    assert!(seconds >= 2.5, "recorded only {seconds:.2} s");
    // The last second (past any start-up transient).
    assert!(
        (f - 1000.0).abs() <= 20.0,
        "dominant frequency {f} Hz, expected 1 kHz"
    );
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
