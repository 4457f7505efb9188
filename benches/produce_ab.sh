#!/usr/bin/env bash
# Produce throughput and ack latency of two ringmq binaries side by side, in one run:
# alternating rounds on fresh brokers, through the native client (`ringmq bench`) and
# through librdkafka (`ringmq bench --driver kafka`), 1 KiB messages, 2 partitions,
# 1 producer, flush every_batch. Prints each round and the new/base ratio of medians.
#
#   BASE_BIN=/path/to/old/ringmq benches/produce_ab.sh      # NEW_BIN defaults to this tree's release build
#   ROUNDS=5 DURATION=10 BASE_BIN=... benches/produce_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BASE_BIN:?set BASE_BIN to the ringmq binary to compare against}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
DATA_DIR=${DATA_DIR:-./bench-data}
if [ -z "${NEW_BIN:-}" ]; then
  cargo build --release -q -p ringmq
  NEW_BIN=$PWD/target/release/ringmq
fi
mkdir -p "$DATA_DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # binary driver -> JSON of one bench on a fresh broker
  local bin=$1 driver=$2 work nport kport pid brokers
  work=$(mktemp -d "$DATA_DIR/ab.XXXXXX")
  nport=$(free_port); kport=$(free_port)
  "$bin" serve --data-dir "$work/data" --native-listen "127.0.0.1:$nport" \
    --kafka-listen "127.0.0.1:$kport" --log-level warn >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$kport))" 2>/dev/null && break; sleep 0.1; done
  if [ "$driver" = kafka ]; then brokers=127.0.0.1:$kport; else brokers=127.0.0.1:$nport; fi
  # The bench client is always this tree's, so only the broker differs.
  "$NEW_BIN" bench --driver "$driver" --brokers "$brokers" --topic ab --partitions 2 --producers 1 \
    --consumers 0 --message-size 1024 --warmup 2 --duration "$DURATION" --json 2>/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}

results=$(mktemp)
for driver in native kafka; do
  for r in $(seq "$ROUNDS"); do
    for which in base new; do
      if [ "$which" = base ]; then bin=$BASE_BIN; else bin=$NEW_BIN; fi
      j=$(run "$bin" "$driver")
      python3 - "$driver" "$which" "$r" "$j" <<'PY' | tee -a "$results"
import json, sys
driver, which, r, j = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
p = j["produce"]
print(f"{driver} {which} {r} {p['messages_per_sec']:.0f} {p['ack_latency_us']['p50']:.0f} {p['ack_latency_us']['p99']:.0f}")
PY
    done
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("\ndriver   base msgs/s  new msgs/s  ratio   base p50 us  new p50 us  base p99 us  new p99 us")
for d in ("native", "kafka"):
    m = lambda w, i: statistics.median(float(r[i]) for r in rows if r[0] == d and r[1] == w)
    print(f"{d:<8} {m('base',3):>11.0f} {m('new',3):>11.0f} {m('new',3)/m('base',3):>6.3f}"
          f" {m('base',4):>12.0f} {m('new',4):>11.0f} {m('base',5):>12.0f} {m('new',5):>11.0f}")
PY
rm -f "$results"
