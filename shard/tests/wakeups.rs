//! No wake-up between shards is lost. The vendored glommio orders an executor's "about to
//! sleep" flag against a sender's push with a fence on each side (`vendor/README.md`)
//! instead of a `membarrier` system call. Two executors play ping-pong over glommio's
//! shared channels, so the idle side parks before almost every message, with a random
//! spin on each side to move the push across the sleeper's window. A lost wake shows as a
//! round trip that never completes: the test fails after a deadline.
//!
//! What it catches: a wake path that does not deliver (with the eventfd write removed
//! from `SleepNotifier::notify` it fails at the first round trip). What it cannot catch
//! reliably: the store-to-load reordering the fences exist for, whose window on x86-64 is
//! a few nanoseconds (with the sleeper's fence removed it still passed 3 runs of 3).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::LocalExecutorBuilder;
use glommio::channels::shared_channel;

const ROUND_TRIPS: u64 = 20_000;

/// A spin of 0 to about 20 µs, different on every call (xorshift).
fn spin(state: &mut u64) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let until = Instant::now() + Duration::from_nanos(*state % 20_000);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[test]
fn ping_pong_between_parking_executors_loses_no_wake() {
    let (to_echo, echo_rx) = shared_channel::new_bounded::<u64>(1);
    let (to_pinger, pinger_rx) = shared_channel::new_bounded::<u64>(1);
    let (done_tx, done_rx) = mpsc::channel();

    let echo = LocalExecutorBuilder::default()
        .name("echo")
        .spawn(move || async move {
            let rx = echo_rx.connect().await;
            let tx = to_pinger.connect().await;
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            while let Some(n) = rx.recv().await {
                spin(&mut state);
                if tx.send(n).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let pinger = LocalExecutorBuilder::default()
        .name("pinger")
        .spawn(move || async move {
            let tx = to_echo.connect().await;
            let rx = pinger_rx.connect().await;
            let mut state = 0x2545_f491_4f6c_dd1du64;
            for i in 0..ROUND_TRIPS {
                spin(&mut state);
                tx.send(i).await.unwrap();
                assert_eq!(rx.recv().await, Some(i), "the echo of round trip {i}");
                done_tx.send(i).unwrap();
            }
        })
        .unwrap();

    // Each round trip reports; a gap of 10 s means a message sat unnoticed by a parked
    // executor (a round trip takes tens of microseconds).
    let mut last = None;
    while last != Some(ROUND_TRIPS - 1) {
        match done_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(i) => last = Some(i),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no round trip completed for 10 s after {last:?}: a wake-up was lost")
            }
        }
    }
    assert_eq!(last, Some(ROUND_TRIPS - 1), "the pinger stopped early");
    pinger.join().unwrap();
    echo.join().unwrap();
}
