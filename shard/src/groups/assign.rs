//! Server-side assignment for native consumers, whose partitions the broker assigns
//! (Kafka consumers assign in their leader), and the formats of their metadata and
//! assignments: plain text, one topic or `topic\tpartition` a line.

use std::collections::HashMap;

use bytes::Bytes;

/// The assignors the broker runs for native consumers.
pub const ASSIGNORS: [&str; 3] = ["range", "roundrobin", "sticky"];

/// The topics of a native member's metadata: names, one a line.
pub fn decode_topics(meta: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(meta)
        .split('\n')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A native member's metadata: the topics it consumes, one a line.
pub fn encode_topics(topics: &[String]) -> Bytes {
    Bytes::from(topics.join("\n"))
}

/// A native member's assignment: `topic\tpartition`, one a line.
pub fn encode_assignment(parts: &[(String, u32)]) -> Bytes {
    let mut out = String::new();
    for (t, p) in parts {
        out.push_str(&format!("{t}\t{p}\n"));
    }
    Bytes::from(out)
}

/// The partitions of [`encode_assignment`]'s bytes (lines that do not parse are left
/// out).
pub fn decode_assignment(b: &[u8]) -> Vec<(String, u32)> {
    String::from_utf8_lossy(b)
        .lines()
        .filter_map(|l| {
            let (t, p) = l.split_once('\t')?;
            Some((t.to_string(), p.parse().ok()?))
        })
        .collect()
}

/// Server-side assignment. `members` are (member id, subscribed topics) in id order.
///
/// - `range`: per topic, each subscribed member takes a contiguous range (the first
///   ones one more when the count does not divide).
/// - `roundrobin`: every (topic, partition) in order, dealt to the subscribed members
///   in turn.
/// - `sticky`: members keep what they had (still subscribed, still existing) up to a
///   balanced share; the rest goes to the least loaded.
pub fn assign(
    assignor: &str,
    members: &[(String, Vec<String>)],
    partitions: &dyn Fn(&str) -> u32,
    previous: &HashMap<String, Vec<(String, u32)>>,
) -> HashMap<String, Vec<(String, u32)>> {
    let mut out: HashMap<String, Vec<(String, u32)>> = members
        .iter()
        .map(|(m, _)| (m.clone(), Vec::new()))
        .collect();
    let mut topics: Vec<&String> = members.iter().flat_map(|(_, t)| t).collect();
    topics.sort();
    topics.dedup();
    let subscribed = |m: &(String, Vec<String>), t: &str| m.1.iter().any(|x| x == t);
    match assignor {
        "roundrobin" => {
            let mut next = 0usize;
            for t in &topics {
                for p in 0..partitions(t) {
                    for _ in 0..members.len() {
                        let m = &members[next % members.len()];
                        next += 1;
                        if subscribed(m, t) {
                            out.get_mut(&m.0).expect("member").push(((*t).clone(), p));
                            break;
                        }
                    }
                }
            }
        }
        "sticky" => {
            let all: Vec<(String, u32)> = topics
                .iter()
                .flat_map(|t| (0..partitions(t)).map(move |p| ((*t).clone(), p)))
                .collect();
            let k = members.len().max(1);
            let (base, extra) = (all.len() / k, all.len() % k);
            let mut owned: HashMap<(String, u32), String> = HashMap::new();
            // Keep previous partitions, most loaded members first get the larger shares.
            let mut order: Vec<&(String, Vec<String>)> = members.iter().collect();
            order.sort_by_key(|m| std::cmp::Reverse(previous.get(&m.0).map_or(0, Vec::len)));
            for (i, m) in order.iter().enumerate() {
                let cap = base + usize::from(i < extra);
                let mine = out.get_mut(&m.0).expect("member");
                for tp in previous.get(&m.0).into_iter().flatten() {
                    if mine.len() < cap
                        && subscribed(m, &tp.0)
                        && tp.1 < partitions(&tp.0)
                        && !owned.contains_key(tp)
                    {
                        owned.insert(tp.clone(), m.0.clone());
                        mine.push(tp.clone());
                    }
                }
            }
            for tp in all {
                if owned.contains_key(&tp) {
                    continue;
                }
                let target = members
                    .iter()
                    .filter(|m| subscribed(m, &tp.0))
                    .min_by_key(|m| (out[&m.0].len(), m.0.clone()));
                if let Some(m) = target {
                    out.get_mut(&m.0).expect("member").push(tp);
                }
            }
        }
        _ => {
            // range
            for t in &topics {
                let subs: Vec<&(String, Vec<String>)> =
                    members.iter().filter(|m| subscribed(m, t)).collect();
                let n = partitions(t) as usize;
                let k = subs.len().max(1);
                let (per, extra) = (n / k, n % k);
                let mut p = 0u32;
                for (i, m) in subs.iter().enumerate() {
                    let take = per + usize::from(i < extra);
                    for _ in 0..take {
                        out.get_mut(&m.0).expect("member").push(((*t).clone(), p));
                        p += 1;
                    }
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| (format!("m{i}"), vec!["a".to_string(), "b".to_string()]))
            .collect()
    }

    fn check_partition(out: &HashMap<String, Vec<(String, u32)>>, total: usize) {
        let mut all: Vec<&(String, u32)> = out.values().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a partition assigned twice: {out:?}");
        assert_eq!(n, total, "every partition assigned: {out:?}");
    }

    #[test]
    fn assignors_assign_every_partition_once_and_balance() {
        let counts = |t: &str| if t == "a" { 6 } else { 3 };
        for assignor in ASSIGNORS {
            for n in 1..=4 {
                let out = assign(assignor, &members(n), &counts, &HashMap::new());
                check_partition(&out, 9);
                let loads: Vec<usize> = out.values().map(Vec::len).collect();
                let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
                // Range balances per topic, so over two topics it may differ by 2.
                assert!(
                    spread <= if assignor == "range" { 2 } else { 1 },
                    "{assignor} {n}: {out:?}"
                );
            }
        }
        let out = assign("range", &members(2), &counts, &HashMap::new());
        assert_eq!(
            out["m0"],
            vec![
                ("a".into(), 0),
                ("a".into(), 1),
                ("a".into(), 2),
                ("b".into(), 0),
                ("b".into(), 1)
            ]
        );
    }

    #[test]
    fn sticky_keeps_what_members_had() {
        let counts = |t: &str| if t == "a" { 6 } else { 3 };
        let before = assign("sticky", &members(3), &counts, &HashMap::new());
        // m2 leaves: m0 and m1 keep all they had and split m2's partitions.
        let after = assign("sticky", &members(2), &counts, &before);
        check_partition(&after, 9);
        for m in ["m0", "m1"] {
            for tp in &before[m] {
                assert!(
                    after[m].contains(tp),
                    "{m} lost {tp:?}: {before:?} -> {after:?}"
                );
            }
        }
        // A member subscribed to one topic only gets only that topic.
        let mixed = vec![
            ("m0".to_string(), vec!["a".to_string()]),
            ("m1".to_string(), vec!["a".to_string(), "b".to_string()]),
        ];
        for assignor in ASSIGNORS {
            let out = assign(assignor, &mixed, &counts, &HashMap::new());
            check_partition(&out, 9);
            assert!(
                out["m0"].iter().all(|(t, _)| t == "a"),
                "{assignor}: {out:?}"
            );
        }
    }

    #[test]
    fn assignments_encode_and_decode() {
        let parts = vec![("orders".to_string(), 3), ("audit".to_string(), 0)];
        assert_eq!(decode_assignment(&encode_assignment(&parts)), parts);
        assert_eq!(
            decode_topics(b"a\nb\n"),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
