#!/usr/bin/env bash
# Durable ack latency against Redis (appendfsync always), with the disk's own floor
# measured in the same run (issue 21's acceptance). Each of RUNS runs:
#   1. fio, 4 KiB O_DIRECT writes each followed by an fdatasync, 1,000 a second for
#      FIO_SECONDS, in the file system of the data, twice: into fallocated space (unwritten
#      extents: an append before the zero-filled runway) and over written blocks (an
#      append over the runway, docs/storage.md). p50 / p99 of write + fdatasync.
#   2. benches/compare --only ringmq,redis: 100 B and 1 KiB at 2,000 msgs/s and at max
#      rate (the native client and the Kafka driver on the same broker).
#   3. benches/compare --only ringmq,redis --sizes 1024 --rate 20000.
#
#   benches/latency.sh                 # 3 runs
#   RUNS=1 DURATION=5 benches/latency.sh
#
# Knobs: RUNS (3), DURATION (seconds per compare workload, 8), FIO_SECONDS (8),
# DATA (where fio writes; ./data/fio-floor). Output: one block per run, then the lines
# to compare; the raw compare reports go to target/latency/run-N-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
FIO_SECONDS=${FIO_SECONDS:-8}
DATA=${DATA:-data/fio-floor}
OUT=target/latency
mkdir -p "$DATA" "$OUT"
command -v fio >/dev/null || { echo "installing fio" >&2; apt-get install -y -q fio >/dev/null; }
cargo build --release -q -p ringmq

floor() { # $1: label; the file is prepared by the caller
  fio --name=floor --filename="$DATA/f" --bs=4k --rw=write --direct=1 --ioengine=io_uring \
    --fdatasync=1 --rate_iops=1000 --runtime="$FIO_SECONDS" --time_based --size=256m \
    --fallocate=none --output-format=json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
w = j["write"]["clat_ns"]["percentile"]; s = j["sync"]["lat_ns"]["percentile"]
print("  fio %-26s write + fdatasync p50 %4.0f + %4.0f us, p99 %4.0f + %4.0f us" % (
    sys.argv[1], w["50.000000"] / 1e3, s["50.000000"] / 1e3,
    w["99.000000"] / 1e3, s["99.000000"] / 1e3))' "$1"
}

for run in $(seq "$RUNS"); do
  echo "== run $run ($(date -u +%H:%M:%S))"
  rm -f "$DATA/f" && fallocate -l 256m "$DATA/f"
  floor "into fallocated space:"
  dd if=/dev/zero of="$DATA/f" bs=1M count=256 oflag=direct status=none && sync
  floor "over written blocks:"
  rm -f "$DATA/f"
  benches/compare --only ringmq,redis --duration "$DURATION" \
    --json "$OUT/run-$run-2000.json" 2>/dev/null
  benches/compare --only ringmq,redis --sizes 1024 --rate 20000 --duration "$DURATION" \
    --json "$OUT/run-$run-20000.json" 2>/dev/null
done
