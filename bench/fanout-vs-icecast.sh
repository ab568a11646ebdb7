#!/usr/bin/env bash
# levee side by side with Icecast 2: the same Ogg/Opus stream (storm's marker stream, 32 kbit/s,
# 20 ms pages, published by `levee storm` as an Icecast source with PUT), the same audience of
# progressive Ogg listeners (`levee storm capacity --url`), one server at a time, at each count
# given (default 1000 5000 15000).
#
#   bench/fanout-vs-icecast.sh [N ...]
#   env: HOLD=40 (s)  PAGE_MS=20 (source page duration; ffmpeg's default is 1000)
#        RAMP (s; default 5 below 5,000 listeners, 10 below 10,000, else 15)
#        REPEAT=1 (runs per server and count; the final table gives medians)
#        SERVERS="levee icecast"  LEVEE_PORT=18191  ICECAST_PORT=18192
#        KEEP=DIR (copy the storm JSON reports and server logs there)
#
# Installs icecast2 (apt-get) when missing. Each server and count gets a fresh server: levee
# (release build, default settings but --max-listeners-per-space 20000) and Icecast 2 (the
# Debian package, defaults but <clients> raised to 20000: burst-on-connect of 64 KiB, 512 KiB
# queue). Figures, as in bench/fanout.sh: server CPU from /proc/PID/stat over 20 s in the
# middle of the hold; user memory = the server's RSS growth; kernel memory = growth of
# unreclaimable slab + TCP pages, machine-wide, halved (loopback holds both ends); delivered
# ratio, gaps, latency and time to first audio from storm's markers; storm's own CPU and memory
# per listener. Per-listener server figures divide by the listeners held in the hold (a server
# that refused joins holds fewer than planned; the table shows both). Latency is given twice:
# pooled over the whole run (it includes the data a server bursts to each new listener), and in
# the hold (median over its seconds of each second's p50 / p99: the steady state, no joins).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && COUNTS=("$@") || COUNTS=(1000 5000 15000)
HOLD=${HOLD:-40}
PAGE_MS=${PAGE_MS:-20}
REPEAT=${REPEAT:-1}
read -r -a SERVERS <<<"${SERVERS:-levee icecast}"
LEVEE_PORT=${LEVEE_PORT:-18191}
ICECAST_PORT=${ICECAST_PORT:-18192}
ICECAST_PASSWORD=bench-$RANDOM$RANDOM
HZ=$(getconf CLK_TCK)
[ "$HOLD" -ge 34 ] || { echo "HOLD must be at least 34 s: the 20 s window starts 10 s into it" >&2; exit 3; }

if ! command -v icecast2 >/dev/null; then
  echo "installing icecast2..." >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 $SUDO apt-get install -y icecast2 >/dev/null ||
    { timeout 300 $SUDO apt-get update >/dev/null && timeout 600 $SUDO apt-get install -y icecast2 >/dev/null; }
fi
cargo build --release --locked -p levee >/dev/null 2>&1 || cargo build --release -p levee
BIN=target/release/levee

OUT=$(mktemp -d)
SERVER=""
STORM=""
cleanup() {
  for pid in $STORM $SERVER; do kill "$pid" 2>/dev/null || true; done
  for pid in $STORM $SERVER; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$OUT"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
kernel_kib() {
  local slab pages
  slab=$(awk '/^SUnreclaim:/ {print $2}' /proc/meminfo)
  pages=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  echo $((slab + pages * 4))
}
# Waits (bounded) until something answers HTTP on the port.
wait_http() {
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/" || true)" != 000 ] && return 0
    kill -0 "$SERVER" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_levee() {
  "$BIN" serve --no-record --listen "127.0.0.1:$LEVEE_PORT" --max-listeners-per-space 20000 \
    >"$OUT/levee.out" 2>"$OUT/levee.err" &
  SERVER=$!
  wait_http "$LEVEE_PORT" || { cat "$OUT/levee.err" >&2; return 1; }
  local space
  space=$(curl -s -m 5 -X POST -H 'Content-Type: application/json' --data '{"title":"fanout vs icecast"}' \
    "http://127.0.0.1:$LEVEE_PORT/api/spaces")
  read -r ID KEY < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"], d["host_key"])' <<<"$space")
  URL="http://127.0.0.1:$LEVEE_PORT/live/$ID.ogg"
  AUTH="source:$KEY"
  SOURCES=127.1.0.0/16
}

start_icecast() {
  local dir="$OUT/icecast"
  mkdir -p "$dir/log"
  cat >"$dir/icecast.xml" <<EOF
<icecast>
  <location>loopback</location>
  <admin>bench@localhost</admin>
  <limits>
    <clients>20000</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
  </limits>
  <authentication>
    <source-password>$ICECAST_PASSWORD</source-password>
    <relay-password>$ICECAST_PASSWORD</relay-password>
    <admin-user>admin</admin-user>
    <admin-password>$ICECAST_PASSWORD</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket>
    <port>$ICECAST_PORT</port>
    <bind-address>127.0.0.1</bind-address>
  </listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>$dir/log</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>2</loglevel>
  </logging>
  <security>
    <chroot>0</chroot>
  </security>
</icecast>
EOF
  if [ "$(id -u)" -eq 0 ]; then
    # Icecast refuses to run as root: run it as the package's user (setpriv keeps the PID).
    chmod 755 "$OUT"
    chown -R icecast2 "$dir"
    (ulimit -n 20000 2>/dev/null || true; exec setpriv --reuid=icecast2 --regid=icecast --clear-groups \
      icecast2 -c "$dir/icecast.xml") >"$OUT/icecast.out" 2>&1 &
  else
    (ulimit -n 20000 2>/dev/null || true; exec icecast2 -c "$dir/icecast.xml") >"$OUT/icecast.out" 2>&1 &
  fi
  SERVER=$!
  wait_http "$ICECAST_PORT" || { cat "$OUT/icecast.out" "$dir/log/error.log" >&2 2>/dev/null; return 1; }
  URL="http://127.0.0.1:$ICECAST_PORT/live.ogg"
  AUTH="source:$ICECAST_PASSWORD"
  SOURCES=127.2.0.0/16
}

stop_server() {
  kill "$SERVER" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=""
}

# One run: server $1, N listeners $2, repeat $3. Appends one JSON line to $OUT/rows.jsonl.
run_one() {
  local name=$1 n=$2 rep=$3 ramp procs c1 c2 t1 t2 rss0 rss1 rss2 k0 k1 tag
  ramp=${RAMP:-$(( n >= 10000 ? 15 : n >= 5000 ? 10 : 5 ))}
  procs=$(( (n + 11999) / 12000 ))
  tag="$name-$n-$rep"
  "start_$name"
  sleep 1
  rss0=$(rss_kib "$SERVER"); k0=$(kernel_kib)
  timeout $(( ramp + HOLD + 90 )) "$BIN" storm capacity --url "$URL" --source-auth "$AUTH" --page-ms "$PAGE_MS" \
    --listeners "$n" --ramp "${ramp}s" --hold "${HOLD}s" --procs "$procs" --sources "$SOURCES" \
    --quiet --json "$OUT/storm-$tag.json" >"$OUT/storm-$tag.txt" 2>&1 &
  STORM=$!
  # Storm starts its run 1-2 s after launch, the first join 0.5 s later; measure 20 s from
  # 10 s into the hold.
  sleep $(( ramp + 12 ))
  c1=$(cpu_ticks "$SERVER"); t1=$(date +%s.%N); rss1=$(rss_kib "$SERVER"); k1=$(kernel_kib)
  sleep 20
  c2=$(cpu_ticks "$SERVER"); t2=$(date +%s.%N); rss2=$(rss_kib "$SERVER")
  wait "$STORM" || true
  STORM=""
  stop_server
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$OUT/storm-$tag.json" "$OUT/storm-$tag.txt" "$KEEP/" 2>/dev/null || true
    [ "$name" = icecast ] && cp "$OUT/icecast/log/error.log" "$KEEP/icecast-error-$tag.log" 2>/dev/null || true
  fi
  python3 - "$name" "$n" "$ramp" "$HOLD" "$HZ" "$c1" "$c2" "$t1" "$t2" "$rss0" "$rss1" "$rss2" "$k0" "$k1" \
    "$OUT/storm-$tag.json" "$PAGE_MS" >>"$OUT/rows.jsonl" <<'EOF'
import json, statistics, sys
name, n, ramp, hold, hz, c1, c2, t1, t2, rss0, rss1, rss2, k0, k1, path, page_ms = sys.argv[1:]
n, ramp, hold, hz = int(n), int(ramp), int(hold), float(hz)
cpu_s = (float(c2) - float(c1)) / hz
dt = float(t2) - float(t1)
row = {"server": name, "listeners": n, "held": n, "cpu_s": cpu_s, "window_s": dt,
       "rss_growth_kib": max(int(rss1), int(rss2)) - int(rss0), "kernel_growth_kib": int(k1) - int(k0),
       "cpu_pct": cpu_s / dt * 100}
def per_listener(held):
    # CPU and memory per listener actually held (a server that refused joins holds fewer).
    held = max(held, 1)
    row.update(held=held, cpu_us=cpu_s * 1e6 / (held * dt), user_kib=row["rss_growth_kib"] / held,
               kernel_kib=row["kernel_growth_kib"] / held / 2)
    # levee's cadence (crates/core/src/cadence.rs): target = clamp(listeners * 6 us * 1000 / 250 ms,
    # 20, 500) ms; a chunk closes at the first 20 ms packet that reaches it.
    target = min(max(-(-held * 6 * 1000 // 250000), 20), 500)
    row["cadence_ms"] = -(-target // 20) * 20 if name == "levee" else int(page_ms)
per_listener(n)
try:
    d = json.load(open(path))
except (OSError, ValueError) as e:
    row.update(valid=False, why=f"no storm report: {e}")
    print(json.dumps(row)); sys.exit()
g = d["generator"]
# Hold window: from 5 s after the last join to 2 s before the end.
lo, hi = 0.5 + ramp + 5, 0.5 + ramp + hold - 2
tl = [p for p in d["timeline"] if lo <= p["t"] <= hi and p.get("frames", 0) > 0]
med = lambda k: statistics.median(p[k] for p in tl) if tl else float("nan")
if tl:
    per_listener(int(med("connected")))
row.update(valid=d["valid"], why="; ".join(d["invalid_reasons"]),
           joined=d["listeners"]["joined"], failed=d["listeners"]["failed"],
           dropped=d["listeners"]["dropped"], delivered=d["delivered_ratio"],
           gaps=d["gaps"], gap_ms=d["gap_ms_total"],
           e2e_p50=d["e2e_latency_ms"]["p50"], e2e_p99=d["e2e_latency_ms"]["p99"],
           hold_p50=med("latency_p50_ms"), hold_p99=med("latency_p99_ms"),
           hold_p99_max=max((p["latency_p99_ms"] for p in tl), default=float("nan")),
           ttfa_p99=d["ttfa_ms"]["p99"], storm_cpu_us=g["cpu_us_per_listener_s"],
           storm_kib=g["mem_per_listener_kb"], storm_cpu_pct=g["cpu_pct"],
           source_error=(d.get("host") or {}).get("error"))
print(json.dumps(row))
EOF
  tail -n 1 "$OUT/rows.jsonl" | python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print("run %s %d: valid=%s, server CPU %.1f us per listener-second %s" % (r["server"], r["listeners"], r["valid"], r["cpu_us"], r.get("why") or ""))' >&2 || true
  sleep 3
}

for rep in $(seq "$REPEAT"); do
  for n in "${COUNTS[@]}"; do
    for s in "${SERVERS[@]}"; do
      run_one "$s" "$n" "$rep"
    done
  done
done

python3 - "$OUT/rows.jsonl" "$REPEAT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["listeners"], r["server"]), []).append(r)
def med(rs, k):
    v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
    return statistics.median(v) if v else float("nan")
print("| server | listeners | held | chunk or page ms | server CPU µs per listener-second | server CPU % | user KiB per listener "
      "| kernel KiB per listener | delivered | gaps (ms) | failed / dropped | e2e p50 / p99 ms (run) "
      "| e2e p50 / p99 ms (hold) | ttfa p99 ms | storm CPU µs per listener-second | storm KiB per listener | valid runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (n, s), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "levee")):
    ok = [r for r in rs if r.get("valid")]
    use = ok or rs
    print(f"| {s} | {n:,} | {med(use,'held'):,.0f} | {use[0]['cadence_ms']} | {med(use,'cpu_us'):.1f} | {med(use,'cpu_pct'):.1f} "
          f"| {med(use,'user_kib'):.2f} | {med(use,'kernel_kib'):.2f} | {med(use,'delivered'):.5f} "
          f"| {med(use,'gaps'):.0f} ({med(use,'gap_ms'):.0f}) | {med(use,'failed'):.0f} / {med(use,'dropped'):.0f} "
          f"| {med(use,'e2e_p50'):.0f} / {med(use,'e2e_p99'):.0f} | {med(use,'hold_p50'):.0f} / {med(use,'hold_p99'):.0f} "
          f"| {med(use,'ttfa_p99'):.0f} | {med(use,'storm_cpu_us'):.1f} | {med(use,'storm_kib'):.2f} "
          f"| {len(ok)}/{len(rs)}{'' if ok else ' (all invalid: ' + '; '.join(sorted({r.get('why','') for r in rs})) + ')'} |")
if len(rows) > 0 and int(sys.argv[2]) > 1:
    print(f"\nMedians over the valid runs of each server and count (all runs when none was valid).")
EOF
if [ -n "${KEEP:-}" ]; then cp "$OUT/rows.jsonl" "$KEEP/rows.jsonl"; fi
