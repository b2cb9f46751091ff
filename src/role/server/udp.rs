//! The server's UDP mappings (`[UDP]`): a socket per public port, and the policy for a
//! datagram from a new source (its port's `[ALLOW]` list, `MAX_UDP_FLOWS`, a tunnel of the
//! mapping's tag whose client carries datagrams). The datagrams themselves are the core's
//! business (`net::udp`). A reload binds the ports added, closes the ports removed with
//! their flows, and points changed ports' new flows at their new target; flows already open
//! keep theirs.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use log::{debug, warn};
use mio::net::UdpSocket;

use super::{Bind, ServerRole, TimerTarget, UDP_DROPS};
use crate::config::{self, Cidr, Mapping, MappingDiff, Proto, Rate, Target};
use crate::net::dgram::{self, Segmentation};
use crate::net::reactor::{Core, Endpoint};
use crate::net::sys;
use crate::net::udp::{UDP_SOCKET_BUFFER, UdpDrop, UdpFlow, UdpPort};
use crate::protocol::caps::CAP_DGRAM;
use crate::protocol::session::OpenError;

/// A published UDP port: where its flows go, and its socket's slab key.
pub(super) struct PublishedUdp {
    pub(super) target: Target,
    /// `target` as text, for the OPEN of each flow.
    pub(super) target_text: Arc<str>,
    pub(super) tag: String,
    pub(super) allow: Option<Vec<Cidr>>,
    pub(super) limit: Option<Rate>,
    pub(super) socket: usize,
}

/// Bind a public UDP port where the TCP ports listen.
pub(super) fn bind_udp(bind: Bind, port: u16) -> io::Result<UdpSocket> {
    let sock = match bind {
        Bind::DualStack => sys::udp_dual_stack(port),
        Bind::Ip(ip) => UdpSocket::bind(SocketAddr::new(ip, port)),
    };
    let sock = sock.map_err(|e| {
        io::Error::new(e.kind(), format!("cannot bind public UDP port {port}: {e}"))
    })?;
    sys::set_socket_buffers(&sock, UDP_SOCKET_BUFFER);
    dgram::enable_coalescing(&sock);
    Ok(sock)
}

impl ServerRole {
    /// Start serving UDP mapping `m` on its bound socket.
    pub(super) fn publish_udp(
        &mut self,
        core: &mut Core,
        m: &Mapping,
        sock: UdpSocket,
    ) -> io::Result<()> {
        let port = m.public_port;
        let (socket, _) = core.insert(Endpoint::UdpPort(Box::new(UdpPort {
            sock,
            port,
            flows: Default::default(),
            backlog: Default::default(),
            seg: Segmentation::available(),
            readable: false,
            queued: false,
        })))?;
        core.set_limit(port, m.limit);
        self.counters.mapped_udp(port);
        self.udp_ports.insert(
            port,
            PublishedUdp {
                target: m.target.clone(),
                target_text: m.target.to_string().into(),
                tag: m.tag.clone(),
                allow: m.allow.clone(),
                limit: m.limit,
                socket,
            },
        );
        debug!("public UDP port {port} -> {} (tag {})", m.target, m.tag);
        Ok(())
    }

    /// The UDP mappings as they are served now, by port.
    pub(super) fn udp_mappings(&self) -> Vec<Mapping> {
        self.udp_ports
            .iter()
            .map(|(&public_port, p)| Mapping {
                public_port,
                target: p.target.clone(),
                tag: p.tag.clone(),
                allow: p.allow.clone(),
                proxy: None,
                limit: p.limit,
            })
            .collect()
    }

    /// Stop serving a UDP port: its socket closes, and its flows with it (a flow has no
    /// socket of its own on this side to carry on with).
    pub(super) fn unpublish_udp(&mut self, core: &mut Core, port: u16) -> Option<PublishedUdp> {
        let p = self.udp_ports.remove(&port)?;
        core.close_udp_port(p.socket, "the public UDP port was closed");
        debug!("public UDP port {port} closed");
        Some(p)
    }

    /// A UDP mapping changed: new flows go to its new target, under its new list and tag;
    /// open flows keep their target and move at the new limit.
    pub(super) fn retarget_udp(&mut self, core: &mut Core, m: &Mapping) {
        if let Some(p) = self.udp_ports.get_mut(&m.public_port) {
            p.target = m.target.clone();
            p.target_text = m.target.to_string().into();
            p.tag = m.tag.clone();
            p.allow = m.allow.clone();
            p.limit = m.limit;
            core.set_limit(m.public_port, m.limit);
        }
    }

    /// Reload: bind the UDP ports `diff` adds (before anything changes: an error changes
    /// nothing, and the sockets bound so far close), then apply it. Returns the sockets to
    /// adopt once the rest of the reload is known to go through.
    pub(super) fn bind_udp_added(&self, diff: &MappingDiff) -> Result<Vec<UdpSocket>, String> {
        diff.added
            .iter()
            .map(|m| bind_udp(self.bind, m.public_port).map_err(|e| e.to_string()))
            .collect()
    }

    /// Reload: apply a UDP diff whose added ports are bound (`socks`, in order).
    pub(super) fn apply_udp_diff(
        &mut self,
        core: &mut Core,
        diff: &MappingDiff,
        socks: Vec<UdpSocket>,
    ) -> Result<(), String> {
        for m in &diff.removed {
            self.unpublish_udp(core, m.public_port);
        }
        for (_, m) in &diff.changed {
            self.retarget_udp(core, m);
        }
        for (m, sock) in diff.added.iter().zip(socks) {
            self.publish_udp(core, m, sock).map_err(|e| e.to_string())?;
        }
        let removed: Vec<u16> = diff.removed.iter().map(|m| m.public_port).collect();
        super::log_closed(&removed, Proto::Udp, "reload: ");
        let changed: Vec<Mapping> = diff.changed.iter().map(|(_, m)| m.clone()).collect();
        super::log_mappings(&changed, Proto::Udp, "reload: ");
        super::log_mappings(&diff.added, Proto::Udp, "reload: ");
        Ok(())
    }

    /// A datagram from `visitor`, new to the UDP port of socket `key`: open a flow for it
    /// over a tunnel of the mapping's tag, or say why it is dropped.
    pub(super) fn new_flow(
        &mut self,
        core: &mut Core,
        key: usize,
        visitor: SocketAddr,
    ) -> Result<usize, UdpDrop> {
        let Some(Endpoint::UdpPort(p)) = core.endpoint(key) else {
            return Err(UdpDrop::NoClient);
        };
        let (port, flows) = (p.port, p.flows.len());
        let Some(published) = self.udp_ports.get(&port) else {
            return Err(UdpDrop::NoClient);
        };
        let ip: IpAddr = visitor.ip().to_canonical();
        let shown = SocketAddr::new(ip, visitor.port());
        if !config::allows(published.allow.as_deref(), ip) {
            self.dropped(
                core,
                &format!("on UDP port {port} (not allowed)"),
                format_args!(
                    "dropped datagrams from {shown} on UDP port {port}: not in its [ALLOW] list"
                ),
            );
            return Err(UdpDrop::NotAllowed);
        }
        if flows >= self.max_udp_flows {
            let max = self.max_udp_flows;
            self.dropped(
                core,
                &format!("on UDP port {port} (MAX_UDP_FLOWS)"),
                format_args!(
                    "dropped a datagram from {shown} on UDP port {port}: {max} flows open \
                     (MAX_UDP_FLOWS)"
                ),
            );
            return Err(UdpDrop::FlowLimit);
        }
        let (tag, target) = (published.tag.clone(), Arc::clone(&published.target_text));
        let tkey = match self.pick_tunnel(core, &tag, CAP_DGRAM) {
            Ok(k) => k,
            Err(why) => {
                let (what, drop) = match why {
                    "no client" => ("no client", UdpDrop::NoClient),
                    "unsupported" => ("no client carries UDP", UdpDrop::NoClient),
                    _ => ("stream limit", UdpDrop::StreamLimit),
                };
                self.dropped(
                    core,
                    &format!("on UDP port {port} ({what} for tag {tag})"),
                    format_args!(
                        "dropped a datagram from {shown} on UDP port {port}: {what} for tag {tag}"
                    ),
                );
                return Err(drop);
            }
        };
        let fkey = core.slab.vacant_key();
        let sweeps = core.sweeps;
        let Some(t) = core.tunnel_mut(tkey) else {
            return Err(UdpDrop::NoClient);
        };
        let id = match t.session.open_dgram_stream(fkey, &target) {
            Ok(id) => id,
            Err(OpenError::StreamLimit) => return Err(UdpDrop::StreamLimit),
            Err(OpenError::NotOpen | OpenError::Unsupported) => return Err(UdpDrop::NoClient),
        };
        core.mark_dirty(tkey);
        let mut flow = UdpFlow::new(
            tkey,
            id,
            format!("visitor {shown} on UDP port {port}"),
            sweeps,
        );
        flow.public = Some(key);
        flow.peer = Some(visitor);
        flow.port = port;
        flow.target = Some(Arc::clone(&target));
        let inserted = core.insert(Endpoint::UdpFlow(Box::new(flow)));
        let fkey2 = match inserted {
            Ok((k, _)) => k,
            Err(e) => {
                warn!("cannot register a UDP flow of {shown}: {e}");
                if let Some(t) = core.tunnel_mut(tkey) {
                    t.session.reset(id, "server error");
                }
                return Err(UdpDrop::NoClient);
            }
        };
        if fkey2 != fkey
            && let Some(t) = core.tunnel_mut(tkey)
        {
            t.session.rebind(id, fkey2);
        }
        if let Some(Endpoint::UdpPort(p)) = core.endpoint_mut(key) {
            p.flows.insert(visitor, fkey2);
        }
        debug!("UDP flow {id}: visitor {shown} on UDP port {port} -> {target}");
        Ok(fkey2)
    }

    /// A datagram dropped before it had a flow: DEBUG each, INFO at most once a minute.
    fn dropped(&mut self, core: &mut Core, what: &str, detail: std::fmt::Arguments<'_>) {
        if let Some(at) = self.udp_drops.log(core.now, what, detail, "such drops are") {
            core.schedule(at, TimerTarget::Role(UDP_DROPS));
        }
    }
}
