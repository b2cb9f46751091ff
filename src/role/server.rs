//! The server role: listens for client tunnels on INNER_PORT and for visitors on every
//! mapped public port; opens a stream over a tunnel of the mapping's tag for each visitor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};

use crate::config::{ServerConfig, ServerTlsSetting};
use crate::net::reactor::{
    ClosedTunnel, Core, Endpoint, Listener, Purpose, Reactor, RelaySpec, Role,
};
use crate::net::relay::RelayState;
use crate::net::sys;
use crate::net::tls::TlsStream;
use crate::net::transport::Transport;
use crate::net::tunnel::Tunnel;
use crate::protocol::CloseReason;
use crate::protocol::handshake::NONCE_LEN;
use crate::protocol::session::{Event, OpenError, STREAM_WINDOW, ServerParams, Session};
use crate::tls::{self, ServerTls};

/// Handshakes in progress beyond this number evict the oldest, so idle or garbage
/// connections cannot keep a real client out.
const MAX_HANDSHAKES: usize = 256;
/// How long a visitor waits for the client to connect the inner target.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// After running out of file descriptors, try accepting again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The established tunnels of one tag; new visitors go round-robin over them.
#[derive(Default)]
struct Pool {
    tunnels: Vec<usize>,
    next: usize,
}

pub struct ServerRole {
    params: Arc<ServerParams>,
    /// `None` with TLS off.
    tls: Option<Arc<rustls::ServerConfig>>,
    pools: HashMap<String, Pool>,
    handshakes: VecDeque<(usize, u64)>,
    /// Listeners with an accept retry scheduled.
    accept_retry: HashSet<usize>,
    /// The loop turn of the last scan for closed handshakes.
    last_reap: Option<Instant>,
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
    let tls = match &cfg.tls {
        ServerTlsSetting::Off => {
            warn!("TLS is off: the tunnel's traffic crosses the network in clear");
            None
        }
        ServerTlsSetting::SelfSigned => {
            let tls = ServerTls::self_signed().map_err(|e| io::Error::other(e.to_string()))?;
            info!(
                "TLS on, with a self-signed certificate made at start-up: SHA-256 fingerprint {}",
                tls::format_fingerprint(&tls.fingerprint)
            );
            Some(tls)
        }
        ServerTlsSetting::Files(tls) => {
            let file = tls.cert_file.as_deref().unwrap_or(Path::new("?"));
            info!(
                "TLS on, certificate {}: SHA-256 fingerprint {}",
                file.display(),
                tls::format_fingerprint(&tls.fingerprint)
            );
            Some(tls.clone())
        }
    };
    let mut role = ServerRole::new(&cfg);
    role.tls = tls.map(|t| t.config);
    let mut reactor = Reactor::new(role)?;
    let addr = SocketAddr::new(cfg.bind_addr, cfg.inner_port);
    let sock = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for clients on port {}: {e}", addr.port()),
        )
    })?;
    reactor.core.insert(Endpoint::Listener(Listener {
        sock,
        purpose: Purpose::Tunnels,
    }))?;
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
        reactor.core.insert(Endpoint::Listener(Listener {
            sock,
            purpose: Purpose::Public {
                port: m.public_port,
                target,
                tag: m.tag.clone(),
            },
        }))?;
    }
    reactor.run()
}

impl ServerRole {
    pub fn new(cfg: &ServerConfig) -> ServerRole {
        ServerRole::with_params(ServerParams {
            token: cfg.token.as_ref().map(|t| t.expose().to_vec()),
            require_tls: !matches!(cfg.tls, ServerTlsSetting::Off),
            max_streams: cfg.max_streams,
            heartbeat: cfg.heartbeat,
            window: STREAM_WINDOW,
        })
    }

    fn with_params(params: ServerParams) -> ServerRole {
        ServerRole {
            params: Arc::new(params),
            tls: None,
            pools: HashMap::new(),
            handshakes: VecDeque::new(),
            accept_retry: HashSet::new(),
            last_reap: None,
        }
    }

    fn accept_failed(&mut self, core: &mut Core, lkey: usize, what: &str, e: &io::Error) {
        if sys::is_fd_exhaustion(e) {
            core.note_fd_exhaustion(what, e);
        } else {
            warn!("{what}: {e}");
        }
        // The pending connection stays in the backlog: try again soon, with one retry per
        // listener however many connections wait.
        if self.accept_retry.insert(lkey) {
            core.schedule_entry(lkey, core.now + ACCEPT_RETRY);
        }
    }

    fn new_tunnel(&mut self, core: &mut Core, sock: TcpStream, peer: SocketAddr) {
        debug!("connection from {peer} on the tunnel port");
        let _ = sock.set_nodelay(true);
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = sys::random_bytes(&mut nonce) {
            warn!("refused client {peer}: {e}");
            return;
        }
        let session = Session::server(Arc::clone(&self.params), nonce, core.now);
        let transport = match &self.tls {
            Some(config) => Transport::Tls(Box::new(TlsStream::server(
                sock,
                Arc::clone(config),
                core.now,
            ))),
            None => Transport::Plain(sock),
        };
        let t = Tunnel::new(transport, peer, session);
        match core.insert_tunnel(t) {
            Ok(kg) => self.handshakes.push_back(kg),
            Err(e) => {
                warn!("refused client {peer}: {e}");
                return;
            }
        }
        self.evict_handshakes(core);
    }

    /// Keep at most MAX_HANDSHAKES connections in the handshake; close the oldest first.
    fn evict_handshakes(&mut self, core: &mut Core) {
        // Forget connections that finished their handshake or went away, then count.
        self.handshakes.retain(|&(key, generation)| {
            core.generation_of(key) == Some(generation)
                && core
                    .tunnel_mut(key)
                    .is_some_and(|t| !t.session.is_established())
        });
        if self.handshakes.len() > MAX_HANDSHAKES && self.last_reap != Some(core.now) {
            // Over the cap: first drop connections whose peer has already gone (a burst of
            // connect-and-close is accepted before its EOFs or resets are read). Once per
            // loop turn at most: under a flood of accepts this scan is the costly part.
            self.last_reap = Some(core.now);
            let mut gone = Vec::new();
            self.handshakes.retain(|&(key, _)| {
                let alive = core
                    .tunnel_mut(key)
                    .is_some_and(|t| !t.transport.peer_gone());
                if !alive {
                    gone.push(key);
                }
                alive
            });
            for key in gone {
                core.close_tunnel(key, CloseReason::PeerClosed);
            }
        }
        while self.handshakes.len() > MAX_HANDSHAKES {
            if let Some((key, _)) = self.handshakes.pop_front() {
                core.close_tunnel(key, CloseReason::HandshakeLimit);
            }
        }
    }

    /// Pick a tunnel of `tag` with room for one more stream, round-robin.
    fn pick_tunnel(&mut self, core: &mut Core, tag: &str) -> Result<usize, &'static str> {
        let Some(pool) = self.pools.get_mut(tag).filter(|p| !p.tunnels.is_empty()) else {
            return Err("no client");
        };
        let n = pool.tunnels.len();
        let start = pool.next % n;
        pool.next = pool.next.wrapping_add(1);
        (0..n)
            .map(|i| pool.tunnels[(start + i) % n])
            .find(|&k| core.tunnel_mut(k).is_some_and(|t| t.session.can_open()))
            .ok_or("stream limit reached")
    }

    fn visitor(&mut self, core: &mut Core, lkey: usize, sock: TcpStream, peer: SocketAddr) {
        let Some(Endpoint::Listener(Listener {
            purpose: Purpose::Public { port, target, tag },
            ..
        })) = core.endpoint(lkey)
        else {
            return;
        };
        let (port, target, tag) = (*port, target.clone(), tag.clone());
        let tkey = match self.pick_tunnel(core, &tag) {
            Ok(k) => k,
            Err("no client") => {
                warn!("no client for tag {tag}: closing visitor {peer} on port {port}");
                return;
            }
            Err(why) => {
                let max = self.params.max_streams;
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
        let rkey = core.slab.vacant_key();
        let Some(t) = core.tunnel_mut(tkey) else {
            return;
        };
        let opened = t.session.open_stream(rkey, &target);
        core.mark_dirty(tkey);
        let id = match opened {
            Ok(id) => id,
            // Checked by `pick_tunnel`; a session that just ended closes at the flush.
            Err(OpenError::StreamLimit | OpenError::NotOpen) => return,
        };
        let label = format!("visitor {peer} on port {port}");
        let spec = RelaySpec {
            tunnel: tkey,
            id,
            state: RelayState::Open,
            label,
            candidates: Vec::new(),
            deadline: core.now + OPEN_TIMEOUT,
            pending: None,
        };
        match core.new_relay(sock, spec) {
            Ok(key) => {
                // The key the session was given, unless the slab changed in between.
                if key != rkey
                    && let Some(t) = core.tunnel_mut(tkey)
                {
                    t.session.rebind(id, key);
                }
                debug!("stream {id}: visitor {peer} on port {port} -> {target}");
                // A visitor that speaks first has often sent its request already: read it now
                // so it leaves in the same tunnel write as the OPEN.
                if let Some(r) = core.relay_mut(key) {
                    r.readable = true;
                }
                core.relay_read(key);
            }
            Err(e) => {
                warn!("cannot register visitor {peer}: {e}");
                if let Some(t) = core.tunnel_mut(tkey) {
                    t.session.reset(id, "server error");
                }
            }
        }
    }

    fn accept_loop(&mut self, core: &mut Core, lkey: usize) {
        loop {
            let Some(Endpoint::Listener(l)) = core.endpoint(lkey) else {
                return;
            };
            let tunnels = matches!(l.purpose, Purpose::Tunnels);
            match l.sock.accept() {
                Ok((sock, peer)) if tunnels => self.new_tunnel(core, sock, peer),
                Ok((sock, peer)) => self.visitor(core, lkey, sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    let what = if tunnels {
                        "accepting a client"
                    } else {
                        "accepting a visitor"
                    };
                    self.accept_failed(core, lkey, what, &e);
                    return;
                }
            }
        }
    }
}

impl Role for ServerRole {
    fn on_accept(&mut self, core: &mut Core, key: usize) {
        self.accept_loop(core, key);
    }

    fn on_event(&mut self, core: &mut Core, tkey: usize, event: Event<'_, usize>) {
        match event {
            Event::Established => {
                let Some(t) = core.tunnel_mut(tkey) else {
                    return;
                };
                info!("tunnel attached: {} tag {}", t.peer, t.session.tag());
                let tag = t.session.tag().to_string();
                self.pools.entry(tag).or_default().tunnels.push(tkey);
            }
            Event::OpenOk { handle, .. } => {
                if let Some(r) = core.relay_mut(handle) {
                    r.deadline = None;
                }
                core.relay_read(handle);
            }
            Event::OpenFail { handle, id, reason } => {
                if let Some(r) = core.relay_mut(handle) {
                    warn!(
                        "client could not connect the target of stream {id}: {reason}; closing {}",
                        r.label
                    );
                }
                core.drop_relay(handle, false);
            }
            // A client's frames; the session has already refused them.
            Event::Open { .. } | Event::TokenRequired => {}
            Event::Credit { .. } | Event::Fin { .. } | Event::Reset { .. } => {}
        }
    }

    fn on_tunnel_closed(&mut self, _core: &mut Core, closed: ClosedTunnel) {
        let ClosedTunnel {
            key,
            tunnel: t,
            reason,
        } = closed;
        if !t.session.was_established() {
            warn!("refused client {}: {reason}", t.peer);
            return;
        }
        let tag = t.session.tag();
        info!(
            "tunnel detached: {} tag {tag}: {reason} ({} bytes in, {} bytes out)",
            t.peer, t.bytes_in, t.bytes_out
        );
        if let Some(pool) = self.pools.get_mut(tag) {
            pool.tunnels.retain(|&k| k != key);
            if pool.tunnels.is_empty() {
                self.pools.remove(tag);
            }
        }
    }

    fn on_deadline(&mut self, core: &mut Core, key: usize) {
        match core.endpoint(key) {
            Some(Endpoint::Listener(_)) => {
                self.accept_retry.remove(&key);
                self.accept_loop(core, key);
            }
            Some(Endpoint::Relay(r)) if r.deadline.is_some_and(|d| d <= core.now) => {
                let why = "no answer from the client in time";
                warn!("stream {}: {why}; closing {}", r.id, r.label);
                core.reset_stream(key, why);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reactor() -> Reactor<ServerRole> {
        let role = ServerRole::with_params(ServerParams {
            token: None,
            require_tls: false,
            max_streams: 8,
            heartbeat: Duration::from_secs(10),
            window: STREAM_WINDOW,
        });
        Reactor::new(role).unwrap()
    }

    /// A removed endpoint's key is not handed to a new endpoint in the same turn, so an
    /// event already returned for the old socket cannot reach the new one.
    #[test]
    fn removed_keys_are_reused_only_after_the_turn() {
        let mut r = reactor();
        let sock = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (key, generation) = r
            .core
            .insert(Endpoint::Listener(Listener {
                sock,
                purpose: Purpose::Tunnels,
            }))
            .unwrap();
        assert_eq!(r.core.generation_of(key), Some(generation));
        assert!(matches!(r.core.remove(key), Some(Endpoint::Listener(_))));
        assert!(
            r.core.remove(key).is_none(),
            "a second remove finds the marker"
        );
        assert_eq!(
            r.core.generation_of(key),
            None,
            "no timer matches the marker"
        );
        assert_ne!(r.core.slab.vacant_key(), key);
        r.core.free_removed();
        assert!(r.core.generation_of(key).is_none());
        assert_eq!(r.core.slab.vacant_key(), key);
    }
}
