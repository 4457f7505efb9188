//! ringmq's shards.
#![deny(missing_docs)]

pub mod wheel;
