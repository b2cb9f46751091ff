//! `[PROXY]`: the target of a mapping that asks for it reads a PROXY protocol header (v1 or
//! v2) with the visitor's address and the public address before the visitor's bytes.
//! Visitors from another source than 127.0.0.1 come from 127.0.0.2 (a socket bound there).

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::admin::start_with_admin;
use common::*;
use tcp_forward::protocol::frame::{self, Frame};
use tcp_forward::protocol::handshake::{self, Hello, NONCE_LEN, PREAMBLE_LEN};

const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(10);
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Read a PROXY header (v1 up to its CRLF, v2 by its length) if the stream starts with one;
/// returns it and the first bytes read after it, if any.
fn read_header(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let mut h = first.to_vec();
    match first[0] {
        b'P' => {
            // v1: at most 107 bytes, ending in CRLF.
            while !h.ends_with(b"\r\n") {
                if h.len() >= 107 {
                    return Err(io::Error::other(format!("v1 header too long: {h:?}")));
                }
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                h.push(b[0]);
            }
            Ok((h, Vec::new()))
        }
        b'\r' => {
            let mut rest = [0u8; 15];
            s.read_exact(&mut rest)?;
            h.extend_from_slice(&rest);
            let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            h.extend_from_slice(&body);
            Ok((h, Vec::new()))
        }
        _ => Ok((Vec::new(), h)),
    }
}

/// A target that reports each connection's PROXY header (empty: none) and then echoes.
fn header_target(bind: &str) -> (Target, Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let t = Target::spawn(bind, move |mut s| {
        let Ok((header, early)) = read_header(&mut s) else {
            return;
        };
        let _ = tx.lock().map(|tx| tx.send(header));
        if s.write_all(&early).is_err() {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
    .expect("bind the target");
    (t, rx)
}

fn echo_ok(s: &mut TcpStream, what: &str) {
    if let Err(e) = echo_on(s, &pattern(11, 100_000)) {
        panic!("{what}: no echo: {e}");
    }
}

fn next_header(rx: &Receiver<Vec<u8>>, what: &str) -> Vec<u8> {
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{what}: the target saw no connection: {e}"))
}

fn v1_line(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 header checked byte by byte; returns (source, destination).
fn parse_v2(h: &[u8]) -> (SocketAddr, SocketAddr) {
    assert_eq!(&h[..12], V2_SIGNATURE, "signature: {h:?}");
    assert_eq!(h[12], 0x21, "version 2, command PROXY");
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    assert_eq!(h.len(), 16 + len);
    let b = &h[16..];
    let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    match h[13] {
        0x11 => {
            assert_eq!(len, 12, "TCP over IPv4 carries 12 bytes");
            let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
            (
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            )
        }
        0x21 => {
            assert_eq!(len, 36, "TCP over IPv6 carries 36 bytes");
            let ip = |at: usize| {
                let a: [u8; 16] = b[at..at + 16].try_into().unwrap();
                std::net::Ipv6Addr::from(a)
            };
            (
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            )
        }
        f => panic!("family/transport 0x{f:02x}"),
    }
}

fn proxy_setup(version: &str) -> (ServerSetup, u16, Target, Receiver<Vec<u8>>) {
    let (target, rx) = header_target("127.0.0.1:0");
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(target.target(), None);
    setup.mapper_extra = vec!["[PROXY]".into(), format!("{port}={version}")];
    (setup, port, target, rx)
}

#[test]
fn a_v1_target_reads_the_visitors_address_then_the_data() {
    let dir = TempDir::new("proxy-v1");
    let (setup, port, _target, rx) = proxy_setup("v1");
    let server = setup.start(&dir);
    server.wait_for_line(&format!("public port {port} "), READY);
    assert!(
        server.log_text().contains(", PROXY v1)"),
        "{}",
        server.tail(10)
    );
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    let mut v = connect_from(OTHER, port).expect("visit from 127.0.0.2");
    let vport = v.local_addr().unwrap().port();
    echo_ok(&mut v, "v1 visitor");
    let want = format!("PROXY TCP4 127.0.0.2 127.0.0.1 {vport} {port}\r\n");
    assert_eq!(
        String::from_utf8_lossy(&next_header(&rx, "v1")),
        want,
        "the v1 header"
    );

    // Every visitor gets its own header; one from 127.0.0.1 too.
    let mut v = visit(port);
    let vport = v.local_addr().unwrap().port();
    echo_ok(&mut v, "second visitor");
    assert_eq!(
        next_header(&rx, "second"),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {vport} {port}\r\n").into_bytes()
    );
}

#[test]
fn a_v2_target_reads_the_binary_header_over_tls_too() {
    let dir = TempDir::new("proxy-v2");
    let (target, rx) = header_target("127.0.0.1:0");
    let mut setup = ServerSetup::new();
    let port = setup.map(target.target(), None);
    // The value is read in any case.
    setup.mapper_extra = vec!["[proxy]".into(), format!("{port}=V2")];
    let (_server, _client) = server_and_client(&dir, &setup);

    let mut v = connect_from(OTHER, port).expect("visit from 127.0.0.2");
    let vport = v.local_addr().unwrap().port();
    // The visitor speaks first: its bytes may travel with the OPEN and wait for the
    // connect, still behind the header.
    v.write_all(b"early bytes ").unwrap();
    let mut got = [0u8; 12];
    v.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"early bytes ");
    echo_ok(&mut v, "v2 visitor");
    let h = next_header(&rx, "v2");
    let mut want = V2_SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 127, 0, 0, 2, 127, 0, 0, 1]);
    want.extend_from_slice(&vport.to_be_bytes());
    want.extend_from_slice(&port.to_be_bytes());
    assert_eq!(h, want, "the v2 header, byte by byte");
    assert_eq!(
        parse_v2(&h),
        (
            SocketAddr::from((OTHER, vport)),
            SocketAddr::from(([127, 0, 0, 1], port))
        )
    );
}

#[test]
fn an_ipv6_visitor_gets_tcp6_and_a_dual_stack_ipv4_one_tcp4() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback (::1) on this host");
        return;
    }
    for version in ["v1", "v2"] {
        let dir = TempDir::new(&format!("proxy-v6-{version}"));
        let (setup, port, _target, rx) = proxy_setup(version);
        // Without BIND_ADDR the public port listens on [::] for both families.
        let text = setup.server_cfg_text().replace("BIND_ADDR=127.0.0.1\n", "");
        let cfg = dir.write("server.cfg", &text);
        dir.write("port_mapper.cfg", &setup.mapper_text());
        let server = start_server_cfg(&cfg, "server");
        let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

        let mut v6 =
            with_timeouts(TcpStream::connect(("::1", port)).expect("visit over IPv6 loopback"));
        let src = v6.local_addr().unwrap();
        echo_ok(&mut v6, "IPv6 visitor");
        let h = next_header(&rx, "IPv6");
        let dst: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        if version == "v1" {
            assert_eq!(
                String::from_utf8_lossy(&h),
                String::from_utf8_lossy(&v1_line(src, dst))
            );
            assert!(h.starts_with(b"PROXY TCP6 ::1 ::1 "));
        } else {
            assert_eq!(h[13], 0x21, "AF_INET6, STREAM");
            assert_eq!(parse_v2(&h), (src, dst));
        }

        // The dual-stack socket sees an IPv4 visitor as ::ffff:127.0.0.2: sent as IPv4.
        let mut v4 = connect_from(OTHER, port).expect("visit from 127.0.0.2");
        let src = v4.local_addr().unwrap();
        echo_ok(&mut v4, "IPv4 visitor of a dual-stack port");
        let h = next_header(&rx, "IPv4 on dual stack");
        let dst = SocketAddr::from(([127, 0, 0, 1], port));
        if version == "v1" {
            assert_eq!(h, v1_line(src, dst));
        } else {
            assert_eq!(h[13], 0x11, "AF_INET, STREAM");
            assert_eq!(parse_v2(&h), (src, dst));
        }
    }
}

#[test]
fn a_mapping_without_proxy_sends_no_header() {
    let dir = TempDir::new("proxy-none");
    let (target, rx) = header_target("127.0.0.1:0");
    let (other, other_rx) = header_target("127.0.0.1:0");
    let mut setup = ServerSetup::new();
    let plain = setup.map(target.target(), None);
    let proxied = setup.map(other.target(), None);
    setup.mapper_extra = vec!["[PROXY]".into(), format!("{proxied}=v1")];
    let (_server, _client) = server_and_client_over(&dir, &setup, Tls::Off);
    let mut v = connect_from(OTHER, plain).unwrap();
    v.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    v.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello", "the target's first bytes are the visitor's");
    echo_ok(&mut v, "plain visitor");
    assert_eq!(next_header(&rx, "plain"), b"".to_vec());
    echo_ok(&mut visit(proxied), "the proxied port beside it");
    assert!(next_header(&other_rx, "proxied").starts_with(b"PROXY TCP4 127.0.0.1 "));
}

#[test]
fn a_reload_adding_proxy_applies_to_new_visitors() {
    let dir = TempDir::new("proxy-reload");
    let (target, rx) = header_target("127.0.0.1:0");
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(target.target(), None);
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    let mut held = visit(port);
    echo_ok(&mut held, "before the reload");
    assert_eq!(next_header(&rx, "before"), b"".to_vec());
    assert!(
        admin.get("/api/mappings").json()["mappings"][0]
            .get("proxy")
            .is_none()
    );

    setup.mapper_extra = vec!["[PROXY]".into(), format!("{port}=v2")];
    dir.write("port_mapper.cfg", &setup.mapper_text());
    server.signal(libc::SIGHUP);
    server.wait_for_line("reloaded", READY);
    assert_eq!(
        admin.get("/api/mappings").json()["mappings"][0]["proxy"],
        "v2"
    );

    echo_ok(
        &mut held,
        "the open stream after the reload (no header mid-stream)",
    );
    let mut v = connect_from(OTHER, port).unwrap();
    let vport = v.local_addr().unwrap().port();
    echo_ok(&mut v, "after the reload");
    let h = next_header(&rx, "after");
    assert_eq!(
        parse_v2(&h),
        (
            SocketAddr::from((OTHER, vport)),
            SocketAddr::from(([127, 0, 0, 1], port))
        )
    );

    // A PUT of the mapping keeps its [PROXY] line; a DELETE removes it.
    let body = format!(r#"{{"target": "{}", "tag": "other"}}"#, target.target());
    let r = admin.call("PUT", &format!("/api/mappings/{port}"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["proxy"], "v2", "{}", r.text());
    let file = std::fs::read_to_string(dir.path().join("port_mapper.cfg")).unwrap();
    assert!(file.contains(&format!("[PROXY]\n{port}=v2")), "{file}");
    let r = admin.call("DELETE", &format!("/api/mappings/{port}"), None);
    assert!(r.status < 300, "{}", r.text());
    let file = std::fs::read_to_string(dir.path().join("port_mapper.cfg")).unwrap();
    assert!(!file.contains(&format!("{port}=v2")), "{file}");
}

/// A client of protocol version 2 before `[PROXY]`: it completes the handshake and never
/// announces that it can write a PROXY header.
fn old_client(inner_port: u16) -> TcpStream {
    let mut s = connect_retry(SocketAddr::from(([127, 0, 0, 1], inner_port)), WAIT)
        .expect("connect to the server");
    let mut pre = [0u8; PREAMBLE_LEN + 8 + 1 + NONCE_LEN];
    s.read_exact(&mut pre).expect("preamble and challenge");
    let hello = Hello {
        window: 1 << 20,
        tag: "default",
        nonce: [7; NONCE_LEN],
        proof: None,
    }
    .encode();
    let mut out = handshake::preamble().to_vec();
    frame::encode(&Frame::Hello(&hello), &mut out);
    s.write_all(&out).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).expect("accept");
    assert_eq!(head[0], 0x03, "ACCEPT");
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
    s.read_exact(&mut rest).unwrap();
    s
}

#[test]
fn a_client_that_cannot_write_the_header_gets_no_such_visitor() {
    let dir = TempDir::new("proxy-old-client");
    let (setup, port, _target, rx) = proxy_setup("v1");
    let server = setup.start(&dir);
    let mut old = old_client(setup.inner_port);
    server.wait_for_line("tunnel attached", READY);

    let mut v = visit(port);
    let r = wait_closed(&mut v, WAIT);
    assert!(r.is_closed(), "the visitor should be closed: {r:?}");
    server.wait_for_line("no client of tag default can write a PROXY header", READY);
    // Nothing was opened on the old client's tunnel.
    old.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match old.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(is_transient(&e), "{e}");
                break;
            }
        }
    }
    // Walk the frames that came (8-byte headers: type, flags, u16 length, u32 stream;
    // a long DATA frame has a u32 length after it): none is an OPEN.
    let mut at = 0;
    while at + 8 <= got.len() {
        let (kind, flags) = (got[at], got[at + 1]);
        assert_ne!(kind, 0x10, "an OPEN reached the old client");
        let (header, len) = if kind == 0x13 && flags & 1 != 0 && at + 12 <= got.len() {
            let b = [got[at + 8], got[at + 9], got[at + 10], got[at + 11]];
            (12, u32::from_be_bytes(b) as usize)
        } else {
            (
                8,
                usize::from(u16::from_be_bytes([got[at + 2], got[at + 3]])),
            )
        };
        at += header + len;
    }
    assert!(rx.try_recv().is_err(), "the target was connected");
}

#[test]
fn bad_proxy_values_are_config_errors() {
    let inner = free_port();
    let mapper = "[MAPPER]\n4001=127.0.0.1:9\n[PROXY]\n";
    for (name, text, line, mentions) in [
        (
            "version",
            format!("{mapper}4001=v3\n"),
            4,
            &["[PROXY] key 4001", "\"v3\" is not a PROXY protocol version"][..],
        ),
        (
            "empty",
            format!("{mapper}4001=\n"),
            4,
            &["[PROXY] key 4001", "expected v1 or v2"],
        ),
        (
            "unmapped",
            format!("{mapper}4002=v1\n"),
            4,
            &["[PROXY] key 4002", "no [MAPPER] or [UDP] entry"],
        ),
        (
            "twice",
            format!("{mapper}4001=v1\n4001=v2\n"),
            5,
            &["port 4001 has two [PROXY] lines", "line 4"],
        ),
        (
            "not-a-port",
            format!("{mapper}http=v1\n"),
            4,
            &["not a port"],
        ),
    ] {
        let dir = TempDir::new(&format!("proxy-err-{name}"));
        dir.write("port_mapper.cfg", &text);
        dir.write(
            "server.cfg",
            &format!("[DEFAULT]\nINNER_PORT={inner}\nBIND_ADDR=127.0.0.1\n"),
        );
        expect_server_config_error(&dir, "port_mapper.cfg", line, mentions);
    }
}
