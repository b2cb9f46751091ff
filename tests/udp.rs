//! UDP mappings against the real binary on loopback: datagrams keep their boundaries and
//! contents at every size, many flows at once stay apart, flows close after `UDP_TIMEOUT`
//! on both sides, a flood leaves a TCP stream on the same tunnel intact, a port maps TCP and
//! UDP at once, `[ALLOW]`, `[LIMIT]` and `MAX_UDP_FLOWS` drop and count what they refuse, a
//! killed client and an unreachable target close flows without harm to the rest, and IPv6
//! and name targets work.
//!
//! Loopback may drop a datagram under load: every exchange re-sends on a read timeout, a
//! bounded number of times. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::admin::{Admin, eventually, metric, start_with_admin};
use common::*;
use serde_json::Value;
use tcp_forward::net::dgram::{Segmentation, send_batch};

/// The largest datagram a mapping carries (an IPv4 UDP payload's limit).
const MAX_DATAGRAM: usize = 65_507;

/// A server with the admin API, serving `setup` plus the `[UDP]` lines `udp`
/// (`(public port, target)`) and then `after` (more sections), with one attached client.
fn start_udp(
    dir: &TempDir,
    mut setup: ServerSetup,
    udp: &[(u16, String)],
    after: &[String],
) -> (Proc, Admin, Proc) {
    setup.mapper_extra.push("[UDP]".into());
    for (port, target) in udp {
        setup.mapper_extra.push(format!("{port}={target}"));
    }
    setup.mapper_extra.extend(after.iter().cloned());
    let (server, admin) = start_with_admin(dir, &setup, None);
    let client = attach_client(&server, setup.inner_port, &ClientOpts::default());
    (server, admin, client)
}

/// [`start_udp`] with one `[UDP]` mapping from a fresh port to a new echo target.
fn start_udp_echo(dir: &TempDir, setup: ServerSetup) -> (UdpTarget, u16, Proc, Admin, Proc) {
    let target = UdpTarget::echo();
    let port = free_udp_port();
    let (server, admin, client) = start_udp(dir, setup, &[(port, target.addr.to_string())], &[]);
    (target, port, server, admin, client)
}

/// The UDP flows the server lists for `port`.
fn flows(admin: &Admin, port: u16) -> Vec<Value> {
    let streams = admin.get_json("/api/streams");
    streams["streams"]
        .as_array()
        .expect("a streams array")
        .iter()
        .filter(|s| s["proto"] == "udp" && s["port"] == u64::from(port))
        .cloned()
        .collect()
}

/// A series of the server's metrics (None when absent).
fn series(admin: &Admin, s: &str) -> Option<f64> {
    metric(&admin.get("/metrics").text(), s)
}

fn dropped(admin: &Admin, port: u16, reason: &str) -> f64 {
    let s = format!(r#"tcpforward_udp_dropped_total{{port="{port}",reason="{reason}"}}"#);
    series(admin, &s).unwrap_or_else(|| panic!("no series {s}"))
}

fn udp_visits(admin: &Admin, port: u16, result: &str) -> f64 {
    let s = format!(r#"tcpforward_visitors_total{{port="{port}",result="{result}",proto="udp"}}"#);
    series(admin, &s).unwrap_or_else(|| panic!("no series {s}"))
}

/// Wait until the server has counted exactly `n` drops of `reason` on `port`.
fn wait_dropped(admin: &Admin, port: u16, reason: &str, n: f64) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} datagrams on port {port} counted as dropped, reason {reason}"),
        || (dropped(admin, port, reason) == n).then_some(()),
    );
}

/// Nothing comes back to `v` within a short wait (after the server counted the drop, an
/// answer would be on its way already).
fn assert_no_answer(v: &UdpSocket, what: &str) {
    v.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("set a read timeout");
    let mut buf = [0u8; 2048];
    match v.recv(&mut buf) {
        Ok(n) => panic!("{what}: an answer came back ({n} bytes)"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{what}: {e}"
        ),
    }
    v.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
}

/// Send `data` from `v` to `port` and return the answer: up to five tries of the read
/// timeout.
fn exchange(v: &UdpSocket, port: u16, data: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..5 {
        v.send_to(data, ("127.0.0.1", port)).expect("send");
        if let Ok(n) = v.recv(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Ask the kernel for a larger receive buffer (up to what it allows without privileges),
/// so a few of the largest datagrams in flight fit.
fn grow_receive_buffer(s: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a descriptor `s` owns, with a pointer to an int of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The seed of a test's random choices: `TCP_FORWARD_TEST_SEED`, or the clock; printed, so a
/// failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("TCP_FORWARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (TCP_FORWARD_TEST_SEED={seed} to replay)");
    seed
}

// ---------------------------------------------------------------------------------------
// Boundaries and contents
// ---------------------------------------------------------------------------------------

/// Bytes at the start of a datagram that carry its sequence number (when it is that long).
const TAG: usize = 4;

/// Datagram `seq` of a run: `len` bytes of the seed's pattern, its first bytes the sequence
/// number.
fn datagram(seed: u64, seq: usize, len: usize) -> Vec<u8> {
    let mut d = pattern(seed ^ (seq as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), len);
    if len >= TAG {
        d[..TAG].copy_from_slice(&(seq as u32).to_le_bytes());
    }
    d
}

#[test]
fn ten_thousand_datagrams_of_every_size_keep_their_boundaries_and_contents() {
    const COUNT: usize = 10_000;
    /// Datagrams in flight at once: a few of the largest fit the sockets' buffers.
    const WINDOW: usize = 3;
    const RESEND_AFTER: Duration = Duration::from_millis(300);
    const MAX_SENDS: u32 = 20;
    const WITHIN: Duration = Duration::from_secs(60);

    let seed = seed("ten_thousand_datagrams");
    let mut rng = seed;
    let mut sizes: Vec<usize> = (0..COUNT)
        .map(|_| 1 + (splitmix(&mut rng) % MAX_DATAGRAM as u64) as usize)
        .collect();
    // Both bounds, whatever the seed draws.
    sizes[0] = 1;
    sizes[1] = MAX_DATAGRAM;
    sizes[COUNT / 2] = MAX_DATAGRAM;
    sizes[COUNT - 1] = 1;

    let dir = TempDir::new("udp-sizes");
    let (_target, port, _server, admin, _client) = start_udp_echo(&dir, ServerSetup::new());
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    grow_receive_buffer(&v, 4 * 1024 * 1024);
    v.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");

    struct InFlight {
        data: Vec<u8>,
        sent_at: Instant,
        sends: u32,
    }
    let started = Instant::now();
    let mut inflight: BTreeMap<usize, InFlight> = BTreeMap::new();
    let mut next = 0;
    let mut done = vec![false; COUNT];
    let (mut resent, mut duplicates, mut bytes) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    while next < COUNT || !inflight.is_empty() {
        assert!(
            started.elapsed() < WITHIN,
            "not done within {WITHIN:?}: {next} sent, {} in flight (seed {seed})",
            inflight.len()
        );
        // Fill the window. A datagram too short for its tag travels alone, so that what
        // comes back while it is in flight is either it or a late duplicate of a tagged one.
        while next < COUNT && inflight.len() < WINDOW {
            let short = sizes[next] < TAG;
            let alone = inflight.values().any(|f| f.data.len() < TAG);
            if alone || (short && !inflight.is_empty()) {
                break;
            }
            let data = datagram(seed, next, sizes[next]);
            v.send_to(&data, ("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("send datagram {next}: {e}"));
            inflight.insert(
                next,
                InFlight {
                    data,
                    sent_at: Instant::now(),
                    sends: 1,
                },
            );
            next += 1;
        }
        match v.recv(&mut buf) {
            Ok(n) => {
                let got = &buf[..n];
                let seq = if n >= TAG {
                    u32::from_le_bytes(got[..TAG].try_into().expect("four bytes")) as usize
                } else {
                    // Untagged: the short datagram in flight, if it is that.
                    match inflight.iter().find(|(_, f)| f.data == got) {
                        Some((&seq, _)) => seq,
                        None => panic!(
                            "an echo of {n} bytes {got:?} matches no short datagram in flight \
                             (seed {seed})"
                        ),
                    }
                };
                if let Some(f) = inflight.get(&seq) {
                    assert!(
                        f.data == got,
                        "echo of datagram {seq}: {n} bytes, sent {} (seed {seed}); first \
                         difference at byte {:?}",
                        f.data.len(),
                        f.data.iter().zip(got).position(|(a, b)| a != b)
                    );
                    bytes += n as u64;
                    inflight.remove(&seq);
                    done[seq] = true;
                } else if seq < COUNT && done[seq] {
                    // A late duplicate of an earlier answer (it was sent again): it must
                    // still be that datagram.
                    assert!(
                        datagram(seed, seq, sizes[seq]) == got,
                        "a second echo of datagram {seq} differs from it (seed {seed})"
                    );
                    duplicates += 1;
                } else {
                    panic!("an echo tagged {seq} ({n} bytes) was never sent (seed {seed})");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receive an echo: {e}"),
        }
        for (seq, f) in inflight.iter_mut() {
            if f.sent_at.elapsed() >= RESEND_AFTER {
                assert!(
                    f.sends < MAX_SENDS,
                    "datagram {seq} ({} bytes) got no echo after {MAX_SENDS} sends (seed {seed})",
                    f.data.len()
                );
                v.send_to(&f.data, ("127.0.0.1", port))
                    .unwrap_or_else(|e| panic!("send datagram {seq} again: {e}"));
                f.sent_at = Instant::now();
                f.sends += 1;
                resent += 1;
            }
        }
    }
    assert!(done.iter().all(|&d| d));
    eprintln!(
        "{COUNT} datagrams, {bytes} bytes echoed in {:?}: {resent} sent again, {duplicates} \
         duplicates",
        started.elapsed()
    );
    // The server saw at least every datagram once, each way.
    let s = format!(r#"tcpforward_udp_datagrams_total{{port="{port}",direction="out"}}"#);
    let out = series(&admin, &s).unwrap_or_else(|| panic!("no series {s}"));
    assert!(out >= COUNT as f64, "{s} = {out}");
    assert_eq!(
        dropped(&admin, port, "bad_size"),
        0.0,
        "no size was refused"
    );
}

/// Bursts of equal-sized datagrams: the roles send each tunnel read's run of them in
/// segmented sends where the kernel has them (toward the target and back to the visitor),
/// and every other burst leaves the visitor as segmented sends too, which the server's
/// socket receives coalesced; each still arrives as the datagram it was, none merged, none
/// cut.
#[test]
fn bursts_of_equal_sized_datagrams_arrive_one_by_one_and_intact() {
    const BURSTS: usize = 30;
    /// 48 of 1,200 bytes and a shorter one closing the run, as a segmented send may.
    const PER_BURST: usize = 49;
    const ROUNDS: usize = 5;
    let size = |i: usize| {
        if i % PER_BURST == PER_BURST - 1 {
            700
        } else {
            1200
        }
    };

    let seed = seed("bursts_of_equal_sized_datagrams");
    let dir = TempDir::new("udp-bursts");
    let (_target, port, _server, admin, _client) = start_udp_echo(&dir, ServerSetup::new());
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    grow_receive_buffer(&v, 4 * 1024 * 1024);
    let mut buf = vec![0u8; 65_536];
    let mut resent = 0;
    for burst in 0..BURSTS {
        let mut waiting: Vec<usize> = (burst * PER_BURST..(burst + 1) * PER_BURST).collect();
        for round in 0..ROUNDS {
            let data: Vec<Vec<u8>> = waiting
                .iter()
                .map(|&q| datagram(seed, q, size(q)))
                .collect();
            if burst % 2 == 1 {
                let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let mut seg = Segmentation::available();
                let mut sent = 0;
                for _ in 0..100 {
                    match send_batch(&v, Some(to), &parts[sent..], &mut seg) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("send burst {burst}: {e}"),
                    }
                    if sent == parts.len() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(sent, parts.len(), "burst {burst} sent");
            } else {
                for (d, &seq) in data.iter().zip(&waiting) {
                    v.send_to(d, ("127.0.0.1", port))
                        .unwrap_or_else(|e| panic!("send datagram {seq}: {e}"));
                }
            }
            let deadline = Instant::now() + Duration::from_millis(500);
            while !waiting.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                v.set_read_timeout(Some(left)).expect("set a read timeout");
                let n = match v.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => panic!("receive an echo: {e}"),
                };
                let got = &buf[..n];
                assert!(n >= TAG, "an echo of {n} bytes (seed {seed})");
                let seq = u32::from_le_bytes(got[..TAG].try_into().expect("four bytes")) as usize;
                assert!(
                    seq < (burst + 1) * PER_BURST && got == datagram(seed, seq, size(seq)),
                    "an echo of {n} bytes tagged {seq} is not datagram {seq} of {} bytes \
                     (seed {seed})",
                    size(seq)
                );
                // A late duplicate of one already back is that datagram too: nothing to do.
                waiting.retain(|&s| s != seq);
            }
            if waiting.is_empty() {
                break;
            }
            assert!(
                round + 1 < ROUNDS,
                "burst {burst}: datagrams {waiting:?} got no echo after {ROUNDS} sends \
                 (seed {seed})"
            );
            resent += waiting.len();
        }
    }
    eprintln!(
        "{} datagrams echoed, {resent} sent again",
        BURSTS * PER_BURST
    );
    assert_eq!(
        dropped(&admin, port, "bad_size"),
        0.0,
        "no size was refused"
    );
}

// ---------------------------------------------------------------------------------------
// Many flows
// ---------------------------------------------------------------------------------------

/// Send `data` from each visitor and check each gets its own datagram back, re-sending to
/// those still waiting once a round's half second is up (five rounds at most).
fn each_echoes(port: u16, visitors: &[UdpSocket], data: impl Fn(usize) -> Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let mut waiting: Vec<usize> = (0..visitors.len()).collect();
    for round in 0..5 {
        for &i in &waiting {
            visitors[i]
                .send_to(&data(i), ("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("visitor {i}: send: {e}"));
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        waiting.retain(|&i| {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = &visitors[i];
            v.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set a read timeout");
            match v.recv(&mut buf) {
                Ok(n) => {
                    assert!(
                        buf[..n] == data(i)[..],
                        "visitor {i} got {:?}, not its own datagram",
                        String::from_utf8_lossy(&buf[..n])
                    );
                    false
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
                Err(e) => panic!("visitor {i}: receive: {e}"),
            }
        });
        if waiting.is_empty() {
            return;
        }
        eprintln!(
            "{} visitors got no echo in round {round}; sending again",
            waiting.len()
        );
    }
    panic!("visitors {waiting:?} got no echo after 5 sends");
}

#[test]
fn five_hundred_flows_at_once_each_get_their_own_datagrams() {
    const FLOWS: usize = 500;
    let dir = TempDir::new("udp-flows");
    let (target, port, _server, admin, client) = start_udp_echo(&dir, ServerSetup::new());
    let visitors: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| udp_visitor(Ipv4Addr::LOCALHOST))
        .collect();
    let text = |round: usize| {
        move |i: usize| format!("flow {i} round {round} {}", "x".repeat(i % 200)).into_bytes()
    };
    // Fifty at a time (a burst of 500 would overflow the target's socket buffer): every
    // flow opened, then every flow once more while all are open.
    let started = Instant::now();
    for round in 0..2 {
        for chunk in (0..FLOWS).step_by(50) {
            each_echoes(port, &visitors[chunk..chunk + 50], |i| {
                text(round)(chunk + i)
            });
        }
    }
    eprintln!("{FLOWS} flows, two rounds, in {:?}", started.elapsed());

    let listed = flows(&admin, port);
    assert_eq!(listed.len(), FLOWS, "flows listed by /api/streams");
    let mut by_visitor: HashMap<String, u64> = HashMap::new();
    for f in &listed {
        let v = f["visitor"]
            .as_str()
            .expect("a visitor address")
            .to_string();
        by_visitor.insert(v, f["datagrams_in"].as_u64().expect("datagrams_in"));
    }
    for (i, v) in visitors.iter().enumerate() {
        let addr = v.local_addr().expect("visitor address").to_string();
        let n = by_visitor
            .get(&addr)
            .unwrap_or_else(|| panic!("visitor {i} ({addr}) has no flow listed"));
        assert!(*n >= 2, "visitor {i}: {n} datagrams in its flow");
    }
    let s = format!(r#"tcpforward_streams{{port="{port}",proto="udp"}}"#);
    assert_eq!(series(&admin, &s), Some(FLOWS as f64), "{s}");
    // One socket of the client's per flow, each a source of its own at the target.
    assert_eq!(
        target.sources().len(),
        FLOWS,
        "sources the target heard from"
    );
    let held = udp_ports_of(client.pid());
    assert!(
        held.len() >= FLOWS,
        "the client holds {} UDP sockets",
        held.len()
    );
}

// ---------------------------------------------------------------------------------------
// UDP_TIMEOUT
// ---------------------------------------------------------------------------------------

#[test]
fn a_quiet_flow_closes_after_udp_timeout_on_both_sides_and_opens_again() {
    let dir = TempDir::new("udp-timeout");
    let target = UdpTarget::echo();
    let port = free_udp_port();
    let mut setup = ServerSetup::new();
    setup.extra.push("UDP_TIMEOUT=1".into());
    setup.mapper_extra.push("[UDP]".into());
    setup.mapper_extra.push(format!("{port}={}", target.addr));
    let (server, admin) = start_with_admin(&dir, &setup, None);
    let client_admin = Admin {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        token: None,
    };
    let addr = client_admin.addr.to_string();
    let client = attach_client(
        &server,
        setup.inner_port,
        &ClientOpts {
            extra: vec!["--admin", &addr],
            ..ClientOpts::default()
        },
    );
    client.wait_for_line("admin API on", READY);
    let client_flows = || {
        metric(
            &client_admin.get("/metrics").text(),
            r#"tcpforward_streams{proto="udp"}"#,
        )
    };
    let server_flows = format!(r#"tcpforward_streams{{port="{port}",proto="udp"}}"#);

    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    assert!(udp_echoes_on(&v, port, b"first"), "the first flow echoes");
    let last = Instant::now();
    assert_eq!(flows(&admin, port).len(), 1, "one flow on the server");
    assert_eq!(client_flows(), Some(1.0), "one flow on the client");
    let first_source = target.sources()[0];
    assert!(
        udp_ports_of(client.pid()).contains(&first_source.port()),
        "the client holds the flow's socket (port {})",
        first_source.port()
    );

    eventually(
        Duration::from_secs(10),
        "the server to close the quiet flow",
        || flows(&admin, port).is_empty().then_some(()),
    );
    assert!(
        last.elapsed() >= Duration::from_secs(1),
        "closed after {:?}, before UDP_TIMEOUT",
        last.elapsed()
    );
    assert_eq!(series(&admin, &server_flows), Some(0.0), "{server_flows}");
    eventually(
        Duration::from_secs(5),
        "the client to close its flow",
        || (client_flows() == Some(0.0)).then_some(()),
    );
    eventually(
        Duration::from_secs(5),
        "the client to close the flow's UDP socket",
        || (!udp_ports_of(client.pid()).contains(&first_source.port())).then_some(()),
    );

    // The same visitor address again: a fresh flow, from a fresh socket of the client's.
    assert!(udp_echoes_on(&v, port, b"again"), "a new flow echoes");
    assert_eq!(flows(&admin, port).len(), 1);
    assert_eq!(client_flows(), Some(1.0));
    assert_eq!(udp_visits(&admin, port, "served"), 2.0, "two flows served");
    let sources = target.sources();
    eprintln!("target sources: {sources:?}");
}

/// A burst the server finds waiting all at once (it was stopped while the visitor sent 16
/// segmented sends of 54 datagrams, 1 MB, which its socket receives coalesced: one receive
/// of 864 datagrams) is carried whole: the tunnel's output is written as it reaches its
/// datagram limit, not only at the end of the loop turn, so none is dropped as
/// `tunnel_full` while the kernel takes the tunnel's bytes.
#[test]
fn a_coalesced_burst_read_in_one_turn_is_carried_not_dropped() {
    const RUNS: usize = 16;
    const PER_RUN: usize = 54;
    let dir = TempDir::new("udp-burst");
    // A target that never reads: what it cannot hold the kernel drops there, after the
    // tunnel, which is not what this counts.
    let target = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP target");
    let port = free_udp_port();
    let (server, admin, _client) = start_udp(
        &dir,
        ServerSetup::new(),
        &[(port, target.local_addr().expect("its address").to_string())],
        &[],
    );
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let carried = format!(r#"tcpforward_udp_datagrams_total{{port="{port}",direction="in"}}"#);
    // The flow first, so that the burst is all datagrams of an open flow.
    v.send_to(b"open", to).expect("send");
    eventually(Duration::from_secs(10), "the flow opens", || {
        (series(&admin, &carried) == Some(1.0)).then_some(())
    });
    let mut seg = Segmentation::available();
    if seg == Segmentation::off() {
        eprintln!("skipped: this kernel has no UDP segmentation offload");
        return;
    }

    // SAFETY: a signal to the server, a child process of this test.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGSTOP) }, 0);
    let resume = ResumeOnDrop(server.pid());
    let data: Vec<Vec<u8>> = (0..RUNS * PER_RUN).map(|i| datagram(7, i, 1200)).collect();
    let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    for run in parts.chunks(PER_RUN) {
        match send_batch(&v, Some(to), run, &mut seg) {
            Ok(n) => sent += n,
            Err(e) => panic!("send a run: {e}"),
        }
    }
    assert_eq!(sent, parts.len(), "the visitor sent the whole burst");
    drop(resume);

    let total = (1 + RUNS * PER_RUN) as f64;
    eventually(Duration::from_secs(10), "the burst is counted", || {
        let seen = series(&admin, &carried).unwrap_or(0.0) + dropped(&admin, port, "tunnel_full");
        (seen >= total).then_some(())
    });
    assert_eq!(
        dropped(&admin, port, "tunnel_full"),
        0.0,
        "a burst that fits the kernel's buffers is carried"
    );
    assert_eq!(series(&admin, &carried), Some(total));
}

/// SIGCONT for a stopped child when dropped, so that a failing test leaves nothing stopped.
struct ResumeOnDrop(i32);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a child process of this test.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

// ---------------------------------------------------------------------------------------
// A flood beside a TCP stream
// ---------------------------------------------------------------------------------------

#[test]
fn a_udp_flood_leaves_a_tcp_stream_on_the_same_tunnel_intact() {
    const TCP_BYTES: u64 = 8 * 1024 * 1024;
    const FLOOD_MAX: u64 = 2_000_000;
    const FLOOD_FOR: Duration = Duration::from_secs(15);
    let dir = TempDir::new("udp-flood");
    let (sink, digests) = Target::sink();
    let mut setup = ServerSetup::new();
    let tcp_port = setup.map(sink.target(), None);
    let (_target, port, _server, admin, _client) = start_udp_echo(&dir, setup);
    assert!(udp_echoes(port, b"before"), "the UDP mapping echoes");

    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("a flood socket");
            let d = vec![0x5au8; 1200];
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < FLOOD_MAX
                && start.elapsed() < FLOOD_FOR
            {
                if s.send_to(&d, ("127.0.0.1", port)).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    eventually(Duration::from_secs(5), "the flood to start", || {
        (sent.load(Ordering::Relaxed) >= 1000).then_some(())
    });
    let at_start = sent.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut s = visit(tcp_port);
    let sum = send_pattern(&mut s, 77, TCP_BYTES).expect("send the TCP stream");
    s.shutdown(Shutdown::Write)
        .expect("shut down the write half");
    let got = digests
        .recv_timeout(Duration::from_secs(60))
        .expect("the sink's digest")
        .expect("the sink read the stream");
    let took = started.elapsed();
    let during = sent.load(Ordering::Relaxed) - at_start;
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("the flood thread");
    assert_eq!(got, sum, "the TCP stream arrived complete and intact");
    assert_eq!(got, pattern_digest(77, TCP_BYTES));
    assert!(
        during > 0,
        "the flood ran while the TCP stream moved ({during} datagrams)"
    );
    let tunnel_full = dropped(&admin, port, "tunnel_full");
    let queue_full = dropped(&admin, port, "queue_full");
    let s_in = format!(r#"tcpforward_udp_datagrams_total{{port="{port}",direction="in"}}"#);
    eprintln!(
        "{TCP_BYTES} TCP bytes in {took:?} beside {during} flood datagrams; server: {} in, \
         {tunnel_full} dropped tunnel_full, {queue_full} queue_full",
        series(&admin, &s_in).unwrap_or(-1.0)
    );

    // After the flood the UDP mapping still serves, and a fresh TCP stream too.
    eventually(Duration::from_secs(10), "the UDP mapping to echo", || {
        udp_echoes(port, b"after the flood").then_some(())
    });
    let mut c = visit(tcp_port);
    let sum = send_pattern(&mut c, 78, 64 * 1024).expect("send a second TCP stream");
    c.flush().ok();
    c.shutdown(Shutdown::Write).expect("shut down");
    let got = digests
        .recv_timeout(Duration::from_secs(20))
        .expect("the second digest")
        .expect("the sink read it");
    assert_eq!(got, sum);
}

// ---------------------------------------------------------------------------------------
// One port number, two protocols
// ---------------------------------------------------------------------------------------

#[test]
fn a_port_maps_tcp_and_udp_at_once_to_different_targets() {
    let dir = TempDir::new("udp-same-port");
    let echo = Target::echo();
    let mut setup = ServerSetup::new();
    // A TCP port that is free for UDP too.
    let port = loop {
        let p = free_port();
        if p != setup.inner_port && UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    setup.mappings.push(Mapping {
        public: port,
        target: echo.target(),
        tag: None,
    });
    let target = UdpTarget::spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), |d| {
        [b"udp:".as_slice(), d].concat()
    })
    .expect("a UDP target");
    let (_server, admin, _client) = start_udp(&dir, setup, &[(port, target.addr.to_string())], &[]);

    assert_echo(port, "the TCP mapping of a port that maps UDP too");
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    assert_eq!(
        exchange(&v, port, b"ping").as_deref(),
        Some(&b"udp:ping"[..]),
        "the UDP target's answer"
    );
    // Both at once: a TCP stream open while datagrams move.
    let mut s = visit(port);
    echo_on(&mut s, b"tcp while udp").expect("a TCP echo");
    assert_eq!(
        exchange(&v, port, b"pong").as_deref(),
        Some(&b"udp:pong"[..]),
        "the UDP target's answer beside an open TCP stream"
    );
    echo_on(&mut s, b"tcp again").expect("a second TCP echo");
    let list = admin.get_json("/api/mappings");
    let protos: Vec<&str> = list["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .filter(|m| m["port"] == u64::from(port))
        .filter_map(|m| m["proto"].as_str())
        .collect();
    assert_eq!(protos, ["tcp", "udp"]);
}

// ---------------------------------------------------------------------------------------
// [ALLOW], [LIMIT], MAX_UDP_FLOWS
// ---------------------------------------------------------------------------------------

#[test]
fn allow_list_on_a_udp_port_drops_and_counts_other_sources() {
    let dir = TempDir::new("udp-allow");
    let target = UdpTarget::echo();
    let port = free_udp_port();
    let (_server, admin, _client) = start_udp(
        &dir,
        ServerSetup::new(),
        &[(port, target.addr.to_string())],
        &["[ALLOW]".into(), format!("{port}=127.0.0.2")],
    );
    let allowed = udp_visitor(Ipv4Addr::new(127, 0, 0, 2));
    assert!(
        udp_echoes_on(&allowed, port, b"allowed"),
        "the allowed source gets its echo"
    );
    let denied = udp_visitor(Ipv4Addr::new(127, 0, 0, 3));
    for _ in 0..3 {
        denied
            .send_to(b"let me in", ("127.0.0.1", port))
            .expect("send");
    }
    wait_dropped(&admin, port, "not_allowed", 3.0);
    assert_no_answer(&denied, "a source outside [ALLOW]");
    let listed = flows(&admin, port);
    assert_eq!(listed.len(), 1, "only the allowed source has a flow");
    assert_eq!(
        listed[0]["visitor"],
        allowed.local_addr().expect("address").to_string()
    );
    assert_eq!(target.sources().len(), 1, "the target heard one flow");
    assert!(
        udp_echoes_on(&allowed, port, b"still"),
        "the allowed flow still works"
    );
}

#[test]
fn a_limited_udp_port_drops_and_counts_datagrams_over_its_limit() {
    const SENT: usize = 100;
    const SIZE: usize = 1000;
    let dir = TempDir::new("udp-limit");
    let target = UdpTarget::echo();
    let port = free_udp_port();
    // 80 kbit/s: 10,000 bytes a second, a burst of a quarter of that.
    let (_server, admin, _client) = start_udp(
        &dir,
        ServerSetup::new(),
        &[(port, target.addr.to_string())],
        &["[LIMIT]".into(), format!("{port}=80kbit")],
    );
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    for i in 0..SENT {
        let mut d = vec![0u8; SIZE];
        d[..4].copy_from_slice(&(i as u32).to_le_bytes());
        v.send_to(&d, ("127.0.0.1", port)).expect("send");
    }
    let burst = started.elapsed();
    let s_in = format!(r#"tcpforward_udp_datagrams_total{{port="{port}",direction="in"}}"#);
    // Every datagram is either carried or dropped as over the limit.
    let (carried, limited) = eventually(
        Duration::from_secs(5),
        "every datagram carried or dropped",
        || {
            let text = admin.get("/metrics").text();
            let carried = metric(&text, &s_in)?;
            let limited = metric(
                &text,
                &format!(r#"tcpforward_udp_dropped_total{{port="{port}",reason="limit"}}"#),
            )?;
            (carried + limited == SENT as f64).then_some((carried, limited))
        },
    );
    // The burst (2,500 bytes) and what the rate added while the datagrams were sent.
    let allowance = 2 + (burst.as_secs_f64() * 10.0).ceil() as usize + 1;
    eprintln!("{SENT} sent in {burst:?}: {carried} carried, {limited} dropped (limit)");
    assert!(
        carried >= 1.0 && carried <= allowance as f64,
        "{carried} carried, at most {allowance} allowed"
    );
    let mut echoes = 0;
    let mut buf = [0u8; 2048];
    v.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while let Ok(n) = v.recv(&mut buf) {
        assert_eq!(n, SIZE);
        echoes += 1;
        assert!(echoes <= SENT);
    }
    assert!(
        echoes as f64 <= carried,
        "{echoes} echoes, {carried} carried"
    );
    // Once the bucket has filled again, datagrams pass.
    assert!(
        udp_echoes_on(&v, port, &[7u8; SIZE]),
        "a datagram within the limit passes"
    );
}

#[test]
fn max_udp_flows_drops_and_counts_new_sources_beyond_it() {
    let dir = TempDir::new("udp-max-flows");
    let target = UdpTarget::echo();
    let port = free_udp_port();
    let mut setup = ServerSetup::new();
    setup.extra.push("MAX_UDP_FLOWS=2".into());
    let (_server, admin, _client) = start_udp(&dir, setup, &[(port, target.addr.to_string())], &[]);
    let (a, b, c) = (
        udp_visitor(Ipv4Addr::LOCALHOST),
        udp_visitor(Ipv4Addr::LOCALHOST),
        udp_visitor(Ipv4Addr::LOCALHOST),
    );
    assert!(udp_echoes_on(&a, port, b"a"), "the first flow");
    assert!(udp_echoes_on(&b, port, b"b"), "the second flow");
    for _ in 0..3 {
        c.send_to(b"c", ("127.0.0.1", port)).expect("send");
    }
    wait_dropped(&admin, port, "flow_limit", 3.0);
    assert_no_answer(&c, "a source beyond MAX_UDP_FLOWS");
    assert_eq!(flows(&admin, port).len(), 2);
    assert!(
        udp_echoes_on(&a, port, b"a again"),
        "the first flow still works"
    );
    assert!(
        udp_echoes_on(&b, port, b"b again"),
        "the second flow still works"
    );
    assert_eq!(udp_visits(&admin, port, "refused"), 3.0);
}

// ---------------------------------------------------------------------------------------
// A killed client, an unreachable target
// ---------------------------------------------------------------------------------------

#[test]
fn a_killed_client_closes_its_flows_and_a_new_one_serves_the_port() {
    let dir = TempDir::new("udp-kill");
    let target = UdpTarget::echo();
    let port = free_udp_port();
    let setup = ServerSetup::new();
    let inner = setup.inner_port;
    let (server, admin, mut client) =
        start_udp(&dir, setup, &[(port, target.addr.to_string())], &[]);
    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    assert!(udp_echoes_on(&v, port, b"before"));
    assert!(udp_echoes(port, b"a second flow"));
    assert_eq!(flows(&admin, port).len(), 2);

    client.kill9();
    eventually(Duration::from_secs(10), "the flows to close", || {
        flows(&admin, port).is_empty().then_some(())
    });
    let s = format!(r#"tcpforward_streams{{port="{port}",proto="udp"}}"#);
    assert_eq!(series(&admin, &s), Some(0.0), "{s}");
    let bound = UdpSocket::bind(("127.0.0.1", port));
    assert!(
        bound.as_ref().err().map(|e| e.kind()) == Some(ErrorKind::AddrInUse),
        "the server keeps its UDP socket bound: {bound:?}"
    );
    for _ in 0..3 {
        v.send_to(b"anyone?", ("127.0.0.1", port)).expect("send");
    }
    wait_dropped(&admin, port, "no_client", 3.0);
    assert_no_answer(&v, "no client");

    let _client = attach_client(&server, inner, &ClientOpts::default());
    assert!(
        udp_echoes_on(&v, port, b"after"),
        "the port echoes through the new client"
    );
    assert_eq!(flows(&admin, port).len(), 1);
}

#[test]
fn an_unreachable_target_closes_its_flow_and_nothing_else() {
    let dir = TempDir::new("udp-unreachable");
    // A port where nothing listens (bound a moment ago, then closed).
    let closed = free_udp_port();
    let target = UdpTarget::echo();
    let (bad, good) = (free_udp_port(), free_udp_port());
    let (_server, admin, _client) = start_udp(
        &dir,
        ServerSetup::new(),
        &[
            (bad, format!("127.0.0.1:{closed}")),
            (good, target.addr.to_string()),
        ],
        &[],
    );
    let w = udp_visitor(Ipv4Addr::LOCALHOST);
    assert!(udp_echoes_on(&w, good, b"other flow"), "the other flow");

    let v = udp_visitor(Ipv4Addr::LOCALHOST);
    for round in 1..=2 {
        // The flow opens (served), the target's ICMP error closes it; the next datagram from
        // the same address opens a new one.
        v.send_to(b"hello?", ("127.0.0.1", bad)).expect("send");
        eventually(
            Duration::from_secs(5),
            &format!("flow {round} to the unreachable target opened and closed"),
            || {
                (udp_visits(&admin, bad, "served") == f64::from(round)
                    && flows(&admin, bad).is_empty())
                .then_some(())
            },
        );
    }
    assert_no_answer(&v, "an unreachable target");
    let listed = flows(&admin, good);
    assert_eq!(listed.len(), 1, "the other flow is still open");
    assert_eq!(
        listed[0]["visitor"],
        w.local_addr().expect("address").to_string()
    );
    assert!(udp_echoes_on(&w, good, b"still"), "the other flow echoes");
}

// ---------------------------------------------------------------------------------------
// IPv6 and name targets
// ---------------------------------------------------------------------------------------

#[test]
fn an_ipv6_target() {
    let target = match UdpTarget::spawn(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), <[u8]>::to_vec)
    {
        Ok(t) => t,
        Err(e) => return eprintln!("SKIP: an_ipv6_target: cannot bind [::1]: {e}"),
    };
    let dir = TempDir::new("udp-ipv6");
    let port = free_udp_port();
    let shown = format!("[::1]:{}", target.addr.port());
    let (_server, admin, _client) =
        start_udp(&dir, ServerSetup::new(), &[(port, shown.clone())], &[]);
    assert!(udp_echoes(port, b"to ::1"), "the IPv6 target echoes");
    assert!(
        target.sources().iter().all(|s| s.is_ipv6()),
        "{:?}",
        target.sources()
    );
    let listed = flows(&admin, port);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["target"], shown);
}

#[test]
fn a_name_target_resolved_by_the_client() {
    // An echo on 127.0.0.1 and, where there is one, on ::1 with the same port: whichever
    // address `localhost` resolves to first answers.
    let (v4, v6) = (0..20)
        .find_map(|_| {
            let v4 = UdpTarget::echo();
            let six = SocketAddr::from((Ipv6Addr::LOCALHOST, v4.addr.port()));
            match UdpTarget::spawn(six, <[u8]>::to_vec) {
                Ok(v6) => Some((v4, Some(v6))),
                Err(e) if e.kind() == ErrorKind::AddrInUse => None,
                Err(_) => Some((v4, None)),
            }
        })
        .expect("a port free on both 127.0.0.1 and ::1");
    let dir = TempDir::new("udp-name");
    let port = free_udp_port();
    let name = format!("localhost:{}", v4.addr.port());
    let (_server, admin, _client) =
        start_udp(&dir, ServerSetup::new(), &[(port, name.clone())], &[]);
    assert!(udp_echoes(port, b"by name"), "the name target echoes");
    let heard = v4.sources().len() + v6.as_ref().map_or(0, |t| t.sources().len());
    assert_eq!(heard, 1, "one flow, at one of localhost's addresses");
    let listed = flows(&admin, port);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["target"], name);
}
