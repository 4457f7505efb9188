//! ringmq's shards: one broker per core.
//!
//! The principal type is [`broker::Shard`]: created on a pinned glommio executor with
//! [`broker::Shard::start`], it owns the [`partition::Partition`]s that
//! [`placement::place`] puts on it and executes the shard's own operations
//! ([`ops`]): front-ends turn their requests into operations (the native protocol in
//! [`native`], Kafka's in [`kafka`]), the shard splits each by owner shard, runs its
//! own part and sends the rest over the bounded cross-shard channels of [`router`].
//! Errors are [`error::BrokerError`]s, which each front-end maps to its own codes.
//! Topic metadata is a [`topics::TopicTable`], changed only by shard 0
//! ([`metadata::edit`]) and broadcast to all. Long-poll fetches sleep on the shard's
//! [`timers::Timers`], a [`wheel::TimingWheel`].
#![deny(missing_docs)]

pub mod broker;
pub mod cluster;
pub mod error;
pub mod gate;
pub mod groups;
pub mod metadata;
pub mod metrics;
pub mod native;
pub mod native_groups;
pub mod ops;
pub mod partition;
pub mod placement;
pub mod producer_ids;
pub mod producers;
pub mod replica;
pub mod router;
pub mod timers;
pub mod topic_configs;
pub mod topics;
pub mod wheel;
