//! The admin API's connections in the loop: accepting them within their cap, driving each
//! one when it is ready or its turn comes again, and closing idle ones.

use std::io;
use std::time::Duration;

use log::debug;

use crate::net::endpoint::{Endpoint, Listener};
use crate::net::http::{self, AdminConn, Next, Request};
use crate::net::reactor::{Core, Reactor, Role};
use crate::net::sys;

/// After a failed accept (out of file descriptors), try again this much later.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Core {
    /// Accept what the admin listener has; beyond the cap, close at once.
    pub(crate) fn admin_accept(&mut self, lkey: usize) {
        loop {
            let Some(Endpoint::Listener(Listener { sock, .. })) = self.endpoint(lkey) else {
                return;
            };
            match sock.accept() {
                Ok((sock, peer)) => {
                    if self.admin_conns >= http::MAX_CONNS {
                        debug!(
                            "admin: {peer}: {} connections open, closing",
                            http::MAX_CONNS
                        );
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let conn = AdminConn::new(sock, peer, self.now);
                    let at = conn.timer_at;
                    match self.insert(Endpoint::Admin(Box::new(conn))) {
                        Ok((key, _)) => {
                            self.admin_conns += 1;
                            self.schedule_entry(key, at);
                        }
                        Err(e) => debug!("admin: {peer}: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    if sys::is_fd_exhaustion(&e) {
                        self.note_fd_exhaustion("accepting an admin connection", &e);
                    } else {
                        debug!("admin: accept: {e}");
                    }
                    // The pending connections stay in the backlog, and edge-triggered
                    // readiness will not say so again: try again soon, once.
                    if !self.admin_accept_retry {
                        self.admin_accept_retry = true;
                        self.schedule_entry(lkey, self.now + ACCEPT_RETRY);
                    }
                    return;
                }
            }
        }
    }

    /// Queue an admin connection for one more turn (the ready queue is worked through once
    /// per turn, so a connection that keeps its peer busy waits its turn like a relay).
    pub(crate) fn enqueue_admin(&mut self, key: usize) {
        if let Some(Endpoint::Admin(conn)) = self.endpoint_mut(key)
            && !conn.queued
        {
            conn.queued = true;
            self.ready.push_back(key);
        }
    }

    /// Close an admin connection.
    pub(crate) fn close_admin(&mut self, key: usize, why: &str) {
        if let Some(Endpoint::Admin(conn)) = self.remove(key) {
            self.admin_conns -= 1;
            debug!("admin: {}: closed ({why})", conn.peer);
        }
    }
}

impl<R: Role> Reactor<R> {
    /// Let an admin connection do what it can: answer its requests through the role.
    pub(crate) fn admin_drive(&mut self, key: usize) {
        let Some(Endpoint::Admin(mut conn)) = self.core.take_in_place(key) else {
            return;
        };
        conn.queued = false;
        let now = self.core.now;
        let (core, role) = (&mut self.core, &mut self.role);
        let mut answer = |req: &Request<'_>| role.on_admin_request(core, req);
        let next = conn.drive(now, &mut answer);
        self.core.put_in_place(key, Endpoint::Admin(conn));
        match next {
            Ok(Next::Wait) => {}
            // More requests are in: the rest in a later turn, so that others get theirs.
            Ok(Next::Again) => self.core.enqueue_admin(key),
            Ok(Next::Close) => self.core.close_admin(key, "done"),
            Err(e) => self.core.close_admin(key, &e.to_string()),
        }
    }

    /// The idle timer of an admin connection whose deadline moved on since it was set:
    /// set it again for the new deadline.
    pub(crate) fn admin_timer(&mut self, key: usize, at: std::time::Instant) {
        if let Some(Endpoint::Admin(conn)) = self.core.endpoint_mut(key)
            && conn.timer_at == at
        {
            conn.timer_at = conn.deadline;
            let deadline = conn.deadline;
            self.core.schedule_entry(key, deadline);
        }
    }
}
