//! Two sessions wired back to back with a fake clock: no sockets, no threads, no sleeps.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::protocol::frame::{self, HEADER_LEN, LONG_HEADER_LEN, MAX_DATAGRAM};
use crate::protocol::handshake::{Accept, BINDING_LEN};

const HEARTBEAT: Duration = Duration::from_secs(10);

fn server_params(token: Option<&[u8]>, window: u32) -> Arc<ServerParams> {
    Arc::new(ServerParams {
        token: token.map(<[u8]>::to_vec),
        require_tls: false,
        max_streams: 8,
        heartbeat: HEARTBEAT,
        window,
    })
}

fn client_params(token: Option<&[u8]>, window: u32) -> Arc<ClientParams> {
    Arc::new(ClientParams {
        token: token.map(<[u8]>::to_vec),
        tag: "lab".into(),
        window,
    })
}

/// One side's application: a model of what the reactor does with the engine's output.
struct App {
    s: Session<u32>,
    /// Bytes read from the wire and not yet decoded.
    inbox: Vec<u8>,
    /// Per stream id: bytes handed out, in order.
    got: HashMap<u32, Vec<u8>>,
    /// Per datagram stream id: the datagrams handed out, in order.
    datagrams: HashMap<u32, Vec<Vec<u8>>>,
    /// Per stream id: bytes handed out but not yet taken by the (slow) destination.
    held: HashMap<u32, usize>,
    /// Deliver every byte at once (a fast destination) rather than holding it.
    deliver_at_once: bool,
    /// Client: connect targets at once on OPEN (else the stream waits in `Connecting`).
    connect_at_once: bool,
    /// Payloads queued with `queue_payload`, to put on the wire when due.
    external: Vec<u8>,
    events: Vec<String>,
    fins: HashSet<u32>,
    resets: HashMap<u32, String>,
    /// Streams whose destination's write half was shut (FIN received and drained).
    shut: HashSet<u32>,
    /// Streams that ended cleanly and were reaped.
    reaped: HashSet<u32>,
}

impl App {
    fn new(s: Session<u32>) -> App {
        App {
            s,
            inbox: Vec::new(),
            got: HashMap::new(),
            datagrams: HashMap::new(),
            held: HashMap::new(),
            deliver_at_once: true,
            connect_at_once: true,
            external: Vec::new(),
            events: Vec::new(),
            fins: HashSet::new(),
            resets: HashMap::new(),
            shut: HashSet::new(),
            reaped: HashSet::new(),
        }
    }

    /// Everything the session wants to send, as wire bytes.
    fn drain_output(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        loop {
            match self.s.poll_transmit() {
                Transmit::Bytes(b) => {
                    let n = b.len();
                    wire.extend_from_slice(b);
                    self.s.transmitted(n);
                }
                Transmit::Payload(n) => {
                    assert!(self.external.len() >= n, "the payload was queued");
                    wire.extend(self.external.drain(..n));
                    assert!(self.s.payload_transmitted(n));
                }
                Transmit::Idle => return wire,
            }
        }
    }

    /// Decode the inbox and act on every input, as the reactor would.
    fn process(&mut self, now: Instant) {
        let inbox = std::mem::take(&mut self.inbox);
        let mut at = 0;
        loop {
            let (used, input) = self.s.handle_rx(&inbox[at..], now);
            at += used;
            match input {
                Input::NeedMore => break,
                Input::Data { handle, id, parts } => {
                    assert_eq!(handle, id, "handles are stream ids in these tests");
                    if self.s.is_dgram(id) {
                        let got = self.datagrams.entry(id).or_default();
                        got.extend(parts.as_slice().iter().map(|p| p.to_vec()));
                        continue;
                    }
                    let n = parts.total();
                    let got = self.got.entry(id).or_default();
                    for p in parts.as_slice() {
                        got.extend_from_slice(p);
                    }
                    self.take(id, n);
                }
                Input::Event(e) => self.on_event(e),
            }
        }
        self.inbox = inbox[at..].to_vec();
    }

    /// `n` bytes of stream `id` arrive at the destination model.
    fn take(&mut self, id: u32, n: usize) {
        let connected = self.s.stage(id) == Some(Stage::Open) || self.s.stage(id).is_none();
        if self.deliver_at_once && connected {
            self.s.delivered(id, n);
            self.after_delivery(id);
        } else {
            *self.held.entry(id).or_default() += n;
        }
    }

    /// The slow destination takes up to `n` held bytes of stream `id`.
    fn release(&mut self, id: u32, n: usize) {
        let held = self.held.entry(id).or_default();
        let n = n.min(*held);
        *held -= n;
        self.s.delivered(id, n);
        self.after_delivery(id);
    }

    /// Our side of stream `id` ends (the source socket reached EOF).
    fn finish(&mut self, id: u32) {
        self.s.finish(id);
        self.after_delivery(id);
    }

    fn after_delivery(&mut self, id: u32) {
        if self.s.recv_complete(id) {
            self.shut.insert(id);
        }
        if self.s.reap(id) {
            self.reaped.insert(id);
        }
    }

    fn on_event(&mut self, e: Event<'_, u32>) {
        self.events.push(format!("{e:?}"));
        match e {
            Event::Open {
                id, target, dgram, ..
            } => {
                assert!(!target.is_empty());
                if self.s.accept_open(id, id, dgram).is_err() {
                    self.s.refuse_open(id, "stream limit reached");
                } else if self.connect_at_once {
                    self.s.stream_connected(id);
                }
            }
            Event::OpenOk { handle, id } | Event::Credit { handle, id } => assert_eq!(handle, id),
            Event::Fin { id, .. } => {
                self.fins.insert(id);
                self.after_delivery(id);
            }
            Event::Reset { id, reason, .. } => {
                self.resets.insert(id, reason.to_string());
            }
            Event::OpenFail { id, reason, .. } => {
                self.resets.insert(id, format!("open failed: {reason}"));
            }
            Event::Established | Event::TokenRequired => {}
        }
    }

    /// Send as much of `data` on stream `id` as credit and room allow; returns the bytes sent.
    fn write(&mut self, id: u32, data: &[u8]) -> usize {
        let mut sent = 0;
        while sent < data.len() {
            let Some(mut room) = self.s.data_room(id, data.len() - sent) else {
                break;
            };
            let n = room.len();
            room.buf().copy_from_slice(&data[sent..sent + n]);
            room.commit(n);
            sent += n;
        }
        sent
    }

    fn closed(&self) -> Option<String> {
        self.s.close_reason().map(|r| r.to_string())
    }

    fn label(&self) -> Option<&'static str> {
        self.s.close_reason().map(|r| r.label())
    }
}

/// A server and a client session joined by two in-memory wires.
struct Pair {
    now: Instant,
    server: App,
    client: App,
}

impl Pair {
    fn new(sp: Arc<ServerParams>, cp: Arc<ClientParams>) -> Pair {
        let now = Instant::now();
        Pair {
            now,
            server: App::new(Session::server(sp, [1; NONCE_LEN], now)),
            client: App::new(Session::client(cp, [2; NONCE_LEN], now)),
        }
    }

    /// A pair through its handshake, with windows of `window` bytes.
    fn established(window: u32) -> Pair {
        let mut p = Pair::new(server_params(None, window), client_params(None, window));
        p.drive();
        assert!(p.server.s.is_established() && p.client.s.is_established());
        p
    }

    /// Move bytes both ways once; true when any moved.
    fn step(&mut self) -> bool {
        let to_client = self.server.drain_output();
        let to_server = self.client.drain_output();
        let moved = !to_client.is_empty() || !to_server.is_empty();
        self.client.inbox.extend_from_slice(&to_client);
        self.server.inbox.extend_from_slice(&to_server);
        self.client.process(self.now);
        self.server.process(self.now);
        moved
    }

    /// Exchange until both sides are quiet.
    fn drive(&mut self) {
        for _ in 0..1000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair did not settle");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.s.handle_timeout(self.now);
        self.client.s.handle_timeout(self.now);
    }

    /// Server: open a stream whose handle is its id (ids start at 1 and are handed out in
    /// order in a fresh session).
    fn open(&mut self) -> u32 {
        let expected = self.server.s.stream_count() as u32 + 1;
        let id = self
            .server
            .s
            .open_stream(expected, "127.0.0.1:22", None)
            .unwrap();
        assert_eq!(id, expected);
        id
    }
}

fn frame_bytes(f: Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode(&f, &mut v);
    v
}

fn pattern(seed: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32 ^ seed.wrapping_mul(31)) as u8)
        .collect()
}

#[test]
fn handshake_without_token() {
    let p = Pair::established(STREAM_WINDOW);
    assert_eq!(p.server.s.tag(), "lab");
    assert_eq!(p.client.s.tag(), "lab");
    assert_eq!(p.client.s.max_streams(), 8);
    assert!(p.server.events.contains(&"Established".to_string()));
    assert!(p.client.events.contains(&"Established".to_string()));
}

#[test]
fn handshake_with_the_right_token_proves_it_both_ways() {
    let mut p = Pair::new(
        server_params(Some(b"secret"), STREAM_WINDOW),
        client_params(Some(b"secret"), STREAM_WINDOW),
    );
    p.drive();
    assert!(p.server.s.is_established() && p.client.s.is_established());
    assert!(p.server.s.was_established());
}

#[test]
fn a_wrong_token_is_refused_and_the_refusal_is_flushed_first() {
    let mut p = Pair::new(
        server_params(Some(b"secret"), STREAM_WINDOW),
        client_params(Some(b"guess"), STREAM_WINDOW),
    );
    p.step(); // the challenge reaches the client
    p.step(); // its hello reaches the server
    assert!(!p.server.s.wants_input(), "the server refuses on the hello");
    assert_eq!(p.server.closed(), None, "the REFUSE is still queued");
    p.step();
    assert_eq!(p.server.label(), Some("auth_failed"));
    assert_eq!(
        p.server.closed().as_deref(),
        Some("authentication failed: wrong token")
    );
    assert_eq!(
        p.client.closed().as_deref(),
        Some("refused: authentication failed: wrong token")
    );
    assert!(p.client.s.close_reason().unwrap().is_refusal());
    assert!(!p.server.s.was_established());
}

#[test]
fn a_client_without_the_required_token_hears_why() {
    let mut p = Pair::new(
        server_params(Some(b"secret"), STREAM_WINDOW),
        client_params(None, STREAM_WINDOW),
    );
    p.drive();
    assert!(p.client.events.contains(&"TokenRequired".to_string()));
    assert_eq!(
        p.client.closed().as_deref(),
        Some("refused: authentication failed: the server requires a token")
    );
}

#[test]
fn an_impostor_server_that_cannot_prove_the_token_is_not_served() {
    // A server without the token accepts anyone, but cannot prove it.
    let mut p = Pair::new(
        server_params(None, STREAM_WINDOW),
        client_params(Some(b"secret"), STREAM_WINDOW),
    );
    p.drive();
    assert_eq!(p.client.label(), Some("server_auth_failed"));
    assert!(!p.client.s.is_established());

    // One that forges a proof fares no better.
    let now = Instant::now();
    let mut c: Session<u32> = Session::client(client_params(Some(b"secret"), 1024), [2; 32], now);
    let mut wire = handshake::preamble().to_vec();
    let challenge = Challenge {
        auth_required: true,
        nonce: [9; NONCE_LEN],
    }
    .encode();
    frame::encode(&Frame::Challenge(&challenge), &mut wire);
    let accept = Accept {
        window: 1024,
        max_streams: 4,
        heartbeat_ms: 1000,
        proof: Some([7; 32]),
    }
    .encode();
    frame::encode(&Frame::Accept(&accept), &mut wire);
    feed(&mut c, &wire, now);
    assert_eq!(c.close_reason(), Some(&CloseReason::ServerAuthFailed));
}

fn tls_server_params(token: Option<&[u8]>) -> Arc<ServerParams> {
    Arc::new(ServerParams {
        token: token.map(<[u8]>::to_vec),
        require_tls: true,
        max_streams: 8,
        heartbeat: HEARTBEAT,
        window: STREAM_WINDOW,
    })
}

/// A pair with a token, each side on a TLS session with the binding given, driven through
/// its handshake.
fn bound_pair(server_binding: u8, client_binding: u8) -> Pair {
    let mut p = Pair::new(
        tls_server_params(Some(b"secret")),
        client_params(Some(b"secret"), STREAM_WINDOW),
    );
    p.server.s.bind_channel([server_binding; BINDING_LEN]);
    p.client.s.bind_channel([client_binding; BINDING_LEN]);
    p.drive();
    p
}

#[test]
fn under_one_tls_session_both_bound_proofs_verify() {
    let p = bound_pair(5, 5);
    assert!(p.server.s.is_established() && p.client.s.is_established());
}

#[test]
fn a_man_in_the_middle_with_two_tls_sessions_is_refused() {
    // The relay in the middle passes every byte; only the bindings differ.
    let p = bound_pair(5, 6);
    assert_eq!(p.server.label(), Some("auth_failed"));
    assert!(
        p.server.closed().unwrap().contains("man in the middle"),
        "{:?}",
        p.server.closed()
    );
    assert!(p.client.s.close_reason().unwrap().is_refusal());
    assert!(!p.client.s.was_established());
}

#[test]
fn a_server_proof_made_on_another_tls_session_is_refused() {
    // The best a relay could forward: the real server's proof, made on the server's TLS
    // session with the relay (binding 5). The client is on its own session (binding 6).
    let accept_with = |binding: [u8; BINDING_LEN]| {
        let now = Instant::now();
        let mut c = Session::<u32>::client(client_params(Some(b"secret"), 1024), [2; 32], now);
        c.bind_channel([6; BINDING_LEN]);
        let mut wire = handshake::preamble().to_vec();
        let challenge = Challenge {
            auth_required: true,
            nonce: [9; NONCE_LEN],
        }
        .encode();
        frame::encode(&Frame::Challenge(&challenge), &mut wire);
        let proof = handshake::server_proof(b"secret", Some(&binding), &[2; 32], &[9; 32], "lab");
        let accept = Accept {
            window: 1024,
            max_streams: 4,
            heartbeat_ms: 1000,
            proof: Some(proof),
        }
        .encode();
        frame::encode(&Frame::Accept(&accept), &mut wire);
        feed(&mut c, &wire, now);
        c
    };
    let c = accept_with([5; BINDING_LEN]);
    assert_eq!(c.close_reason(), Some(&CloseReason::ServerAuthFailed));
    let c = accept_with([6; BINDING_LEN]);
    assert!(
        c.is_established(),
        "the same proof on the client's own session verifies"
    );
}

#[test]
fn a_plain_client_of_a_tls_server_is_told_tls_is_required() {
    let mut p = Pair::new(tls_server_params(None), client_params(None, STREAM_WINDOW));
    p.drive();
    assert_eq!(p.server.label(), Some("tls_required"));
    let client = p.client.closed().unwrap();
    assert!(client.contains("the server requires TLS"), "{client}");
    assert!(p.client.s.close_reason().unwrap().is_refusal());
}

#[test]
fn a_tls_hello_to_a_plain_server_is_named() {
    let now = Instant::now();
    let mut s: Session<u32> = Session::server(server_params(None, 1024), [1; 32], now);
    feed(&mut s, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], now);
    assert_eq!(s.close_reason(), Some(&CloseReason::PeerSpeaksTls));
}

/// Decode all of `wire`, ignoring the inputs.
fn feed(s: &mut Session<u32>, wire: &[u8], now: Instant) {
    let mut at = 0;
    for _ in 0..10_000 {
        let (used, input) = s.handle_rx(&wire[at..], now);
        at += used;
        if matches!(input, Input::NeedMore) {
            return;
        }
    }
    panic!("decoding did not stop");
}

#[test]
fn a_version_mismatch_is_answered_with_a_refusal() {
    let now = Instant::now();
    let mut c: Session<u32> = Session::client(client_params(None, 1024), [2; 32], now);
    feed(&mut c, b"TCPFWD\x00\x01", now);
    assert!(!c.wants_input());
    let Transmit::Bytes(out) = c.poll_transmit() else {
        panic!("a refusal is queued")
    };
    let (f, _) = frame::decode(out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Refuse("unsupported protocol version 1 (this side speaks 2)")
    );
    let n = out.len();
    c.transmitted(n);
    assert_eq!(c.close_reason(), Some(&CloseReason::Version { theirs: 1 }));

    // Never flushed: the linger deadline closes it.
    let mut s: Session<u32> = Session::server(server_params(None, 1024), [1; 32], now);
    feed(&mut s, b"TCPFWD\x00\x03", now);
    assert_eq!(s.close_reason(), None);
    s.handle_timeout(now + LINGER - Duration::from_millis(1));
    assert_eq!(s.close_reason(), None);
    s.handle_timeout(now + LINGER);
    assert_eq!(
        s.close_reason().map(|r| r.label()),
        Some("version_mismatch")
    );
}

#[test]
fn not_a_tcp_forward_peer() {
    let now = Instant::now();
    let mut s: Session<u32> = Session::server(server_params(None, 1024), [1; 32], now);
    feed(&mut s, b"GET / HTTP/1.1\r\n", now);
    assert_eq!(s.close_reason(), Some(&CloseReason::NotTcpForward));
}

#[test]
fn the_handshake_has_a_deadline() {
    let now = Instant::now();
    let mut s: Session<u32> = Session::server(server_params(None, 1024), [1; 32], now);
    assert_eq!(s.poll_timeout(), Some(now + HANDSHAKE_TIMEOUT));
    s.handle_timeout(now + HANDSHAKE_TIMEOUT - Duration::from_nanos(1));
    assert_eq!(s.close_reason(), None);
    s.handle_timeout(now + HANDSHAKE_TIMEOUT);
    assert_eq!(s.close_reason(), Some(&CloseReason::HandshakeTimeout));
}

#[test]
fn frames_out_of_order_or_malformed_close_the_tunnel() {
    // Each case: bytes the client sends to an established server, and the reason.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            vec![0x7f, 0, 0, 0, 0, 0, 0, 0],
            "malformed frame: unknown frame type 0x7f",
        ),
        (
            frame_bytes(Frame::Data {
                id: 1,
                payload: b"x",
            }),
            "stream 1: data before OPEN_OK",
        ),
        (
            frame_bytes(Frame::Fin { id: 1 }),
            "stream 1: FIN before OPEN_OK",
        ),
        (
            frame_bytes(Frame::Open {
                id: 9,
                target: "a:1",
                proxy: None,
                dgram: false,
            }),
            "client sent OPEN",
        ),
        (
            frame_bytes(Frame::Hello(b"again")),
            "handshake frame on an established tunnel",
        ),
        (
            [
                frame_bytes(Frame::OpenOk { id: 1 }),
                frame_bytes(Frame::OpenOk { id: 1 }),
            ]
            .concat(),
            "stream 1: OPEN_OK twice",
        ),
        (
            [
                frame_bytes(Frame::OpenOk { id: 1 }),
                frame_bytes(Frame::Credit { id: 1, bytes: 1 }),
            ]
            .concat(),
            "stream 1: credit beyond the announced window",
        ),
        (
            [
                frame_bytes(Frame::OpenOk { id: 1 }),
                frame_bytes(Frame::Data {
                    id: 1,
                    payload: &[0; 1025],
                }),
            ]
            .concat(),
            "stream 1: data beyond the stream's window",
        ),
        (
            [
                frame_bytes(Frame::OpenOk { id: 1 }),
                frame_bytes(Frame::Fin { id: 1 }),
                frame_bytes(Frame::Data {
                    id: 1,
                    payload: b"late",
                }),
            ]
            .concat(),
            "stream 1: data after FIN",
        ),
        (
            [
                frame_bytes(Frame::OpenOk { id: 1 }),
                frame_bytes(Frame::OpenFail { id: 1, reason: "" }),
            ]
            .concat(),
            "stream 1: OPEN_FAIL after open",
        ),
    ];
    for (bytes, want) in cases {
        let mut p = Pair::established(1024);
        p.client.connect_at_once = false;
        p.open();
        p.drive();
        let mut server = App::new(std::mem::replace(
            &mut p.server.s,
            Session::server(server_params(None, 1), [0; 32], p.now),
        ));
        server.inbox = bytes;
        server.process(p.now);
        assert_eq!(server.closed().as_deref(), Some(want));
        assert!(
            !server.s.wants_input(),
            "a closed session reads nothing more"
        );
    }

    // Server frames the client must not get.
    for (bytes, want) in [
        (frame_bytes(Frame::OpenOk { id: 5 }), "server sent OPEN_OK"),
        (
            frame_bytes(Frame::OpenFail { id: 5, reason: "" }),
            "server sent OPEN_FAIL",
        ),
        (
            [
                frame_bytes(Frame::Open {
                    id: 5,
                    target: "a:1",
                    proxy: None,
                    dgram: false,
                }),
                frame_bytes(Frame::Open {
                    id: 5,
                    target: "a:1",
                    proxy: None,
                    dgram: false,
                }),
            ]
            .concat(),
            "protocol violation: stream 5 opened twice",
        ),
    ] {
        let mut p = Pair::established(1024);
        p.client.inbox = bytes;
        p.client.process(p.now);
        assert_eq!(p.client.closed().as_deref(), Some(want));
    }

    // Before the handshake: a server expects a hello, a client a challenge.
    let now = Instant::now();
    let mut s: Session<u32> = Session::server(server_params(None, 1024), [1; 32], now);
    let wire = [
        handshake::preamble().to_vec(),
        frame_bytes(Frame::Data {
            id: 1,
            payload: b"x",
        }),
    ]
    .concat();
    feed(&mut s, &wire, now);
    assert_eq!(
        s.close_reason().map(|r| r.to_string()).as_deref(),
        Some("protocol violation: expected HELLO")
    );
    let mut c: Session<u32> = Session::client(client_params(None, 1024), [2; 32], now);
    let wire = [handshake::preamble().to_vec(), frame_bytes(Frame::Ping(1))].concat();
    feed(&mut c, &wire, now);
    assert_eq!(
        c.close_reason().map(|r| r.label()),
        Some("protocol_violation")
    );
}

#[test]
fn a_stream_stops_at_its_window_and_resumes_on_credit() {
    let window = 4096;
    let mut p = Pair::established(window);
    let id = p.open();
    p.client.deliver_at_once = false;
    p.drive();
    let data = pattern(1, 3 * window as usize);
    let sent = p.server.write(id, &data);
    assert_eq!(sent, window as usize, "one window, no more");
    p.drive();
    assert_eq!(p.server.write(id, &data[sent..]), 0, "no credit yet");
    // The destination takes less than a quarter window: no credit returned yet.
    p.client.release(id, window as usize / 4 - 1);
    p.drive();
    assert_eq!(p.server.s.send_credit(id), 0);
    p.client.release(id, 1);
    p.drive();
    assert_eq!(p.server.s.send_credit(id), window as usize / 4);
    let more = p.server.write(id, &data[sent..]);
    assert_eq!(more, window as usize / 4);
    p.drive();
    p.client.deliver_at_once = true;
    let held = p.client.held[&id];
    p.client.release(id, held);
    p.drive();
    let mut total = sent + more;
    for _ in 0..100 {
        if total == data.len() {
            break;
        }
        total += p.server.write(id, &data[total..]);
        p.drive();
    }
    assert_eq!(p.client.got[&id], data, "every byte once, in order");
}

#[test]
fn half_close_in_every_order() {
    // (server finishes first, client finishes first, both before any exchange)
    for order in 0..3 {
        let mut p = Pair::established(1024);
        let id = p.open();
        p.drive();
        assert_eq!(p.server.write(id, b"request"), 7);
        match order {
            0 => {
                p.server.finish(id);
                p.drive();
                assert!(p.client.fins.contains(&id) && p.client.shut.contains(&id));
                assert_eq!(p.client.write(id, b"reply after EOF"), 15);
                p.client.finish(id);
            }
            1 => {
                p.client.write(id, b"early reply");
                p.client.finish(id);
                p.drive();
                assert!(p.server.fins.contains(&id));
                assert!(p.server.s.may_send(id), "our direction stays open");
                p.server.write(id, b" and more");
                p.server.finish(id);
            }
            _ => {
                p.server.finish(id);
                p.client.finish(id);
            }
        }
        p.drive();
        assert!(p.server.reaped.contains(&id), "order {order}: server ended");
        assert!(p.client.reaped.contains(&id), "order {order}: client ended");
        assert_eq!(p.server.s.stream_count(), 0);
        assert_eq!(p.client.s.stream_count(), 0);
    }
}

#[test]
fn a_stream_with_undelivered_bytes_is_not_over_at_fin() {
    let mut p = Pair::established(1024);
    let id = p.open();
    p.drive();
    p.client.deliver_at_once = false;
    p.server.write(id, b"bytes");
    p.server.finish(id);
    p.client.finish(id);
    p.drive();
    assert!(p.client.fins.contains(&id));
    assert!(!p.client.s.recv_complete(id), "5 bytes still wait");
    assert!(!p.client.reaped.contains(&id));
    p.client.release(id, 5);
    assert!(p.client.shut.contains(&id) && p.client.reaped.contains(&id));
}

#[test]
fn resets_both_ways() {
    let mut p = Pair::established(1024);
    let a = p.open();
    let b = p.open();
    p.drive();
    p.server.s.reset(a, "visitor went away");
    p.client.s.reset(b, "write failed: broken pipe");
    p.drive();
    assert_eq!(p.client.resets[&a], "visitor went away");
    assert_eq!(p.server.resets[&b], "write failed: broken pipe");
    assert_eq!(p.server.s.stream_count(), 0);
    assert_eq!(p.client.s.stream_count(), 0);
    // Late frames for a reset stream are dropped, not violations.
    p.server.write(a, b"late");
    p.client.inbox = {
        let mut v = Vec::new();
        frame::encode(
            &Frame::Data {
                id: a,
                payload: b"late",
            },
            &mut v,
        );
        frame::encode(&Frame::Credit { id: a, bytes: 9 }, &mut v);
        v
    };
    p.client.process(p.now);
    assert!(p.client.s.is_established());
}

impl Pair {
    /// Server: open a datagram stream whose handle is its id.
    fn open_dgram(&mut self) -> u32 {
        let expected = self.server.s.stream_count() as u32 + 1;
        let id = self
            .server
            .s
            .open_dgram_stream(expected, "127.0.0.1:53")
            .unwrap();
        assert_eq!(id, expected);
        id
    }
}

#[test]
fn datagrams_keep_their_boundaries_and_follow_the_open_at_once() {
    let mut p = Pair::established(1024);
    p.client.connect_at_once = false;
    let id = p.open_dgram();
    assert!(p.server.s.is_dgram(id));
    // The visitor's first datagrams leave with the OPEN; a window of 1 KiB does not apply.
    let sent = [vec![1u8; 1], vec![2; 3000], vec![3; MAX_DATAGRAM]];
    for d in &sent {
        assert_eq!(p.server.s.send_datagram(id, d), Ok(()));
    }
    p.drive();
    assert_eq!(p.client.s.stage(id), Some(Stage::Connecting));
    assert_eq!(p.client.datagrams[&id], sent, "handed out whole, in order");
    // The client sends nothing before its OPEN_OK.
    assert_eq!(
        p.client.s.send_datagram(id, b"early"),
        Err(DgramRefused::NotOpen)
    );
    p.client.s.stream_connected(id);
    p.client.s.send_datagram(id, b"reply").unwrap();
    p.client.s.send_datagram(id, b"two").unwrap();
    p.drive();
    assert_eq!(p.server.s.stage(id), Some(Stage::Open));
    assert_eq!(
        p.server.datagrams[&id],
        [b"reply".to_vec(), b"two".to_vec()]
    );
    // No FIN and no credit: a datagram stream ends by RESET only.
    p.server.s.finish(id);
    p.server.s.delivered(id, 5);
    assert!(p.server.drain_output().is_empty());
    p.server.s.reset(id, "UDP_TIMEOUT");
    p.drive();
    assert_eq!(p.client.resets[&id], "UDP_TIMEOUT");
    assert_eq!(p.client.s.stream_count(), 0);
    assert_eq!(
        p.server.s.send_datagram(id, b"late"),
        Err(DgramRefused::NotOpen)
    );
    assert_eq!(
        p.server.s.send_datagram(9, b"x"),
        Err(DgramRefused::NotOpen),
        "no such stream"
    );
}

#[test]
fn datagrams_of_a_bad_size_are_refused() {
    let mut p = Pair::established(1024);
    let id = p.open_dgram();
    assert_eq!(
        p.server.s.send_datagram(id, b""),
        Err(DgramRefused::BadSize)
    );
    let big = vec![0; MAX_DATAGRAM + 1];
    assert_eq!(
        p.server.s.send_datagram(id, &big),
        Err(DgramRefused::BadSize)
    );
    // A plain stream carries no datagrams.
    let plain = p.open();
    assert_eq!(
        p.server.s.send_datagram(plain, b"x"),
        Err(DgramRefused::NotOpen)
    );
}

#[test]
fn a_busy_tunnel_refuses_datagrams_but_not_stream_data() {
    let mut p = Pair::established(STREAM_WINDOW);
    let flow = p.open_dgram();
    let stream = p.open();
    p.drive();
    let d = vec![7u8; 1200];
    let mut queued = 0;
    while p.server.s.send_datagram(flow, &d).is_ok() {
        queued += 1;
        assert!(queued < 10_000, "the queue is bounded");
    }
    assert_eq!(
        p.server.s.send_datagram(flow, &d),
        Err(DgramRefused::TunnelFull)
    );
    assert!(p.server.s.queued() < DGRAM_TX_LIMIT + d.len() + HEADER_LEN);
    assert_eq!(queued, DGRAM_TX_LIMIT.div_ceil(d.len() + HEADER_LEN));
    // A stream's data still has room behind them, and control frames always do.
    assert!(p.server.s.tx_has_room());
    assert_eq!(p.server.write(stream, b"interactive"), 11);
    p.drive();
    assert_eq!(p.client.datagrams[&flow].len(), queued);
    assert_eq!(p.client.got[&stream], b"interactive");
    assert_eq!(
        p.server.s.send_datagram(flow, &d),
        Ok(()),
        "drained: room again"
    );
}

#[test]
fn datagram_streams_need_the_capability_and_keep_their_rules() {
    // A client that announced only PROXY headers (an older one) gets no datagram stream.
    let mut p = Pair::new(server_params(None, 1024), client_params(None, 1024));
    p.step();
    let mut hello = p.client.drain_output();
    let at = hello
        .windows(8)
        .position(|w| w == crate::protocol::caps::CAPS_PING)
        .expect("the capability PING follows the HELLO");
    hello[at + 7] = 0x01;
    p.server.inbox = hello;
    p.server.process(p.now);
    p.drive();
    assert!(p.server.s.is_established());
    assert_eq!(
        p.server.s.open_dgram_stream(1, "127.0.0.1:53"),
        Err(OpenError::Unsupported)
    );
    assert!(!p.server.s.can_open(crate::protocol::caps::CAP_DGRAM));
    assert!(p.server.s.can_open(crate::protocol::caps::CAP_PROXY));

    // FIN, CREDIT or an oversized datagram on a datagram stream close the tunnel.
    let mut long = vec![0u8; LONG_HEADER_LEN];
    frame::put_long_header(&mut long, 1, MAX_DATAGRAM + 1);
    long.resize(LONG_HEADER_LEN + MAX_DATAGRAM + 1, 0);
    for (wire, why) in [
        (
            frame_bytes(Frame::Fin { id: 1 }),
            "stream 1: FIN on a datagram stream",
        ),
        (
            frame_bytes(Frame::Credit { id: 1, bytes: 10 }),
            "stream 1: CREDIT on a datagram stream",
        ),
        (long, "stream 1: a datagram longer than 65507 bytes"),
    ] {
        let mut p = Pair::established(1024);
        let id = p.open_dgram();
        p.drive();
        p.server.inbox = wire.clone();
        p.server.process(p.now);
        assert_eq!(p.server.closed().as_deref(), Some(why), "at the server");
        p.client.inbox = wire;
        p.client.process(p.now);
        assert_eq!(p.client.closed().as_deref(), Some(why), "at the client");
        assert_eq!(id, 1);
    }
}

#[test]
fn early_data_waits_for_the_connect_and_the_reply_for_open_ok() {
    let mut p = Pair::established(1024);
    p.client.connect_at_once = false;
    let id = p.open();
    // The visitor speaks first: its bytes leave with the OPEN.
    assert_eq!(p.server.write(id, b"GET / HTTP/1.0\r\n\r\n"), 18);
    p.server.finish(id);
    p.drive();
    assert_eq!(p.client.s.stage(id), Some(Stage::Connecting));
    assert_eq!(p.client.held[&id], 18, "kept for the target");
    assert!(p.client.fins.contains(&id));
    assert_eq!(p.server.s.stage(id), Some(Stage::Opening));
    p.client.s.stream_connected(id);
    p.client.deliver_at_once = true;
    p.client.release(id, 18);
    assert!(p.client.shut.contains(&id), "FIN follows the early data");
    p.drive();
    assert_eq!(p.server.s.stage(id), Some(Stage::Open));
    p.client.write(id, b"HTTP/1.0 200 OK\r\n\r\n");
    p.client.finish(id);
    p.drive();
    assert_eq!(p.client.got[&id], b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(p.server.got[&id], b"HTTP/1.0 200 OK\r\n\r\n");
    assert!(p.server.reaped.contains(&id) && p.client.reaped.contains(&id));
}

#[test]
fn a_refused_open_ends_the_stream_on_both_sides() {
    let mut p = Pair::established(1024);
    p.client.connect_at_once = false;
    let id = p.open();
    p.drive();
    p.client.s.refuse_open(id, "connection refused");
    p.drive();
    assert_eq!(p.server.resets[&id], "open failed: connection refused");
    assert_eq!(p.server.s.stream_count(), 0);
    assert_eq!(p.client.s.stream_count(), 0);
}

#[test]
fn the_stream_limit_holds_on_both_sides() {
    let mut p = Pair::established(1024);
    for _ in 0..8 {
        p.open();
    }
    assert!(!p.server.s.can_open(0));
    assert_eq!(
        p.server.s.open_stream(99, "a:1", None),
        Err(OpenError::StreamLimit)
    );
    p.drive();
    assert_eq!(p.client.s.stream_count(), 8);
    // A server that ignores the limit it announced is refused per stream.
    let mut wire = Vec::new();
    frame::encode(
        &Frame::Open {
            id: 77,
            target: "a:1",
            proxy: None,
            dgram: false,
        },
        &mut wire,
    );
    p.client.inbox = wire;
    p.client.process(p.now);
    assert!(p.client.s.is_established());
    let out = p.client.drain_output();
    let (f, _) = frame::decode(&out).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::OpenFail {
            id: 77,
            reason: "stream limit reached"
        }
    );
}

#[test]
fn goaway_ends_the_tunnel_with_the_reason() {
    let mut p = Pair::established(1024);
    let id = p.open();
    p.drive();
    p.server.s.goaway("shutting down");
    p.drive();
    assert_eq!(p.client.label(), Some("goaway"));
    assert_eq!(
        p.client.closed().as_deref(),
        Some("peer is going away: shutting down")
    );
    assert_eq!(
        p.client.s.streams(),
        vec![(id, id)],
        "the caller resets these"
    );
}

#[test]
fn heartbeat_pings_and_declares_the_peer_dead_after_three_silent_intervals() {
    let mut p = Pair::established(1024);
    // Both ends ping each interval and the pongs keep them alive.
    for _ in 0..5 {
        p.advance(HEARTBEAT);
        p.drive();
    }
    assert!(p.server.s.is_established() && p.client.s.is_established());
    // The client goes silent: nothing more reaches the server.
    let silent_from = p.now;
    assert_eq!(
        p.server.s.poll_timeout(),
        Some(silent_from + HEARTBEAT),
        "the next ping"
    );
    for _ in 0..2 {
        p.advance(HEARTBEAT);
        p.server.drain_output();
    }
    p.advance(HEARTBEAT - Duration::from_nanos(1));
    assert_eq!(p.server.closed(), None, "not yet three intervals");
    assert_eq!(p.server.s.poll_timeout(), Some(silent_from + 3 * HEARTBEAT));
    p.advance(Duration::from_nanos(1));
    assert_eq!(
        p.server.s.close_reason(),
        Some(&CloseReason::DeadPeer {
            silence: 3 * HEARTBEAT
        })
    );
    assert_eq!(p.server.label(), Some("dead_peer"));
}

#[test]
fn a_pong_echoes_the_ping() {
    let mut p = Pair::established(1024);
    let mut wire = Vec::new();
    frame::encode(&Frame::Ping(0xDEAD_BEEF), &mut wire);
    p.client.inbox = wire;
    p.client.process(p.now);
    let out = p.client.drain_output();
    assert_eq!(
        frame::decode(&out).unwrap().unwrap().0,
        Frame::Pong(0xDEAD_BEEF)
    );
}

#[test]
fn a_peer_that_never_reads_is_cut_off_at_the_cap() {
    let mut p = Pair::established(1024);
    let mut pings = Vec::new();
    for i in 0..(TX_CAP / 16 + 2) {
        frame::encode(&Frame::Ping(i as u64), &mut pings);
    }
    p.client.inbox = pings;
    p.client.process(p.now);
    assert_eq!(p.client.label(), Some("peer_not_reading"));
    assert!(p.client.s.queued() <= TX_CAP);
}

#[test]
fn long_payloads_moved_by_the_caller_on_both_ends() {
    let mut p = Pair::established(STREAM_WINDOW);
    let id = p.open();
    p.drive();
    // Sending side: a header in the queue, the payload from the caller's "pipe".
    let payload = pattern(7, 300_000);
    assert!(p.server.s.can_queue_payload());
    assert!(p.server.s.queue_payload(id, payload.len()));
    p.server.external.extend_from_slice(&payload);
    assert!(!p.server.s.can_queue_payload(), "one at a time");
    assert_eq!(p.server.write(id, b"after"), 5, "queued behind the payload");
    let mut wire = p.server.drain_output();
    assert_eq!(wire.len(), LONG_HEADER_LEN + payload.len() + HEADER_LEN + 5);
    // Receiving side: the header and a little arrive; the rest is "spliced" by the caller.
    let head = LONG_HEADER_LEN + 1000;
    p.client.inbox = wire.drain(..head).collect();
    p.client.process(p.now);
    assert_eq!(p.client.got[&id].len(), 1000);
    let (handle, sid, remaining) = p.client.s.payload_in_progress().expect("in progress");
    assert_eq!((handle, sid, remaining), (id, id, payload.len() - 1000));
    let spliced: Vec<u8> = wire.drain(..remaining).collect();
    p.client.s.payload_spliced(remaining, p.now);
    p.client
        .got
        .get_mut(&id)
        .unwrap()
        .extend_from_slice(&spliced);
    p.client.s.delivered(id, remaining);
    assert!(p.client.s.payload_in_progress().is_none());
    p.client.inbox = wire;
    p.client.process(p.now);
    assert_eq!(p.client.got[&id], [payload.as_slice(), b"after"].concat());
    p.drive();
    assert!(p.server.s.send_credit(id) >= STREAM_WINDOW as usize - 5);
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Move a random prefix of `wire` into the receiver: any split point is possible.
fn deliver_some(rng: &mut Rng, wire: &mut Vec<u8>, to: &mut App, now: Instant) {
    if wire.is_empty() {
        return;
    }
    let n = 1 + rng.below(wire.len());
    to.inbox.extend(wire.drain(..n));
    to.process(now);
}

#[test]
fn randomized_interleavings_keep_every_invariant() {
    let mut resets = 0;
    for seed in 1..=200u64 {
        resets += run_random(seed);
    }
    assert!(resets > 20, "the runs include resets ({resets})");
}

/// One randomized run; returns how many streams were reset in it.
fn run_random(seed: u64) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let window = [64, 1000, 4096, 70_000][rng.below(4)] as u32;
    let mut p = Pair::established(window);
    let mut to_client: Vec<u8> = Vec::new();
    let mut to_server: Vec<u8> = Vec::new();
    // What each side means to send per stream, and how far it got.
    let mut plan: HashMap<u32, [(Vec<u8>, usize); 2]> = HashMap::new();
    let streams = 1 + rng.below(6);
    for _ in 0..streams {
        let id = p.open();
        let a = pattern(rng.next() as u32, rng.below(5 * window as usize));
        let b = pattern(rng.next() as u32, rng.below(5 * window as usize));
        plan.insert(id, [(a, 0), (b, 0)]);
    }
    p.server.deliver_at_once = rng.below(2) == 0;
    p.client.deliver_at_once = rng.below(2) == 0;
    let mut ids: Vec<u32> = plan.keys().copied().collect();
    ids.sort();
    let mut checked: [HashMap<u32, usize>; 2] = [HashMap::new(), HashMap::new()];
    let mut reset: HashSet<u32> = HashSet::new();
    for _step in 0..5_000 {
        let id = ids[rng.below(ids.len())];
        match rng.below(8) {
            // Either side sends a random amount of what is left; FIN when all went out.
            0 | 1 => {
                let side = rng.below(2);
                let app = if side == 0 {
                    &mut p.server
                } else {
                    &mut p.client
                };
                let (data, at) = &mut plan.get_mut(&id).unwrap()[side];
                if *at < data.len() {
                    let n = 1 + rng.below(data.len() - *at);
                    *at += app.write(id, &data[*at..*at + n]);
                } else if app.s.may_send(id) && app.s.stage(id).is_some() {
                    app.finish(id);
                }
            }
            // Bytes cross, cut anywhere.
            2 => {
                to_client.extend(p.server.drain_output());
                deliver_some(&mut rng, &mut to_client, &mut p.client, p.now);
            }
            3 => {
                to_server.extend(p.client.drain_output());
                deliver_some(&mut rng, &mut to_server, &mut p.server, p.now);
            }
            // Slow destinations take some of what they hold.
            4 => {
                let app = if rng.below(2) == 0 {
                    &mut p.server
                } else {
                    &mut p.client
                };
                let held = app.held.get(&id).copied().unwrap_or(0);
                if held > 0 && app.s.stage(id) != Some(Stage::Connecting) {
                    let n = 1 + rng.below(held);
                    app.release(id, n);
                }
            }
            // Time passes (pings), well within the heartbeat.
            5 => p.advance(Duration::from_millis(rng.below(500) as u64)),
            // Now and then a side aborts a stream.
            6 if rng.below(40) == 0 => {
                let app = if rng.below(2) == 0 {
                    &mut p.server
                } else {
                    &mut p.client
                };
                app.s.reset(id, "aborted");
                reset.insert(id);
            }
            _ => {}
        }
        // Invariants after every step (bytes checked once each, as they arrive).
        for (side, app) in [&p.server, &p.client].into_iter().enumerate() {
            assert_eq!(app.closed(), None, "seed {seed}: no violation, no close");
            for (&sid, got) in &app.got {
                let (data, _) = &plan[&sid][1 - side];
                let from = checked[side].entry(sid).or_insert(0);
                assert!(
                    got.len() <= data.len() && data[*from..got.len()] == got[*from..],
                    "seed {seed}: stream {sid} bytes in order, once"
                );
                *from = got.len();
            }
            for (&sid, &held) in &app.held {
                assert!(
                    held <= window as usize,
                    "seed {seed}: {sid} within its window"
                );
            }
        }
    }
    // Let everything finish: fast destinations, all data and FINs out, wires drained.
    p.server.deliver_at_once = true;
    p.client.deliver_at_once = true;
    for _ in 0..10_000 {
        for &id in &ids {
            for side in 0..2 {
                let app = if side == 0 {
                    &mut p.server
                } else {
                    &mut p.client
                };
                let held = app.held.get(&id).copied().unwrap_or(0);
                if held > 0 {
                    app.release(id, held);
                }
                let (data, at) = &mut plan.get_mut(&id).unwrap()[side];
                if *at < data.len() {
                    *at += app.write(id, &data[*at..]);
                } else if app.s.may_send(id) {
                    app.finish(id);
                }
            }
        }
        to_client.extend(p.server.drain_output());
        to_server.extend(p.client.drain_output());
        let moved = !to_client.is_empty() || !to_server.is_empty();
        deliver_some(&mut rng, &mut to_client, &mut p.client, p.now);
        deliver_some(&mut rng, &mut to_server, &mut p.server, p.now);
        if !moved && p.server.s.stream_count() == 0 && p.client.s.stream_count() == 0 {
            break;
        }
    }
    for &id in &ids {
        if reset.contains(&id) {
            // What arrived was checked in order as it came; the stream is gone both ways.
            assert!(
                p.server.s.stage(id).is_none() && p.client.s.stage(id).is_none(),
                "seed {seed}: reset stream {id} ended on both sides"
            );
            continue;
        }
        let [(a, _), (b, _)] = &plan[&id];
        assert_eq!(
            p.client.got.get(&id).map_or(&[][..], |v| v),
            a.as_slice(),
            "seed {seed}: stream {id} downstream whole"
        );
        assert_eq!(
            p.server.got.get(&id).map_or(&[][..], |v| v),
            b.as_slice(),
            "seed {seed}: stream {id} upstream whole"
        );
        assert!(
            p.server.reaped.contains(&id),
            "seed {seed}: {id} ended on the server"
        );
        assert!(
            p.client.reaped.contains(&id),
            "seed {seed}: {id} ended on the client"
        );
    }
    assert_eq!(p.server.closed(), None);
    assert_eq!(p.client.closed(), None);
    reset.len()
}

/// Random frames (well formed, in any order, for any stream) and random bytes, fed to both
/// roles in every phase: the engine never panics, and whatever it does not accept ends the
/// tunnel with a reason rather than being skipped.
#[test]
fn random_input_never_panics_either_role() {
    let mut rng = Rng(0x5EED_F00D);
    let texts = ["", "x", "127.0.0.1:22", "é"];
    for round in 0..2_000 {
        let mut p = Pair::established(1 + rng.below(4096) as u32);
        p.open();
        p.open();
        p.drive();
        let mut wire = Vec::new();
        for _ in 0..1 + rng.below(12) {
            let id = rng.below(4) as u32;
            let text = texts[rng.below(texts.len())];
            let payload = vec![0xA5; rng.below(3000)];
            let f = match rng.below(14) {
                0 => Frame::Challenge(&payload),
                1 => Frame::Hello(&payload),
                2 => Frame::Accept(&payload),
                3 => Frame::Refuse(text),
                4 => Frame::Open {
                    id,
                    target: text,
                    proxy: None,
                    dgram: false,
                },
                5 => Frame::OpenOk { id },
                6 => Frame::OpenFail { id, reason: text },
                7 | 8 => Frame::Data {
                    id,
                    payload: &payload,
                },
                9 => Frame::Credit {
                    id,
                    bytes: rng.next() as u32,
                },
                10 => Frame::Fin { id },
                11 => Frame::Reset { id, reason: text },
                12 => Frame::Ping(rng.next()),
                _ => Frame::Pong(rng.next()),
            };
            frame::encode(&f, &mut wire);
        }
        if rng.below(4) == 0 {
            // Garbage somewhere in the stream.
            let at = rng.below(wire.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.below(20)).map(|_| rng.next() as u8).collect();
            wire.splice(at..at, junk);
        }
        let app = if round % 2 == 0 {
            &mut p.server
        } else {
            &mut p.client
        };
        // Cut anywhere: the same bytes in two reads.
        let cut = rng.below(wire.len() + 1);
        app.inbox.extend_from_slice(&wire[..cut]);
        app.process(p.now);
        app.inbox.extend_from_slice(&wire[cut..]);
        app.process(p.now);
        app.drain_output();
        if app.closed().is_none() {
            assert!(app.s.wants_input(), "round {round}: open sessions read on");
        }
    }
    // Before and during the handshake too.
    for round in 0..2_000 {
        let now = Instant::now();
        let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        let mut wire = handshake::preamble().to_vec();
        if rng.below(3) == 0 {
            wire.clear();
        }
        wire.extend_from_slice(&bytes);
        let mut s: Session<u32> = if round % 2 == 0 {
            Session::server(server_params(Some(b"t"), 1024), [1; 32], now)
        } else {
            Session::client(client_params(Some(b"t"), 1024), [2; 32], now)
        };
        feed(&mut s, &wire, now);
        s.handle_timeout(now + Duration::from_secs(60));
        assert!(
            s.close_reason().is_some(),
            "round {round}: a handshake that never completes ends"
        );
    }
}
