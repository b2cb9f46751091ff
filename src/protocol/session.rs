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

use super::close::CloseReason;
use super::flow::Flow;
use super::frame::{self, Frame, HEADER_LEN, LONG_HEADER_LEN, MAX_LONG_PAYLOAD, MAX_PAYLOAD, kind};
use super::handshake::{self, Accept, Challenge, Hello, NONCE_LEN, PreambleCheck};
use super::streams::Streams;
use crate::buffer::Buf;

/// The receive window per stream each side announces.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// The application stops queueing data once this much waits for the socket.
pub const TX_DATA_LIMIT: usize = 1024 * 1024;
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
}

/// Frames waiting for the socket: bytes, and possibly a payload the caller moves itself,
/// due after `tx`, with what was queued meanwhile in `after`.
struct Out {
    tx: Buf,
    external: usize,
    after: Buf,
}

impl Out {
    fn queued(&self) -> usize {
        self.tx.len() + self.external + self.after.len()
    }

    fn tail(&mut self) -> &mut Buf {
        if self.external > 0 {
            &mut self.after
        } else {
            &mut self.tx
        }
    }
}

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    Bytes(&'a [u8]),
    /// The caller's own payload of this many bytes is due now (see `queue_payload`).
    Payload(usize),
    Idle,
}

/// Up to [`MAX_COALESCE`] consecutive payloads of one stream.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    parts: [&'a [u8]; MAX_COALESCE],
    len: usize,
}

impl<'a> Parts<'a> {
    fn one(p: &'a [u8]) -> Parts<'a> {
        let mut parts = [&[][..]; MAX_COALESCE];
        parts[0] = p;
        Parts { parts, len: 1 }
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.parts[..self.len]
    }

    pub fn total(&self) -> usize {
        self.as_slice().iter().map(|p| p.len()).sum()
    }
}

/// One step of decoding. `Data` is the large variant by design: it is returned by value
/// once per batch of frames, and boxing it would allocate on the hottest path.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Input<'a, H> {
    /// Nothing more can be done with these bytes: read more.
    NeedMore,
    /// Payload for stream `id`, already counted against its window: write it to the
    /// destination (or keep it) and report what the destination took with `delivered`.
    Data {
        handle: H,
        id: u32,
        parts: Parts<'a>,
    },
    Event(Event<'a, H>),
}

/// What the peer did, for the application to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a, H> {
    /// The handshake completed.
    Established,
    /// Client: the server requires a token and we have none (it will refuse us).
    TokenRequired,
    /// Client: the server asks for stream `id` to `target`. Answer with `accept_open` or
    /// `refuse_open` before the next input.
    Open { id: u32, target: &'a str },
    /// Server: the client connected the stream's target.
    OpenOk { handle: H, id: u32 },
    /// Server: the client could not; the stream is gone.
    OpenFail { handle: H, id: u32, reason: &'a str },
    /// More send credit: a stream waiting for it may send again.
    Credit { handle: H, id: u32 },
    /// The peer finished its direction of the stream.
    Fin { handle: H, id: u32 },
    /// The peer aborted the stream; it is gone.
    Reset { handle: H, id: u32, reason: &'a str },
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The tunnel is not established, or ending.
    NotOpen,
    StreamLimit,
}

/// Room in the output queue for one DATA frame's payload, filled in place (a read from
/// the source socket straight behind the reserved header).
pub struct DataRoom<'s> {
    buf: &'s mut Buf,
    flow: &'s mut Flow,
    id: u32,
    header_len: usize,
    want: usize,
}

impl DataRoom<'_> {
    /// The payload area: `len()` bytes.
    pub fn buf(&mut self) -> &mut [u8] {
        let (h, w) = (self.header_len, self.want);
        &mut self.buf.room(h + w)[h..h + w]
    }

    pub fn len(&self) -> usize {
        self.want
    }

    pub fn is_empty(&self) -> bool {
        self.want == 0
    }

    /// Queue the first `n` bytes of the payload area as one DATA frame.
    pub fn commit(self, n: usize) {
        debug_assert!(n > 0 && n <= self.want);
        let h = self.header_len;
        let room = self.buf.room(h + self.want);
        if h == LONG_HEADER_LEN {
            frame::put_long_header(room, self.id, n);
        } else {
            frame::put_header(room, kind::DATA, self.id, n);
        }
        self.buf.commit(h + n);
        self.flow.on_sent(n);
    }
}

pub struct Session<H> {
    side: Side,
    phase: Phase,
    /// The handshake completed once (the tunnel was attached).
    attached: bool,
    rx: Rx,
    streams: Streams<Stream<H>>,
    /// Our receive window per stream, and the peer's.
    window: u32,
    peer_window: u32,
    tag: String,
    out: Out,
    since: Instant,
    last_rx: Instant,
    next_ping: Instant,
    ping_interval: Duration,
    handshake_deadline: Instant,
}

impl<H: Copy> Session<H> {
    fn new(side: Side, phase: Phase, window: u32, now: Instant) -> Session<H> {
        Session {
            side,
            phase,
            attached: false,
            rx: Rx::Preamble,
            streams: Streams::new(0),
            window,
            peer_window: 0,
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

    /// A stream can be opened now.
    pub fn can_open(&self) -> bool {
        self.is_established() && self.streams.len() < self.streams.max()
    }

    /// The application's handle of stream `id`.
    pub fn handle(&self, id: u32) -> Option<H> {
        self.streams.get(id).map(|s| s.handle)
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

    // ---- input ----

    /// Decode one step from `buf` (bytes received and not yet consumed). Returns how many
    /// bytes it consumed and what to do. Call again with the rest until `NeedMore`.
    pub fn handle_rx<'a>(&mut self, buf: &'a [u8], now: Instant) -> (usize, Input<'a, H>) {
        let mut at = 0;
        if self.wants_input() {
            self.last_rx = now;
        }
        while self.wants_input() {
            match self.rx {
                Rx::Preamble => match handshake::check_preamble(&buf[at..]) {
                    PreambleCheck::NeedMore => break,
                    PreambleCheck::Ok => {
                        at += handshake::PREAMBLE_LEN;
                        self.rx = Rx::Frames;
                    }
                    PreambleCheck::NotTcpForward => self.fail(CloseReason::NotTcpForward),
                    PreambleCheck::Version(theirs) => {
                        self.refuse(CloseReason::Version { theirs }, now)
                    }
                },
                Rx::Payload { id, remaining } => {
                    let n = remaining.min(buf.len() - at);
                    if n == 0 {
                        break;
                    }
                    let left = remaining - n;
                    self.rx = if left > 0 {
                        Rx::Payload {
                            id,
                            remaining: left,
                        }
                    } else {
                        Rx::Frames
                    };
                    let part = &buf[at..at + n];
                    at += n;
                    // A stream reset meanwhile: its bytes are dropped.
                    if let Some(s) = self.streams.get(id) {
                        let parts = Parts::one(part);
                        return (
                            at,
                            Input::Data {
                                handle: s.handle,
                                id,
                                parts,
                            },
                        );
                    }
                }
                Rx::Frames => match frame::decode(&buf[at..]) {
                    Ok(Some((Frame::Data { id, payload }, n))) if self.is_established() => {
                        at += n;
                        let mut parts = Parts::one(payload);
                        while parts.len < MAX_COALESCE {
                            match frame::decode(&buf[at..]) {
                                Ok(Some((Frame::Data { id: next, payload }, n))) if next == id => {
                                    parts.parts[parts.len] = payload;
                                    parts.len += 1;
                                    at += n;
                                }
                                _ => break,
                            }
                        }
                        if let Some(input) = self.on_data(id, parts) {
                            return (at, input);
                        }
                    }
                    Ok(Some((f, n))) => {
                        at += n;
                        if let Some(event) = self.on_frame(f, now) {
                            return (at, Input::Event(event));
                        }
                    }
                    Ok(None) => {
                        let (used, input) = self.start_payload(&buf[at..]);
                        return (at + used, input);
                    }
                    Err(e) => self.fail(CloseReason::Malformed(format!("malformed frame: {e}"))),
                },
            }
        }
        (at, Input::NeedMore)
    }

    /// The long payload being received, when its stream still exists: `(handle, id, bytes
    /// still to come)`. The caller may move those bytes itself (`payload_spliced`).
    pub fn payload_in_progress(&self) -> Option<(H, u32, usize)> {
        match self.rx {
            Rx::Payload { id, remaining } if self.wants_input() => {
                self.streams.get(id).map(|s| (s.handle, id, remaining))
            }
            _ => None,
        }
    }

    /// The caller moved `n` bytes of the payload in progress toward its destination.
    pub fn payload_spliced(&mut self, n: usize, now: Instant) {
        if let Rx::Payload { id, remaining } = self.rx {
            debug_assert!(n <= remaining);
            let left = remaining.saturating_sub(n);
            self.rx = if left > 0 {
                Rx::Payload {
                    id,
                    remaining: left,
                }
            } else {
                Rx::Frames
            };
            self.last_rx = now;
        }
    }

    fn on_data<'a>(&mut self, id: u32, parts: Parts<'a>) -> Option<Input<'a, H>> {
        // A stream we already closed: its last frames may still be in flight.
        let s = self.streams.get_mut(id)?;
        if s.stage == Stage::Opening {
            return self.violation(format!("stream {id}: data before OPEN_OK"));
        }
        if let Err(v) = s.flow.on_received(parts.total()) {
            return self.violation(format!("stream {id}: {v}"));
        }
        let handle = s.handle;
        Some(Input::Data { handle, id, parts })
    }

    /// `rest` holds the start of a frame. When it is a long DATA frame of an open stream
    /// with much of its payload still to come, pass on what is here and let the rest follow
    /// as it arrives.
    fn start_payload<'a>(&mut self, rest: &'a [u8]) -> (usize, Input<'a, H>) {
        let Some((id, header_len, len)) = frame::partial_data(rest) else {
            return (0, Input::NeedMore);
        };
        let here = rest.len() - header_len;
        if header_len != LONG_HEADER_LEN || len - here < STREAM_IN_MIN || !self.is_established() {
            return (0, Input::NeedMore);
        }
        let Some(s) = self.streams.get_mut(id) else {
            return (0, Input::NeedMore);
        };
        if s.stage != Stage::Open {
            return (0, Input::NeedMore); // decoded whole, with the usual checks
        }
        if let Err(v) = s.flow.on_received(len) {
            self.fail(CloseReason::Violation(format!("stream {id}: {v}")));
            return (0, Input::NeedMore);
        }
        let handle = s.handle;
        self.rx = Rx::Payload {
            id,
            remaining: len - here,
        };
        if here == 0 {
            return (rest.len(), Input::NeedMore);
        }
        let parts = Parts::one(&rest[header_len..]);
        (rest.len(), Input::Data { handle, id, parts })
    }

    fn on_frame<'a>(&mut self, f: Frame<'a>, now: Instant) -> Option<Event<'a, H>> {
        match self.phase {
            Phase::Established => self.on_stream_frame(f),
            Phase::AwaitHello { nonce } => self.on_hello(f, nonce, now),
            Phase::AwaitChallenge { .. } | Phase::AwaitAccept { .. } => {
                self.on_server_handshake(f, now)
            }
            Phase::Closing { .. } | Phase::Closed { .. } => None,
        }
    }

    fn on_stream_frame<'a>(&mut self, f: Frame<'a>) -> Option<Event<'a, H>> {
        let server = matches!(self.side, Side::Server(_));
        match f {
            // Decoded with its neighbours in `handle_rx`.
            Frame::Data { .. } => None,
            Frame::Credit { id, bytes } => {
                let s = self.streams.get_mut(id)?;
                if let Err(v) = s.flow.on_credit(bytes) {
                    return self.violation(format!("stream {id}: {v}"));
                }
                let handle = s.handle;
                Some(Event::Credit { handle, id })
            }
            Frame::Fin { id } => {
                let s = self.streams.get_mut(id)?;
                if s.stage == Stage::Opening {
                    return self.violation(format!("stream {id}: FIN before OPEN_OK"));
                }
                if let Err(v) = s.flow.on_fin_received() {
                    return self.violation(format!("stream {id}: {v}"));
                }
                let handle = s.handle;
                Some(Event::Fin { handle, id })
            }
            Frame::Reset { id, reason } => {
                let s = self.streams.remove(id)?;
                Some(Event::Reset {
                    handle: s.handle,
                    id,
                    reason,
                })
            }
            Frame::Ping(v) => {
                self.queue_small(kind::PONG, 0, &v.to_be_bytes());
                None
            }
            Frame::Pong(_) => None,
            Frame::GoAway(reason) => {
                self.fail(CloseReason::GoAway(reason.to_string()));
                None
            }
            Frame::Open { .. } if server => self.violation("client sent OPEN".into()),
            Frame::Open { id, target } => {
                if self.streams.contains(id) {
                    return self.violation(format!("protocol violation: stream {id} opened twice"));
                }
                Some(Event::Open { id, target })
            }
            Frame::OpenOk { .. } if !server => self.violation("server sent OPEN_OK".into()),
            Frame::OpenOk { id } => {
                let s = self.streams.get_mut(id)?;
                if s.stage != Stage::Opening {
                    return self.violation(format!("stream {id}: OPEN_OK twice"));
                }
                s.stage = Stage::Open;
                let handle = s.handle;
                Some(Event::OpenOk { handle, id })
            }
            Frame::OpenFail { .. } if !server => self.violation("server sent OPEN_FAIL".into()),
            Frame::OpenFail { id, reason } => {
                if self.streams.get(id)?.stage != Stage::Opening {
                    return self.violation(format!("stream {id}: OPEN_FAIL after open"));
                }
                let s = self.streams.remove(id)?;
                Some(Event::OpenFail {
                    handle: s.handle,
                    id,
                    reason,
                })
            }
            Frame::Challenge(_) | Frame::Hello(_) | Frame::Accept(_) | Frame::Refuse(_) => {
                self.violation("handshake frame on an established tunnel".into())
            }
        }
    }

    /// Server: the client's hello decides whether it is served.
    fn on_hello<'a>(
        &mut self,
        f: Frame<'a>,
        nonce: [u8; NONCE_LEN],
        now: Instant,
    ) -> Option<Event<'a, H>> {
        let Side::Server(params) = &self.side else {
            return None;
        };
        let params = Arc::clone(params);
        let Frame::Hello(payload) = f else {
            return self.violation("protocol violation: expected HELLO".into());
        };
        let hello = match Hello::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                self.fail(CloseReason::Malformed(format!("malformed HELLO: {e}")));
                return None;
            }
        };
        let token = params.token.as_deref();
        let refusal = if !hello
            .tag
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace())
        {
            Some(CloseReason::InvalidTag)
        } else {
            match (token, &hello.proof) {
                (None, _) => None,
                (Some(_), None) => Some(CloseReason::AuthFailed(
                    "authentication failed: the server requires a token",
                )),
                (Some(token), Some(proof)) => (!handshake::verify(token, &nonce, hello.tag, proof))
                    .then_some(CloseReason::AuthFailed(
                        "authentication failed: wrong token",
                    )),
            }
        };
        if let Some(reason) = refusal {
            self.refuse(reason, now);
            return None;
        }
        self.establish(now, params.heartbeat, hello.window, params.max_streams);
        self.tag = hello.tag.to_string();
        let accept = Accept {
            window: self.window,
            max_streams: params.max_streams as u32,
            heartbeat_ms: params.heartbeat.as_millis() as u32,
            proof: token.map(|t| handshake::server_proof(t, &hello.nonce, &nonce, hello.tag)),
        }
        .encode();
        self.queue(&Frame::Accept(&accept));
        Some(Event::Established)
    }

    /// Client: the server's challenge, then its accept (or refusal).
    fn on_server_handshake<'a>(&mut self, f: Frame<'a>, now: Instant) -> Option<Event<'a, H>> {
        let Side::Client(params) = &self.side else {
            return None;
        };
        let params = Arc::clone(params);
        let token = params.token.as_deref();
        let tag = params.tag.as_str();
        match (&self.phase, f) {
            (&Phase::AwaitChallenge { nonce }, Frame::Challenge(p)) => {
                let ch = match Challenge::decode(p) {
                    Ok(ch) => ch,
                    Err(e) => {
                        self.fail(CloseReason::Malformed(format!("malformed CHALLENGE: {e}")));
                        return None;
                    }
                };
                let hello = Hello {
                    window: self.window,
                    tag,
                    nonce,
                    proof: token.map(|t| handshake::proof(t, &ch.nonce, tag)),
                }
                .encode();
                self.push(&handshake::preamble());
                self.queue(&Frame::Hello(&hello));
                self.phase = Phase::AwaitAccept {
                    client_nonce: nonce,
                    server_nonce: ch.nonce,
                };
                (ch.auth_required && token.is_none()).then_some(Event::TokenRequired)
            }
            (
                &Phase::AwaitAccept {
                    client_nonce,
                    server_nonce,
                },
                Frame::Accept(p),
            ) => {
                let a = match Accept::decode(p) {
                    Ok(a) => a,
                    Err(e) => {
                        self.fail(CloseReason::Malformed(format!("malformed ACCEPT: {e}")));
                        return None;
                    }
                };
                // With a token the server must prove it too: an impostor would otherwise get
                // a client that connects wherever it is told, inside the private network.
                if let Some(t) = token {
                    let proven = a.proof.is_some_and(|proof| {
                        handshake::verify_server(t, &client_nonce, &server_nonce, tag, &proof)
                    });
                    if !proven {
                        self.fail(CloseReason::ServerAuthFailed);
                        return None;
                    }
                }
                let heartbeat = Duration::from_millis(u64::from(a.heartbeat_ms));
                self.establish(now, heartbeat, a.window, a.max_streams as usize);
                self.tag = tag.to_string();
                Some(Event::Established)
            }
            (_, Frame::Refuse(reason)) => {
                self.fail(CloseReason::Refused(reason.to_string()));
                None
            }
            (_, other) => self.violation(format!(
                "protocol violation during the handshake: unexpected {other:?}"
            )),
        }
    }

    fn establish(&mut self, now: Instant, heartbeat: Duration, peer_window: u32, max: usize) {
        self.phase = Phase::Established;
        self.attached = true;
        self.peer_window = peer_window;
        self.streams.set_max(max);
        self.last_rx = now;
        self.ping_interval = heartbeat;
        self.next_ping = now + heartbeat;
    }

    // ---- the application's calls ----

    /// Server: open a stream to `target` for `handle`; OPEN is queued. Returns its id.
    pub fn open_stream(&mut self, handle: H, target: &str) -> Result<u32, OpenError> {
        if !self.is_established() {
            return Err(OpenError::NotOpen);
        }
        let stream = self.new_stream(handle, Stage::Opening);
        let id = self
            .streams
            .open(stream)
            .map_err(|_| OpenError::StreamLimit)?;
        if !self.queue(&Frame::Open { id, target }) {
            self.streams.remove(id);
            return Err(OpenError::NotOpen);
        }
        Ok(id)
    }

    /// Client: take the stream the server opened (after `Event::Open`). Data for it may
    /// arrive before `stream_connected`; it is handed out to be kept.
    pub fn accept_open(&mut self, id: u32, handle: H) -> Result<(), &'static str> {
        let stream = self.new_stream(handle, Stage::Connecting);
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

    /// Room for one DATA frame of stream `id` of up to `want` bytes (within its credit), in
    /// place in the output queue. None when there is no credit or no room: wait for
    /// `Event::Credit` or a drained queue.
    pub fn data_room(&mut self, id: u32, want: usize) -> Option<DataRoom<'_>> {
        if !self.tx_has_room() {
            return None;
        }
        let s = self.streams.get_mut(id)?;
        let want = want.min(s.flow.send_credit()).min(MAX_LONG_PAYLOAD);
        if want == 0 {
            return None;
        }
        let header_len = if want > MAX_PAYLOAD {
            LONG_HEADER_LEN
        } else {
            HEADER_LEN
        };
        let buf = self.out.tail();
        if buf.room(header_len + want).len() < header_len + want {
            return None;
        }
        Some(DataRoom {
            buf,
            flow: &mut s.flow,
            id,
            header_len,
            want,
        })
    }

    /// A long payload may be queued with `queue_payload` now.
    pub fn can_queue_payload(&self) -> bool {
        self.tx_has_room() && self.out.external == 0
    }

    /// Queue a long DATA header for `n` payload bytes of stream `id` that the caller moves
    /// itself when `poll_transmit` says `Payload`. `n` must be within the stream's credit.
    pub fn queue_payload(&mut self, id: u32, n: usize) -> bool {
        if !self.can_queue_payload() || n == 0 || n > MAX_LONG_PAYLOAD {
            return false;
        }
        let Some(s) = self.streams.get_mut(id) else {
            return false;
        };
        if n > s.flow.send_credit() {
            return false;
        }
        let mut header = [0u8; LONG_HEADER_LEN];
        frame::put_long_header(&mut header, id, n);
        if !self.push(&header) {
            return false;
        }
        if let Some(s) = self.streams.get_mut(id) {
            s.flow.on_sent(n);
        }
        self.out.external = n;
        true
    }

    /// Our direction of stream `id` ends: FIN is queued.
    pub fn finish(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(id)
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
        if let Some(s) = self.streams.get_mut(id)
            && let Some(credit) = s.flow.on_delivered(n)
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

    /// End the tunnel now for a reason the caller saw (an I/O error, say).
    pub fn close(&mut self, reason: CloseReason) {
        self.fail(reason);
    }

    // ---- output ----

    pub fn poll_transmit(&self) -> Transmit<'_> {
        if !self.out.tx.is_empty() {
            Transmit::Bytes(self.out.tx.data())
        } else if self.out.external > 0 {
            Transmit::Payload(self.out.external)
        } else {
            Transmit::Idle
        }
    }

    /// `n` bytes of `Transmit::Bytes` went out.
    pub fn transmitted(&mut self, n: usize) {
        self.out.tx.consume(n);
    }

    /// `n` bytes of the caller's payload went out. True once all of it did.
    pub fn payload_transmitted(&mut self, n: usize) -> bool {
        debug_assert!(n <= self.out.external);
        self.out.external = self.out.external.saturating_sub(n);
        if self.out.external > 0 {
            return false;
        }
        std::mem::swap(&mut self.out.tx, &mut self.out.after);
        true
    }

    /// The output queue's memory is held.
    pub fn buffers_allocated(&self) -> bool {
        self.out.tx.is_allocated() || self.out.after.is_allocated()
    }

    /// Return the output queue's memory, if it is empty.
    pub fn release_buffers(&mut self) {
        self.out.tx.release();
        self.out.after.release();
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
    pub fn dead_after(&self) -> Duration {
        self.ping_interval * DEAD_AFTER_PINGS
    }

    // ---- internals ----

    fn new_stream(&self, handle: H, stage: Stage) -> Stream<H> {
        Stream {
            handle,
            flow: Flow::new(self.peer_window, self.window),
            stage,
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

    /// Queue encoded bytes; a peer that let the queue fill to its cap is cut off.
    fn push(&mut self, bytes: &[u8]) -> bool {
        if matches!(self.phase, Phase::Closed { .. }) {
            return false;
        }
        let queued = self.out.queued();
        if queued + bytes.len() <= TX_CAP && self.out.tail().push(bytes) {
            return true;
        }
        self.fail(CloseReason::PeerNotReading { queued });
        false
    }

    fn queue(&mut self, f: &Frame<'_>) -> bool {
        let mut tmp = Vec::new();
        frame::encode(f, &mut tmp);
        self.push(&tmp)
    }

    /// Queue a frame without a payload or with a small fixed one, without allocating.
    fn queue_small(&mut self, kind: u8, id: u32, payload: &[u8]) -> bool {
        let mut tmp = [0u8; HEADER_LEN + 8];
        debug_assert!(payload.len() <= 8);
        frame::put_header(&mut tmp, kind, id, payload.len());
        tmp[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.push(&tmp[..HEADER_LEN + payload.len()])
    }
}

#[cfg(test)]
mod tests;
