//! The server role: listens for client tunnels on INNER_PORT and for visitors on every
//! mapped public port; opens a stream over a tunnel of the mapping's tag for each visitor.
//! The mappings are the role's (`ports`): a listener knows only its port, so a reload or the
//! admin API can retarget a port without touching its listener or its open streams.
//! `api.rs` answers the admin API; `reload.rs` applies a changed configuration;
//! `refusals.rs` sums up the connections refused at accept for the log.
//!
//! Bandwidth limits are the core's (`net::limit`): the role tells it each port's limit when
//! the port is published, retargeted or reloaded.
//!
//! Source policy runs right after accept, before anything else is made for the connection:
//! a client outside `ALLOW`, a visitor outside its port's `[ALLOW]` list, or a visitor whose
//! address already has `MAX_PER_SOURCE` streams open on the port is closed there and counted.
//! The per-source count is the core's (`Core::visitors_by_source`), kept where visitor relays
//! are made and removed, so every way a stream ends (finish, reset, its tunnel closing) frees
//! its slot.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};

use crate::admin::stats::{RateHistory, ServerCounters, Visit};
use crate::cli::LogArgs;
use crate::config::{
    self, Cidr, Mapping, Proto, Rate, Secret, ServerConfig, ServerTlsSetting, Target,
};
use crate::net::http::{Request, Response};
use crate::net::reactor::{
    ClosedTunnel, Core, Endpoint, Listener, Purpose, Reactor, RelaySpec, Role, StreamTimeouts,
    TimerTarget,
};
use crate::net::relay::{RelayState, StreamInfo};
use crate::net::sys;
use crate::net::tls::TlsStream;
use crate::net::transport::Transport;
use crate::net::tunnel::Tunnel;
use crate::net::udp::UdpDrop;
use crate::protocol::CloseReason;
use crate::protocol::caps;
use crate::protocol::handshake::NONCE_LEN;
use crate::protocol::proxy::{ProxyAddrs, ProxyVersion};
use crate::protocol::session::{Event, OpenError, STREAM_WINDOW, ServerParams, Session};
use crate::tls::{self, ServerTls};

mod api;
mod refusals;
mod reload;
mod udp;

use self::refusals::RefusalLog;
use self::udp::{PublishedUdp, bind_udp};

/// Handshakes in progress beyond this number evict the oldest, so idle or garbage
/// connections cannot keep a real client out.
const MAX_HANDSHAKES: usize = 256;
/// How long a visitor waits for the client to connect the inner target.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// After running out of file descriptors, try accepting again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often the tunnels' byte counts are sampled for their rates (with the admin API on).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The role timer of the rate sampler.
const SAMPLER: u64 = 0;
/// The role timer of the summary of refused connections.
const REFUSALS: u64 = 1;
/// The role timer of the summary of datagrams dropped before they had a flow.
const UDP_DROPS: u64 = 2;

/// The established tunnels of one tag; new visitors go round-robin over them.
#[derive(Default)]
struct Pool {
    tunnels: Vec<usize>,
    next: usize,
}

/// A published port: where its visitors go, and its listener.
struct Published {
    target: Target,
    /// `target` as text, shared with the streams opened to it.
    target_text: Arc<str>,
    tag: String,
    /// `[ALLOW]`: who may connect (`None`: anyone).
    allow: Option<Vec<Cidr>>,
    /// `[PROXY]`: the header the client writes to the target first (`None`: none).
    proxy: Option<ProxyVersion>,
    /// `[LIMIT]` or `BANDWIDTH`: the port's bandwidth in each direction (`None`: no limit);
    /// the core's bucket of the port enforces it.
    limit: Option<Rate>,
    listener: usize,
}

pub struct ServerRole {
    params: Arc<ServerParams>,
    /// `None` with TLS off.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What reload reads again, and what it may not change.
    cfg_file: PathBuf,
    mapper_file: PathBuf,
    inner_port: u16,
    /// `BIND_ADDR` as configured (reload compares it), and where the ports listen.
    bind_addr: Option<IpAddr>,
    bind: Bind,
    admin_addr: Option<SocketAddr>,
    admin_token: Option<Secret>,
    /// The log flags of the command line, which win over LOG_LEVEL.
    log_args: LogArgs,
    /// IDLE_TIMEOUT and FIN_TIMEOUT, as the core applies them.
    timeouts: StreamTimeouts,
    ports: BTreeMap<u16, Published>,
    counters: ServerCounters,
    /// Byte counts of each established tunnel over the last seconds, by tunnel key.
    rates: HashMap<usize, RateHistory>,
    started: SystemTime,
    pools: HashMap<String, Pool>,
    handshakes: VecDeque<(usize, u64)>,
    /// Listeners with an accept retry scheduled.
    accept_retry: HashSet<usize>,
    /// The loop turn of the last scan for closed handshakes.
    last_reap: Option<Instant>,
    /// `ALLOW`: the addresses clients may attach from (`None`: any).
    client_allow: Option<Vec<Cidr>>,
    /// `MAX_PER_SOURCE`: visitor streams per source address and public port (0: no cap).
    max_per_source: u32,
    /// `BANDWIDTH`: the limit of a port without a `[LIMIT]` line, such as one the admin API
    /// adds.
    default_limit: Option<Rate>,
    refusals: RefusalLog,
    /// The published UDP ports (`[UDP]`), by port.
    udp_ports: BTreeMap<u16, PublishedUdp>,
    /// `MAX_UDP_FLOWS`: flows per UDP mapping.
    max_udp_flows: usize,
    /// `UDP_TIMEOUT`, as the core applies it.
    udp_timeout: Duration,
    /// The INFO summary of datagrams dropped before they had a flow.
    udp_drops: RefusalLog,
}

/// Bind every port, then serve until SIGINT or SIGTERM.
pub fn run(cfg: ServerConfig, log_args: LogArgs) -> io::Result<()> {
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
    let mut role = ServerRole::new(&cfg, log_args);
    role.tls = tls.map(|t| t.config);
    let mut reactor = Reactor::new(role)?;
    // Without BIND_ADDR, one socket per port serves IPv6 and IPv4; a host without IPv6
    // gets IPv4 only. The first listener decides for all.
    let mut bind = match cfg.bind_addr {
        Some(ip) => Bind::Ip(ip),
        None => Bind::DualStack,
    };
    let sock = match bind.listen(cfg.inner_port) {
        Err(e) if bind == Bind::DualStack && sys::is_no_ipv6(&e) => {
            info!("no IPv6 on this host ({e}): listening on IPv4 only");
            bind = Bind::Ip(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            bind.listen(cfg.inner_port)
        }
        other => other,
    };
    let sock = sock.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for clients on port {}: {e}", cfg.inner_port),
        )
    })?;
    reactor.core.insert(Endpoint::Listener(Listener {
        sock,
        purpose: Purpose::Tunnels,
    }))?;
    reactor.role.bind = bind;
    let timeouts = reactor.role.timeouts;
    reactor.core.set_stream_timeouts(timeouts);
    for m in &cfg.mappings {
        let sock = bind_public(bind, m.public_port)?;
        reactor.role.publish(&mut reactor.core, m, sock)?;
    }
    log_mappings(&cfg.mappings, Proto::Tcp, "");
    reactor.core.set_udp_timeout(Some(cfg.udp_timeout));
    for m in &cfg.udp_mappings {
        let sock = bind_udp(bind, m.public_port)?;
        reactor.role.publish_udp(&mut reactor.core, m, sock)?;
    }
    log_mappings(&cfg.udp_mappings, Proto::Udp, "");
    // Last: a supervisor (or a test) that sees this line finds every public port open.
    info!("listening for clients on {}", bind.describe(cfg.inner_port));
    if let Some(admin) = &cfg.admin {
        let sock = TcpListener::bind(admin.addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for the admin API on {}: {e}", admin.addr),
            )
        })?;
        reactor.core.insert(Endpoint::Listener(Listener {
            sock,
            purpose: Purpose::Admin,
        }))?;
        let auth = if admin.token.is_some() {
            "token required"
        } else {
            "no token: loopback only"
        };
        info!("admin API on http://{} ({auth})", admin.addr);
        let now = reactor.core.now;
        reactor
            .core
            .schedule(now + SAMPLE_EVERY, TimerTarget::Role(SAMPLER));
    }
    reactor.run()
}

/// `, allow 10.0.0.0/8 ::1/128` for a mapping's log line, or nothing without an allow-list.
fn allow_note(allow: Option<&[Cidr]>) -> String {
    allow.map_or_else(String::new, |l| {
        let list: Vec<String> = l.iter().map(ToString::to_string).collect();
        format!(", allow {}", list.join(" "))
    })
}

/// Log mappings at INFO, a line per run of them that a port range could write
/// (`public ports 6000-6009 -> 10.0.0.5:7000-7009 (tag web)`), each line after `prefix`.
fn log_mappings(ms: &[Mapping], proto: Proto, prefix: &str) {
    let what = port_noun(proto);
    for run in runs(ms) {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        let note = format!(
            "(tag {}{}{}{})",
            first.tag,
            allow_note(first.allow.as_deref()),
            proxy_note(first.proxy),
            limit_note(first.limit)
        );
        if run.len() == 1 {
            info!(
                "{prefix}public {what} {} -> {} {note}",
                first.public_port, first.target
            );
        } else {
            info!(
                "{prefix}public {what}s {}-{} -> {}-{} {note}",
                first.public_port, last.public_port, first.target, last.target.port
            );
        }
    }
}

/// `ms` (sorted by port) cut into runs: consecutive public ports to consecutive ports of
/// one host, with one tag, allow-list, PROXY setting and limit.
fn runs(ms: &[Mapping]) -> impl Iterator<Item = &[Mapping]> {
    ms.chunk_by(|a, b| {
        a.public_port.checked_add(1) == Some(b.public_port)
            && a.target.port.checked_add(1) == Some(b.target.port)
            && a.target.host == b.target.host
            && a.tag == b.tag
            && a.allow == b.allow
            && a.proxy == b.proxy
            && a.limit == b.limit
    })
}

/// Log ports closing at INFO, a line per run of consecutive ones.
fn log_closed(ports: &[u16], proto: Proto, prefix: &str) {
    let what = port_noun(proto);
    for run in ports.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
        match run {
            [one] => info!("{prefix}public {what} {one} closed"),
            _ => info!(
                "{prefix}public {what}s {}-{} closed",
                run[0],
                run[run.len() - 1]
            ),
        }
    }
}

/// What the log calls a public port of `proto`.
fn port_noun(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "port",
        Proto::Udp => "UDP port",
    }
}

/// `, PROXY v1` for a mapping's log line, or nothing.
fn proxy_note(proxy: Option<ProxyVersion>) -> String {
    proxy.map_or_else(String::new, |v| format!(", PROXY {v}"))
}

/// `, limit 10mbit` for a mapping's log line, or nothing without a limit.
fn limit_note(limit: Option<Rate>) -> String {
    limit.map_or_else(String::new, |r| format!(", limit {r}"))
}

/// Put a public port's bound listener in the loop; returns its key.
fn listen(core: &mut Core, port: u16, sock: TcpListener) -> io::Result<usize> {
    let (key, _) = core.insert(Endpoint::Listener(Listener {
        sock,
        purpose: Purpose::Public { port },
    }))?;
    Ok(key)
}

/// Where the server's ports listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// `BIND_ADDR` unset: `::` with IPv6-only off, for both families.
    DualStack,
    Ip(IpAddr),
}

impl Bind {
    fn listen(self, port: u16) -> io::Result<TcpListener> {
        match self {
            Bind::DualStack => sys::listen_dual_stack(port),
            Bind::Ip(ip) => TcpListener::bind(SocketAddr::new(ip, port)),
        }
    }

    fn describe(self, port: u16) -> String {
        match self {
            Bind::DualStack => format!("[::]:{port} (IPv6 and IPv4)"),
            Bind::Ip(ip) => SocketAddr::new(ip, port).to_string(),
        }
    }
}

/// Listen on a public port.
fn bind_public(bind: Bind, port: u16) -> io::Result<TcpListener> {
    let sock = bind.listen(port).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on public port {port}: {e}"),
        )
    })?;
    if let Err(e) = sys::set_listener_nodelay(&sock) {
        warn!("public port {port}: cannot set TCP_NODELAY: {e}");
    }
    Ok(sock)
}

fn timeouts_of(cfg: &ServerConfig) -> StreamTimeouts {
    StreamTimeouts {
        idle: cfg.idle_timeout,
        fin: cfg.fin_timeout,
    }
}

fn params_of(cfg: &ServerConfig) -> ServerParams {
    ServerParams {
        token: cfg.token.as_ref().map(|t| t.expose().to_vec()),
        require_tls: !matches!(cfg.tls, ServerTlsSetting::Off),
        max_streams: cfg.max_streams,
        heartbeat: cfg.heartbeat,
        window: STREAM_WINDOW,
    }
}

impl ServerRole {
    pub fn new(cfg: &ServerConfig, log_args: LogArgs) -> ServerRole {
        let mut role = ServerRole::with_params(params_of(cfg));
        role.cfg_file = cfg.cfg_file.clone();
        role.mapper_file = cfg.mapper_file.clone();
        role.inner_port = cfg.inner_port;
        role.bind_addr = cfg.bind_addr;
        role.admin_addr = cfg.admin.as_ref().map(|a| a.addr);
        role.admin_token = cfg.admin.as_ref().and_then(|a| a.token.clone());
        role.log_args = log_args;
        role.timeouts = timeouts_of(cfg);
        role.client_allow = cfg.client_allow.clone();
        role.max_per_source = cfg.max_per_source;
        role.default_limit = cfg.default_limit;
        role.max_udp_flows = cfg.max_udp_flows;
        role.udp_timeout = cfg.udp_timeout;
        role
    }

    fn with_params(params: ServerParams) -> ServerRole {
        ServerRole {
            params: Arc::new(params),
            tls: None,
            cfg_file: PathBuf::new(),
            mapper_file: PathBuf::new(),
            inner_port: 0,
            bind_addr: None,
            bind: Bind::DualStack,
            admin_addr: None,
            admin_token: None,
            log_args: LogArgs::default(),
            timeouts: StreamTimeouts::default(),
            ports: BTreeMap::new(),
            counters: ServerCounters::default(),
            rates: HashMap::new(),
            started: SystemTime::now(),
            pools: HashMap::new(),
            handshakes: VecDeque::new(),
            accept_retry: HashSet::new(),
            last_reap: None,
            client_allow: None,
            max_per_source: 0,
            default_limit: None,
            refusals: RefusalLog::default(),
            udp_ports: BTreeMap::new(),
            max_udp_flows: config::DEFAULT_MAX_UDP_FLOWS,
            udp_timeout: config::DEFAULT_UDP_TIMEOUT,
            udp_drops: RefusalLog::default(),
        }
    }

    /// Start serving mapping `m` on its bound listener.
    fn publish(&mut self, core: &mut Core, m: &Mapping, sock: TcpListener) -> io::Result<()> {
        let listener = listen(core, m.public_port, sock)?;
        self.adopt(core, m, listener);
        Ok(())
    }

    /// Serve mapping `m` on `listener`, a listener of its port already in the loop.
    fn adopt(&mut self, core: &mut Core, m: &Mapping, listener: usize) {
        let port = m.public_port;
        debug!("public port {port} -> {} (tag {})", m.target, m.tag);
        core.set_limit(port, m.limit);
        self.counters.mapped(port);
        self.ports.insert(
            port,
            Published {
                target_text: m.target.to_string().into(),
                target: m.target.clone(),
                tag: m.tag.clone(),
                allow: m.allow.clone(),
                proxy: m.proxy,
                limit: m.limit,
                listener,
            },
        );
    }

    /// Stop serving a port: its listener closes, its open streams run on (under its limit,
    /// which stays with them).
    fn unpublish(&mut self, core: &mut Core, port: u16) -> Option<Published> {
        let p = self.ports.remove(&port)?;
        core.remove(p.listener);
        self.accept_retry.remove(&p.listener);
        debug!("public port {port} closed");
        Some(p)
    }

    /// The mappings as they are served now, by port.
    fn mappings(&self) -> Vec<Mapping> {
        self.ports
            .iter()
            .map(|(&public_port, p)| Mapping {
                public_port,
                target: p.target.clone(),
                tag: p.tag.clone(),
                allow: p.allow.clone(),
                proxy: p.proxy,
                limit: p.limit,
            })
            .collect()
    }

    /// A connection refused at accept: DEBUG each, INFO at most once a minute (`refusals`).
    fn refused(&mut self, core: &mut Core, what: &str, detail: std::fmt::Arguments<'_>) {
        if let Some(at) = self.refusals.log(core.now, what, detail, "refusals are") {
            core.schedule(at, TimerTarget::Role(REFUSALS));
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
        if !config::allows(self.client_allow.as_deref(), peer.ip()) {
            drop(sock);
            self.counters.clients_refused += 1;
            self.refused(
                core,
                "clients (not allowed)",
                format_args!("refused client {peer}: not in ALLOW"),
            );
            return;
        }
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

    /// Pick a tunnel of `tag` with room for one more stream, round-robin, whose client
    /// announced the capabilities `needs` (`caps` bits: a PROXY header, datagrams).
    fn pick_tunnel(
        &mut self,
        core: &mut Core,
        tag: &str,
        needs: u16,
    ) -> Result<usize, &'static str> {
        let Some(pool) = self.pools.get_mut(tag).filter(|p| !p.tunnels.is_empty()) else {
            return Err("no client");
        };
        let n = pool.tunnels.len();
        let start = pool.next % n;
        pool.next = pool.next.wrapping_add(1);
        let mut capable = false;
        (0..n)
            .map(|i| pool.tunnels[(start + i) % n])
            .find(|&k| {
                core.tunnel_mut(k).is_some_and(|t| {
                    capable |= t.session.peer_caps() & needs == needs;
                    t.session.can_open(needs)
                })
            })
            .ok_or(if capable {
                "stream limit reached"
            } else {
                "unsupported"
            })
    }

    fn visitor(&mut self, core: &mut Core, lkey: usize, sock: TcpStream, peer: SocketAddr) {
        let Some(Endpoint::Listener(Listener {
            purpose: Purpose::Public { port },
            ..
        })) = core.endpoint(lkey)
        else {
            return;
        };
        let port = *port;
        let Some(published) = self.ports.get(&port) else {
            return;
        };
        if !config::allows(published.allow.as_deref(), peer.ip()) {
            drop(sock);
            self.counters.visit(port, Visit::Refused);
            self.refused(
                core,
                &format!("on port {port} (not allowed)"),
                format_args!("refused visitor {peer} on port {port}: not in its [ALLOW] list"),
            );
            return;
        }
        let max = self.max_per_source;
        if max > 0 && core.visitors_from(port, peer.ip()) >= max {
            drop(sock);
            self.counters.visit(port, Visit::Refused);
            self.refused(
                core,
                &format!("on port {port} (MAX_PER_SOURCE)"),
                format_args!(
                    "refused visitor {peer} on port {port}: {max} streams from {} open                      (MAX_PER_SOURCE)",
                    peer.ip()
                ),
            );
            return;
        }
        let (target, tag) = (Arc::clone(&published.target_text), published.tag.clone());
        // The public address the visitor connected to, as the header's destination.
        let proxy = match published.proxy {
            None => None,
            Some(version) => match sock.local_addr() {
                Ok(local) => Some(ProxyAddrs::new(version, peer, local)),
                Err(e) => {
                    warn!("visitor {peer} on port {port}: no local address for PROXY: {e}");
                    self.counters.visit(port, Visit::Refused);
                    return;
                }
            },
        };
        let needs = if proxy.is_some() { caps::CAP_PROXY } else { 0 };
        let tkey = match self.pick_tunnel(core, &tag, needs) {
            Ok(k) => k,
            Err("no client") => {
                warn!("no client for tag {tag}: closing visitor {peer} on port {port}");
                self.counters.visit(port, Visit::NoClient);
                return;
            }
            Err("unsupported") => {
                warn!(
                    "no client of tag {tag} can write a PROXY header (port {port} has \
                     [PROXY]; its clients run an older version): closing visitor {peer}"
                );
                self.counters.visit(port, Visit::NoClient);
                return;
            }
            Err(why) => {
                let max = self.params.max_streams;
                warn!(
                    "{why} ({max} streams) on every client of tag {tag}: \
                     closing visitor {peer} on port {port}"
                );
                self.counters.visit(port, Visit::Refused);
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
        let opened = t.session.open_stream(rkey, &target, proxy);
        core.mark_dirty(tkey);
        let id = match opened {
            Ok(id) => id,
            // Checked by `pick_tunnel`; a session that just ended closes at the flush.
            Err(OpenError::StreamLimit | OpenError::NotOpen | OpenError::Unsupported) => {
                self.counters.visit(port, Visit::Refused);
                return;
            }
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
            header: 0,
            port,
            info: Some(Box::new(StreamInfo {
                visitor: peer,
                target: Arc::clone(&target),
                opened_at: SystemTime::now(),
            })),
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
                self.counters.visit(port, Visit::Refused);
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
            // A dual-stack listener gives IPv4 peers as IPv4-mapped IPv6 addresses: they are
            // logged, listed and matched as the IPv4 addresses they are.
            let accepted = l
                .sock
                .accept()
                .map(|(sock, peer)| (sock, SocketAddr::new(peer.ip().to_canonical(), peer.port())));
            match accepted {
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
                let now = core.now;
                let Some(t) = core.tunnel_mut(tkey) else {
                    return;
                };
                info!("tunnel attached: {} tag {}", t.peer, t.session.tag());
                t.established_at = Some((SystemTime::now(), now));
                let tag = t.session.tag().to_string();
                self.counters.handshake("ok");
                self.pools.entry(tag).or_default().tunnels.push(tkey);
                if self.admin_addr.is_some() {
                    self.rates.insert(tkey, RateHistory::default());
                }
            }
            Event::OpenOk { handle, .. } if core.udp_flow_mut(handle).is_some() => {
                if let Some(f) = core.udp_flow_mut(handle) {
                    let port = f.port;
                    self.counters.udp_visit(port, Visit::Served);
                }
            }
            Event::OpenFail { handle, id, reason } if core.udp_flow_mut(handle).is_some() => {
                if let Some(f) = core.udp_flow_mut(handle) {
                    warn!(
                        "client could not open the UDP target of flow {id}: {reason}; closing \
                         the flow of {}",
                        f.label
                    );
                    let port = f.port;
                    self.counters.udp_visit(port, Visit::TargetFailed);
                }
                core.drop_relay(handle, false);
            }
            Event::OpenOk { handle, .. } => {
                if let Some(r) = core.relay_mut(handle) {
                    r.deadline = None;
                    self.counters.visit(r.port, Visit::Served);
                }
                core.relay_read(handle);
            }
            Event::OpenFail { handle, id, reason } => {
                if let Some(r) = core.relay_mut(handle) {
                    warn!(
                        "client could not connect the target of stream {id}: {reason}; closing {}",
                        r.label
                    );
                    self.counters.visit(r.port, Visit::TargetFailed);
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
            self.counters.handshake(reason.handshake_result());
            return;
        }
        let tag = t.session.tag();
        self.counters.tunnel_closed(reason.label());
        self.rates.remove(&key);
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
                self.counters.visit(r.port, Visit::TargetFailed);
                core.reset_stream(key, why);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, core: &mut Core, token: u64) {
        if token == SAMPLER {
            self.sample_rates(core);
            core.schedule(core.now + SAMPLE_EVERY, TimerTarget::Role(SAMPLER));
        } else if token == REFUSALS
            && let Some((line, next)) = self.refusals.summary(core.now, "connection", "at accept")
        {
            info!("{line}");
            core.schedule(next, TimerTarget::Role(REFUSALS));
        } else if token == UDP_DROPS
            && let Some((line, next)) =
                self.udp_drops
                    .summary(core.now, "datagram", "from sources without a flow")
        {
            info!("{line}");
            core.schedule(next, TimerTarget::Role(UDP_DROPS));
        }
    }

    fn on_admin_request(&mut self, core: &mut Core, req: &Request<'_>) -> Response {
        self.answer(core, req)
    }

    fn on_new_flow(
        &mut self,
        core: &mut Core,
        key: usize,
        visitor: SocketAddr,
    ) -> Result<usize, UdpDrop> {
        let flow = self.new_flow(core, key, visitor);
        if let (Err(why), Some(Endpoint::UdpPort(p))) = (flow, core.endpoint(key)) {
            let visit = match why {
                UdpDrop::NoClient => Visit::NoClient,
                _ => Visit::Refused,
            };
            self.counters.udp_visit(p.port, visit);
        }
        flow
    }

    fn on_reload(&mut self, core: &mut Core) {
        info!("SIGHUP: reading the configuration again");
        match self.reload(core) {
            Ok(summary) => info!("reloaded: {summary}"),
            Err(e) => warn!("reload failed, nothing changed: {e}"),
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
