//! `levee serve --config FILE`: settings come from the file, then the environment, then the
//! flags; a bad file stops the start with the key and the line.

mod common;

use common::Levee;
use std::process::Command;

fn settings_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("levee-settings-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("temp file");
    path
}

fn ogg_url(levee: &Levee) -> String {
    levee.create_space("settings")["urls"]["ogg"]
        .as_str()
        .expect("urls.ogg")
        .to_owned()
}

#[test]
fn the_file_sets_flags_the_environment_beats_it_and_flags_beat_both() {
    let file = settings_file(
        "layers",
        "# levee settings\npublic-url = \"http://from-file.example\"\nmax_spaces = 50\n",
    );
    let f = file.to_str().unwrap();
    let from_file = Levee::start(&["--config", f]);
    assert!(ogg_url(&from_file).starts_with("http://from-file.example/live/"));
    drop(from_file);

    std::env::set_var("LEVEE_PUBLIC_URL", "http://from-env.example");
    let from_env = Levee::start(&["--config", f]);
    assert!(ogg_url(&from_env).starts_with("http://from-env.example/live/"));
    drop(from_env);

    let from_flag = Levee::start(&["--config", f, "--public-url", "http://from-flag.example"]);
    std::env::remove_var("LEVEE_PUBLIC_URL");
    assert!(ogg_url(&from_flag).starts_with("http://from-flag.example/live/"));
}

fn refused(text: &str, name: &str) -> String {
    let file = settings_file(name, text);
    let mut out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--no-record",
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("levee runs");
    // A server that started anyway would never exit: bound the wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while out.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = out.kill();
            panic!("levee started despite a bad settings file");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = out.wait_with_output().expect("output");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad settings file stops the start"
    );
    assert!(out.stdout.is_empty(), "nothing was started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_key_or_a_bad_value_is_refused_with_its_name_and_line() {
    let err = refused("ring-chunks = 512\n\nring_chunkz = 3\n", "unknown");
    assert!(err.contains("line 3: unknown key `ring_chunkz`"), "{err}");
    let err = refused("stall-timeout = \"soon\"\n", "bad-value");
    assert!(err.contains("line 1: `stall-timeout` = soon"), "{err}");
    let err = refused("max-connections = [1, 2]\n", "list");
    assert!(
        err.contains("line 1: `max-connections` takes one value, not a list"),
        "{err}"
    );
}
