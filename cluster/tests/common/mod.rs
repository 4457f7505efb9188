//! Helpers shared by the transport tests: certificates, free ports, a server node on its
//! own glommio executor, a client node on another.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::LocalExecutorBuilder;
use ringmq_cluster::{
    IncomingRequest, NodeId, TlsFiles, Transport, TransportConfig, TransportKind, init_certs,
};

pub const SERVER: NodeId = 1;
pub const CLIENT: NodeId = 2;

/// Certificates for nodes 1 and 2 in a new temporary directory.
pub fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_certs(dir.path(), &[SERVER, CLIENT], &["127.0.0.1".into()]).unwrap();
    dir
}

/// A 127.0.0.1 address whose port is free for both TCP and UDP right now.
pub fn free_addr() -> SocketAddr {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = t.local_addr().unwrap();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A request asking for a response of `bytes` bytes.
pub fn ask(bytes: u64, pad: usize) -> Bytes {
    let mut b = BytesMut::from(&bytes.to_le_bytes()[..]);
    b.resize(8 + pad, 7);
    b.freeze()
}

/// The test server's answer to `req`: the caller's node id (4 bytes) then filler up to
/// the size asked for.
pub fn answer(req: IncomingRequest) {
    let want = u64::from_le_bytes(req.body[..8].try_into().unwrap()) as usize;
    let mut b = BytesMut::with_capacity(want.max(4));
    b.extend_from_slice(&req.from.to_le_bytes());
    b.resize(want.max(4), 0xab);
    req.respond(b.freeze());
}

/// Checks an answer from [`answer`].
pub fn check_answer(resp: &Bytes, bytes: usize, from: NodeId) {
    assert_eq!(resp.len(), bytes.max(4));
    assert_eq!(i32::from_le_bytes(resp[..4].try_into().unwrap()), from);
}

pub fn config(kind: TransportKind, me: NodeId, tls: TlsFiles) -> TransportConfig {
    let mut c = TransportConfig::new(me, tls);
    c.kind = kind;
    c.request_timeout = Duration::from_secs(10);
    c
}

/// A node serving [`answer`] (or `handler`) on its own executor thread until stopped.
pub struct Server {
    stop: async_channel::Sender<()>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub fn start(config: TransportConfig) -> Server {
        Self::start_with(config, answer)
    }

    pub fn start_with(config: TransportConfig, handler: fn(IncomingRequest)) -> Server {
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        let join = LocalExecutorBuilder::default()
            .name("test-server")
            .spawn(move || async move {
                let (t, incoming) = Transport::start(config).await.unwrap();
                let incoming = incoming.unwrap();
                ready_tx.send(()).unwrap();
                loop {
                    let next = futures_lite::future::or(async { incoming.next().await }, async {
                        let _ = stopped.recv().await;
                        None
                    })
                    .await;
                    let Some(req) = next else { break };
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    handler(req);
                }
                t.shutdown().await;
            })
            .unwrap();
        ready_rx.recv().unwrap();
        Server {
            stop,
            join: Some(join),
            served,
        }
    }

    pub fn stop(mut self) {
        let _ = self.stop.send_blocking(());
        self.join.take().unwrap().join().unwrap();
    }
}

/// Runs `f` on a new glommio executor thread and returns its result.
pub fn on_executor<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    LocalExecutorBuilder::default()
        .name("test-client")
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// A client node's config with `server` as node 1.
pub fn client_config(kind: TransportKind, dir: &Path, server: SocketAddr) -> TransportConfig {
    let mut c = config(kind, CLIENT, TlsFiles::in_dir(dir, CLIENT));
    c.peers = BTreeMap::from([(SERVER, server)]);
    c
}

/// A server node's config listening on `addr`, knowing the client as node 2.
pub fn server_config(kind: TransportKind, dir: &Path, addr: SocketAddr) -> TransportConfig {
    let mut c = config(kind, SERVER, TlsFiles::in_dir(dir, SERVER));
    c.listen = Some(addr);
    c.peers = BTreeMap::from([(CLIENT, free_addr())]);
    c
}
