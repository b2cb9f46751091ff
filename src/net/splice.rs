//! Splicing: pipes that move a payload socket -> pipe -> socket inside the kernel, and the
//! pool that bounds how many exist. Linux only; elsewhere no pipe can be made and every
//! payload is copied.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::debug;

/// Size of a splicing pipe: a whole long payload.
const PIPE_SIZE: usize = crate::protocol::frame::MAX_LONG_PAYLOAD;
/// Pipes in use or pooled, at most (each is two file descriptors and counts against the
/// user's pipe memory quota); beyond them payloads are copied.
const MAX_PIPES: usize = 32;
/// Empty pipes kept for reuse.
const POOLED_PIPES: usize = 8;
/// After the system refuses a pipe, copy for this long before asking again.
const PIPE_RETRY: Duration = Duration::from_secs(10);

/// Empty pipes ready for the next long payload, and how many may exist.
#[derive(Default)]
pub struct PipePool {
    pipes: Vec<Pipe>,
    /// After the system refused a pipe: no new ones before this time.
    refused_until: Option<Instant>,
}

impl PipePool {
    /// An empty pipe: a pooled one, or a new one while fewer than `MAX_PIPES` exist. None
    /// means: copy this payload.
    pub fn take(&mut self, now: Instant) -> Option<Pipe> {
        if let Some(pipe) = self.pipes.pop() {
            return Some(pipe);
        }
        if live_pipes() >= MAX_PIPES || self.refused_until.is_some_and(|t| t > now) {
            return None;
        }
        match Pipe::new(PIPE_SIZE) {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                debug!("no pipe for splicing, copying for a while: {e}");
                self.refused_until = Some(now + PIPE_RETRY);
                None
            }
        }
    }

    /// Return an empty pipe.
    pub fn put(&mut self, pipe: Pipe) {
        if self.pipes.len() < POOLED_PIPES {
            self.pipes.push(pipe);
        }
    }
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
}
