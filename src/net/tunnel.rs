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
use crate::protocol::session::{Session, Transmit};

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
    /// Whether its datagrams are shed, each way, from the kernel's queues as last read.
    shed_out: Shed,
    shed_in: Shed,
    /// The loop turn in which a write before the turn's end left output the kernel did not
    /// take: no more such writes in that turn.
    stalled_at: Option<Instant>,
}

/// When the kernel holds this many bytes for a tunnel, not yet sent on the sending side or
/// not yet read on the receiving side, datagrams crossing it are dropped (as `tunnel_full`)
/// rather than queued behind those bytes. The session's own [`DGRAM_TX_LIMIT`] bounds only
/// the queue in our memory; without this, a flood the far role cannot keep up with fills
/// the kernel's buffers (megabytes each way, autotuned) and every stream's frames wait
/// behind it.
///
/// [`DGRAM_TX_LIMIT`]: crate::protocol::session::DGRAM_TX_LIMIT
pub const DGRAM_KERNEL_LIMIT: usize = 1024 * 1024;

/// One of a tunnel's kernel queues against [`DGRAM_KERNEL_LIMIT`], read at most once per
/// loop turn, and only while datagrams cross the tunnel that way.
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
            shed_out: Shed::default(),
            shed_in: Shed::default(),
            stalled_at: None,
        }
    }

    /// Whether datagrams into this tunnel are to be dropped: the kernel holds
    /// [`DGRAM_KERNEL_LIMIT`] of it unsent.
    pub fn sheds_outgoing(&mut self, now: Instant) -> bool {
        let transport = &self.transport;
        self.shed_out.over(now, || transport.unsent_bytes())
    }

    /// Whether a write before the end of turn `now` may make room for datagrams: none
    /// has stalled in this turn.
    pub fn may_write_early(&self, now: Instant) -> bool {
        self.stalled_at != Some(now)
    }

    /// An early write of turn `now` is done: the kernel's queue is read again at the next
    /// shedding check, and what is left unwritten marks the turn stalled.
    pub fn wrote_early(&mut self, now: Instant) {
        self.shed_out.at = None;
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
