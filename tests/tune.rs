//! `ringmq tune` as a user runs it, against a fake /proc and /sys tree (`--root`).

use std::path::Path;
use std::process::{Command, Output};

fn ringmq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small machine: a few sysctls, THP, one NIC with two queues.
fn fake(root: &Path) {
    let w = |p: &str, v: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{v}\n")).unwrap();
    };
    w("proc/sys/vm/swappiness", "60");
    w("proc/sys/net/core/somaxconn", "128");
    w("proc/sys/net/ipv4/tcp_rmem", "4096 87380 6291456");
    w(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never",
    );
    w("sys/devices/system/cpu/online", "0-3");
    w(
        "proc/interrupts",
        " 30: 0 0 PCI-MSIX eth0-TxRx-0\n 31: 0 0 PCI-MSIX eth0-TxRx-1\n 32: 0 0 PCI-MSIX eth0-lsc\n",
    );
    for irq in [30, 31, 32] {
        w(&format!("proc/irq/{irq}/smp_affinity_list"), "0-3");
    }
    for q in [0, 1] {
        w(&format!("sys/class/net/eth0/queues/rx-{q}/rps_cpus"), "0");
        w(&format!("sys/class/net/eth0/queues/tx-{q}/xps_cpus"), "0");
    }
    std::fs::create_dir_all(root.join("sys/class/net/eth0/device")).unwrap();
}

#[test]
fn check_apply_check_revert_check_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    fake(dir.path());
    let base = [
        "tune",
        "--root",
        root,
        "--profile",
        "throughput",
        "--shards",
        "2",
    ];
    let run = |cmd: &[&str]| ringmq(&[&base[..], cmd].concat());

    let check = run(&["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let t = text(&check);
    for want in [
        "SETTING",
        "vm.swappiness",
        "DIFFERS",
        "absent",
        "cpu.governor",
    ] {
        assert!(t.contains(want), "check prints {want}:\n{t}");
    }

    let dry = run(&["apply", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would set"), "{}", text(&dry));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("proc/sys/vm/swappiness")).unwrap(),
        "60\n"
    );

    let apply = run(&["apply"]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert!(text(&apply).contains("revert"), "{}", text(&apply));
    // Queue 0 on shard 0's core, queue 1 on shard 1's; the link-status vector untouched.
    let affinity = |irq| {
        std::fs::read_to_string(dir.path().join(format!("proc/irq/{irq}/smp_affinity_list")))
            .unwrap()
    };
    assert_eq!(
        (affinity(30), affinity(31), affinity(32)),
        ("0\n".into(), "1\n".into(), "0-3\n".into())
    );
    let check = run(&["check", "--json"]);
    for line in String::from_utf8_lossy(&check.stdout).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            !["differs", "error"].contains(&row["status"].as_str().unwrap()),
            "{row}"
        );
    }
    assert!(check.status.success(), "{}", text(&check));

    let again = run(&["apply"]);
    assert!(
        text(&again).contains("nothing to change"),
        "{}",
        text(&again)
    );

    let revert = run(&["revert"]);
    assert!(revert.status.success(), "{}", text(&revert));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("proc/sys/vm/swappiness")).unwrap(),
        "60\n"
    );
    assert_eq!(affinity(30), "0-3\n");
    assert_eq!(run(&["check"]).status.code(), Some(1));
    assert!(text(&run(&["revert"])).contains("nothing to revert"));
}

#[test]
fn clear_errors_for_bad_arguments_and_missing_privileges() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let o = ringmq(&["tune", "--root", root, "--profile", "fastest", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("throughput, latency or balanced"),
        "{}",
        text(&o)
    );
    let o = ringmq(&["tune", "--root", "/no/such/dir", "check"]);
    assert!(text(&o).contains("not a directory"), "{}", text(&o));
    std::fs::create_dir_all(dir.path().join("sys/devices/system/cpu")).unwrap();
    std::fs::write(dir.path().join("sys/devices/system/cpu/online"), "0-3\n").unwrap();
    let o = ringmq(&["tune", "--root", root, "--shards", "64", "check"]);
    assert!(text(&o).contains("only 4 cores are online"), "{}", text(&o));
    let o = ringmq(&["tune", "--root", root, "--cpus", "2,7", "check"]);
    assert!(
        text(&o).contains("core 7, which is not online"),
        "{}",
        text(&o)
    );
    // Applying to the real machine as an unprivileged user is refused with a reason.
    if Path::new("/usr/bin/setpriv").exists() && unsafe { libc::geteuid() } == 0 {
        let o = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ringmq"))
            .args(["tune", "apply"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(text(&o).contains("needs root"), "{}", text(&o));
    }
}
