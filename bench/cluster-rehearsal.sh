#!/usr/bin/env bash
# A cluster on one machine, measured: a 3-server NATS cluster (JetStream, registry with 3
# replicas), EDGES levee nodes sharing one address with --reuse-port, and `levee storm`
# holding LISTENERS listeners on that address for HOLD seconds (storm creates the space and
# publishes to it through the same address, so some edge is the origin and the others hear it
# through NATS). Prints per node: listeners held (from `ss`), CPU per listener-second and
# resident memory over the hold; then storm's summary (delivered ratio, gaps, e2e latency).
#
#   bench/cluster-rehearsal.sh [LISTENERS] [EDGES] [HOLD_S]     (default 20000 5 60)
#   CHUNK_MS=500 bench/cluster-rehearsal.sh ...                 (edges' --chunk-min-ms; default
#                                                               500: the rehearsal's e2e goal is
#                                                               p99 <= 1.5 s, and each edge holds
#                                                               a fifth of the audience; storm's
#                                                               --stall-ms is twice this)
#   RAMP=120 bench/cluster-rehearsal.sh ...                     (ramp, s; default LISTENERS/1000+5)
#
# Every process is bounded: storm ends after its ramp and hold, and the trap stops the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
EDGES=${2:-5}
HOLD=${3:-60}
CHUNK=${CHUNK_MS:-500}
RAMP=${RAMP:-$((N / 1000 + 5))}
STALL=$((CHUNK * 2 > 1000 ? CHUNK * 2 : 1000))
PROCS=$(((N + 14999) / 15000))
HZ=$(getconf CLK_TCK)
command -v nats-server >/dev/null || { echo "needs nats-server" >&2; exit 1; }
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
BIN=target/release/levee
OUT=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -a NP CP
for i in 0 1 2; do NP[$i]=$(free_port); CP[$i]=$(free_port); done
for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do [ "$j" != "$i" ] && routes="$routes${routes:+,}nats://127.0.0.1:${CP[$j]}"; done
  mkdir -p "$OUT/nats$i"
  nats-server -a 127.0.0.1 -p "${NP[$i]}" -js -sd "$OUT/nats$i" --server_name "n$i" \
    --cluster_name rehearsal --cluster "nats://127.0.0.1:${CP[$i]}" --routes "$routes" \
    >"$OUT/nats$i.log" 2>&1 &
  PIDS+=($!)
done
NATS="nats://127.0.0.1:${NP[0]},nats://127.0.0.1:${NP[1]},nats://127.0.0.1:${NP[2]}"
PORT=$(free_port)
declare -a EP
for e in $(seq 1 "$EDGES"); do
  "$BIN" serve --no-record --listen "127.0.0.1:$PORT" --reuse-port --nats "$NATS" --nats-replicas 3 \
    --node "edge-$e" --max-listeners-per-space 200000 --max-connections 19000 \
    --chunk-min-ms "$CHUNK" --chunk-max-ms "$((CHUNK > 500 ? CHUNK : 500))" \
    --ticket-secret rehearsal >"$OUT/edge$e.out" 2>"$OUT/edge$e.err" &
  EP[$e]=$!
  PIDS+=($!)
done
for e in $(seq 1 "$EDGES"); do
  for _ in $(seq 200); do grep -q "listening" "$OUT/edge$e.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening" "$OUT/edge$e.out" || { echo "edge $e did not start:"; cat "$OUT/edge$e.err"; exit 1; }
done
fds() { ls "/proc/$1/fd" | wc -l; }
declare -A FD0
for e in $(seq 1 "$EDGES"); do FD0[$e]=$(fds "${EP[$e]}"); done
echo "3 NATS servers, $EDGES edges on 127.0.0.1:$PORT (chunks of ${CHUNK} ms or more); storm: $N listeners in $PROCS processes, ramp ${RAMP}s, hold ${HOLD}s"
"$BIN" storm capacity --server "http://127.0.0.1:$PORT" --listeners "$N" --ramp "${RAMP}s" \
  --hold "${HOLD}s" --procs "$PROCS" --ogg-share 0.5 --sources 127.8.0.0/16 --stall-ms "$STALL" --quiet \
  --json "$OUT/storm.json" >"$OUT/storm.txt" 2>&1 &
STORM=$!
PIDS+=($STORM)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
sleep $((RAMP + 8))
declare -A C1
for e in $(seq 1 "$EDGES"); do C1[$e]=$(cpu_ticks "${EP[$e]}"); done
T1=$(date +%s.%N)
# Who holds the listeners, early in the window: each edge's open files less those it had
# before storm started (`ss -p` would read every process's file table, seconds of CPU at
# this scale, enough to disturb what is measured).
declare -A HELD
for e in $(seq 1 "$EDGES"); do HELD[$e]=$(( $(fds "${EP[$e]}") - FD0[$e] )); done
ALL=$(ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l)
END=$(python3 -c "print($T1 + $HOLD - 16)")
while python3 -c "import sys, time; sys.exit(0 if time.time() < $END else 1)"; do sleep 1; done
T2=$(date +%s.%N)
printf '| node | listeners held | CPU µs per listener-second | CPU, %% of a core | RSS MiB |\n|---|---|---|---|---|\n'
TOTAL_L=0; TOTAL_T=0
for e in $(seq 1 "$EDGES"); do
  pid=${EP[$e]}
  held=${HELD[$e]}
  t=$(( $(cpu_ticks "$pid") - C1[$e] ))
  TOTAL_L=$((TOTAL_L + held)); TOTAL_T=$((TOTAL_T + t))
  python3 - "$e" "$held" "$t" "$HZ" "$T1" "$T2" "$(rss_mib "$pid")" <<'EOF'
import sys
e, held, t, hz, t1, t2, rss = sys.argv[1:]
dt = float(t2) - float(t1); cpu = float(t) / float(hz)
per = cpu * 1e6 / (int(held) * dt) if int(held) else 0.0
print(f"| edge-{e} | {int(held):,} | {per:.1f} | {cpu * 100 / dt:.1f} | {rss} |")
EOF
done
python3 - "$TOTAL_L" "$TOTAL_T" "$HZ" "$T1" "$T2" <<'EOF'
import sys
held, t, hz, t1, t2 = sys.argv[1:]
dt = float(t2) - float(t1); cpu = float(t) / float(hz)
per = cpu * 1e6 / (int(held) * dt) if int(held) else 0.0
print(f"| all | {int(held):,} | {per:.1f} | {cpu * 100 / dt:.1f} | |")
EOF
echo "established on the port early in the window: $ALL (ss -tn; per node: its open files less those before the run)"
wait "$STORM" || true
echo
head -6 "$OUT/storm.txt"
grep -E "^server:|invalid|failures" "$OUT/storm.txt" || true
