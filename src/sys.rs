//! The few OS calls that std and mio do not offer: the open-file limit, abortive close,
//! and random bytes.

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
            return Ok(raised.rlim_cur);
        }
    }
    Ok(lim.rlim_cur)
}

/// Keep large buffers out of the heap: allocations from 128 KiB up are mapped straight from
/// the OS, so their untouched pages cost no resident memory and freeing them returns the
/// memory. (Setting the threshold also stops glibc from raising it dynamically.)
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
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
fn setsockopt<T>(
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

/// Pipes open in this process.
static LIVE_PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many [`Pipe`]s exist in this process.
pub fn live_pipes() -> usize {
    LIVE_PIPES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A pipe for moving bytes between sockets with `splice(2)`, without copying them through
/// user space. Both ends are non-blocking; the fds close on drop. (Splicing into a socket
/// whose peer is gone fails with EPIPE; SIGPIPE is ignored, as Rust programs do by default.)
#[derive(Debug)]
pub struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Pipe {
    /// A pipe holding at least `size` bytes. Fails where the system refuses the size (a
    /// user over the pipe memory limit) or has no splice.
    #[cfg(target_os = "linux")]
    pub fn new(size: usize) -> io::Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        let pipe = unsafe {
            Pipe {
                read: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                write: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        };
        LIVE_PIPES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let want = libc::c_int::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fcntl on an fd we own.
        let got = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if (got as usize) < size {
            return Err(io::Error::other(format!(
                "pipe holds {got} bytes, not {size}"
            )));
        }
        Ok(pipe)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_size: usize) -> io::Result<Pipe> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Move up to `len` bytes from socket `from` into the pipe.
    pub fn fill_from(&self, from: &impl AsRawFd, len: usize) -> io::Result<usize> {
        splice(from.as_raw_fd(), self.write.as_raw_fd(), len)
    }

    /// Move up to `len` bytes from the pipe into socket `to`.
    pub fn drain_to(&self, to: &impl AsRawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to.as_raw_fd(), len)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE_PIPES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
fn splice(from: std::os::fd::RawFd, to: std::os::fd::RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are open for the duration of the call; null offsets mean the
        // current file positions (required for pipes and sockets).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn splice(_from: std::os::fd::RawFd, _to: std::os::fd::RawFd, _len: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
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

    /// Bytes spliced from one socket through a pipe into another arrive intact.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_pipe_moves_bytes_between_sockets() {
        use std::io::{Read, Write};
        let pair = || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            (a, b)
        };
        let (mut src, from) = pair();
        let (to, mut dst) = pair();
        from.set_nonblocking(true).unwrap();
        let pipe = Pipe::new(1 << 20).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        src.write_all(&data).unwrap();
        drop(src);
        let mut moved = 0;
        let mut got = Vec::new();
        for _ in 0..10_000 {
            match pipe.fill_from(&from, data.len() - moved) {
                Ok(n) => moved += n,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            let mut left = moved - got.len();
            while left > 0 {
                let n = pipe.drain_to(&to, left.min(64 * 1024)).unwrap();
                let mut buf = vec![0; n];
                dst.read_exact(&mut buf).unwrap();
                got.extend_from_slice(&buf);
                left -= n;
            }
            if moved == data.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, data);
    }

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
}
