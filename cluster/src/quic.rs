//! QUIC: quinn on a tokio `current_thread` runtime on a thread of its own, pinned to the
//! shard's core, bridged to the glommio shard with bounded channels.
//!
//! quinn's `Runtime` wants `Send` types and glommio's are not; an adapter measured here
//! moved 105–206 MB/s against 1.4 GB/s for quinn on its own tokio thread (DESIGN.md).
//!
//! ## The bridge
//! - shard → I/O thread: a bounded `async_channel` of [`Command`]s. The shard's send
//!   waits when it is full; the tokio side's receive wakes through tokio's own
//!   thread-safe waker.
//! - I/O thread → shard: every reply is a `futures_channel::oneshot`, incoming requests
//!   come through a bounded `async_channel`. The glommio task waiting on either leaves
//!   its glommio `Waker`; the tokio thread wakes it. glommio 0.9 handles a wake from a
//!   foreign thread itself (`task/raw.rs`, `do_wake`): the waker goes onto the executor's
//!   foreign-wake queue and, when the executor is asleep or preparing to sleep
//!   (`should_notify`), a write to the executor's own eventfd wakes its ring, the same
//!   eventfd mechanism `ringmq-uring` uses for its second ring; the executor drains the
//!   queue before sleeping (after a full fence, paired with one on the waking side:
//!   `vendor/README.md`), so no wake is lost. A test
//!   (`tests/wakeup.rs`) measures the delay from the tokio thread's send to the glommio
//!   task running.
//!
//! ## On the wire
//! One bidirectional stream per request: the request frame is the stream's data up to
//! its end, the answer likewise on the way back. A refusal resets the stream with an
//! application code ([`CODE_TOO_LARGE`], [`CODE_NO_ANSWER`]). A connection accepts at
//! most `in_flight_max` concurrent streams per peer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, ReadToEndError, VarInt, WriteError};

use crate::tls::{TlsConfigs, node_name, node_of};
use crate::{IncomingRequest, NodeId, TransportConfig, TransportError, TransportErrorKind};

/// Stream reset code: the frame was over the receiver's `frame_bytes_max`.
const CODE_TOO_LARGE: u32 = 1;
/// Stream reset code: the request was dropped unanswered.
const CODE_NO_ANSWER: u32 = 2;
/// How long a closing endpoint waits for its peers to learn of it.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// What the shard asks of its I/O thread.
enum Command {
    Request {
        to: NodeId,
        addr: SocketAddr,
        body: Bytes,
        reply: oneshot::Sender<Result<Bytes, TransportError>>,
    },
    Shutdown,
}

/// The shard's handle on its QUIC I/O thread.
pub(crate) struct Quic {
    commands: async_channel::Sender<Command>,
    stopped: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// What the I/O thread needs to know, fixed at start.
struct Settings {
    client: quinn::ClientConfig,
    frame_bytes_max: usize,
    request_timeout: Duration,
    me: NodeId,
    known: Vec<NodeId>,
}

impl Quic {
    pub(crate) async fn start(
        config: &TransportConfig,
        tls: TlsConfigs,
        incoming_max: usize,
    ) -> Result<(Quic, Option<async_channel::Receiver<IncomingRequest>>), TransportError> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            TransportError::new(TransportErrorKind::Io, format!("{what}: {e}"))
        };
        let bind = config
            .listen
            .unwrap_or_else(|| match config.peers.values().next() {
                Some(SocketAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                _ => (Ipv4Addr::UNSPECIFIED, 0).into(),
            });
        let socket = udp_socket(bind, config.socket_buffer_bytes)
            .map_err(|e| io(&format!("UDP socket on {bind}"), &e))?;
        let transport = Arc::new(transport_config(config));
        let tls_err = |e: &dyn std::fmt::Display| {
            TransportError::new(TransportErrorKind::Tls, format!("QUIC TLS config: {e}"))
        };
        let server = match config.listen {
            Some(_) => {
                let crypto =
                    QuicServerConfig::try_from(tls.server.clone()).map_err(|e| tls_err(&e))?;
                let mut s = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                s.transport_config(transport.clone());
                Some(s)
            }
            None => None,
        };
        let crypto = QuicClientConfig::try_from(tls.client.clone()).map_err(|e| tls_err(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport);
        let mut known: Vec<NodeId> = config.peers.keys().copied().collect();
        known.push(config.me);
        known.sort_unstable();
        known.dedup();
        let settings = Settings {
            client,
            frame_bytes_max: config.frame_bytes_max,
            request_timeout: config.request_timeout,
            me: config.me,
            known,
        };
        let command_max = config.in_flight_max * config.peers.len().max(1) + 1;
        let (commands, commands_rx) = async_channel::bounded(command_max);
        let (incoming_tx, incoming_rx) = match config.listen {
            Some(_) => {
                let (tx, rx) = async_channel::bounded(incoming_max);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (started_tx, started_rx) = oneshot::channel::<Result<(), TransportError>>();
        let (stopped_tx, stopped) = oneshot::channel();
        let core = config.core;
        let thread = std::thread::Builder::new()
            .name(format!("quic-{}", config.me))
            .spawn(move || {
                if let Some(core) = core
                    && let Err(e) = pin_to(core)
                {
                    tracing::warn!(core, error = %e, "could not pin the QUIC thread");
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(TransportError::new(
                            TransportErrorKind::Io,
                            format!("tokio runtime: {e}"),
                        )));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let runtime = Arc::new(quinn::TokioRuntime);
                    let endpoint = match quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        server,
                        socket,
                        runtime,
                    ) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = started_tx.send(Err(TransportError::new(
                                TransportErrorKind::Io,
                                format!("QUIC endpoint: {e}"),
                            )));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    run(endpoint, Rc::new(settings), commands_rx, incoming_tx).await;
                });
                let _ = stopped_tx.send(());
            })
            .map_err(|e| io("QUIC thread", &e))?;
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io("QUIC thread", &"ended at start")),
        }
        Ok((
            Quic {
                commands,
                stopped,
                thread,
            },
            incoming_rx,
        ))
    }

    pub(crate) async fn request(
        &self,
        to: NodeId,
        addr: SocketAddr,
        body: Bytes,
    ) -> Result<Bytes, TransportError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request {
                to,
                addr,
                body,
                reply,
            })
            .await
            .map_err(|_| TransportError::closed("the QUIC thread has stopped"))?;
        // Dropping `answer` (a timeout) cancels the request on the I/O thread.
        answer
            .await
            .map_err(|_| TransportError::closed("the QUIC thread dropped the request"))?
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.stopped.await;
        // The thread has left its runtime: joining does not block the shard for long.
        let _ = self.thread.join();
    }
}

/// The transport parameters both sides use.
fn transport_config(config: &TransportConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let window = config.socket_buffer_bytes.max(1 << 20) as u64;
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.in_flight_max.min(1 << 20) as u32))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // A stream carries one response of several MiB: let one fill the socket buffer.
        .stream_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX))
        .receive_window(VarInt::from_u64(window * 4).unwrap_or(VarInt::MAX))
        .send_window(window * 4)
        // A peer that restarted cannot reset our connection (its reset key is new), so
        // only the idle timeout ends a connection to a dead process: keep it short, as
        // a controller's session timeout is, so a restarted node is reached again in
        // seconds (a keep-alive every second keeps live idle connections open).
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(4)).expect("4 s fits"),
        ))
        // GSO: sending without it cost 3× the CPU per GB here (REPLICATION.md).
        .enable_segmentation_offload(true)
        .initial_mtu(config.quic_mtu_bytes.max(1200))
        .min_mtu(config.quic_mtu_bytes.max(1200));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(config.quic_mtu_bytes.max(1452));
    t.mtu_discovery_config(Some(mtu));
    t
}

/// A UDP socket bound to `bind` with `buffer_bytes` asked for each way. As root the
/// limit (`rmem_max`, `wmem_max`) is bypassed (SO_RCVBUFFORCE); otherwise the kernel
/// caps the request and a warning says so: the default 208 KiB lost about 1 % of packets
/// here, 1 MiB none.
fn udp_socket(bind: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    for (force, plain, name) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        if setsockopt_int(&s, force, buffer_bytes).is_err() {
            setsockopt_int(&s, plain, buffer_bytes)?;
        }
        // Linux reports twice what it grants (its bookkeeping overhead).
        let granted = getsockopt_int(&s, plain)? / 2;
        if granted < buffer_bytes {
            tracing::warn!(
                asked = buffer_bytes,
                granted,
                "the kernel granted a smaller UDP {name} buffer than asked (raise net.core.rmem_max / wmem_max): expect packet loss under load"
            );
        } else {
            tracing::debug!(granted, "UDP {name} buffer");
        }
    }
    s.bind(&bind.into())?;
    Ok(s.into())
}

fn setsockopt_int(s: &socket2::Socket, opt: libc::c_int, value: usize) -> std::io::Result<()> {
    let v = value.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: an int option on a descriptor `s` holds open, read from a local.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_int(s: &socket2::Socket, opt: libc::c_int) -> std::io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int option written into a local of the size given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v.max(0) as usize)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins the calling thread to CPU `core`.
pub(crate) fn pin_to(core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it (checked
    // against its size below) and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One peer's connection on the I/O thread: opened by the first request that needs it;
/// `connecting` makes concurrent requests wait for that one handshake.
#[derive(Default)]
struct PeerConn {
    conn: RefCell<Option<quinn::Connection>>,
    connecting: tokio::sync::Mutex<()>,
}

/// The I/O thread's loop: serves commands until `Shutdown` (or the shard is gone).
async fn run(
    endpoint: quinn::Endpoint,
    settings: Rc<Settings>,
    commands: async_channel::Receiver<Command>,
    incoming: Option<async_channel::Sender<IncomingRequest>>,
) {
    let accept = incoming
        .map(|tx| tokio::task::spawn_local(accept_loop(endpoint.clone(), settings.clone(), tx)));
    let peers: Rc<RefCell<HashMap<NodeId, Rc<PeerConn>>>> = Rc::default();
    while let Ok(cmd) = commands.recv().await {
        match cmd {
            Command::Request {
                to,
                addr,
                body,
                mut reply,
            } => {
                let peer = peers.borrow_mut().entry(to).or_default().clone();
                let endpoint = endpoint.clone();
                let settings = settings.clone();
                tokio::task::spawn_local(async move {
                    let work = tokio::time::timeout(
                        settings.request_timeout,
                        request(&endpoint, &settings, &peer, to, addr, body),
                    );
                    let result = tokio::select! {
                        r = work => r.unwrap_or_else(|_| Err(TransportError::new(
                            TransportErrorKind::Timeout,
                            format!("no answer from node {to} within {:?}", settings.request_timeout),
                        ))),
                        _ = reply.cancellation() => return,
                    };
                    let _ = reply.send(result);
                });
            }
            Command::Shutdown => break,
        }
    }
    if let Some(a) = accept {
        a.abort();
    }
    endpoint.close(VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
}

/// The peer's connection, opened if there is none or it has closed.
async fn connection(
    endpoint: &quinn::Endpoint,
    settings: &Settings,
    peer: &PeerConn,
    to: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    let live = |p: &PeerConn| {
        p.conn
            .borrow()
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    };
    if let Some(c) = live(peer) {
        return Ok(c);
    }
    let _one = peer.connecting.lock().await;
    if let Some(c) = live(peer) {
        return Ok(c);
    }
    let connecting = endpoint
        .connect_with(settings.client.clone(), addr, &node_name(to))
        .map_err(|e| {
            TransportError::new(
                TransportErrorKind::Unreachable,
                format!("node {to} at {addr}: {e}"),
            )
        })?;
    let conn = connecting
        .await
        .map_err(|e| connection_error(&format!("connecting to node {to} at {addr}"), &e))?;
    tracing::debug!(node = to, %addr, "QUIC connection open");
    *peer.conn.borrow_mut() = Some(conn.clone());
    Ok(conn)
}

async fn request(
    endpoint: &quinn::Endpoint,
    settings: &Settings,
    peer: &PeerConn,
    to: NodeId,
    addr: SocketAddr,
    body: Bytes,
) -> Result<Bytes, TransportError> {
    let conn = connection(endpoint, settings, peer, to, addr).await?;
    let ctx = || format!("request to node {to}");
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_error(&ctx(), &e))?;
    let len = body.len();
    if let Err(e) = send.write_chunk(body).await {
        return Err(match e {
            WriteError::Stopped(code) => stream_code(code, "request", len, &ctx()),
            WriteError::ConnectionLost(e) => connection_error(&ctx(), &e),
            e => TransportError::closed(format!("{}: {e}", ctx())),
        });
    }
    let _ = send.finish();
    match read_to_end(&mut recv, settings.frame_bytes_max).await {
        Ok(v) => Ok(v),
        Err(ReadToEndError::TooLong) => {
            let _ = recv.stop(VarInt::from_u32(CODE_TOO_LARGE));
            Err(TransportError::new(
                TransportErrorKind::TooLarge,
                format!(
                    "{}: response over frame_bytes_max ({})",
                    ctx(),
                    settings.frame_bytes_max
                ),
            ))
        }
        Err(ReadToEndError::Read(ReadError::Reset(code))) => {
            Err(stream_code(code, "request", len, &ctx()))
        }
        Err(ReadToEndError::Read(ReadError::ConnectionLost(e))) => {
            Err(connection_error(&ctx(), &e))
        }
        Err(ReadToEndError::Read(e)) => Err(TransportError::closed(format!("{}: {e}", ctx()))),
    }
}

/// The error a peer's stream reset or stop code means.
fn stream_code(code: VarInt, what: &str, len: usize, ctx: &str) -> TransportError {
    match u32::try_from(code.into_inner()) {
        Ok(CODE_TOO_LARGE) => TransportError::new(
            TransportErrorKind::TooLarge,
            format!("{ctx}: the peer refused a frame as too large (our {what} was {len} bytes)"),
        ),
        Ok(CODE_NO_ANSWER) => TransportError::closed(format!("{ctx}: the peer gave no answer")),
        _ => TransportError::closed(format!("{ctx}: stream reset with code {code}")),
    }
}

/// Classifies a connection failure: a TLS alert or handshake failure is `Tls`.
fn connection_error(ctx: &str, e: &ConnectionError) -> TransportError {
    let is_crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let kind = match e {
        ConnectionError::TransportError(t) if is_crypto(t.code) => TransportErrorKind::Tls,
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => TransportErrorKind::Tls,
        ConnectionError::TimedOut => TransportErrorKind::Unreachable,
        ConnectionError::TransportError(_) => TransportErrorKind::Io,
        _ => TransportErrorKind::Closed,
    };
    TransportError::new(kind, format!("{ctx}: {e}"))
}

/// Accepts connections from peers and serves each.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    settings: Rc<Settings>,
    incoming: async_channel::Sender<IncomingRequest>,
) {
    while let Some(connecting) = endpoint.accept().await {
        let settings = settings.clone();
        let incoming = incoming.clone();
        tokio::task::spawn_local(async move {
            let remote = connecting.remote_address();
            let conn = match connecting.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "refused a cluster connection");
                    return;
                }
            };
            let from = conn
                .peer_identity()
                .and_then(|id| {
                    id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|certs| node_of(certs.first()?, settings.known.iter().copied()));
            let Some(from) = from else {
                tracing::warn!(%remote, "a cluster peer's certificate names no known node; closing");
                conn.close(VarInt::from_u32(CODE_NO_ANSWER), b"unknown node");
                return;
            };
            if from == settings.me {
                tracing::debug!(%remote, "a connection from this node itself");
            }
            serve_connection(conn, from, settings, incoming).await;
        });
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    from: NodeId,
    settings: Rc<Settings>,
    incoming: async_channel::Sender<IncomingRequest>,
) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(node = from, error = %e, "cluster connection closed");
                return;
            }
        };
        let incoming = incoming.clone();
        let max = settings.frame_bytes_max;
        tokio::task::spawn_local(serve_stream(from, send, recv, incoming, max));
    }
}

/// The rest of `recv`, at most `limit` bytes. Like quinn's `read_to_end`, without its
/// zero-filled buffer of the whole length: one chunk is kept as it came, more are joined
/// with one copy.
async fn read_to_end(recv: &mut quinn::RecvStream, limit: usize) -> Result<Bytes, ReadToEndError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(c) = recv
        .read_chunk(usize::MAX, true)
        .await
        .map_err(ReadToEndError::Read)?
    {
        len += c.bytes.len();
        if len > limit {
            return Err(ReadToEndError::TooLong);
        }
        chunks.push(c.bytes);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut b = bytes::BytesMut::with_capacity(len);
            for c in &chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    })
}

async fn serve_stream(
    from: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    incoming: async_channel::Sender<IncomingRequest>,
    frame_bytes_max: usize,
) {
    let body = match read_to_end(&mut recv, frame_bytes_max).await {
        Ok(b) => b,
        Err(ReadToEndError::TooLong) => {
            tracing::warn!(
                node = from,
                frame_bytes_max,
                "refused a request frame over frame_bytes_max"
            );
            let _ = recv.stop(VarInt::from_u32(CODE_TOO_LARGE));
            let _ = send.reset(VarInt::from_u32(CODE_TOO_LARGE));
            return;
        }
        Err(_) => return,
    };
    let (reply, answer) = oneshot::channel();
    if incoming
        .send(IncomingRequest { from, body, reply })
        .await
        .is_err()
    {
        let _ = send.reset(VarInt::from_u32(CODE_NO_ANSWER));
        return;
    }
    match answer.await {
        Ok(resp) if resp.len() > frame_bytes_max => {
            tracing::warn!(
                node = from,
                bytes = resp.len(),
                frame_bytes_max,
                "a response over frame_bytes_max was not sent"
            );
            let _ = send.reset(VarInt::from_u32(CODE_TOO_LARGE));
        }
        Ok(resp) => {
            let mut parts = resp.into_parts();
            if send.write_all_chunks(&mut parts).await.is_ok() {
                let _ = send.finish();
            }
        }
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(CODE_NO_ANSWER));
        }
    }
}
