//! `ringmq dev --nodes N`: a local cluster of N nodes on 127.0.0.1, for development and
//! trying replication out: each node a `ringmq serve` child process with its data under
//! `<data-dir>/nodeN`, the cluster's certificates made once under `<data-dir>/certs`.
//! Ctrl-C (or SIGTERM) stops them all.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// Flags of `ringmq dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Nodes in the cluster (every one a controller voter)
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Where the nodes keep their data (`nodeN/` each) and the certificates (`certs/`)
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Node N's Kafka listener is on this port + 10 × (N − 1); its native listener one
    /// above, its cluster listener two above, its admin HTTP listener three above
    /// (node 1: 9092, 9093, 9094, 9095)
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// Shards per node
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Node-to-node transport: quic or tcp
    #[arg(long, default_value = "quic")]
    cluster_transport: String,
    /// Replicas of a new topic's partitions when the request does not say
    #[arg(long)]
    default_replication_factor: Option<u16>,
    /// More `ringmq serve` flags for every node, after `--`
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// Runs the local cluster until Ctrl-C.
pub fn dev(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes {}: use 1 to 9", args.nodes);
    }
    let port = |n: u16, k: u16| -> anyhow::Result<u16> {
        args.base_port
            .checked_add(10 * (n - 1) + k)
            .context("--base-port too high for this many nodes")
    };
    let exe = std::env::current_exe().context("finding the ringmq binary")?;
    let certs = args.data_dir.join("certs");
    let ids: Vec<i32> = (1..=args.nodes as i32).collect();
    if !certs.join("ca.pem").exists()
        || !ids
            .iter()
            .all(|n| certs.join(format!("node-{n}.pem")).exists())
    {
        ringmq_cluster::init_certs(&certs, &ids, &["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| anyhow::anyhow!("creating certificates in {}: {e}", certs.display()))?;
    }
    let mut voters = Vec::new();
    for n in 1..=args.nodes {
        voters.push(format!("{n}@127.0.0.1:{}", port(n, 2)?));
    }
    let voters = voters.join(",");
    let rf = args.default_replication_factor.unwrap_or(args.nodes.min(3));
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut children: Vec<(u16, Child)> = Vec::new();
    let mut bootstrap = Vec::new();
    for n in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node{n}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kafka = format!("127.0.0.1:{}", port(n, 0)?);
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(&exe)
            .arg("serve")
            .args(["--data-dir".as_ref(), dir.as_os_str()])
            .args(["--node-id", &n.to_string(), "--voters", &voters])
            .args(["--cluster-certs".as_ref(), certs.as_os_str()])
            .args(["--kafka-listen", &kafka])
            .args(["--native-listen", &format!("127.0.0.1:{}", port(n, 1)?)])
            .args(["--cluster-listen", &format!("127.0.0.1:{}", port(n, 2)?)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", port(n, 3)?)])
            .args(["--cluster-transport", &args.cluster_transport])
            .args(["--shards", &args.shards.to_string()])
            .args(["--default-replication-factor", &rf.to_string()])
            .args(&args.serve_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {n}"))?;
        children.push((n, child));
        bootstrap.push(kafka);
    }
    println!(
        "ringmq dev: {} nodes on 127.0.0.1 ({} transport)",
        args.nodes, args.cluster_transport
    );
    for n in 1..=args.nodes {
        println!(
            "  node {n}: kafka 127.0.0.1:{}  native 127.0.0.1:{}  cluster 127.0.0.1:{}  admin http://127.0.0.1:{}  data {}  log {}",
            port(n, 0)?,
            port(n, 1)?,
            port(n, 2)?,
            port(n, 3)?,
            args.data_dir.join(format!("node{n}")).display(),
            args.data_dir.join(format!("node{n}/serve.log")).display()
        );
    }
    println!("  bootstrap servers: {}", bootstrap.join(","));
    println!(
        "  new topics get {rf} replicas; `ringmq cluster status --kafka {}` shows the cluster",
        bootstrap[0]
    );
    println!("  Ctrl-C stops every node");
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        for (n, c) in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                failed = Some(format!("node {n} exited ({status}); see its serve.log"));
            }
        }
        if failed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (_, c) in children.iter_mut() {
        // SAFETY: kill(2) on a child's pid, which it still holds until waited for.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (n, c) in children.iter_mut() {
        let status = c.wait()?;
        println!("node {n} stopped ({status})");
    }
    match failed {
        Some(e) => bail!(e),
        None => Ok(()),
    }
}
