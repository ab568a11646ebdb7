#!/usr/bin/env bash
# What `levee storm` costs beside the server it measures: CPU time per listener-second of the
# generator and of the server, measured over the same window of one run, and the generator's
# memory per listener, for each format and chunk duration.
#
#   bench/storm-cost.sh [LISTENERS] [CHUNK_MS ...]        (default 3000 listeners, 20 and 500 ms)
#   STORM=path/to/other/levee bench/storm-cost.sh ...     (measure another build's generator
#                                                          against the same server build)
#   FORMATS="ws" bench/storm-cost.sh ...                  (one format only)
#   READ_EVERY=0 bench/storm-cost.sh ...                  (storm's --read-every-ms; default 100)
#   STALL_MS=2000 READ_EVERY=1000 bench/storm-cost.sh ... (storm's --stall-ms; default 1000)
#   BATCH_IO=epoll bench/storm-cost.sh ...                (storm's --batch-io; default auto)
#
# Each case gets a fresh release server with a fixed cadence (--chunk-min-ms = --chunk-max-ms)
# and one storm process (--procs 1) holding the audience; CPU is read from /proc/PID/stat of
# both processes over the same 15 s window in the middle of the hold (and, apart, of storm's
# listener threads, storm-listen-*, from /proc/PID/task/*/stat); the generator's memory
# is its RSS growth over the hold divided by its listeners. Goal (issue: storm rework): the
# generator spends at most half the server's CPU per listener-second, and at most 2 KiB of
# memory per listener.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
shift || true
[ $# -gt 0 ] && CHUNKS=("$@") || CHUNKS=(20 500)
PORT=${PORT:-18290}
HZ=$(getconf CLK_TCK)
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
BIN=target/release/levee
STORM_BIN=${STORM:-$BIN}
OUT=$(mktemp -d)
trap 'kill "${SERVER:-}" 2>/dev/null || true; kill "${STORMPID:-}" 2>/dev/null || true' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU of the process's listener threads only (storm-listen-*): reading and measuring, without
# the synthetic host, the join API tasks and the bookkeeping.
listen_ticks() {
  local t sum=0
  for t in /proc/"$1"/task/*; do
    case "$(cat "$t/comm" 2>/dev/null)" in storm-listen-*)
      sum=$((sum + $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0))) ;;
    esac
  done
  echo "$sum"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

printf '| format | chunk ms | listeners | server CPU µs/listener-s | storm CPU µs/listener-s | storm/server | listener threads µs/listener-s | listener threads/server | storm KiB/listener | joined | failed | dropped |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for FMT in ${FORMATS:-ws ogg}; do
  SHARE=$([ "$FMT" = ogg ] && echo 1.0 || echo 0.0)
  for C in "${CHUNKS[@]}"; do
    "$BIN" serve --no-record --listen "127.0.0.1:$PORT" --max-listeners-per-space 20000 \
      --chunk-min-ms "$C" --chunk-max-ms "$C" >"$OUT/server.out" 2>"$OUT/server.err" &
    SERVER=$!
    for _ in $(seq 100); do grep -q "listening" "$OUT/server.out" 2>/dev/null && break; sleep 0.1; done
    RAMP=5
    HOLD=30
    "$STORM_BIN" storm capacity --server "http://127.0.0.1:$PORT" --listeners "$N" --ramp "${RAMP}s" \
      --hold "${HOLD}s" --procs 1 --ogg-share "$SHARE" --sources 127.3.0.0/16 --quiet \
      ${READ_EVERY:+--read-every-ms "$READ_EVERY"} ${STALL_MS:+--stall-ms "$STALL_MS"} ${BATCH_IO:+--batch-io "$BATCH_IO"} \
      --json "$OUT/storm.json" >"$OUT/storm.txt" 2>&1 &
    STORMPID=$!
    sleep $((RAMP + 6))
    S1=$(cpu_ticks "$SERVER"); G1=$(cpu_ticks "$STORMPID"); L1=$(listen_ticks "$STORMPID"); T1=$(date +%s.%N); M1=$(rss_kib "$STORMPID")
    sleep 15
    S2=$(cpu_ticks "$SERVER"); G2=$(cpu_ticks "$STORMPID"); L2=$(listen_ticks "$STORMPID"); T2=$(date +%s.%N)
    wait "$STORMPID" || true
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    python3 - "$FMT" "$C" "$N" "$HZ" "$S1" "$S2" "$G1" "$G2" "$T1" "$T2" "$M1" "$OUT/storm.json" "$L1" "$L2" <<'EOF'
import json, sys
fmt, c, n, hz, s1, s2, g1, g2, t1, t2, m1, path, l1, l2 = sys.argv[1:]
n = int(n); hz = float(hz); dt = float(t2) - float(t1)
server = (float(s2) - float(s1)) / hz * 1e6 / (n * dt)
storm = (float(g2) - float(g1)) / hz * 1e6 / (n * dt)
listen = (float(l2) - float(l1)) / hz * 1e6 / (n * dt)
d = json.load(open(path))
l = d["listeners"]
g = d["generator"]
kib = g["mem_per_listener_kb"]
print(f"| {fmt} | {c} | {n} | {server:.1f} | {storm:.1f} | {storm / server:.2f} | {listen:.1f} | {listen / server:.2f} | {kib:.2f} | {l['joined']} | {l['failed']} | {l['dropped']} |")
if l['failed'] or l['dropped'] or not d['valid']:
    print(f"<!-- failures {d['failures']} drops {d['drops']} invalid {d['invalid_reasons']} -->")
EOF
  done
done
