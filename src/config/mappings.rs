//! The port mapping file and the values in it: [`Target`] (an inner `host:port`, with its
//! [`Host`]), [`Mapping`] (a public port, its target, its tag, its source allow-list, its
//! PROXY setting and its bandwidth limit), [`load_mappings`] that reads `[MAPPER]`, `[TAG]`,
//! `[ALLOW]`, `[PROXY]` and `[LIMIT]`, and the checks on public ports, hosts, names and tags (the
//! last three also serve the client's `SERVER_IP` and `TAG`). The types are re-exported as
//! `crate::config::{Host, Target, Mapping}`.

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

/// The targets of the `[MAPPER]` line `public=s`: a port maps to `host:port`; a range
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

/// One line of `[MAPPER]`, with its tag from `[TAG]` (default `"default"`), its source
/// allow-list from `[ALLOW]` (`None`: every address may connect), the PROXY header its
/// targets get from `[PROXY]` (`None`: none) and its bandwidth limit from `[LIMIT]` or,
/// without a line there, `BANDWIDTH` (`None`: no limit).
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

/// Read `[MAPPER]`, `[TAG]`, `[ALLOW]`, `[PROXY]` and `[LIMIT]` of the mapping file; a port
/// without a `[LIMIT]` line gets `default_limit` (`BANDWIDTH`).
pub(super) fn load_mappings(
    file: &Path,
    inner_port: u16,
    cfg_file: &Path,
    default_limit: Option<Rate>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Mapping>, ConfigError> {
    let doc = Doc::read(file, "port mapping file")?;
    for head in doc.sections.iter().filter(|h| {
        !matches!(
            h.name.as_str(),
            "MAPPER" | "TAG" | "ALLOW" | "PROXY" | "LIMIT"
        )
    }) {
        let what = format!(
            "unknown section [{}], ignored (expected [MAPPER], [TAG], [ALLOW], [PROXY] and [LIMIT])",
            head.raw
        );
        warnings.push(doc.note(Some(head.line), None, &what));
    }
    for e in doc.entries.iter().filter(|e| e.section.is_none()) {
        warnings.push(doc.note(
            e.line,
            Some(e),
            "key outside a section, ignored (mappings go under [MAPPER])",
        ));
    }

    let mut targets: BTreeMap<u16, (Target, &Entry)> = BTreeMap::new();
    for e in doc.entries_in("MAPPER") {
        let public = port_key(&doc, e)?;
        let (host, ports) = target_range(&e.value, public).map_err(|m| doc.err(e, m))?;
        for (i, port) in public.ports().enumerate() {
            if let Some((_, first)) = targets.get(&port) {
                return Err(doc.err(
                    e,
                    format!("public port {port} is mapped twice{}", first_at(first)),
                ));
            }
            if port == inner_port {
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

    let mut tags = per_port(&doc, "TAG", &targets, "is tagged twice", |e| {
        check_tag(&e.value).map(|()| e.value.clone())
    })?;
    let mut allows = per_port(&doc, "ALLOW", &targets, "has two allow-lists", |e| {
        parse_cidr_list(&e.value)
    })?;

    let mut proxies = per_port(&doc, "PROXY", &targets, "has two [PROXY] lines", |e| {
        ProxyVersion::parse(&e.value).ok_or_else(|| {
            format!(
                "{:?} is not a PROXY protocol version (expected v1 or v2)",
                e.value
            )
        })
    })?;
    let mut limits = per_port(&doc, "LIMIT", &targets, "has two limits", |e| {
        if e.value.trim().eq_ignore_ascii_case("none") {
            Ok(None)
        } else {
            parse_rate(&e.value).map(Some)
        }
    })?;

    if targets.is_empty() {
        warnings.push(format!(
            "{}: no port mappings: nothing will be published",
            file.display()
        ));
    }
    Ok(targets
        .into_iter()
        .map(|(public_port, (target, _))| Mapping {
            public_port,
            target,
            tag: tags
                .remove(&public_port)
                .map_or_else(|| DEFAULT_TAG.to_string(), |(tag, _)| tag),
            allow: allows.remove(&public_port).map(|(list, _)| list),
            proxy: proxies.remove(&public_port).map(|(v, _)| v),
            limit: limits
                .remove(&public_port)
                .map_or(default_limit, |(rate, _)| rate),
        })
        .collect())
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
/// `parse`: every port must be mapped, and given a value once (else "port N `twice`").
fn per_port<'d, T: Clone>(
    doc: &'d Doc,
    section: &'static str,
    mapped: &BTreeMap<u16, (Target, &Entry)>,
    twice: &str,
    mut parse: impl FnMut(&Entry) -> Result<T, String>,
) -> Result<HashMap<u16, (T, &'d Entry)>, ConfigError> {
    let mut values: HashMap<u16, (T, &Entry)> = HashMap::new();
    for e in doc.entries_in(section) {
        let ports = port_key(doc, e)?;
        if let Some(port) = ports.ports().find(|p| !mapped.contains_key(p)) {
            return Err(doc.err(e, format!("port {port} has no [MAPPER] entry")));
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
