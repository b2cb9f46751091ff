//! The engine's input: decoding received bytes one step at a time, and both roles'
//! handshakes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{MAX_COALESCE, Phase, Rx, STREAM_IN_MIN, Session, Side, Stage};
use crate::protocol::caps;
use crate::protocol::close::CloseReason;
use crate::protocol::frame::{self, Frame, LONG_HEADER_LEN, MAX_DATAGRAM, kind};
use crate::protocol::handshake::{self, Accept, Challenge, Hello, NONCE_LEN, PreambleCheck};
use crate::protocol::proxy::ProxyAddrs;

/// Up to [`MAX_COALESCE`] consecutive payloads of one stream.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    parts: [&'a [u8]; MAX_COALESCE],
    len: usize,
}

impl<'a> Parts<'a> {
    fn one(p: &'a [u8]) -> Parts<'a> {
        let mut parts = [&[][..]; MAX_COALESCE];
        parts[0] = p;
        Parts { parts, len: 1 }
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.parts[..self.len]
    }

    pub fn total(&self) -> usize {
        self.as_slice().iter().map(|p| p.len()).sum()
    }
}

/// One step of decoding. `Data` is the large variant by design: it is returned by value
/// once per batch of frames, and boxing it would allocate on the hottest path.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Input<'a, H> {
    /// Nothing more can be done with these bytes: read more.
    NeedMore,
    /// Payload for stream `id`, already counted against its window: write it to the
    /// destination (or keep it) and report what the destination took with `delivered`. For
    /// a datagram stream each part is one datagram, and nothing is reported.
    Data {
        handle: H,
        id: u32,
        parts: Parts<'a>,
    },
    Event(Event<'a, H>),
}

/// What the peer did, for the application to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a, H> {
    /// The handshake completed.
    Established,
    /// Client: the server requires a token and we have none (it will refuse us).
    TokenRequired,
    /// Client: the server asks for stream `id` to `target`, and with `proxy` for that PROXY
    /// header to be written to it first; with `dgram`, for a datagram stream to a UDP
    /// target. Answer with `accept_open` or `refuse_open` before the next input.
    Open {
        id: u32,
        target: &'a str,
        proxy: Option<ProxyAddrs>,
        dgram: bool,
    },
    /// Server: the client connected the stream's target.
    OpenOk { handle: H, id: u32 },
    /// Server: the client could not; the stream is gone.
    OpenFail { handle: H, id: u32, reason: &'a str },
    /// More send credit: a stream waiting for it may send again.
    Credit { handle: H, id: u32 },
    /// The peer finished its direction of the stream.
    Fin { handle: H, id: u32 },
    /// The peer aborted the stream; it is gone.
    Reset { handle: H, id: u32, reason: &'a str },
}

impl Rx {
    /// What comes once a long payload has `left` bytes to go.
    fn after_payload(id: u32, left: usize) -> Rx {
        if left > 0 {
            Rx::Payload {
                id,
                remaining: left,
            }
        } else {
            Rx::Frames
        }
    }
}

impl<H: Copy> Session<H> {
    /// Decode one step from `buf` (bytes received and not yet consumed). Returns how many
    /// bytes it consumed and what to do. Call again with the rest until `NeedMore`.
    pub fn handle_rx<'a>(&mut self, buf: &'a [u8], now: Instant) -> (usize, Input<'a, H>) {
        let mut at = 0;
        if self.wants_input() {
            self.last_rx = now;
        }
        while self.wants_input() {
            match self.rx {
                Rx::Preamble => match handshake::check_preamble(&buf[at..]) {
                    PreambleCheck::NeedMore => break,
                    PreambleCheck::Ok => {
                        at += handshake::PREAMBLE_LEN;
                        self.rx = Rx::Frames;
                    }
                    PreambleCheck::NotTcpForward => self.fail(CloseReason::NotTcpForward),
                    PreambleCheck::Tls => self.fail(CloseReason::PeerSpeaksTls),
                    PreambleCheck::Version(theirs) => {
                        self.refuse(CloseReason::Version { theirs }, now)
                    }
                },
                Rx::Payload { id, remaining } => {
                    let n = remaining.min(buf.len() - at);
                    if n == 0 {
                        break;
                    }
                    self.rx = Rx::after_payload(id, remaining - n);
                    let part = &buf[at..at + n];
                    at += n;
                    // A stream reset meanwhile: its bytes are dropped.
                    if let Some(s) = self.streams.get(id) {
                        let parts = Parts::one(part);
                        return (
                            at,
                            Input::Data {
                                handle: s.handle,
                                id,
                                parts,
                            },
                        );
                    }
                }
                Rx::Frames => match frame::decode(&buf[at..]) {
                    Ok(Some((Frame::Data { id, payload }, n))) if self.is_established() => {
                        at += n;
                        let mut parts = Parts::one(payload);
                        while parts.len < MAX_COALESCE {
                            match frame::decode(&buf[at..]) {
                                Ok(Some((Frame::Data { id: next, payload }, n))) if next == id => {
                                    parts.parts[parts.len] = payload;
                                    parts.len += 1;
                                    at += n;
                                }
                                _ => break,
                            }
                        }
                        if let Some(input) = self.on_data(id, parts) {
                            return (at, input);
                        }
                    }
                    Ok(Some((f, n))) => {
                        at += n;
                        if let Some(event) = self.on_frame(f, now) {
                            return (at, Input::Event(event));
                        }
                    }
                    Ok(None) => {
                        let (used, input) = self.start_payload(&buf[at..]);
                        return (at + used, input);
                    }
                    Err(e) => {
                        self.malformed::<()>(format!("malformed frame: {e}"));
                    }
                },
            }
        }
        (at, Input::NeedMore)
    }

    /// The long payload being received, when its stream still exists: `(handle, id, bytes
    /// still to come)`. The caller may move those bytes itself (`payload_spliced`).
    pub fn payload_in_progress(&self) -> Option<(H, u32, usize)> {
        match self.rx {
            Rx::Payload { id, remaining } if self.wants_input() => {
                self.streams.get(id).map(|s| (s.handle, id, remaining))
            }
            _ => None,
        }
    }

    /// The caller moved `n` bytes of the payload in progress toward its destination.
    pub fn payload_spliced(&mut self, n: usize, now: Instant) {
        if let Rx::Payload { id, remaining } = self.rx {
            debug_assert!(n <= remaining);
            self.rx = Rx::after_payload(id, remaining.saturating_sub(n));
            self.last_rx = now;
        }
    }

    fn on_data<'a>(&mut self, id: u32, parts: Parts<'a>) -> Option<Input<'a, H>> {
        // A stream we already closed: its last frames may still be in flight.
        let w = self.windows;
        let s = self.streams.get_mut(id)?;
        if s.stage == Stage::Opening {
            return self.violation(format!("stream {id}: data before OPEN_OK"));
        }
        if s.dgram {
            if parts.as_slice().iter().any(|p| p.len() > MAX_DATAGRAM) {
                return self.violation(format!(
                    "stream {id}: a datagram longer than {MAX_DATAGRAM} bytes"
                ));
            }
        } else if let Err(v) = s.flow.on_received(parts.total(), w) {
            return self.violation(format!("stream {id}: {v}"));
        }
        let handle = s.handle;
        Some(Input::Data { handle, id, parts })
    }

    /// `rest` holds the start of a frame. When it is a long DATA frame of an open stream
    /// with much of its payload still to come, pass on what is here and let the rest follow
    /// as it arrives.
    fn start_payload<'a>(&mut self, rest: &'a [u8]) -> (usize, Input<'a, H>) {
        let Some((id, header_len, len)) = frame::partial_data(rest) else {
            return (0, Input::NeedMore);
        };
        let here = rest.len() - header_len;
        if header_len != LONG_HEADER_LEN || len - here < STREAM_IN_MIN || !self.is_established() {
            return (0, Input::NeedMore);
        }
        let w = self.windows;
        let Some(s) = self.streams.get_mut(id) else {
            return (0, Input::NeedMore);
        };
        if s.stage != Stage::Open || s.dgram {
            return (0, Input::NeedMore); // decoded whole, with the usual checks
        }
        if let Err(v) = s.flow.on_received(len, w) {
            self.fail(CloseReason::Violation(format!("stream {id}: {v}")));
            return (0, Input::NeedMore);
        }
        let handle = s.handle;
        self.rx = Rx::Payload {
            id,
            remaining: len - here,
        };
        if here == 0 {
            return (rest.len(), Input::NeedMore);
        }
        let parts = Parts::one(&rest[header_len..]);
        (rest.len(), Input::Data { handle, id, parts })
    }

    fn on_frame<'a>(&mut self, f: Frame<'a>, now: Instant) -> Option<Event<'a, H>> {
        match self.phase {
            Phase::Established => self.on_stream_frame(f),
            Phase::AwaitHello { nonce } => self.on_hello(f, nonce, now),
            Phase::AwaitChallenge { .. } | Phase::AwaitAccept { .. } => {
                self.on_server_handshake(f, now)
            }
            Phase::Closing { .. } | Phase::Closed { .. } => None,
        }
    }

    fn on_stream_frame<'a>(&mut self, f: Frame<'a>) -> Option<Event<'a, H>> {
        let server = matches!(self.side, Side::Server(_));
        match f {
            // Decoded with its neighbours in `handle_rx`.
            Frame::Data { .. } => None,
            Frame::Credit { id, bytes } => {
                let w = self.windows;
                let s = self.streams.get_mut(id)?;
                if s.dgram {
                    return self.violation(format!("stream {id}: CREDIT on a datagram stream"));
                }
                if let Err(v) = s.flow.on_credit(bytes, w) {
                    return self.violation(format!("stream {id}: {v}"));
                }
                let handle = s.handle;
                Some(Event::Credit { handle, id })
            }
            Frame::Fin { id } => {
                let s = self.streams.get_mut(id)?;
                if s.stage == Stage::Opening {
                    return self.violation(format!("stream {id}: FIN before OPEN_OK"));
                }
                if s.dgram {
                    return self.violation(format!("stream {id}: FIN on a datagram stream"));
                }
                if let Err(v) = s.flow.on_fin_received() {
                    return self.violation(format!("stream {id}: {v}"));
                }
                let handle = s.handle;
                Some(Event::Fin { handle, id })
            }
            Frame::Reset { id, reason } => {
                let s = self.streams.remove(id)?;
                Some(Event::Reset {
                    handle: s.handle,
                    id,
                    reason,
                })
            }
            Frame::Ping(v) => {
                if server && let Some(caps) = caps::caps_of_ping(v) {
                    self.peer_caps = caps;
                }
                self.queue_small(kind::PONG, 0, &v.to_be_bytes());
                None
            }
            Frame::Pong(_) => None,
            Frame::GoAway(reason) => {
                self.fail(CloseReason::GoAway(reason.to_string()));
                None
            }
            Frame::Open { .. } if server => self.violation("client sent OPEN".into()),
            Frame::Open {
                id,
                target,
                proxy,
                dgram,
            } => {
                if self.streams.contains(id) {
                    return self.violation(format!("protocol violation: stream {id} opened twice"));
                }
                Some(Event::Open {
                    id,
                    target,
                    proxy,
                    dgram,
                })
            }
            Frame::OpenOk { .. } if !server => self.violation("server sent OPEN_OK".into()),
            Frame::OpenOk { id } => {
                let s = self.streams.get_mut(id)?;
                if s.stage != Stage::Opening {
                    return self.violation(format!("stream {id}: OPEN_OK twice"));
                }
                s.stage = Stage::Open;
                let handle = s.handle;
                Some(Event::OpenOk { handle, id })
            }
            Frame::OpenFail { .. } if !server => self.violation("server sent OPEN_FAIL".into()),
            Frame::OpenFail { id, reason } => {
                if self.streams.get(id)?.stage != Stage::Opening {
                    return self.violation(format!("stream {id}: OPEN_FAIL after open"));
                }
                let s = self.streams.remove(id)?;
                Some(Event::OpenFail {
                    handle: s.handle,
                    id,
                    reason,
                })
            }
            Frame::Challenge(_) | Frame::Hello(_) | Frame::Accept(_) | Frame::Refuse(_) => {
                self.violation("handshake frame on an established tunnel".into())
            }
        }
    }

    /// Server: the client's hello decides whether it is served.
    fn on_hello<'a>(
        &mut self,
        f: Frame<'a>,
        nonce: [u8; NONCE_LEN],
        now: Instant,
    ) -> Option<Event<'a, H>> {
        let Side::Server(params) = &self.side else {
            return None;
        };
        let params = Arc::clone(params);
        let Frame::Hello(payload) = f else {
            return self.violation("protocol violation: expected HELLO".into());
        };
        let hello = match Hello::decode(payload) {
            Ok(h) => h,
            Err(e) => return self.malformed(format!("malformed HELLO: {e}")),
        };
        let token = params.token.as_deref();
        let binding = self.binding;
        let binding = binding.as_ref();
        let refusal = if params.require_tls && binding.is_none() {
            Some(CloseReason::TlsRequired)
        } else if !hello
            .tag
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace())
        {
            Some(CloseReason::InvalidTag)
        } else {
            match (token, &hello.proof) {
                (None, _) => None,
                (Some(_), None) => Some(CloseReason::AuthFailed(
                    "authentication failed: the server requires a token",
                )),
                (Some(token), Some(proof)) => (!handshake::verify(
                    token, binding, &nonce, hello.tag, proof,
                ))
                .then_some(CloseReason::AuthFailed(if binding.is_some() {
                    "authentication failed: wrong token, or a man in the middle \
                         (the proof is bound to the TLS session)"
                } else {
                    "authentication failed: wrong token"
                })),
            }
        };
        if let Some(reason) = refusal {
            self.refuse(reason, now);
            return None;
        }
        self.establish(now, params.heartbeat, hello.window, params.max_streams);
        self.tag = hello.tag.to_string();
        let accept = Accept {
            window: self.windows.recv,
            max_streams: params.max_streams as u32,
            heartbeat_ms: params.heartbeat.as_millis() as u32,
            proof: token
                .map(|t| handshake::server_proof(t, binding, &hello.nonce, &nonce, hello.tag)),
        }
        .encode();
        self.queue(&Frame::Accept(&accept));
        Some(Event::Established)
    }

    /// Client: the server's challenge, then its accept (or refusal).
    fn on_server_handshake<'a>(&mut self, f: Frame<'a>, now: Instant) -> Option<Event<'a, H>> {
        let Side::Client(params) = &self.side else {
            return None;
        };
        let params = Arc::clone(params);
        let token = params.token.as_deref();
        let tag = params.tag.as_str();
        let binding = self.binding;
        match (&self.phase, f) {
            (&Phase::AwaitChallenge { nonce }, Frame::Challenge(p)) => {
                let ch = match Challenge::decode(p) {
                    Ok(ch) => ch,
                    Err(e) => return self.malformed(format!("malformed CHALLENGE: {e}")),
                };
                let hello = Hello {
                    window: self.windows.recv,
                    tag,
                    nonce,
                    proof: token.map(|t| handshake::proof(t, binding.as_ref(), &ch.nonce, tag)),
                }
                .encode();
                self.push(&handshake::preamble());
                self.queue(&Frame::Hello(&hello));
                // What this client understands beyond version 2, in the same write as the
                // HELLO: a server of this version reads it before any visitor can come, an
                // older one answers it as the PING it is.
                self.queue_small(kind::PING, 0, &caps::CAPS_PING);
                self.phase = Phase::AwaitAccept {
                    client_nonce: nonce,
                    server_nonce: ch.nonce,
                };
                (ch.auth_required && token.is_none()).then_some(Event::TokenRequired)
            }
            (
                &Phase::AwaitAccept {
                    client_nonce,
                    server_nonce,
                },
                Frame::Accept(p),
            ) => {
                let a = match Accept::decode(p) {
                    Ok(a) => a,
                    Err(e) => return self.malformed(format!("malformed ACCEPT: {e}")),
                };
                // With a token the server must prove it too: an impostor would otherwise get
                // a client that connects wherever it is told, inside the private network.
                if let Some(t) = token {
                    let proven = a.proof.is_some_and(|proof| {
                        let binding = binding.as_ref();
                        handshake::verify_server(
                            t,
                            binding,
                            &client_nonce,
                            &server_nonce,
                            tag,
                            &proof,
                        )
                    });
                    if !proven {
                        self.fail(CloseReason::ServerAuthFailed);
                        return None;
                    }
                }
                let heartbeat = Duration::from_millis(u64::from(a.heartbeat_ms));
                self.establish(now, heartbeat, a.window, a.max_streams as usize);
                self.tag = tag.to_string();
                Some(Event::Established)
            }
            (_, Frame::Refuse(reason)) => {
                self.fail(CloseReason::Refused(reason.to_string()));
                None
            }
            (_, other) => self.violation(format!(
                "protocol violation during the handshake: unexpected {other:?}"
            )),
        }
    }

    fn establish(&mut self, now: Instant, heartbeat: Duration, peer_window: u32, max: usize) {
        self.phase = Phase::Established;
        self.attached = true;
        self.windows.send = peer_window;
        self.streams.set_max(max);
        self.last_rx = now;
        self.ping_interval = heartbeat;
        self.next_ping = now + heartbeat;
    }
}
