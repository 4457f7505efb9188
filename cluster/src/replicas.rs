//! Replication between nodes, for one shard: the follower side (fetch sessions to
//! each leader node this shard follows partitions of), the leader side (answering other
//! nodes' replica fetches and epoch questions through the shard's own operations), and
//! the ISR changes this shard's leaders ask the controller for.
//!
//! A fetch session ([`fetch_session`]) runs per (shard, leader node) while the shard
//! follows at least one partition of that leader: each round it asks where epochs end
//! for the partitions that are truncating, and sends one replica fetch for all the
//! partitions that are fetching (batched: one request per shard and leader, whatever
//! the partition count). The leader long-polls it (`FETCH_MAX_WAIT`) until data arrives,
//! so an idle follower costs one request per max wait.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ringmq_replication::{EpochEndOffset, FollowerRequest};
use ringmq_shard::broker::Shard;
use ringmq_shard::error::{BrokerError, ErrorKind};
use ringmq_shard::ops::{EpochQuery, Fetch, FetchPart, Reader, TopicPartition};
use ringmq_shard::partition::Partition;
use ringmq_shard::replica::{IsrChange, LeaderAnswer};

use crate::wire::{self, Request, Response};
use crate::{NodeId, Transport};

/// How long a leader holds a replica fetch that finds nothing new.
pub const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bytes a replica fetch asks for at most, over all partitions.
pub const FETCH_BYTES_MAX: u32 = 16 << 20;
/// Bytes per partition a replica fetch asks for at most.
pub const FETCH_PARTITION_BYTES_MAX: u32 = 4 << 20;
/// How long a refused ISR change stays in flight before the leader may propose again.
const REFUSED_BACKOFF: Duration = Duration::from_secs(1);
/// Pause after a round in which the leader refused a partition.
const REFUSED_RETRY_AFTER: Duration = Duration::from_millis(20);

/// How a round of a fetch session went.
enum Round {
    /// Every partition answered.
    Done,
    /// The leader answered, refusing some partition.
    Refused,
    /// No answer (the leader unreachable, or the answer malformed).
    Failed,
}

/// Pause after a failed round (the leader unreachable, or not yet leading).
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Starts this shard's replication tasks: a supervisor that keeps one fetch session per
/// leader node, and the ISR-change sender.
pub fn start(shard: Rc<Shard>, transport: Rc<Transport>, voters: Vec<NodeId>) {
    let sessions: Rc<RefCell<BTreeSet<NodeId>>> = Rc::default();
    {
        let (shard, transport) = (shard.clone(), transport.clone());
        glommio::spawn_local(async move {
            loop {
                for leader in leaders_followed(&shard) {
                    if sessions.borrow_mut().insert(leader) {
                        let (shard, transport, sessions) =
                            (shard.clone(), transport.clone(), sessions.clone());
                        glommio::spawn_local(async move {
                            fetch_session(&shard, &transport, leader).await;
                            sessions.borrow_mut().remove(&leader);
                        })
                        .detach();
                    }
                }
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
        .detach();
    }
    glommio::spawn_local(async move { send_isr_changes(shard, transport, voters).await }).detach();
}

fn followers_of(shard: &Shard, leader: NodeId) -> Vec<Rc<Partition>> {
    shard
        .partitions()
        .into_iter()
        .filter(|p| p.followed().is_some_and(|(l, _)| l == leader))
        .collect()
}

fn leaders_followed(shard: &Shard) -> BTreeSet<NodeId> {
    shard
        .partitions()
        .iter()
        .filter_map(|p| p.followed().map(|(l, _)| l))
        .collect()
}

/// Fetches from `leader` for every partition this shard follows there, until there is
/// none left.
async fn fetch_session(shard: &Rc<Shard>, transport: &Transport, leader: NodeId) {
    tracing::debug!(shard = shard.id(), leader, "replica fetch session starts");
    loop {
        let parts = followers_of(shard, leader);
        if parts.is_empty() {
            break;
        }
        let mut asks = Vec::new();
        let mut fetches = Vec::new();
        for p in &parts {
            match p.follower_request() {
                Some(FollowerRequest::EndOffsetFor {
                    leader_epoch,
                    epoch,
                }) => asks.push((p.clone(), leader_epoch, epoch)),
                Some(FollowerRequest::Fetch {
                    fetch_offset,
                    durable_offset,
                    leader_epoch,
                    ..
                }) => fetches.push((p.clone(), fetch_offset, durable_offset, leader_epoch)),
                None => {}
            }
        }
        let round = if !asks.is_empty() {
            ask_epochs(transport, leader, asks).await
        } else {
            fetch(shard, transport, leader, fetches).await
        };
        match round {
            Round::Done => {}
            // The leader answered but refused a partition (not leading it yet, an epoch
            // to learn): soon again, the high watermark may be waiting for this follower.
            Round::Refused => glommio::timer::sleep(REFUSED_RETRY_AFTER).await,
            Round::Failed => glommio::timer::sleep(RETRY_AFTER).await,
        }
    }
    tracing::debug!(shard = shard.id(), leader, "replica fetch session ends");
}

async fn ask_epochs(
    transport: &Transport,
    leader: NodeId,
    asks: Vec<(Rc<Partition>, i32, i32)>,
) -> Round {
    let request = Request::EpochEnds(
        asks.iter()
            .map(|(p, leader_epoch, epoch)| wire::EpochAsk {
                topic: p.tp().topic.clone(),
                partition: p.tp().partition,
                leader_epoch: *leader_epoch,
                epoch: *epoch,
            })
            .collect(),
    );
    let answers = match call(transport, leader, request, Duration::from_secs(5)).await {
        Some((Response::EpochEnds(a), _)) if a.len() == asks.len() => a,
        _ => return Round::Failed,
    };
    let mut ok = true;
    for ((p, leader_epoch, epoch), answer) in asks.into_iter().zip(answers) {
        match answer {
            Ok((e, end_offset)) => {
                let answer = EpochEndOffset {
                    epoch: e,
                    end_offset,
                };
                if let Err(e) = p.on_epoch_answer(leader_epoch, epoch, answer).await {
                    tracing::warn!(partition = %p.tp(), error = %e, "truncation failed");
                    ok = false;
                }
            }
            Err(e) => {
                tracing::debug!(partition = %p.tp(), leader, error = %e, "epoch question refused");
                ok = false;
            }
        }
    }
    if ok { Round::Done } else { Round::Refused }
}

async fn fetch(
    shard: &Shard,
    transport: &Transport,
    leader: NodeId,
    parts: Vec<(Rc<Partition>, i64, i64, i32)>,
) -> Round {
    if parts.is_empty() {
        return Round::Failed;
    }
    let request = Request::ReplicaFetch(wire::ReplicaFetch {
        replica: shard.node_id(),
        max_wait_ms: FETCH_MAX_WAIT.as_millis() as u64,
        min_bytes: 1,
        max_bytes: FETCH_BYTES_MAX,
        parts: parts
            .iter()
            .map(
                |(p, fetch_offset, durable_offset, leader_epoch)| wire::FetchAsk {
                    topic: p.tp().topic.clone(),
                    partition: p.tp().partition,
                    fetch_offset: *fetch_offset,
                    durable_offset: *durable_offset,
                    leader_epoch: *leader_epoch,
                    max_bytes: FETCH_PARTITION_BYTES_MAX,
                },
            )
            .collect(),
    });
    let (answers, payload) = match call(
        transport,
        leader,
        request,
        FETCH_MAX_WAIT + Duration::from_secs(5),
    )
    .await
    {
        Some((Response::Fetched(a), payload)) if a.len() == parts.len() => (a, payload),
        _ => return Round::Failed,
    };
    let mut at = 0usize;
    let mut ok = true;
    for ((p, _, _, leader_epoch), answer) in parts.into_iter().zip(answers) {
        let len = answer.records_bytes as usize;
        if at + len > payload.len() {
            tracing::warn!(leader, "a replica fetch answer shorter than it says");
            return Round::Failed;
        }
        let records = payload.slice(at..at + len);
        at += len;
        if let Some(e) = answer.error {
            tracing::debug!(partition = %p.tp(), leader, error = %e, "replica fetch refused");
            ok = false;
            continue;
        }
        let r = p
            .append_from_leader(LeaderAnswer {
                leader_epoch,
                high_watermark: answer.high_watermark,
                records,
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(partition = %p.tp(), leader, error = %e, "replicated batches not appended");
            ok = false;
        }
    }
    if ok { Round::Done } else { Round::Refused }
}

async fn call(
    transport: &Transport,
    to: NodeId,
    request: Request,
    timeout: Duration,
) -> Option<(Response, Bytes)> {
    match transport
        .request_within(to, request.encode(&[]), timeout)
        .await
    {
        Ok(frame) => match Response::decode(&frame) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(node = to, error = %e, "malformed cluster answer");
                None
            }
        },
        Err(e) => {
            tracing::debug!(node = to, error = %e, "cluster request failed");
            None
        }
    }
}

/// Sends the ISR changes this shard's leaders ask for to the controller leader (any
/// voter points at it), and tells a leader when its change was refused.
async fn send_isr_changes(shard: Rc<Shard>, transport: Rc<Transport>, voters: Vec<NodeId>) {
    let outbox = shard.outbox().clone();
    loop {
        outbox.ready().await;
        for change in outbox.take() {
            let (shard, transport, voters) = (shard.clone(), transport.clone(), voters.clone());
            glommio::spawn_local(async move {
                alter_partition(&shard, &transport, &voters, &change).await;
            })
            .detach();
        }
    }
}

/// Sends one ISR change until the controller decides it: committed (the metadata
/// brings it), refused for good (the leader forgets it), or overtaken (the leader no
/// longer has it in flight: the metadata settled it, or the leadership moved). No
/// answer is no decision: the change may still be committed, so it is sent again.
async fn alter_partition(
    shard: &Shard,
    transport: &Transport,
    voters: &[NodeId],
    change: &IsrChange,
) {
    let (new_isr, partition_epoch) = (
        change.proposal.new_isr().to_vec(),
        change.proposal.partition_epoch(),
    );
    let request = Request::AlterPartition(wire::AlterPartition {
        topic: change.tp.topic.clone(),
        partition: change.tp.partition,
        leader: shard.node_id(),
        leader_epoch: change.leader_epoch,
        partition_epoch,
        new_isr,
    });
    let mut to = shard
        .cluster()
        .and_then(|v| v.controller)
        .unwrap_or(voters[0]);
    let mut attempt = 0usize;
    loop {
        match call(transport, to, request.clone(), Duration::from_secs(10)).await {
            Some((Response::Committed { .. } | Response::Done, _)) => {
                tracing::info!(partition = %change.tp, change = ?change.proposal, "ISR change committed");
                return;
            }
            Some((Response::Refused(e), _)) => {
                tracing::info!(partition = %change.tp, error = %e, "ISR change refused");
                // Not at once: the leader would propose the same change at the next
                // fetch (a replica the controller has not unfenced yet, say).
                glommio::timer::sleep(REFUSED_BACKOFF).await;
                if let Some(p) = shard.partition(&change.tp)
                    && p.pending_isr_change().as_ref()
                        == Some(&(change.leader_epoch, change.proposal.clone()))
                {
                    p.isr_change_refused();
                }
                return;
            }
            Some((Response::NotController { leader: Some(l) }, _)) if l != to => to = l,
            _ => {
                attempt += 1;
                to = voters[attempt % voters.len()];
                glommio::timer::sleep(RETRY_AFTER).await;
            }
        }
        let still = shard
            .partition(&change.tp)
            .and_then(|p| p.pending_isr_change())
            .is_some_and(|(e, p)| e == change.leader_epoch && p == change.proposal);
        if !still {
            return;
        }
    }
}

/// Answers another node's replica fetch through the shard's own fetch (a follower
/// reader: up to the log end, counted by the leader's rules).
pub async fn serve_fetch(shard: &Rc<Shard>, from: NodeId, f: wire::ReplicaFetch) -> crate::Frame {
    if f.replica != from {
        return Response::Refused(BrokerError::new(
            ErrorKind::InvalidRequest,
            format!("node {from} fetched as replica {}", f.replica),
        ))
        .encode(&[])
        .into();
    }
    let fetch = Fetch {
        reader: Reader::Follower {
            replica_id: from,
            leader_epoch: -1,
        },
        max_wait: Duration::from_millis(f.max_wait_ms.min(FETCH_MAX_WAIT.as_millis() as u64 * 4)),
        min_bytes: f.min_bytes,
        max_bytes: f.max_bytes.min(FETCH_BYTES_MAX * 4),
        parts: f
            .parts
            .iter()
            .map(|a| FetchPart {
                tp: TopicPartition::new(a.topic.clone(), a.partition),
                offset: a.fetch_offset,
                max_bytes: a.max_bytes,
                leader_epoch: Some(a.leader_epoch),
                durable_offset: Some(a.durable_offset),
            })
            .collect(),
    };
    let fetched = shard.fetch(fetch).await;
    let mut answers = Vec::with_capacity(fetched.len());
    let mut payload = Vec::new();
    for r in fetched {
        let (error, bytes) = match r.records {
            Ok(records) => match ringmq_shard::ops::records_bytes(&records) {
                Ok(b) => (None, b),
                Err(e) => (Some(e), Vec::new()),
            },
            Err(e) => (Some(e), Vec::new()),
        };
        answers.push(wire::FetchAnswer {
            error,
            high_watermark: r.high_watermark,
            log_start_offset: r.log_start_offset,
            records_bytes: bytes.iter().map(|b| b.len() as u64).sum(),
        });
        payload.extend(bytes);
    }
    Response::Fetched(answers).encode_parts(payload)
}

/// Answers another node's epoch questions.
pub async fn serve_epochs(shard: &Rc<Shard>, asks: Vec<wire::EpochAsk>) -> Bytes {
    let queries = asks
        .into_iter()
        .map(|a| EpochQuery {
            tp: TopicPartition::new(a.topic, a.partition),
            leader_epoch: a.epoch,
            current_leader_epoch: Some(a.leader_epoch),
        })
        .collect();
    let ends = shard.end_of_epochs(queries).await;
    Response::EpochEnds(ends.into_iter().map(|e| e.result).collect()).encode(&[])
}
