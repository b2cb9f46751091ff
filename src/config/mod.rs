//! Configuration files and command-line values turned into typed settings.
//!
//! The server reads `forward_server.cfg` and the port mapping file it names (`port_mapper.cfg`);
//! the client reads its positionals and flags, or `forward_client.cfg` with `--config`. Every
//! error names the file and the key or line at fault (or `command line` and the argument), so
//! the caller can print it and exit with status 2 before anything listens.
//!
//! - `ini`: the INI reader that knows lines, and the dialect every file is written in;
//! - `mappings`: [`Target`], [`Mapping`] and the port mapping file, with the host, name and
//!   tag checks the client shares;
//! - here: the typed configs, [`load_server`] and [`client_from_args`], which give the keys
//!   their meaning.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use log::LevelFilter;

mod ini;
mod mappings;

use self::ini::{Doc, Entry};
pub use self::mappings::{Host, Mapping, Target};
use self::mappings::{check_tag, load_mappings, server_host};

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
    /// Address of the client listener and of the public ports (default `0.0.0.0`).
    pub bind_addr: IpAddr,
    /// `LOG_LEVEL`, if set; command-line flags may override it.
    pub log_level: Option<LevelFilter>,
    /// `TOKEN`: when set, clients must prove they know it.
    pub token: Option<Secret>,
    /// `MAX_STREAMS`: concurrent streams per tunnel.
    pub max_streams: usize,
    /// `HEARTBEAT`: ping interval (seconds, 0.1 to 3600); announced to clients.
    pub heartbeat: std::time::Duration,
    /// The mappings, sorted by public port (each port once).
    pub mappings: Vec<Mapping>,
    /// Problems that did not stop the load (ignored keys, nothing mapped): log them.
    pub warnings: Vec<String>,
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
        let what = if head.name == "MAPPER" || head.name == "TAG" {
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
            "MAX_STREAMS" => {
                let n = parse_number(&e.value)
                    .filter(|n| (1..=MAX_MAX_STREAMS as u64).contains(n))
                    .ok_or_else(|| {
                        doc.err(
                            e,
                            format!("{:?} is not a number from 1 to {MAX_MAX_STREAMS}", e.value),
                        )
                    })?;
                max_streams = Some(n as usize);
            }
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
            k if k == "BANDWIDTH"
                || k == "USER_FILE"
                || k.starts_with("REST")
                || k.starts_with("API") =>
            {
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

    let dir = path.parent().unwrap_or(Path::new(""));
    let mapper_file = match outer_file {
        Some(p) if p.is_absolute() => p,
        Some(p) => dir.join(p),
        None => dir.join(DEFAULT_MAPPER_FILE),
    };
    let mappings = load_mappings(&mapper_file, inner_port, path, &mut warnings)?;

    Ok(ServerConfig {
        cfg_file: path.to_path_buf(),
        mapper_file,
        inner_port,
        bind_addr: bind_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        log_level,
        token,
        max_streams: max_streams.unwrap_or(DEFAULT_MAX_STREAMS),
        heartbeat: heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
        mappings,
        warnings,
    })
}

/// The client's settings: `--config FILE`, or the positionals; `--tag` and `--token` (or
/// `TCP_FORWARD_TOKEN`) override the file's `TAG` and `TOKEN`.
pub fn client_from_args(args: &ClientInput) -> Result<ClientConfig, ConfigError> {
    let mut warnings = Vec::new();
    let mut tag = None;
    let mut token = None;
    let mut log_level = None;
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
                _ => warnings.push(doc.note(e.line, Some(e), "unknown key, ignored")),
            }
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
    Ok(ClientConfig {
        server_host,
        server_port,
        tag: tag.unwrap_or_else(|| DEFAULT_TAG.to_string()),
        token,
        log_level,
        warnings,
    })
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch folder under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tcp-forward-config-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&path, text).unwrap();
            path
        }

        /// Write `forward_server.cfg` and `port_mapper.cfg`; return the former's path.
        fn server(&self, cfg: &str, mapper: &str) -> PathBuf {
            self.write("port_mapper.cfg", mapper);
            self.write("forward_server.cfg", cfg)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CFG: &str = "[DEFAULT]\nINNER_PORT=1111\n";
    const MAPPER: &str = "[MAPPER]\n1234=192.168.10.5:22\n";

    fn server_err(cfg: &str, mapper: &str) -> (Scratch, ConfigError) {
        let s = Scratch::new("err");
        let path = s.server(cfg, mapper);
        let e = load_server(&path).expect_err("load should fail");
        (s, e)
    }

    fn client_args(config: Option<PathBuf>, ip: Option<&str>, port: Option<&str>) -> ClientInput {
        ClientInput {
            server_ip: ip.map(str::to_string),
            server_port: port.map(str::to_string),
            config,
            tag: None,
            token: None,
        }
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("info"), Some(LevelFilter::Info));
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("CRITICAL"), Some(LevelFilter::Error));
        assert_eq!(parse_level("error"), Some(LevelFilter::Error));
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("NOTSET"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
        assert_eq!(parse_level(""), None);
    }

    #[test]
    fn secret_is_masked() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), b"hunter2");
        let s = Scratch::new("secret");
        let path = s.server("[DEFAULT]\nINNER_PORT=1111\nTOKEN=hunter2\n", MAPPER);
        let cfg = load_server(&path).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn error_display_formats() {
        let e = ConfigError::cli(
            "server_port",
            r#""abc" is not a port (1-65535)"#.to_string(),
        );
        assert_eq!(
            e.to_string(),
            r#"command line: server_port: "abc" is not a port (1-65535)"#
        );
        let e = ConfigError::in_file(Path::new("/etc/x/f.cfg"), Some(3), None, "bad".into());
        assert_eq!(e.to_string(), "/etc/x/f.cfg: line 3: bad");
    }

    #[test]
    fn server_defaults() {
        let s = Scratch::new("defaults");
        let path = s.server(CFG, MAPPER);
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.cfg_file, path);
        assert_eq!(cfg.mapper_file, s.0.join("port_mapper.cfg"));
        assert_eq!(cfg.inner_port, 1111);
        assert_eq!(cfg.bind_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(cfg.log_level, None);
        assert!(cfg.token.is_none());
        assert_eq!(cfg.max_streams, 4096);
        assert_eq!(cfg.heartbeat, DEFAULT_HEARTBEAT);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(cfg.mappings.len(), 1);
        let m = &cfg.mappings[0];
        assert_eq!(m.public_port, 1234);
        assert_eq!(m.target.to_string(), "192.168.10.5:22");
        assert_eq!(m.tag, "default");
    }

    #[test]
    fn server_all_keys_case_insensitive_and_comments() {
        let s = Scratch::new("keys");
        let path = s.server(
            "; server\n[default]\ninner_port = 1111  # clients\n  Log_Level=debug\nToken=a#b;c  ; secret\n\
             bind_addr=[::]\nmax_streams=1000000\nheartbeat=2.5\n",
            "# map\n[mapper]\n2000=db.internal:5432   # db\n1234=192.168.10.5:22 ; ssh\n\
             3000 = [2001:db8::5]:80\n[Tag]\n2000=office\n\n",
        );
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.inner_port, 1111);
        assert_eq!(cfg.log_level, Some(LevelFilter::Debug));
        assert_eq!(cfg.token.as_ref().unwrap().expose(), b"a#b;c");
        assert_eq!(cfg.bind_addr, "::".parse::<IpAddr>().unwrap());
        assert_eq!(cfg.max_streams, 1_000_000);
        assert_eq!(cfg.heartbeat, std::time::Duration::from_millis(2500));
        let got: Vec<(u16, String, &str)> = cfg
            .mappings
            .iter()
            .map(|m| (m.public_port, m.target.to_string(), m.tag.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1234, "192.168.10.5:22".to_string(), "default"),
                (2000, "db.internal:5432".to_string(), "office"),
                (3000, "[2001:db8::5]:80".to_string(), "default"),
            ]
        );
        assert_eq!(
            cfg.mappings[2].target.host,
            Host::Ip("2001:db8::5".parse().unwrap())
        );
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn server_keys_without_header_and_crlf_bom() {
        let s = Scratch::new("general");
        let path = s.server(
            "\u{feff}INNER_PORT=1111\r\nLOG_LEVEL=WARNING\r\n",
            "[MAPPER]\r\n1234=10.0.0.1:22\r\n",
        );
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.inner_port, 1111);
        assert_eq!(cfg.log_level, Some(LevelFilter::Warn));
        assert_eq!(cfg.mappings[0].target.to_string(), "10.0.0.1:22");
    }

    #[test]
    fn outer_ports_file_relative_and_absolute() {
        let s = Scratch::new("outer");
        s.write("maps/ports.cfg", "[MAPPER]\n1234=10.0.0.1:22\n");
        let path = s.write(
            "forward_server.cfg",
            "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE=maps/ports.cfg\n",
        );
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.mapper_file, s.0.join("maps/ports.cfg"));
        assert_eq!(cfg.mappings.len(), 1);

        let abs = s.write("elsewhere.cfg", "[MAPPER]\n5555=10.0.0.2:80\n");
        let text = format!(
            "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE={}\n",
            abs.display()
        );
        let path = s.write("sub/forward_server.cfg", &text);
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.mapper_file, abs);
        assert_eq!(cfg.mappings[0].public_port, 5555);
    }

    #[test]
    fn server_warnings() {
        let s = Scratch::new("warn");
        let path = s.server(
            "[DEFAULT]\nINNER_PORT=1111\nBANDWIDTH=10\nREST_PORT=8080\nAPI_TOKEN=x\nuser_file=u\nFOO=1\n[EXTRA]\nA=1\n[MAPPER]\n",
            "[MAPPER]\n[OTHER]\nx=1\n",
        );
        let cfg = load_server(&path).unwrap();
        let f = path.display().to_string();
        let w = &cfg.warnings;
        let has = |needle: &str| w.iter().any(|l| l.contains(needle));
        assert!(
            has(&format!(
                "{f}: line 3: [DEFAULT] key BANDWIDTH: not supported, ignored"
            )),
            "{w:?}"
        );
        assert!(
            has(&format!(
                "{f}: line 4: [DEFAULT] key REST_PORT: not supported"
            )),
            "{w:?}"
        );
        assert!(
            has(&format!(
                "{f}: line 5: [DEFAULT] key API_TOKEN: not supported"
            )),
            "{w:?}"
        );
        assert!(
            has(&format!(
                "{f}: line 6: [DEFAULT] key user_file: not supported"
            )),
            "{w:?}"
        );
        assert!(
            has(&format!(
                "{f}: line 7: [DEFAULT] key FOO: unknown key, ignored"
            )),
            "{w:?}"
        );
        assert!(
            has(&format!("{f}: line 8: unknown section [EXTRA], ignored")),
            "{w:?}"
        );
        assert!(
            has(&format!(
                "{f}: line 10: section [MAPPER] belongs in the port mapping file"
            )),
            "{w:?}"
        );
        let m = s.0.join("port_mapper.cfg").display().to_string();
        assert!(
            has(&format!("{m}: line 2: unknown section [OTHER]")),
            "{w:?}"
        );
        assert!(
            has(&format!("{m}: no port mappings: nothing will be published")),
            "{w:?}"
        );
        assert!(cfg.mappings.is_empty());

        let s = Scratch::new("warn-empty");
        let path = s.server(CFG, "# nothing yet\n");
        let cfg = load_server(&path).unwrap();
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        assert!(
            cfg.warnings[0]
                .ends_with("port_mapper.cfg: no port mappings: nothing will be published")
        );

        let s = Scratch::new("warn-general");
        let path = s.server(CFG, "1234=10.0.0.1:22\n");
        let cfg = load_server(&path).unwrap();
        assert!(
            cfg.warnings
                .iter()
                .any(|l| l.contains("line 1: key 1234: key outside a section"))
        );
    }

    /// Check that `e` names `file`, and that its text contains each of `parts`.
    fn assert_err(e: &ConfigError, file: &Path, parts: &[&str]) {
        let text = e.to_string();
        assert_eq!(e.file(), Some(file), "{text}");
        assert!(text.starts_with(&format!("{}: ", file.display())), "{text}");
        for p in parts {
            assert!(text.contains(p), "{text:?} lacks {p:?}");
        }
    }

    #[test]
    fn missing_files() {
        let s = Scratch::new("missing");
        let cfg = s.0.join("nope.cfg");
        let e = load_server(&cfg).unwrap_err();
        assert_err(
            &e,
            &cfg,
            &["cannot read config file", "No such file or directory"],
        );

        let path = s.write("forward_server.cfg", CFG);
        let e = load_server(&path).unwrap_err();
        assert_err(
            &e,
            &s.0.join("port_mapper.cfg"),
            &["cannot read port mapping file", "No such file"],
        );
    }

    #[test]
    fn server_cfg_errors() {
        for (cfg, line, parts) in [
            (
                "[DEFAULT]\nLOG_LEVEL=INFO\n",
                None,
                &["[DEFAULT] key INNER_PORT: required key is missing"][..],
            ),
            (
                "[DEFAULT]\nINNER_PORT=abc\n",
                Some(2),
                &[r#"[DEFAULT] key INNER_PORT: "abc" is not a port (1-65535)"#],
            ),
            ("[DEFAULT]\nINNER_PORT=0\n", Some(2), &["is not a port"]),
            ("[DEFAULT]\nINNER_PORT=65536\n", Some(2), &["is not a port"]),
            (
                "[DEFAULT]\n\nINNER_PORT=1\ninner_port=2\n",
                Some(4),
                &["key given twice (first on line 3)"],
            ),
            (
                "INNER_PORT=1\n[DEFAULT]\nINNER_PORT=2\n",
                Some(3),
                &["key given twice (first on line 1)"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nLOG_LEVEL=LOUD\n",
                Some(3),
                &["key LOG_LEVEL", "is not a log level"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nTOKEN=\n",
                Some(3),
                &["key TOKEN: empty token"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nTOKEN= # comment\n",
                Some(3),
                &["key TOKEN: empty token"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nBIND_ADDR=localhost\n",
                Some(3),
                &["key BIND_ADDR", "not an IP"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=0\n",
                Some(3),
                &["key MAX_STREAMS", "1 to 1000000"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=1000001\n",
                Some(3),
                &["key MAX_STREAMS"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nMAX_STREAMS=many\n",
                Some(3),
                &["key MAX_STREAMS"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nHEARTBEAT=0.01\n",
                Some(3),
                &["key HEARTBEAT", "0.1 to 3600"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\nOUTER_PORTS_FILE=\n",
                Some(3),
                &["key OUTER_PORTS_FILE: empty"],
            ),
            (
                "[DEFAULT]\nINNER_PORT=1111\ngarbage\n",
                Some(3),
                &["expected key=value or [section]"],
            ),
            (
                "[DEFAULT\nINNER_PORT=1111\n",
                Some(1),
                &["does not end with ']'"],
            ),
            ("[]\nINNER_PORT=1111\n", Some(1), &["bad section header"]),
            ("[DEFAULT]\n=1111\n", Some(2), &["missing key"]),
            (
                "[DEFAULT]\nINNER_PORT=1111\nTOKEN=abc\\\n",
                Some(3),
                &["line continuation"],
            ),
        ] {
            let (s, e) = server_err(cfg, MAPPER);
            assert_err(&e, &s.0.join("forward_server.cfg"), parts);
            assert_eq!(e.line(), line, "{e}");
            if let Some(l) = line {
                assert!(e.to_string().contains(&format!("line {l}: ")), "{e}");
            }
        }
    }

    #[test]
    fn mapper_errors() {
        for (mapper, line, parts) in [
            (
                "[MAPPER]\n1234=10.0.0.1\n",
                2,
                &[r#"[MAPPER] key 1234: target "10.0.0.1" has no port"#][..],
            ),
            (
                "[MAPPER]\nssh=10.0.0.1:22\n",
                2,
                &[r#"[MAPPER] key ssh: public port "ssh" is not a port (1-65535)"#],
            ),
            (
                "[MAPPER]\n0=10.0.0.1:22\n",
                2,
                &["[MAPPER] key 0: public port"],
            ),
            (
                "[MAPPER]\n65536=10.0.0.1:22\n",
                2,
                &["[MAPPER] key 65536: public port"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:99999\n",
                2,
                &["[MAPPER] key 1234", "is not a port"],
            ),
            (
                "[MAPPER]\n1234=bad host:22\n",
                2,
                &["[MAPPER] key 1234", "not allowed"],
            ),
            (
                "[MAPPER]\n4444=192.168.105:22\n",
                2,
                &["[MAPPER] key 4444", "not a valid IPv4 address"],
            ),
            (
                "[MAPPER]\n1234=::1:22\n",
                2,
                &["[MAPPER] key 1234", "brackets"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n\n1234=10.0.0.2:22\n",
                4,
                &["public port 1234 is mapped twice (first on line 2)"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n01234=10.0.0.2:22\n",
                3,
                &["mapped twice (first on line 2)"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1=x\n[MAPPER]\n1234=10.0.0.2:22\n",
                6,
                &["mapped twice (first on line 2)"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[MAPPER]\n1234=10.0.0.2:22\n",
                4,
                &["mapped twice (first on line 2)"],
            ),
            (
                "[MAPPER]\n1111=10.0.0.1:22\n",
                2,
                &["[MAPPER] key 1111: public port 1111 is the INNER_PORT of"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n4321=office\n",
                4,
                &["[TAG] key 4321: port 4321 has no [MAPPER] entry"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=\n",
                4,
                &["[TAG] key 1234: empty tag"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=  # none\n",
                4,
                &["[TAG] key 1234: empty tag"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=my office\n",
                4,
                &["[TAG] key 1234", "whitespace"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234=a\n1234=b\n",
                5,
                &["port 1234 is tagged twice (first on line 4)"],
            ),
            (
                "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\nx=a\n",
                4,
                &["[TAG] key x: public port \"x\""],
            ),
            ("[MAPPER]\n1234 10.0.0.1\n", 2, &["expected key=value"]),
        ] {
            let (s, e) = server_err(CFG, mapper);
            assert_err(&e, &s.0.join("port_mapper.cfg"), parts);
            assert_eq!(e.line(), Some(line), "{e}");
            assert!(e.to_string().contains(&format!("line {line}: ")), "{e}");
        }
        let long = format!(
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234={}\n",
            "t".repeat(65)
        );
        let (_s, e) = server_err(CFG, &long);
        assert!(e.to_string().contains("longer than 64 bytes"), "{e}");
        let ok = format!(
            "[MAPPER]\n1234=10.0.0.1:22\n[TAG]\n1234={}\n",
            "t".repeat(64)
        );
        let s = Scratch::new("tag64");
        assert_eq!(
            load_server(&s.server(CFG, &ok)).unwrap().mappings[0]
                .tag
                .len(),
            64
        );
    }

    #[test]
    fn exact_brief_message() {
        let (s, e) = server_err(CFG, "[MAPPER]\n1234=10.0.0.1\n");
        let file = s.0.join("port_mapper.cfg");
        assert_eq!(
            e.to_string(),
            format!(
                r#"{}: line 2: [MAPPER] key 1234: target "10.0.0.1" has no port"#,
                file.display()
            )
        );
    }

    #[test]
    fn client_positionals() {
        let cfg = client_from_args(&client_args(None, Some("221.10.12.34"), Some("1111"))).unwrap();
        assert_eq!(cfg.server_host, "221.10.12.34");
        assert_eq!(cfg.server_port, 1111);
        assert_eq!(cfg.tag, "default");
        assert!(cfg.token.is_none());
        assert_eq!(cfg.log_level, None);
        assert!(cfg.warnings.is_empty());

        for (ip, want) in [
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("tunnel.example.com", "tunnel.example.com"),
        ] {
            let cfg = client_from_args(&client_args(None, Some(ip), Some("1"))).unwrap();
            assert_eq!(cfg.server_host, want);
        }

        let mut args = client_args(None, Some("10.0.0.1"), Some("1111"));
        args.tag = Some("office".into());
        args.token = Some("s3cret".into());
        let cfg = client_from_args(&args).unwrap();
        assert_eq!(cfg.tag, "office");
        assert_eq!(cfg.token.unwrap().expose(), b"s3cret");
    }

    #[test]
    fn client_cli_errors() {
        let e = client_from_args(&client_args(None, Some("10.0.0.1"), Some("abc"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"command line: server_port: "abc" is not a port (1-65535)"#
        );
        assert_eq!(e.file(), None);
        for (ip, port, want) in [
            ("", "1", "command line: server_ip: empty server address"),
            ("[nope]", "1", "command line: server_ip:"),
            ("1.2.3:4", "1", "command line: server_ip:"),
            ("bad name", "1", "command line: server_ip:"),
            ("10.0.0.1", "0", "command line: server_port:"),
            ("10.0.0.1", "65536", "command line: server_port:"),
        ] {
            let e = client_from_args(&client_args(None, Some(ip), Some(port))).unwrap_err();
            assert!(e.to_string().starts_with(want), "{ip} {port}: {e}");
        }
        let mut args = client_args(None, Some("10.0.0.1"), Some("1"));
        args.tag = Some("a b".into());
        assert!(
            client_from_args(&args)
                .unwrap_err()
                .to_string()
                .starts_with("command line: --tag: ")
        );
        args.tag = Some(String::new());
        assert!(
            client_from_args(&args)
                .unwrap_err()
                .to_string()
                .contains("--tag: empty tag")
        );
        args.tag = None;
        args.token = Some(String::new());
        assert!(
            client_from_args(&args)
                .unwrap_err()
                .to_string()
                .contains("--token: empty token")
        );
        let e = client_from_args(&client_args(None, None, None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command line: server_ip: missing"),
            "{e}"
        );
    }

    #[test]
    fn client_file() {
        let s = Scratch::new("client");
        let path = s.write(
            "forward_client.cfg",
            "[default]\nserver_ip = [2001:db8::7]  # server\nSERVER_PORT=1111\nTag=office\nTOKEN=file-token\n\
             LOG_LEVEL=debug\nHEARTBEAT=30\n[MORE]\n",
        );
        let cfg = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap();
        assert_eq!(cfg.server_host, "2001:db8::7");
        assert_eq!(cfg.server_port, 1111);
        assert_eq!(cfg.tag, "office");
        assert_eq!(cfg.token.as_ref().unwrap().expose(), b"file-token");
        assert_eq!(cfg.log_level, Some(LevelFilter::Debug));
        let f = path.display().to_string();
        assert!(cfg.warnings.contains(&format!(
            "{f}: line 7: [DEFAULT] key HEARTBEAT: unknown key, ignored"
        )));
        assert!(
            cfg.warnings
                .contains(&format!("{f}: line 8: unknown section [MORE], ignored"))
        );

        let mut args = client_args(Some(path.clone()), None, None);
        args.tag = Some("lab".into());
        args.token = Some("flag-token".into());
        let cfg = client_from_args(&args).unwrap();
        assert_eq!(cfg.tag, "lab");
        assert_eq!(cfg.token.unwrap().expose(), b"flag-token");

        let defaults = s.write(
            "c2.cfg",
            "[DEFAULT]\nSERVER_IP=tunnel.example.com\nSERVER_PORT=1111\n",
        );
        let cfg = client_from_args(&client_args(Some(defaults), None, None)).unwrap();
        assert_eq!(cfg.tag, "default");
        assert!(cfg.token.is_none());
    }

    #[test]
    fn client_file_errors() {
        let s = Scratch::new("client-err");
        for (text, line, parts) in [
            (
                "[DEFAULT]\nSERVER_PORT=1111\n",
                None,
                &["[DEFAULT] key SERVER_IP: required key is missing"][..],
            ),
            (
                "[DEFAULT]\nSERVER_IP=10.0.0.1\n",
                None,
                &["[DEFAULT] key SERVER_PORT: required key is missing"],
            ),
            (
                "[DEFAULT]\nSERVER_IP=\nSERVER_PORT=1\n",
                Some(2),
                &["[DEFAULT] key SERVER_IP: empty server address"],
            ),
            (
                "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=x\n",
                Some(3),
                &[r#"key SERVER_PORT: "x" is not a port"#],
            ),
            (
                "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTAG=a b\n",
                Some(4),
                &["key TAG", "whitespace"],
            ),
            (
                "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nTOKEN=\n",
                Some(4),
                &["key TOKEN: empty token"],
            ),
            (
                "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\nLOG_LEVEL=x\n",
                Some(4),
                &["key LOG_LEVEL"],
            ),
            (
                "[DEFAULT]\nSERVER_IP=a\nSERVER_IP=b\nSERVER_PORT=1\n",
                Some(3),
                &["key given twice"],
            ),
        ] {
            let path = s.write("forward_client.cfg", text);
            let e = client_from_args(&client_args(Some(path.clone()), None, None)).unwrap_err();
            assert_err(&e, &path, parts);
            assert_eq!(e.line(), line, "{e}");
        }
        let missing = s.0.join("absent.cfg");
        let e = client_from_args(&client_args(Some(missing.clone()), None, None)).unwrap_err();
        assert_err(&e, &missing, &["cannot read config file", "No such file"]);
        let path = s.write("ok.cfg", "[DEFAULT]\nSERVER_IP=10.0.0.1\nSERVER_PORT=1\n");
        let e = client_from_args(&client_args(Some(path), Some("10.0.0.1"), None)).unwrap_err();
        assert!(e.to_string().starts_with("command line: --config: "), "{e}");
    }

    #[test]
    fn sample_files_load() {
        let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
        let cfg = load_server(&etc.join("forward_server.cfg")).unwrap();
        assert_eq!(cfg.mapper_file, etc.join("port_mapper.cfg"));
        assert_eq!(cfg.inner_port, 1111);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let ssh = cfg.mappings.iter().find(|m| m.public_port == 1234).unwrap();
        assert_eq!(ssh.target.to_string(), "192.168.10.5:22");
        assert_eq!(ssh.tag, "default");

        let client = client_from_args(&client_args(
            Some(etc.join("forward_client.cfg")),
            None,
            None,
        ))
        .unwrap();
        assert_eq!(client.server_port, 1111);
        assert_eq!(client.tag, "default");
        assert!(client.warnings.is_empty(), "{:?}", client.warnings);
    }
}
