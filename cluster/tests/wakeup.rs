//! A glommio task waiting for a reply that another thread (the QUIC I/O thread) sends is
//! woken promptly: glommio 0.9 queues a foreign wake and writes its executor's eventfd.

use std::time::{Duration, Instant};

use glommio::LocalExecutorBuilder;

#[test]
fn a_glommio_task_is_woken_promptly_from_a_tokio_thread() {
    let rounds = 300;
    let delays = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (tx, rx) =
                std::sync::mpsc::channel::<(futures_channel::oneshot::Sender<Instant>, Duration)>();
            let tokio_thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    while let Ok((reply, after)) = rx.recv() {
                        tokio::time::sleep(after).await;
                        let _ = reply.send(Instant::now());
                    }
                });
            });
            let mut delays = Vec::new();
            for i in 0..rounds {
                let (reply, answer) = futures_channel::oneshot::channel();
                // Half the rounds let the executor fall asleep first.
                let after = Duration::from_micros(if i % 2 == 0 { 0 } else { 2000 });
                tx.send((reply, after)).unwrap();
                let sent = answer.await.unwrap();
                delays.push(sent.elapsed());
            }
            drop(tx);
            tokio_thread.join().unwrap();
            delays
        })
        .unwrap()
        .join()
        .unwrap();
    let mut us: Vec<u128> = delays.iter().map(|d| d.as_micros()).collect();
    us.sort();
    let p50 = us[us.len() / 2];
    let p99 = us[us.len() * 99 / 100];
    let max = us[us.len() - 1];
    println!("wake delay from the tokio thread: p50 {p50} µs, p99 {p99} µs, max {max} µs");
    // Generous bounds for a loaded 2-core machine; a lost wake would hang or take the
    // executor's next timer (seconds).
    assert!(p50 < 2_000, "p50 {p50} µs");
    assert!(max < 100_000, "max {max} µs");
}
