//! The tunnel's byte pipe. The engine's frames go in and out through a `Transport`: plain
//! TCP, or TLS over it (`net::tls`). A transport says whether payloads may bypass it with
//! `splice(2)`: only a plain socket can, since an encrypting one must see every byte.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::net::sys;
use crate::net::tls::TlsStream;
use crate::protocol::handshake::BINDING_LEN;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn sock(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let sock = match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        };
        registry.register(sock, token, Interest::READABLE | Interest::WRITABLE)
    }

    /// Writes are refused while the kernel holds `bytes` of this tunnel unsent (of the TLS
    /// records, under TLS): see [`sys::limit_unsent`].
    pub fn limit_unsent(&self, bytes: usize) -> io::Result<()> {
        sys::limit_unsent(self.sock(), bytes)
    }

    /// Bytes the kernel holds for this tunnel received but unread.
    pub fn unread_bytes(&self) -> Option<usize> {
        sys::unread_bytes(self.sock())
    }

    /// The socket a payload may be spliced from or into, when the transport allows it.
    pub fn splice_socket(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(_) => None,
        }
    }

    /// Read decoded bytes (the frames); `Ok(0)` is end of stream. A read shorter than `buf`
    /// means the socket is drained, unless `to_eof` says the peer has closed: then the
    /// reads go on to the end of stream.
    pub fn read(&mut self, buf: &mut [u8], to_eof: bool) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf, to_eof),
        }
    }

    /// Write frame bytes; returns how many were taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    /// Push out what the transport itself still holds (encrypted records); `Ok` when the
    /// socket refuses the rest, which waits for the next writable event.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush(),
        }
    }

    /// Bytes taken by `write` still wait in the transport.
    pub fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.has_pending(),
        }
    }

    /// TLS runs (or may yet run: a server still waiting for the first byte).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS channel binding, once, when the handshake has just completed.
    pub fn take_binding(&mut self) -> Option<[u8; BINDING_LEN]> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => t.take_binding(),
        }
    }

    /// The transport's own deadline (a TLS server's wait for the first byte), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => t.poll_timeout(),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Transport::Tls(t) = self {
            t.handle_timeout(now);
        }
    }

    /// The peer has closed or reset the connection (checked without consuming input).
    pub fn peer_gone(&self) -> bool {
        match self.sock().peek(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock().peer_addr()
    }
}
