//! Starting and stopping `ringmq serve` for end-to-end tests: 127.0.0.1, a port chosen
//! free at run time, killed when dropped.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, 2)
    }

    pub fn start_with(data: &Path, shards: u32) -> Self {
        Self::start_args(data, shards, &[])
    }

    pub fn start_args(data: &Path, shards: u32, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(
            data,
            shards,
            format!("127.0.0.1:{port}").parse().unwrap(),
            extra,
        )
    }

    /// Starts on a given address (a restart on the port an earlier broker used).
    pub fn start_on(data: &Path, shards: u32, addr: SocketAddr, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["serve", "--log-level", "warn", "--native-listen"])
            .arg(addr.to_string())
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
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
