#!/usr/bin/env bash
# The effect of each tuning profile on this machine, measured in one run: for "none"
# (the machine as it is), latency, throughput and balanced, apply the profile with
# `ringmq tune apply`, run the same workloads against a fresh broker, and revert.
#   * fixed rate (RATE msgs/s of 100 B): produce-ack and end-to-end p50/p99/p99.9,
#   * max rate (1 KiB): produce msgs/s and MB/s.
# "busy-poll" is not a profile: only net.core.busy_read and net.core.busy_poll at 50 µs
# (the latency profile's values), to show what busy polling alone does on loopback.
# Prints one table and the ratio of each profile to "none". Changes kernel settings
# while it runs, so it needs root; every profile is reverted (also on Ctrl-C).
#
#   benches/tuning.sh                          # 10 s per workload, 3 rounds
#   DURATION=20 ROUNDS=3 RATE=20000 benches/tuning.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "benches/tuning.sh applies kernel profiles: run it as root" >&2; exit 1; }
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
PROFILES=${PROFILES:-"none busy-poll latency throughput balanced"}
cargo build --release -q -p ringmq
R=target/release/ringmq
WORK=$(mktemp -d)
BROKER=
cleanup() {
  [ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null && wait "$BROKER" 2>/dev/null || true
  $R tune revert >/dev/null 2>&1 || true
  [ -n "${SAVED_BUSY:-}" ] && set_busy $SAVED_BUSY
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
set_busy() { echo "$1" >/proc/sys/net/core/busy_read; echo "$2" >/proc/sys/net/core/busy_poll; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Start from the machine as it is: a state left by an earlier run is reverted first.
$R tune revert >/dev/null
printf "%-11s %5s %12s %10s %10s %10s %10s %10s\n" profile round "max msgs/s" "max MB/s" "ack p50" "ack p99" "ack p99.9" "e2e p99" | tee "$WORK/table"
for round in $(seq "$ROUNDS"); do
  for p in $PROFILES; do
    case "$p" in
      none) ;;
      busy-poll) SAVED_BUSY="$(cat /proc/sys/net/core/busy_read) $(cat /proc/sys/net/core/busy_poll)"; set_busy 50 50 ;;
      *) $R tune apply --profile "$p" >"$WORK/apply.log" 2>&1 || true ;;
    esac
    PORT=$(free_port)
    rm -rf "$WORK/data"
    $R serve --shards 2 --data-dir "$WORK/data" --native-listen "127.0.0.1:$PORT" --kafka-listen off --log-level warn >/dev/null 2>&1 &
    BROKER=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
    common=(--brokers "127.0.0.1:$PORT" --partitions 2 --warmup 2 --duration "$DURATION" --json)
    $R bench "${common[@]}" --topic max --message-size 1024 >"$WORK/max.json" 2>/dev/null
    $R bench "${common[@]}" --topic fixed --message-size 100 --rate "$RATE" >"$WORK/fixed.json" 2>/dev/null
    kill "$BROKER"; wait "$BROKER" 2>/dev/null || true; BROKER=
    python3 - "$p" "$round" "$WORK/max.json" "$WORK/fixed.json" <<'PY' | tee -a "$WORK/table"
import json, sys
p, rnd, mx, fx = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
a, e = fx["produce"]["ack_latency_us"], fx["end_to_end_latency_us"]
print(f'{p:<11} {rnd:>5} {mx["produce"]["messages_per_sec"]:>12.0f} {mx["produce"]["bytes_per_sec"]/1e6:>10.1f} '
      f'{a["p50"]:>8}us {a["p99"]:>8}us {a["p999"]:>8}us {e["p99"]:>8}us')
PY
    case "$p" in
      none) ;;
      busy-poll) set_busy $SAVED_BUSY; SAVED_BUSY= ;;
      *) $R tune revert >/dev/null ;;
    esac
  done
done
echo
echo "ratios to none (median over rounds; msgs/s higher is better, latency lower is better):"
python3 - "$WORK/table" <<'PY'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]).read().splitlines()[1:]:
    f = line.split()
    rows[f[0]].append([float(f[2])] + [float(x.rstrip("us")) for x in f[4:8]])
med = {p: [st.median(c) for c in zip(*v)] for p, v in rows.items()}
base = med["none"]
for p, m in med.items():
    print(f"  {p:<11} max msgs/s {m[0]/base[0]:.2f}x   ack p50 {m[1]/base[1]:.2f}x   ack p99 {m[2]/base[2]:.2f}x   ack p99.9 {m[3]/base[3]:.2f}x   e2e p99 {m[4]/base[4]:.2f}x")
PY
