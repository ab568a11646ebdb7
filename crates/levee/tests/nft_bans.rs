//! The kernel mirror of the bans (`--nft-table`) against the real binary and the real kernel:
//! each test that touches nftables runs again in a network namespace of its own (`unshare
//! --net`, loopback up), where the table, levee and every connection are the test's alone. It
//! needs root, `unshare`, `ip` and `nft` (.ci/run installs nftables) and fails, never skips,
//! without them.

mod common;
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "nft-test-admin";
const TABLE: &str = "levee_test";
/// Set in the copy of the test binary that runs inside the namespace.
const INNER: &str = "LEVEE_NFT_TEST_NETNS";

/// Runs `body` in a fresh network namespace: this binary runs test `name` again under
/// `unshare --net` (with loopback up), and this test passes when that run passed its test.
fn in_own_netns(name: &str, body: impl FnOnce()) {
    if std::env::var_os(INNER).is_some() {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
        return body();
    }
    for tool in ["unshare", "ip", "nft"] {
        require_tool(tool);
    }
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "`{name}` failed in its own network namespace ({}; unshare --net needs root): see above",
        out.status
    );
}

/// Runs `nft ARGS`; its stdout, or `Err` with its stderr.
fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft").args(args).output().expect("nft runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ban_set(family: &str) -> String {
    nft(&["list", "set", "inet", TABLE, &format!("ban{family}")]).expect("the set is listed")
}

/// Seconds of an nft duration such as `1m59s996ms`.
fn seconds(d: &str) -> f64 {
    let (mut total, mut num) = (0.0, String::new());
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('d', _) => 86_400.0,
            ('h', _) => 3_600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => panic!("not an nft duration: {d}"),
        };
        total += num.parse::<f64>().unwrap() * unit;
        num.clear();
    }
    total
}

/// The timeout nft lists for `element` in `set`, in seconds.
fn timeout_of(set: &str, element: &str) -> Option<f64> {
    let at = set.find(&format!("{element} timeout "))?;
    let rest = &set[at + element.len() + " timeout ".len()..];
    let d: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(seconds(&d))
}

/// Packets the `@ban4` rule dropped so far.
fn kernel_drops() -> u64 {
    let chain = nft(&["list", "chain", "inet", TABLE, "admit"]).expect("the chain is listed");
    let line = chain
        .lines()
        .find(|l| l.contains("@ban4"))
        .unwrap_or_else(|| panic!("no @ban4 rule in {chain}"));
    let at = line.find("packets ").expect("a counter on the drop rule") + "packets ".len();
    line[at..].split(' ').next().unwrap().parse().unwrap()
}

/// How one connection attempt from `src` went.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// Answered with this status.
    Answered(u16),
    /// Connected, then closed without an answer (levee's own refusal of a banned source).
    Closed,
    /// No connection within the bound: the SYN went unanswered (dropped by the kernel).
    TimedOut,
}

/// `GET /healthz` from `src`, the connection bounded by 1.5 s (a blocking connect to a dropped
/// SYN would wait two minutes).
fn attempt(levee: &Levee, src: IpAddr) -> Attempt {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    match sock.connect_timeout(&levee.addr.into(), Duration::from_millis(1_500)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Attempt::TimedOut,
        Err(e) => panic!("connect from {src}: {e}"),
    }
    use std::io::{Read, Write};
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    if raw.is_empty() {
        return Attempt::Closed;
    }
    Attempt::Answered(parse_response(&raw).status)
}

fn admin(levee: &Levee, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {ADMIN}");
    levee.http(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

#[test]
fn a_banned_network_never_reaches_levee_and_an_unban_lets_it_back() {
    in_own_netns(
        "a_banned_network_never_reaches_levee_and_an_unban_lets_it_back",
        || {
            let mut levee = Levee::start(&[
                "--nft-table",
                TABLE,
                "--admin-key",
                ADMIN,
                "--conn-rate-per-ip",
                "5",
                "--strikes-to-ban",
                "10",
                "--ban-base",
                "30s",
            ]);
            let table = nft(&["list", "table", "inet", TABLE]).expect("levee created the table");
            let port = levee.addr.port();
            assert!(
                table.contains(&format!("tcp dport {port} ")) && table.contains("jump admit"),
                "{table}"
            );
            // The allowlist (the default: loopback's own address) is exempt in the kernel too.
            assert!(
                nft(&["list", "set", "inet", TABLE, "allow4"])
                    .unwrap()
                    .contains("127.0.0.1"),
                "{table}"
            );

            let inside: IpAddr = "127.9.9.5".parse().unwrap();
            let outside: IpAddr = "127.9.10.5".parse().unwrap();
            assert_eq!(attempt(&levee, inside), Attempt::Answered(200));

            // An operator bans the /24: the kernel's set holds it with its lifetime as timeout.
            let r = admin(
                &levee,
                "POST",
                "/api/admin/bans",
                r#"{"cidr": "127.9.9.0/24", "seconds": 120}"#,
            );
            assert_eq!(r.status, 201, "{r:?}");
            wait_until(Duration::from_secs(5), "the ban is in the kernel", || {
                ban_set("4").contains("127.9.9.0/24 timeout")
            });
            let set = ban_set("4");
            let timeout = timeout_of(&set, "127.9.9.0/24").unwrap();
            assert!((115.0..=120.0).contains(&timeout), "{set}");
            assert!(set.contains("expires"), "{set}");

            // A connection from inside the /24 never reaches levee: its SYN is dropped, so the
            // connect times out, levee accepts nothing and refuses nothing.
            let banned = "levee_shield_refused_total{reason=\"banned\"}";
            let (refused, drops) = (levee.metric(banned), kernel_drops());
            let accepted = levee.metric("levee_connections_total");
            let t = Instant::now();
            assert_eq!(attempt(&levee, inside), Attempt::TimedOut);
            assert!(t.elapsed() >= Duration::from_millis(1_400));
            assert!(kernel_drops() > drops, "the kernel counted the dropped SYN");
            assert_eq!(
                levee.metric("levee_connections_total"),
                accepted + 1.0,
                "levee accepted only this metrics request meanwhile"
            );
            assert_eq!(levee.metric(banned), refused);
            assert_eq!(refused, 0.0);
            // Another network is served.
            assert_eq!(attempt(&levee, outside), Attempt::Answered(200));

            // The unban removes the element; the network is served again.
            let r = admin(&levee, "DELETE", "/api/admin/bans?cidr=127.9.9.0/24", "");
            assert_eq!(r.status, 200, "{r:?}");
            wait_until(Duration::from_secs(5), "the element is gone", || {
                !ban_set("4").contains("127.9.9.0/24")
            });
            assert_eq!(attempt(&levee, inside), Attempt::Answered(200));

            // An automatic ban (a connection flood, escalated to a 30 s ban of the /32) is
            // mirrored too; levee's own refusal (a close) stops once the kernel has it.
            let flooder: IpAddr = "127.9.20.1".parse().unwrap();
            let mut outcomes = Vec::new();
            for _ in 0..60 {
                outcomes.push(attempt(&levee, flooder));
                if ban_set("4").contains("127.9.20.1 timeout") {
                    break;
                }
            }
            assert!(
                outcomes.contains(&Attempt::Answered(429)),
                "the flood was refused before the ban: {outcomes:?}"
            );
            let set = ban_set("4");
            let timeout = timeout_of(&set, "127.9.20.1")
                .unwrap_or_else(|| panic!("the automatic ban is not mirrored: {set}"));
            assert!((25.0..=30.0).contains(&timeout), "{set}");
            assert_eq!(attempt(&levee, flooder), Attempt::TimedOut);
            assert_eq!(levee.metric("levee_nft_errors_total"), 0.0);
            assert_eq!(levee.metric("levee_nft_dropped_updates_total"), 0.0);
            assert!(levee.metric("levee_nft_updates_total") >= 3.0);

            // A clean shutdown deletes the table.
            assert!(levee.terminate().success());
            let gone = nft(&["list", "table", "inet", TABLE]);
            assert!(gone.is_err(), "the table outlived levee: {gone:?}");
        },
    );
}

#[test]
fn an_ipv6_ban_is_mirrored_with_its_prefix() {
    in_own_netns("an_ipv6_ban_is_mirrored_with_its_prefix", || {
        let levee = Levee::start(&["--nft-table", TABLE, "--admin-key", ADMIN]);
        let r = admin(
            &levee,
            "POST",
            "/api/admin/bans",
            r#"{"cidr": "2001:db8:7::/48", "seconds": 45}"#,
        );
        assert_eq!(r.status, 201, "{r:?}");
        wait_until(
            Duration::from_secs(5),
            "the IPv6 ban is in the kernel",
            || ban_set("6").contains("2001:db8:7::/48 timeout"),
        );
        let timeout = timeout_of(&ban_set("6"), "2001:db8:7::/48").unwrap();
        assert!((40.0..=45.0).contains(&timeout), "{timeout}");
        assert!(
            !ban_set("4").contains("elements"),
            "nothing in the IPv4 set"
        );
    });
}

#[test]
fn a_table_that_cannot_be_created_stops_the_start_naming_it_and_nfts_message() {
    // A stand-in `nft` that fails as nft does without CAP_NET_ADMIN; the table named by the
    // environment (LEVEE_NFT_TABLE), as any flag can be.
    let dir = std::env::temp_dir().join(format!("levee-fake-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nft");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\necho 'Error: Could not process rule: Operation not permitted' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["serve", "--no-record", "--listen", "127.0.0.1:0"])
        .env("LEVEE_NFT_TABLE", "levee_env")
        .env("PATH", path)
        .output()
        .expect("levee runs");
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("cannot create the nftables table `inet levee_env`")
            && stderr.contains("Operation not permitted"),
        "{stderr}"
    );

    // A name that is not an nft identifier is refused before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "serve",
            "--no-record",
            "--listen",
            "127.0.0.1:0",
            "--nft-table",
            "x;flush ruleset",
        ])
        .output()
        .expect("levee runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid nftables table name"));
}
