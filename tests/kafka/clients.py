#!/usr/bin/env python3
"""Real Kafka clients against a ringmq Kafka listener.

Run by tests/kafka_clients.rs, which starts the broker on a free port:

    clients.py BOOTSTRAP roundtrip confluent|kafka-python [--messages N]
    clients.py BOOTSTRAP compression confluent|kafka-python
    clients.py BOOTSTRAP admin
    clients.py BOOTSTRAP produce-idempotent TOPIC COUNT
    clients.py BOOTSTRAP verify-sequence TOPIC COUNT
    clients.py BOOTSTRAP group-share TOPIC GROUP [confluent|kafka-python] [range|cooperative-sticky|...]
    clients.py BOOTSTRAP group-resume TOPIC GROUP
    clients.py BOOTSTRAP idempotent-pair kafka-python|confluent
    clients.py BOOTSTRAP transactions
    clients.py BOOTSTRAP min-insync

Each prints what it checked and exits non-zero (with the reason) on the first
mismatch.
"""

import sys
import time
import uuid


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def new_topic(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap, topic, partitions, configs=None):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=configs or {})]
    )
    for _, f in fs.items():
        f.result(timeout=30)


def message(i):
    key = f"key-{i % 1000}".encode()
    value = (f"value-{i}-" + "x" * (i % 200)).encode()
    headers = [("seq", str(i).encode()), ("h2", b"\x00\x01binary")]
    return key, value, headers


# --- producing and consuming with each client ---------------------------------------


def produce_confluent(bootstrap, topic, n, extra=None):
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"}
    conf.update(extra or {})
    p = Producer(conf)
    placed = {}
    errors = []

    def report(i):
        def done(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                placed[i] = (msg.partition(), msg.offset())
        return done

    for i in range(n):
        k, v, h = message(i)
        while True:
            try:
                p.produce(topic, key=k, value=v, headers=h, on_delivery=report(i))
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(60)
    if left or errors:
        fail(f"confluent producer: {left} undelivered, errors {errors[:3]}")
    return placed


def produce_kafka_python(bootstrap, topic, n, extra=None):
    from kafka import KafkaProducer

    conf = {"bootstrap_servers": bootstrap, "linger_ms": 5, "acks": "all"}
    conf.update(extra or {})
    p = KafkaProducer(**conf)
    futures = []
    for i in range(n):
        k, v, h = message(i)
        futures.append((i, p.send(topic, key=k, value=v, headers=h)))
    p.flush(60)
    placed = {}
    for i, f in futures:
        md = f.get(timeout=60)
        placed[i] = (md.partition, md.offset)
    p.close()
    return placed


def consume_confluent(bootstrap, topic, partitions, n):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.time() + 120
    while len(got) < n and time.time() < deadline:
        for m in c.consume(10000, 1.0):
            if m.error():
                fail(f"confluent consumer: {m.error()}")
            got.append((m.partition(), m.offset(), m.key(), m.value(), m.headers() or []))
    c.close()
    return got


def consume_kafka_python(bootstrap, topic, partitions, n):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got = []
    deadline = time.time() + 120
    while len(got) < n and time.time() < deadline:
        for tp, msgs in c.poll(timeout_ms=1000, max_records=10000).items():
            for m in msgs:
                got.append((m.partition, m.offset, m.key, m.value, list(m.headers or [])))
    c.close()
    return got


PRODUCE = {"confluent": produce_confluent, "kafka-python": produce_kafka_python}
CONSUME = {"confluent": consume_confluent, "kafka-python": consume_kafka_python}


def check(placed, got, n, label):
    if len(got) != n:
        fail(f"{label}: consumed {len(got)} of {n}")
    seen = set()
    last = {}
    for part, off, k, v, h in got:
        hd = dict(h)
        i = int(hd["seq"])
        if i in seen:
            fail(f"{label}: message {i} consumed twice")
        seen.add(i)
        ek, ev, eh = message(i)
        if k != ek or v != ev or list(h) != eh:
            fail(f"{label}: message {i} differs: {k!r} {v[:20]!r} {h!r}")
        if placed[i] != (part, off):
            fail(f"{label}: message {i} at {(part, off)}, the producer was told {placed[i]}")
        if part in last and off <= last[part]:
            fail(f"{label}: partition {part} out of order at offset {off}")
        last[part] = off
    # Keys land where the client's partitioner put them: one partition per key.
    by_key = {}
    for part, _, k, _, _ in got:
        if by_key.setdefault(k, part) != part:
            fail(f"{label}: key {k!r} on partitions {by_key[k]} and {part}")
    print(f"{label}: {n} messages byte-identical, ordered in each of {len(last)} partitions, "
          f"{len(by_key)} keys each on one partition")


def roundtrip(bootstrap, client, n):
    topic = new_topic("roundtrip")
    create_topic(bootstrap, topic, 6)
    t0 = time.time()
    placed = PRODUCE[client](bootstrap, topic, n)
    t1 = time.time()
    got = CONSUME[client](bootstrap, topic, 6, n)
    t2 = time.time()
    check(placed, got, n, f"{client} roundtrip")
    print(f"{client}: produce {n / (t1 - t0):.0f} msg/s, consume {n / (t2 - t1):.0f} msg/s")


def compression(bootstrap, client):
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    for codec in codecs:
        topic = new_topic(f"codec-{codec}")
        create_topic(bootstrap, topic, 2)
        n = 2000
        if client == "confluent":
            placed = produce_confluent(bootstrap, topic, n, {"compression.type": codec})
        else:
            placed = produce_kafka_python(bootstrap, topic, n, {"compression_type": codec})
        got = CONSUME[client](bootstrap, topic, 2, n)
        check(placed, got, n, f"{client} {codec}")


def admin(bootstrap):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    topic = new_topic("admin")
    a.create_topics(
        [NewTopic(topic, num_partitions=3, replication_factor=1,
                  config={"retention.ms": "3600000", "segment.bytes": "16777216"})]
    )[topic].result(30)
    md = a.list_topics(timeout=10)
    if topic not in md.topics or len(md.topics[topic].partitions) != 3:
        fail(f"created topic {topic} not in metadata with 3 partitions")
    # Creating it again is refused with TOPIC_ALREADY_EXISTS.
    try:
        a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
        fail("creating an existing topic succeeded")
    except Exception as e:
        if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
            fail(f"creating an existing topic: unexpected error {e}")
    # A bad config is refused with INVALID_CONFIG.
    bad = new_topic("bad")
    try:
        a.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1,
                                  config={"retention.ms": "soon"})])[bad].result(30)
        fail("a topic with retention.ms=soon was created")
    except Exception as e:
        if "INVALID_CONFIG" not in str(e) and "not a number" not in str(e):
            fail(f"bad config: unexpected error {e}")
    # Describe configs.
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = a.describe_configs([res])[res].result(30)
    if cfg["retention.ms"].value != "3600000" or cfg["segment.bytes"].value != "16777216":
        fail(f"describe configs: {cfg['retention.ms'].value} {cfg['segment.bytes'].value}")
    if "max.message.bytes" not in cfg:
        fail("describe configs: max.message.bytes missing")
    print(f"admin: created {topic} with configs, refused a duplicate and a bad config, "
          f"described {len(cfg)} configs")
    # Alter configs incrementally: set one, delete one (back to the default).
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, NewPartitions
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    a.incremental_alter_configs([res])[res].result(30)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = a.describe_configs([res])[res].result(30)
    if cfg["retention.ms"].value != "7200000" or cfg["segment.bytes"].value == "16777216":
        fail(f"after altering: retention.ms {cfg['retention.ms'].value}, "
             f"segment.bytes {cfg['segment.bytes'].value}")
    bad_res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "never", incremental_operation=AlterConfigOpType.SET)])
    try:
        a.incremental_alter_configs([bad_res])[bad_res].result(30)
        fail("retention.ms=never was accepted")
    except Exception as e:
        if "INVALID_CONFIG" not in str(e) and "not a number" not in str(e):
            fail(f"bad alter: unexpected error {e}")
    # Add partitions; fewer is refused.
    a.create_partitions([NewPartitions(topic, 5)])[topic].result(30)
    if len(a.list_topics(timeout=10).topics[topic].partitions) != 5:
        fail("create_partitions did not raise the count to 5")
    try:
        a.create_partitions([NewPartitions(topic, 2)])[topic].result(30)
        fail("lowering the partition count succeeded")
    except Exception as e:
        if "INVALID_PARTITIONS" not in str(e) and "must be more" not in str(e):
            fail(f"lowering partitions: unexpected error {e}")
    print("admin: altered retention.ms (SET) and segment.bytes (DELETE); refused a bad value; "
          "raised partitions 3 -> 5 and refused 5 -> 2")
    # ListOffsets by timestamp.
    p = Producer({"bootstrap.servers": bootstrap})
    base = int(time.time() * 1000) - 100_000
    for i in range(30):
        p.produce(topic, value=f"v{i}".encode(), partition=0, timestamp=base + i * 1000)
    p.flush(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    found = c.offsets_for_times([TopicPartition(topic, 0, base + 10_500)], timeout=10)
    if found[0].offset != 11:
        fail(f"offsets_for_times: offset {found[0].offset}, expected 11")
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    if (lo, hi) != (0, 30):
        fail(f"watermarks {(lo, hi)}, expected (0, 30)")
    late = c.offsets_for_times([TopicPartition(topic, 0, base + 10_000_000)], timeout=10)
    if late[0].offset != -1:
        fail(f"offsets_for_times after the last record: {late[0].offset}, expected -1 (end)")
    c.close()
    print("admin: offsets_for_times found offset 11 for a timestamp between records 10 and 11; "
          "watermarks (0, 30)")
    # Delete.
    a.delete_topics([topic])[topic].result(30)
    if topic in a.list_topics(timeout=10).topics:
        fail("deleted topic still listed")
    try:
        a.delete_topics([topic])[topic].result(30)
        fail("deleting a deleted topic succeeded")
    except Exception as e:
        if "UNKNOWN_TOPIC" not in str(e):
            fail(f"deleting a deleted topic: unexpected error {e}")
    print(f"admin: deleted {topic}; deleting it again gives UNKNOWN_TOPIC_OR_PART")


def produce_idempotent(bootstrap, topic, count):
    """Produces COUNT records with sequence numbers as values through an idempotent
    producer, slowly enough that a broker restart lands in the middle, and reports
    progress on stdout (the test restarts the broker when it sees progress)."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
    })
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))

    for i in range(count):
        while True:
            try:
                p.produce(topic, value=str(i).encode(), partition=i % 3, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        if i % 500 == 0:
            p.poll(0)
            print(f"produced {i}", flush=True)
            time.sleep(0.02)
    left = p.flush(120)
    if left or errors:
        fail(f"idempotent producer: {left} undelivered, errors {errors[:3]}")
    print("produced all", flush=True)


def verify_sequence(bootstrap, topic, count):
    got = consume_confluent_values(bootstrap, topic, 3, count)
    values = sorted(int(v) for v in got)
    dups = len(values) - len(set(values))
    missing = set(range(count)) - set(values)
    if dups or missing:
        fail(f"{dups} duplicates, {len(missing)} missing (e.g. {sorted(missing)[:5]})")
    print(f"idempotent: {count} records, no duplicates, no gaps")


def consume_confluent_values(bootstrap, topic, partitions, n):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.time() + 60
    idle = 0
    while time.time() < deadline and idle < 3:
        ms = c.consume(10000, 1.0)
        idle = idle + 1 if not ms and len(got) >= n else 0
        for m in ms:
            if m.error():
                fail(str(m.error()))
            got.append(m.value())
    c.close()
    return got


# --- consumer groups -----------------------------------------------------------------

GROUP_PARTITIONS = 6
SESSION_MS = 6000


def group_member_kafka_python(bootstrap, topic, group, name):
    """group_member with kafka-python."""
    import json
    import signal
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def say(kind, **kw):
        print(json.dumps({"kind": kind, "member": name, "t": time.time(), **kw}), flush=True)

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            say("revoke", partitions=sorted(p.partition for p in revoked))

        def on_partitions_assigned(self, assigned):
            say("assign", partitions=sorted(p.partition for p in assigned))

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, client_id=name,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500)
    c.subscribe([topic], listener=Listener())
    while not stop:
        got = c.poll(timeout_ms=200, max_records=500)
        for _, msgs in got.items():
            for m in msgs:
                say("msg", partition=m.partition, offset=m.offset, value=m.value.decode())
        if got:
            try:
                c.commit()
            except Exception as e:  # a rebalance ended the generation: read again
                say("commit-failed", error=str(e))
    c.close()
    say("closed")


def group_member(bootstrap, topic, group, name, strategy="range"):
    """With GROUP_INSTANCE_ID set, a static member (session timeout 30 s).
    One member of a group (a child process of group-share): reports its
    assignments, revocations and every record on stdout, commits synchronously after
    each poll, until SIGTERM."""
    import json
    import os
    import signal
    from confluent_kafka import Consumer

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def say(kind, **kw):
        print(json.dumps({"kind": kind, "member": name, "t": time.time(), **kw}), flush=True)

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": strategy,
        **({"group.instance.id": os.environ["GROUP_INSTANCE_ID"],
            "session.timeout.ms": 30000} if os.environ.get("GROUP_INSTANCE_ID") else {}),
    })
    c.subscribe([topic],
                on_assign=lambda _c, ps: say("assign", partitions=sorted(p.partition for p in ps)),
                on_revoke=lambda _c, ps: say("revoke", partitions=sorted(p.partition for p in ps)))
    while not stop:
        msgs = c.consume(500, 0.2)
        for m in msgs:
            if m.error():
                say("error", error=str(m.error()))
                continue
            say("msg", partition=m.partition(), offset=m.offset(), value=m.value().decode())
        if msgs:
            try:
                c.commit(asynchronous=False)
            except Exception as e:  # a rebalance ended the generation: read again
                say("commit-failed", error=str(e))
    c.close()
    say("closed")


def produce_values(bootstrap, topic, start, count):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(topic, key=f"k{i}".encode(), value=str(i).encode())
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(30):
        fail("producer did not deliver everything")


MEMBERS = []


def spawn_member(args, env=None):
    """Starts a group member (this script, in a member mode), its output on a pipe; it
    is killed when this script exits, however it exits."""
    import atexit
    import subprocess

    if not MEMBERS:
        atexit.register(lambda: [p.kill() for p in MEMBERS if p.poll() is None])
    proc = subprocess.Popen([sys.executable, __file__] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    MEMBERS.append(proc)
    return proc


def follow_events(proc, events, lock):
    """Appends the JSON events a group member prints, from a background thread."""
    import json
    import threading

    def read():
        for line in proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                # Anything else a member prints (a traceback), kept for the failure report.
                e = {"kind": "output", "member": "?", "t": time.time(), "line": line.rstrip()}
            with lock:
                events.append(e)
    threading.Thread(target=read, daemon=True).start()


def group_share(bootstrap, topic, group, client="confluent", strategy="range"):
    """3 members share 6 partitions without overlap; one is SIGKILLed and its
    partitions move to the others; every record is consumed at least once."""
    import os
    import signal
    import threading

    create_topic(bootstrap, topic, GROUP_PARTITIONS)
    produce_values(bootstrap, topic, 0, 6000)
    events = []
    lock = threading.Lock()
    procs = {}

    t_start = time.time()
    for name in ["m0", "m1", "m2"]:
        proc = spawn_member(
            [bootstrap, f"group-member-{client}", topic, group, name]
            + ([strategy] if client == "confluent" else []))
        procs[name] = proc
        follow_events(proc, events, lock)

    def owners(live):
        """Each live member's current partitions, replaying events in time order."""
        cur = {}
        with lock:
            evs = sorted(events, key=lambda e: e["t"])
        for e in evs:
            if e["kind"] == "assign":
                cur[e["member"]] = cur.get(e["member"], set()) | set(e["partitions"])
            elif e["kind"] == "revoke":
                cur[e["member"]] = cur.get(e["member"], set()) - set(e["partitions"])
        return {m: ps for m, ps in cur.items() if m in live}

    def wait_for(cond, what, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return time.time()
            time.sleep(0.05)
        fail(f"timed out waiting for {what}; events other than records: "
             f"{[e for e in events if e['kind'] != 'msg'][-20:]}")

    live = {"m0", "m1", "m2"}

    def spread(members):
        o = owners(members)
        return (len(o) == len(members) and all(o.values())
                and sorted(p for ps in o.values() for p in ps) == list(range(GROUP_PARTITIONS)))

    t_shared = wait_for(lambda: spread(live), "3 members to share 6 partitions", 60)
    print(f"group ({client}, {strategy}): 3 members share {GROUP_PARTITIONS} partitions "
          f"{sorted((m, sorted(ps)) for m, ps in owners(live).items())} "
          f"{t_shared - t_start:.1f} s after starting")
    wait_for(lambda: len({e["value"] for e in events if e["kind"] == "msg"}) >= 6000,
             "the first 6000 records", 60)
    # SIGKILL one member: no LeaveGroup, only the session timeout tells.
    os.kill(procs["m0"].pid, signal.SIGKILL)
    procs["m0"].wait()
    t_kill = time.time()
    live.discard("m0")
    t_moved = wait_for(lambda: spread(live), "the survivors to take every partition",
                       SESSION_MS / 1000 * 3)
    print(f"group: after a SIGKILL of one member, its partitions moved to the other two in "
          f"{t_moved - t_kill:.1f} s (session timeout {SESSION_MS / 1000:.0f} s)")
    produce_values(bootstrap, topic, 6000, 6000)
    wait_for(lambda: len({e["value"] for e in events if e["kind"] == "msg"}) >= 12000,
             "all 12000 records", 60)
    for name in ["m1", "m2"]:
        procs[name].send_signal(signal.SIGTERM)
    for name in ["m1", "m2"]:
        procs[name].wait(timeout=30)
    # No partition owned by two members at once, replaying the events in time order.
    cur = {}
    killed = False
    for e in sorted(events, key=lambda e: e["t"]):
        if not killed and e["t"] >= t_kill:
            cur.pop("m0", None)  # a killed member owns nothing
            killed = True
        if e["kind"] == "assign":
            for m, ps in cur.items():
                both = ps & set(e["partitions"])
                if m != e["member"] and both:
                    fail(f"partitions {both} owned by {m} and {e['member']} at once")
            cur[e["member"]] = cur.get(e["member"], set()) | set(e["partitions"])
        elif e["kind"] == "revoke":
            cur[e["member"]] = cur.get(e["member"], set()) - set(e["partitions"])
    values = [int(e["value"]) for e in events if e["kind"] == "msg"]
    missing = set(range(12000)) - set(values)
    if missing:
        fail(f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}")
    errors = [e for e in events if e["kind"] == "error"]
    if errors:
        fail(f"consumer errors: {errors[:3]}")
    print(f"group: all 12000 records consumed ({len(values) - 12000} redelivered after the "
          f"kill), no partition owned by two members at once")


def group_static(bootstrap, topic, group):
    """Static membership: a member SIGKILLed and restarted with the same
    group.instance.id is back in the group with partitions long before its 30 s session
    timeout."""
    import os
    import signal
    import threading

    create_topic(bootstrap, topic, GROUP_PARTITIONS)
    events = []
    lock = threading.Lock()

    def start(name):
        env = dict(os.environ, GROUP_INSTANCE_ID=f"static-{name}")
        proc = spawn_member([bootstrap, "group-member-confluent", topic, group, name], env)
        follow_events(proc, events, lock)
        return proc

    def assigned(name, after):
        with lock:
            return [e for e in events if e["member"] == name and e["kind"] == "assign"
                    and e["partitions"] and e["t"] > after]

    def wait_for(cond, what, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.05)
        fail(f"timed out waiting for {what}; events other than records: "
             f"{[e for e in events if e['kind'] != 'msg'][-20:]}")

    a, b = start("a"), start("b")
    wait_for(lambda: assigned("a", 0) and assigned("b", 0), "both static members assigned", 60)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    t_kill = time.time()
    a = start("a")
    wait_for(lambda: assigned("a", t_kill), "the restarted static member's assignment", 20)
    took = min(e["t"] for e in assigned("a", t_kill)) - t_kill
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
    for p in (a, b):
        p.wait(timeout=30)
    print(f"group (static): a member SIGKILLed and restarted with its group.instance.id had "
          f"partitions again {took:.1f} s later (session timeout 30 s)")


def group_resume(bootstrap, topic, group):
    """After a broker restart: the group's committed offsets are the partitions' ends
    (everything was consumed and committed); a new member starts from them."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(GROUP_PARTITIONS)]
    committed = c.committed(tps, timeout=30)
    for tp in committed:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        if tp.offset != hi:
            fail(f"partition {tp.partition}: committed {tp.offset}, end {hi}")
    print(f"group: after the broker restart the committed offsets are the ends: "
          f"{[tp.offset for tp in committed]}")
    produce_values(bootstrap, topic, 12000, 600)
    c.subscribe([topic])
    got = []
    t0 = time.time()
    first = None
    while len(got) < 600 and time.time() - t0 < 60:
        for m in c.consume(1000, 0.5):
            if m.error():
                fail(str(m.error()))
            if first is None:
                first = time.time() - t0
            got.append(int(m.value()))
    c.close()
    if sorted(got) != list(range(12000, 12600)):
        fail(f"resumed member read {len(got)} records, expected exactly 12000..12599 "
             f"(e.g. {sorted(got)[:3]})")
    print(f"group: a new member resumed at the committed offsets: exactly the 600 new "
          f"records; first record {first:.2f} s after subscribe")


def commit_many(bootstrap, topic, group, n):
    """Commits offsets 1..N for every partition of TOPIC, one synchronous commit each."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    t0 = time.time()
    for i in range(1, n + 1):
        c.commit(offsets=[TopicPartition(topic, p, i) for p in range(GROUP_PARTITIONS)],
                 asynchronous=False)
    c.close()
    print(f"commits: {n} synchronous commits of {GROUP_PARTITIONS} partitions in "
          f"{time.time() - t0:.1f} s")


def check_committed(bootstrap, topic, group, n):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, p) for p in range(GROUP_PARTITIONS)], timeout=30)
    c.close()
    offsets = [tp.offset for tp in got]
    if offsets != [n] * GROUP_PARTITIONS:
        fail(f"committed offsets {offsets}, expected {n} everywhere")
    print(f"commits: committed offsets are {offsets}")


def idempotent_pair(bootstrap, client):
    """Regression: two idempotent producers at once on one partition, then a restart
    of one (a new producer instance); every acknowledged record must be stored once.
    Producers that sent InitProducerId with producer id 0 all got id 0 back, and the
    second one's batches were acknowledged as retries of the first one's and dropped."""
    import threading

    topic = new_topic(f"pair-{client}")
    create_topic(bootstrap, topic, 1)
    per = 1500
    acked = []
    errors = []
    lock = threading.Lock()

    def run(tag, count):
        if client == "kafka-python":
            from kafka import KafkaProducer

            p = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                              acks="all", linger_ms=2)
            futures = [(f"{tag}-{i}", p.send(topic, value=f"{tag}-{i}".encode(), partition=0))
                       for i in range(count)]
            for v, f in futures:
                try:
                    f.get(timeout=60)
                    with lock:
                        acked.append(v)
                except Exception as e:
                    errors.append(f"{v}: {e}")
            p.close()
        else:
            from confluent_kafka import Producer

            p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                          "linger.ms": 2})

            def report(err, msg):
                with lock:
                    if err is None:
                        acked.append(msg.value().decode())
                    else:
                        errors.append(str(err))
            for i in range(count):
                p.produce(topic, value=f"{tag}-{i}".encode(), partition=0, on_delivery=report)
                p.poll(0)
            p.flush(60)

    threads = [threading.Thread(target=run, args=(t, per)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run("a-restarted", 500)
    if errors:
        fail(f"{client}: {len(errors)} sends failed, e.g. {errors[:3]}")
    stored = [v.decode() for v in consume_confluent_values(bootstrap, topic, 1, len(acked))]
    if sorted(stored) != sorted(acked) or len(set(stored)) != len(stored):
        fail(f"{client}: {len(acked)} acknowledged, {len(stored)} stored, "
             f"{len(set(acked) - set(stored))} acknowledged but missing")
    print(f"idempotent-pair {client}: {len(acked)} acknowledged, all stored once")


def transactions(bootstrap):
    """A transactional producer fails fast and says transactions are not supported."""
    from confluent_kafka import KafkaException, Producer

    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-confluent"})
    t = time.time()
    try:
        p.init_transactions(30)
        fail("confluent init_transactions succeeded")
    except KafkaException as e:
        err = e.args[0]
        took = time.time() - t
        if took > 1.0 or not err.fatal() or "transactions are not supported" not in err.str():
            fail(f"confluent init_transactions: {took:.2f}s fatal={err.fatal()} {err.str()}")
        print(f"transactions: confluent-kafka failed in {took:.2f}s: {err.str()}")
    from kafka import KafkaProducer

    t = time.time()
    try:
        kp = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="tx-kafka-python",
                           enable_idempotence=True)
        kp.init_transactions()
        fail("kafka-python init_transactions succeeded")
    except Exception as e:
        took = time.time() - t
        if took > 1.0 or "TransactionalIdAuthorization" not in type(e).__name__:
            fail(f"kafka-python init_transactions: {took:.2f}s {type(e).__name__} {e}")
        print(f"transactions: kafka-python failed in {took:.2f}s: {type(e).__name__}")


def min_insync(bootstrap):
    """A topic with min.insync.replicas=2 on a single node: acks=all is refused with
    NOT_ENOUGH_REPLICAS, acks=1 is stored, as Kafka answers."""
    from confluent_kafka import KafkaError, Producer

    topic = new_topic("isr")
    create_topic(bootstrap, topic, 1, {"min.insync.replicas": "2"})
    results = {}
    for acks in ("all", "1"):
        p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "retries": 0,
                      "message.timeout.ms": 5000})
        got = []
        p.produce(topic, value=f"acks={acks}".encode(), partition=0,
                  on_delivery=lambda err, msg: got.append(err))
        p.flush(10)
        if not got:
            fail(f"acks={acks}: no delivery report")
        results[acks] = got[0]
    err = results["all"]
    if not isinstance(err, KafkaError) or err.code() != KafkaError.NOT_ENOUGH_REPLICAS:
        fail(f"acks=all on min.insync.replicas=2: {err}")
    if results["1"] is not None:
        fail(f"acks=1 on min.insync.replicas=2: {results['1']}")
    stored = [v.decode() for v in consume_confluent_values(bootstrap, topic, 1, 1)]
    if stored != ["acks=1"]:
        fail(f"stored {stored}")
    print(f"min-insync: acks=all refused with {err.name()}, acks=1 stored")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    bootstrap, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "roundtrip":
        n = int(args[2]) if len(args) > 2 and args[1] == "--messages" else 100_000
        roundtrip(bootstrap, args[0], n)
    elif cmd == "compression":
        compression(bootstrap, args[0])
    elif cmd == "admin":
        admin(bootstrap)
    elif cmd == "produce-idempotent":
        produce_idempotent(bootstrap, args[0], int(args[1]))
    elif cmd == "verify-sequence":
        verify_sequence(bootstrap, args[0], int(args[1]))
    elif cmd == "group-member-confluent":
        group_member(bootstrap, args[0], args[1], args[2], *args[3:4])
    elif cmd == "group-member-kafka-python":
        group_member_kafka_python(bootstrap, args[0], args[1], args[2])
    elif cmd == "group-share":
        group_share(bootstrap, args[0], args[1], *args[2:4])
    elif cmd == "commit-many":
        commit_many(bootstrap, args[0], args[1], int(args[2]))
    elif cmd == "check-committed":
        check_committed(bootstrap, args[0], args[1], int(args[2]))
    elif cmd == "group-static":
        group_static(bootstrap, args[0], args[1])
    elif cmd == "group-resume":
        group_resume(bootstrap, args[0], args[1])
    elif cmd == "idempotent-pair":
        idempotent_pair(bootstrap, args[0])
    elif cmd == "transactions":
        transactions(bootstrap)
    elif cmd == "min-insync":
        min_insync(bootstrap)
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
