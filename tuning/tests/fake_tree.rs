//! The tuner against fake `/proc` and `/sys` trees: check → apply → check → revert →
//! check round trips, idempotent apply, absent settings, and the NIC-queue plan for
//! 1, 2, 8 and 32 queues with 1, 2 and 16 shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ringmq_tuning::{Outcome, Profile, Status, Tree, Tuner, cpus, settings};

/// A fake machine: `cpus` cores, one NIC `eth0` (virtio style: its interrupts on the
/// parent device) with `queues` receive and transmit queues, a virtio disk, cpufreq and
/// idle states, and a fake `ethtool` that keeps its state in files.
fn fake_machine(root: &Path, cpus: usize, queues: usize) {
    let w = |p: &str, v: &str| {
        let p = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{v}\n")).unwrap();
    };
    // Every sysctl the profiles name, with a value none of them recommends.
    for s in settings::all() {
        if s.kind == settings::Kind::Sysctl {
            let v = match s.format {
                settings::Format::Words => "4096 87380 6291456",
                _ => "7",
            };
            w(&s.path, v);
        }
    }
    w(
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "always [madvise] never",
    );
    w(
        "/sys/kernel/mm/transparent_hugepage/defrag",
        "always defer defer+madvise [madvise] never",
    );
    w("/sys/devices/system/cpu/online", &format!("0-{}", cpus - 1));
    for c in 0..cpus {
        w(
            &format!("/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            "powersave",
        );
        // POLL, C1, C1E, C6: only the last two are deep (exit latency above 10 µs).
        for (s, latency) in [0, 2, 20, 133].into_iter().enumerate() {
            let state = format!("/sys/devices/system/cpu/cpu{c}/cpuidle/state{s}");
            w(&format!("{state}/disable"), "0");
            w(&format!("{state}/latency"), &latency.to_string());
        }
    }
    w(
        "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        "kvm-clock",
    );
    w(
        "/sys/devices/system/clocksource/clocksource0/available_clocksource",
        "kvm-clock tsc hpet acpi_pm",
    );
    w("/proc/sys/kernel/random/boot_id", "2f1c0a8e-boot-one");
    w(
        "/sys/block/vda/queue/scheduler",
        "none [mq-deadline] kyber bfq",
    );
    w("/sys/block/vda/queue/read_ahead_kb", "128");
    // eth0: virtio-net, interrupts on the parent PCI device; lo has no device.
    let mut interrupts =
        String::from("           CPU0       CPU1\n  0:   10  0  IO-APIC   2-edge      timer\n");
    let first_irq = 40;
    w("/sys/devices/pci0000:00/0000:00:03.0/msi_irqs/40", "msix");
    interrupts +=
        &format!(" {first_irq}:  0  0  PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n");
    for q in 0..queues {
        let (rx, tx) = (first_irq + 1 + 2 * q, first_irq + 2 + 2 * q);
        for (irq, name) in [
            (rx, format!("virtio2-input.{q}")),
            (tx, format!("virtio2-output.{q}")),
        ] {
            w(
                &format!("/sys/devices/pci0000:00/0000:00:03.0/msi_irqs/{irq}"),
                "msix",
            );
            w(
                &format!("/proc/irq/{irq}/smp_affinity_list"),
                &format!("0-{}", cpus - 1),
            );
            interrupts += &format!(" {irq}:  5  0  PCI-MSIX-0000:00:03.0   {q}-edge      {name}\n");
        }
        w(
            &format!(
                "/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/queues/rx-{q}/rps_cpus"
            ),
            "0",
        );
        w(
            &format!(
                "/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/queues/rx-{q}/rps_flow_cnt"
            ),
            "0",
        );
        w(
            &format!(
                "/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/queues/tx-{q}/xps_cpus"
            ),
            "0",
        );
    }
    w("/proc/interrupts", &interrupts);
    let net = root.join("sys/class/net");
    std::fs::create_dir_all(&net).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
        net.join("eth0"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../..",
        root.join("sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/device"),
    )
    .unwrap();
    w("/sys/devices/virtual/net/lo/queues/rx-0/rps_cpus", "0");
    w("/sys/devices/virtual/net/lo/queues/rx-0/rps_flow_cnt", "0");
    std::os::unix::fs::symlink("../../devices/virtual/net/lo", net.join("lo")).unwrap();
    w(
        "/proc/self/limits",
        "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\nMax locked memory         8388608              8388608              bytes",
    );
    // ethtool: `-g`/`-c` print the state files, `-G`/`-C` update them.
    let state = root.join("var/fake-ethtool");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ring"), "rx 256 tx 256\n").unwrap();
    std::fs::write(
        state.join("coalesce"),
        "adaptive-rx off adaptive-tx off rx-usecs 8 tx-usecs 8\n",
    )
    .unwrap();
    let script = format!(
        r#"#!/bin/sh
S={state}
case "$1" in
  -g) set -- $(cat $S/ring)
      printf 'Ring parameters for eth0:\nPre-set maximums:\nRX:\t\t4096\nRX Mini:\tn/a\nTX:\t\t4096\nCurrent hardware settings:\nRX:\t\t%s\nRX Mini:\tn/a\nTX:\t\t%s\n' "$2" "$4" ;;
  -G) shift 2; echo "$@" > $S/ring ;;
  -c) set -- $(cat $S/coalesce)
      printf 'Coalesce parameters for eth0:\nAdaptive RX: %s  TX: %s\nrx-usecs: %s\nrx-frames: n/a\ntx-usecs: %s\ntx-frames: n/a\n' "$2" "$4" "$6" "$8" ;;
  -C) shift 2
      set -- $(cat $S/coalesce) "$@"
      python3 - "$S/coalesce" "$@" <<'PY'
import sys
path, args = sys.argv[1], sys.argv[2:]
keys = dict(zip(args[0:8:2], args[1:8:2]))
keys.update(dict(zip(args[8::2], args[9::2])))
open(path, "w").write(" ".join(f"{{k}} {{keys[k]}}" for k in ["adaptive-rx", "adaptive-tx", "rx-usecs", "tx-usecs"]) + "\n")
PY
      ;;
  *) echo "fake ethtool: $*" >&2; exit 1 ;;
esac
"#,
        state = state.display()
    );
    let eth = root.join("usr/sbin/ethtool");
    std::fs::create_dir_all(eth.parent().unwrap()).unwrap();
    std::fs::write(&eth, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&eth, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every regular file under `root` with its content (symlinks not followed).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                // A selector file ("none [mq-deadline] kyber") as the value selected: the
                // kernel shows the list, a fake file only what was written.
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let text = match (text.find('['), text.find(']')) {
                    (Some(a), Some(b)) if a < b => text[a + 1..b].to_string(),
                    _ => text.trim().to_string(),
                };
                out.insert(e.path(), text);
            }
        }
    }
    out
}

fn tuner(root: &Path, profile: Profile, shards: usize) -> Tuner {
    Tuner::new(Tree::new(root), profile, (0..shards).collect(), None)
}

fn differing(rows: &[ringmq_tuning::Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| !r.status.matches())
        .map(|r| {
            format!(
                "{} {} {} -> {} ({:?}) {}",
                r.id, r.target, r.current, r.recommended, r.status, r.note
            )
        })
        .collect()
}

#[test]
fn check_apply_check_revert_check_round_trips_for_every_profile() {
    for profile in Profile::ALL {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fake_machine(&root, 4, 2);
        let before = snapshot(&root);
        let t = tuner(&root, profile, 4);
        let first = t.check();
        assert!(
            !differing(&first).is_empty(),
            "{profile}: the fake machine starts untuned"
        );
        let changes = t.apply(false).unwrap();
        assert!(!changes.is_empty());
        for c in &changes {
            assert_eq!(c.outcome, Outcome::Done, "{profile}: {c:?}");
        }
        let after = t.check();
        assert_eq!(
            differing(&after),
            Vec::<String>::new(),
            "{profile}: everything matches after apply"
        );
        // Applying twice is the same as once: nothing to change, the same recorded state,
        // the same files.
        let state = std::fs::read_to_string(root.join("var/lib/ringmq/tune-state.json")).unwrap();
        let tuned = snapshot(&root);
        assert!(
            t.apply(false).unwrap().is_empty(),
            "{profile}: a second apply changes nothing"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("var/lib/ringmq/tune-state.json")).unwrap(),
            state
        );
        assert_eq!(snapshot(&root), tuned);
        // Revert puts every file back as it was and forgets the state.
        let restored = t.revert(false).unwrap().expect("a state to revert");
        assert!(
            restored.iter().all(|c| c.outcome == Outcome::Done),
            "{restored:?}"
        );
        assert_eq!(
            snapshot(&root),
            before,
            "{profile}: revert restores every file"
        );
        let last = t.check();
        let view = |rows: &[ringmq_tuning::Row]| {
            rows.iter()
                .map(|r| (r.id.clone(), r.target.clone(), r.current.clone(), r.status))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&last), view(&first));
        assert!(t.revert(false).unwrap().is_none(), "nothing left to revert");
    }
}

#[test]
fn dry_run_changes_nothing_and_says_what_it_would_do() {
    let dir = tempfile::tempdir().unwrap();
    fake_machine(dir.path(), 2, 1);
    let before = snapshot(dir.path());
    let changes = tuner(dir.path(), Profile::Latency, 2).apply(true).unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.id == "vm.swappiness" && c.from == "7" && c.to == "1")
    );
    assert!(
        changes
            .iter()
            .all(|c| matches!(c.outcome, Outcome::WouldDo | Outcome::Manual(_)))
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn settings_the_machine_lacks_are_reported_not_fatal() {
    // A bare VM: a few sysctls, no cpufreq, no NIC with a device, no ethtool.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("proc/sys/vm")).unwrap();
    std::fs::write(root.join("proc/sys/vm/swappiness"), "60\n").unwrap();
    let t = tuner(root, Profile::Throughput, 2);
    let rows = t.check();
    let find = |id: &str| rows.iter().find(|r| r.id == id).unwrap();
    assert_eq!(find("vm.swappiness").status, Status::Differs);
    for id in [
        "cpu.governor",
        "nic.irq_affinity",
        "nic.ring",
        "net.core.busy_poll",
    ] {
        assert_eq!(find(id).status, Status::Absent, "{id}");
    }
    assert!(find("nic.ring").note.contains("no network interface"));
    let changes = t.apply(false).unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.id == "vm.swappiness" && c.outcome == Outcome::Done)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("proc/sys/vm/swappiness")).unwrap(),
        "1\n"
    );
}

#[test]
fn a_running_irqbalance_is_reported_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    fake_machine(dir.path(), 2, 2);
    std::fs::create_dir_all(dir.path().join("proc/812")).unwrap();
    std::fs::write(dir.path().join("proc/812/comm"), "irqbalance\n").unwrap();
    let t = tuner(dir.path(), Profile::Throughput, 2);
    let row = t
        .check()
        .into_iter()
        .find(|r| r.id == "irqbalance")
        .unwrap();
    assert_eq!(
        (row.status, row.current.as_str()),
        (Status::Differs, "running")
    );
    assert!(row.note.contains("systemctl disable --now irqbalance"));
    let c = t
        .apply(false)
        .unwrap()
        .into_iter()
        .find(|c| c.id == "irqbalance")
        .unwrap();
    assert!(matches!(c.outcome, Outcome::Manual(_)));
}

fn read_set(root: &Path, p: &str, list: bool) -> BTreeSet<usize> {
    let t = std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap();
    if list {
        cpus::parse_list(&t)
    } else {
        cpus::parse_mask(&t)
    }
    .unwrap()
}

#[test]
#[allow(clippy::needless_range_loop)] // queue q's files sit beside irq_sets[q]
fn receive_queues_are_pinned_to_shard_cores() {
    for queues in [1, 2, 8, 32] {
        for shards in [1, 2, 16] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            fake_machine(root, 32, queues);
            // Shards on every other core, so a core without a shard never gets a queue.
            let shard_cpus: Vec<usize> = (0..shards).map(|s| 2 * s).collect();
            let t = Tuner::new(Tree::new(root), Profile::Latency, shard_cpus.clone(), None);
            let failed: Vec<_> = t
                .apply(false)
                .unwrap()
                .into_iter()
                .filter(|c| c.outcome != Outcome::Done && !matches!(c.outcome, Outcome::Manual(_)))
                .collect();
            assert!(failed.is_empty(), "{failed:?}");
            let all: BTreeSet<usize> = shard_cpus.iter().copied().collect();
            let irq_sets: Vec<BTreeSet<usize>> = (0..queues)
                .map(|q| {
                    read_set(
                        root,
                        &format!("/proc/irq/{}/smp_affinity_list", 41 + 2 * q),
                        true,
                    )
                })
                .collect();
            // Transmit-queue interrupts are left alone.
            for q in 0..queues {
                assert_eq!(
                    read_set(
                        root,
                        &format!("/proc/irq/{}/smp_affinity_list", 42 + 2 * q),
                        true
                    ),
                    (0..32).collect()
                );
            }
            let ctx = format!("{queues} queues, {shards} shards");
            let union: BTreeSet<usize> = irq_sets.iter().flatten().copied().collect();
            assert!(
                union.is_subset(&all),
                "{ctx}: only shard cores take interrupts"
            );
            let rps = |q: usize| {
                read_set(
                    root,
                    &format!("/sys/class/net/eth0/queues/rx-{q}/rps_cpus"),
                    false,
                )
            };
            let xps = |q: usize| {
                read_set(
                    root,
                    &format!("/sys/class/net/eth0/queues/tx-{q}/xps_cpus"),
                    false,
                )
            };
            if queues >= shards {
                // One core per queue; every shard gets floor or ceil of queues/shards.
                assert!(irq_sets.iter().all(|s| s.len() == 1), "{ctx}");
                assert_eq!(union, all, "{ctx}: every shard gets a queue");
                let mut per_core = BTreeMap::new();
                for s in &irq_sets {
                    *per_core.entry(*s.first().unwrap()).or_insert(0) += 1;
                }
                let (lo, hi) = (
                    per_core.values().min().unwrap(),
                    per_core.values().max().unwrap(),
                );
                assert!(hi - lo <= 1, "{ctx}: even spread {per_core:?}");
                for q in 0..queues {
                    assert!(rps(q).is_empty(), "{ctx}: RPS off");
                    assert_eq!(xps(q), irq_sets[q], "{ctx}: XPS matches");
                }
            } else {
                // Disjoint groups of shard cores covering all of them, sizes within one.
                assert_eq!(union, all, "{ctx}");
                let total: usize = irq_sets.iter().map(BTreeSet::len).sum();
                assert_eq!(total, shards, "{ctx}: groups are disjoint");
                let (lo, hi) = (
                    irq_sets.iter().map(BTreeSet::len).min().unwrap(),
                    irq_sets.iter().map(BTreeSet::len).max().unwrap(),
                );
                assert!(hi - lo <= 1, "{ctx}");
                for q in 0..queues {
                    let expect = if irq_sets[q].len() > 1 {
                        irq_sets[q].clone()
                    } else {
                        BTreeSet::new()
                    };
                    assert_eq!(rps(q), expect, "{ctx}: RPS spreads over the queue's group");
                    assert_eq!(xps(q), irq_sets[q], "{ctx}: XPS matches");
                }
            }
        }
    }
}

#[test]
fn ring_sizes_and_coalescing_go_through_ethtool_under_the_root() {
    let dir = tempfile::tempdir().unwrap();
    fake_machine(dir.path(), 2, 1);
    let state = dir.path().join("var/fake-ethtool");
    let t = tuner(dir.path(), Profile::Throughput, 2);
    let row = t.check().into_iter().find(|r| r.id == "nic.ring").unwrap();
    assert_eq!(
        (row.current.as_str(), row.status),
        ("rx 256 tx 256", Status::Differs)
    );
    t.apply(false).unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("ring")).unwrap(),
        "rx 4096 tx 4096\n"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("coalesce")).unwrap(),
        "adaptive-rx on adaptive-tx on rx-usecs 8 tx-usecs 8\n"
    );
    // The latency profile on top keeps the values found first for revert.
    tuner(dir.path(), Profile::Latency, 2).apply(false).unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("coalesce")).unwrap(),
        "adaptive-rx off adaptive-tx on rx-usecs 0 tx-usecs 0\n"
    );
    tuner(dir.path(), Profile::Latency, 2)
        .revert(false)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("ring")).unwrap(),
        "rx 256 tx 256\n"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("coalesce")).unwrap(),
        "adaptive-rx off adaptive-tx off rx-usecs 8 tx-usecs 8\n"
    );
}

#[test]
fn the_plain_files_agree_with_settings_toml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for p in Profile::ALL {
        let text =
            std::fs::read_to_string(dir.join(format!("sysctl.d/60-ringmq-{p}.conf"))).unwrap();
        let mut file: BTreeMap<String, String> = BTreeMap::new();
        for l in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{p}: {l:?}"));
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                file.insert(k.trim().to_string(), v).is_none(),
                "{p}: {k} set twice"
            );
        }
        let want: BTreeMap<String, String> = settings::all()
            .iter()
            .filter(|s| s.kind == settings::Kind::Sysctl)
            .filter_map(|s| {
                Some((
                    s.id.clone(),
                    s.value(p)?.split_whitespace().collect::<Vec<_>>().join(" "),
                ))
            })
            .collect();
        assert_eq!(
            file, want,
            "sysctl.d/60-ringmq-{p}.conf against settings.toml"
        );
    }
    let limits = std::fs::read_to_string(dir.join("limits.d/90-ringmq.conf")).unwrap();
    for s in settings::all()
        .iter()
        .filter(|s| s.kind == settings::Kind::Limit)
    {
        let item = s.id.trim_start_matches("limits.");
        for p in Profile::ALL {
            let v = s.value(p).unwrap();
            for kind in ["soft", "hard"] {
                assert!(
                    limits.lines().any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() == 4
                            && !f[0].starts_with('#')
                            && f[1] == kind
                            && f[2] == item
                            && f[3] == v
                    }),
                    "limits.d/90-ringmq.conf sets {kind} {item} {v}"
                );
            }
        }
    }
    // Every setting carries its explanation.
    for s in settings::all() {
        for (what, text) in [
            ("affects", &s.affects),
            ("what", &s.what),
            ("why", &s.why),
            ("source", &s.source),
        ] {
            assert!(!text.trim().is_empty(), "{}: {what} is empty", s.id);
        }
    }
}

#[test]
fn only_deep_idle_states_and_real_nics_are_touched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_machine(root, 2, 1);
    let t = tuner(root, Profile::Latency, 2);
    t.apply(false).unwrap();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    for c in 0..2 {
        let state = |s| {
            read(&format!(
                "sys/devices/system/cpu/cpu{c}/cpuidle/state{s}/disable"
            ))
        };
        assert_eq!(
            [state(0), state(1), state(2), state(3)],
            ["0\n", "0\n", "1\n", "1\n"]
        );
    }
    // The balanced profile sets RFS on eth0 only, not on lo.
    tuner(root, Profile::Balanced, 2).apply(false).unwrap();
    assert_eq!(
        read("sys/class/net/eth0/queues/rx-0/rps_flow_cnt"),
        "4096\n"
    );
    assert_eq!(
        read("sys/devices/virtual/net/lo/queues/rx-0/rps_flow_cnt"),
        "0\n"
    );
}

#[test]
fn a_value_the_kernel_does_not_offer_is_absent_not_forced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_machine(root, 2, 1);
    std::fs::write(
        root.join("sys/devices/system/clocksource/clocksource0/available_clocksource"),
        "kvm-clock acpi_pm\n",
    )
    .unwrap();
    std::fs::write(
        root.join("sys/block/vda/queue/scheduler"),
        "[mq-deadline] kyber\n",
    )
    .unwrap();
    let t = tuner(root, Profile::Latency, 2);
    let rows = t.check();
    for id in ["clocksource", "block.vd.scheduler"] {
        let r = rows.iter().find(|r| r.id == id).unwrap();
        assert_eq!(r.status, Status::Absent, "{id}: {r:?}");
        assert!(r.note.contains("not offered here"), "{id}: {}", r.note);
    }
    assert!(
        t.apply(false)
            .unwrap()
            .iter()
            .all(|c| c.id != "clocksource")
    );
}

#[test]
fn dirty_limits_in_bytes_are_restored_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_machine(root, 2, 1);
    // This machine limits dirty memory in bytes; the ratios read 0.
    let vm = root.join("proc/sys/vm");
    std::fs::write(vm.join("dirty_ratio"), "0\n").unwrap();
    std::fs::write(vm.join("dirty_bytes"), "268435456\n").unwrap();
    std::fs::write(vm.join("dirty_background_ratio"), "0\n").unwrap();
    std::fs::write(vm.join("dirty_background_bytes"), "67108864\n").unwrap();
    let t = tuner(root, Profile::Throughput, 2);
    t.apply(false).unwrap();
    assert_eq!(
        std::fs::read_to_string(vm.join("dirty_ratio")).unwrap(),
        "40\n"
    );
    // (The kernel would zero dirty_bytes here; the fake tree does not.)
    std::fs::write(vm.join("dirty_bytes"), "0\n").unwrap();
    std::fs::write(vm.join("dirty_background_bytes"), "0\n").unwrap();
    t.revert(false).unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(vm.join("dirty_bytes")).unwrap(),
        "268435456\n"
    );
    assert_eq!(
        std::fs::read_to_string(vm.join("dirty_background_bytes")).unwrap(),
        "67108864\n"
    );
}

#[test]
fn failed_changes_are_not_recorded_and_a_reboot_voids_kernel_records() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_machine(root, 2, 1);
    // A driver that refuses new ring sizes (`ethtool -G` fails; `-g` still reports).
    let eth = root.join("usr/sbin/ethtool");
    std::fs::rename(&eth, root.join("usr/sbin/ethtool.real")).unwrap();
    std::fs::write(
        &eth,
        format!(
            "#!/bin/sh\n[ \"$1\" = -G ] && {{ echo 'netlink error: Operation not supported' >&2; exit 76; }}\nexec {} \"$@\"\n",
            root.join("usr/sbin/ethtool.real").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&eth, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = tuner(root, Profile::Throughput, 2);
    let changes = t.apply(false).unwrap();
    let ring = changes.iter().find(|c| c.id == "nic.ring").unwrap();
    assert!(
        matches!(&ring.outcome, Outcome::Failed(m) if m.contains("not supported")),
        "{ring:?}"
    );
    let state = t.load_state().unwrap().unwrap();
    assert!(
        !state
            .saved
            .iter()
            .any(|s| matches!(s, ringmq_tuning::Saved::Ethtool { command, .. } if command == "-G")),
        "a failed change is not recorded: {state:?}"
    );
    assert!(
        state
            .saved
            .iter()
            .any(|s| matches!(s, ringmq_tuning::Saved::Ethtool { command, .. } if command == "-C")),
        "the coalescing that worked is"
    );
    // After a reboot the kernel values are back to their defaults; revert leaves them.
    std::fs::write(
        root.join("proc/sys/kernel/random/boot_id"),
        "9c4d-boot-two\n",
    )
    .unwrap();
    std::fs::write(root.join("proc/sys/vm/swappiness"), "60\n").unwrap();
    let out = t.revert(false).unwrap().unwrap();
    assert!(
        out.iter()
            .any(|c| matches!(&c.outcome, Outcome::Manual(m) if m.contains("reboot")))
    );
    assert_eq!(
        std::fs::read_to_string(root.join("proc/sys/vm/swappiness")).unwrap(),
        "60\n"
    );
    assert!(
        !root.join("etc/security/limits.d/90-ringmq.conf").exists(),
        "the limits file is still removed"
    );
}
