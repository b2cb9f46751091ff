//! The config module's unit tests: the fixtures they share (a scratch folder, minimal files,
//! the client's command line, an error check) and the tests of the pieces that stand alone
//! (log levels, the masked secret, error formats). `server` loads server and mapping files,
//! `client` the client's command line and file, `edit` changes mapping files in place;
//! `Target::parse` and `diff` are tested beside them.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

mod client;
mod edit;
mod server;

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

/// Mappings as (port, target, tag), to compare with [`want`].
fn triples(list: &[Mapping]) -> Vec<(u16, String, String)> {
    list.iter()
        .map(|m| (m.public_port, m.target.to_string(), m.tag.clone()))
        .collect()
}

/// The (port, target, tag) triples `list` writes with `&str`.
fn want(list: &[(u16, &str, &str)]) -> Vec<(u16, String, String)> {
    list.iter()
        .map(|&(p, t, g)| (p, t.to_string(), g.to_string()))
        .collect()
}

fn client_args(config: Option<PathBuf>, ip: Option<&str>, port: Option<&str>) -> ClientInput {
    ClientInput {
        server_ip: ip.map(str::to_string),
        server_port: port.map(str::to_string),
        config,
        tag: None,
        token: None,
        ..Default::default()
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

/// Check that `e` names `file`, and that its text contains each of `parts`.
fn assert_err(e: &ConfigError, file: &Path, parts: &[&str]) {
    let text = e.to_string();
    assert_eq!(e.file(), Some(file), "{text}");
    assert!(text.starts_with(&format!("{}: ", file.display())), "{text}");
    for p in parts {
        assert!(text.contains(p), "{text:?} lacks {p:?}");
    }
}
