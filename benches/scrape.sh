#!/usr/bin/env bash
# What Prometheus scraping costs the broker: produce throughput at max rate with a scrape
# of /metrics every second against none, on the same broker, in one run.
#
# One `ringmq serve` (SHARDS shards, flush every_batch) holds the load topic and EXTRA
# partitions in other topics (so each scrape carries what a broker with that many
# partitions exports). One run of `ringmq bench` (native driver, PRODUCERS producers,
# CONSUMERS consumers, 1 KiB messages, max rate) lasts ROUNDS rounds; a round is PHASE seconds without
# scraping and PHASE seconds with a scraper that GETs /metrics every SCRAPE_EVERY seconds
# (the order flips each round). The bench's rate each second is labelled with its phase.
# Reports the per-second rates of each mode, each round's scraped / alone (neighbouring
# phases, so slow drifts of the machine cancel), their median as the loss, and what a
# scrape is (bytes, samples, how long the broker took to gather it:
# ringmq_scrape_duration_seconds), then a scrape's direct CPU cost on the idle broker.
#
# No consumer by default: with one, the rate of a second varies 3 times as much here
# (stdev 22 % of the mean against 7.5 %), which hides a 2 % effect.
#
#   benches/scrape.sh                                   # 20 rounds of 2 x 6 s, 200 extra partitions
#   ROUNDS=6 EXTRA=1000 benches/scrape.sh
#   RINGMQ_BIN=/path/to/ringmq benches/scrape.sh
#
# Knobs: ROUNDS (20), PHASE (s, 6), EXTRA (partitions besides the load topic's, 200),
# SHARDS (2), PRODUCERS (2), CONSUMERS (0), SCRAPE_EVERY (s, 1), DATA_DIR (./bench-data).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-20}
PHASE=${PHASE:-6}
EXTRA=${EXTRA:-200}
SHARDS=${SHARDS:-2}
PRODUCERS=${PRODUCERS:-2}
CONSUMERS=${CONSUMERS:-0}
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

# One `ringmq bench` run of ROUNDS * 2 * PHASE seconds. A scraper alternates phases of
# PHASE seconds without scraping and with a scrape every SCRAPE_EVERY s; the bench prints
# its produce rate each second and each second is labelled with the phase it fell in (the
# first second of a phase is dropped: it straddles the switch). A round is one phase of
# each; its figure is scraped / alone of the phases' mean rates. Neighbouring phases share
# the machine's slow drifts, so the ratio sees the scrapes, not the drift.
python3 - "$RINGMQ_BIN" "$ADMIN" "$ROUNDS" "$PHASE" "$SCRAPE_EVERY" "$PRODUCERS" "$WORK" "$BROKER_PID" "$CONSUMERS" <<'PY'
import json, re, subprocess, sys, threading, time, urllib.request
binary, admin, rounds, phase, every, producers, work = sys.argv[1:8]
rounds, phase, every = int(rounds), int(phase), float(every)
seconds = rounds * 2 * phase
state = {"scrape": False, "stop": False}
scrapes = open(f"{work}/scrapes.txt", "w")

def scraper():
    while not state["stop"]:
        if state["scrape"]:
            t = time.monotonic()
            body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read()
            scrapes.write(f"{len(body)} {time.monotonic() - t}\n")
            scrapes.flush()
            time.sleep(max(0.0, every - (time.monotonic() - t)))
        else:
            time.sleep(0.01)

thread = threading.Thread(target=scraper)
thread.start()
bench = subprocess.Popen(
    [binary, "bench", "--topic", "load", "--producers", producers, "--consumers", sys.argv[9],
     "--warmup", "2", "--duration", str(seconds)],
    stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
def cpu_times():
    # /proc/stat's first line: user nice system idle iowait irq softirq steal ...
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(f), f[7]

def broker_cpu():
    # The broker's user + system time, in clock ticks (fields 14 and 15 of its stat).
    f = open(f"/proc/{broker_pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

broker_pid = int(sys.argv[8])
last_cpu = cpu_times()
last_broker = broker_cpu()
line_re = re.compile(r"\[\s*(\d+)s measure\] produce\s+(\d+) msg/s")
out = open(f"{work}/results.txt", "w")
for line in bench.stderr:
    m = line_re.search(line)
    if not m:
        if "warm-up]" not in line:
            sys.stderr.write(line)
        continue
    second, rate = int(m.group(1)), int(m.group(2))
    # The share of the machine's CPU time the hypervisor did not take this second.
    now_cpu = cpu_times()
    total, steal = now_cpu[0] - last_cpu[0], now_cpu[1] - last_cpu[1]
    last_cpu = now_cpu
    available = 1 - steal / total if total else 1
    now_broker = broker_cpu()
    ticks, last_broker = now_broker - last_broker, now_broker
    # The second just reported ran under the phase set when the previous one was printed.
    mode = "scraped" if state["scrape"] else "alone"
    out.write(f"{second} {mode} {rate} {available:.4f} {ticks}\n")
    # Phase k covers measured seconds k*phase+1 .. (k+1)*phase; odd rounds start alone,
    # even rounds scraped, so neither mode always comes first.
    k = second // phase
    r, first_half = divmod(k, 2)
    scraped_first = r % 2 == 1
    state["scrape"] = (first_half == 0) == scraped_first
state["stop"] = True
thread.join()
out.close()
scrapes.close()
if bench.wait() != 0:
    sys.exit(f"ringmq bench failed (exit {bench.returncode})")
PY
curl -s "http://$ADMIN/metrics" >"$WORK/last.txt"
# The direct cost: the broker's CPU time (all threads) over 50 scrapes in a row, idle
# otherwise, per scrape.
cpu() { awk '{print $14 + $15}' "/proc/$BROKER_PID/stat"; }
c0=$(cpu)
for _ in $(seq 50); do curl -s -o /dev/null "http://$ADMIN/metrics"; done
c1=$(cpu)
echo "$(( c1 - c0 )) $(getconf CLK_TCK) $SHARDS" >"$WORK/direct.txt"
python3 - "$WORK/results.txt" "$WORK/scrapes.txt" "$WORK/last.txt" "$SCRAPE_EVERY" "$WORK/direct.txt" "$PHASE" <<'PY'
import statistics as st, sys
phase = int(sys.argv[6])
import os
hz = os.sysconf("SC_CLK_TCK")
res = [(int(sec), mode, int(rate), float(av), int(ticks))
       for sec, mode, rate, av, ticks in (l.split() for l in open(sys.argv[1]))]
# Per phase (k = (second - 1) // phase), over its seconds but the first: the mean rate,
# and the rate per second of CPU the hypervisor left the machine (its steal time swings
# from 2 % to 30 % here, and the throughput with it).
phases = {}
for sec, mode, rate, av, ticks in res:
    k = (sec - 1) // phase
    if (sec - 1) % phase == 0:
        continue
    phases.setdefault(k, (mode, []))[1].append((rate, av, ticks))
# Per phase: mean rate, rate per CPU second left by the hypervisor, broker CPU seconds
# per GB produced (1 KiB messages).
means = {k: (mode, st.mean(r for r, _, _ in v), sum(r for r, _, _ in v) / sum(a for _, a, _ in v),
             sum(t for _, _, t in v) / hz / (sum(r for r, _, _ in v) * 1024 / 1e9))
         for k, (mode, v) in phases.items() if v}
rounds, rounds_adj, rounds_cpu = [], [], []
for k in range(0, max(means) + 1, 2):
    if k in means and k + 1 in means and means[k][0] != means[k + 1][0]:
        a, s = sorted([means[k], means[k + 1]])  # "alone" < "scraped"
        rounds.append(s[1] / a[1])
        rounds_adj.append(s[2] / a[2])
        rounds_cpu.append(s[3] / a[3])
alone = [r for _, mode, r, _, _ in res if mode == "alone"]
scraped = [r for _, mode, r, _, _ in res if mode == "scraped"]
steal = [100 * (1 - av) for _, _, _, av, _ in res]
cpu_gb = {m: sum(t for _, mode, r, _, t in res if mode == m) / hz
          / (sum(r for _, mode, r, _, t in res if mode == m) * 1024 / 1e9) for m in ("alone", "scraped")}
scrapes = [l.split() for l in open(sys.argv[2]) if l.strip()]
last = open(sys.argv[3]).read()
samples = sum(1 for l in last.splitlines() if l and not l.startswith("#"))
took = [l for l in last.splitlines() if l.startswith("ringmq_scrape_duration_seconds ")]
print()
print(f"== produce msgs/s at max rate, 1 KiB, one run of {len(res)} s in {len(rounds)} rounds of 2 x {phase} s")
print(f"  alone:             mean {st.mean(alone):.0f}, median {st.median(alone):.0f} over {len(alone)} s"
      f" (stdev of a second {st.pstdev(alone):.0f})")
print(f"  scraped every {sys.argv[4]} s: mean {st.mean(scraped):.0f}, median {st.median(scraped):.0f} over {len(scraped)} s"
      f" (stdev of a second {st.pstdev(scraped):.0f})")
print(f"  scraped / alone per round: {[round(p, 3) for p in rounds]}")
m = st.median(rounds)
print(f"  median of the rounds: {m:.3f} (loss {100 * (1 - m):.1f} %); "
      f"ratio of the means {st.mean(scraped) / st.mean(alone):.3f}")
print(f"  hypervisor steal during the run: {min(steal):.0f} % to {max(steal):.0f} % of the CPU (median {st.median(steal):.0f} %)")
print(f"  per CPU second left by the hypervisor, scraped / alone per round: {[round(p, 3) for p in rounds_adj]}")
ma = st.median(rounds_adj)
print(f"  median of the rounds, steal-adjusted: {ma:.3f} (loss {100 * (1 - ma):.1f} %; target under 2 %)")
print(f"  broker CPU s per GB: alone {cpu_gb['alone']:.3f}, scraped {cpu_gb['scraped']:.3f}; scraped / alone per round: "
      f"{[round(p, 3) for p in rounds_cpu]}")
mc = st.median(rounds_cpu)
print(f"  median of the rounds' CPU per GB, scraped / alone: {mc:.3f} (at max rate, with the CPU the bound,"
      f" a throughput loss of {100 * (1 - 1 / mc):.1f} %)")
print(f"  scrapes during the run: {len(scrapes)}, {st.median(int(b) for b, _ in scrapes) / 1024:.0f} KiB and "
      f"{1000 * st.median(float(t) for _, t in scrapes):.1f} ms each (median, as the scraper saw it)")
print(f"  a scrape: {samples} samples; the broker's own gathering time {took[0].split()[1] if took else '?'} s (last scrape)")
ticks, hz, shards = map(int, open(sys.argv[5]).read().split())
per = ticks / hz / 50
print(f"  direct cost: {1000 * per:.1f} ms of broker CPU per scrape (50 in a row on the idle broker); one scrape"
      f" every {sys.argv[4]} s takes {100 * per / float(sys.argv[4]) / shards:.2f} % of its {shards} cores")
PY
