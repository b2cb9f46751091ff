//! A tunnel endpoint, the I/O half: its transport, read buffer, readiness and timers. The
//! protocol half is its `Session`; `drive.rs` is the loop's work on the two together.

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::buffer::Buf;
use crate::net::relay::ByteCount;
use crate::net::splice::Pipe;
use crate::net::transport::Transport;
use crate::protocol::frame::{LONG_HEADER_LEN, MAX_FRAME};
use crate::protocol::session::{DGRAM_TX_LIMIT, Session, Transmit};

/// Read buffer: room for several maximum frames per read system call.
pub const RX_CAP: usize = 1024 * 1024 + MAX_FRAME;

pub struct Tunnel {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The protocol: handshake, streams (their handles are slab keys), deadlines.
    pub session: Session<usize>,
    pub rx: Buf,
    /// The pipe holding the payload the session queued with `queue_payload`, if any.
    pub out_pipe: Option<Pipe>,
    /// The socket may hold unread bytes (a read stopped early).
    pub readable: bool,
    /// The peer signalled end of input or an error: read until EOF.
    pub read_closed_hint: bool,
    /// Queued for a flush at the end of this loop turn.
    pub dirty: bool,
    /// Relays waiting for room in the session's output queue.
    pub blocked: Vec<usize>,
    /// Read only up to the next long header: the payload behind it may be spliced.
    pub header_only: bool,
    /// When the tunnel's one pending timer fires.
    pub tick_at: Option<Instant>,
    /// When to return the buffers' memory, if they are empty then.
    pub release_at: Option<Instant>,
    /// Bytes of the transport's plaintext, both ways (frame headers included).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What the tunnel's streams that ended moved (live ones count in their relays).
    pub retired: ByteCount,
    /// When the handshake completed: the wall clock for the API, the monotonic clock for rates.
    pub established_at: Option<(SystemTime, Instant)>,
    /// Whether the datagrams it carries in are shed, from the kernel's queue as last read.
    shed_in: Shed,
    /// The loop turn in which a write before the turn's end left output the kernel did not
    /// take: no more such writes in that turn.
    stalled_at: Option<Instant>,
}

/// The most a stream's frame waits behind, each way, when datagrams flood a tunnel faster
/// than the far role takes them. Without a bound a flood fills the kernel's buffers
/// (megabytes each way, autotuned) and every stream's frames wait behind it; with it the
/// datagrams beyond are dropped (as `tunnel_full`) instead.
///
/// Sending side: the kernel refuses writes while it holds [`UNSENT_LIMIT`] unsent, so the
/// session's output fills, and past its [`DGRAM_TX_LIMIT`] it takes no more datagrams; the
/// two together are this limit, and no system call asks for the queue's length (under TLS
/// the records rustls holds, up to its own buffer limit, come on top). Receiving side: while
/// the kernel holds this much unread, the datagrams read are dropped.
pub const DGRAM_KERNEL_LIMIT: usize = 1024 * 1024;

/// What the kernel may hold of a tunnel unsent before it refuses writes (bytes sent and not
/// yet acknowledged do not count): [`DGRAM_KERNEL_LIMIT`] less the session's own queue.
pub const UNSENT_LIMIT: usize = DGRAM_KERNEL_LIMIT - DGRAM_TX_LIMIT;

/// The tunnel's receive queue against [`DGRAM_KERNEL_LIMIT`], read at most once per loop
/// turn, and only while datagrams come out of the tunnel.
#[derive(Clone, Copy, Default)]
struct Shed {
    at: Option<Instant>,
    over: bool,
}

impl Shed {
    fn over(&mut self, now: Instant, read: impl FnOnce() -> Option<usize>) -> bool {
        if self.at != Some(now) {
            self.at = Some(now);
            self.over = read().is_some_and(|n| n >= DGRAM_KERNEL_LIMIT);
        }
        self.over
    }
}

impl Tunnel {
    pub fn new(transport: Transport, peer: SocketAddr, session: Session<usize>) -> Tunnel {
        if let Err(e) = transport.limit_unsent(UNSENT_LIMIT) {
            log::debug!("tunnel with {peer}: no bound on the kernel's unsent bytes: {e}");
        }
        Tunnel {
            transport,
            peer,
            session,
            rx: Buf::new(RX_CAP),
            out_pipe: None,
            readable: false,
            read_closed_hint: false,
            dirty: false,
            blocked: Vec::new(),
            header_only: false,
            tick_at: None,
            release_at: None,
            bytes_in: 0,
            bytes_out: 0,
            retired: ByteCount::default(),
            established_at: None,
            shed_in: Shed::default(),
            stalled_at: None,
        }
    }

    /// Whether a write before the end of turn `now` may make room for datagrams: none
    /// has stalled in this turn.
    pub fn may_write_early(&self, now: Instant) -> bool {
        self.stalled_at != Some(now)
    }

    /// An early write of turn `now` is done: what is left unwritten marks the turn stalled.
    pub fn wrote_early(&mut self, now: Instant) {
        if self.session.queued() > 0 {
            self.stalled_at = Some(now);
        }
    }

    /// Whether datagrams out of this tunnel are to be dropped: the kernel holds
    /// [`DGRAM_KERNEL_LIMIT`] of it unread, so this role is behind.
    pub fn sheds_incoming(&mut self, now: Instant) -> bool {
        // The read these datagrams came from emptied the socket: nothing waits unread.
        if !self.readable {
            return false;
        }
        let transport = &self.transport;
        self.shed_in.over(now, || transport.unread_bytes())
    }

    /// Queue this tunnel (slab key `key`) for the end-of-turn flush in `dirty`.
    pub fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    /// One read into `rx`: `Ok((n, room))` with the bytes read and the room offered (a read
    /// that filled less than the room drained the socket). `Ok((0, _))` is end of stream.
    pub(crate) fn read_some(&mut self) -> io::Result<(usize, usize)> {
        let room = self.rx.room(MAX_FRAME);
        let limit = if self.header_only {
            LONG_HEADER_LEN.min(room.len())
        } else {
            room.len()
        };
        let room = &mut room[..limit];
        loop {
            match self.transport.read(room, self.read_closed_hint) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(n) => {
                    self.header_only = false;
                    // A TLS handshake that just completed hands its binding to the session
                    // before the session sees a byte of what the handshake protects.
                    if let Some(binding) = self.transport.take_binding() {
                        self.session.bind_channel(binding);
                    }
                    return Ok((n, limit));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Write what the session has queued, its caller-moved payload spliced in its place,
    /// and what the transport holds, until the socket refuses. A pipe whose payload went out lands in `spare`.
    pub(crate) fn flush(&mut self, spare: &mut Option<Pipe>) -> io::Result<()> {
        loop {
            match self.session.poll_transmit() {
                Transmit::Bytes(bytes) => match self.transport.write(bytes) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.session.transmitted(n);
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
                Transmit::Payload(n) => {
                    let (Some(pipe), Some(sock)) = (&self.out_pipe, self.transport.splice_socket())
                    else {
                        return Err(io::Error::other("a spliced payload without its pipe"));
                    };
                    match pipe.drain_to(sock, n) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(m) => {
                            self.bytes_out += m as u64;
                            if self.session.payload_transmitted(m) {
                                *spare = self.out_pipe.take();
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Transmit::Idle => return self.transport.flush(),
            }
        }
    }
}
