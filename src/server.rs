//! The server role: listens for client tunnels on INNER_PORT and for visitors on every
//! mapped public port; opens a stream over a tunnel of the mapping's tag for each visitor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};

use crate::config::{Secret, ServerConfig};
use crate::protocol::frame::Frame;
use crate::protocol::handshake::{self, Accept, Challenge, Hello, NONCE_LEN};
use crate::reactor::{CloseReason, Endpoint, Entry, Reactor, RelaySpec, Role, STREAM_WINDOW};
use crate::relay::RelayState;
use crate::sys;
use crate::tunnel::{LINGER, Phase, Tunnel};

/// Handshakes in progress beyond this number evict the oldest, so idle or garbage
/// connections cannot keep a real client out.
const MAX_HANDSHAKES: usize = 256;
/// How long a visitor waits for the client to connect the inner target.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// After running out of file descriptors, try accepting again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A public port and where it leads.
pub struct Public {
    pub sock: TcpListener,
    pub port: u16,
    pub target: String,
    pub tag: String,
}

/// The established tunnels of one tag; new visitors go round-robin over them.
#[derive(Default)]
struct Pool {
    tunnels: Vec<usize>,
    next: usize,
}

pub struct ServerRole {
    token: Option<Secret>,
    max_streams: usize,
    heartbeat: Duration,
    pools: HashMap<String, Pool>,
    handshakes: VecDeque<(usize, u64)>,
    /// Listeners with an accept retry scheduled.
    accept_retry: HashSet<usize>,
    /// The loop turn of the last scan for closed handshakes.
    last_reap: Option<std::time::Instant>,
}

/// Bind every port, then serve until SIGINT or SIGTERM.
pub fn run(cfg: ServerConfig) -> io::Result<()> {
    sys::tune_allocator();
    match sys::raise_nofile_limit() {
        Ok(n) => debug!("open file limit: {n}"),
        Err(e) => warn!("cannot read the open file limit: {e}"),
    }
    if cfg.token.is_none() {
        warn!("no TOKEN set: any client may attach");
    }
    let role = ServerRole {
        token: cfg.token,
        max_streams: cfg.max_streams,
        heartbeat: cfg.heartbeat,
        pools: HashMap::new(),
        handshakes: VecDeque::new(),
        accept_retry: HashSet::new(),
        last_reap: None,
    };
    let mut reactor = Reactor::new(Role::Server(role))?;
    let addr = SocketAddr::new(cfg.bind_addr, cfg.inner_port);
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for clients on port {}: {e}", addr.port()),
        )
    })?;
    reactor.insert(Endpoint::TunnelListener(listener))?;
    info!("listening for clients on {addr}");
    for m in &cfg.mappings {
        let addr = SocketAddr::new(cfg.bind_addr, m.public_port);
        let sock = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on public port {}: {e}", m.public_port),
            )
        })?;
        if let Err(e) = sys::set_listener_nodelay(&sock) {
            warn!("public port {}: cannot set TCP_NODELAY: {e}", m.public_port);
        }
        let target = m.target.to_string();
        info!(
            "public port {} -> {} (tag {})",
            m.public_port, target, m.tag
        );
        reactor.insert(Endpoint::PublicListener(Public {
            sock,
            port: m.public_port,
            target,
            tag: m.tag.clone(),
        }))?;
    }
    reactor.run()
}

impl Reactor {
    fn server(&mut self) -> &mut ServerRole {
        match &mut self.role {
            Role::Server(s) => s,
            Role::Client(_) => unreachable!("server code runs only in the server role"),
        }
    }

    /// The accept retry of a listener is due.
    pub(crate) fn server_accept_retry(&mut self, lkey: usize) {
        self.server().accept_retry.remove(&lkey);
        match self.slab.get(lkey).map(|e| &e.ep) {
            Some(Endpoint::TunnelListener(_)) => self.server_accept_tunnels(lkey),
            Some(Endpoint::PublicListener(_)) => self.server_accept_visitors(lkey),
            _ => {}
        }
    }

    pub(crate) fn server_accept_tunnels(&mut self, lkey: usize) {
        loop {
            let Some(Entry {
                ep: Endpoint::TunnelListener(l),
                ..
            }) = self.slab.get(lkey)
            else {
                return;
            };
            match l.accept() {
                Ok((sock, peer)) => self.server_new_tunnel(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.accept_failed(lkey, "accepting a client", &e);
                    return;
                }
            }
        }
    }

    fn accept_failed(&mut self, lkey: usize, what: &str, e: &io::Error) {
        if sys::is_fd_exhaustion(e) {
            self.note_fd_exhaustion(what, e);
        } else {
            warn!("{what}: {e}");
        }
        // The pending connection stays in the backlog: try again soon, with one retry per
        // listener however many connections wait.
        if self.server().accept_retry.insert(lkey) {
            self.schedule_entry(lkey, self.now + ACCEPT_RETRY);
        }
    }

    fn server_new_tunnel(&mut self, sock: TcpStream, peer: SocketAddr) {
        debug!("connection from {peer} on the tunnel port");
        let _ = sock.set_nodelay(true);
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = sys::random_bytes(&mut nonce) {
            warn!("refused client {peer}: {e}");
            return;
        }
        let auth_required = self.server().token.is_some();
        let mut t = Tunnel::new(sock, peer, Phase::AwaitHello { nonce }, self.now);
        let challenge = Challenge {
            auth_required,
            nonce,
        }
        .encode();
        let queued = t
            .send_raw(&handshake::preamble())
            .and_then(|_| t.send(&Frame::Challenge(&challenge)));
        if queued.is_err() {
            return;
        }
        let (key, generation) = match self.insert(Endpoint::Tunnel(Box::new(t))) {
            Ok(kg) => kg,
            Err(e) => {
                warn!("refused client {peer}: {e}");
                return;
            }
        };
        self.mark_dirty(key);
        self.schedule_tunnel_tick(key);
        self.server().handshakes.push_back((key, generation));
        self.evict_handshakes();
    }

    /// Keep at most MAX_HANDSHAKES connections in the handshake; close the oldest first.
    fn evict_handshakes(&mut self) {
        // Forget connections that finished their handshake or went away, then count.
        let mut queue = std::mem::take(&mut self.server().handshakes);
        queue.retain(|&(key, generation)| {
            self.generation_of(key) == Some(generation)
                && self.tunnel_mut(key).is_some_and(|t| !t.is_established())
        });
        let now = self.now;
        if queue.len() > MAX_HANDSHAKES && self.server().last_reap != Some(now) {
            // Over the cap: first drop connections whose peer has already gone (a burst of
            // connect-and-close is accepted before its EOFs or resets are read). Once per
            // loop turn at most: under a flood of accepts this scan is the costly part.
            self.server().last_reap = Some(now);
            let mut gone = Vec::new();
            queue.retain(|&(key, _)| {
                let alive =
                    self.tunnel_mut(key)
                        .is_some_and(|t| match t.sock.peek(&mut [0u8; 1]) {
                            Ok(n) => n > 0,
                            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                        });
                if !alive {
                    gone.push(key);
                }
                alive
            });
            for key in gone {
                self.close_tunnel(key, "connection closed by peer".into());
            }
        }
        while queue.len() > MAX_HANDSHAKES {
            if let Some((key, _)) = queue.pop_front() {
                self.close_tunnel(
                    key,
                    "too many connections in the handshake: dropped the oldest".into(),
                );
            }
        }
        self.server().handshakes = queue;
    }

    pub(crate) fn server_handshake_frame(
        &mut self,
        tkey: usize,
        f: Frame<'_>,
    ) -> Result<(), CloseReason> {
        let now = self.now;
        let role = match &self.role {
            Role::Server(s) => s,
            Role::Client(_) => return Ok(()),
        };
        let (token, max_streams, heartbeat) = (
            role.token.as_ref().map(|t| t.expose().to_vec()),
            role.max_streams,
            role.heartbeat,
        );
        let Some(t) = self.tunnel_mut(tkey) else {
            return Ok(());
        };
        let Phase::AwaitHello { nonce } = t.phase else {
            return Ok(());
        };
        let Frame::Hello(payload) = f else {
            return Err("protocol violation: expected HELLO".into());
        };
        let hello = Hello::decode(payload).map_err(|e| format!("malformed HELLO: {e}"))?;
        let verdict = if !hello
            .tag
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace())
        {
            Err("invalid tag")
        } else {
            match (&token, &hello.proof) {
                (None, _) => Ok(()),
                (Some(_), None) => Err("authentication failed: the server requires a token"),
                (Some(token), Some(proof)) => {
                    if handshake::verify(token, &nonce, hello.tag, proof) {
                        Ok(())
                    } else {
                        Err("authentication failed: wrong token")
                    }
                }
            }
        };
        if let Err(reason) = verdict {
            t.send(&Frame::Refuse(reason))?;
            t.closing = Some(reason.to_string());
            t.deadline = Some(now + LINGER);
            self.mark_dirty(tkey);
            self.schedule_tunnel_tick(tkey);
            return Ok(());
        }
        t.establish(now, heartbeat);
        t.tag = hello.tag.to_string();
        t.peer_window = hello.window;
        t.streams.set_max(max_streams);
        let accept = Accept {
            window: STREAM_WINDOW,
            max_streams: max_streams as u32,
            heartbeat_ms: heartbeat.as_millis() as u32,
            proof: token
                .as_ref()
                .map(|tok| handshake::server_proof(tok, &hello.nonce, &nonce, hello.tag)),
        }
        .encode();
        t.send(&Frame::Accept(&accept))?;
        info!("tunnel attached: {} tag {}", t.peer, t.tag);
        let tag = t.tag.clone();
        self.mark_dirty(tkey);
        self.schedule_tunnel_tick(tkey);
        self.server()
            .pools
            .entry(tag)
            .or_default()
            .tunnels
            .push(tkey);
        Ok(())
    }

    pub(crate) fn server_tunnel_closed(&mut self, key: usize, t: &Tunnel, reason: &str) {
        if !t.is_established() {
            warn!("refused client {}: {reason}", t.peer);
            return;
        }
        info!(
            "tunnel detached: {} tag {}: {reason} ({} bytes in, {} bytes out)",
            t.peer, t.tag, t.bytes_in, t.bytes_out
        );
        let pools = &mut self.server().pools;
        if let Some(pool) = pools.get_mut(&t.tag) {
            pool.tunnels.retain(|&k| k != key);
            if pool.tunnels.is_empty() {
                pools.remove(&t.tag);
            }
        }
    }

    pub(crate) fn server_accept_visitors(&mut self, lkey: usize) {
        loop {
            let Some(Entry {
                ep: Endpoint::PublicListener(p),
                ..
            }) = self.slab.get(lkey)
            else {
                return;
            };
            match p.sock.accept() {
                Ok((sock, peer)) => self.server_visitor(lkey, sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.accept_failed(lkey, "accepting a visitor", &e);
                    return;
                }
            }
        }
    }

    /// Pick a tunnel of `tag` with room for one more stream, round-robin.
    fn pick_tunnel(&mut self, tag: &str) -> Result<usize, &'static str> {
        let candidates = match self.server().pools.get_mut(tag) {
            Some(pool) if !pool.tunnels.is_empty() => {
                let start = pool.next % pool.tunnels.len();
                pool.next = pool.next.wrapping_add(1);
                let n = pool.tunnels.len();
                (0..n)
                    .map(|i| pool.tunnels[(start + i) % n])
                    .collect::<Vec<_>>()
            }
            _ => return Err("no client"),
        };
        let max = self.server().max_streams;
        candidates
            .into_iter()
            .find(|&k| {
                self.tunnel_mut(k)
                    .is_some_and(|t| t.streams.len() < max && t.closing.is_none())
            })
            .ok_or("stream limit reached")
    }

    fn server_visitor(&mut self, lkey: usize, sock: TcpStream, peer: SocketAddr) {
        let Some(Entry {
            ep: Endpoint::PublicListener(p),
            ..
        }) = self.slab.get(lkey)
        else {
            return;
        };
        let (port, tag, target) = (p.port, p.tag.clone(), p.target.clone());
        let tkey = match self.pick_tunnel(&tag) {
            Ok(k) => k,
            Err("no client") => {
                warn!("no client for tag {tag}: closing visitor {peer} on port {port}");
                return;
            }
            Err(why) => {
                let max = self.server().max_streams;
                warn!(
                    "{why} ({max} streams) on every client of tag {tag}: \
                     closing visitor {peer} on port {port}"
                );
                return;
            }
        };
        if !sys::ACCEPTED_INHERIT_NODELAY {
            let _ = sock.set_nodelay(true);
        }
        let rkey = self.slab.vacant_key();
        let Some(t) = self.tunnel_mut(tkey) else {
            return;
        };
        let Ok(id) = t.streams.open(rkey) else { return };
        if let Err(reason) = t.send(&Frame::Open {
            id,
            target: &target,
        }) {
            self.close_tunnel(tkey, reason);
            return;
        }
        self.mark_dirty(tkey);
        let label = format!("visitor {peer} on port {port}");
        let deadline = self.now + OPEN_TIMEOUT;
        let spec = RelaySpec {
            tunnel: tkey,
            id,
            state: RelayState::Opening,
            label,
            candidates: Vec::new(),
            deadline,
            carried: None,
        };
        match self.new_relay(sock, spec) {
            Ok(key) => {
                debug_assert_eq!(key, rkey);
                debug!("stream {id}: visitor {peer} on port {port} -> {target}");
                // A visitor that speaks first has often sent its request already: read it now
                // so it leaves in the same tunnel write as the OPEN.
                if let Some(r) = self.relay_mut(key) {
                    r.readable = true;
                }
                self.relay_read(key);
            }
            Err(e) => {
                warn!("cannot register visitor {peer}: {e}");
                if let Some(t) = self.tunnel_mut(tkey) {
                    t.streams.remove(id);
                    let _ = t.send(&Frame::Reset {
                        id,
                        reason: "server error",
                    });
                }
            }
        }
    }

    pub(crate) fn server_open_ok(&mut self, tkey: usize, id: u32) -> Result<(), CloseReason> {
        let Some(rkey) = self.stream_relay(tkey, id) else {
            return Ok(());
        };
        let Some(r) = self.relay_mut(rkey) else {
            return Ok(());
        };
        if r.state != RelayState::Opening {
            return Err(format!("stream {id}: OPEN_OK twice"));
        }
        r.state = RelayState::Open;
        r.deadline = None;
        self.relay_read(rkey);
        Ok(())
    }

    pub(crate) fn server_open_fail(
        &mut self,
        tkey: usize,
        id: u32,
        reason: &str,
    ) -> Result<(), CloseReason> {
        let Some(rkey) = self.stream_relay(tkey, id) else {
            return Ok(());
        };
        let Some(r) = self.relay_mut(rkey) else {
            return Ok(());
        };
        if r.state != RelayState::Opening {
            return Err(format!("stream {id}: OPEN_FAIL after open"));
        }
        warn!(
            "client could not connect the target of stream {id}: {reason}; closing {}",
            r.label
        );
        self.drop_relay(rkey, false);
        Ok(())
    }

    pub(crate) fn server_open_failed(&mut self, rkey: usize, reason: &str) {
        if let Some(r) = self.relay_mut(rkey) {
            warn!("stream {}: {reason}; closing {}", r.id, r.label);
        }
        self.reset_stream(rkey, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reactor() -> Reactor {
        let role = ServerRole {
            token: None,
            max_streams: 8,
            heartbeat: Duration::from_secs(10),
            pools: HashMap::new(),
            handshakes: VecDeque::new(),
            accept_retry: HashSet::new(),
            last_reap: None,
        };
        Reactor::new(Role::Server(role)).unwrap()
    }

    /// A removed endpoint's key is not handed to a new endpoint in the same turn, so an
    /// event already returned for the old socket cannot reach the new one.
    #[test]
    fn removed_keys_are_reused_only_after_the_turn() {
        let mut r = reactor();
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (key, generation) = r.insert(Endpoint::TunnelListener(listener)).unwrap();
        assert_eq!(r.generation_of(key), Some(generation));
        assert!(matches!(r.remove(key), Some(Endpoint::TunnelListener(_))));
        assert!(r.remove(key).is_none(), "a second remove finds the marker");
        assert_eq!(r.generation_of(key), None, "no timer matches the marker");
        assert_ne!(r.slab.vacant_key(), key);
        r.free_removed();
        assert!(r.generation_of(key).is_none());
        assert_eq!(r.slab.vacant_key(), key);
    }
}
