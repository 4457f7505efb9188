//! Connection steering: a new connection goes to the shard on the core that received its
//! packets.
//!
//! Every shard listens on the same address with its own SO_REUSEPORT socket. By default
//! the kernel picks one of them by a hash of the connection's addresses, so a connection
//! often lands on a shard whose core did not take its packets, and every later packet of
//! that connection crosses cores. A classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) instead reads the CPU that is processing the incoming SYN
//! (`SKF_AD_CPU`, the same CPU `SO_INCOMING_CPU` reports) and returns the index of the
//! socket owned by the shard on that CPU. With each NIC receive queue's interrupt pinned to
//! a shard's core (`ringmq tune apply`), a connection is then served where its packets
//! arrive. On loopback the packets are processed on the sending thread's CPU, which makes
//! the steering observable in tests.
//!
//! The program is written here rather than taken from a crate: it is two instructions per
//! shard, and the crates that build BPF programs bring eBPF toolchains this does not need.

use std::io;
use std::os::fd::RawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` from `asm-generic/socket.h` (the same on x86_64 and
/// aarch64; the `libc` crate defines it only for Android).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// What the program returns for a CPU that runs no shard: an index past the end of the
/// group, which makes the kernel fall back to its hash for that connection.
const NO_SHARD: u32 = u32::MAX;

/// The classic BPF program that maps the receiving CPU to a shard index: `shard_cpus[i]`
/// is the CPU of the shard whose socket joined the group `i`-th.
pub fn program(shard_cpus: &[usize]) -> Vec<libc::sock_filter> {
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut p = Vec::with_capacity(2 * shard_cpus.len() + 2);
    p.push(insn(
        BPF_LD_W_ABS,
        0,
        0,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    ));
    for (shard, &cpu) in shard_cpus.iter().enumerate() {
        // On a match fall through to the return below; otherwise skip it.
        p.push(insn(BPF_JMP_JEQ_K, 0, 1, cpu as u32));
        p.push(insn(BPF_RET_K, 0, 0, shard as u32));
    }
    p.push(insn(BPF_RET_K, 0, 0, NO_SHARD));
    p
}

/// Runs `program` on a CPU number as the kernel would, for tests: the index it returns.
pub fn run_program(p: &[libc::sock_filter], cpu: u32) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    while let Some(i) = p.get(pc) {
        match i.code {
            BPF_LD_W_ABS => a = cpu,
            BPF_JMP_JEQ_K => {
                pc += if a == i.k { i.jt } else { i.jf } as usize;
            }
            BPF_RET_K => return i.k,
            _ => unreachable!("the program holds only these instructions"),
        }
        pc += 1;
    }
    NO_SHARD
}

/// Attaches the steering program to the SO_REUSEPORT group of `fd`, a listening socket.
/// The group's sockets must have joined in shard order (the socket of shard `i` bound
/// `i`-th). An error means the kernel refused it; the group then keeps hashing.
pub fn steer_by_incoming_cpu(fd: RawFd, shard_cpus: &[usize]) -> io::Result<()> {
    let mut p = program(shard_cpus);
    let prog = libc::sock_fprog {
        len: u16::try_from(p.len()).map_err(|_| io::Error::other("too many shards for BPF"))?,
        filter: p.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `p`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_shard_cpu_to_its_index_and_others_to_the_hash() {
        let cpus = [0, 2, 5, 7];
        let p = program(&cpus);
        for (i, &c) in cpus.iter().enumerate() {
            assert_eq!(run_program(&p, c as u32), i as u32);
        }
        for c in [1, 3, 4, 6, 8, 1000] {
            assert_eq!(run_program(&p, c), NO_SHARD);
        }
    }

    #[test]
    fn the_kernel_accepts_the_program_and_steers_loopback_connections() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsRawFd;
        // Two sockets in one group; the program sends CPU 0's connections to socket 1
        // and CPU 1's to socket 0, the reverse of the order a hash would favour.
        let bind = |addr| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_port(true)?;
            s.bind(&socket2::SockAddr::from(addr))?;
            s.listen(16)?;
            io::Result::Ok(TcpListener::from(s))
        };
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr).unwrap();
        steer_by_incoming_cpu(first.as_raw_fd(), &[1, 0]).unwrap();
        first.set_nonblocking(true).unwrap();
        second.set_nonblocking(true).unwrap();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        for cpu in 0..online.min(2) {
            let conn = std::thread::spawn(move || {
                pin(cpu);
                TcpStream::connect(addr).unwrap()
            })
            .join()
            .unwrap();
            let expect = if cpu == 0 { &second } else { &first };
            let other = if cpu == 0 { &first } else { &second };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let accepted = loop {
                if let Ok((s, _)) = expect.accept() {
                    break s;
                }
                assert!(
                    other.accept().is_err(),
                    "cpu {cpu}: landed on the wrong socket"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "cpu {cpu}: not accepted"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            drop((conn, accepted));
        }
    }

    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }
}
