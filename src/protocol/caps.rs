//! What a client understands beyond version 2, and how it says so.
//!
//! Right after its HELLO, in the same write, a client sends a PING whose 8 bytes are
//! `TFCAPS` and a u16 of capability bits ([`CAPS_PING`]). Every server answers it with
//! PONG, as any PING; a server of this version also records the bits and uses a feature
//! only on tunnels whose client announced it. So the handshake never changes, an older
//! server ignores the announcement, and an older client never receives a frame it would
//! refuse.

/// Capability bit: OPEN frames may carry the visitor's addresses (flag `PROXY`).
pub const CAP_PROXY: u16 = 0x0001;
/// Capability bit: OPEN frames may open datagram streams (flag `DGRAM`), for UDP mappings.
pub const CAP_DGRAM: u16 = 0x0002;
/// Everything this version understands.
pub const CAPS: u16 = CAP_PROXY | CAP_DGRAM;

/// The first 6 bytes that make a PING a capability announcement. A heartbeat PING carries
/// nanoseconds since its tunnel started, which stay below these bytes for 190 years.
pub const CAPS_MAGIC: [u8; 6] = *b"TFCAPS";

/// The 8 bytes of this client's capability PING: `TFCAPS` and [`CAPS`].
pub const CAPS_PING: [u8; 8] = {
    let bits = CAPS.to_be_bytes();
    let m = CAPS_MAGIC;
    [m[0], m[1], m[2], m[3], m[4], m[5], bits[0], bits[1]]
};

/// Capability bits announced by a PING's 8 bytes, or `None` for a plain PING.
pub fn caps_of_ping(v: u64) -> Option<u16> {
    let b = v.to_be_bytes();
    (b[..6] == CAPS_MAGIC).then(|| u16::from_be_bytes([b[6], b[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pings_are_told_apart_from_heartbeats() {
        assert_eq!(&CAPS_PING, b"TFCAPS\x00\x03");
        assert_eq!(caps_of_ping(u64::from_be_bytes(CAPS_PING)), Some(CAPS));
        assert_eq!(
            caps_of_ping(u64::from_be_bytes(*b"TFCAPS\x00\x01")),
            Some(CAP_PROXY),
            "what the first clients with PROXY announce"
        );
        assert_eq!(caps_of_ping(123_456_789), None);
        // A heartbeat stamp after 190 years of uptime still is not one.
        let ns_190_years = 190u64 * 365 * 24 * 3600 * 1_000_000_000;
        assert_eq!(caps_of_ping(ns_190_years), None);
    }
}
