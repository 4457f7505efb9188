//! The Kafka listener with real Kafka clients: confluent-kafka (librdkafka 2.16 from its
//! wheel), kafka-python, and kcat with Debian's librdkafka 2.0.2 and with the wheel's.
//! `scripts/test` installs them (a Python virtual environment in `.venv`, Debian's
//! kcat); the client side of each scenario is `tests/kafka/clients.py`.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Broker;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs the Kafka client suites",
        p.display()
    );
    p
}

/// A scenario that runs longer than this has hung: it is killed and the test fails.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs a scenario of clients.py; panics with its output if it fails or hangs. Its
/// output goes to files, so a helper process it leaves behind cannot hold the test up.
fn clients(bootstrap: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/kafka/clients.py"))
        .arg(bootstrap)
        .args(args);
    common::run_scenario(cmd, &format!("clients.py {args:?}"), SCENARIO_TIMEOUT)
}

fn kafka_broker(data: &Path, extra: &[&str]) -> (Broker, String) {
    let b = Broker::start_args(data, 2, extra);
    let bootstrap = b.kafka.to_string();
    (b, bootstrap)
}

#[test]
fn confluent_kafka_100k_keyed_messages_with_headers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    clients(
        &bootstrap,
        &["roundtrip", "confluent", "--messages", "100000"],
    );
}

#[test]
fn kafka_python_100k_keyed_messages_with_headers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    clients(
        &bootstrap,
        &["roundtrip", "kafka-python", "--messages", "100000"],
    );
}

#[test]
fn every_compression_codec_round_trips_with_both_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    let a = clients(&bootstrap, &["compression", "confluent"]);
    let b = clients(&bootstrap, &["compression", "kafka-python"]);
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        assert!(a.contains(&format!("confluent {codec}: 2000 messages")));
        assert!(b.contains(&format!("kafka-python {codec}: 2000 messages")));
    }
}

#[test]
fn admin_create_describe_delete_and_offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    clients(&bootstrap, &["admin"]);
}

#[test]
fn idempotent_producer_across_a_broker_kill_has_no_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = ["--default-partitions", "3"];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let bootstrap = kafka.to_string();
    let topic = "idempotent";
    let count = "40000";
    let mut producer = Command::new(python())
        .arg(root().join("tests/kafka/clients.py"))
        .args([&bootstrap, "produce-idempotent", topic, count])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(producer.stdout.take().unwrap()).lines();
    // Kill the broker (SIGKILL) a third of the way in, restart it on the same ports.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "produced 15000" {
            break;
        }
    }
    broker.kill();
    std::thread::sleep(Duration::from_millis(300));
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = producer.wait().unwrap();
    assert!(status.success(), "producer failed; its output: {rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("produced all"));
    clients(&bootstrap, &["verify-sequence", topic, count]);
}

/// kcat against the broker with a given librdkafka; returns `kcat -V`'s version line.
fn kcat_round_trip(bootstrap: &str, lib_dir: Option<&Path>) -> String {
    let kcat = |args: &[&str]| {
        let mut c = Command::new("kcat");
        c.args(["-b", bootstrap]).args(args);
        // `cargo test` puts build directories on LD_LIBRARY_PATH, among them the
        // librdkafka that rdkafka-sys builds: name the library explicitly.
        match lib_dir {
            Some(d) => c.env("LD_LIBRARY_PATH", d),
            None => c.env_remove("LD_LIBRARY_PATH"),
        };
        c
    };
    let version = kcat(&["-V"])
        .output()
        .expect("kcat is installed (scripts/test)");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let topic = format!("kcat-{}", std::process::id() + lib_dir.is_some() as u32);
    let input: String = (0..1000)
        .map(|i| format!("key{}:value {i}\n", i % 7))
        .collect();
    let mut p = kcat(&[
        "-P",
        "-t",
        &topic,
        "-K:",
        "-X",
        "topic.partitioner=murmur2_random",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(p.wait().unwrap().success());
    let out = kcat(&["-C", "-t", &topic, "-e", "-f", "%k:%s\n", "-o", "beginning"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    let mut want: Vec<&str> = input.lines().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "kcat read back what it wrote");
    version
}

#[test]
fn kcat_with_debian_and_wheel_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    let debian = kcat_round_trip(&bootstrap, None);
    assert!(debian.contains("librdkafka 2.0.2"), "{debian}");
    // The wheel's librdkafka, under the name kcat links against.
    let libs = std::fs::read_dir(root().join(".venv/lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages/confluent_kafka.libs"))
        .find(|p| p.exists())
        .expect("confluent-kafka is installed in .venv");
    let lib = std::fs::read_dir(&libs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("librdkafka")
        })
        .expect("the wheel bundles librdkafka");
    let shim = dir.path().join("lib");
    std::fs::create_dir_all(&shim).unwrap();
    std::os::unix::fs::symlink(&lib, shim.join("librdkafka.so.1")).unwrap();
    let wheel = kcat_round_trip(&bootstrap, Some(&shim));
    assert!(wheel.contains("librdkafka 2.16"), "{wheel}");
    println!(
        "kcat round trips with {} and {}",
        debian.trim(),
        wheel.trim()
    );
}

// --- bad input on the wire ----------------------------------------------------------

fn frame(api: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&api.to_be_bytes());
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&correlation.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.push(b't');
    b.extend_from_slice(body);
    let mut f = (b.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(&b);
    f
}

/// Sends bytes and reads until the broker closes the connection (or 5 s pass).
fn send_and_read(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn closed_without_answer(addr: std::net::SocketAddr, bytes: &[u8], what: &str) {
    let got = send_and_read(addr, bytes);
    assert!(
        got.is_empty(),
        "{what}: expected the connection closed, got {got:?}"
    );
}

#[test]
fn bad_kafka_requests_close_the_connection_and_never_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = kafka_broker(&dir.path().join("data"), &[]);
    let addr = b.kafka;
    closed_without_answer(addr, b"\x00\x00\x00\x10garbage garbage!", "garbage");
    closed_without_answer(addr, &frame(999, 0, 1, b""), "unknown API key");
    closed_without_answer(addr, &frame(0, 1, 1, b""), "Produce v1 (unsupported)");
    closed_without_answer(addr, &frame(3, 1, 1, &[0, 0]), "truncated Metadata body");
    // Element counts far beyond the frame: the decoder must fail, not allocate.
    closed_without_answer(
        addr,
        &frame(3, 1, 1, &i32::MAX.to_be_bytes()),
        "Metadata claiming 2^31 topics",
    );
    let mut produce = Vec::new();
    produce.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    produce.extend_from_slice(&1i16.to_be_bytes());
    produce.extend_from_slice(&1000i32.to_be_bytes());
    produce.extend_from_slice(&i32::MAX.to_be_bytes());
    closed_without_answer(
        addr,
        &frame(0, 3, 1, &produce),
        "Produce claiming 2^31 topics",
    );
    // A frame cut short: the broker waits for the rest, the client leaves.
    let f = frame(18, 0, 1, b"");
    drop(send_and_read_nowait(addr, &f[..f.len() - 2]));
    // A frame longer than the limit.
    closed_without_answer(addr, &(200u32 << 20).to_be_bytes(), "oversized frame");
    // ApiVersions in a version from the future: v0 answer with UNSUPPORTED_VERSION.
    let got = send_and_read_one(addr, &frame(18, 99, 7, b""));
    assert_eq!(&got[4..8], &7i32.to_be_bytes(), "correlation id");
    assert_eq!(&got[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    // The broker still answers.
    let got = send_and_read_one(addr, &frame(18, 0, 8, b""));
    assert_eq!(&got[8..10], &0i16.to_be_bytes());
    b.stop();
}

fn send_and_read_nowait(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    s
}

fn send_and_read_one(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let mut out = len.to_vec();
    out.extend_from_slice(&body);
    out
}

/// The broker's counters over the native protocol.
fn broker_stats(addr: std::net::SocketAddr) -> std::collections::HashMap<String, u64> {
    use ringmq_net::codec::{self, ApiKey, Request, Response};
    let frame = codec::encode_request(1, &Request::BrokerStats);
    let got = send_and_read_one(addr, &frame);
    match codec::decode_response(ApiKey::BrokerStats, bytes::Bytes::from(got[4..].to_vec())) {
        Ok((_, Response::Stats(v))) => v.into_iter().collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kafka_fetches_of_on_disk_data_go_file_to_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    // 4 MiB in one partition: all but the tail below the last 64 KiB boundary is served
    // from the segment file.
    let line = "x".repeat(1023);
    let input: String = (0..4096).map(|_| format!("{line}\n")).collect();
    let mut p = Command::new("kcat")
        .args(["-b", &bootstrap, "-P", "-t", "zc", "-p", "0"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(p.wait().unwrap().success());
    let before = broker_stats(b.addr);
    let out = Command::new("kcat")
        .args([
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "zc",
            "-p",
            "0",
            "-e",
            "-o",
            "beginning",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        input,
        "kcat read back every line"
    );
    let after = broker_stats(b.addr);
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0);
    let spliced = delta("send_file_bytes_spliced");
    assert!(
        spliced >= 3 << 20,
        "at least 3 MiB should go file → socket, got {spliced} ({after:?})"
    );
    assert_eq!(delta("send_file_bytes_copied"), 0);
    println!("kafka fetch: {spliced} bytes spliced file → socket, none copied");
}

// --- consumer groups ----------------------------------------------------------------

#[test]
fn confluent_group_shares_partitions_survives_member_kill_and_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = ["--group-initial-rebalance-delay-ms", "500"];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let bootstrap = kafka.to_string();
    let out = clients(&bootstrap, &["group-share", "gtopic", "gconf", "confluent"]);
    assert!(out.contains("3 members share 6 partitions"));
    // Committed means durable: SIGKILL the broker, restart it, resume the group.
    broker.kill();
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    clients(&bootstrap, &["group-resume", "gtopic", "gconf"]);
}

#[test]
fn kafka_python_group_shares_partitions_survives_member_kill_and_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = ["--group-initial-rebalance-delay-ms", "500"];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let bootstrap = kafka.to_string();
    clients(
        &bootstrap,
        &["group-share", "gtopic", "gpy", "kafka-python"],
    );
    // What kafka-python committed is durable and honoured after a broker SIGKILL.
    broker.kill();
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    clients(&bootstrap, &["group-resume", "gtopic", "gpy"]);
}

#[test]
fn kcat_balanced_consumers_share_a_topic_and_survive_a_member_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(
        &dir.path().join("data"),
        &[
            "--group-initial-rebalance-delay-ms",
            "1500",
            "--default-partitions",
            "6",
        ],
    );
    let produce = |from: u32, to: u32| {
        let input: String = (from..to).map(|i| format!("k{i}:{i}\n")).collect();
        let mut p = Command::new("kcat")
            .env_remove("LD_LIBRARY_PATH")
            .args(["-b", &bootstrap, "-P", "-t", "kg", "-K:"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        assert!(p.wait().unwrap().success());
    };
    produce(0, 6000);
    // Three balanced consumers (Debian's librdkafka 2.0.2), output to files.
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("kcat{i}.out")))
        .collect();
    let mut kcats: Vec<_> = outs
        .iter()
        .map(|out| {
            Command::new("kcat")
                .env_remove("LD_LIBRARY_PATH")
                .args([
                    "-b",
                    &bootstrap,
                    "-G",
                    "kcatgroup",
                    "-X",
                    "auto.offset.reset=earliest",
                ])
                .args([
                    "-X",
                    "session.timeout.ms=6000",
                    "-X",
                    "heartbeat.interval.ms=500",
                ])
                .args(["-f", "%p %s\n", "-u", "kg"])
                .stdout(std::fs::File::create(out).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let read = |out: &Path| -> Vec<(u32, u32)> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (p, v) = l.split_once(' ')?;
                Some((p.parse().ok()?, v.parse().ok()?))
            })
            .collect()
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let seen = |outs: &[PathBuf]| -> std::collections::BTreeSet<u32> {
        outs.iter().flat_map(|o| read(o)).map(|(_, v)| v).collect()
    };
    wait("the first 6000 records", &|| seen(&outs).len() >= 6000);
    // One generation: each partition was read by one consumer only.
    let owners: Vec<std::collections::BTreeSet<u32>> = outs
        .iter()
        .map(|o| read(o).into_iter().map(|(p, _)| p).collect())
        .collect();
    for (i, a) in owners.iter().enumerate() {
        assert!(!a.is_empty(), "consumer {i} got partitions: {owners:?}");
        for b in &owners[i + 1..] {
            assert!(
                a.is_disjoint(b),
                "partitions consumed by two members: {owners:?}"
            );
        }
    }
    // SIGKILL one; the others take its partitions after its session timeout.
    kcats[0].kill().unwrap();
    kcats[0].wait().unwrap();
    produce(6000, 12000);
    wait("all 12000 records", &|| seen(&outs).len() >= 12000);
    let moved: std::collections::BTreeSet<u32> = outs[1..]
        .iter()
        .flat_map(|o| read(o))
        .filter(|(p, v)| *v >= 6000 && owners[0].contains(p))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        moved, owners[0],
        "the killed consumer's partitions moved to the others"
    );
    for k in &mut kcats[1..] {
        k.kill().unwrap();
        k.wait().unwrap();
    }
    println!(
        "kcat -G: 3 consumers shared 6 partitions {owners:?}; after a SIGKILL the others read partitions {moved:?}"
    );
}

#[test]
fn group_commands_describe_reset_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (b, bootstrap) = kafka_broker(
        &dir.path().join("data"),
        &[
            "--group-initial-rebalance-delay-ms",
            "200",
            "--default-partitions",
            "2",
        ],
    );
    let ringmq = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .arg("group")
            .args(args)
            .env("RINGMQ_KAFKA_BROKERS", &bootstrap)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let input: String = (0..10).map(|i| format!("{i}\n")).collect();
    let mut p = Command::new("kcat")
        .args(["-b", &bootstrap, "-P", "-t", "gc"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(p.wait().unwrap().success());
    // One member that reads everything and commits, then stays.
    let mut member = Command::new(python())
        .arg(root().join("tests/kafka/clients.py"))
        .args([
            &bootstrap,
            "group-member-confluent",
            "gc",
            "cli",
            "cli-member",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(member.stdout.take().unwrap()).lines();
    let mut read = 0;
    for line in lines.by_ref() {
        if line.unwrap().contains("\"msg\"") {
            read += 1;
            if read == 10 {
                break;
            }
        }
    }
    // Its commit lands right after its poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let described = loop {
        let o = ringmq(&["describe", "cli"]);
        let t = text(&o);
        if t.contains("total lag 0") && t.contains("cli-member") {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "describe never showed lag 0: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(described.contains("state     Stable"), "{described}");
    assert!(described.contains("members   1"), "{described}");
    assert!(
        described.contains("gc[0, 1]"),
        "the member's assignment: {described}"
    );
    let list = text(&ringmq(&["list"]));
    assert!(list.contains("cli") && list.contains("Stable"), "{list}");
    // Refused while the group has a member.
    let o = ringmq(&["reset-offsets", "cli", "--topic", "gc", "--to", "earliest"]);
    assert!(
        !o.status.success() && text(&o).contains("has 1 member"),
        "{}",
        text(&o)
    );
    let o = ringmq(&["delete", "cli"]);
    assert!(
        !o.status.success() && text(&o).contains("has 1 member"),
        "{}",
        text(&o)
    );
    // Stop the member (it leaves the group), then reset and delete.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(member.id() as i32, libc::SIGTERM) };
    assert!(member.wait().unwrap().success());
    let o = ringmq(&["reset-offsets", "cli", "--topic", "gc", "--to", "earliest"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&ringmq(&["describe", "cli"]));
    assert!(t.contains("total lag 10"), "after reset to earliest: {t}");
    let o = ringmq(&["reset-offsets", "cli", "--topic", "gc", "--to", "nonsense"]);
    assert!(
        !o.status.success() && text(&o).contains("expected earliest"),
        "{}",
        text(&o)
    );
    let o = ringmq(&["delete", "cli"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&ringmq(&["list"])).contains("cli "));
    let o = ringmq(&["describe", "cli"]);
    assert!(
        !o.status.success() && text(&o).contains("unknown group"),
        "{}",
        text(&o)
    );
    b.stop();
}

#[test]
fn the_group_log_is_compacted_and_offsets_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = [
        "--group-log-compact-bytes",
        "65536",
        "--default-partitions",
        "6",
    ];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let bootstrap = kafka.to_string();
    let mut p = Command::new("kcat")
        .args(["-b", &bootstrap, "-P", "-t", "compact"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"x\n").unwrap();
    assert!(p.wait().unwrap().success());
    clients(&bootstrap, &["commit-many", "compact", "cg", "3000"]);
    clients(&bootstrap, &["check-committed", "compact", "cg", "3000"]);
    broker.kill();
    // 3000 commits of 6 offsets are 18 000 records; each shard's group log now has one
    // generation past the first, holding a snapshot and what came after it.
    let mut records = 0;
    for shard in std::fs::read_dir(data.join("__ringmq_groups")).unwrap() {
        let gens: Vec<_> = std::fs::read_dir(shard.unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(gens.len(), 1, "one generation per shard: {gens:?}");
        let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .arg("log")
            .arg(&gens[0])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let end: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("end offset"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        records += end;
    }
    assert!(records < 6_000, "{records} records left after compaction");
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    clients(&bootstrap, &["check-committed", "compact", "cg", "3000"]);
    println!("group logs: {records} records left of 18000 committed");
}

#[test]
fn cooperative_sticky_and_static_members_with_confluent_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(
        &dir.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "500"],
    );
    // Cooperative (incremental) rebalancing is client-side: the same guarantees hold.
    let out = clients(
        &bootstrap,
        &[
            "group-share",
            "coop",
            "gcoop",
            "confluent",
            "cooperative-sticky",
        ],
    );
    assert!(out.contains("cooperative-sticky"));
    clients(&bootstrap, &["group-static", "static", "gstatic"]);
}

/// Regression: producers that sent InitProducerId with producer id 0 all got id 0, and
/// the second producer's batches were acknowledged as the first one's retries and not
/// stored. Two idempotent producers at once and a restart, with both clients.
#[test]
fn two_idempotent_producers_and_a_restart_store_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    for client in ["kafka-python", "confluent"] {
        let out = clients(&bootstrap, &["idempotent-pair", client]);
        assert!(out.contains("all stored once"), "{out}");
    }
}

/// A transactional producer fails within a second, and says why.
#[test]
fn transactional_producers_fail_fast_saying_transactions_are_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    let out = clients(&bootstrap, &["transactions"]);
    assert!(out.contains("transactions are not supported"), "{out}");
}

/// `min.insync.replicas` above the in-sync replicas (one, on a single node): acks=all
/// is refused with NOT_ENOUGH_REPLICAS and nothing is stored; acks=1 is stored.
#[test]
fn min_insync_replicas_refuses_acks_all_with_confluent_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, bootstrap) = kafka_broker(&dir.path().join("data"), &[]);
    let out = clients(&bootstrap, &["min-insync"]);
    assert!(
        out.contains("acks=all refused with NOT_ENOUGH_REPLICAS"),
        "{out}"
    );
}
