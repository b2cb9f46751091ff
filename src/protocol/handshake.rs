//! The handshake: versioned preamble, then challenge / hello / accept-or-refuse.
//!
//! ```text
//! server -> client   PREAMBLE  CHALLENGE{flags, nonce[32]}
//! client -> server   PREAMBLE  HELLO{window, tag, proof}
//! server -> client   ACCEPT{window, max_streams, heartbeat}   or   REFUSE{reason} and close
//! ```
//! The preamble is `TCPFWD` and a big-endian u16 version. `proof` is
//! HMAC-SHA-256(token, "tcp-forward/1 client" || nonce || tag): the token never crosses the
//! wire, a proof cannot be replayed against another nonce, and it binds the announced tag.
//!
//! Under TLS both proofs also cover the session's channel binding, 32 bytes exported with
//! RFC 9266's label: HMAC-SHA-256(token, "tcp-forward/1 client tls" || binding || nonce ||
//! tag). A man in the middle runs two TLS sessions with two different bindings, so a proof
//! made on one side verifies on neither.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const MAGIC: [u8; 6] = *b"TCPFWD";
pub const VERSION: u16 = 2;
pub const PREAMBLE_LEN: usize = 8;
pub const NONCE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;
pub const MAX_TAG_LEN: usize = 64;
/// Shortest heartbeat interval a server may announce.
pub const MIN_HEARTBEAT_MS: u32 = 100;
/// Bytes of TLS channel binding each proof covers under TLS.
pub const BINDING_LEN: usize = 32;
const CLIENT_CONTEXT: &[u8] = b"tcp-forward/1 client";
const SERVER_CONTEXT: &[u8] = b"tcp-forward/1 server";
const CLIENT_TLS_CONTEXT: &[u8] = b"tcp-forward/1 client tls";
const SERVER_TLS_CONTEXT: &[u8] = b"tcp-forward/1 server tls";
/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const FLAG_AUTH_REQUIRED: u8 = 1;

/// The 8 bytes each side sends before its first frame.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0; PREAMBLE_LEN];
    p[..6].copy_from_slice(&MAGIC);
    p[6..].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// What the first bytes from a peer say.
#[derive(Debug, PartialEq, Eq)]
pub enum PreambleCheck {
    NeedMore,
    Ok,
    NotTcpForward,
    /// A TLS handshake record: the peer speaks TLS.
    Tls,
    Version(u16),
}

pub fn check_preamble(buf: &[u8]) -> PreambleCheck {
    if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
        return PreambleCheck::Tls;
    }
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return PreambleCheck::NotTcpForward;
    }
    if buf.len() < PREAMBLE_LEN {
        return PreambleCheck::NeedMore;
    }
    match u16::from_be_bytes([buf[6], buf[7]]) {
        VERSION => PreambleCheck::Ok,
        v => PreambleCheck::Version(v),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub auth_required: bool,
    pub nonce: [u8; NONCE_LEN],
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(1 + NONCE_LEN);
        p.push(if self.auth_required {
            FLAG_AUTH_REQUIRED
        } else {
            0
        });
        p.extend_from_slice(&self.nonce);
        p
    }

    pub fn decode(p: &[u8]) -> Result<Challenge, &'static str> {
        if p.len() != 1 + NONCE_LEN {
            return Err("challenge has the wrong length");
        }
        if p[0] & !FLAG_AUTH_REQUIRED != 0 {
            return Err("challenge has unknown flags");
        }
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&p[1..]);
        Ok(Challenge {
            auth_required: p[0] & FLAG_AUTH_REQUIRED != 0,
            nonce,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The client's receive window per stream, in bytes.
    pub window: u32,
    pub tag: &'a str,
    /// The client's challenge to the server, answered in ACCEPT.
    pub nonce: [u8; NONCE_LEN],
    pub proof: Option<[u8; PROOF_LEN]>,
}

impl Hello<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(6 + self.tag.len() + PROOF_LEN);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.push(self.tag.len() as u8);
        p.extend_from_slice(self.tag.as_bytes());
        p.extend_from_slice(&self.nonce);
        put_proof(&mut p, self.proof.as_ref());
        p
    }

    pub fn decode(p: &[u8]) -> Result<Hello<'_>, &'static str> {
        let bad = "hello is truncated or has trailing bytes";
        let (window, rest) = p.split_first_chunk::<4>().ok_or(bad)?;
        let (&tag_len, rest) = rest.split_first().ok_or(bad)?;
        let tag_len = usize::from(tag_len);
        if tag_len == 0 || tag_len > MAX_TAG_LEN {
            return Err("tag length out of range");
        }
        let (tag, rest) = rest.split_at_checked(tag_len).ok_or(bad)?;
        let tag = std::str::from_utf8(tag).map_err(|_| "tag is not UTF-8")?;
        let (nonce, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or(bad)?;
        let proof = take_proof(rest).ok_or(bad)?;
        let window = u32::from_be_bytes(*window);
        if window == 0 {
            return Err("zero window");
        }
        Ok(Hello {
            window,
            tag,
            nonce: *nonce,
            proof,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// The server's receive window per stream, in bytes.
    pub window: u32,
    pub max_streams: u32,
    /// Ping interval both ends use, in milliseconds; three silent intervals mean dead.
    pub heartbeat_ms: u32,
    /// With a token: the server's answer to the client's nonce.
    pub proof: Option<[u8; PROOF_LEN]>,
}

impl Accept {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(13 + PROOF_LEN);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&self.max_streams.to_be_bytes());
        p.extend_from_slice(&self.heartbeat_ms.to_be_bytes());
        put_proof(&mut p, self.proof.as_ref());
        p
    }

    pub fn decode(p: &[u8]) -> Result<Accept, &'static str> {
        let (raw, rest) = p.split_first_chunk::<12>().ok_or("accept is truncated")?;
        let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let (window, max_streams, heartbeat_ms) = (word(0), word(4), word(8));
        let proof = take_proof(rest).ok_or("accept has a malformed proof")?;
        if window == 0 {
            return Err("zero window");
        }
        if heartbeat_ms < MIN_HEARTBEAT_MS {
            return Err("heartbeat interval too short");
        }
        Ok(Accept {
            window,
            max_streams,
            heartbeat_ms,
            proof,
        })
    }
}

/// A channel binding: the TLS session's exported bytes, or `None` on a plain connection.
pub type Binding<'a> = Option<&'a [u8; BINDING_LEN]>;

fn mac(
    token: &[u8],
    side: Side,
    binding: Binding<'_>,
    nonces: &[&[u8; NONCE_LEN]],
    tag: &str,
) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(token).expect("HMAC takes keys of any length");
    m.update(match (side, binding.is_some()) {
        (Side::Client, false) => CLIENT_CONTEXT,
        (Side::Server, false) => SERVER_CONTEXT,
        (Side::Client, true) => CLIENT_TLS_CONTEXT,
        (Side::Server, true) => SERVER_TLS_CONTEXT,
    });
    if let Some(b) = binding {
        m.update(b);
    }
    for nonce in nonces {
        m.update(*nonce);
    }
    m.update(tag.as_bytes());
    m
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// The client's MAC: over the server's nonce (and the binding).
fn client_mac(
    token: &[u8],
    binding: Binding<'_>,
    nonce: &[u8; NONCE_LEN],
    tag: &str,
) -> Hmac<Sha256> {
    mac(token, Side::Client, binding, &[nonce], tag)
}

/// The server's MAC: over both nonces (and the binding).
fn server_mac(
    token: &[u8],
    binding: Binding<'_>,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    tag: &str,
) -> Hmac<Sha256> {
    mac(
        token,
        Side::Server,
        binding,
        &[client_nonce, server_nonce],
        tag,
    )
}

/// The client's proof that it knows `token`, over the server's nonce (and the binding).
pub fn proof(
    token: &[u8],
    binding: Binding<'_>,
    nonce: &[u8; NONCE_LEN],
    tag: &str,
) -> [u8; PROOF_LEN] {
    client_mac(token, binding, nonce, tag)
        .finalize()
        .into_bytes()
        .into()
}

/// Check a client's proof in constant time.
pub fn verify(
    token: &[u8],
    binding: Binding<'_>,
    nonce: &[u8; NONCE_LEN],
    tag: &str,
    proof: &[u8],
) -> bool {
    client_mac(token, binding, nonce, tag)
        .verify_slice(proof)
        .is_ok()
}

/// The server's proof that it knows `token`, over both nonces: a client never serves a
/// server that cannot give it, so an impostor cannot reach into the private network.
pub fn server_proof(
    token: &[u8],
    binding: Binding<'_>,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    tag: &str,
) -> [u8; PROOF_LEN] {
    server_mac(token, binding, client_nonce, server_nonce, tag)
        .finalize()
        .into_bytes()
        .into()
}

/// Check the server's proof in constant time.
pub fn verify_server(
    token: &[u8],
    binding: Binding<'_>,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    tag: &str,
    proof: &[u8],
) -> bool {
    server_mac(token, binding, client_nonce, server_nonce, tag)
        .verify_slice(proof)
        .is_ok()
}

/// Append an optional proof: its length (0 or 32), then its bytes.
fn put_proof(p: &mut Vec<u8>, proof: Option<&[u8; PROOF_LEN]>) {
    match proof {
        Some(proof) => {
            p.push(PROOF_LEN as u8);
            p.extend_from_slice(proof);
        }
        None => p.push(0),
    }
}

/// An optional proof that must end the payload. `None` when malformed.
fn take_proof(rest: &[u8]) -> Option<Option<[u8; PROOF_LEN]>> {
    let (&len, rest) = rest.split_first()?;
    match (usize::from(len), rest.len()) {
        (0, 0) => Some(None),
        (PROOF_LEN, PROOF_LEN) => {
            let mut proof = [0; PROOF_LEN];
            proof.copy_from_slice(rest);
            Some(Some(proof))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_checks() {
        let p = preamble();
        assert_eq!(check_preamble(&p), PreambleCheck::Ok);
        assert_eq!(check_preamble(&p[..3]), PreambleCheck::NeedMore);
        assert_eq!(check_preamble(&p[..0]), PreambleCheck::NeedMore);
        assert_eq!(
            check_preamble(b"GET / HTTP/1.1"),
            PreambleCheck::NotTcpForward
        );
        assert_eq!(check_preamble(b"TCX"), PreambleCheck::NotTcpForward);
        assert_eq!(check_preamble(b"TCPFWD\x00\x01"), PreambleCheck::Version(1));
        assert_eq!(check_preamble(b"TCPFWD\x00\x03"), PreambleCheck::Version(3));
    }

    #[test]
    fn hello_round_trips_with_and_without_proof() {
        for proof in [None, Some([7u8; PROOF_LEN])] {
            let h = Hello {
                window: 1 << 20,
                tag: "lab-1",
                nonce: [5; NONCE_LEN],
                proof,
            };
            assert_eq!(Hello::decode(&h.encode()), Ok(h.clone()));
        }
    }

    #[test]
    fn malformed_hellos_are_rejected() {
        let good = Hello {
            window: 5,
            tag: "t",
            nonce: [2; NONCE_LEN],
            proof: Some([1; PROOF_LEN]),
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Hello::decode(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(Hello::decode(&extra).is_err());
        let zero_tag = [0, 0, 0, 5, 0, 0];
        assert!(Hello::decode(&zero_tag).is_err());
        let zero_window = Hello {
            window: 0,
            tag: "t",
            nonce: [0; NONCE_LEN],
            proof: None,
        }
        .encode();
        assert!(Hello::decode(&zero_window).is_err());
    }

    #[test]
    fn challenge_and_accept_round_trip() {
        let c = Challenge {
            auth_required: true,
            nonce: [9; NONCE_LEN],
        };
        assert_eq!(Challenge::decode(&c.encode()), Ok(c));
        assert!(Challenge::decode(&[0x80; 1 + NONCE_LEN]).is_err());
        assert!(Challenge::decode(&[0; 5]).is_err());
        for proof in [None, Some([8u8; PROOF_LEN])] {
            let a = Accept {
                window: 65536,
                max_streams: 10,
                heartbeat_ms: 10_000,
                proof,
            };
            let wire = a.encode();
            assert_eq!(Accept::decode(&wire), Ok(a));
            for cut in 0..wire.len() {
                assert!(Accept::decode(&wire[..cut]).is_err(), "cut {cut}");
            }
        }
        let too_fast = Accept {
            window: 1,
            max_streams: 1,
            heartbeat_ms: MIN_HEARTBEAT_MS - 1,
            proof: None,
        };
        assert!(Accept::decode(&too_fast.encode()).is_err());
    }

    #[test]
    fn proof_binds_token_nonce_and_tag() {
        let nonce = [3; NONCE_LEN];
        let p = proof(b"secret", None, &nonce, "default");
        assert!(verify(b"secret", None, &nonce, "default", &p));
        assert!(!verify(b"Secret", None, &nonce, "default", &p));
        assert!(!verify(b"secret", None, &[4; NONCE_LEN], "default", &p));
        assert!(!verify(b"secret", None, &nonce, "other", &p));
        assert!(!verify(b"secret", None, &nonce, "default", &p[..31]));
    }

    #[test]
    fn server_proof_binds_both_nonces_and_differs_from_the_client_proof() {
        let (c, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let p = server_proof(b"secret", None, &c, &s, "default");
        assert!(verify_server(b"secret", None, &c, &s, "default", &p));
        assert!(!verify_server(b"wrong", None, &c, &s, "default", &p));
        assert!(
            !verify_server(b"secret", None, &s, &c, "default", &p),
            "nonces swapped"
        );
        assert!(!verify_server(b"secret", None, &c, &s, "other", &p));
        assert_ne!(p, proof(b"secret", None, &s, "default"));
    }

    #[test]
    fn bound_proofs_verify_only_under_the_same_binding() {
        let (c, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let (b1, b2) = ([10; BINDING_LEN], [11; BINDING_LEN]);
        let p = proof(b"secret", Some(&b1), &s, "default");
        assert!(verify(b"secret", Some(&b1), &s, "default", &p));
        assert!(
            !verify(b"secret", Some(&b2), &s, "default", &p),
            "another TLS session"
        );
        assert!(
            !verify(b"secret", None, &s, "default", &p),
            "a plain connection"
        );
        let unbound = proof(b"secret", None, &s, "default");
        assert!(!verify(b"secret", Some(&b1), &s, "default", &unbound));
        let sp = server_proof(b"secret", Some(&b1), &c, &s, "default");
        assert!(verify_server(b"secret", Some(&b1), &c, &s, "default", &sp));
        assert!(!verify_server(b"secret", Some(&b2), &c, &s, "default", &sp));
        assert!(!verify_server(b"secret", None, &c, &s, "default", &sp));
        assert_ne!(sp, p);
    }

    #[test]
    fn a_tls_record_is_told_apart_from_a_preamble() {
        assert_eq!(check_preamble(&[0x16, 3, 1, 0, 200]), PreambleCheck::Tls);
        assert_eq!(check_preamble(&[0x16]), PreambleCheck::Tls);
    }
}
