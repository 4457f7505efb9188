//! `ringmq group`: consumer groups, through the Kafka listener (librdkafka via the
//! `rdkafka` crate), so the same commands also work against any Kafka-API broker, in
//! the manner of `kafka-consumer-groups.sh` and `rpk group`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the Kafka listener is.
#[derive(Args, Debug)]
pub struct KafkaArgs {
    /// The broker's Kafka listener, HOST:PORT
    #[arg(long, env = "RINGMQ_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka: String,
}

/// `ringmq group` subcommands.
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the consumer groups (with members or committed offsets) and their state.
    List,
    /// A group's members (client id, host, assigned partitions) and, per partition,
    /// its committed offset, log end offset and lag.
    Describe {
        /// The group.
        name: String,
    },
    /// Set a group's committed offsets for every partition of a topic. Refused while
    /// the group has members (stop its consumers first).
    ResetOffsets {
        /// The group.
        name: String,
        /// The topic whose partitions to reset.
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or @TIMESTAMP_MS (the first offset at or after it)
        #[arg(long)]
        to: String,
    },
    /// Delete a group and its committed offsets. Refused while the group has members.
    Delete {
        /// The group.
        name: String,
    },
}

fn config(k: &KafkaArgs) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.kafka)
        .set("log_level", "3")
        .set("socket.timeout.ms", "10000");
    c
}

fn consumer(k: &KafkaArgs, group: &str) -> anyhow::Result<BaseConsumer> {
    config(k)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a Kafka client")
}

/// Partitions assigned to a member, from its consumer-protocol assignment (a version,
/// then the assignment in that version).
pub(crate) fn parse_assignment(b: &[u8]) -> Vec<(String, Vec<i32>)> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let Some(version) = b.get(..2).map(|v| i16::from_be_bytes([v[0], v[1]])) else {
        return Vec::new();
    };
    let mut rest = bytes::Bytes::copy_from_slice(&b[2..]);
    ConsumerProtocolAssignment::decode(&mut rest, version.clamp(0, 3))
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|t| (t.topic.0.to_string(), t.partitions))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a `ringmq group` command.
pub fn group(k: KafkaArgs, cmd: GroupCommand) -> anyhow::Result<()> {
    let probe: BaseConsumer = config(&k).create().context("creating a Kafka client")?;
    match cmd {
        GroupCommand::List => {
            let list = probe
                .fetch_group_list(None, TIMEOUT)
                .with_context(|| format!("cannot list groups at {} (--kafka)", k.kafka))?;
            println!("{:<40} {:<20} {:>8}", "GROUP", "STATE", "MEMBERS");
            for g in list.groups() {
                println!(
                    "{:<40} {:<20} {:>8}",
                    g.name(),
                    g.state(),
                    g.members().len()
                );
            }
        }
        GroupCommand::Describe { name } => describe(&k, &probe, &name)?,
        GroupCommand::ResetOffsets { name, topic, to } => {
            refuse_if_active(&probe, &name, "reset its offsets")?;
            let md = probe
                .fetch_metadata(Some(&topic), TIMEOUT)
                .with_context(|| format!("cannot reach {} (--kafka)", k.kafka))?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .with_context(|| format!("unknown topic {topic:?}"))?;
            let c = consumer(&k, &name)?;
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                let id = p.id();
                let offset = match to.as_str() {
                    "earliest" => c.fetch_watermarks(&topic, id, TIMEOUT)?.0,
                    "latest" => c.fetch_watermarks(&topic, id, TIMEOUT)?.1,
                    ts if ts.starts_with('@') => {
                        let ts: i64 = ts[1..]
                            .parse()
                            .context("--to @TIMESTAMP_MS: not a number")?;
                        let mut q = TopicPartitionList::new();
                        q.add_partition_offset(&topic, id, Offset::Offset(ts))?;
                        let found = c.offsets_for_times(q, TIMEOUT)?;
                        match found.elements()[0].offset() {
                            Offset::Offset(o) => o,
                            // No record at or after it: the end.
                            _ => c.fetch_watermarks(&topic, id, TIMEOUT)?.1,
                        }
                    }
                    n => n.parse::<i64>().with_context(|| {
                        format!("--to {n}: expected earliest, latest, an offset or @TIMESTAMP_MS")
                    })?,
                };
                tpl.add_partition_offset(&topic, id, Offset::Offset(offset))?;
            }
            c.commit(&tpl, CommitMode::Sync)
                .with_context(|| format!("committing offsets for group {name:?}"))?;
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    println!("{} {} -> {o}", e.topic(), e.partition());
                }
            }
        }
        GroupCommand::Delete { name } => {
            refuse_if_active(&probe, &name, "delete it")?;
            let admin: AdminClient<DefaultClientContext> = config(&k)
                .create()
                .context("creating a Kafka admin client")?;
            let r = futures_lite::future::block_on(
                admin.delete_groups(&[name.as_str()], &AdminOptions::new()),
            )?;
            for g in r {
                match g {
                    Ok(_) => println!("deleted group {name}"),
                    Err((_, e)) => bail!("deleting group {name:?}: {e}"),
                }
            }
        }
    }
    Ok(())
}

fn refuse_if_active(probe: &BaseConsumer, name: &str, what: &str) -> anyhow::Result<()> {
    let list = probe.fetch_group_list(Some(name), TIMEOUT)?;
    if let Some(g) = list.groups().iter().find(|g| g.name() == name)
        && !g.members().is_empty()
    {
        bail!(
            "group {name:?} has {} member(s); stop its consumers before you {what}",
            g.members().len()
        );
    }
    Ok(())
}

fn describe(k: &KafkaArgs, probe: &BaseConsumer, name: &str) -> anyhow::Result<()> {
    let list = probe
        .fetch_group_list(Some(name), TIMEOUT)
        .with_context(|| format!("cannot describe group {name:?} at {} (--kafka)", k.kafka))?;
    let Some(g) = list.groups().iter().find(|g| g.name() == name) else {
        bail!("unknown group {name:?}");
    };
    println!("group     {}", g.name());
    println!("state     {}", g.state());
    println!("protocol  {}", g.protocol());
    println!("members   {}", g.members().len());
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in g.members() {
        let parts = m.assignment().map(parse_assignment).unwrap_or_default();
        let shown: Vec<String> = parts.iter().map(|(t, ps)| format!("{t}{ps:?}")).collect();
        println!(
            "  {} client {} host {} partitions {}",
            m.id(),
            m.client_id(),
            m.client_host(),
            shown.join(" ")
        );
        for (t, ps) in parts {
            for p in ps {
                owner.insert((t.clone(), p), m.client_id().to_string());
            }
        }
    }
    // Committed offsets: of every partition of every topic (OffsetFetch for all).
    let c = consumer(k, name)?;
    let md = c.fetch_metadata(None, TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    let committed = c.committed_offsets(tpl, TIMEOUT)?;
    println!(
        "{:<30} {:>9} {:>12} {:>12} {:>10}  MEMBER",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    );
    let mut total = 0i64;
    for e in committed.elements() {
        let Offset::Offset(o) = e.offset() else {
            continue;
        };
        let (_, end) = c.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
        let lag = (end - o).max(0);
        total += lag;
        println!(
            "{:<30} {:>9} {:>12} {:>12} {:>10}  {}",
            e.topic(),
            e.partition(),
            o,
            end,
            lag,
            owner
                .get(&(e.topic().to_string(), e.partition()))
                .map(String::as_str)
                .unwrap_or("-")
        );
    }
    println!("total lag {total}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_are_parsed() {
        let mut b = vec![0, 1];
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(b"ord");
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&5i32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes()); // no user data
        assert_eq!(parse_assignment(&b), vec![("ord".to_string(), vec![4, 5])]);
        assert!(parse_assignment(&b[..5]).is_empty());
    }
}
