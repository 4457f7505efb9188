//! Behaviour of `PartitionLog` through its public API, on real files.

mod common;

use common::*;
use proptest::prelude::*;
use ringmq_storage::batch::{self, Record, TimestampType};
use ringmq_storage::{BatchError, Error, ErrorKind, FlushPolicy, IoMode, LogConfig, ReadChunk};

#[test]
fn round_trip_across_segment_rolls_both_io_modes() {
    for mode in [IoMode::Direct, IoMode::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        run(move || async move {
            let cfg = LogConfig {
                io_mode: mode,
                ..small_config()
            };
            let log = open(&path, cfg.clone()).await;
            let mut sent = Vec::new();
            for i in 0..200u64 {
                let b = make_batch(
                    i,
                    1 + (i % 5) as usize,
                    100 + (i as usize * 37) % 900,
                    1000 + i as i64,
                );
                let at = log.append(bm(&b)).await.unwrap();
                sent.push((at.base_offset, b));
            }
            assert!(log.segment_count() > 3, "small segments rolled");
            assert_eq!(log.durable_offset(), log.end_offset());
            let got = read_all(&log).await;
            assert_eq!(got.len(), sent.len());
            for ((o1, b1), (o2, b2)) in sent.iter().zip(&got) {
                assert_eq!(o1, o2);
                assert_eq!(content_hash(b1), content_hash(b2));
            }
            log.close().await.unwrap();
            // A clean reopen serves the same and continues the offsets.
            let log = open(&path, cfg).await;
            assert!(log.recovery_report().clean_shutdown);
            assert_eq!(read_all(&log).await, got);
            let at = log.append(bm(&make_batch(999, 2, 10, 5))).await.unwrap();
            assert_eq!(
                at.base_offset,
                sent.last()
                    .map(|(o, b)| o + batch::parse_header(b).unwrap().record_count as i64)
                    .unwrap()
            );
        });
    }
}

#[test]
fn appends_over_zero_filled_space_survive_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let cfg = LogConfig {
            preallocate_step_bytes: 4 << 20,
            retention_ms: None,
            ..LogConfig::default()
        };
        let log = open(&path, cfg.clone()).await;
        let mut sent = Vec::new();
        for i in 0..40u64 {
            let b = make_batch(i, 3, 700, 1000 + i as i64);
            let at = log.append(bm(&b)).await.unwrap();
            sent.push((at.base_offset, content_hash(&b)));
            // Idle past the zero-fill interval, so a fill runs after this round.
            glommio::timer::sleep(std::time::Duration::from_millis(25)).await;
        }
        // 1 MiB ahead of an end that moved about 90 KB: four fills of 256 KiB, and
        // later appends went over the zeros.
        let zeroed = log.stats().zero_filled_bytes;
        assert!(
            (1 << 20..=(2 << 20)).contains(&zeroed),
            "{zeroed} bytes zero-filled"
        );
        // Appends over the zeros are made durable by their own write (RWF_DSYNC):
        // only those before the runway existed needed an fdatasync.
        let syncs = log.stats().syncs;
        assert!(syncs <= 5, "{syncs} fdatasyncs for 40 appends");
        assert_eq!(log.durable_offset(), log.end_offset());
        let got = read_all(&log).await;
        let hashes: Vec<_> = got.iter().map(|(o, b)| (*o, content_hash(b))).collect();
        assert_eq!(hashes, sent);
        drop(log); // no close(): the next open recovers over the zeros
        let log = open(&path, cfg).await;
        assert!(!log.recovery_report().clean_shutdown);
        assert_eq!(read_all(&log).await, got);
        let at = log.append(bm(&make_batch(99, 1, 10, 5))).await.unwrap();
        assert_eq!(at.base_offset, log.end_offset() - 1);
    });
}

#[test]
fn the_runway_is_not_filled_while_appends_outpace_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let cfg = LogConfig {
            preallocate_step_bytes: 8 << 20,
            retention_ms: None,
            ..LogConfig::default()
        };
        let log = open(&path, cfg).await;
        log.append(bm(&make_batch(0, 1, 100, 1))).await.unwrap();
        // The first look fills once.
        assert_eq!(log.stats().zero_filled_bytes, 256 << 10);
        for i in 1..6u64 {
            glommio::timer::sleep(std::time::Duration::from_millis(25)).await;
            // Each look finds more than a fill's worth (256 KiB) written since the last.
            log.append(bm(&make_batch(i, 1, 400_000, 1))).await.unwrap();
        }
        assert_eq!(log.stats().zero_filled_bytes, 256 << 10);
    });
}

#[test]
fn reads_return_whole_batches_from_file_ranges_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(&path, small_config()).await;
        for i in 0..100u64 {
            log.append(bm(&make_batch(i, 3, 200, 0))).await.unwrap();
        }
        // Old data comes from a file range, recent data from memory.
        let old = log.read(0, 4096, i64::MAX).await.unwrap();
        assert!(matches!(old.chunks[0], ReadChunk::File { .. }));
        let recent = log
            .read(log.end_offset() - 1, 4096, i64::MAX)
            .await
            .unwrap();
        assert!(matches!(recent.chunks[0], ReadChunk::Memory(_)));
        // The batch holding a middle offset is returned from its start.
        let r = log.read(31, 1, i64::MAX).await.unwrap();
        let bytes = r.to_bytes().await.unwrap();
        let info = batch::validate(&bytes, usize::MAX).unwrap();
        assert_eq!(info.base_offset, 30);
        assert_eq!(r.next_offset, 33);
        // Reading at the end returns nothing; past it is out of range.
        assert!(
            log.read(log.end_offset(), 100, i64::MAX)
                .await
                .unwrap()
                .is_empty()
        );
        let e = log
            .read(log.end_offset() + 1, 100, i64::MAX)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OffsetOutOfRange);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// Any read returns whole consecutive batches starting with the one holding the
    /// offset, within max_bytes unless a single batch is larger.
    #[test]
    fn reads_respect_batch_boundaries(sizes in proptest::collection::vec((1usize..6, 1usize..3000), 5..60), probes in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..20_000), 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        run(move || async move {
            let mut cfg = small_config();
            cfg.tail_cache_bytes_max = 4096;
            let log = open(&path, cfg).await;
            let mut batches = Vec::new();
            for (i, (n, sz)) in sizes.iter().enumerate() {
                let b = make_batch(i as u64, *n, *sz, 0);
                let at = log.append(bm(&b)).await.unwrap();
                batches.push((at.base_offset, at.last_offset, b.len()));
            }
            let end = log.end_offset();
            for (idx, max_bytes) in probes {
                let offset = idx.index(end as usize) as i64;
                let r = log.read(offset, max_bytes, i64::MAX).await.unwrap();
                let bytes = r.to_bytes().await.unwrap();
                let first = batches.iter().position(|b| b.1 >= offset).unwrap();
                let mut pos = 0;
                let mut k = first;
                while pos < bytes.len() {
                    let size = batch::peek_frame(&bytes[pos..]).unwrap().1;
                    let info = batch::validate(&bytes[pos..pos + size], usize::MAX).unwrap();
                    assert_eq!(info.base_offset, batches[k].0);
                    pos += size;
                    k += 1;
                }
                assert!(k > first, "at least the batch holding the offset");
                assert!(bytes.len() <= max_bytes || k == first + 1, "over max_bytes only for a single batch");
                assert_eq!(r.next_offset, batches[k - 1].1 + 1);
            }
        });
    }
}

#[test]
fn bad_batches_are_refused_and_leave_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let cfg = LogConfig {
            message_bytes_max: 4096,
            ..small_config()
        };
        let log = open(&path, cfg).await;
        log.append(bm(&make_batch(1, 2, 10, 0))).await.unwrap();
        let before = read_all(&log).await;
        let end = log.end_offset();
        let good = make_batch(2, 2, 10, 0);

        let mut wrong_crc = good.clone();
        *wrong_crc.last_mut().unwrap() ^= 1;
        let mut wrong_len = good.clone();
        wrong_len.truncate(good.len() - 3);
        let mut wrong_magic = good.clone();
        wrong_magic[16] = 1;
        let oversized = make_batch(3, 1, 5000, 0);
        let mut zero = good.clone();
        zero[57..61].copy_from_slice(&0i32.to_be_bytes());
        batch::fix_crc(&mut zero);

        type Check = fn(&BatchError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (wrong_crc, |e| matches!(e, BatchError::CrcMismatch { .. })),
            (wrong_len, |e| matches!(e, BatchError::BadLength { .. })),
            (wrong_magic, |e| matches!(e, BatchError::BadMagic { .. })),
            (oversized, |e| matches!(e, BatchError::TooLarge { .. })),
            (zero, |e| matches!(e, BatchError::NoRecords { .. })),
            (vec![1, 2, 3], |e| matches!(e, BatchError::TooShort { .. })),
        ];
        for (b, is) in cases {
            match log.append(bm(&b)).await {
                Err(Error::InvalidBatch(e)) => assert!(is(&e), "wrong error {e}"),
                other => panic!("expected an invalid batch error, got {other:?}"),
            }
            assert_eq!(log.end_offset(), end);
        }
        assert_eq!(read_all(&log).await, before);
        let at = log.append(bm(&good)).await.unwrap();
        assert_eq!(
            at.base_offset, end,
            "no offset was consumed by refused batches"
        );
    });
}

#[test]
fn group_commit_shares_syncs_between_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(
            &path,
            LogConfig {
                segment_bytes: 1 << 30,
                ..small_config()
            },
        )
        .await;
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..20u64 {
                    let at = log
                        .append(bm(&make_batch(t * 1000 + i, 1, 100, 0)))
                        .await
                        .unwrap();
                    // Acknowledged means durable.
                    assert!(log.durable_offset() > at.last_offset);
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let st = log.stats();
        assert_eq!(st.appends, 640);
        assert!(
            st.syncs < st.appends / 4,
            "syncs {} for {} appends",
            st.syncs,
            st.appends
        );
        assert_eq!(read_all(&log).await.len(), 640);
    });
}

#[test]
fn flush_policies_acknowledge_at_write_and_sync_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(
            &path,
            LogConfig {
                flush: FlushPolicy::Never,
                ..small_config()
            },
        )
        .await;
        log.append(bm(&make_batch(1, 1, 100, 0))).await.unwrap();
        assert_eq!(log.end_offset(), 1);
        assert_eq!(log.durable_offset(), 0, "never: no sync");
        assert_eq!(
            log.flush_policy(),
            FlushPolicy::Never,
            "readable once written: the partition decides"
        );
        log.sync().await.unwrap();
        assert_eq!(log.durable_offset(), 1);

        let mut cfg = log.config();
        cfg.flush = FlushPolicy::Bytes(1000);
        log.set_config(cfg.clone()).unwrap();
        log.append(bm(&make_batch(2, 1, 100, 0))).await.unwrap();
        assert_eq!(log.durable_offset(), 1, "below the byte threshold");
        log.append(bm(&make_batch(3, 1, 1000, 0))).await.unwrap();
        assert_eq!(log.durable_offset(), 3, "threshold reached");

        cfg.flush = FlushPolicy::IntervalMs(60_000);
        log.set_config(cfg).unwrap();
        log.append(bm(&make_batch(4, 1, 100, 0))).await.unwrap();
        assert_eq!(log.durable_offset(), 3);
        log.sync_if_due(ringmq_storage::now_ms()).await.unwrap();
        assert_eq!(log.durable_offset(), 3, "interval not yet passed");
        log.sync_if_due(ringmq_storage::now_ms() + 60_001)
            .await
            .unwrap();
        assert_eq!(log.durable_offset(), 4);
    });
}

#[test]
fn timestamp_lookup_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(&path, small_config()).await;
        // Timestamps rise with small dips, across several segments.
        let mut all = Vec::new(); // (offset, timestamp)
        let mut ts = 10_000i64;
        for i in 0..150u64 {
            let n = 1 + (i % 4) as usize;
            let recs: Vec<Record> = (0..n)
                .map(|j| {
                    let t = ts + ((i * 7 + j as u64) % 13) as i64 - 6;
                    Record {
                        value: Some(vec![i as u8; 700]),
                        timestamp_ms: t,
                        ..Default::default()
                    }
                })
                .collect();
            let at = log.append(bm(&batch::encode_batch(&recs))).await.unwrap();
            for (j, r) in recs.iter().enumerate() {
                all.push((at.base_offset + j as i64, r.timestamp_ms));
            }
            ts += 20;
        }
        assert!(log.segment_count() > 2);
        for target in (9_990..ts + 20).step_by(7) {
            // Batch-level semantics: the first record with timestamp ≥ target within
            // the first batch whose max timestamp reaches it.
            let expect = all.iter().find(|(_, t)| *t >= target).map(|(o, _)| *o);
            let got = log.offset_for_timestamp(target).await.unwrap();
            match (expect, got) {
                (None, None) => {}
                (Some(e), Some(g)) => {
                    let gt = all.iter().find(|(o, _)| *o == g).unwrap().1;
                    assert!(gt >= target, "offset {g} has timestamp {gt} < {target}");
                    assert!(g <= e + 4, "target {target}: expected about {e}, got {g}");
                    assert!(all.iter().filter(|(o, _)| *o < g).all(|(_, t)| *t < target) || g <= e);
                }
                other => panic!("target {target}: {other:?}"),
            }
        }
        assert_eq!(log.offset_for_timestamp(i64::MAX).await.unwrap(), None);
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
    });
}

#[test]
fn log_append_time_stamps_batches_with_the_broker_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(
            &path,
            LogConfig {
                timestamp_type: TimestampType::LogAppendTime,
                ..small_config()
            },
        )
        .await;
        let at = log
            .append_at(bm(&make_batch(1, 3, 10, 5)), 777_000)
            .await
            .unwrap();
        assert_eq!(at.log_append_time_ms, 777_000);
        let stored = log
            .read(0, 1 << 20, i64::MAX)
            .await
            .unwrap()
            .to_bytes()
            .await
            .unwrap();
        let info = batch::validate(&stored, usize::MAX).unwrap();
        assert_eq!(info.max_timestamp, 777_000);
        assert_eq!(log.offset_for_timestamp(700_000).await.unwrap(), Some(0));
    });
}

#[test]
fn retention_deletes_old_segments_without_breaking_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(&path, small_config()).await;
        for i in 0..400u64 {
            log.append_at(bm(&make_batch(i, 2, 500, 1_000 + i as i64)), 0)
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        assert!(segments >= 5);
        // A read of the oldest segment in progress.
        let held = log.read(0, 4096, i64::MAX).await.unwrap();
        let expected = held.to_bytes().await.unwrap();

        let mut cfg = log.config();
        cfg.retention_bytes = Some(150 << 10);
        log.set_config(cfg.clone()).unwrap();
        let size_before = log.size_bytes();
        let out = log.apply_retention(10_000).await.unwrap();
        assert!(out.segments_deleted > 0);
        assert!(
            log.size_bytes() >= 150 << 10,
            "never below the retained size"
        );
        assert!(log.size_bytes() < size_before);
        assert_eq!(log.start_offset(), out.start_offset);
        assert!(out.start_offset > 0);
        // The read that held the deleted segment still completes with the same bytes.
        assert_eq!(held.to_bytes().await.unwrap(), expected);
        // Offsets below the start are now out of range.
        assert_eq!(
            log.read(0, 10, i64::MAX).await.unwrap_err().kind(),
            ErrorKind::OffsetOutOfRange
        );
        // Retention by time: all closed segments are older than an hour at t = 1h + 2s.
        cfg.retention_bytes = None;
        cfg.retention_ms = Some(3_600_000);
        log.set_config(cfg).unwrap();
        let out = log
            .apply_retention(3_600_000 + 1_000 + 2_000)
            .await
            .unwrap();
        assert!(out.segments_deleted > 0);
        assert_eq!(log.segment_count(), 1, "only the active segment is left");
        let left = read_all(&log).await;
        assert_eq!(left.first().unwrap().0, log.start_offset());
        drop(log);
        // The start offset survives a restart.
        let log = open(&path, small_config()).await;
        assert_eq!(read_all(&log).await, left);
    });
}

#[test]
fn truncate_to_and_leader_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(&path, small_config()).await;
        log.set_leader_epoch(1).await.unwrap();
        let mut bases = Vec::new();
        for i in 0..120u64 {
            if i == 60 {
                log.set_leader_epoch(2).await.unwrap();
            }
            bases.push(
                log.append(bm(&make_batch(i, 2, 400, 0)))
                    .await
                    .unwrap()
                    .base_offset,
            );
        }
        assert_eq!(log.leader_epochs(), vec![(1, 0), (2, bases[60])]);
        let stored = log
            .read(bases[70], 1, i64::MAX)
            .await
            .unwrap()
            .to_bytes()
            .await
            .unwrap();
        assert_eq!(batch::parse_header(&stored).unwrap().leader_epoch, 2);
        // Cut into an earlier, closed segment.
        let cut = bases[30];
        log.truncate_to(cut).await.unwrap();
        assert_eq!(log.end_offset(), cut);
        assert_eq!(log.leader_epochs(), vec![(1, 0)]);
        assert!(log.truncate_to(cut + 100).await.is_err());
        let got = read_all(&log).await;
        assert_eq!(got.len(), 30);
        let at = log.append(bm(&make_batch(500, 1, 10, 0))).await.unwrap();
        assert_eq!(at.base_offset, cut);
        drop(log);
        let log = open(&path, small_config()).await;
        assert_eq!(log.end_offset(), cut + 1);
        assert_eq!(read_all(&log).await.len(), 31);
        assert_eq!(log.leader_epochs(), vec![(1, 0)]);
    });
}

#[test]
fn idle_partition_stays_within_64_kib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        // Default settings (1 GiB segments, 1 MiB tail cache) but an index entry every
        // 64 bytes, so 16 MiB of small batches make the active indexes as large as a
        // full 1 GiB segment's at the default interval (several MiB).
        let config = LogConfig {
            index_interval_bytes: 64,
            ..LogConfig::default()
        };
        let log = open(&path, config.clone()).await;
        let b = make_batch(1, 1, 900, 0);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let log = log.clone();
            let b = b.clone();
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..1024 {
                    log.append(bm(&b)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        assert!(log.memory_bytes() > 1 << 20, "{}", log.memory_bytes());
        assert!(
            log.memory_bytes() > 64 << 10,
            "the tail cache is in use while hot"
        );
        log.release_memory().await.unwrap();
        let idle = log.memory_bytes();
        assert!(idle <= 64 << 10, "idle partition holds {idle} bytes");
        // Still fully readable, searchable and appendable after releasing.
        assert_eq!(read_all(&log).await.len(), 16384);
        log.release_memory().await.unwrap();
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        log.release_memory().await.unwrap();
        log.append(bm(&make_batch(99, 1, 10, 0))).await.unwrap();
        assert_eq!(read_all(&log).await.len(), 16385);
        log.close().await.unwrap();
        let log = open(&path, config).await;
        assert_eq!(read_all(&log).await.len(), 16385);
    });
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let log = open(
            &path,
            LogConfig {
                segment_ms: 20,
                ..small_config()
            },
        )
        .await;
        log.append(bm(&make_batch(1, 1, 10, 0))).await.unwrap();
        log.append(bm(&make_batch(2, 1, 10, 0))).await.unwrap();
        assert_eq!(log.segment_count(), 1, "young segment, no roll");
        glommio::timer::sleep(std::time::Duration::from_millis(30)).await;
        log.append(bm(&make_batch(3, 1, 10, 0))).await.unwrap();
        assert_eq!(log.segment_count(), 2, "rolled once older than segment_ms");
        assert_eq!(read_all(&log).await.len(), 3);
    });
}

/// Regression: a large batch waiting for room in the write buffer was overtaken by a
/// smaller one that arrived after it but fitted, so pipelined appends were stored out of
/// order. Appends are admitted in arrival order.
#[test]
fn pipelined_appends_of_mixed_sizes_are_stored_in_arrival_order() {
    for round in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        run(move || async move {
            let cfg = LogConfig {
                segment_bytes: 1 << 30,
                message_bytes_max: 64 << 10,
                write_buffer_bytes_max: 96 << 10,
                ..small_config()
            };
            let log = open(&path, cfg).await;
            // Sizes that leave the buffer partly full, so a large batch has to wait
            // while small ones would fit.
            let mut sent = Vec::new();
            let mut tasks = Vec::new();
            for i in 0..60u64 {
                let seed = round * 1000 + i;
                let value_bytes = match (i + round) % 4 {
                    0 => 60 << 10,
                    1 => 40 << 10,
                    _ => 200,
                };
                let b = make_batch(seed, 1, value_bytes, 0);
                sent.push(content_hash(&b));
                let log = log.clone();
                tasks.push(glommio::spawn_local(async move {
                    log.append(bm(&b)).await.unwrap().base_offset
                }));
            }
            let mut offsets = Vec::new();
            for t in tasks {
                offsets.push(t.await);
            }
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "offsets follow arrival order: {offsets:?}"
            );
            let stored: Vec<u64> = read_all(&log)
                .await
                .iter()
                .map(|(_, b)| content_hash(b))
                .collect();
            assert_eq!(stored, sent, "round {round}: stored order is arrival order");
        });
    }
}

#[test]
fn delete_records_moves_the_start_durably_and_retention_respects_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        let cfg = small_config();
        let log = open(&path, cfg.clone()).await;
        for i in 0..100u64 {
            log.append(bm(&make_batch(i, 2, 1000, 1000 + i as i64)))
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        assert!(segments > 2);
        let end = log.end_offset();
        // Beyond the high watermark (here the log end): refused, nothing changes.
        let e = log
            .delete_records_before(end + 1, i64::MAX)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OffsetOutOfRange);
        assert_eq!(log.start_offset(), 0);
        // Into the middle of a batch of a later segment.
        assert_eq!(log.delete_records_before(101, i64::MAX).await.unwrap(), 101);
        assert_eq!(log.start_offset(), 101);
        assert!(
            log.segment_count() < segments,
            "segments below the start deleted"
        );
        assert_eq!(
            log.read(99, 1 << 20, i64::MAX).await.unwrap_err().kind(),
            ErrorKind::OffsetOutOfRange
        );
        let r = log.read(101, 1 << 20, i64::MAX).await.unwrap();
        assert!(!r.is_empty());
        // Lower than the start: nothing changes.
        assert_eq!(log.delete_records_before(50, i64::MAX).await.unwrap(), 101);
        // Two at once: the start and its checkpoint end at the higher one, whatever the
        // order they run in.
        let (l1, l2) = (log.clone(), log.clone());
        let hi = glommio::spawn_local(async move { l1.delete_records_before(120, i64::MAX).await });
        let lo = glommio::spawn_local(async move { l2.delete_records_before(110, i64::MAX).await });
        assert_eq!(hi.await.unwrap(), 120);
        assert!(lo.await.unwrap() >= 110);
        assert_eq!(log.start_offset(), 120);
        log.close().await.unwrap();
        let log = open(&path, cfg.clone()).await;
        assert_eq!(
            log.start_offset(),
            120,
            "the checkpoint holds the higher start"
        );
        // Retention never moves the start back below it.
        log.apply_retention(i64::MAX).await.unwrap();
        assert_eq!(log.start_offset(), 120);
        log.close().await.unwrap();
        let log = open(&path, cfg.clone()).await;
        assert_eq!(log.start_offset(), 120, "the start survives a reopen");
        // -1 means the high watermark the caller gives.
        assert_eq!(log.delete_records_before(-1, i64::MAX).await.unwrap(), end);
        let at = log.append(bm(&make_batch(7, 1, 10, 5000))).await.unwrap();
        assert_eq!(at.base_offset, end);
        log.close().await.unwrap();
        let log = open(&path, cfg).await;
        assert_eq!(log.start_offset(), end);
        assert_eq!(read_all(&log).await.len(), 1);
    });
}

/// A follower's append keeps the leader's offsets and epochs: a batch that does not
/// start at the log end, or carries an older epoch, is refused and changes nothing; a
/// newer epoch enters the leader-epoch history (and survives a reopen), which then
/// answers the truncation question; the high-watermark checkpoint survives a reopen.
#[test]
fn replica_appends_keep_the_leaders_offsets_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    run(move || async move {
        // A leader's batch: base offset and partition leader epoch set by the leader.
        let leader_batch = |seed: u64, base: i64, epoch: i32| {
            let mut b = make_batch(seed, 3, 100, 1_000);
            batch::set_base_offset(&mut b, base);
            batch::set_leader_epoch(&mut b, epoch);
            bm(&b)
        };
        let log = open(&path, small_config()).await;
        assert_eq!(log.high_watermark_checkpoint().await.unwrap(), None);
        let at = log.append_replica(leader_batch(1, 0, 3)).await.unwrap();
        assert_eq!((at.base_offset, at.last_offset), (0, 2));
        log.append_replica(leader_batch(2, 3, 3)).await.unwrap();
        // A gap, an overlap and an older epoch are refused; the log is unchanged.
        for (base, epoch) in [(7, 3), (3, 3), (6, 2)] {
            let e = log
                .append_replica(leader_batch(9, base, epoch))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Diverged, "base {base} epoch {epoch}");
        }
        assert_eq!(log.end_offset(), 6);
        // A newer epoch starts where its first batch does.
        log.append_replica(leader_batch(3, 6, 5)).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![(3, 0), (5, 6)]);
        assert_eq!(log.end_offset_for_epoch(5), (5, 9));
        assert_eq!(
            log.end_offset_for_epoch(4),
            (3, 6),
            "epoch 4: ends where 5 began"
        );
        assert_eq!(log.end_offset_for_epoch(6), (-1, -1));
        log.checkpoint_high_watermark(6).await.unwrap();
        // The stored batches are the leader's, byte for byte.
        let stored = read_all(&log).await;
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[2].0, 6);
        assert_eq!(batch::parse_header(&stored[2].1).unwrap().leader_epoch, 5);
        log.close().await.unwrap();

        let log = open(&path, small_config()).await;
        assert_eq!(
            log.end_offset(),
            9,
            "recovery accepts the replicated epochs"
        );
        assert_eq!(log.leader_epochs(), vec![(3, 0), (5, 6)]);
        assert_eq!(log.high_watermark_checkpoint().await.unwrap(), Some(6));
        log.close().await.unwrap();
    });
}

#[test]
fn end_offset_for_epoch_answers_as_kafka_does() {
    use ringmq_storage::end_offset_for_epoch as end;
    let h = [(0, 0), (2, 100), (5, 250)];
    assert_eq!(end(&h, 5, 300), (5, 300), "latest epoch: the log end");
    assert_eq!(end(&h, 0, 300), (0, 100));
    assert_eq!(
        end(&h, 1, 300),
        (0, 100),
        "no epoch 1: the floor, ending where 2 began"
    );
    assert_eq!(end(&h, 3, 300), (2, 250));
    assert_eq!(end(&h, 6, 300), (-1, -1), "newer than the latest");
    assert_eq!(end(&h, -1, 300), (-1, -1));
    assert_eq!(
        end(&[(3, 40)], 1, 50),
        (1, 40),
        "older than the whole history"
    );
    assert_eq!(end(&[], 0, 0), (-1, -1));
}
