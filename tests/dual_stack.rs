//! Without BIND_ADDR the server listens on `::` for IPv6 and IPv4 alike; BIND_ADDR=0.0.0.0
//! keeps IPv4 only.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A server configuration like `setup`'s, with `bind` as its BIND_ADDR line (or none).
fn write_cfg(dir: &TempDir, setup: &ServerSetup, bind: Option<&str>) -> std::path::PathBuf {
    let text = setup.server_cfg_text().replace("BIND_ADDR=127.0.0.1\n", "");
    let text = match bind {
        Some(b) => format!("{text}BIND_ADDR={b}\n"),
        None => text,
    };
    dir.write("port_mapper.cfg", &setup.mapper_text());
    dir.write("server.cfg", &text)
}

#[test]
fn the_default_server_serves_ipv6_and_ipv4() {
    if !has_ipv6_loopback() {
        eprintln!("skipping: no IPv6 loopback on this host");
        return;
    }
    let dir = TempDir::new("dual-stack");
    let (_echo, setup, port) = echo_mapping();
    let cfg = write_cfg(&dir, &setup, None);
    let server = start_server_cfg(&cfg, "server");
    assert!(
        server.log_text().contains("(IPv6 and IPv4)"),
        "{}",
        server.tail(10)
    );
    let inner = setup.inner_port.to_string();
    let _client = attach_spawned(&server, || spawn("client", &["client", "::1", &inner], &[]));
    assert_echo(port, "a visitor over IPv4");
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mut s = with_timeouts(connect_retry(v6, READY).expect("connect over IPv6"));
    echo_on(&mut s, b"over IPv6").unwrap();
    // A client over IPv4 is logged as the IPv4 address it is, not as ::ffff:127.0.0.1.
    let _second = attach_spawned(&server, || {
        spawn("client2", &["client", "127.0.0.1", &inner], &[])
    });
    let log = server.log_text();
    assert!(log.contains("tunnel attached: [::1]:"), "{log}");
    assert!(log.contains("tunnel attached: 127.0.0.1:"), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
}

#[test]
fn bind_addr_0_0_0_0_keeps_ipv4_only() {
    if !has_ipv6_loopback() {
        eprintln!("skipping: no IPv6 loopback on this host");
        return;
    }
    let dir = TempDir::new("ipv4-only");
    let (_echo, setup, port) = echo_mapping();
    let cfg = write_cfg(&dir, &setup, Some("0.0.0.0"));
    let _server = start_server_cfg(&cfg, "server");
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&v6, Duration::from_secs(2)).is_err(),
        "an IPv4-only server accepted over IPv6"
    );
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(TcpStream::connect_timeout(&v4, Duration::from_secs(2)).is_ok());
}
