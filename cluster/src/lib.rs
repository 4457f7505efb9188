//! The node-to-node transport of a ringmq cluster: opaque request and response frames
//! between brokers (follower fetches, Raft messages, heartbeats), over QUIC or TCP, both
//! with mutual TLS. The message codec is not here: a frame is a [`Bytes`].
//!
//! The principal type is a [`Transport`], one per shard, started from a
//! [`TransportConfig`]. [`Transport::request`] sends a frame to a node and waits for its
//! answer; concurrent requests to a peer share one connection, at most `in_flight_max` at
//! a time (more wait: backpressure), connections are opened lazily and reopened after a
//! failure. The shard that serves the node's cluster listener (`listen` set) also gets an
//! [`Incoming`], whose [`IncomingRequest`]s name the calling node as its certificate does
//! ([`tls`]) and are answered with [`IncomingRequest::respond`].
//!
//! - [`TransportKind::Quic`] (`quic` module): quinn on a tokio `current_thread` runtime
//!   on its own thread, pinned to the shard's core, bridged to the glommio shard with
//!   bounded channels. One bidirectional stream per request; a stream's end marks a
//!   frame's end. A glommio task waiting for a reply is woken from the tokio thread
//!   through glommio's own foreign-waker path (see the `quic` module).
//! - [`TransportKind::Tcp`] (`tcp` module): glommio's `TcpStream` with rustls over it,
//!   length-prefixed frames carrying request ids, multiplexed on one connection per peer
//!   per shard. The reference for the cost of QUIC, and the fallback.
//!
//! Limits: every frame length is checked against `frame_bytes_max` before anything is
//! allocated for it (a frame over it fails with [`TransportErrorKind::TooLarge`], on
//! whichever side sees it); a peer that sends garbage is disconnected with a warning.
//!
//! Measured on this 2-core machine with `benches/transport.sh` (100 B request, 1 MiB
//! response, 16 in flight, release build, machine loaded by other builds): QUIC moved
//! 0.6–1.25× what TLS over TCP did (450–750 MB/s for TCP), request p50 25–38 ms for
//! both; a 4096-byte QUIC MTU was 0–22 % faster than 1200 on loopback, 8192 slower and
//! 16384 did not complete its handshake. Details in `docs/replication.md`, "Transport".
//!
//! ```no_run
//! # async fn example(config: ringmq_cluster::TransportConfig) -> Result<(), ringmq_cluster::TransportError> {
//! use ringmq_cluster::Transport;
//! let (transport, incoming) = Transport::start(config).await?;
//! if let Some(incoming) = incoming {
//!     glommio::spawn_local(async move {
//!         while let Some(req) = incoming.next().await {
//!             let answer = req.body.clone(); // an echo
//!             req.respond(answer);
//!         }
//!     })
//!     .detach();
//! }
//! let answer = transport.request(2, bytes::Bytes::from_static(b"hello")).await?;
//! # let _ = answer;
//! transport.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
pub mod node;
mod quic;
mod records;
pub mod replicas;
mod tcp;
pub mod tls;
pub mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use bytes::Bytes;
pub use error::{TransportError, TransportErrorKind};
use glommio::sync::Semaphore;
pub use tls::{TlsFiles, init_certs, node_name};

/// A node of the cluster.
pub type NodeId = i32;

/// Which protocol carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// QUIC (quinn): the default.
    #[default]
    Quic,
    /// TLS over TCP on the shard's own executor.
    Tcp,
}

/// How a shard's [`Transport`] runs. Owned by the shard that starts it.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// QUIC or TCP.
    pub kind: TransportKind,
    /// This node.
    pub me: NodeId,
    /// The node's cluster listener: `Some` on the one shard that serves it.
    pub listen: Option<SocketAddr>,
    /// Every other node's cluster listener.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's CA, certificate and key.
    pub tls: TlsFiles,
    /// Pin the QUIC I/O thread to this CPU (the shard's core).
    pub core: Option<usize>,
    /// How long a request (connecting included) may take.
    pub request_timeout: Duration,
    /// UDP socket buffers asked for (QUIC); a warning says when the kernel grants less.
    pub socket_buffer_bytes: usize,
    /// The largest frame sent or accepted; larger ones fail with `TooLarge`.
    pub frame_bytes_max: usize,
    /// Requests in flight to one peer; more wait.
    pub in_flight_max: usize,
    /// QUIC: the UDP payload size to start with and never go below (quinn's
    /// `initial_mtu` and `min_mtu`); path MTU discovery may raise it. 1200 (the default)
    /// is QUIC's minimum and safe on any network; on loopback 4096 measured 0–22 %
    /// faster, 8192 slower, and 16384 never completed a handshake
    /// (`benches/transport.sh`).
    pub quic_mtu_bytes: u16,
}

impl TransportConfig {
    /// Defaults for node `me`: QUIC, 10 s timeout, 8 MiB socket buffers, 64 MiB frames,
    /// 64 in flight per peer, no listener, no peers.
    pub fn new(me: NodeId, tls: TlsFiles) -> Self {
        Self {
            kind: TransportKind::Quic,
            me,
            listen: None,
            peers: BTreeMap::new(),
            tls,
            core: None,
            request_timeout: Duration::from_secs(10),
            socket_buffer_bytes: 8 << 20,
            frame_bytes_max: 64 << 20,
            in_flight_max: 64,
            quic_mtu_bytes: 1200,
        }
    }
}

/// A request another node sent: who sent it (from its verified certificate), the frame,
/// and the way back. Dropping it unanswered fails the caller's request (`Closed`).
#[derive(Debug)]
pub struct IncomingRequest {
    /// The calling node, as its certificate names it.
    pub from: NodeId,
    /// The request frame.
    pub body: Bytes,
    reply: futures_channel::oneshot::Sender<Frame>,
}

impl IncomingRequest {
    /// Sends `body` back to the caller. A body over `frame_bytes_max` reaches the caller
    /// as a `TooLarge` error instead.
    pub fn respond(self, body: impl Into<Frame>) {
        // The caller gave up (timeout, connection gone): nothing to do.
        let _ = self.reply.send(body.into());
    }
}

/// A response body in parts, which the transport sends one after another: the caller
/// receives them as one contiguous body. A replica fetch answer's record bytes stay the
/// slices they were read as, instead of being copied behind the answer's header (a copy
/// that took 10 % of a leader's CPU under RF=3 load in `benches/cluster.sh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    parts: Vec<Bytes>,
}

impl Frame {
    /// Bytes in all the parts.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// True when the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts, in order.
    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Self {
        Self { parts: vec![b] }
    }
}

impl From<Vec<Bytes>> for Frame {
    fn from(parts: Vec<Bytes>) -> Self {
        Self { parts }
    }
}

/// The requests arriving at this node's cluster listener. Owned by the shard that serves
/// the listener.
#[derive(Debug)]
pub struct Incoming {
    rx: async_channel::Receiver<IncomingRequest>,
}

impl Incoming {
    /// The next request; `None` once the transport is shut down.
    pub async fn next(&self) -> Option<IncomingRequest> {
        self.rx.recv().await.ok()
    }
}

/// A peer as requests see it: its address and its in-flight limit.
struct Peer {
    addr: SocketAddr,
    in_flight: Semaphore,
}

enum Inner {
    Quic(quic::Quic),
    Tcp(tcp::Tcp),
}

/// One shard's end of the cluster transport. Owned by that shard (not `Send`).
pub struct Transport {
    kind: TransportKind,
    peers: BTreeMap<NodeId, Peer>,
    request_timeout: Duration,
    frame_bytes_max: usize,
    inner: Inner,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.kind)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Transport {
    /// Starts the transport on the current glommio executor: loads the TLS material,
    /// binds the listener if `listen` is set (then also returns its [`Incoming`]), and for
    /// QUIC starts the I/O thread. Connections to peers open on first use.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Transport, Option<Incoming>), TransportError> {
        assert!(config.in_flight_max > 0, "in_flight_max must be positive");
        assert!(
            config.frame_bytes_max > 0,
            "frame_bytes_max must be positive"
        );
        assert!(
            config.frame_bytes_max <= u32::MAX as usize,
            "frame lengths are 32-bit on the wire"
        );
        let tls = tls::TlsConfigs::load(&config.tls)?;
        // Every request the listener may hold at once: each peer's in-flight limit.
        let incoming_max = config.in_flight_max * config.peers.len().max(1);
        let (inner, rx) = match config.kind {
            TransportKind::Quic => {
                let (q, rx) = quic::Quic::start(&config, tls, incoming_max).await?;
                (Inner::Quic(q), rx)
            }
            TransportKind::Tcp => {
                let (t, rx) = tcp::Tcp::start(&config, tls, incoming_max).await?;
                (Inner::Tcp(t), rx)
            }
        };
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| {
                let p = Peer {
                    addr,
                    in_flight: Semaphore::new(config.in_flight_max as u64),
                };
                (id, p)
            })
            .collect();
        let t = Transport {
            kind: config.kind,
            peers,
            request_timeout: config.request_timeout,
            frame_bytes_max: config.frame_bytes_max,
            inner,
        };
        Ok((t, rx.map(|rx| Incoming { rx })))
    }

    /// Which protocol this transport speaks.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Sends `body` to node `to` and waits for its answer. Concurrent requests share one
    /// connection per peer, at most `in_flight_max` in flight (more wait, within the
    /// timeout); the connection opens on first use and reopens after a failure. Fails
    /// with `Unreachable` for an unknown node, `TooLarge` for a body over
    /// `frame_bytes_max`, `Timeout` when no answer came within `request_timeout`.
    pub async fn request(&self, to: NodeId, body: Bytes) -> Result<Bytes, TransportError> {
        self.request_within(to, body, self.request_timeout).await
    }

    /// [`Transport::request`] with its own timeout (a Raft message is worth little
    /// after an election timeout; a long-polling fetch needs its wait on top).
    pub async fn request_within(
        &self,
        to: NodeId,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let Some(peer) = self.peers.get(&to) else {
            return Err(TransportError::new(
                TransportErrorKind::Unreachable,
                format!("node {to} is not a configured peer"),
            ));
        };
        if body.len() > self.frame_bytes_max {
            return Err(TransportError::too_large(
                "request",
                body.len(),
                self.frame_bytes_max,
            ));
        }
        let work = async {
            let _permit = peer
                .in_flight
                .acquire_permit(1)
                .await
                .map_err(|e| TransportError::closed(format!("in-flight limit: {e}")))?;
            match &self.inner {
                Inner::Quic(q) => q.request(to, peer.addr, body).await,
                Inner::Tcp(t) => t.request(to, peer.addr, body).await,
            }
        };
        with_timeout(timeout, work, || {
            format!("no answer from node {to} within {timeout:?}")
        })
        .await
    }

    /// Closes every connection and the listener, and stops the QUIC thread. Requests
    /// still waiting fail with `Closed`; the [`Incoming`] ends.
    pub async fn shutdown(self) {
        for p in self.peers.values() {
            p.in_flight.close();
        }
        match self.inner {
            Inner::Quic(q) => q.shutdown().await,
            Inner::Tcp(t) => t.shutdown().await,
        }
    }
}

/// Runs `work` for at most `timeout` (on the glommio timer).
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, TransportError>>,
    message: impl FnOnce() -> String,
) -> Result<T, TransportError> {
    futures_lite::future::or(work, async move {
        glommio::timer::sleep(timeout).await;
        Err(TransportError::new(TransportErrorKind::Timeout, message()))
    })
    .await
}
