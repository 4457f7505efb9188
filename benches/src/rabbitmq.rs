//! The RabbitMQ driver of `ringmq bench` (the `lapin` AMQP 0-9-1 client).
//!
//! A partition is a durable queue: topic `T` with `N` partitions is the queues `T-0` …
//! `T-(N-1)`, of the type `--rabbitmq-queue` names: `quorum` (a replicated queue on the
//! Raft log) or `stream` (an append-only log). A producer publishes to the queues in turn
//! through the default exchange, each message persistent (delivery mode 2), on a channel
//! in confirm mode, and counts a message acknowledged when its publisher confirm arrives
//! (up to 2048 in flight per producer). A consumer reads its queues on one channel with a
//! prefetch of [`PREFETCH`] and acknowledges what it received after each poll (one
//! `basic.ack` with `multiple`); a stream queue is read from its end (`x-stream-offset:
//! next`), a quorum queue is purged when the benchmark starts.
//!
//! Durability: a quorum queue confirms a message once its Raft log entry is written and
//! fdatasync'd on the node (RabbitMQ's `raft.wal_sync_method`, `datasync` by default;
//! `benches/compare` sets it explicitly). A stream queue confirms once the message is
//! written to the stream's segment file without an fsync of its own: RabbitMQ leaves a
//! stream's safety to replication, which a single node does not have, so a stream
//! queue's confirms on one node are not durable in ringmq's sense.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures_util::stream::SelectAll;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::driver::{push_sent_time, take_ready};
use crate::load::BenchArgs;

/// Unacknowledged deliveries one consumer accepts (a stream queue requires a limit).
pub const PREFETCH: u16 = 2000;

async fn connect(brokers: &str) -> anyhow::Result<Connection> {
    Connection::connect(
        &crate::driver::broker_url(brokers, "amqp://guest:guest@", "/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .with_context(|| format!("cannot reach a RabbitMQ server at {brokers} (--brokers)"))
}

fn queue(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

/// Declares the topic's queues (durable, of the `--rabbitmq-queue` type) if missing and
/// purges quorum queues of what an earlier run left; returns the partition count.
pub async fn setup(brokers: &str, a: &BenchArgs) -> anyhow::Result<u32> {
    let conn = connect(brokers).await?;
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(a.rabbitmq_queue.as_str())),
    );
    for p in 0..a.partitions {
        let name = queue(&a.topic, p);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .with_context(|| format!("declaring {} queue {name}", a.rabbitmq_queue))?;
        if a.rabbitmq_queue == "quorum" {
            channel
                .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                .await
                .with_context(|| format!("purging queue {name}"))?;
        }
    }
    conn.close(200, "".into()).await?;
    Ok(a.partitions)
}

/// A publisher on its own connection and confirm-mode channel.
pub struct Producer {
    conn: Connection,
    channel: Channel,
    queues: Vec<String>,
    next: AtomicU64,
}

impl Producer {
    /// Connects; messages go to the partitions' queues in turn.
    pub async fn connect(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Self> {
        let conn = connect(brokers).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Producer {
            conn,
            channel,
            queues: (0..partitions).map(|p| queue(topic, p)).collect(),
            next: AtomicU64::new(0),
        })
    }

    /// Publishes one persistent message; true once the broker confirmed it.
    pub async fn send(&self, value: &[u8]) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.queues.len();
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queues[i].as_str().into(),
                BasicPublishOptions::default(),
                value,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        match confirm {
            Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(_))),
            Err(_) => false,
        }
    }

    /// Closes the connection (every publish was awaited to its confirm).
    pub async fn close(&self) -> anyhow::Result<()> {
        Ok(self.conn.close(200, "".into()).await?)
    }
}

/// Consumers of some queues on one channel, their deliveries merged into one stream.
pub struct Consumer {
    _conn: Connection,
    channel: Channel,
    deliveries: SelectAll<lapin::Consumer>,
    /// The highest delivery tag acknowledged (with `multiple`, so all below it too).
    acked_tag: u64,
}

impl Consumer {
    /// Connects and consumes each partition's queue (a stream queue from its end).
    pub async fn connect(brokers: &str, a: &BenchArgs, partitions: &[u32]) -> anyhow::Result<Self> {
        let conn = connect(brokers).await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut args = FieldTable::default();
        if a.rabbitmq_queue == "stream" {
            args.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString(LongString::from("next")),
            );
        }
        let mut deliveries = SelectAll::new();
        for p in partitions {
            let name = queue(&a.topic, *p);
            let consumer = channel
                .basic_consume(
                    name.as_str().into(),
                    format!("bench-{p}").as_str().into(),
                    BasicConsumeOptions::default(),
                    args.clone(),
                )
                .await
                .with_context(|| format!("consuming queue {name}"))?;
            deliveries.push(consumer);
        }
        Ok(Consumer {
            _conn: conn,
            channel,
            deliveries,
            acked_tag: 0,
        })
    }

    /// Receives what has arrived (at most half the prefetch, so the broker keeps
    /// sending while this batch is acknowledged); appends each message's send time and
    /// acknowledges the batch. Delivery tags count up per channel, but the merged
    /// queues may hand over a lower tag after a higher one: one `multiple` ack of the
    /// highest tag received covers both, and a tag already covered is not sent again.
    pub async fn poll(&mut self, sent: &mut Vec<u64>) -> anyhow::Result<()> {
        let mut tag_max = 0;
        take_ready(&mut self.deliveries, PREFETCH as usize / 2, |d| {
            let d = d.context("RabbitMQ consumer")?;
            push_sent_time(sent, Some(&d.data));
            tag_max = tag_max.max(d.delivery_tag);
            Ok(())
        })
        .await?;
        if tag_max > self.acked_tag {
            self.channel
                .basic_ack(tag_max, BasicAckOptions { multiple: true })
                .await?;
            self.acked_tag = tag_max;
        }
        Ok(())
    }
}
