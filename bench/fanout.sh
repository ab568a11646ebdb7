#!/usr/bin/env bash
# Fan-out cost of one 32 kbit/s space on loopback: server CPU time per listener-second and
# memory per listener (user space and kernel), at each listener count given (default 1000
# and 10000), measured while `levee storm` holds the audience and checks what it received.
#
#   bench/fanout.sh [N ...]
#
# Each count gets a fresh release server. CPU is read from /proc/PID/stat over a window in the
# middle of the hold; user memory is the server's RSS growth over its idle RSS; kernel memory is
# the growth of unreclaimable slab plus TCP buffer pages (/proc/net/sockstat), machine-wide, so
# it covers both ends of each loopback connection: the per-listener figure halves it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && COUNTS=("$@") || COUNTS=(1000 10000)
PORT=${PORT:-18190}
HZ=$(getconf CLK_TCK)
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
BIN=target/release/levee
OUT=$(mktemp -d)
trap 'kill "${SERVER:-}" 2>/dev/null || true; kill "${STORM:-}" 2>/dev/null || true' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
kernel_kib() {
  local slab pages
  slab=$(awk '/^SUnreclaim:/ {print $2}' /proc/meminfo)
  pages=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  echo $((slab + pages * 4))
}

printf '| listeners | chunk ms | server CPU µs per listener-second | server CPU %% | user KiB per listener | kernel KiB per listener | delivered | gaps | e2e p50 / p99 ms | storm CPU µs per listener-second | storm KiB per listener |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for N in "${COUNTS[@]}"; do
  RAMP=$(( N >= 5000 ? 10 : 5 ))
  HOLD=40
  "$BIN" serve --no-record --listen "127.0.0.1:$PORT" --max-listeners-per-space 20000 >"$OUT/server.out" 2>"$OUT/server.err" &
  SERVER=$!
  for _ in $(seq 100); do grep -q "listening" "$OUT/server.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  RSS0=$(rss_kib "$SERVER"); K0=$(kernel_kib)
  PROCS=$(( N > 15000 ? 2 : 1 ))
  "$BIN" storm capacity --server "http://127.0.0.1:$PORT" --listeners "$N" --ramp "${RAMP}s" --hold "${HOLD}s" \
    --procs "$PROCS" --sources 127.1.0.0/16 --quiet --json "$OUT/storm-$N.json" >"$OUT/storm-$N.txt" 2>&1 &
  STORM=$!
  # Measure over 20 s in the middle of the hold.
  sleep $(( RAMP + 10 ))
  C1=$(cpu_ticks "$SERVER"); T1=$(date +%s.%N); RSS1=$(rss_kib "$SERVER"); K1=$(kernel_kib)
  sleep 20
  C2=$(cpu_ticks "$SERVER"); T2=$(date +%s.%N)
  wait "$STORM" || true
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  python3 - "$N" "$HZ" "$C1" "$C2" "$T1" "$T2" "$RSS0" "$RSS1" "$K0" "$K1" "$OUT/storm-$N.json" <<'EOF'
import json, sys
n, hz, c1, c2, t1, t2, rss0, rss1, k0, k1, path = sys.argv[1:]
n = int(n); hz = float(hz)
cpu_s = (float(c2) - float(c1)) / hz
dt = float(t2) - float(t1)
d = json.load(open(path))
g = d["generator"]
# levee's cadence: chunk = clamp(listeners * 6 us * 1000 / 250 ms, 20, 500) ms
target = min(max(-(-n * 6 * 1000 // 250000), 20), 500)
# A chunk closes at the first 20 ms packet that reaches the target.
chunk = -(-target // 20) * 20
print(f"| {n:,} | {chunk} | {cpu_s * 1e6 / (n * dt):.1f} | {cpu_s / dt * 100:.1f} | "
      f"{(int(rss1) - int(rss0)) / n:.2f} | {(int(k1) - int(k0)) / n / 2:.2f} | "
      f"{d['delivered_ratio']:.5f} | {d['gap_ms_total']:.0f} ms | "
      f"{d['e2e_latency_ms']['p50']:.0f} / {d['e2e_latency_ms']['p99']:.0f} | "
      f"{g['cpu_us_per_listener_s']:.1f} | {g['mem_per_listener_kb']:.2f} |"
      + ("" if d["valid"] else " (generator saturated: invalid)"))
EOF
done
