#!/usr/bin/env python3
"""Real Kafka clients against a 3-node ringmq cluster, with the leader killed under them.

Run by tests/cluster.rs:

    cluster.py BINARY WORKDIR confluent|kafka-python|kcat|groups|native|native-groups

Starts three `ringmq serve` nodes on 127.0.0.1 (ports chosen free now, one shard each,
every node a controller voter), creates a topic with 3 partitions, replication factor 3
and min.insync.replicas=2, and then, per client:

- confluent: an idempotent acks=all producer sends unique values while a consumer reads
  every partition from offset 0; the leader of partition 0 is killed (SIGKILL) a third
  of the way through and restarted two seconds later. Every acknowledged value must be
  read, once, at the offset it was acknowledged at; the consumer's offsets never go back
  or skip.
- kafka-python: acks=all sends with retries across the same kill; every acknowledged
  value must be read back (kafka-python is not idempotent: a retried send may be stored
  twice, which is counted, not failed).
- kcat: acks=all lines produced and consumed back, with the leader killed between;
  `ringmq topic create --replication-factor` through a node.
- groups: a confluent-kafka consumer group reads half the topic and commits; the node
  coordinating the group is killed (SIGKILL); the consumer must go on with the
  committed offsets unchanged, read the rest and commit on the new coordinator; after a
  restart of the node, a new member of the group must read only what is produced then.
- native: `ringmq produce --acks all` (the native client: idempotent, following leaders)
  given lines while the leader of partition 0 is killed and restarted; it must exit 0
  (every line acknowledged), and `ringmq consume --format json` must read every line
  back exactly once, one line per offset.
- native-groups: `ringmq consume --group` (the native client's group consumer) reads
  half of what was produced, commits and leaves; the node coordinating the group is
  killed; a second member, given every node, must find the new coordinator and read
  exactly the other half (the committed offsets survived; nothing read twice).

Every scenario ends by waiting for the full ISR and checking each node's /metrics (admin
listener, parsed with prometheus-client): three live nodes, one controller, and per
partition one leader reporting three in-sync replicas.

Nodes are stopped at the end whatever happens (SIGTERM, then SIGKILL). Exits non-zero
with the reason on the first mismatch.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

BINARY, WORK, CLIENT = sys.argv[1], sys.argv[2], sys.argv[3]
NODES = [1, 2, 3]
TOPIC = "replicated"


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    for n in NODES:
        log = os.path.join(WORK, f"node{n}.log")
        if os.path.exists(log):
            tail = open(log, errors="replace").read().splitlines()[-15:]
            print(f"--- node {n} log tail ({log})", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
    stop_all()
    sys.exit(1)


TAKEN = set()


def free_port(kind=socket.SOCK_STREAM):
    """A port free now, below the kernel's range for ephemeral ports (so no client
    connection takes it while a node restarts on it), and not one this run already
    chose (the kernel may hand the same port to two binds in a row once the first is
    closed)."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo, hi = 10000, max(low, 10100)
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(hi - lo):
        port = rng.randrange(lo, hi)
        if port in TAKEN:
            continue
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        TAKEN.add(port)
        return port
    raise RuntimeError(f"no free port in {lo}..{hi}")


PORTS = {n: {"kafka": free_port(), "native": free_port(), "admin": free_port(),
             "cluster": free_port(socket.SOCK_DGRAM)} for n in NODES}
VOTERS = ",".join(f"{n}@127.0.0.1:{PORTS[n]['cluster']}" for n in NODES)
BOOTSTRAP = ",".join(f"127.0.0.1:{PORTS[n]['kafka']}" for n in NODES)
CERTS = os.path.join(WORK, "certs")
PROCS = {}


def start(n):
    log = open(os.path.join(WORK, f"node{n}.log"), "a")
    PROCS[n] = subprocess.Popen(
        [
            BINARY, "serve",
            "--data-dir", os.path.join(WORK, f"node{n}"),
            "--node-id", str(n),
            "--voters", VOTERS,
            "--cluster-certs", CERTS,
            "--kafka-listen", f"127.0.0.1:{PORTS[n]['kafka']}",
            "--native-listen", f"127.0.0.1:{PORTS[n]['native']}",
            "--admin-listen", f"127.0.0.1:{PORTS[n]['admin']}",
            "--shards", "1",
            "--node-session-timeout-ms", "2000",
            "--replica-lag-time-max-ms", "3000",
            "--log-level", "info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def kill(n):
    PROCS[n].send_signal(signal.SIGKILL)
    PROCS[n].wait()


def stop_all():
    for p in PROCS.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 15
    for p in PROCS.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def metadata(bootstrap=BOOTSTRAP):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)


def all_registered():
    """Every node lists all three: a node lists itself whatever the metadata says, and
    the others once it applied their registration, so three lists of three mean every
    node is registered and every node knows it."""
    for n in NODES:
        md = metadata(f"127.0.0.1:{PORTS[n]['kafka']}")
        # -1: the answer came from the bootstrap connection, node n's own.
        if md.orig_broker_id not in (n, -1) or sorted(md.brokers) != NODES:
            return False
    return True


def leader_of(partition):
    return metadata().topics[TOPIC].partitions[partition].leader


def wait_full_isr(timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            md = metadata()
            t = md.topics.get(TOPIC)
            if t and t.partitions and all(
                p.leader in NODES and sorted(p.isrs) == NODES for p in t.partitions.values()
            ):
                return
        except Exception:
            pass
        time.sleep(0.2)
    fail(f"the ISR of {TOPIC} did not come back to 3 within {timeout} s: {describe()}")


def node_metrics(n):
    """Node n's /metrics, parsed by the Prometheus client library: {(name, labels): value}
    with labels as a sorted tuple of pairs."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{PORTS[n]['admin']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def check_metrics(timeout):
    """With the ISR full: every node's metrics say 3 live nodes and the same controller;
    each partition of the topic is led by exactly one node, which reports 3 in-sync
    replicas and no under-replication."""
    deadline, why = time.time() + timeout, ""
    while time.time() < deadline:
        m = {n: node_metrics(n) for n in NODES}
        alive = {n: m[n].get(("ringmq_cluster_nodes", (("state", "alive"),))) for n in NODES}
        controllers = {m[n].get(("ringmq_cluster_controller_leader", ())) for n in NODES}
        leaders = {}
        for n in NODES:
            for (name, labels), v in m[n].items():
                d = dict(labels)
                if name == "ringmq_partition_leader" and d.get("topic") == TOPIC and v == 1:
                    leaders.setdefault(int(d["partition"]), []).append((n, labels))
        isr_ok = all(len(ls) == 1
                     and m[ls[0][0]].get(("ringmq_partition_in_sync_replicas", ls[0][1])) == 3
                     and m[ls[0][0]].get(("ringmq_partition_under_replicated", ls[0][1])) == 0
                     for ls in leaders.values())
        if (all(a == 3 for a in alive.values()) and len(controllers) == 1
                and controllers.pop() in NODES and sorted(leaders) == [0, 1, 2] and isr_ok):
            return
        why = f"alive {alive}, controllers {controllers}, leaders {leaders}"
        time.sleep(0.5)
    fail(f"the nodes' metrics do not show the healthy cluster: {why}")


def check_console():
    """Node 1's web console, rendered by headless Chromium, shows the cluster as it is: the
    three nodes alive, a controller, and every partition of the topic with three in-sync
    replicas. Screenshots go to WORK. Skipped (said so) without Chromium."""
    import re
    import shutil
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        print("console: no Chromium on this machine, the console check is skipped")
        return
    base = f"http://127.0.0.1:{PORTS[1]['admin']}/"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1280,900", "--virtual-time-budget=6000"]

    def render(page):
        url = base + page
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True,
                             timeout=60)
        if dom.returncode != 0:
            fail(f"chromium --dump-dom {url}: {dom.stderr.decode()[-500:]}")
        shot = os.path.join(WORK, "console-" + page.strip("#/").replace("/", "-") + ".png")
        subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True,
                       timeout=60)
        # The rendered page, without the page's own script (its templates hold the same
        # markup with placeholders).
        return re.sub(r"(?s)<script.*?</script>", "", dom.stdout.decode())

    dom = render("#/cluster")
    alive = dom.count('pill good">alive<')
    controller = re.search(r'Controller</div><div class="value">node (\d+)<', dom)
    if alive != 3 or not controller or int(controller.group(1)) not in NODES:
        fail(f"the console's cluster page shows {alive} live nodes and controller "
             f"{controller and controller.group(1)}:\n{dom[-3000:]}")
    dom = render(f"#/topics/{TOPIC}")
    isrs = [sorted(int(x) for x in m.split(", "))
            for m in re.findall(r'pill (?:good|warn)">([0-9, ]+)</span>', dom)]
    if sorted(isrs) != [[1, 2, 3]] * 3:
        fail(f"the console's page of {TOPIC} shows in-sync replicas {isrs}:\n{dom[-3000:]}")
    print(f"console: node 1's console shows 3 live nodes, controller node "
          f"{controller.group(1)}, and 3 in-sync replicas for each of {TOPIC}'s 3 partitions")


def describe():
    try:
        t = metadata().topics[TOPIC]
        return {p.id: (p.leader, p.isrs) for p in t.partitions.values()}
    except Exception as e:
        return repr(e)


def setup():
    os.makedirs(WORK, exist_ok=True)
    subprocess.run([BINARY, "cluster", "init-certs", "--dir", CERTS, "--nodes", "1,2,3"],
                   check=True, stdout=subprocess.DEVNULL)
    for n in NODES:
        start(n)
    from confluent_kafka.admin import AdminClient, NewTopic

    deadline = time.time() + 30
    while True:
        try:
            if all_registered():
                break
        except Exception:
            pass
        if time.time() > deadline:
            fail("the three nodes did not all register within 30 s")
        time.sleep(0.2)
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    fs = admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=3,
                                       config={"min.insync.replicas": "2"})])
    for f in fs.values():
        f.result(timeout=30)
    wait_full_isr(15)
    print("cluster up:", describe())


def kill_leader_and_restart(partition, log):
    victim = leader_of(partition)
    log(f"killing node {victim}, leader of partition {partition}")
    kill(victim)
    time.sleep(2)
    start(victim)
    log(f"node {victim} restarted")
    return victim


def confluent():
    from confluent_kafka import Consumer, Producer, TopicPartition

    n = 30000
    acked, errors = {}, []
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 2, "message.timeout.ms": 60000})

    def delivered(err, msg):
        if err:
            errors.append(str(err))
        else:
            acked[msg.value().decode()] = (msg.partition(), msg.offset())

    seen, order_errors = {}, []
    stop = threading.Event()

    def consume():
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        c.assign([TopicPartition(TOPIC, p, 0) for p in range(3)])
        last = {}
        while not stop.is_set() or len(seen) < len(acked):
            m = c.poll(0.5)
            if m is None or m.error():
                if stop.is_set() and time.time() > stop.deadline:
                    break
                continue
            p, o, v = m.partition(), m.offset(), m.value().decode()
            if p in last and o != last[p] + 1:
                order_errors.append(f"partition {p}: offset {o} after {last[p]}")
            last[p] = o
            if v in seen:
                order_errors.append(f"{v} read twice: at {seen[v]} and {(p, o)}")
            seen[v] = (p, o)
        c.close()

    reader = threading.Thread(target=consume)
    reader.start()
    t0 = time.time()
    victim = None
    for i in range(n):
        producer.produce(TOPIC, value=f"c-{i}".encode(), on_delivery=delivered)
        producer.poll(0)
        if i % 500 == 0:
            time.sleep(0.01)
        if i == n // 3:
            victim = kill_leader_and_restart(0, print)
    left = producer.flush(90)
    print(f"produced {n} in {time.time() - t0:.1f} s: {len(acked)} acknowledged, "
          f"{len(errors)} failed, {left} unsent; killed node {victim}")
    stop.deadline = time.time() + 60
    stop.set()
    reader.join()
    lost = [v for v in acked if v not in seen]
    moved = [v for v, at in acked.items() if v in seen and seen[v] != at]
    if left or errors:
        fail(f"{left} unsent, errors: {sorted(set(errors))[:5]}")
    if lost:
        fail(f"lost-write: {len(lost)} acknowledged values never read, e.g. {lost[:5]}")
    if moved:
        fail(f"inconsistent-offsets: {len(moved)}, e.g. {moved[0]} acked at {acked[moved[0]]} read at {seen[moved[0]]}")
    if order_errors:
        fail(f"consumer order: {order_errors[:5]}")
    print(f"confluent: {len(acked)} acknowledged, all read once at their offsets")


def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    n = 5000
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP.split(","), acks="all", retries=20,
                             retry_backoff_ms=200, request_timeout_ms=10000, linger_ms=2)
    futures = []
    for i in range(n):
        futures.append((f"k-{i}", producer.send(TOPIC, f"k-{i}".encode())))
        if i == n // 3:
            producer.flush(30)
            kill_leader_and_restart(1, print)
    producer.flush(90)
    acked = {}
    failed = 0
    for v, f in futures:
        try:
            md = f.get(timeout=60)
            acked[v] = (md.partition, md.offset)
        except Exception:
            failed += 1
    producer.close()
    wait_full_isr(20)
    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP.split(","), enable_auto_commit=False,
                      consumer_timeout_ms=5000)
    c.assign([TopicPartition(TOPIC, p) for p in range(3)])
    c.seek_to_beginning()
    seen = {}
    for m in c:
        v = m.value.decode()
        if v.startswith("k-"):
            seen.setdefault(v, []).append((m.partition, m.offset))
    c.close()
    lost = [v for v in acked if v not in seen]
    dups = sum(1 for v in seen.values() if len(v) > 1)
    if lost:
        fail(f"lost-write: {len(lost)} acknowledged values never read, e.g. {lost[:5]}")
    print(f"kafka-python: {len(acked)} acknowledged ({failed} failed after retries), all read; "
          f"{dups} stored twice by client retries")


def cli_replication_factor():
    """`ringmq topic create --replication-factor` through a node that need not lead the
    controller quorum: 3 copies are placed on the 3 nodes, 4 are refused."""
    native = f"127.0.0.1:{PORTS[2]['native']}"
    p = subprocess.run([BINARY, "topic", "create", "cli-rf3", "--partitions", "2",
                        "--replication-factor", "3", "--brokers", native],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        fail(f"ringmq topic create --replication-factor 3: {p.stderr.decode()[-500:]}")
    deadline = time.time() + 15
    while True:
        t = metadata().topics.get("cli-rf3")
        if t and len(t.partitions) == 2 and all(
                sorted(q.replicas) == NODES for q in t.partitions.values()):
            break
        if time.time() > deadline:
            fail(f"cli-rf3 is not on the 3 nodes: {t and {q.id: q.replicas for q in t.partitions.values()}}")
        time.sleep(0.2)
    p = subprocess.run([BINARY, "topic", "create", "cli-rf4", "--replication-factor", "4",
                        "--brokers", native], capture_output=True, timeout=60)
    if p.returncode == 0 or b"replication factor" not in p.stderr.lower():
        fail(f"replication factor 4 on 3 nodes was not refused: {p.stderr.decode()[-500:]}")
    print("ringmq topic create --replication-factor: 3 placed on 3 nodes, 4 refused")


def kcat():
    cli_replication_factor()
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    lines = "".join(f"kcat-{i}\n" for i in range(2000))
    p = subprocess.run(["kcat", "-b", BOOTSTRAP, "-P", "-t", TOPIC, "-X", "acks=all",
                        "-X", "topic.partitioner=murmur2_random"],
                       input=lines.encode(), env=env, capture_output=True, timeout=120)
    if p.returncode != 0:
        fail(f"kcat produce: {p.stderr.decode()[-500:]}")
    kill_leader_and_restart(2, print)
    wait_full_isr(20)
    out = subprocess.run(["kcat", "-b", BOOTSTRAP, "-C", "-t", TOPIC, "-e", "-o", "beginning",
                          "-f", "%s\n"], env=env, capture_output=True, timeout=120)
    if out.returncode != 0:
        fail(f"kcat consume: {out.stderr.decode()[-500:]}")
    got = sorted(l for l in out.stdout.decode().splitlines() if l.startswith("kcat-"))
    want = sorted(lines.splitlines())
    if got != want:
        fail(f"kcat read {len(got)} of {len(want)} lines back")
    print(f"kcat: {len(want)} lines written with acks=all, read back after a leader kill")


def native():
    natives = ",".join(f"127.0.0.1:{PORTS[n]['native']}" for n in NODES)
    n = 6000
    producer = subprocess.Popen([BINARY, "produce", TOPIC, "--acks", "all", "--brokers", natives],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    victim = None
    for i in range(n):
        producer.stdin.write(f"n-{i}\n".encode())
        if i % 50 == 49:
            producer.stdin.flush()
            time.sleep(0.02)
        if i == n // 3:
            producer.stdin.flush()
            victim = kill_leader_and_restart(0, print)
    producer.stdin.close()
    producer.stdin = None
    try:
        out, err = producer.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        producer.kill()
        out, err = producer.communicate()
        fail(f"ringmq produce did not finish: {err.decode()[-800:]}")
    if producer.returncode != 0:
        fail(f"ringmq produce failed across the kill of node {victim}: {err.decode()[-800:]}")
    print(f"native: {n} lines produced with acks=all across the kill of node {victim}: "
          f"{err.decode().strip()}")
    wait_full_isr(20)
    c = subprocess.run([BINARY, "consume", TOPIC, "--format", "json", "--brokers", natives],
                       capture_output=True, timeout=120)
    if c.returncode != 0:
        fail(f"ringmq consume: {c.stderr.decode()[-800:]}")
    seen, at = {}, {}
    for line in c.stdout.decode().splitlines():
        r = json.loads(line)
        v, where = r["value"], (r["partition"], r["offset"])
        if where in at:
            fail(f"offset {where} read twice")
        at[where] = v
        if v in seen:
            fail(f"{v} stored twice: at {seen[v]} and {where}")
        seen[v] = where
    lost = [f"n-{i}" for i in range(n) if f"n-{i}" not in seen]
    if lost:
        fail(f"lost-write: {len(lost)} acknowledged lines never read, e.g. {lost[:5]}")
    print(f"native: all {n} read back once")


def groups():
    """A consumer group across the loss of its coordinator's node: its committed offsets
    and its membership live in the replicated groups' topic, so another node takes the
    group over and the consumer goes on where it was."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    n, group = 6000, "survivor"
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 2})

    def produce(prefix, count):
        for i in range(count):
            producer.produce(TOPIC, key=str(i).encode(), value=f"{prefix}-{i}".encode())
            producer.poll(0)
        if producer.flush(60):
            fail(f"{prefix}: values left unsent")

    produce("g", n)
    parts = [TopicPartition(TOPIC, p) for p in range(3)]
    config = {"bootstrap.servers": BOOTSTRAP, "group.id": group,
              "enable.auto.commit": False, "auto.offset.reset": "earliest",
              "session.timeout.ms": 10000}
    c = Consumer(config)
    c.subscribe([TOPIC])
    read, since_commit = {}, 0

    def consume_until(target, timeout):
        nonlocal since_commit
        deadline = time.time() + timeout
        while len(read) < target:
            if time.time() > deadline:
                fail(f"read {len(read)} of {target} values within {timeout} s")
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            v = m.value().decode()
            read[v] = read.get(v, 0) + 1
            since_commit += 1
            if since_commit >= 200:
                commit()

    def commit():
        nonlocal since_commit
        if since_commit == 0:
            return
        # A commit that meets the coordinator's move fails retriably; it is retried.
        for attempt in range(60):
            try:
                c.commit(asynchronous=False)
                since_commit = 0
                return
            except KafkaException as e:
                if not e.args[0].retriable() and attempt > 0 and "COORDINATOR" not in str(e):
                    raise
                time.sleep(0.5)
        fail("commits failed for 30 s")

    def committed():
        for _ in range(60):
            try:
                return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
            except KafkaException:
                time.sleep(0.5)
        fail("the committed offsets could not be read for 30 s")

    consume_until(n // 2, 60)
    commit()
    before = committed()
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    coordinator = admin.describe_consumer_groups([group])[group].result(timeout=30).coordinator.id
    print(f"read {len(read)}, committed {before}; killing node {coordinator}, the group's coordinator")
    kill(coordinator)
    after = committed()
    if after != before:
        fail(f"committed offsets changed across the coordinator's loss: {before} -> {after}")
    consume_until(n, 90)
    commit()
    ends = committed()
    now = admin.describe_consumer_groups([group])[group].result(timeout=30)
    if now.coordinator.id == coordinator:
        fail(f"node {coordinator} is dead and still named the coordinator")
    print(f"all {n} read; committed {ends} on node {now.coordinator.id}, "
          f"{len(now.members)} member(s), state {now.state}")
    member = c.memberid()
    c.close()
    # The new coordinator took the group over with its members (the membership was
    # replicated too): no node started a second generation while the member lived.
    rebalances = 0
    for node in NODES:
        with open(os.path.join(WORK, f"node{node}.log"), errors="replace") as f:
            rebalances += sum(1 for line in f if "group rebalanced" in line and group in line)
    if rebalances != 1:
        fail(f"the group rebalanced {rebalances} times, not once, across its coordinator's loss")
    start(coordinator)
    twice = sum(1 for k in read.values() if k > 1)
    # A new member of the group starts at the committed offsets: it reads only what
    # is produced now.
    produce("late", 300)
    c = Consumer(config)
    c.subscribe([TOPIC])
    late, old = set(), []
    deadline = time.time() + 60
    while len(late) < 300 and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        v = m.value().decode()
        (late.add(v) if v.startswith("late-") else old.append(v))
    c.close()
    if old:
        fail(f"a new member re-read {len(old)} committed values, e.g. {old[:3]}: commits lost")
    if len(late) < 300:
        fail(f"a new member read {len(late)} of the 300 new values")
    print(f"groups: {n} values read ({twice} twice) by member {member} across the loss of "
          f"coordinator node {coordinator}, one generation; committed offsets kept; a new "
          f"member resumed at them")


def native_groups():
    natives = ",".join(f"127.0.0.1:{PORTS[n]['native']}" for n in NODES)
    n, group = 4000, "native-survivor"
    p = subprocess.run([BINARY, "produce", TOPIC, "--acks", "all", "--brokers", natives],
                       input="".join(f"g-{i}\n" for i in range(n)).encode(),
                       capture_output=True, timeout=120)
    if p.returncode != 0:
        fail(f"ringmq produce: {p.stderr.decode()[-800:]}")

    def member(count):
        c = subprocess.run([BINARY, "consume", TOPIC, "--group", group, "--count", str(count),
                            "--format", "json", "--brokers", natives],
                           capture_output=True, timeout=120)
        if c.returncode != 0:
            fail(f"ringmq consume --group: {c.stderr.decode()[-800:]}")
        # stderr: "joined group G as member M, generation N, coordinator node K; ..."
        joined = [l for l in c.stderr.decode().splitlines() if l.startswith("joined group")]
        if not joined:
            fail(f"ringmq consume --group did not say it joined: {c.stderr.decode()[-800:]}")
        node = int(joined[-1].split("coordinator node ")[1].split(";")[0])
        return [json.loads(line)["value"] for line in c.stdout.decode().splitlines()], node

    first, before = member(n // 2)
    print(f"native-groups: first member read {len(first)}, committed and left; "
          f"killing node {before}, the group's coordinator")
    kill(before)
    second, after = member(n - n // 2)
    start(before)
    if after == before:
        fail(f"node {before} is dead and still named the coordinator")
    twice = set(first) & set(second)
    if twice:
        fail(f"{len(twice)} values read by both members, e.g. {sorted(twice)[:3]}: "
             "the committed offsets were lost with the coordinator")
    missing = [f"g-{i}" for i in range(n) if f"g-{i}" not in set(first) | set(second)]
    if missing:
        fail(f"{len(missing)} values read by neither member, e.g. {missing[:3]}")
    print(f"native-groups: the second member read the other {len(second)} through node "
          f"{after}, the new coordinator; none twice, none missing")


try:
    setup()
    {"confluent": confluent, "kafka-python": kafka_python, "kcat": kcat,
     "native": native, "groups": groups, "native-groups": native_groups}[CLIENT]()
    wait_full_isr(20)
    check_metrics(10)
    if CLIENT == "native":
        check_console()
    print("final:", describe())
except Exception:
    # Not a check that failed (those exit through fail()): a client call that raised.
    # The nodes' logs say what the cluster was doing.
    import traceback
    traceback.print_exc()
    fail("the scenario raised an exception (traceback above)")
finally:
    stop_all()
