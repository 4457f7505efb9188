//! The Kafka listener with two Kafka clients for Node.js that do not use librdkafka:
//! KafkaJS (pure JavaScript; older API versions: Produce v7, Fetch v11, JoinGroup v5)
//! and @platformatic/kafka (pure JavaScript; the API versions of Kafka 3.5 to 4.x).
//! `scripts/test` installs both from `tests/kafka/node/package-lock.json` (npm ci); the
//! client side of each scenario is `tests/kafka/node/kafkajs.mjs` or `platformatic.mjs`,
//! with what they share in `common.mjs`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Broker;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/node")
}

/// A scenario that runs longer than this has hung: it is killed and the test fails.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `node <client>.mjs BOOTSTRAP SCENARIO`; panics with its output if it fails or
/// hangs. It runs in a process group of its own, so a hung scenario is killed with the
/// group members it started; its output goes to files, so nothing it leaves behind can
/// hold the test up.
fn scenario(client: &str, bootstrap: &str, name: &str) -> String {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/kafkajs").exists()
            && dir.join("node_modules/@platformatic/kafka").exists(),
        "{} has no node_modules with kafkajs and @platformatic/kafka: run scripts/test, \
         which installs the Node.js clients (npm ci)",
        dir.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(format!("{client}.mjs")))
        .args([bootstrap, name])
        .current_dir(&dir);
    common::run_scenario(cmd, &format!("{client}.mjs {name}"), SCENARIO_TIMEOUT)
}

fn broker(extra: &[&str]) -> (tempfile::TempDir, Broker, String) {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_args(&dir.path().join("data"), 2, extra);
    let bootstrap = b.kafka.to_string();
    (dir, b, bootstrap)
}

/// Runs one scenario of one client against a broker of its own, then stops the broker
/// (a clean shutdown is part of the test).
fn run(client: &str, name: &str, extra: &[&str]) -> String {
    let (_dir, b, bootstrap) = broker(extra);
    let out = scenario(client, &bootstrap, name);
    b.stop();
    out
}

/// Asserts that the client used these API versions (the line each scenario ends with:
/// `<client>: API versions used: Fetch v17, Metadata v12, ...`). KafkaJS must keep
/// working with the old versions it knows; @platformatic/kafka picks the newest it
/// implements within what the broker advertises, so this tells the broker advertises
/// them.
fn assert_versions(out: &str, client: &str, want: &[(&str, i16)]) {
    let prefix = format!("{client}: API versions used: ");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"));
    for (api, version) in want {
        let used: Vec<i16> = line
            .split(", ")
            .find_map(|e| e.strip_prefix(&format!("{api} v")))
            .map(|vs| vs.split('/').map(|v| v.parse().unwrap()).collect())
            .unwrap_or_default();
        assert!(
            used.contains(version),
            "{client} used {api} {used:?}, expected v{version}: {line}"
        );
    }
}

/// Groups form faster than with Kafka's default 3 s initial rebalance delay.
const GROUP_ARGS: &[&str] = &["--group-initial-rebalance-delay-ms", "1000"];

// --- KafkaJS ------------------------------------------------------------------------

#[test]
fn kafkajs_admin_create_list_describe_partitions_delete() {
    let out = run("kafkajs", "admin", &[]);
    assert_versions(
        &out,
        "kafkajs",
        &[
            ("CreateTopics", 3),
            ("DeleteTopics", 1),
            ("CreatePartitions", 1),
        ],
    );
    assert!(
        out.contains("kafkajs admin: raised partitions 3 -> 5"),
        "{out}"
    );
}

#[test]
fn kafkajs_produce_gzip_and_uncompressed_with_headers_reads_back_exactly() {
    let out = run("kafkajs", "roundtrip", &[]);
    assert_versions(
        &out,
        "kafkajs",
        &[
            ("Produce", 7),
            ("Fetch", 11),
            ("Metadata", 6),
            ("ApiVersions", 2),
        ],
    );
    for codec in ["none", "gzip"] {
        assert!(
            out.contains(&format!("kafkajs {codec}: 3000 records byte-identical")),
            "{out}"
        );
    }
}

#[test]
fn kafkajs_two_idempotent_producers_and_a_restart_store_each_record_once() {
    let out = run("kafkajs", "idempotent", &[]);
    assert_versions(&out, "kafkajs", &[("InitProducerId", 1), ("Produce", 7)]);
    assert!(
        out.contains("kafkajs idempotent after a producer restart: 4000 records"),
        "{out}"
    );
}

#[test]
fn kafkajs_group_shares_partitions_survives_member_kill_and_resumes() {
    let out = run("kafkajs", "group", GROUP_ARGS);
    assert_versions(
        &out,
        "kafkajs",
        &[
            ("GroupCoordinator", 2),
            ("JoinGroup", 5),
            ("SyncGroup", 3),
            ("OffsetFetch", 4),
        ],
    );
    assert!(
        out.contains("a new member of the group read exactly the 600 records"),
        "{out}"
    );
}

#[test]
fn kafkajs_offsets_by_timestamp() {
    let out = run("kafkajs", "timestamps", &[]);
    assert_versions(&out, "kafkajs", &[("ListOffsets", 3)]);
    assert!(out.contains("kafkajs timestamps: 8 lookups"), "{out}");
}

// --- @platformatic/kafka ------------------------------------------------------------

#[test]
fn platformatic_admin_create_list_describe_partitions_delete() {
    let out = run("platformatic", "admin", &[]);
    assert_versions(
        &out,
        "platformatic",
        &[
            ("CreateTopics", 7),
            ("DeleteTopics", 6),
            ("CreatePartitions", 3),
            ("DescribeConfigs", 4),
        ],
    );
    assert!(
        out.contains("platformatic admin: raised partitions 3 -> 5"),
        "{out}"
    );
}

#[test]
fn platformatic_produce_every_codec_with_headers_reads_back_exactly() {
    let out = run("platformatic", "roundtrip", &[]);
    assert_versions(
        &out,
        "platformatic",
        &[("Produce", 11), ("Fetch", 17), ("Metadata", 12)],
    );
    for codec in ["none", "gzip", "snappy", "lz4"] {
        assert!(
            out.contains(&format!(
                "platformatic {codec}: 3000 records byte-identical"
            )),
            "{out}"
        );
    }
}

#[test]
fn platformatic_two_idempotent_producers_and_a_restart_store_each_record_once() {
    let out = run("platformatic", "idempotent", &[]);
    assert_versions(
        &out,
        "platformatic",
        &[("InitProducerId", 5), ("Produce", 11)],
    );
    assert!(
        out.contains("platformatic idempotent after a producer restart: 4000 records"),
        "{out}"
    );
}

#[test]
fn platformatic_group_shares_partitions_survives_member_kill_and_resumes() {
    let out = run("platformatic", "group", GROUP_ARGS);
    assert_versions(
        &out,
        "platformatic",
        &[
            ("FindCoordinator", 6),
            ("JoinGroup", 9),
            ("SyncGroup", 5),
            ("Heartbeat", 4),
            ("LeaveGroup", 5),
            ("OffsetFetch", 9),
            ("Fetch", 17),
        ],
    );
    assert!(
        out.contains("a new member of the group read exactly the 600 records"),
        "{out}"
    );
}

#[test]
fn platformatic_offsets_by_timestamp() {
    let out = run("platformatic", "timestamps", &[]);
    assert_versions(&out, "platformatic", &[("ListOffsets", 9)]);
    assert!(out.contains("platformatic timestamps"), "{out}");
}
