//! ringmq's native protocol.
//!
//! [`codec`] holds the frame format, the [`codec::Request`] and [`codec::Response`]
//! types and their encoders and decoders: pure code over byte buffers, used by the
//! broker and by clients alike. The wire format is described in `docs/protocol.md`.
//! With the `server` feature (the default), `conn::serve_connection` runs one connection
//! on a shard (pipelined requests, responses in request order, backpressure by in-flight
//! count and memory budget), `zerocopy` sends file ranges to sockets and `steer` sends
//! each new connection to the shard on the core that received its packets. Without it the
//! crate is the codec alone, which is what clients need.
//!
//! ```
//! use ringmq_net::codec::{decode_request, encode_request, Request};
//! let frame = encode_request(7, &Request::ListTopics);
//! let (header, req) = decode_request(frame.freeze().slice(4..));
//! assert_eq!(header.unwrap().request_id, 7);
//! assert_eq!(req.unwrap(), Request::ListTopics);
//! ```
#![deny(missing_docs)]

pub mod codec;
#[cfg(feature = "server")]
pub mod conn;
#[cfg(feature = "server")]
pub mod steer;
#[cfg(feature = "server")]
pub mod zerocopy;
