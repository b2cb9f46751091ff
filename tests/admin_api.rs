//! The server's admin API against the real binary: every endpoint with its errors, the
//! token, live mappings written back to the file, kicking a client, traffic counts and
//! rates, metrics (checked by promtool when installed) and reload under load.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::admin::{
    eventually, metric, promtool_check, read_reply_from, request, start_with_admin,
};
use common::*;
use serde_json::Value;

const TOKEN: &str = "admin-s3cret";

fn mapping(list: &Value, port: u16) -> Option<&Value> {
    list["mappings"]
        .as_array()?
        .iter()
        .find(|m| m["port"] == u64::from(port))
}

#[test]
fn health_and_token() {
    let dir = TempDir::new("admin-token");
    let (_echo, setup, _port) = echo_mapping();
    let (_server, admin) = start_with_admin(&dir, &setup, Some(TOKEN));
    let health = request(admin.addr, "GET", "/healthz", None, None).unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    for path in ["/api/mappings", "/api/clients", "/api/streams", "/metrics"] {
        for token in [None, Some("wrong"), Some("admin-s3cre")] {
            let r = request(admin.addr, "GET", path, token, None).unwrap();
            assert_eq!(r.status, 401, "{path} with {token:?}");
            assert!(r.json()["error"].is_string(), "{path}: {}", r.text());
        }
    }
    let r = request(admin.addr, "POST", "/api/reload", None, None).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(admin.get("/api/mappings").status, 200);
    // The page itself carries no data: it loads, and asks for the token.
    let page = request(admin.addr, "GET", "/", None, None).unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    // Unknown paths and methods.
    assert_eq!(admin.get("/api/nothing").status, 404);
    let r = admin.call("POST", "/api/mappings", Some("{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(admin.call("GET", "/api/reload", None).status, 405);
}

#[test]
fn the_token_never_reaches_the_log() {
    let dir = TempDir::new("admin-secret-log");
    let (_echo, setup, _port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, Some(TOKEN));
    assert_eq!(admin.get("/api/clients").status, 200);
    let _ = request(admin.addr, "GET", "/api/clients", Some("guess"), None);
    assert!(!server.log_text().contains(TOKEN));
}

#[test]
fn a_public_admin_address_needs_a_token() {
    let dir = TempDir::new("admin-public");
    let mut setup = ServerSetup::new();
    setup
        .extra
        .push(format!("ADMIN_ADDR=0.0.0.0:{}", free_port()));
    let cfg = setup.write(&dir);
    let mut p = spawn("server", &["server", cfg.to_str().unwrap()], &[]);
    let status = p.wait_exit(READY).expect("exits");
    assert_eq!(status.code(), Some(2));
    let log = p.log_text();
    assert!(
        log.contains("server.cfg") && log.contains("ADMIN_ADDR"),
        "{log}"
    );
    assert!(log.contains("ADMIN_TOKEN"), "{log}");
}

#[test]
fn mappings_are_added_changed_and_deleted_live() {
    let dir = TempDir::new("admin-mappings");
    let echo = Target::echo();
    let other = Target::echo();
    let mut setup = ServerSetup::new();
    let kept = setup.map(echo.target(), None);
    let (server, admin) = start_with_admin(&dir, &setup, None);
    // Comments and order that the rewrite must keep.
    let file = dir.path().join("port_mapper.cfg");
    let original = format!(
        "# published ports\n[MAPPER]\n; ssh first\n{kept}={}   # kept as it is\n",
        echo.target()
    );
    std::fs::write(&file, &original).unwrap();
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    let list = admin.get_json("/api/mappings");
    let m = mapping(&list, kept).expect("the configured mapping");
    assert_eq!(m["target"], echo.target().as_str());
    assert_eq!(m["tag"], "default");
    assert_eq!(m["streams"], 0);

    // Add: the listener is open when the answer arrives.
    let added = loop {
        let p = free_port();
        if p != kept && p != setup.inner_port && p != admin.addr.port() {
            break p;
        }
    };
    let body = format!(r#"{{"target": "{}", "tag": "default"}}"#, echo.target());
    let r = admin.call("PUT", &format!("/api/mappings/{added}"), Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["port"], added);
    assert_echo(added, "a port added through the API");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(&original), "kept:\n{text}");
    assert!(
        text.contains(&format!("{added}={}", echo.target())),
        "{text}"
    );

    // Change the target: 200, and new visitors reach the other echo.
    let before = other.accepted();
    let body = format!(r#"{{"target": "{}"}}"#, other.target());
    let r = admin.call("PUT", &format!("/api/mappings/{added}"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], other.target().as_str());
    assert_echo(added, "a retargeted port");
    assert_eq!(other.accepted(), before + 1);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("{added}={}", other.target())),
        "{text}"
    );
    assert!(
        !text.contains(&format!("{added}={}", echo.target())),
        "{text}"
    );
    assert!(
        text.contains("; ssh first") && text.contains("# kept as it is"),
        "{text}"
    );

    // A tag of its own is written to [TAG].
    let body = format!(r#"{{"target": "{}", "tag": "web"}}"#, other.target());
    let r = admin.call("PUT", &format!("/api/mappings/{added}"), Some(&body));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tag"], "web");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("[TAG]") && text.contains(&format!("{added}=web")),
        "{text}"
    );

    // Bad requests change nothing.
    for (path, body, status) in [
        (
            format!("/api/mappings/{added}"),
            "not json".to_string(),
            400,
        ),
        (format!("/api/mappings/{added}"), "[1]".to_string(), 400),
        (format!("/api/mappings/{added}"), "{}".to_string(), 400),
        (
            format!("/api/mappings/{added}"),
            r#"{"target": 5}"#.to_string(),
            400,
        ),
        (
            format!("/api/mappings/{added}"),
            r#"{"target": "10.0.0.1"}"#.to_string(),
            400,
        ),
        (
            format!("/api/mappings/{added}"),
            r#"{"target": "a:1", "tag": "a b"}"#.to_string(),
            400,
        ),
        (
            format!("/api/mappings/{added}"),
            r#"{"target": "a:1", "x": 1}"#.to_string(),
            400,
        ),
        (
            "/api/mappings/0".to_string(),
            r#"{"target": "a:1"}"#.to_string(),
            400,
        ),
        (
            "/api/mappings/65536".to_string(),
            r#"{"target": "a:1"}"#.to_string(),
            400,
        ),
        (
            "/api/mappings/http".to_string(),
            r#"{"target": "a:1"}"#.to_string(),
            400,
        ),
        (
            format!("/api/mappings/{}", setup.inner_port),
            r#"{"target": "a:1"}"#.to_string(),
            400,
        ),
    ] {
        let r = admin.call("PUT", &path, Some(&body));
        assert_eq!(r.status, status, "PUT {path} {body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    // A port someone else holds: 409 with the OS's reason, and no line in the file.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let body = format!(r#"{{"target": "{}"}}"#, echo.target());
    let r = admin.call("PUT", &format!("/api/mappings/{taken}"), Some(&body));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("in use"),
        "{}",
        r.text()
    );
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains(&format!("{taken}="))
    );

    // Back to the default tag: the [TAG] line goes.
    let body = format!(r#"{{"target": "{}", "tag": "default"}}"#, other.target());
    let r = admin.call("PUT", &format!("/api/mappings/{added}"), Some(&body));
    assert_eq!(r.status, 200);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&format!("{added}=web")), "{text}");

    // Delete: a stream open on the port runs on; new visitors are refused.
    let mut held = visit(added);
    echo_on(&mut held, b"before delete").unwrap();
    let r = admin.call("DELETE", &format!("/api/mappings/{added}"), None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    echo_on(&mut held, b"after delete").unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", added)).is_err(),
        "a deleted port still accepts"
    );
    assert_eq!(
        admin
            .call("DELETE", &format!("/api/mappings/{added}"), None)
            .status,
        404
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(&original), "{text}");
    assert!(!text.contains(&format!("{added}=")), "{text}");
    assert!(mapping(&admin.get_json("/api/mappings"), added).is_none());
    assert_echo(kept, "the untouched port");
}

#[test]
fn clients_streams_bytes_and_rates() {
    let dir = TempDir::new("admin-clients");
    let (_echo, setup, port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, Some(TOKEN));
    let _client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: None,
            ..ClientOpts::default()
        },
    );
    let clients = admin.get_json("/api/clients");
    let list = clients["clients"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{clients}");
    let c = &list[0];
    assert_eq!(c["tag"], "default");
    assert!(c["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(c["id"].is_u64());
    let at = c["connected_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.len() == 20, "{at}");
    assert_eq!(c["streams"], 0);

    // Traffic for a few seconds: bytes and rates move, the stream is listed.
    let mut s = visit(port);
    let chunk = vec![7u8; 64 * 1024];
    let end = Instant::now() + Duration::from_secs(3);
    let mut sent = 0u64;
    while Instant::now() < end {
        echo_on(&mut s, &chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let streams = admin.get_json("/api/streams");
    let st = &streams["streams"].as_array().unwrap()[0];
    assert_eq!(st["port"], port);
    assert_eq!(st["client"], c["id"]);
    assert!(st["visitor"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(st["target"], setup.mappings[0].target.as_str());
    assert_eq!(st["bytes_in"], sent);
    assert_eq!(st["bytes_out"], sent);
    let c = &admin.get_json("/api/clients")["clients"][0];
    assert_eq!(c["streams"], 1);
    assert_eq!(c["bytes_in"], sent);
    assert_eq!(c["bytes_out"], sent);
    for key in ["rate_in", "rate_out", "avg_in", "avg_out"] {
        assert!(c[key].as_u64().unwrap() > 0, "{key}: {c}");
    }
    let m = mapping(&admin.get_json("/api/mappings"), port)
        .unwrap()
        .clone();
    assert_eq!(
        (m["streams"].as_u64(), m["bytes_in"].as_u64()),
        (Some(1), Some(sent))
    );

    // The stream ends: its bytes stay counted, and the rate falls to 0 within the window.
    drop(s);
    let m = eventually(READY, "the stream ends", || {
        let list = admin.get_json("/api/mappings");
        mapping(&list, port).filter(|m| m["streams"] == 0).cloned()
    });
    assert_eq!(m["bytes_in"], sent);
    assert_eq!(m["bytes_out"], sent);
    let c = eventually(Duration::from_secs(10), "the rate falls to 0", || {
        let c = admin.get_json("/api/clients")["clients"][0].clone();
        (c["rate_in"] == 0).then_some(c)
    });
    assert_eq!(c["bytes_in"], sent);
    assert!(c["avg_in"].as_u64().unwrap() > 0);
}

#[test]
fn a_kicked_client_loses_its_streams_and_comes_back() {
    let dir = TempDir::new("admin-kick");
    let (_echo, setup, port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let mut held = visit(port);
    echo_on(&mut held, b"hello").unwrap();
    let id = admin.get_json("/api/clients")["clients"][0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        admin.call("DELETE", "/api/clients/999999", None).status,
        404
    );
    assert_eq!(admin.call("DELETE", "/api/clients/x", None).status, 400);
    let r = admin.call("DELETE", &format!("/api/clients/{id}"), None);
    assert_eq!(r.status, 204);
    assert_closed(&mut held, READY, "a stream of a kicked client");
    server.wait_for_count("tunnel attached", 2, Duration::from_secs(20));
    client.wait_for_count("tunnel up", 2, Duration::from_secs(20));
    assert!(
        client
            .log_text()
            .contains("closed by the server's administrator")
    );
    let clients = eventually(READY, "the client is back", || {
        let c = admin.get_json("/api/clients");
        (c["clients"].as_array().unwrap().len() == 1).then_some(c)
    });
    assert_ne!(clients["clients"][0]["id"].as_u64(), Some(id));
    assert_echo(port, "after the client came back");
    let metrics = admin.get("/metrics").text();
    assert_eq!(
        metric(
            &metrics,
            r#"tcpforward_tunnel_closes_total{reason="kicked"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn metrics_count_what_happens() {
    let dir = TempDir::new("admin-metrics");
    let echo = Target::echo();
    let dead = RefusedPort::new();
    let mut setup = ServerSetup::new();
    let good = setup.map(echo.target(), None);
    let bad = setup.map(dead.addr(), None);
    let lonely = setup.map(echo.target(), Some("nobody"));
    let (server, admin) = start_with_admin(&dir, &setup, Some(TOKEN));

    // Every label set is there from the start, at 0.
    let text = admin.get("/metrics").text();
    for series in [
        format!(r#"tcpforward_streams{{port="{good}",proto="tcp"}}"#),
        format!(r#"tcpforward_stream_bytes_total{{port="{good}",direction="in",proto="tcp"}}"#),
        format!(r#"tcpforward_visitors_total{{port="{bad}",result="target_failed",proto="tcp"}}"#),
        format!(r#"tcpforward_visitors_total{{port="{lonely}",result="no_client",proto="tcp"}}"#),
        r#"tcpforward_tunnels{tag="nobody"}"#.to_string(),
        r#"tcpforward_tunnel_closes_total{reason="dead_peer"}"#.to_string(),
        r#"tcpforward_handshakes_total{result="auth_failed"}"#.to_string(),
    ] {
        assert_eq!(metric(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    let r = admin.get("/metrics");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );

    let client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    assert_echo(good, "the good port");
    assert_visit_closed(bad, READY, "a target that refuses");
    assert_visit_closed(lonely, READY, "a tag with no client");
    // A handshake that is not one.
    let mut junk = TcpStream::connect(("127.0.0.1", setup.inner_port)).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = with_timeouts(junk).read_to_end(&mut sink);
    drop(client);

    let text = eventually(READY, "the counts", || {
        let text = admin.get("/metrics").text();
        // The client said it was leaving.
        let closed = metric(&text, r#"tcpforward_tunnel_closes_total{reason="goaway"}"#);
        let bad_visits = metric(
            &text,
            &format!(
                r#"tcpforward_visitors_total{{port="{bad}",result="target_failed",proto="tcp"}}"#
            ),
        );
        (closed == Some(1.0) && bad_visits == Some(1.0)).then_some(text)
    });
    let expect = [
        (
            format!(r#"tcpforward_visitors_total{{port="{good}",result="served",proto="tcp"}}"#),
            1.0,
        ),
        (
            format!(
                r#"tcpforward_visitors_total{{port="{lonely}",result="no_client",proto="tcp"}}"#
            ),
            1.0,
        ),
        (
            r#"tcpforward_handshakes_total{result="ok"}"#.to_string(),
            1.0,
        ),
        (
            r#"tcpforward_handshakes_total{result="malformed"}"#.to_string(),
            1.0,
        ),
        (r#"tcpforward_tunnels{tag="default"}"#.to_string(), 0.0),
        (
            format!(r#"tcpforward_streams{{port="{good}",proto="tcp"}}"#),
            0.0,
        ),
        (
            format!(
                r#"tcpforward_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&text, &series), Some(want), "{series} in\n{text}");
    }
    let bytes_in = metric(
        &text,
        &format!(r#"tcpforward_stream_bytes_total{{port="{good}",direction="in",proto="tcp"}}"#),
    );
    assert!(bytes_in.unwrap() > 0.0, "{text}");
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(
            metric(&text, family).is_some_and(|v| v > 0.0),
            "{family} in\n{text}"
        );
    }
    promtool_check(&text);
}

/// Connect to `port` again and again until `stop` (60 s at most); count connects that
/// succeeded and that were refused.
fn keep_connecting(
    port: u16,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
    })
}

#[test]
fn reload_applies_the_difference_and_drops_nothing() {
    let dir = TempDir::new("admin-reload");
    let echo = Target::echo();
    let other = Target::echo();
    let mut setup = ServerSetup::new();
    let kept = setup.map(echo.target(), None);
    let removed = setup.map(echo.target(), None);
    let retargeted = setup.map(echo.target(), None);
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    let mut held_kept = visit(kept);
    let mut held_removed = visit(removed);
    let mut held_retargeted = visit(retargeted);
    for s in [&mut held_kept, &mut held_removed, &mut held_retargeted] {
        echo_on(s, b"before").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let prober = keep_connecting(
        kept,
        Arc::clone(&stop),
        Arc::clone(&probes),
        Arc::clone(&refused),
    );
    // The prober runs before, through and after each reload.
    let probed = |n: u64| {
        let from = probes.load(Ordering::Relaxed);
        eventually(READY, "the prober connects", || {
            (probes.load(Ordering::Relaxed) >= from + n).then_some(())
        })
    };
    probed(20);

    // One reload adds a port, removes one and retargets one.
    let mut next = setup.clone();
    next.mappings.retain(|m| m.public != removed);
    for m in &mut next.mappings {
        if m.public == retargeted {
            m.target = other.target();
        }
    }
    let added = next.map(echo.target(), Some("default"));
    dir.write("port_mapper.cfg", &next.mapper_text());
    let before = other.accepted();
    server.signal(libc::SIGHUP);
    server.wait_for_line("reload: 1 port(s) added, 1 removed, 1 changed", READY);
    probed(20);
    assert_echo(added, "the added port");
    assert!(
        TcpStream::connect(("127.0.0.1", removed)).is_err(),
        "removed port accepts"
    );
    assert_echo(retargeted, "the retargeted port");
    assert_eq!(
        other.accepted(),
        before + 1,
        "new visitors go to the new target"
    );
    // Every held stream kept echoing, the removed and retargeted ones included.
    for s in [&mut held_kept, &mut held_removed, &mut held_retargeted] {
        echo_on(s, b"after").unwrap();
    }

    // A broken file changes nothing, through the API as through SIGHUP.
    dir.write("port_mapper.cfg", "[MAPPER]\n80=10.0.0.1\n");
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 400);
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.contains("port_mapper.cfg") && why.contains("line 2"),
        "{why}"
    );
    server.signal(libc::SIGHUP);
    server.wait_for_line("reload failed, nothing changed", READY);
    assert_echo(added, "after the failed reload");
    echo_on(&mut held_kept, b"still").unwrap();

    // Through the API: back to the first file.
    dir.write("port_mapper.cfg", &setup.mapper_text());
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let changes = r.json();
    assert_eq!(changes["added"], serde_json::json!([removed]));
    assert_eq!(changes["removed"], serde_json::json!([added]));
    assert_eq!(changes["changed"], serde_json::json!([retargeted]));
    probed(20);

    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "the unchanged port refused a visitor"
    );
    echo_on(&mut held_kept, b"end").unwrap();
    assert_eq!(client.count("tunnel lost"), 0);
}

#[test]
fn reload_applies_settings_to_new_tunnels() {
    let dir = TempDir::new("admin-reload-settings");
    let (_echo, setup, port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let first = attach_client(&server, setup.inner_port, &ClientOpts::default());
    // A token now required: the attached client stays, a new one must prove it.
    let cfg = std::fs::read_to_string(dir.path().join("server.cfg")).unwrap();
    dir.write(
        "server.cfg",
        &format!("{cfg}TOKEN=fresh-token\nLOG_LEVEL=DEBUG\nINNER_PORT_IGNORED=1\n"),
    );
    server.signal(libc::SIGHUP);
    let line = server.wait_for_line("settings changed:", READY);
    assert!(
        line.contains("TOKEN") && line.contains("LOG_LEVEL"),
        "{line}"
    );
    assert!(!server.log_text().contains("fresh-token"));
    assert_echo(port, "the attached client after the reload");
    let mut refused = spawn_client(setup.inner_port, &ClientOpts::default());
    refused.wait_for_line("server refused", READY);
    refused.kill9();
    let _second = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            token: Some("fresh-token"),
            ..ClientOpts::default()
        },
    );
    assert_eq!(first.count("tunnel lost"), 0);
    // DEBUG now: a visitor's stream is logged.
    assert_echo(port, "after the second client");
    server.wait_for_line("visitor 127.0.0.1:", READY);
    // A restart-only key is said to need one.
    let cfg = std::fs::read_to_string(dir.path().join("server.cfg")).unwrap();
    let moved = cfg.replace(
        &format!("INNER_PORT={}", setup.inner_port),
        &format!("INNER_PORT={}", free_port()),
    );
    dir.write("server.cfg", &moved);
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["restart_needed"],
        serde_json::json!(["INNER_PORT"])
    );
    server.wait_for_line(
        "INNER_PORT changed: it takes effect at the next restart",
        READY,
    );
}

#[test]
fn admin_connections_are_capped_and_cannot_stall_the_tunnel() {
    let dir = TempDir::new("admin-caps");
    let (_echo, setup, port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    // A request larger than 64 KiB is refused with 413, read before the connection closes.
    let mut big = with_timeouts(TcpStream::connect(admin.addr).unwrap());
    let body = "x".repeat(70 * 1024);
    let head = format!(
        "PUT /api/mappings/1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    big.write_all(head.as_bytes()).unwrap();
    let _ = big.write_all(body.as_bytes());
    let r = common::admin::read_reply(&mut big).unwrap();
    assert_eq!(r.status, 413);
    assert_closed(&mut big, READY, "after a 413");
    // 64 connections hold half a request each; the data path does not notice.
    let mut stalled: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(admin.addr).unwrap();
            s.write_all(b"GET /api/clients HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s
        })
        .collect();
    assert_echo(port, "with 64 stalled admin connections");
    // The 65th is closed at once: end of stream or a reset, not silence.
    let mut extra = TcpStream::connect(admin.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
    let mut buf = [0u8; 64];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the 65th connection was not closed: {other:?}"),
    }
    // Idle connections are closed after 10 s; then the API serves again.
    for s in &mut stalled {
        assert_closed(s, Duration::from_secs(15), "an idle admin connection");
    }
    assert_eq!(admin.get("/healthz").status, 200);
}

#[test]
fn a_flood_of_pipelined_requests_does_not_stall_the_tunnel() {
    let dir = TempDir::new("admin-flood");
    let (_echo, setup, port) = echo_mapping();
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let mut held = visit(port);
    echo_on(&mut held, b"warm").unwrap();
    // One connection pipelines requests as fast as it can for 3 s; another thread reads.
    let flood = TcpStream::connect(admin.addr).unwrap();
    flood.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = flood.try_clone().unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let writer = thread::spawn(move || {
        let mut flood = flood;
        let batch = "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(200);
        while Instant::now() < end {
            if flood.write_all(batch.as_bytes()).is_err() {
                break;
            }
        }
        let _ = flood.shutdown(std::net::Shutdown::Write);
    });
    let answers = thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let limit = Instant::now() + Duration::from_secs(20);
        while Instant::now() < limit {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    // Meanwhile the tunnel keeps answering promptly.
    let mut slowest = Duration::ZERO;
    let mut rounds = 0;
    while Instant::now() < end {
        let t = Instant::now();
        echo_on(&mut held, b"ping").unwrap();
        slowest = slowest.max(t.elapsed());
        rounds += 1;
    }
    writer.join().unwrap();
    let answered = answers.join().unwrap();
    assert!(
        answered > 100_000,
        "the flood got {answered} bytes of answers"
    );
    assert!(rounds > 50, "{rounds} round trips in 3 s");
    assert!(
        slowest < Duration::from_millis(500),
        "a round trip took {slowest:?} during the flood"
    );
}

#[test]
fn browsers_cannot_be_used_against_the_api() {
    let dir = TempDir::new("admin-origin");
    let (_echo, setup, _port) = echo_mapping();
    let (_server, admin) = start_with_admin(&dir, &setup, None);
    let raw = |req: &str| {
        let mut s = with_timeouts(TcpStream::connect(admin.addr).unwrap());
        s.write_all(req.as_bytes()).unwrap();
        common::admin::read_reply(&mut s).unwrap()
    };
    // A name rebound to 127.0.0.1: refused without a token.
    let r = raw("GET /api/mappings HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = raw("GET /api/mappings HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    // A cross-site post: refused; the page's own origin: served.
    let host = admin.addr.to_string();
    let r = raw(&format!(
        "POST /api/reload HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\r\n"
    ));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = raw(&format!(
        "POST /api/reload HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_visitor_beyond_the_stream_limit_is_counted_as_refused() {
    let dir = TempDir::new("admin-refused");
    let (_echo, mut setup, port) = echo_mapping();
    setup.extra.push("MAX_STREAMS=1".to_string());
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let mut held = visit(port);
    echo_on(&mut held, b"the one stream").unwrap();
    assert_visit_closed(port, READY, "a visitor beyond MAX_STREAMS");
    let series =
        format!(r#"tcpforward_visitors_total{{port="{port}",result="refused",proto="tcp"}}"#);
    let text = admin.get("/metrics").text();
    assert_eq!(metric(&text, &series), Some(1.0), "{text}");
    promtool_check(&text);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let dir = TempDir::new("admin-keepalive");
    let (_echo, setup, _port) = echo_mapping();
    let (_server, admin) = start_with_admin(&dir, &setup, None);
    let mut s = with_timeouts(TcpStream::connect(admin.addr).unwrap());
    // Pipelined: three requests in one write, three answers in order.
    s.write_all(
        b"GET /healthz HTTP/1.1\r\n\r\nGET /api/status HTTP/1.1\r\n\r\nGET /api/mappings HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let a = read_reply_from(&mut s, &mut buf).unwrap();
    assert_eq!(a.text(), "ok");
    let b = read_reply_from(&mut s, &mut buf).unwrap();
    assert_eq!(b.json()["role"], "server");
    let c = read_reply_from(&mut s, &mut buf).unwrap();
    assert!(c.json()["mappings"].is_array());
    assert!(buf.is_empty());
    // Garbage: 400, and the connection closes.
    s.write_all(b"\x16\x03\x01 nonsense\r\n\r\n").unwrap();
    let d = read_reply_from(&mut s, &mut buf).unwrap();
    assert_eq!(d.status, 400);
    assert_closed(&mut s, READY, "after a malformed request");
}

#[test]
fn the_client_reports_its_tunnel() {
    let dir = TempDir::new("admin-client");
    let echo = Target::echo();
    let dead = RefusedPort::new();
    let mut setup = ServerSetup::new();
    let good = setup.map(echo.target(), Some("inner"));
    let bad = setup.map(dead.addr(), Some("inner"));
    let server = setup.start(&dir);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let addr_text = addr.to_string();
    let client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: Some("inner"),
            extra: vec!["--admin", &addr_text],
            ..ClientOpts::default()
        },
    );
    client.wait_for_line("admin API on", READY);
    let admin = common::admin::Admin { addr, token: None };
    assert_eq!(admin.get("/healthz").text(), "ok");
    let status = admin.get_json("/api/status");
    assert_eq!(status["role"], "client");
    assert_eq!(status["state"], "up");
    assert_eq!(status["tag"], "inner");
    assert_eq!(
        status["server"],
        format!("127.0.0.1:{}", setup.inner_port).as_str()
    );
    assert_eq!(status["reconnects"], 0);
    assert!(status["connected_at"].as_str().unwrap().ends_with('Z'));
    // The client's API has no server endpoints.
    assert_eq!(admin.get("/api/mappings").status, 404);

    let mut s = visit(good);
    echo_on(&mut s, &[1u8; 10_000]).unwrap();
    let status = admin.get_json("/api/status");
    assert_eq!(status["streams"], 1);
    assert_eq!(status["bytes_in"], 10_000);
    assert_eq!(status["bytes_out"], 10_000);
    drop(s);
    assert_visit_closed(bad, READY, "a refusing target");
    let text = eventually(READY, "the counts", || {
        let text = admin.get("/metrics").text();
        (metric(
            &text,
            r#"tcpforward_target_connects_total{result="failed"}"#,
        ) == Some(1.0))
        .then_some(text)
    });
    for (series, want) in [
        ("tcpforward_tunnel_up", 1.0),
        ("tcpforward_reconnects_total", 0.0),
        (r#"tcpforward_target_connects_total{result="ok"}"#, 1.0),
        (
            r#"tcpforward_stream_bytes_total{direction="in",proto="tcp"}"#,
            10_000.0,
        ),
        (
            r#"tcpforward_stream_bytes_total{direction="out",proto="tcp"}"#,
            10_000.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    promtool_check(&text);

    // The server goes away: the client says so, and counts the reconnect.
    let mut server = server;
    server.kill9();
    let status = eventually(READY, "the tunnel is down", || {
        let s = admin.get_json("/api/status");
        (s["state"] == "connecting").then_some(s)
    });
    assert!(status["connected_at"].is_null());
    assert_eq!(
        metric(&admin.get("/metrics").text(), "tcpforward_tunnel_up"),
        Some(0.0)
    );
}

#[test]
fn a_public_client_admin_address_needs_a_token() {
    let port = free_port().to_string();
    let addr = format!("0.0.0.0:{}", free_port());
    let mut p = spawn(
        "client",
        &["client", "127.0.0.1", &port, "--admin", &addr],
        &[],
    );
    assert_eq!(p.wait_exit(READY).expect("exits").code(), Some(2));
    assert!(p.log_text().contains("--admin"), "{}", p.log_text());
    let mut p = spawn(
        "client",
        &["client", "127.0.0.1", &port, "--admin", &addr],
        &[("TCP_FORWARD_ADMIN_TOKEN", "t0ken")],
    );
    p.wait_for_line("admin API on", READY);
    p.kill9();
}

/// Run `tcp-forward status` with `args` (and the token in the environment, if any).
fn status_cmd(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("status")
        .args(args)
        .env_remove("TCP_FORWARD_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("TCP_FORWARD_ADMIN_TOKEN", t);
    }
    cmd.output().expect("run tcp-forward status")
}

#[test]
fn status_shows_a_live_server() {
    let dir = TempDir::new("admin-status");
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    let port = setup.map(echo.target(), Some("office"));
    let (server, admin) = start_with_admin(&dir, &setup, Some(TOKEN));
    let _client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            tag: Some("office"),
            ..ClientOpts::default()
        },
    );
    let mut held = visit(port);
    echo_on(&mut held, b"counted").unwrap();
    let addr = admin.addr.to_string();

    let out = status_cmd(&["--admin", &addr], Some(TOKEN));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["office", &port.to_string(), &echo.target(), "127.0.0.1:"] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }

    let out = status_cmd(&["--admin", &addr, "--json"], Some(TOKEN));
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["status"]["role"], "server");
    assert_eq!(v["clients"][0]["tag"], "office");
    assert_eq!(v["mappings"][0]["port"], port);
    assert_eq!(v["streams"][0]["bytes_in"], 7);

    // Without the token, or with nothing listening: exit 1 and a reason.
    let out = status_cmd(&["--admin", &addr], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    drop(server);
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = status_cmd(&["--admin", &nobody], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
