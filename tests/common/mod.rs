//! Starting and stopping `ringmq serve` for end-to-end tests: 127.0.0.1, a port chosen
//! free at run time, killed when dropped.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub child: Child,
    /// The native listener.
    pub addr: SocketAddr,
    /// The Kafka listener.
    pub kafka: SocketAddr,
    /// The admin HTTP listener.
    pub admin: SocketAddr,
}

/// A port that is free now, below the kernel's range for ephemeral ports, so no
/// client connection (of this test or another running beside it) can take it while a
/// broker restarts on it.
pub fn free_addr() -> SocketAddr {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_100));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let span = u32::from(to - from);
    for i in 0..span {
        let port = from + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            drop(l);
            return format!("127.0.0.1:{port}").parse().unwrap();
        }
    }
    panic!("no free port in {from}..{to}");
}

impl Broker {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, 2)
    }

    pub fn start_with(data: &Path, shards: u32) -> Self {
        Self::start_args(data, shards, &[])
    }

    pub fn start_args(data: &Path, shards: u32, extra: &[&str]) -> Self {
        Self::start_env(data, shards, extra, &[])
    }

    /// [`Broker::start_args`] with environment variables for the broker.
    pub fn start_env(data: &Path, shards: u32, extra: &[&str], env: &[(&str, &str)]) -> Self {
        // A port that was free a moment ago can be taken by a broker of a test running
        // in parallel; then ours refuses to start, and we try another.
        for _ in 0..5 {
            if let Some(b) = Self::try_start(data, shards, free_addr(), free_addr(), extra, env) {
                return b;
            }
        }
        panic!("the broker did not start on any of 5 free ports");
    }

    /// Starts on a given address (a restart on the port an earlier broker used).
    pub fn start_on(data: &Path, shards: u32, addr: SocketAddr, extra: &[&str]) -> Self {
        Self::try_start(data, shards, addr, free_addr(), extra, &[]).expect("the broker started")
    }

    /// Starts on given native and Kafka addresses.
    pub fn start_at(
        data: &Path,
        shards: u32,
        addr: SocketAddr,
        kafka: SocketAddr,
        extra: &[&str],
    ) -> Self {
        Self::try_start(data, shards, addr, kafka, extra, &[]).expect("the broker started")
    }

    /// Starts the broker and waits until it listens; `None` if it exited first. Its
    /// startup banner, printed once its own check that the port is free has passed,
    /// tells that a connection reaches this broker and not another one.
    fn try_start(
        data: &Path,
        shards: u32,
        addr: SocketAddr,
        kafka: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Option<Self> {
        let admin = free_addr();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["serve", "--log-level", "warn", "--native-listen"])
            .arg(addr.to_string())
            .arg("--kafka-listen")
            .arg(kafka.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Drain stdout to the end (the broker prints again when it stops).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("native listener") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() || TcpStream::connect(kafka).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            addr,
            kafka,
            admin,
        })
    }

    pub fn stop(mut self) {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean shutdown: {status}");
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client scenario (a script of a real client's test suite) to the end: its
/// output goes to files, so a helper process it leaves behind cannot hold the test up;
/// past `timeout` its whole process group is killed. Panics with the output when it
/// fails or hangs; returns the output (also printed).
pub fn run_scenario(mut cmd: Command, what: &str, timeout: Duration) -> String {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let Some(status) = status else {
        panic!("{what} still ran after {timeout:?}; killed:\n{text}");
    };
    assert!(status.success(), "{what} failed:\n{text}");
    print!("{text}");
    text
}

/// Runs `cmd` with `stdin` as its standard input (standard output and error captured).
pub fn run_with_input(cmd: &mut Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `ringmq ARGS` against `broker`'s native listener with `stdin`; returns its
/// standard output, panics with its standard error when it fails.
pub fn ringmq_cli(broker: &Broker, args: &[&str], stdin: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    cmd.args(args)
        .env("RINGMQ_BROKERS", broker.addr.to_string());
    let out = run_with_input(&mut cmd, stdin);
    assert!(
        out.status.success(),
        "ringmq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
