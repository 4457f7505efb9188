//! The clients `ringmq bench` drives, one per broker family, behind two enums so the
//! measurement code of [`crate::load`] is the same for every broker:
//!
//! - [`setup`] creates what the workload needs (topic, streams, queues) and returns the
//!   number of partitions, or of their equivalent;
//! - a [`Sender`] sends one message and resolves once the broker acknowledged it;
//! - a [`Receiver`] hands over the send times carried by the messages it received.
//!
//! Each driver lives in its own module ([`crate::kafka`], [`crate::nats`],
//! [`crate::rabbitmq`], [`crate::redis`]; the native client is here) and documents its
//! durability settings there.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{FutureExt, Stream, StreamExt};
use ringmq_client::{Admin, Client, Consumer, Error, Position, Producer, ProducerConfig};

use crate::load::BenchArgs;

/// The drivers `--driver` accepts, in the order `--help` lists them.
pub const DRIVERS: [&str; 5] = ["native", "kafka", "nats", "rabbitmq", "redis"];

/// How long a receiver waits for a first message before it reports none.
pub const POLL_WAIT: Duration = Duration::from_millis(100);

/// Messages one receiver hands over at most per poll.
pub const POLL_MESSAGES_MAX: usize = 10_000;

/// The broker address a driver uses without `--brokers`.
pub fn default_brokers(driver: &str) -> &'static str {
    match driver {
        "kafka" => "127.0.0.1:9092",
        "nats" => "127.0.0.1:4222",
        "rabbitmq" => "127.0.0.1:5672",
        "redis" => "127.0.0.1:6379",
        _ => "127.0.0.1:9093",
    }
}

/// `brokers` as a URL: as given when it has a scheme, else `prefix`, the address and
/// `suffix` (`--brokers` takes HOST:PORT or a URL).
pub fn broker_url(brokers: &str, prefix: &str, suffix: &str) -> String {
    if brokers.contains("://") {
        brokers.to_string()
    } else {
        format!("{prefix}{brokers}{suffix}")
    }
}

/// Checks the workload flags against what the driver can do.
pub fn check(a: &BenchArgs) -> anyhow::Result<()> {
    match a.driver.as_str() {
        "kafka" => Ok(()),
        // The native client has every codec of the batch format.
        "native" => Ok(()),
        other => {
            anyhow::ensure!(
                a.compression == "none",
                "--compression {}: the {other} driver sends messages uncompressed",
                a.compression
            );
            anyhow::ensure!(
                durable(a),
                "--acks {}: the {other} driver measures durable acknowledgements only",
                a.acks
            );
            Ok(())
        }
    }
}

/// Whether the workload asks for acknowledgements once durable.
pub fn durable(a: &BenchArgs) -> bool {
    !matches!(a.acks.as_str(), "none" | "0")
}

/// Creates the topic or its equivalent if missing; returns its partition count.
pub async fn setup(a: &BenchArgs, brokers: &str) -> anyhow::Result<u32> {
    match a.driver.as_str() {
        "kafka" => crate::kafka::setup(brokers, &a.topic, a.partitions).await,
        "nats" => crate::nats::setup(brokers, &a.topic, a.partitions).await,
        "rabbitmq" => crate::rabbitmq::setup(brokers, a).await,
        "redis" => crate::redis::setup(brokers, a.partitions).await,
        _ => {
            let client = Client::connect(brokers)
                .await
                .with_context(|| format!("cannot reach the broker at {brokers} (--brokers)"))?;
            let admin = Admin::new(client.clone());
            match admin.create_topic(&a.topic, a.partitions, &[]).await {
                Ok(()) => {}
                Err(Error::Broker {
                    code: ringmq_client::ErrorCode::TopicExists,
                    ..
                }) => {}
                Err(e) => return Err(anyhow::anyhow!("creating topic {}: {e}", a.topic)),
            }
            Ok(admin.describe_topic(&a.topic).await?.partitions.len() as u32)
        }
    }
}

/// A producer of the workload's driver, with its own connection.
pub async fn sender(a: &BenchArgs, brokers: &str, partitions: u32) -> anyhow::Result<Sender> {
    Ok(match a.driver.as_str() {
        "kafka" => Sender::Kafka(crate::kafka::producer(brokers, a)?),
        "nats" => Sender::Nats(Arc::new(
            crate::nats::Producer::connect(brokers, &a.topic, partitions).await?,
        )),
        "rabbitmq" => Sender::Rabbitmq(Arc::new(
            crate::rabbitmq::Producer::connect(brokers, &a.topic, partitions).await?,
        )),
        "redis" => Sender::Redis(Arc::new(
            crate::redis::Producer::connect(brokers, &a.topic, partitions).await?,
        )),
        _ => {
            let client = Client::connect(brokers).await?;
            Sender::Native(Producer::new(
                client,
                ProducerConfig {
                    batch_bytes: a.batch_bytes,
                    linger: Duration::from_millis(a.linger_ms),
                    acks: if durable(a) {
                        ringmq_client::Acks::Leader
                    } else {
                        ringmq_client::Acks::None
                    },
                    retries: 3,
                    compression: match a.compression.as_str() {
                        "lz4" => ringmq_client::Compression::Lz4,
                        "zstd" => ringmq_client::Compression::Zstd,
                        "gzip" => ringmq_client::Compression::Gzip,
                        "snappy" => ringmq_client::Compression::Snappy,
                        _ => ringmq_client::Compression::None,
                    },
                    ..ProducerConfig::default()
                },
            ))
        }
    })
}

/// A consumer of `partitions` of the workload's topic, from their current ends, with
/// its own connection: every message sent after this returns is received.
pub async fn receiver(
    a: &BenchArgs,
    brokers: &str,
    partitions: &[u32],
) -> anyhow::Result<Receiver> {
    Ok(match a.driver.as_str() {
        "kafka" => Receiver::Kafka(crate::kafka::consumer(brokers, &a.topic, partitions)?),
        "nats" => {
            Receiver::Nats(crate::nats::Consumer::connect(brokers, &a.topic, partitions).await?)
        }
        "rabbitmq" => Receiver::Rabbitmq(Box::new(
            crate::rabbitmq::Consumer::connect(brokers, a, partitions).await?,
        )),
        "redis" => {
            Receiver::Redis(crate::redis::Consumer::connect(brokers, &a.topic, partitions).await?)
        }
        _ => {
            let client = Client::connect(brokers).await?;
            let mut consumer = Consumer::new(client);
            consumer.max_wait_ms = POLL_WAIT.as_millis() as u32;
            for p in partitions {
                consumer.assign(&a.topic, *p, Position::Latest).await?;
            }
            Receiver::Native(Box::new(consumer))
        }
    })
}

/// A producer of any driver; cloned for every message in flight.
#[derive(Clone)]
pub enum Sender {
    /// ringmq's native client.
    Native(Producer),
    /// librdkafka, on any Kafka-API broker.
    Kafka(Arc<rdkafka::producer::FutureProducer>),
    /// NATS JetStream.
    Nats(Arc<crate::nats::Producer>),
    /// RabbitMQ.
    Rabbitmq(Arc<crate::rabbitmq::Producer>),
    /// Redis streams.
    Redis(Arc<crate::redis::Producer>),
}

impl Sender {
    /// Sends one message; true once acknowledged.
    pub async fn send(&self, topic: &str, value: Vec<u8>) -> bool {
        match self {
            Sender::Native(p) => p.send(topic, None, &value, &[]).await.is_ok(),
            Sender::Kafka(p) => crate::kafka::send(p, topic, &value).await,
            Sender::Nats(p) => p.send(value).await,
            Sender::Rabbitmq(p) => p.send(&value).await,
            Sender::Redis(p) => p.send(value).await,
        }
    }

    /// Waits for everything sent to be acknowledged, then closes the connection.
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            Sender::Native(p) => Ok(p.close().await?),
            Sender::Kafka(p) => crate::kafka::flush(p).await,
            // Their sends resolve only once acknowledged, and every send was awaited.
            Sender::Nats(_) | Sender::Redis(_) => Ok(()),
            Sender::Rabbitmq(p) => p.close().await,
        }
    }
}

/// A consumer of any driver.
pub enum Receiver {
    /// ringmq's native client.
    Native(Box<Consumer>),
    /// librdkafka, on any Kafka-API broker.
    Kafka(rdkafka::consumer::StreamConsumer),
    /// NATS JetStream.
    Nats(crate::nats::Consumer),
    /// RabbitMQ (boxed: its connection state is large, and there is one per consumer).
    Rabbitmq(Box<crate::rabbitmq::Consumer>),
    /// Redis streams.
    Redis(crate::redis::Consumer),
}

impl Receiver {
    /// Waits up to [`POLL_WAIT`] for messages; appends their send times (µs since the
    /// start, the first 8 bytes of each value).
    pub async fn poll(&mut self, sent: &mut Vec<u64>) -> anyhow::Result<()> {
        match self {
            Receiver::Native(c) => {
                for r in c.poll().await? {
                    push_sent_time(sent, r.value.as_deref());
                }
                Ok(())
            }
            Receiver::Kafka(c) => crate::kafka::poll(c, sent).await,
            Receiver::Nats(c) => c.poll(sent).await,
            Receiver::Rabbitmq(c) => c.poll(sent).await,
            Receiver::Redis(c) => c.poll(sent).await,
        }
    }
}

/// Appends the send time a message value carries in its first 8 bytes.
pub fn push_sent_time(sent: &mut Vec<u64>, value: Option<&[u8]>) {
    if let Some(v) = value.and_then(|v| v.first_chunk::<8>()) {
        sent.push(u64::from_le_bytes(*v));
    }
}

/// Takes a batch from a stream of received messages: waits up to [`POLL_WAIT`] for the
/// first, then takes those already arrived, at most `max` in all. The batch is handed
/// over as soon as it is there, so the receive time stamped on it is when it arrived.
pub async fn take_ready<S, T>(
    stream: &mut S,
    max: usize,
    mut take: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    S: Stream<Item = T> + Unpin,
{
    match tokio::time::timeout(POLL_WAIT, stream.next()).await {
        Err(_) => return Ok(()),
        Ok(None) => anyhow::bail!("the broker closed the consumer's stream"),
        Ok(Some(item)) => take(item)?,
    }
    for _ in 1..max {
        match stream.next().now_or_never() {
            Some(Some(item)) => take(item)?,
            Some(None) => anyhow::bail!("the broker closed the consumer's stream"),
            None => break,
        }
    }
    Ok(())
}
