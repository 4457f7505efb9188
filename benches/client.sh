#!/usr/bin/env bash
# The native client and `ringmq bench` at max rate and at half of it, with the CPU the
# client process and the broker each use per GB, measured in the same run:
# 1 KiB messages, 2 partitions, 1 producer and 1 consumer, flush every_batch, loopback.
#
#   benches/client.sh                  # defaults: 3 rounds of 10 s, ./bench-data
#   ROUNDS=5 DURATION=20 benches/client.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
DATA_DIR=${DATA_DIR:-./bench-data}

cargo build --release -q -p ringmq
mkdir -p "$DATA_DIR"
BIN=$PWD/target/release/ringmq
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One run on a fresh broker: prints the bench's JSON.
run() { # extra bench flags...
  local work port pid out
  work=$(mktemp -d "$DATA_DIR/client.XXXXXX")
  port=$(free_port)
  "$BIN" serve --data-dir "$work/data" --native-listen "127.0.0.1:$port" --kafka-listen off \
    --log-level warn >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done
  out=$("$BIN" bench --brokers "127.0.0.1:$port" --broker-pid "$pid" --partitions 2 --producers 1 \
    --consumers 1 --message-size 1024 --warmup 2 --duration "$DURATION" --json "$@" 2>/dev/null)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$work"
  echo "$out"
}

summary() { # label json
  python3 - "$1" "$2" <<'PY'
import json, sys
label, j = sys.argv[1], json.loads(sys.argv[2])
p, c = j["produce"], j["consume"]
a, e = p["ack_latency_us"], j["end_to_end_latency_us"]
cl, br = (j.get("client") or {}), (j.get("broker") or {})
print(f"{label:<10} {p['messages_per_sec']:>9.0f} {p['bytes_per_sec']/1e6:>7.1f} {c['messages_per_sec']:>9.0f}"
      f" {a['p50']/1e3:>7.2f} {a['p99']/1e3:>7.2f} {a['p999']/1e3:>7.2f} {e['p50']/1e3:>7.2f} {e['p99']/1e3:>7.2f}"
      f" {cl.get('cpu_seconds_per_gb', 0):>8.2f} {br.get('cpu_seconds_per_gb', 0):>8.2f}")
PY
}

echo "== ringmq bench, native driver: 1 KiB, 2 partitions, 1 producer, 1 consumer, every_batch (${DURATION} s after 2 s warm-up)"
printf '%-10s %9s %7s %9s %7s %7s %7s %7s %7s %8s %8s\n' run prod/s MB/s cons/s ack50ms ack99ms ack999 e2e50ms e2e99ms cli_s/GB brk_s/GB
rates=()
for r in $(seq "$ROUNDS"); do
  j=$(run)
  summary "max #$r" "$j"
  rates+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["produce"]["messages_per_sec"])' "$j")")
done
half=$(python3 -c 'import statistics,sys; print(int(statistics.median(float(x) for x in sys.argv[1:])/2))' "${rates[@]}")
for r in $(seq "$ROUNDS"); do
  summary "$half/s #$r" "$(run --rate "$half")"
done
echo "(cli_s/GB, brk_s/GB: CPU seconds of the bench process (producer and consumer) and of the broker per GB produced; each message is also consumed once)"
