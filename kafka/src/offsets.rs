//! ListOffsets, OffsetForLeaderEpoch (from each partition's leader-epoch history) and
//! DeleteRecords.

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use ringmq_shard::ops::{DeleteBefore, EpochQuery, OffsetQuery, OffsetSpec, TopicPartition};

use crate::KafkaService;
use crate::errors::{code, code_msg};

impl KafkaService {
    pub(crate) async fn list_offsets(
        &self,
        r: km::ListOffsetsRequest,
        version: i16,
    ) -> km::ListOffsetsResponse {
        // Negative partitions and unknown specs are answered here; the rest in order.
        let mut queries = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                let spec = match p.timestamp {
                    -2 | -4 => OffsetSpec::Earliest,
                    -1 => OffsetSpec::Latest,
                    -3 => OffsetSpec::MaxTimestamp,
                    -5 => OffsetSpec::LatestTiered,
                    ts if ts >= 0 => OffsetSpec::Timestamp(ts),
                    _ => continue,
                };
                if let Ok(partition) = u32::try_from(p.partition_index) {
                    queries.push(OffsetQuery {
                        tp: TopicPartition::new(t.name.0.to_string(), partition),
                        spec,
                        leader_epoch: (version >= 4).then_some(p.current_leader_epoch),
                    });
                }
            }
        }
        let mut results = self.shard.list_offsets(queries).await.into_iter();
        let mut resp = km::ListOffsetsResponse::default();
        for t in &r.topics {
            let mut tr = km::list_offsets_response::ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                let asked = p.partition_index >= 0
                    && (p.timestamp >= 0 || (-5..=-1).contains(&p.timestamp));
                if !asked {
                    pr.error_code = if p.partition_index < 0 {
                        KErr::UnknownTopicOrPartition.code()
                    } else {
                        KErr::InvalidRequest.code()
                    };
                } else {
                    match results.next().map(|f| f.result) {
                        Some(Ok(Some((offset, timestamp, epoch)))) => {
                            pr.offset = offset;
                            pr.timestamp = timestamp;
                            if version >= 4 {
                                pr.leader_epoch = epoch;
                            }
                        }
                        Some(Ok(None)) => {}
                        Some(Err(e)) => pr.error_code = code(&e),
                        None => pr.error_code = KErr::UnknownServerError.code(),
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// DeleteRecords: moves log start offsets (retention and reads respect them).
    pub(crate) async fn delete_records(
        &self,
        r: km::DeleteRecordsRequest,
    ) -> km::DeleteRecordsResponse {
        // A negative partition is answered here: it must never reach a partition.
        let mut parts = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                if let Ok(partition) = u32::try_from(p.partition_index) {
                    parts.push(DeleteBefore {
                        tp: TopicPartition::new(t.name.0.to_string(), partition),
                        offset: p.offset,
                    });
                }
            }
        }
        let mut results = self.shard.delete_records(parts).await.into_iter();
        let mut resp = km::DeleteRecordsResponse::default();
        for t in &r.topics {
            let mut tr = km::delete_records_response::DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::delete_records_response::DeleteRecordsPartitionResult::default();
                pr.partition_index = p.partition_index;
                match (p.partition_index >= 0).then(|| results.next()).flatten() {
                    Some(d) => {
                        pr.error_code = code_msg(&d.result).0;
                        pr.low_watermark = *d.result.as_ref().unwrap_or(&-1);
                    }
                    _ => {
                        pr.error_code = KErr::UnknownTopicOrPartition.code();
                        pr.low_watermark = -1;
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// Where each asked leader epoch ends, from the partition's leader-epoch history
    /// (`Partition::end_of_epoch`).
    pub(crate) async fn offset_for_leader_epoch(
        &self,
        r: km::OffsetForLeaderEpochRequest,
    ) -> km::OffsetForLeaderEpochResponse {
        let mut queries = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                if let Ok(partition) = u32::try_from(p.partition) {
                    queries.push(EpochQuery {
                        tp: TopicPartition::new(t.topic.0.to_string(), partition),
                        leader_epoch: p.leader_epoch,
                        current_leader_epoch: Some(p.current_leader_epoch),
                    });
                }
            }
        }
        let mut results = self.shard.end_of_epochs(queries).await.into_iter();
        let mut resp = km::OffsetForLeaderEpochResponse::default();
        for t in &r.topics {
            let mut tr =
                km::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            for p in &t.partitions {
                let mut pr = km::offset_for_leader_epoch_response::EpochEndOffset::default();
                pr.partition = p.partition;
                pr.leader_epoch = -1;
                pr.end_offset = -1;
                match (p.partition >= 0).then(|| results.next()).flatten() {
                    Some(e) => match e.result {
                        Ok((epoch, end)) => {
                            pr.leader_epoch = epoch;
                            pr.end_offset = end;
                        }
                        Err(e) => pr.error_code = code(&e),
                    },
                    None => pr.error_code = KErr::UnknownTopicOrPartition.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}
