//! The cap on connections in the handshake counts only live handshakes: connections that
//! came and went must not push a real client, still mid-handshake, out.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn closed_connections_do_not_evict_a_live_handshake() {
    let dir = TempDir::new("hs-limit");
    let (_echo, setup, _) = echo_mapping();
    let server = setup.start(&dir);
    let inner = ("127.0.0.1", setup.inner_port);

    // A client that has received its challenge and not answered yet.
    let mut live = TcpStream::connect(inner).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut preamble = [0u8; 8];
    live.read_exact(&mut preamble).expect("challenge arrives");
    assert_eq!(&preamble[..6], b"TCPFWD");

    // More than the cap (256) of connections that open and close at once.
    for _ in 0..300 {
        drop(TcpStream::connect(inner).expect("connect"));
    }
    // Let the server take them all in: a real client attaches meanwhile.
    let _client = attach_client(&server, setup.inner_port, &ClientOpts::default());

    // The live handshake is still open: reading finds no EOF before its own timeout.
    live.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut rest = [0u8; 64];
    match live.read(&mut rest) {
        Ok(0) => panic!("the live handshake was closed:\n{}", server.tail(10)),
        Ok(_) => {} // the rest of the challenge frame
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "unexpected error on the live handshake: {e}"
        ),
    }
    assert!(
        !server
            .log_text()
            .contains("too many connections in the handshake"),
        "a live handshake was evicted:\n{}",
        server.tail(10)
    );
}
