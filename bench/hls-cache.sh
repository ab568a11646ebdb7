#!/usr/bin/env bash
# LL-HLS listeners straight from levee and through nginx (deploy/nginx/nginx.conf, as shipped):
# the requests that reach the origin per second, its CPU, and what the listeners got
# (end-to-end latency from capture to a part's arrival, gaps, stalls), side by side in one run.
#
#   bench/hls-cache.sh [LISTENERS ...]          (default 1000)
#   HOLD=30 RAMP=5 bench/hls-cache.sh 200 1000  (hold and ramp, s)
#
# For each audience and each path (direct, nginx) a fresh release levee (--no-record) and, for
# the cached path, a fresh nginx, then one `levee storm capacity --hls-share 1` (with
# --hls-via for nginx). CPU of levee, of nginx (master and workers) and of storm is read from
# /proc over the same 10 s window in the middle of the hold. Origin requests are levee's own
# count (levee_hls_requests_total over the run, in storm's report); the listeners' requests
# are storm's.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && AUDIENCES=("$@") || AUDIENCES=(1000)
HOLD=${HOLD:-25}
RAMP=${RAMP:-5}
PORT=${PORT:-18390}
CACHE_PORT=${CACHE_PORT:-18391}
HZ=$(getconf CLK_TCK)
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx)" >&2; exit 1; }
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
BIN=target/release/levee
OUT=$(mktemp -d)
# nginx workers run as an unprivileged user when started by root: they must reach the cache.
chmod 755 "$OUT"
cleanup() {
  kill "${SERVER:-}" "${STORMPID:-}" 2>/dev/null || true
  [ -f "$OUT/nginx/nginx.pid" ] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT

ticks() { # CPU ticks of the given pids and their threads
  local sum=0 p
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$sum"
}

start_nginx() {
  rm -rf "$OUT/nginx"; mkdir -p "$OUT/nginx"
  sed -e "s|@LISTEN@|127.0.0.1:$CACHE_PORT|" -e "s|@LEVEE@|127.0.0.1:$PORT|" \
      -e "s|@PREFIX@|$OUT/nginx|g" deploy/nginx/nginx.conf >"$OUT/nginx/nginx.conf"
  nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf"
  for _ in $(seq 100); do [ -s "$OUT/nginx/nginx.pid" ] && break; sleep 0.1; done
}

printf '| path | listeners | listener requests/s | origin requests/s | origin/listener requests | levee CPU %% | levee µs/listener-s | nginx CPU %% | storm CPU %% | e2e p50 ms | e2e p99 ms | joined | failed | dropped | stalls |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for N in "${AUDIENCES[@]}"; do
  for VIA in direct nginx; do
    "$BIN" serve --no-record --listen "127.0.0.1:$PORT" >"$OUT/server.out" 2>"$OUT/server.err" &
    SERVER=$!
    for _ in $(seq 100); do grep -q "listening" "$OUT/server.out" 2>/dev/null && break; sleep 0.1; done
    NGINX_PIDS=()
    ARGS=()
    if [ "$VIA" = nginx ]; then
      start_nginx
      MASTER=$(cat "$OUT/nginx/nginx.pid")
      mapfile -t NGINX_PIDS < <(echo "$MASTER"; pgrep -P "$MASTER")
      ARGS=(--hls-via "http://127.0.0.1:$CACHE_PORT")
    fi
    "$BIN" storm capacity --server "http://127.0.0.1:$PORT" --listeners "$N" --ramp "${RAMP}s" \
      --hold "${HOLD}s" --hls-share 1 --sources 127.4.0.0/16 --quiet "${ARGS[@]}" \
      --json "$OUT/storm.json" >"$OUT/storm.txt" 2>&1 &
    STORMPID=$!
    sleep $((RAMP + 8))
    S1=$(ticks "$SERVER"); X1=$(ticks "${NGINX_PIDS[@]}"); G1=$(ticks "$STORMPID"); T1=$(date +%s.%N)
    sleep 10
    S2=$(ticks "$SERVER"); X2=$(ticks "${NGINX_PIDS[@]}"); G2=$(ticks "$STORMPID"); T2=$(date +%s.%N)
    wait "$STORMPID" || true
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    [ "$VIA" = nginx ] && { kill "$(cat "$OUT/nginx/nginx.pid")"; sleep 0.5; }
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["failures"])' "$OUT/storm.json" >&2
    python3 - "$VIA" "$N" "$HZ" "$S1" "$S2" "$X1" "$X2" "$G1" "$G2" "$T1" "$T2" "$OUT/storm.json" "$RAMP" "$HOLD" <<'EOF'
import json, sys
via, n, hz, s1, s2, x1, x2, g1, g2, t1, t2, path, ramp, hold = sys.argv[1:]
n = int(n); hz = float(hz); dt = float(t2) - float(t1)
pct = lambda a, b: (float(b) - float(a)) / hz * 100 / dt
d = json.load(open(path))
h = d["hls"]; l = d["listeners"]
levee = pct(s1, s2)
run_s = d["generator"]["listener_seconds"] / max(l["joined"], 1)
req_s = h["requests"] / max(run_s, 1e-9)
origin_s = h["origin_requests"] / max(run_s, 1e-9)
print(f"| {via} | {n} | {req_s:.0f} | {origin_s:.0f} | {h['origin_share']:.3f} | {levee:.1f} | {levee / 100 * 1e6 / n:.1f} | "
      f"{pct(x1, x2) if via == 'nginx' else 0:.1f} | {pct(g1, g2):.1f} | {d['e2e_latency_ms']['p50']:.0f} | {d['e2e_latency_ms']['p99']:.0f} | "
      f"{l['joined']} | {l['failed']} | {l['dropped']} | {d['stalls']} |")
EOF
  done
done
