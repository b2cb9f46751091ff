//! A tunnel endpoint: the socket to the peer, its read and write buffers, the handshake
//! phase, the stream table and the heartbeat clock.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::buffer::Buf;
use crate::protocol::frame::{self, Frame, HEADER_LEN, LONG_HEADER_LEN, MAX_FRAME};
use crate::protocol::handshake::NONCE_LEN;
use crate::protocol::streams::Streams;
use crate::sys::Pipe;

/// Read buffer: room for several maximum frames per read system call.
pub const RX_CAP: usize = 1024 * 1024 + MAX_FRAME;
/// Relays stop reading into the write buffer once it holds this much.
pub const TX_DATA_LIMIT: usize = 1024 * 1024;
/// Hard cap of the write buffer. Data stays under `TX_DATA_LIMIT` plus one read; the rest is
/// headroom for control frames, which are never held back behind data. A peer that stops
/// reading until even that is full is cut off.
pub const TX_CAP: usize = 4 * 1024 * 1024;
/// A tunnel that has received nothing for this many ping intervals is dead.
pub const DEAD_AFTER_PINGS: u32 = 3;
/// The handshake must complete within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A tunnel that is closing gets this long to flush its last frames.
pub const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Client: the TCP connect is in progress.
    Connecting,
    /// Server: challenge sent, waiting for the client's preamble and hello.
    AwaitHello {
        nonce: [u8; NONCE_LEN],
    },
    /// Client: waiting for the server's preamble and challenge.
    AwaitChallenge,
    /// Client: hello sent, waiting for accept or refuse; the nonces check the server's proof.
    AwaitAccept {
        client_nonce: [u8; NONCE_LEN],
        server_nonce: [u8; NONCE_LEN],
    },
    Established,
}

/// A long DATA payload being passed on as it arrives, rather than buffered whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InData {
    pub id: u32,
    /// Payload bytes still in the socket.
    pub remaining: usize,
}

/// A long payload waiting in a pipe, spliced into the socket once `tx` (which ends with its
/// header) is written. Frames queued meanwhile wait in `tx_after`.
#[derive(Debug)]
pub struct OutSplice {
    pub pipe: Pipe,
    /// Payload bytes still in the pipe.
    pub remaining: usize,
}

pub struct Tunnel {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub phase: Phase,
    pub preamble_ok: bool,
    pub tag: String,
    pub rx: Buf,
    pub tx: Buf,
    /// The payload spliced after `tx`, if any.
    pub out_splice: Option<OutSplice>,
    /// What is queued behind `out_splice`.
    pub tx_after: Buf,
    /// A pipe whose payload went out, to return to the pool.
    pub spare_pipe: Option<Pipe>,
    /// Stream id -> slab key of the relay (or pending open).
    pub streams: Streams<usize>,
    /// The peer's receive window per stream.
    pub peer_window: u32,
    pub last_rx: Instant,
    pub next_ping: Instant,
    /// Ping interval, set when the handshake completes (the server's `HEARTBEAT`).
    pub ping_interval: Duration,
    /// Handshake or linger deadline.
    pub deadline: Option<Instant>,
    /// When the tunnel's one pending timer fires.
    pub tick_at: Option<Instant>,
    /// When to return the buffers' memory, if they are empty then.
    pub release_at: Option<Instant>,
    /// Set when the tunnel is flushing its last frames before closing, with the reason.
    pub closing: Option<String>,
    /// The socket may hold unread bytes (a read stopped early).
    pub readable: bool,
    /// The peer signalled end of input or an error: read until EOF.
    pub read_closed_hint: bool,
    /// Queued for a flush at the end of this loop turn.
    pub dirty: bool,
    /// Relays waiting for room in `tx`.
    pub blocked: Vec<usize>,
    /// The long payload in progress, if any.
    pub in_data: Option<InData>,
    /// Read only up to the next long header: the payload behind it may be spliced.
    pub header_only: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub since: Instant,
}

impl Tunnel {
    pub fn new(sock: TcpStream, peer: SocketAddr, phase: Phase, now: Instant) -> Tunnel {
        Tunnel {
            sock,
            peer,
            phase,
            preamble_ok: false,
            tag: String::new(),
            rx: Buf::new(RX_CAP),
            tx: Buf::new(TX_CAP),
            out_splice: None,
            tx_after: Buf::new(TX_CAP),
            spare_pipe: None,
            streams: Streams::new(0),
            peer_window: 0,
            last_rx: now,
            next_ping: now + crate::config::DEFAULT_HEARTBEAT,
            ping_interval: crate::config::DEFAULT_HEARTBEAT,
            deadline: Some(now + HANDSHAKE_TIMEOUT),
            tick_at: None,
            release_at: None,
            closing: None,
            readable: false,
            read_closed_hint: false,
            dirty: false,
            blocked: Vec::new(),
            in_data: None,
            header_only: false,
            bytes_in: 0,
            bytes_out: 0,
            since: now,
        }
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Enter the established phase with the negotiated heartbeat.
    pub fn establish(&mut self, now: Instant, ping_interval: Duration) {
        self.phase = Phase::Established;
        self.deadline = None;
        self.last_rx = now;
        self.ping_interval = ping_interval;
        self.next_ping = now + ping_interval;
    }

    /// Silence after which the tunnel is declared dead.
    pub fn dead_after(&self) -> Duration {
        self.ping_interval * DEAD_AFTER_PINGS
    }

    /// Queue a control frame. Fails only when the peer has stopped reading for so long that
    /// even the headroom is full.
    pub fn send(&mut self, f: &Frame<'_>) -> Result<(), String> {
        let mut tmp = Vec::new();
        frame::encode(f, &mut tmp);
        self.send_raw(&tmp)
    }

    /// Where frames are queued now: behind the spliced payload, if one waits.
    pub fn tail(&mut self) -> &mut Buf {
        if self.out_splice.is_some() {
            &mut self.tx_after
        } else {
            &mut self.tx
        }
    }

    /// Bytes queued for the socket, spliced payload included.
    pub fn queued(&self) -> usize {
        self.tx.len() + self.out_splice.as_ref().map_or(0, |o| o.remaining) + self.tx_after.len()
    }

    /// Queue bytes already encoded.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.queued() + bytes.len() <= TX_CAP && self.tail().push(bytes) {
            Ok(())
        } else {
            Err(format!(
                "peer is not reading: {} bytes queued",
                self.queued()
            ))
        }
    }

    /// Queue a frame without a payload or with a small fixed one, without allocating.
    pub fn send_small(&mut self, kind: u8, id: u32, payload: &[u8]) -> Result<(), String> {
        let mut tmp = [0u8; HEADER_LEN + 8];
        debug_assert!(payload.len() <= 8);
        frame::put_header(&mut tmp, kind, id, payload.len());
        tmp[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.send_raw(&tmp[..HEADER_LEN + payload.len()])
    }

    /// Write queued bytes, and the spliced payload in its place, until the socket refuses.
    /// `Ok(())` also when bytes remain.
    pub fn flush(&mut self) -> io::Result<()> {
        loop {
            while !self.tx.is_empty() {
                match self.sock.write(self.tx.data()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.tx.consume(n);
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(out) = &mut self.out_splice else {
                return Ok(());
            };
            while out.remaining > 0 {
                match out.pipe.drain_to(&self.sock, out.remaining) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        out.remaining -= n;
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            // The payload is out: what waited behind it is next.
            if let Some(out) = self.out_splice.take() {
                self.spare_pipe = Some(out.pipe);
            }
            std::mem::swap(&mut self.tx, &mut self.tx_after);
        }
    }

    /// One read into `rx`: `Ok((n, room))` with the bytes read and the room offered (a read
    /// that filled less than the room drained the socket). `Ok((0, _))` is end of stream.
    pub fn read_some(&mut self) -> io::Result<(usize, usize)> {
        let room = self.rx.room(MAX_FRAME);
        let limit = if self.header_only {
            LONG_HEADER_LEN.min(room.len())
        } else {
            room.len()
        };
        let room = &mut room[..limit];
        let len = room.len();
        loop {
            match self.sock.read(room) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(n) => {
                    self.header_only = false;
                    return Ok((n, len));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
