//! UDP: the server's public UDP sockets with their flow tables, the flows of both roles,
//! and the two pumps that carry datagrams between them and the tunnels' datagram streams.
//!
//! - A **port** ([`UdpPort`], server) is the socket of one `[UDP]` mapping. Each visitor
//!   address sending to it is a **flow**: its first datagram has the role open one
//!   ([`crate::net::reactor::Role::on_new_flow`]), which opens a datagram stream over a
//!   tunnel of the mapping's tag.
//! - A **flow** ([`UdpFlow`]) is one datagram stream's endpoint in the slab: on the server it
//!   has no socket of its own (replies leave from the port's socket, to the visitor's
//!   address); on the client it owns a UDP socket connected to the target.
//! - **Upward** ([`Core::udp_port_read`], [`Core::udp_flow_read`]): a batch of datagrams per
//!   system call, each queued as one DATA frame. A datagram the tunnel cannot take now (its
//!   output over `DGRAM_TX_LIMIT`), or that the port's bandwidth limit has no tokens for, is
//!   dropped and counted: nothing waits without bound, and a flood never holds back a TCP
//!   stream's data. A socket gets one batch per loop turn, then waits in the ready queue
//!   behind the others.
//! - **Downward** ([`Core::deliver_datagrams`]): the datagrams of one tunnel read go out in
//!   one `sendmmsg`, runs of equal size as one segmented send each (the socket's
//!   [`Segmentation`]); what the socket refuses waits in a small bounded backlog, and beyond
//!   it is dropped and counted.
//!
//! A flow ends by RESET from either side, with its tunnel, when its port closes, or when it
//! moved no datagram for `UDP_TIMEOUT` (the stream sweep, server side). A client's flow whose
//! target answers with an ICMP error is reset, logged at DEBUG.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use log::debug;
use mio::net::UdpSocket;

use crate::net::dgram::{self, BATCH, Segmentation};
use crate::net::limit::Dir;
use crate::net::reactor::{Core, Endpoint, Role};
use crate::protocol::session::DgramRefused;

/// A backlog of datagrams a socket refused holds at most this many bytes...
const BACKLOG_BYTES: usize = 256 * 1024;
/// ...and this many datagrams.
const BACKLOG_DATAGRAMS: usize = 512;
/// Socket buffers asked for UDP sockets: a burst waits in the kernel while the loop
/// serves others.
pub const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Why a datagram was dropped: the `reason` label of `tcpforward_udp_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// Its source is outside the port's `[ALLOW]` list.
    NotAllowed,
    /// A new source beyond `MAX_UDP_FLOWS`.
    FlowLimit,
    /// No tunnel of the mapping's tag from a client that carries datagrams.
    NoClient,
    /// Every such tunnel has `MAX_STREAMS` streams.
    StreamLimit,
    /// The tunnel's output was over its datagram limit.
    TunnelFull,
    /// The socket refused it and its backlog was full.
    QueueFull,
    /// The port's bandwidth limit had no tokens for it.
    Limit,
    /// Empty, or too long for a datagram stream.
    BadSize,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 8] = [
        UdpDrop::NotAllowed,
        UdpDrop::FlowLimit,
        UdpDrop::NoClient,
        UdpDrop::StreamLimit,
        UdpDrop::TunnelFull,
        UdpDrop::QueueFull,
        UdpDrop::Limit,
        UdpDrop::BadSize,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UdpDrop::NotAllowed => "not_allowed",
            UdpDrop::FlowLimit => "flow_limit",
            UdpDrop::NoClient => "no_client",
            UdpDrop::StreamLimit => "stream_limit",
            UdpDrop::TunnelFull => "tunnel_full",
            UdpDrop::QueueFull => "queue_full",
            UdpDrop::Limit => "limit",
            UdpDrop::BadSize => "bad_size",
        }
    }
}

/// Datagrams and bytes of one public UDP port (0 on the client), by direction: `[0]` in
/// (from visitors toward the target), `[1]` out (the replies); and the drops, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    pub datagrams: [u64; 2],
    pub bytes: [u64; 2],
    pub dropped: [u64; UdpDrop::ALL.len()],
}

impl UdpStats {
    pub fn dropped(&self, why: UdpDrop) -> u64 {
        self.dropped[why as usize]
    }
}

/// Direction index into [`UdpStats`]: toward the target.
pub const IN: usize = 0;
/// Direction index into [`UdpStats`]: back toward the visitor.
pub const OUT: usize = 1;

/// Datagrams a socket refused (its buffer was full), sent when it is writable again.
#[derive(Debug, Default)]
pub struct Backlog {
    items: VecDeque<(Option<SocketAddr>, Box<[u8]>)>,
    bytes: usize,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Keep a datagram for `to` (`None`: the connected peer); false when full.
    fn push(&mut self, to: Option<SocketAddr>, d: &[u8]) -> bool {
        if self.items.len() >= BACKLOG_DATAGRAMS || self.bytes + d.len() > BACKLOG_BYTES {
            return false;
        }
        self.bytes += d.len();
        self.items.push_back((to, d.into()));
        true
    }

    /// Send what waits until the socket refuses, telling `went` the address and length of
    /// each datagram that went. A datagram the socket fails to send is dropped: one to a
    /// visitor's address, or refused for want of kernel memory, is counted in the `Ok` (the
    /// ones behind it go on); on a connected socket another error ends the flush.
    fn flush(
        &mut self,
        sock: &UdpSocket,
        mut went: impl FnMut(Option<SocketAddr>, usize),
    ) -> io::Result<usize> {
        let mut failed = 0;
        while let Some((to, d)) = self.items.front() {
            let r = match to {
                Some(addr) => sock.send_to(d, *addr),
                None => sock.send(d),
            };
            let (to, len) = (*to, d.len());
            match r {
                Ok(_) => {
                    self.bytes -= len;
                    self.items.pop_front();
                    went(to, len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.bytes -= len;
                    self.items.pop_front();
                    if to.is_none() && !transient(&e) {
                        return Err(e);
                    }
                    debug!("UDP: send to {to:?} failed: {e}");
                    failed += 1;
                }
            }
        }
        Ok(failed)
    }
}

/// A send error that says nothing of the peer (the kernel had no memory or queue room for
/// the datagram): it is lost, the flow goes on.
fn transient(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Server: the socket of a public UDP port and its flows.
pub struct UdpPort {
    pub sock: UdpSocket,
    pub port: u16,
    /// Flows by visitor address (as the socket reports it), to their slab keys.
    pub flows: HashMap<SocketAddr, usize>,
    /// Replies the socket refused.
    pub backlog: Backlog,
    /// Whether replies of equal size leave in one segmented send.
    pub seg: Segmentation,
    /// The socket may hold unread datagrams.
    pub readable: bool,
    /// In the reactor's ready queue.
    pub queued: bool,
}

/// One flow: a datagram stream's endpoint.
pub struct UdpFlow {
    /// Client: the socket connected to the target (`None` while its name resolves).
    pub sock: Option<UdpSocket>,
    /// Server: the slab key of the port whose socket the replies leave from.
    pub public: Option<usize>,
    /// Server: the visitor's address, as the port's socket reports it. Client: the target's.
    pub peer: Option<SocketAddr>,
    pub tunnel: usize,
    pub id: u32,
    /// Server: the public port (0 on the client).
    pub port: u16,
    /// Client: datagrams waiting for the socket (its name resolving, or its buffer full).
    pub backlog: Backlog,
    /// Client: whether datagrams of equal size leave in one segmented send.
    pub seg: Segmentation,
    pub readable: bool,
    pub queued: bool,
    /// The stream sweep's count when a datagram last moved either way.
    pub active: u32,
    /// Datagrams and their bytes moved, `[IN]` toward the target and `[OUT]` back.
    pub datagrams: [u64; 2],
    pub bytes: [u64; 2],
    /// Server: the target the flow was opened to (shared with its mapping), for the API.
    pub target: Option<std::sync::Arc<str>>,
    /// Client: when a name still resolving times out.
    pub deadline: Option<Instant>,
    /// Client: the allow-list admits the target's name only if it admits every address
    /// the name resolves to.
    pub check_addresses: bool,
    /// For logs: the visitor on the server, the target on the client.
    pub label: String,
    pub opened_at: SystemTime,
}

impl UdpFlow {
    /// A flow of stream `id` on `tunnel`; the caller fills in what its role needs.
    pub fn new(tunnel: usize, id: u32, label: String, active: u32) -> UdpFlow {
        UdpFlow {
            sock: None,
            public: None,
            peer: None,
            tunnel,
            id,
            port: 0,
            backlog: Backlog::default(),
            seg: Segmentation::available(),
            readable: false,
            queued: false,
            active,
            datagrams: [0; 2],
            bytes: [0; 2],
            target: None,
            deadline: None,
            check_addresses: false,
            label,
            opened_at: SystemTime::now(),
        }
    }
}

impl Core {
    fn udp_count(&mut self, port: u16, dir: usize, datagrams: usize, bytes: usize) {
        let s = self.udp_stats.entry(port).or_default();
        s.datagrams[dir] += datagrams as u64;
        s.bytes[dir] += bytes as u64;
    }

    /// Count a dropped datagram of `port`.
    pub fn udp_drop(&mut self, port: u16, why: UdpDrop) {
        self.udp_stats.entry(port).or_default().dropped[why as usize] += 1;
    }

    fn udp_port_mut(&mut self, key: usize) -> Option<&mut UdpPort> {
        match self.endpoint_mut(key) {
            Some(Endpoint::UdpPort(p)) => Some(p),
            _ => None,
        }
    }

    pub fn udp_flow_mut(&mut self, key: usize) -> Option<&mut UdpFlow> {
        match self.endpoint_mut(key) {
            Some(Endpoint::UdpFlow(f)) => Some(f),
            _ => None,
        }
    }

    fn enqueue_udp(&mut self, key: usize) {
        let queued = match self.endpoint_mut(key) {
            Some(Endpoint::UdpPort(p)) => &mut p.queued,
            Some(Endpoint::UdpFlow(f)) => &mut f.queued,
            _ => return,
        };
        if !*queued {
            *queued = true;
            self.ready.push_back(key);
        }
    }

    /// Upward, server: one batch from a public port's socket, each datagram into its flow's
    /// stream; a datagram from a new source first gets a flow from the role.
    pub(crate) fn udp_port_read<R: Role>(&mut self, key: usize, role: &mut R) {
        let mut batch = self.udp_batch.take().unwrap_or_default();
        let Some(p) = self.udp_port_mut(key) else {
            self.udp_batch = Some(batch);
            return;
        };
        p.queued = false;
        if !p.readable {
            self.udp_batch = Some(batch);
            return;
        }
        let port = p.port;
        let n = match dgram::recv_batch(&p.sock, &mut batch) {
            Ok(n) => n,
            Err(e) => {
                p.readable = false;
                match e.kind() {
                    io::ErrorKind::WouldBlock => {}
                    // A signal, or an ICMP error for an earlier reply (it concerns no flow
                    // here): the datagrams behind it are read in the next turn.
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => {
                        debug!("UDP port {port}: receive: {e}");
                        p.readable = true;
                        self.enqueue_udp(key);
                    }
                    // Anything else waits for the next readiness event rather than spin.
                    _ => debug!("UDP port {port}: receive failed: {e}"),
                }
                self.udp_batch = Some(batch);
                return;
            }
        };
        for i in 0..n {
            let (d, from, cut) = batch.get(i);
            let Some(from) = from else { continue };
            if cut || d.is_empty() {
                self.udp_drop(port, UdpDrop::BadSize);
                continue;
            }
            let known = self
                .udp_port_mut(key)
                .and_then(|p| p.flows.get(&from).copied());
            let fkey = match known {
                Some(f) => f,
                None => match role.on_new_flow(self, key, from) {
                    Ok(f) => f,
                    Err(why) => {
                        for _ in batch.datagrams(i) {
                            self.udp_drop(port, why);
                        }
                        continue;
                    }
                },
            };
            for d in batch.datagrams(i) {
                self.flow_up(fkey, d);
            }
        }
        self.udp_batch = Some(batch);
        // A full batch leaves more waiting: one batch per turn, so others get theirs.
        if let Some(p) = self.udp_port_mut(key) {
            if n == BATCH {
                self.enqueue_udp(key);
            } else {
                p.readable = false;
            }
        }
    }

    /// Upward, client: one batch from a flow's socket into its stream.
    pub(crate) fn udp_flow_read(&mut self, key: usize) {
        let mut batch = self.udp_batch.take().unwrap_or_default();
        let result = match self.udp_flow_mut(key) {
            Some(f) => {
                f.queued = false;
                match &f.sock {
                    Some(sock) if f.readable => dgram::recv_batch(sock, &mut batch),
                    _ => Ok(0),
                }
            }
            None => Ok(0),
        };
        match result {
            Ok(n) => {
                for i in 0..n {
                    let (d, _, cut) = batch.get(i);
                    if cut || d.is_empty() {
                        self.udp_drop(0, UdpDrop::BadSize);
                        continue;
                    }
                    for d in batch.datagrams(i) {
                        self.flow_up(key, d);
                    }
                }
                if let Some(f) = self.udp_flow_mut(key) {
                    if n == BATCH {
                        self.enqueue_udp(key);
                    } else {
                        f.readable = false;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(f) = self.udp_flow_mut(key) {
                    f.readable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.enqueue_udp(key),
            Err(e) => self.flow_failed(key, &e),
        }
        self.udp_batch = Some(batch);
    }

    /// One datagram from the flow's socket side into its stream, or dropped and counted.
    fn flow_up(&mut self, fkey: usize, d: &[u8]) {
        let now = self.now;
        let sweeps = self.sweeps;
        let Some(f) = self.udp_flow_mut(fkey) else {
            return;
        };
        let (tkey, id, port) = (f.tunnel, f.id, f.port);
        // Server: visitor to target; client: target to visitor.
        let dir = if f.public.is_some() { IN } else { OUT };
        if !self.limits.take_datagram(port, Dir::Up, d.len(), now) {
            self.udp_drop(port, UdpDrop::Limit);
            return;
        }
        let Some(t) = self.tunnel_mut(tkey) else {
            return;
        };
        let mut queued = t.session.send_datagram(id, d);
        if queued == Err(DgramRefused::TunnelFull) && t.may_write_early(now) {
            // A turn's reads can outrun its end-of-turn write (a batch of coalesced runs is
            // up to a thousand datagrams): write the output now and try once more, as long
            // as the kernel takes it (it refuses past `tunnel::UNSENT_LIMIT`).
            self.flush_tunnel(tkey);
            let Some(t) = self.tunnel_mut(tkey) else {
                return;
            };
            t.wrote_early(now);
            queued = t.session.send_datagram(id, d);
        }
        match queued {
            Ok(()) => {
                self.mark_dirty(tkey);
                if let Some(f) = self.udp_flow_mut(fkey) {
                    f.active = sweeps;
                    f.datagrams[dir] += 1;
                    f.bytes[dir] += d.len() as u64;
                }
                self.udp_count(port, dir, 1, d.len());
            }
            Err(DgramRefused::TunnelFull) => self.udp_drop(port, UdpDrop::TunnelFull),
            Err(DgramRefused::BadSize) => self.udp_drop(port, UdpDrop::BadSize),
            Err(DgramRefused::NotOpen) => self.udp_drop(port, UdpDrop::NoClient),
        }
    }

    /// Downward: the datagrams of one tunnel read for flow `fkey`, sent in one call where
    /// the socket takes them; the rest waits in the backlog or is dropped.
    pub(crate) fn deliver_datagrams(&mut self, tkey: usize, fkey: usize, parts: &[&[u8]]) {
        let now = self.now;
        let sweeps = self.sweeps;
        let Some(f) = self.udp_flow_mut(fkey) else {
            return;
        };
        if f.tunnel != tkey {
            return;
        }
        f.active = sweeps;
        let (port, public, peer) = (f.port, f.public, f.peer);
        let dir = if public.is_some() { OUT } else { IN };
        // This role is behind the tunnel: its datagrams are dropped (unread, they would only
        // keep the streams' frames waiting longer), its streams' frames are not.
        if self.tunnel_mut(tkey).is_some_and(|t| t.sheds_incoming(now)) {
            for _ in parts {
                self.udp_drop(port, UdpDrop::TunnelFull);
            }
            return;
        }
        // Within the port's limit, datagram by datagram (the first refused ends the batch:
        // the ones after it are dropped too, as the bucket is empty).
        let mut allowed = parts.len();
        for (i, d) in parts.iter().enumerate() {
            if !self.limits.take_datagram(port, Dir::Down, d.len(), now) {
                allowed = i;
                break;
            }
        }
        for _ in allowed..parts.len() {
            self.udp_drop(port, UdpDrop::Limit);
        }
        let parts = &parts[..allowed];
        if parts.is_empty() {
            return;
        }
        let (sock, backlog, seg, to) = match public {
            Some(pkey) => match self.endpoint_mut(pkey) {
                Some(Endpoint::UdpPort(p)) => (Some(&p.sock), &mut p.backlog, &mut p.seg, peer),
                _ => return,
            },
            None => match self.endpoint_mut(fkey) {
                Some(Endpoint::UdpFlow(f)) => (f.sock.as_ref(), &mut f.backlog, &mut f.seg, None),
                _ => return,
            },
        };
        // Behind datagrams already waiting, or before the socket exists, they wait too.
        let sent = match sock {
            Some(sock) if backlog.is_empty() => dgram::send_batch(sock, to, parts, seg),
            _ => Ok(0),
        };
        let sent = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if public.is_none() && !transient(&e) => {
                self.flow_failed(fkey, &e);
                return;
            }
            Err(e) => {
                // To a visitor, or a lack of kernel memory: this batch is lost, the flow
                // and the port go on.
                debug!("UDP port {port}: send to {to:?} failed: {e}");
                for _ in parts {
                    self.udp_drop(port, UdpDrop::QueueFull);
                }
                return;
            }
        };
        let mut full = 0;
        for d in &parts[sent..] {
            if !backlog.push(to, d) {
                full += 1;
            }
        }
        let bytes: usize = parts[..sent].iter().map(|d| d.len()).sum();
        self.udp_count(port, dir, sent, bytes);
        for _ in 0..full {
            self.udp_drop(port, UdpDrop::QueueFull);
        }
        if let Some(f) = self.udp_flow_mut(fkey) {
            f.datagrams[dir] += sent as u64;
            f.bytes[dir] += bytes as u64;
        }
    }

    /// A UDP socket can send again: its backlog goes out.
    pub(crate) fn udp_writable(&mut self, key: usize) {
        // What went, counted when it went, not when it was kept: by visitor address from a
        // port, and `None` from a client's flow (its connected target).
        let mut went: Vec<(Option<SocketAddr>, usize)> = Vec::new();
        let note = |to, len| went.push((to, len));
        let (result, port) = match self.endpoint_mut(key) {
            Some(Endpoint::UdpPort(p)) => (p.backlog.flush(&p.sock, note), p.port),
            Some(Endpoint::UdpFlow(f)) => match &f.sock {
                Some(sock) => (f.backlog.flush(sock, note), f.port),
                None => return,
            },
            _ => return,
        };
        let dir = if port == 0 { IN } else { OUT };
        let bytes = went.iter().map(|&(_, len)| len).sum();
        self.udp_count(port, dir, went.len(), bytes);
        for (to, len) in went {
            let fkey = match to {
                Some(addr) => self
                    .udp_port_mut(key)
                    .and_then(|p| p.flows.get(&addr).copied()),
                None => Some(key),
            };
            if let Some(f) = fkey.and_then(|k| self.udp_flow_mut(k)) {
                f.datagrams[dir] += 1;
                f.bytes[dir] += len as u64;
            }
        }
        match result {
            Ok(failed) => {
                for _ in 0..failed {
                    self.udp_drop(port, UdpDrop::QueueFull);
                }
            }
            Err(e) => self.flow_failed(key, &e),
        }
    }

    /// Client: the flow's target failed (an ICMP error such as port unreachable, or a
    /// socket error): reset its stream and close it.
    pub(crate) fn flow_failed(&mut self, key: usize, e: &io::Error) {
        let Some(f) = self.udp_flow_mut(key) else {
            return;
        };
        debug!("UDP flow {} ({}): {e}: closed", f.id, f.label);
        let reason = if e.kind() == io::ErrorKind::ConnectionRefused {
            format!("target unreachable: {e}")
        } else {
            format!("UDP socket failed: {e}")
        };
        self.close_flow(key, &reason);
    }

    /// End a flow from our side: RESET to the peer, and the endpoint goes.
    pub fn close_flow(&mut self, key: usize, reason: &str) {
        let Some(f) = self.udp_flow_mut(key) else {
            return;
        };
        let (tkey, id) = (f.tunnel, f.id);
        if let Some(t) = self.tunnel_mut(tkey) {
            t.session.reset(id, reason);
            self.mark_dirty(tkey);
        }
        self.remove(key);
    }

    /// Flow endpoint `key` was removed: its port forgets its visitor.
    pub(crate) fn flow_gone(&mut self, key: usize, f: &UdpFlow) {
        if let (Some(pkey), Some(peer)) = (f.public, f.peer)
            && let Some(p) = self.udp_port_mut(pkey)
            && p.flows.get(&peer) == Some(&key)
        {
            p.flows.remove(&peer);
        }
    }

    /// Close a public UDP port: its socket and every flow on it.
    pub fn close_udp_port(&mut self, key: usize, reason: &str) {
        let Some(p) = self.udp_port_mut(key) else {
            return;
        };
        let flows: Vec<usize> = p.flows.values().copied().collect();
        for f in flows {
            self.close_flow(f, reason);
        }
        self.remove(key);
    }

    /// Flows open on public UDP port socket `key`.
    pub fn udp_flow_count(&self, key: usize) -> usize {
        match self.endpoint(key) {
            Some(Endpoint::UdpPort(p)) => p.flows.len(),
            _ => 0,
        }
    }
}
