//! The NATS JetStream driver of `ringmq bench` (the `async-nats` client).
//!
//! A partition is a JetStream stream: topic `T` with `N` partitions is the streams
//! `T-0` … `T-(N-1)`, stream `T-p` holding subject `T.p`, each with file storage and one
//! replica. A producer sends its messages to the partitions in turn, each as one
//! JetStream publish, and counts a message acknowledged when the server's publish ack
//! arrives (up to 2048 in flight per producer). A consumer reads its partitions with
//! ordered pull consumers that start at the streams' ends and acknowledge nothing (like
//! a Kafka consumer that does not commit).
//!
//! Durability: the server acknowledges a publish once the message is written to the
//! stream's file; it is fdatasync'd only as the server's `sync_interval` says (default
//! two minutes). To compare durable with durable, run the server with
//! `jetstream { sync_interval: always }` (nats-server 2.10 or later), as
//! `benches/compare` does: then every acknowledged message has been synced.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{StreamExt, TryStreamExt};

use crate::driver::{POLL_MESSAGES_MAX, push_sent_time, take_ready};

/// Publish acks one producer waits for at most (the load generator keeps fewer in flight).
const ACKS_INFLIGHT_MAX: usize = 4096;

async fn connect(brokers: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(crate::driver::broker_url(brokers, "nats://", ""))
        .await
        .with_context(|| format!("cannot reach a NATS server at {brokers} (--brokers)"))
}

fn stream_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// Creates the streams of the topic's partitions if missing (file storage, one
/// replica); returns the partition count.
pub async fn setup(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<u32> {
    anyhow::ensure!(
        !topic.contains(['.', ' ', '*', '>']),
        "--topic {topic}: a NATS stream name has no '.', ' ', '*' or '>'"
    );
    let js = jetstream::new(connect(brokers).await?);
    for p in 0..partitions {
        js.get_or_create_stream(stream::Config {
            name: stream_name(topic, p),
            subjects: vec![subject(topic, p)],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating JetStream stream {}", stream_name(topic, p)))?;
    }
    Ok(partitions)
}

/// A JetStream publisher over its own connection.
pub struct Producer {
    js: jetstream::Context,
    subjects: Vec<String>,
    next: AtomicU64,
}

impl Producer {
    /// Connects; messages go to the partitions' subjects in turn.
    pub async fn connect(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Self> {
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(ACKS_INFLIGHT_MAX)
            .backpressure_on_inflight(true)
            .build(connect(brokers).await?);
        Ok(Producer {
            js,
            subjects: (0..partitions).map(|p| subject(topic, p)).collect(),
            next: AtomicU64::new(0),
        })
    }

    /// Publishes one message; true once the server's publish ack arrived.
    pub async fn send(&self, value: Vec<u8>) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.subjects.len();
        match self
            .js
            .publish(self.subjects[i].clone(), value.into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Ordered pull consumers of some partitions, merged into one stream.
pub struct Consumer {
    messages: SelectAll<BoxStream<'static, anyhow::Result<jetstream::Message>>>,
}

impl Consumer {
    /// Connects and starts an ordered consumer at the end of each partition's stream.
    pub async fn connect(brokers: &str, topic: &str, partitions: &[u32]) -> anyhow::Result<Self> {
        let js = jetstream::new(connect(brokers).await?);
        let mut messages = SelectAll::new();
        for p in partitions {
            let stream = js
                .get_stream(stream_name(topic, *p))
                .await
                .with_context(|| format!("JetStream stream {}", stream_name(topic, *p)))?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .context("creating an ordered JetStream consumer")?;
            let ordered = consumer.messages().await?;
            messages.push(ordered.map_err(anyhow::Error::from).boxed());
        }
        Ok(Consumer { messages })
    }

    /// Receives what has arrived; appends each message's send time.
    pub async fn poll(&mut self, sent: &mut Vec<u64>) -> anyhow::Result<()> {
        take_ready(&mut self.messages, POLL_MESSAGES_MAX, |m| {
            push_sent_time(sent, Some(&m?.payload));
            Ok(())
        })
        .await
    }
}
