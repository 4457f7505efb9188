//! CPU sets in the two spellings the kernel uses: lists (`0-3,8`, as in
//! `smp_affinity_list` and `/sys/devices/system/cpu/online`) and hexadecimal masks in
//! comma-separated 32-bit groups (`00000000,0000000f`, as in `rps_cpus` and `xps_cpus`).

use std::collections::BTreeSet;

/// Parses a CPU list such as `0-3,8,10-11`; `None` if it is not one. An empty string is
/// the empty set.
pub fn parse_list(s: &str) -> Option<BTreeSet<usize>> {
    let mut set = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 1 << 16 {
                    return None;
                }
                set.extend(a..=b);
            }
            None => {
                set.insert(part.trim().parse().ok()?);
            }
        }
    }
    Some(set)
}

/// Formats a set as a CPU list, ranges collapsed: `0-3,8`.
pub fn format_list(set: &BTreeSet<usize>) -> String {
    let mut out = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Parses a hexadecimal CPU mask in comma-separated 32-bit groups, most significant first.
pub fn parse_mask(s: &str) -> Option<BTreeSet<usize>> {
    let mut set = BTreeSet::new();
    let groups: Vec<&str> = s.trim().split(',').collect();
    for (i, g) in groups.iter().rev().enumerate() {
        let bits = u32::from_str_radix(g.trim(), 16).ok()?;
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                set.insert(i * 32 + b);
            }
        }
    }
    Some(set)
}

/// Formats a set as a mask the kernel accepts: `0` for the empty set, else 8-digit groups.
pub fn format_mask(set: &BTreeSet<usize>) -> String {
    let Some(&max) = set.iter().next_back() else {
        return "0".into();
    };
    let mut groups = vec![0u32; max / 32 + 1];
    for &c in set {
        groups[c / 32] |= 1 << (c % 32);
    }
    groups
        .iter()
        .rev()
        .map(|g| format!("{g:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kernel_spellings() {
        let s = parse_list("0-3,8,10-11\n").unwrap();
        assert_eq!(format_list(&s), "0-3,8,10-11");
        assert_eq!(format_mask(&s), "00000d0f");
        assert_eq!(parse_mask("00000000,00000d0f").unwrap(), s);
        assert_eq!(format_mask(&[33].into()), "00000002,00000000");
        assert_eq!(parse_list("").unwrap(), BTreeSet::new());
        assert_eq!(parse_mask("0").unwrap(), BTreeSet::new());
        assert!(parse_list("3-1").is_none());
        assert!(parse_list("a").is_none());
        assert!(parse_mask("xyz").is_none());
    }

    proptest! {
        #[test]
        fn lists_and_masks_round_trip(v in proptest::collection::btree_set(0usize..200, 0..40)) {
            prop_assert_eq!(parse_list(&format_list(&v)).unwrap(), v.clone());
            prop_assert_eq!(parse_mask(&format_mask(&v)).unwrap(), v);
        }
    }
}
