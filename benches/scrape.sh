#!/usr/bin/env bash
# What Prometheus scraping costs the broker: produce throughput at max rate with a scrape
# of /metrics every second against none, on the same broker, in one run.
#
# One `ringmq serve` (SHARDS shards, flush every_batch) holds the load topic and EXTRA
# partitions in other topics (so each scrape carries what a broker with that many
# partitions exports). Rounds alternate: `ringmq bench` (native driver, PRODUCERS
# producers, one consumer, 1 KiB messages, max rate) alone, then with a scraper that GETs
# /metrics every SCRAPE_EVERY seconds; the order flips each round so neither always runs
# second. Reports each round, the medians, the loss as the median of each round's
# 1 - scraped / alone (a pair of neighbouring runs, so slow drifts of the machine cancel)
# and what a scrape is (bytes, samples, how long the broker took to gather it:
# ringmq_scrape_duration_seconds).
#
#   benches/scrape.sh                                   # 5 rounds of 10 s, 200 extra partitions
#   ROUNDS=3 DURATION=5 EXTRA=1000 benches/scrape.sh
#   RINGMQ_BIN=/path/to/ringmq benches/scrape.sh
#
# Knobs: ROUNDS (5), DURATION (s per round, 10), EXTRA (partitions besides the load
# topic's, 200), SHARDS (2), PRODUCERS (2), SCRAPE_EVERY (s, 1), DATA_DIR (./bench-data).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
EXTRA=${EXTRA:-200}
SHARDS=${SHARDS:-2}
PRODUCERS=${PRODUCERS:-2}
SCRAPE_EVERY=${SCRAPE_EVERY:-1}
DATA_DIR=${DATA_DIR:-./bench-data}

TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${RINGMQ_BIN:-}" ]; then
  cargo build --release -q -p ringmq
  RINGMQ_BIN=$TARGET/release/ringmq
fi
mkdir -p "$DATA_DIR"
WORK=$(mktemp -d "$DATA_DIR/scrape.XXXXXX")
BROKER_PID=
SCRAPER_PID=
cleanup() {
  [ -n "$SCRAPER_PID" ] && kill "$SCRAPER_PID" 2>/dev/null || true
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATIVE=127.0.0.1:$(free_port)
KAFKA=127.0.0.1:$(free_port)
ADMIN=127.0.0.1:$(free_port)
"$RINGMQ_BIN" serve --data-dir "$WORK/data" --shards "$SHARDS" --native-listen "$NATIVE" \
  --kafka-listen "$KAFKA" --admin-listen "$ADMIN" --log-level warn >"$WORK/serve.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 300); do curl -sf "http://$ADMIN/v1/ready" >/dev/null && break; sleep 0.05; done
export RINGMQ_BROKERS=$NATIVE

# The other partitions: topics of 10.
n=0
while [ "$n" -lt "$EXTRA" ]; do
  "$RINGMQ_BIN" topic create "other-$n" --partitions 10 >/dev/null
  n=$((n + 10))
done
# Retention keeps the load topic's disk use flat across rounds (a growing log drifted
# the throughput down round after round).
"$RINGMQ_BIN" topic create load --partitions "$SHARDS" --config retention_bytes=536870912 \
  --config segment_bytes=67108864 >/dev/null
echo "== broker $NATIVE (admin http://$ADMIN), $SHARDS shards, load topic of $SHARDS partitions and $n other partitions" >&2

round() { # label -> msgs/s on stdout
  "$RINGMQ_BIN" bench --topic load --producers "$PRODUCERS" --consumers 1 --warmup 1 \
    --duration "$DURATION" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["produce"]["messages_per_sec"]))'
}

scraper() { # scrapes every SCRAPE_EVERY s; one line per scrape: bytes, client seconds
  while true; do
    curl -s -o /dev/null -w '%{size_download} %{time_total}\n' "http://$ADMIN/metrics" >>"$WORK/scrapes.txt"
    sleep "$SCRAPE_EVERY"
  done
}

"$RINGMQ_BIN" bench --topic load --producers "$PRODUCERS" --consumers 1 --warmup 1 --duration 2 --json >/dev/null 2>&1
: >"$WORK/results.txt"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="alone scraped"; else order="scraped alone"; fi
  for mode in $order; do
    if [ "$mode" = scraped ]; then
      scraper &
      SCRAPER_PID=$!
    fi
    rate=$(round)
    if [ "$mode" = scraped ]; then
      kill "$SCRAPER_PID" 2>/dev/null || true
      wait "$SCRAPER_PID" 2>/dev/null || true
      SCRAPER_PID=
    fi
    echo "  round $r $mode: $rate msgs/s" >&2
    echo "$mode $rate" >>"$WORK/results.txt"
  done
done
curl -s "http://$ADMIN/metrics" >"$WORK/last.txt"
# The direct cost: the broker's CPU time (all threads) over 50 scrapes in a row, idle
# otherwise, per scrape.
cpu() { awk '{print $14 + $15}' "/proc/$BROKER_PID/stat"; }
c0=$(cpu)
for _ in $(seq 50); do curl -s -o /dev/null "http://$ADMIN/metrics"; done
c1=$(cpu)
echo "$(( c1 - c0 )) $(getconf CLK_TCK) $SHARDS" >"$WORK/direct.txt"
python3 - "$WORK/results.txt" "$WORK/scrapes.txt" "$WORK/last.txt" "$SCRAPE_EVERY" "$WORK/direct.txt" <<'PY'
import statistics as st, sys
res = [l.split() for l in open(sys.argv[1])]
alone = [int(v) for m, v in res if m == "alone"]
scraped = [int(v) for m, v in res if m == "scraped"]
pairs = [s / a for a, s in zip(alone, scraped)]
scrapes = [l.split() for l in open(sys.argv[2]) if l.strip()]
last = open(sys.argv[3]).read()
samples = sum(1 for l in last.splitlines() if l and not l.startswith("#"))
took = [l for l in last.splitlines() if l.startswith("ringmq_scrape_duration_seconds ")]
a, s = st.median(alone), st.median(scraped)
print()
print(f"== produce msgs/s at max rate, 1 KiB, medians of {len(alone)} rounds")
print(f"  alone:                 {a:.0f}   (rounds {alone})")
print(f"  scraped every {sys.argv[4]} s:    {s:.0f}   (rounds {scraped})")
print(f"  scraped / alone per round: {[round(p, 3) for p in pairs]}")
m = st.median(pairs)
print(f"  median of the rounds' scraped / alone: {m:.3f} (loss {100 * (1 - m):.1f} %; target under 2 %); "
      f"ratio of the medians {s / a:.3f}")
print(f"  scrapes during the rounds: {len(scrapes)}, {st.median(int(b) for b, _ in scrapes) / 1024:.0f} KiB and "
      f"{1000 * st.median(float(t) for _, t in scrapes):.1f} ms each (median, as curl saw it)")
print(f"  a scrape: {samples} samples; the broker's own gathering time {took[0].split()[1] if took else '?'} s (last scrape)")
ticks, hz, shards = map(int, open(sys.argv[5]).read().split())
per = ticks / hz / 50
print(f"  direct cost: {1000 * per:.1f} ms of broker CPU per scrape (50 in a row on the idle broker); one scrape"
      f" every {sys.argv[4]} s takes {100 * per / float(sys.argv[4]) / shards:.2f} % of its {shards} cores")
PY
