#!/usr/bin/env bash
# Fetch throughput, cold (from the disk) and hot (from the page cache), with zero-copy
# sends on and off, and the record bytes the broker copied through user space per byte
# fetched. Also fio reading the disk (1 MiB O_DIRECT sequential reads) in the same run.
#
# For each mode (zero-copy on, then off): start `ringmq serve` (2 shards), load the
# topic, restart the broker (empty tail caches), evict the data from the page cache,
# fetch everything (cold), fetch it again (hot), stop. Broker CPU time per GB fetched
# comes from /proc/<pid>/stat.
#
# Modes alternate for ROUNDS rounds; the table shows medians.
#
#   benches/fetch.sh                        # defaults: 1 GB, 3 rounds, ./bench-data
#   BYTES=4000000000 ROUNDS=5 DATA_DIR=/mnt/nvme benches/fetch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BYTES=${BYTES:-1000000000}
ROUNDS=${ROUNDS:-3}
DATA_DIR=${DATA_DIR:-./bench-data}

if ! command -v fio >/dev/null; then
  echo "installing fio" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fio >/dev/null
fi

cargo build --release -q -p ringmq -p ringmq-bench
mkdir -p "$DATA_DIR"
WORK=$(mktemp -d "$DATA_DIR/fetch.XXXXXX")
WORK=$(realpath "$WORK")
BROKER_PID=
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BENCH=target/release/native_fetch

start() { # zero-copy setting
  target/release/ringmq serve --shards 2 --data-dir "$WORK/data" --native-listen "127.0.0.1:$PORT" --kafka-listen off \
    --zero-copy "$1" --log-level warn >/dev/null &
  BROKER_PID=$!
  for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null && return; sleep 0.1; done
  echo "broker did not start" >&2; exit 1
}
stop() { kill "$BROKER_PID"; wait "$BROKER_PID" || true; BROKER_PID=; }
cpu() { awk '{print $14" "$15}' "/proc/$BROKER_PID/stat"; }

# fio: sequential 1 MiB direct reads of a file of the same size.
FIO_MBPS=$(fio --name=r --directory="$WORK" --rw=read --bs=1M --size="$BYTES" --direct=1 \
  --ioengine=psync --output-format=json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e6)')
rm -f "$WORK"/r.*

RESULTS=()
for ROUND in $(seq "$ROUNDS"); do
for ZC in true false; do
  echo "round $ROUND, zero-copy $ZC" >&2
  rm -rf "$WORK/data"
  start "$ZC"
  "$BENCH" --broker "127.0.0.1:$PORT" load --bytes "$BYTES"
  stop
  start "$ZC"
  "$BENCH" evict "$WORK/data" 2>/dev/null
  C0=$(cpu); COLD=$("$BENCH" --broker "127.0.0.1:$PORT" fetch); C1=$(cpu)
  HOT=$("$BENCH" --broker "127.0.0.1:$PORT" fetch); C2=$(cpu)
  stop
  RESULTS+=("{\"zero_copy\": $ZC, \"cold\": $COLD, \"hot\": $HOT, \"cpu\": [\"$C0\", \"$C1\", \"$C2\"]}")
done
done

python3 - "$FIO_MBPS" "${RESULTS[@]}" <<'PY'
import json, os, sys
from statistics import median
fio = float(sys.argv[1])
ticks = os.sysconf("SC_CLK_TCK")
def cpu_per_gb(a, b, nbytes):
    (u0, s0), (u1, s1) = [map(int, x.split()) for x in (a, b)]
    gb = nbytes / 1e9
    return (u1 - u0) / ticks / gb, (s1 - s0) / ticks / gb
rows = {}
for raw in sys.argv[2:]:
    r = json.loads(raw)
    mode = "zero-copy" if r["zero_copy"] else "copy"
    for run, a, b in (("cold", 0, 1), ("hot", 1, 2)):
        x = r[run]
        u, s = cpu_per_gb(r["cpu"][a], r["cpu"][b], x["bytes"])
        rows.setdefault((mode, run), []).append(
            (x["mb_per_sec"], x["user_space_bytes_per_byte"], x["spliced_bytes"] / 1e6, u, s))
print("== fetch: 2 shards, 2 partitions, one connection each, 1 MiB per fetch, every batch CRC-checked")
print(f"fio 1 MiB O_DIRECT sequential read (QD1): {fio:.0f} MB/s; medians of {len(rows[('copy', 'cold')])} rounds")
print(f"{'mode':<11}{'run':<6}{'MB/s':>8}{'vs fio':>8}{'user-space B/B':>16}{'spliced MB':>12}{'broker user s/GB':>18}{'sys s/GB':>10}  all rounds MB/s")
for (mode, run), xs in rows.items():
    m = [median(c) for c in zip(*xs)]
    print(f"{mode:<11}{run:<6}{m[0]:>8.0f}{m[0]/fio:>8.2f}{m[1]:>16.3f}{m[2]:>12.0f}{m[3]:>18.3f}{m[4]:>10.3f}  "
          + " ".join(f"{x[0]:.0f}" for x in xs))
for run in ("cold", "hot"):
    z, c = rows.get(("zero-copy", run)), rows.get(("copy", run))
    if z and c:
        print(f"{run}: zero-copy / copy = {median(x[0] for x in z) / median(x[0] for x in c):.2f} (throughput), "
              f"{median(x[4] for x in z) / max(median(x[4] for x in c), 1e-9):.2f} (broker sys CPU per GB)")
PY
