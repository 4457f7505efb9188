//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs and IncrementalAlterConfigs.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use ringmq_shard::error::{BrokerError, ErrorKind};
use ringmq_shard::ops::TopicOp;
use ringmq_shard::topics;

use crate::configs::*;
use crate::errors::{code, code_msg};
use crate::{KafkaService, s, topic_name, topic_uuid};

impl KafkaService {
    pub(crate) async fn create_topics(
        &self,
        r: km::CreateTopicsRequest,
        version: i16,
    ) -> km::CreateTopicsResponse {
        let mut resp = km::CreateTopicsResponse::default();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut tr = km::create_topics_response::CreatableTopicResult::default();
            tr.name = t.name.clone();
            tr.num_partitions = -1;
            tr.replication_factor = -1;
            let partitions = if t.num_partitions == -1 {
                Ok(self.opts.default_partitions)
            } else if t.num_partitions < 1 || t.num_partitions as u32 > topics::PARTITIONS_MAX {
                Err(format!(
                    "partition count must be 1 to {} (or -1 for the default)",
                    topics::PARTITIONS_MAX
                ))
            } else {
                Ok(t.num_partitions as u32)
            };
            let configs = configs_from_kafka(
                t.configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
            );
            let (err, message) = if let Err(e) = topics::validate_name(&name) {
                (KErr::InvalidTopicException.code(), Some(e))
            } else if let Err(e) = &partitions {
                (KErr::InvalidPartitions.code(), Some(e.clone()))
            } else if t.replication_factor == 0 || t.replication_factor < -1 {
                (
                    KErr::InvalidReplicationFactor.code(),
                    Some(format!(
                        "replication factor {}: use 1 or more (or -1 for the default)",
                        t.replication_factor
                    )),
                )
            } else if !t.assignments.is_empty() {
                (
                    KErr::InvalidRequest.code(),
                    Some("manual replica assignment is not supported".into()),
                )
            } else if let Err(e) = &configs {
                (KErr::InvalidConfig.code(), Some(e.clone()))
            } else if let Err(e) = topics::log_config(
                &configs.clone().unwrap_or_default().into_iter().collect(),
                &self.shard.log_defaults(),
            ) {
                (KErr::InvalidConfig.code(), Some(e))
            } else if r.validate_only {
                if self.shard.has_topic(&name) {
                    (
                        KErr::TopicAlreadyExists.code(),
                        Some(format!("topic {name:?} exists")),
                    )
                } else {
                    (0, None)
                }
            } else {
                let answer = self
                    .shard
                    .change_topics(TopicOp::Create {
                        name: name.clone(),
                        partitions: *partitions.as_ref().expect("checked above"),
                        configs: configs.clone().expect("checked above"),
                        replication_factor: u16::try_from(t.replication_factor).ok(),
                        validate_only: false,
                    })
                    .await;
                match answer {
                    Ok(()) => (0, None),
                    Err(e) => (code(&e), Some(e.message)),
                }
            };
            tr.error_code = err;
            tr.error_message = message.map(|m| s(&m)).filter(|_| version >= 1);
            if err == 0 && version >= 5 {
                tr.num_partitions = *partitions.as_ref().unwrap_or(&0) as i32;
                tr.replication_factor = 1;
                let explicit: BTreeMap<String, String> =
                    configs.unwrap_or_default().into_iter().collect();
                tr.configs = Some(
                    effective_configs(
                        &explicit,
                        &self.shard.log_defaults(),
                        self.shard.min_insync_replicas(),
                    )
                    .into_iter()
                    .map(|d| {
                        let mut c = km::create_topics_response::CreatableTopicConfigs::default();
                        c.name = s(&d.name);
                        c.value = Some(s(&d.value));
                        c.config_source = if d.set { 1 } else { 5 };
                        c
                    })
                    .collect(),
                );
                if let Some(meta) = self.shard.topic(&name).filter(|_| version >= 7) {
                    tr.topic_id = topic_uuid(meta.id);
                }
            }
            resp.topics.push(tr);
        }
        resp
    }

    pub(crate) async fn delete_topics(
        &self,
        r: km::DeleteTopicsRequest,
        version: i16,
    ) -> km::DeleteTopicsResponse {
        let mut resp = km::DeleteTopicsResponse::default();
        let mut wanted: Vec<(Option<String>, uuid::Uuid)> = r
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect();
        wanted.extend(
            r.topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
        );
        for (name, id) in wanted {
            let mut tr = km::delete_topics_response::DeletableTopicResult::default();
            if version >= 6 {
                tr.topic_id = id;
            }
            let name = name.or_else(|| {
                self.shard
                    .topic_names()
                    .into_iter()
                    .find(|n| self.shard.topic(n).is_some_and(|m| topic_uuid(m.id) == id))
            });
            let Some(name) = name else {
                tr.error_code = KErr::UnknownTopicId.code();
                tr.error_message = Some(s("unknown topic id")).filter(|_| version >= 5);
                resp.responses.push(tr);
                continue;
            };
            tr.name = Some(topic_name(&name));
            let answer = self.shard.change_topics(TopicOp::Delete { name }).await;
            let (c, m) = code_msg(&answer);
            tr.error_code = c;
            tr.error_message = m.filter(|_| version >= 5);
            resp.responses.push(tr);
        }
        resp
    }

    pub(crate) async fn create_partitions(
        &self,
        r: km::CreatePartitionsRequest,
    ) -> km::CreatePartitionsResponse {
        let mut resp = km::CreatePartitionsResponse::default();
        for t in r.topics {
            let mut tr = km::create_partitions_response::CreatePartitionsTopicResult::default();
            tr.name = t.name.clone();
            let r = if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                Err(BrokerError::new(
                    ErrorKind::InvalidRequest,
                    "manual replica assignment is not supported",
                ))
            } else if t.count < 1 {
                Err(BrokerError::new(
                    ErrorKind::InvalidPartitions,
                    format!("partition count {}", t.count),
                ))
            } else {
                self.shard
                    .change_topics(TopicOp::Partitions {
                        name: t.name.0.to_string(),
                        count: t.count as u32,
                        validate_only: r.validate_only,
                    })
                    .await
            };
            let (c, m) = code_msg(&r);
            tr.error_code = c;
            tr.error_message = m;
            resp.results.push(tr);
        }
        resp
    }

    pub(crate) fn describe_configs(
        &self,
        r: km::DescribeConfigsRequest,
        version: i16,
    ) -> km::DescribeConfigsResponse {
        let mut resp = km::DescribeConfigsResponse::default();
        for res in r.resources {
            let mut rr = km::describe_configs_response::DescribeConfigsResult::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let name = res.resource_name.to_string();
            // (described, source): TOPIC_CONFIG 1, STATIC_BROKER_CONFIG 4, DEFAULT_CONFIG 5.
            let configs: Vec<(Described, i8)> = match res.resource_type {
                // TOPIC
                2 => match self.shard.topic(&name) {
                    Some(meta) => effective_configs(
                        &meta.configs,
                        &self.shard.log_defaults(),
                        self.shard.min_insync_replicas(),
                    )
                    .into_iter()
                    .map(|d| {
                        let source = if d.set { 1 } else { 5 };
                        (d, source)
                    })
                    .collect(),
                    None => {
                        rr.error_code = KErr::UnknownTopicOrPartition.code();
                        rr.error_message = Some(s(&format!("unknown topic {name:?}")));
                        Vec::new()
                    }
                },
                // BROKER: the defaults new topics start from.
                4 => effective_configs(
                    &BTreeMap::new(),
                    &self.shard.log_defaults(),
                    self.shard.min_insync_replicas(),
                )
                .into_iter()
                .filter_map(|mut d| {
                    let (_, broker) = BROKER_CONFIG_NAMES.iter().find(|(t, _)| *t == d.name)?;
                    d.name = broker.to_string();
                    Some((d, 4))
                })
                .collect(),
                other => {
                    rr.error_code = KErr::InvalidRequest.code();
                    rr.error_message = Some(s(&format!("resource type {other} is not supported")));
                    Vec::new()
                }
            };
            let keys: Option<HashSet<String>> = res
                .configuration_keys
                .map(|k| k.iter().map(|k| k.to_string()).collect());
            for (d, source) in configs {
                if keys.as_ref().is_some_and(|keys| !keys.contains(&d.name)) {
                    continue;
                }
                let mut c = km::describe_configs_response::DescribeConfigsResourceResult::default();
                c.name = s(&d.name);
                c.value = Some(s(&d.value));
                c.read_only = false;
                c.config_source = source;
                if version >= 3 {
                    c.config_type = d.config_type;
                }
                rr.configs.push(c);
            }
            resp.results.push(rr);
        }
        resp
    }

    /// AlterConfigs (the whole set): a topic's configs become exactly the ones given;
    /// every other goes back to its default.
    pub(crate) async fn alter_configs_whole(
        &self,
        r: km::AlterConfigsRequest,
    ) -> km::AlterConfigsResponse {
        let mut resp = km::AlterConfigsResponse::default();
        for res in r.resources {
            let mut rr = km::alter_configs_response::AlterConfigsResourceResponse::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let result = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    |meta| {
                        let set = configs_from_kafka(
                            res.configs
                                .iter()
                                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
                        )?;
                        let remove = meta
                            .configs
                            .keys()
                            .filter(|k| !set.iter().any(|(s, _)| s == *k))
                            .cloned()
                            .collect();
                        Ok((set, remove))
                    },
                )
                .await;
            if let Err((c, m)) = result {
                rr.error_code = c;
                rr.error_message = Some(s(&m));
            }
            resp.responses.push(rr);
        }
        resp
    }

    /// Changes a topic's stored configs as `changes` says, given the topic's metadata;
    /// the error code and message for the resource otherwise.
    pub(crate) async fn alter_topic(
        &self,
        resource_type: i8,
        name: &str,
        validate_only: bool,
        changes: impl FnOnce(&topics::TopicMeta) -> Result<StoredChanges, String>,
    ) -> Result<(), (i16, String)> {
        if resource_type != 2 {
            return Err((
                KErr::InvalidRequest.code(),
                format!("resource type {resource_type}: only topics (2) can be altered"),
            ));
        }
        let Some(meta) = self.shard.topic(name) else {
            return Err((
                KErr::UnknownTopicOrPartition.code(),
                format!("unknown topic {name:?}"),
            ));
        };
        let (set, remove) = changes(&meta).map_err(|e| (KErr::InvalidConfig.code(), e))?;
        self.change_configs(name.to_string(), set, remove, validate_only)
            .await
    }

    /// Sets and removes a topic's configs (ringmq's names) on the metadata shard.
    pub(crate) async fn change_configs(
        &self,
        name: String,
        set: Vec<(String, String)>,
        remove: Vec<String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        self.shard
            .change_topics(TopicOp::Configs {
                name,
                set,
                remove,
                validate_only,
            })
            .await
            .map_err(|e| (code(&e), e.message))
    }

    /// IncrementalAlterConfigs on topics: SET and DELETE of the settings ringmq has
    /// (APPEND and SUBTRACT apply to list settings, which it has none of).
    pub(crate) async fn alter_configs(
        &self,
        r: km::IncrementalAlterConfigsRequest,
    ) -> km::IncrementalAlterConfigsResponse {
        let mut resp = km::IncrementalAlterConfigsResponse::default();
        for res in r.resources {
            let mut rr =
                km::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let defaults = self.shard.log_defaults();
            let result = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    |meta| incremental_changes(&meta.configs, &defaults, &res.configs),
                )
                .await;
            if let Err((c, m)) = result {
                rr.error_code = c;
                rr.error_message = Some(s(&m));
            }
            resp.responses.push(rr);
        }
        resp
    }
}
