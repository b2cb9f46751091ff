//! UDP mappings in the server's admin API and metrics, against the real binary: listed with
//! their protocol beside the TCP mapping of the same port, their flows listed as streams,
//! counted in the metrics (checked by promtool when installed), and added, changed and
//! deleted live through both forms of the path, with the mapping file rewritten; and the
//! drops counted when a flood meets a client that stopped reading.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::admin::{eventually, metric, promtool_check, start_with_admin};
use common::*;
use serde_json::{Value, json};

/// A visitor socket with a short receive timeout.
fn visitor() -> UdpSocket {
    udp_visitor(std::net::Ipv4Addr::LOCALHOST)
}

fn mappings_of(list: &Value, port: u16) -> Vec<&Value> {
    list["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["port"] == u64::from(port))
        .collect()
}

#[test]
fn udp_mappings_are_listed_beside_tcp_and_their_flows_counted() {
    let dir = TempDir::new("udp-api-list");
    let (_tcp_echo, mut setup, port) = echo_mapping();
    let udp_target = udp_echo_target();
    setup.mapper_extra.push("[UDP]".into());
    setup.mapper_extra.push(format!("{port}={udp_target}"));
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    let list = admin.get_json("/api/mappings");
    let both = mappings_of(&list, port);
    assert_eq!(both.len(), 2, "{list}");
    assert_eq!(both[0]["proto"], "tcp");
    assert_eq!(both[1]["proto"], "udp");
    assert_eq!(both[1]["target"], udp_target.to_string());
    assert_eq!(both[1]["tag"], "default");
    assert_eq!(admin.get_json("/api/status")["udp_mappings"], 1);

    // The TCP mapping of the port still serves while its UDP mapping does.
    assert_echo(port, "the TCP mapping of a port that also maps UDP");
    let v = visitor();
    for i in 0..5u8 {
        assert!(udp_echoes_on(&v, port, &[i; 100]), "datagram {i}");
    }
    let streams = admin.get_json("/api/streams");
    let flow = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["proto"] == "udp")
        .unwrap_or_else(|| panic!("no flow in {streams}"))
        .clone();
    assert_eq!(flow["port"], u64::from(port));
    assert_eq!(flow["visitor"], v.local_addr().unwrap().to_string());
    assert_eq!(flow["target"], udp_target.to_string());
    assert!(flow["datagrams_in"].as_u64().unwrap() >= 5, "{flow}");
    assert!(flow["bytes_out"].as_u64().unwrap() >= 500, "{flow}");

    let udp = mappings_of(&admin.get_json("/api/mappings"), port)[1].clone();
    assert_eq!(udp["streams"], 1, "one flow open: {udp}");
    assert!(udp["datagrams_in"].as_u64().unwrap() >= 5, "{udp}");
    assert!(udp["datagrams_out"].as_u64().unwrap() >= 5, "{udp}");

    let text = admin.get("/metrics").text();
    let series = |s: String| metric(&text, &s).unwrap_or_else(|| panic!("{s} in\n{text}"));
    assert_eq!(
        series(format!(
            r#"tcpforward_streams{{port="{port}",proto="udp"}}"#
        )),
        1.0
    );
    assert!(
        series(format!(
            r#"tcpforward_udp_datagrams_total{{port="{port}",direction="in"}}"#
        )) >= 5.0
    );
    assert!(
        series(format!(
            r#"tcpforward_udp_datagrams_total{{port="{port}",direction="out"}}"#
        )) >= 5.0
    );
    assert!(
        series(format!(
            r#"tcpforward_stream_bytes_total{{port="{port}",direction="out",proto="udp"}}"#
        )) >= 500.0
    );
    assert_eq!(
        series(format!(
            r#"tcpforward_visitors_total{{port="{port}",result="served",proto="udp"}}"#
        )),
        1.0,
        "one flow, served"
    );
    for reason in [
        "not_allowed",
        "flow_limit",
        "no_client",
        "stream_limit",
        "tunnel_full",
        "queue_full",
        "limit",
        "bad_size",
    ] {
        let s = format!(r#"tcpforward_udp_dropped_total{{port="{port}",reason="{reason}"}}"#);
        assert!(metric(&text, &s).is_some(), "{s} in\n{text}");
    }
    promtool_check(&text);
}

#[test]
fn datagrams_without_a_client_are_dropped_and_counted() {
    let dir = TempDir::new("udp-api-noclient");
    let mut setup = ServerSetup::new();
    let port = free_port();
    setup.mapper_extra.push("[UDP]".into());
    setup
        .mapper_extra
        .push(format!("{port}={}", udp_echo_target()));
    let (_server, admin) = start_with_admin(&dir, &setup, None);
    let v = visitor();
    for _ in 0..3 {
        v.send_to(b"anyone?", ("127.0.0.1", port)).unwrap();
    }
    let series = format!(r#"tcpforward_udp_dropped_total{{port="{port}",reason="no_client"}}"#);
    eventually(Duration::from_secs(5), "three drops counted", || {
        (metric(&admin.get("/metrics").text(), &series) == Some(3.0)).then_some(())
    });
}

#[test]
fn udp_mappings_are_added_changed_and_deleted_live() {
    let dir = TempDir::new("udp-api-put");
    let (_tcp_echo, setup, tcp_port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let first = udp_echo_target();
    let second = udp_echo_target();
    let port = free_port();

    // Added with the proto field; served at once; written to the file.
    let body = json!({"target": first.to_string(), "proto": "udp"}).to_string();
    let r = admin.call("PUT", &format!("/api/mappings/{port}"), Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["proto"], "udp");
    let v = visitor();
    assert!(
        udp_echoes_on(&v, port, b"hello"),
        "served right after the PUT"
    );
    let file = std::fs::read_to_string(dir.path().join("port_mapper.cfg")).unwrap();
    assert!(
        file.contains("[UDP]") && file.contains(&format!("{port}={first}")),
        "{file}"
    );

    // Changed through the UDP path: new flows go to the new target.
    let body = json!({"target": second.to_string()}).to_string();
    let r = admin.call("PUT", &format!("/api/mappings/udp/{port}"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], second.to_string());
    assert!(udp_echoes_on(&visitor(), port, b"again"));

    // Requests that cannot be right.
    for (path, body, status) in [
        (
            format!("/api/mappings/udp/{port}"),
            json!({"target": second.to_string(), "proto": "tcp"}),
            400,
        ),
        (
            format!("/api/mappings/{port}"),
            json!({"target": second.to_string(), "proto": "sctp"}),
            400,
        ),
        (
            format!("/api/mappings/{port}"),
            json!({"target": second.to_string(), "proto": 17}),
            400,
        ),
        // The TCP mapping of the port has the default tag: [TAG] applies to both.
        (
            format!("/api/mappings/udp/{tcp_port}"),
            json!({"target": second.to_string(), "tag": "other"}),
            409,
        ),
    ] {
        let r = admin.call("PUT", &path, Some(&body.to_string()));
        assert_eq!(r.status, status, "PUT {path} {body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(
        admin
            .call("GET", &format!("/api/mappings/udp/{port}"), None)
            .status,
        405
    );

    // A UDP mapping beside the TCP one on the same port, then deleted by the UDP path: the
    // TCP mapping stays.
    let body = json!({"target": first.to_string()}).to_string();
    let r = admin.call("PUT", &format!("/api/mappings/udp/{tcp_port}"), Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(udp_echoes_on(&visitor(), tcp_port, b"beside tcp"));
    let r = admin.call("DELETE", &format!("/api/mappings/udp/{tcp_port}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_echo(tcp_port, "the TCP mapping after its UDP sibling went");
    let list = admin.get_json("/api/mappings");
    let left = mappings_of(&list, tcp_port);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["proto"], "tcp");

    // Deleted by the plain path, as the port's only mapping: its socket closes.
    let r = admin.call("DELETE", &format!("/api/mappings/{port}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(mappings_of(&admin.get_json("/api/mappings"), port).is_empty());
    let file = std::fs::read_to_string(dir.path().join("port_mapper.cfg")).unwrap();
    assert!(!file.contains(&format!("{port}=")), "{file}");
    eventually(
        Duration::from_secs(5),
        "the UDP port to be free again",
        || UdpSocket::bind(("127.0.0.1", port)).ok(),
    );
    let r = admin.call("DELETE", &format!("/api/mappings/udp/{port}"), None);
    assert_eq!(r.status, 404);
}

#[test]
fn a_reload_adds_changes_and_removes_udp_ports() {
    let dir = TempDir::new("udp-api-reload");
    let (_tcp_echo, setup, tcp_port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let (first, second) = (udp_echo_target(), udp_echo_target());
    let port = free_port();
    let base = setup.mapper_text();
    let write = |lines: &str| dir.write("port_mapper.cfg", &format!("{base}[UDP]\n{lines}\n"));

    write(&format!("{port}={first}"));
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["udp"]["added"], json!([port]));
    let v = visitor();
    assert!(udp_echoes_on(&v, port, b"added by reload"));

    // A changed target serves new flows; the open one keeps its target.
    write(&format!("{port}={second}"));
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.json()["udp"]["changed"], json!([port]), "{}", r.text());
    assert!(udp_echoes_on(&v, port, b"old flow"));
    assert!(udp_echoes_on(&visitor(), port, b"new flow"));
    let streams = admin.get_json("/api/streams");
    let targets: Vec<&str> = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["proto"] == "udp")
        .filter_map(|s| s["target"].as_str())
        .collect();
    assert!(
        targets.contains(&first.to_string().as_str())
            && targets.contains(&second.to_string().as_str()),
        "{streams}"
    );

    // Removed: the socket closes with its flows; the TCP port is untouched.
    dir.write("port_mapper.cfg", &base);
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.json()["udp"]["removed"], json!([port]), "{}", r.text());
    server.wait_for_line(&format!("reload: public UDP port {port} closed"), READY);
    assert!(
        !admin
            .get_json("/api/streams")
            .to_string()
            .contains("\"udp\""),
        "no flow left"
    );
    eventually(
        Duration::from_secs(5),
        "the UDP port to be free again",
        || UdpSocket::bind(("127.0.0.1", port)).ok(),
    );
    assert_echo(tcp_port, "the TCP mapping through the UDP reloads");
}

/// Resumes a stopped process when dropped, so a failing test leaves nothing stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: a signal to a child process of this test.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The kernel's default receive buffer of a TCP socket (the middle of tcp_rmem).
fn tcp_rmem_default() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(131_072)
}

/// A client that stops reading its tunnel (SIGSTOP) takes only a bounded part of a flood:
/// the kernel takes no more of the tunnel once it holds 768 KiB of it unsent, the server's
/// 256 KiB of output fills behind that, and the rest is dropped as `tunnel_full`, where the
/// kernel's send buffer alone would take 4 MiB. Resumed, the client carries new flows.
#[test]
fn a_flood_toward_a_stopped_client_is_held_to_a_bounded_queue() {
    let dir = TempDir::new("udp-api-stopped");
    let mut setup = ServerSetup::new().tls_off();
    let port = free_port();
    setup.mapper_extra.push("[UDP]".into());
    setup
        .mapper_extra
        .push(format!("{port}={}", udp_echo_target()));
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let client = attach_client(&server, setup.inner_port, &Tls::Off.client());
    let v = visitor();
    assert!(udp_echoes_on(&v, port, b"before"), "the flow echoes");

    // SAFETY: a signal to the client, a child process of this test.
    assert_eq!(unsafe { libc::kill(client.pid(), libc::SIGSTOP) }, 0);
    let _resume = Resume(client.pid());
    let datagram = [0x5a; 1_200];
    let total = 8_000; // 9.6 MB, more than every buffer on the way together
    for i in 0..total {
        v.send_to(&datagram, ("127.0.0.1", port)).unwrap();
        if i % 200 == 199 {
            // Bursts the server's 4 MiB socket buffer takes whole while its loop reads.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let queued = format!(r#"tcpforward_udp_datagrams_total{{port="{port}",direction="in"}}"#);
    let shed = format!(r#"tcpforward_udp_dropped_total{{port="{port}",reason="tunnel_full"}}"#);
    let mut last = None;
    let (queued, shed) = eventually(Duration::from_secs(10), "the counts to settle", || {
        let text = admin.get("/metrics").text();
        let now = (metric(&text, &queued)?, metric(&text, &shed)?);
        let settled = last == Some(now) && now.1 > 0.0;
        last = Some(now);
        if !settled {
            std::thread::sleep(Duration::from_millis(100));
        }
        settled.then_some(now)
    });
    // Frames of 1,209 bytes; what the stopped client's socket took, the kernel's 768 KiB
    // unsent and a write's overshoot, the session's 256 KiB, and a turn's batch beyond.
    let bound = 1024 * 1024 + 256 * 1024 + 2 * tcp_rmem_default() + 64 * 1024;
    let held = queued as usize * 1_209;
    assert!(
        held <= bound,
        "{queued} datagrams ({held} bytes) queued for a stopped client, bound {bound}; \
         {shed} shed"
    );
    assert!(shed > 0.0, "the rest dropped as tunnel_full");

    drop(_resume);
    assert!(
        udp_echoes(port, b"after"),
        "a new flow echoes once the client runs again"
    );
}
