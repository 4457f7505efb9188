//! `ringmq topic`, `produce` and `consume` against `ringmq serve` on 127.0.0.1.

use std::io::Write;
use std::process::{Command, Output, Stdio};

mod common;
use common::Broker;

fn ringmq(broker: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .env("RINGMQ_BROKERS", broker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn topics_produce_and_consume_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let b = broker.addr.to_string();

    ok(&ringmq(
        &b,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "3",
            "--config",
            "retention_ms=86400000",
        ],
        None,
    ));
    ok(&ringmq(&b, &["topic", "create", "tmp"], None));
    assert_eq!(ok(&ringmq(&b, &["topic", "list"], None)), "logs\ntmp\n");
    ok(&ringmq(&b, &["topic", "delete", "tmp"], None));
    assert_eq!(ok(&ringmq(&b, &["topic", "list"], None)), "logs\n");

    // 300 keyed lines and one without a key, with a header.
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!("key{}|line {i}\n", i % 7));
    }
    input.push_str("no key here\n");
    let o = ringmq(
        &b,
        &[
            "produce",
            "logs",
            "--key-separator",
            "|",
            "--header",
            "source=test",
        ],
        Some(&input),
    );
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("produced 301 record(s)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let describe = ok(&ringmq(&b, &["topic", "describe", "logs"], None));
    assert!(describe.contains("partitions 3"), "{describe}");
    assert!(describe.contains("retention_ms=86400000"), "{describe}");

    // Text: every value once.
    let text = ok(&ringmq(
        &b,
        &["consume", "logs", "--from", "beginning"],
        None,
    ));
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    want.push("no key here".into());
    want.sort();
    assert_eq!(lines, want);

    // JSON: keys, headers, partitions as Kafka's partitioner places keys; in order.
    let json = ok(&ringmq(&b, &["consume", "logs", "--format", "json"], None));
    let mut last: std::collections::HashMap<u64, i64> = Default::default();
    let mut n = 0;
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["headers"]["source"], "test");
        let p = v["partition"].as_u64().unwrap();
        let off = v["offset"].as_i64().unwrap();
        if let Some(prev) = last.insert(p, off) {
            assert!(off > prev);
        }
        if let Some(k) = v["key"].as_str() {
            assert_eq!(
                p,
                u64::from(ringmq_client::partition_for_key(k.as_bytes(), 3))
            );
        }
        n += 1;
    }
    assert_eq!(n, 301);

    // --count, one partition, --from an offset.
    let two = ok(&ringmq(
        &b,
        &[
            "consume",
            "logs",
            "--count",
            "2",
            "--partition",
            "1",
            "--from",
            "1",
        ],
        None,
    ));
    assert_eq!(two.lines().count(), 2);
    let end = ok(&ringmq(&b, &["consume", "logs", "--from", "end"], None));
    assert_eq!(end, "");

    // Clear errors and non-zero exits.
    let o = ringmq(&b, &["consume", "nope"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown topic"));
    let o = ringmq(&b, &["consume", "logs", "--from", "yesterday"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--from yesterday"));
    let o = ringmq(&b, &["topic", "create", "logs"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    // A single node holds one copy; more is refused, naming why.
    ok(&ringmq(
        &b,
        &["topic", "create", "one", "--replication-factor", "1"],
        None,
    ));
    let o = ringmq(
        &b,
        &["topic", "create", "three", "--replication-factor", "3"],
        None,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("replication factor"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = ringmq(&b, &["produce", "logs", "--partition", "9"], Some("x\n"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no partition 9"));
    broker.stop();

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = ringmq(&free.to_string(), &["topic", "list"], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach the broker"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bench_reports_rates_and_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let b = broker.addr.to_string();
    let o = ringmq(
        &b,
        &[
            "bench",
            "--topic",
            "load",
            "--partitions",
            "2",
            "--producers",
            "2",
            "--consumers",
            "1",
            "--message-size",
            "200",
            "--rate",
            "2000",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
            "--json",
            "--html",
            dir.path().join("report.html").to_str().unwrap(),
        ],
        None,
    );
    let out = ok(&o);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let produced = r["produce"]["messages_per_sec"].as_f64().unwrap();
    assert!((1800.0..=2200.0).contains(&produced), "{r}");
    assert_eq!(
        r["consume"]["messages_per_sec"], r["produce"]["messages_per_sec"],
        "{r}"
    );
    let bytes = r["produce"]["bytes_per_sec"].as_f64().unwrap();
    assert!((bytes - produced * 200.0).abs() < 1.0, "{r}");
    assert_eq!(r["errors"], 0);
    for l in [&r["produce"]["ack_latency_us"], &r["end_to_end_latency_us"]] {
        let v = |k: &str| l[k].as_u64().unwrap();
        assert!(v("p50") > 0, "{r}");
        assert!(
            v("p50") <= v("p99") && v("p99") <= v("p999") && v("p999") <= v("max"),
            "{r}"
        );
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Latency distribution"));
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "self-contained"
    );
    // A progress line each second on stderr.
    assert!(String::from_utf8_lossy(&o.stderr).contains("msg/s"));
    let o = ringmq(&b, &["bench", "--message-size", "4"], None);
    assert!(!o.status.success());
    broker.stop();
}

#[test]
fn bench_kafka_driver_runs_the_same_workload_through_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let k = broker.kafka.to_string();
    let o = ringmq(
        &k,
        &[
            "bench",
            "--driver",
            "kafka",
            "--topic",
            "kload",
            "--partitions",
            "2",
            "--message-size",
            "300",
            "--rate",
            "1000",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
            "--json",
        ],
        None,
    );
    let out = ok(&o);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let produced = r["produce"]["messages_per_sec"].as_f64().unwrap();
    assert!((900.0..=1100.0).contains(&produced), "{r}");
    assert_eq!(
        r["consume"]["messages_per_sec"], r["produce"]["messages_per_sec"],
        "{r}"
    );
    assert_eq!(r["errors"], 0);
    assert_eq!(r["workload"]["driver"], "kafka");
    // The topic was created through the Kafka admin API with the partitions asked for.
    let o = ringmq(
        &broker.addr.to_string(),
        &["topic", "describe", "kload"],
        None,
    );
    assert!(ok(&o).contains("partitions 2"), "{}", ok(&o));
    broker.stop();
}
