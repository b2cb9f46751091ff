//! The client role: keeps one tunnel to the server, reconnecting with exponential back-off
//! and jitter, and connects inner targets when the server opens streams.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use serde_json::json;

use crate::admin::api::{self, segments};
use crate::admin::prom::Kind;
use crate::admin::stats::Live;
use crate::admin::time;

use crate::buffer::Buf;
use crate::cli::LogArgs;
use crate::config::{
    self, AdminSettings, ClientConfig, ClientInput, ConfigError, Host, Secret, Target, Verdict,
};
use crate::logging;
use crate::net::http::{Request, Response};
use crate::net::reactor::{
    ClosedTunnel, Core, Dial, Endpoint, Listener, PendingOpen, Purpose, Reactor, RelaySpec, Role,
    TimerTarget,
};
use crate::net::relay::RelayState;
use crate::net::resolve::Ticket;
use crate::net::sys::{self, Jitter};
use crate::net::tls::TlsStream;
use crate::net::transport::Transport;
use crate::net::tunnel::Tunnel;
use crate::net::udp::{IN, OUT, UdpDrop};
use crate::protocol::CloseReason;
use crate::protocol::handshake::NONCE_LEN;
use crate::protocol::proxy::{self, ProxyAddrs};
use crate::protocol::session::{ClientParams, Event, STREAM_WINDOW, Session};
use crate::tls::ClientTls;

/// Time allowed to connect the server (targets have `CONNECT_TIMEOUT`).
const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay; it doubles per failed attempt up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a refusal (a wrong token, say) retrying at once fixes nothing: start here.
const REFUSED_MIN_ATTEMPT: u32 = 5;
mod udp;

/// Resolver ticket key for the server's own name.
const SERVER_TICKET: usize = usize::MAX;
/// The OPEN_FAIL reason for a target outside the allow-list (`--allow`, `ALLOW`).
pub const NOT_ALLOWED: &str = "target not allowed by the client";

pub struct ClientRole {
    cfg: ClientConfig,
    /// What the configuration was loaded from, to load it again on SIGHUP.
    input: ClientInput,
    log_args: LogArgs,
    params: Arc<ClientParams>,
    /// The slab key of the dial or tunnel to the server, while there is one.
    tunnel: Option<usize>,
    /// Failed attempts since the last established tunnel.
    attempt: u32,
    /// A server refused us since the last established tunnel: back off longer.
    refused: bool,
    /// Identifies the current dial cycle; stale timers and resolutions carry an older one.
    epoch: u64,
    /// Server addresses still to try in this cycle.
    candidates: Vec<SocketAddr>,
    jitter: Jitter,
    counters: ClientCounters,
    started: SystemTime,
}

/// What the client counts, for its metrics and status.
#[derive(Debug, Default)]
struct ClientCounters {
    /// Tunnels established.
    tunnels: u64,
    /// Target connects that succeeded and that failed (refused, unresolved, timed out, or
    /// not allowed and never dialed).
    connects_ok: u64,
    connects_failed: u64,
}

pub fn run(cfg: ClientConfig, input: ClientInput, log_args: LogArgs) -> io::Result<()> {
    sys::tune_allocator();
    match sys::raise_nofile_limit() {
        Ok(n) => debug!("open file limit: {n}"),
        Err(e) => warn!("cannot read the open file limit: {e}"),
    }
    let params = Arc::new(ClientParams {
        token: cfg.token.as_ref().map(|t| t.expose().to_vec()),
        tag: cfg.tag.clone(),
        window: STREAM_WINDOW,
    });
    let role = ClientRole {
        cfg,
        input,
        log_args,
        params,
        tunnel: None,
        attempt: 0,
        refused: false,
        epoch: 0,
        candidates: Vec::new(),
        jitter: Jitter::new(),
        counters: ClientCounters::default(),
        started: SystemTime::now(),
    };
    log_allow_list(&role.cfg);
    let mut reactor = Reactor::new(role)?;
    if let Some(admin) = &reactor.role.cfg.admin {
        let sock = TcpListener::bind(admin.addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for the admin API on {}: {e}", admin.addr),
            )
        })?;
        info!("admin API on http://{}", admin.addr);
        reactor.core.insert(Endpoint::Listener(Listener {
            sock,
            purpose: Purpose::Admin,
        }))?;
    }
    reactor.role.reconnect(&mut reactor.core, 0);
    reactor.run()
}

impl ClientRole {
    /// Dial the next address of the current cycle, or start a cycle: resolve the server's
    /// name if needed, then connect.
    fn reconnect(&mut self, core: &mut Core, epoch: u64) {
        if epoch != self.epoch || self.tunnel.is_some() {
            return;
        }
        if !self.candidates.is_empty() {
            self.dial_next(core);
            return;
        }
        let host = &self.cfg.server_host;
        let port = self.cfg.server_port;
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                self.candidates = vec![SocketAddr::new(ip, port)];
                self.dial_next(core);
            }
            Err(_) => {
                debug!("resolving server {host}");
                core.resolver.submit((SERVER_TICKET, epoch), host, port);
            }
        }
    }

    /// Connect to the next candidate server address, or schedule a reconnect.
    fn dial_next(&mut self, core: &mut Core) {
        while !self.candidates.is_empty() {
            let peer = self.candidates.remove(0);
            match TcpStream::connect(peer) {
                Ok(sock) => {
                    let dial = Dial {
                        sock,
                        peer,
                        deadline: core.now + SERVER_CONNECT_TIMEOUT,
                    };
                    let deadline = dial.deadline;
                    match core.insert(Endpoint::Dial(dial)) {
                        Ok((key, _)) => {
                            self.tunnel = Some(key);
                            core.schedule_entry(key, deadline);
                            return;
                        }
                        Err(e) => warn!("cannot connect to server {peer}: {e}"),
                    }
                }
                Err(e) => warn!("cannot connect to server {peer}: {e}"),
            }
        }
        self.schedule_reconnect(core);
    }

    fn schedule_reconnect(&mut self, core: &mut Core) {
        if std::mem::take(&mut self.refused) {
            self.attempt = self.attempt.max(REFUSED_MIN_ATTEMPT);
        }
        let exp = BACKOFF_FIRST.saturating_mul(1u32 << self.attempt.min(16));
        let base = exp.min(BACKOFF_MAX);
        // Jitter in [base/2, base): clients that lost the same server do not return in step.
        let delay = base.mul_f64(0.5 + 0.5 * self.jitter.next_unit());
        self.attempt = self.attempt.saturating_add(1);
        self.epoch += 1;
        info!("reconnecting in {:.1} s", delay.as_secs_f64());
        core.schedule(core.now + delay, TimerTarget::Role(self.epoch));
    }

    /// The dial or tunnel is gone: try the next address of this cycle now, or a new cycle
    /// after back-off. Never dial inline: the caller may still hold the old slab key, which
    /// a new endpoint would reuse.
    fn lost_server(&mut self, core: &mut Core, was_established: bool, refused: bool) {
        self.tunnel = None;
        self.refused |= refused;
        if was_established {
            self.candidates.clear();
        }
        if self.candidates.is_empty() {
            self.schedule_reconnect(core);
        } else {
            core.schedule(core.now, TimerTarget::Role(self.epoch));
        }
    }

    /// The connect to the server failed or timed out: try the next address.
    fn dial_failed(&mut self, core: &mut Core, key: usize, peer: SocketAddr, reason: CloseReason) {
        core.remove(key);
        warn!("cannot connect to server {peer}: {reason}");
        self.lost_server(core, false, false);
    }

    /// The connect to the server finished: start the handshake on the same slab key, or
    /// give up on this address. `hung_up`: the event said the peer closed or failed.
    fn dialed(&mut self, core: &mut Core, key: usize, hung_up: bool) {
        let Some(Endpoint::Dial(d)) = core.endpoint(key) else {
            return;
        };
        let peer = d.peer;
        let failure = match d.sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match d.sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.dial_failed(core, key, peer, CloseReason::ConnectFailed(e.to_string()));
            return;
        }
        let mut nonce = [0u8; NONCE_LEN];
        let tls = self
            .cfg
            .tls
            .as_ref()
            .map(TlsStream::client_connection)
            .transpose();
        let tls = match sys::random_bytes(&mut nonce).and(tls) {
            Ok(tls) => tls,
            Err(e) => {
                core.remove(key);
                warn!("handshake with server {peer} failed: {e}");
                self.lost_server(core, false, false);
                return;
            }
        };
        let Some(Endpoint::Dial(d)) = core.take_in_place(key) else {
            return;
        };
        let _ = d.sock.set_nodelay(true);
        let session = Session::client(Arc::clone(&self.params), nonce, core.now);
        let transport = match tls {
            Some(conn) => Transport::Tls(Box::new(TlsStream::client(d.sock, conn))),
            None => Transport::Plain(d.sock),
        };
        let mut t = Tunnel::new(transport, peer, session);
        t.readable = true;
        // The server may have sent its challenge and closed already: read on to the end.
        t.read_closed_hint = hung_up;
        core.put_in_place(key, Endpoint::Tunnel(Box::new(t)));
        debug!("connected to server {peer}");
        // A TLS ClientHello waits to go out.
        core.mark_dirty(key);
        core.schedule_tunnel_tick(key);
        // The challenge may have arrived with the same readiness event: read it now, as no
        // further edge will announce it.
        core.tunnel_read(key, self);
    }

    /// Say so when nothing proves that the server is the real one.
    fn warn_if_unauthenticated(&self) {
        if self.cfg.token.is_some() {
            return;
        }
        match &self.cfg.tls {
            Some(tls) if tls.authenticates_server => {}
            Some(_) => warn!(
                "the server is not authenticated: no token, --ca or --fingerprint, so a man \
                 in the middle could pose as the server and read the traffic"
            ),
            None => warn!(
                "the server is not authenticated and TLS is off: anyone on the path can read \
                 the traffic or pose as the server"
            ),
        }
    }

    /// The server opened stream `id` to `target`: resolve it or connect it. With `proxy`, the
    /// PROXY header is the first thing in the stream's buffer, ahead of any early data.
    fn open(
        &mut self,
        core: &mut Core,
        tkey: usize,
        id: u32,
        target: &str,
        proxy: Option<ProxyAddrs>,
    ) {
        let deadline = core.now + self.cfg.connect_timeout;
        let Some((tgt, verdict)) = self.take_open(core, tkey, id, target, false) else {
            return;
        };
        let early = proxy.map(|p| {
            let mut header = Vec::with_capacity(proxy::MAX_HEADER_LEN);
            p.header(&mut header);
            debug!(
                "stream {id}: PROXY {} header for {} -> {}",
                p.version, p.src, p.dst
            );
            (Core::stream_buffer_after(&header), header.len())
        });
        match tgt.host {
            Host::Ip(ip) => {
                let addrs = vec![SocketAddr::new(ip, tgt.port)];
                let started = connect(core, tkey, id, target.to_string(), addrs, deadline, early);
                self.refuse_unless(core, tkey, id, started);
            }
            Host::Name(name) => {
                let (pending, header) = early.unwrap_or_else(|| (Core::stream_buffer(), 0));
                let pending = PendingOpen {
                    tunnel: tkey,
                    id,
                    label: target.to_string(),
                    port: tgt.port,
                    deadline,
                    pending,
                    header,
                    check_addresses: verdict == Verdict::IfEveryAddressAllowed,
                };
                match core.insert(Endpoint::Resolving(pending)) {
                    Ok((key, generation)) => {
                        if let Some(t) = core.tunnel_mut(tkey) {
                            t.session.rebind(id, key);
                        }
                        debug!("stream {id}: resolving {target}");
                        core.resolver.submit((key, generation), &name, tgt.port);
                        core.schedule_entry(key, deadline);
                    }
                    Err(e) => self.refuse(core, tkey, id, target, &e.to_string()),
                }
            }
        }
    }

    /// Take stream `id` to `target` (a datagram stream with `dgram`) into the session, its
    /// handle a placeholder the caller rebinds, once the target parses and the allow-list
    /// does not refuse it outright; otherwise answer OPEN_FAIL. Returns the target and the
    /// allow-list's verdict (names it admits by address only are checked once resolved).
    fn take_open(
        &mut self,
        core: &mut Core,
        tkey: usize,
        id: u32,
        target: &str,
        dgram: bool,
    ) -> Option<(Target, Verdict)> {
        let placeholder = core.slab.vacant_key();
        let t = core.tunnel_mut(tkey)?;
        let taken = match Target::parse(target) {
            Err(e) => Err(format!("bad target {target:?}: {e}")),
            Ok(tgt) => t
                .session
                .accept_open(id, placeholder, dgram)
                .map(|()| tgt)
                .map_err(str::to_string),
        };
        let tgt = match taken {
            Ok(tgt) => tgt,
            Err(reason) => {
                self.refuse(core, tkey, id, target, &reason);
                return None;
            }
        };
        let verdict = match &self.cfg.allow {
            None => Verdict::Allowed,
            Some(list) => list.verdict(&tgt),
        };
        if verdict == Verdict::NotAllowed {
            self.refuse_not_allowed(core, tkey, id, target, None);
            return None;
        }
        Some((tgt, verdict))
    }

    /// A connecting relay's socket reported writable (connected) or, when `failed`, an
    /// error or a hang-up. Only a failure needs asking the socket why.
    fn relay_connected(&mut self, core: &mut Core, rkey: usize, failed: bool) {
        let now = core.now;
        let Some(r) = core.relay_mut(rkey) else {
            return;
        };
        if failed {
            let e = match r.sock.take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
            };
            if r.candidates.is_empty() {
                self.open_failed(core, rkey, &e.to_string());
                return;
            }
            // Try the target's next address under the same deadline.
            let (tkey, id, label) = (r.tunnel, r.id, r.label.clone());
            let addrs = std::mem::take(&mut r.candidates);
            let deadline = r.deadline.unwrap_or(now);
            debug!("stream {id}: {label}: {e}; trying the next address");
            let Some(Endpoint::Relay(old)) = core.remove(rkey) else {
                return;
            };
            let early = Some((old.pending, old.header));
            let started = connect(core, tkey, id, label, addrs, deadline, early);
            self.refuse_unless(core, tkey, id, started);
            return;
        }
        self.counters.connects_ok += 1;
        let _ = r.sock.set_nodelay(true);
        r.state = RelayState::Open;
        r.deadline = None;
        let (tkey, id) = (r.tunnel, r.id);
        debug!("stream {id}: connected to {}", r.label);
        if let Some(t) = core.tunnel_mut(tkey) {
            t.session.stream_connected(id);
            core.mark_dirty(tkey);
        }
        // What the server sent ahead of OPEN_OK goes to the target now, then its FIN if any.
        core.relay_writable(rkey);
        core.shut_if_complete(rkey);
        core.relay_read(rkey);
    }

    fn resolved_server(
        &mut self,
        core: &mut Core,
        epoch: u64,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if epoch != self.epoch || self.tunnel.is_some() {
            return;
        }
        match result {
            Ok(addrs) => {
                self.candidates = addrs;
                self.dial_next(core);
            }
            Err(e) => {
                warn!("cannot connect to server: {e}");
                self.schedule_reconnect(core);
            }
        }
    }
}

impl Role for ClientRole {
    fn on_connect(&mut self, core: &mut Core, key: usize, failed: bool) {
        match core.endpoint(key) {
            Some(Endpoint::Dial(_)) => self.dialed(core, key, failed),
            Some(Endpoint::Relay(_)) => self.relay_connected(core, key, failed),
            _ => {}
        }
    }

    fn on_event(&mut self, core: &mut Core, tkey: usize, event: Event<'_, usize>) {
        match event {
            Event::Established => {
                let now = core.now;
                if let Some(t) = core.tunnel_mut(tkey) {
                    info!("tunnel up: server {} tag {}", t.peer, t.session.tag());
                    t.established_at = Some((SystemTime::now(), now));
                }
                self.counters.tunnels += 1;
                self.warn_if_unauthenticated();
                self.attempt = 0;
                self.refused = false;
            }
            Event::TokenRequired => {
                error!("the server requires a token: pass --token or set TCP_FORWARD_TOKEN");
            }
            Event::Open {
                id, target, dgram, ..
            } if dgram => self.open_udp(core, tkey, id, target),
            Event::Open {
                id, target, proxy, ..
            } => self.open(core, tkey, id, target, proxy),
            // A server's frames; the session has already refused them.
            Event::OpenOk { .. } | Event::OpenFail { .. } => {}
            Event::Credit { .. } | Event::Fin { .. } | Event::Reset { .. } => {}
        }
    }

    fn on_tunnel_closed(&mut self, core: &mut Core, closed: ClosedTunnel) {
        let (t, reason) = (closed.tunnel, closed.reason);
        let established = t.session.was_established();
        match &reason {
            CloseReason::Refused(why) if !established => error!("server refused: {why}"),
            CloseReason::ServerAuthFailed => {
                error!("the server did not prove that it knows the token: not serving it")
            }
            _ => {}
        }
        if established {
            warn!("tunnel to server {} lost: {reason}", t.peer);
        } else {
            warn!("handshake with server {} failed: {reason}", t.peer);
        }
        self.lost_server(core, established, reason.is_refusal());
    }

    fn on_deadline(&mut self, core: &mut Core, key: usize) {
        let now = core.now;
        match core.endpoint(key) {
            Some(Endpoint::Dial(d)) if d.deadline <= now => {
                let peer = d.peer;
                self.dial_failed(core, key, peer, CloseReason::ConnectTimeout);
            }
            Some(Endpoint::Relay(r))
                if r.state == RelayState::Connecting && r.deadline.is_some_and(|d| d <= now) =>
            {
                self.open_failed(core, key, "connect timed out");
            }
            Some(Endpoint::Resolving(p)) if p.deadline <= now => {
                self.open_failed(core, key, "name resolution timed out");
            }
            Some(Endpoint::UdpFlow(f)) if f.deadline.is_some_and(|d| d <= now) => {
                self.udp_open_failed(core, key, "name resolution timed out");
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, core: &mut Core, epoch: u64) {
        self.reconnect(core, epoch);
    }

    fn on_resolved(
        &mut self,
        core: &mut Core,
        (key, generation): Ticket,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        if key == SERVER_TICKET {
            self.resolved_server(core, generation, result);
            return;
        }
        if core.generation_of(key) != Some(generation) {
            return; // the stream is gone
        }
        if let Some(Endpoint::UdpFlow(_)) = core.endpoint(key) {
            self.resolved_udp(core, key, result);
            return;
        }
        let Some(Endpoint::Resolving(p)) = core.endpoint(key) else {
            return;
        };
        match result {
            Ok(addrs) => {
                let port = p.port;
                let addrs: Vec<SocketAddr> = addrs
                    .into_iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect();
                if p.check_addresses
                    && let Some(list) = &self.cfg.allow
                    && let Some(&bad) = addrs.iter().find(|a| !list.allows_addr(**a))
                {
                    let (tkey, id, label) = (p.tunnel, p.id, p.label.clone());
                    core.drop_relay(key, false);
                    self.refuse_not_allowed(core, tkey, id, &label, Some(bad));
                    return;
                }
                let Some(Endpoint::Resolving(p)) = core.remove(key) else {
                    return;
                };
                let started = connect(
                    core,
                    p.tunnel,
                    p.id,
                    p.label,
                    addrs,
                    p.deadline,
                    Some((p.pending, p.header)),
                );
                self.refuse_unless(core, p.tunnel, p.id, started);
            }
            Err(e) => self.open_failed(core, key, &e),
        }
    }

    fn on_reload(&mut self, _core: &mut Core) {
        info!("SIGHUP: reading the configuration again");
        match self.reload() {
            Ok(summary) => info!("reloaded: {summary}"),
            Err(e) => warn!("reload failed, nothing changed: {e}"),
        }
    }

    fn on_admin_request(&mut self, core: &mut Core, req: &Request<'_>) -> Response {
        let token = self.cfg.admin.as_ref().and_then(|a| a.token.as_ref());
        if let Err(r) = api::check_origin(token, req) {
            return r;
        }
        if let Some(r) = api::public(req, false) {
            return r;
        }
        if let Err(r) = api::authorize(token, req) {
            return r;
        }
        let get = matches!(req.method, "GET" | "HEAD");
        match segments(req.path).as_slice() {
            ["api", "status"] if get => Response::json(200, &self.status(core)),
            ["metrics"] if get => self.metrics(core),
            ["api", "status"] | ["metrics"] => Response::method_not_allowed("GET, HEAD"),
            _ => Response::not_found(),
        }
    }
}

impl ClientRole {
    /// Answer OPEN_FAIL when no connect could be started.
    fn refuse_unless(
        &mut self,
        core: &mut Core,
        tkey: usize,
        id: u32,
        started: Result<(), (String, String)>,
    ) {
        if let Err((label, why)) = started {
            self.refuse(core, tkey, id, &label, &why);
        }
    }

    /// Stream `id` cannot be connected: say so, and tell the server.
    fn refuse(&mut self, core: &mut Core, tkey: usize, id: u32, label: &str, reason: &str) {
        warn!("cannot connect to {label}: {reason}");
        self.counters.connects_failed += 1;
        if let Some(t) = core.tunnel_mut(tkey) {
            t.session.refuse_open(id, reason);
            core.mark_dirty(tkey);
        }
    }

    /// Stream `id`'s target is outside the allow-list (`resolved_to`: the address of the
    /// name that no entry admits): refuse it, dialing nothing.
    fn refuse_not_allowed(
        &mut self,
        core: &mut Core,
        tkey: usize,
        id: u32,
        target: &str,
        resolved_to: Option<SocketAddr>,
    ) {
        match resolved_to {
            None => warn!("stream {id}: refused {target}: {NOT_ALLOWED} (--allow, ALLOW)"),
            Some(a) => warn!(
                "stream {id}: refused {target}: {NOT_ALLOWED} (--allow, ALLOW): it resolves \
                 to {}, which no entry allows",
                a.ip()
            ),
        }
        // The metric's results are fixed (ok, failed): a target refused here is one this
        // client could not connect; the log line tells why.
        self.counters.connects_failed += 1;
        if let Some(t) = core.tunnel_mut(tkey) {
            t.session.refuse_open(id, NOT_ALLOWED);
            core.mark_dirty(tkey);
        }
    }

    /// A stream whose relay or pending open failed to connect its target.
    fn open_failed(&mut self, core: &mut Core, rkey: usize, reason: &str) {
        let (tkey, id, label) = match core.endpoint(rkey) {
            Some(Endpoint::Relay(r)) => (r.tunnel, r.id, r.label.clone()),
            Some(Endpoint::Resolving(p)) => (p.tunnel, p.id, p.label.clone()),
            _ => return,
        };
        core.drop_relay(rkey, false);
        self.refuse(core, tkey, id, &label, reason);
    }

    /// `GET /api/status`: the tunnel's state, server, tag, streams, bytes and reconnects.
    fn status(&self, core: &Core) -> serde_json::Value {
        let live = Live::of(core);
        let traffic = live.all(core);
        let tunnel = self.tunnel.and_then(|k| match core.endpoint(k) {
            Some(Endpoint::Tunnel(t)) => Some(t),
            _ => None,
        });
        let up = tunnel.is_some_and(|t| t.session.is_established());
        let server = match tunnel {
            Some(t) => t.peer.to_string(),
            None => match self.cfg.server_host.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, self.cfg.server_port).to_string(),
                Err(_) => format!("{}:{}", self.cfg.server_host, self.cfg.server_port),
            },
        };
        let connected_at = tunnel
            .filter(|_| up)
            .and_then(|t| t.established_at)
            .map(|(at, _)| time::rfc3339(at));
        json!({
            "role": "client",
            "version": env!("CARGO_PKG_VERSION"),
            "state": if up { "up" } else { "connecting" },
            "server": server,
            "tag": self.cfg.tag,
            "connected_at": connected_at,
            "streams": live.total.streams,
            "bytes_in": traffic.bytes.written,
            "bytes_out": traffic.bytes.read,
            "reconnects": self.counters.tunnels.saturating_sub(1),
        })
    }

    fn metrics(&self, core: &Core) -> Response {
        let live = Live::of(core);
        let traffic = live.all(core);
        let up = self
            .tunnel
            .and_then(|k| match core.endpoint(k) {
                Some(Endpoint::Tunnel(t)) => Some(t.session.is_established()),
                _ => None,
            })
            .unwrap_or(false);
        api::metrics(self.started, |out| {
            out.family(
                "tcpforward_tunnel_up",
                Kind::Gauge,
                "1 while the tunnel to the server is established.",
            );
            out.sample("tcpforward_tunnel_up", &[], u64::from(up));
            out.family(
                "tcpforward_reconnects_total",
                Kind::Counter,
                "Tunnels established after the first.",
            );
            out.sample(
                "tcpforward_reconnects_total",
                &[],
                self.counters.tunnels.saturating_sub(1),
            );
            let flows = live.udp_flows.values().sum::<usize>();
            let udp = core.udp_stats.get(&0).copied().unwrap_or_default();
            out.family(
                "tcpforward_streams",
                Kind::Gauge,
                "Streams open (UDP: flows), by protocol.",
            );
            out.sample(
                "tcpforward_streams",
                &[("proto", "tcp")],
                live.total.streams.saturating_sub(flows) as u64,
            );
            out.sample("tcpforward_streams", &[("proto", "udp")], flows as u64);
            out.family(
                "tcpforward_stream_bytes_total",
                Kind::Counter,
                "Stream bytes (UDP: datagram bytes) by protocol: in from the server toward targets, out the way back.",
            );
            for (direction, tcp, udp) in [
                ("in", traffic.bytes.written, udp.bytes[IN]),
                ("out", traffic.bytes.read, udp.bytes[OUT]),
            ] {
                for (proto, n) in [("tcp", tcp), ("udp", udp)] {
                    out.sample(
                        "tcpforward_stream_bytes_total",
                        &[("direction", direction), ("proto", proto)],
                        n,
                    );
                }
            }
            out.family(
                "tcpforward_udp_datagrams_total",
                Kind::Counter,
                "Datagrams: in from the server toward targets, out the way back.",
            );
            for (direction, n) in [("in", udp.datagrams[IN]), ("out", udp.datagrams[OUT])] {
                out.sample(
                    "tcpforward_udp_datagrams_total",
                    &[("direction", direction)],
                    n,
                );
            }
            out.family(
                "tcpforward_udp_dropped_total",
                Kind::Counter,
                "Datagrams dropped, by reason.",
            );
            for why in UdpDrop::ALL {
                out.sample(
                    "tcpforward_udp_dropped_total",
                    &[("reason", why.label())],
                    udp.dropped(why),
                );
            }
            out.family(
                "tcpforward_target_connects_total",
                Kind::Counter,
                "Connects to inner targets, by result (failed counts targets the allow-list refused, never dialed).",
            );
            for (result, n) in [
                ("ok", self.counters.connects_ok),
                ("failed", self.counters.connects_failed),
            ] {
                out.sample("tcpforward_target_connects_total", &[("result", result)], n);
            }
        })
    }
}

/// Say once, at start-up, which targets the server may have this client connect to.
impl ClientRole {
    /// Load the configuration again from the same command line and file, and apply what
    /// can change while tunnels run: `ALLOW` and `CONNECT_TIMEOUT` (for streams opened from
    /// now on) and `LOG_LEVEL`. What names the tunnel itself (the server, the tag, the token,
    /// TLS) or the admin API is logged as needing a restart. A file that does not load
    /// changes nothing.
    fn reload(&mut self) -> Result<String, ConfigError> {
        let cfg = config::client_from_args(&self.input)?;
        let level = logging::level(&self.log_args, cfg.log_level)?;
        for w in &cfg.warnings {
            warn!("{w}");
        }
        let old = &self.cfg;
        let secret = |t: &Option<Secret>| t.as_ref().map(|t| t.expose().to_vec());
        let tls = |t: &Option<ClientTls>| t.as_ref().map(|t| t.trust_digest);
        let admin = |a: &Option<AdminSettings>| a.as_ref().map(|a| (a.addr, secret(&a.token)));
        let restart: Vec<&str> = [
            ("SERVER_IP", cfg.server_host != old.server_host),
            ("SERVER_PORT", cfg.server_port != old.server_port),
            ("TAG", cfg.tag != old.tag),
            ("TOKEN", secret(&cfg.token) != secret(&old.token)),
            ("TLS", tls(&cfg.tls) != tls(&old.tls)),
            ("ADMIN_ADDR", admin(&cfg.admin) != admin(&old.admin)),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        for key in &restart {
            warn!("reload: {key} changed: it takes effect at the next restart");
        }
        let mut settings = Vec::new();
        if cfg.allow != self.cfg.allow {
            settings.push("ALLOW");
            self.cfg.allow = cfg.allow;
            log_allow_list(&self.cfg);
        }
        if cfg.connect_timeout != self.cfg.connect_timeout {
            settings.push("CONNECT_TIMEOUT");
            self.cfg.connect_timeout = cfg.connect_timeout;
        }
        if level != log::max_level() {
            settings.push("LOG_LEVEL");
            log::set_max_level(level);
        }
        Ok(if settings.is_empty() {
            "no setting changed".to_string()
        } else {
            format!("settings changed: {}", settings.join(", "))
        })
    }
}

fn log_allow_list(cfg: &ClientConfig) {
    match &cfg.allow {
        None => info!(
            "no allow-list (--allow, ALLOW): the server may open connections to any host and \
             port this client can reach"
        ),
        Some(list) if list.allows_everything() => {
            info!("allow-list: * (the server may open connections to any host and port)")
        }
        Some(list) => info!("allow-list: the server may open connections only to {list}"),
    }
}

/// Start a non-blocking connect to the first address that accepts one; the stream's
/// handle then names the new relay. When no address takes one: the label and the last error,
/// for the caller to answer OPEN_FAIL.
fn connect(
    core: &mut Core,
    tkey: usize,
    id: u32,
    label: String,
    mut addrs: Vec<SocketAddr>,
    deadline: Instant,
    mut early: Option<(Buf, usize)>,
) -> Result<(), (String, String)> {
    let mut last_error = String::from("no address");
    while !addrs.is_empty() {
        let addr = addrs.remove(0);
        match TcpStream::connect(addr) {
            Ok(sock) => {
                let (pending, header) = early.take().unzip();
                let spec = RelaySpec {
                    tunnel: tkey,
                    id,
                    state: RelayState::Connecting,
                    label: label.clone(),
                    candidates: addrs,
                    deadline,
                    pending,
                    header: header.unwrap_or(0),
                    port: 0,
                    info: None,
                };
                match core.new_relay(sock, spec) {
                    Ok(rkey) => {
                        if let Some(t) = core.tunnel_mut(tkey) {
                            t.session.rebind(id, rkey);
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
                    core.note_fd_exhaustion("connecting a target", &e);
                }
                last_error = e.to_string();
            }
        }
    }
    Err((label, last_error))
}
