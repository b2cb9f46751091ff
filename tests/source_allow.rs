//! Who may connect to the server: `[ALLOW]` lists of public ports, `ALLOW` for clients on
//! INNER_PORT, `MAX_PER_SOURCE`, their reload, and their configuration errors. Sources other
//! than 127.0.0.1 are other loopback addresses (a visitor socket bound to 127.0.0.2).

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::admin::{Admin, start_with_admin};
use common::*;

/// How long a refused connection may stay open before the test fails.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

fn visit_from(src: Ipv4Addr, port: u16) -> TcpStream {
    let s = connect_from(src, port)
        .unwrap_or_else(|e| panic!("cannot connect to port {port} from {src}: {e}"));
    let _ = s.set_nodelay(true);
    s
}

const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn assert_refused(src: Ipv4Addr, port: u16, what: &str) {
    let mut s = visit_from(src, port);
    let r = wait_closed(&mut s, CLOSED_WITHIN);
    assert!(r.is_closed(), "{what}: still open ({r:?})");
    assert_eq!(r.bytes(), 0, "{what}: data before the close");
}

fn assert_served(s: &mut TcpStream, what: &str) {
    if let Err(e) = echo_on(s, &pattern(7, 1000)) {
        panic!("{what}: no echo: {e}");
    }
}

/// The value of one series in the server's `/metrics`.
fn metric(admin: &Admin, series: &str) -> Option<f64> {
    let text = admin.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

fn refused_visitors(admin: &Admin, port: u16) -> f64 {
    let series =
        format!("tcpforward_visitors_total{{port=\"{port}\",result=\"refused\",proto=\"tcp\"}}");
    metric(admin, &series).unwrap_or_else(|| panic!("no {series}"))
}

#[test]
fn allow_section_serves_listed_sources_and_closes_others() {
    let dir = TempDir::new("allow-section");
    let echo = Target::echo();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(echo.target(), None);
    let open = setup.map(echo.target(), None);
    setup.mapper_extra = vec!["[ALLOW]".into(), format!("{port}=127.0.0.1/32, ::1")];
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    assert_served(&mut visit(port), "a visitor from 127.0.0.1");
    assert_refused(OTHER, port, "a visitor from 127.0.0.2");
    server.wait_for_line("refused visitor 127.0.0.2", READY);
    assert_eq!(refused_visitors(&admin, port), 1.0);
    // The target never saw the refused visitor.
    assert_eq!(echo.accepted(), 1);
    // A port without a list serves everyone.
    assert_served(&mut visit_from(OTHER, open), "127.0.0.2 on an open port");
    assert_eq!(refused_visitors(&admin, open), 0.0);

    let list = admin.get_json("/api/mappings");
    let m = list["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["port"] == u64::from(port))
        .unwrap();
    assert_eq!(m["allow"], serde_json::json!(["127.0.0.1/32", "::1/128"]));
    let o = list["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["port"] == u64::from(open))
        .unwrap();
    assert!(o.get("allow").is_none(), "{o}");
}

#[test]
fn allow_for_clients_refuses_others_and_reload_lets_them_in() {
    let dir = TempDir::new("allow-clients");
    let echo = Target::echo();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(echo.target(), None);
    setup.extra.push("ALLOW=127.0.0.2/32".into());
    let (server, admin) = start_with_admin(&dir, &setup, None);
    assert_eq!(
        metric(&admin, "tcpforward_clients_refused_total"),
        Some(0.0)
    );
    let client = spawn_client(setup.inner_port, &Tls::Off.client());
    server.wait_for_line("refused client 127.0.0.1", READY);
    assert!(metric(&admin, "tcpforward_clients_refused_total").unwrap() >= 1.0);
    assert_eq!(server.count("tunnel attached"), 0);

    // ALLOW widened (and MAX_PER_SOURCE set) by a reload: the retrying client attaches.
    let cfg = dir.path().join("server.cfg").to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("ALLOW=127.0.0.2/32", "ALLOW=127.0.0.0/8\nMAX_PER_SOURCE=5");
    std::fs::write(&cfg, text).unwrap();
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["settings"],
        serde_json::json!(["ALLOW", "MAX_PER_SOURCE"])
    );
    assert!(
        server.try_wait_for_count("tunnel attached", 1, Duration::from_secs(20)),
        "client did not attach after the reload:\n{}",
        server.tail(30)
    );
    client.wait_for_line("tunnel up", READY);
    assert_served(&mut visit(port), "through the admitted client");
}

#[test]
fn max_per_source_caps_concurrent_visitors_and_frees_slots() {
    let dir = TempDir::new("max-per-source");
    let echo = Target::echo();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(echo.target(), None);
    setup.extra.push("MAX_PER_SOURCE=2".into());
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    let mut a = visit(port);
    let mut b = visit(port);
    assert_served(&mut a, "first visitor");
    assert_served(&mut b, "second visitor");
    assert_refused(Ipv4Addr::LOCALHOST, port, "a third visitor from 127.0.0.1");
    server.wait_for_line("MAX_PER_SOURCE", READY);
    assert_eq!(refused_visitors(&admin, port), 1.0);
    // Another address has its own count.
    assert_served(&mut visit_from(OTHER, port), "a visitor from 127.0.0.2");
    assert_served(&mut a, "the first, still open");

    // Closing one frees its slot once the stream has ended on both sides.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        let mut c = visit(port);
        match wait_closed(&mut c, Duration::from_millis(200)) {
            Closed::StillOpen { .. } => break c,
            _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            r => panic!("no slot freed after a visitor left: {r:?}"),
        }
    };
    assert_served(&mut c, "a visitor in the freed slot");
    assert_refused(Ipv4Addr::LOCALHOST, port, "a third again");
}

#[test]
fn reload_applies_a_new_allow_list_to_new_visitors_only() {
    let dir = TempDir::new("allow-reload");
    let echo = Target::echo();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(echo.target(), None);
    setup.mapper_extra = vec!["[ALLOW]".into(), format!("{port}=127.0.0.1")];
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    let mut held = visit(port);
    assert_served(&mut held, "held visitor");
    assert_refused(OTHER, port, "127.0.0.2 before the reload");

    setup.mapper_extra = vec!["[ALLOW]".into(), format!("{port}=127.0.0.2/32")];
    dir.write("port_mapper.cfg", &setup.mapper_text());
    server.signal(libc::SIGHUP);
    server.wait_for_line("reloaded", READY);
    server.wait_for_line("allow 127.0.0.2/32", READY);

    assert_served(&mut held, "the held stream after the reload");
    assert_refused(Ipv4Addr::LOCALHOST, port, "127.0.0.1 after the reload");
    assert_served(&mut visit_from(OTHER, port), "127.0.0.2 after the reload");
    assert_eq!(refused_visitors(&admin, port), 2.0);

    // Without the section, everyone is served again.
    setup.mapper_extra.clear();
    dir.write("port_mapper.cfg", &setup.mapper_text());
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], serde_json::json!([port]));
    assert_served(&mut visit(port), "127.0.0.1 with no list");
    assert_served(&mut held, "the held stream at the end");
}

#[test]
fn bad_allow_values_are_config_errors() {
    let inner = free_port();
    let cfg = |extra: &str| format!("[DEFAULT]\nINNER_PORT={inner}\nBIND_ADDR=127.0.0.1\n{extra}");
    let mapper = "[MAPPER]\n4001=127.0.0.1:9\n[ALLOW]\n";
    for (name, server_cfg, mapper_text, file, line, mentions) in [
        (
            "bad-cidr",
            cfg(""),
            format!("{mapper}4001=10.0.0.0/33\n"),
            "port_mapper.cfg",
            4,
            &["[ALLOW] key 4001", "not a prefix length (0-32)"][..],
        ),
        (
            "unmapped",
            cfg(""),
            format!("{mapper}4002=127.0.0.1\n"),
            "port_mapper.cfg",
            4,
            &["[ALLOW] key 4002", "no [MAPPER] or [UDP] entry"],
        ),
        (
            "bad-allow",
            cfg("ALLOW=127.0.0.1/x\n"),
            "[MAPPER]\n4001=127.0.0.1:9\n".to_string(),
            "server.cfg",
            4,
            &["[DEFAULT] key ALLOW", "not a prefix length"],
        ),
        (
            "bad-max",
            cfg("MAX_PER_SOURCE=lots\n"),
            "[MAPPER]\n4001=127.0.0.1:9\n".to_string(),
            "server.cfg",
            4,
            &["[DEFAULT] key MAX_PER_SOURCE", "not a number"],
        ),
    ] {
        let dir = TempDir::new(&format!("allow-err-{name}"));
        dir.write("port_mapper.cfg", &mapper_text);
        dir.write("server.cfg", &server_cfg);
        expect_server_config_error(&dir, file, line, mentions);
    }
}

#[test]
fn connect_from_binds_the_source() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = connect_from(OTHER, port).unwrap();
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(OTHER));
    assert_eq!(
        s.local_addr().unwrap(),
        SocketAddr::new(OTHER.into(), peer.port())
    );
}
