#!/usr/bin/env bash
# ddos-during-broadcast benchmark: legitimate listeners joining through the join API and
# listening, with and without attackers on the same space; the server's RSS before, during and
# after each run and its CPU over the run, read from /proc/PID.
#
#   cargo build --release -p levee
#   bench/ddos.sh                      # 3 runs of each mode, 2,000 listeners
#   RUNS=5 LISTENERS=1000 bench/ddos.sh
#
# Every run gets a fresh server (bans and escalation do not carry over). Results: one JSON
# report per run under $OUT, one line per run in $OUT/runs.tsv, and medians printed at the end.
# Check the `valid` column: a run whose generator was saturated says so, and its figures
# would blame the server for the generator.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC_BIN=${LEVEE:-target/release/levee}
OUT=${OUT:-/tmp/levee-ddos-bench}
RUNS=${RUNS:-3}
LISTENERS=${LISTENERS:-2000}
RAMP=${RAMP:-10s}
HOLD=${HOLD:-20s}
PORT=${PORT:-18600}
MODES=${MODES:-"none attack"}
# 127.0.0.1 is not exempt, so every 127.x source meets the per-source limits.
SERVER_ARGS=${SERVER_ARGS:-"--allow 127.254.0.1/32"}
ATTACK_ARGS=${ATTACK_ARGS:-"--attack-sources 127.66.0.0/24 --join-flood 1500 --conn-flood 500 --slowloris 200 --slow-readers 50 --forged-tickets 500 --garbage-ws 100 --attack-workers 64"}
STORM_ARGS=${STORM_ARGS:-"--ogg-share 0.5 --sources 127.1.0.0/16 --first-audio-timeout 30s"}

mkdir -p "$OUT"
# A private copy: other builds may replace target/release/levee while we run.
BIN="$OUT/levee"
cp "$SRC_BIN" "$BIN"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

printf 'run\tmode\tvalid\tpassed\tjoined\tplanned\tdelivered\tgaps\tjoin_p50_ms\tjoin_p99_ms\tjoin_net_p99_ms\tpow_bits\tttfa_p99_ms\te2e_p50_ms\te2e_p99_ms\tchallenged\tqueued\tattack_attempts\tattack_rate\tattack_refused\tattack_accepted\tattack_cpu_pct\tgen_cpu_pct\tserver_cpu_s\trss_before_mb\trss_peak_mb\trss_after_mb\tload1\n' >"$OUT/runs.tsv"

for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    off=0
    [ "$mode" = attack ] && off=1
    port=$((PORT + run * 10 + off))
    log="$OUT/server-$run-$mode.log"
    # shellcheck disable=SC2086
    "$BIN" serve --no-record --listen "127.0.0.1:$port" --admin-key bench $SERVER_ARGS >"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      grep -q "levee listening on" "$log" 2>/dev/null && break
      sleep 0.1
    done
    sleep 1
    rss_before=$(rss_kb "$server")
    cpu0=$(cpu_ticks "$server")
    # Sample RSS every 250 ms while the storm runs.
    : >"$OUT/rss-$run-$mode.log"
    (while kill -0 "$server" 2>/dev/null; do rss_kb "$server" >>"$OUT/rss-$run-$mode.log"; sleep 0.25; done) &
    sampler=$!
    extra=""
    [ "$mode" = attack ] && extra="$ATTACK_ARGS"
    json="$OUT/run-$run-$mode.json"
    # shellcheck disable=SC2086
    timeout 300 "$BIN" storm ddos --server "http://127.0.0.1:$port" --listeners "$LISTENERS" \
      --ramp "$RAMP" --hold "$HOLD" $STORM_ARGS $extra --json "$json" --quiet \
      >"$OUT/storm-$run-$mode.txt" 2>&1 || true
    cpu1=$(cpu_ticks "$server")
    rss_peak=$(sort -n "$OUT/rss-$run-$mode.log" | tail -1)
    sleep 5
    rss_after=$(rss_kb "$server")
    kill "$sampler" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    load=$(cut -d' ' -f1 /proc/loadavg)
    python3 - "$json" "$run" "$mode" "$rss_before" "$rss_peak" "$rss_after" "$cpu0" "$cpu1" "$load" >>"$OUT/runs.tsv" <<'EOF'
import json, sys
path, run, mode, rb, rp, ra, c0, c1, load = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{run}\t{mode}\tno report: {e}")
    sys.exit(0)
a = r.get("attack", {}).get("total", {})
j = r.get("join") or {}
mb = lambda kb: f"{int(kb or 0) / 1024:.1f}"
row = [run, mode, r["valid"], r["passed"], r["listeners"]["joined"], r["listeners"]["planned"],
       f"{r['delivered_ratio']:.5f}", r["gaps"],
       f"{j.get('join_ms', {}).get('p50', 0):.1f}", f"{j.get('join_ms', {}).get('p99', 0):.1f}",
       f"{j.get('join_net_ms', {}).get('p99', 0):.1f}", j.get("pow_max_difficulty", 0),
       f"{r['ttfa_ms']['p99']:.1f}", f"{r['e2e_latency_ms']['p50']:.1f}", f"{r['e2e_latency_ms']['p99']:.1f}",
       j.get("challenged", 0), j.get("queued", 0),
       a.get("attempts", 0), f"{a.get('rate', 0):.0f}", a.get("refused", 0), a.get("accepted", 0),
       f"{r.get('attack', {}).get('cpu_pct', 0):.1f}", f"{r['generator']['cpu_pct']:.1f}",
       f"{(int(c1) - int(c0)) / 100:.1f}", mb(rb), mb(rp), mb(ra), load]
print("\t".join(str(x) for x in row))
EOF
    tail -1 "$OUT/runs.tsv"
  done
done

python3 - "$OUT/runs.tsv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["delivered", "join_p50_ms", "join_p99_ms", "join_net_p99_ms", "pow_bits", "ttfa_p99_ms", "e2e_p50_ms", "e2e_p99_ms",
        "attack_rate", "attack_refused", "attack_cpu_pct", "gen_cpu_pct", "server_cpu_s",
        "rss_before_mb", "rss_peak_mb", "rss_after_mb"]
for mode in sorted({r["mode"] for r in rows}):
    rs = [r for r in rows if r["mode"] == mode and r.get("delivered") not in (None, "")]
    valid = sum(r["valid"] == "True" for r in rs)
    print(f"\nmode {mode}: {len(rs)} runs, {valid} valid; medians:")
    for c in cols:
        try:
            print(f"  {c:<16} {statistics.median(float(r[c]) for r in rs):.5g}")
        except (ValueError, statistics.StatisticsError):
            pass
EOF
