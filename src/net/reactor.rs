//! The event loop shared by both roles: one `mio::Poll` owns every socket, kept in one
//! `Slab<Entry>` and addressed by its key (the mio `Token`). Timers are a heap of deadlines
//! that sets the poll timeout. What each role decides lives behind the [`Role`] trait; the
//! protocol lives in each tunnel's `Session`; this file only moves readiness around.
//!
//! Data path, per loop turn:
//! 1. events set readiness flags and do the work they allow: a relay reads straight into
//!    its tunnel's output queue behind reserved frame headers; a tunnel reads a batch of
//!    frames and writes each payload straight to its relay's socket, buffering only what
//!    the socket refuses (see `pump.rs` and `drive.rs`);
//! 2. relays that could read more are queued and get one more read per turn, round-robin,
//!    so a bulk stream cannot starve an interactive one;
//! 3. every tunnel written to in this turn is flushed once: many streams' frames leave in
//!    one system call;
//! 4. tunnels that ended are handed to the role, once each.
//!
//! Backpressure: a relay reads only with stream credit and room in its tunnel's output
//! queue; otherwise it keeps its `readable` flag and is queued again when credit arrives or
//! the queue drains (edge-triggered readiness gives no second event). A visitor on a
//! limited port also reads and is written only within its port's tokens, and waits for the
//! port's timer without them (`limit.rs`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info};
use mio::event::Event as Readiness;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::buffer::Buf;
pub use crate::net::endpoint::{Dial, Endpoint, Entry, Listener, PendingOpen, Purpose};
use crate::net::http::{Request, Response};
use crate::net::limit::Limits;
pub use crate::net::relay::ByteCount;
use crate::net::relay::{Relay, RelayState, StreamInfo};
use crate::net::resolve::{Resolver, Ticket};
use crate::net::splice::PipePool;
use crate::net::tunnel::Tunnel;
use crate::net::udp::{UdpDrop, UdpStats};
use crate::protocol::CloseReason;
use crate::protocol::session::{Event, STREAM_WINDOW};

/// First allocation of a stream's pending buffer: most streams that ever queue anything
/// queue little, and this stays below the allocator's threshold for mapping pages.
const PENDING_INITIAL: usize = 16 * 1024;

const SIGNAL: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// What a role decides; the reactor calls it and does the I/O.
pub trait Role {
    /// A listener of the role's is readable.
    fn on_accept(&mut self, _core: &mut Core, _key: usize) {}
    /// A connect the role started (a dial, a relay) completed or, when `failed`, failed.
    fn on_connect(&mut self, _core: &mut Core, _key: usize, _failed: bool) {}
    /// A tunnel's session reported something only the role can act on.
    fn on_event(&mut self, core: &mut Core, tkey: usize, event: Event<'_, usize>);
    /// A tunnel ended; its streams are already reset.
    fn on_tunnel_closed(&mut self, core: &mut Core, closed: ClosedTunnel);
    /// The timer of one of the role's endpoints fired (a deadline, an accept retry).
    fn on_deadline(&mut self, core: &mut Core, key: usize);
    /// A timer the role scheduled with [`TimerTarget::Role`] fired.
    fn on_timer(&mut self, _core: &mut Core, _token: u64) {}
    /// A request to the admin API (its connection is the reactor's business).
    fn on_admin_request(&mut self, _core: &mut Core, _req: &Request<'_>) -> Response {
        Response::not_found()
    }
    /// SIGHUP: read the configuration again and apply what changed.
    fn on_reload(&mut self, _core: &mut Core);
    /// Server: a datagram from `visitor`, which has no flow yet, reached the public UDP port
    /// whose socket is endpoint `key`. Open a flow for it (its slab key), or say why the
    /// datagram is dropped.
    fn on_new_flow(
        &mut self,
        _core: &mut Core,
        _key: usize,
        _visitor: SocketAddr,
    ) -> Result<usize, UdpDrop> {
        Err(UdpDrop::NoClient)
    }
    /// A name the role asked the resolver for.
    fn on_resolved(
        &mut self,
        _core: &mut Core,
        _ticket: Ticket,
        _result: Result<Vec<SocketAddr>, String>,
    ) {
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerTarget {
    /// The endpoint at this key, if it is still the one of this generation.
    Entry(usize, u64),
    Role(u64),
    /// The once-a-second sweep for streams past their timeouts.
    Sweep,
    /// The wake-up of the streams waiting for a limited public port's tokens.
    Limit(u16),
}

/// How long a stream may move no byte: at all (`idle`), or once one side has finished
/// (`fin`: a target that never reads and never closes must not hold the visitor's
/// sockets). A stream past either is reset on both sides.
///
/// Streams are not timed one by one: each relay notes the sweep count when a byte moves
/// (one store where the bytes already pass), and a sweep once a second resets those whose
/// count is too old. A stream goes between its timeout and one second after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTimeouts {
    pub idle: Option<Duration>,
    pub fin: Option<Duration>,
}

/// The sweep's period.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A tunnel that ended, with why.
pub struct ClosedTunnel {
    pub key: usize,
    pub tunnel: Box<Tunnel>,
    pub reason: CloseReason,
}

/// What a new relay carries: its stream, its state and what to log.
pub struct RelaySpec {
    pub tunnel: usize,
    pub id: u32,
    pub state: RelayState,
    pub label: String,
    pub candidates: Vec<SocketAddr>,
    pub deadline: Instant,
    /// Early data kept for the stream before its socket existed, and how many bytes at its
    /// front are a PROXY header.
    pub pending: Option<Buf>,
    pub header: usize,
    /// Server: the public port, and what the admin API lists (see [`Relay`]).
    pub port: u16,
    pub info: Option<Box<StreamInfo>>,
}

/// A relay and its tunnel, both borrowed from the slab.
pub(crate) fn relay_and_tunnel(
    slab: &mut Slab<Entry>,
    rkey: usize,
) -> Option<(&mut Relay, &mut Tunnel)> {
    let tkey = match slab.get(rkey) {
        Some(Entry {
            ep: Endpoint::Relay(r),
            ..
        }) => r.tunnel,
        _ => return None,
    };
    match slab.get2_mut(rkey, tkey) {
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

/// Everything but the role: the poller, the endpoints, the timers and the queues.
pub struct Core {
    pub poll: Poll,
    pub slab: Slab<Entry>,
    pub resolver: Resolver,
    timers: BinaryHeap<Reverse<(Instant, TimerTarget)>>,
    /// Endpoints with work left (readable relays, tunnels over their read budget).
    pub(crate) ready: VecDeque<usize>,
    /// Tunnels with bytes queued in this turn.
    pub(crate) dirty: Vec<usize>,
    /// Keys removed in this turn, freed when it ends.
    removed: Vec<usize>,
    /// Tunnels closed in this turn, for the role.
    pub(crate) closed: Vec<ClosedTunnel>,
    pub(crate) pipes: PipePool,
    next_generation: u64,
    pub now: Instant,
    fd_limit_logged: Option<Instant>,
    /// Admin connections open.
    pub(crate) admin_conns: usize,
    /// An accept retry of the admin listener is scheduled.
    pub(crate) admin_accept_retry: bool,
    /// Streams' timeouts, and the sweeps done so far (relays note it when bytes move).
    stream_timeouts: StreamTimeouts,
    pub(crate) sweeps: u32,
    sweep_scheduled: bool,
    /// What the streams that ended moved, by public port (0 on the client). Live streams
    /// count in their relays; the admin API adds the two.
    pub retired: HashMap<u16, ByteCount>,
    /// Open visitor streams (relays with a [`StreamInfo`]) by public port and source address
    /// (IPv4-mapped addresses as IPv4), for the server's `MAX_PER_SOURCE`: counted when the
    /// relay is made and when it is removed, never per frame. A source with none has no entry.
    pub visitors_by_source: HashMap<(u16, IpAddr), u32>,
    /// The server's bandwidth limits, by public port (none on the client).
    pub(crate) limits: Limits,
    /// Datagrams moved and dropped, by public UDP port (0 on the client).
    pub udp_stats: HashMap<u16, UdpStats>,
    /// `UDP_TIMEOUT`: a flow that moved no datagram for this long is closed (server).
    udp_timeout: Option<Duration>,
    /// Where UDP sockets receive their batches; taken while one is read.
    pub(crate) udp_batch: Option<crate::net::dgram::RecvBatch>,
}

impl Core {
    fn new() -> io::Result<Core> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let resolver = Resolver::new(waker, 2)?;
        Ok(Core {
            poll,
            slab: Slab::new(),
            resolver,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            removed: Vec::new(),
            closed: Vec::new(),
            pipes: PipePool::default(),
            next_generation: 1,
            now: Instant::now(),
            fd_limit_logged: None,
            admin_conns: 0,
            admin_accept_retry: false,
            stream_timeouts: StreamTimeouts::default(),
            sweeps: 0,
            sweep_scheduled: false,
            retired: HashMap::new(),
            visitors_by_source: HashMap::new(),
            limits: Limits::default(),
            udp_stats: HashMap::new(),
            udp_timeout: None,
            udp_batch: None,
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
            Endpoint::Listener(l) => registry.register(&mut l.sock, token, Interest::READABLE)?,
            Endpoint::Tunnel(t) => t.transport.register(registry, token)?,
            Endpoint::Dial(d) => registry.register(&mut d.sock, token, both)?,
            Endpoint::Relay(r) => registry.register(&mut r.sock, token, both)?,
            Endpoint::Admin(a) => registry.register(&mut a.sock, token, both)?,
            Endpoint::UdpPort(p) => registry.register(&mut p.sock, token, both)?,
            Endpoint::UdpFlow(f) => {
                if let Some(sock) = &mut f.sock {
                    registry.register(sock, token, both)?;
                }
            }
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
        let ep = std::mem::replace(&mut entry.ep, Endpoint::Closed);
        match &ep {
            Endpoint::Relay(r) => {
                self.retire(r);
                self.visitor_gone(r);
            }
            Endpoint::UdpFlow(f) => self.flow_gone(key, f),
            _ => {}
        }
        Some(ep)
    }

    /// A stream's counts move from its relay to its tunnel's and its port's totals.
    fn retire(&mut self, r: &Relay) {
        let moved = ByteCount {
            read: r.bytes_read,
            written: r.bytes_written,
        };
        if moved == ByteCount::default() {
            return;
        }
        self.retired.entry(r.port).or_default().add(moved);
        if let Some(t) = self.tunnel_mut(r.tunnel) {
            t.retired.add(moved);
        }
    }

    /// A visitor's stream ended: its source has one open stream fewer on its port.
    fn visitor_gone(&mut self, r: &Relay) {
        let Some(info) = &r.info else {
            return;
        };
        let key = (r.port, info.visitor.ip().to_canonical());
        if let Some(n) = self.visitors_by_source.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.visitors_by_source.remove(&key);
            }
        }
    }

    /// Visitor streams open from `ip` on public port `port`.
    pub fn visitors_from(&self, port: u16, ip: IpAddr) -> u32 {
        self.visitors_by_source
            .get(&(port, ip.to_canonical()))
            .copied()
            .unwrap_or(0)
    }

    /// Take an endpoint out to put another in its place (a dial becoming a tunnel): its
    /// socket keeps its registration under the same key.
    pub fn take_in_place(&mut self, key: usize) -> Option<Endpoint> {
        let entry = self.slab.get_mut(key)?;
        if matches!(entry.ep, Endpoint::Closed) {
            return None;
        }
        Some(std::mem::replace(&mut entry.ep, Endpoint::Closed))
    }

    /// Put an endpoint where `take_in_place` took one.
    pub fn put_in_place(&mut self, key: usize, ep: Endpoint) {
        if let Some(entry) = self.slab.get_mut(key) {
            entry.ep = ep;
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

    pub fn endpoint(&self, key: usize) -> Option<&Endpoint> {
        self.slab.get(key).map(|e| &e.ep)
    }

    pub fn endpoint_mut(&mut self, key: usize) -> Option<&mut Endpoint> {
        self.slab.get_mut(key).map(|e| &mut e.ep)
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
        if let Some(Entry {
            ep: Endpoint::Tunnel(t),
            ..
        }) = self.slab.get_mut(tkey)
        {
            t.mark_dirty(tkey, &mut self.dirty);
        }
    }

    pub(crate) fn enqueue_relay(&mut self, rkey: usize) {
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

    /// An empty buffer for what a stream receives before its socket takes it.
    pub fn stream_buffer() -> Buf {
        Buf::growing(STREAM_WINDOW as usize, PENDING_INITIAL)
    }

    /// A stream's buffer that starts with a PROXY header: one window more than the header,
    /// so the stream's window of early data still fits behind it.
    pub fn stream_buffer_after(header: &[u8]) -> Buf {
        let mut b = Buf::growing(STREAM_WINDOW as usize + header.len(), PENDING_INITIAL);
        b.push(header);
        b
    }

    /// Create the relay endpoint for a freshly connected socket.
    pub fn new_relay(&mut self, sock: TcpStream, spec: RelaySpec) -> io::Result<usize> {
        let relay = Relay {
            sock,
            tunnel: spec.tunnel,
            id: spec.id,
            state: spec.state,
            pending: spec.pending.unwrap_or_else(Core::stream_buffer),
            header: spec.header,
            pipe: None,
            piped: 0,
            bulk: false,
            splice_off: false,
            readable: false,
            read_closed_hint: false,
            write_shut: false,
            queued: false,
            throttled: 0,
            bytes_read: 0,
            bytes_written: 0,
            active: self.sweeps,
            deadline: Some(spec.deadline),
            label: spec.label,
            candidates: spec.candidates,
            port: spec.port,
            info: spec.info,
        };
        let source = relay
            .info
            .as_ref()
            .map(|i| (relay.port, i.visitor.ip().to_canonical()));
        let (key, _) = self.insert(Endpoint::Relay(relay))?;
        if let Some(source) = source {
            *self.visitors_by_source.entry(source).or_default() += 1;
        }
        self.schedule_entry(key, spec.deadline);
        Ok(key)
    }

    /// Set the streams' timeouts (at start-up, on reload); the sweep runs while one is set.
    pub fn set_stream_timeouts(&mut self, timeouts: StreamTimeouts) {
        self.stream_timeouts = timeouts;
        self.start_sweep();
    }

    /// Set `UDP_TIMEOUT` (at start-up, on reload), for flows.
    pub fn set_udp_timeout(&mut self, timeout: Option<Duration>) {
        self.udp_timeout = timeout;
        self.start_sweep();
    }

    fn sweeping(&self) -> bool {
        let StreamTimeouts { idle, fin } = self.stream_timeouts;
        idle.is_some() || fin.is_some() || self.udp_timeout.is_some()
    }

    fn start_sweep(&mut self) {
        if self.sweeping() && !self.sweep_scheduled {
            self.sweep_scheduled = true;
            self.schedule(self.now + SWEEP_EVERY, TimerTarget::Sweep);
        }
    }

    /// Reset the streams past their timeouts, then schedule the next sweep.
    fn sweep_streams(&mut self) {
        self.sweeps = self.sweeps.wrapping_add(1);
        let StreamTimeouts { idle, fin } = self.stream_timeouts;
        if !self.sweeping() {
            self.sweep_scheduled = false;
            return;
        }
        // A count `n` sweeps old moved its last byte between n - 1 and n seconds ago: a
        // stream is reset only once more than its timeout has certainly passed.
        let past = |limit: Option<Duration>, quiet: u32| {
            limit.is_some_and(|l| u64::from(quiet) > l.as_secs().max(1))
        };
        let mut expired = Vec::new();
        let mut quiet_flows = Vec::new();
        for (key, entry) in self.slab.iter() {
            if let Endpoint::UdpFlow(f) = &entry.ep
                && past(self.udp_timeout, self.sweeps.wrapping_sub(f.active))
            {
                quiet_flows.push(key);
            }
            let Endpoint::Relay(r) = &entry.ep else {
                continue;
            };
            if r.state != RelayState::Open {
                continue;
            }
            let quiet = self.sweeps.wrapping_sub(r.active);
            let half_closed = match self.slab.get(r.tunnel).map(|e| &e.ep) {
                Some(Endpoint::Tunnel(t)) => {
                    !t.session.may_send(r.id) || t.session.recv_complete(r.id)
                }
                _ => false,
            };
            if half_closed && past(fin, quiet) {
                expired.push((key, "FIN_TIMEOUT"));
            } else if past(idle, quiet) {
                expired.push((key, "IDLE_TIMEOUT"));
            }
        }
        for (key, which) in expired {
            if let Some(r) = self.relay_mut(key) {
                info!(
                    "stream {} ({}): no byte moved within {which}: reset",
                    r.id, r.label
                );
            }
            self.reset_stream(key, &format!("no byte moved within {which}"));
        }
        for key in quiet_flows {
            if let Some(f) = self.udp_flow_mut(key) {
                debug!(
                    "UDP flow {} ({}): no datagram within UDP_TIMEOUT: closed",
                    f.id, f.label
                );
            }
            self.close_flow(key, "no datagram moved within UDP_TIMEOUT");
        }
        self.schedule(self.now + SWEEP_EVERY, TimerTarget::Sweep);
    }

    fn flush_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(t) = self.tunnel_mut(key) {
                t.dirty = false;
                self.flush_tunnel(key);
            }
        }
    }
}

/// One process's loop: the core and the role it serves.
pub struct Reactor<R: Role> {
    pub core: Core,
    pub role: R,
}

impl<R: Role> Reactor<R> {
    pub fn new(role: R) -> io::Result<Reactor<R>> {
        Ok(Reactor {
            core: Core::new()?,
            role,
        })
    }

    /// Run until SIGINT or SIGTERM; SIGHUP reloads.
    pub fn run(&mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.core
            .poll
            .registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        loop {
            self.settle();
            self.core.free_removed();
            let timeout = if self.core.ready.is_empty() {
                self.core
                    .timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.core.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.core.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNAL => {
                        let pending: Vec<i32> = signals.pending().collect();
                        if let Some(sig) = pending.iter().find(|&&s| s != SIGHUP) {
                            info!("signal {sig}: shutting down");
                            self.core.shutdown();
                            return Ok(());
                        }
                        if !pending.is_empty() {
                            self.role.on_reload(&mut self.core);
                        }
                    }
                    WAKER => self.on_resolved(),
                    Token(key) => self.on_readiness(key, event),
                }
                self.settle();
            }
            self.run_timers();
            self.run_ready();
            self.core.flush_dirty();
        }
    }

    /// Hand the tunnels that ended to the role.
    fn settle(&mut self) {
        while !self.core.closed.is_empty() {
            for closed in std::mem::take(&mut self.core.closed) {
                self.role.on_tunnel_closed(&mut self.core, closed);
            }
        }
    }

    fn on_readiness(&mut self, key: usize, event: &Readiness) {
        let core = &mut self.core;
        let Some(entry) = core.slab.get_mut(key) else {
            return;
        };
        let closing = event.is_read_closed() || event.is_error();
        match &mut entry.ep {
            Endpoint::Listener(Listener {
                purpose: Purpose::Admin,
                ..
            }) => core.admin_accept(key),
            Endpoint::Listener(_) => self.role.on_accept(core, key),
            Endpoint::Admin(_) => self.admin_drive(key),
            Endpoint::Dial(_) => {
                if event.is_writable() || closing {
                    self.role.on_connect(core, key, closing);
                }
            }
            Endpoint::Tunnel(t) => {
                if closing {
                    t.read_closed_hint = true;
                }
                if event.is_writable() {
                    core.flush_tunnel(key);
                }
                if event.is_readable() || closing {
                    if let Some(t) = core.tunnel_mut(key) {
                        t.readable = true;
                    }
                    core.tunnel_read(key, &mut self.role);
                }
            }
            Endpoint::Relay(r) => {
                if event.is_readable() || closing {
                    r.readable = true;
                }
                if closing {
                    r.read_closed_hint = true;
                }
                match r.state {
                    RelayState::Connecting => {
                        // Epoll reports a connecting socket writable only once it is
                        // established, and with an error or hang-up when the connect failed.
                        let failed = event.is_error() || event.is_write_closed();
                        if event.is_writable() || failed {
                            self.role.on_connect(core, key, failed);
                        }
                    }
                    // An error (a reset from the peer, say) must end the stream even when it
                    // is not reading for want of credit or room.
                    RelayState::Open
                        if event.is_error()
                            && let Ok(Some(e)) = r.sock.take_error() =>
                    {
                        log::debug!("stream {}: {}: {e}", r.id, r.label);
                        core.reset_stream(key, &e.to_string());
                    }
                    RelayState::Open => {
                        if event.is_writable() {
                            core.relay_writable(key);
                        }
                        core.relay_read(key);
                    }
                }
            }
            Endpoint::UdpPort(p) => {
                if event.is_readable() || event.is_error() {
                    p.readable = true;
                    core.udp_port_read(key, &mut self.role);
                }
                if event.is_writable() {
                    core.udp_writable(key);
                }
            }
            Endpoint::UdpFlow(f) => {
                // An ICMP error (port unreachable) shows as an error event: the read says it.
                if event.is_readable() || event.is_error() {
                    f.readable = true;
                    core.udp_flow_read(key);
                }
                if event.is_writable() {
                    core.udp_writable(key);
                }
            }
            Endpoint::Resolving(_) | Endpoint::Closed => {}
        }
    }

    fn run_timers(&mut self) {
        while let Some(Reverse((at, target))) = self.core.timers.peek().copied() {
            if at > self.core.now {
                break;
            }
            self.core.timers.pop();
            match target {
                TimerTarget::Entry(key, generation) => {
                    if self.core.generation_of(key) != Some(generation) {
                        continue;
                    }
                    match self.core.endpoint(key) {
                        // Only the tunnel's current tick counts; earlier-scheduled ones are stale.
                        Some(Endpoint::Tunnel(t)) if t.tick_at == Some(at) => {
                            self.core.tunnel_tick(key)
                        }
                        Some(Endpoint::Tunnel(_)) => {}
                        Some(Endpoint::Admin(a)) if a.deadline <= self.core.now => {
                            self.core.close_admin(key, "idle");
                        }
                        Some(Endpoint::Admin(_)) => self.admin_timer(key, at),
                        Some(Endpoint::Listener(Listener {
                            purpose: Purpose::Admin,
                            ..
                        })) => {
                            self.core.admin_accept_retry = false;
                            self.core.admin_accept(key);
                        }
                        _ => self.role.on_deadline(&mut self.core, key),
                    }
                }
                TimerTarget::Role(token) => self.role.on_timer(&mut self.core, token),
                TimerTarget::Sweep => self.core.sweep_streams(),
                TimerTarget::Limit(port) => self.core.limit_tick(port, at),
            }
            self.settle();
        }
    }

    /// One round over the ready queue: each endpoint gets one more turn.
    fn run_ready(&mut self) {
        for _ in 0..self.core.ready.len() {
            let Some(key) = self.core.ready.pop_front() else {
                break;
            };
            match self.core.slab.get_mut(key).map(|e| &mut e.ep) {
                Some(Endpoint::Relay(r)) if r.queued => {
                    r.queued = false;
                    self.core.relay_read(key);
                }
                Some(Endpoint::Tunnel(t)) if t.readable => {
                    self.core.tunnel_read(key, &mut self.role)
                }
                Some(Endpoint::Admin(a)) if a.queued => self.admin_drive(key),
                Some(Endpoint::UdpPort(p)) if p.queued => {
                    self.core.udp_port_read(key, &mut self.role)
                }
                Some(Endpoint::UdpFlow(f)) if f.queued => self.core.udp_flow_read(key),
                _ => {}
            }
            self.settle();
        }
    }

    fn on_resolved(&mut self) {
        let results: Vec<_> = self.core.resolver.ready().collect();
        for (ticket, result) in results {
            self.role.on_resolved(&mut self.core, ticket, result);
            self.settle();
        }
    }
}
