//! What the bench and the loopback integration tests share: temporary directories, free
//! ports, child processes with their stderr collected ([`Process`]), figures of a process
//! from /proc ([`procfs`]), and target servers on loopback threads ([`Target`], [`Targets`]).
//!
//! Nothing here panics on what comes from outside: failures are `io::Result`s, and the tests'
//! own helpers (`tests/common`) turn them into panics with a message.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

mod process;
pub mod procfs;
mod targets;
mod udp;

pub use process::{Process, ProcessOptions, Stop};
pub use targets::{CHUNK, EchoService, Endpoints, Target, Targets};
pub use udp::{UdpCount, UdpService};

/// A directory of its own under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh directory named `tcp-forward-<label>-<pid>-<n>-<nanos>`.
    pub fn new(label: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let pid = std::process::id();
        let path = std::env::temp_dir().join(format!("tcp-forward-{label}-{pid}-{n}-{nanos}"));
        std::fs::create_dir(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write a file into the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> io::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `N` distinct ports the OS considers free on 127.0.0.1 right now (bound at once, so that
/// they differ, and released): another program may take one before it is used. They are
/// picked below the kernel's ephemeral range where there is room, so that the local port of
/// some outgoing connection, which can stay open for as long as a test runs, never holds one.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    bound_ports(
        |port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
        TcpListener::local_addr,
    )
}

/// `N` distinct UDP ports free on 127.0.0.1 right now, as [`free_ports`].
pub fn free_udp_ports<const N: usize>() -> io::Result<[u16; N]> {
    bound_ports(
        |port| UdpSocket::bind((Ipv4Addr::LOCALHOST, port)),
        UdpSocket::local_addr,
    )
}

/// Ports tried for [`free_ports`]: the 10,000 below the start of the kernel's ephemeral range
/// (32768 by default), beginning at an offset of this process's own and moving on by one
/// each time, so that the threads of a process, and most likely two processes, pick
/// different ones. `None` where the range leaves no such room.
fn candidate_port() -> Option<u16> {
    use std::sync::OnceLock;
    static RANGE: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (low, span) = (*RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let ephemeral: u32 = text.split_whitespace().next()?.parse().ok()?;
        let low = ephemeral.saturating_sub(10_000).max(1_024);
        (ephemeral >= low + 1_000).then_some((low, ephemeral - low))
    }))?;
    static START: OnceLock<usize> = OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
        std::process::id() as usize * 7_919 + nanos
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    u16::try_from(low + ((start + n) % span as usize) as u32).ok()
}

/// The ports of `N` sockets made by `bind`, all open at once, then closed: each on the first
/// [`candidate_port`] it can bind (within a few hundred tries), else on one the OS picks.
fn bound_ports<const N: usize, S>(
    bind: impl Fn(u16) -> io::Result<S>,
    addr: impl Fn(&S) -> io::Result<SocketAddr>,
) -> io::Result<[u16; N]> {
    let one = || {
        for _ in 0..500 {
            let Some(port) = candidate_port() else { break };
            match bind(port) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        bind(0)
    };
    let sockets = (0..N).map(|_| one()).collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, s) in ports.iter_mut().zip(&sockets) {
        *port = addr(s)?.port();
    }
    Ok(ports)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    free_ports::<1>().map(|[port]| port)
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new("harness").expect("temporary directory");
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        let file = dir.write("a.cfg", "x=1\n").expect("write a file");
        assert_eq!(std::fs::read_to_string(file).ok().as_deref(), Some("x=1\n"));
        let other = TempDir::new("harness").expect("another temporary directory");
        assert_ne!(other.path(), path);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn free_ports_differ() {
        let [a, b, c] = free_ports().expect("free ports");
        assert!(a != b && b != c && a != c);
        let [a, b] = free_udp_ports().expect("free UDP ports");
        assert_ne!(a, b);
        assert_ne!(free_port().expect("a free port"), 0);
    }

    /// Below the ephemeral range, where no outgoing connection's local port can hold one.
    #[cfg(target_os = "linux")]
    #[test]
    fn free_ports_stay_out_of_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("the ephemeral range");
        let low: u16 = range
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("its start");
        if low < 2_024 {
            eprintln!("skipped: the ephemeral range starts at {low}, leaving no room below it");
            return;
        }
        let ports: [u16; 50] = free_ports().expect("free ports");
        let udp: [u16; 10] = free_udp_ports().expect("free UDP ports");
        for p in ports.iter().chain(&udp) {
            assert!(*p < low, "{p} is in the ephemeral range from {low}");
        }
        let mut seen = ports.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ports.len(), "{ports:?}");
    }
}
