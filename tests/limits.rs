//! Bandwidth limits: a `[LIMIT]` port moves data at about its rate in each direction, its
//! streams share it, other ports keep their speed, `BANDWIDTH` is the default, a reload
//! changes the rate of open streams, and bad values are configuration errors.
//!
//! These are not timed benchmarks (`tcp-forward bench --only limit` measures the accuracy):
//! the bounds are generous, 0.5 to 1.5 times the limit, and show that a limit holds at all.

mod common;

use std::net::Shutdown;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use common::admin::start_with_admin;
use common::*;

/// The limit of most tests: 8 mbit, a megabyte per second.
const LIMIT: &str = "8mbit";
const LIMIT_BYTES: f64 = 1_000_000.0;
/// What a limited transfer moves: three seconds' worth (the first quarter second is the
/// bucket's burst).
const BYTES: u64 = 3_000_000;

/// Bytes per second of sending `n` bytes from a visitor of `port` to the sink behind it,
/// measured until the sink has them all.
fn upload(port: u16, sink: &Receiver<std::io::Result<Sum>>, n: u64, seed: u64) -> f64 {
    let started = Instant::now();
    let mut s = visit(port);
    let sent = send_pattern(&mut s, seed, n).expect("visitor sends");
    let _ = s.shutdown(Shutdown::Write);
    let got = sink
        .recv_timeout(Duration::from_secs(60))
        .expect("sink report")
        .expect("sink reads");
    assert_eq!(got, sent, "what the target received");
    n as f64 / started.elapsed().as_secs_f64()
}

/// Bytes per second of reading the `n` bytes a source behind `port` sends, to its EOF.
fn download(port: u16, n: u64, seed: u64) -> f64 {
    let started = Instant::now();
    let mut s = visit(port);
    let got = recv_digest(&mut s).expect("visitor reads to EOF");
    assert_eq!(got, pattern_digest(seed, n), "what the visitor received");
    n as f64 / started.elapsed().as_secs_f64()
}

fn assert_near_limit(rate: f64, limit: f64, what: &str) {
    let ratio = rate / limit;
    eprintln!("{what}: {:.0} bytes/s, {ratio:.3} of the limit", rate);
    assert!(
        (0.5..=1.5).contains(&ratio),
        "{what}: {rate:.0} bytes/s is {ratio:.2} times the limit of {limit:.0}"
    );
}

#[test]
fn a_limited_port_moves_at_its_rate_both_ways() {
    let dir = TempDir::new("limit-both-ways");
    let (sink, reports) = Target::sink();
    let source = Target::source(BYTES, 0xd0);
    let mut setup = ServerSetup::new().tls_off();
    let up = setup.map(sink.target(), None);
    let down = setup.map(source.target(), None);
    setup.mapper_extra = vec![
        "[LIMIT]".into(),
        format!("{up}={LIMIT}"),
        format!("{down}=1MB"),
    ];
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());
    server.wait_for_line(&format!("public port {up} -> "), READY);
    assert!(server.log_text().contains("limit 8mbit"));

    assert_near_limit(upload(up, &reports, BYTES, 1), LIMIT_BYTES, "upload");
    assert_near_limit(download(down, BYTES, 0xd0), LIMIT_BYTES, "download");

    let list = admin.get_json("/api/mappings");
    let by_port = |port: u16| {
        list["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["port"] == u64::from(port))
            .cloned()
            .unwrap()
    };
    assert_eq!(by_port(up)["limit_bits_per_sec"], 8_000_000);
    assert_eq!(by_port(down)["limit_bits_per_sec"], 8_000_000);
}

/// Over TLS the tunnel cannot splice; the limit is the same.
#[test]
fn a_limit_holds_over_tls_too() {
    let dir = TempDir::new("limit-tls");
    let (sink, reports) = Target::sink();
    let source = Target::source(BYTES, 0xd1);
    let mut setup = ServerSetup::new();
    let up = setup.map(sink.target(), None);
    let down = setup.map(source.target(), None);
    setup.mapper_extra = vec![
        "[LIMIT]".into(),
        format!("{up}={LIMIT}"),
        format!("{down}={LIMIT}"),
    ];
    let (_server, _client) = server_and_client_over(&dir, &setup, Tls::On);
    assert_near_limit(upload(up, &reports, BYTES, 2), LIMIT_BYTES, "TLS upload");
    assert_near_limit(download(down, BYTES, 0xd1), LIMIT_BYTES, "TLS download");
}

/// Two streams of one port share its bucket: together they move the limit, each about half.
#[test]
fn streams_of_a_port_share_its_limit() {
    let dir = TempDir::new("limit-shared");
    let half = BYTES / 2;
    let source = Target::source(half, 0xd2);
    let responder = Target::half_close_responder();
    let mut setup = ServerSetup::new();
    let port = setup.map(source.target(), None);
    let up = setup.map(responder.target(), None);
    setup.mapper_extra = vec![
        "[LIMIT]".into(),
        format!("{port}={LIMIT}"),
        format!("{up}={LIMIT}"),
    ];
    let (_server, _client) = server_and_client_over(&dir, &setup, Tls::Off);

    let started = Instant::now();
    let streams: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || download(port, half, 0xd2)))
        .collect();
    let rates: Vec<f64> = streams
        .into_iter()
        .map(|t| t.join().expect("download thread"))
        .collect();
    let together = BYTES as f64 / started.elapsed().as_secs_f64();
    assert_near_limit(together, LIMIT_BYTES, "two streams together");
    for (i, r) in rates.iter().enumerate() {
        assert_near_limit(*r, LIMIT_BYTES / 2.0, &format!("download {i} of two"));
    }

    // Upward too: each visitor sends, and times the target's answer after its EOF.
    let started = Instant::now();
    let streams: Vec<_> = (0..2u64)
        .map(|i| {
            thread::spawn(move || {
                let started = Instant::now();
                let mut s = visit(up);
                let sent = send_pattern(&mut s, i, half).expect("visitor sends");
                let _ = s.shutdown(Shutdown::Write);
                let answer = read_to_eof(&mut s, 1024).expect("the target's answer");
                assert_eq!(String::from_utf8_lossy(&answer), sent.line());
                half as f64 / started.elapsed().as_secs_f64()
            })
        })
        .collect();
    let rates: Vec<f64> = streams
        .into_iter()
        .map(|t| t.join().expect("upload thread"))
        .collect();
    let together = BYTES as f64 / started.elapsed().as_secs_f64();
    assert_near_limit(together, LIMIT_BYTES, "two uploads together");
    for (i, r) in rates.iter().enumerate() {
        assert_near_limit(*r, LIMIT_BYTES / 2.0, &format!("upload {i} of two"));
    }
}

/// An unlimited port next to a limited one moves far faster while the limited one is busy.
#[test]
fn other_ports_keep_their_speed() {
    const FAST: u64 = 64 * 1024 * 1024;
    let dir = TempDir::new("limit-others");
    let (sink, reports) = Target::sink();
    let (fast_sink, fast_reports) = Target::sink();
    let mut setup = ServerSetup::new();
    let slow = setup.map(sink.target(), None);
    let fast = setup.map(fast_sink.target(), None);
    setup.mapper_extra = vec!["[LIMIT]".into(), format!("{slow}={LIMIT}")];
    let (_server, _client) = server_and_client_over(&dir, &setup, Tls::Off);

    let limited = thread::spawn(move || upload(slow, &reports, BYTES, 3));
    thread::sleep(Duration::from_millis(300));
    let unlimited = upload(fast, &fast_reports, FAST, 4);
    let limited = limited.join().expect("limited upload");
    assert_near_limit(limited, LIMIT_BYTES, "the limited port");
    eprintln!("the unlimited port meanwhile: {unlimited:.0} bytes/s");
    assert!(
        unlimited > 20.0 * LIMIT_BYTES,
        "the unlimited port moved only {unlimited:.0} bytes/s"
    );
}

/// `BANDWIDTH` (Mbit/s) limits every port without a `[LIMIT]` line; `none` opts one out.
#[test]
fn bandwidth_is_the_default_limit() {
    let dir = TempDir::new("limit-bandwidth");
    let (sink, reports) = Target::sink();
    let (free_sink, free_reports) = Target::sink();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(sink.target(), None);
    let free = setup.map(free_sink.target(), None);
    setup.extra.push("BANDWIDTH=8".into());
    setup.mapper_extra = vec!["[LIMIT]".into(), format!("{free}=none")];
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    assert_near_limit(upload(port, &reports, BYTES, 5), LIMIT_BYTES, "BANDWIDTH=8");
    let unlimited = upload(free, &free_reports, 32 * 1024 * 1024, 6);
    assert!(
        unlimited > 20.0 * LIMIT_BYTES,
        "{free}=none moved only {unlimited:.0} bytes/s"
    );
    let list = admin.get_json("/api/mappings");
    for m in list["mappings"].as_array().unwrap() {
        if m["port"] == u64::from(free) {
            assert!(m.get("limit_bits_per_sec").is_none(), "{m}");
        } else {
            assert_eq!(m["limit_bits_per_sec"], 8_000_000, "{m}");
        }
    }

    // The API: a retargeted port keeps its limit, a new one gets BANDWIDTH, a deleted one
    // takes its [LIMIT] line along.
    let body = format!(r#"{{"target": "{}"}}"#, free_sink.target());
    let r = admin.call("PUT", &format!("/api/mappings/{free}"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let added = free_port();
    let r = admin.call("PUT", &format!("/api/mappings/{added}"), Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["limit_bits_per_sec"], 8_000_000, "{}", r.text());
    let list = admin.get_json("/api/mappings");
    let m = list["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["port"] == u64::from(free))
        .cloned()
        .unwrap();
    assert!(m.get("limit_bits_per_sec").is_none(), "{m}");
    let file = dir.path().join("port_mapper.cfg");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains(&format!("{free}=none"))
    );
    let r = admin.call("DELETE", &format!("/api/mappings/{free}"), None);
    assert_eq!(r.status, 204, "{}", r.text());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&format!("{free}=")), "{text}");
}

/// A reload that raises a port's limit speeds up its open stream at once.
#[test]
fn reload_changes_the_limit_of_open_streams() {
    const N: u64 = 24_000_000; // 24 s at 8 mbit, under 3 s at 80
    let dir = TempDir::new("limit-reload");
    let (sink, reports) = Target::sink();
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(sink.target(), None);
    setup.mapper_extra = vec!["[LIMIT]".into(), format!("{port}={LIMIT}")];
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let _client = attach_client(&server, setup.inner_port, &Tls::Off.client());

    let started = Instant::now();
    let upload_thread = thread::spawn(move || {
        upload(port, &reports, N, 7);
        reports
    });
    thread::sleep(Duration::from_secs(1));
    setup.mapper_extra = vec!["[LIMIT]".into(), format!("{port}=80mbit")];
    dir.write("port_mapper.cfg", &setup.mapper_text());
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], serde_json::json!([port]));
    server.wait_for_line("limit 80mbit", READY);
    let reports = upload_thread.join().expect("upload");
    let took = started.elapsed();
    eprintln!("24 MB, the limit raised after 1 s: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the open stream stayed at the old limit: {took:?}"
    );
    assert!(
        took > Duration::from_millis(2_300),
        "the open stream was not limited: {took:?}"
    );

    // The [LIMIT] line gone and BANDWIDTH set: the port is back at 8 mbit.
    setup.mapper_extra.clear();
    dir.write("port_mapper.cfg", &setup.mapper_text());
    let cfg = dir.path().join("server.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap() + "BANDWIDTH=8\n";
    std::fs::write(&cfg, text).unwrap();
    let r = admin.call("POST", "/api/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["settings"], serde_json::json!(["BANDWIDTH"]));
    assert_eq!(r.json()["changed"], serde_json::json!([port]));
    assert_near_limit(
        upload(port, &reports, BYTES / 2, 8),
        LIMIT_BYTES,
        "after BANDWIDTH replaced the line",
    );
}

#[test]
fn bad_limits_are_config_errors() {
    let inner = free_port();
    let cfg = |extra: &str| format!("[DEFAULT]\nINNER_PORT={inner}\nBIND_ADDR=127.0.0.1\n{extra}");
    let mapper = "[MAPPER]\n4001=127.0.0.1:9\n[LIMIT]\n";
    for (name, server_cfg, mapper_text, file, line, mentions) in [
        (
            "no-unit",
            cfg(""),
            format!("{mapper}4001=10\n"),
            "port_mapper.cfg",
            4,
            &["[LIMIT] key 4001", "no unit"][..],
        ),
        (
            "unknown-unit",
            cfg(""),
            format!("{mapper}4001=10mbps\n"),
            "port_mapper.cfg",
            4,
            &["[LIMIT] key 4001", "unknown unit \"mbps\""],
        ),
        (
            "ambiguous",
            cfg(""),
            format!("{mapper}4001=10mb\n"),
            "port_mapper.cfg",
            4,
            &["[LIMIT] key 4001", "ambiguous"],
        ),
        (
            "zero",
            cfg(""),
            format!("{mapper}4001=0kbit\n"),
            "port_mapper.cfg",
            4,
            &["[LIMIT] key 4001", "a limit of 0"],
        ),
        (
            "unmapped",
            cfg(""),
            format!("{mapper}4002=1mbit\n"),
            "port_mapper.cfg",
            4,
            &["[LIMIT] key 4002", "no [MAPPER] or [UDP] entry"],
        ),
        (
            "twice",
            cfg(""),
            format!("{mapper}4001=1mbit\n4001=2mbit\n"),
            "port_mapper.cfg",
            5,
            &["[LIMIT] key 4001", "two limits", "line 4"],
        ),
        (
            "bandwidth-zero",
            cfg("BANDWIDTH=0\n"),
            "[MAPPER]\n4001=127.0.0.1:9\n".to_string(),
            "server.cfg",
            4,
            &["[DEFAULT] key BANDWIDTH", "a limit of 0"],
        ),
        (
            "bandwidth-word",
            cfg("BANDWIDTH=fast\n"),
            "[MAPPER]\n4001=127.0.0.1:9\n".to_string(),
            "server.cfg",
            4,
            &["[DEFAULT] key BANDWIDTH", "not a rate"],
        ),
    ] {
        let dir = TempDir::new(&format!("limit-err-{name}"));
        dir.write("port_mapper.cfg", &mapper_text);
        dir.write("server.cfg", &server_cfg);
        expect_server_config_error(&dir, file, line, mentions);
    }
}
