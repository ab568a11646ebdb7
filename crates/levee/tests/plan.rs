//! `levee plan` as a user runs it: the fleet for the audience asked for and for 25 million,
//! the limiting figure named, and bad input refused with a reason and exit code 2.

use std::process::Command;

fn plan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("plan")
        .args(args)
        .output()
        .expect("levee runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_fleet_for_8_and_25_million_names_what_limits_it() {
    let (code, out, err) = plan(&["--listeners", "8000000", "--bitrate", "32k"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("8,000,000 listeners: "), "{out}");
    assert!(out.contains("25,000,000 listeners: "), "{out}");
    assert_eq!(out.matches("limited by: ").count(), 2, "{out}");
    assert!(out.contains("docs/capacity.json"), "{out}");
    // Twice the bitrate, about twice the nodes when the network limits them.
    let nodes = |text: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with("8,000,000 listeners: "))
            .unwrap();
        line.split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    let (_, out64, _) = plan(&["--listeners", "8000000", "--bitrate", "64k"]);
    let (n32, n64) = (nodes(&out), nodes(&out64));
    assert!(out.contains("limited by: network"), "{out}");
    assert!(n64 >= 2 * n32 - 1 && n64 <= 2 * n32 + 1, "{n32} → {n64}");
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let (code, _, err) = plan(&["--bitrate", "1k"]);
    assert_eq!(code, 2);
    assert!(err.contains("6k to 512k"), "{err}");
    let bad = std::env::temp_dir().join(format!("levee-capacity-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"measured\": 1}").unwrap();
    let (code, _, err) = plan(&["--from", bad.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(code, 2);
    assert!(err.contains("capacity file"), "{err}");
    let (code, _, err) = plan(&["--headroom", "1.5"]);
    assert_eq!(code, 2);
    assert!(err.contains("headroom"), "{err}");
}
