//! Follower-fetch-shaped load over the cluster transport: a 100-byte request, a 1 MiB
//! response, N requests in flight, QUIC and TCP in the same run. The server shard runs
//! on core 0, the client shard on core 1 (each side's QUIC thread pinned beside its
//! shard); with one core both share it. Prints MB/s, request p50/p99 and QUIC/TCP.
//!
//! ```text
//! cargo run --release -p ringmq-cluster --example transport_bench -- \
//!     [--seconds 5] [--concurrency 16] [--response-bytes 1048576] [--mtu 1200,4096]
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringmq_cluster::{TlsFiles, Transport, TransportConfig, TransportKind, init_certs};

struct Args {
    seconds: f64,
    concurrency: usize,
    response_bytes: usize,
    mtus: Vec<u16>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        concurrency: 16,
        response_bytes: 1 << 20,
        mtus: vec![1200, 4096],
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        match v[i].as_str() {
            "--seconds" => a.seconds = v[i + 1].parse().expect("--seconds"),
            "--concurrency" => a.concurrency = v[i + 1].parse().expect("--concurrency"),
            "--response-bytes" => a.response_bytes = v[i + 1].parse().expect("--response-bytes"),
            "--mtu" => {
                a.mtus = v[i + 1]
                    .split(',')
                    .map(|m| m.parse().expect("--mtu"))
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

struct Outcome {
    mb_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    requests: u64,
}

fn free_addr() -> SocketAddr {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = t.local_addr().expect("addr");
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

fn run(kind: TransportKind, mtu: u16, a: &Args, dir: &std::path::Path) -> Outcome {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, client_core) = if cores >= 2 { (0, 1) } else { (0, 0) };
    let addr = free_addr();
    let config = |me, core| {
        let mut c = TransportConfig::new(me, TlsFiles::in_dir(dir, me));
        c.kind = kind;
        c.core = Some(core);
        c.quic_mtu_bytes = mtu;
        c.request_timeout = Duration::from_secs(30);
        c
    };
    let mut sc = config(1, server_core);
    sc.listen = Some(addr);
    sc.peers = BTreeMap::from([(2, free_addr())]);
    let mut cc = config(2, client_core);
    cc.peers = BTreeMap::from([(1, addr)]);
    let response = Bytes::from(vec![0x5a; a.response_bytes]);
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = LocalExecutorBuilder::new(Placement::Fixed(server_core))
        .name("bench-server")
        .spawn(move || async move {
            let (t, incoming) = Transport::start(sc).await.expect("server start");
            let incoming = incoming.expect("listener");
            ready_tx.send(()).expect("ready");
            loop {
                let next = futures_lite::future::or(async { incoming.next().await }, async {
                    let _ = stopped.recv().await;
                    None
                })
                .await;
                let Some(req) = next else { break };
                req.respond(response.clone());
            }
            t.shutdown().await;
        })
        .expect("server executor");
    ready_rx.recv().expect("server ready");
    let seconds = a.seconds;
    let concurrency = a.concurrency;
    let outcome = LocalExecutorBuilder::new(Placement::Fixed(client_core))
        .name("bench-client")
        .spawn(move || async move {
            let (t, _) = Transport::start(cc).await.expect("client start");
            let t = Rc::new(t);
            let request = Bytes::from(vec![1u8; 100]);
            // Warm up: connection, windows, MTU discovery.
            let warm = Instant::now() + Duration::from_millis(500);
            while Instant::now() < warm {
                t.request(1, request.clone())
                    .await
                    .expect("warm-up request");
            }
            let hist = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            ));
            let bytes = Rc::new(RefCell::new(0u64));
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(seconds);
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (t, hist, bytes, request) =
                        (t.clone(), hist.clone(), bytes.clone(), request.clone());
                    glommio::spawn_local(async move {
                        while Instant::now() < end {
                            let s = Instant::now();
                            let r = t.request(1, request.clone()).await.expect("request");
                            let us = s.elapsed().as_micros() as u64;
                            hist.borrow_mut().record(us.max(1)).expect("record");
                            *bytes.borrow_mut() += r.len() as u64;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let out = {
                let h = hist.borrow();
                Outcome {
                    mb_per_s: *bytes.borrow() as f64 / elapsed / 1e6,
                    p50_us: h.value_at_quantile(0.5),
                    p99_us: h.value_at_quantile(0.99),
                    requests: h.len(),
                }
            };
            if let Ok(t) = Rc::try_unwrap(t) {
                t.shutdown().await;
            }
            out
        })
        .expect("client executor")
        .join()
        .expect("client");
    let _ = stop.send_blocking(());
    server.join().expect("server");
    outcome
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &[1, 2], &[]).expect("certs");
    println!(
        "transport_bench: request 100 B -> response {} B, {} in flight, {} s per run",
        a.response_bytes, a.concurrency, a.seconds
    );
    let tcp = run(TransportKind::Tcp, 1200, &a, dir.path());
    let report = |name: &str, o: &Outcome| {
        println!(
            "{name:<16} {:>9.1} MB/s  p50 {:>7} us  p99 {:>7} us  ({} requests)",
            o.mb_per_s, o.p50_us, o.p99_us, o.requests
        );
    };
    report("tcp+tls", &tcp);
    for &mtu in &a.mtus {
        let q = run(TransportKind::Quic, mtu, &a, dir.path());
        report(&format!("quic mtu {mtu}"), &q);
        println!(
            "{:<16} throughput {:.2}x  p50 {:.2}x  p99 {:.2}x",
            format!("quic/tcp {mtu}"),
            q.mb_per_s / tcp.mb_per_s,
            q.p50_us as f64 / tcp.p50_us as f64,
            q.p99_us as f64 / tcp.p99_us as f64
        );
    }
    // TCP again: the machine's load drifts; two TCP runs bracket the QUIC ones.
    let tcp2 = run(TransportKind::Tcp, 1200, &a, dir.path());
    report("tcp+tls again", &tcp2);
}
