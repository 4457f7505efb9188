//! The transport end to end, on both kinds: two nodes on 127.0.0.1, each on its own
//! glommio executor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_lite::future;
use ringmq_cluster::{TlsFiles, Transport, TransportErrorKind, TransportKind};

fn many_concurrent_requests_and_a_16_mib_response(kind: TransportKind) {
    let dir = certs();
    let addr = free_addr();
    let server = Server::start(server_config(kind, dir.path(), addr));
    let mut c = client_config(kind, dir.path(), addr);
    c.in_flight_max = 16;
    on_executor(move || async move {
        let (t, incoming) = Transport::start(c).await.unwrap();
        assert!(incoming.is_none());
        // 200 requests at once, over the in-flight limit of 16: the rest wait.
        let sizes: Vec<usize> = (0..200).map(|i| 1 + (i * 997) % 70_000).collect();
        let futs: Vec<_> = sizes
            .iter()
            .map(|&n| t.request(SERVER, ask(n as u64, 100)))
            .collect();
        let answers = join_all(futs).await;
        for (r, &n) in answers.iter().zip(&sizes) {
            check_answer(r.as_ref().unwrap(), n, CLIENT);
        }
        let big = t.request(SERVER, ask(16 << 20, 0)).await.unwrap();
        check_answer(&big, 16 << 20, CLIENT);
        t.shutdown().await;
    });
    assert_eq!(
        server.served.load(std::sync::atomic::Ordering::Relaxed),
        201
    );
    server.stop();
}

/// Awaits all futures concurrently (on the current task).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(|f| Box::pin(f)).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[test]
fn quic_many_concurrent_requests_and_a_16_mib_response() {
    many_concurrent_requests_and_a_16_mib_response(TransportKind::Quic);
}

#[test]
fn tcp_many_concurrent_requests_and_a_16_mib_response() {
    many_concurrent_requests_and_a_16_mib_response(TransportKind::Tcp);
}

fn a_down_peer_fails_in_time_then_reconnects(kind: TransportKind) {
    let dir = certs();
    let addr = free_addr();
    let path = dir.path().to_path_buf();
    let mut c = client_config(kind, dir.path(), addr);
    c.request_timeout = Duration::from_secs(1);
    on_executor(move || async move {
        let (t, _) = Transport::start(c).await.unwrap();
        let start = Instant::now();
        let e = t.request(SERVER, ask(10, 0)).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(
                e.kind,
                TransportErrorKind::Unreachable | TransportErrorKind::Timeout
            ),
            "{e}"
        );
        assert!(took < Duration::from_millis(1500), "failed after {took:?}");
        let server = Server::start(server_config(kind, &path, addr));
        let r = t.request(SERVER, ask(10, 0)).await.unwrap();
        check_answer(&r, 10, CLIENT);
        t.shutdown().await;
        server.stop();
    });
}

#[test]
fn quic_a_down_peer_fails_in_time_then_reconnects() {
    a_down_peer_fails_in_time_then_reconnects(TransportKind::Quic);
}

#[test]
fn tcp_a_down_peer_fails_in_time_then_reconnects() {
    a_down_peer_fails_in_time_then_reconnects(TransportKind::Tcp);
}

fn a_certificate_from_another_ca_is_refused(kind: TransportKind) {
    let dir = certs();
    let other = certs();
    let addr = free_addr();
    let server = Server::start(server_config(kind, dir.path(), addr));
    // A client that trusts the cluster CA but presents a certificate of another CA: the
    // server refuses it.
    let mut c = client_config(kind, dir.path(), addr);
    c.tls = TlsFiles {
        ca: dir.path().join("ca.pem"),
        ..TlsFiles::in_dir(other.path(), CLIENT)
    };
    c.request_timeout = Duration::from_secs(3);
    // A client that trusts only the other CA: it refuses the server.
    let mut c2 = client_config(kind, other.path(), addr);
    c2.request_timeout = Duration::from_secs(3);
    on_executor(move || async move {
        for c in [c, c2] {
            let (t, _) = Transport::start(c).await.unwrap();
            let e = t.request(SERVER, ask(10, 0)).await.unwrap_err();
            assert_eq!(e.kind, TransportErrorKind::Tls, "{e}");
            t.shutdown().await;
        }
    });
    assert_eq!(server.served.load(std::sync::atomic::Ordering::Relaxed), 0);
    server.stop();
}

#[test]
fn quic_a_certificate_from_another_ca_is_refused() {
    a_certificate_from_another_ca_is_refused(TransportKind::Quic);
}

#[test]
fn tcp_a_certificate_from_another_ca_is_refused() {
    a_certificate_from_another_ca_is_refused(TransportKind::Tcp);
}

fn frames_over_the_limit_are_refused(kind: TransportKind) {
    let dir = certs();
    let addr = free_addr();
    let mut s = server_config(kind, dir.path(), addr);
    s.frame_bytes_max = 1 << 20;
    let server = Server::start(s);
    let mut c = client_config(kind, dir.path(), addr);
    c.frame_bytes_max = 2 << 20;
    on_executor(move || async move {
        let (t, _) = Transport::start(c).await.unwrap();
        // Over the caller's own limit: refused before sending.
        let e = t.request(SERVER, ask(1, 3 << 20)).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::TooLarge, "{e}");
        // Over the server's limit: refused by the server.
        let e = t.request(SERVER, ask(1, 3 << 19)).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::TooLarge, "{e}");
        // A response over the server's limit: refused by the server.
        let e = t.request(SERVER, ask(3 << 19, 0)).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::TooLarge, "{e}");
        // The connection still serves requests within the limits.
        let r = t.request(SERVER, ask(1 << 19, 1 << 19)).await.unwrap();
        check_answer(&r, 1 << 19, CLIENT);
        t.shutdown().await;
    });
    server.stop();
    // A response over the caller's limit (the server's is larger).
    let addr = free_addr();
    let server = Server::start(server_config(kind, dir.path(), addr));
    let mut c = client_config(kind, dir.path(), addr);
    c.frame_bytes_max = 1 << 20;
    on_executor(move || async move {
        let (t, _) = Transport::start(c).await.unwrap();
        let e = t.request(SERVER, ask(2 << 20, 0)).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::TooLarge, "{e}");
        let r = t.request(SERVER, ask(100, 0)).await.unwrap();
        check_answer(&r, 100, CLIENT);
        t.shutdown().await;
    });
    server.stop();
}

#[test]
fn quic_frames_over_the_limit_are_refused() {
    frames_over_the_limit_are_refused(TransportKind::Quic);
}

#[test]
fn tcp_frames_over_the_limit_are_refused() {
    frames_over_the_limit_are_refused(TransportKind::Tcp);
}

#[test]
fn an_unknown_node_is_unreachable() {
    let dir = certs();
    let c = client_config(TransportKind::Tcp, dir.path(), free_addr());
    on_executor(move || async move {
        let (t, _) = Transport::start(c).await.unwrap();
        let e = t.request(42, ask(1, 0)).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::Unreachable);
        t.shutdown().await;
    });
}

/// Bytes that are not TLS, sent to both listeners: the peer is dropped, the node serves on.
#[test]
fn garbage_from_a_peer_disconnects_it_without_harm() {
    use std::io::{Read, Write};
    for kind in [TransportKind::Tcp, TransportKind::Quic] {
        let dir = certs();
        let addr = free_addr();
        let server = Server::start(server_config(kind, dir.path(), addr));
        match kind {
            TransportKind::Tcp => {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(&[0xff; 4096]).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                // The server closes (perhaps after an alert).
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
            TransportKind::Quic => {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..100 {
                    s.send_to(&[0xff; 1300], addr).unwrap();
                }
            }
        }
        let c = client_config(kind, dir.path(), addr);
        on_executor(move || async move {
            let (t, _) = Transport::start(c).await.unwrap();
            let r = t.request(SERVER, ask(10, 0)).await.unwrap();
            check_answer(&r, 10, CLIENT);
            t.shutdown().await;
        });
        server.stop();
    }
}

#[test]
fn init_certs_writes_keys_private_and_keeps_its_ca() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let written = ringmq_cluster::init_certs(dir.path(), &[1, 2, 3], &[]).unwrap();
    assert_eq!(written.len(), 2 + 2 * 3);
    for n in 1..=3 {
        let f = TlsFiles::in_dir(dir.path(), n);
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "node-{n}.key");
        assert!(f.cert.exists());
    }
    let ca_mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(ca_mode & 0o777, 0o600);
    // A node added later is signed by the same CA.
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let written = ringmq_cluster::init_certs(dir.path(), &[4], &[]).unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
}
