//! NIC ring sizes and interrupt coalescing through the `ethtool` program found under the
//! tree's root (a fake one in tests). Its output is parsed as ethtool 5 and 6 print it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::tree::Tree;

/// The `ethtool` program under the root, if installed.
pub fn find(tree: &Tree) -> Option<PathBuf> {
    ["/usr/sbin/ethtool", "/sbin/ethtool", "/usr/bin/ethtool"]
        .iter()
        .map(|p| tree.path(p))
        .find(|p| p.is_file())
}

/// Runs ethtool with `args`; its standard output, or what went wrong.
pub fn run(ethtool: &PathBuf, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ethtool)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", ethtool.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        Err(if err.is_empty() {
            format!("ethtool {} failed ({})", args.join(" "), out.status)
        } else {
            err.lines().last().unwrap_or(err).to_string()
        })
    }
}

/// Ring sizes from `ethtool -g`: (maximum, current) for RX and TX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rings {
    /// Pre-set maximum RX ring size.
    pub max_rx: u32,
    /// Pre-set maximum TX ring size.
    pub max_tx: u32,
    /// Current RX ring size.
    pub rx: u32,
    /// Current TX ring size.
    pub tx: u32,
}

/// Parses `ethtool -g` output.
pub fn parse_rings(out: &str) -> Option<Rings> {
    let (mut max, mut cur) = ((None, None), (None, None));
    let mut in_max = false;
    for line in out.lines() {
        let l = line.trim();
        if l.starts_with("Pre-set maximums") {
            in_max = true;
        } else if l.starts_with("Current hardware settings") {
            in_max = false;
        } else if let Some((k, v)) = l.split_once(':') {
            let v: Option<u32> = v.trim().parse().ok();
            let slot = if in_max { &mut max } else { &mut cur };
            match k.trim() {
                "RX" => slot.0 = v,
                "TX" => slot.1 = v,
                _ => {}
            }
        }
    }
    Some(Rings {
        max_rx: max.0?,
        max_tx: max.1?,
        rx: cur.0?,
        tx: cur.1?,
    })
}

/// The coalescing keys the tuner sets, as `ethtool -C` names them.
pub const COALESCE_KEYS: [&str; 6] = [
    "adaptive-rx",
    "adaptive-tx",
    "rx-usecs",
    "tx-usecs",
    "rx-frames",
    "tx-frames",
];

/// Parses `ethtool -c` output into `-C` keys and values; keys the NIC lacks (`n/a`) are
/// left out.
pub fn parse_coalesce(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Adaptive RX:") {
            // "Adaptive RX: on  TX: off"
            // (ethtool 5 and later print n/a for what the NIC lacks.)
            let mut it = rest.split_whitespace();
            if let Some(rx) = it.next().filter(|v| *v != "n/a") {
                m.insert("adaptive-rx".into(), rx.to_string());
            }
            if it.next() == Some("TX:")
                && let Some(tx) = it.next().filter(|v| *v != "n/a")
            {
                m.insert("adaptive-tx".into(), tx.to_string());
            }
        } else if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if COALESCE_KEYS.contains(&k) && v != "n/a" {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    m
}

/// Parses `key value key value ...` as `ethtool -C` takes it.
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if !words.len().is_multiple_of(2) {
        return Err(format!("{s:?}: expected key value pairs"));
    }
    words
        .chunks(2)
        .map(|kv| {
            if COALESCE_KEYS.contains(&kv[0]) {
                Ok((kv[0].to_string(), kv[1].to_string()))
            } else {
                Err(format!("{}: not a coalescing key the tuner sets", kv[0]))
            }
        })
        .collect()
}

/// Formats pairs back into `key value ...`.
pub fn format_pairs(p: &[(String, String)]) -> String {
    p.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ethtool_output() {
        let g = "Ring parameters for eth0:\nPre-set maximums:\nRX:\t\t4096\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t4096\nCurrent hardware settings:\nRX:\t\t256\nRX Mini:\tn/a\nRX Jumbo:\tn/a\nTX:\t\t512\nRX Buf Len:\t\tn/a\n";
        assert_eq!(
            parse_rings(g),
            Some(Rings {
                max_rx: 4096,
                max_tx: 4096,
                rx: 256,
                tx: 512
            })
        );
        assert_eq!(parse_rings("Ring parameters for lo:\n"), None);
        let c = "Coalesce parameters for eth0:\nAdaptive RX: on  TX: off\nstats-block-usecs: n/a\nrx-usecs: 3\nrx-frames: n/a\ntx-usecs: 0\ntx-frames: 1\n";
        let m = parse_coalesce(c);
        assert_eq!(m["adaptive-rx"], "on");
        assert_eq!(m["adaptive-tx"], "off");
        assert_eq!(m["rx-usecs"], "3");
        assert!(!m.contains_key("rx-frames"));
        let m = parse_coalesce("Adaptive RX: n/a  TX: n/a\nrx-usecs: 3\n");
        assert!(!m.contains_key("adaptive-rx") && !m.contains_key("adaptive-tx"));
        assert_eq!(
            parse_pairs("adaptive-rx off rx-usecs 0").unwrap(),
            vec![
                ("adaptive-rx".into(), "off".into()),
                ("rx-usecs".into(), "0".into())
            ]
        );
        assert!(parse_pairs("rx-usecs").is_err());
        assert!(parse_pairs("bogus 1").is_err());
    }
}
