//! Bulk transfer: 64 MiB each way at the same time on one stream, checksummed; streams reset
//! mid-payload; large messages on an open connection. Each runs over TLS and over plain TCP.

mod common;

use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tcp_forward::net::sys::set_abortive_close;

#[test]
fn sixty_four_mib_each_way_at_once_on_one_stream() {
    sixty_four_mib_each_way(Tls::On);
}

#[test]
fn sixty_four_mib_each_way_at_once_on_one_stream_tls_off() {
    sixty_four_mib_each_way(Tls::Off);
}

fn sixty_four_mib_each_way(tls: Tls) {
    const N: u64 = 64 * 1024 * 1024;
    let dir = TempDir::new("bulk");
    let (duplex, reports) = Target::duplex(N, 0xb0b);
    let (_server, _client, port) = tunnel_over(&dir, duplex.target(), tls);

    let mut s = visit(port);
    let mut w = s.try_clone().expect("clone");
    let started = Instant::now();
    let writer = thread::spawn(move || {
        let r = send_pattern(&mut w, 0xa11ce, N);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let received = recv_digest(&mut s).expect("visitor reads the target's 64 MiB to EOF");
    let sent = writer
        .join()
        .expect("writer thread")
        .expect("visitor writes 64 MiB");
    let elapsed = started.elapsed();
    let (target_sent, target_received) = reports
        .recv_timeout(Duration::from_secs(30))
        .expect("target report")
        .expect("target i/o");
    eprintln!(
        "{tls:?}: 64 MiB each way in {elapsed:?} ({:.0} MiB/s per direction)",
        mib_per_s(N, elapsed)
    );
    assert_eq!(
        target_received, sent,
        "visitor -> target: length and checksum"
    );
    assert_eq!(
        received, target_sent,
        "target -> visitor: length and checksum"
    );
    assert_eq!(received.len, N);
}

/// Streams reset in the middle of long payloads, on either side, leave the tunnel intact:
/// what is still in flight for a dead stream is dropped on the way, and the next streams
/// arrive whole in both directions.
#[test]
fn streams_reset_mid_payload_leave_the_tunnel_intact() {
    streams_reset_mid_payload(Tls::On);
}

#[test]
fn streams_reset_mid_payload_leave_the_tunnel_intact_tls_off() {
    streams_reset_mid_payload(Tls::Off);
}

fn streams_reset_mid_payload(tls: Tls) {
    const N: u64 = 32 * 1024 * 1024;
    const CUT: usize = 4 * 1024 * 1024;
    let dir = TempDir::new("bulk-reset");
    let source = Target::source(N, 0x5eed);
    // Reads part of an upload, then resets the connection.
    let quitter = Target::spawn("127.0.0.1:0", |mut s| {
        let _ = read_exact_n(&mut s, CUT);
        set_abortive_close(&s);
    })
    .expect("bind quitting target");
    let (sink, sums) = Target::sink();
    let mut setup = ServerSetup::new();
    let down = setup.map(source.target(), None);
    let quit = setup.map(quitter.target(), None);
    let up = setup.map(sink.target(), None);
    let (_server, _client) = server_and_client_over(&dir, &setup, tls);

    for round in 0..3 {
        // The visitor resets a download.
        let mut v = visit(down);
        read_exact_n(&mut v, CUT).expect("the first bytes of the download");
        set_abortive_close(&v);
        drop(v);
        // The target resets an upload: the visitor's writes fail once the reset is back.
        let mut u = visit(quit);
        let sent = send_pattern(&mut u, round, N);
        eprintln!("round {round}: upload to a quitting target: {sent:?}");
        assert!(
            sent.is_err(),
            "writing 32 MiB to a stream reset after 4 MiB fails"
        );
    }
    let mut v = visit(down);
    let got = recv_digest(&mut v).expect("a whole download after the resets");
    assert_eq!(
        got,
        pattern_digest(0x5eed, N),
        "download: length and checksum"
    );
    let mut u = visit(up);
    let sent = send_pattern(&mut u, 0x77, N).expect("a whole upload after the resets");
    u.shutdown(Shutdown::Write).expect("half-close the upload");
    let got = sums
        .recv_timeout(Duration::from_secs(30))
        .expect("sink report")
        .expect("sink i/o");
    assert_eq!(got, sent, "upload: length and checksum");
}

/// Messages of several MiB echoed on one connection that stays open: the last bytes of
/// each must arrive without an end-of-file or more traffic to wake anyone up.
#[test]
fn large_messages_echo_on_an_open_connection() {
    large_messages_echo(Tls::On);
}

#[test]
fn large_messages_echo_on_an_open_connection_tls_off() {
    large_messages_echo(Tls::Off);
}

fn large_messages_echo(tls: Tls) {
    use std::io::Write;
    const LEN: usize = 3 * 1024 * 1024 + 12_345;
    let dir = TempDir::new("bulk-echo");
    let echo = Target::echo();
    let (_server, _client, port) = tunnel_over(&dir, echo.target(), tls);
    let mut s = visit(port);
    for round in 0..5u64 {
        let msg = pattern(round, LEN);
        let mut w = s.try_clone().expect("clone");
        let out = msg.clone();
        let writer = thread::spawn(move || w.write_all(&out));
        let back = read_exact_n(&mut s, LEN).expect("the whole message comes back");
        writer
            .join()
            .expect("writer thread")
            .expect("write the message");
        assert!(back == msg, "round {round}: the echo differs");
    }
}
