//! The admin HTTP listener of a real broker (`ringmq serve --admin-listen`): its
//! Prometheus metrics, checked with the Prometheus client library's parser
//! (`tests/admin/metrics.py`) against what was produced and consumed, and its JSON API
//! with its errors. The broker must survive every bad request.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sends `request` as is and returns (status, body).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn send_json(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = raw(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

/// The status and error code of a request the API must refuse.
fn refusal(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, e) = send_json(addr, method, path, body);
    let code = e["error"]["code"].as_str().unwrap_or_default().to_string();
    (status, code)
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

fn ringmq(broker: &common::Broker, args: &[&str], stdin: &str) -> String {
    common::ringmq_cli(broker, args, stdin)
}

/// Every sample of `name` whose labels include `want`, as values.
fn values(samples: &[Value], name: &str, want: &[(&str, &str)]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s[0] == name)
        .filter(|s| want.iter().all(|(k, v)| s[1][k] == *v))
        .map(|s| s[2].as_f64().unwrap())
        .collect()
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_clients_did() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which installs prometheus-client",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start_with(dir.path(), 2);
    ringmq(
        &broker,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    );
    let lines: String = (0..600).map(|i| format!("value-{i}\n")).collect();
    ringmq(&broker, &["produce", "orders"], &lines);
    // A native group reads 200 of them and commits: 400 left to read.
    ringmq(
        &broker,
        &["consume", "orders", "--group", "billing", "--count", "200"],
        "",
    );

    let (status, text) = get(broker.admin, "/metrics");
    assert_eq!(status, 200);
    let out = common::run_with_input(
        Command::new(&python).arg(root().join("tests/admin/metrics.py")),
        &text,
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = parsed["samples"].as_array().unwrap();
    let sum = |name: &str, want: &[(&str, &str)]| values(samples, name, want).iter().sum::<f64>();

    assert_eq!(
        parsed["families"]["ringmq_produce_duration_seconds"],
        "histogram"
    );
    assert_eq!(sum("ringmq_shards", &[]), 2.0);
    assert_eq!(
        sum("ringmq_partition_records_in_total", &[("topic", "orders")]),
        600.0
    );
    assert_eq!(
        sum("ringmq_partition_high_watermark", &[("topic", "orders")]),
        600.0
    );
    assert_eq!(
        values(
            samples,
            "ringmq_partition_log_end_offset",
            &[("topic", "orders")]
        )
        .len(),
        3,
        "one per partition"
    );
    assert!(sum("ringmq_partition_bytes_in_total", &[("topic", "orders")]) > 600.0 * 9.0);
    assert!(
        sum(
            "ringmq_partition_bytes_out_total",
            &[("topic", "orders"), ("reader", "consumer")]
        ) > 0.0
    );
    assert!(
        sum(
            "ringmq_partition_records_out_total",
            &[("topic", "orders"), ("reader", "consumer")]
        ) >= 200.0,
        "the group read 200"
    );
    assert!(sum("ringmq_produce_requests_total", &[]) >= 1.0);
    assert!(sum("ringmq_produce_duration_seconds_count", &[]) >= 1.0);
    assert!(sum("ringmq_fetch_requests_total", &[("reader", "consumer")]) >= 1.0);
    assert!(
        sum("ringmq_log_syncs_total", &[]) >= 1.0,
        "every_batch syncs each produce"
    );
    assert_eq!(
        sum("ringmq_group_committed_offset", &[("group", "billing")]),
        200.0
    );
    assert_eq!(
        sum("ringmq_group_lag_offsets", &[("group", "billing")]),
        400.0,
        "high watermarks 600 in all, 200 committed"
    );
    assert!(sum("ringmq_memory_budget_bytes", &[]) > 0.0);
    // Every shard's executor submits to its own io_uring rings (sockets, timers, its
    // wake-up eventfd), and consumes what completes.
    for shard in ["0", "1"] {
        for family in [
            "ringmq_uring_submissions_total",
            "ringmq_uring_completions_total",
        ] {
            assert!(
                sum(family, &[("shard", shard), ("ring", "glommio")]) > 0.0,
                "{family} of shard {shard}'s glommio rings"
            );
        }
    }

    // `ringmq top` shows the same from the terminal: one refresh, printed.
    let top = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["top", "--count", "1", "--interval", "0.2", "--admin"])
        .arg(broker.admin.to_string())
        .output()
        .unwrap();
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let screen = String::from_utf8_lossy(&top.stdout);
    assert!(screen.contains("2 shard(s)"), "{screen}");
    let group_line = screen
        .lines()
        .find(|l| l.starts_with("billing "))
        .unwrap_or_else(|| panic!("no line for group billing:\n{screen}"));
    assert_eq!(
        group_line.split_whitespace().nth(2),
        Some("400"),
        "lag 400: {group_line}"
    );
    assert!(screen.lines().any(|l| l.starts_with("orders ")), "{screen}");
    broker.stop();
}

#[test]
fn the_admin_api_answers_json_and_refuses_bad_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start_with(dir.path(), 2);
    ringmq(
        &broker,
        &["topic", "create", "orders", "--partitions", "2"],
        "",
    );
    ringmq(
        &broker,
        &["produce", "orders", "--partition", "1"],
        "a\nb\nc\n",
    );
    let admin = broker.admin;

    assert_eq!(
        get_json(admin, "/v1/health"),
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, ready) = get_json(admin, "/v1/ready");
    assert_eq!((status, &ready["ready"]), (200, &Value::Bool(true)));
    let (_, b) = get_json(admin, "/v1/broker");
    assert_eq!(b["shards"], 2);
    assert_eq!(b["node_id"], 0);
    let (_, topics) = get_json(admin, "/v1/topics");
    assert_eq!(
        topics["topics"],
        serde_json::json!([{"name": "orders", "partitions": 2, "internal": false}])
    );
    let (status, t) = get_json(admin, "/v1/topics/orders");
    assert_eq!(status, 200);
    assert_eq!(t["partitions"][1]["high_watermark"], 3);
    assert_eq!(t["partitions"][0]["high_watermark"], 0);
    assert_eq!(t["partitions"][1]["leader"], 0);

    // Errors: JSON with a code, and the right status.
    let (status, e) = get_json(admin, "/v1/topics/nope");
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "UnknownTopic");
    let (status, e) = get_json(admin, "/v1/nothing-here");
    assert_eq!(status, 404);
    assert!(e["endpoints"].as_array().unwrap().len() >= 5);
    let (status, _) = raw(
        admin,
        b"DELETE /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
    let (status, _) = raw(admin, b"\x16\x03\x01 this is not HTTP\r\n\r\n");
    assert_eq!(status, 400);
    let huge = format!(
        "GET /v1/health HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "x".repeat(20_000)
    );
    assert_eq!(raw(admin, huge.as_bytes()).0, 431);
    assert_eq!(
        raw(
            admin,
            b"POST /v1/topics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
        )
        .0,
        413
    );
    // A client that sends half a request and vanishes.
    {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /metr").unwrap();
    }
    // Keep-alive: two requests on one connection, both answered.
    let (status, body) = raw(
        admin,
        b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(body.contains("\"ready\": true"), "{body}");

    // Topic actions.
    let (status, v) = send_json(
        admin,
        "POST",
        "/v1/topics",
        r#"{"name": "made", "partitions": 3, "configs": {"retention.ms": "60000"}}"#,
    );
    assert_eq!((status, &v["created"]), (201, &Value::from("made")), "{v}");
    let (_, t) = get_json(admin, "/v1/topics/made");
    assert_eq!(t["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(t["configs"]["retention.ms"], "60000");
    assert_eq!(
        refusal(
            admin,
            "POST",
            "/v1/topics",
            r#"{"name": "made", "partitions": 1}"#
        ),
        (409, "TopicExists".to_string())
    );
    assert_eq!(
        refusal(
            admin,
            "POST",
            "/v1/topics",
            r#"{"name": "x", "partitions": "many"}"#
        ),
        (400, "bad_request".to_string())
    );
    assert_eq!(
        refusal(
            admin,
            "POST",
            "/v1/topics",
            r#"{"name": "bad/name", "partitions": 1}"#
        ),
        (400, "InvalidTopic".to_string())
    );
    let (status, _) = send_json(admin, "DELETE", "/v1/topics/made", "");
    assert_eq!(status, 200);
    assert_eq!(get_json(admin, "/v1/topics/made").0, 404);

    // Groups: a native group reads 2 of the 3 records and commits.
    ringmq(
        &broker,
        &["consume", "orders", "--group", "audit", "--count", "2"],
        "",
    );
    let (_, gs) = get_json(admin, "/v1/groups");
    assert_eq!(gs["groups"][0]["name"], "audit", "{gs}");
    assert_eq!(gs["groups"][0]["state"], "Empty");
    let (status, g) = get_json(admin, "/v1/groups/audit");
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["lag"], 1, "{g}");
    assert_eq!(g["members"], serde_json::json!([]));
    let p1 = g["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["partition"] == 1)
        .unwrap();
    assert_eq!(
        (&p1["committed"], &p1["high_watermark"], &p1["lag"]),
        (&Value::from(2), &Value::from(3), &Value::from(1))
    );
    assert_eq!(get_json(admin, "/v1/groups/nobody").0, 404);
    // A live member: its assigned partitions, and per partition who reads it.
    let mut live = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["consume", "orders", "--group", "live", "--follow"])
        .env("RINGMQ_BROKERS", broker.addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let g = loop {
        let (status, g) = get_json(admin, "/v1/groups/live");
        // Stable, and the member has committed (`ringmq consume` commits every 5 s).
        if status == 200 && g["state"] == "Stable" && !g["offsets"].as_array().unwrap().is_empty() {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the live member never showed with committed offsets: {g}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = live.kill();
    let _ = live.wait();
    let members = g["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{g}");
    assert_eq!(
        members[0]["assignment"],
        serde_json::json!([{"topic": "orders", "partitions": [0, 1]}]),
        "{g}"
    );
    for o in g["offsets"].as_array().unwrap() {
        assert_eq!(o["member"], members[0]["member_id"], "{g}");
    }
    // A group id with characters a path must escape.
    ringmq(
        &broker,
        &[
            "consume",
            "orders",
            "--group",
            "night shift/2",
            "--count",
            "1",
        ],
        "",
    );
    let (status, g) = get_json(admin, "/v1/groups/night%20shift%2F2");
    assert_eq!((status, &g["lag"]), (200, &Value::from(2)), "{g}");
    // Offsets reset: to the start, to an offset, and refusals.
    let (status, v) = send_json(
        admin,
        "POST",
        "/v1/groups/audit/reset-offsets",
        r#"{"topic": "orders", "to": "earliest"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(get_json(admin, "/v1/groups/audit").1["lag"], 3);
    let (status, _) = send_json(
        admin,
        "POST",
        "/v1/groups/audit/reset-offsets",
        r#"{"topic": "orders", "to": 3}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(get_json(admin, "/v1/groups/audit").1["lag"], 0);
    assert_eq!(
        refusal(
            admin,
            "POST",
            "/v1/groups/audit/reset-offsets",
            r#"{"topic": "orders", "to": "yesterday"}"#
        ),
        (400, "bad_request".to_string())
    );
    assert_eq!(
        refusal(
            admin,
            "POST",
            "/v1/groups/audit/reset-offsets",
            r#"{"topic": "nope", "to": "latest"}"#
        ),
        (404, "UnknownTopic".to_string())
    );
    // The broker's settings.
    let (status, c) = get_json(admin, "/v1/configs");
    assert_eq!(status, 200);
    assert_eq!(c["broker"]["admin_listen"], admin.to_string());
    assert_eq!(c["broker"]["flush"], "every_batch");
    assert_eq!(send_json(admin, "DELETE", "/v1/groups/audit", "").0, 200);
    assert_eq!(get_json(admin, "/v1/groups/audit").0, 404);

    // Still serving, data listeners included.
    assert_eq!(get(admin, "/v1/health").0, 200);
    assert_eq!(
        ringmq(&broker, &["consume", "orders", "--partition", "1"], ""),
        "a\nb\nc\n"
    );
    broker.stop();
}
