//! Bulk transfer: 64 MiB each way at the same time on one stream, checksummed.

mod common;

use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sixty_four_mib_each_way_at_once_on_one_stream() {
    const N: u64 = 64 * 1024 * 1024;
    let dir = TempDir::new("bulk");
    let (duplex, reports) = Target::duplex(N, 0xb0b);
    let (_server, _client, port) = tunnel_to(&dir, duplex.target());

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
        "64 MiB each way in {elapsed:?} ({:.0} MiB/s per direction)",
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
