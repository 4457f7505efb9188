//! The native Rust client of ringmq, for ordinary tokio programs.
//!
//! * [`Client`]: one connection to a broker, pipelined requests, reconnected on the next
//!   call after a failure; [`Client::call`] sends any native-protocol request.
//!   [`Client::connect`] takes one address or a cluster's several; producers and
//!   consumers send each partition's requests to the node that leads it and follow it
//!   when it moves.
//! * [`Admin`]: create, delete, list and describe topics.
//! * [`Producer`]: `send(topic, key, value, headers)` resolving to (partition, offset);
//!   records are batched per partition by size and linger, up to five batches in flight
//!   per partition with order kept (sequenced as Kafka's idempotent producer does, so a
//!   resent batch is not stored twice); keyed records go where Kafka's default partitioner
//!   would put them ([`partition_for_key`], murmur2), records without a key stick to one
//!   partition per batch.
//! * [`Consumer`]: assign partitions at a position (earliest, latest, an offset or a
//!   timestamp) and poll records.
//! * [`blocking::BlockingClient`]: the same for programs without an async runtime.
//!
//! Runnable examples are in `client/examples/` (`cargo run -p ringmq-client --example
//! produce_consume -- 127.0.0.1:9093`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringmq_client::Error> {
//! use ringmq_client::{Admin, Client, Consumer, Position, Producer, ProducerConfig};
//! let client = Client::connect("127.0.0.1:9093").await?;
//! Admin::new(client.clone()).create_topic("orders", 6, &[]).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default());
//! let (partition, offset) = producer.send("orders", Some(b"k1"), b"hello", &[]).await?;
//! producer.close().await?;
//! let mut consumer = Consumer::new(client);
//! consumer.assign("orders", partition, Position::Offset(offset)).await?;
//! let records = consumer.poll().await?;
//! assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod admin;
pub mod blocking;
mod conn;
mod consumer;
mod group;
mod partitioner;
mod producer;
mod routes;

pub use admin::{Admin, PartitionInfo, TopicDescription};
pub use conn::Client;
pub use consumer::{Consumer, ConsumerRecord, Position};
pub use group::{GroupConfig, GroupConsumer};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Acks, Producer, ProducerConfig};
pub use ringmq_net::codec::ErrorCode;
pub use ringmq_storage::batch::Compression;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached or the connection failed.
    #[error("broker {addr}")]
    Io {
        /// The broker's address.
        addr: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The broker answered with an error.
    #[error("{code:?}: {message}")]
    Broker {
        /// The error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The broker's answer could not be decoded, or was not the expected one.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad argument (unknown partition, empty batch...).
    #[error("{0}")]
    Invalid(String),
    /// The producer was closed.
    #[error("producer closed")]
    Closed,
}

impl Error {
    /// True for errors worth retrying: connection failures, `Unavailable` (a shard
    /// busy, a partition whose leader moved or is being elected) and `Timeout` (an
    /// acks=all batch not replicated in time; an idempotent retry is stored once).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Broker { code, .. } => {
                matches!(code, ErrorCode::Unavailable | ErrorCode::Timeout)
            }
            _ => false,
        }
    }

    pub(crate) fn broker(e: &ringmq_net::codec::WireError) -> Self {
        Error::Broker {
            code: e.code,
            message: e.message.clone(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
