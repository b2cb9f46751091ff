//! A proxied connection: the visitor's socket on the server, the inner target's socket on
//! the client. It carries one stream of its tunnel.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::buffer::Buf;
use crate::protocol::flow::Flow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Client: the TCP connect to the inner target is in progress.
    Connecting,
    /// Server: OPEN sent, waiting for the client's OPEN_OK or OPEN_FAIL.
    Opening,
    Open,
}

pub struct Relay {
    pub sock: TcpStream,
    /// Slab key of the tunnel carrying the stream.
    pub tunnel: usize,
    pub id: u32,
    pub state: RelayState,
    pub flow: Flow,
    /// Bytes from the tunnel that the socket has not taken yet (at most one window).
    pub pending: Buf,
    /// The socket may hold unread bytes or an unread EOF.
    pub readable: bool,
    /// The peer signalled end of input or an error: read until EOF rather than trusting a
    /// short read to mean "drained".
    pub read_closed_hint: bool,
    /// Our write half is shut down (after the peer's FIN and a drained `pending`).
    pub write_shut: bool,
    /// In the reactor's ready queue.
    pub queued: bool,
    /// Connect or open deadline.
    pub deadline: Option<Instant>,
    /// What the stream connects, for logs: the target on the client, the visitor on the server.
    pub label: String,
    /// Client: further addresses to try if this connect fails.
    pub candidates: Vec<SocketAddr>,
}

impl Relay {
    /// Write `pending` until it is empty or the socket refuses. Returns the bytes written.
    pub fn flush_pending(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.pending.is_empty() {
            match self.sock.write(self.pending.data()) {
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

    /// Write `bytes` straight to the socket when nothing is queued ahead of them; keep what
    /// it refuses. Returns the bytes the socket took.
    pub fn write_or_queue(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        if self.pending.is_empty() {
            while written < bytes.len() {
                match self.sock.write(&bytes[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !self.pending.push(&bytes[written..]) {
            return Err(io::Error::other("stream buffer overflow"));
        }
        Ok(written)
    }

    /// Shut our write half once everything received has been written.
    pub fn shutdown_write_if_drained(&mut self) {
        if self.flow.fin_received() && self.pending.is_empty() && !self.write_shut {
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
            self.write_shut = true;
        }
    }
}
