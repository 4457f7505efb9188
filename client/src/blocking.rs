//! A small blocking wrapper for programs without an async runtime: each call runs on a
//! private single-threaded tokio runtime.

use std::sync::Arc;

use crate::{Admin, Client, Consumer, ConsumerRecord, Position, Producer, ProducerConfig, Result};

/// A blocking handle to a broker: admin, produce and consume calls that return when done.
pub struct BlockingClient {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient")
            .field("addr", &self.client.addr())
            .finish()
    }
}

impl BlockingClient {
    /// Connects to the broker at `addr`. Must not be called from inside a tokio runtime.
    pub fn connect(addr: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Io {
                addr: addr.into(),
                source: e,
            })?;
        let client = rt.block_on(Client::connect(addr))?;
        Ok(Self {
            rt: Arc::new(rt),
            client,
        })
    }

    /// Topic administration.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.rt
            .block_on(Admin::new(self.client.clone()).create_topic(name, partitions, &[]))
    }

    /// Every topic's name.
    pub fn list_topics(&self) -> Result<Vec<String>> {
        self.rt
            .block_on(Admin::new(self.client.clone()).list_topics())
    }

    /// Sends records (key, value) to a topic and waits until all are acknowledged;
    /// returns each one's (partition, offset), in order. Records are batched together.
    pub fn send_all(
        &self,
        topic: &str,
        records: &[(Option<Vec<u8>>, Vec<u8>)],
    ) -> Result<Vec<(u32, i64)>> {
        self.rt.block_on(async {
            let producer = Producer::new(self.client.clone(), ProducerConfig::default());
            // Looked up first, so the sends below join batches in order.
            producer.prepare(topic).await?;
            let sends: Vec<_> = records
                .iter()
                .map(|(k, v)| {
                    let (p, topic, k, v) =
                        (producer.clone(), topic.to_string(), k.clone(), v.clone());
                    tokio::spawn(async move { p.send(&topic, k.as_deref(), &v, &[]).await })
                })
                .collect();
            let mut out = Vec::with_capacity(sends.len());
            for s in sends {
                out.push(
                    s.await
                        .map_err(|e| crate::Error::Protocol(e.to_string()))??,
                );
            }
            producer.close().await?;
            Ok(out)
        })
    }

    /// Reads up to `max` records of one partition from `at` (waits up to half a second
    /// for the first ones).
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        at: Position,
        max: usize,
    ) -> Result<Vec<ConsumerRecord>> {
        self.rt.block_on(async {
            let mut c = Consumer::new(self.client.clone());
            c.assign(topic, partition, at).await?;
            let mut out = c.poll().await?;
            out.truncate(max);
            Ok(out)
        })
    }
}
