//! The Redis streams driver of `ringmq bench` (the `redis` crate).
//!
//! A partition is a stream key: topic `T` with `N` partitions is the keys `T:0` …
//! `T:(N-1)`. A producer appends to the keys in turn, each message one `XADD key * v
//! VALUE` on a multiplexed connection that pipelines the commands in flight (up to 2048
//! per producer), and counts a message acknowledged when its `XADD` reply arrives. A
//! consumer reads its keys with `XREAD BLOCK 100 COUNT 10000` from the entry that was
//! last when it started.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync always` (as
//! `benches/compare` runs it) Redis writes and fsyncs its append-only file before it
//! replies to the commands of an event-loop round, so a reply means durable; with the
//! default `appendfsync everysec` up to a second of acknowledged appends can be lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::streams::{StreamReadOptions, StreamReadReply};
use ::redis::{AsyncCommands, AsyncConnectionConfig, Value};
use anyhow::Context;

use crate::driver::{POLL_MESSAGES_MAX, POLL_WAIT};

async fn connect(brokers: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = ::redis::Client::open(crate::driver::broker_url(brokers, "redis://", "/"))?;
    // A reply can wait for the fsync of the append-only file under load: the client's
    // default of 500 ms would count a slow acknowledgement as a failure.
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot reach a Redis server at {brokers} (--brokers)"))
}

fn key(topic: &str, partition: u32) -> String {
    format!("{topic}:{partition}")
}

/// Checks that the server answers; stream keys are made by the first `XADD`. Returns
/// the partition count.
pub async fn setup(brokers: &str, partitions: u32) -> anyhow::Result<u32> {
    let mut con = connect(brokers).await?;
    let _: () = ::redis::cmd("PING").query_async(&mut con).await?;
    Ok(partitions)
}

/// A producer on its own multiplexed connection.
pub struct Producer {
    con: MultiplexedConnection,
    keys: Vec<String>,
    next: AtomicU64,
}

impl Producer {
    /// Connects; messages go to the partitions' keys in turn.
    pub async fn connect(brokers: &str, topic: &str, partitions: u32) -> anyhow::Result<Self> {
        Ok(Producer {
            con: connect(brokers).await?,
            keys: (0..partitions).map(|p| key(topic, p)).collect(),
            next: AtomicU64::new(0),
        })
    }

    /// Appends one message; true once the server replied with its entry id.
    pub async fn send(&self, value: Vec<u8>) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.keys.len();
        let mut con = self.con.clone();
        let id: ::redis::RedisResult<Value> = ::redis::cmd("XADD")
            .arg(&self.keys[i])
            .arg("*")
            .arg("v")
            .arg(value)
            .query_async(&mut con)
            .await;
        matches!(id, Ok(Value::BulkString(_)))
    }
}

/// A reader of some stream keys.
pub struct Consumer {
    con: MultiplexedConnection,
    keys: Vec<String>,
    /// The id of the last entry read from each key.
    last_ids: Vec<String>,
}

impl Consumer {
    /// Connects and starts after each key's current last entry.
    pub async fn connect(brokers: &str, topic: &str, partitions: &[u32]) -> anyhow::Result<Self> {
        let mut con = connect(brokers).await?;
        let keys: Vec<String> = partitions.iter().map(|p| key(topic, *p)).collect();
        let mut last_ids = Vec::new();
        for k in &keys {
            let last: Value = ::redis::cmd("XREVRANGE")
                .arg(k)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con)
                .await?;
            last_ids.push(first_entry_id(&last).unwrap_or_else(|| "0-0".to_string()));
        }
        Ok(Consumer {
            con,
            keys,
            last_ids,
        })
    }

    /// Reads what was appended since the last poll, waiting up to [`POLL_WAIT`] when
    /// nothing was; appends each message's send time.
    pub async fn poll(&mut self, sent: &mut Vec<u64>) -> anyhow::Result<()> {
        let opts = StreamReadOptions::default()
            .block(POLL_WAIT.as_millis() as usize)
            .count(POLL_MESSAGES_MAX);
        let reply: Option<StreamReadReply> = self
            .con
            .xread_options(&self.keys, &self.last_ids, &opts)
            .await
            .context("XREAD")?;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(i) = self.keys.iter().position(|k| *k == stream.key) else {
                anyhow::bail!("XREAD answered for a key not asked: {}", stream.key);
            };
            for entry in stream.ids {
                if let Some(Value::BulkString(v)) = entry.map.get("v") {
                    crate::driver::push_sent_time(sent, Some(v));
                }
                self.last_ids[i] = entry.id;
            }
        }
        Ok(())
    }
}

/// The id of the first entry of an `XRANGE`/`XREVRANGE` reply.
fn first_entry_id(reply: &Value) -> Option<String> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let Value::Array(entry) = entries.first()? else {
        return None;
    };
    match entry.first()? {
        Value::BulkString(id) => String::from_utf8(id.clone()).ok(),
        Value::SimpleString(id) => Some(id.clone()),
        _ => None,
    }
}
