//! Frames: a fixed 8-byte header and a bounded payload.
//!
//! ```text
//! 0        1        2                 4                                 8
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! |  type  | flags  |  payload length |            stream id              |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//! All integers are big-endian. `flags` must be zero, except that a DATA frame may set
//! [`FLAG_LONG`]: its length field is then zero and a 4-byte length follows the header
//! (a 12-byte header), for payloads up to [`MAX_LONG_PAYLOAD`]; and an OPEN frame may set
//! [`FLAG_PROXY`] (its payload then starts with the visitor's addresses, see `proxy`) or
//! [`FLAG_DGRAM`] (it opens a datagram stream), not both. Decoding checks the header before
//! looking at the payload, separates "need more bytes" from "malformed", and borrows
//! payloads from the caller's buffer (no copy, no allocation).

use std::fmt;

use super::proxy::ProxyAddrs;

/// Size of the frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Largest encoded frame with the short header.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// DATA flag: a 4-byte payload length follows the header.
pub const FLAG_LONG: u8 = 0x01;
/// OPEN flag: the payload starts with the visitor's addresses for a PROXY header. Sent
/// only to a client that announced it understands it ([`super::caps::CAP_PROXY`]).
pub const FLAG_PROXY: u8 = 0x01;
/// OPEN flag: the stream carries datagrams (a UDP mapping's flow): each DATA frame is one
/// datagram of 1 to [`MAX_DATAGRAM`] bytes, and there is no FIN and no CREDIT. Sent only to
/// a client that announced it understands it ([`super::caps::CAP_DGRAM`]).
pub const FLAG_DGRAM: u8 = 0x02;
/// Largest datagram a datagram stream carries: the most a UDP datagram over IPv4 can hold.
pub const MAX_DATAGRAM: usize = 65_507;
/// Size of a long DATA frame's header.
pub const LONG_HEADER_LEN: usize = HEADER_LEN + 4;
/// Largest payload of a long DATA frame (a stream's whole window).
pub const MAX_LONG_PAYLOAD: usize = 1024 * 1024;
/// Longest `host:port` an OPEN frame may name.
pub const MAX_TARGET_LEN: usize = 300;
/// Longest reason text in OPEN_FAIL, RESET, REFUSE and GOAWAY.
pub const MAX_REASON_LEN: usize = 1024;

/// Frame type codes.
pub mod kind {
    pub const CHALLENGE: u8 = 0x01;
    pub const HELLO: u8 = 0x02;
    pub const ACCEPT: u8 = 0x03;
    pub const REFUSE: u8 = 0x04;
    pub const OPEN: u8 = 0x10;
    pub const OPEN_OK: u8 = 0x11;
    pub const OPEN_FAIL: u8 = 0x12;
    pub const DATA: u8 = 0x13;
    pub const CREDIT: u8 = 0x14;
    pub const FIN: u8 = 0x15;
    pub const RESET: u8 = 0x16;
    pub const PING: u8 = 0x20;
    pub const PONG: u8 = 0x21;
    pub const GOAWAY: u8 = 0x22;
}

/// A decoded frame. Payload-carrying variants borrow from the decode buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Handshake payloads; their inner layout is `handshake`'s business.
    Challenge(&'a [u8]),
    Hello(&'a [u8]),
    Accept(&'a [u8]),
    Refuse(&'a str),
    /// Server asks the client to connect stream `id` to `target` (`host:port`), and with
    /// `proxy` to write that PROXY header to it first; with `dgram`, a datagram stream to a
    /// UDP target (never with `proxy`).
    Open {
        id: u32,
        target: &'a str,
        proxy: Option<ProxyAddrs>,
        dgram: bool,
    },
    OpenOk {
        id: u32,
    },
    OpenFail {
        id: u32,
        reason: &'a str,
    },
    Data {
        id: u32,
        payload: &'a [u8],
    },
    /// The receiver of stream `id` grants `bytes` more of send window.
    Credit {
        id: u32,
        bytes: u32,
    },
    /// The sender will send no more data on stream `id` (half-close).
    Fin {
        id: u32,
    },
    /// Stream `id` is aborted.
    Reset {
        id: u32,
        reason: &'a str,
    },
    Ping(u64),
    Pong(u64),
    GoAway(&'a str),
}

/// Why a byte sequence is not a valid frame. Any of these closes the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    UnknownType(u8),
    ReservedFlags(u8),
    TooLong(usize),
    /// A long DATA frame's length is zero, over the limit, or its short length is not zero.
    BadLongLength(usize),
    BadPayload {
        kind: u8,
        why: &'static str,
    },
    StreamIdZero(u8),
    UnexpectedStreamId(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            FrameError::ReservedFlags(b) => write!(f, "reserved flag bits set (0x{b:02x})"),
            FrameError::TooLong(n) => write!(f, "frame payload of {n} bytes exceeds {MAX_PAYLOAD}"),
            FrameError::BadLongLength(n) => write!(
                f,
                "long data frame of {n} bytes (must be 1 to {MAX_LONG_PAYLOAD}, short length 0)"
            ),
            FrameError::BadPayload { kind, why } => {
                write!(f, "malformed payload in frame type 0x{kind:02x}: {why}")
            }
            FrameError::StreamIdZero(t) => {
                write!(f, "frame type 0x{t:02x} needs a stream id, got 0")
            }
            FrameError::UnexpectedStreamId(t) => {
                write!(
                    f,
                    "frame type 0x{t:02x} is a tunnel frame but names a stream"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Write a frame header into `out[..HEADER_LEN]`.
#[inline]
pub fn put_header(out: &mut [u8], kind: u8, id: u32, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD);
    out[0] = kind;
    out[1] = 0;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[4..8].copy_from_slice(&id.to_be_bytes());
}

/// Write a long DATA header (`LONG_HEADER_LEN` bytes) into `out`.
#[inline]
pub fn put_long_header(out: &mut [u8], id: u32, len: usize) {
    debug_assert!((1..=MAX_LONG_PAYLOAD).contains(&len));
    out[0] = kind::DATA;
    out[1] = FLAG_LONG;
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..8].copy_from_slice(&id.to_be_bytes());
    out[8..12].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Where a frame's payload starts and how long it is, from its header.
struct Header {
    kind: u8,
    flags: u8,
    id: u32,
    header_len: usize,
    len: usize,
}

/// Parse and check the header at the front of `buf`; `Ok(None)` when it is incomplete.
fn header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let t = buf[0];
    let short = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    check_header(t, id, short)?;
    match buf[1] {
        flags @ (0 | FLAG_PROXY | FLAG_DGRAM) if flags == 0 || t == kind::OPEN => {
            Ok(Some(Header {
                kind: t,
                flags,
                id,
                header_len: HEADER_LEN,
                len: short,
            }))
        }
        FLAG_LONG if t == kind::DATA => {
            if buf.len() < LONG_HEADER_LEN {
                return Ok(None);
            }
            let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            if short != 0 || len == 0 || len > MAX_LONG_PAYLOAD {
                return Err(FrameError::BadLongLength(len));
            }
            Ok(Some(Header {
                kind: t,
                flags: FLAG_LONG,
                id,
                header_len: LONG_HEADER_LEN,
                len,
            }))
        }
        flags => Err(FrameError::ReservedFlags(flags)),
    }
}

/// A DATA frame at the front of `buf` whose header is complete and payload is not:
/// `(stream id, header length, payload length)`. Lets a receiver pass on a long payload
/// as it arrives instead of buffering it whole.
pub fn partial_data(buf: &[u8]) -> Option<(u32, usize, usize)> {
    match header(buf) {
        Ok(Some(h)) if h.kind == kind::DATA && buf.len() < h.header_len + h.len => {
            Some((h.id, h.header_len, h.len))
        }
        _ => None,
    }
}

/// Append one frame to `out`.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let (kind, id, a, b): (u8, u32, &[u8], &[u8]) = match *frame {
        Frame::Challenge(p) => (kind::CHALLENGE, 0, p, &[]),
        Frame::Hello(p) => (kind::HELLO, 0, p, &[]),
        Frame::Accept(p) => (kind::ACCEPT, 0, p, &[]),
        Frame::Refuse(r) => (kind::REFUSE, 0, clip(r), &[]),
        Frame::Open {
            id,
            target,
            proxy: Some(p),
            dgram,
        } => {
            debug_assert!(!dgram, "a datagram stream carries no PROXY header");
            let start = out.len();
            out.resize(start + HEADER_LEN, 0);
            p.encode(out);
            out.extend_from_slice(target.as_bytes());
            let len = out.len() - start - HEADER_LEN;
            put_header(&mut out[start..], kind::OPEN, id, len);
            out[start + 1] = FLAG_PROXY;
            return;
        }
        Frame::Open {
            id,
            target,
            proxy: None,
            dgram,
        } => {
            let start = out.len();
            out.resize(start + HEADER_LEN, 0);
            put_header(&mut out[start..], kind::OPEN, id, target.len());
            if dgram {
                out[start + 1] = FLAG_DGRAM;
            }
            out.extend_from_slice(target.as_bytes());
            return;
        }
        Frame::OpenOk { id } => (kind::OPEN_OK, id, &[], &[]),
        Frame::OpenFail { id, reason } => (kind::OPEN_FAIL, id, clip(reason), &[]),
        Frame::Data { id, payload } => (kind::DATA, id, payload, &[]),
        Frame::Credit { id, bytes } => {
            let start = out.len();
            out.resize(start + HEADER_LEN + 4, 0);
            put_header(&mut out[start..], kind::CREDIT, id, 4);
            out[start + HEADER_LEN..].copy_from_slice(&bytes.to_be_bytes());
            return;
        }
        Frame::Fin { id } => (kind::FIN, id, &[], &[]),
        Frame::Reset { id, reason } => (kind::RESET, id, clip(reason), &[]),
        Frame::Ping(v) | Frame::Pong(v) => {
            let k = if matches!(frame, Frame::Ping(_)) {
                kind::PING
            } else {
                kind::PONG
            };
            let start = out.len();
            out.resize(start + HEADER_LEN + 8, 0);
            put_header(&mut out[start..], k, 0, 8);
            out[start + HEADER_LEN..].copy_from_slice(&v.to_be_bytes());
            return;
        }
        Frame::GoAway(r) => (kind::GOAWAY, 0, clip(r), &[]),
    };
    let len = a.len() + b.len();
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    put_header(&mut out[start..], kind, id, len);
    out.extend_from_slice(a);
    out.extend_from_slice(b);
}

/// The bytes of a reason text, cut at a character boundary to fit `MAX_REASON_LEN`.
fn clip(s: &str) -> &[u8] {
    if s.len() <= MAX_REASON_LEN {
        return s.as_bytes();
    }
    let mut end = MAX_REASON_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Decode one frame from the front of `buf`.
///
/// `Ok(None)`: `buf` holds only part of a frame; read more. `Ok(Some((frame, n)))`: the
/// frame used the first `n` bytes. `Err`: the bytes are not a valid frame; the stream of
/// frames cannot be trusted past this point.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(Header {
        kind: t,
        flags,
        id,
        header_len,
        len,
    }) = header(buf)?
    else {
        return Ok(None);
    };
    let total = header_len + len;
    if buf.len() < total {
        return Ok(None);
    }
    let p = &buf[header_len..total];
    let bad = |why| FrameError::BadPayload { kind: t, why };
    let text = |p: &'_ [u8], max: usize| -> Result<(), FrameError> {
        if p.len() > max {
            Err(bad("text too long"))
        } else {
            Ok(())
        }
    };
    let frame = match t {
        kind::CHALLENGE => Frame::Challenge(p),
        kind::HELLO => Frame::Hello(p),
        kind::ACCEPT => Frame::Accept(p),
        kind::REFUSE => {
            text(p, MAX_REASON_LEN)?;
            Frame::Refuse(utf8(p).ok_or(bad("reason is not UTF-8"))?)
        }
        kind::OPEN => {
            let (proxy, p) = if flags == FLAG_PROXY {
                let (addrs, n) = ProxyAddrs::decode(p).map_err(bad)?;
                (Some(addrs), &p[n..])
            } else {
                (None, p)
            };
            if p.is_empty() {
                return Err(bad("empty target"));
            }
            text(p, MAX_TARGET_LEN)?;
            Frame::Open {
                id,
                target: utf8(p).ok_or(bad("target is not UTF-8"))?,
                proxy,
                dgram: flags == FLAG_DGRAM,
            }
        }
        kind::OPEN_OK | kind::FIN => {
            if !p.is_empty() {
                return Err(bad("unexpected payload"));
            }
            if t == kind::FIN {
                Frame::Fin { id }
            } else {
                Frame::OpenOk { id }
            }
        }
        kind::OPEN_FAIL | kind::RESET => {
            text(p, MAX_REASON_LEN)?;
            let reason = utf8(p).ok_or(bad("reason is not UTF-8"))?;
            if t == kind::RESET {
                Frame::Reset { id, reason }
            } else {
                Frame::OpenFail { id, reason }
            }
        }
        kind::DATA => {
            if p.is_empty() {
                return Err(bad("empty data frame"));
            }
            Frame::Data { id, payload: p }
        }
        kind::CREDIT => {
            let bytes =
                u32::from_be_bytes(p.try_into().map_err(|_| bad("credit must be 4 bytes"))?);
            if bytes == 0 {
                return Err(bad("zero credit"));
            }
            Frame::Credit { id, bytes }
        }
        kind::PING | kind::PONG => {
            let v = u64::from_be_bytes(p.try_into().map_err(|_| bad("ping must be 8 bytes"))?);
            if t == kind::PING {
                Frame::Ping(v)
            } else {
                Frame::Pong(v)
            }
        }
        kind::GOAWAY => {
            text(p, MAX_REASON_LEN)?;
            Frame::GoAway(utf8(p).ok_or(bad("reason is not UTF-8"))?)
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Some((frame, total)))
}

/// Header checks, done before any payload byte is looked at.
fn check_header(t: u8, id: u32, len: usize) -> Result<(), FrameError> {
    let stream_frame = matches!(
        t,
        kind::OPEN
            | kind::OPEN_OK
            | kind::OPEN_FAIL
            | kind::DATA
            | kind::CREDIT
            | kind::FIN
            | kind::RESET
    );
    let tunnel_frame = matches!(
        t,
        kind::CHALLENGE
            | kind::HELLO
            | kind::ACCEPT
            | kind::REFUSE
            | kind::PING
            | kind::PONG
            | kind::GOAWAY
    );
    if !stream_frame && !tunnel_frame {
        return Err(FrameError::UnknownType(t));
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    if stream_frame && id == 0 {
        return Err(FrameError::StreamIdZero(t));
    }
    if tunnel_frame && id != 0 {
        return Err(FrameError::UnexpectedStreamId(t));
    }
    Ok(())
}

fn utf8(p: &[u8]) -> Option<&str> {
    std::str::from_utf8(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Challenge(&[1, 2, 3]),
            Frame::Hello(b"hello"),
            Frame::Accept(&[0, 0, 1, 0]),
            Frame::Refuse("authentication failed"),
            Frame::Open {
                id: 7,
                target: "[::1]:22",
                proxy: None,
                dgram: false,
            },
            Frame::Open {
                id: 10,
                target: "10.0.0.5:53",
                proxy: None,
                dgram: true,
            },
            Frame::Open {
                id: 8,
                target: "db.internal:5432",
                proxy: Some(ProxyAddrs::new(
                    super::super::proxy::ProxyVersion::V1,
                    "127.0.0.2:40000".parse().unwrap(),
                    "127.0.0.1:1234".parse().unwrap(),
                )),
                dgram: false,
            },
            Frame::Open {
                id: 9,
                target: "10.0.0.5:80",
                proxy: Some(ProxyAddrs::new(
                    super::super::proxy::ProxyVersion::V2,
                    "[2001:db8::7]:1".parse().unwrap(),
                    "[2001:db8::1]:443".parse().unwrap(),
                )),
                dgram: false,
            },
            Frame::OpenOk { id: 7 },
            Frame::OpenFail {
                id: 7,
                reason: "connection refused",
            },
            Frame::Data {
                id: 0xFFFF_FFFF,
                payload: b"xyz",
            },
            Frame::Credit {
                id: 3,
                bytes: 65536,
            },
            Frame::Fin { id: 3 },
            Frame::Reset { id: 3, reason: "" },
            Frame::Ping(42),
            Frame::Pong(u64::MAX),
            Frame::GoAway("shutting down"),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all_frames() {
            let mut buf = Vec::new();
            encode(&f, &mut buf);
            let (g, n) = decode(&buf).expect("valid").expect("complete");
            assert_eq!(n, buf.len());
            assert_eq!(f, g);
        }
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        for f in all_frames() {
            let mut buf = Vec::new();
            encode(&f, &mut buf);
            for cut in 0..buf.len() {
                assert_eq!(decode(&buf[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn frames_back_to_back_decode_in_order() {
        let mut buf = Vec::new();
        for f in all_frames() {
            encode(&f, &mut buf);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = decode(&buf[at..]).unwrap() {
            got.push(f);
            at += n;
        }
        assert_eq!(at, buf.len());
        assert_eq!(got, all_frames());
    }

    #[test]
    fn max_payload_data_frame() {
        let payload = vec![0xAB; MAX_PAYLOAD];
        let mut buf = Vec::new();
        encode(
            &Frame::Data {
                id: 1,
                payload: &payload,
            },
            &mut buf,
        );
        assert_eq!(buf.len(), MAX_FRAME);
        let (f, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(n, MAX_FRAME);
        assert!(matches!(f, Frame::Data { id: 1, payload: p } if p.len() == MAX_PAYLOAD));
    }

    #[test]
    fn header_errors_are_found_before_the_payload_arrives() {
        // Only a header: a malformed one is an error now, a valid one needs more.
        let hdr = |t: u8, flags: u8, len: u16, id: u32| {
            let mut h = vec![t, flags];
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&id.to_be_bytes());
            h
        };
        assert_eq!(
            decode(&hdr(0x99, 0, 0, 1)),
            Err(FrameError::UnknownType(0x99))
        );
        assert_eq!(
            decode(&hdr(kind::DATA, 2, 10, 1)),
            Err(FrameError::ReservedFlags(2))
        );
        assert_eq!(
            decode(&hdr(kind::CREDIT, FLAG_LONG, 4, 1)),
            Err(FrameError::ReservedFlags(FLAG_LONG)),
            "only DATA may be long"
        );
        assert_eq!(
            decode(&hdr(kind::DATA, 0, 10, 0)),
            Err(FrameError::StreamIdZero(kind::DATA))
        );
        assert_eq!(
            decode(&hdr(kind::PING, 0, 8, 5)),
            Err(FrameError::UnexpectedStreamId(kind::PING))
        );
        assert_eq!(decode(&hdr(kind::DATA, 0, 10, 1)), Ok(None));
        assert_eq!(
            decode(&hdr(kind::FIN, FLAG_PROXY, 0, 1)),
            Err(FrameError::ReservedFlags(FLAG_PROXY)),
            "only OPEN may carry addresses"
        );
        assert_eq!(
            decode(&hdr(kind::OPEN, FLAG_PROXY | FLAG_DGRAM, 10, 1)),
            Err(FrameError::ReservedFlags(FLAG_PROXY | FLAG_DGRAM)),
            "a datagram stream carries no PROXY header"
        );
        assert_eq!(
            decode(&hdr(kind::OPEN, 4, 10, 1)),
            Err(FrameError::ReservedFlags(4))
        );
        assert_eq!(
            decode(&hdr(kind::DATA, FLAG_DGRAM, 10, 1)),
            Err(FrameError::ReservedFlags(FLAG_DGRAM)),
            "only OPEN says a stream carries datagrams"
        );
        assert_eq!(decode(&hdr(kind::OPEN, FLAG_PROXY, 10, 1)), Ok(None));
        assert_eq!(decode(&hdr(kind::OPEN, FLAG_DGRAM, 10, 1)), Ok(None));
    }

    fn long_data(id: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0; LONG_HEADER_LEN];
        put_long_header(&mut b, id, len);
        b.extend((0..len).map(|i| (i % 251) as u8));
        b
    }

    #[test]
    fn long_data_frames_round_trip_and_stream() {
        let len = 200_000;
        let b = long_data(7, len);
        let (f, n) = decode(&b).unwrap().unwrap();
        assert_eq!(n, LONG_HEADER_LEN + len);
        assert!(matches!(f, Frame::Data { id: 7, payload } if payload == &b[LONG_HEADER_LEN..]));
        assert_eq!(partial_data(&b), None, "a complete frame is not partial");
        for cut in [0, 1, HEADER_LEN, LONG_HEADER_LEN - 1] {
            assert_eq!(decode(&b[..cut]), Ok(None));
            assert_eq!(partial_data(&b[..cut]), None, "header incomplete at {cut}");
        }
        for cut in [LONG_HEADER_LEN, LONG_HEADER_LEN + 1, n - 1] {
            assert_eq!(decode(&b[..cut]), Ok(None));
            assert_eq!(partial_data(&b[..cut]), Some((7, LONG_HEADER_LEN, len)));
        }
        // A short DATA frame in progress is reported too; other frames never are.
        let mut short = vec![0; HEADER_LEN];
        put_header(&mut short, kind::DATA, 3, 100);
        assert_eq!(partial_data(&short), Some((3, HEADER_LEN, 100)));
        put_header(&mut short, kind::RESET, 3, 100);
        assert_eq!(partial_data(&short), None);
        // The largest long frame decodes; the bounds are checked from the header alone.
        let max = long_data(1, MAX_LONG_PAYLOAD);
        assert!(decode(&max).unwrap().is_some());
        let mut bad = max[..LONG_HEADER_LEN].to_vec();
        bad[8..12].copy_from_slice(&(MAX_LONG_PAYLOAD as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&bad),
            Err(FrameError::BadLongLength(MAX_LONG_PAYLOAD + 1))
        );
        bad[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode(&bad), Err(FrameError::BadLongLength(0)));
        bad[8..12].copy_from_slice(&5u32.to_be_bytes());
        bad[2..4].copy_from_slice(&5u16.to_be_bytes());
        assert_eq!(decode(&bad), Err(FrameError::BadLongLength(5)));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let frame = |t: u8, id: u32, p: &[u8]| {
            let mut b = vec![0; HEADER_LEN];
            put_header(&mut b, t, id, p.len());
            b.extend_from_slice(p);
            b
        };
        let cases: Vec<Vec<u8>> = vec![
            frame(kind::DATA, 1, &[]),
            frame(kind::CREDIT, 1, &[0, 0, 1]),
            frame(kind::CREDIT, 1, &[0, 0, 0, 0]),
            frame(kind::PING, 0, &[1, 2, 3]),
            frame(kind::FIN, 1, &[1]),
            frame(kind::OPEN_OK, 1, &[1]),
            frame(kind::OPEN, 1, &[]),
            frame(kind::OPEN, 1, &[0xff, 0xfe]),
            frame(kind::OPEN, 1, &vec![b'a'; MAX_TARGET_LEN + 1]),
            frame(kind::RESET, 1, &[0xc3]),
            frame(kind::GOAWAY, 0, &vec![b'x'; MAX_REASON_LEN + 1]),
        ];
        // OPEN with addresses: truncated, unknown version or family, port 0, no target.
        let v4 = [1, 4, 127, 0, 0, 2, 0x9c, 0x40, 4, 127, 0, 0, 1, 0x04, 0xd2];
        let mut cases = cases;
        for p in [
            &v4[..0],
            &v4[..7],
            &v4[..14],
            &v4[..],
            &[&[3], &v4[1..], b"a:1"].concat(),
            &[&[1, 5], &v4[2..], b"a:1"].concat(),
            &[&v4[..6], &[0, 0], &v4[8..], b"a:1"].concat(),
        ] {
            let mut b = frame(kind::OPEN, 1, p);
            b[1] = FLAG_PROXY;
            cases.push(b);
        }
        for c in cases {
            assert!(
                matches!(decode(&c), Err(FrameError::BadPayload { .. })),
                "{c:?} -> {:?}",
                decode(&c)
            );
        }
    }

    #[test]
    fn long_reasons_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(MAX_REASON_LEN);
        let mut buf = Vec::new();
        encode(&Frame::GoAway(&long), &mut buf);
        let (f, _) = decode(&buf).unwrap().unwrap();
        let Frame::GoAway(r) = f else { panic!("{f:?}") };
        assert!(r.len() <= MAX_REASON_LEN && long.starts_with(r));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every result is Ok(None), a frame within bounds, or an error.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            if let Ok(Some((_, n))) = decode(&bytes) {
                assert!(n <= bytes.len());
            }
        }
    }
}
