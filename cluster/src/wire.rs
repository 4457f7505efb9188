//! The messages between nodes, carried by the [`crate::Transport`] as opaque frames.
//!
//! A frame is `[kind: u8][header length: u32 BE][header: JSON][payload]`. The header
//! is small (the request's fields); the payload carries bytes that must not be
//! re-encoded: a Raft message, or the record batches of a replica fetch (each
//! partition's share in order, its length in the header). JSON keeps the control
//! messages readable in a capture; the record bytes, which are the volume, are never
//! encoded.

use bytes::{BufMut, Bytes, BytesMut};
use ringmq_shard::error::BrokerError;
use ringmq_shard::ops::TopicOp;
use serde::{Deserialize, Serialize};

/// Bytes before the header.
const PREFIX_BYTES: usize = 5;

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A Raft message for the controller quorum (payload: the message).
    Raft,
    /// A node is alive (to the controller leader).
    Heartbeat(Heartbeat),
    /// A leader asks for an ISR change (to the controller leader).
    AlterPartition(AlterPartition),
    /// A topic change (to the controller leader).
    ChangeTopics(TopicOp),
    /// A follower fetches records (to the partition's leader).
    ReplicaFetch(ReplicaFetch),
    /// A follower asks where epochs end (to the partition's leader).
    EpochEnds(Vec<EpochAsk>),
}

/// [`Request::Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node.
    pub node: i32,
    /// Changes at every start of the node.
    pub incarnation: u64,
    /// Its Kafka listener as clients reach it (`host:port`).
    pub kafka: String,
    /// Its native listener.
    pub native: String,
    /// Its cluster listener.
    pub cluster: String,
}

/// [`Request::AlterPartition`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The asking leader.
    pub leader: i32,
    /// Its leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch the change is based on.
    pub partition_epoch: i32,
    /// The ISR asked for.
    pub new_isr: Vec<i32>,
}

/// [`Request::ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetch {
    /// The fetching follower.
    pub replica: i32,
    /// How long the leader may wait for data, ms.
    pub max_wait_ms: u64,
    /// Bytes the leader waits for.
    pub min_bytes: u32,
    /// Most bytes in the answer.
    pub max_bytes: u32,
    /// The partitions.
    pub parts: Vec<FetchAsk>,
}

/// One partition of a [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchAsk {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The follower's log end: fetch from here.
    pub fetch_offset: i64,
    /// The follower's durable offset.
    pub durable_offset: i64,
    /// The leader epoch the follower follows.
    pub leader_epoch: i32,
    /// Most bytes for this partition.
    pub max_bytes: u32,
}

/// One partition's answer to a [`ReplicaFetch`]; its records follow in the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchAnswer {
    /// Why not, if not.
    pub error: Option<BrokerError>,
    /// The leader's high watermark.
    pub high_watermark: i64,
    /// The leader's log start.
    pub log_start_offset: i64,
    /// Bytes of records in the payload for this partition.
    pub records_bytes: u64,
}

/// One partition of [`Request::EpochEnds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochAsk {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The leader epoch the follower follows (fencing).
    pub leader_epoch: i32,
    /// The epoch asked about.
    pub epoch: i32,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done (a Raft message taken).
    Done,
    /// Not done.
    Refused(BrokerError),
    /// This node is not the controller leader; it may know who is.
    NotController {
        /// The controller leader as this node knows it.
        leader: Option<i32>,
    },
    /// A change was committed at this metadata index (the asker waits until it has
    /// applied it).
    Committed {
        /// The metadata log index.
        index: u64,
    },
    /// The answer to a [`ReplicaFetch`], per partition in order; records in the
    /// payload.
    Fetched(Vec<FetchAnswer>),
    /// The answer to [`Request::EpochEnds`]: (epoch, end offset) or why not.
    EpochEnds(Vec<Result<(i32, i64), BrokerError>>),
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;

/// The frame's prefix and JSON header, with room for `payload_len` bytes after them.
fn encode_head<T: Serialize>(kind: u8, header: &T, payload_len: usize) -> BytesMut {
    let json = serde_json::to_vec(header).expect("wire headers serialize");
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + json.len() + payload_len);
    out.put_u8(kind);
    out.put_u32(json.len() as u32);
    out.put_slice(&json);
    out
}

fn encode<T: Serialize>(kind: u8, header: &T, payload: &[Bytes]) -> Bytes {
    let total: usize = payload.iter().map(Bytes::len).sum();
    let mut out = encode_head(kind, header, total);
    for p in payload {
        out.put_slice(p);
    }
    out.freeze()
}

fn decode<T: for<'de> Deserialize<'de>>(kind: u8, frame: &Bytes) -> Result<(T, Bytes), WireError> {
    if frame.len() < PREFIX_BYTES {
        return Err(WireError(format!(
            "a {}-byte frame is too short",
            frame.len()
        )));
    }
    if frame[0] != kind {
        return Err(WireError(format!(
            "frame kind {} where {kind} was expected",
            frame[0]
        )));
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let end = PREFIX_BYTES
        .checked_add(len)
        .filter(|&e| e <= frame.len())
        .ok_or_else(|| {
            WireError(format!(
                "a header of {len} bytes in a {}-byte frame",
                frame.len()
            ))
        })?;
    let header = serde_json::from_slice(&frame[PREFIX_BYTES..end])
        .map_err(|e| WireError(format!("a malformed header: {e}")))?;
    Ok((header, frame.slice(end..)))
}

impl Request {
    /// The frame for this request with `payload` after its header.
    pub fn encode(&self, payload: &[Bytes]) -> Bytes {
        encode(KIND_REQUEST, self, payload)
    }

    /// A request and its payload from a frame.
    pub fn decode(frame: &Bytes) -> Result<(Self, Bytes), WireError> {
        decode(KIND_REQUEST, frame)
    }
}

impl Response {
    /// The frame for this answer with `payload` after its header.
    pub fn encode(&self, payload: &[Bytes]) -> Bytes {
        encode(KIND_RESPONSE, self, payload)
    }

    /// An answer and its payload from a frame.
    pub fn decode(frame: &Bytes) -> Result<(Self, Bytes), WireError> {
        decode(KIND_RESPONSE, frame)
    }

    /// The frame for this answer with `payload` after its header, in parts: the
    /// payload's slices are sent as they are, not copied behind the header. Decodes as
    /// [`Response::encode`]'s frame does.
    pub fn encode_parts(&self, payload: Vec<Bytes>) -> crate::Frame {
        let mut parts = Vec::with_capacity(payload.len() + 1);
        parts.push(encode_head(KIND_RESPONSE, self, 0).freeze());
        parts.extend(payload.into_iter().filter(|p| !p.is_empty()));
        crate::Frame::from(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_shard::error::ErrorKind;

    #[test]
    fn frames_round_trip_with_their_payload() {
        let r = Request::EpochEnds(vec![EpochAsk {
            topic: "t".into(),
            partition: 3,
            leader_epoch: 4,
            epoch: 2,
        }]);
        let frame = r.encode(&[Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        let (back, payload) = Request::decode(&frame).unwrap();
        assert_eq!((back, &payload[..]), (r, &b"abc"[..]));
        let a = Response::Refused(BrokerError::new(ErrorKind::NotLeader, "no"));
        let (back, payload) = Response::decode(&a.encode(&[])).unwrap();
        assert_eq!((back, payload.len()), (a, 0));
    }

    #[test]
    fn a_frame_in_parts_is_the_frame_in_one_piece() {
        let a = Response::Fetched(vec![]);
        let payload = vec![
            Bytes::from_static(b"first"),
            Bytes::new(),
            Bytes::from_static(b"second"),
        ];
        let parts = a.encode_parts(payload.clone());
        assert_eq!(parts.len(), a.encode(&payload).len());
        let joined: Vec<u8> = parts.into_parts().concat();
        assert_eq!(joined, a.encode(&payload).to_vec());
        let (back, p) = Response::decode(&Bytes::from(joined)).unwrap();
        assert_eq!((back, &p[..]), (a, &b"firstsecond"[..]));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x01",
            b"\x01\xff\xff\xff\xff{}",
            b"\x02\x00\x00\x00\x02{}",
            b"\x01\x00\x00\x00\x03{x}",
        ] {
            assert!(
                Request::decode(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
