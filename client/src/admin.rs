//! Topic administration.

use ringmq_net::codec::{Request, Response};

use crate::{Client, Error, Result};

/// One partition of a topic description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// The shard that owns it.
    pub shard: u32,
    /// First offset still stored.
    pub start_offset: i64,
    /// One past the last offset readers may see.
    pub end_offset: i64,
    /// Bytes on disk.
    pub size_bytes: u64,
}

/// A topic's partitions and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Partitions, by index.
    pub partitions: Vec<PartitionInfo>,
    /// Settings (`retention_ms`, `segment_bytes`, `flush`...).
    pub configs: Vec<(String, String)>,
}

/// Creates, deletes, lists and describes topics.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

fn done(r: Response) -> Result<()> {
    match r {
        Response::Done(e) if e.is_ok() => Ok(()),
        Response::Done(e) => Err(Error::broker(&e)),
        other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

impl Admin {
    /// Administration through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates a topic with `partitions` partitions and these settings (in a cluster,
    /// with the broker's default replication factor).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<()> {
        self.create_replicated_topic(name, partitions, None, configs)
            .await
    }

    /// Creates a topic whose partitions have `replication_factor` copies each, on as
    /// many nodes of the cluster (`None`: the broker's default; a single node takes
    /// only 1).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        configs: &[(String, String)],
    ) -> Result<()> {
        done(
            self.client
                .call(Request::CreateTopic {
                    name: name.into(),
                    partitions,
                    configs: configs.to_vec(),
                    replication_factor,
                })
                .await?,
        )
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        done(
            self.client
                .call(Request::DeleteTopic { name: name.into() })
                .await?,
        )
    }

    /// Every topic's name.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        match self.client.call(Request::ListTopics).await? {
            Response::Topics(mut v) => {
                v.sort();
                Ok(v)
            }
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// One topic's partitions and settings.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        match self
            .client
            .call(Request::DescribeTopic { name: name.into() })
            .await?
        {
            Response::Topic {
                error,
                name,
                partitions,
                configs,
            } => {
                if !error.is_ok() {
                    return Err(Error::broker(&error));
                }
                Ok(TopicDescription {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|p| PartitionInfo {
                            partition: p.partition,
                            shard: p.shard,
                            start_offset: p.start_offset,
                            end_offset: p.high_watermark,
                            size_bytes: p.size_bytes,
                        })
                        .collect(),
                    configs,
                })
            }
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}
