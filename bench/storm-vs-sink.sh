#!/usr/bin/env bash
# `levee storm` beside the lean reference reader (../shared/reference/sink): the same Ogg
# audience of the demo space at a fixed cadence, one generator at a time, and each one's CPU
# per listener-second beside the server's over the same window. sink reads and discards (it
# measures nothing per frame); storm parses and measures every frame of every listener.
#
#   bench/storm-vs-sink.sh [LISTENERS] [CHUNK_MS]     (default 10000 listeners, 500 ms)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
C=${2:-500}
PORT=${PORT:-18390}
HZ=$(getconf CLK_TCK)
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
CARGO_TARGET_DIR=target/reference cargo build --release --locked \
  --manifest-path ../shared/reference/sink/Cargo.toml >/dev/null 2>&1
BIN=target/release/levee
SINK=target/reference/release/sink
OUT=$(mktemp -d)
trap 'kill "${SERVER:-}" "${GEN:-}" 2>/dev/null || true' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '| generator | chunk ms | listeners | server CPU µs/listener-s | generator CPU µs/listener-s | generator/server |\n|---|---|---|---|---|---|\n'
for G in sink storm; do
  "$BIN" demo --listen "127.0.0.1:$PORT" --max-listeners-per-space 20000 \
    --chunk-min-ms "$C" --chunk-max-ms "$C" >"$OUT/server.out" 2>&1 &
  SERVER=$!
  ID=
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$PORT/api/spaces" >"$OUT/spaces.json" 2>/dev/null || true
    ID=$(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
d = d if isinstance(d, list) else d.get("spaces", [])
print(d[0]["id"] if d else "")' "$OUT/spaces.json" 2>/dev/null || true)
    [ -n "$ID" ] && break
    sleep 0.1
  done
  [ -n "$ID" ] || { echo "no demo space" >&2; exit 1; }
  if [ "$G" = sink ]; then
    "$SINK" --url "http://127.0.0.1:$PORT/live/$ID.ogg" --n "$N" --ramp-per-sec 2000 \
      --duration-secs 35 --src-ips 127.6.0.1-127.6.255.254 >"$OUT/gen.out" 2>&1 &
  else
    "$BIN" storm capacity --server "http://127.0.0.1:$PORT" --space "$ID" --listeners "$N" \
      --ramp 5s --hold 30s --ogg-share 1 --sources 127.6.0.0/16 --quiet \
      --json "$OUT/storm.json" >"$OUT/gen.out" 2>&1 &
  fi
  GEN=$!
  sleep 13
  S1=$(cpu_ticks "$SERVER"); G1=$(cpu_ticks "$GEN"); T1=$(date +%s.%N)
  sleep 15
  S2=$(cpu_ticks "$SERVER"); G2=$(cpu_ticks "$GEN"); T2=$(date +%s.%N)
  wait "$GEN" || true
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  python3 - "$G" "$C" "$N" "$HZ" "$S1" "$S2" "$G1" "$G2" "$T1" "$T2" <<'EOF'
import sys
g, c, n, hz, s1, s2, g1, g2, t1, t2 = sys.argv[1:]
n = int(n); hz = float(hz); dt = float(t2) - float(t1)
server = (float(s2) - float(s1)) / hz * 1e6 / (n * dt)
gen = (float(g2) - float(g1)) / hz * 1e6 / (n * dt)
print(f"| {g} | {c} | {n} | {server:.1f} | {gen:.1f} | {gen / server:.2f} |")
EOF
done
