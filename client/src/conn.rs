//! One pipelined connection to a broker. A writer task sends frames in order; a reader
//! task matches each response to its request id. A failed connection fails the requests
//! in flight with `Error::Io`, and the next call connects again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ringmq_net::codec::{self, ApiKey, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

type Pending = Arc<Mutex<HashMap<u32, (ApiKey, oneshot::Sender<Result<Response>>)>>>;

struct Conn {
    tx: mpsc::Sender<bytes::BytesMut>,
    pending: Pending,
    next_id: Mutex<u32>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// A handle to a broker; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Client {
    addr: String,
    /// Every address the client was given, tried in turn when a node must be found.
    bootstrap: Arc<Vec<String>>,
    conn: Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    /// The shard each new connection asks to be served by (`BindShard`).
    shard: Option<u32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("shard", &self.shard)
            .finish()
    }
}

/// Largest response frame accepted.
const FRAME_BYTES_MAX: usize = 256 << 20;

/// Longest a connection attempt takes before it counts as failed (a node cut off by the
/// network drops the handshake rather than refusing it).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Client {
    /// Connects to a broker: `addrs` is `host:port`, or several separated by commas
    /// (the nodes of a cluster), tried in order until one answers. Producers and
    /// consumers then send each partition's requests to its leader's node.
    pub async fn connect(addrs: &str) -> Result<Client> {
        let bootstrap: Arc<Vec<String>> = Arc::new(
            addrs
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
        );
        let mut last = Error::Invalid(format!("no broker address in {addrs:?}"));
        for addr in bootstrap.iter() {
            let c = Client {
                addr: addr.clone(),
                bootstrap: bootstrap.clone(),
                conn: Arc::new(tokio::sync::Mutex::new(None)),
                shard: None,
            };
            match c.connection().await {
                Ok(_) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A handle to another broker of the same cluster, connected on first use.
    pub(crate) fn to(&self, addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            bootstrap: self.bootstrap.clone(),
            conn: Arc::new(tokio::sync::Mutex::new(None)),
            shard: None,
        }
    }

    /// Every address the client was given.
    pub(crate) fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    /// A handle with its own connection to the same broker, served by broker shard
    /// `shard` (a partition's shard is in [`crate::Admin::describe_topic`]): requests for
    /// that shard's partitions then go straight to the core that owns them instead of
    /// being forwarded between cores, which saves latency and broker CPU. Connects on
    /// first use. A broker that cannot move the connection (one without `BindShard`)
    /// still serves it, forwarding as before.
    pub fn on_shard(&self, shard: u32) -> Client {
        Client {
            addr: self.addr.clone(),
            bootstrap: self.bootstrap.clone(),
            conn: Arc::new(tokio::sync::Mutex::new(None)),
            shard: Some(shard),
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn io_err(&self, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.closed.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| self.io_err(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
            .map_err(|e| self.io_err(e))?;
        stream.set_nodelay(true).map_err(|e| self.io_err(e))?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<bytes::BytesMut>(256);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = self.addr.clone();
        let fail_all = {
            let pending = pending.clone();
            let closed = closed.clone();
            move |why: String| {
                closed.store(true, std::sync::atomic::Ordering::Release);
                let waiting: Vec<_> = pending.lock().unwrap().drain().collect();
                for (_, (_, reply)) in waiting {
                    let _ = reply.send(Err(Error::Io {
                        addr: addr.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            why.clone(),
                        ),
                    }));
                }
            }
        };
        let fail_w = fail_all.clone();
        // When the reader sees the connection end, the writer closes its half too, so
        // the socket goes away at once (a half-open one would hold the broker's port).
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = rx.recv() => {
                        let Some(frame) = frame else { return };
                        if let Err(e) = wr.write_all(&frame).await {
                            fail_w(format!("write failed: {e}"));
                            return;
                        }
                    }
                    _ = &mut stop_rx => return,
                }
            }
        });
        let pending_r = pending.clone();
        tokio::spawn(async move {
            let _stop_writer = stop_tx;
            loop {
                let mut len = [0u8; 4];
                if let Err(e) = rd.read_exact(&mut len).await {
                    fail_all(format!("connection closed: {e}"));
                    return;
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > FRAME_BYTES_MAX {
                    fail_all(format!("response frame of {n} bytes"));
                    return;
                }
                let mut body = vec![0u8; n];
                if let Err(e) = rd.read_exact(&mut body).await {
                    fail_all(format!("connection closed: {e}"));
                    return;
                }
                let body = Bytes::from(body);
                let id = match body.get(..4) {
                    Some(b) => u32::from_be_bytes(b.try_into().expect("4 bytes")),
                    None => {
                        fail_all("short response frame".into());
                        return;
                    }
                };
                let Some((api, reply)) = pending_r.lock().unwrap().remove(&id) else {
                    continue;
                };
                let r = codec::decode_response(api, body)
                    .map(|(_, r)| r)
                    .map_err(|e| Error::Protocol(e.to_string()));
                let _ = reply.send(r);
            }
        });
        let c = Arc::new(Conn {
            tx,
            pending,
            next_id: Mutex::new(1),
            closed,
        });
        if let Some(shard) = self.shard {
            // Nothing else is sent until the move is answered (by the new shard).
            let mut reply = self.send_on(&c, Request::BindShard { shard }).await?;
            match reply.wait().await {
                Ok(_) | Err(Error::Broker { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Sends one request and waits for its response. A request-level error response
    /// (`Response::Error`) becomes `Error::Broker`.
    pub async fn call(&self, req: Request) -> Result<Response> {
        self.start(req).await?.wait().await
    }

    /// Sends one request without waiting for its response. Requests started one after
    /// another (each `start` awaited before the next) go out on the connection in that
    /// order, and the broker answers them in that order.
    pub(crate) async fn start(&self, req: Request) -> Result<Reply> {
        let conn = self.connection().await?;
        self.send_on(&conn, req).await
    }

    async fn send_on(&self, conn: &Conn, req: Request) -> Result<Reply> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            let mut n = conn.next_id.lock().unwrap();
            let id = *n;
            *n = n.wrapping_add(1);
            id
        };
        conn.pending
            .lock()
            .unwrap()
            .insert(id, (req.api_key(), reply_tx));
        let frame = codec::encode_request(id, &req);
        if conn.closed.load(std::sync::atomic::Ordering::Acquire)
            || conn.tx.send(frame).await.is_err()
        {
            conn.pending.lock().unwrap().remove(&id);
            return Err(self.io_err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        }
        Ok(Reply {
            rx: reply_rx,
            addr: self.addr.clone(),
        })
    }
}

/// The response to a request sent with [`Client::start`].
pub(crate) struct Reply {
    rx: oneshot::Receiver<Result<Response>>,
    addr: String,
}

impl Reply {
    /// Waits for the response. Cancel-safe: a dropped wait leaves nothing behind but the
    /// answer, which is discarded when it comes.
    pub(crate) async fn wait(&mut self) -> Result<Response> {
        match (&mut self.rx).await {
            Ok(Ok(Response::Error(e))) => Err(Error::broker(&e)),
            Ok(r) => r,
            Err(_) => Err(Error::Io {
                addr: self.addr.clone(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionAborted),
            }),
        }
    }
}
