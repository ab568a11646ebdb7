//! Recording and replay as a user meets them: a real ffmpeg publishes a 1 kHz tone; once the
//! space ends its replay is a VOD playlist that ffmpeg plays whole; a node killed mid-broadcast
//! and started again serves what it recorded up to the crash; a torn or damaged recording file
//! is cut or refused with a reason and the server goes on.

mod common;
use common::*;
use std::time::Duration;

fn data_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("levee-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_space_is_recorded_and_its_replay_plays_whole_once_it_ends() {
    let dir = data_dir("whole");
    let levee = Levee::start(&["--data-dir", dir.to_str().unwrap()]);
    let space = levee.create_space("recorded");
    let id = space["id"].as_str().unwrap().to_owned();
    let replay = space["urls"]["replay"].as_str().unwrap().to_owned();
    assert!(
        replay.ends_with(&format!("/live/{id}/replay/index.m3u8")),
        "{replay}"
    );
    let mut source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 5);
    levee.wait_live(&id, Duration::from_secs(10));
    // While on air there is no replay yet.
    let r = levee.http("GET", &format!("/live/{id}/replay/index.m3u8"), &[], b"");
    assert_eq!(r.status, 409, "{}", r.body);
    wait_until(Duration::from_secs(15), "ffmpeg to finish its 5 s", || {
        !source.running()
    });
    levee.end_space(&space);
    let mut pl = String::new();
    wait_until(Duration::from_secs(5), "the replay playlist", || {
        pl = levee
            .http("GET", &format!("/live/{id}/replay/index.m3u8"), &[], b"")
            .body;
        pl.contains("#EXT-X-ENDLIST")
    });
    assert!(pl.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{pl}");
    assert!(pl.matches("#EXTINF:").count() >= 4, "{pl}");
    let (seconds, f, _) = record_tone(&replay, None);
    assert!(
        seconds >= 4.0,
        "the replay lasts {seconds:.2} s of the 5 s published"
    );
    assert!((f - 1000.0).abs() <= 20.0, "dominant frequency {f} Hz");
    assert!(levee.metric("levee_recording_segments_total") >= 4.0);
    // The same recording as one Ogg/Opus file.
    let (seconds, f, _) = record_tone(&format!("{}/live/{id}/replay.ogg", levee.base), None);
    assert!(seconds >= 4.0, "the download lasts {seconds:.2} s");
    assert!((f - 1000.0).abs() <= 20.0, "dominant frequency {f} Hz");
    let r = levee.http("HEAD", &format!("/live/{id}/replay.ogg"), &[], b"");
    assert!(r.head.contains("audio/ogg"), "{}", r.head);
    // The host deletes the recording; nobody else can.
    let key = space["host_key"].as_str().unwrap();
    let path = format!("/live/{id}/replay");
    let r = levee.http("DELETE", &path, &[], b"");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = levee.http(
        "DELETE",
        &path,
        &[("Authorization", "Bearer not-the-key")],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = levee.http(
        "DELETE",
        &path,
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!dir.join(&id).exists());
    let r = levee.http("GET", &format!("{path}/index.m3u8"), &[], b"");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = levee.http("GET", &format!("{path}.ogg"), &[], b"");
    assert_eq!(r.status, 404, "{}", r.body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crash_loses_at_most_the_segment_being_written() {
    let dir = data_dir("crash");
    let args = ["--data-dir", dir.to_str().unwrap()];
    let levee = Levee::start(&args);
    let space = levee.create_space("crashes");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "four segments on disk", || {
        levee.metric("levee_recording_segments_total") >= 4.0
    });
    let written = levee.metric("levee_recording_segments_total");
    drop(levee); // SIGKILL mid-broadcast
                 // The crash came in the middle of a write: half a record at the end of the file.
    let file = dir.join(&id).join("segments.lvr");
    let mut bytes = std::fs::read(&file).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(b"LVS1 half a record");
    std::fs::write(&file, &bytes).unwrap();

    let levee = Levee::start(&args);
    assert_eq!(levee.metric("levee_recording_torn_cut_total"), 1.0);
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, whole);
    let pl = levee.http("GET", &format!("/live/{id}/replay/index.m3u8"), &[], b"");
    assert_eq!(pl.status, 200, "{}", pl.body);
    let segments = pl.body.matches("#EXTINF:").count() as f64;
    assert!(
        segments >= written - 1.0,
        "{segments} of {written} written segments"
    );
    let (seconds, f, _) = record_tone(&format!("{}/live/{id}/replay/index.m3u8", levee.base), None);
    assert!(
        seconds >= 3.0,
        "the replay up to the crash lasts {seconds:.2} s"
    );
    assert!((f - 1000.0).abs() <= 20.0, "dominant frequency {f} Hz");

    // A record damaged in the middle: the replay stops before it, says so, and the server
    // goes on serving.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let pl = levee.http("GET", &format!("/live/{id}/replay/index.m3u8"), &[], b"");
    assert_eq!(pl.status, 200, "{}", pl.body);
    assert!((pl.body.matches("#EXTINF:").count() as f64) < segments);
    let last = pl
        .body
        .lines()
        .rfind(|l| l.ends_with(".m4s"))
        .unwrap()
        .to_owned();
    let r = levee.http("GET", &format!("/live/{id}/replay/{last}"), &[], b"");
    assert_eq!(r.status, 200);
    for bad in ["r99999.m4s", "rx.m4s", "../segments.lvr", "init.mp4x"] {
        let r = levee.http("GET", &format!("/live/{id}/replay/{bad}"), &[], b"");
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
    }
    let r = levee.http("GET", "/live/no-such-space/replay/index.m3u8", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no recording"), "{}", r.body);
    assert_eq!(levee.http("GET", "/healthz", &[], b"").status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spaces_final_audience_is_kept_with_its_recording_and_served_after_a_restart() {
    let dir = data_dir("audience");
    let d = dir.to_str().unwrap();
    let mut levee = Levee::start(&["--data-dir", d, "--view-after", "1s"]);
    let space = levee.create_space("counted and kept");
    let id = space["id"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 1000, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    // Two listeners from addresses of their own: 2 s each, two views.
    let listeners: Vec<_> = (0..2)
        .map(|i| {
            let (addr, id) = (levee.addr, id.clone());
            std::thread::spawn(move || {
                let r = http_via(
                    Some(source(41, i)),
                    addr,
                    "GET",
                    &format!("/live/{id}.ogg"),
                    &[],
                    b"",
                );
                r.status
            })
        })
        .collect();
    // The space ends 2 s in: the listeners get the end of the stream and leave.
    std::thread::sleep(Duration::from_secs(2));
    levee.end_space(&space);
    for l in listeners {
        assert_eq!(l.join().unwrap(), 200);
    }
    let kept = dir.join(&id).join("audience.json");
    wait_until(Duration::from_secs(15), "the final numbers on disk", || {
        kept.exists()
    });
    let live: serde_json::Value = serde_json::from_str(
        &levee
            .http(
                "GET",
                &format!("/api/spaces/{id}/audience?series=0"),
                &[],
                b"",
            )
            .body,
    )
    .unwrap();
    assert_eq!(live["views"], 2, "{live}");
    assert_eq!(live["state"], "ended", "{live}");
    // After a restart the node no longer holds the space: the numbers come from the disk.
    assert!(levee.terminate().success());
    let levee = Levee::start(&["--data-dir", d]);
    let r = levee.http("GET", &format!("/api/spaces/{id}/audience"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["source"], "recording", "{v}");
    assert_eq!(v["views"], 2, "{v}");
    assert_eq!(v["uniques"], 2, "{v}");
    assert_eq!(v["sessions"], 2, "{v}");
    assert!(v["definitions"]["view"].as_str().unwrap().contains("1 s"));
    // A damaged file is refused with its reason; the server goes on.
    std::fs::write(&kept, b"{\"views\": ").unwrap();
    let r = levee.http("GET", &format!("/api/spaces/{id}/audience"), &[], b"");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("audience.json is unreadable"), "{}", r.body);
    assert_eq!(levee.http("GET", "/healthz", &[], b"").status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
