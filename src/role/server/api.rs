//! The server's admin API: mappings of both protocols (listed, added, changed and deleted
//! live, and written back to the mapping file), clients (listed, kicked), streams and UDP
//! flows, reload, status and the Prometheus metrics. Every answer is built from the role's
//! state and one walk of the slab.
//!
//! A mapping is named by its port and its protocol: `PUT /api/mappings/{port}` takes a
//! `proto` field (`tcp` when absent), `/api/mappings/udp/{port}` and `/api/mappings/tcp/{port}`
//! name it in the path; `DELETE /api/mappings/{port}` deletes the port's TCP mapping, or its
//! UDP one when it has only that.

use std::time::SystemTime;

use log::{info, warn};
use serde_json::{Value, json};

use super::udp::{PublishedUdp, bind_udp};
use super::{Published, ServerRole, bind_public};
use crate::admin::api::{self, json_object, number, segments};
use crate::admin::prom::{Exposition, Kind};
use crate::admin::stats::{HANDSHAKE_RESULTS, Live, Visit};
use crate::admin::time;
use crate::config::{self, DEFAULT_TAG, Mapping, Proto, Target, check_tag};
use crate::net::endpoint::Endpoint;
use crate::net::http::{Request, Response};
use crate::net::reactor::{ByteCount, Core};
use crate::net::udp::{IN, OUT, UdpDrop};
use crate::protocol::CloseReason;

impl ServerRole {
    pub(super) fn answer(&mut self, core: &mut Core, req: &Request<'_>) -> Response {
        if let Err(r) = api::check_origin(self.admin_token.as_ref(), req) {
            return r;
        }
        if let Some(r) = api::public(req, true) {
            return r;
        }
        if let Err(r) = api::authorize(self.admin_token.as_ref(), req) {
            return r;
        }
        let get = matches!(req.method, "GET" | "HEAD");
        match (req.method, segments(req.path).as_slice()) {
            (_, ["api", "status"]) if get => self.status(core),
            (_, ["api", "mappings"]) if get => self.list_mappings(core),
            ("PUT", ["api", "mappings", port]) => self.put_mapping(core, port, None, req.body),
            ("PUT", ["api", "mappings", proto @ ("tcp" | "udp"), port]) => {
                self.put_mapping(core, port, Proto::parse(proto), req.body)
            }
            ("DELETE", ["api", "mappings", port]) => self.delete_mapping(core, port, None),
            ("DELETE", ["api", "mappings", proto @ ("tcp" | "udp"), port]) => {
                self.delete_mapping(core, port, Proto::parse(proto))
            }
            (_, ["api", "clients"]) if get => self.list_clients(core),
            ("DELETE", ["api", "clients", id]) => self.kick(core, id),
            (_, ["api", "streams"]) if get => self.list_streams(core),
            ("POST", ["api", "reload"]) => match self.reload(core) {
                Ok(changes) => {
                    info!("reloaded through the admin API: {changes}");
                    Response::json(200, &changes)
                }
                Err(e) => {
                    warn!("reload through the admin API failed, nothing changed: {e}");
                    Response::error(400, &e)
                }
            },
            (_, ["metrics"]) if get => self.metrics(core),
            (_, ["api", "status" | "mappings" | "clients" | "streams"] | ["metrics"]) => {
                Response::method_not_allowed("GET, HEAD")
            }
            (_, ["api", "mappings", _] | ["api", "mappings", "tcp" | "udp", _]) => {
                Response::method_not_allowed("PUT, DELETE")
            }
            (_, ["api", "clients", _]) => Response::method_not_allowed("DELETE"),
            (_, ["api", "reload"]) => Response::method_not_allowed("POST"),
            _ => Response::not_found(),
        }
    }

    fn status(&self, core: &Core) -> Response {
        let live = Live::of(core);
        let uptime = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default();
        Response::json(
            200,
            &json!({
                "role": "server",
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_secs": uptime.as_secs(),
                "clients": self.pools.values().map(|p| p.tunnels.len()).sum::<usize>(),
                "mappings": self.ports.len() + self.udp_ports.len(),
                "udp_mappings": self.udp_ports.len(),
                "streams": live.total.streams,
            }),
        )
    }

    fn mapping_json(&self, core: &Core, live: &Live, port: u16, p: &Published) -> Value {
        let t = live.port(core, port);
        let mut v = json!({
            "port": port,
            "proto": "tcp",
            "target": &*p.target_text,
            "tag": p.tag,
            "streams": t.streams,
            "bytes_in": t.bytes.read,
            "bytes_out": t.bytes.written,
        });
        if let Some(proxy) = p.proxy {
            v["proxy"] = json!(proxy.to_string());
        }
        with_lines(v, &p.allow, p.limit)
    }

    fn udp_mapping_json(&self, core: &Core, live: &Live, port: u16, p: &PublishedUdp) -> Value {
        let stats = core.udp_stats.get(&port).copied().unwrap_or_default();
        let v = json!({
            "port": port,
            "proto": "udp",
            "target": &*p.target_text,
            "tag": p.tag,
            "streams": live.udp_flows.get(&port).copied().unwrap_or(0),
            "bytes_in": stats.bytes[IN],
            "bytes_out": stats.bytes[OUT],
            "datagrams_in": stats.datagrams[IN],
            "datagrams_out": stats.datagrams[OUT],
            "dropped": stats.dropped.iter().sum::<u64>(),
        });
        with_lines(v, &p.allow, p.limit)
    }

    /// The mapping of `port` and `proto` as the API shows it, if there is one.
    fn one_mapping_json(&self, core: &Core, port: u16, proto: Proto) -> Option<Value> {
        let live = Live::of(core);
        match proto {
            Proto::Tcp => Some(self.mapping_json(core, &live, port, self.ports.get(&port)?)),
            Proto::Udp => {
                Some(self.udp_mapping_json(core, &live, port, self.udp_ports.get(&port)?))
            }
        }
    }

    /// Every mapping, by port; a port's TCP mapping before its UDP one.
    fn list_mappings(&self, core: &Core) -> Response {
        let live = Live::of(core);
        let tcp = self
            .ports
            .iter()
            .map(|(&port, p)| ((port, 0), self.mapping_json(core, &live, port, p)));
        let udp = self
            .udp_ports
            .iter()
            .map(|(&port, p)| ((port, 1), self.udp_mapping_json(core, &live, port, p)));
        let mut all: Vec<((u16, u8), Value)> = tcp.chain(udp).collect();
        all.sort_by_key(|(k, _)| *k);
        let mappings: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
        Response::json(200, &json!({ "mappings": mappings }))
    }

    /// `PUT /api/mappings/{port}` (the protocol in the body's `proto`, `tcp` when absent) or
    /// `PUT /api/mappings/{proto}/{port}`: the listener or socket opens (or the mapping
    /// changes) and the file is rewritten before the answer; when either fails, nothing
    /// changes.
    fn put_mapping(
        &mut self,
        core: &mut Core,
        port: &str,
        path_proto: Option<Proto>,
        body: &[u8],
    ) -> Response {
        let port: u16 = match number(port, "port (1-65535)") {
            Ok(0) => return Response::error(400, "port 0 is not a port (1-65535)"),
            Ok(p) => p,
            Err(r) => return r,
        };
        let mut fields = match json_object(body) {
            Ok(f) => f,
            Err(r) => return r,
        };
        let target = match fields.remove("target") {
            Some(Value::String(s)) => match Target::parse(s.trim()) {
                Ok(t) => t,
                Err(e) => return Response::error(400, &e),
            },
            Some(_) => return Response::error(400, "\"target\" must be a string (host:port)"),
            None => return Response::error(400, "missing \"target\" (host:port)"),
        };
        let tag = match fields.remove("tag") {
            None | Some(Value::Null) => DEFAULT_TAG.to_string(),
            Some(Value::String(s)) => s,
            Some(_) => return Response::error(400, "\"tag\" must be a string"),
        };
        if let Err(e) = check_tag(&tag) {
            return Response::error(400, &e);
        }
        let proto = match (fields.remove("proto"), path_proto) {
            (None | Some(Value::Null), p) => p.unwrap_or(Proto::Tcp),
            (Some(Value::String(s)), p) => match Proto::parse(&s) {
                Some(q) if p.is_none_or(|p| p == q) => q,
                Some(q) => {
                    return Response::error(
                        400,
                        &format!(
                            "\"proto\" is {q} but the path names a {} mapping",
                            p.unwrap_or(q)
                        ),
                    );
                }
                None => return Response::error(400, "\"proto\" must be \"tcp\" or \"udp\""),
            },
            (Some(_), _) => return Response::error(400, "\"proto\" must be \"tcp\" or \"udp\""),
        };
        if let Some(field) = fields.keys().next() {
            return Response::error(400, &format!("unknown field {field:?}"));
        }
        // `[TAG]` names a port number: its TCP and UDP mappings share one tag.
        let other_tag = match proto {
            Proto::Tcp => self.udp_ports.get(&port).map(|p| &p.tag),
            Proto::Udp => self.ports.get(&port).map(|p| &p.tag),
        };
        if let Some(other) = other_tag.filter(|t| **t != tag) {
            return Response::error(
                409,
                &format!(
                    "the {} mapping of port {port} has tag {other}: a port's [TAG] applies to \
                     both its mappings, so they take the same tag",
                    proto.other()
                ),
            );
        }
        if proto == Proto::Udp {
            return self.put_udp_mapping(core, port, target, tag);
        }
        if port == self.inner_port {
            return Response::error(400, &format!("port {port} is the INNER_PORT"));
        }
        if self.admin_addr.is_some_and(|a| a.port() == port) {
            return Response::error(400, &format!("port {port} is the admin API's"));
        }
        let existing = self.ports.get(&port);
        // The API sets a target and a tag; the port's `[PROXY]` line stays as it is.
        let (allow, limit) = self.lines_of(port, Proto::Tcp);
        let mapping = Mapping {
            public_port: port,
            target,
            tag,
            allow,
            proxy: existing.and_then(|p| p.proxy),
            limit,
        };
        if existing.is_some_and(|p| p.target == mapping.target && p.tag == mapping.tag) {
            return self.mapping_response(core, 200, port, Proto::Tcp);
        }
        let created = existing.is_none();
        let sock = if created {
            match bind_public(self.bind, port) {
                Ok(s) => Some(s),
                Err(e) => return Response::error(409, &e.to_string()),
            }
        } else {
            None
        };
        // Serve first, then write the file; undo the first when the second fails.
        if let Some(sock) = sock
            && let Err(e) = self.publish(core, &mapping, sock)
        {
            return Response::error(500, &format!("cannot serve port {port}: {e}"));
        }
        let target_text = mapping.target.to_string();
        let written = self.rewrite_mapper_file(|text| {
            config::set_mapping(text, port, &target_text, &mapping.tag)
        });
        if let Err(e) = written {
            if created {
                self.unpublish(core, port);
            }
            return Response::error(500, &e);
        }
        if !created {
            self.retarget(core, &mapping);
        }
        info!(
            "admin API: public port {port} -> {} (tag {})",
            mapping.target, mapping.tag
        );
        self.mapping_response(core, if created { 201 } else { 200 }, port, Proto::Tcp)
    }

    /// The UDP half of `put_mapping`, once the request is checked.
    fn put_udp_mapping(
        &mut self,
        core: &mut Core,
        port: u16,
        target: Target,
        tag: String,
    ) -> Response {
        let existing = self.udp_ports.get(&port);
        let (allow, limit) = self.lines_of(port, Proto::Udp);
        let mapping = Mapping {
            public_port: port,
            target,
            tag,
            allow,
            proxy: None,
            limit,
        };
        if existing.is_some_and(|p| p.target == mapping.target && p.tag == mapping.tag) {
            return self.mapping_response(core, 200, port, Proto::Udp);
        }
        let created = existing.is_none();
        if created {
            let sock = match bind_udp(self.bind, port) {
                Ok(s) => s,
                Err(e) => return Response::error(409, &e.to_string()),
            };
            if let Err(e) = self.publish_udp(core, &mapping, sock) {
                return Response::error(500, &format!("cannot serve UDP port {port}: {e}"));
            }
        }
        let target_text = mapping.target.to_string();
        let written = self.rewrite_mapper_file(|text| {
            config::set_proto_mapping(text, Proto::Udp, port, &target_text, &mapping.tag)
        });
        if let Err(e) = written {
            if created {
                self.unpublish_udp(core, port);
            }
            return Response::error(500, &e);
        }
        if !created {
            self.retarget_udp(core, &mapping);
        }
        info!(
            "admin API: public UDP port {port} -> {} (tag {})",
            mapping.target, mapping.tag
        );
        self.mapping_response(core, if created { 201 } else { 200 }, port, Proto::Udp)
    }

    /// The `[ALLOW]` list and the limit a mapping of `port` and `proto` set through the API
    /// has: its own when it exists, else those of the port's other mapping (the lines name
    /// the port number, so they apply to both), else none and `BANDWIDTH`, as at a reload.
    fn lines_of(
        &self,
        port: u16,
        proto: Proto,
    ) -> (Option<Vec<config::Cidr>>, Option<config::Rate>) {
        let tcp = self.ports.get(&port).map(|p| (&p.allow, p.limit));
        let udp = self.udp_ports.get(&port).map(|p| (&p.allow, p.limit));
        let (own, other) = match proto {
            Proto::Tcp => (tcp, udp),
            Proto::Udp => (udp, tcp),
        };
        match own.or(other) {
            Some((allow, limit)) => (allow.clone(), limit),
            None => (None, self.default_limit),
        }
    }

    fn mapping_response(&self, core: &Core, status: u16, port: u16, proto: Proto) -> Response {
        match self.one_mapping_json(core, port, proto) {
            Some(body) => Response::json(status, &body),
            None => Response::error(500, "the mapping vanished"),
        }
    }

    /// `DELETE /api/mappings/{port}` (its TCP mapping, or its UDP one when it has only that)
    /// or `DELETE /api/mappings/{proto}/{port}`: the listener or socket closes. A TCP port's
    /// open streams run to their end; a UDP port's flows end with its socket.
    fn delete_mapping(&mut self, core: &mut Core, port: &str, proto: Option<Proto>) -> Response {
        let port: u16 = match number(port, "port (1-65535)") {
            Ok(p) => p,
            Err(r) => return r,
        };
        let tcp = self.ports.contains_key(&port);
        let udp = self.udp_ports.contains_key(&port);
        let proto = match proto {
            Some(p) => p,
            None if !tcp && udp => Proto::Udp,
            None => Proto::Tcp,
        };
        let mapped = match proto {
            Proto::Tcp => tcp,
            Proto::Udp => udp,
        };
        if !mapped {
            let what = if proto == Proto::Udp { " for UDP" } else { "" };
            return Response::error(404, &format!("port {port} is not mapped{what}"));
        }
        if let Err(e) =
            self.rewrite_mapper_file(|text| config::remove_proto_mapping(text, proto, port))
        {
            return Response::error(500, &e);
        }
        match proto {
            Proto::Tcp => {
                self.unpublish(core, port);
                info!("admin API: public port {port} deleted");
            }
            Proto::Udp => {
                self.unpublish_udp(core, port);
                info!("admin API: public UDP port {port} deleted");
            }
        }
        Response::no_content()
    }

    /// Rewrite the mapping file through `edit`, atomically.
    fn rewrite_mapper_file(&self, edit: impl FnOnce(&str) -> String) -> Result<(), String> {
        let file = &self.mapper_file;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        config::write_atomically(file, &edit(&text)).map_err(|e| e.to_string())
    }

    fn client_json(&self, core: &Core, live: &Live, key: usize) -> Option<Value> {
        let generation = core.generation_of(key)?;
        let Some(Endpoint::Tunnel(t)) = core.endpoint(key) else {
            return None;
        };
        let traffic = live.tunnel(core, key);
        let bytes = traffic.bytes;
        let (connected_at, since) = t.established_at?;
        let now = core.now;
        let rate = self
            .rates
            .get(&key)
            .map(|h| h.rate(now, bytes))
            .unwrap_or_default();
        let avg =
            crate::admin::stats::per_second(bytes, ByteCount::default(), now.duration_since(since));
        Some(json!({
            "id": generation,
            "addr": t.peer.to_string(),
            "tag": t.session.tag(),
            "connected_at": time::rfc3339(connected_at),
            "streams": traffic.streams,
            "bytes_in": bytes.read,
            "bytes_out": bytes.written,
            "rate_in": rate.read,
            "rate_out": rate.written,
            "avg_in": avg.read,
            "avg_out": avg.written,
        }))
    }

    /// The established tunnels' keys, oldest first.
    fn tunnel_keys(&self, core: &Core) -> Vec<usize> {
        let mut keys: Vec<(u64, usize)> = self
            .pools
            .values()
            .flat_map(|p| p.tunnels.iter().copied())
            .filter_map(|k| core.generation_of(k).map(|g| (g, k)))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    fn list_clients(&self, core: &Core) -> Response {
        let live = Live::of(core);
        let clients: Vec<Value> = self
            .tunnel_keys(core)
            .into_iter()
            .filter_map(|k| self.client_json(core, &live, k))
            .collect();
        Response::json(200, &json!({ "clients": clients }))
    }

    /// `DELETE /api/clients/{id}`: close that tunnel; its streams reset on both sides.
    fn kick(&mut self, core: &mut Core, id: &str) -> Response {
        let id: u64 = match number(id, "client id") {
            Ok(id) => id,
            Err(r) => return r,
        };
        let Some(key) = self
            .tunnel_keys(core)
            .into_iter()
            .find(|&k| core.generation_of(k) == Some(id))
        else {
            return Response::error(404, &format!("no client {id}"));
        };
        if let Some(t) = core.tunnel_mut(key) {
            info!("admin API: closing the tunnel of {} (client {id})", t.peer);
            // The client hears why before the connection closes, if its socket takes it.
            t.session.goaway("closed by the server's administrator");
            let _ = t.flush(&mut None);
        }
        core.close_tunnel(key, CloseReason::Kicked);
        Response::no_content()
    }

    fn list_streams(&self, core: &Core) -> Response {
        let mut streams = Vec::new();
        for (_, entry) in core.slab.iter() {
            let Endpoint::Relay(r) = &entry.ep else {
                continue;
            };
            let (Some(client), Some(info)) = (core.generation_of(r.tunnel), &r.info) else {
                continue;
            };
            streams.push(json!({
                "id": r.id,
                "client": client,
                "port": r.port,
                "proto": "tcp",
                "visitor": info.visitor.to_string(),
                "target": &*info.target,
                "opened_at": time::rfc3339(info.opened_at),
                "bytes_in": r.bytes_read,
                "bytes_out": r.bytes_written,
            }));
        }
        for (_, entry) in core.slab.iter() {
            let Endpoint::UdpFlow(f) = &entry.ep else {
                continue;
            };
            let (Some(client), Some(visitor), Some(target)) =
                (core.generation_of(f.tunnel), f.peer, &f.target)
            else {
                continue;
            };
            let visitor = std::net::SocketAddr::new(visitor.ip().to_canonical(), visitor.port());
            streams.push(json!({
                "id": f.id,
                "client": client,
                "port": f.port,
                "proto": "udp",
                "visitor": visitor.to_string(),
                "target": &**target,
                "opened_at": time::rfc3339(f.opened_at),
                "bytes_in": f.bytes[IN],
                "bytes_out": f.bytes[OUT],
                "datagrams_in": f.datagrams[IN],
                "datagrams_out": f.datagrams[OUT],
            }));
        }
        Response::json(200, &json!({ "streams": streams }))
    }

    /// Sample every tunnel's counts for its current rate.
    pub(super) fn sample_rates(&mut self, core: &Core) {
        if self.rates.is_empty() {
            return;
        }
        let live = Live::of(core);
        let now = core.now;
        for (&key, history) in self.rates.iter_mut() {
            history.record(now, live.tunnel(core, key).bytes);
        }
    }

    fn metrics(&self, core: &Core) -> Response {
        let live = Live::of(core);
        api::metrics(self.started, |out| self.metrics_body(core, &live, out))
    }

    fn metrics_body(&self, core: &Core, live: &Live, out: &mut Exposition) {
        out.family(
            "tcpforward_tunnels",
            Kind::Gauge,
            "Client tunnels attached, by tag.",
        );
        // The tags of the mappings and of the attached tunnels: a tag a client made up and
        // took away again leaves no series behind.
        let tags: std::collections::BTreeSet<&str> = (self.ports.values().map(|p| p.tag.as_str()))
            .chain(self.udp_ports.values().map(|p| p.tag.as_str()))
            .chain(self.pools.keys().map(String::as_str))
            .collect();
        for tag in tags {
            let n = self.pools.get(tag).map_or(0, |p| p.tunnels.len());
            out.sample("tcpforward_tunnels", &[("tag", tag)], n as u64);
        }

        let ports: Vec<u16> = self.counters.visitors.keys().copied().collect();
        let port_text: Vec<String> = ports.iter().map(u16::to_string).collect();
        let udp_ports: Vec<u16> = self.counters.udp_visitors.keys().copied().collect();
        let udp_text: Vec<String> = udp_ports.iter().map(u16::to_string).collect();
        let udp_stats = |port: &u16| core.udp_stats.get(port).copied().unwrap_or_default();
        out.family(
            "tcpforward_streams",
            Kind::Gauge,
            "Streams open (UDP: flows), by public port and protocol.",
        );
        for (port, text) in ports.iter().zip(&port_text) {
            let n = live.by_port.get(port).map_or(0, |t| t.streams);
            out.sample(
                "tcpforward_streams",
                &[("port", text), ("proto", "tcp")],
                n as u64,
            );
        }
        for (port, text) in udp_ports.iter().zip(&udp_text) {
            let n = live.udp_flows.get(port).copied().unwrap_or(0);
            out.sample(
                "tcpforward_streams",
                &[("port", text), ("proto", "udp")],
                n as u64,
            );
        }
        out.family(
            "tcpforward_stream_bytes_total",
            Kind::Counter,
            "Stream bytes (UDP: datagram bytes) by public port and protocol: in from visitors toward targets, out the way back.",
        );
        for (port, text) in ports.iter().zip(&port_text) {
            let bytes = live.port(core, *port).bytes;
            for (direction, n) in [("in", bytes.read), ("out", bytes.written)] {
                out.sample(
                    "tcpforward_stream_bytes_total",
                    &[
                        ("port", text.as_str()),
                        ("direction", direction),
                        ("proto", "tcp"),
                    ],
                    n,
                );
            }
        }
        for (port, text) in udp_ports.iter().zip(&udp_text) {
            let s = udp_stats(port);
            for (direction, n) in [("in", s.bytes[IN]), ("out", s.bytes[OUT])] {
                out.sample(
                    "tcpforward_stream_bytes_total",
                    &[
                        ("port", text.as_str()),
                        ("direction", direction),
                        ("proto", "udp"),
                    ],
                    n,
                );
            }
        }
        out.family(
            "tcpforward_visitors_total",
            Kind::Counter,
            "Visitors by public port, protocol and what became of them (UDP: flows served or whose target failed; datagrams from new sources that got no flow).",
        );
        for (proto, counts, texts) in [
            ("tcp", &self.counters.visitors, &port_text),
            ("udp", &self.counters.udp_visitors, &udp_text),
        ] {
            for (counts, text) in counts.values().zip(texts) {
                for v in Visit::ALL {
                    out.sample(
                        "tcpforward_visitors_total",
                        &[
                            ("port", text.as_str()),
                            ("result", v.label()),
                            ("proto", proto),
                        ],
                        counts[v as usize],
                    );
                }
            }
        }
        out.family(
            "tcpforward_udp_datagrams_total",
            Kind::Counter,
            "Datagrams by public UDP port: in from visitors toward targets, out the way back.",
        );
        for (port, text) in udp_ports.iter().zip(&udp_text) {
            let s = udp_stats(port);
            for (direction, n) in [("in", s.datagrams[IN]), ("out", s.datagrams[OUT])] {
                out.sample(
                    "tcpforward_udp_datagrams_total",
                    &[("port", text.as_str()), ("direction", direction)],
                    n,
                );
            }
        }
        out.family(
            "tcpforward_udp_dropped_total",
            Kind::Counter,
            "Datagrams dropped by public UDP port and reason.",
        );
        for (port, text) in udp_ports.iter().zip(&udp_text) {
            let s = udp_stats(port);
            for why in UdpDrop::ALL {
                out.sample(
                    "tcpforward_udp_dropped_total",
                    &[("port", text.as_str()), ("reason", why.label())],
                    s.dropped(why),
                );
            }
        }
        out.family(
            "tcpforward_tunnel_closes_total",
            Kind::Counter,
            "Attached tunnels that ended, by reason.",
        );
        for reason in CloseReason::LABELS {
            let n = self.counters.tunnel_closes.get(reason).copied();
            out.sample(
                "tcpforward_tunnel_closes_total",
                &[("reason", reason)],
                n.unwrap_or(0),
            );
        }
        out.family(
            "tcpforward_handshakes_total",
            Kind::Counter,
            "Client handshakes by result.",
        );
        for result in HANDSHAKE_RESULTS {
            let n = self.counters.handshakes.get(result).copied();
            out.sample(
                "tcpforward_handshakes_total",
                &[("result", result)],
                n.unwrap_or(0),
            );
        }
        out.family(
            "tcpforward_clients_refused_total",
            Kind::Counter,
            "Connections on the client port closed at accept: their address is not in ALLOW.",
        );
        out.sample(
            "tcpforward_clients_refused_total",
            &[],
            self.counters.clients_refused,
        );
    }
}

/// A mapping's JSON with its port's `[ALLOW]` list and limit, when it has them.
fn with_lines(
    mut v: Value,
    allow: &Option<Vec<config::Cidr>>,
    limit: Option<config::Rate>,
) -> Value {
    if let Some(allow) = allow {
        let list: Vec<String> = allow.iter().map(ToString::to_string).collect();
        v["allow"] = json!(list);
    }
    if let Some(limit) = limit {
        v["limit_bits_per_sec"] = json!(limit.bits_per_sec());
    }
    v
}
