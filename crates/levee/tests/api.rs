//! The JSON API, the space life cycle, the demo programme and the Ogg stream's structure.

mod common;
use common::*;
use levee_media::ogg::{PacketAssembler, PageReader, MAX_PAGE};
use levee_media::opus::{self, OpusHead};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

#[test]
fn spaces_are_created_listed_inspected_and_ended_only_with_the_host_key() {
    let levee = Levee::start(&[]);
    let created = levee.create_space("  Evening talk  ");
    let id = created["id"].as_str().unwrap();
    let key = created["host_key"].as_str().unwrap();
    assert_eq!(created["title"], "Evening talk");
    assert_eq!(created["state"], "scheduled");
    let base = &levee.base;
    let authority = base.trim_start_matches("http://");
    assert_eq!(created["urls"]["ogg"], format!("{base}/live/{id}.ogg"));
    assert_eq!(
        created["urls"]["ws"],
        format!("ws://{authority}/live/{id}/ws")
    );
    assert_eq!(created["urls"]["page"], format!("{base}/space/{id}"));
    assert_eq!(
        created["urls"]["host_page"],
        format!("{base}/space/{id}/host")
    );
    assert_eq!(
        created["urls"]["source"],
        format!("icecast://source:{key}@{authority}/live/{id}.ogg")
    );

    let list = json(&levee.http("GET", "/api/spaces", &[], b""));
    let listed = list["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .expect("listed");
    assert!(
        listed.get("host_key").is_none(),
        "the list must not leak host keys"
    );
    assert!(listed["urls"].get("source").is_none());
    assert_eq!(levee.space(id)["listeners"], 0);

    let r = levee.http("DELETE", &format!("/api/spaces/{id}"), &[], b"");
    assert_eq!(r.status, 401);
    assert!(json(&r)["error"].as_str().unwrap().contains("Bearer"));
    let r = levee.http(
        "DELETE",
        &format!("/api/spaces/{id}"),
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json(&r)["state"], "ended");
    assert_eq!(
        levee
            .http("GET", &format!("/live/{id}.ogg"), &[], b"")
            .status,
        410
    );
    assert_eq!(levee.http("GET", "/api/spaces/nope", &[], b"").status, 404);
}

#[test]
fn invalid_requests_get_a_reason_and_create_nothing() {
    let levee = Levee::start(&[]);
    let ct = [("Content-Type", "application/json")];
    for (body, status, words) in [
        (r#"{"title": "   "}"#.to_owned(), 422, "empty"),
        (
            format!(r#"{{"title": "{}"}}"#, "x".repeat(201)),
            422,
            "at most 200",
        ),
        (r#"{"title": 12}"#.to_owned(), 422, "title"),
        (r#"{"title": "ok", "admin": true}"#.to_owned(), 422, "admin"),
        ("{not json".to_owned(), 400, "JSON"),
        (
            format!(r#"{{"title": "{}"}}"#, "x".repeat(20_000)),
            413,
            "length limit",
        ),
    ] {
        let r = levee.http("POST", "/api/spaces", &ct, body.as_bytes());
        assert_eq!(r.status, status, "{body:.60}: {r:?}");
        let err = json(&r)["error"].as_str().unwrap().to_owned();
        assert!(
            err.contains(words),
            "error for {body:.60} should mention {words:?}: {err}"
        );
    }
    let list = json(&levee.http("GET", "/api/spaces", &[], b""));
    assert_eq!(list["spaces"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_space_releases_its_listeners_with_a_reason() {
    let levee = Levee::start(&[]);
    let space = levee.create_space("short");
    let id = space["id"].as_str().unwrap().to_owned();
    let key = space["host_key"].as_str().unwrap().to_owned();
    let _source = publish_sine(space["urls"]["source"].as_str().unwrap(), 300, "32k", 30);
    levee.wait_live(&id, Duration::from_secs(10));
    let ws = space["urls"]["ws"].as_str().unwrap().to_owned();
    let listener = tokio::spawn(async move {
        ws_listen(&ws, Duration::from_secs(10), Duration::from_secs(20)).await
    });
    let addr = levee.addr;
    // Keep the server alive until the listener has seen the end.
    let _levee = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), "the listener is counted", || {
            levee.space(&id)["listeners"] == 1
        });
        let sent = format!("levee_chunks_sent_total{{space=\"{id}\",format=\"ws\"}}");
        wait_until(Duration::from_secs(10), "the listener hears audio", || {
            levee.metric(&sent) >= 10.0
        });
        let r = http(
            addr,
            "DELETE",
            &format!("/api/spaces/{id}"),
            &[("Authorization", &format!("Bearer {key}"))],
            b"",
        );
        assert_eq!(r.status, 200);
        levee
    })
    .await
    .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("listener released within 5 s of the end")
        .unwrap();
    let (code, reason) = heard
        .close
        .clone()
        .unwrap_or_else(|| panic!("no close frame: {heard:?}"));
    assert_eq!(code, 1001);
    assert!(reason.contains("ended"), "{reason}");
    assert!(
        heard.seqs.len() >= 10,
        "heard {} packets before the end",
        heard.seqs.len()
    );
}

#[test]
fn demo_space_is_live_and_its_ogg_stream_starts_with_valid_opus_headers() {
    let levee = Levee::start_mode("demo", &[]);
    let list = json(&levee.http("GET", "/api/spaces", &[], b""));
    let demo = list["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "demo")
        .expect("demo space listed");
    assert_eq!(demo["state"], "live");

    // A listener joining mid-stream gets OpusHead and OpusTags pages, then live pages.
    let mut s = TcpStream::connect(levee.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /live/demo.ogg HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut reader = PageReader::new(MAX_PAGE);
    let mut asm = PacketAssembler::new(8000);
    let mut packets = Vec::new();
    let mut body_started = false;
    let mut granules = Vec::new();
    while packets.len() < 60 {
        let n = s.read(&mut buf).expect("stream keeps coming");
        assert!(n > 0, "stream closed early");
        if !body_started {
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                assert!(head.contains("content-type: audio/ogg"), "{head}");
                reader.push(&raw[end + 4..]);
                body_started = true;
            }
        } else {
            reader.push(&buf[..n]);
        }
        while let Some(page) = reader.next_page().expect("valid pages with valid CRCs") {
            granules.push(page.granule);
            asm.push(&page, &mut packets).expect("packets reassemble");
        }
    }
    assert_eq!(OpusHead::parse(&packets[0].data).unwrap().channels, 2);
    assert!(packets[0].bos);
    opus::check_tags(&packets[1].data).unwrap();
    for p in &packets[2..] {
        assert_eq!(opus::packet_samples(&p.data).unwrap(), 960);
    }
    // Live pages carry increasing granule positions.
    let live = &granules[2..];
    assert!(live.windows(2).all(|w| w[1] > w[0]), "{live:?}");
}

#[test]
fn metrics_expose_the_documented_series() {
    let levee = Levee::start_mode("demo", &[]);
    let r = levee.http("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .head
        .to_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    for series in [
        "levee_listeners{space=\"demo\",format=\"ogg\"}",
        "levee_joins_total{space=\"demo\",format=\"ws\"}",
        "levee_bytes_sent_total{space=\"demo\",format=\"ogg\"}",
        "levee_chunks_sent_total{space=\"demo\",format=\"ws\"}",
        "levee_lagging_skips_total{space=\"demo\",format=\"ws\"}",
        "levee_stalled_cuts_total{space=\"demo\",format=\"ogg\"}",
        "levee_ingest_packets_total{space=\"demo\"}",
        "levee_ingest_errors_total{reason=\"bad_crc\"}",
    ] {
        assert!(r.body.contains(series), "missing {series}");
    }
    wait_until(Duration::from_secs(5), "demo packets are counted", || {
        levee.metric("levee_ingest_packets_total{space=\"demo\"}") > 0.0
    });
}

#[test]
fn operator_actions_are_kept_in_the_audit_log_with_who_and_when() {
    let levee = Levee::start(&["--admin-key", "audit-key"]);
    let auth = [
        ("authorization", "Bearer audit-key"),
        ("content-type", "application/json"),
    ];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ban = levee.http(
        "POST",
        "/api/admin/bans",
        &auth,
        br#"{"cidr":"127.9.9.0/24","seconds":60}"#,
    );
    assert_eq!(ban.status, 201, "{}", ban.body);
    let allow = levee.http(
        "POST",
        "/api/admin/allow",
        &auth,
        br#"{"cidr":"127.8.0.0/16"}"#,
    );
    assert_eq!(allow.status, 201, "{}", allow.body);
    let unban = levee.http("DELETE", "/api/admin/bans?cidr=127.9.9.0/24", &auth, b"");
    assert_eq!(unban.status, 200, "{}", unban.body);
    // A refused action is not an action.
    let missing = levee.http("DELETE", "/api/admin/bans?cidr=127.7.0.0/16", &auth, b"");
    assert_eq!(missing.status, 404);

    assert_eq!(levee.http("GET", "/api/admin/audit", &[], b"").status, 401);
    let log = levee.http("GET", "/api/admin/audit", &auth, b"");
    assert_eq!(log.status, 200, "{}", log.body);
    let v: serde_json::Value = serde_json::from_str(&log.body).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["what"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("ban", "127.9.9.0/24 for 60 s"),
            ("allow", "127.8.0.0/16"),
            ("unban", "127.9.9.0/24")
        ]
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["who"], "127.0.0.1");
        assert!(e["at"].as_u64().unwrap() >= before);
    }
    assert_eq!(v["dropped"], 0);
    let newer = levee.http("GET", "/api/admin/audit?since=2", &auth, b"");
    let v: serde_json::Value = serde_json::from_str(&newer.body).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["entries"][0]["action"], "unban");
}

#[test]
fn the_shipped_grafana_dashboard_asks_only_for_series_levee_serves() {
    // deploy/grafana/levee.json must parse, and every metric its queries name must be one
    // that /metrics serves (a renamed metric would leave a panel empty without a word).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/levee.json"
    ))
    .expect("deploy/grafana/levee.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let levee = Levee::start(&[]);
    let metrics = levee.http("GET", "/metrics", &[], b"").body;
    // Every family has its TYPE line, with or without samples yet.
    let served: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut asked = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("levee_") || word.starts_with("process_") {
                    asked += 1;
                    assert!(
                        served.contains(word),
                        "panel {:?} asks for {word}, which /metrics does not serve",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(asked >= 15, "{asked} series asked for");
}
