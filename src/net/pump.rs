//! The two pumps that move a stream's bytes, and the stream endings they lead to.
//!
//! - **Upward** ([`Core::relay_read`]): the stream's socket into the tunnel. A read goes
//!   straight into the session's output queue behind a reserved DATA header; a bulk stream
//!   over a transport that allows it is spliced into a pipe instead, and the session queues
//!   only the header.
//! - **Downward** ([`Core::deliver`], [`Core::relay_writable`], [`Core::splice_in`]): the
//!   tunnel's payloads to the stream's socket, written straight from the
//!   read buffer or the pipe, buffering only what the socket refuses. Every write ends in
//!   [`Core::after_write`]: credit returned, write half shut once the peer's FIN is
//!   delivered, the stream reaped once both directions are over, or a reset on failure.
//!
//! On a limited public port both pumps move at most the port's tokens (`limit.rs`): the
//! upward one reads no more, the downward one writes no more and keeps the rest.

use std::io::{self, Read};

use log::debug;

use crate::net::limit::Dir;
use crate::net::reactor::{Core, Endpoint, relay_and_tunnel};
use crate::net::relay::RelayState;
use crate::net::sys;
use crate::net::tunnel::Tunnel;
use crate::protocol::CloseReason;
use crate::protocol::frame::MAX_LONG_PAYLOAD;

/// A stream's reads are spliced once one filled its request and at least this much credit
/// is open.
const SPLICE_OUT_MIN: usize = 64 * 1024;

/// Remember that relay `rkey` waits for room in its tunnel's output queue.
fn block(t: &mut Tunnel, rkey: usize) {
    if !t.blocked.contains(&rkey) {
        t.blocked.push(rkey);
    }
}

/// How a splice of a long payload went.
pub(crate) enum SpliceIn {
    /// This many bytes moved.
    Moved(usize),
    /// The tunnel has nothing more to read now, or it closed.
    Stop,
    /// Read the payload the plain way this time.
    Copy,
}

impl Core {
    /// Upward: read from a relay's socket into its tunnel, as DATA frames.
    pub fn relay_read(&mut self, rkey: usize) {
        let now = self.now;
        let Some((r, t)) = relay_and_tunnel(&mut self.slab, rkey) else {
            return;
        };
        // The server reads a visitor's first bytes before OPEN_OK (the client keeps them
        // until its connect completes); the client reads only once connected.
        if !r.readable || r.state == RelayState::Connecting {
            return;
        }
        let (id, tkey) = (r.id, r.tunnel);
        let credit = t.session.send_credit(id);
        if credit == 0 {
            return; // resumed by CREDIT (or finished)
        }
        if !t.session.tx_has_room() {
            block(t, rkey);
            return; // resumed by the tunnel's flush
        }
        let mut want = credit.min(MAX_LONG_PAYLOAD);
        // A limited port's visitor reads within its port's tokens, and waits without any.
        let port = r.port;
        let limited = match self.limits.allowance(port, Dir::Up, now) {
            None => false,
            Some(0) => {
                self.throttle(rkey, Dir::Up);
                return; // resumed by the port's timer
            }
            Some(tokens) => {
                want = want.min(tokens);
                true
            }
        };
        // A stream whose last read filled its request has more waiting: splice it into a
        // pipe and let the session queue only its header; the tunnel splices the payload.
        if r.bulk
            && want >= SPLICE_OUT_MIN
            && !r.splice_off
            && t.session.can_queue_payload()
            && t.transport.splice_socket().is_some()
            && let Some(pipe) = self.pipes.take(now)
        {
            match pipe.fill_from(&r.sock, want) {
                // The session takes it: `can_queue_payload` held and `n` is within credit.
                // Were it refused, the bytes in the pipe could not be sent: the stream is
                // reset and the pipe dropped, never pooled with bytes in it.
                Ok(n) if n > 0 => {
                    if !t.session.queue_payload(id, n) {
                        debug_assert!(false, "a payload within credit was refused");
                        self.reset_stream(rkey, "spliced bytes refused");
                        return;
                    }
                    t.out_pipe = Some(pipe);
                    if limited {
                        self.limits.spend(port, Dir::Up, n, now);
                    }
                    r.bytes_read += n as u64;
                    r.active = self.sweeps;
                    r.bulk = n == want;
                    t.mark_dirty(tkey, &mut self.dirty);
                    // A short splice does not mean the socket is drained: a pipe holds fewer
                    // bytes than its size when packets are small. Read on; a short plain read
                    // is what tells.
                    self.enqueue_relay(rkey);
                    return;
                }
                // End of input: the plain read below sees it too.
                Ok(_) => self.pipes.put(pipe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    r.readable = false;
                    self.pipes.put(pipe);
                    return;
                }
                Err(e) => {
                    debug!("stream {id}: splice failed, copying: {e}");
                    r.splice_off = true;
                    self.pipes.put(pipe);
                }
            }
        }
        // One read straight into the tunnel's output queue, after room for the header.
        let Some(mut room) = t.session.data_room(id, want) else {
            block(t, rkey);
            return;
        };
        let result = loop {
            match (&r.sock).read(room.buf()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                // End of input: half-close the stream.
                r.readable = false;
                t.session.finish(id);
                t.mark_dirty(tkey, &mut self.dirty);
                self.finish_if_done(rkey);
            }
            Ok(n) => {
                room.commit(n);
                if limited {
                    self.limits.spend(port, Dir::Up, n, now);
                }
                r.bytes_read += n as u64;
                r.active = self.sweeps;
                r.bulk = n == want;
                t.mark_dirty(tkey, &mut self.dirty);
                if n < want && !r.read_closed_hint {
                    r.readable = false; // a short read drained the socket
                } else {
                    self.enqueue_relay(rkey);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => r.readable = false,
            Err(e) => {
                debug!("stream {id}: read from {} failed: {e}", r.label);
                self.reset_stream(rkey, &format!("read failed: {e}"));
            }
        }
    }

    /// Downward: payload (already counted against the window) for the stream of `rkey` on
    /// tunnel `tkey`: written to its socket or queued, or kept while the target's name is
    /// resolved.
    pub fn deliver(&mut self, tkey: usize, rkey: usize, parts: &[&[u8]]) {
        let now = self.now;
        match self.slab.get_mut(rkey).map(|e| &mut e.ep) {
            Some(Endpoint::Relay(r)) if r.tunnel == tkey => {
                let max = self.limits.allowance(r.port, Dir::Down, now);
                let written = r.write_or_queue(parts, max.unwrap_or(usize::MAX));
                self.after_write(rkey, written);
            }
            Some(Endpoint::Resolving(p)) if p.tunnel == tkey => {
                for part in parts {
                    // Within the stream's window, which is the buffer's cap.
                    p.pending.push(part);
                }
            }
            Some(Endpoint::UdpFlow(_)) => self.deliver_datagrams(tkey, rkey, parts),
            _ => {}
        }
    }

    /// Downward: a relay's socket can take bytes again.
    pub(crate) fn relay_writable(&mut self, rkey: usize) {
        let now = self.now;
        let Some(Endpoint::Relay(r)) = self.slab.get_mut(rkey).map(|e| &mut e.ep) else {
            return;
        };
        if r.drained() {
            return;
        }
        let max = self.limits.allowance(r.port, Dir::Down, now);
        let written = r.flush_pending(max.unwrap_or(usize::MAX));
        self.after_write(rkey, written);
    }

    /// Move the long payload in progress from the tunnel's socket into its stream's pipe
    /// and on to the stream's socket, without copying it through memory of ours.
    pub(crate) fn splice_in(&mut self, tkey: usize, rkey: usize, remaining: usize) -> SpliceIn {
        let now = self.now;
        let Some((r, t)) = relay_and_tunnel(&mut self.slab, rkey) else {
            return SpliceIn::Copy; // not a connected relay: its bytes are read the plain way
        };
        // A limited stream drains its pipe only as tokens come in: it would hold one of the
        // few pipes for seconds, and the unlimited streams that need them would copy. Its
        // bytes wait in `pending` instead, which its window bounds.
        if r.tunnel != tkey
            || r.splice_off
            || !r.pending.is_empty()
            || self.limits.is_limited(r.port)
        {
            return SpliceIn::Copy;
        }
        let Some(sock) = t.transport.splice_socket() else {
            return SpliceIn::Copy;
        };
        if r.pipe.is_none() {
            let Some(pipe) = self.pipes.take(now) else {
                return SpliceIn::Copy;
            };
            r.pipe = Some(pipe);
        }
        let Some(pipe) = &r.pipe else {
            return SpliceIn::Copy;
        };
        match pipe.fill_from(sock, remaining) {
            Ok(0) => {
                self.close_tunnel(tkey, CloseReason::PeerClosed);
                SpliceIn::Stop
            }
            Ok(n) => {
                t.bytes_in += n as u64;
                t.session.payload_spliced(n, now);
                r.piped += n;
                // The next read stops after a long header, so that its payload can follow
                // this one through the pipe.
                t.header_only = n == remaining;
                let max = self.limits.allowance(r.port, Dir::Down, now);
                let written = r.flush_pipe(max.unwrap_or(usize::MAX));
                self.after_write(rkey, written);
                SpliceIn::Moved(n)
            }
            // Nothing to read, or the pipe is full (a pipe holds fewer bytes than its size
            // when the socket's buffers are small): a plain read tells which.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if r.piped == 0 {
                    t.readable = false;
                    SpliceIn::Stop
                } else {
                    SpliceIn::Copy
                }
            }
            Err(e) => {
                debug!("stream {}: splice failed, copying: {e}", r.id);
                r.splice_off = true;
                SpliceIn::Copy
            }
        }
    }

    /// What follows every write to a relay's socket.
    pub(crate) fn after_write(&mut self, rkey: usize, written: io::Result<usize>) {
        let Some((r, t)) = relay_and_tunnel(&mut self.slab, rkey) else {
            return;
        };
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                debug!("stream {}: write to {} failed: {e}", r.id, r.label);
                self.reset_stream(rkey, &format!("write failed: {e}"));
                return;
            }
        };
        // A PROXY header goes first; the stream's counts and credit are of its own bytes.
        let header = n.min(r.header);
        r.header -= header;
        if header > 0 {
            r.active = self.sweeps;
        }
        let n = n - header;
        r.bytes_written += n as u64;
        if n > 0 {
            r.active = self.sweeps;
        }
        // A limited port's visitor with bytes left and no tokens waits for the port's timer
        // (the bytes wait in `pending` or the pipe; credit follows only what was written).
        let wait = self.limits.spend(r.port, Dir::Down, n, self.now) && !r.drained();
        // An emptied receive pipe goes back to the pool.
        if r.piped == 0
            && let Some(pipe) = r.pipe.take()
        {
            self.pipes.put(pipe);
        }
        if n > 0 {
            // Credit may be due, or the session may have ended trying to queue it: either
            // way the flush at the end of the turn acts on it.
            t.session.delivered(r.id, n);
            t.mark_dirty(r.tunnel, &mut self.dirty);
        }
        if wait {
            self.throttle(rkey, Dir::Down);
        }
        self.shut_if_complete(rkey);
    }

    /// Shut a relay's write half once the peer's FIN and every byte before it reached the
    /// socket; then the stream may be over. When our read half has already ended, the close
    /// that follows sends the FIN: the shutdown call is skipped.
    pub(crate) fn shut_if_complete(&mut self, rkey: usize) {
        let Some((r, t)) = relay_and_tunnel(&mut self.slab, rkey) else {
            return;
        };
        if r.write_shut || r.state != RelayState::Open || !r.drained() {
            return;
        }
        if !t.session.recv_complete(r.id) {
            return;
        }
        if t.session.may_send(r.id) {
            let _ = r.sock.shutdown(std::net::Shutdown::Write);
        }
        r.write_shut = true;
        self.finish_if_done(rkey);
    }

    /// Close a relay whose stream finished cleanly in both directions.
    pub(crate) fn finish_if_done(&mut self, rkey: usize) {
        let Some((r, t)) = relay_and_tunnel(&mut self.slab, rkey) else {
            return;
        };
        if r.write_shut && t.session.reap(r.id) {
            debug!(
                "stream {} ({}) finished: {} bytes read, {} written",
                r.id, r.label, r.bytes_read, r.bytes_written
            );
            self.drop_relay(rkey, false);
        }
    }

    /// Abort a stream from our side: tell the peer, reset the local socket.
    pub fn reset_stream(&mut self, rkey: usize, reason: &str) {
        let (tkey, id) = match self.slab.get(rkey).map(|e| &e.ep) {
            Some(Endpoint::Relay(r)) => (r.tunnel, r.id),
            Some(Endpoint::Resolving(p)) => (p.tunnel, p.id),
            _ => return,
        };
        if let Some(t) = self.tunnel_mut(tkey) {
            t.session.reset(id, reason);
            self.mark_dirty(tkey);
        }
        self.drop_relay(rkey, true);
    }

    /// Remove a stream's endpoint (relay or pending open); the session has forgotten the
    /// stream already. `abort` resets the socket instead of closing it gracefully.
    pub fn drop_relay(&mut self, rkey: usize, abort: bool) {
        if !matches!(
            self.slab.get(rkey).map(|e| &e.ep),
            Some(Endpoint::Relay(_) | Endpoint::Resolving(_) | Endpoint::UdpFlow(_))
        ) {
            return;
        }
        if let Some(Endpoint::Relay(r)) = self.remove(rkey)
            && abort
        {
            debug!(
                "stream {} ({}) reset: {} bytes read, {} written",
                r.id, r.label, r.bytes_read, r.bytes_written
            );
            sys::set_abortive_close(&r.sock);
        }
    }
}
