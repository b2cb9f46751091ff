//! A proxied connection: the visitor's socket on the server, the inner target's socket on
//! the client. It carries one stream of its tunnel.

use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;

use crate::buffer::Buf;
use crate::net::splice::Pipe;

/// Bytes a stream moved: read from its socket (toward the tunnel) and written to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteCount {
    pub read: u64,
    pub written: u64,
}

impl ByteCount {
    pub fn add(&mut self, other: ByteCount) {
        self.read += other.read;
        self.written += other.written;
    }
}

/// The socket's state. (How far the stream has opened is the engine's business: a
/// visitor's socket is open while its stream still waits for OPEN_OK.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Client: the TCP connect to the inner target is in progress.
    Connecting,
    Open,
}

pub struct Relay {
    pub sock: TcpStream,
    /// Slab key of the tunnel carrying the stream.
    pub tunnel: usize,
    pub id: u32,
    pub state: RelayState,
    /// Bytes from the tunnel that the socket has not taken yet (at most one window, with
    /// `piped`). Bytes in the pipe come first.
    pub pending: Buf,
    /// Client: bytes of a PROXY header at the front of `pending` that the target has not
    /// taken yet. They never came through the tunnel, so they earn no credit.
    pub header: usize,
    /// Where long payloads are spliced from the tunnel on their way to the socket: taken
    /// from the reactor's pool while bytes wait in it, returned when empty.
    pub pipe: Option<Pipe>,
    /// Bytes in `pipe` that the socket has not taken yet.
    pub piped: usize,
    /// The last read filled what it asked for: more is probably waiting.
    pub bulk: bool,
    /// Splicing failed for this stream: its payloads are copied.
    pub splice_off: bool,
    /// The socket may hold unread bytes or an unread EOF.
    pub readable: bool,
    /// The peer signalled end of input or an error: read until EOF rather than trusting a
    /// short read to mean "drained".
    pub read_closed_hint: bool,
    /// Our write half is shut down (after the peer's FIN and a drained `pending`).
    pub write_shut: bool,
    /// In the reactor's ready queue.
    pub queued: bool,
    /// Waiting for its port's tokens, by direction (`limit::Dir::bit`).
    pub throttled: u8,
    /// Bytes read from the socket (sent into the tunnel) and written to it.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Connect deadline (client) or OPEN_OK deadline (server); cleared once open.
    pub deadline: Option<Instant>,
    /// What the stream connects, for logs: the target on the client, the visitor on the server.
    pub label: String,
    /// Client: further addresses to try if this connect fails.
    pub candidates: Vec<SocketAddr>,
    /// Server: the public port the visitor came in on (0 on the client).
    pub port: u16,
    /// The stream sweep's count when a byte last moved either way (see
    /// [`crate::net::reactor::StreamTimeouts`]).
    pub active: u32,
    /// Server: what the admin API lists of the stream. Boxed, so that the relay stays as
    /// small as the data path wants it (the client has none).
    pub info: Option<Box<StreamInfo>>,
}

/// A visitor's stream, as the admin API lists it.
#[derive(Debug)]
pub struct StreamInfo {
    pub visitor: SocketAddr,
    /// The target the stream was opened to (shared with the mapping it came from).
    pub target: Arc<str>,
    pub opened_at: SystemTime,
}

impl Relay {
    /// Nothing from the tunnel waits for the socket.
    pub fn drained(&self) -> bool {
        self.piped == 0 && self.pending.is_empty()
    }

    /// Splice what the pipe holds into the socket until it is empty, the socket refuses or
    /// `max` bytes moved. Returns the bytes written.
    pub fn flush_pipe(&mut self, max: usize) -> io::Result<usize> {
        let mut total = 0;
        while self.piped > 0 && total < max {
            let Some(pipe) = &self.pipe else { break };
            match pipe.drain_to(&self.sock, self.piped.min(max - total)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.piped -= n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Write the pipe's bytes, then `pending`, until both are empty, the socket refuses or
    /// `max` bytes moved. Returns the bytes written.
    pub fn flush_pending(&mut self, max: usize) -> io::Result<usize> {
        let mut total = self.flush_pipe(max)?;
        if self.piped > 0 {
            return Ok(total);
        }
        while !self.pending.is_empty() && total < max {
            let data = self.pending.data();
            match self.sock.write(&data[..data.len().min(max - total)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.consume(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pending.is_empty() {
            self.pending.release();
        }
        Ok(total)
    }

    /// Write `parts` straight to the socket (one vectored write), at most `max` bytes, when
    /// it is connected and nothing is queued ahead of them; keep what it refuses or what is
    /// beyond `max` (or all, before the connect). Returns the bytes the socket took.
    pub fn write_or_queue(&mut self, parts: &[&[u8]], max: usize) -> io::Result<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let limit = total.min(max);
        let mut written = 0;
        if self.drained() && self.state == RelayState::Open {
            while written < limit {
                let mut iovs = [IoSlice::new(&[]); 16];
                let n = fill_iovs(parts, written, limit - written, &mut iovs);
                match self.sock.write_vectored(&iovs[..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            if !self.pending.push(&p[skip..]) {
                return Err(io::Error::other("stream buffer overflow"));
            }
            skip = 0;
        }
        Ok(written)
    }
}

/// Point `iovs` at what remains of `parts` after the first `skip` bytes, `len` bytes at
/// most. Returns how many entries were filled.
fn fill_iovs<'a>(
    parts: &[&'a [u8]],
    mut skip: usize,
    mut len: usize,
    iovs: &mut [IoSlice<'a>],
) -> usize {
    let mut n = 0;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if n == iovs.len() || len == 0 {
            break;
        }
        let rest = &p[skip..];
        let take = rest.len().min(len);
        iovs[n] = IoSlice::new(&rest[..take]);
        len -= take;
        skip = 0;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iovs_skip_what_was_written() {
        let parts: [&[u8]; 3] = [b"abc", b"de", b"fgh"];
        let mut iovs = [IoSlice::new(&[]); 4];
        assert_eq!(fill_iovs(&parts, 0, usize::MAX, &mut iovs), 3);
        assert_eq!(fill_iovs(&parts, 4, usize::MAX, &mut iovs), 2);
        assert_eq!(&*iovs[0], b"e");
        assert_eq!(&*iovs[1], b"fgh");
        assert_eq!(fill_iovs(&parts, 8, usize::MAX, &mut iovs), 0);
    }

    #[test]
    fn iovs_stop_at_their_length() {
        let parts: [&[u8]; 3] = [b"abc", b"de", b"fgh"];
        let mut iovs = [IoSlice::new(&[]); 4];
        assert_eq!(fill_iovs(&parts, 1, 3, &mut iovs), 2);
        assert_eq!(&*iovs[0], b"bc");
        assert_eq!(&*iovs[1], b"d");
        assert_eq!(fill_iovs(&parts, 0, 2, &mut iovs), 1);
        assert_eq!(&*iovs[0], b"ab");
        assert_eq!(fill_iovs(&parts, 0, 0, &mut iovs), 0);
    }
}
