//! Data through the tunnel: echo of mixed sizes, many concurrent streams, half-close in both
//! orders (over TLS and over plain TCP), a target that sends and closes, IPv6 and host-name
//! targets.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn echo_mixed_sizes_on_one_connection() {
    let dir = TempDir::new("echo-mixed");
    let echo = Target::echo();
    let (_server, _client, port) = tunnel_to(&dir, echo.target());

    let sizes: [usize; 18] = [
        1,
        2,
        3,
        7,
        100,
        1000,
        1460,
        4096,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        100_000,
        256 * 1024 + 3,
        1024 * 1024 - 1,
        1024 * 1024,
    ];
    let mut s = visit(port);
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(1000 + i as u64, n);
        if let Err(e) = echo_on(&mut s, &data) {
            panic!("round trip {i} ({n} bytes) on one connection: {e}");
        }
    }
    // Then smaller ones again, interleaved, on the same connection.
    for (i, &n) in sizes.iter().rev().take(6).enumerate() {
        let data = pattern(2000 + i as u64, n);
        echo_on(&mut s, &data).unwrap_or_else(|e| panic!("second pass {n} bytes: {e}"));
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let r = wait_closed(&mut s, Duration::from_secs(5));
    assert_eq!(
        r,
        Closed::Eof { bytes: 0 },
        "after our FIN the echo target's FIN must come back"
    );
}

#[test]
fn fifty_plus_concurrent_streams_echo_distinct_data() {
    const STREAMS: usize = 64;
    let dir = TempDir::new("concurrent");
    let echo = Target::echo();
    let (_server, _client, port) = tunnel_to(&dir, echo.target());

    let barrier = Barrier::new(STREAMS);
    let results: Vec<Result<(), String>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..STREAMS)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut s = visit(port);
                    // Distinct sizes and contents per stream.
                    let n = 1 + (i * 7919) % (192 * 1024);
                    let data = pattern(0x5eed_0000 + i as u64, n);
                    barrier.wait();
                    // Two round trips each, so streams overlap in both directions.
                    echo_on(&mut s, &data).map_err(|e| format!("stream {i} ({n} B): {e}"))?;
                    let data2 = pattern(0x7eed_0000 + i as u64, 4096 + i);
                    echo_on(&mut s, &data2).map_err(|e| format!("stream {i} second: {e}"))?;
                    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                    match wait_closed(&mut s, Duration::from_secs(10)) {
                        Closed::Eof { bytes: 0 } => Ok(()),
                        other => Err(format!("stream {i}: expected clean EOF, got {other:?}")),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed: {failures:#?}",
        failures.len()
    );
    assert!(
        echo.accepted() >= STREAMS,
        "target saw {} connections",
        echo.accepted()
    );
}

#[test]
fn half_close_visitor_first_then_full_reply() {
    half_close_visitor_first(Tls::On);
}

#[test]
fn half_close_visitor_first_then_full_reply_tls_off() {
    half_close_visitor_first(Tls::Off);
}

fn half_close_visitor_first(tls: Tls) {
    let dir = TempDir::new("half-close-visitor");
    let responder = Target::half_close_responder();
    let (_server, _client, port) = tunnel_over(&dir, responder.target(), tls);

    for (i, n) in [0usize, 10, 1024 * 1024 + 5].into_iter().enumerate() {
        let mut s = visit(port);
        let data = pattern(300 + i as u64, n);
        s.write_all(&data).expect("write request");
        s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
        let reply = read_to_eof(&mut s, 1024)
            .unwrap_or_else(|e| panic!("request of {n} bytes: reading the reply: {e}"));
        let expected = digest_of(&data).line();
        assert_eq!(
            String::from_utf8_lossy(&reply),
            expected,
            "request of {n} bytes: the target must see all of it, then EOF, and its reply must arrive whole"
        );
    }
}

#[test]
fn half_close_target_first_while_visitor_still_sends() {
    half_close_target_first(Tls::On);
}

#[test]
fn half_close_target_first_while_visitor_still_sends_tls_off() {
    half_close_target_first(Tls::Off);
}

fn half_close_target_first(tls: Tls) {
    let dir = TempDir::new("half-close-target");
    const GREETING: u64 = 300 * 1024;
    let (duplex, reports) = Target::duplex(GREETING, 42);
    let (_server, _client, port) = tunnel_over(&dir, duplex.target(), tls);

    let mut s = visit(port);
    // The target sends its greeting and shuts down its write half at once.
    let got = recv_digest(&mut s).expect("read greeting to EOF");
    assert_eq!(got.len, GREETING, "all of the greeting before EOF");
    // Our write half is still open: send after having seen EOF.
    let mut d = Digest::default();
    for i in 0..8u64 {
        let chunk = pattern(900 + i, 128 * 1024 + i as usize);
        s.write_all(&chunk).expect("write after the peer's FIN");
        d.update(&chunk);
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let (sent, received) = reports
        .recv_timeout(Duration::from_secs(15))
        .expect("target report within 15 s")
        .expect("target i/o");
    assert_eq!(sent, got, "greeting digest");
    assert_eq!(
        received,
        d.finish(),
        "what the visitor sent after the target's FIN"
    );
    assert_closed(
        &mut s,
        Duration::from_secs(5),
        "visitor after both halves closed",
    );
}

#[test]
fn target_sends_16_mib_and_closes_all_delivered() {
    const N: u64 = 16 * 1024 * 1024;
    let dir = TempDir::new("source-16m");
    let source = Target::source(N, 16);
    let (_server, _client, port) = tunnel_to(&dir, source.target());

    let mut s = visit(port);
    let got = recv_digest(&mut s).expect("read until EOF");
    assert_eq!(got.len, N, "bytes delivered before EOF");
    assert_eq!(got, pattern_digest(16, N), "content delivered");
}

#[test]
fn ipv6_target() {
    let echo = match Target::echo_on("[::1]:0") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED ipv6_target: cannot bind [::1]:0 ({e})");
            return;
        }
    };
    let dir = TempDir::new("ipv6");
    let target = format!("[::1]:{}", echo.port());
    let (_server, _client, port) = tunnel_to(&dir, &target);
    let data = pattern(6, 200_000);
    echo_roundtrip(port, &data).unwrap_or_else(|e| panic!("echo through {target}: {e}"));
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn hostname_target() {
    // Serve on 127.0.0.1 and, when possible, on [::1] with the same port, so the test is
    // about name resolution and not about which family `localhost` resolves to first.
    let echo4 = Target::echo();
    let port4 = echo4.port();
    let _echo6 = Target::echo_on(&format!("[::1]:{port4}")).ok();
    let dir = TempDir::new("hostname");
    let (_server, _client, port) = tunnel_to(&dir, format!("localhost:{port4}"));
    let data = pattern(7, 50_000);
    echo_roundtrip(port, &data).unwrap_or_else(|e| panic!("echo through localhost:{port4}: {e}"));
    let mut s = visit(port);
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
}
