#!/usr/bin/env python3
"""What a refusal costs the server, beside what serving costs.

    cargo build --release -p levee
    python3 bench/refusal-cost.py [--count 20000]
    python3 bench/refusal-cost.py --bans 65536 [--count 20000]
    sudo python3 bench/refusal-cost.py --nft [--count 40000]

Each case gets a fresh release server whose limits force the outcome, and a loop of plain
sockets from one loopback source address (bounded in count). The server's CPU time
(utime + stime from /proc/PID/stat) over the loop, divided by the requests, is the cost of
one. Cases:
  - connection refused, banned source: accept and close, nothing written;
  - connection refused, over the connection rate: accept, one write of a 429, close;
  - request served: the smallest served exchange (GET /healthz through the API stack);
  - join refused, over the join rate: a request parsed, a 429 JSON answer;
  - join served: a request parsed, a line decision, a signed ticket in a 200 JSON answer;
  - ticket refused at a stream endpoint: a request head parsed, one HMAC, a 403.

With --bans N, only the cases of a source that is *not* banned run (connection over the rate,
/healthz served, join over the rate), each twice: on a server without bans and on one holding N
bans installed through the admin API before the loop (half IPv4 /32s, half IPv6 /64s; the
default bound is 65,536), then 61 s for the installation's TIME_WAIT sockets to go. Every
accept and every join checks the bans, so the difference is what holding them costs the path
an attack loads.

With --nft (root: it re-runs itself in a network namespace of its own, `unshare --net`, loopback
up), a banned /24 attacks twice: on a server without and on one with `--nft-table`. The
attacker opens non-blocking connections from 250 addresses of the /24, 250 at a time, waits at
most 100 ms for them to connect and closes them all (a SYN the kernel dropped never connects;
closing before the 1 s retransmission keeps it to one SYN per attempt). The server's CPU is
read with ns resolution (the sum of /proc/PID/task/*/schedstat) beside utime + stime, and
divided by the attempts; the same server idle for as long is the floor.
"""
import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time

BIN = os.environ.get("LEVEE", "target/release/levee")
HZ = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


ADMIN = "refusal-cost-admin"
# Allowlisted: the control connections (space creation, ban installation) come from here.
CONTROL_NET = "127.254.0.0/16"
CONTROL_SRC = "127.254.0.1"


def task_ns(pid):
    """CPU time of every thread of pid, ns (schedstat: ns resolution, unlike utime + stime)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def start(args):
    p = subprocess.Popen([BIN, "serve", "--no-record", "--listen", "127.0.0.1:0", "--allow", CONTROL_NET,
                          "--admin-key", ADMIN, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    host, port = line.rsplit("http://", 1)[1].split(":")
    return p, (host, int(port))


def request(addr, src, raw, read=True):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(5)
    try:
        s.connect(addr)
        if raw:
            s.sendall(raw)
        if read:
            while s.recv(4096):
                pass
    except OSError:
        pass
    finally:
        s.close()


def control(addr, method, path, body=b"", auth=False, src=CONTROL_SRC):
    s = socket.create_connection(addr, source_address=(src, 0))
    extra = f"Authorization: Bearer {ADMIN}\r\n" if auth else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.split(b"\r\n\r\n", 1)[1]


def ban_cidr(i):
    """The i-th installed ban: IPv4 /32s in 100.64.0.0/10 and IPv6 /64s in 2001:db8::/32."""
    if i % 2 == 0:
        k = i // 2
        return f"100.{64 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}/32"
    k = i // 2
    return f"2001:db8:{k >> 16:x}:{k & 0xffff:x}::/64"


def install_bans(addr, n):
    """Bans n blocks through POST /api/admin/bans (4 connections at a time); returns the count
    the server then lists."""
    def one(i):
        body = json.dumps({"cidr": ban_cidr(i), "seconds": 3600}).encode()
        # Spread over 200 allowlisted addresses: 65,536 connections from one would recycle
        # its ephemeral ports.
        answer = control(addr, "POST", "/api/admin/bans", body, auth=True, src=f"127.254.1.{i % 200 + 1}")
        assert b'"cidr"' in answer, answer
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))
    listed = json.loads(control(addr, "GET", "/api/admin/bans", auth=True))["bans"]
    # The installation's 65,536 connections leave as many sockets in TIME_WAIT (60 s on Linux),
    # which would tax every new connection in the kernel: let them go before measuring.
    time.sleep(61)
    return len(listed)


def measure(name, server_args, count, raw_fn, src="127.9.0.1", warm=None, bans=0):
    p, addr = start(server_args)
    try:
        if bans:
            held = install_bans(addr, bans)
            assert held == bans, f"{held} bans held, {bans} installed"
        ctx = warm(addr) if warm else None
        raw = raw_fn(ctx)
        c0, t0 = cpu_ticks(p.pid), time.time()
        for _ in range(count):
            request(addr, src, raw)
        c1, t1 = cpu_ticks(p.pid), time.time()
        us = (c1 - c0) / HZ * 1e6 / count
        print(f"| {name} | {count:,} | {us:.1f} | {(c1 - c0) / HZ / (t1 - t0) * 100:.0f} % |")
        return us
    finally:
        p.kill()
        p.wait()


def space(ctlsrc_addr, access="open"):
    body = json.dumps({"title": "bench", "access": access}).encode()
    return json.loads(control(ctlsrc_addr, "POST", "/api/spaces", body))["id"]


def with_bans(n, bans):
    """The cases of a source that is not banned, without bans and then with `bans` held."""
    no_strikes = ["--strikes-to-ban", "1000000000"]
    health = lambda _: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    join = lambda sid: f"POST /api/spaces/{sid}/join HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    for held in (0, bans):
        tag = f"{held:,} bans"
        measure(f"{tag}: connection refused, over the connection rate (429)",
                ["--conn-rate-per-ip", "1", *no_strikes], n, health, bans=held)
        measure(f"{tag}: request served, GET /healthz (200)",
                ["--conn-rate-per-ip", "1000000", *no_strikes], n // 4, health, bans=held)
        measure(f"{tag}: join refused, over the join rate (429 JSON)",
                ["--join-rate-per-ip", "1", "--conn-rate-per-ip", "1000000", *no_strikes], n // 4, join,
                warm=lambda addr: space(addr), bans=held)


NFT_TABLE = "refusal_cost"
BANNED_NET = "127.9.9.0/24"


def attack(addr, count, window=250, bound=0.1):
    """count connection attempts from 127.9.9.1-250, window at a time, each given `bound`
    seconds to connect; returns (connected, timed out)."""
    import select
    connected = timed_out = 0
    i = 0
    while i < count:
        socks = []
        for _ in range(min(window, count - i)):
            s = socket.socket()
            s.bind((f"127.9.9.{i % 250 + 1}", 0))
            s.setblocking(False)
            s.connect_ex(addr)
            socks.append(s)
            i += 1
        pending = {s.fileno(): s for s in socks}
        poll = select.poll()
        for fd in pending:
            poll.register(fd, select.POLLOUT)
        deadline = time.time() + bound
        while pending and (left := deadline - time.time()) > 0:
            for fd, _ in poll.poll(left * 1000):
                s = pending.pop(fd)
                poll.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
        timed_out += len(pending)
        for s in socks:
            s.close()
    return connected, timed_out


def nft_case(count, table):
    """A banned /24 attacks a server with or without the kernel mirror."""
    args = ["--strikes-to-ban", "1000000000"] + (["--nft-table", table] if table else [])
    p, addr = start(args)
    try:
        body = json.dumps({"cidr": BANNED_NET, "seconds": 3600}).encode()
        assert b'"cidr"' in control(addr, "POST", "/api/admin/bans", body, auth=True)
        if table:
            for _ in range(100):
                out = subprocess.run(["nft", "list", "set", "inet", table, "ban4"],
                                     capture_output=True, text=True).stdout
                if BANNED_NET in out:
                    break
                time.sleep(0.05)
            else:
                raise SystemExit(f"the ban never reached the kernel's set: {out}")
        metric = lambda name: float(next(
            (l.split()[-1] for l in control(addr, "GET", "/metrics").decode().splitlines()
             if l.startswith(name + " ")), 0))
        banned = 'levee_shield_refused_total{reason="banned"}'
        r0, a0 = metric(banned), metric("levee_connections_total")
        time.sleep(1)
        n0, c0, t0 = task_ns(p.pid), cpu_ticks(p.pid), time.time()
        connected, timed_out = attack(addr, count)
        rate = count / (time.time() - t0)
        # Let the server finish the accept queue (levee refuses what connected) before reading.
        time.sleep(1)
        n1, c1, t1 = task_ns(p.pid), cpu_ticks(p.pid), time.time()
        # The floor: the same server, idle for as long.
        time.sleep(t1 - t0)
        n2, c2 = task_ns(p.pid), cpu_ticks(p.pid)
        refused = metric(banned) - r0
        accepted = metric("levee_connections_total") - a0 - 2  # the two metric reads since a0
        us = (n1 - n0) / 1e3 / count
        idle_us = (n2 - n1) / 1e3 / count
        name = f"banned /24, {'with --nft-table (kernel drops SYNs)' if table else 'levee refuses (accept, close)'}"
        print(f"| {name} | {count:,} at {rate:,.0f}/s ({connected:,} connected, {timed_out:,} timed out) | "
              f"{accepted:,.0f} / {refused:,.0f} | {us:.2f} ({(c1 - c0) / HZ * 1e6 / count:.1f}) | "
              f"{us - idle_us:.2f} | {(n1 - n0) / 1e9 / (t1 - t0) * 100:.1f} % |")
        return us
    finally:
        p.kill()
        p.wait()


def with_nft(count):
    if os.environ.get("REFUSAL_COST_NETNS") != "1":
        # A network namespace of its own: its own loopback and nftables, nothing else on them.
        env = dict(os.environ, REFUSAL_COST_NETNS="1")
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, *sys.argv]
        os.execvpe("unshare", cmd, env)
    print("| case | attempts | accepted / refused by levee | server CPU µs per attempt "
          "(utime+stime) | minus the idle floor | server CPU while attacked |")
    print("|---|---|---|---|---|---|")
    nft_case(count, None)
    nft_case(count, NFT_TABLE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--bans", type=int, default=0,
                    help="measure a not-banned source's cases with 0 and with this many bans held")
    ap.add_argument("--nft", action="store_true",
                    help="a banned /24 attacks, without and with --nft-table (root, own netns)")
    args = ap.parse_args()
    n = args.count
    if args.nft:
        return with_nft(n)
    print("| case | requests | server CPU µs each | server CPU while refusing |")
    print("|---|---|---|---|")
    if args.bans:
        return with_bans(n, args.bans)
    no_strikes = ["--strikes-to-ban", "1000000000"]

    # Banned: a few refusals get the source banned for 10 minutes, then every connection is a
    # plain accept and close.
    def ban(addr):
        for _ in range(60):
            request(addr, "127.9.0.1", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    health = lambda _: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    measure("connection refused: banned source", ["--conn-rate-per-ip", "5", "--strikes-to-ban", "20",
                                                   "--ban-base", "600s"], n, health, warm=ban)
    measure("connection refused: over the connection rate (429)", ["--conn-rate-per-ip", "1", *no_strikes],
            n, health)
    measure("request served: GET /healthz (200)", ["--conn-rate-per-ip", "1000000", *no_strikes], n // 4, health)
    join = lambda sid: f"POST /api/spaces/{sid}/join HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    measure("join refused: over the join rate (429 JSON)",
            ["--join-rate-per-ip", "1", "--conn-rate-per-ip", "1000000", *no_strikes], n // 4, join,
            warm=lambda addr: space(addr))
    measure("join served: ticket (200 JSON)",
            ["--join-rate-per-ip", "1000000", "--conn-rate-per-ip", "1000000", "--admission-rate", "1000000",
             "--admission-burst", "1000000"], n // 4, join, warm=lambda addr: space(addr))
    measure("stream refused: forged ticket (403)",
            ["--conn-rate-per-ip", "1000000", *no_strikes], n // 4,
            lambda sid: f"GET /live/{sid}.ogg?ticket=t1.0.AAAA.AAAA HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            warm=lambda addr: space(addr, "ticketed"))


if __name__ == "__main__":
    sys.exit(main())
