//! Fetch: a fetch operation for the shard, answered by a hand-written encoder, since
//! on-disk records go file → socket without a copy (`OutFrame` file parts).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use ringmq_net::codec::OutFrame;
use ringmq_shard::ops::{Fetch, FetchPart, Isolation, Reader, TopicPartition};

use crate::KafkaService;
use crate::errors::code_msg;

impl KafkaService {
    pub(crate) async fn fetch(&self, r: km::FetchRequest, version: i16, cid: i32) -> OutFrame {
        let mut parts = Vec::new();
        // Per topic in request order: its name, its id, and each partition with the
        // error it gets without asking the shard (a negative partition, an unknown
        // topic id), or `None` when the shard answers it.
        let mut order: Vec<FetchTopicOrder> = Vec::new();
        for t in &r.topics {
            // From v13 topics are named by id (KIP-516).
            let name = if version >= 13 {
                self.topic_by_uuid(t.topic_id)
            } else {
                Some(t.topic.0.to_string())
            };
            let mut ps = Vec::new();
            for p in &t.partitions {
                match (&name, u32::try_from(p.partition)) {
                    (None, _) => ps.push((p.partition, Some(KErr::UnknownTopicId.code()))),
                    (Some(name), Ok(partition)) => {
                        parts.push(FetchPart {
                            tp: TopicPartition::new(name.clone(), partition),
                            offset: p.fetch_offset,
                            max_bytes: p.partition_max_bytes.max(0) as u32,
                            leader_epoch: (version >= 9).then_some(p.current_leader_epoch),
                            durable_offset: None,
                        });
                        ps.push((p.partition, None));
                    }
                    (Some(_), Err(_)) => {
                        ps.push((p.partition, Some(KErr::UnknownTopicOrPartition.code())))
                    }
                }
            }
            order.push((name.unwrap_or_default(), t.topic_id, ps));
        }
        let max_bytes = if r.max_bytes > 0 {
            r.max_bytes as u32
        } else {
            i32::MAX as u32
        };
        // A fetch from a broker (replica id set) is a follower's: it reads to the log
        // end. Consumers read to the high watermark, or to the last stable offset.
        let replica_id = if version >= 15 {
            r.replica_state.replica_id.0
        } else {
            r.replica_id.0
        };
        let reader = if replica_id >= 0 {
            Reader::Follower {
                replica_id,
                leader_epoch: r.replica_state.replica_epoch as i32,
            }
        } else if r.isolation_level == 1 {
            Reader::Consumer(Isolation::ReadCommitted)
        } else {
            Reader::Consumer(Isolation::ReadUncommitted)
        };
        let fetch = Fetch {
            reader,
            max_wait: Duration::from_millis(r.max_wait_ms.max(0) as u64),
            min_bytes: r.min_bytes.max(0) as u32,
            max_bytes,
            parts,
        };
        // Held to max_bytes and each partition's limit by the shard (KIP-74).
        let mut results = self.shard.fetch(fetch).await.into_iter();
        let flexible = version >= 12;
        let mut f = OutFrame::begin();
        {
            let b = f.bytes_mut();
            b.put_i32(cid);
            if flexible {
                b.put_u8(0); // response header tagged fields
            }
            b.put_i32(0); // throttle_time_ms
            if version >= 7 {
                b.put_i16(0);
                b.put_i32(0); // session id 0: no incremental fetch session (KIP-227)
            }
            put_len(b, order.len(), flexible);
        }
        for (name, id, ps) in &order {
            if version >= 13 {
                f.bytes_mut().put_slice(id.as_bytes());
            } else {
                put_string(f.bytes_mut(), name, flexible);
            }
            put_len(f.bytes_mut(), ps.len(), flexible);
            for &(partition, early) in ps {
                let res = if early.is_none() {
                    results.next()
                } else {
                    None
                };
                let b = f.bytes_mut();
                b.put_i32(partition);
                match &res {
                    Some(res) => {
                        b.put_i16(code_msg(&res.records).0);
                        b.put_i64(res.high_watermark);
                        b.put_i64(res.last_stable_offset);
                        if version >= 5 {
                            b.put_i64(res.log_start_offset);
                        }
                    }
                    None => {
                        b.put_i16(early.unwrap_or(KErr::UnknownTopicOrPartition.code()));
                        b.put_i64(-1);
                        b.put_i64(-1);
                        if version >= 5 {
                            b.put_i64(-1);
                        }
                    }
                }
                put_len(b, 0, flexible); // aborted transactions: none
                if version >= 11 {
                    b.put_i32(-1); // preferred read replica
                }
                let len = res.as_ref().map_or(0, |r| r.len());
                if flexible {
                    put_uvarint(b, len as u32 + 1);
                } else {
                    b.put_i32(len as i32);
                }
                if let Some(Ok(records)) = res.as_ref().map(|r| &r.records) {
                    f.put_chunks(records);
                }
                if flexible {
                    f.bytes_mut().put_u8(0); // partition tagged fields
                }
            }
            if flexible {
                f.bytes_mut().put_u8(0); // topic tagged fields
            }
        }
        if flexible {
            f.bytes_mut().put_u8(0); // response tagged fields
        }
        f.seal()
    }
}

/// A fetched topic in request order: its name, its id, and each partition with the
/// error it gets without asking the shard, or `None` when the shard answers it.
pub(crate) type FetchTopicOrder = (String, uuid::Uuid, Vec<(i32, Option<i16>)>);

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_len(b: &mut BytesMut, n: usize, flexible: bool) {
    if flexible {
        put_uvarint(b, n as u32 + 1);
    } else {
        b.put_i32(n as i32);
    }
}

fn put_string(b: &mut BytesMut, v: &str, flexible: bool) {
    if flexible {
        put_uvarint(b, v.len() as u32 + 1);
    } else {
        b.put_i16(v.len() as i16);
    }
    b.put_slice(v.as_bytes());
}
