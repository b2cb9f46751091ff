//! The tunnel engine: one tunnel's protocol, as a state machine without I/O.
//!
//! A `Session` owns both roles' handshakes, the stream table with each stream's windows,
//! credit and half-close state, resets, early data, GOAWAY, and every tunnel deadline
//! (handshake, heartbeat, dead peer, linger). It never touches a socket or reads a clock:
//!
//! - **in**: bytes received, through [`Session::handle_rx`] (decoded one step at a time, so
//!   that payloads are handed out borrowed from the caller's buffer, never copied); the
//!   time, through [`Session::handle_timeout`]; and the application's calls: open, accept
//!   or refuse a stream, data sent ([`Session::data_room`], [`Session::queue_payload`]),
//!   bytes delivered, finish, reset.
//! - **out**: frames to transmit, through [`Session::poll_transmit`]; events, as the
//!   [`Input`]s of `handle_rx`; the next deadline, [`Session::poll_timeout`]; and, once the
//!   tunnel must end, its [`CloseReason`] ([`Session::close_reason`]).
//!
//! A stream opened for a UDP flow is a *datagram stream* ([`Session::open_dgram_stream`]):
//! each DATA frame is one datagram, handed out whole (consecutive ones of a stream as the
//! parts of one input, boundaries kept); it has no window, no credit and no FIN, only
//! RESET ends it. A datagram that finds the output queue over [`DGRAM_TX_LIMIT`] is
//! refused ([`Session::send_datagram`]): the caller drops and counts it. So datagrams never
//! queue without bound and never crowd out a stream's data or a control frame.
//!
//! Long DATA payloads may bypass the engine's memory: [`Session::queue_payload`] queues a
//! header whose payload the caller moves itself (a splice from a pipe), and
//! [`Session::payload_in_progress`] / [`Session::payload_spliced`] let the caller move an
//! incoming one. The engine accounts for those bytes like any others.
//!
//! The order to call things in: after a read, `handle_rx` until it answers
//! [`Input::NeedMore`], acting on each input; after the application's calls,
//! `poll_transmit` until idle; when `poll_timeout` is due, `handle_timeout`; whenever any of
//! these may have ended the tunnel, `close_reason`. A closed session ignores further calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::caps::{CAP_DGRAM, CAP_PROXY};
use super::close::CloseReason;
use super::flow::{Flow, Windows};
use super::frame::{self, Frame, MAX_DATAGRAM, kind};
use super::handshake::{self, BINDING_LEN, Challenge, NONCE_LEN};
use super::proxy::ProxyAddrs;
use super::streams::Streams;
use crate::buffer::Buf;

mod rx;
mod tx;

pub use rx::{Event, Input, Parts};
use tx::Out;
pub use tx::{DataRoom, Transmit};

/// The receive window per stream each side announces.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// The application stops queueing data once this much waits for the socket.
pub const TX_DATA_LIMIT: usize = 1024 * 1024;
/// Datagrams are queued only while less than this waits for the socket: a UDP flood fills
/// a quarter of what a stream's data may, and what it queues is soon sent.
pub const DGRAM_TX_LIMIT: usize = 256 * 1024;
/// Hard cap of what may wait for the socket. Data stays under `TX_DATA_LIMIT` plus one
/// read; the rest is headroom for control frames, which are never held back behind data. A
/// peer that stops reading until even that is full is cut off.
pub const TX_CAP: usize = 4 * 1024 * 1024;
/// A tunnel that has received nothing for this many ping intervals is dead.
pub const DEAD_AFTER_PINGS: u32 = 3;
/// The handshake must complete within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A tunnel that refused its peer gets this long to flush the refusal.
pub const LINGER: Duration = Duration::from_secs(1);
/// Consecutive DATA frames of one stream handed out as one [`Input::Data`].
pub const MAX_COALESCE: usize = 16;
/// A long payload is passed on as it arrives when at least this much of it is still to
/// come; shorter ones are decoded whole.
pub const STREAM_IN_MIN: usize = 64 * 1024;

/// What a server session needs to know.
pub struct ServerParams {
    pub token: Option<Vec<u8>>,
    /// Refuse a client that is not on a TLS session (none bound with `bind_channel`).
    pub require_tls: bool,
    pub max_streams: usize,
    pub heartbeat: Duration,
    pub window: u32,
}

/// What a client session needs to know.
pub struct ClientParams {
    pub token: Option<Vec<u8>>,
    pub tag: String,
    pub window: u32,
}

enum Side {
    Server(Arc<ServerParams>),
    Client(Arc<ClientParams>),
}

/// Where the tunnel is in its life.
#[derive(Debug)]
enum Phase {
    /// Server: challenge sent, waiting for the client's hello.
    AwaitHello {
        nonce: [u8; NONCE_LEN],
    },
    /// Client: waiting for the server's challenge; `nonce` is ours, for the hello.
    AwaitChallenge {
        nonce: [u8; NONCE_LEN],
    },
    /// Client: hello sent; the nonces check the server's proof in its accept.
    AwaitAccept {
        client_nonce: [u8; NONCE_LEN],
        server_nonce: [u8; NONCE_LEN],
    },
    Established,
    /// Flushing a refusal before closing: no more input is read.
    Closing {
        reason: CloseReason,
        deadline: Instant,
    },
    Closed {
        reason: CloseReason,
    },
}

/// What the decoder expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    Preamble,
    Frames,
    /// The rest of a long DATA payload, passed on as it arrives.
    Payload {
        id: u32,
        remaining: usize,
    },
}

/// How far a stream has opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Server: OPEN sent, no OPEN_OK yet. Early data may be sent, none may arrive.
    Opening,
    /// Client: OPEN accepted, the target is being connected. Arriving data waits.
    Connecting,
    Open,
}

struct Stream<H> {
    handle: H,
    flow: Flow,
    stage: Stage,
    /// A datagram stream: no window, no credit, no FIN.
    dgram: bool,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The tunnel is not established, or ending.
    NotOpen,
    StreamLimit,
    /// The client did not announce it understands what the stream needs (a PROXY header,
    /// datagrams): see [`Session::can_open`].
    Unsupported,
}

/// Why [`Session::send_datagram`] did not queue a datagram: the caller drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DgramRefused {
    /// The output queue holds [`DGRAM_TX_LIMIT`] or more: the tunnel is busy.
    TunnelFull,
    /// Empty, or longer than [`MAX_DATAGRAM`].
    BadSize,
    /// No such datagram stream, not open yet (a client before its OPEN_OK), or the tunnel
    /// is not established.
    NotOpen,
}

pub struct Session<H> {
    side: Side,
    phase: Phase,
    /// The handshake completed once (the tunnel was attached).
    attached: bool,
    rx: Rx,
    streams: Streams<Stream<H>>,
    /// Our receive window per stream, and the peer's.
    /// Per stream: the peer's receive window (`send`, from the handshake) and ours.
    windows: Windows,
    tag: String,
    out: Out,
    since: Instant,
    last_rx: Instant,
    next_ping: Instant,
    ping_interval: Duration,
    handshake_deadline: Instant,
    /// The TLS session's channel binding, which both proofs cover; `None` in clear.
    binding: Option<[u8; BINDING_LEN]>,
    /// Server: the capability bits the client announced (`caps::CAPS_PING`).
    peer_caps: u16,
}

impl<H: Copy> Session<H> {
    fn new(side: Side, phase: Phase, window: u32, now: Instant) -> Session<H> {
        Session {
            side,
            phase,
            attached: false,
            rx: Rx::Preamble,
            streams: Streams::new(0),
            windows: Windows {
                send: 0,
                recv: window,
            },
            tag: String::new(),
            out: Out {
                tx: Buf::new(TX_CAP),
                external: 0,
                after: Buf::new(TX_CAP),
            },
            since: now,
            last_rx: now,
            next_ping: now,
            ping_interval: HANDSHAKE_TIMEOUT,
            handshake_deadline: now + HANDSHAKE_TIMEOUT,
            binding: None,
            peer_caps: 0,
        }
    }

    /// A server's session for a client that just connected; `nonce` must be fresh random
    /// bytes. The preamble and challenge are queued at once.
    pub fn server(params: Arc<ServerParams>, nonce: [u8; NONCE_LEN], now: Instant) -> Self {
        let challenge = Challenge {
            auth_required: params.token.is_some(),
            nonce,
        }
        .encode();
        let window = params.window;
        let mut s = Session::new(
            Side::Server(params),
            Phase::AwaitHello { nonce },
            window,
            now,
        );
        s.push(&handshake::preamble());
        s.queue(&Frame::Challenge(&challenge));
        s
    }

    /// A client's session on a freshly connected socket; `nonce` must be fresh random bytes.
    pub fn client(params: Arc<ClientParams>, nonce: [u8; NONCE_LEN], now: Instant) -> Self {
        let window = params.window;
        Session::new(
            Side::Client(params),
            Phase::AwaitChallenge { nonce },
            window,
            now,
        )
    }

    /// The tunnel runs over TLS: both handshake proofs cover `binding`, the session's
    /// exported channel binding. Call it before handing the session any received byte.
    pub fn bind_channel(&mut self, binding: [u8; BINDING_LEN]) {
        self.binding = Some(binding);
    }

    /// Server: the capability bits the client announced (`caps`): `CAP_PROXY` lets streams
    /// of PROXY mappings go to it, `CAP_DGRAM` flows of UDP mappings.
    pub fn peer_caps(&self) -> u16 {
        self.peer_caps
    }

    // ---- queries ----

    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established)
    }

    /// The handshake completed at some point (the tunnel was attached).
    pub fn was_established(&self) -> bool {
        self.attached
    }

    /// Input is still read: not refusing, not closed.
    pub fn wants_input(&self) -> bool {
        !matches!(self.phase, Phase::Closing { .. } | Phase::Closed { .. })
    }

    /// The tag of an established tunnel.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub fn max_streams(&self) -> usize {
        self.streams.max()
    }

    /// A stream can be opened now that needs the capabilities `needs` (`caps` bits: 0 for a
    /// plain stream).
    pub fn can_open(&self, needs: u16) -> bool {
        self.is_established()
            && self.streams.len() < self.streams.max()
            && self.peer_caps & needs == needs
    }

    /// Stream `id` is a datagram stream.
    pub fn is_dgram(&self, id: u32) -> bool {
        self.streams.get(id).is_some_and(|s| s.dgram)
    }

    pub fn stage(&self, id: u32) -> Option<Stage> {
        self.streams.get(id).map(|s| s.stage)
    }

    /// Bytes stream `id` may send now (0 after its FIN, or when it is gone).
    pub fn send_credit(&self, id: u32) -> usize {
        self.streams.get(id).map_or(0, |s| s.flow.send_credit())
    }

    /// Our direction of stream `id` is still open.
    pub fn may_send(&self, id: u32) -> bool {
        self.streams.get(id).is_some_and(|s| s.flow.may_send())
    }

    /// The peer finished stream `id` and all it sent was delivered: shut the destination.
    pub fn recv_complete(&self, id: u32) -> bool {
        self.streams.get(id).is_some_and(|s| s.flow.recv_complete())
    }

    /// Data may be queued: the tunnel is established and its queue below the data limit.
    pub fn tx_has_room(&self) -> bool {
        self.is_established() && self.out.queued() < TX_DATA_LIMIT
    }

    /// Bytes waiting for the socket, the caller's own payload included.
    pub fn queued(&self) -> usize {
        self.out.queued()
    }

    /// Every stream: its id and handle.
    pub fn streams(&self) -> Vec<(u32, H)> {
        self.streams.iter().map(|(id, s)| (id, s.handle)).collect()
    }

    /// Once the tunnel must end: why. The caller closes it and drops the session.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.phase {
            Phase::Closed { reason } => Some(reason),
            Phase::Closing { reason, .. } if self.out.queued() == 0 => Some(reason),
            _ => None,
        }
    }

    // ---- the application's calls ----

    /// Server: open a stream to `target` for `handle`; OPEN is queued, with `proxy` the
    /// PROXY header the client is to write first. Returns its id.
    pub fn open_stream(
        &mut self,
        handle: H,
        target: &str,
        proxy: Option<ProxyAddrs>,
    ) -> Result<u32, OpenError> {
        let needs = if proxy.is_some() { CAP_PROXY } else { 0 };
        self.open(handle, target, proxy, needs)
    }

    /// Server: open a datagram stream to the UDP target `target` for `handle`. Datagrams
    /// may follow at once ([`Session::send_datagram`]). Returns its id.
    pub fn open_dgram_stream(&mut self, handle: H, target: &str) -> Result<u32, OpenError> {
        self.open(handle, target, None, CAP_DGRAM)
    }

    fn open(
        &mut self,
        handle: H,
        target: &str,
        proxy: Option<ProxyAddrs>,
        needs: u16,
    ) -> Result<u32, OpenError> {
        if !self.is_established() {
            return Err(OpenError::NotOpen);
        }
        if self.peer_caps & needs != needs {
            return Err(OpenError::Unsupported);
        }
        let dgram = needs & CAP_DGRAM != 0;
        let stream = self.new_stream(handle, Stage::Opening, dgram);
        let id = self
            .streams
            .open(stream)
            .map_err(|_| OpenError::StreamLimit)?;
        if !self.queue(&Frame::Open {
            id,
            target,
            proxy,
            dgram,
        }) {
            self.streams.remove(id);
            return Err(OpenError::NotOpen);
        }
        Ok(id)
    }

    /// Queue one datagram of datagram stream `id` as one DATA frame. The server may send
    /// from the OPEN on; the client once it answered OPEN_OK.
    pub fn send_datagram(&mut self, id: u32, datagram: &[u8]) -> Result<(), DgramRefused> {
        if datagram.is_empty() || datagram.len() > MAX_DATAGRAM {
            return Err(DgramRefused::BadSize);
        }
        let server = matches!(self.side, Side::Server(_));
        let sendable = self.is_established()
            && self
                .streams
                .get(id)
                .is_some_and(|s| s.dgram && (server || s.stage == Stage::Open));
        if !sendable {
            return Err(DgramRefused::NotOpen);
        }
        if self.out.queued() >= DGRAM_TX_LIMIT {
            return Err(DgramRefused::TunnelFull);
        }
        let mut header = [0u8; frame::HEADER_LEN];
        frame::put_header(&mut header, kind::DATA, id, datagram.len());
        if self.push(&header) && self.push(datagram) {
            Ok(())
        } else {
            Err(DgramRefused::NotOpen)
        }
    }

    /// Client: take the stream the server opened (after `Event::Open`; `dgram` as the event
    /// says). Data for it may arrive before `stream_connected`; it is handed out to be kept.
    pub fn accept_open(&mut self, id: u32, handle: H, dgram: bool) -> Result<(), &'static str> {
        let stream = self.new_stream(handle, Stage::Connecting, dgram);
        self.streams
            .accept(id, stream)
            .map_err(|_| "stream limit reached")
    }

    /// Point stream `id` at another handle.
    pub fn rebind(&mut self, id: u32, handle: H) {
        if let Some(s) = self.streams.get_mut(id) {
            s.handle = handle;
        }
    }

    /// Client: the stream's target is connected; OPEN_OK is queued.
    pub fn stream_connected(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(id)
            && s.stage == Stage::Connecting
        {
            s.stage = Stage::Open;
            self.queue_small(kind::OPEN_OK, id, &[]);
        }
    }

    /// Client: stream `id` cannot be connected; OPEN_FAIL is queued and the stream is gone.
    pub fn refuse_open(&mut self, id: u32, reason: &str) {
        self.streams.remove(id);
        self.queue(&Frame::OpenFail { id, reason });
    }

    /// Our direction of stream `id` ends: FIN is queued.
    pub fn finish(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(id)
            && !s.dgram
            && s.flow.may_send()
        {
            s.flow.on_fin_sent();
            self.queue_small(kind::FIN, id, &[]);
        }
    }

    /// `n` bytes of stream `id` reached the destination; credit is returned in batches.
    pub fn delivered(&mut self, id: u32, n: usize) {
        if n == 0 {
            return;
        }
        let w = self.windows;
        if let Some(s) = self.streams.get_mut(id)
            && !s.dgram
            && let Some(credit) = s.flow.on_delivered(n, w)
        {
            self.queue_small(kind::CREDIT, id, &credit.to_be_bytes());
        }
    }

    /// Abort stream `id`: RESET is queued and the stream is gone.
    pub fn reset(&mut self, id: u32, reason: &str) {
        if self.streams.remove(id).is_some() {
            self.queue(&Frame::Reset { id, reason });
        }
    }

    /// Remove stream `id` if it ended cleanly both ways; true when it did.
    pub fn reap(&mut self, id: u32) -> bool {
        if self.streams.get(id).is_some_and(|s| s.flow.is_done()) {
            self.streams.remove(id);
            return true;
        }
        false
    }

    /// Tell the peer we are leaving.
    pub fn goaway(&mut self, reason: &str) {
        if self.is_established() {
            self.queue(&Frame::GoAway(reason));
        }
    }

    // ---- time ----

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitHello { .. } | Phase::AwaitChallenge { .. } | Phase::AwaitAccept { .. } => {
                Some(self.handshake_deadline)
            }
            Phase::Established => Some(self.next_ping.min(self.last_rx + self.dead_after())),
            Phase::Closing { deadline, .. } => Some(*deadline),
            Phase::Closed { .. } => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::AwaitHello { .. } | Phase::AwaitChallenge { .. } | Phase::AwaitAccept { .. } => {
                if now >= self.handshake_deadline {
                    self.fail(CloseReason::HandshakeTimeout);
                }
            }
            Phase::Established => {
                let silence = self.dead_after();
                if now.saturating_duration_since(self.last_rx) >= silence {
                    self.fail(CloseReason::DeadPeer { silence });
                } else if self.next_ping <= now {
                    self.next_ping = now + self.ping_interval;
                    let stamp = now.saturating_duration_since(self.since).as_nanos() as u64;
                    self.queue_small(kind::PING, 0, &stamp.to_be_bytes());
                }
            }
            Phase::Closing { deadline, reason } => {
                if now >= *deadline {
                    let reason = reason.clone();
                    self.fail(reason);
                }
            }
            Phase::Closed { .. } => {}
        }
    }

    /// Silence after which the tunnel is declared dead.
    fn dead_after(&self) -> Duration {
        self.ping_interval * DEAD_AFTER_PINGS
    }

    // ---- internals ----

    fn new_stream(&self, handle: H, stage: Stage, dgram: bool) -> Stream<H> {
        Stream {
            handle,
            flow: Flow::new(self.windows),
            stage,
            dgram,
        }
    }

    /// End the tunnel at once (the first reason wins).
    fn fail(&mut self, reason: CloseReason) {
        if !matches!(self.phase, Phase::Closed { .. }) {
            self.phase = Phase::Closed { reason };
        }
    }

    fn violation<T>(&mut self, why: String) -> Option<T> {
        self.fail(CloseReason::Violation(why));
        None
    }

    fn malformed<T>(&mut self, why: String) -> Option<T> {
        self.fail(CloseReason::Malformed(why));
        None
    }

    /// Tell the peer why it is refused, then close once that is flushed (or after LINGER).
    fn refuse(&mut self, reason: CloseReason, now: Instant) {
        self.queue(&Frame::Refuse(&reason.to_string()));
        if self.wants_input() {
            self.phase = Phase::Closing {
                reason,
                deadline: now + LINGER,
            };
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
