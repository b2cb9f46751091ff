//! Address ranges for the server's source allow-lists (`[ALLOW]` of the mapping file, `ALLOW`
//! of `forward_server.cfg`): [`Cidr`], [`parse_cidr`], [`parse_cidr_list`] and
//! [`allows`]. Pure: no sockets, no configuration files.
//!
//! The forms read: `203.0.113.0/24`, `2001:db8::/32`, and a bare address for one host
//! (`/32` or `/128`). Host bits set under the mask (`10.0.0.1/8`) are refused rather than
//! masked: such a line is usually a typo (`10.0.0.1/32` meant, or `10.0.0.0/8`), and masking
//! it would silently open a whole range. IPv4 entries match IPv4-mapped IPv6 addresses
//! (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers), and an IPv4-mapped entry
//! (`::ffff:10.0.0.0/104`) is read as the IPv4 range it names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range: a network address and a prefix length, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is one address (`/32` or `/128`).
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

/// `203.0.113.0/24`, `2001:db8::/32`: always with the prefix, in the form [`parse_cidr`] reads.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// One range: `ADDR/PREFIX` or a bare `ADDR` (a single host). Spaces around it are ignored.
/// The message of an error quotes the entry.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty address range (expected e.g. 203.0.113.0/24)".to_string());
    }
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a.trim(), Some(p.trim())),
        None => (s, None),
    };
    // Brackets are for IPv6 only, as in a URL.
    let addr: IpAddr = match addr_text
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
    {
        Some(v6) => v6.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
        None => addr_text.parse().ok(),
    }
    .ok_or_else(|| format!("{s:?}: {addr_text:?} is not an IP address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max && !p.starts_with('+'))
            .ok_or_else(|| format!("{s:?}: {p:?} is not a prefix length (0-{max})"))?,
    };
    // An IPv4-mapped range is the IPv4 range it names (a prefix of at least 96 keeps it
    // inside ::ffff:0:0/96).
    let (addr, prefix) = match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    };
    let network = match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
    };
    if network != addr {
        return Err(format!(
            "{s:?} has bits set after the first {prefix}: write {network}/{prefix} for the \
             range, or the address alone for one host"
        ));
    }
    Ok(Cidr { addr, prefix })
}

/// A comma-separated list of ranges (`203.0.113.0/24, 2001:db8::/32`); at least one, none
/// empty. An error names the entry at fault.
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    if s.trim().is_empty() {
        return Err(
            "empty allow-list (give one or more address ranges, or remove the line to allow \
             every address)"
                .to_string(),
        );
    }
    s.split(',')
        .enumerate()
        .map(|(i, entry)| {
            if entry.trim().is_empty() {
                Err(format!("entry {} of the list is empty", i + 1))
            } else {
                parse_cidr(entry)
            }
        })
        .collect()
}

/// Whether a source may connect under an allow-list: always without one, else when one of its
/// ranges contains `ip`.
pub fn allows(list: Option<&[Cidr]>, ip: IpAddr) -> bool {
    list.is_none_or(|l| l.iter().any(|c| c.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_print() {
        for (s, shown) in [
            ("203.0.113.0/24", "203.0.113.0/24"),
            (" 10.0.0.0/8 ", "10.0.0.0/8"),
            ("10.0.0.0 / 8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("[2001:db8::]/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.7", "192.0.2.7/32"),
        ] {
            let c = parse_cidr(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(c.to_string(), shown, "{s}");
            assert_eq!(parse_cidr(&c.to_string()).unwrap(), c);
        }
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        for (s, want) in [
            ("", "empty address range"),
            ("10.0.0.0/33", "not a prefix length (0-32)"),
            ("2001:db8::/129", "not a prefix length (0-128)"),
            ("1.2.3.4/x", "\"x\" is not a prefix length"),
            ("1.2.3.4/", "not a prefix length"),
            ("1.2.3.4/+8", "not a prefix length"),
            ("1.2.3.4/-1", "not a prefix length"),
            ("1.2.3/24", "is not an IP address"),
            ("host.example/24", "is not an IP address"),
            ("10.0.0.1/8", "write 10.0.0.0/8"),
            ("2001:db8::1/32", "write 2001:db8::/32"),
            ("1.2.3.4/24/1", "not a prefix length"),
        ] {
            let e = parse_cidr(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn contains_by_prefix() {
        let net = parse_cidr("203.0.113.0/24").unwrap();
        assert!(net.contains(ip("203.0.113.0")));
        assert!(net.contains(ip("203.0.113.255")));
        assert!(!net.contains(ip("203.0.114.0")));
        assert!(!net.contains(ip("2001:db8::1")));
        let host = parse_cidr("127.0.0.1").unwrap();
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(
            !all.contains(ip("::1")),
            "an IPv4 range holds no IPv6 address"
        );
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(parse_cidr("::/0").unwrap().contains(ip("fe80::1")));
        let odd = parse_cidr("10.128.0.0/9").unwrap();
        assert!(odd.contains(ip("10.255.0.1")));
        assert!(!odd.contains(ip("10.127.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_entries() {
        let net = parse_cidr("203.0.113.0/24").unwrap();
        assert!(net.contains(ip("::ffff:203.0.113.9")));
        assert!(!net.contains(ip("::ffff:203.0.114.9")));
        let mapped = parse_cidr("::ffff:203.0.113.0/120").unwrap();
        assert_eq!(mapped, net);
        assert!(mapped.contains(ip("203.0.113.9")));
        // Not mapped: IPv4-compatible addresses are IPv6 addresses.
        assert!(!net.contains(ip("::203.0.113.9")));
    }

    #[test]
    fn lists() {
        let l = parse_cidr_list("203.0.113.0/24, 2001:db8::/32,127.0.0.1").unwrap();
        assert_eq!(
            l.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["203.0.113.0/24", "2001:db8::/32", "127.0.0.1/32"]
        );
        assert!(allows(Some(&l), ip("127.0.0.1")));
        assert!(allows(Some(&l), ip("2001:db8::5")));
        assert!(!allows(Some(&l), ip("127.0.0.2")));
        assert!(allows(None, ip("127.0.0.2")));
        for (s, want) in [
            ("", "empty allow-list"),
            ("  ", "empty allow-list"),
            ("10.0.0.0/8,", "entry 2 of the list is empty"),
            (",10.0.0.0/8", "entry 1 of the list is empty"),
            ("10.0.0.0/8, 10.0.0.0/33", "\"10.0.0.0/33\""),
        ] {
            let e = parse_cidr_list(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }
}
