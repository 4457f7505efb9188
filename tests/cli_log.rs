//! `ringmq log DIR`, run as a user would.

use std::process::Command;

use bytes::BytesMut;
use ringmq_storage::batch::{Record, encode_batch};
use ringmq_storage::{LogConfig, PartitionLog, SegmentCache};

fn ringmq() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    // A broker these tests start must not take the admin listener's default port.
    c.env("RINGMQ_ADMIN_LISTEN", "off");
    c
}

#[test]
fn log_reports_offsets_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders-0");
    let p = path.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let log = PartitionLog::open(&p, LogConfig::default(), SegmentCache::new(4))
                .await
                .unwrap();
            for i in 0..10 {
                let r = Record {
                    value: Some(vec![i; 100]),
                    timestamp_ms: 1,
                    ..Default::default()
                };
                let b = encode_batch(&vec![r; 3]);
                log.append(BytesMut::from(&b[..])).await.unwrap();
            }
            // No close: the tool must recover an unclean log.
        })
        .unwrap()
        .join()
        .unwrap();
    // Tear the tail: recovery must cut it and say so.
    let seg = path.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let data_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[data_end - 5] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let out = ringmq().arg("log").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("start offset    0"), "{text}");
    assert!(
        text.contains("end offset      27"),
        "the torn last batch is cut: {text}"
    );
    assert!(text.contains("clean shutdown  false"), "{text}");
    assert!(text.contains("fails its CRC32C"), "{text}");
    // The tool closed the log cleanly: a second look scans nothing.
    let text = String::from_utf8(ringmq().arg("log").arg(&path).output().unwrap().stdout).unwrap();
    assert!(
        text.contains("clean shutdown  true") && text.contains("end offset      27"),
        "{text}"
    );
}

#[test]
fn log_on_a_missing_directory_is_a_clear_error() {
    let out = ringmq()
        .args(["log", "/nonexistent/ringmq/dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: /nonexistent/ringmq/dir is not a directory"),
        "{err}"
    );
}

#[test]
fn help_lists_subcommands() {
    let out = ringmq().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("log"));
}

#[test]
fn serve_refuses_bad_settings_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--shards".into(), "999".into()],
            "--shards 999: must be 1 to",
        ),
        (vec!["--cpus".into(), "0,77".into()], "names core 77"),
        (
            vec!["--flush".into(), "sometimes".into()],
            "bad flush policy",
        ),
        (
            vec!["--segment-bytes".into(), "10".into()],
            "segment_bytes 10 must be between",
        ),
        (
            vec!["--kafka-listen".into(), "nowhere".into()],
            "expected HOST:PORT or off",
        ),
        (
            vec!["--default-partitions".into(), "0".into()],
            "--default-partitions 0: must be 1 to",
        ),
    ];
    for (args, want) in cases {
        let out = ringmq()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A config file with an unknown key, and one whose value a flag overrides.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "sharts = 2\n").unwrap();
    let out = ringmq()
        .arg("serve")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `sharts`"));
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, "shards = 999\n").unwrap();
    let out = ringmq()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--cpus", "0,88"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("names core 88"),
        "the flag wins over the file: {err}"
    );
}
