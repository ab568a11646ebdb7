#!/usr/bin/env bash
# levee beside the "floor": the reference fan-out server of ../shared/reference (one thread, raw
# epoll, ONE shared buffer sent to every listener with one send(MSG_DONTWAIT) each per tick, no
# other work), measured side by side in one run at the same write cadence, with the same
# listener generator, at each listener count given (default 5000 15000).
#
#   bench/floor.sh [N ...]
#   env: TICK_MS (one tick / chunk for every count, a multiple of 20; default: levee's cadence
#          policy at each count, rounded up to a 20 ms packet: 40 ms at 1,000, 120 at 5,000,
#          360 at 15,000)
#        REPEAT=1 (pairs per count; the table gives medians over the valid runs)
#        RAMP_RATE=2500 (joins per second)  SETTLE=10 (s from the last join to the window)
#        WINDOW=20 (s of measurement)  FLOOR_PORT=18193  LEVEE_PORT=18194
#        FLOOR_IPS=127.8.0.1-127.8.40.255  LEVEE_IPS=127.9.0.1-127.9.40.255 (sink's --src-ips)
#        LEVEE_BIN=target/release/levee (when unset, built with cargo first)
#        KEEP=DIR (copy the logs, metrics and per-run JSON rows there)
#
# The two servers, each started fresh for each run, floor first then levee, 3 s apart:
# - floor: `target/reference/release/floor --port P --tick-ms T --rate 4000 --sndbuf 65536`
#   (T x 4,000 bytes per tick: 32 kbit/s; 64 KiB requested send buffer, levee's
#   --listener-sndbuf default).
# - levee: `levee serve --max-listeners-per-space 20000 --chunk-min-ms T --chunk-max-ms T`, so
#   that one chunk, i.e. one write per listener, lasts T as floor's tick does. Its source is
#   `levee storm`'s Icecast-style marker source (32 kbit/s, 80-byte Opus packets of 20 ms, one
#   Ogg page each, in real time) published into a space made with POST /api/spaces; storm
#   cannot run a source without listeners, so it runs with ONE listener of its own (127.10.0.x),
#   which levee's listener count includes.
# The listeners of both are `sink` (../shared/reference/sink: plain HTTP/1.1 GET, reads and
# discards, one thread), N of them in one process, ramped at RAMP_RATE, each bound to an address
# of a range of many /24s of 127.0.0.0/8, a different range per server so that TIME_WAIT and
# ports never collide. Its per-second lines give the bytes each listener received; its summary
# the failures, drops (stream ended after 200) and stalls (no byte for 2 s). A run with any
# failed or dropped listener is invalid.
#
# Figures, for both servers the same way: CPU = utime and stime of /proc/PID/stat (clock ticks
# -> s), apart and summed, over WINDOW s from SETTLE s after the ramp's end, divided by the
# listeners the server held (floor's own count, levee's levee_listeners gauge) and the window;
# user memory = VmRSS growth from idle (before the listeners, the source already running) to
# the window (the larger of its start and end), per listener held; kernel memory = growth of
# unreclaimable slab + TCP pages (/proc/net/sockstat) machine-wide, halved because loopback
# holds both ends, as in bench/fanout.sh: noisy (TIME_WAIT of earlier runs, other tenants).
# Beside the table: floor's sends per listener-second, skipped sends (EAGAIN), partial sends,
# missed ticks and longest tick, levee's chunks per listener-second, lagging skips and source
# packets per second, sink's own CPU, and the CPU that other processes took on the machine (all
# CPUs' busy time in /proc/stat less server and sink) and the vCPUs' steal time: the machine
# is shared, read the figures with them. All over the window. Stalls are reported, not
# judged: a starved run shows them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
SHARED=$ROOT/../shared
if [ ! -f "$SHARED/reference/floor/Cargo.toml" ] || [ ! -f "$SHARED/reference/sink/Cargo.toml" ]; then
  echo "floor.sh: $SHARED/reference/{floor,sink} not found: this benchmark needs the shared reference programs" >&2
  exit 3
fi
[ $# -gt 0 ] && COUNTS=("$@") || COUNTS=(5000 15000)
REPEAT=${REPEAT:-1}
RAMP_RATE=${RAMP_RATE:-2500}
SETTLE=${SETTLE:-10}
WINDOW=${WINDOW:-20}
FLOOR_PORT=${FLOOR_PORT:-18193}
LEVEE_PORT=${LEVEE_PORT:-18194}
FLOOR_IPS=${FLOOR_IPS:-127.8.0.1-127.8.40.255}
LEVEE_IPS=${LEVEE_IPS:-127.9.0.1-127.9.40.255}
STORM_IPS=127.10.0.0/24
HZ=$(getconf CLK_TCK)
if [ -n "${TICK_MS:-}" ] && { [ "$TICK_MS" -lt 20 ] || [ $((TICK_MS % 20)) -ne 0 ]; }; then
  echo "floor.sh: TICK_MS must be a multiple of 20 (levee closes a chunk on a 20 ms packet)" >&2
  exit 3
fi
# 15,000 listeners need 15,000 descriptors in one server and in one sink.
ulimit -n "$(ulimit -Hn)"

CARGO_TARGET_DIR=target/reference cargo build --release --locked \
  --manifest-path ../shared/reference/floor/Cargo.toml >/dev/null 2>&1 ||
  { echo "floor.sh: building floor failed" >&2; exit 3; }
CARGO_TARGET_DIR=target/reference cargo build --release --locked \
  --manifest-path ../shared/reference/sink/Cargo.toml >/dev/null 2>&1 ||
  { echo "floor.sh: building sink failed" >&2; exit 3; }
FLOOR=target/reference/release/floor
SINK_BIN=target/reference/release/sink
if [ -z "${LEVEE_BIN:-}" ]; then
  cargo build --release --locked -p levee >/dev/null 2>&1 || {
    echo "floor.sh: cargo build -p levee failed; build a clean copy (git worktree add /tmp/levee-base HEAD)" \
      "and run with LEVEE_BIN=/tmp/levee-base/target/release/levee" >&2
    exit 3
  }
  BIN=target/release/levee
else
  BIN=$LEVEE_BIN
fi
[ -x "$BIN" ] || { echo "floor.sh: $BIN is not an executable" >&2; exit 3; }

OUT=$(mktemp -d)
SERVER=""
SINK=""
SOURCE=""
PAUSE=""
cleanup() {
  for pid in $PAUSE $SINK $SOURCE $SERVER; do kill "$pid" 2>/dev/null || true; done
  for pid in $PAUSE $SINK $SOURCE $SERVER; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime and stime, in clock ticks (fields 14 and 15; the name in parentheses may hold spaces).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Busy time of all CPUs (user nice system irq softirq) and steal (time the hypervisor gave
# these vCPUs to someone else), in clock ticks, from /proc/stat: "busy,steal".
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 "," $9}' /proc/stat; }
kernel_kib() {
  local slab pages
  slab=$(awk '/^SUnreclaim:/ {print $2}' /proc/meminfo)
  pages=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  echo $((slab + pages * 4))
}
now() { date +%s.%N; }
# A sleep that a signal interrupts at once (bash runs traps only between commands, or in wait).
pause() { sleep "$1" & PAUSE=$!; wait "$PAUSE" || true; PAUSE=""; }
# Stops a process we started: TERM, up to 5 s, then KILL.
stop() {
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# Waits (bounded, 10 s) for a line matching $2 in file $1 while $SERVER lives.
wait_line() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$SERVER" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# levee's cadence (crates/core/src/cadence.rs): clamp(N x 6 us x 1000 / 250 ms, 20, 500) ms,
# and a chunk closes at the first 20 ms packet that reaches it.
tick_for() {
  if [ -n "${TICK_MS:-}" ]; then echo "$TICK_MS"; return; fi
  local t=$(( ($1 * 6000 + 249999) / 250000 ))
  t=$(( t < 20 ? 20 : t > 500 ? 500 : t ))
  echo $(( (t + 19) / 20 * 20 ))
}
metrics() { curl -s -m 3 "http://127.0.0.1:$LEVEE_PORT/metrics" >"$1" 2>/dev/null || true; }

start_floor() {
  "$FLOOR" --port "$FLOOR_PORT" --tick-ms "$1" --rate 4000 --sndbuf 65536 >"$OUT/floor.out" 2>"$OUT/floor.err" &
  SERVER=$!
  wait_line "$OUT/floor.out" '^# floor port=' || { cat "$OUT/floor.err" >&2; return 1; }
  URL="http://127.0.0.1:$FLOOR_PORT/live.ogg"
  IPS=$FLOOR_IPS
}

start_levee() {
  local space id key
  "$BIN" serve --no-record --listen "127.0.0.1:$LEVEE_PORT" --max-listeners-per-space 20000 \
    --chunk-min-ms "$1" --chunk-max-ms "$1" >"$OUT/levee.out" 2>"$OUT/levee.err" &
  SERVER=$!
  wait_line "$OUT/levee.out" 'levee listening' || { cat "$OUT/levee.err" >&2; return 1; }
  space=$(curl -s -m 5 -X POST -H 'Content-Type: application/json' --data '{"title":"bench"}' \
    "http://127.0.0.1:$LEVEE_PORT/api/spaces")
  read -r id key < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"], d["host_key"])' <<<"$space")
  URL="http://127.0.0.1:$LEVEE_PORT/live/$id.ogg"
  IPS=$LEVEE_IPS
  # The source: storm's marker stream as an Icecast PUT source, 20 ms pages, for longer than
  # the sink runs (stopped after it); one storm listener, since storm needs at least one.
  timeout $(( SOURCE_HOLD + 30 )) "$BIN" storm capacity --url "$URL" --source-auth "source:$key" --page-ms 20 \
    --bitrate 32000 --listeners 1 --ramp 1s --hold "${SOURCE_HOLD}s" --sources "$STORM_IPS" \
    --quiet >"$OUT/source.out" 2>"$OUT/source.err" &
  SOURCE=$!
  # Bounded wait for the source's audio to reach the space.
  for _ in $(seq 100); do
    metrics "$OUT/m0"
    awk '/^levee_ingest_packets_total\{/ {s += $2} END {exit !(s > 0)}' "$OUT/m0" && return 0
    kill -0 "$SOURCE" 2>/dev/null || break
    sleep 0.1
  done
  echo "floor.sh: levee's source did not start" >&2
  cat "$OUT/source.out" "$OUT/source.err" >&2
  return 1
}

# One run: server $1, N listeners $2, repeat $3. Appends one JSON line to $OUT/rows.jsonl.
run_one() {
  local name=$1 n=$2 rep=$3 tick ramp dur c1 c2 t1 t2 ts rss0 rss1 rss2 k0 k1 fl1 fl2 tag sinkpid m1 m2 s1 s2
  tick=$(tick_for "$n")
  ramp=$(( (n + RAMP_RATE - 1) / RAMP_RATE ))
  dur=$(( ramp + SETTLE + WINDOW + 4 ))
  SOURCE_HOLD=$(( dur + 15 ))
  tag="$name-$n-$rep"
  "start_$name" "$tick"
  pause 1
  rss0=$(rss_kib "$SERVER"); k0=$(kernel_kib)
  ts=$(now)
  timeout $(( dur + 30 )) "$SINK_BIN" --url "$URL" --n "$n" --ramp-per-sec "$RAMP_RATE" \
    --duration-secs "$dur" --src-ips "$IPS" >"$OUT/sink-$tag.out" 2>"$OUT/sink-$tag.err" &
  SINK=$!
  pause $(( ramp + SETTLE ))
  # sink runs under timeout: its process is timeout's child.
  sinkpid=$(cat "/proc/$SINK/task/$SINK/children" 2>/dev/null | awk '{print $1}')
  read -r c1 < <(cpu_ticks "$SERVER" | tr ' ' ,); t1=$(now); rss1=$(rss_kib "$SERVER"); k1=$(kernel_kib)
  m1=$(machine_busy); s1=$(cpu_ticks "${sinkpid:-0}" 2>/dev/null | tr ' ' , || echo 0,0)
  fl1=$(wc -l <"$OUT/$name.out")
  [ "$name" = levee ] && metrics "$OUT/m1-$tag"
  pause "$WINDOW"
  read -r c2 < <(cpu_ticks "$SERVER" | tr ' ' ,); t2=$(now); rss2=$(rss_kib "$SERVER")
  m2=$(machine_busy); s2=$(cpu_ticks "${sinkpid:-0}" 2>/dev/null | tr ' ' , || echo 0,0)
  fl2=$(wc -l <"$OUT/$name.out")
  [ "$name" = levee ] && metrics "$OUT/m2-$tag"
  wait "$SINK" || true
  SINK=""
  local alive=1
  kill -0 "$SERVER" 2>/dev/null || alive=0
  stop "$SOURCE"; SOURCE=""
  stop "$SERVER"; SERVER=""
  cp "$OUT/$name.out" "$OUT/server-$tag.out"
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$OUT/sink-$tag.out" "$OUT/server-$tag.out" "$KEEP/"
    cp "$OUT/$name.err" "$KEEP/server-$tag.err"
    if [ "$name" = levee ]; then
      cp "$OUT/m1-$tag" "$OUT/m2-$tag" "$KEEP/" 2>/dev/null || true
      cp "$OUT/source.err" "$KEEP/source-$tag.err" 2>/dev/null || true
    fi
  fi
  python3 - "$name" "$n" "$tick" "$HZ" "$c1" "$c2" "$t1" "$t2" "$ts" "$rss0" "$rss1" "$rss2" "$k0" "$k1" \
    "$OUT/sink-$tag.out" "$OUT/server-$tag.out" "$fl1" "$fl2" "$OUT/m1-$tag" "$OUT/m2-$tag" "$alive" \
    "$m1" "$m2" "${s1:-0,0}" "${s2:-0,0}" \
    >>"$OUT/rows.jsonl" <<'EOF'
import json, statistics, sys
(name, n, tick, hz, c1, c2, t1, t2, ts, rss0, rss1, rss2, k0, k1,
 sink_path, srv_path, fl1, fl2, m1, m2, alive, busy1, busy2, sk1, sk2) = sys.argv[1:]
n, tick, hz = int(n), int(tick), float(hz)
(u1, s1), (u2, s2) = (map(float, c.split(",")) for c in (c1, c2))
t1, t2, ts = float(t1), float(t2), float(ts)
dt = t2 - t1
user_s, sys_s = (u2 - u1) / hz, (s2 - s1) / hz
row = {"server": name, "listeners": n, "tick_ms": tick, "window_s": dt, "user_s": user_s, "sys_s": sys_s,
       "rss_growth_kib": max(int(rss1), int(rss2)) - int(rss0), "kernel_growth_kib": int(k1) - int(k0),
       "cpu_pct": (user_s + sys_s) / dt * 100}
why = []
if alive != "1":
    why.append("server died")

# sink: per-second lines inside the window, and the summary.
lines, summ = [], {}
for l in open(sink_path):
    if l.startswith("# summary"):
        summ = dict(kv.split("=", 1) for kv in l.split()[2:])
    elif l.strip() and not l.startswith("#"):
        f = l.split()
        lines.append({"t": float(f[0]), "connected": int(f[2]), "bps": float(f[5]), "cpu": float(f[8])})
lo, hi = t1 - ts + 1, t2 - ts
win = [p for p in lines if lo <= p["t"] <= hi]
if summ:
    failed = sum(int(summ[k]) for k in ("fail_connect", "fail_http", "fail_timeout"))
    row.update(failed=failed, dropped=int(summ["dropped"]), stalls=int(summ["stall_events"]),
               sink_connected=int(summ["connected_now"]))
    if failed or int(summ["dropped"]):
        why.append(f"sink: {failed} failed, {summ['dropped']} dropped")
else:
    why.append("no sink summary")
if win:
    row["bps_per_listener"] = sum(p["bps"] for p in win) / max(sum(p["connected"] for p in win), 1)
    if len(win) > 1:
        row["sink_cpu_pct"] = (win[-1]["cpu"] - win[0]["cpu"]) / (win[-1]["t"] - win[0]["t"]) * 100

# held listeners, as the server counts them, and the server's own counters over the window.
held = 0
if name == "floor":
    hdr = "t_s conns pending ticks missed_ticks sends_ok skipped_eagain partial closed bytes_sent cpu_ns utime_us stime_us rss_kb tick_us_max".split()
    # The stats lines from the last one printed before the window to the last one inside it
    # (lines fl1..fl2 of the file; comment lines may come between).
    ws = [dict(zip(hdr, map(float, l.split()))) for i, l in enumerate(open(srv_path), 1)
          if int(fl1) <= i <= int(fl2) and l.strip() and not l.startswith("#")]
    if len(ws) >= 2:
        w0, w1 = ws[0], ws[-1]
        held = statistics.median(p["conns"] for p in ws)
        span = w1["t_s"] - w0["t_s"]
        row.update(sends_per_listener_s=(w1["sends_ok"] - w0["sends_ok"] + w1["partial"] - w0["partial"]) / max(held, 1) / span,
                   skipped=int(w1["skipped_eagain"] - w0["skipped_eagain"]), partial=int(w1["partial"] - w0["partial"]),
                   missed_ticks=int(w1["missed_ticks"] - w0["missed_ticks"]), closed=int(w1["closed"] - w0["closed"]),
                   tick_us_max=int(max(p["tick_us_max"] for p in ws[1:])))
else:
    def prom(path):
        out = {}
        try:
            for l in open(path):
                if l.startswith("levee_") and "{" in l:
                    k = l.split("{", 1)[0]
                    out[k] = out.get(k, 0.0) + float(l.split()[-1])
        except OSError:
            pass
        return out
    a, b = prom(m1), prom(m2)
    if "levee_listeners" in a and "levee_listeners" in b:
        held = (a["levee_listeners"] + b["levee_listeners"]) / 2
        d = lambda k: b.get(k, 0.0) - a.get(k, 0.0)
        row.update(chunks_per_listener_s=d("levee_chunks_sent_total") / max(held, 1) / dt,
                   lagging_skips=int(d("levee_lagging_skips_total")), chunks_skipped=int(d("levee_chunks_skipped_total")),
                   stalled_cuts=int(d("levee_stalled_cuts_total")),
                   source_packets_per_s=d("levee_ingest_packets_total") / dt)
    else:
        why.append("no levee metrics")
expect = n + (1 if name == "levee" else 0)
if held < expect:
    why.append(f"held {held:.0f} of {expect}")
h = max(held, 1)
# What else ran on the machine in the window (the machine is shared): all CPUs' busy time less
# the server's and sink's, in % of one core (for levee it includes storm's source, under 1 %),
# and the vCPUs' steal time.
sink_s = sum(map(float, sk2.split(","))) / hz - sum(map(float, sk1.split(","))) / hz
row["sink_cpu_pct"] = sink_s / dt * 100 if sink_s > 0 else row.get("sink_cpu_pct", float("nan"))
(b1, st1), (b2, st2) = (map(float, b.split(",")) for b in (busy1, busy2))
row["others_pct"] = ((b2 - b1) / hz - user_s - sys_s - max(sink_s, 0)) / dt * 100
row["steal_pct"] = (st2 - st1) / hz / dt * 100
row.update(held=held, user_us=user_s * 1e6 / (h * dt), sys_us=sys_s * 1e6 / (h * dt),
           total_us=(user_s + sys_s) * 1e6 / (h * dt), user_kib=row["rss_growth_kib"] / h,
           kernel_kib=row["kernel_growth_kib"] / h / 2, valid=not why, why="; ".join(why))
print(json.dumps(row))
EOF
  tail -n 1 "$OUT/rows.jsonl" | python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print("run %s %d #%s: %s, held %.0f, %.1f us per listener-second (user %.1f, system %.1f), %s stalls, "
  "other processes %.0f %% of a core, steal %.0f %%%s" % (r["server"], r["listeners"], sys.argv[1],
  "valid" if r["valid"] else "INVALID", r["held"], r["total_us"], r["user_us"], r["sys_us"], r.get("stalls", "?"),
  r["others_pct"], r["steal_pct"],
  " (" + r["why"] + ")" if r["why"] else ""))' "$rep" >&2 || true
}

# The table of one count: medians over its valid runs (all runs when none was valid).
table() {
  python3 - "$OUT/rows.jsonl" "$1" <<'EOF'
import json, statistics, sys
n = int(sys.argv[2])
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["listeners"] == n]
def med(rs, k):
    v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
    return statistics.median(v) if v else float("nan")
kib = lambda v: f"{v:.3f}" if abs(v) < 0.1 else f"{v:.2f}"
print(f"\n### {n:,} listeners\n")
print("| server | listeners held | tick / chunk ms | user µs per listener-s | system µs per listener-s "
      "| total µs per listener-s | % of a core | user-space KiB per listener | kernel KiB per listener (noisy) "
      "| sink failures / drops / stalls | B/s per listener | valid runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
use = {}
for s in ("floor", "levee"):
    rs = [r for r in rows if r["server"] == s]
    if not rs:
        continue
    ok = [r for r in rs if r["valid"]]
    u = use[s] = ok or rs
    tot = lambda k: sum(r.get(k, 0) for r in rs)
    print(f"| {s} | {med(u,'held'):,.0f} | {u[0]['tick_ms']} | {med(u,'user_us'):.1f} | {med(u,'sys_us'):.1f} "
          f"| {med(u,'total_us'):.1f} | {med(u,'cpu_pct'):.1f} | {kib(med(u,'user_kib'))} | {med(u,'kernel_kib'):.2f} "
          f"| {tot('failed')} / {tot('dropped')} / {tot('stalls')} | {med(u,'bps_per_listener'):,.0f} "
          f"| {len(ok)}/{len(rs)}{'' if ok else ' (invalid: ' + '; '.join(sorted({r['why'] for r in rs})) + ')'} |")
if "floor" in use and "levee" in use:
    print(f"\nratio levee/floor: {med(use['levee'], 'total_us') / med(use['floor'], 'total_us'):.2f}"
          + (" (total CPU per listener-second, medians)" if len(rows) > 2 else ""))
for s in ("floor", "levee"):
    u = use.get(s)
    if not u:
        continue
    if s == "floor":
        print(f"- floor, in the window: {med(u,'sends_per_listener_s'):.2f} sends per listener-second, "
              f"skipped sends (EAGAIN) {med(u,'skipped'):.0f}, partial {med(u,'partial'):.0f}, "
              f"missed ticks {med(u,'missed_ticks'):.0f}, longest tick {med(u,'tick_us_max'):,.0f} µs; "
              f"sink CPU {med(u,'sink_cpu_pct'):.0f} % of a core, other processes {med(u,'others_pct'):.0f} % of a core, steal {med(u,'steal_pct'):.0f} % of a core")
    else:
        print(f"- levee, in the window: {med(u,'chunks_per_listener_s'):.2f} chunks per listener-second, "
              f"lagging skips {med(u,'lagging_skips'):.0f} ({med(u,'chunks_skipped'):.0f} chunks), "
              f"stalled cuts {med(u,'stalled_cuts'):.0f}, source {med(u,'source_packets_per_s'):.1f} packets/s; "
              f"sink CPU {med(u,'sink_cpu_pct'):.0f} % of a core, other processes {med(u,'others_pct'):.0f} % of a core, steal {med(u,'steal_pct'):.0f} % of a core")
EOF
}

echo "# bench/floor.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "- machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | sed 's/^.*: //'), kernel $(uname -r)"
# The commit of the work tree the levee binary sits in, and whether its crates/ had changes.
if BIN_TREE=$(git -C "$(dirname "$BIN")" rev-parse --show-toplevel 2>/dev/null); then
  echo "- levee: $BIN, built in $BIN_TREE at commit $(git -C "$BIN_TREE" rev-parse --short=12 HEAD)" \
    "($(git -C "$BIN_TREE" status --porcelain -- crates | wc -l) uncommitted files under its crates/)"
else
  echo "- levee: $BIN (not inside a git work tree: commit unknown)"
fi
echo "- floor: $FLOOR --tick-ms T --rate 4000 --sndbuf 65536; listeners: $SINK_BIN at $RAMP_RATE joins/s, floor from $FLOOR_IPS, levee from $LEVEE_IPS"
echo "- levee's source: levee storm's Icecast PUT marker source, 32 kbit/s, 20 ms pages, plus 1 storm listener (counted in levee's held listeners)"
echo "- CPU over ${WINDOW} s from ${SETTLE} s after the last join; REPEAT=$REPEAT"

for n in "${COUNTS[@]}"; do
  for rep in $(seq "$REPEAT"); do
    run_one floor "$n" "$rep"
    pause 3
    run_one levee "$n" "$rep"
    pause 3
  done
  table "$n"
done
if [ -n "${KEEP:-}" ]; then cp "$OUT/rows.jsonl" "$KEEP/rows.jsonl"; fi
