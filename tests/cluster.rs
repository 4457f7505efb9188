//! A 3-node cluster with real Kafka clients: confluent-kafka (idempotent, acks=all),
//! kafka-python and kcat, each producing and consuming across a kill -9 of a partition
//! leader and its restart, and a confluent-kafka consumer group across a kill -9 of its
//! coordinator's node. The nodes are `ringmq serve` processes on 127.0.0.1 (ports
//! chosen free at run time, one shard each, every node a controller voter); the client
//! side and the checks are `tests/kafka/cluster.py`, which starts and stops them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

fn scenario(client: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/kafka/cluster.py"))
        .arg(env!("CARGO_BIN_EXE_ringmq"))
        .arg(dir.path().join("cluster"))
        .arg(client);
    let out = common::run_scenario(
        cmd,
        &format!("cluster.py {client}"),
        Duration::from_secs(240),
    );
    assert!(
        out.contains("final:"),
        "the scenario ran to its end:\n{out}"
    );
}

#[test]
fn confluent_kafka_idempotent_acks_all_across_a_leader_kill_loses_and_duplicates_nothing() {
    scenario("confluent");
}

#[test]
fn kafka_python_acks_all_across_a_leader_kill_loses_nothing() {
    scenario("kafka-python");
}

#[test]
fn kcat_reads_back_what_it_wrote_across_a_leader_kill() {
    scenario("kcat");
}

#[test]
fn a_consumer_group_keeps_its_offsets_and_members_across_the_loss_of_its_coordinator() {
    scenario("groups");
}

#[test]
fn the_native_client_follows_leaders_across_a_leader_kill() {
    scenario("native");
}

#[test]
fn a_native_consumer_group_finds_its_new_coordinator_with_its_offsets() {
    scenario("native-groups");
}
