//! The loop's work on a tunnel: reading and decoding (each input handed to the pumps, the
//! streams or the role), flushing, ticking, and the one way a tunnel ends.

use std::io;
use std::time::Duration;

use log::debug;

use crate::net::pump::SpliceIn;
use crate::net::reactor::{ClosedTunnel, Core, Endpoint, Role};
use crate::net::sys;
use crate::net::tls::tls_failure;
use crate::net::tunnel::Tunnel;
use crate::protocol::CloseReason;
use crate::protocol::session::{Event, Input};

/// A tunnel reads at most this much per turn before others get theirs.
const TUNNEL_READ_BUDGET: usize = 1024 * 1024;
/// A tunnel's buffers are returned this long after they last drained (and refilled on
/// demand): a burst leaves no memory behind, a busy tunnel reallocates once per interval.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

impl Core {
    /// Add a tunnel endpoint; its first frames (if any) go out at the end of the turn.
    pub fn insert_tunnel(&mut self, t: Tunnel) -> io::Result<(usize, u64)> {
        let (key, generation) = self.insert(Endpoint::Tunnel(Box::new(t)))?;
        self.mark_dirty(key);
        self.schedule_tunnel_tick(key);
        Ok((key, generation))
    }

    /// Read and process frames, up to the turn's budget.
    pub(crate) fn tunnel_read<R: Role>(&mut self, key: usize, role: &mut R) {
        let mut budget = TUNNEL_READ_BUDGET;
        loop {
            let Some(t) = self.tunnel_mut(key) else {
                return;
            };
            if !t.readable || !t.session.wants_input() {
                return;
            }
            if t.rx.is_empty()
                && let Some((rkey, _, remaining)) = t.session.payload_in_progress()
            {
                match self.splice_in(key, rkey, remaining) {
                    SpliceIn::Moved(n) => {
                        budget = budget.saturating_sub(n);
                        if budget == 0 {
                            self.ready.push_back(key);
                            return;
                        }
                        continue;
                    }
                    SpliceIn::Stop => return,
                    SpliceIn::Copy => {}
                }
            }
            let Some(t) = self.tunnel_mut(key) else {
                return;
            };
            match t.read_some() {
                Ok((0, _)) => {
                    self.close_tunnel(key, CloseReason::PeerClosed);
                    return;
                }
                Ok((n, room)) => {
                    t.rx.commit(n);
                    t.bytes_in += n as u64;
                    // A short read drained the socket, unless the peer is closing: then read
                    // on to EOF.
                    let drained = n < room && !t.read_closed_hint;
                    if drained {
                        t.readable = false;
                    }
                    self.process_rx(key, role);
                    if drained {
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.ready.push_back(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.readable = false;
                    // A TLS read may have moved the handshake on without a byte of
                    // plaintext: what the session queued meanwhile (a server's challenge)
                    // must reach the TLS layer, which sends it once the handshake is done.
                    if t.transport.is_tls() {
                        self.mark_dirty(key);
                    }
                    return;
                }
                Err(e) => {
                    self.close_tunnel(key, transport_error("read", &e));
                    return;
                }
            }
        }
    }

    /// Hand every input decoded from a tunnel's read buffer to whom it concerns: payloads
    /// to the downward pump, stream events to the streams, the rest to the role.
    fn process_rx<R: Role>(&mut self, key: usize, role: &mut R) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        let mut rx = std::mem::take(&mut t.rx);
        let mut at = 0;
        while let Some(t) = self.tunnel_mut(key) {
            let (used, input) = t.session.handle_rx(&rx.data()[at..], now);
            at += used;
            match input {
                Input::NeedMore => break,
                Input::Data { handle, parts, .. } => self.deliver(key, handle, parts.as_slice()),
                Input::Event(Event::Credit { handle, .. }) => {
                    if self.relay_mut(handle).is_some_and(|r| r.readable) {
                        self.enqueue_relay(handle);
                    }
                }
                Input::Event(Event::Fin { handle, .. }) => self.shut_if_complete(handle),
                Input::Event(Event::Reset { handle, id, reason }) => {
                    debug!("stream {id} reset by peer: {reason}");
                    self.drop_relay(handle, true);
                }
                Input::Event(event) => role.on_event(self, key, event),
            }
        }
        rx.consume(at);
        if let Some(t) = self.tunnel_mut(key) {
            t.rx = rx;
        }
        // What the session queued (a pong, credit, a refusal) leaves with the turn's flush.
        self.mark_dirty(key);
        // The session's deadlines move with its phase (a completed handshake, say).
        if !self.close_if_ended(key) {
            self.schedule_tunnel_tick(key);
        }
    }

    /// Write a tunnel's queued frames; wake relays waiting for room; end a tunnel whose
    /// session has ended.
    pub fn flush_tunnel(&mut self, key: usize) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        let mut spare = None;
        let result = t.flush(&mut spare);
        if let Some(pipe) = spare {
            self.pipes.put(pipe);
        }
        if let Err(e) = result {
            self.close_tunnel(key, transport_error("write", &e));
            return;
        }
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        if t.session.queued() == 0
            && t.release_at.is_none()
            && (t.session.buffers_allocated() || t.rx.is_allocated())
        {
            t.release_at = Some(now + IDLE_RELEASE);
            self.schedule_tunnel_tick(key);
        }
        if let Some(t) = self.tunnel_mut(key)
            && t.session.tx_has_room()
            && !t.blocked.is_empty()
        {
            for rkey in std::mem::take(&mut t.blocked) {
                self.enqueue_relay(rkey);
            }
        }
        self.close_if_ended(key);
    }

    /// The tunnel's timer: its session's deadlines and the release of idle buffers.
    pub(crate) fn tunnel_tick(&mut self, key: usize) {
        let now = self.now;
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        t.tick_at = None;
        if t.release_at.is_some_and(|at| at <= now) {
            // A burst is over: hand back the memory it made the buffers touch.
            t.release_at = None;
            t.rx.release();
            t.session.release_buffers();
        }
        t.transport.handle_timeout(now);
        t.session.handle_timeout(now);
        self.mark_dirty(key);
        if !self.close_if_ended(key) {
            self.schedule_tunnel_tick(key);
        }
    }

    pub fn schedule_tunnel_tick(&mut self, key: usize) {
        let Some(t) = self.tunnel_mut(key) else {
            return;
        };
        let deadlines = [
            t.session.poll_timeout(),
            t.release_at,
            t.transport.poll_timeout(),
        ];
        let Some(at) = deadlines.into_iter().flatten().min() else {
            return;
        };
        // One timer per tunnel: a tick already due no later than this one reschedules itself.
        if t.tick_at.is_some_and(|current| current <= at) {
            return;
        }
        t.tick_at = Some(at);
        self.schedule_entry(key, at);
    }

    /// Close the tunnel if its session has ended. True when it did (or is gone).
    pub(crate) fn close_if_ended(&mut self, key: usize) -> bool {
        let Some(t) = self.tunnel_mut(key) else {
            return true;
        };
        match t.session.close_reason() {
            Some(reason) => {
                let reason = reason.clone();
                self.close_tunnel(key, reason);
                true
            }
            None => false,
        }
    }

    /// Close a tunnel and reset every stream on it. The role hears of it at the end of the
    /// current dispatch. The one way a tunnel ends.
    pub fn close_tunnel(&mut self, key: usize, reason: CloseReason) {
        let Some(Endpoint::Tunnel(mut t)) = self.remove(key) else {
            return;
        };
        // A refusal or an alert rustls still holds goes out if the socket takes it now.
        let _ = t.transport.flush();
        for (_, rkey) in t.session.streams() {
            match self.slab.get(rkey).map(|e| &e.ep) {
                Some(Endpoint::Relay(r)) if r.tunnel == key => {
                    sys::set_abortive_close(&r.sock);
                    self.remove(rkey);
                }
                Some(Endpoint::Resolving(p)) if p.tunnel == key => {
                    self.remove(rkey);
                }
                Some(Endpoint::UdpFlow(f)) if f.tunnel == key => {
                    self.remove(rkey);
                }
                _ => {}
            }
        }
        self.closed.push(ClosedTunnel {
            key,
            tunnel: t,
            reason,
        });
    }

    /// Tell every established tunnel we are leaving, best effort, without waiting.
    pub(crate) fn shutdown(&mut self) {
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(t) = self.tunnel_mut(key)
                && t.session.is_established()
            {
                t.session.goaway("shutting down");
                let _ = t.flush(&mut None);
            }
        }
    }
}

/// Why a read or write of the tunnel's transport failed: a TLS failure says what TLS found.
fn transport_error(op: &'static str, e: &io::Error) -> CloseReason {
    match tls_failure(e) {
        Some(why) => CloseReason::Tls(why.to_string()),
        None => CloseReason::io(op, e),
    }
}
