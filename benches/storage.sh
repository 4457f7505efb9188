#!/usr/bin/env bash
# Append throughput of the partition log beside fio, measured in the same run, and
# append-to-durable latency with 1, 8 and 64 partitions on one shard.
#
#   benches/storage.sh                 # defaults: 4 s per run, 3 rounds, ./bench-data
#   DURATION=10 ROUNDS=5 DATA_DIR=/mnt/nvme/bench benches/storage.sh
#   IO_MODES="direct buffered" benches/storage.sh   # compare the two write paths
#
# Throughput: one appender, 1 KiB records in 16 KiB and 1 MiB batches, flush
# every_batch (each append waits for its fdatasync); fio writes the same block sizes
# with O_DIRECT and fdatasync after every write, twice:
#   * fio_over: a 1 GiB file written over and over (fio's usual setup). After the first
#     pass every write lands on blocks already written, so an fdatasync has no file
#     metadata to write: this is more than any append-only log can get.
#   * fio_append: a fresh preallocated file larger than the run writes, so every write
#     lands on new (unwritten) blocks, as a log's appends do: the fdatasync also writes
#     the extent change. This is the like-for-like reference.
# Rounds alternate fio and ringmq; the median of each is reported with the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-3}
DATA_DIR=${DATA_DIR:-./bench-data}
IO_MODES=${IO_MODES:-direct}

if ! command -v fio >/dev/null; then
  echo "installing fio" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq fio >/dev/null
  else
    sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq fio >/dev/null
  fi
fi

cargo build --release -q -p ringmq-bench
BIN=target/release/storage_append
mkdir -p "$DATA_DIR"
FIO_DIR=$(mktemp -d "$DATA_DIR/fio.XXXXXX")
trap 'rm -rf "$FIO_DIR"' EXIT

fio_mbps() { # block size, file size
  rm -f "$FIO_DIR"/w.*
  fio --name=w --directory="$FIO_DIR" --rw=write --bs="$1" --size="$2" --direct=1 \
      --fdatasync=1 --ioengine=psync --fallocate=native --runtime="$DURATION" --time_based \
      --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6)'
}
# Larger than DURATION seconds of writing at 3 GB/s, so fio_append never wraps.
FRESH_BYTES=$(( (DURATION + 1) * 3 ))G

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

echo "== append throughput, one appender, every_batch, vs fio O_DIRECT+fdatasync over old and onto new blocks (median of $ROUNDS x ${DURATION}s)"
printf '%-9s %-9s %12s %12s %14s %10s %12s\n' batch io ringmq_MB/s fio_over_MB/s fio_append_MB/s ratio_over ratio_append
for mode in $IO_MODES; do
  for spec in "16k 16384" "1M 1048576"; do
    set -- $spec
    ours=(); over=(); fresh=()
    for _ in $(seq "$ROUNDS"); do
      over+=("$(fio_mbps "$1" 1G)")
      fresh+=("$(fio_mbps "$1" "$FRESH_BYTES")")
      ours+=("$("$BIN" --mode throughput --io-mode "$mode" --batch-bytes "$2" --duration "$DURATION" --dir "$DATA_DIR/log" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_per_sec"]/1e6)')")
    done
    o=$(median "${ours[@]}"); r=$(median "${over[@]}"); f=$(median "${fresh[@]}")
    printf '%-9s %-9s %12.1f %12.1f %14.1f %10.2f %12.2f\n' "$1" "$mode" "$o" "$r" "$f" \
      "$(python3 -c "print($o/$r)")" "$(python3 -c "print($o/$f)")"
  done
done
rm -f "$FIO_DIR"/w.*

echo
echo "== the same with 4 appends in flight on the partition (group commit shares fdatasyncs; fio still syncs each write)"
printf '%-9s %-9s %12s %12s\n' batch io ringmq_MB/s syncs/append
for mode in $IO_MODES; do
  for spec in "16k 16384" "1M 1048576"; do
    set -- $spec
    "$BIN" --mode throughput --io-mode "$mode" --batch-bytes "$2" --appenders-per-partition 4 --duration "$DURATION" --dir "$DATA_DIR/log" --json |
      python3 -c 'import json,sys; j=json.load(sys.stdin); print("%-9s %-9s %12.1f %12.3f" % (sys.argv[1], j["io_mode"], j["bytes_per_sec"]/1e6, j["syncs_per_append"]))' "$1"
  done
done

echo
echo "== append-to-durable latency, one shard, 4 appenders per partition, 16 KiB batches"
printf '%-10s %-9s %10s %9s %12s %8s %8s %8s %8s\n' partitions io appends/s MB/s syncs/append p50_us p99_us p99.9_us max_us
for mode in $IO_MODES; do
  for parts in 1 8 64; do
    "$BIN" --mode latency --io-mode "$mode" --partitions "$parts" --appenders-per-partition 4 \
        --batch-bytes 16384 --duration "$DURATION" --dir "$DATA_DIR/log" --json |
      python3 -c '
import json, sys
j = json.load(sys.stdin); l = j["append_latency_us"]
print("%-10d %-9s %10.0f %9.1f %12.3f %8d %8d %8d %8d" % (j["partitions"], j["io_mode"], j["appends_per_sec"],
      j["bytes_per_sec"] / 1e6, j["syncs_per_append"], l["p50"], l["p99"], l["p99.9"], l["max"]))'
  done
done
