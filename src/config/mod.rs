//! Configuration files and command-line values turned into typed settings.
//!
//! The server reads `forward_server.cfg` and the port mapping file it names (`port_mapper.cfg`);
//! the client reads its positionals and flags, or `forward_client.cfg` with `--config`. Every
//! error names the file and the key or line at fault (or `command line` and the argument), so
//! the caller can print it and exit with status 2 before anything listens.
//!
//! - `ini`: the INI reader that knows lines, and the dialect every file is written in;
//! - `mappings`: [`Target`], [`Mapping`], [`Proto`] and the port mapping file (TCP mappings
//!   in `[MAPPER]`, UDP ones in `[UDP]`), with the host, name and tag checks the client shares;
//! - `cidr`: [`Cidr`], the address ranges of every allow-list;
//! - `rate`: [`Rate`], the bandwidth limits of `[LIMIT]` and `BANDWIDTH`;
//! - `allow`: [`AllowList`], the client's `--allow`: networks, names and ports;
//! - `diff`: [`diff`] of two mapping lists (the TCP ones or the UDP ones), for a reload to
//!   apply only what changed;
//! - `edit`: [`set_mapping`] and [`remove_mapping`] (TCP), [`set_proto_mapping`] and
//!   [`remove_proto_mapping`] (either protocol) on the mapping file's text, and
//!   [`write_atomically`] to put it in place;
//! - here: the typed configs, [`load_server`] and [`client_from_args`], which give the keys
//!   their meaning.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use log::LevelFilter;

use crate::tls::{self, ClientTls, ServerTls, Trust};

mod allow;
mod cidr;
mod diff;
mod edit;
mod ini;
mod mappings;
mod range;
mod rate;

pub use self::allow::{AllowList, Verdict};
pub use self::cidr::{Cidr, allows, parse_cidr, parse_cidr_list};
pub use self::diff::{MappingDiff, diff};
pub use self::edit::{
    remove_mapping, remove_proto_mapping, set_mapping, set_proto_mapping, write_atomically,
};
use self::ini::{Doc, Entry};
pub(crate) use self::mappings::check_tag;
pub use self::mappings::{Host, Mapping, Proto, Target};
use self::mappings::{load_mappings, server_host};
pub use self::range::PortRange;
pub use self::rate::{Rate, parse_bandwidth, parse_rate};

/// Tag of a client (and of a mapping) when none is configured.
pub const DEFAULT_TAG: &str = "default";
/// Longest tag, in bytes (UTF-8).
pub const MAX_TAG_LEN: usize = 64;
/// Concurrent streams per tunnel when `MAX_STREAMS` is not set.
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// Largest accepted `MAX_STREAMS`.
pub const MAX_MAX_STREAMS: usize = 1_000_000;
/// Ping interval when `HEARTBEAT` is not set; a tunnel silent for three intervals is dead.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// `FIN_TIMEOUT` when not set.
pub const DEFAULT_FIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// `UDP_TIMEOUT` when not set: a UDP flow that moved no datagram this long is closed.
pub const DEFAULT_UDP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// `MAX_UDP_FLOWS` when not set: flows at once per UDP mapping.
pub const DEFAULT_MAX_UDP_FLOWS: usize = 1024;
/// Largest accepted `MAX_UDP_FLOWS`.
pub const MAX_MAX_UDP_FLOWS: usize = 1_000_000;
/// `CONNECT_TIMEOUT` when not set.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest timeout in seconds (a day).
const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Mapping file used when `OUTER_PORTS_FILE` is not set, next to the server's config file.
pub const DEFAULT_MAPPER_FILE: &str = "port_mapper.cfg";
/// Longest host name accepted in a target or as `server_ip`.
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A shared secret (the `TOKEN`). `Debug` prints `Secret(***)`, so it cannot leak into logs
/// through `{:?}` of a config struct; only [`Secret::expose`] gives the bytes.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s.into_bytes().into_boxed_slice())
    }

    /// The secret's bytes, for the HMAC key. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether `candidate` is this secret, in time that tells nothing of either: both are
    /// hashed first, so not even the length shows.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        tls::constant_time_eq(&Sha256::digest(&self.0), &Sha256::digest(candidate))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything the server needs, from `forward_server.cfg` and its mapping file.
#[derive(Debug)]
pub struct ServerConfig {
    /// The config file, as given on the command line.
    pub cfg_file: PathBuf,
    /// The mapping file: `OUTER_PORTS_FILE` resolved against `cfg_file`'s folder.
    pub mapper_file: PathBuf,
    /// The port clients dial.
    pub inner_port: u16,
    /// `BIND_ADDR`: the address of the client listener and of the public ports. Unset:
    /// `::` for IPv6 and IPv4 alike (or `0.0.0.0` on a host without IPv6).
    pub bind_addr: Option<IpAddr>,
    /// `LOG_LEVEL`, if set; command-line flags may override it.
    pub log_level: Option<LevelFilter>,
    /// `TOKEN`: when set, clients must prove they know it.
    pub token: Option<Secret>,
    /// `MAX_STREAMS`: concurrent streams per tunnel.
    pub max_streams: usize,
    /// `HEARTBEAT`: ping interval (seconds, 0.1 to 3600); announced to clients.
    pub heartbeat: std::time::Duration,
    /// `TLS`, `TLS_CERT`, `TLS_KEY`.
    pub tls: ServerTlsSetting,
    /// `ADMIN_ADDR` and `ADMIN_TOKEN`: the admin HTTP API, if asked for.
    pub admin: Option<AdminSettings>,
    /// `IDLE_TIMEOUT` (default none) and `FIN_TIMEOUT` (default 60 s): how long a stream may
    /// move no byte at all, and once one side has finished.
    pub idle_timeout: Option<std::time::Duration>,
    pub fin_timeout: Option<std::time::Duration>,
    /// `ALLOW`: the addresses clients may attach from on INNER_PORT (`None`: any).
    pub client_allow: Option<Vec<Cidr>>,
    /// `MAX_PER_SOURCE`: concurrent visitors from one address on one public port (0: no cap).
    pub max_per_source: u32,
    /// `BANDWIDTH`: the limit of every mapping without a `[LIMIT]` line (`None`: no limit).
    pub default_limit: Option<Rate>,
    /// The TCP mappings (`[MAPPER]`), sorted by public port (each port once).
    pub mappings: Vec<Mapping>,
    /// The UDP mappings (`[UDP]`), sorted by public port (each port once); `proxy` is always
    /// `None`. A port number may be in both lists.
    pub udp_mappings: Vec<Mapping>,
    /// `UDP_TIMEOUT` (default 60 s): a UDP flow that moved no datagram this long is closed.
    pub udp_timeout: std::time::Duration,
    /// `MAX_UDP_FLOWS` (default 1024): flows at once per UDP mapping.
    pub max_udp_flows: usize,
    /// Problems that did not stop the load (ignored keys, nothing mapped): log them.
    pub warnings: Vec<String>,
}

/// Where the admin HTTP API listens, and the token it requires (`ADMIN_ADDR`,
/// `ADMIN_TOKEN`). Off loopback a token is required: the loader refuses the address without one.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
}

/// The server's TLS: off, on with a certificate made at start-up, or on with the
/// certificate and key files named in the config (already loaded and checked).
#[derive(Debug)]
pub enum ServerTlsSetting {
    Off,
    SelfSigned,
    Files(ServerTls),
}

/// What the command line says about the client: the server's address (the positionals) or a
/// `forward_client.cfg` (`--config`), and the values that override the file's. Filled by
/// `cli::ClientArgs::input`; the log flags are `logging`'s.
#[derive(Debug, Clone, Default)]
pub struct ClientInput {
    pub server_ip: Option<String>,
    pub server_port: Option<String>,
    pub config: Option<PathBuf>,
    pub tag: Option<String>,
    /// From `--token` or `TCP_FORWARD_TOKEN`.
    pub token: Option<String>,
    /// `--tls on|off`.
    pub tls: Option<String>,
    /// `--ca FILE`.
    pub ca: Option<PathBuf>,
    /// `--server-name NAME`.
    pub server_name: Option<String>,
    /// `--fingerprint HEX`.
    pub fingerprint: Option<String>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--connect-timeout SECONDS`.
    pub connect_timeout: Option<String>,
    /// From `TCP_FORWARD_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--allow LIST`.
    pub allow: Option<String>,
}

/// Everything the client needs, from the command line or `forward_client.cfg`.
#[derive(Debug)]
pub struct ClientConfig {
    /// An IP literal (IPv6 without brackets) or a host name.
    pub server_host: String,
    pub server_port: u16,
    pub tag: String,
    pub token: Option<Secret>,
    pub log_level: Option<LevelFilter>,
    /// `None` when TLS is off.
    pub tls: Option<ClientTls>,
    /// `--admin` or `ADMIN_ADDR`, with `ADMIN_TOKEN`.
    pub admin: Option<AdminSettings>,
    /// `CONNECT_TIMEOUT` or `--connect-timeout` (default 10 s): for connects to targets.
    pub connect_timeout: std::time::Duration,
    /// `--allow` or `ALLOW`: the targets the server may have this client connect to;
    /// `None`: any.
    pub allow: Option<AllowList>,
    pub warnings: Vec<String>,
}

/// A configuration error: where (file and line, or the command line), which key, and what.
#[derive(Debug)]
pub struct ConfigError {
    file: Option<PathBuf>,
    line: Option<usize>,
    key: Option<String>,
    msg: String,
}

impl ConfigError {
    /// An error in a command-line argument (`key` is its name, e.g. `server_port` or `--tag`).
    pub fn cli(key: &str, msg: String) -> ConfigError {
        ConfigError {
            file: None,
            line: None,
            key: Some(key.to_string()),
            msg,
        }
    }

    fn in_file(file: &Path, line: Option<usize>, key: Option<String>, msg: String) -> ConfigError {
        ConfigError {
            file: Some(file.to_path_buf()),
            line,
            key,
            msg,
        }
    }

    /// The file at fault; `None` for the command line.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The 1-based line at fault, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key at fault as shown in the message (`[MAPPER] key 1234`, `server_port`), if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.msg
    }
}

/// `<file>: [line N: ][<key>: ]<msg>`, or `command line: <key>: <msg>`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: ", file.display())?,
            None => f.write_str("command line: ")?,
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ConfigError {}

/// A log level name, case-insensitive: ERROR WARN WARNING INFO DEBUG TRACE OFF, and the
/// original's CRITICAL (= ERROR) and NOTSET (= TRACE).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.trim().to_ascii_uppercase().as_str() {
        "OFF" => LevelFilter::Off,
        "ERROR" | "CRITICAL" => LevelFilter::Error,
        "WARN" | "WARNING" => LevelFilter::Warn,
        "INFO" => LevelFilter::Info,
        "DEBUG" => LevelFilter::Debug,
        "TRACE" | "NOTSET" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Load `forward_server.cfg` and the mapping file it names.
pub fn load_server(path: &Path) -> Result<ServerConfig, ConfigError> {
    let doc = Doc::read(path, "config file")?;
    let mut warnings = Vec::new();
    for head in doc.sections.iter().filter(|h| h.name != "DEFAULT") {
        let what = if matches!(head.name.as_str(), "MAPPER" | "UDP" | "TAG" | "ALLOW") {
            format!(
                "section [{}] belongs in the port mapping file (OUTER_PORTS_FILE), ignored here",
                head.name
            )
        } else {
            format!("unknown section [{}], ignored", head.raw)
        };
        warnings.push(doc.note(Some(head.line), None, &what));
    }

    let mut inner_port = None;
    let mut outer_file = None;
    let mut log_level = None;
    let mut token = None;
    let mut bind_addr = None;
    let mut max_streams = None;
    let mut heartbeat = None;
    let mut tls_on = None;
    let mut tls_cert = None;
    let mut tls_key = None;
    let mut admin_addr = None;
    let mut admin_token = None;
    let mut idle_timeout = None;
    let mut fin_timeout = Some(DEFAULT_FIN_TIMEOUT);
    let mut client_allow = None;
    let mut max_per_source = None;
    let mut bandwidth = None;
    let mut udp_timeout = DEFAULT_UDP_TIMEOUT;
    let mut max_udp_flows = DEFAULT_MAX_UDP_FLOWS;
    let dir = path.parent().unwrap_or(Path::new(""));
    for e in doc.default_entries()? {
        match e.key.as_str() {
            "INNER_PORT" => {
                inner_port =
                    Some(parse_port(&e.value).ok_or_else(|| {
                        doc.err(e, format!("{:?} is not a port (1-65535)", e.value))
                    })?)
            }
            "OUTER_PORTS_FILE" => {
                if e.value.is_empty() {
                    return Err(doc.err(e, "empty file name".to_string()));
                }
                outer_file = Some(PathBuf::from(&e.value));
            }
            "LOG_LEVEL" => log_level = Some(level_value(&doc, e)?),
            "TOKEN" => token = Some(token_value(&doc, e)?),
            "BIND_ADDR" => {
                let v = e
                    .value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .unwrap_or(&e.value);
                bind_addr = Some(v.parse::<IpAddr>().map_err(|_| {
                    doc.err(
                        e,
                        format!(
                            "{:?} is not an IP address (e.g. 0.0.0.0, or :: for IPv6 too)",
                            e.value
                        ),
                    )
                })?);
            }
            "MAX_STREAMS" => max_streams = Some(count_value(&doc, e, MAX_MAX_STREAMS)?),
            "HEARTBEAT" => {
                let secs = e
                    .value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.1..=3600.0).contains(s))
                    .ok_or_else(|| {
                        doc.err(
                            e,
                            format!("{:?} is not a number of seconds from 0.1 to 3600", e.value),
                        )
                    })?;
                heartbeat = Some(std::time::Duration::from_secs_f64(secs));
            }
            "TLS" => {
                tls_on = Some(on_off(&e.value).ok_or_else(|| doc.err(e, not_on_off(&e.value)))?)
            }
            "TLS_CERT" => tls_cert = Some((file_value(&doc, e, dir)?, e)),
            "TLS_KEY" => tls_key = Some((file_value(&doc, e, dir)?, e)),
            "ADMIN_ADDR" => {
                admin_addr = Some((admin_addr_value(&e.value).map_err(|m| doc.err(e, m))?, e))
            }
            "ADMIN_TOKEN" => admin_token = Some((token_value(&doc, e)?, e)),
            "IDLE_TIMEOUT" => {
                idle_timeout = timeout_secs(&e.value, true).map_err(|m| doc.err(e, m))?
            }
            "FIN_TIMEOUT" => {
                fin_timeout = timeout_secs(&e.value, true).map_err(|m| doc.err(e, m))?
            }
            "ALLOW" => client_allow = Some(parse_cidr_list(&e.value).map_err(|m| doc.err(e, m))?),
            "MAX_PER_SOURCE" => {
                let n = parse_number(&e.value)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        doc.err(
                            e,
                            format!("{:?} is not a number of visitors (0 for no limit)", e.value),
                        )
                    })?;
                max_per_source = Some(n);
            }
            "BANDWIDTH" => bandwidth = Some(parse_bandwidth(&e.value).map_err(|m| doc.err(e, m))?),
            "UDP_TIMEOUT" => {
                udp_timeout = timeout_secs(&e.value, false)
                    .map_err(|m| doc.err(e, m))?
                    .unwrap_or(DEFAULT_UDP_TIMEOUT)
            }
            "MAX_UDP_FLOWS" => max_udp_flows = count_value(&doc, e, MAX_MAX_UDP_FLOWS)?,
            k if k == "USER_FILE" || k.starts_with("REST") || k.starts_with("API") => {
                warnings.push(doc.note(e.line, Some(e), "not supported, ignored"));
            }
            _ => warnings.push(doc.note(e.line, Some(e), "unknown key, ignored")),
        }
    }
    let inner_port = inner_port.ok_or_else(|| {
        doc.missing(
            "INNER_PORT",
            "required key is missing (the port clients connect to)",
        )
    })?;

    let tls = match (tls_on.unwrap_or(true), tls_cert, tls_key) {
        (false, cert, key) => {
            if let Some((_, e)) = cert.or(key) {
                warnings.push(doc.note(e.line, Some(e), "TLS is off: ignored"));
            }
            ServerTlsSetting::Off
        }
        (true, None, None) => ServerTlsSetting::SelfSigned,
        (true, Some((cert, ce)), Some((key, ke))) => {
            let loaded = ServerTls::from_files(&cert, &key).map_err(|err| {
                let e = if err.file.as_deref() == Some(cert.as_path()) {
                    ce
                } else {
                    ke
                };
                doc.err(e, err.to_string())
            })?;
            ServerTlsSetting::Files(loaded)
        }
        (true, Some((_, e)), None) => {
            return Err(doc.err(
                e,
                "TLS_KEY is missing: give both TLS_CERT and TLS_KEY".into(),
            ));
        }
        (true, None, Some((_, e))) => {
            return Err(doc.err(
                e,
                "TLS_CERT is missing: give both TLS_CERT and TLS_KEY".into(),
            ));
        }
    };

    let mapper_file = match outer_file {
        Some(p) if p.is_absolute() => p,
        Some(p) => dir.join(p),
        None => dir.join(DEFAULT_MAPPER_FILE),
    };
    let mappings = load_mappings(&mapper_file, inner_port, path, bandwidth, &mut warnings)?;
    let (udp_mappings, mappings) = (mappings.udp, mappings.tcp);
    let admin = match (admin_addr, admin_token) {
        (None, None) => None,
        (None, Some((_, e))) => {
            warnings.push(doc.note(e.line, Some(e), "no ADMIN_ADDR: ignored"));
            None
        }
        (Some((addr, e)), token) => {
            let token = token.map(|(t, _)| t);
            check_admin(addr, token.is_some()).map_err(|m| doc.err(e, m))?;
            if addr.port() == inner_port {
                return Err(doc.err(e, format!("port {} is the INNER_PORT", addr.port())));
            }
            if mappings.iter().any(|m| m.public_port == addr.port()) {
                return Err(doc.err(
                    e,
                    format!(
                        "port {} is a public port of {}",
                        addr.port(),
                        mapper_file.display()
                    ),
                ));
            }
            Some(AdminSettings { addr, token })
        }
    };

    Ok(ServerConfig {
        cfg_file: path.to_path_buf(),
        mapper_file,
        inner_port,
        bind_addr,
        log_level,
        token,
        max_streams: max_streams.unwrap_or(DEFAULT_MAX_STREAMS),
        heartbeat: heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
        tls,
        admin,
        idle_timeout,
        fin_timeout,
        client_allow,
        max_per_source: max_per_source.unwrap_or(0),
        default_limit: bandwidth,
        mappings,
        udp_mappings,
        udp_timeout,
        max_udp_flows,
        warnings,
    })
}

/// A count from 1 to `max`, such as `MAX_STREAMS`.
fn count_value(doc: &Doc, e: &Entry, max: usize) -> Result<usize, ConfigError> {
    parse_number(&e.value)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| doc.err(e, format!("{:?} is not a number from 1 to {max}", e.value)))
}

/// A timeout in whole seconds, 1 to a day; with `zero_is_none`, 0 means none.
fn timeout_secs(s: &str, zero_is_none: bool) -> Result<Option<std::time::Duration>, String> {
    let range = if zero_is_none { "0 (none)" } else { "1" };
    match parse_number(s.trim()) {
        Some(0) if zero_is_none => Ok(None),
        Some(n) if (1..=MAX_TIMEOUT_SECS).contains(&n) => {
            Ok(Some(std::time::Duration::from_secs(n)))
        }
        _ => Err(format!(
            "{s:?} is not a number of seconds from {range} to {MAX_TIMEOUT_SECS}"
        )),
    }
}

/// `ADMIN_ADDR`: an IP address and a port, `127.0.0.1:8080` or `[::1]:8080`.
fn admin_addr_value(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!("{s:?} is not an address and port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    })?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: the port may not be 0"));
    }
    Ok(addr)
}

/// An admin API off loopback serves whoever reaches it: only behind a token.
fn check_admin(addr: SocketAddr, has_token: bool) -> Result<(), String> {
    if !has_token && !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: set ADMIN_TOKEN, or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// The client's settings: `--config FILE`, or the positionals; `--tag`, `--token` (or
/// `TCP_FORWARD_TOKEN`) and `--allow` override the file's `TAG`, `TOKEN` and `ALLOW`.
pub fn client_from_args(args: &ClientInput) -> Result<ClientConfig, ConfigError> {
    let mut warnings = Vec::new();
    let mut tag = None;
    let mut token = None;
    let mut log_level = None;
    let mut tls_file = TlsInput::default();
    let mut admin_file = None;
    let mut admin_token_file = None;
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut allow = None;
    let (server_host, server_port) = if let Some(path) = &args.config {
        if args.server_ip.is_some() || args.server_port.is_some() {
            return Err(ConfigError::cli(
                "--config",
                "give either --config or server_ip and server_port, not both".to_string(),
            ));
        }
        let doc = Doc::read(path, "config file")?;
        for head in doc.sections.iter().filter(|h| h.name != "DEFAULT") {
            let what = format!("unknown section [{}], ignored", head.raw);
            warnings.push(doc.note(Some(head.line), None, &what));
        }
        let mut host = None;
        let mut port = None;
        for e in doc.default_entries()? {
            match e.key.as_str() {
                "SERVER_IP" => host = Some(server_host(&e.value).map_err(|m| doc.err(e, m))?),
                "SERVER_PORT" => {
                    port = Some(parse_port(&e.value).ok_or_else(|| {
                        doc.err(e, format!("{:?} is not a port (1-65535)", e.value))
                    })?)
                }
                "TAG" => {
                    check_tag(&e.value).map_err(|m| doc.err(e, m))?;
                    tag = Some(e.value.clone());
                }
                "TOKEN" => token = Some(token_value(&doc, e)?),
                "LOG_LEVEL" => log_level = Some(level_value(&doc, e)?),
                "TLS" => {
                    tls_file.on =
                        Some(on_off(&e.value).ok_or_else(|| doc.err(e, not_on_off(&e.value)))?)
                }
                "TLS_CA" => {
                    let dir = path.parent().unwrap_or(Path::new(""));
                    tls_file.ca = Some(file_value(&doc, e, dir)?);
                }
                "TLS_SERVER_NAME" => {
                    tls_file.server_name = Some(server_name(&e.value).map_err(|m| doc.err(e, m))?)
                }
                "TLS_FINGERPRINT" => {
                    tls_file.pin =
                        Some(tls::parse_fingerprint(&e.value).map_err(|m| doc.err(e, m))?)
                }
                "ADMIN_ADDR" => {
                    admin_file = Some(admin_addr_value(&e.value).map_err(|m| doc.err(e, m))?);
                }
                "ADMIN_TOKEN" => admin_token_file = Some(token_value(&doc, e)?),
                "CONNECT_TIMEOUT" => {
                    connect_timeout = timeout_secs(&e.value, false)
                        .map_err(|m| doc.err(e, m))?
                        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
                }
                "ALLOW" => allow = Some(AllowList::parse(&e.value).map_err(|m| doc.err(e, m))?),
                _ => warnings.push(doc.note(e.line, Some(e), "unknown key, ignored")),
            }
        }
        // An ADMIN_ADDR of the file that --admin does not replace is checked against the file.
        if let Some(addr) = admin_file
            && args.admin.is_none()
            && let Some(e) = doc
                .default_entries()?
                .into_iter()
                .find(|e| e.key == "ADMIN_ADDR")
        {
            let has_token = admin_token_file.is_some() || args.admin_token.is_some();
            check_admin(addr, has_token).map_err(|m| doc.err(e, m))?;
        }
        let host = host.ok_or_else(|| {
            doc.missing(
                "SERVER_IP",
                "required key is missing (the server's address)",
            )
        })?;
        let port = port.ok_or_else(|| {
            doc.missing(
                "SERVER_PORT",
                "required key is missing (the server's INNER_PORT)",
            )
        })?;
        (host, port)
    } else {
        let ip = args.server_ip.as_deref().ok_or_else(|| {
            ConfigError::cli("server_ip", "missing (or give --config FILE)".to_string())
        })?;
        let port = args.server_port.as_deref().ok_or_else(|| {
            ConfigError::cli("server_port", "missing (or give --config FILE)".to_string())
        })?;
        let host = server_host(ip).map_err(|m| ConfigError::cli("server_ip", m))?;
        let port = parse_port(port).ok_or_else(|| {
            ConfigError::cli("server_port", format!("{port:?} is not a port (1-65535)"))
        })?;
        (host, port)
    };
    if let Some(t) = &args.tag {
        check_tag(t).map_err(|m| ConfigError::cli("--tag", m))?;
        tag = Some(t.clone());
    }
    if let Some(t) = &args.token {
        if t.is_empty() {
            return Err(ConfigError::cli(
                "--token",
                "empty token (from --token or TCP_FORWARD_TOKEN)".to_string(),
            ));
        }
        token = Some(Secret::new(t.clone()));
    }
    if let Some(v) = &args.allow {
        allow = Some(AllowList::parse(v).map_err(|m| ConfigError::cli("--allow", m))?);
    }
    let tls = client_tls(args, tls_file, &server_host, args.config.as_deref())?;
    let admin = client_admin(args, admin_file, admin_token_file)?;
    if let Some(v) = &args.connect_timeout {
        connect_timeout = timeout_secs(v, false)
            .map_err(|m| ConfigError::cli("--connect-timeout", m))?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    }
    Ok(ClientConfig {
        server_host,
        server_port,
        tag: tag.unwrap_or_else(|| DEFAULT_TAG.to_string()),
        token,
        log_level,
        tls,
        admin,
        connect_timeout,
        allow,
        warnings,
    })
}

/// The client's admin API: `--admin` over `ADMIN_ADDR`; `TCP_FORWARD_ADMIN_TOKEN` over
/// `ADMIN_TOKEN`.
fn client_admin(
    args: &ClientInput,
    file_addr: Option<SocketAddr>,
    file_token: Option<Secret>,
) -> Result<Option<AdminSettings>, ConfigError> {
    let env_token = match &args.admin_token {
        Some(t) if t.is_empty() => {
            return Err(ConfigError::cli(
                "TCP_FORWARD_ADMIN_TOKEN",
                "empty token (unset it to run without one)".to_string(),
            ));
        }
        Some(t) => Some(Secret::new(t.clone())),
        None => None,
    };
    let token = env_token.or(file_token);
    let addr = match (&args.admin, file_addr) {
        (Some(v), _) => {
            let addr = admin_addr_value(v).map_err(|m| ConfigError::cli("--admin", m))?;
            check_admin(addr, token.is_some()).map_err(|m| ConfigError::cli("--admin", m))?;
            addr
        }
        // Checked against the file already.
        (None, Some(addr)) => addr,
        (None, None) => return Ok(None),
    };
    Ok(Some(AdminSettings { addr, token }))
}

/// The client's TLS keys from its config file, before the flags override them.
#[derive(Default)]
struct TlsInput {
    on: Option<bool>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    pin: Option<tls::Fingerprint>,
}

/// The flags over the file's keys: `None` when TLS is off. The file's TLS_CA failing to load
/// is reported against the file; `--ca` against the command line.
fn client_tls(
    args: &ClientInput,
    file: TlsInput,
    server_host: &str,
    cfg_file: Option<&Path>,
) -> Result<Option<ClientTls>, ConfigError> {
    let on = match &args.tls {
        Some(v) => on_off(v).ok_or_else(|| ConfigError::cli("--tls", not_on_off(v)))?,
        None => file.on.unwrap_or(true),
    };
    let pin = match &args.fingerprint {
        Some(v) => {
            Some(tls::parse_fingerprint(v).map_err(|m| ConfigError::cli("--fingerprint", m))?)
        }
        None => file.pin,
    };
    let name = match &args.server_name {
        Some(v) => Some(server_name(v).map_err(|m| ConfigError::cli("--server-name", m))?),
        None => file.server_name,
    };
    let (ca, ca_from_cli) = match &args.ca {
        Some(p) => (Some(p.clone()), true),
        None => (file.ca, false),
    };
    if !on {
        if ca.is_some() || pin.is_some() {
            let key = if ca.is_some() {
                "--ca"
            } else {
                "--fingerprint"
            };
            return Err(ConfigError::cli(
                key,
                "TLS is off, so the server's certificate would not be checked: \
                 remove it or turn TLS on"
                    .to_string(),
            ));
        }
        return Ok(None);
    }
    // The server's address names the certificate unless --server-name says otherwise; a
    // name that cannot be one (TLS's rules are stricter than a resolver's) says how to fix it.
    let (name, key, hint) = match name {
        Some(n) => (n, "--server-name", ""),
        None => (
            server_host.to_string(),
            "server_ip",
            ": give the name in the server's certificate with --server-name",
        ),
    };
    let server_name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
        ConfigError::cli(
            key,
            format!("{name:?} is not a host name or IP address for TLS{hint}"),
        )
    })?;
    let trust = Trust { ca_file: ca, pin };
    ClientTls::new(&trust, server_name)
        .map(Some)
        .map_err(|e| match cfg_file {
            Some(f) if !ca_from_cli => ConfigError::in_file(
                f,
                None,
                Some("[DEFAULT] key TLS_CA".to_string()),
                e.to_string(),
            ),
            _ => ConfigError::cli("--ca", e.to_string()),
        })
}

/// `on` or `off` (also true/false, yes/no, 1/0), any case.
fn on_off(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn not_on_off(s: &str) -> String {
    format!("{s:?} is not on or off")
}

/// A file named by a key, relative to the config file's folder.
fn file_value(doc: &Doc, e: &Entry, dir: &Path) -> Result<PathBuf, ConfigError> {
    if e.value.is_empty() {
        return Err(doc.err(e, "empty file name".to_string()));
    }
    let p = PathBuf::from(&e.value);
    Ok(if p.is_absolute() { p } else { dir.join(p) })
}

/// The name the server's certificate must carry: a host name or an IP address.
fn server_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(s);
    rustls::pki_types::ServerName::try_from(s)
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is not a host name or IP address"))
}

/// A port 1..=65535 written in decimal digits only (no sign, no spaces).
fn parse_port(s: &str) -> Option<u16> {
    parse_number(s)
        .filter(|n| (1..=65535).contains(n))
        .and_then(|n| u16::try_from(n).ok())
}

/// A non-negative decimal number of at most 18 digits.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn level_value(doc: &Doc, e: &Entry) -> Result<LevelFilter, ConfigError> {
    parse_level(&e.value).ok_or_else(|| {
        doc.err(
            e,
            format!(
                "{:?} is not a log level (ERROR, WARN, INFO, DEBUG, TRACE, OFF)",
                e.value
            ),
        )
    })
}

fn token_value(doc: &Doc, e: &Entry) -> Result<Secret, ConfigError> {
    if e.value.is_empty() {
        return Err(doc.err(
            e,
            "empty token (remove the key to run without one)".to_string(),
        ));
    }
    Ok(Secret::new(e.value.clone()))
}

#[cfg(test)]
mod tests;
