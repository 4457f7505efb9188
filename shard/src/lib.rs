//! ringmq's shards: one broker per core.
//!
//! The principal type is [`broker::Shard`]: created on a pinned glommio executor with
//! [`broker::Shard::start`], it owns the partitions that [`placement::place`] puts on
//! it, answers native-protocol requests (it is the connection
//! [`ringmq_net::conn::Handler`]) and forwards the parts of requests that other shards
//! own over the bounded channels made by [`broker::links`]. Topic metadata is a
//! [`topics::TopicTable`], changed only by shard 0 and broadcast to all. Long-poll
//! fetches sleep on the shard's [`timers::Timers`], a [`wheel::TimingWheel`].
#![deny(missing_docs)]

pub mod broker;
pub mod error;
pub mod groups;
pub mod kafka;
pub mod kafka_groups;
pub mod native_groups;
pub mod placement;
pub mod producer_ids;
pub mod producers;
pub mod timers;
pub mod topic_configs;
pub mod topics;
pub mod wheel;
