//! Dead tunnels are found by the heartbeat alone: a peer that stops (SIGSTOP) sends no FIN
//! and no reset, so only silence tells. With `HEARTBEAT=0.3` both ends must notice within
//! a few intervals, close the streams, and recover once the peer runs again.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Three silent intervals of 0.3 s, plus slack for a loaded machine.
const DETECT_WITHIN: Duration = Duration::from_secs(5);

fn setup_with_fast_heartbeat() -> (ServerSetup, Target, u16) {
    let (echo, mut setup, port) = echo_mapping();
    setup.extra.push("HEARTBEAT=0.3".to_string());
    (setup, echo, port)
}

/// Resumes a stopped process even when an assertion fails, so no test leaves one behind.
struct Cont(i32);

impl Drop for Cont {
    fn drop(&mut self) {
        // SAFETY: sending a signal to a child we started.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// SIGCONT to `stopped` (the server or the client); the client must attach anew and the
/// public port serve again.
fn resume_and_reattach(server: &Proc, client: &Proc, stopped: &Proc, port: u16) {
    let before = server.count("tunnel attached");
    stopped.signal(libc::SIGCONT);
    assert!(
        server.try_wait_for_count("tunnel attached", before + 1, READY),
        "client did not reattach once the {} ran again:\n{}\n{}",
        stopped.name,
        server.tail(20),
        client.tail(20)
    );
    assert_echo(port, &format!("after the {} came back", stopped.name));
}

#[test]
fn server_drops_a_silent_client_and_its_streams() {
    let dir = TempDir::new("hb-server");
    let (setup, _echo, port) = setup_with_fast_heartbeat();
    let (server, client) = server_and_client(&dir, &setup);
    let mut open = visit(port);
    echo_on(&mut open, b"alive").expect("echo before the client stops");

    client.signal(libc::SIGSTOP);
    let _resume = Cont(client.pid());
    let stopped = Instant::now();
    assert!(
        server.try_wait_for_line("tunnel is dead", DETECT_WITHIN),
        "server did not declare the silent tunnel dead within {DETECT_WITHIN:?}:\n{}",
        server.tail(20)
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "declared dead after {took:?}, before three 0.3 s intervals of silence"
    );
    // The visitor's stream went down with the tunnel.
    assert_closed(&mut open, DETECT_WITHIN, "visitor of the dead tunnel");

    // Once the client runs again it finds its tunnel closed and attaches anew.
    resume_and_reattach(&server, &client, &client, port);
}

#[test]
fn client_drops_a_silent_server_and_reconnects() {
    let dir = TempDir::new("hb-client");
    let (setup, _echo, port) = setup_with_fast_heartbeat();
    let (server, client) = server_and_client(&dir, &setup);
    assert_echo(port, "before the server stops");

    server.signal(libc::SIGSTOP);
    let _resume = Cont(server.pid());
    assert!(
        client.try_wait_for_line("tunnel is dead", DETECT_WITHIN),
        "client did not declare the silent tunnel dead within {DETECT_WITHIN:?}:\n{}",
        client.tail(20)
    );
    client.wait_for_line("reconnecting in", DETECT_WITHIN);

    resume_and_reattach(&server, &client, &server, port);
}
