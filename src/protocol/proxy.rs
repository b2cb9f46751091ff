//! The visitor's addresses, for a PROXY protocol header (HAProxy's PROXY protocol, versions
//! 1 and 2) that the client writes to the target before any relayed byte.
//!
//! Three things live here, all pure:
//! - [`ProxyAddrs`] and its wire form in an OPEN frame with flag `PROXY`: the PROXY
//!   version, then the visitor's address (the source) and the public address it connected
//!   to (the destination), each as a family byte (4 or 6), 4 or 16 address bytes and a
//!   big-endian port;
//! - [`ProxyAddrs::header`]: the header itself, text (v1) or binary (v2).
//!
//! A server sends the flag only to a client that announced it understands it
//! (`caps::CAP_PROXY`).
//!
//! Addresses are canonical on the wire: an IPv4-mapped IPv6 address (a dual-stack socket's
//! view of an IPv4 peer) is sent as IPv4, and the decoder refuses one sent as IPv6. When
//! the two families differ (they cannot on one TCP connection, but the wire allows it), the
//! header says so without addresses: `PROXY UNKNOWN` (v1), family `UNSPEC` (v2).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest header [`ProxyAddrs::header`] may write: the PROXY specification's bound
/// for v1 (ours is 104 bytes, TCP6 with two full addresses; v2 takes at most 52).
pub const MAX_HEADER_LEN: usize = 107;
/// The 12-byte signature that starts a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Which PROXY protocol header a mapping asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Text: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// Binary, with the 12-byte signature.
    V2,
}

impl ProxyVersion {
    /// `v1` or `v2`, in any case.
    pub fn parse(s: &str) -> Option<ProxyVersion> {
        match s.to_ascii_lowercase().as_str() {
            "v1" => Some(ProxyVersion::V1),
            "v2" => Some(ProxyVersion::V2),
            _ => None,
        }
    }

    fn wire(self) -> u8 {
        match self {
            ProxyVersion::V1 => 1,
            ProxyVersion::V2 => 2,
        }
    }
}

/// `v1` or `v2`, as the mapping file and the admin API write it.
impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

/// A stream's PROXY header, as the server knows it and the OPEN frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub version: ProxyVersion,
    /// The visitor's address and port.
    pub src: SocketAddr,
    /// The public address and port the visitor connected to.
    pub dst: SocketAddr,
}

/// An address as it goes on the wire and in headers: IPv4-mapped IPv6 as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl ProxyAddrs {
    /// The header for a visitor from `src` that connected to `dst`, both made canonical.
    pub fn new(version: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> ProxyAddrs {
        ProxyAddrs {
            version,
            src: canonical(src),
            dst: canonical(dst),
        }
    }

    /// Bytes [`ProxyAddrs::encode`] appends.
    pub fn wire_len(&self) -> usize {
        1 + addr_len(self.src) + addr_len(self.dst)
    }

    /// Append the OPEN frame's address block: version, source, destination.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.version.wire());
        put_addr(out, self.src);
        put_addr(out, self.dst);
    }

    /// Read an address block from the front of `p`; returns it and the bytes it used.
    pub fn decode(p: &[u8]) -> Result<(ProxyAddrs, usize), &'static str> {
        let (&v, rest) = p.split_first().ok_or("no PROXY version")?;
        let version = match v {
            1 => ProxyVersion::V1,
            2 => ProxyVersion::V2,
            _ => return Err("unknown PROXY version"),
        };
        let (src, a) = take_addr(rest)?;
        let (dst, b) = take_addr(&rest[a..])?;
        Ok((ProxyAddrs { version, src, dst }, 1 + a + b))
    }

    /// Append the PROXY header to `out` (at most [`MAX_HEADER_LEN`] bytes).
    pub fn header(&self, out: &mut Vec<u8>) {
        match self.version {
            ProxyVersion::V1 => {
                use std::fmt::Write as _;
                let mut s = String::with_capacity(MAX_HEADER_LEN);
                let _ = match (self.src.ip(), self.dst.ip()) {
                    (IpAddr::V4(s4), IpAddr::V4(d4)) => write!(
                        s,
                        "PROXY TCP4 {s4} {d4} {} {}\r\n",
                        self.src.port(),
                        self.dst.port()
                    ),
                    (IpAddr::V6(s6), IpAddr::V6(d6)) => write!(
                        s,
                        "PROXY TCP6 {s6} {d6} {} {}\r\n",
                        self.src.port(),
                        self.dst.port()
                    ),
                    _ => write!(s, "PROXY UNKNOWN\r\n"),
                };
                out.extend_from_slice(s.as_bytes());
            }
            ProxyVersion::V2 => {
                out.extend_from_slice(&V2_SIGNATURE);
                out.push(0x21); // version 2, command PROXY
                match (self.src.ip(), self.dst.ip()) {
                    (IpAddr::V4(s4), IpAddr::V4(d4)) => {
                        out.push(0x11); // AF_INET, STREAM
                        out.extend_from_slice(&12u16.to_be_bytes());
                        out.extend_from_slice(&s4.octets());
                        out.extend_from_slice(&d4.octets());
                    }
                    (IpAddr::V6(s6), IpAddr::V6(d6)) => {
                        out.push(0x21); // AF_INET6, STREAM
                        out.extend_from_slice(&36u16.to_be_bytes());
                        out.extend_from_slice(&s6.octets());
                        out.extend_from_slice(&d6.octets());
                    }
                    _ => {
                        out.push(0x00); // AF_UNSPEC: the receiver uses the connection's own
                        out.extend_from_slice(&0u16.to_be_bytes());
                        return;
                    }
                }
                out.extend_from_slice(&self.src.port().to_be_bytes());
                out.extend_from_slice(&self.dst.port().to_be_bytes());
            }
        }
    }
}

fn addr_len(a: SocketAddr) -> usize {
    match a.ip() {
        IpAddr::V4(_) => 1 + 4 + 2,
        IpAddr::V6(_) => 1 + 16 + 2,
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn take_addr(p: &[u8]) -> Result<(SocketAddr, usize), &'static str> {
    let short = "PROXY addresses are truncated";
    let (&family, rest) = p.split_first().ok_or(short)?;
    let (ip, n) = match family {
        4 => {
            let (a, _) = rest.split_first_chunk::<4>().ok_or(short)?;
            (IpAddr::V4(Ipv4Addr::from(*a)), 4)
        }
        6 => {
            let (a, _) = rest.split_first_chunk::<16>().ok_or(short)?;
            let ip = Ipv6Addr::from(*a);
            if ip.to_ipv4_mapped().is_some() {
                return Err("an IPv4-mapped address must be sent as IPv4");
            }
            (IpAddr::V6(ip), 16)
        }
        _ => return Err("unknown address family"),
    };
    let (port, _) = rest[n..].split_first_chunk::<2>().ok_or(short)?;
    let port = u16::from_be_bytes(*port);
    if port == 0 {
        return Err("port 0 in PROXY addresses");
    }
    Ok((SocketAddr::new(ip, port), 1 + n + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let mut out = Vec::new();
        ProxyAddrs::new(ProxyVersion::V1, a("127.0.0.2:5555"), a("127.0.0.1:1234"))
            .header(&mut out);
        assert_eq!(out, b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 1234\r\n");
        out.clear();
        ProxyAddrs::new(ProxyVersion::V1, a("[::1]:5555"), a("[::1]:1234")).header(&mut out);
        assert_eq!(out, b"PROXY TCP6 ::1 ::1 5555 1234\r\n");
        // A dual-stack socket's IPv4 peer is sent as IPv4.
        out.clear();
        let mapped = ProxyAddrs::new(
            ProxyVersion::V1,
            a("[::ffff:10.0.0.7]:40000"),
            a("[::ffff:192.0.2.1]:80"),
        );
        assert_eq!(mapped.src, a("10.0.0.7:40000"));
        mapped.header(&mut out);
        assert_eq!(out, b"PROXY TCP4 10.0.0.7 192.0.2.1 40000 80\r\n");
        out.clear();
        ProxyAddrs::new(ProxyVersion::V1, a("10.0.0.7:1"), a("[2001:db8::1]:80")).header(&mut out);
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
        // The longest one fits the bound (the specification's, which allows for UNKNOWN
        // with addresses).
        out.clear();
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        ProxyAddrs::new(ProxyVersion::V1, a(long), a(long)).header(&mut out);
        assert_eq!(out.len(), 104);
        assert!(out.len() <= MAX_HEADER_LEN);
    }

    #[test]
    fn v2_headers() {
        let mut out = Vec::new();
        ProxyAddrs::new(ProxyVersion::V2, a("127.0.0.2:5555"), a("127.0.0.1:1234"))
            .header(&mut out);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1]);
        want.extend_from_slice(&5555u16.to_be_bytes());
        want.extend_from_slice(&1234u16.to_be_bytes());
        assert_eq!(out, want);
        out.clear();
        ProxyAddrs::new(ProxyVersion::V2, a("[::1]:5555"), a("[::2]:1234")).header(&mut out);
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(out[16 + 15], 1);
        assert_eq!(out[32 + 15], 2);
        out.clear();
        ProxyAddrs::new(ProxyVersion::V2, a("10.0.0.7:1"), a("[2001:db8::1]:80")).header(&mut out);
        assert_eq!(&out[12..], &[0x21, 0x00, 0, 0]);
    }

    #[test]
    fn addresses_round_trip_and_bad_ones_are_refused() {
        for (v, s, d) in [
            (ProxyVersion::V1, "127.0.0.2:5555", "127.0.0.1:1234"),
            (ProxyVersion::V2, "[::1]:1", "[2001:db8::5]:65535"),
            (ProxyVersion::V2, "10.1.2.3:9", "[::1]:80"),
        ] {
            let p = ProxyAddrs::new(v, a(s), a(d));
            let mut w = Vec::new();
            p.encode(&mut w);
            assert_eq!(w.len(), p.wire_len());
            w.extend_from_slice(b"rest");
            assert_eq!(ProxyAddrs::decode(&w), Ok((p, p.wire_len())));
            for cut in 0..p.wire_len() {
                assert!(ProxyAddrs::decode(&w[..cut]).is_err(), "cut {cut}");
            }
        }
        let good = [1, 4, 127, 0, 0, 1, 0, 80, 4, 127, 0, 0, 1, 0, 81];
        assert!(ProxyAddrs::decode(&good).is_ok());
        let mut bad = good;
        bad[0] = 3;
        assert!(ProxyAddrs::decode(&bad).is_err(), "version");
        let mut bad = good;
        bad[1] = 5;
        assert!(ProxyAddrs::decode(&bad).is_err(), "family");
        let mut bad = good;
        bad[6..8].copy_from_slice(&[0, 0]);
        assert!(ProxyAddrs::decode(&bad).is_err(), "port 0");
        let mut mapped = vec![1, 6];
        mapped.extend_from_slice(&"::ffff:1.2.3.4".parse::<Ipv6Addr>().unwrap().octets());
        mapped.extend_from_slice(&[0, 80, 4, 1, 2, 3, 4, 0, 80]);
        assert!(ProxyAddrs::decode(&mapped).is_err(), "mapped");
    }

    #[test]
    fn versions_parse_in_any_case() {
        assert_eq!(ProxyVersion::parse("V1"), Some(ProxyVersion::V1));
        assert_eq!(ProxyVersion::parse("v2"), Some(ProxyVersion::V2));
        assert_eq!(ProxyVersion::parse("v3"), None);
        assert_eq!(ProxyVersion::parse(" v1"), None);
        assert_eq!(ProxyVersion::V2.to_string(), "v2");
    }
}
