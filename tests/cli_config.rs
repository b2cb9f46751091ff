//! Command line, configuration errors, exit codes and signals.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Run `server <cfg>` expecting a configuration error: exit status 2 within 5 s, stderr names
/// `file_named` and every string in `mentions` (case-insensitive). Returns stderr.
fn expect_config_error(cfg: &str, file_named: &str, mentions: &[&str]) -> String {
    let mut p = spawn("server", &["server", cfg], &[]);
    let status = p.wait_exit(Duration::from_secs(5));
    let log = p.log_text();
    let Some(status) = status else {
        panic!("server with a bad config still running after 5 s; stderr:\n{log}");
    };
    assert_eq!(
        status.code(),
        Some(2),
        "exit status for a bad config; stderr:\n{log}"
    );
    assert!(
        log.contains(file_named),
        "stderr should name {file_named:?}:\n{log}"
    );
    let lower = log.to_lowercase();
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "stderr should mention {m:?}:\n{log}"
        );
    }
    assert!(
        !log.contains("listening for clients"),
        "listened before failing:\n{log}"
    );
    log
}

fn mapper(dir: &TempDir, body: &str) {
    dir.write("port_mapper.cfg", body);
}

fn server_cfg(dir: &TempDir, body: &str) -> String {
    dir.write("server.cfg", body).to_string_lossy().into_owned()
}

/// A valid server.cfg on a fresh inner port; returns its path.
fn valid_server_cfg(dir: &TempDir) -> String {
    server_cfg(
        dir,
        &format!(
            "[DEFAULT]\nINNER_PORT={}\nBIND_ADDR=127.0.0.1\n",
            free_port()
        ),
    )
}

/// `server.cfg` holds `cfg`, beside a valid mapping file: expect an error naming server.cfg.
fn expect_server_cfg_error(name: &str, cfg: &str, mentions: &[&str]) {
    let dir = TempDir::new(name);
    mapper(&dir, &format!("[MAPPER]\n{}=127.0.0.1:9\n", free_port()));
    let cfg = server_cfg(&dir, cfg);
    expect_config_error(&cfg, "server.cfg", mentions);
}

/// The mapping file holds `map`, beside a valid server.cfg: expect an error naming
/// port_mapper.cfg.
fn expect_mapper_error(name: &str, map: &str, mentions: &[&str]) {
    let dir = TempDir::new(name);
    mapper(&dir, map);
    let cfg = valid_server_cfg(&dir);
    expect_config_error(&cfg, "port_mapper.cfg", mentions);
}

#[test]
fn config_missing_file() {
    let dir = TempDir::new("cfg-missing");
    let path = dir.path().join("does-not-exist.cfg");
    expect_config_error(&path.to_string_lossy(), "does-not-exist.cfg", &[]);
}

#[test]
fn config_missing_inner_port() {
    expect_server_cfg_error(
        "cfg-no-inner",
        "[DEFAULT]\nBIND_ADDR=127.0.0.1\nLOG_LEVEL=INFO\n",
        &["INNER_PORT"],
    );
}

#[test]
fn config_port_out_of_range() {
    expect_server_cfg_error(
        "cfg-70000",
        "[DEFAULT]\nINNER_PORT=70000\nBIND_ADDR=127.0.0.1\n",
        &["INNER_PORT"],
    );
    // Out of range in the mapping file too (public port and target port).
    expect_mapper_error("cfg-70000-map", "[MAPPER]\n70000=127.0.0.1:9\n", &["70000"]);
    let public = free_port();
    expect_mapper_error(
        "cfg-70000-target",
        &format!("[MAPPER]\n{public}=127.0.0.1:70000\n"),
        &[&public.to_string()],
    );
}

#[test]
fn config_mapping_without_port() {
    let public = free_port();
    expect_mapper_error(
        "cfg-map-noport",
        &format!("[MAPPER]\n{public}=127.0.0.1\n"),
        &[&public.to_string()],
    );
}

#[test]
fn config_duplicate_public_port() {
    let public = free_port();
    expect_mapper_error(
        "cfg-dup",
        &format!("[MAPPER]\n{public}=127.0.0.1:22\n{public}=127.0.0.1:80\n"),
        &[&public.to_string()],
    );
}

#[test]
fn config_unparsable_ini() {
    expect_server_cfg_error(
        "cfg-unparsable",
        &format!("[DEFAULT\nINNER_PORT={}\n", free_port()),
        &[],
    );
    // An unparsable mapping file is named too.
    expect_mapper_error("cfg-unparsable-map", "[MAPPER\n1234=127.0.0.1:9\n", &[]);
}

#[test]
fn config_bad_log_level() {
    expect_server_cfg_error(
        "cfg-loglevel",
        &format!(
            "[DEFAULT]\nINNER_PORT={}\nBIND_ADDR=127.0.0.1\nLOG_LEVEL=LOUD\n",
            free_port()
        ),
        &["LOG_LEVEL"],
    );
}

#[test]
fn public_port_in_use_exits_1_naming_the_port() {
    let dir = TempDir::new("port-in-use");
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind blocker");
    let busy = blocker.local_addr().expect("addr").port();
    mapper(&dir, &format!("[MAPPER]\n{busy}=127.0.0.1:9\n"));
    let cfg = valid_server_cfg(&dir);
    let mut p = spawn("server", &["server", &cfg], &[]);
    let status = p.wait_exit(Duration::from_secs(5));
    let log = p.log_text();
    let Some(status) = status else {
        panic!("server still running after 5 s with public port {busy} taken; stderr:\n{log}");
    };
    assert_eq!(status.code(), Some(1), "exit status; stderr:\n{log}");
    assert!(
        log.contains(&busy.to_string()),
        "stderr should name port {busy}:\n{log}"
    );
    drop(blocker);
}

/// Start a server with one attached client and an open stream, send `sig` to both, and
/// expect exit status 0 within 2 s from each.
fn signal_exits_zero(sig: i32, name: &str) {
    let dir = TempDir::new(name);
    let echo = Target::echo();
    let (mut server, mut client, port) = tunnel_to(&dir, echo.target());
    let mut s = visit(port);
    echo_on(&mut s, b"open stream").expect("echo");

    for p in [&mut client, &mut server] {
        let started = Instant::now();
        p.signal(sig);
        let status = p.wait_exit(Duration::from_secs(2));
        let Some(status) = status else {
            panic!(
                "{} still running 2 s after signal {sig}:\n{}",
                p.name,
                p.tail(20)
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit status after signal {sig}:\n{}",
            p.name,
            p.tail(20)
        );
        eprintln!(
            "{} exited {:?} after signal {sig}",
            p.name,
            started.elapsed()
        );
    }
    assert_closed(
        &mut s,
        Duration::from_secs(2),
        "visitor after the server exited",
    );
}

#[test]
fn sigterm_exits_0_promptly() {
    signal_exits_zero(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_exits_0_promptly() {
    signal_exits_zero(libc::SIGINT, "sigint");
}

#[test]
fn help_names_the_positionals() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("run -h");
        assert!(
            out.status.success(),
            "{args:?} exit status {:?}",
            out.status
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let server = run(&["server", "-h"]);
    assert!(server.contains("cfg_file"), "server -h:\n{server}");
    let client = run(&["client", "-h"]);
    for name in ["server_ip", "server_port"] {
        assert!(
            client.contains(name),
            "client -h should name {name}:\n{client}"
        );
    }
}
