//! The tunnel's byte pipe. The engine's frames go in and out through a `Transport`; what
//! lies beneath (plain TCP today) is its business. A transport says whether payloads may
//! bypass it with `splice(2)`: only a plain socket can, since an encrypting one must see
//! every byte.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

pub enum Transport {
    Plain(TcpStream),
}

impl Transport {
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                registry.register(s, token, Interest::READABLE | Interest::WRITABLE)
            }
        }
    }

    /// The socket a payload may be spliced from or into, when the transport allows it.
    pub fn splice_socket(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
        }
    }

    /// Read decoded bytes (the frames); `Ok(0)` is end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }

    /// Write frame bytes; returns how many were taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
        }
    }

    /// The peer has closed or reset the connection (checked without consuming input).
    pub fn peer_gone(&self) -> bool {
        match self {
            Transport::Plain(s) => match s.peek(&mut [0u8; 1]) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            },
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(s) => s.peer_addr(),
        }
    }
}
