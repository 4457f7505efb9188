//! TCP: TLS over glommio's `TcpStream`, on the shard's own executor. One connection per
//! peer per shard carries every request to that peer, multiplexed by request id; the
//! answers come back in any order.
//!
//! rustls (through `futures-rustls`) does the handshake and checks both certificates;
//! then the server sends one byte, `READY`, which the client reads, and from there on
//! both sides protect their records with the keys taken out of rustls (`records`, which
//! says why). Neither side sends anything between the handshake and `READY`, so no byte
//! can be left inside rustls when its keys are taken.
//!
//! A frame is a 13-byte header and a body:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | body length, big-endian u32, at most `frame_bytes_max` |
//! | 4 | kind: 0 request, 1 response, 2 refusal (body: 1 byte, the reason) |
//! | 5..13 | request id, big-endian u64, chosen by the caller |
//!
//! A frame over the limit is skipped without being stored and refused (a request) or
//! failed with `TooLarge` (a response), so the connection and the other requests on it
//! go on. A header of an unknown kind, or a request arriving at a caller, means the peer
//! is not speaking this protocol: it is disconnected with a warning.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;

use crate::records::{Keys, RecordReader, RecordWriter};
use crate::tls::{TlsConfigs, node_of, server_name};
use crate::{
    IncomingRequest, NodeId, TransportConfig, TransportError, TransportErrorKind, with_timeout,
};

/// Bytes in a frame header.
pub(crate) const HEADER_BYTES: usize = 13;
/// Read buffer of a connection: many records per socket read.
const READ_BUFFER_BYTES: usize = 256 << 10;
/// Read buffer during the handshake.
const HANDSHAKE_BUFFER_BYTES: usize = 16 << 10;
/// The byte a server sends after the handshake (see the module's comment).
const READY: u8 = 0x52;
/// Chunk in which an over-limit frame is read and dropped.
const SKIP_CHUNK_BYTES: usize = 64 << 10;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Request = 0,
    Response = 1,
    Refused = 2,
}

/// Reasons in a refusal's body.
const REFUSED_TOO_LARGE: u8 = 1;
const REFUSED_NO_ANSWER: u8 = 2;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) id: u64,
    pub(crate) len: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&self.len.to_be_bytes());
        h[4] = self.kind as u8;
        h[5..13].copy_from_slice(&self.id.to_be_bytes());
        h
    }

    /// The header in `h`, or what is wrong with it.
    pub(crate) fn decode(h: &[u8; HEADER_BYTES]) -> Result<Self, String> {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let kind = match h[4] {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Refused,
            k => return Err(format!("unknown frame kind {k}")),
        };
        let id = u64::from_be_bytes([h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12]]);
        if kind == Kind::Refused && len != 1 {
            return Err(format!("a refusal of {len} bytes (1 expected)"));
        }
        Ok(Self { kind, id, len })
    }
}

/// A connection's receiving half.
type Reader = RecordReader<ReadHalf<TcpStream>>;
/// A connection's sending half.
type Writer = RecordWriter<WriteHalf<TcpStream>>;

/// Leaves rustls after the handshake: the connection's two halves, with the bytes the
/// handshake read past its end (none, by the protocol; kept all the same).
fn take_over(
    io: BufReader<TcpStream>,
    secrets: Result<rustls::ExtractedSecrets, rustls::Error>,
) -> io::Result<(Reader, Writer)> {
    let secrets = secrets.map_err(io::Error::other)?;
    let early = io.buffer().to_vec();
    let (r, w) = futures_lite::io::split(io.into_inner());
    let r = RecordReader::new(r, Keys::new(secrets.rx)?, &early, READ_BUFFER_BYTES);
    Ok((r, RecordWriter::new(w, Keys::new(secrets.tx)?)))
}

/// A frame on its way to the writer task.
struct Out {
    header: Header,
    body: crate::Frame,
}

/// The fds of every live connection of this transport, to shut them down at the end.
#[derive(Default)]
struct Registry {
    next: Cell<u64>,
    fds: RefCell<HashMap<u64, RawFd>>,
}

impl Registry {
    fn add(&self, fd: RawFd) -> u64 {
        let k = self.next.get();
        self.next.set(k + 1);
        self.fds.borrow_mut().insert(k, fd);
        k
    }

    fn remove(&self, k: u64) {
        self.fds.borrow_mut().remove(&k);
    }

    fn shutdown_all(&self) {
        for (_, fd) in self.fds.borrow_mut().drain() {
            shutdown(fd);
        }
    }
}

/// Shuts a socket down both ways, which ends any read or write waiting on it.
fn shutdown(fd: RawFd) {
    // SAFETY: `fd` is a socket still owned by a live connection (connections leave the
    // registry before their stream is dropped); shutdown does not close it.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The TCP transport of one shard.
pub(crate) struct Tcp {
    tls: TlsConfigs,
    /// The source address of outgoing connections: the listener's, when it names one,
    /// so peers (and firewall rules) see the node's own address, as over QUIC.
    local: Option<SocketAddr>,
    frame_bytes_max: usize,
    in_flight_max: usize,
    request_timeout: Duration,
    peers: RefCell<HashMap<NodeId, Rc<PeerSlot>>>,
    registry: Rc<Registry>,
    closed: Cell<bool>,
    accept: RefCell<Option<glommio::Task<()>>>,
}

/// One peer's connection: opened by the first request that needs it; `connecting`
/// makes concurrent requests wait for that one handshake.
struct PeerSlot {
    conn: RefCell<Option<Rc<ClientConn>>>,
    connecting: Semaphore,
}

type Pending = RefCell<HashMap<u64, oneshot::Sender<Result<Bytes, TransportError>>>>;

/// A caller's connection to one peer.
struct ClientConn {
    out: LocalSender<Out>,
    pending: Pending,
    next_id: Cell<u64>,
    /// Why the connection ended, once it has.
    dead: RefCell<Option<TransportError>>,
}

impl Tcp {
    pub(crate) async fn start(
        config: &TransportConfig,
        tls: TlsConfigs,
        incoming_max: usize,
    ) -> Result<(Tcp, Option<async_channel::Receiver<IncomingRequest>>), TransportError> {
        let registry = Rc::new(Registry::default());
        let mut rx = None;
        let mut accept = None;
        if let Some(listen) = config.listen {
            let listener = TcpListener::bind(listen).map_err(|e| {
                TransportError::new(
                    TransportErrorKind::Io,
                    format!("TCP listener on {listen}: {e}"),
                )
            })?;
            let (tx, r) = async_channel::bounded(incoming_max);
            rx = Some(r);
            let mut known: Vec<NodeId> = config.peers.keys().copied().collect();
            known.push(config.me);
            known.sort_unstable();
            known.dedup();
            let server = Rc::new(Server {
                tls: tls.clone(),
                frame_bytes_max: config.frame_bytes_max,
                in_flight_max: config.in_flight_max,
                handshake_timeout: config.request_timeout,
                known,
                registry: registry.clone(),
                incoming: tx,
            });
            accept = Some(glommio::spawn_local(accept_loop(listener, server)));
        }
        let local = config
            .listen
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| SocketAddr::new(a.ip(), 0));
        let t = Tcp {
            tls,
            local,
            frame_bytes_max: config.frame_bytes_max,
            in_flight_max: config.in_flight_max,
            request_timeout: config.request_timeout,
            peers: RefCell::new(HashMap::new()),
            registry,
            closed: Cell::new(false),
            accept: RefCell::new(accept),
        };
        Ok((t, rx))
    }

    pub(crate) async fn request(
        &self,
        to: NodeId,
        addr: SocketAddr,
        body: Bytes,
    ) -> Result<Bytes, TransportError> {
        let conn = self.connection(to, addr).await?;
        let id = conn.next_id.get();
        conn.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        conn.pending.borrow_mut().insert(id, tx);
        // Removes the entry if this future is dropped (a timeout) before the answer.
        struct Forget<'a>(&'a ClientConn, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(&conn, id);
        let len = u32::try_from(body.len()).expect("checked against frame_bytes_max");
        let header = Header {
            kind: Kind::Request,
            id,
            len,
        };
        let body = body.into();
        if conn.out.send(Out { header, body }).await.is_err() {
            return Err(conn.dead_error(to));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(conn.dead_error(to)),
        }
    }

    /// The live connection to `to`, opened if there is none.
    async fn connection(
        &self,
        to: NodeId,
        addr: SocketAddr,
    ) -> Result<Rc<ClientConn>, TransportError> {
        if self.closed.get() {
            return Err(TransportError::closed("the transport is shut down"));
        }
        let slot = self
            .peers
            .borrow_mut()
            .entry(to)
            .or_insert_with(|| {
                Rc::new(PeerSlot {
                    conn: RefCell::new(None),
                    connecting: Semaphore::new(1),
                })
            })
            .clone();
        let live = |s: &PeerSlot| {
            s.conn
                .borrow()
                .as_ref()
                .filter(|c| c.dead.borrow().is_none())
                .cloned()
        };
        if let Some(c) = live(&slot) {
            return Ok(c);
        }
        let _one = slot
            .connecting
            .acquire_permit(1)
            .await
            .map_err(|e| TransportError::closed(format!("connecting: {e}")))?;
        if let Some(c) = live(&slot) {
            return Ok(c);
        }
        let conn = with_timeout(self.request_timeout, self.connect(to, addr), || {
            format!(
                "connecting to node {to} at {addr} took over {:?}",
                self.request_timeout
            )
        })
        .await?;
        *slot.conn.borrow_mut() = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(
        &self,
        to: NodeId,
        addr: SocketAddr,
    ) -> Result<Rc<ClientConn>, TransportError> {
        let ctx = || format!("connecting to node {to} at {addr}");
        let stream = match self.local {
            Some(local) => TcpStream::connect_from(local, addr).await,
            None => TcpStream::connect(addr).await,
        };
        let stream = stream.map_err(|e| TransportError::from_io(&ctx(), &io::Error::from(e)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| TransportError::from_io(&ctx(), &io::Error::from(e)))?;
        let fd = stream.as_raw_fd();
        let connector = futures_rustls::TlsConnector::from(self.tls.tcp_client.clone());
        let tls_ctx = format!("TLS with node {to} at {addr}");
        let mut tls = connector
            .connect(
                server_name(to),
                BufReader::with_capacity(HANDSHAKE_BUFFER_BYTES, stream),
            )
            .await
            .map_err(|e| TransportError::from_io(&tls_ctx, &e))?;
        let mut ready = [0u8; 1];
        tls.read_exact(&mut ready)
            .await
            .map_err(|e| TransportError::from_io(&tls_ctx, &e))?;
        if ready[0] != READY {
            return Err(TransportError::new(
                TransportErrorKind::Io,
                format!("{tls_ctx}: the peer is not a ringmq node of this version"),
            ));
        }
        let (io, session) = tls.into_inner();
        let (r, w) = take_over(io, session.dangerous_extract_secrets())
            .map_err(|e| TransportError::from_io(&tls_ctx, &e))?;
        tracing::debug!(node = to, %addr, "TCP connection open");
        let (out, out_rx) = local_channel::new_bounded(self.in_flight_max);
        let conn = Rc::new(ClientConn {
            out,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            dead: RefCell::new(None),
        });
        let key = self.registry.add(fd);
        glommio::spawn_local(write_loop(w, out_rx, fd)).detach();
        let registry = self.registry.clone();
        let reader_conn = conn.clone();
        let max = self.frame_bytes_max;
        glommio::spawn_local(async move {
            let err = client_read_loop(r, &reader_conn, max, to).await;
            registry.remove(key);
            shutdown(fd);
            reader_conn.fail_all(err);
        })
        .detach();
        Ok(conn)
    }

    pub(crate) async fn shutdown(self) {
        self.closed.set(true);
        // Dropping the accept task cancels it (and drops the listener).
        drop(self.accept.borrow_mut().take());
        self.registry.shutdown_all();
        // Let the connection tasks see their sockets end.
        glommio::executor().yield_now().await;
    }
}

impl ClientConn {
    fn dead_error(&self, to: NodeId) -> TransportError {
        self.dead.borrow().clone().unwrap_or_else(|| {
            TransportError::closed(format!("the connection to node {to} closed"))
        })
    }

    /// Marks the connection dead with `err` and fails every request waiting on it.
    fn fail_all(&self, err: TransportError) {
        *self.dead.borrow_mut() = Some(err.clone());
        let pending: Vec<_> = self.pending.borrow_mut().drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(err.clone()));
        }
    }

    fn complete(&self, id: u64, r: Result<Bytes, TransportError>) {
        // An unknown id is a request that timed out meanwhile.
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.send(r);
        }
    }
}

/// Writes frames from `rx` until it closes or a write fails (then shuts the socket down,
/// so the reader ends too).
/// The writer packs the header and the parts into records as they come.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, rx: LocalReceiver<Out>, fd: RawFd) {
    let r: io::Result<()> = async {
        while let Some(f) = rx.recv().await {
            w.write_all(&f.header.encode()).await?;
            for p in f.body.into_parts() {
                w.write_all(&p).await?;
            }
            w.flush().await?;
        }
        w.close().await
    }
    .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "cluster connection write failed");
        shutdown(fd);
    }
}

/// Reads one header; `None` at a clean end of the stream.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<[u8; HEADER_BYTES]>> {
    let mut h = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = r.read(&mut h[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    Ok(Some(h))
}

/// Reads a body of `len` bytes (already checked against the limit).
async fn read_body(r: &mut Reader, len: usize) -> io::Result<Bytes> {
    r.read_bytes(len).await
}

/// Reads and drops `len` bytes, never holding more than a chunk.
async fn skip<R: AsyncRead + Unpin>(r: &mut R, mut len: usize) -> io::Result<()> {
    let mut chunk = vec![0u8; SKIP_CHUNK_BYTES.min(len)];
    while len > 0 {
        let n = chunk.len().min(len);
        r.read_exact(&mut chunk[..n]).await?;
        len -= n;
    }
    Ok(())
}

/// Reads answers until the connection ends: the reason it ended.
async fn client_read_loop(
    mut r: Reader,
    conn: &ClientConn,
    frame_bytes_max: usize,
    to: NodeId,
) -> TransportError {
    let ctx = format!("connection to node {to}");
    loop {
        let h = match read_header(&mut r).await {
            Ok(Some(h)) => h,
            Ok(None) => return TransportError::closed(format!("{ctx} closed by the peer")),
            Err(e) => return TransportError::from_io(&ctx, &e),
        };
        let h = match Header::decode(&h) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(node = to, error = %e, "garbage from a cluster peer; disconnecting");
                return TransportError::new(TransportErrorKind::Io, format!("{ctx}: {e}"));
            }
        };
        let len = h.len as usize;
        let step: io::Result<()> = async {
            match h.kind {
                Kind::Response if len > frame_bytes_max => {
                    skip(&mut r, len).await?;
                    conn.complete(
                        h.id,
                        Err(TransportError::too_large("response", len, frame_bytes_max)),
                    );
                }
                Kind::Response => {
                    let body = read_body(&mut r, len).await?;
                    conn.complete(h.id, Ok(body));
                }
                Kind::Refused => {
                    let mut reason = [0u8; 1];
                    r.read_exact(&mut reason).await?;
                    let e = match reason[0] {
                        REFUSED_TOO_LARGE => TransportError::new(
                            TransportErrorKind::TooLarge,
                            format!("{ctx}: the peer refused a frame as over its frame_bytes_max"),
                        ),
                        _ => TransportError::closed(format!("{ctx}: the peer gave no answer")),
                    };
                    conn.complete(h.id, Err(e));
                }
                Kind::Request => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a request sent to a caller",
                    ));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            if e.kind() == io::ErrorKind::InvalidData {
                tracing::warn!(node = to, error = %e, "garbage from a cluster peer; disconnecting");
            }
            return TransportError::from_io(&ctx, &e);
        }
    }
}

/// What every accepted connection of the listener shares.
struct Server {
    tls: TlsConfigs,
    frame_bytes_max: usize,
    in_flight_max: usize,
    handshake_timeout: Duration,
    known: Vec<NodeId>,
    registry: Rc<Registry>,
    incoming: async_channel::Sender<IncomingRequest>,
}

async fn accept_loop(listener: TcpListener, server: Rc<Server>) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a cluster connection failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let server = server.clone();
        glommio::spawn_local(async move {
            let fd = stream.as_raw_fd();
            let key = server.registry.add(fd);
            serve_connection(stream, &server).await;
            server.registry.remove(key);
        })
        .detach();
    }
}

async fn serve_connection(stream: TcpStream, server: &Server) {
    let remote = stream.peer_addr().ok();
    let fd = stream.as_raw_fd();
    let _ = stream.set_nodelay(true);
    let acceptor = futures_rustls::TlsAcceptor::from(server.tls.tcp_server.clone());
    let handshake = async {
        let err = |e| TransportError::from_io("TLS handshake", &e);
        let mut tls = acceptor
            .accept(BufReader::with_capacity(HANDSHAKE_BUFFER_BYTES, stream))
            .await
            .map_err(err)?;
        let from = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| node_of(c, server.known.iter().copied()));
        let Some(from) = from else {
            return Err(TransportError::new(
                TransportErrorKind::Tls,
                "a cluster peer's certificate names no known node".to_string(),
            ));
        };
        tls.write_all(&[READY]).await.map_err(err)?;
        tls.flush().await.map_err(err)?;
        let (io, session) = tls.into_inner();
        let halves = take_over(io, session.dangerous_extract_secrets()).map_err(err)?;
        Ok((from, halves))
    };
    let (from, (mut r, w)) = match with_timeout(server.handshake_timeout, handshake, || {
        "TLS handshake timed out".into()
    })
    .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(?remote, error = %e, "refused a cluster connection");
            return;
        }
    };
    let (out, out_rx) = local_channel::new_bounded::<Out>(server.in_flight_max);
    let out = Rc::new(out);
    let writer = glommio::spawn_local(write_loop(w, out_rx, fd));
    let in_flight = Rc::new(Semaphore::new(server.in_flight_max as u64));
    let max = server.frame_bytes_max;
    let refuse = |id: u64, reason: u8| Out {
        header: Header {
            kind: Kind::Refused,
            id,
            len: 1,
        },
        body: Bytes::copy_from_slice(&[reason]).into(),
    };
    loop {
        let h = match read_header(&mut r).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(node = from, error = %e, "cluster connection ended");
                break;
            }
        };
        let h = match Header::decode(&h) {
            Ok(h) if h.kind == Kind::Request => h,
            Ok(h) => {
                tracing::warn!(node = from, kind = ?h.kind, "a cluster peer sent an answer to a listener; disconnecting");
                break;
            }
            Err(e) => {
                tracing::warn!(node = from, error = %e, "garbage from a cluster peer; disconnecting");
                break;
            }
        };
        let Ok(permit) = in_flight.acquire_static_permit(1).await else {
            break;
        };
        let len = h.len as usize;
        if len > max {
            tracing::warn!(
                node = from,
                bytes = len,
                frame_bytes_max = max,
                "refused a request frame over frame_bytes_max"
            );
            if skip(&mut r, len).await.is_err()
                || out.send(refuse(h.id, REFUSED_TOO_LARGE)).await.is_err()
            {
                break;
            }
            continue;
        }
        let body = match read_body(&mut r, len).await {
            Ok(b) => b,
            Err(_) => break,
        };
        let (reply, answer) = oneshot::channel();
        if server
            .incoming
            .send(IncomingRequest { from, body, reply })
            .await
            .is_err()
        {
            break;
        }
        let out = out.clone();
        glommio::spawn_local(async move {
            let frame = match answer.await {
                Ok(resp) if resp.len() > max => {
                    tracing::warn!(
                        node = from,
                        bytes = resp.len(),
                        frame_bytes_max = max,
                        "a response over frame_bytes_max was not sent"
                    );
                    refuse(h.id, REFUSED_TOO_LARGE)
                }
                Ok(resp) => Out {
                    header: Header {
                        kind: Kind::Response,
                        id: h.id,
                        len: resp.len() as u32,
                    },
                    body: resp,
                },
                Err(_) => refuse(h.id, REFUSED_NO_ANSWER),
            };
            let _ = out.send(frame).await;
            drop(permit);
        })
        .detach();
    }
    shutdown(fd);
    drop(out);
    writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips() {
        let h = Header {
            kind: Kind::Response,
            id: 0x0102_0304_0506_0708,
            len: 1 << 20,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn an_unknown_kind_is_garbage() {
        let mut b = Header {
            kind: Kind::Request,
            id: 1,
            len: 3,
        }
        .encode();
        b[4] = 9;
        assert!(Header::decode(&b).is_err());
    }

    #[test]
    fn a_refusal_carries_one_byte() {
        let b = Header {
            kind: Kind::Refused,
            id: 1,
            len: 5,
        }
        .encode();
        assert!(Header::decode(&b).is_err());
    }
}
