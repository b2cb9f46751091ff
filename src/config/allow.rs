//! Allow-lists: which addresses (and, for the client, which ports) a rule admits.
//!
//! - Networks are `cidr`'s [`Cidr`], shared with the server's source allow-lists.
//! - [`AllowList`]: the client's `--allow` / `ALLOW`, entries `CIDR:PORTS` or `NAME:PORTS`
//!   (`PORTS`: a port, `FIRST-LAST` or `*`), or a bare `*` for everything. It decides on a
//!   target before anything is resolved or dialed ([`AllowList::verdict`]): a name that a
//!   `NAME` entry admits is allowed as it is; a name is resolved only when some `CIDR` entry
//!   covers its port, and then every address it resolves to must be admitted
//!   ([`AllowList::allows_addr`]).
//!
//! Pure: no I/O, no resolving.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use super::cidr::{Cidr, parse_cidr};
use super::mappings::check_name;
use super::range::PortRange;
use super::{Host, Target};

/// The ports of an entry: a [`PortRange`], written `*` when it is all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports(PortRange);

impl Ports {
    pub const ALL: Ports = Ports(PortRange {
        first: 1,
        last: 65535,
    });

    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(port)
    }

    /// `22`, `8000-8099` or `*`.
    fn parse(s: &str) -> Result<Ports, String> {
        match s {
            "*" => Ok(Ports::ALL),
            "" => Err("no port after ':' (a port, FIRST-LAST or *)".to_string()),
            _ => PortRange::parse(s).map(Ports),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Ports::ALL {
            f.write_str("*")
        } else {
            self.0.fmt(f)
        }
    }
}

/// What an entry admits: addresses in a network, or one host name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    Net(Cidr),
    /// Lower case, without a final `.`.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowEntry {
    scope: Scope,
    ports: Ports,
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Net(c) if c.is_host() && c.addr().is_ipv4() => write!(f, "{}", c.addr())?,
            Scope::Net(c) if c.is_host() => write!(f, "[{}]", c.addr())?,
            Scope::Net(c) => write!(f, "{c}")?,
            Scope::Name(n) => f.write_str(n)?,
        }
        write!(f, ":{}", self.ports)
    }
}

/// The client's allow-list: which targets the server may have it connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    /// A bare `*` was among the entries.
    everything: bool,
    entries: Vec<AllowEntry>,
}

/// What [`AllowList::verdict`] says about a target before anything is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Connect it (resolving a name as usual).
    Allowed,
    /// A name no `NAME` entry admits, on a port some `CIDR` entry covers: resolve it, and
    /// connect only if [`AllowList::allows_addr`] admits every address.
    IfEveryAddressAllowed,
    /// Refuse it: neither resolve nor dial.
    NotAllowed,
}

impl AllowList {
    /// Parse `--allow` / `ALLOW`: comma-separated entries (spaces around the commas are
    /// fine), each `CIDR:PORTS`, `NAME:PORTS` or a bare `*`. An IPv6 address takes brackets
    /// (`[::1]:22`) unless it has a prefix length (`2001:db8::/32:443`). Names follow the
    /// rules of a target's host name and match in any case.
    pub fn parse(s: &str) -> Result<AllowList, String> {
        if s.trim().is_empty() {
            return Err(
                "empty allow-list (give entries such as 10.0.0.0/8:22, or * for everything)"
                    .to_string(),
            );
        }
        let mut list = AllowList {
            everything: false,
            entries: Vec::new(),
        };
        for e in s.split(',').map(str::trim) {
            match e {
                "" => return Err(empty_entry()),
                "*" => list.everything = true,
                _ => list
                    .entries
                    .push(parse_entry(e).map_err(|m| format!("entry {e:?}: {m}"))?),
            }
        }
        Ok(list)
    }

    /// A list that admits everything (a bare `*`).
    pub fn everything() -> AllowList {
        AllowList {
            everything: true,
            entries: Vec::new(),
        }
    }

    /// Whether a bare `*` makes every target allowed.
    pub fn allows_everything(&self) -> bool {
        self.everything
    }

    /// Whether a `CIDR` entry admits this address and port.
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        self.everything
            || self.entries.iter().any(|e| match &e.scope {
                Scope::Net(c) => e.ports.contains(addr.port()) && c.contains(addr.ip()),
                Scope::Name(_) => false,
            })
    }

    /// Whether a `NAME` entry admits this host name (any case, final `.` or not) and port.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.everything
            || self.entries.iter().any(|e| match &e.scope {
                Scope::Name(n) => e.ports.contains(port) && n.eq_ignore_ascii_case(name),
                Scope::Net(_) => false,
            })
    }

    /// Whether some `CIDR` entry covers `port`: only then can a name's addresses be allowed,
    /// and only then is it worth resolving one.
    pub fn could_allow_addresses_on(&self, port: u16) -> bool {
        self.everything
            || self
                .entries
                .iter()
                .any(|e| matches!(e.scope, Scope::Net(_)) && e.ports.contains(port))
    }

    /// The decision on a target that can be taken before resolving it.
    pub fn verdict(&self, target: &Target) -> Verdict {
        match &target.host {
            Host::Ip(ip) => {
                if self.allows_addr(SocketAddr::new(*ip, target.port)) {
                    Verdict::Allowed
                } else {
                    Verdict::NotAllowed
                }
            }
            Host::Name(name) if self.allows_name(name, target.port) => Verdict::Allowed,
            Host::Name(_) if self.could_allow_addresses_on(target.port) => {
                Verdict::IfEveryAddressAllowed
            }
            Host::Name(_) => Verdict::NotAllowed,
        }
    }
}

/// The entries as they would be written: `*` first if given, then each entry in order.
impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if self.everything {
            f.write_str("*")?;
            sep = ",";
        }
        for e in &self.entries {
            write!(f, "{sep}{e}")?;
            sep = ",";
        }
        Ok(())
    }
}

fn parse_entry(s: &str) -> Result<AllowEntry, String> {
    // A whole entry that is an address or a network lacks its ports; an unbracketed IPv6
    // address ending in a number (`::1:22`) lands here too, so say both.
    if parse_cidr(s).is_ok() {
        let hint = if s.contains(':') && !s.contains('/') {
            format!(" (an IPv6 address takes brackets: [{s}]:PORTS)")
        } else {
            String::new()
        };
        return Err(format!(
            "no ports: write {s}:PORTS, where PORTS is a port, FIRST-LAST or *{hint}"
        ));
    }
    let Some((scope, ports)) = s.rsplit_once(':') else {
        return Err(format!(
            "no ports: write {s}:PORTS, where PORTS is a port, FIRST-LAST or *"
        ));
    };
    let ports = Ports::parse(ports)?;
    let scope = if scope.is_empty() {
        return Err("no address, network or host name before ':'".to_string());
    } else if scope == "*" {
        return Err(
            "'*' stands alone (everything); for every address on some ports write \
             0.0.0.0/0:PORTS,::/0:PORTS"
                .to_string(),
        );
    } else if let Some(inner) = scope.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        // `[::1]`, `[2001:db8::/32]`
        Scope::Net(match inner.split_once('/') {
            Some((addr, len)) => parse_cidr(&format!("[{addr}]/{len}"))?,
            None => parse_cidr(scope)?,
        })
    } else if scope.contains('[') || scope.contains('/') {
        Scope::Net(parse_cidr(scope)?)
    } else if scope.contains(':') {
        return Err(format!(
            "{scope:?}: an IPv6 address takes brackets ([{scope}]:PORTS) or a prefix length \
             ({scope}/128:PORTS)"
        ));
    } else if let Ok(ip) = scope.parse::<Ipv4Addr>() {
        Scope::Net(parse_cidr(&ip.to_string())?)
    } else {
        check_name(scope)?;
        let name = scope.strip_suffix('.').unwrap_or(scope);
        Scope::Name(name.to_ascii_lowercase())
    };
    Ok(AllowEntry { scope, ports })
}

fn empty_entry() -> String {
    "empty entry (two commas in a row, or one at an end)".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn list(s: &str) -> AllowList {
        AllowList::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn target(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn ports_parse_and_match() {
        assert_eq!(Ports::parse("*").unwrap(), Ports::ALL);
        let r = Ports::parse("8000-8099").unwrap();
        assert!(r.contains(8000) && r.contains(8099) && r.contains(8050));
        assert!(!r.contains(7999) && !r.contains(8100));
        assert_eq!(r.to_string(), "8000-8099");
        let one = Ports::parse("22").unwrap();
        assert!(one.contains(22) && !one.contains(23) && !one.contains(21));
        assert_eq!(one.to_string(), "22");
        assert_eq!(Ports::parse("5-5").unwrap().to_string(), "5");
        assert!(Ports::parse("1-65535").unwrap().contains(65535));
        for (s, want) in [
            ("0", "\"0\" is not a port"),
            ("65536", "is not a port"),
            ("5-3", "ends before it starts"),
            ("1-70000", "\"70000\" is not a port"),
            ("-5", "\"\" is not a port"),
            ("5-", "\"\" is not a port"),
            ("1-2-3", "is not a port"),
            ("ssh", "is not a port"),
            ("", "no port"),
            ("**", "is not a port"),
            (" 22", "is not a port"),
        ] {
            let e = Ports::parse(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn lists_parse() {
        let l = list("10.0.0.0/8:22, db.internal:5432 ,192.168.1.5:8000-8099,[::1]:*");
        assert!(!l.allows_everything());
        assert_eq!(
            l.to_string(),
            "10.0.0.0/8:22,db.internal:5432,192.168.1.5:8000-8099,[::1]:*"
        );
        assert_eq!(AllowList::parse(&l.to_string()).unwrap(), l);
        for s in [
            "2001:db8::/32:443",
            "[2001:db8::]/32:443",
            "[2001:db8::/32]:443",
            "::ffff:10.0.0.0/104:22",
            "[::1/128]:22",
            "Db.Internal.:1-65535",
            "host_1.lan:7",
            "localhost:*",
        ] {
            let l = list(s);
            assert_eq!(AllowList::parse(&l.to_string()).unwrap(), l, "{s}");
        }
        assert_eq!(list("Db.Internal.:22").to_string(), "db.internal:22");
        assert_eq!(list("::ffff:10.0.0.0/104:22").to_string(), "10.0.0.0/8:22");
        assert_eq!(list("[2001:db8::/32]:443").to_string(), "2001:db8::/32:443");
        assert!(list("*").allows_everything());
        assert!(list(" * ").allows_everything());
        assert!(list("10.0.0.0/8:22,*").allows_everything());
        assert_eq!(list("*,10.0.0.0/8:22").to_string(), "*,10.0.0.0/8:22");
        assert_eq!(AllowList::everything(), list("*"));
    }

    #[test]
    fn bad_lists() {
        for (s, want) in [
            ("", "empty allow-list"),
            ("  ", "empty allow-list"),
            ("10.0.0.0/33:22", "is not a prefix length (0-32)"),
            ("10.0.0.0/33:22", "entry \"10.0.0.0/33:22\""),
            ("1.2.3.4/x:22", "\"x\" is not a prefix length"),
            ("10.0.0.1/8:22", "has bits set after the first 8"),
            (":22", "no address, network or host name"),
            ("host:0", "\"0\" is not a port"),
            ("host:5-3", "ends before it starts"),
            ("host:1-70000", "\"70000\" is not a port"),
            ("host:", "no port"),
            ("host", "no ports"),
            ("10.0.0.0/8", "no ports: write 10.0.0.0/8:PORTS"),
            ("10.0.0.1", "no ports"),
            ("::1:22", "takes brackets: [::1:22]:PORTS"),
            ("fe80::1:*", "takes brackets ([fe80::1]:PORTS)"),
            ("::1/128", "no ports"),
            ("10.0.0.0/8:22,", "empty entry"),
            ("10.0.0.0/8:22,,db:1", "empty entry"),
            (",db:1", "empty entry"),
            ("*:22", "'*' stands alone"),
            ("bad host:22", "not allowed"),
            ("a..b:22", "empty label"),
            ("192.168.105:22", "not a valid IPv4 address"),
            ("host.123:22", "last label is a number"),
            ("[zz]:22", "not an IP address"),
            ("[10.0.0.1]:22", "not an IP address"),
            ("db/x:22", "not an IP address"),
            ("db:ssh", "is not a port"),
            ("db: 22", "is not a port"),
        ] {
            let e = AllowList::parse(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
        let long = format!("{}:22", "a".repeat(254));
        assert!(AllowList::parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn addresses_match_networks_and_ports() {
        let l = list("10.0.0.0/8:22,192.168.1.5:8000-8099,2001:db8::/32:*,[::1]:443");
        assert!(l.allows_addr(sa("10.2.3.4:22")));
        assert!(!l.allows_addr(sa("10.2.3.4:23")));
        assert!(!l.allows_addr(sa("11.0.0.1:22")));
        assert!(l.allows_addr(sa("[::ffff:10.2.3.4]:22")));
        assert!(!l.allows_addr(sa("[::ffff:10.2.3.4]:80")));
        assert!(l.allows_addr(sa("192.168.1.5:8000")));
        assert!(l.allows_addr(sa("192.168.1.5:8099")));
        assert!(!l.allows_addr(sa("192.168.1.5:8100")));
        assert!(!l.allows_addr(sa("192.168.1.6:8000")));
        assert!(l.allows_addr(sa("[2001:db8:ffff::1]:1")));
        assert!(l.allows_addr(sa("[2001:db8::1]:65535")));
        assert!(!l.allows_addr(sa("[2001:db9::1]:22")));
        assert!(l.allows_addr(sa("[::1]:443")));
        assert!(!l.allows_addr(sa("[::1]:22")));
        assert!(!l.allows_addr(sa("127.0.0.1:443")));

        let all = list("*");
        assert!(all.allows_addr(sa("8.8.8.8:53")));
        assert!(all.allows_name("anything", 1));
        assert!(all.could_allow_addresses_on(9));
    }

    #[test]
    fn names_match_in_any_case() {
        let l = list("Db.Internal:5432,cache.lan.:6379-6380,10.0.0.0/8:22");
        assert!(l.allows_name("db.internal", 5432));
        assert!(l.allows_name("DB.INTERNAL", 5432));
        assert!(l.allows_name("db.internal.", 5432));
        assert!(!l.allows_name("db.internal", 5433));
        assert!(!l.allows_name("db.internal.evil", 5432));
        assert!(!l.allows_name("internal", 5432));
        assert!(l.allows_name("cache.lan", 6380));
        assert!(l.allows_name("Cache.Lan.", 6379));
        assert!(!l.allows_name("cache.lan", 6381));
        // A CIDR entry never admits a name by itself.
        assert!(!l.allows_name("10.0.0.1", 22));
        // A NAME entry never admits an address.
        assert!(!l.allows_addr(sa("10.0.0.1:5432")));
    }

    #[test]
    fn verdicts_come_before_resolving() {
        let l = list("127.0.0.0/8:22,localhost:80,db:1000-2000");
        assert_eq!(l.verdict(&target("127.0.0.1:22")), Verdict::Allowed);
        assert_eq!(l.verdict(&target("127.0.0.1:80")), Verdict::NotAllowed);
        assert_eq!(l.verdict(&target("[::1]:22")), Verdict::NotAllowed);
        assert_eq!(l.verdict(&target("LocalHost:80")), Verdict::Allowed);
        assert_eq!(l.verdict(&target("db:1500")), Verdict::Allowed);
        // A name on a CIDR entry's port: resolve it, then check every address.
        assert_eq!(
            l.verdict(&target("localhost:22")),
            Verdict::IfEveryAddressAllowed
        );
        assert_eq!(
            l.verdict(&target("other.lan:22")),
            Verdict::IfEveryAddressAllowed
        );
        // No entry could admit it: not even resolved.
        assert_eq!(l.verdict(&target("other.lan:80")), Verdict::NotAllowed);
        assert_eq!(l.verdict(&target("db:999")), Verdict::NotAllowed);
        assert!(l.could_allow_addresses_on(22));
        assert!(!l.could_allow_addresses_on(80));
        assert!(!l.could_allow_addresses_on(1500));

        let all = list("*");
        for t in ["1.2.3.4:1", "[::1]:65535", "any.name:7"] {
            assert_eq!(all.verdict(&target(t)), Verdict::Allowed, "{t}");
        }
    }
}
