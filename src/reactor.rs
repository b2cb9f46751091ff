//! The event loop shared by both roles: one `mio::Poll` owns every socket, kept in one
//! `Slab<Entry>` and addressed by its key (the mio `Token`). Timers are a heap of deadlines
//! that sets the poll timeout. Role-specific parts live in `server.rs` and `client.rs`.
//!
//! Data path, per loop turn:
//! 1. events set readiness flags and do the work they allow: a relay reads straight into
//!    its tunnel's write buffer behind reserved frame headers; a tunnel reads a batch of
//!    frames and writes each payload straight to its relay's socket, buffering only what
//!    the socket refuses;
//! 2. relays that could read more are queued and get one more read per turn, round-robin,
//!    so a bulk stream cannot starve an interactive one;
//! 3. every tunnel written to in this turn is flushed once: many streams' frames leave in
//!    one system call.
//!
//! Backpressure: a relay reads only with stream credit and room in its tunnel's write
//! buffer; otherwise it keeps its `readable` flag and is queued again when credit arrives
//! or the buffer drains (edge-triggered readiness gives no second event).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, trace};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::buffer::Buf;
use crate::client::ClientRole;
use crate::protocol::flow::Flow;
use crate::protocol::frame::{
    self, Frame, HEADER_LEN, LONG_HEADER_LEN, MAX_LONG_PAYLOAD, MAX_PAYLOAD, kind,
};
use crate::protocol::handshake::{self, PreambleCheck};
use crate::relay::{Relay, RelayState};
use crate::resolve::Resolver;
use crate::server::ServerRole;
use crate::sys;
use crate::tunnel::{InData, LINGER, OutSplice, TX_DATA_LIMIT, Tunnel};

/// Our receive window per stream, announced in the handshake.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// First allocation of a stream's pending buffer: most streams that ever queue anything
/// queue little, and this stays below the allocator's threshold for mapping pages.
const PENDING_INITIAL: usize = 16 * 1024;
/// A tunnel's buffers are returned this long after they last drained (and refilled on
/// demand): a burst leaves no memory behind, a busy tunnel reallocates once per interval.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// Consecutive DATA frames of one stream written with one system call.
const MAX_COALESCE: usize = 16;
/// A long payload is passed on as it arrives (spliced where possible) when at least this
/// much of it is still in the socket; shorter ones are buffered whole.
const STREAM_IN_MIN: usize = 64 * 1024;
/// A stream's reads are spliced once one filled its request and at least this much credit
/// is open.
const SPLICE_OUT_MIN: usize = 64 * 1024;
/// Size of a splicing pipe: a whole long payload.
const PIPE_SIZE: usize = MAX_LONG_PAYLOAD;
/// Pipes in use or pooled, at most (each is two file descriptors and counts against the
/// user's pipe memory quota); beyond them payloads are copied.
const MAX_PIPES: usize = 32;
/// Empty pipes kept for reuse.
const POOLED_PIPES: usize = 8;
/// After the system refuses a pipe, copy for this long before asking again.
const PIPE_RETRY: Duration = Duration::from_secs(10);
/// A tunnel reads at most this much per turn before others get theirs.
const TUNNEL_READ_BUDGET: usize = 1024 * 1024;

const SIGNAL: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

pub enum Endpoint {
    /// Server: where clients dial in.
    TunnelListener(TcpListener),
    /// Server: a public port.
    PublicListener(crate::server::Public),
    Tunnel(Box<Tunnel>),
    Relay(Relay),
    /// Client: a stream whose target name is being resolved.
    Resolving(crate::client::PendingOpen),
    /// Removed in this turn of the loop; the key is freed when the turn ends (see
    /// [`Reactor::remove`]).
    Closed,
}

/// How a splice of a long payload went.
enum SpliceIn {
    /// This many bytes moved.
    Moved(usize),
    /// The tunnel has nothing more to read now, or it closed.
    Stop,
    /// Read the payload the plain way this time.
    Copy,
}

/// What a new relay carries: its stream, its state and what to log.
pub struct RelaySpec {
    pub tunnel: usize,
    pub id: u32,
    pub state: RelayState,
    pub label: String,
    pub candidates: Vec<SocketAddr>,
    pub deadline: Instant,
    /// The stream's flow-control state and early data, when it existed before the socket.
    pub carried: Option<(Flow, Buf)>,
}

pub struct Entry {
    /// Distinguishes this endpoint from later ones that reuse its key.
    pub generation: u64,
    pub ep: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerTarget {
    Entry(usize, u64),
    Reconnect(u64),
}

pub enum Role {
    Server(ServerRole),
    Client(ClientRole),
}

/// Why a tunnel must close. The reason is logged.
pub type CloseReason = String;

pub struct Reactor {
    pub poll: Poll,
    pub slab: Slab<Entry>,
    pub role: Role,
    pub resolver: Resolver,
    timers: BinaryHeap<Reverse<(Instant, TimerTarget)>>,
    /// Endpoints with work left (readable relays, tunnels over their read budget).
    ready: VecDeque<usize>,
    /// Tunnels with bytes queued in this turn.
    dirty: Vec<usize>,
    /// Keys removed in this turn, freed when it ends.
    removed: Vec<usize>,
    /// Empty pipes for splicing, ready for the next long payload.
    pipes: Vec<sys::Pipe>,
    /// After the system refused a pipe: no new ones before this time.
    pipes_refused_until: Option<Instant>,
    next_generation: u64,
    pub now: Instant,
    fd_limit_logged: Option<Instant>,
}

impl Reactor {
    pub fn new(role: Role) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let resolver = Resolver::new(waker, 2)?;
        Ok(Reactor {
            poll,
            slab: Slab::new(),
            role,
            resolver,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            removed: Vec::new(),
            pipes: Vec::new(),
            pipes_refused_until: None,
            next_generation: 1,
            now: Instant::now(),
            fd_limit_logged: None,
        })
    }

    /// Insert an endpoint, registering its socket under its key. Returns (key, generation).
    pub fn insert(&mut self, ep: Endpoint) -> io::Result<(usize, u64)> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let token = Token(key);
        let registry = self.poll.registry();
        let both = Interest::READABLE | Interest::WRITABLE;
        let mut ep = ep;
        match &mut ep {
            Endpoint::TunnelListener(l) => registry.register(l, token, Interest::READABLE)?,
            Endpoint::PublicListener(p) => {
                registry.register(&mut p.sock, token, Interest::READABLE)?
            }
            Endpoint::Tunnel(t) => registry.register(&mut t.sock, token, both)?,
            Endpoint::Relay(r) => registry.register(&mut r.sock, token, both)?,
            Endpoint::Resolving(_) | Endpoint::Closed => {}
        }
        entry.insert(Entry { generation, ep });
        Ok((key, generation))
    }

    /// Remove an endpoint. Its socket closes when dropped, and closing an epoll-registered
    /// socket (never duplicated here) removes its registration: no deregister call is needed,
    /// which saves a system call per stream. The key stays taken by a `Closed` marker until
    /// the turn ends, so that events of this turn already returned for the old socket, and
    /// queued work, find the marker rather than a new endpoint that reused the key.
    pub fn remove(&mut self, key: usize) -> Option<Endpoint> {
        let entry = self.slab.get_mut(key)?;
        if matches!(entry.ep, Endpoint::Closed) {
            return None;
        }
        self.removed.push(key);
        Some(std::mem::replace(&mut entry.ep, Endpoint::Closed))
    }

    /// An empty pipe for splicing a payload: a pooled one, or a new one while fewer than
    /// `MAX_PIPES` exist. None means: copy this one.
    fn take_pipe(&mut self) -> Option<sys::Pipe> {
        if let Some(pipe) = self.pipes.pop() {
            return Some(pipe);
        }
        if sys::live_pipes() >= MAX_PIPES || self.pipes_refused_until.is_some_and(|t| t > self.now)
        {
            return None;
        }
        match sys::Pipe::new(PIPE_SIZE) {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                debug!("no pipe for splicing, copying for a while: {e}");
                self.pipes_refused_until = Some(self.now + PIPE_RETRY);
                None
            }
        }
    }

    /// Return an empty pipe to the pool.
    fn put_pipe(&mut self, pipe: sys::Pipe) {
        if self.pipes.len() < POOLED_PIPES {
            self.pipes.push(pipe);
        }
    }

    /// A relay's receive pipe goes back to the pool once the socket has taken all it held.
    fn recycle_pipe(&mut self, rkey: usize) {
        if let Some(r) = self.relay_mut(rkey)
            && r.piped == 0
            && let Some(pipe) = r.pipe.take()
        {
            self.put_pipe(pipe);
        }
    }

    /// Free the keys removed in this turn.
    pub(crate) fn free_removed(&mut self) {
        for key in self.removed.drain(..) {
            self.slab.remove(key);
        }
    }

    /// The generation of a live endpoint (none for a removed one, so that no timer or
    /// resolution matches it).
    pub fn generation_of(&self, key: usize) -> Option<u64> {
        self.slab
            .get(key)
            .filter(|e| !matches!(e.ep, Endpoint::Closed))
            .map(|e| e.generation)
    }

    pub fn tunnel_mut(&mut self, key: usize) -> Option<&mut Tunnel> {
        match self.slab.get_mut(key) {
            Some(Entry {
                ep: Endpoint::Tunnel(t),
                ..
            }) => Some(t),
            _ => None,
        }
    }

    pub fn relay_mut(&mut self, key: usize) -> Option<&mut Relay> {
        match self.slab.get_mut(key) {
            Some(Entry {
                ep: Endpoint::Relay(r),
                ..
            }) => Some(r),
            _ => None,
        }
    }

    /// A relay and its tunnel, both borrowed.
    fn relay_and_tunnel(&mut self, rkey: usize) -> Option<(&mut Relay, &mut Tunnel)> {
        let tkey = match self.slab.get(rkey) {
            Some(Entry {
                ep: Endpoint::Relay(r),
                ..
            }) => r.tunnel,
            _ => return None,
        };
        match self.slab.get2_mut(rkey, tkey) {
            Some((
                Entry {
                    ep: Endpoint::Relay(r),
                    ..
                },
                Entry {
                    ep: Endpoint::Tunnel(t),
                    ..
                },
            )) => Some((r, t)),
            _ => None,
        }
    }

    pub fn schedule(&mut self, at: Instant, target: TimerTarget) {
        self.timers.push(Reverse((at, target)));
    }

    /// Schedule the timer of entry `key` at `at`.
    pub fn schedule_entry(&mut self, key: usize, at: Instant) {
        if let Some(generation) = self.generation_of(key) {
            self.schedule(at, TimerTarget::Entry(key, generation));
        }
    }

    pub fn mark_dirty(&mut self, tkey: usize) {
        if let Some(t) = self.tunnel_mut(tkey)
            && !t.dirty
        {
            t.dirty = true;
            self.dirty.push(tkey);
        }
    }

    fn enqueue_relay(&mut self, rkey: usize) {
        if let Some(r) = self.relay_mut(rkey)
            && !r.queued
        {
            r.queued = true;
            self.ready.push_back(rkey);
        }
    }

    /// Log running out of file descriptors, at most once a minute.
    pub fn note_fd_exhaustion(&mut self, what: &str, e: &io::Error) {
        let now = self.now;
        if self
            .fd_limit_logged
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.fd_limit_logged = Some(now);
            error!("{what}: {e}: open file limit reached; raise it (ulimit -n, LimitNOFILE=)");
        }
    }

    /// Run until SIGINT or SIGTERM.
    pub fn run(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.ready.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNAL => {
                        if let Some(sig) = signals.pending().next() {
                            log::info!("signal {sig}: shutting down");
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    WAKER => self.on_resolved(),
                    Token(key) => self.on_event(key, event),
                }
            }
            self.run_timers();
            self.run_ready();
            self.flush_dirty();
            self.free_removed();
        }
    }

    fn on_event(&mut self, key: usize, event: &Event) {
        let Some(entry) = self.slab.get_mut(key) else {
            return;
        };
        match &mut entry.ep {
            Endpoint::TunnelListener(_) => self.accept_tunnels(key),
            Endpoint::PublicListener(_) => self.accept_visitors(key),
            Endpoint::Tunnel(t) => {
                if event.is_read_closed() || event.is_error() {
                    t.read_closed_hint = true;
                }
                if t.phase == crate::tunnel::Phase::Connecting {
                    if event.is_writable() || event.is_error() || event.is_read_closed() {
                        self.tunnel_connected(key);
                    }
                    return;
                }
                if event.is_writable() {
                    self.flush_tunnel(key);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    if let Some(t) = self.tunnel_mut(key) {
                        t.readable = true;
                    }
                    self.tunnel_read(key);
                }
            }
            Endpoint::Relay(r) => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    r.readable = true;
                }
                if event.is_read_closed() || event.is_error() {
                    r.read_closed_hint = true;
                }
                match r.state {
                    RelayState::Connecting => {
                        // Epoll reports a connecting socket writable only once it is
                        // established, and with an error or hang-up when the connect failed.
                        let failed = event.is_error() || event.is_write_closed();
                        if event.is_writable() || failed {
                            self.relay_connected(key, failed);
                        }
                    }
                    // An error (a reset from the peer, say) must end the stream even when it
                    // is not reading for want of credit or room.
                    RelayState::Opening | RelayState::Open
                        if event.is_error()
                            && let Ok(Some(e)) = r.sock.take_error() =>
                    {
                        debug!("stream {}: {}: {e}", r.id, r.label);
                        self.reset_stream(key, &e.to_string());
                    }
                    // A visitor's first bytes go out before OPEN_OK comes back.
                    RelayState::Opening => self.relay_read(key),
                    RelayState::Open => {
                        if event.is_writable() {
                            self.relay_writable(key);
                        }
                        self.relay_read(key);
                    }
                }
            }
            Endpoint::Resolving(_) | Endpoint::Closed => {}
        }
    }

    fn run_timers(&mut self) {
        while let Some(Reverse((at, target))) = self.timers.peek().copied() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            match target {
                TimerTarget::Entry(key, generation) => {
                    if self.generation_of(key) == Some(generation) {
                        self.on_timer(key, at);
                    }
                }
                TimerTarget::Reconnect(attempt) => self.on_reconnect_timer(attempt),
            }
        }
    }

    fn on_timer(&mut self, key: usize, at: Instant) {
        let now = self.now;
        match self.slab.get(key).map(|e| &e.ep) {
            // Only the tunnel's current tick counts; earlier-scheduled ones are stale.
            Some(Endpoint::Tunnel(t)) if t.tick_at == Some(at) => self.tunnel_tick(key),
            Some(Endpoint::Tunnel(_)) => {}
            Some(Endpoint::Relay(r))
                if r.deadline.is_some_and(|d| d <= now) && r.state != RelayState::Open =>
            {
                let why = match r.state {
                    RelayState::Connecting => "connect timed out",
                    _ => "no answer from the client in time",
                };
                self.open_failed(key, why);
            }
            Some(Endpoint::Resolving(p)) if p.deadline <= now => {
                self.open_failed(key, "name resolution timed out");
            }
            Some(Endpoint::PublicListener(_) | Endpoint::TunnelListener(_)) => {
                if let Role::Server(_) = self.role {
                    self.server_accept_retry(key);
                }
            }
            Some(Endpoint::Relay(_) | Endpoint::Resolving(_) | Endpoint::Closed) | None => {}
        }
    }

    /// Heartbeat, handshake deadline and linger of one tunnel.
    fn tunnel_tick(&mut self, key: usize) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        t.tick_at = None;
        if t.release_at.is_some_and(|at| at <= now) {
            // A burst is over: hand back the memory it made the buffers touch.
            t.release_at = None;
            t.rx.release();
            t.tx.release();
            t.tx_after.release();
        }
        if let Some(d) = t.deadline
            && d <= now
        {
            let reason = match &t.closing {
                Some(r) => r.clone(),
                None if t.phase == crate::tunnel::Phase::Connecting => "connect timed out".into(),
                None => "handshake not completed in time".into(),
            };
            self.close_tunnel(key, reason);
            return;
        }
        if t.is_established() {
            if now.duration_since(t.last_rx) >= t.dead_after() {
                let reason = format!(
                    "nothing received for {:.1} s: tunnel is dead",
                    t.dead_after().as_secs_f64()
                );
                self.close_tunnel(key, reason);
                return;
            }
            if t.next_ping <= now {
                t.next_ping = now + t.ping_interval;
                let stamp = now.duration_since(t.since).as_nanos() as u64;
                if let Err(reason) = t.send_small(kind::PING, 0, &stamp.to_be_bytes()) {
                    self.close_tunnel(key, reason);
                    return;
                }
                self.mark_dirty(key);
            }
        }
        self.schedule_tunnel_tick(key);
    }

    pub fn schedule_tunnel_tick(&mut self, key: usize) {
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        let mut at = match (t.deadline, t.release_at) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        };
        if t.is_established() {
            let hb = t.next_ping.min(t.last_rx + t.dead_after());
            at = Some(at.map_or(hb, |d| d.min(hb)));
        }
        // One timer per tunnel: a tick already due no later than this one reschedules itself.
        let Some(at) = at else { return };
        if t.tick_at.is_some_and(|current| current <= at) {
            return;
        }
        t.tick_at = Some(at);
        self.schedule_entry(key, at);
    }

    /// One round over the ready queue: each endpoint gets one more turn.
    fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            match self.slab.get_mut(key).map(|e| &mut e.ep) {
                Some(Endpoint::Relay(r)) if r.queued => {
                    r.queued = false;
                    self.relay_read(key);
                }
                Some(Endpoint::Tunnel(t)) if t.readable => self.tunnel_read(key),
                _ => {}
            }
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(t) = self.tunnel_mut(key) {
                t.dirty = false;
                self.flush_tunnel(key);
            }
        }
    }

    /// Write a tunnel's queued frames; wake relays waiting for room; finish a closing tunnel.
    pub fn flush_tunnel(&mut self, key: usize) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        if t.phase == crate::tunnel::Phase::Connecting {
            return;
        }
        if let Err(e) = t.flush() {
            self.close_tunnel(key, format!("write failed: {e}"));
            return;
        }
        // A spliced payload went out: its pipe is free again.
        if let Some(pipe) = t.spare_pipe.take() {
            self.put_pipe(pipe);
        }
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        if t.queued() == 0
            && t.release_at.is_none()
            && (t.tx.is_allocated() || t.tx_after.is_allocated() || t.rx.is_allocated())
        {
            t.release_at = Some(now + IDLE_RELEASE);
            self.schedule_tunnel_tick(key);
        }
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        if t.queued() < TX_DATA_LIMIT && !t.blocked.is_empty() {
            let blocked = std::mem::take(&mut t.blocked);
            for rkey in blocked {
                self.enqueue_relay(rkey);
            }
        }
        if let Some(t) = self.tunnel_mut(key)
            && t.queued() == 0
            && let Some(reason) = t.closing.clone()
        {
            self.close_tunnel(key, reason);
        }
    }

    /// Read and process frames, up to the turn's budget.
    pub(crate) fn tunnel_read(&mut self, key: usize) {
        let mut budget = TUNNEL_READ_BUDGET;
        let now = self.now;
        loop {
            let Some(t) = self.tunnel_mut(key) else {
                return;
            };
            if !t.readable || t.closing.is_some() {
                return;
            }
            if let Some(d) = t.in_data
                && t.rx.is_empty()
            {
                match self.splice_in(key, d) {
                    SpliceIn::Moved(n) => {
                        budget = budget.saturating_sub(n);
                        if budget == 0 {
                            self.ready.push_back(key);
                            return;
                        }
                        continue;
                    }
                    SpliceIn::Stop => return,
                    SpliceIn::Copy => {}
                }
            }
            let Some(t) = self.tunnel_mut(key) else {
                return;
            };
            match t.read_some() {
                Ok((0, _)) => {
                    self.close_tunnel(key, "connection closed by peer".into());
                    return;
                }
                Ok((n, room)) => {
                    t.rx.commit(n);
                    t.bytes_in += n as u64;
                    t.last_rx = now;
                    // A short read drained the socket, unless the peer is closing: then read
                    // on to EOF.
                    let drained = n < room && !t.read_closed_hint;
                    if drained {
                        t.readable = false;
                    }
                    if let Err(reason) = self.process_rx(key) {
                        self.close_tunnel(key, reason);
                        return;
                    }
                    if drained {
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.ready.push_back(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.readable = false;
                    return;
                }
                Err(e) => {
                    self.close_tunnel(key, format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Decode and handle every complete frame in a tunnel's read buffer.
    fn process_rx(&mut self, key: usize) -> Result<(), CloseReason> {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return Ok(());
        };
        let mut rx = std::mem::take(&mut t.rx);
        let mut at = 0;
        if !t.preamble_ok {
            match handshake::check_preamble(rx.data()) {
                PreambleCheck::NeedMore => {
                    t.rx = rx;
                    return Ok(());
                }
                PreambleCheck::Ok => {
                    t.preamble_ok = true;
                    at = handshake::PREAMBLE_LEN;
                }
                PreambleCheck::NotTcpForward => {
                    return Err("not a tcp-forward peer (bad magic)".into());
                }
                PreambleCheck::Version(v) => {
                    let reason = format!(
                        "unsupported protocol version {v} (this side speaks {})",
                        handshake::VERSION
                    );
                    let _ = t.send(&Frame::Refuse(&reason));
                    t.closing = Some(reason);
                    t.deadline = Some(now + LINGER);
                    t.rx = rx;
                    self.mark_dirty(key);
                    self.schedule_tunnel_tick(key);
                    return Ok(());
                }
            }
        }
        // The rest of a long payload in progress comes first.
        if let Some(d) = t.in_data {
            let n = d.remaining.min(rx.len() - at);
            let left = d.remaining - n;
            t.in_data = (left > 0).then_some(InData {
                remaining: left,
                ..d
            });
            if let Some(rkey) = self.stream_relay(key, d.id)
                && let Err(reason) = self.deliver(rkey, &[&rx.data()[at..at + n]])
            {
                return Err(reason);
            }
            at += n;
            if left > 0 {
                rx.consume(at);
                if let Some(t) = self.tunnel_mut(key) {
                    t.rx = rx;
                }
                return Ok(());
            }
        }
        let result = loop {
            match frame::decode(&rx.data()[at..]) {
                Ok(Some((Frame::Data { id, payload }, n))) if self.is_established(key) => {
                    // Consecutive DATA frames of one stream leave in one vectored write.
                    let mut parts: [&[u8]; MAX_COALESCE] = [&[]; MAX_COALESCE];
                    parts[0] = payload;
                    let mut count = 1;
                    at += n;
                    while count < MAX_COALESCE {
                        match frame::decode(&rx.data()[at..]) {
                            Ok(Some((Frame::Data { id: next, payload }, n))) if next == id => {
                                parts[count] = payload;
                                count += 1;
                                at += n;
                            }
                            _ => break,
                        }
                    }
                    if let Err(reason) = self.on_data(key, id, &parts[..count]) {
                        break Err(reason);
                    }
                }
                Ok(Some((f, n))) => {
                    at += n;
                    if let Err(reason) = self.handle_frame(key, f) {
                        break Err(reason);
                    }
                    // A refused handshake or goaway stops the reading.
                    if self.tunnel_mut(key).is_none_or(|t| t.closing.is_some()) {
                        break Ok(());
                    }
                }
                Ok(None) => match self.start_in_data(key, &rx.data()[at..]) {
                    Ok(used) => {
                        at += used;
                        break Ok(());
                    }
                    Err(reason) => break Err(reason),
                },
                Err(e) => break Err(format!("malformed frame: {e}")),
            }
        };
        rx.consume(at);
        if let Some(t) = self.tunnel_mut(key) {
            t.rx = rx;
        }
        result
    }

    /// `rest` holds the start of a frame. When it is a long DATA frame with much of its
    /// payload still in the socket, for an open stream, pass on what is here and let the
    /// rest follow as it arrives (spliced when it can be). Returns the bytes used.
    fn start_in_data(&mut self, key: usize, rest: &[u8]) -> Result<usize, CloseReason> {
        let Some((id, header_len, len)) = frame::partial_data(rest) else {
            return Ok(0);
        };
        let here = rest.len() - header_len;
        if header_len != LONG_HEADER_LEN || len - here < STREAM_IN_MIN || !self.is_established(key)
        {
            return Ok(0);
        }
        let Some(rkey) = self.stream_relay(key, id) else {
            return Ok(0);
        };
        let Some(r) = self.relay_mut(rkey) else {
            return Ok(0);
        };
        if r.state != RelayState::Open {
            return Ok(0); // decoded whole, with the usual checks
        }
        r.flow
            .on_received(len)
            .map_err(|v| format!("stream {id}: {v}"))?;
        if let Some(t) = self.tunnel_mut(key) {
            t.in_data = Some(InData {
                id,
                remaining: len - here,
            });
        }
        if here > 0 {
            self.deliver(rkey, &[&rest[header_len..]])?;
        }
        Ok(rest.len())
    }

    /// Move the long payload in progress from the tunnel's socket into its stream's pipe
    /// and on to the stream's socket, without copying it through memory of ours.
    fn splice_in(&mut self, key: usize, d: InData) -> SpliceIn {
        let now = self.now;
        let Some(rkey) = self.stream_relay(key, d.id) else {
            return SpliceIn::Copy; // the stream is gone: its bytes are read and dropped
        };
        let Some(r) = self.relay_mut(rkey) else {
            return SpliceIn::Copy;
        };
        if r.splice_off || r.state != RelayState::Open || !r.pending.is_empty() {
            return SpliceIn::Copy;
        }
        if r.pipe.is_none() {
            let Some(pipe) = self.take_pipe() else {
                return SpliceIn::Copy;
            };
            if let Some(r) = self.relay_mut(rkey) {
                r.pipe = Some(pipe);
            }
        }
        let Some((r, t)) = self.relay_and_tunnel(rkey) else {
            return SpliceIn::Copy;
        };
        let Some(pipe) = &r.pipe else {
            return SpliceIn::Copy;
        };
        match pipe.fill_from(&t.sock, d.remaining) {
            Ok(0) => {
                self.close_tunnel(key, "connection closed by peer".into());
                SpliceIn::Stop
            }
            Ok(n) => {
                t.bytes_in += n as u64;
                t.last_rx = now;
                r.piped += n;
                let left = d.remaining - n;
                t.in_data = (left > 0).then_some(InData {
                    remaining: left,
                    ..d
                });
                // The next read stops after a long header, so that its payload can follow
                // this one through the pipe.
                t.header_only = left == 0;
                let id = r.id;
                match r.flush_pipe() {
                    Ok(m) => {
                        r.bytes_written += m as u64;
                        self.recycle_pipe(rkey);
                        let Some((r, t)) = self.relay_and_tunnel(rkey) else {
                            return SpliceIn::Moved(n);
                        };
                        if let Some(credit) = r.flow.on_delivered(m) {
                            if let Err(reason) =
                                t.send_small(kind::CREDIT, id, &credit.to_be_bytes())
                            {
                                self.close_tunnel(key, reason);
                                return SpliceIn::Stop;
                            }
                            self.mark_dirty(key);
                        }
                    }
                    Err(e) => {
                        debug!("stream {id}: write to {} failed: {e}", r.label);
                        self.reset_stream(rkey, &format!("write failed: {e}"));
                    }
                }
                SpliceIn::Moved(n)
            }
            // Nothing to read, or the pipe is full (a pipe holds fewer bytes than its size
            // when the socket's buffers are small): a plain read tells which.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if r.piped == 0 {
                    t.readable = false;
                    SpliceIn::Stop
                } else {
                    SpliceIn::Copy
                }
            }
            Err(e) => {
                debug!("stream {}: splice failed, copying: {e}", r.id);
                r.splice_off = true;
                SpliceIn::Copy
            }
        }
    }

    fn handle_frame(&mut self, tkey: usize, f: Frame<'_>) -> Result<(), CloseReason> {
        trace!("tunnel {tkey}: {f:?}");
        let established = self.tunnel_mut(tkey).is_some_and(|t| t.is_established());
        if !established {
            return match &mut self.role {
                Role::Server(_) => self.server_handshake_frame(tkey, f),
                Role::Client(_) => self.client_handshake_frame(tkey, f),
            };
        }
        match f {
            Frame::Data { id, payload } => self.on_data(tkey, id, &[payload]),
            Frame::Credit { id, bytes } => {
                let Some(rkey) = self.stream_relay(tkey, id) else {
                    return Ok(());
                };
                let Some(r) = self.relay_mut(rkey) else {
                    return Ok(());
                };
                r.flow
                    .on_credit(bytes)
                    .map_err(|v| format!("stream {id}: {v}"))?;
                if r.readable {
                    self.enqueue_relay(rkey);
                }
                Ok(())
            }
            Frame::Fin { id } => {
                let Some(rkey) = self.stream_relay(tkey, id) else {
                    if let Some(p) = self.resolving_mut(tkey, id) {
                        p.flow
                            .on_fin_received()
                            .map_err(|v| format!("stream {id}: {v}"))?;
                    }
                    return Ok(());
                };
                let Some(r) = self.relay_mut(rkey) else {
                    return Ok(());
                };
                if r.state == RelayState::Opening {
                    return Err(format!("stream {id}: FIN before OPEN_OK"));
                }
                r.flow
                    .on_fin_received()
                    .map_err(|v| format!("stream {id}: {v}"))?;
                r.shutdown_write_if_drained();
                self.finish_if_done(rkey);
                Ok(())
            }
            Frame::Reset { id, reason } => {
                // Any stream endpoint: a connected relay, or one still resolving its target.
                let stream = self
                    .tunnel_mut(tkey)
                    .and_then(|t| t.streams.get(id).copied());
                if let Some(rkey) = stream {
                    debug!("stream {id} reset by peer: {reason}");
                    self.drop_relay(rkey, true);
                }
                Ok(())
            }
            Frame::Ping(v) => {
                let Some(t) = self.tunnel_mut(tkey) else {
                    return Ok(());
                };
                t.send_small(kind::PONG, 0, &v.to_be_bytes())?;
                self.mark_dirty(tkey);
                Ok(())
            }
            Frame::Pong(_) => Ok(()),
            Frame::GoAway(reason) => Err(format!("peer is going away: {reason}")),
            Frame::Open { id, target } => self.on_open(tkey, id, target),
            Frame::OpenOk { id } => self.on_open_ok(tkey, id),
            Frame::OpenFail { id, reason } => self.on_open_fail(tkey, id, reason),
            Frame::Challenge(_) | Frame::Hello(_) | Frame::Accept(_) | Frame::Refuse(_) => {
                Err("handshake frame on an established tunnel".into())
            }
        }
    }

    /// The relay of stream `id`, if it still exists and is a connected relay.
    pub fn stream_relay(&self, tkey: usize, id: u32) -> Option<usize> {
        match self.slab.get(tkey) {
            Some(Entry {
                ep: Endpoint::Tunnel(t),
                ..
            }) => t.streams.get(id).copied(),
            _ => None,
        }
        .filter(|rkey| {
            matches!(
                self.slab.get(*rkey),
                Some(Entry {
                    ep: Endpoint::Relay(_),
                    ..
                })
            )
        })
    }

    fn on_data(&mut self, tkey: usize, id: u32, parts: &[&[u8]]) -> Result<(), CloseReason> {
        let total = parts.iter().map(|p| p.len()).sum();
        let Some(rkey) = self.stream_relay(tkey, id) else {
            // Data sent right after OPEN, while the target's name is being resolved: keep it.
            if let Some(p) = self.resolving_mut(tkey, id) {
                p.flow
                    .on_received(total)
                    .map_err(|v| format!("stream {id}: {v}"))?;
                trace!("stream {id}: {total} bytes wait for the target's address");
                for part in parts {
                    p.pending.push(part);
                }
            }
            // Otherwise a stream we already closed: its last frames may still be in flight.
            return Ok(());
        };
        let Some(r) = self.relay_mut(rkey) else {
            return Ok(());
        };
        if r.state == RelayState::Opening {
            return Err(format!("stream {id}: data before OPEN_OK"));
        }
        r.flow
            .on_received(total)
            .map_err(|v| format!("stream {id}: {v}"))?;
        self.deliver(rkey, parts)
    }

    /// Write received payload (already counted against the window) to a relay's socket or
    /// queue it, and return credit for what the socket took.
    fn deliver(&mut self, rkey: usize, parts: &[&[u8]]) -> Result<(), CloseReason> {
        let Some((r, t)) = self.relay_and_tunnel(rkey) else {
            return Ok(());
        };
        let (id, tkey) = (r.id, r.tunnel);
        match r.write_or_queue(parts) {
            Ok(n) => {
                r.bytes_written += n as u64;
                if let Some(credit) = r.flow.on_delivered(n) {
                    t.send_small(kind::CREDIT, id, &credit.to_be_bytes())?;
                    self.mark_dirty(tkey);
                }
                Ok(())
            }
            Err(e) => {
                debug!("stream {id}: write to {} failed: {e}", r.label);
                self.reset_stream(rkey, &format!("write failed: {e}"));
                Ok(())
            }
        }
    }

    /// A stream of tunnel `tkey` whose target name is still being resolved.
    fn resolving_mut(&mut self, tkey: usize, id: u32) -> Option<&mut crate::client::PendingOpen> {
        let key = self.tunnel_mut(tkey)?.streams.get(id).copied()?;
        match self.slab.get_mut(key) {
            Some(Entry {
                ep: Endpoint::Resolving(p),
                ..
            }) => Some(p),
            _ => None,
        }
    }

    fn is_established(&self, key: usize) -> bool {
        self.slab.get(key).is_some_and(|e| match &e.ep {
            Endpoint::Tunnel(t) => t.is_established(),
            _ => false,
        })
    }

    /// A relay's socket can take bytes again: write what is pending, return credit.
    pub(crate) fn relay_writable(&mut self, rkey: usize) {
        let Some(r) = self.relay_mut(rkey) else {
            return;
        };
        if r.drained() {
            return;
        }
        let id = r.id;
        let tkey = r.tunnel;
        match r.flush_pending() {
            Ok(n) => {
                r.bytes_written += n as u64;
                self.recycle_pipe(rkey);
                let Some((r, t)) = self.relay_and_tunnel(rkey) else {
                    return;
                };
                r.shutdown_write_if_drained();
                let credit = if n > 0 { r.flow.on_delivered(n) } else { None };
                if let Some(credit) = credit {
                    if let Err(reason) = t.send_small(kind::CREDIT, id, &credit.to_be_bytes()) {
                        self.close_tunnel(tkey, reason);
                        return;
                    }
                    self.mark_dirty(tkey);
                }
                self.finish_if_done(rkey);
            }
            Err(e) => {
                debug!("stream {id}: write to {} failed: {e}", r.label);
                self.reset_stream(rkey, &format!("write failed: {e}"));
            }
        }
    }

    /// Read from a relay's socket straight into its tunnel's write buffer, as DATA frames.
    pub fn relay_read(&mut self, rkey: usize) {
        let Some((r, t)) = self.relay_and_tunnel(rkey) else {
            return;
        };
        // The server reads a visitor's first bytes before OPEN_OK (the client keeps them
        // until its connect completes); the client reads only once connected.
        if !r.readable || r.state == RelayState::Connecting || !r.flow.may_send() {
            return;
        }
        let credit = r.flow.send_credit();
        if credit == 0 {
            return; // resumed by CREDIT
        }
        if t.queued() >= TX_DATA_LIMIT || t.closing.is_some() {
            if !t.blocked.contains(&rkey) {
                t.blocked.push(rkey);
            }
            return; // resumed by the tunnel's flush
        }
        let want = credit.min(MAX_LONG_PAYLOAD);
        let id = r.id;
        let tkey = r.tunnel;
        // A stream whose last read filled its request has more waiting: splice it into a
        // pipe, queue its header, and let the tunnel splice the payload after the header.
        if r.bulk
            && want >= SPLICE_OUT_MIN
            && t.out_splice.is_none()
            && !r.splice_off
            && let Some(pipe) = self.take_pipe()
        {
            let Some((r, t)) = self.relay_and_tunnel(rkey) else {
                self.put_pipe(pipe);
                return;
            };
            match pipe.fill_from(&r.sock, want) {
                Ok(n) if n > 0 => {
                    let mut header = [0u8; LONG_HEADER_LEN];
                    frame::put_long_header(&mut header, id, n);
                    // Under TX_DATA_LIMIT, so far below the buffer's cap.
                    let _ = t.tx.push(&header);
                    t.out_splice = Some(OutSplice { pipe, remaining: n });
                    r.flow.on_sent(n);
                    r.bytes_read += n as u64;
                    r.bulk = n == want;
                    // A short splice does not mean the socket is drained: a pipe holds fewer
                    // bytes than its size when packets are small. Read on; a short plain read
                    // is what tells.
                    self.enqueue_relay(rkey);
                    self.mark_dirty(tkey);
                    return;
                }
                // End of input: the plain read below sees it too.
                Ok(_) => self.put_pipe(pipe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    r.readable = false;
                    self.put_pipe(pipe);
                    return;
                }
                Err(e) => {
                    debug!("stream {id}: splice failed, copying: {e}");
                    r.splice_off = true;
                    self.put_pipe(pipe);
                }
            }
        }
        let Some((r, t)) = self.relay_and_tunnel(rkey) else {
            return;
        };
        // One read straight into the tunnel's write buffer, after room for the header: a
        // long DATA header when the credit allows more than a short frame carries.
        let header_len = if want > MAX_PAYLOAD {
            LONG_HEADER_LEN
        } else {
            HEADER_LEN
        };
        let tail = t.tail();
        let room = tail.room(header_len + want);
        if room.len() < header_len + want {
            t.blocked.push(rkey);
            return;
        }
        let result = loop {
            match (&r.sock).read(&mut room[header_len..header_len + want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                // End of input: half-close the stream.
                r.readable = false;
                r.flow.on_fin_sent();
                if let Err(reason) = t.send_small(kind::FIN, id, &[]) {
                    self.close_tunnel(tkey, reason);
                    return;
                }
                self.mark_dirty(tkey);
                self.finish_if_done(rkey);
            }
            Ok(n) => {
                if header_len == LONG_HEADER_LEN {
                    frame::put_long_header(room, id, n);
                } else {
                    frame::put_header(room, kind::DATA, id, n);
                }
                tail.commit(header_len + n);
                r.flow.on_sent(n);
                r.bytes_read += n as u64;
                r.bulk = n == want;
                if n < want && !r.read_closed_hint {
                    r.readable = false; // a short read drained the socket
                } else {
                    self.enqueue_relay(rkey);
                }
                self.mark_dirty(tkey);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.readable = false,
            Err(e) => {
                debug!("stream {id}: read from {} failed: {e}", r.label);
                self.reset_stream(rkey, &format!("read failed: {e}"));
            }
        }
    }

    /// Close a relay whose stream finished cleanly in both directions.
    pub(crate) fn finish_if_done(&mut self, rkey: usize) {
        if let Some(r) = self.relay_mut(rkey)
            && r.flow.is_done()
            && r.write_shut
        {
            debug!(
                "stream {} ({}) finished: {} bytes read, {} written",
                r.id, r.label, r.bytes_read, r.bytes_written
            );
            self.drop_relay(rkey, false);
        }
    }

    /// Abort a stream from our side: tell the peer, reset the local socket.
    pub fn reset_stream(&mut self, rkey: usize, reason: &str) {
        let Some(r) = self.relay_mut(rkey) else {
            return;
        };
        let (tkey, id) = (r.tunnel, r.id);
        if let Some(t) = self.tunnel_mut(tkey) {
            let _ = t.send(&Frame::Reset { id, reason });
            self.mark_dirty(tkey);
        }
        self.drop_relay(rkey, true);
    }

    /// Remove a stream's endpoint (relay or pending open) and its table entry. `abort`
    /// resets the socket instead of closing it gracefully.
    pub fn drop_relay(&mut self, rkey: usize, abort: bool) {
        let (tkey, id) = match self.slab.get(rkey).map(|e| &e.ep) {
            Some(Endpoint::Relay(r)) => (r.tunnel, r.id),
            Some(Endpoint::Resolving(p)) => (p.tunnel, p.id),
            _ => return,
        };
        if let Some(Endpoint::Relay(r)) = self.remove(rkey)
            && abort
        {
            debug!(
                "stream {id} ({}) reset: {} bytes read, {} written",
                r.label, r.bytes_read, r.bytes_written
            );
            sys::set_abortive_close(&r.sock);
        }
        if let Some(t) = self.tunnel_mut(tkey) {
            t.streams.remove(id);
        }
    }

    /// Close a tunnel and every stream on it; the role decides what follows.
    pub fn close_tunnel(&mut self, key: usize, reason: CloseReason) {
        let Some(Endpoint::Tunnel(mut t)) = self.remove(key) else {
            return;
        };
        for rkey in t.streams.drain() {
            if let Some(Endpoint::Relay(r)) = self.remove(rkey) {
                sys::set_abortive_close(&r.sock);
            }
        }
        match &mut self.role {
            Role::Server(_) => self.server_tunnel_closed(key, &t, &reason),
            Role::Client(_) => self.client_tunnel_closed(&t, &reason),
        }
    }

    /// Tell every established tunnel we are leaving, best effort, without waiting.
    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(t) = self.tunnel_mut(key)
                && t.is_established()
            {
                let _ = t.send(&Frame::GoAway("shutting down"));
                let _ = t.flush();
            }
        }
    }

    /// Fresh flow-control state and an (unallocated) buffer for a stream of tunnel `tkey`.
    pub fn new_stream_state(&mut self, tkey: usize) -> (Flow, Buf) {
        let peer_window = self.tunnel_mut(tkey).map_or(0, |t| t.peer_window);
        (
            Flow::new(peer_window, STREAM_WINDOW),
            Buf::growing(STREAM_WINDOW as usize, PENDING_INITIAL),
        )
    }

    /// Create the relay endpoint for a freshly connected socket.
    pub fn new_relay(&mut self, sock: TcpStream, spec: RelaySpec) -> io::Result<usize> {
        let (flow, pending) = match spec.carried {
            Some(carried) => carried,
            None => self.new_stream_state(spec.tunnel),
        };
        let relay = Relay {
            sock,
            tunnel: spec.tunnel,
            id: spec.id,
            state: spec.state,
            flow,
            pending,
            pipe: None,
            piped: 0,
            bulk: false,
            splice_off: false,
            readable: false,
            read_closed_hint: false,
            write_shut: false,
            queued: false,
            bytes_read: 0,
            bytes_written: 0,
            deadline: Some(spec.deadline),
            label: spec.label,
            candidates: spec.candidates,
        };
        let (key, _) = self.insert(Endpoint::Relay(relay))?;
        self.schedule_entry(key, spec.deadline);
        Ok(key)
    }

    /// Close a stream that never opened; the role tells whom it concerns.
    pub fn open_failed(&mut self, rkey: usize, reason: &str) {
        match &self.role {
            Role::Server(_) => self.server_open_failed(rkey, reason),
            Role::Client(_) => self.client_open_failed(rkey, reason),
        }
    }

    fn on_resolved(&mut self) {
        let results: Vec<_> = self.resolver.ready().collect();
        for ((key, generation), result) in results {
            self.on_resolution(key, generation, result);
        }
    }

    fn on_reconnect_timer(&mut self, attempt: u64) {
        if let Role::Client(_) = self.role {
            self.client_reconnect(attempt);
        }
    }

    /// Stream frames that only one role may receive: the role handles them.
    fn on_open(&mut self, tkey: usize, id: u32, target: &str) -> Result<(), CloseReason> {
        match self.role {
            Role::Client(_) => self.client_open(tkey, id, target),
            Role::Server(_) => Err("client sent OPEN".into()),
        }
    }

    fn on_open_ok(&mut self, tkey: usize, id: u32) -> Result<(), CloseReason> {
        match self.role {
            Role::Server(_) => self.server_open_ok(tkey, id),
            Role::Client(_) => Err("server sent OPEN_OK".into()),
        }
    }

    fn on_open_fail(&mut self, tkey: usize, id: u32, reason: &str) -> Result<(), CloseReason> {
        match self.role {
            Role::Server(_) => self.server_open_fail(tkey, id, reason),
            Role::Client(_) => Err("server sent OPEN_FAIL".into()),
        }
    }

    fn accept_tunnels(&mut self, key: usize) {
        if let Role::Server(_) = self.role {
            self.server_accept_tunnels(key);
        }
    }

    fn accept_visitors(&mut self, key: usize) {
        if let Role::Server(_) = self.role {
            self.server_accept_visitors(key);
        }
    }

    fn tunnel_connected(&mut self, key: usize) {
        if let Role::Client(_) = self.role {
            self.client_tunnel_connected(key);
        }
    }

    fn relay_connected(&mut self, key: usize, failed: bool) {
        if let Role::Client(_) = self.role {
            self.client_relay_connected(key, failed);
        }
    }

    fn on_resolution(
        &mut self,
        key: usize,
        generation: u64,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if let Role::Client(_) = self.role {
            self.client_resolved(key, generation, result);
        }
    }
}
