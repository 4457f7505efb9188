#!/usr/bin/env python3
"""The fault suite: three real `ringmq serve` nodes under a nemesis, checked the way
Jepsen's queue checker does.

Runs inside a private network namespace of its own (tests/cluster_faults.rs starts it
as `unshare -n` or `unshare -Urn`); it refuses to run where other interfaces than `lo`
exist, since it writes nft rules:

    unshare -n .venv/bin/python tests/cluster/faults.py --binary target/release/ringmq

Nodes 1, 2, 3 listen on 127.0.0.11, .12, .13 (Kafka 9092, cluster 9093, native 9094),
one shard each. A topic with 3 partitions, replication factor 3 and
min.insync.replicas=2 takes unique values from two idempotent acks=all producers of
confluent-kafka (librdkafka) and one of the native client (`ringmq produce --acks all
--report`, which follows partition leaders) while a consumer reads every partition from
offset 0 with assign(). For RINGMQ_FAULT_SECONDS (default 120), and until each kind has run and
partition leaders have been killed at least 10 times, a nemesis injects one fault every
2-4 s, healing each before the next:

    kill-leader           kill -9 a partition leader (or the controller leader),
                          restart after 1-3 s
    stop-follower         SIGSTOP a follower 4-6 s (longer than the lag time)
    stop-leader           SIGSTOP a partition leader 4-6 s
    partition-leader      nft: a partition leader cut off from both other nodes
    partition-follower    nft: a follower cut off from both other nodes
    partition-one-way     nft: leader -> follower or follower -> leader dropped
    partition-controller  nft: a partition leader cut off from the controller leader only
    lose-tail             kill -9 a node, cut bytes off the end of its partitions'
                          active segments (its unsynced tail lost), restart

Clients (127.0.0.1) always reach every node; partitions cut node-to-node traffic only.
Then everything heals, the producers flush, the ISR must be full again within 10 s of
the heal, an acks=all write to each partition must succeed, a fresh consumer reads every
partition from 0 to its high watermark, the nodes stop (SIGTERM) and `ringmq log
--batches` of the three replicas must agree up to the high watermark. Violations, with
Jepsen's names: lost-write, inconsistent-offsets, duplicate, unseen (a consumed record
that is not at its offset in the final log: a read past the high watermark),
nonmonotonic-poll, poll-skip, divergence, plus node-crashed, restart-failed,
isr-recovery, liveness. Every operation and fault goes to a history file with a
timestamp; on failure its tail and the lines of each violation's value are printed.

Options: --binary PATH (required), --seconds N (else RINGMQ_FAULT_SECONDS), --seed N
(else RINGMQ_FAULT_SEED, else random; printed), --keep (keep the data directory),
--transport quic|tcp (the cluster transport, quic by default; both carry the node's
address on their sockets, which the nft rules match).
"""

import argparse
import glob
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

NODES = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}
KAFKA_PORT, CLUSTER_PORT, NATIVE_PORT = 9092, 9093, 9094
BOOTSTRAP = ",".join(f"{a}:{KAFKA_PORT}" for a in NODES.values())
PARTITIONS = 3
SESSION_TIMEOUT_MS = 3000
LAG_TIME_MAX_MS = 3000
# Messages retry this long before the producer gives up: longer than any fault.
MESSAGE_TIMEOUT_MS = 60000
PRODUCERS = 2  # librdkafka (confluent-kafka)
NATIVE_PRODUCERS = 1  # `ringmq produce`, the native client
RATE_PER_PRODUCER = 100  # values per second
LEADER_KILLS_MIN = 10
ISR_RECOVERY_MAX_S = 10.0
LOSE_TAIL_BYTES_MAX = 64 * 1024

START = time.monotonic()
# librdkafka's own log lines (connection failures are routine here) go to a file.
CLIENT_LOG = logging.getLogger("librdkafka")


def now():
    return time.monotonic() - START


class History:
    """Every operation and fault, one line each: seconds since the start, the wall clock
    (UTC, as in the nodes' logs), who, what."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "w", buffering=1)
        self.lock = threading.Lock()

    def log(self, who, what, **kw):
        fields = " ".join(f"{k}={v}" for k, v in kw.items())
        wall = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        with self.lock:
            self.file.write(f"{now():9.3f} {wall} {who:<10} {what} {fields}\n")

    def tail(self, n):
        with self.lock:
            self.file.flush()
        with open(self.path) as f:
            return f.readlines()[-n:]

    def grep(self, needle, n):
        with self.lock:
            self.file.flush()
        out = []
        with open(self.path) as f:
            for line in f:
                if needle in line.split():
                    out.append(line)
                    if len(out) >= n:
                        break
        return out


class Violations:
    def __init__(self):
        self.items = []  # (kind, text, value or None)
        self.lock = threading.Lock()

    def add(self, kind, text, value=None):
        with self.lock:
            self.items.append((kind, text, value))

    def counts(self):
        c = {}
        for kind, _, _ in self.items:
            c[kind] = c.get(kind, 0) + 1
        return c


# --- the nodes ------------------------------------------------------------------------


class Node:
    def __init__(self, nid, binary, root, certs, transport, history):
        self.id = nid
        self.addr = NODES[nid]
        self.binary = binary
        self.data = os.path.join(root, f"node-{nid}")
        self.log_path = os.path.join(root, f"node-{nid}.log")
        self.certs = certs
        self.transport = transport
        self.history = history
        self.proc = None
        self.paused = False
        self.expect_exit = False

    def args(self):
        voters = ",".join(f"{i}@{a}:{CLUSTER_PORT}" for i, a in NODES.items())
        a = [
            self.binary, "serve", "--data-dir", self.data, "--node-id", str(self.id),
            "--voters", voters, "--cluster-certs", self.certs,
            "--kafka-listen", f"{self.addr}:{KAFKA_PORT}",
            "--native-listen", f"{self.addr}:{NATIVE_PORT}",
            "--admin-listen", "off",
            "--shards", "1",
            "--node-session-timeout-ms", str(SESSION_TIMEOUT_MS),
            "--replica-lag-time-max-ms", str(LAG_TIME_MAX_MS),
        ]
        if self.transport:
            a += ["--cluster-transport", self.transport]
        return a

    def start(self):
        assert not self.alive()
        log = open(self.log_path, "a")
        log.write(f"==== {now():.3f} start node {self.id}\n")
        log.flush()
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        self.paused = False
        self.expect_exit = False
        self.history.log("nemesis", "start", node=self.id, pid=self.proc.pid)

    def wait_ready(self, timeout=30.0):
        """True once the Kafka listener accepts; False if the process exits or the
        time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                socket.create_connection((self.addr, KAFKA_PORT), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        self.expect_exit = True
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.paused = False

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout=30.0):
        """SIGTERM and wait; the exit status, or None if it had to be killed."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.expect_exit = True
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.readlines()[-n:]
        except OSError:
            return []


def nft(script):
    r = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"nft failed: {r.stderr.strip()}\n{script}")


def nft_drop(pairs):
    """Drops node-to-node packets from a to b for each (a, b) of node ids."""
    rules = "".join(
        f"add rule inet faults out ip saddr {NODES[a]} ip daddr {NODES[b]} drop\n"
        for a, b in pairs
    )
    nft(rules)


def nft_heal():
    nft("flush chain inet faults out\n")


def in_private_namespace():
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip() for line in out.splitlines() if ":" in line]
    return names == ["lo"]


# --- metadata -------------------------------------------------------------------------


class Cluster:
    """Admin clients, one per node, for metadata as each node sees it."""

    def __init__(self, topic):
        from confluent_kafka.admin import AdminClient

        self.topic = topic
        self.admins = {
            nid: AdminClient({"bootstrap.servers": f"{a}:{KAFKA_PORT}",
                              "socket.timeout.ms": 2000,
                              "reconnect.backoff.max.ms": 500,
                              "logger": CLIENT_LOG})
            for nid, a in NODES.items()
        }

    def view(self, nid, timeout=2.0):
        """{partition: (leader, replicas, isr)} and the controller id, as node nid
        answers; None if it does not."""
        try:
            md = self.admins[nid].list_topics(self.topic, timeout=timeout)
        except Exception:
            return None
        t = md.topics.get(self.topic)
        if t is None or t.error is not None:
            return None
        parts = {p: (pm.leader, list(pm.replicas), list(pm.isrs))
                 for p, pm in t.partitions.items()}
        return parts, md.controller_id

    def any_view(self, nodes):
        order = list(nodes)
        random.shuffle(order)
        for n in order:
            if n.alive() and not n.paused:
                v = self.view(n.id)
                if v is not None:
                    return v
        return None


# --- clients --------------------------------------------------------------------------


class Producer(threading.Thread):
    """Sends unique values `p<i>-<seq>` to partition seq % PARTITIONS, idempotent with
    acks=all, at a steady rate; records each value's outcome."""

    def __init__(self, idx, topic, history, state):
        super().__init__(name=f"producer-{idx}", daemon=True)
        self.idx = idx
        self.who = f"producer-{idx}"
        self.topic = topic
        self.history = history
        self.state = state
        self.stop_event = threading.Event()
        self.fatal = None
        self.sent = []
        self.fatal_errors = []

    def make(self):
        from confluent_kafka import Producer as P

        def on_error(err):
            if err.fatal():
                self.fatal = err
                self.history.log(self.who, "fatal", error=err.name(), text=repr(err.str()))

        return P({
            "bootstrap.servers": BOOTSTRAP,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            "request.timeout.ms": 5000,
            "socket.timeout.ms": 5000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "topic.metadata.refresh.interval.ms": 2000,
            "error_cb": on_error,
            "logger": CLIENT_LOG,
        })

    def on_delivery(self, err, msg):
        value = msg.value().decode()
        if err is None:
            self.state.acked[value] = (msg.partition(), msg.offset())
            self.state.ack_times.append(now())
            self.history.log(self.who, "ok", value=value, partition=msg.partition(),
                             offset=msg.offset())
        else:
            self.state.failed[value] = err.name()
            self.history.log(self.who, "fail", value=value, error=err.name())

    def run(self):
        p = self.make()
        seq = 0
        period = 1.0 / RATE_PER_PRODUCER
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            if self.fatal is not None:
                # An idempotent producer that hit a fatal error sends nothing more:
                # what it still holds is in doubt; a new producer takes over.
                self.fatal_errors.append(self.fatal.name())
                try:
                    p.flush(5)
                except Exception as e:
                    self.history.log(self.who, "flush-error", error=repr(e))
                self.history.log(self.who, "new-producer", after=self.fatal.name())
                self.fatal = None
                p = self.make()
            value = f"p{self.idx}-{seq}"
            part = seq % PARTITIONS
            self.state.invoked[value] = part
            self.history.log(self.who, "invoke", value=value, partition=part)
            while True:
                try:
                    p.produce(self.topic, value=value.encode(), partition=part,
                              on_delivery=self.on_delivery)
                    break
                except BufferError:
                    try:
                        p.poll(0.05)
                    except Exception:
                        pass
                except Exception as e:  # a fatal producer refuses to produce
                    self.history.log(self.who, "produce-error", value=value, error=repr(e))
                    self.state.failed[value] = "produce-refused"
                    if self.fatal is None and e.args and hasattr(e.args[0], "name"):
                        self.fatal = e.args[0]
                    break
            seq += 1
            try:
                p.poll(0)
            except BaseException as e:  # poll raises the fatal error too
                self.history.log(self.who, "poll-error", error=repr(e))
                if self.fatal is None and e.args and hasattr(e.args[0], "name"):
                    self.fatal = e.args[0]
            next_at = pace(next_at, period)
        try:
            left = p.flush(MESSAGE_TIMEOUT_MS / 1000 + 10)
        except BaseException as e:  # a fatal error is raised as a bare KafkaError
            left = repr(e)
            self.fatal_errors.append(repr(e))
        self.history.log(self.who, "flushed", left=left)


class NativeProducer(threading.Thread):
    """`ringmq produce --acks all --report`: the native client (idempotent, sending each
    partition's batches to its leader and following it when it moves) given unique values
    `n<i>-<seq>` at a steady rate on its standard input; each value's outcome comes from
    the report it prints."""

    def __init__(self, idx, topic, history, state, binary, log_path):
        super().__init__(name=f"native-{idx}", daemon=True)
        self.idx = idx
        self.who = f"native-{idx}"
        self.topic = topic
        self.history = history
        self.state = state
        self.binary = binary
        self.log_path = log_path
        self.stop_event = threading.Event()
        self.fatal_errors = []
        self.values = []

    def read_reports(self, out):
        import json

        for line in out:
            try:
                r = json.loads(line)
                value = self.values[r["line"]]
            except (ValueError, KeyError, IndexError) as e:
                self.history.log(self.who, "bad-report", line=repr(line), error=repr(e))
                continue
            if "error" in r:
                self.state.failed[value] = r["error"]
                self.history.log(self.who, "fail", value=value, error=repr(r["error"]))
            else:
                self.state.acked[value] = (r["partition"], r["offset"])
                self.state.ack_times.append(now())
                self.history.log(self.who, "ok", value=value, partition=r["partition"],
                                 offset=r["offset"])

    def run(self):
        natives = ",".join(f"{a}:{NATIVE_PORT}" for a in NODES.values())
        err = open(self.log_path, "a")
        proc = subprocess.Popen(
            [self.binary, "produce", self.topic, "--acks", "all", "--report",
             "--brokers", natives],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        reports = threading.Thread(target=self.read_reports, args=(proc.stdout,), daemon=True)
        reports.start()
        seq = 0
        period = 1.0 / RATE_PER_PRODUCER
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            value = f"n{self.idx}-{seq}"
            self.values.append(value)
            self.state.invoked[value] = None  # the client picks the partition
            self.history.log(self.who, "invoke", value=value)
            try:
                proc.stdin.write(f"{value}\n".encode())
                proc.stdin.flush()
            except OSError as e:
                self.history.log(self.who, "write-error", error=repr(e))
                self.fatal_errors.append(f"ringmq produce gone: {e!r}")
                break
            seq += 1
            next_at = pace(next_at, period)
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            code = proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            self.fatal_errors.append("ringmq produce did not finish within 150 s")
        reports.join(10)
        err.close()
        # Exit status 1 only says some record failed (each is in the report).
        if code not in (0, 1):
            self.fatal_errors.append(f"ringmq produce exited with {code}")
        self.history.log(self.who, "flushed", code=code)


def pace(next_at, period):
    """Sleeps until `period` after `next_at` (a steady rate); returns that time, or now
    when behind, so a stall is not made up with a burst."""
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
        return next_at
    return time.monotonic()


class State:
    def __init__(self):
        self.invoked = {}  # value -> partition
        self.acked = {}    # value -> (partition, offset)
        self.failed = {}   # value -> error name
        self.ack_times = []  # seconds since the start of each acknowledgement


class Monitor(threading.Thread):
    """Logs each change of leaders, ISRs and the controller, as some node answers, once
    a second: what the history needs to explain an outage."""

    def __init__(self, cluster, nodes, history):
        super().__init__(name="monitor", daemon=True)
        self.cluster = cluster
        self.nodes = nodes
        self.history = history
        self.stop_event = threading.Event()

    def run(self):
        last = None
        while not self.stop_event.wait(1.0):
            v = self.cluster.any_view(self.nodes)
            if v is None:
                continue
            parts, controller = v
            seen = (controller, tuple((p, l, tuple(i)) for p, (l, _, i) in sorted(parts.items())))
            if seen != last:
                last = seen
                self.history.log("monitor", "metadata", controller=controller,
                                 partitions=";".join(f"{p}:leader={l},isr={list(i)}"
                                                     for p, l, i in seen[1]).replace(" ", ""))


class Reader(threading.Thread):
    """Reads every partition from offset 0 with assign(), checking that offsets go up by
    one within each partition (no compaction or transactions here)."""

    def __init__(self, topic, history, violations):
        super().__init__(name="consumer", daemon=True)
        self.topic = topic
        self.history = history
        self.violations = violations
        self.stop_event = threading.Event()
        self.reads = []  # (partition, offset, value)
        self.next = {p: 0 for p in range(PARTITIONS)}
        self.resets = 0

    def run(self):
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        c = Consumer({
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "faults-unused",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 100,
            "socket.timeout.ms": 5000,
            "topic.metadata.refresh.interval.ms": 2000,
            "reconnect.backoff.max.ms": 1000,
            "logger": CLIENT_LOG,
        })
        c.assign([TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)])
        while not self.stop_event.is_set():
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                err = msg.error()
                self.history.log("consumer", "error", error=err.name(),
                                 partition=msg.partition(), text=repr(err.str()))
                if err.code() == KafkaError._AUTO_OFFSET_RESET or \
                        err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
                    # Out of range: carry on from where this consumer was (a seek).
                    self.resets += 1
                    c.assign([TopicPartition(self.topic, p, o) for p, o in self.next.items()])
                    self.history.log("consumer", "seek", positions=dict(self.next))
                continue
            p, o, v = msg.partition(), msg.offset(), msg.value().decode()
            self.history.log("consumer", "read", value=v, partition=p, offset=o)
            want = self.next[p]
            if o < want:
                self.violations.add("nonmonotonic-poll",
                                    f"partition {p}: offset {o} after {want - 1} ({v})", v)
            elif o > want:
                self.violations.add("poll-skip",
                                    f"partition {p}: offset {o} after {want - 1}, "
                                    f"{o - want} skipped ({v})", v)
            self.next[p] = o + 1
            self.reads.append((p, o, v))
        c.close()


def read_all(topic, history):
    """A fresh consumer reads every partition from 0 to its high watermark:
    {partition: [values by offset]}, the high watermarks, and gaps seen."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "faults-final",
                  "enable.auto.commit": False, "auto.offset.reset": "error",
                  "logger": CLIENT_LOG})
    highs = {}
    for p in range(PARTITIONS):
        # A partition may still be electing a leader: ask again for up to a minute.
        deadline = time.monotonic() + 60
        while True:
            try:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                break
            except Exception as e:
                history.log("checker", "watermarks-error", partition=p, error=repr(e))
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        if low != 0:
            raise RuntimeError(f"partition {p} starts at {low}, not 0")
        highs[p] = high
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    logs = {p: [] for p in range(PARTITIONS)}
    gaps = []
    deadline = time.monotonic() + 120
    while any(len(logs[p]) < highs[p] for p in logs) and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        p, o = msg.partition(), msg.offset()
        if o != len(logs[p]):
            gaps.append((p, len(logs[p]), o))
        if o >= highs[p]:
            continue
        logs[p].append(msg.value().decode())
    c.close()
    history.log("checker", "final-read", highs=highs,
                read={p: len(v) for p, v in logs.items()})
    return logs, highs, gaps


# --- the nemesis ----------------------------------------------------------------------

KINDS = ["kill-leader", "stop-follower", "stop-leader", "partition-leader",
         "partition-follower", "partition-one-way", "partition-controller", "lose-tail"]
OTHERS = KINDS[1:]


class Nemesis(threading.Thread):
    def __init__(self, nodes, cluster, seconds, rng, history, violations, topic):
        super().__init__(name="nemesis", daemon=True)
        self.nodes = nodes
        self.cluster = cluster
        self.seconds = seconds
        self.rng = rng
        self.history = history
        self.violations = violations
        self.topic = topic
        self.counts = {k: 0 for k in KINDS}
        self.error = None

    def node(self, nid):
        return self.nodes[nid - 1]

    def check_crashes(self):
        for n in self.nodes:
            if n.proc is not None and not n.alive() and not n.expect_exit:
                code = n.proc.returncode
                self.violations.add("node-crashed",
                                    f"node {n.id} exited by itself with {code}; "
                                    f"log {n.log_path}")
                self.history.log("nemesis", "crashed", node=n.id, code=code)
                n.expect_exit = True
                self.restart(n)

    def restart(self, n):
        n.start()
        if not n.wait_ready():
            self.violations.add("restart-failed",
                                f"node {n.id} did not listen within 30 s of its restart; "
                                f"log {n.log_path}")
            self.history.log("nemesis", "restart-failed", node=n.id)
            return False
        self.history.log("nemesis", "ready", node=n.id)
        return True

    def pick(self):
        """(partition, leader, a follower, controller) from some node's metadata."""
        for _ in range(20):
            v = self.cluster.any_view(self.nodes)
            if v is not None:
                parts, controller = v
                p = self.rng.randrange(PARTITIONS)
                leader, replicas, _ = parts[p]
                if leader in NODES:
                    followers = [r for r in replicas if r != leader]
                    return p, leader, self.rng.choice(followers), controller
            time.sleep(0.25)
        return None

    def wait_full_isr(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.cluster.any_view(self.nodes)
            if v is not None and all(len(isr) == 3 for _, _, isr in v[0].values()):
                return True
            time.sleep(0.25)
        return False

    def run(self):
        try:
            self.loop()
        except Exception as e:  # a harness failure: reported, not hidden
            import traceback
            self.error = traceback.format_exc()
            self.history.log("nemesis", "harness-error", error=repr(e))

    def loop(self):
        end = time.monotonic() + self.seconds
        others = []
        turn = 0
        while True:
            left = end - time.monotonic()
            done_kinds = all(self.counts[k] > 0 for k in KINDS)
            kills = self.counts["kill-leader"]
            if left <= 0 and done_kinds and kills >= LEADER_KILLS_MIN:
                break
            if left <= 0 and time.monotonic() > end + 300:
                raise RuntimeError(f"faults not all injected 300 s past the end: {self.counts}")
            self.check_crashes()
            # Every other fault kills a leader; only kills once too few are left for
            # the minimum (a kill and the pause after it take about 5 s).
            behind = kills < LEADER_KILLS_MIN and (LEADER_KILLS_MIN - kills) * 5 > left
            if turn % 2 == 0 or behind:
                kind = "kill-leader"
            else:
                if not others:
                    others = list(OTHERS)
                    self.rng.shuffle(others)
                kind = others.pop()
            turn += 1
            if not self.inject(kind) and kind != "kill-leader":
                others.append(kind)  # not done now: next time
            self.check_crashes()
            time.sleep(self.rng.uniform(2.0, 4.0))

    def inject(self, kind):
        rng = self.rng
        target = self.pick()
        if target is None:
            self.history.log("nemesis", "no-metadata", kind=kind)
            return False
        p, leader, follower, controller = target
        h = self.history.log
        if kind == "kill-leader":
            # Now and then the controller leader instead.
            victim = controller if (controller in NODES and rng.random() < 0.25) else leader
            n = self.node(victim)
            h("nemesis", "fault", kind=kind, node=victim, partition=p, leader=leader,
              controller=controller)
            n.kill9()
            time.sleep(rng.uniform(1.0, 3.0))
            self.restart(n)
        elif kind in ("stop-follower", "stop-leader"):
            victim = follower if kind == "stop-follower" else leader
            n = self.node(victim)
            pause = rng.uniform(4.0, 6.0)
            h("nemesis", "fault", kind=kind, node=victim, partition=p, leader=leader,
              seconds=f"{pause:.1f}")
            n.pause()
            time.sleep(pause)
            n.resume()
            h("nemesis", "heal", kind=kind, node=victim)
        elif kind.startswith("partition-"):
            others = [i for i in NODES if i != leader]
            if kind == "partition-leader":
                pairs = [(leader, o) for o in others] + [(o, leader) for o in others]
                what = f"{leader} | {others}"
            elif kind == "partition-follower":
                rest = [i for i in NODES if i != follower]
                pairs = [(follower, o) for o in rest] + [(o, follower) for o in rest]
                what = f"{follower} | {rest}"
            elif kind == "partition-one-way":
                a, b = (leader, follower) if rng.random() < 0.5 else (follower, leader)
                pairs = [(a, b)]
                what = f"{a} -> {b} dropped"
            else:
                c = controller
                if c not in NODES or c == leader:
                    c = follower  # the leader is the controller: cut it from a voter
                pairs = [(leader, c), (c, leader)]
                what = f"{leader} | {c} (controller {controller})"
            hold = rng.uniform(4.0, 6.0)
            h("nemesis", "fault", kind=kind, partition=p, leader=leader, cut=repr(what),
              seconds=f"{hold:.1f}")
            nft_drop(pairs)
            time.sleep(hold)
            nft_heal()
            h("nemesis", "heal", kind=kind)
        elif kind == "lose-tail":
            # One replica loses its disk's tail: only when the other two hold everything.
            if not self.wait_full_isr(15):
                h("nemesis", "skip", kind=kind, why="ISR not full")
                return False
            victim = rng.choice(list(NODES))
            n = self.node(victim)
            n.kill9()
            cuts = []
            for part_dir in partition_dirs(n.data, self.topic):
                segs = sorted(glob.glob(os.path.join(part_dir, "*.log")))
                if not segs:
                    continue
                seg = segs[-1]
                size = os.path.getsize(seg)
                if size == 0:
                    continue
                cut = rng.randint(1, min(size, LOSE_TAIL_BYTES_MAX))
                with open(seg, "r+b") as f:
                    f.truncate(size - cut)
                cuts.append(f"{os.path.basename(part_dir)}/{os.path.basename(seg)}:-{cut}")
            h("nemesis", "fault", kind=kind, node=victim, partition=p, leader=leader,
              cut=",".join(cuts))
            time.sleep(rng.uniform(1.0, 3.0))
            self.restart(n)
        self.counts[kind] += 1
        return True

    def heal(self):
        nft_heal()
        for n in self.nodes:
            if n.paused:
                n.resume()
        self.check_crashes()
        for n in self.nodes:
            if not n.alive():
                self.restart(n)
        for n in self.nodes:
            n.wait_ready()
        self.history.log("nemesis", "healed")


def partition_dirs(data_dir, topic):
    """The directories of the topic's partitions under a node's data directory."""
    found = []
    for root, dirs, _ in os.walk(data_dir):
        if os.path.basename(root) == topic:
            for d in dirs:
                if d.isdigit():
                    found.append(os.path.join(root, d))
            dirs[:] = []
    return sorted(found)


def batches(binary, part_dir):
    r = subprocess.run([binary, "log", part_dir, "--batches"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ringmq log {part_dir}: {r.stderr.strip()}")
    out = []
    for line in r.stdout.splitlines():
        f = line.split()
        if f and f[0] == "batch":
            out.append((int(f[1]), int(f[2]), f[3], f[4]))
    return out


# --- the run --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("RINGMQ_FAULT_SECONDS", "120")))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--transport", default=None)
    args = ap.parse_args()
    seed = args.seed
    if seed is None:
        seed = int(os.environ.get("RINGMQ_FAULT_SEED", "0")) or random.randrange(1, 1 << 31)
    rng = random.Random(seed)
    random.seed(seed ^ 0x5EED)

    if not in_private_namespace():
        print("faults.py writes nft rules: run it in a network namespace of its own "
              "(unshare -n, or unshare -Urn without root)", file=sys.stderr)
        sys.exit(2)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    nft("add table inet faults\n"
        "add chain inet faults out { type filter hook output priority 0; policy accept; }\n")

    root = tempfile.mkdtemp(prefix="ringmq-faults-")
    handler = logging.FileHandler(os.path.join(root, "clients.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    CLIENT_LOG.addHandler(handler)
    CLIENT_LOG.setLevel(logging.INFO)
    CLIENT_LOG.propagate = False
    history = History(os.path.join(root, "history.txt"))
    violations = Violations()
    print(f"faults: seed {seed}, {args.seconds:.0f} s of faults, directory {root}", flush=True)
    history.log("checker", "begin", seed=seed, seconds=args.seconds)

    certs = os.path.join(root, "certs")
    subprocess.run([args.binary, "cluster", "init-certs", "--dir", certs, "--nodes", "1,2,3",
                    "--hosts", ",".join(list(NODES.values()) + ["localhost"])],
                   check=True, capture_output=True)
    nodes = [Node(i, args.binary, root, certs, args.transport, history) for i in NODES]
    ok = False
    try:
        ok = run(args, rng, root, nodes, history, violations, seed)
    finally:
        for n in nodes:
            if n.alive():
                n.resume()
                n.proc.kill()
                n.proc.wait()
    if ok and not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


def run(args, rng, root, nodes, history, violations, seed):
    from confluent_kafka.admin import AdminClient, NewTopic

    for n in nodes:
        n.start()
    for n in nodes:
        if not n.wait_ready(60):
            print(f"node {n.id} did not start; its log:\n{''.join(n.log_tail())}")
            return False
    topic = f"faults-{seed}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "logger": CLIENT_LOG})
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS,
                                          replication_factor=3,
                                          config={"min.insync.replicas": "2"})]
                                )[topic].result(timeout=15)
            break
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" in str(e):
                break
            if time.monotonic() > deadline:
                print(f"creating {topic}: {e}")
                return False
            time.sleep(1)
    history.log("checker", "topic", topic=topic)
    cluster = Cluster(topic)
    nemesis = Nemesis(nodes, cluster, args.seconds, rng, history, violations, topic)
    if not nemesis.wait_full_isr(60):
        print("the topic's ISR was never full")
        return False

    state = State()
    producers = [Producer(i, topic, history, state) for i in range(1, PRODUCERS + 1)]
    producers += [NativeProducer(i, topic, history, state, args.binary,
                                 os.path.join(root, f"native-{i}.log"))
                  for i in range(1, NATIVE_PRODUCERS + 1)]
    reader = Reader(topic, history, violations)
    monitor = Monitor(cluster, nodes, history)
    for t in producers + [reader, monitor]:
        t.start()
    time.sleep(2)
    nemesis.start()
    nemesis.join()
    if nemesis.error:
        # Still heal and check what happened: the run is failed either way.
        print(f"the nemesis failed:\n{nemesis.error}")
        violations.add("harness-error", "the nemesis failed (above)")

    # Heal, then measure how long the ISR takes to be full on every node's view.
    nemesis.heal()
    healed_at = time.monotonic()
    isr_full = {}

    def watch_isr():
        while time.monotonic() < healed_at + 90:
            views = [cluster.view(n.id) for n in nodes]
            if all(v is not None and all(len(isr) == 3 and leader in NODES
                                         for leader, _, isr in v[0].values())
                   for v in views):
                isr_full["at"] = time.monotonic() - healed_at
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_isr, daemon=True)
    watcher.start()
    for t in producers:
        t.stop_event.set()
    for t in producers:
        t.join()
    watcher.join()
    monitor.stop_event.set()
    isr_s = isr_full.get("at")
    history.log("checker", "isr-full", seconds=isr_s)
    if isr_s is None:
        violations.add("isr-recovery", "the ISR was not full on every node 90 s after the heal")
    elif isr_s > ISR_RECOVERY_MAX_S:
        violations.add("isr-recovery",
                       f"the ISR was full {isr_s:.1f} s after the heal (> {ISR_RECOVERY_MAX_S} s)")

    # Liveness: an acks=all write to each partition succeeds.
    liveness_values = probe(topic, state, history, violations)

    # The continuous consumer catches up to the end, then the final read.
    time.sleep(3)
    reader.stop_event.set()
    reader.join(30)
    try:
        logs, highs, gaps = read_all(topic, history)
    except Exception as e:
        print(f"the final read failed: {e!r}")
        print(f"  sent {len(state.invoked)}, acknowledged {len(state.acked)}, "
              f"failed {len(state.failed)}; faults {nemesis.counts}; "
              f"ISR full after the heal: {isr_s}; violations so far {violations.counts()}")
        for n in nodes:
            n.stop()
        print(f"history: {history.path}; node logs under {root}")
        return False
    for p, want, got in gaps:
        violations.add("final-read-gap", f"partition {p}: offset {got} where {want} was due")

    # Stop the nodes cleanly and compare the replicas' batches up to the high watermark.
    for n in nodes:
        code = n.stop()
        history.log("checker", "stopped", node=n.id, code=code)
        if code != 0:
            violations.add("unclean-stop", f"node {n.id} stopped with {code}; log {n.log_path}")
    compare_replicas(args.binary, nodes, topic, highs, violations, history)

    check(state, reader, logs, highs, violations)
    report(state, reader, logs, highs, nemesis, producers, isr_s, violations, history,
           nodes, root, seed, liveness_values)
    return not violations.items


def probe(topic, state, history, violations):
    from confluent_kafka import Producer as P

    p = P({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all",
           "message.timeout.ms": 10000, "logger": CLIENT_LOG})
    results = {}

    def done(err, msg):
        v = msg.value().decode()
        results[v] = err
        if err is None:
            state.acked[v] = (msg.partition(), msg.offset())
            history.log("probe", "ok", value=v, partition=msg.partition(), offset=msg.offset())
        else:
            state.failed[v] = err.name()
            history.log("probe", "fail", value=v, error=err.name())

    values = []
    for part in range(PARTITIONS):
        v = f"probe-{part}"
        values.append(v)
        state.invoked[v] = part
        history.log("probe", "invoke", value=v, partition=part)
        p.produce(topic, value=v.encode(), partition=part, on_delivery=done)
    p.flush(15)
    for v in values:
        if results.get(v, "no report") is not None:
            violations.add("liveness", f"acks=all write {v} after the heal: "
                           f"{results.get(v, 'no report')}", v)
    return values


def compare_replicas(binary, nodes, topic, highs, violations, history):
    for p in range(PARTITIONS):
        per_node = {}
        for n in nodes:
            d = [x for x in partition_dirs(n.data, topic) if os.path.basename(x) == str(p)]
            if not d:
                violations.add("divergence", f"node {n.id} has no directory for partition {p}")
                continue
            per_node[n.id] = [b for b in batches(binary, d[0]) if b[1] < highs[p]]
            hw_file = os.path.join(d[0], "high-watermark-checkpoint")
            try:
                hw = open(hw_file).read().strip()
            except OSError:
                hw = "none"
            history.log("checker", "replica", partition=p, node=n.id,
                        batches=len(per_node[n.id]), hw_checkpoint=hw)
        ids = sorted(per_node)
        for a, b in zip(ids, ids[1:]):
            la, lb = per_node[a], per_node[b]
            if la != lb:
                i = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y),
                         min(len(la), len(lb)))
                violations.add(
                    "divergence",
                    f"partition {p} below HW {highs[p]}: node {a} has {len(la)} batches, "
                    f"node {b} {len(lb)}; first difference at batch {i}: "
                    f"{la[i] if i < len(la) else None} vs {lb[i] if i < len(lb) else None}")
        for nid, bs in per_node.items():
            end = bs[-1][1] + 1 if bs else 0
            if end != highs[p]:
                violations.add("divergence", f"partition {p}: node {nid}'s batches end at "
                               f"{end}, the high watermark is {highs[p]}")


def check(state, reader, logs, highs, violations):
    at = {}  # value -> [(partition, offset)]
    for p, values in logs.items():
        for o, v in enumerate(values):
            at.setdefault(v, []).append((p, o))
    for v, places in at.items():
        if len(places) > 1:
            violations.add("duplicate", f"{v} at {places}", v)
        if v not in state.invoked:
            violations.add("unknown-value", f"{v} at {places}, never sent", v)
    for v, (p, o) in state.acked.items():
        places = at.get(v)
        if not places:
            where = (f" (at or above the final high watermark {highs[p]}: no consumer can "
                     f"read it; `ringmq log` shows whether the replicas still hold it)"
                     if o >= highs[p] else "")
            violations.add("lost-write", f"{v} acknowledged at {p}/{o}, not in the log{where}", v)
        elif (p, o) not in places:
            violations.add("inconsistent-offsets",
                           f"{v} acknowledged at {p}/{o}, in the log at {places}", v)
    for p, o, v in reader.reads:
        final = logs[p][o] if o < len(logs[p]) else None
        if final != v:
            violations.add("unseen", f"consumer read {v} at {p}/{o}; the final log has "
                           f"{final if final is not None else 'nothing'} there "
                           f"(high watermark {highs[p]})", v)


def report(state, reader, logs, highs, nemesis, producers, isr_s, violations, history,
           nodes, root, seed, liveness_values):
    present = {v for values in logs.values() for v in values}
    not_acked = [v for v in state.invoked if v not in state.acked]
    failed = [v for v in not_acked if v in state.failed]
    in_doubt = [v for v in not_acked if v not in state.failed]
    errors = {}
    for v in failed:
        errors[state.failed[v]] = errors.get(state.failed[v], 0) + 1
    counts = violations.counts()
    fatal = [e for t in producers for e in t.fatal_errors]
    print(f"faults: seed {seed}")
    print(f"  sent {len(state.invoked)}, acknowledged {len(state.acked)}, "
          f"failed {len(failed)} ({len([v for v in failed if v in present])} of them "
          f"in the log; {errors}), in doubt {len(in_doubt)} "
          f"({len([v for v in in_doubt if v in present])} in the log)")
    native_sent = [v for v in state.invoked if v.startswith("n")]
    print(f"  of them by the native client: sent {len(native_sent)}, acknowledged "
          f"{len([v for v in native_sent if v in state.acked])}")
    print(f"  lost {counts.get('lost-write', 0)}, duplicated {counts.get('duplicate', 0)}, "
          f"inconsistent offsets {counts.get('inconsistent-offsets', 0)}, "
          f"unseen {counts.get('unseen', 0)}")
    print(f"  consumer read {len(reader.reads)} records, offset resets {reader.resets}; "
          f"final log {sum(len(v) for v in logs.values())} records, high watermarks {highs}")
    print(f"  faults {sum(nemesis.counts.values())}: {nemesis.counts}")
    times = sorted(state.ack_times)
    if len(times) > 1:
        gap, at = max((b - a, a) for a, b in zip(times, times[1:]))
        print(f"  longest time without an acknowledgement: {gap:.1f} s (from {at:.1f} s)")
    print(f"  producer fatal errors: {fatal or 'none'}")
    print("  ISR full on every node "
          + (f"{isr_s:.1f} s after the heal" if isr_s is not None else "never (90 s)"))
    if violations.items:
        print(f"VIOLATIONS {counts}:")
        for kind, text, _ in violations.items[:40]:
            print(f"  {kind}: {text}")
        if len(violations.items) > 40:
            print(f"  ... {len(violations.items) - 40} more")
        shown = 0
        for kind, text, value in violations.items:
            if value is None or shown >= 5:
                continue
            shown += 1
            print(f"history of {value} ({kind}):")
            for line in history.grep(f"value={value}", 20):
                print("  " + line, end="")
        print("history, last 80 lines:")
        for line in history.tail(80):
            print("  " + line, end="")
        print(f"history: {history.path}")
        print("node logs: " + ", ".join(n.log_path for n in nodes))
        print(f"data directories kept under {root}")


if __name__ == "__main__":
    main()
