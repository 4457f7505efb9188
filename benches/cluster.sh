#!/usr/bin/env bash
# Replication cost: rdkafka_performance (librdkafka's own load tool) producing 1 KiB
# messages with acks=all to a topic of replication factor 1 and to one of replication
# factor 3 (min.insync.replicas=2), one partition each, both led by the same node, on a
# 3-node cluster whose nodes talk QUIC and, in the same run, on one whose nodes talk TLS
# over TCP. Both clusters run side by side (the idle one only heartbeats) and the rounds
# interleave transports and topics, so every ratio compares figures taken on the same
# machine state. Reports per transport and topic:
#   * msgs/s and MB/s (median of ROUNDS rounds of MESSAGES messages at max rate),
#   * produce-ack latency p50/p99 at a fixed rate below saturation (rdkafka_performance
#     -l -A: each payload carries its send time, the delivery report computes the
#     latency; linger.ms=0 so the figure is the broker path, not the client's batching),
#   * broker CPU per GB: utime+stime of all three broker processes (every thread) over
#     each round, per 10^9 payload bytes; split leader / followers and by thread (shard,
#     QUIC I/O thread, io_uring workers), with context switches per MB and, for QUIC, UDP
#     datagrams per MB (/proc/net/snmp), and the client's own CPU per GB,
#   * the ratios RF=3 / RF=1 per transport and QUIC / TCP.
#
#   benches/cluster.sh                                  # 3 rounds of 200k messages
#   MESSAGES=500000 ROUNDS=5 benches/cluster.sh
#   RINGMQ_BIN=/path/to/ringmq PERF=/path/to/rdkafka_performance benches/cluster.sh
#   NODE_CPUS="0 0 0" benches/cluster.sh   # every node on core 0 (as `ringmq dev --shards 1`)
#
# Knobs: MESSAGES, ROUNDS, SIZE (1024), LEADER (node leading both topics, 1), NODE_CPUS
# (core of node 1, 2, 3; default "0 1 1": the leader alone on core 0, the followers on
# core 1; the client is not pinned), TRANSPORTS ("quic tcp"), LAT_RATE (msgs/s, 250),
# LAT_SECONDS (5), KEEP (a directory to keep the raw figures in: results.jsonl, one
# JSON line per round, and lat/*.txt, per-message ack latencies in µs), DATA_DIR (where the nodes' data goes; a temporary directory by
# default), PYTHON (one with confluent-kafka, for topic creation).
#
# Builds what is missing: ringmq (release) when RINGMQ_BIN is unset, rdkafka_performance
# from the librdkafka source bundled in the rdkafka-sys crate, a venv with confluent-kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MESSAGES=${MESSAGES:-200000}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1024}
LEADER=${LEADER:-1}
NODE_CPUS=${NODE_CPUS:-"0 1 1"}
TRANSPORTS=${TRANSPORTS:-"quic tcp"}
LAT_RATE=${LAT_RATE:-250}
LAT_SECONDS=${LAT_SECONDS:-5}
if [ -n "${DATA_DIR:-}" ]; then mkdir -p "$DATA_DIR"; WORK=$(mktemp -d "$DATA_DIR/cluster.XXXXXX"); else WORK=$(mktemp -d); fi
NODE_PIDS=()
cleanup() {
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${RINGMQ_BIN:-}" ]; then
  cargo build --release -q -p ringmq
  RINGMQ_BIN=$TARGET/release/ringmq
fi
PERF=${PERF:-$ROOT/target/rdkafka-perf/src/examples/rdkafka_performance}
if [ ! -x "$PERF" ]; then
  echo "== building rdkafka_performance from rdkafka-sys's librdkafka" >&2
  cargo fetch -q
  SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka | sort | tail -1)
  rm -rf "$ROOT/target/rdkafka-perf" && mkdir -p "$ROOT/target/rdkafka-perf"
  cp -r "$SRC" "$ROOT/target/rdkafka-perf/src"
  (cd "$ROOT/target/rdkafka-perf/src" &&
    ./configure --disable-ssl --disable-gssapi --disable-curl --disable-sasl >/dev/null &&
    make -j"$(nproc)" libs >/dev/null && make -C examples rdkafka_performance >/dev/null)
  PERF=$ROOT/target/rdkafka-perf/src/examples/rdkafka_performance
fi
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$ROOT/target/peers-venv/bin/python
  if ! "$PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
    echo "== installing confluent-kafka (pip) into target/peers-venv" >&2
    python3 -m venv "$ROOT/target/peers-venv"
    "$ROOT/target/peers-venv/bin/pip" install -q --disable-pip-version-check confluent-kafka
  fi
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
read -r -a CPUS <<<"$NODE_CPUS"

# --- helpers (Python): topic creation, CPU snapshots, per-round records, the report ---
cat >"$WORK/create.py" <<'PY'
# create.py BOOTSTRAP NAME RF MIN_ISR LEADER: creates NAME-k (k = 0, 1, ...) until one's
# partition 0 is led by LEADER with its full ISR (placement is round robin by topic id);
# prints that topic's name. The others stay, empty.
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic
boot, base, rf, mir, leader = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
a = AdminClient({"bootstrap.servers": boot})
for k in range(12):
    name = f"{base}-{k}"
    for attempt in range(60):   # the controller quorum may still be electing
        try:
            a.create_topics([NewTopic(name, 1, rf, config={"min.insync.replicas": mir})],
                            operation_timeout=10)[name].result()
            break
        except Exception as e:
            if "already exists" in str(e).lower():
                break
            time.sleep(0.5)
    else:
        sys.exit(f"could not create {name}")
    for _ in range(100):
        p = a.list_topics(name, timeout=5).topics[name].partitions.get(0)
        if p is not None and p.leader >= 0 and len(p.isrs) == rf:
            break
        time.sleep(0.1)
    else:
        sys.exit(f"{name}: no leader with a full ISR")
    if p.leader == leader:
        print(name)
        sys.exit(0)
sys.exit(f"no topic {base}-k led by node {leader}")
PY
cat >"$WORK/snap.py" <<'PY'
# snap.py NODE=PID ...: CPU ticks and context switches of every thread of each node,
# by thread class, and the host's UDP datagram counters, as JSON.
import json, os, sys
out = {"nodes": {}}
for arg in sys.argv[1:]:
    node, pid = arg.split("=")
    d = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            status = open(f"/proc/{pid}/task/{tid}/status").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()
        ticks = int(f[11]) + int(f[12])
        cs = sum(int(l.split()[1]) for l in status.splitlines() if "ctxt_switches:" in l)
        cls = ("quic" if comm.startswith("quic") else "shard" if comm.startswith("shard")
               else "iou-wrk" if comm.startswith("iou-wrk") else "other")
        c = d.setdefault(cls, [0, 0])
        c[0] += ticks; c[1] += cs
    # threads that exited since: the process's total minus its live threads
    f = open(f"/proc/{pid}/stat").read()
    f = f[f.rindex(")") + 2:].split()
    total = int(f[11]) + int(f[12])
    d.setdefault("other", [0, 0])[0] += total - sum(v[0] for v in d.values())
    out["nodes"][node] = d
snmp = open("/proc/net/snmp").read().splitlines()
for i, l in enumerate(snmp):
    if l.startswith("Udp:") and i + 1 < len(snmp) and snmp[i + 1].startswith("Udp:"):
        h, v = l.split()[1:], snmp[i + 1].split()[1:]
        out["udp"] = dict(zip(h, map(int, v)))
        break
print(json.dumps(out))
PY
cat >"$WORK/record.py" <<'PY'
# record.py TRANSPORT RF ROUND LEADER BEFORE AFTER PERF_OUT CLIENT_CPU_S REFUSED: one JSON line.
import json, re, sys, os
tr, rf, rnd, leader, b, a, out, ccpu = sys.argv[1:9]
b, a = json.load(open(b)), json.load(open(a))
txt = open(out).read()
m = re.findall(r"(\d+) messages produced \((\d+) bytes\), (\d+) delivered .*? in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s, (\d+) produce failures", txt)
if not m:
    sys.exit("no result line from rdkafka_performance:\n" + txt[-2000:])
produced, nbytes, delivered, ms, rate, mbs, fails = m[-1]
tck = os.sysconf("SC_CLK_TCK")
rec = {"transport": tr, "rf": int(rf), "round": int(rnd), "msgs_s": int(rate), "mb_s": float(mbs),
       "delivered": int(delivered), "bytes": int(nbytes), "failures": int(fails), "ms": int(ms),
       "client_cpu_s": float(ccpu), "nodes": {}}
for node, d in a["nodes"].items():
    rec["nodes"][node] = {c: [(v[0] - b["nodes"][node].get(c, [0, 0])[0]) / tck,
                              v[1] - b["nodes"][node].get(c, [0, 0])[1]] for c, v in d.items()}
rec["udp_out"] = a["udp"].get("OutDatagrams", 0) - b["udp"].get("OutDatagrams", 0)
rec["udp_in"] = a["udp"].get("InDatagrams", 0) - b["udp"].get("InDatagrams", 0)
rec["leader"] = leader
rec["refused"] = int(sys.argv[9])
print(json.dumps(rec))
PY
cat >"$WORK/line.py" <<'PY'
# line.py < one record: the round's one-line summary.
import json, sys
r = json.load(sys.stdin)
cpu = sum(sum(v[0] for v in d.values()) for d in r["nodes"].values())
print(f"  round {r['round']} {r['transport']} RF={r['rf']}: {r['msgs_s']} msgs/s {r['mb_s']} MB/s,"
      f" broker cpu {cpu:.2f} s, client cpu {r['client_cpu_s']:.2f} s, failures {r['failures']},"
      f" replica fetches refused {r['refused']} (x 200 ms pause = {r['refused'] * 0.2 / (r['ms'] / 1000) * 100:.0f}% of the round)")
PY
cat >"$WORK/report.py" <<'PY'
# report.py RESULTS LATDIR MESSAGES ROUNDS LAT_RATE: the table.
import json, sys, statistics as st, os, glob
res = [json.loads(l) for l in open(sys.argv[1])]
latdir, messages, rounds, lat_rate = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
med = lambda xs: st.median(xs) if xs else float("nan")
def lat(tr, rf):
    f = f"{latdir}/{tr}-rf{rf}.txt"
    try:
        v = sorted(int(x) for x in open(f) if x.strip())
    except OSError:
        return None
    if not v:
        return None
    q = lambda p: v[min(len(v) - 1, int(len(v) * p))] / 1000
    return q(0.5), q(0.99), len(v)
rows = {}
for tr in dict.fromkeys(r["transport"] for r in res):
    for rf in (1, 3):
        rs = [r for r in res if r["transport"] == tr and r["rf"] == rf]
        if not rs:
            continue
        def per_gb(r, pick):
            gb = r["bytes"] / 1e9
            return sum(pick(node, d) for node, d in r["nodes"].items()) / gb
        lead = rs[0]["leader"]
        x = {
            "msgs": med([r["msgs_s"] for r in rs]),
            "mbs": med([r["mb_s"] for r in rs]),
            "cpu": med([per_gb(r, lambda n, d: sum(v[0] for v in d.values())) for r in rs]),
            "lead": med([per_gb(r, lambda n, d: sum(v[0] for v in d.values()) if n == lead else 0) for r in rs]),
            "foll": med([per_gb(r, lambda n, d: sum(v[0] for v in d.values()) if n != lead else 0) for r in rs]),
            "quic": med([per_gb(r, lambda n, d: d.get("quic", [0, 0])[0]) for r in rs]),
            "shard": med([per_gb(r, lambda n, d: d.get("shard", [0, 0])[0]) for r in rs]),
            "iou": med([per_gb(r, lambda n, d: d.get("iou-wrk", [0, 0])[0]) for r in rs]),
            "client": med([r["client_cpu_s"] / (r["bytes"] / 1e9) for r in rs]),
            # share of a core busy during the round: the leader, the two followers together
            "lead_core": med([sum(v[0] for v in r["nodes"][lead].values()) / (r["ms"] / 1000) for r in rs]),
            "foll_core": med([sum(sum(v[0] for v in d.values()) for n, d in r["nodes"].items() if n != lead) / (r["ms"] / 1000) for r in rs]),
            "cs": med([sum(sum(v[1] for c, v in d.items() if c in ("shard", "quic")) for d in r["nodes"].values()) / (r["bytes"] / 1e6) for r in rs]),
            "udp": med([r["udp_out"] / (r["bytes"] / 1e6) for r in rs]),
            "fails": sum(r["failures"] for r in rs),
            "refused": med([r["refused"] for r in rs]),
            "stall": med([r["refused"] * 0.2 / (r["ms"] / 1000) for r in rs]),
            "all": [r["msgs_s"] for r in rs],
            "lat": lat(tr, rf),
        }
        rows[(tr, rf)] = x
print()
print(f"== 1 KiB, acks=all, one partition, rdkafka_performance; medians of {rounds} rounds of {messages} messages")
h = ("transport", "RF", "msgs/s", "MB/s", "p50 ms", "p99 ms", "broker s/GB", "leader", "followers",
     "quic thr", "client s/GB", "ctxsw/MB", "udp dg/MB")
fmt = "%-9s %2s %8s %7s %7s %7s %11s %7s %9s %8s %11s %8s %9s"
print(fmt % h)
for (tr, rf), x in rows.items():
    l = x["lat"]
    print(fmt % (tr, rf, f"{x['msgs']:.0f}", f"{x['mbs']:.1f}",
                 f"{l[0]:.2f}" if l else "-", f"{l[1]:.2f}" if l else "-",
                 f"{x['cpu']:.2f}", f"{x['lead']:.2f}", f"{x['foll']:.2f}",
                 f"{x['quic']:.2f}", f"{x['client']:.2f}", f"{x['cs']:.0f}", f"{x['udp']:.0f}"))
print()
print("ratios (same run):")
for tr in dict.fromkeys(t for t, _ in rows):
    a, b = rows.get((tr, 3)), rows.get((tr, 1))
    if a and b:
        tgt = {"quic": " (target >= 0.25, goal 0.5)", "tcp": " (target >= 0.4)"}.get(tr, "")
        print(f"  {tr}: RF3/RF1 msgs/s {a['msgs'] / b['msgs']:.2f}{tgt}; broker CPU per GB RF3/RF1 {a['cpu'] / b['cpu']:.2f}"
              + (f"; ack p50 RF3 - RF1 {a['lat'][0] - b['lat'][0]:+.2f} ms" if a['lat'] and b['lat'] else ""))
if ("quic", 3) in rows and ("tcp", 3) in rows:
    q, t = rows[("quic", 3)], rows[("tcp", 3)]
    print(f"  RF3 QUIC/TCP: msgs/s {q['msgs'] / t['msgs']:.2f}, broker CPU per GB {q['cpu'] / t['cpu']:.2f}, "
          f"follower CPU per GB {q['foll'] / t['foll']:.2f}, leader CPU per GB {q['lead'] / t['lead']:.2f}")
print()
print("replica fetches refused per round (median; each pauses that follower 200 ms, and the leader's high"
      " watermark, which needs every ISR member, with it): " + "; ".join(
      f"{tr} RF{rf} {x['refused']:.0f} (~{x['stall'] * 100:.0f}% of the round)" for (tr, rf), x in rows.items() if rf == 3))
print("per round msgs/s: " + "; ".join(f"{tr} RF{rf} {x['all']}" for (tr, rf), x in rows.items()))
print("cores busy during a round (median): " + "; ".join(
      f"{tr} RF{rf} leader {x['lead_core']:.2f}, followers {x['foll_core']:.2f}" for (tr, rf), x in rows.items()))
bad = [f"{tr} RF{rf}" for (tr, rf), x in rows.items() if x["fails"]]
if bad:
    print("PRODUCE FAILURES in: " + ", ".join(bad))
print(f"latency: rdkafka_performance -l at {lat_rate} msgs/s, linger.ms=0, per-message send-to-delivery-report;"
      " n = " + ", ".join(f"{tr} RF{rf} {x['lat'][2]}" for (tr, rf), x in rows.items() if x["lat"]))
print("CPU per GB: user+system seconds of all threads of the three broker processes per 10^9 payload bytes;"
      " 'quic thr' is the QUIC I/O threads' part of it (all nodes); ctxsw/MB: context switches of the brokers' shard and QUIC threads;"
      " udp dg/MB: datagrams sent on the host per MB (the QUIC packets; other UDP on the host counts too)")
PY

# --- the clusters ---
declare -A BOOT NODEPIDS KPORT
start_cluster() { # transport
  local tr=$1 dir=$WORK/$1 voters="" n
  declare -A kp np cp
  for n in 1 2 3; do kp[$n]=$(free_port); np[$n]=$(free_port); cp[$n]=$(free_port); done
  for n in 1 2 3; do voters+="${voters:+,}$n@127.0.0.1:${cp[$n]}"; done
  mkdir -p "$dir"
  "$RINGMQ_BIN" cluster init-certs --dir "$dir/certs" --nodes 1,2,3 >/dev/null
  local pids="" boot=""
  for n in 1 2 3; do
    mkdir -p "$dir/node$n"
    # The exact command line of each node (RUST_LOG: the replica-fetch module logs each
    # refused replica fetch, after which the follower pauses 200 ms; counted per round):
    RUST_LOG=warn,ringmq_cluster::replicas=debug "$RINGMQ_BIN" serve --node-id "$n" --voters "$voters" --cluster-certs "$dir/certs" \
      --cluster-transport "$tr" --cluster-listen "127.0.0.1:${cp[$n]}" \
      --data-dir "$dir/node$n" --kafka-listen "127.0.0.1:${kp[$n]}" --native-listen "127.0.0.1:${np[$n]}" \
      --cpus "${CPUS[$((n - 1))]}" --auto-create-topics false --log-level warn \
      >"$dir/node$n/serve.log" 2>&1 &
    NODE_PIDS+=($!)
    pids+="$n=$! "
    boot+="${boot:+,}127.0.0.1:${kp[$n]}"
  done
  for n in 1 2 3; do wait_port "${kp[$n]}"; done
  BOOT[$tr]=$boot
  NODEPIDS[$tr]=$pids
  KPORT[$tr]=${kp[1]}
}

# One fixed-count, max-rate produce round; appends its record to results.jsonl.
produce_round() { # transport rf topic round
  local tr=$1 rf=$2 topic=$3 round=$4
  python3 "$WORK/snap.py" ${NODEPIDS[$tr]} >"$WORK/before.json"
  local r0 r1
  r0=$(cat "$WORK/$tr"/node*/serve.log | grep -c "replica fetch refused" || true)
  # The exact client command line (the same for every transport and topic):
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("CPU %.3f" % (r.ru_utime + r.ru_stime), flush=True)' \
    "$PERF" -P -t "$topic" -p 0 -b "${BOOT[$tr]}" -s "$SIZE" -c "$MESSAGES" -a -1 \
    -X linger.ms=5 -X batch.size=1000000 -X queue.buffering.max.messages=2000000 >"$WORK/perf.out" 2>&1
  python3 "$WORK/snap.py" ${NODEPIDS[$tr]} >"$WORK/after.json"
  r1=$(cat "$WORK/$tr"/node*/serve.log | grep -c "replica fetch refused" || true)
  local ccpu
  ccpu=$(sed -n 's/^CPU //p' "$WORK/perf.out")
  python3 "$WORK/record.py" "$tr" "$rf" "$round" "$LEADER" "$WORK/before.json" "$WORK/after.json" \
    "$WORK/perf.out" "$ccpu" "$((r1 - r0))" >>"$WORK/results.jsonl"
  tail -1 "$WORK/results.jsonl" | python3 "$WORK/line.py" >&2
}

# Produce-ack latency at a fixed rate below saturation.
latency_run() { # transport rf topic
  local tr=$1 rf=$2 topic=$3 r0
  r0=$(cat "$WORK/$tr"/node*/serve.log | grep -c "replica fetch refused" || true)
  "$PERF" -P -t "$topic" -p 0 -b "${BOOT[$tr]}" -s "$SIZE" -c $((LAT_RATE * LAT_SECONDS)) -r "$LAT_RATE" \
    -l -A "$WORK/lat/$tr-rf$rf.txt" -a -1 -X linger.ms=0 >"$WORK/lat/$tr-rf$rf.out" 2>&1
  echo "  latency $tr RF=$rf: $(grep 'messages produced' "$WORK/lat/$tr-rf$rf.out" | tail -1 | sed 's/^% //'); replica fetches refused $(($(cat "$WORK/$tr"/node*/serve.log | grep -c "replica fetch refused" || true) - r0))" >&2
}

mkdir -p "$WORK/lat"
declare -A T1 T3
for tr in $TRANSPORTS; do
  start_cluster "$tr"
  echo "== $tr cluster: ${BOOT[$tr]} (node cores: $NODE_CPUS; leader node $LEADER)" >&2
done
for tr in $TRANSPORTS; do
  T1[$tr]=$("$PYTHON" "$WORK/create.py" "${BOOT[$tr]}" rf1 1 1 "$LEADER")
  T3[$tr]=$("$PYTHON" "$WORK/create.py" "${BOOT[$tr]}" rf3 3 2 "$LEADER")
  echo "  $tr: topics ${T1[$tr]} (RF=1) and ${T3[$tr]} (RF=3, min.insync.replicas=2), both led by node $LEADER" >&2
  # warm-up: connections, first segment, follower fetch sessions
  for t in "${T1[$tr]}" "${T3[$tr]}"; do
    "$PERF" -P -t "$t" -p 0 -b "${BOOT[$tr]}" -s "$SIZE" -c 20000 -a -1 -X linger.ms=5 >/dev/null 2>&1
  done
done
# Latency first, on quiet disks.
for tr in $TRANSPORTS; do
  latency_run "$tr" 1 "${T1[$tr]}"
  latency_run "$tr" 3 "${T3[$tr]}"
done
for round in $(seq "$ROUNDS"); do
  for tr in $TRANSPORTS; do
    # alternate which topic goes first, so neither always follows the other's disk work
    if [ $((round % 2)) = 1 ]; then order="1 3"; else order="3 1"; fi
    for rf in $order; do
      if [ "$rf" = 1 ]; then t=${T1[$tr]}; else t=${T3[$tr]}; fi
      produce_round "$tr" "$rf" "$t" "$round"
    done
  done
done
echo "== the clusters after the run (an ISR that shrank during a round would show here)" >&2
for tr in $TRANSPORTS; do
  echo "-- $tr" >&2
  "$RINGMQ_BIN" cluster status --kafka "127.0.0.1:${KPORT[$tr]}" | grep -E "^(TOPIC|${T1[$tr]}|${T3[$tr]}) " >&2 || true
done
python3 "$WORK/report.py" "$WORK/results.jsonl" "$WORK/lat" "$MESSAGES" "$ROUNDS" "$LAT_RATE"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$WORK/results.jsonl" "$WORK/lat" "$KEEP/" && for tr in $TRANSPORTS; do for n in 1 2 3; do cp "$WORK/$tr/node$n/serve.log" "$KEEP/$tr-node$n.log"; done; done; fi
echo "node cores: $NODE_CPUS (node 1, 2, 3), leader node $LEADER, client not pinned; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
