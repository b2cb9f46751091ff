//! Reload (SIGHUP, `POST /api/reload`): read `forward_server.cfg` and the mapping file
//! again and apply the difference. New ports are bound before anything changes, so a port
//! that cannot be bound (like a file that does not load) changes nothing; ports that did
//! not change are not touched; settings apply to tunnels and streams made afterwards (a
//! changed `ALLOW`, `[ALLOW]` list, `[PROXY]` line or `MAX_PER_SOURCE` to connections
//! accepted afterwards: streams already open stay). A changed `[LIMIT]` line or `BANDWIDTH`
//! is the exception: it changes the rate of the port's buckets at once, for its open
//! streams too.

use std::sync::Arc;

use log::{debug, info, warn};
use serde_json::{Value, json};

use super::{ServerRole, bind_public, listen, params_of, timeouts_of};
use crate::config::{self, Mapping, Proto, ServerTlsSetting};
use crate::logging;
use crate::net::reactor::Core;

impl ServerRole {
    /// Apply what changed; `Err` with why when nothing was.
    pub(super) fn reload(&mut self, core: &mut Core) -> Result<Value, String> {
        let cfg = config::load_server(&self.cfg_file).map_err(|e| e.to_string())?;
        let level = logging::level(&self.log_args, cfg.log_level).map_err(|e| e.to_string())?;
        for w in &cfg.warnings {
            warn!("{w}");
        }
        let diff = config::diff(&self.mappings(), &cfg.mappings);
        // Listen first: a port that cannot be bound (or registered) fails the reload before
        // anything changed; the listeners made so far close with the error.
        let mut opened: Vec<(&Mapping, usize)> = Vec::new();
        for m in &diff.added {
            let listener = bind_public(self.bind, m.public_port)
                .and_then(|sock| listen(core, m.public_port, sock));
            match listener {
                Ok(key) => opened.push((m, key)),
                Err(e) => {
                    for (_, key) in opened {
                        core.remove(key);
                    }
                    return Err(e.to_string());
                }
            }
        }
        let udp_diff = config::diff(&self.udp_mappings(), &cfg.udp_mappings);
        let udp_socks = match self.bind_udp_added(&udp_diff) {
            Ok(socks) => socks,
            Err(e) => {
                for (_, key) in opened {
                    core.remove(key);
                }
                return Err(e);
            }
        };

        let mut restart = Vec::new();
        if cfg.inner_port != self.inner_port {
            restart.push("INNER_PORT");
        }
        if cfg.bind_addr != self.bind_addr {
            restart.push("BIND_ADDR");
        }
        if cfg.admin.as_ref().map(|a| a.addr) != self.admin_addr {
            restart.push("ADMIN_ADDR");
        }
        let tls_on = !matches!(cfg.tls, ServerTlsSetting::Off);
        if tls_on != self.tls.is_some() {
            restart.push("TLS");
        }
        for key in &restart {
            warn!("reload: {key} changed: it takes effect at the next restart");
        }

        for m in &diff.removed {
            self.unpublish(core, m.public_port);
        }
        for (_, m) in &diff.changed {
            self.retarget(core, m);
        }
        for &(m, key) in &opened {
            self.adopt(core, m, key);
        }
        let removed: Vec<u16> = diff.removed.iter().map(|m| m.public_port).collect();
        super::log_closed(&removed, Proto::Tcp, "reload: ");
        let changed: Vec<Mapping> = diff.changed.iter().map(|(_, m)| m.clone()).collect();
        super::log_mappings(&changed, Proto::Tcp, "reload: ");
        super::log_mappings(&diff.added, Proto::Tcp, "reload: ");
        self.apply_udp_diff(core, &udp_diff, udp_socks)?;

        let mut settings = Vec::new();
        let params = params_of(&cfg);
        if params.token != self.params.token {
            settings.push("TOKEN");
        }
        if params.max_streams != self.params.max_streams {
            settings.push("MAX_STREAMS");
        }
        if params.heartbeat != self.params.heartbeat {
            settings.push("HEARTBEAT");
        }
        if cfg.client_allow != self.client_allow {
            settings.push("ALLOW");
            self.client_allow = cfg.client_allow.clone();
        }
        if cfg.default_limit != self.default_limit {
            // Applied above, as a change to every port without a [LIMIT] line.
            settings.push("BANDWIDTH");
            self.default_limit = cfg.default_limit;
        }
        if cfg.max_per_source != self.max_per_source {
            settings.push("MAX_PER_SOURCE");
            self.max_per_source = cfg.max_per_source;
        }
        if cfg.max_udp_flows != self.max_udp_flows {
            settings.push("MAX_UDP_FLOWS");
            self.max_udp_flows = cfg.max_udp_flows;
        }
        if cfg.udp_timeout != self.udp_timeout {
            settings.push("UDP_TIMEOUT");
            self.udp_timeout = cfg.udp_timeout;
            core.set_udp_timeout(Some(cfg.udp_timeout));
        }
        // A new token applies to the API that listens; when the address changed, the old
        // one (which the running listener was checked with) stays until the restart.
        if self.admin_addr.is_some() && !restart.contains(&"ADMIN_ADDR") {
            let token = cfg.admin.as_ref().and_then(|a| a.token.clone());
            if token.as_ref().map(|t| t.expose()) != self.admin_token.as_ref().map(|t| t.expose()) {
                settings.push("ADMIN_TOKEN");
                self.admin_token = token;
            }
        }
        let timeouts = timeouts_of(&cfg);
        if timeouts.idle != self.timeouts.idle {
            settings.push("IDLE_TIMEOUT");
        }
        if timeouts.fin != self.timeouts.fin {
            settings.push("FIN_TIMEOUT");
        }
        if timeouts != self.timeouts {
            self.timeouts = timeouts;
            core.set_stream_timeouts(timeouts);
        }
        if level != log::max_level() {
            settings.push("LOG_LEVEL");
            log::set_max_level(level);
        }
        // A new certificate (the same files rewritten, or others) serves new tunnels.
        if let (ServerTlsSetting::Files(new), Some(_)) = (&cfg.tls, &self.tls) {
            self.tls = Some(Arc::clone(&new.config));
        }
        // Kept across the reload: whether TLS is required follows the running transport.
        self.params = Arc::new(crate::protocol::session::ServerParams {
            require_tls: self.tls.is_some(),
            ..params
        });
        self.mapper_file = cfg.mapper_file;

        let ports = |ms: &[Mapping]| ms.iter().map(|m| m.public_port).collect::<Vec<_>>();
        let changed: Vec<u16> = diff.changed.iter().map(|(_, m)| m.public_port).collect();
        let udp_changed: Vec<u16> = udp_diff
            .changed
            .iter()
            .map(|(_, m)| m.public_port)
            .collect();
        let summary = json!({
            "added": ports(&diff.added),
            "removed": ports(&diff.removed),
            "changed": changed,
            "udp": {
                "added": ports(&udp_diff.added),
                "removed": ports(&udp_diff.removed),
                "changed": udp_changed,
            },
            "settings": settings,
            "restart_needed": restart,
        });
        info!(
            "reload: {} port(s) added, {} removed, {} changed; UDP: {} added, {} removed, \
             {} changed; settings changed: {}",
            diff.added.len(),
            diff.removed.len(),
            changed.len(),
            udp_diff.added.len(),
            udp_diff.removed.len(),
            udp_changed.len(),
            if settings.is_empty() {
                "none".to_string()
            } else {
                settings.join(", ")
            }
        );
        Ok(summary)
    }

    /// A mapping's target, tag, allow-list, PROXY setting or limit changed: new visitors go
    /// there, under the new list and with the new header; open streams keep their target,
    /// and move at the new limit at once.
    pub(super) fn retarget(&mut self, core: &mut Core, m: &Mapping) {
        if let Some(p) = self.ports.get_mut(&m.public_port) {
            p.target = m.target.clone();
            p.target_text = m.target.to_string().into();
            p.tag = m.tag.clone();
            p.allow = m.allow.clone();
            p.proxy = m.proxy;
            p.limit = m.limit;
            core.set_limit(m.public_port, m.limit);
            debug!(
                "public port {} -> {} (tag {})",
                m.public_port, m.target, m.tag
            );
        }
    }
}
