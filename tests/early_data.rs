//! A visitor's first bytes leave before the client has connected the target (no round trip
//! is spent waiting for OPEN_OK). The client keeps them, within the stream's window, while
//! it resolves the target's name and connects, then delivers them in order, followed by the
//! visitor's FIN if it came too.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use common::*;

#[test]
fn a_request_larger_than_the_window_sent_at_once_to_a_named_target() {
    let dir = TempDir::new("early-by-name");
    let responder = Target::half_close_responder();
    // By name: the stream waits for the resolver, so the request arrives first.
    let (_server, _client, port) = tunnel_to(&dir, format!("localhost:{}", responder.port()));
    // 3 MiB: more than one 1 MiB window, so credit must flow back after the connect.
    let data = pattern(77, 3 * 1024 * 1024 + 17);
    let mut s = visit(port);
    s.write_all(&data).expect("write request");
    s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    let reply = read_to_eof(&mut s, 1024).expect("read the reply");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        digest_of(&data).line(),
        "the target must receive the whole early request, then EOF"
    );
}

#[test]
fn early_data_for_a_refused_target_is_dropped_and_the_tunnel_lives_on() {
    let dir = TempDir::new("early-refused");
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    let refused = RefusedPort::new();
    let bad = setup.map(refused.addr(), None);
    let good = setup.map(echo.target(), None);
    let (_server, client) = server_and_client(&dir, &setup);

    let mut v = visit(bad);
    let _ = v.write_all(&pattern(5, 200 * 1024));
    let _ = v.shutdown(Shutdown::Write);
    let r = wait_closed(&mut v, Duration::from_secs(5));
    assert!(
        r.is_closed(),
        "visitor of a refused target still open: {r:?}"
    );
    assert_eq!(r.bytes(), 0, "no data may come from a refused target");
    client.wait_for_line("cannot connect to", Duration::from_secs(5));
    assert_echo(good, "after early data for a refused target");
}
