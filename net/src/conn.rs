//! The connection loop of the native protocol, on a shard's glommio executor.
//!
//! One task reads frames and starts a handler task per request (pipelining: up to
//! `inflight_max` per connection); a second task writes the responses in request
//! order. When the connection's in-flight limit or the shard's memory budget for
//! buffered requests is reached, the reader stops reading the socket until responses
//! drain: backpressure, not growth.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;

use crate::codec::{
    self, ApiKey, DecodeError, ErrorCode, OutFrame, OutPart, Request, Response, WireError,
};
use crate::zerocopy::FileSender;

/// A boxed, shard-local future.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// What answers the frames of one wire protocol: a frame's body (without its length
/// prefix) in, the encoded response out (an empty [`OutFrame`] sends nothing, as for a
/// Kafka produce with acks 0). Both protocols ringmq speaks frame their messages with a
/// 4-byte big-endian length, so one connection loop serves both.
pub trait Service: 'static {
    /// Answers one frame that arrived from `peer`.
    fn call(self: Rc<Self>, body: Bytes, peer: Option<SocketAddr>) -> LocalFuture<OutFrame>;

    /// Resolves at `deadline`: the shard's timer (its timing wheel), used to close
    /// idle connections.
    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()>;

    /// For a frame that moves the connection to another shard: that shard, and the
    /// encoded answer the connection gets once there. `None` for every other frame
    /// (the default: a protocol without the move).
    fn moves_to(&self, _body: &Bytes) -> Option<(u32, Bytes)> {
        None
    }

    /// Hands a connection over to shard `to` (see [`Service::moves_to`]); false when
    /// it could not be (the connection is then closed).
    fn hand_over(self: Rc<Self>, _to: u32, _conn: Handoff) -> LocalFuture<bool> {
        Box::pin(async { false })
    }
}

/// A connection on its way to another shard of the same broker (the native protocol's
/// `BindShard`): the socket, the answer to send there first, and the bytes already read
/// after the request that moved it. Thread-safe, to cross between shards.
#[derive(Debug)]
pub struct Handoff {
    /// The socket.
    pub fd: OwnedFd,
    /// The encoded answer to the request that moved the connection.
    pub answer: Bytes,
    /// Bytes read past that request, not yet handled.
    pub buffered: BytesMut,
}

/// The native protocol as a [`Service`]: decodes a request, has the [`Handler`] answer
/// it, encodes the response; a request that cannot be decoded gets an error response.
pub struct Native<H>(pub Rc<H>);

impl<H: Handler> Service for Native<H> {
    fn call(self: Rc<Self>, body: Bytes, _peer: Option<SocketAddr>) -> LocalFuture<OutFrame> {
        let (header, request) = codec::decode_request(body);
        match (header, request) {
            (Some(h), Ok(req)) => {
                let handler = self.0.clone();
                Box::pin(async move {
                    let resp = handler.handle(req).await;
                    codec::encode_response(h.request_id, &resp)
                })
            }
            (header, Err(e)) => {
                let id = header.map(|h| h.request_id).unwrap_or(0);
                tracing::info!(error = %e, "bad request");
                let code = match e {
                    DecodeError::UnknownApi(_) | DecodeError::UnsupportedVersion { .. } => {
                        ErrorCode::UnsupportedVersion
                    }
                    _ => ErrorCode::Malformed,
                };
                let resp = Response::Error(WireError::new(code, e.to_string()));
                Box::pin(async move { codec::encode_response(id, &resp) })
            }
            (None, Ok(_)) => unreachable!("a decoded request has a header"),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()> {
        self.0.sleep_until(deadline)
    }

    fn moves_to(&self, body: &Bytes) -> Option<(u32, Bytes)> {
        // Only the key is read from other frames.
        if body.get(..2) != Some(&(ApiKey::BindShard as u16).to_be_bytes()[..]) {
            return None;
        }
        let (Some(h), Ok(Request::BindShard { shard })) = codec::decode_request(body.clone())
        else {
            return None;
        };
        let (me, count) = self.0.shard();
        // Its own shard, or one that does not exist: answered as a request.
        if shard == me || shard >= count {
            return None;
        }
        let answer = codec::encode_response(h.request_id, &Response::Done(WireError::none()));
        Some((shard, answer.into_memory()?))
    }

    fn hand_over(self: Rc<Self>, to: u32, conn: Handoff) -> LocalFuture<bool> {
        self.0.clone().hand_over(to, conn)
    }
}

/// What answers native requests: the shard's broker.
pub trait Handler: 'static {
    /// Answers one request.
    fn handle(self: Rc<Self>, request: Request) -> LocalFuture<Response>;

    /// Resolves at `deadline`: the shard's timer (its timing wheel), used to close
    /// idle connections.
    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()>;

    /// This shard's id and the broker's shard count.
    fn shard(&self) -> (u32, u32);

    /// Hands a connection over to shard `to`; false when it could not be.
    fn hand_over(self: Rc<Self>, to: u32, conn: Handoff) -> LocalFuture<bool>;
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Requests of one connection being handled at once.
    pub inflight_max: usize,
    /// Largest frame; a larger one closes the connection.
    pub frame_bytes_max: usize,
    /// A connection with no request in flight and nothing received for this long is
    /// closed (Kafka's `connections.max.idle.ms`). `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            inflight_max: 64,
            frame_bytes_max: codec::FRAME_BYTES_MAX_DEFAULT,
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// A shard's budget for the bytes of requests read but not yet answered, shared by its
/// connections (shard-local): a glommio semaphore counting bytes.
#[derive(Debug)]
pub struct MemoryBudget {
    bytes: glommio::sync::Semaphore,
    max: usize,
}

impl MemoryBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Rc<Self> {
        assert!(max > 0);
        Rc::new(Self {
            bytes: glommio::sync::Semaphore::new(max as u64),
            max,
        })
    }

    /// The budget's size in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.max - self.bytes.available() as usize
    }

    /// Waits until `bytes` fit; returns what was taken (a request larger than the whole
    /// budget takes all of it).
    async fn acquire(&self, bytes: usize) -> usize {
        let take = bytes.min(self.max);
        // The semaphore is never closed, so acquire cannot fail.
        let _ = self.bytes.acquire(take as u64).await;
        take
    }

    fn release(&self, taken: usize) {
        self.bytes.signal(taken as u64);
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnEnd {
    /// The client closed it.
    Closed,
    /// An I/O error.
    Io(std::io::Error),
    /// A frame over the size limit: the connection was closed.
    Oversized(usize),
    /// Idle past the limit: the connection was closed.
    Idle,
    /// Moved to another shard, which serves it from here on.
    Moved(u32),
    /// The move to another shard failed: the connection was closed.
    MoveFailed(u32),
}

/// How the read loop ended.
enum ReadEnd {
    /// The connection ends.
    End(ConnEnd),
    /// The connection moves to shard `to` once the responses before the move are
    /// written.
    Move {
        to: u32,
        answer: Bytes,
        buffered: BytesMut,
        stream: TcpStream,
    },
}

/// Serves one connection until it closes. Every request gets a response or, for a
/// frame that cannot be delimited (oversized), the connection is closed.
pub async fn serve_connection<S: Service>(
    stream: TcpStream,
    service: Rc<S>,
    limits: ConnLimits,
    budget: Rc<MemoryBudget>,
    files: Rc<FileSender>,
) -> ConnEnd {
    serve(
        stream,
        None,
        BytesMut::new(),
        service,
        limits,
        budget,
        files,
    )
    .await
}

/// Serves a connection handed over by another shard ([`Handoff`]): sends the answer to
/// the request that moved it, then serves it as [`serve_connection`] does, starting
/// with the bytes the other shard had read.
pub async fn serve_handed_over<S: Service>(
    conn: Handoff,
    service: Rc<S>,
    limits: ConnLimits,
    budget: Rc<MemoryBudget>,
    files: Rc<FileSender>,
) -> ConnEnd {
    // SAFETY: a socket descriptor owned by the handoff, owned by the stream from here.
    let stream = unsafe { TcpStream::from_raw_fd(conn.fd.into_raw_fd()) };
    serve(
        stream,
        Some(conn.answer),
        conn.buffered,
        service,
        limits,
        budget,
        files,
    )
    .await
}

async fn serve<S: Service>(
    stream: TcpStream,
    first_answer: Option<Bytes>,
    buffered: BytesMut,
    service: Rc<S>,
    limits: ConnLimits,
    budget: Rc<MemoryBudget>,
    files: Rc<FileSender>,
) -> ConnEnd {
    let _ = stream.set_nodelay(true);
    // Non-blocking: glommio reads and writes with MSG_DONTWAIT and waits for readiness
    // either way; zero-copy sends (sendfile, splice) on the executor thread need it so
    // a full socket returns EAGAIN instead of blocking the shard.
    // SAFETY: fcntl on the socket's descriptor, which `stream` keeps open.
    unsafe {
        let fd = stream.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return ConnEnd::Io(std::io::Error::last_os_error());
        }
    }
    // SAFETY: `dup` returns a new descriptor for the same socket, owned from here on
    // by the write half (closed when it drops); the read half keeps the original.
    let writer = unsafe {
        let fd = libc::dup(stream.as_raw_fd());
        if fd < 0 {
            return ConnEnd::Io(std::io::Error::last_os_error());
        }
        TcpStream::from_raw_fd(fd)
    };
    let (tx, rx) =
        local_channel::new_bounded::<(glommio::Task<OutFrame>, usize)>(limits.inflight_max.max(1));
    let write_budget = budget.clone();
    let inflight = Rc::new(Cell::new(0usize));
    let write_inflight = inflight.clone();
    let last_activity = Rc::new(Cell::new(Instant::now()));
    let write_activity = last_activity.clone();
    let write_task = glommio::spawn_local(async move {
        let mut writer = writer;
        if let Some(a) = first_answer
            && let Err(e) = writer.write_all(&a).await
        {
            return Some(e);
        }
        while let Some((task, cost)) = rx.recv().await {
            let frame = task.await;
            write_budget.release(cost);
            write_inflight.set(write_inflight.get() - 1);
            write_activity.set(Instant::now());
            if let Err(e) = write_frame(&mut writer, &frame, &files).await {
                return Some(e);
            }
            if frame.closes() {
                // Wakes the reader: its read returns end of stream.
                // SAFETY: shutdown on the socket `writer` keeps open.
                unsafe { libc::shutdown(writer.as_raw_fd(), libc::SHUT_RDWR) };
                return None;
            }
        }
        let _ = writer.flush().await;
        None
    });
    let end = read_loop(
        stream,
        buffered,
        service.clone(),
        limits,
        budget,
        tx,
        inflight,
        last_activity,
    )
    .await;
    // The sender is dropped: the writer finishes the queued responses, then stops.
    let write_err = write_task.await;
    match (end, write_err) {
        (ReadEnd::End(ConnEnd::Closed), Some(e)) => ConnEnd::Io(e),
        (ReadEnd::End(end), _) => end,
        (ReadEnd::Move { .. }, Some(e)) => ConnEnd::Io(e),
        (
            ReadEnd::Move {
                to,
                answer,
                buffered,
                stream,
            },
            None,
        ) => {
            // Every response before the move is written and the writer's descriptor
            // is closed; the socket goes on under a duplicate of the reader's.
            let fd = match ringmq_uring::dup(stream.as_raw_fd()) {
                Ok(fd) => fd,
                Err(e) => return ConnEnd::Io(e),
            };
            drop(stream);
            let conn = Handoff {
                fd,
                answer,
                buffered,
            };
            if service.hand_over(to, conn).await {
                ConnEnd::Moved(to)
            } else {
                ConnEnd::MoveFailed(to)
            }
        }
    }
}

/// Writes one response: encoded bytes from memory, record ranges of files through
/// `files` (zero-copy when it can).
async fn write_frame(
    writer: &mut TcpStream,
    frame: &OutFrame,
    files: &FileSender,
) -> std::io::Result<()> {
    let parts = frame.parts();
    for (i, part) in parts.iter().enumerate() {
        match part {
            OutPart::Bytes(b) => writer.write_all(b).await?,
            OutPart::File(r) => files.send(writer, r, i + 1 < parts.len()).await?,
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<S: Service>(
    mut stream: TcpStream,
    mut buf: BytesMut,
    service: Rc<S>,
    limits: ConnLimits,
    budget: Rc<MemoryBudget>,
    tx: local_channel::LocalSender<(glommio::Task<OutFrame>, usize)>,
    inflight: Rc<Cell<usize>>,
    last_activity: Rc<Cell<Instant>>,
) -> ReadEnd {
    let peer = stream.peer_addr().ok();
    if buf.capacity() < 64 << 10 {
        buf.reserve((64 << 10) - buf.len());
    }
    loop {
        // Every complete frame in the buffer first.
        loop {
            let len = match codec::frame_len(&buf, limits.frame_bytes_max) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(n) => {
                    tracing::warn!(
                        frame_bytes = n,
                        max = limits.frame_bytes_max,
                        "oversized frame; closing connection"
                    );
                    return ReadEnd::End(ConnEnd::Oversized(n));
                }
            };
            if buf.len() < codec::LENGTH_PREFIX_BYTES + len {
                buf.reserve(codec::LENGTH_PREFIX_BYTES + len - buf.len());
                break;
            }
            let mut frame = buf.split_to(codec::LENGTH_PREFIX_BYTES + len);
            let body = frame.split_off(codec::LENGTH_PREFIX_BYTES).freeze();
            if let Some((to, answer)) = service.moves_to(&body) {
                return ReadEnd::Move {
                    to,
                    answer,
                    buffered: buf,
                    stream,
                };
            }
            let cost = budget.acquire(body.len()).await;
            let task = glommio::spawn_local(service.clone().call(body, peer));
            // A full channel (inflight_max pending) blocks here: backpressure.
            inflight.set(inflight.get() + 1);
            if tx.send((task, cost)).await.is_err() {
                return ReadEnd::End(ConnEnd::Closed);
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 << 10);
        }
        let start = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        let mut read = Box::pin(stream.read(&mut buf[start..]));
        let got = match limits.idle_timeout {
            None => (&mut read).await,
            Some(idle) => loop {
                // Idle means nothing in flight (a long-poll fetch is not idleness) and
                // nothing received or answered for `idle`.
                let deadline = last_activity.get() + idle;
                let timeout = service.sleep_until(deadline);
                let r = futures_lite::future::or(&mut read, async {
                    timeout.await;
                    Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })
                .await;
                match r {
                    Err(ref e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        let quiet =
                            inflight.get() == 0 && last_activity.get() + idle <= Instant::now();
                        if quiet {
                            break r;
                        }
                        if inflight.get() > 0 {
                            last_activity.set(Instant::now());
                        }
                    }
                    other => break other,
                }
            },
        };
        drop(read);
        last_activity.set(Instant::now());
        match got {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return ReadEnd::End(ConnEnd::Idle);
            }
            Ok(0) => return ReadEnd::End(ConnEnd::Closed),
            Ok(n) => buf.truncate(start + n),
            Err(e) => return ReadEnd::End(ConnEnd::Io(e)),
        }
    }
}
