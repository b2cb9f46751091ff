//! The port mapping file and the values in it: [`Target`] (an inner `host:port`, with its
//! [`Host`]), [`Mapping`] (a public port, its target, its tag, its source allow-list, its
//! PROXY setting and its bandwidth limit), [`Proto`] (TCP or UDP, and the section of each),
//! [`load_mappings`] that reads the TCP mappings of `[MAPPER]` and the UDP ones of `[UDP]`
//! with what `[TAG]`, `[ALLOW]`, `[PROXY]` and `[LIMIT]` give them, and the checks on public
//! ports, hosts, names and tags (the last three also serve the client's `SERVER_IP` and
//! `TAG`). The types are re-exported as `crate::config::{Host, Target, Mapping, Proto}`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::cidr::{Cidr, parse_cidr_list};
use super::ini::{Doc, Entry, first_at};
use super::range::PortRange;
use super::rate::{Rate, parse_rate};
use super::{ConfigError, DEFAULT_TAG, MAX_HOST_NAME_LEN, MAX_TAG_LEN, parse_port};
use crate::protocol::proxy::ProxyVersion;

/// The host part of a [`Target`]: an IP literal, or a name the client resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Prints the bare host: `10.0.0.5`, `::1` (no brackets), `db.internal`.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// An inner `host:port` that the client dials for a public port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    /// Parse `1.2.3.4:22`, `[::1]:22` or `db.internal:5432`. The port is 1..=65535; a name
    /// has only letters, digits, `-`, `.` and `_`, at most 253 characters, no empty label
    /// (one final `.` is allowed), and is not a malformed IPv4 address such as `192.168.105`.
    /// The error message quotes the whole target, e.g. `target "10.0.0.1" has no port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (host, port) = split_target(s)?;
        let Some(port) = port else {
            return Err(format!("target {s:?} has no port"));
        };
        let port = parse_port(port)
            .ok_or_else(|| format!("target {s:?}: {port:?} is not a port (1-65535)"))?;
        Ok(Target { host, port })
    }
}

/// The host of a target and its port text, if it has one: `[::1]:22`, `db:5432`, `10.0.0.5`.
/// Errors quote the whole target.
pub(super) fn split_target(s: &str) -> Result<(Host, Option<&str>), String> {
    if s.is_empty() {
        return Err("empty target (expected host:port)".to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("target {s:?}: missing ']' after the IPv6 address"));
        };
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("target {s:?}: {addr:?} is not an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("target {s:?}: unexpected {after:?} after ']'")),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    if host.contains(':') {
        let port = port.unwrap_or_default();
        return Err(if host.parse::<Ipv6Addr>().is_ok() {
            format!("target {s:?}: an IPv6 target needs brackets, e.g. [{host}]:{port}")
        } else if s.parse::<Ipv6Addr>().is_ok() {
            format!("target {s:?}: an IPv6 target needs brackets and a port, e.g. [{s}]:22")
        } else {
            format!("target {s:?}: {host:?} is not a valid host")
        });
    }
    if host.is_empty() {
        return Err(format!("target {s:?} has no host"));
    }
    let host = parse_host(host).map_err(|e| format!("target {s:?}: {e}"))?;
    Ok((host, port))
}

/// The targets of the `[MAPPER]` (or `[UDP]`) line `public=s`: a port maps to `host:port`; a range
/// `6000-6009` maps to `host:7000-7009` (a range as long) or to bare `host` (the same ports).
/// Returns the host and the target ports, as many as `public` has.
pub(super) fn target_range(s: &str, public: PortRange) -> Result<(Host, PortRange), String> {
    if public.size() == 1 {
        let t = Target::parse(s).map_err(|e| match split_target(s) {
            Ok((_, Some(ports))) if PortRange::parse(ports).is_ok_and(|r| r.size() > 1) => {
                format!("target {s:?}: one public port cannot map to the range {ports}")
            }
            _ => e,
        })?;
        return Ok((t.host, PortRange::one(t.port)));
    }
    let (host, ports) = split_target(s)?;
    let Some(text) = ports else {
        return Ok((host, public));
    };
    let ports = PortRange::parse(text).map_err(|e| format!("target {s:?}: {e}"))?;
    if ports.size() != public.size() {
        return Err(format!(
            "the {} public ports {public} map to {} target port{} ({ports}): both ranges must have the same length",
            public.size(),
            ports.size(),
            if ports.size() == 1 { "" } else { "s" },
        ));
    }
    Ok((host, ports))
}

/// `1.2.3.4:22`, `[::1]:22`, `db.internal:5432`: the form [`Target::parse`] reads.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// One port of a `[MAPPER]` (TCP) or `[UDP]` line, with its tag from `[TAG]` (default
/// `"default"`), its source allow-list from `[ALLOW]` (`None`: every address may connect),
/// the PROXY header its targets get from `[PROXY]` (`None`: none; always `None` for UDP) and
/// its bandwidth limit from `[LIMIT]` or, without a line there, `BANDWIDTH` (`None`: no
/// limit). Which protocol it is for is the list it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub public_port: u16,
    pub target: Target,
    pub tag: String,
    pub allow: Option<Vec<Cidr>>,
    pub proxy: Option<ProxyVersion>,
    /// The limit in force: in each direction, all the port's streams together.
    pub limit: Option<Rate>,
}

/// The two protocols a public port can be mapped for, each with its section of the mapping
/// file: TCP in `[MAPPER]`, UDP in `[UDP]`. One port number may be mapped for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The mapping file's section of the protocol's mappings, as `ini` names it (upper case).
    pub fn section(self) -> &'static str {
        match self {
            Proto::Tcp => "MAPPER",
            Proto::Udp => "UDP",
        }
    }

    /// The other protocol.
    pub fn other(self) -> Proto {
        match self {
            Proto::Tcp => Proto::Udp,
            Proto::Udp => Proto::Tcp,
        }
    }

    /// `tcp` or `udp`, any case (the admin API's `proto`).
    pub fn parse(s: &str) -> Option<Proto> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The protocol whose mappings `section` (upper case) holds, if it holds any.
    pub(super) fn of_section(section: &str) -> Option<Proto> {
        [Proto::Tcp, Proto::Udp]
            .into_iter()
            .find(|p| p.section() == section)
    }
}

/// `tcp` or `udp`.
impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// The mappings of a mapping file: `[MAPPER]`'s and `[UDP]`'s, each sorted by public port.
#[derive(Debug)]
pub(super) struct Mappings {
    pub tcp: Vec<Mapping>,
    pub udp: Vec<Mapping>,
}

/// The targets of one section's lines, by public port, with the line of each.
type Targets<'d> = BTreeMap<u16, (Target, &'d Entry)>;

/// Read `[MAPPER]`, `[UDP]`, `[TAG]`, `[ALLOW]`, `[PROXY]` and `[LIMIT]` of the mapping file; a
/// port without a `[LIMIT]` line gets `default_limit` (`BANDWIDTH`). `[TAG]`, `[ALLOW]` and
/// `[LIMIT]` give a port number's TCP and UDP mappings alike; `[PROXY]` is for TCP only.
pub(super) fn load_mappings(
    file: &Path,
    inner_port: u16,
    cfg_file: &Path,
    default_limit: Option<Rate>,
    warnings: &mut Vec<String>,
) -> Result<Mappings, ConfigError> {
    let doc = Doc::read(file, "port mapping file")?;
    for head in doc.sections.iter().filter(|h| {
        !matches!(
            h.name.as_str(),
            "MAPPER" | "UDP" | "TAG" | "ALLOW" | "PROXY" | "LIMIT"
        )
    }) {
        let what = format!(
            "unknown section [{}], ignored (expected [MAPPER], [UDP], [TAG], [ALLOW], [PROXY] and [LIMIT])",
            head.raw
        );
        warnings.push(doc.note(Some(head.line), None, &what));
    }
    for e in doc.entries.iter().filter(|e| e.section.is_none()) {
        warnings.push(doc.note(
            e.line,
            Some(e),
            "key outside a section, ignored (mappings go under [MAPPER] or [UDP])",
        ));
    }

    // A UDP port may be the INNER_PORT: that one is a TCP listener.
    let tcp = section_targets(&doc, Proto::Tcp, Some((inner_port, cfg_file)))?;
    let udp = section_targets(&doc, Proto::Udp, None)?;
    let unmapped = |port: u16| {
        (!tcp.contains_key(&port) && !udp.contains_key(&port))
            .then(|| format!("port {port} has no [MAPPER] or [UDP] entry"))
    };

    let tags = per_port(&doc, "TAG", unmapped, "is tagged twice", |e| {
        check_tag(&e.value).map(|()| e.value.clone())
    })?;
    let allows = per_port(&doc, "ALLOW", unmapped, "has two allow-lists", |e| {
        parse_cidr_list(&e.value)
    })?;
    let tcp_only = |port: u16| {
        unmapped(port).or_else(|| {
            (!tcp.contains_key(&port)).then(|| {
                format!("PROXY headers are for TCP mappings; port {port} has only a [UDP] mapping")
            })
        })
    };
    let proxies = per_port(&doc, "PROXY", tcp_only, "has two [PROXY] lines", |e| {
        ProxyVersion::parse(&e.value).ok_or_else(|| {
            format!(
                "{:?} is not a PROXY protocol version (expected v1 or v2)",
                e.value
            )
        })
    })?;
    let limits = per_port(&doc, "LIMIT", unmapped, "has two limits", |e| {
        if e.value.trim().eq_ignore_ascii_case("none") {
            Ok(None)
        } else {
            parse_rate(&e.value).map(Some)
        }
    })?;

    if tcp.is_empty() && udp.is_empty() {
        warnings.push(format!(
            "{}: no port mappings: nothing will be published",
            file.display()
        ));
    }
    let mappings = |targets: Targets<'_>, proto: Proto| -> Vec<Mapping> {
        targets
            .into_iter()
            .map(|(public_port, (target, _))| Mapping {
                public_port,
                target,
                tag: tags
                    .get(&public_port)
                    .map_or_else(|| DEFAULT_TAG.to_string(), |(tag, _)| tag.clone()),
                allow: allows.get(&public_port).map(|(list, _)| list.clone()),
                proxy: match proto {
                    Proto::Tcp => proxies.get(&public_port).map(|&(v, _)| v),
                    Proto::Udp => None,
                },
                limit: limits
                    .get(&public_port)
                    .map_or(default_limit, |&(rate, _)| rate),
            })
            .collect()
    };
    Ok(Mappings {
        tcp: mappings(tcp, Proto::Tcp),
        udp: mappings(udp, Proto::Udp),
    })
}

/// The targets of the lines of `proto`'s section, each port of a range its own: a port
/// mapped twice is an error, and with `inner` (the INNER_PORT and the file that sets it) so is
/// a port that is the INNER_PORT.
fn section_targets<'d>(
    doc: &'d Doc,
    proto: Proto,
    inner: Option<(u16, &Path)>,
) -> Result<Targets<'d>, ConfigError> {
    let mut targets = Targets::new();
    for e in doc.entries_in(proto.section()) {
        let public = port_key(doc, e)?;
        let (host, ports) = target_range(&e.value, public).map_err(|m| doc.err(e, m))?;
        for (i, port) in public.ports().enumerate() {
            if let Some((_, first)) = targets.get(&port) {
                return Err(doc.err(
                    e,
                    format!("public port {port} is mapped twice{}", first_at(first)),
                ));
            }
            if let Some((inner_port, cfg_file)) = inner
                && port == inner_port
            {
                return Err(doc.err(
                    e,
                    format!(
                        "public port {port} is the INNER_PORT of {}",
                        cfg_file.display()
                    ),
                ));
            }
            let target = Target {
                host: host.clone(),
                port: ports.nth(i),
            };
            targets.insert(port, (target, e));
        }
    }
    Ok(targets)
}

/// The key of a mapping file line: a public port or a range of them.
fn port_key(doc: &Doc, e: &Entry) -> Result<PortRange, ConfigError> {
    PortRange::parse(&e.raw_key).map_err(|m| {
        let m = match m.strip_prefix("port range") {
            Some(rest) => format!("public port range{rest}"),
            None => format!("public port {m}"),
        };
        doc.err(e, m)
    })
}

/// The values a section gives its ports (each port of a range the same one), checked with
/// `parse`: `refused` says why a port may not have a line here (`None`: it may), and each port
/// is given a value once (else "port N `twice`").
fn per_port<'d, T: Clone>(
    doc: &'d Doc,
    section: &'static str,
    refused: impl Fn(u16) -> Option<String>,
    twice: &str,
    mut parse: impl FnMut(&Entry) -> Result<T, String>,
) -> Result<HashMap<u16, (T, &'d Entry)>, ConfigError> {
    let mut values: HashMap<u16, (T, &Entry)> = HashMap::new();
    for e in doc.entries_in(section) {
        let ports = port_key(doc, e)?;
        if let Some(why) = ports.ports().find_map(&refused) {
            return Err(doc.err(e, why));
        }
        let value = parse(e).map_err(|m| doc.err(e, m))?;
        for port in ports.ports() {
            if let Some((_, first)) = values.get(&port) {
                return Err(doc.err(e, format!("port {port} {twice}{}", first_at(first))));
            }
            values.insert(port, (value.clone(), e));
        }
    }
    Ok(values)
}

/// A tag: 1..=64 bytes, no whitespace or control characters.
pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".to_string());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag {tag:?} is longer than {MAX_TAG_LEN} bytes"));
    }
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "tag {tag:?} contains whitespace or a control character"
        ));
    }
    // The mapping file's lines may not end with one (see `ini`): such a tag could be
    // written through the admin API but never read back.
    if tag.ends_with('\\') {
        return Err(format!("tag {tag:?} ends with a backslash"));
    }
    Ok(())
}

/// The host of a target (no brackets, no port): an IPv4 literal or a host name.
fn parse_host(host: &str) -> Result<Host, String> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    check_name(host)?;
    Ok(Host::Name(host.to_string()))
}

/// A host name: letters, digits, `-`, `.`, `_`; at most 253 characters; no empty label
/// except one final `.`; not all numbers, as C's resolver would read `192.168.105`, `0x7f.1`
/// or `010.0.0.1` as some other IPv4 address and silently dial another host; and, like DNS
/// names, not ending in an all-digit label.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".to_string());
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "host name is longer than {MAX_HOST_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
    {
        return Err(format!(
            "{name:?} is not a valid host name ({c:?} is not allowed: use letters, digits, '-', '.', '_')"
        ));
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = bare.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(format!("{name:?} is not a valid host name (empty label)"));
    }
    if labels.iter().all(|l| is_c_number(l)) {
        return Err(format!(
            "{name:?} is not a valid IPv4 address (write four decimal numbers, e.g. 192.168.10.5)"
        ));
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} is not a valid host name (its last label is a number)"
        ));
    }
    Ok(())
}

/// A number as C's `inet_aton` reads one: decimal, octal (leading 0) or hex (0x...).
fn is_c_number(s: &str) -> bool {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `server_ip`: an IP literal (IPv6 with or without brackets, stored bare) or a host name.
pub(super) fn server_host(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty server address".to_string());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| format!("{s:?} is not an IPv6 address"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if s.contains(':') {
        return Err(format!(
            "{s:?} is not an IP address or host name (give the port separately)"
        ));
    }
    check_name(s)?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_round_trip() {
        for (s, host) in [
            ("1.2.3.4:22", Host::Ip("1.2.3.4".parse().unwrap())),
            ("[::1]:22", Host::Ip("::1".parse().unwrap())),
            ("[fe80::1:2]:8080", Host::Ip("fe80::1:2".parse().unwrap())),
            ("db.internal:5432", Host::Name("db.internal".into())),
            ("db_1.internal.:5432", Host::Name("db_1.internal.".into())),
            ("localhost:1", Host::Name("localhost".into())),
            ("host-1:65535", Host::Name("host-1".into())),
        ] {
            let t = Target::parse(s).unwrap();
            assert_eq!(t.host, host, "{s}");
            assert_eq!(t.to_string(), s);
            assert_eq!(Target::parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(Target::parse("[::1]:22").unwrap().host.to_string(), "::1");
    }

    #[test]
    fn bad_targets() {
        assert_eq!(
            Target::parse("10.0.0.1").unwrap_err(),
            r#"target "10.0.0.1" has no port"#
        );
        for (s, want) in [
            ("", "empty target"),
            ("[::1]", "has no port"),
            ("::1", "needs brackets and a port"),
            ("::1:22", "needs brackets, e.g. [::1]:22"),
            ("[::1:22", "missing ']'"),
            ("[zz]:22", "not an IPv6 address"),
            ("[::1]x22", "unexpected"),
            ("1.2.3.4:0", "is not a port"),
            ("1.2.3.4:65536", "is not a port"),
            ("1.2.3.4:+22", "is not a port"),
            ("1.2.3.4:", "is not a port"),
            ("1.2.3.4:ssh", "is not a port"),
            (":22", "has no host"),
            ("bad host:22", "not allowed"),
            ("b@d:22", "not allowed"),
            ("a..b:22", "empty label"),
            (".a:22", "empty label"),
            ("192.168.105:22", "not a valid IPv4 address"),
            ("0x7f.1:22", "not a valid IPv4 address"),
            ("010.0.0.1:22", "not a valid IPv4 address"),
            ("1.2.3.4.5:22", "not a valid IPv4 address"),
            ("host.123:22", "last label is a number"),
        ] {
            let e = Target::parse(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
        let long = format!("{}:22", "a".repeat(254));
        assert!(
            Target::parse(&long)
                .unwrap_err()
                .contains("longer than 253")
        );
        let ok = format!(
            "{}:22",
            [
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61)
            ]
            .join(".")
        );
        assert!(Target::parse(&ok).is_ok());
    }
}
