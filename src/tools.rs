//! The client commands: `topic`, `produce`, `consume`, in the spirit of kcat and rpk.
//! Built on `ringmq-client`, on a single-threaded tokio runtime.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ringmq_client::{
    Acks, Admin, Client, Consumer, GroupConfig, GroupConsumer, Position, Producer, ProducerConfig,
};

/// Where the broker is: shared by the client commands.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Broker address, HOST:PORT (its native listener); in a cluster, several
    /// comma-separated (the first that answers is asked where each partition's leader is)
    #[arg(
        long,
        global = true,
        env = "RINGMQ_BROKERS",
        default_value = "127.0.0.1:9093"
    )]
    pub brokers: String,
}

/// `ringmq topic ...`
#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic
    Create {
        /// Topic name
        name: String,
        /// Number of partitions
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic setting, key=value (retention_ms, retention_bytes, segment_bytes,
        /// segment_ms, flush, message_bytes_max, timestamp_type); repeatable
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Copies of each partition, each on its own node of the cluster (default: the
        /// broker's --default-replication-factor; a single node takes only 1)
        #[arg(long, value_name = "N")]
        replication_factor: Option<u16>,
    },
    /// Delete a topic and its data
    Delete {
        /// Topic name
        name: String,
    },
    /// List topics
    List,
    /// Show a topic's partitions (shard, start and end offsets, size) and settings
    Describe {
        /// Topic name
        name: String,
    },
}

/// `ringmq produce TOPIC`
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to write to
    pub topic: String,
    /// Split each line at the first C into key and value (no key without it)
    #[arg(long, value_name = "C")]
    pub key_separator: Option<char>,
    /// A header on every record, k=v; repeatable
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Write every record to this partition (default: by key, or sticky without one)
    #[arg(long)]
    pub partition: Option<u32>,
    /// When a record counts as written: leader (durable on the partition's leader),
    /// all (on every in-sync replica; below the topic's min.insync.replicas a single
    /// node refuses it, a cluster's records are retried until the ISR grows back or the
    /// 120 s delivery timeout), or none (sent)
    #[arg(long, default_value = "leader", value_parser = ["leader", "1", "all", "-1", "none", "0"])]
    pub acks: String,
    /// Print each record's outcome on standard output as it is answered, one JSON
    /// object per line: {"line":N,"partition":P,"offset":O} or {"line":N,"error":"..."}
    /// (N counts input lines from 0). A failed record then does not stop the run; the
    /// exit status is 1 if any failed
    #[arg(long)]
    pub report: bool,
}

/// `ringmq consume TOPIC`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read
    pub topic: String,
    /// Where to start: beginning, end, an offset, or @TIMESTAMP_MS
    #[arg(long, default_value = "beginning")]
    pub from: String,
    /// Stop after this many records
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records at the end (default: stop at the end)
    #[arg(long)]
    pub follow: bool,
    /// Output: text (the value, one per line) or json (one object per record)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Read only this partition (default: all)
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Read as a member of this consumer group: the broker assigns the partitions,
    /// reading starts at the group's committed offsets (--from where it has none), and
    /// positions are committed every 5 s and on exit. Without --follow or --count,
    /// stops once nothing new arrived for 2 s.
    #[arg(long)]
    pub group: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")
}

async fn connect(b: &BrokerArgs) -> anyhow::Result<Client> {
    Client::connect(&b.brokers).await.with_context(|| {
        format!(
            "cannot reach the broker at {} (set --brokers or RINGMQ_BROKERS)",
            b.brokers
        )
    })
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} {s:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Runs `ringmq topic ...`.
pub fn topic(b: BrokerArgs, cmd: TopicCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let admin = Admin::new(connect(&b).await?);
        match cmd {
            TopicCommand::Create {
                name,
                partitions,
                configs,
                replication_factor,
            } => {
                if partitions == 0 {
                    bail!("--partitions must be at least 1");
                }
                if replication_factor == Some(0) {
                    bail!("--replication-factor must be at least 1");
                }
                admin
                    .create_replicated_topic(
                        &name,
                        partitions,
                        replication_factor,
                        &pairs(&configs, "--config")?,
                    )
                    .await
                    .with_context(|| format!("creating topic {name}"))?;
                match replication_factor {
                    Some(rf) => println!(
                        "created topic {name} with {partitions} partition(s), {rf} replica(s) each"
                    ),
                    None => println!("created topic {name} with {partitions} partition(s)"),
                }
            }
            TopicCommand::Delete { name } => {
                admin
                    .delete_topic(&name)
                    .await
                    .with_context(|| format!("deleting topic {name}"))?;
                println!("deleted topic {name}");
            }
            TopicCommand::List => {
                for t in admin.list_topics().await? {
                    println!("{t}");
                }
            }
            TopicCommand::Describe { name } => {
                let d = admin
                    .describe_topic(&name)
                    .await
                    .with_context(|| format!("describing topic {name}"))?;
                println!("topic {}  partitions {}", d.name, d.partitions.len());
                println!(
                    "{:>9} {:>5} {:>14} {:>14} {:>14}",
                    "partition", "shard", "start offset", "end offset", "size bytes"
                );
                for p in &d.partitions {
                    println!(
                        "{:>9} {:>5} {:>14} {:>14} {:>14}",
                        p.partition, p.shard, p.start_offset, p.end_offset, p.size_bytes
                    );
                }
                println!("config");
                for (k, v) in &d.configs {
                    println!("  {k}={v}");
                }
            }
        }
        Ok(())
    })
}

/// Runs `ringmq produce TOPIC`: one record per line of standard input.
pub fn produce(b: BrokerArgs, a: ProduceArgs) -> anyhow::Result<()> {
    let headers: Vec<(String, Vec<u8>)> = pairs(&a.headers, "--header")?
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let acks = match a.acks.as_str() {
        "all" | "-1" => Acks::All,
        "none" | "0" => Acks::None,
        _ => Acks::Leader,
    };
    runtime()?.block_on(async move {
        let client = connect(&b).await?;
        let producer = Producer::new(
            client,
            ProducerConfig {
                acks,
                ..ProducerConfig::default()
            },
        );
        let started = Instant::now();
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut inflight = tokio::task::JoinSet::new();
        let mut failed = 0u64;
        // A send's outcome: an error ends the run, unless reported (then counted).
        let settle = |r: Result<ringmq_client::Result<(u32, i64)>, tokio::task::JoinError>,
                      a: &ProduceArgs|
         -> anyhow::Result<u64> {
            match r.context("send task")? {
                Ok(_) => Ok(0),
                Err(_) if a.report => Ok(1),
                Err(e) => Err(e).with_context(|| format!("producing to {}", a.topic)),
            }
        };
        // Standard input is read on a thread of its own, so sends (and their retries
        // while a leader moves) go on while the next line is awaited.
        let (tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            let line = line.context("reading standard input")?;
            let (key, value) = match a.key_separator {
                Some(c) => match line.split_once(c) {
                    Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => (None, line.into_bytes()),
                },
                None => (None, line.into_bytes()),
            };
            bytes += value.len() as u64 + key.as_ref().map_or(0, |k| k.len() as u64);
            records += 1;
            let (p, topic, headers) = (producer.clone(), a.topic.clone(), headers.clone());
            let (partition, report, line_no) = (a.partition, a.report, records - 1);
            inflight.spawn(async move {
                let r = match partition {
                    Some(n) => p.send_to(&topic, n, key.as_deref(), &value, &headers).await,
                    None => p.send(&topic, key.as_deref(), &value, &headers).await,
                };
                if report {
                    let line = match &r {
                        Ok((partition, offset)) => serde_json::json!({
                            "line": line_no, "partition": partition, "offset": offset,
                        }),
                        Err(e) => serde_json::json!({"line": line_no, "error": e.to_string()}),
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                r
            });
            // Bounded memory: wait for the oldest answers past 10k records in flight.
            while inflight.len() > 10_000 {
                if let Some(r) = inflight.join_next().await {
                    failed += settle(r, &a)?;
                }
            }
        }
        producer.flush().await?;
        while let Some(r) = inflight.join_next().await {
            failed += settle(r, &a)?;
        }
        producer.close().await?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "produced {records} record(s), {bytes} bytes in {secs:.2} s ({:.0} records/s, {:.2} MB/s)",
            records as f64 / secs,
            bytes as f64 / secs / 1e6
        );
        if failed > 0 {
            bail!("{failed} of {records} record(s) failed (reported above)");
        }
        Ok(())
    })
}

fn parse_from(s: &str) -> anyhow::Result<Position> {
    Ok(match s {
        "beginning" | "earliest" => Position::Earliest,
        "end" | "latest" => Position::Latest,
        _ if s.starts_with('@') => Position::Timestamp(
            s[1..]
                .parse()
                .with_context(|| format!("--from {s}: expected @TIMESTAMP_MS"))?,
        ),
        _ => Position::Offset(s.parse().with_context(|| {
            format!("--from {s}: expected beginning, end, an offset or @TIMESTAMP_MS")
        })?),
    })
}

/// Runs `ringmq consume TOPIC`.
pub fn consume(b: BrokerArgs, a: ConsumeArgs) -> anyhow::Result<()> {
    let from = parse_from(&a.from)?;
    if let Some(group) = a.group.clone() {
        return consume_in_group(b, a, from, &group);
    }
    runtime()?.block_on(async move {
        let client = connect(&b).await?;
        let d = Admin::new(client.clone())
            .describe_topic(&a.topic)
            .await
            .with_context(|| format!("topic {}", a.topic))?;
        let parts: Vec<u32> = match a.partition {
            Some(p) if (p as usize) < d.partitions.len() => vec![p],
            Some(p) => bail!(
                "topic {} has {} partition(s); there is no partition {p}",
                a.topic,
                d.partitions.len()
            ),
            None => (0..d.partitions.len() as u32).collect(),
        };
        let mut consumer = Consumer::new(client);
        consumer.max_wait_ms = if a.follow { 1000 } else { 200 };
        let mut ends = Vec::new();
        for &p in &parts {
            consumer.assign(&a.topic, p, from).await?;
            ends.push((p, consumer.offset_for(&a.topic, p, Position::Latest).await?));
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut n = 0u64;
        loop {
            if a.count.is_some_and(|c| n >= c) {
                break;
            }
            if !a.follow
                && ends
                    .iter()
                    .all(|(p, end)| consumer.position(&a.topic, *p).is_some_and(|o| o >= *end))
            {
                break;
            }
            let records = consumer.poll().await?;
            for r in records {
                if a.count.is_some_and(|c| n >= c) {
                    break;
                }
                n += 1;
                write_record(&mut out, &r, &a.format)?;
            }
            out.flush()?;
            if a.follow {
                tokio::time::sleep(Duration::from_millis(0)).await;
            }
        }
        Ok(())
    })
}

/// How long `consume --group` without --follow waits for more records before it stops.
const GROUP_IDLE_STOP: Duration = Duration::from_secs(2);

/// `consume --group`: reads as a member of `group`, commits on the way and on exit,
/// then leaves the group. With --count, the positions committed are exactly past the
/// records printed, so the next member starts at the first record not printed.
fn consume_in_group(
    b: BrokerArgs,
    a: ConsumeArgs,
    from: Position,
    group: &str,
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = connect(&b).await?;
        let config = GroupConfig {
            start: from,
            ..GroupConfig::default()
        };
        let mut member = GroupConsumer::join(client, group, &[&a.topic], config)
            .await
            .with_context(|| format!("joining group {group}"))?;
        eprintln!(
            "joined group {group} as member {}, generation {}, coordinator node {}; partitions {:?}",
            member.member_id(),
            member.generation(),
            member.coordinator(),
            member.assignment()
        );
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut n = 0u64;
        let mut last_record = std::time::Instant::now();
        let result = async {
            loop {
                if a.count.is_some_and(|c| n >= c) {
                    break;
                }
                if !a.follow && a.count.is_none() && last_record.elapsed() >= GROUP_IDLE_STOP {
                    break;
                }
                let remaining = a.count.map_or(u64::MAX, |c| c - n);
                let records = member.poll_at_most(remaining).await?;
                if !records.is_empty() {
                    last_record = std::time::Instant::now();
                }
                for r in records {
                    n += 1;
                    write_record(&mut out, &r, &a.format)?;
                }
                out.flush()?;
            }
            anyhow::Ok(())
        }
        .await;
        // Commit what was printed and leave, also after an error.
        let closed = member
            .close()
            .await
            .with_context(|| format!("committing and leaving group {group}"));
        result.and(closed)
    })
}

fn write_record(
    out: &mut impl Write,
    r: &ringmq_client::ConsumerRecord,
    format: &str,
) -> anyhow::Result<()> {
    if format == "json" {
        let text = |b: &Option<bytes::Bytes>| {
            b.as_ref()
                .map(|v| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()))
                .unwrap_or(serde_json::Value::Null)
        };
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
            .collect();
        let obj = serde_json::json!({
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp_ms,
            "key": text(&r.key),
            "value": text(&r.value),
            "headers": headers,
        });
        writeln!(out, "{obj}")?;
    } else {
        out.write_all(r.value.as_deref().unwrap_or_default())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
