//! Produce and InitProducerId: batches go to the shard as produce operations with
//! Kafka's acks (0 none, 1 the leader, -1 all in-sync replicas).

use std::collections::HashMap;

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use ringmq_shard::ops::{Acks, ProducePart, TopicPartition};

use crate::errors::{code, code_msg};
use crate::{KafkaService, TRANSACTIONS_UNSUPPORTED, s};

impl KafkaService {
    /// Produce: acks 0 gets no response (`None`), 1 and -1 are durable (group commit
    /// under the topic's flush policy: on a single node, -1 means durable here).
    pub(crate) async fn produce(
        &self,
        r: km::ProduceRequest,
        version: i16,
    ) -> Option<km::ProduceResponse> {
        let acks = r.acks;
        let mut resp = km::ProduceResponse::default();
        if !matches!(acks, -1..=1) {
            for t in &r.topic_data {
                let mut tr = km::produce_response::TopicProduceResponse::default();
                tr.name = t.name.clone();
                for p in &t.partition_data {
                    let mut pr = km::produce_response::PartitionProduceResponse::default();
                    pr.index = p.index;
                    pr.error_code = KErr::InvalidRequiredAcks.code();
                    pr.base_offset = -1;
                    tr.partition_responses.push(pr);
                }
                resp.responses.push(tr);
            }
            return Some(resp);
        }
        // From v13 topics are named by id (KIP-516); an id names an existing topic.
        let names: Vec<Option<String>> = r
            .topic_data
            .iter()
            .map(|t| {
                if version >= 13 {
                    self.topic_by_uuid(t.topic_id)
                } else {
                    Some(t.name.0.to_string())
                }
            })
            .collect();
        if self.opts.auto_create_topics && version < 13 {
            let names: Vec<String> = names.iter().flatten().cloned().collect();
            self.auto_create(&names).await;
        }
        // Partitions with a batch go to the shard; the rest are answered here.
        let mut parts = Vec::new();
        let mut early: HashMap<(usize, usize), (i16, String)> = HashMap::new();
        for (ti, t) in r.topic_data.iter().enumerate() {
            for (pi, p) in t.partition_data.iter().enumerate() {
                let Some(name) = &names[ti] else {
                    early.insert(
                        (ti, pi),
                        (
                            KErr::UnknownTopicId.code(),
                            format!("unknown topic id {}", t.topic_id),
                        ),
                    );
                    continue;
                };
                match (&p.records, u32::try_from(p.index)) {
                    (Some(batch), Ok(partition)) if !batch.is_empty() => parts.push(ProducePart {
                        tp: TopicPartition::new(name.clone(), partition),
                        batch: batch.clone(),
                    }),
                    (_, Err(_)) => {
                        early.insert(
                            (ti, pi),
                            (
                                KErr::UnknownTopicOrPartition.code(),
                                format!("partition {}", p.index),
                            ),
                        );
                    }
                    _ => {
                        early.insert((ti, pi), (KErr::InvalidRecord.code(), "no records".into()));
                    }
                }
            }
        }
        let acks = match acks {
            0 => Acks::None,
            1 => Acks::Leader,
            _ => Acks::All,
        };
        let mut results = self.shard.produce(acks, parts).await.into_iter();
        if acks == Acks::None {
            return None;
        }
        for (ti, t) in r.topic_data.iter().enumerate() {
            let mut tr = km::produce_response::TopicProduceResponse::default();
            if version >= 13 {
                tr.topic_id = t.topic_id;
            } else {
                tr.name = t.name.clone();
            }
            for (pi, p) in t.partition_data.iter().enumerate() {
                let mut pr = km::produce_response::PartitionProduceResponse::default();
                pr.index = p.index;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = -1;
                if let Some((c, m)) = early.remove(&(ti, pi)) {
                    pr.error_code = c;
                    pr.error_message = (version >= 8).then(|| s(&m));
                    pr.base_offset = -1;
                } else if let Some(res) = results.next() {
                    let (c, m) = code_msg(&res.result);
                    pr.error_code = c;
                    pr.error_message = m.filter(|_| version >= 8);
                    pr.base_offset = *res.result.as_ref().unwrap_or(&-1);
                    if version >= 8 {
                        pr.record_errors = res
                            .record_errors
                            .iter()
                            .map(|(i, m)| {
                                let mut e =
                                    km::produce_response::BatchIndexAndErrorMessage::default();
                                e.batch_index = *i;
                                e.batch_index_error_message = Some(s(m));
                                e
                            })
                            .collect();
                    }
                } else {
                    pr.error_code = KErr::UnknownServerError.code();
                    pr.base_offset = -1;
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        Some(resp)
    }

    /// A producer id for an idempotent producer: always a new one, with epoch 0, as
    /// Kafka answers when there is no transactional id. The id and epoch a client sends
    /// are ignored: an id the broker did not issue must never become the client's
    /// (some clients send producer id 0 by default; they would all share it).
    pub(crate) async fn init_producer_id(
        &self,
        r: km::InitProducerIdRequest,
    ) -> km::InitProducerIdResponse {
        let mut resp = km::InitProducerIdResponse::default();
        resp.producer_id = km::ProducerId(-1);
        resp.producer_epoch = -1;
        match &r.transactional_id {
            None => {}
            // Kafka's answer to an empty transactional id.
            Some(t) if t.is_empty() => {
                resp.error_code = KErr::InvalidRequest.code();
                return resp;
            }
            Some(_) => {
                resp.error_code = TRANSACTIONS_UNSUPPORTED;
                return resp;
            }
        }
        match self.shard.new_producer_id().await {
            Ok(id) => {
                resp.producer_id = km::ProducerId(id);
                resp.producer_epoch = 0;
            }
            Err(e) => resp.error_code = code(&e),
        }
        resp
    }
}
