//! The client role: keeps one tunnel to the server, reconnecting with exponential back-off
//! and jitter, and connects inner targets when the server opens streams.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;

use crate::buffer::Buf;
use crate::config::{ClientConfig, Host, Target};
use crate::protocol::flow::Flow;
use crate::protocol::frame::{Frame, kind};
use crate::protocol::handshake::{self, Accept, Challenge, Hello, NONCE_LEN};
use crate::reactor::{CloseReason, Endpoint, Reactor, RelaySpec, Role, STREAM_WINDOW, TimerTarget};
use crate::relay::RelayState;
use crate::sys::{self, Jitter};
use crate::tunnel::{HANDSHAKE_TIMEOUT, Phase, Tunnel};

/// Time allowed to resolve and connect an inner target, or to connect the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay; it doubles per failed attempt up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a refusal (a wrong token, say) retrying at once fixes nothing: start here.
const REFUSED_MIN_ATTEMPT: u32 = 5;
/// Resolver ticket key for the server's own name.
const SERVER_TICKET: usize = usize::MAX;

/// A stream whose target name is being resolved. The server may already send data (and
/// FIN) for it: they wait here, within the stream's window, for the connection.
pub struct PendingOpen {
    pub tunnel: usize,
    pub id: u32,
    pub label: String,
    pub port: u16,
    pub deadline: Instant,
    pub flow: Flow,
    pub pending: Buf,
}

pub struct ClientRole {
    cfg: ClientConfig,
    tunnel: Option<usize>,
    /// Failed attempts since the last established tunnel.
    attempt: u32,
    /// Identifies the current dial cycle; stale timers and resolutions carry an older one.
    epoch: u64,
    refused: bool,
    /// Server addresses still to try in this cycle.
    candidates: Vec<SocketAddr>,
    jitter: Jitter,
}

pub fn run(cfg: ClientConfig) -> io::Result<()> {
    sys::tune_allocator();
    match sys::raise_nofile_limit() {
        Ok(n) => debug!("open file limit: {n}"),
        Err(e) => warn!("cannot read the open file limit: {e}"),
    }
    let role = ClientRole {
        cfg,
        tunnel: None,
        attempt: 0,
        epoch: 0,
        refused: false,
        candidates: Vec::new(),
        jitter: Jitter::new(),
    };
    let mut reactor = Reactor::new(Role::Client(role))?;
    reactor.client_reconnect(0);
    reactor.run()
}

impl Reactor {
    fn client(&mut self) -> &mut ClientRole {
        match &mut self.role {
            Role::Client(c) => c,
            Role::Server(_) => unreachable!("client code runs only in the client role"),
        }
    }

    /// Dial the next address of the current cycle, or start a cycle: resolve the server's
    /// name if needed, then connect.
    pub(crate) fn client_reconnect(&mut self, epoch: u64) {
        let c = self.client();
        if epoch != c.epoch || c.tunnel.is_some() {
            return;
        }
        if !c.candidates.is_empty() {
            // The next address of the current cycle.
            self.client_dial_next();
            return;
        }
        let host = c.cfg.server_host.clone();
        let port = c.cfg.server_port;
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                c.candidates = vec![SocketAddr::new(ip, port)];
                self.client_dial_next();
            }
            Err(_) => {
                debug!("resolving server {host}");
                self.resolver.submit((SERVER_TICKET, epoch), &host, port);
            }
        }
    }

    /// Connect to the next candidate server address, or schedule a reconnect.
    fn client_dial_next(&mut self) {
        loop {
            let c = self.client();
            if c.candidates.is_empty() {
                self.schedule_reconnect();
                return;
            }
            let addr = c.candidates.remove(0);
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    let mut t = Tunnel::new(sock, addr, Phase::Connecting, self.now);
                    t.deadline = Some(self.now + CONNECT_TIMEOUT);
                    match self.insert(Endpoint::Tunnel(Box::new(t))) {
                        Ok((key, _)) => {
                            self.client().tunnel = Some(key);
                            self.schedule_tunnel_tick(key);
                            return;
                        }
                        Err(e) => warn!("cannot connect to server {addr}: {e}"),
                    }
                }
                Err(e) => warn!("cannot connect to server {addr}: {e}"),
            }
        }
    }

    fn schedule_reconnect(&mut self) {
        let now = self.now;
        let c = self.client();
        if c.refused {
            c.attempt = c.attempt.max(REFUSED_MIN_ATTEMPT);
            c.refused = false;
        }
        let exp = BACKOFF_FIRST.saturating_mul(1u32 << c.attempt.min(16));
        let base = exp.min(BACKOFF_MAX);
        // Jitter in [base/2, base): clients that lost the same server do not return in step.
        let delay = base.mul_f64(0.5 + 0.5 * c.jitter.next_unit());
        c.attempt = c.attempt.saturating_add(1);
        c.epoch += 1;
        let epoch = c.epoch;
        info!("reconnecting in {:.1} s", delay.as_secs_f64());
        self.schedule(now + delay, TimerTarget::Reconnect(epoch));
    }

    pub(crate) fn client_tunnel_connected(&mut self, key: usize) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        let failure = match t.sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match t.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.close_tunnel(key, format!("connect failed: {e}"));
            return;
        }
        let _ = t.sock.set_nodelay(true);
        t.phase = Phase::AwaitChallenge;
        t.deadline = Some(now + HANDSHAKE_TIMEOUT);
        t.readable = true;
        debug!("connected to server {}", t.peer);
        self.schedule_tunnel_tick(key);
        // The challenge may have arrived with the same readiness event: read it now, as no
        // further edge will announce it.
        self.tunnel_read(key);
    }

    pub(crate) fn client_handshake_frame(
        &mut self,
        tkey: usize,
        f: Frame<'_>,
    ) -> Result<(), CloseReason> {
        let now = self.now;
        let c = self.client();
        let (tag, token) = (
            c.cfg.tag.clone(),
            c.cfg.token.as_ref().map(|t| t.expose().to_vec()),
        );
        let Some(t) = self.tunnel_mut(tkey) else {
            return Ok(());
        };
        match (t.phase, f) {
            (Phase::AwaitChallenge, Frame::Challenge(p)) => {
                let ch = Challenge::decode(p).map_err(|e| format!("malformed CHALLENGE: {e}"))?;
                if ch.auth_required && token.is_none() {
                    error!("the server requires a token: pass --token or set TCP_FORWARD_TOKEN");
                }
                let proof = token
                    .as_ref()
                    .map(|tok| handshake::proof(tok, &ch.nonce, &tag));
                let mut nonce = [0u8; NONCE_LEN];
                sys::random_bytes(&mut nonce).map_err(|e| e.to_string())?;
                let hello = Hello {
                    window: STREAM_WINDOW,
                    tag: &tag,
                    nonce,
                    proof,
                }
                .encode();
                t.send_raw(&handshake::preamble())?;
                t.send(&Frame::Hello(&hello))?;
                t.phase = Phase::AwaitAccept {
                    client_nonce: nonce,
                    server_nonce: ch.nonce,
                };
                self.mark_dirty(tkey);
                Ok(())
            }
            (
                Phase::AwaitAccept {
                    client_nonce,
                    server_nonce,
                },
                Frame::Accept(p),
            ) => {
                let a = Accept::decode(p).map_err(|e| format!("malformed ACCEPT: {e}"))?;
                // With a token the server must prove it too: an impostor would otherwise get
                // a client that connects wherever it is told, inside the private network.
                if let Some(tok) = &token {
                    let proven = a.proof.is_some_and(|proof| {
                        handshake::verify_server(tok, &client_nonce, &server_nonce, &tag, &proof)
                    });
                    if !proven {
                        error!("the server did not prove that it knows the token: not serving it");
                        self.client().refused = true;
                        return Err("server authentication failed".into());
                    }
                }
                t.establish(now, Duration::from_millis(u64::from(a.heartbeat_ms)));
                t.tag = tag;
                t.peer_window = a.window;
                t.streams.set_max(a.max_streams as usize);
                info!("tunnel up: server {} tag {}", t.peer, t.tag);
                self.client().attempt = 0;
                self.schedule_tunnel_tick(tkey);
                Ok(())
            }
            (_, Frame::Refuse(reason)) => {
                error!("server refused: {reason}");
                self.client().refused = true;
                Err(format!("refused: {reason}"))
            }
            (_, other) => Err(format!(
                "protocol violation during the handshake: unexpected {other:?}"
            )),
        }
    }

    pub(crate) fn client_tunnel_closed(&mut self, t: &Tunnel, reason: &str) {
        self.client().tunnel = None;
        match t.phase {
            Phase::Established => warn!("tunnel to server {} lost: {reason}", t.peer),
            Phase::Connecting => warn!("cannot connect to server {}: {reason}", t.peer),
            _ => warn!("handshake with server {} failed: {reason}", t.peer),
        }
        // Never dial from here: the caller may still hold this tunnel's slab key, which a
        // new tunnel would reuse. A timer due now tries the next address of this cycle; a
        // lost tunnel starts a new cycle after back-off.
        let now = self.now;
        let c = self.client();
        if t.phase == Phase::Established {
            c.candidates.clear();
        }
        if c.candidates.is_empty() {
            self.schedule_reconnect();
        } else {
            let epoch = c.epoch;
            self.schedule(now, TimerTarget::Reconnect(epoch));
        }
    }

    pub(crate) fn client_open(
        &mut self,
        tkey: usize,
        id: u32,
        target: &str,
    ) -> Result<(), CloseReason> {
        let deadline = self.now + CONNECT_TIMEOUT;
        let Some(t) = self.tunnel_mut(tkey) else {
            return Ok(());
        };
        if t.streams.get(id).is_some() {
            return Err(format!("protocol violation: stream {id} opened twice"));
        }
        let parsed = Target::parse(target);
        let refusal = match &parsed {
            Err(e) => Some(format!("bad target {target:?}: {e}")),
            Ok(_) if t.streams.len() >= t.streams.max() => Some("stream limit reached".to_string()),
            Ok(_) => None,
        };
        if let Some(reason) = refusal {
            warn!("cannot connect to {target}: {reason}");
            t.send(&Frame::OpenFail {
                id,
                reason: &reason,
            })?;
            self.mark_dirty(tkey);
            return Ok(());
        }
        let Ok(tgt) = parsed else { return Ok(()) };
        match tgt.host {
            Host::Ip(ip) => {
                let addrs = vec![SocketAddr::new(ip, tgt.port)];
                let carried = self.new_stream_state(tkey);
                self.client_connect(tkey, id, target.to_string(), addrs, deadline, carried)
            }
            Host::Name(name) => {
                let (flow, pending) = self.new_stream_state(tkey);
                let pending = PendingOpen {
                    tunnel: tkey,
                    id,
                    label: target.to_string(),
                    port: tgt.port,
                    deadline,
                    flow,
                    pending,
                };
                let (key, generation) = self
                    .insert(Endpoint::Resolving(pending))
                    .map_err(|e| e.to_string())?;
                if let Some(t) = self.tunnel_mut(tkey) {
                    let _ = t.streams.accept(id, key);
                }
                self.resolver.submit((key, generation), &name, tgt.port);
                self.schedule_entry(key, deadline);
                Ok(())
            }
        }
    }

    /// Start a non-blocking connect to the first address that accepts one; the stream's table
    /// entry then names the new relay. Failure answers OPEN_FAIL.
    fn client_connect(
        &mut self,
        tkey: usize,
        id: u32,
        label: String,
        mut addrs: Vec<SocketAddr>,
        deadline: Instant,
        carried: (Flow, Buf),
    ) -> Result<(), CloseReason> {
        let mut last_error = String::from("no address");
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    let spec = RelaySpec {
                        tunnel: tkey,
                        id,
                        state: RelayState::Connecting,
                        label: label.clone(),
                        candidates: addrs,
                        deadline,
                        carried: Some(carried),
                    };
                    match self.new_relay(sock, spec) {
                        Ok(rkey) => {
                            if let Some(t) = self.tunnel_mut(tkey) {
                                t.streams.remove(id);
                                let _ = t.streams.accept(id, rkey);
                            }
                            return Ok(());
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            break;
                        }
                    }
                }
                Err(e) => {
                    if sys::is_fd_exhaustion(&e) {
                        self.note_fd_exhaustion("connecting a target", &e);
                    }
                    last_error = e.to_string();
                }
            }
        }
        warn!("cannot connect to {label}: {last_error}");
        if let Some(t) = self.tunnel_mut(tkey) {
            t.streams.remove(id);
            t.send(&Frame::OpenFail {
                id,
                reason: &last_error,
            })?;
            self.mark_dirty(tkey);
        }
        Ok(())
    }

    /// A connecting relay's socket reported writable (connected) or, when `failed`, an
    /// error or a hang-up. Only a failure needs asking the socket why.
    pub(crate) fn client_relay_connected(&mut self, rkey: usize, failed: bool) {
        let Some(r) = self.relay_mut(rkey) else {
            return;
        };
        let failure = if failed {
            Some(match r.sock.take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
            })
        } else {
            None
        };
        if let Some(e) = failure {
            if r.candidates.is_empty() {
                self.client_open_failed(rkey, &e.to_string());
            } else {
                // Try the target's next address under the same deadline.
                let (tkey, id, label) = (r.tunnel, r.id, r.label.clone());
                let addrs = std::mem::take(&mut r.candidates);
                let deadline = r.deadline.unwrap_or(self.now);
                debug!("stream {id}: {label}: {e}; trying the next address");
                let Some(Endpoint::Relay(old)) = self.remove(rkey) else {
                    return;
                };
                let carried = (old.flow, old.pending);
                if let Err(reason) = self.client_connect(tkey, id, label, addrs, deadline, carried)
                {
                    self.close_tunnel(tkey, reason);
                }
            }
            return;
        }
        let _ = r.sock.set_nodelay(true);
        r.state = RelayState::Open;
        r.deadline = None;
        let (tkey, id) = (r.tunnel, r.id);
        debug!("stream {id}: connected to {}", r.label);
        if let Some(t) = self.tunnel_mut(tkey) {
            if let Err(reason) = t.send_small(kind::OPEN_OK, id, &[]) {
                self.close_tunnel(tkey, reason);
                return;
            }
            self.mark_dirty(tkey);
        }
        // What the server sent ahead of OPEN_OK goes to the target now, then its FIN if any.
        self.relay_writable(rkey);
        if let Some(r) = self.relay_mut(rkey) {
            r.shutdown_write_if_drained();
        }
        self.finish_if_done(rkey);
        self.relay_read(rkey);
    }

    pub(crate) fn client_open_failed(&mut self, rkey: usize, reason: &str) {
        let (tkey, id, label) = match self.slab.get(rkey).map(|e| &e.ep) {
            Some(Endpoint::Relay(r)) => (r.tunnel, r.id, r.label.clone()),
            Some(Endpoint::Resolving(p)) => (p.tunnel, p.id, p.label.clone()),
            _ => return,
        };
        warn!("cannot connect to {label}: {reason}");
        self.drop_relay(rkey, false);
        if let Some(t) = self.tunnel_mut(tkey) {
            if let Err(why) = t.send(&Frame::OpenFail { id, reason }) {
                self.close_tunnel(tkey, why);
                return;
            }
            self.mark_dirty(tkey);
        }
    }

    pub(crate) fn client_resolved(
        &mut self,
        key: usize,
        generation: u64,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if key == SERVER_TICKET {
            let c = self.client();
            if generation != c.epoch || c.tunnel.is_some() {
                return;
            }
            match result {
                Ok(addrs) => {
                    c.candidates = addrs;
                    self.client_dial_next();
                }
                Err(e) => {
                    warn!("cannot connect to server: {e}");
                    self.schedule_reconnect();
                }
            }
            return;
        }
        if self.generation_of(key) != Some(generation) {
            return; // the stream is gone
        }
        let Some(Endpoint::Resolving(p)) = self.slab.get(key).map(|e| &e.ep) else {
            return;
        };
        let (tkey, id, label, port, deadline) =
            (p.tunnel, p.id, p.label.clone(), p.port, p.deadline);
        match result {
            Ok(addrs) => {
                let Some(Endpoint::Resolving(p)) = self.remove(key) else {
                    return;
                };
                let addrs = addrs
                    .into_iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect();
                let carried = (p.flow, p.pending);
                if let Err(reason) = self.client_connect(tkey, id, label, addrs, deadline, carried)
                {
                    self.close_tunnel(tkey, reason);
                }
            }
            Err(e) => self.client_open_failed(key, &e),
        }
    }
}
