//! Three controller voters in one thread: `Quorum`s exchanging messages through
//! queues, each persisting to a `MetadataLogStore` in a temporary directory. No
//! sockets, no clocks: ticks and message delivery are the test's choices, and the
//! randomized run is seeded (`RINGMQ_QUORUM_SEEDS=<n>` runs more seeds,
//! `RINGMQ_QUORUM_SEED=<seed>` one).
//!
//! Checked everywhere: every node applies, at each log index, the same records
//! (identical prefixes), and nodes at the same applied index hold the same metadata.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use ringmq_replication::controller::*;

// ---------------------------------------------------------------- PRNG

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---------------------------------------------------------------- harness

const VOTERS: [NodeId; 3] = [0, 1, 2];

struct Node {
    dir: PathBuf,
    up: Option<(Quorum, MetadataLogStore)>,
    /// Installed snapshots seen.
    snapshots_installed: usize,
}

struct Cluster {
    _root: tempfile::TempDir,
    config: QuorumConfig,
    nodes: Vec<Node>,
    /// (from, to, bytes)
    net: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Nodes whose messages (both ways) are dropped.
    isolated: BTreeSet<NodeId>,
    /// index → the records every node applied there (as JSON).
    applied_at: BTreeMap<u64, Vec<String>>,
    /// Per node: the records applied at each index since its last start.
    seen: Vec<BTreeMap<u64, Vec<String>>>,
}

fn temp_root() -> tempfile::TempDir {
    // fsync is a no-op on tmpfs: the randomized runs stay fast.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

impl Cluster {
    fn new(snapshot_every_entries: u64, seed: u64) -> Cluster {
        let root = temp_root();
        let config = QuorumConfig {
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every_entries,
            election_seed: seed,
        };
        let mut c = Cluster {
            config,
            nodes: VOTERS
                .iter()
                .map(|v| Node {
                    dir: root.path().join(format!("n{v}")),
                    up: None,
                    snapshots_installed: 0,
                })
                .collect(),
            _root: root,
            net: VecDeque::new(),
            isolated: BTreeSet::new(),
            applied_at: BTreeMap::new(),
            seen: vec![BTreeMap::new(); VOTERS.len()],
        };
        for v in VOTERS {
            c.start(v);
        }
        c
    }

    fn start(&mut self, v: NodeId) {
        let node = &mut self.nodes[v as usize];
        assert!(node.up.is_none());
        let (store, recovered) = MetadataLogStore::open(&node.dir).unwrap();
        let q = Quorum::open(v, &VOTERS, recovered, self.config).unwrap();
        node.up = Some((q, store));
        self.seen[v as usize].clear();
    }

    /// Drops the node's memory; what it persisted stays.
    fn crash(&mut self, v: NodeId) {
        self.nodes[v as usize].up = None;
    }

    fn q(&mut self, v: NodeId) -> &mut Quorum {
        &mut self.nodes[v as usize].up.as_mut().unwrap().0
    }

    fn up(&self, v: NodeId) -> bool {
        self.nodes[v as usize].up.is_some()
    }

    /// Persist, send, apply, advance until the node has nothing to do.
    fn pump(&mut self, v: NodeId) {
        loop {
            let node = &mut self.nodes[v as usize];
            let Some((q, store)) = node.up.as_mut() else {
                return;
            };
            let Some(step) = q.ready().unwrap() else {
                return;
            };
            store.persist(&step).unwrap();
            if step.snapshot.is_some() {
                node.snapshots_installed += 1;
            }
            for (to, bytes) in &step.messages {
                self.net.push_back((v, *to, bytes.clone()));
            }
            let mut by_index: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            for (i, r) in &step.committed {
                by_index
                    .entry(*i)
                    .or_default()
                    .push(serde_json::to_string(r).unwrap());
            }
            for (i, records) in by_index {
                let first = self.applied_at.entry(i).or_insert_with(|| records.clone());
                assert_eq!(first, &records, "n{v} applied other records at index {i}");
                self.seen[v as usize].insert(i, records);
            }
            let (q, _) = self.nodes[v as usize].up.as_mut().unwrap();
            q.advance(step).unwrap();
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if self.isolated.contains(&from) || self.isolated.contains(&to) || !self.up(to) {
            return;
        }
        self.q(to).step(from, bytes).unwrap();
        self.pump(to);
    }

    /// Delivers every queued message, in order, until the network is quiet.
    fn settle(&mut self) {
        for v in VOTERS {
            self.pump(v);
        }
        let mut budget = 100_000;
        while let Some((from, to, bytes)) = self.net.pop_front() {
            self.deliver(from, to, &bytes);
            budget -= 1;
            assert!(budget > 0, "the network never settles");
        }
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for v in VOTERS {
                if self.up(v) {
                    self.q(v).tick().unwrap();
                    self.pump(v);
                }
            }
            self.settle();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        VOTERS
            .iter()
            .copied()
            .filter(|&v| {
                !self.isolated.contains(&v)
                    && self.nodes[v as usize]
                        .up
                        .as_ref()
                        .is_some_and(|(q, _)| q.is_leader())
            })
            .collect()
    }

    fn tick_until_leader(&mut self) -> NodeId {
        for _ in 0..500 {
            self.tick(1);
            if let [l] = self.leaders()[..] {
                return l;
            }
        }
        panic!("no leader after 500 ticks");
    }

    fn check_metadata_agrees(&self) {
        let mut by_index: BTreeMap<u64, &ClusterMetadata> = BTreeMap::new();
        for n in &self.nodes {
            if let Some((q, _)) = &n.up {
                let m = by_index.entry(q.applied_index()).or_insert(q.metadata());
                assert_eq!(
                    *m,
                    q.metadata(),
                    "metadata differs at index {}",
                    q.applied_index()
                );
            }
        }
    }

    fn applied_everywhere(&self, record: &MetadataRecord) -> usize {
        let s = serde_json::to_string(record).unwrap();
        self.nodes
            .iter()
            .filter(|n| {
                n.up.as_ref().is_some_and(|(q, _)| {
                    q.metadata()
                        .node(node_of(record))
                        .is_some_and(|i| format!("{}", i.incarnation) == incarnation_of(&s))
                })
            })
            .count()
    }
}

fn register(node: NodeId, incarnation: u64) -> MetadataRecord {
    MetadataRecord::RegisterNode {
        node,
        incarnation,
        kafka: format!("127.0.0.1{node}:9092"),
        native: format!("127.0.0.1{node}:9093"),
        cluster: format!("127.0.0.1{node}:9094"),
    }
}

fn node_of(r: &MetadataRecord) -> NodeId {
    match r {
        MetadataRecord::RegisterNode { node, .. } => *node,
        _ => unreachable!(),
    }
}

fn incarnation_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["incarnation"].to_string()
}

// ---------------------------------------------------------------- tests

#[test]
fn three_voters_elect_and_apply_the_same_sequence() {
    let mut c = Cluster::new(1_000, 1);
    let leader = c.tick_until_leader();
    assert!(
        c.q(leader).can_decide() || {
            c.tick(1);
            c.q(leader).can_decide()
        }
    );
    let follower = (leader + 1) % 3;
    let e = c.q(follower).propose(vec![register(9, 1)]).unwrap_err();
    assert_eq!(e.kind, ControllerErrorKind::NotController);
    for i in 0..10 {
        c.q(leader)
            .propose(vec![register(10 + i, 1), register(30 + i, 1)])
            .unwrap();
        // Projected metadata sees the proposal before it commits.
        assert!(c.q(leader).projected_metadata().node(10 + i).is_some());
    }
    c.settle();
    c.tick(3);
    for v in VOTERS {
        let m = c.q(v).metadata();
        assert_eq!(m.nodes().len(), 20, "n{v}");
    }
    c.check_metadata_agrees();
    let applied: Vec<_> = c
        .seen
        .iter()
        .map(|s| s.keys().copied().collect::<Vec<_>>())
        .collect();
    assert_eq!(applied[0], applied[1]);
    assert_eq!(applied[1], applied[2]);
}

#[test]
fn isolated_leader_is_replaced_and_its_uncommitted_proposals_never_apply() {
    let mut c = Cluster::new(1_000, 2);
    let old = c.tick_until_leader();
    c.q(old).propose(vec![register(1, 1)]).unwrap();
    c.tick(2);
    let old_term = c.q(old).term();
    c.isolated.insert(old);
    // Proposed while cut off: persisted on the old leader only, never committed.
    c.q(old).propose(vec![register(7, 666)]).unwrap();
    c.pump(old);
    c.net.clear();
    let new = c.tick_until_leader();
    assert_ne!(new, old);
    assert!(c.q(new).term() > old_term);
    c.tick(40);
    assert!(
        !c.q(old).is_leader(),
        "check_quorum: the isolated leader steps down"
    );
    c.q(new).propose(vec![register(7, 1)]).unwrap();
    c.isolated.clear();
    c.tick(30);
    for v in VOTERS {
        let n = c.q(v).metadata().node(7).cloned();
        assert_eq!(n.map(|n| n.incarnation), Some(1), "n{v}");
    }
    assert_eq!(c.applied_everywhere(&register(7, 1)), 3);
    let never = serde_json::to_string(&register(7, 666)).unwrap();
    assert!(
        c.applied_at.values().all(|rs| !rs.contains(&never)),
        "an uncommitted proposal of the deposed leader was applied"
    );
    c.check_metadata_agrees();
}

#[test]
fn restarted_node_catches_up_from_its_directory() {
    let mut c = Cluster::new(1_000, 3);
    let leader = c.tick_until_leader();
    c.q(leader).propose(vec![register(1, 1)]).unwrap();
    c.tick(2);
    let f = (leader + 1) % 3;
    c.crash(f);
    for i in 0..5 {
        c.q(leader).propose(vec![register(20 + i, 1)]).unwrap();
        c.tick(1);
    }
    c.start(f);
    // Before hearing from anyone, it replays its own committed log.
    c.pump(f);
    assert!(c.q(f).metadata().node(1).is_some(), "replayed from disk");
    c.tick(10);
    let lm = c.q(leader).metadata().clone();
    assert_eq!(c.q(f).metadata(), &lm);
    // The whole cluster restarts.
    for v in VOTERS {
        c.crash(v);
    }
    c.net.clear();
    for v in VOTERS {
        c.start(v);
    }
    let leader = c.tick_until_leader();
    c.tick(3);
    assert_eq!(c.q(leader).metadata().nodes().len(), 6);
    c.check_metadata_agrees();
}

#[test]
fn far_behind_follower_catches_up_through_a_snapshot() {
    let mut c = Cluster::new(5, 4);
    let leader = c.tick_until_leader();
    let f = (leader + 1) % 3;
    c.isolated.insert(f);
    for i in 0..30 {
        c.q(leader).propose(vec![register(100 + i, 1)]).unwrap();
        c.tick(1);
    }
    c.isolated.clear();
    c.tick(30);
    assert!(
        c.nodes[f as usize].snapshots_installed >= 1,
        "caught up by snapshot"
    );
    let lm = c.q(leader).metadata().clone();
    assert_eq!(c.q(f).metadata(), &lm);
    let ids: Vec<_> = c.q(f).metadata().nodes().keys().copied().collect();
    assert_eq!(
        ids.len(),
        30,
        "{ids:?} leader {leader} now {:?}",
        c.leaders()
    );
    // And it restarts from that snapshot.
    c.crash(f);
    c.start(f);
    c.pump(f);
    let lm = c.q(leader).metadata().clone();
    assert_eq!(c.q(f).metadata(), &lm, "snapshot and log replayed");
    c.tick(5);
    c.check_metadata_agrees();
}

#[test]
fn garbage_from_a_peer_is_refused_not_a_panic() {
    let mut c = Cluster::new(1_000, 5);
    let leader = c.tick_until_leader();
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let e = c.q(f).step(leader, b"\xff\xff\xff garbage").unwrap_err();
    assert_eq!(e.kind, ControllerErrorKind::InvalidMessage);
    assert_eq!(
        c.q(f).step(f, b"").unwrap_err().kind,
        ControllerErrorKind::InvalidMessage
    );
    assert_eq!(
        c.q(f).step(42, b"").unwrap_err().kind,
        ControllerErrorKind::InvalidMessage
    );
    // A real message, to the wrong receiver or from the wrong sender.
    c.q(leader).propose(vec![register(1, 1)]).unwrap();
    let step = c.q(leader).ready().unwrap().unwrap();
    let (to, bytes) = step.messages[0].clone();
    c.q(leader).advance(step).unwrap();
    let wrong = if to == f { other } else { f };
    assert_eq!(
        c.q(wrong).step(leader, &bytes).unwrap_err().kind,
        ControllerErrorKind::InvalidMessage
    );
    assert_eq!(
        c.q(to).step(wrong, &bytes).unwrap_err().kind,
        ControllerErrorKind::InvalidMessage
    );
    // Random bytes and truncations of the real message: refused or accepted, never a
    // panic.
    let mut rng = Rng(5);
    for n in 0..2_000 {
        let garbage: Vec<u8> = if n % 2 == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            bytes[..rng.below(bytes.len() as u64) as usize].to_vec()
        };
        let _ = c.q(to).step(leader, &garbage);
        c.pump(to);
    }
    c.net.clear();
    c.tick(5);
    c.check_metadata_agrees();
    // Feeding during a step is refused.
    c.q(leader).propose(vec![register(2, 1)]).unwrap();
    let step = c.q(leader).ready().unwrap().unwrap();
    assert_eq!(
        c.q(leader).tick().unwrap_err().kind,
        ControllerErrorKind::StepPending
    );
    assert_eq!(
        c.q(leader).propose(vec![]).unwrap_err().kind,
        ControllerErrorKind::StepPending
    );
    c.nodes[leader as usize]
        .up
        .as_mut()
        .unwrap()
        .1
        .persist(&step)
        .unwrap();
    c.q(leader).advance(step).unwrap();
}

// ---------------------------------------------------------------- randomized

/// One seeded run: message drop, duplication and reordering, node crashes (losing
/// what was not yet persisted, keeping what was), isolation; then heal and check that
/// everything converges to one metadata.
fn random_run(seed: u64) {
    let mut rng = Rng(seed);
    let mut c = Cluster::new(1 + rng.below(20), seed);
    let mut proposed = 0u64;
    let mut down_until: BTreeMap<NodeId, u64> = BTreeMap::new();
    let (mut crashes, mut isolations) = (0, 0);
    let steps = 3_000u64;
    for t in 0..steps {
        let faults = t < steps - 800;
        // Restart crashed nodes when their time comes.
        for (v, until) in down_until.clone() {
            if t >= until {
                down_until.remove(&v);
                c.start(v);
            }
        }
        match rng.below(100) {
            0..=24 => {
                for v in VOTERS {
                    if c.up(v) {
                        c.q(v).tick().unwrap();
                        c.pump(v);
                    }
                }
            }
            25..=74 if !c.net.is_empty() => {
                // Deliver a random queued message (reordering), maybe duplicated or
                // dropped.
                let i = rng.below(c.net.len() as u64) as usize;
                let (from, to, bytes) = c.net.remove(i).unwrap();
                if faults && rng.chance(100) {
                    continue;
                }
                if faults && rng.chance(50) {
                    c.net.push_back((from, to, bytes.clone()));
                }
                c.deliver(from, to, &bytes);
            }
            75..=84 => {
                let leaders = c.leaders();
                if let Some(&l) = leaders.first()
                    && c.q(l).can_decide()
                {
                    proposed += 1;
                    let _ = c
                        .q(l)
                        .propose(vec![register((proposed % 50) as NodeId, proposed)]);
                    c.pump(l);
                }
            }
            85..=89 if faults && rng.chance(150) => {
                let v = rng.below(3) as NodeId;
                if c.up(v) && down_until.is_empty() {
                    // Crash mid-step sometimes: a step taken but not persisted is lost.
                    if rng.chance(500) {
                        let _lost = c.q(v).ready().unwrap();
                    }
                    c.crash(v);
                    crashes += 1;
                    down_until.insert(v, t + 20 + rng.below(300));
                }
            }
            90..=94 if faults && rng.chance(100) => {
                c.isolated.clear();
                if rng.chance(500) {
                    c.isolated.insert(rng.below(3) as NodeId);
                    isolations += 1;
                }
            }
            _ => {}
        }
        c.check_metadata_agrees();
    }
    // Heal: everything up, no faults.
    c.isolated.clear();
    for v in down_until.keys().copied().collect::<Vec<_>>() {
        c.start(v);
    }
    let leader = c.tick_until_leader();
    c.tick(20);
    c.q(leader).propose(vec![register(999, 1)]).unwrap();
    c.tick(20);
    let final_meta = c.q(leader).metadata().clone();
    assert!(
        final_meta.node(999).is_some(),
        "seed {seed}: the healed cluster commits"
    );
    for v in VOTERS {
        assert_eq!(c.q(v).metadata(), &final_meta, "seed {seed}: n{v} diverged");
    }
    assert!(crashes + isolations > 0, "seed {seed}: no fault injected");
    assert!(
        final_meta.nodes().len() > 1,
        "seed {seed}: nothing committed"
    );
    if std::env::var("RINGMQ_QUORUM_VERBOSE").is_ok() {
        let snaps: usize = c.nodes.iter().map(|n| n.snapshots_installed).sum();
        println!(
            "seed {seed}: {crashes} crashes, {isolations} isolations, {snaps} snapshots installed, {} entries applied",
            c.applied_at.len()
        );
    }
}

#[test]
fn randomized_runs_apply_identical_prefixes() {
    if let Ok(seed) = std::env::var("RINGMQ_QUORUM_SEED") {
        random_run(seed.parse().unwrap());
        return;
    }
    let seeds: u64 = std::env::var("RINGMQ_QUORUM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for seed in 0..seeds {
        random_run(seed);
    }
}
