//! A tunnel socket under TLS: rustls's connection driven by the event loop (`read_tls`,
//! `process_new_packets`, `write_tls`), never blocking. Frames go in as plaintext through
//! `write` and come out of `read`; the channel binding is exported the moment the handshake
//! completes, before the first byte of plaintext.
//!
//! A server that requires TLS looks at the first byte before choosing: a TLS record starts
//! with 0x16 (handshake); anything else is left clear, so the engine can answer a plain
//! client with a refusal it understands. A plain client says nothing before the server's
//! challenge, so a connection silent for `SNIFF_WAIT` is taken as clear too (a TLS client
//! sends its ClientHello at once). A client that gets clear bytes in answer to its
//! ClientHello knows the server runs with TLS off, and says so.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::{ClientConnection, Connection, ServerConnection};

use crate::protocol::handshake::{BINDING_LEN, TLS_HANDSHAKE_RECORD};
use crate::protocol::session::TX_DATA_LIMIT;
use crate::tls::{BINDING_LABEL, ClientTls};
/// Encrypted bytes rustls may hold for a socket that is not taking them: what a loop turn
/// queues at most (the session's data limit), plus the records' overhead, so that a turn's
/// output leaves in one write.
const TLS_BUFFER_LIMIT: usize = TX_DATA_LIMIT + 64 * 1024;
/// How long a server waits for a first byte before taking the client as a plain one.
pub const SNIFF_WAIT: Duration = Duration::from_secs(1);

/// Why a TLS connection failed, carried inside an `io::Error` to the tunnel's close reason.
#[derive(Debug)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

fn failure(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(msg))
}

/// The TLS failure inside `e`, if it is one.
pub fn tls_failure(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        .map(|f| f.0.as_str())
}

enum Layer {
    /// Server: no byte seen yet; TLS if the first one starts a handshake record, clear if
    /// another comes first or none by `until`.
    Sniff {
        config: Arc<rustls::ServerConfig>,
        until: Instant,
    },
    Tls(Box<Connection>),
    /// Server: the peer spoke first in clear; the engine refuses it.
    Clear,
}

pub struct TlsStream {
    pub sock: TcpStream,
    layer: Layer,
    /// Exported when the handshake completed; taken once by the tunnel.
    binding: Option<[u8; BINDING_LEN]>,
    /// The socket reached end of stream.
    eof: bool,
    is_client: bool,
    /// Client: nothing received yet (the first byte tells a server in clear apart).
    first_read: bool,
}

impl TlsStream {
    pub fn server(sock: TcpStream, config: Arc<rustls::ServerConfig>, now: Instant) -> TlsStream {
        TlsStream {
            sock,
            layer: Layer::Sniff {
                config,
                until: now + SNIFF_WAIT,
            },
            binding: None,
            eof: false,
            is_client: false,
            first_read: false,
        }
    }

    /// A client's connection, made before its socket is handed over (it can fail).
    pub fn client_connection(tls: &ClientTls) -> io::Result<ClientConnection> {
        let mut conn = ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
            .map_err(|e| failure(format!("TLS: {e}")))?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(conn)
    }

    pub fn client(sock: TcpStream, conn: ClientConnection) -> TlsStream {
        TlsStream {
            sock,
            layer: Layer::Tls(Box::new(conn.into())),
            binding: None,
            eof: false,
            is_client: true,
            first_read: true,
        }
    }

    /// The channel binding, once, as soon as the handshake has completed.
    pub fn take_binding(&mut self) -> Option<[u8; BINDING_LEN]> {
        self.binding.take()
    }

    /// Read plaintext: as much as fits in `buf` or is available without blocking. A short
    /// read means the socket is drained, unless `to_eof` (the peer has closed its end: read
    /// on to the end of stream). `Ok(0)` is end of stream.
    pub fn read(&mut self, buf: &mut [u8], to_eof: bool) -> io::Result<usize> {
        let mut filled = 0;
        // The last socket read was short: the socket is drained, no need to ask again.
        let mut drained = false;
        loop {
            let conn = match &mut self.layer {
                Layer::Sniff { .. } => {
                    self.sniff()?;
                    continue;
                }
                Layer::Clear => return self.sock.read(buf),
                Layer::Tls(conn) => conn,
            };
            match conn.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled), // close_notify
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained => {
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without close_notify: the protocol's own
                // framing says whether anything was cut short. During the handshake there
                // is nothing to frame: that is said below.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !conn.is_handshaking() => {
                    return Ok(filled);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                if conn.is_handshaking() {
                    return Err(failure(if self.is_client {
                        "the server closed the connection during the TLS handshake \
                         (does it run with TLS=off?)"
                            .to_string()
                    } else {
                        "the client closed the connection during the TLS handshake".to_string()
                    }));
                }
                return Ok(filled);
            }
            if self.first_read {
                let mut first = [0u8; 1];
                match self.sock.peek(&mut first) {
                    Ok(1) if first[0] == crate::protocol::handshake::MAGIC[0] => {
                        return Err(failure(
                            "the server answered in clear: it runs with TLS=off (turn TLS on \
                             there, or run this client with --tls off)"
                                .to_string(),
                        ));
                    }
                    Ok(_) => self.first_read = false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let mut sock = ShortRead {
                sock: &mut self.sock,
                short: false,
            };
            match conn.read_tls(&mut sock) {
                Ok(0) => self.eof = true,
                Ok(_) => drained = sock.short && !to_eof,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => {
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            let was_handshaking = conn.is_handshaking();
            if let Err(e) = conn.process_new_packets() {
                // rustls queued an alert telling the peer why: send it, best effort.
                let _ = flush_tls(conn, &mut self.sock);
                return Err(failure(format!("TLS: {e}")));
            }
            if was_handshaking && !conn.is_handshaking() {
                let binding = conn
                    .export_keying_material([0u8; BINDING_LEN], BINDING_LABEL, None)
                    .map_err(|e| failure(format!("TLS: cannot export the channel binding: {e}")))?;
                self.binding = Some(binding);
            }
            // Handshake messages (or a key update) to answer with.
            flush_tls(conn, &mut self.sock)?;
        }
    }

    /// Server: decide from the first byte whether the peer speaks TLS.
    fn sniff(&mut self) -> io::Result<()> {
        let Layer::Sniff { config, .. } = &self.layer else {
            return Ok(());
        };
        let mut first = [0u8; 1];
        let n = loop {
            match self.sock.peek(&mut first) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.layer = if n == 1 && first[0] == TLS_HANDSHAKE_RECORD {
            let mut conn = ServerConnection::new(Arc::clone(config))
                .map_err(|e| failure(format!("TLS: {e}")))?;
            conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
            Layer::Tls(Box::new(conn.into()))
        } else {
            // End of stream, or clear bytes: either way the engine reads them as they are.
            Layer::Clear
        };
        Ok(())
    }

    /// When a silent connection is taken as clear, while the server still waits to see.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.layer {
            Layer::Sniff { until, .. } => Some(until),
            _ => None,
        }
    }

    /// The wait for a first byte is over: take the client as a plain one. True when it was.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.layer {
            Layer::Sniff { until, .. } if until <= now => {
                self.layer = Layer::Clear;
                true
            }
            _ => false,
        }
    }

    /// Take plaintext to encrypt; returns how much was taken (`WouldBlock` when rustls's
    /// buffer is full and the socket takes nothing). The records wait for `flush`, so that
    /// what a loop turn queues leaves in one write. Before the server knows what its peer
    /// speaks, nothing is taken.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let conn = match &mut self.layer {
            Layer::Sniff { .. } => return Err(io::ErrorKind::WouldBlock.into()),
            Layer::Clear => return self.sock.write(buf),
            Layer::Tls(conn) => conn,
        };
        let n = conn.writer().write(buf)?;
        if n > 0 {
            return Ok(n);
        }
        // The buffer is full: make room, then take what fits.
        flush_tls(conn, &mut self.sock)?;
        match conn.writer().write(buf)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    /// Write the encrypted bytes rustls holds until the socket refuses. `Ok` either way.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.layer {
            Layer::Tls(conn) => flush_tls(conn, &mut self.sock),
            _ => Ok(()),
        }
    }

    /// Encrypted bytes still wait for the socket.
    pub fn has_pending(&self) -> bool {
        matches!(&self.layer, Layer::Tls(conn) if conn.wants_write())
    }
}

/// Write what `conn` holds for the socket until it refuses (`Ok` then too).
fn flush_tls(conn: &mut Connection, sock: &mut TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as rustls reads it, noting whether a read returned less than was asked:
/// then the socket is drained for now, and asking again would only return `WouldBlock`.
struct ShortRead<'a> {
    sock: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}
