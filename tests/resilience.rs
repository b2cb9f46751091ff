//! Failures around the tunnel: refused targets, no client, killed client, killed server,
//! garbage and idle connections on INNER_PORT.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn refused_target_closes_visitor_and_other_mapping_keeps_working() {
    let dir = TempDir::new("refused");
    let refused_port = RefusedPort::new();
    let refused = refused_port.addr();
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    let p_bad = setup.map(refused, None);
    let p_good = setup.map(echo.target(), None);
    let (_server, client) = server_and_client(&dir, &setup);

    // A stream on the good mapping, open across the failure.
    let mut open = visit(p_good);
    echo_on(&mut open, b"before").expect("echo before the refused connect");

    let started = Instant::now();
    let mut v = visit(p_bad);
    let _ = v.write_all(b"hello?");
    let r = wait_closed(&mut v, Duration::from_secs(5));
    assert!(
        r.is_closed(),
        "visitor of a refused target still open after 5 s: {r:?}"
    );
    assert_eq!(r.bytes(), 0, "no data may come from a refused target");
    eprintln!("refused visitor closed after {:?}", started.elapsed());
    client.wait_for_line("cannot connect to", Duration::from_secs(5));
    assert!(
        client.log_text().contains(&refused.port().to_string()),
        "client log should name the refused target {refused}:\n{}",
        client.tail(20)
    );

    echo_on(&mut open, b"after").expect("the open stream keeps working");
    assert_echo(p_good, "new visitor on the other mapping");
    // And the refused mapping keeps refusing cleanly, without harming the tunnel.
    assert_visit_closed(
        p_bad,
        Duration::from_secs(5),
        "second visitor of the refused target",
    );
    assert_echo(p_good, "after the second refusal");
}

#[test]
fn no_client_attached_closes_visitor_at_once() {
    let dir = TempDir::new("no-client");
    let (echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);

    let started = Instant::now();
    assert_visit_closed(
        port,
        Duration::from_secs(2),
        "visitor with no client attached",
    );
    let took = started.elapsed();
    server.wait_for_line("no client for tag", Duration::from_secs(2));
    assert!(took < Duration::from_secs(2), "closing took {took:?}");
    // The listener stays open: a second visitor is also accepted and closed.
    assert_visit_closed(
        port,
        Duration::from_secs(2),
        "second visitor with no client",
    );
    server.wait_for_count("no client for tag", 2, Duration::from_secs(2));
    assert_eq!(echo.accepted(), 0, "nothing may reach the target");
}

#[test]
fn client_sigkill_closes_streams_server_keeps_listening_restart_serves() {
    let dir = TempDir::new("client-kill");
    let (_echo, setup, port) = echo_mapping();
    let (server, mut client) = server_and_client(&dir, &setup);

    let mut streams: Vec<TcpStream> = (0..5).map(|_| visit(port)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        echo_on(s, format!("stream {i}").as_bytes()).expect("echo before kill");
    }
    client.kill9();

    let started = Instant::now();
    for (i, s) in streams.iter_mut().enumerate() {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        let r = wait_closed(s, left.max(Duration::from_millis(10)));
        assert!(
            r.is_closed(),
            "visitor stream {i} still open 5 s after the client died: {r:?}"
        );
    }
    server.wait_for_line("tunnel detached", Duration::from_secs(5));

    // Still listening; no client now.
    assert_visit_closed(
        port,
        Duration::from_secs(2),
        "visitor while no client is attached",
    );
    server.wait_for_line("no client for tag", Duration::from_secs(2));

    let _client2 = attach_client(&server, setup.inner_port, &ClientOpts::default());
    assert_echo(port, "after the client restarted");
}

#[test]
fn server_killed_and_restarted_client_reattaches_by_itself() {
    let dir = TempDir::new("server-kill");
    let (echo, setup, port) = echo_mapping();
    let cfg = setup.write(&dir);
    let mut server = start_server_cfg(&cfg, "server");
    let client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    let mut s = visit(port);
    echo_on(&mut s, b"before").expect("echo before the server dies");
    assert_eq!(echo.active(), 1);

    server.kill9();
    // The visitor's connection died with the server; the client must close the inner one.
    assert_closed(&mut s, Duration::from_secs(2), "visitor of a killed server");
    assert!(
        echo.wait_idle(Duration::from_secs(5)),
        "the client left {} inner connection(s) open after the tunnel died",
        echo.active()
    );
    client.wait_for_line("reconnecting in", Duration::from_secs(5));

    let server2 = start_server_cfg(&cfg, "server2");
    server2.wait_for_line("tunnel attached", Duration::from_secs(20));
    client.wait_for_count("tunnel up", 2, Duration::from_secs(5));
    assert_echo(port, "through the restarted server");
}

#[test]
fn garbage_and_idle_connections_do_not_block_a_real_client() {
    let dir = TempDir::new("garbage");
    let (_echo, setup, port) = echo_mapping();
    let server = setup.start(&dir);
    let inner = SocketAddr::from(([127, 0, 0, 1], setup.inner_port));

    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| connect_retry(inner, Duration::from_secs(2)).expect("idle connect"))
        .collect();
    let garbage_inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 4096],
        vec![0; 64],
        pattern(99, 100_000),
        b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        pattern(98, 3),
        pattern(97, 17),
    ];
    let mut garbage: Vec<TcpStream> = garbage_inputs
        .iter()
        .map(|g| {
            let mut s = connect_retry(inner, Duration::from_secs(2)).expect("garbage connect");
            // The server may close on the first bad byte; a failed write is fine.
            let _ = s.write_all(g);
            s
        })
        .collect();

    let started = Instant::now();
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a real client needed {took:?} to attach"
    );
    assert_echo(port, "served beside garbage and idle connections");

    // Garbage is closed, idle connections are closed by the handshake deadline.
    for (i, s) in garbage.iter_mut().enumerate() {
        let r = wait_closed(s, Duration::from_secs(10));
        assert!(r.is_closed(), "garbage connection {i} still open: {r:?}");
    }
    let r = wait_closed(&mut idle[0], Duration::from_secs(15));
    assert!(
        r.is_closed(),
        "an idle connection on INNER_PORT still open after 15 s: {r:?}"
    );
    // The server is intact.
    assert_echo(port, "after the bad connections were dropped");
}

#[test]
fn stream_cap_refuses_extra_visitors_cleanly() {
    let dir = TempDir::new("max-streams");
    let (_echo, mut setup, port) = echo_mapping();
    setup.extra.push("MAX_STREAMS=4".to_string());
    let (_server, _client) = server_and_client(&dir, &setup);

    let mut held: Vec<TcpStream> = (0..4).map(|_| visit(port)).collect();
    for (i, s) in held.iter_mut().enumerate() {
        echo_on(s, format!("held {i}").as_bytes())
            .unwrap_or_else(|e| panic!("stream {i} under the cap: {e}"));
    }
    let mut extra = visit(port);
    let r = wait_closed(&mut extra, Duration::from_secs(5));
    assert!(
        r.is_closed(),
        "a fifth visitor beyond MAX_STREAMS=4 still open: {r:?}"
    );
    for (i, s) in held.iter_mut().enumerate() {
        echo_on(s, b"still served").unwrap_or_else(|e| panic!("stream {i} after the refusal: {e}"));
    }

    // Closing one stream frees its slot (bounded retries: the close travels the tunnel).
    let mut first = held.remove(0);
    first.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(
        wait_closed(&mut first, Duration::from_secs(5)),
        Closed::Eof { bytes: 0 }
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match echo_roundtrip(port, b"a freed slot") {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => panic!("no slot freed within 5 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
