//! FIN_TIMEOUT and IDLE_TIMEOUT: streams that move no byte are reset on both sides, and
//! their file descriptors come back; CONNECT_TIMEOUT's values are checked.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tcp_forward::bench::harness::procfs;

fn fds(p: &Proc) -> usize {
    procfs::fd_count(p.pid() as u32).expect("read /proc/PID/fd")
}

/// Wait (bounded) until `p` has `n` open descriptors.
fn wait_fds(p: &Proc, n: usize, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if fds(p) == n {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_target_that_never_reads_nor_closes_is_let_go_after_fin_timeout() {
    let dir = TempDir::new("fin-timeout");
    // A target that takes the connection and then does nothing with it for 30 s.
    let stalled = Target::spawn("127.0.0.1:0", |s| {
        thread::sleep(Duration::from_secs(30));
        drop(s);
    })
    .unwrap();
    let mut setup = ServerSetup::new();
    let port = setup.map(stalled.target(), None);
    setup.extra.push("FIN_TIMEOUT=1".to_string());
    let (server, client) = server_and_client(&dir, &setup);
    let (server_fds, client_fds) = (fds(&server), fds(&client));

    let mut visitors: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut v = visit(port);
            v.write_all(b"a request nobody reads").unwrap();
            v.shutdown(Shutdown::Write).unwrap();
            v
        })
        .collect();
    let opened = Instant::now();
    for v in &mut visitors {
        assert_closed(v, Duration::from_secs(10), "a visitor of a stalled target");
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "let go after {took:?}, before FIN_TIMEOUT"
    );
    server.wait_for_line("FIN_TIMEOUT", READY);
    assert!(
        wait_fds(&server, server_fds, READY),
        "server fds: {} then {server_fds}",
        fds(&server)
    );
    assert!(
        wait_fds(&client, client_fds, READY),
        "client fds: {} then {client_fds}",
        fds(&client)
    );
}

#[test]
fn idle_streams_are_reset_and_busy_ones_are_not() {
    let dir = TempDir::new("idle-timeout");
    let (_echo, mut setup, port) = echo_mapping();
    setup.extra.push("IDLE_TIMEOUT=1".to_string());
    let (_server, _client) = server_and_client(&dir, &setup);
    let mut idle = visit(port);
    echo_on(&mut idle, b"then nothing").unwrap();
    let mut busy = visit(port);
    // The busy stream moves a byte every 300 ms for 3 s: never reset.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        echo_on(&mut busy, b"x").unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    assert_closed(&mut idle, Duration::from_secs(5), "an idle stream");
    echo_on(&mut busy, b"still here").unwrap();
}

#[test]
fn timeouts_are_checked() {
    let dir = TempDir::new("timeout-values");
    for (key, value) in [
        ("IDLE_TIMEOUT", "-1"),
        ("FIN_TIMEOUT", "ten"),
        ("IDLE_TIMEOUT", "86401"),
    ] {
        let mut setup = ServerSetup::new();
        setup.extra.push(format!("{key}={value}"));
        let cfg = setup.write(&dir);
        let mut p = spawn("server", &["server", cfg.to_str().unwrap()], &[]);
        assert_eq!(p.wait_exit(READY).unwrap().code(), Some(2), "{key}={value}");
        let log = p.log_text();
        assert!(log.contains(key) && log.contains("line"), "{log}");
    }
    for bad in ["0", "x", "100000"] {
        let mut p = spawn(
            "client",
            &["client", "127.0.0.1", "1", "--connect-timeout", bad],
            &[],
        );
        assert_eq!(p.wait_exit(READY).unwrap().code(), Some(2), "{bad}");
        assert!(
            p.log_text().contains("--connect-timeout"),
            "{}",
            p.log_text()
        );
    }
}

/// A listener whose accept queue is full: Linux drops further SYNs, so a connect to it
/// neither succeeds nor fails until its own timeout. Returned with the connections that
/// fill the queue, which must live as long as it; `None` where the kernel answers anyway.
fn black_hole() -> Option<(std::net::TcpListener, Vec<TcpStream>)> {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen(2) on a descriptor the listener owns; it only shrinks the backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let addr = l.local_addr().expect("addr");
    let fill: Vec<TcpStream> = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        return None;
    }
    Some((l, fill))
}

#[test]
fn a_target_that_never_answers_fails_after_connect_timeout() {
    let dir = TempDir::new("connect-timeout");
    let Some((hole, _fill)) = black_hole() else {
        return eprintln!(
            "SKIP: a_target_that_never_answers: this kernel answers SYNs to a listener \
             whose accept queue is full"
        );
    };
    let mut setup = ServerSetup::new().tls_off();
    let port = setup.map(hole.local_addr().unwrap(), None);
    let server = setup.start(&dir);
    let client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            extra: vec!["--connect-timeout", "1"],
            ..Tls::Off.client()
        },
    );
    let started = Instant::now();
    let mut s = visit(port);
    assert_closed(
        &mut s,
        Duration::from_secs(6),
        "a visitor to a silent target",
    );
    let waited = started.elapsed();
    client.wait_for_line("connect timed out", READY);
    server.wait_for_line("connect timed out", READY);
    // Not before the second the client was given (the close itself may take a moment).
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}
