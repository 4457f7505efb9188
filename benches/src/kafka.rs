//! The Kafka-protocol driver of `ringmq bench`: librdkafka through the `rdkafka` crate,
//! so the same workload runs against ringmq's Kafka listener or any Kafka-API broker.
//!
//! Durability: `--acks durable` (or all, -1) is librdkafka's `acks=all`, which on
//! ringmq means acknowledged once durable under the topic's flush policy; `none` is
//! `acks=0`. Idempotence is off (as with the native driver), retries on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::load::BenchArgs;

/// Creates the topic if it is missing; returns its partition count.
pub async fn setup(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<u32> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .with_context(|| format!("cannot reach a Kafka broker at {brokers} (--brokers)"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let md = p
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as u32)
            .unwrap_or(0);
        anyhow::ensure!(n > 0, "topic {topic} has no partitions in metadata");
        Ok(n)
    })
    .await?
}

/// A producer configured from the workload flags.
pub fn producer(brokers: &str, a: &BenchArgs) -> anyhow::Result<Arc<FutureProducer>> {
    let acks = if matches!(a.acks.as_str(), "none" | "0") {
        "0"
    } else {
        "all"
    };
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", acks)
        .set("linger.ms", a.linger_ms.to_string())
        .set("batch.size", a.batch_bytes.to_string())
        .set("compression.type", a.compression.as_str())
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .context("creating a Kafka producer")?;
    Ok(Arc::new(p))
}

/// Sends one message; true once acknowledged.
pub async fn send(p: &FutureProducer, topic: &str, value: &[u8]) -> bool {
    let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(value);
    p.send(record, Duration::from_secs(30)).await.is_ok()
}

/// Waits for every message sent to be acknowledged.
pub async fn flush(p: Arc<FutureProducer>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await?
        .context("flushing the Kafka producer")
}

/// A consumer of `partitions` of `topic`, from their current ends (looked up now, so
/// every message produced after this returns is seen).
pub fn consumer(brokers: &str, topic: &str, partitions: &[u32]) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ringmq-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = c
            .fetch_watermarks(topic, *p as i32, Duration::from_secs(10))
            .with_context(|| format!("looking up the end of {topic}/{p}"))?;
        tpl.add_partition_offset(topic, *p as i32, Offset::Offset(high))?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Receives what has arrived, waiting up to [`crate::driver::POLL_WAIT`] for a first
/// message; appends each message's send time (the first 8 bytes of its value).
pub async fn poll(c: &StreamConsumer, sent: &mut Vec<u64>) -> anyhow::Result<()> {
    let mut stream = std::pin::pin!(c.stream());
    crate::driver::take_ready(&mut stream, crate::driver::POLL_MESSAGES_MAX, |m| {
        let m = m.context("Kafka consumer")?;
        crate::driver::push_sent_time(sent, m.payload());
        Ok(())
    })
    .await
}
