//! Property tests of everything a peer controls: the frame decoder, the handshake
//! messages, and the engine fed random and mutated frame sequences, whole or in pieces,
//! before and after the handshake. Whatever arrives, nothing panics, and an engine that
//! stops taking input has said why (`close_reason`).
//!
//! The suite runs proptest's default number of cases per property; a long run sets
//! `PROPTEST_CASES` (see the README's "Fuzzing").

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::protocol::caps::{CAP_DGRAM, CAP_PROXY, CAPS_PING};
use crate::protocol::frame::{self, Frame, LONG_HEADER_LEN, MAX_LONG_PAYLOAD};
use crate::protocol::handshake::{self, Accept, Challenge, Hello};
use crate::protocol::proxy::{ProxyAddrs, ProxyVersion};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const TOKEN: &[u8] = b"fuzz-token";

fn server_params() -> Arc<ServerParams> {
    Arc::new(ServerParams {
        token: Some(TOKEN.to_vec()),
        require_tls: false,
        max_streams: 8,
        heartbeat: Duration::from_secs(10),
        window: 64 * 1024,
    })
}

fn client_params() -> Arc<ClientParams> {
    Arc::new(ClientParams {
        token: Some(TOKEN.to_vec()),
        tag: "fuzz".into(),
        window: 64 * 1024,
    })
}

/// One end, with what it received and not yet consumed.
struct End {
    s: Session<u32>,
    inbox: Vec<u8>,
}

impl End {
    /// Consume what the inbox holds, acting on each input as the reactor would; bounded.
    fn process(&mut self, now: Instant) {
        let inbox = std::mem::take(&mut self.inbox);
        let mut at = 0;
        for _ in 0..100_000 {
            let (used, input) = self.s.handle_rx(&inbox[at..], now);
            at += used;
            match input {
                Input::NeedMore => break,
                Input::Data { id, parts, .. } => {
                    let n = parts.total();
                    self.s.delivered(id, n);
                }
                Input::Event(Event::Open { id, dgram, .. }) => {
                    if self.s.accept_open(id, id, dgram).is_ok() {
                        self.s.stream_connected(id);
                    }
                }
                Input::Event(_) => {}
            }
        }
        self.inbox = inbox[at..].to_vec();
    }

    /// Everything the session wants to send; bounded.
    fn output(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        for _ in 0..100_000 {
            match self.s.poll_transmit() {
                Transmit::Bytes(b) => {
                    let n = b.len();
                    wire.extend_from_slice(b);
                    self.s.transmitted(n);
                }
                Transmit::Payload(_) => panic!("no payload was queued by the caller"),
                Transmit::Idle => break,
            }
        }
        wire
    }

    /// Feed `bytes` in the pieces `cuts` makes of them, timing out now and then.
    fn feed(&mut self, bytes: &[u8], cuts: &[usize], mut now: Instant) {
        let mut at: usize = 0;
        for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(cut).min(bytes.len());
            self.inbox.extend_from_slice(&bytes[at..end]);
            self.process(now);
            let _ = self.output();
            now += Duration::from_millis(300);
            self.s.handle_timeout(now);
            at = end;
            if at == bytes.len() {
                break;
            }
        }
    }

    /// Nothing panicked; an end that no longer takes input says why, and an end that does
    /// holds back at most one frame it has not seen whole (a long DATA frame of a stream it
    /// does not know is taken whole, so up to its maximum).
    fn check(&self) {
        if self.s.wants_input() {
            assert!(
                self.inbox.len() < MAX_LONG_PAYLOAD + LONG_HEADER_LEN,
                "{} bytes left unconsumed by a live session",
                self.inbox.len()
            );
        } else {
            assert!(
                self.s.close_reason().is_some(),
                "stopped reading without a reason"
            );
        }
    }
}

/// A server and a client, established, with streams open from the server: two plain, one
/// with a PROXY header, one of datagrams.
fn established(now: Instant) -> (End, End) {
    let mut server = End {
        s: Session::server(server_params(), [1; handshake::NONCE_LEN], now),
        inbox: Vec::new(),
    };
    let mut client = End {
        s: Session::client(client_params(), [2; handshake::NONCE_LEN], now),
        inbox: Vec::new(),
    };
    for round in 0..20 {
        if round == 2 {
            for h in 1..=2 {
                let _ = server.s.open_stream(h, "10.0.0.1:22", None);
            }
            // The client announced it can write PROXY headers and carry datagrams: streams
            // that need them open too.
            assert_eq!(
                server.s.peer_caps() & (CAP_PROXY | CAP_DGRAM),
                CAP_PROXY | CAP_DGRAM
            );
            let proxy = ProxyAddrs::new(
                ProxyVersion::V2,
                "[::ffff:10.1.1.1]:4000".parse().unwrap(),
                "[2001:db8::1]:80".parse().unwrap(),
            );
            let _ = server.s.open_stream(3, "10.0.0.1:80", Some(proxy));
            let _ = server.s.open_dgram_stream(4, "10.0.0.1:53");
        }
        let to_client = server.output();
        client.inbox.extend_from_slice(&to_client);
        client.process(now);
        let to_server = client.output();
        server.inbox.extend_from_slice(&to_server);
        server.process(now);
    }
    assert!(server.s.is_established() && client.s.is_established());
    (server, client)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.:]{0,24}".prop_map(String::from),
        vec(any::<char>(), 0..16).prop_map(|c| c.into_iter().collect()),
        Just("10.0.0.1:22".to_string()),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// A long payload: its length matters to the engine, not its bytes, and a strategy per byte
/// would make shrinking a failure cost gigabytes.
fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..max, any::<u8>()).prop_map(|(n, b)| vec![b; n])
}

fn stream_id() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..6, any::<u32>()]
}

/// A frame of any kind, with owned fields.
#[derive(Debug, Clone)]
enum Owned {
    Challenge(Vec<u8>),
    Hello(Vec<u8>),
    Accept(Vec<u8>),
    Refuse(String),
    /// OPEN, of a datagram stream when the flag says so.
    Open(u32, String, bool),
    /// OPEN with the visitor's addresses (flag PROXY).
    OpenProxy(u32, String, ProxyAddrs),
    /// An OPEN header with flag PROXY and a payload that may be anything.
    RawOpenProxy(u32, Vec<u8>),
    OpenOk(u32),
    OpenFail(u32, String),
    Data(u32, Vec<u8>),
    Credit(u32, u32),
    Fin(u32),
    Reset(u32, String),
    Ping(u64),
    Pong(u64),
    GoAway(String),
    /// A DATA frame with the long header, whose payload may go past the short limit.
    LongData(u32, Vec<u8>),
    /// Bytes that may be anything.
    Raw(Vec<u8>),
}

impl Owned {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Owned::LongData(id, p) => {
                let start = out.len();
                out.resize(start + LONG_HEADER_LEN, 0);
                frame::put_long_header(&mut out[start..], *id, p.len());
                out.extend_from_slice(p);
            }
            Owned::Raw(b) => out.extend_from_slice(b),
            Owned::RawOpenProxy(id, p) => {
                let start = out.len();
                out.resize(start + frame::HEADER_LEN, 0);
                frame::put_header(&mut out[start..], frame::kind::OPEN, *id, p.len());
                out[start + 1] = frame::FLAG_PROXY;
                out.extend_from_slice(p);
            }
            f => frame::encode(&f.frame(), out),
        }
    }

    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Challenge(b) => Frame::Challenge(b),
            Owned::Hello(b) => Frame::Hello(b),
            Owned::Accept(b) => Frame::Accept(b),
            Owned::Refuse(s) => Frame::Refuse(s),
            Owned::Open(id, t, dgram) => Frame::Open {
                id: *id,
                target: t,
                proxy: None,
                dgram: *dgram,
            },
            Owned::OpenProxy(id, t, p) => Frame::Open {
                id: *id,
                target: t,
                proxy: Some(*p),
                dgram: false,
            },
            Owned::OpenOk(id) => Frame::OpenOk { id: *id },
            Owned::OpenFail(id, r) => Frame::OpenFail { id: *id, reason: r },
            Owned::Data(id, p) => Frame::Data {
                id: *id,
                payload: p,
            },
            Owned::Credit(id, n) => Frame::Credit { id: *id, bytes: *n },
            Owned::Fin(id) => Frame::Fin { id: *id },
            Owned::Reset(id, r) => Frame::Reset { id: *id, reason: r },
            Owned::Ping(n) => Frame::Ping(*n),
            Owned::Pong(n) => Frame::Pong(*n),
            Owned::GoAway(r) => Frame::GoAway(r),
            Owned::LongData(id, p) => Frame::Data {
                id: *id,
                payload: p,
            },
            Owned::Raw(b) | Owned::RawOpenProxy(_, b) => Frame::Challenge(b),
        }
    }
}

/// Any address, IPv4-mapped ones included (they are sent as IPv4), on a port of 1 or more.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
    ];
    (ip, 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn proxy_addrs() -> impl Strategy<Value = ProxyAddrs> {
    (any::<bool>(), socket_addr(), socket_addr()).prop_map(|(v1, src, dst)| {
        let version = if v1 {
            ProxyVersion::V1
        } else {
            ProxyVersion::V2
        };
        ProxyAddrs::new(version, src, dst)
    })
}

/// A frame of any kind, as the encoder writes it.
fn framed() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (stream_id(), text(), proxy_addrs()).prop_map(|(i, t, p)| Owned::OpenProxy(i, t, p)),
        Just(Owned::Ping(u64::from_be_bytes(CAPS_PING))),
        bytes(80).prop_map(Owned::Challenge),
        bytes(120).prop_map(Owned::Hello),
        bytes(80).prop_map(Owned::Accept),
        text().prop_map(Owned::Refuse),
        (stream_id(), text(), any::<bool>()).prop_map(|(i, t, d)| Owned::Open(i, t, d)),
        stream_id().prop_map(Owned::OpenOk),
        (stream_id(), text()).prop_map(|(i, t)| Owned::OpenFail(i, t)),
        (stream_id(), prop_oneof![bytes(64), payload(3000)]).prop_map(|(i, p)| Owned::Data(i, p)),
        (stream_id(), any::<u32>()).prop_map(|(i, n)| Owned::Credit(i, n)),
        stream_id().prop_map(Owned::Fin),
        (stream_id(), text()).prop_map(|(i, t)| Owned::Reset(i, t)),
        any::<u64>().prop_map(Owned::Ping),
        any::<u64>().prop_map(Owned::Pong),
        text().prop_map(Owned::GoAway),
        (stream_id(), prop_oneof![bytes(100), payload(70_000)])
            .prop_map(|(i, p)| Owned::LongData(i, p)),
    ]
}

/// A frame, or bytes that may be anything.
fn any_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        15 => framed(),
        1 => bytes(40).prop_map(Owned::Raw),
        1 => (stream_id(), bytes(60)).prop_map(|(i, b)| Owned::RawOpenProxy(i, b)),
    ]
}

/// How to spoil an encoded sequence.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Cut(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        (any::<usize>(), bytes(12)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Cut),
    ]
}

fn encode_all(frames: &[Owned], mutations: &[Mutation]) -> Vec<u8> {
    let mut wire = Vec::new();
    for f in frames {
        f.encode(&mut wire);
    }
    for m in mutations {
        if wire.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(at, bits) => {
                let i = at % wire.len();
                wire[i] ^= bits;
            }
            Mutation::Insert(at, b) => {
                let i = at % (wire.len() + 1);
                wire.splice(i..i, b.iter().copied());
            }
            Mutation::Cut(at) => wire.truncate(at % (wire.len() + 1)),
        }
    }
    wire
}

proptest! {
    #[test]
    fn the_decoder_takes_any_bytes(buf in bytes(600)) {
        if let Ok(Some((f, n))) = frame::decode(&buf) {
            prop_assert!(n <= buf.len());
            let mut again = Vec::new();
            frame::encode(&f, &mut again);
            prop_assert_eq!(frame::decode(&again).ok().flatten().map(|(g, _)| g), Some(f));
        }
    }

    #[test]
    fn frames_decode_as_they_were_encoded(f in framed()) {
        let frame = f.frame();
        let mut wire = Vec::new();
        f.encode(&mut wire);
        match frame::decode(&wire) {
            Ok(Some((g, n))) => {
                prop_assert_eq!(n, wire.len());
                prop_assert_eq!(g, frame);
            }
            // The encoder writes what it is given; the decoder may refuse it (a stream id
            // of 0, or one where none belongs, an empty long payload): never panic.
            Ok(None) => prop_assert!(false, "a whole frame needs more bytes"),
            Err(_) => {}
        }
        for cut in 0..wire.len() {
            prop_assert!(!matches!(frame::decode(&wire[..cut]), Ok(Some(_))));
        }
    }

    #[test]
    fn open_frames_with_any_address_block_decode_or_fail(id in 1u32.., p in bytes(80)) {
        let mut wire = Vec::new();
        Owned::RawOpenProxy(id, p).encode(&mut wire);
        match frame::decode(&wire) {
            Ok(Some((f, n))) => {
                prop_assert_eq!(n, wire.len());
                let Frame::Open { proxy: Some(addrs), target, .. } = f else {
                    return Err(TestCaseError::fail(format!("{f:?}")));
                };
                // What is accepted is canonical and encodes back to the same bytes.
                prop_assert_eq!(ProxyAddrs::new(addrs.version, addrs.src, addrs.dst), addrs);
                prop_assert!(!target.is_empty());
                let mut again = Vec::new();
                frame::encode(&f, &mut again);
                prop_assert_eq!(again, wire);
                let mut header = Vec::new();
                addrs.header(&mut header);
                prop_assert!(header.len() <= crate::protocol::proxy::MAX_HEADER_LEN);
            }
            Ok(None) => prop_assert!(false, "a whole frame needs more bytes"),
            Err(e) => prop_assert!(matches!(e, frame::FrameError::BadPayload { .. }), "{e:?}"),
        }
    }

    #[test]
    fn datagrams_cross_whole_and_in_order_both_ways(
        sizes in vec(prop_oneof![1usize..64, 1usize..2000, 1usize..=frame::MAX_DATAGRAM], 1..40),
        cuts in vec(1usize..5000, 0..8),
    ) {
        let now = Instant::now();
        let (mut server, mut client) = established(now);
        let id = 4; // the datagram stream `established` opened (ids follow handles there)
        prop_assert!(server.s.is_dgram(id) && client.s.is_dgram(id));
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        // Each end sends them all, emptying its queue whenever it refuses one as busy, and
        // the other end must hand out exactly these datagrams, each whole, in order.
        for from_server in [true, false] {
            let (tx, rx) = if from_server {
                (&mut server, &mut client)
            } else {
                (&mut client, &mut server)
            };
            let mut wire = Vec::new();
            for d in &datagrams {
                match tx.s.send_datagram(id, d) {
                    Ok(()) => {}
                    Err(DgramRefused::TunnelFull) => {
                        wire.extend(tx.output());
                        prop_assert_eq!(tx.s.send_datagram(id, d), Ok(()));
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e:?} (server: {from_server})"))),
                }
            }
            wire.extend(tx.output());
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut at: usize = 0;
            for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = at.saturating_add(cut).min(wire.len());
                rx.inbox.extend_from_slice(&wire[at..end]);
                at = end;
                let inbox = std::mem::take(&mut rx.inbox);
                let mut used_total = 0;
                loop {
                    let (used, input) = rx.s.handle_rx(&inbox[used_total..], now);
                    used_total += used;
                    match input {
                        Input::NeedMore => break,
                        Input::Data { id: got_id, parts, .. } => {
                            prop_assert_eq!(got_id, id);
                            got.extend(parts.as_slice().iter().map(|p| p.to_vec()));
                        }
                        Input::Event(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                    }
                }
                rx.inbox = inbox[used_total..].to_vec();
                if at == wire.len() {
                    break;
                }
            }
            prop_assert!(rx.s.close_reason().is_none(), "{:?}", rx.s.close_reason());
            prop_assert_eq!(got.len(), datagrams.len());
            prop_assert!(got == datagrams, "datagrams changed on the way (server sent: {from_server})");
        }
    }

    #[test]
    fn handshake_messages_take_any_bytes(buf in bytes(200)) {
        if let Ok(c) = Challenge::decode(&buf) {
            prop_assert!(Challenge::decode(&c.encode()).is_ok());
        }
        if let Ok(h) = Hello::decode(&buf) {
            prop_assert!(Hello::decode(&h.encode()).is_ok());
        }
        if let Ok(a) = Accept::decode(&buf) {
            prop_assert!(Accept::decode(&a.encode()).is_ok());
        }
        let _ = handshake::check_preamble(&buf);
    }

    #[test]
    fn an_established_server_survives_any_client(
        frames in vec(any_frame(), 0..24),
        mutations in vec(mutation(), 0..4),
        cuts in vec(1usize..400, 0..8),
    ) {
        let now = Instant::now();
        let (mut server, _client) = established(now);
        server.feed(&encode_all(&frames, &mutations), &cuts, now);
        server.check();
    }

    #[test]
    fn an_established_client_survives_any_server(
        frames in vec(any_frame(), 0..24),
        mutations in vec(mutation(), 0..4),
        cuts in vec(1usize..400, 0..8),
    ) {
        let now = Instant::now();
        let (_server, mut client) = established(now);
        client.feed(&encode_all(&frames, &mutations), &cuts, now);
        client.check();
    }

    #[test]
    fn handshakes_survive_anything(
        preamble in prop_oneof![Just(true), Just(false)],
        noise in bytes(16),
        frames in vec(any_frame(), 0..12),
        mutations in vec(mutation(), 0..4),
        cuts in vec(1usize..200, 0..8),
        server_side in any::<bool>(),
    ) {
        let now = Instant::now();
        let mut wire = if preamble { handshake::preamble().to_vec() } else { noise };
        wire.extend(encode_all(&frames, &mutations));
        let s = if server_side {
            Session::server(server_params(), [3; handshake::NONCE_LEN], now)
        } else {
            Session::client(client_params(), [4; handshake::NONCE_LEN], now)
        };
        let mut end = End { s, inbox: Vec::new() };
        let _ = end.output();
        end.feed(&wire, &cuts, now);
        end.check();
        // Long after the deadline, a session still in its handshake has ended, with a reason.
        end.s.handle_timeout(now + Duration::from_secs(3600));
        if !end.s.is_established() {
            prop_assert!(end.s.close_reason().is_some());
        }
    }
}
