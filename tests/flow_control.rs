//! Flow control: stalled streams (in both directions) must not slow the other streams of the
//! tunnel nor grow either process's memory, over TLS and over plain TCP.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1024 * 1024;
/// Bound on VmRSS of each process.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// What the target side tries to push into the stalled stream.
const STALL_PUSH: u64 = 256 * MIB;
/// What the healthy stream carries while the others are stalled.
const ACTIVE: u64 = 200 * MIB;
const BASELINE: u64 = 32 * MIB;

/// Wait (bounded) until `counter` has not grown for `quiet`.
fn wait_stable(counter: &AtomicU64, quiet: Duration, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

/// Receive `n` bytes from a fresh visitor connection to a source target; returns throughput.
fn timed_download(port: u16, seed: u64, n: u64) -> f64 {
    let mut s = visit(port);
    let started = Instant::now();
    let got = recv_digest(&mut s).unwrap_or_else(|e| panic!("download of {n} bytes: {e}"));
    let elapsed = started.elapsed();
    assert_eq!(got, pattern_digest(seed, n), "download content");
    mib_per_s(n, elapsed)
}

#[test]
fn stalled_streams_do_not_slow_others_and_memory_stays_bounded() {
    stalled_streams(Tls::On);
}

#[test]
fn stalled_streams_do_not_slow_others_and_memory_stays_bounded_tls_off() {
    stalled_streams(Tls::Off);
}

fn stalled_streams(tls: Tls) {
    let dir = TempDir::new("stall");
    let stop = Arc::new(AtomicBool::new(false));

    // Stalled stream 1: the target pushes, the visitor never reads.
    let pushed_by_target = Arc::new(AtomicU64::new(0));
    let firehose = Target::firehose(STALL_PUSH, pushed_by_target.clone(), stop.clone());
    // Stalled stream 2: the visitor pushes, the target never reads.
    let stop2 = stop.clone();
    let deaf = Target::spawn("127.0.0.1:0", move |_s| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    })
    .expect("bind deaf target");
    let baseline_source = Target::source(BASELINE, 1);
    let active_source = Target::source(ACTIVE, 2);
    let echo = Target::echo();

    let mut setup = ServerSetup::new();
    let p_fire = setup.map(firehose.target(), None);
    let p_deaf = setup.map(deaf.target(), None);
    let p_base = setup.map(baseline_source.target(), None);
    let p_active = setup.map(active_source.target(), None);
    let p_echo = setup.map(echo.target(), None);
    let (server, client) = server_and_client_over(&dir, &setup, tls);

    let baseline = timed_download(p_base, 1, BASELINE);

    // Start both stalls.
    let stalled_visitor = visit(p_fire); // never read
    let pushed_by_visitor = Arc::new(AtomicU64::new(0));
    let pusher = {
        let mut s = visit(p_deaf);
        let counter = pushed_by_visitor.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            push_until(&mut s, 3, STALL_PUSH, &counter, &stop);
            s
        })
    };
    let fire_fill = wait_stable(
        &pushed_by_target,
        Duration::from_millis(500),
        Duration::from_secs(20),
    );
    let deaf_fill = wait_stable(
        &pushed_by_visitor,
        Duration::from_millis(500),
        Duration::from_secs(20),
    );
    eprintln!(
        "stalled: target pushed {:.1} MiB, visitor pushed {:.1} MiB before blocking",
        fire_fill as f64 / MIB as f64,
        deaf_fill as f64 / MIB as f64
    );

    // An interactive stream still answers promptly.
    let t = Instant::now();
    assert_echo(p_echo, "echo while two streams are stalled");
    let echo_time = t.elapsed();
    assert!(
        echo_time < Duration::from_secs(2),
        "echo took {echo_time:?} while streams were stalled"
    );

    // The healthy stream moves ACTIVE bytes; sample both processes' RSS meanwhile.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let (sp, cp) = (server.pid(), client.pid());
        thread::spawn(move || {
            let mut max = (0u64, 0u64);
            let rss = |pid: i32| rss_kib(pid).unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(120);
            while sampling.load(Ordering::SeqCst) && Instant::now() < deadline {
                max.0 = max.0.max(rss(sp));
                max.1 = max.1.max(rss(cp));
                thread::sleep(Duration::from_millis(50));
            }
            max
        })
    };
    let active = timed_download(p_active, 2, ACTIVE);
    sampling.store(false, Ordering::SeqCst);
    let (server_max, client_max) = sampler.join().expect("sampler");

    let fire_total = pushed_by_target.load(Ordering::SeqCst);
    let deaf_total = pushed_by_visitor.load(Ordering::SeqCst);
    let server_now = server.rss_kib().unwrap_or(0);
    let client_now = client.rss_kib().unwrap_or(0);
    eprintln!(
        "{tls:?}: baseline {baseline:.0} MiB/s, with stalls {active:.0} MiB/s; RSS max server {server_max} KiB, client {client_max} KiB; \
         now server {server_now} KiB, client {client_now} KiB; stalled pushes {:.1} / {:.1} MiB",
        fire_total as f64 / MIB as f64,
        deaf_total as f64 / MIB as f64
    );

    stop.store(true, Ordering::SeqCst);
    drop(stalled_visitor);
    let _ = pusher.join();

    assert!(
        fire_total < 64 * MIB,
        "a visitor that never reads let the target push {fire_total} bytes: no flow control"
    );
    assert!(
        deaf_total < 64 * MIB,
        "a target that never reads let the visitor push {deaf_total} bytes: no flow control"
    );
    assert!(server_max > 0 && client_max > 0, "RSS sampling failed");
    assert!(
        server_max < RSS_BOUND_KIB,
        "server VmRSS reached {server_max} KiB"
    );
    assert!(
        client_max < RSS_BOUND_KIB,
        "client VmRSS reached {client_max} KiB"
    );
    assert!(
        active >= baseline / 4.0,
        "the healthy stream ran at {active:.0} MiB/s beside stalled streams, baseline {baseline:.0} MiB/s"
    );
}
