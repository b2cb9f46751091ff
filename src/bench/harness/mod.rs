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
/// they differ, and released): another program may take one before it is used.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    bound_ports(
        || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)),
        TcpListener::local_addr,
    )
}

/// `N` distinct UDP ports free on 127.0.0.1 right now, as [`free_ports`].
pub fn free_udp_ports<const N: usize>() -> io::Result<[u16; N]> {
    bound_ports(
        || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)),
        UdpSocket::local_addr,
    )
}

/// The ports of `N` sockets made by `bind`, all open at once, then closed.
fn bound_ports<const N: usize, S>(
    bind: impl Fn() -> io::Result<S>,
    addr: impl Fn(&S) -> io::Result<SocketAddr>,
) -> io::Result<[u16; N]> {
    let sockets = (0..N).map(|_| bind()).collect::<io::Result<Vec<_>>>()?;
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
}
