//! The client's side of UDP mappings: a datagram stream the server opens gets a UDP socket
//! connected to its target (a name is resolved first, off the loop, with the datagrams that
//! arrive meanwhile kept in the flow's small backlog). The allow-list applies as to TCP
//! targets. The datagrams themselves are the core's business (`net::udp`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use log::debug;
use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::ClientRole;
use crate::config::{Host, Verdict};
use crate::net::dgram;
use crate::net::reactor::{Core, Endpoint};
use crate::net::sys;
use crate::net::udp::{UDP_SOCKET_BUFFER, UdpFlow};

/// A UDP socket connected to `target`, from an ephemeral port of its family.
fn connect_udp(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
    sock.connect(target)?;
    sys::set_socket_buffers(&sock, UDP_SOCKET_BUFFER);
    dgram::enable_coalescing(&sock);
    Ok(sock)
}

impl ClientRole {
    /// The server opened datagram stream `id` to the UDP target `target`.
    pub(super) fn open_udp(&mut self, core: &mut Core, tkey: usize, id: u32, target: &str) {
        let Some((tgt, verdict)) = self.take_open(core, tkey, id, target, true) else {
            return;
        };
        let sweeps = core.sweeps;
        let mut flow = UdpFlow::new(tkey, id, format!("UDP {target}"), sweeps);
        let name = match tgt.host {
            Host::Ip(ip) => {
                let addr = SocketAddr::new(ip, tgt.port);
                match connect_udp(addr) {
                    Ok(sock) => {
                        flow.sock = Some(sock);
                        flow.peer = Some(addr);
                    }
                    Err(e) => return self.refuse(core, tkey, id, target, &e.to_string()),
                }
                None
            }
            Host::Name(name) => {
                flow.deadline = Some(core.now + self.cfg.connect_timeout);
                flow.check_addresses = verdict == Verdict::IfEveryAddressAllowed;
                Some(name)
            }
        };
        let deadline = flow.deadline;
        let (key, generation) = match core.insert(Endpoint::UdpFlow(Box::new(flow))) {
            Ok(k) => k,
            Err(e) => return self.refuse(core, tkey, id, target, &e.to_string()),
        };
        if let Some(t) = core.tunnel_mut(tkey) {
            t.session.rebind(id, key);
        }
        match (name, deadline) {
            (Some(name), Some(deadline)) => {
                debug!("UDP flow {id}: resolving {target}");
                core.resolver.submit((key, generation), &name, tgt.port);
                core.schedule_entry(key, deadline);
            }
            _ => self.udp_connected(core, key),
        }
    }

    /// The flow's socket is connected: answer OPEN_OK; what the server sent meanwhile goes.
    fn udp_connected(&mut self, core: &mut Core, key: usize) {
        let Some(f) = core.udp_flow_mut(key) else {
            return;
        };
        f.deadline = None;
        let (tkey, id) = (f.tunnel, f.id);
        debug!("UDP flow {id}: connected to {}", f.label);
        self.counters.connects_ok += 1;
        if let Some(t) = core.tunnel_mut(tkey) {
            t.session.stream_connected(id);
            core.mark_dirty(tkey);
        }
        core.udp_writable(key);
    }

    /// The flow's target name resolved (or did not).
    pub(super) fn resolved_udp(
        &mut self,
        core: &mut Core,
        key: usize,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(f) = core.udp_flow_mut(key) else {
            return;
        };
        let addrs = match result {
            Ok(addrs) => addrs,
            Err(e) => return self.udp_open_failed(core, key, &e),
        };
        // Names the allow-list admits only by their addresses must resolve to allowed ones.
        if f.check_addresses
            && let Some(list) = &self.cfg.allow
            && let Some(&bad) = addrs.iter().find(|a| !list.allows_addr(**a))
        {
            let (tkey, id, label) = (f.tunnel, f.id, f.label.clone());
            core.remove(key);
            return self.refuse_not_allowed(core, tkey, id, &label, Some(bad));
        }
        let Some(&addr) = addrs.first() else {
            return self.udp_open_failed(core, key, "the name has no address");
        };
        let sock = match connect_udp(addr) {
            Ok(sock) => sock,
            Err(e) => return self.udp_open_failed(core, key, &e.to_string()),
        };
        let registry = core.poll.registry();
        let Some(Endpoint::UdpFlow(f)) = core.slab.get_mut(key).map(|e| &mut e.ep) else {
            return;
        };
        f.peer = Some(addr);
        let sock = f.sock.insert(sock);
        if let Err(e) = registry.register(sock, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            return self.udp_open_failed(core, key, &e.to_string());
        }
        self.udp_connected(core, key);
    }

    /// The flow's target could not be resolved or connected: OPEN_FAIL, and it goes.
    pub(super) fn udp_open_failed(&mut self, core: &mut Core, key: usize, reason: &str) {
        let Some(f) = core.udp_flow_mut(key) else {
            return;
        };
        let (tkey, id, label) = (f.tunnel, f.id, f.label.clone());
        core.remove(key);
        self.refuse(core, tkey, id, &label, reason);
    }
}
