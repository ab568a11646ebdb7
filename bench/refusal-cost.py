#!/usr/bin/env python3
"""What a refusal costs the server, beside what serving costs.

    cargo build --release -p levee
    python3 bench/refusal-cost.py [--count 20000]

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
"""
import argparse
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


def start(args):
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--allow", "127.254.0.1/32", *args],
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


def control(addr, method, path, body=b""):
    s = socket.create_connection(addr)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.split(b"\r\n\r\n", 1)[1]


def measure(name, server_args, count, raw_fn, src="127.9.0.1", warm=None):
    p, addr = start(server_args)
    try:
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
    import json
    body = json.dumps({"title": "bench", "access": access}).encode()
    return json.loads(control(ctlsrc_addr, "POST", "/api/spaces", body))["id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    n = ap.parse_args().count
    print("| case | requests | server CPU µs each | server CPU while refusing |")
    print("|---|---|---|---|")
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
