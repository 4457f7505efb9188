//! NIC-queue affinity: which core each receive queue's interrupt goes to, and the RPS and
//! XPS masks that go with it.
//!
//! Thread-per-core wants a connection's packets to arrive on the core whose shard serves
//! it: the broker steers each new connection to the shard on the core that processed its
//! SYN (see `ringmq_net::steer`), so a queue pinned to a shard's core keeps all of that
//! connection's receive work there. The plan:
//!
//! - at least as many queues as shards: queue `i` goes to the core of shard `i mod shards`
//!   (every shard gets one queue, or an even share); RPS stays off, since the interrupt
//!   already lands on a shard's core;
//! - fewer queues than shards: the shards are cut into as many contiguous groups as there
//!   are queues, sizes differing by at most one; a queue's interrupt may go to any core of
//!   its group, and RPS spreads its flows over the group's cores by hash, so each flow
//!   still has one core;
//! - transmit queues the same way (XPS), so each shard's core sends on queues of its own
//!   and cores do not contend for one transmit queue.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::tree::Tree;

/// The cores of each of `queues` queues, given the cores that run shards (in shard order).
pub fn plan(queues: usize, shard_cpus: &[usize]) -> Vec<BTreeSet<usize>> {
    let shards = shard_cpus.len();
    if queues == 0 || shards == 0 {
        return vec![BTreeSet::new(); queues];
    }
    if queues >= shards {
        return (0..queues)
            .map(|q| BTreeSet::from([shard_cpus[q % shards]]))
            .collect();
    }
    let (base, extra) = (shards / queues, shards % queues);
    let mut start = 0;
    (0..queues)
        .map(|q| {
            let len = base + usize::from(q < extra);
            let group = shard_cpus[start..start + len].iter().copied().collect();
            start += len;
            group
        })
        .collect()
}

/// A network interface backed by a device, with its queues and the interrupts of its
/// receive queues as `/sys/class/net` and `/proc/interrupts` show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// `queues/rx-N` directories, in queue order.
    pub rx_queues: Vec<PathBuf>,
    /// `queues/tx-N` directories, in queue order.
    pub tx_queues: Vec<PathBuf>,
    /// Interrupt numbers of the receive (or combined) queues, in queue order.
    pub rx_irqs: Vec<u32>,
}

/// Every interface under `sys/class/net` that has a device (so not `lo`, bridges or
/// other virtual interfaces), sorted by name.
pub fn discover(tree: &Tree) -> Vec<Nic> {
    let names = interrupt_names(tree);
    let mut nics = Vec::new();
    for dir in tree.glob("/sys/class/net/*") {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let device = dir.join("device");
        if !device.exists() {
            continue;
        }
        let queues = |prefix: &str| {
            let mut q: Vec<(usize, PathBuf)> = std::fs::read_dir(dir.join("queues"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect();
            q.sort();
            q.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
        };
        // The device's MSI interrupts; a virtio NIC's are on its parent PCI device.
        let mut irqs: Vec<u32> = [device.join("msi_irqs"), device.join("../msi_irqs")]
            .iter()
            .find_map(|d| {
                let v: Vec<u32> = std::fs::read_dir(d)
                    .ok()?
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect();
                (!v.is_empty()).then_some(v)
            })
            .unwrap_or_default();
        if irqs.is_empty() {
            // Drivers that name their vectors after the interface: eth0-TxRx-0, ...
            irqs = names
                .iter()
                .filter(|(_, n)| n.starts_with(&format!("{name}-")))
                .map(|(irq, _)| *irq)
                .collect();
        }
        let mut rx: Vec<(u64, u32)> = irqs
            .iter()
            .filter_map(|irq| {
                let n = names.iter().find(|(i, _)| i == irq)?.1.as_str();
                is_receive_queue(n).then(|| (queue_number(n).unwrap_or(u64::MAX), *irq))
            })
            .collect();
        rx.sort();
        nics.push(Nic {
            name,
            rx_queues: queues("rx-"),
            tx_queues: queues("tx-"),
            rx_irqs: rx.into_iter().map(|(_, irq)| irq).collect(),
        });
    }
    nics
}

/// Interrupt numbers and their names (the last column) from `/proc/interrupts`.
fn interrupt_names(tree: &Tree) -> Vec<(u32, String)> {
    let text = tree.read("/proc/interrupts").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (irq, rest) = l.trim_start().split_once(':')?;
            let irq = irq.parse().ok()?;
            Some((irq, rest.split_whitespace().last()?.to_string()))
        })
        .collect()
}

/// Whether an interrupt name is a receive (or combined receive/transmit) queue's:
/// `virtio0-input.0`, `eth0-TxRx-3` (ixgbe, i40e), `eth0-Tx-Rx-0` (ENA), `eth0-rxtx-0`
/// (vmxnet3), `mlx5_comp2@pci:...`, `eth0-rx-0`, `gve-ntfy-blk0@pci:...`; not
/// `virtio0-config`, `virtio0-output.0`, `eth0-tx-0`, `mlx5_async0@pci:...`.
pub fn is_receive_queue(name: &str) -> bool {
    let name = name.split('@').next().unwrap_or(name).to_ascii_lowercase();
    let words: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    let queue = [
        "rx", "txrx", "rxtx", "input", "comp", "fp", "queue", "combined", "ntfy",
    ]
    .iter()
    .any(|w| has(w));
    let other = [
        "config", "ctrl", "control", "async", "event", "mgmt", "output",
    ]
    .iter()
    .any(|w| has(w));
    // A transmit-only vector names tx without rx (eth0-tx-0); ENA's Tx-Rx has both.
    let tx_only = has("tx") && !has("rx");
    queue && !other && !tx_only
}

/// The queue number in an interrupt name: its last number (before any `@bus` suffix).
fn queue_number(name: &str) -> Option<u64> {
    let name = name.split('@').next().unwrap_or(name);
    let end = name.rfind(|c: char| c.is_ascii_digit())?;
    let start = name[..=end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    name[start..=end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_queue_names() {
        for n in [
            "virtio0-input.0",
            "eth0-TxRx-3",
            "mlx5_comp2@pci:0000:01:00.0",
            "eth0-Tx-Rx-0",
            "eth0-rxtx-3",
            "gve-ntfy-blk0@pci:0000:00:04.0",
            "eth0-rx-0",
            "i40e-eth0-TxRx-0",
            "virtio3-rx",
        ] {
            assert!(is_receive_queue(n), "{n}");
        }
        for n in [
            "virtio0-config",
            "virtio0-output.0",
            "eth0-tx-0",
            "mlx5_async0@pci:0000:01:00.0",
            "virtio1-req.0",
            "ACPI:Ged",
        ] {
            assert!(!is_receive_queue(n), "{n}");
        }
        assert_eq!(queue_number("mlx5_comp12@pci:0000:01:00.0"), Some(12));
        assert_eq!(queue_number("virtio0-input.7"), Some(7));
        assert_eq!(queue_number("virtio3-rx"), Some(3));
    }

    #[test]
    fn plans() {
        let all = |p: &[BTreeSet<usize>]| p.iter().flatten().copied().collect::<BTreeSet<_>>();
        // More queues than shards: one core each, round robin.
        let p = plan(8, &[0, 1]);
        assert!(p.iter().all(|s| s.len() == 1));
        assert_eq!(all(&p), BTreeSet::from([0, 1]));
        // Fewer: contiguous groups.
        let p = plan(2, &(0..16).collect::<Vec<_>>());
        assert_eq!(p[0], (0..8).collect());
        assert_eq!(p[1], (8..16).collect());
        let p = plan(3, &[0, 1, 2, 3, 4]);
        assert_eq!(p.iter().map(BTreeSet::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(plan(0, &[0]), Vec::<BTreeSet<usize>>::new());
    }
}
