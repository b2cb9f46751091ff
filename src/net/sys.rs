//! The few OS calls that std and mio do not offer: the open-file limit, socket options,
//! abortive close, and random bytes.

use std::io;
use std::os::fd::AsRawFd;

/// Raise the soft open-file limit to the hard limit. Returns the resulting soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(limit_value(raised.rlim_cur));
        }
    }
    Ok(limit_value(lim.rlim_cur))
}

/// An rlimit value as a count: `rlim_t` is unsigned on Linux and macOS, signed on the BSDs.
#[allow(clippy::useless_conversion)]
fn limit_value(v: libc::rlim_t) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Keep large buffers out of the heap: allocations from 128 KiB up are mapped straight from
/// the OS, so their untouched pages cost no resident memory and freeing them returns the
/// memory. (Setting the threshold also stops glibc from raising it dynamically.) The heap
/// keeps up to 1 MiB free at its top: TLS allocates and frees a 16 KiB record after record,
/// and trimming at the default 128 KiB would hand those pages back and fault them in again
/// on every loop turn.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Listen on `[::]:port` for IPv6 and IPv4 alike (`IPV6_V6ONLY` off, whatever the system's
/// default), as `TcpListener::bind` does otherwise: non-blocking, close-on-exec,
/// `SO_REUSEADDR`, a backlog of 1024.
pub fn listen_dual_stack(port: u16) -> io::Result<mio::net::TcpListener> {
    let fd = bind_dual_stack(libc::SOCK_STREAM, port)?;
    // SAFETY: a bound socket this function owns.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mio::net::TcpListener::from_std(
        std::net::TcpListener::from(fd),
    ))
}

/// A UDP socket on `[::]:port` for IPv6 and IPv4 alike, non-blocking. IPv4 peers appear as
/// IPv4-mapped addresses, and replies to those addresses reach them.
pub fn udp_dual_stack(port: u16) -> io::Result<mio::net::UdpSocket> {
    let fd = bind_dual_stack(libc::SOCK_DGRAM, port)?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// A socket of `kind` bound to `[::]:port` with `IPV6_V6ONLY` off and `SO_REUSEADDR` on
/// (which lets a TCP listener rebind a port in TIME_WAIT; UDP sockets still cannot share).
fn bind_dual_stack(kind: libc::c_int, port: u16) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor this function owns; results are checked.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_INET6,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(raw)
    };
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_V6ONLY,
        &(0 as libc::c_int),
    )?;
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &(1 as libc::c_int),
    )?;
    // SAFETY: a zeroed sockaddr_in6 is the unspecified address; the sizes match.
    let rc = unsafe {
        let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        libc::bind(
            fd.as_raw_fd(),
            (&sin6 as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Ask for socket buffers of `bytes` each way (the kernel caps them at its
/// `net.core.rmem_max` / `wmem_max`): a burst of datagrams then waits in the kernel rather
/// than being dropped there while the loop serves other sockets.
pub fn set_socket_buffers(sock: &impl AsRawFd, bytes: usize) {
    let n = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let _ = setsockopt(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &n);
    let _ = setsockopt(sock, libc::SOL_SOCKET, libc::SO_SNDBUF, &n);
}

/// Have the kernel refuse writes to a TCP socket while it holds `bytes` or more of it not
/// yet sent (Linux's `TCP_NOTSENT_LOWAT`; the write that reaches it may overshoot by about a
/// segment). Bytes sent but not yet acknowledged do not count, so the connection's speed
/// does not depend on it. `Ok` without effect where the platform has no such option.
pub fn limit_unsent(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let n = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        setsockopt(sock, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, &n)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (sock, bytes);
        Ok(())
    }
}

/// Bytes the kernel holds in a TCP socket's send queue that it has not sent yet (Linux's
/// `SIOCOUTQNSD`): what waits behind the network or behind the peer's closed window.
/// `None` where the platform does not say, or on an error.
#[cfg(test)]
pub fn unsent_bytes(sock: &impl AsRawFd) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // From linux/sockios.h; the libc crate does not name it.
        const SIOCOUTQNSD: libc::c_ulong = 0x894B;
        queue_ioctl(sock, SIOCOUTQNSD as _)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sock;
        None
    }
}

/// Bytes waiting unread in a socket's receive queue (`FIONREAD`), `None` on an error.
pub fn unread_bytes(sock: &impl AsRawFd) -> Option<usize> {
    queue_ioctl(sock, libc::FIONREAD as _)
}

fn queue_ioctl(sock: &impl AsRawFd, request: libc::c_ulong) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int into the value we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut n) };
    if rc == 0 {
        usize::try_from(n).ok()
    } else {
        None
    }
}

/// The host cannot open an IPv6 socket on `::` (no IPv6, or it is disabled).
pub fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// Set TCP_NODELAY on a listening socket. On Linux the sockets it accepts inherit the
/// option, which saves a system call per accepted connection.
pub fn set_listener_nodelay(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &(1 as libc::c_int),
    )
}

/// Whether accepted sockets inherit TCP_NODELAY from their listener (see
/// [`set_listener_nodelay`]).
pub const ACCEPTED_INHERIT_NODELAY: bool = cfg!(target_os = "linux");

/// Make the next close of `sock` send a reset instead of a FIN (SO_LINGER with zero time).
pub fn set_abortive_close(sock: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(sock, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// Set socket option `name` at `level` to `value`.
pub(crate) fn setsockopt<T>(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer to a live value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Is this error the process or system running out of file descriptors?
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Fill `buf` with random bytes from the OS.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(format!("no randomness from the OS: {e}")))
}

/// A small non-cryptographic generator for back-off jitter.
#[derive(Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Jitter {
        let mut seed = [0u8; 8];
        let _ = random_bytes(&mut seed);
        Jitter(u64::from_le_bytes(seed) | 1)
    }

    /// A value in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// The server relies on this to skip a setsockopt per visitor.
    #[test]
    fn accepted_sockets_inherit_the_listeners_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        set_listener_nodelay(&listener).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        if ACCEPTED_INHERIT_NODELAY {
            assert!(accepted.nodelay().unwrap());
        }
    }

    /// Bytes the kernel takes from a socket whose peer reads nothing, until it refuses: how
    /// many it took in all and how many of them wait unsent.
    #[cfg(target_os = "linux")]
    fn fill_unread(limit: Option<usize>) -> (usize, usize) {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_receiver, _) = listener.accept().unwrap();
        if let Some(limit) = limit {
            limit_unsent(&sender, limit).unwrap();
        }
        sender.set_nonblocking(true).unwrap();
        let chunk = [1u8; 16 * 1024];
        let mut written = 0;
        for _ in 0..100_000 {
            match sender.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        (written, unsent_bytes(&sender).unwrap())
    }

    /// Tunnels bound what waits in front of a stream's frame by this: writes stop at the
    /// limit, where without it the kernel takes its whole autotuned buffer.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_limit_on_unsent_bytes_stops_writes_there() {
        let limit = 256 * 1024;
        let (_, unlimited) = fill_unread(None);
        let (written, unsent) = fill_unread(Some(limit));
        assert!(unlimited > 2 * limit, "{unlimited} unsent without a limit");
        assert!(
            unsent > 0 && unsent <= limit + 16 * 1024,
            "{unsent} unsent of {written} written, limit {limit}"
        );
    }

    /// What tunnels shed datagrams by: bytes received but unread, and bytes written but
    /// held back by the peer's closed window.
    #[test]
    fn kernel_queues_are_read_from_the_socket() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        assert_eq!(unread_bytes(&receiver), Some(0));
        sender.write_all(&[7; 1000]).unwrap();
        let mut unread = None;
        for _ in 0..200 {
            unread = unread_bytes(&receiver);
            if unread == Some(1000) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(unread, Some(1000));

        // Nothing reads: the receiver's window closes and the rest waits unsent.
        sender.set_nonblocking(true).unwrap();
        let chunk = [1u8; 64 * 1024];
        let mut written = 1000usize;
        for _ in 0..100_000 {
            match sender.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        let unread = unread_bytes(&receiver).unwrap();
        assert!(unread > 1000 && unread < written, "{unread} of {written}");
        if cfg!(target_os = "linux") {
            let unsent = unsent_bytes(&sender).unwrap();
            assert!(
                unsent > 0 && unsent <= written - unread,
                "{unsent}, {unread} of {written}"
            );
        }
    }
}
