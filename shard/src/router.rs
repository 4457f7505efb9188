//! Cross-shard routing: the bounded channels between shards, the calls and replies
//! that travel on them (the shard's own operations, never a wire request), and the
//! [`Router`] that sends a call and waits for its reply.
//!
//! A many-partition operation is split by owner shard with [`split`]; each owner's
//! part runs where it lives, and [`Split::join`] puts the results back in request
//! order, with an error for each part whose owner is unknown or did not answer.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use ringmq_net::conn::Handoff;
use ringmq_storage::Notify;

use crate::error::BrokerError;
use crate::groups::{GroupOp, GroupReply};
use crate::ops::{
    Acks, DeleteBefore, Deleted, EpochEnd, EpochQuery, Fetch, Fetched, OffsetFound, OffsetQuery,
    PartitionStats, ProducePart, Produced, TopicOp, TopicPartition,
};
use crate::timers::Timers;
use crate::topics::TopicTable;

/// Capacity of each cross-shard channel (messages).
pub const CROSS_SHARD_CHANNEL_MAX: usize = 1024;

/// A call from one shard to another.
#[derive(Debug)]
pub enum Call {
    /// Produce to partitions the callee owns.
    Produce {
        /// When to acknowledge.
        acks: Acks,
        /// The batches.
        parts: Vec<ProducePart>,
    },
    /// Fetch from partitions the callee owns. `id` names it for a later `StopFetch`.
    Fetch {
        /// The callee's part of the fetch.
        fetch: Fetch,
        /// Chosen by the caller, unique among its fetches.
        id: u64,
    },
    /// The fetch `id` of the caller has what it waited for elsewhere: stop waiting and
    /// answer with what is there.
    StopFetch {
        /// The fetch's id.
        id: u64,
    },
    /// Look up offsets of partitions the callee owns.
    ListOffsets(Vec<OffsetQuery>),
    /// Where leader epochs end, in partitions the callee owns.
    EpochEnds(Vec<EpochQuery>),
    /// Move log start offsets of partitions the callee owns (Kafka's DeleteRecords).
    DeleteRecords(Vec<DeleteBefore>),
    /// Describe these partitions.
    Stats(Vec<TopicPartition>),
    /// The shard's counters.
    Counters,
    /// Its metric samples.
    Metrics,
    /// Change the topics (on the metadata shard).
    ChangeTopics(TopicOp),
    /// Replace the topic table and open or close partitions to match.
    ApplyTopics(TopicTable),
    /// Take the cluster's metadata: topics, and each hosted partition's role.
    ApplyCluster(std::sync::Arc<crate::cluster::ClusterView>),
    /// A consumer-group request for a group this shard coordinates; `wait` is how long
    /// it may legitimately take (a join waits for the rebalance).
    Group {
        /// The operation.
        op: Box<GroupOp>,
        /// Added to the call timeout.
        wait: Duration,
    },
}

impl Call {
    /// How long the call may take on top of the call timeout: a fetch its max wait, a
    /// group join its rebalance.
    fn wait(&self) -> Duration {
        match self {
            Call::Fetch { fetch, .. } => fetch.max_wait,
            Call::Group { wait, .. } => *wait,
            _ => Duration::ZERO,
        }
    }
}

/// The answer to a [`Call`].
#[derive(Debug)]
pub enum Reply {
    /// To `Call::Produce`.
    Produced(Vec<Produced>),
    /// To `Call::Fetch`.
    Fetched(Vec<Fetched>),
    /// To `Call::ListOffsets`.
    Offsets(Vec<OffsetFound>),
    /// To `Call::EpochEnds`.
    EpochEnds(Vec<EpochEnd>),
    /// To `Call::DeleteRecords`.
    Deleted(Vec<Deleted>),
    /// To `Call::Stats`.
    Stats(Vec<PartitionStats>),
    /// To `Call::Counters`.
    Counters(Vec<(String, u64)>),
    /// To `Call::Metrics`.
    Metrics(Vec<crate::metrics::Sample>),
    /// To `Call::StopFetch`.
    Stopped,
    /// To any call the callee had no room for (too many calls in flight).
    Refused,
    /// To `Call::ChangeTopics`.
    TopicsChanged(Result<(), BrokerError>),
    /// To `Call::ApplyTopics`.
    Applied(Result<(), String>),
    /// To `Call::Group`.
    Group(Box<GroupReply>),
}

/// What travels on a cross-shard channel.
#[derive(Debug)]
pub enum Envelope {
    /// A call, with the id its reply will carry.
    Call {
        /// Caller-chosen id.
        id: u64,
        /// Calling shard.
        from: u32,
        /// The call.
        call: Call,
    },
    /// A reply to call `id`.
    Reply {
        /// The call's id.
        id: u64,
        /// The reply.
        reply: Reply,
    },
    /// A client connection moving to this shard (native `BindShard`).
    Connection(Handoff),
}

/// One shard's ends of the cross-shard channels: `senders[j]` goes to shard `j`,
/// `receivers[j]` comes from shard `j` (`None` at the shard's own index).
pub struct Links {
    senders: Vec<Option<SharedSender<Envelope>>>,
    receivers: Vec<Option<SharedReceiver<Envelope>>>,
}

/// Bounded channels between every pair of shards, one `Links` per shard.
pub fn links(shard_count: usize) -> Vec<Links> {
    let mut all: Vec<Links> = (0..shard_count)
        .map(|_| Links {
            senders: (0..shard_count).map(|_| None).collect(),
            receivers: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shard_count {
        for to in 0..shard_count {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CROSS_SHARD_CHANNEL_MAX);
                all[from].senders[to] = Some(tx);
                all[to].receivers[from] = Some(rx);
            }
        }
    }
    all
}

/// The channel to another shard. Sends go out in the order they were made: the
/// channel lets a new send take a free slot ahead of tasks already waiting for one, and
/// glommio's semaphore lets a new caller take a permit ahead of a waiter it has woken,
/// so a ticket queue orders them (a connection's forwarded produce requests must reach
/// the owner, and its partitions, in the order they arrived).
struct Peer {
    sender: ConnectedSender<Envelope>,
    /// Tickets of the sends waiting or under way, in the order they were made.
    queue: RefCell<VecDeque<u64>>,
    next_ticket: Cell<u64>,
    turn: Notify,
}

/// A send's place in [`Peer::queue`]; leaves it when the send is done or dropped.
struct PeerTurn<'a> {
    peer: &'a Peer,
    ticket: u64,
}

impl Drop for PeerTurn<'_> {
    fn drop(&mut self) {
        self.peer.queue.borrow_mut().retain(|&t| t != self.ticket);
        self.peer.turn.notify_all();
    }
}

impl Peer {
    fn new(sender: ConnectedSender<Envelope>) -> Self {
        Self {
            sender,
            queue: RefCell::new(VecDeque::new()),
            next_ticket: Cell::new(0),
            turn: Notify::new(),
        }
    }

    /// Sends `env` after every send started before it.
    async fn send(&self, env: Envelope) -> Result<(), ()> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.queue.borrow_mut().push_back(ticket);
        let _turn = PeerTurn { peer: self, ticket };
        loop {
            // Checked and registered with no await between: no wake-up is missed.
            let changed = self.turn.changed();
            if self.queue.borrow().front() == Some(&ticket) {
                break;
            }
            changed.await;
        }
        self.sender.send(env).await.map_err(|_| ())
    }
}

/// A shard's side of the cross-shard channels: sends calls and replies, and matches
/// replies to the calls waiting for them.
pub struct Router {
    shard_id: u32,
    /// `peers[j]`: the channel to shard `j` (`None` at this shard's index).
    peers: Vec<Option<Peer>>,
    /// Calls waiting for their reply, by id.
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_call_id: Cell<u64>,
    call_timeout: Duration,
    timers: std::rc::Rc<Timers>,
    /// Calls sent to other shards.
    calls_sent: Cell<u64>,
}

impl Router {
    /// Connects this shard's ends of the channels (every shard must connect at the
    /// same time: a sender's connect waits for its receiver). Returns the router and
    /// the receivers, by the shard they come from, for the shard to serve.
    pub async fn connect(
        shard_id: u32,
        links: Links,
        call_timeout: Duration,
        timers: std::rc::Rc<Timers>,
    ) -> (
        Self,
        Vec<(
            u32,
            glommio::channels::shared_channel::ConnectedReceiver<Envelope>,
        )>,
    ) {
        let mut sender_tasks = Vec::new();
        for s in links.senders {
            sender_tasks.push(glommio::spawn_local(async move {
                match s {
                    Some(s) => Some(s.connect().await),
                    None => None,
                }
            }));
        }
        let mut receiver_tasks = Vec::new();
        for (from, r) in links.receivers.into_iter().enumerate() {
            if let Some(r) = r {
                receiver_tasks.push((from as u32, glommio::spawn_local(r.connect())));
            }
        }
        let mut peers = Vec::new();
        for t in sender_tasks {
            peers.push(t.await.map(Peer::new));
        }
        let mut receivers = Vec::new();
        for (from, t) in receiver_tasks {
            receivers.push((from, t.await));
        }
        let router = Self {
            shard_id,
            peers,
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(1),
            call_timeout,
            timers,
            calls_sent: Cell::new(0),
        };
        (router, receivers)
    }

    /// Calls sent to other shards since start.
    pub fn calls_sent(&self) -> u64 {
        self.calls_sent.get()
    }

    /// Sends `call` to shard `to` and waits for the reply: `None` when the shard is
    /// gone or does not answer within the call timeout (plus what the call may
    /// legitimately wait); a late reply then finds no one waiting and is dropped.
    pub async fn call(&self, to: u32, call: Call) -> Option<Reply> {
        let extra = call.wait();
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        let peer = self.peer(to)?;
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        // Removes the pending entry however this call ends (answered, timed out, or
        // dropped by a caller that went away).
        let _pending = PendingGuard { router: self, id };
        self.calls_sent.set(self.calls_sent.get() + 1);
        let env = Envelope::Call {
            id,
            from: self.shard_id,
            call,
        };
        peer.send(env).await.ok()?;
        // A shard that does not answer in time (a stalled disk) gets the caller an
        // `Unavailable`, not a hang.
        let timeout = self
            .timers
            .sleep_until(self.timers.now() + self.call_timeout + extra);
        let reply = futures_lite::future::or(rx.recv(), async {
            timeout.await;
            None
        })
        .await;
        if reply.is_none() {
            tracing::warn!(shard = self.shard_id, to, "cross-shard call timed out");
        }
        reply
    }

    /// Sends the reply to call `id` back to shard `to`.
    pub async fn reply(&self, to: u32, id: u64, reply: Reply) {
        if let Some(peer) = self.peer(to) {
            let _ = peer.send(Envelope::Reply { id, reply }).await;
        }
    }

    /// Hands a reply that arrived to the call waiting for it (if it still waits).
    pub fn deliver(&self, id: u64, reply: Reply) {
        let tx = self.pending.borrow_mut().remove(&id);
        if let Some(tx) = tx {
            let _ = tx.try_send(reply);
        }
    }

    /// Moves a client connection to shard `to`; false when it cannot.
    pub async fn hand_over(&self, to: u32, conn: Handoff) -> bool {
        match self.peer(to) {
            Some(peer) => peer.send(Envelope::Connection(conn)).await.is_ok(),
            None => false,
        }
    }

    fn peer(&self, to: u32) -> Option<&Peer> {
        self.peers.get(to as usize)?.as_ref()
    }
}

/// Forgets a pending call when the call ends, however it ends.
struct PendingGuard<'a> {
    router: &'a Router,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.router.pending.borrow_mut().remove(&self.id);
    }
}

/// One partition's part of a many-partition operation.
pub trait Part {
    /// Its result.
    type Result;
    /// The partition it is for.
    fn tp(&self) -> &TopicPartition;
    /// The result when it could not run.
    fn failed(tp: TopicPartition, e: BrokerError) -> Self::Result;
}

impl Part for ProducePart {
    type Result = Produced;
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }
    fn failed(tp: TopicPartition, e: BrokerError) -> Produced {
        Produced::failed(tp, e)
    }
}

impl Part for crate::ops::FetchPart {
    type Result = Fetched;
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }
    fn failed(tp: TopicPartition, e: BrokerError) -> Fetched {
        Fetched::failed(tp, e)
    }
}

impl Part for OffsetQuery {
    type Result = OffsetFound;
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }
    fn failed(tp: TopicPartition, e: BrokerError) -> OffsetFound {
        OffsetFound { tp, result: Err(e) }
    }
}

impl Part for EpochQuery {
    type Result = EpochEnd;
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }
    fn failed(tp: TopicPartition, e: BrokerError) -> EpochEnd {
        EpochEnd { tp, result: Err(e) }
    }
}

impl Part for DeleteBefore {
    type Result = Deleted;
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }
    fn failed(tp: TopicPartition, e: BrokerError) -> Deleted {
        Deleted { tp, result: Err(e) }
    }
}

/// One owner's answer to its parts, with their positions in the operation: its
/// results in the order of its parts, or (its partitions, why) when it did not answer.
pub type Answer<P> = (
    Vec<usize>,
    Result<Vec<<P as Part>::Result>, (Vec<TopicPartition>, BrokerError)>,
);

/// A many-partition operation split by owner shard.
pub struct Split<P: Part> {
    /// Each owner shard's parts, with their positions in the operation.
    pub by_owner: Vec<(u32, Vec<usize>, Vec<P>)>,
    /// Results already known (parts with no owner), by position.
    known: Vec<Option<P::Result>>,
}

/// Splits `parts` by the shard `owner` says owns each (or the error it gives).
pub fn split<P: Part>(
    parts: Vec<P>,
    owner: impl Fn(&TopicPartition) -> Result<u32, BrokerError>,
) -> Split<P> {
    let mut known: Vec<Option<P::Result>> = Vec::with_capacity(parts.len());
    let mut by_owner: Vec<(u32, Vec<usize>, Vec<P>)> = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        match owner(part.tp()) {
            Ok(shard) => {
                known.push(None);
                match by_owner.iter_mut().find(|(s, _, _)| *s == shard) {
                    Some((_, positions, ps)) => {
                        positions.push(i);
                        ps.push(part);
                    }
                    None => by_owner.push((shard, vec![i], vec![part])),
                }
            }
            Err(e) => known.push(Some(P::failed(part.tp().clone(), e))),
        }
    }
    Split { by_owner, known }
}

impl<P: Part> Split<P> {
    /// Puts each owner's results back in request order. `answers[k]` belongs to
    /// `by_owner[k]`: its results in the order of its parts, or `Err((its partitions,
    /// why))` when the owner did not answer.
    pub fn join(self, answers: Vec<Answer<P>>) -> Vec<P::Result> {
        let mut out = self.known;
        for (positions, answer) in answers {
            match answer {
                Ok(results) if results.len() == positions.len() => {
                    for (pos, r) in positions.into_iter().zip(results) {
                        out[pos] = Some(r);
                    }
                }
                Ok(results) => {
                    tracing::error!(
                        expected = positions.len(),
                        got = results.len(),
                        "a shard answered a different number of partitions"
                    );
                }
                Err((tps, e)) => {
                    for (pos, tp) in positions.into_iter().zip(tps) {
                        out[pos] = Some(P::failed(tp, e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    P::failed(
                        TopicPartition::new("", 0),
                        BrokerError::new(
                            crate::error::ErrorKind::Internal,
                            "no answer for this partition",
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use bytes::Bytes;

    fn part(t: &str, p: u32) -> ProducePart {
        ProducePart {
            tp: TopicPartition::new(t, p),
            batch: Bytes::new(),
        }
    }

    fn ok(tp: &TopicPartition, offset: i64) -> Produced {
        Produced {
            tp: tp.clone(),
            result: Ok(offset),
            record_errors: Vec::new(),
        }
    }

    #[test]
    fn split_groups_by_owner_and_join_restores_request_order() {
        // Partition p of topic "a" lives on shard p % 2; topic "x" is unknown.
        let owner = |tp: &TopicPartition| match tp.topic.as_str() {
            "a" => Ok(tp.partition % 2),
            _ => Err(BrokerError::unknown_topic(&tp.topic)),
        };
        let parts = vec![part("a", 0), part("a", 1), part("x", 0), part("a", 2)];
        let s = split(parts, owner);
        assert_eq!(s.by_owner.len(), 2);
        let (first, positions, ps) = &s.by_owner[0];
        assert_eq!((*first, positions.clone()), (0, vec![0, 3]));
        assert_eq!(ps.len(), 2);
        let answers = s
            .by_owner
            .iter()
            .map(|(shard, positions, ps)| {
                let r = if *shard == 0 {
                    Ok(ps
                        .iter()
                        .map(|p| ok(&p.tp, 100 + p.tp.partition as i64))
                        .collect())
                } else {
                    Err((
                        ps.iter().map(|p| p.tp.clone()).collect(),
                        BrokerError::shard_silent(*shard),
                    ))
                };
                (positions.clone(), r)
            })
            .collect();
        let out = s.join(answers);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].result, Ok(100));
        assert_eq!(
            out[1].result.as_ref().unwrap_err().kind,
            ErrorKind::Unavailable
        );
        assert_eq!(out[1].tp, TopicPartition::new("a", 1));
        assert_eq!(
            out[2].result.as_ref().unwrap_err().kind,
            ErrorKind::UnknownTopic
        );
        assert_eq!(out[3].result, Ok(102));
    }

    #[test]
    fn an_owner_answering_the_wrong_count_fails_its_parts() {
        let s = split(vec![part("a", 0), part("a", 1)], |_| Ok(0));
        let positions = s.by_owner[0].1.clone();
        let out = s.join(vec![(
            positions,
            Ok(vec![ok(&TopicPartition::new("a", 0), 1)]),
        )]);
        assert!(
            out.iter()
                .all(|r| r.result.as_ref().unwrap_err().kind == ErrorKind::Internal)
        );
    }
}
