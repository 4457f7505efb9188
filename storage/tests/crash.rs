//! Crash and torn-write recovery.
//!
//! `acknowledged_batches_survive_sigkill`: a child process (this test binary, re-run
//! with `crash_child` selected) appends with `every_batch` from several concurrent
//! tasks and prints `ACK <base offset> <content hash>` after each acknowledgement; the
//! parent kills it with SIGKILL at a random moment, reopens the log and checks that
//! every acknowledged batch is present and byte-identical and that the log ends on a
//! batch boundary. 30 cycles by default; `RINGMQ_CRASH_CYCLES=N` for more.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use ringmq_storage::{IoMode, LogConfig, batch};

const CHILD_DIR_ENV: &str = "RINGMQ_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "RINGMQ_CRASH_CHILD_SEED";
const CHILD_MODE_ENV: &str = "RINGMQ_CRASH_CHILD_IO";

fn crash_config(mode: IoMode) -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        index_interval_bytes: 2048,
        preallocate_step_bytes: 64 << 10,
        io_mode: mode,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// The child side: appends until killed. Selected only by the parent.
#[test]
#[ignore = "helper process of acknowledged_batches_survive_sigkill"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let mode = match std::env::var(CHILD_MODE_ENV).as_deref() {
        Ok("buffered") => IoMode::Buffered,
        _ => IoMode::Direct,
    };
    run(move || async move {
        let log = open(std::path::Path::new(&dir), crash_config(mode)).await;
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut rng = StdRng::seed_from_u64(seed * 100 + t);
                for i in 0.. {
                    let s = seed << 32 | t << 24 | i;
                    // A quarter of the batches are large enough (up to 240 KB) that
                    // their rounds are written with RWF_DSYNC instead of an fdatasync.
                    let records = if rng.random_bool(0.25) {
                        rng.random_range(40..80)
                    } else {
                        rng.random_range(1..8)
                    };
                    let b = make_batch(s, records, rng.random_range(10..3000), 1000);
                    let at = log.append(bm(&b)).await.expect("append");
                    println!("ACK {} {}", at.base_offset, content_hash(&b));
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let cycles: usize = std::env::var("RINGMQ_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut acked: HashMap<i64, u64> = HashMap::new();
    for cycle in 0..cycles {
        let mode = if cycle % 2 == 0 { "direct" } else { "buffered" };
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, &path)
            .env(CHILD_SEED_ENV, cycle.to_string())
            .env(CHILD_MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read acknowledgements on a thread; kill after the first ack plus a random
        // delay, so the kill lands mid-stream.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let mut it = rest.split(' ');
                    let off: i64 = it.next().unwrap().parse().unwrap();
                    let h: u64 = it.next().unwrap().parse().unwrap();
                    if acks.is_empty() {
                        let _ = tx.send(());
                    }
                    acks.push((off, h));
                }
            }
            acks
        });
        let started = Instant::now();
        let first = rx.recv_timeout(Duration::from_secs(30));
        assert!(
            first.is_ok(),
            "child produced no acknowledgement within 30 s"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(!acks.is_empty());
        for (o, h) in acks.iter().copied() {
            if let Some(prev) = acked.insert(o, h) {
                // An offset acknowledged in an earlier cycle can never be reused.
                panic!("cycle {cycle}: offset {o} acknowledged twice (hashes {prev} and {h})");
            }
        }
        // Reopen in this process and check every acknowledged batch.
        let p = path.clone();
        let want = acked.clone();
        let (n_batches, end) = run(move || async move {
            let log = open(&p, crash_config(IoMode::Direct)).await;
            let all = read_all(&log).await;
            let mut seen = HashMap::new();
            let mut next = log.start_offset();
            for (off, bytes) in &all {
                assert_eq!(*off, next, "batches are contiguous");
                let info = batch::validate(bytes, usize::MAX).unwrap();
                next = info.next_offset();
                seen.insert(*off, content_hash(bytes));
            }
            assert_eq!(next, log.end_offset(), "the log ends on a batch boundary");
            for (o, h) in &want {
                match seen.get(o) {
                    Some(got) => {
                        assert_eq!(got, h, "batch at {o} differs from what was acknowledged")
                    }
                    None => panic!("acknowledged batch at offset {o} is missing after SIGKILL"),
                }
            }
            log.close().await.unwrap();
            (all.len(), next)
        });
        eprintln!(
            "cycle {cycle} ({mode}): {} acks this run, {} acked total, {n_batches} batches on disk, end offset {end}, {:?}",
            acks.len(),
            acked.len(),
            started.elapsed()
        );
        // Unacknowledged batches that did survive are fine; the next child continues
        // after them. Forget acked offsets beyond nothing: all acked are present.
    }
}

/// Builds a log of `n` batches without a clean shutdown; returns each batch's
/// (base offset, end position in the active segment, content hash) for batches in the
/// active segment and the active segment's path.
async fn build_unclean(
    path: &std::path::Path,
    n: u64,
    seed: u64,
) -> (Vec<(i64, u64, u64)>, std::path::PathBuf) {
    let log = open(path, crash_config(IoMode::Direct)).await;
    log.set_leader_epoch(3).await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut batches = Vec::new();
    for i in 0..n {
        let b = make_batch(
            seed * 1000 + i,
            rng.random_range(1..5),
            rng.random_range(50..2000),
            0,
        );
        let at = log.append(bm(&b)).await.unwrap();
        batches.push((at.base_offset, b.len() as u64, content_hash(&b)));
    }
    // The active segment: the newest .log file.
    let mut logs: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let active = logs.pop().unwrap();
    let active_base: i64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    drop(log); // no close(): the next open is an unclean recovery
    let mut pos = 0;
    let mut out = Vec::new();
    for (off, len, h) in batches {
        if off >= active_base {
            pos += len;
            out.push((off, pos, h));
        }
    }
    (out, active)
}

#[test]
fn torn_or_flipped_active_tail_keeps_exactly_the_batches_before_the_damage() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let p = path.clone();
        let (batches, active) = run(move || async move { build_unclean(&p, 300, round).await });
        let data_end = batches.last().unwrap().1;
        let seg_start = batches.first().map(|b| b.1).unwrap();
        let _ = seg_start;
        let damage_at = rng.random_range(0..data_end);
        let truncate = round % 2 == 0;
        if truncate {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&active)
                .unwrap();
            f.set_len(damage_at).unwrap();
        } else {
            let mut bytes = std::fs::read(&active).unwrap();
            bytes[damage_at as usize] ^= rng.random_range(1..=255u8);
            std::fs::write(&active, &bytes).unwrap();
        }
        let p = path.clone();
        let want = batches.clone();
        run(move || async move {
            let log = open(&p, crash_config(IoMode::Direct)).await;
            let report = log.recovery_report().clone();
            let got = read_all(&log).await;
            let active_first = want[0].0;
            let kept: Vec<_> = got.iter().filter(|(o, _)| *o >= active_first).collect();
            // Batches ending at or before the damage stay, the rest go.
            let survivors: Vec<_> = want
                .iter()
                .filter(|(_, end, _)| *end <= damage_at)
                .collect();
            assert_eq!(
                kept.len(),
                survivors.len(),
                "round {round}: damage at {damage_at} ({}), report {report:?}",
                if truncate { "truncated" } else { "flipped" }
            );
            for ((o, b), (wo, _, wh)) in kept.iter().zip(&survivors) {
                assert_eq!(o, wo);
                assert_eq!(content_hash(b), *wh);
            }
            if survivors.len() < want.len() {
                assert!(
                    report.truncated_bytes > 0 || truncate,
                    "round {round}: truncation is reported"
                );
            }
            // The log keeps working: the next append follows the last survivor.
            let expect_next = survivors.last().map(|(o, _, _)| *o).map(|o| {
                let b = &kept.last().unwrap().1;
                o + batch::parse_header(b).unwrap().record_count as i64
            });
            let at = log.append(bm(&make_batch(1, 1, 10, 0))).await.unwrap();
            if let Some(n) = expect_next {
                assert_eq!(at.base_offset, n);
            }
        });
    }
}

#[test]
fn damaged_index_files_are_rebuilt_and_reads_stay_correct() {
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let p = path.clone();
        // Build and close cleanly, so index files exist for every segment.
        let expected = run(move || async move {
            let (_, _) = build_unclean(&p, 400, round).await;
            let log = open(&p, crash_config(IoMode::Direct)).await;
            let all = read_all(&log).await;
            log.close().await.unwrap();
            all
        });
        let mut index_files: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "index" || e == "timeindex")
            })
            .collect();
        index_files.sort();
        assert!(index_files.len() >= 4);
        for f in &index_files {
            let mut bytes = std::fs::read(f).unwrap();
            match rng.random_range(0..3) {
                0 if !bytes.is_empty() => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= rng.random_range(1..=255u8);
                }
                1 => bytes.truncate(rng.random_range(0..bytes.len().max(1))),
                _ => bytes = vec![0xAB; bytes.len() + 5],
            }
            std::fs::write(f, &bytes).unwrap();
        }
        std::fs::remove_file(&index_files[0]).unwrap();
        let p = path.clone();
        run(move || async move {
            let log = open(&p, crash_config(IoMode::Direct)).await;
            assert_eq!(read_all(&log).await, expected, "round {round}");
            // Timestamp lookups use the rebuilt time indexes.
            assert_eq!(
                log.offset_for_timestamp(0).await.unwrap(),
                Some(log.start_offset())
            );
        });
    }
}
